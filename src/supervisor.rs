//! The pod's supervisor: the order in which containers start and stop, restart policies and
//! back-off, probes, and the pod's outcome.
//!
//! Init containers run one after another, each to success. App containers then start
//! concurrently, each once its `depends_on` conditions hold (Docker Compose semantics), and are
//! restarted by the pod's policy with exponential back-off; a failed startup or liveness probe
//! ends a run like a crash. When the pod stops, containers are told to stop in the reverse of
//! their start order (their stdin closes), each gets the termination grace period to exit on
//! its own, and is then cancelled. The supervisor returns the pod's outcome when no container
//! can run any more.
//!
//! Everything it observes goes into the pod's state ([`crate::pod::state::PodState`]) through
//! its transitions; it knows nothing of the `Pod` handle, which prepares what it runs and
//! releases the pod's volumes and front proxy when it returns.

mod surge;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::container::{CommandContainer, HttpContainer};
use crate::net::PodNetwork;
use crate::pod::state::{ContainerId, PodState};
use crate::probe::{self, ProbeTarget, Probes};
use crate::route::HttpPorts;
use crate::spec::{Backoff, ContainerSpec, DependencyCondition, RestartPolicy};
use crate::status::{ContainerState, ContainerStatus, Exit, PodPhase};

/// A container ready to run: a command run to its end, or an http handler served per request.
#[derive(Clone)]
pub(crate) enum Runnable {
    Command(Arc<CommandContainer>),
    Http { container: Arc<HttpContainer>, port: u16 },
}

impl Runnable {
    fn spec(&self) -> &ContainerSpec {
        match self {
            Runnable::Command(command) => command.spec(),
            Runnable::Http { container, .. } => container.spec(),
        }
    }
}

/// The supervisor's handles on one container.
#[derive(Default)]
pub(crate) struct ContainerControl {
    /// Asks for an immediate restart of the current run.
    pub(crate) restart: tokio::sync::Notify,
    /// The pod is stopping: no more restarts, and the current run's stdin closes.
    pub(crate) terminating: CancellationToken,
    /// The grace period is over (or the pod is dropped): cancel the run now.
    pub(crate) kill: CancellationToken,
    /// The container will not run again.
    pub(crate) finished: CancellationToken,
    /// A new version waiting to replace the running one ([`crate::Pod::update`]).
    update: Mutex<Option<Replacement>>,
    /// Wakes the container's run when `update` holds a new version.
    updated: tokio::sync::Notify,
}

/// A new version of a container, handed to its supervisor task; `serving` is told once the new
/// version serves (an http container: new requests reach it; a command: its new run started,
/// or after a surge, new connections reach it), or why it does not (the old version serves on).
pub(crate) struct Replacement {
    pub(crate) runnable: Runnable,
    pub(crate) serving: Serving,
}

/// Where a new version's outcome goes: `Ok` once it serves, or why it failed.
pub(crate) type Serving = oneshot::Sender<Result<(), String>>;

/// One run of a command container's version, owned so that it can outlive the loop iteration
/// that started it (a surge hands the new version's run over). Dropping it cancels the run.
struct Instance {
    container: Arc<CommandContainer>,
    /// This run's stop signal (its stdin closes): the pod's, through the parent token, or an
    /// update's.
    stop: CancellationToken,
    run: Pin<Box<dyn Future<Output = Exit> + Send>>,
    /// Kept once the run has ended, so the run is never polled again.
    exit: Option<Exit>,
}

impl Instance {
    fn launch(container: Arc<CommandContainer>, terminating: &CancellationToken) -> Instance {
        let stop = terminating.child_token();
        let run = {
            let (container, stop) = (container.clone(), stop.clone());
            Box::pin(async move { container.run(&stop).await })
        };
        Instance {
            container,
            stop,
            run,
            exit: None,
        }
    }

    /// Waits for the run to end; cancel-safe, and once ended it returns the same exit again.
    async fn finished(&mut self) -> Exit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let exit = (&mut self.run).await;
        self.exit = Some(exit.clone());
        exit
    }

    fn is_finished(&self) -> bool {
        self.exit.is_some()
    }
}

impl ContainerControl {
    /// Hands a new version to the container's run; a version handed earlier and not yet taken
    /// is dropped (its updater learns so from its `serving` channel).
    pub(crate) fn replace(&self, replacement: Replacement) {
        *crate::sync::lock(&self.update) = Some(replacement);
        // A stored permit: a run that is between two waits still sees it.
        self.updated.notify_one();
    }

    fn take_update(&self) -> Option<Replacement> {
        crate::sync::lock(&self.update).take()
    }
}

/// One control per container, by [`ContainerId`].
pub(crate) type Controls = Arc<[Arc<ContainerControl>]>;

/// The pod's restart policy and timing, from its spec.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) restart: RestartPolicy,
    pub(crate) backoff: Backoff,
    pub(crate) termination_grace_period: Duration,
}

/// What the supervisor runs a pod with.
pub(crate) struct Supervisor {
    pub(crate) state: Arc<PodState>,
    pub(crate) controls: Controls,
    pub(crate) policy: Policy,
    pub(crate) network: Arc<PodNetwork>,
    pub(crate) http_ports: Arc<HttpPorts>,
    /// Cancelled when the pod is asked to stop.
    pub(crate) stop: CancellationToken,
}

/// A container with its identity in the pod.
struct Member {
    id: ContainerId,
    runnable: Runnable,
}

impl Supervisor {
    /// Runs the pod's lifecycle, from its init containers to its end, and returns the phase it
    /// ended in. `prepared` holds every container, init containers first, in spec order (the
    /// order of [`ContainerId`]s).
    pub(crate) async fn supervise(self: Arc<Self>, prepared: Vec<Runnable>, init_count: usize) -> PodPhase {
        let mut members = prepared
            .into_iter()
            .zip(self.state.ids())
            .map(|(runnable, id)| Member { id, runnable });
        let inits: Vec<Member> = members.by_ref().take(init_count).collect();
        let apps: Vec<Member> = members.collect();

        self.state.initializing();
        for init in &inits {
            // `Pod::start` accepts only commands as init containers.
            let Runnable::Command(command) = &init.runnable else {
                continue;
            };
            let control = self.control(init.id);
            let run = self.run_with_restarts(init.id, command, &control, true);
            let exit = tokio::select! {
                exit = run => exit,
                () = self.stop.cancelled() => {
                    self.stop_in_order(&[init.id]).await;
                    return PodPhase::Stopped;
                }
            };
            if !exit.is_success() {
                let name = &command.spec().name;
                self.state.init_failed(init.id, apps.iter().map(|app| app.id));
                return PodPhase::Failed {
                    reason: format!("init container {name:?} {exit}"),
                };
            }
        }
        if self.stop.is_cancelled() {
            return PodPhase::Stopped;
        }
        self.state.running();

        let start_order = start_order(&self.state, &apps);
        let mut running = JoinSet::new();
        for app in apps {
            let this = self.clone();
            running.spawn(async move {
                let control = this.control(app.id);
                let exit = this.run_app(&app, &control).await;
                control.finished.cancel();
                (app.runnable.spec().name.clone(), exit)
            });
        }
        let mut failures = Vec::new();
        let mut collect = async |running: &mut JoinSet<(String, Exit)>| {
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok((_, exit)) if exit.is_success() => {}
                    Ok((name, exit)) => failures.push(format!("container {name:?} {exit}")),
                    Err(e) => failures.push(format!("a container task ended abnormally: {e}")),
                }
            }
        };
        tokio::select! {
            () = collect(&mut running) => {}
            () = self.stop.cancelled() => {
                self.stop_in_order(&start_order).await;
                collect(&mut running).await;
            }
        }
        if self.stop.is_cancelled() {
            PodPhase::Stopped
        } else if failures.is_empty() {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed {
                reason: failures.join("; "),
            }
        }
    }

    fn control(&self, id: ContainerId) -> Arc<ContainerControl> {
        // The handle makes a control for every container of the spec.
        self.controls.get(id.index()).cloned().unwrap_or_default()
    }

    /// Tells containers to stop, last started first: each gets the grace period to exit after
    /// its stdin closes, then it is cancelled.
    async fn stop_in_order(&self, start_order: &[ContainerId]) {
        self.state.stopping();
        let grace = self.policy.termination_grace_period;
        for &id in start_order.iter().rev() {
            let control = self.control(id);
            control.terminating.cancel();
            if tokio::time::timeout(grace, control.finished.cancelled()).await.is_err() {
                let message = format!(
                    "did not exit within the {} grace period; cancelled",
                    humantime::format_duration(grace)
                );
                self.state.warn(Some(id), message);
            }
            control.kill.cancel();
            control.finished.cancelled().await;
        }
    }

    /// Waits for the container's `depends_on` conditions, then runs it.
    async fn run_app(&self, app: &Member, control: &ContainerControl) -> Exit {
        let dependencies = async {
            for dependency in &app.runnable.spec().depends_on {
                let condition = dependency.condition;
                match self.state.id(&dependency.container) {
                    Some(target) => self.state.wait_for(target, |status| holds(status, condition)).await,
                    // Validation refuses this; a container not in the pod never reaches anything.
                    None => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            () = dependencies => {}
            () = control.terminating.cancelled() => {
                let exit = Exit::Stopped;
                self.state.stopped_waiting(app.id, &exit);
                return exit;
            }
        }
        match &app.runnable {
            Runnable::Command(command) => self.run_with_restarts(app.id, command, control, false).await,
            Runnable::Http { container, port } => self.serve_http(app.id, container, *port, control).await,
        }
    }

    /// Serves an http container on its pod port until the pod stops: every connection from a
    /// container of the pod (or the host side) gets HTTP/1.1, each request a fresh instance of
    /// whichever version serves the port at that moment (so a swapped-in version takes over
    /// new requests, also on open keep-alive connections, while requests in flight finish on
    /// the old one). Restart policies do not apply: a request that traps fails alone, the
    /// container keeps serving.
    async fn serve_http(
        &self,
        id: ContainerId,
        container: &Arc<HttpContainer>,
        port: u16,
        control: &ContainerControl,
    ) -> Exit {
        let listener = match self.network.listen_host(port, crate::net::MAX_BACKLOG) {
            Ok(listener) => listener,
            Err(e) => return self.exited(id, Exit::Failed(format!("cannot serve pod port {port}: {e}"))),
        };
        self.state.started(id);
        // The version serving now; this task holds it strongly, the port table weakly.
        let mut container = container.clone();
        let mut connections = JoinSet::new();
        'versions: loop {
            let current = container.clone();
            let target = self.probe_target(Some(current.health_check()));
            let spec = current.spec();
            let probes = Probes {
                startup: spec.startup_probe.as_ref(),
                readiness: spec.readiness_probe.as_ref(),
                liveness: spec.liveness_probe.as_ref(),
            };
            let watch = probe::watch(probes, &target, |ready, why| self.state.set_ready(id, ready, why));
            tokio::pin!(watch);
            loop {
                tokio::select! {
                    () = control.terminating.cancelled() => break 'versions,
                    accepted = listener.accept() => match accepted {
                        Ok(stream) => {
                            let stop = control.terminating.clone().cancelled_owned();
                            let (ports, fallback) = (self.http_ports.clone(), current.clone());
                            connections.spawn(async move {
                                let builder = crate::proxy::http_builder();
                                crate::proxy::serve_current(ports, port, fallback, stream, stop, &builder).await
                            });
                        }
                        Err(_) => break 'versions,
                    },
                    () = control.updated.notified() => {
                        let Some(replacement) = control.take_update() else { continue };
                        let Runnable::Http { container: new, .. } = replacement.runnable else {
                            // `Pod::update` refuses a change of kind; nothing to swap.
                            continue;
                        };
                        // One write to the port table: from here on new requests (front proxy,
                        // routes, probes, this listener's connections) resolve to the new version.
                        self.http_ports.insert(port, &new);
                        container = new;
                        let _ = replacement.serving.send(Ok(()));
                        continue 'versions;
                    }
                    failure = &mut watch => {
                        // Per-request instances have nothing to restart; say so and keep serving.
                        self.state.unhealthy(id, failure.to_string());
                        self.state.set_ready(id, false, Some(failure.to_string()));
                        break 'versions;
                    }
                    // Reap finished connections so the set stays as small as the live ones.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }
        drop(listener);
        // In-flight requests finish within the grace period; then they are cut.
        tokio::select! {
            () = async { while connections.join_next().await.is_some() {} } => {}
            () = control.kill.cancelled() => connections.abort_all(),
        }
        self.exited(id, Exit::Stopped)
    }

    fn probe_target(&self, health: Option<probe::HealthCheck>) -> ProbeTarget {
        ProbeTarget {
            network: self.network.clone(),
            http_ports: self.http_ports.clone(),
            health,
            new_version_of: None,
        }
    }

    fn exited(&self, id: ContainerId, exit: Exit) -> Exit {
        self.state.exited(id, &exit);
        exit
    }

    /// Runs one container until the restart policy says it is done, or the pod stops; returns
    /// its last exit. Init containers restart only on failure (as in Kubernetes and ACI), and
    /// not at all under `never`. A new version handed in by [`crate::Pod::update`] surges in
    /// beside the running one (see [`surge`]) or, under `update_strategy = "recreate"` and for a
    /// container without ports, replaces it after a normal stop.
    async fn run_with_restarts(
        &self,
        id: ContainerId,
        container: &Arc<CommandContainer>,
        control: &ContainerControl,
        init: bool,
    ) -> Exit {
        let backoff = self.policy.backoff;
        let mut restarts_in_a_row = 0u32;
        // The version that runs; a replacement handed in by `Pod::update` takes its place.
        let mut container = container.clone();
        // Told once the run of a new version has started.
        let mut serving: Option<Serving> = None;
        // The run of a new version a surge started: it goes on as the container's run.
        let mut handed_over: Option<Instance> = None;
        loop {
            let mut instance = match handed_over.take() {
                Some(instance) => instance,
                None => {
                    self.state.started(id);
                    Instance::launch(container.clone(), &control.terminating)
                }
            };
            container = instance.container.clone();
            if let Some(serving) = serving.take() {
                let _ = serving.send(Ok(()));
            }
            let started_at = Instant::now();
            let current = container.clone();
            let target = self.probe_target(Some(current.health_check()));
            let probes = Probes {
                startup: current.spec().startup_probe.as_ref(),
                readiness: current.spec().readiness_probe.as_ref(),
                liveness: current.spec().liveness_probe.as_ref(),
            };
            let watch = probe::watch(probes, &target, |ready, why| self.state.set_ready(id, ready, why));
            tokio::pin!(watch);
            // A new version to start once this run is gone (a recreate).
            let mut replacement = None;
            let exit = loop {
                tokio::select! {
                    exit = instance.finished() => break exit,
                    () = control.kill.cancelled() => break Exit::Stopped,
                    () = control.restart.notified() => break Exit::Restarted,
                    () = control.updated.notified(), if !init => {
                        let Some(Replacement { runnable: Runnable::Command(new), serving: told }) = control.take_update() else {
                            // `Pod::update` refuses a change of kind; its updater learns it failed.
                            continue;
                        };
                        if surge::applies(new.spec()) {
                            match self.surge(id, &mut instance, new, control, told).await {
                                Ok(new_instance) => {
                                    handed_over = Some(new_instance);
                                    break Exit::Restarted;
                                }
                                // The old version ended while the new one failed to start.
                                Err(Some(exit)) => break exit,
                                // The old version keeps serving.
                                Err(None) => continue,
                            }
                        }
                        // Recreate: stopped as in a normal stop (stdin closes, the grace period,
                        // then cancel), and the new version starts once this run is gone.
                        self.stop_instance(id, &mut instance, None, control, "for its update").await;
                        replacement = Some((new, told));
                        break Exit::Restarted;
                    }
                    // Init containers run to completion: no probes, no readiness (validation refuses
                    // probes on them).
                    failure = &mut watch, if !init => {
                        self.state.unhealthy(id, failure.to_string());
                        break Exit::Killed(failure.to_string());
                    }
                }
            };
            // The old run (its instance and its ports) is gone before a new version starts.
            drop(instance);
            if handed_over.is_some() {
                // A surge: the container served throughout, its state does not change.
                continue;
            }
            if let Some((new, told)) = replacement {
                // The old version stopped as in a normal stop; `Pod::update` reports the swap.
                self.exited(id, Exit::Stopped);
                if control.terminating.is_cancelled() {
                    return Exit::Stopped;
                }
                container = new;
                serving = Some(told);
                continue;
            }
            // A container asked to stop that exits on its own in time has stopped, whatever code.
            let exit = if control.terminating.is_cancelled() && !matches!(exit, Exit::Stopped) {
                self.exited(id, exit);
                return Exit::Stopped;
            } else {
                self.exited(id, exit)
            };
            if matches!(exit, Exit::Stopped) {
                return exit;
            }
            if matches!(exit, Exit::Restarted) {
                self.state.restarting(id);
                continue;
            }
            let restart = match self.policy.restart {
                RestartPolicy::Always if init => !exit.is_success(),
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.is_success(),
                RestartPolicy::Never => false,
            };
            if !restart {
                return exit;
            }
            if started_at.elapsed() >= backoff.reset_after {
                restarts_in_a_row = 0;
            }
            restarts_in_a_row = restarts_in_a_row.saturating_add(1);
            let delay: Duration = backoff.delay(restarts_in_a_row);
            self.state.backing_off(id, delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = control.restart.notified() => {}
                // A new version waiting out a back-off starts at once.
                () = control.updated.notified(), if !init => {
                    if let Some(Replacement { runnable: Runnable::Command(new), serving: told }) = control.take_update() {
                        container = new;
                        serving = Some(told);
                        continue;
                    }
                }
                () = control.terminating.cancelled() => {
                    self.state.stopped_waiting(id, &exit);
                    return exit;
                }
            }
            self.state.restarting(id);
        }
    }

    /// Stops `instance` as in a normal stop: its stdin closes, it gets the grace period to
    /// exit, then the caller drops it (cancelled). `beside`, another instance of the container
    /// (a surge), keeps running meanwhile.
    async fn stop_instance(
        &self,
        id: ContainerId,
        instance: &mut Instance,
        mut beside: Option<&mut Instance>,
        control: &ContainerControl,
        what: &str,
    ) {
        instance.stop.cancel();
        let grace = self.policy.termination_grace_period;
        let until = tokio::time::Instant::now() + grace;
        loop {
            let beside_runs = beside.as_ref().is_some_and(|b| !b.is_finished());
            tokio::select! {
                _ = instance.finished() => return,
                _ = async { if let Some(b) = beside.as_mut() { b.finished().await; } }, if beside_runs => {}
                () = tokio::time::sleep_until(until) => {
                    let message = format!(
                        "did not exit within the {} grace period {what}; cancelled",
                        humantime::format_duration(grace)
                    );
                    self.state.warn(Some(id), message);
                    return;
                }
                () = control.kill.cancelled() => return,
            }
        }
    }
}

/// Containers in an order that respects `depends_on` (spec order otherwise). Validation
/// rejects cycles; a cycle that slipped through keeps spec order.
fn start_order(state: &PodState, apps: &[Member]) -> Vec<ContainerId> {
    let app_ids: Vec<ContainerId> = apps.iter().map(|app| app.id).collect();
    let mut ordered: Vec<ContainerId> = Vec::with_capacity(apps.len());
    let mut remaining: Vec<&Member> = apps.iter().collect();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|app| {
            app.runnable
                .spec()
                .depends_on
                .iter()
                .all(|dep| match state.id(&dep.container) {
                    Some(dep) => ordered.contains(&dep) || !app_ids.contains(&dep),
                    None => true,
                })
        });
        let next = remaining.remove(ready.unwrap_or(0));
        ordered.push(next.id);
    }
    ordered
}

/// Whether a container has reached `condition`.
fn holds(dependency: &ContainerStatus, condition: DependencyCondition) -> bool {
    let ever_ran = dependency.last_exit.is_some() || matches!(dependency.state, ContainerState::Running { .. });
    match condition {
        DependencyCondition::Started => ever_ran || dependency.init,
        DependencyCondition::Ready => dependency.ready || dependency.init,
        DependencyCondition::Completed => dependency.last_exit == Some(Exit::Code(0)),
    }
}
