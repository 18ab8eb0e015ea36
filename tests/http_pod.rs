//! http containers inside a pod, on real guests: served through the front proxy with a real
//! HTTP client, chained in-process, called from and calling command containers over the pod
//! network, and denied egress. Front proxies listen on 127.0.0.1:0.

mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use wasmpod::egress::DeniedKind;
use wasmpod::spec::{ContainerSpec, Expose};
use wasmpod::{EventKind, Pod, PodOptions, PodSpec, RestartPolicy};

fn exposed_pod(spec: PodSpec) -> Pod {
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..PodOptions::default()
    };
    Pod::with_options(spec, options).expect("valid pod")
}

fn hello(name: &str, port: u16) -> ContainerSpec {
    let mut container = ContainerSpec::new(name, guest("hello_http"));
    container.ports = vec![port];
    container
}

fn webserver(name: &str, args: &[&str]) -> ContainerSpec {
    let mut container = ContainerSpec::new(name, guest("webserver"));
    container.args = args.iter().map(|a| a.to_string()).collect();
    container
}

/// One request with hyper's client; returns (status, headers, body).
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("in time")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("in time")
        .unwrap();
    (status, headers, body.to_bytes().to_vec())
}

async fn started(spec: PodSpec) -> (Pod, std::net::SocketAddr) {
    let pod = exposed_pod(spec);
    pod.start().await.unwrap();
    let addr = pod.proxy_addr().expect("exposed");
    (pod, addr)
}

#[tokio::test]
async fn hello_through_the_front_proxy_and_a_4_mib_echo() {
    let mut spec = pod_spec("hello", RestartPolicy::Always);
    spec.containers = vec![hello("hello", 8080)];
    spec.expose = Some(Expose::new(8080));
    let (pod, addr) = started(spec).await;
    let (status, headers, body) = request(addr, "GET", "/", Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("x-wasmpod").map(|v| v.as_bytes()), Some(&b"hello"[..]));
    assert_eq!(body, b"hello from wasmpod\n");

    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (status, _, echoed) = request(addr, "POST", "/echo", payload.clone()).await;
    assert_eq!(status, 200);
    assert!(echoed == payload, "4 MiB echoed intact ({} bytes back)", echoed.len());
    pod.stop().await;
}

#[tokio::test]
async fn a_trapping_request_answers_500_and_the_next_one_works() {
    let mut spec = pod_spec("trap", RestartPolicy::Always);
    spec.containers = vec![hello("hello", 8080)];
    spec.expose = Some(Expose::new(8080));
    let (pod, addr) = started(spec).await;
    assert_eq!(request(addr, "GET", "/trap", Vec::new()).await.0, 500);
    assert_eq!(request(addr, "GET", "/", Vec::new()).await.0, 200);
    assert!(
        pod.events()
            .all()
            .iter()
            .any(|e| matches!(e.kind, EventKind::RequestTrapped { .. }))
    );
    pod.stop().await;
}

#[tokio::test]
async fn http_containers_chain_in_process_through_localhost() {
    let mut spec = pod_spec("chain", RestartPolicy::Always);
    spec.containers = vec![hello("front", 8080), hello("back", 8081)];
    spec.expose = Some(Expose::new(8080));
    let (pod, addr) = started(spec).await;
    for url in ["http://localhost:8081/", "http://back:8081/", "http://127.0.0.1:8081/"] {
        let (status, headers, body) = request(addr, "GET", &format!("/fetch?url={url}"), Vec::new()).await;
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            headers.get("x-upstream-status").map(|v| v.as_bytes()),
            Some(&b"200"[..]),
            "{url}"
        );
        assert_eq!(body, b"hello from wasmpod\n", "{url}");
    }
    pod.stop().await;
}

#[tokio::test]
async fn an_http_container_calls_a_command_containers_std_net_server() {
    let mut spec = pod_spec("tocommand", RestartPolicy::Always);
    let mut web = webserver("web", &["9000"]);
    web.ports = vec![9000];
    spec.containers = vec![hello("front", 8080), web];
    spec.expose = Some(Expose::new(8080));
    let (pod, addr) = started(spec).await;
    tokio::time::timeout(DEADLINE, pod.network().wait_listening(9000))
        .await
        .expect("web listens");
    let (status, _, body) = request(addr, "GET", "/fetch?url=http://localhost:9000/hello", Vec::new()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"hello from web\n");
    pod.stop().await;
}

#[tokio::test]
async fn a_command_container_calls_an_http_container() {
    let mut spec = pod_spec("fromcommand", RestartPolicy::OnFailure);
    spec.containers = vec![hello("api", 8080), webserver("client", &["--get", "api:8080", "/"])];
    let pod = pod(spec);
    pod.start().await.unwrap();
    assert_eq!(wait_for_line(&pod, "client", "status: ").await, "status: 200");
    // The body lines are printed after the status (and a chunked body has its chunk sizes
    // among them): wait for the line itself rather than reading the log once.
    wait_for_line(&pod, "client", "body: hello from wasmpod").await;
    pod.stop().await;
}

#[tokio::test]
async fn outgoing_requests_outside_the_pod_are_denied_with_an_event() {
    let mut spec = pod_spec("denied", RestartPolicy::Always);
    spec.containers = vec![hello("front", 8080)];
    spec.expose = Some(Expose::new(8080));
    let (pod, addr) = started(spec).await;
    let (status, _, body) = request(addr, "GET", "/fetch?url=http://example.com/", Vec::new()).await;
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("HttpRequestDenied"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(pod.events().all().iter().any(|e| {
        e.container.as_deref() == Some("front")
            && matches!(&e.kind, EventKind::EgressDenied { kind: DeniedKind::Http, destination } if destination.contains("example.com"))
    }));
    pod.stop().await;
}

/// A tiny HTTP/1.1 server on the host's loopback (an ephemeral port) answering every request
/// with `body`; returns its port.
async fn host_server(body: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_allowed_host_wasmpod_internal_destination_is_served_by_the_hosts_loopback() {
    let port = host_server("from the host\n").await;
    let mut spec = pod_spec("hostinternal", RestartPolicy::OnFailure);
    let mut front = hello("front", 8080);
    front.allowed_outbound_hosts =
        wasmpod::net::EgressPolicy::parse(&[format!("host.wasmpod.internal:{port}")]).unwrap();
    let mut client = webserver("client", &["--get", &format!("host.wasmpod.internal:{port}"), "/"]);
    client.allowed_outbound_hosts =
        wasmpod::net::EgressPolicy::parse(&[format!("host.wasmpod.internal:{port}")]).unwrap();
    // Not allowed: the same destination from a container without the rule.
    let denied = hello("denied", 8081);
    spec.containers = vec![front, client, denied];
    spec.expose = Some(Expose::new(8080));
    let (pod, addr) = started(spec).await;

    // wasi:http from an http container.
    let url = format!("/fetch?url=http://host.wasmpod.internal:{port}/");
    let (status, _, body) = request(addr, "GET", &url, Vec::new()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"from the host\n");

    // Plain std::net sockets from a command container.
    assert_eq!(wait_for_line(&pod, "client", "status: ").await, "status: 200");
    assert!(lines(&pod, "client").contains(&"body: from the host".to_string()));

    // The container without the rule is denied, with an event naming it and the URL.
    let url = format!("/fetch?url=http://localhost:8081/fetch?url=http://host.wasmpod.internal:{port}/");
    let (_, _, body) = request(addr, "GET", &url, Vec::new()).await;
    assert!(
        String::from_utf8_lossy(&body).contains("HttpRequestDenied"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        pod.events()
            .all()
            .iter()
            .any(|e| e.container.as_deref() == Some("denied")
                && matches!(&e.kind, EventKind::EgressDenied { kind: DeniedKind::Http, destination } if destination.contains("host.wasmpod.internal")))
    );
    pod.stop().await;
}
