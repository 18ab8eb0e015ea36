//! The edge host: many pods in one process, deployed, updated and removed through an API.
//!
//! [`Host`] owns the running pods by name and the desired state behind them ([`store`]): a pod
//! put through [`Host::apply`] is parsed, validated and started before it is stored, so a spec
//! that fails any of those is refused and an existing pod of that name keeps running. On open
//! the host starts every stored pod again. The JSON API ([`api`]) and the shared HTTP entrance
//! ([`routing`]) are thin layers over it; the CLI client is [`client`].
//!
//! A pod with `[expose] host_port` also gets a host TCP listener of its own. The host holds
//! that listener, not the pod: it passes the same limits as the shared entrance, outlives
//! updates and replacements of the pod behind it (each connection goes to the pod serving the
//! name when it arrives), is claimed by one pod at a time and is closed on delete or when the
//! spec no longer asks for it.

pub mod api;
pub mod client;
pub mod journal;
pub mod metrics;
pub mod routing;
pub mod serve;
pub mod store;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::Mutex as AsyncMutex;

use crate::engine::Engine;
use crate::pod::{Pod, PodError, PodOptions};
use crate::proxy::{FrontProxy, ProxyError, ProxyLimits, Resolved, Targets};
use crate::spec::{PodSpec, SpecError, is_dns_label};
use crate::status::{EventKind, Events};

pub use store::{Store, StoreError};

/// Host-wide caps; over one, a request is refused with a message naming it.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// Pods at once.
    pub max_pods: usize,
    /// Bytes of one uploaded component.
    pub max_blob_bytes: u64,
    /// Bytes of one spec.
    pub max_spec_bytes: u64,
    /// Bytes of memory all pods' containers may use together (the sum of their
    /// `resources.memory`); when set, every container must declare its memory.
    pub max_total_memory: Option<u64>,
    /// The limits of the host's client-facing listeners (the shared entrance and every
    /// `[expose] host_port`): the front proxy's, applied by the same code. `readiness_wait` is
    /// each pod's own.
    pub entrance: ProxyLimits,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            max_pods: 10_000,
            max_blob_bytes: 64 << 20,
            max_spec_bytes: 256 << 10,
            max_total_memory: None,
            entrance: ProxyLimits::default(),
        }
    }
}

/// How long past its grace period a retired pod may take to stop before the host lets it go.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Host events (the doors' refusal reports) kept for followers.
const HOST_EVENTS: usize = 1000;

/// How a host is set up.
#[derive(Clone, Default)]
pub struct HostConfig {
    /// The state directory (created when missing).
    pub state_dir: PathBuf,
    pub limits: HostLimits,
    /// The engine every pod runs on; default: the process-wide one.
    pub engine: Option<Engine>,
    /// The address `[expose] host_port` listeners bind; default 127.0.0.1.
    pub host_port_ip: Option<IpAddr>,
}

/// Why the host refused or failed a request. Each maps to one HTTP status in [`api`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("pod name {0:?} is not a DNS label (lowercase letters, digits and '-', 1-63 characters)")]
    BadName(String),
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("the spec names pod {spec:?} but was put as {path:?}; they must match")]
    NameMismatch { spec: String, path: String },
    #[error("hostname {hostname:?} is already routed to pod {pod:?}")]
    HostnameTaken { hostname: String, pod: String },
    #[error("the host runs its limit of {0} pods (max_pods); delete one first")]
    TooManyPods(usize),
    #[error("{0}")]
    Memory(String),
    #[error("cannot start pod {pod:?}: {source}")]
    Start {
        pod: String,
        #[source]
        source: PodError,
    },
    #[error("no pod {0:?}")]
    NoSuchPod(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the host is shutting down")]
    ShuttingDown,
    #[error("[expose] host_port {port} is already claimed by pod {pod:?}")]
    HostPortTaken { port: u16, pod: String },
    #[error("[expose] host_port: {0}")]
    HostPort(#[source] ProxyError),
}

/// What [`Host::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

impl Applied {
    /// The word `wasmpod apply` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Updated => "updated",
            Applied::Unchanged => "unchanged",
        }
    }
}

/// One deployed pod: the running pod and the spec text it came from.
struct Deployed {
    pod: Arc<Pod>,
    text: String,
    /// The memory its containers declare together (for `max_total_memory`).
    memory: u64,
}

/// The edge host. Cheap to clone; every clone is the same host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    limits: HostLimits,
    engine: Option<Engine>,
    /// The deployed pods. Held to check and to commit an apply or delete, not across one.
    pods: AsyncMutex<BTreeMap<String, Deployed>>,
    /// Pod name → the lock that takes its applies and deletes one at a time.
    turns: std::sync::Mutex<std::collections::HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Host name → pod, read by the shared entrance on every request.
    routes: RwLock<Routes>,
    /// What opening the state directory found wrong.
    load_problems: std::sync::Mutex<Vec<String>>,
    draining: std::sync::atomic::AtomicBool,
    /// Pods replaced or deleted that are still stopping (a command container may take its
    /// whole grace period); drain waits for them.
    stopping: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Pod name → its `[expose] host_port` listener. Changed only under `pods`' lock.
    host_ports: std::sync::Mutex<BTreeMap<String, HostPort>>,
    host_port_ip: IpAddr,
    /// What the host's doors report (refusals at the limits), not any pod's.
    events: Events,
}

/// A pod's own host listener.
struct HostPort {
    /// As the spec asks: 0 is any free port.
    requested: u16,
    proxy: FrontProxy,
}

/// What an apply does to its pod's host port, decided before anything starts and committed
/// only when the apply succeeds (dropping a `Bind` closes what it opened).
enum PortChange {
    /// The pod keeps the listener it has (or has none and wants none).
    Keep,
    /// A new listener, opened and serving the pod's name already; replaces any old one.
    Bind(HostPort),
    /// The spec no longer asks for one: the old one closes.
    Release,
}

/// The pod serving `name` when a connection arrives on its host port.
struct PodByName {
    host: Weak<Inner>,
    name: String,
}

impl Targets for PodByName {
    fn resolve(&self) -> Option<Resolved> {
        let inner = self.host.upgrade()?;
        let pod = read(&inner.routes).by_name.get(&self.name).cloned()?;
        let (target, ready) = pod.exposed()?;
        Some(Resolved {
            target,
            ready,
            readiness_wait: pod.spec().readiness_wait,
        })
    }
}

#[derive(Default)]
struct Routes {
    /// Pod name → pod (answers `NAME.localhost`).
    by_name: BTreeMap<String, Arc<Pod>>,
    /// `[expose] hostnames` → pod name.
    by_hostname: BTreeMap<String, String>,
}

impl Host {
    /// Opens the state directory and starts every stored pod. A stored pod that no longer
    /// parses or starts is reported in [`Host::load_problems`] and skipped; the rest run.
    pub async fn open(config: HostConfig) -> Result<Host, HostError> {
        let state_dir = config.state_dir.clone();
        let (store, loaded) = tokio::task::spawn_blocking(move || Store::open(&state_dir))
            .await
            .map_err(|e| StoreError::Io {
                what: "cannot open",
                path: config.state_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        let mut problems = loaded.problems;
        let host = Host {
            inner: Arc::new(Inner {
                store,
                limits: config.limits,
                engine: config.engine,
                pods: AsyncMutex::new(BTreeMap::new()),
                turns: std::sync::Mutex::new(std::collections::HashMap::new()),
                routes: RwLock::new(Routes::default()),
                load_problems: std::sync::Mutex::new(Vec::new()),
                draining: false.into(),
                stopping: std::sync::Mutex::new(tokio::task::JoinSet::new()),
                host_ports: std::sync::Mutex::new(BTreeMap::new()),
                host_port_ip: config.host_port_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                events: Events::new(HOST_EVENTS),
            }),
        };
        for (name, text) in loaded.pods {
            if let Err(e) = host.deploy(&name, &text, false).await {
                problems.push(format!("pod {name}: not started: {e}"));
            }
        }
        *crate::sync::lock(&host.inner.load_problems) = problems;
        Ok(host)
    }

    /// What was wrong in the state directory at open (torn files, pods that would not start).
    pub fn load_problems(&self) -> Vec<String> {
        lock(&self.inner.load_problems).clone()
    }

    /// The state directory's blob store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The host's caps.
    pub fn limits(&self) -> HostLimits {
        self.inner.limits
    }

    /// The host's own events: what its doors refused or held back (`wasmpod host` prints them).
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// The address pod `name`'s `[expose] host_port` listener is bound to.
    pub fn host_port_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.inner.host_ports)
            .get(name)
            .map(|port| port.proxy.local_addr())
    }

    /// Creates or replaces pod `name` from its spec text; the same text again changes nothing.
    /// A spec that fails to parse, validate or start is refused and the running pod of that
    /// name, if any, keeps running.
    pub async fn apply(&self, name: &str, text: &str) -> Result<Applied, HostError> {
        self.deploy(name, text, true).await
    }

    async fn deploy(&self, name: &str, text: &str, persist: bool) -> Result<Applied, HostError> {
        if !is_dns_label(name) {
            return Err(HostError::BadName(name.to_string()));
        }
        if self.draining() {
            return Err(HostError::ShuttingDown);
        }
        // One apply or delete of a name at a time. Applies of different names run side by
        // side: the host-wide lock is held only to check and to commit, never across a compile,
        // a start or an fsync, so a cached pod is not kept waiting behind another pod's compile.
        let turn = self.name_turn(name);
        let _turn = turn.lock().await;
        let running = {
            let pods = self.inner.pods.lock().await;
            let existing = pods.get(name);
            if existing.is_some_and(|d| d.text == text) {
                return Ok(Applied::Unchanged);
            }
            if existing.is_none() && pods.len() >= self.inner.limits.max_pods {
                return Err(HostError::TooManyPods(self.inner.limits.max_pods));
            }
            existing.map(|deployed| deployed.pod.clone())
        };
        let store = &self.inner.store;
        let spec = PodSpec::from_toml_with_blobs(text, &store.pod_path(name), &store.blob_dir())?;
        if spec.name != name {
            return Err(HostError::NameMismatch {
                spec: spec.name,
                path: name.to_string(),
            });
        }
        self.admit(&*self.inner.pods.lock().await, &spec, running.is_some())?;
        let port_change = self.claim_host_port(name, spec.host_port)?;
        let options = PodOptions {
            engine: self.inner.engine.clone(),
            bind_front_proxy: false,
            ..PodOptions::default()
        };
        let start_error = |source| HostError::Start {
            pod: name.to_string(),
            source,
        };
        // A running pod swaps only the containers whose spec or component changed, the rest
        // keep running with their connections; what an update cannot change in place (volumes,
        // expose, the set of containers, ...) falls back to replacing the whole pod.
        if let Some(running) = running {
            match running.update(spec.clone()).await {
                Ok(_) => {
                    if persist {
                        self.persist(name, text).await?;
                    }
                    let mut pods = self.inner.pods.lock().await;
                    if let Some(deployed) = pods.get_mut(name) {
                        deployed.text = text.to_string();
                        deployed.memory = memory_of(&spec).unwrap_or(0);
                    }
                    self.route(name, Some((&running, spec.hostnames.as_slice())));
                    self.commit_host_port(name, port_change, &running);
                    return Ok(Applied::Updated);
                }
                Err(PodError::NotUpdatable(_) | PodError::NotRunning) => {}
                Err(source) => return Err(start_error(source)),
            }
        }
        let memory = memory_of(&spec).unwrap_or(0);
        let hostnames = spec.hostnames.clone();
        let pod = Arc::new(Pod::with_options(spec, options).map_err(start_error)?);
        // The new pod starts before the old one stops: a spec that compiles nowhere never
        // takes the running pod down, and http traffic moves over without a gap.
        pod.start().await.map_err(start_error)?;
        if persist && let Err(e) = self.persist(name, text).await {
            pod.stop().await;
            return Err(e);
        }
        let mut pods = self.inner.pods.lock().await;
        // Other names were applied meanwhile: the host-wide caps are checked again.
        let admitted = if self.draining() {
            Err(HostError::ShuttingDown)
        } else {
            self.admit(&pods, pod.spec(), pods.contains_key(name))
        };
        if let Err(e) = admitted {
            drop(pods);
            pod.stop().await;
            return Err(e);
        }
        self.route(name, Some((&pod, hostnames.as_slice())));
        self.commit_host_port(name, port_change, &pod);
        let old = pods.insert(
            name.to_string(),
            Deployed {
                pod,
                text: text.to_string(),
                memory,
            },
        );
        drop(pods);
        match old {
            Some(old) => {
                self.retire(old.pod);
                Ok(Applied::Updated)
            }
            None => Ok(Applied::Created),
        }
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The lock that takes applies and deletes of `name` one at a time. Entries nobody holds
    /// are dropped as new ones are made, so the table stays as large as the applies in flight.
    fn name_turn(&self, name: &str) -> Arc<AsyncMutex<()>> {
        let mut turns = lock(&self.inner.turns);
        turns.retain(|_, turn| Arc::strong_count(turn) > 1);
        turns.entry(name.to_string()).or_default().clone()
    }

    /// The host-wide checks of a pod about to run: the pod cap (for a new name), hostnames no
    /// other pod routes, the memory cap.
    fn admit(&self, pods: &BTreeMap<String, Deployed>, spec: &PodSpec, replacing: bool) -> Result<(), HostError> {
        if !replacing && pods.len() >= self.inner.limits.max_pods {
            return Err(HostError::TooManyPods(self.inner.limits.max_pods));
        }
        self.check_hostnames(spec)?;
        if let Some(cap) = self.inner.limits.max_total_memory {
            let others = pods
                .iter()
                .filter(|(other, _)| **other != spec.name)
                .map(|(_, deployed)| deployed.memory)
                .sum::<u64>();
            check_memory(spec, others, cap)?;
        }
        Ok(())
    }

    /// Writes pod `name`'s spec durably (one flushed journal record) on a blocking thread: a
    /// flush can take milliseconds, tens on a busy disk, and on a runtime worker it would stall
    /// the shared entrance's requests with it.
    async fn persist(&self, name: &str, text: &str) -> Result<(), HostError> {
        let host = self.clone();
        let (name, text) = (name.to_string(), text.to_string());
        let path = self.inner.store.pod_path(&name);
        tokio::task::spawn_blocking(move || host.inner.store.put_pod(&name, &text))
            .await
            .map_err(|e| joined(e, path))?
            .map_err(HostError::from)
    }

    /// Stops and forgets pod `name`.
    pub async fn delete(&self, name: &str) -> Result<(), HostError> {
        let turn = self.name_turn(name);
        let _turn = turn.lock().await;
        let mut pods = self.inner.pods.lock().await;
        if !pods.contains_key(name) {
            return Err(HostError::NoSuchPod(name.to_string()));
        }
        let host = self.clone();
        let forget = name.to_string();
        tokio::task::spawn_blocking(move || host.inner.store.remove_pod(&forget))
            .await
            .map_err(|e| joined(e, self.inner.store.pod_path(name)))??;
        self.route(name, None);
        lock(&self.inner.host_ports).remove(name);
        let removed = pods.remove(name);
        drop(pods);
        if let Some(removed) = removed {
            self.retire(removed.pod);
        }
        Ok(())
    }

    /// The running pod `name`.
    pub fn pod(&self, name: &str) -> Option<Arc<Pod>> {
        read(&self.inner.routes).by_name.get(name).cloned()
    }

    /// Every running pod, by name.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        read(&self.inner.routes).by_name.values().cloned().collect()
    }

    /// The pod a request with this `Host` header goes to: `NAME.localhost` (any port) or one of
    /// the pods' `[expose] hostnames`.
    pub fn route_host(&self, host: &str) -> Option<Arc<Pod>> {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let routes = read(&self.inner.routes);
        if let Some(name) = host.strip_suffix(".localhost")
            && let Some(pod) = routes.by_name.get(name)
        {
            return Some(pod.clone());
        }
        let name = routes.by_hostname.get(&host)?;
        routes.by_name.get(name).cloned()
    }

    /// Stops accepting applies, stops every pod (SIGTERM), checkpoints the state directory (so
    /// the next start has no journal to replay; it would replay it after a failure here) and
    /// releases it to the next host.
    pub async fn drain(&self) -> Result<(), HostError> {
        self.inner.draining.store(true, std::sync::atomic::Ordering::Release);
        let mut pods = self.inner.pods.lock().await;
        let all = std::mem::take(&mut *pods);
        drop(pods);
        *write(&self.inner.routes) = Routes::default();
        lock(&self.inner.host_ports).clear();
        for deployed in all.into_values() {
            self.retire(deployed.pod);
        }
        let stopping = std::mem::take(&mut *lock(&self.inner.stopping));
        stopping.join_all().await;
        let host = self.clone();
        let state_dir = self.inner.store.dir().to_path_buf();
        tokio::task::spawn_blocking(move || host.inner.store.close())
            .await
            .map_err(|e| joined(e, state_dir))??;
        Ok(())
    }

    /// Stops a pod that no longer takes traffic, in the background: an apply or delete answers
    /// at once instead of after the old pod's grace period. Pods stop concurrently. A pod gets
    /// its grace period and [`STOP_MARGIN`] to end; one that has not by then is reported and
    /// let go (dropping it cancels what still runs), so a drain always ends.
    fn retire(&self, pod: Arc<Pod>) {
        let events = self.inner.events.clone();
        let mut stopping = lock(&self.inner.stopping);
        while stopping.try_join_next().is_some() {}
        stopping.spawn(async move {
            let wait = pod.spec().termination_grace_period + STOP_MARGIN;
            if tokio::time::timeout(wait, pod.stop()).await.is_err() {
                let message = format!(
                    "pod {} did not stop within {}: let go, its containers cancelled (status: {:?})",
                    pod.spec().name,
                    humantime::format_duration(wait),
                    pod.status().phase
                );
                events.emit(None, EventKind::Warning { message });
            }
        });
    }

    /// Decides (and opens, when it is new) pod `name`'s host port; called under `pods`' lock.
    /// A port another pod claims is refused; one the system will not give (in use by another
    /// process, privileged) is refused with the bind error. The old listener stays open until
    /// the apply succeeds.
    fn claim_host_port(&self, name: &str, wanted: Option<u16>) -> Result<PortChange, HostError> {
        let ports = lock(&self.inner.host_ports);
        let Some(wanted) = wanted else {
            return Ok(if ports.contains_key(name) {
                PortChange::Release
            } else {
                PortChange::Keep
            });
        };
        if ports.get(name).is_some_and(|held| held.requested == wanted) {
            return Ok(PortChange::Keep);
        }
        if wanted != 0
            && let Some((pod, _)) = ports.iter().find(|(pod, held)| {
                pod.as_str() != name && (held.requested == wanted || held.proxy.local_addr().port() == wanted)
            })
        {
            return Err(HostError::HostPortTaken {
                port: wanted,
                pod: pod.clone(),
            });
        }
        drop(ports);
        let targets = Arc::new(PodByName {
            host: Arc::downgrade(&self.inner),
            name: name.to_string(),
        });
        let proxy = FrontProxy::start_resolving(
            SocketAddr::new(self.inner.host_port_ip, wanted),
            &format!("pod {name}"),
            targets,
            self.inner.limits.entrance,
            self.inner.events.clone(),
        )
        .map_err(HostError::HostPort)?;
        Ok(PortChange::Bind(HostPort {
            requested: wanted,
            proxy,
        }))
    }

    /// Applies what [`Host::claim_host_port`] decided, once the apply succeeded; a new
    /// listener is announced in the pod's events as `wasmpod run`'s front proxy is.
    fn commit_host_port(&self, name: &str, change: PortChange, pod: &Pod) {
        let mut ports = lock(&self.inner.host_ports);
        match change {
            PortChange::Keep => {}
            PortChange::Release => {
                ports.remove(name);
            }
            PortChange::Bind(port) => {
                if let Some(expose) = pod.spec().expose {
                    pod.events().emit(
                        None,
                        EventKind::Exposed {
                            pod_port: expose.port,
                            host_addr: port.proxy.local_addr(),
                        },
                    );
                }
                ports.insert(name.to_string(), port);
            }
        }
    }

    fn check_hostnames(&self, spec: &PodSpec) -> Result<(), HostError> {
        let routes = read(&self.inner.routes);
        for hostname in &spec.hostnames {
            if let Some(pod) = routes.by_hostname.get(hostname)
                && *pod != spec.name
            {
                return Err(HostError::HostnameTaken {
                    hostname: hostname.clone(),
                    pod: pod.clone(),
                });
            }
        }
        Ok(())
    }

    /// Points `name` and `hostnames` at `pod`, or removes its routes.
    fn route(&self, name: &str, pod: Option<(&Arc<Pod>, &[String])>) {
        let mut routes = write(&self.inner.routes);
        routes.by_hostname.retain(|_, owner| owner != name);
        match pod {
            Some((pod, hostnames)) => {
                for hostname in hostnames {
                    routes.by_hostname.insert(hostname.clone(), name.to_string());
                }
                routes.by_name.insert(name.to_string(), pod.clone());
            }
            None => {
                routes.by_name.remove(name);
            }
        }
    }
}

/// A blocking store task that did not finish (it panicked) as a store error.
fn joined(e: tokio::task::JoinError, path: PathBuf) -> StoreError {
    StoreError::Io {
        what: "cannot write",
        path,
        source: std::io::Error::other(e.to_string()),
    }
}

/// The memory a pod's containers declare together; `None` when one declares none.
fn memory_of(spec: &PodSpec) -> Option<u64> {
    spec.all_containers().map(|c| c.resources.memory).sum()
}

/// Refuses a pod that would take the host past `cap` bytes, or that leaves a container's memory
/// unbounded under a cap.
fn check_memory(spec: &PodSpec, others: u64, cap: u64) -> Result<(), HostError> {
    if let Some(container) = spec.all_containers().find(|c| c.resources.memory.is_none()) {
        return Err(HostError::Memory(format!(
            "container {:?} declares no `resources.memory`, which this host requires: it caps the \
             memory of all pods together (max_total_memory = {cap} bytes)",
            container.name
        )));
    }
    let wanted = memory_of(spec).unwrap_or(0);
    if others.saturating_add(wanted) > cap {
        return Err(HostError::Memory(format!(
            "pod {:?} declares {wanted} bytes of memory; with the {others} bytes the other pods \
             declare that is past the host's max_total_memory of {cap} bytes",
            spec.name
        )));
    }
    Ok(())
}

/// The default state directory: `$XDG_DATA_HOME/wasmpod/host`, else `~/.local/share/wasmpod/host`.
pub fn default_state_dir() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("XDG_DATA_HOME") {
        return dir.join("wasmpod").join("host");
    }
    match set("HOME") {
        Some(home) => home.join(".local/share/wasmpod/host"),
        None => Path::new(".wasmpod-host").to_path_buf(),
    }
}

/// The default API socket: `edge/host.sock` in the per-user runtime directory. In a
/// subdirectory because `wasmpod run` keeps `POD.sock` control sockets in the runtime directory
/// itself: there, `host.sock` would collide with a pod named `host` and `wasmpod ps` would list
/// the edge host as a pod.
pub fn default_socket() -> PathBuf {
    crate::runtime_dir::path().join("edge").join("host.sock")
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

use crate::sync::{lock, read, write};

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_host_headers() {
        assert_eq!(strip_port("hello.localhost:8080"), "hello.localhost");
        assert_eq!(strip_port("hello.localhost"), "hello.localhost");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
