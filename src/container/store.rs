//! The one place that turns "this container of this pod" into a ready wasmtime Store.
//!
//! Every kind of container — a command run, each request of an http container, a health
//! check's instance — runs in a Store built here, so every kind sees exactly the same things
//! and is held to exactly the same limits: its own args, env and mounts (nothing of the
//! host's), stdout/stderr into the pod's logs, the pod's virtual network with the container's
//! egress policy (denials become events), outgoing `wasi:http` routed by the pod, the
//! container's memory budget (one [`MemoryAccount`] shared by all of its Stores at once) and
//! its CPU share. How a Store is then driven is the kind's business ([`super::command`],
//! [`super::http`], [`super::health`]).

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::counters::{ContainerCounters, PodCounters};
use crate::engine::Engine;
use crate::logs::{Logs, Stream};
use crate::net::budget::SocketLimits;
use crate::net::egress::{Denied, DeniedHook, EgressPolicy};
use crate::net::p2::{NetCtxView, NetView};
use crate::net::{ContainerNet, PodNetwork};
use crate::resources::{CpuShare, MemoryAccount, MemoryBudget};
use crate::route::{NoPodRoutes, OutgoingHooks, OutgoingRoute};
use crate::spec::ContainerSpec;
use crate::status::{EventKind, Events};
use crate::volume::Mount;

/// The per-Store state of every container kind.
pub struct ContainerData {
    wasi: WasiCtx,
    table: ResourceTable,
    net: Arc<ContainerNet>,
    memory: MemoryBudget,
    http: WasiHttpCtx,
    /// Routes outgoing wasi:http requests inside the pod, or out through egress.
    hooks: OutgoingHooks,
}

impl ContainerData {
    /// This Store's attachment to the pod network.
    pub fn net(&self) -> &Arc<ContainerNet> {
        &self.net
    }

    /// This Store's share of the container's memory budget.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
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

impl NetView for ContainerData {
    fn net_view(&mut self) -> NetCtxView<'_> {
        NetCtxView {
            table: &mut self.table,
            net: &self.net,
        }
    }
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

/// The imports every container gets, whatever its kind: WASI 0.2 with wasi:sockets served by
/// the pod's virtual network instead of the host's, plus wasi:http routed by the pod. Built
/// once per engine and shared (a pod start does not pay for building it again).
pub fn linker(engine: &Engine) -> Result<Arc<Linker<ContainerData>>, wasmtime::Error> {
    super::shared_linker_on(engine.wasmtime())
}

/// [`linker`] on one wasmtime engine: a component is linked on the engine that compiled it
/// (tiered compilation's baseline code has an engine of its own, see [`crate::engine`]).
pub fn linker_on(engine: &wasmtime::Engine) -> Result<Linker<ContainerData>, wasmtime::Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::net::p2::add_to_linker(&mut linker).map_err(|e| wasmtime::Error::msg(format!("{e:#}")))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// What a pod gives each of its containers: the engine, its logs and events, its network and
/// the routes of outgoing requests.
#[derive(Clone)]
pub struct PodServices {
    pub engine: Engine,
    pub logs: Logs,
    pub events: Events,
    pub network: Arc<PodNetwork>,
    pub routes: Arc<dyn OutgoingRoute>,
    /// Each container's traffic and resource counters, by name (kept across its versions).
    pub counters: Arc<PodCounters>,
}

impl PodServices {
    /// A container on its own (tests, embedders): a network of its own and no pod routes.
    pub fn standalone(engine: &Engine, logs: Logs, events: Events) -> PodServices {
        PodServices {
            engine: engine.clone(),
            logs,
            events,
            network: PodNetwork::new(),
            routes: Arc::new(NoPodRoutes),
            counters: PodCounters::new(),
        }
    }
}

/// One container of a pod, as every Store of it is built: its spec, mounts, the pod's
/// services, its egress policy and its memory account.
pub struct ContainerRuntime {
    spec: ContainerSpec,
    mounts: Vec<Mount>,
    pod: PodServices,
    egress: EgressPolicy,
    memory: Arc<MemoryAccount>,
    cpu: CpuShare,
    counters: Arc<ContainerCounters>,
}

impl ContainerRuntime {
    pub fn new(spec: ContainerSpec, mounts: Vec<Mount>, pod: PodServices) -> ContainerRuntime {
        // The spec holds the egress policy parsed once, when it was read.
        let egress = spec.allowed_outbound_hosts.clone();
        let memory = MemoryAccount::new(spec.resources.memory);
        // The pod's counters of this container: the same for every version of it.
        let counters = pod.counters.container(&spec.name);
        counters.track_memory(&memory);
        ContainerRuntime {
            memory,
            cpu: CpuShare::new(spec.resources.cpu),
            counters,
            spec,
            mounts,
            pod,
            egress,
        }
    }

    pub fn spec(&self) -> &ContainerSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn engine(&self) -> &Engine {
        &self.pod.engine
    }

    pub fn events(&self) -> &Events {
        &self.pod.events
    }

    pub fn network(&self) -> &Arc<PodNetwork> {
        &self.pod.network
    }

    /// The container's memory, shared by all its Stores (and its socket buffers).
    pub fn memory(&self) -> &Arc<MemoryAccount> {
        &self.memory
    }

    /// The container's CPU share, shared by all its Stores.
    pub fn cpu(&self) -> &CpuShare {
        &self.cpu
    }

    /// The container's traffic and resource counters, shared by all its Stores and versions.
    pub fn counters(&self) -> &Arc<ContainerCounters> {
        &self.counters
    }

    /// Replaces the routes of outgoing requests (before the container is shared).
    pub fn set_routes(&mut self, routes: Arc<dyn OutgoingRoute>) {
        self.pod.routes = routes;
    }

    /// A fresh Store for one run, request or check. `stdin`: what the guest reads on standard
    /// input; `None` is an empty stdin. The Store's network attachment is released when the
    /// Store is dropped (connections closed); a caller that wants them reset calls
    /// [`ContainerNet::abort`] on [`ContainerData::net`] first.
    pub fn store(&self, stdin: Option<tokio::io::DuplexStream>) -> Result<Store<ContainerData>, String> {
        self.store_on(self.pod.engine.wasmtime(), stdin)
    }

    /// [`ContainerRuntime::store`] on the wasmtime engine that compiled the code to run in it
    /// (see [`crate::engine::TierCode::engine`]).
    pub fn store_on(
        &self,
        engine: &wasmtime::Engine,
        stdin: Option<tokio::io::DuplexStream>,
    ) -> Result<Store<ContainerData>, String> {
        let wasi = self.wasi_context(stdin)?;
        let net = Arc::new(self.attach());
        let data = ContainerData {
            wasi,
            table: ResourceTable::new(),
            hooks: OutgoingHooks::new(self.pod.routes.clone(), net.clone()),
            net,
            memory: MemoryBudget::in_account(self.memory.clone()),
            http: WasiHttpCtx::new(),
        };
        let mut store = Store::new(engine, data);
        store.limiter(|data| &mut data.memory);
        self.cpu.install(&mut store);
        Ok(store)
    }

    /// Attaches a Store to the pod network with the container's egress policy and memory account; refusals
    /// (sockets, lookups and outgoing HTTP alike) become events naming the container.
    fn attach(&self) -> ContainerNet {
        let events = self.pod.events.clone();
        let counters = self.counters.clone();
        let on_denied: DeniedHook = Arc::new(move |denied: Denied| {
            counters.record_denial(denied.kind);
            events.emit(
                Some(&denied.container),
                EventKind::EgressDenied {
                    kind: denied.kind,
                    destination: denied.destination,
                },
            );
        });
        // Bytes its sockets keep queued in the host count against the same memory account as
        // its linear memories, under the default per-Store socket caps.
        self.pod
            .network
            .attach_limited(
                &self.spec.name,
                self.egress.clone(),
                Some(on_denied),
                self.memory.clone(),
                SocketLimits::default(),
            )
            .counting_into(self.counters.clone())
    }

    /// The container's WASI context: only its own args, env, stdio and mounts; no host
    /// environment, no host directory beyond its mounts, no host sockets.
    fn wasi_context(&self, stdin: Option<tokio::io::DuplexStream>) -> Result<WasiCtx, String> {
        let spec = &self.spec;
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
        builder.stdout(self.pod.logs.output(&spec.name, Stream::Stdout));
        builder.stderr(self.pod.logs.output(&spec.name, Stream::Stderr));
        // Real sockets stay closed: the pod's network is provided separately, never the host's.
        builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for mount in &self.mounts {
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
}
