//! WASI 0.2 glue: implements wasmtime-wasi's generated `wasi:sockets` host traits
//! (`tcp`, `tcp-create-socket`, `udp`, `udp-create-socket`, `ip-name-lookup`) on top of the pod network core, and
//! registers them over wasmtime-wasi's own OS-socket implementation (linker shadowing).
//!
//! Why shadowing works: the generated traits name the resource types wasmtime-wasi chose
//! (`wasmtime_wasi::p2::TcpSocket`, `ResolveAddressStream`), but a `Resource<T>` is only a
//! typed index into the `ResourceTable`. We store *our* objects at those indices and convert
//! handles in [`as_vsock`]/[`as_vresolve`]; the table's typed access checks the real type, so a
//! mix-up becomes a trap, never memory unsafety. The WIT seen by guests is wasmtime-wasi's own,
//! so versions always match. `network`, `instance-network` and `wasi:io` stay wasmtime-wasi's.
//!
//! This file holds no socket semantics; those live in `tcp.rs`, `lookup.rs` and `mod.rs`.

use super::lookup::{self, Resolution};
use super::tcp::{Family, VTcpSocket};
use super::udp::{UdpIncoming, UdpOutgoing, VUdpSocket};
use super::{ContainerNet, NetError};
use crate::counters::{ContainerCounters, Peer};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::oneshot;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::UdpSocket;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, ShutdownType};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::bindings::sockets::udp::{self, IncomingDatagramStream, OutgoingDatagramStream};
use wasmtime_wasi::p2::bindings::sockets::udp_create_socket;
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket};
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, InputStream, OutputStream, StreamResult};

/// What the socket host functions borrow from a container's Store data.
pub struct NetCtxView<'a> {
    /// The same table wasmtime-wasi uses, so streams and pollables interoperate.
    pub table: &'a mut ResourceTable,
    pub net: &'a ContainerNet,
}

/// Implemented by the container's Store data to expose its table and network attachment.
pub trait NetView: Send {
    fn net_view(&mut self) -> NetCtxView<'_>;
}

/// `HasData` marker for the generated `add_to_linker` functions.
struct VNet;

impl HasData for VNet {
    type Data<'a> = NetCtxView<'a>;
}

/// Replaces wasmtime-wasi's `wasi:sockets/{tcp, tcp-create-socket, ip-name-lookup}` with the
/// pod network. Call after `wasmtime_wasi::p2::add_to_linker_async(linker)`. Leaves the
/// linker's shadowing flag off afterwards.
pub fn add_to_linker<T: wasmtime_wasi::WasiView + NetView + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let res = add_all(linker);
    linker.allow_shadowing(false);
    res.map_err(|e| anyhow::anyhow!("registering the pod network's wasi:sockets: {e}"))
}

fn add_all<T: NetView + 'static>(l: &mut Linker<T>) -> wasmtime::Result<()> {
    tcp::add_to_linker::<T, VNet>(l, T::net_view)?;
    tcp_create_socket::add_to_linker::<T, VNet>(l, T::net_view)?;
    ip_name_lookup::add_to_linker::<T, VNet>(l, T::net_view)?;
    udp::add_to_linker::<T, VNet>(l, T::net_view)?;
    udp_create_socket::add_to_linker::<T, VNet>(l, T::net_view)?;
    Ok(())
}

/// The one place where wasmtime-wasi's socket handle is reinterpreted as ours (see module doc).
fn as_vsock(r: &Resource<TcpSocket>) -> Resource<VTcpSocket> {
    if r.owned() {
        Resource::new_own(r.rep())
    } else {
        Resource::new_borrow(r.rep())
    }
}

/// The reverse of [`as_vsock`], for handles we create.
fn as_wasi_sock(r: Resource<VTcpSocket>) -> Resource<TcpSocket> {
    if r.owned() {
        Resource::new_own(r.rep())
    } else {
        Resource::new_borrow(r.rep())
    }
}

/// Reinterprets a handle of wasmtime-wasi's type `W` as ours, `V` (see module doc); used for
/// the UDP resources, which come in three kinds.
fn retype<W: 'static, V: 'static>(r: &Resource<W>) -> Resource<V> {
    if r.owned() {
        Resource::new_own(r.rep())
    } else {
        Resource::new_borrow(r.rep())
    }
}

/// Our resolve-address stream: a queue of answers, or a host lookup still in flight.
enum VResolveStream {
    Ready(Result<VecDeque<IpAddr>, NetError>),
    Pending(oneshot::Receiver<Result<Vec<IpAddr>, NetError>>),
}

impl VResolveStream {
    /// Runs a host lookup on a task, so `resolve-addresses` itself never waits.
    fn spawn(future: impl Future<Output = Result<Vec<IpAddr>, NetError>> + Send + 'static) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self::Ready(Err(NetError::NameUnresolvable));
        };
        let (tx, rx) = oneshot::channel();
        runtime.spawn(async move {
            let mut tx = tx;
            // A guest that drops the stream cancels the lookup.
            tokio::select! {
                _ = tx.closed() => {}
                r = future => { let _ = tx.send(r); }
            }
        });
        Self::Pending(rx)
    }

    fn settle(&mut self, outcome: Result<Result<Vec<IpAddr>, NetError>, oneshot::error::RecvError>) {
        let outcome = outcome.unwrap_or(Err(NetError::NameUnresolvable));
        *self = Self::Ready(outcome.map(VecDeque::from));
    }

    /// The next address, `None` at the end, or `would-block` while the lookup runs.
    fn next(&mut self) -> Result<Option<IpAddr>, NetError> {
        if let Self::Pending(rx) = self {
            match rx.try_recv() {
                Ok(outcome) => self.settle(Ok(outcome)),
                Err(oneshot::error::TryRecvError::Empty) => return Err(NetError::WouldBlock),
                Err(oneshot::error::TryRecvError::Closed) => *self = Self::Ready(Err(NetError::NameUnresolvable)),
            }
        }
        match self {
            Self::Ready(Ok(addrs)) => Ok(addrs.pop_front()),
            // Reported once, like wasmtime; afterwards the stream is simply exhausted.
            Self::Ready(Err(e)) => {
                let e = *e;
                *self = Self::Ready(Ok(VecDeque::new()));
                Err(e)
            }
            Self::Pending(_) => Err(NetError::WouldBlock),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for VResolveStream {
    async fn ready(&mut self) {
        if let Self::Pending(rx) = self {
            // Cancel-safe: dropping this future leaves the answer in the channel.
            let outcome = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *rx).poll(cx)).await;
            self.settle(outcome);
        }
    }
}

fn as_vresolve(r: &Resource<ResolveAddressStream>) -> Resource<VResolveStream> {
    if r.owned() {
        Resource::new_own(r.rep())
    } else {
        Resource::new_borrow(r.rep())
    }
}

impl From<NetError> for ErrorCode {
    fn from(e: NetError) -> Self {
        match e {
            NetError::AccessDenied | NetError::Detached => ErrorCode::AccessDenied,
            NetError::NotSupported => ErrorCode::NotSupported,
            NetError::InvalidArgument => ErrorCode::InvalidArgument,
            NetError::InvalidState => ErrorCode::InvalidState,
            NetError::ConcurrencyConflict => ErrorCode::ConcurrencyConflict,
            NetError::NotInProgress => ErrorCode::NotInProgress,
            NetError::WouldBlock => ErrorCode::WouldBlock,
            NetError::AddressNotBindable => ErrorCode::AddressNotBindable,
            NetError::AddressInUse => ErrorCode::AddressInUse,
            NetError::RemoteUnreachable => ErrorCode::RemoteUnreachable,
            NetError::ConnectionRefused => ErrorCode::ConnectionRefused,
            NetError::ConnectionReset => ErrorCode::ConnectionReset,
            NetError::ConnectionAborted => ErrorCode::ConnectionAborted,
            NetError::NameUnresolvable => ErrorCode::NameUnresolvable,
            NetError::Timeout => ErrorCode::Timeout,
            NetError::DatagramTooLarge => ErrorCode::DatagramTooLarge,
            NetError::SocketLimit => ErrorCode::NewSocketLimit,
        }
    }
}

fn err(e: NetError) -> SocketError {
    ErrorCode::from(e).into()
}

fn family_of(f: IpAddressFamily) -> Family {
    match f {
        IpAddressFamily::Ipv4 => Family::V4,
        IpAddressFamily::Ipv6 => Family::V6,
    }
}

impl NetCtxView<'_> {
    fn sock(&mut self, r: &Resource<TcpSocket>) -> SocketResult<&mut VTcpSocket> {
        Ok(self.table.get_mut(&as_vsock(r))?)
    }

    /// The `network` handle is the capability to use the network; only its validity matters.
    fn check_network(&self, n: &Resource<Network>) -> SocketResult<()> {
        self.table.get(n)?;
        Ok(())
    }

    /// Pushes a connection's streams as children of the socket (so the guest must drop them
    /// before the socket, as with wasmtime's own sockets).
    /// Streams of a container with counters count their bytes (see [`Counted`]).
    fn push_streams(
        &mut self,
        parent: &Resource<VTcpSocket>,
        rx: super::pipe::PipeReader,
        tx: super::pipe::PipeWriter,
        peer: Peer,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let (input, output): (DynInputStream, DynOutputStream) = match self.net.counters() {
            Some(counters) => (
                Box::new(Counted {
                    stream: rx,
                    counters: counters.clone(),
                    peer,
                }),
                Box::new(Counted {
                    stream: tx,
                    counters: counters.clone(),
                    peer,
                }),
            ),
            None => (Box::new(rx), Box::new(tx)),
        };
        let input = self.table.push_child(input, parent)?;
        let output = self.table.push_child(output, parent)?;
        Ok((input, output))
    }
}

// The generated socket traits have `network::Host` as a supertrait. These impls only satisfy
// that bound: the `network` interface itself stays registered by wasmtime-wasi, and these
// behave exactly like wasmtime-wasi's (an error resource carrying an `io::Error` maps to
// its code, which is how guests learn `connection-reset` from a failed stream read).
impl network::Host for NetCtxView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(&mut self, error: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        let error = self.table.get(&error)?;
        Ok(error.downcast_ref::<std::io::Error>().map(ErrorCode::from))
    }
}

impl network::HostNetwork for NetCtxView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl tcp_create_socket::Host for NetCtxView<'_> {
    fn create_tcp_socket(&mut self, address_family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        let sock = VTcpSocket::new(self.net, family_of(address_family)).map_err(err)?;
        let r = self.table.push(sock)?;
        Ok(as_wasi_sock(r))
    }
}

impl tcp::Host for NetCtxView<'_> {}

impl tcp::HostTcpSocket for NetCtxView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        self.check_network(&network)?;
        let net = self.net;
        self.sock(&this)?
            .start_bind(net, SocketAddr::from(local_address))
            .map_err(err)
    }

    fn finish_bind(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        self.sock(&this)?.finish_bind().map_err(err)
    }

    fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        remote_address: IpSocketAddress,
    ) -> SocketResult<()> {
        self.check_network(&network)?;
        let net = self.net;
        self.sock(&this)?
            .start_connect(net, SocketAddr::from(remote_address))
            .map_err(err)
    }

    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let sock = self.sock(&this)?;
        let (rx, tx) = sock.finish_connect().map_err(err)?;
        // Connected: the remote address is known, and says whether the peer is in the pod.
        let peer = match sock.remote_address() {
            Ok(remote) if !super::is_pod_address(remote.ip()) => Peer::Egress,
            _ => Peer::Pod,
        };
        self.push_streams(&as_vsock(&this), rx, tx, peer)
    }

    async fn start_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        let net = self.net;
        self.sock(&this)?.start_listen(net).map_err(err)
    }

    fn finish_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        self.sock(&this)?.finish_listen().map_err(err)
    }

    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(Resource<TcpSocket>, Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let net = self.net;
        let (sock, rx, tx) = self.sock(&this)?.accept(net).map_err(err)?;
        let sock = self.table.push(sock)?;
        // Only the pod's own network reaches a listener (the front proxy forwards into it).
        let (input, output) = self.push_streams(&sock, rx, tx, Peer::Pod)?;
        Ok((as_wasi_sock(sock), input, output))
    }

    fn local_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        Ok(self.sock(&this)?.local_address().map_err(err)?.into())
    }

    fn remote_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        Ok(self.sock(&this)?.remote_address().map_err(err)?.into())
    }

    fn is_listening(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&as_vsock(&this))?.is_listening())
    }

    fn address_family(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<IpAddressFamily> {
        Ok(match self.table.get(&as_vsock(&this))?.address_family() {
            Family::V4 => IpAddressFamily::Ipv4,
            Family::V6 => IpAddressFamily::Ipv6,
        })
    }

    fn set_listen_backlog_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.sock(&this)?.set_listen_backlog_size(value).map_err(err)
    }

    fn keep_alive_enabled(&mut self, this: Resource<TcpSocket>) -> SocketResult<bool> {
        self.sock(&this)?.keep_alive_enabled().map_err(err)
    }

    fn set_keep_alive_enabled(&mut self, this: Resource<TcpSocket>, value: bool) -> SocketResult<()> {
        self.sock(&this)?.set_keep_alive_enabled(value).map_err(err)
    }

    fn keep_alive_idle_time(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.sock(&this)?.keep_alive_idle_time().map_err(err)
    }

    fn set_keep_alive_idle_time(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.sock(&this)?.set_keep_alive_idle_time(value).map_err(err)
    }

    fn keep_alive_interval(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.sock(&this)?.keep_alive_interval().map_err(err)
    }

    fn set_keep_alive_interval(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.sock(&this)?.set_keep_alive_interval(value).map_err(err)
    }

    fn keep_alive_count(&mut self, this: Resource<TcpSocket>) -> SocketResult<u32> {
        self.sock(&this)?.keep_alive_count().map_err(err)
    }

    fn set_keep_alive_count(&mut self, this: Resource<TcpSocket>, value: u32) -> SocketResult<()> {
        self.sock(&this)?.set_keep_alive_count(value).map_err(err)
    }

    fn hop_limit(&mut self, this: Resource<TcpSocket>) -> SocketResult<u8> {
        self.sock(&this)?.hop_limit().map_err(err)
    }

    fn set_hop_limit(&mut self, this: Resource<TcpSocket>, value: u8) -> SocketResult<()> {
        self.sock(&this)?.set_hop_limit(value).map_err(err)
    }

    fn receive_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.sock(&this)?.receive_buffer_size().map_err(err)
    }

    fn set_receive_buffer_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.sock(&this)?.set_receive_buffer_size(value).map_err(err)
    }

    fn send_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        self.sock(&this)?.send_buffer_size().map_err(err)
    }

    fn set_send_buffer_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.sock(&this)?.set_send_buffer_size(value).map_err(err)
    }

    fn subscribe(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, as_vsock(&this))
    }

    fn shutdown(&mut self, this: Resource<TcpSocket>, how: ShutdownType) -> SocketResult<()> {
        let (receive, send) = match how {
            ShutdownType::Receive => (true, false),
            ShutdownType::Send => (false, true),
            ShutdownType::Both => (true, true),
        };
        self.sock(&this)?.shutdown(receive, send).map_err(err)
    }

    fn drop(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<()> {
        // Dropping the socket releases its port lease; its streams were already dropped
        // (they are children, so the table refuses otherwise).
        self.table.delete(as_vsock(&this))?;
        Ok(())
    }
}

impl ip_name_lookup::Host for NetCtxView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        self.check_network(&network)?;
        // Bad input fails the call itself; a refused or unknown name is reported by the
        // stream, as wasmtime does, so guests see the same sequence either way.
        let stream = match lookup::resolve(self.net, &name) {
            Err(NetError::InvalidArgument) => return Err(err(NetError::InvalidArgument)),
            Err(e) => VResolveStream::Ready(Err(e)),
            Ok(Resolution::Addresses(a)) => VResolveStream::Ready(Ok(a.into())),
            Ok(Resolution::Host(name)) => VResolveStream::spawn(lookup::resolve_host(self.net, name)),
        };
        let r = self.table.push(stream)?;
        Ok(Resource::new_own(r.rep()))
    }
}

impl ip_name_lookup::HostResolveAddressStream for NetCtxView<'_> {
    fn resolve_next_address(&mut self, this: Resource<ResolveAddressStream>) -> SocketResult<Option<IpAddress>> {
        let s = self.table.get_mut(&as_vresolve(&this))?;
        Ok(s.next().map_err(err)?.map(IpAddress::from))
    }

    fn subscribe(&mut self, this: Resource<ResolveAddressStream>) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, as_vresolve(&this))
    }

    fn drop(&mut self, this: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.table.delete(as_vresolve(&this))?;
        Ok(())
    }
}

impl udp_create_socket::Host for NetCtxView<'_> {
    async fn create_udp_socket(&mut self, address_family: IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        let v6 = matches!(address_family, IpAddressFamily::Ipv6);
        let sock = VUdpSocket::new(self.net, v6).map_err(err)?;
        let r = self.table.push(sock)?;
        Ok(retype(&r))
    }
}

impl udp::Host for NetCtxView<'_> {}

impl NetCtxView<'_> {
    fn udp(&mut self, r: &Resource<UdpSocket>) -> SocketResult<&mut VUdpSocket> {
        Ok(self.table.get_mut(&retype::<_, VUdpSocket>(r))?)
    }
}

impl udp::HostUdpSocket for NetCtxView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<UdpSocket>,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        self.check_network(&network)?;
        let net = self.net;
        self.udp(&this)?
            .start_bind(net, SocketAddr::from(local_address))
            .map_err(err)
    }

    fn finish_bind(&mut self, this: Resource<UdpSocket>) -> SocketResult<()> {
        self.udp(&this)?.finish_bind().map_err(err)
    }

    async fn stream(
        &mut self,
        this: Resource<UdpSocket>,
        remote_address: Option<IpSocketAddress>,
    ) -> SocketResult<(Resource<IncomingDatagramStream>, Resource<OutgoingDatagramStream>)> {
        let parent = retype::<_, VUdpSocket>(&this);
        // As in wasmtime: the previous streams must be gone before new ones are made.
        let busy = self
            .table
            .iter_children(&parent)?
            .any(|c| c.is::<UdpIncoming>() || c.is::<UdpOutgoing>());
        if busy {
            return Err(SocketError::trap(wasmtime::format_err!("UDP streams not dropped yet")));
        }
        let net = self.net;
        let (incoming, outgoing) = self
            .udp(&this)?
            .stream(net, remote_address.map(SocketAddr::from))
            .map_err(err)?;
        let incoming = self.table.push_child(incoming, &parent)?;
        let outgoing = self.table.push_child(outgoing, &parent)?;
        Ok((retype(&incoming), retype(&outgoing)))
    }

    fn local_address(&mut self, this: Resource<UdpSocket>) -> SocketResult<IpSocketAddress> {
        Ok(self.udp(&this)?.local_address().map_err(err)?.into())
    }

    fn remote_address(&mut self, this: Resource<UdpSocket>) -> SocketResult<IpSocketAddress> {
        Ok(self.udp(&this)?.remote_address().map_err(err)?.into())
    }

    fn address_family(&mut self, this: Resource<UdpSocket>) -> wasmtime::Result<IpAddressFamily> {
        let s = self.table.get(&retype::<_, VUdpSocket>(&this))?;
        Ok(if s.is_v6() {
            IpAddressFamily::Ipv6
        } else {
            IpAddressFamily::Ipv4
        })
    }

    fn unicast_hop_limit(&mut self, this: Resource<UdpSocket>) -> SocketResult<u8> {
        Ok(self.udp(&this)?.unicast_hop_limit())
    }

    fn set_unicast_hop_limit(&mut self, this: Resource<UdpSocket>, value: u8) -> SocketResult<()> {
        self.udp(&this)?.set_unicast_hop_limit(value).map_err(err)
    }

    fn receive_buffer_size(&mut self, this: Resource<UdpSocket>) -> SocketResult<u64> {
        Ok(self.udp(&this)?.receive_buffer_size())
    }

    fn set_receive_buffer_size(&mut self, this: Resource<UdpSocket>, value: u64) -> SocketResult<()> {
        self.udp(&this)?.set_receive_buffer_size(value).map_err(err)
    }

    fn send_buffer_size(&mut self, this: Resource<UdpSocket>) -> SocketResult<u64> {
        Ok(self.udp(&this)?.send_buffer_size())
    }

    fn set_send_buffer_size(&mut self, this: Resource<UdpSocket>, value: u64) -> SocketResult<()> {
        self.udp(&this)?.set_send_buffer_size(value).map_err(err)
    }

    fn subscribe(&mut self, this: Resource<UdpSocket>) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, retype::<_, VUdpSocket>(&this))
    }

    fn drop(&mut self, this: Resource<UdpSocket>) -> wasmtime::Result<()> {
        self.table.delete(retype::<_, VUdpSocket>(&this))?;
        Ok(())
    }
}

impl udp::HostIncomingDatagramStream for NetCtxView<'_> {
    fn receive(
        &mut self,
        this: Resource<IncomingDatagramStream>,
        max_results: u64,
    ) -> SocketResult<Vec<udp::IncomingDatagram>> {
        let s = self.table.get_mut(&retype::<_, UdpIncoming>(&this))?;
        let got = s.receive(max_results).map_err(err)?;
        if let Some(counters) = self.net.counters() {
            // UDP never leaves the pod.
            counters.record_received(Peer::Pod, got.iter().map(|(data, _)| data.len()).sum());
        }
        Ok(got
            .into_iter()
            .map(|(data, from)| udp::IncomingDatagram {
                data,
                remote_address: from.into(),
            })
            .collect())
    }

    fn subscribe(&mut self, this: Resource<IncomingDatagramStream>) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, retype::<_, UdpIncoming>(&this))
    }

    fn drop(&mut self, this: Resource<IncomingDatagramStream>) -> wasmtime::Result<()> {
        self.table.delete(retype::<_, UdpIncoming>(&this))?;
        Ok(())
    }
}

impl udp::HostOutgoingDatagramStream for NetCtxView<'_> {
    fn check_send(&mut self, this: Resource<OutgoingDatagramStream>) -> SocketResult<u64> {
        Ok(self.table.get_mut(&retype::<_, UdpOutgoing>(&this))?.check_send())
    }

    fn send(
        &mut self,
        this: Resource<OutgoingDatagramStream>,
        datagrams: Vec<udp::OutgoingDatagram>,
    ) -> SocketResult<u64> {
        let net = self.net;
        let s = self.table.get_mut(&retype::<_, UdpOutgoing>(&this))?;
        if datagrams.is_empty() {
            return Ok(0);
        }
        if datagrams.len() > s.permit() {
            return Err(SocketError::trap(wasmtime::format_err!(
                "unpermitted: argument exceeds permitted size"
            )));
        }
        // What each datagram weighs, for the ones that get sent (UDP never leaves the pod).
        let lengths: Option<Vec<usize>> = net.counters().map(|_| datagrams.iter().map(|d| d.data.len()).collect());
        let datagrams = datagrams
            .into_iter()
            .map(|d| (d.data, d.remote_address.map(SocketAddr::from)))
            .collect();
        let sent = s.send(net, datagrams).map_err(err)?;
        if let (Some(counters), Some(lengths)) = (net.counters(), lengths) {
            let count = usize::try_from(sent).unwrap_or(usize::MAX);
            counters.record_sent(Peer::Pod, lengths.iter().take(count).sum());
        }
        Ok(sent)
    }

    fn subscribe(&mut self, this: Resource<OutgoingDatagramStream>) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, retype::<_, UdpOutgoing>(&this))
    }

    async fn drop(&mut self, this: Resource<OutgoingDatagramStream>) -> wasmtime::Result<()> {
        // Sends complete synchronously, so there is nothing to wait for.
        self.table.delete(retype::<_, UdpOutgoing>(&this))?;
        Ok(())
    }
}

/// A connection's stream that counts the bytes the guest reads or writes through it into its
/// container's counters: one relaxed add per successful call, nothing else added.
struct Counted<S> {
    stream: S,
    counters: std::sync::Arc<ContainerCounters>,
    peer: Peer,
}

#[async_trait::async_trait]
impl<S: Pollable> Pollable for Counted<S> {
    async fn ready(&mut self) {
        self.stream.ready().await
    }
}

#[async_trait::async_trait]
impl<S: InputStream> InputStream for Counted<S> {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let bytes = self.stream.read(size)?;
        self.counters.record_received(self.peer, bytes.len());
        Ok(bytes)
    }
}

#[async_trait::async_trait]
impl<S: OutputStream> OutputStream for Counted<S> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len();
        self.stream.write(bytes)?;
        self.counters.record_sent(self.peer, len);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.stream.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.stream.check_write()
    }

    /// The inner stream's own (a pipe has a cheaper one than the default); bytes are counted
    /// when it succeeds.
    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len();
        self.stream.blocking_write_and_flush(bytes).await?;
        self.counters.record_sent(self.peer, len);
        Ok(())
    }
}
