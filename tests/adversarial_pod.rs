//! The sandbox holds, pod lifecycle: a failed sidecar must not take down the exposed port
//! (issue 10, hole 8). With `restart_policy = "never"`, a sidecar that runs out of memory (or
//! exits non-zero) stays down and shows in the status and events, but the front proxy keeps
//! forwarding to the ready container that serves the exposed port; `[expose] ready = "pod"`
//! keeps the whole-pod gate for those who want Kubernetes Service semantics.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod::spec::{ContainerSpec, Expose, ExposeReady, PodSpec, Probe, ProbeAction, Resources};
use wasmpod::{EventKind, Exit, Pod, PodOptions, PodPhase, RestartPolicy};

const MIB: u64 = 1024 * 1024;

/// A webserver serving the exposed port, ready once it accepts connections, next to `sidecar`.
fn app_with_sidecar(name: &str, sidecar: ContainerSpec, ready: ExposeReady) -> PodSpec {
    let mut spec = pod_spec(name, RestartPolicy::Never);
    spec.readiness_wait = Duration::from_millis(200);
    let mut web = ContainerSpec::new("web", guest("webserver"));
    web.args = vec!["8080".into()];
    web.ports = vec![8080];
    web.readiness_probe = Some(Probe {
        period: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..Probe::new(ProbeAction::TcpSocket { port: 8080 })
    });
    spec.containers = vec![web, sidecar];
    spec.expose = Some(Expose { port: 8080, ready });
    spec
}

/// A sidecar that allocates far past its memory limit: OOMKilled.
fn memory_hog() -> ContainerSpec {
    let mut sidecar = toolbox("sidecar", &["alloc-mib", "1024"]);
    sidecar.resources = Resources {
        memory: Some(16 * MIB),
        cpu: None,
    };
    sidecar
}

fn start(spec: PodSpec) -> Pod {
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..PodOptions::default()
    };
    Pod::with_options(spec, options).unwrap()
}

/// Waits until the sidecar is down for good and the web container is ready.
async fn sidecar_failed_and_web_ready(pod: &Pod) -> Exit {
    wait_until(pod, "the sidecar to fail and the web container to be ready", |pod| {
        let status = pod.status();
        status.container("sidecar").unwrap().last_exit.is_some() && status.container("web").unwrap().ready
    })
    .await;
    pod.status().container("sidecar").unwrap().last_exit.clone().unwrap()
}

/// A GET through the front proxy: the response, or `None` when the proxy closed the
/// connection without one.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    // The proxy may already have closed a refused connection.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("answered or closed in time");
    match read {
        Ok(_) if !response.is_empty() => Some(String::from_utf8_lossy(&response).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn an_oom_killed_sidecar_does_not_take_down_the_exposed_port() {
    let pod = start(app_with_sidecar("oomsidecar", memory_hog(), ExposeReady::Container));
    pod.start().await.unwrap();
    let exit = sidecar_failed_and_web_ready(&pod).await;
    assert!(matches!(exit, Exit::OutOfMemory { .. }), "{exit:?}\n{}", explain(&pod));

    let addr = pod.proxy_addr().unwrap();
    let response = get(addr, "/hello").await;
    let response = response.unwrap_or_else(|| panic!("the front proxy refused the request\n{}", explain(&pod)));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.trim_end().ends_with("hello from web"), "{response}");

    // The failure is not hidden: the sidecar shows as down, in the status and the events.
    let status = pod.status();
    assert_eq!(status.phase, PodPhase::Running);
    assert!(!status.container("sidecar").unwrap().ready);
    assert_eq!(status.container("sidecar").unwrap().restart_count, 0);
    assert!(pod.events().all().iter().any(|e| {
        e.container.as_deref() == Some("sidecar")
            && matches!(
                &e.kind,
                EventKind::Exited {
                    exit: Exit::OutOfMemory { .. }
                }
            )
    }));
    let status = pod.stop().await;
    assert_eq!(status.phase, PodPhase::Stopped);
}

#[tokio::test]
async fn a_sidecar_that_exits_non_zero_does_not_take_down_the_exposed_port() {
    let sidecar = toolbox("sidecar", &["eprint", "config is broken", "&&", "exit", "3"]);
    let pod = start(app_with_sidecar("exitsidecar", sidecar, ExposeReady::Container));
    pod.start().await.unwrap();
    assert_eq!(sidecar_failed_and_web_ready(&pod).await, Exit::Code(1));
    let response = get(pod.proxy_addr().unwrap(), "/hello").await;
    let response = response.unwrap_or_else(|| panic!("the front proxy refused the request\n{}", explain(&pod)));
    assert!(response.trim_end().ends_with("hello from web"), "{response}");
    pod.stop().await;
}

#[tokio::test]
async fn with_ready_pod_a_failed_sidecar_closes_the_exposed_port_as_kubernetes_would() {
    let pod = start(app_with_sidecar("podgate", memory_hog(), ExposeReady::Pod));
    pod.start().await.unwrap();
    let exit = sidecar_failed_and_web_ready(&pod).await;
    assert!(matches!(exit, Exit::OutOfMemory { .. }), "{exit:?}");
    let response = get(pod.proxy_addr().unwrap(), "/hello").await;
    assert_eq!(response, None, "the whole-pod gate refuses while a container is down");
    wait_until(&pod, "the refusal event", |pod| {
        pod.events()
            .all()
            .iter()
            .any(|e| e.to_string().contains("the pod was not ready"))
    })
    .await;
    pod.stop().await;
}

#[tokio::test]
async fn an_exposed_http_container_keeps_serving_beside_a_failed_sidecar() {
    let mut spec = pod_spec("httpsidecar", RestartPolicy::Never);
    spec.readiness_wait = Duration::from_millis(200);
    let mut web = ContainerSpec::new("web", guest("hello_http"));
    web.ports = vec![8080];
    spec.containers = vec![web, memory_hog()];
    spec.expose = Some(Expose::new(8080));
    let pod = start(spec);
    pod.start().await.unwrap();
    let exit = sidecar_failed_and_web_ready(&pod).await;
    assert!(matches!(exit, Exit::OutOfMemory { .. }), "{exit:?}");
    let response = get(pod.proxy_addr().unwrap(), "/").await;
    let response = response.unwrap_or_else(|| panic!("the front proxy refused the request\n{}", explain(&pod)));
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("hello from wasmpod"),
        "{response}"
    );
    pod.stop().await;
}

#[test]
fn expose_ready_is_read_from_the_spec_and_defaults_to_the_container() {
    let toml = |ready: &str| {
        format!(
            "name = \"gate\"\n\
             [expose]\nport = 8080\n{ready}\n\
             [[containers]]\nname = \"web\"\ncomponent = {:?}\nports = [8080]\n",
            guest("webserver").display().to_string()
        )
    };
    let file = std::env::temp_dir().join("wasmpod.toml");
    let parse = |ready: &str| PodSpec::from_toml(&toml(ready), &file);
    let ready_of = |ready: &str| parse(ready).unwrap().expose.unwrap().ready;
    assert_eq!(ready_of(""), ExposeReady::Container);
    assert_eq!(ready_of("ready = \"container\""), ExposeReady::Container);
    assert_eq!(ready_of("ready = \"pod\""), ExposeReady::Pod);
    let error = parse("ready = \"service\"").unwrap_err().to_string();
    assert!(error.contains("wasmpod.toml:4"), "{error}");
    assert!(error.contains("container") && error.contains("pod"), "{error}");
}
