//! The bounded, one-directional byte pipe that carries one direction of a virtual TCP
//! connection between two stores (or between a store and the host).
//!
//! A pipe owns the bytes in flight, the end-of-stream (FIN), reset and read-side flags and the
//! two wakers; it knows nothing of sockets, ports or WASI bindings. Its two ends implement both
//! the wasi-io stream traits (for guests) and the tokio I/O traits (for the host side: front
//! proxy, tests), so either end of a connection can live in a guest or on the host.
//!
//! Readiness is exact (design note §8.1): `ready()` resolves only when `read` would return data,
//! end-of-stream or an error, or when `check_write` would return a non-zero permit or an error.
//! wasmtime's `blocking_read`/`write_ready` trap after 10 spurious wakeups, so "maybe ready" is a
//! bug here, not a performance issue.
//!
//! Host memory: every queued byte is charged to the pipe's [`SocketBudget`] (see `budget.rs`
//! for who pays) from the moment a write permit is handed out until the byte is read or
//! discarded, so a writer whose container is out of budget gets a zero permit and waits, exactly
//! as for a full pipe. Small writes are appended to one growing tail buffer instead of being
//! queued one allocation each, so a million 1-byte writes cost about a megabyte, not 64.
//!
//! Closing the read side (dropping the input stream, `shutdown(receive)`) only discards: the
//! peer's writes keep succeeding and their bytes are dropped uncharged, as on a kernel socket.
//! Only the socket itself going away ([`Pipe::close_reader`]) makes the peer's writes fail.
//!
//! Faults: a pipe of a link the pod's fault table watches (see [`super::fault`]) asks the link
//! on every write how long a `latency` fault holds the bytes back (one atomic load while no
//! fault is installed). Held-back bytes wait in a delay line inside the pipe, in write order
//! and counted against its capacity and budget like queued ones; a small task moves them to
//! the readable queue when due, and end-of-stream waits behind them.
//!
//! Locking: one `std::sync::Mutex` per pipe, never held across an `.await`; wakers are taken out
//! under the lock and woken after unlocking, so a wakeup can never re-enter a held lock.

use super::budget::SocketBudget;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::fault::{Direction, FaultLink};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{InputStream, OutputStream, StreamError, StreamResult};

/// Bytes buffered per direction before writers see backpressure; big enough to keep a 64 KiB
/// write permit in flight while the reader works on the previous one.
pub const DEFAULT_PIPE_CAPACITY: usize = 256 * 1024;

/// Largest permit/read handed out at once: wasmtime's own cap on guest-driven host
/// allocations (`MAX_READ_SIZE_ALLOC`), so a guest cannot make the host allocate more per call.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Writes shorter than this are copied onto the shared tail buffer instead of being queued as
/// their own allocation (whose bookkeeping would dwarf a few bytes of payload).
const COALESCE_BELOW: usize = 4096;

/// The tail buffer is sealed into a chunk once it holds this much.
const TAIL_MAX: usize = 64 * 1024;

/// The bytes of one direction in write order: sealed chunks, then a growing tail of small writes.
#[derive(Debug, Default)]
struct ByteQueue {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

impl ByteQueue {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let t = self.tail.split().freeze();
            self.chunks.push_back(t);
        }
    }

    fn push(&mut self, b: Bytes) {
        if b.len() < COALESCE_BELOW {
            self.push_slice(&b);
        } else {
            self.seal();
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    fn push_slice(&mut self, s: &[u8]) {
        if s.len() >= COALESCE_BELOW {
            self.push(Bytes::copy_from_slice(s));
            return;
        }
        if self.tail.len() + s.len() > TAIL_MAX {
            self.seal();
        }
        self.tail.extend_from_slice(s);
        self.len += s.len();
    }

    /// Removes up to `max` bytes from the front, without copying when one chunk suffices.
    fn take(&mut self, max: usize) -> Bytes {
        let max = max.min(self.len);
        if max == 0 {
            return Bytes::new();
        }
        let out = match self.chunks.front_mut() {
            None => self.tail.split_to(max).freeze(),
            Some(front) if front.len() >= max => {
                if front.len() == max {
                    self.chunks.pop_front().unwrap_or_default()
                } else {
                    front.split_to(max)
                }
            }
            Some(_) => {
                // Coalesce: a guest asking for 64 KiB is not handed 10 bytes at a time when
                // more is already buffered.
                let mut acc = BytesMut::with_capacity(max);
                while acc.len() < max {
                    let want = max - acc.len();
                    if let Some(front) = self.chunks.front_mut() {
                        if front.len() > want {
                            acc.extend_from_slice(&front.split_to(want));
                        } else {
                            acc.extend_from_slice(front);
                            self.chunks.pop_front();
                        }
                    } else {
                        let n = want.min(self.tail.len());
                        acc.extend_from_slice(&self.tail[..n]);
                        self.tail.advance(n);
                        break;
                    }
                }
                acc.freeze()
            }
        };
        self.len -= out.len();
        out
    }

    /// Copies bytes into `out`; returns how many.
    fn read_into(&mut self, out: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while out.remaining() > 0 {
            let src: &mut dyn Buf = match self.chunks.front_mut() {
                Some(front) => front,
                None if !self.tail.is_empty() => &mut self.tail,
                None => break,
            };
            let chunk = src.chunk();
            let k = chunk.len().min(out.remaining());
            out.put_slice(&chunk[..k]);
            src.advance(k);
            n += k;
            if self.chunks.front().is_some_and(|c| c.is_empty()) {
                self.chunks.pop_front();
            }
        }
        self.len -= n;
        n
    }

    /// Drops everything; returns how many bytes were dropped.
    fn clear(&mut self) -> usize {
        let n = self.len;
        self.chunks.clear();
        self.tail = BytesMut::new();
        self.len = 0;
        n
    }
}

/// What became of the reading side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadSide {
    Open,
    /// Read side shut down (input stream dropped, `shutdown(receive)`): the reader sees
    /// end-of-stream, the writer's bytes are accepted and dropped.
    Shutdown,
    /// The reading socket is gone: the writer's next operation reports the stream closed.
    Gone,
}

#[derive(Debug)]
struct PipeState {
    /// Bytes written but not yet read, bounded by `cap`.
    queue: ByteQueue,
    cap: usize,
    /// Bytes already charged to the budget for the permit handed out by `check_write` (or a
    /// resolved `ready`), not written yet. Given back after the next write.
    credit: usize,
    /// The writer finished (FIN): the reader sees end-of-stream once the queue is drained.
    fin: bool,
    /// The connection was reset: both ends fail with `ConnectionReset`, buffered data is gone.
    reset: bool,
    read: ReadSide,
    /// This pipe is on its budget's wait list (avoids queuing it twice).
    waiting_budget: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Bytes a `latency` fault holds back, with when each becomes readable (non-decreasing).
    delayed: VecDeque<(Instant, Bytes)>,
    delayed_len: usize,
    /// A task is moving `delayed` bytes to `queue` as they fall due.
    mover: bool,
}

impl PipeState {
    /// Room left for new permits.
    fn free(&self) -> usize {
        self.cap.saturating_sub(self.queue.len + self.delayed_len + self.credit)
    }

    /// The reader has reached end-of-stream: the writer finished and nothing is left, not
    /// even held back by a fault.
    fn at_eof(&self) -> bool {
        self.fin && self.delayed_len == 0
    }

    /// True when a read would not return "no data yet".
    fn readable(&self) -> bool {
        !self.queue.is_empty() || self.at_eof() || self.reset || self.read != ReadSide::Open
    }

    /// Holds `bytes` back for `delay`, behind anything held back before (order is kept);
    /// true when a mover task must be started.
    fn hold_back(&mut self, bytes: Bytes, delay: Duration) -> bool {
        let due = Instant::now() + delay;
        let due = self.delayed.back().map_or(due, |(last, _)| due.max(*last));
        self.delayed_len += bytes.len();
        self.delayed.push_back((due, bytes));
        !std::mem::replace(&mut self.mover, true)
    }

    /// True when writes end at once with an error or are discarded (no room needed).
    fn no_room_needed(&self) -> bool {
        self.fin || self.reset || self.read != ReadSide::Open
    }

    /// Drops the queue and the outstanding permit; returns the bytes to give back.
    fn discard(&mut self) -> usize {
        let n = self.queue.clear() + self.credit + self.delayed_len;
        self.credit = 0;
        self.delayed.clear();
        self.delayed_len = 0;
        n
    }
}

/// One direction of a connection; shared by its [`PipeReader`] and [`PipeWriter`].
#[derive(Debug)]
pub struct Pipe {
    st: Mutex<PipeState>,
    budget: Arc<SocketBudget>,
    /// The link this pipe carries one direction of, when the fault table watches it.
    link: OnceLock<(Arc<FaultLink>, Direction)>,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the connection, so recover instead of poisoning every peer.
        crate::sync::lock(&self.st)
    }

    /// Marks end-of-stream from the writer side (FIN), keeping buffered bytes readable.
    pub fn finish(&self) {
        let (waker, give_back) = {
            let mut st = self.lock();
            st.fin = true;
            let credit = std::mem::take(&mut st.credit);
            (st.read_waker.take(), credit)
        };
        wake(waker);
        self.budget.release(give_back);
    }

    /// The reading socket is gone: buffered bytes are discarded and the writer's next
    /// operation reports the stream closed (like EPIPE after the peer closed its socket).
    pub fn close_reader(&self) {
        self.end_reading(ReadSide::Gone);
    }

    /// The read side was shut down but the socket lives on: the reader sees end-of-stream,
    /// buffered and future bytes are dropped, and the writer keeps succeeding.
    pub fn shutdown_read(&self) {
        self.end_reading(ReadSide::Shutdown);
    }

    fn end_reading(&self, how: ReadSide) {
        let (w, r, give_back) = {
            let mut st = self.lock();
            if st.read == ReadSide::Gone || st.read == how {
                return;
            }
            st.read = how;
            let n = st.discard();
            (st.write_waker.take(), st.read_waker.take(), n)
        };
        wake(w);
        wake(r);
        self.budget.release(give_back);
    }

    /// Resets the direction: both ends fail with `ConnectionReset` and buffered bytes are lost.
    pub fn reset(&self) {
        let (w, r, give_back) = {
            let mut st = self.lock();
            st.reset = true;
            let n = st.discard();
            (st.write_waker.take(), st.read_waker.take(), n)
        };
        wake(w);
        wake(r);
        self.budget.release(give_back);
    }

    /// Bytes currently buffered, held back by a fault included (for tests and diagnostics).
    pub fn buffered(&self) -> usize {
        let st = self.lock();
        st.queue.len + st.delayed_len
    }

    /// Makes this pipe direction `way` of a link the fault table watches.
    pub(crate) fn watch(&self, link: Arc<FaultLink>, way: Direction) {
        let _ = self.link.set((link, way));
    }

    /// How long a fault holds back bytes written now (zero, at the cost of an atomic load or
    /// two, when no fault is installed).
    #[inline]
    fn fault_delay(&self) -> Duration {
        match self.link.get() {
            Some((link, way)) => link.delay(*way),
            None => Duration::ZERO,
        }
    }

    /// Starts the task that delivers held-back bytes (at once when there is no runtime to
    /// wait on, e.g. a plain unit test).
    fn start_mover(self: &Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(deliver_held_back(Arc::downgrade(self)));
            }
            Err(_) => {
                let mut st = self.lock();
                while let Some((_, b)) = st.delayed.pop_front() {
                    st.queue.push(b);
                }
                st.delayed_len = 0;
                st.mover = false;
                let w = st.read_waker.take();
                drop(st);
                wake(w);
            }
        }
    }

    /// Moves the held-back bytes due by now to the readable queue; returns when the next
    /// ones fall due, or None (and the mover ends) when none are left.
    fn deliver_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let (waker, next) = {
            let mut st = self.lock();
            let mut moved = false;
            while st.delayed.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, b)) = st.delayed.pop_front() {
                    st.delayed_len -= b.len();
                    st.queue.push(b);
                    moved = true;
                }
            }
            let next = st.delayed.front().map(|(due, _)| *due);
            if next.is_none() {
                st.mover = false;
            }
            // The last held-back bytes gone may also have uncovered end-of-stream.
            let waker = if moved || st.at_eof() {
                st.read_waker.take()
            } else {
                None
            };
            (waker, next)
        };
        wake(waker);
        next
    }

    /// True once the writer finished or the direction was torn down.
    pub fn is_finished(&self) -> bool {
        let st = self.lock();
        st.fin || st.reset || st.read != ReadSide::Open
    }

    /// The budget got bytes back: let a writer that waited for it try again.
    pub(crate) fn budget_freed(&self) {
        let w = {
            let mut st = self.lock();
            st.waiting_budget = false;
            st.write_waker.take()
        };
        wake(w);
    }

    /// Makes sure a permit of up to `want` bytes is charged (`credit > 0`), or registers `cx`
    /// to be woken when the pipe or the budget has room. True when a permit is available.
    fn poll_credit(self: &Arc<Self>, st: &mut PipeState, want: usize, cx: Option<&Context<'_>>) -> bool {
        if st.credit > 0 {
            return true;
        }
        let want = want.min(st.free()).min(MAX_CHUNK);
        if want == 0 {
            if let Some(cx) = cx {
                register(&mut st.write_waker, cx);
            }
            return false;
        }
        st.credit = self.budget.reserve(want);
        if st.credit > 0 {
            return true;
        }
        let Some(cx) = cx else { return false };
        register(&mut st.write_waker, cx);
        if !st.waiting_budget {
            st.waiting_budget = true;
            self.budget.wait(Arc::downgrade(self));
        }
        // Look again after registering: bytes given back in between would not wake us.
        st.credit = self.budget.reserve(want);
        st.credit > 0
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let st = self.st.get_mut().unwrap_or_else(|p| p.into_inner());
        let n = st.discard();
        self.budget.release(n);
    }
}

/// Delivers a pipe's held-back bytes as they fall due; holds the pipe weakly, so a closed
/// connection ends it.
async fn deliver_held_back(pipe: Weak<Pipe>) {
    loop {
        let Some(p) = pipe.upgrade() else { return };
        let next = p.deliver_due();
        drop(p);
        match next {
            Some(due) => tokio::time::sleep_until(due).await,
            None => return,
        }
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// Stores `cx`'s waker unless an equivalent one is already there (avoids a clone per poll).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn reset_error() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}

/// Creates a pipe of `capacity` bytes (at least 1) whose queued bytes are charged to `budget`,
/// and returns its two ends.
pub(crate) fn pipe(capacity: usize, budget: Arc<SocketBudget>) -> (PipeWriter, PipeReader) {
    let p = Arc::new(Pipe {
        st: Mutex::new(PipeState {
            queue: ByteQueue::default(),
            cap: capacity.max(1),
            credit: 0,
            fin: false,
            reset: false,
            read: ReadSide::Open,
            waiting_budget: false,
            read_waker: None,
            write_waker: None,
            delayed: VecDeque::new(),
            delayed_len: 0,
            mover: false,
        }),
        budget,
        link: OnceLock::new(),
    });
    (PipeWriter(p.clone()), PipeReader(p))
}

/// The reading end. Dropping it shuts the read side down (see module doc).
#[derive(Debug)]
pub struct PipeReader(Arc<Pipe>);

impl PipeReader {
    /// The shared pipe, for out-of-band control (shutdown/reset) by the owning socket.
    pub fn pipe(&self) -> &Arc<Pipe> {
        &self.0
    }

    /// Non-blocking read of up to `max` bytes: `Ok(empty)` means "nothing yet";
    /// `Closed` is end-of-stream (after FIN and a drained buffer, or after a local shutdown).
    pub fn try_read(&self, max: usize) -> StreamResult<Bytes> {
        let (data, waker) = {
            let mut st = self.0.lock();
            if st.reset {
                return Err(StreamError::LastOperationFailed(reset_error().into()));
            }
            if st.read != ReadSide::Open {
                return Err(StreamError::Closed);
            }
            if st.queue.is_empty() {
                return if st.at_eof() {
                    Err(StreamError::Closed)
                } else {
                    Ok(Bytes::new())
                };
            }
            if max == 0 {
                return Ok(Bytes::new());
            }
            let data = st.queue.take(max.min(MAX_CHUNK));
            (data, st.write_waker.take())
        };
        wake(waker);
        self.0.budget.release(data.len());
        Ok(data)
    }

    /// Resolves when `try_read` would return data, end-of-stream or an error.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.readable() {
            Poll::Ready(())
        } else {
            register(&mut st.read_waker, cx);
            Poll::Pending
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.0.shutdown_read();
    }
}

#[async_trait::async_trait]
impl Pollable for PipeReader {
    async fn ready(&mut self) {
        poll_fn(|cx| self.poll_readable(cx)).await
    }
}

#[async_trait::async_trait]
impl InputStream for PipeReader {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.try_read(size)
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let (waker, n) = {
            let mut st = self.0.lock();
            if st.reset {
                return Poll::Ready(Err(reset_error()));
            }
            if st.read != ReadSide::Open {
                // Read side shut down locally: behave like EOF, as a kernel socket does.
                return Poll::Ready(Ok(()));
            }
            if st.queue.is_empty() {
                if st.at_eof() {
                    return Poll::Ready(Ok(()));
                }
                register(&mut st.read_waker, cx);
                return Poll::Pending;
            }
            let n = st.queue.read_into(out);
            (st.write_waker.take(), n)
        };
        wake(waker);
        self.0.budget.release(n);
        Poll::Ready(Ok(()))
    }
}

/// The writing end. Dropping it is a FIN: the reader sees end-of-stream after the buffered bytes.
#[derive(Debug)]
pub struct PipeWriter(Arc<Pipe>);

impl PipeWriter {
    /// The shared pipe, for out-of-band control (shutdown/reset) by the owning socket.
    pub fn pipe(&self) -> &Arc<Pipe> {
        &self.0
    }

    fn status(st: &PipeState) -> StreamResult<()> {
        if st.reset {
            Err(StreamError::LastOperationFailed(reset_error().into()))
        } else if st.read == ReadSide::Gone || st.fin {
            Err(StreamError::Closed)
        } else {
            Ok(())
        }
    }

    /// How many bytes may be written now (0 = wait for `ready`), capped at [`MAX_CHUNK`].
    /// A non-zero permit is already charged to the pipe's budget.
    pub fn check_write(&self) -> StreamResult<usize> {
        let mut st = self.0.lock();
        Self::status(&st)?;
        if st.read == ReadSide::Shutdown {
            return Ok(MAX_CHUNK);
        }
        self.0.poll_credit(&mut st, MAX_CHUNK, None);
        Ok(st.credit)
    }

    /// Appends `bytes`; more than the permit from `check_write` is a guest bug and traps, as
    /// in wasmtime.
    pub fn write(&self, bytes: Bytes) -> StreamResult<()> {
        let delay = self.0.fault_delay();
        let (waker, give_back, start_mover) = {
            let mut st = self.0.lock();
            Self::status(&st)?;
            if bytes.is_empty() {
                return Ok(());
            }
            if st.read == ReadSide::Shutdown {
                // Nobody will read it: accepted and dropped, as a kernel does after SHUT_RD.
                return if bytes.len() > MAX_CHUNK {
                    Err(StreamError::trap("write exceeds the permit from check-write"))
                } else {
                    Ok(())
                };
            }
            if bytes.len() > st.credit {
                let need = bytes.len() - st.credit;
                if need > st.free() || !self.0.budget.reserve_exact(need) {
                    return Err(StreamError::trap("write exceeds the permit from check-write"));
                }
                st.credit += need;
            }
            st.credit -= bytes.len();
            // The unused rest of the permit goes back at once, so idle connections hold no
            // budget; the next check_write charges afresh.
            let rest = std::mem::take(&mut st.credit);
            if delay.is_zero() && st.delayed.is_empty() {
                st.queue.push(bytes);
                (st.read_waker.take(), rest, false)
            } else {
                let start = st.hold_back(bytes, delay);
                (None, rest, start)
            }
        };
        wake(waker);
        self.0.budget.release(give_back);
        if start_mover {
            self.0.start_mover();
        }
        Ok(())
    }

    /// Resolves when `check_write` would return a non-zero permit or an error (exact: the
    /// permit is charged before this resolves, so no other writer can take it in between).
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.no_room_needed() || self.0.poll_credit(&mut st, MAX_CHUNK, Some(cx)) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves when the reader is gone or the pipe was reset, whether or not there is room:
    /// lets a host-side pump stop waiting on its source once nobody will read the bytes.
    /// Shares the writer's waker slot, so poll it from the same task as the writes.
    pub fn poll_reader_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.read == ReadSide::Gone || st.reset {
            Poll::Ready(())
        } else {
            register(&mut st.write_waker, cx);
            Poll::Pending
        }
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.finish();
    }
}

#[async_trait::async_trait]
impl Pollable for PipeWriter {
    async fn ready(&mut self) {
        poll_fn(|cx| self.poll_writable(cx)).await
    }
}

#[async_trait::async_trait]
impl OutputStream for PipeWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        PipeWriter::write(self, bytes)
    }

    /// Bytes in the pipe are already where the peer reads them (like a kernel send buffer),
    /// so a flush has nothing to wait for; it only reports a broken stream.
    fn flush(&mut self) -> StreamResult<()> {
        let st = self.0.lock();
        Self::status(&st)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        PipeWriter::check_write(self)
    }

    /// As the default, minus its final wait for a fresh permit: our flush completes at once,
    /// and that wait would only leave a permit charged to an idle connection.
    async fn blocking_write_and_flush(&mut self, mut bytes: Bytes) -> StreamResult<()> {
        while !bytes.is_empty() {
            let permit = self.write_ready().await?;
            let chunk = bytes.split_to(bytes.len().min(permit));
            PipeWriter::write(self, chunk)?;
        }
        match OutputStream::flush(self) {
            Ok(()) | Err(StreamError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let delay = self.0.fault_delay();
        let mut start_mover = false;
        let waker = {
            let mut st = self.0.lock();
            if st.reset {
                return Poll::Ready(Err(reset_error()));
            }
            if st.read == ReadSide::Gone || st.fin {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if st.read == ReadSide::Shutdown {
                return Poll::Ready(Ok(data.len().min(MAX_CHUNK)));
            }
            // Charge only what this write needs, so no permit is left over.
            if !self.0.poll_credit(&mut st, data.len(), Some(cx)) {
                return Poll::Pending;
            }
            let n = st.credit.min(data.len());
            let rest = std::mem::take(&mut st.credit) - n;
            if delay.is_zero() && st.delayed.is_empty() {
                st.queue.push_slice(&data[..n]);
                (st.read_waker.take(), n, rest)
            } else {
                start_mover = st.hold_back(Bytes::copy_from_slice(&data[..n]), delay);
                (None, n, rest)
            }
        };
        wake(waker.0);
        self.0.budget.release(waker.2);
        if start_mover {
            self.0.start_mover();
        }
        Poll::Ready(Ok(waker.1))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-close: the peer reads end-of-stream after the buffered bytes.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.finish();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::budget::SocketLimits;
    use crate::resources::MemoryAccount;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::task::Wake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts wakeups so tests can assert exact readiness.
    struct CountWaker(AtomicUsize);
    impl Wake for CountWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountWaker>, Waker) {
        let c = Arc::new(CountWaker(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    /// A budget whose memory account holds `limit` bytes (None: unlimited).
    fn budget(limit: Option<u64>) -> Arc<SocketBudget> {
        SocketBudget::new(
            MemoryAccount::new(limit),
            SocketLimits::default(),
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn pipe(capacity: usize) -> (PipeWriter, PipeReader) {
        super::pipe(capacity, budget(None))
    }

    #[test]
    fn read_readiness_is_exact() {
        let (w, r) = pipe(16);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(r.poll_readable(&mut cx).is_pending());
        assert_eq!(r.try_read(8).unwrap().len(), 0);
        w.write(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(r.poll_readable(&mut cx).is_ready());
        assert_eq!(&r.try_read(8).unwrap()[..], b"abc");
        assert!(r.poll_readable(&mut cx).is_pending());
    }

    #[test]
    fn fin_is_closed_after_drain() {
        let (w, r) = pipe(16);
        w.write(Bytes::from_static(b"xy")).unwrap();
        drop(w);
        assert_eq!(&r.try_read(1).unwrap()[..], b"x");
        assert_eq!(&r.try_read(8).unwrap()[..], b"y");
        assert!(matches!(r.try_read(8), Err(StreamError::Closed)));
        let (_c, waker) = counting();
        assert!(r.poll_readable(&mut Context::from_waker(&waker)).is_ready());
    }

    #[test]
    fn backpressure_and_permit() {
        let (w, r) = pipe(10);
        assert_eq!(w.check_write().unwrap(), 10);
        w.write(Bytes::from_static(b"0123456")).unwrap();
        assert_eq!(w.check_write().unwrap(), 3);
        assert!(matches!(
            w.write(Bytes::from_static(b"abcd")),
            Err(StreamError::Trap(_))
        ));
        w.write(Bytes::from_static(b"789")).unwrap();
        assert_eq!(w.check_write().unwrap(), 0);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(w.poll_writable(&mut cx).is_pending());
        // Coalesces the two chunks.
        assert_eq!(&r.try_read(9).unwrap()[..], b"012345678");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(w.poll_writable(&mut cx).is_ready());
        assert_eq!(w.check_write().unwrap(), 9);
    }

    #[test]
    fn reader_gone_closes_writer() {
        let (w, r) = pipe(4);
        w.write(Bytes::from_static(b"1234")).unwrap();
        let (count, waker) = counting();
        assert!(w.poll_writable(&mut Context::from_waker(&waker)).is_pending());
        r.pipe().close_reader();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(w.check_write(), Err(StreamError::Closed)));
        assert!(matches!(w.write(Bytes::from_static(b"x")), Err(StreamError::Closed)));
        assert_eq!(w.pipe().buffered(), 0);
    }

    /// Dropping the input stream (or shutdown(receive)) is not the socket going away: the
    /// writer keeps succeeding, nothing is queued or charged, the reader sees end-of-stream.
    #[test]
    fn read_shutdown_discards_without_failing_the_writer() {
        let b = budget(None);
        let (w, r) = super::pipe(4, b.clone());
        w.write(Bytes::from_static(b"1234")).unwrap();
        let (count, waker) = counting();
        assert!(w.poll_writable(&mut Context::from_waker(&waker)).is_pending());
        let control = r.pipe().clone();
        drop(r);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(b.buffered(), 0);
        assert!(w.poll_writable(&mut Context::from_waker(&waker)).is_ready());
        for _ in 0..100 {
            let n = w.check_write().unwrap();
            assert!(n > 0);
            w.write(Bytes::from(vec![7u8; n])).unwrap();
        }
        assert_eq!((control.buffered(), b.buffered()), (0, 0));
        // The socket going away afterwards does end the writer.
        control.close_reader();
        assert!(matches!(w.check_write(), Err(StreamError::Closed)));
    }

    #[test]
    fn small_writes_share_one_buffer() {
        let b = budget(None);
        let (w, r) = super::pipe(DEFAULT_PIPE_CAPACITY, b.clone());
        for i in 0..100_000u32 {
            assert!(w.check_write().unwrap() > 0);
            w.write(Bytes::copy_from_slice(&[i as u8])).unwrap();
        }
        {
            let st = w.pipe().lock();
            assert_eq!(st.queue.len, 100_000);
            // 64 KiB sealed chunks plus the tail: not one allocation per write.
            assert!(st.queue.chunks.len() <= 2, "{} chunks", st.queue.chunks.len());
            assert_eq!(st.credit, 0, "no permit left charged after a write");
        }
        assert_eq!(b.buffered(), 100_000);
        let mut got = Vec::new();
        loop {
            let chunk = r.try_read(MAX_CHUNK).unwrap();
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), 100_000);
        assert!(got.iter().enumerate().all(|(i, b)| *b == i as u8));
        assert_eq!(b.buffered(), 0);
    }

    /// A writer out of budget gets a zero permit and a pending `ready`, and is woken (with a
    /// charged permit, so the wakeup is exact) when bytes of *another* pipe of the same
    /// container are read.
    #[test]
    fn budget_backpressure_across_pipes_is_exact() {
        let account = MemoryAccount::new(Some(100));
        let b = SocketBudget::new(account.clone(), SocketLimits::default(), Arc::new(AtomicU64::new(0)));
        let (w1, r1) = super::pipe(1000, b.clone());
        let (w2, _r2) = super::pipe(1000, b.clone());
        assert_eq!(w1.check_write().unwrap(), 100);
        w1.write(Bytes::from(vec![1u8; 100])).unwrap();
        assert_eq!(account.used(), 100);
        assert_eq!(w2.check_write().unwrap(), 0);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(w2.poll_writable(&mut cx).is_pending());
        assert_eq!(&r1.try_read(30).unwrap()[..], &[1u8; 30][..]);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(w2.poll_writable(&mut cx).is_ready());
        // The permit is charged already: nobody else can take it.
        assert_eq!(account.used(), 100);
        assert_eq!(w1.check_write().unwrap(), 0);
        assert_eq!(w2.check_write().unwrap(), 30);
        w2.write(Bytes::from_static(b"abc")).unwrap();
        // The unused 27 bytes of the permit went back.
        assert_eq!(account.used(), 73);
        assert!(matches!(
            w2.write(Bytes::from(vec![0u8; 200])),
            Err(StreamError::Trap(_))
        ));
    }

    /// Every way a pipe ends gives its bytes back: read, reset, reader gone, read shutdown,
    /// FIN with a permit outstanding, and dropping both ends with bytes still queued.
    #[test]
    fn every_ending_gives_the_bytes_back() {
        let b = budget(Some(1 << 20));
        let fill = |w: &PipeWriter| {
            let n = w.check_write().unwrap();
            w.write(Bytes::from(vec![0u8; n])).unwrap();
            assert_eq!(w.check_write().unwrap(), MAX_CHUNK); // a permit outstanding too
        };
        for end in 0..5 {
            let (w, r) = super::pipe(DEFAULT_PIPE_CAPACITY, b.clone());
            fill(&w);
            assert_eq!(b.buffered(), 2 * MAX_CHUNK as u64);
            match end {
                0 => w.pipe().reset(),
                1 => r.pipe().close_reader(),
                2 => r.pipe().shutdown_read(),
                3 => {
                    w.pipe().finish();
                    assert_eq!(b.buffered(), MAX_CHUNK as u64);
                    while r.try_read(MAX_CHUNK).is_ok_and(|c| !c.is_empty()) {}
                }
                _ => {}
            }
            drop((w, r));
            assert_eq!(b.buffered(), 0, "ending {end}");
            assert_eq!(b.account().used(), 0, "ending {end}");
        }
    }

    #[tokio::test]
    async fn host_writer_waits_for_the_budget() {
        let account = MemoryAccount::new(Some(64 * 1024));
        let b = SocketBudget::new(account.clone(), SocketLimits::default(), Arc::new(AtomicU64::new(0)));
        let (mut w, mut r) = super::pipe(DEFAULT_PIPE_CAPACITY, b.clone());
        let writer = tokio::spawn(async move {
            let data = vec![5u8; 1 << 20];
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1000];
        loop {
            let n = AsyncReadExt::read(&mut r, &mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(account.used() <= 64 * 1024);
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(account.used(), 0);
    }

    #[test]
    fn reset_fails_both_ends() {
        let (w, r) = pipe(4);
        w.write(Bytes::from_static(b"12")).unwrap();
        let (count, waker) = counting();
        assert!(r.poll_readable(&mut Context::from_waker(&waker)).is_ready());
        let (w2, r2) = pipe(4);
        assert!(r2.poll_readable(&mut Context::from_waker(&waker)).is_pending());
        r2.pipe().reset();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(r2.try_read(4), Err(StreamError::LastOperationFailed(_))));
        assert!(matches!(w2.check_write(), Err(StreamError::LastOperationFailed(_))));
        w.pipe().reset();
        let err = match r.try_read(4) {
            Err(StreamError::LastOperationFailed(e)) => e,
            other => panic!("expected reset, got {other:?}"),
        };
        let io = err.downcast_ref::<io::Error>().expect("io error inside");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn tokio_traits_roundtrip_with_half_close() {
        let (mut w, mut r) = pipe(1024);
        let writer = tokio::spawn(async move {
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
            data
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, writer.await.unwrap());
    }
}
