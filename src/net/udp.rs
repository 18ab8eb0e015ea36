//! Virtual UDP in the pod: the per-port datagram inbox and the socket state behind
//! `wasi:sockets/udp`, mirroring wasmtime-wasi 48's checks and error codes (`sockets/udp.rs`,
//! `p2/host/udp.rs`) with no OS socket. No bindings here; `p2.rs` is the glue.
//!
//! UDP ports are their own namespace (a TCP and a UDP socket may share a number). A datagram to
//! a full inbox is dropped silently, which is what UDP promises; one to a pod port nobody bound
//! is dropped too, and a *connected* sender then gets `connection-refused` from its next
//! receive, as Linux reports the ICMP port-unreachable. Inboxes are bounded in bytes and
//! datagrams, and their bytes are charged to the receiving container's budget (`budget.rs`), so
//! a flooding sender costs the receiver at most one inbox, within the receiver's limits.

use super::budget::{SocketBudget, SocketSlot};
use super::{ContainerNet, NetError, PodNetwork, PortLease, is_pod_address, loopback};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use wasmtime_wasi_io::poll::Pollable;

/// Largest datagram payload accepted, as wasmtime (`u16::MAX`).
pub const MAX_DATAGRAM_SIZE: usize = u16::MAX as usize;
/// Datagrams handed out or accepted per receive/send call, as wasmtime.
pub const MAX_DATAGRAMS: usize = 16;
/// Bytes an inbox holds before further datagrams are dropped.
pub const INBOX_BYTES: usize = 256 * 1024;
/// Datagrams an inbox holds (bounds bookkeeping for floods of tiny datagrams).
const INBOX_DATAGRAMS: usize = 1024;
/// Per-receive byte budget (wasmtime's `MAX_READ_SIZE_ALLOC`).
const RECEIVE_BYTES: usize = 64 * 1024;
/// What a queued datagram costs beyond its payload (queue slot and allocation), charged too so
/// that floods of empty datagrams are not free.
const DATAGRAM_OVERHEAD: usize = 64;

fn cost(data: &[u8]) -> usize {
    data.len() + DATAGRAM_OVERHEAD
}

struct InboxState {
    queue: VecDeque<(u16, Vec<u8>)>,
    /// Payload bytes queued (bounded by [`INBOX_BYTES`]).
    bytes: usize,
    /// Bytes charged to the budget for the queue.
    charged: usize,
    closed: bool,
    /// A datagram sent by this socket while connected found no receiver: the next receive
    /// reports `connection-refused` (once).
    refused: bool,
    waker: Option<Waker>,
}

impl InboxState {
    fn pop(&mut self) -> Option<(u16, Vec<u8>)> {
        let (from, data) = self.queue.pop_front()?;
        self.bytes -= data.len();
        self.charged -= cost(&data);
        Some((from, data))
    }
}

/// The receive queue of one bound UDP port.
pub(crate) struct UdpInbox {
    st: Mutex<InboxState>,
    /// The receiving container's budget, charged for queued datagrams.
    budget: Arc<SocketBudget>,
}

impl UdpInbox {
    pub(crate) fn new(budget: Arc<SocketBudget>) -> Self {
        Self {
            st: Mutex::new(InboxState {
                queue: VecDeque::new(),
                bytes: 0,
                charged: 0,
                closed: false,
                refused: false,
                waker: None,
            }),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        crate::sync::lock(&self.st)
    }

    pub(crate) fn push(&self, from_port: u16, data: Vec<u8>) {
        let waker = {
            let mut st = self.lock();
            if st.closed || st.queue.len() >= INBOX_DATAGRAMS || st.bytes + data.len() > INBOX_BYTES {
                return;
            }
            // Out of budget is a full receive buffer: the datagram is dropped.
            if !self.budget.reserve_exact(cost(&data)) {
                return;
            }
            st.bytes += data.len();
            st.charged += cost(&data);
            st.queue.push_back((from_port, data));
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Records that a datagram this socket sent while connected found no receiver.
    fn refuse(&self) {
        let waker = {
            let mut st = self.lock();
            st.refused = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn close(&self) {
        let (waker, charged) = {
            let mut st = self.lock();
            st.closed = true;
            st.queue.clear();
            st.bytes = 0;
            (st.waker.take(), std::mem::take(&mut st.charged))
        };
        self.budget.release(charged);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Drops datagrams a connected socket must not see, so readiness stays exact; returns the
    /// bytes to give back to the budget.
    fn discard_unwanted(st: &mut InboxState, only_from: Option<u16>) -> usize {
        let mut freed = 0;
        if let Some(port) = only_from {
            while st.queue.front().is_some_and(|(from, _)| *from != port) {
                if let Some((_, data)) = st.pop() {
                    freed += cost(&data);
                }
            }
        }
        freed
    }
}

impl Drop for UdpInbox {
    fn drop(&mut self) {
        let st = self.st.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget.release(std::mem::take(&mut st.charged));
    }
}

/// A virtual UDP socket of one container.
pub struct VUdpSocket {
    v6: bool,
    local: Option<(SocketAddr, PortLease)>,
    remote: Option<SocketAddr>,
    bind_pending: bool,
    hop_limit: u8,
    recv_buf: u64,
    send_buf: u64,
    /// One of the container's socket slots, given back when the socket is dropped.
    _slot: SocketSlot,
}

impl std::fmt::Debug for VUdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VUdpSocket")
            .field("local", &self.local.as_ref().map(|l| l.0))
            .field("remote", &self.remote)
            .finish()
    }
}

fn family_ok(ip: IpAddr, v6: bool) -> bool {
    match ip {
        IpAddr::V4(_) => !v6,
        IpAddr::V6(a) => {
            let compat = matches!(a.segments(), [0, 0, 0, 0, 0, 0, _, _]) && !a.is_unspecified() && !a.is_loopback();
            v6 && !compat && a.to_ipv4_mapped().is_none()
        }
    }
}

fn valid_remote(addr: SocketAddr, v6: bool) -> bool {
    family_ok(addr.ip(), v6) && !addr.ip().to_canonical().is_unspecified() && addr.port() != 0
}

impl VUdpSocket {
    pub fn new(net: &ContainerNet, v6: bool) -> Result<Self, NetError> {
        net.check_attached()?;
        Ok(Self {
            v6,
            local: None,
            remote: None,
            bind_pending: false,
            hop_limit: 64,
            recv_buf: INBOX_BYTES as u64,
            send_buf: INBOX_BYTES as u64,
            _slot: net.open_socket()?,
        })
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    pub fn start_bind(&mut self, net: &ContainerNet, addr: SocketAddr) -> Result<(), NetError> {
        if self.bind_pending {
            return Err(NetError::ConcurrencyConflict);
        }
        if self.local.is_some() {
            return Err(NetError::InvalidState);
        }
        if !family_ok(addr.ip(), self.v6) {
            return Err(NetError::InvalidArgument);
        }
        if !is_pod_address(addr.ip()) {
            return Err(NetError::AddressNotBindable);
        }
        net.check_attached()?;
        let lease = net.pod().lease_udp(addr.port(), net.owner(), net.budget())?;
        self.local = Some((SocketAddr::new(addr.ip(), lease.port()), lease));
        self.bind_pending = true;
        Ok(())
    }

    pub fn finish_bind(&mut self) -> Result<(), NetError> {
        if !self.bind_pending {
            return Err(NetError::NotInProgress);
        }
        self.bind_pending = false;
        Ok(())
    }

    /// `stream`: (re)sets the connected peer (None = unconnected) and returns fresh streams.
    pub fn stream(
        &mut self,
        net: &ContainerNet,
        remote: Option<SocketAddr>,
    ) -> Result<(UdpIncoming, UdpOutgoing), NetError> {
        let Some((_, lease)) = &self.local else {
            return Err(NetError::InvalidState);
        };
        match remote {
            Some(addr) => {
                if !valid_remote(addr, self.v6) {
                    return Err(NetError::InvalidArgument);
                }
                if !is_pod_address(addr.ip()) {
                    return Err(NetError::AccessDenied);
                }
                self.remote = Some(addr);
            }
            None => self.remote = None,
        }
        let inbox = net.pod().udp_inbox(lease)?;
        let inbox2 = inbox.clone();
        Ok((
            UdpIncoming {
                inbox: inbox2,
                only_from: self.remote.map(|a| a.port()),
                v6: self.v6,
            },
            UdpOutgoing {
                own: inbox.clone(),
                pod: net.pod().clone(),
                from_port: lease.port(),
                remote: self.remote,
                v6: self.v6,
                permit: 0,
            },
        ))
    }

    /// The bound address; once connected, a wildcard reads as the pod's loopback (the source
    /// address a kernel would pick for the route), as `getsockname` does.
    pub fn local_address(&self) -> Result<SocketAddr, NetError> {
        let local = self.local.as_ref().map(|l| l.0).ok_or(NetError::InvalidState)?;
        Ok(match self.remote {
            Some(_) if local.ip().is_unspecified() => SocketAddr::new(loopback(self.v6), local.port()),
            _ => local,
        })
    }

    pub fn remote_address(&self) -> Result<SocketAddr, NetError> {
        self.remote.ok_or(NetError::InvalidState)
    }

    pub fn unicast_hop_limit(&self) -> u8 {
        self.hop_limit
    }

    pub fn set_unicast_hop_limit(&mut self, value: u8) -> Result<(), NetError> {
        if value == 0 {
            return Err(NetError::InvalidArgument);
        }
        self.hop_limit = value;
        Ok(())
    }

    pub fn receive_buffer_size(&self) -> u64 {
        self.recv_buf
    }

    pub fn set_receive_buffer_size(&mut self, value: u64) -> Result<(), NetError> {
        if value == 0 {
            return Err(NetError::InvalidArgument);
        }
        self.recv_buf = value.min(i32::MAX as u64);
        Ok(())
    }

    pub fn send_buffer_size(&self) -> u64 {
        self.send_buf
    }

    pub fn set_send_buffer_size(&mut self, value: u64) -> Result<(), NetError> {
        if value == 0 {
            return Err(NetError::InvalidArgument);
        }
        self.send_buf = value.min(i32::MAX as u64);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Pollable for VUdpSocket {
    /// Every operation completes at once.
    async fn ready(&mut self) {}
}

/// The receiving side handed out by `stream`.
pub struct UdpIncoming {
    inbox: Arc<UdpInbox>,
    only_from: Option<u16>,
    v6: bool,
}

impl UdpIncoming {
    /// Up to `max` datagrams (capped) with their senders; empty = none yet.
    pub fn receive(&mut self, max: u64) -> Result<Vec<(Vec<u8>, SocketAddr)>, NetError> {
        let max = usize::try_from(max).unwrap_or(usize::MAX).min(MAX_DATAGRAMS);
        let mut freed = 0;
        let out = {
            let mut st = self.inbox.lock();
            if st.closed {
                return Err(NetError::Detached);
            }
            if std::mem::take(&mut st.refused) {
                return Err(NetError::ConnectionRefused);
            }
            let mut out = Vec::new();
            let mut bytes = 0usize;
            while out.len() < max && bytes < RECEIVE_BYTES {
                freed += UdpInbox::discard_unwanted(&mut st, self.only_from);
                let Some((from, data)) = st.pop() else {
                    break;
                };
                freed += cost(&data);
                bytes += 1 + data.len();
                out.push((data, SocketAddr::new(loopback(self.v6), from)));
            }
            out
        };
        self.inbox.budget.release(freed);
        Ok(out)
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let (ready, freed) = {
            let mut st = self.inbox.lock();
            let freed = UdpInbox::discard_unwanted(&mut st, self.only_from);
            if st.closed || st.refused || !st.queue.is_empty() {
                (true, freed)
            } else {
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                (false, freed)
            }
        };
        self.inbox.budget.release(freed);
        if ready { Poll::Ready(()) } else { Poll::Pending }
    }
}

#[async_trait::async_trait]
impl Pollable for UdpIncoming {
    async fn ready(&mut self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }
}

/// The sending side handed out by `stream`.
pub struct UdpOutgoing {
    /// This socket's own inbox, where a refused datagram is reported.
    own: Arc<UdpInbox>,
    pod: Arc<PodNetwork>,
    from_port: u16,
    remote: Option<SocketAddr>,
    v6: bool,
    permit: usize,
}

impl UdpOutgoing {
    /// Sending never waits (a full inbox drops), so the permit is always the maximum.
    pub fn check_send(&mut self) -> u64 {
        self.permit = MAX_DATAGRAMS;
        MAX_DATAGRAMS as u64
    }

    /// Datagrams allowed by the last `check_send`; more is a guest bug (trap in the glue).
    pub fn permit(&self) -> usize {
        self.permit
    }

    /// Sends each datagram in order; returns how many were sent. The first invalid one stops
    /// the batch (its error is returned only if nothing was sent), as wasmtime does.
    pub fn send(&mut self, net: &ContainerNet, datagrams: Vec<(Vec<u8>, Option<SocketAddr>)>) -> Result<u64, NetError> {
        self.permit = 0;
        let mut count = 0u64;
        for (data, addr) in datagrams {
            match self.send_one(net, data, addr) {
                Ok(()) => count += 1,
                Err(_) if count > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }

    fn send_one(&self, net: &ContainerNet, data: Vec<u8>, addr: Option<SocketAddr>) -> Result<(), NetError> {
        net.check_attached()?;
        if data.len() > MAX_DATAGRAM_SIZE {
            return Err(NetError::DatagramTooLarge);
        }
        let to = match (addr, self.remote) {
            (Some(a), remote) => {
                if !valid_remote(a, self.v6) || remote.is_some_and(|r| r != a) {
                    return Err(NetError::InvalidArgument);
                }
                a
            }
            (None, Some(r)) => r,
            (None, None) => return Err(NetError::InvalidArgument),
        };
        if !is_pod_address(to.ip()) {
            return Err(NetError::AccessDenied);
        }
        let delivered = self.pod.send_datagram_from(net.name(), self.from_port, to.port(), data);
        if !delivered && self.remote.is_some() {
            self.own.refuse();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Pollable for UdpOutgoing {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_between_containers() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        let b = pod.attach("b");
        let mut sa = VUdpSocket::new(&a, false).unwrap();
        sa.start_bind(&a, "0.0.0.0:5353".parse().unwrap()).unwrap();
        sa.finish_bind().unwrap();
        let mut sb = VUdpSocket::new(&b, false).unwrap();
        assert_eq!(sb.stream(&b, None).err(), Some(NetError::InvalidState));
        sb.start_bind(&b, "127.0.0.1:0".parse().unwrap()).unwrap();
        sb.finish_bind().unwrap();
        // UDP and TCP are separate namespaces; UDP ports conflict among themselves.
        let _tcp = pod.lease(5353, a.owner()).unwrap();
        let mut dup = VUdpSocket::new(&b, false).unwrap();
        assert_eq!(
            dup.start_bind(&b, "127.0.0.1:5353".parse().unwrap()),
            Err(NetError::AddressInUse)
        );

        let (mut a_in, _a_out) = sa.stream(&a, None).unwrap();
        let (_b_in, mut b_out) = sb.stream(&b, Some("127.0.0.1:5353".parse().unwrap())).unwrap();
        assert_eq!(b_out.check_send(), 16);
        let n = b_out
            .send(&b, vec![(b"one".to_vec(), None), (b"two".to_vec(), None)])
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            b_out.send(&b, vec![(b"x".to_vec(), Some("127.0.0.1:9".parse().unwrap()))]),
            Err(NetError::InvalidArgument)
        );
        let got = a_in.receive(10).unwrap();
        let from_port = sb.local_address().unwrap().port();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b"one");
        assert_eq!(got[1].1, SocketAddr::new(loopback(false), from_port));
        assert!(a_in.receive(10).unwrap().is_empty());
        assert_eq!(
            b_out.send(&b, vec![(vec![0; MAX_DATAGRAM_SIZE + 1], None)]),
            Err(NetError::DatagramTooLarge)
        );
        // The receiver's container exits: its port is free and sends are dropped.
        drop(a);
        b_out.send(&b, vec![(b"lost".to_vec(), None)]).unwrap();
        assert_eq!(a_in.receive(1).err(), Some(NetError::Detached));
    }

    fn bound(net: &ContainerNet, addr: &str) -> VUdpSocket {
        let mut s = VUdpSocket::new(net, addr.starts_with('[')).unwrap();
        s.start_bind(net, addr.parse().unwrap()).unwrap();
        s.finish_bind().unwrap();
        s
    }

    #[test]
    fn wildcard_reads_as_loopback_while_connected() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        for (any, lo) in [("0.0.0.0:0", "127.0.0.1"), ("[::]:0", "::1")] {
            let mut s = bound(&a, any);
            let port = s.local_address().unwrap().port();
            let remote = if lo == "::1" { "[::1]:9" } else { "127.0.0.1:9" };
            drop(s.stream(&a, Some(remote.parse().unwrap())).unwrap());
            assert_eq!(s.local_address().unwrap(), SocketAddr::new(lo.parse().unwrap(), port));
            drop(s.stream(&a, None).unwrap());
            assert_eq!(
                s.local_address().unwrap(),
                any.replace(":0", &format!(":{port}")).parse().unwrap()
            );
        }
    }

    #[test]
    fn connected_send_to_nobody_is_refused_on_the_next_receive() {
        let pod = PodNetwork::new();
        let a = pod.attach("a");
        let mut connected = bound(&a, "127.0.0.1:0");
        let (mut c_in, mut c_out) = connected.stream(&a, Some("127.0.0.1:4999".parse().unwrap())).unwrap();
        c_out.check_send();
        assert_eq!(c_out.send(&a, vec![(b"x".to_vec(), None)]), Ok(1));
        assert_eq!(c_in.receive(1).err(), Some(NetError::ConnectionRefused));
        assert_eq!(c_in.receive(1), Ok(vec![])); // reported once
        // Unconnected: silently dropped, as before.
        let mut loose = bound(&a, "127.0.0.1:0");
        let (mut l_in, mut l_out) = loose.stream(&a, None).unwrap();
        l_out.check_send();
        let to = Some("127.0.0.1:4999".parse().unwrap());
        assert_eq!(l_out.send(&a, vec![(b"x".to_vec(), to)]), Ok(1));
        assert_eq!(l_in.receive(1), Ok(vec![]));
    }

    #[test]
    fn inbox_bytes_are_charged_to_the_receiver() {
        let pod = PodNetwork::new();
        let limits = crate::net::SocketLimits {
            max_buffered_bytes: 1000,
            max_sockets: 8,
        };
        let rx = pod.attach_limited(
            "rx",
            crate::net::EgressPolicy::deny_all(),
            None,
            crate::resources::MemoryAccount::new(None),
            limits,
        );
        let tx = pod.attach("tx");
        let mut r = bound(&rx, "127.0.0.1:6000");
        let (mut r_in, _r_out) = r.stream(&rx, None).unwrap();
        let mut s = bound(&tx, "127.0.0.1:0");
        let (_s_in, mut s_out) = s.stream(&tx, Some("127.0.0.1:6000".parse().unwrap())).unwrap();
        for _ in 0..20 {
            s_out.check_send();
            s_out.send(&tx, vec![(vec![1u8; 100], None)]).unwrap();
        }
        // 100 bytes + overhead each: only what fits in 1000 is queued, the rest dropped.
        assert_eq!(rx.buffered_bytes(), 6 * (100 + DATAGRAM_OVERHEAD) as u64);
        assert_eq!(tx.buffered_bytes(), 0);
        assert_eq!(r_in.receive(16).unwrap().len(), 6);
        assert_eq!(rx.buffered_bytes(), 0);
        s_out.check_send();
        s_out.send(&tx, vec![(vec![1u8; 100], None)]).unwrap();
        assert!(rx.buffered_bytes() > 0);
        drop(rx); // exit: the port and its inbox go
        assert_eq!(pod.buffered_bytes(), 0);
    }
}
