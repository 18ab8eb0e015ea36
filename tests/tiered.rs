//! Tiered start (issue 15): an uncached component serves at once from Winch (baseline) code,
//! Cranelift compiles the optimized code in the background, and new instances switch to it;
//! the disk cache ends up with the optimized code only. `Compiler::Cranelift` keeps the
//! behaviour from before tiering.
//!
//! Every test compiles into a fresh temporary cache directory, so the component is never
//! cached when the test starts. Background compiles are held with `Engine::pause_tier_up`
//! until the test has seen baseline code serve: no timing assumptions. Two tests run the
//! `wasmpod` binary: a stopped `run` abandons its background compile instead of waiting for
//! it, and a pod that ends on its own leaves the optimized code in the cache.

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

/// `wasmpod run` of `spec` with a cache of its own and the default (tiered) compiler; stdout
/// and stderr lines arrive on the receiver.
fn run_cli(spec: &Path, cache: &Path, runtime_dir: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .arg("run")
        .arg("--no-color")
        .arg(spec)
        .env("WASMPOD_CACHE_DIR", cache)
        .env("WASMPOD_RUNTIME_DIR", runtime_dir)
        .env_remove("WASMPOD_COMPILER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wasmpod runs");
    let (send, lines) = std::sync::mpsc::channel();
    let streams: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ];
    for stream in streams {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (child, lines)
}

/// Reads lines until one contains `text` (deadline); returns every line read.
fn read_until(lines: &std::sync::mpsc::Receiver<String>, text: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + DEADLINE;
    while !seen.iter().any(|line| line.contains(text)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line containing {text:?}; got:\n{}", seen.join("\n")),
        }
    }
}

/// Waits for the process to exit (deadline), then collects the rest of its output.
fn wait_exit(
    child: &mut std::process::Child,
    lines: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wasmpod did not exit; output:\n{}", seen.join("\n"));
        }
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(20)) {
            seen.push(line);
        }
    };
    // The reader threads end at EOF, after the process exited.
    while let Ok(line) = lines.recv_timeout(DEADLINE) {
        seen.push(line);
    }
    status
}

/// A 0700 directory for the control socket (wasmpod refuses one others may read).
fn runtime_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
        0o700,
    ));
    builder.tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir")
}

/// Stopping `wasmpod run` (SIGTERM, as Ctrl-C) while the optimized compile runs in the
/// background exits at once: the compile is abandoned, not finished for the cache. Not a
/// timing assertion: a process that waited for the compile would have written its artifact
/// to the cache before exiting, so after the exit the cache must hold none — given that the
/// compile was still pending when the pod stopped, which `wasmpod run` says ("abandoned").
#[test]
fn a_stopped_run_abandons_the_background_compile_instead_of_waiting_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let spec = dir.path().join("pod.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"tiered-stop-{}\"\n[[containers]]\nname = \"web\"\ncomponent = {:?}\nports = [8080]\n",
            std::process::id(),
            guest("hello_http").display().to_string()
        ),
    )
    .expect("spec");
    let runtime = runtime_dir();
    let (mut child, lines) = run_cli(&spec, &cache, runtime.path());
    let mut seen = Vec::new();
    read_until(&lines, "optimizing in the background", &mut seen);
    read_until(&lines, "web: ready", &mut seen);
    assert!(
        cached_files(&cache).is_empty(),
        "the optimized compile finished before the test could stop the pod: it checks nothing"
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, &lines, &mut seen);
    let output = seen.join("\n");
    assert!(status.success(), "{output}");
    assert!(
        output.contains("optimized compile of 1 component(s) abandoned"),
        "the compile was pending when the pod stopped, and the user is told: {output}"
    );
    assert!(
        cached_files(&cache).is_empty(),
        "the process exited without finishing the compile: {output}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .map(|dir| dir.filter_map(|entry| entry.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "no half-written cache file: {leftovers:?}");
}

/// A pod that ends on its own waits for its background compile (and says so), so the next
/// start finds the optimized code in the cache.
#[test]
fn a_run_that_ends_on_its_own_leaves_the_optimized_code_in_the_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let spec = dir.path().join("pod.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"tiered-end-{}\"\nrestart_policy = \"never\"\n[[containers]]\nname = \"app\"\ncomponent = {:?}\nargs = [\"print\", \"done\"]\n",
            std::process::id(),
            guest("toolbox").display().to_string()
        ),
    )
    .expect("spec");
    let runtime = runtime_dir();
    let (mut child, lines) = run_cli(&spec, &cache, runtime.path());
    let mut seen = Vec::new();
    let status = wait_exit(&mut child, &lines, &mut seen);
    let output = seen.join("\n");
    assert!(status.success(), "{output}");
    assert!(output.contains("serving baseline (Winch) code"), "{output}");
    assert!(output.contains("finishing the optimized compile"), "{output}");
    assert_eq!(cached_files(&cache).len(), 1, "{output}");
}
