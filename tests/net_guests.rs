//! The pod network under real guests: `guests/netcheck` (plain Rust `std::net`, built for
//! wasm32-wasip2) runs as several containers of one or two pods, each in its own Store, linked
//! with wasmtime-wasi plus `wasmpod::net::p2::add_to_linker`.
//!
//! Parallel-safe: every test makes its own `PodNetwork`s (pod ports never touch the host), the
//! only host socket is an ephemeral one, and waits are conditions with deadlines, not sleeps.

use wasmpod::net::PodNetwork;

mod netcheck;
use netcheck::{DEADLINE, run};

async fn listening(pod: &PodNetwork, port: u16) {
    tokio::time::timeout(DEADLINE, pod.wait_listening(port))
        .await
        .expect("server listening in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_16_mib_between_containers() {
    let pod = PodNetwork::new();
    let p2 = pod.clone();
    let server = tokio::spawn(async move { run(&p2, "server", "listen 0.0.0.0:5000 && echo 1").await });
    listening(&pod, 5000).await;
    let (code, out) = run(&pod, "client", "send server:5000 16777216").await;
    assert_eq!(code, 0, "client: {out}");
    assert!(out.contains("sent 16777216 echoed 16777216"), "client: {out}");
    let (code, out) = server.await.unwrap();
    assert_eq!(code, 0, "server: {out}");
    assert_eq!(out, "listening 5000\nechoed 16777216\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_lookup_as_std_sees_them() {
    let pod = PodNetwork::new();
    pod.register_name("web");
    let script = "listen 127.0.0.1:6000 && try-bind [::1]:6000 && try-bind 0.0.0.0:6000 \
                  && try-connect 127.0.0.1:6001 && try-connect 10.1.2.3:80 && try-bind 10.1.2.3:80 \
                  && lookup localhost && lookup web && lookup example.com && try-bind 127.0.0.1:0";
    let (code, out) = run(&pod, "solo", script).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "listening 6000");
    assert_eq!(lines[1], "bind failed: AddrInUse");
    assert_eq!(lines[2], "bind failed: AddrInUse");
    assert_eq!(lines[3], "connect failed: ConnectionRefused");
    assert_eq!(lines[4], "connect failed: PermissionDenied");
    assert_eq!(lines[5], "bind failed: AddrNotAvailable");
    assert_eq!(&lines[6..8], ["addr: 127.0.0.1", "addr: ::1"]);
    assert_eq!(lines[8], "addr: 127.0.0.1");
    assert!(lines[9].starts_with("lookup failed"), "{out}");
    let eph: u16 = lines[10].strip_prefix("bind ok ").expect(&out).parse().unwrap();
    assert!(eph >= wasmpod::net::EPHEMERAL_FIRST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_addresses() {
    let pod = PodNetwork::new();
    let p2 = pod.clone();
    let server = tokio::spawn(async move { run(&p2, "server", "listen [::]:7000 && echo 2").await });
    listening(&pod, 7000).await;
    let (code, out) = run(&pod, "client", "half-close localhost:7000 hello pod").await;
    assert_eq!((code, out.as_str()), (0, "got: hello pod\n"));
    let (code, out) = run(&pod, "client", "addrs [::1]:7000").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("peer: [::1]:7000"), "{out}");
    assert!(out.contains("local: [::1]:"), "{out}");
    let (code, out) = server.await.unwrap();
    assert_eq!(code, 0, "{out}");
}

/// Two pods in one process both listen on the same port, which is also taken on the host:
/// no OS socket is opened, and each pod's client reaches only its own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_same_port_no_os_socket() {
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let (a, b) = (PodNetwork::new(), PodNetwork::new());
    let (a2, b2) = (a.clone(), b.clone());
    let listen = format!("listen 127.0.0.1:{port} && echo 1");
    let (l1, l2) = (listen.clone(), listen);
    let sa = tokio::spawn(async move { run(&a2, "server", &l1).await });
    let sb = tokio::spawn(async move { run(&b2, "server", &l2).await });
    listening(&a, port).await;
    listening(&b, port).await;
    let (arg_a, arg_b) = (
        format!("half-close localhost:{port} from-a"),
        format!("half-close localhost:{port} from-b"),
    );
    let (ca, cb) = tokio::join!(run(&a, "client", &arg_a), run(&b, "client", &arg_b));
    assert_eq!(ca, (0, "got: from-a\n".to_string()));
    assert_eq!(cb, (0, "got: from-b\n".to_string()));
    assert_eq!(sa.await.unwrap().0, 0);
    assert_eq!(sb.await.unwrap().0, 0);
    drop(host);
}

/// The server container exits while a client waits on a read: the client notices, and the
/// restarted server can bind the same port again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_exit_closes_clients_and_port_is_reusable() {
    let pod = PodNetwork::new();
    // The server accepts one connection and exits once a host-side "go" connection arrives
    // on a second port, so the client is connected and blocked on its read by then.
    let p2 = pod.clone();
    let server = tokio::spawn(async move {
        run(
            &p2,
            "server",
            "listen 127.0.0.1:7100 && accept-hold && listen 127.0.0.1:7101 && echo 1",
        )
        .await
    });
    listening(&pod, 7100).await;
    let p3 = pod.clone();
    let client = tokio::spawn(async move { run(&p3, "client", "read-until-closed 127.0.0.1:7100").await });
    listening(&pod, 7101).await; // the server has accepted the client by now
    let go = pod.connect(7101).unwrap();
    drop(go); // FIN: the server's echo loop ends and it exits
    let (code, out) = server.await.unwrap();
    assert_eq!(code, 0, "{out}");
    let (code, out) = client.await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "connected\nclosed: eof\n");
    let (code, out) = run(&pod, "server", "listen 127.0.0.1:7100").await;
    assert_eq!((code, out.as_str()), (0, "listening 7100\n"));
}

/// UDP between two containers; the server also holds TCP 5300 (separate namespaces) and signals
/// readiness by listening on TCP 5301.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_between_containers() {
    let pod = PodNetwork::new();
    let p2 = pod.clone();
    let server = tokio::spawn(async move {
        run(
            &p2,
            "server",
            "udp-bind 127.0.0.1:5300 && listen 127.0.0.1:5300 && listen 127.0.0.1:5301 && udp-echo 2",
        )
        .await
    });
    listening(&pod, 5301).await;
    let (code, out) = run(
        &pod,
        "client",
        "udp-send server:5300 hello udp && udp-send [::1]:5300 v6",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "udp reply: hello udp\nudp reply: v6\n"));
    let (code, out) = server.await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("udp echoed hello udp\nudp echoed v6\n"), "{out}");
}

// ---- fidelity with wasmtime's host sockets (issue 12, part 1) ---------------------------------

/// A client that shuts its read side down (but keeps the socket) does not break the server's
/// writes: on Linux and on wasmtime they succeed and the bytes are discarded. 1 MiB is four
/// times a pipe, so the server would block forever if the bytes were kept, and failed on the
/// old code (`write: Broken pipe`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_read_side_keeps_the_peer_writing() {
    let pod = PodNetwork::new();
    let gate = pod.listen_host(7301, 1).unwrap();
    let p2 = pod.clone();
    let server =
        tokio::spawn(async move { run(&p2, "server", "listen 127.0.0.1:7300 && write-after-peer-shut 1048576").await });
    listening(&pod, 7300).await;
    let p3 = pod.clone();
    let client = tokio::spawn(async move {
        run(
            &p3,
            "client",
            "shut-read 127.0.0.1:7300 && read-until-closed 127.0.0.1:7301",
        )
        .await
    });
    let (code, out) = server.await.unwrap();
    assert_eq!((code, out.as_str()), (0, "listening 7300\nwrote 1048576\n"));
    // The client holds its socket until the gate closes; only then does it exit.
    let held = tokio::time::timeout(DEADLINE, gate.accept()).await.unwrap().unwrap();
    drop(held);
    let (code, out) = client.await.unwrap();
    assert_eq!(
        (code, out.as_str()),
        (0, "read after shutdown: 0\nconnected\nclosed: eof\n")
    );
    assert_eq!(pod.buffered_bytes(), 0, "discarded bytes are not kept or charged");
}

/// `getsockname` on a wildcard-bound UDP socket names the loopback once it is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_wildcard_reports_loopback_once_connected() {
    let pod = PodNetwork::new();
    let (code, out) = run(&pod, "c", "udp-local 127.0.0.1:9 && udp-local [::1]:9").await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (before, after, any, lo) in [
        (lines[0], lines[1], "0.0.0.0:", "127.0.0.1:"),
        (lines[2], lines[3], "[::]:", "[::1]:"),
    ] {
        let port = before
            .strip_prefix("before: ")
            .and_then(|a| a.strip_prefix(any))
            .expect(&out);
        assert_eq!(after, format!("connected: {lo}{port}"), "{out}");
    }
}

/// A connected UDP socket that sends to a port nobody bound learns it from its next receive
/// (ICMP port unreachable on Linux); an unconnected one is told nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_connected_send_to_nobody_is_refused() {
    let pod = PodNetwork::new();
    let (code, out) = run(
        &pod,
        "c",
        "udp-refused 127.0.0.1:4999 && udp-unconnected 127.0.0.1:4999",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "recv: error ConnectionRefused\nrecv: error WouldBlock\n");
}

/// Non-ASCII names are converted with IDNA (as wasmtime does), not rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_converts_non_ascii_names_with_idna() {
    let pod = PodNetwork::new();
    pod.register_name("xn--bcher-kva");
    pod.register_name("db");
    let (code, out) = run(&pod, "c", "lookup bücher && lookup ＤＢ && lookup bücher.test").await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["addr: 127.0.0.1", "addr: 127.0.0.1"], "{out}");
    // Outside the pod and not allowed: refused by the policy, not an invalid name.
    assert!(lines[2].starts_with("lookup failed"), "{out}");
}
