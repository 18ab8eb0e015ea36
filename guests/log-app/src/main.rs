//! `log-app`: the application half of the logging-sidecar example. It stands in for any program
//! that logs to files instead of to stdout: every period it appends numbered request lines
//! (`seq=N ts=... level=... msg=...`) to `DIR/app.log` and one metrics line to
//! `DIR/metrics.log`, in a volume it shares with a shipper sidecar. The numbering is what lets
//! the example's test prove that the shipper neither loses nor duplicates a line.
//!
//! Usage: `log-app [--dir DIR] [--every DURATION] [--lines N] [--count N]`
//! - `--dir DIR`          where to write (default `/logs`)
//! - `--every DURATION`   the period, e.g. `1s`, `250ms` (default `1s`)
//! - `--lines N`          request lines per period (default 1)
//! - `--count N`          stop logging after line N and stay idle (default 0: never stop);
//!   the app stays alive so that a pod restarting exited containers leaves it be
//!
//! A restarted app continues the numbering after the last complete line of `app.log`, and drops
//! an incomplete last line left by a run that was killed mid-write, so the file only ever holds
//! whole lines numbered 1, 2, 3, ... (the shipper ships only whole lines, so it never saw it).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Enough of the file's end to hold its last complete line.
const TAIL_BYTES: u64 = 4096;

struct Options {
    dir: String,
    every: Duration,
    lines: u64,
    count: u64,
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => fail(&format!(
            "{message}\nusage: log-app [--dir DIR] [--every DURATION] [--lines N] [--count N]"
        )),
    };
    if let Err(message) = run(&options) {
        fail(&message);
    }
}

fn run(options: &Options) -> Result<(), String> {
    let log_path = format!("{}/app.log", options.dir);
    let metrics_path = format!("{}/metrics.log", options.dir);
    let last_seq = repair_and_find_last_seq(&log_path)?;
    // The metrics file gets the same repair; its lines carry no number to resume.
    repair_tail(&metrics_path)?;
    println!(
        "logging to {log_path} and {metrics_path} every {:?} ({} line(s) per period), starting at seq={}",
        options.every,
        options.lines,
        last_seq + 1
    );
    flush_stdout();

    let mut rng = Rng::seeded(now_ms() ^ last_seq);
    let mut seq = last_seq;
    let mut errors_this_run = 0u64;
    loop {
        if options.count > 0 && seq >= options.count {
            println!("wrote {seq} lines; idle");
            flush_stdout();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let mut batch = String::new();
        let mut latency_sum = 0u64;
        let mut in_batch = 0u64;
        for _ in 0..options.lines {
            if options.count > 0 && seq >= options.count {
                break;
            }
            seq += 1;
            in_batch += 1;
            let latency = 2 + rng.below(40);
            latency_sum += latency;
            let item = rng.below(100);
            let (level, status) = if rng.below(50) == 0 {
                ("warn", 500)
            } else {
                ("info", 200)
            };
            if status >= 500 {
                errors_this_run += 1;
            }
            batch.push_str(&format!(
                "seq={seq} ts={} level={level} msg=\"GET /items/{item}\" status={status} latency_ms={latency}\n",
                now_ms()
            ));
        }
        // One write per period: a reader sees whole lines or the start of the batch, and the
        // shipper only ships up to the last newline anyway.
        append(&log_path, batch.as_bytes())?;
        let average = if in_batch > 0 {
            latency_sum as f64 / in_batch as f64
        } else {
            0.0
        };
        // Counters restart with the app, as Prometheus counters do; requests_total follows seq.
        let metrics = format!(
            "ts={} requests_total={seq} errors_total={errors_this_run} latency_ms_avg={average:.1}\n",
            now_ms()
        );
        append(&metrics_path, metrics.as_bytes())?;
        std::thread::sleep(options.every);
    }
}

/// Cuts an incomplete last line from `path` and returns the `seq=` of the last whole line (0
/// when the file is missing or empty).
fn repair_and_find_last_seq(path: &str) -> Result<u64, String> {
    let Some(tail) = repair_tail(path)? else { return Ok(0) };
    let Some(last) = tail.lines().next_back() else {
        return Ok(0);
    };
    let Some(number) = last.strip_prefix("seq=").and_then(|rest| rest.split(' ').next()) else {
        return Err(format!("the last line of {path} does not start with seq=N: {last:?}"));
    };
    number
        .parse::<u64>()
        .map_err(|e| format!("the last line of {path} has a bad seq {number:?}: {e}"))
}

/// Truncates `path` after its last newline (a killed run may have left half a line) and
/// returns the file's last bytes, up to [`TAIL_BYTES`], starting at a line boundary.
fn repair_tail(path: &str) -> Result<Option<String>, String> {
    if !Path::new(path).exists() {
        return Ok(None);
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("stat {path}: {e}"))?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| format!("seek {path}: {e}"))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| format!("read {path}: {e}"))?;
    let whole = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < tail.len() {
        let keep = start + whole as u64;
        println!(
            "dropping an incomplete last line of {path} ({} bytes)",
            tail.len() - whole
        );
        file.set_len(keep).map_err(|e| format!("truncate {path}: {e}"))?;
    }
    tail.truncate(whole);
    // A tail cut from the middle of the file starts mid-line: skip to the first boundary.
    let first = if start > 0 {
        tail.iter().position(|&b| b == b'\n').map_or(tail.len(), |i| i + 1)
    } else {
        0
    };
    Ok(Some(String::from_utf8_lossy(&tail[first..]).into_owned()))
}

fn append(path: &str, bytes: &[u8]) -> Result<(), String> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    file.write_all(bytes).map_err(|e| format!("write {path}: {e}"))
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        dir: "/logs".into(),
        every: Duration::from_secs(1),
        lines: 1,
        count: 0,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => options.dir = value()?,
            "--every" => options.every = parse_duration(&value()?)?,
            "--lines" => options.lines = parse_number(&flag, &value()?)?,
            "--count" => options.count = parse_number(&flag, &value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.lines == 0 {
        return Err("--lines must be at least 1".into());
    }
    Ok(options)
}

fn parse_number(flag: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|e| format!("{flag} {text:?} is not a number: {e}"))
}

/// `250ms`, `2s`, `1m`: the units a spec writer would reach for.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 2s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("{text:?} is not a duration like 500ms, 2s or 1m")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

fn fail(message: &str) -> ! {
    eprintln!("log-app: {message}");
    let _ = std::io::stderr().flush();
    std::process::exit(1);
}

/// xorshift64: varied-looking request lines without a crate.
struct Rng(u64);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
