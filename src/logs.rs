//! Container output: every line a container writes to stdout or stderr, kept in a bounded
//! per-container buffer and, when someone follows the pod, handed on to them in order.
//!
//! This module owns the line splitting and the buffers; it does not print. The CLI follows the
//! pod and prints `NAME | line`; tests read [`Logs::lines`]. Lines are kept exactly as written
//! (escape codes included); whatever shows them to people passes them through
//! [`escape_control`] first, so a guest cannot drive the terminal or forge another container's
//! `NAME |` prefix. A follower that reads slowly slows the writing guest down (a bounded channel,
//! like a pipe), it never grows memory.
//!
//! There is one such follower (the process that runs the pod prints everything). Any number of
//! other readers (`wasmpod logs --follow` through [`crate::control`]) use a [`LogTail`] instead:
//! a cursor into one container's buffer that is woken when lines arrive. A tail never slows a
//! guest down: a reader that falls a whole buffer behind is told how many lines it missed.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::PollSender;

/// Lines kept per container by default.
pub const DEFAULT_LINES_PER_CONTAINER: usize = 1000;
/// Longer lines are cut into pieces of this many bytes, so one line cannot grow unbounded.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// How many lines may wait for a slow follower before writers wait.
const FOLLOW_QUEUE: usize = 1024;

/// `text` made safe to print for people: every control character a terminal would act on is
/// shown as an escape instead — C0 controls but tab (`\r`, `\n`, `\x1b`, ...), DEL (`\x7f`)
/// and C1 controls (`\u{9b}`, which some terminals take for ESC `[`). Text without any comes
/// back borrowed. JSON output needs no such thing: it has its own exact escaping.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    let needs_escape = |c: char| c.is_control() && c != '\t';
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\r' => escaped.push_str("\\r"),
            '\n' => escaped.push_str("\\n"),
            // `char::is_control` is exactly C0, DEL and C1.
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(escaped, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", c as u32);
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Which standard stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub container: Arc<str>,
    pub stream: Stream,
    /// The line without its newline (lossily decoded as UTF-8).
    pub text: String,
    pub at: SystemTime,
}

/// The output of every container of one pod.
#[derive(Clone)]
pub struct Logs {
    inner: Arc<LogsInner>,
}

struct LogsInner {
    lines_per_container: usize,
    buffers: Mutex<HashMap<Arc<str>, Buffer>>,
    follower: Mutex<Option<mpsc::Sender<LogLine>>>,
    /// Bumped after every recorded line, to wake [`LogTail`]s. A `watch` holds no lines, so
    /// however many tails there are and however slow, the writer never waits and nothing queues.
    recorded: watch::Sender<()>,
}

/// One container's kept lines.
#[derive(Default)]
struct Buffer {
    lines: VecDeque<LogLine>,
    /// How many lines were ever recorded: the sequence number the next line gets. The first
    /// kept line has number `recorded - lines.len()`, which lets a tail find its place.
    recorded: u64,
}

impl Buffer {
    fn first_seq(&self) -> u64 {
        self.recorded - self.lines.len() as u64
    }
}

impl Logs {
    /// Keeps the last `lines_per_container` lines of each container.
    pub fn new(lines_per_container: usize) -> Logs {
        Logs {
            inner: Arc::new(LogsInner {
                lines_per_container: lines_per_container.max(1),
                buffers: Mutex::new(HashMap::new()),
                follower: Mutex::new(None),
                recorded: watch::Sender::new(()),
            }),
        }
    }

    /// The buffered lines of one container, oldest first (stdout and stderr interleaved).
    pub fn lines(&self, container: &str) -> Vec<LogLine> {
        lock(&self.inner.buffers)
            .get(container)
            .map(|buffer| buffer.lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The buffered lines of one container, as text, oldest first.
    pub fn text(&self, container: &str) -> Vec<String> {
        self.lines(container).into_iter().map(|line| line.text).collect()
    }

    /// Every line written from now on, in order per stream. Replaces an earlier follower.
    pub fn follow(&self) -> mpsc::Receiver<LogLine> {
        let (sender, receiver) = mpsc::channel(FOLLOW_QUEUE);
        *lock(&self.inner.follower) = Some(sender);
        receiver
    }

    /// A reader of one container's output that any number of callers may hold at once: it
    /// first yields the last `last` kept lines (`None`: all kept lines), then every new line.
    pub fn tail(&self, container: &str, last: Option<usize>) -> LogTail {
        // Subscribe before reading the position, so a line recorded in between still wakes us.
        let recorded = self.inner.recorded.subscribe();
        let next = match lock(&self.inner.buffers).get(container) {
            Some(buffer) => {
                let kept = buffer.lines.len() as u64;
                buffer.recorded - last.map_or(kept, |last| (last as u64).min(kept))
            }
            None => 0,
        };
        LogTail {
            logs: self.clone(),
            container: container.into(),
            next,
            recorded,
        }
    }

    /// The stdout or stderr stream to give a container's WASI context.
    pub fn output(&self, container: &str, stream: Stream) -> ContainerOutput {
        ContainerOutput {
            logs: self.clone(),
            container: container.into(),
            stream,
        }
    }

    fn record(&self, line: LogLine) {
        {
            let mut buffers = lock(&self.inner.buffers);
            let buffer = buffers.entry(line.container.clone()).or_default();
            if buffer.lines.len() == self.inner.lines_per_container {
                buffer.lines.pop_front();
            }
            buffer.lines.push_back(line);
            buffer.recorded += 1;
        }
        // After the buffer lock is released: a woken tail reads the buffer at once.
        self.inner.recorded.send_replace(());
    }

    fn follower(&self) -> Option<mpsc::Sender<LogLine>> {
        lock(&self.inner.follower).clone()
    }
}

use crate::sync::lock;

/// A cursor into one container's output, from [`Logs::tail`].
pub struct LogTail {
    logs: Logs,
    container: Arc<str>,
    /// The sequence number of the next line to hand out.
    next: u64,
    recorded: watch::Receiver<()>,
}

/// What a [`LogTail`] read.
#[derive(Debug, Default)]
pub struct TailRead {
    /// New lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines that left the buffer before this reader got to them.
    pub missed: u64,
}

impl LogTail {
    /// The lines recorded since the last read, without waiting (maybe none).
    pub fn read(&mut self) -> TailRead {
        let buffers = lock(&self.logs.inner.buffers);
        let Some(buffer) = buffers.get(&self.container) else {
            return TailRead::default();
        };
        let first = buffer.first_seq();
        let missed = first.saturating_sub(self.next);
        let skip = self.next.saturating_sub(first) as usize;
        let lines = buffer.lines.iter().skip(skip).cloned().collect();
        self.next = buffer.recorded;
        TailRead { lines, missed }
    }

    /// Waits for at least one new (or missed) line; forever if the container writes no more,
    /// so callers race it against their own end (the pod's end, the client hanging up).
    pub async fn next(&mut self) -> TailRead {
        loop {
            let read = self.read();
            if !read.lines.is_empty() || read.missed > 0 {
                return read;
            }
            // Wakes on any container's line; the re-read above is cheap and filters. It cannot
            // fail: `self.logs` keeps the sender alive.
            if self.recorded.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A container's stdout or stderr as wasmtime-wasi sees it.
pub struct ContainerOutput {
    logs: Logs,
    container: Arc<str>,
    stream: Stream,
}

impl wasmtime_wasi::cli::IsTerminal for ContainerOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for ContainerOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            logs: self.logs.clone(),
            container: self.container.clone(),
            stream: self.stream,
            partial: Vec::new(),
            undelivered: VecDeque::new(),
            follower: self.logs.follower().map(PollSender::new),
        })
    }
}

/// Splits written bytes into lines, records them, and delivers them to the follower.
struct LineWriter {
    logs: Logs,
    container: Arc<str>,
    stream: Stream,
    partial: Vec<u8>,
    /// Lines recorded but not yet accepted by the follower (at most one write's worth).
    undelivered: VecDeque<LogLine>,
    follower: Option<PollSender<LogLine>>,
}

impl LineWriter {
    fn finish_line(&mut self, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = LogLine {
            container: self.container.clone(),
            stream: self.stream,
            text: String::from_utf8_lossy(bytes).into_owned(),
            at: SystemTime::now(),
        };
        self.logs.record(line.clone());
        if self.follower.is_some() {
            self.undelivered.push_back(line);
        }
    }

    /// Hands waiting lines to the follower; `Pending` while its queue is full.
    fn poll_deliver(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(follower) = self.follower.as_mut() {
            if self.undelivered.is_empty() {
                break;
            }
            match follower.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    if let Some(line) = self.undelivered.pop_front() {
                        // Reserved just above, so this cannot fail for lack of room.
                        let _ = follower.send_item(line);
                    }
                }
                // Nobody follows any more: keep recording, stop delivering.
                Poll::Ready(Err(_)) => {
                    self.follower = None;
                    self.undelivered.clear();
                }
            }
        }
        Poll::Ready(())
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.poll_deliver(cx).is_pending() {
            return Poll::Pending;
        }
        let mut rest = buf;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(newline);
            if this.partial.is_empty() {
                this.finish_line(line);
            } else {
                let mut whole = std::mem::take(&mut this.partial);
                whole.extend_from_slice(line);
                this.finish_line(&whole);
            }
            rest = &after[1..];
        }
        this.partial.extend_from_slice(rest);
        while this.partial.len() >= MAX_LINE_BYTES {
            let tail = this.partial.split_off(MAX_LINE_BYTES);
            let head = std::mem::replace(&mut this.partial, tail);
            this.finish_line(&head);
        }
        // The bytes are taken; delivery of what they completed continues on the next call.
        let _ = this.poll_deliver(cx);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_deliver(cx).map(Ok)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Drop for LineWriter {
    /// A last line without a newline still counts when the container ends.
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let partial = std::mem::take(&mut self.partial);
            self.finish_line(&partial);
        }
        if let Some(follower) = self.follower.as_ref().and_then(|f| f.get_ref()).cloned() {
            for line in self.undelivered.drain(..) {
                // Best effort: a full queue at teardown drops the copy, the buffer keeps it.
                let _ = follower.try_send(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use wasmtime_wasi::cli::StdoutStream;

    #[tokio::test]
    async fn splits_lines_keeps_partial_until_drop_and_bounds_buffer() {
        let logs = Logs::new(3);
        let mut follow = logs.follow();
        {
            let mut writer = Box::into_pin(logs.output("app", Stream::Stdout).async_stream());
            writer.write_all(b"one\ntwo\r\nthr").await.unwrap();
            writer.write_all(b"ee\nfour\nfive").await.unwrap();
            writer.flush().await.unwrap();
        }
        assert_eq!(logs.text("app"), vec!["three", "four", "five"]);
        let mut followed = Vec::new();
        while let Ok(line) = follow.try_recv() {
            followed.push(line.text);
        }
        assert_eq!(followed, vec!["one", "two", "three", "four", "five"]);
        assert!(logs.lines("other").is_empty());
    }

    #[tokio::test]
    async fn tails_start_at_the_last_lines_wake_on_new_ones_and_count_what_they_missed() {
        let logs = Logs::new(3);
        let mut writer = Box::into_pin(logs.output("app", Stream::Stdout).async_stream());
        writer.write_all(b"one\ntwo\n").await.unwrap();
        let mut last_one = logs.tail("app", Some(1));
        let mut everything = logs.tail("app", None);
        let mut other = logs.tail("other", None);
        assert_eq!(texts(last_one.read()), (vec!["two".to_string()], 0));
        assert_eq!(
            texts(everything.read()),
            (vec!["one".to_string(), "two".to_string()], 0)
        );

        let waiting = tokio::spawn(async move { texts(last_one.next().await) });
        writer.write_all(b"three\n").await.unwrap();
        assert_eq!(waiting.await.unwrap(), (vec!["three".to_string()], 0));

        // Four more lines into a buffer of three: the reader that stopped after "two" missed
        // "three" and "4", and says so.
        writer.write_all(b"4\n5\n6\n7\n").await.unwrap();
        assert_eq!(
            texts(everything.next().await),
            (vec!["5".to_string(), "6".to_string(), "7".to_string()], 2)
        );
        assert_eq!(texts(other.read()), (vec![], 0));
    }

    fn texts(read: TailRead) -> (Vec<String>, u64) {
        (read.lines.into_iter().map(|line| line.text).collect(), read.missed)
    }

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_left_alone() {
        assert!(matches!(escape_control("plain\ttext ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("\x1b[2J\rweb | forged\u{7}\u{8}\u{7f}\u{9b}31m\n"),
            "\\x1b[2J\\rweb | forged\\x07\\x08\\x7f\\u{9b}31m\\n"
        );
        // Every C0 control but tab, DEL and every C1 control; nothing else.
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let text = c.to_string();
            let escaped = escape_control(&text);
            let expected = matches!(c as u32, 0..=8 | 0x0a..=0x1f | 0x7f..=0x9f);
            assert_eq!(escaped != text, expected, "{:x}", c as u32);
            assert!(!escaped.chars().any(|c| c.is_control() && c != '\t'), "{:x}", c as u32);
        }
    }

    #[tokio::test]
    async fn long_lines_are_cut() {
        let logs = Logs::new(10);
        let mut writer = Box::into_pin(logs.output("app", Stream::Stderr).async_stream());
        writer.write_all(&vec![b'x'; MAX_LINE_BYTES + 10]).await.unwrap();
        drop(writer);
        let lines = logs.lines("app");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].text.len(), 10);
        assert_eq!(lines[1].stream, Stream::Stderr);
    }
}
