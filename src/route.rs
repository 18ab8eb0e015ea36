//! Outgoing HTTP: where a container's `wasi:http` requests go, and how they get there.
//!
//! Every container of a pod (command, http or a health check's instance) sends its outgoing
//! requests through [`OutgoingHooks`], which asks an [`OutgoingRoute`] (the pod's
//! [`PodRoutes`]) where a destination lives: another http container of the pod (called
//! in-process, no serialisation), a pod port a command container serves (HTTP/1.1 over the pod
//! network), or outside the pod. Outside means the container's egress: the request is dialled
//! through the same decision as a guest socket's connect ([`crate::net::ContainerNet`]'s
//! egress: one policy object, resolved addresses checked, one kind of denial event), never by
//! a client that resolves and connects on its own.
//!
//! The request's `request-options` (connect, first-byte and between-bytes timeouts) apply on
//! every route, with the error codes wasmtime's own client uses; an authority whose port is not
//! a port number fails before any routing or egress decision, as in wasmtime.
//!
//! The pod's faults ([`crate::net::fault`]) reach every route: a request answered in-process
//! takes `latency` (request and response head held back), `down` (`connection-refused`) and
//! `reset_peer` (`connection-terminated`), decided per request; a request to a command
//! container's port goes over a pod link opened as the calling container, so its socket faults
//! apply there as they do to the container's own sockets.
//!
//! This module does not own the pod's port namespace or the egress policy; [`LocalRoutes`] is
//! a minimal table for tests and embedders.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use crate::container::http::HttpContainer;
use crate::net::fault::RequestFaults;
use crate::net::{ContainerNet, NetError, PodNetwork};

/// The error type of bodies crossing wasmtime-wasi-http (what its guests' streams report).
pub type BodyError = wasmtime_wasi_http::Error;

/// What wasmtime's client waits when a request sets no timeout of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where an outgoing request is addressed, normalised for routing decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `http` or `https` (lowercase).
    pub scheme: String,
    /// Lowercase, without IPv6 brackets (`::1`, `localhost`, `api.example.com`).
    pub host: String,
    /// Explicit, or 80/443 from the scheme.
    pub port: u16,
    /// The whole URL, for messages and events.
    pub url: String,
}

impl Destination {
    /// Reads the destination of a request URI. A URI without a host, or whose port is present
    /// but not a port number (`localhost:99999`), is `HTTP-request-URI-invalid`: it must never
    /// fall back to the scheme's port, or an egress rule for port 80 would admit it.
    pub fn of(uri: &hyper::Uri) -> Result<Destination, BodyError> {
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri.host().ok_or(BodyError::HttpRequestUriInvalid)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err(BodyError::HttpRequestUriInvalid);
        }
        // `Uri::port` hides a port that is not a u16 (it answers "no port"), so the authority
        // is read as written.
        let port = match written_port(uri.authority().map(|a| a.as_str()).unwrap_or_default()) {
            Some(port) => port.parse::<u16>().map_err(|_| BodyError::HttpRequestUriInvalid)?,
            None if scheme == "https" => 443,
            None => 80,
        };
        Ok(Destination {
            scheme,
            host,
            port,
            url: uri.to_string(),
        })
    }

    /// Whether the host names the pod itself: `localhost` (and `*.localhost`), 127.0.0.0/8,
    /// `::1` or an unspecified address. Container names are the pod's business
    /// ([`OutgoingRoute`]).
    pub fn is_loopback(&self) -> bool {
        if self.host == "localhost" || self.host.ends_with(".localhost") {
            return true;
        }
        self.host
            .parse::<std::net::IpAddr>()
            .is_ok_and(crate::net::is_pod_address)
    }
}

/// The port of an authority exactly as written (`None` when it names none): what follows the
/// host (after any userinfo, and after the brackets of an IPv6 literal).
fn written_port(authority: &str) -> Option<&str> {
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, rest)| rest);
    let after_host = match host_and_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host_and_port.find(':').map_or("", |i| &host_and_port[i..]),
    };
    after_host.strip_prefix(':').filter(|port| !port.is_empty())
}

/// Where an outgoing request goes.
#[derive(Clone)]
pub enum Route {
    /// Into an http container of the same pod, in-process (no HTTP serialisation).
    Container(Arc<HttpContainer>),
    /// To a pod port served by a command container: HTTP/1.1 over the pod network.
    PodPort { network: Arc<PodNetwork>, port: u16 },
    /// Outside the pod: the container's egress decides, and dials.
    Outside,
    /// Inside the pod, but nothing listens there: the guest gets `connection-refused`.
    Refused,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Container(container) => f.debug_tuple("Container").field(&container.name()).finish(),
            Route::PodPort { port, .. } => f.debug_tuple("PodPort").field(port).finish(),
            Route::Outside => f.write_str("Outside"),
            Route::Refused => f.write_str("Refused"),
        }
    }
}

/// Decides where a container's outgoing requests go; the pod implements it with its port
/// namespace.
pub trait OutgoingRoute: Send + Sync {
    fn route(&self, destination: &Destination) -> Route;
}

/// Refuses everything inside and sends everything else to egress: the route of a container
/// that was given none.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPodRoutes;

impl OutgoingRoute for NoPodRoutes {
    fn route(&self, destination: &Destination) -> Route {
        if destination.is_loopback() {
            Route::Refused
        } else {
            Route::Outside
        }
    }
}

/// A minimal route table for tests and embedders: pod ports served by http containers;
/// anything not on loopback goes to the container's egress. Holds the containers weakly, so
/// a container whose route points back at itself does not keep itself alive.
#[derive(Default)]
pub struct LocalRoutes {
    http: HttpPorts,
}

impl LocalRoutes {
    pub fn new() -> LocalRoutes {
        LocalRoutes::default()
    }

    /// Serves pod port `port` (on every loopback name) with `container`.
    pub fn add_http(&self, port: u16, container: &Arc<HttpContainer>) {
        self.http.insert(port, container);
    }
}

impl OutgoingRoute for LocalRoutes {
    fn route(&self, destination: &Destination) -> Route {
        if !destination.is_loopback() {
            return Route::Outside;
        }
        match self.http.get(destination.port) {
            Some(container) => Route::Container(container),
            None => Route::Refused,
        }
    }
}

/// The pod's http containers by port, shared by every container's routes and the probes.
/// Weak, so containers that call each other do not keep each other alive.
#[derive(Default)]
pub struct HttpPorts(RwLock<HashMap<u16, Weak<HttpContainer>>>);

impl HttpPorts {
    pub fn insert(&self, port: u16, container: &Arc<HttpContainer>) {
        crate::sync::write(&self.0).insert(port, Arc::downgrade(container));
    }

    pub fn get(&self, port: u16) -> Option<Arc<HttpContainer>> {
        crate::sync::read(&self.0).get(&port).and_then(Weak::upgrade)
    }
}

/// The routes of the containers of one pod: `localhost`, loopback addresses and container
/// names mean the pod; a port served by an http container is called in-process, a port a
/// command container listens on is reached over the pod network; anything else is outside.
pub struct PodRoutes {
    network: Arc<PodNetwork>,
    http: Arc<HttpPorts>,
}

impl PodRoutes {
    pub fn new(network: Arc<PodNetwork>, http: Arc<HttpPorts>) -> PodRoutes {
        PodRoutes { network, http }
    }
}

impl OutgoingRoute for PodRoutes {
    fn route(&self, destination: &Destination) -> Route {
        let in_pod = destination.is_loopback() || self.network.has_name(&destination.host);
        if !in_pod {
            return Route::Outside;
        }
        if let Some(container) = self.http.get(destination.port) {
            return Route::Container(container);
        }
        if self.network.is_listening(destination.port) {
            return Route::PodPort {
                network: self.network.clone(),
                port: destination.port,
            };
        }
        Route::Refused
    }
}

/// The response and the future that finishes the exchange, as wasmtime-wasi-http wants them.
type Exchange = (
    hyper::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), BodyError>> + Send>,
);
type SendFuture = Box<dyn Future<Output = Result<Exchange, BodyError>> + Send>;

/// The wasi:http hooks of every wasmpod Store: outgoing requests are routed by the pod and
/// leave it only through the container's egress, never behind its back.
pub struct OutgoingHooks {
    route: Arc<dyn OutgoingRoute>,
    /// The container's attachment to the pod network: its egress decides and dials outside.
    net: Arc<ContainerNet>,
}

impl OutgoingHooks {
    pub fn new(route: Arc<dyn OutgoingRoute>, net: Arc<ContainerNet>) -> OutgoingHooks {
        OutgoingHooks { route, net }
    }
}

impl WasiHttpHooks for OutgoingHooks {
    /// Inside a pod, plain HTTP is the norm (TLS to a pod port is refused), so a guest that
    /// names no scheme means `http`, not wasmtime's default `https`.
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), BodyError>> + Send>,
    ) -> SendFuture {
        let destination = match Destination::of(request.uri()) {
            Ok(destination) => destination,
            Err(error) => return failed(error),
        };
        let timeouts = Timeouts::of(options);
        match self.route.route(&destination) {
            // Containers speak plain HTTP; TLS to one cannot be honoured.
            Route::Container(_) | Route::PodPort { .. } if destination.scheme != "http" => {
                failed(BodyError::TlsProtocolError)
            }
            Route::Container(target) => {
                let faults = self.net.pod().faults();
                let faults = if faults.is_empty() {
                    RequestFaults::default()
                } else {
                    faults.on_request(Some(self.net.name()), destination.port)
                };
                if faults.refuse {
                    return failed(BodyError::ConnectionRefused);
                }
                Box::new(async move {
                    let response = tokio::time::timeout(timeouts.first_byte, faulty(faults, target.handle(request)))
                        .await
                        .map_err(|_| BodyError::ConnectionReadTimeout)??;
                    let response = response.map(|body| TimedBody::new(body, timeouts.between_bytes).boxed_unsync());
                    Ok((response, finished_at_once()))
                })
            }
            Route::PodPort { network, port } => {
                let from = self.net.name().to_string();
                Box::new(async move {
                    // Over the pod network as this container: its socket faults (`from` too) apply.
                    let stream = network
                        .connect_from(port, &from)
                        .map_err(|_| BodyError::ConnectionRefused)?;
                    exchange(stream, None, request, timeouts).await
                })
            }
            Route::Refused => failed(BodyError::ConnectionRefused),
            Route::Outside => {
                let net = self.net.clone();
                Box::new(async move {
                    let dial = net.dial_outside(&destination.host, destination.port, &destination.url);
                    let connection = tokio::time::timeout(timeouts.connect, dial)
                        .await
                        .map_err(|_| BodyError::ConnectionTimeout)?
                        .map_err(dial_error)?;
                    let tls = (destination.scheme == "https").then_some(destination.host.as_str());
                    exchange(connection, tls, request, timeouts).await
                })
            }
        }
    }
}

/// Runs an in-process exchange under the pod's faults for it: the request and the response
/// head are held back by `latency`, and `reset_peer` fails it with `connection-terminated`
/// once its timeout passes first (wasi:http has no `connection-reset`; wasmtime's own client
/// reports a reset mid-exchange as a hyper error, this is the closest specific code).
async fn faulty<R>(faults: RequestFaults, handle: impl Future<Output = R>) -> Result<R, BodyError> {
    let exchange = async {
        tokio::time::sleep(faults.request_delay).await;
        let response = handle.await;
        tokio::time::sleep(faults.response_delay).await;
        response
    };
    match faults.reset_after {
        None => Ok(exchange.await),
        Some(after) => tokio::select! {
            response = exchange => Ok(response),
            _ = tokio::time::sleep(after) => Err(BodyError::ConnectionTerminated),
        },
    }
}

/// The three timeouts of `request-options`, with wasmtime's defaults.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    fn of(options: Option<RequestOptions>) -> Timeouts {
        let options = options.unwrap_or_default();
        Timeouts {
            connect: options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT),
            first_byte: options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT),
            between_bytes: options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }
}

/// What a refused or failed dial means to the guest, as wasmtime's client reports it (a
/// failed lookup or connect is `connection-refused` there too).
fn dial_error(error: NetError) -> BodyError {
    match error {
        NetError::AccessDenied => BodyError::HttpRequestDenied,
        NetError::Timeout => BodyError::ConnectionTimeout,
        NetError::ConnectionRefused | NetError::NameUnresolvable => BodyError::ConnectionRefused,
        other => BodyError::Connect(std::io::Error::other(other.to_string())),
    }
}

/// Sends one request as HTTP/1.1 on a connected stream (TLS first when `tls` names the
/// server), with the request's timeouts; the connection lives as long as the exchange.
async fn exchange<S>(
    stream: S,
    tls: Option<&str>,
    mut request: hyper::Request<WasiBody>,
    timeouts: Timeouts,
) -> Result<Exchange, BodyError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stream: Box<dyn Stream> = match tls {
        Some(server) => Box::new(
            tokio::time::timeout(timeouts.connect, tls_connect(server, stream))
                .await
                .map_err(|_| BodyError::ConnectionTimeout)??,
        ),
        None => Box::new(stream),
    };
    let (mut sender, connection) = tokio::time::timeout(
        timeouts.connect,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| BodyError::ConnectionTimeout)?
    .map_err(BodyError::from)?;
    // The connection is driven by its own task from the start (the response cannot arrive
    // otherwise); the future handed back to wasmtime owns it, so it ends with the exchange.
    let driver = AbortOnDrop(tokio::spawn(connection));
    // An origin-form request line, as a server (not a proxy) expects.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = path.parse().map_err(|_| BodyError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
        .await
        .map_err(|_| BodyError::ConnectionReadTimeout)?
        .map_err(BodyError::from)?;
    let response =
        response.map(|body| TimedBody::new(body.map_err(BodyError::from), timeouts.between_bytes).boxed_unsync());
    let finished: Box<dyn Future<Output = Result<(), BodyError>> + Send> = Box::new(async move {
        let mut driver = driver;
        match (&mut driver.0).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BodyError::from(e)),
            Err(_) => Err(BodyError::ConnectionTerminated),
        }
    });
    Ok((response, finished))
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// TLS to a server outside the pod, in wasmtime-wasi-http's error vocabulary.
async fn tls_connect<S>(server: &str, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, BodyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    crate::tls::connect(server, stream).await.map_err(|e| match e {
        crate::tls::TlsError::BadName { .. } => BodyError::HttpRequestUriInvalid,
        crate::tls::TlsError::Handshake { source, .. } => BodyError::Tls(source),
    })
}

/// A response body that fails with `connection-read-timeout` when no frame arrives within
/// the between-bytes timeout.
struct TimedBody<B> {
    inner: B,
    between_bytes: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> TimedBody<B> {
    fn new(inner: B, between_bytes: Duration) -> TimedBody<B> {
        TimedBody {
            inner,
            between_bytes,
            deadline: Box::pin(tokio::time::sleep(between_bytes)),
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.between_bytes;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn finished_at_once() -> Box<dyn Future<Output = Result<(), BodyError>> + Send> {
    Box::new(async { Ok(()) })
}

fn failed(error: BodyError) -> SendFuture {
    Box::new(async move { Err(error) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(uri: &str) -> Result<Destination, BodyError> {
        Destination::of(&uri.parse().expect("a URI"))
    }

    #[test]
    fn a_port_that_is_not_a_port_number_is_an_invalid_uri_not_port_80() {
        assert!(matches!(
            destination("http://localhost:99999/"),
            Err(BodyError::HttpRequestUriInvalid)
        ));
        assert!(matches!(
            destination("http://host.wasmpod.internal:65536/"),
            Err(BodyError::HttpRequestUriInvalid)
        ));
        let plain = destination("http://localhost/").expect("valid");
        assert_eq!(plain.port, 80);
        let tls = destination("https://Example.COM/").expect("valid");
        assert_eq!((tls.host.as_str(), tls.port), ("example.com", 443));
        assert!(matches!(
            destination("http://[::1]:70000/"),
            Err(BodyError::HttpRequestUriInvalid)
        ));
        assert!(matches!(
            destination("http://user@localhost:1x/"),
            Err(BodyError::HttpRequestUriInvalid)
        ));
        let v6 = destination("http://[::1]:8080/x").expect("valid");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert!(v6.is_loopback());
    }

    #[test]
    fn unspecified_and_loopback_addresses_mean_the_pod() {
        for uri in [
            "http://0.0.0.0:1/",
            "http://127.1.2.3/",
            "http://[::]/",
            "http://app.localhost/",
        ] {
            assert!(destination(uri).expect("valid").is_loopback(), "{uri}");
        }
        assert!(!destination("http://10.0.0.1/").expect("valid").is_loopback());
    }
}
