//! Regression tests of the sandbox issue, on real guests: a read-only mount refuses every form
//! of write; `..`, absolute and planted-symlink paths do not leave a mount; and every spelling of
//! "this machine" (127.0.0.1, `[::1]`, 0.0.0.0, `127.1`, `2130706433`, `host.wasmpod.internal`
//! with no rule) stays inside the pod or is denied — over sockets and over wasi:http alike — while
//! a server listens on the host's own loopback on the same port and is never reached.

mod common;

use common::*;
use wasmpod::{EventKind, Pod};

fn pod_from(toml: &str) -> Pod {
    pod_from_toml(toml)
}

/// Runs a one-container pod of `toolbox` steps to its end and returns its output lines.
async fn toolbox_run(volumes: &str, mounts: &str, steps: &[&str]) -> Vec<String> {
    let args: Vec<String> = steps.iter().map(|s| format!("{s:?}")).collect();
    let pod = pod_from(&format!(
        r#"
        name = "sandbox"
        restart_policy = "never"
        {volumes}
        [[containers]]
        name = "probe"
        component = "{{toolbox}}"
        args = [{}]
        volume_mounts = [{mounts}]
        "#,
        args.join(", ")
    ));
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, wasmpod::PodPhase::Succeeded, "{}", explain(&pod));
    lines(&pod, "probe")
}

/// `try-fs` steps joined with `&&`.
fn steps(ops: &[(&str, &str, Option<&str>)]) -> Vec<String> {
    let mut all = Vec::new();
    for (op, path, other) in ops {
        if !all.is_empty() {
            all.push("&&".to_string());
        }
        all.extend(["try-fs", op, path].map(String::from));
        all.extend(other.map(String::from));
    }
    all
}

#[tokio::test]
async fn a_read_only_mount_refuses_every_form_of_write() {
    let host = tempfile::tempdir().expect("a temp dir");
    std::fs::write(host.path().join("data.txt"), "original").expect("a file");
    std::fs::create_dir(host.path().join("sub")).expect("a dir");
    let before = std::fs::metadata(host.path().join("data.txt")).expect("metadata");
    let ops = [
        ("create", "/ro/new.txt", None),
        ("write", "/ro/data.txt", None),
        ("append", "/ro/data.txt", None),
        ("truncate", "/ro/data.txt", None),
        ("set-len", "/ro/data.txt", None),
        ("set-times", "/ro/data.txt", None),
        ("rename", "/ro/data.txt", Some("/ro/moved.txt")),
        ("unlink", "/ro/data.txt", None),
        ("mkdir", "/ro/newdir", None),
        ("rmdir", "/ro/sub", None),
        ("link", "/ro/data.txt", Some("/ro/hard.txt")),
        ("symlink", "/ro/sym.txt", Some("data.txt")),
    ];
    let script = steps(&ops);
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    let output = toolbox_run(
        &format!(
            "[[volumes]]\nname = \"data\"\nhost_path = {:?}",
            host.path().display().to_string()
        ),
        r#"{ volume = "data", mount_path = "/ro", read_only = true }"#,
        &script,
    )
    .await;
    for (op, _, _) in ops {
        assert!(
            output.iter().any(|line| line.starts_with(&format!("{op} failed: "))),
            "{op} must be refused on a read-only mount: {output:?}"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(host.path())
        .expect("the host dir")
        .map(|entry| entry.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["data.txt", "sub"], "nothing was created, renamed or removed");
    assert_eq!(
        std::fs::read_to_string(host.path().join("data.txt")).expect("read"),
        "original"
    );
    let after = std::fs::metadata(host.path().join("data.txt")).expect("metadata");
    assert_eq!(before.modified().ok(), after.modified().ok(), "times unchanged");
}

#[tokio::test]
async fn dot_dot_absolute_and_planted_symlink_paths_do_not_leave_a_mount() {
    let root = tempfile::tempdir().expect("a temp dir");
    let mounted = root.path().join("mounted");
    std::fs::create_dir(&mounted).expect("the mounted dir");
    std::fs::write(root.path().join("outside.txt"), "secret").expect("a file outside");
    std::os::unix::fs::symlink(root.path(), mounted.join("escape")).expect("a planted dir link");
    std::os::unix::fs::symlink(root.path().join("outside.txt"), mounted.join("link.txt")).expect("a file link");
    let output = toolbox_run(
        &format!(
            "[[volumes]]\nname = \"data\"\nhost_path = {:?}",
            mounted.display().to_string()
        ),
        r#"{ volume = "data", mount_path = "/rw" }"#,
        &[
            "try-read",
            "/rw/../outside.txt",
            "&&",
            "try-read",
            "/rw/escape/outside.txt",
            "&&",
            "try-read",
            "/rw/link.txt",
            "&&",
            "try-read",
            "/etc/passwd",
            "&&",
            "try-write",
            "/rw/link.txt",
            "overwritten",
            "&&",
            "try-write",
            "/rw/escape/outside.txt",
            "overwritten",
        ],
    )
    .await;
    let reads: Vec<&String> = output.iter().filter(|l| l.starts_with("read ")).collect();
    assert_eq!(reads.len(), 4, "{output:?}");
    assert!(reads.iter().all(|l| l.starts_with("read failed: ")), "{output:?}");
    let writes: Vec<&String> = output.iter().filter(|l| l.starts_with("write ")).collect();
    assert_eq!(writes.len(), 2, "{output:?}");
    assert!(writes.iter().all(|l| l.starts_with("write failed: ")), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("outside.txt")).expect("read"),
        "secret"
    );
}

/// Every spelling of this machine's loopback a guest might try, on `port`.
fn loopback_spellings(port: u16) -> Vec<String> {
    [
        "127.0.0.1",
        "[::1]",
        "0.0.0.0",
        "127.1",
        "2130706433",
        "host.wasmpod.internal",
    ]
    .iter()
    .map(|host| format!("{host}:{port}"))
    .collect()
}

fn assert_never_reached(host_only: &std::net::TcpListener) {
    assert!(
        matches!(host_only.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing reached the server on the host's loopback"
    );
}

#[tokio::test]
async fn sockets_to_every_spelling_of_loopback_stay_in_the_pod_or_are_denied() {
    let host_only = std::net::TcpListener::bind("127.0.0.1:0").expect("a host listener");
    host_only.set_nonblocking(true).expect("non-blocking");
    let port = host_only.local_addr().expect("its address").port();
    let mut args = Vec::new();
    for destination in loopback_spellings(port) {
        if !args.is_empty() {
            args.push("&&".to_string());
        }
        args.extend(["try-connect".to_string(), destination]);
    }
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    let pod = pod_from(&format!(
        r#"
        name = "sockets"
        restart_policy = "never"
        [[containers]]
        name = "probe"
        component = "{{netcheck}}"
        args = [{}]
        "#,
        args.join(", ")
    ));
    let status = run_to_end(&pod).await;
    assert_eq!(status.phase, wasmpod::PodPhase::Succeeded, "{}", explain(&pod));
    let output = lines(&pod, "probe");
    let attempts: Vec<&String> = output.iter().filter(|l| l.starts_with("connect ")).collect();
    assert_eq!(attempts.len(), 6, "{output:?}");
    assert!(
        attempts.iter().all(|l| l.starts_with("connect failed: ")),
        "nothing listens on that port inside the pod, and the host is not the pod: {output:?}"
    );
    assert_never_reached(&host_only);
    assert!(
        pod.events().all().iter().any(|e| matches!(
            &e.kind,
            EventKind::EgressDenied { destination, .. } if destination.contains("host.wasmpod.internal")
        )),
        "host.wasmpod.internal without a rule is denied with an event"
    );
}

#[tokio::test]
async fn wasi_http_to_every_spelling_of_loopback_stays_in_the_pod_or_is_denied() {
    let host_only = std::net::TcpListener::bind("127.0.0.1:0").expect("a host listener");
    host_only.set_nonblocking(true).expect("non-blocking");
    let port = host_only.local_addr().expect("its address").port();
    let pod = pod_from(
        r#"
        name = "http-loopback"
        [expose]
        port = 8080
        [[containers]]
        name = "web"
        component = "{hello}"
        ports = [8080]
        "#,
    );
    pod.start().await.expect("the pod starts");
    let addr = pod.proxy_addr().expect("exposed");
    for destination in loopback_spellings(port) {
        let (status, body) = http_get(addr, &format!("/fetch?url=http://{destination}/")).await;
        assert_eq!(status, 502, "{destination}: {body}");
        assert!(
            body.contains("ConnectionRefused") || body.contains("HttpRequestDenied"),
            "{destination}: refused inside the pod or denied, not answered: {body}"
        );
    }
    assert_never_reached(&host_only);
    pod.stop().await;
}
