//! The pod supervisor: prepares a pod (compile, volumes), runs its init containers in order,
//! then its containers concurrently, restarts them by policy with back-off, and ends the pod
//! when no container can run any more or when it is told to stop.
//!
//! This module owns the order of things and the pod's one lifecycle; what a single run of a
//! container does is [`crate::container`]'s, and what the pod looks like from outside is
//! [`crate::status`]'s. [`Pod`] is the library API the CLI and tests use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::container::ContainerKind;
use crate::container::{self, ContainerError, PreparedContainer};
use crate::engine::{CompileError, CompileSource, Engine};
use crate::http::{HttpContainer, HttpLimits, HttpPorts, PodRoutes};
use crate::logs::{DEFAULT_LINES_PER_CONTAINER, LogLine, Logs};
use crate::net::PodNetwork;
use crate::proxy::{FrontProxy, ProxyError, ProxyLimits, ProxyTarget};
use crate::spec::{ComponentSource, ContainerSpec, PodSpec, SpecError};
use crate::status::{
    ContainerState, ContainerStatus, DEFAULT_EVENT_CAPACITY, EventKind, Events, PodPhase, PodStatus, WaitingReason,
};
use crate::supervisor::{self, Runnable};
use crate::volume::{VolumeError, Volumes};
use std::collections::HashMap;

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
    /// Per-request limits of http containers.
    pub http_limits: HttpLimits,
}

impl Default for PodOptions {
    fn default() -> Self {
        PodOptions {
            engine: None,
            log_lines: DEFAULT_LINES_PER_CONTAINER,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            listen: None,
            proxy_limits: ProxyLimits::default(),
            http_limits: HttpLimits::default(),
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
    http_limits: HttpLimits,
}

enum Supervisor {
    NotStarted,
    Started(tokio::task::JoinHandle<()>),
    Finished,
}

/// What the supervisor task and the handle share.
pub(crate) struct Shared {
    pub(crate) spec: PodSpec,
    pub(crate) engine: Engine,
    pub(crate) logs: Logs,
    pub(crate) events: Events,
    status: Mutex<PodStatus>,
    phase: watch::Sender<PodPhase>,
    /// Bumped on every status change, for whoever waits on a condition (`depends_on`).
    status_changed: watch::Sender<()>,
    /// Whether every app container is ready: gates the front proxy.
    pub(crate) ready: watch::Sender<bool>,
    /// Cancelled when the pod is asked to stop.
    pub(crate) stop: CancellationToken,
    volumes: Mutex<Option<Volumes>>,
    /// Forwards the exposed port while the pod runs.
    pub(crate) proxy: Mutex<Option<FrontProxy>>,
    /// The pod's one network namespace, shared by all its containers.
    pub(crate) network: Arc<PodNetwork>,
    /// The pod's http containers by port (outgoing routes and probes call them in-process).
    pub(crate) http_ports: Arc<HttpPorts>,
    /// Per container: how the supervisor tells it to restart, to stop, or kills it.
    pub(crate) controls: HashMap<String, Arc<ContainerControl>>,
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
        let (phase, _) = watch::channel(PodPhase::Pending);
        let controls = spec_names(&spec)
            .map(|name| (name, Arc::new(ContainerControl::default())))
            .collect();
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
                controls,
                network,
                http_ports: Arc::new(HttpPorts::default()),
                status_changed: watch::channel(()).0,
                ready: watch::channel(false).0,
            }),
            supervisor: Mutex::new(Supervisor::NotStarted),
            listen: options.listen,
            proxy_limits: options.proxy_limits,
            http_limits: options.http_limits,
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
                shared.events.emit(
                    None,
                    EventKind::VolumeReady {
                        volume: volume.name.clone(),
                        host_dir,
                    },
                );
            }
        }
        let http_ports = shared.http_ports.clone();
        let mut prepared = Vec::new();
        for (index, container_spec) in shared.spec.all_containers().enumerate() {
            let init = index < shared.spec.init_containers.len();
            let compiled = self.compile(container_spec).await?;
            let mounts = volumes.mounts_for(container_spec)?;
            let name = container_spec.name.clone();
            let egress = container_spec.allowed_outbound_hosts.clone();
            let route = Arc::new(PodRoutes::new(
                shared.network.clone(),
                http_ports.clone(),
                Arc::new(move |host: &str, port: u16| egress.allows(host, port)),
            ));
            let runnable = match ContainerKind::require(shared.engine.wasmtime(), &compiled, &name)? {
                ContainerKind::Command => Runnable::Command(Arc::new(PreparedContainer::new(
                    &shared.engine,
                    &linker,
                    container_spec.clone(),
                    &compiled,
                    mounts,
                    shared.events.clone(),
                    route,
                )?)),
                ContainerKind::Http => {
                    let port = match (init, container_spec.ports.as_slice()) {
                        (false, [port]) => *port,
                        (true, _) => {
                            return Err(ContainerError::Unsupported {
                                container: name,
                                message: "an init container must be a command (`wasi:cli/run`), not an http handler"
                                    .into(),
                            }
                            .into());
                        }
                        (false, ports) => {
                            return Err(ContainerError::Unsupported {
                                container: name,
                                message: format!(
                                    "an http container serves exactly one port; list it in `ports` (it lists {})",
                                    ports.len()
                                ),
                            }
                            .into());
                        }
                    };
                    let http = HttpContainer::new(
                        &shared.engine,
                        &compiled,
                        container_spec.clone(),
                        mounts,
                        shared.logs.clone(),
                        shared.events.clone(),
                    )
                    .map_err(|e| ContainerError::Link {
                        container: name.clone(),
                        message: e.to_string(),
                    })?
                    .with_limits(http_limits(&self.http_limits, &container_spec.http))
                    .with_outgoing(route);
                    let http = Arc::new(http);
                    http_ports.insert(port, &http);
                    Runnable::Http { container: http, port }
                }
            };
            prepared.push(runnable);
        }
        *lock(&shared.volumes) = Some(volumes);
        if let Some(expose) = shared.spec.expose {
            let addr = self
                .listen
                .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], expose.port)));
            let target = prepared
                .iter()
                .find_map(|runnable| match runnable {
                    Runnable::Http { container, port } if *port == expose.port => {
                        Some(ProxyTarget::Http(container.clone()))
                    }
                    _ => None,
                })
                .unwrap_or(ProxyTarget::PodPort {
                    network: shared.network.clone(),
                    port: expose.port,
                });
            let limits = ProxyLimits {
                readiness_wait: shared.spec.readiness_wait,
                ..self.proxy_limits
            };
            let proxy =
                FrontProxy::start(addr, target, limits, shared.ready.subscribe(), shared.events.clone()).await?;
            shared.events.emit(
                None,
                EventKind::Exposed {
                    pod_port: expose.port,
                    host_addr: proxy.local_addr(),
                },
            );
            *lock(&shared.proxy) = Some(proxy);
        }
        let init_count = shared.spec.init_containers.len();
        let apps = prepared.split_off(init_count);
        let mut supervisor = lock(&self.supervisor);
        if !matches!(*supervisor, Supervisor::NotStarted) {
            return Err(PodError::AlreadyStarted);
        }
        *supervisor = Supervisor::Started(tokio::spawn(supervisor::supervise(shared.clone(), prepared, apps)));
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
        .map_err(|source| PodError::Compile {
            container: name.clone(),
            source,
        })?;
        let cached = compiled.source != CompileSource::Compiled;
        shared.events.emit(
            Some(&name),
            EventKind::Compiled {
                cached,
                took: compiled.elapsed,
            },
        );
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
        lock(&self.shared.volumes)
            .as_ref()
            .and_then(|v| v.host_dir(volume).map(Path::to_path_buf))
    }

    /// Waits until the pod has ended (succeeded, failed or stopped) and returns its final status.
    pub async fn wait(&self) -> PodStatus {
        let mut phase = self.shared.phase.subscribe();
        // `wait_for` fails only if the sender is gone, and `Shared` holds it as long as we do.
        let _ = phase.wait_for(PodPhase::is_terminal).await;
        self.status()
    }

    /// Restarts one command container now, as a failed liveness probe would: its run is
    /// cancelled (its connections reset, its ports released) and it starts again at once,
    /// whatever the restart policy; one waiting out its back-off starts at once. Http
    /// containers have no run to restart (each request is a fresh instance): nothing happens.
    /// Returns false when no such container exists.
    pub fn restart(&self, container: &str) -> bool {
        match self.shared.controls.get(container) {
            Some(control) => {
                // A stored permit: a request made just before the run starts waiting for it, or
                // during its back-off, is not lost (the back-off is cut short).
                control.restart.notify_one();
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
            self.shared.events.emit(
                None,
                EventKind::Warning {
                    message: format!("the supervisor ended abnormally: {e}"),
                },
            );
            self.shared.set_phase(PodPhase::Stopped);
        }
        self.shared.remove_volumes().await;
        self.status()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Nobody can wait for a grace period any more: kill at once. The supervisor finishes
        // on its own, and removes the volumes.
        for control in self.shared.controls.values() {
            control.terminating.cancel();
            control.kill.cancel();
        }
        self.shared.stop.cancel();
    }
}

/// The pod's default request limits, with what the container's spec sets.
fn http_limits(defaults: &HttpLimits, settings: &crate::spec::HttpSettings) -> HttpLimits {
    HttpLimits {
        request_timeout: settings.request_timeout.unwrap_or(defaults.request_timeout),
        max_concurrent_instances: settings
            .max_concurrent_instances
            .unwrap_or(defaults.max_concurrent_instances),
        max_request_body_bytes: settings.max_request_body.unwrap_or(defaults.max_request_body_bytes),
        ..defaults.clone()
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
    pub(crate) fn set_phase(&self, phase: PodPhase) {
        lock(&self.status).phase = phase.clone();
        self.phase.send_replace(phase);
        self.status_changed.send_replace(());
    }

    /// Changes one container's status, and recomputes whether the pod is ready.
    pub(crate) fn update(&self, container: &str, change: impl FnOnce(&mut ContainerStatus)) {
        let ready = {
            let mut status = lock(&self.status);
            if let Some(entry) = status.containers.iter_mut().find(|c| c.name == container) {
                change(entry);
            }
            // A container that completed for good (a job next to the servers) does not hold
            // the pod unready; one that is running, starting or backing off does.
            status.phase == PodPhase::Running
                && status.containers.iter().filter(|c| !c.init).all(|c| {
                    c.ready || matches!(&c.state, ContainerState::Terminated { exit, .. } if exit.is_success())
                })
        };
        self.ready
            .send_if_modified(|was| std::mem::replace(was, ready) != ready);
        self.status_changed.send_replace(());
    }

    /// A snapshot of one container's status.
    pub(crate) fn container_status(&self, container: &str) -> Option<ContainerStatus> {
        lock(&self.status)
            .containers
            .iter()
            .find(|c| c.name == container)
            .cloned()
    }

    /// Waits until `condition` holds for the pod's status (checked after every change).
    pub(crate) async fn wait_for_status(&self, mut condition: impl FnMut(&PodStatus) -> bool) {
        let mut changes = self.status_changed.subscribe();
        loop {
            if condition(&lock(&self.status)) {
                return;
            }
            // The sender lives in `self`, so this only fails if the pod is gone.
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub(crate) async fn remove_volumes(&self) {
        let volumes = lock(&self.volumes).take();
        if let Some(volumes) = volumes {
            let removed = tokio::task::spawn_blocking(move || volumes.remove()).await;
            if let Ok(Err(e)) = removed {
                self.events.emit(
                    None,
                    EventKind::Warning {
                        message: format!("could not remove the pod's volumes: {e}"),
                    },
                );
            }
        }
    }
}
