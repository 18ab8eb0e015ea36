//! Shared helpers of the integration tests: the guest components built from `guests/`, one
//! engine per test binary (with an on-disk cache under `target/`), and waiting on a condition
//! with a deadline instead of sleeping.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmpod::spec::{Backoff, ContainerSpec, MountSpec, PodSpec, RestartPolicy, VolumeSource, VolumeSpec};
use wasmpod::{Engine, Pod, PodOptions};

/// Generous: CI machines are small and shared.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A guest component built by the build script, e.g. `guest("toolbox")`.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("WASMPOD_GUESTS_DIR")).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} was not built: {} is missing",
        path.display()
    );
    path
}

/// One engine per test binary, so each component is compiled at most once per process.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let cache = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("wasmpod-test-cache");
            Engine::new(Some(cache)).expect("engine")
        })
        .clone()
}

/// A spec with no containers yet, millisecond back-off, and the given restart policy.
pub fn pod_spec(name: &str, restart_policy: RestartPolicy) -> PodSpec {
    PodSpec {
        restart_policy,
        restart_backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(40),
            reset_after: Duration::from_secs(600),
        },
        termination_grace_period: Duration::from_secs(5),
        base_dir: std::env::temp_dir(),
        ..PodSpec::new(name)
    }
}

/// A toolbox container running the given script (steps separated by `&&`).
pub fn toolbox(name: &str, script: &[&str]) -> ContainerSpec {
    let mut container = ContainerSpec::new(name, guest("toolbox"));
    container.args = script.iter().map(|s| s.to_string()).collect();
    container
}

pub fn mount(volume: &str, path: &str, read_only: bool) -> MountSpec {
    MountSpec {
        volume: volume.to_string(),
        mount_path: path.to_string(),
        read_only,
    }
}

pub fn empty_dir(name: &str) -> VolumeSpec {
    VolumeSpec {
        name: name.to_string(),
        source: VolumeSource::EmptyDir,
    }
}

pub fn host_path(name: &str, dir: &Path) -> VolumeSpec {
    VolumeSpec {
        name: name.to_string(),
        source: VolumeSource::HostPath(dir.to_path_buf()),
    }
}

/// A pod on the test engine.
pub fn pod(spec: PodSpec) -> Pod {
    Pod::with_options(
        spec,
        PodOptions {
            engine: Some(engine()),
            ..PodOptions::default()
        },
    )
    .expect("valid pod")
}

/// Starts the pod and waits for its end, failing the test with its logs if that takes too long.
pub async fn run_to_end(pod: &Pod) -> wasmpod::PodStatus {
    pod.start().await.expect("pod starts");
    match tokio::time::timeout(DEADLINE, pod.wait()).await {
        Ok(status) => status,
        Err(_) => panic!("pod did not end in time\n{}", explain(pod)),
    }
}

/// Waits until `condition` holds, checking every few milliseconds, failing after [`DEADLINE`].
pub async fn wait_until(pod: &Pod, what: &str, mut condition: impl FnMut(&Pod) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition(pod) {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", explain(pod));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The pod's status, events and every container's logs, for a failing test's message.
pub fn explain(pod: &Pod) -> String {
    let status = pod.status();
    let mut text = format!("status: {status:#?}\nevents:\n");
    for event in pod.events().all() {
        text.push_str(&format!("  {event}\n"));
    }
    for container in &status.containers {
        text.push_str(&format!("logs of {}:\n", container.name));
        for line in pod.logs(&container.name) {
            text.push_str(&format!("  {}\n", line.text));
        }
    }
    text
}

/// A container's output lines as text.
pub fn lines(pod: &Pod, container: &str) -> Vec<String> {
    pod.output().text(container)
}

/// A netcheck container (plain `std::net` steps, separated by `&&`).
pub fn netcheck(name: &str, script: &str) -> ContainerSpec {
    let mut container = ContainerSpec::new(name, guest("netcheck"));
    container.args = script.split_whitespace().map(str::to_owned).collect();
    container
}

/// Waits until a container printed a line starting with `prefix`; returns that line.
pub async fn wait_for_line(pod: &Pod, container: &str, prefix: &str) -> String {
    let mut found = None;
    wait_until(pod, &format!("{container} to print {prefix:?}"), |pod| {
        found = lines(pod, container).into_iter().find(|l| l.starts_with(prefix));
        found.is_some()
    })
    .await;
    found.unwrap_or_default()
}

/// A pod from spec text as a user writes it, on the shared engine, its front proxy (if any) on
/// 127.0.0.1:0; `{toolbox}`, `{netcheck}`, `{hello}` stand for the guests' paths.
pub fn pod_from_toml(toml: &str) -> Pod {
    let text = toml
        .replace("{toolbox}", &guest("toolbox").display().to_string())
        .replace("{netcheck}", &guest("netcheck").display().to_string())
        .replace("{hello}", &guest("hello_http").display().to_string());
    let spec = PodSpec::from_toml(&text, Path::new("test-pod.toml")).expect("a valid spec");
    let options = PodOptions {
        engine: Some(engine()),
        listen: Some("127.0.0.1:0".parse().expect("an address")),
        ..PodOptions::default()
    };
    Pod::with_options(spec, options).expect("a valid pod")
}

/// GET `path` from `addr` with `Host: localhost` and read the whole answer: (status, body as
/// text). Fails the test after [`DEADLINE`].
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<bytes::Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("a response");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("the whole body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("answered in time")
}
