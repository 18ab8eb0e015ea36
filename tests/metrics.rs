//! Per-container metrics on real guests: an edge host's `GET /metrics` parsed as Prometheus
//! text and checked against what the test did (requests by status, the latency histogram,
//! network bytes, egress denials, memory, guest time), and the library's
//! `Pod::container_metrics` across a hot swap and a restart, with egress bytes.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use wasmpod::host::client::{Client, HostAddr};
use wasmpod::host::serve::{ApiListen, serve};
use wasmpod::host::{Host, HostConfig, HostLimits};
use wasmpod::testing::TestPod;
use wasmtime_wasi_http::io::TokioIo;

use common::{DEADLINE, engine, guest};

const TOKEN: &str = "metrics-token";

// ---- a small Prometheus text-format (0.0.4) parser, strict enough to catch malformed output --

/// One sample: metric name and labels.
type Key = (String, BTreeMap<String, String>);

/// The samples of an exposition, and each family's declared type.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: HashMap<Key, f64>,
}

impl Exposition {
    /// Parses `text`; panics with the line at fault on anything that is not the format.
    fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        let mut helped = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", number + 1) };
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap_or_else(|| fail("HELP without text"));
                check_name(name).unwrap_or_else(|e| fail(&e));
                assert!(
                    helped.insert(name.to_string(), ()).is_none(),
                    "line {}: a second HELP",
                    number + 1
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| fail("TYPE without a type"));
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    fail("unknown type");
                }
                if exposition.types.insert(name.to_string(), kind.to_string()).is_some() {
                    fail("a second TYPE for one family");
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (key, value) = parse_sample(line).unwrap_or_else(|e| fail(&e));
            let family = exposition
                .family_of(&key.0)
                .unwrap_or_else(|| fail("a sample of no declared family"));
            if exposition.types[&family] == "histogram" && key.0.ends_with("_bucket") && !key.1.contains_key("le") {
                fail("a bucket without `le`");
            }
            if exposition.samples.insert(key, value).is_some() {
                fail("a duplicate sample");
            }
        }
        exposition
    }

    /// The declared family a sample name belongs to (histograms add suffixes).
    fn family_of(&self, name: &str) -> Option<String> {
        if self.types.contains_key(name) {
            return Some(name.to_string());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base).map(String::as_str) == Some("histogram")).then(|| base.to_string())
        })
    }

    /// The value of one sample, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    /// Like [`Exposition::get`], failing with the whole exposition when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)], text: &str) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

/// `name{a="x",b="y"} value`.
fn parse_sample(line: &str) -> Result<(Key, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let bytes = line.as_bytes();
    let mut i = name_end;
    let mut labels = BTreeMap::new();
    if bytes[i] == b'{' {
        i += 1;
        while bytes.get(i) != Some(&b'}') {
            let eq = line[i..].find("=\"").ok_or("label without =\"")? + i;
            let key = &line[i..eq];
            check_name(key)?;
            i = eq + 2;
            let mut value = String::new();
            loop {
                match bytes.get(i) {
                    None => return Err("unterminated label value".into()),
                    Some(b'\\') => {
                        match bytes.get(i + 1) {
                            Some(b'n') => value.push('\n'),
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            _ => return Err("bad escape".into()),
                        }
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => {
                        let c = line[i..].chars().next().ok_or("bad utf-8")?;
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            i += 1; // the closing quote
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("labels not separated by commas".into()),
            }
        }
        i += 1; // the closing brace
    }
    let value = line[i..].strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    Ok(((name.to_string(), labels), value))
}

// ---- helpers --------------------------------------------------------------------------------

/// Waits for `condition`, checking every 10 ms, failing at the deadline with `what`.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One GET to the host's shared entrance with the given `Host` header.
async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A pod of the hello-http guest (64 MiB) and a netcheck echo server on pod port 7000 (16 MiB).
fn shop_spec(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"name = "shop"

[expose]
port = 8080

[[containers]]
name = "web"
component = "{web}"
ports = [8080]
resources = {{ memory = "64MiB" }}

[[containers]]
name = "echo"
component = "{netcheck}"
args = ["listen", "0.0.0.0:7000", "&&", "echo", "1000"]
resources = {{ memory = "16MiB" }}
"#,
        web = guest("hello_http").display(),
        netcheck = guest("netcheck").display(),
    );
    let path = dir.join("wasmpod.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---- the edge host's /metrics ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_metrics_count_what_its_containers_did() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let host = Host::open(HostConfig {
        state_dir: state.path().to_path_buf(),
        limits: HostLimits::default(),
        engine: Some(engine()),
        host_port_ip: None,
    })
    .await
    .expect("host opens");
    let api = ApiListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
    };
    let serving = serve(host.clone(), api, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("listeners open");
    let entrance = serving.http_addr.unwrap();
    let client = Client::new(HostAddr::Tcp(serving.api_addr.unwrap().to_string()), Some(TOKEN.into()));
    assert_eq!(client.apply(&shop_spec(work.path())).await.unwrap(), "created");
    let pod = host.pod("shop").expect("the pod runs");
    wait_for("the echo container to listen", || pod.network().is_listening(7000)).await;

    // Requests of every kind, each status tallied by class as the client saw it.
    let paths = [
        "/",
        "/",
        "/",
        "/missing",
        "/nope",
        "/trap",
        "/alloc?mib=4",
        "/tcp?port=7000&send=hello-metrics",
        "/fetch?url=http://denied.invalid/",
    ];
    let mut by_class: BTreeMap<u16, u64> = BTreeMap::new();
    for path in paths {
        let (status, body) = get(entrance, "shop.localhost", path).await;
        if path.starts_with("/tcp") {
            assert_eq!((status, body.as_str()), (StatusCode::OK, "hello-metrics"));
        }
        *by_class.entry(status.as_u16() / 100).or_default() += 1;
    }
    assert_eq!(by_class.get(&2), Some(&5), "{by_class:?}"); // 3 × /, /alloc, /tcp
    assert_eq!(by_class.get(&4), Some(&2), "{by_class:?}");
    assert!(
        by_class.get(&5).is_some_and(|n| *n >= 1),
        "/trap answers 500: {by_class:?}"
    );

    let (status, text) = client.request(Method::GET, "/metrics", Bytes::new()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).expect("UTF-8");
    let metrics = Exposition::parse(&text);
    let web = [("pod", "shop"), ("container", "web")];
    let echo = [("pod", "shop"), ("container", "echo")];
    let with = |base: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
        let mut labels = base.to_vec();
        labels.push(extra);
        labels
    };

    // What the status already said is still there.
    assert_eq!(metrics.value("wasmpod_pods", &[], &text), 1.0);
    assert_eq!(metrics.value("wasmpod_container_ready", &web, &text), 1.0);
    assert_eq!(
        metrics.value("wasmpod_container_state", &with(&echo, ("state", "running")), &text),
        1.0
    );
    assert_eq!(metrics.value("wasmpod_container_restarts_total", &echo, &text), 0.0);

    // Requests by status class, exactly as sent; the histogram counts every one of them.
    assert_eq!(metrics.types["wasmpod_container_http_requests_total"], "counter");
    for (class, code) in [(1u16, "1xx"), (2, "2xx"), (3, "3xx"), (4, "4xx"), (5, "5xx")] {
        let counted = metrics.value(
            "wasmpod_container_http_requests_total",
            &with(&web, ("code", code)),
            &text,
        );
        assert_eq!(
            counted,
            by_class.get(&class).copied().unwrap_or(0) as f64,
            "{code}\n{text}"
        );
    }
    assert!(
        metrics
            .get("wasmpod_container_http_requests_total", &with(&echo, ("code", "2xx")))
            .is_none()
    );
    let histogram = "wasmpod_container_http_request_duration_seconds";
    assert_eq!(metrics.types[histogram], "histogram");
    let count = metrics.value(&format!("{histogram}_count"), &web, &text);
    assert_eq!(count, paths.len() as f64, "{text}");
    assert_eq!(
        metrics.value(&format!("{histogram}_bucket"), &with(&web, ("le", "+Inf")), &text),
        count
    );
    assert!(metrics.value(&format!("{histogram}_sum"), &web, &text) > 0.0);
    let mut buckets: Vec<(f64, f64)> = metrics
        .samples
        .iter()
        .filter(|((name, labels), _)| {
            name == &format!("{histogram}_bucket") && labels.get("container").map(String::as_str) == Some("web")
        })
        .map(|((_, labels), value)| (labels["le"].parse::<f64>().unwrap(), *value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "cumulative: {buckets:?}"
    );

    // The /tcp exchange went through both containers' pod sockets.
    let bytes = |name: &str, labels: &[(&'static str, &'static str)], peer: &'static str| {
        metrics.value(name, &with(labels, ("peer", peer)), &text)
    };
    let sent = "hello-metrics".len() as f64;
    assert!(
        bytes("wasmpod_container_network_transmit_bytes_total", &web, "pod") >= sent,
        "{text}"
    );
    assert!(
        bytes("wasmpod_container_network_receive_bytes_total", &web, "pod") >= sent,
        "{text}"
    );
    assert!(
        bytes("wasmpod_container_network_receive_bytes_total", &echo, "pod") >= sent,
        "{text}"
    );
    assert!(
        bytes("wasmpod_container_network_transmit_bytes_total", &echo, "pod") >= sent,
        "{text}"
    );
    assert_eq!(
        bytes("wasmpod_container_network_transmit_bytes_total", &web, "egress"),
        0.0
    );

    // The one refused fetch is one denial, of kind http.
    let denials = "wasmpod_container_egress_denials_total";
    assert_eq!(
        metrics.value(denials, &with(&web, ("kind", "http")), &text),
        1.0,
        "{text}"
    );
    assert_eq!(metrics.value(denials, &with(&web, ("kind", "connect")), &text), 0.0);
    assert_eq!(metrics.value(denials, &with(&echo, ("kind", "http")), &text), 0.0);

    // Memory: the running echo server holds some, within its limit; the limits are reported.
    let used = metrics.value("wasmpod_container_memory_usage_bytes", &echo, &text);
    let limit = metrics.value("wasmpod_container_memory_limit_bytes", &echo, &text);
    assert_eq!(limit, (16 << 20) as f64);
    assert!(used > 0.0 && used <= limit, "{used} of {limit}");
    let web_limit = metrics.value("wasmpod_container_memory_limit_bytes", &web, &text);
    assert_eq!(web_limit, (64 << 20) as f64);
    assert!(metrics.value("wasmpod_container_memory_usage_bytes", &web, &text) <= web_limit);

    // Guest time after the work (/alloc touched 4 MiB).
    assert!(
        metrics.value("wasmpod_container_cpu_seconds_total", &web, &text) > 0.0,
        "{text}"
    );
    assert!(
        metrics.value("wasmpod_container_cpu_seconds_total", &echo, &text) > 0.0,
        "{text}"
    );

    // The library reports the same counters.
    let library = pod.container_metrics();
    let web_http = library[0].http.as_ref().expect("web serves http");
    assert_eq!(web_http.total(), paths.len() as u64);
    assert_eq!(library[0].egress_denials.total(), 1);
    assert!(library[1].http.is_none());
    drop(serving);
}

// ---- the library, across a hot swap and a restart -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_outlive_a_hot_swap_and_a_restart_and_count_egress_bytes() {
    use tokio::io::AsyncWriteExt;
    // A host echo server on loopback for the pod's egress, for a bounded number of connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    // A host HTTP server on loopback for web's outgoing request: one answer, then close.
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http_listener.local_addr().unwrap().port();
    let http_server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let Ok((mut stream, _)) = http_listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            .await;
        let _ = stream.shutdown().await;
    });
    let target = format!("host.wasmpod.internal:{port}");
    let http_target = format!("host.wasmpod.internal:{http_port}");
    const BYTES: u64 = 100_000;
    let pod = TestPod::builder("counted")
        .engine(engine())
        .container("web", guest("hello_http"))
        .port(8080)
        .env("VERSION", "1")
        .allow_outbound(&http_target)
        .done()
        .container("app", guest("netcheck"))
        .args([
            "send",
            &target,
            &BYTES.to_string(),
            "&&",
            "listen",
            "0.0.0.0:7000",
            "&&",
            "accept-hold",
        ])
        .allow_outbound(&target)
        .expose(8080)
        .start()
        .await
        .expect("pod starts");
    let app = |pod: &wasmpod::Pod| {
        pod.container_metrics()
            .into_iter()
            .find(|m| m.container == "app")
            .unwrap()
    };
    let web = |pod: &wasmpod::Pod| {
        pod.container_metrics()
            .into_iter()
            .find(|m| m.container == "web")
            .unwrap()
    };

    // Egress bytes: the app's exchange with the host's echo server, both ways.
    pod.wait_for_log("app", |line| line.starts_with("sent ")).await.unwrap();
    let first = app(pod.pod());
    assert!(first.network.egress_sent >= BYTES, "{first:?}");
    assert!(first.network.egress_received >= BYTES, "{first:?}");
    assert!(first.http.is_none());

    // A restart of the app: the same counters go on from where they were.
    pod.restart("app");
    pod.wait_until("the app's second exchange is counted", |pod| {
        pod.status().container("app").is_some_and(|c| c.restart_count >= 1) && app(pod).network.egress_sent >= 2 * BYTES
    })
    .await
    .unwrap();

    // Outgoing HTTP through egress counts as web's egress bytes, on the wire.
    let fetched = pod.get(&format!("/fetch?url=http://{http_target}/")).await.unwrap();
    assert_eq!((fetched.status(), fetched.text().as_str()), (200, "ok\n"));
    let network = web(pod.pod()).network;
    assert!(network.egress_sent > 0 && network.egress_received >= 3, "{network:?}");
    assert_eq!((network.pod_sent, network.pod_received), (0, 0), "{network:?}");

    // A hot swap of web: requests before and after count together.
    for _ in 0..2 {
        assert_eq!(pod.get("/").await.unwrap().status(), 200);
    }
    let mut spec = pod.pod().current_spec();
    spec.containers[0].env.insert("VERSION".into(), "2".into());
    pod.update(spec).await.unwrap();
    assert!(pod.get("/env").await.unwrap().text().contains("VERSION=2"));
    assert_eq!(pod.get("/missing").await.unwrap().status(), 404);
    let http = web(pod.pod()).http.expect("web serves http");
    assert_eq!(
        (http.responses_in_class(2), http.responses_in_class(4)),
        (4, 1),
        "{http:?}"
    );
    assert_eq!(http.latency.count, 5);
    assert!(web(pod.pod()).guest_seconds > 0.0);
    pod.stop().await;
    echo.abort();
    http_server.abort();
}
