//! The surge of a command container that listens ([`crate::spec::UpdateStrategy::Surge`]):
//! its new version starts beside the running one and binds the same pod ports (the pod
//! network allows that to the new version only, [`crate::net::surge`]). Once the new version
//! is ready — it listens on every declared port and, if it has one, its readiness probe passes
//! against it — new connections go to it; the old version keeps the connections it has until
//! they close or the grace period ends, and is then stopped as in a normal stop (stdin closes,
//! grace, cancel). A new version that exits before it is ready, or is not ready within its
//! startup deadline, is stopped and the old one serves on; the updater is told why.
//!
//! This module owns the order of those steps; the network owns who receives connections, the
//! run loop in `supervisor.rs` owns what happens to the container afterwards.

use std::sync::Arc;
use std::time::Duration;

use crate::container::CommandContainer;
use crate::pod::state::ContainerId;
use crate::probe::{self, ProbeTarget};
use crate::spec::{ContainerSpec, UpdateStrategy};
use crate::status::Exit;

use super::{ContainerControl, Instance, Serving, Supervisor};

/// How long a new version without a startup probe may take to listen on its ports.
pub(crate) const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How often the old version's open connections are counted while it drains (the network has
/// no "connection closed" signal per container; a count under the net lock is cheap).
const DRAIN_CHECK: Duration = Duration::from_millis(20);

/// Whether a new version of a command container surges in beside the old one: it has ports
/// to hand over and did not opt out.
pub(super) fn applies(spec: &ContainerSpec) -> bool {
    spec.update_strategy == UpdateStrategy::Surge && !spec.ports.is_empty()
}

/// How long the new version may take to be ready: its startup probe's whole window, or
/// [`STARTUP_DEADLINE`].
fn startup_deadline(spec: &ContainerSpec) -> Duration {
    match &spec.startup_probe {
        Some(probe) => {
            let tries = probe.failure_threshold.max(1);
            probe.initial_delay + (probe.period + probe.timeout) * tries
        }
        None => STARTUP_DEADLINE,
    }
}

impl Supervisor {
    /// Surges `new` in beside `old` (see the module documentation). `Ok`: the new version's
    /// run, which serves the container's ports now; `old` has been stopped and is dropped by
    /// the caller. `Err`: the new version failed and was stopped, `serving` was told why; with
    /// `Some(exit)` the old version ended meanwhile too, otherwise it serves on.
    pub(super) async fn surge(
        &self,
        id: ContainerId,
        old: &mut Instance,
        new: Arc<CommandContainer>,
        control: &ContainerControl,
        serving: Serving,
    ) -> Result<Instance, Option<Exit>> {
        let spec = new.spec().clone();
        let surge = self.network.begin_surge(&spec.name);
        let mut fresh = Instance::launch(new.clone(), &control.terminating);
        let deadline = startup_deadline(&spec);
        let ready = self.new_version_ready(&new);
        tokio::pin!(ready);
        let expired = tokio::time::sleep(deadline);
        tokio::pin!(expired);
        let mut old_exit = None;
        let failure = loop {
            tokio::select! {
                result = &mut ready => break result.err(),
                exit = fresh.finished() => break Some(format!("the new version ended before it was ready: {exit}")),
                () = &mut expired => {
                    let ports: Vec<String> = spec.ports.iter().map(u16::to_string).collect();
                    break Some(format!(
                        "the new version was not ready on port(s) {} within {}",
                        ports.join(", "),
                        humantime::format_duration(deadline)
                    ));
                }
                // The old version keeps serving (and is polled) while the new one starts.
                exit = old.finished(), if !old.is_finished() => old_exit = Some(exit),
                () = control.terminating.cancelled() => break Some("the pod is stopping".into()),
            }
        };
        if let Some(message) = failure {
            if !fresh.is_finished() {
                self.stop_instance(id, &mut fresh, Some(&mut *old), control, "after its failed update")
                    .await;
            }
            drop(fresh);
            drop(surge);
            let _ = serving.send(Err(message));
            return Err(old.exit.clone());
        }

        // New connections reach the new version from here on.
        let retired = self.network.hand_over(&spec.name);
        drop(surge);
        let _ = serving.send(Ok(()));
        if let Some(exit) = old_exit {
            self.state
                .warn(Some(id), format!("the old version ended during its update: {exit}"));
            return Ok(fresh);
        }

        // The old version keeps its open connections until they close or the grace period
        // ends; then it is stopped as in a normal stop.
        let drained_by = tokio::time::Instant::now() + self.policy.termination_grace_period;
        let mut check = tokio::time::interval(DRAIN_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.network.open_connections(&retired) > 0 {
            tokio::select! {
                _ = check.tick() => {}
                _ = old.finished() => break,
                _ = fresh.finished(), if !fresh.is_finished() => {}
                () = tokio::time::sleep_until(drained_by) => break,
                () = control.terminating.cancelled() => break,
                () = control.kill.cancelled() => break,
            }
        }
        if !old.is_finished() {
            self.stop_instance(id, old, Some(&mut fresh), control, "after its update")
                .await;
        }
        Ok(fresh)
    }

    /// Resolves once `new` listens on every declared port and its readiness probe (if any)
    /// passes against it, not against the version serving; `Err` when the probe fails its
    /// failure threshold in a row.
    async fn new_version_ready(&self, new: &Arc<CommandContainer>) -> Result<(), String> {
        let spec = new.spec();
        self.network.wait_new_version_listening(&spec.name, &spec.ports).await;
        let Some(readiness) = &spec.readiness_probe else {
            return Ok(());
        };
        let target = ProbeTarget {
            network: self.network.clone(),
            http_ports: self.http_ports.clone(),
            health: Some(new.health_check()),
            new_version_of: Some(spec.name.clone()),
        };
        tokio::time::sleep(readiness.initial_delay).await;
        let (mut passes, mut failures) = (0u32, 0u32);
        loop {
            match probe::check(&readiness.action, &target, readiness.timeout).await {
                Ok(()) => {
                    passes += 1;
                    failures = 0;
                    if passes >= readiness.success_threshold.max(1) {
                        return Ok(());
                    }
                }
                Err(message) => {
                    passes = 0;
                    failures += 1;
                    if failures >= readiness.failure_threshold.max(1) {
                        return Err(format!("the new version failed its readiness probe: {message}"));
                    }
                }
            }
            tokio::time::sleep(readiness.period).await;
        }
    }
}
