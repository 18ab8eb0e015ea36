//! `wasmpod push`, `wasmpod pull` and `wasmpod export kubernetes`: the command line over
//! [`wasmpod::oci`] and [`wasmpod::export`]. Results go to stdout (a digest, YAML), everything
//! for people to stderr, so the output can be piped to `kubectl apply -f -`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wasmpod::engine::Engine;
use wasmpod::export::kubernetes::{self, KubernetesOptions};
use wasmpod::oci::{ImageStore, Reference};
use wasmpod::spec::PodSpec;

/// What `wasmpod export` writes.
#[derive(clap::Subcommand)]
pub enum ExportTarget {
    /// Print Kubernetes manifests (for runwasi's wasmtime shim) for the pod: a Pod, or a
    /// Deployment and a Service; every container must name an `image`.
    Kubernetes {
        #[arg(default_value = "wasmpod.toml")]
        spec: PathBuf,
        /// A Deployment (and a Service for the exposed port) instead of a bare Pod.
        #[arg(long)]
        deployment: bool,
        /// The RuntimeClass that runs WebAssembly on the cluster.
        #[arg(long, value_name = "NAME", default_value = kubernetes::DEFAULT_RUNTIME_CLASS)]
        runtime_class: String,
    },
}

use super::async_runtime;

fn parse_reference(text: &str) -> Result<Reference, ExitCode> {
    text.parse().map_err(|message| {
        eprintln!("wasmpod: {message}");
        ExitCode::FAILURE
    })
}

/// `wasmpod push FILE REF`: validates the component (by compiling it), pushes it, prints the
/// manifest digest.
pub fn push(file: &Path, reference: &str) -> ExitCode {
    let reference = match parse_reference(reference) {
        Ok(reference) => reference,
        Err(code) => return code,
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("wasmpod: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let what = file.display().to_string();
    let valid = Engine::shared()
        .map_err(|e| e.to_string())
        .and_then(|engine| wasmpod::oci::validate_component(&engine, &bytes, &what).map_err(|e| e.to_string()));
    if let Err(message) = valid {
        eprintln!("wasmpod: {message}");
        return ExitCode::FAILURE;
    }
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(ImageStore::push(&reference, bytes.into())) {
        Ok(digest) => {
            eprintln!("pushed {} as {}@{digest}", file.display(), reference.name());
            println!("{digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasmpod: push to {reference}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `wasmpod pull REF`: asks the registry (even when cached), verifies, fills the cache and
/// prints the manifest digest.
pub fn pull(reference: &str) -> ExitCode {
    let reference = match parse_reference(reference) {
        Ok(reference) => reference,
        Err(code) => return code,
    };
    let store = match ImageStore::default_store() {
        Ok(store) => store,
        Err(e) => {
            eprintln!("wasmpod: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match async_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(store.pull(&reference)) {
        Ok(pulled) => {
            eprintln!(
                "pulled {reference} (component {}) into {}",
                pulled.layer,
                pulled.path.display()
            );
            println!("{}", pulled.manifest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasmpod: pull {reference}: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn export(target: ExportTarget) -> ExitCode {
    let ExportTarget::Kubernetes {
        spec,
        deployment,
        runtime_class,
    } = target;
    let spec = match PodSpec::from_file(&spec) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let options = KubernetesOptions {
        deployment,
        runtime_class,
    };
    let exported = match kubernetes::export(&spec, &options) {
        Ok(exported) => exported,
        Err(e) => {
            eprintln!("wasmpod: {e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in &exported.warnings {
        eprintln!("warning: {warning}");
    }
    match exported.to_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasmpod: {e}");
            ExitCode::FAILURE
        }
    }
}
