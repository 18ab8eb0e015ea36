//! One container: a component prepared for a pod, and one run of it in its own wasmtime Store.
//!
//! This module owns what a container sees (its args, env, stdio and mounts, nothing of the
//! host's environment, file system or network) and how a run ends ([`Exit`]). It does not
//! decide when a container runs or restarts; that is the pod supervisor's job
//! ([`crate::pod`]).

use std::fmt;
use std::sync::Arc;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::Engine;
use crate::logs::{Logs, Stream};
use crate::net::p2::{NetCtxView, NetView};
use crate::net::{ContainerNet, PodNetwork};
use crate::resources::{CpuShare, MemoryBudget};
use crate::spec::ContainerSpec;
use crate::volume::Mount;

/// What a component is, told from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// Exports `wasi:cli/run`: a process with `main`.
    Command,
    /// Exports `wasi:http/incoming-handler`: served per request.
    Http,
}

impl ContainerKind {
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
                write!(f, "OOMKilled: memory limit of {} reached ({trap})", crate::resources::format_bytes(*limit))
            }
            Exit::Failed(message) => write!(f, "failed to start: {message}"),
            Exit::Stopped => write!(f, "stopped"),
            Exit::Restarted => write!(f, "restarted on request"),
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
}

impl NetView for ContainerData {
    fn net_view(&mut self) -> NetCtxView<'_> {
        NetCtxView { table: &mut self.table, net: &self.net }
    }
}

impl WasiView for ContainerData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The imports every container gets: WASI 0.2, with wasi:sockets served by the pod's virtual
/// network instead of the host's.
pub fn linker(engine: &Engine) -> Result<Linker<ContainerData>, String> {
    let mut linker = Linker::new(engine.wasmtime());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("{e:#}"))?;
    crate::net::p2::add_to_linker(&mut linker).map_err(|e| format!("{e:#}"))?;
    Ok(linker)
}

/// A container ready to run any number of times.
pub struct PreparedContainer {
    pub spec: ContainerSpec,
    pub kind: ContainerKind,
    mounts: Vec<Mount>,
    command: CommandPre<ContainerData>,
    engine: Engine,
}

impl PreparedContainer {
    /// Links a compiled component for one container.
    pub fn new(
        engine: &Engine,
        linker: &Linker<ContainerData>,
        spec: ContainerSpec,
        component: &Component,
        mounts: Vec<Mount>,
    ) -> Result<PreparedContainer, ContainerError> {
        let kind = ContainerKind::of(engine.wasmtime(), component).ok_or_else(|| ContainerError::Unsupported {
            container: spec.name.clone(),
            message: "the component exports neither `wasi:cli/run` (a command) nor \
                      `wasi:http/incoming-handler` (an http handler)"
                .into(),
        })?;
        if kind == ContainerKind::Http {
            return Err(ContainerError::Unsupported {
                container: spec.name.clone(),
                message: "http containers (`wasi:http/incoming-handler`) are not served yet".into(),
            });
        }
        let link_error = |e: wasmtime::Error| ContainerError::Link { container: spec.name.clone(), message: format!("{e:#}") };
        let pre = linker.instantiate_pre(component).map_err(link_error)?;
        let command = CommandPre::new(pre).map_err(link_error)?;
        Ok(PreparedContainer { spec, kind, mounts, command, engine: engine.clone() })
    }

    /// Runs the container once, to its end, in a fresh Store attached to the pod's network.
    /// Dropping the future stops the guest at its next epoch tick (it yields every tick, so
    /// cancellation is prompt). When the run ends its ports are released; after a clean exit
    /// its connections close (peers read end-of-stream), after a trap or a stop they are reset.
    pub async fn run(&self, logs: &Logs, network: &Arc<PodNetwork>) -> Exit {
        let net = Arc::new(network.attach(&self.spec.name));
        let mut teardown = NetTeardown { net: net.clone(), clean: false };
        let exit = self.run_attached(logs, net).await;
        teardown.clean = matches!(exit, Exit::Code(_));
        exit
    }

    async fn run_attached(&self, logs: &Logs, net: Arc<ContainerNet>) -> Exit {
        let wasi = match wasi_context(&self.spec, &self.mounts, logs) {
            Ok(wasi) => wasi,
            Err(message) => return Exit::Failed(message),
        };
        let memory = MemoryBudget::new(self.spec.resources.memory);
        let data = ContainerData { wasi, table: ResourceTable::new(), net, memory };
        let mut store = Store::new(self.engine.wasmtime(), data);
        store.limiter(|data| &mut data.memory);
        CpuShare::new(self.spec.resources.cpu).install(&mut store);
        let exit = match self.command.instantiate_async(&mut store).await {
            Ok(command) => match command.wasi_cli_run().call_run(&mut store).await {
                Ok(Ok(())) => Exit::Code(0),
                Ok(Err(())) => Exit::Code(1),
                Err(e) => classify(e),
            },
            Err(e) => classify(e),
        };
        out_of_memory(exit, &store.data().memory)
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
pub fn wasi_context(spec: &ContainerSpec, mounts: &[Mount], logs: &Logs) -> Result<WasiCtx, String> {
    let mut builder = WasiCtxBuilder::new();
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
        let perms = if mount.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        builder
            .preopened_dir(&mount.host_dir, &mount.guest_path, perms)
            .map_err(|e| format!("cannot mount {} at {}: {e:#}", mount.host_dir.display(), mount.guest_path))?;
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
    let function = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().iter().find_map(|frame| frame.func_name().map(str::to_owned)));
    match function {
        Some(function) => Exit::Trapped(format!("{trap} (in {function})")),
        None => Exit::Trapped(trap.to_string()),
    }
}

/// A shared handle to a prepared container.
pub type SharedContainer = Arc<PreparedContainer>;
