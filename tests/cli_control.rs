//! `wasmpod ps`, `logs` and `events` against a real `wasmpod run` in another process, through its
//! control socket. Every test has its own runtime directory (`WASMPOD_RUNTIME_DIR`), so tests run
//! in parallel and never see each other's pods; waits are on conditions with deadlines.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{DEADLINE, guest};

/// A spec with a finished init container, a container printing `alive N` every 20 ms, and one
/// that fails and is restarted (on-failure) again and again.
const BUSY_POD: &str = r#"name = "NAME"
restart_policy = "on-failure"
restart_backoff = { initial = "10ms", max = "20ms" }
[[init_containers]]
name = "prep"
component = "TOOLBOX"
args = ["print", "prepared"]
[[containers]]
name = "server"
component = "TOOLBOX"
args = ["serve-forever", "20"]
[[containers]]
name = "flaky"
component = "TOOLBOX"
args = ["eprint", "oops", "&&", "exit", "1"]
"#;

/// A `wasmpod run` child in its own runtime directory; killed if the test fails.
struct RunningPod {
    child: Child,
    name: String,
    runtime: Arc<tempfile::TempDir>,
    output: Arc<Mutex<String>>,
}

impl RunningPod {
    /// Starts `wasmpod run` on `spec` (with `NAME` and `TOOLBOX` filled in) and waits until the
    /// pod answers on its socket.
    fn start(name: &str, spec: &str) -> RunningPod {
        RunningPod::start_in(Arc::new(private_tempdir()), name, spec)
    }

    /// Another pod in the same runtime directory as `self`.
    fn start_beside(&self, name: &str, spec: &str) -> RunningPod {
        RunningPod::start_in(self.runtime.clone(), name, spec)
    }

    fn start_in(runtime: Arc<tempfile::TempDir>, name: &str, spec: &str) -> RunningPod {
        let spec_file = runtime.path().join(format!("{name}.toml"));
        let toolbox = guest("toolbox").display().to_string();
        std::fs::write(&spec_file, spec.replace("NAME", name).replace("TOOLBOX", &toolbox)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
            .arg("run")
            .arg(&spec_file)
            .env("WASMPOD_RUNTIME_DIR", runtime.path())
            .env("WASMPOD_CACHE_DIR", cache_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasmpod run starts");
        // Drained all the time, so a full pipe never slows the pod; kept for failure messages.
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        let pod = RunningPod {
            child,
            name: name.to_string(),
            runtime,
            output,
        };
        pod.wait_until("the pod to answer `ps`", || pod.wasmpod(&["ps", name]).status.success());
        pod
    }

    fn dir(&self) -> &Path {
        self.runtime.path()
    }

    fn socket(&self) -> PathBuf {
        self.dir().join(format!("{}.sock", self.name))
    }

    /// Runs `wasmpod ARGS` against this pod's runtime directory.
    fn wasmpod(&self, args: &[&str]) -> Output {
        wasmpod_in(self.dir(), args)
    }

    /// `wasmpod ARGS`, which must succeed; its stdout.
    fn stdout(&self, args: &[&str]) -> String {
        let out = self.wasmpod(args);
        assert!(
            out.status.success(),
            "wasmpod {args:?} failed: {}\n{}",
            text(&out.stderr),
            self.explain()
        );
        text(&out.stdout)
    }

    fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.explain()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn explain(&self) -> String {
        format!("wasmpod run's output so far:\n{}", self.output.lock().unwrap())
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        wait_with_deadline(&mut self.child, "wasmpod run after SIGTERM")
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

/// A follower (`wasmpod logs -f`, `events -f`) whose stdout lines arrive on a channel; killed
/// if the test fails.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(dir: &Path, args: &[&str]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
            .args(args)
            .env("WASMPOD_RUNTIME_DIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (send, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line that satisfies `wanted`, failing after the deadline.
    fn wait_for_line(&self, what: &str, mut wanted: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {what} from the follower; it printed: {seen:?}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A runtime directory must be 0700 (wasmpod refuses a wider one); tempfile's default is 0755.
fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

/// One compile cache for every `wasmpod run` here (entries are written atomically), so each
/// test does not compile the toolbox again.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("wasmpod-cli-control-cache")
}

fn wasmpod_in(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .args(args)
        .env("WASMPOD_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes while waiting, with a deadline, so a hung client fails the test.
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let read = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let status = wait_with_deadline(&mut child, &format!("wasmpod {args:?}"));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn wait_with_deadline(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `ps` table row of `container`, split into its columns (LAST EXIT may hold spaces).
fn ps_row(table: &str, container: &str) -> Option<Vec<String>> {
    let line = table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(container))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    // NAME KIND READY STATE... RESTARTS LAST-EXIT...: RESTARTS is the first number after READY.
    let restarts = words.iter().skip(3).position(|w| w.parse::<u32>().is_ok())? + 3;
    Some(vec![
        words[0].to_string(),
        words[1].to_string(),
        words[2].to_string(),
        words[3..restarts].join(" "),
        words[restarts].to_string(),
        words[restarts + 1..].join(" "),
    ])
}

fn alive_number(line: &str) -> Option<u64> {
    line.strip_prefix("alive ")?.parse().ok()
}

#[test]
fn ps_shows_every_container_with_its_state_restarts_and_last_exit() {
    let pod = RunningPod::start("busy", BUSY_POD);
    let mut table = String::new();
    pod.wait_until("flaky to be restarted twice", || {
        table = pod.stdout(&["ps"]);
        ps_row(&table, "flaky").is_some_and(|row| row[4].parse::<u32>().is_ok_and(|n| n >= 2))
    });
    assert_eq!(table.lines().next(), Some("pod busy: Running"), "{table}");
    let header: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split("  ")
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        ["NAME", "KIND", "READY", "STATE", "RESTARTS", "LAST EXIT"]
    );
    assert_eq!(
        ps_row(&table, "prep").unwrap(),
        ["prep", "init", "-", "Terminated", "0", "exited with code 0"],
        "{table}"
    );
    assert_eq!(
        ps_row(&table, "server").unwrap(),
        ["server", "app", "yes", "Running", "0", "-"],
        "{table}"
    );
    let flaky = ps_row(&table, "flaky").unwrap();
    assert_eq!(flaky[1], "app");
    assert!(
        ["Running", "Terminated"].contains(&flaky[3].as_str()) || flaky[3].starts_with("Waiting (BackOff"),
        "{table}"
    );
    assert_eq!(flaky[5], "exited with code 1", "{table}");

    // The pod named explicitly, and `--json` for scripts.
    assert!(pod.stdout(&["ps", "busy"]).starts_with("pod busy: Running\n"));
    let json = pod.stdout(&["ps", "--json"]);
    let status: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(status["type"], "status");
    assert_eq!(status["name"], "busy");
    assert_eq!(status["containers"][1]["state"], "running");
    assert_eq!(status["containers"][2]["last_exit_code"], 1);
}

#[test]
fn logs_prints_a_containers_lines_and_tail_the_last_ones() {
    let pod = RunningPod::start("chatty", BUSY_POD);
    pod.wait_until("server to print three lines", || {
        pod.stdout(&["logs", "server"]).lines().count() >= 3
    });
    let all = pod.stdout(&["logs", "server"]);
    assert_eq!(
        all.lines().next(),
        Some("alive 1"),
        "lines are printed as they were written, oldest first:\n{all}"
    );
    assert!(
        all.lines().all(|line| alive_number(line).is_some()),
        "no prefix, no other lines:\n{all}"
    );

    let tail = pod.stdout(&["logs", "chatty", "server", "--tail", "2"]);
    let numbers: Vec<u64> = tail.lines().filter_map(alive_number).collect();
    assert_eq!(numbers.len(), 2, "{tail}");
    assert_eq!(numbers[1], numbers[0] + 1, "the last two, in order: {tail}");
    assert!(numbers[0] >= 2, "{tail}");

    assert_eq!(pod.stdout(&["logs", "prep"]), "prepared\n");
    // A container's stderr goes to stderr, as with `docker logs`.
    pod.wait_until("flaky's output", || !pod.wasmpod(&["logs", "flaky"]).stderr.is_empty());
    let flaky = pod.wasmpod(&["logs", "flaky", "-n", "1"]);
    assert_eq!(
        (text(&flaky.stdout), text(&flaky.stderr)),
        (String::new(), "oops\n".to_string())
    );
}

#[test]
fn logs_follow_streams_new_lines() {
    let pod = RunningPod::start("followed", BUSY_POD);
    // The pod runs before its server has printed anything: wait for a first line.
    let mut before = None;
    pod.wait_until("a first alive line", || {
        before = alive_number(pod.stdout(&["logs", "server", "--tail", "1"]).trim());
        before.is_some()
    });
    let before = before.expect("an alive line");
    let follower = Follower::start(pod.dir(), &["logs", "--follow", "server", "--tail", "1"]);
    let first = follower.wait_for_line("line", |_| true);
    assert!(alive_number(&first).is_some_and(|n| n >= before), "{first}");
    let newer = follower.wait_for_line("newer line", |line| alive_number(line).is_some_and(|n| n > before + 2));
    assert!(newer.starts_with("alive "), "{newer}");
}

#[test]
fn events_lists_started_and_exited_events_and_follows_new_ones() {
    let pod = RunningPod::start("eventful", BUSY_POD);
    let mut events = String::new();
    pod.wait_until("an exit of flaky", || {
        events = pod.stdout(&["events"]);
        events.contains("flaky: exited with code 1")
    });
    for expected in [
        "prep: started",
        "prep: exited with code 0",
        "server: started",
        "pod running",
    ] {
        assert!(
            events.lines().any(|line| line.ends_with(expected)),
            "{expected:?} missing:\n{events}"
        );
    }
    // Each line: an RFC 3339 time, then the event.
    let first = events.lines().next().unwrap_or_default();
    let (at, _) = first.split_once("  ").unwrap_or_default();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{first}");

    // Following: flaky keeps being restarted, so more exits come. The follower prints the log
    // so far in one go before it follows; once its first line is here, a fresh snapshot holds
    // at least as many exits as that, so one more than the snapshot was streamed.
    let is_exit = |line: &str| line.ends_with("flaky: exited with code 1");
    let follower = Follower::start(pod.dir(), &["events", "eventful", "--follow"]);
    let mut seen = usize::from(is_exit(&follower.wait_for_line("a first event", |_| true)));
    let snapshot = pod.stdout(&["events"]).lines().filter(|line| is_exit(line)).count();
    follower.wait_for_line("an exit streamed after the snapshot", |line| {
        seen += usize::from(is_exit(line));
        seen > snapshot
    });
}

#[test]
fn a_missing_pod_or_container_is_a_clear_error() {
    let empty = private_tempdir();
    for args in [&["ps"][..], &["logs", "app"], &["events"]] {
        let out = wasmpod_in(empty.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("no pod is running"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let pod = RunningPod::start("present", BUSY_POD);
    for args in [
        &["ps", "absent"][..],
        &["logs", "absent", "server"],
        &["events", "absent"],
        &["ps", "../x"],
    ] {
        let out = pod.wasmpod(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("no running pod named ") && stderr.contains("(running: present)"),
            "{args:?}: {stderr}"
        );
    }
    let out = pod.wasmpod(&["logs", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "wasmpod: no container named nosuch in pod present (containers: prep, server, flaky)"
    );
}

#[test]
fn with_two_pods_running_ps_lists_them_and_the_others_need_a_name() {
    let first = RunningPod::start("first", BUSY_POD);
    let second = first.start_beside("second", BUSY_POD);

    let list = first.stdout(&["ps"]);
    let mut lines = list.lines();
    assert_eq!(
        lines.next().map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["POD", "PHASE", "CONTAINERS"])
    );
    assert!(lines.next().is_some_and(|l| l.starts_with("first ")), "{list}");
    assert!(lines.next().is_some_and(|l| l.starts_with("second ")), "{list}");

    let out = first.wasmpod(&["logs", "server"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("several pods are running (first, second): name one"),
        "{}",
        text(&out.stderr)
    );
    assert!(first.stdout(&["logs", "second", "prep"]).contains("prepared"));

    // The same pod name twice in one runtime directory is refused before anything runs.
    let spec = second.dir().join("second.toml");
    let again = second.wasmpod(&["run", spec.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("another `wasmpod run` already runs pod second"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn sigterm_removes_the_socket_and_ends_followers() {
    // One container that printed its line and then waits out a long back-off, so stopping the
    // pod has no running container to wait for.
    let spec = r#"name = "NAME"
restart_policy = "on-failure"
restart_backoff = { initial = "10m", max = "10m" }
[[containers]]
name = "once"
component = "TOOLBOX"
args = ["print", "bye", "&&", "exit", "1"]
"#;
    let mut pod = RunningPod::start("ending", spec);
    assert!(pod.socket().exists());
    let follower = Follower::start(pod.dir(), &["logs", "-f", "once"]);
    assert_eq!(follower.wait_for_line("bye", |_| true), "bye");
    let mut events = Follower::start(pod.dir(), &["events", "-f"]);
    events.wait_for_line("the back-off", |line| line.contains("once: restarting in"));

    let status = pod.terminate();
    assert!(status.success(), "{status:?}\n{}", pod.explain());
    assert!(!pod.socket().exists(), "{} should be removed", pod.socket().display());
    // The followers saw the pod end and stopped on their own, successfully.
    let mut follower = follower;
    assert!(wait_with_deadline(&mut follower.child, "wasmpod logs -f").success());
    events.wait_for_line("pod stopped", |line| line.ends_with("pod stopped"));
    assert!(wait_with_deadline(&mut events.child, "wasmpod events -f").success());

    let out = pod.wasmpod(&["ps", "ending"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no running pod named ending (no pod is running)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_socket_answers_bad_requests_with_an_error_and_keeps_serving() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use wasmpod::control::Response;

    let pod = RunningPod::start("strict", BUSY_POD);
    let ask = |request: &[u8]| -> Vec<Response> {
        let mut stream = UnixStream::connect(pod.socket()).expect("the pod listens");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(request).unwrap();
        BufReader::new(stream)
            .lines()
            .map(|line| serde_json::from_str(&line.expect("a reply line")).expect("JSON"))
            .collect()
    };
    let error = |replies: Vec<Response>| match replies.as_slice() {
        [Response::Error { message }] => message.clone(),
        other => panic!("expected one error, got {other:?}"),
    };
    assert!(error(ask(b"rm -rf /\n")).contains("unknown request \"rm\""));
    assert!(error(ask(b"logs server --tail lots\n")).contains("not a number"));
    assert!(error(ask(&[b'x'; 5000])).contains("longer than"));
    assert!(error(ask(b"logs \xff\n")).contains("UTF-8"));
    match ask(b"status\n").as_slice() {
        [Response::Status(status)] => assert_eq!(status.name, "strict"),
        other => panic!("expected a status, got {other:?}"),
    }
    let lines = ask(b"logs prep\n");
    assert!(
        matches!(lines.as_slice(), [Response::Line(line)] if line.text == "prepared" && line.stream == "stdout"),
        "{lines:?}"
    );
}
