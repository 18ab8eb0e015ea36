//! The pod's virtual network through the pod API, on real guests written with plain `std::net`
//! (`netcheck`, `webserver`): container to container, through the front proxy, and isolation
//! between pods. No test opens a fixed host port: front proxies listen on 127.0.0.1:0.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmpod::spec::Expose;
use wasmpod::{Pod, PodOptions, PodPhase, PodSpec, RestartPolicy};

/// A pod whose front proxy listens on an ephemeral host port.
fn exposed_pod(spec: PodSpec) -> Pod {
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..PodOptions::default()
    };
    Pod::with_options(spec, options).expect("valid pod")
}

#[tokio::test]
async fn echo_server_and_client_exchange_16_mib_by_container_name() {
    // The client crash-loops (connection refused) until the server listens, as a pod would.
    let mut spec = pod_spec("echo", RestartPolicy::OnFailure);
    let mut server = netcheck("server", "listen 0.0.0.0:5000 && echo 1");
    server.ports = vec![5000];
    let client = netcheck("client", "send server:5000 16777216 && half-close localhost:5000 bye");
    spec.containers = vec![server, client];
    let pod = pod(spec);
    pod.start().await.unwrap();
    let sent = wait_for_line(&pod, "client", "sent ").await;
    assert!(sent.starts_with("sent 16777216 echoed 16777216 fnv "), "{sent}");
    // The server echoed one connection and exited 0: the second step finds nothing listening,
    // fails, and is retried until the restarted server answers.
    pod.stop().await;
}

#[tokio::test]
async fn half_close_reaches_the_server_and_the_reply_still_arrives() {
    let mut spec = pod_spec("halfclose", RestartPolicy::OnFailure);
    spec.containers = vec![
        netcheck("server", "listen 127.0.0.1:7000 && echo 1"),
        netcheck("client", "half-close localhost:7000 see you"),
    ];
    let pod = pod(spec);
    pod.start().await.unwrap();
    assert_eq!(wait_for_line(&pod, "client", "got: ").await, "got: see you");
    pod.stop().await;
}

#[tokio::test]
async fn address_in_use_connection_refused_ephemeral_ports_and_lookup() {
    let mut spec = pod_spec("errors", RestartPolicy::OnFailure);
    spec.containers = vec![
        netcheck("server", "listen 0.0.0.0:5000 && echo 1 && accept-hold"),
        netcheck(
            "client",
            "send server:5000 10 && try-bind 0.0.0.0:5000 && try-bind [::1]:5000 && try-connect 127.0.0.1:6000 \
             && try-bind 127.0.0.1:0 && lookup localhost && lookup server && lookup example.com",
        ),
    ];
    let pod = pod(spec);
    let host_side = pod
        .network()
        .listen_host(5001, 8)
        .expect("the host side can take a pod port");
    pod.start().await.unwrap();
    wait_for_line(&pod, "client", "lookup failed").await;
    let out: Vec<String> = lines(&pod, "client")
        .into_iter()
        .skip_while(|l| !l.starts_with("sent "))
        .collect();
    assert_eq!(out[1], "bind failed: AddrInUse", "{out:?}");
    assert_eq!(
        out[2], "bind failed: AddrInUse",
        "one port namespace for v4 and v6: {out:?}"
    );
    assert_eq!(out[3], "connect failed: ConnectionRefused", "{out:?}");
    let ephemeral: u16 = out[4]
        .strip_prefix("bind ok ")
        .and_then(|p| p.parse().ok())
        .expect("bind ok PORT");
    assert_ne!(ephemeral, 0);
    assert_eq!(
        &out[5..8],
        ["addr: 127.0.0.1", "addr: ::1", "addr: 127.0.0.1"],
        "{out:?}"
    );
    assert!(out[8].starts_with("lookup failed"), "{out:?}");
    drop(host_side);
    pod.stop().await;
}

#[tokio::test]
async fn udp_between_two_containers() {
    let mut spec = pod_spec("udp", RestartPolicy::OnFailure);
    spec.containers = vec![
        // The TCP echo tells the client the server is up; the UDP socket is bound before it.
        netcheck(
            "server",
            "udp-bind 0.0.0.0:5353 && listen 0.0.0.0:5354 && echo 1 && udp-echo 1 && accept-hold",
        ),
        netcheck("client", "send server:5354 10 && udp-send server:5353 ping over udp"),
    ];
    let pod = pod(spec);
    pod.start().await.unwrap();
    assert_eq!(
        wait_for_line(&pod, "client", "udp reply").await,
        "udp reply: ping over udp"
    );
    pod.stop().await;
}

#[tokio::test]
async fn sixteen_mib_through_the_front_proxy_arrive_intact_with_half_close() {
    let mut spec = pod_spec("proxyecho", RestartPolicy::Always);
    let mut server = netcheck("server", "listen 0.0.0.0:8080 && echo 1");
    server.ports = vec![8080];
    spec.containers = vec![server];
    spec.expose = Some(Expose::new(8080));
    let pod = exposed_pod(spec);
    pod.start().await.unwrap();
    let addr = pod.proxy_addr().expect("the front proxy listens");
    tokio::time::timeout(DEADLINE, pod.network().wait_listening(8080))
        .await
        .expect("server listens");

    let payload: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let expected = Sha256::digest(&payload);
    let writer = tokio::spawn(async move {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap(); // half-close: the guest reads end-of-stream
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(DEADLINE, read.read_to_end(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), 16 * 1024 * 1024);
    assert_eq!(Sha256::digest(&echoed), expected);
    pod.stop().await;
}

#[tokio::test]
async fn a_real_http_client_reaches_a_std_net_http_server_through_the_front_proxy() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>served from a volume</h1>").unwrap();
    let mut spec = pod_spec("web", RestartPolicy::Always);
    spec.volumes.push(host_path("site", site.path()));
    let mut web = ContainerSpecExt::with_args(guest_container("web", "webserver"), &["8080", "/site"]);
    web.ports = vec![8080];
    web.volume_mounts.push(mount("site", "/site", true));
    spec.containers = vec![web];
    spec.expose = Some(Expose::new(8080));
    let pod = exposed_pod(spec);
    pod.start().await.unwrap();
    let addr = pod.proxy_addr().unwrap();
    tokio::time::timeout(DEADLINE, pod.network().wait_listening(8080))
        .await
        .expect("web listens");

    for (path, status, body) in [
        ("/hello", 200, "hello from web\n"),
        ("/", 200, "<h1>served from a volume</h1>"),
        ("/missing", 404, "not found\n"),
    ] {
        let (got_status, got_body) = http_get(addr, path).await;
        assert_eq!((got_status, got_body.as_str()), (status, body), "{path}");
    }
    pod.stop().await;
}

#[tokio::test]
async fn nothing_listening_behind_the_front_proxy_closes_the_client_promptly_with_an_event() {
    let mut spec = pod_spec("noone", RestartPolicy::Never);
    let mut idle = toolbox("idle", &["serve-forever", "1000"]);
    idle.ports = vec![9000];
    spec.containers = vec![idle];
    spec.expose = Some(Expose::new(9000));
    let pod = exposed_pod(spec);
    pod.start().await.unwrap();
    let mut client = tokio::net::TcpStream::connect(pod.proxy_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, client.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)));
    wait_until(&pod, "an event about the refused connection", |pod| {
        pod.events()
            .all()
            .iter()
            .any(|e| e.to_string().contains("nothing listens on pod port 9000"))
    })
    .await;
    pod.stop().await;
}

#[tokio::test]
async fn two_pods_in_one_process_listen_on_the_same_port_and_never_see_each_other() {
    let mut pods = Vec::new();
    for name in ["left", "right"] {
        let mut spec = pod_spec(name, RestartPolicy::Always);
        let mut web = ContainerSpecExt::with_args(guest_container("web", "webserver"), &["80"]);
        web.ports = vec![80];
        spec.containers = vec![web];
        spec.expose = Some(Expose::new(80));
        spec.name = format!("pod-{name}");
        let pod = exposed_pod(spec);
        pod.start().await.unwrap();
        tokio::time::timeout(DEADLINE, pod.network().wait_listening(80))
            .await
            .expect("listens");
        pods.push(pod);
    }
    for pod in &pods {
        let (status, _) = http_get(pod.proxy_addr().unwrap(), "/hello").await;
        assert_eq!(status, 200);
    }
    // Each request went to its own pod's server only.
    for pod in &pods {
        assert_eq!(
            lines(pod, "web").iter().filter(|l| l.as_str() == "GET /hello").count(),
            1,
            "{}",
            explain(pod)
        );
    }
    for pod in &pods {
        pod.stop().await;
    }
}

#[tokio::test]
async fn a_restart_resets_the_servers_connections_and_it_binds_its_port_again() {
    let mut spec = pod_spec("restart", RestartPolicy::Always);
    spec.containers = vec![netcheck("server", "listen 0.0.0.0:5000 && accept-hold")];
    let pod = pod(spec);
    pod.start().await.unwrap();
    tokio::time::timeout(DEADLINE, pod.network().wait_listening(5000))
        .await
        .expect("listens");
    let mut client = pod.network().connect(5000).expect("connects");
    assert!(pod.restart("server"));
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, client.read(&mut buf))
        .await
        .expect("the client notices");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_until(&pod, "the server to restart", |pod| {
        pod.status().container("server").unwrap().restart_count == 1
    })
    .await;
    tokio::time::timeout(DEADLINE, pod.network().wait_listening(5000))
        .await
        .expect("listens again");
    let _again = pod.network().connect(5000).expect("connects to the restarted server");
    let status = pod.stop().await;
    assert_eq!(status.phase, PodPhase::Stopped);
}

/// A GET with hyper's HTTP/1.1 client; returns (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("response in time")
        .unwrap();
    let status = response.status().as_u16();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("body in time")
        .unwrap();
    (status, String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

fn guest_container(name: &str, guest_name: &str) -> wasmpod::spec::ContainerSpec {
    wasmpod::spec::ContainerSpec::new(name, guest(guest_name))
}

trait ContainerSpecExt {
    fn with_args(self, args: &[&str]) -> Self;
}

impl ContainerSpecExt for wasmpod::spec::ContainerSpec {
    fn with_args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }
}
