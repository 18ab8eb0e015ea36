//! A bad number in a spec must never panic (issue 10.6): thousands of random and mutated specs
//! are thrown at the parser and the validator, and every spec they accept at everything a pod
//! computes from it (CPU throttling pause, restart back-off delays, probe and grace timers,
//! http limits, the egress policy). No panic, ever.
//!
//! The generator is a seeded xorshift, so a failure is reproducible: the failing case prints
//! its seed and its text. `WASMPOD_SPEC_FUZZ_SEED` and `WASMPOD_SPEC_FUZZ_CASES` run other or
//! more cases locally (the defaults keep the test to a few seconds in the debug profile).
//! Seeds are the example pods, a spec that sets every field, and the model built in Rust.

use std::net::{IpAddr, Ipv4Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use toml::Value;
use wasmpod::resources::{CpuShare, MemoryAccount};
use wasmpod::spec::{ComponentSource, ContainerSpec, PodSpec, Probe, ProbeAction};

const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// A spec that sets every field wasmpod.toml knows, so mutations reach each of them.
const FULL_SPEC: &str = r#"
name = "full"
restart_policy = "on-failure"
restart_backoff = { initial = "100ms", max = "10s", reset_after = "1m" }
termination_grace_period = "5s"
readiness_wait = "2s"

[expose]
port = 8080

[[volumes]]
name = "scratch"
empty_dir = {}

[[volumes]]
name = "data"
host_path = "data"

[[volumes]]
name = "creds"
secret = { token = "s3cret", "user.txt" = "admin" }

[[init_containers]]
name = "prepare"
component = "app.wasm"
args = ["--init"]
resources = { memory = "16MiB", cpu = 0.25 }

[[containers]]
name = "web"
component = "app.wasm"
args = ["8080"]
env = { GREETING = "hi" }
ports = [8080, 9090]
volume_mounts = [
  { volume = "scratch", mount_path = "/tmp" },
  { volume = "data", mount_path = "/data", read_only = true },
  { volume = "creds", mount_path = "/run/secrets" },
]
allowed_outbound_hosts = ["host.wasmpod.internal:5432", "*.example.com:*", "10.0.0.7:8080", "[2001:db8::1]:80"]
resources = { memory = 67108864, cpu = 0.5 }
depends_on = [{ container = "db", condition = "ready" }]
startup_probe = { tcp_socket = { port = 8080 }, period = "100ms", failure_threshold = 30 }
readiness_probe = { http_get = { port = 8080, path = "/ready" }, initial_delay = "1s", period = "1s", timeout = "500ms", failure_threshold = 3, success_threshold = 2 }
liveness_probe = { health = {}, period = "10s", timeout = "1s" }
http = { request_timeout = "30s", max_concurrent_instances = 100, max_request_body = "16MiB" }

[[containers]]
name = "db"
component = "app.wasm"
ports = [5432]
readiness_probe = { tcp_socket = { port = 5432 } }
"#;

/// Numbers a careless or hostile spec might hold.
const EXTREME_INTEGERS: &[i64] = &[
    0,
    -1,
    1,
    2,
    65535,
    65536,
    4294967295,
    4294967296,
    i64::MAX,
    i64::MIN,
    i32::MAX as i64,
    -65536,
];
const EXTREME_FLOATS: &[f64] = &[
    0.0,
    -0.0,
    -1.0,
    1e-30,
    5e-324,
    1e308,
    f64::MAX,
    f64::MIN,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.001,
    0.0009999,
    0.5,
    1024.0,
    1024.0001,
];
const EXTREME_STRINGS: &[&str] = &[
    "",
    "0",
    "0s",
    "1ns",
    "1ms",
    "-1s",
    "1e-30s",
    "nan",
    "inf",
    "99999999999999999999years",
    "584942417355years",
    "18446744073709551615",
    "18446744073709551616",
    "18446744073709551615GiB",
    "1TiB",
    "2TiB",
    "0MiB",
    "64MiB",
    "1 s",
    "10s 5m 3h",
    "\u{0}",
    "é",
    "a:b:c",
    "*:*",
    "*.example.com:0",
    "[::1]:80",
    "localhost:80",
    "host.wasmpod.internal:99999",
    "example.com:443",
    "/",
    "..",
    "../..",
    "/data/",
    "-",
    "x",
    "on-failure",
    "never",
    "ready",
    "completed",
    "app.wasm",
    "data",
    "web",
    "db",
];

/// Every key of the TOML contract, so insertions reach fields a seed leaves out.
const KEYS: &[&str] = &[
    "name",
    "restart_policy",
    "restart_backoff",
    "initial",
    "max",
    "reset_after",
    "termination_grace_period",
    "readiness_wait",
    "expose",
    "port",
    "volumes",
    "empty_dir",
    "host_path",
    "secret",
    "init_containers",
    "containers",
    "component",
    "args",
    "env",
    "ports",
    "volume_mounts",
    "volume",
    "mount_path",
    "read_only",
    "allowed_outbound_hosts",
    "resources",
    "memory",
    "cpu",
    "depends_on",
    "container",
    "condition",
    "startup_probe",
    "readiness_probe",
    "liveness_probe",
    "http_get",
    "path",
    "tcp_socket",
    "health",
    "initial_delay",
    "period",
    "timeout",
    "failure_threshold",
    "success_threshold",
    "http",
    "request_timeout",
    "max_concurrent_instances",
    "max_request_body",
];

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    /// Any seed, 0 included, gives a distinct non-zero state.
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A pod directory where the seeds' relative paths exist: `app.wasm` and `data/`.
struct Fixture {
    _dir: tempfile::TempDir,
    spec_path: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("app.wasm"), COMPONENT).expect("write component");
        std::fs::create_dir(dir.path().join("data")).expect("create data dir");
        let spec_path = dir.path().join("wasmpod.toml");
        Fixture { _dir: dir, spec_path }
    }
}

/// The example pods, their components and host paths pointed at the fixture's, plus FULL_SPEC.
fn seeds() -> Vec<Value> {
    let mut texts = vec![FULL_SPEC.to_string()];
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&examples).expect("examples/ exists") {
        let path = entry.expect("read examples/").path().join("wasmpod.toml");
        if let Ok(text) = std::fs::read_to_string(&path) {
            texts.push(text);
        }
    }
    assert!(texts.len() > 3, "expected the example pods as seeds");
    texts
        .iter()
        .map(|text| {
            let mut value: Value = toml::from_str(text).expect("seeds parse as TOML");
            localize(&mut value);
            value
        })
        .collect()
}

/// Points `component` and `host_path` values at files that exist in the fixture, so that
/// mutated seeds are often *valid* and reach the lowering into runtime values.
fn localize(value: &mut Value) {
    match value {
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                match (key.as_str(), &mut *item) {
                    ("component", Value::String(s)) => *s = "app.wasm".into(),
                    ("host_path", Value::String(s)) => *s = "data".into(),
                    _ => localize(item),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(localize),
        _ => {}
    }
}

/// One step from a node to a child.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn collect_paths(value: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(path.clone());
    match value {
        Value::Table(table) => {
            for (key, item) in table {
                path.push(Step::Key(key.clone()));
                collect_paths(item, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Step::Index(index));
                collect_paths(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(root: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut node = root;
    for step in path {
        node = match (step, node) {
            (Step::Key(key), Value::Table(table)) => table.get_mut(key)?,
            (Step::Index(index), Value::Array(items)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(node)
}

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 | 1 => Value::Integer(*rng.pick(EXTREME_INTEGERS)),
        2 => Value::Float(*rng.pick(EXTREME_FLOATS)),
        3 | 4 => Value::String(rng.pick(EXTREME_STRINGS).to_string()),
        _ => Value::Boolean(rng.chance(2)),
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    if depth > 2 || rng.below(3) != 0 {
        return random_scalar(rng);
    }
    if rng.chance(2) {
        Value::Array((0..rng.below(3)).map(|_| random_value(rng, depth + 1)).collect())
    } else {
        let mut table = toml::Table::new();
        for _ in 0..rng.below(3) {
            table.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
        }
        Value::Table(table)
    }
}

/// A nudge of a number or string that keeps its type: the values near the bounds.
fn tweak(rng: &mut Rng, value: &mut Value) {
    match value {
        Value::Integer(n) => {
            *n = match rng.below(5) {
                0 => n.wrapping_neg(),
                1 => n.saturating_add(1),
                2 => n.saturating_sub(1),
                3 => n.saturating_mul(1 << 20),
                _ => *rng.pick(EXTREME_INTEGERS),
            }
        }
        Value::Float(f) => {
            *f = match rng.below(4) {
                0 => -*f,
                1 => *f * 1e300,
                2 => *f * 1e-300,
                _ => *rng.pick(EXTREME_FLOATS),
            }
        }
        Value::String(s) => match rng.below(5) {
            0 => s.insert_str(0, &rng.below(1_000_000_000).to_string()),
            1 => {
                let suffix = *rng.pick(&["s", "ms", "ns", "h", "days", "years", "GiB", "B", ":*", ":0", "/"]);
                s.push_str(suffix);
            }
            2 => {
                let cut = rng.below(s.len() + 1);
                s.truncate(s.floor_char_boundary(cut));
            }
            3 => *s = s.repeat(rng.below(40) + 1),
            _ => *s = rng.pick(EXTREME_STRINGS).to_string(),
        },
        other => *other = random_scalar(rng),
    }
}

/// One structural or value mutation somewhere in `root`.
fn mutate(rng: &mut Rng, root: &mut Value) {
    let mut paths = Vec::new();
    collect_paths(root, &mut Vec::new(), &mut paths);
    let path = rng.pick(&paths).clone();
    let op = rng.below(10);
    if op < 2 && !path.is_empty() {
        // Delete the node from its parent, or duplicate it there.
        let (last, parent_path) = path.split_last().expect("not the root");
        let duplicate = op == 1;
        let Some(parent) = node_mut(root, parent_path) else {
            return;
        };
        match (parent, last) {
            (Value::Table(table), Step::Key(key)) => {
                if duplicate {
                    if let Some(copy) = table.get(key).cloned() {
                        table.insert(rng.pick(KEYS).to_string(), copy);
                    }
                } else {
                    table.remove(key);
                }
            }
            (Value::Array(items), Step::Index(index)) => {
                if duplicate {
                    let copy = items[*index].clone();
                    items.push(copy);
                } else {
                    items.remove(*index);
                }
            }
            _ => {}
        }
        return;
    }
    let Some(node) = node_mut(root, &path) else { return };
    match op {
        2..=5 => tweak(rng, node),
        6 => *node = random_scalar(rng),
        7 => *node = random_value(rng, 1),
        _ => {
            if let Value::Table(table) = node {
                table.insert(rng.pick(KEYS).to_string(), random_value(rng, 1));
            } else {
                tweak(rng, node);
            }
        }
    }
}

/// Byte-level damage: what a truncated download or a bad merge leaves behind.
fn damage_text(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if at < bytes.len() => bytes[at] = rng.next() as u8,
            1 => bytes.insert(at, rng.next() as u8),
            2 => bytes.truncate(at),
            3 => {
                // Duplicate a line: duplicate keys and tables.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let line = lines[rng.below(lines.len())];
                    let mut out: Vec<&str> = lines.clone();
                    out.insert(rng.below(lines.len() + 1), line);
                    bytes = out.join("\n").into_bytes();
                }
            }
            4 => {
                let key = rng.pick(KEYS);
                let value = toml::to_string(&random_value(rng, 2)).unwrap_or_default();
                let insert = format!("\n{key} = {}\n", value.trim());
                bytes.splice(at..at, insert.into_bytes());
            }
            _ => {
                let digits = *rng.pick(&["9999999999999999999999", "-0", "1e-30", "nan", "inf", "0x10"]);
                bytes.splice(at..at, digits.bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Everything a pod computes from an accepted spec, with the arithmetic it uses: none of it
/// may panic for a spec that passed validation.
fn lower_into_runtime(spec: &PodSpec) {
    // A spec the parser accepted passes the Rust-side validation too.
    let revalidated = spec.validate();
    assert!(
        revalidated.is_ok(),
        "accepted from TOML, refused as a model: {revalidated:?}"
    );
    let now = Instant::now();
    let tokio_now = tokio::time::Instant::now();
    let timers = [
        spec.termination_grace_period,
        spec.readiness_wait,
        spec.restart_backoff.initial,
        spec.restart_backoff.max,
        spec.restart_backoff.reset_after,
    ];
    for restarts in [0, 1, 2, 3, 10, 31, 32, 33, 1000, u32::MAX] {
        let delay = spec.restart_backoff.delay(restarts);
        assert!(delay <= spec.restart_backoff.max, "{delay:?}");
        let _ = now + delay;
        let _ = tokio_now + delay;
    }
    for duration in timers {
        let _ = now + duration;
        let _ = tokio_now + duration;
    }
    for container in spec.all_containers() {
        let _throttle = CpuShare::new(container.resources.cpu);
        let account = MemoryAccount::new(container.resources.memory);
        let _ = account.try_charge(u64::MAX);
        for probe in [
            &container.startup_probe,
            &container.readiness_probe,
            &container.liveness_probe,
        ]
        .into_iter()
        .flatten()
        {
            for duration in [probe.initial_delay, probe.period, probe.timeout] {
                let _ = now + duration;
                let _ = tokio_now + duration;
            }
            assert!(probe.failure_threshold >= 1 && probe.success_threshold >= 1);
        }
        let http = &container.http;
        if let Some(timeout) = http.request_timeout {
            let _ = now + timeout;
        }
        if let Some(instances) = http.max_concurrent_instances {
            let _ = tokio::sync::Semaphore::new(instances);
        }
        let policy = &container.allowed_outbound_hosts;
        let _ = policy.allows("api.example.com", 443);
        let _ = policy.allows("[2001:db8::1]", 80);
        let _ = policy.allows_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 8080);
        let _ = policy.allows_name("host.wasmpod.internal");
        for rule in policy.rules() {
            let _ = rule.to_string();
        }
    }
}

/// Runs one case; on a panic, says how to reproduce it.
fn run_case(fixture: &Fixture, seed: u64, case: u64, text: &str, accepted: &mut u64) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        match PodSpec::from_toml(text, &fixture.spec_path) {
            Ok(spec) => {
                lower_into_runtime(&spec);
                true
            }
            Err(error) => {
                // Every problem is printable, located or named.
                assert!(!error.problems().is_empty());
                let _ = error.to_string();
                false
            }
        }
    }));
    match outcome {
        Ok(true) => *accepted += 1,
        Ok(false) => {}
        Err(_) => panic!("case {case} of seed {seed} panicked (WASMPOD_SPEC_FUZZ_SEED={seed}); the spec was:\n{text}"),
    }
}

#[test]
fn mutated_and_random_specs_never_panic() {
    let seed = env_number("WASMPOD_SPEC_FUZZ_SEED", 0x5eed_5bec);
    let cases = env_number("WASMPOD_SPEC_FUZZ_CASES", 4000);
    let mut rng = Rng::new(seed);
    let fixture = Fixture::new();
    let seeds = seeds();
    let mut accepted = 0;
    let mut as_toml = 0;
    for case in 0..cases {
        let mut value = rng.pick(&seeds).clone();
        let mutations = rng.below(4);
        for _ in 0..mutations {
            mutate(&mut rng, &mut value);
        }
        let text = match toml::to_string(&value) {
            Ok(text) => text,
            Err(_) => continue, // A shape TOML cannot write (e.g. a table as the root's value).
        };
        as_toml += 1;
        let text = if rng.chance(4) {
            damage_text(&mut rng, &text)
        } else {
            text
        };
        run_case(&fixture, seed, case, &text, &mut accepted);
    }
    // Pure noise, too: random bytes, and random tables of known keys.
    for case in cases..cases + cases / 8 {
        let text = if rng.chance(2) {
            let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            let mut table = toml::Table::new();
            for _ in 0..rng.below(12) {
                table.insert(rng.pick(KEYS).to_string(), random_value(&mut rng, 0));
            }
            toml::to_string(&table).unwrap_or_default()
        };
        run_case(&fixture, seed, case, &text, &mut accepted);
    }
    eprintln!("{cases} cases, {as_toml} written as TOML, {accepted} accepted");
    // Unmutated seeds are valid, and a fair share of the mutants still are: the lowering into
    // runtime values was really exercised, not only the error paths.
    assert!(
        as_toml > cases / 2,
        "only {as_toml} of {cases} cases were written as TOML"
    );
    assert!(accepted > cases / 20, "only {accepted} of {cases} specs were accepted");
}

/// The model built in Rust skips the TOML stage: validation must hold the same bounds, and
/// what it accepts must lower without panic.
#[test]
fn rust_built_specs_with_extreme_values_never_panic() {
    let seed = env_number("WASMPOD_SPEC_FUZZ_SEED", 0x0dd_ba11);
    let cases = env_number("WASMPOD_SPEC_FUZZ_CASES", 4000) / 2;
    let mut rng = Rng::new(seed);
    let durations = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::from_secs(1),
        Duration::from_secs(24 * 60 * 60),
        Duration::from_secs(24 * 60 * 60 + 1),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    for case in 0..cases {
        let mut spec = PodSpec::new("model");
        spec.base_dir = dir.path().to_path_buf();
        let mut container = ContainerSpec::new("app", ComponentSource::Bytes(COMPONENT.into()));
        let any = |rng: &mut Rng| *rng.pick(&durations);
        spec.termination_grace_period = any(&mut rng);
        spec.readiness_wait = any(&mut rng);
        spec.restart_backoff.initial = any(&mut rng);
        spec.restart_backoff.max = any(&mut rng);
        spec.restart_backoff.reset_after = any(&mut rng);
        container.resources.cpu = rng.chance(2).then(|| *rng.pick(EXTREME_FLOATS));
        container.resources.memory = rng.chance(2).then(|| rng.pick(EXTREME_INTEGERS).unsigned_abs());
        let mut probe = Probe::new(ProbeAction::Health);
        probe.initial_delay = any(&mut rng);
        probe.period = any(&mut rng);
        probe.timeout = any(&mut rng);
        probe.failure_threshold = *rng.pick(&[0, 1, 3, 1_000_000, 1_000_001, u32::MAX]);
        container.liveness_probe = rng.chance(2).then_some(probe);
        container.http.request_timeout = rng.chance(2).then(|| any(&mut rng));
        container.http.max_concurrent_instances = rng.chance(2).then(|| *rng.pick(&[0, 1, 10_000, usize::MAX]));
        container.http.max_request_body = rng.chance(2).then(|| *rng.pick(&[0, 1 << 40, u64::MAX]));
        spec.containers.push(container);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if spec.validate().is_ok() {
                lower_into_runtime(&spec);
            }
        }));
        assert!(outcome.is_ok(), "case {case} of seed {seed} panicked: {spec:#?}");
    }
}
