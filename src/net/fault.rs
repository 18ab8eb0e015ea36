//! Fault injection on the pod's virtual links, in toxiproxy's vocabulary: a pod-wide
//! [`FaultTable`] of [`Fault`]s, consulted when a link is opened (TCP connect, UDP datagram
//! send, egress dial) and by links already open, and the delivery side of a faulty TCP link.
//!
//! It owns the fault model (kinds, direction, toxicity, target), the table (ids, add/remove,
//! an observer told about added, removed and first-triggered faults, the open links a new
//! fault may reach) and the relay that carries a faulty connection. It does not own the links
//! themselves ([`super`], [`super::pipe`]) or how a pod turns fault notices into events (the
//! pod installs an observer).
//!
//! New links take every kind: a link a fault matches when it is opened is carried by a small
//! relay (two tokio tasks between two pipe pairs) that applies the faults matching it *now* to
//! every chunk, so removing a fault heals it and one added later acts on it too.
//!
//! Open links take `latency`, `down` and `reset_peer` (as the issue asks; the other kinds shape
//! a stream from its start and only reach links opened after them). Every plain link is
//! registered with the table when it is made (a weak entry in a list swept as it doubles) and
//! its two pipes hold the link: on each write a pipe asks the link for its delay, which is one
//! atomic load while the table is empty and three while it holds faults that did not change
//! since the link last looked (a generation counter); only when the generation moved does the
//! link re-read the table. `latency` then holds written bytes back in the pipe (order kept,
//! end-of-stream behind them). `down` and `reset_peer` act when added: the table walks its open
//! links and resets the ones the fault aims at, `down` at once and `reset_peer` after its
//! timeout counted from the add (toxiproxy counts a toxic added to a live connection from
//! then). A reset is what the guest sees: `connection-reset` on its next read or write, and a
//! read or poll already waiting wakes with it. toxiproxy closes a disabled proxy's connections
//! (a FIN, or an RST when unread data is left); a partition sends nothing at all, and a
//! blackhole (`timeout` with 0) is there for guests that should wait it out, so `down` picks
//! the unambiguous signal, the one a stateful middlebox gives when it drops a flow.
//!
//! UDP: `down` and `loss` drop datagrams, `latency` holds them back (per port pair, in send
//! order, a bounded number pod-wide); the other kinds are for streams.
//!
//! Targets: `PORT` and `CONTAINER:PORT` match links to that pod port (the container part is
//! checked by the spec, the pod has one port space); `HOST:PORT` matches egress dials to that
//! IP address, or to `host.wasmpod.internal` by name (a dial knows only the address, so other
//! names do not match yet). TCP links take every kind but `loss`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Endpoint;
use super::budget::SocketBudget;
use super::pipe::{Pipe, PipeReader, PipeWriter};

/// What a fault does to a link (toxiproxy's toxics, plus `down` and `loss`).
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Every chunk is delayed by `latency` ± `jitter`.
    Latency { latency: Duration, jitter: Duration },
    /// At most `rate` bytes per second get through.
    Bandwidth { rate: u64 },
    /// The close (FIN) is delayed by `delay`.
    SlowClose { delay: Duration },
    /// Nothing is delivered; the link is closed after `timeout` (zero: held open until the
    /// fault is removed).
    Timeout { timeout: Duration },
    /// The link is reset (`connection-reset`) `timeout` after it is opened.
    ResetPeer { timeout: Duration },
    /// Writes are split into segments of about `average_size` (± `size_variation`) bytes,
    /// `delay` apart.
    Slicer {
        average_size: usize,
        size_variation: usize,
        delay: Duration,
    },
    /// The link is closed once `bytes` went through in the fault's direction.
    LimitData { bytes: u64 },
    /// A partition: connections are refused, datagrams dropped, open links reset.
    Down,
    /// UDP: each datagram is dropped with `probability`.
    Loss { probability: f64 },
}

impl FaultKind {
    /// The kind's name as written in a spec or on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::SlowClose { .. } => "slow_close",
            FaultKind::Timeout { .. } => "timeout",
            FaultKind::ResetPeer { .. } => "reset_peer",
            FaultKind::Slicer { .. } => "slicer",
            FaultKind::LimitData { .. } => "limit_data",
            FaultKind::Down => "down",
            FaultKind::Loss { .. } => "loss",
        }
    }

    /// Kinds that act on a link as a whole and so reach links already open when added
    /// (`latency` reaches them chunk by chunk instead, see [`FaultLink::delay`]).
    fn acts_on_open_links(&self) -> bool {
        matches!(self, FaultKind::Down | FaultKind::ResetPeer { .. })
    }

    /// Every kind name, for messages listing the choices.
    pub const NAMES: &'static [&'static str] = &[
        "latency",
        "bandwidth",
        "slow_close",
        "timeout",
        "reset_peer",
        "slicer",
        "limit_data",
        "down",
        "loss",
    ];

    /// The fields a kind takes besides the common ones (`to`, `from`, `direction`, `toxicity`).
    pub fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
        Some(match kind {
            "latency" => &["latency", "jitter"],
            "bandwidth" => &["rate"],
            "slow_close" => &["delay"],
            "timeout" | "reset_peer" => &["timeout"],
            "slicer" => &["average_size", "size_variation", "delay"],
            "limit_data" => &["bytes"],
            "down" => &[],
            "loss" => &["probability"],
            _ => return None,
        })
    }
}

/// Which way of a link a fault acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// From the connecting side (client → server; for UDP, datagrams sent to the target).
    Upstream,
    /// Towards the connecting side (server → client; datagrams sent from the target).
    Downstream,
    #[default]
    Both,
}

impl Direction {
    fn covers(self, dir: Direction) -> bool {
        self == Direction::Both || self == dir
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "upstream" => Ok(Direction::Upstream),
            "downstream" => Ok(Direction::Downstream),
            "both" => Ok(Direction::Both),
            other => Err(format!("direction {other:?} is not one of upstream, downstream, both")),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
            Direction::Both => "both",
        })
    }
}

/// Where a fault applies: `PORT` (any link to that pod port), `CONTAINER:PORT` (the same,
/// naming who serves it) or `HOST:PORT` (an egress destination; an IP address or a name
/// with a dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultTarget {
    pub host: Option<String>,
    pub port: u16,
}

impl FaultTarget {
    /// True when the target is outside the pod: a host with a dot or an IP address that is not
    /// a pod address (container names are DNS labels, without dots).
    pub fn is_egress(&self) -> bool {
        match &self.host {
            None => false,
            Some(h) => match h.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>() {
                Ok(ip) => !super::is_pod_address(ip),
                Err(_) => h.contains('.'),
            },
        }
    }

    /// The container named by a `CONTAINER:PORT` target (not `localhost`, not egress).
    pub fn container(&self) -> Option<&str> {
        match &self.host {
            Some(h)
                if !self.is_egress()
                    && !h.eq_ignore_ascii_case("localhost")
                    && h.parse::<std::net::IpAddr>().is_err() =>
            {
                Some(h)
            }
            _ => None,
        }
    }
}

impl FromStr for FaultTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("target {s:?} is not \"PORT\", \"CONTAINER:PORT\" or \"HOST:PORT\"");
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (Some(h.to_ascii_lowercase()), p),
            Some(_) => return Err(bad()),
            None => (None, s),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(format!("target {s:?}: the port must be from 1 to 65535"));
        }
        Ok(FaultTarget { host, port })
    }
}

impl fmt::Display for FaultTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(h) => write!(f, "{h}:{}", self.port),
            None => write!(f, "{}", self.port),
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub to: FaultTarget,
    /// Only links opened by this container.
    pub from: Option<String>,
    pub direction: Direction,
    /// Probability that a link is affected at all (decided once per link).
    pub toxicity: f64,
}

impl Fault {
    /// A fault of `kind` on links to `to`, both directions, every link.
    pub fn new(kind: FaultKind, to: FaultTarget) -> Fault {
        Fault {
            kind,
            to,
            from: None,
            direction: Direction::Both,
            toxicity: 1.0,
        }
    }

    /// Only links opened by `container`.
    pub fn from(mut self, container: &str) -> Fault {
        self.from = Some(container.to_ascii_lowercase());
        self
    }

    pub fn direction(mut self, direction: Direction) -> Fault {
        self.direction = direction;
        self
    }

    pub fn toxicity(mut self, toxicity: f64) -> Fault {
        self.toxicity = toxicity;
        self
    }

    /// What is wrong with its numbers (probabilities outside 0..=1, zero rates or sizes).
    pub fn problem(&self) -> Option<String> {
        if !(0.0..=1.0).contains(&self.toxicity) {
            return Some(format!("toxicity {} is not a probability from 0 to 1", self.toxicity));
        }
        match self.kind {
            FaultKind::Loss { probability } if !(0.0..=1.0).contains(&probability) => {
                Some(format!("probability {probability} is not a probability from 0 to 1"))
            }
            FaultKind::Bandwidth { rate: 0 } => Some("rate must be at least 1 byte per second".into()),
            FaultKind::Slicer { average_size: 0, .. } => Some("average_size must be at least 1 byte".into()),
            _ => None,
        }
    }

    /// A fault from `key=value` fields, named as in a spec's `[[faults]]` table (the control
    /// socket's `fault add`): `to`, `kind`, optional `from`, `direction`, `toxicity` and the
    /// kind's own fields. The error says what to change.
    pub fn from_fields(fields: &[(String, String)]) -> Result<Fault, String> {
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let kind_name = get("kind").ok_or("a fault needs a kind")?;
        let own = FaultKind::fields_of(kind_name).ok_or_else(|| {
            format!(
                "unknown fault kind {kind_name:?}; use one of: {}",
                FaultKind::NAMES.join(", ")
            )
        })?;
        for (key, _) in fields {
            let common = ["to", "from", "kind", "direction", "toxicity"].contains(&key.as_str());
            if !common && !own.contains(&key.as_str()) {
                return Err(format!("`{key}` is not a field of a {kind_name} fault"));
            }
        }
        let duration = |k: &str| -> Result<Duration, String> {
            get(k).map_or(Ok(Duration::ZERO), |v| {
                humantime::parse_duration(v).map_err(|e| format!("{k} {v:?} is not a duration ({e})"))
            })
        };
        let number = |k: &str| -> Result<Option<u64>, String> {
            get(k)
                .map(|v| v.parse::<u64>().map_err(|_| format!("{k} {v:?} is not a whole number")))
                .transpose()
        };
        let float = |k: &str| -> Result<Option<f64>, String> {
            get(k)
                .map(|v| v.parse::<f64>().map_err(|_| format!("{k} {v:?} is not a number")))
                .transpose()
        };
        let needs = |k: &str| format!("a {kind_name} fault needs {k}");
        let kind = match kind_name {
            "latency" => FaultKind::Latency {
                latency: get("latency")
                    .ok_or_else(|| needs("latency"))
                    .and(duration("latency"))?,
                jitter: duration("jitter")?,
            },
            "bandwidth" => FaultKind::Bandwidth {
                rate: number("rate")?.ok_or_else(|| needs("rate"))?,
            },
            "slow_close" => FaultKind::SlowClose {
                delay: duration("delay")?,
            },
            "timeout" => FaultKind::Timeout {
                timeout: duration("timeout")?,
            },
            "reset_peer" => FaultKind::ResetPeer {
                timeout: duration("timeout")?,
            },
            "slicer" => FaultKind::Slicer {
                average_size: number("average_size")?.unwrap_or(1024) as usize,
                size_variation: number("size_variation")?.unwrap_or(0) as usize,
                delay: duration("delay")?,
            },
            "limit_data" => FaultKind::LimitData {
                bytes: number("bytes")?.ok_or_else(|| needs("bytes"))?,
            },
            "loss" => FaultKind::Loss {
                probability: float("probability")?.ok_or_else(|| needs("probability"))?,
            },
            _ => FaultKind::Down,
        };
        let fault = Fault {
            kind,
            to: get("to").ok_or("a fault needs a target (to)")?.parse()?,
            from: get("from").map(str::to_ascii_lowercase),
            direction: get("direction").map_or(Ok(Direction::Both), str::parse)?,
            toxicity: float("toxicity")?.unwrap_or(1.0),
        };
        match fault.problem() {
            Some(problem) => Err(problem),
            None => Ok(fault),
        }
    }

    fn matches_from(&self, from: Option<&str>) -> bool {
        match (&self.from, from) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| humantime::format_duration(*d).to_string();
        match &self.kind {
            FaultKind::Latency { latency, jitter } => write!(f, "latency {} ± {}", ms(latency), ms(jitter))?,
            FaultKind::Bandwidth { rate } => write!(f, "bandwidth {rate} B/s")?,
            FaultKind::SlowClose { delay } => write!(f, "slow_close {}", ms(delay))?,
            FaultKind::Timeout { timeout } => write!(f, "timeout {}", ms(timeout))?,
            FaultKind::ResetPeer { timeout } => write!(f, "reset_peer after {}", ms(timeout))?,
            FaultKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => write!(f, "slicer {average_size}±{size_variation} B every {}", ms(delay))?,
            FaultKind::LimitData { bytes } => write!(f, "limit_data {bytes} B")?,
            FaultKind::Down => f.write_str("down")?,
            FaultKind::Loss { probability } => write!(f, "loss {probability}")?,
        }
        write!(f, " to {}", self.to)?;
        if let Some(from) = &self.from {
            write!(f, " from {from}")?;
        }
        write!(f, " ({}", self.direction)?;
        if self.toxicity < 1.0 {
            write!(f, ", toxicity {}", self.toxicity)?;
        }
        f.write_str(")")
    }
}

/// A fault's id in its table (`fault rm ID`).
pub type FaultId = u64;

/// What the table tells its observer (the pod turns these into events).
#[derive(Debug, Clone)]
pub enum FaultNotice {
    Added {
        id: FaultId,
        fault: String,
    },
    Removed {
        id: FaultId,
        fault: String,
    },
    /// The first time the fault acted on a link; `link` says which.
    Triggered {
        id: FaultId,
        link: String,
    },
}

/// Told about every [`FaultNotice`]; must not block.
pub type FaultObserver = Arc<dyn Fn(FaultNotice) + Send + Sync>;

struct Installed {
    id: FaultId,
    fault: Fault,
    triggered: AtomicBool,
}

#[derive(Default)]
struct TableState {
    next_id: FaultId,
    faults: Vec<Arc<Installed>>,
}

/// The open links a fault added now may reach (`down`, `reset_peer` act on them at once).
/// Weak, so a closed link frees itself; dead entries are swept when the list has doubled
/// since the last sweep, which keeps it at most twice the live links (and at least 64).
#[derive(Default)]
struct OpenLinks {
    list: Vec<Weak<FaultLink>>,
    live_at_sweep: usize,
}

impl OpenLinks {
    fn push(&mut self, link: Weak<FaultLink>) {
        if self.list.len() >= (2 * self.live_at_sweep).max(64) {
            self.list.retain(|l| l.strong_count() > 0);
            self.live_at_sweep = self.list.len();
        }
        self.list.push(link);
    }
}

/// The pod's faults. Cheap when empty: [`FaultTable::is_empty`] is one atomic load.
#[derive(Default)]
pub struct FaultTable {
    any: AtomicBool,
    /// Bumped by every add and remove: an open link re-reads the table only when it moved.
    generation: AtomicU64,
    st: Mutex<TableState>,
    links: Mutex<OpenLinks>,
    held: Mutex<HeldDatagrams>,
    observer: Mutex<Option<FaultObserver>>,
    rng: AtomicU64,
}

impl fmt::Debug for FaultTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultTable").finish_non_exhaustive()
    }
}

/// Which way a TCP chunk or a datagram travels, relative to the fault's target.
type Way = Direction;

/// A link as the table sees it when deciding which faults apply.
#[derive(Debug, Clone)]
pub(crate) struct LinkInfo {
    /// The container that opened it (None: the host side, e.g. the front proxy).
    pub(crate) from: Option<String>,
    /// The pod port it goes to, or the egress destination.
    pub(crate) to: LinkTo,
}

#[derive(Debug, Clone)]
pub(crate) enum LinkTo {
    Pod(u16),
    Egress(SocketAddr),
}

impl fmt::Display for LinkInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> ", self.from.as_deref().unwrap_or("host"))?;
        match &self.to {
            LinkTo::Pod(p) => write!(f, "{p}"),
            LinkTo::Egress(a) => write!(f, "{a}"),
        }
    }
}

/// What opening a link should do.
pub(crate) enum Verdict {
    /// No fault applies: a plain link.
    Clear,
    /// `down`: refuse it.
    Refuse,
    /// Carry it through a relay with these faults (more may apply later).
    Relay(Arc<FaultLink>),
}

impl FaultTable {
    pub fn new() -> Arc<FaultTable> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9);
        Arc::new(FaultTable {
            rng: AtomicU64::new(seed | 1),
            ..FaultTable::default()
        })
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        crate::sync::lock(&self.st)
    }

    /// True when no fault is installed (the hot-path check).
    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Moves on every add and remove; read it before deciding a link's verdict and hand it to
    /// [`FaultTable::watch`], so a fault added in between still reaches the link.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets who is told about added, removed and triggered faults.
    pub fn set_observer(&self, observer: FaultObserver) {
        *crate::sync::lock(&self.observer) = Some(observer);
    }

    fn notify(&self, notice: FaultNotice) {
        let observer = crate::sync::lock(&self.observer).clone();
        if let Some(o) = observer {
            o(notice);
        }
    }

    /// Installs a fault; returns its id.
    pub fn add(&self, fault: Fault) -> FaultId {
        let text = fault.to_string();
        let installed = {
            let mut st = self.lock();
            st.next_id += 1;
            let installed = Arc::new(Installed {
                id: st.next_id,
                fault,
                triggered: AtomicBool::new(false),
            });
            st.faults.push(installed.clone());
            self.any.store(true, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
            installed
        };
        let id = installed.id;
        self.notify(FaultNotice::Added { id, fault: text });
        if installed.fault.kind.acts_on_open_links() {
            let open: Vec<Arc<FaultLink>> = crate::sync::lock(&self.links)
                .list
                .iter()
                .filter_map(Weak::upgrade)
                .collect();
            for link in open {
                link.take_whole(&installed);
            }
        }
        id
    }

    /// Installs a fault and returns a guard that removes it when dropped.
    pub fn add_guarded(self: &Arc<Self>, fault: Fault) -> FaultGuard {
        let id = self.add(fault);
        FaultGuard {
            table: Arc::downgrade(self),
            id,
        }
    }

    /// Removes a fault; false if there is none with that id.
    pub fn remove(&self, id: FaultId) -> bool {
        let removed = {
            let mut st = self.lock();
            let pos = st.faults.iter().position(|f| f.id == id);
            let removed = pos.map(|p| st.faults.remove(p));
            self.any.store(!st.faults.is_empty(), Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
            removed
        };
        match removed {
            Some(f) => {
                self.notify(FaultNotice::Removed {
                    id,
                    fault: f.fault.to_string(),
                });
                true
            }
            None => false,
        }
    }

    /// The installed faults with their ids, oldest first.
    pub fn list(&self) -> Vec<(FaultId, Fault)> {
        self.lock().faults.iter().map(|f| (f.id, f.fault.clone())).collect()
    }

    /// A uniform number in [0, 1) (splitmix64; chaos needs no cryptographic randomness).
    fn random(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&self, p: f64) -> bool {
        p >= 1.0 || (p > 0.0 && self.random() < p)
    }

    /// True if `f` targets the pod port `port` / the egress destination `dest`.
    fn targets(f: &Fault, to: &LinkTo) -> bool {
        match to {
            LinkTo::Pod(port) => !f.to.is_egress() && f.to.port == *port,
            LinkTo::Egress(dest) => {
                let host = f.to.host.as_deref().unwrap_or("");
                // A dial knows only the address: an IP target, or the host's own loopback by
                // its name (which always dials the gateway address).
                let ip = match host.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) if host == crate::egress::HOST_INTERNAL => Some(crate::egress::HOST_GATEWAY),
                    Err(_) => None,
                };
                f.to.is_egress() && f.to.port == dest.port() && ip.is_some_and(|ip| ip == dest.ip())
            }
        }
    }

    fn triggered(&self, f: &Installed, link: &LinkInfo) {
        if !f.triggered.swap(true, Ordering::AcqRel) {
            self.notify(FaultNotice::Triggered {
                id: f.id,
                link: link.to_string(),
            });
        }
    }

    /// Decides what opening a TCP link does. Call only when `!is_empty()`.
    pub(crate) fn open_link(self: &Arc<Self>, link: LinkInfo) -> Verdict {
        let matching: Vec<Arc<Installed>> = self
            .lock()
            .faults
            .iter()
            .filter(|f| {
                !matches!(f.fault.kind, FaultKind::Loss { .. })
                    && f.fault.matches_from(link.from.as_deref())
                    && Self::targets(&f.fault, &link.to)
            })
            .cloned()
            .collect();
        if matching.is_empty() {
            return Verdict::Clear;
        }
        let mut decided = Vec::with_capacity(matching.len());
        for f in &matching {
            let hit = self.chance(f.fault.toxicity);
            decided.push((f.id, hit));
            if hit && f.fault.kind == FaultKind::Down {
                self.triggered(f, &link);
                return Verdict::Refuse;
            }
        }
        let link = Arc::new(FaultLink::new(self.clone(), link, decided));
        // A fault added while the link is open reaches it through the relay too.
        crate::sync::lock(&self.links).push(Arc::downgrade(&link));
        Verdict::Relay(link)
    }

    /// Registers a plain link just made (`client` is the connecting side's end) so faults
    /// added while it is open reach it: `latency` delays what is written from then on (the
    /// pipes ask the link, one atomic load per write while the table is empty), `down` and
    /// `reset_peer` reset it. `generation` is [`FaultTable::generation`] as read before the
    /// link's verdict: if a fault came in since, it is applied now.
    pub(crate) fn watch(self: &Arc<Self>, generation: u64, link: LinkInfo, client: &Endpoint) {
        let link = Arc::new(FaultLink::new(self.clone(), link, Vec::new()));
        let (up, down) = (client.tx.pipe(), client.rx.pipe());
        let _ = link.pipes.set([Arc::downgrade(up), Arc::downgrade(down)]);
        up.watch(link.clone(), Direction::Upstream);
        down.watch(link.clone(), Direction::Downstream);
        crate::sync::lock(&self.links).push(Arc::downgrade(&link));
        // The registry's lock orders this against `add`: a fault added before the push above
        // moved the generation we read now; one added after finds the link in the list.
        if self.generation() != generation {
            let faults: Vec<Arc<Installed>> = self.lock().faults.clone();
            for f in faults.iter().filter(|f| f.fault.kind.acts_on_open_links()) {
                link.take_whole(f);
            }
        }
    }

    /// What the faults do to one HTTP request that container `from` sends to pod port `port`
    /// and that is answered in-process (no link is made: an http container called by a
    /// sibling). Each request is its own connection: toxicity is rolled per request. Only
    /// `latency`, `down` and `reset_peer` act on a request. Call only when `!is_empty()`.
    pub fn on_request(&self, from: Option<&str>, port: u16) -> RequestFaults {
        let link = LinkInfo {
            from: from.map(str::to_string),
            to: LinkTo::Pod(port),
        };
        let matching: Vec<Arc<Installed>> = self
            .lock()
            .faults
            .iter()
            .filter(|f| f.fault.matches_from(from) && Self::targets(&f.fault, &link.to))
            .cloned()
            .collect();
        let mut out = RequestFaults::default();
        for f in matching {
            let acts = match f.fault.kind {
                FaultKind::Latency { .. } | FaultKind::Down | FaultKind::ResetPeer { .. } => {
                    self.chance(f.fault.toxicity)
                }
                _ => false,
            };
            if !acts {
                continue;
            }
            self.triggered(&f, &link);
            match f.fault.kind {
                FaultKind::Down => out.refuse = true,
                FaultKind::ResetPeer { timeout } => {
                    out.reset_after = Some(out.reset_after.map_or(timeout, |t: Duration| t.min(timeout)))
                }
                FaultKind::Latency { latency, jitter } => {
                    let draw = || {
                        let j = jitter.as_secs_f64() * (self.random() * 2.0 - 1.0);
                        Duration::from_secs_f64((latency.as_secs_f64() + j).max(0.0))
                    };
                    if f.fault.direction.covers(Direction::Upstream) {
                        out.request_delay = out.request_delay.max(draw());
                    }
                    if f.fault.direction.covers(Direction::Downstream) {
                        out.response_delay = out.response_delay.max(draw());
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// What becomes of a datagram from `from_port` to `to_port`, sent by `from`: None when a
    /// fault drops it (`down`, `loss`), else how long `latency` holds it back (usually zero).
    /// Call only when `!is_empty()`.
    pub(crate) fn datagram(&self, from: &str, from_port: u16, to_port: u16) -> Option<Duration> {
        let matching: Vec<(Arc<Installed>, Direction)> = self
            .lock()
            .faults
            .iter()
            .filter(|f| !f.fault.to.is_egress() && f.fault.matches_from(Some(from)))
            .filter_map(|f| {
                let way = if f.fault.to.port == to_port {
                    Direction::Upstream
                } else if f.fault.to.port == from_port {
                    Direction::Downstream
                } else {
                    return None;
                };
                f.fault.direction.covers(way).then(|| (f.clone(), way))
            })
            .collect();
        let link = || LinkInfo {
            from: Some(from.to_string()),
            to: LinkTo::Pod(to_port),
        };
        let mut delay = Duration::ZERO;
        for (f, _) in matching {
            let acts = match f.fault.kind {
                FaultKind::Down => self.chance(f.fault.toxicity),
                FaultKind::Loss { probability } => self.chance(f.fault.toxicity) && self.chance(probability),
                FaultKind::Latency { latency, jitter } if self.chance(f.fault.toxicity) => {
                    let j = jitter.as_secs_f64() * (self.random() * 2.0 - 1.0);
                    delay = delay.max(Duration::from_secs_f64((latency.as_secs_f64() + j).max(0.0)));
                    self.triggered(&f, &link());
                    false
                }
                // Stream faults do not apply to datagrams.
                _ => false,
            };
            if acts {
                self.triggered(&f, &link());
                return None;
            }
        }
        Some(delay)
    }

    /// Whether a datagram from `from_port` to `to_port`, sent by `from`, is delivered (not
    /// dropped by `down` or `loss`). Call only when `!is_empty()`.
    #[cfg(test)]
    pub(crate) fn deliver_datagram(&self, from: &str, from_port: u16, to_port: u16) -> bool {
        self.datagram(from, from_port, to_port).is_some()
    }

    /// Delivers a datagram to `inbox` after `delay`, behind the ones held back before on the
    /// same (from, to) port pair, so a link keeps its order. Bounded: past
    /// [`HELD_DATAGRAMS`] datagrams or [`HELD_DATAGRAM_BYTES`] bytes held in the pod, a
    /// datagram is dropped, as a full queue drops it.
    pub(crate) fn hold_datagram(
        self: &Arc<Self>,
        inbox: Arc<super::udp::UdpInbox>,
        from_port: u16,
        to_port: u16,
        delay: Duration,
        data: Vec<u8>,
    ) {
        let due = tokio::time::Instant::now() + delay;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime,
            // No runtime to wait on: deliver at once rather than never.
            Err(_) => return inbox.push(from_port, data),
        };
        let mut held = crate::sync::lock(&self.held);
        if held.count >= HELD_DATAGRAMS || held.bytes + data.len() > HELD_DATAGRAM_BYTES {
            return;
        }
        held.count += 1;
        held.bytes += data.len();
        let key = (from_port, to_port);
        let line = held.lines.entry(key).or_default();
        let due = line.back().map_or(due, |d| due.max(d.due));
        let start = line.is_empty();
        line.push_back(HeldDatagram {
            due,
            inbox,
            from_port,
            data,
        });
        drop(held);
        if start {
            runtime.spawn(deliver_held_datagrams(Arc::downgrade(self), key));
        }
    }
}

/// Datagrams a pod holds back for `latency` faults at most, all links together.
pub const HELD_DATAGRAMS: usize = 4096;
/// Payload bytes a pod holds back for `latency` faults at most, all links together.
pub const HELD_DATAGRAM_BYTES: usize = 4 * 1024 * 1024;

struct HeldDatagram {
    due: tokio::time::Instant,
    inbox: Arc<super::udp::UdpInbox>,
    from_port: u16,
    data: Vec<u8>,
}

/// Datagrams held back by `latency`, per (from, to) port pair, in send order.
#[derive(Default)]
struct HeldDatagrams {
    lines: std::collections::HashMap<(u16, u16), std::collections::VecDeque<HeldDatagram>>,
    count: usize,
    bytes: usize,
}

/// Delivers one port pair's held-back datagrams as they fall due; ends (and forgets the pair)
/// when none are left.
async fn deliver_held_datagrams(table: Weak<FaultTable>, key: (u16, u16)) {
    loop {
        let Some(t) = table.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut held = crate::sync::lock(&t.held);
            let held = &mut *held;
            let Some(line) = held.lines.get_mut(&key) else { return };
            while line.front().is_some_and(|d| d.due <= now) {
                if let Some(d) = line.pop_front() {
                    held.count -= 1;
                    held.bytes -= d.data.len();
                    due.push(d);
                }
            }
            let next = line.front().map(|d| d.due);
            if next.is_none() {
                held.lines.remove(&key);
            }
            next
        };
        drop(t);
        for d in due {
            d.inbox.push(d.from_port, d.data);
        }
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => return,
        }
    }
}

/// What the faults do to one in-process HTTP request ([`FaultTable::on_request`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFaults {
    /// `down`: the request fails as a refused connection would.
    pub refuse: bool,
    /// `reset_peer`: the request fails as a reset connection would, this long after it is sent.
    pub reset_after: Option<Duration>,
    /// `latency` upstream: the request reaches the container this much later.
    pub request_delay: Duration,
    /// `latency` downstream: the response head reaches the caller this much later.
    pub response_delay: Duration,
}

/// Installs a pod's `[[faults]]` in its network and reports every fault notice as a pod
/// event (added, removed, first triggered).
pub fn install(network: &super::PodNetwork, faults: &[Fault], events: &crate::status::Events) {
    use crate::status::EventKind;
    let events = events.clone();
    network.faults().set_observer(Arc::new(move |notice| {
        let kind = match notice {
            FaultNotice::Added { id, fault } => EventKind::FaultAdded { id, fault },
            FaultNotice::Removed { id, fault } => EventKind::FaultRemoved { id, fault },
            FaultNotice::Triggered { id, link } => EventKind::FaultTriggered { id, link },
        };
        events.emit(None, kind);
    }));
    for fault in faults {
        network.faults().add(fault.clone());
    }
}

/// Removes its fault when dropped.
#[must_use = "the fault is removed when the guard is dropped"]
pub struct FaultGuard {
    table: Weak<FaultTable>,
    id: FaultId,
}

impl FaultGuard {
    pub fn id(&self) -> FaultId {
        self.id
    }
}

impl fmt::Debug for FaultGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultGuard({})", self.id)
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        if let Some(t) = self.table.upgrade() {
            t.remove(self.id);
        }
    }
}

/// One TCP link as the fault table knows it: which faults were decided for it (toxicity is
/// rolled once per link and fault), the switch that closes a relayed one, and for a plain one
/// the latency its pipes add, cached per table generation.
pub(crate) struct FaultLink {
    table: Arc<FaultTable>,
    link: LinkInfo,
    decided: Mutex<Vec<(FaultId, bool)>>,
    /// Made on first use: plain links never need it.
    cancel: std::sync::OnceLock<CancellationToken>,
    /// The connecting side's two pipes (up, down): reset them and the link is reset, for a
    /// relayed link too (its relay passes the reset on).
    pipes: std::sync::OnceLock<[Weak<Pipe>; 2]>,
    /// 1 + the table generation `latency`/`jitter` were computed at (0: never).
    seen: AtomicU64,
    /// Per direction (up, down), in nanoseconds.
    latency: [AtomicU64; 2],
    jitter: [AtomicU64; 2],
}

impl fmt::Debug for FaultLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultLink({})", self.link)
    }
}

fn way_index(way: Way) -> usize {
    match way {
        Direction::Downstream => 1,
        _ => 0,
    }
}

impl FaultLink {
    fn new(table: Arc<FaultTable>, link: LinkInfo, decided: Vec<(FaultId, bool)>) -> FaultLink {
        FaultLink {
            table,
            link,
            decided: Mutex::new(decided),
            cancel: std::sync::OnceLock::new(),
            pipes: std::sync::OnceLock::new(),
            seen: AtomicU64::new(0),
            latency: [AtomicU64::new(0), AtomicU64::new(0)],
            jitter: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn cancel(&self) -> &CancellationToken {
        self.cancel.get_or_init(CancellationToken::new)
    }

    /// Whether fault `f` acts on this link (rolled for toxicity the first time it is asked).
    fn hit(&self, decided: &mut Vec<(FaultId, bool)>, f: &Installed) -> bool {
        match decided.iter().find(|(id, _)| *id == f.id) {
            Some((_, hit)) => *hit,
            None => {
                let hit = self.table.chance(f.fault.toxicity);
                decided.push((f.id, hit));
                hit
            }
        }
    }

    fn aims_at_me(&self, f: &Fault) -> bool {
        f.matches_from(self.link.from.as_deref()) && FaultTable::targets(f, &self.link.to)
    }

    /// The faults acting on this link in direction `way` right now (removed ones no longer,
    /// ones added since the link opened too, each rolled for toxicity once).
    fn active(&self, way: Way) -> Vec<Fault> {
        if self.table.is_empty() {
            return Vec::new();
        }
        let faults: Vec<Arc<Installed>> = self.table.lock().faults.clone();
        let mut decided = crate::sync::lock(&self.decided);
        let mut out = Vec::new();
        for f in faults {
            if !(f.fault.direction.covers(way) && self.aims_at_me(&f.fault)) {
                continue;
            }
            if self.hit(&mut decided, &f) {
                self.table.triggered(&f, &self.link);
                out.push(f.fault.clone());
            }
        }
        out
    }

    /// How long bytes written now in direction `way` of this plain link are held back by
    /// `latency` faults. The hot path: one atomic load while the table is empty, three while
    /// it holds faults that did not change since the last look.
    #[inline]
    pub(crate) fn delay(&self, way: Way) -> Duration {
        if self.table.is_empty() {
            return Duration::ZERO;
        }
        let generation = self.table.generation();
        if self.seen.load(Ordering::Acquire) != generation + 1 {
            self.refresh_latency();
        }
        let i = way_index(way);
        let latency = self.latency[i].load(Ordering::Relaxed);
        let jitter = self.jitter[i].load(Ordering::Relaxed);
        if jitter == 0 {
            return Duration::from_nanos(latency);
        }
        let j = jitter as f64 * (self.table.random() * 2.0 - 1.0);
        Duration::from_nanos((latency as f64 + j).max(0.0) as u64)
    }

    #[cold]
    fn refresh_latency(&self) {
        let (generation, faults) = {
            let st = self.table.lock();
            (self.table.generation(), st.faults.clone())
        };
        let mut decided = crate::sync::lock(&self.decided);
        let mut latency = [0u64; 2];
        let mut jitter = [0u64; 2];
        for f in &faults {
            let FaultKind::Latency { latency: l, jitter: j } = f.fault.kind else {
                continue;
            };
            if !self.aims_at_me(&f.fault) || !self.hit(&mut decided, f) {
                continue;
            }
            self.table.triggered(f, &self.link);
            for way in [Direction::Upstream, Direction::Downstream] {
                let i = way_index(way);
                let l = l.as_nanos().min(u64::MAX as u128) as u64;
                if f.fault.direction.covers(way) && l >= latency[i] {
                    latency[i] = l;
                    jitter[i] = j.as_nanos().min(u64::MAX as u128) as u64;
                }
            }
        }
        for i in 0..2 {
            self.latency[i].store(latency[i], Ordering::Relaxed);
            self.jitter[i].store(jitter[i], Ordering::Relaxed);
        }
        self.seen.store(generation + 1, Ordering::Release);
    }

    /// Applies a fault that acts on the link as a whole (`down`, `reset_peer`) to this open
    /// link, if it aims at it: `down` resets it at once (what a guest sees when a stateful
    /// middlebox drops its connection: `connection-reset` on the next or pending read or
    /// write), `reset_peer` after its timeout, counted from now (as toxiproxy counts from the
    /// moment a toxic is added to a live connection), if the fault is still installed then.
    fn take_whole(self: &Arc<Self>, f: &Arc<Installed>) {
        if !self.aims_at_me(&f.fault) || !self.hit(&mut crate::sync::lock(&self.decided), f) {
            return;
        }
        let after = match f.fault.kind {
            FaultKind::Down => Duration::ZERO,
            FaultKind::ResetPeer { timeout } => timeout,
            _ => return,
        };
        self.table.triggered(f, &self.link);
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !after.is_zero() => {
                let (link, f) = (Arc::downgrade(self), Arc::downgrade(f));
                runtime.spawn(async move {
                    tokio::time::sleep(after).await;
                    if let (Some(link), Some(f)) = (link.upgrade(), f.upgrade())
                        && link.table.lock().faults.iter().any(|g| Arc::ptr_eq(g, &f))
                    {
                        link.reset();
                    }
                });
            }
            _ => self.reset(),
        }
    }

    fn reset(&self) {
        for pipe in self.pipes.get().into_iter().flatten() {
            if let Some(p) = pipe.upgrade() {
                p.reset();
            }
        }
    }
}

/// The four pipes of a relayed link, so the link can be reset or closed as a whole.
struct LinkPipes {
    pipes: [Arc<Pipe>; 4],
}

impl LinkPipes {
    fn reset(&self) {
        for p in &self.pipes {
            p.reset();
        }
    }
}

/// Puts a relay between the connecting side and `inner` (the connecting side's end as the
/// link was made): returns the end to hand to the connecting side instead. `client` pays for
/// the new pipes' bytes, as it does for the plain link's.
pub(crate) fn interpose(
    link: Arc<FaultLink>,
    inner: Endpoint,
    capacity: usize,
    client: &Arc<SocketBudget>,
    host: &Arc<SocketBudget>,
) -> Result<Endpoint, super::NetError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| super::NetError::NotSupported)?;
    let (outer, relay) = Endpoint::pair(capacity, (client, inner.local_port), (host, inner.peer_port));
    let pipes = Arc::new(LinkPipes {
        pipes: [
            relay.rx.pipe().clone(),
            relay.tx.pipe().clone(),
            inner.rx.pipe().clone(),
            inner.tx.pipe().clone(),
        ],
    });
    // Resetting the connecting side's pipes resets the whole link: the relay passes it on.
    let _ = link
        .pipes
        .set([Arc::downgrade(relay.rx.pipe()), Arc::downgrade(relay.tx.pipe())]);
    // Faults that act on the link as a whole: reset (reset_peer) or close (timeout) after a
    // while, counted from the open.
    for f in link.active(Direction::Both) {
        let (after, reset) = match f.kind {
            FaultKind::ResetPeer { timeout } => (timeout, true),
            FaultKind::Timeout { timeout } if !timeout.is_zero() => (timeout, false),
            _ => continue,
        };
        let (link, pipes) = (link.clone(), pipes.clone());
        runtime.spawn(async move {
            tokio::select! {
                _ = link.cancel().cancelled() => {}
                _ = tokio::time::sleep(after) => if reset { pipes.reset() } else { link.cancel().cancel() },
            }
        });
    }
    runtime.spawn(pump(
        relay.rx,
        inner.tx,
        link.clone(),
        pipes.clone(),
        Direction::Upstream,
    ));
    runtime.spawn(pump(inner.rx, relay.tx, link, pipes, Direction::Downstream));
    Ok(outer)
}

/// Carries one direction of a faulty link, applying the faults active for it to each chunk.
async fn pump(mut src: PipeReader, mut dst: PipeWriter, link: Arc<FaultLink>, pipes: Arc<LinkPipes>, way: Way) {
    let mut buf = vec![0u8; super::pipe::MAX_CHUNK];
    let mut through: u64 = 0;
    let mut timeout_armed = false;
    loop {
        let n = tokio::select! {
            _ = link.cancel().cancelled() => break,
            r = src.read(&mut buf) => r,
        };
        let n = match n {
            Ok(0) => {
                // End of stream: slow_close delays the FIN.
                let delay = link
                    .active(way)
                    .iter()
                    .filter_map(|f| match f.kind {
                        FaultKind::SlowClose { delay } => Some(delay),
                        _ => None,
                    })
                    .max();
                if let Some(delay) = delay {
                    tokio::select! {
                        _ = link.cancel().cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                let _ = dst.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => {
                // The sending side reset: so does the link.
                pipes.reset();
                return;
            }
        };
        let mut data = &buf[..n];
        let active = link.active(way);
        let mut slices: Option<(usize, usize, Duration)> = None;
        let mut rate: Option<u64> = None;
        let mut delay = Duration::ZERO;
        let mut hold = false;
        let mut limit_reached = false;
        for f in &active {
            match f.kind {
                FaultKind::Down => {
                    pipes.reset();
                    return;
                }
                FaultKind::ResetPeer { .. } => {}
                FaultKind::Latency { latency, jitter } => {
                    let j = jitter.as_secs_f64() * (link_random(&link) * 2.0 - 1.0);
                    delay = delay.max(Duration::from_secs_f64((latency.as_secs_f64() + j).max(0.0)));
                }
                FaultKind::Timeout { timeout } => {
                    hold = true;
                    if !timeout_armed && !timeout.is_zero() {
                        timeout_armed = true;
                        let link = link.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(timeout).await;
                            link.cancel().cancel();
                        });
                    }
                }
                FaultKind::LimitData { bytes } => {
                    let room = bytes.saturating_sub(through);
                    if (data.len() as u64) >= room {
                        // Deliver what fits, then close the link.
                        data = &data[..room as usize];
                        limit_reached = true;
                    }
                }
                FaultKind::Bandwidth { rate: r } => rate = Some(rate.map_or(r, |old| old.min(r))),
                FaultKind::Slicer {
                    average_size,
                    size_variation,
                    delay,
                } => slices = Some((average_size, size_variation, delay)),
                FaultKind::SlowClose { .. } | FaultKind::Loss { .. } => {}
            }
        }
        if hold {
            // Swallowed: nothing gets through while a `timeout` fault holds the link.
            continue;
        }
        if !delay.is_zero() {
            tokio::select! {
                _ = link.cancel().cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        through += data.len() as u64;
        if write_paced(&mut dst, data, rate, slices, &link).await.is_err() {
            // Nobody reads on the other side any more: the sender's writes fail from now on.
            src.pipe().close_reader();
            return;
        }
        if limit_reached {
            link.cancel().cancel();
            break;
        }
    }
    // Closed by a fault (limit_data, timeout) or reset: FIN towards the reader, and the
    // writer's further writes fail.
    src.pipe().close_reader();
    let _ = dst.shutdown().await;
}

fn link_random(link: &FaultLink) -> f64 {
    link.table.random()
}

/// Writes `data`, in slices (`slicer`) and at most `rate` bytes per second (`bandwidth`).
async fn write_paced(
    dst: &mut PipeWriter,
    mut data: &[u8],
    rate: Option<u64>,
    slices: Option<(usize, usize, Duration)>,
    link: &FaultLink,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut size = data.len();
        let mut pause = Duration::ZERO;
        if let Some((avg, var, delay)) = slices {
            let var = var.min(avg.saturating_sub(1));
            let jitter = (link_random(link) * (2 * var + 1) as f64) as usize;
            size = size.min((avg - var + jitter).max(1));
            pause = delay;
        }
        if let Some(rate) = rate {
            // Slices of at most a tenth of a second's worth keep the rate smooth.
            size = size.min((rate / 10).max(1) as usize);
            pause = pause.max(Duration::from_secs_f64(size as f64 / rate as f64));
        }
        dst.write_all(&data[..size]).await?;
        data = &data[size..];
        if !pause.is_zero() {
            tokio::select! {
                _ = link.cancel().cancelled() => return Ok(()),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "db:5432".parse::<FaultTarget>().unwrap(),
            FaultTarget {
                host: Some("db".into()),
                port: 5432
            }
        );
        assert_eq!("80".parse::<FaultTarget>().unwrap().host, None);
        assert!("db:".parse::<FaultTarget>().is_err());
        assert!(":80".parse::<FaultTarget>().is_err());
        assert!("0".parse::<FaultTarget>().is_err());
        assert!("example.com:443".parse::<FaultTarget>().unwrap().is_egress());
        assert!("10.0.0.1:443".parse::<FaultTarget>().unwrap().is_egress());
        assert!(!"127.0.0.1:443".parse::<FaultTarget>().unwrap().is_egress());
        assert_eq!("db:1".parse::<FaultTarget>().unwrap().container(), Some("db"));
        assert_eq!("localhost:1".parse::<FaultTarget>().unwrap().container(), None);
    }

    #[test]
    fn empty_table_is_flagged_and_guards_remove() {
        let t = FaultTable::new();
        assert!(t.is_empty());
        let g = t.add_guarded(Fault::new(FaultKind::Down, "80".parse().unwrap()));
        assert!(!t.is_empty());
        assert_eq!(t.list().len(), 1);
        drop(g);
        assert!(t.is_empty());
        assert!(!t.remove(1));
    }

    #[test]
    fn loss_drops_about_the_probability() {
        let t = FaultTable::new();
        t.add(Fault::new(FaultKind::Loss { probability: 0.5 }, "53".parse().unwrap()));
        let delivered = (0..10_000).filter(|_| t.deliver_datagram("a", 40000, 53)).count();
        assert!((4000..6000).contains(&delivered), "{delivered}");
        // Other ports are untouched.
        assert!((0..1000).all(|_| t.deliver_datagram("a", 40000, 54)));
    }

    #[test]
    fn bad_probabilities_are_problems() {
        let f = Fault::new(FaultKind::Loss { probability: 1.5 }, "53".parse().unwrap());
        assert!(f.problem().is_some());
        let f = Fault::new(FaultKind::Down, "53".parse().unwrap()).toxicity(-0.1);
        assert!(f.problem().is_some());
    }
}
