//! How long a pod takes from `start()` to its end, and the cost of the compile cache:
//! - `pod_start/three_containers`: start a three-container pod whose components are already
//!   compiled (in memory), each container printing one line, and wait for it to succeed;
//! - `compile/disk_cache_hit`: load a compiled component from the on-disk cache (fresh engine).
//!
//! Run: `cargo bench --bench pod_start`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmpod::spec::{ContainerSpec, PodSpec};
use wasmpod::{Engine, Pod, PodOptions, PodPhase, RestartPolicy};

fn toolbox() -> PathBuf {
    Path::new(env!("WASMPOD_GUESTS_DIR")).join("toolbox.wasm")
}

fn three_container_spec() -> PodSpec {
    let containers = ["alpha", "beta", "gamma"]
        .into_iter()
        .map(|name| {
            let mut c = ContainerSpec::new(name, toolbox());
            c.args = vec!["print".into(), format!("hello from {name}")];
            c
        })
        .collect();
    PodSpec {
        restart_policy: RestartPolicy::Never,
        containers,
        ..PodSpec::new("bench")
    }
}

fn pod_start(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = tempfile::tempdir().expect("cache dir");
    let engine = Engine::new(Some(cache.path().to_path_buf())).expect("engine");
    let spec = three_container_spec();
    c.bench_function("pod_start/three_containers", |b| {
        b.to_async(&runtime).iter(|| async {
            let pod = Pod::with_options(
                spec.clone(),
                PodOptions {
                    engine: Some(engine.clone()),
                    ..Default::default()
                },
            )
            .expect("pod");
            pod.start().await.expect("start");
            let status = pod.wait().await;
            assert_eq!(status.phase, PodPhase::Succeeded);
        })
    });

    let bytes = std::fs::read(toolbox()).expect("toolbox built");
    let mut group = c.benchmark_group("compile");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.bench_function("disk_cache_hit", |b| {
        b.iter(|| {
            let fresh = Engine::new(Some(cache.path().to_path_buf())).expect("engine");
            fresh.compile(&bytes, "toolbox").expect("compile")
        })
    });
    group.finish();
}

criterion_group!(benches, pod_start);
criterion_main!(benches);
