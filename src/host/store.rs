//! The edge host's state directory: the desired state that survives the host.
//!
//! It owns two kinds of state. Blobs (`blobs/sha256/HEX`) are component bytes, content-addressed:
//! the digest is checked before a blob is written, and again when the host opens the directory,
//! so a blob on disk is exactly what its name says. Pod specs are the TOML a client put: an apply
//! or delete is made durable as one record of the [`journal`](super::journal) (`journal/`), and
//! a background checkpointer later moves the pods of each full journal segment into their own
//! files (`pods/NAME.toml`, behind one header line holding the sha256 of the text) and removes the
//! segment; a clean shutdown checkpoints everything. Opening replays what the journal still holds
//! over the files. A torn or edited file or journal record is detected at load and reported,
//! never half-applied. Files are written whole to a temporary name, fsynced, renamed into place
//! and the directory fsynced: a crash leaves the old file or the new one. It knows nothing of
//! pods as running things (that is [`super::Host`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::journal::{Journal, Record};
use crate::spec::is_sha256_hex;
use crate::sync::lock;

/// The header line of a stored pod spec: `# wasmpod-host sha256=HEX`.
const POD_HEADER: &str = "# wasmpod-host sha256=";
/// Temporary files start with this; leftovers of a crash are removed at open.
const TEMP_PREFIX: &str = ".tmp-";
/// The first 8 bytes of a WASI 0.2 component (magic, version 0x0d, layer 1).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
/// Pod files the checkpointer holds open at once (each is flushed before any is renamed).
const CHECKPOINT_BATCH: usize = 256;
/// How long a held state-directory lock is asked again before the directory counts as in use.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
/// Jobs waiting for the checkpointer: one per sealed segment (4 MiB of applies) and a spare.
const CHECKPOINT_QUEUE: usize = 64;

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
    #[error(
        "the state directory {} is in use by another wasmpod host{}; stop it first (a host that \
         is stopping holds it until its pods have stopped and its state is written)",
        dir.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("the state directory is closed (the host is shutting down)")]
    Closed,
}

/// The state directory.
pub struct Store {
    shared: Arc<Shared>,
    /// To the checkpointer thread, which ends when the store is dropped.
    checkpointer: SyncSender<Job>,
}

struct Shared {
    dir: PathBuf,
    /// The state directory's lock (`host.lock`, `flock`ed): one host at a time, released by
    /// [`Store::close`] or when the process ends.
    lock: Mutex<Option<fs::File>>,
    counter: AtomicU64,
    journal: Journal,
    /// The desired state: every stored pod's spec text. Changed only after its journal record
    /// is on disk, so the checkpointer never writes a state a crash could take back.
    specs: Mutex<Specs>,
}

/// Pod name → spec text.
type Specs = BTreeMap<String, Arc<str>>;

/// Work for the checkpointer thread.
enum Job {
    /// This segment is sealed: move its pods into their files, then remove it.
    Sealed(u64),
    /// Prepare the journal's next segment.
    Spare,
    /// Checkpoint every sealed segment now and say how it went.
    Flush(SyncSender<Result<(), StoreError>>),
}

impl Drop for Store {
    fn drop(&mut self) {
        // The next host may open the directory now: nothing changes the state any more. A
        // checkpoint still running writes the same state the next host loads.
        lock(&self.shared.lock).take();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// What [`Store::open`] loaded, and what it found wrong and set aside (reported, never loaded).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Stored pods, name and spec text, whose integrity check passed.
    pub pods: Vec<(String, String)>,
    /// One line per file or journal record that was torn, corrupt or unreadable.
    pub problems: Vec<String>,
}

impl Store {
    /// Opens (creating) the state directory: removes temporary leftovers, sets aside blobs
    /// whose bytes do not match their name (renamed to `HEX.corrupt`), loads the pod files and
    /// replays the journal over them.
    pub fn open(dir: &Path) -> Result<(Store, LoadReport), StoreError> {
        fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
        let lock = lock_dir(dir)?;
        let blob_dir = dir.join("blobs").join("sha256");
        let pod_dir = dir.join("pods");
        for sub in [&blob_dir, &pod_dir] {
            fs::create_dir_all(sub).map_err(io("cannot create", sub))?;
        }
        let mut report = LoadReport::default();
        report.problems.extend(check_blobs(&blob_dir)?);
        let (mut specs, problems) = load_pod_files(&pod_dir)?;
        report.problems.extend(problems);
        let journal_dir = dir.join("journal");
        let (journal, replayed) =
            Journal::open(&journal_dir).map_err(io("cannot open the journal in", &journal_dir))?;
        report.problems.extend(replayed.problems);
        for record in replayed.records {
            match record {
                Record::Put { name, text } => specs.insert(name, text.into()),
                Record::Delete { name } => specs.remove(&name),
            };
        }
        report.pods = specs
            .iter()
            .map(|(name, text)| (name.clone(), text.to_string()))
            .collect();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            lock: Mutex::new(Some(lock)),
            counter: AtomicU64::new(0),
            journal,
            specs: Mutex::new(specs),
        });
        let (checkpointer, jobs) = std::sync::mpsc::sync_channel(CHECKPOINT_QUEUE);
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("wasmpod-checkpoint".to_string())
            .spawn(move || worker.checkpoint_jobs(jobs))
            .map_err(io("cannot start the checkpointer for", dir))?;
        // What the journal held before is checkpointed in the background, oldest first.
        for seq in replayed.sealed {
            let _ = checkpointer.send(Job::Sealed(seq));
        }
        let _ = checkpointer.send(Job::Spare);
        Ok((Store { shared, checkpointer }, report))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Where blobs live; `component = "sha256:HEX"` resolves to `HEX` in it.
    pub fn blob_dir(&self) -> PathBuf {
        self.shared.blob_dir()
    }

    /// The stored spec file of pod `name` (also the file its spec errors name).
    pub fn pod_path(&self, name: &str) -> PathBuf {
        self.shared.pod_path(name)
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
        self.shared.write_atomically(&self.blob_dir().join(hex), bytes)
    }

    /// Stores pod `name`'s spec text: durable when this returns.
    pub fn put_pod(&self, name: &str, text: &str) -> Result<(), StoreError> {
        self.change(
            Record::Put {
                name: name.to_string(),
                text: text.to_string(),
            },
            Some(text.into()),
        )
    }

    /// Forgets pod `name` (absent is fine): durable when this returns.
    pub fn remove_pod(&self, name: &str) -> Result<(), StoreError> {
        self.change(Record::Delete { name: name.to_string() }, None)
    }

    /// Checkpoints everything the journal holds into the pod files (a clean shutdown), so the
    /// next open has nothing to replay.
    pub fn flush(&self) -> Result<(), StoreError> {
        let journal = self.shared.dir.join("journal");
        let sealed = self
            .shared
            .journal
            .seal()
            .map_err(io("cannot seal the journal in", &journal))?;
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        let gone = || StoreError::Io {
            what: "cannot checkpoint",
            path: journal.clone(),
            source: std::io::Error::other("the checkpointer stopped"),
        };
        self.checkpointer.send(Job::Sealed(sealed)).map_err(|_| gone())?;
        self.checkpointer.send(Job::Flush(reply)).map_err(|_| gone())?;
        done.recv().map_err(|_| gone())?
    }

    /// Checkpoints everything ([`Store::flush`]), then refuses further changes and releases
    /// the state directory to the next host.
    pub fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush();
        // Under the spec lock: a change in progress finishes first, none starts after.
        let _specs = lock(&self.shared.specs);
        lock(&self.shared.lock).take();
        flushed
    }

    /// Journals `record` and, once it is on disk, makes `text` the pod's desired state.
    fn change(&self, record: Record, text: Option<Arc<str>>) -> Result<(), StoreError> {
        let name = record.name().to_string();
        let mut specs = lock(&self.shared.specs);
        if lock(&self.shared.lock).is_none() {
            return Err(StoreError::Closed);
        }
        let sealed = self
            .shared
            .journal
            .append(&record)
            .map_err(io("cannot write the journal in", &self.shared.dir.join("journal")))?;
        match text {
            Some(text) => specs.insert(name, text),
            None => specs.remove(&name),
        };
        drop(specs);
        if let Some(seq) = sealed {
            // Blocks only when 64 segments wait: the checkpointer is that far behind the disk.
            let _ = self.checkpointer.send(Job::Sealed(seq));
            let _ = self.checkpointer.send(Job::Spare);
        }
        Ok(())
    }
}

impl Shared {
    fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs").join("sha256")
    }

    fn pod_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    fn pod_path(&self, name: &str) -> PathBuf {
        self.pod_dir().join(format!("{name}.toml"))
    }

    /// The checkpointer thread: sealed segments are checkpointed in the order they were
    /// written (a later segment's replay must never run under an earlier one's); a failed one
    /// stays first in line and is tried again with the next job.
    fn checkpoint_jobs(&self, jobs: Receiver<Job>) {
        // Applies wait on the journal, never on a checkpoint: they go first.
        crate::engine::lower_thread_priority();
        let mut sealed = VecDeque::new();
        for job in jobs {
            match job {
                Job::Sealed(seq) => {
                    sealed.push_back(seq);
                    let _ = self.checkpoint_sealed(&mut sealed);
                }
                Job::Spare => {
                    let _ = self.journal.prepare_spare();
                }
                Job::Flush(reply) => {
                    let _ = reply.send(self.checkpoint_sealed(&mut sealed));
                }
            }
        }
    }

    fn checkpoint_sealed(&self, sealed: &mut VecDeque<u64>) -> Result<(), StoreError> {
        while let Some(&seq) = sealed.front() {
            self.checkpoint(seq)?;
            sealed.pop_front();
        }
        Ok(())
    }

    /// Writes the current state of every pod segment `seq` names into its file (or removes
    /// the file), then removes the segment. The current state may be newer than the segment:
    /// replaying the later segments over it after a crash ends in the same state.
    fn checkpoint(&self, seq: u64) -> Result<(), StoreError> {
        let journal = self.dir.join("journal");
        let segment = self
            .journal
            .read(seq)
            .map_err(io("cannot read the journal in", &journal))?;
        let names: BTreeSet<&str> = segment.records.iter().map(Record::name).collect();
        let latest: Vec<(&str, Option<Arc<str>>)> = {
            let specs = lock(&self.specs);
            names.into_iter().map(|name| (name, specs.get(name).cloned())).collect()
        };
        for batch in latest.chunks(CHECKPOINT_BATCH) {
            self.write_pod_files(batch)?;
        }
        self.journal
            .remove(seq)
            .map_err(io("cannot remove a journal segment in", &journal))
    }

    /// Writes (or removes) a batch of pod files: each is written whole under a temporary name
    /// and flushed (the first flush commits the rest with it), then all are renamed into place
    /// and the directory is flushed once.
    fn write_pod_files(&self, batch: &[(&str, Option<Arc<str>>)]) -> Result<(), StoreError> {
        let mut written = Vec::new();
        let result = (|| {
            for (name, text) in batch {
                let path = self.pod_path(name);
                match text {
                    Some(text) => {
                        let content = format!("{POD_HEADER}{}\n{text}", sha256_hex(text.as_bytes()));
                        let temp = self.temp_path(&self.pod_dir());
                        let mut file = fs::File::create(&temp).map_err(io("cannot write", &temp))?;
                        written.push((temp.clone(), path));
                        file.write_all(content.as_bytes()).map_err(io("cannot write", &temp))?;
                    }
                    None => match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(StoreError::Io {
                                what: "cannot remove",
                                path,
                                source,
                            });
                        }
                    },
                }
            }
            for (temp, _) in &written {
                fs::File::open(temp)
                    .and_then(|f| f.sync_all())
                    .map_err(io("cannot sync", temp))?;
            }
            for (temp, path) in &written {
                fs::rename(temp, path).map_err(io("cannot rename into", path))?;
            }
            written.clear();
            sync_dir(&self.pod_dir())
        })();
        for (temp, _) in written {
            let _ = fs::remove_file(temp);
        }
        result
    }

    fn temp_path(&self, dir: &Path) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    /// Writes `bytes` to a temporary file, fsyncs it, renames it to `path` and fsyncs the
    /// directory: readers see the old file or the whole new one.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let temp = self.temp_path(dir);
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

/// Takes the state directory's lock (`host.lock`), writing this process's id into it for the
/// error another host gets.
fn lock_dir(dir: &Path) -> Result<fs::File, StoreError> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let path = dir.join("host.lock");
    let mut file = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("cannot open", &path))?;
    // A lock is held by an open file description, which a child forked by any thread of the
    // process shares until it execs: a host that just closed the directory may still hold it
    // for that moment. So a held lock is asked again for a while before it counts as taken.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io("cannot lock", &path)(error));
        }
        if std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(StoreError::InUse {
            dir: dir.to_path_buf(),
            pid: pid.trim().parse().ok(),
        });
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(io("cannot write", &path))?;
    Ok(file)
}

/// Sets aside blobs whose bytes do not match their name; removes temporary leftovers.
fn check_blobs(blobs: &Path) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    for entry in fs::read_dir(blobs).map_err(io("cannot read", blobs))? {
        let entry = entry.map_err(io("cannot read", blobs))?;
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
    Ok(problems)
}

/// Every pod file whose integrity check passes; torn or altered files are reported and skipped.
fn load_pod_files(dir: &Path) -> Result<(Specs, Vec<String>), StoreError> {
    let mut pods = BTreeMap::new();
    let mut problems = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io("cannot read", dir))?
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
                Some(text) => {
                    pods.insert(name.to_string(), text.into());
                }
                None => problems.push(format!(
                    "pod {name}: {} is torn or altered (its sha256 header does not match): not loaded",
                    path.display()
                )),
            },
            Err(e) => problems.push(format!("pod {name}: cannot read {}: {e}", path.display())),
        }
    }
    Ok((pods, problems))
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

    fn names(report: &LoadReport) -> Vec<&str> {
        report.pods.iter().map(|(name, _)| name.as_str()).collect()
    }

    #[test]
    fn a_torn_pod_file_is_reported_and_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems.is_empty() && report.pods.is_empty());
        store.put_pod("good", "name = \"good\"\n").unwrap();
        store.put_pod("torn", "name = \"torn\"\n[[containers]]\n").unwrap();
        store.flush().unwrap();
        drop(store);
        let torn = dir.path().join("pods").join("torn.toml");
        let content = fs::read_to_string(&torn).unwrap();
        fs::write(&torn, &content[..content.len() - 5]).unwrap();
        let (_store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.pods, vec![("good".to_string(), "name = \"good\"\n".to_string())]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("torn"), "{:?}", report.problems);
    }

    #[test]
    fn what_only_the_journal_holds_survives_a_crash_and_is_checkpointed_later() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.put_pod("a", "one").unwrap();
        store.put_pod("b", "two").unwrap();
        store.flush().unwrap();
        store.put_pod("a", "three").unwrap();
        store.remove_pod("b").unwrap();
        store.put_pod("c", "four").unwrap();
        // A crash: no flush; the files still hold the first checkpoint.
        drop(store);
        let pod_file = |name: &str| fs::read_to_string(dir.path().join("pods").join(format!("{name}.toml")));
        assert!(pod_file("a").unwrap().ends_with("\none"));
        assert!(pod_file("b").is_ok() && pod_file("c").is_err());

        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(names(&report), ["a", "c"]);
        assert_eq!(report.pods[0].1, "three");
        store.flush().unwrap();
        assert!(pod_file("a").unwrap().ends_with("\nthree"));
        assert!(pod_file("b").is_err() && pod_file("c").is_ok());
        let segments = fs::read_dir(dir.path().join("journal"))
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"))
            .count();
        assert_eq!(segments, 1, "only the (empty) active segment is left");
        drop(store);
        let (_store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(names(&report), ["a", "c"]);
    }

    #[test]
    fn one_host_at_a_time_holds_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.put_pod("a", "one").unwrap();
        let error = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(error, StoreError::InUse { pid: Some(pid), .. } if pid == std::process::id()),
            "{error}"
        );
        store.close().unwrap();
        assert!(matches!(store.put_pod("b", "two"), Err(StoreError::Closed)));
        let (_next, report) = Store::open(dir.path()).unwrap();
        assert_eq!(names(&report), ["a"]);
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
        store.close().unwrap();
        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(!store.has_blob(&hex));
    }
}
