//! The TOML contract of `wasmpod.toml`, as written: the first stage of reading a spec.
//!
//! These serde types mirror the file one to one and reject unknown fields. Every value a later
//! stage may need to point at is `Spanned`, and ports and counts are read as any integer so
//! that an out-of-range value gets a message naming the field and its range at its own
//! position instead of serde's "expected u16"; serde errors (unknown fields, wrong types) carry
//! their own spans. Nothing here interprets a value: durations, sizes and rules stay strings
//! until `lower` turns them into the model.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPod {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) restart_policy: RawRestartPolicy,
    pub(super) restart_backoff: Option<RawBackoff>,
    pub(super) termination_grace_period: Option<Spanned<String>>,
    pub(super) readiness_wait: Option<Spanned<String>>,
    pub(super) expose: Option<RawExpose>,
    #[serde(default)]
    pub(super) volumes: Vec<Spanned<RawVolume>>,
    #[serde(default)]
    pub(super) init_containers: Vec<RawContainer>,
    /// Optional here so that a pod without containers gets our message, not serde's.
    pub(super) containers: Option<Spanned<Vec<RawContainer>>>,
    #[serde(default)]
    pub(super) faults: Vec<Spanned<RawFault>>,
}

/// `[[faults]]`: one injected network fault. Every kind's own fields are listed here, all
/// optional; `lower` reports a field that belongs to another kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFault {
    pub(super) to: Spanned<String>,
    pub(super) from: Option<Spanned<String>>,
    pub(super) kind: Spanned<String>,
    pub(super) direction: Option<Spanned<String>>,
    pub(super) toxicity: Option<Spanned<f64>>,
    pub(super) latency: Option<Spanned<String>>,
    pub(super) jitter: Option<Spanned<String>>,
    pub(super) rate: Option<Spanned<RawQuantity>>,
    pub(super) delay: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) bytes: Option<Spanned<RawQuantity>>,
    pub(super) average_size: Option<Spanned<RawQuantity>>,
    pub(super) size_variation: Option<Spanned<RawQuantity>>,
    pub(super) probability: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawRestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub(super) initial: Option<Spanned<String>>,
    pub(super) max: Option<Spanned<String>>,
    pub(super) reset_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpose {
    pub(super) port: Spanned<RawPort>,
    #[serde(default)]
    pub(super) ready: RawExposeReady,
    /// Host names an edge host routes to this pod (besides `NAME.localhost`).
    #[serde(default)]
    pub(super) hostnames: Vec<Spanned<String>>,
    /// On an edge host, a host TCP port of the pod's own (0: any free port).
    pub(super) host_port: Option<Spanned<RawPort>>,
}

/// `[expose] ready`: whose readiness opens the front proxy.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawExposeReady {
    #[default]
    Container,
    Pod,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVolume {
    pub(super) name: Spanned<String>,
    pub(super) empty_dir: Option<Spanned<RawEmptyDir>>,
    pub(super) host_path: Option<Spanned<String>>,
    pub(super) secret: Option<Spanned<BTreeMap<Spanned<String>, String>>>,
}

/// `empty_dir = {}`: a table so that options (a size limit, say) can be added later.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an empty table `{}`")]
pub(super) struct RawEmptyDir {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainer {
    pub(super) name: Spanned<String>,
    /// A component file; exactly one of `component` and `image`.
    pub(super) component: Option<Spanned<String>>,
    /// An OCI image reference (a wasm artifact), resolved when the pod starts.
    pub(super) image: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) args: Vec<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub(super) ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    pub(super) volume_mounts: Vec<RawMount>,
    #[serde(default)]
    pub(super) allowed_outbound_hosts: Vec<Spanned<String>>,
    pub(super) resources: Option<RawResources>,
    #[serde(default)]
    pub(super) depends_on: Vec<Spanned<RawDependency>>,
    pub(super) startup_probe: Option<Spanned<RawProbe>>,
    pub(super) readiness_probe: Option<Spanned<RawProbe>>,
    pub(super) liveness_probe: Option<Spanned<RawProbe>>,
    pub(super) http: Option<RawHttp>,
    /// Parsed by serde, so a bad value is reported at its position with the allowed ones.
    pub(super) update_strategy: Option<RawUpdateStrategy>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawUpdateStrategy {
    Surge,
    Recreate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) request_timeout: Option<Spanned<String>>,
    pub(super) max_concurrent_instances: Option<Spanned<RawCount>>,
    pub(super) max_request_body: Option<Spanned<RawQuantity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResources {
    /// `"64MiB"`, `"1GiB"`, `"500M"` or a number of bytes.
    pub(super) memory: Option<Spanned<RawQuantity>>,
    /// A share of one core.
    pub(super) cpu: Option<Spanned<f64>>,
}

/// A memory size as written: a string with a unit, or a plain number of bytes.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a size like \"64MiB\" or a number of bytes")]
pub(super) enum RawQuantity {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDependency {
    pub(super) container: String,
    #[serde(default)]
    pub(super) condition: RawCondition,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawCondition {
    #[default]
    Started,
    Ready,
    Completed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub(super) http_get: Option<RawHttpGet>,
    pub(super) tcp_socket: Option<RawTcpSocket>,
    pub(super) health: Option<RawEmptyDir>,
    pub(super) initial_delay: Option<Spanned<String>>,
    pub(super) period: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) failure_threshold: Option<Spanned<RawCount>>,
    pub(super) success_threshold: Option<Spanned<RawCount>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpGet {
    pub(super) port: Spanned<RawPort>,
    #[serde(default = "root_path")]
    pub(super) path: String,
}

pub(super) fn root_path() -> String {
    "/".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcpSocket {
    pub(super) port: Spanned<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMount {
    pub(super) volume: Spanned<String>,
    pub(super) mount_path: Spanned<String>,
    /// `None` lets secret mounts default to read-only while other mounts default to writable.
    pub(super) read_only: Option<Spanned<bool>>,
}

/// A port as written: any integer, so that `70000` gets a range message at its own position
/// instead of serde's "expected u16".
pub(super) struct RawPort(pub(super) i64);

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        wide_integer(deserializer, "a port number from 1 to 65535").map(RawPort)
    }
}

/// A count as written (a probe threshold, a number of instances): any integer, so that `-1` or
/// `99999999999` gets a message naming the field and its range instead of serde's "expected u32".
pub(super) struct RawCount(pub(super) i64);

impl<'de> Deserialize<'de> for RawCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        wide_integer(deserializer, "a whole number").map(RawCount)
    }
}

/// Reads any integer TOML can hold (beyond `i64`, saturated: it is out of every range anyway).
fn wide_integer<'de, D: serde::Deserializer<'de>>(deserializer: D, expecting: &'static str) -> Result<i64, D::Error> {
    struct WideVisitor(&'static str);
    impl serde::de::Visitor<'_> for WideVisitor {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
            Ok(i64::try_from(value).unwrap_or(i64::MAX))
        }
    }
    deserializer.deserialize_i64(WideVisitor(expecting))
}
