//! The pod: the library API ([`Pod`]) that creates a pod from its spec, starts, watches,
//! restarts and stops it.
//!
//! Three parts, each depending only on the ones below it:
//! - `handle`: the [`Pod`] handle — claims the start, holds what the pod owns while it runs
//!   (volumes, front proxy) and releases it when the supervisor returns;
//! - `prepare`: the spec turned into runnable containers (compile, volumes, mounts, routes);
//! - `update`: a running pod changed in place ([`Pod::update`]): what changed is swapped, the
//!   rest untouched;
//! - `state`: the pod's status with its guarded transitions, shared with the supervisor
//!   (`crate::supervisor`), which depends on the state only.

mod handle;
mod prepare;
pub(crate) mod state;
mod update;

pub use handle::{Pod, PodError, PodOptions};
pub use update::{ContainerUpdate, UpdateReport};
