//! `wasmpod host`, `wasmpod apply` and `wasmpod delete`: the edge host in the foreground and
//! its clients. Thin: the work is [`wasmpod::host`]'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wasmpod::host::client::{Client, HostAddr};
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

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("wasmpod: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("wasmpod: {}", wasmpod::logs::escape_control(&message.to_string()));
    ExitCode::FAILURE
}

/// `wasmpod host`: runs until SIGTERM or Ctrl-C, then drains and exits 0.
pub fn host(args: HostArgs) -> ExitCode {
    let runtime = match runtime() {
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
                ..defaults
            },
            engine: None,
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
        serving.shutdown().await;
        ExitCode::SUCCESS
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
    let runtime = match runtime() {
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
