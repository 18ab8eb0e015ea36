//! The `wasmpod` command line: a thin layer over the library that parses arguments, prints a
//! pod's output and events, and turns its outcome into an exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::io::AsyncWriteExt;
use wasmpod::{Event, EventKind, LogLine, Pod, PodError, PodOptions, PodPhase, PodSpec, Stream};

#[derive(Parser)]
#[command(name = "wasmpod", version, about = "Run a pod of WebAssembly components in one process")]
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
    },
    /// Check a pod spec and print `ok` or every problem (file:line:column: message).
    Validate {
        #[arg(default_value = "wasmpod.toml")]
        spec: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { spec } => validate(&spec),
        Command::Run { spec, no_color, listen } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("wasmpod: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let color = !no_color && std::io::stdout().is_terminal();
            runtime.block_on(run(&spec, color, listen))
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

async fn run(spec: &Path, color: bool, listen: Option<std::net::SocketAddr>) -> ExitCode {
    let options = PodOptions { listen, ..PodOptions::default() };
    let pod = match PodSpec::from_file(spec).map_err(PodError::from).and_then(|spec| Pod::with_options(spec, options)) {
        Ok(pod) => pod,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let names: Vec<String> = pod.spec().all_containers().map(|c| c.name.clone()).collect();
    let printer = Printer::new(names, color);
    let mut output = pod.output().follow();
    let mut events = pod.events().follow();

    let mut start = Box::pin(pod.start());
    let started = loop {
        tokio::select! {
            result = &mut start => break result,
            Some(event) = events.recv() => printer.event(&event).await,
        }
    };
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
    let status = {
        let wait = pod.wait();
        tokio::pin!(wait);
        loop {
        tokio::select! {
            status = &mut wait => break status,
            Some(line) = output.recv() => printer.line(&line).await,
            Some(event) = events.recv() => printer.event(&event).await,
            () = signal.received() => {
                printer.note("stopping the pod").await;
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
    // Dropping the pod removes its volumes before the process exits.
    drop(pod);
    code
}

/// Ctrl-C or SIGTERM, whichever comes first.
struct StopSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<StopSignal> {
        Ok(StopSignal {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn received(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
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
        let width = names.iter().map(String::len).chain(["wasmpod".len()]).max().unwrap_or(7);
        Printer { names, width, color }
    }

    fn prefix(&self, name: &str) -> String {
        let padded = format!("{name:<width$} |", width = self.width);
        if !self.color {
            return padded;
        }
        let code = self.names.iter().position(|n| n == name).map(|i| PALETTE[i % PALETTE.len()]).unwrap_or("2");
        format!("\x1b[{code}m{padded}\x1b[0m")
    }

    async fn line(&self, line: &LogLine) {
        let text = format!("{} {}\n", self.prefix(&line.container), line.text);
        match line.stream {
            Stream::Stdout => write_all(&mut tokio::io::stdout(), text.as_bytes()).await,
            Stream::Stderr => write_all(&mut tokio::io::stderr(), text.as_bytes()).await,
        }
    }

    async fn event(&self, event: &Event) {
        if matches!(event.kind, EventKind::Compiling) && !self.color {
            return;
        }
        let text = match (&event.kind, self.color) {
            (EventKind::Compiling, true) => format!("{} {event} …\n", self.prefix("wasmpod")),
            _ => format!("{} {event}\n", self.prefix("wasmpod")),
        };
        write_all(&mut tokio::io::stderr(), text.as_bytes()).await;
    }

    async fn note(&self, message: &str) {
        let text = format!("{} {message}\n", self.prefix("wasmpod"));
        write_all(&mut tokio::io::stderr(), text.as_bytes()).await;
    }
}

async fn write_all(out: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) {
    // A closed terminal or pipe must not stop the pod; the logs are still kept.
    let _ = out.write_all(bytes).await;
    let _ = out.flush().await;
}
