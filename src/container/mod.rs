//! One container of a pod: what it is (its [`ContainerKind`], told from the component's
//! exports), how its runs end ([`Exit`]), and how each kind is driven.
//!
//! Every kind runs in Stores built by one place, [`store::ContainerRuntime`] (its args, env,
//! mounts, logs, pod network, egress, outgoing-HTTP routes, memory budget and CPU share), so
//! the kinds differ only in how a Store is driven: a command runs `wasi:cli/run` once
//! ([`command`]), an http container serves `wasi:http/incoming-handler` with a fresh instance
//! per request ([`http`]), and a health check calls the `wasmpod:health/check` export
//! ([`health`]). When a container runs or restarts is the supervisor's business
//! ([`crate::supervisor`]).

pub mod command;
pub mod health;
pub mod http;
pub mod store;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime_wasi::I32Exit;

pub use command::CommandContainer;
pub use http::{HttpContainer, HttpLimits};
pub use store::{ContainerData, ContainerRuntime, PodServices, linker, linker_on};

use crate::engine::{TierNotice, TieredCode};
use crate::resources::MemoryBudget;
use crate::status::EventKind;

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

pub use crate::status::Exit;

/// Why a container could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {container:?}: {message}")]
    Unsupported { container: String, message: String },
    #[error("container {container:?}: cannot link the component: {message}")]
    Link { container: String, message: String },
}

/// Links a component (baseline or optimized, see [`crate::engine`]) for one container with
/// `typed` (e.g. `CommandPre::new`), on the component's own engine: `linker` when the component
/// is the main engine's, a linker of the baseline engine otherwise. Tier changes become the
/// container's events.
pub(crate) fn tiered_code<P: 'static>(
    runtime: &ContainerRuntime,
    linker: &Linker<ContainerData>,
    component: &Component,
    typed: fn(InstancePre<ContainerData>) -> Result<P, wasmtime::Error>,
) -> Result<TieredCode<P>, String> {
    let linker = shared_linker(linker);
    let link = move |component: &Component| {
        let pre = if wasmtime::Engine::same(linker.engine(), component.engine()) {
            linker.instantiate_pre(component)
        } else {
            shared_linker_on(component.engine()).and_then(|own| own.instantiate_pre(component))
        };
        pre.and_then(typed).map_err(|e| format!("{e:#}"))
    };
    let events = runtime.events().clone();
    let name = runtime.name().to_string();
    let notify = move |notice: TierNotice| events.emit(Some(&name), EventKind::Tier { notice });
    TieredCode::new(runtime.engine(), component, link, notify)
}

/// One linker per engine, shared by every container's relinking. A container keeps its linker
/// for as long as it runs (to link again when the optimized code arrives), and a component
/// linker with WASI and wasi:http is large: a copy per container cost ~117 KiB of RSS each
/// (debug build; 10,000 pods of 3 http containers in one edge host, benches/edge_host.sh).
/// The linker is the same for every container of an engine ([`linker_on`]), so the first one
/// seen is kept; entries of dropped engines are pruned.
fn shared_linker(linker: &Linker<ContainerData>) -> std::sync::Arc<Linker<ContainerData>> {
    let mut shared = crate::sync::lock(&SHARED_LINKERS);
    if let Some(kept) = kept_linker(&mut shared, linker.engine()) {
        return kept;
    }
    let kept = std::sync::Arc::new(linker.clone());
    shared.push((linker.engine().weak(), kept.clone()));
    kept
}

/// The shared linker of `engine`, built ([`linker_on`]) when it has none yet.
pub(crate) fn shared_linker_on(
    engine: &wasmtime::Engine,
) -> Result<std::sync::Arc<Linker<ContainerData>>, wasmtime::Error> {
    let mut shared = crate::sync::lock(&SHARED_LINKERS);
    if let Some(kept) = kept_linker(&mut shared, engine) {
        return Ok(kept);
    }
    let kept = std::sync::Arc::new(linker_on(engine)?);
    shared.push((engine.weak(), kept.clone()));
    Ok(kept)
}

type SharedLinkers = Vec<(wasmtime::EngineWeak, std::sync::Arc<Linker<ContainerData>>)>;
static SHARED_LINKERS: std::sync::Mutex<SharedLinkers> = std::sync::Mutex::new(Vec::new());

/// `engine`'s linker in `shared`; entries of dropped engines are pruned on the way.
fn kept_linker(shared: &mut SharedLinkers, engine: &wasmtime::Engine) -> Option<std::sync::Arc<Linker<ContainerData>>> {
    shared.retain(|(engine, _)| engine.upgrade().is_some());
    shared
        .iter()
        .find(|(weak, _)| weak.upgrade().is_some_and(|e| wasmtime::Engine::same(&e, engine)))
        .map(|(_, kept)| kept.clone())
}

/// A trap after the memory budget refused growth is an out-of-memory kill (Kubernetes'
/// `OOMKilled`): say so, with the limit, instead of only the trap that followed.
pub(crate) fn out_of_memory(exit: Exit, memory: &MemoryBudget) -> Exit {
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
