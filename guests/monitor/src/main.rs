//! `monitor`: the sidecar of the monitoring-sidecar example. Every period it requests the
//! application over the pod's `localhost`, with nothing but `std::net`, and raises an alert
//! when the answer is wrong or missing: a line `ALERT URL: REASON` on stdout and a file (by
//! default `/alerts/alert.txt`) that anything watching the volume can pick up. When the
//! application answers correctly again it prints `RECOVERED URL ...` and removes the file.
//!
//! Usage: `monitor --url http://localhost:PORT/PATH [--expect TEXT] [--every DURATION]
//! [--timeout DURATION] [--failures N] [--alert-file PATH]`
//! - `--expect TEXT`      the body must contain TEXT (default: any body; the status must be 200)
//! - `--every DURATION`   time between checks (default `2s`)
//! - `--timeout DURATION` a check that takes longer fails (default `1s`)
//! - `--failures N`       failed checks in a row that raise the alert (default 2), so that
//!   one lost request does not page anyone
//!
//! The alert state lives in the alert file, not only in memory: a monitor that is restarted
//! while an alert is raised still clears it when the application recovers.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Responses larger than this are cut: a health answer is small.
const MAX_RESPONSE: u64 = 1 << 20;

struct Options {
    url: String,
    /// `host:port` and path, split from `url`.
    authority: String,
    path: String,
    expect: Option<String>,
    every: Duration,
    timeout: Duration,
    failures: u32,
    alert_file: String,
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => fail(&format!(
            "{message}\nusage: monitor --url http://localhost:PORT/PATH [--expect TEXT] [--every DURATION] \
             [--timeout DURATION] [--failures N] [--alert-file PATH]"
        )),
    };
    let expect = options
        .expect
        .as_deref()
        .map_or(String::new(), |text| format!(" containing {text:?}"));
    println!(
        "checking {} every {:?}: status 200{expect}; alert after {} failed checks in a row, in {}",
        options.url, options.every, options.failures, options.alert_file
    );
    flush_stdout();
    let mut failed_in_a_row = 0u32;
    let mut alert_raised_at = Path::new(&options.alert_file).exists().then(Instant::now);
    let mut seen_healthy = false;
    loop {
        match check(&options) {
            Ok(()) => {
                failed_in_a_row = 0;
                if let Some(raised) = alert_raised_at.take() {
                    clear_alert(&options, raised.elapsed());
                } else if !seen_healthy {
                    println!("OK {}: healthy", options.url);
                }
                seen_healthy = true;
            }
            Err(reason) => {
                failed_in_a_row += 1;
                if alert_raised_at.is_none() {
                    if failed_in_a_row >= options.failures {
                        raise_alert(&options, &reason, failed_in_a_row);
                        alert_raised_at = Some(Instant::now());
                    } else {
                        // Not an alert yet, but a reader of the log should see blips too.
                        println!("check failed ({failed_in_a_row} of {}): {reason}", options.failures);
                    }
                }
            }
        }
        flush_stdout();
        std::thread::sleep(options.every);
    }
}

fn raise_alert(options: &Options, reason: &str, failed: u32) {
    println!("ALERT {}: {reason} ({failed} failed checks in a row)", options.url);
    let text = format!(
        "ALERT\nurl={}\nreason={reason}\nfailed_checks={failed}\nsince_unix_ms={}\n",
        options.url,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    // Atomically, so a watcher never reads half an alert.
    let temp = format!("{}.tmp", options.alert_file);
    if let Err(e) = std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, &options.alert_file)) {
        // The log line is already out; a broken volume must not stop the checks.
        eprintln!("monitor: cannot write {}: {e}", options.alert_file);
    }
}

fn clear_alert(options: &Options, lasted: Duration) {
    println!(
        "RECOVERED {}: healthy again after {:.1}s",
        options.url,
        lasted.as_secs_f64()
    );
    match std::fs::remove_file(&options.alert_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("monitor: cannot remove {}: {e}", options.alert_file),
    }
}

/// One check: `Ok` when the answer is right, else why not, in words for the alert.
fn check(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let addr = options
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", options.authority))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", options.authority))?;
    let mut stream = match TcpStream::connect_timeout(&addr, options.timeout) {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => TcpStream::connect(addr),
        other => other,
    }
    .map_err(|e| format!("no answer: connect failed: {e}"))?;
    // Best effort: where timeouts are unsupported a hung application is still caught, by the
    // next check never starting, which the pod's liveness probe is the better tool for.
    let _ = stream.set_read_timeout(Some(options.timeout));
    let _ = stream.set_write_timeout(Some(options.timeout));
    write!(
        stream,
        "GET {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        options.path, options.authority
    )
    .map_err(|e| format!("no answer: sending the request failed: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer: reading the response failed: {e}"))?;
    if started.elapsed() > options.timeout {
        return Err(format!("too slow: answered after {:?}", started.elapsed()));
    }
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(if response.is_empty() {
            "no answer: empty response".into()
        } else {
            "malformed response".into()
        });
    };
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("wrong answer: status {status}"));
    }
    if let Some(expected) = &options.expect
        && !body.contains(expected.as_str())
    {
        let shown: String = body.trim().chars().take(80).collect();
        return Err(format!("wrong answer: body {shown:?} does not contain {expected:?}"));
    }
    Ok(())
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut url = None;
    let mut options = Options {
        url: String::new(),
        authority: String::new(),
        path: String::new(),
        expect: None,
        every: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        failures: 2,
        alert_file: "/alerts/alert.txt".into(),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--expect" => options.expect = Some(value()?),
            "--every" => options.every = parse_duration(&value()?)?,
            "--timeout" => options.timeout = parse_duration(&value()?)?,
            "--failures" => {
                let text = value()?;
                options.failures = text
                    .parse()
                    .map_err(|e| format!("--failures {text:?} is not a number: {e}"))?;
            }
            "--alert-file" => options.alert_file = value()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !authority.contains(':') {
        return Err(format!(
            "{url:?} has no port; write it like http://localhost:8080/health"
        ));
    }
    options.authority = authority.to_string();
    options.path = if path.is_empty() { "/".into() } else { path.to_string() };
    options.url = url;
    options.failures = options.failures.max(1);
    if options.timeout.is_zero() {
        return Err("--timeout must be longer than zero".into());
    }
    Ok(options)
}

/// `250ms`, `2s`, `1m`: the units a spec writer would reach for.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
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

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

fn fail(message: &str) -> ! {
    eprintln!("monitor: {message}");
    let _ = std::io::stderr().flush();
    std::process::exit(1);
}
