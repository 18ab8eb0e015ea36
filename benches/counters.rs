//! What the per-container counters (`wasmpod::counters`) add on the hot paths, in isolation:
//! one answered request (status class + latency bucket + sum), one socket read or write, and
//! the guest-time meter around one poll of a future (two clock reads). The end-to-end effect is
//! measured by `benches/http_before_after.sh` and `benches/pod_network.rs` (BENCHMARKS.md,
//! "Metrics counters").
//!
//!   cargo bench --bench counters

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmpod::counters::{ContainerCounters, Peer};

fn counters(c: &mut Criterion) {
    let counters = ContainerCounters::new();
    let mut g = c.benchmark_group("counters");
    g.bench_function("record_response", |b| {
        b.iter(|| counters.record_response(black_box(200), black_box(Duration::from_micros(80))))
    });
    g.bench_function("record_sent", |b| {
        b.iter(|| counters.record_sent(Peer::Pod, black_box(65_536)))
    });
    g.bench_function("instant_now_pair", |b| {
        b.iter(|| {
            let start = std::time::Instant::now();
            black_box(start.elapsed())
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    g.bench_function("metered_ready_future", |b| {
        b.to_async(&runtime)
            .iter(|| counters.metered(std::future::ready(black_box(1u64))))
    });
    g.bench_function("unmetered_ready_future", |b| {
        b.to_async(&runtime).iter(|| std::future::ready(black_box(1u64)))
    });
    g.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);
