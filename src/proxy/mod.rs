//! The front proxy: the pod's one door to the host. It binds one real host address and
//! forwards every accepted connection into the pod's virtual network, to whatever listens on the
//! exposed pod port, copying both directions with half-close and backpressure.
//!
//! This module owns the forwarding and the limits' settings ([`ProxyLimits`]); the limits
//! themselves are applied by its [`Gate`] (how many connections are open at once, how many one
//! client address may hold, the timeouts that close slow or idle clients, the largest request
//! head), which the edge host's listeners pass through too. It knows the pod only through its
//! [`Targets`] and [`Events`]. A connection
//! that arrives while nothing listens on the pod port is closed at once. When the exposed port is
//! an http container's, the proxy serves HTTP itself, with no hop through the pod network.
//! Refusals are reported as events, the first at once and then one summary per interval
//! ([`report`]), never one line per connection.

mod copy;
mod current;
mod file_limit;
mod gate;
mod report;
mod slow_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::container::HttpContainer;
use crate::net::{NetError, PodNetwork};
use crate::route::HttpPorts;
use crate::status::Events;

pub(crate) use current::{http_builder, serve_current};
pub use file_limit::{FileLimit, raise_open_file_limit};
pub(crate) use gate::{Gate, listen};
use report::Refusal;

/// Limits of the front proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Connections open at once. At the limit the proxy stops accepting: new clients wait in
    /// the kernel's listen backlog until a connection closes.
    pub max_connections: usize,
    /// Connections one client address may hold open at once (IPv6 clients are counted per /64,
    /// the block one host usually holds); further ones are closed at once. 0: no such cap.
    pub max_connections_per_address: usize,
    /// Length of the listen backlog, where clients wait while the proxy is at its limit (the
    /// kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// A plain-TCP connection (a pod port target) with no bytes moving in either direction for
    /// this long is closed.
    pub idle_timeout: Duration,
    /// HTTP: how long a client may take to send a request head, from its first byte.
    pub header_read_timeout: Duration,
    /// HTTP: how long a keep-alive connection may wait for its next request (no byte of it
    /// sent) before it is closed.
    pub keep_alive_timeout: Duration,
    /// How long a new connection waits for an unready pod before it is refused.
    pub readiness_wait: Duration,
    /// Refusals after the first are summed up in one event per interval.
    pub report_interval: Duration,
    /// HTTP: a request head (request line and headers) that reaches this many bytes gets 431
    /// and the connection closes.
    pub max_header_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_connections: 16_384,
            max_connections_per_address: 1024,
            backlog: 4096,
            idle_timeout: Duration::from_secs(300),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            readiness_wait: crate::spec::DEFAULT_READINESS_WAIT,
            report_interval: Duration::from_secs(1),
            max_header_bytes: 64 << 10,
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
    /// HTTP served by an http container directly, with no extra hop through the pod network:
    /// each request goes to the version that serves `port` in `ports` when it arrives (so a
    /// swapped container takes over at once), `container` (the first version) if none does.
    Http {
        container: Arc<HttpContainer>,
        ports: Arc<HttpPorts>,
        port: u16,
    },
}

impl ProxyTarget {
    fn describe(&self) -> String {
        match self {
            ProxyTarget::PodPort { port, .. } => format!("pod port {port}"),
            ProxyTarget::Http { container, .. } => format!("http container {}", container.name()),
        }
    }
}

/// What a connection arriving now goes to: the target, the readiness that gates it, and how
/// long a connection waits for that readiness before it is refused.
pub struct Resolved {
    pub target: ProxyTarget,
    pub ready: watch::Receiver<bool>,
    pub readiness_wait: Duration,
}

/// Where a front proxy's connections go, looked up for each new connection: a pod's own proxy
/// always has the same target; an edge host's `[expose] host_port` listener outlives the pods
/// deployed behind it and looks the current one up.
pub trait Targets: Send + Sync + 'static {
    /// `None`: nothing serves now; the connection is closed.
    fn resolve(&self) -> Option<Resolved>;
}

/// One pod's target, fixed for the life of the proxy.
struct Fixed {
    target: ProxyTarget,
    ready: watch::Receiver<bool>,
    readiness_wait: Duration,
}

impl Targets for Fixed {
    fn resolve(&self) -> Option<Resolved> {
        Some(Resolved {
            target: self.target.clone(),
            ready: self.ready.clone(),
            readiness_wait: self.readiness_wait,
        })
    }
}

/// A running front proxy; dropping it closes the host listener and every forwarded connection.
pub struct FrontProxy {
    local_addr: SocketAddr,
    stop: CancellationToken,
}

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
        let describe = target.describe();
        let fixed = Fixed {
            target,
            ready,
            readiness_wait: limits.readiness_wait,
        };
        FrontProxy::start_resolving(addr, &describe, Arc::new(fixed), limits, events)
    }

    /// Binds `addr` and forwards each connection to what `targets` resolves when it arrives;
    /// `describe` names the target in a bind error.
    pub fn start_resolving(
        addr: SocketAddr,
        describe: &str,
        targets: Arc<dyn Targets>,
        limits: ProxyLimits,
        events: Events,
    ) -> Result<FrontProxy, ProxyError> {
        let bind_error = |source| ProxyError::Bind {
            addr,
            target: describe.to_string(),
            source,
        };
        let listener = gate::listen(addr, limits.backlog).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let stop = CancellationToken::new();
        let gate = Gate::new("front proxy", limits, events, stop.clone());
        let forwarder = Arc::new(Forwarder {
            targets,
            gate: gate.clone(),
        });
        tokio::spawn(gate.run(listener, move |client, peer| forwarder.clone().forward(client, peer)));
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
    targets: Arc<dyn Targets>,
    gate: Arc<Gate>,
}

impl Forwarder {
    async fn forward(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let reporter = self.gate.reporter();
        let Some(Resolved {
            target,
            ready,
            readiness_wait,
        }) = self.targets.resolve()
        else {
            let why = "no pod serves this port now".to_string();
            reporter.record(
                Refusal::Unreachable,
                || format!("front proxy closed {peer}: {why}"),
                || why.clone(),
            );
            return;
        };
        if !*ready.borrow() {
            let mut ready = ready.clone();
            let became_ready = tokio::time::timeout(readiness_wait, ready.wait_for(|ready| *ready)).await;
            if !matches!(became_ready, Ok(Ok(_))) {
                let why = format!(
                    "the pod was not ready within {}",
                    humantime::format_duration(readiness_wait)
                );
                reporter.record(
                    Refusal::NotReady,
                    || format!("front proxy refused {peer}: {why}"),
                    || why.clone(),
                );
                return;
            }
        }
        let stop = self.gate.stop().clone();
        let (network, port) = match &target {
            ProxyTarget::Http { container, ports, port } => {
                let Some((client, builder)) = self.gate.http(client).await else {
                    return;
                };
                // Errors are per connection (a client that hung up or was too slow): nothing
                // to report.
                let _ = serve_current(
                    ports.clone(),
                    *port,
                    container.clone(),
                    client,
                    stop.cancelled_owned(),
                    &builder,
                )
                .await;
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
                reporter.record(
                    Refusal::Unreachable,
                    || format!("front proxy closed {peer}: {why}"),
                    || why.clone(),
                );
                return;
            }
        };
        let idle_timeout = self.gate.limits().idle_timeout;
        tokio::select! {
            () = stop.cancelled() => {}
            () = copy::copy_both_ways(client, inside, idle_timeout) => {}
        }
    }
}
