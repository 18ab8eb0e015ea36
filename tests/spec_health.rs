//! Spec fields of health and lifecycle: probes, `depends_on`, resources and grace periods,
//! parsed into the model, and each mistake reported at its line and column.

use std::time::Duration;

use wasmpod::spec::{Dependency, DependencyCondition, PodSpec, Probe, ProbeAction, Resources};

const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// Writes a spec (and a fake component `app.wasm`) into a fresh directory and parses it.
fn parse(body: &str) -> Result<PodSpec, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.wasm"), COMPONENT).unwrap();
    let file = dir.path().join("wasmpod.toml");
    std::fs::write(&file, body).unwrap();
    PodSpec::from_file(&file).map_err(|e| {
        // Only "line:column: message" of each problem, without the temporary path.
        e.problems()
            .iter()
            .map(|p| format!("{}:{}: {}", p.line.unwrap_or(0), p.column.unwrap_or(0), p.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[test]
fn probes_depends_on_resources_and_grace_parse_into_the_model() {
    let spec = parse(
        r#"name = "full"
termination_grace_period = "5s"
readiness_wait = "2s"

[[containers]]
name = "db"
component = "app.wasm"
ports = [5432]
readiness_probe = { tcp_socket = { port = 5432 }, period = "1s" }

[[containers]]
name = "api"
component = "app.wasm"
ports = [8080]
depends_on = [{ container = "db", condition = "ready" }]
resources = { memory = "64MiB", cpu = 0.5 }
startup_probe = { http_get = { port = 8080, path = "/started" }, failure_threshold = 30, period = "100ms" }
liveness_probe = { health = {}, initial_delay = "3s", timeout = "2s" }
"#,
    )
    .unwrap();
    assert_eq!(spec.termination_grace_period, Duration::from_secs(5));
    assert_eq!(spec.readiness_wait, Duration::from_secs(2));
    let db = &spec.containers[0];
    assert_eq!(
        db.readiness_probe,
        Some(Probe {
            period: Duration::from_secs(1),
            ..Probe::new(ProbeAction::TcpSocket { port: 5432 })
        })
    );
    let api = &spec.containers[1];
    assert_eq!(
        api.depends_on,
        vec![Dependency {
            container: "db".into(),
            condition: DependencyCondition::Ready
        }]
    );
    assert_eq!(
        api.resources,
        Resources {
            memory: Some(64 << 20),
            cpu: Some(0.5)
        }
    );
    assert_eq!(
        api.startup_probe,
        Some(Probe {
            failure_threshold: 30,
            period: Duration::from_millis(100),
            ..Probe::new(ProbeAction::HttpGet {
                port: 8080,
                path: "/started".into()
            })
        })
    );
    assert_eq!(
        api.liveness_probe,
        Some(Probe {
            initial_delay: Duration::from_secs(3),
            timeout: Duration::from_secs(2),
            ..Probe::new(ProbeAction::Health)
        })
    );
    // Kubernetes' defaults where nothing is written.
    let defaults = Probe::new(ProbeAction::Health);
    assert_eq!(
        (defaults.period, defaults.timeout, defaults.failure_threshold),
        (Duration::from_secs(10), Duration::from_secs(1), 3)
    );
}

#[test]
fn depends_on_unknown_self_and_cycles_are_reported_where_written() {
    let problems = parse(
        r#"name = "deps"
[[containers]]
name = "a"
component = "app.wasm"
depends_on = [{ container = "b" }]
[[containers]]
name = "b"
component = "app.wasm"
depends_on = [{ container = "a" }, { container = "ghost" }, { container = "b" }]
"#,
    )
    .unwrap_err();
    assert!(
        problems.contains(
            "9:36: container \"b\" depends on \"ghost\", which is not a container of this pod; use one of: a"
        ),
        "{problems}"
    );
    assert!(
        problems.contains("9:61: container \"b\" depends on itself"),
        "{problems}"
    );
    assert!(
        problems.contains("5:15: depends_on forms a cycle: a -> b -> a"),
        "{problems}"
    );
    assert_eq!(
        problems.matches("cycle").count(),
        1,
        "one cycle, reported once: {problems}"
    );
}

#[test]
fn bad_probes_and_resources_say_what_to_write() {
    let problems = parse(
        r#"name = "bad"
[[containers]]
name = "app"
component = "app.wasm"
resources = { memory = "lots", cpu = 0 }
liveness_probe = { tcp_socket = { port = 80 }, http_get = { port = 80 } }
readiness_probe = { health = {}, period = "soon", failure_threshold = 0 }
startup_probe = { health = {}, success_threshold = 2 }
"#,
    )
    .unwrap_err();
    for expected in [
        "5:24: `lots` is not a memory size",
        "5:38: cpu = 0 is not a share of a core",
        "6:18: containers[0].liveness_probe needs exactly one of",
        "7:43: `soon` is not a duration",
        "7:71: failure_threshold must be at least 1",
        "8:52: success_threshold must be 1 for startup and liveness probes",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
}

#[test]
fn unknown_probe_fields_and_conditions_are_errors() {
    let problems = parse(
        "name = \"x\"\n[[containers]]\nname = \"app\"\ncomponent = \"app.wasm\"\nliveness_probe = { exec = [\"true\"] }\n",
    )
    .unwrap_err();
    assert!(problems.starts_with("5:"), "{problems}");
    assert!(problems.contains("exec"), "{problems}");
    let problems = parse(
        "name = \"x\"\n[[containers]]\nname = \"a\"\ncomponent = \"app.wasm\"\n[[containers]]\nname = \"b\"\ncomponent = \"app.wasm\"\ndepends_on = [{ container = \"a\", condition = \"healthy\" }]\n",
    )
    .unwrap_err();
    assert!(problems.contains("healthy"), "{problems}");
    assert!(
        problems.contains("started") && problems.contains("ready") && problems.contains("completed"),
        "{problems}"
    );
}

#[test]
fn http_limits_parse_and_bad_values_are_located() {
    let spec = parse(
        "name = \"x\"\n[[containers]]\nname = \"app\"\ncomponent = \"app.wasm\"\nports = [80]\nhttp = { request_timeout = \"2s\", max_concurrent_instances = 4, max_request_body = \"1MiB\" }\n",
    )
    .unwrap();
    let http = spec.containers[0].http;
    assert_eq!(http.request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(http.max_concurrent_instances, Some(4));
    assert_eq!(http.max_request_body, Some(1 << 20));
    let problems = parse(
        "name = \"x\"\n[[containers]]\nname = \"app\"\ncomponent = \"app.wasm\"\nhttp = { max_concurrent_instances = 0, max_request_body = \"big\" }\n",
    )
    .unwrap_err();
    assert!(
        problems.contains("5:37: max_concurrent_instances must be at least 1"),
        "{problems}"
    );
    assert!(problems.contains("5:59: `big` is not a size"), "{problems}");
}
