//! Volumes and mounts: the host directories a pod's containers see, prepared before the pod
//! starts and removed when it ends.
//!
//! An `empty_dir` is a fresh directory in the pod's own directory; a `secret` is a directory of
//! files written there from the spec's values; a `host_path` is the user's own directory, used in
//! place. Each mount becomes a WASI preopen (see [`crate::container`]), and wasmtime-wasi's
//! cap-std filesystem keeps the guest inside it: `..`, absolute paths and symlinks pointing out of
//! a mount are refused.
//!
//! Other local users never see a byte of an `empty_dir` or a secret: every pod directory lives
//! in the per-user private runtime directory ([`crate::runtime_dir`], `pods/` inside it), every
//! directory made here is created 0700 (never made first and narrowed later), and a secret file
//! is created with its final mode 0400. Dropping [`Volumes`] removes the pod's directory, never a
//! `host_path`. A process killed before it could do that leaves its pod directory behind, still
//! private; the directory's name records the owning process (pid and start time), and the next
//! pod start on this machine by this user sweeps every directory whose process is gone.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::runtime_dir::{self, RuntimeDirError};
use crate::spec::{ContainerSpec, PodSpec, VolumeSource};

/// The directory inside the runtime directory that holds one directory per running pod.
pub const PODS_DIR: &str = "pods";

/// Why the pod's volumes could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot create the pod's private directory: {0}")]
    RuntimeDir(#[from] RuntimeDirError),
    #[error("cannot create the pod's private directory in {}: {source}", dir.display())]
    PodDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare volume {volume:?} at {path}: {source}")]
    Prepare {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host_path {path} of volume {volume:?} is not a directory that can be opened")]
    HostPathMissing { volume: String, path: PathBuf },
    #[error("secret volume {volume:?} has a file name that is not a plain file name: {file:?}")]
    SecretFileName { volume: String, file: String },
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
    /// The pod's private directory, holding every `empty_dir` and secret; removed on drop.
    pod_dir: Option<tempfile::TempDir>,
    prepared: HashMap<String, PreparedVolume>,
}

#[derive(Debug)]
struct PreparedVolume {
    host_dir: PathBuf,
    /// Secrets are read-only whatever the mount says.
    always_read_only: bool,
}

impl Volumes {
    /// Creates every `empty_dir` and secret in the user's runtime directory
    /// ([`runtime_dir::path`], `$WASMPOD_RUNTIME_DIR` to move it) and checks every `host_path`.
    /// Blocking file-system work: run it on a blocking thread.
    pub fn prepare(spec: &PodSpec) -> Result<Volumes, VolumeError> {
        Volumes::prepare_in(spec, &runtime_dir::path())
    }

    /// [`Volumes::prepare`] with the pod's directory in `runtime_dir`/`pods`. Sweeps the pod
    /// directories left there by processes that are gone first.
    pub fn prepare_in(spec: &PodSpec, runtime_dir: &Path) -> Result<Volumes, VolumeError> {
        let pods = runtime_dir.join(PODS_DIR);
        let needs_pod_dir = spec
            .volumes
            .iter()
            .any(|v| !matches!(v.source, VolumeSource::HostPath(_)));
        if needs_pod_dir {
            runtime_dir::ensure_private(runtime_dir)?;
            runtime_dir::ensure_private(&pods)?;
        }
        // A pod without such volumes needs no runtime directory (and must not fail for lack of
        // one), but still clears what a killed pod left behind, when that is safe to do.
        if matches!(runtime_dir::check(runtime_dir), Ok(true)) && matches!(runtime_dir::check(&pods), Ok(true)) {
            sweep_stale(&pods);
        }
        let mut pod_dir = None;
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
                    let root = pod_dir_in(&mut pod_dir, &pods, &spec.name)?;
                    let dir = root.join("empty_dir").join(plain_name(&volume.name));
                    create_private_dir(&dir).map_err(prepare_error(&dir))?;
                    (dir, false)
                }
                VolumeSource::Secret(files) => {
                    let root = pod_dir_in(&mut pod_dir, &pods, &spec.name)?;
                    let dir = root.join("secret").join(plain_name(&volume.name));
                    create_private_dir(&dir).map_err(prepare_error(&dir))?;
                    for (file, value) in files {
                        if !is_plain_file_name(file) {
                            return Err(VolumeError::SecretFileName {
                                volume: volume.name.clone(),
                                file: file.clone(),
                            });
                        }
                        let path = dir.join(file);
                        write_secret_file(&path, value.as_bytes()).map_err(prepare_error(&path))?;
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
        Ok(Volumes { pod_dir, prepared })
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

    /// The pod's private directory, when it has `empty_dir` or secret volumes.
    pub fn runtime_dir(&self) -> Option<&Path> {
        self.pod_dir.as_ref().map(|dir| dir.path())
    }

    /// Removes every `empty_dir` and secret now, reporting a failure instead of ignoring it.
    pub fn remove(mut self) -> std::io::Result<()> {
        match self.pod_dir.take() {
            Some(dir) => dir.close(),
            None => Ok(()),
        }
    }
}

/// A volume or pod name as one path component: spec names are DNS labels already, this only
/// guards specs built in code.
fn plain_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(63)
        .collect();
    if name.is_empty() { "_".into() } else { name }
}

/// Whether `file` names a file directly inside the secret's directory (the spec checks this too;
/// a spec built in code is checked here).
fn is_plain_file_name(file: &str) -> bool {
    let mut components = Path::new(file).components();
    matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none() && !file.contains('/')
}

/// The pod's directory, made on first use.
fn pod_dir_in(slot: &mut Option<tempfile::TempDir>, pods: &Path, pod: &str) -> Result<PathBuf, VolumeError> {
    if let Some(dir) = slot {
        return Ok(dir.path().to_path_buf());
    }
    let dir = create_pod_dir(pods, pod)?;
    let path = dir.path().to_path_buf();
    *slot = Some(dir);
    Ok(path)
}

/// `<pods>/<pid>-<start>-<pod>-<random>`, 0700 from the start. The pid and start time say which
/// process owns it, so a later start can tell a killed pod's leftovers from a live pod's.
fn create_pod_dir(pods: &Path, pod: &str) -> Result<tempfile::TempDir, VolumeError> {
    let me = std::process::id();
    let prefix = format!("{me}-{}-{}-", process_start(me).unwrap_or(0), plain_name(pod));
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile passes this to mkdir, so the directory is never wider than 0700, not even
        // for an instant (the default would be 0777 less the umask).
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    builder.tempdir_in(pods).map_err(|source| VolumeError::PodDir {
        dir: pods.to_path_buf(),
        source,
    })
}

/// Creates `dir` and its missing parents inside the pod's directory, each 0700 from the start.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes a secret file that is 0400 from the moment it exists (Kubernetes' default secret
/// mode): created with that mode, never over an existing file whose mode we did not choose.
fn write_secret_file(path: &Path, value: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o400);
    // The mode applies to later opens; this descriptor was opened for writing at creation.
    let mut file = options.open(path)?;
    file.write_all(value)?;
    file.sync_all()
}

/// Removes every pod directory in `pods` whose owning process is gone. Best effort: a directory
/// that cannot be removed now is tried again at the next start.
fn sweep_stale(pods: &Path) {
    let Ok(entries) = std::fs::read_dir(pods) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some((pid, start)) = entry.file_name().to_str().and_then(owner_of) else {
            // Not one of ours: leave it.
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir && !process_alive(pid, start) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The owner recorded in a pod directory's name: `<pid>-<start>-...`.
fn owner_of(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((pid, start))
}

/// Whether process `pid`, started at `start` (0: unknown), still runs. A zombie is gone; a pid
/// reused by another process (a different start time) is gone.
fn process_alive(pid: u32, start: u64) -> bool {
    #[cfg(unix)]
    {
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if raw <= 0 {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists and may be signalled; nothing is
        // sent and no memory of ours is touched.
        let exists =
            unsafe { libc::kill(raw, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return false;
        }
        match process_stat(pid) {
            Some(stat) => !stat.zombie && (start == 0 || stat.start == start),
            None => true,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, start);
        true
    }
}

/// When the process started (clock ticks since boot), where the system says so (Linux).
fn process_start(pid: u32) -> Option<u64> {
    process_stat(pid).map(|stat| stat.start)
}

struct ProcessStat {
    start: u64,
    zombie: bool,
}

/// Reads `/proc/PID/stat`; `None` where there is no such file (not Linux, or the process is
/// gone).
fn process_stat(pid: u32) -> Option<ProcessStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so read after the last
    // `)`. There the state is field 3 and the start time field 22 of proc(5).
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(ProcessStat {
        start,
        zombie: state == "Z" || state == "X",
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::spec::{VolumeSource, VolumeSpec};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn spec_with_secret() -> PodSpec {
        let mut spec = PodSpec::new("demo");
        spec.volumes = vec![
            VolumeSpec {
                name: "scratch".into(),
                source: VolumeSource::EmptyDir,
            },
            VolumeSpec {
                name: "creds".into(),
                source: VolumeSource::Secret(BTreeMap::from([("token".to_string(), "s3cret".to_string())])),
            },
        ];
        spec
    }

    /// Every directory under `root` (itself included), and every file.
    fn walk(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut dirs, mut files) = (vec![root.to_path_buf()], Vec::new());
        let mut next = 0;
        while next < dirs.len() {
            for entry in std::fs::read_dir(&dirs[next]).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(entry.path());
                } else {
                    files.push(entry.path());
                }
            }
            next += 1;
        }
        (dirs, files)
    }

    #[test]
    fn every_directory_is_0700_and_a_secret_0400() {
        let base = tempfile::tempdir().unwrap();
        let runtime = base.path().join("run");
        let volumes = Volumes::prepare_in(&spec_with_secret(), &runtime).unwrap();
        let (dirs, files) = walk(&runtime);
        assert!(dirs.len() >= 6, "{dirs:?}");
        for dir in &dirs {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        let token = volumes.host_dir("creds").unwrap().join("token");
        assert_eq!(files, vec![token.clone()]);
        assert_eq!(mode(&token), 0o400);
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "s3cret");
        let pod_dir = volumes.runtime_dir().unwrap().to_path_buf();
        assert!(pod_dir.starts_with(runtime.join(PODS_DIR)));
        volumes.remove().unwrap();
        assert!(!pod_dir.exists());
    }

    #[test]
    fn a_secret_is_never_written_into_a_file_that_already_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "planted").unwrap();
        assert!(write_secret_file(&path, b"s3cret").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "planted");
    }

    #[test]
    fn stale_pod_directories_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        let runtime = base.path().join("run");
        let live = Volumes::prepare_in(&spec_with_secret(), &runtime).unwrap();
        let pods = runtime.join(PODS_DIR);
        // A pid that cannot be running (beyond pid_max), one whose start time does not match
        // (the pid was reused), and an entry that is not a pod directory at all.
        let dead = pods.join(format!("{}-0-demo-x", i32::MAX));
        let reused = pods.join(format!("{}-1-demo-y", std::process::id()));
        let foreign = pods.join("notes");
        for dir in [&dead, &reused, &foreign] {
            create_private_dir(&dir.join("secret")).unwrap();
        }
        Volumes::prepare_in(&PodSpec::new("other"), &runtime).unwrap();
        assert!(!dead.exists());
        assert!(!reused.exists());
        assert!(foreign.exists());
        assert!(live.runtime_dir().unwrap().exists());
    }

    #[test]
    fn secret_file_names_that_leave_the_directory_are_refused() {
        for bad in ["../x", "a/b", "..", ".", "", "/etc/passwd"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
        assert!(is_plain_file_name("token.txt"));
    }
}
