//! `wasmpod apply -f SPEC` to a pod that a local `wasmpod run` runs: the spec goes to that
//! process through its control socket ([`wasmpod::control::Client::apply`]) and the pod swaps
//! what changed, as `run --watch` would.
//!
//! Which target an apply goes to: with `--host` or `$WASMPOD_HOST`, always the edge host. Without
//! either, a local `wasmpod run` of the spec's pod name when one runs (the output says so), else
//! the edge host's local socket as before. The spec's name is read with a plain TOML parse, so a
//! spec with other errors still reaches the pod, which reports them with their locations.

use std::path::Path;
use std::process::ExitCode;

use wasmpod::control::{self, Client};

/// Applies `spec` to the local `wasmpod run` of its pod if one runs and no host was named;
/// `None` when the apply is the edge host's.
pub fn apply_to_local_run(spec: &Path, host_given: bool) -> Option<ExitCode> {
    let host_in_env = std::env::var_os(wasmpod::host::client::HOST_ENV).is_some_and(|v| !v.is_empty());
    if host_given || host_in_env {
        return None;
    }
    let text = std::fs::read_to_string(spec).ok()?;
    let name = pod_name(&text)?;
    let client = Client::find(&control::runtime_dir(), Some(&name)).ok()?;
    let file = match std::path::absolute(spec) {
        Ok(file) => file,
        Err(e) => return Some(fail(format!("cannot resolve {}: {e}", spec.display()))),
    };
    println!(
        "pod {name}: applying to the running `wasmpod run` (its control socket; --host or WASMPOD_HOST for an edge host)"
    );
    Some(match client.apply(&file, &text) {
        Ok(applied) => {
            for updated in &applied.updated {
                println!(
                    "{}: updated ({} → {}) in {}ms",
                    updated.container,
                    short(&updated.from),
                    short(&updated.to),
                    updated.took_ms
                );
            }
            if applied.updated.is_empty() {
                println!("unchanged");
            } else if !applied.unchanged.is_empty() {
                println!("unchanged: {}", applied.unchanged.join(", "));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    })
}

/// The spec's top-level `name`, if it has one.
fn pod_name(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("name")?.as_str().map(str::to_string)
}

/// `sha256:` and the first 8 hex digits, as the pod's `updated` events print digests.
fn short(digest: &str) -> String {
    let shown: String = digest.chars().take("sha256:".len() + 8).collect();
    if shown.len() < digest.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("wasmpod: {}", wasmpod::logs::escape_control(&message.to_string()));
    ExitCode::FAILURE
}
