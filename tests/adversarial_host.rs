//! Holes 10.4 and 10.7 of the sandbox review, kept shut, through the real `wasmpod` binary and
//! real guests: what a pod leaves on the host's disk must be this user's alone (pod directories
//! 0700 from the start, secrets 0400, a killed pod's leftovers private and swept at the next
//! start), and what a guest prints must not drive the terminal of whoever watches it (`run`,
//! `logs` escape control characters; `--json` stays exact); the control client refuses a runtime
//! directory that is not this user's alone.
//!
//! Every test has its own runtime directory (`WASMPOD_RUNTIME_DIR`); waits are on conditions with
//! deadlines, never sleeps.
#![cfg(unix)]

mod common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEADLINE, guest};

/// A `wasmpod run` child whose stdout and stderr are collected as raw bytes (escape codes must
/// be seen as they were written); killed if the test fails.
struct RunningPod {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl RunningPod {
    /// `wasmpod run` of `spec` (`TOOLBOX` filled in) with `runtime` as its runtime directory.
    fn start(runtime: &Path, spec_dir: &Path, spec: &str) -> RunningPod {
        let spec_file = write_spec(spec_dir, spec);
        let mut child = wasmpod(runtime)
            .arg("run")
            .arg(&spec_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasmpod run starts");
        let collect = |mut stream: Box<dyn Read + Send>| {
            let bytes = Arc::new(Mutex::new(Vec::new()));
            let sink = bytes.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            });
            bytes
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        RunningPod { child, stdout, stderr }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until the pod printed `line` (a whole line of stdout) or fails with its output.
    fn wait_for_stdout_line(&mut self, line: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.stdout().lines().any(|l| l == line) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "wasmpod run ended ({status}) before printing {line:?}\n{}",
                    self.explain()
                );
            }
            assert!(Instant::now() < deadline, "no {line:?} in time\n{}", self.explain());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn explain(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout().escape_debug(),
            self.stderr().escape_debug()
        )
    }

    fn kill(&mut self) {
        // `Child::kill` is SIGKILL: nothing of wasmpod's clean-up runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wasmpod(runtime: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmpod"));
    command
        .env("WASMPOD_RUNTIME_DIR", runtime)
        .env("WASMPOD_CACHE_DIR", cache_dir())
        .stdin(Stdio::null());
    command
}

/// One compile cache for every run here, so each test does not compile the toolbox again.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("wasmpod-adversarial-host-cache")
}

fn write_spec(dir: &Path, spec: &str) -> PathBuf {
    let file = dir.join(format!("spec-{}.toml", std::process::id()));
    let toolbox = guest("toolbox").display().to_string();
    std::fs::write(&file, spec.replace("TOOLBOX", &toolbox)).unwrap();
    file
}

/// Runs `wasmpod ARGS` to its end, with a deadline.
fn wasmpod_output(runtime: &Path, args: &[&str]) -> Output {
    let mut child = wasmpod(runtime)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wasmpod {args:?} did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::getuid() }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every directory under `root` (itself included) and every other entry.
fn walk(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut others) = (vec![root.to_path_buf()], Vec::new());
    let mut next = 0;
    while next < dirs.len() {
        for entry in std::fs::read_dir(&dirs[next]).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                others.push(entry.path());
            }
        }
        next += 1;
    }
    (dirs, others)
}

/// The pod directories in `runtime`'s `pods/`.
fn pod_dirs(runtime: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(runtime.join("pods")) else {
        return Vec::new();
    };
    entries.map(|entry| entry.unwrap().path()).collect()
}

const SECRET_POD: &str = r#"name = "vault"
[[volumes]]
name = "scratch"
empty_dir = {}
[[volumes]]
name = "creds"
secret = { token = "s3cret", "db.password" = "hunter2" }
[[containers]]
name = "app"
component = "TOOLBOX"
args = ["write", "/data/note", "hi", "&&", "read", "/creds/token", "&&", "print", "ready", "&&", "serve-forever", "50"]
volume_mounts = [
    { volume = "scratch", mount_path = "/data" },
    { volume = "creds", mount_path = "/creds" },
]
"#;

/// Checks that everything wasmpod made under `runtime` is this user's alone: every directory
/// 0700, every secret 0400, the control socket and lock 0600. Files the guest made itself in an
/// `empty_dir` have the guest's mode, but sit behind 0700 directories.
fn assert_private(runtime: &Path, explain: &dyn Fn() -> String) {
    let (dirs, others) = walk(runtime);
    for dir in &dirs {
        assert_eq!(mode(dir), 0o700, "{} is not 0700\n{}", dir.display(), explain());
        assert_eq!(
            std::fs::metadata(dir).unwrap().uid(),
            current_uid(),
            "{}",
            dir.display()
        );
    }
    let secrets: Vec<&PathBuf> = others
        .iter()
        .filter(|p| p.to_string_lossy().contains("/secret/"))
        .collect();
    assert_eq!(secrets.len(), 2, "{others:?}");
    for secret in secrets {
        assert_eq!(mode(secret), 0o400, "{}", secret.display());
    }
    for other in &others {
        if !other.to_string_lossy().contains("/empty_dir/") {
            assert_eq!(mode(other) & 0o077, 0, "{} is readable by others", other.display());
        }
    }
}

#[test]
fn pod_directories_are_0700_and_secrets_0400_as_soon_as_the_pod_runs() {
    let base = tempfile::tempdir().unwrap();
    // Not there yet: wasmpod makes it, private from the start.
    let runtime = base.path().join("run");
    let mut pod = RunningPod::start(&runtime, base.path(), SECRET_POD);
    pod.wait_for_stdout_line("app     | ready");
    assert!(pod.stdout().contains("app     | read: s3cret"), "{}", pod.explain());
    assert_eq!(mode(&runtime), 0o700);
    let pods = pod_dirs(&runtime);
    assert_eq!(pods.len(), 1, "{pods:?}\n{}", pod.explain());
    assert!(pods[0].join("empty_dir/scratch/note").exists());
    assert_private(&runtime, &|| pod.explain());
}

#[test]
fn a_pod_killed_with_sigkill_leaves_only_private_directories_and_the_next_start_sweeps_them() {
    let base = tempfile::tempdir().unwrap();
    let runtime = base.path().join("run");
    let mut pod = RunningPod::start(&runtime, base.path(), SECRET_POD);
    pod.wait_for_stdout_line("app     | ready");
    pod.kill();
    // Left behind (nothing ran to remove it), but nobody else can read a byte of it.
    let left = pod_dirs(&runtime);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_private(&runtime, &|| pod.explain());

    // The next start of any pod, even one without volumes, clears it.
    let next = wasmpod_output(
        &runtime,
        &[
            "run",
            write_spec(
                base.path(),
                "name = \"next\"\nrestart_policy = \"never\"\n[[containers]]\nname = \"once\"\ncomponent = \"TOOLBOX\"\nargs = [\"print\", \"done\"]\n",
            )
            .to_str()
            .unwrap(),
        ],
    );
    assert!(next.status.success(), "{}", String::from_utf8_lossy(&next.stderr));
    assert!(!left[0].exists(), "{} was not swept", left[0].display());
    assert!(pod_dirs(&runtime).is_empty());
}

/// What the guest prints: an erase-screen, cursor-home, a carriage return and a forged prefix,
/// a bell and a C1 CSI on stdout; an OSC title change on stderr.
const EVIL_STDOUT: &str = "\u{1b}[2J\u{1b}[H\rweb | forged\u{7}\u{9b}31m";
const EVIL_STDERR: &str = "\u{1b}]0;pwned\u{7}";
const ESCAPED_STDOUT: &str = "\\x1b[2J\\x1b[H\\rweb | forged\\x07\\u{9b}31m";
const ESCAPED_STDERR: &str = "\\x1b]0;pwned\\x07";

const EVIL_POD: &str = r#"name = "evil"
[[containers]]
name = "app"
component = "TOOLBOX"
args = ["print", "\u001b[2J\u001b[H\rweb | forged\u0007\u009b31m", "&&", "eprint", "\u001b]0;pwned\u0007", "&&", "print", "ready", "&&", "serve-forever", "50"]
[[containers]]
name = "web"
component = "TOOLBOX"
args = ["serve-forever", "1000"]
"#;

/// No byte a terminal acts on, other than the newlines that end lines.
fn assert_no_control(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let control: Vec<char> = text
        .chars()
        .filter(|&c| c.is_control() && c != '\n' && c != '\t')
        .collect();
    assert!(
        control.is_empty(),
        "{what} holds control characters {control:?}:\n{}",
        text.escape_debug()
    );
}

#[test]
fn guest_escape_codes_are_escaped_in_run_and_logs_output_and_exact_in_json() {
    let base = tempfile::tempdir().unwrap();
    let runtime = base.path().join("run");
    let mut pod = RunningPod::start(&runtime, base.path(), EVIL_POD);
    pod.wait_for_stdout_line("app     | ready");

    // `wasmpod run`: the line is shown, escaped, after the real prefix.
    assert_no_control("wasmpod run's stdout", pod.stdout().as_bytes());
    assert!(
        pod.stdout().lines().any(|l| l == format!("app     | {ESCAPED_STDOUT}")),
        "{}",
        pod.explain()
    );
    let wait_stderr = Instant::now() + DEADLINE;
    while !pod.stderr().contains(ESCAPED_STDERR) {
        assert!(Instant::now() < wait_stderr, "{}", pod.explain());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_no_control("wasmpod run's stderr", pod.stderr().as_bytes());

    // `wasmpod logs`: the same, on stdout and stderr.
    let logs = wasmpod_output(&runtime, &["logs", "evil", "app"]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert_no_control("wasmpod logs' stdout", &logs.stdout);
    assert_no_control("wasmpod logs' stderr", &logs.stderr);
    let stdout = String::from_utf8_lossy(&logs.stdout);
    assert!(stdout.lines().any(|l| l == ESCAPED_STDOUT), "{}", stdout.escape_debug());
    assert!(String::from_utf8_lossy(&logs.stderr).contains(ESCAPED_STDERR));

    // `--json`: exact text, escaped only by JSON itself.
    let json = wasmpod_output(&runtime, &["logs", "--json", "evil", "app"]);
    assert!(json.status.success());
    assert_no_control("wasmpod logs --json", &json.stdout);
    let texts: Vec<(String, String)> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                value["stream"].as_str().unwrap().to_string(),
                value["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(texts.contains(&("stdout".into(), EVIL_STDOUT.into())), "{texts:?}");
    assert!(texts.contains(&("stderr".into(), EVIL_STDERR.into())), "{texts:?}");

    // `ps` and `events` carry no raw control character either.
    for args in [&["ps", "evil"][..], &["events", "evil"]] {
        let out = wasmpod_output(&runtime, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_no_control(&format!("wasmpod {args:?}"), &out.stdout);
    }
}

#[test]
fn the_control_client_refuses_a_runtime_directory_others_may_write_or_own() {
    let base = tempfile::tempdir().unwrap();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["ps"][..], &["ps", "demo"], &["logs", "demo", "app"], &["events"]] {
        let out = wasmpod_output(&open, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains("refusing the runtime directory"), "{args:?}: {stderr}");
        assert!(stderr.contains("0777"), "{args:?}: {stderr}");
        assert!(stderr.contains("other users may write"), "{args:?}: {stderr}");
    }
    // Readable by others is refused too (the server would not have used it either).
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = wasmpod_output(&open, &["ps"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("0755") && stderr.contains("other users may read"),
        "{stderr}"
    );
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();

    // The server refuses it as well, for its sockets and for its pods' secrets: the pod does not
    // start, and nothing is written there.
    let run = wasmpod_output(&open, &["run", write_spec(base.path(), SECRET_POD).to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("refusing the runtime directory"), "{stderr}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    assert_eq!(mode(&open), 0o777, "refused, not silently repaired");

    // A directory of another user: as root, make one; otherwise `/` is one.
    let foreign = if current_uid() == 0 {
        let dir = base.path().join("foreign");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        dir
    } else {
        PathBuf::from("/")
    };
    let owner = std::fs::metadata(&foreign).unwrap().uid();
    let out = wasmpod_output(&foreign, &["ps"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("owned by uid {owner}")), "{stderr}");
}
