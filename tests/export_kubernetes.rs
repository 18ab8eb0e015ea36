//! `wasmpod export kubernetes`: every example (its components as images) exports to YAML that
//! parses back with the same k8s-openapi types, each field mapped as the spec says; what has
//! no Kubernetes equivalent is named in a comment and on stderr; a local component is an error
//! that says to push it; pushed examples' images pull back from a real registry.

mod oci_registry;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec as K8sPodSpec, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use wasmpod::export::kubernetes::{self, KubernetesOptions, NAME_LABEL};
use wasmpod::oci::{Digest, ImageStore, Reference};
use wasmpod::spec::{ComponentSource, ContainerSpec, PodSpec, ProbeAction, RestartPolicy, VolumeSource};

/// The objects of one export, parsed back.
#[derive(Default)]
struct Parsed {
    pods: Vec<Pod>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    secrets: Vec<Secret>,
}

fn parse(yaml: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_norway::Value::deserialize(document).expect("a YAML document");
        let kind = value.get("kind").and_then(|k| k.as_str()).expect("kind").to_string();
        match kind.as_str() {
            "Pod" => parsed.pods.push(serde_norway::from_value(value).expect("a Pod")),
            "Deployment" => parsed
                .deployments
                .push(serde_norway::from_value(value).expect("a Deployment")),
            "Service" => parsed
                .services
                .push(serde_norway::from_value(value).expect("a Service")),
            "Secret" => parsed.secrets.push(serde_norway::from_value(value).expect("a Secret")),
            other => panic!("unexpected kind {other}"),
        }
    }
    parsed
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path().join("wasmpod.toml"))
        .filter(|spec| spec.exists())
        .collect();
    specs.sort();
    assert!(specs.len() >= 6, "examples: {specs:?}");
    specs
}

/// The example's text with every `component = "FILE"` line turned into `image = "…"` by
/// `image_of(file)`; also returns the component files, resolved.
fn with_images(spec: &Path, image_of: &mut dyn FnMut(&Path) -> String) -> (String, Vec<PathBuf>) {
    let text = std::fs::read_to_string(spec).unwrap();
    let mut files = Vec::new();
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let Some(rest) = line.trim_start().strip_prefix("component = \"") else {
                return line.to_string();
            };
            let file = spec.parent().unwrap().join(rest.trim_end().trim_end_matches('"'));
            files.push(file.clone());
            format!("image = \"{}\"", image_of(&file))
        })
        .collect();
    assert!(!files.is_empty(), "{} names no component", spec.display());
    (lines.join("\n"), files)
}

fn stem(file: &Path) -> String {
    file.file_stem().unwrap().to_string_lossy().replace('_', "-")
}

// ---- the mapping, field by field ---------------------------------------------------------------

fn assert_container(spec: &ContainerSpec, k8s: &Container, init: bool) {
    let ComponentSource::Image(reference) = &spec.component else {
        panic!("{}: not an image", spec.name)
    };
    assert_eq!(k8s.name, spec.name);
    assert_eq!(k8s.image.as_deref(), Some(reference.to_string().as_str()));
    assert_eq!(k8s.args.clone().unwrap_or_default(), spec.args, "{}: args", spec.name);
    let env: BTreeMap<String, String> = k8s
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env, spec.env, "{}: env", spec.name);
    let ports: Vec<u16> = k8s
        .ports
        .iter()
        .flatten()
        .map(|port| u16::try_from(port.container_port).unwrap())
        .collect();
    assert_eq!(ports, spec.ports, "{}: ports", spec.name);
    let mounts: Vec<(String, String, bool)> = k8s
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only.unwrap_or(false)))
        .collect();
    let expected: Vec<(String, String, bool)> = spec
        .volume_mounts
        .iter()
        .map(|m| (m.volume.clone(), m.mount_path.clone(), m.read_only))
        .collect();
    assert_eq!(mounts, expected, "{}: volume mounts", spec.name);

    let limits = k8s
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert_eq!(limits.contains_key("memory"), spec.resources.memory.is_some());
    assert_eq!(limits.contains_key("cpu"), spec.resources.cpu.is_some());

    for (ours, theirs) in [
        (&spec.startup_probe, &k8s.startup_probe),
        (&spec.readiness_probe, &k8s.readiness_probe),
        (&spec.liveness_probe, &k8s.liveness_probe),
    ] {
        match (ours.as_ref().map(|p| &p.action), theirs) {
            (Some(ProbeAction::HttpGet { port, path }), Some(probe)) if !init => {
                let get = probe.http_get.as_ref().expect("httpGet");
                assert_eq!(get.port, IntOrString::Int(i32::from(*port)));
                assert_eq!(get.path.as_deref(), Some(path.as_str()));
            }
            (Some(ProbeAction::TcpSocket { port }), Some(probe)) if !init => {
                assert_eq!(
                    probe.tcp_socket.as_ref().expect("tcpSocket").port,
                    IntOrString::Int(i32::from(*port))
                );
            }
            // `health = {}` and init containers' probes are left out (and warned about).
            (Some(ProbeAction::Health), None) | (None, None) => {}
            (Some(_), None) if init => {}
            (ours, theirs) => panic!("{}: probe {ours:?} became {theirs:?}", spec.name),
        }
    }
}

fn assert_pod_spec(spec: &PodSpec, k8s: &K8sPodSpec, runtime_class: &str, parsed: &Parsed) {
    assert_eq!(k8s.runtime_class_name.as_deref(), Some(runtime_class));
    let policy = match spec.restart_policy {
        RestartPolicy::Always => "Always",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::Never => "Never",
    };
    assert_eq!(k8s.restart_policy.as_deref(), Some(policy));
    let init = k8s.init_containers.clone().unwrap_or_default();
    assert_eq!(init.len(), spec.init_containers.len());
    for (ours, theirs) in spec.init_containers.iter().zip(&init) {
        assert_container(ours, theirs, true);
    }
    assert_eq!(k8s.containers.len(), spec.containers.len());
    for (ours, theirs) in spec.containers.iter().zip(&k8s.containers) {
        assert_container(ours, theirs, false);
    }
    let volumes = k8s.volumes.clone().unwrap_or_default();
    assert_eq!(volumes.len(), spec.volumes.len());
    for (ours, theirs) in spec.volumes.iter().zip(&volumes) {
        assert_eq!(theirs.name, ours.name);
        match &ours.source {
            VolumeSource::EmptyDir => assert!(theirs.empty_dir.is_some()),
            VolumeSource::HostPath(path) => {
                let host_path = theirs.host_path.as_ref().expect("hostPath");
                assert_eq!(Path::new(&host_path.path), spec.base_dir.join(path));
            }
            VolumeSource::Secret(files) => {
                let name = theirs
                    .secret
                    .as_ref()
                    .and_then(|s| s.secret_name.clone())
                    .expect("secret");
                let secret = parsed
                    .secrets
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
                    .expect("the Secret object");
                assert_eq!(secret.string_data.as_ref(), Some(files));
            }
        }
    }
}

fn image_name(file: &Path) -> String {
    format!("registry.example/wasmpod-examples/{}:test", stem(file))
}

#[test]
fn every_example_exports_to_manifests_that_parse_back_with_every_field_mapped() {
    for example in examples() {
        let (text, _) = with_images(&example, &mut |file| image_name(file));
        let spec = PodSpec::from_toml(&text, &example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));

        let exported = kubernetes::export(&spec, &KubernetesOptions::default()).unwrap();
        let yaml = exported.to_yaml().unwrap();
        let parsed = parse(&yaml);
        assert_eq!(parsed.pods.len(), 1, "{}", example.display());
        let pod = &parsed.pods[0];
        assert_eq!(pod.metadata.name.as_deref(), Some(spec.name.as_str()));
        assert_eq!(
            pod.metadata.labels.as_ref().and_then(|l| l.get(NAME_LABEL)),
            Some(&spec.name)
        );
        assert_pod_spec(&spec, pod.spec.as_ref().unwrap(), "wasmtime", &parsed);
        for warning in &exported.warnings {
            let first = warning.lines().next().unwrap();
            assert!(yaml.contains(first), "warning not in the YAML comment: {warning}");
        }

        if spec.restart_policy != RestartPolicy::Always {
            continue;
        }
        let options = KubernetesOptions {
            deployment: true,
            runtime_class: "wasmtime-v2".into(),
        };
        let parsed = parse(&kubernetes::export(&spec, &options).unwrap().to_yaml().unwrap());
        assert!(parsed.pods.is_empty());
        let deployment = &parsed.deployments[0];
        let deployment_spec = deployment.spec.as_ref().unwrap();
        let template_labels = deployment_spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        assert_eq!(deployment_spec.selector.match_labels, template_labels);
        assert_pod_spec(
            &spec,
            deployment_spec.template.spec.as_ref().unwrap(),
            "wasmtime-v2",
            &parsed,
        );
        match spec.expose {
            Some(expose) => {
                let service = parsed.services[0].spec.as_ref().unwrap();
                assert_eq!(service.selector, template_labels);
                let port = &service.ports.as_ref().unwrap()[0];
                assert_eq!(port.port, i32::from(expose.port));
                assert_eq!(port.target_port, Some(IntOrString::Int(i32::from(expose.port))));
            }
            None => assert!(parsed.services.is_empty()),
        }
    }
}

#[test]
fn pushed_examples_export_images_that_pull_back_from_the_registry() {
    let Some(registry) = oci_registry::Registry::start("export_kubernetes::pushed_examples_export_images") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut pushed: BTreeMap<PathBuf, (String, Vec<u8>)> = BTreeMap::new();
    let mut images = BTreeSet::new();
    for example in examples() {
        let (text, _) = with_images(&example, &mut |file| {
            let file = file.canonicalize().unwrap();
            if let Some((image, _)) = pushed.get(&file) {
                return image.clone();
            }
            let image = format!("{}/wasmpod-examples/{}:test", registry.host(), stem(&file));
            let bytes = std::fs::read(&file).unwrap();
            let reference: Reference = image.parse().unwrap();
            runtime
                .block_on(ImageStore::push(&reference, bytes.clone().into()))
                .unwrap_or_else(|e| panic!("push {}: {e}", file.display()));
            pushed.insert(file, (image.clone(), bytes));
            image
        });
        let spec = PodSpec::from_toml(&text, &example).unwrap();
        let parsed = parse(
            &kubernetes::export(&spec, &KubernetesOptions::default())
                .unwrap()
                .to_yaml()
                .unwrap(),
        );
        let pod_spec = parsed.pods[0].spec.clone().unwrap();
        for container in pod_spec.init_containers.iter().flatten().chain(&pod_spec.containers) {
            images.insert(container.image.clone().unwrap());
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let store = ImageStore::new(cache.path());
    for image in &images {
        let pulled = runtime.block_on(store.pull(&image.parse().unwrap())).unwrap();
        let (_, bytes) = pushed.values().find(|(pushed, _)| pushed == image).unwrap();
        assert_eq!(pulled.layer, Digest::of(bytes), "{image}");
    }
    assert_eq!(images.len(), pushed.len());
}

// ---- the command line --------------------------------------------------------------------------

fn export_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .arg("export")
        .arg("kubernetes")
        .args(args)
        .output()
        .expect("run wasmpod")
}

#[test]
fn what_kubernetes_cannot_express_is_named_in_a_comment_and_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let host_dir = dir.path().join("site");
    std::fs::create_dir(&host_dir).unwrap();
    let spec = dir.path().join("wasmpod.toml");
    std::fs::write(
        &spec,
        r#"name = "shop"

[expose]
port = 8080

[[volumes]]
name = "site"
host_path = "./site"

[[volumes]]
name = "keys"
secret = { "api.key" = "s3cret" }

[[volumes]]
name = "scratch"
empty_dir = {}

[[init_containers]]
name = "migrate"
image = "ghcr.io/acme/migrate@sha256:0000000000000000000000000000000000000000000000000000000000000001"
args = ["up"]

[[containers]]
name = "web"
image = "ghcr.io/acme/web:1.2"
args = ["--root", "/site"]
env = { MODE = "prod" }
ports = [8080]
volume_mounts = [{ volume = "site", mount_path = "/site" }, { volume = "keys", mount_path = "/keys" }]
allowed_outbound_hosts = ["api.example.com:443"]
resources = { memory = "64MiB", cpu = 0.5 }
readiness_probe = { http_get = { port = 8080, path = "/ready" } }
liveness_probe = { health = {} }

[[containers]]
name = "cache"
image = "ghcr.io/acme/cache:1"
ports = [6379]
volume_mounts = [{ volume = "scratch", mount_path = "/data" }]
depends_on = [{ container = "web", condition = "ready" }]
startup_probe = { tcp_socket = { port = 6379 } }

[[faults]]
to = "cache:6379"
kind = "latency"
latency = "50ms"
"#,
    )
    .unwrap();
    let output = export_cli(&[
        spec.to_str().unwrap(),
        "--deployment",
        "--runtime-class",
        "wasmtime-spin",
    ]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stderr}");

    for (what, field) in [
        ("health probe", "`health = {}`"),
        ("egress", "allowed_outbound_hosts [api.example.com:443]"),
        ("start order", "depends_on \"web\""),
        ("faults", "[[faults]]"),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with("warning: ") && l.contains(field)),
            "{what} not warned on stderr:\n{stderr}"
        );
        assert!(
            stdout.lines().any(|l| l.starts_with('#') && l.contains(field)),
            "{what} not named in the YAML comment:\n{stdout}"
        );
    }

    let parsed = parse(&stdout);
    let deployment = parsed.deployments[0].spec.as_ref().unwrap();
    let pod = deployment.template.spec.as_ref().unwrap();
    assert_eq!(pod.runtime_class_name.as_deref(), Some("wasmtime-spin"));
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        init.image.as_deref(),
        Some("ghcr.io/acme/migrate@sha256:0000000000000000000000000000000000000000000000000000000000000001")
    );
    let web = &pod.containers[0];
    let limits = web.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "64Mi");
    assert_eq!(limits["cpu"].0, "500m");
    assert_eq!(
        web.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/ready")
    );
    assert!(web.liveness_probe.is_none());
    let cache = &pod.containers[1];
    assert_eq!(
        cache.startup_probe.as_ref().unwrap().tcp_socket.as_ref().unwrap().port,
        IntOrString::Int(6379)
    );
    let secret = &parsed.secrets[0];
    assert_eq!(secret.metadata.name.as_deref(), Some("shop-keys"));
    assert_eq!(secret.string_data.as_ref().unwrap()["api.key"], "s3cret");
    let keys = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "keys").unwrap();
    assert_eq!(keys.secret.as_ref().unwrap().secret_name.as_deref(), Some("shop-keys"));
    let site = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "site").unwrap();
    assert_eq!(Path::new(&site.host_path.as_ref().unwrap().path), host_dir);
    let service = parsed.services[0].spec.as_ref().unwrap();
    assert_eq!(service.ports.as_ref().unwrap()[0].port, 8080);

    // The whole spec is checked by the same types it would be checked by on a cluster.
    let spec = PodSpec::from_file(&spec).unwrap();
    assert_pod_spec(&spec, pod, "wasmtime-spin", &parsed);
}

#[test]
fn update_strategy_becomes_the_deployments_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("wasmpod.toml");
    let write = |web: &str, cache: &str| {
        std::fs::write(
            &spec,
            format!(
                "name = \"shop\"\n[[containers]]\nname = \"web\"\nimage = \"ghcr.io/acme/web:1\"\nports = [8080]\n{web}\n\
                 [[containers]]\nname = \"cache\"\nimage = \"ghcr.io/acme/cache:1\"\nports = [6379]\n{cache}\n"
            ),
        )
        .unwrap();
    };
    let export = |args: &[&str]| {
        let output = export_cli(&[&[spec.to_str().unwrap()], args].concat());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "{stderr}");
        (String::from_utf8(output.stdout).unwrap(), stderr)
    };
    let strategy = |stdout: &str| {
        parse(stdout).deployments[0]
            .spec
            .as_ref()
            .unwrap()
            .strategy
            .clone()
            .unwrap()
    };

    // Surge (the default): a rolling update that starts the new pod before the old one goes.
    write("", "");
    let (stdout, stderr) = export(&["--deployment"]);
    let rolling = strategy(&stdout);
    assert_eq!(rolling.type_.as_deref(), Some("RollingUpdate"));
    let rolling = rolling.rolling_update.unwrap();
    assert_eq!(
        (rolling.max_surge, rolling.max_unavailable),
        (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
    );
    assert!(!stderr.contains("update_strategy"), "{stderr}");

    // One container's recreate is the whole pod's, and the other container is named.
    write("", "update_strategy = \"recreate\"");
    let (stdout, stderr) = export(&["--deployment"]);
    assert_eq!(strategy(&stdout).type_.as_deref(), Some("Recreate"));
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains("\"cache\"") && l.contains("\"web\"")),
        "{stderr}"
    );

    // A bare Pod has no strategy: an explicit recreate is warned about.
    let (stdout, stderr) = export(&[]);
    assert!(parse(&stdout).deployments.is_empty());
    assert!(stderr.contains("no meaning for a bare Pod"), "{stderr}");
}

#[test]
fn a_local_component_is_an_error_that_says_to_push_it_first() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/wasmpod.toml");
    let output = export_cli(&[example.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no partial YAML");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("container \"prepare\" names the local component"),
        "{stderr}"
    );
    assert!(stderr.contains("wasmpod push FILE REGISTRY/REPO:TAG"), "{stderr}");
}

#[test]
fn a_deployment_needs_restart_policy_always() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("wasmpod.toml");
    std::fs::write(
        &spec,
        "name = \"job\"\nrestart_policy = \"never\"\n[[containers]]\nname = \"a\"\nimage = \"ghcr.io/acme/a:1\"\n",
    )
    .unwrap();
    let output = export_cli(&[spec.to_str().unwrap(), "--deployment"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("export a Pod"), "{stderr}");
    // Without --deployment the same spec is a Pod with restartPolicy Never.
    let output = export_cli(&[spec.to_str().unwrap()]);
    assert!(output.status.success());
    let parsed = parse(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(
        parsed.pods[0].spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Never")
    );
}
