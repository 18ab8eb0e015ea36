//! wasmpod runs a *pod* — a small group of WebAssembly components (WASI 0.2) scheduled
//! together — inside one process: one lifecycle, shared volumes, one exposed port.
//!
//! The library is what the `wasmpod` CLI is built on and what tests use to run pods in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasmpod::PodError> {
//! let pod = wasmpod::Pod::from_file("examples/hello/wasmpod.toml")?;
//! pod.start().await?;
//! let status = pod.wait().await;
//! println!("{}: {}", status.name, status.phase);
//! for line in pod.logs("reader") {
//!     println!("reader | {}", line.text);
//! }
//! # Ok(()) }
//! ```

pub mod container;
#[cfg(unix)]
pub mod control;
pub mod counters;
pub mod egress;
pub mod engine;
pub mod export;
#[cfg(unix)]
pub mod host;
pub mod logs;
pub mod net;
pub mod oci;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod resources;
pub mod route;
pub mod runtime_dir;
pub mod spec;
pub mod status;
mod supervisor;
mod sync;
pub mod testing;
pub mod tls;
pub mod volume;
pub mod watch;

pub use container::{ContainerKind, Exit, HttpContainer, HttpLimits};
pub use counters::ContainerMetrics;
pub use engine::Engine;
pub use logs::{LogLine, Logs, Stream};
pub use pod::{ContainerUpdate, Pod, PodError, PodOptions, UpdateReport};
pub use spec::{PodSpec, RestartPolicy, SpecError};
pub use status::{ContainerState, ContainerStatus, Event, EventKind, PodPhase, PodStatus, WaitingReason};
