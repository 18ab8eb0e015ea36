//! The [`Pod`] handle: what the CLI, tests and embedders hold.
//!
//! It claims the start in the pod's state before any work, so a second `start` is refused
//! before it touches anything; it prepares the pod ([`super::prepare`]), opens the front proxy,
//! and hands the containers to the supervisor ([`crate::supervisor`]). While the pod runs, the
//! handle holds what the pod owns on the host (its volumes and the front proxy) and releases it
//! when the supervisor returns, before the pod's end is recorded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::container::ContainerError;
use crate::container::HttpLimits;
use crate::engine::{CompileError, Engine};
use crate::logs::{DEFAULT_LINES_PER_CONTAINER, LogLine, Logs};
use crate::net::PodNetwork;
use crate::proxy::{FrontProxy, ProxyError, ProxyLimits, ProxyTarget};
use crate::route::HttpPorts;
use crate::spec::{PodSpec, SpecError};
use crate::status::{DEFAULT_EVENT_CAPACITY, EventKind, Events, PodPhase, PodStatus};
use crate::supervisor::{ContainerControl, Controls, Policy, Runnable, Supervisor};
use crate::volume::{VolumeError, Volumes};

use super::state::PodState;

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
    #[error("container {container:?}: {source}")]
    Image {
        container: String,
        #[source]
        // Boxed: the registry's errors are large and rare, `PodError` is returned everywhere.
        source: Box<crate::oci::OciError>,
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
    /// The update changes what cannot change in a running pod; nothing was changed.
    #[error("cannot update the pod in place: {0}; recreate the pod to apply it")]
    NotUpdatable(String),
    /// The update could not be applied to a container; nothing was changed.
    #[error("container {container:?}: the update was not applied: {message}")]
    UpdateFailed { container: Box<str>, message: Box<str> },
    /// Only a running pod can be updated.
    #[error("the pod is not running; only a running pod can be updated")]
    NotRunning,
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
    /// Whether the exposed port gets its own host listener (the front proxy). An edge host
    /// turns it off and routes to [`Pod::exposed`] through its shared entrance instead.
    pub bind_front_proxy: bool,
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
            bind_front_proxy: true,
        }
    }
}

/// A pod: create it from a spec, [`start`](Pod::start) it, watch it, [`stop`](Pod::stop) it.
/// Dropping a `Pod` stops it.
pub struct Pod {
    pub(super) parts: Arc<Parts>,
    pub(super) state: Arc<PodState>,
    pub(super) controls: Controls,
    /// What the pod owns on the host while it runs; released when it ends.
    pub(super) held: Arc<Held>,
    /// The task that supervises the pod and then releases what it held.
    run: Mutex<Option<JoinHandle<()>>>,
    /// Cancelled when the pod is asked to stop.
    stop: CancellationToken,
    listen: Option<std::net::SocketAddr>,
    proxy_limits: ProxyLimits,
    pub(super) http_limits: HttpLimits,
    bind_front_proxy: bool,
    /// What each container runs now, by container id (filled at start, changed by updates).
    pub(super) versions: Mutex<Vec<super::update::Version>>,
    /// One update at a time.
    pub(super) updating: tokio::sync::Mutex<()>,
}

/// What a pod is made of, fixed when it is created: the spec and what every container of it
/// shares.
pub(super) struct Parts {
    pub(super) spec: PodSpec,
    pub(super) engine: Engine,
    pub(super) logs: Logs,
    pub(super) events: Events,
    /// The pod's one network namespace, shared by all its containers.
    pub(super) network: Arc<PodNetwork>,
    /// The pod's http containers by port (outgoing routes and probes call them in-process).
    pub(super) http_ports: Arc<HttpPorts>,
    /// Every container's traffic and resource counters (see [`Pod::container_metrics`]).
    pub(super) counters: Arc<crate::counters::PodCounters>,
}

/// The pod's host resources while it runs.
#[derive(Default)]
pub(super) struct Held {
    pub(super) volumes: Mutex<Option<Volumes>>,
    /// Forwards the exposed port.
    proxy: Mutex<Option<FrontProxy>>,
    /// What the exposed port leads to, for entrances other than the front proxy.
    target: Mutex<Option<ProxyTarget>>,
}

impl Held {
    /// Closes the front proxy and removes the `empty_dir`s and secrets (idempotent).
    async fn release(&self, state: &PodState) {
        lock(&self.proxy).take();
        lock(&self.target).take();
        let volumes = lock(&self.volumes).take();
        if let Some(volumes) = volumes {
            let removed = tokio::task::spawn_blocking(move || volumes.remove()).await;
            if let Ok(Err(e)) = removed {
                state.warn(None, format!("could not remove the pod's volumes: {e}"));
            }
        }
    }
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
        let events = Events::new(options.event_capacity);
        let state = Arc::new(PodState::new(&spec, events.clone()));
        let controls: Controls = spec
            .all_containers()
            .map(|_| Arc::new(ContainerControl::default()))
            .collect();
        let network = PodNetwork::new();
        for container in spec.all_containers() {
            network.register_name(&container.name);
        }
        crate::net::fault::install(&network, &spec.faults, &events);
        Ok(Pod {
            parts: Arc::new(Parts {
                spec,
                engine,
                logs: Logs::new(options.log_lines),
                events,
                network,
                http_ports: Arc::new(HttpPorts::default()),
                counters: crate::counters::PodCounters::new(),
            }),
            state,
            controls,
            held: Arc::new(Held::default()),
            run: Mutex::new(None),
            stop: CancellationToken::new(),
            listen: options.listen,
            proxy_limits: options.proxy_limits,
            http_limits: options.http_limits,
            bind_front_proxy: options.bind_front_proxy,
            versions: Mutex::new(Vec::new()),
            updating: tokio::sync::Mutex::new(()),
        })
    }

    /// Injects a network fault on the pod's links until the returned guard is dropped (see
    /// [`crate::net::fault`]); `[[faults]]` of the spec are installed when the pod is made.
    pub fn add_fault(&self, fault: crate::net::fault::Fault) -> crate::net::fault::FaultGuard {
        self.parts.network.faults().add_guarded(fault)
    }

    /// The spec the pod was created from (see [`Pod::current_spec`] for the one it runs after
    /// updates).
    pub fn spec(&self) -> &PodSpec {
        &self.parts.spec
    }

    /// Compiles every component (or loads it from the cache), prepares the volumes and starts
    /// the supervisor. Returns once the pod is running its init containers; errors name the
    /// container and the file at fault. Must be called inside a tokio runtime.
    ///
    /// A pod starts once. The first call claims the start before any work; any other call,
    /// concurrent or later, gets [`PodError::AlreadyStarted`] at once and changes nothing. A
    /// start that fails ends the pod: its phase becomes `Failed` with the error as reason
    /// (what it had prepared is released), [`Pod::wait`] returns, and it cannot be started
    /// again — create a new `Pod` from the spec (after fixing what the error names). So does a
    /// start whose future is dropped before it finishes.
    pub async fn start(&self) -> Result<(), PodError> {
        self.state.claim_start().map_err(|_| PodError::AlreadyStarted)?;
        let mut claim = StartClaim {
            state: &self.state,
            done: false,
        };
        let started = self.launch().await;
        claim.done = true;
        match started {
            Ok(()) => {
                self.state.launched();
                Ok(())
            }
            Err(error) => {
                self.state.start_failed(error.to_string());
                Err(error)
            }
        }
    }

    /// The work of a claimed start. What it prepares stays local until everything succeeded,
    /// so a failure drops it (removing the volumes) and leaves nothing behind in the handle.
    async fn launch(&self) -> Result<(), PodError> {
        let (volumes, prepared) = self.prepare_containers().await?;
        let proxy = self.expose(&prepared).await?;
        *lock(&self.held.volumes) = Some(volumes);
        *lock(&self.held.proxy) = proxy;
        let spec = &self.parts.spec;
        let init_count = spec.init_containers.len();
        let supervisor = Arc::new(Supervisor {
            state: self.state.clone(),
            controls: self.controls.clone(),
            policy: Policy {
                restart: spec.restart_policy,
                backoff: spec.restart_backoff,
                termination_grace_period: spec.termination_grace_period,
            },
            network: self.parts.network.clone(),
            http_ports: self.parts.http_ports.clone(),
            stop: self.stop.clone(),
        });
        let state = self.state.clone();
        let held = self.held.clone();
        let run = tokio::spawn(async move {
            let phase = supervisor.supervise(prepared, init_count).await;
            held.release(&state).await;
            state.finish(phase);
        });
        *lock(&self.run) = Some(run);
        Ok(())
    }

    /// Opens the front proxy when the spec exposes a port: straight into the http container
    /// that serves it, or bytes to whatever listens on it.
    async fn expose(&self, prepared: &[Runnable]) -> Result<Option<FrontProxy>, PodError> {
        let parts = &self.parts;
        let Some(expose) = parts.spec.expose else {
            return Ok(None);
        };
        let addr = self
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], expose.port)));
        let target = prepared
            .iter()
            .find_map(|runnable| match runnable {
                Runnable::Http { container, port } if *port == expose.port => Some(ProxyTarget::Http {
                    container: container.clone(),
                    ports: parts.http_ports.clone(),
                    port: *port,
                }),
                _ => None,
            })
            .unwrap_or(ProxyTarget::PodPort {
                network: parts.network.clone(),
                port: expose.port,
            });
        *lock(&self.held.target) = Some(target.clone());
        if !self.bind_front_proxy {
            return Ok(None);
        }
        let limits = ProxyLimits {
            readiness_wait: parts.spec.readiness_wait,
            ..self.proxy_limits
        };
        let proxy = FrontProxy::start(addr, target, limits, self.state.front_ready(), parts.events.clone()).await?;
        parts.events.emit(
            None,
            EventKind::Exposed {
                pod_port: expose.port,
                host_addr: proxy.local_addr(),
            },
        );
        Ok(Some(proxy))
    }

    /// A snapshot of the pod's phase and every container's state.
    pub fn status(&self) -> PodStatus {
        self.state.status()
    }

    /// The buffered output lines of one container, oldest first.
    pub fn logs(&self, container: &str) -> Vec<LogLine> {
        self.parts.logs.lines(container)
    }

    /// The pod's output, for following it live.
    pub fn output(&self) -> &Logs {
        &self.parts.logs
    }

    /// The host address of the front proxy, when the spec exposes a port and the pod runs.
    pub fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        lock(&self.held.proxy).as_ref().map(FrontProxy::local_addr)
    }

    /// What the exposed port leads to while the pod runs, and the readiness that gates it (as
    /// the front proxy gates it): how an edge host's shared entrance reaches the pod.
    pub fn exposed(&self) -> Option<(ProxyTarget, tokio::sync::watch::Receiver<bool>)> {
        let target = lock(&self.held.target).clone()?;
        Some((target, self.state.front_ready()))
    }

    /// Each container's counters since the pod started (requests, latency, network bytes,
    /// egress denials, guest time, memory held now), in spec order; a container appears once
    /// its start was prepared. They survive restarts and hot swaps.
    pub fn container_metrics(&self) -> Vec<crate::counters::ContainerMetrics> {
        self.parts.counters.snapshot()
    }

    /// The pod's virtual network: connect into any container's port from the host side.
    pub fn network(&self) -> &Arc<PodNetwork> {
        &self.parts.network
    }

    /// The pod's events.
    pub fn events(&self) -> &Events {
        &self.parts.events
    }

    /// The host directory behind a volume while the pod holds it (`empty_dir`s and secrets are
    /// removed when the pod ends).
    pub fn volume_dir(&self, volume: &str) -> Option<PathBuf> {
        lock(&self.held.volumes)
            .as_ref()
            .and_then(|v| v.host_dir(volume).map(Path::to_path_buf))
    }

    /// Waits until the pod has ended (succeeded, failed or stopped) and returns its final status.
    pub async fn wait(&self) -> PodStatus {
        self.state.wait_ended().await
    }

    /// Restarts one command container now, as a failed liveness probe would: its run is
    /// cancelled (its connections reset, its ports released) and it starts again at once,
    /// whatever the restart policy; one waiting out its back-off starts at once. Http
    /// containers have no run to restart (each request is a fresh instance): nothing happens.
    /// Returns false when no such container exists.
    pub fn restart(&self, container: &str) -> bool {
        let control = self.state.id(container).and_then(|id| self.controls.get(id.index()));
        match control {
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
    /// the pod's `empty_dir`s and secrets. Returns the final status. A pod that is still
    /// starting stops as soon as its start is done.
    pub async fn stop(&self) -> PodStatus {
        self.stop.cancel();
        if self.state.stop_unstarted() {
            return self.status();
        }
        let run = lock(&self.run).take();
        if let Some(run) = run
            && let Err(e) = run.await
        {
            self.state.warn(None, format!("the supervisor ended abnormally: {e}"));
            self.held.release(&self.state).await;
            self.state.finish(PodPhase::Stopped);
        }
        self.state.wait_ended().await
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Nobody can wait for a grace period any more: kill at once. The supervisor finishes
        // on its own, and removes the volumes.
        for control in self.controls.iter() {
            control.terminating.cancel();
            control.kill.cancel();
        }
        self.stop.cancel();
    }
}

/// A claimed start in progress: if its future is dropped before it finishes, the pod ends
/// (failed), so that [`Pod::stop`] and [`Pod::wait`] do not wait for a start that never comes.
struct StartClaim<'a> {
    state: &'a PodState,
    done: bool,
}

impl Drop for StartClaim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .start_failed("the start was cancelled before it finished".into());
        }
    }
}

pub(super) use crate::sync::lock;
