//! `puller`: the sidecar of the content-puller example. Every period it fetches files from an
//! HTTP source outside the pod (the pod's egress rules must allow it, e.g.
//! `allowed_outbound_hosts = ["host.wasmpod.internal:8000"]` for a server on the host's
//! loopback) and, when a file changed, replaces it in the volume a web server serves from.
//!
//! Usage: `puller --source http://HOST:PORT[/PREFIX] [--to DIR] [--every DURATION]
//! [--timeout DURATION] [FILE...]` (defaults `/site`, `5s`, `5s`, `index.html`); each FILE is
//! fetched from `SOURCE/FILE` and kept as `DIR/FILE`.
//!
//! The web server must never serve half a file. So a file is published only once its whole body
//! arrived (as many bytes as `content-length` said, or a complete chunked body), and it is
//! written to a temp file in the same directory, flushed to disk and renamed over the served
//! one: a rename within one file system is atomic, so a reader opens either the old file or the
//! new one. A failed fetch leaves the served file as it was.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Bodies larger than this are refused: the puller holds one in memory.
const MAX_BODY: u64 = 64 << 20;

struct Options {
    source: String,
    /// `host:port` and path prefix, split from `source`.
    authority: String,
    prefix: String,
    to: String,
    every: Duration,
    timeout: Duration,
    files: Vec<String>,
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => fail(&format!(
            "{message}\nusage: puller --source http://HOST:PORT[/PREFIX] [--to DIR] [--every DURATION] \
             [--timeout DURATION] [FILE...]"
        )),
    };
    println!(
        "pulling {} from {} into {} every {:?}",
        options.files.join(", "),
        options.source,
        options.to,
        options.every
    );
    flush_stdout();
    // The last error per file, so that a source that is down is reported once, not every period.
    let mut last_error: Vec<Option<String>> = vec![None; options.files.len()];
    loop {
        for (file, last_error) in options.files.iter().zip(last_error.iter_mut()) {
            match pull(&options, file) {
                Ok(outcome) => {
                    if last_error.take().is_some() {
                        println!("{file}: the source answers again");
                    }
                    if let Some(message) = outcome {
                        println!("{message}");
                    }
                }
                Err(message) => {
                    if last_error.as_deref() != Some(message.as_str()) {
                        println!(
                            "{file}: {message}; keeping the current file and retrying every {:?}",
                            options.every
                        );
                        *last_error = Some(message);
                    }
                }
            }
        }
        flush_stdout();
        std::thread::sleep(options.every);
    }
}

/// Fetches one file and publishes it if it changed; `Ok(Some(message))` when it did.
fn pull(options: &Options, file: &str) -> Result<Option<String>, String> {
    let url_path = format!("{}/{file}", options.prefix);
    let body = get(options, &url_path)?;
    let target = format!("{}/{file}", options.to);
    if std::fs::read(&target).is_ok_and(|current| current == body) {
        return Ok(None);
    }
    publish(&target, &body)?;
    Ok(Some(format!(
        "updated {file}: {} bytes from http://{}{url_path}",
        body.len(),
        options.authority
    )))
}

/// Writes `body` beside `target` and renames it over `target`.
fn publish(target: &str, body: &[u8]) -> Result<(), String> {
    let path = Path::new(target);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Same directory, so the same file system: the rename is atomic. The dot keeps the temp file
    // out of sight of a person listing the site.
    let temp = path.with_file_name(format!(".{name}.puller-tmp"));
    let mut out = std::fs::File::create(&temp).map_err(|e| format!("create {}: {e}", temp.display()))?;
    out.write_all(body)
        .map_err(|e| format!("write {}: {e}", temp.display()))?;
    // On disk before it becomes visible, so a host crash cannot publish an empty file.
    out.sync_all().map_err(|e| format!("sync {}: {e}", temp.display()))?;
    drop(out);
    std::fs::rename(&temp, path).map_err(|e| format!("rename {} to {target}: {e}", temp.display()))
}

/// One HTTP/1.1 GET with `Connection: close`: the whole body of a 200 answer, or why not.
fn get(options: &Options, path: &str) -> Result<Vec<u8>, String> {
    let url = format!("http://{}{path}", options.authority);
    let stream = TcpStream::connect(&options.authority).map_err(|e| format!("cannot connect to {url}: {e}"))?;
    // Best effort: a WASI host without socket timeouts still gets every byte or an error.
    let _ = stream.set_read_timeout(Some(options.timeout));
    let _ = stream.set_write_timeout(Some(options.timeout));
    let mut writer = &stream;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        options.authority
    )
    .map_err(|e| format!("cannot send the request to {url}: {e}"))?;
    let mut reader = BufReader::new(&stream);
    let status_line = read_line(&mut reader).map_err(|e| format!("no answer from {url}: {e}"))?;
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{url} answered {:?}", status_line.trim()));
    }
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let line = read_line(&mut reader).map_err(|e| format!("{url}: bad headers: {e}"))?;
        if line.trim().is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let length: u64 = value
                .parse()
                .map_err(|_| format!("{url}: bad content-length {value:?}"))?;
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        read_chunked(&mut reader).map_err(|e| format!("{url}: incomplete chunked body: {e}"))?
    } else if let Some(length) = content_length {
        if length > MAX_BODY {
            return Err(format!("{url}: the body of {length} bytes is larger than {MAX_BODY}"));
        }
        let mut body = Vec::with_capacity(length as usize);
        reader
            .take(length)
            .read_to_end(&mut body)
            .map_err(|e| format!("{url}: reading the body failed: {e}"))?;
        if (body.len() as u64) < length {
            return Err(format!("{url}: the body ended after {} of {length} bytes", body.len()));
        }
        body
    } else {
        // No length: the body ends when the server closes; nothing else to check it against.
        let mut body = Vec::new();
        reader
            .take(MAX_BODY + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("{url}: reading the body failed: {e}"))?;
        if body.len() as u64 > MAX_BODY {
            return Err(format!("{url}: the body is larger than {MAX_BODY} bytes"));
        }
        body
    };
    Ok(body)
}

/// A line ending in `\n`; an early end of the stream is an error, not an empty line.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if reader.by_ref().take(64 * 1024).read_line(&mut line)? == 0 || !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed early",
        ));
    }
    Ok(line)
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.trim().is_empty() {}
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(invalid(format!("the body is larger than {MAX_BODY} bytes")));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut source = None;
    let mut options = Options {
        source: String::new(),
        authority: String::new(),
        prefix: String::new(),
        to: "/site".into(),
        every: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        files: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--source" => source = Some(value()?),
            "--to" => options.to = value()?,
            "--every" => options.every = parse_duration(&value()?)?,
            "--timeout" => options.timeout = parse_duration(&value()?)?,
            flag if flag.starts_with("--") => return Err(format!("unknown argument {flag:?}")),
            _ => {
                // The file lands under --to: it must stay there.
                if arg.starts_with('/') || arg.split('/').any(|part| part == ".." || part.is_empty()) {
                    return Err(format!("{arg:?} must be a relative path without '..', e.g. index.html"));
                }
                options.files.push(arg);
            }
        }
    }
    let source = source.ok_or("--source is required, e.g. --source http://host.wasmpod.internal:8000")?;
    let rest = source
        .strip_prefix("http://")
        .ok_or_else(|| format!("{source:?} is not an http:// URL"))?;
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !authority.contains(':') {
        return Err(format!(
            "{source:?} has no port; write it like http://host.wasmpod.internal:8000"
        ));
    }
    options.authority = authority.to_string();
    options.prefix = prefix.trim_end_matches('/').to_string();
    options.source = source;
    if options.files.is_empty() {
        options.files.push("index.html".into());
    }
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
    eprintln!("puller: {message}");
    let _ = std::io::stderr().flush();
    std::process::exit(1);
}
