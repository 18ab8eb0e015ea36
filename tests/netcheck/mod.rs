//! Runs the `netcheck` guest (plain `std::net`) as a container of a bare [`PodNetwork`], in its
//! own Store linked with wasmtime-wasi plus `wasmpod::net::p2::add_to_linker`: the pod network
//! under real guests, without the rest of the pod runtime. Shared by the network test binaries
//! and the network benchmark.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmpod::net::p2::{NetCtxView, NetView};
use wasmpod::net::{ContainerNet, DeniedHook, EgressPolicy, PodNetwork, SocketLimits};
use wasmpod::resources::{MemoryAccount, MemoryBudget};
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

/// Generous: CI machines are small and shared.
pub const DEADLINE: Duration = Duration::from_secs(120);

pub struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    net: ContainerNet,
    /// The Store's share of the container's memory account (the one its sockets draw on).
    memory: MemoryBudget,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl NetView for Ctx {
    fn net_view(&mut self) -> NetCtxView<'_> {
        NetCtxView {
            table: &mut self.table,
            net: &self.net,
        }
    }
}

pub struct Guest {
    engine: wasmtime::Engine,
    component: Component,
    linker: Linker<Ctx>,
}

/// The netcheck guest, compiled once per process (and cached on disk across processes).
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("wasmpod-test-cache");
        let engine = wasmpod::Engine::new(Some(cache)).expect("engine");
        let wasm = PathBuf::from(env!("WASMPOD_GUESTS_DIR")).join("netcheck.wasm");
        let component = engine
            .compile_file(&wasm, "netcheck")
            .expect("compile netcheck")
            .component;
        let engine = engine.wasmtime().clone();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        wasmpod::net::p2::add_to_linker(&mut linker).expect("pod network");
        Guest {
            engine,
            component,
            linker,
        }
    })
}

/// Runs `netcheck` with `args` as container `name` of `pod` (deny-all egress); returns
/// (exit code, stdout).
pub async fn run(pod: &Arc<PodNetwork>, name: &str, args: &str) -> (i32, String) {
    run_attached(pod.attach(name), name, args).await
}

/// Like [`run`], with `rules` as the container's `allowed_outbound_hosts` and a denial hook.
pub async fn run_with_egress(
    pod: &Arc<PodNetwork>,
    name: &str,
    rules: &[String],
    hook: DeniedHook,
    args: &str,
) -> (i32, String) {
    let policy = EgressPolicy::parse(rules).expect("rules parse");
    run_attached(pod.attach_with(name, policy, Some(hook)), name, args).await
}

/// Like [`run`], as a container with a memory account (shared by its linear memory and its
/// socket buffers, as the container runtime does) and socket limits.
pub async fn run_limited(
    pod: &Arc<PodNetwork>,
    name: &str,
    account: Arc<MemoryAccount>,
    limits: SocketLimits,
    args: &str,
) -> (i32, String) {
    let net = pod.attach_limited(name, EgressPolicy::deny_all(), None, account, limits);
    run_attached(net, name, args).await
}

async fn run_attached(net: ContainerNet, name: &str, args: &str) -> (i32, String) {
    let g = guest();
    let stdout = MemoryOutputPipe::new(1 << 20);
    let stderr = MemoryOutputPipe::new(1 << 20);
    let mut argv = vec!["netcheck".to_string()];
    argv.extend(args.split_whitespace().map(String::from));
    // Defense in depth, as the container runtime does: wasmtime-wasi's own sockets deny all,
    // so every socket call must go through the pod network.
    let wasi = WasiCtx::builder()
        .args(&argv)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let memory = MemoryBudget::in_account(net.memory().clone());
    let mut store = Store::new(
        &g.engine,
        Ctx {
            wasi,
            table: ResourceTable::new(),
            net,
            memory,
        },
    );
    store.limiter(|c| &mut c.memory);
    // wasmpod's engine interrupts at epoch ticks; yield there, as every container does.
    wasmpod::resources::CpuShare::new(None).install(&mut store);
    let fut = async {
        let cmd = Command::instantiate_async(&mut store, &g.component, &g.linker).await?;
        cmd.wasi_cli_run().call_run(&mut store).await
    };
    let code = match tokio::time::timeout(DEADLINE, fut).await.expect("guest deadline") {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 1,
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(c)) => *c,
            None => panic!(
                "{name} trapped: {e:?}\nstderr: {}",
                String::from_utf8_lossy(&stderr.contents())
            ),
        },
    };
    drop(store); // the container exits: its ports and connections go with the Store
    let err = String::from_utf8_lossy(&stderr.contents()).to_string();
    if !err.is_empty() {
        eprintln!("[{name} stderr] {err}");
    }
    (code, String::from_utf8_lossy(&stdout.contents()).to_string())
}
