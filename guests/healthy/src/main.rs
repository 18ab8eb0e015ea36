//! `healthy`: a command component that also exports `wasmpod:health/check` (see `wit/`).
//!
//! `main` prints `serving` and then waits for its stdin to close (how wasmpod asks a container
//! to stop), printing `stopping` before it exits. The health check, called by wasmpod in a fresh
//! instance, passes while the file `/state/healthy` exists and fails with a message otherwise, so
//! a test (or a person) flips the container's health by creating or removing that file.

use std::io::Read;

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmpod:health/healthy",
});

struct Health;

impl exports::wasmpod::health::check::Guest for Health {
    fn check() -> Result<(), String> {
        match std::fs::metadata("/state/healthy") {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("/state/healthy: {e}")),
        }
    }
}

export!(Health);

fn main() {
    println!("serving");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    println!("stopping");
}
