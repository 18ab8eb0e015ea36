//! HTTP containers: a component that exports `wasi:http/incoming-handler`, served with a fresh
//! instance per request.
//!
//! [`HttpContainer`] owns the per-request path: admission (a bounded number of live instances,
//! a bounded wait beyond it), a new Store from the container's runtime (the same args, env,
//! mounts, pod network, egress, memory budget and CPU share every kind gets, see
//! [`super::store`]; the memory budget covers all concurrent instances together), the request
//! and response bodies streamed both ways with backpressure, the request timeout (the store
//! yields at every epoch tick, so a guest that never returns is cut without holding up anyone
//! else), and turning traps, out-of-memory and timeouts into 500/504 answers plus pod events.
//! It can serve HTTP/1.1 on any byte stream ([`HttpContainer::serve_connection`]); which
//! streams reach it (the pod network, the front proxy) is decided elsewhere, and where its
//! outgoing requests go is [`crate::route`]'s.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::Store;
use wasmtime::component::{Component, Resource};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use super::store::{ContainerData, ContainerRuntime, PodServices};
use super::{Exit, classify, out_of_memory};
use crate::counters::ContainerCounters;
use crate::engine::{Engine, Tier, TieredCode};
use crate::logs::Logs;
use crate::route::{BodyError, OutgoingRoute};
use crate::spec::ContainerSpec;
use crate::status::{EventKind, Events};
use crate::volume::Mount;

/// Per-container limits on requests; the defaults suit a development pod on a small machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long one request's instance may live, from instantiation to the handler's return
    /// (response body included). Past it the instance is dropped: 504 if no response was sent
    /// yet, otherwise the response body ends with an error.
    pub request_timeout: Duration,
    /// Instances alive at once for this container; further requests wait for a slot.
    pub max_concurrent_instances: usize,
    /// Requests allowed to wait for a slot; beyond it they get 503 at once.
    pub max_queued_requests: usize,
    /// How long a request waits for a slot before it gets 503.
    pub queue_timeout: Duration,
    /// Larger request bodies get 413 (checked against `content-length` before the guest
    /// runs, and counted while streaming for bodies without one).
    pub max_request_body_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout: Duration::from_secs(30),
            max_concurrent_instances: 100,
            // As many as the front proxy holds connections: at an edge entrance every open
            // keep-alive client may have one request waiting for an instance.
            max_queued_requests: 16_384,
            queue_timeout: Duration::from_secs(10),
            max_request_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why an http container could not be prepared or a connection could not be served.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("container {container:?}: cannot link the component as an http handler: {message}")]
    Link { container: String, message: String },
    #[error("container {container:?}: serving an HTTP connection failed: {source}")]
    Connection {
        container: String,
        #[source]
        source: hyper::Error,
    },
}

/// An http container, ready to serve any number of requests, each in a fresh instance.
pub struct HttpContainer {
    name: Arc<str>,
    runtime: ContainerRuntime,
    limits: HttpLimits,
    /// Baseline code until the optimized code is ready, then optimized code.
    code: TieredCode<ProxyPre<ContainerData>>,
    /// One permit per live instance.
    permits: Arc<Semaphore>,
    /// Requests currently waiting for a permit.
    queued: AtomicUsize,
}

impl HttpContainer {
    /// An http container on its own (tests, embedders): a pod network of its own, egress as
    /// its spec allows, and no pod routes until [`HttpContainer::with_outgoing`] gives some.
    pub fn new(
        engine: &Engine,
        component: &Component,
        spec: ContainerSpec,
        mounts: Vec<Mount>,
        logs: Logs,
        events: Events,
    ) -> Result<HttpContainer, HttpError> {
        let runtime = ContainerRuntime::new(spec, mounts, PodServices::standalone(engine, logs, events));
        let linker = super::linker(engine).map_err(|e| HttpError::Link {
            container: runtime.name().to_string(),
            message: format!("{e:#}"),
        })?;
        HttpContainer::in_pod(runtime, &linker, component)
    }

    /// Links a compiled component as an http handler of a pod.
    pub fn in_pod(
        runtime: ContainerRuntime,
        linker: &wasmtime::component::Linker<ContainerData>,
        component: &Component,
    ) -> Result<HttpContainer, HttpError> {
        let code =
            super::tiered_code(&runtime, linker, component, ProxyPre::new).map_err(|message| HttpError::Link {
                container: runtime.name().to_string(),
                message,
            })?;
        let limits = HttpLimits::default();
        runtime.counters().mark_serves_http();
        Ok(HttpContainer {
            name: runtime.name().into(),
            permits: Arc::new(Semaphore::new(limits.max_concurrent_instances.max(1))),
            limits,
            runtime,
            code,
            queued: AtomicUsize::new(0),
        })
    }

    /// Replaces the limits (before the container is shared).
    pub fn with_limits(mut self, limits: HttpLimits) -> HttpContainer {
        self.permits = Arc::new(Semaphore::new(limits.max_concurrent_instances.max(1)));
        self.limits = limits;
        self
    }

    /// Routes this container's outgoing requests (the pod gives each container a route that
    /// knows its egress policy).
    pub fn with_outgoing(mut self, route: Arc<dyn OutgoingRoute>) -> HttpContainer {
        self.runtime.set_routes(route);
        self
    }

    /// The container's spec.
    pub fn spec(&self) -> &ContainerSpec {
        self.runtime.spec()
    }

    /// What every Store of this container is built from.
    pub fn runtime(&self) -> &ContainerRuntime {
        &self.runtime
    }

    /// The container's in-process health check (`health = {}` probes).
    pub fn health_check(self: &Arc<Self>) -> crate::probe::HealthCheck {
        let this = self.clone();
        Arc::new(move || {
            let this = this.clone();
            Box::pin(async move {
                let code = this.code.instance();
                super::health::check(&this.runtime, code.pre.instance_pre()).await
            })
        })
    }

    /// The tier of the code the next request is served with.
    pub fn tier(&self) -> Tier {
        self.code.current().tier
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limits in force.
    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Instances alive now (requests being served, response bodies still streaming).
    pub fn in_flight(&self) -> usize {
        self.limits
            .max_concurrent_instances
            .max(1)
            .saturating_sub(self.permits.available_permits())
    }

    /// Requests waiting for an instance slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Serves one request in a fresh instance. Never fails: problems become 4xx/5xx answers
    /// (and events for traps, timeouts and host failures). The response body streams from the
    /// guest while it runs; the instance lives until its handler returns or the timeout. Every
    /// answer is counted with its status and its time to the response head (HTTP probes and
    /// in-pod requests included; a request whose caller gave up before the head is not).
    pub async fn handle<B>(&self, request: hyper::Request<B>) -> hyper::Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let arrived = std::time::Instant::now();
        let response = self.answer(request).await;
        self.runtime
            .counters()
            .record_response(response.status().as_u16(), arrived.elapsed());
        response
    }

    /// [`HttpContainer::handle`] without the counting.
    async fn answer<B>(&self, request: hyper::Request<B>) -> hyper::Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let limit = self.limits.max_request_body_bytes;
        if declared_length(request.headers()).is_some_and(|length| length > limit) {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        let Some(permit) = self.admit().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "too many concurrent requests\n");
        };

        let (mut parts, body) = request.into_parts();
        if parts.uri.authority().is_none() && !parts.headers.contains_key(HOST) {
            // HTTP/1.0 clients may omit Host; wasi:http needs an authority, and inside a pod
            // `localhost` is what the request reached.
            parts.headers.insert(HOST, HeaderValue::from_static("localhost"));
        }
        let over_limit = Arc::new(AtomicBool::new(false));
        let body = LimitedBody {
            inner: body.map_err(body_error).boxed_unsync(),
            seen: 0,
            limit,
            over_limit: over_limit.clone(),
            failed: false,
        };
        let request = hyper::Request::from_parts(parts, body);

        let code = self.code.instance();
        let mut store = match self.runtime.store_on(&code.engine, None) {
            Ok(store) => store,
            Err(message) => {
                self.runtime()
                    .events()
                    .emit(Some(&self.name), EventKind::RequestFailed { message });
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
        };
        let (response_tx, response_rx) = oneshot::channel();
        let resources = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|incoming| {
                let outparam = store.data_mut().http().new_response_outparam(response_tx)?;
                Ok((incoming, outparam))
            });
        let (incoming, outparam) = match resources {
            Ok(resources) => resources,
            Err(e) => {
                return plain(StatusCode::BAD_REQUEST, &format!("bad request: {e:#}\n"));
            }
        };

        let (outcome_tx, outcome_rx) = oneshot::channel();
        let guest = GuestRun {
            pre: code.pre.clone(),
            store,
            incoming,
            outparam,
            timeout: self.limits.request_timeout,
            container: self.name.clone(),
            events: self.runtime.events().clone(),
            counters: self.runtime.counters().clone(),
            permit,
        };
        // A task of its own: the guest keeps streaming the response body after this function
        // has returned the head.
        let task = tokio::spawn(guest.run(outcome_tx));
        // If nobody waits for the head any more (the client went away), nobody will ever read
        // the answer: stop the guest now instead of at the timeout.
        let mut abort = AbortGuard(Some(task.abort_handle()));

        let answer = response_rx.await;
        abort.disarm();
        match answer {
            Ok(Ok(response)) => {
                if over_limit.load(Ordering::Acquire) {
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                }
                let (parts, body) = response.into_parts();
                hyper::Response::from_parts(parts, ResponseBody::guest(body, outcome_rx, over_limit))
            }
            Ok(Err(code)) => {
                if over_limit.load(Ordering::Acquire) {
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                }
                self.runtime.events().emit(
                    Some(&self.name),
                    EventKind::RequestFailed {
                        message: format!("the handler answered with error {code:?}"),
                    },
                );
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
            // The response-outparam is gone without an answer: the guest trapped, timed out,
            // or returned (or dropped it) without answering. Its outcome says which.
            Err(_) => {
                let outcome = outcome_rx.await.unwrap_or(Outcome::Lost);
                if over_limit.load(Ordering::Acquire) {
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                }
                match outcome {
                    Outcome::TimedOut(_) => plain(StatusCode::GATEWAY_TIMEOUT, "request timed out\n"),
                    Outcome::Overloaded => plain(StatusCode::SERVICE_UNAVAILABLE, "no instance available\n"),
                    Outcome::Finished => {
                        self.runtime.events().emit(
                            Some(&self.name),
                            EventKind::RequestFailed {
                                message: "the handler returned without a response".into(),
                            },
                        );
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    }
                    Outcome::Trapped(_) | Outcome::Failed(_) | Outcome::Lost => {
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    }
                }
            }
        }
    }

    /// Serves HTTP/1.1 with keep-alive on one byte stream until the client closes it.
    pub async fn serve_connection<IO>(self: Arc<Self>, io: IO) -> Result<(), HttpError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_connection_until(io, std::future::pending()).await
    }

    /// Like [`HttpContainer::serve_connection`], but when `shutdown` completes the connection
    /// finishes the request in flight and then closes (for pod stop).
    pub async fn serve_connection_until<IO>(
        self: Arc<Self>,
        io: IO,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(true);
        self.serve_connection_with(io, shutdown, &builder).await
    }

    /// Like [`HttpContainer::serve_connection_until`], with the connection settings of `builder`
    /// (the front proxy's: header-read and keep-alive timeouts, with their timer).
    pub async fn serve_connection_with<IO>(
        self: Arc<Self>,
        io: IO,
        shutdown: impl Future<Output = ()> + Send,
        builder: &hyper::server::conn::http1::Builder,
    ) -> Result<(), HttpError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name = self.name.to_string();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let container = self.clone();
            async move { Ok::<_, Infallible>(container.handle(request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut shutdown = std::pin::pin!(shutdown);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = &mut shutdown => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        result.map_err(|source| HttpError::Connection {
            container: name,
            source,
        })
    }

    /// Waits for an instance slot, within the queue bounds; `None` means answer 503.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        let _slot = QueueSlot::take(&self.queued, self.limits.max_queued_requests)?;
        tokio::time::timeout(self.limits.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

impl fmt::Debug for HttpContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpContainer")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A request waiting for a slot; frees its place in the queue when dropped.
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take(queued: &'a AtomicUsize, max: usize) -> Option<QueueSlot<'a>> {
        let slot = QueueSlot(queued);
        (queued.fetch_add(1, Ordering::AcqRel) < max).then_some(slot)
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Aborts the guest task when dropped, unless disarmed.
struct AbortGuard(Option<tokio::task::AbortHandle>);

impl AbortGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// How one request's instance ended.
#[derive(Debug, Clone)]
enum Outcome {
    /// The handler returned.
    Finished,
    Trapped(String),
    TimedOut(Duration),
    /// The host could not instantiate it.
    Failed(String),
    /// The engine's instance pool is exhausted.
    Overloaded,
    /// The task ended without saying (aborted, or the runtime is shutting down).
    Lost,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Finished => f.write_str("the handler returned"),
            Outcome::Trapped(message) => write!(f, "the handler trapped: {message}"),
            Outcome::TimedOut(after) => write!(f, "the request timed out after {after:?}"),
            Outcome::Failed(message) => write!(f, "the request failed: {message}"),
            Outcome::Overloaded => f.write_str("no instance slot available"),
            Outcome::Lost => f.write_str("the request was cancelled"),
        }
    }
}

/// Everything one request's guest task owns.
struct GuestRun {
    pre: ProxyPre<ContainerData>,
    store: Store<ContainerData>,
    incoming: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
    timeout: Duration,
    container: Arc<str>,
    events: Events,
    /// Where the time spent running the guest is counted.
    counters: Arc<ContainerCounters>,
    /// Held until the instance is gone, so the concurrency limit counts live instances.
    permit: OwnedSemaphorePermit,
}

impl GuestRun {
    async fn run(self, outcome_tx: oneshot::Sender<Outcome>) {
        let GuestRun {
            pre,
            mut store,
            incoming,
            outparam,
            timeout,
            container,
            events,
            counters,
            permit,
        } = self;
        let call = async {
            let proxy = match pre.instantiate_async(&mut store).await {
                Ok(proxy) => proxy,
                Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                    return Outcome::Overloaded;
                }
                Err(e) => return Outcome::Failed(format!("cannot instantiate: {e:#}")),
            };
            match proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
            {
                Ok(()) => Outcome::Finished,
                Err(e) => match out_of_memory(classify(e), store.data().memory()) {
                    Exit::Trapped(message) => Outcome::Trapped(message),
                    exit @ Exit::OutOfMemory { .. } => Outcome::Trapped(exit.to_string()),
                    Exit::Code(code) => Outcome::Trapped(format!("the handler exited with code {code}")),
                    Exit::Failed(message) => Outcome::Failed(message),
                    Exit::Stopped | Exit::Restarted | Exit::Killed(_) => Outcome::Lost,
                },
            }
        };
        let outcome = tokio::time::timeout(timeout, counters.metered(call))
            .await
            .unwrap_or(Outcome::TimedOut(timeout));
        match &outcome {
            Outcome::Trapped(message) => events.emit(
                Some(&container),
                EventKind::RequestTrapped {
                    message: message.clone(),
                },
            ),
            Outcome::TimedOut(after) => events.emit(Some(&container), EventKind::RequestTimedOut { after: *after }),
            Outcome::Failed(message) => events.emit(
                Some(&container),
                EventKind::RequestFailed {
                    message: message.clone(),
                },
            ),
            Outcome::Overloaded => events.emit(
                Some(&container),
                EventKind::RequestFailed {
                    message: "the engine's instance pool is full".into(),
                },
            ),
            Outcome::Finished | Outcome::Lost => {}
        }
        // Order matters: the outcome is sent before the store is dropped. Dropping the store
        // drops the response body's sender, which ends the body; the body then reads the
        // outcome and turns a trap or timeout into an error instead of a clean, short end.
        let _ = outcome_tx.send(outcome);
        drop(store);
        drop(permit);
    }
}

/// The body of a response from [`HttpContainer::handle`]: the guest's stream, or a short text
/// from the host. A guest body cut by a trap, a timeout or the request size limit ends with an
/// error (the client sees an aborted response, never a silently short one).
pub struct ResponseBody {
    kind: BodyKind,
}

enum BodyKind {
    Text(Option<Bytes>),
    Guest {
        body: HyperOutgoingBody,
        outcome: Option<oneshot::Receiver<Outcome>>,
        over_limit: Arc<AtomicBool>,
    },
}

impl ResponseBody {
    fn text(text: Bytes) -> ResponseBody {
        ResponseBody {
            kind: BodyKind::Text(Some(text)),
        }
    }

    fn guest(
        body: HyperOutgoingBody,
        outcome: oneshot::Receiver<Outcome>,
        over_limit: Arc<AtomicBool>,
    ) -> ResponseBody {
        ResponseBody {
            kind: BodyKind::Guest {
                body,
                outcome: Some(outcome),
                over_limit,
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            BodyKind::Text(text) => Poll::Ready(text.take().map(|bytes| Ok(Frame::data(bytes)))),
            BodyKind::Guest {
                body,
                outcome,
                over_limit,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(None) => {
                    // The end of the guest's stream: a `finish`, or the store going away.
                    let Some(mut outcome) = outcome.take() else {
                        return Poll::Ready(None);
                    };
                    if over_limit.load(Ordering::Acquire) {
                        return Poll::Ready(Some(Err(BodyError::HttpRequestBodySize(None))));
                    }
                    match outcome.try_recv() {
                        // Still running after `finish` (or finished cleanly): a complete body.
                        Ok(Outcome::Finished) | Err(oneshot::error::TryRecvError::Empty) => Poll::Ready(None),
                        Ok(other) => Poll::Ready(Some(Err(BodyError::InternalError(Some(other.to_string()))))),
                        Err(oneshot::error::TryRecvError::Closed) => {
                            Poll::Ready(Some(Err(BodyError::InternalError(Some(Outcome::Lost.to_string())))))
                        }
                    }
                }
                other => other,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Text(text) => text.is_none(),
            // Never claim the end early: the outcome is checked when the stream ends.
            BodyKind::Guest { outcome, .. } => outcome.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            BodyKind::Text(None) => SizeHint::with_exact(0),
            BodyKind::Guest { body, .. } => body.size_hint(),
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Text(text) => f.debug_tuple("ResponseBody::Text").field(text).finish(),
            BodyKind::Guest { .. } => f.write_str("ResponseBody::Guest"),
        }
    }
}

/// A short plain-text answer from the host itself.
fn plain(status: StatusCode, text: &str) -> hyper::Response<ResponseBody> {
    let mut response = hyper::Response::new(ResponseBody::text(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The request's `content-length`, when present and well-formed (hyper has already rejected
/// conflicting values on connections it parsed).
fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Any body error, as the error type wasi:http streams carry (keeping the structured kinds).
fn body_error(error: impl Into<Box<dyn StdError + Send + Sync>>) -> BodyError {
    let error: Box<dyn StdError + Send + Sync> = error.into();
    match error.downcast::<BodyError>() {
        Ok(error) => *error,
        Err(error) => match error.downcast::<hyper::Error>() {
            Ok(error) => BodyError::Hyper(*error),
            Err(error) => BodyError::InternalError(Some(error.to_string())),
        },
    }
}

/// A request body that fails once more than `limit` bytes went through, and says so in a
/// flag the response path reads (to answer 413 instead of the guest's reaction to the error).
struct LimitedBody {
    inner: WasiBody,
    seen: u64,
    limit: u64,
    over_limit: Arc<AtomicBool>,
    failed: bool,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.seen = this.seen.saturating_add(data.len() as u64);
            if this.seen > this.limit {
                this.failed = true;
                // Set before the guest can see the error, so the response path always knows.
                this.over_limit.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(BodyError::HttpRequestBodySize(Some(this.seen)))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
