//! In-process health checks: a fresh instance of the container's component (with the
//! container's env, mounts, network and limits) whose `wasmpod:health/check#check` export is
//! called; see `wit/health.wit`. Works for every kind of container.

use wasmtime::component::InstancePre;

use super::classify;
use super::store::{ContainerData, ContainerRuntime};

/// The interface a component exports to answer `health = {}` probes (see `wit/health.wit`).
pub const HEALTH_INTERFACE: &str = "wasmpod:health/check@0.1.0";

/// Calls the health export once; a component without it fails the check with a message
/// saying so.
pub async fn check(runtime: &ContainerRuntime, pre: &InstancePre<ContainerData>) -> Result<(), String> {
    let mut store = runtime.store_on(pre.engine(), None)?;
    let instance = pre
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
        Err(e) => {
            let exit = super::out_of_memory(classify(e), store.data().memory());
            Err(format!("the health check {exit}"))
        }
    }
}
