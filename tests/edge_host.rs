//! The edge host end to end: the API with a real HTTP client, routing by `Host` through the
//! shared entrance to the real hello-http guest, updates, refusals that leave the running pod
//! alone, restarts of the host on the same state directory (in-process, and the CLI binary
//! killed with SIGKILL), and delete.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use wasmpod::host::client::{Client, HostAddr};
use wasmpod::host::serve::{ApiListen, Serving, serve};
use wasmpod::host::{Host, HostConfig, HostLimits};
use wasmpod::proxy::ProxyLimits;
use wasmtime_wasi_http::io::TokioIo;

use common::{DEADLINE, engine, guest};

const TOKEN: &str = "test-token-123";

/// A spec for the hello-http guest exposed on 8080, with `extra` appended to its container.
fn hello_spec(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"name = "hello"

[expose]
port = 8080
hostnames = ["hello.example.com"]

[[containers]]
name = "web"
component = "{}"
ports = [8080]
{extra}
"#,
        guest("hello_http").display()
    );
    let path = dir.join("wasmpod.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Shuts a host down (draining every pod), failing with the pods' statuses instead of hanging
/// when a pod does not stop.
async fn shut_down(serving: Serving) {
    let pods = serving.host().pods();
    let grace = pods
        .iter()
        .map(|pod| pod.spec().termination_grace_period)
        .max()
        .unwrap_or_default();
    let stopped = tokio::time::timeout(grace + DEADLINE, serving.shutdown()).await;
    let statuses: Vec<String> = pods.iter().map(|pod| format!("{:?}", pod.status())).collect();
    stopped
        .unwrap_or_else(|_| panic!("the host did not shut down; its pods: {statuses:#?}"))
        .unwrap();
}

async fn start_host(state: &Path) -> Serving {
    let config = HostConfig {
        state_dir: state.to_path_buf(),
        limits: HostLimits::default(),
        engine: Some(engine()),
        ..HostConfig::default()
    };
    let host = Host::open(config).await.expect("host opens");
    assert!(host.load_problems().is_empty(), "{:?}", host.load_problems());
    let api = ApiListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
    };
    serve(host, api, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("listeners open")
}

fn api_client(serving: &Serving) -> Client {
    let addr = serving.api_addr.expect("api on tcp");
    Client::new(HostAddr::Tcp(addr.to_string()), Some(TOKEN.into()))
}

/// One HTTP/1.1 request to `addr` with the given `Host` header.
async fn send(addr: SocketAddr, method: Method, host: &str, path: &str, body: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    send(addr, Method::GET, host, path, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_route_update_refuse_restart_delete() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let serving = start_host(state.path()).await;
    let http = serving.http_addr.unwrap();
    let api = serving.api_addr.unwrap();
    let client = api_client(&serving);

    // Without the token the API refuses.
    let anonymous = Client::new(HostAddr::Tcp(api.to_string()), None);
    let (status, _) = anonymous.request(Method::GET, "/v1/pods", Bytes::new()).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Create, then route by NAME.localhost (any port) and by a declared hostname.
    let spec = hello_spec(work.path(), "");
    assert_eq!(client.apply(&spec).await.unwrap(), "created");
    let (status, body) = get(http, "hello.localhost:9999", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from wasmpod\n"));
    let (status, _) = get(http, "HELLO.example.com", "/").await;
    assert_eq!(status, StatusCode::OK);

    // The same spec again changes nothing; a changed one replaces the pod.
    assert_eq!(client.apply(&spec).await.unwrap(), "unchanged");
    let spec = hello_spec(work.path(), "env = { GREETING = \"v2\" }");
    assert_eq!(client.apply(&spec).await.unwrap(), "updated");
    let (status, body) = get(http, "hello.localhost", "/env").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("GREETING=v2"), "{body}");

    // An unknown host is a short 404.
    let (status, body) = get(http, "nobody.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("nobody.localhost"), "{body}");

    // A spec that does not validate is refused with its located error; the pod keeps serving.
    let bad = "name = \"hello\"\n\n[[containers]]\nname = \"web\"\ncomponent = \"sha256:00\"\nports = [70000]\n";
    let (status, body) = client
        .request(Method::PUT, "/v1/pods/hello", Bytes::from(bad))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let problems = answer["problems"].as_array().expect("problems listed");
    assert!(problems.iter().any(|p| p["line"] == 6), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("70000"), "{answer}");

    // A blob whose bytes do not match its digest is refused; so is one that is no component.
    let zeros = format!("/v1/blobs/sha256:{}", "0".repeat(64));
    let (status, body) = client
        .request(Method::PUT, &zeros, Bytes::from_static(b"\0asm\x0d\x00\x01\x00"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");

    // A component that passes the header check but does not compile is refused at apply time;
    // the pod keeps serving.
    let broken = b"\0asm\x0d\x00\x01\x00garbage".to_vec();
    let hex = wasmpod::host::store::sha256_hex(&broken);
    let (status, body) = client
        .request(Method::PUT, &format!("/v1/blobs/sha256:{hex}"), Bytes::from(broken))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let uncompilable =
        format!("name = \"hello\"\n\n[[containers]]\nname = \"web\"\ncomponent = \"sha256:{hex}\"\nports = [8080]\n");
    let (status, body) = client
        .request(Method::PUT, "/v1/pods/hello", Bytes::from(uncompilable))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
    let (status, body) = get(http, "hello.localhost", "/env").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("GREETING=v2"), "{body}");

    // Status, logs and events through the API.
    let pods = client.call(Method::GET, "/v1/pods", Bytes::new()).await.unwrap();
    assert_eq!(pods[0]["name"], "hello", "{pods}");
    let logs = client
        .call(Method::GET, "/v1/pods/hello/logs/web?tail=1", Bytes::new())
        .await
        .unwrap();
    assert_eq!(logs.as_array().unwrap().len(), 1, "{logs}");
    assert_eq!(logs[0]["text"], "env requested", "{logs}");
    let events = client
        .call(Method::GET, "/v1/pods/hello/events", Bytes::new())
        .await
        .unwrap();
    assert!(!events.as_array().unwrap().is_empty());
    let health = client.call(Method::GET, "/v1/health", Bytes::new()).await.unwrap();
    assert_eq!(health["pods"], 1);
    let (status, metrics) = client.request(Method::GET, "/metrics", Bytes::new()).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("wasmpod_pods 1\n"), "{metrics}");
    assert!(
        metrics.contains("wasmpod_container_ready{pod=\"hello\",container=\"web\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmpod_pod_phase{pod=\"hello\",phase=\"running\"} 1\n"),
        "{metrics}"
    );

    // Following a container's output streams new lines as JSON, one per line.
    let stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/v1/pods/hello/logs/web?follow=true&tail=0")
        .header(http::header::HOST, "host")
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut followed = sender.send_request(request).await.unwrap().into_body();
    let (status, _) = get(http, "hello.localhost", "/env").await;
    assert_eq!(status, StatusCode::OK);
    let frame = tokio::time::timeout(DEADLINE, followed.frame())
        .await
        .expect("a line arrives")
        .unwrap()
        .unwrap();
    let chunk = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
    let line: serde_json::Value = serde_json::from_str(chunk.lines().next().unwrap()).unwrap();
    assert_eq!(line["text"], "env requested", "{chunk}");

    // A new host on the same state directory brings the pod back, updated spec and all.
    shut_down(serving).await;
    let serving = start_host(state.path()).await;
    let http = serving.http_addr.unwrap();
    let client = api_client(&serving);
    let (status, body) = get(http, "hello.localhost", "/env").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("GREETING=v2"), "{body}");

    // Delete: the route is gone, and stays gone after another restart.
    client.delete("hello").await.unwrap();
    let (status, _) = get(http, "hello.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let missing = client.delete("hello").await.unwrap_err().to_string();
    assert!(missing.contains("no pod"), "{missing}");
    shut_down(serving).await;
    let serving = start_host(state.path()).await;
    assert!(serving.host().pods().is_empty());
    shut_down(serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_caps_are_refused_with_their_limit() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = HostConfig {
        state_dir: state.path().to_path_buf(),
        limits: HostLimits {
            max_pods: 1,
            max_blob_bytes: 1024,
            ..HostLimits::default()
        },
        engine: Some(engine()),
        ..HostConfig::default()
    };
    let host = Host::open(config).await.unwrap();
    let api = ApiListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
    };
    let serving = serve(host, api, None).await.unwrap();
    let client = api_client(&serving);

    // The hello guest is larger than the 1 KiB cap.
    let spec = hello_spec(work.path(), "");
    let refused = client.apply(&spec).await.unwrap_err().to_string();
    assert!(refused.contains("max_blob_bytes"), "{refused}");

    let (status, body) = client
        .request(Method::PUT, "/v1/pods/Not_A_Label", Bytes::from_static(b"name = \"x\""))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("DNS label"), "{body:?}");
    shut_down(serving).await;

    // A host-wide memory cap: containers must declare memory, and the sum must fit.
    let host = Host::open(HostConfig {
        state_dir: state.path().to_path_buf(),
        limits: HostLimits {
            max_total_memory: Some(100 << 20),
            ..HostLimits::default()
        },
        engine: Some(engine()),
        ..HostConfig::default()
    })
    .await
    .unwrap();
    let api = ApiListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
    };
    let serving = serve(host, api, None).await.unwrap();
    let client = api_client(&serving);
    let refused = client
        .apply(&hello_spec(work.path(), ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("resources.memory") && refused.contains("max_total_memory"),
        "{refused}"
    );
    let big = hello_spec(work.path(), "resources = { memory = \"200MiB\" }");
    let refused = client.apply(&big).await.unwrap_err().to_string();
    assert!(refused.contains("past the host's max_total_memory"), "{refused}");
    let fits = hello_spec(work.path(), "resources = { memory = \"64MiB\" }");
    assert_eq!(client.apply(&fits).await.unwrap(), "created");
    assert_eq!(serving.host().pods().len(), 1);
    shut_down(serving).await;
}

/// A `wasmpod host` child; killed when dropped.
struct HostProcess {
    child: Child,
    http: SocketAddr,
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_host(state: &Path, socket: &Path) -> HostProcess {
    let command = Command::new(env!("CARGO_BIN_EXE_wasmpod"));
    spawn_host_with(state, command, &["--socket".as_ref(), socket.as_os_str()])
}

/// `command` (`wasmpod`, with its environment) running `host` on `state` with `extra` options.
fn spawn_host_with(state: &Path, mut command: Command, extra: &[&std::ffi::OsStr]) -> HostProcess {
    let mut child = command
        .args(["host", "--http", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("wasmpod host starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut http = None;
    let deadline = Instant::now() + DEADLINE;
    // `lines` blocks on the child's output; the child prints `ready` once it serves, or exits.
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(addr) = line.strip_prefix("wasmpod host: http on ") {
            http = Some(addr.parse().unwrap());
        }
        if line.starts_with("wasmpod host: ready") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    HostProcess {
        child,
        http: http.expect("the host printed its http address"),
    }
}

fn cli(args: &[&str], socket: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .args(args)
        .arg("--host")
        .arg(socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_host_survives_sigkill_and_drains_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    let socket = run.join("host.sock");
    let host = spawn_host(state.path(), &socket);
    let spec = hello_spec(work.path(), "");
    let spec_arg = spec.to_str().unwrap();

    let (ok, out) = cli(&["apply", "-f", spec_arg], &socket);
    assert!(ok && out.trim() == "created", "{out}");
    let (ok, out) = cli(&["apply", "-f", spec_arg], &socket);
    assert!(ok && out.trim() == "unchanged", "{out}");
    let (status, body) = get(host.http, "hello.localhost", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from wasmpod\n"));

    // SIGKILL (Child::kill), then a new host on the same state directory serves the pod again.
    drop(host);
    let mut host = spawn_host(state.path(), &socket);
    let (status, body) = get(host.http, "hello.localhost", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from wasmpod\n"));

    // A second host on the same state directory is refused while this one holds it.
    let second = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .args(["host", "--state-dir"])
        .arg(state.path())
        .arg("--socket")
        .arg(run.join("second.sock"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    let pid = host.child.id();
    assert!(
        stderr.contains("in use by another wasmpod host") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );

    let (ok, out) = cli(&["delete", "hello"], &socket);
    assert!(ok && out.trim() == "deleted", "{out}");
    let (status, _) = get(host.http, "hello.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // SIGTERM drains and exits 0.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(host.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(exit) = host.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the host did not exit after SIGTERM");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(!socket.exists(), "the socket is removed on drain");
}

/// Asks until `ask` gives 200 or the deadline passes (a command container binds its port a
/// moment after it starts).
async fn until_ok(addr: SocketAddr, host: &str, path: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(addr, host, path).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} never answered 200: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_containers_port_is_routed_over_the_pod_network_and_torn_specs_are_reported() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let serving = start_host(state.path()).await;
    let client = api_client(&serving);
    let spec = work.path().join("web.toml");
    let text = format!(
        "name = \"web\"\ntermination_grace_period = \"100ms\"\n[expose]\nport = 8081\n\n[[containers]]\nname = \"server\"\ncomponent = \"{}\"\nargs = [\"8081\"]\nports = [8081]\n",
        guest("webserver").display()
    );
    std::fs::write(&spec, text).unwrap();
    assert_eq!(client.apply(&spec).await.unwrap(), "created");
    let body = until_ok(serving.http_addr.unwrap(), "web.localhost", "/hello").await;
    assert_eq!(body.trim(), "hello from server");
    let hello = hello_spec(work.path(), "");
    assert_eq!(client.apply(&hello).await.unwrap(), "created");
    shut_down(serving).await;

    // Tear the stored spec of `web`: the next host reports it and runs the rest.
    let stored = state.path().join("pods").join("web.toml");
    let content = std::fs::read_to_string(&stored).unwrap();
    std::fs::write(&stored, &content[..content.len() / 2]).unwrap();
    let host = Host::open(HostConfig {
        state_dir: state.path().to_path_buf(),
        limits: HostLimits::default(),
        engine: Some(engine()),
        ..HostConfig::default()
    })
    .await
    .unwrap();
    let problems = host.load_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("pod web") && problems[0].contains("torn"),
        "{problems:?}"
    );
    let names: Vec<String> = host.pods().iter().map(|pod| pod.spec().name.clone()).collect();
    assert_eq!(names, ["hello"]);
    host.drain().await.unwrap();
}

#[test]
fn digests_need_a_host_and_hostnames_are_checked_where_written() {
    let file = Path::new("/tmp/wasmpod.toml");
    let digest = format!(
        "name = \"p\"\n[[containers]]\nname = \"c\"\ncomponent = \"sha256:{}\"\n",
        "a".repeat(64)
    );
    let error = wasmpod::PodSpec::from_toml(&digest, file).unwrap_err().to_string();
    assert!(error.contains("wasmpod apply") && error.contains(":4:"), "{error}");

    let short = "name = \"p\"\n[[containers]]\nname = \"c\"\ncomponent = \"sha256:abc\"\n";
    let error = wasmpod::PodSpec::from_toml(short, file).unwrap_err().to_string();
    assert!(error.contains("64 lowercase hex digits"), "{error}");

    let hostnames = format!(
        "name = \"p\"\n[expose]\nport = 80\nhostnames = [\"ok.example.com\", \"bad_name.example\"]\n\n\
         [[containers]]\nname = \"c\"\ncomponent = \"{}\"\nports = [80]\n",
        guest("hello_http").display()
    );
    let error = wasmpod::PodSpec::from_toml(&hostnames, file).unwrap_err().to_string();
    assert!(error.contains("bad_name.example") && error.contains(":4:"), "{error}");
    assert!(!error.contains("ok.example.com"), "{error}");
}

/// `apply` of a cached pod, p50/p99 over distinct pods (run with `--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_apply_of_a_cached_pod() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let serving = start_host(state.path()).await;
    let client = api_client(&serving);
    assert_eq!(client.apply(&hello_spec(work.path(), "")).await.unwrap(), "created");
    // The spec as the host stores it (the component by digest), without the hostname, which
    // only one pod may claim.
    let component = guest("hello_http");
    let digest = wasmpod::host::store::sha256_hex(&std::fs::read(&component).unwrap());
    let spec = std::fs::read_to_string(hello_spec(work.path(), "")).unwrap();
    let text: String = spec
        .replace(&component.display().to_string(), &format!("sha256:{digest}"))
        .lines()
        .filter(|line| !line.contains("hostnames"))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut times = Vec::new();
    for i in 0..200 {
        let name = format!("pod-{i}");
        let body = text.replace("name = \"hello\"", &format!("name = \"{name}\""));
        let started = Instant::now();
        let (status, _) = client
            .request(Method::PUT, &format!("/v1/pods/{name}"), Bytes::from(body))
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(status, StatusCode::CREATED);
    }
    times.sort();
    println!(
        "apply of a cached pod over the TCP API: p50 {:?}, p99 {:?}, max {:?} ({} pods)",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1],
        times.len()
    );
    shut_down(serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entrance_holds_requests_for_an_unready_pod_and_then_refuses_them() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let serving = start_host(state.path()).await;
    let client = api_client(&serving);
    // The readiness probe asks a path the guest answers 404: the pod never becomes ready.
    let spec = hello_spec(
        work.path(),
        "readiness_probe = { http_get = { port = 8080, path = \"/missing\" }, period = \"50ms\" }",
    );
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("name = \"hello\"", "name = \"hello\"\nreadiness_wait = \"200ms\"");
    std::fs::write(&spec, text).unwrap();
    assert_eq!(client.apply(&spec).await.unwrap(), "created");
    let (status, body) = get(serving.http_addr.unwrap(), "hello.localhost", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("not ready within 200ms"), "{body}");
    shut_down(serving).await;
}

/// A host with the given entrance limits, the hello pod applied, serving the shared entrance.
async fn host_with_entrance(state: &Path, work: &Path, entrance: ProxyLimits) -> Serving {
    let config = HostConfig {
        state_dir: state.to_path_buf(),
        limits: HostLimits {
            entrance,
            ..HostLimits::default()
        },
        engine: Some(engine()),
        ..HostConfig::default()
    };
    let host = Host::open(config).await.unwrap();
    let api = ApiListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
    };
    let serving = serve(host, api, Some("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let client = api_client(&serving);
    assert_eq!(client.apply(&hello_spec(work, "")).await.unwrap(), "created");
    serving
}

async fn connect_from(from: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    tokio::time::timeout(DEADLINE, socket.connect(addr))
        .await
        .expect("connected in time")
        .expect("connected")
}

/// An HTTP/1.1 keep-alive connection from `from` to the entrance.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open_from(from: &str, addr: SocketAddr) -> Sender {
    let stream = connect_from(from, addr).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// GET / for hello.localhost on `sender`: the status, or the error when the connection closed
/// (or [`NO_ANSWER`] when nothing came within the deadline, so a test fails instead of hanging).
async fn hello_on(sender: &mut Sender) -> Result<StatusCode, String> {
    let request = Request::builder()
        .uri("/")
        .header(http::header::HOST, "hello.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err(NO_ANSWER.to_string()))
}

/// What [`hello_on`] says when no answer and no close came within the deadline.
const NO_ANSWER: &str = "no answer and no close within the deadline";

/// Reads until the server closes the connection (EOF or reset); panics at the deadline.
async fn until_closed(stream: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open at the deadline"),
            Ok(Ok(0) | Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn warnings(serving: &Serving) -> Vec<String> {
    serving
        .host()
        .events()
        .all()
        .into_iter()
        .filter_map(|event| match event.kind {
            wasmpod::EventKind::Warning { message } => Some(message),
            _ => None,
        })
        .collect()
}

async fn until_warning(serving: &Serving, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !warnings(serving).iter().any(|w| w.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no warning with {needle:?}: {:?}",
            warnings(serving)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The shared entrance applies the front proxy's limits from the host's config: a slowloris
/// head is closed, an oversized head gets 431, the per-address cap closes one connection too
/// many, and at the connection cap a new client waits in the backlog until a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_entrance_applies_the_front_proxys_limits() {
    use tokio::io::AsyncWriteExt;
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let entrance = ProxyLimits {
        max_connections: 3,
        max_connections_per_address: 2,
        header_read_timeout: std::time::Duration::from_millis(200),
        max_header_bytes: 16 << 10,
        ..ProxyLimits::default()
    };
    let serving = host_with_entrance(state.path(), work.path(), entrance).await;
    let addr = serving.http_addr.unwrap();

    // Slowloris: a head that never ends is closed after the header-read timeout.
    let mut slow = connect_from("127.0.0.4", addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let answer = until_closed(&mut slow, "a slowloris head").await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "{answer:?}");

    // A head reaching max_header_bytes gets 431. Exactly that many bytes, so the server has
    // read all of them (unread bytes would make its close a reset that can eat the answer).
    let mut big = connect_from("127.0.0.5", addr).await;
    let mut head = b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nX-Big: ".to_vec();
    head.resize(16 << 10, b'a');
    big.write_all(&head).await.unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut big, "an oversized head").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // Two keep-alive connections from one address are its share; a third is closed unserved.
    let mut first = open_from("127.0.0.1", addr).await;
    assert_eq!(hello_on(&mut first).await, Ok(StatusCode::OK));
    let mut second = open_from("127.0.0.1", addr).await;
    assert_eq!(hello_on(&mut second).await, Ok(StatusCode::OK));
    let mut third = open_from("127.0.0.1", addr).await;
    let refused = hello_on(&mut third).await;
    assert!(
        refused.as_ref().is_err_and(|e| e != NO_ANSWER),
        "the per-address cap closes the third: {refused:?}"
    );
    until_warning(&serving, "shared entrance refused").await;

    // Another address takes the last of the 3 slots; a fourth client waits in the backlog
    // (its request unanswered) until one connection closes, then it is served.
    let mut other = open_from("127.0.0.2", addr).await;
    assert_eq!(hello_on(&mut other).await, Ok(StatusCode::OK));
    let mut waiting = open_from("127.0.0.3", addr).await;
    let served = tokio::spawn(async move { hello_on(&mut waiting).await });
    until_warning(&serving, "waiting in the listen backlog").await;
    assert!(!served.is_finished(), "served past the connection cap");
    drop(first);
    let status = tokio::time::timeout(DEADLINE, served).await.unwrap().unwrap();
    assert_eq!(status, Ok(StatusCode::OK));
    drop((second, other));
    shut_down(serving).await;
}

/// The entrance's keep-alive timeout closes a connection idle after its last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_entrance_closes_idle_keep_alive_connections() {
    use tokio::io::AsyncWriteExt;
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let entrance = ProxyLimits {
        keep_alive_timeout: std::time::Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let serving = host_with_entrance(state.path(), work.path(), entrance).await;
    let mut stream = connect_from("127.0.0.1", serving.http_addr.unwrap()).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
        .await
        .unwrap();
    let answer =
        String::from_utf8_lossy(&until_closed(&mut stream, "an idle keep-alive connection").await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from wasmpod\n"), "{answer}");
    shut_down(serving).await;
}

/// The hello pod named `name` with `[expose] host_port` set as written (or left out), and
/// `env` on its container.
fn host_port_spec(dir: &Path, name: &str, host_port: Option<&str>, env: &str) -> PathBuf {
    let host_port = host_port
        .map(|port| format!("host_port = {port}\n"))
        .unwrap_or_default();
    let text = format!(
        "name = \"{name}\"\n\n[expose]\nport = 8080\n{host_port}\n[[containers]]\nname = \"web\"\n\
         component = \"{}\"\nports = [8080]\nenv = {{ GREETING = \"{env}\" }}\n",
        guest("hello_http").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The `host_addr` the API reports for pod `name`.
async fn host_addr_of(client: &Client, name: &str) -> Option<SocketAddr> {
    let view = client
        .call(Method::GET, &format!("/v1/pods/{name}"), Bytes::new())
        .await
        .unwrap();
    view["host_addr"].as_str().map(|addr| addr.parse().unwrap())
}

/// Waits until nothing listens on `addr` any more.
async fn until_released(addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} is still listening");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `[expose] host_port`: a pod run by the host keeps a TCP port of its own (any `Host`
/// header), through updates; `0` picks a free port, reported as `host_addr`; a port another
/// pod holds is refused; the port is released when the spec drops it and on delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_keeps_its_own_host_port_until_it_gives_it_up() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let serving = start_host(state.path()).await;
    let client = api_client(&serving);

    let first = host_port_spec(work.path(), "first", Some("0"), "a");
    assert_eq!(client.apply(&first).await.unwrap(), "created");
    let addr = host_addr_of(&client, "first")
        .await
        .expect("a host_addr for host_port = 0");
    assert_ne!(addr.port(), 0);
    let (status, body) = get(addr, "anything.example", "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from wasmpod\n"));
    // The shared entrance still routes it too.
    let (status, _) = get(serving.http_addr.unwrap(), "first.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);
    let exposed = serving.host().pod("first").unwrap().events().all();
    assert!(
        exposed
            .iter()
            .any(|event| event.to_string().contains(&addr.to_string())),
        "{exposed:?}"
    );

    // An update keeps the listener (same port, still answering).
    let changed = host_port_spec(work.path(), "first", Some("0"), "b");
    assert_eq!(client.apply(&changed).await.unwrap(), "updated");
    assert_eq!(host_addr_of(&client, "first").await, Some(addr));
    assert_eq!(get(addr, "x", "/").await.0, StatusCode::OK);

    // Another pod may not claim that port.
    let port = addr.port().to_string();
    let second = host_port_spec(work.path(), "second", Some(&port), "a");
    let refused = client.apply(&second).await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!("host_port {port} is already claimed by pod \"first\"")),
        "{refused}"
    );
    assert!(serving.host().pod("second").is_none());

    // `first` gives the port up; then `second` gets it, and on delete it is released.
    let without = host_port_spec(work.path(), "first", None, "b");
    assert_eq!(client.apply(&without).await.unwrap(), "updated");
    assert_eq!(host_addr_of(&client, "first").await, None);
    until_released(addr).await;
    assert_eq!(client.apply(&second).await.unwrap(), "created");
    assert_eq!(host_addr_of(&client, "second").await, Some(addr));
    assert_eq!(get(addr, "x", "/").await.0, StatusCode::OK);
    client.delete("second").await.unwrap();
    until_released(addr).await;

    // Out of range: a located spec error, nothing created.
    let bad = host_port_spec(work.path(), "third", Some("70000"), "a");
    let refused = client.apply(&bad).await.unwrap_err().to_string();
    assert!(
        refused.contains("third.toml:5:") && refused.contains("host_port 70000 is out of range"),
        "{refused}"
    );
    shut_down(serving).await;
}

/// `wasmpod` in the runtime directory `runtime`, WASMPOD_HOST unset.
fn wasmpod_in(runtime: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .args(args)
        .env("WASMPOD_RUNTIME_DIR", runtime)
        .env_remove("WASMPOD_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Retries `wasmpod args` until `done` holds for its stdout, or the deadline.
fn wasmpod_until(runtime: &Path, args: &[&str], what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, out, err) = wasmpod_in(runtime, args);
        if done(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: {out}{err}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `ps`, `logs` and `events` see the pods of a host on the local socket beside the local
/// `wasmpod run` pods (a WHERE column tells them apart), or the host `--host` names; `logs`
/// and `events` follow a host pod until it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps_logs_and_events_list_and_follow_host_pods() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmpod"));
    command.env("WASMPOD_RUNTIME_DIR", runtime.path());
    let _host = spawn_host_with(state.path(), command, &[]);
    let socket = runtime.path().join("edge").join("host.sock");
    assert!(socket.exists(), "the host listens on the default socket");
    let toolbox = guest("toolbox").display().to_string();
    let talker = work.path().join("talker.toml");
    std::fs::write(
        &talker,
        format!("name = \"talker\"\ntermination_grace_period = \"100ms\"\n[[containers]]\nname = \"talk\"\ncomponent = \"{toolbox}\"\nargs = [\"serve-forever\", \"20\"]\n"),
    )
    .unwrap();
    let (ok, out) = cli(&["apply", "-f", talker.to_str().unwrap()], &socket);
    assert!(ok && out.trim() == "created", "{out}");

    // One pod in all: its table, as for a single `wasmpod run` pod.
    let table = wasmpod_until(runtime.path(), &["ps"], "ps shows the talker", |out| {
        out.starts_with("pod talker: Running")
    });
    assert!(table.contains("talk "), "{table}");

    // A local `wasmpod run` pod beside the host's: a list that says where each runs.
    let local_spec = work.path().join("local.toml");
    std::fs::write(
        &local_spec,
        format!("name = \"local\"\n[[containers]]\nname = \"idle\"\ncomponent = \"{toolbox}\"\nargs = [\"sleep\", \"600000\"]\n"),
    )
    .unwrap();
    let mut local = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .arg("run")
        .arg(&local_spec)
        .env("WASMPOD_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("local.log")).unwrap())
        .spawn()
        .unwrap();
    let local_log = work.path().join("local.log");
    let deadline = Instant::now() + DEADLINE;
    let list = loop {
        let (_, out, err) = wasmpod_in(runtime.path(), &["ps"]);
        if out.starts_with("POD") && out.lines().count() == 3 {
            break out;
        }
        let log = std::fs::read_to_string(&local_log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "ps lists both pods: {out}{err}\nlocal pod: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["POD", "PHASE", "CONTAINERS", "WHERE"], "{list}");
    assert_eq!(rows[1][0], "local", "{list}");
    assert_eq!(rows[1].last(), Some(&"run"), "{list}");
    assert_eq!(rows[2][0], "talker", "{list}");
    assert_eq!(rows[2].last(), Some(&"host"), "{list}");
    let (ok, json, _) = wasmpod_in(runtime.path(), &["ps", "--json"]);
    assert!(ok);
    let names: Vec<String> = json
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["local", "talker"], "{json}");
    // Named: the host pod by name, and --host asks the host only.
    let (ok, out, err) = wasmpod_in(runtime.path(), &["ps", "talker"]);
    assert!(ok && out.starts_with("pod talker: Running"), "{out}{err}");
    let (ok, out) = cli(&["ps"], &socket);
    assert!(ok && out.starts_with("pod talker: Running"), "{out}");
    let (ok, out) = cli(&["ps", "local"], &socket);
    assert!(!ok && out.contains("no pod \"local\""), "{out}");
    let _ = local.kill();
    let _ = local.wait();

    // Logs: the last line kept, then following.
    let out = wasmpod_until(
        runtime.path(),
        &["logs", "talker", "talk", "--tail", "2"],
        "two lines",
        |out| out.lines().count() == 2,
    );
    assert!(!out.trim().is_empty(), "{out}");
    let (ok, out, err) = wasmpod_in(runtime.path(), &["logs", "talker", "nosuch"]);
    assert!(!ok && err.contains("no container \"nosuch\""), "{out}{err}");

    // Follow logs and events until the pod is deleted: both end, having seen it go.
    let follow = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wasmpod"))
            .args(args)
            .env("WASMPOD_RUNTIME_DIR", runtime.path())
            .env_remove("WASMPOD_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut logs = follow(&["logs", "talker", "talk", "--follow", "--tail", "0"]);
    let mut events = follow(&["events", "talker", "--follow", "--json"]);
    // Lines keep coming while the pod runs.
    let mut log_lines = BufReader::new(logs.stdout.take().unwrap()).lines();
    assert!(log_lines.next().is_some_and(|l| l.is_ok()), "a followed line");
    let mut event_lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&event_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "event", "{first}");
    let (ok, out) = cli(&["delete", "talker"], &socket);
    assert!(ok, "{out}");
    let deadline = Instant::now() + DEADLINE;
    for child in [&mut logs, &mut events] {
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "a follower did not end with the pod");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(exit.success(), "{exit:?}");
    }
    let seen: Vec<String> = event_lines.map_while(Result::ok).collect();
    assert!(
        seen.iter().any(|l| l.contains("stopping") || l.contains("stopped")),
        "{seen:?}"
    );
}

/// An update that changes only `[expose] hostnames` (updated in place) moves the routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_the_hostnames_moves_the_routes() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let serving = start_host(state.path()).await;
    let client = api_client(&serving);
    let http = serving.http_addr.unwrap();
    let spec = hello_spec(work.path(), "");
    assert_eq!(client.apply(&spec).await.unwrap(), "created");
    assert_eq!(get(http, "hello.example.com", "/").await.0, StatusCode::OK);
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("hello.example.com", "hi.example.com");
    std::fs::write(&spec, text).unwrap();
    assert_eq!(client.apply(&spec).await.unwrap(), "updated");
    assert_eq!(get(http, "hi.example.com", "/").await.0, StatusCode::OK);
    assert_eq!(get(http, "hello.example.com", "/").await.0, StatusCode::NOT_FOUND);
    shut_down(serving).await;
}
