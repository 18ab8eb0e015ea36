//! The front proxy against hostile and numerous clients (issue 10 part 3, issue 16), on the real
//! hello-http guest: slowloris connections from one address do not lock out another address,
//! an unfinished request head and an idle keep-alive connection are closed after their
//! timeouts, clients over the connection limit wait in the listen backlog and are then served
//! (not reset), refusals are summed up in one event per interval, and `wasmpod run` raises the
//! open-file limit and says so. Clients bind distinct loopback addresses (Linux routes all of
//! 127/8), the proxy listens on 127.0.0.1:0, and every wait has a deadline, not a sleep.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wasmpod::proxy::ProxyLimits;
use wasmpod::spec::{ContainerSpec, Expose};
use wasmpod::{EventKind, Pod, PodOptions, RestartPolicy};

const HEAD_START: &[u8] = b"GET / HTTP/1.1\r\nHost: wasmpod\r\n";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: wasmpod\r\n\r\n";
const LAST_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: wasmpod\r\nConnection: close\r\n\r\n";
const HELLO: &str = "hello from wasmpod\n";

/// A started pod serving the hello-http guest on pod port 8080, exposed with `limits`.
async fn hello_pod(limits: ProxyLimits) -> (Pod, SocketAddr) {
    let mut spec = pod_spec("proxy-edge", RestartPolicy::Always);
    let mut hello = ContainerSpec::new("hello", guest("hello_http"));
    hello.ports = vec![8080];
    spec.containers = vec![hello];
    spec.expose = Some(Expose::new(8080));
    exposed(spec, limits).await
}

async fn exposed(spec: wasmpod::PodSpec, limits: ProxyLimits) -> (Pod, SocketAddr) {
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        proxy_limits: limits,
        ..PodOptions::default()
    };
    let pod = Pod::with_options(spec, options).expect("valid pod");
    pod.start().await.expect("the pod starts");
    let addr = pod.proxy_addr().expect("the front proxy listens");
    (pod, addr)
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    tokio::time::timeout(DEADLINE, socket.connect(addr))
        .await
        .expect("connected in time")
        .expect("connected")
}

/// Reads one HTTP/1.1 response (content-length or chunked body); returns (status line, body).
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut bytes = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(response) = parse_response(&bytes) {
            return response;
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("the connection stays up");
        assert!(read > 0, "the proxy closed the connection before the whole response");
        bytes.extend_from_slice(&chunk[..read]);
    }
}

/// One whole response at the start of `bytes`, if it is all there.
fn parse_response(bytes: &[u8]) -> Option<(String, String)> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).to_string();
    let header = |wanted: &str| {
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim().to_string())
        })
    };
    let status = head.lines().next().unwrap_or_default().to_string();
    let mut rest = &bytes[end + 4..];
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().expect("a numeric content-length");
        let body = rest.get(..length)?;
        return Some((status, String::from_utf8_lossy(body).to_string()));
    }
    assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"), "{head}");
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
        let chunk = rest.get(line_end + 2..line_end + 2 + size + 2)?;
        if size == 0 {
            return Some((status, String::from_utf8_lossy(&body).to_string()));
        }
        body.extend_from_slice(&chunk[..size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// A whole GET from `from` on a new connection; returns the connection for reuse.
async fn get_from(from: &str, addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(from, addr).await;
    stream.write_all(REQUEST).await.unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, HELLO);
    stream
}

/// Waits until the proxy closes `stream` (end of stream or reset), ignoring what it sends.
async fn closed_by_proxy(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => panic!("the proxy kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

fn warnings(pod: &Pod) -> Vec<String> {
    pod.events()
        .all()
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::Warning { message } => Some(message),
            _ => None,
        })
        .collect()
}

/// Connections the proxy's events account for: one per first report that contains `first`,
/// plus the counts of the summaries that start with `summary` ("... 2,913 connections ...").
fn counted(pod: &Pod, first: &str, summary: &str) -> u64 {
    warnings(pod)
        .iter()
        .map(|message| {
            if message.contains(first) {
                1
            } else if let Some(rest) = message.strip_prefix(summary) {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.replace(',', "").parse().ok())
                    .unwrap_or(0)
            } else {
                0
            }
        })
        .sum()
}

async fn wait_for(pod: &Pod, what: &str, mut condition: impl FnMut(&Pod) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition(pod) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; warnings: {:#?}",
            warnings(pod)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 10.3: 2,000 slowloris connections from one address used to take every slot; now that
/// address gets its per-address share (default limits) and the rest are refused and counted,
/// while a client from another address is served.
#[tokio::test]
async fn slowloris_from_one_address_leaves_room_for_another_address() {
    let limits = ProxyLimits {
        // Long, so no slow head is let go during the test: the cap alone must hold.
        header_read_timeout: Duration::from_secs(600),
        ..ProxyLimits::default()
    };
    let cap = limits.max_connections_per_address;
    let (pod, addr) = hello_pod(limits).await;
    let slow_count = 2000;
    let mut slow = Vec::with_capacity(slow_count);
    for _ in 0..slow_count {
        let mut stream = connect_from("127.0.0.2", addr).await;
        // Refused ones may already be reset: only the bytes sent matter, not the result.
        let _ = stream.write_all(HEAD_START).await;
        slow.push(stream);
    }
    let refused = (slow_count - cap) as u64;
    wait_for(&pod, "every refusal counted", |pod| {
        counted(pod, "connections already open from 127.0.0.2", "front proxy refused ") == refused
    })
    .await;
    // The summaries count, rather than list, the refusals.
    assert!(warnings(&pod).len() < 20, "{:#?}", warnings(&pod));
    // Another address is served at once; the same address is refused.
    get_from("127.0.0.3", addr).await;
    let mut again = connect_from("127.0.0.2", addr).await;
    let _ = again.write_all(REQUEST).await;
    closed_by_proxy(&mut again).await;
    drop(slow);
    // With the slow connections gone the address is welcome again.
    wait_for_served("127.0.0.2", addr).await;
    pod.stop().await;
}

/// Retries a GET from `from` until one is answered (slots come back as closes are seen).
async fn wait_for_served(from: &str, addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = connect_from(from, addr).await;
        let _ = stream.write_all(LAST_REQUEST).await;
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes)).await;
        if bytes.starts_with(b"HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "{from} was never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The per-address cap holds on the plain-TCP path (pod port target) too.
#[tokio::test]
async fn the_per_address_cap_also_holds_for_a_plain_tcp_port() {
    let mut spec = pod_spec("proxy-tcp", RestartPolicy::Always);
    let mut web = ContainerSpec::new("web", guest("webserver"));
    web.args = vec!["8080".into()];
    web.ports = vec![8080];
    spec.containers = vec![web];
    spec.expose = Some(Expose::new(8080));
    let limits = ProxyLimits {
        max_connections_per_address: 4,
        ..ProxyLimits::default()
    };
    let (pod, addr) = exposed(spec, limits).await;
    // A connection that arrives before the server listens is closed for that reason instead.
    wait_for(&pod, "the web server to listen", |pod| pod.network().is_listening(8080)).await;
    let mut open = Vec::new();
    for _ in 0..6 {
        let mut stream = connect_from("127.0.0.4", addr).await;
        let _ = stream.write_all(HEAD_START).await;
        open.push(stream);
    }
    wait_for(&pod, "two refusals counted", |pod| {
        counted(pod, "4 connections already open from 127.0.0.4", "front proxy refused ") == 2
    })
    .await;
    drop(open);
    pod.stop().await;
}

/// An unfinished request head is closed after the header-read timeout; whole requests on new
/// connections are still served.
#[tokio::test]
async fn an_unfinished_request_head_is_closed_after_the_header_read_timeout() {
    let limits = ProxyLimits {
        header_read_timeout: Duration::from_millis(300),
        keep_alive_timeout: Duration::from_secs(600),
        ..ProxyLimits::default()
    };
    let (pod, addr) = hello_pod(limits).await;
    let mut slow = connect_from("127.0.0.5", addr).await;
    slow.write_all(HEAD_START).await.unwrap();
    closed_by_proxy(&mut slow).await;
    get_from("127.0.0.5", addr).await;
    pod.stop().await;
}

/// A client that connects and never sends a byte is closed after the keep-alive timeout.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_keep_alive_timeout() {
    let limits = ProxyLimits {
        header_read_timeout: Duration::from_secs(600),
        keep_alive_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let (pod, addr) = hello_pod(limits).await;
    let mut silent = connect_from("127.0.0.8", addr).await;
    closed_by_proxy(&mut silent).await;
    get_from("127.0.0.8", addr).await;
    pod.stop().await;
}

/// A keep-alive connection that sends no next request is closed after the keep-alive timeout;
/// pipelined requests are each answered, in order.
#[tokio::test]
async fn keep_alive_and_pipelining_work_and_an_idle_connection_is_closed() {
    let limits = ProxyLimits {
        header_read_timeout: Duration::from_secs(600),
        keep_alive_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let (pod, addr) = hello_pod(limits).await;
    let mut stream = get_from("127.0.0.6", addr).await;
    // Two requests in one write: two answers on the same connection.
    stream.write_all(&[REQUEST, REQUEST].concat()).await.unwrap();
    let mut both = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while both.windows(HELLO.len()).filter(|w| *w == HELLO.as_bytes()).count() < 2 {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .expect("both answers in time")
            .unwrap();
        assert!(read > 0, "closed before the second answer");
        both.extend_from_slice(&chunk[..read]);
    }
    assert_eq!(find(&both, b"HTTP/1.1 200 OK"), Some(0));
    // Then nothing: the idle connection is closed.
    closed_by_proxy(&mut stream).await;
    pod.stop().await;
}

/// Issue 16: over the connection limit the proxy stops accepting; a client waits in the
/// listen backlog and is served, not reset, once another connection closes. The wait is
/// reported once and the held-back client counted.
#[tokio::test]
async fn over_the_limit_clients_wait_in_the_backlog_and_are_then_served() {
    let limits = ProxyLimits {
        max_connections: 2,
        ..ProxyLimits::default()
    };
    let (pod, addr) = hello_pod(limits).await;
    let first = get_from("127.0.0.7", addr).await;
    let _second = get_from("127.0.0.7", addr).await;
    let mut waiting = connect_from("127.0.0.7", addr).await;
    waiting.write_all(REQUEST).await.unwrap();
    wait_for(&pod, "the report of a client in the backlog", |pod| {
        warnings(pod)
            .iter()
            .any(|w| w.contains("at its limit of 2 open connections: 1 new client waiting in the listen backlog"))
    })
    .await;
    drop(first);
    let (status, body) = read_response(&mut waiting).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, HELLO);
    wait_for(&pod, "the held-back client counted", |pod| {
        counted(pod, "waited in the listen backlog", "front proxy held back ") == 1
    })
    .await;
    pod.stop().await;
}

/// `wasmpod run` raises the open-file soft limit to the hard limit, says so, and warns when the
/// hard limit is below the front proxy's connection limit.
#[test]
fn run_raises_the_open_file_limit_and_warns_when_it_is_too_low() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("wasmpod.toml");
    std::fs::write(
        &spec,
        format!(
            r#"name = "file-limit"
restart_policy = "never"
[expose]
port = 8080
[[containers]]
name = "app"
component = "{}"
args = ["print", "done"]
ports = [8080]
"#,
            guest("toolbox").display()
        ),
    )
    .unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 1024 && ulimit -Hn 4096 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_wasmpod"))
        .args(["run", "--no-color", "--listen", "127.0.0.1:0"])
        .arg(&spec)
        .env("WASMPOD_RUNTIME_DIR", dir.path().join("run"))
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wasmpod runs");
    let output = wait_output(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("raised the open-file limit from 1024 to 4096 (the hard limit)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: the open-file limit (4096, hard limit 4096) is below the front proxy's connection limit (16384)"
        ),
        "{stderr}"
    );
}

/// The child's output once it exits, killing it at the deadline.
fn wait_output(mut child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}
