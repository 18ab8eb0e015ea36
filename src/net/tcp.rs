//! The virtual TCP socket: the state machine behind `wasi:sockets/tcp`, on the pod network.
//!
//! It mirrors the checks, state transitions and error codes of wasmtime-wasi 48's own socket
//! (`sockets/tcp.rs` plus the p2 start/finish bookkeeping of `p2/host/tcp.rs`) so a guest cannot
//! tell the difference, except that no OS socket exists: binds take [`PortLease`]s in the pod
//! namespace, connects hand a pipe pair to the listener's queue, and socket options are stored
//! values. It knows nothing of WIT bindings or the resource table; `p2.rs` is the thin glue.
//!
//! A connect inside the pod completes synchronously (the listener's backlog either takes the
//! connection or refuses it), so `Connecting` then only holds a result for `finish-connect`.
//! A connect outside the pod is decided by the container's egress policy (`egress.rs`): a
//! refusal is `access-denied` at `finish-connect`; an allowed destination is dialed on a real
//! host socket, and `finish-connect` says `would-block` until the dial ends. The socket's
//! pollable is ready at once in every state except `Listening` and such a pending dial.

use super::budget::SocketSlot;
use super::egress::{self, DialOutcome};
use super::fault;
use super::pipe::{DEFAULT_PIPE_CAPACITY, Pipe, PipeReader, PipeWriter};
use super::{ContainerNet, Endpoint, ListenQueue, NetError, PortLease, is_pod_address, loopback};
use std::future::poll_fn;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::oneshot;
use wasmtime_wasi_io::poll::Pollable;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Address family of a socket; fixed at creation, as in WASI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A start-* call whose finish-* has not been called yet (WASI 0.2's two-phase operations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingOp {
    Bind,
    Connect,
    Listen,
}

/// Socket options: no kernel to apply them to, so they are stored and reported back with
/// the same validation and clamping wasmtime applies.
#[derive(Clone, Copy, Debug)]
struct SockOpts {
    keep_alive: bool,
    keep_idle_ns: u64,
    keep_intvl_ns: u64,
    keep_cnt: u32,
    hop_limit: u8,
    recv_buf: u64,
    send_buf: u64,
}

impl Default for SockOpts {
    fn default() -> Self {
        // Linux defaults, so guests that print or assert them see familiar values.
        Self {
            keep_alive: false,
            keep_idle_ns: 7200 * NANOS_PER_SEC,
            keep_intvl_ns: 75 * NANOS_PER_SEC,
            keep_cnt: 9,
            hop_limit: 64,
            recv_buf: super::pipe::DEFAULT_PIPE_CAPACITY as u64,
            send_buf: super::pipe::DEFAULT_PIPE_CAPACITY as u64,
        }
    }
}

/// An established connection as held by the socket.
struct Conn {
    local: SocketAddr,
    remote: SocketAddr,
    /// The client's own port (None for accepted sockets: they share the listener's port).
    _lease: Option<PortLease>,
    /// The streams, until `finish-connect`/`accept` hands them to the guest (once).
    streams: Option<(PipeReader, PipeWriter)>,
    /// Control handles for `shutdown` after the streams were handed out.
    inbound: Arc<Pipe>,
    outbound: Arc<Pipe>,
}

impl Drop for Conn {
    /// The socket is gone (not just a stream): the peer's further writes fail, and it reads
    /// end-of-stream after what was already sent.
    fn drop(&mut self) {
        self.inbound.close_reader();
        self.outbound.finish();
    }
}

impl Conn {
    fn new(ep: Endpoint, local: SocketAddr, remote: SocketAddr, lease: Option<PortLease>) -> Self {
        Self {
            local,
            remote,
            _lease: lease,
            inbound: ep.rx.pipe().clone(),
            outbound: ep.tx.pipe().clone(),
            streams: Some((ep.rx, ep.tx)),
        }
    }
}

enum State {
    Unbound,
    Bound {
        addr: SocketAddr,
        lease: PortLease,
    },
    Listening {
        addr: SocketAddr,
        _lease: PortLease,
        queue: Arc<ListenQueue>,
    },
    Connecting(Connecting),
    Connected(Conn),
    Closed(NetError),
}

/// A connect between `start-connect` and `finish-connect`.
enum Connecting {
    /// Decided at once (inside the pod, or refused).
    Done(Result<Conn, NetError>),
    /// A real connect to a host outside the pod, in flight.
    Dialing(Dialing),
}

/// An outbound dial in flight; its guest end exists (and is tracked) from the start.
struct Dialing {
    outcome: oneshot::Receiver<DialOutcome>,
    ep: Endpoint,
    remote: SocketAddr,
    /// An explicit bind before the connect keeps its pod port and address.
    bound: Option<(SocketAddr, PortLease)>,
}

impl Dialing {
    /// The connection once the dial succeeded, or the dial's error.
    fn complete(self, outcome: DialOutcome) -> Result<Conn, NetError> {
        let host_local = outcome?;
        Ok(match self.bound {
            Some((local, lease)) => Conn::new(self.ep, local, self.remote, Some(lease)),
            // Without a bind the host socket's own address is the truthful answer.
            None => Conn::new(self.ep, host_local, self.remote, None),
        })
    }
}

/// A virtual TCP socket of one container.
pub struct VTcpSocket {
    family: Family,
    state: State,
    pending: Option<PendingOp>,
    backlog: u32,
    opts: SockOpts,
    /// One of the container's socket slots, given back when the socket is dropped.
    _slot: SocketSlot,
}

impl std::fmt::Debug for VTcpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Unbound => "unbound",
            State::Bound { .. } => "bound",
            State::Listening { .. } => "listening",
            State::Connecting(_) => "connecting",
            State::Connected(_) => "connected",
            State::Closed(_) => "closed",
        };
        f.debug_struct("VTcpSocket")
            .field("family", &self.family)
            .field("state", &state)
            .finish()
    }
}

fn is_deprecated_ipv4_compatible(v6: Ipv6Addr) -> bool {
    matches!(v6.segments(), [0, 0, 0, 0, 0, 0, _, _]) && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST
}

/// WASI rules: the address matches the family; IPv4-mapped/-compatible IPv6 is rejected.
fn family_matches(ip: IpAddr, family: Family) -> bool {
    match (family, ip) {
        (Family::V4, IpAddr::V4(_)) => true,
        (Family::V6, IpAddr::V6(v6)) => !is_deprecated_ipv4_compatible(v6) && v6.to_ipv4_mapped().is_none(),
        _ => false,
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_multicast(),
    }
}

impl VTcpSocket {
    /// A new unbound socket of `family` for the container attached as `net`.
    pub fn new(net: &ContainerNet, family: Family) -> Result<Self, NetError> {
        net.check_attached()?;
        Ok(Self::unbound(family, net.open_socket()?))
    }

    fn unbound(family: Family, slot: SocketSlot) -> Self {
        Self {
            family,
            state: State::Unbound,
            pending: None,
            backlog: super::DEFAULT_BACKLOG,
            opts: SockOpts::default(),
            _slot: slot,
        }
    }

    fn take_state(&mut self) -> State {
        std::mem::replace(&mut self.state, State::Closed(NetError::InvalidState))
    }

    fn is_v6(&self) -> bool {
        self.family == Family::V6
    }

    /// The address a connected socket reports for `ip`: the pod's loopback when the socket
    /// was bound to a wildcard, since a wildcard is never a connection's address.
    fn concrete(&self, ip: IpAddr) -> IpAddr {
        if ip.is_unspecified() {
            loopback(self.is_v6())
        } else {
            ip
        }
    }

    // ---- two-phase p2 operations -------------------------------------------------------

    fn begin(&self) -> Result<(), NetError> {
        if self.pending.is_some() {
            Err(NetError::ConcurrencyConflict)
        } else {
            Ok(())
        }
    }

    fn end(&mut self, op: PendingOp) -> Result<(), NetError> {
        if self.pending != Some(op) {
            return Err(NetError::NotInProgress);
        }
        self.pending = None;
        Ok(())
    }

    /// `start-bind`: binds at once; `finish-bind` only acknowledges.
    pub fn start_bind(&mut self, net: &ContainerNet, addr: SocketAddr) -> Result<(), NetError> {
        self.begin()?;
        self.bind(net, addr)?;
        self.pending = Some(PendingOp::Bind);
        Ok(())
    }

    pub fn finish_bind(&mut self) -> Result<(), NetError> {
        self.end(PendingOp::Bind)
    }

    /// `start-connect`: validation errors are returned now; the outcome of the connect
    /// itself (refused, denied) is reported by `finish-connect`, as with a real socket.
    pub fn start_connect(&mut self, net: &ContainerNet, addr: SocketAddr) -> Result<(), NetError> {
        self.begin()?;
        if !matches!(self.state, State::Unbound | State::Bound { .. }) {
            return Err(NetError::InvalidState);
        }
        let ip = addr.ip();
        if !is_unicast(ip) || ip.to_canonical().is_unspecified() || addr.port() == 0 || !family_matches(ip, self.family)
        {
            return Err(NetError::InvalidArgument);
        }
        let connecting = if is_pod_address(ip) {
            Connecting::Done(self.connect_now(net, addr))
        } else {
            match self.dial(net, addr) {
                Ok(d) => Connecting::Dialing(d),
                Err(e) => Connecting::Done(Err(e)),
            }
        };
        self.state = State::Connecting(connecting);
        self.pending = Some(PendingOp::Connect);
        Ok(())
    }

    /// Starts a connect to a destination outside the pod, if the egress policy allows it.
    fn dial(&mut self, net: &ContainerNet, addr: SocketAddr) -> Result<Dialing, NetError> {
        net.check_attached()?;
        let dest = net.egress().authorize_connect(addr)?;
        let faults = net.pod().faults();
        let generation = faults.generation();
        let link = || fault::LinkInfo {
            from: Some(net.name().to_string()),
            // The address the guest dialled (the gateway, not where it is forwarded).
            to: fault::LinkTo::Egress(addr),
        };
        let verdict = if faults.is_empty() {
            fault::Verdict::Clear
        } else {
            faults.open_link(link())
        };
        let (ep, outcome) = match verdict {
            fault::Verdict::Clear => {
                let (ep, outcome) = egress::dial(net, dest)?;
                faults.watch(generation, link(), &ep);
                (ep, outcome)
            }
            fault::Verdict::Refuse => return Err(NetError::ConnectionRefused),
            fault::Verdict::Relay(link) => {
                let (inner, outcome) = egress::dial(net, dest)?;
                let outer = fault::interpose(link, inner, DEFAULT_PIPE_CAPACITY, net.budget(), net.budget())?;
                net.track(&outer);
                (outer, outcome)
            }
        };
        let bound = match self.take_state() {
            State::Bound { addr, lease } => Some((SocketAddr::new(self.concrete(addr.ip()), lease.port()), lease)),
            _ => None,
        };
        Ok(Dialing {
            outcome,
            ep,
            remote: addr,
            bound,
        })
    }

    fn connect_now(&mut self, net: &ContainerNet, addr: SocketAddr) -> Result<Conn, NetError> {
        net.check_attached()?;
        let (local_ip, lease) = match self.take_state() {
            State::Bound { addr, lease } => (self.concrete(addr.ip()), lease),
            // Implicit bind to an ephemeral port, as the kernel does on connect.
            _ => (loopback(self.is_v6()), net.pod().lease(0, net.owner())?),
        };
        let ep = net
            .pod()
            .open_link(lease.port(), addr.port(), net.budget(), Some(net.name()))?;
        net.track(&ep);
        let local = SocketAddr::new(local_ip, lease.port());
        Ok(Conn::new(ep, local, addr, Some(lease)))
    }

    /// `finish-connect`: hands out the connection's streams (once) or the connect's error;
    /// `would-block` while a dial outside the pod is still in flight.
    pub fn finish_connect(&mut self) -> Result<(PipeReader, PipeWriter), NetError> {
        if self.pending != Some(PendingOp::Connect) {
            return Err(NetError::NotInProgress);
        }
        if let State::Connecting(Connecting::Dialing(d)) = &mut self.state {
            let outcome = match d.outcome.try_recv() {
                Ok(outcome) => outcome,
                Err(oneshot::error::TryRecvError::Empty) => return Err(NetError::WouldBlock),
                // The dial task is gone without an answer (runtime shutting down).
                Err(oneshot::error::TryRecvError::Closed) => Err(NetError::ConnectionAborted),
            };
            self.settle_dial(outcome);
        }
        self.end(PendingOp::Connect)?;
        match self.take_state() {
            State::Connecting(Connecting::Done(Ok(mut conn))) => {
                let streams = conn.streams.take().ok_or(NetError::InvalidState);
                self.state = State::Connected(conn);
                streams
            }
            State::Connecting(Connecting::Done(Err(e))) => {
                self.state = State::Closed(e);
                Err(e)
            }
            other => {
                self.state = other;
                Err(NetError::InvalidState)
            }
        }
    }

    /// Turns a finished dial into a decided connect.
    fn settle_dial(&mut self, outcome: DialOutcome) {
        if let State::Connecting(Connecting::Dialing(d)) = self.take_state() {
            self.state = State::Connecting(Connecting::Done(d.complete(outcome)));
        }
    }

    /// `start-listen`: WASI 0.2 requires an explicit bind first.
    pub fn start_listen(&mut self, net: &ContainerNet) -> Result<(), NetError> {
        self.begin()?;
        net.check_attached()?;
        match self.take_state() {
            State::Bound { addr, lease } => {
                let queue = match net.pod().listen(&lease, self.backlog, net.budget()) {
                    Ok(q) => q,
                    Err(e) => {
                        self.state = State::Bound { addr, lease };
                        return Err(e);
                    }
                };
                self.state = State::Listening {
                    addr,
                    _lease: lease,
                    queue,
                };
                self.pending = Some(PendingOp::Listen);
                Ok(())
            }
            other => {
                self.state = other;
                Err(NetError::InvalidState)
            }
        }
    }

    pub fn finish_listen(&mut self) -> Result<(), NetError> {
        self.end(PendingOp::Listen)
    }

    // ---- core operations ---------------------------------------------------------------

    /// Binds to a pod address; port 0 picks an ephemeral port.
    pub fn bind(&mut self, net: &ContainerNet, addr: SocketAddr) -> Result<(), NetError> {
        if !matches!(self.state, State::Unbound) {
            return Err(NetError::InvalidState);
        }
        let ip = addr.ip();
        if !is_unicast(ip) || !family_matches(ip, self.family) {
            return Err(NetError::InvalidArgument);
        }
        if !is_pod_address(ip) {
            // Only the pod's own addresses exist in the pod's namespace (EADDRNOTAVAIL).
            return Err(NetError::AddressNotBindable);
        }
        net.check_attached()?;
        let lease = net.pod().lease(addr.port(), net.owner())?;
        let addr = SocketAddr::new(ip, lease.port());
        self.state = State::Bound { addr, lease };
        Ok(())
    }

    /// Takes the next queued connection: a connected socket plus its two streams.
    pub fn accept(&mut self, net: &ContainerNet) -> Result<(VTcpSocket, PipeReader, PipeWriter), NetError> {
        let State::Listening { addr, queue, .. } = &self.state else {
            return Err(NetError::InvalidState);
        };
        // Out of socket slots, the connection stays queued (as EMFILE leaves it in the
        // kernel's backlog) and the accept fails.
        let slot = if queue.is_empty() {
            None
        } else {
            Some(net.open_socket()?)
        };
        let (Some(slot), Some(ep)) = (slot, queue.pop()) else {
            return Err(if queue.is_closed() {
                NetError::ConnectionAborted
            } else {
                NetError::WouldBlock
            });
        };
        net.track(&ep);
        let local = SocketAddr::new(self.concrete(addr.ip()), addr.port());
        let remote = SocketAddr::new(loopback(self.is_v6()), ep.peer_port);
        let mut conn = Conn::new(ep, local, remote, None);
        let (rx, tx) = conn.streams.take().ok_or(NetError::InvalidState)?;
        let mut sock = VTcpSocket::unbound(self.family, slot);
        // Accepted sockets inherit the listener's options, as on Linux.
        sock.opts = self.opts;
        sock.state = State::Connected(conn);
        Ok((sock, rx, tx))
    }

    pub fn local_address(&self) -> Result<SocketAddr, NetError> {
        match &self.state {
            State::Unbound | State::Connecting(_) => Err(NetError::InvalidState),
            State::Bound { addr, .. } | State::Listening { addr, .. } => Ok(*addr),
            State::Connected(c) => Ok(c.local),
            State::Closed(e) => Err(*e),
        }
    }

    pub fn remote_address(&self) -> Result<SocketAddr, NetError> {
        match &self.state {
            State::Connected(c) => Ok(c.remote),
            State::Closed(e) => Err(*e),
            _ => Err(NetError::InvalidState),
        }
    }

    pub fn is_listening(&self) -> bool {
        matches!(self.state, State::Listening { .. })
    }

    pub fn address_family(&self) -> Family {
        self.family
    }

    /// Backlog for the next (or current) listen; 0 is invalid, large values are clamped.
    pub fn set_listen_backlog_size(&mut self, value: u64) -> Result<(), NetError> {
        if value == 0 {
            return Err(NetError::InvalidArgument);
        }
        let value = u32::try_from(value).unwrap_or(u32::MAX).clamp(1, super::MAX_BACKLOG);
        match &self.state {
            State::Unbound | State::Bound { .. } => {}
            State::Listening { queue, .. } => queue.set_capacity(value),
            State::Closed(e) => return Err(*e),
            _ => return Err(NetError::InvalidState),
        }
        self.backlog = value;
        Ok(())
    }

    /// States in which wasmtime has a file descriptor to read/set options on.
    fn opt_state(&self) -> Result<(), NetError> {
        match &self.state {
            State::Connecting(_) => Err(NetError::InvalidState),
            State::Closed(e) => Err(*e),
            _ => Ok(()),
        }
    }

    pub fn keep_alive_enabled(&self) -> Result<bool, NetError> {
        self.opt_state()?;
        Ok(self.opts.keep_alive)
    }

    pub fn set_keep_alive_enabled(&mut self, value: bool) -> Result<(), NetError> {
        self.opt_state()?;
        self.opts.keep_alive = value;
        Ok(())
    }

    pub fn keep_alive_idle_time(&self) -> Result<u64, NetError> {
        self.opt_state()?;
        Ok(self.opts.keep_idle_ns)
    }

    pub fn set_keep_alive_idle_time(&mut self, value: u64) -> Result<(), NetError> {
        self.opt_state()?;
        self.opts.keep_idle_ns = clamp_keep_alive_time(value)?;
        Ok(())
    }

    pub fn keep_alive_interval(&self) -> Result<u64, NetError> {
        self.opt_state()?;
        Ok(self.opts.keep_intvl_ns)
    }

    pub fn set_keep_alive_interval(&mut self, value: u64) -> Result<(), NetError> {
        self.opt_state()?;
        self.opts.keep_intvl_ns = clamp_keep_alive_time(value)?;
        Ok(())
    }

    pub fn keep_alive_count(&self) -> Result<u32, NetError> {
        self.opt_state()?;
        Ok(self.opts.keep_cnt)
    }

    pub fn set_keep_alive_count(&mut self, value: u32) -> Result<(), NetError> {
        self.opt_state()?;
        if value == 0 {
            return Err(NetError::InvalidArgument);
        }
        // Linux's maximum, the lowest of wasmtime's supported platforms.
        self.opts.keep_cnt = value.min(i8::MAX as u32);
        Ok(())
    }

    pub fn hop_limit(&self) -> Result<u8, NetError> {
        self.opt_state()?;
        Ok(self.opts.hop_limit)
    }

    pub fn set_hop_limit(&mut self, value: u8) -> Result<(), NetError> {
        self.opt_state()?;
        if value == 0 {
            return Err(NetError::InvalidArgument);
        }
        self.opts.hop_limit = value;
        Ok(())
    }

    pub fn receive_buffer_size(&self) -> Result<u64, NetError> {
        self.opt_state()?;
        Ok(self.opts.recv_buf)
    }

    pub fn set_receive_buffer_size(&mut self, value: u64) -> Result<(), NetError> {
        self.opt_state()?;
        self.opts.recv_buf = clamp_buffer_size(value)?;
        Ok(())
    }

    pub fn send_buffer_size(&self) -> Result<u64, NetError> {
        self.opt_state()?;
        Ok(self.opts.send_buf)
    }

    pub fn set_send_buffer_size(&mut self, value: u64) -> Result<(), NetError> {
        self.opt_state()?;
        self.opts.send_buf = clamp_buffer_size(value)?;
        Ok(())
    }

    /// Half-close: `send` = FIN to the peer; `receive` = stop reading (the local stream then
    /// reports end-of-stream; the peer's writes still succeed and are discarded, as on Linux).
    pub fn shutdown(&mut self, receive: bool, send: bool) -> Result<(), NetError> {
        let State::Connected(c) = &self.state else {
            return Err(NetError::InvalidState);
        };
        if receive {
            c.inbound.shutdown_read();
        }
        if send {
            c.outbound.finish();
        }
        Ok(())
    }
}

fn clamp_keep_alive_time(value: u64) -> Result<u64, NetError> {
    if value == 0 {
        return Err(NetError::InvalidArgument);
    }
    // Same bounds as wasmtime: at least a second, at most Linux's i16::MAX seconds.
    Ok(value.clamp(NANOS_PER_SEC, i16::MAX as u64 * NANOS_PER_SEC))
}

fn clamp_buffer_size(value: u64) -> Result<u64, NetError> {
    if value == 0 {
        return Err(NetError::InvalidArgument);
    }
    Ok(value.clamp(1, i32::MAX as u64))
}

#[async_trait::async_trait]
impl Pollable for VTcpSocket {
    /// Ready when the pending operation can finish (at once for bind/listen and connects
    /// inside the pod; when the dial ends for one outside) or, for a listener, when `accept`
    /// would not block.
    async fn ready(&mut self) {
        if let State::Connecting(Connecting::Dialing(d)) = &mut self.state {
            // Cancel-safe: if this future is dropped, the outcome stays in the channel.
            let outcome = poll_fn(|cx| Pin::new(&mut d.outcome).poll(cx))
                .await
                .unwrap_or(Err(NetError::ConnectionAborted));
            self.settle_dial(outcome);
            return;
        }
        if self.pending.is_some() {
            return;
        }
        if let State::Listening { queue, .. } = &self.state {
            let queue = queue.clone();
            poll_fn(|cx| queue.poll_ready(cx)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::PodNetwork;
    use bytes::Bytes;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use wasmtime_wasi_io::streams::StreamError;

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    fn listener(net: &ContainerNet, addr: SocketAddr) -> VTcpSocket {
        let fam = if addr.is_ipv6() { Family::V6 } else { Family::V4 };
        let mut s = VTcpSocket::new(net, fam).unwrap();
        s.start_bind(net, addr).unwrap();
        s.finish_bind().unwrap();
        s.start_listen(net).unwrap();
        s.finish_listen().unwrap();
        s
    }

    #[test]
    fn bind_rules() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        let mut s = VTcpSocket::new(&a, Family::V4).unwrap();
        assert_eq!(
            s.bind(&a, "10.0.0.1:80".parse().unwrap()),
            Err(NetError::AddressNotBindable)
        );
        assert_eq!(s.bind(&a, "[::1]:80".parse().unwrap()), Err(NetError::InvalidArgument));
        assert_eq!(
            s.bind(&a, "224.0.0.1:80".parse().unwrap()),
            Err(NetError::InvalidArgument)
        );
        s.bind(&a, "0.0.0.0:0".parse().unwrap()).unwrap();
        let port = s.local_address().unwrap().port();
        assert!(port >= crate::net::EPHEMERAL_FIRST);
        assert_eq!(s.bind(&a, v4(1)), Err(NetError::InvalidState));

        // v4 and v6 share the namespace.
        let mut s6 = VTcpSocket::new(&a, Family::V6).unwrap();
        assert_eq!(
            s6.bind(&a, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)),
            Err(NetError::AddressInUse)
        );
        let mut mapped = VTcpSocket::new(&a, Family::V6).unwrap();
        assert_eq!(
            mapped.bind(&a, "[::ffff:127.0.0.1]:0".parse().unwrap()),
            Err(NetError::InvalidArgument)
        );
    }

    #[test]
    fn two_phase_bookkeeping() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        let mut s = VTcpSocket::new(&a, Family::V4).unwrap();
        assert_eq!(s.finish_bind(), Err(NetError::NotInProgress));
        assert_eq!(s.start_listen(&a), Err(NetError::InvalidState));
        s.start_bind(&a, v4(0)).unwrap();
        assert_eq!(s.start_listen(&a), Err(NetError::ConcurrencyConflict));
        s.finish_bind().unwrap();
        assert_eq!(s.finish_connect().err(), Some(NetError::NotInProgress));
    }

    #[test]
    fn connect_refused_then_closed() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        let mut s = VTcpSocket::new(&a, Family::V4).unwrap();
        s.start_connect(&a, v4(5555)).unwrap();
        assert_eq!(s.finish_connect().err(), Some(NetError::ConnectionRefused));
        assert_eq!(s.remote_address(), Err(NetError::ConnectionRefused));
        assert_eq!(s.start_connect(&a, v4(5555)), Err(NetError::InvalidState));
        let mut t = VTcpSocket::new(&a, Family::V4).unwrap();
        assert_eq!(t.start_connect(&a, v4(0)), Err(NetError::InvalidArgument));
        assert_eq!(
            t.start_connect(&a, "0.0.0.0:80".parse().unwrap()),
            Err(NetError::InvalidArgument)
        );
        t.start_connect(&a, "93.184.216.34:80".parse().unwrap()).unwrap();
        assert_eq!(t.finish_connect().err(), Some(NetError::AccessDenied));
    }

    #[test]
    fn cross_container_exchange_and_half_close() {
        let pod = PodNetwork::new();
        let srv = pod.attach("server");
        let cli = pod.attach("client");
        let mut l = listener(&srv, "[::]:8080".parse().unwrap());
        assert!(l.is_listening());
        assert_eq!(l.accept(&srv).err(), Some(NetError::WouldBlock));

        let mut c = VTcpSocket::new(&cli, Family::V4).unwrap();
        c.start_connect(&cli, v4(8080)).unwrap();
        let (c_rx, c_tx) = c.finish_connect().unwrap();
        assert_eq!(c.remote_address().unwrap(), v4(8080));
        let c_local = c.local_address().unwrap();

        let (s, s_rx, s_tx) = l.accept(&srv).unwrap();
        assert_eq!(
            s.remote_address().unwrap(),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), c_local.port())
        );
        assert_eq!(s.local_address().unwrap().port(), 8080);

        c_tx.write(Bytes::from_static(b"ping")).unwrap();
        assert_eq!(&s_rx.try_read(100).unwrap()[..], b"ping");
        c.shutdown(false, true).unwrap();
        assert!(matches!(s_rx.try_read(100), Err(StreamError::Closed)));
        s_tx.write(Bytes::from_static(b"pong")).unwrap();
        assert_eq!(&c_rx.try_read(100).unwrap()[..], b"pong");
        assert!(matches!(c_tx.check_write(), Err(StreamError::Closed)));
    }

    #[test]
    fn server_exit_releases_port_and_client_notices() {
        let pod = PodNetwork::new();
        let cli = pod.attach("client");
        let srv = pod.attach("server");
        let mut l = listener(&srv, v4(9090));
        let mut c = VTcpSocket::new(&cli, Family::V4).unwrap();
        c.start_connect(&cli, v4(9090)).unwrap();
        let (c_rx, c_tx) = c.finish_connect().unwrap();
        let accepted = l.accept(&srv).unwrap();
        drop(srv); // container exit with the store still holding its sockets
        assert!(matches!(c_rx.try_read(10), Err(StreamError::Closed)));
        assert!(matches!(c_tx.check_write(), Err(StreamError::Closed)));
        drop(accepted);
        drop(l);
        // The restarted server can bind its port again.
        let srv2 = pod.attach("server");
        let _l2 = listener(&srv2, v4(9090));
        assert_eq!(VTcpSocket::new(&pod.attach("x"), Family::V4).map(|_| ()), Ok(()));
    }

    #[test]
    fn socket_limit_refuses_creates_and_accepts() {
        let pod = PodNetwork::new();
        let limits = crate::net::SocketLimits {
            max_buffered_bytes: 1 << 20,
            max_sockets: 2,
        };
        let a = pod.attach_limited(
            "a",
            crate::net::EgressPolicy::deny_all(),
            None,
            crate::resources::MemoryAccount::new(None),
            limits,
        );
        let mut l = listener(&a, v4(7070));
        let other = VTcpSocket::new(&a, Family::V6).unwrap();
        assert_eq!(a.open_sockets(), 2);
        assert_eq!(VTcpSocket::new(&a, Family::V4).err(), Some(NetError::SocketLimit));
        assert_eq!(
            crate::net::udp::VUdpSocket::new(&a, false).err(),
            Some(NetError::SocketLimit)
        );
        // Empty backlog: would-block, as usual.
        assert_eq!(l.accept(&a).err(), Some(NetError::WouldBlock));
        let b = pod.attach("b");
        let mut c = VTcpSocket::new(&b, Family::V4).unwrap();
        c.start_connect(&b, v4(7070)).unwrap();
        let _streams = c.finish_connect().unwrap();
        // Out of slots: the connection stays queued until one is free.
        assert_eq!(l.accept(&a).err(), Some(NetError::SocketLimit));
        drop(other);
        let (accepted, _rx, _tx) = l.accept(&a).unwrap();
        assert_eq!(a.open_sockets(), 2);
        drop(accepted);
        assert_eq!(a.open_sockets(), 1);
    }

    /// shutdown(receive) on one end: its reads end, the peer's writes go on succeeding.
    #[test]
    fn shutdown_receive_keeps_the_peer_writing() {
        let pod = PodNetwork::new();
        let srv = pod.attach("server");
        let cli = pod.attach("client");
        let mut l = listener(&srv, v4(8181));
        let mut c = VTcpSocket::new(&cli, Family::V4).unwrap();
        c.start_connect(&cli, v4(8181)).unwrap();
        let (c_rx, _c_tx) = c.finish_connect().unwrap();
        let (_s, _s_rx, s_tx) = l.accept(&srv).unwrap();
        s_tx.write(Bytes::from_static(b"unread")).unwrap();
        c.shutdown(true, false).unwrap();
        assert!(matches!(c_rx.try_read(10), Err(StreamError::Closed)));
        for _ in 0..10 {
            assert!(s_tx.check_write().unwrap() > 0);
            s_tx.write(Bytes::from_static(b"more")).unwrap();
        }
        assert_eq!(srv.buffered_bytes(), 0, "discarded bytes are not charged");
        // Dropping the socket is what ends the connection for the writer.
        drop(c_rx);
        drop(c);
        assert!(matches!(s_tx.check_write(), Err(StreamError::Closed)));
    }

    #[test]
    fn options_validate_like_wasmtime() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        let mut s = VTcpSocket::new(&a, Family::V4).unwrap();
        assert_eq!(s.set_keep_alive_idle_time(0), Err(NetError::InvalidArgument));
        s.set_keep_alive_idle_time(1).unwrap();
        assert_eq!(s.keep_alive_idle_time().unwrap(), NANOS_PER_SEC);
        assert_eq!(s.set_hop_limit(0), Err(NetError::InvalidArgument));
        assert_eq!(s.set_receive_buffer_size(0), Err(NetError::InvalidArgument));
        assert_eq!(s.set_listen_backlog_size(0), Err(NetError::InvalidArgument));
        s.set_listen_backlog_size(u64::MAX).unwrap();
    }
}
