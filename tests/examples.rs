//! The three scenarios container groups exist for, run from their real `examples/*/wasmpod.toml`
//! through the test harness: a logging sidecar, a monitoring sidecar and a content puller; and
//! the chaos example, a client that stays correct under injected faults.
//!
//! Each test loads the example's spec and changes only what a test must: host directories
//! become temp directories, the content source is a server this test runs on `127.0.0.1:0`, and
//! periods shrink from seconds to milliseconds (through the guests' own flags, so the code that
//! runs is the example's). Waits are on conditions with the harness's deadline, never sleeps;
//! no fixed ports; traffic stays on loopback.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod::PodSpec;
use wasmpod::spec::{ContainerSpec, VolumeSource};
use wasmpod::testing::{TestPod, with_test_timings};

// ---- helpers ------------------------------------------------------------------------------

/// An example's spec, with the test timings (quick restarts, a short grace period on stop).
fn example(name: &str) -> PodSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .join("wasmpod.toml");
    let spec = PodSpec::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    with_test_timings(spec)
}

fn container<'a>(spec: &'a mut PodSpec, name: &str) -> &'a mut ContainerSpec {
    spec.init_containers
        .iter_mut()
        .chain(spec.containers.iter_mut())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("the example has no container {name:?}"))
}

/// Sets the value after `flag` in a container's args. Panics when the example does not pass
/// that flag: the test then no longer matches the example and must say so, not drift.
fn set_flag(container: &mut ContainerSpec, flag: &str, value: impl Into<String>) {
    let name = container.name.clone();
    let at = container.args.iter().position(|arg| arg == flag).unwrap_or_else(|| {
        panic!(
            "container {name:?} of the example has no {flag} argument: {:?}",
            container.args
        )
    });
    container.args[at + 1] = value.into();
}

/// Points a `host_path` volume at another directory.
fn set_host_path(spec: &mut PodSpec, volume: &str, dir: &Path) {
    let volume = spec
        .volumes
        .iter_mut()
        .find(|v| v.name == volume)
        .unwrap_or_else(|| panic!("the example has no volume {volume:?}"));
    assert!(
        matches!(volume.source, VolumeSource::HostPath(_)),
        "volume {:?} is not a host_path",
        volume.name
    );
    volume.source = VolumeSource::HostPath(dir.to_path_buf());
}

// ---- logging sidecar ----------------------------------------------------------------------

/// The archives of one stream (`app-000001.log`, ...) in order.
fn archives(storage: &Path, stream: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(storage)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.strip_prefix(stream)
                            .and_then(|rest| rest.strip_prefix('-'))
                            .and_then(|rest| rest.strip_suffix(".log"))
                            .is_some_and(|number| number.len() == 6 && number.bytes().all(|b| b.is_ascii_digit()))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    // Zero-padded numbers: name order is rotation order.
    files.sort();
    files
}

fn concatenated(files: &[PathBuf]) -> Vec<u8> {
    files
        .iter()
        .flat_map(|file| std::fs::read(file).unwrap_or_default())
        .collect()
}

/// Whole lines archived so far (a partly written last line is not counted).
fn archived_lines(storage: &Path) -> usize {
    concatenated(&archives(storage, "app"))
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

#[tokio::test]
async fn logging_sidecar_loses_and_duplicates_no_line_across_shipper_restarts() {
    const LINES: u64 = 4000;
    const RESTARTS: u64 = 8;
    const ROTATE_BYTES: u64 = 16 * 1024;
    let storage = tempfile::tempdir().unwrap();
    let mut spec = example("logging-sidecar");
    set_host_path(&mut spec, "storage", storage.path());
    let app = container(&mut spec, "app");
    set_flag(app, "--every", "2ms");
    set_flag(app, "--lines", "5");
    // A known end, so that the test can tell "everything shipped" from "still shipping".
    app.args.extend(["--count".to_string(), LINES.to_string()]);
    let shipper = container(&mut spec, "shipper");
    set_flag(shipper, "--every", "5ms");
    // Small files, so that the restarts also land around rotations.
    set_flag(shipper, "--rotate-bytes", ROTATE_BYTES.to_string());

    let pod = TestPod::start(spec).await.unwrap();
    pod.wait_ready().await.unwrap();
    // Restart the shipper while the app writes, spread over the run; each lands wherever the
    // shipper happens to be: reading, writing an archive, checkpointing or rotating.
    for restart in 1..=RESTARTS {
        let threshold = (LINES * restart / (RESTARTS + 1)) as usize;
        pod.wait_until(&format!("{threshold} lines archived"), |_| {
            archived_lines(storage.path()) >= threshold
        })
        .await
        .unwrap();
        pod.restart("shipper");
        pod.wait_ready().await.unwrap();
    }
    pod.wait_for_log("app", |line| line == format!("wrote {LINES} lines; idle"))
        .await
        .unwrap();
    pod.wait_until(&format!("all {LINES} lines archived"), |_| {
        archived_lines(storage.path()) >= LINES as usize
    })
    .await
    .unwrap();
    // The metrics stream too: the app writes nothing more, so the archive must catch up with it.
    let logs = pod
        .volume_dir("logs")
        .expect("the logs volume exists while the pod runs");
    let metrics_source = std::fs::read(logs.join("metrics.log")).unwrap();
    pod.wait_until("the metrics archived", |_| {
        concatenated(&archives(storage.path(), "metrics")) == metrics_source
    })
    .await
    .unwrap();
    let app_source = std::fs::read(logs.join("app.log")).unwrap();
    let shipper_runs = pod
        .logs("shipper")
        .iter()
        .filter(|l| l.starts_with("app: resuming"))
        .count();
    // How many restarts landed between an archive write and its checkpoint (the case the
    // truncation on start is for): timing decides, so it is reported, not asserted.
    let torn = pod
        .logs("shipper")
        .iter()
        .filter(|l| l.starts_with("app: dropping"))
        .count();
    let restarts = pod.status().container("shipper").map(|c| c.restart_count);
    pod.stop().await;

    assert_eq!(restarts, Some(RESTARTS as u32));
    assert_eq!(
        shipper_runs as u64,
        RESTARTS + 1,
        "each run of the shipper resumed from its checkpoint"
    );
    let files = archives(storage.path(), "app");
    let archived = concatenated(&files);
    let text = String::from_utf8(archived.clone()).expect("the archives are text");
    let seqs: Vec<u64> = text
        .lines()
        .map(|line| {
            line.strip_prefix("seq=")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("an archived line is not a log line: {line:?}"))
        })
        .collect();
    let expected: Vec<u64> = (1..=LINES).collect();
    if seqs != expected {
        let first_wrong = seqs
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(seqs.len().min(expected.len()));
        panic!(
            "the archives hold {} lines, not seq 1..={LINES} once each in order; first difference at line {}: {:?}",
            seqs.len(),
            first_wrong + 1,
            &seqs[first_wrong.saturating_sub(2)..(first_wrong + 3).min(seqs.len())]
        );
    }
    assert!(
        archived == app_source,
        "the archives hold exactly the bytes the app wrote"
    );
    eprintln!(
        "logging sidecar: {RESTARTS} shipper restarts, {torn} between data and checkpoint; {} archive files",
        files.len()
    );
    // Rotated by size: several files, none beyond the limit, every one ending with a whole line.
    assert!(files.len() >= 3, "expected several archive files, got {files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            bytes.len() as u64 <= ROTATE_BYTES,
            "{} holds {} bytes",
            file.display(),
            bytes.len()
        );
        assert!(bytes.ends_with(b"\n"), "{} ends mid-line", file.display());
    }
}

// ---- monitoring sidecar -------------------------------------------------------------------

/// How many lines of `container` start with `prefix`.
fn count_lines(pod: &wasmpod::Pod, container: &str, prefix: &str) -> usize {
    pod.output()
        .text(container)
        .iter()
        .filter(|line| line.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn monitoring_sidecar_raises_an_alert_while_the_app_fails_and_clears_it() {
    let site = tempfile::tempdir().unwrap();
    let alerts = tempfile::tempdir().unwrap();
    let example_site = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring-sidecar/site");
    for file in ["health", "index.html"] {
        std::fs::copy(example_site.join(file), site.path().join(file)).unwrap();
    }
    let mut spec = example("monitoring-sidecar");
    set_host_path(&mut spec, "site", site.path());
    set_host_path(&mut spec, "alerts", alerts.path());
    set_flag(container(&mut spec, "monitor"), "--every", "20ms");
    let health = site.path().join("health");
    let alert = alerts.path().join("alert.txt");

    let pod = TestPod::start(spec).await.unwrap();
    pod.wait_ready().await.unwrap();
    pod.wait_for_log("monitor", |line| line.starts_with("OK http://localhost:8080/health"))
        .await
        .unwrap();
    assert_eq!(
        pod.get("/health").await.unwrap().text(),
        "ok\n",
        "the app answers through the front proxy"
    );
    assert!(!alert.exists());

    // Missing: the app answers 404.
    std::fs::remove_file(&health).unwrap();
    let line = pod
        .wait_for_log("monitor", |line| line.starts_with("ALERT "))
        .await
        .unwrap();
    assert!(line.contains("status 404"), "{line}");
    pod.wait_until("alert.txt", |_| alert.exists()).await.unwrap();
    let text = std::fs::read_to_string(&alert).unwrap();
    assert!(
        text.starts_with("ALERT\n") && text.contains("reason=wrong answer: status 404"),
        "{text}"
    );

    std::fs::write(&health, "ok\n").unwrap();
    pod.wait_for_log("monitor", |line| line.starts_with("RECOVERED "))
        .await
        .unwrap();
    pod.wait_until("alert.txt to be removed", |_| !alert.exists())
        .await
        .unwrap();

    // Wrong: the app answers 200, but not what it should.
    std::fs::write(&health, "degraded\n").unwrap();
    pod.wait_until("a second ALERT", |pod| count_lines(pod, "monitor", "ALERT ") == 2)
        .await
        .unwrap();
    let line = pod
        .logs("monitor")
        .into_iter()
        .rfind(|line| line.starts_with("ALERT "))
        .unwrap_or_default();
    assert!(line.contains("does not contain \"ok\""), "{line}");
    pod.wait_until("alert.txt", |_| alert.exists()).await.unwrap();

    std::fs::write(&health, "ok\n").unwrap();
    pod.wait_until("a second RECOVERED", |pod| {
        count_lines(pod, "monitor", "RECOVERED ") == 2
    })
    .await
    .unwrap();
    pod.wait_until("alert.txt to be removed", |_| !alert.exists())
        .await
        .unwrap();
    assert_eq!(
        count_lines(pod.pod(), "monitor", "ALERT "),
        2,
        "no alert while healthy: {:?}",
        pod.logs("monitor")
    );
    pod.stop().await;
}

// ---- content puller -----------------------------------------------------------------------

/// Version `v` of the site: large (so that writing it takes many writes, and a reader of a
/// file written in place would catch it half done) and different in every line.
fn version(v: u32) -> Vec<u8> {
    let mut body = format!("<!doctype html>\n<!-- version {v} -->\n").into_bytes();
    for line in 0..8000 {
        body.extend_from_slice(format!("<p>version {v}, line {line}</p>\n").as_bytes());
    }
    body.extend_from_slice(format!("<!-- end of version {v} -->\n").as_bytes());
    body
}

/// Which complete version `body` is, or why it is none.
fn which_version(body: &[u8]) -> Result<u32, String> {
    let head = String::from_utf8_lossy(&body[..body.len().min(64)]).into_owned();
    let v = head
        .lines()
        .nth(1)
        .and_then(|line| line.strip_prefix("<!-- version "))
        .and_then(|rest| rest.strip_suffix(" -->"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("not a version: starts {head:?}"))?;
    if body == version(v).as_slice() {
        Ok(v)
    } else {
        Err(format!(
            "version {v} is incomplete or mixed: {} of {} bytes",
            body.len(),
            version(v).len()
        ))
    }
}

/// A tiny HTTP/1.1 server on the host's loopback: every GET answers the current content with
/// a content-length, then closes. Returns its port.
async fn source_server(content: Arc<Mutex<Vec<u8>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let content = content.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = content.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn content_puller_replaces_the_site_atomically() {
    const VERSIONS: u32 = 12;
    let content = Arc::new(Mutex::new(version(1)));
    let port = source_server(content.clone()).await;
    let mut spec = example("content-puller");
    let puller = container(&mut spec, "puller");
    set_flag(puller, "--source", format!("http://host.wasmpod.internal:{port}"));
    set_flag(puller, "--every", "20ms");
    puller.allowed_outbound_hosts =
        wasmpod::net::EgressPolicy::parse(&[format!("host.wasmpod.internal:{port}")]).unwrap();

    let pod = TestPod::start(spec).await.unwrap();
    pod.wait_ready().await.unwrap();
    let mut polls = 0u32;
    let mut seen = 0u32;
    // Before the first pull the site is the placeholder the init container wrote.
    while seen < VERSIONS {
        let target = seen + 1;
        *content.lock().unwrap() = version(target);
        // Poll until the site shows the new version; every answer on the way must be one
        // whole version, never older than one already seen.
        loop {
            let response = pod.get("/").await.unwrap();
            polls += 1;
            assert_eq!(response.status(), 200, "poll {polls}: {}", response.text());
            let v = match which_version(&response.body) {
                Ok(v) => v,
                Err(_) if seen == 0 && response.text().contains("No content pulled yet") => 0,
                Err(why) => panic!("poll {polls} saw a half-written file: {why}"),
            };
            assert!(v >= seen, "poll {polls}: the site went back from version {seen} to {v}");
            seen = v;
            if v == target {
                break;
            }
        }
    }
    // The puller logs an update after publishing it: the site can show the last version a
    // moment before its line is written.
    let is_update = |line: &String| line.starts_with("updated index.html");
    pod.wait_until("the puller to log every update", |pod| {
        pod.output()
            .text("puller")
            .iter()
            .filter(|line| is_update(line))
            .count()
            >= VERSIONS as usize
    })
    .await
    .unwrap();
    let updates = pod.logs("puller").iter().filter(|line| is_update(line)).count();
    pod.stop().await;
    assert_eq!(updates as u32, VERSIONS, "one update per version");
    eprintln!("content puller: {polls} polls over {VERSIONS} versions, none half-written");
}

// ---- chaos --------------------------------------------------------------------------------

fn count_matching(pod: &TestPod, container: &str, matches: impl Fn(&str) -> bool) -> usize {
    pod.logs(container).iter().filter(|line| matches(line)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_client_stays_correct_under_latency_resets_and_a_partition() {
    use wasmpod::net::fault::{Fault, FaultKind};
    const REQUESTS: usize = 60;
    let mut spec = example("chaos");
    let client = container(&mut spec, "client");
    set_flag(client, "--every", "0ms");
    client.args.extend(["--requests".to_string(), REQUESTS.to_string()]);
    let pod = TestPod::start(spec).await.unwrap();

    // Under the spec's latency and resets, requests go through.
    pod.wait_for_log("client", |line| line.starts_with("ok 10 "))
        .await
        .unwrap();
    // A partition: every attempt is refused, the client keeps retrying the same request.
    let partition = pod.fault(Fault::new(FaultKind::Down, "api:8080".parse().unwrap()));
    pod.wait_until("three refused attempts", |_| {
        count_matching(&pod, "client", |line| line.contains("ConnectionRefused")) >= 3
    })
    .await
    .unwrap();
    drop(partition);
    let done = pod
        .wait_for_log("client", |line| line.starts_with("done "))
        .await
        .unwrap();
    assert!(done.starts_with(&format!("done {REQUESTS} requests, ")), "{done}");
    assert!(done.ends_with(", 0 wrong"), "{done}");

    let logs = pod.logs("client");
    let retries: Vec<&String> = logs.iter().filter(|line| line.starts_with("retry ")).collect();
    eprintln!("{done}; first retries: {:#?}", &retries[..retries.len().min(8)]);
    // Every request answered exactly once, in order, with its own body.
    let answered: Vec<usize> = logs
        .iter()
        .filter_map(|line| line.strip_prefix("ok ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(answered, (0..REQUESTS).collect::<Vec<_>>(), "{logs:#?}");
    assert!(!logs.iter().any(|line| line.starts_with("WRONG")), "{logs:#?}");
    // The resets of the spec (one request in five) were met and retried.
    assert!(
        logs.iter().any(|line| line.contains("ConnectionTerminated")),
        "{logs:#?}"
    );
}
