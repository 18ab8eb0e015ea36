//! `wasmpod run --watch`: the spec file and every component file it names are watched, and each
//! settled change is applied to the running pod with [`Pod::update`].
//!
//! A change is applied only once every watched file has settled — the same size and
//! modification time for [`SETTLE`] — so a component still being written (a build in progress)
//! is never loaded; one that is complete but broken fails to compile, is reported and changes
//! nothing, and the next change is tried again. An invalid spec is reported with its located
//! error (file:line:column) and changes nothing. The parent directories are watched, not the
//! files, because builds and editors replace files by renaming a new one over them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::pod::Pod;
use crate::spec::{ComponentSource, PodSpec};

/// How long every watched file must stay unchanged before a change is applied.
pub const SETTLE: Duration = Duration::from_millis(200);
/// How often a settling file is looked at.
const SETTLE_CHECK: Duration = Duration::from_millis(50);
/// File-system notifications waiting to be looked at; more are dropped (one is enough to say
/// "something changed").
const NOTIFICATIONS: usize = 64;
/// Notes waiting for the printer.
const NOTES: usize = 64;

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Watches `spec_file` and the pod's component files and applies every settled change to
/// `pod` until the returned receiver is dropped or the pod ends. Each outcome that is not an
/// event of the pod (an invalid spec, a failed update, nothing changed) comes as a note on the
/// receiver; swaps are the pod's `updated` events.
pub fn watch(pod: Arc<Pod>, spec_file: &Path) -> Result<mpsc::Receiver<String>, WatchError> {
    let spec_file = std::path::absolute(spec_file).unwrap_or_else(|_| spec_file.to_path_buf());
    let (changed_tx, changed) = mpsc::channel(NOTIFICATIONS);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            // Full means a look is pending anyway.
            let _ = changed_tx.try_send(event.paths);
        }
    })
    .map_err(|source| WatchError {
        path: spec_file.clone(),
        source,
    })?;
    let (notes_tx, notes) = mpsc::channel(NOTES);
    let mut watching = Watching {
        pod,
        spec_file,
        watcher,
        dirs: BTreeSet::new(),
        notes: notes_tx,
    };
    let files = watching.files();
    watching.watch_dirs(&files)?;
    tokio::spawn(watching.run(changed));
    Ok(notes)
}

struct Watching {
    pod: Arc<Pod>,
    spec_file: PathBuf,
    watcher: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    notes: mpsc::Sender<String>,
}

impl Watching {
    async fn run(mut self, mut changed: mpsc::Receiver<Vec<PathBuf>>) {
        loop {
            let files = self.files();
            let wait_for_change = async {
                while let Some(paths) = changed.recv().await {
                    if paths.iter().any(|path| files.contains(path)) {
                        return true;
                    }
                }
                false
            };
            let relevant = tokio::select! {
                relevant = wait_for_change => relevant,
                _ = self.pod.wait() => return,
                () = self.notes.closed() => return,
            };
            if !relevant {
                return;
            }
            settle(&files).await;
            // Notifications of the settling writes are spent.
            while changed.try_recv().is_ok() {}
            let note = self.apply().await;
            if let Some(note) = note
                && self.notes.send(note).await.is_err()
            {
                return;
            }
            // Components may have moved to new directories.
            let files = self.files();
            if let Err(e) = self.watch_dirs(&files) {
                let _ = self.notes.send(format!("watch: {e}")).await;
            }
        }
    }

    /// Reads the spec and applies it; a note unless the pod's events already say it all.
    async fn apply(&self) -> Option<String> {
        let spec_file = self.spec_file.clone();
        let spec = match tokio::task::spawn_blocking(move || PodSpec::from_file(&spec_file)).await {
            Ok(Ok(spec)) => spec,
            Ok(Err(e)) => return Some(format!("watch: the spec is invalid, nothing changed:\n{e}")),
            Err(e) => return Some(format!("watch: reading the spec panicked: {e}")),
        };
        match self.pod.update(spec).await {
            Ok(report) if report.is_empty() => Some("watch: nothing changed".into()),
            Ok(_) => None,
            Err(e) => Some(format!("watch: not applied, the pod runs as before: {e}")),
        }
    }

    /// The spec file and every component file of the spec the pod runs.
    fn files(&self) -> BTreeSet<PathBuf> {
        let spec = self.pod.current_spec();
        let components = spec.all_containers().filter_map(|c| match &c.component {
            ComponentSource::File(path) => Some(path.clone()),
            // Bytes have no file to watch; an image changes in its registry, not here.
            ComponentSource::Bytes(_) | ComponentSource::Image(_) => None,
        });
        std::iter::once(self.spec_file.clone()).chain(components).collect()
    }

    fn watch_dirs(&mut self, files: &BTreeSet<PathBuf>) -> Result<(), WatchError> {
        for dir in files.iter().filter_map(|file| file.parent()) {
            if self.dirs.contains(dir) {
                continue;
            }
            self.watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: dir.to_path_buf(),
                    source,
                })?;
            self.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }
}

/// Waits until no file of `files` has changed size or modification time for [`SETTLE`].
async fn settle(files: &BTreeSet<PathBuf>) {
    let mut last = look(files).await;
    let mut stable_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(SETTLE_CHECK).await;
        let now = look(files).await;
        if now != last {
            last = now;
            stable_since = tokio::time::Instant::now();
        } else if stable_since.elapsed() >= SETTLE {
            return;
        }
    }
}

/// Each file's size and modification time (`None`: missing, e.g. between a delete and a
/// rename).
async fn look(files: &BTreeSet<PathBuf>) -> Vec<Option<(u64, SystemTime)>> {
    let mut seen = Vec::with_capacity(files.len());
    for file in files {
        let stamp = match tokio::fs::metadata(file).await {
            Ok(metadata) => metadata.modified().ok().map(|modified| (metadata.len(), modified)),
            Err(_) => None,
        };
        seen.push(stamp);
    }
    seen
}
