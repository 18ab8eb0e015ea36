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
//! - `try-bind ADDR`            print `bind ok PORT` or `bind failed: KIND`
//! - `try-connect ADDR`         print `connect ok` or `connect failed: KIND`
//! - `lookup NAME`              print `addr: IP` per address or `lookup failed: KIND`
//! - `addrs ADDR`               connect; print `local: ADDR` and `peer: ADDR`
//! - `udp-bind ADDR`            bind a UDP socket kept for later steps; print `udp bound PORT`
//! - `udp-echo N`               receive N datagrams on it, send each back; print `udp echoed TEXT`
//! - `udp-send ADDR TEXT`       from a fresh socket, send TEXT and wait for the reply; print
//!                              `udp reply: TEXT`
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
        other => return Err(format!("unknown step {other:?}")),
    }
    Ok(())
}
