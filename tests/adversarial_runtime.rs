//! The sandbox issue's runtime holes, on real guests: an http container is held to its memory
//! limit and has the pod's sockets like every other kind (one container runtime), outgoing
//! wasi:http leaves the pod only through the same egress decision as sockets (a name that
//! resolves to the host itself never reaches it), an authority with an invalid port never
//! becomes port 80, and request timeouts hold on routes inside the pod. Every spec is TOML,
//! as users write it; front proxies listen on 127.0.0.1:0.

mod common;

use common::*;
use wasmpod::{EventKind, Pod};

/// A pod from spec text; `{hello}`, `{netcheck}` stand for the guests' paths.
fn pod_from(toml: &str) -> Pod {
    pod_from_toml(toml)
}

async fn started(toml: &str) -> (Pod, std::net::SocketAddr) {
    let pod = pod_from(toml);
    pod.start().await.expect("the pod starts");
    let addr = pod.proxy_addr().expect("the pod exposes a port");
    (pod, addr)
}

/// GET through the front proxy; (status, body as text).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get(addr, path).await
}

fn events_of(pod: &Pod, mut wanted: impl FnMut(&EventKind) -> bool) -> Vec<String> {
    pod.events()
        .all()
        .into_iter()
        .filter(|event| wanted(&event.kind))
        .map(|event| event.to_string())
        .collect()
}

#[tokio::test]
async fn an_http_container_is_held_to_its_memory_limit_and_keeps_serving() {
    let (pod, addr) = started(
        r#"
        name = "http-memory"
        [expose]
        port = 8080
        [[containers]]
        name = "web"
        component = "{hello}"
        ports = [8080]
        resources = { memory = "16MiB" }
        "#,
    )
    .await;
    // Before: one request of a 16 MiB container allocated and touched 1 GiB.
    let (status, body) = get(addr, "/alloc?mib=64").await;
    assert_eq!(status, 500, "a request over the limit fails: {body}");
    let oom = events_of(&pod, |kind| matches!(kind, EventKind::RequestTrapped { .. }));
    assert!(
        oom.iter()
            .any(|e| e.contains("OOMKilled: memory limit of 16MiB reached")),
        "the trap is reported as out of memory: {oom:?}"
    );
    // The budget is given back with the instance: later requests work, also ones that allocate.
    assert_eq!(get(addr, "/").await, (200, "hello from wasmpod\n".to_string()));
    assert_eq!(get(addr, "/alloc?mib=2").await, (200, "held 2 MiB\n".to_string()));
    pod.stop().await;
}

#[tokio::test]
async fn an_http_container_opens_tcp_connections_to_a_sibling_over_the_pod_network() {
    let (pod, addr) = started(
        r#"
        name = "http-sockets"
        [expose]
        port = 8080
        [[containers]]
        name = "web"
        component = "{hello}"
        ports = [8080]
        [[containers]]
        name = "echo"
        component = "{netcheck}"
        args = ["listen", "0.0.0.0:7000", "&&", "echo", "1"]
        "#,
    )
    .await;
    wait_for_line(&pod, "echo", "listening").await;
    // Before: an http container had no pod sockets at all.
    assert_eq!(get(addr, "/tcp?port=7000&send=ping").await, (200, "ping".to_string()));
    pod.stop().await;
}

/// A name the host resolves to one of its own addresses (`vm` on these machines, else the
/// host's own name): what an allowed rule may name by accident, or a rebinding DNS answer.
fn a_name_of_the_host_itself() -> String {
    use std::net::ToSocketAddrs;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for name in ["vm", hostname.trim()] {
        let resolved = (name, 80).to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>());
        if resolved.is_ok_and(|addrs| !addrs.is_empty()) {
            return name.to_string();
        }
    }
    panic!("neither `vm` nor the host name resolves on this machine; the test needs one that does");
}

#[tokio::test]
async fn outgoing_http_through_an_allowed_name_never_reaches_the_hosts_loopback() {
    let host_only = std::net::TcpListener::bind("127.0.0.1:0").expect("a host listener");
    host_only.set_nonblocking(true).expect("non-blocking");
    let port = host_only.local_addr().expect("its address").port();
    let name = a_name_of_the_host_itself();
    let (pod, addr) = started(&format!(
        r#"
        name = "http-egress"
        [expose]
        port = 8080
        [[containers]]
        name = "web"
        component = "{{hello}}"
        ports = [8080]
        allowed_outbound_hosts = ["{name}:{port}"]
        "#
    ))
    .await;
    let (status, body) = get(addr, &format!("/fetch?url=http://{name}:{port}/")).await;
    assert_eq!(
        (status, body.as_str()),
        (502, "error: ErrorCode::HttpRequestDenied\n"),
        "the request is denied"
    );
    // Before: the default client resolved the name and connected to the host's loopback.
    assert!(
        matches!(host_only.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the server on the host's loopback"
    );
    let denied = events_of(&pod, |kind| matches!(kind, EventKind::EgressDenied { .. }));
    assert!(
        denied
            .iter()
            .any(|e| e.contains("denied http request to") && e.contains("an address of the host itself")),
        "one kind of denial event, saying why: {denied:?}"
    );
    pod.stop().await;
}

#[tokio::test]
async fn an_authority_with_an_invalid_port_fails_and_never_becomes_port_80() {
    let (pod, addr) = started(
        r#"
        name = "http-ports"
        [expose]
        port = 80
        [[containers]]
        name = "web"
        component = "{hello}"
        ports = [80]
        allowed_outbound_hosts = ["host.wasmpod.internal:80"]
        "#,
    )
    .await;
    // Before: both were delivered to port 80 (the pod's own, or the host's through the rule).
    for url in ["http://localhost:99999/", "http://host.wasmpod.internal:99999/"] {
        let (status, body) = get(addr, &format!("/fetch?url={url}")).await;
        assert_eq!(status, 502, "{url}: {body}");
        assert!(body.contains("HttpRequestUriInvalid"), "{url}: {body}");
    }
    pod.stop().await;
}

#[tokio::test]
async fn request_timeouts_hold_on_routes_inside_the_pod() {
    let (pod, addr) = started(
        r#"
        name = "http-timeouts"
        termination_grace_period = "100ms"
        [expose]
        port = 8080
        [[containers]]
        name = "front"
        component = "{hello}"
        ports = [8080]
        [[containers]]
        name = "back"
        component = "{hello}"
        ports = [8081]
        [[containers]]
        name = "silent"
        component = "{netcheck}"
        args = ["listen", "0.0.0.0:7001", "&&", "accept-hold", "&&", "accept-hold"]
        "#,
    )
    .await;
    wait_for_line(&pod, "silent", "listening").await;
    // In-process to an http container that answers late, and over the pod network to a
    // command container that never answers: both end at the first-byte timeout.
    for url in [
        "http://localhost:8081/sleep?ms=600000&first_byte_ms=100",
        "http://localhost:7001/&first_byte_ms=100",
    ] {
        let (status, body) = get(addr, &format!("/fetch?url={url}")).await;
        assert_eq!(
            (status, body.as_str()),
            (502, "error: ErrorCode::ConnectionReadTimeout\n"),
            "{url}"
        );
    }
    // A body that stalls between its frames ends at the between-bytes timeout (the guest's
    // body stream fails with the host's error text, as with wasmtime's own client).
    let (status, body) = get(
        addr,
        "/fetch?url=http://localhost:8081/slow-body?ms=600000&between_bytes_ms=100",
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("connection read timeout"), "{body}");
    pod.stop().await;
}
