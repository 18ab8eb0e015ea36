//! `GET /metrics`: the host's pods and containers in the Prometheus text format (0.0.4).
//!
//! It owns the metric names, labels and HELP texts. At each scrape it takes one snapshot of
//! every pod — its status (phase; per container state, readiness, restarts) and its
//! containers' counters ([`crate::counters`]: memory, guest time, http requests and latency,
//! network bytes, egress denials) — and hands it to the `prometheus-client` crate's encoder,
//! which writes the names, `# HELP`/`# TYPE` lines, escaping, `_total` suffixes and histogram
//! series. Nothing is registered between scrapes: the counters live with the containers, so a
//! deleted pod simply stops appearing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use super::Host;
use crate::counters::ContainerMetrics;
use crate::status::{ContainerState, PodPhase, PodStatus};

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The exposition text.
pub fn render(host: &Host) -> String {
    let pods = host
        .pods()
        .iter()
        .map(|pod| PodSample {
            status: pod.status(),
            containers: pod.container_metrics(),
        })
        .collect();
    encode(Scrape { pods })
}

/// Encodes one scrape's snapshot.
fn encode(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing into a String cannot fail, and every value here is encodable.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// One pod at the moment of the scrape.
#[derive(Debug)]
struct PodSample {
    status: PodStatus,
    containers: Vec<ContainerMetrics>,
}

/// Every pod at the moment of the scrape.
#[derive(Debug)]
struct Scrape {
    pods: Vec<PodSample>,
}

/// One container's labels: pod and container names (DNS labels; the encoder escapes anyway).
type Labels<'a> = [(&'static str, &'a str); 2];

impl Scrape {
    /// Every container of every pod with its status and (once prepared) its counters.
    fn containers(&self) -> impl Iterator<Item = (Labels<'_>, &crate::ContainerStatus, Option<&ContainerMetrics>)> {
        self.pods.iter().flat_map(|pod| {
            pod.status.containers.iter().map(move |status| {
                let metrics = pod.containers.iter().find(|m| m.container == status.name);
                (
                    [("pod", pod.status.name.as_str()), ("container", status.name.as_str())],
                    status,
                    metrics,
                )
            })
        })
    }

    /// Every container's counters, with its labels.
    fn counted(&self) -> impl Iterator<Item = (Labels<'_>, &ContainerMetrics)> {
        self.containers()
            .filter_map(|(labels, _, metrics)| metrics.map(|metrics| (labels, metrics)))
    }
}

/// Writes one family: its descriptor, then one sample per `(labels, value)`. Values are
/// integers (`u64`: written as such) or seconds (`f64`).
fn family<L: EncodeLabelSet, V: EncodeGaugeValue + EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, V, u64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        family(
            e,
            "wasmpod_pods",
            "Pods the host runs.",
            MetricType::Gauge,
            [(NO_LABELS, self.pods.len() as u64)],
        )?;
        family(
            e,
            "wasmpod_pod_phase",
            "The pod's phase: 1 for the current one.",
            MetricType::Gauge,
            self.pods.iter().flat_map(|pod| {
                let current = phase_name(&pod.status.phase);
                PHASES.iter().map(move |phase| {
                    (
                        [("pod", pod.status.name.as_str()), ("phase", *phase)],
                        u64::from(*phase == current),
                    )
                })
            }),
        )?;
        family(
            e,
            "wasmpod_container_state",
            "The container's state: 1 for the current one.",
            MetricType::Gauge,
            self.containers().flat_map(|([pod, container], status, _)| {
                let current = state_name(&status.state);
                STATES
                    .iter()
                    .map(move |state| ([pod, container, ("state", *state)], u64::from(*state == current)))
            }),
        )?;
        family(
            e,
            "wasmpod_container_ready",
            "1 when the container is ready (past its startup probe, passing its readiness probe).",
            MetricType::Gauge,
            self.containers()
                .map(|(labels, status, _)| (labels, u64::from(status.ready))),
        )?;
        family(
            e,
            "wasmpod_container_restarts",
            "Restarts of the container since its pod started.",
            MetricType::Counter,
            self.containers()
                .map(|(labels, status, _)| (labels, u64::from(status.restart_count))),
        )?;
        family(
            e,
            "wasmpod_container_memory_usage_bytes",
            "Bytes the container holds now: the linear memories and tables of all its live \
             instances (an http container's concurrent requests together) and the bytes its \
             sockets keep queued in the host; what its memory limit is checked against.",
            MetricType::Gauge,
            self.counted().map(|(labels, m)| (labels, m.memory_used_bytes)),
        )?;
        family(
            e,
            "wasmpod_container_memory_limit_bytes",
            "The container's memory limit (containers without one have no sample).",
            MetricType::Gauge,
            self.counted()
                .filter_map(|(labels, m)| m.memory_limit_bytes.map(|limit| (labels, limit))),
        )?;
        family(
            e,
            "wasmpod_container_cpu_seconds",
            "Seconds a host thread spent running the container's guest code (its wasm and the \
             host calls it makes): wall time measured around each poll of its runs and requests, \
             so time the OS gave another thread during a poll is included and time spent waiting \
             for I/O, timers or its CPU share is not. Health checks are not counted.",
            MetricType::Counter,
            self.counted().map(|(labels, m)| (labels, m.guest_seconds)),
        )?;
        family(
            e,
            "wasmpod_container_http_requests",
            "Requests an http container answered, by status class (host-made answers such as \
             413, 503, 504 and the 500 after a trap included).",
            MetricType::Counter,
            self.counted().flat_map(|([pod, container], m)| {
                let responses = m.http.as_ref().map(|http| http.responses).unwrap_or_default();
                let classes = if m.http.is_some() { &STATUS_CLASSES[..] } else { &[] };
                classes
                    .iter()
                    .zip(responses)
                    .map(move |(class, count)| ([pod, container, ("code", *class)], count))
            }),
        )?;
        let mut latency = e.encode_descriptor(
            "wasmpod_container_http_request_duration_seconds",
            "Time from a request's arrival at an http container to its response head.",
            None,
            MetricType::Histogram,
        )?;
        for (labels, m) in self.counted() {
            let Some(http) = &m.http else { continue };
            // The encoder takes each bucket's own count and sums them up itself.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = http
                .latency
                .buckets
                .iter()
                .map(|&(bound, cumulative)| {
                    let own = cumulative - below;
                    below = cumulative;
                    (bound, own)
                })
                .collect();
            latency.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                http.latency.sum_seconds,
                http.latency.count,
                &buckets,
                None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }
        for (name, help, pick) in NETWORK_FAMILIES {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                self.counted().flat_map(|([pod, container], m)| {
                    let (pod_bytes, egress_bytes) = pick(m);
                    [
                        ([pod, container, ("peer", "pod")], pod_bytes),
                        ([pod, container, ("peer", "egress")], egress_bytes),
                    ]
                }),
            )?;
        }
        family(
            e,
            "wasmpod_container_egress_denials",
            "Attempts of the container to reach outside the pod that its egress policy refused, \
             by kind (connect, lookup, http).",
            MetricType::Counter,
            self.counted().flat_map(|([pod, container], m)| {
                let denials = m.egress_denials;
                [
                    ([pod, container, ("kind", "connect")], denials.connect),
                    ([pod, container, ("kind", "lookup")], denials.lookup),
                    ([pod, container, ("kind", "http")], denials.http),
                ]
            }),
        )?;
        Ok(())
    }
}

/// An empty label set.
const NO_LABELS: [(&str, &str); 0] = [];

type NetworkFamily = (&'static str, &'static str, fn(&ContainerMetrics) -> (u64, u64));

/// The network byte families: name, help, and which counters `(pod, egress)` they report.
const NETWORK_FAMILIES: [NetworkFamily; 2] = [
    (
        "wasmpod_container_network_receive_bytes",
        "Bytes the container read from its wasi:sockets connections and datagrams, by peer: \
         inside the pod (siblings, clients forwarded into the pod) or outside it (egress, which \
         also counts its outgoing wasi:http connections to the outside as they cross the host \
         socket, TLS included).",
        |m| (m.network.pod_received, m.network.egress_received),
    ),
    (
        "wasmpod_container_network_transmit_bytes",
        "Bytes the container wrote to its wasi:sockets connections and datagrams, by peer: \
         inside the pod (siblings, clients forwarded into the pod) or outside it (egress, which \
         also counts its outgoing wasi:http connections to the outside as they cross the host \
         socket, TLS included).",
        |m| (m.network.pod_sent, m.network.egress_sent),
    ),
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

const STATES: [&str; 3] = ["waiting", "running", "terminated"];

const PHASES: [&str; 6] = ["pending", "initializing", "running", "succeeded", "failed", "stopped"];

fn state_name(state: &ContainerState) -> &'static str {
    match state {
        ContainerState::Waiting { .. } => "waiting",
        ContainerState::Running { .. } => "running",
        ContainerState::Terminated { .. } => "terminated",
    }
}

fn phase_name(phase: &PodPhase) -> &'static str {
    match phase {
        PodPhase::Pending => "pending",
        PodPhase::Initializing => "initializing",
        PodPhase::Running => "running",
        PodPhase::Succeeded => "succeeded",
        PodPhase::Failed { .. } => "failed",
        PodPhase::Stopped => "stopped",
    }
}
