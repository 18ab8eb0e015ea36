//! The pod's state: its lifecycle, its phase, every container's status, and whether the front
//! proxy may forward, changed only through the transitions below.
//!
//! Each transition checks that it applies, updates the status and records its event under one
//! lock, so a reader never sees a status without its event, the events come in the order the
//! status changed, and two callers racing for the same transition cannot both win (two
//! concurrent [`crate::Pod::start`] calls: one claims the start, the other is refused before
//! it touches anything). Containers are named by [`ContainerId`], their place in the spec.
//! What runs the containers is the supervisor's ([`crate::supervisor`]); this module only
//! records what happened to them.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::spec::{ExposeReady, PodSpec};
use crate::status::{ContainerState, ContainerStatus, EventKind, Events, Exit, PodPhase, PodStatus, WaitingReason};

/// A container of the pod: its place in the spec, init containers first (the order of
/// [`PodSpec::all_containers`] and of [`PodStatus::containers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ContainerId(usize);

impl ContainerId {
    /// The container's place in [`PodSpec::all_containers`].
    pub(crate) fn index(self) -> usize {
        self.0
    }
}

/// The pod's lifecycle as the `Pod` handle sees it: a pod is started at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Created; nobody asked to start it yet.
    Created,
    /// A `start` claimed the pod and is preparing it (compiling, volumes, the front proxy).
    Starting,
    /// The supervisor runs it.
    Started,
    /// It ended: succeeded, failed (at start or later) or stopped. Its phase is terminal.
    Ended,
}

/// Whose readiness opens the front proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    /// Every app container is ready or completed successfully.
    Pod,
    /// One of these containers (those that list the exposed port) is ready.
    Containers(Vec<ContainerId>),
}

/// The pod was already claimed by another `start` (or has ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AlreadyClaimed;

struct Inner {
    lifecycle: Lifecycle,
    status: PodStatus,
}

/// The pod's status with its guarded transitions; shared by the `Pod` handle and the
/// supervisor.
pub(crate) struct PodState {
    inner: Mutex<Inner>,
    events: Events,
    gate: Gate,
    /// The phase, for whoever waits for the end.
    phase: watch::Sender<PodPhase>,
    /// Bumped on every status change, for whoever waits on a condition (`depends_on`).
    changed: watch::Sender<()>,
    /// Whether the front proxy may forward (see [`Gate`]).
    front_ready: watch::Sender<bool>,
}

impl PodState {
    /// A pod that was created and not started: every container waits for the pod to start.
    pub(crate) fn new(spec: &PodSpec, events: Events) -> PodState {
        let init_count = spec.init_containers.len();
        let containers = spec
            .all_containers()
            .enumerate()
            .map(|(index, c)| ContainerStatus {
                name: c.name.clone(),
                init: index < init_count,
                state: ContainerState::Waiting {
                    reason: WaitingReason::PodInitializing,
                },
                restart_count: 0,
                ready: false,
                last_exit: None,
            })
            .collect();
        let status = PodStatus {
            name: spec.name.clone(),
            phase: PodPhase::Pending,
            containers,
        };
        PodState {
            inner: Mutex::new(Inner {
                lifecycle: Lifecycle::Created,
                status,
            }),
            events,
            gate: gate(spec),
            phase: watch::channel(PodPhase::Pending).0,
            changed: watch::channel(()).0,
            front_ready: watch::channel(false).0,
        }
    }

    // ----- reading -------------------------------------------------------------------------

    /// A snapshot of the pod's phase and every container's status.
    pub(crate) fn status(&self) -> PodStatus {
        self.lock().status.clone()
    }

    /// The container of that name (a linear search: for callers that come with a name, once).
    pub(crate) fn id(&self, name: &str) -> Option<ContainerId> {
        self.lock()
            .status
            .containers
            .iter()
            .position(|c| c.name == name)
            .map(ContainerId)
    }

    /// Every container, init containers first.
    pub(crate) fn ids(&self) -> impl Iterator<Item = ContainerId> + use<> {
        (0..self.lock().status.containers.len()).map(ContainerId)
    }

    /// Whether the supervisor runs the pod now (started and not ended): what an update needs.
    pub(crate) fn is_running(&self) -> bool {
        let inner = self.lock();
        inner.lifecycle == Lifecycle::Started && !inner.status.phase.is_terminal()
    }

    /// Whether the front proxy may forward now, and every change of it.
    pub(crate) fn front_ready(&self) -> watch::Receiver<bool> {
        self.front_ready.subscribe()
    }

    /// Waits until `condition` holds for one container's status (checked after every change).
    pub(crate) async fn wait_for(&self, id: ContainerId, mut condition: impl FnMut(&ContainerStatus) -> bool) {
        let mut changes = self.changed.subscribe();
        loop {
            if self.lock().status.containers.get(id.0).is_some_and(&mut condition) {
                return;
            }
            // The sender lives in `self`, so this only fails if the pod is gone.
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until the pod has ended and returns its final status.
    pub(crate) async fn wait_ended(&self) -> PodStatus {
        let mut phase = self.phase.subscribe();
        // `wait_for` fails only if the sender is gone, and `self` holds it.
        let _ = phase.wait_for(PodPhase::is_terminal).await;
        self.status()
    }

    // ----- the pod's lifecycle -------------------------------------------------------------

    /// Claims the start: only a pod that was never started can be, and only by one caller.
    pub(crate) fn claim_start(&self) -> Result<(), AlreadyClaimed> {
        let mut inner = self.lock();
        if inner.lifecycle != Lifecycle::Created {
            return Err(AlreadyClaimed);
        }
        inner.lifecycle = Lifecycle::Starting;
        Ok(())
    }

    /// The claimed start is done: the supervisor runs the pod.
    pub(crate) fn launched(&self) {
        let mut inner = self.lock();
        if inner.lifecycle == Lifecycle::Starting {
            inner.lifecycle = Lifecycle::Started;
        }
    }

    /// The claimed start failed: the pod has ended (it is not started again; see
    /// [`crate::Pod::start`]).
    pub(crate) fn start_failed(&self, reason: String) {
        let mut inner = self.lock();
        if inner.lifecycle == Lifecycle::Starting {
            self.end(&mut inner, PodPhase::Failed { reason });
        }
    }

    /// Stops a pod that was never started; false if it was (the supervisor stops it then).
    pub(crate) fn stop_unstarted(&self) -> bool {
        let mut inner = self.lock();
        if inner.lifecycle != Lifecycle::Created {
            return false;
        }
        self.end(&mut inner, PodPhase::Stopped);
        true
    }

    /// The init containers run.
    pub(crate) fn initializing(&self) {
        let mut inner = self.lock();
        if !inner.status.phase.is_terminal() {
            self.set_phase(&mut inner, PodPhase::Initializing);
        }
    }

    /// The init containers are done: the app containers start.
    pub(crate) fn running(&self) {
        let mut inner = self.lock();
        if !inner.status.phase.is_terminal() {
            self.set_phase(&mut inner, PodPhase::Running);
            self.events.emit(None, EventKind::PodRunning);
        }
    }

    /// The pod has ended with `phase` (Succeeded, Failed or Stopped); a pod ends once.
    pub(crate) fn finish(&self, phase: PodPhase) {
        let mut inner = self.lock();
        if !inner.status.phase.is_terminal() {
            self.end(&mut inner, phase);
        }
    }

    fn end(&self, inner: &mut Inner, phase: PodPhase) {
        inner.lifecycle = Lifecycle::Ended;
        let event = match &phase {
            PodPhase::Succeeded => EventKind::PodSucceeded,
            PodPhase::Failed { reason } => EventKind::PodFailed { reason: reason.clone() },
            _ => EventKind::PodStopped,
        };
        self.events.emit(None, event);
        self.set_phase(inner, phase);
    }

    // ----- one container -------------------------------------------------------------------

    /// A run of the container started (an http container: it serves its port). Not ready until
    /// its probes say so.
    pub(crate) fn started(&self, id: ContainerId) {
        self.change(id, EventKind::Started, |c| {
            c.state = ContainerState::Running {
                started_at: SystemTime::now(),
            };
            c.ready = false;
        });
    }

    /// Its probes say it is ready (or not, and why). An event only when readiness changes, and
    /// once when a probe fails before the container was ever ready.
    pub(crate) fn set_ready(&self, id: ContainerId, ready: bool, why: Option<String>) {
        let mut inner = self.lock();
        let Some(container) = inner.status.containers.get_mut(id.0) else {
            return;
        };
        let changed = container.ready != ready;
        container.ready = ready;
        if changed || (!ready && why.is_some()) {
            let kind = if ready {
                EventKind::Ready
            } else {
                EventKind::NotReady {
                    message: why.unwrap_or_default(),
                }
            };
            let name = container.name.clone();
            self.events.emit(Some(&name), kind);
        }
        self.changed_under(&mut inner);
    }

    /// A startup or liveness probe failed for good.
    pub(crate) fn unhealthy(&self, id: ContainerId, message: String) {
        self.note(Some(id), EventKind::Unhealthy { message });
    }

    /// The pod is told to stop (its containers then stop in reverse start order).
    pub(crate) fn stopping(&self) {
        self.note(None, EventKind::Stopping);
    }

    /// Something the operator should know about the pod or one container.
    pub(crate) fn warn(&self, id: Option<ContainerId>, message: String) {
        self.note(id, EventKind::Warning { message });
    }

    /// A run ended: the container is terminated (until a restart) and not ready.
    pub(crate) fn exited(&self, id: ContainerId, exit: &Exit) {
        self.change(id, EventKind::Exited { exit: exit.clone() }, |c| {
            c.state = ContainerState::Terminated {
                exit: exit.clone(),
                finished_at: SystemTime::now(),
            };
            c.last_exit = Some(exit.clone());
            c.ready = false;
        });
    }

    /// The container waits out its restart back-off.
    pub(crate) fn backing_off(&self, id: ContainerId, delay: Duration) {
        self.change(id, EventKind::BackOff { delay }, |c| {
            c.state = ContainerState::Waiting {
                reason: WaitingReason::BackOff { delay },
            };
        });
    }

    /// The container starts again; returns its restart count.
    pub(crate) fn restarting(&self, id: ContainerId) -> u32 {
        let mut inner = self.lock();
        let Some(container) = inner.status.containers.get_mut(id.0) else {
            return 0;
        };
        container.restart_count += 1;
        let restart_count = container.restart_count;
        let name = container.name.clone();
        self.events.emit(Some(&name), EventKind::Restarting { restart_count });
        self.changed_under(&mut inner);
        restart_count
    }

    /// The pod stopped while the container was not running (waiting for its dependencies, or
    /// out its back-off): it is terminated with `exit` and will not run again.
    pub(crate) fn stopped_waiting(&self, id: ContainerId, exit: &Exit) {
        let mut inner = self.lock();
        if let Some(container) = inner.status.containers.get_mut(id.0) {
            container.state = ContainerState::Terminated {
                exit: exit.clone(),
                finished_at: SystemTime::now(),
            };
            self.changed_under(&mut inner);
        }
    }

    /// An init container failed, so `apps` never start.
    pub(crate) fn init_failed(&self, init: ContainerId, apps: impl IntoIterator<Item = ContainerId>) {
        let mut inner = self.lock();
        let Some(init_container) = inner.status.containers.get(init.0).map(|c| c.name.clone()) else {
            return;
        };
        for app in apps {
            if let Some(container) = inner.status.containers.get_mut(app.0) {
                container.state = ContainerState::Waiting {
                    reason: WaitingReason::InitFailed {
                        init_container: init_container.clone(),
                    },
                };
            }
        }
        self.changed_under(&mut inner);
    }

    // ----- inside the lock -----------------------------------------------------------------

    /// One container's status changes and `event` says so, together.
    fn change(&self, id: ContainerId, event: EventKind, change: impl FnOnce(&mut ContainerStatus)) {
        let mut inner = self.lock();
        let Some(container) = inner.status.containers.get_mut(id.0) else {
            return;
        };
        change(container);
        let name = container.name.clone();
        self.events.emit(Some(&name), event);
        self.changed_under(&mut inner);
    }

    /// An event with no status change, ordered with the status changes.
    fn note(&self, id: Option<ContainerId>, event: EventKind) {
        let inner = self.lock();
        let name = id
            .and_then(|id| inner.status.containers.get(id.0))
            .map(|c| c.name.as_str());
        self.events.emit(name, event);
    }

    fn set_phase(&self, inner: &mut Inner, phase: PodPhase) {
        inner.status.phase = phase.clone();
        self.phase.send_replace(phase);
        self.changed_under(inner);
    }

    /// After every status change: recompute the front proxy's gate and wake waiters. Sent
    /// under the lock, so two changes cannot publish their gates out of order.
    fn changed_under(&self, inner: &mut Inner) {
        let status = &inner.status;
        let open = status.phase == PodPhase::Running
            && match &self.gate {
                // A container that completed for good (a job next to the servers) does not
                // hold the pod unready; one that is running, starting or backing off does.
                Gate::Pod => status.containers.iter().filter(|c| !c.init).all(|c| {
                    c.ready || matches!(&c.state, ContainerState::Terminated { exit, .. } if exit.is_success())
                }),
                Gate::Containers(ids) => ids
                    .iter()
                    .any(|id| status.containers.get(id.0).is_some_and(|c| c.ready)),
            };
        self.front_ready
            .send_if_modified(|was| std::mem::replace(was, open) != open);
        self.changed.send_replace(());
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves a whole, valid status, so a poisoned lock still holds one.
        crate::sync::lock(&self.inner)
    }
}

/// Whose readiness opens the front proxy: with `[expose] ready = "container"` (the default),
/// the app containers that list the exposed port; the whole pod with `"pod"`, or when no
/// container lists the port (validation refuses that, but a spec built in Rust may not be
/// validated the same way).
fn gate(spec: &PodSpec) -> Gate {
    let Some(expose) = spec.expose else {
        return Gate::Pod;
    };
    if expose.ready == ExposeReady::Pod {
        return Gate::Pod;
    }
    let init_count = spec.init_containers.len();
    let owners: Vec<ContainerId> = spec
        .all_containers()
        .enumerate()
        .filter(|(index, c)| *index >= init_count && c.ports.contains(&expose.port))
        .map(|(index, _)| ContainerId(index))
        .collect();
    if owners.is_empty() {
        Gate::Pod
    } else {
        Gate::Containers(owners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ContainerSpec, Expose};

    fn spec(ready: ExposeReady) -> PodSpec {
        let mut web = ContainerSpec::new("web", std::path::PathBuf::from("/web.wasm"));
        web.ports = vec![8080];
        let sidecar = ContainerSpec::new("sidecar", std::path::PathBuf::from("/sidecar.wasm"));
        let mut spec = PodSpec::new("gate");
        spec.containers = vec![sidecar, web];
        spec.expose = Some(Expose { port: 8080, ready });
        spec
    }

    fn running(spec: &PodSpec) -> PodState {
        let state = PodState::new(spec, Events::new(100));
        state.claim_start().unwrap();
        state.launched();
        state.initializing();
        state.running();
        state
    }

    #[test]
    fn only_one_start_claims_the_pod_and_an_ended_pod_cannot_be_claimed() {
        let state = PodState::new(&spec(ExposeReady::Container), Events::new(100));
        assert_eq!(state.claim_start(), Ok(()));
        assert_eq!(state.claim_start(), Err(AlreadyClaimed));
        state.start_failed("it broke".into());
        assert!(matches!(state.status().phase, PodPhase::Failed { .. }));
        assert_eq!(state.claim_start(), Err(AlreadyClaimed));
        assert!(!state.stop_unstarted());
    }

    #[test]
    fn a_failed_sidecar_closes_the_pod_gate_but_not_the_container_gate() {
        for (ready, open_after_sidecar_fails) in [(ExposeReady::Container, true), (ExposeReady::Pod, false)] {
            let spec = spec(ready);
            let state = running(&spec);
            let gate = state.front_ready();
            let sidecar = state.id("sidecar").unwrap();
            let web = state.id("web").unwrap();
            for id in [sidecar, web] {
                state.started(id);
                state.set_ready(id, true, None);
            }
            assert!(*gate.borrow(), "{ready:?}: both ready");
            state.exited(
                sidecar,
                &Exit::OutOfMemory {
                    limit: 1 << 20,
                    trap: "oom".into(),
                },
            );
            assert_eq!(*gate.borrow(), open_after_sidecar_fails, "{ready:?}");
            state.exited(web, &Exit::Code(1));
            assert!(!*gate.borrow(), "{ready:?}: the server is gone");
        }
    }

    #[test]
    fn every_status_change_comes_with_its_event_in_order() {
        let spec = spec(ExposeReady::Container);
        let state = running(&spec);
        let web = state.id("web").unwrap();
        state.started(web);
        state.exited(web, &Exit::Code(1));
        state.backing_off(web, Duration::from_millis(10));
        assert_eq!(state.restarting(web), 1);
        let kinds: Vec<EventKind> = state
            .events
            .all()
            .into_iter()
            .filter(|e| e.container.as_deref() == Some("web"))
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Started,
                EventKind::Exited { exit: Exit::Code(1) },
                EventKind::BackOff {
                    delay: Duration::from_millis(10)
                },
                EventKind::Restarting { restart_count: 1 },
            ]
        );
        let web = &state.status().containers[web.index()];
        assert_eq!((web.restart_count, web.last_exit.clone()), (1, Some(Exit::Code(1))));
    }
}
