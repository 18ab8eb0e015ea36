//! Turning a pod spec into another system's manifests. Today one target: Kubernetes with
//! runwasi's wasmtime shim ([`kubernetes`]). What a target cannot express is reported, never
//! dropped silently.

pub mod kubernetes;
