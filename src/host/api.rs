//! The edge host's JSON-over-HTTP API, on a Unix socket (mode 0600) or, with a bearer token, on
//! TCP.
//!
//! This module owns the wire: paths, methods, status codes, body caps and the JSON shapes. The
//! views of pods, lines and events are [`crate::control`]'s, so `GET /v1/pods/NAME` shows what
//! `wasmpod ps --json` shows. Every error is `{"error": "..."}` with a message that names the
//! field or the limit (a spec error adds `problems`, each with file, line and column). What the
//! requests do is [`super::Host`]'s.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::io::TokioIo;

use super::{Host, HostError};
use crate::control::{EventView, LineView, StatusView};
use crate::spec::is_sha256_hex;

/// Who may call the API: anyone who can open the socket, or holders of a bearer token.
#[derive(Clone)]
pub enum Access {
    /// The Unix socket: its mode (0600) and directory are the access control.
    Socket,
    /// TCP: `Authorization: Bearer TOKEN` required.
    Token(Arc<str>),
}

/// Serves API connections from `listener` until `stop` is cancelled.
pub async fn serve_tcp(host: Host, listener: tokio::net::TcpListener, access: Access, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        if let Ok((stream, _)) = accepted {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve_connection(host.clone(), stream, access.clone(), stop.clone()));
        }
    }
}

/// Binds the API socket at `path` with mode 0600 (its directory must be private already) and
/// serves it until `stop` is cancelled. A stale socket file is replaced.
#[cfg(unix)]
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another host serves {} already", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves API connections from a Unix listener until `stop` is cancelled.
#[cfg(unix)]
pub async fn serve_unix(host: Host, listener: tokio::net::UnixListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        if let Ok((stream, _)) = accepted {
            tokio::spawn(serve_connection(host.clone(), stream, Access::Socket, stop.clone()));
        }
    }
}

async fn serve_connection<IO>(host: Host, io: IO, access: Access, stop: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let host = host.clone();
        let access = access.clone();
        async move { Ok::<_, Infallible>(handle(&host, &access, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

type Reply = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// Answers one API request.
pub async fn handle(host: &Host, access: &Access, request: Request<Incoming>) -> Reply {
    if let Access::Token(token) = access {
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong `Authorization: Bearer TOKEN`",
            );
        }
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "health"]) => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "pods": host.pods().len(),
                "load_problems": host.load_problems(),
            }),
        ),
        (&Method::GET, ["metrics"]) => {
            let mut response = Response::new(Full::new(Bytes::from(super::metrics::render(host))).boxed_unsync());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::PUT, ["v1", "blobs", digest]) => put_blob(host, digest, request).await,
        (&Method::HEAD | &Method::GET, ["v1", "blobs", digest]) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if host.store().has_blob(hex) {
                json(StatusCode::OK, &serde_json::json!({ "digest": digest }))
            } else {
                error(StatusCode::NOT_FOUND, &format!("no blob {digest}"))
            }
        }
        (&Method::GET, ["v1", "pods"]) => {
            let all: Vec<PodView> = host.pods().iter().map(|pod| PodView::of(host, pod)).collect();
            json(StatusCode::OK, &all)
        }
        (&Method::PUT, ["v1", "pods", name]) => put_pod(host, name, request).await,
        (&Method::DELETE, ["v1", "pods", name]) => match host.delete(name).await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "result": "deleted" })),
            Err(e) => host_error(&e),
        },
        (&Method::GET, ["v1", "pods", name]) => match host.pod(name) {
            Some(pod) => json(StatusCode::OK, &PodView::of(host, &pod)),
            None => host_error(&HostError::NoSuchPod(name.to_string())),
        },
        (&Method::GET, ["v1", "pods", name, "logs", container]) => {
            let Some(pod) = host.pod(name) else {
                return host_error(&HostError::NoSuchPod(name.to_string()));
            };
            if !pod.spec().all_containers().any(|c| c.name == *container) {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("pod {name:?} has no container {container:?}"),
                );
            }
            let tail = match query_param(&query, "tail").map(str::parse::<usize>) {
                None => usize::MAX,
                Some(Ok(n)) => n,
                Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "`tail` must be a number of lines"),
            };
            if follows(&query) {
                let cursor = Cursor::Logs(pod.output().tail(container, Some(tail)));
                return follow(pod, cursor);
            }
            let lines = pod.logs(container);
            let skip = lines.len().saturating_sub(tail);
            let lines: Vec<LineView> = lines[skip..].iter().map(LineView::from).collect();
            json(StatusCode::OK, &lines)
        }
        (&Method::GET, ["v1", "pods", name, "events"]) => match host.pod(name) {
            Some(pod) if follows(&query) => {
                let cursor = Cursor::Events(pod.events().tail(None));
                follow(pod, cursor)
            }
            Some(pod) => {
                let events: Vec<EventView> = pod.events().all().iter().map(EventView::from).collect();
                json(StatusCode::OK, &events)
            }
            None => host_error(&HostError::NoSuchPod(name.to_string())),
        },
        _ => error(StatusCode::NOT_FOUND, &format!("no API route {method} {path}")),
    }
}

async fn put_blob(host: &Host, digest: &str, request: Request<Incoming>) -> Reply {
    let Some(hex) = digest.strip_prefix("sha256:").filter(|hex| is_sha256_hex(hex)) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("blob digest {digest:?}: expected `sha256:` and 64 lowercase hex digits"),
        );
    };
    let limit = host.limits().max_blob_bytes;
    let bytes = match read_body(request, limit, "max_blob_bytes").await {
        Ok(bytes) => bytes,
        Err(reply) => return reply,
    };
    let store_host = host.clone();
    let hex = hex.to_string();
    let stored = tokio::task::spawn_blocking(move || store_host.store().put_blob(&hex, &bytes)).await;
    match stored {
        Ok(Ok(())) => json(StatusCode::CREATED, &serde_json::json!({ "digest": digest })),
        Ok(Err(e @ super::StoreError::Io { .. })) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn put_pod(host: &Host, name: &str, request: Request<Incoming>) -> Reply {
    let bytes = match read_body(request, host.limits().max_spec_bytes, "max_spec_bytes").await {
        Ok(bytes) => bytes,
        Err(reply) => return reply,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "the spec is not UTF-8 text");
    };
    match host.apply(name, text).await {
        Ok(applied) => {
            let status = match applied {
                super::Applied::Created => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            json(status, &serde_json::json!({ "result": applied.as_str() }))
        }
        Err(e) => host_error(&e),
    }
}

/// The body, up to `limit` bytes; over it, 413 naming the limit.
async fn read_body(request: Request<Incoming>, limit: u64, limit_name: &str) -> Result<Bytes, Reply> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than the host's {limit_name} of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, &format!("cannot read the body: {e}"))),
    }
}

/// A pod as the API shows it: the status `wasmpod ps --json` shows, and the address of its
/// `[expose] host_port` listener when it has one (with `host_port = 0`, the port picked).
#[derive(Serialize)]
struct PodView {
    #[serde(flatten)]
    status: StatusView,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_addr: Option<String>,
}

impl PodView {
    fn of(host: &Host, pod: &crate::Pod) -> PodView {
        let status = StatusView::from(&pod.status());
        let host_addr = host.host_port_addr(&status.name).map(|addr| addr.to_string());
        PodView { status, host_addr }
    }
}

#[derive(Serialize)]
struct ProblemView {
    file: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

fn host_error(e: &HostError) -> Reply {
    let status = match e {
        HostError::BadName(_) | HostError::NameMismatch { .. } => StatusCode::BAD_REQUEST,
        HostError::Spec(_) | HostError::Start { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        HostError::HostnameTaken { .. } | HostError::HostPortTaken { .. } | HostError::HostPort(_) => {
            StatusCode::CONFLICT
        }
        HostError::TooManyPods(_) | HostError::Memory(_) => StatusCode::TOO_MANY_REQUESTS,
        HostError::NoSuchPod(_) => StatusCode::NOT_FOUND,
        HostError::ShuttingDown | HostError::Store(super::StoreError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
        HostError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match e {
        HostError::Spec(spec_error) => {
            let problems: Vec<ProblemView> = spec_error
                .problems()
                .iter()
                .map(|p| ProblemView {
                    file: p.file.as_ref().map(|f| f.display().to_string()),
                    line: p.line,
                    column: p.column,
                    message: p.message.clone(),
                })
                .collect();
            json(
                status,
                &serde_json::json!({ "error": e.to_string(), "problems": problems }),
            )
        }
        _ => error(status, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{\"error\":\"cannot encode the answer\"}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn follows(query: &str) -> bool {
    matches!(query_param(query, "follow"), Some("true" | "1"))
}

/// Streams newline-delimited JSON: what `next` yields, chunk after chunk, until the pod ends or
/// the client goes. The queue is bounded, so a slow client holds its reader back (it may then
/// miss lines, which it is told about), never the pod.
fn follow(pod: Arc<crate::Pod>, mut cursor: Cursor) -> Reply {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let ended = pod.wait();
        tokio::pin!(ended);
        loop {
            let chunk = tokio::select! {
                _ = &mut ended => return,
                () = sender.closed() => return,
                chunk = cursor.next() => chunk,
            };
            if sender.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChunkBody(receiver).boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// What a follow request reads.
enum Cursor {
    Logs(crate::logs::LogTail),
    Events(crate::status::EventTail),
}

impl Cursor {
    /// The next lines of JSON, waiting for at least one.
    async fn next(&mut self) -> String {
        match self {
            Cursor::Logs(tail) => {
                let read = tail.next().await;
                let mut chunk = missed_line(read.missed);
                for line in &read.lines {
                    chunk.push_str(&json_line(&LineView::from(line)));
                }
                chunk
            }
            Cursor::Events(tail) => {
                let (events, missed) = tail.next().await;
                let mut chunk = missed_line(missed);
                for event in &events {
                    chunk.push_str(&json_line(&EventView::from(event)));
                }
                chunk
            }
        }
    }
}

fn missed_line(missed: u64) -> String {
    if missed == 0 {
        return String::new();
    }
    json_line(&serde_json::json!({ "missed": missed }))
}

fn json_line<T: Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_default();
    line.push('\n');
    line
}

/// A response body fed by a bounded queue of chunks; it ends when the sender goes.
struct ChunkBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
