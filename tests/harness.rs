//! The `wasmpod::testing` harness on the real guests: pods from the builder (components as
//! paths and as bytes) and from a spec file, readiness, the front proxy URL, connections
//! straight into pod ports, logs, restarts, stop, and failures that explain themselves.
//!
//! Every test runs on plain `#[tokio::test]` (a one-thread runtime) unless it says otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod::spec::PodSpec;
use wasmpod::testing::{TestPod, TestPodError};
use wasmpod::{ContainerState, Exit, PodPhase, RestartPolicy};

fn guest(name: &str) -> PathBuf {
    Path::new(env!("WASMPOD_GUESTS_DIR")).join(format!("{name}.wasm"))
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap_or_else(|e| panic!("guest {name} was not built: {e}"))
}

/// The example of the README's "Testing components from `cargo test`" section, verbatim (the
/// test below checks that they agree).
#[tokio::test]
async fn the_shop_answers() -> Result<(), wasmpod::testing::TestPodError> {
    let guests = Path::new(env!("WASMPOD_GUESTS_DIR"));
    let pod = TestPod::builder("shop")
        .container("web", guests.join("webserver.wasm"))
        .args(["8080"])
        .port(8080)
        .container("api", std::fs::read(guests.join("hello_http.wasm")).unwrap())
        .port(9000)
        .expose(8080)
        .start()
        .await?;
    pod.wait_ready().await?;

    let hello = pod.get("/hello").await?; // through the front proxy, at pod.url()
    assert_eq!(hello.text(), "hello from web\n");
    let api = pod.get_port(9000, "/").await?; // straight into a pod port
    assert_eq!(api.text(), "hello from wasmpod\n");
    assert_eq!(
        pod.wait_for_log("web", |line| line.starts_with("GET")).await?,
        "GET /hello"
    );

    pod.restart("web");
    pod.wait_ready().await?; // the new run is up
    assert_eq!(pod.status().container("web").unwrap().restart_count, 1);
    Ok(())
}

#[test]
fn the_readme_shows_the_test_above() {
    let squash = |text: &str| text.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Testing components from `cargo test`")
        .nth(1)
        .expect("the README has the section");
    let snippet = section
        .split("```rust")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a rust block");
    // The test function itself (the `use` lines above it differ: this file imports more).
    let snippet = &snippet[snippet.find("#[tokio::test]").expect("a #[tokio::test] in the block")..];
    let this_file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness.rs")).unwrap();
    assert!(
        squash(&this_file).contains(&squash(snippet)),
        "the README's test example differs from `the_shop_answers` in tests/harness.rs; keep them the same"
    );
}

#[tokio::test]
async fn three_containers_from_paths_and_bytes_with_a_shared_volume() {
    let pod = TestPod::builder("three")
        .empty_dir("scratch")
        .init_container("prepare", guest("toolbox"))
        .args(["write", "/data/banner.txt", "prepared"])
        .mount("scratch", "/data")
        .container("web", bytes("webserver"))
        .args(["8080", "/data"])
        .port(8080)
        .mount_read_only("scratch", "/data")
        .container("api", bytes("hello_http"))
        .port(9000)
        .env("GREETING", "hi")
        .container("ticker", bytes("toolbox"))
        .args(["print", "up", "&&", "serve-forever", "5"])
        .expose(8080)
        .start()
        .await
        .unwrap();
    pod.wait_ready().await.unwrap();

    assert!(pod.url().starts_with("http://127.0.0.1:"), "{}", pod.url());
    assert_eq!(pod.url(), format!("http://{}", pod.proxy_addr().unwrap()));
    let banner = pod.get("/banner.txt").await.unwrap();
    assert_eq!((banner.status(), banner.text().as_str()), (200, "prepared\n"));
    let env = pod.get_port(9000, "/env").await.unwrap();
    assert_eq!(env.text(), "GREETING=hi\n");
    assert_eq!(pod.logs("prepare"), Vec::<String>::new());
    assert_eq!(
        pod.wait_for_log("ticker", |line| line == "alive 3").await.unwrap(),
        "alive 3"
    );
    assert_eq!(pod.logs("ticker")[0], "up");
    let scratch = pod.volume_dir("scratch").expect("an empty_dir while the pod runs");
    assert_eq!(
        std::fs::read_to_string(scratch.join("banner.txt")).unwrap(),
        "prepared\n"
    );

    let status = pod.stop().await;
    assert_eq!(status.phase, PodPhase::Stopped);
    assert!(!scratch.exists(), "the empty_dir is removed when the pod stops");
}

#[tokio::test]
async fn from_a_spec_file() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web/wasmpod.toml");
    let pod = TestPod::from_file(&spec).await.unwrap();
    pod.wait_ready().await.unwrap();
    let page = pod.get("/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text().contains("Served by a WebAssembly component"),
        "{}",
        page.text()
    );
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    // The example's fixed port 8080 is not taken on the host: the proxy is on a free port.
    assert_ne!(pod.proxy_addr().unwrap().port(), 8080);
}

#[tokio::test]
async fn a_spec_edited_in_rust() {
    let mut spec =
        PodSpec::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/wasmpod.toml")).unwrap();
    spec.containers.retain(|c| c.name == "writer");
    spec.containers[0].args = vec!["print".into(), "edited".into()];
    let pod = TestPod::start(spec).await.unwrap();
    let status = pod.wait_finished().await.unwrap();
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", pod.explain());
    assert_eq!(pod.logs("writer"), ["edited"]);
    assert_eq!(pod.logs("prepare"), ["read: hello from the init container"]);
}

#[tokio::test]
async fn connect_goes_straight_into_an_unexposed_pod_port() {
    let pod = TestPod::builder("raw")
        .container("web", guest("webserver"))
        .args(["7000"])
        .port(7000)
        .start()
        .await
        .unwrap();
    // No wait_ready first: connect waits for the listener itself.
    let mut stream = pod.connect(7000).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("hello from web\n"), "{response}");
    assert_eq!(pod.proxy_addr(), None);
}

#[tokio::test]
async fn restart_then_wait_ready_waits_for_the_new_run() {
    let pod = TestPod::builder("restarts")
        .empty_dir("state")
        .container("counter", guest("toolbox"))
        .args(["runs", "/state/runs", "&&", "serve-forever", "1000"])
        .mount("state", "/state")
        .start()
        .await
        .unwrap();
    pod.wait_ready().await.unwrap();
    pod.wait_for_log("counter", |line| line == "run 1").await.unwrap();
    for expected in 1..=3 {
        pod.restart("counter");
        pod.wait_ready().await.unwrap();
        let status = pod.status();
        let counter = status.container("counter").unwrap();
        assert_eq!(counter.restart_count, expected);
        assert_eq!(counter.last_exit, Some(Exit::Restarted));
        assert!(matches!(counter.state, ContainerState::Running { .. }));
        pod.wait_for_log("counter", |line| line == format!("run {}", expected + 1))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_crash_looping_container_times_out_with_its_logs_and_events_in_the_message() {
    let pod = TestPod::builder("crashy")
        .container("web", guest("webserver"))
        .args(["8080"])
        .port(8080)
        // A server that dies before it listens (without the port, a container with no
        // readiness probe is ready while it runs, however briefly).
        .container("crasher", guest("toolbox"))
        .args(["eprint", "cannot read /config/app.toml", "&&", "exit", "3"])
        .port(9000)
        .start()
        .await
        .unwrap();
    let error = pod.wait_ready_within(Duration::from_millis(300)).await.unwrap_err();
    let TestPodError::Timeout { ref missing, .. } = error else {
        panic!("a timeout, not {error}")
    };
    assert!(
        !missing.is_empty() && missing.iter().all(|m| m.starts_with("container \"crasher\"")),
        "{missing:?}"
    );
    let message = format!("{error:?}"); // what `.unwrap()` prints
    for expected in [
        "test pod \"crashy\": timed out after 300ms waiting for the pod to be ready",
        "  - container \"crasher\" ",     // what is missing
        "crasher: exited with code 1",    // the events
        "! cannot read /config/app.toml", // its stderr
        "| listening on port 8080",       // and the other container's output
        "CONTAINER",
    ] {
        assert!(message.contains(expected), "{expected:?} missing from:\n{message}");
    }
    assert_eq!(
        error.explanation().map(|e| e.starts_with("pod \"crashy\": Running")),
        Some(true),
        "{message}"
    );
}

#[tokio::test]
async fn a_wait_that_can_no_longer_succeed_fails_at_once() {
    let pod = TestPod::builder("doomed")
        .restart_policy(RestartPolicy::Never)
        .container("job", guest("toolbox"))
        .args(["print", "done"])
        .port(9000) // never listened on: not ready until it exits
        .container("web", guest("webserver"))
        .args(["8080"])
        .port(8080)
        .deadline(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = pod.wait_ready().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "did not wait out the deadline"
    );
    let message = error.to_string();
    assert!(
        message.contains("container \"job\" exited with code 0 and will not run again (restart policy Never)"),
        "{message}"
    );
    assert!(message.contains("| done"), "{message}");
    assert!(matches!(error, TestPodError::Impossible { .. }), "{message}");
}

#[tokio::test]
async fn wait_for_log_fails_when_the_pod_ended_and_names_what_it_saw() {
    let pod = TestPod::builder("ended")
        .restart_policy(RestartPolicy::Never)
        .container("job", bytes("toolbox"))
        .args(["print", "one", "&&", "print", "two"])
        .start()
        .await
        .unwrap();
    let error = pod.wait_for_log("job", |line| line == "three").await.unwrap_err();
    let message = format!("{error:?}");
    assert!(matches!(error, TestPodError::Impossible { .. }), "{message}");
    assert!(message.contains("the pod ended (Succeeded)"), "{message}");
    assert!(message.contains("| one\n  | two"), "{message}");
    assert_eq!(
        pod.wait_for_log("job", |line| line == "two").await.unwrap(),
        "two",
        "kept lines still match"
    );
}

#[tokio::test]
async fn wait_until_and_connect_time_out_with_a_clear_message() {
    let mut pod = TestPod::builder("quiet")
        .container("idle", guest("toolbox"))
        .args(["serve-forever", "1000"])
        .start()
        .await
        .unwrap();
    pod.set_deadline(Duration::from_millis(100));
    let error = pod.connect(4444).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("timed out after 100ms waiting for a listener on pod port 4444"),
        "{message}"
    );
    assert!(message.contains("nothing listens on pod port 4444"), "{message}");

    let error = pod
        .wait_until("idle to restart", |pod| pod.status().containers[0].restart_count > 0)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("waiting for idle to restart"), "{error}");
    assert!(error.to_string().contains("| alive 1"), "{error}");

    pod.set_deadline(Duration::from_secs(30));
    pod.wait_until("two lines", |pod| pod.logs("idle").len() >= 2)
        .await
        .unwrap();
}

#[tokio::test]
async fn start_errors_name_the_problem() {
    let error = TestPod::builder("Not_A_Name")
        .container("x", guest("toolbox"))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(error, TestPodError::Spec(_)), "{error}");

    let error = TestPod::builder("garbage")
        .container("junk", b"not a component".to_vec())
        .start()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("component"), "{error}");

    let error = TestPod::from_file("no/such/wasmpod.toml").await.unwrap_err();
    assert!(error.to_string().contains("no/such/wasmpod.toml"), "{error}");
}

#[tokio::test]
#[should_panic(expected = "its spec exposes no port")]
async fn url_panics_when_nothing_is_exposed() {
    let pod = TestPod::builder("hidden")
        .container("idle", guest("toolbox"))
        .args(["serve-forever", "1000"])
        .start()
        .await
        .unwrap();
    let _ = pod.url();
}

#[tokio::test]
#[should_panic(expected = "restart(\"nope\"): test pod \"names\" has no container \"nope\"; its containers are: idle")]
async fn restarting_an_unknown_container_panics_with_the_known_ones() {
    let pod = TestPod::builder("names")
        .container("idle", guest("toolbox"))
        .args(["serve-forever", "1000"])
        .start()
        .await
        .unwrap();
    pod.restart("nope");
}

/// Two tests' pods at once, each with port 8080 inside, each with its own front proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pods_never_collide() {
    let start = |name: &'static str| async move {
        let pod = TestPod::builder(name)
            .container("web", guest("webserver"))
            .args(["8080"])
            .port(8080)
            .expose(8080)
            .start()
            .await
            .unwrap();
        pod.wait_ready().await.unwrap();
        pod
    };
    let (a, b) = tokio::join!(start("left"), start("right"));
    assert_ne!(a.url(), b.url());
    let (ra, rb) = tokio::join!(a.get("/hello"), b.get("/hello"));
    assert_eq!(ra.unwrap().text(), "hello from web\n");
    assert_eq!(rb.unwrap().text(), "hello from web\n");
    // Handles move across threads.
    let a = tokio::spawn(async move { a.stop().await }).await.unwrap();
    assert_eq!(a.phase, PodPhase::Stopped);
    drop(b);
}

/// A pod dropped while its test panics prints its explanation (into the test's captured
/// output) and stops; it must not turn the panic into an abort.
#[test]
fn a_pod_dropped_during_a_panic_explains_itself_without_aborting() {
    let joined = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pod = TestPod::builder("panicky")
                .container("idle", guest("toolbox"))
                .args(["print", "about to fail", "&&", "serve-forever", "1000"])
                .start()
                .await
                .unwrap();
            pod.wait_for_log("idle", |l| l == "about to fail").await.unwrap();
            panic!("an assertion failed");
        })
    })
    .join();
    assert!(joined.is_err());
}
