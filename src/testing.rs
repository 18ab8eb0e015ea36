//! Testing components from `cargo test`: start a pod in-process, wait until it is ready, talk
//! to it, read its logs, restart a container, and get a failure message that explains itself.
//!
//! No Docker, no fixed ports, no sleeps: every [`TestPod`] has its own pod network (two tests
//! can both listen on pod port 8080), its front proxy listens on `127.0.0.1:0`, and every wait
//! watches the pod (its events, its output, its listeners) with a deadline. Components are
//! compiled once per process and cached on disk across runs (see [`engine`]), so a test pod of a
//! few containers starts in milliseconds.
//!
//! ```
//! use std::path::Path;
//! use wasmpod::testing::{TestPod, TestPodError};
//!
//! # async fn test() -> Result<(), TestPodError> {
//! let guests = Path::new(env!("WASMPOD_GUESTS_DIR"));
//! let pod = TestPod::builder("shop")
//!     .container("web", guests.join("webserver.wasm")) // a component file...
//!         .args(["8080"])
//!         .port(8080)
//!     .container("api", std::fs::read(guests.join("hello_http.wasm")).unwrap()) // ...or bytes
//!         .port(9000)
//!     .expose(8080)                                  // the front proxy, on 127.0.0.1:<free port>
//!     .start()
//!     .await?;
//! pod.wait_ready().await?;                           // every container ready, every port listening
//!
//! let hello = pod.get("/hello").await?;              // through the front proxy
//! assert_eq!(hello.text(), "hello from web\n");
//! assert!(pod.url().starts_with("http://127.0.0.1:"));
//!
//! let api = pod.get_port(9000, "/").await?;          // straight into a pod port, not exposed
//! assert_eq!(api.status(), 200);
//!
//! pod.wait_for_log("web", |line| line == "GET /hello").await?;
//! assert_eq!(pod.logs("web")[0], "listening on port 8080");
//!
//! pod.restart("web");                                // as `kubectl delete` would
//! pod.wait_ready().await?;                           // waits for the new run
//! assert_eq!(pod.status().container("web").unwrap().restart_count, 1);
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test()).unwrap();
//! ```
//!
//! When something goes wrong, the error says what was awaited, what was missing (which
//! container is not ready, and why) and then [`TestPod::explain`]: the pod's status, its recent
//! events and the last lines of every container. Its `Debug` form is the same text, so a test's
//! `.unwrap()` or `?` prints it readably. And a `TestPod` dropped while the test panics (a
//! failed `assert!`) prints that explanation too, so a red test always explains itself:
//!
//! ```text
//! test pod "shop": timed out after 30s waiting for the pod to be ready
//!   - container "web" is not ready: Waiting (BackOff 40ms), restarted 3 times, last exit: exited with code 1
//!
//! pod "shop": Running (started 30.01s ago)
//!   CONTAINER  KIND  STATE                   READY  RESTARTS  LAST EXIT
//!   web        app   Waiting (BackOff 40ms)  no     3         exited with code 1
//!   ...
//! events (last 40 of 57):
//!   +0.004s  web: started
//!   +0.005s  web: exited with code 1
//!   ...
//! logs of web (last 20 lines, `!` = stderr):
//!   ! cannot listen on port 8080: address in use
//! ```
//!
//! Pods from the builder get test timings: restarts back off from 10 ms to 1 s (not 10 s to
//! 5 min) and a container that ignores its closed stdin is cancelled 250 ms after
//! [`TestPod::stop`] (not 30 s). Pods from [`TestPod::from_file`] and [`TestPod::start`] keep
//! their spec's timings; [`with_test_timings`] applies the test ones to any spec.
//!
//! The runtime: plain `#[tokio::test]` (one thread) works, as does a multi-thread runtime.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::container::ContainerKind;
use crate::engine::{Engine, default_cache_dir};
use crate::logs::{LogLine, Stream};
use crate::net::{NetError, PodStream};
use crate::pod::{Pod, PodError, PodOptions, UpdateReport};
use crate::spec::{
    Backoff, ComponentSource, ContainerSpec, Dependency, DependencyCondition, Expose, MountSpec, PodSpec, Probe,
    RestartPolicy, SpecError, VolumeSource, VolumeSpec,
};
use crate::status::{ContainerState, PodPhase, PodStatus};

/// How long a wait lasts unless told otherwise ([`TestPodBuilder::deadline`],
/// [`TestPod::set_deadline`], [`TestPod::wait_ready_within`]). Generous: CI machines are
/// small and shared, and a passing test never waits for it.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Restart back-off of pods built with [`TestPod::builder`]: 10 ms doubling up to 1 s.
pub const TEST_RESTART_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_secs(1),
    reset_after: Duration::from_secs(10),
};

/// Termination grace period of pods built with [`TestPod::builder`].
pub const TEST_GRACE_PERIOD: Duration = Duration::from_millis(250);

/// Events shown by [`TestPod::explain`].
pub const EXPLAIN_EVENTS: usize = 40;
/// Lines per container shown by [`TestPod::explain`].
pub const EXPLAIN_LOG_LINES: usize = 20;

/// Waits re-check their condition at least this often, for what the pod does not signal
/// (files in a volume, a condition on anything else); events, output and listeners wake them
/// at once.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Gives a spec the test timings of [`TestPod::builder`] (fast restart back-off, short grace
/// period), e.g. for a spec file: `TestPod::start(with_test_timings(PodSpec::from_file(p)?))`.
pub fn with_test_timings(mut spec: PodSpec) -> PodSpec {
    spec.restart_backoff = TEST_RESTART_BACKOFF;
    spec.termination_grace_period = TEST_GRACE_PERIOD;
    spec
}

// ------------------------------------------------------------------------------------------
// The engine
// ------------------------------------------------------------------------------------------

/// The engine every test pod of this process runs on: a component is compiled at most once per
/// process, and once per machine thanks to the on-disk cache in [`cache_dir`].
pub fn engine() -> Result<Engine, TestPodError> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(engine) = ENGINE.get() {
        return Ok(engine.clone());
    }
    let created = if std::env::var_os("WASMPOD_CACHE_DIR").is_some() || default_cache_dir().is_some() {
        // The CLI's engine and cache: tests and `wasmpod run` share compiled components.
        Engine::shared()
    } else {
        Engine::new(private_temp_cache())
    };
    let engine = created.map_err(|e| TestPodError::Engine { message: e.to_string() })?;
    Ok(ENGINE.get_or_init(|| engine).clone())
}

/// Where [`engine`] caches compiled components: `$WASMPOD_CACHE_DIR` (empty: no cache), else
/// the CLI's cache (`$XDG_CACHE_HOME/wasmpod` or `~/.cache/wasmpod`), else a directory of this
/// user's own in the temporary directory. Point `WASMPOD_CACHE_DIR` at a directory your CI
/// caches to skip compilation on the next run.
pub fn cache_dir() -> Option<PathBuf> {
    match engine() {
        Ok(engine) => engine.cache_dir().map(Path::to_path_buf),
        Err(_) => None,
    }
}

/// `$TMP/wasmpod-test-cache-$UID`, only if it is this user's and nobody else can write it:
/// the cache holds native code that is loaded as is.
fn private_temp_cache() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("wasmpod-test-cache-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let metadata = std::fs::symlink_metadata(&dir).ok()?;
        let private = metadata.is_dir() && metadata.uid() == uid && metadata.permissions().mode() & 0o077 == 0;
        private.then_some(dir)
    }
    #[cfg(not(unix))]
    {
        Some(std::env::temp_dir().join("wasmpod-test-cache"))
    }
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// Why a test pod did not do what a test waited for. Its `Display` and `Debug` forms both end
/// with the pod's explanation ([`TestPod::explain`]: status, recent events, last logs), so
/// `.unwrap()` and `?` print why the test failed.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum TestPodError {
    /// The spec is invalid (nothing was started).
    #[error("the test pod's spec is invalid:\n{0}")]
    Spec(#[source] SpecError),
    /// The engine could not be created.
    #[error("cannot create the wasmtime engine for test pods: {message}")]
    Engine { message: String },
    /// The pod could not start (a component that does not compile, a volume, the proxy...).
    #[error("test pod {pod:?} did not start: {source}{}", section(explanation))]
    Start {
        pod: String,
        #[source]
        source: PodError,
        explanation: String,
    },
    /// The deadline passed before what was awaited happened.
    #[error("test pod {pod:?}: timed out after {} waiting for {what}{}{}", humantime::format_duration(*after), bullets(missing), section(explanation))]
    Timeout {
        pod: String,
        /// What was awaited, e.g. `the pod to be ready`.
        what: String,
        after: Duration,
        /// What was still missing at the deadline, e.g. `container "web" is not ready: ...`.
        missing: Vec<String>,
        explanation: String,
    },
    /// It can no longer happen: the pod ended, or a container will not run again.
    #[error("test pod {pod:?}: gave up waiting for {what}: {reason}{}", section(explanation))]
    Impossible {
        pod: String,
        what: String,
        reason: String,
        explanation: String,
    },
    /// A connection into the pod failed.
    #[error(
        "test pod {pod:?}: cannot connect to pod port {port}: {source}{}",
        section(explanation)
    )]
    Connect {
        pod: String,
        port: u16,
        #[source]
        source: NetError,
        explanation: String,
    },
    /// An update of the running pod was refused or failed ([`TestPod::update`]); the pod runs
    /// as before.
    #[error("test pod {pod:?}: the update failed: {source}{}", section(explanation))]
    Update {
        pod: String,
        /// Boxed: the error stays small enough to return by value.
        #[source]
        source: Box<PodError>,
        explanation: String,
    },
    /// An HTTP request to the pod failed (no response, not a non-2xx status: that is a response).
    #[error("test pod {pod:?}: {request} failed: {message}{}", section(explanation))]
    Http {
        pod: String,
        request: String,
        message: String,
        explanation: String,
    },
}

impl TestPodError {
    /// The pod's explanation at the time of the error, if a pod existed.
    pub fn explanation(&self) -> Option<&str> {
        match self {
            TestPodError::Spec(_) | TestPodError::Engine { .. } => None,
            TestPodError::Start { explanation, .. }
            | TestPodError::Timeout { explanation, .. }
            | TestPodError::Impossible { explanation, .. }
            | TestPodError::Connect { explanation, .. }
            | TestPodError::Update { explanation, .. }
            | TestPodError::Http { explanation, .. } => Some(explanation),
        }
    }
}

/// `unwrap()` and a test returning `Err` print `Debug`: make it the readable text, not a struct
/// dump with escaped newlines.
impl fmt::Debug for TestPodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn section(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("\n\n{text}")
    }
}

fn bullets(items: &[String]) -> String {
    items.iter().map(|item| format!("\n  - {item}")).collect()
}

// ------------------------------------------------------------------------------------------
// Components given as paths or bytes
// ------------------------------------------------------------------------------------------

/// Anything that names a component: a path (`&str`, `String`, `&Path`, `PathBuf`; relative
/// paths resolve against the current directory, which `cargo test` sets to the package root)
/// or the component's bytes (`Vec<u8>`, `&[u8]`, `include_bytes!(..)`, `Arc<[u8]>`).
pub trait IntoComponent {
    fn into_component(self) -> ComponentSource;
}

fn file(path: &Path) -> ComponentSource {
    ComponentSource::File(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

impl IntoComponent for ComponentSource {
    fn into_component(self) -> ComponentSource {
        match self {
            ComponentSource::File(path) => file(&path),
            bytes => bytes,
        }
    }
}
impl IntoComponent for PathBuf {
    fn into_component(self) -> ComponentSource {
        file(&self)
    }
}
impl IntoComponent for &PathBuf {
    fn into_component(self) -> ComponentSource {
        file(self)
    }
}
impl IntoComponent for &Path {
    fn into_component(self) -> ComponentSource {
        file(self)
    }
}
impl IntoComponent for &str {
    fn into_component(self) -> ComponentSource {
        file(Path::new(self))
    }
}
impl IntoComponent for String {
    fn into_component(self) -> ComponentSource {
        file(Path::new(&self))
    }
}
impl IntoComponent for Vec<u8> {
    fn into_component(self) -> ComponentSource {
        ComponentSource::Bytes(self.into())
    }
}
impl IntoComponent for &[u8] {
    fn into_component(self) -> ComponentSource {
        ComponentSource::Bytes(self.into())
    }
}
impl IntoComponent for &Vec<u8> {
    fn into_component(self) -> ComponentSource {
        ComponentSource::Bytes(self.as_slice().into())
    }
}
impl<const N: usize> IntoComponent for &[u8; N] {
    fn into_component(self) -> ComponentSource {
        ComponentSource::Bytes(self.as_slice().into())
    }
}
impl IntoComponent for Arc<[u8]> {
    fn into_component(self) -> ComponentSource {
        ComponentSource::Bytes(self)
    }
}
impl IntoComponent for Bytes {
    fn into_component(self) -> ComponentSource {
        ComponentSource::Bytes(self.as_ref().into())
    }
}

// ------------------------------------------------------------------------------------------
// The builder
// ------------------------------------------------------------------------------------------

/// Builds a test pod in Rust; from [`TestPod::builder`]. Each [`container`](Self::container)
/// call returns a [`TestContainerBuilder`] for that container's settings, which also accepts
/// every pod-level call (the next container, `expose`, `start`...), so one chain describes the
/// whole pod.
#[must_use = "a builder does nothing until `.start().await`"]
pub struct TestPodBuilder {
    spec: PodSpec,
    deadline: Duration,
    engine: Option<Engine>,
}

impl TestPodBuilder {
    fn new(name: &str) -> TestPodBuilder {
        TestPodBuilder {
            spec: with_test_timings(PodSpec::new(name)),
            deadline: DEFAULT_DEADLINE,
            engine: None,
        }
    }

    /// Adds an app container running `component` (a path or bytes, see [`IntoComponent`]).
    pub fn container(self, name: &str, component: impl IntoComponent) -> TestContainerBuilder {
        TestContainerBuilder {
            pod: self,
            container: ContainerSpec::new(name, component.into_component()),
            init: false,
        }
    }

    /// Adds an init container: init containers run one after another, each to exit 0, before
    /// the app containers start.
    pub fn init_container(self, name: &str, component: impl IntoComponent) -> TestContainerBuilder {
        TestContainerBuilder {
            pod: self,
            container: ContainerSpec::new(name, component.into_component()),
            init: true,
        }
    }

    /// Adds a container spec as is.
    pub fn add_container(mut self, container: ContainerSpec) -> Self {
        self.spec.containers.push(container);
        self
    }

    /// Adds an init container spec as is.
    pub fn add_init_container(mut self, container: ContainerSpec) -> Self {
        self.spec.init_containers.push(container);
        self
    }

    /// Exposes pod port `port` through the front proxy (on `127.0.0.1:0`; see [`TestPod::url`]).
    pub fn expose(mut self, port: u16) -> Self {
        self.spec.expose = Some(Expose::new(port));
        self
    }

    /// Declares an `empty_dir` volume: a fresh directory that lives as long as the pod.
    pub fn empty_dir(self, volume: &str) -> Self {
        self.volume(volume, VolumeSource::EmptyDir)
    }

    /// Declares a `host_path` volume: an existing host directory (e.g. a `tempfile::TempDir`).
    pub fn host_path(self, volume: &str, dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.volume(volume, VolumeSource::HostPath(dir))
    }

    /// Declares a `secret` volume: one read-only file per `(name, contents)`.
    pub fn secret<K: Into<String>, V: Into<String>>(
        self,
        volume: &str,
        files: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let files = files.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self.volume(volume, VolumeSource::Secret(files))
    }

    fn volume(mut self, name: &str, source: VolumeSource) -> Self {
        self.spec.volumes.push(VolumeSpec {
            name: name.to_string(),
            source,
        });
        self
    }

    /// The pod's restart policy (default `always`, as in Kubernetes).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.spec.restart_policy = policy;
        self
    }

    /// Restart back-off (default [`TEST_RESTART_BACKOFF`]).
    pub fn restart_backoff(mut self, backoff: Backoff) -> Self {
        self.spec.restart_backoff = backoff;
        self
    }

    /// How long a container may take to exit after its stdin closes when the pod stops
    /// (default [`TEST_GRACE_PERIOD`]).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.spec.termination_grace_period = grace;
        self
    }

    /// How long the front proxy holds a connection while the pod is not ready.
    pub fn readiness_wait(mut self, wait: Duration) -> Self {
        self.spec.readiness_wait = wait;
        self
    }

    /// The deadline of this pod's waits (default [`DEFAULT_DEADLINE`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs the pod on this engine instead of the shared test [`engine`].
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Changes anything else of the spec.
    pub fn configure(mut self, change: impl FnOnce(&mut PodSpec)) -> Self {
        change(&mut self.spec);
        self
    }

    /// The spec built so far.
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    /// The finished spec, e.g. to start it another way.
    pub fn into_spec(self) -> PodSpec {
        self.spec
    }

    /// Validates the spec, compiles (or loads) the components and starts the pod. It does not
    /// wait for readiness: call [`TestPod::wait_ready`].
    pub async fn start(self) -> Result<TestPod, TestPodError> {
        TestPod::launch(self.spec, self.engine, self.deadline).await
    }
}

/// One container of a [`TestPodBuilder`]: set its args, env, ports and mounts, then go on with
/// the next container or any pod-level call.
#[must_use = "a builder does nothing until `.start().await`"]
pub struct TestContainerBuilder {
    pod: TestPodBuilder,
    container: ContainerSpec,
    init: bool,
}

impl TestContainerBuilder {
    /// Appends one argument (`argv[1..]`; `argv[0]` is the container name).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.container.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.container.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable (the only environment the container sees).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.container.env.insert(key.into(), value.into());
        self
    }

    /// Sets environment variables.
    pub fn envs<K: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.container
            .env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// A pod port the container listens on; [`TestPod::wait_ready`] waits for it.
    pub fn port(mut self, port: u16) -> Self {
        self.container.ports.push(port);
        self
    }

    /// Pod ports the container listens on.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.container.ports.extend(ports);
        self
    }

    /// Mounts a volume of the pod read-write at `path` (e.g. `/data`).
    pub fn mount(mut self, volume: &str, path: &str) -> Self {
        self.container.volume_mounts.push(MountSpec {
            volume: volume.into(),
            mount_path: path.into(),
            read_only: false,
        });
        self
    }

    /// Mounts a volume of the pod read-only at `path`.
    pub fn mount_read_only(mut self, volume: &str, path: &str) -> Self {
        self.container.volume_mounts.push(MountSpec {
            volume: volume.into(),
            mount_path: path.into(),
            read_only: true,
        });
        self
    }

    /// Allows connections to a destination outside the pod, as `HOST:PORT` (see
    /// [`crate::net::EgressPolicy`]).
    pub fn allow_outbound(mut self, destination: impl Into<String>) -> Self {
        let destination = destination.into();
        // A bad rule here is a typo in the test itself: fail at the line that wrote it.
        if let Err(error) = self.container.allowed_outbound_hosts.allow(&destination) {
            panic!("allow_outbound({destination:?}): {error}");
        }
        self
    }

    /// Starts this container only once `container` has reached `condition`.
    pub fn depends_on(mut self, container: &str, condition: DependencyCondition) -> Self {
        self.container.depends_on.push(Dependency {
            container: container.into(),
            condition,
        });
        self
    }

    /// A readiness probe: while it fails, the container is not ready.
    pub fn readiness_probe(mut self, probe: Probe) -> Self {
        self.container.readiness_probe = Some(probe);
        self
    }

    /// A liveness probe: failing it restarts the container.
    pub fn liveness_probe(mut self, probe: Probe) -> Self {
        self.container.liveness_probe = Some(probe);
        self
    }

    /// A startup probe: holds readiness and liveness probing off until it passes once.
    pub fn startup_probe(mut self, probe: Probe) -> Self {
        self.container.startup_probe = Some(probe);
        self
    }

    /// A memory limit in bytes.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.container.resources.memory = Some(bytes);
        self
    }

    /// A CPU limit, as a share of one core.
    pub fn cpu_limit(mut self, cores: f64) -> Self {
        self.container.resources.cpu = Some(cores);
        self
    }

    /// Changes anything else of this container's spec.
    pub fn configure_container(mut self, change: impl FnOnce(&mut ContainerSpec)) -> Self {
        change(&mut self.container);
        self
    }

    /// Done with this container; back to the pod.
    pub fn done(self) -> TestPodBuilder {
        let TestContainerBuilder {
            mut pod,
            container,
            init,
        } = self;
        if init {
            pod.spec.init_containers.push(container);
        } else {
            pod.spec.containers.push(container);
        }
        pod
    }

    // Pod-level calls, so one chain can describe the whole pod.

    /// See [`TestPodBuilder::container`].
    pub fn container(self, name: &str, component: impl IntoComponent) -> TestContainerBuilder {
        self.done().container(name, component)
    }
    /// See [`TestPodBuilder::init_container`].
    pub fn init_container(self, name: &str, component: impl IntoComponent) -> TestContainerBuilder {
        self.done().init_container(name, component)
    }
    /// See [`TestPodBuilder::add_container`].
    pub fn add_container(self, container: ContainerSpec) -> TestPodBuilder {
        self.done().add_container(container)
    }
    /// See [`TestPodBuilder::expose`].
    pub fn expose(self, port: u16) -> TestPodBuilder {
        self.done().expose(port)
    }
    /// See [`TestPodBuilder::empty_dir`].
    pub fn empty_dir(self, volume: &str) -> TestPodBuilder {
        self.done().empty_dir(volume)
    }
    /// See [`TestPodBuilder::host_path`].
    pub fn host_path(self, volume: &str, dir: impl AsRef<Path>) -> TestPodBuilder {
        self.done().host_path(volume, dir)
    }
    /// See [`TestPodBuilder::secret`].
    pub fn secret<K: Into<String>, V: Into<String>>(
        self,
        volume: &str,
        files: impl IntoIterator<Item = (K, V)>,
    ) -> TestPodBuilder {
        self.done().secret(volume, files)
    }
    /// See [`TestPodBuilder::restart_policy`].
    pub fn restart_policy(self, policy: RestartPolicy) -> TestPodBuilder {
        self.done().restart_policy(policy)
    }
    /// See [`TestPodBuilder::restart_backoff`].
    pub fn restart_backoff(self, backoff: Backoff) -> TestPodBuilder {
        self.done().restart_backoff(backoff)
    }
    /// See [`TestPodBuilder::grace_period`].
    pub fn grace_period(self, grace: Duration) -> TestPodBuilder {
        self.done().grace_period(grace)
    }
    /// See [`TestPodBuilder::readiness_wait`].
    pub fn readiness_wait(self, wait: Duration) -> TestPodBuilder {
        self.done().readiness_wait(wait)
    }
    /// See [`TestPodBuilder::deadline`].
    pub fn deadline(self, deadline: Duration) -> TestPodBuilder {
        self.done().deadline(deadline)
    }
    /// See [`TestPodBuilder::engine`].
    pub fn engine(self, engine: Engine) -> TestPodBuilder {
        self.done().engine(engine)
    }
    /// See [`TestPodBuilder::configure`].
    pub fn configure(self, change: impl FnOnce(&mut PodSpec)) -> TestPodBuilder {
        self.done().configure(change)
    }
    /// See [`TestPodBuilder::into_spec`].
    pub fn into_spec(self) -> PodSpec {
        self.done().into_spec()
    }
    /// See [`TestPodBuilder::start`].
    pub async fn start(self) -> Result<TestPod, TestPodError> {
        self.done().start().await
    }
}

impl From<TestContainerBuilder> for TestPodBuilder {
    fn from(container: TestContainerBuilder) -> Self {
        container.done()
    }
}

// ------------------------------------------------------------------------------------------
// The test pod
// ------------------------------------------------------------------------------------------

/// A started pod for a test: wait for it, talk to it, read it, restart its containers. Dropping
/// it stops the pod at once (no grace period); if the test is panicking, it first prints
/// [`TestPod::explain`] to stderr, which the test harness shows with the failure.
pub struct TestPod {
    pod: Pod,
    engine: Engine,
    deadline: Duration,
    started: Instant,
    started_at: SystemTime,
    /// Per container, the restart count a requested restart will reach (see [`TestPod::restart`]).
    restarts: Mutex<HashMap<String, u32>>,
    /// Whether the container runs `wasi:cli/run` (restartable) rather than serving http.
    kinds: Mutex<HashMap<String, Option<ContainerKind>>>,
    /// An error carrying the explanation was handed out and nothing succeeded since: a panic
    /// now most likely printed it already.
    explained: AtomicBool,
}

/// What a wait's condition says.
enum Check<T> {
    /// It holds.
    Done(T),
    /// Not yet, and what is missing.
    NotYet(Vec<String>),
    /// It never will.
    Impossible(String),
}

impl TestPod {
    /// Reads a `wasmpod.toml`, starts the pod with its front proxy on `127.0.0.1:0`, and
    /// returns without waiting for readiness ([`TestPod::wait_ready`]).
    pub async fn from_file(path: impl AsRef<Path>) -> Result<TestPod, TestPodError> {
        let spec = PodSpec::from_file(path).map_err(TestPodError::Spec)?;
        TestPod::start(spec).await
    }

    /// Starts a spec built or edited in Rust, front proxy on `127.0.0.1:0`.
    pub async fn start(spec: PodSpec) -> Result<TestPod, TestPodError> {
        TestPod::launch(spec, None, DEFAULT_DEADLINE).await
    }

    /// A pod described in Rust; components as paths or bytes. See [`TestPodBuilder`].
    pub fn builder(name: &str) -> TestPodBuilder {
        TestPodBuilder::new(name)
    }

    async fn launch(spec: PodSpec, engine: Option<Engine>, deadline: Duration) -> Result<TestPod, TestPodError> {
        let engine = match engine {
            Some(engine) => engine,
            None => self::engine()?,
        };
        let options = PodOptions {
            engine: Some(engine.clone()),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..PodOptions::default()
        };
        let pod = Pod::with_options(spec, options).map_err(|error| match error {
            PodError::Spec(error) => TestPodError::Spec(error),
            other => TestPodError::Engine {
                message: other.to_string(),
            },
        })?;
        let pod = TestPod {
            pod,
            engine,
            deadline,
            started: Instant::now(),
            started_at: SystemTime::now(),
            restarts: Mutex::new(HashMap::new()),
            kinds: Mutex::new(HashMap::new()),
            explained: AtomicBool::new(false),
        };
        if let Err(source) = pod.pod.start().await {
            let explanation = pod.explained();
            return Err(TestPodError::Start {
                pod: pod.name().to_string(),
                source,
                explanation,
            });
        }
        Ok(pod)
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.pod.spec().name
    }

    /// The pod underneath, for everything else (`events()`, `output().tail(..)`, `network()`).
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Injects a network fault on the pod's links; it is removed when the guard is dropped:
    /// `let _slow = pod.fault(Fault::new(FaultKind::Down, "db:5432".parse()?));`
    pub fn fault(&self, fault: crate::net::fault::Fault) -> crate::net::fault::FaultGuard {
        self.pod.add_fault(fault)
    }

    /// The deadline of this pod's waits.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Changes the deadline of this pod's waits.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// Waits until the pod is ready, within the pod's deadline (default 30 s): the pod is
    /// running (its init containers succeeded), every app container is ready (running, and past
    /// its startup and readiness probes if it has them), something listens on every port a
    /// container lists in `ports`, and every restart asked for with [`TestPod::restart`] has
    /// happened. Fails at once when that can no longer happen (the pod ended, or a container
    /// exited for good); the error names the containers that are not ready, and why.
    pub async fn wait_ready(&self) -> Result<(), TestPodError> {
        self.wait_ready_within(self.deadline).await
    }

    /// [`TestPod::wait_ready`] with another deadline.
    pub async fn wait_ready_within(&self, deadline: Duration) -> Result<(), TestPodError> {
        let ports: Vec<u16> = self
            .pod
            .spec()
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().copied())
            .collect();
        self.wait("the pod to be ready", deadline, &ports, |this| this.readiness())
            .await
    }

    fn readiness(&self) -> Check<()> {
        let status = self.pod.status();
        let spec = self.pod.spec();
        match &status.phase {
            PodPhase::Running => {}
            PodPhase::Pending | PodPhase::Initializing => {
                let mut missing = vec![format!("the pod is {} (init containers not done)", status.phase)];
                missing.extend(
                    status
                        .containers
                        .iter()
                        .filter(|c| c.init && c.last_exit.as_ref().is_none_or(|e| !e.is_success()))
                        .map(|c| format!("init container {:?}: {}", c.name, describe(c))),
                );
                return Check::NotYet(missing);
            }
            ended => return Check::Impossible(format!("the pod ended: {ended}")),
        }
        let restarts = lock(&self.restarts).clone();
        let mut missing = Vec::new();
        for container in status.containers.iter().filter(|c| !c.init) {
            let name = &container.name;
            if let ContainerState::Terminated { exit, .. } = &container.state {
                let restarts = match spec.restart_policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !exit.is_success(),
                    RestartPolicy::Never => false,
                };
                if !restarts {
                    return Check::Impossible(format!(
                        "container {name:?} {exit} and will not run again (restart policy {:?})",
                        spec.restart_policy
                    ));
                }
            }
            if let Some(&wanted) = restarts.get(name)
                && container.restart_count < wanted
            {
                missing.push(format!(
                    "container {name:?} has not restarted yet (asked with restart())"
                ));
            } else if !container.ready {
                missing.push(format!("container {name:?} is not ready: {}", describe(container)));
            } else {
                let ports = spec
                    .containers
                    .iter()
                    .filter(|c| &c.name == name)
                    .flat_map(|c| c.ports.iter());
                for &port in ports {
                    if !self.pod.network().is_listening(port) {
                        missing.push(format!(
                            "container {name:?} does not listen on pod port {port} yet: {}",
                            describe(container)
                        ));
                    }
                }
            }
        }
        if missing.is_empty() {
            Check::Done(())
        } else {
            Check::NotYet(missing)
        }
    }

    /// Waits until the pod has ended (every container done, or the pod failed) and returns its
    /// final status; fails at the deadline.
    pub async fn wait_finished(&self) -> Result<PodStatus, TestPodError> {
        self.wait("the pod to end", self.deadline, &[], |this| {
            let status = this.pod.status();
            if status.phase.is_terminal() {
                Check::Done(status)
            } else {
                let running: Vec<String> = status
                    .containers
                    .iter()
                    .filter(|c| !matches!(c.state, ContainerState::Terminated { .. }))
                    .map(|c| format!("container {:?} is {}", c.name, c.state))
                    .collect();
                Check::NotYet(running)
            }
        })
        .await
    }

    /// The front proxy's URL, `http://127.0.0.1:PORT`. Panics if the spec exposes no port.
    pub fn url(&self) -> String {
        match self.proxy_addr() {
            Some(addr) => format!("http://{addr}"),
            None => panic!(
                "test pod {:?} has no front proxy: its spec exposes no port. Expose one \
                 (`[expose] port = N`, or `.expose(N)` on the builder), or use \
                 `connect(port)`/`get_port(port, path)` to reach a pod port directly",
                self.name()
            ),
        }
    }

    /// The front proxy's host address, if the spec exposes a port.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.pod.proxy_addr()
    }

    /// Opens a connection straight into pod port `port` (any container's, exposed or not),
    /// waiting up to the deadline for something to listen there.
    pub async fn connect(&self, port: u16) -> Result<PodStream, TestPodError> {
        let what = format!("a listener on pod port {port}");
        let network = self.pod.network().clone();
        let connected = self
            .wait(&what, self.deadline, &[port], |this| {
                if this.pod.status().phase.is_terminal() {
                    return Check::Impossible(format!("the pod ended: {}", this.pod.status().phase));
                }
                match network.connect(port) {
                    Ok(stream) => Check::Done(Ok(stream)),
                    Err(NetError::ConnectionRefused) => Check::NotYet(vec![format!(
                        "nothing listens on pod port {port} (or its backlog is full)"
                    )]),
                    Err(error) => Check::Done(Err(error)),
                }
            })
            .await?;
        connected.map_err(|source| {
            let explanation = self.explained();
            TestPodError::Connect {
                pod: self.name().to_string(),
                port,
                source,
                explanation,
            }
        })
    }

    /// The output lines a container wrote so far (the last 1000), oldest first, stdout and
    /// stderr interleaved. Panics if the pod has no such container.
    pub fn logs(&self, container: &str) -> Vec<String> {
        self.expect_container(container, "logs");
        self.pod.output().text(container)
    }

    /// Waits until `container` writes a line for which `matches` holds (lines it wrote before
    /// count too) and returns that line. Fails at the deadline, or at once when the pod ends.
    pub async fn wait_for_log(
        &self,
        container: &str,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String, TestPodError> {
        self.expect_container(container, "wait_for_log");
        // A cursor, so no line is skipped however fast the container writes.
        let mut tail = self.pod.output().tail(container, None);
        let mut seen = 0usize;
        let what = format!("a matching line from container {container:?}");
        self.wait(&what, self.deadline, &[], |this| {
            let read = tail.read();
            seen += read.lines.len();
            if let Some(line) = read.lines.into_iter().find(|line| matches(&line.text)) {
                return Check::Done(line.text);
            }
            let phase = this.pod.status().phase;
            if phase.is_terminal() {
                return Check::Impossible(format!("the pod ended ({phase}) and {container:?} will write no more"));
            }
            Check::NotYet(vec![format!("none of the {seen} lines {container:?} wrote matches")])
        })
        .await
    }

    /// Waits until `condition` holds for the pod, re-checking it whenever the pod changes
    /// (an event, an output line) and at least every 10 ms; `what` names it in the error. Fails
    /// at the deadline, or at once if the pod ended while the condition does not hold.
    pub async fn wait_until(&self, what: &str, mut condition: impl FnMut(&Pod) -> bool) -> Result<(), TestPodError> {
        self.wait(what, self.deadline, &[], |this| {
            // Read the phase first: if it was over before the check, the check saw the end.
            let ended = this.pod.status().phase.is_terminal();
            if condition(&this.pod) {
                Check::Done(())
            } else if ended {
                Check::Impossible(format!("the pod ended ({})", this.pod.status().phase))
            } else {
                Check::NotYet(Vec::new())
            }
        })
        .await
    }

    /// A snapshot of the pod's phase and containers.
    pub fn status(&self) -> PodStatus {
        self.pod.status()
    }

    /// Restarts a running container now, whatever the restart policy (its run is cancelled,
    /// its connections reset and its ports released); the next [`TestPod::wait_ready`] waits
    /// for the new run. A container waiting out its back-off, and an http container (a fresh
    /// instance per request, nothing to restart), are left alone. Panics if the pod has no
    /// such container.
    pub fn restart(&self, container: &str) {
        self.expect_container(container, "restart");
        let Some(status) = self.pod.status().container(container).cloned() else {
            return;
        };
        let restartable = !status.init
            && matches!(status.state, ContainerState::Running { .. })
            && self.kind(container) == Some(ContainerKind::Command);
        if restartable {
            lock(&self.restarts).insert(container.to_string(), status.restart_count + 1);
        }
        self.pod.restart(container);
    }

    /// The kind of a container's component (from the engine's in-memory cache), remembered.
    fn kind(&self, container: &str) -> Option<ContainerKind> {
        if let Some(kind) = lock(&self.kinds).get(container) {
            return *kind;
        }
        let spec = self.pod.spec().all_containers().find(|c| c.name == container)?;
        let compiled = match &spec.component {
            ComponentSource::File(path) => self.engine.compile_file(path, container),
            ComponentSource::Bytes(bytes) => self.engine.compile(bytes, container),
            // Not resolved here: the kind of an image's component is not known to the harness.
            ComponentSource::Image(_) => return None,
        };
        let kind = compiled
            .ok()
            .and_then(|compiled| ContainerKind::of(self.engine.wasmtime(), &compiled.component));
        lock(&self.kinds).insert(container.to_string(), kind);
        kind
    }

    /// Applies a new spec to the running pod ([`Pod::update`]): unchanged containers are
    /// untouched, changed ones swapped; returns once every new version serves. A refused or
    /// failed update changes nothing and says why.
    pub async fn update(&self, spec: PodSpec) -> Result<UpdateReport, TestPodError> {
        match self.pod.update(spec).await {
            Ok(report) => Ok(report),
            Err(source) => Err(TestPodError::Update {
                pod: self.name().to_string(),
                source: Box::new(source),
                explanation: self.explained(),
            }),
        }
    }

    /// Swaps one container's component (a path or bytes, as in the builder) and leaves the rest
    /// of the spec the pod runs as it is. Panics if the pod has no such container.
    pub async fn replace_component(
        &self,
        container: &str,
        component: impl IntoComponent,
    ) -> Result<UpdateReport, TestPodError> {
        self.expect_container(container, "replace the component of");
        let mut spec = self.pod.current_spec();
        let source = component.into_component();
        for slot in spec.init_containers.iter_mut().chain(spec.containers.iter_mut()) {
            if slot.name == container {
                slot.component = source.clone();
            }
        }
        self.update(spec).await
    }

    /// The host directory behind a volume while the pod runs (`empty_dir`s and secrets are
    /// removed when it ends).
    pub fn volume_dir(&self, volume: &str) -> Option<PathBuf> {
        self.pod.volume_dir(volume)
    }

    /// Stops the pod: each container's stdin closes, it gets the grace period to exit, then it
    /// is cancelled; volumes are removed. Returns the final status.
    pub async fn stop(self) -> PodStatus {
        self.pod.stop().await
    }

    /// GET `path` through the front proxy (see [`TestPod::url`]); a response of any status is
    /// `Ok`. Bounded by the deadline.
    pub async fn get(&self, path: &str) -> Result<TestResponse, TestPodError> {
        self.request(http::Method::GET, path, Bytes::new()).await
    }

    /// POST `body` to `path` through the front proxy.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Result<TestResponse, TestPodError> {
        self.request(http::Method::POST, path, body.into()).await
    }

    /// A request through the front proxy.
    pub async fn request(&self, method: http::Method, path: &str, body: Bytes) -> Result<TestResponse, TestPodError> {
        let addr = match self.proxy_addr() {
            Some(addr) => addr,
            None => {
                return Err(self.http_error(
                    &format!("{method} {path}"),
                    "the pod exposes no port (use get_port to reach a pod port directly)".into(),
                ));
            }
        };
        let described = format!("{method} {} through the front proxy", self.url_of(addr, path));
        let io = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| self.http_error(&described, format!("cannot connect to {addr}: {e}")))?;
        self.send(io, &addr.to_string(), method, path, body, &described).await
    }

    /// GET `path` straight from pod port `port` (exposed or not; the webserver or http
    /// container listening there), waiting for a listener as [`TestPod::connect`] does.
    pub async fn get_port(&self, port: u16, path: &str) -> Result<TestResponse, TestPodError> {
        self.request_port(port, http::Method::GET, path, Bytes::new()).await
    }

    /// A request straight to pod port `port`.
    pub async fn request_port(
        &self,
        port: u16,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<TestResponse, TestPodError> {
        let io = self.connect(port).await?;
        let described = format!("{method} {path} on pod port {port}");
        self.send(io, &format!("localhost:{port}"), method, path, body, &described)
            .await
    }

    async fn send<IO>(
        &self,
        io: IO,
        host: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
        described: &str,
    ) -> Result<TestResponse, TestPodError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Full::new(body))
            .map_err(|e| self.http_error(described, format!("invalid request: {e}")))?;
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            let driver = tokio::spawn(connection);
            let result = async {
                let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| format!("reading the body: {e}"))?
                    .to_bytes();
                Ok::<_, String>(TestResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            }
            .await;
            driver.abort();
            result
        };
        match tokio::time::timeout(self.deadline, exchange).await {
            Ok(Ok(response)) => {
                self.explained.store(false, Ordering::Relaxed);
                Ok(response)
            }
            Ok(Err(message)) => Err(self.http_error(described, message)),
            Err(_) => Err(self.http_error(
                described,
                format!("no response within {}", humantime::format_duration(self.deadline)),
            )),
        }
    }

    fn url_of(&self, addr: SocketAddr, path: &str) -> String {
        format!("http://{addr}{path}")
    }

    fn http_error(&self, request: &str, message: String) -> TestPodError {
        let explanation = self.explained();
        TestPodError::Http {
            pod: self.name().to_string(),
            request: request.to_string(),
            message,
            explanation,
        }
    }

    /// The pod's status, its recent events and the last lines of every container: what a
    /// failing test needs to say why.
    pub fn explain(&self) -> String {
        use std::fmt::Write as _;
        let status = self.pod.status();
        let mut text = String::new();
        let _ = writeln!(
            text,
            "pod {:?}: {} (started {} ago)",
            status.name,
            status.phase,
            format_duration(self.started.elapsed())
        );
        let rows: Vec<[String; 6]> = status
            .containers
            .iter()
            .map(|c| {
                [
                    c.name.clone(),
                    if c.init { "init" } else { "app" }.to_string(),
                    c.state.to_string(),
                    if c.ready { "yes" } else { "no" }.to_string(),
                    c.restart_count.to_string(),
                    c.last_exit
                        .as_ref()
                        .map_or_else(|| "-".to_string(), ToString::to_string),
                ]
            })
            .collect();
        let header = ["CONTAINER", "KIND", "STATE", "READY", "RESTARTS", "LAST EXIT"].map(String::from);
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                std::iter::once(&header)
                    .chain(&rows)
                    .map(|row| row[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::from(" ");
            for (cell, width) in row.iter().zip(&widths) {
                let _ = write!(line, " {cell:width$} ");
            }
            let _ = writeln!(text, "{}", line.trim_end());
        }
        let events = self.pod.events().all();
        let shown = events.len().min(EXPLAIN_EVENTS);
        if events.len() > shown {
            let _ = writeln!(text, "events (last {shown} of {}):", events.len());
        } else {
            let _ = writeln!(text, "events:");
        }
        for event in &events[events.len() - shown..] {
            let _ = writeln!(text, "  {:>9}  {event}", self.offset(event.at));
        }
        for container in self.pod.spec().all_containers() {
            let lines: Vec<LogLine> = self.pod.logs(&container.name);
            if lines.is_empty() {
                let _ = writeln!(text, "logs of {}: (none)", container.name);
                continue;
            }
            let shown = lines.len().min(EXPLAIN_LOG_LINES);
            let which = if lines.len() > shown {
                format!("last {shown} of {} lines", lines.len())
            } else {
                "all".into()
            };
            let _ = writeln!(text, "logs of {} ({which}; `!` = stderr):", container.name);
            for line in &lines[lines.len() - shown..] {
                let mark = if line.stream == Stream::Stderr { '!' } else { '|' };
                let _ = writeln!(text, "  {mark} {}", line.text);
            }
        }
        text.truncate(text.trim_end().len());
        text
    }

    /// Time since the pod was created, as `+1.234s`.
    fn offset(&self, at: SystemTime) -> String {
        match at.duration_since(self.started_at) {
            Ok(after) => format!("+{:.3}s", after.as_secs_f64()),
            Err(before) => format!("-{:.3}s", before.duration().as_secs_f64()),
        }
    }

    /// The explanation, for an error about to be handed out.
    fn explained(&self) -> String {
        self.explained.store(true, Ordering::Relaxed);
        self.explain()
    }

    fn expect_container(&self, container: &str, call: &str) {
        if !self.pod.spec().all_containers().any(|c| c.name == container) {
            let names: Vec<&str> = self.pod.spec().all_containers().map(|c| c.name.as_str()).collect();
            panic!(
                "{call}({container:?}): test pod {:?} has no container {container:?}; its containers are: {}",
                self.name(),
                names.join(", ")
            );
        }
    }

    /// Re-checks `check` whenever the pod may have changed until it is done, impossible, or
    /// the deadline passes. Wakes on: a new event, a new output line of any container, a
    /// listener on one of `ports`, and every [`POLL_INTERVAL`].
    async fn wait<T>(
        &self,
        what: &str,
        deadline: Duration,
        ports: &[u16],
        mut check: impl FnMut(&TestPod) -> Check<T>,
    ) -> Result<T, TestPodError> {
        let until = tokio::time::Instant::now() + deadline;
        let names: Vec<String> = self.pod.spec().all_containers().map(|c| c.name.clone()).collect();
        loop {
            // Cursors first, then the check: whatever changes after the check wakes us.
            let mut events = self.pod.events().tail(Some(0));
            let mut tails: Vec<_> = names.iter().map(|name| self.pod.output().tail(name, Some(0))).collect();
            let missing = match check(self) {
                Check::Done(value) => {
                    self.explained.store(false, Ordering::Relaxed);
                    return Ok(value);
                }
                Check::Impossible(reason) => {
                    let explanation = self.explained();
                    return Err(TestPodError::Impossible {
                        pod: self.name().to_string(),
                        what: what.to_string(),
                        reason,
                        explanation,
                    });
                }
                Check::NotYet(missing) => missing,
            };
            if tokio::time::Instant::now() >= until {
                let explanation = self.explained();
                return Err(TestPodError::Timeout {
                    pod: self.name().to_string(),
                    what: what.to_string(),
                    after: deadline,
                    missing,
                    explanation,
                });
            }
            let network = self.pod.network();
            let mut wakers: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::with_capacity(tails.len() + 3);
            wakers.push(Box::pin(async {
                events.next().await;
            }));
            for tail in &mut tails {
                wakers.push(Box::pin(async move {
                    tail.next().await;
                }));
            }
            for &port in ports {
                if !network.is_listening(port) {
                    wakers.push(Box::pin(network.wait_listening(port)));
                }
            }
            let next_check = (tokio::time::Instant::now() + POLL_INTERVAL).min(until);
            wakers.push(Box::pin(tokio::time::sleep_until(next_check)));
            std::future::poll_fn(|cx| {
                if wakers.iter_mut().any(|waker| waker.as_mut().poll(cx).is_ready()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

impl fmt::Debug for TestPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPod")
            .field("name", &self.name())
            .field("phase", &self.pod.status().phase)
            .field("proxy_addr", &self.proxy_addr())
            .finish_non_exhaustive()
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if self.explained.load(Ordering::Relaxed) {
                eprintln!(
                    "wasmpod: test pod {:?} dropped while the test panicked; its logs and events are in the error above",
                    self.name()
                );
            } else {
                eprintln!(
                    "wasmpod: test pod {:?} dropped while the test panicked:\n{}",
                    self.name(),
                    self.explain()
                );
            }
        }
        // Dropping the `Pod` stops it at once.
    }
}

/// A response from [`TestPod::get`] and friends: the whole body, read.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The status code, comparable with a number: `assert_eq!(response.status(), 200)`.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// `Running`, `Waiting (BackOff 40ms)`... with restarts and the last exit, for messages.
fn describe(container: &crate::status::ContainerStatus) -> String {
    let mut text = container.state.to_string();
    if container.restart_count > 0 {
        let times = if container.restart_count == 1 {
            "once".to_string()
        } else {
            format!("{} times", container.restart_count)
        };
        text.push_str(&format!(", restarted {times}"));
    }
    if let Some(exit) = &container.last_exit {
        text.push_str(&format!(", last exit: {exit}"));
    }
    text
}

fn format_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.2}s", duration.as_secs_f64())
    }
}

use crate::sync::lock;
