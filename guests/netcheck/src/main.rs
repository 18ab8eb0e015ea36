//! `netcheck`: a WASI 0.2 command component that exercises the pod network with plain
//! `std::net`, so tests hold the virtual network to what ordinary Rust programs expect.
//!
//! Steps are separated by the argument `&&` and run in order; a failing step prints
//! `netcheck: STEP: ERROR` on stderr and exits with code 1. A listener made by `listen` is kept
//! for the following steps.
//!
//! Steps:
//! - `listen ADDR`              bind+listen (e.g. `0.0.0.0:5000`); print `listening PORT`
//! - `echo N`                   accept N connections one after the other; echo each until EOF,
//!                              then half-close; print `echoed BYTES`
//! - `accept-hold`              accept one connection and keep it until the program exits
//! - `send ADDR BYTES`          connect, send BYTES of a pattern in 64 KiB chunks reading each
//!                              echo back and comparing it, half-close, expect EOF; print
//!                              `sent N echoed N fnv HASH`
//! - `half-close ADDR TEXT`     connect, send TEXT, half-close, read to EOF; print `got: TEXT`
//! - `read-until-closed ADDR [TEXT]`  connect (then send TEXT, if given) and read until EOF
//!                              or error; print `closed: eof` or `closed: error KIND`
//! - `hold-ping ADDR`           connect, send `p` and read its 1-byte echo (print `warm`), send
//!                              `r` (ready: the echo arrived), then wait for a 1-byte go (print `go` or
//!                              `go: eof` / `go: error KIND`), then time one more `p` and its
//!                              echo on the same connection (print `rtt NANOS ns` or
//!                              `rtt: error KIND`): faults added while a connection is open
//! - `try-bind ADDR`            print `bind ok PORT` or `bind failed: KIND`
//! - `try-connect ADDR`         print `connect ok` or `connect failed: KIND`
//! - `lookup NAME`              print `addr: IP` per address or `lookup failed: KIND`
//! - `addrs ADDR`               connect; print `local: ADDR` and `peer: ADDR`
//! - `udp-bind ADDR`            bind a UDP socket kept for later steps; print `udp bound PORT`
//! - `udp-echo N`               receive N datagrams on it, send each back; print `udp echoed TEXT`
//! - `udp-send ADDR TEXT`       from a fresh socket, send TEXT and wait for the reply; print
//!                              `udp reply: TEXT`
//! - `udp-local ADDR`           bind a wildcard of ADDR's family to port 0, connect to ADDR;
//!                              print `before: LOCAL` and `connected: LOCAL`
//! - `udp-refused ADDR`         bind, connect to ADDR, send one datagram, receive (5 s
//!                              timeout); print `recv: N bytes` or `recv: error KIND`
//! - `udp-unconnected ADDR`     bind, send_to ADDR, then a non-blocking receive; print
//!                              `recv: N bytes` or `recv: error KIND`
//! - `udp-blast ADDR N`         from a fresh socket, send N small datagrams to ADDR; print
//!                              `udp blasted N`
//! - `udp-rtt ADDR N`           from a fresh socket, send N datagrams (`0`..`N-1`), then receive
//!                              N replies; print `udp rtt N in NANOS ns` and `order ok` or
//!                              `order: LIST` (serve it with `udp-echo N`)
//! - `udp-drain`                non-blocking receives on the kept socket until none is left;
//!                              print `udp drained N`
//!
//! Fidelity and limits steps:
//! - `shut-read ADDR`           connect, shutdown(Read), read once (print `read after
//!                              shutdown: N`), send `g`; the socket is kept for later steps
//! - `write-after-peer-shut N`  accept one connection, read the 1-byte go, write N bytes
//!                              (blocking); print `wrote N`
//! - `flood ADDR CONNS BYTES CHUNK`  open CONNS connections (non-blocking once connected) and
//!                              write up to BYTES on each in CHUNK-byte writes, moving on at
//!                              the first would-block; connections are kept for later steps.
//!                              Print `flood opened N failed F wrote W would-block B` and one
//!                              `connect error: KIND` line per kind of connect failure
//!
//! Benchmark steps (`benches/pod_network.rs`; the same code runs natively there for the
//! kernel-loopback baseline):
//! - `sink N`                   accept N connections one after the other; read each to EOF in
//!                              64 KiB reads, then close; print `sunk BYTES`
//! - `stream ADDR BYTES`        connect, write BYTES in 64 KiB writes, half-close, read to EOF;
//!                              print `streamed BYTES in NANOS ns` (connect to EOF, guest clock)
//! - `ping ADDR COUNT`          COUNT times: connect, write 1 byte, read the 1-byte echo, close
//!                              (serve it with `echo COUNT`); print `pinged COUNT in NANOS ns`

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut listener: Option<TcpListener> = None;
    let mut held: Vec<TcpStream> = Vec::new();
    let mut udp: Option<UdpSocket> = None;
    for step in args.split(|a| a == "&&") {
        if step.is_empty() {
            continue;
        }
        let result = match step[0].as_str() {
            s if s.starts_with("udp-") => udp_step(step, &mut udp),
            _ => run_step(step, &mut listener, &mut held),
        };
        if let Err(e) = result {
            eprintln!("netcheck: {}: {e}", step.join(" "));
            let _ = std::io::stderr().flush();
            std::process::exit(1);
        }
        let _ = std::io::stdout().flush();
    }
}

fn run_step(step: &[String], listener: &mut Option<TcpListener>, held: &mut Vec<TcpStream>) -> Result<(), String> {
    let arg = |i: usize| -> Result<&str, String> {
        step.get(i + 1)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {}", i + 1))
    };
    let number =
        |i: usize| -> Result<u64, String> { arg(i)?.parse::<u64>().map_err(|e| format!("argument {}: {e}", i + 1)) };
    match step[0].as_str() {
        "listen" => {
            let l = TcpListener::bind(arg(0)?).map_err(|e| format!("bind: {e}"))?;
            let port = l.local_addr().map_err(|e| e.to_string())?.port();
            println!("listening {port}");
            *listener = Some(l);
        }
        "echo" => {
            let l = listener.as_ref().ok_or("no listener")?;
            for _ in 0..number(0)? {
                let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                loop {
                    let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
                    total += n as u64;
                }
                s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
                println!("echoed {total}");
            }
        }
        "accept-hold" => {
            let l = listener.as_ref().ok_or("no listener")?;
            let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            println!("accepted");
            held.push(s);
        }
        "send" => send(arg(0)?, number(1)?)?,
        "shut-read" => {
            let mut s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            s.shutdown(Shutdown::Read).map_err(|e| format!("shutdown: {e}"))?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            println!("read after shutdown: {n}");
            s.write_all(b"g").map_err(|e| format!("write: {e}"))?;
            held.push(s);
        }
        "write-after-peer-shut" => {
            let l = listener.as_ref().ok_or("no listener")?;
            let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            let mut go = [0u8; 1];
            s.read_exact(&mut go).map_err(|e| format!("read go: {e}"))?;
            let total = number(0)?;
            let out: Vec<u8> = (0..CHUNK as u64).map(pattern).collect();
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(CHUNK as u64) as usize;
                s.write_all(&out[..n]).map_err(|e| format!("write at {sent}: {e}"))?;
                sent += n as u64;
            }
            s.flush().map_err(|e| format!("flush: {e}"))?;
            println!("wrote {sent}");
        }
        "flood" => flood(arg(0)?, number(1)?, number(2)?, number(3)?, held)?,
        "half-close" => {
            let mut s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            s.write_all(step[2..].join(" ").as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
            let mut got = String::new();
            s.read_to_string(&mut got).map_err(|e| format!("read: {e}"))?;
            println!("got: {got}");
        }
        "read-until-closed" => {
            let mut s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            println!("connected");
            let _ = std::io::stdout().flush();
            // Sending first lets a peer know the connection is fully up before it acts on it.
            if step.len() > 2 {
                s.write_all(step[2..].join(" ").as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
            }
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        println!("closed: eof");
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        println!("closed: error {:?}", e.kind());
                        break;
                    }
                }
            }
        }
        "hold-ping" => {
            let mut s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            let mut b = [0u8; 1];
            s.write_all(b"p").map_err(|e| format!("write: {e}"))?;
            s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
            println!("warm");
            s.write_all(b"r").map_err(|e| format!("write ready: {e}"))?;
            let _ = std::io::stdout().flush();
            match s.read(&mut b) {
                Ok(0) => {
                    println!("go: eof");
                    return Ok(());
                }
                Ok(_) => println!("go"),
                Err(e) => {
                    println!("go: error {:?}", e.kind());
                    return Ok(());
                }
            }
            let _ = std::io::stdout().flush();
            let start = std::time::Instant::now();
            match s.write_all(b"p").and_then(|()| s.read_exact(&mut b)) {
                Ok(()) => println!("rtt {} ns", start.elapsed().as_nanos()),
                Err(e) => println!("rtt: error {:?}", e.kind()),
            }
        }
        "try-bind" => match TcpListener::bind(arg(0)?) {
            Ok(l) => println!("bind ok {}", l.local_addr().map_err(|e| e.to_string())?.port()),
            Err(e) => println!("bind failed: {:?}", e.kind()),
        },
        "try-connect" => match TcpStream::connect(arg(0)?) {
            Ok(_) => println!("connect ok"),
            Err(e) => println!("connect failed: {:?}", e.kind()),
        },
        "lookup" => match (arg(0)?, 0u16).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    println!("addr: {}", a.ip());
                }
            }
            Err(e) => println!("lookup failed: {:?}", e.kind()),
        },
        "addrs" => {
            let s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            println!("local: {}", s.local_addr().map_err(|e| e.to_string())?);
            println!("peer: {}", s.peer_addr().map_err(|e| e.to_string())?);
        }
        "sink" => {
            let l = listener.as_ref().ok_or("no listener")?;
            let mut buf = vec![0u8; CHUNK];
            for _ in 0..number(0)? {
                let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
                let mut total = 0u64;
                loop {
                    let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                drop(s);
                println!("sunk {total}");
            }
        }
        "stream" => {
            let bytes = number(1)?;
            let out: Vec<u8> = (0..CHUNK as u64).map(pattern).collect();
            let start = std::time::Instant::now();
            let mut s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(CHUNK as u64) as usize;
                s.write_all(&out[..n]).map_err(|e| format!("write: {e}"))?;
                sent += n as u64;
            }
            s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).map_err(|e| format!("read to end: {e}"))?;
            let nanos = start.elapsed().as_nanos();
            println!("streamed {sent} in {nanos} ns");
        }
        "ping" => {
            let count = number(1)?;
            let start = std::time::Instant::now();
            for _ in 0..count {
                let mut s = TcpStream::connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
                s.write_all(b"p").map_err(|e| format!("write: {e}"))?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
            }
            let nanos = start.elapsed().as_nanos();
            println!("pinged {count} in {nanos} ns");
        }
        other => return Err(format!("unknown step {other:?}")),
    }
    Ok(())
}

/// Opens `conns` connections to `addr` and writes up to `bytes` on each without ever waiting:
/// what a container may make the host buffer for it.
fn flood(addr: &str, conns: u64, bytes: u64, chunk: u64, held: &mut Vec<TcpStream>) -> Result<(), String> {
    let buf = vec![0x5au8; chunk.max(1) as usize];
    let (mut opened, mut wrote, mut would_block) = (0u64, 0u64, 0u64);
    let mut failures: Vec<(std::io::ErrorKind, u64)> = Vec::new();
    for _ in 0..conns {
        let mut s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                match failures.iter_mut().find(|(k, _)| *k == e.kind()) {
                    Some((_, n)) => *n += 1,
                    None => failures.push((e.kind(), 1)),
                }
                continue;
            }
        };
        opened += 1;
        s.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            match s.write(&buf[..n]) {
                Ok(0) => break,
                Ok(n) => {
                    wrote += n as u64;
                    left -= n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    would_block += 1;
                    break;
                }
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        held.push(s);
    }
    let failed: u64 = failures.iter().map(|(_, n)| n).sum();
    println!("flood opened {opened} failed {failed} wrote {wrote} would-block {would_block}");
    for (kind, _) in failures {
        println!("connect error: {kind:?}");
    }
    Ok(())
}

/// Byte `i` of the test pattern: not periodic at any power of two, so shifted or dropped
/// chunks are detected.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

fn send(addr: &str, bytes: u64) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut fnv: u64 = 0xcbf29ce484222325;
    let mut sent = 0u64;
    let mut echoed = 0u64;
    let mut out = vec![0u8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        for (k, b) in out[..n].iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        s.write_all(&out[..n]).map_err(|e| format!("write: {e}"))?;
        // Read this chunk's echo before sending the next: a single-threaded client must not
        // let both directions fill up.
        s.read_exact(&mut back[..n]).map_err(|e| format!("read echo: {e}"))?;
        if back[..n] != out[..n] {
            return Err(format!("echo differs in chunk at offset {sent}"));
        }
        for b in &back[..n] {
            fnv = (fnv ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        sent += n as u64;
        echoed += n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(|e| format!("read to end: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the echo", rest.len()));
    }
    println!("sent {sent} echoed {echoed} fnv {fnv:016x}");
    Ok(())
}

fn udp_step(step: &[String], udp: &mut Option<UdpSocket>) -> Result<(), String> {
    let arg = |i: usize| -> Result<&str, String> {
        step.get(i + 1)
            .map(String::as_str)
            .ok_or_else(|| format!("missing argument {}", i + 1))
    };
    match step[0].as_str() {
        "udp-bind" => {
            let s = UdpSocket::bind(arg(0)?).map_err(|e| format!("bind: {e}"))?;
            println!("udp bound {}", s.local_addr().map_err(|e| e.to_string())?.port());
            *udp = Some(s);
        }
        "udp-echo" => {
            let s = udp.as_ref().ok_or("no udp socket")?;
            let n: u64 = arg(0)?.parse().map_err(|e| format!("count: {e}"))?;
            let mut buf = [0u8; 2048];
            for _ in 0..n {
                let (len, from) = s.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
                s.send_to(&buf[..len], from).map_err(|e| format!("send: {e}"))?;
                println!("udp echoed {}", String::from_utf8_lossy(&buf[..len]));
            }
        }
        "udp-send" => {
            // Bind in the target's family: a v4 socket cannot send to a v6 address.
            let any = if arg(0)?.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
            let text = step[2..].join(" ");
            s.send_to(text.as_bytes(), arg(0)?).map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 2048];
            let (len, _) = s.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
            println!("udp reply: {}", String::from_utf8_lossy(&buf[..len]));
        }
        "udp-local" => {
            let any = if arg(0)?.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
            println!("before: {}", s.local_addr().map_err(|e| e.to_string())?);
            s.connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            println!("connected: {}", s.local_addr().map_err(|e| e.to_string())?);
        }
        "udp-refused" => {
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            s.connect(arg(0)?).map_err(|e| format!("connect: {e}"))?;
            // A bound on a broken emulation; not all targets support it, so best effort.
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            s.send(b"anyone?").map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 64];
            match s.recv(&mut buf) {
                Ok(n) => println!("recv: {n} bytes"),
                Err(e) => println!("recv: error {:?}", e.kind()),
            }
        }
        "udp-unconnected" => {
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            s.send_to(b"anyone?", arg(0)?).map_err(|e| format!("send: {e}"))?;
            s.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
            let mut buf = [0u8; 64];
            match s.recv_from(&mut buf) {
                Ok((n, _)) => println!("recv: {n} bytes"),
                Err(e) => println!("recv: error {:?}", e.kind()),
            }
        }
        "udp-blast" => {
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            let n: u64 = step.get(2).ok_or("missing count")?.parse().map_err(|e| format!("count: {e}"))?;
            for i in 0..n {
                s.send_to(&i.to_le_bytes(), arg(0)?).map_err(|e| format!("send: {e}"))?;
            }
            println!("udp blasted {n}");
        }
        "udp-rtt" => {
            let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            let n: u64 = step.get(2).ok_or("missing count")?.parse().map_err(|e| format!("count: {e}"))?;
            let start = std::time::Instant::now();
            for i in 0..n {
                s.send_to(i.to_string().as_bytes(), arg(0)?).map_err(|e| format!("send: {e}"))?;
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            for _ in 0..n {
                let (len, _) = s.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
                got.push(String::from_utf8_lossy(&buf[..len]).to_string());
            }
            println!("udp rtt {n} in {} ns", start.elapsed().as_nanos());
            let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            if got == want {
                println!("order ok");
            } else {
                println!("order: {}", got.join(","));
            }
        }
        "udp-drain" => {
            let s = udp.as_ref().ok_or("no udp socket")?;
            s.set_nonblocking(true).map_err(|e| format!("set_nonblocking: {e}"))?;
            let mut buf = [0u8; 64];
            let mut n = 0u64;
            while s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
            println!("udp drained {n}");
        }
        other => return Err(format!("unknown step {other:?}")),
    }
    Ok(())
}
