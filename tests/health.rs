//! Health and lifecycle on real guests: liveness restarts with back-off, readiness gating the
//! front proxy, a startup probe, the in-process health export, `depends_on` order, and stop in
//! reverse order with the grace period.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use wasmpod::spec::{ContainerSpec, Dependency, DependencyCondition, Expose, Probe, ProbeAction};
use wasmpod::{EventKind, Exit, Pod, PodOptions, PodPhase, RestartPolicy};

fn fast(action: ProbeAction) -> Probe {
    Probe {
        period: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        failure_threshold: 2,
        ..Probe::new(action)
    }
}

fn webserver(name: &str, args: &[&str]) -> ContainerSpec {
    let mut container = ContainerSpec::new(name, guest("webserver"));
    container.args = args.iter().map(|a| a.to_string()).collect();
    container
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container_with_backoff() {
    let mut spec = pod_spec("liveness", RestartPolicy::Always);
    let mut app = toolbox("app", &["serve-forever", "10"]);
    app.liveness_probe = Some(fast(ProbeAction::TcpSocket { port: 9 }));
    spec.containers = vec![app];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "two liveness restarts", |pod| {
        pod.status().container("app").unwrap().restart_count >= 2
    })
    .await;
    let status = pod.status();
    match &status.container("app").unwrap().last_exit {
        Some(Exit::Killed(reason)) => assert!(reason.starts_with("liveness probe failed"), "{reason}"),
        other => panic!("expected a liveness kill, got {other:?}"),
    }
    let events = pod.events().all();
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::Unhealthy { .. })));
    assert!(
        events.iter().any(|e| matches!(e.kind, EventKind::BackOff { .. })),
        "restarts back off"
    );
    pod.stop().await;
}

#[tokio::test]
async fn readiness_gates_the_front_proxy() {
    let site = tempfile::tempdir().unwrap();
    let mut spec = pod_spec("readiness", RestartPolicy::Always);
    spec.readiness_wait = Duration::from_millis(200);
    spec.volumes.push(host_path("site", site.path()));
    let mut web = webserver("web", &["8080", "/site"]);
    web.ports = vec![8080];
    web.volume_mounts.push(mount("site", "/site", true));
    web.readiness_probe = Some(fast(ProbeAction::HttpGet {
        port: 8080,
        path: "/ready.txt".into(),
    }));
    spec.containers = vec![web];
    spec.expose = Some(Expose::new(8080));
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..PodOptions::default()
    };
    let pod = Pod::with_options(spec, options).unwrap();
    pod.start().await.unwrap();
    let addr = pod.proxy_addr().unwrap();
    wait_for_line(&pod, "web", "listening").await;
    assert!(!pod.status().container("web").unwrap().ready);

    // Not ready: the connection is held for `readiness_wait`, then closed, with an event.
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, refused.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(read, Ok(0) | Err(_)));
    wait_until(&pod, "the refusal event", |pod| {
        pod.events()
            .all()
            .iter()
            .any(|e| e.to_string().contains("the pod was not ready"))
    })
    .await;

    std::fs::write(site.path().join("ready.txt"), "ok").unwrap();
    wait_until(&pod, "the web container to be ready", |pod| {
        pod.status().container("web").unwrap().ready
    })
    .await;
    let (status, body) = get(addr, "/ready.txt").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    pod.stop().await;
}

#[tokio::test]
async fn a_startup_probe_holds_readiness_until_it_passes() {
    let site = tempfile::tempdir().unwrap();
    let mut spec = pod_spec("startup", RestartPolicy::Always);
    spec.volumes.push(host_path("site", site.path()));
    let mut web = webserver("web", &["8080", "/site"]);
    web.volume_mounts.push(mount("site", "/site", true));
    web.startup_probe = Some(Probe {
        failure_threshold: 100_000,
        ..fast(ProbeAction::HttpGet {
            port: 8080,
            path: "/started.txt".into(),
        })
    });
    // Would restart the container at once if it ran before the startup probe passed.
    web.liveness_probe = Some(Probe {
        failure_threshold: 1,
        ..fast(ProbeAction::HttpGet {
            port: 8080,
            path: "/started.txt".into(),
        })
    });
    spec.containers = vec![web];
    let pod = pod(spec);
    pod.start().await.unwrap();
    // The startup probe is being answered 404 (the server logs each request it gets).
    wait_until(&pod, "startup probe requests", |pod| {
        lines(pod, "web").iter().filter(|l| l.contains("/started.txt")).count() >= 3
    })
    .await;
    let status = pod.status();
    let web = status.container("web").unwrap();
    assert!(!web.ready);
    assert_eq!(
        web.restart_count, 0,
        "liveness is held off while the startup probe has not passed"
    );
    std::fs::write(site.path().join("started.txt"), "yes").unwrap();
    wait_until(&pod, "ready after startup", |pod| {
        pod.status().container("web").unwrap().ready
    })
    .await;
    assert_eq!(pod.status().container("web").unwrap().restart_count, 0);
    pod.stop().await;
}

#[tokio::test]
async fn the_in_process_health_export_drives_readiness() {
    let state = tempfile::tempdir().unwrap();
    let mut spec = pod_spec("healthexport", RestartPolicy::Always);
    spec.volumes.push(host_path("state", state.path()));
    let mut app = ContainerSpec::new("app", guest("healthy"));
    app.volume_mounts.push(mount("state", "/state", true));
    app.readiness_probe = Some(Probe {
        failure_threshold: 1,
        ..fast(ProbeAction::Health)
    });
    spec.containers = vec![app];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "a not-ready event from the health export", |pod| {
        pod.events()
            .all()
            .iter()
            .any(|e| matches!(&e.kind, EventKind::NotReady { message } if message.contains("/state/healthy")))
    })
    .await;
    std::fs::write(state.path().join("healthy"), "").unwrap();
    wait_until(&pod, "ready", |pod| pod.status().container("app").unwrap().ready).await;
    std::fs::remove_file(state.path().join("healthy")).unwrap();
    wait_until(&pod, "not ready again", |pod| {
        !pod.status().container("app").unwrap().ready
    })
    .await;
    pod.stop().await;
}

#[tokio::test]
async fn depends_on_ready_starts_the_client_after_its_server_is_ready() {
    let mut spec = pod_spec("dependson", RestartPolicy::Never);
    let mut server = webserver("server", &["8080"]);
    server.readiness_probe = Some(fast(ProbeAction::TcpSocket { port: 8080 }));
    let mut client = webserver("client", &["--get", "server:8080", "/hello"]);
    client.depends_on = vec![Dependency {
        container: "server".into(),
        condition: DependencyCondition::Ready,
    }];
    // Listed first on purpose: order comes from depends_on, not from the list.
    spec.containers = vec![client, server];
    let pod = pod(spec);
    pod.start().await.unwrap();
    wait_until(&pod, "the client to finish", |pod| {
        pod.status().container("client").unwrap().last_exit.is_some()
    })
    .await;
    assert_eq!(
        pod.status().container("client").unwrap().last_exit,
        Some(Exit::Code(0)),
        "{}",
        explain(&pod)
    );
    assert_eq!(lines(&pod, "client"), vec!["status: 200", "body: hello from server"]);
    pod.stop().await;
}

#[tokio::test]
async fn stop_runs_in_reverse_order_and_cancels_after_the_grace_period() {
    let record = tempfile::tempdir().unwrap();
    let mut spec = pod_spec("shutdown", RestartPolicy::Always);
    spec.termination_grace_period = Duration::from_millis(300);
    spec.volumes.push(host_path("record", record.path()));
    let mut db = toolbox(
        "db",
        &["print", "up", "&&", "wait-stdin", "&&", "append", "/r/order", "db"],
    );
    db.volume_mounts.push(mount("record", "/r", false));
    let mut api = toolbox(
        "api",
        &["print", "up", "&&", "wait-stdin", "&&", "append", "/r/order", "api"],
    );
    api.volume_mounts.push(mount("record", "/r", false));
    api.depends_on = vec![Dependency {
        container: "db".into(),
        condition: DependencyCondition::Started,
    }];
    // Ignores its stdin: cancelled when the grace period is over.
    let mut stubborn = toolbox("stubborn", &["serve-forever", "10"]);
    stubborn.depends_on = vec![Dependency {
        container: "api".into(),
        condition: DependencyCondition::Started,
    }];
    spec.containers = vec![db, api, stubborn];
    let pod = pod(spec);
    pod.start().await.unwrap();
    for name in ["db", "api"] {
        wait_for_line(&pod, name, "up").await;
    }
    wait_for_line(&pod, "stubborn", "alive").await;
    let status = tokio::time::timeout(DEADLINE, pod.stop()).await.expect("stops");
    assert_eq!(status.phase, PodPhase::Stopped);
    assert_eq!(
        std::fs::read_to_string(record.path().join("order")).unwrap(),
        "api\ndb\n"
    );
    assert!(pod.events().all().iter().any(|e| {
        e.container.as_deref() == Some("stubborn")
            && e.to_string().contains("did not exit within the 300ms grace period")
    }));
    for name in ["db", "api", "stubborn"] {
        assert_eq!(
            status.container(name).unwrap().restart_count,
            0,
            "{name} was not restarted while stopping"
        );
    }
}

#[tokio::test]
async fn a_failing_startup_probe_kills_the_container() {
    let mut spec = pod_spec("startupfail", RestartPolicy::Never);
    let mut app = toolbox("app", &["serve-forever", "10"]);
    app.startup_probe = Some(fast(ProbeAction::TcpSocket { port: 9 }));
    spec.containers = vec![app];
    let pod = pod(spec);
    let status = run_to_end(&pod).await;
    match &status.container("app").unwrap().last_exit {
        Some(Exit::Killed(reason)) => assert!(reason.starts_with("startup probe failed"), "{reason}"),
        other => panic!("expected a startup kill, got {other:?}"),
    }
}

/// A GET over a plain TCP connection through the front proxy; returns (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}
