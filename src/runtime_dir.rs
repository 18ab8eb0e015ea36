//! The per-user private runtime directory: the one place where wasmpod keeps what must not be
//! seen by other local users — the control sockets of running pods ([`crate::control`]) and each
//! running pod's `empty_dir` and secret volumes ([`crate::volume`]).
//!
//! Where: `$WASMPOD_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/wasmpod`, else `/tmp/wasmpod-$UID`. It is
//! created 0700. One that already exists must be a real directory (not a symlink), owned by this
//! user, with no permission for group or others: in a shared place like `/tmp` another user could
//! have made it first and planted sockets or symlinks in it, or be reading along. Such a directory
//! is refused with the reason, never trusted and never repaired behind the user's back (a
//! `WASMPOD_RUNTIME_DIR=$HOME` must not quietly change the home directory's mode). The server
//! ([`ensure_private`]) and the client ([`check`]) apply the same rule.
//!
//! This module does not know what goes inside; it only finds, makes and vets directories.

use std::path::{Path, PathBuf};

/// The variable that overrides where the runtime directory is (tests point it at a temp dir).
pub const ENV: &str = "WASMPOD_RUNTIME_DIR";

/// Why the runtime directory (or a private directory inside it) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error("cannot create the private directory {}: {source}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot inspect the private directory {}: {source}", dir.display())]
    Inspect {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Someone else could read or plant files in it: refused, never repaired behind their back.
    #[error("refusing the runtime directory {}: {reason}", dir.display())]
    Unsafe { dir: PathBuf, reason: String },
}

/// The runtime directory of this user: `$WASMPOD_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/wasmpod`,
/// else `/tmp/wasmpod-$UID`. Only a path: [`ensure_private`] makes it, [`check`] vets it.
pub fn path() -> PathBuf {
    let set = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = set(ENV) {
        return dir;
    }
    if let Some(dir) = set("XDG_RUNTIME_DIR") {
        return dir.join("wasmpod");
    }
    fallback()
}

#[cfg(unix)]
fn fallback() -> PathBuf {
    // `/tmp` rather than `$TMPDIR`: the server and its clients must agree on the place even when
    // they run with different environments.
    PathBuf::from(format!("/tmp/wasmpod-{}", current_uid()))
}

#[cfg(not(unix))]
fn fallback() -> PathBuf {
    std::env::temp_dir().join("wasmpod")
}

/// This process's real user id.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::getuid() }
}

/// Creates `dir` (and missing parents) 0700 from the start, or vets the one that is there (see
/// the module docs); afterwards only this user can read, list or write it.
pub fn ensure_private(dir: &Path) -> Result<(), RuntimeDirError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| RuntimeDirError::Create {
        dir: dir.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    vet(dir)?;
    Ok(())
}

/// Vets `dir` without creating or changing it (for clients). `Ok(false)` when it does not
/// exist: then no pod runs there.
pub fn check(dir: &Path) -> Result<bool, RuntimeDirError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RuntimeDirError::Inspect {
            dir: dir.to_path_buf(),
            source,
        }),
        Ok(_) => {
            #[cfg(unix)]
            vet(dir)?;
            Ok(true)
        }
    }
}

/// Whether `dir` is a real directory of ours that nobody else may use.
#[cfg(unix)]
fn vet(dir: &Path) -> Result<(), RuntimeDirError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|source| RuntimeDirError::Inspect {
        dir: dir.to_path_buf(),
        source,
    })?;
    let refuse = |reason: String| {
        Err(RuntimeDirError::Unsafe {
            dir: dir.to_path_buf(),
            reason,
        })
    };
    if !meta.is_dir() {
        return refuse("it is not a directory (a symlink is not accepted either)".into());
    }
    let uid = current_uid();
    if meta.uid() != uid {
        return refuse(format!(
            "it is owned by uid {}, not by this user (uid {uid}); remove it or choose another with {ENV}",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    let others = if mode & 0o022 != 0 {
        "other users may write to it and could have planted files in it"
    } else {
        "other users may read it"
    };
    if mode & 0o077 != 0 {
        return refuse(format!(
            "its mode is {mode:04o}, wider than 0700: {others}; \
             make it 0700 (`chmod 700`) if it is yours alone, or choose another with {ENV}"
        ));
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(dir: &Path) -> u32 {
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_missing_directory_is_made_0700_with_its_parents() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a").join("b");
        assert!(!check(&dir).unwrap());
        ensure_private(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.path().join("a")), 0o700);
        assert!(check(&dir).unwrap());
    }

    #[test]
    fn one_wider_than_0700_is_refused_by_server_and_client_alike_and_left_as_it_is() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        for (wide, why) in [
            (0o777, "other users may write"),
            (0o770, "other users may write"),
            (0o702, "other users may write"),
            (0o1777, "other users may write"),
            (0o755, "other users may read"),
            (0o710, "other users may read"),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(wide)).unwrap();
            for result in [ensure_private(&dir).map(|_| true), check(&dir)] {
                let error = result.unwrap_err().to_string();
                assert!(error.contains(&format!("{wide:04o}")), "{error}");
                assert!(error.contains(why), "{error}");
                assert!(error.contains("chmod 700"), "{error}");
            }
            assert_eq!(mode(&dir), wide);
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        ensure_private(&dir).unwrap();
        assert!(check(&dir).unwrap());
    }

    #[test]
    fn a_symlink_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(check(&link), Err(RuntimeDirError::Unsafe { .. })));
        assert!(matches!(ensure_private(&link), Err(RuntimeDirError::Unsafe { .. })));
    }
}
