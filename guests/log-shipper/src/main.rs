//! `log-shipper`: the sidecar of the logging-sidecar example. Every period it ships the new
//! whole lines of each `*.log` file in a shared volume (`--from`) to long-term storage (`--to`),
//! as numbered archive files `NAME-000001.log`, `NAME-000002.log`, ... that it rotates by size.
//! The application never knows it is there: that is the point of a sidecar.
//!
//! Usage: `log-shipper [--from DIR] [--to DIR] [--every DURATION] [--rotate-bytes SIZE]`
//! (defaults `/logs`, `/storage`, `1s`, `64KiB`).
//!
//! A shipper can be killed at any instant (a restart cancels it between any two host calls),
//! and must then neither lose nor duplicate a line. So for each stream it keeps a checkpoint in
//! storage, `NAME.checkpoint`: how far it has read the source, which archive file it writes and
//! how long that file is. Each step writes the data first and the checkpoint after it, the
//! checkpoint atomically (a temp file renamed over the old one). On start it truncates the
//! archive back to the checkpoint's length: whatever lies beyond was written by a run killed
//! before it could checkpoint, and is shipped again from the checkpoint's source offset.
//! Rotation checkpoints the next file (at length 0) before creating it, so a crash mid-rotation
//! resumes either in the full file or in the empty new one.
//!
//! Archive bytes are written at explicit positions, never appended: byte `i` of an archive file
//! is always the same source byte, so a write that a killed run left in flight on the host and
//! that lands late rewrites identical bytes in place instead of duplicating them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// At most this much of a source is read and shipped per step.
const MAX_CHUNK: u64 = 1 << 20;
/// The first line of a source identifies it; longer first lines are identified by this prefix.
const ID_PREFIX: u64 = 4096;
/// How often a running shipper prints a progress line per stream.
const REPORT_EVERY: Duration = Duration::from_secs(10);

struct Options {
    from: String,
    to: String,
    every: Duration,
    rotate_bytes: u64,
}

fn main() {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => fail(&format!(
            "{message}\nusage: log-shipper [--from DIR] [--to DIR] [--every DURATION] [--rotate-bytes SIZE]"
        )),
    };
    if let Err(message) = run(&options) {
        fail(&message);
    }
}

fn run(options: &Options) -> Result<(), String> {
    // A name no other run uses for its temp files, so that a temp-file write a killed run left
    // in flight can never interleave with ours.
    let run_id = format!(
        "{:x}",
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    remove_stale_temp_files(&options.to);
    println!(
        "shipping {}/*.log to {} every {:?}, rotating at {} bytes",
        options.from, options.to, options.every, options.rotate_bytes
    );
    flush_stdout();
    let mut streams: Vec<Stream> = Vec::new();
    loop {
        for name in log_files(&options.from)? {
            if !streams.iter().any(|s| s.name == name) {
                streams.push(Stream::open(&name, options, &run_id)?);
            }
        }
        for stream in &mut streams {
            stream.ship(options)?;
        }
        flush_stdout();
        std::thread::sleep(options.every);
    }
}

/// Where one source stream has got to, as saved in `NAME.checkpoint`.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Checkpoint {
    /// The FNV-1a hash of the source's first line (0: not seen yet). A different first line
    /// means the source file was replaced (a new pod run), so reading starts over at 0.
    source_id: u64,
    /// Bytes of the source already in the archives (always at a line boundary).
    offset: u64,
    /// The number of the archive file being written.
    archive: u32,
    /// Its length: everything beyond it is not shipped yet.
    archive_len: u64,
}

struct Stream {
    /// The source's file name without `.log`, e.g. `app`.
    name: String,
    source: String,
    checkpoint_path: String,
    temp_path: String,
    storage: String,
    at: Checkpoint,
    shipped_lines: u64,
    last_report: Instant,
}

impl Stream {
    /// Loads the stream's checkpoint and puts its archive file back in the state it names.
    fn open(name: &str, options: &Options, run_id: &str) -> Result<Stream, String> {
        let checkpoint_path = format!("{}/{name}.checkpoint", options.to);
        let at = match std::fs::read_to_string(&checkpoint_path) {
            Ok(text) => parse_checkpoint(&text).map_err(|e| format!("{checkpoint_path}: {e}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint {
                source_id: 0,
                offset: 0,
                archive: 1,
                archive_len: 0,
            },
            Err(e) => return Err(format!("read {checkpoint_path}: {e}")),
        };
        let mut stream = Stream {
            name: name.to_string(),
            source: format!("{}/{name}.log", options.from),
            temp_path: format!("{checkpoint_path}.tmp-{run_id}"),
            checkpoint_path,
            storage: options.to.clone(),
            at,
            shipped_lines: 0,
            last_report: Instant::now(),
        };
        let archive = stream.archive_path();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&archive)
            .map_err(|e| format!("open {archive}: {e}"))?;
        let len = file.metadata().map_err(|e| format!("stat {archive}: {e}"))?.len();
        if len > at.archive_len {
            println!(
                "{name}: dropping {} bytes at the end of {archive} that a previous run wrote but did not checkpoint; they will be shipped again",
                len - at.archive_len
            );
            file.set_len(at.archive_len)
                .map_err(|e| format!("truncate {archive}: {e}"))?;
            file.sync_all().map_err(|e| format!("sync {archive}: {e}"))?;
        } else if len < at.archive_len {
            // Someone shortened the archive behind our back: those lines are gone for good.
            // Carry on at its real end rather than leave a hole of zero bytes.
            println!(
                "{name}: warning: {archive} holds {len} bytes but the checkpoint says {}; continuing at its end",
                at.archive_len
            );
            stream.at.archive_len = len;
        }
        println!(
            "{name}: resuming {} at byte {} into {archive} at byte {}",
            stream.source, stream.at.offset, stream.at.archive_len
        );
        Ok(stream)
    }

    fn archive_path(&self) -> String {
        format!("{}/{}-{:06}.log", self.storage, self.name, self.at.archive)
    }

    /// Ships every whole line the source holds beyond the checkpoint.
    fn ship(&mut self, options: &Options) -> Result<(), String> {
        loop {
            let chunk = self.read_new_lines()?;
            if chunk.is_empty() {
                break;
            }
            let mut rest = chunk.as_slice();
            while !rest.is_empty() {
                let room = options.rotate_bytes.saturating_sub(self.at.archive_len);
                let take = whole_lines_within(rest, room);
                // Only a line alone in a fresh file may exceed the size limit.
                if take as u64 > room && self.at.archive_len > 0 {
                    self.rotate()?;
                    continue;
                }
                self.write_archive(&rest[..take])?;
                self.shipped_lines += rest[..take].iter().filter(|&&b| b == b'\n').count() as u64;
                rest = &rest[take..];
            }
        }
        if self.last_report.elapsed() >= REPORT_EVERY {
            self.last_report = Instant::now();
            println!(
                "{}: {} lines shipped by this run; {} at byte {}",
                self.name,
                self.shipped_lines,
                self.archive_path(),
                self.at.archive_len
            );
        }
        Ok(())
    }

    /// The source's whole lines after the checkpoint's offset (at most [`MAX_CHUNK`] bytes);
    /// empty when there are none yet. Notices a replaced source and starts it from 0.
    fn read_new_lines(&mut self) -> Result<Vec<u8>, String> {
        let mut file = match File::open(&self.source) {
            Ok(file) => file,
            // The application has not created it yet, or it was removed: nothing to ship.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("open {}: {e}", self.source)),
        };
        let len = file.metadata().map_err(|e| format!("stat {}: {e}", self.source))?.len();
        let Some(source_id) = first_line_id(&mut file).map_err(|e| format!("read {}: {e}", self.source))? else {
            return Ok(Vec::new());
        };
        if self.at.source_id != source_id {
            if self.at.source_id != 0 || self.at.offset != 0 {
                println!(
                    "{}: {} was replaced (a new pod run?); shipping it from its start",
                    self.name, self.source
                );
            }
            self.at.source_id = source_id;
            self.at.offset = 0;
        } else if len < self.at.offset {
            println!(
                "{}: {} shrank below the checkpoint; shipping it from its start",
                self.name, self.source
            );
            self.at.offset = 0;
        }
        let wanted = (len - self.at.offset).min(MAX_CHUNK);
        file.seek(SeekFrom::Start(self.at.offset))
            .map_err(|e| format!("seek {}: {e}", self.source))?;
        let mut chunk = Vec::with_capacity(wanted as usize);
        (&mut file)
            .take(wanted)
            .read_to_end(&mut chunk)
            .map_err(|e| format!("read {}: {e}", self.source))?;
        // The application may be in the middle of a line: ship only up to the last newline.
        let whole = chunk.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        chunk.truncate(whole);
        Ok(chunk)
    }

    /// Data first, made durable, then the checkpoint that covers it.
    fn write_archive(&mut self, bytes: &[u8]) -> Result<(), String> {
        let path = self.archive_path();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        file.seek(SeekFrom::Start(self.at.archive_len))
            .map_err(|e| format!("seek {path}: {e}"))?;
        file.write_all(bytes).map_err(|e| format!("write {path}: {e}"))?;
        file.sync_data().map_err(|e| format!("sync {path}: {e}"))?;
        self.at.archive_len += bytes.len() as u64;
        self.at.offset += bytes.len() as u64;
        self.save_checkpoint()
    }

    /// Checkpoints the next archive file at length 0 before creating it.
    fn rotate(&mut self) -> Result<(), String> {
        let full = self.archive_path();
        self.at.archive += 1;
        self.at.archive_len = 0;
        self.save_checkpoint()?;
        let next = self.archive_path();
        // Empty by the checkpoint's word, even if a file of that name was left lying there.
        File::create(&next).map_err(|e| format!("create {next}: {e}"))?;
        println!("{}: rotated: {full} is full; now writing {next}", self.name);
        Ok(())
    }

    /// Replaces the checkpoint atomically: readers (and the next run) see the old one or the
    /// new one, never a mix.
    fn save_checkpoint(&self) -> Result<(), String> {
        let text = format!(
            "# log-shipper checkpoint of {}: the archives hold its bytes 0..offset\n\
             source_id={:016x}\noffset={}\narchive={}\narchive_len={}\n",
            self.source, self.at.source_id, self.at.offset, self.at.archive, self.at.archive_len
        );
        let mut file = File::create(&self.temp_path).map_err(|e| format!("create {}: {e}", self.temp_path))?;
        file.write_all(text.as_bytes())
            .map_err(|e| format!("write {}: {e}", self.temp_path))?;
        file.sync_all().map_err(|e| format!("sync {}: {e}", self.temp_path))?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.checkpoint_path)
            .map_err(|e| format!("rename {} to {}: {e}", self.temp_path, self.checkpoint_path))
    }
}

fn parse_checkpoint(text: &str) -> Result<Checkpoint, String> {
    let mut fields = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {line:?} is not KEY=VALUE"));
        };
        fields.insert(key.trim(), value.trim());
    }
    let field = |key: &str| fields.get(key).copied().ok_or_else(|| format!("{key} is missing"));
    let number = |key: &str| -> Result<u64, String> {
        let value = field(key)?;
        value.parse().map_err(|e| format!("{key}={value} is not a number: {e}"))
    };
    let source_id = field("source_id")?;
    let archive = number("archive")?;
    Ok(Checkpoint {
        source_id: u64::from_str_radix(source_id, 16).map_err(|e| format!("source_id={source_id}: {e}"))?,
        offset: number("offset")?,
        archive: u32::try_from(archive).map_err(|_| format!("archive={archive} is too large"))?,
        archive_len: number("archive_len")?,
    })
}

/// How many bytes of `bytes` (whole lines) fit in `room`; at least one line, so that a line
/// longer than a whole archive file still gets shipped, alone in its file.
fn whole_lines_within(bytes: &[u8], room: u64) -> usize {
    let mut end = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            if (i + 1) as u64 > room && end > 0 {
                break;
            }
            end = i + 1;
            if end as u64 >= room {
                break;
            }
        }
    }
    end
}

/// The identity of a source: a hash of its first line, or `None` before it has a whole one.
fn first_line_id(file: &mut File) -> std::io::Result<Option<u64>> {
    let mut head = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    Read::take(&mut *file, ID_PREFIX).read_to_end(&mut head)?;
    let line = match head.iter().position(|&b| b == b'\n') {
        Some(i) => &head[..i],
        None if head.len() as u64 == ID_PREFIX => &head[..],
        None => return Ok(None),
    };
    // FNV-1a; 0 is reserved for "not seen yet".
    let hash = line.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    Ok(Some(hash.max(1)))
}

/// The stream names (`app` for `app.log`) in `dir`, sorted.
fn log_files(dir: &str) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("list {dir}: {e}"))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .map(str::to_owned)
        })
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    Ok(names)
}

/// Temp files of runs that were killed between creating and renaming them.
fn remove_stale_temp_files(dir: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.contains(".checkpoint.tmp-"))
        {
            let _ = std::fs::remove_file(Path::new(dir).join(entry.file_name()));
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        from: "/logs".into(),
        to: "/storage".into(),
        every: Duration::from_secs(1),
        rotate_bytes: 64 * 1024,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--from" => options.from = value()?,
            "--to" => options.to = value()?,
            "--every" => options.every = parse_duration(&value()?)?,
            "--rotate-bytes" => options.rotate_bytes = parse_size(&value()?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.rotate_bytes == 0 {
        return Err("--rotate-bytes must be more than 0".into());
    }
    Ok(options)
}

/// `250ms`, `2s`, `1m`: the units a spec writer would reach for.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text);
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

/// `65536`, `64KiB`, `1MiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64KiB, 1MiB or 65536"))?;
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size like 64KiB, 1MiB or 65536")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn split_number(text: &str) -> (&str, &str) {
    text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()))
}

fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

fn fail(message: &str) -> ! {
    eprintln!("log-shipper: {message}");
    let _ = std::io::stderr().flush();
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_fill_the_room_but_never_split_a_line() {
        assert_eq!(whole_lines_within(b"aa\nbb\ncc\n", 6), 6);
        assert_eq!(whole_lines_within(b"aa\nbb\ncc\n", 7), 6);
        assert_eq!(whole_lines_within(b"aa\nbb\ncc\n", 100), 9);
        // A line longer than the room still goes, alone.
        assert_eq!(whole_lines_within(b"aaaaaa\nb\n", 3), 7);
    }

    #[test]
    fn checkpoints_round_trip_and_reject_garbage() {
        let text = "# x\nsource_id=00000000000000ff\noffset=10\narchive=2\narchive_len=5\n";
        assert_eq!(
            parse_checkpoint(text),
            Ok(Checkpoint {
                source_id: 255,
                offset: 10,
                archive: 2,
                archive_len: 5
            })
        );
        assert!(parse_checkpoint("offset=x").is_err());
    }
}
