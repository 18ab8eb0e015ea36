//! Resource limits of one container run: a memory budget shared by all of the component's
//! linear memories and tables, and a CPU share enforced by throttling at epoch ticks.
//!
//! Memory: wasmtime asks a [`ResourceLimiter`] before every memory or table grows; the
//! [`MemoryBudget`] refuses growth past the limit, so the guest sees an ordinary allocation
//! failure (`memory.grow` returns -1), and remembers that it did, so a trap that follows is
//! reported as an out-of-memory kill rather than a mystery.
//!
//! CPU: every container's Store gets an epoch deadline one tick ahead (the engine's single
//! ticker thread advances the epoch every [`crate::engine::EPOCH_TICK`]). Reaching a deadline
//! means the guest was executing wasm when a tick passed: a sample of its CPU use. Unlimited
//! containers just yield to the scheduler there, so a spinning guest never starves its siblings;
//! a container with `cpu = s` then sleeps `tick * (1 - s) / s`, which over a short window holds it
//! to its share without ever killing it. A guest blocked in host I/O is not executing wasm and is
//! never sampled, so only real computation is throttled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{ResourceLimiter, UpdateDeadline};

use crate::engine::EPOCH_TICK;

/// Bytes a table element is counted as against the memory budget (a pointer-sized slot).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// One container's memory: everything it holds at once, counted against one limit. Shared by
/// every Store the container runs in (an http container's concurrent instances together, as a
/// Kubernetes limit covers all processes of a container) and by the bytes its sockets keep
/// queued in the host.
#[derive(Debug, Default)]
pub struct MemoryAccount {
    limit: Option<u64>,
    used: AtomicU64,
}

impl MemoryAccount {
    /// `None`: no limit beyond the engine's (usage is still counted).
    pub fn new(limit: Option<u64>) -> Arc<MemoryAccount> {
        Arc::new(MemoryAccount {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` from the account; false, and nothing taken, when that would pass the limit.
    pub fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let wanted = used.checked_add(bytes)?;
                match self.limit {
                    Some(limit) if wanted > limit => None,
                    _ => Some(wanted),
                }
            })
            .is_ok()
    }

    /// Gives back bytes taken with [`MemoryAccount::try_charge`].
    pub fn release(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            Some(used.saturating_sub(bytes))
        });
    }
}

/// One Store's share of its container's [`MemoryAccount`]: the wasmtime limiter of that Store,
/// for all its memories and tables together. What it took goes back when the Store is dropped.
#[derive(Debug)]
pub struct MemoryBudget {
    account: Arc<MemoryAccount>,
    charged: u64,
    exceeded: bool,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::new(None)
    }
}

impl MemoryBudget {
    /// A Store of its own account (`None`: no limit beyond the engine's).
    pub fn new(limit: Option<u64>) -> MemoryBudget {
        MemoryBudget::in_account(MemoryAccount::new(limit))
    }

    /// A Store that draws on a container's shared account.
    pub fn in_account(account: Arc<MemoryAccount>) -> MemoryBudget {
        MemoryBudget {
            account,
            charged: 0,
            exceeded: false,
        }
    }

    /// Whether some growth was refused for lack of budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.account.limit()
    }

    fn grow(&mut self, current: u64, desired: u64) -> bool {
        let extra = desired.saturating_sub(current);
        if !self.account.try_charge(extra) {
            self.exceeded = true;
            return false;
        }
        self.charged = self.charged.saturating_add(extra);
        true
    }
}

impl Drop for MemoryBudget {
    fn drop(&mut self) {
        self.account.release(self.charged);
    }
}

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(current as u64, desired as u64))
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        Ok(self.grow(
            current as u64 * TABLE_ELEMENT_BYTES,
            desired as u64 * TABLE_ELEMENT_BYTES,
        ))
    }
}

/// The smallest CPU share throttled as such: Kubernetes' one millicore (`spec` refuses less).
pub const MIN_CPU_SHARE: f64 = 0.001;

/// What to do when a running guest reaches its epoch deadline. Clones share one count of the
/// ticks they throttled (all Stores of a container).
#[derive(Debug, Clone)]
pub struct CpuShare {
    /// The pause after each sampled tick of computation; zero for an unlimited container.
    pause: Duration,
    /// Ticks after which a Store of this container paused: how often the share held it back.
    throttled: Arc<AtomicU64>,
}

impl CpuShare {
    /// `None` or a share of at least one core: never throttled, only made to yield. A share
    /// below [`MIN_CPU_SHARE`] is throttled as that share (the spec refuses it; a Rust-built
    /// spec that skipped validation must still not panic), and anything not a positive number
    /// is unlimited.
    pub fn new(share: Option<f64>) -> CpuShare {
        let pause = match share {
            Some(share) if share > 0.0 && share < 1.0 => {
                let share = share.max(MIN_CPU_SHARE);
                // At most ~2 s for any share from MIN_CPU_SHARE up, so the conversion cannot
                // fail; `try_` keeps it from ever panicking regardless.
                Duration::try_from_secs_f64(EPOCH_TICK.as_secs_f64() * ((1.0 - share) / share))
                    .unwrap_or(Duration::ZERO)
            }
            _ => Duration::ZERO,
        };
        CpuShare {
            pause,
            throttled: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many times a Store of this share was paused (Kubernetes' `nr_throttled`).
    pub fn throttled_ticks(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Makes `store` yield at every epoch tick, pausing as this share requires. Every Store
    /// that runs guest code gets this, whatever its kind.
    pub fn install<T: 'static>(&self, store: &mut wasmtime::Store<T>) {
        let share = self.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| Ok(share.on_deadline()));
    }

    /// The epoch-deadline decision: yield (and pause when throttled), then run one more tick.
    pub fn on_deadline(&self) -> UpdateDeadline {
        if self.pause.is_zero() {
            // tokio's own yield, not wasmtime's wake-and-return-Pending: tokio defers the wake
            // until it has polled its I/O and timer driver, so a guest that spins on every
            // tick cannot delay its siblings' socket and timer wake-ups (on a current-thread
            // runtime those are otherwise only looked at every 61 task polls, ~0.6 s here).
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
        } else {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(self.pause)))
        }
    }
}

/// `67108864` → `64MiB`: limits as a person wrote them.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budget_counts_every_memory_and_table_together() {
        let mut budget = MemoryBudget::new(Some(1000));
        assert!(budget.memory_growing(0, 600, None).unwrap());
        assert!(budget.table_growing(0, 50, None).unwrap()); // 400 bytes
        assert!(!budget.memory_growing(0, 100, None).unwrap()); // a second memory: over budget
        assert!(budget.exceeded());
        let mut unlimited = MemoryBudget::new(None);
        assert!(unlimited.memory_growing(0, usize::MAX / 2, None).unwrap());
        assert!(!unlimited.exceeded());
    }

    #[test]
    fn stores_of_one_container_share_its_account_and_give_back_on_drop() {
        let account = MemoryAccount::new(Some(1000));
        let mut first = MemoryBudget::in_account(account.clone());
        let mut second = MemoryBudget::in_account(account.clone());
        assert!(first.memory_growing(0, 700, None).unwrap());
        assert!(!second.memory_growing(0, 400, None).unwrap());
        assert!(second.exceeded());
        drop(first);
        assert_eq!(account.used(), 0);
        assert!(second.memory_growing(0, 400, None).unwrap());
        assert!(account.try_charge(600));
        assert!(!account.try_charge(1));
        account.release(600);
        assert_eq!(account.used(), 400);
    }

    #[test]
    fn cpu_share_pauses_in_proportion() {
        assert!(CpuShare::new(None).pause.is_zero());
        assert!(CpuShare::new(Some(1.0)).pause.is_zero());
        assert_eq!(CpuShare::new(Some(0.25)).pause, EPOCH_TICK * 3);
        assert_eq!(CpuShare::new(Some(0.5)).pause, EPOCH_TICK);
    }

    #[test]
    fn cpu_share_never_panics_on_extreme_shares() {
        let floor = CpuShare::new(Some(MIN_CPU_SHARE)).pause;
        assert_eq!(CpuShare::new(Some(1e-30)).pause, floor);
        assert_eq!(CpuShare::new(Some(f64::MIN_POSITIVE)).pause, floor);
        for share in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308] {
            assert!(CpuShare::new(Some(share)).pause.is_zero(), "{share}");
        }
    }
}
