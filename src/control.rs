//! The control endpoint of a running pod: while `wasmpod run` runs, it answers `wasmpod ps`,
//! `wasmpod logs` and `wasmpod events` from other terminals over a Unix domain socket (never a
//! network port), the way `docker compose ps/logs` and `kubectl get events` ask a running app.
//!
//! Where: the per-user private runtime directory ([`crate::runtime_dir`]: `$WASMPOD_RUNTIME_DIR`,
//! else `$XDG_RUNTIME_DIR/wasmpod`, else `/tmp/wasmpod-$UID`; made 0700, refused if another user
//! owns it or may write to it); one `<pod>.sock` per pod. The client vets the directory by the
//! same rule before it connects: a socket in a directory someone else controls could be theirs,
//! and so could every byte it sends back.
//! Who runs a pod name is decided by an exclusive lock on `<pod>.lock`, held for the life of the
//! process and released by the kernel even when the process is killed: a socket left behind by a
//! dead process is therefore stale and replaced, and a second `wasmpod run` of the same pod name
//! fails before it compiles or starts anything. The lock files stay (empty): removing one while
//! another process opens it would let two processes hold "the" lock.
//!
//! Protocol: the client sends one request line — `status`, `logs CONTAINER [--tail N] [--follow]`,
//! `events [--tail N] [--follow]`, or `apply LENGTH` followed by LENGTH bytes of JSON
//! ([`ApplyBody`]: a spec's text and its file's path, so relative component paths resolve as
//! they would for `wasmpod run`) — and reads newline-delimited JSON [`Response`]s until the
//! server closes the connection. A follow streams until the client hangs up or the pod ends.
//! Followers read the pod's line and event buffers through cursors ([`crate::logs::LogTail`],
//! [`crate::status::EventTail`]); nothing is queued per client, so a slow or stuck client holds
//! up only its own connection, and one that falls a whole buffer behind gets a `missed` count.
//! The JSON is made of view types defined here rather than the library's own types, so the wire
//! format stays put when the library's enums grow; `--json` in the CLI prints it as is. Every name
//! on the wire is spelled out here (serde renames, [`event_kind_name`]), never derived from a Rust
//! identifier's `Debug` output, so renaming a variant cannot change the protocol silently.
//! Strings on the wire are exact (a guest's escape codes included): printing them for people is
//! the client's job, and it escapes them ([`crate::logs::escape_control`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Pod;
use crate::container::Exit;
use crate::logs::{LogLine, Stream};
use crate::runtime_dir::{self, RuntimeDirError};
use crate::status::{ContainerState, ContainerStatus, Event, EventKind, PodStatus};

/// A request line longer than this is refused (requests are a few words).
pub const MAX_REQUEST_BYTES: u64 = 1024;
/// The largest `apply` body (a spec's text and path, as JSON).
pub const MAX_APPLY_BYTES: u64 = 1024 * 1024;
/// How long an `apply` client waits for the pod's answer: compiling a changed component and
/// waiting for the new version to be ready can take a while.
const APPLY_REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are refused, so clients cannot pile up tasks.
const MAX_CONNECTIONS: usize = 64;
/// How long followers get to send their last lines when the server shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a client waits for a reply that does not follow.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong serving or asking a pod.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another `wasmpod run` already runs pod {pod} (its control socket is {})", socket.display())]
    AlreadyRunning { pod: String, socket: PathBuf },
    #[error("no running pod named {pod} ({})", running_list(running))]
    NotRunning { pod: String, running: Vec<String> },
    #[error("no pod is running (none has a control socket in {})", dir.display())]
    NoneRunning { dir: PathBuf },
    #[error("several pods are running ({}): name one", running.join(", "))]
    Ambiguous { running: Vec<String> },
    /// The runtime directory is not this user's alone (or cannot be made).
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pod answered with an error (no such container, a bad request).
    #[error("{message}")]
    Refused { message: String },
    #[error("pod {pod} sent a reply that is not understood: {message}")]
    Protocol { pod: String, message: String },
}

fn running_list(running: &[String]) -> String {
    if running.is_empty() {
        "no pod is running".to_string()
    } else {
        format!("running: {}", running.join(", "))
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ControlError + 'a {
    move |source| ControlError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory that holds the control sockets: [`runtime_dir::path`].
pub fn runtime_dir() -> PathBuf {
    runtime_dir::path()
}

/// The socket of pod `pod` in `dir`.
pub fn socket_path(dir: &Path, pod: &str) -> PathBuf {
    dir.join(format!("{pod}.sock"))
}

/// Whether `name` can be a pod name (the spec's own rule, not a copy of it), so a client-given
/// name never escapes `dir` and every pod the spec accepts can be reached.
fn is_pod_name(name: &str) -> bool {
    crate::spec::is_dns_label(name)
}

// ---------------------------------------------------------------------------------------------
// The wire format.

/// One request: the first line a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Logs {
        container: String,
        tail: Option<usize>,
        follow: bool,
    },
    Events {
        tail: Option<usize>,
        follow: bool,
    },
    /// `fault add KEY=VALUE...`: inject a network fault (fields as in `[[faults]]`).
    FaultAdd {
        fields: Vec<(String, String)>,
    },
    /// `fault ls`.
    FaultList,
    /// `fault rm ID`.
    FaultRemove {
        id: u64,
    },
    /// `apply LENGTH`: an [`ApplyBody`] of LENGTH bytes follows the line; the pod applies the
    /// spec with [`Pod::update`].
    Apply {
        length: u64,
    },
}

/// What follows an `apply` request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyBody {
    /// The spec file's absolute path: relative paths in it are relative to its directory, and
    /// errors name it.
    pub file: PathBuf,
    /// The spec's text, as the client read it.
    pub spec: String,
}

impl Request {
    /// Parses a request line; the error is what to tell the client.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().ok_or("empty request; expected status, logs or events")?;
        if verb == "fault" {
            return Request::parse_fault(words);
        }
        if verb == "apply" {
            return match (words.next().map(str::parse::<u64>), words.next()) {
                (Some(Ok(length)), None) if length <= MAX_APPLY_BYTES => Ok(Request::Apply { length }),
                (Some(Ok(_)), None) => Err(format!("an apply request carries at most {MAX_APPLY_BYTES} bytes")),
                _ => Err("apply takes the length of the spec that follows".into()),
            };
        }
        if !["status", "logs", "events"].contains(&verb) {
            return Err(format!("unknown request {verb:?}; expected status, logs or events"));
        }
        let mut container = None;
        let (mut tail, mut follow) = (None, false);
        while let Some(word) = words.next() {
            match word {
                "--follow" => follow = true,
                "--tail" => {
                    let value = words.next().ok_or("--tail needs a number")?;
                    tail = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| format!("--tail {value:?}: not a number"))?,
                    );
                }
                _ if verb == "logs" && container.is_none() && !word.starts_with('-') => {
                    container = Some(word.to_string())
                }
                _ => return Err(format!("unexpected {word:?} in a {verb} request")),
            }
        }
        match verb {
            "status" if tail.is_none() && !follow => Ok(Request::Status),
            "status" => Err("status takes no options".into()),
            "logs" => Ok(Request::Logs {
                container: container.ok_or("logs needs a container name")?,
                tail,
                follow,
            }),
            _ => Ok(Request::Events { tail, follow }),
        }
    }

    fn parse_fault<'a>(mut words: impl Iterator<Item = &'a str>) -> Result<Request, String> {
        match words.next() {
            Some("add") => {
                let fields = words
                    .map(|w| {
                        w.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .ok_or_else(|| format!("{w:?} is not KEY=VALUE"))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Request::FaultAdd { fields })
            }
            Some("ls") if words.next().is_none() => Ok(Request::FaultList),
            Some("rm") => match (words.next().map(str::parse::<u64>), words.next()) {
                (Some(Ok(id)), None) => Ok(Request::FaultRemove { id }),
                _ => Err("fault rm takes one fault id".into()),
            },
            _ => Err("expected fault add KEY=VALUE..., fault ls or fault rm ID".into()),
        }
    }

    /// The request line, without its newline.
    pub fn to_line(&self) -> String {
        let options = |tail: &Option<usize>, follow: bool| {
            let mut options = String::new();
            if let Some(tail) = tail {
                options.push_str(&format!(" --tail {tail}"));
            }
            if follow {
                options.push_str(" --follow");
            }
            options
        };
        match self {
            Request::Status => "status".to_string(),
            Request::Logs {
                container,
                tail,
                follow,
            } => format!("logs {container}{}", options(tail, *follow)),
            Request::Events { tail, follow } => format!("events{}", options(tail, *follow)),
            Request::FaultAdd { fields } => {
                let mut line = "fault add".to_string();
                for (k, v) in fields {
                    line.push_str(&format!(" {k}={v}"));
                }
                line
            }
            Request::FaultList => "fault ls".to_string(),
            Request::FaultRemove { id } => format!("fault rm {id}"),
            Request::Apply { length } => format!("apply {length}"),
        }
    }

    fn follows(&self) -> bool {
        matches!(
            self,
            Request::Logs { follow: true, .. } | Request::Events { follow: true, .. }
        )
    }
}

/// One line of a reply. Times are RFC 3339 strings in UTC. The `type` names are spelled out
/// rather than derived from the variant names, so that they are the protocol's and stay put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Response {
    #[serde(rename = "status")]
    Status(StatusView),
    #[serde(rename = "line")]
    Line(LineView),
    #[serde(rename = "event")]
    Event(EventView),
    /// This many lines or events left the pod's buffer before this client read them.
    #[serde(rename = "missed")]
    Missed { count: u64 },
    #[serde(rename = "error")]
    Error { message: String },
    /// An injected network fault (the reply to `fault add`, `fault ls`, `fault rm`).
    #[serde(rename = "fault")]
    Fault { id: u64, fault: String },
    /// The reply to `apply`: what changed.
    #[serde(rename = "applied")]
    Applied(AppliedView),
}

/// What an `apply` changed ([`crate::UpdateReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedView {
    pub pod: String,
    /// The containers swapped to a new version, in spec order.
    pub updated: Vec<UpdatedView>,
    /// The containers left as they were.
    pub unchanged: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatedView {
    pub container: String,
    /// Digests (`sha256:<hex>`) of the old and the new component.
    pub from: String,
    pub to: String,
    /// From the update call to the new version serving.
    pub took_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub name: String,
    /// `Running`, `Succeeded`, `Failed: reason`, ...
    pub phase: String,
    /// Init containers first, in spec order.
    pub containers: Vec<ContainerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub name: String,
    /// `init` or `app`.
    pub kind: String,
    /// `waiting`, `running` or `terminated`.
    pub state: String,
    /// The state for people: `Running`, `Waiting (BackOff 20ms)`, `Terminated`.
    pub state_text: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub restart_count: u32,
    /// Past its startup probe and passing its readiness probe (see `wasmpod::ContainerStatus`).
    pub ready: bool,
    /// How the most recent run ended, for people (`exited with code 1`, `trapped: ...`).
    pub last_exit: Option<String>,
    /// The exit code of the most recent run, when it exited (rather than trapped, ...).
    pub last_exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub container: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub at: String,
    pub container: Option<String>,
    /// The kind in snake case: `started`, `exited`, `back_off`, `pod_running`, ...
    pub kind: String,
    /// What happened, for people (without the container name).
    pub message: String,
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<&PodStatus> for StatusView {
    fn from(status: &PodStatus) -> StatusView {
        StatusView {
            name: status.name.clone(),
            phase: status.phase.to_string(),
            containers: status.containers.iter().map(ContainerView::from).collect(),
        }
    }
}

impl From<&ContainerStatus> for ContainerView {
    fn from(container: &ContainerStatus) -> ContainerView {
        let (state, state_text, started_at, finished_at) = match &container.state {
            ContainerState::Waiting { .. } => ("waiting", container.state.to_string(), None, None),
            ContainerState::Running { started_at } => {
                ("running", container.state.to_string(), Some(time(*started_at)), None)
            }
            // How it ended is `last_exit`; saying it twice only widens the table.
            ContainerState::Terminated { finished_at, .. } => {
                ("terminated", "Terminated".into(), None, Some(time(*finished_at)))
            }
        };
        ContainerView {
            name: container.name.clone(),
            kind: if container.init { "init" } else { "app" }.to_string(),
            state: state.to_string(),
            state_text,
            started_at,
            finished_at,
            restart_count: container.restart_count,
            ready: container.ready,
            last_exit: container.last_exit.as_ref().map(Exit::to_string),
            last_exit_code: match container.last_exit {
                Some(Exit::Code(code)) => Some(code),
                _ => None,
            },
        }
    }
}

impl From<&LogLine> for LineView {
    fn from(line: &LogLine) -> LineView {
        LineView {
            container: line.container.to_string(),
            stream: match line.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }
            .to_string(),
            text: line.text.clone(),
            at: time(line.at),
        }
    }
}

impl From<&Event> for EventView {
    fn from(event: &Event) -> EventView {
        // The event's own Display without the `container: ` prefix, which has its own field.
        let message = Event {
            container: None,
            ..event.clone()
        }
        .to_string();
        EventView {
            at: time(event.at),
            container: event.container.clone(),
            kind: event_kind_name(&event.kind).to_string(),
            message,
        }
    }
}

/// The event kind's name on the wire. Spelled out, one arm per kind: a kind added to the library
/// fails to compile here until it is given a name, and renaming a variant changes nothing on the
/// wire. The names are the snake case of the variant names they had when the protocol began.
pub fn event_kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Compiling => "compiling",
        EventKind::ImageResolved { .. } => "image_resolved",
        EventKind::Compiled { .. } => "compiled",
        EventKind::VolumeReady { .. } => "volume_ready",
        EventKind::Exposed { .. } => "exposed",
        EventKind::Started => "started",
        EventKind::Exited { .. } => "exited",
        EventKind::BackOff { .. } => "back_off",
        EventKind::Restarting { .. } => "restarting",
        EventKind::Ready => "ready",
        EventKind::NotReady { .. } => "not_ready",
        EventKind::Unhealthy { .. } => "unhealthy",
        EventKind::EgressDenied { .. } => "egress_denied",
        EventKind::PodRunning => "pod_running",
        EventKind::PodSucceeded => "pod_succeeded",
        EventKind::PodFailed { .. } => "pod_failed",
        EventKind::Stopping => "stopping",
        EventKind::PodStopped => "pod_stopped",
        EventKind::Warning { .. } => "warning",
        EventKind::RequestTrapped { .. } => "request_trapped",
        EventKind::RequestTimedOut { .. } => "request_timed_out",
        EventKind::RequestFailed { .. } => "request_failed",
        EventKind::Tier { .. } => "tier",
        EventKind::FaultAdded { .. } => "fault_added",
        EventKind::FaultRemoved { .. } => "fault_removed",
        EventKind::FaultTriggered { .. } => "fault_triggered",
        EventKind::Updated { .. } => "updated",
        EventKind::UpdateFailed { .. } => "update_failed",
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

/// This process's hold on a pod name: taken before the pod starts, so that a second `wasmpod run`
/// of the same pod fails before it runs anything. [`PodClaim::serve`] then opens the socket.
pub struct PodClaim {
    dir: PathBuf,
    pod: String,
    /// Holds the exclusive lock; the kernel releases it when the file is closed or we die.
    _lock: std::fs::File,
}

impl PodClaim {
    /// Claims `pod` in the [`runtime_dir`].
    pub fn acquire(pod: &str) -> Result<PodClaim, ControlError> {
        PodClaim::acquire_in(&runtime_dir(), pod)
    }

    /// Claims `pod` in `dir` (created 0700 if missing).
    pub fn acquire_in(dir: &Path, pod: &str) -> Result<PodClaim, ControlError> {
        runtime_dir::ensure_private(dir)?;
        let lock_path = dir.join(format!("{pod}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error("cannot open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => Ok(PodClaim {
                dir: dir.to_path_buf(),
                pod: pod.to_string(),
                _lock: lock,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ControlError::AlreadyRunning {
                pod: pod.to_string(),
                socket: socket_path(dir, pod),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(ControlError::Io {
                what: "cannot lock",
                path: lock_path,
                source,
            }),
        }
    }

    /// Opens the pod's socket and serves it until [`ControlServer::shutdown`]. Must be called
    /// inside a tokio runtime. Follow requests end when the pod ends.
    pub fn serve(self, pod: Arc<Pod>) -> Result<ControlServer, ControlError> {
        let socket = socket_path(&self.dir, &self.pod);
        // We hold the name's lock, so a socket still there was left by a process that died.
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ControlError::Io {
                    what: "cannot replace the stale socket",
                    path: socket,
                    source,
                });
            }
        }
        let listener = UnixListener::bind(&socket).map_err(io_error("cannot listen on", &socket))?;
        // The directory is private already; this also covers a user-chosen shared directory.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error("cannot restrict", &socket))?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, pod, stop.clone()));
        Ok(ControlServer {
            socket,
            stop,
            task: Some(task),
            _claim: self,
        })
    }
}

/// A running control endpoint. Remove it with [`ControlServer::shutdown`]; dropping it also
/// removes the socket but cannot wait for the connections to finish.
pub struct ControlServer {
    socket: PathBuf,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Released (by field drop order) only after `Drop` removed the socket, so a new owner of
    /// the name never has its fresh socket removed by us.
    _claim: PodClaim,
}

impl ControlServer {
    /// Claims the pod's name and serves it: [`PodClaim::acquire`] then [`PodClaim::serve`].
    pub fn start(pod: Arc<Pod>) -> Result<ControlServer, ControlError> {
        PodClaim::acquire(&pod.spec().name)?.serve(pod)
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops accepting, lets followers send what is left (briefly), closes every connection,
    /// and removes the socket. Afterwards nothing here holds the pod any more.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept_loop(listener: UnixListener, pod: Arc<Pod>, stop: CancellationToken) {
    // Cancelled when the pod ends (followers finish) or the server stops; `status` still works
    // between the two, so `wasmpod ps` can see how the pod ended.
    let ended = stop.child_token();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let pod_end = {
        let pod = pod.clone();
        async move {
            pod.wait().await;
        }
    };
    tokio::pin!(pod_end);
    let mut pod_ended = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = &mut pod_end, if !pod_ended => {
                pod_ended = true;
                ended.cancel();
            }
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (pod, ended) = (pod.clone(), ended.clone());
                        connections.spawn(async move {
                            let _permit = permit;
                            serve_connection(stream, &pod, &ended).await;
                        });
                    }
                    Err(_) => {
                        // A fresh socket's send buffer is empty, so this does not block; if it
                        // fails the client still sees the connection close.
                        let _ = stream.try_write(&reply_bytes(&Response::Error {
                            message: format!("too many control connections (at most {MAX_CONNECTIONS})"),
                        }));
                    }
                },
                // Out of file descriptors and the like: pause rather than spin on the error.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    }
    drop(listener);
    ended.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        // Clients that do not read: cut them off, and wait until their tasks released the pod.
        connections.shutdown().await;
    }
}

fn reply_bytes(response: &Response) -> Vec<u8> {
    let mut bytes = to_json(response).into_bytes();
    bytes.push(b'\n');
    bytes
}

/// One reply as a line of JSON with no character a terminal acts on, even printed raw.
pub fn to_json(response: &Response) -> String {
    // Serializing these plain structs cannot fail; an empty line would only be skipped.
    let json = serde_json::to_string(response).unwrap_or_default();
    json_without_raw_controls(&json).into_owned()
}

/// JSON text with DEL and the C1 controls written as `\u00XX` escapes. serde_json escapes C0
/// controls only, and a raw U+009B is a CSI to some terminals (`wasmpod logs --json` is often
/// read on one). Outside strings JSON holds ASCII only, so every such character is inside a
/// string, where the escape means exactly the same character: the text stays exact.
pub fn json_without_raw_controls(json: &str) -> std::borrow::Cow<'_, str> {
    let raw_control = |c: char| ('\u{7f}'..='\u{9f}').contains(&c);
    if !json.contains(raw_control) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut escaped = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw_control(c) {
            escaped.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

async fn serve_connection(stream: UnixStream, pod: &Pod, ended: &CancellationToken) {
    let (read, write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut out = tokio::io::BufWriter::new(write);
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut reader)).await {
        // Connected and left without asking: `wasmpod ps` checking which pods are alive.
        Ok(Ok(None)) => return,
        Ok(Ok(Some(line))) => Request::parse(&line),
        Ok(Err(message)) => Err(message),
        Err(_) => Err(format!("no request line within {}s", REQUEST_TIMEOUT.as_secs())),
    };
    // A write error means the client hung up; there is nobody left to tell.
    let _ = match request {
        Err(message) => send(&mut out, &[Response::Error { message }]).await,
        Ok(Request::Status) => send(&mut out, &[Response::Status(StatusView::from(&pod.status()))]).await,
        Ok(Request::Logs {
            container,
            tail,
            follow,
        }) => serve_logs(pod, &container, tail, follow, reader, &mut out, ended).await,
        Ok(Request::Events { tail, follow }) => serve_events(pod, tail, follow, reader, &mut out, ended).await,
        Ok(Request::Apply { length }) => send(&mut out, &[serve_apply(pod, length, &mut reader).await]).await,
        Ok(request) => send(&mut out, &serve_fault(pod, request)).await,
    };
    let _ = out.shutdown().await;
}

/// `apply`: reads the body, parses the spec as `wasmpod run` would the file, and applies it.
async fn serve_apply(pod: &Pod, length: u64, reader: &mut (impl AsyncRead + Unpin)) -> Response {
    let error = |message: String| Response::Error { message };
    let mut body = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, (&mut *reader).take(length).read_to_end(&mut body)).await;
    match read {
        Ok(Ok(_)) if body.len() as u64 == length => {}
        Ok(Ok(_)) => return error(format!("the apply body ended after {} of {length} bytes", body.len())),
        Ok(Err(e)) => return error(format!("reading the apply body: {e}")),
        Err(_) => return error(format!("no apply body within {}s", REQUEST_TIMEOUT.as_secs())),
    }
    let body: ApplyBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return error(format!("the apply body is not understood: {e}")),
    };
    if !body.file.is_absolute() {
        return error(format!("the spec's path {} is not absolute", body.file.display()));
    }
    // Resolving the spec's paths looks at the file system.
    let parsed = tokio::task::spawn_blocking(move || crate::spec::PodSpec::from_toml(&body.spec, &body.file)).await;
    let spec = match parsed {
        Ok(Ok(spec)) => spec,
        Ok(Err(e)) => return error(format!("the spec is invalid, nothing changed:\n{e}")),
        Err(e) => return error(format!("reading the spec panicked: {e}")),
    };
    match pod.update(spec).await {
        Ok(report) => Response::Applied(AppliedView {
            pod: pod.spec().name.clone(),
            updated: report
                .updated
                .iter()
                .map(|u| UpdatedView {
                    container: u.container.clone(),
                    from: u.from.clone(),
                    to: u.to.clone(),
                    took_ms: u64::try_from(u.took.as_millis()).unwrap_or(u64::MAX),
                })
                .collect(),
            unchanged: report.unchanged,
        }),
        Err(e) => error(format!("not applied, the pod runs as before: {e}")),
    }
}

/// `fault add/ls/rm` on the pod's fault table. A fault added here stays until `fault rm`.
fn serve_fault(pod: &Pod, request: Request) -> Vec<Response> {
    let faults = pod.network().faults();
    let error = |message: String| vec![Response::Error { message }];
    match request {
        Request::FaultAdd { fields } => {
            let fault = match crate::net::fault::Fault::from_fields(&fields) {
                Ok(fault) => fault,
                Err(message) => return error(message),
            };
            let unknown = [fault.to.container(), fault.from.as_deref()]
                .into_iter()
                .flatten()
                .find(|name| !pod.network().has_name(name));
            if let Some(name) = unknown {
                return error(format!("{name:?} is not a container of this pod"));
            }
            let text = fault.to_string();
            let id = faults.add(fault);
            vec![Response::Fault { id, fault: text }]
        }
        Request::FaultList => faults
            .list()
            .into_iter()
            .map(|(id, fault)| Response::Fault {
                id,
                fault: fault.to_string(),
            })
            .collect(),
        Request::FaultRemove { id } => {
            let text = faults
                .list()
                .into_iter()
                .find(|(i, _)| *i == id)
                .map(|(_, f)| f.to_string());
            match text {
                Some(fault) if faults.remove(id) => vec![Response::Fault { id, fault }],
                _ => error(format!("no fault {id} in this pod (see `wasmpod fault ls`)")),
            }
        }
        _ => error("not a fault request".into()),
    }
}

/// The request line, or `None` if the client closed without sending anything.
async fn read_request(reader: &mut (impl AsyncBufReadExt + Unpin)) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    // `take` bounds what a client can make us buffer.
    let read = reader
        .take(MAX_REQUEST_BYTES + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if read == 0 {
        return Ok(None);
    }
    if line.len() as u64 > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| "the request is not UTF-8".to_string())
}

async fn send(out: &mut (impl AsyncWrite + Unpin), responses: &[Response]) -> std::io::Result<()> {
    for response in responses {
        out.write_all(&reply_bytes(response)).await?;
    }
    out.flush().await
}

/// Resolves when the client hangs up (end of file or an error); whatever else it sends after
/// its request is read and dropped.
async fn hung_up(mut reader: impl AsyncRead + Unpin) {
    let mut scratch = [0u8; 256];
    while let Ok(1..) = reader.read(&mut scratch).await {}
}

async fn serve_logs(
    pod: &Pod,
    container: &str,
    tail: Option<usize>,
    follow: bool,
    reader: impl AsyncRead + Unpin,
    out: &mut (impl AsyncWrite + Unpin),
    ended: &CancellationToken,
) -> std::io::Result<()> {
    let status = pod.status();
    if status.container(container).is_none() {
        let names: Vec<&str> = status.containers.iter().map(|c| c.name.as_str()).collect();
        let message = format!(
            "no container named {container} in pod {} (containers: {})",
            status.name,
            names.join(", ")
        );
        return send(out, &[Response::Error { message }]).await;
    }
    let mut cursor = pod.output().tail(container, tail);
    let lines = |read: crate::logs::TailRead| {
        let missed = (read.missed > 0).then_some(Response::Missed { count: read.missed });
        missed
            .into_iter()
            .chain(read.lines.iter().map(|line| Response::Line(LineView::from(line))))
            .collect::<Vec<_>>()
    };
    send(out, &lines(cursor.read())).await?;
    if !follow {
        return Ok(());
    }
    let hangup = hung_up(reader);
    tokio::pin!(hangup);
    loop {
        tokio::select! {
            () = &mut hangup => return Ok(()),
            // The pod's last lines are in the buffer by the time it has ended.
            () = ended.cancelled() => return send(out, &lines(cursor.read())).await,
            read = cursor.next() => send(out, &lines(read)).await?,
        }
    }
}

async fn serve_events(
    pod: &Pod,
    tail: Option<usize>,
    follow: bool,
    reader: impl AsyncRead + Unpin,
    out: &mut (impl AsyncWrite + Unpin),
    ended: &CancellationToken,
) -> std::io::Result<()> {
    let mut cursor = pod.events().tail(tail);
    let events = |(events, missed): (Vec<Event>, u64)| {
        let missed = (missed > 0).then_some(Response::Missed { count: missed });
        missed
            .into_iter()
            .chain(events.iter().map(|event| Response::Event(EventView::from(event))))
            .collect::<Vec<_>>()
    };
    send(out, &events(cursor.read())).await?;
    if !follow {
        return Ok(());
    }
    let hangup = hung_up(reader);
    tokio::pin!(hangup);
    loop {
        tokio::select! {
            () = &mut hangup => return Ok(()),
            () = ended.cancelled() => return send(out, &events(cursor.read())).await,
            read = cursor.next() => send(out, &events(read)).await?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client (blocking: the CLI asks one pod one thing and prints the answer).

/// The pods with a live control socket in `dir`, sorted by name. Sockets left by dead processes
/// are skipped (the next `wasmpod run` of that pod replaces them). None at all when `dir` fails
/// [`runtime_dir::check`]: its sockets may be anybody's ([`Client::find`] says why).
pub fn running_pods(dir: &Path) -> Vec<String> {
    if !matches!(runtime_dir::check(dir), Ok(true)) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pods: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.strip_suffix(".sock").map(str::to_owned))
        .filter(|pod| is_pod_name(pod) && std::os::unix::net::UnixStream::connect(socket_path(dir, pod)).is_ok())
        .collect();
    pods.sort();
    pods
}

/// A connection-to-be to one running pod.
#[derive(Debug, Clone)]
pub struct Client {
    pod: String,
    socket: PathBuf,
}

impl Client {
    /// The running pod named `pod` in `dir`, or with `None` the only running one. Refuses a
    /// `dir` that is not this user's alone, as the server does: whoever controls it could answer
    /// in the pod's name.
    pub fn find(dir: &Path, pod: Option<&str>) -> Result<Client, ControlError> {
        runtime_dir::check(dir)?;
        let Some(pod) = pod else {
            let mut running = running_pods(dir);
            return match running.len() {
                0 => Err(ControlError::NoneRunning { dir: dir.to_path_buf() }),
                1 => Ok(Client::new(dir, running.remove(0))),
                _ => Err(ControlError::Ambiguous { running }),
            };
        };
        let not_running = || ControlError::NotRunning {
            pod: pod.to_string(),
            running: running_pods(dir),
        };
        if !is_pod_name(pod) {
            return Err(not_running());
        }
        let client = Client::new(dir, pod.to_string());
        match std::os::unix::net::UnixStream::connect(&client.socket) {
            Ok(_) => Ok(client),
            Err(_) => Err(not_running()),
        }
    }

    fn new(dir: &Path, pod: String) -> Client {
        Client {
            socket: socket_path(dir, &pod),
            pod,
        }
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Sends `request`; the replies are read as they are iterated.
    pub fn request(&self, request: &Request) -> Result<Replies, ControlError> {
        let gone = |source: std::io::Error| ControlError::Io {
            what: "cannot reach pod at",
            path: self.socket.clone(),
            source,
        };
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).map_err(gone)?;
        // A follow may be quiet for as long as the pod is; anything else answers at once.
        let timeout = (!request.follows()).then_some(REPLY_TIMEOUT);
        stream.set_read_timeout(timeout).map_err(gone)?;
        stream
            .write_all(format!("{}\n", request.to_line()).as_bytes())
            .map_err(gone)?;
        Ok(Replies {
            pod: self.pod.clone(),
            socket: self.socket.clone(),
            reader: BufReader::new(stream),
        })
    }

    /// Applies a spec (its text, and its file's absolute path) to the running pod and returns
    /// what changed; a refused or failed update is [`ControlError::Refused`] with the pod's
    /// reason (an invalid spec's located errors included).
    pub fn apply(&self, file: &Path, spec: &str) -> Result<AppliedView, ControlError> {
        let gone = |source: std::io::Error| ControlError::Io {
            what: "cannot reach pod at",
            path: self.socket.clone(),
            source,
        };
        let body = serde_json::to_vec(&ApplyBody {
            file: file.to_path_buf(),
            spec: spec.to_string(),
        })
        .map_err(|e| ControlError::Protocol {
            pod: self.pod.clone(),
            message: e.to_string(),
        })?;
        let request = Request::Apply {
            length: body.len() as u64,
        };
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).map_err(gone)?;
        stream.set_read_timeout(Some(APPLY_REPLY_TIMEOUT)).map_err(gone)?;
        let mut message = format!("{}\n", request.to_line()).into_bytes();
        message.extend_from_slice(&body);
        stream.write_all(&message).map_err(gone)?;
        let replies = Replies {
            pod: self.pod.clone(),
            socket: self.socket.clone(),
            reader: BufReader::new(stream),
        };
        for reply in replies {
            match reply? {
                Response::Applied(applied) => return Ok(applied),
                Response::Error { message } => return Err(ControlError::Refused { message }),
                _ => {}
            }
        }
        Err(ControlError::Protocol {
            pod: self.pod.clone(),
            message: "no answer to the apply request".into(),
        })
    }

    /// The pod's status.
    pub fn status(&self) -> Result<StatusView, ControlError> {
        for reply in self.request(&Request::Status)? {
            match reply? {
                Response::Status(status) => return Ok(status),
                Response::Error { message } => return Err(ControlError::Refused { message }),
                _ => {}
            }
        }
        Err(ControlError::Protocol {
            pod: self.pod.clone(),
            message: "no status in the reply".into(),
        })
    }
}

/// The replies to one request, read as they come; ends when the pod closes the connection.
pub struct Replies {
    pod: String,
    socket: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Replies {
    /// Each reply's JSON text as sent (for `--json`), parsed as well to find errors.
    pub fn next_raw(&mut self) -> Option<Result<(String, Response), ControlError>> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                // A server of another wasmpod version may still send them raw.
                let line = json_without_raw_controls(line.trim_end()).into_owned();
                Some(
                    serde_json::from_str(&line)
                        .map(|response| (line, response))
                        .map_err(|e| ControlError::Protocol {
                            pod: self.pod.clone(),
                            message: e.to_string(),
                        }),
                )
            }
            Err(source) => Some(Err(ControlError::Io {
                what: "lost the connection to",
                path: self.socket.clone(),
                source,
            })),
        }
    }
}

impl Iterator for Replies {
    type Item = Result<Response, ControlError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_raw().map(|reply| reply.map(|(_, response)| response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::EventKind;

    #[test]
    fn requests_parse_and_print_back() {
        for line in [
            "status",
            "logs app",
            "logs app --tail 2",
            "logs app --follow",
            "events",
            "events --follow",
            "fault add to=db:5432 kind=latency latency=200ms",
            "fault ls",
            "fault rm 3",
            "apply 120",
        ] {
            let request = Request::parse(line).unwrap();
            assert_eq!(Request::parse(&request.to_line()), Ok(request), "{line}");
        }
        assert_eq!(
            Request::parse("logs web --follow --tail 5\n"),
            Ok(Request::Logs {
                container: "web".into(),
                tail: Some(5),
                follow: true
            })
        );
        for bad in [
            "",
            "logs",
            "logs a b",
            "logs a --tail",
            "logs a --tail -1",
            "events x",
            "status --follow",
            "rm -rf",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn event_kinds_are_snake_case_variant_names() {
        let event = |kind| Event {
            at: SystemTime::UNIX_EPOCH,
            container: Some("app".into()),
            kind,
        };
        let view = EventView::from(&event(EventKind::BackOff {
            delay: Duration::from_millis(20),
        }));
        assert_eq!(view.kind, "back_off");
        assert_eq!(view.message, "restarting in 20ms");
        assert_eq!(view.container.as_deref(), Some("app"));
        assert_eq!(view.at, "1970-01-01T00:00:00.000Z");
        assert_eq!(
            EventView::from(&event(EventKind::Exited { exit: Exit::Code(1) })).kind,
            "exited"
        );
        assert_eq!(EventView::from(&event(EventKind::PodRunning)).kind, "pod_running");
    }

    /// The snake case of the variant's name as `Debug` prints it: how the names were made before
    /// they were spelled out. Kept here only to prove the spelled-out names did not change.
    fn old_debug_name(kind: &EventKind) -> String {
        let debug = format!("{kind:?}");
        let variant = debug.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap();
        let mut name = String::new();
        for (i, c) in variant.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        }
        name
    }

    #[test]
    fn event_kind_names_are_spelled_out_and_unchanged_from_the_first_protocol() {
        let ms = Duration::from_millis(1);
        let text = || "x".to_string();
        let kinds = [
            EventKind::Compiling,
            EventKind::ImageResolved {
                image: text(),
                digest: text(),
                cached: true,
            },
            EventKind::Compiled { cached: true, took: ms },
            EventKind::VolumeReady {
                volume: text(),
                host_dir: text(),
            },
            EventKind::Exposed {
                pod_port: 80,
                host_addr: "127.0.0.1:1".parse().unwrap(),
            },
            EventKind::Started,
            EventKind::Exited { exit: Exit::Code(0) },
            EventKind::BackOff { delay: ms },
            EventKind::Restarting { restart_count: 1 },
            EventKind::Ready,
            EventKind::NotReady { message: text() },
            EventKind::Unhealthy { message: text() },
            EventKind::EgressDenied {
                kind: crate::egress::DeniedKind::Http,
                destination: text(),
            },
            EventKind::PodRunning,
            EventKind::PodSucceeded,
            EventKind::PodFailed { reason: text() },
            EventKind::Stopping,
            EventKind::PodStopped,
            EventKind::Warning { message: text() },
            EventKind::RequestTrapped { message: text() },
            EventKind::RequestTimedOut { after: ms },
            EventKind::RequestFailed { message: text() },
            EventKind::Tier {
                notice: crate::engine::TierNotice::ServingBaseline,
            },
            EventKind::FaultAdded { id: 1, fault: text() },
            EventKind::FaultRemoved { id: 1, fault: text() },
            EventKind::FaultTriggered { id: 1, link: text() },
            EventKind::Updated {
                from: text(),
                to: text(),
                took: ms,
            },
            EventKind::UpdateFailed { message: text() },
        ];
        for kind in &kinds {
            assert_eq!(event_kind_name(kind), old_debug_name(kind), "{kind:?}");
        }
    }

    #[test]
    fn the_json_of_every_reply_is_pinned() {
        let line = Response::Line(LineView {
            container: "web".into(),
            stream: "stderr".into(),
            text: "\u{1b}[2J\rforged".into(),
            at: "1970-01-01T00:00:00.000Z".into(),
        });
        // Exact: a guest's control characters travel as JSON escapes, never raw.
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"type":"line","container":"web","stream":"stderr","text":"\u001b[2J\rforged","at":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Fault {
                id: 3,
                fault: "down to 80 (both)".into()
            })
            .unwrap(),
            r#"{"type":"fault","id":3,"fault":"down to 80 (both)"}"#
        );
        let applied = Response::Applied(AppliedView {
            pod: "p".into(),
            updated: vec![UpdatedView {
                container: "web".into(),
                from: "sha256:a".into(),
                to: "sha256:b".into(),
                took_ms: 12,
            }],
            unchanged: vec!["db".into()],
        });
        assert_eq!(
            serde_json::to_string(&applied).unwrap(),
            r#"{"type":"applied","pod":"p","updated":[{"container":"web","from":"sha256:a","to":"sha256:b","took_ms":12}],"unchanged":["db"]}"#
        );
        let event = Response::Event(EventView {
            at: "t".into(),
            container: None,
            kind: "pod_running".into(),
            message: "pod running".into(),
        });
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"event","at":"t","container":null,"kind":"pod_running","message":"pod running"}"#
        );
        let status = Response::Status(StatusView {
            name: "demo".into(),
            phase: "Running".into(),
            containers: vec![ContainerView {
                name: "web".into(),
                kind: "app".into(),
                state: "running".into(),
                state_text: "Running".into(),
                started_at: Some("t".into()),
                finished_at: None,
                restart_count: 2,
                ready: true,
                last_exit: Some("exited with code 1".into()),
                last_exit_code: Some(1),
            }],
        });
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            concat!(
                r#"{"type":"status","name":"demo","phase":"Running","containers":[{"name":"web","kind":"app","#,
                r#""state":"running","state_text":"Running","started_at":"t","finished_at":null,"#,
                r#""restart_count":2,"ready":true,"last_exit":"exited with code 1","last_exit_code":1}]}"#
            )
        );
        let error = Response::Error { message: "no".into() };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"type":"error","message":"no"}"#
        );
        for reply in [line, event, status, error] {
            let text = serde_json::to_string(&reply).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), reply);
        }
    }

    #[test]
    fn the_client_refuses_a_runtime_directory_others_may_write() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = Client::find(&dir, Some("demo")).unwrap_err().to_string();
        assert!(refused.contains("refusing the runtime directory"), "{refused}");
        assert!(refused.contains("0777"), "{refused}");
        assert!(running_pods(&dir).is_empty());
        // And the server does not use it either.
        assert!(matches!(
            PodClaim::acquire_in(&dir, "demo"),
            Err(ControlError::RuntimeDir(RuntimeDirError::Unsafe { .. }))
        ));
    }

    #[test]
    fn json_replies_hold_no_raw_control_character_and_decode_to_the_exact_text() {
        let text = "\u{1b}[2J\r\u{7f}\u{9b}31m\u{85}é";
        let line = Response::Line(LineView {
            container: "web".into(),
            stream: "stdout".into(),
            text: text.into(),
            at: "t".into(),
        });
        let json = to_json(&line);
        assert!(!json.chars().any(char::is_control), "{json:?}");
        assert!(json.contains(r#""text":"\u001b[2J\r\u007f\u009b31m\u0085é""#), "{json}");
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), line);
    }

    #[test]
    fn replies_round_trip_as_tagged_json() {
        let reply = Response::Missed { count: 3 };
        let text = String::from_utf8(reply_bytes(&reply)).unwrap();
        assert_eq!(text, "{\"type\":\"missed\",\"count\":3}\n");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), reply);
    }

    #[test]
    fn pod_names_from_clients_cannot_leave_the_directory() {
        assert!(is_pod_name("demo-1"));
        for bad in ["", "../x", "a/b", "Demo", "a.sock", &"x".repeat(64)] {
            assert!(!is_pod_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_claimed_pod_name_cannot_be_claimed_again_until_released() {
        let base = tempfile::tempdir().unwrap();
        // Made by the claim, 0700 (tempfile's own directory is 0755, which would be refused).
        let dir = base.path().join("run");
        let dir = dir.as_path();
        let first = PodClaim::acquire_in(dir, "demo").unwrap();
        let again = PodClaim::acquire_in(dir, "demo");
        assert!(
            matches!(again, Err(ControlError::AlreadyRunning { ref pod, .. }) if pod == "demo"),
            "{:?}",
            again.err()
        );
        assert!(PodClaim::acquire_in(dir, "other").is_ok());
        drop(first);
        assert!(PodClaim::acquire_in(dir, "demo").is_ok());
    }
}
