//! Components from an OCI registry, against a real registry (`docker-registry` on 127.0.0.1):
//! push a guest, run a pod from its `image`, start it again from the cache with the registry
//! stopped, refuse tampered blobs (in the registry and in the cache), refuse to push what is not
//! a component; and the `image` field's spec errors.

mod oci_registry;

use std::path::Path;
use std::process::{Command, Output};

use oci_registry::{Registry, guest};
use wasmpod::oci::{Digest, ImageStore, OciError, Reference};
use wasmpod::spec::{ComponentSource, PodSpec};

fn wasmpod(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmpod"))
        .args(args)
        .env("WASMPOD_CACHE_DIR", cache)
        // No login of the machine's user may leak into the test.
        .env("DOCKER_CONFIG", cache.join("no-docker-config"))
        .output()
        .expect("run wasmpod")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn push_guest(registry: &Registry, name: &str, reference: &str) -> (Reference, Digest, Vec<u8>) {
    let reference: Reference = format!("{}/{reference}", registry.host()).parse().unwrap();
    let bytes = std::fs::read(guest(name)).unwrap();
    let digest = runtime()
        .block_on(ImageStore::push(&reference, bytes.clone().into()))
        .unwrap_or_else(|e| panic!("push: {e}; registry log: {}", registry.log()));
    (reference, digest, bytes)
}

#[test]
fn a_pushed_guest_runs_from_its_image_then_from_the_cache_with_the_registry_stopped() {
    let Some(mut registry) = Registry::start("registry::a_pushed_guest_runs_from_its_image") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let reference = format!("{}/demo/toolbox:v1", registry.host());

    let pushed = wasmpod(&cache, &["push", guest("toolbox").to_str().unwrap(), &reference]);
    assert!(pushed.status.success(), "push: {}", text(&pushed));
    let digest = String::from_utf8_lossy(&pushed.stdout).trim().to_string();
    digest
        .parse::<Digest>()
        .unwrap_or_else(|e| panic!("push printed {digest:?}: {e}"));

    let spec = dir.path().join("wasmpod.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"from-image\"\nrestart_policy = \"never\"\n\n[[containers]]\nname = \"hello\"\n\
             image = \"{reference}\"\nargs = [\"print\", \"hello from an image\"]\n"
        ),
    )
    .unwrap();
    let spec = spec.to_str().unwrap();

    let first = wasmpod(&cache, &["run", "--no-color", spec]);
    let first_text = text(&first);
    assert!(first.status.success(), "first run: {first_text}");
    assert!(first_text.contains("hello from an image"), "{first_text}");
    assert!(
        first_text.contains(&format!("image {reference} is {digest} (from the registry)")),
        "{first_text}"
    );

    // No network on the second start: the registry is gone.
    registry.stop();
    assert!(!registry.answers());
    let second = wasmpod(&cache, &["run", "--no-color", spec]);
    let second_text = text(&second);
    assert!(second.status.success(), "second run: {second_text}");
    assert!(second_text.contains("hello from an image"), "{second_text}");
    assert!(
        second_text.contains(&format!("image {reference} is {digest} (from the image cache)")),
        "{second_text}"
    );

    // `pull` always asks the registry, so now it fails, and says which registry.
    let pull = wasmpod(&cache, &["pull", &reference]);
    assert!(!pull.status.success());
    assert!(text(&pull).contains("cannot reach registry"), "{}", text(&pull));
}

#[test]
fn a_tampered_blob_in_the_registry_is_refused_and_nothing_is_cached() {
    let Some(registry) = Registry::start("registry::a_tampered_blob_in_the_registry_is_refused") else {
        return;
    };
    let (reference, _, bytes) = push_guest(&registry, "healthy", "demo/healthy:v1");
    let layer = Digest::of(&bytes);
    let stored = registry.blob_file(layer.as_str());
    let mut tampered = std::fs::read(&stored).unwrap();
    assert_eq!(tampered, bytes, "the registry stores the component as pushed");
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&stored, &tampered).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let store = ImageStore::new(cache.path());
    let error = runtime().block_on(store.pull(&reference)).unwrap_err();
    match &error {
        OciError::DigestMismatch { what, expected, .. } => {
            assert_eq!(what, "the component");
            assert_eq!(expected, layer.as_str());
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(error.to_string().contains("refusing it"), "{error}");
    assert!(
        !cache.path().join("blobs/sha256").join(layer.hex()).exists(),
        "a refused blob must not be cached"
    );
}

#[test]
fn a_pull_by_digest_verifies_the_manifest_and_a_changed_cache_file_is_fetched_again() {
    let Some(mut registry) = Registry::start("registry::a_pull_by_digest_verifies_the_manifest") else {
        return;
    };
    let (tagged, manifest, bytes) = push_guest(&registry, "healthy", "demo/pinned:v1");
    let pinned: Reference = format!("{}@{manifest}", tagged.name()).parse().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = ImageStore::new(cache.path());
    let rt = runtime();

    let pulled = rt.block_on(store.pull(&pinned)).unwrap();
    assert_eq!(pulled.manifest, manifest);
    assert_eq!(pulled.layer, Digest::of(&bytes));
    assert_eq!(std::fs::read(&pulled.path).unwrap(), bytes);
    assert!(!pulled.from_cache);

    // The tag resolves from the cache too (the pull remembered both names).
    let again = rt.block_on(store.resolve(&pinned)).unwrap();
    assert!(again.from_cache);

    // A digest the registry does not have is an error, not a fallback to the tag.
    let other: Reference = format!("{}@sha256:{}", tagged.name(), "0".repeat(64)).parse().unwrap();
    assert!(rt.block_on(store.pull(&other)).is_err());

    // A cached component changed on disk is never handed out: with the registry stopped the
    // resolution fails instead of running the changed bytes.
    std::fs::write(&pulled.path, b"\0asm\x0d\x00\x01\x00 changed").unwrap();
    registry.stop();
    let error = rt.block_on(store.resolve(&pinned)).unwrap_err();
    assert!(matches!(error, OciError::Unreachable { .. }), "{error}");
    assert!(!pulled.path.exists(), "the changed file was removed");
}

#[test]
fn push_refuses_what_is_not_a_component_before_any_upload() {
    let Some(registry) = Registry::start("registry::push_refuses_what_is_not_a_component") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\x00\x00\x00").unwrap();
    let broken_component = dir.path().join("broken.wasm");
    std::fs::write(&broken_component, b"\0asm\x0d\x00\x01\x00\xff\xff").unwrap();

    for (file, expected) in [
        (&not_wasm, "is not WebAssembly"),
        (&core_module, "core WebAssembly module"),
        (&broken_component, "not a valid WASI 0.2 component"),
    ] {
        let reference = format!("{}/demo/refused:v1", registry.host());
        let output = wasmpod(&cache, &["push", file.to_str().unwrap(), &reference]);
        assert!(!output.status.success());
        let output = text(&output);
        assert!(output.contains("refusing to push"), "{output}");
        assert!(output.contains(expected), "{output}");
    }
    let (status, catalog) = registry.get("/v2/_catalog").unwrap();
    assert_eq!(status, 200);
    assert!(
        catalog.contains("\"repositories\":[]"),
        "nothing was uploaded: {catalog}"
    );
}

#[test]
fn an_image_that_is_not_a_wasm_artifact_is_refused() {
    let Some(registry) = Registry::start("registry::an_image_that_is_not_a_wasm_artifact") else {
        return;
    };
    // A manifest whose config says "container image": pushed by hand with the registry's API.
    let reference: Reference = format!("{}/demo/container:v1", registry.host()).parse().unwrap();
    // The registry wants every blob a manifest names: `{}` goes up as some artifact's layer.
    let base: Reference = format!("{}/demo/container:base", registry.host()).parse().unwrap();
    runtime()
        .block_on(ImageStore::push(&base, bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = ImageStore::new(cache.path());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}"#,
        Digest::of(b"{}")
    );
    let status = put_manifest(&registry, "demo/container", "v1", &manifest);
    assert_eq!(status, 201, "registry log: {}", registry.log());
    let error = runtime().block_on(store.pull(&reference)).unwrap_err();
    assert!(matches!(error, OciError::NotWasm { .. }), "{error}");
}

/// PUT a manifest with a raw HTTP request; returns the status.
fn put_manifest(registry: &Registry, repository: &str, tag: &str, manifest: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(registry.addr).unwrap();
    let request = format!(
        "PUT /v2/{repository}/manifests/{tag} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{manifest}",
        registry.addr,
        manifest.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

// ---- the `image` field -------------------------------------------------------------------------

fn spec_error(text: &str) -> String {
    match PodSpec::from_toml(text, Path::new("/tmp/wasmpod.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn image_is_a_component_source_and_exactly_one_source_is_required() {
    let spec = PodSpec::from_toml(
        "name = \"p\"\n[[containers]]\nname = \"a\"\nimage = \"ghcr.io/acme/app:1.0\"\n",
        Path::new("/tmp/wasmpod.toml"),
    )
    .unwrap();
    assert_eq!(
        spec.containers[0].component,
        ComponentSource::Image("ghcr.io/acme/app:1.0".parse().unwrap())
    );

    let both = spec_error(
        "name = \"p\"\n[[containers]]\nname = \"a\"\ncomponent = \"a.wasm\"\nimage = \"ghcr.io/acme/app:1.0\"\n",
    );
    assert!(both.contains("wasmpod.toml:5:"), "located at `image`: {both}");
    assert!(both.contains("not both"), "{both}");

    let neither = spec_error("name = \"p\"\n[[containers]]\nname = \"a\"\n");
    assert!(neither.contains("wasmpod.toml:3:"), "located at the name: {neither}");
    assert!(neither.contains("has no component"), "{neither}");

    let bad = spec_error("name = \"p\"\n[[containers]]\nname = \"a\"\nimage = \"app:latest\"\n");
    assert!(bad.contains("wasmpod.toml:4:"), "{bad}");
    assert!(bad.contains("REGISTRY/REPO:TAG"), "{bad}");
}
