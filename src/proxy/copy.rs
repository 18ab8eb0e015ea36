//! Byte forwarding of the front proxy's plain-TCP path: both directions copied with half-close
//! and backpressure, closed when idle.
//!
//! Copy buffers are borrowed only while bytes are in hand: a read is polled with a buffer from a
//! small per-thread pool, and when nothing is there to read the buffer goes straight back. An idle
//! connection therefore holds no copy buffer at all, so thousands of idle clients cost little
//! more than their sockets.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes copied per read.
const COPY_BUFFER: usize = 64 * 1024;
/// Buffers kept per thread for reuse; more are freed when given back.
const SPARE_PER_THREAD: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn borrow_buffer() -> Box<[u8]> {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; COPY_BUFFER].into_boxed_slice())
}

fn give_back(buffer: Box<[u8]>) {
    // During thread teardown the pool is gone and the buffer is simply freed.
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_PER_THREAD {
            spare.push(buffer);
        }
    });
}

/// Copies both directions until both have ended, passing each end-of-stream on as a
/// half-close; gives up when nothing moved either way for `idle`.
pub(super) async fn copy_both_ways<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let outbound = copy_one_way(a_read, b_write, idle, started, &last_activity);
    let inbound = copy_one_way(b_read, a_write, idle, started, &last_activity);
    let _ = tokio::join!(outbound, inbound);
}

async fn copy_one_way<R, W>(
    mut from: R,
    mut to: W,
    idle: Duration,
    started: Instant,
    last_activity: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let (buffer, read) = match tokio::time::timeout(idle, read_some(&mut from)).await {
            Ok(read) => read?,
            Err(_) => {
                // This direction was quiet; the connection is idle only if the other was too.
                let since_start = started.elapsed().as_millis() as u64;
                let quiet_for = since_start.saturating_sub(last_activity.load(Ordering::Relaxed));
                if quiet_for >= idle.as_millis() as u64 {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                continue;
            }
        };
        if read == 0 {
            give_back(buffer);
            return to.shutdown().await;
        }
        let written = to.write_all(&buffer[..read]).await;
        give_back(buffer);
        written?;
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Reads what is there into a borrowed buffer; holds no buffer while waiting.
async fn read_some<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<(Box<[u8]>, usize)> {
    poll_fn(|cx| {
        let mut buffer = borrow_buffer();
        let mut read_buf = ReadBuf::new(&mut buffer);
        match Pin::new(&mut *from).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let read = read_buf.filled().len();
                Poll::Ready(Ok((buffer, read)))
            }
            Poll::Ready(Err(e)) => {
                give_back(buffer);
                Poll::Ready(Err(e))
            }
            // A pending read put nothing in the buffer; the next poll may use another one.
            Poll::Pending => {
                give_back(buffer);
                Poll::Pending
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, server) = tokio::io::duplex(1024);
        let copying = tokio::spawn(copy_both_ways(proxy_a, proxy_b, Duration::from_secs(60)));
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let big = vec![7u8; 3 * COPY_BUFFER + 5];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client_write.write_all(&sent).await.unwrap();
            client_write.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        server_read.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, big);
        writer.await.unwrap();
        server_write.write_all(b"answer").await.unwrap();
        server_write.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_read.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        copying.await.unwrap();
    }
}
