//! The process's open-file limit, as the front proxy needs it: every client connection is one
//! file descriptor, and many systems start processes with a soft limit of 1,024 while allowing
//! far more. Like other servers, wasmpod raises the soft limit to the hard limit at start
//! ([`raise_open_file_limit`]) and says what it did, and whether the result is still below the
//! proxy's connection limit.

/// File descriptors kept for everything but client connections (components, volumes, the
/// control socket, the runtime's own).
const RESERVED_FILES: u64 = 256;

/// What [`raise_open_file_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit: the most an unprivileged process may raise its soft limit to.
    pub hard: u64,
}

impl FileLimit {
    /// Lines for the operator: the raise, if any, and a warning when the limit cannot hold
    /// `max_connections` client connections.
    pub fn notes(&self, max_connections: usize) -> Vec<String> {
        let mut notes = Vec::new();
        if self.now > self.before {
            notes.push(format!(
                "raised the open-file limit from {} to {} (the hard limit)",
                self.before, self.now
            ));
        }
        let needed = max_connections as u64 + RESERVED_FILES;
        if self.now < needed {
            notes.push(format!(
                "warning: the open-file limit ({}, hard limit {}) is below the front proxy's connection \
                 limit ({max_connections}) plus {RESERVED_FILES} for the pod: accepting fails beyond about {} \
                 connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections",
                self.now,
                self.hard,
                self.now.saturating_sub(RESERVED_FILES)
            ));
        }
        notes
    }
}

/// The soft limit to ask for: the hard limit, or the kernel's per-process ceiling when the hard
/// limit is "unlimited" (a soft limit above `nr_open` is refused).
fn target(soft: u64, hard: u64, nr_open: Option<u64>) -> u64 {
    let ceiling = if hard == libc::RLIM_INFINITY {
        nr_open.unwrap_or(1 << 20)
    } else {
        hard
    };
    soft.max(ceiling)
}

/// Raises the soft limit on open files to the hard limit when it is lower.
pub fn raise_open_file_limit() -> std::io::Result<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (before, hard) = (limit.rlim_cur, limit.rlim_max);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok());
    let wanted = target(before, hard, nr_open);
    if wanted == before {
        return Ok(FileLimit {
            before,
            now: before,
            hard,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit; only the soft limit changes, within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FileLimit {
        before,
        now: wanted,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_limit_or_nr_open() {
        assert_eq!(target(1024, 524_288, Some(1 << 20)), 524_288);
        assert_eq!(target(1024, libc::RLIM_INFINITY, Some(1 << 20)), 1 << 20);
        assert_eq!(target(4096, 4096, None), 4096);
    }

    #[test]
    fn the_raise_and_a_low_hard_limit_are_reported() {
        let raised = FileLimit {
            before: 1024,
            now: 524_288,
            hard: 524_288,
        };
        assert_eq!(
            raised.notes(16_384),
            ["raised the open-file limit from 1024 to 524288 (the hard limit)"]
        );
        let low = FileLimit {
            before: 1024,
            now: 4096,
            hard: 4096,
        };
        let notes = low.notes(16_384);
        assert_eq!(notes.len(), 2);
        assert!(notes[1].starts_with("warning: the open-file limit (4096, hard limit 4096) is below"));
        let unchanged = FileLimit {
            before: 20_000,
            now: 20_000,
            hard: 20_000,
        };
        assert!(unchanged.notes(16_384).is_empty());
    }
}
