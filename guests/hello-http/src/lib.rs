//! `hello-http`: a WASI 0.2 http component (it exports `wasi:http/incoming-handler`) with one
//! route per behaviour the host has to get right, so wasmpod's tests and examples exercise a
//! real guest instead of a mock.
//!
//! Routes (by path, any method):
//! - `/`            200 `hello from wasmpod`, header `x-wasmpod: hello`
//! - `/echo`        200, streams the request body back chunk by chunk (never the whole body in
//!                  memory), header `x-echo: streaming`
//! - `/count`       reads the whole request body and answers its length in bytes; 400 with the
//!                  error if reading fails (e.g. the host cut the body at its size limit)
//! - `/env`         200, the container's environment as `KEY=VALUE` lines, sorted; also prints
//!                  `env requested` on stdout
//! - `/trap`        panics (a trap) before answering
//! - `/loop`        spins forever without answering (only the host's timeout ends it)
//! - `/trap-midway` answers 200, sends `partial` and flushes, then panics
//! - `/loop-midway` answers 200, sends `partial` and flushes, then spins forever
//! - `/fetch?url=U` GETs `U` with `wasi:http/outgoing-handler` and answers its status and body,
//!                  with header `x-upstream-status`; 502 with `error: CODE` when the request fails.
//!                  `&connect_ms=N`, `&first_byte_ms=N`, `&between_bytes_ms=N` set its
//!                  request-options timeouts
//! - `/alloc?mib=N` allocates and touches N MiB, then answers `held N MiB`
//! - `/sleep?ms=N`  waits N milliseconds, then answers `slept N ms`
//! - `/slow-body?ms=N` answers 200 and `first`, then waits N milliseconds before `second`
//! - `/tcp?port=N&send=TEXT` connects to `localhost:N` with `wasi:sockets` (std::net), sends
//!                  TEXT, half-closes and answers what came back; 502 with `error: ...` on failure
//! - anything else  404

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(HelloHttp);

struct HelloHttp;

/// Read and write in pieces of this size: big enough to be cheap, small enough to stream.
const CHUNK: u64 = 64 * 1024;

impl wasip2::exports::http::incoming_handler::Guest for HelloHttp {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (path_with_query.clone(), String::new()),
        };
        match path.as_str() {
            "/" => respond(
                out,
                200,
                &[("x-wasmpod", "hello"), ("content-type", "text/plain")],
                b"hello from wasmpod\n",
            ),
            "/echo" => echo(request, out),
            "/count" => count(request, out),
            "/env" => {
                println!("env requested");
                let mut vars: Vec<(String, String)> = std::env::vars().collect();
                vars.sort();
                let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                respond(out, 200, &[("content-type", "text/plain")], text.as_bytes());
            }
            "/trap" => panic!("the /trap route traps on purpose"),
            "/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/trap-midway" => {
                partial(out);
                panic!("the /trap-midway route traps after sending part of its body");
            }
            "/loop-midway" => {
                partial(out);
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/fetch" => fetch(&query, out),
            "/alloc" => {
                let mib: usize = param(&query, "mib").and_then(|v| v.parse().ok()).unwrap_or(1);
                let mut held: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mib {
                    // Touch every page, so the memory is really used, not only reserved.
                    held.push(vec![1u8; 1 << 20]);
                }
                let text = format!("held {} MiB\n", std::hint::black_box(&held).len());
                respond(out, 200, &[("content-type", "text/plain")], text.as_bytes());
            }
            "/sleep" => {
                let ms: u64 = param(&query, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                respond(out, 200, &[], format!("slept {ms} ms\n").as_bytes());
            }
            "/slow-body" => {
                let ms: u64 = param(&query, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                let (response, outgoing) = start_response(200, &[("content-type", "text/plain")]);
                ResponseOutparam::set(out, Ok(response));
                if let Ok(mut stream) = outgoing.write() {
                    let _ = stream.write_all(b"first\n").and_then(|()| std::io::Write::flush(&mut stream));
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    let _ = stream.write_all(b"second\n").and_then(|()| std::io::Write::flush(&mut stream));
                }
                let _ = OutgoingBody::finish(outgoing, None);
            }
            "/tcp" => tcp(&query, out),
            _ => respond(out, 404, &[("content-type", "text/plain")], b"not found\n"),
        }
    }
}

/// Sends a complete response with a small body.
fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let (response, outgoing) = start_response(status, headers);
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        // A client that went away is not the guest's problem; just stop writing.
        let _ = stream.write_all(body).and_then(|()| std::io::Write::flush(&mut stream));
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Sends the head and the start of a body, and leaves the body open (never finished).
fn partial(out: ResponseOutparam) {
    let (response, outgoing) = start_response(200, &[("content-type", "text/plain")]);
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream
            .write_all(b"partial")
            .and_then(|()| std::io::Write::flush(&mut stream));
        // Keep the stream and body alive: the handler is about to trap or spin.
        std::mem::forget(stream);
    }
    std::mem::forget(outgoing);
}

fn start_response(status: u16, headers: &[(&str, &str)]) -> (OutgoingResponse, OutgoingBody) {
    let fields = Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name, value.as_bytes());
    }
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let body = response.body().expect("a new response's body is taken once");
    (response, body)
}

/// Streams the request body back: each chunk is written out before the next is read, so the
/// guest holds at most one chunk and the host's backpressure reaches the client.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let Ok(incoming) = request.consume() else {
        return respond(out, 500, &[], b"request body already consumed\n");
    };
    let Ok(input) = incoming.stream() else {
        return respond(out, 500, &[], b"request body stream unavailable\n");
    };
    let (response, outgoing) = start_response(
        200,
        &[("x-echo", "streaming"), ("content-type", "application/octet-stream")],
    );
    ResponseOutparam::set(out, Ok(response));
    let Ok(mut output) = outgoing.write() else { return };
    loop {
        match input.blocking_read(CHUNK) {
            Ok(chunk) => {
                if output.write_all(&chunk).is_err() {
                    return;
                }
            }
            Err(wasip2::io::streams::StreamError::Closed) => break,
            // The request body failed: end without `finish`, so the response is incomplete
            // rather than silently short.
            Err(_) => return,
        }
    }
    let _ = std::io::Write::flush(&mut output);
    drop(output);
    drop(input);
    let _ = IncomingBody::finish(incoming);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Reads the whole body and reports its length (or the read error).
fn count(request: IncomingRequest, out: ResponseOutparam) {
    let Ok(incoming) = request.consume() else {
        return respond(out, 500, &[], b"request body already consumed\n");
    };
    let Ok(mut input) = incoming.stream() else {
        return respond(out, 500, &[], b"request body stream unavailable\n");
    };
    let mut total: u64 = 0;
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        match std::io::Read::read(&mut input, &mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => {
                return respond(
                    out,
                    400,
                    &[],
                    format!("read failed after {total} bytes: {e}\n").as_bytes(),
                );
            }
        }
    }
    respond(
        out,
        200,
        &[("content-type", "text/plain")],
        format!("{total}\n").as_bytes(),
    );
}

/// GETs the URL in the `url=` query parameter and relays the answer.
fn fetch(query: &str, out: ResponseOutparam) {
    let Some(url) = query.split('&').find_map(|pair| pair.strip_prefix("url=")) else {
        return respond(out, 400, &[], b"missing url= parameter\n");
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return respond(out, 400, &[], b"url must be scheme://authority/path\n");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let options = wasip2::http::types::RequestOptions::new();
    let ms = |name: &str| param(query, name).and_then(|v| v.parse::<u64>().ok()).map(|ms| ms * 1_000_000);
    let _ = options.set_connect_timeout(ms("connect_ms"));
    let _ = options.set_first_byte_timeout(ms("first_byte_ms"));
    let _ = options.set_between_bytes_timeout(ms("between_bytes_ms"));
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match send(request, options) {
        Ok((status, body)) => {
            let status_text = status.to_string();
            respond(out, status, &[("x-upstream-status", &status_text)], &body)
        }
        Err(code) => respond(out, 502, &[], format!("error: {code:?}\n").as_bytes()),
    }
}

fn send(
    request: OutgoingRequest,
    options: wasip2::http::types::RequestOptions,
) -> Result<(u16, Vec<u8>), ErrorCode> {
    let future = outgoing_handler::handle(request, Some(options))?;
    let response = loop {
        match future.get() {
            Some(Ok(result)) => break result?,
            Some(Err(())) => return Err(ErrorCode::InternalError(Some("response taken twice".into()))),
            None => future.subscribe().block(),
        }
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| ErrorCode::InternalError(Some("no body".into())))?;
    let input = body
        .stream()
        .map_err(|()| ErrorCode::InternalError(Some("no body stream".into())))?;
    let mut bytes = Vec::new();
    loop {
        match input.blocking_read(CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            // The body failed: say how, as the host reported it.
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                let code = wasip2::http::types::http_error_code(&e);
                return Err(code.unwrap_or_else(|| ErrorCode::InternalError(Some(e.to_debug_string()))));
            }
        }
    }
    drop(input);
    let _ = IncomingBody::finish(body);
    Ok((status, bytes))
}

/// The value of `name=` in a query string.
fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// Talks to a pod port over `wasi:sockets` (an http container has the pod network too).
fn tcp(query: &str, out: ResponseOutparam) {
    use std::net::{Shutdown, TcpStream};
    let Some(port) = param(query, "port").and_then(|p| p.parse::<u16>().ok()) else {
        return respond(out, 400, &[], b"missing port= parameter\n");
    };
    let text = param(query, "send").unwrap_or("");
    let exchange = || -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(("localhost", port))?;
        stream.write_all(text.as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok(reply)
    };
    match exchange() {
        Ok(reply) => respond(out, 200, &[], &reply),
        Err(e) => respond(out, 502, &[], format!("error: {e}\n").as_bytes()),
    }
}
