//! A running pod changed in place: [`Pod::update`] compares a new spec with the one the pod
//! runs, container by container (its spec, and the digest of its component's bytes), and swaps
//! only the containers that changed; the others — and their open connections — are untouched.
//!
//! Everything that can fail is done before anything changes: the new spec is validated, every
//! changed component is read, compiled and linked, and a new http version passes its readiness
//! probe (against itself, not the version serving). Only then are the new versions handed to
//! the supervisor ([`crate::supervisor`]): an http container is swapped in the pod's port table
//! (new requests go to the new version, requests in flight finish on the old one); a command
//! container that listens surges (its new version starts beside the old one and takes new
//! connections once ready, see `supervisor/surge.rs`), one without ports or with
//! `update_strategy = "recreate"` is stopped as in a normal stop and started again. A new
//! version that fails to take over is an `update_failed` event and an error; the old serves on.
//!
//! What is not a container — the pod's name, volumes, `expose`, restart policy and timings,
//! init containers, the set of containers and their ports — cannot change in place yet: such an
//! update is refused, naming what differs, and the pod must be recreated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::container;
use crate::probe::{self, ProbeTarget};
use crate::route::HttpPorts;
use crate::spec::{ComponentSource, ContainerSpec, PodSpec};
use crate::status::EventKind;
use crate::supervisor::{Replacement, Runnable};

use super::handle::lock;
use super::{Pod, PodError};

/// What one container of a running pod runs: its spec and its component's digest.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) spec: ContainerSpec,
    /// `sha256:<hex>` of the component's bytes (empty if they could not be read at start).
    pub(crate) digest: String,
    /// The port of an http container; `None` for a command.
    pub(crate) http_port: Option<u16>,
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// The containers swapped to a new version, in spec order.
    pub updated: Vec<ContainerUpdate>,
    /// The containers left as they were.
    pub unchanged: Vec<String>,
}

/// One container swapped to a new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUpdate {
    pub container: String,
    /// Digests (`sha256:<hex>`) of the old and the new component.
    pub from: String,
    pub to: String,
    /// From the update call to the new version serving.
    pub took: Duration,
}

impl UpdateReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty()
    }
}

/// A changed container, ready to hand over.
struct Prepared {
    index: usize,
    runnable: Runnable,
    version: Version,
}

impl Pod {
    /// Applies `new_spec` to the running pod: containers whose spec and component bytes are
    /// unchanged are untouched; each changed one is swapped to its new version (see the module
    /// documentation). Returns once every new version serves.
    ///
    /// An invalid spec, a component that does not compile or link, a new http version that
    /// fails its readiness probe, or a change that cannot be made in place
    /// ([`PodError::NotUpdatable`]) is returned and changes nothing. One update runs at a time.
    pub async fn update(&self, new_spec: PodSpec) -> Result<UpdateReport, PodError> {
        let began = Instant::now();
        new_spec.validate()?;
        let _one_at_a_time = self.updating.lock().await;
        if !self.state.is_running() {
            return Err(PodError::NotRunning);
        }
        let current = lock(&self.versions).clone();
        not_updatable(&self.parts.spec, &new_spec, &current).map_err(PodError::NotUpdatable)?;

        // Everything that can fail, before anything changes.
        let linker = container::linker(&self.parts.engine).map_err(|e| PodError::Engine(format!("{e:#}")))?;
        let services = self.services();
        let init_count = new_spec.init_containers.len();
        let mut prepared = Vec::new();
        let mut unchanged = Vec::new();
        for (index, (spec, old)) in new_spec.all_containers().zip(&current).enumerate() {
            if index < init_count {
                // They ran before the app containers started; a change to them is refused above
                // and new bytes of the same file matter only to a new pod.
                unchanged.push(spec.name.clone());
                continue;
            }
            // A registry image is compared by the bytes it resolves to (pulled when missing).
            let source = self.resolve_image(spec).await?;
            let (bytes, digest) = tokio::task::spawn_blocking(move || read_component(&source))
                .await
                .map_err(|e| PodError::Engine(format!("reading a component panicked: {e}")))?
                .map_err(|message| PodError::UpdateFailed {
                    container: spec.name.as_str().into(),
                    message: message.into(),
                })?;
            if *spec == old.spec && digest == old.digest {
                unchanged.push(spec.name.clone());
                continue;
            }
            // Compiled from the bytes just hashed, so the digest names what runs.
            let compiled = self.compile_source(&spec.name, ComponentSource::Bytes(bytes)).await?;
            let mounts = {
                let volumes = lock(&self.held.volumes);
                let volumes = volumes.as_ref().ok_or(PodError::NotRunning)?;
                volumes.mounts_for(spec)?
            };
            let runnable = self.build(spec, index < init_count, &compiled, mounts, &services, &linker)?;
            let http_port = match (&runnable, old.http_port) {
                (Runnable::Http { port, container }, Some(_)) => {
                    self.ready_before_swap(container, *port).await?;
                    Some(*port)
                }
                (Runnable::Command(_), None) => None,
                (_, was) => {
                    let kinds = if was.is_some() {
                        "an http container into a command"
                    } else {
                        "a command container into an http container"
                    };
                    return Err(PodError::NotUpdatable(format!(
                        "container {:?}: the new component would turn {kinds}",
                        spec.name
                    )));
                }
            };
            prepared.push(Prepared {
                index,
                runnable,
                version: Version {
                    spec: spec.clone(),
                    digest,
                    http_port,
                },
            });
        }

        // Hand every new version over, then wait until each serves.
        let mut waiting = Vec::new();
        for change in prepared {
            let control = self.controls.get(change.index).cloned().ok_or(PodError::NotRunning)?;
            let (serving, served) = oneshot::channel();
            control.replace(Replacement {
                runnable: change.runnable,
                serving,
            });
            waiting.push((change.index, change.version, control, served));
        }
        let mut report = UpdateReport {
            updated: Vec::new(),
            unchanged,
        };
        let mut failure = None;
        for (index, version, control, served) in waiting {
            let name = version.spec.name.clone();
            let gone = || "the container is not running any more".to_string();
            let swapped = tokio::select! {
                served = served => served.unwrap_or_else(|_| Err(gone())),
                () = control.finished.cancelled() => Err(gone()),
            };
            if let Err(message) = swapped {
                // The new version did not take over (it failed to start, or the container
                // ended or the pod stops first): the old version serves on, if it still runs.
                self.parts.events.emit(
                    Some(&name),
                    EventKind::UpdateFailed {
                        message: message.clone(),
                    },
                );
                failure.get_or_insert(PodError::UpdateFailed {
                    container: name.into(),
                    message: message.into(),
                });
                continue;
            }
            let took = began.elapsed();
            let to = version.digest.clone();
            let from = match lock(&self.versions).get_mut(index) {
                Some(slot) => std::mem::replace(slot, version).digest,
                None => String::new(),
            };
            self.parts.events.emit(
                Some(&name),
                EventKind::Updated {
                    from: from.clone(),
                    to: to.clone(),
                    took,
                },
            );
            report.updated.push(ContainerUpdate {
                container: name,
                from,
                to,
                took,
            });
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// The spec the pod runs now: the one it was created from, with every applied update.
    pub fn current_spec(&self) -> PodSpec {
        let mut spec = self.parts.spec.clone();
        let versions = lock(&self.versions);
        let init_count = spec.init_containers.len();
        for (index, version) in versions.iter().enumerate() {
            let slot = if index < init_count {
                spec.init_containers.get_mut(index)
            } else {
                spec.containers.get_mut(index - init_count)
            };
            if let Some(slot) = slot {
                *slot = version.spec.clone();
            }
        }
        spec
    }

    /// A new http version must pass its readiness probe before it takes any request: checked
    /// against the new version itself (in-process), up to the probe's failure threshold. A
    /// container without a readiness probe is ready once it is linked.
    async fn ready_before_swap(&self, new: &Arc<container::HttpContainer>, port: u16) -> Result<(), PodError> {
        let Some(probe) = new.spec().readiness_probe.clone() else {
            return Ok(());
        };
        let only_new = Arc::new(HttpPorts::default());
        only_new.insert(port, new);
        let target = ProbeTarget {
            network: self.parts.network.clone(),
            http_ports: only_new,
            health: Some(new.health_check()),
            new_version_of: None,
        };
        let mut passes = 0u32;
        let mut last = String::new();
        for attempt in 0..probe.failure_threshold.max(1) {
            if attempt > 0 {
                // The probe's own period between checks, as the supervisor probes.
                tokio::time::sleep(probe.period).await;
            }
            match probe::check(&probe.action, &target, probe.timeout).await {
                Ok(()) => {
                    passes += 1;
                    if passes >= probe.success_threshold.max(1) {
                        return Ok(());
                    }
                }
                Err(message) => {
                    passes = 0;
                    last = message;
                }
            }
        }
        Err(PodError::UpdateFailed {
            container: new.name().into(),
            message: format!("the new version failed its readiness probe: {last}").into(),
        })
    }
}

/// A component's digest (`sha256:<hex>`) as [`read_component`] gives it, without reading again
/// a file whose length and modification time are those it had when it was last hashed (a
/// cached pod's start read and hashed every component a second time, after compiling it).
pub(crate) fn component_digest(source: &ComponentSource) -> Result<String, String> {
    type Stamp = (u64, Option<std::time::SystemTime>);
    /// Files hashed; cleared when full (a host's blob store has one path per component).
    const KEPT: usize = 4096;
    static HASHED: std::sync::Mutex<Option<std::collections::HashMap<std::path::PathBuf, (Stamp, String)>>> =
        std::sync::Mutex::new(None);
    let ComponentSource::File(path) = source else {
        return read_component(source).map(|(_, digest)| digest);
    };
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let stamp = (metadata.len(), metadata.modified().ok());
    if let Some((seen, digest)) = crate::sync::lock(&HASHED).get_or_insert_default().get(path)
        && *seen == stamp
    {
        return Ok(digest.clone());
    }
    let (_, digest) = read_component(source)?;
    let mut hashed = crate::sync::lock(&HASHED);
    let hashed = hashed.get_or_insert_default();
    if hashed.len() >= KEPT {
        hashed.clear();
    }
    hashed.insert(path.clone(), (stamp, digest.clone()));
    Ok(digest)
}

/// Reads a component's bytes and their digest (`sha256:<hex>`).
pub(crate) fn read_component(source: &ComponentSource) -> Result<(Arc<[u8]>, String), String> {
    let bytes: Arc<[u8]> = match source {
        ComponentSource::File(path) => std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .into(),
        ComponentSource::Bytes(bytes) => bytes.clone(),
        ComponentSource::Image(reference) => {
            return Err(format!("image {reference} was not resolved to its cached file"));
        }
    };
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, format!("sha256:{hex}")))
}

/// Why `new` cannot be applied in place to a pod created from `created` and running `current`
/// (what differs, by name), or `Ok` if only containers' contents change.
fn not_updatable(created: &PodSpec, new: &PodSpec, current: &[Version]) -> Result<(), String> {
    let mut differs = Vec::new();
    let mut check = |field: &str, same: bool| {
        if !same {
            differs.push(field.to_string());
        }
    };
    check("name", created.name == new.name);
    check("restart_policy", created.restart_policy == new.restart_policy);
    check("restart_backoff", created.restart_backoff == new.restart_backoff);
    check(
        "termination_grace_period",
        created.termination_grace_period == new.termination_grace_period,
    );
    check("readiness_wait", created.readiness_wait == new.readiness_wait);
    check("expose", created.expose == new.expose);
    check("volumes", created.volumes == new.volumes);
    check("init_containers", created.init_containers == new.init_containers);
    let init_count = new.init_containers.len();
    let names: Vec<&str> = new.all_containers().map(|c| c.name.as_str()).collect();
    let running: Vec<&str> = current.iter().map(|v| v.spec.name.as_str()).collect();
    if names != running {
        differs.push(format!(
            "the containers (running [{}], new [{}])",
            running.join(", "),
            names.join(", ")
        ));
    } else {
        for (spec, old) in new.all_containers().zip(current).skip(init_count) {
            if spec.ports != old.spec.ports {
                differs.push(format!("the ports of container {:?}", spec.name));
            }
        }
    }
    if differs.is_empty() {
        Ok(())
    } else {
        Err(format!("it changes {}", differs.join(", ")))
    }
}
