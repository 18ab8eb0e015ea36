//! Command containers: a component that exports `wasi:cli/run`, run to its end once per start.
//!
//! This module owns one run: a fresh Store from the container's runtime, `main` called, stdin
//! closed when the pod asks the container to stop, and how the run ended ([`Exit`]) — with the
//! network torn down cleanly after an exit and reset after anything else. Restarts are the
//! supervisor's.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::store::{ContainerData, ContainerRuntime};
use super::{ContainerError, Exit, classify, out_of_memory};
use crate::engine::{Tier, TieredCode};
use crate::net::ContainerNet;

/// A command container ready to run any number of times.
pub struct CommandContainer {
    runtime: ContainerRuntime,
    /// Baseline code until the optimized code is ready (a run keeps the code it started with).
    command: TieredCode<CommandPre<ContainerData>>,
}

impl CommandContainer {
    /// Links a compiled command component for one container of a pod.
    pub fn new(
        runtime: ContainerRuntime,
        linker: &Linker<ContainerData>,
        component: &Component,
    ) -> Result<CommandContainer, ContainerError> {
        let link_error = |message: String| ContainerError::Link {
            container: runtime.name().to_string(),
            message,
        };
        let command = super::tiered_code(&runtime, linker, component, CommandPre::new).map_err(link_error)?;
        Ok(CommandContainer { runtime, command })
    }

    /// The tier of the code the next run starts with.
    pub fn tier(&self) -> Tier {
        self.command.current().tier
    }

    pub fn runtime(&self) -> &ContainerRuntime {
        &self.runtime
    }

    pub fn spec(&self) -> &crate::spec::ContainerSpec {
        self.runtime.spec()
    }

    /// Runs the container once, to its end, in a fresh Store attached to the pod's network.
    /// Dropping the future stops the guest at its next epoch tick (it yields every tick, so
    /// cancellation is prompt). When the run ends its ports are released; after a clean exit
    /// its connections close (peers read end-of-stream), after a trap or a stop they are reset.
    ///
    /// The guest's stdin stays open, with nothing to read, until `terminating` fires: then it
    /// reads end-of-file. That is how a container learns it is asked to stop (Kubernetes sends
    /// SIGTERM; WASI 0.2 has no signals), and it has the pod's grace period to exit on its own.
    pub async fn run(&self, terminating: &CancellationToken) -> Exit {
        let (stdin_writer, stdin_reader) = tokio::io::duplex(64);
        let code = self.command.instance();
        let mut store = match self.runtime.store_on(&code.engine, Some(stdin_reader)) {
            Ok(store) => store,
            Err(message) => return Exit::Failed(message),
        };
        let mut teardown = NetTeardown {
            net: store.data().net().clone(),
            clean: false,
        };
        // The guest's time (instantiation and run) counts as the container's.
        let counters = self.runtime.counters().clone();
        let exit = match counters.metered(code.pre.instantiate_async(&mut store)).await {
            Ok(command) => {
                let call = counters.metered(command.wasi_cli_run().call_run(&mut store));
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
        let exit = out_of_memory(exit, store.data().memory());
        teardown.clean = matches!(exit, Exit::Code(_));
        exit
    }

    /// The container's in-process health check (`health = {}` probes).
    pub fn health_check(self: &Arc<Self>) -> crate::probe::HealthCheck {
        let this = self.clone();
        Arc::new(move || {
            let this = this.clone();
            Box::pin(async move {
                let code = this.command.instance();
                super::health::check(&this.runtime, code.pre.instance_pre()).await
            })
        })
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
