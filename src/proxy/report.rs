//! How the front proxy reports connections it refused, closed or held back: the first of a kind
//! at once, with the client's address, then at most one summary event per interval with a
//! count ("front proxy refused 2,913 connections in the last 1s: limit 1024 open per client
//! address"). Under a flood of clients this is a line a second, never one per connection. A kind
//! that stayed quiet for a whole interval is reported at once again the next time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::status::{EventKind, Events};

/// The kinds of refusal, each reported and summed up on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The proxy was at its connection limit; the client waited in the listen backlog.
    AtLimit,
    /// The client's address already held its share of connections.
    PerAddress,
    /// The pod was not ready within the readiness wait.
    NotReady,
    /// Nothing could be reached on the pod port.
    Unreachable,
    /// `accept` itself failed (e.g. out of file descriptors).
    AcceptFailed,
}

const KINDS: [Refusal; 5] = [
    Refusal::AtLimit,
    Refusal::PerAddress,
    Refusal::NotReady,
    Refusal::Unreachable,
    Refusal::AcceptFailed,
];

impl Refusal {
    fn index(self) -> usize {
        self as usize
    }

    /// The summary line of `name` (the door: "front proxy", "shared entrance").
    fn summary(self, name: &str, connections: &str, interval: &str, reason: &str) -> String {
        match self {
            Refusal::AtLimit => {
                format!("{name} held back {connections} in the listen backlog in the last {interval}: {reason}")
            }
            Refusal::PerAddress | Refusal::NotReady => {
                format!("{name} refused {connections} in the last {interval}: {reason}")
            }
            Refusal::Unreachable => format!("{name} closed {connections} in the last {interval}: {reason}"),
            Refusal::AcceptFailed => {
                format!("{name} failed to accept {connections} in the last {interval}: {reason}")
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    /// Reported (at once) during the current or the last interval.
    reported: bool,
    /// Counted since the last summary.
    count: u64,
    /// Why, for the summary (the latest reason in the interval).
    reason: String,
}

/// Counts refusals and emits their events; [`Reporter::run`] writes the summaries.
pub(super) struct Reporter {
    name: &'static str,
    events: Events,
    interval: Duration,
    tallies: Mutex<[Tally; KINDS.len()]>,
}

impl Reporter {
    pub(super) fn new(name: &'static str, events: Events, interval: Duration) -> Reporter {
        Reporter {
            name,
            events,
            interval: interval.max(Duration::from_millis(1)),
            tallies: Mutex::new(Default::default()),
        }
    }

    /// One connection refused: reported at once if it is the first of its kind lately
    /// (`first` is that event's message), else counted for the next summary (`reason` says why).
    pub(super) fn record(&self, kind: Refusal, first: impl FnOnce() -> String, reason: impl FnOnce() -> String) {
        let report_now = {
            let mut tallies = self.lock();
            let tally = &mut tallies[kind.index()];
            if tally.reported {
                tally.count += 1;
                tally.reason = reason();
                false
            } else {
                tally.reported = true;
                true
            }
        };
        if report_now {
            self.warn(first());
        }
    }

    /// Reports `message` at once unless this kind was reported lately; counts nothing.
    pub(super) fn notice(&self, kind: Refusal, message: impl FnOnce() -> String) {
        let report_now = {
            let mut tallies = self.lock();
            let tally = &mut tallies[kind.index()];
            !std::mem::replace(&mut tally.reported, true)
        };
        if report_now {
            self.warn(message());
        }
    }

    /// Writes one summary per kind and interval until `stop`.
    pub(super) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.summarise(),
            }
        }
    }

    fn summarise(&self) {
        let mut summaries = Vec::new();
        {
            let mut tallies = self.lock();
            for kind in KINDS {
                let tally = &mut tallies[kind.index()];
                if tally.count == 0 {
                    // Quiet for a whole interval: the next one is news again.
                    tally.reported = false;
                    continue;
                }
                let connections = format!(
                    "{} {}",
                    count(tally.count),
                    if tally.count == 1 { "connection" } else { "connections" }
                );
                let interval = humantime::format_duration(self.interval).to_string();
                summaries.push(kind.summary(self.name, &connections, &interval, &tally.reason));
                tally.count = 0;
            }
        }
        for summary in summaries {
            self.warn(summary);
        }
    }

    fn warn(&self, message: String) {
        self.events.emit(None, EventKind::Warning { message });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Tally; KINDS.len()]> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        crate::sync::lock(&self.tallies)
    }
}

/// `n` with thousands separators, as people read it: 16,384.
pub(super) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_with_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(2913), "2,913");
        assert_eq!(count(16384), "16,384");
        assert_eq!(count(1_000_000), "1,000,000");
    }

    fn warnings(events: &Events) -> Vec<String> {
        events
            .all()
            .into_iter()
            .filter_map(|event| match event.kind {
                EventKind::Warning { message } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_first_refusal_is_reported_at_once_and_the_rest_summed_up() {
        let events = Events::new(100);
        let reporter = Reporter::new("front proxy", events.clone(), Duration::from_secs(1));
        for i in 0..2914 {
            reporter.record(
                Refusal::PerAddress,
                || format!("front proxy refused client {i}"),
                || "limit 1024 open per client address".into(),
            );
        }
        assert_eq!(warnings(&events), ["front proxy refused client 0"]);
        reporter.summarise();
        assert_eq!(
            warnings(&events)[1],
            "front proxy refused 2,913 connections in the last 1s: limit 1024 open per client address"
        );
        // A quiet interval: no line, and the next refusal is news again.
        reporter.summarise();
        reporter.summarise();
        assert_eq!(warnings(&events).len(), 2);
        reporter.record(Refusal::PerAddress, || "again".into(), String::new);
        assert_eq!(warnings(&events).len(), 3);
    }
}
