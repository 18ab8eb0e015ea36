//! How long a test waits for a three-container pod with `wasmpod::testing`: from
//! `TestPod::builder(..)` to `wait_ready()` returning, i.e. spec built and validated, components
//! found compiled, front proxy bound on `127.0.0.1:0`, all three containers started and ready,
//! and both listed ports listening. The pod: `web` (the std::net webserver guest, port 8080,
//! exposed), `api` (the hello-http component, port 9000) and `sidecar` (toolbox printing a line
//! a second). Stopping the pod (dropping it) is not timed.
//!
//! - `harness_start/three_containers_ready/current_thread`: on a one-thread runtime, as plain
//!   `#[tokio::test]` runs; components already compiled in this process (every test after the
//!   first that uses them);
//! - `.../multi_thread`: the same on a two-worker runtime;
//! - `.../fresh_engine_disk_cache`: a new engine each time, components loaded from the on-disk
//!   cache: the first test of a test binary, once the machine has compiled them before.
//!
//! Run: `cargo bench --bench harness_start`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmpod::Engine;
use wasmpod::testing::TestPod;

fn guest(name: &str) -> PathBuf {
    Path::new(env!("WASMPOD_GUESTS_DIR")).join(format!("{name}.wasm"))
}

async fn start_three(engine: Engine) -> TestPod {
    let pod = TestPod::builder("bench")
        .container("web", guest("webserver"))
        .args(["8080"])
        .port(8080)
        .container("api", guest("hello_http"))
        .port(9000)
        .container("sidecar", guest("toolbox"))
        .args(["serve-forever", "1000"])
        .expose(8080)
        .engine(engine)
        .start()
        .await
        .expect("start");
    pod.wait_ready().await.expect("ready");
    pod
}

/// Times `iters` starts, each pod dropped (stopped) outside the timed span.
async fn timed(iters: u64, engine: impl Fn() -> Engine) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let engine = engine();
        let started = Instant::now();
        let pod = start_three(engine).await;
        total += started.elapsed();
        drop(pod);
    }
    total
}

fn harness_start(c: &mut Criterion) {
    let cache = tempfile::tempdir().expect("cache dir");
    let engine = Engine::new(Some(cache.path().to_path_buf())).expect("engine");
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Compile once (fills the memory and disk caches) and check the pod works.
    let pod = current.block_on(start_three(engine.clone()));
    drop(pod);

    let mut group = c.benchmark_group("harness_start/three_containers_ready");
    group.bench_function("current_thread", |b| {
        b.to_async(&current)
            .iter_custom(|iters| timed(iters, || engine.clone()))
    });
    group.bench_function("multi_thread", |b| {
        b.to_async(&multi).iter_custom(|iters| timed(iters, || engine.clone()))
    });
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("fresh_engine_disk_cache", |b| {
        b.to_async(&current)
            .iter_custom(|iters| timed(iters, || Engine::new(Some(cache.path().to_path_buf())).expect("engine")))
    });
    group.finish();
}

criterion_group!(benches, harness_start);
criterion_main!(benches);
