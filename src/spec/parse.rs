//! Reading `wasmpod.toml` into a [`PodSpec`], and the rules every spec must follow.
//!
//! This module owns the TOML contract (the private `Raw*` types, which mirror the file and reject
//! unknown fields), the resolution of relative paths against the spec file's directory, and the
//! validation rules. Each rule is written once, against the resolved model, and reports through a
//! [`Report`] that knows how to point at a field: at `line:column` when the spec came from TOML
//! (the lowering step records every field's byte span), or by its path such as
//! `containers[1].name` when the spec was built in Rust. It does not run anything: it only reads
//! the first bytes of component files to tell a component from a core module.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::egress::EgressPolicy;

use super::{
    Backoff, ComponentSource, ContainerSpec, Dependency, DependencyCondition, Expose, HttpSettings, MountSpec, PodSpec,
    Probe, ProbeAction, Resources, RestartPolicy, VolumeSource, VolumeSpec,
};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One thing wrong with a spec, located as precisely as the spec's origin allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The spec file, when the spec came from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the offending text, when the spec came from TOML.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text, when the spec came from TOML.
    pub column: Option<usize>,
    /// What is wrong and what to change.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The `file:line:column: message` shape is what editors and terminals turn into links.
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(column)) => {
                write!(f, "{}:{line}:{column}: {}", file.display(), self.message)
            }
            (Some(file), Some(line), None) => {
                write!(f, "{}:{line}: {}", file.display(), self.message)
            }
            (Some(file), None, _) => write!(f, "{}: {}", file.display(), self.message),
            (None, _, _) => f.write_str(&self.message),
        }
    }
}

/// Why a spec was rejected: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    problems: Vec<Problem>,
}

impl SpecError {
    /// Every problem found, in source order when the spec came from TOML.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    fn single(problem: Problem) -> Self {
        SpecError {
            problems: vec![problem],
        }
    }

    /// A problem with the spec file as a whole (it cannot be read, say).
    fn about_file(file: &Path, message: String) -> Self {
        SpecError::single(Problem {
            file: Some(file.to_path_buf()),
            line: None,
            column: None,
            message,
        })
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

// ---------------------------------------------------------------------------------------------
// Entry points (called from `super`)
// ---------------------------------------------------------------------------------------------

pub(super) fn from_file(path: &Path) -> Result<PodSpec, SpecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| SpecError::about_file(path, format!("cannot read the spec file: {error}")))?;
    from_toml(&text, path)
}

pub(super) fn from_toml(text: &str, file: &Path) -> Result<PodSpec, SpecError> {
    let base_dir = spec_directory(file).map_err(|error| {
        let message = format!("cannot make the spec file's directory absolute: {error}");
        SpecError::about_file(file, message)
    })?;

    let mut report = Report::for_toml(file, text);
    let raw: RawPod = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            // Syntax and shape errors stop the parse, so there is exactly one to report; toml's
            // message already says what was expected (e.g. the allowed field names).
            let problem = report.problem_at(error.span(), error.message().to_string());
            return Err(SpecError::single(problem));
        }
    };

    let mut spec = lower_pod(raw, &base_dir, &mut report);
    spec.source_file = Some(file.to_path_buf());
    check_pod(&spec, &mut report);
    report.finish().map(|()| spec)
}

pub(super) fn validate_model(spec: &PodSpec) -> Result<(), SpecError> {
    let mut report = Report::for_model(spec.source_file.as_deref());
    check_pod(spec, &mut report);
    report.finish()
}

/// The spec file's directory, absolute; a bare file name lives in the current directory.
fn spec_directory(file: &Path) -> std::io::Result<PathBuf> {
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // `absolute` (unlike `canonicalize`) keeps symlinks, so messages show the paths users wrote.
    std::path::absolute(directory)
}

/// Joins `relative` onto `base_dir`, dropping `.` components so messages show clean paths.
fn resolve(base_dir: &Path, relative: &str) -> PathBuf {
    let joined = base_dir.join(relative);
    std::path::absolute(&joined).unwrap_or(joined)
}

// ---------------------------------------------------------------------------------------------
// The TOML contract
// ---------------------------------------------------------------------------------------------
//
// These types mirror `wasmpod.toml` one to one. `Spanned` marks every value a validation rule may
// need to point at; serde errors (unknown fields, wrong types) carry their own spans.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: Spanned<String>,
    #[serde(default)]
    restart_policy: RawRestartPolicy,
    restart_backoff: Option<RawBackoff>,
    termination_grace_period: Option<Spanned<String>>,
    readiness_wait: Option<Spanned<String>>,
    expose: Option<RawExpose>,
    #[serde(default)]
    volumes: Vec<Spanned<RawVolume>>,
    #[serde(default)]
    init_containers: Vec<RawContainer>,
    /// Optional here so that a pod without containers gets our message, not serde's.
    containers: Option<Spanned<Vec<RawContainer>>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum RawRestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
    reset_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpose {
    port: Spanned<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: Spanned<String>,
    empty_dir: Option<Spanned<RawEmptyDir>>,
    host_path: Option<Spanned<String>>,
    secret: Option<Spanned<BTreeMap<Spanned<String>, String>>>,
}

/// `empty_dir = {}`: a table so that options (a size limit, say) can be added later.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an empty table `{}`")]
struct RawEmptyDir {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Spanned<String>,
    component: Spanned<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    volume_mounts: Vec<RawMount>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    resources: Option<RawResources>,
    #[serde(default)]
    depends_on: Vec<Spanned<RawDependency>>,
    startup_probe: Option<Spanned<RawProbe>>,
    readiness_probe: Option<Spanned<RawProbe>>,
    liveness_probe: Option<Spanned<RawProbe>>,
    http: Option<RawHttp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    request_timeout: Option<Spanned<String>>,
    max_concurrent_instances: Option<Spanned<u32>>,
    max_request_body: Option<Spanned<RawQuantity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    /// `"64MiB"`, `"1GiB"`, `"500M"` or a number of bytes.
    memory: Option<Spanned<RawQuantity>>,
    /// A share of one core.
    cpu: Option<Spanned<f64>>,
}

/// A memory size as written: a string with a unit, or a plain number of bytes.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a size like \"64MiB\" or a number of bytes")]
enum RawQuantity {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependency {
    container: String,
    #[serde(default)]
    condition: RawCondition,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawCondition {
    #[default]
    Started,
    Ready,
    Completed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcpSocket>,
    health: Option<RawEmptyDir>,
    initial_delay: Option<Spanned<String>>,
    period: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<u32>>,
    success_threshold: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpGet {
    port: Spanned<RawPort>,
    #[serde(default = "root_path")]
    path: String,
}

fn root_path() -> String {
    "/".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpSocket {
    port: Spanned<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    volume: Spanned<String>,
    mount_path: Spanned<String>,
    /// `None` lets secret mounts default to read-only while other mounts default to writable.
    read_only: Option<Spanned<bool>>,
}

/// A port as written: any integer, so that `70000` gets a range message at its own position
/// instead of serde's "expected u16".
struct RawPort(i64);

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl serde::de::Visitor<'_> for PortVisitor {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number from 1 to 65535")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawPort, E> {
                Ok(RawPort(value))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawPort, E> {
                Ok(RawPort(i64::try_from(value).unwrap_or(i64::MAX)))
            }
        }
        deserializer.deserialize_i64(PortVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Lowering: raw TOML -> model, recording where each field was written
// ---------------------------------------------------------------------------------------------
//
// Lowering reports only what the model cannot express (a volume with two sources, a duration
// that does not parse, a port beyond u16); everything else is left to the shared rules.

fn lower_pod(raw: RawPod, base_dir: &Path, report: &mut Report) -> PodSpec {
    report.record(Field::PodName, raw.name.span());

    let restart_policy = match raw.restart_policy {
        RawRestartPolicy::Always => RestartPolicy::Always,
        RawRestartPolicy::OnFailure => RestartPolicy::OnFailure,
        RawRestartPolicy::Never => RestartPolicy::Never,
    };

    let mut restart_backoff = Backoff::default();
    if let Some(raw_backoff) = raw.restart_backoff {
        let settings = [
            (BackoffField::Initial, raw_backoff.initial, &mut restart_backoff.initial),
            (BackoffField::Max, raw_backoff.max, &mut restart_backoff.max),
            (
                BackoffField::ResetAfter,
                raw_backoff.reset_after,
                &mut restart_backoff.reset_after,
            ),
        ];
        for (which, written, slot) in settings {
            if let Some(written) = written
                && let Some(duration) = lower_duration(Field::Backoff(which), &written, report)
            {
                *slot = duration;
            }
        }
    }

    let expose = raw.expose.and_then(|raw_expose| {
        report.record(Field::ExposePort, raw_expose.port.span());
        let port = lower_port(&raw_expose.port, report)?;
        Some(Expose { port })
    });

    // Which volumes are secrets decides the default of `read_only` on their mounts.
    let secret_volume_names: HashSet<&str> = raw
        .volumes
        .iter()
        .filter(|volume| volume.get_ref().secret.is_some())
        .map(|volume| volume.get_ref().name.get_ref().as_str())
        .collect();

    let init_containers = raw
        .init_containers
        .into_iter()
        .enumerate()
        .map(|(index, container)| {
            let at = ContainerAt::init(index);
            lower_container(container, at, &secret_volume_names, base_dir, report)
        })
        .collect();

    let containers = match raw.containers {
        Some(containers) => {
            report.record(Field::Containers, containers.span());
            containers
                .into_inner()
                .into_iter()
                .enumerate()
                .map(|(index, container)| {
                    let at = ContainerAt::main(index);
                    lower_container(container, at, &secret_volume_names, base_dir, report)
                })
                .collect()
        }
        None => {
            // Nothing to point at: the start of the file is where a reader begins looking.
            report.record(Field::Containers, 0..0);
            Vec::new()
        }
    };

    let volumes = raw
        .volumes
        .into_iter()
        .enumerate()
        .map(|(index, volume)| lower_volume(volume, index, base_dir, report))
        .collect();

    let mut optional_duration = |field: Field, written: Option<Spanned<String>>, default: Duration| {
        written
            .and_then(|written| lower_duration(field, &written, report))
            .unwrap_or(default)
    };
    let termination_grace_period = optional_duration(
        Field::TerminationGracePeriod,
        raw.termination_grace_period,
        super::DEFAULT_TERMINATION_GRACE_PERIOD,
    );
    let readiness_wait = optional_duration(Field::ReadinessWait, raw.readiness_wait, super::DEFAULT_READINESS_WAIT);

    PodSpec {
        name: raw.name.into_inner(),
        restart_policy,
        restart_backoff,
        termination_grace_period,
        readiness_wait,
        expose,
        volumes,
        init_containers,
        containers,
        base_dir: base_dir.to_path_buf(),
        source_file: None,
    }
}

fn lower_duration(field: Field, written: &Spanned<String>, report: &mut Report) -> Option<Duration> {
    report.record(field.clone(), written.span());
    match humantime::parse_duration(written.get_ref()) {
        Ok(duration) => Some(duration),
        Err(error) => {
            report.push(
                &field,
                format!(
                    "`{}` is not a duration ({error}); write it like \"500ms\", \"10s\" or \"5m\"",
                    written.get_ref()
                ),
            );
            None
        }
    }
}

/// The port, or `None` after reporting it at its span. (Not by field: a dropped port has no
/// place in the model, so its index would belong to the next port.)
fn lower_port(written: &Spanned<RawPort>, report: &mut Report) -> Option<u16> {
    let RawPort(number) = *written.get_ref();
    let port = u16::try_from(number).ok();
    if port.is_none() {
        let message = format!("port {number} is out of range; use a port from 1 to 65535");
        report.push_at_span(written.span(), message);
    }
    port
}

fn lower_volume(volume: Spanned<RawVolume>, index: usize, base_dir: &Path, report: &mut Report) -> VolumeSpec {
    let table_span = volume.span();
    let volume = volume.into_inner();
    report.record(Field::Volume(index, VolumeField::Name), volume.name.span());

    let mut sources: Vec<(&str, Range<usize>, VolumeSource)> = Vec::new();
    if let Some(empty_dir) = &volume.empty_dir {
        sources.push(("empty_dir", empty_dir.span(), VolumeSource::EmptyDir));
    }
    if let Some(host_path) = &volume.host_path {
        report.record(Field::Volume(index, VolumeField::HostPath), host_path.span());
        let resolved = resolve(base_dir, host_path.get_ref());
        sources.push(("host_path", host_path.span(), VolumeSource::HostPath(resolved)));
    }
    if let Some(secret) = &volume.secret {
        for file_name in secret.get_ref().keys() {
            let field = Field::Volume(index, VolumeField::SecretKey(file_name.get_ref().clone()));
            report.record(field, file_name.span());
        }
        let files = secret
            .get_ref()
            .iter()
            .map(|(file_name, contents)| (file_name.get_ref().clone(), contents.clone()))
            .collect();
        sources.push(("secret", secret.span(), VolumeSource::Secret(files)));
    }

    let name = volume.name.into_inner();
    let source_field = Field::Volume(index, VolumeField::Source);
    let mut sources = sources.into_iter();
    let source = match (sources.next(), sources.next()) {
        (Some((_, _, only)), None) => only,
        (Some((first_key, _, first)), Some((second_key, second_span, _))) => {
            report.record(source_field.clone(), second_span);
            report.push(
                &source_field,
                format!(
                    "volume \"{name}\" sets both `{first_key}` and `{second_key}`; \
                     keep exactly one of empty_dir, host_path or secret"
                ),
            );
            first
        }
        (None, _) => {
            report.record(source_field.clone(), table_span);
            report.push(
                &source_field,
                format!(
                    "volume \"{name}\" has no source; set exactly one of `empty_dir = {{}}`, \
                     `host_path = \"dir\"` or `secret = {{ \"file\" = \"contents\" }}`"
                ),
            );
            // A stand-in keeps the volume declared, so its mounts are not reported as well.
            VolumeSource::EmptyDir
        }
    };
    VolumeSpec { name, source }
}

fn lower_container(
    container: RawContainer,
    at: ContainerAt,
    secret_volume_names: &HashSet<&str>,
    base_dir: &Path,
    report: &mut Report,
) -> ContainerSpec {
    let field = |which: ContainerField| Field::Container(at, which);
    report.record(field(ContainerField::Name), container.name.span());
    report.record(field(ContainerField::Component), container.component.span());

    for name in container.env.keys() {
        report.record(field(ContainerField::EnvName(name.get_ref().clone())), name.span());
    }
    let env = container
        .env
        .into_iter()
        .map(|(name, value)| (name.into_inner(), value))
        .collect();

    // Out-of-range ports are reported and dropped; the rest keep their spans by model index.
    let mut ports = Vec::new();
    for written in &container.ports {
        if let Some(port) = lower_port(written, report) {
            report.record(field(ContainerField::Port(ports.len())), written.span());
            ports.push(port);
        }
    }

    // Parsed here, once: bad entries are reported at their position and left out of the policy.
    let mut allowed_outbound_hosts = EgressPolicy::deny_all();
    for (index, entry) in container.allowed_outbound_hosts.iter().enumerate() {
        let entry_field = field(ContainerField::OutboundHost(index));
        report.record(entry_field.clone(), entry.span());
        if let Err(error) = allowed_outbound_hosts.allow(entry.get_ref()) {
            report.push(&entry_field, format!("outbound host {error}"));
        }
    }

    let volume_mounts = container
        .volume_mounts
        .into_iter()
        .enumerate()
        .map(|(index, mount)| {
            let mount_field = |which: MountField| field(ContainerField::Mount(index, which));
            report.record(mount_field(MountField::Volume), mount.volume.span());
            report.record(mount_field(MountField::MountPath), mount.mount_path.span());
            let volume = mount.volume.into_inner();
            let read_only = match mount.read_only {
                Some(written) => {
                    report.record(mount_field(MountField::ReadOnly), written.span());
                    written.into_inner()
                }
                None => secret_volume_names.contains(volume.as_str()),
            };
            MountSpec {
                volume,
                mount_path: mount.mount_path.into_inner(),
                read_only,
            }
        })
        .collect();

    let resources = container
        .resources
        .map(|raw| lower_resources(raw, &field, report))
        .unwrap_or_default();
    let depends_on = container
        .depends_on
        .into_iter()
        .enumerate()
        .map(|(index, dependency)| {
            report.record(field(ContainerField::DependsOn(index)), dependency.span());
            let dependency = dependency.into_inner();
            Dependency {
                container: dependency.container,
                condition: match dependency.condition {
                    RawCondition::Started => DependencyCondition::Started,
                    RawCondition::Ready => DependencyCondition::Ready,
                    RawCondition::Completed => DependencyCondition::Completed,
                },
            }
        })
        .collect();
    let mut probe = |kind: ProbeKind, raw: Option<Spanned<RawProbe>>| {
        raw.and_then(|raw| lower_probe(raw, field(ContainerField::Probe(kind)), report))
    };
    let startup_probe = probe(ProbeKind::Startup, container.startup_probe);
    let readiness_probe = probe(ProbeKind::Readiness, container.readiness_probe);
    let liveness_probe = probe(ProbeKind::Liveness, container.liveness_probe);
    let http = container
        .http
        .map(|raw| lower_http(raw, &field, report))
        .unwrap_or_default();

    ContainerSpec {
        name: container.name.into_inner(),
        component: ComponentSource::File(resolve(base_dir, container.component.get_ref())),
        args: container.args,
        env,
        ports,
        volume_mounts,
        allowed_outbound_hosts,
        resources,
        depends_on,
        startup_probe,
        readiness_probe,
        liveness_probe,
        http,
    }
}

fn lower_http(raw: RawHttp, field: &dyn Fn(ContainerField) -> Field, report: &mut Report) -> HttpSettings {
    let request_timeout = raw.request_timeout.and_then(|written| {
        lower_duration(
            Field::Nested(Box::new(field(ContainerField::Http)), "request_timeout".into()),
            &written,
            report,
        )
    });
    let max_concurrent_instances = raw.max_concurrent_instances.and_then(|written| {
        if *written.get_ref() == 0 {
            report.push_at_span(written.span(), "max_concurrent_instances must be at least 1".into());
            return None;
        }
        Some(*written.get_ref() as usize)
    });
    let max_request_body = raw.max_request_body.and_then(|written| match written.get_ref() {
        RawQuantity::Bytes(bytes) => Some(*bytes),
        RawQuantity::Text(text) => parse_bytes(text).or_else(|| {
            report.push_at_span(
                written.span(),
                format!("`{text}` is not a size; write it like \"16MiB\" or a number of bytes"),
            );
            None
        }),
    });
    HttpSettings {
        request_timeout,
        max_concurrent_instances,
        max_request_body,
    }
}

fn lower_resources(raw: RawResources, field: &dyn Fn(ContainerField) -> Field, report: &mut Report) -> Resources {
    let memory = raw.memory.and_then(|written| {
        report.record(field(ContainerField::Memory), written.span());
        match written.get_ref() {
            RawQuantity::Bytes(bytes) => Some(*bytes),
            RawQuantity::Text(text) => match parse_bytes(text) {
                Some(bytes) => Some(bytes),
                None => {
                    let message = format!(
                        "`{text}` is not a memory size; write it like \"64MiB\", \"1GiB\", \"500MB\" or a number of bytes"
                    );
                    report.push(&field(ContainerField::Memory), message);
                    None
                }
            },
        }
    });
    let cpu = raw.cpu.map(|written| {
        report.record(field(ContainerField::Cpu), written.span());
        written.into_inner()
    });
    Resources { memory, cpu }
}

/// `64MiB`, `64Mi`, `64M`, `64MB`, `1GiB`, `512KiB`, `1048576`: binary units for `Ki`/`Mi`/`Gi`
/// (as Kubernetes), decimal for `K`/`M`/`G`.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

fn lower_probe(raw: Spanned<RawProbe>, field: Field, report: &mut Report) -> Option<Probe> {
    report.record(field.clone(), raw.span());
    let span = raw.span();
    let raw = raw.into_inner();
    let mut actions = Vec::new();
    if let Some(http_get) = &raw.http_get
        && let Some(port) = lower_port(&http_get.port, report)
    {
        actions.push(ProbeAction::HttpGet {
            port,
            path: http_get.path.clone(),
        });
    }
    if let Some(tcp_socket) = &raw.tcp_socket
        && let Some(port) = lower_port(&tcp_socket.port, report)
    {
        actions.push(ProbeAction::TcpSocket { port });
    }
    if raw.health.is_some() {
        actions.push(ProbeAction::Health);
    }
    let kinds =
        usize::from(raw.http_get.is_some()) + usize::from(raw.tcp_socket.is_some()) + usize::from(raw.health.is_some());
    if kinds != 1 {
        let message = format!(
            "{field} needs exactly one of `http_get = {{ port, path }}`, `tcp_socket = {{ port }}` or `health = {{}}` (it has {kinds})"
        );
        report.push_at_span(span, message);
        return None;
    }
    let action = actions.pop()?;
    let mut probe = Probe::new(action);
    let mut duration = |name: &str, written: Option<Spanned<String>>, slot: &mut Duration| {
        if let Some(written) = written
            && let Some(parsed) = lower_duration(
                Field::Nested(Box::new(field.clone()), name.to_string()),
                &written,
                report,
            )
        {
            *slot = parsed;
        }
    };
    duration("initial_delay", raw.initial_delay, &mut probe.initial_delay);
    duration("period", raw.period, &mut probe.period);
    duration("timeout", raw.timeout, &mut probe.timeout);
    for (name, written, slot) in [
        ("failure_threshold", raw.failure_threshold, &mut probe.failure_threshold),
        ("success_threshold", raw.success_threshold, &mut probe.success_threshold),
    ] {
        if let Some(written) = written {
            report.record(Field::Nested(Box::new(field.clone()), name.to_string()), written.span());
            *slot = written.into_inner();
        }
    }
    Some(probe)
}

// ---------------------------------------------------------------------------------------------
// Naming fields, and reporting problems at them
// ---------------------------------------------------------------------------------------------

/// A field of a pod spec: the key under which lowering records a span, and the name a problem
/// carries when there is no span.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Field {
    PodName,
    Containers,
    Backoff(BackoffField),
    ExposePort,
    Volume(usize, VolumeField),
    Container(ContainerAt, ContainerField),
    TerminationGracePeriod,
    ReadinessWait,
    /// A key inside another field's table, e.g. `containers[0].liveness_probe.period`.
    Nested(Box<Field>, String),
}

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BackoffField {
    Initial,
    Max,
    ResetAfter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum VolumeField {
    Name,
    /// The volume's source as a whole (`empty_dir` / `host_path` / `secret`).
    Source,
    HostPath,
    SecretKey(String),
}

/// Where a container sits in the spec: which list, and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ContainerAt {
    list: ContainerList,
    index: usize,
}

impl ContainerAt {
    fn init(index: usize) -> Self {
        ContainerAt {
            list: ContainerList::Init,
            index,
        }
    }

    fn main(index: usize) -> Self {
        ContainerAt {
            list: ContainerList::Main,
            index,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ContainerList {
    Init,
    Main,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ContainerField {
    Name,
    Component,
    Port(usize),
    EnvName(String),
    Mount(usize, MountField),
    OutboundHost(usize),
    Memory,
    Cpu,
    DependsOn(usize),
    Probe(ProbeKind),
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MountField {
    Volume,
    MountPath,
    ReadOnly,
}

impl fmt::Display for Field {
    /// The field's path as a TOML reader would spell it, e.g. `containers[1].ports[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::PodName => f.write_str("name"),
            Field::Containers => f.write_str("containers"),
            Field::Backoff(which) => {
                let key = match which {
                    BackoffField::Initial => "initial",
                    BackoffField::Max => "max",
                    BackoffField::ResetAfter => "reset_after",
                };
                write!(f, "restart_backoff.{key}")
            }
            Field::ExposePort => f.write_str("expose.port"),
            Field::TerminationGracePeriod => f.write_str("termination_grace_period"),
            Field::ReadinessWait => f.write_str("readiness_wait"),
            Field::Nested(parent, key) => write!(f, "{parent}.{key}"),
            Field::Volume(index, which) => {
                write!(f, "volumes[{index}]")?;
                match which {
                    VolumeField::Name => f.write_str(".name"),
                    VolumeField::Source => Ok(()),
                    VolumeField::HostPath => f.write_str(".host_path"),
                    VolumeField::SecretKey(key) => write!(f, ".secret[{key:?}]"),
                }
            }
            Field::Container(at, which) => {
                let list = match at.list {
                    ContainerList::Init => "init_containers",
                    ContainerList::Main => "containers",
                };
                write!(f, "{list}[{}]", at.index)?;
                match which {
                    ContainerField::Name => f.write_str(".name"),
                    ContainerField::Component => f.write_str(".component"),
                    ContainerField::Port(index) => write!(f, ".ports[{index}]"),
                    ContainerField::EnvName(name) => write!(f, ".env[{name:?}]"),
                    ContainerField::Mount(index, mount_field) => {
                        let key = match mount_field {
                            MountField::Volume => "volume",
                            MountField::MountPath => "mount_path",
                            MountField::ReadOnly => "read_only",
                        };
                        write!(f, ".volume_mounts[{index}].{key}")
                    }
                    ContainerField::OutboundHost(index) => {
                        write!(f, ".allowed_outbound_hosts[{index}]")
                    }
                    ContainerField::Memory => f.write_str(".resources.memory"),
                    ContainerField::Cpu => f.write_str(".resources.cpu"),
                    ContainerField::DependsOn(index) => write!(f, ".depends_on[{index}]"),
                    ContainerField::Probe(ProbeKind::Startup) => f.write_str(".startup_probe"),
                    ContainerField::Probe(ProbeKind::Readiness) => f.write_str(".readiness_probe"),
                    ContainerField::Probe(ProbeKind::Liveness) => f.write_str(".liveness_probe"),
                    ContainerField::Http => f.write_str(".http"),
                }
            }
        }
    }
}

/// Collects problems and locates them: by source span when the spec came from TOML, by field
/// path otherwise.
struct Report<'a> {
    file: Option<&'a Path>,
    /// The TOML text, when there is one; spans index into it.
    source: Option<&'a str>,
    spans: HashMap<Field, Range<usize>>,
    /// One problem per field is enough; a second one would usually be a consequence of the first
    /// (an unparsable `initial` is not also "longer than max").
    fields_with_problems: HashSet<Field>,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    fn for_toml(file: &'a Path, source: &'a str) -> Self {
        Report {
            file: Some(file),
            source: Some(source),
            spans: HashMap::new(),
            fields_with_problems: HashSet::new(),
            problems: Vec::new(),
        }
    }

    fn for_model(file: Option<&'a Path>) -> Self {
        Report {
            file,
            source: None,
            spans: HashMap::new(),
            fields_with_problems: HashSet::new(),
            problems: Vec::new(),
        }
    }

    fn record(&mut self, field: Field, span: Range<usize>) {
        self.spans.insert(field, span);
    }

    /// Reports a problem with `field`, unless that field already has one.
    fn push(&mut self, field: &Field, message: String) {
        if !self.fields_with_problems.insert(field.clone()) {
            return;
        }
        let problem = match self.spans.get(field).cloned() {
            Some(span) => self.problem_at(Some(span), message),
            // Without a position, the field's path is what tells the reader where to look.
            None => self.problem_at(None, format!("{field}: {message}")),
        };
        self.problems.push(problem);
    }

    /// Reports a problem at a span no model field owns (a value that lowering had to drop).
    fn push_at_span(&mut self, span: Range<usize>, message: String) {
        let problem = self.problem_at(Some(span), message);
        self.problems.push(problem);
    }

    /// A problem at byte `span` of the TOML text (unlocated if either is unknown).
    fn problem_at(&self, span: Option<Range<usize>>, message: String) -> Problem {
        let position = span
            .zip(self.source)
            .map(|(span, source)| line_and_column(source, span.start));
        Problem {
            file: self.file.map(Path::to_path_buf),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message,
        }
    }

    /// How a message refers to another field: its line when known, its path otherwise.
    fn refer_to(&self, field: &Field) -> String {
        match (self.spans.get(field), self.source) {
            (Some(span), Some(source)) => format!("line {}", line_and_column(source, span.start).0),
            _ => format!("{field}"),
        }
    }

    fn finish(mut self) -> Result<(), SpecError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        // Source order reads best; problems without a position keep the order they were found.
        self.problems
            .sort_by_key(|problem| (problem.line.is_none(), problem.line, problem.column));
        Err(SpecError {
            problems: self.problems,
        })
    }
}

/// The 1-based line and character column of byte `offset` in `source`.
fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// The rules, written once against the model
// ---------------------------------------------------------------------------------------------

fn check_pod(spec: &PodSpec, report: &mut Report) {
    if let Some(reason) = dns_label_problem(&spec.name) {
        report.push(
            &Field::PodName,
            format!("pod name \"{}\" {reason}; {DNS_LABEL_RULE}", spec.name),
        );
    }
    check_backoff(&spec.restart_backoff, report);
    check_volumes(spec, report);
    if spec.containers.is_empty() {
        report.push(
            &Field::Containers,
            "the pod has no containers; add at least one [[containers]] table with a `name` and a \
             `component`"
                .to_string(),
        );
    }
    check_containers(spec, report);
    check_expose(spec, report);
    check_dependencies(spec, report);
    check_health_settings(spec, report);
}

fn container_at(spec: &PodSpec, name: &str) -> Option<ContainerAt> {
    spec.init_containers
        .iter()
        .position(|c| c.name == name)
        .map(ContainerAt::init)
        .or_else(|| {
            spec.containers
                .iter()
                .position(|c| c.name == name)
                .map(ContainerAt::main)
        })
}

/// `depends_on`: known containers, not itself, no cycles (Compose rejects them too).
fn check_dependencies(spec: &PodSpec, report: &mut Report) {
    for (index, container) in spec.containers.iter().enumerate() {
        let at = ContainerAt::main(index);
        for (dep_index, dependency) in container.depends_on.iter().enumerate() {
            let field = Field::Container(at, ContainerField::DependsOn(dep_index));
            if dependency.container == container.name {
                report.push(
                    &field,
                    format!("container {:?} depends on itself; remove this entry", container.name),
                );
            } else if container_at(spec, &dependency.container).is_none() {
                let known: Vec<&str> = spec
                    .all_containers()
                    .map(|c| c.name.as_str())
                    .filter(|n| *n != container.name)
                    .collect();
                report.push(
                    &field,
                    format!(
                        "container {:?} depends on {:?}, which is not a container of this pod; use one of: {}",
                        container.name,
                        dependency.container,
                        known.join(", ")
                    ),
                );
            }
        }
    }
    // A cycle: follow depends_on from each container; meeting the start again closes a loop.
    for (index, container) in spec.containers.iter().enumerate() {
        let mut path = vec![container.name.as_str()];
        if let Some(cycle) = find_cycle(spec, &container.name, &mut path) {
            if cycle.first().copied() != Some(container.name.as_str()) {
                continue; // Reported at the cycle's first member only.
            }
            let field = Field::Container(ContainerAt::main(index), ContainerField::DependsOn(0));
            report.push(
                &field,
                format!(
                    "depends_on forms a cycle: {}; remove one of these dependencies",
                    cycle.join(" -> ")
                ),
            );
        }
    }
}

fn find_cycle<'a>(spec: &'a PodSpec, start: &str, path: &mut Vec<&'a str>) -> Option<Vec<&'a str>> {
    let current = *path.last()?;
    let container = spec.containers.iter().find(|c| c.name == current)?;
    for dependency in &container.depends_on {
        let next = dependency.container.as_str();
        if next == current {
            continue; // A self-dependency is reported on its own.
        }
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next);
            // Name the cycle from its alphabetically first member so it is reported once.
            let smallest = cycle[..cycle.len() - 1].iter().min().copied();
            return (smallest == Some(start)).then_some(cycle);
        }
        if path.contains(&next) {
            continue;
        }
        path.push(next);
        if let Some(cycle) = find_cycle(spec, start, path) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}

/// Probes and resources: values that make sense.
fn check_health_settings(spec: &PodSpec, report: &mut Report) {
    let lists = [
        (ContainerList::Init, &spec.init_containers),
        (ContainerList::Main, &spec.containers),
    ];
    for (list, containers) in lists {
        for (index, container) in containers.iter().enumerate() {
            let at = ContainerAt { list, index };
            if let Some(memory) = container.resources.memory
                && memory < (1 << 20)
            {
                report.push(
                    &Field::Container(at, ContainerField::Memory),
                    format!("a memory limit of {memory} bytes is too small to run a component; give at least \"1MiB\""),
                );
            }
            if let Some(cpu) = container.resources.cpu
                && !(cpu > 0.0 && cpu <= 1024.0)
            {
                report.push(
                    &Field::Container(at, ContainerField::Cpu),
                    format!("cpu = {cpu} is not a share of a core; write a number above 0, e.g. 0.5 for half a core"),
                );
            }
            let probes = [
                (ProbeKind::Startup, &container.startup_probe),
                (ProbeKind::Readiness, &container.readiness_probe),
                (ProbeKind::Liveness, &container.liveness_probe),
            ];
            for (kind, probe) in probes {
                let Some(probe) = probe else { continue };
                let field = Field::Container(at, ContainerField::Probe(kind));
                let nested = |key: &str| Field::Nested(Box::new(field.clone()), key.to_string());
                if list == ContainerList::Init {
                    report.push(
                        &field,
                        "init containers run to completion and are not probed; remove this probe".into(),
                    );
                    continue;
                }
                if probe.period.is_zero() {
                    report.push(
                        &nested("period"),
                        "a probe period must be longer than zero, e.g. \"10s\"".into(),
                    );
                }
                if probe.timeout.is_zero() {
                    report.push(
                        &nested("timeout"),
                        "a probe timeout must be longer than zero, e.g. \"1s\"".into(),
                    );
                }
                if probe.failure_threshold == 0 {
                    report.push(
                        &nested("failure_threshold"),
                        "failure_threshold must be at least 1".into(),
                    );
                }
                if probe.success_threshold == 0 {
                    report.push(
                        &nested("success_threshold"),
                        "success_threshold must be at least 1".into(),
                    );
                } else if kind != ProbeKind::Readiness && probe.success_threshold != 1 {
                    report.push(
                        &nested("success_threshold"),
                        "success_threshold must be 1 for startup and liveness probes (as in Kubernetes)".into(),
                    );
                }
                if let ProbeAction::HttpGet { path, .. } = &probe.action
                    && !path.starts_with('/')
                {
                    report.push(&field, format!("http_get path {path:?} must start with '/'"));
                }
            }
        }
    }
}

const DNS_LABEL_RULE: &str =
    "use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit";

/// Why `name` is not a DNS label (RFC 1123, as Kubernetes names are), or `None` if it is one.
fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!("contains {bad:?}"));
    }
    if name.len() > 63 {
        return Some(format!("is {} characters long", name.len()));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("starts or ends with '-'".to_string());
    }
    None
}

fn check_backoff(backoff: &Backoff, report: &mut Report) {
    let initial = Field::Backoff(BackoffField::Initial);
    if backoff.initial.is_zero() {
        report.push(
            &initial,
            "restart_backoff.initial must be longer than zero, e.g. \"1s\"".to_string(),
        );
    } else if backoff.initial > backoff.max {
        report.push(
            &initial,
            format!(
                "restart_backoff.initial ({}) is longer than restart_backoff.max ({}); \
                 make initial at most max",
                humantime::format_duration(backoff.initial),
                humantime::format_duration(backoff.max)
            ),
        );
    }
}

fn check_volumes(spec: &PodSpec, report: &mut Report) {
    let mut first_volume_named: HashMap<&str, usize> = HashMap::new();
    for (index, volume) in spec.volumes.iter().enumerate() {
        let name_field = Field::Volume(index, VolumeField::Name);
        if let Some(reason) = dns_label_problem(&volume.name) {
            report.push(
                &name_field,
                format!("volume name \"{}\" {reason}; {DNS_LABEL_RULE}", volume.name),
            );
        } else if let Some(&first) = first_volume_named.get(volume.name.as_str()) {
            let first_field = Field::Volume(first, VolumeField::Name);
            let message = format!(
                "volume name \"{}\" is already used (at {}); give each volume its own name",
                volume.name,
                report.refer_to(&first_field)
            );
            report.push(&name_field, message);
        } else {
            first_volume_named.insert(&volume.name, index);
        }

        match &volume.source {
            VolumeSource::EmptyDir => {}
            VolumeSource::HostPath(path) => {
                let path = spec.base_dir.join(path);
                let problem = match std::fs::metadata(&path) {
                    Ok(metadata) if metadata.is_dir() => None,
                    Ok(_) => Some(format!(
                        "host_path {} is not a directory; point it at a directory",
                        path.display()
                    )),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(format!(
                        "host_path {} does not exist; create the directory or fix the path \
                         (relative paths are relative to the spec file's directory)",
                        path.display()
                    )),
                    Err(error) => Some(format!("cannot read host_path {}: {error}", path.display())),
                };
                if let Some(message) = problem {
                    report.push(&Field::Volume(index, VolumeField::HostPath), message);
                }
            }
            VolumeSource::Secret(files) => {
                for file_name in files.keys() {
                    if let Some(reason) = plain_file_name_problem(file_name) {
                        let field = Field::Volume(index, VolumeField::SecretKey(file_name.clone()));
                        report.push(
                            &field,
                            format!(
                                "secret file name {file_name:?} {reason}; \
                                 use a plain file name such as \"token\""
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Why a secret's key cannot be a file name inside the mounted directory, or `None`.
fn plain_file_name_problem(file_name: &str) -> Option<&'static str> {
    if file_name.is_empty() {
        Some("is empty")
    } else if file_name == "." || file_name == ".." {
        Some("names a directory")
    } else if file_name.contains('/') {
        Some("contains '/'")
    } else if file_name.contains('\0') {
        Some("contains a NUL character")
    } else {
        None
    }
}

fn check_containers(spec: &PodSpec, report: &mut Report) {
    let init = spec.init_containers.iter().enumerate();
    let init = init.map(|(index, container)| (ContainerAt::init(index), container));
    let main = spec.containers.iter().enumerate();
    let main = main.map(|(index, container)| (ContainerAt::main(index), container));

    let mut first_container_named: HashMap<&str, ContainerAt> = HashMap::new();
    let mut first_listing_of_port: HashMap<u16, Field> = HashMap::new();
    for (at, container) in init.chain(main) {
        let field = |which: ContainerField| Field::Container(at, which);

        if let Some(reason) = dns_label_problem(&container.name) {
            report.push(
                &field(ContainerField::Name),
                format!("container name \"{}\" {reason}; {DNS_LABEL_RULE}", container.name),
            );
        } else if let Some(&first) = first_container_named.get(container.name.as_str()) {
            let message = format!(
                "container name \"{}\" is already used (at {}); names must be unique \
                 in the pod, init containers included",
                container.name,
                report.refer_to(&Field::Container(first, ContainerField::Name))
            );
            report.push(&field(ContainerField::Name), message);
        } else {
            first_container_named.insert(&container.name, at);
        }

        if let Err(message) = check_component(&container.component, &spec.base_dir) {
            report.push(&field(ContainerField::Component), message);
        }

        for name in container.env.keys() {
            let problem = if name.is_empty() {
                Some("is empty")
            } else if name.contains('=') {
                Some("contains '='")
            } else if name.contains('\0') {
                Some("contains a NUL character")
            } else {
                None
            };
            if let Some(reason) = problem {
                report.push(
                    &field(ContainerField::EnvName(name.clone())),
                    format!("environment variable name {name:?} {reason}; use a name such as GREETING"),
                );
            }
        }

        for (index, &port) in container.ports.iter().enumerate() {
            let port_field = field(ContainerField::Port(index));
            if port == 0 {
                report.push(
                    &port_field,
                    "port 0 is not a port; use a port from 1 to 65535".to_string(),
                );
            } else if let Some(first) = first_listing_of_port.get(&port) {
                let message = format!(
                    "port {port} is already listed (at {}); each port belongs to one container and \
                     is listed once",
                    report.refer_to(first)
                );
                report.push(&port_field, message);
            } else {
                first_listing_of_port.insert(port, port_field);
            }
        }

        check_mounts(spec, at, container, report);
    }
}

fn check_mounts(spec: &PodSpec, at: ContainerAt, container: &ContainerSpec, report: &mut Report) {
    let mut first_mount_at_path: HashMap<&str, usize> = HashMap::new();
    for (index, mount) in container.volume_mounts.iter().enumerate() {
        let field = |which: MountField| Field::Container(at, ContainerField::Mount(index, which));

        match spec.volumes.iter().find(|volume| volume.name == mount.volume) {
            None => {
                let declared: Vec<String> = spec
                    .volumes
                    .iter()
                    .map(|volume| format!("\"{}\"", volume.name))
                    .collect();
                let message = if declared.is_empty() {
                    format!(
                        "volume \"{}\" is not declared, and the pod declares no volumes; \
                         add a [[volumes]] table named \"{}\"",
                        mount.volume, mount.volume
                    )
                } else {
                    format!(
                        "volume \"{}\" is not declared; declared volumes: {}",
                        mount.volume,
                        declared.join(", ")
                    )
                };
                report.push(&field(MountField::Volume), message);
            }
            Some(volume) => {
                if matches!(volume.source, VolumeSource::Secret(_)) && !mount.read_only {
                    report.push(
                        &field(MountField::ReadOnly),
                        format!(
                            "secret volume \"{}\" is always mounted read-only; \
                             remove `read_only = false`",
                            volume.name
                        ),
                    );
                }
            }
        }

        if !mount.mount_path.starts_with('/') {
            report.push(
                &field(MountField::MountPath),
                format!(
                    "mount_path {:?} is not absolute; start it with '/', e.g. \"/data\"",
                    mount.mount_path
                ),
            );
            continue;
        }
        // "/data" and "/data/" are the same directory in the guest.
        let normalized = match mount.mount_path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        if let Some(&first) = first_mount_at_path.get(normalized) {
            let first_field = Field::Container(at, ContainerField::Mount(first, MountField::MountPath));
            let message = format!(
                "container \"{}\" already mounts a volume at {} (at {}); \
                 use a different mount_path",
                container.name,
                mount.mount_path,
                report.refer_to(&first_field)
            );
            report.push(&field(MountField::MountPath), message);
        } else {
            first_mount_at_path.insert(normalized, index);
        }
    }
}

fn check_expose(spec: &PodSpec, report: &mut Report) {
    let Some(expose) = spec.expose else { return };
    if expose.port == 0 {
        let message = "port 0 is not a port; use a port from 1 to 65535".to_string();
        report.push(&Field::ExposePort, message);
        return;
    }
    let listed_by = |containers: &[ContainerSpec]| containers.iter().any(|c| c.ports.contains(&expose.port));
    if listed_by(&spec.containers) {
        return;
    }
    let message = if listed_by(&spec.init_containers) {
        format!(
            "exposed port {} is listed only by an init container, which exits before the \
             pod serves; list it in the `ports` of one of the [[containers]]",
            expose.port
        )
    } else {
        format!(
            "exposed port {} is not listed by any container; add it to the `ports` of the \
             container that serves it",
            expose.port
        )
    };
    report.push(&Field::ExposePort, message);
}

// ---------------------------------------------------------------------------------------------
// Components
// ---------------------------------------------------------------------------------------------

/// The first 8 bytes of a component: the `\0asm` magic, version 0x0d and layer 1 (component).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
/// The first 8 bytes of a core module: the `\0asm` magic, version 1, layer 0 (core module).
const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\x00\x00\x00";

/// Checks that `source` exists and starts like a WASI 0.2 component; only the header is read,
/// compilation will find the rest.
fn check_component(source: &ComponentSource, base_dir: &Path) -> Result<(), String> {
    match source {
        ComponentSource::Bytes(bytes) => check_component_header(bytes, "the component (given as bytes)"),
        ComponentSource::File(path) => {
            let path = base_dir.join(path);
            let header = read_header(&path).map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "component file {} does not exist; build it or fix `component` \
                     (relative paths are relative to the spec file's directory)",
                    path.display()
                ),
                _ if path.is_dir() => {
                    let path = path.display();
                    format!("component {path} is a directory; point `component` at a .wasm file")
                }
                _ => format!("cannot read component file {}: {error}", path.display()),
            })?;
            check_component_header(&header, &format!("component file {}", path.display()))
        }
    }
}

fn read_header(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(COMPONENT_HEADER.len());
    std::fs::File::open(path)?
        .take(COMPONENT_HEADER.len() as u64)
        .read_to_end(&mut header)?;
    Ok(header)
}

fn check_component_header(header: &[u8], what: &str) -> Result<(), String> {
    let header = header.get(..COMPONENT_HEADER.len()).unwrap_or(header);
    if header == COMPONENT_HEADER {
        Ok(())
    } else if header == CORE_MODULE_HEADER {
        Err(format!(
            "{what} is a core WebAssembly module, not a component; build it for `wasm32-wasip2` or \
             run `wasm-tools component new` on it"
        ))
    } else if header.starts_with(b"\0asm") {
        Err(format!(
            "{what} has an unsupported WebAssembly header {header:02x?}; expected a \
             WASI 0.2 component (built for `wasm32-wasip2`)"
        ))
    } else {
        Err(format!(
            "{what} is not WebAssembly (it does not start with `\\0asm`); point `component` at a \
             component built for `wasm32-wasip2`"
        ))
    }
}
