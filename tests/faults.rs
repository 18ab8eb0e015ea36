//! Fault injection on the pod network under real guests (`guests/netcheck`, plain `std::net`):
//! each test installs faults in a bare `PodNetwork`'s fault table and checks what the guests
//! see. Durations are measured by the guest's own clock and only bounded from below (never a
//! wall-clock upper bound); counts have bounds wide enough never to flake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmpod::net::PodNetwork;
use wasmpod::net::fault::{Direction, Fault, FaultKind, FaultNotice};

mod netcheck;
use netcheck::{DEADLINE, run};

async fn listening(pod: &PodNetwork, port: u16) {
    tokio::time::timeout(DEADLINE, pod.wait_listening(port))
        .await
        .expect("server listening in time");
}

fn to(target: &str) -> wasmpod::net::fault::FaultTarget {
    target.parse().expect("target")
}

/// Starts `script` as container `name` in the background.
fn spawn(pod: &Arc<PodNetwork>, name: &'static str, script: &'static str) -> tokio::task::JoinHandle<(i32, String)> {
    let pod = pod.clone();
    tokio::spawn(async move { run(&pod, name, script).await })
}

fn nanos(out: &str, prefix: &str) -> u128 {
    let line = out.lines().find(|l| l.starts_with(prefix)).expect(out);
    let n = line.split(" in ").nth(1).expect(out).trim_end_matches(" ns");
    n.parse().expect(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_seen_by_the_guest_clock_and_reported() {
    let pod = PodNetwork::new();
    let notices = Arc::new(Mutex::new(Vec::new()));
    let n2 = notices.clone();
    pod.faults()
        .set_observer(Arc::new(move |n: FaultNotice| n2.lock().unwrap().push(n)));
    let latency = Duration::from_millis(150);
    let _guard = pod.faults().add_guarded(Fault::new(
        FaultKind::Latency {
            latency,
            jitter: Duration::ZERO,
        },
        to("server:5000"),
    ));
    let server = spawn(&pod, "server", "listen 127.0.0.1:5000 && echo 1");
    listening(&pod, 5000).await;
    let (code, out) = run(&pod, "client", "ping 127.0.0.1:5000 1").await;
    assert_eq!(code, 0, "{out}");
    // One byte up and its echo down, each delayed.
    assert!(nanos(&out, "pinged") >= 2 * latency.as_nanos(), "{out}");
    assert_eq!(server.await.unwrap().0, 0);
    let notices = notices.lock().unwrap();
    assert!(matches!(notices[0], FaultNotice::Added { id: 1, .. }), "{notices:?}");
    let triggered: Vec<_> = notices
        .iter()
        .filter(|n| matches!(n, FaultNotice::Triggered { .. }))
        .collect();
    assert_eq!(triggered.len(), 1, "first trigger only: {notices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_leaves_other_links_alone_and_heals() {
    let pod = PodNetwork::new();
    let a = spawn(&pod, "a", "listen 127.0.0.1:5100 && accept-hold");
    let b = spawn(&pod, "b", "listen 127.0.0.1:5101 && accept-hold");
    listening(&pod, 5100).await;
    listening(&pod, 5101).await;
    let guard = pod.faults().add_guarded(Fault::new(FaultKind::Down, to("a:5100")));
    let (code, out) = run(
        &pod,
        "client",
        "try-connect 127.0.0.1:5100 && try-connect 127.0.0.1:5101",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "connect failed: ConnectionRefused\nconnect ok\n");
    drop(guard);
    assert!(pod.faults().is_empty());
    let (code, out) = run(&pod, "client", "try-connect 127.0.0.1:5100").await;
    assert_eq!((code, out.as_str()), (0, "connect ok\n"));
    assert_eq!(a.await.unwrap().0, 0);
    assert_eq!(b.await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_limits_a_fault_to_one_container() {
    let pod = PodNetwork::new();
    let server = spawn(&pod, "server", "listen 127.0.0.1:5150 && accept-hold");
    listening(&pod, 5150).await;
    let _g = pod
        .faults()
        .add_guarded(Fault::new(FaultKind::Down, to("5150")).from("other"));
    let (code, out) = run(&pod, "other", "try-connect 127.0.0.1:5150").await;
    assert_eq!((code, out.as_str()), (0, "connect failed: ConnectionRefused\n"));
    let (code, out) = run(&pod, "client", "try-connect 127.0.0.1:5150").await;
    assert_eq!((code, out.as_str()), (0, "connect ok\n"));
    assert_eq!(server.await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_resets_the_connection() {
    let pod = PodNetwork::new();
    // The server holds the connection until a "go" connection on 5201 arrives.
    let server = spawn(
        &pod,
        "server",
        "listen 127.0.0.1:5200 && accept-hold && listen 127.0.0.1:5201 && echo 1",
    );
    listening(&pod, 5200).await;
    let _g = pod.faults().add_guarded(Fault::new(
        FaultKind::ResetPeer {
            timeout: Duration::from_millis(50),
        },
        to("5200"),
    ));
    let (code, out) = run(&pod, "client", "read-until-closed 127.0.0.1:5200").await;
    assert_eq!(code, 0, "{out}");
    // A reset, not an end of stream (wasi-libc reports a failed read without its error code,
    // so std may call it `Uncategorized`; see tests/net_egress.rs).
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "connected", "{out}");
    assert!(lines[1].starts_with("closed: error "), "{out}");
    listening(&pod, 5201).await;
    drop(pod.connect(5201).unwrap());
    assert_eq!(server.await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_closes_after_n_bytes() {
    let pod = PodNetwork::new();
    let server = spawn(&pod, "server", "listen 127.0.0.1:5300 && echo 1");
    listening(&pod, 5300).await;
    let _g = pod
        .faults()
        .add_guarded(Fault::new(FaultKind::LimitData { bytes: 10 }, to("5300")).direction(Direction::Downstream));
    let (code, out) = run(&pod, "client", "half-close 127.0.0.1:5300 0123456789abcdefghij").await;
    assert_eq!((code, out.as_str()), (0, "got: 0123456789\n"));
    // The server may or may not see its late writes fail; it is done either way.
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slicer_and_bandwidth_keep_the_bytes_intact_and_bound_the_rate() {
    let pod = PodNetwork::new();
    let server = spawn(&pod, "server", "listen 127.0.0.1:5350 && echo 1 && echo 1");
    listening(&pod, 5350).await;
    let slicer = pod.faults().add_guarded(Fault::new(
        FaultKind::Slicer {
            average_size: 700,
            size_variation: 300,
            delay: Duration::ZERO,
        },
        to("5350"),
    ));
    let (code, out) = run(&pod, "client", "send 127.0.0.1:5350 300000").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sent 300000 echoed 300000"), "{out}");
    drop(slicer);
    let rate = 512 * 1024u64;
    let _bw = pod
        .faults()
        .add_guarded(Fault::new(FaultKind::Bandwidth { rate }, to("5350")).direction(Direction::Upstream));
    let bytes = 256 * 1024u64;
    let (code, out) = run(&pod, "client", "stream 127.0.0.1:5350 262144").await;
    assert_eq!(code, 0, "{out}");
    // The first slice goes at once; every following one waits its share of a second.
    let floor = Duration::from_secs_f64(bytes as f64 / rate as f64 * 0.8);
    assert!(nanos(&out, "streamed") >= floor.as_nanos(), "{out}");
    assert_eq!(server.await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_loss_drops_some_but_not_all_and_only_on_its_port() {
    let pod = PodNetwork::new();
    let _g = pod
        .faults()
        .add_guarded(Fault::new(FaultKind::Loss { probability: 0.5 }, to("5400")));
    let (code, out) = run(
        &pod,
        "lossy",
        "udp-bind 127.0.0.1:5400 && udp-blast 127.0.0.1:5400 1000 && udp-drain",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let drained: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("udp drained "))
        .expect(&out)
        .parse()
        .unwrap();
    assert!((300..=700).contains(&drained), "{out}");
    let (code, out) = run(
        &pod,
        "clean",
        "udp-bind 127.0.0.1:5401 && udp-blast 127.0.0.1:5401 1000 && udp-drain",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("udp drained 1000"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_holds_then_closes() {
    let pod = PodNetwork::new();
    let server = spawn(&pod, "server", "listen 127.0.0.1:5500 && echo 1");
    listening(&pod, 5500).await;
    let _g = pod.faults().add_guarded(Fault::new(
        FaultKind::Timeout {
            timeout: Duration::from_millis(100),
        },
        to("5500"),
    ));
    // Nothing gets through; the link is closed (end of stream) after the timeout.
    let (code, out) = run(&pod, "client", "read-until-closed 127.0.0.1:5500 anyone").await;
    assert_eq!((code, out.as_str()), (0, "connected\nclosed: eof\n"));
    let _ = server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_delays_the_end_of_stream() {
    let pod = PodNetwork::new();
    let server = spawn(&pod, "server", "listen 127.0.0.1:5600 && echo 1");
    listening(&pod, 5600).await;
    let delay = Duration::from_millis(150);
    let _g = pod
        .faults()
        .add_guarded(Fault::new(FaultKind::SlowClose { delay }, to("5600")));
    // Connect to end of stream: the client's FIN, then the server's, each held back.
    let (code, out) = run(&pod, "client", "stream 127.0.0.1:5600 10").await;
    assert_eq!(code, 0, "{out}");
    assert!(nanos(&out, "streamed") >= 2 * delay.as_nanos(), "{out}");
    assert_eq!(server.await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_links_take_latency_and_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A host echo server (loopback only) for two connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_ok() {
                let _ = s.write_all(&b).await;
            }
        }
    });
    let pod = PodNetwork::new();
    let target = format!("host.wasmpod.internal:{port}");
    let rules = vec![target.clone()];
    let hook: wasmpod::net::DeniedHook = Arc::new(|_| {});
    let latency = Duration::from_millis(100);
    let slow = pod.faults().add_guarded(Fault::new(
        FaultKind::Latency {
            latency,
            jitter: Duration::ZERO,
        },
        to(&target),
    ));
    let script = format!("ping {target} 1");
    let (code, out) = netcheck::run_with_egress(&pod, "app", &rules, hook.clone(), &script).await;
    assert_eq!(code, 0, "{out}");
    assert!(nanos(&out, "pinged") >= 2 * latency.as_nanos(), "{out}");
    drop(slow);
    let _down = pod.faults().add_guarded(Fault::new(FaultKind::Down, to(&target)));
    let script = format!("try-connect {target}");
    let (code, out) = netcheck::run_with_egress(&pod, "app", &rules, hook, &script).await;
    assert_eq!((code, out.as_str()), (0, "connect failed: ConnectionRefused\n"));
    echo.abort();
}

// ---- the spec's `[[faults]]` and the pod ----------------------------------------------------

fn netcheck_wasm() -> String {
    std::path::Path::new(env!("WASMPOD_GUESTS_DIR"))
        .join("netcheck.wasm")
        .display()
        .to_string()
        .replace('\\', "/")
}

/// A pod spec with a server listing port 6000, a client and `faults` appended.
fn spec_text(server: &str, client: &str, faults: &str) -> String {
    let wasm = netcheck_wasm();
    let args = |s: &str| {
        s.split_whitespace()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "name = \"chaos\"\nrestart_policy = \"never\"\n\n\
         [[containers]]\nname = \"server\"\ncomponent = \"{wasm}\"\nports = [6000]\nargs = [{}]\n\n\
         [[containers]]\nname = \"client\"\ncomponent = \"{wasm}\"\nargs = [{}]\n\n{faults}",
        args(server),
        args(client)
    )
}

fn spec_errors(faults: &str) -> Vec<String> {
    let text = spec_text("listen 127.0.0.1:6000", "try-connect 127.0.0.1:6000", faults);
    match wasmpod::spec::PodSpec::from_toml(&text, std::path::Path::new("/tmp/wasmpod.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn spec_faults_lower_to_the_model() {
    let text = spec_text(
        "listen 127.0.0.1:6000",
        "try-connect 127.0.0.1:6000",
        "[[faults]]\nto = \"server:6000\"\nfrom = \"client\"\nkind = \"latency\"\nlatency = \"200ms\"\n\
         jitter = \"10ms\"\ndirection = \"upstream\"\ntoxicity = 0.5\n\n\
         [[faults]]\nto = \"6000\"\nkind = \"bandwidth\"\nrate = \"1MiB\"\n\n\
         [[faults]]\nto = \"example.com:443\"\nkind = \"down\"\n",
    );
    let spec = wasmpod::spec::PodSpec::from_toml(&text, std::path::Path::new("/tmp/wasmpod.toml")).expect("valid");
    assert_eq!(spec.faults.len(), 3);
    assert_eq!(
        spec.faults[0],
        Fault::new(
            FaultKind::Latency {
                latency: Duration::from_millis(200),
                jitter: Duration::from_millis(10)
            },
            to("server:6000")
        )
        .from("client")
        .direction(Direction::Upstream)
        .toxicity(0.5)
    );
    assert_eq!(spec.faults[1].kind, FaultKind::Bandwidth { rate: 1 << 20 });
    assert!(spec.faults[2].to.is_egress());
}

#[test]
fn bad_faults_are_located_spec_errors() {
    // Line 15 is the first line after the two containers (see `spec_text`).
    let cases: &[(&str, &str)] = &[
        (
            "[[faults]]\nto = \"6000\"\nkind = \"jam\"\n",
            "unknown fault kind \"jam\"",
        ),
        (
            "[[faults]]\nto = \"6000\"\nkind = \"down\"\nlatency = \"1s\"\n",
            "`latency` is not a field of a down fault",
        ),
        (
            "[[faults]]\nto = \"db:6000\"\nkind = \"down\"\n",
            "\"db\", which is not a container",
        ),
        (
            "[[faults]]\nto = \"server:7000\"\nkind = \"down\"\n",
            "does not list port 7000",
        ),
        (
            "[[faults]]\nto = \"7000\"\nkind = \"down\"\n",
            "no container of this pod lists port 7000",
        ),
        (
            "[[faults]]\nto = \"6000\"\nkind = \"down\"\nfrom = \"ghost\"\n",
            "\"ghost\", which is not a container",
        ),
        (
            "[[faults]]\nto = \"6000\"\nkind = \"loss\"\nprobability = 1.5\n",
            "probability 1.5 is not a probability",
        ),
        (
            "[[faults]]\nto = \"6000\"\nkind = \"down\"\ntoxicity = -1\n",
            "toxicity -1 is not a probability",
        ),
        ("[[faults]]\nto = \"6000\"\nkind = \"latency\"\n", "needs `latency`"),
        (
            "[[faults]]\nto = \"6000\"\nkind = \"down\"\ndirection = \"sideways\"\n",
            "direction \"sideways\"",
        ),
    ];
    for (faults, want) in cases {
        let errors = spec_errors(faults);
        assert_eq!(errors.len(), 1, "{faults}: {errors:?}");
        assert!(errors[0].contains(want), "{faults}: {errors:?}");
        // Located: file:line:column, inside the [[faults]] table.
        let line: usize = errors[0]
            .split(':')
            .nth(1)
            .and_then(|l| l.parse().ok())
            .expect(&errors[0]);
        assert!(line >= 15, "{errors:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_installs_spec_faults_reports_them_and_the_harness_guard_removes_its_own() {
    use wasmpod::status::EventKind;
    use wasmpod::testing::TestPod;
    // The spec puts the server's port down from the start: the client is refused.
    let text = spec_text(
        "listen 127.0.0.1:6000 && accept-hold",
        "try-connect 127.0.0.1:6000",
        "[[faults]]\nto = \"server:6000\"\nkind = \"down\"\n",
    );
    let spec = wasmpod::spec::PodSpec::from_toml(&text, std::path::Path::new("/tmp/wasmpod.toml")).expect("valid");
    let pod = TestPod::start(spec).await.expect("start");
    pod.wait_for_log("client", |l| l.starts_with("connect"))
        .await
        .expect("client");
    assert_eq!(pod.logs("client"), ["connect failed: ConnectionRefused"]);
    let guard = pod.fault(Fault::new(FaultKind::Loss { probability: 1.0 }, to("53")));
    let id = guard.id();
    drop(guard);
    let kinds: Vec<EventKind> = pod.pod().events().all().into_iter().map(|e| e.kind).collect();
    assert!(
        kinds.iter().any(|k| matches!(k, EventKind::FaultAdded { id: 1, .. })),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::FaultTriggered { id: 1, link } if link == "client -> 6000")),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::FaultRemoved { id: i, .. } if *i == id)),
        "{kinds:?}"
    );
    assert_eq!(pod.pod().network().faults().list().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_add_ls_rm_over_the_control_socket() {
    use std::os::unix::fs::PermissionsExt;
    use wasmpod::control::{Client, PodClaim, Request, Response};
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let text = spec_text(
        "listen 127.0.0.1:6000 && accept-hold",
        "listen 127.0.0.1:6001 && accept-hold",
        "",
    );
    let spec = wasmpod::spec::PodSpec::from_toml(&text, std::path::Path::new("/tmp/wasmpod.toml")).expect("valid");
    let pod = Arc::new(wasmpod::Pod::from_spec(spec).expect("pod"));
    pod.start().await.expect("start");
    let _server = PodClaim::acquire_in(dir.path(), "chaos")
        .unwrap()
        .serve(pod.clone())
        .expect("serve");
    let path = dir.path().to_path_buf();
    let ask = move |line: &str| {
        let request = Request::parse(line).expect(line);
        let client = Client::find(&path, Some("chaos")).expect("client");
        client
            .request(&request)
            .expect("request")
            .map(|r| r.expect("reply"))
            .collect::<Vec<Response>>()
    };
    let replies = tokio::task::spawn_blocking(move || {
        [
            ask("fault add to=server:6000 kind=latency latency=200ms from=client"),
            ask("fault ls"),
            ask("fault add to=6000 kind=jam"),
            ask("fault add to=db:6000 kind=down"),
            ask("fault add to=6000 kind=down latency=1s"),
            ask("fault rm 1"),
            ask("fault rm 1"),
            ask("fault ls"),
        ]
    })
    .await
    .unwrap();
    let added = Response::Fault {
        id: 1,
        fault: "latency 200ms ± 0s to server:6000 from client (both)".into(),
    };
    assert_eq!(replies[0], std::slice::from_ref(&added));
    assert_eq!(replies[1], std::slice::from_ref(&added));
    for (i, want) in [
        (2, "unknown fault kind"),
        (3, "\"db\" is not a container"),
        (4, "not a field of a down"),
    ] {
        assert!(
            matches!(&replies[i][..], [Response::Error { message }] if message.contains(want)),
            "{i}: {:?}",
            replies[i]
        );
    }
    assert_eq!(replies[5], [added]);
    assert!(matches!(&replies[6][..], [Response::Error { .. }]), "{:?}", replies[6]);
    assert!(replies[7].is_empty(), "{:?}", replies[7]);
    assert!(pod.network().faults().is_empty());
}

/// What the fault table costs a connect: host-side connect + accept with an empty table and
/// with a fault on another port (the slow path: lock and filter). Prints numbers, asserts
/// nothing about time (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_connect_cost_of_the_fault_table() {
    let pod = PodNetwork::new();
    let listener = pod.listen_host(7000, 1024).unwrap();
    let n = 20_000u32;
    let mut guard = None;
    for label in [
        "empty table (warm-up)",
        "empty table",
        "one fault on another port",
        "empty again",
    ] {
        if label.starts_with("one fault") {
            guard = Some(pod.faults().add_guarded(Fault::new(FaultKind::Down, to("7001"))));
        } else if label == "empty again" {
            guard = None;
        }
        let start = std::time::Instant::now();
        for _ in 0..n {
            let c = pod.connect(7000).unwrap();
            let s = listener.accept().await.unwrap();
            drop((c, s));
        }
        println!("{label}: {:?} per connect+accept", start.elapsed() / n);
    }
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// Faults added while a connection is open (`hold-ping`: the guest connects, exchanges one byte,
// waits for a go byte, then times one more exchange on the same connection). The host end
// serves it, so the test decides exactly when the fault comes in.

/// Accepts the `hold-ping` client's connection, echoes its warm-up byte and waits until the
/// client says the echo arrived.
async fn hold_ping_accepted(listener: &wasmpod::net::PodListener) -> wasmpod::net::PodStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("client connects in time")
        .expect("accept");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("warm-up byte");
    s.write_all(b"p").await.expect("warm-up echo");
    s.read_exact(&mut b).await.expect("ready byte");
    assert_eq!(&b, b"r");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_added_while_open_delays_the_open_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod = PodNetwork::new();
    let listener = pod.listen_host(5600, 8).expect("listen");
    let client = spawn(&pod, "client", "hold-ping 127.0.0.1:5600");
    let mut s = hold_ping_accepted(&listener).await;
    let latency = Duration::from_millis(120);
    let _slow = pod.faults().add_guarded(Fault::new(
        FaultKind::Latency {
            latency,
            jitter: Duration::ZERO,
        },
        to("5600"),
    ));
    // A partition elsewhere leaves this link alone.
    let _elsewhere = pod.faults().add_guarded(Fault::new(FaultKind::Down, to("5601")));
    s.write_all(b"g").await.expect("go");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("timed byte");
    s.write_all(b"p").await.expect("timed echo");
    let (code, out) = client.await.expect("client task");
    assert_eq!(code, 0, "{out}");
    let rtt: u128 = out
        .lines()
        .find_map(|l| l.strip_prefix("rtt ")?.strip_suffix(" ns")?.parse().ok())
        .expect(&out);
    // The byte up and its echo down, each held back on the connection opened before the fault.
    assert!(rtt >= 2 * latency.as_nanos(), "{out}");
}

/// Runs `hold-ping` against a host end, adds `fault` once the connection is open, and returns
/// what the guest printed and what the host end's next read gave.
async fn fault_on_open_hold_ping(port: u16, fault: Fault) -> (String, std::io::Result<usize>, Arc<PodNetwork>) {
    use tokio::io::AsyncReadExt;
    let pod = PodNetwork::new();
    let listener = pod.listen_host(port, 8).expect("listen");
    let client = spawn(
        &pod,
        "client",
        Box::leak(format!("hold-ping 127.0.0.1:{port}").into_boxed_str()),
    );
    let mut s = hold_ping_accepted(&listener).await;
    let id = pod.faults().add(fault);
    let (code, out) = client.await.expect("client task");
    assert_eq!(code, 0, "{out}");
    let mut b = [0u8; 1];
    let host_read = tokio::time::timeout(DEADLINE, s.read(&mut b))
        .await
        .expect("host read ends");
    assert!(pod.faults().remove(id));
    (out, host_read, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_added_while_open_resets_the_open_connection_and_heals_when_removed() {
    let (out, host_read, pod) = fault_on_open_hold_ping(5610, Fault::new(FaultKind::Down, to("5610"))).await;
    // The guest was blocked reading its go byte: the partition wakes it with an error (a
    // reset; wasi-libc may report it without its code, see `reset_peer_resets_the_connection`).
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "warm", "{out}");
    assert!(lines[1].starts_with("go: error "), "{out}");
    assert_eq!(
        host_read.expect_err("the host end is reset too").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    // Removed (by the helper): new connections heal.
    let _listener = pod.listen_host(5611, 8).expect("listen");
    let (code, out) = run(&pod, "client", "try-connect 127.0.0.1:5611").await;
    assert_eq!((code, out.as_str()), (0, "connect ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_new_connections_while_an_open_one_is_reset() {
    let pod = PodNetwork::new();
    let listener = pod.listen_host(5620, 8).expect("listen");
    let client = spawn(&pod, "client", "hold-ping 127.0.0.1:5620");
    let _s = hold_ping_accepted(&listener).await;
    let guard = pod.faults().add_guarded(Fault::new(FaultKind::Down, to("5620")));
    let (code, out) = client.await.expect("client task");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("go: error "), "{out}");
    let (code, out) = run(&pod, "other", "try-connect 127.0.0.1:5620").await;
    assert_eq!((code, out.as_str()), (0, "connect failed: ConnectionRefused\n"));
    drop(guard);
    let (code, out) = run(&pod, "other", "try-connect 127.0.0.1:5620").await;
    assert_eq!((code, out.as_str()), (0, "connect ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_added_while_open_resets_it_after_its_timeout() {
    let fault = Fault::new(
        FaultKind::ResetPeer {
            timeout: Duration::from_millis(50),
        },
        to("5630"),
    );
    let (out, host_read, _pod) = fault_on_open_hold_ping(5630, fault).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "warm", "{out}");
    assert!(lines[1].starts_with("go: error "), "{out}");
    assert_eq!(
        host_read.expect_err("reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_for_another_container_leaves_an_open_connection_alone() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod = PodNetwork::new();
    let listener = pod.listen_host(5640, 8).expect("listen");
    let client = spawn(&pod, "client", "hold-ping 127.0.0.1:5640");
    let mut s = hold_ping_accepted(&listener).await;
    let _g = pod
        .faults()
        .add_guarded(Fault::new(FaultKind::Down, to("5640")).from("someone-else"));
    s.write_all(b"g").await.expect("go");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("timed byte");
    s.write_all(b"p").await.expect("timed echo");
    let (code, out) = client.await.expect("client task");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\nrtt "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_added_while_open_reaches_a_link_already_relayed() {
    // A slicer at connect time puts the link on a relay; a partition added later resets it
    // at once, even though no byte moves.
    let pod = PodNetwork::new();
    let listener = pod.listen_host(5650, 8).expect("listen");
    let _slicer = pod.faults().add_guarded(Fault::new(
        FaultKind::Slicer {
            average_size: 1,
            size_variation: 0,
            delay: Duration::ZERO,
        },
        to("5650"),
    ));
    let client = spawn(&pod, "client", "hold-ping 127.0.0.1:5650");
    let _s = hold_ping_accepted(&listener).await;
    let _down = pod.faults().add_guarded(Fault::new(FaultKind::Down, to("5650")));
    let (code, out) = client.await.expect("client task");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("go: error "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_bytes_keep_their_order_and_the_end_of_stream_waits_behind_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod = PodNetwork::new();
    let listener = pod.listen_host(5660, 8).expect("listen");
    let mut client = pod.connect(5660).expect("connect");
    let mut server = listener.accept().await.expect("accept");
    client.write_all(b"before ").await.expect("write");
    let guard = pod.faults().add_guarded(Fault::new(
        FaultKind::Latency {
            latency: Duration::from_millis(30),
            jitter: Duration::from_millis(25),
        },
        to("5660"),
    ));
    for i in 0..20 {
        client.write_all(format!("{i} ").as_bytes()).await.expect("write");
    }
    drop(guard);
    // Written after the fault went: still behind the held-back bytes.
    client.write_all(b"after").await.expect("write");
    client.shutdown().await.expect("fin");
    let mut got = String::new();
    tokio::time::timeout(DEADLINE, server.read_to_string(&mut got))
        .await
        .expect("read in time")
        .expect("read");
    let expected: String = std::iter::once("before ".to_string())
        .chain((0..20).map(|i| format!("{i} ")))
        .chain(std::iter::once("after".to_string()))
        .collect();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------------------------
// Outgoing HTTP answered in-process (an http container called by a sibling over wasi:http
// never touches a socket): `latency`, `down` and `reset_peer` act on the request. The caller
// is hello-http's `/fetch`, which answers `502 error: CODE` when its request fails.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_act_on_http_requests_routed_in_process() -> Result<(), wasmpod::testing::TestPodError> {
    use wasmpod::testing::TestPod;
    let guests = std::path::Path::new(env!("WASMPOD_GUESTS_DIR"));
    let pod = TestPod::builder("chain")
        .container("web", guests.join("hello_http.wasm"))
        .port(8080)
        .container("api", guests.join("hello_http.wasm"))
        .port(8081)
        .start()
        .await?;
    pod.wait_ready().await?;
    let fetch = |query: &'static str| pod.get_port(8080, query);
    let healthy = |r: &wasmpod::testing::TestResponse| r.status() == 200 && r.text() == "hello from wasmpod\n";
    let r = fetch("/fetch?url=http://api:8081/").await?;
    assert!(healthy(&r), "{} {}", r.status(), r.text());

    // down: refused, as a connect to a partitioned port would be; heals when removed.
    let down = pod.fault(Fault::new(FaultKind::Down, to("api:8081")));
    let r = fetch("/fetch?url=http://api:8081/").await?;
    assert_eq!(r.status(), 502, "{}", r.text());
    assert!(r.text().contains("ConnectionRefused"), "{}", r.text());
    drop(down);
    let r = fetch("/fetch?url=http://localhost:8081/").await?;
    assert!(healthy(&r), "{} {}", r.status(), r.text());

    // A fault from another container, or on another port, leaves web's requests alone.
    let _other = pod.fault(Fault::new(FaultKind::Down, to("8081")).from("api"));
    let _elsewhere = pod.fault(Fault::new(FaultKind::Down, to("8082")));
    let r = fetch("/fetch?url=http://api:8081/").await?;
    assert!(healthy(&r), "{} {}", r.status(), r.text());
    drop((_other, _elsewhere));

    // latency: the guest's own first-byte timeout (50 ms) fires before the delayed answer,
    // while a generous one sees it through.
    let slow = pod.fault(Fault::new(
        FaultKind::Latency {
            latency: Duration::from_millis(300),
            jitter: Duration::ZERO,
        },
        to("8081"),
    ));
    let r = fetch("/fetch?url=http://api:8081/&first_byte_ms=50").await?;
    assert_eq!(r.status(), 502, "{}", r.text());
    assert!(r.text().contains("ConnectionReadTimeout"), "{}", r.text());
    let r = fetch("/fetch?url=http://api:8081/&first_byte_ms=60000").await?;
    assert!(healthy(&r), "{} {}", r.status(), r.text());
    drop(slow);

    // reset_peer: the exchange fails as a dropped connection does.
    let reset = pod.fault(
        Fault::new(
            FaultKind::ResetPeer {
                timeout: Duration::ZERO,
            },
            to("api:8081"),
        )
        .from("web"),
    );
    let r = fetch("/fetch?url=http://api:8081/").await?;
    assert_eq!(r.status(), 502, "{}", r.text());
    assert!(r.text().contains("ConnectionTerminated"), "{}", r.text());
    drop(reset);
    let r = fetch("/fetch?url=http://api:8081/").await?;
    assert!(healthy(&r), "{} {}", r.status(), r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_latency_delivers_late_in_order() {
    let pod = PodNetwork::new();
    // The TCP listener tells the test the UDP socket is bound (it is bound first).
    let server = spawn(
        &pod,
        "server",
        "udp-bind 127.0.0.1:5700 && listen 127.0.0.1:5701 && udp-echo 20",
    );
    listening(&pod, 5701).await;
    let latency = Duration::from_millis(60);
    let _g = pod.faults().add_guarded(Fault::new(
        FaultKind::Latency {
            latency,
            jitter: Duration::from_millis(50),
        },
        to("server:5700"),
    ));
    let (code, out) = run(&pod, "client", "udp-rtt 127.0.0.1:5700 20").await;
    assert_eq!(code, 0, "{out}");
    // Each datagram is held back at least latency - jitter on the way there and back, and
    // jitter never reorders a link.
    let nanos: u128 = out
        .lines()
        .find_map(|l| l.strip_prefix("udp rtt 20 in ")?.strip_suffix(" ns")?.parse().ok())
        .expect(&out);
    assert!(nanos >= 2 * Duration::from_millis(10).as_nanos(), "{out}");
    assert!(out.contains("order ok"), "{out}");
    assert_eq!(server.await.expect("server").0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_reaches_an_open_egress_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let pod = PodNetwork::new();
    let target = format!("host.wasmpod.internal:{port}");
    let rules = vec![target.clone()];
    let hook: wasmpod::net::DeniedHook = Arc::new(|_| {});
    let script = format!("hold-ping {target}");
    let client = {
        let pod = pod.clone();
        tokio::spawn(async move { netcheck::run_with_egress(&pod, "app", &rules, hook, &script).await })
    };
    let (mut s, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("dialled in time")
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    s.write_all(b"p").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"r");
    let latency = Duration::from_millis(100);
    let slow = pod.faults().add_guarded(Fault::new(
        FaultKind::Latency {
            latency,
            jitter: Duration::ZERO,
        },
        to(&target),
    ));
    s.write_all(b"g").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    s.write_all(b"p").await.unwrap();
    let (code, out) = client.await.unwrap();
    assert_eq!(code, 0, "{out}");
    let rtt: u128 = out
        .lines()
        .find_map(|l| l.strip_prefix("rtt ")?.strip_suffix(" ns")?.parse().ok())
        .expect(&out);
    assert!(rtt >= 2 * latency.as_nanos(), "{out}");
    drop(slow);
}
