//! Probes: startup, readiness and liveness checks of a running container, with Kubernetes'
//! timing (`initial_delay`, `period`, `timeout`) and thresholds.
//!
//! Checks run over the pod's own network ([`ProbeAction::TcpSocket`], [`ProbeAction::HttpGet`];
//! a port served by an http container is called in-process) or in-process
//! ([`ProbeAction::Health`], the component's `wasmpod:health/check` export). This module owns
//! the checks and the state machine that turns their results into "ready", "not ready" and
//! "restart it"; the supervisor (`crate::supervisor`) owns what happens then.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};

use crate::net::PodNetwork;
use crate::route::HttpPorts;
use crate::spec::{Probe, ProbeAction};

/// An in-process health check: calls the component's health export in a fresh instance.
pub type HealthCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What a probe needs to reach the container.
#[derive(Clone)]
pub struct ProbeTarget {
    pub network: Arc<PodNetwork>,
    pub http_ports: Arc<HttpPorts>,
    pub health: Option<HealthCheck>,
    /// During a surge, the container whose *new* version the probe checks: its connections go
    /// to the new version's listener, not to the one serving the port.
    pub new_version_of: Option<String>,
}

impl ProbeTarget {
    fn connect(&self, port: u16) -> Result<crate::net::PodStream, crate::net::NetError> {
        match &self.new_version_of {
            Some(container) => self.network.connect_new_version(container, port),
            None => self.network.connect(port),
        }
    }
}

/// Which probe failed, and how: the reason a container is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub probe: &'static str,
    pub message: String,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} probe failed: {}", self.probe, self.message)
    }
}

/// Runs one check once, bounded by the probe's timeout.
pub async fn check(action: &ProbeAction, target: &ProbeTarget, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, check_unbounded(action, target)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(timeout))),
    }
}

async fn check_unbounded(action: &ProbeAction, target: &ProbeTarget) -> Result<(), String> {
    match action {
        ProbeAction::TcpSocket { port } => target
            .connect(*port)
            .map(drop)
            .map_err(|e| format!("tcp connection to pod port {port}: {e}")),
        ProbeAction::HttpGet { port, path } => {
            let request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, format!("localhost:{port}"))
                .header(hyper::header::USER_AGENT, "wasmpod-probe")
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| format!("bad probe path {path:?}: {e}"))?;
            let status = match target.http_ports.get(*port) {
                Some(container) => container.handle(request).await.status(),
                None => {
                    let stream = target
                        .connect(*port)
                        .map_err(|e| format!("GET {path} on pod port {port}: {e}"))?;
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                            .await
                            .map_err(|e| format!("GET {path} on pod port {port}: {e}"))?;
                    let driver = tokio::spawn(connection);
                    let response = sender.send_request(request).await;
                    let status = response.map_err(|e| format!("GET {path} on pod port {port}: {e}"))?;
                    let status = {
                        let code = status.status();
                        // Read the body so the server is not left writing into a closed pipe.
                        let _ = status.into_body().collect().await;
                        code
                    };
                    driver.abort();
                    status
                }
            };
            if (200..400).contains(&status.as_u16()) {
                Ok(())
            } else {
                Err(format!("GET {path} on pod port {port} answered {status}"))
            }
        }
        ProbeAction::Health => match &target.health {
            Some(health) => health().await,
            None => Err("the component has no health check".into()),
        },
    }
}

/// Counts results in a row against a probe's thresholds.
#[derive(Debug)]
struct Thresholds {
    successes: u32,
    failures: u32,
}

/// What a run of results means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Passing,
    Failing,
    Undecided,
}

impl Thresholds {
    fn new() -> Thresholds {
        Thresholds {
            successes: 0,
            failures: 0,
        }
    }

    fn record(&mut self, probe: &Probe, passed: bool) -> Verdict {
        if passed {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= probe.success_threshold.max(1) {
                Verdict::Passing
            } else {
                Verdict::Undecided
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= probe.failure_threshold.max(1) {
                Verdict::Failing
            } else {
                Verdict::Undecided
            }
        }
    }
}

/// The probes of one container run.
pub struct Probes<'a> {
    pub startup: Option<&'a Probe>,
    pub readiness: Option<&'a Probe>,
    pub liveness: Option<&'a Probe>,
}

/// Probes a running container until a startup or liveness probe fails for good, which it
/// returns; it never returns otherwise (the run's end drops it). `set_ready` is called whenever
/// readiness changes: a container is ready once its startup probe passed (or it has none) and
/// then while its readiness probe passes (or it has none).
pub async fn watch(probes: Probes<'_>, target: &ProbeTarget, set_ready: impl Fn(bool, Option<String>)) -> ProbeFailure {
    if let Some(startup) = probes.startup {
        tokio::time::sleep(startup.initial_delay).await;
        let mut thresholds = Thresholds::new();
        loop {
            let result = check(&startup.action, target, startup.timeout).await;
            match thresholds.record(startup, result.is_ok()) {
                Verdict::Passing => break,
                Verdict::Failing => {
                    return ProbeFailure {
                        probe: "startup",
                        message: result.err().unwrap_or_default(),
                    };
                }
                Verdict::Undecided => tokio::time::sleep(startup.period).await,
            }
        }
    }
    if probes.readiness.is_none() {
        set_ready(true, None);
    }
    let readiness = async {
        let Some(readiness) = probes.readiness else {
            return std::future::pending().await;
        };
        tokio::time::sleep(readiness.initial_delay).await;
        let mut thresholds = Thresholds::new();
        let mut ready = false;
        loop {
            let result = check(&readiness.action, target, readiness.timeout).await;
            match thresholds.record(readiness, result.is_ok()) {
                Verdict::Passing if !ready => {
                    ready = true;
                    set_ready(true, None);
                }
                Verdict::Failing if ready || thresholds.failures == readiness.failure_threshold.max(1) => {
                    ready = false;
                    set_ready(false, result.err());
                }
                _ => {}
            }
            tokio::time::sleep(readiness.period).await;
        }
    };
    let liveness = async {
        let Some(liveness) = probes.liveness else {
            return std::future::pending().await;
        };
        tokio::time::sleep(liveness.initial_delay).await;
        let mut thresholds = Thresholds::new();
        loop {
            let result = check(&liveness.action, target, liveness.timeout).await;
            if thresholds.record(liveness, result.is_ok()) == Verdict::Failing {
                return ProbeFailure {
                    probe: "liveness",
                    message: result.err().unwrap_or_default(),
                };
            }
            tokio::time::sleep(liveness.period).await;
        }
    };
    tokio::select! {
        failure = liveness => failure,
        never = readiness => never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_runs_in_a_row() {
        let mut probe = Probe::new(ProbeAction::TcpSocket { port: 1 });
        probe.failure_threshold = 3;
        probe.success_threshold = 2;
        let mut t = Thresholds::new();
        assert_eq!(t.record(&probe, false), Verdict::Undecided);
        assert_eq!(t.record(&probe, false), Verdict::Undecided);
        assert_eq!(
            t.record(&probe, true),
            Verdict::Undecided,
            "a success resets the failures"
        );
        assert_eq!(t.record(&probe, false), Verdict::Undecided);
        assert_eq!(t.record(&probe, false), Verdict::Undecided);
        assert_eq!(t.record(&probe, false), Verdict::Failing);
        assert_eq!(t.record(&probe, true), Verdict::Undecided);
        assert_eq!(t.record(&probe, true), Verdict::Passing);
    }
}
