//! `webserver`: a small HTTP/1.1 server written with plain `std::net`, the way a person would
//! write one without any WebAssembly-specific crate. It shows that ordinary socket code runs
//! unchanged on the pod network.
//!
//! Usage: `webserver PORT [ROOT]`, or `webserver --get HOST:PORT PATH` to make one GET request
//! and print `status: CODE` and the body (a client written with `std::net` too), or
//! `webserver --hold-get FILE HOST:PORT PATH` to connect, print `connected`, wait until FILE
//! exists (a connection held open across something the test does), then make the request on
//! that connection.
//!
//! As a server, `webserver PORT [ROOT]` It listens on `0.0.0.0:PORT` and answers, one connection at
//! a time (WASI 0.2 has no threads), each with `Connection: close`:
//! - `GET /hello`            `hello from NAME` (NAME = argv[0], the container name)
//! - `GET /version`          the `VERSION` environment variable (`unset` without one)
//! - `POST /echo`            the request body back
//! - `GET /PATH`             the file ROOT/PATH, when ROOT is given (no `..` allowed)
//! - anything else           404

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// Requests larger than this are refused; the server holds one request in memory at a time.
const MAX_BODY: usize = 32 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.first().cloned().unwrap_or_else(|| "webserver".into());
    if args.get(1).map(String::as_str) == Some("--get") {
        let (Some(authority), Some(path)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: webserver --get HOST:PORT PATH");
            std::process::exit(2);
        };
        match get(authority, path) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("GET http://{authority}{path} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if args.get(1).map(String::as_str) == Some("--hold-get") {
        let (Some(file), Some(authority), Some(path)) = (args.get(2), args.get(3), args.get(4)) else {
            eprintln!("usage: webserver --hold-get FILE HOST:PORT PATH");
            std::process::exit(2);
        };
        match hold_get(file, authority, path) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("held GET http://{authority}{path} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let Some(port) = args.get(1) else {
        eprintln!("usage: webserver PORT [ROOT]");
        std::process::exit(2);
    };
    let root = args.get(2).cloned();
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on port {port}");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = serve(stream, &name, root.as_deref()) {
                    eprintln!("connection failed: {e}");
                }
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
}

/// One HTTP/1.1 GET with `Connection: close`; prints the status code and the body.
fn get(authority: &str, path: &str) -> std::io::Result<()> {
    request(TcpStream::connect(authority)?, authority, path)
}

/// Connects, then waits (polling, at most a minute) until `file` exists before the GET.
fn hold_get(file: &str, authority: &str, path: &str) -> std::io::Result<()> {
    let stream = TcpStream::connect(authority)?;
    println!("connected");
    let _ = std::io::stdout().flush();
    let mut waited = 0;
    while !std::path::Path::new(file).exists() {
        if waited >= 60_000 {
            return Err(std::io::Error::other(format!("{file} did not appear within 60 s")));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 10;
    }
    request(stream, authority, path)
}

fn request(mut stream: TcpStream, authority: &str, path: &str) -> std::io::Result<()> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    println!("status: {status}");
    for line in body.lines() {
        println!("body: {line}");
    }
    Ok(())
}

fn serve(stream: TcpStream, name: &str, root: Option<&str>) -> std::io::Result<()> {
    // `&TcpStream` reads and writes, so one connection needs no cloned handle.
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((key, value)) = header.split_once(':')
            && key.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut stream = &stream;
    if content_length > MAX_BODY {
        return respond(&mut stream, "413 Payload Too Large", "text/plain", b"too large\n");
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    println!("{method} {path}");
    match (method, path) {
        ("GET", "/hello") => respond(
            &mut stream,
            "200 OK",
            "text/plain",
            format!("hello from {name}\n").as_bytes(),
        ),
        ("GET", "/version") => {
            let version = std::env::var("VERSION").unwrap_or_else(|_| "unset".into());
            respond(&mut stream, "200 OK", "text/plain", format!("{version}\n").as_bytes())
        }
        ("POST", "/echo") => respond(&mut stream, "200 OK", "application/octet-stream", &body),
        ("GET", path) if root.is_some() && !path.split('/').any(|part| part == "..") => {
            let root = root.unwrap_or_default();
            let relative = path.trim_start_matches('/');
            let file = if relative.is_empty() { "index.html" } else { relative };
            match std::fs::read(format!("{root}/{file}")) {
                Ok(bytes) => respond(&mut stream, "200 OK", content_type(file), &bytes),
                Err(_) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
            }
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
    }
}

fn respond(stream: &mut &TcpStream, status: &str, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    }
}
