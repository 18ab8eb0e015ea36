//! The front proxy: the pod's one door to the host. It binds one real host address and
//! forwards every accepted connection into the pod's virtual network, to whatever listens on the
//! exposed pod port, copying both directions with half-close and backpressure.
//!
//! This module owns the host listener and the connection limits: how many connections are open
//! at once (over the limit it stops accepting, so new clients wait in the kernel's listen backlog
//! instead of being reset), how many one client address may hold, and the timeouts that close
//! slow or idle clients. It knows the pod only through its target and [`Events`]. A connection
//! that arrives while nothing listens on the pod port is closed at once. When the exposed port is
//! an http container's, the proxy serves HTTP itself, with no hop through the pod network.
//! Refusals are reported as events, the first at once and then one summary per interval
//! ([`report`]), never one line per connection.

mod copy;
mod current;
mod file_limit;
mod report;
mod slow_client;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::container::HttpContainer;
use crate::net::{NetError, PodNetwork};
use crate::route::HttpPorts;
use crate::status::Events;

pub(crate) use current::{http_builder, serve_current};
pub use file_limit::{FileLimit, raise_open_file_limit};
use report::{Refusal, Reporter, count};

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

/// A running front proxy; dropping it closes the host listener and every forwarded connection.
pub struct FrontProxy {
    local_addr: SocketAddr,
    stop: CancellationToken,
}

/// While at the limit, how often the accept loop looks whether clients wait in the backlog.
const BACKLOG_CHECK: Duration = Duration::from_millis(100);

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
        let listener = listen(addr, limits.backlog).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let stop = CancellationToken::new();
        let reporter = Arc::new(Reporter::new(events, limits.report_interval));
        tokio::spawn(reporter.clone().run(stop.clone()));
        let forwarder = Forwarder {
            target,
            limits,
            ready,
            reporter,
            addresses: (limits.max_connections_per_address > 0).then(|| {
                Arc::new(AddressTable {
                    cap: limits.max_connections_per_address,
                    open: Mutex::new(HashMap::new()),
                })
            }),
            stop: stop.clone(),
        };
        tokio::spawn(Arc::new(forwarder).accept_loop(listener));
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

/// Binds with our own backlog (tokio's `TcpListener::bind` fixes it at 1024).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std's bind does: a restarted pod can listen again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// How many accepted-by-the-kernel connections wait in `listener`'s backlog right now.
#[cfg(target_os = "linux")]
fn backlog_len(listener: &TcpListener) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `listener`; `info` and `len` are valid for
    // writes of the sizes given. For a listening socket Linux reports the accept queue's length
    // in `tcpi_unacked`.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_unacked)
}

#[cfg(not(target_os = "linux"))]
fn backlog_len(_listener: &TcpListener) -> Option<u32> {
    None
}

struct Forwarder {
    target: ProxyTarget,
    ready: watch::Receiver<bool>,
    limits: ProxyLimits,
    reporter: Arc<Reporter>,
    addresses: Option<Arc<AddressTable>>,
    stop: CancellationToken,
}

impl Forwarder {
    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        loop {
            // A slot first, then accept: over the limit, clients stay in the kernel's backlog
            // (their handshake done, their bytes buffered) rather than being accepted and reset.
            let (slot, waited) = match slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, false),
                Err(_) => match self.wait_for_slot(&slots, &listener).await {
                    Some(slot) => (slot, true),
                    None => return,
                },
            };
            let held = waited && backlog_len(&listener).is_some_and(|waiting| waiting > 0);
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection failures (e.g. the client reset before accept) are not
                    // fatal; back off briefly on resource exhaustion so the loop cannot spin.
                    self.reporter.record(
                        Refusal::AcceptFailed,
                        || format!("front proxy accept failed: {e}"),
                        || e.to_string(),
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if held {
                let max = self.limits.max_connections;
                self.reporter.record(
                    Refusal::AtLimit,
                    || {
                        format!(
                            "front proxy at its limit of {} open connections: {peer} waited in the listen backlog",
                            count(max as u64)
                        )
                    },
                    || format!("limit {max} open"),
                );
            }
            let address_slot = match &self.addresses {
                None => None,
                Some(table) => match table.admit(peer.ip()) {
                    Some(slot) => Some(slot),
                    None => {
                        // Dropping `client` closes it; the cap is what keeps one client from
                        // holding every slot (slowloris).
                        let cap = table.cap;
                        self.reporter.record(
                            Refusal::PerAddress,
                            || {
                                format!(
                                    "front proxy refused {peer}: {} connections already open from {}",
                                    count(cap as u64),
                                    client_key(peer.ip())
                                )
                            },
                            || format!("limit {cap} open per client address"),
                        );
                        continue;
                    }
                },
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _slots = (slot, address_slot);
                this.forward(client, peer).await;
            });
        }
    }

    /// Waits for a free connection slot, telling once when clients queue up behind the limit.
    async fn wait_for_slot(&self, slots: &Arc<Semaphore>, listener: &TcpListener) -> Option<OwnedSemaphorePermit> {
        let acquire = slots.clone().acquire_owned();
        tokio::pin!(acquire);
        let mut check = tokio::time::interval(BACKLOG_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return None,
                slot = &mut acquire => return slot.ok(),
                _ = check.tick() => {
                    if let Some(waiting) = backlog_len(listener).filter(|waiting| *waiting > 0) {
                        let (max, backlog) = (self.limits.max_connections, self.limits.backlog);
                        self.reporter.notice(Refusal::AtLimit, || {
                            format!(
                                "front proxy at its limit of {} open connections: {} new {} waiting in the listen backlog (room for {})",
                                count(max as u64),
                                count(u64::from(waiting)),
                                if waiting == 1 { "client" } else { "clients" },
                                count(u64::from(backlog)),
                            )
                        });
                    }
                }
            }
        }
    }

    async fn forward(&self, client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        if !*self.ready.borrow() {
            let mut ready = self.ready.clone();
            let wait = self.limits.readiness_wait;
            let became_ready = tokio::time::timeout(wait, ready.wait_for(|ready| *ready)).await;
            if !matches!(became_ready, Ok(Ok(_))) {
                let why = format!("the pod was not ready within {}", humantime::format_duration(wait));
                self.reporter.record(
                    Refusal::NotReady,
                    || format!("front proxy refused {peer}: {why}"),
                    || why.clone(),
                );
                return;
            }
        }
        let (network, port) = match &self.target {
            ProxyTarget::Http { container, ports, port } => {
                // hyper allocates its read and write buffers (8 KiB each) as soon as it serves a
                // connection; a client that has sent nothing yet costs only its socket and this
                // task until its first byte. Silence counts against the keep-alive timeout.
                let first_byte = tokio::time::timeout(self.limits.keep_alive_timeout, client.readable());
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    readable = first_byte => if !matches!(readable, Ok(Ok(()))) { return },
                }
                let guard = slow_client::Guard::new(self.limits.header_read_timeout, self.limits.keep_alive_timeout);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .keep_alive(true)
                    // Answers to pipelined requests go out in one write.
                    .pipeline_flush(true)
                    .timer(guard.timer())
                    .header_read_timeout(self.limits.header_read_timeout);
                let stop = self.stop.clone().cancelled_owned();
                // Errors are per connection (a client that hung up or was too slow): nothing
                // to report.
                let _ = serve_current(
                    ports.clone(),
                    *port,
                    container.clone(),
                    guard.watch(client),
                    stop,
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
                self.reporter.record(
                    Refusal::Unreachable,
                    || format!("front proxy closed {peer}: {why}"),
                    || why.clone(),
                );
                return;
            }
        };
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = copy::copy_both_ways(client, inside, self.limits.idle_timeout) => {}
        }
    }
}

/// Open connections per client address, for the per-address cap.
struct AddressTable {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressTable {
    /// A slot for one more connection from `ip`, or `None` when it holds `cap` already.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = client_key(ip);
        let mut open = crate::sync::lock(&self.open);
        let held = open.entry(key).or_insert(0);
        if *held >= self.cap {
            return None;
        }
        *held += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One open connection counted against its client address; dropping it gives the slot back.
struct AddressSlot {
    table: Arc<AddressTable>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = crate::sync::lock(&self.table.open);
        if let Some(held) = open.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted under: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64, since one host usually holds a whole /64 and could otherwise pick fresh addresses.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_per_ipv4_address_and_per_ipv6_64() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(client_key(v4), v4);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn the_address_table_caps_and_gives_slots_back() {
        let table = Arc::new(AddressTable {
            cap: 2,
            open: Mutex::new(HashMap::new()),
        });
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let first = table.admit(ip).unwrap();
        let _second = table.admit(ip).unwrap();
        assert!(table.admit(ip).is_none());
        assert!(table.admit("127.0.0.3".parse().unwrap()).is_some());
        drop(first);
        assert!(table.admit(ip).is_some());
    }
}
