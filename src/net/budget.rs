//! What one container's sockets may hold in the host: the bytes queued in its connections and
//! datagram inboxes, and how many sockets it has open.
//!
//! Every pipe and inbox is charged to one [`SocketBudget`] for as long as it holds bytes, and
//! gives them back when they are read, discarded (reset, read side closed) or dropped. Who pays:
//! - a byte written into a connection is charged to the **writer**'s container: it caused the
//!   bytes to exist, and back-pressure on its writes is how it is told to stop;
//! - a byte written by the host side (front proxy, host-side test client, egress bridge) is
//!   charged to the **receiving** container, whose traffic it is;
//! - a datagram is charged to the container that bound the **receiving** port (the inbox is its
//!   receive buffer, as in a kernel).
//!
//! A charge is taken from two counters at once: the container's own socket cap
//! ([`SocketLimits::max_buffered_bytes`], which holds even for a container with no memory limit)
//! and the container's [`MemoryAccount`] (shared with its wasm Stores, so queued bytes and linear
//! memory count against one `resources.memory`). A writer that cannot be charged sees a zero
//! write permit (`would-block`) and is woken when this budget gets bytes back.

use crate::resources::MemoryAccount;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::pipe::Pipe;

/// Bytes a container's sockets may keep queued when nobody says otherwise: 128 full 256 KiB
/// pipes, far beyond what a well-behaved program keeps in flight.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 32 * 1024 * 1024;

/// Sockets a container may have open at once when nobody says otherwise (TCP and UDP together,
/// accepted ones included).
pub const DEFAULT_MAX_SOCKETS: usize = 4096;

/// Per-container limits of the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Bytes the container's connections and inboxes may hold queued at once, whether or not it
    /// has a memory limit (with one, the memory account bounds them too).
    pub max_buffered_bytes: u64,
    /// Sockets open at once; creating or accepting one more fails with `new-socket-limit`.
    pub max_sockets: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_sockets: DEFAULT_MAX_SOCKETS,
        }
    }
}

/// One container's (or the host side's) share of the pod network's host memory.
pub(crate) struct SocketBudget {
    account: Arc<MemoryAccount>,
    limits: SocketLimits,
    /// The host side pays for nothing it writes into a container (see module doc).
    host: bool,
    buffered: AtomicU64,
    sockets: AtomicUsize,
    /// The pod-wide total, for [`super::PodNetwork::buffered_bytes`].
    pod_total: Arc<AtomicU64>,
    /// Pipes whose writer waits for this budget to get bytes back.
    waiters: Mutex<Vec<Weak<Pipe>>>,
}

impl std::fmt::Debug for SocketBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketBudget")
            .field("buffered", &self.buffered())
            .field("sockets", &self.sockets())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl SocketBudget {
    pub(crate) fn new(account: Arc<MemoryAccount>, limits: SocketLimits, pod_total: Arc<AtomicU64>) -> Arc<Self> {
        Self::with_role(account, limits, pod_total, false)
    }

    fn with_role(
        account: Arc<MemoryAccount>,
        limits: SocketLimits,
        pod_total: Arc<AtomicU64>,
        host: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            account,
            limits,
            host,
            buffered: AtomicU64::new(0),
            sockets: AtomicUsize::new(0),
            pod_total,
            waiters: Mutex::new(Vec::new()),
        })
    }

    /// The host side of a pod: unlimited, and only charged for host-to-host pipes.
    pub(crate) fn host(pod_total: Arc<AtomicU64>) -> Arc<Self> {
        let limits = SocketLimits {
            max_buffered_bytes: u64::MAX,
            max_sockets: usize::MAX,
        };
        Self::with_role(MemoryAccount::new(None), limits, pod_total, true)
    }

    /// Who pays for a pipe written by `writer` and read by `reader` (see module doc).
    pub(crate) fn payer(writer: &Arc<Self>, reader: &Arc<Self>) -> Arc<Self> {
        if writer.host { reader.clone() } else { writer.clone() }
    }

    pub(crate) fn account(&self) -> &Arc<MemoryAccount> {
        &self.account
    }

    pub(crate) fn limits(&self) -> SocketLimits {
        self.limits
    }

    pub(crate) fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Acquire)
    }

    pub(crate) fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    /// Takes up to `want` bytes; returns how many were taken (0 = none available now).
    pub(crate) fn reserve(&self, want: usize) -> usize {
        // A few tries: another writer of the same container may take bytes between the look
        // and the charge; giving up then only means a zero permit, never an overdraft.
        for _ in 0..4 {
            let used = self.buffered();
            let mut room = self.limits.max_buffered_bytes.saturating_sub(used);
            if let Some(limit) = self.account.limit() {
                room = room.min(limit.saturating_sub(self.account.used()));
            }
            let n = (want as u64).min(room);
            if n == 0 {
                return 0;
            }
            if self.reserve_exact(n as usize) {
                return n as usize;
            }
        }
        0
    }

    /// Takes exactly `n` bytes, or nothing.
    pub(crate) fn reserve_exact(&self, n: usize) -> bool {
        let n = n as u64;
        let cap = self.limits.max_buffered_bytes;
        let took = self
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(n).filter(|t| *t <= cap)
            })
            .is_ok();
        if !took {
            return false;
        }
        if !self.account.try_charge(n) {
            self.buffered.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.pod_total.fetch_add(n, Ordering::AcqRel);
        true
    }

    /// Gives back `n` bytes and wakes the writers that waited for room. Never call it with a
    /// pipe lock held (it takes the waiting pipes' locks). All waiters are woken: each retries
    /// its charge and re-registers if it lost, so no wakeup is lost; a writer only waits here
    /// while it is blocked, so the list is as long as the container's blocked writers.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        let _ = self
            .buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
        let _ = self
            .pod_total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| Some(b.saturating_sub(n)));
        self.account.release(n);
        let waiting = {
            let mut w = crate::sync::lock(&self.waiters);
            std::mem::take(&mut *w)
        };
        for pipe in waiting {
            if let Some(pipe) = pipe.upgrade() {
                pipe.budget_freed();
            }
        }
    }

    /// Remembers a pipe whose writer waits for room; called with that pipe's lock held
    /// (lock order: pipe, then this list).
    pub(crate) fn wait(&self, pipe: Weak<Pipe>) {
        crate::sync::lock(&self.waiters).push(pipe);
    }

    /// Takes a socket slot; `None` at the limit.
    pub(crate) fn open_socket(self: &Arc<Self>) -> Option<SocketSlot> {
        let max = self.limits.max_sockets;
        self.sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| SocketSlot(self.clone()))
    }
}

/// One open socket of a container; the slot is given back on drop.
pub(crate) struct SocketSlot(Arc<SocketBudget>);

impl std::fmt::Debug for SocketSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketSlot")
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_counters_bound_a_charge() {
        let total = Arc::new(AtomicU64::new(0));
        let account = MemoryAccount::new(Some(1000));
        let b = SocketBudget::new(
            account.clone(),
            SocketLimits {
                max_buffered_bytes: 600,
                max_sockets: 1,
            },
            total.clone(),
        );
        assert_eq!(b.reserve(500), 500);
        assert_eq!(b.reserve(500), 100); // the socket cap
        assert_eq!(b.reserve(1), 0);
        assert_eq!((account.used(), total.load(Ordering::Acquire)), (600, 600));
        b.release(600);
        assert!(account.try_charge(900)); // the wasm side took most of the memory
        assert_eq!(b.reserve(500), 100); // the memory account
        assert!(!b.reserve_exact(1));
        b.release(100);
        account.release(900);
        assert_eq!((account.used(), b.buffered(), total.load(Ordering::Acquire)), (0, 0, 0));
        let slot = b.open_socket().expect("one slot");
        assert!(b.open_socket().is_none());
        drop(slot);
        assert!(b.open_socket().is_some());
    }
}
