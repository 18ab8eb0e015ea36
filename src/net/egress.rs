//! Egress: which destinations outside the pod a container may reach, and the real host
//! sockets that carry the connections it is allowed to make.
//!
//! This module owns the per-container egress state ([`Egress`]: the container's typed
//! [`EgressPolicy`], its denial hook, the names the guest resolved) and the dialer/bridge that
//! connects a guest's pipe pair to a real `tokio::net::TcpStream`. The policy itself (rule
//! syntax and matching) lives in the leaf module [`crate::egress`], parsed once when the spec
//! is lowered, and is re-exported here. This module does not own the socket state machine
//! (`tcp.rs`) or name lookup (`lookup.rs`); both ask it what is allowed.
//!
//! Rules, on purpose:
//! - Default deny: an empty policy reaches nothing outside the pod.
//! - Outbound TCP only. A container never listens on the host, and UDP to anywhere outside the
//!   pod stays `access-denied` (a datagram per call would make per-destination policy and
//!   reporting costly; no guest of ours needs it yet).
//! - A refused connect is `access-denied` (what wasmtime's own allow-list returns, and what
//!   Rust's std reports as `PermissionDenied`), so a guest can tell "the pod forbids this" from
//!   "nobody listens there" (`connection-refused`). A refused lookup is `name-unresolvable`.
//!   Every refusal is reported through the container's [`DeniedHook`].
//! - `127.0.0.0/8`, `::1`, `0.0.0.0`, `::` and `localhost` always mean the pod, never the host,
//!   so rules naming them are rejected: they could never match. The host's own loopback is
//!   named `host.wasmpod.internal`, which resolves to [`HOST_GATEWAY`] (a link-local address no
//!   real destination uses); a connect to that address goes to the host's `127.0.0.1` on the
//!   same port, and only when a rule names `host.wasmpod.internal` (exactly, or by a suffix
//!   wildcard such as `*.wasmpod.internal`).
//! - Name rules also cover the addresses a lookup of that name returned to this container (a
//!   guest connects to addresses, not names), remembered in a bounded per-container map.

use super::pipe::{DEFAULT_PIPE_CAPACITY, PipeReader, PipeWriter};
use super::{ContainerNet, Endpoint, NetError, is_pod_address};
use crate::counters::{ContainerCounters, Peer};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, oneshot};
use wasmtime_wasi_io::streams::StreamError;

// The policy itself is a leaf module shared with the spec; re-exported so `net::egress::*`
// paths keep working.
pub use crate::egress::{
    DeniedKind, EgressError, EgressPolicy, EgressRule, HOST_GATEWAY, HOST_INTERNAL, RuleError, normalize_name,
};

/// Where a connect to [`HOST_GATEWAY`] really goes.
const HOST_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Resolved addresses remembered per container; the oldest are forgotten first, so a guest
/// resolving millions of names costs bounded memory (it must then resolve again).
const MAX_REMEMBERED_ADDRS: usize = 4096;
/// Names remembered per address (several names often share a CDN address).
const MAX_NAMES_PER_ADDR: usize = 8;
/// Addresses returned from one DNS lookup.
const MAX_LOOKUP_ADDRS: usize = 64;
/// DNS lookups of one container in flight at once (each may hold a blocking-pool thread, as
/// `getaddrinfo` blocks); further lookups wait their turn.
const MAX_CONCURRENT_LOOKUPS: usize = 8;
/// Real outbound connections one container may hold open (each is a host file descriptor);
/// further connects wait until one closes.
const MAX_OUTBOUND_CONNECTIONS: usize = 256;
/// Bytes moved per read when bridging a host socket to the guest's pipe.
const BRIDGE_CHUNK: usize = 64 * 1024;

// ---- denial reports --------------------------------------------------------------------------

/// A refused egress attempt, for the pod to turn into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The container's name.
    pub container: String,
    /// What was refused: `host:port`, `ip:port (name)` after a lookup, or a bare name.
    pub destination: String,
    pub kind: DeniedKind,
}

/// Called on every refusal, synchronously from the guest's call: it must not block (hand the
/// report to a channel with `try_send`, say).
pub type DeniedHook = Arc<dyn Fn(Denied) + Send + Sync>;

// ---- per-container egress state --------------------------------------------------------------

/// Addresses a lookup returned to this container, and the names asked for.
#[derive(Default)]
struct Remembered {
    names: HashMap<IpAddr, Vec<String>>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<IpAddr>,
}

impl Remembered {
    fn insert(&mut self, ip: IpAddr, name: &str) {
        let ip = ip.to_canonical();
        if let Some(names) = self.names.get_mut(&ip) {
            if !names.iter().any(|n| n == name) {
                if names.len() >= MAX_NAMES_PER_ADDR {
                    names.remove(0);
                }
                names.push(name.to_string());
            }
            return;
        }
        while self.order.len() >= MAX_REMEMBERED_ADDRS {
            if let Some(old) = self.order.pop_front() {
                self.names.remove(&old);
            }
        }
        self.order.push_back(ip);
        self.names.insert(ip, vec![name.to_string()]);
    }
}

/// One container's egress: its policy, its denial hook, what its lookups returned, and the
/// limits on its lookups and host connections.
pub(crate) struct Egress {
    container: String,
    policy: EgressPolicy,
    hook: Option<DeniedHook>,
    remembered: Mutex<Remembered>,
    lookups: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Egress {
    pub(crate) fn new(container: &str, policy: EgressPolicy, hook: Option<DeniedHook>) -> Self {
        Self {
            container: container.to_string(),
            policy,
            hook,
            remembered: Mutex::new(Remembered::default()),
            lookups: Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
            connections: Arc::new(Semaphore::new(MAX_OUTBOUND_CONNECTIONS)),
        }
    }

    pub(crate) fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    fn deny(&self, kind: DeniedKind, destination: String) {
        if let Some(hook) = &self.hook {
            hook(Denied {
                container: self.container.clone(),
                destination,
                kind,
            });
        }
    }

    fn names_of(&self, ip: IpAddr) -> Vec<String> {
        let r = crate::sync::lock(&self.remembered);
        r.names.get(&ip.to_canonical()).cloned().unwrap_or_default()
    }

    /// Decides a connect to `addr` (outside the pod): the host address to dial, or
    /// `access-denied` after reporting the refusal.
    pub(crate) fn authorize_connect(&self, addr: SocketAddr) -> Result<SocketAddr, NetError> {
        let port = addr.port();
        let ip = addr.ip().to_canonical();
        if ip == HOST_GATEWAY {
            // The gateway means the host's loopback and nothing else: a DNS answer that
            // happened to be this address does not make it reachable.
            if self.policy.allows(HOST_INTERNAL, port) {
                return Ok(SocketAddr::new(HOST_LOOPBACK, port));
            }
            self.deny(DeniedKind::Connect, format!("{HOST_INTERNAL}:{port}"));
            return Err(NetError::AccessDenied);
        }
        if self.policy.allows_ip(ip, port) {
            return Ok(addr);
        }
        let names = self.names_of(ip);
        if names.iter().any(|n| self.policy.allows(n, port)) && !is_host_itself(ip) {
            return Ok(addr);
        }
        let destination = match names.first() {
            Some(name) => format!("{addr} ({name})"),
            None => addr.to_string(),
        };
        self.deny(DeniedKind::Connect, destination);
        Err(NetError::AccessDenied)
    }

    /// Decides a lookup of `name` (lowercase; not `localhost` or a container): reports and
    /// refuses it unless some rule covers the name.
    pub(crate) fn authorize_lookup(&self, name: &str) -> Result<(), NetError> {
        if self.policy.allows_name(name) {
            Ok(())
        } else {
            self.deny(DeniedKind::Lookup, name.to_string());
            Err(NetError::NameUnresolvable)
        }
    }

    /// Resolves an allowed `name` with the host's resolver and remembers the answer, so that
    /// rules naming it also cover the addresses returned.
    pub(crate) async fn resolve(self: Arc<Self>, name: String) -> Result<Vec<IpAddr>, NetError> {
        let _permit = self
            .lookups
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NetError::NameUnresolvable)?;
        // `lookup_host` runs getaddrinfo on the blocking pool: async from our side.
        let found = tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map_err(|_| NetError::NameUnresolvable)?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for a in found {
            let ip = a.ip();
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
            if addrs.len() >= MAX_LOOKUP_ADDRS {
                break;
            }
        }
        if addrs.is_empty() {
            return Err(NetError::NameUnresolvable);
        }
        {
            let mut r = crate::sync::lock(&self.remembered);
            // Pod addresses and the gateway keep their fixed meaning whatever DNS says.
            for ip in addrs
                .iter()
                .filter(|ip| !is_pod_address(**ip) && ip.to_canonical() != HOST_GATEWAY)
            {
                r.insert(*ip, &name);
            }
        }
        Ok(addrs)
    }
}

/// Whether `ip` is the host itself or the pod: loopback, unspecified, the gateway, or an
/// address of one of the host's own interfaces. Such an address never leaves through a *name*
/// (a rule for `vm` whose DNS answer is 127.0.0.1, or a wildcard rule rebound to the host's
/// own address), only through a rule that names the address, or `host.wasmpod.internal`.
pub(crate) fn is_host_itself(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    is_pod_address(ip) || ip == HOST_GATEWAY || host_interface_addresses().contains(&ip)
}

/// The addresses of the host's network interfaces, read fresh each time (interfaces come and
/// go; this runs once per outbound connection through a name, not per byte).
fn host_interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut entry = list;
        while !entry.is_null() {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        found.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        found.push(IpAddr::V6(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

impl Egress {
    /// Decides and opens a host connection to `host:port` for a request the container makes
    /// without a socket of its own (outgoing `wasi:http`): the same decision as a guest's
    /// lookup and connect — the rule must name the host (or `host.wasmpod.internal`, which
    /// means the host's loopback), every resolved address is checked, and addresses of the
    /// host itself never leave through a name. `what` names the request in the denial report.
    pub(crate) async fn dial_outside(
        self: Arc<Self>,
        host: &str,
        port: u16,
        what: &str,
    ) -> Result<OutsideConnection, NetError> {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let candidates: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            let allowed = if ip == HOST_GATEWAY {
                self.policy.allows(HOST_INTERNAL, port).then_some(HOST_LOOPBACK)
            } else {
                (!is_pod_address(ip) && self.policy.allows_ip(ip, port)).then_some(ip)
            };
            match allowed {
                Some(ip) => vec![SocketAddr::new(ip, port)],
                None => return Err(self.deny_http(what, None)),
            }
        } else {
            let Some(name) = normalize_name(host) else {
                return Err(self.deny_http(what, None));
            };
            if name == HOST_INTERNAL {
                if !self.policy.allows(HOST_INTERNAL, port) {
                    return Err(self.deny_http(what, None));
                }
                vec![SocketAddr::new(HOST_LOOPBACK, port)]
            } else {
                if !self.policy.allows(&name, port) {
                    return Err(self.deny_http(what, None));
                }
                let resolved = self.clone().resolve(name).await?;
                let outside: Vec<SocketAddr> = resolved
                    .iter()
                    .filter(|ip| !is_host_itself(**ip))
                    .map(|ip| SocketAddr::new(*ip, port))
                    .collect();
                if outside.is_empty() {
                    let first = resolved.first().map(ToString::to_string).unwrap_or_default();
                    return Err(self.deny_http(what, Some(&first)));
                }
                outside
            }
        };
        let permit = self
            .connections
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NetError::ConnectionAborted)?;
        let mut last = NetError::ConnectionRefused;
        for addr in candidates {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    return Ok(OutsideConnection {
                        stream,
                        _permit: permit,
                        counters: None,
                    });
                }
                Err(e) => last = connect_error(&e),
            }
        }
        Err(last)
    }

    fn deny_http(&self, what: &str, resolved_to_host: Option<&str>) -> NetError {
        let destination = match resolved_to_host {
            Some(ip) => format!("{what} (resolves to {ip}, an address of the host itself)"),
            None => what.to_string(),
        };
        self.deny(DeniedKind::Http, destination);
        NetError::AccessDenied
    }
}

/// A real host connection made for a container by [`Egress::dial_outside`]; it counts
/// against the container's outbound connection limit until dropped, and its bytes (as they
/// cross the host socket, TLS included) as the container's egress bytes.
pub struct OutsideConnection {
    stream: TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    counters: Option<Arc<ContainerCounters>>,
}

impl OutsideConnection {
    /// Counts the connection's bytes as `counters`' egress bytes.
    pub(crate) fn counting_into(mut self, counters: Option<Arc<ContainerCounters>>) -> OutsideConnection {
        self.counters = counters;
        self
    }
}

impl tokio::io::AsyncRead for OutsideConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(counters) = &this.counters {
            counters.record_received(Peer::Egress, buf.filled().len().saturating_sub(before));
        }
        poll
    }
}

impl tokio::io::AsyncWrite for OutsideConnection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.stream).poll_write(cx, buf);
        if let (Some(counters), std::task::Poll::Ready(Ok(written))) = (&this.counters, &poll) {
            counters.record_sent(Peer::Egress, *written);
        }
        poll
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

// ---- dialing and bridging ----------------------------------------------------------------------

/// The outcome of a dial: the host-side local address of the connection, or why it failed.
pub(crate) type DialOutcome = Result<SocketAddr, NetError>;

/// Starts a real connect to `dest` for `net`'s container and returns the guest's end of the
/// connection (tracked by `net`, so a container exit closes it) and the pending outcome. On
/// success a task bridges the host socket and the guest's pipes until both directions end.
pub(crate) fn dial(
    net: &ContainerNet,
    dest: SocketAddr,
) -> Result<(Endpoint, oneshot::Receiver<DialOutcome>), NetError> {
    // Host calls run inside the runtime that drives the Store; without one there is nothing
    // to run the connection on.
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NotSupported)?;
    // Both directions are the container's: what it sends, and what the host sends to it.
    let (guest, host) = Endpoint::pair(DEFAULT_PIPE_CAPACITY, (net.budget(), 0), (net.budget(), dest.port()));
    net.track(&guest);
    let (tx, rx) = oneshot::channel();
    let permits = net.egress().connections.clone();
    runtime.spawn(run_dial(dest, host, permits, tx));
    Ok((guest, rx))
}

async fn run_dial(dest: SocketAddr, host: Endpoint, permits: Arc<Semaphore>, tx: oneshot::Sender<DialOutcome>) {
    let mut tx = tx;
    // Give up as soon as the guest drops the socket, whichever step we are waiting on.
    let connected = tokio::select! {
        _ = tx.closed() => return,
        r = async {
            let permit = permits.acquire_owned().await.map_err(|_| NetError::ConnectionAborted)?;
            let stream = TcpStream::connect(dest).await.map_err(|e| connect_error(&e))?;
            Ok::<_, NetError>((permit, stream))
        } => r,
    };
    let (permit, stream) = match connected {
        Ok(ok) => ok,
        Err(e) => {
            host.reset();
            let _ = tx.send(Err(e));
            return;
        }
    };
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            host.reset();
            let _ = tx.send(Err(connect_error(&e)));
            return;
        }
    };
    if tx.send(Ok(local)).is_err() {
        return;
    }
    bridge(stream, host).await;
    drop(permit);
}

fn connect_error(e: &std::io::Error) -> NetError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => NetError::ConnectionRefused,
        K::TimedOut => NetError::Timeout,
        K::PermissionDenied => NetError::AccessDenied,
        K::ConnectionReset => NetError::ConnectionReset,
        K::AddrNotAvailable => NetError::AddressNotBindable,
        _ => NetError::RemoteUnreachable,
    }
}

/// Why a bridge ended early.
enum Fault {
    /// The guest's side was reset (container killed): reset the host connection too.
    Guest,
    /// The host connection failed: the guest must see `connection-reset`.
    Host,
}

/// Copies bytes both ways between `stream` and the guest's pipes, with half-close in each
/// direction, until both directions have ended or one side fails.
async fn bridge(stream: TcpStream, host: Endpoint) {
    // The pipe ends are borrowed, not moved, by the two directions: dropping a writer is a
    // FIN, and a guest must never see a clean end-of-stream for a connection that failed, so
    // they are dropped only after a failure has been turned into a reset.
    let (mut read_half, mut write_half) = stream.into_split();
    let outcome = tokio::try_join!(
        guest_to_host(&host.rx, &mut write_half),
        host_to_guest(&mut read_half, &host.tx)
    );
    match outcome {
        // The host connection is gone: the guest's further writes fail, as to a closed socket.
        Ok(_) => host.rx.pipe().close_reader(),
        Err(Fault::Host) => host.reset(),
        Err(Fault::Guest) => {
            // A zero linger makes the close an RST, so the host peer sees the reset too.
            if let Ok(s) = read_half.reunite(write_half) {
                let _ = s.set_zero_linger();
            }
        }
    }
}

async fn guest_to_host(rx: &PipeReader, out: &mut OwnedWriteHalf) -> Result<(), Fault> {
    loop {
        poll_fn(|cx| rx.poll_readable(cx)).await;
        match rx.try_read(BRIDGE_CHUNK) {
            Ok(chunk) if chunk.is_empty() => continue,
            Ok(chunk) => out.write_all(&chunk).await.map_err(|_| Fault::Host)?,
            Err(StreamError::Closed) => {
                // The guest half-closed (or exited): pass the FIN on.
                let _ = out.shutdown().await;
                return Ok(());
            }
            Err(_) => return Err(Fault::Guest),
        }
    }
}

async fn host_to_guest(input: &mut OwnedReadHalf, tx: &PipeWriter) -> Result<(), Fault> {
    let mut buf = vec![0u8; BRIDGE_CHUNK];
    loop {
        // Wait for room in the pipe first, so the host socket's own buffer is the only one
        // that grows while the guest is slow (backpressure reaches the host peer).
        let room = loop {
            match tx.check_write() {
                Ok(0) => poll_fn(|cx| tx.poll_writable(cx)).await,
                Ok(n) => break n,
                // The guest stopped reading: nothing more to deliver.
                Err(StreamError::Closed) => return Ok(()),
                Err(_) => return Err(Fault::Guest),
            }
        };
        let want = room.min(buf.len());
        let n = tokio::select! {
            r = input.read(&mut buf[..want]) => r.map_err(|_| Fault::Host)?,
            // Re-check: `check_write` tells a reset (fault) from a reader gone (done).
            () = poll_fn(|cx| tx.poll_reader_gone(cx)) => continue,
        };
        if n == 0 {
            tx.pipe().finish();
            return Ok(());
        }
        match tx.write(Bytes::copy_from_slice(&buf[..n])) {
            Ok(()) => {}
            Err(StreamError::Closed) => return Ok(()),
            Err(_) => return Err(Fault::Guest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        EgressPolicy::parse(&entries).unwrap()
    }

    fn recorder() -> (DeniedHook, Arc<Mutex<Vec<Denied>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let hook: DeniedHook = Arc::new(move |d| s2.lock().unwrap().push(d));
        (hook, seen)
    }

    #[test]
    fn authorize_connect_and_report() {
        let (hook, seen) = recorder();
        let e = Egress::new(
            "web",
            policy(&["host.wasmpod.internal:5432", "example.com:443", "10.0.0.9:22"]),
            Some(hook),
        );
        let gw = |p| SocketAddr::new(HOST_GATEWAY, p);
        assert_eq!(e.authorize_connect(gw(5432)), Ok("127.0.0.1:5432".parse().unwrap()));
        assert_eq!(e.authorize_connect(gw(5433)), Err(NetError::AccessDenied));
        assert_eq!(
            e.authorize_connect("10.0.0.9:22".parse().unwrap()),
            Ok("10.0.0.9:22".parse().unwrap())
        );
        let resolved: SocketAddr = "93.184.216.34:443".parse().unwrap();
        assert_eq!(e.authorize_connect(resolved), Err(NetError::AccessDenied));
        e.remembered.lock().unwrap().insert(resolved.ip(), "example.com");
        assert_eq!(e.authorize_connect(resolved), Ok(resolved));
        assert_eq!(
            e.authorize_connect("93.184.216.34:80".parse().unwrap()),
            Err(NetError::AccessDenied)
        );
        assert_eq!(e.authorize_lookup("example.org"), Err(NetError::NameUnresolvable));
        assert_eq!(e.authorize_lookup("example.com"), Ok(()));
        let seen = seen.lock().unwrap();
        let got: Vec<(&str, &str, DeniedKind)> = seen
            .iter()
            .map(|d| (d.container.as_str(), d.destination.as_str(), d.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("web", "host.wasmpod.internal:5433", DeniedKind::Connect),
                ("web", "93.184.216.34:443", DeniedKind::Connect),
                ("web", "93.184.216.34:80 (example.com)", DeniedKind::Connect),
                ("web", "example.org", DeniedKind::Lookup),
            ]
        );
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let mut r = Remembered::default();
        for i in 0..(MAX_REMEMBERED_ADDRS as u32 + 10) {
            r.insert(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), "x.example");
        }
        assert_eq!(r.names.len(), MAX_REMEMBERED_ADDRS);
        assert_eq!(r.order.len(), MAX_REMEMBERED_ADDRS);
        assert!(!r.names.contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000))));
        let ip = IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4));
        for i in 0..20 {
            r.insert(ip, &format!("n{i}.example"));
        }
        assert_eq!(r.names[&ip].len(), MAX_NAMES_PER_ADDR);
    }

    /// Connects a virtual socket of `net` to the host's `port` through the gateway.
    async fn dial_gateway(net: &ContainerNet, port: u16) -> (crate::net::tcp::VTcpSocket, PipeReader, PipeWriter) {
        use crate::net::tcp::{Family, VTcpSocket};
        use wasmtime_wasi_io::poll::Pollable;
        let mut s = VTcpSocket::new(net, Family::V4).unwrap();
        s.start_connect(net, SocketAddr::new(HOST_GATEWAY, port)).unwrap();
        s.ready().await;
        let (rx, tx) = s.finish_connect().unwrap();
        (s, rx, tx)
    }

    #[tokio::test]
    async fn container_exit_closes_and_kill_resets_host_connections() {
        let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = host.local_addr().unwrap().port();
        let pod = crate::net::PodNetwork::new();
        let rules = vec![format!("{HOST_INTERNAL}:{port}")];

        // Exit: bytes already written arrive, then end-of-stream.
        let net = pod.attach_with("app", EgressPolicy::parse(&rules).unwrap(), None);
        let (_sock, _rx, tx) = dial_gateway(&net, port).await;
        let (mut peer, _) = host.accept().await.unwrap();
        tx.write(Bytes::from_static(b"last words")).unwrap();
        net.shutdown();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");

        // Kill: the host peer sees a reset.
        let net = pod.attach_with("app", EgressPolicy::parse(&rules).unwrap(), None);
        let (_sock, _rx, _tx) = dial_gateway(&net, port).await;
        let (mut peer, _) = host.accept().await.unwrap();
        net.abort();
        let err = peer.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn pending_dial_is_would_block_until_ready() {
        use crate::net::tcp::{Family, VTcpSocket};
        let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = host.local_addr().unwrap().port();
        let pod = crate::net::PodNetwork::new();
        let rules = vec![format!("{HOST_INTERNAL}:*")];
        let net = pod.attach_with("app", EgressPolicy::parse(&rules).unwrap(), None);
        let mut s = VTcpSocket::new(&net, Family::V4).unwrap();
        s.start_connect(&net, SocketAddr::new(HOST_GATEWAY, port)).unwrap();
        // The dial runs on this (current-thread) runtime, so it cannot have finished yet.
        assert_eq!(s.finish_connect().err(), Some(NetError::WouldBlock));
        assert_eq!(s.local_address(), Err(NetError::InvalidState));
        wasmtime_wasi_io::poll::Pollable::ready(&mut s).await;
        let (_rx, _tx) = s.finish_connect().unwrap();
        assert_eq!(s.remote_address().unwrap(), SocketAddr::new(HOST_GATEWAY, port));
        assert_eq!(s.finish_connect().err(), Some(NetError::NotInProgress));
    }

    /// The host-resolver path, on a name every host resolves without a network; pod
    /// addresses in an answer are never remembered as egress destinations.
    #[tokio::test]
    async fn host_lookup_is_async_and_does_not_remember_pod_addresses() {
        let e = Arc::new(Egress::new("app", EgressPolicy::deny_all(), None));
        let addrs = e.clone().resolve("localhost".to_string()).await.unwrap();
        assert!(addrs.iter().all(|ip| is_pod_address(*ip)), "{addrs:?}");
        assert!(!addrs.is_empty());
        assert!(e.remembered.lock().unwrap().names.is_empty());
    }
}
