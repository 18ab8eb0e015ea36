//! The rules every spec must follow, the last stage: written once against the typed model, so
//! a spec read from TOML and a spec built in Rust are held to the same rules.
//!
//! This module owns the cross-field rules (unique names, DNS labels, `depends_on` targets and
//! cycles, ports listed once and the exposed one served, mounts of declared volumes at distinct
//! absolute paths, secret keys that are file names) and the bounds of every number. It reports
//! through a [`Report`], which locates each problem. It does not run anything: it only reads the
//! first bytes of component files to tell a component from a core module.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::Read;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use super::report::{
    BackoffField, ContainerAt, ContainerField, ContainerList, Field, MountField, ProbeKind, Report, VolumeField,
};
use super::{Backoff, ComponentSource, ContainerSpec, PodSpec, ProbeAction, VolumeSource};

pub(super) fn check_pod(spec: &PodSpec, report: &mut Report) {
    if let Some(reason) = dns_label_problem(&spec.name) {
        report.push(
            &Field::PodName,
            format!("pod name \"{}\" {reason}; {DNS_LABEL_RULE}", spec.name),
        );
    }
    check_backoff(&spec.restart_backoff, report);
    check_pod_durations(spec, report);
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
    check_faults(spec, report);
}

/// `[[faults]]`: the target's container and port exist (a pod port must be one a container
/// lists in `ports`), `from` names a container, probabilities are within 0..=1.
fn check_faults(spec: &PodSpec, report: &mut Report) {
    for (index, fault) in spec.faults.iter().enumerate() {
        let key = |k: &str| Field::Nested(Box::new(Field::Fault(index)), k.to_string());
        if let Some(problem) = fault.problem() {
            let at = if problem.starts_with("toxicity") {
                "toxicity"
            } else if problem.starts_with("probability") {
                "probability"
            } else {
                "kind"
            };
            report.push(&key(at), problem);
        }
        if let Some(from) = &fault.from
            && container_at(spec, from).is_none()
        {
            report.push(
                &key("from"),
                format!("`from` names {from:?}, which is not a container of this pod"),
            );
        }
        if fault.to.is_egress() {
            continue;
        }
        let port = fault.to.port;
        match fault.to.container() {
            Some(name) => match spec.all_containers().find(|c| c.name == name) {
                None => report.push(
                    &key("to"),
                    format!(
                        "`to` names {name:?}, which is not a container of this pod (an egress \
                         destination is a host name with a dot or an IP address)"
                    ),
                ),
                Some(c) if !c.ports.contains(&port) => report.push(
                    &key("to"),
                    format!("container {name:?} does not list port {port} in its `ports`"),
                ),
                Some(_) => {}
            },
            None => {
                if !spec.all_containers().any(|c| c.ports.contains(&port)) {
                    report.push(
                        &key("to"),
                        format!("no container of this pod lists port {port} in its `ports`"),
                    );
                }
            }
        }
    }
}

pub(super) fn container_at(spec: &PodSpec, name: &str) -> Option<ContainerAt> {
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
pub(super) fn check_dependencies(spec: &PodSpec, report: &mut Report) {
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

pub(super) fn find_cycle<'a>(spec: &'a PodSpec, start: &str, path: &mut Vec<&'a str>) -> Option<Vec<&'a str>> {
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

/// Probes, resources and http limits: values that make sense, every number within its bounds.
pub(super) fn check_health_settings(spec: &PodSpec, report: &mut Report) {
    let lists = [
        (ContainerList::Init, &spec.init_containers),
        (ContainerList::Main, &spec.containers),
    ];
    for (list, containers) in lists {
        for (index, container) in containers.iter().enumerate() {
            let at = ContainerAt { list, index };
            check_resources(at, container, report);
            check_http(at, container, report);
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
                if let ProbeAction::HttpGet { port: 0, .. } | ProbeAction::TcpSocket { port: 0 } = probe.action {
                    report.push(
                        &nested("port"),
                        "port 0 is not a port; use a port from 1 to 65535".to_string(),
                    );
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
                check_duration(
                    &nested("initial_delay"),
                    "initial_delay",
                    probe.initial_delay,
                    Duration::ZERO,
                    report,
                );
                check_duration(&nested("period"), "period", probe.period, MIN_INTERVAL, report);
                check_duration(&nested("timeout"), "timeout", probe.timeout, MIN_INTERVAL, report);
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
                for (key, count) in [
                    ("failure_threshold", probe.failure_threshold),
                    ("success_threshold", probe.success_threshold),
                ] {
                    if !THRESHOLD.contains(&count) {
                        let message = out_of_range(key, count, "a whole number", THRESHOLD.start(), THRESHOLD.end());
                        report.push(&nested(key), message);
                    }
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

fn check_resources(at: ContainerAt, container: &ContainerSpec, report: &mut Report) {
    if let Some(memory) = container.resources.memory {
        let field = Field::Container(at, ContainerField::Memory);
        if memory < *MEMORY.start() {
            report.push(
                &field,
                format!("a memory limit of {memory} bytes is too small to run a component; give at least \"1MiB\""),
            );
        } else if memory > *MEMORY.end() {
            report.push(&field, out_of_range("memory", memory, "a size", "\"1MiB\"", "\"1TiB\""));
        }
    }
    if let Some(cpu) = container.resources.cpu
        && !CPU.contains(&cpu)
    {
        // `contains` is false for NaN too.
        report.push(
            &Field::Container(at, ContainerField::Cpu),
            format!(
                "cpu = {} is not a share of a core; write a number from {} to {}, e.g. 0.5 for half a core",
                show_float(cpu),
                CPU.start(),
                CPU.end()
            ),
        );
    }
}

fn check_http(at: ContainerAt, container: &ContainerSpec, report: &mut Report) {
    let nested = |key: &str| Field::Nested(Box::new(Field::Container(at, ContainerField::Http)), key.to_string());
    let http = &container.http;
    if let Some(timeout) = http.request_timeout {
        check_duration(
            &nested("request_timeout"),
            "request_timeout",
            timeout,
            MIN_INTERVAL,
            report,
        );
    }
    if let Some(instances) = http.max_concurrent_instances {
        if instances == 0 {
            report.push(
                &nested("max_concurrent_instances"),
                "max_concurrent_instances must be at least 1".into(),
            );
        } else if !INSTANCES.contains(&instances) {
            let (low, high) = (INSTANCES.start(), INSTANCES.end());
            let message = out_of_range("max_concurrent_instances", instances, "a whole number", low, high);
            report.push(&nested("max_concurrent_instances"), message);
        }
    }
    if let Some(bytes) = http.max_request_body
        && !REQUEST_BODY.contains(&bytes)
    {
        let message = out_of_range("max_request_body", bytes, "a size", "0", "\"1TiB\"");
        report.push(&nested("max_request_body"), message);
    }
}

pub(super) const DNS_LABEL_RULE: &str =
    "use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit";

/// True if `name` is a DNS label (RFC 1123, as Kubernetes names are): the one rule for pod,
/// container and volume names, shared with everything that takes a name from outside (the
/// control socket), so a name the spec accepts is accepted everywhere and nothing else is.
pub fn is_dns_label(name: &str) -> bool {
    dns_label_problem(name).is_none()
}

/// Why `name` is not a DNS label (RFC 1123, as Kubernetes names are), or `None` if it is one.
pub(super) fn dns_label_problem(name: &str) -> Option<String> {
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

pub(super) fn check_backoff(backoff: &Backoff, report: &mut Report) {
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
    let durations = [
        (
            BackoffField::Initial,
            "restart_backoff.initial",
            backoff.initial,
            MIN_INTERVAL,
        ),
        (BackoffField::Max, "restart_backoff.max", backoff.max, MIN_INTERVAL),
        (
            BackoffField::ResetAfter,
            "restart_backoff.reset_after",
            backoff.reset_after,
            Duration::ZERO,
        ),
    ];
    for (which, key, value, min) in durations {
        check_duration(&Field::Backoff(which), key, value, min, report);
    }
}

/// The pod's own waits: how long it holds connections and how long it lets containers stop.
pub(super) fn check_pod_durations(spec: &PodSpec, report: &mut Report) {
    check_duration(
        &Field::TerminationGracePeriod,
        "termination_grace_period",
        spec.termination_grace_period,
        Duration::ZERO,
        report,
    );
    check_duration(
        &Field::ReadinessWait,
        "readiness_wait",
        spec.readiness_wait,
        Duration::ZERO,
        report,
    );
}

// ---- bounds of numbers -----------------------------------------------------------------------
//
// Every number a spec sets has bounds, checked here against the model (so Rust-built specs meet
// them too), with one message shape naming the field and its range. The bounds are generous:
// they reject slips of a unit and values that would overflow the arithmetic downstream
// (timers, throttling pauses), not choices.

/// The longest wait any field takes: a day. A longer one is a slip of the unit, and every timer
/// built from a spec stays far from `Instant` overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest period, timeout or back-off: a millisecond (a zero or nanosecond period would
/// make the supervisor spin).
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// `resources.cpu`: from Kubernetes' smallest unit (one millicore) to more cores than a host has.
pub(super) const CPU: RangeInclusive<f64> = 0.001..=1024.0;
/// `resources.memory`: enough to instantiate a component, at most 1 TiB.
pub(super) const MEMORY: RangeInclusive<u64> = (1 << 20)..=(1 << 40);
/// `http.max_request_body`: 0 refuses every body.
pub(super) const REQUEST_BODY: RangeInclusive<u64> = 0..=(1 << 40);
/// Probe `failure_threshold` and `success_threshold`: generous, since a startup probe with a
/// short period and a large threshold is how a slow start is allowed for (as in Kubernetes).
pub(super) const THRESHOLD: RangeInclusive<u32> = 1..=1_000_000;
/// `http.max_concurrent_instances` (the engine's instance pool is smaller still).
pub(super) const INSTANCES: RangeInclusive<usize> = 1..=10_000;

/// The one shape of every bound message: `key = value is out of range; use WHAT from A to B`.
pub(super) fn out_of_range(
    key: &str,
    shown: impl Display,
    what: &str,
    low: impl Display,
    high: impl Display,
) -> String {
    format!("{key} = {shown} is out of range; use {what} from {low} to {high}")
}

/// `0.5` as `0.5` but `1e-30` as `1e-30`, not as thirty-one digits.
fn show_float(value: f64) -> String {
    let plain = value.to_string();
    if plain.len() > 12 { format!("{value:e}") } else { plain }
}

/// Reports `value` unless it is from `min` to [`MAX_DURATION`].
fn check_duration(field: &Field, key: &str, value: Duration, min: Duration, report: &mut Report) {
    if value < min || value > MAX_DURATION {
        let shown = format!("\"{}\"", humantime::format_duration(value));
        let (low, high) = (
            humantime::format_duration(min),
            humantime::format_duration(MAX_DURATION),
        );
        report.push(field, out_of_range(key, shown, "a duration", low, high));
    }
}

pub(super) fn check_volumes(spec: &PodSpec, report: &mut Report) {
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
pub(super) fn plain_file_name_problem(file_name: &str) -> Option<&'static str> {
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

pub(super) fn check_containers(spec: &PodSpec, report: &mut Report) {
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

pub(super) fn check_mounts(spec: &PodSpec, at: ContainerAt, container: &ContainerSpec, report: &mut Report) {
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

pub(super) fn check_expose(spec: &PodSpec, report: &mut Report) {
    for (index, name) in spec.hostnames.iter().enumerate() {
        if name.len() > 253 || !name.split('.').all(is_dns_label) {
            let message = format!(
                "hostname {name:?} is not a host name: dot-separated labels of lowercase letters, \
                 digits and '-', at most 253 characters"
            );
            report.push(&Field::ExposeHostname(index), message);
        }
    }
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

// ---- components ----------------------------------------------------------------------------

/// The first 8 bytes of a component: the `\0asm` magic, version 0x0d and layer 1 (component).
pub(super) const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
/// The first 8 bytes of a core module: the `\0asm` magic, version 1, layer 0 (core module).
pub(super) const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\x00\x00\x00";

/// Checks that `source` exists and starts like a WASI 0.2 component; only the header is read,
/// compilation will find the rest.
pub(super) fn check_component(source: &ComponentSource, base_dir: &Path) -> Result<(), String> {
    match source {
        ComponentSource::Bytes(bytes) => check_component_header(bytes, "the component (given as bytes)"),
        // Pulled and checked (digests and header) when the pod starts.
        ComponentSource::Image(_) => Ok(()),
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

pub(super) fn read_header(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut header = Vec::with_capacity(COMPONENT_HEADER.len());
    std::fs::File::open(path)?
        .take(COMPONENT_HEADER.len() as u64)
        .read_to_end(&mut header)?;
    Ok(header)
}

pub(super) fn check_component_header(header: &[u8], what: &str) -> Result<(), String> {
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
