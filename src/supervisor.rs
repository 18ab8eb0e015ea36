//! The pod's supervisor: the order in which containers start and stop, restart policies and
//! back-off, probes, and the pod's end.
//!
//! Init containers run one after another, each to success. App containers then start
//! concurrently, each once its `depends_on` conditions hold (Docker Compose semantics), and are
//! restarted by the pod's policy with exponential back-off; a failed startup or liveness probe
//! ends a run like a crash. When the pod stops, containers are told to stop in the reverse of
//! their start order (their stdin closes), each gets the termination grace period to exit on
//! its own, and is then cancelled. The pod ends when no container can run any more.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;

use crate::container::{CommandContainer, Exit, HttpContainer};
use crate::pod::{ContainerControl, Shared};
use crate::probe::{self, ProbeTarget, Probes};
use crate::spec::{ContainerSpec, DependencyCondition, RestartPolicy};
use crate::status::{ContainerState, EventKind, PodPhase, PodStatus, WaitingReason};

/// A container ready to run: a command run to its end, or an http handler served per request.
pub(crate) enum Runnable {
    Command(Arc<CommandContainer>),
    Http { container: Arc<HttpContainer>, port: u16 },
}

impl Runnable {
    pub(crate) fn name(&self) -> &str {
        self.spec().name.as_str()
    }

    fn spec(&self) -> &ContainerSpec {
        match self {
            Runnable::Command(command) => command.spec(),
            Runnable::Http { container, .. } => container.spec(),
        }
    }
}

/// The pod's lifecycle, from init containers to the end.
pub(crate) async fn supervise(shared: Arc<Shared>, inits: Vec<Runnable>, apps: Vec<Runnable>) {
    shared.set_phase(PodPhase::Initializing);
    for init in &inits {
        // `Pod::start` accepts only commands as init containers.
        let Runnable::Command(command) = init else { continue };
        let control = control(&shared, init.name());
        let run = run_with_restarts(&shared, command, &control, true);
        let exit = tokio::select! {
            exit = run => exit,
            () = shared.stop.cancelled() => {
                stop_in_order(&shared, &[init.name().to_string()]).await;
                return finish(&shared, PodPhase::Stopped).await;
            }
        };
        if !exit.is_success() {
            let reason = format!("init container {:?} {exit}", init.name());
            for app in &apps {
                let init_container = init.name().to_string();
                shared.update(app.name(), |c| {
                    c.state = ContainerState::Waiting {
                        reason: WaitingReason::InitFailed { init_container },
                    }
                });
            }
            return finish(&shared, PodPhase::Failed { reason }).await;
        }
    }
    if shared.stopping() {
        return finish(&shared, PodPhase::Stopped).await;
    }
    shared.set_phase(PodPhase::Running);
    shared.events.emit(None, EventKind::PodRunning);

    let start_order: Vec<String> = start_order(&apps);
    let mut running = JoinSet::new();
    for app in apps {
        let shared = shared.clone();
        running.spawn(async move {
            let control = control(&shared, app.name());
            let exit = run_app(&shared, &app, &control).await;
            control.finished.cancel();
            (app.name().to_string(), exit)
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
        () = shared.stop.cancelled() => {
            stop_in_order(&shared, &start_order).await;
            collect(&mut running).await;
        }
    }
    let phase = if shared.stopping() {
        PodPhase::Stopped
    } else if failures.is_empty() {
        PodPhase::Succeeded
    } else {
        PodPhase::Failed {
            reason: failures.join("; "),
        }
    };
    finish(&shared, phase).await
}

fn control(shared: &Shared, name: &str) -> Arc<ContainerControl> {
    // `Shared` makes a control for every container of the spec.
    shared.controls.get(name).cloned().unwrap_or_default()
}

/// Containers in an order that respects `depends_on` (spec order otherwise). Validation
/// rejects cycles; a cycle that slipped through keeps spec order.
fn start_order(apps: &[Runnable]) -> Vec<String> {
    let mut ordered: Vec<String> = Vec::with_capacity(apps.len());
    let mut remaining: Vec<&Runnable> = apps.iter().collect();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|app| {
            app.spec()
                .depends_on
                .iter()
                .all(|dep| ordered.contains(&dep.container) || !apps.iter().any(|other| other.name() == dep.container))
        });
        let next = remaining.remove(ready.unwrap_or(0));
        ordered.push(next.name().to_string());
    }
    ordered
}

/// Tells containers to stop, last started first: each gets the grace period to exit after its
/// stdin closes, then it is cancelled.
async fn stop_in_order(shared: &Shared, start_order: &[String]) {
    shared.events.emit(None, EventKind::Stopping);
    let grace = shared.spec.termination_grace_period;
    for name in start_order.iter().rev() {
        let control = control(shared, name);
        control.terminating.cancel();
        if tokio::time::timeout(grace, control.finished.cancelled()).await.is_err() {
            shared.events.emit(
                Some(name),
                EventKind::Warning {
                    message: format!(
                        "did not exit within the {} grace period; cancelled",
                        humantime::format_duration(grace)
                    ),
                },
            );
        }
        control.kill.cancel();
        control.finished.cancelled().await;
    }
}

async fn finish(shared: &Shared, phase: PodPhase) {
    let event = match &phase {
        PodPhase::Succeeded => EventKind::PodSucceeded,
        PodPhase::Failed { reason } => EventKind::PodFailed { reason: reason.clone() },
        _ => EventKind::PodStopped,
    };
    shared
        .proxy
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    shared.remove_volumes().await;
    shared.events.emit(None, event);
    shared.set_phase(phase);
}

/// Waits for the container's `depends_on` conditions, then runs it.
async fn run_app(shared: &Shared, app: &Runnable, control: &ContainerControl) -> Exit {
    let name = app.name();
    let dependencies = async {
        for dependency in &app.spec().depends_on {
            let condition = dependency.condition;
            let target = dependency.container.as_str();
            shared.wait_for_status(|status| holds(status, target, condition)).await;
        }
    };
    tokio::select! {
        () = dependencies => {}
        () = control.terminating.cancelled() => {
            let exit = Exit::Stopped;
            shared.update(name, |c| {
                c.state = ContainerState::Terminated { exit: exit.clone(), finished_at: SystemTime::now() };
            });
            return exit;
        }
    }
    match app {
        Runnable::Command(command) => run_with_restarts(shared, command, control, false).await,
        Runnable::Http { container, port } => serve_http(shared, container, *port, control).await,
    }
}

/// Whether `container` has reached `condition` (a container not in the pod never does).
fn holds(status: &PodStatus, container: &str, condition: DependencyCondition) -> bool {
    let Some(dependency) = status.container(container) else {
        return false;
    };
    let ever_ran = dependency.last_exit.is_some() || matches!(dependency.state, ContainerState::Running { .. });
    match condition {
        DependencyCondition::Started => ever_ran || dependency.init,
        DependencyCondition::Ready => dependency.ready || dependency.init,
        DependencyCondition::Completed => dependency.last_exit == Some(Exit::Code(0)),
    }
}

/// Serves an http container on its pod port until the pod stops: every connection from a
/// container of the pod (or the host side) gets HTTP/1.1, each request a fresh instance. Restart
/// policies do not apply: a request that traps fails alone, the container keeps serving.
async fn serve_http(shared: &Shared, container: &Arc<HttpContainer>, port: u16, control: &ContainerControl) -> Exit {
    let name = container.name();
    let listener = match shared.network.listen_host(port, crate::net::MAX_BACKLOG) {
        Ok(listener) => listener,
        Err(e) => return record_exit(shared, name, Exit::Failed(format!("cannot serve pod port {port}: {e}"))),
    };
    shared.update(name, |c| {
        c.state = ContainerState::Running {
            started_at: SystemTime::now(),
        }
    });
    shared.events.emit(Some(name), EventKind::Started);
    let target = probe_target(shared, Some(container.health_check()));
    let spec = container.spec();
    let probes = Probes {
        startup: spec.startup_probe.as_ref(),
        readiness: spec.readiness_probe.as_ref(),
        liveness: spec.liveness_probe.as_ref(),
    };
    let watch = probe::watch(probes, &target, |ready, why| set_ready(shared, name, ready, why));
    tokio::pin!(watch);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = control.terminating.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let stop = control.terminating.clone().cancelled_owned();
                    connections.spawn(container.clone().serve_connection_until(stream, stop));
                }
                Err(_) => break,
            },
            failure = &mut watch => {
                // Per-request instances have nothing to restart; say so and keep serving.
                shared.events.emit(Some(name), EventKind::Unhealthy { message: failure.to_string() });
                set_ready(shared, name, false, Some(failure.to_string()));
                break;
            }
            // Reap finished connections so the set stays as small as the live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // In-flight requests finish within the grace period; then they are cut.
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {}
        () = control.kill.cancelled() => connections.abort_all(),
    }
    record_exit(shared, name, Exit::Stopped)
}

fn probe_target(shared: &Shared, health: Option<probe::HealthCheck>) -> ProbeTarget {
    ProbeTarget {
        network: shared.network.clone(),
        http_ports: shared.http_ports.clone(),
        health,
    }
}

fn set_ready(shared: &Shared, name: &str, ready: bool, why: Option<String>) {
    let changed = shared.container_status(name).is_some_and(|c| c.ready != ready);
    shared.update(name, |c| c.ready = ready);
    // A probe that fails before the container was ever ready still says why, once.
    if changed || (!ready && why.is_some()) {
        let kind = if ready {
            EventKind::Ready
        } else {
            EventKind::NotReady {
                message: why.unwrap_or_default(),
            }
        };
        shared.events.emit(Some(name), kind);
    }
}

fn record_exit(shared: &Shared, name: &str, exit: Exit) -> Exit {
    shared.update(name, |c| {
        c.state = ContainerState::Terminated {
            exit: exit.clone(),
            finished_at: SystemTime::now(),
        };
        c.last_exit = Some(exit.clone());
        c.ready = false;
    });
    shared.events.emit(Some(name), EventKind::Exited { exit: exit.clone() });
    exit
}

/// Runs one container until the restart policy says it is done, or the pod stops; returns its
/// last exit. Init containers restart only on failure (as in Kubernetes and ACI), and not at all
/// under `never`.
async fn run_with_restarts(
    shared: &Shared,
    container: &Arc<CommandContainer>,
    control: &ContainerControl,
    init: bool,
) -> Exit {
    let name = container.spec().name.as_str();
    let backoff = shared.spec.restart_backoff;
    let mut restarts_in_a_row = 0u32;
    let target = probe_target(shared, Some(container.health_check()));
    loop {
        let started_at = Instant::now();
        shared.update(name, |c| {
            c.state = ContainerState::Running {
                started_at: SystemTime::now(),
            };
            c.ready = false;
        });
        shared.events.emit(Some(name), EventKind::Started);
        let probes = Probes {
            startup: container.spec().startup_probe.as_ref(),
            readiness: container.spec().readiness_probe.as_ref(),
            liveness: container.spec().liveness_probe.as_ref(),
        };
        let exit = tokio::select! {
            exit = container.run(&control.terminating) => exit,
            () = control.kill.cancelled() => Exit::Stopped,
            () = control.restart.notified() => Exit::Restarted,
            // Init containers run to completion: no probes, no readiness (validation refuses
            // probes on them).
            failure = probe::watch(probes, &target, |ready, why| set_ready(shared, name, ready, why)), if !init => {
                shared.events.emit(Some(name), EventKind::Unhealthy { message: failure.to_string() });
                Exit::Killed(failure.to_string())
            }
        };
        // A container asked to stop that exits on its own in time has stopped, whatever code.
        let exit = if control.terminating.is_cancelled() && !matches!(exit, Exit::Stopped) {
            record_exit(shared, name, exit);
            return Exit::Stopped;
        } else {
            record_exit(shared, name, exit)
        };
        if matches!(exit, Exit::Stopped) {
            return exit;
        }
        if matches!(exit, Exit::Restarted) {
            count_restart(shared, name);
            continue;
        }
        let restart = match shared.spec.restart_policy {
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
        shared.update(name, |c| {
            c.state = ContainerState::Waiting {
                reason: WaitingReason::BackOff { delay },
            }
        });
        shared.events.emit(Some(name), EventKind::BackOff { delay });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = control.restart.notified() => {}
            () = control.terminating.cancelled() => {
                shared.update(name, |c| c.state = ContainerState::Terminated { exit: exit.clone(), finished_at: SystemTime::now() });
                return exit;
            }
        }
        count_restart(shared, name);
    }
}

fn count_restart(shared: &Shared, name: &str) {
    let mut restart_count = 0;
    shared.update(name, |c| {
        c.restart_count += 1;
        restart_count = c.restart_count;
    });
    shared.events.emit(Some(name), EventKind::Restarting { restart_count });
}
