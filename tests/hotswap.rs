//! Hot-swap on real guests: `Pod::update` swaps an http container under continuous load through
//! the front proxy without a failed request, leaves unchanged containers alone, keeps the old
//! version serving when the new component is broken, and restarts a changed command container
//! with its new args. Front proxies listen on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Empty};
use wasmpod::spec::{DependencyCondition, PodSpec, Probe, ProbeAction, UpdateStrategy};
use wasmpod::testing::{TestPod, TestPodError};
use wasmpod::{EventKind, PodError};

/// A pod with the hello-http guest as `web` on port 8080 (exposed), env `VERSION=0`.
async fn web_pod(name: &str) -> TestPod {
    TestPod::builder(name)
        .engine(engine())
        .container("web", guest("hello_http"))
        .port(8080)
        .env("VERSION", "0")
        .expose(8080)
        .start()
        .await
        .expect("pod starts")
}

/// The `VERSION` a hello-http `/env` answer reports.
fn version_of(body: &str) -> Option<u32> {
    body.lines()
        .find_map(|line| line.strip_prefix("VERSION=")?.parse().ok())
}

/// One keep-alive HTTP/1.1 connection to the front proxy.
async fn connection(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

/// `GET /env` on `sender`: the status and the version, or why it failed.
async fn get_version(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    addr: std::net::SocketAddr,
) -> Result<u32, String> {
    let request = hyper::Request::get("/env")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .map_err(|_| "no body in time".to_string())?
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != hyper::StatusCode::OK {
        return Err(format!("status {status}: {body}"));
    }
    version_of(&body).ok_or_else(|| format!("no VERSION in {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_container_swapped_20_times_under_load_fails_no_request() {
    let pod = web_pod("swap-under-load").await;
    pod.wait_ready().await.unwrap();
    let addr = pod.proxy_addr().expect("exposed");

    // The version whose swap has completed (update returned): any request sent after that
    // must be answered by it or a later one.
    let completed = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (completed, done, answered) = (completed.clone(), done.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            // Half the clients keep one connection open across every swap, half open a new
            // connection per request.
            let keep_alive = client % 2 == 0;
            let mut sender = connection(addr).await;
            let mut failures = Vec::new();
            while !done.load(Ordering::Acquire) {
                if !keep_alive {
                    sender = connection(addr).await;
                }
                let at_least = completed.load(Ordering::Acquire);
                match get_version(&mut sender, addr).await {
                    Ok(version) if version >= at_least => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(version) => failures.push(format!("answered by version {version} after {at_least} served")),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }

    for version in 1..=20u32 {
        // Let some requests through on every version before the next swap.
        let floor = answered.load(Ordering::Relaxed) + 8;
        wait_for_answers(|| answered.load(Ordering::Relaxed) >= floor).await;
        let mut spec = pod.pod().current_spec();
        spec.containers[0].env.insert("VERSION".into(), version.to_string());
        let report = pod.update(spec).await.expect("update applies");
        assert_eq!(report.updated.len(), 1, "{report:?}");
        assert_eq!(report.updated[0].container, "web");
        completed.store(version, Ordering::Release);
    }
    let floor = answered.load(Ordering::Relaxed) + 8;
    wait_for_answers(|| answered.load(Ordering::Relaxed) >= floor).await;
    done.store(true, Ordering::Release);

    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed requests: {failures:#?}", failures.len());
    let updated = pod
        .pod()
        .events()
        .all()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Updated { .. }))
        .count();
    assert_eq!(updated, 20);
    // A fresh connection after the last swap reaches the last version.
    assert_eq!(get_version(&mut connection(addr).await, addr).await, Ok(20));
}

#[tokio::test]
async fn an_unchanged_update_touches_nothing() {
    let pod = TestPod::builder("swap-unchanged")
        .engine(engine())
        .container("web", guest("hello_http"))
        .port(8080)
        .done()
        .container("job", guest("toolbox"))
        .args(["print", "up", "&&", "wait-stdin"])
        .start()
        .await
        .unwrap();
    pod.wait_ready().await.unwrap();
    pod.wait_for_log("job", |line| line == "up").await.unwrap();
    let before = pod.pod().events().all().len();

    let report = pod.update(pod.pod().current_spec()).await.unwrap();

    assert!(report.is_empty(), "{report:?}");
    assert_eq!(report.unchanged, ["web", "job"]);
    let after = pod.pod().events().all();
    assert_eq!(after.len(), before, "new events: {:#?}", &after[before..]);
    assert_eq!(pod.logs("job"), ["up"]);
    assert_eq!(pod.status().container("job").unwrap().restart_count, 0);
}

#[tokio::test]
async fn a_broken_component_leaves_the_old_version_serving() {
    let pod = web_pod("swap-broken").await;
    pod.wait_ready().await.unwrap();

    // Not WebAssembly at all: the spec's validation refuses it.
    let error = pod
        .replace_component("web", b"not a component".to_vec())
        .await
        .expect_err("invalid bytes are refused");
    let TestPodError::Update { source, .. } = &error else {
        panic!("not an update error: {error}");
    };
    assert!(matches!(**source, PodError::Spec(_)), "{source}");

    // A component cut in half (a half-written file): it does not compile.
    let whole = std::fs::read(guest("hello_http")).unwrap();
    let error = pod
        .replace_component("web", whole[..whole.len() / 2].to_vec())
        .await
        .expect_err("a truncated component is refused");
    let TestPodError::Update { source, .. } = &error else {
        panic!("not an update error: {error}");
    };
    assert!(
        matches!(**source, PodError::Compile { ref container, .. } if container == "web"),
        "{source}"
    );

    assert_eq!(pod.get("/").await.unwrap().text(), "hello from wasmpod\n");
    assert!(
        !pod.pod()
            .events()
            .all()
            .iter()
            .any(|e| matches!(e.kind, EventKind::Updated { .. }))
    );
    // The spec the pod runs is still the old one: applying it again changes nothing.
    assert!(pod.update(pod.pod().current_spec()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_changed_command_container_restarts_with_its_new_args() {
    let pod = TestPod::builder("swap-command")
        .engine(engine())
        .grace_period(Duration::from_secs(30))
        .container("job", guest("toolbox"))
        .args(["print", "v1", "&&", "wait-stdin", "&&", "print", "v1 stopping"])
        .start()
        .await
        .unwrap();
    pod.wait_for_log("job", |line| line == "v1").await.unwrap();

    let mut spec = pod.pod().current_spec();
    spec.containers[0].args = ["print", "v2", "&&", "wait-stdin"].map(String::from).to_vec();
    let report = pod.update(spec).await.unwrap();

    assert_eq!(report.updated.len(), 1);
    pod.wait_for_log("job", |line| line == "v2").await.unwrap();
    // Stopped as in a normal stop: its stdin closed and it exited on its own.
    assert_eq!(pod.logs("job"), ["v1", "v1 stopping", "v2"]);
}

#[tokio::test]
async fn a_pod_level_change_is_refused_and_changes_nothing() {
    let pod = web_pod("swap-refused").await;
    pod.wait_ready().await.unwrap();
    let mut spec = pod.pod().current_spec();
    spec.restart_policy = wasmpod::RestartPolicy::Never;
    spec.containers[0].env.insert("VERSION".into(), "1".into());

    let error = pod.update(spec).await.expect_err("refused");

    let TestPodError::Update { source, .. } = &error else {
        panic!("not an update error: {error}");
    };
    assert!(
        matches!(**source, PodError::NotUpdatable(ref why) if why.contains("restart_policy")),
        "{source}"
    );
    assert!(pod.get("/env").await.unwrap().text().contains("VERSION=0"));
}

/// A command web server (the webserver guest) as `web` on pod port 8080, exposed, answering
/// `GET /version` with `VERSION=1`, ready once a TCP connection to it is accepted. With
/// `client`, a `client` container connects to it, holds the connection until the test creates
/// `go` in its `signal` volume, then sends `GET /version` on it (the webserver serves one
/// connection at a time: until then, version 1 answers nobody else).
async fn surge_pod(name: &str, grace: Duration, client: bool) -> TestPod {
    let mut ready = Probe::new(ProbeAction::TcpSocket { port: 8080 });
    ready.period = Duration::from_millis(50);
    let pod = TestPod::builder(name)
        .engine(engine())
        .grace_period(grace)
        .expose(8080)
        .empty_dir("signal")
        .container("web", guest("webserver"))
        .args(["8080"])
        .port(8080)
        .env("VERSION", "1")
        .readiness_probe(ready)
        .done();
    let pod = if client {
        pod.container("client", guest("webserver"))
            .args(["--hold-get", "/signal/go", "web:8080", "/version"])
            .mount("signal", "/signal")
            .depends_on("web", DependencyCondition::Ready)
            .done()
    } else {
        pod
    };
    pod.start().await.expect("pod starts")
}

/// The events of `container` so far.
fn events_of(pod: &TestPod, container: &str) -> Vec<EventKind> {
    pod.pod()
        .events()
        .all()
        .into_iter()
        .filter(|e| e.container.as_deref() == Some(container))
        .map(|e| e.kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_command_container_surges_while_a_held_connection_stays_with_the_old_version() {
    let pod = surge_pod("surge-held", Duration::from_secs(10), true).await;
    pod.wait_ready().await.unwrap();
    // The client's connection is open (and accepted by version 1, which serves one
    // connection at a time).
    pod.wait_for_log("client", |line| line == "connected").await.unwrap();

    let mut spec = pod.pod().current_spec();
    spec.containers[0].env.insert("VERSION".into(), "2".into());
    let report = pod.update(spec).await.expect("the new version surges in");
    assert_eq!(report.updated.len(), 1, "{report:?}");

    // New connections reach the new version at once, while the old one still holds the
    // client's connection.
    assert_eq!(pod.get("/version").await.unwrap().text(), "2\n");
    assert_eq!(pod.get("/version").await.unwrap().text(), "2\n");
    // The held connection still works, with the old version.
    std::fs::write(pod.volume_dir("signal").unwrap().join("go"), "").unwrap();
    pod.wait_for_log("client", |line| line.starts_with("body: "))
        .await
        .unwrap();
    let client = pod.logs("client");
    assert!(client.contains(&"status: 200".to_string()), "{client:?}");
    assert!(client.contains(&"body: 1".to_string()), "{client:?}");

    // Its connection closed, the old version is stopped as in a normal stop: its stdin
    // closes (the webserver ignores it) and after the grace period it is cancelled.
    pod.wait_until("the old version is cancelled", |pod| {
        pod.events()
            .all()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Warning { message } if message.contains("after its update")))
    })
    .await
    .unwrap();
    // The container served throughout: no exit, no restart, one update.
    let web = events_of(&pod, "web");
    assert!(!web.iter().any(|k| matches!(k, EventKind::Exited { .. })), "{web:?}");
    assert_eq!(
        web.iter().filter(|k| matches!(k, EventKind::Updated { .. })).count(),
        1,
        "{web:?}"
    );
    assert_eq!(pod.status().container("web").unwrap().restart_count, 0);
    // The port stays with the new version once the old one is gone.
    assert_eq!(pod.get("/version").await.unwrap().text(), "2\n");
}

#[tokio::test]
async fn a_new_version_that_fails_at_start_is_stopped_and_the_old_one_serves_on() {
    let pod = surge_pod("surge-broken", Duration::from_secs(5), false).await;
    pod.wait_ready().await.unwrap();

    // It traps at once.
    let mut spec = pod.pod().current_spec();
    spec.containers[0].component = guest("toolbox").into();
    spec.containers[0].args = vec!["trap".into()];
    let error = pod.update(spec).await.expect_err("the new version traps");
    let TestPodError::Update { source, .. } = &error else {
        panic!("not an update error: {error}");
    };
    assert!(
        matches!(**source, PodError::UpdateFailed { ref message, .. } if message.contains("ended before it was ready")),
        "{source}"
    );
    assert_eq!(pod.get("/version").await.unwrap().text(), "1\n");

    // It never listens: stopped at its startup deadline (its startup probe's window).
    let mut spec = pod.pod().current_spec();
    spec.containers[0].component = guest("toolbox").into();
    spec.containers[0].args = ["print", "up", "&&", "wait-stdin"].map(String::from).to_vec();
    let mut startup = Probe::new(ProbeAction::TcpSocket { port: 8080 });
    startup.period = Duration::from_millis(50);
    startup.timeout = Duration::from_millis(50);
    startup.failure_threshold = 4;
    spec.containers[0].startup_probe = Some(startup);
    let error = pod.update(spec).await.expect_err("the new version never listens");
    let TestPodError::Update { source, .. } = &error else {
        panic!("not an update error: {error}");
    };
    assert!(
        matches!(**source, PodError::UpdateFailed { ref message, .. } if message.contains("not ready on port(s) 8080")),
        "{source}"
    );
    assert_eq!(pod.get("/version").await.unwrap().text(), "1\n");

    let failed = events_of(&pod, "web")
        .into_iter()
        .filter(|k| matches!(k, EventKind::UpdateFailed { .. }))
        .count();
    assert_eq!(failed, 2);
    // The spec the pod runs is still the first one.
    assert_eq!(pod.pod().current_spec().containers[0].args, ["8080"]);
}

#[tokio::test]
async fn without_a_readiness_probe_the_new_version_takes_over_once_it_listens() {
    let pod = TestPod::builder("surge-no-probe")
        .engine(engine())
        .grace_period(Duration::from_millis(200))
        .expose(8080)
        .container("web", guest("webserver"))
        .args(["8080"])
        .port(8080)
        .env("VERSION", "1")
        .start()
        .await
        .unwrap();
    pod.wait_for_log("web", |line| line == "listening on port 8080")
        .await
        .unwrap();
    let mut spec = pod.pod().current_spec();
    spec.containers[0].env.insert("VERSION".into(), "2".into());

    pod.update(spec).await.expect("the new version surges in");

    // The update returned once the new version listened: the next connection is its.
    assert_eq!(pod.get("/version").await.unwrap().text(), "2\n");
    let web = events_of(&pod, "web");
    assert!(!web.iter().any(|k| matches!(k, EventKind::Exited { .. })), "{web:?}");
}

#[tokio::test]
async fn update_strategy_recreate_stops_the_old_version_before_the_new_one_starts() {
    let pod = surge_pod("surge-recreate", Duration::from_millis(300), false).await;
    pod.wait_ready().await.unwrap();
    let mut spec = pod.pod().current_spec();
    spec.containers[0].update_strategy = UpdateStrategy::Recreate;
    spec.containers[0].env.insert("VERSION".into(), "2".into());

    pod.update(spec).await.expect("recreated");

    pod.wait_ready().await.unwrap();
    assert_eq!(pod.get("/version").await.unwrap().text(), "2\n");
    // Stopped (after the grace period: the webserver ignores its stdin), then started.
    let web = events_of(&pod, "web");
    let exited = web.iter().position(|k| matches!(k, EventKind::Exited { .. }));
    let started_again = web.iter().rposition(|k| matches!(k, EventKind::Started));
    assert!(
        matches!((exited, started_again), (Some(e), Some(s)) if e < s),
        "{web:?}"
    );
}

#[test]
fn update_strategy_is_parsed_and_a_bad_value_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::copy(guest("webserver"), dir.join("web.wasm")).unwrap();
    let text = |strategy: &str| {
        format!(
            "name = \"p\"\n\n[[containers]]\nname = \"web\"\ncomponent = \"web.wasm\"\nupdate_strategy = \"{strategy}\"\n"
        )
    };
    let spec = PodSpec::from_toml(&text("recreate"), &dir.join("wasmpod.toml")).unwrap();
    assert_eq!(spec.containers[0].update_strategy, UpdateStrategy::Recreate);
    let spec = PodSpec::from_toml(&text("surge"), &dir.join("wasmpod.toml")).unwrap();
    assert_eq!(spec.containers[0].update_strategy, UpdateStrategy::Surge);

    let error = PodSpec::from_toml(&text("rolling"), &dir.join("wasmpod.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("wasmpod.toml:6:"), "{error}");
    assert!(error.contains("surge") && error.contains("recreate"), "{error}");
}

/// Waits (yielding, with the tests' deadline) until `condition` holds.
async fn wait_for_answers(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Numbers for BENCHMARKS.md, not a check: `cargo test --test hotswap -- --ignored --nocapture
/// swap_numbers`. Latency of `GET /env` through the front proxy (4 keep-alive clients) while
/// nothing happens and while the container is swapped 20 times, and the time from each update
/// call to the new version serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement, run by hand"]
async fn swap_numbers() {
    let pod = web_pod("swap-numbers").await;
    pod.wait_ready().await.unwrap();
    let addr = pod.proxy_addr().expect("exposed");

    async fn load(addr: std::net::SocketAddr, done: Arc<AtomicBool>) -> Vec<Duration> {
        let mut sender = connection(addr).await;
        let mut took = Vec::new();
        while !done.load(Ordering::Acquire) {
            let started = std::time::Instant::now();
            get_version(&mut sender, addr).await.expect("answered");
            took.push(started.elapsed());
        }
        took
    }
    async fn run_clients(addr: std::net::SocketAddr, during: impl std::future::Future<Output = ()>) -> String {
        let done = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4).map(|_| tokio::spawn(load(addr, done.clone()))).collect();
        during.await;
        done.store(true, Ordering::Release);
        let mut all = Vec::new();
        for client in clients {
            all.extend(client.await.unwrap());
        }
        percentiles(all)
    }

    let steady = run_clients(addr, tokio::time::sleep(Duration::from_secs(3))).await;
    let mut swaps = Vec::new();
    let during = run_clients(addr, async {
        for version in 1..=20u32 {
            let mut spec = pod.pod().current_spec();
            spec.containers[0].env.insert("VERSION".into(), version.to_string());
            let report = pod.update(spec).await.expect("update applies");
            swaps.push(report.updated[0].took);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    swaps.sort();
    eprintln!("steady:      {steady}");
    eprintln!("during swaps: {during}");
    eprintln!(
        "update call to new version serving (20 swaps): min {:?}, median {:?}, max {:?}",
        swaps[0], swaps[10], swaps[19]
    );
}

#[tokio::test]
async fn a_new_version_that_fails_its_readiness_probe_is_not_swapped_in() {
    let pod = web_pod("swap-unready").await;
    pod.wait_ready().await.unwrap();
    let mut spec = pod.pod().current_spec();
    let mut probe = wasmpod::spec::Probe::new(wasmpod::spec::ProbeAction::HttpGet {
        port: 8080,
        path: "/no-such-route".into(),
    });
    probe.period = Duration::from_millis(10);
    probe.failure_threshold = 2;
    spec.containers[0].readiness_probe = Some(probe);
    spec.containers[0].env.insert("VERSION".into(), "1".into());

    let error = pod.update(spec).await.expect_err("the new version is not ready");

    let TestPodError::Update { source, .. } = &error else {
        panic!("not an update error: {error}");
    };
    assert!(
        matches!(**source, PodError::UpdateFailed { ref message, .. } if message.contains("readiness")),
        "{source}"
    );
    assert!(pod.get("/env").await.unwrap().text().contains("VERSION=0"));
}

/// `GET path` through the front proxy at `addr` on a new connection (the webserver closes
/// each): the body, or why it failed.
async fn get_once(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn percentiles(mut all: Vec<Duration>) -> String {
    all.sort();
    let at = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    format!(
        "{} requests, p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        at(0.5),
        at(0.99),
        all[all.len() - 1]
    )
}

/// Numbers for BENCHMARKS.md, not a check: `cargo test --test hotswap -- --ignored --nocapture
/// surge_numbers`. A command web server (one connection at a time, `Connection: close`) behind
/// the front proxy, 2 clients each opening a new connection per request: latency while nothing
/// happens and while it surges 10 times, failed requests, and the update call to new version
/// serving. Grace period 1 s (the webserver ignores its stdin, so each old version is
/// cancelled 1 s after it drained).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement, run by hand"]
async fn surge_numbers() {
    let pod = surge_pod("surge-numbers", Duration::from_secs(1), false).await;
    pod.wait_ready().await.unwrap();
    let addr = pod.proxy_addr().expect("exposed");

    async fn run_clients(
        addr: std::net::SocketAddr,
        during: impl std::future::Future<Output = ()>,
    ) -> (String, Vec<String>) {
        let done = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let done = done.clone();
                tokio::spawn(async move {
                    let (mut took, mut failed) = (Vec::new(), Vec::new());
                    while !done.load(Ordering::Acquire) {
                        let started = std::time::Instant::now();
                        match get_once(addr, "/version").await {
                            Ok(_) => took.push(started.elapsed()),
                            Err(e) => failed.push(e),
                        }
                    }
                    (took, failed)
                })
            })
            .collect();
        during.await;
        done.store(true, Ordering::Release);
        let (mut all, mut failed) = (Vec::new(), Vec::new());
        for client in clients {
            let (took, f) = client.await.unwrap();
            all.extend(took);
            failed.extend(f);
        }
        (percentiles(all), failed)
    }

    let (steady, steady_failed) = run_clients(addr, tokio::time::sleep(Duration::from_secs(3))).await;
    let mut swaps = Vec::new();
    let (during, during_failed) = run_clients(addr, async {
        for version in 2..=11u32 {
            let mut spec = pod.pod().current_spec();
            spec.containers[0].env.insert("VERSION".into(), version.to_string());
            let report = pod.update(spec).await.expect("update applies");
            swaps.push(report.updated[0].took);
            // The old version drains and is stopped before the container takes the next
            // update: wait for that, so each figure is one surge's own.
            let stopped = version as usize - 1;
            pod.wait_until("the old version is stopped", |pod| {
                pod.events()
                    .all()
                    .iter()
                    .filter(
                        |e| matches!(&e.kind, EventKind::Warning { message } if message.contains("after its update")),
                    )
                    .count()
                    >= stopped
            })
            .await
            .unwrap();
        }
    })
    .await;
    swaps.sort();
    eprintln!(
        "steady:        {steady}, {} failed {steady_failed:?}",
        steady_failed.len()
    );
    eprintln!(
        "during surges: {during}, {} failed {during_failed:?}",
        during_failed.len()
    );
    eprintln!(
        "update call to new version serving (10 surges): min {:?}, median {:?}, max {:?}",
        swaps[0], swaps[5], swaps[9]
    );
}

/// Numbers for BENCHMARKS.md, not a check: `cargo test --test hotswap -- --ignored --nocapture
/// watch_numbers`. `run --watch`'s path (the library's `watch`) on an http container behind the
/// front proxy: the time from a component file replaced (a rebuilt file renamed over the old
/// one) to its `updated` event (the new version serves), and from a spec edit to the first
/// response from the new version. Both include the 200 ms the watcher waits for files to settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement, run by hand"]
async fn watch_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("web.wasm");
    let original = std::fs::read(guest("hello_http")).unwrap();
    std::fs::write(&component, &original).unwrap();
    let spec_file = dir.path().join("wasmpod.toml");
    let spec_text = |version: u32| {
        format!(
            "name = \"watched\"\n[expose]\nport = 8080\n[[containers]]\nname = \"web\"\ncomponent = \"web.wasm\"\nports = [8080]\nenv = {{ VERSION = \"{version}\" }}\n"
        )
    };
    std::fs::write(&spec_file, spec_text(0)).unwrap();
    let options = wasmpod::PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..wasmpod::PodOptions::default()
    };
    let pod = Arc::new(wasmpod::Pod::with_options(PodSpec::from_file(&spec_file).unwrap(), options).unwrap());
    pod.start().await.unwrap();
    let addr = pod.proxy_addr().unwrap();
    let version = |addr| async move { get_version(&mut connection(addr).await, addr).await };
    wait_for_answers(|| pod.status().containers[0].ready).await;
    let _notes = wasmpod::watch::watch(pod.clone(), &spec_file).unwrap();
    let updated = || {
        pod.events()
            .all()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Updated { .. }))
            .count()
    };
    let replace = |path: &std::path::Path, bytes: &[u8]| {
        let new = path.with_extension("new");
        std::fs::write(&new, bytes).unwrap();
        std::fs::rename(&new, path).unwrap();
    };

    let (mut rebuilt, mut edited) = (Vec::new(), Vec::new());
    for round in 1..=10u32 {
        // A rebuilt component: a custom section appended (other bytes, same behaviour).
        let before = updated();
        let mut bytes = original.clone();
        let payload = format!("\x07rebuilt{round:02}");
        bytes.push(0);
        bytes.push(payload.len() as u8);
        bytes.extend_from_slice(payload.as_bytes());
        let started = std::time::Instant::now();
        replace(&component, &bytes);
        wait_for_answers(|| updated() > before).await;
        rebuilt.push(started.elapsed());

        // A spec edit: a new VERSION, seen in a response.
        let started = std::time::Instant::now();
        replace(&spec_file, spec_text(round).as_bytes());
        loop {
            if version(addr).await == Ok(round) {
                break;
            }
            assert!(started.elapsed() < DEADLINE, "version {round} never served");
        }
        edited.push(started.elapsed());
    }
    rebuilt.sort();
    edited.sort();
    eprintln!(
        "component file replaced to new version serving (10): min {:?}, median {:?}, max {:?}",
        rebuilt[0], rebuilt[5], rebuilt[9]
    );
    eprintln!(
        "spec edit to first response from the new version (10): min {:?}, median {:?}, max {:?}",
        edited[0], edited[5], edited[9]
    );
    pod.stop().await;
}
