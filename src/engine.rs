//! The process-wide wasmtime engine: configuration, the one epoch ticker, compiled components
//! cached on disk, and tiered compilation (fast baseline code first, optimized code later).
//!
//! A process runs every pod on one [`Engine`] (see [`Engine::shared`]): components are compiled
//! once per process and once per machine (the on-disk cache is keyed by the component's bytes
//! and the engine's compatibility hash), and a single ticker thread advances the epoch that
//! lets long-running guests yield and be cancelled. This module knows nothing of pods or specs.
//!
//! # Tiered start ([`Compiler::Tiered`], the default of [`Engine::shared`])
//!
//! A component that is not cached is compiled first with Winch, wasmtime's baseline compiler
//! (several times faster to compile, slower code), so its container starts at once; Cranelift
//! compiles the optimized code in the background, and that is what the disk cache keeps (Winch
//! code is never cached). The design rests on one wasmtime rule: a `Component` compiled by one
//! `wasmtime::Engine` can only be linked (`Linker`, `InstancePre`) and instantiated (`Store`)
//! with that same Engine, and the compiler is a per-Engine setting. So:
//!
//! - The engine holds two wasmtime Engines: the main one ([`Engine::wasmtime`], Cranelift, with
//!   the pooling allocator — everything cached, linked by pods and embedders as before) and,
//!   created on first need, a baseline one (Winch, the on-demand allocator: it only serves
//!   until the optimized code is ready, and reserving a second pool would double the address
//!   space held). The one epoch ticker thread advances both.
//! - [`Engine::compile`] returns baseline code for an uncached component: its
//!   `Compiled::component.engine()` is then the baseline Engine, not [`Engine::wasmtime`], and
//!   [`Compiled::tier`] says so. Callers that link components themselves use
//!   `component.engine()`; [`Engine::new`] stays Cranelift-only, so their old code still works.
//! - Where code is chosen per instance, a [`TieredCode`] holds the linked code (an InstancePre
//!   or a typed `…Pre`) together with the Engine its Stores must come from, and swaps both to
//!   the optimized component the first time an instance is asked for after it is ready (found
//!   through [`Engine::tiers_of`] by the baseline component's code address). An instance
//!   already running keeps the code it was instantiated with: a running command container
//!   keeps its Winch code until it restarts; new requests, restarts and new pods get Cranelift
//!   code ([`Engine::compile`] answers with the optimized component once it exists).
//! - Background compiles run one at a time on one worker thread per engine, fed by a bounded
//!   queue, inside a thread pool of their own whose threads run at a lower CPU priority
//!   (`nice` 10 on Linux) than the threads that serve; one starts only while no compile that a
//!   start waits for runs (another container's baseline compile), and [`Engine::pause_tier_up`]
//!   holds them.
//!   A process that exits with background compiles unfinished abandons them (the next start
//!   compiles again), finishing only a cache file being written; a caller that wants the
//!   cache filled waits first with [`Engine::finish_tier_up`] (`wasmpod run` does when its pod
//!   ended on its own, not when it is stopped).
//! - Where Winch cannot compile a component (an unsupported proposal, an unsupported
//!   platform), it is compiled with Cranelift right away and a [`TierNotice::BaselineUnsupported`]
//!   is handed once to the container that first links it: an event, never an error.
//!
//! [`Compiler::Cranelift`] is the behaviour before tiering (one Engine); [`Compiler::Winch`]
//! compiles (and caches) Winch code only.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// How often the epoch advances; a guest that never yields is interrupted this often. It bounds
/// how long a busy guest can hold a worker thread that a sibling needs: 2 ms instead of 10 ms
/// cut the worst request latency beside a spinning container from 20 ms to 5 ms at the same
/// throughput (BENCHMARKS.md); the ticker costs one atomic increment per tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Components waiting for their optimized compile; beyond this many a component keeps its
/// baseline code until the process restarts (a pod has a handful of components, so this is
/// only reached by an embedder compiling hundreds of distinct components at once).
const TIER_UP_QUEUE: usize = 64;

/// The CPU priority (`nice`) of background threads: those that compile optimized code, and
/// the edge host's checkpointer.
const BACKGROUND_NICE: i32 = 10;

/// At most how long a process that exits waits for a cache file being written (tens of
/// milliseconds for a 50 MB artifact): never for a compile.
const EXIT_WRITE_WAIT: Duration = Duration::from_secs(10);

/// Why a component could not be compiled or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a valid WASI 0.2 component: {message}")]
    Invalid { what: String, message: String },
    #[error("the wasmtime engine could not be created: {0}")]
    Engine(String),
    #[error("unknown compiler {0:?} (WASMPOD_COMPILER): expected tiered, cranelift or winch")]
    UnknownCompiler(String),
}

/// Which compiler(s) an engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compiler {
    /// Winch first for an uncached component, Cranelift in the background; Cranelift code is
    /// cached and served once ready.
    #[default]
    Tiered,
    /// Cranelift only: the first instance waits for the optimized compile.
    Cranelift,
    /// Winch only (fast compiles, slower code; its code is cached).
    Winch,
}

impl Compiler {
    /// `WASMPOD_COMPILER` (`tiered`, `cranelift` or `winch`); unset or empty means tiered.
    pub fn from_env() -> Result<Compiler, CompileError> {
        match std::env::var("WASMPOD_COMPILER") {
            Ok(value) => value.parse(),
            Err(_) => Ok(Compiler::default()),
        }
    }
}

impl std::str::FromStr for Compiler {
    type Err = CompileError;

    fn from_str(s: &str) -> Result<Compiler, CompileError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "tiered" => Ok(Compiler::Tiered),
            "cranelift" => Ok(Compiler::Cranelift),
            "winch" => Ok(Compiler::Winch),
            _ => Err(CompileError::UnknownCompiler(s.to_string())),
        }
    }
}

/// The kind of code that serves an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Winch code: compiled quickly, runs slower.
    Baseline,
    /// Cranelift code.
    Optimized,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Baseline => "baseline (Winch)",
            Tier::Optimized => "optimized (Cranelift)",
        })
    }
}

/// Where a compiled component came from, reported so users see the cache working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Already compiled in this process.
    Memory,
    /// Loaded from the on-disk cache.
    DiskCache,
    /// Compiled now (and stored in the cache, unless it is tiered baseline code).
    Compiled,
}

/// A compiled component plus how it was obtained. `component` belongs to
/// `component.engine()`: [`Engine::wasmtime`], except for baseline code of a tiered engine.
#[derive(Clone)]
pub struct Compiled {
    pub component: Component,
    pub source: CompileSource,
    pub elapsed: Duration,
    /// Which code `component` is.
    pub tier: Tier,
}

/// Something about a component's tiers worth an event, handed to the container that links it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierNotice {
    /// Baseline code serves; the optimized code is being compiled in the background.
    ServingBaseline,
    /// The optimized code (compiled in `took`) serves new instances from now on.
    TieredUp { took: Duration },
    /// Winch cannot compile this component: it was compiled with Cranelift only.
    BaselineUnsupported { reason: String },
    /// The background compile failed or was skipped: baseline code keeps serving.
    TierUpFailed { reason: String },
}

impl std::fmt::Display for TierNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TierNotice::ServingBaseline => {
                write!(f, "serving {} code; optimizing in the background", Tier::Baseline)
            }
            TierNotice::TieredUp { took } => write!(
                f,
                "now serving {} code (compiled in the background in {took:.1?})",
                Tier::Optimized
            ),
            TierNotice::BaselineUnsupported { reason } => {
                write!(
                    f,
                    "Winch cannot compile this component ({reason}); compiled with Cranelift only"
                )
            }
            TierNotice::TierUpFailed { reason } => {
                write!(
                    f,
                    "optimized compile failed ({reason}); {} code keeps serving",
                    Tier::Baseline
                )
            }
        }
    }
}

/// How the tiers of one component stand (see [`Engine::tier_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStats {
    /// The tier new instances get now (`None` for a component this engine has not compiled).
    pub serving: Option<Tier>,
    /// Instances created from baseline code so far (requests, runs, health checks).
    pub baseline_instances: u64,
    /// Instances created from optimized code after a tier-up.
    pub optimized_instances: u64,
    /// How long the baseline compile took.
    pub baseline_compile: Option<Duration>,
    /// How long the background optimized compile took, once done.
    pub optimized_compile: Option<Duration>,
}

/// A component compiled at both tiers (the optimized one once the background compile is done).
#[derive(Clone)]
pub struct TieredComponent {
    state: Arc<TierState>,
}

struct TierState {
    baseline: Component,
    baseline_took: Duration,
    optimized: OnceLock<(Component, Duration)>,
    failed: OnceLock<String>,
    baseline_instances: AtomicU64,
    optimized_instances: AtomicU64,
}

impl TieredComponent {
    /// The optimized component, once compiled.
    pub fn optimized(&self) -> Option<&Component> {
        self.state.optimized.get().map(|(component, _)| component)
    }

    /// The baseline (Winch) component.
    pub fn baseline(&self) -> &Component {
        &self.state.baseline
    }

    /// The tier [`Engine::compile`] hands out now.
    pub fn tier(&self) -> Tier {
        if self.state.optimized.get().is_some() {
            Tier::Optimized
        } else {
            Tier::Baseline
        }
    }

    /// Counts one instance created from `tier` code.
    pub fn count_instance(&self, tier: Tier) {
        let counter = match tier {
            Tier::Baseline => &self.state.baseline_instances,
            Tier::Optimized => &self.state.optimized_instances,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> TierStats {
        TierStats {
            serving: Some(self.tier()),
            baseline_instances: self.state.baseline_instances.load(Ordering::Relaxed),
            optimized_instances: self.state.optimized_instances.load(Ordering::Relaxed),
            baseline_compile: Some(self.state.baseline_took),
            optimized_compile: self.state.optimized.get().map(|(_, took)| *took),
        }
    }
}

/// What [`Engine::compile`] keeps per component digest.
#[derive(Clone)]
enum Known {
    /// One component serves every instance (Cranelift-only or Winch-only engines, cached or
    /// fallen back code).
    Single(Component),
    /// Baseline code, upgraded once the background compile is done.
    Tiered(TieredComponent),
}

impl Known {
    fn current(&self, main_tier: Tier) -> (Component, Tier) {
        match self {
            Known::Single(component) => (component.clone(), main_tier),
            Known::Tiered(tiered) => match tiered.optimized() {
                Some(component) => (component.clone(), Tier::Optimized),
                None => (tiered.baseline().clone(), Tier::Baseline),
            },
        }
    }
}

/// Builds an [`Engine`]: its cache directory and compiler.
#[derive(Debug, Clone, Default)]
pub struct EngineBuilder {
    cache_dir: Option<PathBuf>,
    compiler: Compiler,
    tier_up_paused: bool,
}

impl EngineBuilder {
    /// Where compiled components are cached (`None`, the default: no disk cache).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// Which compiler(s) to use (default [`Compiler::Tiered`]).
    pub fn compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    /// Starts with background compiles held (see [`Engine::pause_tier_up`]).
    pub fn tier_up_paused(mut self, paused: bool) -> Self {
        self.tier_up_paused = paused;
        self
    }

    pub fn build(self) -> Result<Engine, CompileError> {
        let strategy = match self.compiler {
            Compiler::Winch => wasmtime::Strategy::Winch,
            Compiler::Tiered | Compiler::Cranelift => wasmtime::Strategy::Cranelift,
        };
        // Per-request instantiation of http containers is the hot path, and the pooling
        // allocator roughly halves it (slots are reused instead of mmap'd and zeroed per
        // instance). It reserves its address space up front, which fails where virtual memory
        // is capped (`ulimit -v`, some sandboxes): then the on-demand allocator still works.
        let (wasmtime, pooling) = match wasmtime::Engine::new(&engine_config(strategy, Some(pooling_config()))) {
            Ok(engine) => (engine, true),
            Err(_) => {
                let engine = wasmtime::Engine::new(&engine_config(strategy, None))
                    .map_err(|e| CompileError::Engine(format!("{e:#}")))?;
                (engine, false)
            }
        };
        let ticked = Arc::new(OnceLock::new());
        spawn_epoch_ticker(&wasmtime, ticked.clone());
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                pooling,
                compiler: self.compiler,
                cache_dir: self.cache_dir,
                baseline: ticked,
                memory: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                by_code: Mutex::new(HashMap::new()),
                notices: Mutex::new(HashMap::new()),
                tier_up: OnceLock::new(),
                backlog: Arc::new(Backlog::default()),
                gate: Arc::new(TierUpGate {
                    paused: Mutex::new(self.tier_up_paused),
                    foreground: Mutex::new(0),
                    changed: Condvar::new(),
                }),
            }),
        })
    }
}

/// The wasmtime engine shared by every pod of a process, with its component cache.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    /// The main engine: Cranelift (Winch for [`Compiler::Winch`]); cached code is its code.
    wasmtime: wasmtime::Engine,
    pooling: bool,
    compiler: Compiler,
    cache_dir: Option<PathBuf>,
    /// The baseline (Winch) engine of a tiered engine, created on first need; `Err` when it
    /// cannot be created here (then every compile is Cranelift-only). Shared with the ticker.
    baseline: Arc<OnceLock<Result<wasmtime::Engine, String>>>,
    /// Components compiled in this process, by content digest.
    memory: Mutex<HashMap<String, Known>>,
    /// Component files already compiled in this process, by path, with the size and
    /// modification time they had: an unchanged file is not read and hashed again.
    files: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
    /// Baseline components by the address of their code, so a container given one finds its
    /// optimized successor.
    by_code: Mutex<HashMap<usize, TieredComponent>>,
    /// Notices for the first container linking a component, by the address of its code.
    notices: Mutex<HashMap<usize, TierNotice>>,
    /// The background compile worker, started on first need.
    tier_up: OnceLock<Option<SyncSender<TierUpJob>>>,
    /// Background compiles queued or running.
    backlog: Arc<Backlog>,
    gate: Arc<TierUpGate>,
}

/// Counts background compiles not yet finished (see [`Engine::finish_tier_up`]).
#[derive(Default)]
struct Backlog {
    pending: Mutex<usize>,
    done: Condvar,
}

impl Backlog {
    fn add(&self) {
        *lock(&self.pending) += 1;
    }

    fn finish(&self) {
        let mut pending = lock(&self.pending);
        *pending = pending.saturating_sub(1);
        self.done.notify_all();
    }

    fn pending(&self) -> usize {
        *lock(&self.pending)
    }
}

/// Cache files being written, process-wide, and whether the process is exiting: a process
/// that exits abandons its background compiles (threads simply end) but must not leave a
/// half-written temporary file in the cache, so the exit hook waits for writes in progress
/// and no write starts after it.
struct CacheWrites {
    state: Mutex<CacheWriteState>,
    idle: Condvar,
}

#[derive(Default)]
struct CacheWriteState {
    writing: usize,
    exiting: bool,
}

static CACHE_WRITES: CacheWrites = CacheWrites {
    state: Mutex::new(CacheWriteState {
        writing: 0,
        exiting: false,
    }),
    idle: Condvar::new(),
};

impl CacheWrites {
    /// Writes `component` to `path` unless the process is exiting.
    fn store(&self, component: &Component, path: &Path) -> std::io::Result<()> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        // SAFETY: `atexit` only records a function pointer; the function is a plain
        // `extern "C" fn` that never unwinds (it only locks and waits, bounded).
        HOOK.call_once(|| unsafe {
            libc::atexit(close_cache_at_exit);
        });
        {
            let mut state = lock(&self.state);
            if state.exiting {
                return Err(std::io::Error::other("the process is exiting"));
            }
            state.writing += 1;
        }
        let stored = store_cached(component, path);
        let mut state = lock(&self.state);
        state.writing -= 1;
        self.idle.notify_all();
        stored
    }

    /// Stops new writes and waits (bounded) for those in progress.
    fn close(&self) {
        let deadline = Instant::now() + EXIT_WRITE_WAIT;
        let mut state = lock(&self.state);
        state.exiting = true;
        while state.writing > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = match self.idle.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Runs when the process exits (`atexit`): background compiles are abandoned — the next start
/// compiles again — but a cache file being written is finished first (see [`CacheWrites`]).
/// Waiting for the compile itself (tens of seconds for a big component, longer on a busy
/// machine) made every stop of a fresh component that slow; [`Engine::finish_tier_up`] is
/// how a caller chooses to wait instead.
extern "C" fn close_cache_at_exit() {
    CACHE_WRITES.close();
}

/// Holds background compiles while paused, and while a compile that a start waits for runs
/// in the foreground (the next container's baseline compile must not share the cores with
/// the previous one's optimized compile: that is the time to its first answer).
struct TierUpGate {
    paused: Mutex<bool>,
    /// Foreground compiles running now.
    foreground: Mutex<usize>,
    changed: Condvar,
}

impl TierUpGate {
    /// Waits until background compiles may start: not paused, no foreground compile running.
    fn wait_open(&self) {
        let mut paused = lock(&self.paused);
        loop {
            if !*paused && *lock(&self.foreground) == 0 {
                return;
            }
            paused = self.changed.wait(paused).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Marks a foreground compile as running until the guard is dropped.
    fn foreground(&self) -> ForegroundCompile<'_> {
        *lock(&self.foreground) += 1;
        ForegroundCompile { gate: self }
    }
}

/// A foreground compile running (see [`TierUpGate::foreground`]).
struct ForegroundCompile<'a> {
    gate: &'a TierUpGate,
}

impl Drop for ForegroundCompile<'_> {
    fn drop(&mut self) {
        {
            let mut running = lock(&self.gate.foreground);
            *running = running.saturating_sub(1);
        }
        // Under the `paused` lock, so a waiter between its check and its wait cannot miss it.
        let _paused = lock(&self.gate.paused);
        self.gate.changed.notify_all();
    }
}

/// One optimized compile to do in the background.
struct TierUpJob {
    bytes: Vec<u8>,
    digest: String,
    tiered: TieredComponent,
}

/// What identifies a file's version cheaply (a changed file changes its size or mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Engine {
    /// The process-wide engine (created on first use, cached on disk under
    /// [`default_cache_dir`], compiler from `WASMPOD_COMPILER`, default tiered).
    pub fn shared() -> Result<Engine, CompileError> {
        static SHARED: OnceLock<Engine> = OnceLock::new();
        if let Some(engine) = SHARED.get() {
            return Ok(engine.clone());
        }
        let engine = Engine::builder()
            .cache_dir(default_cache_dir())
            .compiler(Compiler::from_env()?)
            .build()?;
        Ok(SHARED.get_or_init(|| engine).clone())
    }

    /// A new Cranelift-only engine with its own epoch ticker; `cache_dir: None` disables the
    /// on-disk cache. Every component it compiles belongs to [`Engine::wasmtime`]. For tiered
    /// compilation use [`Engine::builder`].
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Engine, CompileError> {
        Engine::builder()
            .cache_dir(cache_dir)
            .compiler(Compiler::Cranelift)
            .build()
    }

    /// A builder: tiered compilation, no disk cache unless given one.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Whether instances come from the pooling allocator (false: it could not reserve its
    /// memory, so each instance is allocated on demand).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The compiler(s) this engine uses.
    pub fn compiler(&self) -> Compiler {
        self.inner.compiler
    }

    /// The main wasmtime engine: cached (Cranelift) code and everything not tiered belongs to
    /// it. Baseline code of a tiered engine belongs to another one: see `Component::engine`.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    /// The on-disk cache directory, if caching is on.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.cache_dir.as_deref()
    }

    /// The tier of the main engine's code.
    fn main_tier(&self) -> Tier {
        match self.inner.compiler {
            Compiler::Winch => Tier::Baseline,
            Compiler::Tiered | Compiler::Cranelift => Tier::Optimized,
        }
    }

    /// The tier of a component compiled by this engine.
    pub fn tier_of(&self, component: &Component) -> Tier {
        if wasmtime::Engine::same(component.engine(), &self.inner.wasmtime) {
            self.main_tier()
        } else {
            Tier::Baseline
        }
    }

    /// The tiers of a baseline component handed out by [`Engine::compile`] (`None` for any
    /// other component).
    pub fn tiers_of(&self, component: &Component) -> Option<TieredComponent> {
        lock(&self.inner.by_code).get(&code_address(component)).cloned()
    }

    /// The notice about `component` for the first container that links it (once).
    pub fn take_notice(&self, component: &Component) -> Option<TierNotice> {
        lock(&self.inner.notices).remove(&code_address(component))
    }

    /// How the tiers of these component bytes stand (see [`TierStats`]).
    pub fn tier_stats(&self, bytes: &[u8]) -> TierStats {
        self.stats_of_digest(&self.digest(bytes))
    }

    /// Like [`Engine::tier_stats`], for a component file compiled with [`Engine::compile_file`].
    pub fn tier_stats_of_file(&self, path: &Path) -> TierStats {
        let digest = lock(&self.inner.files).get(path).map(|(_, digest)| digest.clone());
        match digest {
            Some(digest) => self.stats_of_digest(&digest),
            None => TierStats::default(),
        }
    }

    fn stats_of_digest(&self, digest: &str) -> TierStats {
        match self.lock_memory().get(digest) {
            Some(Known::Tiered(tiered)) => tiered.stats(),
            Some(Known::Single(_)) => TierStats {
                serving: Some(self.main_tier()),
                ..TierStats::default()
            },
            None => TierStats::default(),
        }
    }

    /// Background compiles queued or running (their optimized code not ready yet).
    pub fn tier_up_pending(&self) -> usize {
        self.inner.backlog.pending()
    }

    /// Waits up to `timeout` for the background compiles to finish (and fill the cache);
    /// returns how many are still pending — at once while tier-up is paused. A process that
    /// exits does not wait for them by itself (they are abandoned and the next start compiles
    /// again): `wasmpod run` calls this when its pod ended on its own, so a short-lived
    /// command still leaves optimized code in the cache, and a stop signal skips the wait.
    /// Blocking: call it from a blocking thread.
    pub fn finish_tier_up(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let backlog = &self.inner.backlog;
        let mut pending = lock(&backlog.pending);
        while *pending > 0 && !*lock(&self.inner.gate.paused) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            pending = match backlog.done.wait_timeout(pending, left) {
                Ok((pending, _)) => pending,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *pending
    }

    /// Holds (`true`) or releases (`false`) background compiles: a compile already running
    /// finishes, the next one waits. For a burst of starts that should not share the CPU
    /// with optimization yet — and for tests that need baseline code to serve for a while.
    pub fn pause_tier_up(&self, paused: bool) {
        *lock(&self.inner.gate.paused) = paused;
        self.inner.gate.changed.notify_all();
        // A `finish_tier_up` waiting for paused compiles stops waiting.
        self.inner.backlog.done.notify_all();
    }

    /// Compiles component bytes, or finds them compiled in memory or on disk. `what` names the
    /// component in errors (e.g. `container "web" (/path/web.wasm)`). CPU-heavy: call it from a
    /// blocking thread.
    pub fn compile(&self, bytes: &[u8], what: &str) -> Result<Compiled, CompileError> {
        self.compile_digested(bytes, self.digest(bytes), what)
    }

    fn compile_digested(&self, bytes: &[u8], digest: String, what: &str) -> Result<Compiled, CompileError> {
        let started = Instant::now();
        if let Some(known) = self.lock_memory().get(&digest).cloned() {
            let (component, tier) = known.current(self.main_tier());
            return Ok(Compiled {
                component,
                source: CompileSource::Memory,
                elapsed: started.elapsed(),
                tier,
            });
        }
        let cached = self.cache_path(&digest);
        if let Some(path) = &cached
            && let Some(component) = self.load_cached(path)
        {
            self.lock_memory().insert(digest, Known::Single(component.clone()));
            return Ok(Compiled {
                component,
                source: CompileSource::DiskCache,
                elapsed: started.elapsed(),
                tier: self.main_tier(),
            });
        }
        let _foreground = self.inner.gate.foreground();
        if self.inner.compiler == Compiler::Tiered {
            match self.baseline_engine() {
                Ok(baseline) => match Component::new(&baseline, bytes) {
                    Ok(component) => return Ok(self.serve_baseline(component, bytes, digest, started)),
                    // Winch rejects what it does not support; Cranelift decides whether the
                    // component is valid at all.
                    Err(e) => return self.compile_main(bytes, digest, what, started, Some(format!("{e:#}"))),
                },
                Err(reason) => return self.compile_main(bytes, digest, what, started, Some(reason)),
            }
        }
        self.compile_main(bytes, digest, what, started, None)
    }

    /// Compiles with the main engine now, caches the code, and leaves a notice when this is a
    /// fallback from Winch.
    fn compile_main(
        &self,
        bytes: &[u8],
        digest: String,
        what: &str,
        started: Instant,
        fallback: Option<String>,
    ) -> Result<Compiled, CompileError> {
        let component = Component::new(&self.inner.wasmtime, bytes).map_err(|e| CompileError::Invalid {
            what: what.to_string(),
            message: format!("{e:#}"),
        })?;
        if let Some(path) = self.cache_path(&digest) {
            // A cache that cannot be written only costs time on the next start.
            let _ = CACHE_WRITES.store(&component, &path);
        }
        if let Some(reason) = fallback {
            lock(&self.inner.notices).insert(
                code_address(&component),
                TierNotice::BaselineUnsupported {
                    reason: first_line(&reason),
                },
            );
        }
        self.lock_memory().insert(digest, Known::Single(component.clone()));
        Ok(Compiled {
            component,
            source: CompileSource::Compiled,
            elapsed: started.elapsed(),
            tier: self.main_tier(),
        })
    }

    /// Registers freshly compiled baseline code and queues its optimized compile.
    fn serve_baseline(&self, component: Component, bytes: &[u8], digest: String, started: Instant) -> Compiled {
        let elapsed = started.elapsed();
        let tiered = TieredComponent {
            state: Arc::new(TierState {
                baseline: component.clone(),
                baseline_took: elapsed,
                optimized: OnceLock::new(),
                failed: OnceLock::new(),
                baseline_instances: AtomicU64::new(0),
                optimized_instances: AtomicU64::new(0),
            }),
        };
        lock(&self.inner.by_code).insert(code_address(&component), tiered.clone());
        self.lock_memory().insert(digest.clone(), Known::Tiered(tiered.clone()));
        let job = TierUpJob {
            bytes: bytes.to_vec(),
            digest,
            tiered: tiered.clone(),
        };
        self.inner.backlog.add();
        match self.tier_up_queue() {
            Some(queue) => match queue.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.inner.backlog.finish();
                    let _ = job
                        .tiered
                        .state
                        .failed
                        .set("too many components waiting to be optimized".into());
                }
                Err(TrySendError::Disconnected(job)) => {
                    self.inner.backlog.finish();
                    let _ = job.tiered.state.failed.set("the background compiler stopped".into());
                }
            },
            None => {
                self.inner.backlog.finish();
                let _ = tiered
                    .state
                    .failed
                    .set("the background compile thread could not be started".into());
            }
        }
        Compiled {
            component,
            source: CompileSource::Compiled,
            elapsed,
            tier: Tier::Baseline,
        }
    }

    /// The baseline (Winch) engine, created on first use with the main engine's settings.
    fn baseline_engine(&self) -> Result<wasmtime::Engine, String> {
        self.inner
            .baseline
            .get_or_init(|| {
                wasmtime::Engine::new(&engine_config(wasmtime::Strategy::Winch, None)).map_err(|e| format!("{e:#}"))
            })
            .clone()
    }

    /// The background compile worker's queue, started on first use.
    fn tier_up_queue(&self) -> Option<&SyncSender<TierUpJob>> {
        self.inner
            .tier_up
            .get_or_init(|| {
                let (sender, receiver) = std::sync::mpsc::sync_channel(TIER_UP_QUEUE);
                let engine = Arc::downgrade(&self.inner);
                let gate = self.inner.gate.clone();
                std::thread::Builder::new()
                    .name("wasmpod-tier-up".into())
                    .spawn(move || tier_up_worker(engine, gate, receiver))
                    .ok()
                    .map(|_| sender)
            })
            .as_ref()
    }

    /// Reads and compiles a component file (see [`Engine::compile`]).
    pub fn compile_file(&self, path: &Path, what: &str) -> Result<Compiled, CompileError> {
        let started = Instant::now();
        let read_error = |source| CompileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        let stamp = FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        };
        let known = lock(&self.inner.files)
            .get(path)
            .filter(|(seen, _)| *seen == stamp)
            .map(|(_, digest)| digest.clone())
            .and_then(|digest| self.lock_memory().get(&digest).cloned());
        if let Some(known) = known {
            let (component, tier) = known.current(self.main_tier());
            return Ok(Compiled {
                component,
                source: CompileSource::Memory,
                elapsed: started.elapsed(),
                tier,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let digest = self.digest(&bytes);
        let compiled = self.compile_digested(&bytes, digest.clone(), what)?;
        lock(&self.inner.files).insert(path.to_path_buf(), (stamp, digest));
        Ok(compiled)
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        lock(&self.inner.memory)
    }

    /// The cache key: the component's bytes plus everything that makes compiled code compatible.
    fn digest(&self, bytes: &[u8]) -> String {
        digest(&self.inner.wasmtime, bytes)
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        cache_path(&self.inner, digest)
    }

    fn load_cached(&self, path: &Path) -> Option<Component> {
        if !path.exists() {
            return None;
        }
        // SAFETY: files in the cache directory are written only by `store_cached` from
        // `Component::serialize` of this engine configuration (the file name is the digest of
        // the source bytes and the engine's compatibility hash), and are renamed into place
        // whole. wasmtime also checks the header and version before using the code.
        unsafe { Component::deserialize_file(&self.inner.wasmtime, path) }.ok()
    }
}

fn digest(engine: &wasmtime::Engine, bytes: &[u8]) -> String {
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let mut hasher = Sha256::new();
    hasher.update(compat.finish().to_le_bytes());
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(bytes);
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn cache_path(inner: &EngineInner, digest: &str) -> Option<PathBuf> {
    inner.cache_dir.as_ref().map(|dir| dir.join(format!("{digest}.cwasm")))
}

/// Identifies a loaded component for as long as it is alive: the address of its code.
fn code_address(component: &Component) -> usize {
    component.image_range().start as usize
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// Compiles optimized code for queued components, one at a time, at a lower CPU priority than
/// the threads that serve; ends when the engine is dropped.
fn tier_up_worker(engine: Weak<EngineInner>, gate: Arc<TierUpGate>, jobs: Receiver<TierUpJob>) {
    let backlog = match engine.upgrade() {
        Some(inner) => inner.backlog.clone(),
        None => return,
    };
    lower_thread_priority();
    // Cranelift compiles a component's functions in parallel on the current rayon pool: a
    // pool of our own, with lowered priority, keeps that parallelism off the serving threads'
    // priority level.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("wasmpod-tier-up-{i}"))
        .start_handler(|_| lower_thread_priority())
        .build()
        .ok();
    while let Ok(job) = jobs.recv() {
        gate.wait_open();
        let Some(inner) = engine.upgrade() else { return };
        let started = Instant::now();
        let compile = || Component::new(&inner.wasmtime, &job.bytes);
        let compiled = match &pool {
            Some(pool) => pool.install(compile),
            None => compile(),
        };
        match compiled {
            Ok(component) => {
                let took = started.elapsed();
                if let Some(path) = cache_path(&inner, &job.digest) {
                    // A cache that cannot be written only costs time on the next start.
                    let _ = CACHE_WRITES.store(&component, &path);
                }
                let _ = job.tiered.state.optimized.set((component, took));
            }
            Err(e) => {
                let _ = job.tiered.state.failed.set(first_line(&format!("{e:#}")));
            }
        }
        drop(inner);
        backlog.finish();
    }
}

/// Lowers the calling thread's CPU priority (Linux: per-thread `nice`), for background work
/// that must not delay requests and applies; elsewhere a no-op.
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` has no preconditions; `setpriority` on our own thread id only changes
    // this thread's nice value, and a failure (e.g. a seccomp filter) leaves it unchanged.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE);
    }
}

/// Code linked for one container (an `InstancePre` or a typed `…Pre`), at the best tier ready:
/// baseline code until the component's optimized code exists, then — from the next instance
/// on — optimized code, linked with `link` on the optimized component's engine.
pub struct TieredCode<P> {
    current: Mutex<Arc<TierCode<P>>>,
    tiers: Option<TieredComponent>,
    /// Set once the swap was tried (done or failed), so it is tried once.
    settled: AtomicBool,
    link: Box<Link<P>>,
    notify: Box<dyn Fn(TierNotice) + Send + Sync>,
}

/// Links a component for a container (see [`TieredCode::new`]).
type Link<P> = dyn Fn(&Component) -> Result<P, String> + Send + Sync;

/// Linked code and the engine its Stores must be made by.
pub struct TierCode<P> {
    pub tier: Tier,
    pub engine: wasmtime::Engine,
    pub pre: P,
}

impl<P> TieredCode<P> {
    /// Links `component` (as handed out by `engine`) with `link`, which is called again with
    /// the optimized component when it is ready. `notify` hears which tier serves.
    pub fn new(
        engine: &Engine,
        component: &Component,
        link: impl Fn(&Component) -> Result<P, String> + Send + Sync + 'static,
        notify: impl Fn(TierNotice) + Send + Sync + 'static,
    ) -> Result<TieredCode<P>, String> {
        let tiers = engine.tiers_of(component);
        // A container linked after the tier-up starts on optimized code directly.
        let start = tiers.as_ref().and_then(|t| t.optimized().cloned());
        let start = start.as_ref().unwrap_or(component);
        let pre = link(start)?;
        let tier = engine.tier_of(start);
        if let Some(notice) = engine.take_notice(start) {
            notify(notice);
        }
        if tier == Tier::Baseline && tiers.is_some() {
            notify(TierNotice::ServingBaseline);
        }
        Ok(TieredCode {
            settled: AtomicBool::new(tier == Tier::Optimized || tiers.is_none()),
            current: Mutex::new(Arc::new(TierCode {
                tier,
                engine: start.engine().clone(),
                pre,
            })),
            tiers,
            link: Box::new(link),
            notify: Box::new(notify),
        })
    }

    /// The code for one new instance (counted), switching to optimized code once it is ready.
    pub fn instance(&self) -> Arc<TierCode<P>> {
        let code = self.current();
        if let Some(tiers) = &self.tiers {
            tiers.count_instance(code.tier);
        }
        code
    }

    /// The code new instances get now.
    pub fn current(&self) -> Arc<TierCode<P>> {
        let code = lock(&self.current).clone();
        if self.settled.load(Ordering::Acquire) {
            return code;
        }
        let Some(tiers) = &self.tiers else { return code };
        if let Some(reason) = tiers.state.failed.get() {
            if !self.settled.swap(true, Ordering::AcqRel) {
                (self.notify)(TierNotice::TierUpFailed { reason: reason.clone() });
            }
            return code;
        }
        let Some((optimized, took)) = tiers.state.optimized.get() else {
            return code;
        };
        // Linking takes a moment; do it once, and let concurrent callers use the old code.
        if self.settled.swap(true, Ordering::AcqRel) {
            return code;
        }
        match (self.link)(optimized) {
            Ok(pre) => {
                let upgraded = Arc::new(TierCode {
                    tier: Tier::Optimized,
                    engine: optimized.engine().clone(),
                    pre,
                });
                *lock(&self.current) = upgraded.clone();
                (self.notify)(TierNotice::TieredUp { took: *took });
                upgraded
            }
            Err(reason) => {
                (self.notify)(TierNotice::TierUpFailed { reason });
                code
            }
        }
    }

    /// The tier new instances get now (without switching).
    pub fn tier(&self) -> Tier {
        lock(&self.current).tier
    }
}

use crate::sync::lock;

/// Writes a compiled component atomically (temp file + rename), so readers never see half a file.
fn store_cached(component: &Component, path: &Path) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, &bytes)?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `$WASMPOD_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmpod`, else `~/.cache/wasmpod`; `None` when
/// `WASMPOD_CACHE_DIR` is set to an empty string (caching off).
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMPOD_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("wasmpod"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("wasmpod"))
}

/// The engine configuration; `pooling: None` means the on-demand allocator. Both tiers share
/// every setting but the compiler, so guests behave the same whichever code serves them.
fn engine_config(strategy: wasmtime::Strategy, pooling: Option<wasmtime::PoolingAllocationConfig>) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.strategy(strategy);
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    if let Some(pool) = pooling {
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Instances alive at once in the whole process (all pods, command and http containers).
pub const POOLED_COMPONENT_INSTANCES: u32 = 1000;

/// Pool sizes for a process running a few pods: up to [`POOLED_COMPONENT_INSTANCES`] live
/// component instances (an http container allows 100 by default). A Rust component holds a
/// handful of core instances and tables (the main module plus small shims) but one memory,
/// hence the multipliers. Memories keep wasmtime's 4 GiB maximum: their slots are address
/// space, committed only as guests grow. A request beyond the pool fails to instantiate and
/// is answered 503.
fn pooling_config() -> wasmtime::PoolingAllocationConfig {
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(POOLED_COMPONENT_INSTANCES)
        .total_core_instances(POOLED_COMPONENT_INSTANCES * 4)
        .total_tables(POOLED_COMPONENT_INSTANCES * 4)
        .total_memories(POOLED_COMPONENT_INSTANCES)
        .total_stacks(POOLED_COMPONENT_INSTANCES)
        // Per-request instances reuse pool slots constantly; keeping the first pages of a slot
        // resident (reset with a memset, not madvise + page faults) cut `wasmtime serve`'s
        // CPU per request by ~20% here (BENCHMARKS.md). Bounded: at most this much touched
        // memory per slot stays resident.
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    pool
}

/// Bytes of each pooled linear memory kept resident between instances.
const KEEP_RESIDENT_MEMORY_BYTES: usize = 2 << 20;
/// Bytes of each pooled table kept resident between instances.
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// One thread per engine advances its epoch — and that of its baseline engine once created,
/// so guests yield and are cancelled on the same ticks whichever code serves them; it ends
/// when the main engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine, baseline: Arc<OnceLock<Result<wasmtime::Engine, String>>>) {
    let weak = engine.weak();
    let baseline = Arc::downgrade(&baseline);
    let spawned = std::thread::Builder::new().name("wasmpod-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            if let Some(baseline) = baseline.upgrade()
                && let Some(Ok(baseline)) = baseline.get()
            {
                baseline.increment_epoch();
            }
            std::thread::sleep(EPOCH_TICK);
        }
    });
    // Without a ticker, guests still run; they just cannot be preempted, so say so loudly.
    if let Err(e) = spawned {
        eprintln!("wasmpod: could not start the epoch ticker thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A background compile does not start while a foreground compile runs or while paused,
    /// and starts once neither holds it.
    #[test]
    fn the_tier_up_gate_opens_when_no_foreground_compile_runs_and_not_paused() {
        let gate = Arc::new(TierUpGate {
            paused: Mutex::new(true),
            foreground: Mutex::new(0),
            changed: Condvar::new(),
        });
        let compiling = gate.foreground();
        let (opened, open) = std::sync::mpsc::channel();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait_open();
                let _ = opened.send(());
            })
        };
        // Held by both: unpausing alone does not open it.
        *lock(&gate.paused) = false;
        gate.changed.notify_all();
        assert!(
            open.recv_timeout(Duration::from_millis(100)).is_err(),
            "a foreground compile holds it"
        );
        drop(compiling);
        open.recv_timeout(Duration::from_secs(60))
            .expect("open once the foreground compile ended");
        waiter.join().expect("waiter");
    }
}
