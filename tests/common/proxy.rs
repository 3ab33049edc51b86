//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, between sync clients and a test server.
//!
//! One request per connection: the proxy reads a request, forwards it upstream with
//! `connection: close`, reads the whole answer and sends it back with `connection: close`, so
//! request and response boundaries are simple. `GET /sync/subscribe` answers are streams: they
//! are piped through until [`Proxy::cut_streams`] (or either side) ends them.
//!
//! Faults are switched at runtime ([`Proxy::set`]); a fraction of requests (chosen by a
//! deterministic pseudo-random sequence) gets the fault, the others pass through. Some faults
//! happen before the request reaches the server and some after the server has answered (so
//! that the server applied a write whose answer the client never sees).
#![allow(dead_code, reason = "each test file uses a different part")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value as Json;

/// What the proxy does to a faulted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: every request passes through.
    Pass,
    /// Close the connection without an answer (half of them before forwarding the request,
    /// half after the server answered).
    Drop,
    /// Answer `500` with a JSON error body (half before forwarding, half after).
    Error500,
    /// Hold the request this many milliseconds, then forward it.
    Delay(u64),
    /// Forward the request, then send the answer's head and only part of its body, and close.
    Truncate,
    /// Each faulted request gets one of the faults above, at random.
    Mixed,
    /// Close the connection before forwarding the request: the server is out of reach.
    Unreachable,
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Pass,
    DropBefore,
    DropAfter,
    ErrorBefore,
    ErrorAfter,
    Delay(u64),
    Truncate,
}

/// Counts of what the proxy saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests read (all of them, streams included).
    pub requests: u64,
    /// `POST /ops` requests.
    pub ops: u64,
    /// `GET /sync/subscribe` requests.
    pub subscribes: u64,
    /// Requests that got a fault (a delay included).
    pub faulted: u64,
    /// Streams that were open when [`Proxy::cut_streams`] cut them.
    pub streams_cut: u64,
}

struct Control {
    upstream: Mutex<SocketAddr>,
    /// The fault and the fraction of requests (in 1/1000) that get it.
    mode: Mutex<(Fault, u32)>,
    rng: AtomicU64,
    stop: AtomicBool,
    /// Streams are refused (their connections dropped) while set.
    refuse_streams: AtomicBool,
    requests: AtomicU64,
    ops: AtomicU64,
    subscribes: AtomicU64,
    faulted: AtomicU64,
    streams_cut: AtomicU64,
    next_stream: AtomicU64,
    /// Open streams: both sockets of each, to cut them.
    streams: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
}

impl Control {
    /// The next pseudo-random number (splitmix64 over a shared counter: deterministic for a
    /// seed, whatever the thread).
    fn next_random(&self) -> u64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick(&self) -> Action {
        let (fault, per_mille) = *self.mode.lock().unwrap_or_else(PoisonError::into_inner);
        if fault == Fault::Pass || self.next_random() % 1000 >= u64::from(per_mille) {
            return Action::Pass;
        }
        let r = self.next_random();
        let before = r & 1 == 0;
        let action = match fault {
            Fault::Pass => Action::Pass,
            Fault::Unreachable => Action::DropBefore,
            Fault::Drop if before => Action::DropBefore,
            Fault::Drop => Action::DropAfter,
            Fault::Error500 if before => Action::ErrorBefore,
            Fault::Error500 => Action::ErrorAfter,
            Fault::Delay(ms) => Action::Delay(ms),
            Fault::Truncate => Action::Truncate,
            Fault::Mixed => match (r >> 1) % 6 {
                0 => Action::DropBefore,
                1 => Action::DropAfter,
                2 => Action::ErrorBefore,
                3 => Action::ErrorAfter,
                4 => Action::Delay(20 + (r >> 8) % 150),
                _ => Action::Truncate,
            },
        };
        self.faulted.fetch_add(1, Ordering::Relaxed);
        action
    }
}

/// A fault-injecting proxy in front of an upstream server. Stops when dropped.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://{addr}`.
    pub url: String,
    ctl: Arc<Control>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 (a free port) in front of `upstream`, passing everything through;
    /// `seed` seeds the choice of the faulted requests.
    pub fn start(upstream: SocketAddr, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds a port");
        let addr = listener.local_addr().expect("the proxy has an address");
        let ctl = Arc::new(Control {
            upstream: Mutex::new(upstream),
            mode: Mutex::new((Fault::Pass, 0)),
            rng: AtomicU64::new(seed),
            stop: AtomicBool::new(false),
            refuse_streams: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            subscribes: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
            streams_cut: AtomicU64::new(0),
            next_stream: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
        });
        let c = ctl.clone();
        let accept = std::thread::Builder::new()
            .name("test-proxy-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if c.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let c = c.clone();
                    let spawned =
                        std::thread::Builder::new().name("test-proxy-conn".into()).spawn(move || handle(&c, conn));
                    if spawned.is_err() {
                        // Out of threads: the connection is dropped, as a fault would.
                        continue;
                    }
                }
            })
            .expect("the proxy's accept thread starts");
        Proxy { addr, url: format!("http://{addr}"), ctl, accept: Some(accept) }
    }

    /// Faults `per_mille`/1000 of the requests (streams included) with `fault`.
    pub fn set(&self, fault: Fault, per_mille: u32) {
        *self.ctl.mode.lock().unwrap_or_else(PoisonError::into_inner) = (fault, per_mille.min(1000));
    }

    /// Every request passes through from now on.
    pub fn pass(&self) {
        self.set(Fault::Pass, 0);
    }

    /// Forwards to another upstream from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.ctl.upstream.lock().unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    /// Refuses new streams (drops their connections) while `refuse` holds; other requests
    /// are not affected.
    pub fn refuse_streams(&self, refuse: bool) {
        self.ctl.refuse_streams.store(refuse, Ordering::Release);
    }

    /// Cuts every open stream (both sides see the connection end). Returns how many.
    pub fn cut_streams(&self) -> usize {
        let streams = std::mem::take(&mut *self.ctl.streams.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, client, server) in &streams {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        self.ctl.streams_cut.fetch_add(streams.len() as u64, Ordering::Relaxed);
        streams.len()
    }

    /// How many streams are open now.
    pub fn open_streams(&self) -> usize {
        self.ctl.streams.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// What the proxy saw so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            requests: self.ctl.requests.load(Ordering::Relaxed),
            ops: self.ctl.ops.load(Ordering::Relaxed),
            subscribes: self.ctl.subscribes.load(Ordering::Relaxed),
            faulted: self.ctl.faulted.load(Ordering::Relaxed),
            streams_cut: self.ctl.streams_cut.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.cut_streams();
    }
}

/// A parsed message head: the start line and the headers, as sent.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.trim().parse().ok())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The head with `connection: close` (and no other hop-by-hop connection headers).
    fn encode_closing(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (n, v) in &self.headers {
            let lower = n.to_ascii_lowercase();
            if lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" {
                continue;
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Reads up to the end of a message head (`\r\n\r\n`). Returns the head and the bytes read
/// after it.
fn read_head(s: &mut impl Read) -> std::io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            let mut lines = text.split("\r\n");
            let start = lines.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            return Ok((Head { start, headers }, rest));
        }
        if buf.len() > 256 * 1024 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a message head over 256 KiB"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed before a head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a message body framed by `head` (content-length, chunked, or up to the end of the
/// stream), starting with the bytes already read. Returns the body as it was on the wire.
fn read_body(s: &mut impl Read, head: &Head, mut buf: Vec<u8>, to_eof: bool) -> std::io::Result<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    if head.chunked() {
        // Read until the last chunk (`0\r\n` … `\r\n\r\n`).
        loop {
            if chunked_complete(&buf) {
                return Ok(buf);
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a chunked body ended early"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    match head.content_length() {
        Some(len) => {
            while buf.len() < len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a body ended early"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.truncate(len);
            Ok(buf)
        }
        None if to_eof => {
            s.read_to_end(&mut buf)?;
            Ok(buf)
        }
        None => Ok(buf),
    }
}

/// Whether a chunked body is complete (its zero-size chunk and the final empty line seen).
fn chunked_complete(buf: &[u8]) -> bool {
    let mut i = 0;
    loop {
        let Some(nl) = buf[i..].windows(2).position(|w| w == b"\r\n") else { return false };
        let line = String::from_utf8_lossy(&buf[i..i + nl]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else { return false };
        i += nl + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(nl) = buf[i..].windows(2).position(|w| w == b"\r\n") else { return false };
                if nl == 0 {
                    return true;
                }
                i += nl + 2;
            }
        }
        if buf.len() < i + size + 2 {
            return false;
        }
        i += size + 2;
    }
}

/// The payload of a chunked body.
fn dechunk(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(nl) = buf[i..].windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&buf[i..i + nl]);
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16) else { break };
        i += nl + 2;
        if size == 0 || buf.len() < i + size {
            break;
        }
        out.extend_from_slice(&buf[i..i + size]);
        i += size + 2;
    }
    out
}

fn error_500(message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "ok": false,
        "error": { "code": "INTERNAL", "message": message, "kind": "internal" },
        "meta": { "v": 1 }
    })
    .to_string();
    format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Closes a connection after everything written reached the peer's socket.
fn close(mut s: TcpStream) {
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
}

fn handle(ctl: &Control, mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = client.set_nodelay(true);
    let Ok((head, rest)) = read_head(&mut client) else { return };
    let Ok(body) = read_body(&mut client, &head, rest, false) else { return };
    ctl.requests.fetch_add(1, Ordering::Relaxed);
    let mut parts = head.start.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let stream = method == "GET" && path.starts_with("/sync/subscribe");
    if stream {
        ctl.subscribes.fetch_add(1, Ordering::Relaxed);
    } else if path.starts_with("/ops") {
        ctl.ops.fetch_add(1, Ordering::Relaxed);
    }
    let mut action = ctl.pick();
    if stream && ctl.refuse_streams.load(Ordering::Acquire) {
        action = Action::DropBefore;
    } else if stream {
        // A stream has no end to cut: its faults happen before it opens.
        action = match action {
            Action::DropAfter | Action::Truncate => Action::DropBefore,
            Action::ErrorAfter => Action::ErrorBefore,
            a => a,
        };
    }
    match action {
        Action::DropBefore => {
            close(client);
            return;
        }
        Action::ErrorBefore => {
            let _ = client.write_all(&error_500("the proxy failed the request"));
            close(client);
            return;
        }
        Action::Delay(ms) => std::thread::sleep(Duration::from_millis(ms)),
        _ => {}
    }
    let upstream_addr = *ctl.upstream.lock().unwrap_or_else(PoisonError::into_inner);
    let Ok(mut server) = TcpStream::connect_timeout(&upstream_addr, Duration::from_secs(2)) else {
        // The server is away: so is the proxy.
        close(client);
        return;
    };
    let _ = server.set_nodelay(true);
    let mut request = head.encode_closing();
    request.extend_from_slice(&body);
    if server.write_all(&request).is_err() {
        close(client);
        return;
    }
    if stream {
        pipe_stream(ctl, client, server);
        return;
    }
    let _ = server.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok((rhead, rest)) = read_head(&mut server) else {
        close(client);
        return;
    };
    let Ok(rbody) = read_body(&mut server, &rhead, rest, true) else {
        close(client);
        return;
    };
    drop(server);
    match action {
        Action::DropAfter => close(client),
        Action::ErrorAfter => {
            let _ = client.write_all(&error_500("the proxy lost the answer"));
            close(client);
        }
        Action::Truncate => {
            // The head as the server sent it (its length or chunking promises more), then
            // half the body.
            let mut out = rhead.encode_closing();
            out.extend_from_slice(&rbody[..rbody.len() / 2]);
            let _ = client.write_all(&out);
            close(client);
        }
        _ => {
            let mut out = rhead.encode_closing();
            out.extend_from_slice(&rbody);
            let _ = client.write_all(&out);
            close(client);
        }
    }
}

/// Pipes a stream both ways until either side ends or [`Proxy::cut_streams`] cuts it.
fn pipe_stream(ctl: &Control, client: TcpStream, server: TcpStream) {
    let id = ctl.next_stream.fetch_add(1, Ordering::Relaxed);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
        (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
    else {
        return;
    };
    // No read timeouts on a stream: heartbeats are 15 s apart.
    let _ = client.set_read_timeout(None);
    let _ = server.set_read_timeout(None);
    ctl.streams.lock().unwrap_or_else(PoisonError::into_inner).push((id, c3, s3));
    let up = std::thread::Builder::new().name("test-proxy-stream".into()).spawn(move || copy_until_end(s2, c2));
    copy_until_end(client, server);
    if let Ok(t) = up {
        let _ = t.join();
    }
    ctl.streams.lock().unwrap_or_else(PoisonError::into_inner).retain(|(i, _, _)| *i != id);
}

/// Copies `from` to `to` until `from` ends; then ends both.
fn copy_until_end(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// `POST {path}` with a JSON body straight to `addr` (no proxy, no pool): the status and the
/// parsed JSON answer.
pub fn post_json(addr: SocketAddr, path: &str, body: &Json) -> (u16, Json) {
    let body = body.to_string();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects to the server");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("a read timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("sends the request");
    let (head, rest) = read_head(&mut s).expect("an answer head");
    let raw = read_body(&mut s, &head, rest, true).expect("an answer body");
    let payload = if head.chunked() { dechunk(&raw) } else { raw };
    let status = head.start.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, serde_json::from_slice(&payload).expect("a JSON answer"))
}

/// The server's whole change log for `resources`, oldest first (pulled from cursor `"0"`
/// straight from the server).
pub fn change_log(addr: SocketAddr, resources: &[&str]) -> Vec<Json> {
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let req = serde_json::json!({
            "meta": { "v": 1 },
            "ops": [ { "opId": "p", "kind": "changes.pull",
                       "pull": { "cursor": cursor, "limit": 1000, "resources": resources } } ]
        });
        let (status, resp) = post_json(addr, "/ops", &req);
        assert_eq!(status, 200, "pull answered {resp}");
        let result = &resp["data"]["results"][0];
        assert_eq!(result["ok"], Json::Bool(true), "pull failed: {result}");
        let changes = result["data"]["changes"].as_array().cloned().unwrap_or_default();
        let next = result["data"]["nextCursor"].as_str().expect("a next cursor").to_owned();
        let done = changes.is_empty() || next == cursor;
        out.extend(changes);
        cursor = next;
        if done {
            return out;
        }
    }
}

/// Every record of `resource` on the server (a query straight to it), sorted by id.
pub fn server_records(addr: SocketAddr, resource: &str) -> Vec<Json> {
    let req = serde_json::json!({
        "meta": { "v": 1 },
        "ops": [ { "opId": "q", "kind": "query",
                   "query": { "resource": resource, "query": { "page": { "mode": "offset", "limit": 1000 } } } } ]
    });
    let (status, resp) = post_json(addr, "/ops", &req);
    assert_eq!(status, 200, "query answered {resp}");
    let result = &resp["data"]["results"][0];
    assert_eq!(result["ok"], Json::Bool(true), "query failed: {result}");
    let mut records = result["data"]["data"].as_array().cloned().unwrap_or_default();
    records.sort_by_key(|r| r["id"].as_str().unwrap_or_default().to_owned());
    records
}
