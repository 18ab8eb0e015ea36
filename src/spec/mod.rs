//! The pod spec: the validated, resolved model of a `wasmpod.toml` (or of a spec built in Rust).
//!
//! This module owns what a pod *is* on paper: its containers, volumes, mounts, ports and policies,
//! as typed values (durations, sizes, an [`EgressPolicy`]) — later stages never re-parse a string.
//! A `wasmpod.toml` is read in three stages, one file each: `raw` (the TOML contract, with
//! positions), `lower` (raw values into this model, each string parsed once) and `check` (the
//! rules, written once against the model, so Rust-built specs meet them too); `report` locates
//! every problem. Turning a spec into running things is the job of [`crate::pod`]. Every path in
//! a [`PodSpec`] is already resolved against the spec file's directory, so later stages never
//! guess a base directory.

mod check;
mod lower;
mod raw;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::egress::EgressPolicy;

pub use check::is_dns_label;
pub use lower::is_sha256_hex;
pub use report::{Problem, SpecError};

use report::Report;

/// A whole pod, as written in `wasmpod.toml` and checked by [`PodSpec::from_file`].
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    /// Lowercase letters, digits and '-', 1–63 characters (a DNS label, as in Kubernetes).
    pub name: String,
    /// Pod-wide, as in Kubernetes and ACI.
    pub restart_policy: RestartPolicy,
    /// How long to wait before restarting a container that exited.
    pub restart_backoff: Backoff,
    /// How long a container may take to exit on its own after it is told to stop (its stdin
    /// closes) before it is cancelled. Kubernetes' default: 30 s.
    pub termination_grace_period: Duration,
    /// How long the front proxy holds a new connection while the pod is not ready before it
    /// refuses it.
    pub readiness_wait: Duration,
    /// The pod's one public port, served by the front proxy.
    pub expose: Option<Expose>,
    /// `[expose] hostnames`: the `Host` names an edge host routes to this pod, besides
    /// `NAME.localhost` (lowercase; each label a DNS label).
    pub hostnames: Vec<String>,
    /// `[expose] host_port`: on an edge host, the pod also keeps a host TCP port of its own
    /// (as `wasmpod run --listen` gives), besides the shared entrance; 0 picks a free port.
    pub host_port: Option<u16>,
    pub volumes: Vec<VolumeSpec>,
    /// Run one after another, each to exit 0, before `containers` start.
    pub init_containers: Vec<ContainerSpec>,
    pub containers: Vec<ContainerSpec>,
    /// The directory relative paths were resolved against (the spec file's directory).
    pub base_dir: PathBuf,
    /// The spec file, when the spec came from one (used to name it in messages).
    pub source_file: Option<PathBuf>,
    /// `[[faults]]`: network faults the pod installs when it starts (reproducible chaos).
    pub faults: Vec<crate::net::fault::Fault>,
}

/// Kubernetes' `terminationGracePeriodSeconds` default.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// How long the front proxy holds a connection for a pod that is not ready yet, by default.
pub const DEFAULT_READINESS_WAIT: Duration = Duration::from_secs(10);

/// Which exits a container is restarted after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Restart on any exit (the Kubernetes and ACI default).
    #[default]
    Always,
    /// Restart after a non-zero exit or a trap.
    OnFailure,
    /// Never restart.
    Never,
}

/// Exponential restart back-off: `initial`, doubling up to `max`; reset after `reset_after` of
/// clean running. Kubernetes' values are the defaults; tests use milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay before restart number `restarts_in_a_row` (1 for the first restart).
    pub fn delay(&self, restarts_in_a_row: u32) -> Duration {
        let doublings = restarts_in_a_row.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// The pod's one public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expose {
    /// A pod port that exactly one container lists in `ports`.
    pub port: u16,
    /// Whose readiness lets the front proxy forward connections (`[expose] ready`).
    pub ready: ExposeReady,
}

impl Expose {
    /// Exposes `port`, gated on the readiness of the container that serves it.
    pub fn new(port: u16) -> Expose {
        Expose {
            port,
            ready: ExposeReady::default(),
        }
    }
}

/// What the front proxy waits for before it forwards a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExposeReady {
    /// The container(s) listing the exposed port in `ports` are ready: a failed sidecar does
    /// not take the app's traffic down (what users of container groups expect).
    #[default]
    Container,
    /// Every app container is ready (or completed successfully): Kubernetes Service semantics.
    Pod,
}

/// A named volume that containers mount.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSpec {
    pub name: String,
    pub source: VolumeSource,
}

/// Where a volume's files come from.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// A fresh, empty directory that lives as long as the pod.
    EmptyDir,
    /// An existing host directory (absolute, resolved against the spec file's directory).
    HostPath(PathBuf),
    /// Files named by the keys, holding the values; always mounted read-only.
    Secret(BTreeMap<String, String>),
}

/// One container: a WASI 0.2 component plus what it may see.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Unique in the pod (init containers included); same rules as the pod name.
    pub name: String,
    pub component: ComponentSource,
    /// argv[1..]; argv[0] is the container name.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Pod ports this container listens on.
    pub ports: Vec<u16>,
    pub volume_mounts: Vec<MountSpec>,
    /// Destinations outside the pod this container may connect to, parsed once from the
    /// `HOST:PORT` entries (see [`crate::egress`]); empty means it reaches nothing outside its pod.
    pub allowed_outbound_hosts: EgressPolicy,
    /// Memory and CPU limits.
    pub resources: Resources,
    /// Containers that must reach a condition before this one starts (Compose semantics).
    pub depends_on: Vec<Dependency>,
    /// Holds readiness and liveness probing off until it succeeds once.
    pub startup_probe: Option<Probe>,
    /// While failing, the container is not ready (and the front proxy holds new connections).
    pub readiness_probe: Option<Probe>,
    /// Failing it `failure_threshold` times in a row restarts the container.
    pub liveness_probe: Option<Probe>,
    /// Request limits of an http container (unset fields keep the defaults).
    pub http: HttpSettings,
    /// How a running command container changes to a new version ([`crate::Pod::update`]).
    pub update_strategy: UpdateStrategy,
}

/// `update_strategy = "surge" | "recreate"`: how a command container is swapped to a new
/// version. An http container is always swapped request by request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateStrategy {
    /// The new version starts beside the old one and binds the same ports; new connections go
    /// to it once it is ready, the old one keeps its open connections until they close (or
    /// the grace period ends) and is then stopped. A container without ports is restarted.
    #[default]
    Surge,
    /// The old version is stopped first (stdin closes, grace period, cancel), then the new one
    /// starts: for a container that must never run twice at once.
    Recreate,
}

/// `http = { request_timeout = "30s", max_concurrent_instances = 100, max_request_body = "16MiB" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpSettings {
    /// A request whose instance runs longer is cut (504 before the response head).
    pub request_timeout: Option<Duration>,
    /// Instances alive at once; further requests wait briefly, then get 503.
    pub max_concurrent_instances: Option<usize>,
    /// Larger request bodies get 413.
    pub max_request_body: Option<u64>,
}

/// "Start me only once `container` has reached `condition`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub container: String,
    pub condition: DependencyCondition,
}

/// Docker Compose's `depends_on` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DependencyCondition {
    /// It is running (`service_started`).
    #[default]
    Started,
    /// It is running and ready: its readiness probe passes (`service_healthy`).
    Ready,
    /// It ran to completion with exit code 0 (`service_completed_successfully`).
    Completed,
}

/// A health check, with Kubernetes' fields and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub action: ProbeAction,
    /// Wait this long after the container starts before the first check (default 0 s).
    pub initial_delay: Duration,
    /// Time between checks (default 10 s).
    pub period: Duration,
    /// A check that takes longer fails (default 1 s).
    pub timeout: Duration,
    /// Failures in a row that make the probe fail (default 3).
    pub failure_threshold: u32,
    /// Successes in a row that make it pass again (default 1).
    pub success_threshold: u32,
}

impl Probe {
    /// A probe with Kubernetes' default timing.
    pub fn new(action: ProbeAction) -> Probe {
        Probe {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

/// How a probe checks, always over the pod's own network or in-process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// `GET path` on a pod port; a status from 200 to 399 passes.
    HttpGet { port: u16, path: String },
    /// A TCP connection to a pod port is accepted.
    TcpSocket { port: u16 },
    /// The component's `wasmpod:health/check` export answers `ok`.
    Health,
}

/// What one container may use. `None` means unlimited (bounded only by the engine).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    /// Bytes of linear memory and table space, all of the component's instances together.
    pub memory: Option<u64>,
    /// A share of one core (0.5 = half a core), enforced by throttling, never by killing.
    pub cpu: Option<f64>,
}

impl ContainerSpec {
    /// A container running `component` with no args, env, ports, mounts or egress.
    pub fn new(name: impl Into<String>, component: impl Into<ComponentSource>) -> Self {
        ContainerSpec {
            name: name.into(),
            component: component.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            volume_mounts: Vec::new(),
            allowed_outbound_hosts: EgressPolicy::deny_all(),
            resources: Resources::default(),
            depends_on: Vec::new(),
            startup_probe: None,
            readiness_probe: None,
            liveness_probe: None,
            http: HttpSettings::default(),
            update_strategy: UpdateStrategy::default(),
        }
    }
}

/// Where a container's component comes from.
#[derive(Clone, PartialEq)]
pub enum ComponentSource {
    /// A component file (absolute once resolved).
    File(PathBuf),
    /// Component bytes given directly (tests, embedders).
    Bytes(Arc<[u8]>),
    /// A wasm OCI artifact in a registry (`image = "..."`), pulled or taken from the image
    /// cache when the pod starts.
    Image(crate::oci::Reference),
}

/// Checks that `bytes` start like a WASI 0.2 component (only the header).
pub fn check_component_bytes(bytes: &[u8]) -> Result<(), String> {
    check::check_component_header(bytes, "the component")
}

impl std::fmt::Debug for ComponentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComponentSource::File(path) => f.debug_tuple("File").field(path).finish(),
            ComponentSource::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            ComponentSource::Image(reference) => write!(f, "Image({reference})"),
        }
    }
}

impl From<PathBuf> for ComponentSource {
    fn from(path: PathBuf) -> Self {
        ComponentSource::File(path)
    }
}

impl From<&Path> for ComponentSource {
    fn from(path: &Path) -> Self {
        ComponentSource::File(path.to_path_buf())
    }
}

/// A volume mounted into one container.
#[derive(Debug, Clone, PartialEq)]
pub struct MountSpec {
    /// The name of a volume declared in the pod.
    pub volume: String,
    /// An absolute guest path such as `/data`.
    pub mount_path: String,
    pub read_only: bool,
}

impl PodSpec {
    /// A pod with no containers yet and every default (restart `always`, Kubernetes' back-off
    /// and grace period), whose relative paths resolve against the current directory.
    pub fn new(name: impl Into<String>) -> PodSpec {
        PodSpec {
            name: name.into(),
            restart_policy: RestartPolicy::default(),
            restart_backoff: Backoff::default(),
            termination_grace_period: DEFAULT_TERMINATION_GRACE_PERIOD,
            readiness_wait: DEFAULT_READINESS_WAIT,
            expose: None,
            hostnames: Vec::new(),
            host_port: None,
            volumes: Vec::new(),
            init_containers: Vec::new(),
            containers: Vec::new(),
            base_dir: std::env::current_dir().unwrap_or_default(),
            source_file: None,
            faults: Vec::new(),
        }
    }

    /// Reads, parses and validates a spec file; relative paths resolve against its directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<PodSpec, SpecError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|error| SpecError::about_file(path, format!("cannot read the spec file: {error}")))?;
        PodSpec::from_toml(&text, path)
    }

    /// Parses and validates spec text; `file` names it in messages and anchors relative paths.
    pub fn from_toml(text: &str, file: &Path) -> Result<PodSpec, SpecError> {
        PodSpec::parse(text, file, None)
    }

    /// As [`PodSpec::from_toml`], for an edge host: `component = "sha256:HEX"` resolves to the
    /// file `HEX` in `blobs` (the host's blob store).
    pub fn from_toml_with_blobs(text: &str, file: &Path, blobs: &Path) -> Result<PodSpec, SpecError> {
        PodSpec::parse(text, file, Some(blobs))
    }

    fn parse(text: &str, file: &Path, blobs: Option<&Path>) -> Result<PodSpec, SpecError> {
        let base_dir = lower::spec_directory(file).map_err(|error| {
            let message = format!("cannot make the spec file's directory absolute: {error}");
            SpecError::about_file(file, message)
        })?;

        let mut report = Report::for_toml(file, text);
        let raw: raw::RawPod = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(error) => {
                // Syntax and shape errors stop the parse, so there is exactly one to report; toml's
                // message already says what was expected (e.g. the allowed field names).
                let problem = report.problem_at(error.span(), error.message().to_string());
                return Err(SpecError::single(problem));
            }
        };

        let mut spec = lower::lower_pod(raw, &base_dir, blobs, &mut report);
        spec.source_file = Some(file.to_path_buf());
        check::check_pod(&spec, &mut report);
        report.finish().map(|()| spec)
    }

    /// Validates a spec built in Rust (no source positions to report, so problems name fields).
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut report = Report::for_model(self.source_file.as_deref());
        check::check_pod(self, &mut report);
        report.finish()
    }

    /// Every container, init containers first, in spec order.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.init_containers.iter().chain(self.containers.iter())
    }
}
