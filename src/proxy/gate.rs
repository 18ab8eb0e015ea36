//! The gate every client of a host listener passes: the connection limits of [`ProxyLimits`],
//! shared by a pod's front proxy and the edge host's doors (its shared HTTP entrance and its
//! `[expose] host_port` listeners), so the limits are written once.
//!
//! It owns the listen socket's backlog, the cap on open connections (at the cap it stops
//! accepting: new clients wait in the kernel's listen backlog instead of being reset), the
//! per-client-address cap, the reports of what it held back or refused ([`Reporter`]), and the
//! HTTP connection settings that close slow or idle clients (first-byte wait, header-read and
//! keep-alive timeouts, maximum head size). What an admitted connection is used for is the
//! caller's.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::ProxyLimits;
use super::report::{Refusal, Reporter, count};
use super::slow_client;
use crate::status::Events;

/// While at the limit, how often the accept loop looks whether clients wait in the backlog.
const BACKLOG_CHECK: Duration = Duration::from_millis(100);

/// The limits of one listener, with their reporter. Cheap to share; [`Gate::run`] serves it.
pub(crate) struct Gate {
    /// What the reports call this door ("front proxy", "shared entrance").
    name: &'static str,
    limits: ProxyLimits,
    reporter: Arc<Reporter>,
    addresses: Option<Arc<AddressTable>>,
    stop: CancellationToken,
}

impl Gate {
    /// A gate reporting to `events` until `stop` is cancelled.
    pub(crate) fn new(name: &'static str, limits: ProxyLimits, events: Events, stop: CancellationToken) -> Arc<Gate> {
        let reporter = Arc::new(Reporter::new(name, events, limits.report_interval));
        tokio::spawn(reporter.clone().run(stop.clone()));
        Arc::new(Gate {
            name,
            limits,
            reporter,
            addresses: (limits.max_connections_per_address > 0).then(|| {
                Arc::new(AddressTable {
                    cap: limits.max_connections_per_address,
                    open: Mutex::new(HashMap::new()),
                })
            }),
            stop,
        })
    }

    pub(crate) fn limits(&self) -> &ProxyLimits {
        &self.limits
    }

    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    pub(super) fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Accepts from `listener` until the gate stops, handing each admitted client to `handle`
    /// in its own task; the client's slots are held until that task ends.
    pub(crate) async fn run<H, F>(self: Arc<Self>, listener: TcpListener, handle: H)
    where
        H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
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
            let name = self.name;
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection failures (e.g. the client reset before accept) are not
                    // fatal; back off briefly on resource exhaustion so the loop cannot spin.
                    self.reporter.record(
                        Refusal::AcceptFailed,
                        || format!("{name} accept failed: {e}"),
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
                            "{name} at its limit of {} open connections: {peer} waited in the listen backlog",
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
                                    "{name} refused {peer}: {} connections already open from {}",
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
            let _ = client.set_nodelay(true);
            let served = handle(client, peer);
            tokio::spawn(async move {
                let _slots = (slot, address_slot);
                served.await;
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
                        let name = self.name;
                        self.reporter.notice(Refusal::AtLimit, || {
                            format!(
                                "{name} at its limit of {} open connections: {} new {} waiting in the listen backlog (room for {})",
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

    /// Readies an admitted client for HTTP: waits for its first byte (hyper allocates its read
    /// and write buffers, 8 KiB each, as soon as it serves a connection, so a client that sent
    /// nothing yet costs only its socket and task; silence counts against the keep-alive
    /// timeout), then gives the stream watched by the slow-client guard and the connection
    /// settings that apply the header-read and keep-alive timeouts and the maximum head size.
    /// `None` when the client sent nothing in time or the gate stopped.
    pub(crate) async fn http(
        &self,
        client: TcpStream,
    ) -> Option<(slow_client::Watched<TcpStream>, hyper::server::conn::http1::Builder)> {
        let first_byte = tokio::time::timeout(self.limits.keep_alive_timeout, client.readable());
        tokio::select! {
            () = self.stop.cancelled() => return None,
            readable = first_byte => if !matches!(readable, Ok(Ok(()))) { return None },
        }
        let guard = slow_client::Guard::new(self.limits.header_read_timeout, self.limits.keep_alive_timeout);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            // No `pipeline_flush`: with it hyper 1.12 drops the 431 it writes for an oversized
            // head (the connection closes with the answer unflushed).
            .timer(guard.timer())
            .header_read_timeout(self.limits.header_read_timeout)
            // A head this large gets 431 and the connection closes.
            .max_header_size(self.limits.max_header_bytes.max(1));
        Some((guard.watch(client), builder))
    }
}

/// Binds with our own backlog (tokio's `TcpListener::bind` fixes it at 1024).
pub(crate) fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
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
