//! What a pod and its containers are doing, as data: phases, container states, how a run ended
//! ([`Exit`]), and the pod's event log.
//!
//! Lifecycles are enums with explicit transitions (Kubernetes' vocabulary: a pod is Pending,
//! Initializing, Running, then Succeeded, Failed or Stopped; a container is Waiting, Running or
//! Terminated). The pod's state (`pod::state`) writes these, one transition at a time; the library API and the CLI read
//! them. Events are kept in a bounded log and can be followed: by one channel
//! ([`Events::follow`], the CLI that runs the pod) or by any number of cursors ([`Events::tail`],
//! `wasmpod events --follow`) that never hold the supervisor up.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

/// The pod's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPhase {
    /// Compiling components and preparing volumes.
    Pending,
    /// Running init containers, one after another.
    Initializing,
    /// The app containers are running (or backing off before a restart).
    Running,
    /// No container can run any more and every last exit was a success.
    Succeeded,
    /// No container can run any more and some last exit was a failure; the reason says which.
    Failed { reason: String },
    /// Stopped on request (Ctrl-C, SIGTERM, [`crate::Pod::stop`]).
    Stopped,
}

impl PodPhase {
    /// Whether the pod has ended for good.
    pub fn is_terminal(&self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed { .. } | PodPhase::Stopped)
    }
}

impl fmt::Display for PodPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodPhase::Pending => f.write_str("Pending"),
            PodPhase::Initializing => f.write_str("Initializing"),
            PodPhase::Running => f.write_str("Running"),
            PodPhase::Succeeded => f.write_str("Succeeded"),
            PodPhase::Failed { reason } => write!(f, "Failed: {reason}"),
            PodPhase::Stopped => f.write_str("Stopped"),
        }
    }
}

/// How one run of a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `main` returned or the guest called `exit`; 0 is success.
    Code(i32),
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, ...).
    Trapped(String),
    /// It trapped after its memory limit refused to grow its memory (Kubernetes' `OOMKilled`).
    OutOfMemory { limit: u64, trap: String },
    /// The host could not start it (instantiation or a mount failed).
    Failed(String),
    /// The pod stopped it.
    Stopped,
    /// Restarted on request ([`crate::Pod::restart`]).
    Restarted,
    /// Cancelled by the pod because a startup or liveness probe failed.
    Killed(String),
}

impl Exit {
    /// Whether the run counts as a success for restart policies and the pod's outcome.
    pub fn is_success(&self) -> bool {
        matches!(self, Exit::Code(0) | Exit::Stopped | Exit::Restarted)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Trapped(message) => write!(f, "trapped: {message}"),
            Exit::OutOfMemory { limit, trap } => {
                write!(
                    f,
                    "OOMKilled: memory limit of {} reached ({trap})",
                    crate::resources::format_bytes(*limit)
                )
            }
            Exit::Failed(message) => write!(f, "failed to start: {message}"),
            Exit::Stopped => write!(f, "stopped"),
            Exit::Restarted => write!(f, "restarted on request"),
            Exit::Killed(reason) => write!(f, "killed: {reason}"),
        }
    }
}

/// Why a container is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingReason {
    /// The pod has not started it yet (compiling, or init containers still running).
    PodInitializing,
    /// Waiting out the restart back-off after an exit.
    BackOff { delay: Duration },
    /// An init container failed, so this one never starts.
    InitFailed { init_container: String },
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: WaitingReason },
    Running { started_at: SystemTime },
    Terminated { exit: Exit, finished_at: SystemTime },
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerState::Waiting {
                reason: WaitingReason::PodInitializing,
            } => f.write_str("Waiting (PodInitializing)"),
            ContainerState::Waiting {
                reason: WaitingReason::BackOff { delay },
            } => {
                write!(f, "Waiting (BackOff {})", humantime::format_duration(*delay))
            }
            ContainerState::Waiting {
                reason: WaitingReason::InitFailed { init_container },
            } => {
                write!(f, "Waiting (init container {init_container} failed)")
            }
            ContainerState::Running { .. } => f.write_str("Running"),
            ContainerState::Terminated { exit, .. } => write!(f, "Terminated ({exit})"),
        }
    }
}

/// One container's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub name: String,
    /// An init container (runs to completion before the app containers).
    pub init: bool,
    pub state: ContainerState,
    /// How many times it was restarted.
    pub restart_count: u32,
    /// Running, past its startup probe, and passing its readiness probe (if it has them).
    pub ready: bool,
    /// How its most recent run ended.
    pub last_exit: Option<Exit>,
}

/// A snapshot of the whole pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatus {
    pub name: String,
    pub phase: PodPhase,
    /// Init containers first, in spec order.
    pub containers: Vec<ContainerStatus>,
}

impl PodStatus {
    /// The status of one container.
    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// Something that happened in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    /// The container it concerns, if any.
    pub container: Option<String>,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Compiling,
    /// A container's `image` resolved to a digest, from the image cache or the registry.
    ImageResolved {
        image: String,
        digest: String,
        cached: bool,
    },
    Compiled {
        cached: bool,
        took: Duration,
    },
    VolumeReady {
        volume: String,
        host_dir: String,
    },
    /// The front proxy forwards `host_addr` to the pod port.
    Exposed {
        pod_port: u16,
        host_addr: std::net::SocketAddr,
    },
    Started,
    Exited {
        exit: Exit,
    },
    BackOff {
        delay: Duration,
    },
    Restarting {
        restart_count: u32,
    },
    /// Its startup probe passed (or it has none) and its readiness probe passes.
    Ready,
    /// Its readiness probe fails.
    NotReady {
        message: String,
    },
    /// A startup or liveness probe failed for good.
    Unhealthy {
        message: String,
    },
    /// A connection, lookup or outgoing HTTP request outside the pod that
    /// `allowed_outbound_hosts` does not allow: one kind of event for every path out.
    EgressDenied {
        kind: crate::egress::DeniedKind,
        destination: String,
    },
    PodRunning,
    PodSucceeded,
    PodFailed {
        reason: String,
    },
    Stopping,
    PodStopped,
    Warning {
        message: String,
    },
    /// An http container's request trapped; the client got a 500.
    RequestTrapped {
        message: String,
    },
    /// An http container's request ran past the request timeout and was cut.
    RequestTimedOut {
        after: Duration,
    },
    /// An http container's request failed in the host (instantiation, no response, ...).
    RequestFailed {
        message: String,
    },
    /// Which compiled code serves the container's new instances (tiered compilation: baseline
    /// code first, optimized code once compiled in the background), or why it stays on one tier.
    Tier {
        notice: crate::engine::TierNotice,
    },
    /// A network fault was injected (`[[faults]]`, `wasmpod fault add`, tests).
    FaultAdded {
        id: u64,
        fault: String,
    },
    /// An injected fault was removed.
    FaultRemoved {
        id: u64,
        fault: String,
    },
    /// An injected fault acted on a link for the first time.
    FaultTriggered {
        id: u64,
        link: String,
    },
    /// The container was swapped to a new version by an update ([`crate::Pod::update`]):
    /// the digests (`sha256:<hex>`) of the old and new component, and the time from the update
    /// call to the new version serving.
    Updated {
        from: String,
        to: String,
        took: Duration,
    },
    /// A new version did not take over (it failed to start, was not ready in time, or the
    /// container ended first); the old version serves on.
    UpdateFailed {
        message: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(container) = &self.container {
            write!(f, "{container}: ")?;
        }
        match &self.kind {
            EventKind::Compiling => f.write_str("compiling"),
            EventKind::ImageResolved { image, digest, cached } => {
                let from = if *cached { "the image cache" } else { "the registry" };
                write!(f, "image {image} is {digest} (from {from})")
            }
            EventKind::Updated { from, to, took } => {
                write!(
                    f,
                    "updated ({} → {}) in {took:.0?}",
                    short_digest(from),
                    short_digest(to)
                )
            }
            EventKind::UpdateFailed { message } => write!(f, "update failed, the old version serves on: {message}"),
            EventKind::Compiled { cached: true, took } => {
                write!(f, "loaded compiled component from cache in {took:.0?}")
            }
            EventKind::Compiled { cached: false, took } => write!(f, "compiled in {took:.1?}"),
            EventKind::VolumeReady { volume, host_dir } => write!(f, "volume {volume} at {host_dir}"),
            EventKind::Exposed { pod_port, host_addr } => {
                write!(
                    f,
                    "port {pod_port} exposed at {host_addr} (for HTTP: http://{host_addr}/)"
                )
            }
            EventKind::Started => f.write_str("started"),
            EventKind::Exited { exit } => write!(f, "{exit}"),
            EventKind::BackOff { delay } => write!(f, "restarting in {}", humantime::format_duration(*delay)),
            EventKind::Restarting { restart_count } => write!(f, "restarting (restart {restart_count})"),
            EventKind::Ready => f.write_str("ready"),
            EventKind::NotReady { message } => write!(f, "not ready: {message}"),
            EventKind::Unhealthy { message } => write!(f, "unhealthy: {message}"),
            EventKind::EgressDenied { kind, destination } => {
                write!(
                    f,
                    "denied {} to {destination} (not in allowed_outbound_hosts)",
                    kind.as_str()
                )
            }
            EventKind::PodRunning => f.write_str("pod running"),
            EventKind::PodSucceeded => f.write_str("pod succeeded"),
            EventKind::PodFailed { reason } => write!(f, "pod failed: {reason}"),
            EventKind::Stopping => f.write_str("stopping"),
            EventKind::PodStopped => f.write_str("pod stopped"),
            EventKind::Warning { message } => write!(f, "warning: {message}"),
            EventKind::RequestTrapped { message } => write!(f, "request trapped: {message}"),
            EventKind::RequestTimedOut { after } => {
                write!(
                    f,
                    "request cut after {} (request timeout)",
                    humantime::format_duration(*after)
                )
            }
            EventKind::RequestFailed { message } => write!(f, "request failed: {message}"),
            EventKind::Tier { notice } => write!(f, "{notice}"),
            EventKind::FaultAdded { id, fault } => write!(f, "fault {id} added: {fault}"),
            EventKind::FaultRemoved { id, fault } => write!(f, "fault {id} removed: {fault}"),
            EventKind::FaultTriggered { id, link } => write!(f, "fault {id} triggered on {link}"),
        }
    }
}

/// Events kept per pod by default.
pub const DEFAULT_EVENT_CAPACITY: usize = 1000;
const FOLLOW_QUEUE: usize = 256;

/// The pod's bounded event log.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<EventsInner>>,
}

struct EventsInner {
    capacity: usize,
    log: VecDeque<Event>,
    /// How many events were ever recorded (the next one's sequence number), so an
    /// [`EventTail`] finds its place in the log after older events were dropped.
    recorded: u64,
    follower: Option<mpsc::Sender<Event>>,
    /// Bumped after every event to wake tails; holds no events, so it never queues.
    changed: watch::Sender<()>,
}

impl Events {
    pub fn new(capacity: usize) -> Events {
        Events {
            inner: Arc::new(Mutex::new(EventsInner {
                capacity: capacity.max(1),
                log: VecDeque::new(),
                recorded: 0,
                follower: None,
                changed: watch::Sender::new(()),
            })),
        }
    }

    /// Records an event about a container (`None`: about the pod).
    pub fn emit(&self, container: Option<&str>, kind: EventKind) {
        let event = Event {
            at: SystemTime::now(),
            container: container.map(str::to_owned),
            kind,
        };
        let mut inner = self.lock();
        if inner.log.len() == inner.capacity {
            inner.log.pop_front();
        }
        inner.log.push_back(event.clone());
        inner.recorded += 1;
        if let Some(follower) = &inner.follower {
            // Events are few; a follower that falls a whole queue behind misses some, the log
            // keeps them. The supervisor never waits on a reader.
            let _ = follower.try_send(event);
        }
        inner.changed.send_replace(());
    }

    /// Every event recorded so far (the most recent `capacity`), oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.lock().log.iter().cloned().collect()
    }

    /// Every event from now on. Replaces an earlier follower.
    pub fn follow(&self) -> mpsc::Receiver<Event> {
        let (sender, receiver) = mpsc::channel(FOLLOW_QUEUE);
        self.lock().follower = Some(sender);
        receiver
    }

    /// A cursor that any number of callers may hold: it first yields the last `last` events
    /// (`None`: the whole log), then every new one.
    pub fn tail(&self, last: Option<usize>) -> EventTail {
        let inner = self.lock();
        let kept = inner.log.len() as u64;
        let next = inner.recorded - last.map_or(kept, |last| (last as u64).min(kept));
        // Subscribed under the lock that `emit` holds while it bumps, so no event slips past.
        EventTail {
            events: self.clone(),
            next,
            changed: inner.changed.subscribe(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EventsInner> {
        crate::sync::lock(&self.inner)
    }
}

/// A cursor into the pod's event log, from [`Events::tail`].
pub struct EventTail {
    events: Events,
    /// The sequence number of the next event to hand out.
    next: u64,
    changed: watch::Receiver<()>,
}

impl EventTail {
    /// The events recorded since the last read, without waiting, and how many left the log
    /// before this reader got to them.
    pub fn read(&mut self) -> (Vec<Event>, u64) {
        let inner = self.events.lock();
        let first = inner.recorded - inner.log.len() as u64;
        let missed = first.saturating_sub(self.next);
        let skip = self.next.saturating_sub(first) as usize;
        let events = inner.log.iter().skip(skip).cloned().collect();
        self.next = inner.recorded;
        (events, missed)
    }

    /// Waits for at least one new (or missed) event; forever if none comes, so callers race it
    /// against their own end.
    pub async fn next(&mut self) -> (Vec<Event>, u64) {
        loop {
            let (events, missed) = self.read();
            if !events.is_empty() || missed > 0 {
                return (events, missed);
            }
            // It cannot fail: `self.events` keeps the sender alive.
            if self.changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// `sha256:ab12cd34…`: enough of a digest to tell versions apart in a line.
fn short_digest(digest: &str) -> String {
    let shown: String = digest.chars().take("sha256:".len() + 8).collect();
    if shown.len() < digest.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn event_tails_read_the_last_events_then_new_ones_and_count_what_they_missed() {
        let events = Events::new(2);
        events.emit(Some("app"), EventKind::Started);
        events.emit(Some("app"), EventKind::Stopping);
        let mut last = events.tail(Some(1));
        let mut slow = events.tail(None);
        assert_eq!(
            last.read().0.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(),
            vec![EventKind::Stopping]
        );
        let waiting = tokio::spawn(async move { last.next().await });
        events.emit(None, EventKind::PodStopped);
        let (new, missed) = waiting.await.unwrap();
        assert_eq!((new.len(), missed), (1, 0));
        assert_eq!(new[0].kind, EventKind::PodStopped);
        let (kept, missed) = slow.next().await;
        assert_eq!(
            (kept.len(), missed),
            (2, 1),
            "the log holds two; the first of three was dropped"
        );
    }
}
