//! Volumes and mounts: the host directories a pod's containers see, prepared before the pod
//! starts and removed when it ends.
//!
//! An `empty_dir` is a fresh directory under the pod's private runtime directory; a `secret` is
//! a directory of files written there from the spec's values; a `host_path` is the user's own
//! directory, used in place. Each mount becomes a WASI preopen (see [`crate::container`]), and
//! wasmtime-wasi's cap-std filesystem keeps the guest inside it: `..`, absolute paths and
//! symlinks pointing out of a mount are refused. Dropping [`Volumes`] removes the runtime
//! directory and so every `empty_dir` and secret, never a `host_path`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::spec::{ContainerSpec, PodSpec, VolumeSource};

/// Why the pod's volumes could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot create the pod's runtime directory: {0}")]
    RuntimeDir(#[source] std::io::Error),
    #[error("cannot prepare volume {volume:?} at {path}: {source}")]
    Prepare {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host_path {path} of volume {volume:?} is not a directory that can be opened")]
    HostPathMissing { volume: String, path: PathBuf },
    #[error("container {container:?} mounts volume {volume:?}, which the pod does not declare")]
    UnknownVolume { container: String, volume: String },
}

/// One directory to preopen in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_dir: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// The pod's volumes, ready to mount.
#[derive(Debug)]
pub struct Volumes {
    /// Holds every `empty_dir` and secret; removed on drop.
    runtime_dir: Option<tempfile::TempDir>,
    prepared: HashMap<String, PreparedVolume>,
}

#[derive(Debug)]
struct PreparedVolume {
    host_dir: PathBuf,
    /// Secrets are read-only whatever the mount says.
    always_read_only: bool,
}

impl Volumes {
    /// Creates every `empty_dir` and secret and checks every `host_path`. Blocking file-system
    /// work: run it on a blocking thread.
    pub fn prepare(spec: &PodSpec) -> Result<Volumes, VolumeError> {
        let needs_runtime_dir = spec
            .volumes
            .iter()
            .any(|v| !matches!(v.source, VolumeSource::HostPath(_)));
        let runtime_dir = if needs_runtime_dir {
            Some(
                tempfile::Builder::new()
                    .prefix(&format!("wasmpod-{}-", spec.name))
                    .tempdir()
                    .map_err(VolumeError::RuntimeDir)?,
            )
        } else {
            None
        };
        let mut prepared = HashMap::new();
        for volume in &spec.volumes {
            let prepare_error = |path: &Path| {
                let volume = volume.name.clone();
                let path = path.to_path_buf();
                move |source| VolumeError::Prepare { volume, path, source }
            };
            let (host_dir, always_read_only) = match &volume.source {
                VolumeSource::HostPath(path) => {
                    if !path.is_dir() {
                        return Err(VolumeError::HostPathMissing {
                            volume: volume.name.clone(),
                            path: path.clone(),
                        });
                    }
                    (path.clone(), false)
                }
                VolumeSource::EmptyDir => {
                    let dir = runtime_subdir(&runtime_dir, "empty_dir", &volume.name);
                    std::fs::create_dir_all(&dir).map_err(prepare_error(&dir))?;
                    (dir, false)
                }
                VolumeSource::Secret(files) => {
                    let dir = runtime_subdir(&runtime_dir, "secret", &volume.name);
                    std::fs::create_dir_all(&dir).map_err(prepare_error(&dir))?;
                    for (file, value) in files {
                        let path = dir.join(file);
                        std::fs::write(&path, value).map_err(prepare_error(&path))?;
                        restrict_to_owner(&path).map_err(prepare_error(&path))?;
                    }
                    (dir, true)
                }
            };
            prepared.insert(
                volume.name.clone(),
                PreparedVolume {
                    host_dir,
                    always_read_only,
                },
            );
        }
        Ok(Volumes { runtime_dir, prepared })
    }

    /// The preopens of one container, in the order of its `volume_mounts`.
    pub fn mounts_for(&self, container: &ContainerSpec) -> Result<Vec<Mount>, VolumeError> {
        container
            .volume_mounts
            .iter()
            .map(|mount| {
                let volume = self
                    .prepared
                    .get(&mount.volume)
                    .ok_or_else(|| VolumeError::UnknownVolume {
                        container: container.name.clone(),
                        volume: mount.volume.clone(),
                    })?;
                Ok(Mount {
                    host_dir: volume.host_dir.clone(),
                    guest_path: mount.mount_path.clone(),
                    read_only: mount.read_only || volume.always_read_only,
                })
            })
            .collect()
    }

    /// The host directory behind a volume (for tests and diagnostics).
    pub fn host_dir(&self, volume: &str) -> Option<&Path> {
        self.prepared.get(volume).map(|v| v.host_dir.as_path())
    }

    /// The pod's private runtime directory, when it has `empty_dir` or secret volumes.
    pub fn runtime_dir(&self) -> Option<&Path> {
        self.runtime_dir.as_ref().map(|dir| dir.path())
    }

    /// Removes every `empty_dir` and secret now, reporting a failure instead of ignoring it.
    pub fn remove(mut self) -> std::io::Result<()> {
        match self.runtime_dir.take() {
            Some(dir) => dir.close(),
            None => Ok(()),
        }
    }
}

fn runtime_subdir(runtime_dir: &Option<tempfile::TempDir>, kind: &str, volume: &str) -> PathBuf {
    // `prepare` creates the runtime directory whenever a volume needs one.
    let root = runtime_dir
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    root.join(kind).join(volume)
}

/// Secret files are readable by the owner only, as Kubernetes' default mode 0400 would have it.
fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
