//! The pod's virtual network against the kernel's loopback, side by side (issue 3, "Benchmark").
//!
//! Host side (tokio `AsyncRead`/`AsyncWrite`, identical code for both transports, connection
//! set-up excluded from the stream figure):
//! - `host_stream_16MiB/{pod,kernel}`: one connection, 16 MiB written in 64 KiB writes by one
//!   task and read to EOF in 64 KiB reads by another (`PodNetwork::listen_host` + `connect`
//!   vs. `tokio::net::TcpListener` on 127.0.0.1:0 + `TcpStream`);
//! - `host_connect_rtt/{pod,kernel}`: connect + accept + 1-byte request + 1-byte reply + close.
//! - `pod_idle_fault` in both groups: `pod` with a fault installed on another port (what an
//!   idle fault table costs; `pod` itself has an empty table).
//!
//! Container to container (the `netcheck` guest, two containers each in its own Store, linked
//! with `wasmpod::net::p2::add_to_linker`) vs. a native Rust `std::net` thread pair over kernel
//! loopback running the same steps (the functions below mirror `guests/netcheck`):
//! - `guest_stream_16MiB/{pod_guests,native_threads}`: `stream` → `sink`, one-way 16 MiB,
//!   timed by the client from connect to EOF (guest clock; instantiation excluded);
//! - `guest_echo_16MiB/{pod_guests,native_threads}`: the existing `send` → `echo` steps, 16 MiB
//!   in lock-step 64 KiB chunks, each echoed and compared; timed on the host around the whole
//!   client container (one instantiation per criterion sample, amortized over its iterations);
//! - `guest_connect_rtt/{pod_guests,native_threads}`: `ping` → `echo`, connect + 1-byte round
//!   trip + close, timed by the client.
//!
//! Run: `cargo bench --bench pod_network` (ratios: `benches/compare.sh`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wasmpod::net::fault::{Fault, FaultKind};
use wasmpod::net::p2::{NetCtxView, NetView};
use wasmpod::net::{ContainerNet, PodNetwork};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

const MIB: u64 = 1024 * 1024;
const STREAM_BYTES: u64 = 16 * MIB;
/// netcheck's chunk size, used for every write and read here too.
const CHUNK: usize = 64 * 1024;
const POD_PORT: u16 = 5000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

// ---------------------------------------------------------------------------------------------
// Host side: tokio streams, same code for both transports.

/// Writes `bytes` in CHUNK writes on one task, reads to EOF on another; returns bytes read.
async fn stream_once<C, S>(client: C, server: S, bytes: u64) -> u64
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let writer = tokio::spawn(async move {
        let mut c = client;
        let out: Vec<u8> = (0..CHUNK as u64).map(pattern).collect();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            c.write_all(&out[..n]).await.expect("write");
            sent += n as u64;
        }
        c.shutdown().await.expect("shutdown");
        c
    });
    let reader = tokio::spawn(async move {
        let mut s = server;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let total = reader.await.expect("reader");
    drop(writer.await.expect("writer"));
    total
}

/// Server half of the connect benchmark: per connection, echo one byte and close.
async fn serve_ping<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("server read");
    s.write_all(&b).await.expect("server write");
}

/// Client half: 1-byte request, 1-byte reply, then the connection is dropped.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    s.write_all(b"p").await.expect("client write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("client read");
}

async fn kernel_pair(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let addr = listener.local_addr().unwrap();
    let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (c.expect("connect"), s.expect("accept").0)
}

/// A fresh pod network; with `idle_fault`, a fault on another port (the table is not empty,
/// nothing matches the benchmark's links): what an idle fault table costs.
fn pod_network(idle_fault: bool) -> Arc<PodNetwork> {
    let net = PodNetwork::new();
    if idle_fault {
        net.faults().add(Fault::new(
            FaultKind::Latency {
                latency: Duration::from_millis(1),
                jitter: Duration::ZERO,
            },
            "9".parse().expect("target"),
        ));
    }
    net
}

fn host_benches(c: &mut Criterion) {
    let rt = runtime();

    let mut g = c.benchmark_group("host_stream_16MiB");
    g.throughput(Throughput::Bytes(STREAM_BYTES))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for (name, idle_fault) in [("pod", false), ("pod_idle_fault", true)] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let net = pod_network(idle_fault);
                let listener = net.listen_host(POD_PORT, 8).expect("listen");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let client = net.connect(POD_PORT).expect("connect");
                    let server = listener.accept().await.expect("accept");
                    let t = Instant::now();
                    let got = stream_once(client, server, STREAM_BYTES).await;
                    total += t.elapsed();
                    assert_eq!(got, STREAM_BYTES);
                }
                total
            })
        });
    }
    g.bench_function("kernel", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (client, server) = kernel_pair(&listener).await;
                let t = Instant::now();
                let got = stream_once(client, server, STREAM_BYTES).await;
                total += t.elapsed();
                assert_eq!(got, STREAM_BYTES);
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("host_connect_rtt");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for (name, idle_fault) in [("pod", false), ("pod_idle_fault", true)] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let net = pod_network(idle_fault);
                let listener = net.listen_host(POD_PORT, 128).expect("listen");
                let server = tokio::spawn(async move {
                    for _ in 0..iters {
                        serve_ping(listener.accept().await.expect("accept")).await;
                    }
                });
                let t = Instant::now();
                for _ in 0..iters {
                    ping(net.connect(POD_PORT).expect("connect")).await;
                }
                let elapsed = t.elapsed();
                server.await.expect("server");
                elapsed
            })
        });
    }
    g.bench_function("kernel", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                for _ in 0..iters {
                    serve_ping(listener.accept().await.expect("accept").0).await;
                }
            });
            let t = Instant::now();
            for _ in 0..iters {
                ping(tokio::net::TcpStream::connect(addr).await.expect("connect")).await;
            }
            let elapsed = t.elapsed();
            server.await.expect("server");
            elapsed
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Guests: netcheck containers, each in its own Store (as tests/net_guests.rs runs them).

struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    net: ContainerNet,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl NetView for Ctx {
    fn net_view(&mut self) -> NetCtxView<'_> {
        NetCtxView {
            table: &mut self.table,
            net: &self.net,
        }
    }
}

struct Guest {
    engine: Engine,
    component: Component,
    linker: Linker<Ctx>,
}

fn netcheck() -> PathBuf {
    Path::new(env!("WASMPOD_GUESTS_DIR")).join("netcheck.wasm")
}

fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        let engine = Engine::new(&Config::new()).expect("engine");
        let component = Component::from_file(&engine, netcheck()).expect("compile netcheck");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        wasmpod::net::p2::add_to_linker(&mut linker).expect("pod network");
        Guest {
            engine,
            component,
            linker,
        }
    })
}

/// Runs netcheck with `args` as container `name` of `pod`; returns its stdout (exit 0 asserted).
async fn run_guest(pod: Arc<PodNetwork>, name: &'static str, args: String) -> String {
    let g = guest();
    let stdout = MemoryOutputPipe::new(16 << 20);
    let stderr = MemoryOutputPipe::new(1 << 20);
    let mut argv = vec!["netcheck".to_string()];
    argv.extend(args.split_whitespace().map(String::from));
    let wasi = WasiCtx::builder()
        .args(&argv)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let ctx = Ctx {
        wasi,
        table: ResourceTable::new(),
        // Counted as every container of a pod is (`wasmpod::counters`), so the figures
        // include the cost of the per-container byte counters.
        net: pod
            .attach(name)
            .counting_into(wasmpod::counters::ContainerCounters::new()),
    };
    let mut store = Store::new(&g.engine, ctx);
    let res = async {
        let cmd = Command::instantiate_async(&mut store, &g.component, &g.linker).await?;
        cmd.wasi_cli_run().call_run(&mut store).await
    }
    .await;
    let code = match res {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 1,
        Err(e) => e.downcast_ref::<I32Exit>().map(|c| c.0).unwrap_or(-1),
    };
    drop(store);
    let out = String::from_utf8_lossy(&stdout.contents()).to_string();
    assert_eq!(
        code,
        0,
        "{name} failed: {out}\nstderr: {}",
        String::from_utf8_lossy(&stderr.contents())
    );
    out
}

/// `ITERS` copies of `step` joined by `&&`.
fn repeat(step: &str, iters: u64) -> String {
    vec![step; iters as usize].join(" && ")
}

/// Sum of the NANOS in every line `... in NANOS ns` of `out`.
fn reported(out: &str, expect_lines: u64) -> Duration {
    let nanos: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_suffix(" ns")?.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(nanos.len() as u64, expect_lines, "unexpected output: {out}");
    Duration::from_nanos(nanos.iter().sum())
}

/// Starts `server_args` as container "server", waits until it listens on POD_PORT, runs
/// `client_args` as container "client"; returns (client stdout, host wall time of the client).
async fn guest_pair(server_args: String, client_args: String) -> (String, Duration) {
    let pod = PodNetwork::new();
    let server = tokio::spawn(run_guest(pod.clone(), "server", server_args));
    tokio::time::timeout(Duration::from_secs(60), pod.wait_listening(POD_PORT))
        .await
        .expect("server listening");
    let t = Instant::now();
    let out = tokio::spawn(run_guest(pod.clone(), "client", client_args))
        .await
        .expect("client");
    let wall = t.elapsed();
    server.await.expect("server");
    (out, wall)
}

// Native mirrors of the netcheck steps (same chunking, same checks).

fn native_sink(l: &TcpListener, n: u64) {
    let mut buf = vec![0u8; CHUNK];
    for _ in 0..n {
        let (mut s, _) = l.accept().expect("accept");
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        drop(s);
        std::hint::black_box(total);
    }
}

fn native_stream(addr: SocketAddr, bytes: u64) -> Duration {
    let out: Vec<u8> = (0..CHUNK as u64).map(pattern).collect();
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        s.write_all(&out[..n]).expect("write");
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to end");
    start.elapsed()
}

fn native_echo(l: &TcpListener, conns: u64) {
    for _ in 0..conns {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("write");
        }
        s.shutdown(Shutdown::Write).expect("shutdown");
    }
}

fn native_send(addr: SocketAddr, bytes: u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut fnv: u64 = 0xcbf29ce484222325;
    let mut sent = 0u64;
    let mut out = vec![0u8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        for (k, b) in out[..n].iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        s.write_all(&out[..n]).expect("write");
        s.read_exact(&mut back[..n]).expect("read echo");
        assert!(back[..n] == out[..n], "echo differs");
        for b in &back[..n] {
            fnv = (fnv ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to end");
    assert!(rest.is_empty());
    std::hint::black_box(fnv);
}

fn native_ping(addr: SocketAddr, count: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..count {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"p").expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read");
    }
    start.elapsed()
}

/// Runs `server` on one thread and `client` on another over a fresh 127.0.0.1:0 listener.
fn native_pair<T: Send>(server: impl FnOnce(&TcpListener) + Send, client: impl FnOnce(SocketAddr) -> T + Send) -> T {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| server(&l));
        s.spawn(move || client(addr)).join().expect("client thread")
    })
}

fn guest_benches(c: &mut Criterion) {
    let rt = runtime();
    guest(); // compile once, outside any measurement
    let addr = format!("127.0.0.1:{POD_PORT}");

    let mut g = c.benchmark_group("guest_stream_16MiB");
    g.throughput(Throughput::Bytes(STREAM_BYTES))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("pod_guests", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let addr = addr.clone();
            async move {
                let (out, _) = guest_pair(
                    format!("listen {addr} && sink {iters}"),
                    repeat(&format!("stream {addr} {STREAM_BYTES}"), iters),
                )
                .await;
                reported(&out, iters)
            }
        })
    });
    g.bench_function("native_threads", |b| {
        b.iter_custom(|iters| {
            native_pair(
                |l| native_sink(l, iters),
                |a| (0..iters).map(|_| native_stream(a, STREAM_BYTES)).sum(),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("guest_echo_16MiB");
    g.throughput(Throughput::Bytes(STREAM_BYTES))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("pod_guests", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let addr = addr.clone();
            async move {
                let (out, wall) = guest_pair(
                    format!("listen {addr} && echo {iters}"),
                    repeat(&format!("send {addr} {STREAM_BYTES}"), iters),
                )
                .await;
                assert_eq!(out.matches("sent 16777216 echoed 16777216").count() as u64, iters);
                wall
            }
        })
    });
    g.bench_function("native_threads", |b| {
        b.iter_custom(|iters| {
            native_pair(
                |l| native_echo(l, iters),
                |a| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        native_send(a, STREAM_BYTES);
                    }
                    t.elapsed()
                },
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("guest_connect_rtt");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("pod_guests", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let addr = addr.clone();
            async move {
                let (out, _) =
                    guest_pair(format!("listen {addr} && echo {iters}"), format!("ping {addr} {iters}")).await;
                reported(&out, 1)
            }
        })
    });
    g.bench_function("native_threads", |b| {
        b.iter_custom(|iters| native_pair(|l| native_echo(l, iters), |a| native_ping(a, iters)))
    });
    g.finish();
}

criterion_group!(benches, host_benches, guest_benches);
criterion_main!(benches);
