//! The `wasmpod` command line: a thin layer over the library that parses arguments, prints a
//! pod's output and events, and turns its outcome into an exit code. `run` also serves the pod's
//! control socket; `ps`, `logs` and `events` are its clients ([`wasmpod::control`]).
//!
//! Everything printed for people goes through [`escape_control`]: container output, event
//! messages and status text carry a guest's bytes, and a guest must not clear the terminal, move
//! the cursor or forge another container's `NAME |` prefix. `--json` prints the exact text (JSON
//! escapes control characters itself).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod fault_cli;

use clap::{Parser, Subcommand};

#[cfg(unix)]
#[path = "cli/apply_run.rs"]
mod apply_run_cli;
#[cfg(unix)]
#[path = "cli/host.rs"]
mod host_cli;
use tokio::io::AsyncWriteExt;
use wasmpod::control::{self, Client, ControlError, PodClaim, Request, Response};
use wasmpod::logs::escape_control;
use wasmpod::proxy::{ProxyLimits, raise_open_file_limit};
use wasmpod::{Event, EventKind, LogLine, Pod, PodError, PodOptions, PodPhase, PodSpec, Stream};

// `push`, `pull`, `export`: in their own file so this one only gains the variants and dispatch.
#[path = "cli/registry.rs"]
mod registry_cli;

#[derive(Parser)]
#[command(
    name = "wasmpod",
    version,
    about = "Run a pod of WebAssembly components in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pod until it ends, or until Ctrl-C / SIGTERM stops it.
    Run {
        /// The pod spec.
        #[arg(default_value = "wasmpod.toml")]
        spec: PathBuf,
        /// Print without colours even on a terminal.
        #[arg(long)]
        no_color: bool,
        /// The host address of the front proxy (default 127.0.0.1:PORT for `[expose] port`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Watch the spec and component files and swap changed containers in place.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        proxy: ProxyFlags,
    },
    /// Check a pod spec and print `ok` or every problem (file:line:column: message).
    Validate {
        #[arg(default_value = "wasmpod.toml")]
        spec: PathBuf,
    },
    /// Show a running pod's phase and containers (the pod may be left out when only one runs;
    /// with several running and none named, list the pods).
    Ps {
        /// The pod's name (the spec's `name`).
        pod: Option<String>,
        /// Print the pod's status as JSON (one line).
        #[arg(long)]
        json: bool,
        #[cfg(unix)]
        #[command(flatten)]
        host: host_cli::HostFlag,
    },
    /// Print a container's kept output lines, and with --follow every new one.
    #[command(override_usage = "wasmpod logs [OPTIONS] [POD] <CONTAINER>")]
    Logs {
        /// [POD] CONTAINER: the pod may be left out when only one runs.
        #[arg(value_name = "POD", num_args = 1..=2, required = true)]
        names: Vec<String>,
        /// Only the last N kept lines.
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<usize>,
        /// Keep printing new lines until the pod ends (or Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print each line as a JSON object (stream, text, time).
        #[arg(long)]
        json: bool,
        #[cfg(unix)]
        #[command(flatten)]
        host: host_cli::HostFlag,
    },
    /// Print a running pod's events, and with --follow every new one.
    Events {
        /// The pod's name; may be left out when only one runs.
        pod: Option<String>,
        /// Keep printing new events until the pod ends (or Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print each event as a JSON object.
        #[arg(long)]
        json: bool,
        #[cfg(unix)]
        #[command(flatten)]
        host: host_cli::HostFlag,
    },
    /// Run an edge host in the foreground: many pods, an API, one shared HTTP entrance.
    #[cfg(unix)]
    Host(host_cli::HostArgs),
    /// Create or update a pod on a host from its spec (uploads the components it lacks); with no
    /// host named, a local `wasmpod run` of the spec's pod takes it when one runs.
    #[cfg(unix)]
    Apply {
        /// The pod spec.
        #[arg(short = 'f', long = "file", value_name = "SPEC")]
        spec: PathBuf,
        #[command(flatten)]
        host: host_cli::HostFlag,
    },
    /// Stop and remove a pod from a host.
    #[cfg(unix)]
    Delete {
        pod: String,
        #[command(flatten)]
        host: host_cli::HostFlag,
    },
    /// Push a component to an OCI registry as a wasm artifact and print its digest.
    Push { file: PathBuf, reference: String },
    /// Pull an image (REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX) into the cache.
    Pull { reference: String },
    /// Write the pod as another system's manifests.
    Export {
        #[command(subcommand)]
        target: registry_cli::ExportTarget,
    },
    /// Inject, list and remove network faults in a running pod.
    #[command(subcommand)]
    Fault(fault_cli::FaultCommand),
}

/// Limits of the front proxy (`wasmpod run`); defaults are [`ProxyLimits::default`]'s.
#[derive(clap::Args)]
#[command(next_help_heading = "Front proxy")]
struct ProxyFlags {
    /// Connections open at once; beyond it new clients wait in the listen backlog [default: 16384].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections one client address (IPv6: one /64) may hold; 0: no cap [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// Length of the listen backlog where clients wait at the limit [default: 4096].
    #[arg(long, value_name = "N")]
    listen_backlog: Option<u32>,
    /// HTTP: time a client has to send a request head, from its first byte [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    header_read_timeout: Option<std::time::Duration>,
    /// HTTP: time a keep-alive connection may wait for its next request [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_alive_timeout: Option<std::time::Duration>,
    /// TCP: a forwarded connection with no bytes moving either way is closed after this
    /// [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle_timeout: Option<std::time::Duration>,
    /// HTTP: a request head reaching this many bytes gets 431 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_header_size: Option<usize>,
}

impl ProxyFlags {
    fn limits(&self) -> ProxyLimits {
        let default = ProxyLimits::default();
        ProxyLimits {
            max_connections: self.max_connections.unwrap_or(default.max_connections).max(1),
            max_connections_per_address: self
                .max_connections_per_address
                .unwrap_or(default.max_connections_per_address),
            backlog: self.listen_backlog.unwrap_or(default.backlog),
            header_read_timeout: self.header_read_timeout.unwrap_or(default.header_read_timeout),
            keep_alive_timeout: self.keep_alive_timeout.unwrap_or(default.keep_alive_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(default.idle_timeout),
            max_header_bytes: self.max_header_size.unwrap_or(default.max_header_bytes),
            ..default
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { spec } => validate(&spec),
        // Host pods first (`--host`, `WASMPOD_HOST` or a local host); `None`: not the host's.
        #[cfg(unix)]
        Command::Ps { pod, json, host } => {
            host_cli::ps(pod.as_deref(), json, &host).unwrap_or_else(|| ps(pod.as_deref(), json))
        }
        #[cfg(unix)]
        Command::Logs {
            names,
            tail,
            follow,
            json,
            host,
        } => {
            let (pod, container) = match names.as_slice() {
                [pod, container] => (Some(pod.as_str()), container.as_str()),
                [container] => (None, container.as_str()),
                _ => return fail("usage: wasmpod logs [POD] CONTAINER"),
            };
            host_cli::logs(pod, container, tail, follow, json, &host)
                .unwrap_or_else(|| logs(&names, tail, follow, json))
        }
        #[cfg(unix)]
        Command::Events {
            pod,
            follow,
            json,
            host,
        } => host_cli::events(pod.as_deref(), follow, json, &host)
            .unwrap_or_else(|| events(pod.as_deref(), follow, json)),
        #[cfg(not(unix))]
        Command::Ps { pod, json } => ps(pod.as_deref(), json),
        #[cfg(not(unix))]
        Command::Logs {
            names,
            tail,
            follow,
            json,
        } => logs(&names, tail, follow, json),
        #[cfg(not(unix))]
        Command::Events { pod, follow, json } => events(pod.as_deref(), follow, json),
        #[cfg(unix)]
        Command::Host(args) => host_cli::host(args),
        #[cfg(unix)]
        Command::Apply { spec, host } => host_cli::apply(&spec, &host),
        #[cfg(unix)]
        Command::Delete { pod, host } => host_cli::delete(&pod, &host),
        Command::Push { file, reference } => registry_cli::push(&file, &reference),
        Command::Pull { reference } => registry_cli::pull(&reference),
        Command::Export { target } => registry_cli::export(target),
        Command::Fault(command) => fault_cli::fault(command),
        Command::Run {
            spec,
            no_color,
            listen,
            watch,
            proxy,
        } => {
            let runtime = match async_runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            let color = !no_color && std::io::stdout().is_terminal();
            runtime.block_on(run(&spec, color, listen, watch, proxy.limits()))
        }
    }
}

fn validate(spec: &Path) -> ExitCode {
    match PodSpec::from_file(spec) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    spec: &Path,
    color: bool,
    listen: Option<std::net::SocketAddr>,
    watch: bool,
    proxy_limits: ProxyLimits,
) -> ExitCode {
    // Every client of the front proxy is a file descriptor: raise the soft limit as servers do.
    let file_limit = raise_open_file_limit();
    let options = PodOptions {
        listen,
        proxy_limits,
        ..PodOptions::default()
    };
    let pod = match PodSpec::from_file(spec)
        .map_err(PodError::from)
        .and_then(|spec| Pod::with_options(spec, options))
    {
        // Shared with the control server's connections; `shutdown` below hands it back.
        Ok(pod) => Arc::new(pod),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Claim the pod's name before anything compiles or runs: a second `wasmpod run` of the same
    // pod must fail before its containers write to shared volumes or ports. A runtime directory
    // we cannot use only costs the control socket, not the pod.
    let claim = match PodClaim::acquire(&pod.spec().name) {
        Ok(claim) => Some(claim),
        Err(e @ ControlError::AlreadyRunning { .. }) => {
            eprintln!("wasmpod: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("wasmpod: warning: no control socket (`wasmpod ps/logs/events` will not see this pod): {e}");
            None
        }
    };
    let names: Vec<String> = pod.spec().all_containers().map(|c| c.name.clone()).collect();
    let printer = Printer::new(names, color);
    // The warning about a low limit concerns the front proxy only.
    let clients = if pod.spec().expose.is_some() {
        proxy_limits.max_connections
    } else {
        0
    };
    let file_notes = match file_limit {
        Ok(limit) => limit.notes(clients),
        Err(e) => vec![format!("warning: cannot read or raise the open-file limit: {e}")],
    };
    for note in &file_notes {
        printer.note(note).await;
    }
    let mut output = pod.output().follow();
    let mut events = pod.events().follow();

    let mut start = Box::pin(pod.start());
    let mut progress = CompileProgress::new(printer.color);
    let mut tick = tokio::time::interval(CompileProgress::TICK);
    let started = loop {
        tokio::select! {
            result = &mut start => break result,
            Some(event) = events.recv() => {
                progress.clear().await;
                progress.follow(&event);
                printer.event(&event).await;
            }
            _ = tick.tick() => progress.show(&printer).await,
        }
    };
    progress.clear().await;
    drop(start);
    if let Err(e) = started {
        while let Ok(event) = events.try_recv() {
            printer.event(&event).await;
        }
        eprintln!("wasmpod: {e}");
        return ExitCode::FAILURE;
    }

    let mut signal = match StopSignal::install() {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("wasmpod: cannot listen for Ctrl-C/SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    // After the signal handler, so Ctrl-C/SIGTERM always reach the clean-up below that removes
    // the socket.
    let control = match claim.map(|claim| claim.serve(pod.clone())) {
        Some(Ok(server)) => Some(server),
        Some(Err(e)) => {
            printer
                .note(&format!(
                    "warning: no control socket (`wasmpod ps/logs/events` will not see this pod): {e}"
                ))
                .await;
            None
        }
        None => None,
    };
    // Notes of `--watch` (swaps themselves are events); never yields without it.
    let mut watch_notes = match watch.then(|| wasmpod::watch::watch(pod.clone(), spec)) {
        Some(Ok(notes)) => Some(notes),
        Some(Err(e)) => {
            printer.note(&format!("warning: not watching: {e}")).await;
            None
        }
        None => None,
    };
    let mut stopped = false;
    let status = {
        let wait = pod.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                status = &mut wait => break status,
                Some(note) = async { watch_notes.as_mut()?.recv().await } => printer.note(&note).await,
                Some(line) = output.recv() => printer.line(&line).await,
                Some(event) = events.recv() => printer.event(&event).await,
                () = signal.received() => {
                    printer.note("stopping the pod").await;
                    stopped = true;
                    break pod.stop().await;
                }
            }
        }
    };
    while let Ok(line) = output.try_recv() {
        printer.line(&line).await;
    }
    while let Ok(event) = events.try_recv() {
        printer.event(&event).await;
    }
    let code = match &status.phase {
        PodPhase::Succeeded | PodPhase::Stopped => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    };
    // Followers get the last lines, then the socket goes; the server lets go of the pod.
    if let Some(control) = control {
        control.shutdown().await;
    }
    // Dropping the pod removes its volumes before the process exits.
    drop(pod);
    finish_tier_up(stopped, &mut signal, &printer).await;
    code
}

/// Optimized code still compiling in the background when the pod ends: a pod that ended on
/// its own waits for it (bounded; Ctrl-C skips), so the next start finds it in the cache; a
/// stopped pod exits at once and the compile is abandoned (the next start compiles again).
async fn finish_tier_up(stopped: bool, signal: &mut StopSignal, printer: &Printer) {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let Ok(engine) = wasmpod::Engine::shared() else { return };
    let pending = engine.tier_up_pending();
    if pending == 0 || engine.cache_dir().is_none() {
        return;
    }
    let mut left = pending;
    if !stopped {
        printer
            .note(&format!(
                "finishing the optimized compile of {pending} component(s) for the cache (up to {}s; Ctrl-C skips)",
                WAIT.as_secs()
            ))
            .await;
        // A thread of its own, not `spawn_blocking`: dropping the runtime would wait for it.
        let (done, finished) = tokio::sync::oneshot::channel();
        let waiting = engine.clone();
        if std::thread::Builder::new()
            .name("wasmpod-exit-wait".into())
            .spawn(move || done.send(waiting.finish_tier_up(WAIT)))
            .is_ok()
        {
            tokio::select! {
                still = finished => left = still.unwrap_or(left),
                () = signal.received() => {}
            }
        }
    }
    if left > 0 {
        printer
            .note(&format!(
                "optimized compile of {left} component(s) abandoned; the next start compiles again"
            ))
            .await;
    }
}

/// The multi-threaded async runtime a command runs on; failing to start one is said and fails.
fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))
}

/// Prints `message` as an error and fails.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    // Errors may quote what a pod sent (or a path): printed for people, so escaped too.
    eprintln!("wasmpod: {}", escape_control(&message.to_string()));
    ExitCode::FAILURE
}

/// Writes a line to stdout; false once stdout is closed (`wasmpod logs -f | head`), which ends
/// the command quietly instead of panicking like `println!`.
fn out(line: &str) -> bool {
    use std::io::Write;
    writeln!(std::io::stdout(), "{line}").is_ok()
}

fn ps(pod: Option<&str>, json: bool) -> ExitCode {
    let dir = control::runtime_dir();
    if pod.is_none() {
        let running = control::running_pods(&dir);
        if running.len() > 1 {
            return list_pods(&dir, &running, json);
        }
    }
    let client = match Client::find(&dir, pod) {
        Ok(client) => client,
        Err(e) => return fail(e),
    };
    let mut replies = match client.request(&Request::Status) {
        Ok(replies) => replies,
        Err(e) => return fail(e),
    };
    while let Some(reply) = replies.next_raw() {
        match reply {
            Ok((raw, Response::Status(status))) => {
                let text = if json { raw } else { status_table(&status) };
                out(&text);
                return ExitCode::SUCCESS;
            }
            Ok((_, Response::Error { message })) => return fail(message),
            Ok(_) => {}
            Err(e) => return fail(e),
        }
    }
    fail(format!("pod {} closed the connection without a status", client.pod()))
}

/// `wasmpod ps` with several pods running and none named: one line per pod.
fn list_pods(dir: &Path, running: &[String], json: bool) -> ExitCode {
    let mut rows = vec![["POD", "PHASE", "CONTAINERS"].map(String::from).to_vec()];
    for name in running {
        // A pod that ended since it was listed is left out, as if it had not been running.
        let Ok(status) = Client::find(dir, Some(name)).and_then(|client| client.status()) else {
            continue;
        };
        if json {
            if out(&control::to_json(&Response::Status(status))) {
                continue;
            }
            return ExitCode::SUCCESS;
        }
        rows.push(pod_row(&status));
    }
    if !json {
        out(&table(&rows));
    }
    ExitCode::SUCCESS
}

/// A pod's line in a list of pods: POD, PHASE, CONTAINERS (app containers running / all).
fn pod_row(status: &control::StatusView) -> Vec<String> {
    let apps: Vec<_> = status.containers.iter().filter(|c| c.kind == "app").collect();
    let running = apps.iter().filter(|c| c.state == "running").count();
    vec![
        escape_control(&status.name).into_owned(),
        escape_control(&status.phase).into_owned(),
        format!("{running}/{} running", apps.len()),
    ]
}

fn status_table(status: &control::StatusView) -> String {
    let mut rows = vec![
        ["NAME", "KIND", "READY", "STATE", "RESTARTS", "LAST EXIT"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &status.containers {
        // A trap's message can span lines; the table shows its first.
        let last_exit = c
            .last_exit
            .as_deref()
            .and_then(|exit| exit.lines().next())
            .unwrap_or("-");
        // Init containers run to completion; readiness is not theirs to have.
        let ready = match (c.kind.as_str(), c.ready) {
            ("init", _) => "-",
            (_, true) => "yes",
            (_, false) => "no",
        };
        let cells = [
            &c.name,
            &c.kind,
            ready,
            &c.state_text,
            &c.restart_count.to_string(),
            last_exit,
        ];
        rows.push(cells.iter().map(|cell| escape_control(cell).into_owned()).collect());
    }
    format!(
        "pod {}: {}\n{}",
        escape_control(&status.name),
        escape_control(&status.phase),
        table(&rows)
    )
}

/// Left-aligned columns two spaces apart, like `docker ps`.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect();
    lines.join("\n")
}

fn logs(names: &[String], tail: Option<usize>, follow: bool, json: bool) -> ExitCode {
    let (pod, container) = match names {
        [container] => (None, container),
        [pod, container] => (Some(pod.as_str()), container),
        _ => return fail("usage: wasmpod logs [POD] CONTAINER"),
    };
    let request = Request::Logs {
        container: container.clone(),
        tail,
        follow,
    };
    print_replies(pod, &request, json, |reply| match reply {
        Response::Line(line) => print_line(line),
        _ => true,
    })
}

/// One container output line: stderr's to stderr. False once stdout is gone.
fn print_line(line: &control::LineView) -> bool {
    if line.stream == "stderr" {
        eprintln!("{}", escape_control(&line.text));
        return true;
    }
    out(&escape_control(&line.text))
}

/// One event per line: a multi-line message (a trap's backtrace) shows its `\n`s.
fn print_event(event: &control::EventView) -> bool {
    let (at, message) = (escape_control(&event.at), escape_control(&event.message));
    match &event.container {
        Some(container) => out(&format!("{at}  {}: {message}", escape_control(container))),
        None => out(&format!("{at}  {message}")),
    }
}

fn events(pod: Option<&str>, follow: bool, json: bool) -> ExitCode {
    print_replies(
        pod,
        &Request::Events { tail: None, follow },
        json,
        |reply| match reply {
            Response::Event(event) => print_event(event),
            _ => true,
        },
    )
}

/// Sends `request` to the pod and prints every reply with `print` (or as JSON) until the pod
/// closes the connection; `print` returns false when stdout is gone.
fn print_replies(
    pod: Option<&str>,
    request: &Request,
    json: bool,
    mut print: impl FnMut(&Response) -> bool,
) -> ExitCode {
    let mut replies = match Client::find(&control::runtime_dir(), pod).and_then(|client| client.request(request)) {
        Ok(replies) => replies,
        Err(e) => return fail(e),
    };
    while let Some(reply) = replies.next_raw() {
        let printed = match reply {
            Ok((_, Response::Error { message })) => return fail(message),
            Ok((raw, _)) if json => out(&raw),
            Ok((_, Response::Missed { count })) => {
                eprintln!("wasmpod: {count} more were dropped from the pod's buffer before they could be read");
                true
            }
            Ok((_, reply)) => print(&reply),
            Err(e) => return fail(e),
        };
        if !printed {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// Ctrl-C or SIGTERM, whichever comes first.
struct StopSignal {
    /// Both kept for the whole run: a fresh `ctrl_c()` per wait would miss a Ctrl-C that
    /// arrives between two waits (while a line is being printed).
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<StopSignal> {
        #[cfg(unix)]
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            #[cfg(unix)]
            interrupt: signal(SignalKind::interrupt())?,
            #[cfg(unix)]
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn received(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Shows that a compile is still running once it takes longer than a moment: a spinner with the
/// elapsed time, rewritten in place, on a terminal; otherwise a plain line every few seconds.
/// (Components compile one after another, so one compile is shown at a time.)
struct CompileProgress {
    terminal: bool,
    /// Shorter compiles (a cached component loads in milliseconds) show nothing;
    /// `WASMPOD_PROGRESS_AFTER` (e.g. `0s`) changes it.
    after: std::time::Duration,
    compiling: Option<(String, std::time::Instant)>,
    /// A spinner line is on the screen (to be cleared before anything else is printed).
    drawn: bool,
    frame: usize,
    last_line: Option<std::time::Instant>,
}

impl CompileProgress {
    const TICK: std::time::Duration = std::time::Duration::from_millis(100);
    const MOMENT: std::time::Duration = std::time::Duration::from_secs(1);
    /// How often a plain line repeats when output is not a terminal.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    fn new(terminal: bool) -> CompileProgress {
        let after = std::env::var("WASMPOD_PROGRESS_AFTER")
            .ok()
            .and_then(|text| humantime::parse_duration(&text).ok())
            .unwrap_or(Self::MOMENT);
        CompileProgress {
            terminal,
            after,
            compiling: None,
            drawn: false,
            frame: 0,
            last_line: None,
        }
    }

    /// A `compiling` event starts the clock for its container; any later event of it stops it.
    fn follow(&mut self, event: &Event) {
        let Some(container) = &event.container else { return };
        if matches!(event.kind, EventKind::Compiling) {
            self.compiling = Some((container.clone(), std::time::Instant::now()));
            self.last_line = None;
        } else if self.compiling.as_ref().is_some_and(|(name, _)| name == container) {
            self.compiling = None;
        }
    }

    async fn show(&mut self, printer: &Printer) {
        let Some((name, since)) = &self.compiling else { return };
        let elapsed = since.elapsed();
        if elapsed < self.after {
            return;
        }
        let text = format!("{name}: compiling {:.1}s", elapsed.as_secs_f64());
        if self.terminal {
            self.frame = (self.frame + 1) % Self::FRAMES.len();
            let line = printer.prefixed(&format!("{} {text}", Self::FRAMES[self.frame]));
            let line = format!("\r\x1b[2K{}", line.trim_end_matches('\n'));
            write_all(&mut tokio::io::stderr(), line.as_bytes()).await;
            self.drawn = true;
        } else if self.last_line.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            self.last_line = Some(std::time::Instant::now());
            printer.note(&format!("{text} (still running)")).await;
        }
    }

    /// Removes the spinner line, so the next output starts on a clean line.
    async fn clear(&mut self) {
        if std::mem::take(&mut self.drawn) {
            write_all(&mut tokio::io::stderr(), b"\r\x1b[2K").await;
        }
    }
}

/// Prints `NAME | line` (Docker Compose style) and events, coloured on a terminal.
struct Printer {
    names: Vec<String>,
    width: usize,
    color: bool,
}

const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

impl Printer {
    fn new(names: Vec<String>, color: bool) -> Printer {
        let width = names
            .iter()
            .map(String::len)
            .chain(["wasmpod".len()])
            .max()
            .unwrap_or(7);
        Printer { names, width, color }
    }

    fn prefix(&self, name: &str) -> String {
        let padded = format!("{name:<width$} |", width = self.width);
        if !self.color {
            return padded;
        }
        let code = self
            .names
            .iter()
            .position(|n| n == name)
            .map(|i| PALETTE[i % PALETTE.len()])
            .unwrap_or("2");
        format!("\x1b[{code}m{padded}\x1b[0m")
    }

    async fn line(&self, line: &LogLine) {
        let text = format!("{} {}\n", self.prefix(&line.container), escape_control(&line.text));
        match line.stream {
            Stream::Stdout => write_all(&mut tokio::io::stdout(), text.as_bytes()).await,
            Stream::Stderr => write_all(&mut tokio::io::stderr(), text.as_bytes()).await,
        }
    }

    async fn event(&self, event: &Event) {
        if matches!(event.kind, EventKind::Compiling) && !self.color {
            return;
        }
        let message = match (&event.kind, self.color) {
            (EventKind::Compiling, true) => format!("{event} …"),
            _ => event.to_string(),
        };
        write_all(&mut tokio::io::stderr(), self.prefixed(&message).as_bytes()).await;
    }

    async fn note(&self, message: &str) {
        write_all(&mut tokio::io::stderr(), self.prefixed(message).as_bytes()).await;
    }

    /// `wasmpod | message`, escaped; each further line of a multi-line message (a trap's
    /// backtrace) gets the prefix too, indented, so that no line of it can pass for a
    /// container's output.
    fn prefixed(&self, message: &str) -> String {
        let prefix = self.prefix("wasmpod");
        let mut text = String::new();
        for (i, line) in message.split('\n').enumerate() {
            let indent = if i == 0 { "" } else { "  " };
            text.push_str(&format!("{prefix} {indent}{}\n", escape_control(line)));
        }
        text
    }
}

async fn write_all(out: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) {
    // A closed terminal or pipe must not stop the pod; the logs are still kept.
    let _ = out.write_all(bytes).await;
    let _ = out.flush().await;
}
