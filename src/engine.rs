//! The process-wide wasmtime engine: configuration, the one epoch ticker, and compiled
//! components cached on disk.
//!
//! A process runs every pod on one [`Engine`] (see [`Engine::shared`]): components are compiled
//! once per process and once per machine (the on-disk cache is keyed by the component's bytes
//! and the engine's compatibility hash), and a single ticker thread advances the epoch that
//! lets long-running guests yield and be cancelled. This module knows nothing of pods or specs.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// How often the epoch advances; a guest that never yields is interrupted this often. It bounds
/// how long a busy guest can hold a worker thread that a sibling needs: 2 ms instead of 10 ms
/// cut the worst request latency beside a spinning container from 20 ms to 5 ms at the same
/// throughput (BENCHMARKS.md); the ticker costs one atomic increment per tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

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
}

/// Where a compiled component came from, reported so users see the cache working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Already compiled in this process.
    Memory,
    /// Loaded from the on-disk cache.
    DiskCache,
    /// Compiled now (and stored in the cache).
    Compiled,
}

/// A compiled component plus how it was obtained.
#[derive(Clone)]
pub struct Compiled {
    pub component: Component,
    pub source: CompileSource,
    pub elapsed: Duration,
}

/// The wasmtime engine shared by every pod of a process, with its component cache.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    pooling: bool,
    cache_dir: Option<PathBuf>,
    /// Components compiled in this process, by content digest.
    memory: Mutex<HashMap<String, Component>>,
    /// Component files already compiled in this process, by path, with the size and
    /// modification time they had: an unchanged file is not read and hashed again.
    files: Mutex<HashMap<PathBuf, (FileStamp, Component)>>,
}

/// What identifies a file's version cheaply (a changed file changes its size or mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Engine {
    /// The process-wide engine (created on first use, cached on disk under [`default_cache_dir`]).
    pub fn shared() -> Result<Engine, CompileError> {
        static SHARED: OnceLock<Engine> = OnceLock::new();
        if let Some(engine) = SHARED.get() {
            return Ok(engine.clone());
        }
        let engine = Engine::new(default_cache_dir())?;
        Ok(SHARED.get_or_init(|| engine).clone())
    }

    /// A new engine with its own epoch ticker; `cache_dir: None` disables the on-disk cache.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Engine, CompileError> {
        // Per-request instantiation of http containers is the hot path, and the pooling
        // allocator roughly halves it (slots are reused instead of mmap'd and zeroed per
        // instance). It reserves its address space up front, which fails where virtual memory
        // is capped (`ulimit -v`, some sandboxes): then the on-demand allocator still works.
        let (wasmtime, pooling) = match wasmtime::Engine::new(&engine_config(Some(pooling_config()))) {
            Ok(engine) => (engine, true),
            Err(_) => {
                let engine =
                    wasmtime::Engine::new(&engine_config(None)).map_err(|e| CompileError::Engine(format!("{e:#}")))?;
                (engine, false)
            }
        };
        spawn_epoch_ticker(&wasmtime);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                wasmtime,
                pooling,
                cache_dir,
                memory: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether instances come from the pooling allocator (false: it could not reserve its
    /// memory, so each instance is allocated on demand).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    /// The on-disk cache directory, if caching is on.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.cache_dir.as_deref()
    }

    /// Compiles component bytes, or finds them compiled in memory or on disk. `what` names the
    /// component in errors (e.g. `container "web" (/path/web.wasm)`). CPU-heavy: call it from a
    /// blocking thread.
    pub fn compile(&self, bytes: &[u8], what: &str) -> Result<Compiled, CompileError> {
        let started = Instant::now();
        let digest = self.digest(bytes);
        if let Some(component) = self.lock_memory().get(&digest).cloned() {
            return Ok(Compiled {
                component,
                source: CompileSource::Memory,
                elapsed: started.elapsed(),
            });
        }
        let cached = self.cache_path(&digest);
        if let Some(path) = &cached
            && let Some(component) = self.load_cached(path)
        {
            self.lock_memory().insert(digest, component.clone());
            return Ok(Compiled {
                component,
                source: CompileSource::DiskCache,
                elapsed: started.elapsed(),
            });
        }
        let component = Component::new(&self.inner.wasmtime, bytes).map_err(|e| CompileError::Invalid {
            what: what.to_string(),
            message: format!("{e:#}"),
        })?;
        if let Some(path) = &cached {
            // A cache that cannot be written only costs time on the next start.
            let _ = store_cached(&component, path);
        }
        self.lock_memory().insert(digest, component.clone());
        Ok(Compiled {
            component,
            source: CompileSource::Compiled,
            elapsed: started.elapsed(),
        })
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
            .map(|(_, c)| c.clone());
        if let Some(component) = known {
            return Ok(Compiled {
                component,
                source: CompileSource::Memory,
                elapsed: started.elapsed(),
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let compiled = self.compile(&bytes, what)?;
        lock(&self.inner.files).insert(path.to_path_buf(), (stamp, compiled.component.clone()));
        Ok(compiled)
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        lock(&self.inner.memory)
    }

    /// The cache key: the component's bytes plus everything that makes compiled code compatible.
    fn digest(&self, bytes: &[u8]) -> String {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.inner.wasmtime.precompile_compatibility_hash().hash(&mut compat);
        let mut hasher = Sha256::new();
        hasher.update(compat.finish().to_le_bytes());
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(bytes);
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        self.inner
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{digest}.cwasm")))
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold only finished values, so a panic elsewhere cannot leave one half-written.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

/// The engine configuration; `pooling: None` means the on-demand allocator.
fn engine_config(pooling: Option<wasmtime::PoolingAllocationConfig>) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
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

/// One thread per engine advances its epoch; it ends when the engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("wasmpod-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    // Without a ticker, guests still run; they just cannot be preempted, so say so loudly.
    if let Err(e) = spawned {
        eprintln!("wasmpod: could not start the epoch ticker thread: {e}");
    }
}
