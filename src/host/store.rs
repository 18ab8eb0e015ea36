//! The edge host's state directory: the desired state that survives the host.
//!
//! It owns two kinds of file. Blobs (`blobs/sha256/HEX`) are component bytes, content-addressed:
//! the digest is checked before a blob is written, and again when the host opens the directory,
//! so a blob on disk is exactly what its name says. Pod specs (`pods/NAME.toml`) are the TOML a
//! client put, behind one header line holding the sha256 of the text, so a torn or edited file
//! is detected at load and reported, never half-applied. Every file is written whole to a
//! temporary name, fsynced, renamed into place and the directory fsynced: a crash leaves the old
//! file or the new one. It knows nothing of pods as running things (that is [`super::Host`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::spec::is_sha256_hex;

/// The header line of a stored pod spec: `# wasmpod-host sha256=HEX`.
const POD_HEADER: &str = "# wasmpod-host sha256=";
/// Temporary files start with this; leftovers of a crash are removed at open.
const TEMP_PREFIX: &str = ".tmp-";
/// The first 8 bytes of a WASI 0.2 component (magic, version 0x0d, layer 1).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";

/// Why the state directory refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob digest must be 64 lowercase hex digits, got {0:?}")]
    BadDigest(String),
    #[error("the body's sha256 is {actual}, not the {expected} named in the path")]
    DigestMismatch { expected: String, actual: String },
    #[error("the blob is not a WASI 0.2 component (it does not start with the component header)")]
    NotAComponent,
}

/// The state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    counter: AtomicU64,
}

/// What [`Store::open`] found wrong and set aside (reported, never loaded).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Stored pods, name and spec text, whose integrity check passed.
    pub pods: Vec<(String, String)>,
    /// One line per file that was torn, corrupt or unreadable.
    pub problems: Vec<String>,
}

impl Store {
    /// Opens (creating) the state directory, removes temporary leftovers and sets aside blobs
    /// whose bytes do not match their name (renamed to `HEX.corrupt`).
    pub fn open(dir: &Path) -> Result<(Store, Vec<String>), StoreError> {
        let store = Store {
            dir: dir.to_path_buf(),
            counter: AtomicU64::new(0),
        };
        for sub in [store.blob_dir(), store.pod_dir()] {
            fs::create_dir_all(&sub).map_err(io("cannot create", &sub))?;
        }
        let mut problems = Vec::new();
        let blobs = store.blob_dir();
        for entry in fs::read_dir(&blobs).map_err(io("cannot read", &blobs))? {
            let entry = entry.map_err(io("cannot read", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !is_sha256_hex(&name) {
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) if sha256_hex(&bytes) == name => {}
                Ok(_) => {
                    problems.push(format!(
                        "blob sha256:{name} does not match its digest (torn or altered): set aside as {name}.corrupt"
                    ));
                    let _ = fs::rename(&path, blobs.join(format!("{name}.corrupt")));
                }
                Err(e) => problems.push(format!("cannot read blob {}: {e}", path.display())),
            }
        }
        Ok((store, problems))
    }

    /// Where blobs live; `component = "sha256:HEX"` resolves to `HEX` in it.
    pub fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    fn pod_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    /// The stored spec file of pod `name` (also the file its spec errors name).
    pub fn pod_path(&self, name: &str) -> PathBuf {
        self.pod_dir().join(format!("{name}.toml"))
    }

    /// Whether blob `hex` is stored.
    pub fn has_blob(&self, hex: &str) -> bool {
        is_sha256_hex(hex) && self.blob_dir().join(hex).is_file()
    }

    /// Stores a blob after checking that `bytes` hash to `hex` and form a component.
    pub fn put_blob(&self, hex: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if !is_sha256_hex(hex) {
            return Err(StoreError::BadDigest(hex.to_string()));
        }
        let actual = sha256_hex(bytes);
        if actual != hex {
            return Err(StoreError::DigestMismatch {
                expected: hex.to_string(),
                actual,
            });
        }
        if !bytes.starts_with(&COMPONENT_HEADER) {
            return Err(StoreError::NotAComponent);
        }
        if self.has_blob(hex) {
            return Ok(());
        }
        self.write_atomically(&self.blob_dir().join(hex), bytes)
    }

    /// Stores pod `name`'s spec text, with its integrity header.
    pub fn put_pod(&self, name: &str, text: &str) -> Result<(), StoreError> {
        let content = format!("{POD_HEADER}{}\n{text}", sha256_hex(text.as_bytes()));
        self.write_atomically(&self.pod_path(name), content.as_bytes())
    }

    /// Forgets pod `name` (absent is fine).
    pub fn remove_pod(&self, name: &str) -> Result<(), StoreError> {
        let path = self.pod_path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.pod_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io {
                what: "cannot remove",
                path,
                source: e,
            }),
        }
    }

    /// Every stored pod whose file is whole; torn or altered files are reported and skipped.
    pub fn load_pods(&self) -> Result<LoadReport, StoreError> {
        let dir = self.pod_dir();
        let mut report = LoadReport::default();
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(io("cannot read", &dir))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .collect();
        entries.sort();
        for path in entries {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if file_name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(name) = file_name.strip_suffix(".toml") else {
                continue;
            };
            match fs::read_to_string(&path) {
                Ok(content) => match verify_pod_file(&content) {
                    Some(text) => report.pods.push((name.to_string(), text.to_string())),
                    None => report.problems.push(format!(
                        "pod {name}: {} is torn or altered (its sha256 header does not match): not loaded",
                        path.display()
                    )),
                },
                Err(e) => report
                    .problems
                    .push(format!("pod {name}: cannot read {}: {e}", path.display())),
            }
        }
        Ok(report)
    }

    /// Writes `bytes` to a temporary file, fsyncs it, renames it to `path` and fsyncs the
    /// directory: readers see the old file or the whole new one.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
        let written = (|| {
            let mut file = fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(StoreError::Io {
                what: "cannot write",
                path: temp,
                source: e,
            });
        }
        if let Err(e) = fs::rename(&temp, path) {
            let _ = fs::remove_file(&temp);
            return Err(StoreError::Io {
                what: "cannot rename into",
                path: path.to_path_buf(),
                source: e,
            });
        }
        sync_dir(dir)
    }
}

/// The spec text of a stored pod file, when its header's digest matches.
fn verify_pod_file(content: &str) -> Option<&str> {
    let rest = content.strip_prefix(POD_HEADER)?;
    let (digest, text) = rest.split_once('\n')?;
    (sha256_hex(text.as_bytes()) == digest).then_some(text)
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_pod_file_is_reported_and_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, problems) = Store::open(dir.path()).unwrap();
        assert!(problems.is_empty());
        store.put_pod("good", "name = \"good\"\n").unwrap();
        store.put_pod("torn", "name = \"torn\"\n[[containers]]\n").unwrap();
        let torn = store.pod_path("torn");
        let content = fs::read_to_string(&torn).unwrap();
        fs::write(&torn, &content[..content.len() - 5]).unwrap();
        let report = store.load_pods().unwrap();
        assert_eq!(report.pods, vec![("good".to_string(), "name = \"good\"\n".to_string())]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("torn"), "{:?}", report.problems);
    }

    #[test]
    fn blobs_are_verified_on_upload_and_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = [&COMPONENT_HEADER[..], b"rest"].concat();
        let hex = sha256_hex(&bytes);
        assert!(matches!(
            store.put_blob(&hex, b"\0asm\x0d\x00\x01\x00other"),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(matches!(
            store.put_blob(&sha256_hex(b"text"), b"text"),
            Err(StoreError::NotAComponent)
        ));
        store.put_blob(&hex, &bytes).unwrap();
        assert!(store.has_blob(&hex));
        fs::write(store.blob_dir().join(&hex), b"\0asm\x0d\x00\x01\x00changed").unwrap();
        let (store, problems) = Store::open(dir.path()).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(!store.has_blob(&hex));
    }
}
