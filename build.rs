//! Builds the guest components in `guests/` for `wasm32-wasip2`, so that `cargo test` and
//! `cargo run -- run examples/...` work on a fresh checkout with no other set-up step.
//!
//! The guests are their own cargo workspace (their target is wasm, not the host), built with a
//! nested `cargo build` into `guests/target`, the way wasmtime's own test-programs are built.
//! When the `wasm32-wasip2` standard library is missing, this runs `rustup target add` first
//! (automatic toolchain installs are off on many machines). The guest directory is exported to
//! the crate as the `WASMPOD_GUESTS_DIR` compile-time variable. Nothing happens when `guests/`
//! is absent (a packaged crate) or `WASMPOD_SKIP_GUEST_BUILD` is set.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    println!("cargo:rerun-if-env-changed=WASMPOD_SKIP_GUEST_BUILD");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guests = manifest_dir.join("guests");
    let guest_manifest = guests.join("Cargo.toml");
    if !guest_manifest.exists() || std::env::var_os("WASMPOD_SKIP_GUEST_BUILD").is_some() {
        return;
    }
    watch_guest_sources(&guests);
    // Guests generate bindings from wasmpod's own WIT.
    println!("cargo:rerun-if-changed={}", manifest_dir.join("wit").display());
    ensure_guest_target_installed();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = guests.join("target");
    let mut build = Command::new(cargo);
    build
        .arg("build")
        .arg("--release")
        .arg("--workspace")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--manifest-path")
        .arg(&guest_manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers are for the host, not for wasm guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        build.env_remove(var);
    }
    let output = build
        .output()
        .unwrap_or_else(|e| panic!("could not run cargo to build the guests: {e}"));
    if !output.status.success() {
        panic!(
            "building the guest components in {} failed ({}):\n{}",
            guests.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let out = target_dir.join(GUEST_TARGET).join("release");
    println!("cargo:rustc-env=WASMPOD_GUESTS_DIR={}", out.display());
}

/// Re-runs this script when any guest source changes, but not when guest build output does.
fn watch_guest_sources(guests: &Path) {
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(file).display());
    }
    let Ok(entries) = std::fs::read_dir(guests) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && path.join("Cargo.toml").exists() {
            println!("cargo:rerun-if-changed={}", path.join("Cargo.toml").display());
            println!("cargo:rerun-if-changed={}", path.join("src").display());
            if path.join("wit").exists() {
                println!("cargo:rerun-if-changed={}", path.join("wit").display());
            }
        }
    }
}

/// Installs the guest target's standard library with rustup when the toolchain lacks it.
fn ensure_guest_target_installed() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = sysroot
        .as_ref()
        .is_some_and(|root| root.join("lib/rustlib").join(GUEST_TARGET).exists());
    if installed {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", GUEST_TARGET]).status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("`rustup target add {GUEST_TARGET}` failed ({status}); install the target by hand"),
        Err(e) => panic!(
            "the {GUEST_TARGET} target is missing and rustup could not be run ({e}); install the target for your toolchain"
        ),
    }
}
