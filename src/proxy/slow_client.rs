//! The slow-client guard of the front proxy's http path: how long a client may take to send a
//! request head, and how long a keep-alive connection may wait between requests.
//!
//! hyper measures the header-read time itself, but only with a timer it is given, and it starts
//! that clock when it becomes ready for a request, so to hyper an idle keep-alive connection and
//! a slowloris head trickling in look the same. This module gives it a timer that tells them
//! apart by watching the connection's reads: once a byte of the next request arrived, the head
//! has the header-read timeout from that byte; while nothing arrived since the last response
//! (or since connect), the connection has the keep-alive timeout. hyper's http1 server uses its
//! timer for the header-read timeout only, so every sleep it asks for is one of these.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's view of its reads, shared by its [`Watched`] stream and its timer.
struct Clock {
    origin: Instant,
    /// Milliseconds since `origin`, plus one, of the first byte read since hyper last became
    /// ready for a request; 0 while none arrived.
    head_started: AtomicU64,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    fn instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_millis(ms.saturating_sub(1)))
    }
}

/// The timeouts of one http connection; [`Guard::watch`] wraps its stream and
/// [`Guard::timer`] is the timer for hyper.
pub(super) struct Guard {
    clock: Arc<Clock>,
    header_read: Duration,
    keep_alive: Duration,
}

impl Guard {
    pub(super) fn new(header_read: Duration, keep_alive: Duration) -> Guard {
        Guard {
            clock: Arc::new(Clock {
                origin: Instant::now(),
                head_started: AtomicU64::new(0),
            }),
            header_read: header_read.max(Duration::from_millis(1)),
            keep_alive: keep_alive.max(Duration::from_millis(1)),
        }
    }

    /// `io`, with its reads noted for the timer.
    pub(super) fn watch<IO>(&self, io: IO) -> Watched<IO> {
        Watched {
            io,
            clock: self.clock.clone(),
        }
    }

    /// The timer to give hyper (with any `header_read_timeout`, which switches it on).
    pub(super) fn timer(&self) -> GuardTimer {
        GuardTimer {
            clock: self.clock.clone(),
            header_read_ms: self.header_read.as_millis().max(1) as u64,
            keep_alive_ms: self.keep_alive.as_millis().max(1) as u64,
        }
    }
}

/// A client stream whose reads are noted on the connection's clock.
pub(crate) struct Watched<IO> {
    io: IO,
    clock: Arc<Clock>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let clock = &self.clock;
            if clock.head_started.load(Ordering::Relaxed) == 0 {
                clock.head_started.store(clock.now_ms(), Ordering::Relaxed);
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// hyper's timer for one connection (see the module docs).
#[derive(Clone)]
pub(super) struct GuardTimer {
    clock: Arc<Clock>,
    header_read_ms: u64,
    keep_alive_ms: u64,
}

impl hyper::rt::Timer for GuardTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(PlainSleep(Box::pin(tokio::time::sleep(duration))))
    }

    /// hyper asks for this when it starts waiting for a request head; the deadline it computed
    /// is replaced by ours.
    fn sleep_until(&self, _deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let clock = &self.clock;
        clock.head_started.store(0, Ordering::Relaxed);
        let ready_at = clock.now_ms();
        let first_check = ready_at + self.header_read_ms.min(self.keep_alive_ms);
        Box::pin(HeadDeadline {
            timer: self.clone(),
            ready_at,
            sleep: Box::pin(tokio::time::sleep_until(clock.instant(first_check))),
        })
    }
}

/// Ends when the request head took too long or the connection sat idle too long.
struct HeadDeadline {
    timer: GuardTimer,
    /// When hyper became ready for the request (clock milliseconds).
    ready_at: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let timer = &self.timer;
            let now = timer.clock.now_ms();
            let started = timer.clock.head_started.load(Ordering::Relaxed);
            let (deadline, next_check) = if started != 0 {
                let deadline = started + timer.header_read_ms;
                (deadline, deadline)
            } else {
                // Idle so far; look again in time to catch a head that starts meanwhile.
                let deadline = self.ready_at + timer.keep_alive_ms;
                (deadline, deadline.min(now + timer.header_read_ms))
            };
            if now >= deadline {
                return Poll::Ready(());
            }
            let at = timer.clock.instant(next_check);
            self.sleep.as_mut().reset(at);
        }
    }
}

impl hyper::rt::Sleep for HeadDeadline {}

struct PlainSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for PlainSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for PlainSleep {}
