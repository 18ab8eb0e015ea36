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

use std::time::Duration;

use wasmtime::{ResourceLimiter, UpdateDeadline};

use crate::engine::EPOCH_TICK;

/// Bytes a table element is counted as against the memory budget (a pointer-sized slot).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// A store's memory budget, for all its memories and tables together.
#[derive(Debug, Default)]
pub struct MemoryBudget {
    limit: Option<u64>,
    used: u64,
    exceeded: bool,
}

impl MemoryBudget {
    /// `None`: no limit beyond the engine's.
    pub fn new(limit: Option<u64>) -> MemoryBudget {
        MemoryBudget {
            limit,
            used: 0,
            exceeded: false,
        }
    }

    /// Whether some growth was refused for lack of budget.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    fn grow(&mut self, current: u64, desired: u64) -> bool {
        let extra = desired.saturating_sub(current);
        let wanted = self.used.saturating_add(extra);
        if self.limit.is_some_and(|limit| wanted > limit) {
            self.exceeded = true;
            return false;
        }
        self.used = wanted;
        true
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

/// What to do when a running guest reaches its epoch deadline.
#[derive(Debug, Clone, Copy)]
pub struct CpuShare {
    /// The pause after each sampled tick of computation; zero for an unlimited container.
    pause: Duration,
}

impl CpuShare {
    /// `None` or a share of at least one core: never throttled, only made to yield.
    pub fn new(share: Option<f64>) -> CpuShare {
        let pause = match share {
            Some(share) if share > 0.0 && share < 1.0 => EPOCH_TICK.mul_f64((1.0 - share) / share),
            _ => Duration::ZERO,
        };
        CpuShare { pause }
    }

    /// Makes `store` yield at every epoch tick, pausing as this share requires. Every Store
    /// that runs guest code gets this, command runs and http requests alike.
    pub fn install<T: 'static>(self, store: &mut wasmtime::Store<T>) {
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| Ok(self.on_deadline()));
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
    fn cpu_share_pauses_in_proportion() {
        assert!(CpuShare::new(None).pause.is_zero());
        assert!(CpuShare::new(Some(1.0)).pause.is_zero());
        assert_eq!(CpuShare::new(Some(0.25)).pause, EPOCH_TICK * 3);
        assert_eq!(CpuShare::new(Some(0.5)).pause, EPOCH_TICK);
    }
}
