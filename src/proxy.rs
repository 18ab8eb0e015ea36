//! The front proxy: the pod's one door to the host. It binds one real host address and
//! forwards every accepted connection into the pod's virtual network, to whatever listens on the
//! exposed pod port, copying both directions with half-close and backpressure.
//!
//! This module owns the host listener, the connection limit and the idle timeout; it knows the
//! pod only through its target and [`Events`]. A connection that arrives while nothing
//! listens on the pod port is closed at once, and an event says why. When the exposed port is
//! an http container's, the proxy serves HTTP itself, with no hop through the pod network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::container::HttpContainer;
use crate::net::{NetError, PodNetwork};
use crate::status::{EventKind, Events};

/// Limits of the front proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Connections served at once; further ones are closed immediately (with an event).
    pub max_connections: usize,
    /// A connection with no bytes moving in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// How long a new connection waits for an unready pod before it is refused.
    pub readiness_wait: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            readiness_wait: crate::spec::DEFAULT_READINESS_WAIT,
        }
    }
}

/// Why the front proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} for {target}: {source}")]
    Bind {
        addr: SocketAddr,
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the front proxy forwards to.
#[derive(Clone)]
pub enum ProxyTarget {
    /// Bytes, both ways, to whatever listens on a pod port (any TCP protocol).
    PodPort { network: Arc<PodNetwork>, port: u16 },
    /// HTTP served by an http container directly, with no extra hop through the pod network.
    Http(Arc<HttpContainer>),
}

impl ProxyTarget {
    fn describe(&self) -> String {
        match self {
            ProxyTarget::PodPort { port, .. } => format!("pod port {port}"),
            ProxyTarget::Http(container) => format!("http container {}", container.name()),
        }
    }
}

/// A running front proxy; dropping it closes the host listener and every forwarded connection.
pub struct FrontProxy {
    local_addr: SocketAddr,
    stop: CancellationToken,
}

/// Bytes copied per read; each direction holds at most one such buffer (backpressure).
const COPY_BUFFER: usize = 64 * 1024;

impl FrontProxy {
    /// Binds `addr` (port 0 picks a free port) and forwards connections to `target` while
    /// `ready` says the pod is ready; while it is not, a new connection waits up to
    /// `limits.readiness_wait` and is then refused.
    pub async fn start(
        addr: SocketAddr,
        target: ProxyTarget,
        limits: ProxyLimits,
        ready: watch::Receiver<bool>,
        events: Events,
    ) -> Result<FrontProxy, ProxyError> {
        let bind_error = |source| ProxyError::Bind {
            addr,
            target: target.describe(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let stop = CancellationToken::new();
        let forwarder = Forwarder {
            target,
            limits,
            ready,
            events,
            stop: stop.clone(),
        };
        tokio::spawn(forwarder.accept_loop(listener));
        Ok(FrontProxy { local_addr, stop })
    }

    /// The host address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Forwarder {
    target: ProxyTarget,
    ready: watch::Receiver<bool>,
    limits: ProxyLimits,
    events: Events,
    stop: CancellationToken,
}

impl Forwarder {
    async fn accept_loop(self, listener: TcpListener) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.limits.max_connections));
        loop {
            let accepted = tokio::select! {
                () = this.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection failures (e.g. the client reset before accept) are not
                    // fatal; back off briefly on resource exhaustion so the loop cannot spin.
                    this.events.emit(
                        None,
                        EventKind::Warning {
                            message: format!("front proxy accept failed: {e}"),
                        },
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                this.events.emit(
                    None,
                    EventKind::Warning {
                        message: format!(
                            "front proxy refused {peer}: {} connections already open",
                            this.limits.max_connections
                        ),
                    },
                );
                continue;
            };
            let this = this.clone();
            tokio::spawn(async move {
                let _slot = slot;
                this.forward(client, peer).await;
            });
        }
    }

    async fn forward(&self, client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        if !*self.ready.borrow() {
            let mut ready = self.ready.clone();
            let wait = self.limits.readiness_wait;
            let became_ready = tokio::time::timeout(wait, ready.wait_for(|ready| *ready)).await;
            if !matches!(became_ready, Ok(Ok(_))) {
                self.events.emit(
                    None,
                    EventKind::Warning {
                        message: format!(
                            "front proxy refused {peer}: the pod was not ready within {}",
                            humantime::format_duration(wait)
                        ),
                    },
                );
                return;
            }
        }
        let (network, port) = match &self.target {
            ProxyTarget::Http(container) => {
                let stop = self.stop.clone().cancelled_owned();
                // Errors are per connection (a client that hung up): nothing to report.
                let _ = container.clone().serve_connection_until(client, stop).await;
                return;
            }
            ProxyTarget::PodPort { network, port } => (network, *port),
        };
        let inside = match network.connect(port) {
            Ok(stream) => stream,
            Err(e) => {
                let why = match e {
                    NetError::ConnectionRefused => format!("nothing listens on pod port {port}"),
                    other => other.to_string(),
                };
                self.events.emit(
                    None,
                    EventKind::Warning {
                        message: format!("front proxy closed {peer}: {why}"),
                    },
                );
                return;
            }
        };
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = copy_both_ways(client, inside, self.limits.idle_timeout) => {}
        }
    }
}

/// Copies both directions until both have ended, passing each end-of-stream on as a
/// half-close; gives up when nothing moved either way for `idle`.
async fn copy_both_ways<A, B>(a: A, b: B, idle: Duration)
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
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let read = match tokio::time::timeout(idle, from.read(&mut buffer)).await {
            Ok(read) => read?,
            Err(_) => {
                // This direction was quiet; the connection is idle only if the other was too.
                let since_start = started.elapsed().as_millis() as u64;
                let quiet_for = since_start.saturating_sub(last_activity.load(Ordering::Relaxed));
                if quiet_for >= idle.as_millis() as u64 {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                continue;
            }
        };
        if read == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..read]).await?;
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
