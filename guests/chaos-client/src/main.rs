//! `chaos-client`: the client of the chaos example. It sends numbered requests to a server of
//! its pod over `wasi:http` (POST, body `request N`, to an echo route) and accepts an answer
//! only when it is exactly its own body back. Every attempt has a timeout (the request's
//! connect, first-byte and between-bytes timeouts); a failed or timed-out attempt is retried
//! after a back-off that doubles up to a cap, so latency, resets and a partition slow it down
//! but never make it skip, repeat or accept a wrong answer.
//!
//! Usage: `chaos-client --url http://HOST:PORT/PATH [--requests N] [--timeout DURATION]
//! [--backoff DURATION] [--max-backoff DURATION] [--every DURATION]`
//! - `--requests N`      how many requests, then print a summary and exit (0, the default: forever)
//! - `--timeout D`       per attempt (default `500ms`)
//! - `--backoff D`       first pause after a failed attempt (default `50ms`), doubled each time
//! - `--max-backoff D`   longest pause (default `1s`)
//! - `--every D`         pause between requests (default `0s`)
//!
//! Output: `ok N after A attempt(s)` per request, `retry N: REASON` per failed attempt,
//! `WRONG N: ...` for an answer that is not the request's own (never expected), and at the end
//! `done N requests, R retries, W wrong`. Durations are `250ms`, `2s` or a number of
//! milliseconds.

use std::io::Write as _;
use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};

struct Options {
    scheme: String,
    authority: String,
    path: String,
    requests: u64,
    timeout: Duration,
    backoff: Duration,
    max_backoff: Duration,
    every: Duration,
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!(
                "chaos-client: {message}\nusage: chaos-client --url http://HOST:PORT/PATH [--requests N] \
                 [--timeout DURATION] [--backoff DURATION] [--max-backoff DURATION] [--every DURATION]"
            );
            std::process::exit(2);
        }
    };
    println!(
        "sending to {}://{}{} with a {:?} timeout per attempt",
        options.scheme, options.authority, options.path, options.timeout
    );
    flush();
    let (mut retries, mut wrong) = (0u64, 0u64);
    let mut n = 0u64;
    while options.requests == 0 || n < options.requests {
        let body = format!("request {n}");
        let mut pause = options.backoff;
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            match send(&options, body.as_bytes()) {
                Ok((200, answer)) if answer == body.as_bytes() => {
                    println!("ok {n} after {attempts} attempt(s)");
                    break;
                }
                Ok((200, answer)) => {
                    // A server that answers someone else's request is a bug no retry hides.
                    wrong += 1;
                    println!("WRONG {n}: got {:?}", String::from_utf8_lossy(&answer));
                    break;
                }
                Ok((status, _)) => println!("retry {n}: status {status}"),
                Err(reason) => println!("retry {n}: {reason}"),
            }
            flush();
            retries += 1;
            std::thread::sleep(pause);
            pause = (pause * 2).min(options.max_backoff);
        }
        flush();
        n += 1;
        if !options.every.is_zero() {
            std::thread::sleep(options.every);
        }
    }
    println!("done {n} requests, {retries} retries, {wrong} wrong");
    flush();
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// One attempt: POST `body`, read the whole answer; the error names the wasi:http code.
fn send(options: &Options, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Post);
    let scheme = if options.scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(&options.authority));
    let _ = request.set_path_with_query(Some(&options.path));
    let timeout = Some(options.timeout.as_nanos().min(u128::from(u64::MAX)) as u64);
    let request_options = RequestOptions::new();
    let _ = request_options.set_connect_timeout(timeout);
    let _ = request_options.set_first_byte_timeout(timeout);
    let _ = request_options.set_between_bytes_timeout(timeout);
    let outgoing = request.body().map_err(|()| "no request body".to_string())?;
    let future = outgoing_handler::handle(request, Some(request_options)).map_err(|e| code(&e))?;
    {
        let stream = outgoing.write().map_err(|()| "no request body stream".to_string())?;
        // The body is tiny: one write. A failure shows up as the response's error below.
        let _ = stream.blocking_write_and_flush(body);
    }
    let _ = OutgoingBody::finish(outgoing, None);
    let response = loop {
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(e))) => return Err(code(&e)),
            Some(Err(())) => return Err("response taken twice".into()),
            None => future.subscribe().block(),
        }
    };
    let status = response.status();
    let incoming = response.consume().map_err(|()| "no response body".to_string())?;
    let input = incoming.stream().map_err(|()| "no response body stream".to_string())?;
    let mut bytes = Vec::new();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                return Err(wasip2::http::types::http_error_code(&e).map_or_else(|| e.to_debug_string(), |c| code(&c)));
            }
        }
    }
    drop(input);
    let _ = IncomingBody::finish(incoming);
    Ok((status, bytes))
}

fn code(e: &ErrorCode) -> String {
    format!("{e:?}")
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut url = None;
    let mut options = Options {
        scheme: String::new(),
        authority: String::new(),
        path: String::new(),
        requests: 0,
        timeout: Duration::from_millis(500),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        every: Duration::ZERO,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--requests" => options.requests = value()?.parse().map_err(|e| format!("--requests: {e}"))?,
            "--timeout" => options.timeout = parse_duration(&value()?)?,
            "--backoff" => options.backoff = parse_duration(&value()?)?,
            "--max-backoff" => options.max_backoff = parse_duration(&value()?)?,
            "--every" => options.every = parse_duration(&value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let (scheme, rest) = url.split_once("://").ok_or("--url must be scheme://authority/path")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    options.scheme = scheme.to_string();
    options.authority = authority.to_string();
    options.path = path.to_string();
    if options.timeout.is_zero() {
        return Err("--timeout must be longer than zero".into());
    }
    Ok(options)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (250ms, 2s)");
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    if let Some(s) = text.strip_suffix('s') {
        return s.parse::<f64>().ok().filter(|s| *s >= 0.0).map(Duration::from_secs_f64).ok_or_else(bad);
    }
    text.parse().map(Duration::from_millis).map_err(|_| bad())
}
