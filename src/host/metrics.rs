//! `GET /metrics`: the host's pods and containers in the Prometheus text format (0.0.4).
//!
//! It owns the metric names and labels. What it reports is what every pod's status already
//! holds: the pod's phase, and per container its state, readiness and restarts. Labels are pod
//! and container names, which are DNS labels, so they need no escaping. Resource and traffic
//! counters (memory, CPU, http requests, network bytes, egress denials) are not collected yet.

use std::fmt::Write;

use super::Host;
use crate::status::{ContainerState, PodPhase};

/// The exposition text.
pub fn render(host: &Host) -> String {
    let pods = host.pods();
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    family(&mut out, "wasmpod_pods", "gauge", "Pods the host runs.");
    let _ = writeln!(out, "wasmpod_pods {}", pods.len());

    let statuses: Vec<_> = pods.iter().map(|pod| pod.status()).collect();
    family(
        &mut out,
        "wasmpod_pod_phase",
        "gauge",
        "The pod's phase: 1 for the current one.",
    );
    for status in &statuses {
        let current = phase_name(&status.phase);
        for phase in PHASES {
            let value = u8::from(phase == current);
            let _ = writeln!(
                out,
                "wasmpod_pod_phase{{pod=\"{}\",phase=\"{phase}\"}} {value}",
                status.name
            );
        }
    }
    family(
        &mut out,
        "wasmpod_container_state",
        "gauge",
        "The container's state: 1 for the current one.",
    );
    for status in &statuses {
        for container in &status.containers {
            let current = match container.state {
                ContainerState::Waiting { .. } => "waiting",
                ContainerState::Running { .. } => "running",
                ContainerState::Terminated { .. } => "terminated",
            };
            for state in ["waiting", "running", "terminated"] {
                let value = u8::from(state == current);
                let _ = writeln!(
                    out,
                    "wasmpod_container_state{{pod=\"{}\",container=\"{}\",state=\"{state}\"}} {value}",
                    status.name, container.name
                );
            }
        }
    }
    family(
        &mut out,
        "wasmpod_container_ready",
        "gauge",
        "1 when the container is ready (past its startup probe, passing its readiness probe).",
    );
    for status in &statuses {
        for container in &status.containers {
            let _ = writeln!(
                out,
                "wasmpod_container_ready{{pod=\"{}\",container=\"{}\"}} {}",
                status.name,
                container.name,
                u8::from(container.ready)
            );
        }
    }
    family(
        &mut out,
        "wasmpod_container_restarts_total",
        "counter",
        "Restarts of the container since its pod started.",
    );
    for status in &statuses {
        for container in &status.containers {
            let _ = writeln!(
                out,
                "wasmpod_container_restarts_total{{pod=\"{}\",container=\"{}\"}} {}",
                status.name, container.name, container.restart_count
            );
        }
    }
    out
}

const PHASES: [&str; 6] = ["pending", "initializing", "running", "succeeded", "failed", "stopped"];

fn phase_name(phase: &PodPhase) -> &'static str {
    match phase {
        PodPhase::Pending => "pending",
        PodPhase::Initializing => "initializing",
        PodPhase::Running => "running",
        PodPhase::Succeeded => "succeeded",
        PodPhase::Failed { .. } => "failed",
        PodPhase::Stopped => "stopped",
    }
}
