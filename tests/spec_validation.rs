//! `wasmpod.toml` parsing and validation, through the public API: every rule must reject a bad
//! spec with the exact `line:column` of the offending value and a message saying what to change.
//!
//! Each test builds its own pod directory in a fresh temp dir (fake components carry only the
//! 8-byte header validation looks at), so tests run in parallel without sharing files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use wasmpod::spec::{
    Backoff, ComponentSource, ContainerSpec, Expose, MountSpec, PodSpec, Problem, RestartPolicy, SpecError,
    VolumeSource, VolumeSpec,
};

/// A WASI 0.2 component header, then a few bytes that stand in for the rest of the binary.
const COMPONENT_BYTES: &[u8] = b"\0asm\x0d\x00\x01\x00\x01\x02\x03";
/// A core module header (what `wasm32-wasip1` builds produce).
const CORE_MODULE_BYTES: &[u8] = b"\0asm\x01\x00\x00\x00\x01\x02\x03";

/// A temp directory holding fake components and host directories, and a spec written into it.
struct PodDir {
    dir: TempDir,
}

impl PodDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        let pod = PodDir { dir };
        pod.write("build/writer.wasm", COMPONENT_BYTES);
        pod.write("build/prepare.wasm", COMPONENT_BYTES);
        pod.write("build/server.wasm", COMPONENT_BYTES);
        pod.write("build/core.wasm", CORE_MODULE_BYTES);
        pod.write("build/readme.txt", b"not wasm at all");
        pod.write("site/index.html", b"<h1>hi</h1>");
        pod
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, relative: &str, contents: &[u8]) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
        std::fs::write(path, contents).expect("write file");
    }

    fn spec_path(&self) -> PathBuf {
        self.root().join("wasmpod.toml")
    }

    /// Writes `lines` as `wasmpod.toml` (line N of the file is `lines[N - 1]`) and loads it.
    fn load(&self, lines: &[&str]) -> Result<PodSpec, SpecError> {
        std::fs::write(self.spec_path(), lines.join("\n")).expect("write spec");
        PodSpec::from_file(self.spec_path())
    }

    /// Loads a spec that must be rejected for exactly one reason, and returns that reason.
    #[track_caller]
    fn single_problem(&self, lines: &[&str]) -> Problem {
        let error = self.load(lines).expect_err("the spec should be rejected");
        assert_eq!(error.problems().len(), 1, "expected one problem, got:\n{error}");
        let problem = error.problems()[0].clone();
        assert_eq!(problem.file.as_deref(), Some(self.spec_path().as_path()), "{problem}");
        problem
    }
}

/// Asserts a problem's position and that its message contains every one of `needles`.
#[track_caller]
fn assert_problem(problem: &Problem, line: usize, column: usize, needles: &[&str]) {
    assert_eq!(
        (problem.line, problem.column),
        (Some(line), Some(column)),
        "wrong position for: {problem}"
    );
    for needle in needles {
        assert!(
            problem.message.contains(needle),
            "message should contain {needle:?}: {problem}"
        );
    }
}

/// The smallest valid spec; tests append lines after it (its last line is line 4).
const MINIMAL: [&str; 4] = [
    "name = \"demo\"",
    "[[containers]]",
    "name = \"writer\"",
    "component = \"build/writer.wasm\"",
];

fn minimal_plus<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    MINIMAL.iter().copied().chain(extra.iter().copied()).collect()
}

// ---------------------------------------------------------------------------------------------
// Valid specs
// ---------------------------------------------------------------------------------------------

#[test]
fn full_spec_parses_into_the_resolved_model() {
    let pod = PodDir::new();
    let spec = pod
        .load(&[
            "name = \"demo\"",
            "restart_policy = \"never\"",
            "restart_backoff = { initial = \"500ms\", max = \"5m\", reset_after = \"10m\" }",
            "[expose]",
            "port = 8080",
            "[[volumes]]",
            "name = \"scratch\"",
            "empty_dir = {}",
            "[[volumes]]",
            "name = \"site\"",
            "host_path = \"./site\"",
            "[[volumes]]",
            "name = \"creds\"",
            "secret = { \"token\" = \"s3cr3t\" }",
            "[[init_containers]]",
            "name = \"prepare\"",
            "component = \"build/prepare.wasm\"",
            "[[containers]]",
            "name = \"writer\"",
            "component = \"build/writer.wasm\"",
            "args = [\"--every\", \"1s\"]",
            "env = { GREETING = \"hello\" }",
            "ports = [8080]",
            "volume_mounts = [",
            "  { volume = \"scratch\", mount_path = \"/data\", read_only = false },",
            "  { volume = \"site\", mount_path = \"/site\", read_only = true },",
            "  { volume = \"creds\", mount_path = \"/creds\" },",
            "]",
            "[[containers]]",
            "name = \"server\"",
            "component = \"./build/server.wasm\"",
        ])
        .unwrap_or_else(|error| panic!("valid spec rejected:\n{error}"));

    let root = pod.root();
    let mut writer = ContainerSpec::new("writer", root.join("build/writer.wasm"));
    writer.args = vec!["--every".into(), "1s".into()];
    writer.env = BTreeMap::from([("GREETING".into(), "hello".into())]);
    writer.ports = vec![8080];
    writer.volume_mounts = vec![
        MountSpec {
            volume: "scratch".into(),
            mount_path: "/data".into(),
            read_only: false,
        },
        MountSpec {
            volume: "site".into(),
            mount_path: "/site".into(),
            read_only: true,
        },
        // A secret mount without `read_only` is read-only.
        MountSpec {
            volume: "creds".into(),
            mount_path: "/creds".into(),
            read_only: true,
        },
    ];
    let expected = PodSpec {
        name: "demo".into(),
        restart_policy: RestartPolicy::Never,
        restart_backoff: Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        },
        termination_grace_period: wasmpod::spec::DEFAULT_TERMINATION_GRACE_PERIOD,
        readiness_wait: wasmpod::spec::DEFAULT_READINESS_WAIT,
        expose: Some(Expose::new(8080)),
        hostnames: Vec::new(),
        host_port: None,
        volumes: vec![
            VolumeSpec {
                name: "scratch".into(),
                source: VolumeSource::EmptyDir,
            },
            VolumeSpec {
                name: "site".into(),
                source: VolumeSource::HostPath(root.join("site")),
            },
            VolumeSpec {
                name: "creds".into(),
                source: VolumeSource::Secret(BTreeMap::from([("token".into(), "s3cr3t".into())])),
            },
        ],
        init_containers: vec![ContainerSpec::new("prepare", root.join("build/prepare.wasm"))],
        containers: vec![writer, ContainerSpec::new("server", root.join("build/server.wasm"))],
        base_dir: root.to_path_buf(),
        source_file: Some(pod.spec_path()),
        faults: Vec::new(),
    };
    assert_eq!(spec, expected);
    assert!(spec.base_dir.is_absolute());
    // A spec that loaded from a file also passes the Rust-side validation.
    spec.validate().expect("a loaded spec validates");
}

#[test]
fn omitted_fields_take_their_defaults() {
    let pod = PodDir::new();
    let spec = pod
        .load(&minimal_plus(&[
            "volume_mounts = [{ volume = \"scratch\", mount_path = \"/data\" }]",
            "[[volumes]]",
            "name = \"scratch\"",
            "empty_dir = {}",
        ]))
        .unwrap_or_else(|error| panic!("valid spec rejected:\n{error}"));
    assert_eq!(spec.restart_policy, RestartPolicy::Always);
    assert_eq!(spec.restart_backoff, Backoff::default());
    assert_eq!(spec.expose, None);
    assert!(spec.init_containers.is_empty());
    let writer = &spec.containers[0];
    assert!(writer.args.is_empty() && writer.env.is_empty() && writer.ports.is_empty());
    assert!(
        !writer.volume_mounts[0].read_only,
        "non-secret mounts default to writable"
    );
    assert_eq!(
        writer.component,
        ComponentSource::File(pod.root().join("build/writer.wasm"))
    );
}

#[test]
fn partial_backoff_keeps_the_other_defaults() {
    let pod = PodDir::new();
    let mut lines = vec!["restart_backoff = { initial = \"1s\" }"];
    lines.extend(MINIMAL);
    let spec = pod.load(&lines).expect("valid spec");
    assert_eq!(
        spec.restart_backoff,
        Backoff {
            initial: Duration::from_secs(1),
            ..Backoff::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// What the TOML reader reports (syntax and shape)
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_field_is_located_and_lists_the_allowed_fields() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["colour = \"red\""]));
    assert_problem(
        &problem,
        5,
        1,
        &["unknown field `colour`", "`component`", "`volume_mounts`"],
    );
}

#[test]
fn unknown_top_level_field_is_located() {
    let pod = PodDir::new();
    let mut lines = vec!["name = \"demo\"", "replicas = 3"];
    lines.extend(&MINIMAL[1..]);
    let problem = pod.single_problem(&lines);
    assert_problem(
        &problem,
        2,
        1,
        &["unknown field `replicas`", "`restart_policy`", "`containers`"],
    );
}

#[test]
fn toml_syntax_error_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[containers]]",
        "name = \"writer",
        "component = \"x\"",
    ]);
    assert_eq!(problem.line, Some(3), "{problem}");
    assert!(problem.column.is_some(), "{problem}");
    assert!(problem.message.contains("expected"), "{problem}");
}

#[test]
fn wrong_type_says_what_was_expected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["ports = [\"http\"]"]));
    assert_problem(&problem, 5, 10, &["expected a port number from 1 to 65535"]);
}

#[test]
fn missing_pod_name_is_reported() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&MINIMAL[1..]);
    assert_problem(&problem, 1, 1, &["missing field `name`"]);
}

#[test]
fn missing_component_field_is_located_at_its_container() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&["name = \"demo\"", "[[containers]]", "name = \"writer\""]);
    // At the container's name: `component` or `image`, neither is required on its own.
    assert_problem(
        &problem,
        3,
        8,
        &["container \"writer\" has no component", "`component = ", "`image = "],
    );
}

#[test]
fn unknown_restart_policy_lists_the_choices() {
    let pod = PodDir::new();
    let mut lines = vec!["restart_policy = \"sometimes\""];
    lines.extend(MINIMAL);
    let problem = pod.single_problem(&lines);
    assert_problem(&problem, 1, 18, &["`sometimes`", "`always`", "`on-failure`", "`never`"]);
}

#[test]
fn empty_dir_must_be_an_empty_table() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[volumes]]",
        "name = \"scratch\"",
        "empty_dir = true",
    ]));
    assert_problem(&problem, 7, 13, &["expected an empty table `{}`"]);
}

#[test]
fn missing_spec_file_names_the_file() {
    let pod = PodDir::new();
    let error = PodSpec::from_file(pod.spec_path()).expect_err("no spec file was written");
    let [problem] = error.problems() else {
        panic!("expected one problem:\n{error}")
    };
    assert_eq!(problem.file.as_deref(), Some(pod.spec_path().as_path()));
    assert_eq!((problem.line, problem.column), (None, None));
    assert!(problem.message.contains("cannot read the spec file"), "{problem}");
    assert!(
        problem
            .to_string()
            .starts_with(&format!("{}: ", pod.spec_path().display()))
    );
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_pod_name_is_located() {
    let pod = PodDir::new();
    let mut lines = vec!["name = \"Demo\""];
    lines.extend(&MINIMAL[1..]);
    let problem = pod.single_problem(&lines);
    assert_problem(
        &problem,
        1,
        8,
        &["pod name \"Demo\"", "contains 'D'", "lowercase letters, digits and '-'"],
    );
}

#[test]
fn bad_container_names_are_located() {
    let pod = PodDir::new();
    let long_name = format!("name = \"{}\"", "a".repeat(64));
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[containers]]",
        &long_name,
        "component = \"build/writer.wasm\"",
    ]);
    assert_problem(&problem, 3, 8, &["is 64 characters long", "1 to 63"]);

    for (name, reason) in [
        ("\"-writer\"", "starts or ends with '-'"),
        ("\"\"", "is empty"),
        ("\"my_app\"", "contains '_'"),
    ] {
        let name_line = format!("name = {name}");
        let problem = pod.single_problem(&[
            "name = \"demo\"",
            "[[containers]]",
            &name_line,
            "component = \"build/writer.wasm\"",
        ]);
        assert_problem(&problem, 3, 8, &["container name", reason]);
    }
}

#[test]
fn bad_volume_name_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[volumes]]",
        "name = \"scratch.dir\"",
        "empty_dir = {}",
    ]));
    assert_problem(&problem, 6, 8, &["volume name \"scratch.dir\"", "contains '.'"]);
}

#[test]
fn duplicate_container_names_count_init_containers() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[init_containers]]",
        "name = \"writer\"",
        "component = \"build/prepare.wasm\"",
        "[[containers]]",
        "name = \"writer\"",
        "component = \"build/writer.wasm\"",
    ]);
    assert_problem(
        &problem,
        6,
        8,
        &["container name \"writer\" is already used (at line 3)", "unique"],
    );
}

#[test]
fn duplicate_volume_names_are_located_at_the_second() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[volumes]]",
        "name = \"scratch\"",
        "empty_dir = {}",
        "[[volumes]]",
        "name = \"scratch\"",
        "host_path = \"site\"",
    ]));
    assert_problem(&problem, 9, 8, &["volume name \"scratch\" is already used (at line 6)"]);
}

// ---------------------------------------------------------------------------------------------
// Volumes and mounts
// ---------------------------------------------------------------------------------------------

#[test]
fn volume_without_a_source_is_located_at_its_table() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["[[volumes]]", "name = \"scratch\""]));
    assert_problem(
        &problem,
        5,
        1,
        &["volume \"scratch\" has no source", "empty_dir", "host_path", "secret"],
    );
}

#[test]
fn volume_with_two_sources_is_located_at_the_second() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[volumes]]",
        "name = \"scratch\"",
        "empty_dir = {}",
        "host_path = \"site\"",
    ]));
    assert_problem(
        &problem,
        8,
        13,
        &["sets both `empty_dir` and `host_path`", "exactly one"],
    );
}

#[test]
fn missing_host_path_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[volumes]]",
        "name = \"site\"",
        "host_path = \"./nowhere\"",
    ]));
    assert_problem(&problem, 7, 13, &["does not exist", "nowhere"]);
    assert!(
        problem
            .message
            .contains(&pod.root().join("nowhere").display().to_string()),
        "{problem}"
    );
}

#[test]
fn host_path_that_is_a_file_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[volumes]]",
        "name = \"site\"",
        "host_path = \"site/index.html\"",
    ]));
    assert_problem(&problem, 7, 13, &["is not a directory"]);
}

#[test]
fn secret_file_names_must_be_plain() {
    let pod = PodDir::new();
    for (key, reason) in [
        ("\"../token\"", "contains '/'"),
        ("\"..\"", "names a directory"),
        ("\"\"", "is empty"),
    ] {
        let secret_line = format!("secret = {{ ok = \"1\", {key} = \"2\" }}");
        let problem = pod.single_problem(&minimal_plus(&["[[volumes]]", "name = \"creds\"", &secret_line]));
        assert_problem(&problem, 7, 22, &["secret file name", reason, "plain file name"]);
    }
}

#[test]
fn mount_of_an_undeclared_volume_lists_the_declared_ones() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "volume_mounts = [{ volume = \"cache\", mount_path = \"/cache\" }]",
        "[[volumes]]",
        "name = \"scratch\"",
        "empty_dir = {}",
        "[[volumes]]",
        "name = \"site\"",
        "host_path = \"site\"",
    ]));
    assert_problem(
        &problem,
        5,
        29,
        &[
            "volume \"cache\" is not declared",
            "declared volumes: \"scratch\", \"site\"",
        ],
    );
}

#[test]
fn mount_with_no_volumes_declared_says_how_to_declare_one() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "volume_mounts = [{ volume = \"cache\", mount_path = \"/cache\" }]",
    ]));
    assert_problem(&problem, 5, 29, &["declares no volumes", "[[volumes]]"]);
}

#[test]
fn two_mounts_on_one_path_are_located_at_the_second() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "volume_mounts = [",
        "  { volume = \"scratch\", mount_path = \"/data\" },",
        "  { volume = \"site\", mount_path = \"/data/\" },",
        "]",
        "[[volumes]]",
        "name = \"scratch\"",
        "empty_dir = {}",
        "[[volumes]]",
        "name = \"site\"",
        "host_path = \"site\"",
    ]));
    assert_problem(&problem, 7, 35, &["already mounts a volume at /data/ (at line 6)"]);
}

#[test]
fn relative_mount_path_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "volume_mounts = [{ volume = \"scratch\", mount_path = \"data\" }]",
        "[[volumes]]",
        "name = \"scratch\"",
        "empty_dir = {}",
    ]));
    assert_problem(
        &problem,
        5,
        53,
        &["mount_path \"data\" is not absolute", "start it with '/'"],
    );
}

#[test]
fn writable_secret_mount_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "volume_mounts = [{ volume = \"creds\", mount_path = \"/creds\", read_only = false }]",
        "[[volumes]]",
        "name = \"creds\"",
        "secret = { token = \"s3cr3t\" }",
    ]));
    assert_problem(
        &problem,
        5,
        73,
        &[
            "secret volume \"creds\" is always mounted read-only",
            "read_only = false",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

#[test]
fn exposed_port_must_be_listed_by_a_container() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["ports = [8081]", "[expose]", "port = 8080"]));
    assert_problem(
        &problem,
        7,
        8,
        &["exposed port 8080 is not listed by any container", "`ports`"],
    );
}

#[test]
fn exposed_port_listed_only_by_an_init_container_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[init_containers]]",
        "name = \"prepare\"",
        "component = \"build/prepare.wasm\"",
        "ports = [8080]",
        "[expose]",
        "port = 8080",
    ]));
    assert_problem(&problem, 10, 8, &["listed only by an init container"]);
}

#[test]
fn port_listed_by_two_containers_is_located_at_the_second() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "ports = [8080]",
        "[[containers]]",
        "name = \"server\"",
        "component = \"build/server.wasm\"",
        "ports = [9090, 8080]",
    ]));
    assert_problem(
        &problem,
        9,
        16,
        &["port 8080 is already listed (at line 5)", "one container"],
    );
}

#[test]
fn port_listed_twice_by_one_container_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["ports = [8080, 8080]"]));
    assert_problem(&problem, 5, 16, &["port 8080 is already listed (at line 5)"]);
}

#[test]
fn port_zero_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["ports = [80, 0]"]));
    assert_problem(&problem, 5, 14, &["port 0 is not a port", "1 to 65535"]);
}

#[test]
fn exposed_port_zero_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["[expose]", "port = 0"]));
    assert_problem(&problem, 6, 8, &["port 0 is not a port"]);
}

#[test]
fn port_beyond_65535_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["[expose]", "port = 70000"]));
    assert_problem(&problem, 6, 8, &["port 70000 is out of range", "1 to 65535"]);

    // The ports after a dropped one are still checked, at their own positions.
    let error = pod
        .load(&minimal_plus(&["ports = [-1, 0]"]))
        .expect_err("both ports are bad");
    let [out_of_range, zero] = error.problems() else {
        panic!("expected two problems:\n{error}")
    };
    assert_problem(out_of_range, 5, 10, &["port -1 is out of range"]);
    assert_problem(zero, 5, 14, &["port 0 is not a port"]);
}

// ---------------------------------------------------------------------------------------------
// Components
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_component_file_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[containers]]",
        "name = \"writer\"",
        "component = \"build/missing.wasm\"",
    ]);
    assert_problem(&problem, 4, 13, &["does not exist", "missing.wasm"]);
}

#[test]
fn core_module_is_rejected_with_how_to_make_a_component() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[containers]]",
        "name = \"writer\"",
        "component = \"build/core.wasm\"",
    ]);
    assert_problem(
        &problem,
        4,
        13,
        &[
            "is a core WebAssembly module, not a component",
            "wasm32-wasip2",
            "wasm-tools component new",
        ],
    );
}

#[test]
fn non_wasm_component_file_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[containers]]",
        "name = \"writer\"",
        "component = \"build/readme.txt\"",
    ]);
    assert_problem(&problem, 4, 13, &["is not WebAssembly"]);
}

#[test]
fn component_that_is_a_directory_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[containers]]",
        "name = \"writer\"",
        "component = \"build\"",
    ]);
    assert_problem(&problem, 4, 13, &["is a directory"]);
}

#[test]
fn init_container_components_are_checked_too() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "[[init_containers]]",
        "name = \"prepare\"",
        "component = \"build/core.wasm\"",
    ]));
    assert_problem(&problem, 7, 13, &["core WebAssembly module"]);
}

// ---------------------------------------------------------------------------------------------
// Containers, environment, durations
// ---------------------------------------------------------------------------------------------

#[test]
fn pod_without_containers_is_rejected() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&["name = \"demo\""]);
    assert_problem(&problem, 1, 1, &["no containers", "[[containers]]"]);

    let problem = pod.single_problem(&["name = \"demo\"", "containers = []"]);
    assert_problem(&problem, 2, 14, &["no containers"]);

    // Init containers alone do not make a pod.
    let problem = pod.single_problem(&[
        "name = \"demo\"",
        "[[init_containers]]",
        "name = \"prepare\"",
        "component = \"build/prepare.wasm\"",
    ]);
    assert_problem(&problem, 1, 1, &["no containers"]);
}

#[test]
fn bad_environment_variable_name_is_located() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["env = { OK = \"1\", \"A=B\" = \"2\" }"]));
    assert_problem(&problem, 5, 19, &["environment variable name \"A=B\" contains '='"]);
}

#[test]
fn bad_duration_is_located() {
    let pod = PodDir::new();
    let mut lines = vec!["restart_backoff = { initial = \"10s\", max = \"five minutes\" }"];
    lines.extend(MINIMAL);
    let problem = pod.single_problem(&lines);
    assert_problem(&problem, 1, 44, &["`five minutes` is not a duration", "\"10s\""]);
}

#[test]
fn zero_initial_backoff_is_rejected() {
    let pod = PodDir::new();
    let mut lines = vec!["restart_backoff = { initial = \"0s\" }"];
    lines.extend(MINIMAL);
    let problem = pod.single_problem(&lines);
    assert_problem(&problem, 1, 31, &["must be longer than zero"]);
}

#[test]
fn initial_backoff_longer_than_max_is_rejected() {
    let pod = PodDir::new();
    let mut lines = vec!["restart_backoff = { initial = \"1m\", max = \"30s\" }"];
    lines.extend(MINIMAL);
    let problem = pod.single_problem(&lines);
    assert_problem(
        &problem,
        1,
        31,
        &["initial (1m) is longer than restart_backoff.max (30s)"],
    );
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

#[test]
fn all_problems_are_reported_together_in_source_order() {
    let pod = PodDir::new();
    let error = pod
        .load(&[
            "name = \"Demo\"",
            "[expose]",
            "port = 9999",
            "[[containers]]",
            "name = \"writer\"",
            "component = \"build/core.wasm\"",
            "ports = [0]",
            "volume_mounts = [{ volume = \"nope\", mount_path = \"data\" }]",
            "[[containers]]",
            "name = \"writer\"",
            "component = \"build/missing.wasm\"",
        ])
        .expect_err("the spec has many problems");

    let positions: Vec<(Option<usize>, Option<usize>)> = error
        .problems()
        .iter()
        .map(|problem| (problem.line, problem.column))
        .collect();
    let expected = [(1, 8), (3, 8), (6, 13), (7, 10), (8, 29), (8, 50), (10, 8), (11, 13)];
    assert_eq!(
        positions,
        expected.map(|(line, column)| (Some(line), Some(column))),
        "problems:\n{error}"
    );

    // Display: one `file:line:column: message` per problem.
    let shown = error.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{shown}");
    let spec_path = pod.spec_path().display().to_string();
    assert!(
        lines[0].starts_with(&format!("{spec_path}:1:8: pod name \"Demo\"")),
        "{shown}"
    );
    assert!(
        lines[7].starts_with(&format!("{spec_path}:11:13: component file")),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Specs built in Rust
// ---------------------------------------------------------------------------------------------

fn rust_built_spec(pod: &PodDir) -> PodSpec {
    let mut server = ContainerSpec::new("server", ComponentSource::Bytes(Arc::from(COMPONENT_BYTES)));
    server.ports = vec![8080];
    server.volume_mounts = vec![MountSpec {
        volume: "scratch".into(),
        mount_path: "/data".into(),
        read_only: false,
    }];
    PodSpec {
        name: "demo".into(),
        restart_policy: RestartPolicy::OnFailure,
        restart_backoff: Backoff::default(),
        termination_grace_period: wasmpod::spec::DEFAULT_TERMINATION_GRACE_PERIOD,
        readiness_wait: wasmpod::spec::DEFAULT_READINESS_WAIT,
        expose: Some(Expose::new(8080)),
        hostnames: Vec::new(),
        host_port: None,
        volumes: vec![VolumeSpec {
            name: "scratch".into(),
            source: VolumeSource::EmptyDir,
        }],
        init_containers: vec![],
        // A relative path resolves against `base_dir`, as it would in a spec file.
        containers: vec![ContainerSpec::new("writer", Path::new("build/writer.wasm")), server],
        base_dir: pod.root().to_path_buf(),
        source_file: None,
        faults: Vec::new(),
    }
}

#[test]
fn valid_rust_built_spec_validates() {
    let pod = PodDir::new();
    rust_built_spec(&pod)
        .validate()
        .unwrap_or_else(|error| panic!("rejected:\n{error}"));
}

#[test]
fn rust_built_spec_problems_name_their_fields() {
    let pod = PodDir::new();
    let mut spec = rust_built_spec(&pod);
    spec.containers[1].name = "writer".into();
    spec.containers[1].component = ComponentSource::Bytes(Arc::from(CORE_MODULE_BYTES));
    spec.containers[1].volume_mounts[0].mount_path = "data".into();
    spec.volumes.push(VolumeSpec {
        name: "creds".into(),
        source: VolumeSource::Secret(BTreeMap::new()),
    });
    spec.containers[0].volume_mounts = vec![MountSpec {
        volume: "creds".into(),
        mount_path: "/creds".into(),
        read_only: false,
    }];
    spec.expose = Some(Expose::new(9090));
    spec.restart_backoff.initial = Duration::ZERO;

    let error = spec.validate().expect_err("the spec has problems");
    let messages: Vec<&str> = error
        .problems()
        .iter()
        .map(|problem| problem.message.as_str())
        .collect();
    let expected_prefixes = [
        "restart_backoff.initial: ",
        "containers[0].volume_mounts[0].read_only: secret volume \"creds\"",
        "containers[1].name: container name \"writer\" is already used (at containers[0].name)",
        "containers[1].component: the component (given as bytes) is a core WebAssembly module",
        "containers[1].volume_mounts[0].mount_path: ",
        "expose.port: exposed port 9090",
    ];
    assert_eq!(messages.len(), expected_prefixes.len(), "problems:\n{error}");
    for (message, prefix) in messages.iter().zip(expected_prefixes) {
        assert!(message.starts_with(prefix), "{message:?} should start with {prefix:?}");
    }
    assert!(
        error
            .problems()
            .iter()
            .all(|problem| problem.line.is_none() && problem.file.is_none())
    );
}

#[test]
fn rust_built_spec_checks_component_files_and_host_paths() {
    let pod = PodDir::new();
    let mut spec = rust_built_spec(&pod);
    spec.containers[0].component = ComponentSource::File(pod.root().join("build/missing.wasm"));
    spec.volumes[0].source = VolumeSource::HostPath(pod.root().join("nowhere"));
    spec.source_file = Some(pod.spec_path());

    let error = spec.validate().expect_err("the spec has problems");
    let shown = error.to_string();
    let spec_path = pod.spec_path().display().to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(
        lines[0].starts_with(&format!("{spec_path}: volumes[0].host_path: host_path ")),
        "{shown}"
    );
    assert!(
        lines[1].starts_with(&format!("{spec_path}: containers[0].component: component file ")),
        "{shown}"
    );
}

// ---- allowed_outbound_hosts (egress) ---------------------------------------------------------

#[test]
fn outbound_hosts_default_to_none_and_parse_every_form() {
    let pod = PodDir::new();
    let spec = pod.load(&MINIMAL).expect("valid spec");
    assert!(spec.containers[0].allowed_outbound_hosts.is_empty());

    let spec = pod
        .load(&minimal_plus(&[
            "allowed_outbound_hosts = [\"host.wasmpod.internal:5432\", \"example.com:443\", \
             \"*.example.com:*\", \"10.0.0.7:8080\", \"[2001:db8::1]:80\"]",
        ]))
        .expect("valid spec");
    // Parsed once, while the spec is read: the model holds the typed policy.
    let policy = &spec.containers[0].allowed_outbound_hosts;
    let rules: Vec<String> = policy.rules().iter().map(|rule| rule.to_string()).collect();
    assert_eq!(
        rules,
        [
            "host.wasmpod.internal:5432",
            "example.com:443",
            "*.example.com:*",
            "10.0.0.7:8080",
            "[2001:db8::1]:80"
        ]
    );
    assert!(policy.allows("api.example.com", 8443));
    assert!(policy.allows("host.wasmpod.internal", 5432));
    assert!(!policy.allows("host.wasmpod.internal", 5433));
}

#[test]
fn outbound_host_without_port_is_located_with_the_fix() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&[
        "allowed_outbound_hosts = [\"example.com:443\", \"db.example.com\"]",
    ]));
    assert_problem(
        &problem,
        5,
        46,
        &[
            "\"db.example.com\" has no port",
            "\"db.example.com:443\"",
            "\"db.example.com:*\"",
        ],
    );
}

#[test]
fn outbound_host_bad_port_and_unbracketed_ipv6_are_located() {
    let pod = PodDir::new();
    let error = pod
        .load(&minimal_plus(&[
            "allowed_outbound_hosts = [",
            "  \"example.com:70000\",",
            "  \"2001:db8::1:443\",",
            "  \"a.*.example.com:80\",",
            "]",
        ]))
        .expect_err("three bad entries");
    let problems = error.problems();
    assert_eq!(problems.len(), 3, "{error}");
    assert_problem(&problems[0], 6, 3, &["port \"70000\"", "1 to 65535", "*"]);
    assert_problem(&problems[1], 7, 3, &["without brackets", "[2001:db8::1]:443"]);
    assert_problem(&problems[2], 8, 3, &["\"a.*.example.com\"", "*.example.com"]);
}

#[test]
fn outbound_host_naming_the_pod_points_to_host_wasmpod_internal() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["allowed_outbound_hosts = [\"127.0.0.1:8080\"]"]));
    assert_problem(&problem, 5, 27, &["the pod itself", "\"host.wasmpod.internal:8080\""]);
}

#[test]
fn outbound_hosts_of_a_rust_built_spec_name_their_entry() {
    // A Rust-built spec holds a typed policy, so a bad entry is refused where it is parsed.
    let entries = ["example.com:443".to_string(), "*:80".to_string()];
    let error = wasmpod::net::EgressPolicy::parse(&entries).expect_err("bad entry");
    assert_eq!(error.index, 1);
    let shown = error.to_string();
    assert!(shown.starts_with("allowed_outbound_hosts[1]: \"*:80\""), "{shown}");
}

#[test]
fn outbound_hosts_of_unknown_type_are_rejected_by_shape() {
    let pod = PodDir::new();
    let problem = pod.single_problem(&minimal_plus(&["allowed_outbound_hosts = \"example.com:443\""]));
    assert_eq!(problem.line, Some(5), "{problem}");
}

#[test]
fn one_dns_label_rule_for_the_spec_and_everything_else() {
    // `is_dns_label` is what the control socket checks client-given pod names with: a name is
    // accepted there exactly when a spec accepts it as a pod name.
    let pod = PodDir::new();
    let long = "x".repeat(64);
    let longest = "x".repeat(63);
    for name in [
        "demo", "demo-1", "1", &longest, "", "-demo", "demo-", "Demo", "a.b", "a/b", "../x", "a_b", &long, "é",
    ] {
        let mut spec = rust_built_spec(&pod);
        spec.name = name.to_string();
        let named_badly = spec
            .validate()
            .err()
            .is_some_and(|error| error.to_string().contains("pod name"));
        assert_eq!(wasmpod::spec::is_dns_label(name), !named_badly, "{name:?}");
    }
}
