//! One container: a component prepared for a pod, and one run of it in its own wasmtime Store.
//!
//! This module owns what a container sees (its args, env, stdio and mounts, nothing of the
//! host's environment, file system or network) and how a run ends ([`Exit`]). It does not
//! decide when a container runs or restarts; that is the pod supervisor's job
//! ([`crate::pod`]).

use std::fmt;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::Engine;
use crate::http::{OutgoingHooks, OutgoingRoute};
use crate::logs::{Logs, Stream};
use crate::net::egress::{Denied, DeniedHook, DeniedKind, EgressPolicy};
use crate::net::p2::{NetCtxView, NetView};
use crate::net::{ContainerNet, PodNetwork};
use crate::resources::{CpuShare, MemoryBudget};
use crate::spec::ContainerSpec;
use crate::status::{EventKind, Events};
use crate::volume::Mount;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// What a component is, told from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// Exports `wasi:cli/run`: a process with `main`.
    Command,
    /// Exports `wasi:http/incoming-handler`: served per request.
    Http,
}

impl ContainerKind {
    /// Like [`ContainerKind::of`], with an error naming the container when it is neither.
    pub fn require(
        engine: &wasmtime::Engine,
        component: &Component,
        container: &str,
    ) -> Result<ContainerKind, ContainerError> {
        ContainerKind::of(engine, component).ok_or_else(|| ContainerError::Unsupported {
            container: container.to_string(),
            message: "the component exports neither `wasi:cli/run` (a command) nor \
                      `wasi:http/incoming-handler` (an http handler)"
                .into(),
        })
    }

    /// Reads the kind from a compiled component's exports (`incoming-handler` first: `wstd`
    /// http guests export `wasi:cli/run` too).
    pub fn of(engine: &wasmtime::Engine, component: &Component) -> Option<ContainerKind> {
        let ty = component.component_type();
        let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        if names.iter().any(|n| n.starts_with("wasi:http/incoming-handler@")) {
            Some(ContainerKind::Http)
        } else if names.iter().any(|n| n.starts_with("wasi:cli/run@")) {
            Some(ContainerKind::Command)
        } else {
            None
        }
    }
}

/// How one run of a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `main` returned or the guest called `exit`; 0 is success.
    Code(i32),
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, ...).
    Trapped(String),
    /// It trapped after its memory limit refused to grow its memory (Kubernetes' `OOMKilled`).
    OutOfMemory { limit: u64, trap: String },
    /// The host could not start it (instantiation or a mount failed).
    Failed(String),
    /// The pod stopped it.
    Stopped,
    /// Restarted on request ([`crate::Pod::restart`]).
    Restarted,
    /// Cancelled by the pod because a startup or liveness probe failed.
    Killed(String),
}

impl Exit {
    /// Whether the run counts as a success for restart policies and the pod's outcome.
    pub fn is_success(&self) -> bool {
        matches!(self, Exit::Code(0) | Exit::Stopped | Exit::Restarted)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Trapped(message) => write!(f, "trapped: {message}"),
            Exit::OutOfMemory { limit, trap } => {
                write!(
                    f,
                    "OOMKilled: memory limit of {} reached ({trap})",
                    crate::resources::format_bytes(*limit)
                )
            }
            Exit::Failed(message) => write!(f, "failed to start: {message}"),
            Exit::Stopped => write!(f, "stopped"),
            Exit::Restarted => write!(f, "restarted on request"),
            Exit::Killed(reason) => write!(f, "killed: {reason}"),
        }
    }
}

/// Why a container could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {container:?}: {message}")]
    Unsupported { container: String, message: String },
    #[error("container {container:?}: cannot link the component: {message}")]
    Link { container: String, message: String },
}

/// The per-Store state of a running container.
pub struct ContainerData {
    wasi: WasiCtx,
    table: ResourceTable,
    net: Arc<ContainerNet>,
    memory: MemoryBudget,
    http: WasiHttpCtx,
    /// Routes outgoing wasi:http requests inside the pod, or out where egress allows.
    hooks: OutgoingHooks,
}

impl WasiHttpView for ContainerData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl NetView for ContainerData {
    fn net_view(&mut self) -> NetCtxView<'_> {
        NetCtxView {
            table: &mut self.table,
            net: &self.net,
        }
    }
}

impl WasiView for ContainerData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The imports every command container gets: WASI 0.2, with wasi:sockets served by the pod's
/// virtual network instead of the host's, plus outgoing wasi:http routed by the pod.
pub fn linker(engine: &Engine) -> Result<Linker<ContainerData>, String> {
    let mut linker = Linker::new(engine.wasmtime());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("{e:#}"))?;
    crate::net::p2::add_to_linker(&mut linker).map_err(|e| format!("{e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| format!("{e:#}"))?;
    Ok(linker)
}

/// A container ready to run any number of times.
pub struct PreparedContainer {
    pub spec: ContainerSpec,
    mounts: Vec<Mount>,
    command: CommandPre<ContainerData>,
    engine: Engine,
    events: Events,
    route: Arc<dyn OutgoingRoute>,
    /// Where its sockets may connect outside the pod (`allowed_outbound_hosts`).
    egress: EgressPolicy,
}

impl PreparedContainer {
    /// Links a compiled command component for one container; `route` decides where its
    /// outgoing wasi:http requests go, `events` records what it denies.
    pub fn new(
        engine: &Engine,
        linker: &Linker<ContainerData>,
        spec: ContainerSpec,
        component: &Component,
        mounts: Vec<Mount>,
        events: Events,
        route: Arc<dyn OutgoingRoute>,
    ) -> Result<PreparedContainer, ContainerError> {
        let link_error = |e: wasmtime::Error| ContainerError::Link {
            container: spec.name.clone(),
            message: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(component).map_err(link_error)?;
        let command = CommandPre::new(pre).map_err(link_error)?;
        let egress = spec.allowed_outbound_hosts.clone();
        Ok(PreparedContainer {
            spec,
            mounts,
            command,
            engine: engine.clone(),
            events,
            route,
            egress,
        })
    }

    /// Runs the container once, to its end, in a fresh Store attached to the pod's network.
    /// Dropping the future stops the guest at its next epoch tick (it yields every tick, so
    /// cancellation is prompt). When the run ends its ports are released; after a clean exit
    /// its connections close (peers read end-of-stream), after a trap or a stop they are reset.
    ///
    /// The guest's stdin stays open, with nothing to read, until `terminating` fires: then it
    /// reads end-of-file. That is how a container learns it is asked to stop (Kubernetes sends
    /// SIGTERM; WASI 0.2 has no signals), and it has the pod's grace period to exit on its own.
    pub async fn run(&self, logs: &Logs, network: &Arc<PodNetwork>, terminating: &CancellationToken) -> Exit {
        let net = Arc::new(self.attach(network));
        let mut teardown = NetTeardown {
            net: net.clone(),
            clean: false,
        };
        let exit = self.run_attached(logs, net, terminating).await;
        teardown.clean = matches!(exit, Exit::Code(_));
        exit
    }

    async fn run_attached(&self, logs: &Logs, net: Arc<ContainerNet>, terminating: &CancellationToken) -> Exit {
        let (stdin_writer, stdin_reader) = tokio::io::duplex(64);
        let wasi = match wasi_context(&self.spec, &self.mounts, logs, Some(stdin_reader)) {
            Ok(wasi) => wasi,
            Err(message) => return Exit::Failed(message),
        };
        let memory = MemoryBudget::new(self.spec.resources.memory);
        let hooks = OutgoingHooks::new(&self.spec.name, self.events.clone(), self.route.clone());
        let data = ContainerData {
            wasi,
            table: ResourceTable::new(),
            net,
            memory,
            http: WasiHttpCtx::new(),
            hooks,
        };
        let mut store = Store::new(self.engine.wasmtime(), data);
        store.limiter(|data| &mut data.memory);
        CpuShare::new(self.spec.resources.cpu).install(&mut store);
        let exit = match self.command.instantiate_async(&mut store).await {
            Ok(command) => {
                let call = command.wasi_cli_run().call_run(&mut store);
                tokio::pin!(call);
                let mut stdin_writer = Some(stdin_writer);
                let result = loop {
                    tokio::select! {
                        result = &mut call => break result,
                        () = terminating.cancelled(), if stdin_writer.is_some() => stdin_writer = None,
                    }
                };
                match result {
                    Ok(Ok(())) => Exit::Code(0),
                    Ok(Err(())) => Exit::Code(1),
                    Err(e) => classify(e),
                }
            }
            Err(e) => classify(e),
        };
        out_of_memory(exit, &store.data().memory)
    }
}

/// The interface a component exports to answer `health = {}` probes (see `wit/health.wit`).
pub const HEALTH_INTERFACE: &str = "wasmpod:health/check@0.1.0";

impl PreparedContainer {
    /// The container's in-process health check: a fresh instance of its component (with the
    /// container's env, mounts and network) whose `wasmpod:health/check#check` export is called.
    /// A component without the export fails the check with a message saying so.
    pub fn health_check(self: &Arc<Self>, logs: &Logs, network: &Arc<PodNetwork>) -> crate::probe::HealthCheck {
        let this = self.clone();
        let logs = logs.clone();
        let network = network.clone();
        Arc::new(move || {
            let this = this.clone();
            let logs = logs.clone();
            let network = network.clone();
            Box::pin(async move { this.call_health(&logs, &network).await })
        })
    }

    /// Attaches a run to the pod network with the container's egress policy; refusals become
    /// events naming the container and the destination.
    fn attach(&self, network: &Arc<PodNetwork>) -> ContainerNet {
        let events = self.events.clone();
        let on_denied: DeniedHook = Arc::new(move |denied: Denied| {
            let what = match denied.kind {
                DeniedKind::Connect => "connection",
                DeniedKind::Lookup => "name lookup",
            };
            events.emit(
                Some(&denied.container),
                EventKind::EgressDenied {
                    destination: format!("{what} to {}", denied.destination),
                },
            );
        });
        network.attach_with(&self.spec.name, self.egress.clone(), Some(on_denied))
    }

    async fn call_health(&self, logs: &Logs, network: &Arc<PodNetwork>) -> Result<(), String> {
        let wasi = wasi_context(&self.spec, &self.mounts, logs, None)?;
        let net = Arc::new(self.attach(network));
        let hooks = OutgoingHooks::new(&self.spec.name, self.events.clone(), self.route.clone());
        let memory = MemoryBudget::new(self.spec.resources.memory);
        let data = ContainerData {
            wasi,
            table: ResourceTable::new(),
            net,
            memory,
            http: WasiHttpCtx::new(),
            hooks,
        };
        let mut store = Store::new(self.engine.wasmtime(), data);
        store.limiter(|data| &mut data.memory);
        CpuShare::new(self.spec.resources.cpu).install(&mut store);
        let instance = self
            .command
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("cannot instantiate for the health check: {e:#}"))?;
        let missing = || format!("the component does not export `{HEALTH_INTERFACE}`");
        let interface = instance
            .get_export_index(&mut store, None, HEALTH_INTERFACE)
            .ok_or_else(missing)?;
        let check = instance
            .get_export_index(&mut store, Some(&interface), "check")
            .ok_or_else(missing)?;
        let check = instance
            .get_typed_func::<(), (Result<(), String>,)>(&mut store, &check)
            .map_err(|e| format!("`{HEALTH_INTERFACE}#check` has the wrong type: {e:#}"))?;
        match check.call_async(&mut store, ()).await {
            Ok((Ok(()),)) => Ok(()),
            Ok((Err(reason),)) => Err(reason),
            Err(e) => Err(format!("the health check {}", classify(e))),
        }
    }
}

/// Detaches a run from the pod network when it ends, however it ends (also when the run's
/// future is dropped by a stop): a clean exit closes connections, anything else resets them.
struct NetTeardown {
    net: Arc<ContainerNet>,
    clean: bool,
}

impl Drop for NetTeardown {
    fn drop(&mut self) {
        if self.clean {
            self.net.shutdown();
        } else {
            self.net.abort();
        }
    }
}

/// Builds a container's WASI context: only its own args, env, stdio and mounts; no host
/// environment, no host directory beyond its mounts, no host sockets. Shared by command runs
/// and http requests, so both kinds see exactly the same things.
/// `stdin`: what the guest reads on standard input; `None` is an empty stdin.
pub fn wasi_context(
    spec: &ContainerSpec,
    mounts: &[Mount],
    logs: &Logs,
    stdin: Option<tokio::io::DuplexStream>,
) -> Result<WasiCtx, String> {
    let mut builder = WasiCtxBuilder::new();
    if let Some(stdin) = stdin {
        builder.stdin(wasmtime_wasi::cli::AsyncStdinStream::new(stdin));
    }
    let mut argv = Vec::with_capacity(spec.args.len() + 1);
    argv.push(spec.name.clone());
    argv.extend(spec.args.iter().cloned());
    builder.args(&argv);
    for (key, value) in &spec.env {
        builder.env(key, value);
    }
    builder.stdout(logs.output(&spec.name, Stream::Stdout));
    builder.stderr(logs.output(&spec.name, Stream::Stderr));
    // Real sockets stay closed: the pod's network is provided separately, never the host's.
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    for mount in mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&mount.host_dir, &mount.guest_path, perms)
            .map_err(|e| {
                format!(
                    "cannot mount {} at {}: {e:#}",
                    mount.host_dir.display(),
                    mount.guest_path
                )
            })?;
    }
    Ok(builder.build())
}

/// A trap after the memory budget refused growth is an out-of-memory kill (Kubernetes'
/// `OOMKilled`): say so, with the limit, instead of only the trap that followed.
fn out_of_memory(exit: Exit, memory: &MemoryBudget) -> Exit {
    match (exit, memory.limit()) {
        (Exit::Trapped(trap), Some(limit)) if memory.exceeded() => Exit::OutOfMemory { limit, trap },
        (exit, _) => exit,
    }
}

/// Turns a wasmtime error from a run into an [`Exit`]: the guest's exit code, or a trap with a
/// readable message (the trap and the innermost named wasm function).
pub fn classify(error: wasmtime::Error) -> Exit {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Exit::Code(exit.0);
    }
    let Some(trap) = error.downcast_ref::<wasmtime::Trap>() else {
        return Exit::Trapped(format!("{:#}", error.root_cause()));
    };
    let function = error.downcast_ref::<wasmtime::WasmBacktrace>().and_then(|bt| {
        bt.frames()
            .iter()
            .find_map(|frame| frame.func_name().map(str::to_owned))
    });
    match function {
        Some(function) => Exit::Trapped(format!("{trap} (in {function})")),
        None => Exit::Trapped(trap.to_string()),
    }
}

/// A shared handle to a prepared container.
pub type SharedContainer = Arc<PreparedContainer>;
