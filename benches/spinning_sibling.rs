//! Latency of a serving container with and without a busy-looping sibling in the same pod
//! (issue 5, "Benchmark"; goal: the spinning sibling adds under 10 ms at p99).
//!
//! Each scenario is one pod, built in Rust and run through the library API exactly as
//! `wasmpod run` runs it (a tokio multi-thread runtime with one worker per core, the front proxy
//! on 127.0.0.1:0):
//! - server `hello`: `guests/hello-http` as an http container (fresh instance per request),
//!   `GET /` on one keep-alive connection per client;
//! - server `web`: `guests/webserver`, a `std::net` command container (one connection at a time,
//!   `Connection: close`), `GET /hello`, a new connection per request;
//! - sibling `none` / `spin` (`toolbox spin`: loops forever without yielding) / `spin cpu=0.25`
//!   (the same with `resources.cpu = 0.25`, set through `wasmpod::spec::Resources`) / the
//!   control `native thread` (no sibling container; a plain thread of the bench process spins
//!   instead: what any busy loop costs on these cores, with wasmpod's scheduling out of it).
//!
//! The load comes from closed-loop clients (each sends its next request when the previous answer
//! has arrived) on their own OS thread and current-thread runtime, so a stalled pod worker never
//! delays the clock that measures it: `c=1` (idle latency, one request at a time) and `c=8`
//! (eight concurrent clients). Every request is timed from before it is written to after the
//! whole body is read; the table gives the percentiles of all of them, the number of requests,
//! errors (non-200, I/O error or no answer within 5 s), and the CPU the pod used (the process's
//! CPU time minus the client thread's, in cores; it includes the control's spinning thread).
//!
//!   cargo bench --bench spinning_sibling                         # everything, 5 s per phase
//!   cargo bench --bench spinning_sibling -- --secs 10 --clients 1,8 hello
//!
//! Positional arguments filter scenarios by substring (e.g. `hello`, `web`, `cpu`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use wasmpod::spec::Resources;
use wasmpod::{Pod, PodOptions, PodSpec};
use wasmtime_wasi_http::io::TokioIo;

const POD_PORT: u16 = 8080;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq)]
enum Server {
    /// guests/hello-http, an http container; keep-alive.
    Hello,
    /// guests/webserver, std::net; a connection per request.
    Web,
}

#[derive(Clone, Copy, PartialEq)]
enum Sibling {
    None,
    Spin,
    SpinCpu(f64),
    /// Control: no sibling container, but a native thread of the bench process spinning for the
    /// whole scenario. It shows what any busy loop costs on this machine's cores (the OS sharing
    /// them), as opposed to what the spinning container costs inside wasmpod.
    NativeThread,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Hello => "hello (wasi:http)",
            Server::Web => "web (std::net)",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Server::Hello => "/",
            Server::Web => "/hello",
        }
    }
}

impl Sibling {
    fn name(self) -> String {
        match self {
            Sibling::None => "none".into(),
            Sibling::Spin => "spin".into(),
            Sibling::SpinCpu(share) => format!("spin cpu={share}"),
            Sibling::NativeThread => "native thread".into(),
        }
    }
}

fn guest(file: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("guests/target/wasm32-wasip2/release")
        .join(file);
    assert!(
        path.exists(),
        "{} is missing: `cargo build` builds the guests",
        path.display()
    );
    path
}

fn pod_spec(server: Server, sibling: Sibling) -> PodSpec {
    // The spec is written as TOML (as a user would); the CPU share is set in Rust afterwards,
    // through `wasmpod::spec::Resources` (945e165, where the first figures were taken, did not
    // parse `resources` from TOML yet).
    let mut toml = format!("name = \"bench\"\n[expose]\nport = {POD_PORT}\n");
    match server {
        Server::Hello => {
            toml += &format!(
                "[[containers]]\nname = \"hello\"\ncomponent = {:?}\nports = [{POD_PORT}]\n",
                guest("hello_http.wasm")
            )
        }
        Server::Web => {
            toml += &format!(
                "[[containers]]\nname = \"web\"\ncomponent = {:?}\nargs = [\"{POD_PORT}\"]\nports = [{POD_PORT}]\n",
                guest("webserver.wasm")
            )
        }
    }
    if matches!(sibling, Sibling::Spin | Sibling::SpinCpu(_)) {
        toml += &format!(
            "[[containers]]\nname = \"spinner\"\ncomponent = {:?}\nargs = [\"spin\"]\n",
            guest("toolbox.wasm")
        );
    }
    let mut spec = PodSpec::from_toml(
        &toml,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bench.toml").as_path(),
    )
    .unwrap_or_else(|e| panic!("bench spec:\n{toml}\n{e}"));
    // Neither guest exits when told to stop (its stdin closes): do not wait the 30 s grace
    // period at the end of each scenario.
    spec.termination_grace_period = Duration::ZERO;
    if let Sibling::SpinCpu(share) = sibling {
        let spinner = spec
            .containers
            .iter_mut()
            .find(|c| c.name == "spinner")
            .expect("spinner");
        spinner.resources = Resources {
            cpu: Some(share),
            ..spinner.resources
        };
    }
    spec
}

/// One closed-loop client's connection (None for a new connection per request).
type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn one_request(addr: SocketAddr, server: Server, kept: &mut Option<Sender>) -> Result<(), String> {
    if kept.as_ref().is_none_or(|s| s.is_closed()) {
        *kept = Some(connect(addr).await.map_err(|e| format!("connect: {e}"))?);
    }
    let sender = kept.as_mut().expect("connected above");
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let request = Request::get(server.path())
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != 200 || !body.starts_with(b"hello from") {
        return Err(format!("status {status}, body {:?}", String::from_utf8_lossy(&body)));
    }
    if server == Server::Web {
        *kept = None; // Connection: close
    }
    Ok(())
}

struct Phase {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    client_cpu: Duration,
}

/// Runs `clients` closed-loop clients for `warmup` (not recorded) then `secs`.
fn load(addr: SocketAddr, server: Server, clients: usize, run: Duration) -> Phase {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let cpu0 = thread_cpu();
        let phase = rt.block_on(async move {
            let start = Instant::now();
            let record_from = start + WARMUP;
            let end = record_from + run;
            let mut tasks = Vec::new();
            for _ in 0..clients {
                tasks.push(tokio::spawn(async move {
                    let mut kept = None;
                    let mut latencies = Vec::new();
                    let mut errors = 0;
                    let mut first_error = None;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let result =
                            match tokio::time::timeout(REQUEST_TIMEOUT, one_request(addr, server, &mut kept)).await {
                                Ok(result) => result,
                                Err(_) => Err("no answer within 5 s".to_string()),
                            };
                        let took = t0.elapsed();
                        if t0 < record_from {
                            continue;
                        }
                        match result {
                            Ok(()) => latencies.push(took),
                            Err(e) => {
                                kept = None;
                                errors += 1;
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    (latencies, errors, first_error)
                }));
            }
            let mut all = Phase {
                latencies: Vec::new(),
                errors: 0,
                first_error: None,
                elapsed: run,
                client_cpu: Duration::ZERO,
            };
            for task in tasks {
                let (latencies, errors, first_error) = task.await.expect("client task");
                all.latencies.extend(latencies);
                all.errors += errors;
                if all.first_error.is_none() {
                    all.first_error = first_error;
                }
            }
            all.elapsed = Instant::now().saturating_duration_since(record_from);
            all
        });
        Phase {
            client_cpu: thread_cpu().saturating_sub(cpu0),
            ..phase
        }
    })
    .join()
    .expect("client thread")
}

/// CPU time (user + system) from a /proc stat file, in clock ticks of 10 ms (USER_HZ = 100 on
/// Linux); zero where /proc is missing.
fn proc_cpu(path: &str) -> Duration {
    let mut text = String::new();
    if std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return Duration::ZERO;
    }
    // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn thread_cpu() -> Duration {
    proc_cpu("/proc/thread-self/stat")
}

fn process_cpu() -> Duration {
    proc_cpu("/proc/self/stat")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut secs = 5u64;
    let mut client_counts = vec![1usize, 8];
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().and_then(|s| s.parse().ok()).expect("--secs N"),
            "--clients" => {
                client_counts = args
                    .next()
                    .expect("--clients N[,M..]")
                    .split(',')
                    .map(|n| n.parse().expect("--clients takes numbers"))
                    .collect()
            }
            "--bench" => {} // passed by `cargo bench`
            other if other.starts_with("--") => {}
            other => filters.push(other.to_string()),
        }
    }
    let run = Duration::from_secs(secs);

    // The pod's runtime, as `wasmpod run` builds it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "{:<18} {:<15} {:>3} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8}",
        "server", "sibling", "c", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "pod cpu"
    );
    for server in [Server::Hello, Server::Web] {
        for sibling in [
            Sibling::None,
            Sibling::Spin,
            Sibling::SpinCpu(0.25),
            Sibling::NativeThread,
        ] {
            let label = format!("{} {}", server.name(), sibling.name());
            if !filters.is_empty() && !filters.iter().any(|f| label.contains(f.as_str())) {
                continue;
            }
            let options = PodOptions {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                ..PodOptions::default()
            };
            let pod = Pod::with_options(pod_spec(server, sibling), options).expect("valid pod spec");
            runtime.block_on(pod.start()).expect("pod starts");
            let addr = pod.proxy_addr().expect("the pod exposes a port");
            let spinning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(sibling == Sibling::NativeThread));
            let spinner = {
                let spinning = spinning.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while spinning.load(std::sync::atomic::Ordering::Relaxed) {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                })
            };
            // Wait until the server answers (the web guest binds its port after it starts).
            let ready = Instant::now();
            loop {
                let probe = load_once(addr, server);
                if probe.is_ok() {
                    break;
                }
                assert!(
                    ready.elapsed() < Duration::from_secs(30),
                    "{label}: never served: {probe:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            for &clients in &client_counts {
                let cpu0 = process_cpu();
                let wall0 = Instant::now();
                let mut phase = load(addr, server, clients, run);
                let wall = wall0.elapsed();
                let pod_cpu = process_cpu().saturating_sub(cpu0).saturating_sub(phase.client_cpu);
                phase.latencies.sort();
                let l = &phase.latencies;
                println!(
                    "{:<18} {:<15} {:>3} {:>8.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8.2}",
                    server.name(),
                    sibling.name(),
                    clients,
                    l.len() as f64 / phase.elapsed.as_secs_f64(),
                    ms(percentile(l, 50.0)),
                    ms(percentile(l, 90.0)),
                    ms(percentile(l, 99.0)),
                    ms(percentile(l, 99.9)),
                    ms(l.last().copied().unwrap_or_default()),
                    phase.errors,
                    pod_cpu.as_secs_f64() / wall.as_secs_f64(),
                );
                if let Some(e) = &phase.first_error {
                    println!("    first error: {e}");
                }
            }
            let status = pod.status();
            if let Some(spinner) = status.container("spinner")
                && !matches!(spinner.state, wasmpod::ContainerState::Running { .. })
            {
                println!("    note: the spinner is not running: {:?}", spinner.state);
            }
            spinning.store(false, std::sync::atomic::Ordering::Relaxed);
            spinner.join().expect("spinner thread");
            runtime.block_on(pod.stop());
            drop(pod);
        }
    }
}

/// One request on a fresh client runtime (readiness check).
fn load_once(addr: SocketAddr, server: Server) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut kept = None;
        match tokio::time::timeout(REQUEST_TIMEOUT, one_request(addr, server, &mut kept)).await {
            Ok(r) => r,
            Err(_) => Err("timeout".into()),
        }
    })
}
