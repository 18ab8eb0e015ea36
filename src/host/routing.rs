//! The edge host's shared HTTP entrance: one host listener for every pod, routed by `Host`.
//!
//! A request whose `Host` is `NAME.localhost` (any port) or one of a pod's `[expose]
//! hostnames` goes to that pod's exposed port with no host TCP hop: an http container serves
//! it in-process ([`crate::container::HttpContainer::handle`]), and a command container's port
//! gets it over a connection on the pod's virtual network. As the pod's own front proxy does,
//! a request waits up to the pod's `readiness_wait` for it to be ready, then gets 503. An
//! unknown host gets 404. Each request is routed on its own, so one keep-alive connection may
//! reach several pods. Clients pass the front proxy's gate first ([`crate::proxy::Gate`]), with
//! the host's `entrance` limits.

use std::convert::Infallible;
use std::error::Error as StdError;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::io::TokioIo;

use super::Host;
use crate::proxy::{Gate, ProxyTarget};

type BoxError = Box<dyn StdError + Send + Sync>;
type Reply = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// Serves the shared entrance on `listener` until `stop` is cancelled, through the front
/// proxy's gate with the host's `entrance` limits: connection cap (then the listen backlog),
/// per-client-address cap, header-read and keep-alive timeouts, largest request head. What it
/// refuses is reported in the host's events.
pub async fn serve(host: Host, listener: TcpListener, stop: CancellationToken) {
    let gate = Gate::new(
        "shared entrance",
        host.limits().entrance,
        host.events().clone(),
        stop.clone(),
    );
    let door = gate.clone();
    gate.run(listener, move |client, _peer| {
        let (host, gate) = (host.clone(), door.clone());
        async move {
            let Some((client, builder)) = gate.http(client).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let host = host.clone();
                async move { Ok::<_, Infallible>(route(&host, request).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(client), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = gate.stop().cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        }
    })
    .await;
}

/// Routes one request to its pod.
pub async fn route(host: &Host, request: Request<Incoming>) -> Reply {
    let host_header = request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or("")
        .to_string();
    let Some(pod) = host.route_host(&host_header) else {
        return text(StatusCode::NOT_FOUND, format!("no pod serves host {host_header:?}\n"));
    };
    let Some((target, mut ready)) = pod.exposed() else {
        let name = &pod.spec().name;
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pod {name} exposes no port or is not running\n"),
        );
    };
    if !*ready.borrow() {
        let wait = pod.spec().readiness_wait;
        let became_ready = tokio::time::timeout(wait, ready.wait_for(|ready| *ready)).await;
        if !matches!(became_ready, Ok(Ok(_))) {
            let name = &pod.spec().name;
            let wait = humantime::format_duration(wait);
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("pod {name} was not ready within {wait}\n"),
            );
        }
    }
    match target {
        // The container serving the port now (an update may have swapped it).
        ProxyTarget::Http { container, ports, port } => ports
            .get(port)
            .unwrap_or(container)
            .handle(request)
            .await
            .map(|body| body.map_err(Into::into).boxed_unsync()),
        ProxyTarget::PodPort { network, port } => {
            let stream = match network.connect(port) {
                Ok(stream) => stream,
                Err(e) => return text(StatusCode::BAD_GATEWAY, format!("pod port {port}: {e}\n")),
            };
            let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(parts) => parts,
                Err(e) => return text(StatusCode::BAD_GATEWAY, format!("pod port {port}: {e}\n")),
            };
            tokio::spawn(connection);
            match sender.send_request(request).await {
                Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
                Err(e) => text(StatusCode::BAD_GATEWAY, format!("pod port {port}: {e}\n")),
            }
        }
    }
}

fn text(status: StatusCode, message: String) -> Reply {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
