//! Every number in a spec has bounds: a value outside them is reported at its line and column
//! with the field's name and its allowed range, never accepted to panic later (`cpu = 1e-30`
//! once passed validation and made `run` panic converting the throttling pause to a Duration).

use std::time::Duration;

use wasmpod::spec::{ContainerSpec, PodSpec, Probe, ProbeAction};

const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// Writes a spec (and a fake component `app.wasm`) into a fresh directory and parses it; the
/// problems as `line:column: message`, without the temporary path.
fn parse(body: &str) -> Result<PodSpec, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.wasm"), COMPONENT).unwrap();
    let file = dir.path().join("wasmpod.toml");
    std::fs::write(&file, body).unwrap();
    PodSpec::from_file(&file).map_err(|e| {
        e.problems()
            .iter()
            .map(|p| format!("{}:{}: {}", p.line.unwrap_or(0), p.column.unwrap_or(0), p.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// A one-container spec whose container table gets `extra` (line 5 onward).
fn container_with(extra: &str) -> String {
    format!("name = \"bounds\"\n[[containers]]\nname = \"app\"\ncomponent = \"app.wasm\"\n{extra}\n")
}

#[track_caller]
fn assert_rejected(body: &str, expected: &[&str]) {
    let problems = parse(body).expect_err("the spec should be rejected");
    for needle in expected {
        assert!(problems.contains(needle), "missing {needle:?} in:\n{problems}");
    }
}

#[test]
fn a_tiny_or_non_finite_cpu_share_is_located_with_its_range() {
    for (cpu, shown) in [
        ("1e-30", "1e-30"),
        ("0.0009", "0.0009"),
        ("nan", "NaN"),
        ("inf", "inf"),
        ("-1", "-1"),
        ("1e308", "1e308"),
    ] {
        let body = container_with(&format!("resources = {{ cpu = {cpu} }}"));
        assert_rejected(
            &body,
            &[
                &format!("5:21: cpu = {shown}"),
                "is not a share of a core",
                "from 0.001 to 1024",
            ],
        );
    }
    let spec = parse(&container_with("resources = { cpu = 0.001 }")).expect("one millicore is allowed");
    assert_eq!(spec.containers[0].resources.cpu, Some(0.001));
}

#[test]
fn durations_beyond_a_day_or_below_a_millisecond_are_located() {
    assert_rejected(
        "name = \"bounds\"\ntermination_grace_period = \"100years\"\nreadiness_wait = \"25h\"\nrestart_backoff = { initial = \"1ns\", max = \"2days\", reset_after = \"1000000000years\" }\n[[containers]]\nname = \"app\"\ncomponent = \"app.wasm\"\n",
        &[
            "2:28: termination_grace_period = \"100years\" is out of range; use a duration from 0s to 1day",
            "3:18: readiness_wait = \"1day 1h\" is out of range",
            "4:31: restart_backoff.initial = \"1ns\" is out of range; use a duration from 1ms to 1day",
            "4:44: restart_backoff.max = \"2days\" is out of range",
            "4:67: restart_backoff.reset_after = \"1000000000years",
        ],
    );
    assert_rejected(
        &container_with(
            "liveness_probe = { health = {}, period = \"1ns\", timeout = \"2days\", initial_delay = \"30h\" }",
        ),
        &[
            "5:42: period = \"1ns\" is out of range; use a duration from 1ms to 1day",
            "5:59: timeout = \"2days\" is out of range",
            "5:84: initial_delay = \"1day 6h\" is out of range; use a duration from 0s to 1day",
        ],
    );
    assert_rejected(
        &container_with("http = { request_timeout = \"48h\" }"),
        &["5:28: request_timeout = \"2days\" is out of range; use a duration from 1ms to 1day"],
    );
}

#[test]
fn counts_out_of_range_name_the_field_and_the_range() {
    assert_rejected(
        &container_with("readiness_probe = { health = {}, failure_threshold = -1, success_threshold = 99999999999 }"),
        &[
            "5:54: failure_threshold = -1 is out of range; use a whole number from 1 to 1000000",
            "5:78: success_threshold = 99999999999 is out of range; use a whole number from 1 to 1000000",
        ],
    );
    assert_rejected(
        &container_with("readiness_probe = { health = {}, failure_threshold = 1000001 }"),
        &["5:54: failure_threshold = 1000001 is out of range"],
    );
    assert_rejected(
        &container_with("http = { max_concurrent_instances = -5 }"),
        &["5:37: max_concurrent_instances = -5 is out of range; use a whole number from 1 to 10000"],
    );
    assert_rejected(
        &container_with("http = { max_concurrent_instances = 1000000 }"),
        &["5:37: max_concurrent_instances = 1000000 is out of range"],
    );
}

#[test]
fn sizes_and_probe_ports_out_of_range_are_located() {
    assert_rejected(
        &container_with("resources = { memory = \"2048GiB\" }\nhttp = { max_request_body = 9223372036854775807 }"),
        &[
            "5:24: memory = 2199023255552 is out of range; use a size from \"1MiB\" to \"1TiB\"",
            "6:29: max_request_body = 9223372036854775807 is out of range",
        ],
    );
    assert_rejected(
        &container_with("ports = [80]\nliveness_probe = { tcp_socket = { port = 0 } }"),
        &["6:42: port 0 is not a port; use a port from 1 to 65535"],
    );
    assert_rejected(
        &container_with("liveness_probe = { http_get = { port = 65536 } }"),
        &["5:40: port 65536 is out of range; use a port from 1 to 65535"],
    );
}

#[test]
fn a_rust_built_spec_meets_the_same_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = PodSpec::new("bounds");
    spec.base_dir = dir.path().to_path_buf();
    let mut app = ContainerSpec::new("app", wasmpod::spec::ComponentSource::Bytes(COMPONENT.into()));
    app.resources.cpu = Some(1e-30);
    let mut probe = Probe::new(ProbeAction::Health);
    probe.period = Duration::MAX;
    app.liveness_probe = Some(probe);
    spec.containers.push(app);
    spec.termination_grace_period = Duration::from_secs(u64::MAX);
    let shown = spec.validate().expect_err("out of bounds").to_string();
    for needle in [
        "termination_grace_period: termination_grace_period = ",
        "containers[0].resources.cpu: cpu = 1e-30 is not a share of a core",
        "containers[0].liveness_probe.period: period = ",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
}
