//! `wasmpod host`, `wasmpod apply` and `wasmpod delete`: the edge host in the foreground and
//! its clients; and the host side of `ps`, `logs` and `events`. Thin: the work is
//! [`wasmpod::host`]'s.
//!
//! `ps`, `logs` and `events` ask a host when `--host` or `WASMPOD_HOST` names one (then that
//! host only), or when a host serves the local socket (then its pods beside the local
//! `wasmpod run` pods; a `run` pod of the same name wins). Otherwise they work as before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wasmpod::control::{self, EventView, LineView, Response, StatusView};
use wasmpod::host::client::{Client, ClientError, HOST_ENV, HostAddr};
use wasmpod::host::serve::{ApiListen, serve};
use wasmpod::host::{Host, HostConfig, HostLimits, default_socket, default_state_dir};

/// `wasmpod host` flags.
#[derive(clap::Args)]
pub struct HostArgs {
    /// The state directory (specs and components) [default: $XDG_DATA_HOME/wasmpod/host].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The shared HTTP entrance, routed by `Host` (`NAME.localhost` or `[expose] hostnames`).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve the API on TCP instead of the local socket (needs --token-file).
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    api: Option<SocketAddr>,
    /// A file holding the bearer token the TCP API requires.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The API socket when not on TCP [default: host.sock in the runtime directory].
    #[arg(long, value_name = "PATH", conflicts_with = "api")]
    socket: Option<PathBuf>,
    /// Pods at once [default: 10000].
    #[arg(long, value_name = "N")]
    max_pods: Option<usize>,
    /// Bytes of one uploaded component [default: 64 MiB].
    #[arg(long, value_name = "BYTES")]
    max_blob_bytes: Option<u64>,
    /// Bytes of memory all pods may declare together; every container must then declare
    /// `resources.memory` [default: no cap].
    #[arg(long, value_name = "BYTES")]
    max_total_memory: Option<u64>,
    /// The address `[expose] host_port` listeners bind [default: 127.0.0.1].
    #[arg(long, value_name = "IP")]
    host_port_ip: Option<std::net::IpAddr>,
    /// Limits of the shared entrance and of every `[expose] host_port` (as `wasmpod run`'s
    /// front proxy).
    #[command(flatten)]
    proxy: super::ProxyFlags,
}

/// Where a client finds the host.
#[derive(clap::Args)]
pub struct HostFlag {
    /// The host: a socket path or http://ADDR [default: $WASMPOD_HOST, else the local socket].
    #[arg(long, value_name = "ADDR")]
    host: Option<String>,
    /// A file holding the bearer token (for http:// hosts) [default: $WASMPOD_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl HostFlag {
    /// The host `ps`/`logs`/`events` ask, and whether it was named (`--host`, `WASMPOD_HOST`);
    /// `None` when none was named and none serves the local socket.
    fn lookup(&self) -> Result<Option<(Client, bool)>, String> {
        let named = self.host.is_some() || std::env::var_os(HOST_ENV).is_some_and(|v| !v.is_empty());
        if !named && std::os::unix::net::UnixStream::connect(default_socket()).is_err() {
            return Ok(None);
        }
        Ok(Some((self.client()?, named)))
    }

    fn client(&self) -> Result<Client, String> {
        let file = self
            .token_file
            .clone()
            .or_else(|| std::env::var_os("WASMPOD_TOKEN_FILE").map(PathBuf::from));
        let token = match file {
            Some(file) => Some(read_token(&file)?),
            None => None,
        };
        Ok(Client::new(HostAddr::pick(self.host.as_deref()), token))
    }
}

fn read_token(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))
}

use super::async_runtime;

use super::fail;

/// `wasmpod host`: runs until SIGTERM or Ctrl-C, then drains and exits 0.
pub fn host(args: HostArgs) -> ExitCode {
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let api = match (&args.api, &args.token_file) {
            (Some(addr), Some(file)) => match read_token(file) {
                Ok(token) => ApiListen::Tcp { addr: *addr, token },
                Err(e) => return fail(e),
            },
            _ => ApiListen::Unix(args.socket.clone().unwrap_or_else(default_socket)),
        };
        let defaults = HostLimits::default();
        let config = HostConfig {
            state_dir: args.state_dir.clone().unwrap_or_else(default_state_dir),
            limits: HostLimits {
                max_pods: args.max_pods.unwrap_or(defaults.max_pods),
                max_blob_bytes: args.max_blob_bytes.unwrap_or(defaults.max_blob_bytes),
                max_total_memory: args.max_total_memory,
                entrance: args.proxy.limits(),
                ..defaults
            },
            engine: None,
            host_port_ip: args.host_port_ip,
        };
        let _ = wasmpod::proxy::raise_open_file_limit();
        #[cfg(unix)]
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => return fail(format!("cannot watch for SIGTERM: {e}")),
        };
        let state_dir = config.state_dir.clone();
        let host = match Host::open(config).await {
            Ok(host) => host,
            Err(e) => return fail(e),
        };
        for problem in host.load_problems() {
            eprintln!("wasmpod host: warning: {problem}");
        }
        // What the doors refuse or hold back (one line per kind and interval, never one per
        // connection).
        let mut host_events = host.events().follow();
        tokio::spawn(async move {
            while let Some(event) = host_events.recv().await {
                eprintln!("wasmpod host: {}", wasmpod::logs::escape_control(&event.to_string()));
            }
        });
        let serving = match serve(host.clone(), api, args.http).await {
            Ok(serving) => serving,
            Err(e) => return fail(e),
        };
        println!("wasmpod host: state dir {}", state_dir.display());
        if let Some(socket) = &serving.api_socket {
            println!("wasmpod host: api on {}", socket.display());
        }
        if let Some(addr) = serving.api_addr {
            println!("wasmpod host: api on http://{addr}");
        }
        if let Some(addr) = serving.http_addr {
            println!("wasmpod host: http on {addr}");
        }
        println!("wasmpod host: ready with {} pods", host.pods().len());
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        println!("wasmpod host: draining");
        match serving.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Every change is in the journal still: the next start replays it.
                eprintln!("wasmpod host: stopped, but the state was not checkpointed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `wasmpod apply -f SPEC`: prints created / updated / unchanged.
pub fn apply(spec: &Path, flag: &HostFlag) -> ExitCode {
    // A local `wasmpod run` of the spec's pod takes it when no host is named.
    if let Some(code) = crate::apply_run_cli::apply_to_local_run(spec, flag.host.is_some()) {
        return code;
    }
    with_client(flag, |client| async move { client.apply(spec).await })
}

/// `wasmpod delete POD`.
pub fn delete(pod: &str, flag: &HostFlag) -> ExitCode {
    with_client(flag, |client| async move {
        client.delete(pod).await.map(|()| "deleted".to_string())
    })
}

/// Runs one request against the host the flags name and prints its one-word answer.
fn with_client<F, E>(flag: &HostFlag, request: impl FnOnce(Client) -> F) -> ExitCode
where
    F: std::future::Future<Output = Result<String, E>>,
    E: std::fmt::Display,
{
    let client = match flag.client() {
        Ok(client) => client,
        Err(e) => return fail(e),
    };
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(request(client)) {
        Ok(word) => {
            println!("{word}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Where one pod of `ps`/`logs`/`events` is.
enum Found {
    /// On the host: ask it.
    Host(Client, String),
    /// Not the host's business (a local `run` pod, or no host): `main`'s code answers.
    Local,
}

/// Finds `pod` (or the only pod) for `logs`/`events`.
fn find(pod: Option<&str>, flag: &HostFlag, runtime: &tokio::runtime::Runtime) -> Result<Found, String> {
    let Some((client, named)) = flag.lookup()? else {
        return Ok(Found::Local);
    };
    let local = if named {
        Vec::new()
    } else {
        control::running_pods(&control::runtime_dir())
    };
    match pod {
        Some(name) if local.iter().any(|p| p == name) => Ok(Found::Local),
        Some(name) => match runtime.block_on(client.status(name)) {
            Ok(Some(_)) => Ok(Found::Host(client, name.to_string())),
            Ok(None) if named => Err(format!("no pod {name:?} on the host at {}", client.addr())),
            Ok(None) => Ok(Found::Local),
            Err(e) if named => Err(e.to_string()),
            Err(_) => Ok(Found::Local),
        },
        None if !local.is_empty() => Ok(Found::Local),
        None => {
            let pods = match runtime.block_on(client.pods()) {
                Ok(pods) => pods,
                Err(e) if named => return Err(e.to_string()),
                Err(_) => return Ok(Found::Local),
            };
            match pods.as_slice() {
                [only] => Ok(Found::Host(client, only.name.clone())),
                [] if !named => Ok(Found::Local),
                [] => Err(format!("no pod runs on the host at {}", client.addr())),
                _ => {
                    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
                    Err(format!(
                        "{} pods run on the host ({}): name one",
                        pods.len(),
                        names.join(", ")
                    ))
                }
            }
        }
    }
}

/// `wasmpod ps` with host pods; `None` when the host has nothing to add (`main` answers).
pub fn ps(pod: Option<&str>, json: bool, flag: &HostFlag) -> Option<ExitCode> {
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return Some(code),
    };
    if pod.is_some() {
        return match find(pod, flag, &runtime) {
            Ok(Found::Local) => None,
            Ok(Found::Host(client, name)) => Some(match runtime.block_on(client.status(&name)) {
                Ok(Some(status)) => {
                    print_status(status, json);
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(format!("no pod {name:?} on the host at {}", client.addr())),
                Err(e) => fail(e),
            }),
            Err(e) => Some(fail(e)),
        };
    }
    let (client, named) = match flag.lookup() {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(e) => return Some(fail(e)),
    };
    let hosted = match runtime.block_on(client.pods()) {
        Ok(pods) => pods,
        Err(e) if named => return Some(fail(e)),
        Err(_) => return None,
    };
    let dir = control::runtime_dir();
    let local = if named { Vec::new() } else { control::running_pods(&dir) };
    if hosted.is_empty() && !named {
        return None;
    }
    if let ([only], []) = (hosted.as_slice(), local.as_slice()) {
        print_status(only.clone(), json);
        return Some(ExitCode::SUCCESS);
    }
    // Several pods: one line each, with where it runs.
    let mut listed: Vec<(StatusView, &str)> = Vec::new();
    for name in &local {
        // A pod that ended since it was listed is left out, as if it had not been running.
        if let Ok(status) = control::Client::find(&dir, Some(name)).and_then(|client| client.status()) {
            listed.push((status, "run"));
        }
    }
    listed.extend(hosted.into_iter().map(|status| (status, "host")));
    if json {
        for (status, _) in listed {
            if !super::out(&control::to_json(&Response::Status(status))) {
                break;
            }
        }
        return Some(ExitCode::SUCCESS);
    }
    let mut rows = vec![["POD", "PHASE", "CONTAINERS", "WHERE"].map(String::from).to_vec()];
    for (status, place) in &listed {
        let mut row = super::pod_row(status);
        row.push(place.to_string());
        rows.push(row);
    }
    super::out(&super::table(&rows));
    Some(ExitCode::SUCCESS)
}

fn print_status(status: StatusView, json: bool) {
    if json {
        super::out(&control::to_json(&Response::Status(status)));
    } else {
        super::out(&super::status_table(&status));
    }
}

/// `wasmpod logs` of a host pod; `None` when the pod is not the host's (`main` answers).
pub fn logs(
    pod: Option<&str>,
    container: &str,
    tail: Option<usize>,
    follow: bool,
    json: bool,
    flag: &HostFlag,
) -> Option<ExitCode> {
    let mut query = Vec::new();
    if let Some(tail) = tail {
        query.push(format!("tail={tail}"));
    }
    if follow {
        query.push("follow=true".to_string());
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    stream(
        pod,
        flag,
        |name| format!("/v1/pods/{name}/logs/{container}{query}"),
        |text| match serde_json::from_str::<LineView>(text) {
            Ok(line) if json => super::out(&control::to_json(&Response::Line(line))),
            Ok(line) => super::print_line(&line),
            Err(_) => missed(text, json),
        },
    )
}

/// `wasmpod events` of a host pod; `None` when the pod is not the host's (`main` answers).
pub fn events(pod: Option<&str>, follow: bool, json: bool, flag: &HostFlag) -> Option<ExitCode> {
    let query = if follow { "?follow=true" } else { "" };
    stream(
        pod,
        flag,
        |name| format!("/v1/pods/{name}/events{query}"),
        |text| match serde_json::from_str::<EventView>(text) {
            Ok(event) if json => super::out(&control::to_json(&Response::Event(event))),
            Ok(event) => super::print_event(&event),
            Err(_) => missed(text, json),
        },
    )
}

/// A `{"missed": N}` line of a follow stream.
fn missed(text: &str, json: bool) -> bool {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if let Some(count) = value["missed"].as_u64() {
        if json {
            return super::out(&control::to_json(&Response::Missed { count }));
        }
        eprintln!("wasmpod: {count} more were dropped from the pod's buffer before they could be read");
    }
    true
}

/// Finds the pod, then prints each line of the stream at `path(pod)` with `print`.
fn stream(
    pod: Option<&str>,
    flag: &HostFlag,
    path: impl FnOnce(&str) -> String,
    print: impl FnMut(&str) -> bool,
) -> Option<ExitCode> {
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return Some(code),
    };
    let (client, name) = match find(pod, flag, &runtime) {
        Ok(Found::Local) => return None,
        Ok(Found::Host(client, name)) => (client, name),
        Err(e) => return Some(fail(e)),
    };
    let path = path(&name);
    let mut print = print;
    // Without `follow` the host answers one JSON array; with it, one JSON value per line.
    let each = |text: &str| match text.strip_prefix('[') {
        Some(_) => match serde_json::from_str::<Vec<serde_json::Value>>(text) {
            Ok(items) => items.iter().all(|item| print(&item.to_string())),
            Err(_) => true,
        },
        None => print(text),
    };
    Some(match runtime.block_on(client.lines(&path, each)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Refused { message, .. }) => fail(message),
        Err(e) => fail(e),
    })
}
