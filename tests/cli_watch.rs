//! `wasmpod run --watch` end to end: a spec edit and a rebuilt component file are applied to
//! the running pod (the changed container restarts with its new version, a line says so), and
//! an invalid spec is reported with its location while the pod runs on unchanged. And
//! `wasmpod apply -f SPEC` to a running `wasmpod run` through its control socket.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::{DEADLINE, guest};

fn wasmpod() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmpod"));
    command.stdin(Stdio::null()).env("WASMPOD_RUNTIME_DIR", runtime_dir());
    command
}

/// This test process's control-socket directory (0700, as wasmpod requires).
fn runtime_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let mut builder = tempfile::Builder::new();
        #[cfg(unix)]
        builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
            0o700,
        ));
        builder.tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir")
    })
    .path()
}

/// Every output line of the child, stdout and stderr together.
fn follow(child: &mut Child) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
    }
    receive
}

/// The output so far, and where the current step began.
struct Seen {
    lines: Vec<String>,
    step: usize,
}

impl Seen {
    /// A new step: later waits look only at lines from here on.
    fn step(&mut self) {
        self.step = self.lines.len();
    }

    fn join(&self) -> String {
        self.lines.join("\n")
    }
}

/// Finds a line of the current step that satisfies `wanted`, already seen or read now (events
/// and container output arrive in either order); panics with what was seen at the deadline.
fn wait_line(lines: &mpsc::Receiver<String>, seen: &mut Seen, wanted: impl Fn(&str) -> bool) -> String {
    if let Some(line) = seen.lines[seen.step..].iter().find(|line| wanted(line)) {
        return line.clone();
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.lines.push(line.clone());
                if wanted(&line) {
                    return line;
                }
            }
            Err(_) => panic!("no such line in time; seen:\n{}", seen.join()),
        }
    }
}

fn is_output(line: &str, container: &str, text: &str) -> bool {
    line.split_once(" | ")
        .is_some_and(|(name, rest)| name.trim_end() == container && rest == text)
}

fn spec_text(component: &Path, word: &str) -> String {
    format!(
        r#"name = "watched"
termination_grace_period = "5s"
[[containers]]
name = "job"
component = "{}"
args = ["print", "{word}", "&&", "wait-stdin", "&&", "print", "{word} stopping"]
"#,
        component.display()
    )
}

/// Replaces `path` the way builds do: a new file renamed over the old one.
fn replace(path: &Path, bytes: &[u8]) {
    let new = path.with_extension("new");
    std::fs::write(&new, bytes).unwrap();
    std::fs::rename(&new, path).unwrap();
}

#[test]
fn run_watch_applies_spec_edits_and_rebuilt_components_and_refuses_an_invalid_spec() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("job.wasm");
    let toolbox = std::fs::read(guest("toolbox")).unwrap();
    std::fs::write(&component, &toolbox).unwrap();
    let spec = dir.path().join("wasmpod.toml");
    std::fs::write(&spec, spec_text(&component, "v1")).unwrap();

    let mut child = wasmpod()
        .args(["run", "--watch", "--no-color"])
        .arg(&spec)
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = follow(&mut child);
    let mut seen = Seen {
        lines: Vec::new(),
        step: 0,
    };
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v1"));

    seen.step();
    // A spec edit: the container restarts with its new args, after a normal stop.
    replace(&spec, spec_text(&component, "v2").as_bytes());
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v1 stopping"));
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v2"));
    let updated = wait_line(&lines, &mut seen, |line| line.contains("job: updated (sha256:"));
    assert!(updated.contains(" in "), "{updated}");

    seen.step();
    // An invalid spec: its located error, and nothing changes.
    replace(&spec, b"name = \"watched\"\nrestart_policy = \"sometimes\"\n");
    let invalid = wait_line(&lines, &mut seen, |line| line.contains("the spec is invalid"));
    assert!(invalid.contains("nothing changed"), "{invalid}");
    wait_line(&lines, &mut seen, |line| line.contains("wasmpod.toml:2:"));

    seen.step();
    // Back to a valid spec, same as running: nothing to swap.
    replace(&spec, spec_text(&component, "v2").as_bytes());
    wait_line(&lines, &mut seen, |line| {
        line.contains("nothing changed") && !line.contains("invalid")
    });

    seen.step();
    // A rebuilt component (a custom section appended: other bytes, same behaviour).
    let mut rebuilt = toolbox.clone();
    let payload = b"\x07rebuilt1";
    rebuilt.push(0);
    rebuilt.push(payload.len() as u8);
    rebuilt.extend_from_slice(payload);
    replace(&component, &rebuilt);
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v2 stopping"));
    let rebuilt_line = wait_line(&lines, &mut seen, |line| line.contains("job: updated (sha256:"));
    assert_ne!(rebuilt_line, updated);

    terminate(child, &seen);
}

/// Stops `child` with SIGTERM and asserts it exits 0 in time.
fn terminate(mut child: Child, seen: &Seen) {
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "wasmpod did not exit in time");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}\n{}", seen.join());
}

#[test]
fn apply_goes_to_a_running_wasmpod_run_of_the_pod_unless_a_host_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("job.wasm");
    std::fs::copy(guest("toolbox"), &component).unwrap();
    let spec = dir.path().join("wasmpod.toml");
    let text = |word: &str| spec_text(Path::new("job.wasm"), word).replace("\"watched\"", "\"applied\"");
    std::fs::write(&spec, text("v1")).unwrap();

    let mut child = wasmpod()
        .args(["run", "--no-color"])
        .arg(&spec)
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = follow(&mut child);
    let mut seen = Seen {
        lines: Vec::new(),
        step: 0,
    };
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v1"));

    // Applied from another directory: the spec's relative component path still resolves.
    seen.step();
    std::fs::write(&spec, text("v2")).unwrap();
    let apply = wasmpod()
        .current_dir(std::env::temp_dir())
        .env_remove("WASMPOD_HOST")
        .args(["apply", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&apply.stdout);
    assert!(
        apply.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    assert!(
        stdout.contains("pod applied: applying to the running `wasmpod run`"),
        "{stdout}"
    );
    assert!(stdout.contains("job: updated (sha256:"), "{stdout}");
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v1 stopping"));
    wait_line(&lines, &mut seen, |line| is_output(line, "job", "v2"));

    // The same spec again: nothing changes.
    let again = wasmpod()
        .env_remove("WASMPOD_HOST")
        .args(["apply", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).ends_with("unchanged\n"));

    // An invalid spec: the pod's located error, a failure, and the pod runs on.
    std::fs::write(&spec, "name = \"applied\"\nrestart_policy = \"sometimes\"\n").unwrap();
    let invalid = wasmpod()
        .env_remove("WASMPOD_HOST")
        .args(["apply", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(!invalid.status.success());
    assert!(
        stderr.contains("nothing changed") && stderr.contains("wasmpod.toml:2:"),
        "{stderr}"
    );

    // A named host takes the apply, even with the pod running here.
    std::fs::write(&spec, text("v3")).unwrap();
    let to_host = wasmpod()
        .args(["apply", "--host"])
        .arg(dir.path().join("no-host.sock"))
        .arg("-f")
        .arg(&spec)
        .output()
        .unwrap();
    assert!(!to_host.status.success());
    assert!(!String::from_utf8_lossy(&to_host.stdout).contains("wasmpod run"));

    terminate(child, &seen);
    // Everything it printed until it exited: v3 never ran.
    seen.lines.extend(lines.iter());
    assert!(!seen.join().contains("v3"), "{}", seen.join());
}
