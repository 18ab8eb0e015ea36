//! The ceiling for the HTTP comparison (issue 4, "Benchmark"): a native hyper HTTP/1.1 server
//! answering every request the way `guests/hello-http` answers `/` (200, `x-wasmpod: hello`,
//! `content-type: text/plain`, body `hello from wasmpod\n`), on a tokio multi-thread runtime with
//! the default worker count (one per core) and keep-alive — the same stack wasmpod's front proxy
//! and `wasmtime serve` use, minus the WebAssembly instance.
//!
//! It is not a criterion bench: `benches/http_compare.sh` starts it and puts load on it.
//!
//!   cargo bench --bench native_hello -- --serve 127.0.0.1:8082
//!
//! With `--serve ADDR` it binds ADDR (port 0 picks a free one), prints `listening on ADDR` and
//! serves until killed. Without it (e.g. a plain `cargo bench`) it does nothing and exits 0, so
//! `cargo bench` over every bench never blocks on it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use wasmtime_wasi_http::io::TokioIo;

const BODY: &[u8] = b"hello from wasmpod\n";

async fn hello(_request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = Response::builder()
        .status(200)
        .header("x-wasmpod", "hello")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("a static response is valid");
    Ok(response)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(i) = args.iter().position(|a| a == "--serve") else {
        eprintln!("native_hello: nothing to do without --serve ADDR (see benches/http_compare.sh)");
        return;
    };
    let addr: SocketAddr = match args.get(i + 1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: native_hello --serve ADDR   (e.g. 127.0.0.1:0)");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| {
            eprintln!("native_hello: cannot bind {addr}: {e}");
            std::process::exit(1);
        });
        println!("listening on {}", listener.local_addr().expect("local addr"));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("native_hello: accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    });
}
