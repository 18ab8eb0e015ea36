//! HTTP for whichever http container serves a pod port at the moment of each request.
//!
//! A pod's http container can be swapped for a new version while connections are open
//! ([`crate::Pod::update`]). The pod's port table ([`HttpPorts`]) always names the version that
//! serves; connections served here look it up for every request, so a new version takes over
//! new requests at once — also on keep-alive connections opened before the swap — while a
//! request in flight keeps the `Arc` of the version it started on and finishes there.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;

use crate::container::HttpContainer;
use crate::route::HttpPorts;

/// The connection settings of a pod-port listener: HTTP/1.1 with keep-alive.
pub(crate) fn http_builder() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    builder
}

/// Serves HTTP/1.1 on `io`, each request by the version serving `port` in `ports` when it
/// arrives (`fallback`, the version current when the connection opened, if the table has none:
/// the pod is stopping). When `shutdown` completes, the request in flight finishes and the
/// connection closes. Errors are the connection's (a client that hung up or was too slow).
pub(crate) async fn serve_current<IO>(
    ports: Arc<HttpPorts>,
    port: u16,
    fallback: Arc<HttpContainer>,
    io: IO,
    shutdown: impl Future<Output = ()> + Send,
    builder: &hyper::server::conn::http1::Builder,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let container = ports.get(port).unwrap_or_else(|| fallback.clone());
        async move { Ok::<_, Infallible>(container.handle(request).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = connection.as_mut() => result,
        () = &mut shutdown => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}
