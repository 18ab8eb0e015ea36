//! Per-container traffic and resource counters: what a container did since its pod started —
//! http requests by status class and their latency, bytes through its pod-network sockets
//! (inside the pod and out through egress, outgoing `wasi:http` to the outside included),
//! egress denials, the time spent running its guest code — and the memory it holds now.
//!
//! One [`ContainerCounters`] per container of a pod, kept in the pod's [`PodCounters`] by
//! container name: the container's runtime ([`crate::container::ContainerRuntime`]) takes it
//! from there when it is built, so the counters outlive a restart (the same runtime runs again)
//! and a hot swap (the new version's runtime finds the same counters). Recording is a few
//! relaxed atomic adds — no lock, no allocation — because it sits on the request and socket
//! hot paths; readers take a [`ContainerMetrics`] snapshot. The exposition format is not this
//! module's business ([`crate::host::metrics`] renders it). A leaf module: it knows nothing of
//! pods, stores or sockets beyond the values handed to it.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::egress::DeniedKind;
use crate::resources::MemoryAccount;
use crate::sync::lock;

/// Upper bounds (inclusive) of the request latency histogram's buckets, in seconds: from
/// 100 µs (a small in-process request) to 10 s; slower requests land in `+Inf`.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, compared on the hot path without floating point.
const LATENCY_BUCKET_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Where the other end of a pod-network connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Inside the pod: a sibling container, or a client the front proxy or an edge entrance
    /// forwarded into the pod's network.
    Pod,
    /// Outside the pod, reached through the container's egress policy.
    Egress,
}

impl Peer {
    fn index(self) -> usize {
        match self {
            Peer::Pod => 0,
            Peer::Egress => 1,
        }
    }
}

/// The counters of one container; shared by every Store and socket of it (see module doc).
#[derive(Debug, Default)]
pub struct ContainerCounters {
    /// Set once the container serves http requests, so readers can tell "no requests yet"
    /// from "not an http container".
    serves_http: AtomicBool,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 5],
    /// Requests per latency bucket (not cumulative), the last one `+Inf`.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_nanos: AtomicU64,
    /// Bytes the container's sockets received and sent, by [`Peer`].
    received: [AtomicU64; 2],
    sent: [AtomicU64; 2],
    /// Refused egress attempts by [`DeniedKind`].
    denials: [AtomicU64; 3],
    guest_nanos: AtomicU64,
    /// The memory accounts of the container's live versions (one, except during a hot swap).
    /// Weak: a version that is gone stops counting without telling anyone.
    memory: Mutex<Vec<Weak<MemoryAccount>>>,
}

impl ContainerCounters {
    pub fn new() -> Arc<ContainerCounters> {
        Arc::new(ContainerCounters::default())
    }

    /// Marks the container as an http container (its request series are reported even
    /// before the first request).
    pub fn mark_serves_http(&self) {
        self.serves_http.store(true, Relaxed);
    }

    /// One answered request: its status code and the time from its arrival at the container
    /// to its response head. Codes outside 100..=599 count as the nearest class.
    pub fn record_response(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BUCKET_NANOS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Bytes a socket of the container read.
    pub fn record_received(&self, peer: Peer, bytes: usize) {
        self.received[peer.index()].fetch_add(bytes as u64, Relaxed);
    }

    /// Bytes a socket of the container wrote.
    pub fn record_sent(&self, peer: Peer, bytes: usize) {
        self.sent[peer.index()].fetch_add(bytes as u64, Relaxed);
    }

    /// One refused egress attempt.
    pub fn record_denial(&self, kind: DeniedKind) {
        let index = match kind {
            DeniedKind::Connect => 0,
            DeniedKind::Lookup => 1,
            DeniedKind::Http => 2,
        };
        self.denials[index].fetch_add(1, Relaxed);
    }

    /// Time a host thread spent running the container's guest code.
    pub fn record_guest_time(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.guest_nanos.fetch_add(nanos, Relaxed);
    }

    /// Drives `future` (a run, a request, an instantiation) and adds the time spent inside
    /// each of its polls to the container's guest time. A poll of a guest's future is where
    /// its wasm runs (and the host calls it makes synchronously); waiting for I/O, a timer or
    /// a CPU-share pause happens between polls and is not counted. Two clock reads per poll,
    /// no allocation.
    pub async fn metered<F: Future>(&self, future: F) -> F::Output {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            let start = Instant::now();
            let poll = future.as_mut().poll(cx);
            self.record_guest_time(start.elapsed());
            poll
        })
        .await
    }

    /// Counts `account` as memory the container holds (until it is dropped). Called when a
    /// runtime of the container is built, not on a hot path.
    pub fn track_memory(&self, account: &Arc<MemoryAccount>) {
        let mut accounts = lock(&self.memory);
        accounts.retain(|weak| weak.strong_count() > 0);
        accounts.push(Arc::downgrade(account));
    }

    /// What the counters hold now, under the container's name.
    pub fn snapshot(&self, container: &str) -> ContainerMetrics {
        let (used, limit) = {
            let accounts = lock(&self.memory);
            let live: Vec<Arc<MemoryAccount>> = accounts.iter().filter_map(Weak::upgrade).collect();
            let used = live.iter().map(|account| account.used()).sum();
            // The newest version's limit is the one in force.
            (used, live.last().and_then(|account| account.limit()))
        };
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (bound, counter) in LATENCY_BUCKETS.iter().zip(&self.latency) {
            cumulative += load(counter);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + load(&self.latency[LATENCY_BUCKETS.len()]);
        ContainerMetrics {
            container: container.to_string(),
            memory_used_bytes: used,
            memory_limit_bytes: limit,
            guest_seconds: Duration::from_nanos(load(&self.guest_nanos)).as_secs_f64(),
            http: self.serves_http.load(Relaxed).then(|| HttpMetrics {
                responses: self.responses.each_ref().map(load),
                latency: LatencyHistogram {
                    buckets,
                    count,
                    sum_seconds: Duration::from_nanos(load(&self.latency_sum_nanos)).as_secs_f64(),
                },
            }),
            network: NetworkBytes {
                pod_received: load(&self.received[Peer::Pod.index()]),
                pod_sent: load(&self.sent[Peer::Pod.index()]),
                egress_received: load(&self.received[Peer::Egress.index()]),
                egress_sent: load(&self.sent[Peer::Egress.index()]),
            },
            egress_denials: EgressDenials {
                connect: load(&self.denials[0]),
                lookup: load(&self.denials[1]),
                http: load(&self.denials[2]),
            },
        }
    }
}

/// The counters of every container of one pod, by container name, in the order the
/// containers were first built (spec order).
#[derive(Debug, Default)]
pub struct PodCounters {
    containers: Mutex<Vec<(Box<str>, Arc<ContainerCounters>)>>,
}

impl PodCounters {
    pub fn new() -> Arc<PodCounters> {
        Arc::new(PodCounters::default())
    }

    /// The counters of `container`, created on first use (when its runtime is first built);
    /// every later runtime of the same container (a hot-swapped version) gets the same ones.
    pub fn container(&self, container: &str) -> Arc<ContainerCounters> {
        let mut containers = lock(&self.containers);
        if let Some((_, counters)) = containers.iter().find(|(name, _)| &**name == container) {
            return counters.clone();
        }
        let counters = ContainerCounters::new();
        containers.push((container.into(), counters.clone()));
        counters
    }

    /// A snapshot of every container's counters.
    pub fn snapshot(&self) -> Vec<ContainerMetrics> {
        let containers: Vec<_> = lock(&self.containers).clone();
        containers
            .iter()
            .map(|(name, counters)| counters.snapshot(name))
            .collect()
    }
}

/// One container's counters at one moment (see [`ContainerCounters`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerMetrics {
    pub container: String,
    /// Bytes the container holds now: the linear memories and tables of all its live
    /// instances, and the bytes its sockets keep queued in the host.
    pub memory_used_bytes: u64,
    /// Its memory limit, if it has one.
    pub memory_limit_bytes: Option<u64>,
    /// Seconds a host thread spent running its guest code (see [`ContainerCounters::metered`]):
    /// wall time inside the polls of its runs and requests, so time the OS gave another thread
    /// during a poll is included and waiting is not. Health checks are not counted.
    pub guest_seconds: f64,
    /// Its requests, when it is an http container.
    pub http: Option<HttpMetrics>,
    /// Bytes through its `wasi:sockets` streams and datagrams, and of its outgoing
    /// `wasi:http` connections to the outside.
    pub network: NetworkBytes,
    pub egress_denials: EgressDenials,
}

/// The requests an http container answered.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpMetrics {
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`, host-made answers (413, 503,
    /// 504, 500 after a trap) included.
    pub responses: [u64; 5],
    /// Time from a request's arrival at the container to its response head.
    pub latency: LatencyHistogram,
}

impl HttpMetrics {
    /// Responses whose status is `hundreds`xx (2 for 2xx); 0 outside 1..=5.
    pub fn responses_in_class(&self, hundreds: u16) -> u64 {
        match hundreds {
            1..=5 => self.responses[usize::from(hundreds) - 1],
            _ => 0,
        }
    }

    /// Every response counted.
    pub fn total(&self) -> u64 {
        self.responses.iter().sum()
    }
}

/// A latency histogram in Prometheus' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// `(upper bound in seconds, requests at or below it)`, cumulative, `+Inf` left out.
    pub buckets: Vec<(f64, u64)>,
    /// Every request (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

/// Bytes through a container's pod-network sockets, by where the peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkBytes {
    /// Read from peers inside the pod.
    pub pod_received: u64,
    /// Written to peers inside the pod.
    pub pod_sent: u64,
    /// Read from hosts outside the pod (egress): sockets, and outgoing `wasi:http`
    /// connections as they cross the host socket (TLS included).
    pub egress_received: u64,
    /// Written to hosts outside the pod (egress), as for `egress_received`.
    pub egress_sent: u64,
}

/// Refused egress attempts, by what was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EgressDenials {
    pub connect: u64,
    pub lookup: u64,
    pub http: u64,
}

impl EgressDenials {
    pub fn total(&self) -> u64 {
        self.connect + self.lookup + self.http
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_land_in_their_class_and_latency_bucket() {
        let counters = ContainerCounters::new();
        counters.mark_serves_http();
        counters.record_response(200, Duration::from_micros(80));
        counters.record_response(404, Duration::from_millis(3));
        counters.record_response(503, Duration::from_secs(60));
        counters.record_response(999, Duration::ZERO);
        let http = counters.snapshot("web").http.unwrap();
        assert_eq!(http.responses, [0, 1, 0, 1, 2]);
        assert_eq!(http.latency.count, 4);
        assert_eq!(http.latency.buckets[0], (0.0001, 2));
        assert_eq!(http.latency.buckets[5], (0.005, 3));
        assert_eq!(http.latency.buckets.last(), Some(&(10.0, 3)));
        assert!((http.latency.sum_seconds - 60.003_08).abs() < 1e-9);
    }

    #[test]
    fn memory_counts_every_live_version_and_forgets_dropped_ones() {
        let counters = ContainerCounters::new();
        let old = MemoryAccount::new(Some(100));
        let new = MemoryAccount::new(Some(200));
        counters.track_memory(&old);
        counters.track_memory(&new);
        assert!(old.try_charge(10) && new.try_charge(20));
        let metrics = counters.snapshot("c");
        assert_eq!((metrics.memory_used_bytes, metrics.memory_limit_bytes), (30, Some(200)));
        drop(old);
        assert_eq!(counters.snapshot("c").memory_used_bytes, 20);
        assert!(counters.snapshot("c").http.is_none());
    }

    #[test]
    fn a_pod_hands_out_one_set_of_counters_per_container_name() {
        let pod = PodCounters::new();
        let first = pod.container("web");
        first.record_denial(DeniedKind::Http);
        assert!(Arc::ptr_eq(&first, &pod.container("web")));
        pod.container("db").record_sent(Peer::Egress, 5);
        let snapshot = pod.snapshot();
        assert_eq!(snapshot[0].container, "web");
        assert_eq!(snapshot[0].egress_denials.http, 1);
        assert_eq!(snapshot[1].network.egress_sent, 5);
    }

    #[tokio::test]
    async fn metered_time_covers_polls_not_waits() {
        let counters = ContainerCounters::new();
        counters
            .metered(async {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(5) {
                    std::hint::spin_loop();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            })
            .await;
        let seconds = counters.snapshot("c").guest_seconds;
        assert!(seconds >= 0.005, "{seconds}");
    }
}
