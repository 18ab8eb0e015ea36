//! The `wasmpod` binary end to end: `validate`, `run` exit codes, the on-disk compile cache
//! across processes, and a clean stop on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DEADLINE, guest};

fn wasmpod() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasmpod"));
    command.stdin(Stdio::null()).env("WASMPOD_RUNTIME_DIR", runtime_dir());
    command
}

/// A control-socket directory of this test process: `wasmpod run` claims its pod's name there,
/// and the shared default would make two concurrent `cargo test`s refuse each other's pods.
/// Statics are never dropped, so it lives under cargo's target tmp dir rather than `/tmp`.
fn runtime_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // 0700: wasmpod refuses a runtime directory others may read (tempfile's default is 0755).
        let mut builder = tempfile::Builder::new();
        #[cfg(unix)]
        builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
            0o700,
        ));
        builder.tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir")
    })
    .path()
}

fn write_spec(dir: &Path, body: &str) -> std::path::PathBuf {
    let spec = dir.join("wasmpod.toml");
    let toolbox = guest("toolbox");
    std::fs::write(&spec, body.replace("TOOLBOX", &toolbox.display().to_string())).unwrap();
    spec
}

/// Runs to the end with a deadline; returns (success, stdout, stderr).
fn run_to_end(mut command: Command) -> (bool, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wasmpod runs");
    let lines = follow(&mut child);
    let status = wait_with_deadline(&mut child);
    let (stdout, stderr) = drain(&lines);
    (status.success(), stdout, stderr)
}

/// Output lines of a child, tagged with the stream they came from.
fn follow(child: &mut Child) -> mpsc::Receiver<(bool, String)> {
    let (send, receive) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    for (is_stdout, stream) in [
        (true, Box::new(stdout) as Box<dyn std::io::Read + Send>),
        (false, Box::new(stderr)),
    ] {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if send.send((is_stdout, line)).is_err() {
                    break;
                }
            }
        });
    }
    receive
}

/// Whether `line` is `CONTAINER | TEXT`, whatever the padding of the name column.
fn is_output(line: &str, container: &str, text: &str) -> bool {
    line.split_once(" | ")
        .is_some_and(|(name, rest)| name.trim_end() == container && rest == text)
}

fn has_output(output: &str, container: &str, text: &str) -> bool {
    output.lines().any(|line| is_output(line, container, text))
}

fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wasmpod did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn drain(lines: &mpsc::Receiver<(bool, String)>) -> (String, String) {
    let (mut stdout, mut stderr) = (String::new(), String::new());
    // The reader threads end at EOF, after the child exited; wait for both to finish.
    while let Ok((is_stdout, line)) = lines.recv_timeout(DEADLINE) {
        let out = if is_stdout { &mut stdout } else { &mut stderr };
        out.push_str(&line);
        out.push('\n');
    }
    (stdout, stderr)
}

#[test]
fn validate_prints_ok_or_every_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "name = \"ok\"\n[[containers]]\nname = \"app\"\ncomponent = \"TOOLBOX\"\n",
    );
    let out = wasmpod().arg("validate").arg(&spec).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let spec = write_spec(
        dir.path(),
        "name = \"Bad_Name\"\n[[containers]]\nname = \"app\"\ncomponent = \"missing.wasm\"\nports = [80, 80]\n",
    );
    let out = wasmpod().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = spec.display().to_string();
    assert!(stderr.contains(&format!("{shown}:1:8:")), "{stderr}");
    assert!(stderr.contains(&format!("{shown}:4:13:")), "{stderr}");
    assert!(stderr.contains("missing.wasm"), "{stderr}");
    assert!(stderr.lines().count() >= 3, "every problem is listed: {stderr}");
}

#[test]
fn run_exits_zero_when_every_container_succeeds_and_one_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        r#"name = "good"
restart_policy = "never"
[[containers]]
name = "app"
component = "TOOLBOX"
args = ["print", "hello from app"]
"#,
    );
    let mut command = wasmpod();
    command
        .arg("run")
        .arg(&spec)
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"));
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(has_output(&stdout, "app", "hello from app"), "{stdout}");

    let spec = write_spec(
        dir.path(),
        r#"name = "bad"
restart_policy = "never"
[[containers]]
name = "app"
component = "TOOLBOX"
args = ["eprint", "giving up", "&&", "exit", "2"]
[[containers]]
name = "fine"
component = "TOOLBOX"
args = ["print", "fine"]
"#,
    );
    let mut command = wasmpod();
    command
        .arg("run")
        .arg(&spec)
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"));
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(has_output(&stderr, "app", "giving up"), "{stderr}");
    assert!(stderr.contains("pod failed"), "{stderr}");
}

#[test]
fn a_second_start_loads_compiled_components_from_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "name = \"cached\"\nrestart_policy = \"never\"\n[[containers]]\nname = \"app\"\ncomponent = \"TOOLBOX\"\nargs = [\"print\", \"hi\"]\n",
    );
    let cache = dir.path().join("cache");
    for expected in ["compiled in", "loaded compiled component from cache"] {
        let mut command = wasmpod();
        command.arg("run").arg(&spec).env("WASMPOD_CACHE_DIR", &cache);
        let (ok, stdout, stderr) = run_to_end(command);
        assert!(ok, "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("app: {expected}")),
            "expected {expected:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_compile_that_runs_longer_than_a_moment_shows_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "name = \"slowcompile\"\nrestart_policy = \"never\"\n[[containers]]\nname = \"app\"\ncomponent = \"TOOLBOX\"\nargs = [\"print\", \"hi\"]\n",
    );
    let mut command = wasmpod();
    // An empty cache and Cranelift only: a real compile, well over the 100 ms a progress tick
    // takes in this debug build; progress is shown from the first tick on.
    command
        .arg("run")
        .arg(&spec)
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"))
        .env("WASMPOD_COMPILER", "cranelift")
        .env("WASMPOD_PROGRESS_AFTER", "0s");
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "{stdout}\n{stderr}");
    let progress = stderr
        .lines()
        .position(|l| l.contains("app: compiling") && l.ends_with("(still running)"));
    let compiled = stderr.lines().position(|l| l.contains("app: compiled in"));
    assert!(
        progress.is_some() && progress < compiled,
        "a plain progress line before the compiled line when not on a terminal:\n{stderr}"
    );
}

#[test]
fn a_missing_component_names_the_container_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "name = \"gone\"\n[[containers]]\nname = \"web\"\ncomponent = \"build/web.wasm\"\n",
    );
    let (ok, _, stderr) = run_to_end({
        let mut command = wasmpod();
        command.arg("run").arg(&spec);
        command
    });
    assert!(!ok);
    assert!(stderr.contains("build/web.wasm"), "{stderr}");
    assert!(stderr.contains(":4:13:"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_pod_cleanly_and_removes_its_empty_dir() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        r#"name = "term"
termination_grace_period = "200ms"
[[volumes]]
name = "scratch"
empty_dir = {}
[[containers]]
name = "server"
component = "TOOLBOX"
args = ["write", "/data/state", "x", "&&", "serve-forever", "20"]
volume_mounts = [{ volume = "scratch", mount_path = "/data" }]
"#,
    );
    let mut child = wasmpod()
        .arg("run")
        .arg(&spec)
        .env("WASMPOD_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = follow(&mut child);
    let mut volume_dir = None;
    let mut alive = false;
    let deadline = Instant::now() + DEADLINE;
    while !(alive && volume_dir.is_some()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, line) = lines
            .recv_timeout(left)
            .expect("wasmpod prints the volume and the server's output");
        if let Some(path) = line.split("volume scratch at ").nth(1) {
            volume_dir = Some(std::path::PathBuf::from(path.trim()));
        }
        alive |= is_output(&line, "server", "alive 1");
    }
    let volume_dir = volume_dir.unwrap();
    assert!(volume_dir.join("state").exists());
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_with_deadline(&mut child);
    let (_, stderr) = drain(&lines);
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stderr.contains("pod stopped"), "{stderr}");
    assert!(!volume_dir.exists(), "{} should be removed", volume_dir.display());
}
