//! Lowering: the raw TOML (`raw`) into the typed model ([`PodSpec`]), the second stage.
//!
//! Every string that means something is parsed here, once: durations, sizes, the egress policy,
//! paths (resolved against the spec file's directory). Later code never re-parses a string.
//! Lowering records where each field was written, so that `check` can point at it, and
//! reports only what the model cannot express (a volume with two sources, a duration that does
//! not parse, a port beyond u16, a bad `allowed_outbound_hosts` entry); every rule that can be
//! stated on the model is left to `check`, which Rust-built specs go through too.

use std::collections::HashSet;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::egress::EgressPolicy;
use crate::net::fault::Fault;

use super::check;
use super::raw::{
    RawCondition, RawContainer, RawCount, RawExposeReady, RawFault, RawHttp, RawPod, RawPort, RawProbe, RawQuantity,
    RawResources, RawRestartPolicy, RawUpdateStrategy, RawVolume,
};
use super::report::{BackoffField, ContainerAt, ContainerField, Field, MountField, ProbeKind, Report, VolumeField};
use super::{
    Backoff, ComponentSource, ContainerSpec, Dependency, DependencyCondition, Expose, ExposeReady, HttpSettings,
    MountSpec, PodSpec, Probe, ProbeAction, Resources, RestartPolicy, UpdateStrategy, VolumeSource, VolumeSpec,
};

/// `blobs`: the edge host's blob directory, where `component = "sha256:HEX"` resolves to the file
/// `HEX`; without it such a reference is an error (only a host holds blobs).
pub(super) fn lower_pod(raw: RawPod, base_dir: &Path, blobs: Option<&Path>, report: &mut Report) -> PodSpec {
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

    let mut hostnames = Vec::new();
    let mut host_port = None;
    let expose = raw.expose.and_then(|raw_expose| {
        if let Some(written) = &raw_expose.host_port {
            let RawPort(number) = *written.get_ref();
            host_port = u16::try_from(number).ok();
            if host_port.is_none() {
                let message =
                    format!("host_port {number} is out of range; use a port from 1 to 65535, or 0 for any free port");
                report.push_at_span(written.span(), message);
            }
        }
        report.record(Field::ExposePort, raw_expose.port.span());
        for (index, name) in raw_expose.hostnames.iter().enumerate() {
            report.record(Field::ExposeHostname(index), name.span());
            hostnames.push(name.get_ref().to_ascii_lowercase());
        }
        let port = lower_port(&raw_expose.port, report)?;
        let ready = match raw_expose.ready {
            RawExposeReady::Container => ExposeReady::Container,
            RawExposeReady::Pod => ExposeReady::Pod,
        };
        Some(Expose { port, ready })
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
            lower_container(container, at, &secret_volume_names, base_dir, blobs, report)
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
                    lower_container(container, at, &secret_volume_names, base_dir, blobs, report)
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
    let faults = raw
        .faults
        .into_iter()
        .enumerate()
        .filter_map(|(index, fault)| lower_fault(index, fault, report))
        .collect();

    PodSpec {
        name: raw.name.into_inner(),
        restart_policy,
        restart_backoff,
        termination_grace_period,
        readiness_wait,
        expose,
        hostnames,
        host_port,
        volumes,
        init_containers,
        containers,
        base_dir: base_dir.to_path_buf(),
        source_file: None,
        faults,
    }
}

/// `[[faults]]` entry `index`: its kind, that kind's fields only, and the common ones. The
/// target's container and port and the probabilities are `check`'s (recorded here).
fn lower_fault(index: usize, raw: Spanned<RawFault>, report: &mut Report) -> Option<Fault> {
    use crate::net::fault::{Direction, FaultKind, FaultTarget};
    report.record(Field::Fault(index), raw.span());
    let raw = raw.into_inner();
    let key = |k: &str| Field::Nested(Box::new(Field::Fault(index)), k.to_string());
    let kind_name = raw.kind.get_ref().as_str();
    let Some(own) = FaultKind::fields_of(kind_name) else {
        report.push_at_span(
            raw.kind.span(),
            format!(
                "unknown fault kind {kind_name:?}; use one of: {}",
                FaultKind::NAMES.join(", ")
            ),
        );
        return None;
    };
    // Fields of another kind are mistakes (a `latency` on a `down` fault would do nothing).
    let present: [(&str, Option<Range<usize>>); 9] = [
        ("latency", raw.latency.as_ref().map(|v| v.span())),
        ("jitter", raw.jitter.as_ref().map(|v| v.span())),
        ("rate", raw.rate.as_ref().map(|v| v.span())),
        ("delay", raw.delay.as_ref().map(|v| v.span())),
        ("timeout", raw.timeout.as_ref().map(|v| v.span())),
        ("bytes", raw.bytes.as_ref().map(|v| v.span())),
        ("average_size", raw.average_size.as_ref().map(|v| v.span())),
        ("size_variation", raw.size_variation.as_ref().map(|v| v.span())),
        ("probability", raw.probability.as_ref().map(|v| v.span())),
    ];
    let mut ok = true;
    for (name, span) in present {
        if let Some(span) = span
            && !own.contains(&name)
        {
            let takes = if own.is_empty() {
                "no fields of its own".to_string()
            } else {
                format!("only {}", own.join(", "))
            };
            report.push_at_span(
                span,
                format!("`{name}` is not a field of a {kind_name} fault (it takes {takes})"),
            );
            ok = false;
        }
    }
    let fault_field = Field::Fault(index);
    let missing = |name: &str, report: &mut Report| {
        report.push(&fault_field, format!("a {kind_name} fault needs `{name}`"));
    };
    let duration = |name: &str, written: &Option<Spanned<String>>, report: &mut Report| -> Option<Duration> {
        written.as_ref().and_then(|w| lower_duration(key(name), w, report))
    };
    let size = |name: &str, written: &Option<Spanned<RawQuantity>>, report: &mut Report| -> Option<u64> {
        let w = written.as_ref()?;
        report.record(key(name), w.span());
        match w.get_ref() {
            RawQuantity::Bytes(b) => Some(*b),
            RawQuantity::Text(t) => parse_bytes(t).or_else(|| {
                report.push(
                    &key(name),
                    format!("`{t}` is not a size; write it like \"64KiB\" or a number of bytes"),
                );
                None
            }),
        }
    };
    let kind = match kind_name {
        "latency" => match duration("latency", &raw.latency, report) {
            Some(latency) => FaultKind::Latency {
                latency,
                jitter: duration("jitter", &raw.jitter, report).unwrap_or_default(),
            },
            None => {
                if raw.latency.is_none() {
                    missing("latency", report);
                }
                return None;
            }
        },
        "bandwidth" => match size("rate", &raw.rate, report) {
            Some(rate) => FaultKind::Bandwidth { rate },
            None => {
                if raw.rate.is_none() {
                    missing("rate", report);
                }
                return None;
            }
        },
        "slow_close" => FaultKind::SlowClose {
            delay: duration("delay", &raw.delay, report).unwrap_or_default(),
        },
        "timeout" => FaultKind::Timeout {
            timeout: duration("timeout", &raw.timeout, report).unwrap_or_default(),
        },
        "reset_peer" => FaultKind::ResetPeer {
            timeout: duration("timeout", &raw.timeout, report).unwrap_or_default(),
        },
        "slicer" => FaultKind::Slicer {
            average_size: size("average_size", &raw.average_size, report).unwrap_or(1024) as usize,
            size_variation: size("size_variation", &raw.size_variation, report).unwrap_or(0) as usize,
            delay: duration("delay", &raw.delay, report).unwrap_or_default(),
        },
        "limit_data" => match size("bytes", &raw.bytes, report) {
            Some(bytes) => FaultKind::LimitData { bytes },
            None => {
                if raw.bytes.is_none() {
                    missing("bytes", report);
                }
                return None;
            }
        },
        "loss" => match &raw.probability {
            Some(p) => {
                report.record(key("probability"), p.span());
                FaultKind::Loss {
                    probability: *p.get_ref(),
                }
            }
            None => {
                missing("probability", report);
                return None;
            }
        },
        _ => FaultKind::Down,
    };
    report.record(key("to"), raw.to.span());
    let to: FaultTarget = match raw.to.get_ref().parse() {
        Ok(to) => to,
        Err(message) => {
            report.push(&key("to"), message);
            return None;
        }
    };
    let direction = match &raw.direction {
        None => Direction::Both,
        Some(d) => match d.get_ref().parse() {
            Ok(d) => d,
            Err(message) => {
                report.push_at_span(d.span(), message);
                return None;
            }
        },
    };
    if let Some(from) = &raw.from {
        report.record(key("from"), from.span());
    }
    if let Some(t) = &raw.toxicity {
        report.record(key("toxicity"), t.span());
    }
    ok.then(|| Fault {
        kind,
        to,
        from: raw.from.map(|f| f.into_inner().to_ascii_lowercase()),
        direction,
        toxicity: raw.toxicity.map_or(1.0, |t| t.into_inner()),
    })
}

pub(super) fn lower_duration(field: Field, written: &Spanned<String>, report: &mut Report) -> Option<Duration> {
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
pub(super) fn lower_port(written: &Spanned<RawPort>, report: &mut Report) -> Option<u16> {
    let RawPort(number) = *written.get_ref();
    let port = u16::try_from(number).ok();
    if port.is_none() {
        let message = format!("port {number} is out of range; use a port from 1 to 65535");
        report.push_at_span(written.span(), message);
    }
    port
}

/// A count that fits its model type, or `None` after reporting it with the field's range
/// (`range` is checked again, against the model, by `check`; here only what the type cannot
/// hold is reported, negative numbers and giants).
fn lower_count<T: TryFrom<i64> + std::fmt::Display>(
    field: Field,
    key: &str,
    written: &Spanned<RawCount>,
    range: &RangeInclusive<T>,
    report: &mut Report,
) -> Option<T> {
    report.record(field.clone(), written.span());
    let RawCount(number) = *written.get_ref();
    let count = T::try_from(number).ok();
    if count.is_none() {
        let message = check::out_of_range(key, number, "a whole number", range.start(), range.end());
        report.push(&field, message);
    }
    count
}

pub(super) fn lower_volume(
    volume: Spanned<RawVolume>,
    index: usize,
    base_dir: &Path,
    report: &mut Report,
) -> VolumeSpec {
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

pub(super) fn lower_container(
    container: RawContainer,
    at: ContainerAt,
    secret_volume_names: &HashSet<&str>,
    base_dir: &Path,
    blobs: Option<&Path>,
    report: &mut Report,
) -> ContainerSpec {
    let field = |which: ContainerField| Field::Container(at, which);
    report.record(field(ContainerField::Name), container.name.span());
    let component = lower_component_source(&container, base_dir, blobs, &field, report);

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
        component,
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
        update_strategy: match container.update_strategy {
            None | Some(RawUpdateStrategy::Surge) => UpdateStrategy::Surge,
            Some(RawUpdateStrategy::Recreate) => UpdateStrategy::Recreate,
        },
    }
}

/// `component = "file.wasm"` or `image = "REGISTRY/REPO:TAG"`: exactly one, reported where it
/// is written (or at the container's name when neither is).
fn lower_component_source(
    container: &RawContainer,
    base_dir: &Path,
    blobs: Option<&Path>,
    field: &dyn Fn(ContainerField) -> Field,
    report: &mut Report,
) -> ComponentSource {
    let source_field = field(ContainerField::Component);
    match (&container.component, &container.image) {
        (Some(component), None) => {
            report.record(source_field.clone(), component.span());
            lower_component(component, base_dir, blobs, &source_field, report)
        }
        (component, Some(image)) => {
            report.record(source_field.clone(), image.span());
            if component.is_some() {
                report.push(
                    &source_field,
                    "a container takes either `component` (a file) or `image` (a registry reference), not both".into(),
                );
            }
            match image.get_ref().parse::<crate::oci::Reference>() {
                Ok(reference) => ComponentSource::Image(reference),
                Err(message) => {
                    report.push(&source_field, message);
                    ComponentSource::Bytes(super::check::COMPONENT_HEADER.to_vec().into())
                }
            }
        }
        (None, None) => {
            let name_field = field(ContainerField::Name);
            report.record(source_field, container.name.span());
            report.push(
                &name_field,
                format!(
                    "container \"{}\" has no component; set `component = \"file.wasm\"` or \
                     `image = \"REGISTRY/REPO:TAG\"`",
                    container.name.get_ref()
                ),
            );
            // A stand-in: checks later must not report this container's component again.
            ComponentSource::Bytes(super::check::COMPONENT_HEADER.to_vec().into())
        }
    }
}

pub(super) fn lower_http(raw: RawHttp, field: &dyn Fn(ContainerField) -> Field, report: &mut Report) -> HttpSettings {
    let request_timeout = raw.request_timeout.and_then(|written| {
        lower_duration(
            Field::Nested(Box::new(field(ContainerField::Http)), "request_timeout".into()),
            &written,
            report,
        )
    });
    let nested = |key: &str| Field::Nested(Box::new(field(ContainerField::Http)), key.to_string());
    let max_concurrent_instances = raw.max_concurrent_instances.and_then(|written| {
        let key = "max_concurrent_instances";
        lower_count(nested(key), key, &written, &check::INSTANCES, report)
    });
    let max_request_body = raw.max_request_body.and_then(|written| {
        report.record(nested("max_request_body"), written.span());
        match written.get_ref() {
            RawQuantity::Bytes(bytes) => Some(*bytes),
            RawQuantity::Text(text) => parse_bytes(text).or_else(|| {
                report.push(
                    &nested("max_request_body"),
                    format!("`{text}` is not a size; write it like \"16MiB\" or a number of bytes"),
                );
                None
            }),
        }
    });
    HttpSettings {
        request_timeout,
        max_concurrent_instances,
        max_request_body,
    }
}

pub(super) fn lower_resources(
    raw: RawResources,
    field: &dyn Fn(ContainerField) -> Field,
    report: &mut Report,
) -> Resources {
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
pub(super) fn parse_bytes(text: &str) -> Option<u64> {
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

pub(super) fn lower_probe(raw: Spanned<RawProbe>, field: Field, report: &mut Report) -> Option<Probe> {
    report.record(field.clone(), raw.span());
    let span = raw.span();
    let raw = raw.into_inner();
    let mut actions = Vec::new();
    let port_field = Field::Nested(Box::new(field.clone()), "port".to_string());
    if let Some(http_get) = &raw.http_get
        && let Some(port) = lower_port(&http_get.port, report)
    {
        report.record(port_field.clone(), http_get.port.span());
        actions.push(ProbeAction::HttpGet {
            port,
            path: http_get.path.clone(),
        });
    }
    if let Some(tcp_socket) = &raw.tcp_socket
        && let Some(port) = lower_port(&tcp_socket.port, report)
    {
        report.record(port_field, tcp_socket.port.span());
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
    for (key, written, slot) in [
        ("failure_threshold", raw.failure_threshold, &mut probe.failure_threshold),
        ("success_threshold", raw.success_threshold, &mut probe.success_threshold),
    ] {
        let nested = Field::Nested(Box::new(field.clone()), key.to_string());
        if let Some(written) = written
            && let Some(count) = lower_count(nested, key, &written, &check::THRESHOLD, report)
        {
            *slot = count;
        }
    }
    Some(probe)
}

/// The spec file's directory, absolute; a bare file name lives in the current directory.
pub(super) fn spec_directory(file: &Path) -> std::io::Result<PathBuf> {
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // `absolute` (unlike `canonicalize`) keeps symlinks, so messages show the paths users wrote.
    std::path::absolute(directory)
}

/// A component path, or `sha256:HEX` naming a blob of the edge host (see [`crate::host`]).
fn lower_component(
    written: &Spanned<String>,
    base_dir: &Path,
    blobs: Option<&Path>,
    field: &Field,
    report: &mut Report,
) -> ComponentSource {
    let text = written.get_ref();
    let Some(hex) = text.strip_prefix("sha256:") else {
        return ComponentSource::File(resolve(base_dir, text));
    };
    if !is_sha256_hex(hex) {
        let message = format!("component {text:?}: a digest is `sha256:` and 64 lowercase hex digits");
        report.push(field, message);
        return ComponentSource::File(resolve(base_dir, text));
    }
    match blobs {
        Some(blobs) => ComponentSource::File(blobs.join(hex)),
        None => {
            let message = format!(
                "component {text:?} names a blob by digest, which only an edge host holds: deploy \
                 it with `wasmpod apply`, or give a file path here"
            );
            report.push(field, message);
            ComponentSource::File(resolve(base_dir, text))
        }
    }
}

/// 64 lowercase hex digits: the form a sha256 digest takes in `sha256:HEX` and the blob store.
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Joins `relative` onto `base_dir`, dropping `.` components so messages show clean paths.
pub(super) fn resolve(base_dir: &Path, relative: &str) -> PathBuf {
    let joined = base_dir.join(relative);
    std::path::absolute(&joined).unwrap_or(joined)
}
