//! The pod runtime core through the library API, on the real `toolbox` guest: volumes, mounts,
//! isolation, args and env, init containers, restart policies and back-off, traps, stop, and a
//! start that is claimed once.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod::spec::{ComponentSource, ContainerSpec, Expose, PodSpec, VolumeSource, VolumeSpec};
use wasmpod::{ContainerState, EventKind, Exit, Pod, PodError, PodOptions, PodPhase, RestartPolicy, WaitingReason};

#[tokio::test]
async fn two_containers_share_an_empty_dir() {
    let mut spec = pod_spec("share", RestartPolicy::Never);
    spec.volumes.push(empty_dir("scratch"));
    let mut writer = toolbox("writer", &["tick", "/data/log.txt", "3", "10"]);
    writer.volume_mounts.push(mount("scratch", "/data", false));
    let mut reader = toolbox("reader", &["follow", "/data/log.txt", "3", "30000"]);
    reader.volume_mounts.push(mount("scratch", "/shared", false));
    reader.args = vec!["follow".into(), "/shared/log.txt".into(), "3".into(), "30000".into()];
    spec.containers = vec![writer, reader];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    assert_eq!(lines(&pod, "reader"), vec!["got: tick 1", "got: tick 2", "got: tick 3"]);
}

#[tokio::test]
async fn empty_dir_is_removed_when_the_pod_ends() {
    let mut spec = pod_spec("cleanup", RestartPolicy::Never);
    spec.volumes.push(empty_dir("scratch"));
    let mut writer = toolbox("writer", &["write", "/data/file", "x"]);
    writer.volume_mounts.push(mount("scratch", "/data", false));
    spec.containers = vec![writer];
    let pod = pod(spec);
    pod.start().await.unwrap();
    let dir = pod.volume_dir("scratch").expect("volume exists while the pod runs");
    assert!(dir.exists());
    let status = pod.wait().await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    assert!(!dir.exists(), "{} should be removed", dir.display());
}

#[tokio::test]
async fn host_path_read_only_refuses_writes_and_read_write_reaches_the_host() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "original").unwrap();
    let mut spec = pod_spec("hostpath", RestartPolicy::Never);
    spec.volumes.push(host_path("site", site.path()));
    let mut ro = toolbox(
        "ro",
        &[
            "try-write",
            "/site/index.html",
            "changed",
            "&&",
            "try-write",
            "/site/new.txt",
            "x",
            "&&",
            "read",
            "/site/index.html",
        ],
    );
    ro.volume_mounts.push(mount("site", "/site", true));
    let mut rw = toolbox("rw", &["write", "/site/from-guest.txt", "written by the guest"]);
    rw.volume_mounts.push(mount("site", "/site", false));
    spec.containers = vec![ro, rw];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));

    let ro_lines = lines(&pod, "ro");
    assert_eq!(ro_lines.len(), 3, "{ro_lines:?}");
    assert!(ro_lines[0].starts_with("write failed: "), "{ro_lines:?}");
    assert!(ro_lines[1].starts_with("write failed: "), "{ro_lines:?}");
    assert_eq!(ro_lines[2], "read: original");
    assert_eq!(
        std::fs::read_to_string(site.path().join("index.html")).unwrap(),
        "original"
    );
    assert!(!site.path().join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(site.path().join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
}

#[tokio::test]
async fn secret_is_readable_and_not_writable() {
    let mut spec = pod_spec("secret", RestartPolicy::Never);
    spec.volumes.push(VolumeSpec {
        name: "creds".into(),
        source: VolumeSource::Secret(BTreeMap::from([("token".to_string(), "s3cr3t".to_string())])),
    });
    let mut app = toolbox(
        "app",
        &[
            "read",
            "/creds/token",
            "&&",
            "try-write",
            "/creds/token",
            "stolen",
            "&&",
            "try-write",
            "/creds/other",
            "x",
        ],
    );
    app.volume_mounts.push(mount("creds", "/creds", true));
    spec.containers = vec![app];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    let out = lines(&pod, "app");
    assert_eq!(out[0], "read: s3cr3t");
    assert!(out[1].starts_with("write failed: "), "{out:?}");
    assert!(out[2].starts_with("write failed: "), "{out:?}");
}

#[tokio::test]
async fn args_and_env_reach_the_guest_and_the_host_environment_does_not() {
    let mut spec = pod_spec("argsenv", RestartPolicy::Never);
    let mut app = toolbox("app", &["args", "&&", "env"]);
    app.env = BTreeMap::from([
        ("GREETING".to_string(), "hello".to_string()),
        ("EMPTY".to_string(), String::new()),
    ]);
    spec.containers = vec![app];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    assert_eq!(
        lines(&pod, "app"),
        vec![
            "arg: app",
            "arg: args",
            "arg: &&",
            "arg: env",
            "env: EMPTY=",
            "env: GREETING=hello"
        ]
    );
    // The host certainly has these; the guest must not.
    assert!(std::env::var_os("PATH").is_some());
}

#[tokio::test]
async fn a_guest_cannot_leave_its_mounts() {
    let root = tempfile::tempdir().unwrap();
    let mounted = root.path().join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    std::fs::write(root.path().join("outside.txt"), "host secret").unwrap();
    std::fs::write(mounted.join("inside.txt"), "fine").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.path(), mounted.join("escape")).unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.txt"), mounted.join("link.txt")).unwrap();
    }
    let outside = root.path().join("outside.txt");
    let outside = outside.to_str().unwrap();
    let mut spec = pod_spec("jail", RestartPolicy::Never);
    spec.volumes.push(host_path("data", &mounted));
    let mut app = toolbox(
        "app",
        &[
            "try-read",
            "/data/inside.txt",
            "&&",
            "try-read",
            "/data/../outside.txt",
            "&&",
            "try-read",
            outside,
            "&&",
            "try-read",
            "/data/escape/outside.txt",
            "&&",
            "try-read",
            "/data/link.txt",
            "&&",
            "try-write",
            "/data/../planted.txt",
            "x",
            "&&",
            "try-read",
            "/etc/passwd",
        ],
    );
    app.volume_mounts.push(mount("data", "/data", false));
    spec.containers = vec![app];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    let out = lines(&pod, "app");
    assert_eq!(out.len(), 7, "{out:?}");
    assert_eq!(out[0], "read ok: 4 bytes");
    for (i, line) in out.iter().enumerate().skip(1) {
        assert!(line.contains("failed"), "step {i} escaped the mount: {out:?}");
    }
    assert!(!root.path().join("planted.txt").exists());
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_containers() {
    let mut spec = pod_spec("init", RestartPolicy::Never);
    spec.volumes.push(empty_dir("work"));
    let mut first = toolbox("first", &["append", "/w/order", "first"]);
    first.volume_mounts.push(mount("work", "/w", false));
    let mut second = toolbox("second", &["append", "/w/order", "second"]);
    second.volume_mounts.push(mount("work", "/w", false));
    let mut app = toolbox("app", &["read", "/w/order"]);
    app.volume_mounts.push(mount("work", "/w", false));
    spec.init_containers = vec![first, second];
    spec.containers = vec![app];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    assert_eq!(lines(&pod, "app"), vec!["read: first", "read: second"]);
    assert!(status.container("first").unwrap().init);
}

#[tokio::test]
async fn a_failing_init_container_stops_the_pod_with_a_clear_status() {
    let mut spec = pod_spec("initfail", RestartPolicy::Never);
    spec.init_containers = vec![toolbox("migrate", &["eprint", "schema is broken", "&&", "exit", "3"])];
    spec.containers = vec![toolbox("app", &["print", "must not run"])];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    match &status.phase {
        PodPhase::Failed { reason } => {
            assert!(reason.contains("init container \"migrate\""), "{reason}");
            // WASI 0.2's `exit` carries success or failure only: Rust's `exit(3)` arrives as 1.
            assert!(reason.contains("exited with code 1"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}\n{}", explain(&pod)),
    }
    assert_eq!(status.container("migrate").unwrap().last_exit, Some(Exit::Code(1)));
    let app = status.container("app").unwrap();
    assert_eq!(
        app.state,
        ContainerState::Waiting {
            reason: WaitingReason::InitFailed {
                init_container: "migrate".into()
            }
        }
    );
    assert!(lines(&pod, "app").is_empty());
    assert_eq!(lines(&pod, "migrate"), vec!["schema is broken"]);
}

#[tokio::test]
async fn restart_never_leaves_a_failed_container_down() {
    let mut spec = pod_spec("never", RestartPolicy::Never);
    spec.containers = vec![toolbox("bad", &["exit", "4"]), toolbox("good", &["print", "ok"])];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert!(
        matches!(&status.phase, PodPhase::Failed { reason } if reason.contains("\"bad\" exited with code 1")),
        "{status:?}"
    );
    let bad = status.container("bad").unwrap();
    assert_eq!(bad.restart_count, 0);
    assert_eq!(bad.last_exit, Some(Exit::Code(1)));
    assert_eq!(status.container("good").unwrap().last_exit, Some(Exit::Code(0)));
}

#[tokio::test]
async fn restart_on_failure_restarts_until_success_with_backoff() {
    let mut spec = pod_spec("onfailure", RestartPolicy::OnFailure);
    spec.volumes.push(empty_dir("state"));
    let mut flaky = toolbox("flaky", &["fail-until", "/state/runs", "4", "7"]);
    flaky.volume_mounts.push(mount("state", "/state", false));
    spec.containers = vec![flaky, toolbox("steady", &["print", "done"])];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, PodPhase::Succeeded, "{}", explain(&pod));
    let flaky = status.container("flaky").unwrap();
    assert_eq!(flaky.restart_count, 3);
    assert_eq!(flaky.last_exit, Some(Exit::Code(0)));
    assert_eq!(
        status.container("steady").unwrap().restart_count,
        0,
        "a success is not restarted"
    );
    assert_eq!(
        lines(&pod, "flaky"),
        vec!["run 1 of 4", "run 2 of 4", "run 3 of 4", "run 4 of 4"]
    );
    // 20 ms doubling, capped at 40 ms.
    let delays: Vec<Duration> = pod
        .events()
        .all()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::BackOff { delay } if e.container.as_deref() == Some("flaky") => Some(delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        vec![
            Duration::from_millis(20),
            Duration::from_millis(40),
            Duration::from_millis(40)
        ]
    );
}

#[tokio::test]
async fn restart_always_restarts_successful_exits_until_stopped() {
    let mut spec = pod_spec("always", RestartPolicy::Always);
    spec.containers = vec![toolbox("job", &["print", "ran"])];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "three restarts", |pod| {
        pod.status().container("job").unwrap().restart_count >= 3
    })
    .await;
    let status = pod.stop().await;
    assert_eq!(status.phase, PodPhase::Stopped);
    assert!(lines(&pod, "job").len() >= 4);
    assert!(lines(&pod, "job").iter().all(|l| l == "ran"));
}

#[tokio::test]
async fn a_trapping_container_restarts_under_on_failure_while_its_sibling_keeps_running() {
    let mut spec = pod_spec("trap", RestartPolicy::OnFailure);
    spec.containers = vec![
        toolbox("crasher", &["print", "about to trap", "&&", "trap"]),
        toolbox("server", &["serve-forever", "5"]),
    ];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "the crasher to restart twice", |pod| {
        pod.status().container("crasher").unwrap().restart_count >= 2
    })
    .await;
    let status = pod.status();
    let crasher = status.container("crasher").unwrap();
    match &crasher.last_exit {
        Some(Exit::Trapped(message)) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    let server = status.container("server").unwrap();
    assert!(matches!(server.state, ContainerState::Running { .. }), "{server:?}");
    assert_eq!(server.restart_count, 0);
    let before = lines(&pod, "server").len();
    wait_until(&pod, "the server to keep printing", |pod| {
        lines(pod, "server").len() > before + 2
    })
    .await;
    let status = pod.stop().await;
    assert_eq!(status.phase, PodPhase::Stopped);
    assert_eq!(status.container("server").unwrap().last_exit, Some(Exit::Stopped));
}

#[tokio::test]
async fn stop_cancels_a_guest_that_never_yields() {
    let mut spec = pod_spec("spin", RestartPolicy::Always);
    spec.containers = vec![toolbox("spinner", &["print", "spinning", "&&", "spin"])];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "the spinner to start", |pod| !lines(pod, "spinner").is_empty()).await;
    let status = tokio::time::timeout(DEADLINE, pod.stop()).await.expect("stop returns");
    assert_eq!(status.phase, PodPhase::Stopped);
    assert_eq!(status.container("spinner").unwrap().last_exit, Some(Exit::Stopped));
}

#[tokio::test]
async fn an_invalid_component_names_the_container() {
    let mut spec = pod_spec("badbytes", RestartPolicy::Never);
    let mut broken = toolbox("broken", &[]);
    // A component header followed by garbage: passes the header check, fails to compile.
    broken.component = ComponentSource::Bytes(vec![0, b'a', b's', b'm', 0x0d, 0, 1, 0, 0xff, 0xff].into());
    spec.containers = vec![broken];
    let pod = pod(spec);
    let error = pod.start().await.expect_err("garbage does not compile");
    assert!(
        matches!(error, PodError::Compile { ref container, .. } if container == "broken"),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"broken\""), "{error}");
}

#[tokio::test]
async fn start_twice_is_an_error_and_stop_before_start_is_fine() {
    let mut spec = pod_spec("twice", RestartPolicy::Never);
    spec.containers = vec![toolbox("app", &["sleep", "1"])];
    let idle = pod(spec.clone());
    assert_eq!(idle.stop().await.phase, PodPhase::Stopped);
    let pod: Pod = pod(spec);
    pod.start().await.unwrap();
    assert!(matches!(pod.start().await, Err(PodError::AlreadyStarted)));
    pod.wait().await;
}

/// A webserver exposed through the front proxy (on a free port) that serves the files of an
/// `empty_dir`.
fn exposed_site(name: &str) -> PodSpec {
    let mut spec = pod_spec(name, RestartPolicy::Never);
    spec.volumes.push(empty_dir("site"));
    let mut web = ContainerSpec::new("web", guest("webserver"));
    web.args = vec!["8080".into(), "/site".into()];
    web.ports = vec![8080];
    web.volume_mounts.push(mount("site", "/site", true));
    spec.containers = vec![web];
    spec.expose = Some(Expose::new(8080));
    spec
}

fn listening_on_a_free_port(spec: PodSpec) -> Pod {
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..PodOptions::default()
    };
    Pod::with_options(spec, options).unwrap()
}

/// A GET through the front proxy; returns the raw response.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("answered in time")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn concurrent_starts_one_wins_the_other_is_refused_at_once_and_nothing_is_overwritten() {
    let pod = listening_on_a_free_port(exposed_site("race"));
    let finished = Mutex::new(Vec::new());
    let start = async |caller: usize| {
        let result = pod.start().await;
        finished.lock().unwrap().push(caller);
        result
    };
    let (first, second) = tokio::join!(start(1), start(2));
    let (winner, loser) = match (&first, &second) {
        (Ok(()), Err(PodError::AlreadyStarted)) => (1, 2),
        (Err(PodError::AlreadyStarted), Ok(())) => (2, 1),
        other => panic!("expected one start to win and one AlreadyStarted, got {other:?}"),
    };
    assert_eq!(
        *finished.lock().unwrap(),
        vec![loser, winner],
        "the loser is refused before the winner's work is done"
    );

    // One start's work, once: one compile, one volume, one front proxy.
    let events = pod.events().all();
    let count = |what: fn(&EventKind) -> bool| events.iter().filter(|e| what(&e.kind)).count();
    assert_eq!(count(|k| matches!(k, EventKind::Compiling)), 1, "{}", explain(&pod));
    assert_eq!(
        count(|k| matches!(k, EventKind::VolumeReady { .. })),
        1,
        "{}",
        explain(&pod)
    );
    assert_eq!(
        count(|k| matches!(k, EventKind::Exposed { .. })),
        1,
        "{}",
        explain(&pod)
    );
    let exposed_at = events.iter().find_map(|e| match e.kind {
        EventKind::Exposed { host_addr, .. } => Some(host_addr),
        _ => None,
    });
    let addr = pod.proxy_addr().expect("the winner's front proxy");
    assert_eq!(Some(addr), exposed_at);
    let site = pod.volume_dir("site").expect("the winner's volume");
    let announced = events.iter().find_map(|e| match &e.kind {
        EventKind::VolumeReady { host_dir, .. } => Some(host_dir.clone()),
        _ => None,
    });
    assert_eq!(announced.as_deref(), site.to_str());

    // The pod runs normally on what the winner prepared.
    std::fs::write(site.join("index.txt"), "served by the winner").unwrap();
    wait_until(&pod, "the web container to be ready", |pod| {
        pod.status().container("web").unwrap().ready
    })
    .await;
    let response = get(addr, "/index.txt").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.trim_end().ends_with("served by the winner"), "{response}");
    assert!(matches!(pod.start().await, Err(PodError::AlreadyStarted)));
    assert_eq!(pod.proxy_addr(), Some(addr));
    let status = pod.stop().await;
    assert_eq!(status.phase, PodPhase::Stopped);
    assert!(!site.exists(), "the volume is removed when the pod ends");
}

#[tokio::test]
async fn a_failed_start_ends_the_pod_and_it_cannot_be_started_again() {
    let mut spec = exposed_site("failedstart");
    let mut broken = toolbox("broken", &[]);
    broken.component = ComponentSource::Bytes(vec![0, b'a', b's', b'm', 0x0d, 0, 1, 0, 0xff, 0xff].into());
    spec.containers.push(broken);
    let pod = listening_on_a_free_port(spec);
    let error = pod.start().await.expect_err("garbage does not compile");
    let status = tokio::time::timeout(DEADLINE, pod.wait())
        .await
        .expect("the pod has ended");
    match &status.phase {
        PodPhase::Failed { reason } => assert_eq!(reason, &error.to_string()),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(pod.proxy_addr().is_none(), "nothing prepared is kept");
    assert!(pod.volume_dir("site").is_none(), "nothing prepared is kept");
    assert!(matches!(pod.start().await, Err(PodError::AlreadyStarted)));
    assert!(
        pod.events()
            .all()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::PodFailed { reason } if reason.contains("\"broken\"")))
    );
    assert_eq!(pod.stop().await.phase, status.phase, "stop keeps the outcome");
}

#[tokio::test]
async fn stop_during_start_waits_for_the_start_and_ends_the_pod_stopped() {
    let pod = listening_on_a_free_port(exposed_site("stopwhilestarting"));
    let seen_dir = Mutex::new(None);
    let stop = async {
        // The start has claimed the pod and is compiling (it yields to get its volume ready).
        wait_until(&pod, "the start to begin", |pod| {
            pod.events()
                .all()
                .iter()
                .any(|e| matches!(e.kind, EventKind::Compiling))
        })
        .await;
        let status = pod.stop().await;
        *seen_dir.lock().unwrap() = pod.volume_dir("site");
        status
    };
    let (started, status) = tokio::join!(pod.start(), stop);
    started.expect("the start itself succeeds");
    assert_eq!(status.phase, PodPhase::Stopped, "{}", explain(&pod));
    assert!(
        seen_dir.lock().unwrap().is_none(),
        "the volumes are gone when stop returns"
    );
    let site = pod.events().all().into_iter().find_map(|e| match e.kind {
        EventKind::VolumeReady { host_dir, .. } => Some(host_dir),
        _ => None,
    });
    assert!(!std::path::Path::new(&site.expect("the volume was made")).exists());
    assert!(pod.proxy_addr().is_none());
}
