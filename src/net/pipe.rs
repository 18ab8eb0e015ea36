//! The bounded, one-directional byte pipe that carries one direction of a virtual TCP
//! connection between two stores (or between a store and the host).
//!
//! A pipe owns the bytes in flight, the end-of-stream (FIN), reset and reader-gone flags and the
//! two wakers; it knows nothing of sockets, ports or WASI bindings. Its two ends implement both
//! the wasi-io stream traits (for guests) and the tokio I/O traits (for the host side: front
//! proxy, tests), so either end of a connection can live in a guest or on the host.
//!
//! Readiness is exact (design note §8.1): `ready()` resolves only when `read` would return data,
//! end-of-stream or an error, or when `check_write` would return a non-zero permit or an error.
//! wasmtime's `blocking_read`/`write_ready` trap after 10 spurious wakeups, so "maybe ready" is a
//! bug here, not a performance issue.
//!
//! Locking: one `std::sync::Mutex` per pipe, never held across an `.await`; wakers are taken out
//! under the lock and woken after unlocking, so a wakeup can never re-enter a held lock.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{InputStream, OutputStream, StreamError, StreamResult};

/// Bytes buffered per direction before writers see backpressure; big enough to keep a 64 KiB
/// write permit in flight while the reader works on the previous one.
pub const DEFAULT_PIPE_CAPACITY: usize = 256 * 1024;

/// Largest permit/read handed out at once: wasmtime's own cap on guest-driven host
/// allocations (`MAX_READ_SIZE_ALLOC`), so a guest cannot make the host allocate more per call.
pub const MAX_CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct PipeState {
    /// Bytes written but not yet read; `len` is their total, bounded by `cap`.
    buf: VecDeque<Bytes>,
    len: usize,
    cap: usize,
    /// The writer finished (FIN): the reader sees end-of-stream once `buf` is drained.
    fin: bool,
    /// The connection was reset: both ends fail with `ConnectionReset`, buffered data is gone.
    reset: bool,
    /// The reader is gone (dropped or shut down): further writes fail, buffered data is gone.
    reader_gone: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl PipeState {
    fn free(&self) -> usize {
        self.cap.saturating_sub(self.len)
    }

    /// True when a read would not return "no data yet".
    fn readable(&self) -> bool {
        !self.buf.is_empty() || self.fin || self.reset || self.reader_gone
    }

    /// True when `check_write` would not return a zero permit.
    fn writable(&self) -> bool {
        self.free() > 0 || self.fin || self.reset || self.reader_gone
    }

    /// Removes up to `max` bytes from the front, without copying when one chunk suffices.
    fn take(&mut self, max: usize) -> Bytes {
        let Some(front) = self.buf.front_mut() else {
            return Bytes::new();
        };
        let out = if front.len() > max {
            front.split_to(max)
        } else if front.len() == max || self.buf.len() == 1 {
            self.buf.pop_front().unwrap_or_default()
        } else {
            // Coalesce small chunks so a guest asking for 64 KiB is not handed 10 bytes at a
            // time when more is already buffered.
            let mut acc = BytesMut::with_capacity(max.min(self.len));
            while acc.len() < max {
                let Some(front) = self.buf.front_mut() else {
                    break;
                };
                let want = max - acc.len();
                if front.len() > want {
                    acc.extend_from_slice(&front.split_to(want));
                } else {
                    acc.extend_from_slice(front);
                    self.buf.pop_front();
                }
            }
            acc.freeze()
        };
        self.len -= out.len();
        out
    }
}

/// One direction of a connection; shared by its [`PipeReader`] and [`PipeWriter`].
#[derive(Debug)]
pub struct Pipe {
    st: Mutex<PipeState>,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the connection, so recover instead of poisoning every peer.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks end-of-stream from the writer side (FIN), keeping buffered bytes readable.
    pub fn finish(&self) {
        let waker = {
            let mut st = self.lock();
            st.fin = true;
            st.read_waker.take()
        };
        wake(waker);
    }

    /// Marks the reader gone: buffered bytes are discarded and the writer's next operation
    /// reports the stream closed (like EPIPE after the peer closed).
    pub fn close_reader(&self) {
        let (w, r) = {
            let mut st = self.lock();
            st.reader_gone = true;
            st.buf.clear();
            st.len = 0;
            (st.write_waker.take(), st.read_waker.take())
        };
        wake(w);
        wake(r);
    }

    /// Resets the direction: both ends fail with `ConnectionReset` and buffered bytes are lost.
    pub fn reset(&self) {
        let (w, r) = {
            let mut st = self.lock();
            st.reset = true;
            st.buf.clear();
            st.len = 0;
            (st.write_waker.take(), st.read_waker.take())
        };
        wake(w);
        wake(r);
    }

    /// Bytes currently buffered (for tests and diagnostics).
    pub fn buffered(&self) -> usize {
        self.lock().len
    }

    /// True once the writer finished or the direction was torn down.
    pub fn is_finished(&self) -> bool {
        let st = self.lock();
        st.fin || st.reset || st.reader_gone
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

/// Creates a pipe of `capacity` bytes (at least 1) and returns its two ends.
pub fn pipe(capacity: usize) -> (PipeWriter, PipeReader) {
    let p = Arc::new(Pipe {
        st: Mutex::new(PipeState {
            buf: VecDeque::new(),
            len: 0,
            cap: capacity.max(1),
            fin: false,
            reset: false,
            reader_gone: false,
            read_waker: None,
            write_waker: None,
        }),
    });
    (PipeWriter(p.clone()), PipeReader(p))
}

/// The reading end. Dropping it tells the writer nobody will read any more.
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
            if st.reader_gone {
                return Err(StreamError::Closed);
            }
            if st.buf.is_empty() {
                return if st.fin {
                    Err(StreamError::Closed)
                } else {
                    Ok(Bytes::new())
                };
            }
            if max == 0 {
                return Ok(Bytes::new());
            }
            let data = st.take(max.min(MAX_CHUNK));
            (data, st.write_waker.take())
        };
        wake(waker);
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
        self.0.close_reader();
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
        let waker = {
            let mut st = self.0.lock();
            if st.reset {
                return Poll::Ready(Err(reset_error()));
            }
            if st.reader_gone {
                // Read side shut down locally: behave like EOF, as a kernel socket does.
                return Poll::Ready(Ok(()));
            }
            if st.buf.is_empty() {
                if st.fin {
                    return Poll::Ready(Ok(()));
                }
                register(&mut st.read_waker, cx);
                return Poll::Pending;
            }
            while out.remaining() > 0 {
                let Some(front) = st.buf.front_mut() else {
                    break;
                };
                let n = front.len().min(out.remaining());
                out.put_slice(&front[..n]);
                if n == front.len() {
                    st.buf.pop_front();
                } else {
                    let _ = front.split_to(n);
                }
                st.len -= n;
            }
            st.write_waker.take()
        };
        wake(waker);
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
        } else if st.reader_gone || st.fin {
            Err(StreamError::Closed)
        } else {
            Ok(())
        }
    }

    /// How many bytes may be written now (0 = wait for `ready`), capped at [`MAX_CHUNK`].
    pub fn check_write(&self) -> StreamResult<usize> {
        let st = self.0.lock();
        Self::status(&st)?;
        Ok(st.free().min(MAX_CHUNK))
    }

    /// Appends `bytes`; more than the free space is a guest bug and traps, as in wasmtime.
    pub fn write(&self, bytes: Bytes) -> StreamResult<()> {
        let waker = {
            let mut st = self.0.lock();
            Self::status(&st)?;
            if bytes.is_empty() {
                return Ok(());
            }
            if bytes.len() > st.free() {
                return Err(StreamError::trap("write exceeds the permit from check-write"));
            }
            st.len += bytes.len();
            st.buf.push_back(bytes);
            st.read_waker.take()
        };
        wake(waker);
        Ok(())
    }

    /// Resolves when `check_write` would return a non-zero permit or an error.
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.writable() {
            Poll::Ready(())
        } else {
            register(&mut st.write_waker, cx);
            Poll::Pending
        }
    }

    /// Resolves when the reader is gone or the pipe was reset, whether or not there is room:
    /// lets a host-side pump stop waiting on its source once nobody will read the bytes.
    /// Shares the writer's waker slot, so poll it from the same task as the writes.
    pub fn poll_reader_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.reader_gone || st.reset {
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
}

impl AsyncWrite for PipeWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let waker = {
            let mut st = self.0.lock();
            if st.reset {
                return Poll::Ready(Err(reset_error()));
            }
            if st.reader_gone || st.fin {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if data.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = st.free().min(data.len()).min(MAX_CHUNK);
            if n == 0 {
                register(&mut st.write_waker, cx);
                return Poll::Pending;
            }
            st.len += n;
            st.buf.push_back(Bytes::copy_from_slice(&data[..n]));
            (st.read_waker.take(), n)
        };
        wake(waker.0);
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
    use std::sync::atomic::{AtomicUsize, Ordering};
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
        drop(r);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(w.check_write(), Err(StreamError::Closed)));
        assert!(matches!(w.write(Bytes::from_static(b"x")), Err(StreamError::Closed)));
        assert_eq!(w.pipe().buffered(), 0);
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
