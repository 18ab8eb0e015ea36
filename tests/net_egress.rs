//! Egress under real guests: `guests/netcheck` (plain Rust `std::net`) tries to leave its pod
//! for a server this test runs on the host's loopback, with and without
//! `allowed_outbound_hosts` rules, and the denial hook reports what was refused.
//!
//! Parallel-safe: every host server binds `127.0.0.1:0`, every test has its own pods, waits are
//! on conditions (a container listening, a server task's result) with deadlines, and no traffic
//! leaves the loopback interface.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wasmpod::net::{Denied, DeniedHook, DeniedKind, PodNetwork};

mod netcheck;
use netcheck::DEADLINE;

/// Denial reports as the pod would receive them.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<Denied>>>);

impl Reports {
    fn hook(&self) -> DeniedHook {
        let seen = self.0.clone();
        Arc::new(move |d| seen.lock().unwrap_or_else(|p| p.into_inner()).push(d))
    }

    fn take(&self) -> Vec<(String, String, DeniedKind)> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .map(|d| (d.container, d.destination, d.kind))
            .collect()
    }
}

/// Runs `netcheck` with `args` as container `name` of `pod`, with `rules` as its
/// `allowed_outbound_hosts`; returns (exit code, stdout).
async fn run(pod: &Arc<PodNetwork>, name: &str, rules: &[String], reports: &Reports, args: &str) -> (i32, String) {
    netcheck::run_with_egress(pod, name, rules, reports.hook(), args).await
}

/// A host server on an ephemeral loopback port: for each of `conns` connections it reads to
/// end-of-stream, answers `host: ` + what it read, and half-closes. Returns the port and a task
/// yielding what each connection sent.
async fn host_server(conns: usize) -> (u16, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind host");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut data = Vec::new();
            s.read_to_end(&mut data).await.expect("read");
            s.write_all(b"host: ").await.expect("write");
            s.write_all(&data).await.expect("write");
            s.shutdown().await.expect("shutdown");
            got.push(data);
        }
        got
    });
    (port, task)
}

/// A host echo server for `conns` connections (copy until end-of-stream, then half-close).
async fn host_echo(conns: usize) -> (u16, tokio::task::JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind host");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut total = 0;
        for _ in 0..conns {
            let (s, _) = listener.accept().await.expect("accept");
            let (mut r, mut w) = s.into_split();
            total += tokio::io::copy(&mut r, &mut w).await.expect("echo");
            w.shutdown().await.expect("shutdown");
        }
        total
    });
    (port, task)
}

/// True if a connection is waiting on `listener` (a connect the guest saw succeed would be).
fn has_pending_connection(listener: &std::net::TcpListener) -> bool {
    listener.set_nonblocking(true).expect("nonblocking");
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

fn rules(list: &[String]) -> Vec<String> {
    list.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_loopback_is_unreachable_by_default_and_denials_are_reported() {
    let host = std::net::TcpListener::bind("127.0.0.1:0").expect("bind host");
    let port = host.local_addr().expect("addr").port();
    let pod = PodNetwork::new();
    let reports = Reports::default();
    let script = format!(
        "try-connect 127.0.0.1:{port} && try-connect host.wasmpod.internal:{port} \
         && lookup host.wasmpod.internal && try-connect 169.254.77.1:{port} \
         && try-connect 10.9.8.7:{port}"
    );
    let (code, out) = run(&pod, "app", &[], &reports, &script).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    // 127.0.0.1 is the pod, where nothing listens: the host's server is not reached.
    assert_eq!(lines[0], "connect failed: ConnectionRefused", "{out}");
    // The name does not resolve without a rule...
    assert!(lines[1].starts_with("connect failed:"), "{out}");
    assert!(lines[2].starts_with("lookup failed:"), "{out}");
    // ...and its address is refused by the policy, as is any other address outside the pod.
    assert_eq!(lines[3], "connect failed: PermissionDenied", "{out}");
    assert_eq!(lines[4], "connect failed: PermissionDenied", "{out}");
    assert!(!has_pending_connection(&host), "the host server was reached");
    let app = || "app".to_string();
    assert_eq!(
        reports.take(),
        [
            (app(), "host.wasmpod.internal".into(), DeniedKind::Lookup),
            (app(), "host.wasmpod.internal".into(), DeniedKind::Lookup),
            (app(), format!("host.wasmpod.internal:{port}"), DeniedKind::Connect),
            (app(), format!("10.9.8.7:{port}"), DeniedKind::Connect),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_host_loopback_exchanges_data_both_ways_with_half_close() {
    let (port, server) = host_server(2).await;
    let (echo_port, echo) = host_echo(1).await;
    let (closed_port, other) = {
        // A port that was free a moment ago and is allowed, to see a real refusal; and a port
        // where a server runs but that no rule allows.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        (p, other)
    };
    let other_port = other.local_addr().expect("addr").port();
    let pod = PodNetwork::new();
    let reports = Reports::default();
    let allowed = rules(&[
        format!("host.wasmpod.internal:{port}"),
        format!("host.wasmpod.internal:{echo_port}"),
        format!("host.wasmpod.internal:{closed_port}"),
    ]);
    let script = format!(
        "lookup host.wasmpod.internal && half-close host.wasmpod.internal:{port} hello host \
         && addrs host.wasmpod.internal:{port} \
         && send host.wasmpod.internal:{echo_port} 1048576 \
         && try-connect host.wasmpod.internal:{closed_port} \
         && try-connect host.wasmpod.internal:{other_port}"
    );
    let (code, out) = run(&pod, "app", &allowed, &reports, &script).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "addr: 169.254.77.1", "{out}");
    assert_eq!(lines[1], "got: host: hello host", "{out}");
    assert!(lines[2].starts_with("local: "), "{out}");
    assert_eq!(lines[3], format!("peer: 169.254.77.1:{port}"), "{out}");
    assert!(lines[4].starts_with("sent 1048576 echoed 1048576"), "{out}");
    assert_eq!(lines[5], "connect failed: ConnectionRefused", "{out}");
    assert_eq!(lines[6], "connect failed: PermissionDenied", "{out}");
    let got = tokio::time::timeout(DEADLINE, server)
        .await
        .expect("server deadline")
        .expect("server");
    // The host saw the guest's half-close (end-of-stream after exactly the bytes sent).
    assert_eq!(got, [b"hello host".to_vec(), Vec::new()]);
    let echoed = tokio::time::timeout(DEADLINE, echo)
        .await
        .expect("echo deadline")
        .expect("echo");
    assert_eq!(echoed, 1048576);
    assert!(!has_pending_connection(&other));
    assert_eq!(
        reports.take(),
        [(
            "app".to_string(),
            format!("host.wasmpod.internal:{other_port}"),
            DeniedKind::Connect
        )]
    );
}

/// `127.0.0.1:PORT` inside a pod is the pod even when the host has a server on that port and
/// the container may reach the host's port through `host.wasmpod.internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_loopback_stays_the_pod_when_the_host_listens_on_the_same_port() {
    let (port, host) = host_server(1).await;
    let pod = PodNetwork::new();
    let reports = Reports::default();
    let p2 = pod.clone();
    let r2 = reports.clone();
    let listen = format!("listen 127.0.0.1:{port} && echo 1");
    let server = tokio::spawn(async move { run(&p2, "server", &[], &r2, &listen).await });
    tokio::time::timeout(DEADLINE, pod.wait_listening(port))
        .await
        .expect("pod server listening");
    let allowed = rules(&[format!("host.wasmpod.internal:{port}")]);
    let script =
        format!("half-close 127.0.0.1:{port} to the pod && half-close host.wasmpod.internal:{port} to the host");
    let (code, out) = run(&pod, "client", &allowed, &reports, &script).await;
    assert_eq!((code, out.as_str()), (0, "got: to the pod\ngot: host: to the host\n"));
    let (code, out) = server.await.expect("server task");
    assert_eq!(
        (code, out.as_str()),
        (0, format!("listening {port}\nechoed 10\n").as_str())
    );
    let got = tokio::time::timeout(DEADLINE, host)
        .await
        .expect("host deadline")
        .expect("host");
    assert_eq!(got, [b"to the host".to_vec()]);
    assert!(reports.take().is_empty());
}

/// A wildcard rule covers `host.wasmpod.internal` as it covers any name below its suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_rule_reaches_the_host() {
    let (port, host) = host_server(1).await;
    let pod = PodNetwork::new();
    let reports = Reports::default();
    let allowed = rules(&["*.wasmpod.internal:*".to_string()]);
    let script = format!("half-close host.wasmpod.internal:{port} wild");
    let (code, out) = run(&pod, "app", &allowed, &reports, &script).await;
    assert_eq!((code, out.as_str()), (0, "got: host: wild\n"));
    let got = tokio::time::timeout(DEADLINE, host)
        .await
        .expect("host deadline")
        .expect("host");
    assert_eq!(got, [b"wild".to_vec()]);
}

/// The host side's end-of-stream and reset both reach the guest: a clean close reads as
/// end-of-stream, an abortive close (RST) as a read error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_close_and_reset_reach_the_guest() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind host");
    let port = listener.local_addr().expect("addr").port();
    let host = tokio::spawn(async move {
        // First connection: a greeting, then a clean close.
        let (mut s, _) = listener.accept().await.expect("accept");
        s.write_all(b"bye").await.expect("write");
        drop(s);
        // Second: an abortive close, once the guest's bytes show its side is connected (an
        // RST racing the connect would fail the connect instead, which is not under test).
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ready");
        s.set_zero_linger().expect("linger");
        drop(s);
    });
    let pod = PodNetwork::new();
    let reports = Reports::default();
    let allowed = rules(&[format!("host.wasmpod.internal:{port}")]);
    let script = format!(
        "read-until-closed host.wasmpod.internal:{port} && read-until-closed host.wasmpod.internal:{port} ready"
    );
    let (code, out) = run(&pod, "app", &allowed, &reports, &script).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["connected", "closed: eof", "connected"], "{out}");
    // The reset reaches the guest as a failed read, not an end-of-stream. (wasi-libc turns a
    // failed stream read into an errno without asking for its `error-code`, so std shows
    // `Uncategorized` rather than `ConnectionReset`, as for a reset inside the pod.)
    assert!(lines[3].starts_with("closed: error "), "{out}");
    tokio::time::timeout(DEADLINE, host)
        .await
        .expect("host deadline")
        .expect("host");
}
