//! Tiered start (issue 15): an uncached component serves at once from Winch (baseline) code,
//! Cranelift compiles the optimized code in the background, and new instances switch to it;
//! the disk cache ends up with the optimized code only. `Compiler::Cranelift` keeps the
//! behaviour from before tiering.
//!
//! Every test compiles into a fresh temporary cache directory, so the component is never
//! cached when the test starts. Background compiles are held with `Engine::pause_tier_up`
//! until the test has seen baseline code serve: no timing assumptions.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{DEADLINE, guest};
use wasmpod::Engine;
use wasmpod::engine::{CompileSource, Compiler, Tier, TierNotice, TierStats};
use wasmpod::status::EventKind;
use wasmpod::testing::{TestPod, TestResponse};

fn engine_in(cache: &Path, compiler: Compiler, paused: bool) -> Engine {
    Engine::builder()
        .cache_dir(Some(cache.to_path_buf()))
        .compiler(compiler)
        .tier_up_paused(paused)
        .build()
        .expect("engine")
}

/// What a request answered, in a form two tiers can be compared by.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    header: Option<String>,
    body: String,
}

impl From<TestResponse> for Answer {
    fn from(response: TestResponse) -> Answer {
        Answer {
            status: response.status(),
            header: response
                .header("x-wasmpod")
                .or_else(|| response.header("x-echo"))
                .map(str::to_owned),
            body: response.text(),
        }
    }
}

/// A few routes of the hello-http guest: plain, streamed echo, a counted body, a trap.
async fn answers(pod: &TestPod) -> Vec<Answer> {
    let mut answers = Vec::new();
    answers.push(pod.get_port(8080, "/").await.expect("GET /").into());
    let echo = pod
        .request_port(8080, http::Method::POST, "/echo", "tiers agree".into())
        .await
        .expect("POST /echo");
    answers.push(echo.into());
    let count = pod
        .request_port(8080, http::Method::POST, "/count", vec![7u8; 300_000].into())
        .await
        .expect("POST /count");
    answers.push(count.into());
    answers.push(pod.get_port(8080, "/trap").await.expect("GET /trap").into());
    answers
}

fn stats(engine: &Engine) -> TierStats {
    engine.tier_stats_of_file(&guest("hello_http"))
}

/// Waits (with a deadline, never a fixed sleep) until `condition` holds.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cached_files(cache: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

fn tier_notices(pod: &TestPod) -> Vec<TierNotice> {
    pod.pod()
        .events()
        .all()
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::Tier { notice } => Some(notice),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_pod_answers_the_same_before_and_after_the_switch() {
    let cache = tempfile::tempdir().expect("temp dir");
    let engine = engine_in(cache.path(), Compiler::Tiered, true);
    let pod = TestPod::builder("tiered")
        .container("web", guest("hello_http"))
        .port(8080)
        .engine(engine.clone())
        .start()
        .await
        .expect("pod starts");
    pod.wait_ready().await.expect("ready");

    let before = answers(&pod).await;
    let stats_before = stats(&engine);
    assert_eq!(stats_before.serving, Some(Tier::Baseline), "{stats_before:?}");
    assert!(stats_before.baseline_instances >= 4, "{stats_before:?}");
    assert_eq!(stats_before.optimized_instances, 0, "{stats_before:?}");
    assert!(cached_files(cache.path()).is_empty(), "Winch code must never be cached");
    assert!(tier_notices(&pod).contains(&TierNotice::ServingBaseline));

    engine.pause_tier_up(false);
    wait_for("the optimized code", || stats(&engine).serving == Some(Tier::Optimized)).await;

    let after = answers(&pod).await;
    assert_eq!(before, after, "baseline and optimized code answer alike");
    assert_eq!(before[0].body, "hello from wasmpod\n");
    assert_eq!(before[3].status, 500, "the trap route traps on both tiers");
    let stats_after = stats(&engine);
    assert!(stats_after.optimized_instances >= 4, "{stats_after:?}");
    assert_eq!(stats_after.baseline_instances, stats_before.baseline_instances);
    assert!(
        tier_notices(&pod)
            .iter()
            .any(|notice| matches!(notice, TierNotice::TieredUp { .. })),
        "the switch is an event: {:?}",
        tier_notices(&pod)
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_the_optimized_code() {
    let cache = tempfile::tempdir().expect("temp dir");
    let path = guest("hello_http");
    let engine = engine_in(cache.path(), Compiler::Tiered, false);
    let first = tokio::task::spawn_blocking({
        let engine = engine.clone();
        let path = path.clone();
        move || engine.compile_file(&path, "hello-http")
    })
    .await
    .expect("compile task")
    .expect("compiles");
    assert_eq!(first.tier, Tier::Baseline);
    assert_eq!(first.source, CompileSource::Compiled);
    assert!(
        !wasmtime::Engine::same(first.component.engine(), engine.wasmtime()),
        "baseline code has an engine of its own"
    );
    wait_for("the optimized code", || stats(&engine).serving == Some(Tier::Optimized)).await;
    wait_for("the cache file", || cached_files(cache.path()).len() == 1).await;

    // The same engine now hands out the optimized code...
    let again = engine.compile_file(&path, "hello-http").expect("compiles");
    assert_eq!((again.tier, again.source), (Tier::Optimized, CompileSource::Memory));
    assert!(wasmtime::Engine::same(again.component.engine(), engine.wasmtime()));

    // ...and a new process (a new engine) loads it from the cache: Cranelift code, which a
    // Cranelift-only engine accepts as its own.
    let restarted = engine_in(cache.path(), Compiler::Tiered, false);
    let loaded = restarted.compile_file(&path, "hello-http").expect("loads");
    assert_eq!(
        (loaded.tier, loaded.source),
        (Tier::Optimized, CompileSource::DiskCache)
    );
    let cranelift = engine_in(cache.path(), Compiler::Cranelift, false);
    let loaded = cranelift.compile_file(&path, "hello-http").expect("loads");
    assert_eq!(
        (loaded.tier, loaded.source),
        (Tier::Optimized, CompileSource::DiskCache)
    );
    assert_eq!(cached_files(cache.path()).len(), 1, "one artifact, the optimized one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cranelift_mode_compiles_optimized_code_before_serving() {
    let cache = tempfile::tempdir().expect("temp dir");
    let engine = engine_in(cache.path(), Compiler::Cranelift, false);
    assert_eq!(engine.compiler(), Compiler::Cranelift);
    let pod = TestPod::builder("cranelift")
        .container("web", guest("hello_http"))
        .port(8080)
        .engine(engine.clone())
        .start()
        .await
        .expect("pod starts");
    // The component was compiled and cached before the pod started serving.
    assert_eq!(cached_files(cache.path()).len(), 1);
    pod.wait_ready().await.expect("ready");
    let answers = answers(&pod).await;
    assert_eq!(answers[0].body, "hello from wasmpod\n");
    let stats = stats(&engine);
    assert_eq!(stats.serving, Some(Tier::Optimized), "{stats:?}");
    assert_eq!(stats.baseline_instances, 0);
    assert!(tier_notices(&pod).is_empty(), "no tiers, no tier events");
    pod.stop().await;
}

#[test]
fn the_compiler_is_chosen_by_name() {
    assert_eq!("tiered".parse::<Compiler>().ok(), Some(Compiler::Tiered));
    assert_eq!("Cranelift".parse::<Compiler>().ok(), Some(Compiler::Cranelift));
    assert_eq!("winch".parse::<Compiler>().ok(), Some(Compiler::Winch));
    assert_eq!("".parse::<Compiler>().ok(), Some(Compiler::Tiered));
    assert!("llvm".parse::<Compiler>().is_err());
    assert_eq!(Compiler::default(), Compiler::Tiered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn winch_mode_serves_baseline_code_and_caches_it() {
    let cache = tempfile::tempdir().expect("temp dir");
    let engine = engine_in(cache.path(), Compiler::Winch, false);
    let pod = TestPod::builder("winch")
        .container("web", guest("hello_http"))
        .port(8080)
        .engine(engine.clone())
        .start()
        .await
        .expect("pod starts");
    pod.wait_ready().await.expect("ready");
    let answers = answers(&pod).await;
    assert_eq!(answers[0].body, "hello from wasmpod\n");
    assert_eq!(stats(&engine).serving, Some(Tier::Baseline));
    assert_eq!(cached_files(cache.path()).len(), 1);
    pod.stop().await;
}
