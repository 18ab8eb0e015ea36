//! A real OCI registry for the tests: the distribution registry Debian packages as
//! `docker-registry`, serving a temporary directory on a free loopback port. `.ci/run` installs
//! it; where it is absent the tests that need it say so and skip.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: CI machines are small and shared.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct Registry {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Its storage: `docker/registry/v2/...` below it.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

/// The registry binary, when installed.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("docker-registry"))
        .find(|candidate| candidate.is_file())
}

impl Registry {
    /// A running registry, or `None` (with a message) when `docker-registry` is not installed.
    pub fn start(test: &str) -> Option<Registry> {
        let Some(binary) = binary() else {
            eprintln!(
                "SKIPPED {test}: `docker-registry` is not installed (apt-get install -y docker-registry; .ci/run does it)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("storage");
        // The registry cannot pick a free port itself: take one from the kernel and hand it over.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                root.display()
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let registry = Registry {
            child: Some(child),
            addr,
            root,
            _dir: dir,
        };
        let deadline = Instant::now() + START_DEADLINE;
        while !registry.answers() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ on {addr} within {START_DEADLINE:?}; log: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `GET /v2/` answers 200.
    pub fn answers(&self) -> bool {
        self.get("/v2/").is_some_and(|(status, _)| status == 200)
    }

    /// A plain GET: the status and the body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let status = answer.split(' ').nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string())?;
        Some((status, body))
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A guest component built by the build script.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("WASMPOD_GUESTS_DIR")).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} was not built: {} is missing",
        path.display()
    );
    path
}
