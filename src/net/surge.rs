//! The surge of a command container that listens: its new version starts beside the old one
//! and binds the same pod ports, and the pod network hands *new* connections to the new
//! listener once the supervisor says it is ready, while the old instance keeps the connections
//! it already has until they close.
//!
//! This module owns that exception to "a port has one holder": while a surge of container `C`
//! is open ([`PodNetwork::begin_surge`]), a TCP bind by an instance of `C` attached after the
//! surge began, on a port held by an older instance of `C`, succeeds and makes a *second*
//! entry on the port. Anything else binding a taken port — another container, the host side,
//! the old instance itself — still gets address-in-use, as on any host. The second entry
//! receives nothing until [`PodNetwork::hand_over`] swaps it with the first: from then on new
//! connections reach the new version, and the old listener stays as the port's *retired*
//! second entry (its queued connections can still be accepted) until the old instance releases
//! it. If the old instance releases the port before the hand-over, the new listener takes the
//! port at once. It does not own when a surge starts, is ready or fails (the supervisor's).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use super::{ConnRegistry, NetError, NetState, Owner, PodNetwork, PodStream, PortEntry, PortKind, Proto};

/// The surge bookkeeping of one pod network (inside its lock).
#[derive(Default)]
pub(super) struct Surges {
    /// Containers (lowercase names) whose new version may bind beside the old one.
    open: HashSet<String>,
    /// Every live container attachment, by owner id.
    attachments: HashMap<u64, Attachment>,
    /// The second entry of a TCP port, by port.
    second: HashMap<u16, Second>,
}

struct Attachment {
    /// The container's name, lowercase.
    container: String,
    /// Attached while a surge of its container was open: an instance of the new version.
    new_version: bool,
    /// Its connections, to tell when an old instance has none left.
    conns: Weak<Mutex<ConnRegistry>>,
}

struct Second {
    entry: PortEntry,
    role: Role,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The new version's, before the hand-over: it receives nothing yet.
    Waiting,
    /// The old version's, after the hand-over: it receives nothing any more.
    Retired,
}

impl Surges {
    /// Records a new attachment of `container`.
    pub(super) fn attached(&mut self, owner: u64, container: &str, conns: &Arc<Mutex<ConnRegistry>>) {
        let container = container.to_ascii_lowercase();
        let new_version = self.open.contains(&container);
        self.attachments.insert(
            owner,
            Attachment {
                container,
                new_version,
                conns: Arc::downgrade(conns),
            },
        );
    }

    fn attachment(&self, owner: Owner) -> Option<&Attachment> {
        match owner {
            Owner::Container(id) => self.attachments.get(&id),
            Owner::Host => None,
        }
    }
}

impl NetState {
    /// A second lease on taken TCP `port` for `owner`, if it is the new version of the
    /// container holding the port during that container's surge; `None`: address-in-use.
    pub(super) fn lease_beside(&mut self, proto: Proto, port: u16, owner: Owner) -> Option<u64> {
        if proto != Proto::Tcp || self.surge.second.contains_key(&port) {
            return None;
        }
        let holder = self.ports.get(&(proto, port))?.owner;
        let (Some(new), Some(old)) = (self.surge.attachment(owner), self.surge.attachment(holder)) else {
            return None;
        };
        if !new.new_version
            || old.new_version
            || new.container != old.container
            || !self.surge.open.contains(&new.container)
        {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let entry = PortEntry {
            lease: id,
            owner,
            kind: PortKind::Bound,
        };
        self.surge.second.insert(
            port,
            Second {
                entry,
                role: Role::Waiting,
            },
        );
        Some(id)
    }

    /// The TCP entry of lease `id` on `port`, first or second.
    pub(super) fn entry_mut(&mut self, port: u16, id: u64) -> Option<&mut PortEntry> {
        if self.ports.get(&(Proto::Tcp, port)).is_some_and(|e| e.lease == id) {
            return self.ports.get_mut(&(Proto::Tcp, port));
        }
        self.surge
            .second
            .get_mut(&port)
            .map(|second| &mut second.entry)
            .filter(|entry| entry.lease == id)
    }

    /// Takes lease `id`'s entry out of the namespace (the caller closes it). When the first
    /// entry of a port goes while a new version waits beside it, the new one takes the port.
    pub(super) fn remove_entry(&mut self, proto: Proto, port: u16, id: u64) -> Option<PortEntry> {
        if self.ports.get(&(proto, port)).is_some_and(|e| e.lease == id) {
            let removed = self.ports.remove(&(proto, port));
            if proto == Proto::Tcp
                && self.surge.second.get(&port).is_some_and(|s| s.role == Role::Waiting)
                && let Some(second) = self.surge.second.remove(&port)
            {
                self.ports.insert((proto, port), second.entry);
            }
            return removed;
        }
        if proto == Proto::Tcp && self.surge.second.get(&port).is_some_and(|s| s.entry.lease == id) {
            return self.surge.second.remove(&port).map(|second| second.entry);
        }
        None
    }

    /// Takes every entry of `owner` out of the namespace and forgets the attachment.
    pub(super) fn remove_owner(&mut self, owner: Owner) -> Vec<PortEntry> {
        let keys: Vec<(Proto, u16, u64)> = self
            .ports
            .iter()
            .filter(|(_, e)| e.owner == owner)
            .map(|(&(proto, port), e)| (proto, port, e.lease))
            .chain(
                self.surge
                    .second
                    .iter()
                    .filter(|(_, s)| s.entry.owner == owner)
                    .map(|(&port, s)| (Proto::Tcp, port, s.entry.lease)),
            )
            .collect();
        if let Owner::Container(id) = owner {
            self.surge.attachments.remove(&id);
        }
        keys.into_iter()
            .filter_map(|(proto, port, id)| self.remove_entry(proto, port, id))
            .collect()
    }

    /// Whether every port of `ports` has a listener of `container`'s new version.
    fn new_version_listens(&self, container: &str, ports: &[u16]) -> bool {
        let is_new = |entry: &PortEntry| {
            matches!(entry.kind, PortKind::Listening(_))
                && self
                    .surge
                    .attachment(entry.owner)
                    .is_some_and(|a| a.new_version && a.container == container)
        };
        ports.iter().all(|port| {
            self.ports.get(&(Proto::Tcp, *port)).is_some_and(is_new)
                || self.surge.second.get(port).is_some_and(|s| is_new(&s.entry))
        })
    }
}

/// An open surge; dropping it closes the surge (see [`PodNetwork::begin_surge`]).
pub(crate) struct Surge {
    net: Arc<PodNetwork>,
    container: String,
}

impl Drop for Surge {
    fn drop(&mut self) {
        let mut st = self.net.lock();
        st.surge.open.remove(&self.container);
        // The new version is now simply the container (or was stopped): a later surge
        // treats it as the old one.
        for attachment in st.surge.attachments.values_mut() {
            if attachment.container == self.container {
                attachment.new_version = false;
            }
        }
    }
}

/// The old version's side of a hand-over: what it still holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retired {
    owners: Vec<u64>,
}

impl PodNetwork {
    /// Opens a surge of `container`: instances of it attached from now on may bind the ports
    /// its running instances hold, as second listeners that receive nothing until
    /// [`PodNetwork::hand_over`]. The surge closes when the returned guard is dropped.
    pub(crate) fn begin_surge(self: &Arc<Self>, container: &str) -> Surge {
        let container = container.to_ascii_lowercase();
        self.lock().surge.open.insert(container.clone());
        Surge {
            net: self.clone(),
            container,
        }
    }

    /// Waits until the new version of `container` listens on every port of `ports`
    /// (combine with a deadline).
    pub(crate) async fn wait_new_version_listening(&self, container: &str, ports: &[u16]) {
        let container = container.to_ascii_lowercase();
        loop {
            let notified = self.listeners_changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a listen in between is not missed.
            notified.as_mut().enable();
            if self.lock().new_version_listens(&container, ports) {
                return;
            }
            notified.await;
        }
    }

    /// Host-side connect to the new version of `container` on `port` before the hand-over
    /// (its readiness probe), or to whatever serves the port when it has no second listener.
    pub(crate) fn connect_new_version(self: &Arc<Self>, container: &str, port: u16) -> Result<PodStream, NetError> {
        let container = container.to_ascii_lowercase();
        let waiting = {
            let st = self.lock();
            st.surge.second.get(&port).and_then(|second| match &second.entry.kind {
                PortKind::Listening(q)
                    if second.role == Role::Waiting
                        && st
                            .surge
                            .attachment(second.entry.owner)
                            .is_some_and(|a| a.container == container) =>
                {
                    Some(q.clone())
                }
                _ => None,
            })
        };
        let Some(queue) = waiting else {
            return self.connect(port);
        };
        let lease = self.lease(0, Owner::Host)?;
        let ep = self.queue_connection(&queue, lease.port(), port, &self.host_budget, None)?;
        Ok(PodStream {
            ep,
            _lease: Some(lease),
        })
    }

    /// New connections to `container`'s ports go to its new version from now on: every
    /// waiting second listener of the container changes places with the first. Returns what
    /// the old version still holds, for [`PodNetwork::open_connections`].
    pub(crate) fn hand_over(&self, container: &str) -> Retired {
        let container = container.to_ascii_lowercase();
        let mut st = self.lock();
        let ports: Vec<u16> = st
            .surge
            .second
            .iter()
            .filter(|(_, s)| {
                s.role == Role::Waiting
                    && st
                        .surge
                        .attachment(s.entry.owner)
                        .is_some_and(|a| a.container == container)
            })
            .map(|(&port, _)| port)
            .collect();
        for port in ports {
            let Some(second) = st.surge.second.remove(&port) else {
                continue;
            };
            if let Some(old) = st.ports.insert((Proto::Tcp, port), second.entry) {
                st.surge.second.insert(
                    port,
                    Second {
                        entry: old,
                        role: Role::Retired,
                    },
                );
            }
        }
        let owners = st
            .surge
            .attachments
            .iter()
            .filter(|(_, a)| a.container == container && !a.new_version)
            .map(|(&id, _)| id)
            .collect();
        Retired { owners }
    }

    /// Connections the old version still has open: accepted or opened by it and not closed by
    /// both ends, plus connections queued on its retired listeners that it has not accepted.
    pub(crate) fn open_connections(&self, retired: &Retired) -> usize {
        let (registries, queued) = {
            let st = self.lock();
            let registries: Vec<Arc<Mutex<ConnRegistry>>> = retired
                .owners
                .iter()
                .filter_map(|id| st.surge.attachments.get(id)?.conns.upgrade())
                .collect();
            let queued: Vec<_> = st
                .surge
                .second
                .values()
                .filter(|s| {
                    s.role == Role::Retired
                        && matches!(s.entry.owner, Owner::Container(id) if retired.owners.contains(&id))
                })
                .filter_map(|s| match &s.entry.kind {
                    PortKind::Listening(q) => Some(q.clone()),
                    _ => None,
                })
                .collect();
            (registries, queued)
        };
        let open: usize = registries
            .iter()
            .map(|registry| {
                crate::sync::lock(registry)
                    .conns
                    .iter()
                    .filter(|c| c.inbound.strong_count() > 0 || c.outbound.strong_count() > 0)
                    .count()
            })
            .sum();
        // A non-empty backlog counts once: enough to say "not drained yet".
        open + queued.iter().filter(|q| !q.is_empty()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ContainerNet;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Binds and listens on `port` as container `net` would.
    fn listen(
        net: &ContainerNet,
        port: u16,
    ) -> Result<(super::super::PortLease, Arc<super::super::ListenQueue>), NetError> {
        let lease = net.pod().lease(port, net.owner())?;
        let queue = net.pod().listen(&lease, 8, net.budget())?;
        Ok((lease, queue))
    }

    /// Accepts one queued connection on `queue`, writes `text` on it and closes it.
    async fn answer(queue: &super::super::ListenQueue, text: &str) {
        let mut ep = queue.pop().expect("a queued connection");
        ep.tx.write_all(text.as_bytes()).await.unwrap();
        ep.tx.shutdown().await.unwrap();
    }

    async fn read_all(mut stream: PodStream) -> String {
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    #[test]
    fn only_the_new_version_of_the_same_container_binds_beside_it() {
        let pod = PodNetwork::new();
        let old = pod.attach("web");
        let other = pod.attach("db");
        let (_held, _q) = listen(&old, 80).unwrap();
        // No surge open: even the same container's new instance gets address-in-use.
        let early = pod.attach("web");
        assert_eq!(listen(&early, 80).err(), Some(NetError::AddressInUse));

        let surge = pod.begin_surge("web");
        let new = pod.attach("web");
        let late_other = pod.attach("db");
        assert_eq!(listen(&other, 80).err(), Some(NetError::AddressInUse));
        assert_eq!(listen(&late_other, 80).err(), Some(NetError::AddressInUse));
        // The old instance, attached before the surge, does not get a second entry either.
        assert_eq!(listen(&early, 80).err(), Some(NetError::AddressInUse));
        assert_eq!(pod.lease(80, Owner::Host).unwrap_err(), NetError::AddressInUse);
        let (_beside, _q2) = listen(&new, 80).unwrap();
        // One second entry per port.
        let newer = pod.attach("web");
        assert_eq!(listen(&newer, 80).err(), Some(NetError::AddressInUse));
        drop(surge);
    }

    #[tokio::test]
    async fn new_connections_go_to_the_new_version_after_the_hand_over_only() {
        let pod = PodNetwork::new();
        let old = pod.attach("web");
        let (_old_lease, old_queue) = listen(&old, 80).unwrap();
        let held = pod.connect(80).unwrap();

        let surge = pod.begin_surge("web");
        let new = pod.attach("web");
        let (_new_lease, new_queue) = listen(&new, 80).unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            pod.wait_new_version_listening("web", &[80]),
        )
        .await
        .unwrap();
        // Before the hand-over, connections reach the old version; a probe reaches the new.
        let before = pod.connect(80).unwrap();
        let probe = pod.connect_new_version("web", 80).unwrap();
        answer(&new_queue, "new").await;
        assert_eq!(read_all(probe).await, "new");

        // The old version has its accepted connection and the one still queued.
        let accepted = old_queue.pop().unwrap();
        old.track(&accepted);
        let retired = pod.hand_over("web");
        drop(surge);
        assert_eq!(pod.open_connections(&retired), 2);

        let after = pod.connect(80).unwrap();
        answer(&new_queue, "new").await;
        assert_eq!(read_all(after).await, "new");
        answer(&old_queue, "old").await;
        assert_eq!(read_all(before).await, "old");
        // The held connection still works with the old version.
        let mut accepted = accepted;
        accepted.tx.write_all(b"old, held").await.unwrap();
        accepted.tx.shutdown().await.unwrap();
        assert_eq!(read_all(held).await, "old, held");
        drop(accepted);
        assert_eq!(pod.open_connections(&retired), 0);

        // The old version goes; the port stays with the new one.
        drop(old);
        assert!(pod.is_listening(80));
        let last = pod.connect(80).unwrap();
        answer(&new_queue, "new").await;
        assert_eq!(read_all(last).await, "new");
    }

    #[test]
    fn the_new_version_takes_the_port_when_the_old_one_releases_it_first() {
        let pod = PodNetwork::new();
        let old = pod.attach("web");
        let (old_lease, _q) = listen(&old, 80).unwrap();
        let _surge = pod.begin_surge("web");
        let new = pod.attach("web");
        let (_lease, new_queue) = listen(&new, 80).unwrap();
        drop(old_lease);
        let _conn = pod.connect(80).unwrap();
        assert!(!new_queue.is_empty());
    }

    #[test]
    fn a_failed_new_version_leaves_the_port_to_the_old_one() {
        let pod = PodNetwork::new();
        let old = pod.attach("web");
        let (_lease, old_queue) = listen(&old, 80).unwrap();
        let surge = pod.begin_surge("web");
        let new = pod.attach("web");
        let _ = listen(&new, 80).unwrap();
        new.abort();
        drop(surge);
        let _conn = pod.connect(80).unwrap();
        assert!(!old_queue.is_empty());
        // And a later surge works again.
        let _surge = pod.begin_surge("web");
        let newer = pod.attach("web");
        assert!(listen(&newer, 80).is_ok());
    }
}
