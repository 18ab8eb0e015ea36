//! HTTP containers through the library API, on the real `hello-http` guest: serving over TCP
//! and in-memory streams, streaming bodies both ways, traps, timeouts, limits, and outgoing
//! requests routed inside the pod (chaining, refused, denied).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{DEADLINE, engine, guest};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Channel, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use wasmpod::container::{HttpContainer, HttpLimits};
use wasmpod::route::LocalRoutes;
use wasmpod::spec::ContainerSpec;
use wasmpod::status::Events;
use wasmpod::{EventKind, Logs};
use wasmtime_wasi_http::io::TokioIo;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RequestBody = BoxBody<Bytes, BoxError>;

/// One http container of the `hello-http` guest with its pod-side logs and events.
struct Web {
    container: Arc<HttpContainer>,
    events: Events,
    logs: Logs,
}

async fn web(name: &str, limits: HttpLimits, env: &[(&str, &str)], routes: Option<Arc<LocalRoutes>>) -> Web {
    web_with(name, limits, env, routes, wasmpod::spec::Resources::default()).await
}

async fn web_with(
    name: &str,
    limits: HttpLimits,
    env: &[(&str, &str)],
    routes: Option<Arc<LocalRoutes>>,
    resources: wasmpod::spec::Resources,
) -> Web {
    let engine = engine();
    let path = guest("hello_http");
    let compiled = tokio::task::spawn_blocking({
        let engine = engine.clone();
        move || engine.compile_file(&path, "hello-http")
    })
    .await
    .expect("compile task")
    .expect("hello-http compiles");
    let mut spec = ContainerSpec::new(name, guest("hello_http"));
    spec.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    spec.resources = resources;
    let logs = Logs::new(100);
    let events = Events::new(100);
    let mut container = HttpContainer::new(
        &engine,
        &compiled.component,
        spec,
        Vec::new(),
        logs.clone(),
        events.clone(),
    )
    .expect("hello-http links as an http handler")
    .with_limits(limits);
    if let Some(routes) = routes {
        container = container.with_outgoing(routes);
    }
    Web {
        container: Arc::new(container),
        events,
        logs,
    }
}

/// Serves the container on a fresh 127.0.0.1 port, one task per connection.
async fn serve(container: &Arc<HttpContainer>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let container = container.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let container = container.clone();
            tokio::spawn(async move {
                let _ = container.serve_connection(stream).await;
            });
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> SendRequest<RequestBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

fn full(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn request(method: &str, path: &str, body: RequestBody) -> Request<RequestBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(body)
        .expect("valid request")
}

/// Sends a request and reads the whole answer, failing the test after [`DEADLINE`].
async fn send(sender: &mut SendRequest<RequestBody>, request: Request<RequestBody>) -> (StatusCode, HeaderMap, Bytes) {
    tokio::time::timeout(DEADLINE, async {
        sender.ready().await.expect("connection ready");
        let response = sender.send_request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        (parts.status, parts.headers, body)
    })
    .await
    .expect("answered in time")
}

async fn get(sender: &mut SendRequest<RequestBody>, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(sender, request("GET", path, full(Bytes::new()))).await
}

fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Bytes that differ at every position, so a reordered or dropped chunk cannot go unnoticed.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn hello_over_tcp_with_keep_alive() {
    let web = web("web", HttpLimits::default(), &[], None).await;
    let addr = serve(&web.container).await;
    let mut client = connect(addr).await;
    for _ in 0..3 {
        let (status, headers, body) = get(&mut client, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("x-wasmpod").map(|v| v.as_bytes()), Some(&b"hello"[..]));
        assert_eq!(
            headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/plain"[..])
        );
        assert_eq!(text(&body), "hello from wasmpod\n");
    }
    let (status, _, _) = get(&mut client, "/no-such-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn serves_any_byte_stream() {
    let web = web("web", HttpLimits::default(), &[], None).await;
    let (client_io, server_io) = tokio::io::duplex(16 * 1024);
    tokio::spawn(web.container.clone().serve_connection(server_io));
    let (mut client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let (status, _, body) = get(&mut client, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body), "hello from wasmpod\n");
}

#[tokio::test]
async fn echoes_4_mib_intact() {
    let web = web("web", HttpLimits::default(), &[], None).await;
    let addr = serve(&web.container).await;
    let mut client = connect(addr).await;
    let sent = pattern(4 * 1024 * 1024);
    let (status, headers, body) = send(&mut client, request("POST", "/echo", full(sent.clone()))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("x-echo").map(|v| v.as_bytes()), Some(&b"streaming"[..]));
    assert_eq!(body.len(), sent.len());
    assert!(body[..] == sent[..], "the echoed body differs from the sent one");
    // The connection is still good for the next request.
    let (status, _, _) = get(&mut client, "/").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn echo_streams_before_the_request_body_ends() {
    let web = web("web", HttpLimits::default(), &[], None).await;
    let addr = serve(&web.container).await;
    let mut client = connect(addr).await;
    let (mut body_tx, body) = Channel::<Bytes, BoxError>::new(4);
    let first = Bytes::from(pattern(32 * 1024));
    body_tx.send_data(first.clone()).await.expect("first chunk queued");
    tokio::time::timeout(DEADLINE, async {
        let response = client
            .send_request(request("POST", "/echo", body.boxed()))
            .await
            .expect("response head");
        assert_eq!(response.status(), StatusCode::OK);
        let mut response_body = response.into_body();
        // The first chunk comes back while the request body is still open: nothing buffers
        // the whole body, neither the host nor the guest.
        let mut echoed = Vec::new();
        while echoed.len() < first.len() {
            let frame = response_body
                .frame()
                .await
                .expect("a frame before the end")
                .expect("frame ok");
            if let Ok(data) = frame.into_data() {
                echoed.extend_from_slice(&data);
            }
        }
        assert_eq!(echoed[..], first[..]);
        let second = Bytes::from_static(b"and the rest");
        body_tx.send_data(second.clone()).await.expect("second chunk queued");
        drop(body_tx);
        let rest = response_body.collect().await.expect("rest of the body").to_bytes();
        assert_eq!(rest, second);
    })
    .await
    .expect("echo finished in time");
}

#[tokio::test]
async fn a_trapping_request_answers_500_and_the_next_one_works() {
    let web = web("web", HttpLimits::default(), &[], None).await;
    let addr = serve(&web.container).await;
    let mut client = connect(addr).await;
    let (status, _, _) = get(&mut client, "/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let trapped: Vec<String> = web
        .events
        .all()
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::RequestTrapped { message } if event.container.as_deref() == Some("web") => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(trapped.len(), 1, "{:?}", web.events.all());
    let (status, _, body) = get(&mut client, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body), "hello from wasmpod\n");
}

/// Reads a response whose head arrived but whose body must end with an error, not cleanly.
async fn body_is_aborted(sender: &mut SendRequest<RequestBody>, path: &str) -> Bytes {
    tokio::time::timeout(DEADLINE, async {
        let response = sender
            .send_request(request("GET", path, full(Bytes::new())))
            .await
            .expect("response head");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::new();
        loop {
            match body.frame().await {
                Some(Ok(frame)) => received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
                Some(Err(_)) => return Bytes::from(received),
                None => panic!(
                    "{path}: the body ended cleanly after {:?}",
                    String::from_utf8_lossy(&received)
                ),
            }
        }
    })
    .await
    .expect("body ended in time")
}

#[tokio::test]
async fn a_body_cut_by_a_trap_or_timeout_is_aborted_not_short() {
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let addr = serve(&web.container).await;
    let received = body_is_aborted(&mut connect(addr).await, "/trap-midway").await;
    assert_eq!(&received[..], b"partial");
    let received = body_is_aborted(&mut connect(addr).await, "/loop-midway").await;
    assert_eq!(&received[..], b"partial");
    let kinds: Vec<EventKind> = web.events.all().into_iter().map(|e| e.kind).collect();
    assert!(
        kinds.iter().any(|k| matches!(k, EventKind::RequestTrapped { .. })),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| matches!(k, EventKind::RequestTimedOut { .. })),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_looping_request_is_cut_at_the_timeout_while_others_are_served() {
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let addr = serve(&web.container).await;
    let mut looping_client = connect(addr).await;
    let looping = tokio::spawn(async move { get(&mut looping_client, "/loop").await });
    let mut client = connect(addr).await;
    let mut concurrent = Vec::new();
    for _ in 0..4 {
        let mut client = connect(addr).await;
        concurrent.push(tokio::spawn(async move { get(&mut client, "/").await }));
    }
    for _ in 0..5 {
        let (status, _, body) = get(&mut client, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text(&body), "hello from wasmpod\n");
    }
    for request in concurrent {
        let (status, _, _) = request.await.expect("concurrent request task");
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = looping.await.expect("looping request task");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        web.events
            .all()
            .iter()
            .any(|event| matches!(event.kind, EventKind::RequestTimedOut { .. })),
        "{:?}",
        web.events.all()
    );
    let (status, _, _) = get(&mut client, "/").await;
    assert_eq!(status, StatusCode::OK);
}

/// On a one-thread runtime (as `#[tokio::test]` is), a spinning guest must still let the
/// thread's sockets be served between its time slices. Were it to stay runnable at every tick,
/// tokio would poll its I/O driver only every 61 task polls (~0.6 s), and these twenty requests
/// would take longer than the looping request's whole 10 s life.
#[tokio::test]
async fn a_spinning_guest_does_not_hold_up_io_on_its_thread() {
    let limits = HttpLimits {
        request_timeout: Duration::from_secs(10),
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let addr = serve(&web.container).await;
    let looping = occupy_a_slot(&web.container).await;
    let mut client = connect(addr).await;
    for _ in 0..20 {
        let (status, _, _) = get(&mut client, "/").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        !looping.is_finished(),
        "the looping request ended before twenty requests were served"
    );
    looping.abort();
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let limits = HttpLimits {
        max_request_body_bytes: 1024,
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let addr = serve(&web.container).await;

    // Declared too large: refused before the guest runs.
    let mut client = connect(addr).await;
    let (status, _, _) = send(&mut client, request("POST", "/count", full(vec![7u8; 4096]))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, no length: cut while streaming.
    let mut client = connect(addr).await;
    let (mut body_tx, body) = Channel::<Bytes, BoxError>::new(16);
    for _ in 0..8 {
        body_tx
            .send_data(Bytes::from(vec![7u8; 512]))
            .await
            .expect("chunk queued");
    }
    drop(body_tx);
    let (status, _, _) = send(&mut client, request("POST", "/count", body.boxed())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // At the limit: served.
    let mut client = connect(addr).await;
    let (status, _, body) = send(&mut client, request("POST", "/count", full(vec![7u8; 1024]))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body), "1024\n");
}

/// Starts a `/loop` request and waits until it holds an instance slot.
async fn occupy_a_slot(container: &Arc<HttpContainer>) -> tokio::task::JoinHandle<StatusCode> {
    let before = container.in_flight();
    let looping = tokio::spawn({
        let container = container.clone();
        async move {
            container
                .handle(request("GET", "/loop", full(Bytes::new())))
                .await
                .status()
        }
    });
    wait_for(|| container.in_flight() > before, "the /loop request to take a slot").await;
    looping
}

/// Waits (yielding, never sleeping) until `condition` holds, failing after [`DEADLINE`].
async fn wait_for(condition: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn beyond_the_concurrency_limit_requests_get_503() {
    let limits = HttpLimits {
        request_timeout: Duration::from_secs(1),
        max_concurrent_instances: 1,
        max_queued_requests: 0,
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let addr = serve(&web.container).await;
    let looping = occupy_a_slot(&web.container).await;
    let mut client = connect(addr).await;
    let (status, _, _) = get(&mut client, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        looping.await.expect("looping request task"),
        StatusCode::GATEWAY_TIMEOUT
    );
    let (status, _, _) = get(&mut client, "/").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn requests_wait_for_a_slot_within_the_queue_bounds() {
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(500),
        max_concurrent_instances: 1,
        max_queued_requests: 1,
        queue_timeout: DEADLINE,
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let looping = occupy_a_slot(&web.container).await;
    let waiting = tokio::spawn({
        let container = web.container.clone();
        async move { container.handle(request("GET", "/", full(Bytes::new()))).await.status() }
    });
    wait_for(|| web.container.queued() == 1, "a request to queue").await;
    // The queue is full: the next request is turned away at once.
    let status = web
        .container
        .handle(request("GET", "/", full(Bytes::new())))
        .await
        .status();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The looping request is cut at its timeout, and the queued one is then served.
    assert_eq!(looping.await.expect("looping task"), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(waiting.await.expect("waiting task"), StatusCode::OK);
    assert_eq!(web.container.queued(), 0);
}

#[tokio::test]
async fn dropping_a_request_before_its_answer_stops_the_guest() {
    // The timeout is far beyond the test's deadline: only cancellation can free the one slot.
    let limits = HttpLimits {
        request_timeout: Duration::from_secs(600),
        max_concurrent_instances: 1,
        max_queued_requests: 0,
        ..HttpLimits::default()
    };
    let web = web("web", limits, &[], None).await;
    let looping = occupy_a_slot(&web.container).await;
    looping.abort();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = web
            .container
            .handle(request("GET", "/", full(Bytes::new())))
            .await
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_guest_sees_its_env_and_writes_to_its_logs() {
    let web = web(
        "env-web",
        HttpLimits::default(),
        &[("GREETING", "hi"), ("MODE", "test")],
        None,
    )
    .await;
    let response = web.container.handle(request("GET", "/env", full(Bytes::new()))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(text(&body), "GREETING=hi\nMODE=test\n");
    assert_eq!(web.logs.text("env-web"), vec!["env requested"]);
}

#[tokio::test]
async fn containers_chain_in_process_through_localhost() {
    let routes = Arc::new(LocalRoutes::new());
    let front = web("front", HttpLimits::default(), &[], Some(routes.clone())).await;
    let back = web("back", HttpLimits::default(), &[], Some(routes.clone())).await;
    routes.add_http(8080, &front.container);
    routes.add_http(8081, &back.container);
    let addr = serve(&front.container).await;
    let mut client = connect(addr).await;
    for url in ["http://localhost:8081/", "http://127.0.0.1:8081/", "http://[::1]:8081/"] {
        let (status, headers, body) = get(&mut client, &format!("/fetch?url={url}")).await;
        assert_eq!(status, StatusCode::OK, "{url}: {}", text(&body));
        assert_eq!(
            headers.get("x-upstream-status").map(|v| v.as_bytes()),
            Some(&b"200"[..])
        );
        assert_eq!(text(&body), "hello from wasmpod\n");
    }
    // Two hops: front -> front's own port -> back.
    let (status, _, body) = get(
        &mut client,
        "/fetch?url=http://localhost:8080/fetch?url=http://localhost:8081/",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(text(&body), "hello from wasmpod\n");
    // A trap in the callee is a 500 for the caller, not a failure of the caller.
    let (status, headers, _) = get(&mut client, "/fetch?url=http://localhost:8081/trap").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        headers.get("x-upstream-status").map(|v| v.as_bytes()),
        Some(&b"500"[..])
    );
    assert!(
        back.events
            .all()
            .iter()
            .any(|e| matches!(e.kind, EventKind::RequestTrapped { .. }))
    );
}

#[tokio::test]
async fn outgoing_requests_outside_the_pod_are_denied_and_unserved_ports_refused() {
    let routes = Arc::new(LocalRoutes::new());
    let web = web("caller", HttpLimits::default(), &[], Some(routes)).await;
    let response = web
        .container
        .handle(request("GET", "/fetch?url=http://example.com/x", full(Bytes::new())))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(text(&body), "error: ErrorCode::HttpRequestDenied\n");
    let denied: Vec<(Option<String>, wasmpod::egress::DeniedKind, String)> = web
        .events
        .all()
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::EgressDenied { kind, destination } => Some((event.container, kind, destination)),
            _ => None,
        })
        .collect();
    assert_eq!(
        denied,
        vec![(
            Some("caller".to_string()),
            wasmpod::egress::DeniedKind::Http,
            "http://example.com/x".to_string()
        )]
    );

    let response = web
        .container
        .handle(request("GET", "/fetch?url=http://localhost:9/", full(Bytes::new())))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(text(&body), "error: ErrorCode::ConnectionRefused\n");
}

#[tokio::test]
async fn an_http_container_is_held_to_its_cpu_share() {
    let limits = HttpLimits {
        request_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let throttled = web_with(
        "throttled",
        limits.clone(),
        &[],
        None,
        wasmpod::spec::Resources {
            cpu: Some(0.1),
            ..Default::default()
        },
    )
    .await;
    let response = throttled
        .container
        .handle(request("GET", "/loop", full(Bytes::new())))
        .await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        throttled.container.runtime().cpu().throttled_ticks() > 0,
        "a computing request of a container with cpu = 0.1 is throttled"
    );
    let free = web("free", limits, &[], None).await;
    let response = free.container.handle(request("GET", "/loop", full(Bytes::new()))).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        free.container.runtime().cpu().throttled_ticks(),
        0,
        "no share, no throttling"
    );
}

/// Not a test: request rates for the report. Run it optimised, alone:
/// `cargo test --release --test http -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let limits = HttpLimits::default();
    let web = web("web", limits, &[], None).await;
    // Warm up (first instantiation maps the pool slots).
    for _ in 0..200 {
        let response = web.container.handle(request("GET", "/", full(Bytes::new()))).await;
        let _ = response.into_body().collect().await;
    }
    let rounds = 5000;
    let mut latencies = Vec::with_capacity(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let response = web.container.handle(request("GET", "/", full(Bytes::new()))).await;
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), 19);
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "in-process handle(), sequential: {:.0} req/s, p50 {:?}, p99 {:?}",
        rounds as f64 / elapsed.as_secs_f64(),
        latencies[rounds / 2],
        latencies[rounds * 99 / 100]
    );

    let addr = serve(&web.container).await;
    let connections = 32;
    let per_connection = 500;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            let mut latencies = Vec::with_capacity(per_connection);
            for _ in 0..per_connection {
                let t = Instant::now();
                let (status, _, _) = get(&mut client, "/").await;
                assert_eq!(status, StatusCode::OK);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let total = latencies.len();
    println!(
        "TCP keep-alive, {connections} connections, client in the same process: {:.0} req/s, p50 {:?}, p99 {:?}",
        total as f64 / elapsed.as_secs_f64(),
        latencies[total / 2],
        latencies[total * 99 / 100]
    );
}
