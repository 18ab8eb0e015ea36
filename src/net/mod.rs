//! The pod's virtual loopback network: one port namespace per pod, shared by every container
//! of the pod and by the host-side users of the pod network (front proxy, tests).
//!
//! This module owns the namespace ([`PodNetwork`]: ports, ephemeral allocation, listeners with
//! bounded backlogs, port leases released on `Drop`), a container's attachment to it
//! ([`ContainerNet`]: owner identity, connection bookkeeping, its socket budget and limits,
//! teardown on exit/restart) and the
//! host-side endpoints ([`PodStream`], [`PodListener`]). It does not own the byte transport
//! ([`pipe`]), what a container's sockets may hold in the host ([`budget`]), the socket state machines ([`tcp`], [`udp`]), name lookup ([`lookup`]), what may
//! leave the pod ([`egress`]) or the WASI glue ([`p2`]). TCP and UDP ports are separate
//! namespaces.
//!
//! No OS socket is ever opened for the pod's own traffic (only [`egress`] opens outbound host
//! sockets, to destinations a container's policy allows): `127.0.0.0/8`, `::1`, `0.0.0.0` and
//! `::` all mean "the pod", IPv4 and IPv6 share one port space, and two `PodNetwork`s are fully independent, so two
//! pods in one process can both listen on port 80.
//!
//! Deviations from Linux, on purpose: a full backlog refuses the connection at once (no SYN
//! retry); a connect completes when the connection is queued on the listener, before `accept`
//! (as with a kernel backlog); there is no TIME_WAIT, a released port is immediately reusable;
//! ports are not per-IP (binding `127.0.0.2:80` and `127.0.0.1:80` conflicts).

pub mod budget;
pub mod egress;
pub mod fault;
pub mod lookup;
pub mod p2;
pub mod pipe;
pub(crate) mod surge;
pub mod tcp;
pub mod udp;

use crate::resources::MemoryAccount;
use budget::SocketBudget;
pub use budget::{DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_SOCKETS, SocketLimits};
pub use egress::{Denied, DeniedHook, DeniedKind, EgressError, EgressPolicy};
use pipe::{Pipe, PipeReader, PipeWriter};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First port handed out for port 0 (IANA dynamic range, like most kernels).
pub const EPHEMERAL_FIRST: u16 = 49152;
/// Last ephemeral port.
pub const EPHEMERAL_LAST: u16 = 65535;
/// Backlog used when a guest never sets one (Rust std's value, as wasmtime uses).
pub const DEFAULT_BACKLOG: u32 = 128;
/// Upper bound on any backlog, so a guest cannot make a listener queue unbounded.
pub const MAX_BACKLOG: u32 = 4096;

/// Errors of the pod network, named after the WASI `error-code`s a guest sees for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("access denied (destination outside the pod)")]
    AccessDenied,
    #[error("operation not supported")]
    NotSupported,
    #[error("invalid argument")]
    InvalidArgument,
    #[error("invalid state")]
    InvalidState,
    #[error("another operation is in progress")]
    ConcurrencyConflict,
    #[error("no operation in progress")]
    NotInProgress,
    #[error("operation would block")]
    WouldBlock,
    #[error("address not bindable in the pod")]
    AddressNotBindable,
    #[error("address in use")]
    AddressInUse,
    #[error("remote unreachable")]
    RemoteUnreachable,
    #[error("connection refused")]
    ConnectionRefused,
    #[error("connection reset")]
    ConnectionReset,
    #[error("connection aborted")]
    ConnectionAborted,
    #[error("datagram too large")]
    DatagramTooLarge,
    #[error("name unresolvable")]
    NameUnresolvable,
    #[error("timed out")]
    Timeout,
    #[error("the container's network attachment was shut down")]
    Detached,
    #[error("too many open sockets")]
    SocketLimit,
}

/// Who holds a port, so a container's ports can be released together when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Host,
    Container(u64),
}

/// TCP and UDP ports are separate namespaces, as on any host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

enum PortKind {
    Bound,
    Listening(Arc<ListenQueue>),
    Datagram(Arc<udp::UdpInbox>),
}

impl PortKind {
    /// Called once the entry has left the namespace, outside the net lock.
    fn close(self) {
        match self {
            PortKind::Bound => {}
            PortKind::Listening(q) => q.close(),
            PortKind::Datagram(q) => q.close(),
        }
    }
}

struct PortEntry {
    lease: u64,
    owner: Owner,
    kind: PortKind,
}

struct NetState {
    ports: HashMap<(Proto, u16), PortEntry>,
    next_ephemeral: u16,
    next_id: u64,
    names: HashSet<String>,
    /// A container's new version binding its ports beside the old one (see `surge.rs`).
    surge: surge::Surges,
}

/// One pod's network namespace; `Arc`-shared by its containers and host-side users.
pub struct PodNetwork {
    st: Mutex<NetState>,
    /// Signalled whenever a listener appears, so waiters (probes, tests) need no polling loop.
    listeners_changed: tokio::sync::Notify,
    pipe_capacity: usize,
    /// Bytes queued in all of the pod's pipes and inboxes (every container and the host side).
    buffered_total: Arc<AtomicU64>,
    /// Pays for pipes between two host-side ends (see `budget.rs`).
    host_budget: Arc<SocketBudget>,
    /// Faults injected on the pod's links (empty: one atomic load per link opened).
    faults: Arc<fault::FaultTable>,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork").finish_non_exhaustive()
    }
}

impl PodNetwork {
    /// A fresh, empty namespace: nothing listens, every port is free.
    pub fn new() -> Arc<Self> {
        let buffered_total = Arc::new(AtomicU64::new(0));
        Arc::new(Self {
            st: Mutex::new(NetState {
                ports: HashMap::new(),
                next_ephemeral: EPHEMERAL_FIRST,
                next_id: 1,
                names: HashSet::new(),
                surge: surge::Surges::default(),
            }),
            listeners_changed: tokio::sync::Notify::new(),
            pipe_capacity: pipe::DEFAULT_PIPE_CAPACITY,
            host_budget: SocketBudget::host(buffered_total.clone()),
            buffered_total,
            faults: fault::FaultTable::new(),
        })
    }

    /// The pod's fault table: faults added here act on links opened from now on (and on
    /// faulty links already open, see [`fault`]).
    pub fn faults(&self) -> &Arc<fault::FaultTable> {
        &self.faults
    }

    /// Bytes queued right now in the pod's connections and datagram inboxes, all containers
    /// and the host side together (write permits handed out but not used yet included).
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_total.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        crate::sync::lock(&self.st)
    }

    /// Attaches a container that reaches nothing outside the pod (no egress, no reports):
    /// its sockets, ports and connections are owned by the returned handle and torn down
    /// with it. Also makes `container_name` resolve to the pod.
    pub fn attach(self: &Arc<Self>, container_name: &str) -> ContainerNet {
        self.attach_with(container_name, EgressPolicy::deny_all(), None)
    }

    /// Attaches a container with its egress policy (from `allowed_outbound_hosts`) and an
    /// optional hook told about every refused outbound connect or lookup. Its sockets draw on
    /// a fresh unlimited memory account under the default [`SocketLimits`].
    pub fn attach_with(
        self: &Arc<Self>,
        container_name: &str,
        policy: EgressPolicy,
        on_denied: Option<DeniedHook>,
    ) -> ContainerNet {
        self.attach_limited(
            container_name,
            policy,
            on_denied,
            MemoryAccount::new(None),
            SocketLimits::default(),
        )
    }

    /// Like [`PodNetwork::attach_with`], with the container's memory account (the one its
    /// Stores' limiters draw on) and its socket limits: bytes its sockets keep queued are
    /// charged to `account` and capped by `limits.max_buffered_bytes`, and it may have at most
    /// `limits.max_sockets` sockets open (see [`budget`] for who pays for which byte).
    pub fn attach_limited(
        self: &Arc<Self>,
        container_name: &str,
        policy: EgressPolicy,
        on_denied: Option<DeniedHook>,
        account: Arc<MemoryAccount>,
        limits: SocketLimits,
    ) -> ContainerNet {
        let conns = Arc::new(Mutex::new(ConnRegistry {
            conns: Vec::new(),
            high_water: 64,
        }));
        let id = {
            let mut st = self.lock();
            st.names.insert(container_name.to_ascii_lowercase());
            let id = st.next_id;
            st.next_id += 1;
            st.surge.attached(id, container_name, &conns);
            id
        };
        ContainerNet {
            net: self.clone(),
            name: container_name.to_string(),
            owner: Owner::Container(id),
            conns,
            detached: AtomicBool::new(false),
            egress: Arc::new(egress::Egress::new(container_name, policy, on_denied)),
            budget: SocketBudget::new(account, limits, self.buffered_total.clone()),
            counters: None,
        }
    }

    /// Makes `name` resolve to the pod before its container has started (e.g. all spec names
    /// at pod start), so start order does not decide whether a lookup succeeds.
    pub fn register_name(&self, name: &str) {
        self.lock().names.insert(name.to_ascii_lowercase());
    }

    /// True if `name` (case-insensitive) is a container name of this pod.
    pub fn has_name(&self, name: &str) -> bool {
        self.lock().names.contains(&name.to_ascii_lowercase())
    }

    /// True if something listens on `port` right now (front proxy, readiness checks).
    pub fn is_listening(&self, port: u16) -> bool {
        matches!(
            self.lock().ports.get(&(Proto::Tcp, port)),
            Some(PortEntry {
                kind: PortKind::Listening(_),
                ..
            })
        )
    }

    /// Waits until something listens on `port`; combine with a timeout for a deadline.
    pub async fn wait_listening(&self, port: u16) {
        loop {
            let notified = self.listeners_changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a listen between check and await is not missed.
            notified.as_mut().enable();
            if self.is_listening(port) {
                return;
            }
            notified.await;
        }
    }

    /// Reserves TCP `port` (0 = an ephemeral port) for `owner`; the lease frees it on drop.
    pub(crate) fn lease(self: &Arc<Self>, port: u16, owner: Owner) -> Result<PortLease, NetError> {
        self.lease_proto(Proto::Tcp, port, owner, || PortKind::Bound)
    }

    /// Reserves UDP `port` (0 = an ephemeral port) for `owner`, whose inbox is charged to
    /// `budget`. A UDP port receives from the moment it is bound, as a kernel socket does.
    pub(crate) fn lease_udp(
        self: &Arc<Self>,
        port: u16,
        owner: Owner,
        budget: &Arc<SocketBudget>,
    ) -> Result<PortLease, NetError> {
        self.lease_proto(Proto::Udp, port, owner, || {
            PortKind::Datagram(Arc::new(udp::UdpInbox::new(budget.clone())))
        })
    }

    /// Reserves `port` of `proto` (0 = an ephemeral port) for `owner`.
    fn lease_proto(
        self: &Arc<Self>,
        proto: Proto,
        port: u16,
        owner: Owner,
        kind: impl FnOnce() -> PortKind,
    ) -> Result<PortLease, NetError> {
        let mut st = self.lock();
        let port = if port == 0 {
            Self::pick_ephemeral(&mut st, proto)?
        } else if st.ports.contains_key(&(proto, port)) {
            // Only the new version of the container holding the port may bind it too.
            return match st.lease_beside(proto, port, owner) {
                Some(id) => Ok(PortLease {
                    net: self.clone(),
                    proto,
                    port,
                    id,
                }),
                None => Err(NetError::AddressInUse),
            };
        } else {
            port
        };
        let id = st.next_id;
        st.next_id += 1;
        st.ports.insert(
            (proto, port),
            PortEntry {
                lease: id,
                owner,
                kind: kind(),
            },
        );
        Ok(PortLease {
            net: self.clone(),
            proto,
            port,
            id,
        })
    }

    fn pick_ephemeral(st: &mut NetState, proto: Proto) -> Result<u16, NetError> {
        let span = u32::from(EPHEMERAL_LAST - EPHEMERAL_FIRST) + 1;
        for _ in 0..span {
            let p = st.next_ephemeral;
            st.next_ephemeral = if p == EPHEMERAL_LAST { EPHEMERAL_FIRST } else { p + 1 };
            if !st.ports.contains_key(&(proto, p)) {
                return Ok(p);
            }
        }
        // WASI: "address-in-use: no ephemeral ports available".
        Err(NetError::AddressInUse)
    }

    /// The receive queue of a UDP lease (created with the lease).
    pub(crate) fn udp_inbox(&self, lease: &PortLease) -> Result<Arc<udp::UdpInbox>, NetError> {
        match self.lock().ports.get(&(Proto::Udp, lease.port)) {
            Some(PortEntry {
                lease: id,
                kind: PortKind::Datagram(q),
                ..
            }) if *id == lease.id => Ok(q.clone()),
            _ => Err(NetError::Detached),
        }
    }

    /// Delivers a datagram to whatever is bound on UDP `to_port`; silently dropped when its
    /// queue is full, as UDP does. False when nothing is bound there (the "port unreachable"
    /// a kernel would answer with).
    pub(crate) fn send_datagram(&self, from_port: u16, to_port: u16, data: Vec<u8>) -> bool {
        match self.inbox(to_port) {
            Some(inbox) => {
                inbox.push(from_port, data);
                true
            }
            None => false,
        }
    }

    fn inbox(&self, port: u16) -> Option<Arc<udp::UdpInbox>> {
        match self.lock().ports.get(&(Proto::Udp, port)) {
            Some(PortEntry {
                kind: PortKind::Datagram(q),
                ..
            }) => Some(q.clone()),
            _ => None,
        }
    }

    /// Like [`PodNetwork::send_datagram`], for a datagram sent by container `from`: the pod's
    /// faults may drop it (it then counts as delivered: a lost datagram is not refused) or hold
    /// it back (delivered later to the inbox bound now).
    pub(crate) fn send_datagram_from(&self, from: &str, from_port: u16, to_port: u16, data: Vec<u8>) -> bool {
        if self.faults.is_empty() {
            return self.send_datagram(from_port, to_port, data);
        }
        let delay = match self.faults.datagram(from, from_port, to_port) {
            None => return true,
            Some(delay) => delay,
        };
        if delay.is_zero() {
            return self.send_datagram(from_port, to_port, data);
        }
        match self.inbox(to_port) {
            Some(inbox) => {
                self.faults.hold_datagram(inbox, from_port, to_port, delay, data);
                true
            }
            None => false,
        }
    }

    /// Turns a bound port into a listener with a backlog of `backlog` connections, whose
    /// connections are paid for by `budget` (the listening container's, or the host's).
    pub(crate) fn listen(
        &self,
        lease: &PortLease,
        backlog: u32,
        budget: &Arc<SocketBudget>,
    ) -> Result<Arc<ListenQueue>, NetError> {
        let q = {
            let mut st = self.lock();
            // Released underneath us by a container shutdown: Detached.
            let entry = st.entry_mut(lease.port, lease.id).ok_or(NetError::Detached)?;
            match &entry.kind {
                PortKind::Listening(q) => q.clone(),
                PortKind::Datagram(_) => return Err(NetError::InvalidState),
                PortKind::Bound => {
                    let q = Arc::new(ListenQueue::new(backlog, budget.clone()));
                    entry.kind = PortKind::Listening(q.clone());
                    q
                }
            }
        };
        self.listeners_changed.notify_waiters();
        Ok(q)
    }

    /// Creates a connection to `peer_port` from `local_port` (a client paying with `client`)
    /// and queues the server half on the listener; returns the client half.
    pub(crate) fn open_connection(
        &self,
        local_port: u16,
        peer_port: u16,
        client: &Arc<SocketBudget>,
    ) -> Result<Endpoint, NetError> {
        self.open_link(local_port, peer_port, client, None)
    }

    /// [`PodNetwork::open_connection`] for a link opened by container `from` (None: the host
    /// side), through the pod's faults: a `down` fault refuses it, others put a relay on it,
    /// and a plain link is watched so faults added while it is open reach it (see [`fault`]).
    pub(crate) fn open_link(
        &self,
        local_port: u16,
        peer_port: u16,
        client: &Arc<SocketBudget>,
        from: Option<&str>,
    ) -> Result<Endpoint, NetError> {
        let generation = self.faults.generation();
        let link = || fault::LinkInfo {
            from: from.map(str::to_string),
            to: fault::LinkTo::Pod(peer_port),
        };
        let verdict = if self.faults.is_empty() {
            fault::Verdict::Clear
        } else {
            self.faults.open_link(link())
        };
        match verdict {
            fault::Verdict::Clear => self.open_plain(local_port, peer_port, client, Some((generation, link()))),
            fault::Verdict::Refuse => Err(NetError::ConnectionRefused),
            fault::Verdict::Relay(link) => {
                let inner = self.open_plain(local_port, peer_port, client, None)?;
                fault::interpose(link, inner, self.pipe_capacity, client, &self.host_budget)
            }
        }
    }

    /// A link with no relay; `watch` (table generation, link) registers it with the fault
    /// table before the server can see it.
    fn open_plain(
        &self,
        local_port: u16,
        peer_port: u16,
        client: &Arc<SocketBudget>,
        watch: Option<(u64, fault::LinkInfo)>,
    ) -> Result<Endpoint, NetError> {
        let q = match self.lock().ports.get(&(Proto::Tcp, peer_port)) {
            Some(PortEntry {
                kind: PortKind::Listening(q),
                ..
            }) => q.clone(),
            _ => return Err(NetError::ConnectionRefused),
        };
        self.queue_connection(&q, local_port, peer_port, client, watch)
    }

    /// Queues a new connection on listener `q` and returns its client half; `watch` as for
    /// [`PodNetwork::open_plain`].
    fn queue_connection(
        &self,
        q: &Arc<ListenQueue>,
        local_port: u16,
        peer_port: u16,
        client: &Arc<SocketBudget>,
        watch: Option<(u64, fault::LinkInfo)>,
    ) -> Result<Endpoint, NetError> {
        let (client, server) = Endpoint::pair(self.pipe_capacity, (client, local_port), (&q.budget, peer_port));
        if let Some((generation, link)) = watch {
            self.faults.watch(generation, link, &client);
        }
        // The net lock is released before the queue lock is taken: no lock-order question.
        match q.push(server) {
            Ok(()) => Ok(client),
            Err(server) => {
                // Never reached the peer: nobody observes these pipes, dropping is enough.
                drop(server);
                Err(NetError::ConnectionRefused)
            }
        }
    }

    fn release(&self, proto: Proto, port: u16, id: u64) {
        let removed = self.lock().remove_entry(proto, port, id);
        if let Some(e) = removed {
            e.kind.close();
        }
    }

    fn release_owner(&self, owner: Owner) {
        let removed: Vec<PortEntry> = self.lock().remove_owner(owner);
        for e in removed {
            e.kind.close();
        }
    }

    /// Host-side connect (front proxy, tests) to whatever listens on `port` in the pod.
    pub fn connect(self: &Arc<Self>, port: u16) -> Result<PodStream, NetError> {
        if port == 0 {
            return Err(NetError::InvalidArgument);
        }
        let lease = self.lease(0, Owner::Host)?;
        let ep = self.open_connection(lease.port, port, &self.host_budget)?;
        Ok(PodStream {
            ep,
            _lease: Some(lease),
        })
    }

    /// Host-side connect on behalf of container `from` (its outgoing HTTP to a port a
    /// command container serves): the pod's faults treat the link as opened by `from`.
    pub fn connect_from(self: &Arc<Self>, port: u16, from: &str) -> Result<PodStream, NetError> {
        if port == 0 {
            return Err(NetError::InvalidArgument);
        }
        let lease = self.lease(0, Owner::Host)?;
        let ep = self.open_link(lease.port, port, &self.host_budget, Some(from))?;
        Ok(PodStream {
            ep,
            _lease: Some(lease),
        })
    }

    /// Host-side listener on `port` (0 = ephemeral): a way to serve a pod port from host code,
    /// e.g. an in-process HTTP handler or a test double.
    pub fn listen_host(self: &Arc<Self>, port: u16, backlog: u32) -> Result<PodListener, NetError> {
        let lease = self.lease(port, Owner::Host)?;
        let queue = self.listen(&lease, backlog, &self.host_budget)?;
        Ok(PodListener { queue, lease })
    }
}

/// A reserved port; dropping it frees the port (and resets connections still queued on it).
pub(crate) struct PortLease {
    net: Arc<PodNetwork>,
    proto: Proto,
    port: u16,
    id: u64,
}

impl PortLease {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Debug for PortLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortLease({})", self.port)
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.net.release(self.proto, self.port, self.id);
    }
}

/// One side of a connection: what it reads, what it writes, and the ports involved.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) rx: PipeReader,
    pub(crate) tx: PipeWriter,
    pub(crate) local_port: u16,
    pub(crate) peer_port: u16,
}

impl Endpoint {
    /// Two cross-wired endpoints: (client, server), each given as (budget, port); each
    /// direction is charged as `budget.rs` says (the writer, or the reader for host writers).
    pub(crate) fn pair(
        capacity: usize,
        (client, client_port): (&Arc<SocketBudget>, u16),
        (server, server_port): (&Arc<SocketBudget>, u16),
    ) -> (Endpoint, Endpoint) {
        let (c2s_w, c2s_r) = pipe::pipe(capacity, SocketBudget::payer(client, server));
        let (s2c_w, s2c_r) = pipe::pipe(capacity, SocketBudget::payer(server, client));
        (
            Endpoint {
                rx: s2c_r,
                tx: c2s_w,
                local_port: client_port,
                peer_port: server_port,
            },
            Endpoint {
                rx: c2s_r,
                tx: s2c_w,
                local_port: server_port,
                peer_port: client_port,
            },
        )
    }

    /// Resets both directions, so the peer sees `connection-reset`, not a clean close.
    pub(crate) fn reset(&self) {
        self.rx.pipe().reset();
        self.tx.pipe().reset();
    }
}

struct ListenState {
    backlog: VecDeque<Endpoint>,
    cap: usize,
    closed: bool,
    waker: Option<Waker>,
}

/// The bounded queue of connections a listener has not accepted yet.
pub(crate) struct ListenQueue {
    st: Mutex<ListenState>,
    /// The listening side's budget: pays for what the server writes to its clients.
    budget: Arc<SocketBudget>,
}

impl ListenQueue {
    fn new(backlog: u32, budget: Arc<SocketBudget>) -> Self {
        Self {
            budget,
            st: Mutex::new(ListenState {
                backlog: VecDeque::new(),
                cap: backlog.clamp(1, MAX_BACKLOG) as usize,
                closed: false,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ListenState> {
        crate::sync::lock(&self.st)
    }

    /// Queues a server half; gives it back when the backlog is full or the listener closed.
    fn push(&self, ep: Endpoint) -> Result<(), Endpoint> {
        let waker = {
            let mut st = self.lock();
            if st.closed || st.backlog.len() >= st.cap {
                return Err(ep);
            }
            st.backlog.push_back(ep);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// True when no connection is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().backlog.is_empty()
    }

    /// Next queued connection, if any.
    pub(crate) fn pop(&self) -> Option<Endpoint> {
        self.lock().backlog.pop_front()
    }

    /// Ready when a connection is queued or the listener is closed (exact: `pop` then
    /// returns a connection, or the accept fails for good).
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if !st.backlog.is_empty() || st.closed {
            Poll::Ready(())
        } else {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn set_capacity(&self, backlog: u32) {
        self.lock().cap = backlog.clamp(1, MAX_BACKLOG) as usize;
    }

    /// Closes the listener: queued, never-accepted connections are reset (their clients
    /// already saw the connect succeed, as with a kernel backlog).
    fn close(&self) {
        let (queued, waker) = {
            let mut st = self.lock();
            st.closed = true;
            (std::mem::take(&mut st.backlog), st.waker.take())
        };
        for ep in &queued {
            ep.reset();
        }
        drop(queued);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Weak references to one connection's pipes, so a container's teardown can close them.
struct ConnRef {
    inbound: Weak<Pipe>,
    outbound: Weak<Pipe>,
}

struct ConnRegistry {
    conns: Vec<ConnRef>,
    /// Prune dead entries when the list reaches this size; keeps the list O(live connections).
    high_water: usize,
}

/// One container's attachment to the pod network. Dropping it (with the container's Store)
/// releases the container's ports and closes its connections so that peers notice.
pub struct ContainerNet {
    net: Arc<PodNetwork>,
    name: String,
    owner: Owner,
    /// Shared with the namespace, which counts an old version's open connections (`surge.rs`).
    conns: Arc<Mutex<ConnRegistry>>,
    detached: AtomicBool,
    /// Shared with in-flight lookups, which record their answers after the call returned.
    egress: Arc<egress::Egress>,
    /// What its sockets may hold in the host, and how many it may have.
    budget: Arc<SocketBudget>,
    /// Where its sockets count their bytes (`None`: not counted).
    counters: Option<Arc<crate::counters::ContainerCounters>>,
}

impl std::fmt::Debug for ContainerNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerNet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ContainerNet {
    /// Counts the bytes of this attachment's sockets into the container's counters.
    pub fn counting_into(mut self, counters: Arc<crate::counters::ContainerCounters>) -> ContainerNet {
        self.counters = Some(counters);
        self
    }

    /// The counters its sockets count their bytes into, if any.
    pub fn counters(&self) -> Option<&Arc<crate::counters::ContainerCounters>> {
        self.counters.as_ref()
    }

    /// The pod network this container is attached to.
    pub fn pod(&self) -> &Arc<PodNetwork> {
        &self.net
    }

    /// The container name this attachment was made for (used in events/logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The egress policy this container was attached with.
    pub fn egress_policy(&self) -> &EgressPolicy {
        self.egress.policy()
    }

    pub(crate) fn egress(&self) -> &Arc<egress::Egress> {
        &self.egress
    }

    /// Opens a host connection for a request this container makes outside the pod (outgoing
    /// `wasi:http`), through the same egress decision as its sockets; see
    /// [`egress::Egress::dial_outside`]. `what` names the request in a denial report.
    pub async fn dial_outside(&self, host: &str, port: u16, what: &str) -> Result<egress::OutsideConnection, NetError> {
        self.check_attached()?;
        let connection = self.egress.clone().dial_outside(host, port, what).await?;
        Ok(connection.counting_into(self.counters.clone()))
    }

    pub(crate) fn owner(&self) -> Owner {
        self.owner
    }

    pub(crate) fn budget(&self) -> &Arc<SocketBudget> {
        &self.budget
    }

    /// The memory account its queued socket bytes are charged to.
    pub fn memory(&self) -> &Arc<MemoryAccount> {
        self.budget.account()
    }

    /// The limits it was attached with.
    pub fn limits(&self) -> SocketLimits {
        self.budget.limits()
    }

    /// Bytes charged to this container's sockets right now (queued, or permitted and about to
    /// be written).
    pub fn buffered_bytes(&self) -> u64 {
        self.budget.buffered()
    }

    /// Sockets it has open right now (TCP and UDP, accepted ones included).
    pub fn open_sockets(&self) -> usize {
        self.budget.sockets()
    }

    /// Takes one of its socket slots, or fails with [`NetError::SocketLimit`].
    pub(crate) fn open_socket(&self) -> Result<budget::SocketSlot, NetError> {
        self.budget.open_socket().ok_or(NetError::SocketLimit)
    }

    /// Fails once the container has been shut down, so a zombie Store cannot take ports.
    pub(crate) fn check_attached(&self) -> Result<(), NetError> {
        if self.detached.load(Ordering::Acquire) {
            Err(NetError::Detached)
        } else {
            Ok(())
        }
    }

    /// Remembers a connection end owned by this container, for [`ContainerNet::shutdown`].
    pub(crate) fn track(&self, ep: &Endpoint) {
        let mut reg = crate::sync::lock(&self.conns);
        if reg.conns.len() >= reg.high_water {
            reg.conns
                .retain(|c| c.inbound.strong_count() > 0 || c.outbound.strong_count() > 0);
            reg.high_water = (reg.conns.len() * 2).max(64);
        }
        reg.conns.push(ConnRef {
            inbound: Arc::downgrade(ep.rx.pipe()),
            outbound: Arc::downgrade(ep.tx.pipe()),
        });
    }

    /// Detaches the container as a process exit would: frees all its ports (listeners reset
    /// their queued connections) and closes its connections — the peer reads end-of-stream
    /// after the bytes already sent, and its further writes fail. Idempotent; also run on Drop.
    pub fn shutdown(&self) {
        if self.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        self.net.release_owner(self.owner);
        let conns = {
            let mut reg = crate::sync::lock(&self.conns);
            std::mem::take(&mut reg.conns)
        };
        for c in conns {
            if let Some(p) = c.outbound.upgrade() {
                p.finish();
            }
            if let Some(p) = c.inbound.upgrade() {
                p.close_reader();
            }
        }
    }

    /// Hard teardown: like [`ContainerNet::shutdown`] but resets every open connection, so
    /// peers see `connection-reset` (used for a kill, not a clean exit).
    pub fn abort(&self) {
        let conns = {
            let mut reg = crate::sync::lock(&self.conns);
            std::mem::take(&mut reg.conns)
        };
        for c in conns {
            if let Some(p) = c.outbound.upgrade() {
                p.reset();
            }
            if let Some(p) = c.inbound.upgrade() {
                p.reset();
            }
        }
        self.shutdown();
    }
}

impl Drop for ContainerNet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The loopback address of a family: what "the pod" looks like to that family.
pub(crate) fn loopback(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// True for every address that means "this pod" (the egress policy's one definition).
pub use crate::egress::is_pod_address;

/// A host-side connection into the pod (tokio `AsyncRead + AsyncWrite`; shutdown = FIN).
#[derive(Debug)]
pub struct PodStream {
    ep: Endpoint,
    /// The ephemeral port of a host-initiated connection (None for accepted ones).
    _lease: Option<PortLease>,
}

impl PodStream {
    /// Local address as seen inside the pod.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(loopback(false), self.ep.local_port)
    }

    /// Peer address as seen inside the pod.
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(loopback(false), self.ep.peer_port)
    }

    /// Resets the connection (the peer sees `connection-reset`), e.g. on proxy idle timeout.
    pub fn reset(self) {
        self.ep.reset();
    }
}

impl Drop for PodStream {
    /// The whole connection is gone (not just its read side): the pod side's writes fail.
    fn drop(&mut self) {
        self.ep.rx.pipe().close_reader();
    }
}

impl AsyncRead for PodStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ep.rx).poll_read(cx, buf)
    }
}

impl AsyncWrite for PodStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.ep.tx).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ep.tx).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ep.tx).poll_shutdown(cx)
    }
}

/// A host-side listener on a pod port; dropping it frees the port.
pub struct PodListener {
    queue: Arc<ListenQueue>,
    lease: PortLease,
}

impl PodListener {
    /// The pod port this listener holds.
    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    /// Waits for the next connection (cancel-safe: nothing is lost if the future is dropped).
    pub async fn accept(&self) -> Result<PodStream, NetError> {
        loop {
            if let Some(ep) = self.queue.pop() {
                return Ok(PodStream { ep, _lease: None });
            }
            if self.queue.is_closed() {
                return Err(NetError::ConnectionAborted);
            }
            std::future::poll_fn(|cx| self.queue.poll_ready(cx)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn address_in_use_and_release() {
        let net = PodNetwork::new();
        let a = net.lease(80, Owner::Host).unwrap();
        assert_eq!(net.lease(80, Owner::Host).unwrap_err(), NetError::AddressInUse);
        drop(a);
        let _b = net.lease(80, Owner::Host).unwrap();
    }

    #[test]
    fn ephemeral_ports_are_distinct_and_in_range() {
        let net = PodNetwork::new();
        let leases: Vec<_> = (0..100).map(|_| net.lease(0, Owner::Host).unwrap()).collect();
        let ports: HashSet<u16> = leases.iter().map(|l| l.port()).collect();
        assert_eq!(ports.len(), 100);
        assert!(ports.iter().all(|p| *p >= EPHEMERAL_FIRST));
    }

    #[test]
    fn ephemeral_exhaustion_is_address_in_use() {
        let net = PodNetwork::new();
        let n = usize::from(EPHEMERAL_LAST - EPHEMERAL_FIRST) + 1;
        let leases: Vec<_> = (0..n).map(|_| net.lease(0, Owner::Host).unwrap()).collect();
        assert_eq!(net.lease(0, Owner::Host).unwrap_err(), NetError::AddressInUse);
        drop(leases);
        assert!(net.lease(0, Owner::Host).is_ok());
    }

    #[test]
    fn connection_refused_without_listener() {
        let net = PodNetwork::new();
        assert_eq!(net.connect(5000).unwrap_err(), NetError::ConnectionRefused);
        // A bound but not listening port refuses too.
        let _l = net.lease(5000, Owner::Host).unwrap();
        assert_eq!(net.connect(5000).unwrap_err(), NetError::ConnectionRefused);
    }

    #[test]
    fn full_backlog_refuses() {
        let net = PodNetwork::new();
        let _l = net.listen_host(7000, 2).unwrap();
        let _a = net.connect(7000).unwrap();
        let _b = net.connect(7000).unwrap();
        assert_eq!(net.connect(7000).unwrap_err(), NetError::ConnectionRefused);
    }

    #[test]
    fn two_pods_are_independent() {
        let a = PodNetwork::new();
        let b = PodNetwork::new();
        let _la = a.listen_host(80, 8).unwrap();
        let _lb = b.listen_host(80, 8).unwrap();
        assert!(a.connect(80).is_ok());
        assert!(b.connect(80).is_ok());
        let c = PodNetwork::new();
        assert_eq!(c.connect(80).unwrap_err(), NetError::ConnectionRefused);
    }

    #[tokio::test]
    async fn dropping_listener_resets_queued_and_frees_port() {
        let net = PodNetwork::new();
        let l = net.listen_host(81, 8).unwrap();
        let mut c = net.connect(81).unwrap();
        drop(l);
        let mut buf = [0u8; 4];
        let err = c.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(!net.is_listening(81));
        let _again = net.listen_host(81, 8).unwrap();
    }

    #[tokio::test]
    async fn container_shutdown_releases_ports_and_closes_connections() {
        let net = PodNetwork::new();
        let cn = net.attach("web");
        let lease = net.lease(8080, cn.owner()).unwrap();
        let q = net.listen(&lease, 8, cn.budget()).unwrap();
        let mut client = net.connect(8080).unwrap();
        let server = q.pop().unwrap();
        cn.track(&server);
        server.tx.write(bytes::Bytes::from_static(b"bye")).unwrap();
        cn.shutdown();
        // Port is free again even though the lease object still exists (zombie store).
        assert!(!net.is_listening(8080));
        let _other = net.listen_host(8080, 8).unwrap();
        drop(lease); // must not free the new owner's port
        assert!(net.is_listening(8080));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        let err = client.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(net.lease(1, cn.owner()).map(|_| ()), Ok(()));
        assert_eq!(cn.check_attached(), Err(NetError::Detached));
        assert!(net.has_name("WEB"));
    }

    #[tokio::test]
    async fn host_stream_16_mib_intact() {
        let net = PodNetwork::new();
        let listener = net.listen_host(9000, 8).unwrap();
        let data: Arc<Vec<u8>> = Arc::new(
            (0..16 * 1024 * 1024u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        );
        let echo = tokio::spawn(async move {
            let s = listener.accept().await.unwrap();
            let (mut r, mut w) = tokio::io::split(s);
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let client = net.connect(9000).unwrap();
        let (mut r, mut w) = tokio::io::split(client);
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&d2).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(data.len());
        tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got))
            .await
            .expect("deadline")
            .unwrap();
        writer.await.unwrap();
        echo.await.unwrap();
        assert!(got == *data, "16 MiB echo differs");
    }

    /// Who pays: a container for what it writes, the receiving container for what the host
    /// side writes to it; every byte goes back on read, reset, drop and container abort.
    #[tokio::test]
    async fn queued_bytes_are_charged_and_always_given_back() {
        let net = PodNetwork::new();
        let account = MemoryAccount::new(Some(1 << 20));
        let srv = net.attach_limited(
            "srv",
            EgressPolicy::deny_all(),
            None,
            account.clone(),
            SocketLimits::default(),
        );
        let cli = net.attach("cli");
        let lease = net.lease(80, srv.owner()).unwrap();
        let q = net.listen(&lease, 8, srv.budget()).unwrap();
        let cli_port = net.lease(0, cli.owner()).unwrap();
        let c = net.open_connection(cli_port.port(), 80, cli.budget()).unwrap();
        cli.track(&c);
        let s = q.pop().unwrap();
        srv.track(&s);
        c.tx.write(bytes::Bytes::from_static(b"hello")).unwrap();
        s.tx.write(bytes::Bytes::from_static(b"bye!!!")).unwrap();
        assert_eq!((cli.buffered_bytes(), srv.buffered_bytes()), (5, 6));
        // The host writes into the server container: the server pays.
        let mut h = net.connect(80).unwrap();
        let hs = q.pop().unwrap();
        srv.track(&hs);
        h.write_all(b"0123456789").await.unwrap();
        assert_eq!(srv.buffered_bytes(), 16);
        assert_eq!(account.used(), 16);
        assert_eq!(net.buffered_bytes(), 21);
        // Read: given back.
        assert_eq!(&s.rx.try_read(100).unwrap()[..], b"hello");
        assert_eq!(cli.buffered_bytes(), 0);
        // Host stream dropped with its bytes unread by the host: given back.
        hs.tx.write(bytes::Bytes::from_static(b"to the host")).unwrap();
        assert_eq!(srv.buffered_bytes(), 27);
        drop(h);
        assert_eq!(srv.buffered_bytes(), 16);
        // A reset gives back both directions.
        hs.reset();
        assert_eq!(srv.buffered_bytes(), 6);
        // A killed container (abort) gives back what it wrote and what it was sent.
        c.tx.write(bytes::Bytes::from_static(b"more")).unwrap();
        assert_eq!(cli.buffered_bytes(), 4);
        srv.abort();
        assert_eq!((cli.buffered_bytes(), srv.buffered_bytes()), (0, 0));
        drop((c, s, hs, q, lease, cli_port));
        assert_eq!(account.used(), 0);
        assert_eq!(net.buffered_bytes(), 0);
    }

    /// The host-side client of a container blocked on the container's budget resumes when the
    /// container reads.
    #[tokio::test]
    async fn host_writes_wait_for_the_receiving_container() {
        let net = PodNetwork::new();
        let limits = SocketLimits {
            max_buffered_bytes: 1000,
            max_sockets: 8,
        };
        let srv = net.attach_limited("srv", EgressPolicy::deny_all(), None, MemoryAccount::new(None), limits);
        let lease = net.lease(81, srv.owner()).unwrap();
        let q = net.listen(&lease, 8, srv.budget()).unwrap();
        let mut h = net.connect(81).unwrap();
        let s = q.pop().unwrap();
        let writer = tokio::spawn(async move {
            h.write_all(&[9u8; 100_000]).await.unwrap();
            h.shutdown().await.unwrap();
            h
        });
        let mut total = 0;
        loop {
            std::future::poll_fn(|cx| s.rx.poll_readable(cx)).await;
            assert!(srv.buffered_bytes() <= 1000);
            match s.rx.try_read(300) {
                Ok(b) => total += b.len(),
                Err(_) => break,
            }
        }
        assert_eq!(total, 100_000);
        drop(writer.await.unwrap());
        assert_eq!(net.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn wait_listening_wakes() {
        let net = PodNetwork::new();
        let n2 = net.clone();
        let waiter = tokio::spawn(async move { n2.wait_listening(4242).await });
        tokio::task::yield_now().await;
        let _l = net.listen_host(4242, 1).unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("deadline")
            .unwrap();
    }
}
