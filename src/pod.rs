//! The pod supervisor: prepares a pod (compile, volumes), runs its init containers in order,
//! then its containers concurrently, restarts them by policy with back-off, and ends the pod
//! when no container can run any more or when it is told to stop.
//!
//! This module owns the order of things and the pod's one lifecycle; what a single run of a
//! container does is [`crate::container`]'s, and what the pod looks like from outside is
//! [`crate::status`]'s. [`Pod`] is the library API the CLI and tests use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::container::{self, ContainerError, Exit, PreparedContainer};
use crate::engine::{CompileError, CompileSource, Engine};
use crate::logs::{DEFAULT_LINES_PER_CONTAINER, LogLine, Logs};
use crate::net::PodNetwork;
use crate::proxy::{FrontProxy, ProxyError, ProxyLimits};
use crate::spec::{ComponentSource, ContainerSpec, PodSpec, RestartPolicy, SpecError};
use crate::status::{
    ContainerState, ContainerStatus, DEFAULT_EVENT_CAPACITY, EventKind, Events, PodPhase, PodStatus, WaitingReason,
};
use crate::volume::{VolumeError, Volumes};

/// Why a pod could not be created or started.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("container {container:?}: {source}")]
    Compile {
        container: String,
        #[source]
        source: CompileError,
    },
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("the pod was already started")]
    AlreadyStarted,
    #[error("cannot set up the wasmtime engine: {0}")]
    Engine(String),
}

/// Knobs of a pod that are not part of its spec.
#[derive(Clone)]
pub struct PodOptions {
    /// The engine to run on; default: the process-wide [`Engine::shared`].
    pub engine: Option<Engine>,
    /// Output lines kept per container.
    pub log_lines: usize,
    /// Events kept.
    pub event_capacity: usize,
    /// Where the front proxy listens when the spec exposes a port; default `127.0.0.1:PORT`.
    /// Tests use `127.0.0.1:0` and read [`Pod::proxy_addr`].
    pub listen: Option<std::net::SocketAddr>,
    /// Connection limits of the front proxy.
    pub proxy_limits: ProxyLimits,
}

impl Default for PodOptions {
    fn default() -> Self {
        PodOptions {
            engine: None,
            log_lines: DEFAULT_LINES_PER_CONTAINER,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            listen: None,
            proxy_limits: ProxyLimits::default(),
        }
    }
}

/// A pod: create it from a spec, [`start`](Pod::start) it, watch it, [`stop`](Pod::stop) it.
/// Dropping a `Pod` stops it.
pub struct Pod {
    shared: Arc<Shared>,
    supervisor: Mutex<Supervisor>,
    listen: Option<std::net::SocketAddr>,
    proxy_limits: ProxyLimits,
}

enum Supervisor {
    NotStarted,
    Started(tokio::task::JoinHandle<()>),
    Finished,
}

/// What the supervisor task and the handle share.
struct Shared {
    spec: PodSpec,
    engine: Engine,
    logs: Logs,
    events: Events,
    status: Mutex<PodStatus>,
    phase: watch::Sender<PodPhase>,
    stop: CancellationToken,
    volumes: Mutex<Option<Volumes>>,
    /// Forwards the exposed port while the pod runs.
    proxy: Mutex<Option<FrontProxy>>,
    /// The pod's one network namespace, shared by all its containers.
    network: Arc<PodNetwork>,
    /// Per container: a signal that asks for an immediate restart.
    restart_requests: std::collections::HashMap<String, Arc<tokio::sync::Notify>>,
}

impl Pod {
    /// Reads and validates a spec file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Pod, PodError> {
        Pod::from_spec(PodSpec::from_file(path)?)
    }

    /// A pod from a spec (validated here).
    pub fn from_spec(spec: PodSpec) -> Result<Pod, PodError> {
        Pod::with_options(spec, PodOptions::default())
    }

    /// A pod from a spec, with options.
    pub fn with_options(spec: PodSpec, options: PodOptions) -> Result<Pod, PodError> {
        spec.validate()?;
        let engine = match options.engine {
            Some(engine) => engine,
            None => Engine::shared().map_err(|e| PodError::Engine(e.to_string()))?,
        };
        let containers = spec
            .init_containers
            .iter()
            .map(|c| (c, true))
            .chain(spec.containers.iter().map(|c| (c, false)))
            .map(|(c, init)| ContainerStatus {
                name: c.name.clone(),
                init,
                state: ContainerState::Waiting { reason: WaitingReason::PodInitializing },
                restart_count: 0,
                last_exit: None,
            })
            .collect();
        let status = PodStatus { name: spec.name.clone(), phase: PodPhase::Pending, containers };
        let (phase, _) = watch::channel(PodPhase::Pending);
        let restart_requests = spec_names(&spec).map(|name| (name, Arc::new(tokio::sync::Notify::new()))).collect();
        let network = PodNetwork::new();
        for container in spec.all_containers() {
            network.register_name(&container.name);
        }
        Ok(Pod {
            shared: Arc::new(Shared {
                spec,
                engine,
                logs: Logs::new(options.log_lines),
                events: Events::new(options.event_capacity),
                status: Mutex::new(status),
                phase,
                stop: CancellationToken::new(),
                volumes: Mutex::new(None),
                proxy: Mutex::new(None),
                restart_requests,
                network,
            }),
            supervisor: Mutex::new(Supervisor::NotStarted),
            listen: options.listen,
            proxy_limits: options.proxy_limits,
        })
    }

    /// The pod's spec.
    pub fn spec(&self) -> &PodSpec {
        &self.shared.spec
    }

    /// Compiles every component (or loads it from the cache), prepares the volumes and starts
    /// the supervisor. Returns once the pod is running its init containers; errors name the
    /// container and the file at fault. Must be called inside a tokio runtime.
    pub async fn start(&self) -> Result<(), PodError> {
        {
            let supervisor = lock(&self.supervisor);
            if !matches!(*supervisor, Supervisor::NotStarted) {
                return Err(PodError::AlreadyStarted);
            }
        }
        let shared = &self.shared;
        let linker = container::linker(&shared.engine).map_err(PodError::Engine)?;
        let spec = shared.spec.clone();
        let volumes = tokio::task::spawn_blocking(move || Volumes::prepare(&spec))
            .await
            .map_err(|e| PodError::Engine(format!("volume preparation panicked: {e}")))??;
        for volume in &shared.spec.volumes {
            if let Some(dir) = volumes.host_dir(&volume.name) {
                let host_dir = dir.display().to_string();
                shared.events.emit(None, EventKind::VolumeReady { volume: volume.name.clone(), host_dir });
            }
        }
        let mut prepared = Vec::new();
        for container_spec in shared.spec.all_containers() {
            let compiled = self.compile(container_spec).await?;
            let mounts = volumes.mounts_for(container_spec)?;
            let container =
                PreparedContainer::new(&shared.engine, &linker, container_spec.clone(), &compiled, mounts)?;
            prepared.push(Arc::new(container));
        }
        *lock(&shared.volumes) = Some(volumes);
        if let Some(expose) = shared.spec.expose {
            let addr = self.listen.unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], expose.port)));
            let proxy =
                FrontProxy::start(addr, shared.network.clone(), expose.port, self.proxy_limits, shared.events.clone())
                    .await?;
            shared.events.emit(None, EventKind::Exposed { pod_port: expose.port, host_addr: proxy.local_addr() });
            *lock(&shared.proxy) = Some(proxy);
        }
        let init_count = shared.spec.init_containers.len();
        let apps = prepared.split_off(init_count);
        let mut supervisor = lock(&self.supervisor);
        if !matches!(*supervisor, Supervisor::NotStarted) {
            return Err(PodError::AlreadyStarted);
        }
        *supervisor = Supervisor::Started(tokio::spawn(supervise(shared.clone(), prepared, apps)));
        Ok(())
    }

    async fn compile(&self, container: &ContainerSpec) -> Result<wasmtime::component::Component, PodError> {
        let shared = &self.shared;
        let name = container.name.clone();
        shared.events.emit(Some(&name), EventKind::Compiling);
        let engine = shared.engine.clone();
        let source = container.component.clone();
        let what = match &source {
            ComponentSource::File(path) => format!("{} (container {name:?})", path.display()),
            ComponentSource::Bytes(_) => format!("the component bytes of container {name:?}"),
        };
        let compiled = tokio::task::spawn_blocking(move || match &source {
            ComponentSource::File(path) => engine.compile_file(path, &what),
            ComponentSource::Bytes(bytes) => engine.compile(bytes, &what),
        })
        .await
        .map_err(|e| PodError::Engine(format!("compilation panicked: {e}")))?
        .map_err(|source| PodError::Compile { container: name.clone(), source })?;
        let cached = compiled.source != CompileSource::Compiled;
        shared.events.emit(Some(&name), EventKind::Compiled { cached, took: compiled.elapsed });
        Ok(compiled.component)
    }

    /// A snapshot of the pod's phase and every container's state.
    pub fn status(&self) -> PodStatus {
        lock(&self.shared.status).clone()
    }

    /// The buffered output lines of one container, oldest first.
    pub fn logs(&self, container: &str) -> Vec<LogLine> {
        self.shared.logs.lines(container)
    }

    /// The pod's output, for following it live.
    pub fn output(&self) -> &Logs {
        &self.shared.logs
    }

    /// The host address of the front proxy, when the spec exposes a port and the pod started.
    pub fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        lock(&self.shared.proxy).as_ref().map(FrontProxy::local_addr)
    }

    /// The pod's virtual network: connect into any container's port from the host side.
    pub fn network(&self) -> &Arc<PodNetwork> {
        &self.shared.network
    }

    /// The pod's events.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    /// The host directory behind a volume while the pod holds it (`empty_dir`s and secrets are
    /// removed when the pod ends).
    pub fn volume_dir(&self, volume: &str) -> Option<PathBuf> {
        lock(&self.shared.volumes).as_ref().and_then(|v| v.host_dir(volume).map(Path::to_path_buf))
    }

    /// Waits until the pod has ended (succeeded, failed or stopped) and returns its final status.
    pub async fn wait(&self) -> PodStatus {
        let mut phase = self.shared.phase.subscribe();
        // `wait_for` fails only if the sender is gone, and `Shared` holds it as long as we do.
        let _ = phase.wait_for(PodPhase::is_terminal).await;
        self.status()
    }

    /// Restarts one running container now (a container waiting out its back-off is left alone), as a failed liveness probe or `kubectl delete pod`
    /// of a single container would: its run is cancelled (its connections reset, its ports
    /// released) and it starts again at once, whatever the restart policy. Returns false when
    /// no such container exists.
    pub fn restart(&self, container: &str) -> bool {
        match self.shared.restart_requests.get(container) {
            Some(request) => {
                request.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Stops the pod: cancels every container, waits for the supervisor to finish and removes
    /// the pod's `empty_dir`s and secrets. Returns the final status.
    pub async fn stop(&self) -> PodStatus {
        self.shared.stop.cancel();
        let handle = {
            let mut supervisor = lock(&self.supervisor);
            match std::mem::replace(&mut *supervisor, Supervisor::Finished) {
                Supervisor::Started(handle) => Some(handle),
                Supervisor::NotStarted => {
                    self.shared.set_phase(PodPhase::Stopped);
                    None
                }
                Supervisor::Finished => None,
            }
        };
        if let Some(handle) = handle
            && let Err(e) = handle.await
        {
            self.shared.events.emit(None, EventKind::Warning { message: format!("the supervisor ended abnormally: {e}") });
            self.shared.set_phase(PodPhase::Stopped);
        }
        self.shared.remove_volumes().await;
        self.status()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The supervisor finishes on its own once cancelled, and removes the volumes.
        self.shared.stop.cancel();
    }
}

fn spec_names(spec: &PodSpec) -> impl Iterator<Item = String> + '_ {
    spec.all_containers().map(|c| c.name.clone())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections only assign whole values, so a poisoned lock still holds a valid state.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn set_phase(&self, phase: PodPhase) {
        lock(&self.status).phase = phase.clone();
        self.phase.send_replace(phase);
    }

    fn update(&self, container: &str, change: impl FnOnce(&mut ContainerStatus)) {
        let mut status = lock(&self.status);
        if let Some(entry) = status.containers.iter_mut().find(|c| c.name == container) {
            change(entry);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    async fn remove_volumes(&self) {
        let volumes = lock(&self.volumes).take();
        if let Some(volumes) = volumes {
            let removed = tokio::task::spawn_blocking(move || volumes.remove()).await;
            if let Ok(Err(e)) = removed {
                self.events.emit(None, EventKind::Warning { message: format!("could not remove the pod's volumes: {e}") });
            }
        }
    }
}

/// The pod's lifecycle, from init containers to the end.
async fn supervise(shared: Arc<Shared>, inits: Vec<Arc<PreparedContainer>>, apps: Vec<Arc<PreparedContainer>>) {
    shared.set_phase(PodPhase::Initializing);
    for init in &inits {
        let exit = run_with_restarts(&shared, init, true).await;
        if shared.stopping() {
            return finish(&shared, PodPhase::Stopped).await;
        }
        if !exit.is_success() {
            let reason = format!("init container {:?} {exit}", init.spec.name);
            for app in &apps {
                let init_container = init.spec.name.clone();
                shared.update(&app.spec.name, |c| {
                    c.state = ContainerState::Waiting { reason: WaitingReason::InitFailed { init_container } }
                });
            }
            return finish(&shared, PodPhase::Failed { reason }).await;
        }
    }
    shared.set_phase(PodPhase::Running);
    shared.events.emit(None, EventKind::PodRunning);
    let mut running = JoinSet::new();
    for app in apps {
        let shared = shared.clone();
        running.spawn(async move {
            let exit = run_with_restarts(&shared, &app, false).await;
            (app.spec.name.clone(), exit)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((_, exit)) if exit.is_success() => {}
            Ok((name, exit)) => failures.push(format!("container {name:?} {exit}")),
            Err(e) => failures.push(format!("a container task ended abnormally: {e}")),
        }
    }
    let phase = if shared.stopping() {
        PodPhase::Stopped
    } else if failures.is_empty() {
        PodPhase::Succeeded
    } else {
        PodPhase::Failed { reason: failures.join("; ") }
    };
    finish(&shared, phase).await
}

async fn finish(shared: &Shared, phase: PodPhase) {
    let event = match &phase {
        PodPhase::Succeeded => EventKind::PodSucceeded,
        PodPhase::Failed { reason } => EventKind::PodFailed { reason: reason.clone() },
        _ => EventKind::PodStopped,
    };
    lock(&shared.proxy).take();
    shared.remove_volumes().await;
    shared.events.emit(None, event);
    shared.set_phase(phase);
}

/// Runs one container until the restart policy says it is done, or the pod stops; returns its
/// last exit. Init containers restart only on failure (as in Kubernetes and ACI), and not at all
/// under `never`.
async fn run_with_restarts(shared: &Shared, container: &PreparedContainer, init: bool) -> Exit {
    let name = container.spec.name.as_str();
    let backoff = shared.spec.restart_backoff;
    let mut restarts_in_a_row = 0u32;
    let restart_request = shared.restart_requests.get(name).cloned().unwrap_or_default();
    loop {
        let started_at = Instant::now();
        shared.update(name, |c| c.state = ContainerState::Running { started_at: SystemTime::now() });
        shared.events.emit(Some(name), EventKind::Started);
        let exit = tokio::select! {
            exit = container.run(&shared.logs, &shared.network) => exit,
            () = shared.stop.cancelled() => Exit::Stopped,
            () = restart_request.notified() => Exit::Restarted,
        };
        shared.update(name, |c| {
            c.state = ContainerState::Terminated { exit: exit.clone(), finished_at: SystemTime::now() };
            c.last_exit = Some(exit.clone());
        });
        shared.events.emit(Some(name), EventKind::Exited { exit: exit.clone() });
        if matches!(exit, Exit::Stopped) {
            return exit;
        }
        if matches!(exit, Exit::Restarted) {
            let mut restart_count = 0;
            shared.update(name, |c| {
                c.restart_count += 1;
                restart_count = c.restart_count;
            });
            shared.events.emit(Some(name), EventKind::Restarting { restart_count });
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
        let delay = backoff.delay(restarts_in_a_row);
        shared.update(name, |c| c.state = ContainerState::Waiting { reason: WaitingReason::BackOff { delay } });
        shared.events.emit(Some(name), EventKind::BackOff { delay });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stop.cancelled() => {
                shared.update(name, |c| c.state = ContainerState::Terminated { exit: exit.clone(), finished_at: SystemTime::now() });
                return exit;
            }
        }
        let mut restart_count = 0;
        shared.update(name, |c| {
            c.restart_count += 1;
            restart_count = c.restart_count;
        });
        shared.events.emit(Some(name), EventKind::Restarting { restart_count });
    }
}
