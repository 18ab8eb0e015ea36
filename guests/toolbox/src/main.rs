//! `toolbox`: a WASI 0.2 command component that runs a script of steps given as arguments.
//!
//! Steps are separated by the argument `&&` and run in order; the first failing step ends the
//! program with exit code 1 (unless a step sets another code). It exists so that tests and
//! examples can exercise volumes, args, env, exits, traps and restarts on a real component
//! without one guest crate per scenario.
//!
//! Steps:
//! - `print TEXT...`                 print the words on stdout
//! - `eprint TEXT...`                print the words on stderr
//! - `args`                          print each argument (argv[0] included) on a line `arg: X`
//! - `env`                           print each environment variable as `env: K=V`, sorted
//! - `write PATH TEXT...`            create or replace a file
//! - `append PATH TEXT...`           append a line to a file
//! - `read PATH`                     print the file's contents, line by line, as `read: LINE`
//! - `try-write PATH TEXT`           attempt a write; print `write ok` or `write failed: ERROR`
//! - `try-read PATH`                 attempt a read; print `read ok: N bytes` or `read failed: ERROR`
//! - `try-fs OP PATH [ARG]`          attempt one file-system operation and print `OP ok` or
//!                                   `OP failed: ERROR`; OP is one of `create`, `write`, `append`,
//!                                   `truncate`, `set-len`, `set-times`, `rename` (to ARG),
//!                                   `unlink`, `mkdir`, `rmdir`, `link` (new name ARG),
//!                                   `symlink` (link PATH pointing at ARG)
//! - `ls PATH`                       print the entries of a directory, sorted, as `ls: NAME`
//! - `wait-file PATH MS`             wait (polling) until a file exists, at most MS milliseconds
//! - `tick PATH COUNT MS`            append `tick I` lines to PATH, COUNT times, MS apart
//! - `follow PATH COUNT MS`          print the lines of PATH as `got: LINE` until COUNT lines seen
//! - `runs PATH`                     count this run in PATH (one line per run); print `run N`
//! - `fail-until PATH N CODE`        exit with CODE while fewer than N runs are recorded in PATH
//! - `sleep MS`                      sleep
//! - `exit CODE`                     exit with CODE
//! - `trap`                          trap (executes `unreachable`)
//! - `spin`                          loop forever without yielding
//! - `serve-forever MS`              print `alive I` every MS milliseconds, forever
//! - `alloc-mib N`                   allocate and touch N MiB, 1 MiB at a time; print `holding N MiB`
//! - `recurse`                       recurse without bound (until the stack limit traps)
//! - `spin-for MS`                   compute without yielding for MS milliseconds (wall clock)
//! - `wait-stdin`                    read stdin to its end (wasmpod closes it to ask for a stop)

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for step in args.split(|arg| arg == "&&") {
        if step.is_empty() {
            continue;
        }
        if let Err(message) = run_step(step) {
            eprintln!("toolbox: {}: {message}", step.join(" "));
            let _ = std::io::stderr().flush();
            std::process::exit(1);
        }
        let _ = std::io::stdout().flush();
    }
}

fn run_step(step: &[String]) -> Result<(), String> {
    let verb = step[0].as_str();
    let rest = &step[1..];
    let arg = |i: usize| -> Result<&str, String> {
        rest.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {}", i + 1))
    };
    let number = |i: usize| -> Result<u64, String> {
        let text = arg(i)?;
        text.parse::<u64>()
            .map_err(|e| format!("argument {} ({text:?}) is not a number: {e}", i + 1))
    };
    match verb {
        "print" => println!("{}", rest.join(" ")),
        "eprint" => eprintln!("{}", rest.join(" ")),
        "args" => {
            for a in std::env::args() {
                println!("arg: {a}");
            }
        }
        "env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            for (k, v) in vars {
                println!("env: {k}={v}");
            }
        }
        "write" => {
            let text = rest[1..].join(" ");
            std::fs::write(arg(0)?, format!("{text}\n")).map_err(|e| e.to_string())?;
        }
        "append" => append_line(arg(0)?, &rest[1..].join(" "))?,
        "read" => {
            let text = std::fs::read_to_string(arg(0)?).map_err(|e| e.to_string())?;
            for line in text.lines() {
                println!("read: {line}");
            }
        }
        "try-write" => match std::fs::write(arg(0)?, rest[1..].join(" ")) {
            Ok(()) => println!("write ok"),
            Err(e) => println!("write failed: {e}"),
        },
        "try-fs" => {
            let op = arg(0)?;
            match try_fs(op, arg(1)?, rest.get(2).map(String::as_str)) {
                Ok(()) => println!("{op} ok"),
                Err(e) => println!("{op} failed: {e}"),
            }
        }
        "try-read" => match std::fs::read(arg(0)?) {
            Ok(bytes) => println!("read ok: {} bytes", bytes.len()),
            Err(e) => println!("read failed: {e}"),
        },
        "ls" => {
            let mut names: Vec<String> = std::fs::read_dir(arg(0)?)
                .map_err(|e| e.to_string())?
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                println!("ls: {name}");
            }
        }
        "wait-file" => {
            let deadline = Instant::now() + Duration::from_millis(number(1)?);
            while !std::path::Path::new(arg(0)?).exists() {
                if Instant::now() > deadline {
                    return Err(format!("{} did not appear in time", arg(0)?));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        "tick" => {
            let count = number(1)?;
            for i in 1..=count {
                append_line(arg(0)?, &format!("tick {i}"))?;
                if i < count {
                    std::thread::sleep(Duration::from_millis(number(2)?));
                }
            }
        }
        "follow" => follow(arg(0)?, number(1)?, number(2)?)?,
        "runs" => {
            append_line(arg(0)?, "run")?;
            println!("run {}", count_lines(arg(0)?)?);
        }
        "fail-until" => {
            append_line(arg(0)?, "run")?;
            let runs = count_lines(arg(0)?)?;
            let wanted = number(1)? as usize;
            let code = number(2)? as i32;
            println!("run {runs} of {wanted}");
            if runs < wanted {
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
        }
        "sleep" => std::thread::sleep(Duration::from_millis(number(0)?)),
        "exit" => {
            let _ = std::io::stdout().flush();
            std::process::exit(number(0)? as i32)
        }
        "trap" => {
            let _ = std::io::stdout().flush();
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            std::process::abort();
        }
        "spin" => {
            let mut counter: u64 = 0;
            loop {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        "wait-stdin" => {
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest).map_err(|e| e.to_string())?;
        }
        "alloc-mib" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            for i in 1..=number(0)? {
                // Touch every page, so the memory is really used, not just reserved.
                held.push(vec![i as u8; 1 << 20]);
                if i % 8 == 0 {
                    println!("allocated {i} MiB");
                    let _ = std::io::stdout().flush();
                }
            }
            println!("holding {} MiB", held.len());
        }
        "recurse" => println!("depth {}", recurse(0)),
        "spin-for" => {
            let deadline = Instant::now() + Duration::from_millis(number(0)?);
            let mut counter: u64 = 0;
            while Instant::now() < deadline {
                counter = std::hint::black_box(counter.wrapping_add(1));
            }
        }
        "serve-forever" => {
            let period = Duration::from_millis(number(0)?);
            for i in 1.. {
                println!("alive {i}");
                let _ = std::io::stdout().flush();
                std::thread::sleep(period);
            }
        }
        other => return Err(format!("unknown step {other:?}")),
    }
    Ok(())
}

/// Recursion the optimiser cannot turn into a loop, with frames only on the wasm stack (no
/// address-taken locals, so Rust's shadow stack in linear memory is not what runs out).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return depth;
    }
    recurse(depth + 1).wrapping_mul(3) ^ depth
}

fn append_line(path: &str, line: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    writeln!(file, "{line}").map_err(|e| format!("write {path}: {e}"))
}

fn count_lines(path: &str) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    Ok(text.lines().count())
}

/// Prints lines of `path` as they are appended, until `count` lines have been seen or
/// `timeout_ms` passes without the file growing to that many lines.
fn follow(path: &str, count: u64, timeout_ms: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut seen = 0u64;
    while seen < count {
        if let Ok(file) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(file).lines().skip(seen as usize) {
                let line = line.map_err(|e| e.to_string())?;
                println!("got: {line}");
                seen += 1;
            }
            let _ = std::io::stdout().flush();
        }
        if seen >= count {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("saw {seen} of {count} lines before the deadline"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One file-system operation, for tests of what a mount allows.
fn try_fs(op: &str, path: &str, other: Option<&str>) -> Result<(), String> {
    use std::fs::{self, OpenOptions};
    let other = || other.ok_or_else(|| format!("{op} needs a second path"));
    let done = |r: std::io::Result<()>| r.map_err(|e| e.to_string());
    match op {
        "create" => done(OpenOptions::new().write(true).create_new(true).open(path).map(drop)),
        "write" => done(OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(b"x"))),
        "append" => done(OpenOptions::new().append(true).open(path).and_then(|mut f| f.write_all(b"x"))),
        "truncate" => done(OpenOptions::new().write(true).truncate(true).open(path).map(drop)),
        "set-len" => done(OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(0))),
        "set-times" => done(fs::File::open(path).and_then(|f| {
            f.set_times(fs::FileTimes::new().set_modified(std::time::SystemTime::UNIX_EPOCH))
        })),
        "rename" => done(fs::rename(path, other()?)),
        "unlink" => done(fs::remove_file(path)),
        "mkdir" => done(fs::create_dir(path)),
        "rmdir" => done(fs::remove_dir(path)),
        "link" => done(fs::hard_link(path, other()?)),
        "symlink" => symlink(other()?, path),
        _ => Err(format!("unknown operation {op}")),
    }
}

/// `symlink_path` is unstable in std for WASI; ask the preopened directory directly.
fn symlink(target: &str, link: &str) -> Result<(), String> {
    for (dir, root) in wasip2::filesystem::preopens::get_directories() {
        let root = root.trim_end_matches('/');
        if let Some(relative) = link.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
            return dir.symlink_at(target, relative).map_err(|e| format!("{e:?}"));
        }
    }
    Err(format!("{link} is not under a mount"))
}
