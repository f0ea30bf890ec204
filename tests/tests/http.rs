//! The HTTP/1.1 forward proxy (`kind = "http"`), end to end through both
//! binaries: curl against a private nginx (a real origin), and a raw client
//! against a scripted raw origin for framing, pipelining, hop-by-hop
//! handling, upgrades, CONNECT, every refusal of SPEC.md, misbehaving
//! upstreams, Basic authentication and the connection limit.
//!
//! Tools the cases need beyond the harness: `curl` (Debian package curl) and
//! `nginx` (package nginx; started privately from each test, on its own
//! port, with a generated configuration in a temporary directory). A case
//! whose tool is missing fails and names the package.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use portico_tests::data::base64;
use portico_tests::logline::AccessLine;
use portico_tests::net::LOCALHOST;
use portico_tests::{
    both, config_head, connect, curl_command, digest, file_digest, free_port, local, pattern,
    poll_until, read_outcome, require, run_tool, service, spawn_bounded, start_on_free_port,
    Acceptor, Behaviour, Bin, LineLog, Portico, ReadOutcome, StartOptions, TempDir, TestServer,
    ToolOutput, ALICE, CLIENT_SEED, IO_TIMEOUT, PROMPTLY, SERVER_SEED,
};

const MIB: usize = 1024 * 1024;
/// How long one run of curl may take (a debug build on a busy machine).
const TOOL_LIMIT: Duration = Duration::from_secs(240);
/// With a 1 s handshake or connect timeout: the bound within which the
/// proxy must have answered (generous; never a speed check).
const STALL_BOUND: Duration = Duration::from_secs(20);
/// How long a connection must stay silent to count as "sent nothing more".
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// The proxy under test.

/// A configuration with one `http` service `web` on 127.0.0.1:`port`, the
/// user alice (password `secret`), `limits` lines in `[limits]` and `extra`
/// (more users) before the service.
fn http_config(port: u16, auth: bool, connect_ports: &[u16], limits: &str, extra: &str) -> String {
    let ports: Vec<String> = connect_ports.iter().map(|p| p.to_string()).collect();
    let ports = ports.join(", ");
    format!(
        "{}\n{ALICE}\n{extra}\n{}",
        config_head(limits, ""),
        service(
            "web",
            "http",
            port,
            &format!("connect_ports = [{ports}]\nauth = {auth}")
        )
    )
}

/// Starts `bin` with [`http_config`] on a fresh port; returns the proxy and
/// its address.
fn start_http(
    bin: Bin,
    auth: bool,
    connect_ports: &[u16],
    limits: &str,
    extra: &str,
) -> (Portico, SocketAddr) {
    start_on_free_port(bin, StartOptions::default(), |port| {
        http_config(port, auth, connect_ports, limits, extra)
    })
}

/// A [`RawOrigin::ok`] and a proxy without authentication (CONNECT to 443
/// only) in front of it; returns them and the proxy's address.
fn origin_and_proxy(bin: Bin) -> (RawOrigin, Portico, SocketAddr) {
    let origin = RawOrigin::ok();
    let (p, addr) = start_http(bin, false, &[443], "", "");
    (origin, p, addr)
}

/// The first access-log line of the `web` service satisfying `pred`,
/// waiting at most [`PROMPTLY`].
fn wait_access(p: &Portico, what: &str, pred: impl FnMut(&AccessLine) -> bool) -> AccessLine {
    p.expect_access("web", what, PROMPTLY, pred)
}

fn assert_running(p: &mut Portico, what: &str) {
    assert!(
        p.is_running(),
        "{}: {what}: the proxy process must stay up; stderr:\n{}",
        p.bin(),
        p.stderr_text()
    );
}

// ---------------------------------------------------------------------------
// Bytes on the wire.

/// `b` for an assertion message: lossy text, escaped, cut at 800 bytes.
fn show(b: &[u8]) -> String {
    let cut = &b[..b.len().min(800)];
    let more = if b.len() > 800 {
        format!(" … ({} bytes in all)", b.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

/// A socket with a read buffer: heads, exact counts, chunked bodies (raw,
/// framing included), everything to EOF.
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(s: TcpStream) -> Wire {
        Wire { s, buf: Vec::new() }
    }

    /// One read appended to the buffer; false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = match e.kind() {
                        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                            "nothing arrived within the socket's read timeout".to_string()
                        }
                        _ => e.to_string(),
                    };
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "{why} (with {} unparsed: {})",
                            self.buf.len(),
                            show(&self.buf)
                        ),
                    ));
                }
            }
        }
    }

    fn eof(&self, what: &str) -> io::Error {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("closed in {what}; unparsed: {}", show(&self.buf)),
        )
    }

    /// The next head through its CRLFCRLF; `None` at EOF before any byte.
    fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..i + 4).collect()));
            }
            if self.buf.len() > 2 * MIB {
                return Err(invalid(format!("no end of head in {}", show(&self.buf))));
            }
            if !self.fill()? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(self.eof("a head"))
                };
            }
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(self.eof(&format!("{n} bytes")));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// A line through its CRLF.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if self.buf.len() > 2 * MIB {
                return Err(invalid(format!("no end of line in {}", show(&self.buf))));
            }
            if !self.fill()? {
                return Err(self.eof("a line"));
            }
        }
    }

    /// A chunked body as sent: sizes, extensions, data, trailers, final CRLF.
    fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        loop {
            let line = self.line()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk-size line {text:?}")))?;
            if size == 0 {
                loop {
                    let t = self.line()?;
                    raw.extend_from_slice(&t);
                    if t == b"\r\n" {
                        return Ok(raw);
                    }
                }
            }
            let data = self.take(size + 2)?;
            if !data.ends_with(b"\r\n") {
                return Err(invalid("chunk data not followed by CRLF".into()));
            }
            raw.extend_from_slice(&data);
        }
    }

    fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? {}
        Ok(std::mem::take(&mut self.buf))
    }
}

/// A parsed head (request or response), as received.
#[derive(Clone, Debug)]
struct Head {
    raw: Vec<u8>,
    start: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: Vec<u8>) -> Head {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or("").to_string();
        let fields = lines
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((n, v)) => (n.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        Head { raw, start, fields }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn reason(&self) -> &str {
        self.start.splitn(3, ' ').nth(2).unwrap_or("")
    }

    /// The request target (second word of a request line).
    fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The comma-separated elements of every `name` field, lowercased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }

    fn chunked(&self) -> bool {
        self.tokens("transfer-encoding").last().map(String::as_str) == Some("chunked")
    }
}

/// A response as the client received it; the body raw (chunked framing
/// kept).
#[derive(Debug)]
struct Resp {
    head: Head,
    body: Vec<u8>,
}

impl Resp {
    fn status(&self) -> u16 {
        self.head.status()
    }

    fn text(&self) -> String {
        format!("{}{}", self.head.text(), show(&self.body))
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP client.

struct Client {
    bin: Bin,
    w: Wire,
}

impl Client {
    fn open(bin: Bin, proxy: SocketAddr) -> Client {
        let s =
            connect(proxy).unwrap_or_else(|e| panic!("{bin}: connect to the proxy {proxy}: {e}"));
        Client {
            bin,
            w: Wire::new(s),
        }
    }

    fn local(&self) -> SocketAddr {
        self.w
            .s
            .local_addr()
            .expect("local_addr of a connected socket")
    }

    fn send(&mut self, bytes: &[u8], what: &str) {
        self.w
            .s
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: {what}: writing {} bytes: {e}", self.bin, bytes.len()));
    }

    /// Sends `msg` (a request that is not HEAD) and reads the response.
    fn ask(&mut self, msg: &[u8], what: &str) -> Resp {
        self.send(msg, what);
        self.response(false, what)
    }

    fn head(&mut self, what: &str) -> Head {
        match self.w.head() {
            Ok(Some(raw)) => Head::parse(raw),
            Ok(None) => panic!("{}: {what}: the proxy closed without a response", self.bin),
            Err(e) => panic!("{}: {what}: reading a response head: {e}", self.bin),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Vec<u8> {
        self.w
            .take(n)
            .unwrap_or_else(|e| panic!("{}: {what}: reading {n} bytes: {e}", self.bin))
    }

    /// The next response (a 1xx included) with its body, framed as RFC 9112
    /// says for a request that was HEAD (`head_request`) or not.
    fn response(&mut self, head_request: bool, what: &str) -> Resp {
        let head = self.head(what);
        let st = head.status();
        let body = if head_request || st < 200 || st == 204 || st == 304 {
            Ok(Vec::new())
        } else if head.chunked() {
            self.w.chunked()
        } else if let Some(n) = head.content_length() {
            self.w.take(n)
        } else {
            self.w.read_to_eof()
        };
        let body = body.unwrap_or_else(|e| {
            panic!(
                "{}: {what}: reading the body after {}: {e}",
                self.bin,
                head.text()
            )
        });
        Resp { head, body }
    }

    /// The final response: 1xx interim responses (not 101) are skipped and
    /// returned first.
    fn final_response(&mut self, head_request: bool, what: &str) -> (Vec<Head>, Resp) {
        let mut interim = Vec::new();
        loop {
            let r = self.response(head_request, what);
            if (100..200).contains(&r.status()) && r.status() != 101 {
                interim.push(r.head);
                continue;
            }
            return (interim, r);
        }
    }

    fn rest_to_eof(&mut self, what: &str) -> Vec<u8> {
        self.w
            .read_to_eof()
            .unwrap_or_else(|e| panic!("{}: {what}: reading to EOF: {e}", self.bin))
    }

    /// The proxy must close the connection now, sending nothing more.
    fn expect_closed(&mut self, what: &str) {
        assert!(
            self.w.buf.is_empty(),
            "{}: {what}: bytes after the response: {}",
            self.bin,
            show(&self.w.buf)
        );
        let outcome = read_outcome(&mut self.w.s, PROMPTLY);
        match outcome {
            ReadOutcome::Eof | ReadOutcome::Reset(_) => {}
            ReadOutcome::Data(d) => panic!(
                "{}: {what}: the proxy must close; it sent more: {}",
                self.bin,
                show(&d)
            ),
            other => panic!(
                "{}: {what}: the proxy must close the connection; got {other:?}",
                self.bin
            ),
        }
    }

    /// Nothing more may arrive for [`QUIET`], and the connection stays open.
    fn expect_quiet(&mut self, what: &str) {
        assert!(
            self.w.buf.is_empty(),
            "{}: {what}: stray bytes: {}",
            self.bin,
            show(&self.w.buf)
        );
        match read_outcome(&mut self.w.s, QUIET) {
            ReadOutcome::TimedOut => {}
            ReadOutcome::Data(d) => {
                panic!("{}: {what}: stray bytes: {}", self.bin, show(&d))
            }
            other => panic!(
                "{}: {what}: the connection must stay open and silent; got {other:?}",
                self.bin
            ),
        }
    }
}

/// `METHOD http://ORIGIN PATH HTTP/1.1` with `Host: ORIGIN` and `headers`
/// (each ending in CRLF), then the blank line.
fn req(method: &str, origin: SocketAddr, path: &str, headers: &str) -> Vec<u8> {
    format!("{method} http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n{headers}\r\n")
        .into_bytes()
}

fn get(origin: SocketAddr, path: &str) -> Vec<u8> {
    req("GET", origin, path, "")
}

/// What is wrong with a reply the proxy made itself, if anything: it must
/// have `status`, a text/plain one-line body naming the status, and (with
/// `close`) `Connection: close`.
fn own_reply_problem(r: &Resp, status: u16, close: bool) -> Option<String> {
    if r.status() != status {
        return Some(format!("status {} instead of {status}", r.status()));
    }
    let ct = r.head.get("content-type").unwrap_or("");
    if !ct.starts_with("text/plain") {
        return Some("the proxy's own reply is not text/plain".into());
    }
    let body = String::from_utf8_lossy(&r.body);
    if !(body.starts_with(&status.to_string())
        && body.ends_with('\n')
        && body.matches('\n').count() == 1)
    {
        return Some("the body is not one line naming the status".into());
    }
    if close && !r.head.tokens("connection").iter().any(|t| t == "close") {
        return Some("a reply before closing must say Connection: close".into());
    }
    None
}

/// Checks a reply the proxy made itself (see [`own_reply_problem`]).
fn check_own_reply(bin: Bin, r: &Resp, status: u16, close: bool, what: &str) {
    if let Some(p) = own_reply_problem(r, status, close) {
        panic!("{bin}: {what}: {p}; response:\n{}", r.text());
    }
}

// ---------------------------------------------------------------------------
// A scripted raw origin.

/// What the raw origin saw.
#[derive(Debug)]
enum Seen {
    /// A request head and its body (raw for chunked), on connection `conn`.
    Request {
        conn: u64,
        head: Head,
        body: Vec<u8>,
    },
    /// Connection `conn` ended (the script returned).
    Ended { conn: u64 },
}

/// One connection of the raw origin, as its script sees it.
struct OriginConn {
    w: Wire,
    conn: u64,
    tx: mpsc::Sender<Seen>,
}

impl OriginConn {
    fn read_head(&mut self) -> io::Result<Option<Head>> {
        Ok(self.w.head()?.map(Head::parse))
    }

    /// The request body its head announces (raw for chunked).
    fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.chunked() {
            self.w.chunked()
        } else if let Some(n) = head.content_length() {
            self.w.take(n)
        } else {
            Ok(Vec::new())
        }
    }

    fn tell(&self, head: &Head, body: &[u8]) {
        let _ = self.tx.send(Seen::Request {
            conn: self.conn,
            head: head.clone(),
            body: body.to_vec(),
        });
    }

    /// The next request, head and body, reported; `None` at EOF.
    fn request(&mut self) -> io::Result<Option<(Head, Vec<u8>)>> {
        let Some(head) = self.read_head()? else {
            return Ok(None);
        };
        let body = self.read_body(&head)?;
        self.tell(&head, &body);
        Ok(Some((head, body)))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.s.write_all(bytes)
    }

    /// Shuts the write side and reads until the proxy closes.
    fn close(&mut self) -> io::Result<()> {
        self.w.s.shutdown(Shutdown::Write)?;
        self.w.read_to_eof().map(|_| ())
    }
}

struct RawOrigin {
    addr: SocketAddr,
    acceptor: Acceptor,
    seen: Mutex<(mpsc::Receiver<Seen>, VecDeque<Seen>)>,
}

impl RawOrigin {
    /// Runs `script` on each accepted connection, on its own thread.
    fn start(script: impl Fn(&mut OriginConn) -> io::Result<()> + Send + Sync + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let acceptor = Acceptor::start(LOCALHOST, "raw origin", move |s, conn| {
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            let _ = s.set_nodelay(true);
            let mut c = OriginConn {
                w: Wire::new(s),
                conn,
                tx: tx.clone(),
            };
            let _ = script(&mut c);
            let _ = tx.send(Seen::Ended { conn });
        });
        RawOrigin {
            addr: acceptor.addr(),
            acceptor,
            seen: Mutex::new((rx, VecDeque::new())),
        }
    }

    /// Answers every request of every connection with `reply(head, body)`,
    /// until the proxy closes.
    fn routes(reply: impl Fn(&Head, &[u8]) -> Vec<u8> + Send + Sync + 'static) -> Self {
        RawOrigin::start(move |c| {
            while let Some((head, body)) = c.request()? {
                c.write(&reply(&head, &body))?;
            }
            Ok(())
        })
    }

    /// Answers everything with [`ok_reply`].
    fn ok() -> Self {
        RawOrigin::routes(|h, _| ok_reply(h))
    }

    fn port(&self) -> u16 {
        self.acceptor.port()
    }

    fn accepted(&self) -> u64 {
        self.acceptor.accepted()
    }

    /// The first event satisfying `pred`, waiting at most `wait`; others stay
    /// queued.
    fn find(&self, wait: Duration, mut pred: impl FnMut(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + wait;
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (rx, pending) = &mut *g;
        if let Some(i) = pending.iter().position(&mut pred) {
            return pending.remove(i);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) if pred(&s) => return Some(s),
                Ok(s) => pending.push_back(s),
                Err(_) => return None,
            }
        }
    }

    /// The next request the origin received: (connection, head, body).
    fn request(&self, bin: Bin, what: &str) -> (u64, Head, Vec<u8>) {
        match self.find(PROMPTLY, |s| matches!(s, Seen::Request { .. })) {
            Some(Seen::Request { conn, head, body }) => (conn, head, body),
            _ => panic!("{bin}: {what}: the origin received no request within {PROMPTLY:?}"),
        }
    }

    /// Waits until connection `conn` of the origin has ended (the proxy
    /// closed it).
    fn ended(&self, bin: Bin, conn: u64, what: &str) {
        let got = self.find(
            PROMPTLY,
            |s| matches!(s, Seen::Ended { conn: c } if *c == conn),
        );
        assert!(
            got.is_some(),
            "{bin}: {what}: the proxy must drop its upstream connection #{conn}; it is still open \
             {PROMPTLY:?} later"
        );
    }
}

/// `200 OK` with a body naming the request: `origin: METHOD TARGET\n`.
fn ok_reply(h: &Head) -> Vec<u8> {
    let body = ok_body(h.start.split(' ').next().unwrap_or(""), h.target());
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

fn ok_body(method: &str, target: &str) -> Vec<u8> {
    format!("origin: {method} {target}\n").into_bytes()
}

/// A request through the proxy at `proxy` to `origin` works: a new
/// connection, `GET PATH`, 200 with [`ok_reply`]'s body.
fn works_after(bin: Bin, proxy: SocketAddr, origin: SocketAddr, what: &str) {
    let mut c = Client::open(bin, proxy);
    let r = c.ask(&get(origin, "/after"), what);
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, ok_body("GET", "/after").as_slice()),
        "{bin}: {what}: a request on a new connection afterwards; response:\n{}",
        r.text()
    );
}

// ---------------------------------------------------------------------------
// External tools, run with a bounded wait.

/// `curl -q -sS --max-time 200 -x http://PROXY [ARGS…] URLS…`, with a
/// bounded wait.
fn curl(bin: Bin, proxy: SocketAddr, args: &[&str], urls: &[&str]) -> ToolOutput {
    let mut cmd = curl_command(200);
    cmd.arg("-x")
        .arg(format!("http://{proxy}"))
        .args(args)
        .args(urls);
    run_tool(bin, cmd, None, TOOL_LIMIT)
}

fn curl_ok(bin: Bin, proxy: SocketAddr, args: &[&str], urls: &[&str], what: &str) -> ToolOutput {
    let out = curl(bin, proxy, args, urls);
    assert!(
        out.status.success(),
        "{bin}: {what}: curl through the proxy failed: {}",
        out.text()
    );
    out
}

/// curl's stderr must show `needle` `times` times (`None`: at least once).
fn expect_curl_says(bin: Bin, out: &ToolOutput, needle: &str, times: Option<usize>, what: &str) {
    let seen = out.stderr.matches(needle).count();
    assert!(
        times.map_or(seen > 0, |n| seen == n),
        "{bin}: {what}: curl's stderr shows {needle:?} {seen} times, want {}: {}",
        times.map_or("at least once".to_string(), |n| n.to_string()),
        out.text()
    );
}

// ---------------------------------------------------------------------------
// A private nginx.

const INDEX: &str = "<html><body>portico end-to-end index</body></html>\n";
const BIG_LEN: usize = 50 * MIB;
const UPLOAD_LEN: usize = 20 * MIB;

/// nginx on 127.0.0.1, master process off, in the foreground, serving a
/// temporary directory: `/index.html`, `/big.bin` ([`BIG_LEN`] pattern
/// bytes, when asked for), `/nocontent` (204) and PUT under `/upload/`.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    log: Arc<LineLog>,
    big_digest: u64,
}

impl Nginx {
    fn start(bin: Bin, big: bool) -> Nginx {
        let nginx = require("nginx", "nginx");
        let dir = TempDir::new();
        let d = dir.path().to_path_buf();
        for sub in ["www/upload", "tmp", "logs"] {
            std::fs::create_dir_all(d.join(sub))
                .unwrap_or_else(|e| panic!("nginx: mkdir {sub}: {e}"));
        }
        std::fs::write(d.join("www/index.html"), INDEX).expect("nginx: write index.html");
        let big_digest = if big {
            let data = pattern(SERVER_SEED, BIG_LEN);
            std::fs::write(d.join("www/big.bin"), &data).expect("nginx: write big.bin");
            digest(&data)
        } else {
            0
        };
        let port = free_port();
        let dd = d.display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {dd}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dd}/tmp/body;
    proxy_temp_path {dd}/tmp/proxy;
    fastcgi_temp_path {dd}/tmp/fastcgi;
    uwsgi_temp_path {dd}/tmp/uwsgi;
    scgi_temp_path {dd}/tmp/scgi;
    default_type application/octet-stream;
    types {{ text/html html; }}
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {dd}/www;
        location = /nocontent {{ return 204; }}
        location /upload/ {{
            client_max_body_size 100m;
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"#
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx: write nginx.conf");
        let mut child = Command::new(&nginx)
            .arg("-p")
            .arg(&d)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: cannot start {}: {e}", nginx.display()));
        let log = LineLog::start(child.stderr.take());
        let addr = local(port);
        let ready = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(Err(st));
            }
            connect(addr).ok().map(|_| Ok(()))
        });
        let ng = Nginx {
            child,
            addr,
            dir,
            log,
            big_digest,
        };
        match ready {
            Some(Ok(())) => ng,
            Some(Err(st)) => panic!("{bin}: nginx exited ({st}) at start:\n{}", ng.log_text()),
            None => panic!(
                "{bin}: nginx did not listen on {addr} within 20s:\n{}",
                ng.log_text()
            ),
        }
    }

    fn log_text(&self) -> String {
        self.log.text()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- nginx stderr ----\n{}", self.log_text());
        }
    }
}

// ---------------------------------------------------------------------------
// The cases.

both!(
    curl_get_50mb_file,
    curl_keep_alive_reuse,
    curl_not_modified_reuse,
    curl_head_no_body,
    curl_put_upload,
    nginx_bodyless_responses_keep_connection,
    nginx_pipelined_in_order,
    access_log_line_per_request,
    client_connection_close_honoured,
    two_origins_on_one_connection,
    host_name_resolved,
    pipelined_requests_in_order,
    request_body_content_length,
    request_body_chunked_with_trailers,
    expect_100_continue,
    interim_103_forwarded,
    response_chunked_with_trailers,
    response_close_delimited,
    hop_by_hop_removed_from_request,
    hop_by_hop_removed_from_response,
    via_added_and_host_regenerated,
    max_forwards_zero_answered_locally,
    max_forwards_decremented,
    loop_refused,
    via_of_another_proxy_forwarded,
    websocket_upgrade_tunnel,
    curl_connect_tunnel,
    connect_port_not_allowed,
    connect_pipelined_bytes_once,
    connect_bad_targets,
    refusals,
    chunked_capitalised_accepted,
    request_line_limit,
    head_limit,
    head_limit_with_larger_buffer,
    handshake_timeout_408,
    handshake_timeout_408_on_later_request,
    upstream_bad_framing_502,
    upstream_bad_chunk_cuts_connection,
    no_bytes_after_bodyless_response,
    upstream_refused_502,
    upstream_name_not_resolved_502,
    upstream_connect_timeout_504,
    auth_no_credentials_407,
    auth_wrong_credentials_407,
    auth_curl_alice,
    auth_password_with_colon,
    auth_scheme_case_insensitive,
    auth_curl_connect,
    max_connections_503,
);

// ---- 1. curl against nginx ------------------------------------------------

fn curl_get_50mb_file(bin: Bin) {
    let ng = Nginx::start(bin, true);
    let (p, addr) = start_http(bin, false, &[443], "", "");
    let out_dir = TempDir::new();
    let out_path = out_dir.path().join("big.out");
    let path = out_path.to_str().expect("a UTF-8 temp path");
    let url = ng.url("/big.bin");
    curl_ok(bin, addr, &["-o", path], &[&url], "GET of the 50 MB file");
    let (len, sum) = file_digest(bin, &out_path);
    assert_eq!(
        len, BIG_LEN,
        "{bin}: size of the 50 MB file through the proxy"
    );
    assert_eq!(
        sum, ng.big_digest,
        "{bin}: the 50 MB file through the proxy differs from the original"
    );
    let l = wait_access(&p, "the 50 MB GET", |a| a.target == url);
    assert_eq!(
        (l.method.as_str(), l.status.as_str(), l.user.as_str()),
        ("GET", "200", "-"),
        "{bin}: access-log line {l:?}"
    );
    assert_eq!(l.destination, ng.addr.to_string(), "{bin}: {l:?}");
    assert!(
        l.down >= BIG_LEN as u64 && l.up > 0,
        "{bin}: the access-log line counts the bytes: {l:?}"
    );
}

fn curl_keep_alive_reuse(bin: Bin) {
    let ng = Nginx::start(bin, false);
    let (p, addr) = start_http(bin, false, &[443], "", "");
    let (a, b, c) = (
        ng.url("/index.html"),
        ng.url("/nocontent"),
        ng.url("/index.html?again"),
    );
    let out = curl_ok(bin, addr, &["-v"], &[&a, &b, &c], "three URLs in one run");
    assert_eq!(
        out.stdout,
        format!("{INDEX}{INDEX}").into_bytes(),
        "{bin}: index, 204 (no body), index: {}",
        out.text()
    );
    expect_curl_says(
        bin,
        &out,
        "Re-using existing connection",
        Some(2),
        "curl must reuse its connection to the proxy for the 2nd and 3rd URL",
    );
    expect_curl_says(bin, &out, "HTTP/1.1 204", None, "curl saw the 204");
    let first = wait_access(&p, "first request", |l| l.target == a);
    let third = wait_access(&p, "third request", |l| l.target == c);
    let second = wait_access(&p, "the 204", |l| l.target == b);
    assert_eq!(second.status, "204", "{bin}: {second:?}");
    assert!(
        first.client == second.client && second.client == third.client,
        "{bin}: one client connection for all three: {first:?} {second:?} {third:?}"
    );
}

fn curl_not_modified_reuse(bin: Bin) {
    let ng = Nginx::start(bin, false);
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let url = ng.url("/index.html");
    let head = curl_ok(bin, addr, &["-I"], &[&url], "HEAD for Last-Modified");
    let text = String::from_utf8_lossy(&head.stdout).into_owned();
    let lm = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("last-modified"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{bin}: no Last-Modified in the HEAD reply: {}", head.text()));
    let ims = format!("If-Modified-Since: {lm}");
    let again = ng.url("/index.html?second");
    let out = curl_ok(bin, addr, &["-v", "-H", &ims], &[&url, &again], "two 304s");
    assert!(
        out.stdout.is_empty(),
        "{bin}: a 304 has no body: {}",
        out.text()
    );
    expect_curl_says(bin, &out, "HTTP/1.1 304", Some(2), "both answers are 304");
    expect_curl_says(
        bin,
        &out,
        "Re-using existing connection",
        None,
        "the connection is reused after a 304",
    );
}

fn curl_head_no_body(bin: Bin) {
    let ng = Nginx::start(bin, false);
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let url = ng.url("/index.html");
    let out = curl_ok(bin, addr, &["-I"], &[&url], "HEAD");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{bin}: HEAD status: {}",
        out.text()
    );
    assert!(
        text.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("content-length: {}", INDEX.len()))),
        "{bin}: HEAD keeps the Content-Length of the GET: {}",
        out.text()
    );
    assert!(
        text.ends_with("\r\n\r\n"),
        "{bin}: nothing after the head of a HEAD reply: {}",
        out.text()
    );
}

fn curl_put_upload(bin: Bin) {
    let ng = Nginx::start(bin, false);
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let src_dir = TempDir::new();
    let src = src_dir.path().join("upload.bin");
    let data = pattern(CLIENT_SEED, UPLOAD_LEN);
    std::fs::write(&src, &data).expect("write the upload source");
    let src_s = src.to_str().expect("a UTF-8 temp path");
    let url = ng.url("/upload/put.bin");
    let out = curl_ok(
        bin,
        addr,
        &["-v", "-T", src_s, "-w", "%{http_code}"],
        &[&url],
        "PUT of 20 MB",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "201",
        "{bin}: nginx creates the file: {}",
        out.text()
    );
    let (len, sum) = file_digest(bin, &ng.www().join("upload/put.bin"));
    assert_eq!(
        (len, sum),
        (UPLOAD_LEN, digest(&data)),
        "{bin}: the uploaded file differs from what curl sent"
    );
}

/// HEAD, 204 and 304 from nginx, each followed by a request on the same
/// client connection: no body leaks, the connection stays usable.
fn nginx_bodyless_responses_keep_connection(bin: Bin) {
    let ng = Nginx::start(bin, false);
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let o = ng.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(&get(o, "/index.html"), "GET index");
    assert_eq!(r.status(), 200, "{bin}: GET index: {}", r.text());
    assert_eq!(r.body, INDEX.as_bytes(), "{bin}: index body");
    let lm = r
        .head
        .get("last-modified")
        .unwrap_or_else(|| panic!("{bin}: no Last-Modified: {}", r.text()))
        .to_string();

    c.send(&req("HEAD", o, "/index.html", ""), "HEAD");
    let r = c.response(true, "HEAD index");
    assert_eq!(r.status(), 200, "{bin}: HEAD: {}", r.text());
    assert_eq!(
        r.head.content_length(),
        Some(INDEX.len()),
        "{bin}: HEAD keeps Content-Length: {}",
        r.text()
    );

    let r = c.ask(&get(o, "/nocontent"), "GET /nocontent");
    assert_eq!(r.status(), 204, "{bin}: 204: {}", r.text());

    let ims = format!("If-Modified-Since: {lm}\r\n");
    let r = c.ask(&req("GET", o, "/index.html", &ims), "conditional GET");
    assert_eq!(r.status(), 304, "{bin}: 304: {}", r.text());

    let r = c.ask(&get(o, "/index.html"), "GET index after HEAD, 204 and 304");
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, INDEX.as_bytes()),
        "{bin}: after HEAD, 204 and 304 the connection still works: {}",
        r.text()
    );
    c.expect_quiet("after the last response");
}

/// The same five requests in one write: five responses in order.
fn nginx_pipelined_in_order(bin: Bin) {
    let ng = Nginx::start(bin, false);
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let o = ng.addr;
    let mut all = Vec::new();
    all.extend(get(o, "/index.html"));
    all.extend(req("HEAD", o, "/index.html", ""));
    all.extend(get(o, "/nocontent"));
    all.extend(get(o, "/missing.html"));
    all.extend(get(o, "/index.html?last"));
    let mut c = Client::open(bin, addr);
    c.send(&all, "five pipelined requests");
    let want: [(bool, u16); 5] = [
        (false, 200),
        (true, 200),
        (false, 204),
        (false, 404),
        (false, 200),
    ];
    for (i, (head_req, status)) in want.iter().enumerate() {
        let r = c.response(*head_req, &format!("pipelined response {i}"));
        assert_eq!(
            r.status(),
            *status,
            "{bin}: pipelined response {i}: {}",
            r.text()
        );
        if i == 0 || i == 4 {
            assert_eq!(r.body, INDEX.as_bytes(), "{bin}: body {i}");
        }
    }
    c.expect_quiet("after five pipelined responses");
}

// ---- 2. raw client, raw origin --------------------------------------------

fn access_log_line_per_request(bin: Bin) {
    let (origin, p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    for path in ["/one", "/two"] {
        let r = c.ask(&get(o, path), path);
        assert_eq!(r.status(), 200, "{bin}: {path}: {}", r.text());
    }
    for path in ["/one", "/two"] {
        let target = format!("http://{o}{path}");
        let l = wait_access(&p, path, |l| l.target == target);
        assert_eq!(l.client, c.local(), "{bin}: {l:?}");
        assert_eq!(
            (l.user.as_str(), l.method.as_str(), l.status.as_str()),
            ("-", "GET", "200"),
            "{bin}: {l:?}"
        );
        assert_eq!(l.destination, o.to_string(), "{bin}: {l:?}");
        let body = ok_body("GET", path).len() as u64;
        assert!(
            l.down > body && l.up > 0,
            "{bin}: up counts the request, down the response head and body: {l:?}"
        );
    }
    assert_eq!(
        origin.accepted(),
        1,
        "{bin}: two requests to one origin share one upstream connection"
    );
}

fn client_connection_close_honoured(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        &req("GET", origin.addr, "/last", "Connection: close\r\n"),
        "GET with Connection: close",
    );
    assert_eq!(r.body, ok_body("GET", "/last"), "{bin}: {}", r.text());
    assert!(
        r.head.tokens("connection").iter().any(|t| t == "close"),
        "{bin}: the response says Connection: close: {}",
        r.text()
    );
    c.expect_closed("after the response to a Connection: close request");
}

/// Requests to two origins alternate on one client connection: each goes
/// to its own origin (the upstream connection is replaced, not reused).
fn two_origins_on_one_connection(bin: Bin) {
    let a = RawOrigin::routes(|_, _| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nA\n".to_vec());
    let b = RawOrigin::routes(|_, _| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nB\n".to_vec());
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let mut c = Client::open(bin, addr);
    for (i, (origin, want)) in [
        (&a, "A\n"),
        (&b, "B\n"),
        (&a, "A\n"),
        (&a, "A\n"),
        (&b, "B\n"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.ask(&get(origin.addr, &format!("/{i}")), &format!("request {i}"));
        assert_eq!(
            r.body,
            want.as_bytes(),
            "{bin}: request {i} to {} was answered by the wrong origin: {}",
            origin.addr,
            r.text()
        );
    }
    c.expect_quiet("after five requests");
}

fn host_name_resolved(bin: Bin) {
    let (origin, p, addr) = origin_and_proxy(bin);
    let target = format!("localhost:{}", origin.port());
    let mut c = Client::open(bin, addr);
    c.send(
        format!("GET http://{target}/named HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        "GET by name",
    );
    let r = c.response(
        false,
        "GET http://localhost:PORT/ (the origin listens on 127.0.0.1)",
    );
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, ok_body("GET", "/named").as_slice()),
        "{bin}: {}",
        r.text()
    );
    let (_, h, _) = origin.request(bin, "GET by name");
    assert_eq!(h.get("host"), Some(target.as_str()), "{bin}: {}", h.text());
    let l = wait_access(&p, "GET by name", |l| l.method == "GET");
    assert_eq!(l.destination, origin.addr.to_string(), "{bin}: {l:?}");
}

fn pipelined_requests_in_order(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut all = Vec::new();
    all.extend(get(o, "/first"));
    all.extend(req("POST", o, "/second", "Content-Length: 5\r\n"));
    all.extend(b"hello");
    all.extend(get(o, "/third"));
    let mut c = Client::open(bin, addr);
    c.send(&all, "three pipelined requests in one write");
    for (method, path) in [("GET", "/first"), ("POST", "/second"), ("GET", "/third")] {
        let r = c.response(false, path);
        assert_eq!(
            (r.status(), r.body.as_slice()),
            (200, ok_body(method, path).as_slice()),
            "{bin}: the responses come back in order; got for {path}: {}",
            r.text()
        );
    }
    c.expect_quiet("after three responses");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (_, h, b) = origin.request(bin, "pipelined");
        seen.push((h.target().to_string(), b));
    }
    assert_eq!(
        seen,
        vec![
            ("/first".to_string(), Vec::new()),
            ("/second".to_string(), b"hello".to_vec()),
            ("/third".to_string(), Vec::new()),
        ],
        "{bin}: what the origin received"
    );
}

fn request_body_content_length(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    for len in [1usize, 3 * MIB + 7] {
        let body = pattern(CLIENT_SEED ^ len as u64, len);
        let mut msg = req("POST", o, "/upload", &format!("Content-Length: {len}\r\n"));
        msg.extend_from_slice(&body);
        let r = c.ask(&msg, "POST response");
        assert_eq!(r.status(), 200, "{bin}: POST {len}: {}", r.text());
        let (_, h, got) = origin.request(bin, "POST");
        assert_eq!(
            h.content_length(),
            Some(len),
            "{bin}: Content-Length upstream: {}",
            h.text()
        );
        assert!(
            got.len() == len && digest(&got) == digest(&body),
            "{bin}: the origin must receive the {len}-byte body exactly (got {} bytes)",
            got.len()
        );
    }
}

/// A chunked request body: extensions, several sizes, trailers.
fn chunked_request_body() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"5;name=value\r\nhello\r\n");
    let big = pattern(CLIENT_SEED, 300_000);
    b.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
    b.extend_from_slice(&big);
    b.extend_from_slice(b"\r\n");
    b.extend_from_slice(b"1A ; quoted=\"a b\"\r\nabcdefghijklmnopqrstuvwxyz\r\n");
    b.extend_from_slice(b"0\r\nX-Checksum: 1234\r\nX-Other: two\r\n\r\n");
    b
}

fn request_body_chunked_with_trailers(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let body = chunked_request_body();
    let mut msg = req(
        "POST",
        o,
        "/chunked",
        "Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n",
    );
    msg.extend_from_slice(&body);
    msg.extend(get(o, "/after-chunked"));
    let mut c = Client::open(bin, addr);
    let r = c.ask(&msg, "chunked POST");
    assert_eq!(r.status(), 200, "{bin}: {}", r.text());
    let (_, h, got) = origin.request(bin, "chunked POST");
    assert!(
        h.chunked() && !h.has("content-length"),
        "{bin}: the body goes upstream chunked: {}",
        h.text()
    );
    assert!(
        got == body,
        "{bin}: the chunked body (extensions and trailers) must arrive byte-exact; got {} bytes, \
         sent {}: {}",
        got.len(),
        body.len(),
        show(&got[got.len().saturating_sub(200)..])
    );
    let r = c.response(false, "GET pipelined behind the chunked body");
    assert_eq!(
        r.body,
        ok_body("GET", "/after-chunked"),
        "{bin}: {}",
        r.text()
    );
}

fn expect_100_continue(bin: Bin) {
    let origin = RawOrigin::start(|c| {
        while let Some(head) = c.read_head()? {
            c.tell(&head, &[]);
            if head.get("expect") == Some("100-continue") {
                c.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            let body = c.read_body(&head)?;
            c.tell(&head, &body);
            let msg = format!("got {} bytes\n", body.len());
            c.write(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{msg}",
                    msg.len()
                )
                .as_bytes(),
            )?;
        }
        Ok(())
    });
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let body = pattern(CLIENT_SEED, 100_000);
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        &req(
            "PUT",
            origin.addr,
            "/continue",
            &format!("Expect: 100-continue\r\nContent-Length: {}\r\n", body.len()),
        ),
        "waiting for 100 Continue before sending the body",
    );
    assert_eq!(
        r.status(),
        100,
        "{bin}: the origin's 100 Continue reaches the client before the body is sent: {}",
        r.text()
    );
    let (_, h, _) = origin.request(bin, "head");
    assert_eq!(h.get("expect"), Some("100-continue"), "{bin}: {}", h.text());
    let r = c.ask(&body, "final response");
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, format!("got {} bytes\n", body.len()).as_bytes()),
        "{bin}: {}",
        r.text()
    );
    let (_, _, got) = origin.request(bin, "body");
    assert!(
        got == body,
        "{bin}: the body after 100 Continue arrives exactly"
    );
}

fn interim_103_forwarded(bin: Bin) {
    let origin = RawOrigin::routes(|h, _| {
        let mut r = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
        r.extend(ok_reply(h));
        r
    });
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let mut c = Client::open(bin, addr);
    c.send(&get(origin.addr, "/hints"), "GET");
    let (interim, r) = c.final_response(false, "GET with 103 first");
    assert_eq!(
        interim.len(),
        1,
        "{bin}: the 103 reaches the client; then {}",
        r.text()
    );
    assert_eq!(
        interim[0].get("link"),
        Some("</style.css>; rel=preload"),
        "{bin}: {}",
        interim[0].text()
    );
    assert_eq!(r.body, ok_body("GET", "/hints"), "{bin}: {}", r.text());
    c.send(&get(origin.addr, "/again"), "GET again");
    let (_, r) = c.final_response(false, "second GET");
    assert_eq!(r.body, ok_body("GET", "/again"), "{bin}: {}", r.text());
}

/// A chunked response body: extensions, a large chunk, trailers.
fn chunked_response_body() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"7;ext=\"x\"\r\nchunked\r\n");
    let big = pattern(SERVER_SEED, 1_000_000);
    for piece in big.chunks(250_000) {
        b.extend_from_slice(format!("{:X}\r\n", piece.len()).as_bytes());
        b.extend_from_slice(piece);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n");
    b
}

fn response_chunked_with_trailers(bin: Bin) {
    let origin = RawOrigin::routes(|h, _| {
        if h.target() == "/chunked" {
            let mut r =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                    .to_vec();
            r.extend(chunked_response_body());
            r
        } else {
            ok_reply(h)
        }
    });
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let mut c = Client::open(bin, addr);
    let r = c.ask(&get(origin.addr, "/chunked"), "chunked response");
    assert!(
        r.status() == 200 && r.head.chunked() && !r.head.has("content-length"),
        "{bin}: the response stays chunked: {}",
        r.head.text()
    );
    let want = chunked_response_body();
    assert!(
        r.body == want,
        "{bin}: the chunked body (extensions and trailers) reaches the client byte-exact; got {} \
         bytes, want {}; tail {}",
        r.body.len(),
        want.len(),
        show(&r.body[r.body.len().saturating_sub(100)..])
    );
    let r = c.ask(&get(origin.addr, "/next"), "GET after the chunked response");
    assert_eq!(r.body, ok_body("GET", "/next"), "{bin}: {}", r.text());
    assert_eq!(
        origin.accepted(),
        1,
        "{bin}: the upstream connection is reused"
    );
}

fn response_close_delimited(bin: Bin) {
    let data = pattern(SERVER_SEED, 500_000);
    let sent = data.clone();
    let origin = RawOrigin::start(move |c| {
        if c.request()?.is_some() {
            c.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")?;
            c.write(&sent)?;
            c.close()?;
        }
        Ok(())
    });
    let (p, addr) = start_http(bin, false, &[443], "", "");
    let mut c = Client::open(bin, addr);
    c.send(&get(origin.addr, "/until-close"), "GET");
    let head = c.head("close-delimited response");
    assert_eq!(head.status(), 200, "{bin}: {}", head.text());
    assert!(
        !head.has("content-length") && !head.has("transfer-encoding"),
        "{bin}: the proxy adds no framing of its own: {}",
        head.text()
    );
    assert!(
        head.tokens("connection").iter().any(|t| t == "close"),
        "{bin}: a close-delimited response tells the client the connection closes: {}",
        head.text()
    );
    let body = c.rest_to_eof("the close-delimited body");
    assert!(
        body.len() == data.len() && digest(&body) == digest(&data),
        "{bin}: all {} bytes, then EOF; got {}",
        data.len(),
        body.len()
    );
    let l = wait_access(&p, "close-delimited", |l| l.method == "GET");
    assert!(l.down >= data.len() as u64, "{bin}: {l:?}");
}

fn hop_by_hop_removed_from_request(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let headers = "Connection: keep-alive, X-Hop-One, x-hop-two\r\n\
                   Connection: X-Hop-Three\r\n\
                   X-Hop-One: 1\r\n\
                   X-Hop-Two: 2\r\n\
                   X-Hop-Three: 3\r\n\
                   Keep-Alive: timeout=5\r\n\
                   Proxy-Connection: keep-alive\r\n\
                   Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\
                   TE: trailers\r\n\
                   Trailer: X-Checksum\r\n\
                   Upgrade: h2c\r\n\
                   X-End-To-End: kept\r\n\
                   User-Agent: portico-tests\r\n";
    let mut c = Client::open(bin, addr);
    let r = c.ask(&req("GET", origin.addr, "/hop", headers), "GET");
    assert_eq!(r.status(), 200, "{bin}: {}", r.text());
    let (_, h, _) = origin.request(bin, "GET");
    for name in [
        "connection",
        "x-hop-one",
        "x-hop-two",
        "x-hop-three",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !h.has(name),
            "{bin}: {name} is hop-by-hop and must not reach the origin:\n{}",
            h.text()
        );
    }
    assert_eq!(h.get("x-end-to-end"), Some("kept"), "{bin}: {}", h.text());
    assert_eq!(
        h.get("user-agent"),
        Some("portico-tests"),
        "{bin}: {}",
        h.text()
    );
    assert_eq!(h.start, "GET /hop HTTP/1.1", "{bin}: origin-form upstream");
}

fn hop_by_hop_removed_from_response(bin: Bin) {
    let origin = RawOrigin::routes(|_, _| {
        b"HTTP/1.1 200 OK\r\n\
          Connection: X-Resp-Hop\r\n\
          X-Resp-Hop: 1\r\n\
          Keep-Alive: timeout=9\r\n\
          Proxy-Connection: keep-alive\r\n\
          Trailer: X-T\r\n\
          Upgrade: h2c\r\n\
          X-Resp-Kept: yes\r\n\
          Content-Length: 2\r\n\r\nok"
            .to_vec()
    });
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let mut c = Client::open(bin, addr);
    let r = c.ask(&get(origin.addr, "/"), "GET");
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, &b"ok"[..]),
        "{bin}: {}",
        r.text()
    );
    for name in [
        "x-resp-hop",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !r.head.has(name),
            "{bin}: {name} is hop-by-hop and must not reach the client:\n{}",
            r.head.text()
        );
    }
    assert!(
        !r.head
            .tokens("connection")
            .iter()
            .any(|t| t == "x-resp-hop"),
        "{bin}: the origin's Connection options are not forwarded: {}",
        r.head.text()
    );
    assert_eq!(
        r.head.get("x-resp-kept"),
        Some("yes"),
        "{bin}: {}",
        r.head.text()
    );
    assert!(
        r.head.tokens("via").iter().any(|v| v == "1.1 portico"),
        "{bin}: the response carries Via: 1.1 portico: {}",
        r.head.text()
    );
}

fn via_added_and_host_regenerated(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        format!("GET http://{o}/host HTTP/1.1\r\nHost: evil.example:1234\r\n\r\n").as_bytes(),
        "GET",
    );
    assert_eq!(r.status(), 200, "{bin}: {}", r.text());
    let (_, h, _) = origin.request(bin, "GET");
    assert_eq!(
        h.all("host"),
        vec![o.to_string().as_str()],
        "{bin}: exactly one Host, from the absolute URL:\n{}",
        h.text()
    );
    assert_eq!(h.all("via"), vec!["1.1 portico"], "{bin}: {}", h.text());

    let r = c.ask(
        &req("GET", o, "/via", "Via: 1.0 upstream-cache\r\n"),
        "GET with Via",
    );
    assert_eq!(r.status(), 200, "{bin}: {}", r.text());
    let (_, h, _) = origin.request(bin, "GET with Via");
    assert_eq!(
        h.tokens("via"),
        vec!["1.0 upstream-cache", "1.1 portico"],
        "{bin}: Portico appends itself to the Via list:\n{}",
        h.text()
    );
}

fn max_forwards_zero_answered_locally(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(&req("OPTIONS", o, "/opt", "Max-Forwards: 0\r\n"), "OPTIONS");
    assert_eq!(
        r.status(),
        200,
        "{bin}: the proxy answers OPTIONS itself: {}",
        r.text()
    );
    let r = c.ask(
        &req("TRACE", o, "/trace", "Max-Forwards: 0\r\nX-Traced: yes\r\n"),
        "TRACE",
    );
    assert_eq!(
        r.status(),
        200,
        "{bin}: the proxy answers TRACE itself: {}",
        r.text()
    );
    assert!(
        r.head
            .get("content-type")
            .is_some_and(|t| t.starts_with("message/http")),
        "{bin}: TRACE echoes as message/http: {}",
        r.text()
    );
    let echo = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        echo.starts_with("TRACE ") && echo.contains("X-Traced: yes"),
        "{bin}: TRACE echoes the request: {}",
        r.text()
    );
    assert_eq!(origin.accepted(), 0, "{bin}: the origin is never contacted");
    let r = c.ask(&get(o, "/after-trace"), "GET after OPTIONS and TRACE");
    assert_eq!(
        r.body,
        ok_body("GET", "/after-trace"),
        "{bin}: {}",
        r.text()
    );
}

fn max_forwards_decremented(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    for (method, given, want) in [("OPTIONS", "3", "2"), ("TRACE", "1", "0")] {
        let r = c.ask(
            &req(method, o, "/mf", &format!("Max-Forwards: {given}\r\n")),
            method,
        );
        assert_eq!(
            r.body,
            ok_body(method, "/mf"),
            "{bin}: {method} is forwarded: {}",
            r.text()
        );
        let (_, h, _) = origin.request(bin, method);
        assert_eq!(
            h.get("max-forwards"),
            Some(want),
            "{bin}: {method} with Max-Forwards: {given} goes upstream decremented:\n{}",
            h.text()
        );
    }
}

/// A request that already passed through Portico is refused: the reply is
/// a refusal of the proxy's own (status 4xx/5xx with its standard reason
/// phrase and a one-line body saying why), the origin is not contacted.
fn loop_refused(bin: Bin) {
    let (origin, mut p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    for via in ["1.1 portico", "1.0 cache.example, 1.1 portico"] {
        let what = format!("a request with Via: {via}");
        let mut c = Client::open(bin, addr);
        let r = c.ask(&req("GET", o, "/loop", &format!("Via: {via}\r\n")), &what);
        let st = r.status();
        assert!(
            (400..600).contains(&st),
            "{bin}: {what} is refused: {}",
            r.text()
        );
        check_own_reply(bin, &r, st, true, &what);
        let standard = match st {
            400 => "Bad Request",
            403 => "Forbidden",
            502 => "Bad Gateway",
            508 => "Loop Detected",
            _ => "",
        };
        assert_eq!(
            r.head.reason(),
            standard,
            "{bin}: {what}: status {st} with its standard reason phrase; response:\n{}",
            r.text()
        );
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            body.len() > format!("{st} {standard}\n").len(),
            "{bin}: {what}: the one-line body says why (like every other refusal): {body:?}"
        );
        c.expect_closed(&what);
    }
    assert_eq!(
        origin.accepted(),
        0,
        "{bin}: a loop never reaches the origin"
    );
    assert_running(&mut p, "after a loop");
    works_after(bin, addr, o, "after the loops");
}

/// Loop detection matches Portico's own Via entry, not any name that
/// contains "portico".
fn via_of_another_proxy_forwarded(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        &req("GET", o, "/other", "Via: 1.1 portico-lab.example.net\r\n"),
        "GET with Via: 1.1 portico-lab.example.net",
    );
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (200, ok_body("GET", "/other").as_slice()),
        "{bin}: a Via naming another host (portico-lab.example.net) is not a loop: {}",
        r.text()
    );
}

fn websocket_upgrade_tunnel(bin: Bin) {
    let origin = RawOrigin::start(|c| {
        let Some(head) = c.read_head()? else {
            return Ok(());
        };
        c.tell(&head, &[]);
        c.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nserver-hello",
        )?;
        // A byte echo until the client is done.
        let early = std::mem::take(&mut c.w.buf);
        c.write(&early)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = c.w.s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            c.w.s.write_all(&buf[..n])?;
        }
        c.w.s.shutdown(Shutdown::Write)?;
        Ok(())
    });
    let (p, addr) = start_http(bin, false, &[443], "", "");
    let mut c = Client::open(bin, addr);
    c.send(
        &req(
            "GET",
            origin.addr,
            "/ws",
            "Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
        "upgrade request",
    );
    let h = c.head("101");
    assert_eq!(h.status(), 101, "{bin}: {}", h.text());
    assert_eq!(h.get("upgrade"), Some("websocket"), "{bin}: {}", h.text());
    assert!(
        h.tokens("connection").iter().any(|t| t == "upgrade"),
        "{bin}: the 101 says Connection: upgrade: {}",
        h.text()
    );
    assert_eq!(
        h.get("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{bin}: {}",
        h.text()
    );
    let (_, oh, _) = origin.request(bin, "upgrade request");
    assert!(
        oh.tokens("connection").iter().any(|t| t == "upgrade")
            && oh.get("upgrade") == Some("websocket")
            && oh.get("sec-websocket-key") == Some("dGhlIHNhbXBsZSBub25jZQ=="),
        "{bin}: the upgrade request keeps Connection: upgrade and Upgrade:\n{}",
        oh.text()
    );
    assert_eq!(
        c.take(12, "bytes the origin sent right after its 101"),
        b"server-hello",
        "{bin}: bytes after the 101 head reach the client"
    );
    // 1 MiB both ways through the tunnel.
    let data = pattern(CLIENT_SEED, MIB);
    let mut writer = c.w.s.try_clone().expect("clone the client socket");
    let sent = data.clone();
    let w = spawn_bounded(move || writer.write_all(&sent));
    let back = c.take(data.len(), "the echo through the tunnel");
    w.join(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{bin}: writer: {e}"))
        .unwrap_or_else(|e| panic!("{bin}: writing into the tunnel: {e}"));
    assert!(back == data, "{bin}: the echo differs from what was sent");
    c.w.s.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let rest = c.rest_to_eof("after the client's half-close");
    assert!(rest.is_empty(), "{bin}: no stray bytes: {}", show(&rest));
    let l = wait_access(&p, "the upgrade", |l| l.method == "GET");
    assert_eq!(l.status, "101", "{bin}: {l:?}");
}

// ---- 3. CONNECT -----------------------------------------------------------

fn connect_msg(target: &str) -> Vec<u8> {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes()
}

fn curl_connect_tunnel(bin: Bin) {
    let origin = RawOrigin::ok();
    let (p, addr) = start_http(bin, false, &[443, origin.port()], "", "");
    let url = format!("http://{}/tunnelled", origin.addr);
    let out = curl_ok(bin, addr, &["-p"], &[&url], "curl -p (CONNECT)");
    assert_eq!(
        out.stdout,
        ok_body("GET", "/tunnelled"),
        "{bin}: {}",
        out.text()
    );
    let (_, h, _) = origin.request(bin, "through the tunnel");
    assert_eq!(h.start, "GET /tunnelled HTTP/1.1", "{bin}: {}", h.text());
    assert!(
        !h.has("via"),
        "{bin}: a tunnel carries curl's bytes untouched: {}",
        h.text()
    );
    let l = wait_access(&p, "CONNECT", |l| l.method == "CONNECT");
    assert_eq!(
        (l.target.as_str(), l.status.as_str()),
        (origin.addr.to_string().as_str(), "200"),
        "{bin}: {l:?}"
    );
    assert_eq!(l.destination, origin.addr.to_string(), "{bin}: {l:?}");
    assert!(l.up > 0 && l.down > 0, "{bin}: the tunnel's bytes: {l:?}");
}

fn connect_port_not_allowed(bin: Bin) {
    let (origin, mut p, addr) = origin_and_proxy(bin);
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        &connect_msg(&origin.addr.to_string()),
        "CONNECT to a port not in connect_ports",
    );
    check_own_reply(bin, &r, 403, true, "CONNECT to a port not in connect_ports");
    c.expect_closed("after the 403");
    let url = format!("http://{}/", origin.addr);
    let out = curl(bin, addr, &["-p"], &[&url]);
    assert!(
        !out.status.success() && out.stderr.contains("403"),
        "{bin}: curl -p to a port not in connect_ports fails with 403: {}",
        out.text()
    );
    assert_eq!(origin.accepted(), 0, "{bin}: the port is never contacted");
    let l = wait_access(&p, "the refused CONNECT", |l| l.method == "CONNECT");
    assert_eq!(l.status, "403", "{bin}: {l:?}");
    assert_running(&mut p, "after a 403");
}

fn connect_pipelined_bytes_once(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (p, addr) = start_http(bin, false, &[443, server.addr().port()], "", "");
    let payload = pattern(CLIENT_SEED, 100_000);
    let mut msg = connect_msg(&server.addr().to_string());
    msg.extend_from_slice(&payload);
    let mut c = Client::open(bin, addr);
    c.send(&msg, "CONNECT and 100 000 bytes in one write");
    let h = c.head("CONNECT reply");
    assert_eq!(
        h.start,
        "HTTP/1.1 200 Connection established",
        "{bin}: {}",
        h.text()
    );
    assert!(
        !h.has("content-length") && !h.has("transfer-encoding"),
        "{bin}: the 200 to CONNECT has no Content-Length or Transfer-Encoding: {}",
        h.text()
    );
    let back = c.take(payload.len(), "the echo of the pipelined bytes");
    assert!(
        back == payload,
        "{bin}: the bytes behind the CONNECT head come back intact"
    );
    c.expect_quiet("the pipelined bytes reach the destination exactly once");
    c.w.s.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let rest = c.rest_to_eof("after the half-close");
    assert!(rest.is_empty(), "{bin}: stray bytes: {}", show(&rest));
    let rep = server
        .next_report(IO_TIMEOUT)
        .unwrap_or_else(|| panic!("{bin}: the echo server's connection did not end"));
    assert_eq!(
        (rep.received, rep.received_digest),
        (payload.len() as u64, digest(&payload)),
        "{bin}: the destination received the pipelined bytes exactly once: {rep:?}"
    );
    let l = wait_access(&p, "the CONNECT", |l| l.method == "CONNECT");
    assert_eq!(l.status, "200", "{bin}: {l:?}");
    let n = payload.len() as u64;
    let reply = "HTTP/1.1 200 Connection established\r\n\r\n".len() as u64;
    assert!(
        l.up == n && (l.down == n || l.down == n + reply),
        "{bin}: the CONNECT line carries the tunnel's bytes ({n} each way): {l:?}"
    );
}

fn connect_bad_targets(bin: Bin) {
    let origin = RawOrigin::ok();
    let op = origin.port();
    let (mut p, addr) = start_http(bin, false, &[443, op], "", "");
    let host = origin.addr.to_string();
    let targets = [
        "127.0.0.1".to_string(),
        "127.0.0.1:".to_string(),
        "127.0.0.1:0".to_string(),
        "127.0.0.1:70000".to_string(),
        "localhost".to_string(),
        format!("http://127.0.0.1:{op}/"),
        format!("http://127.0.0.1:{op}"),
    ];
    let cases = targets.iter().map(|t| {
        let msg = format!("CONNECT {t} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        (format!("CONNECT {t}"), msg.into_bytes())
    });
    expect_refusals(
        &mut p,
        addr,
        400,
        cases,
        "malformed CONNECT targets must get 400 and a close",
    );
    assert_eq!(origin.accepted(), 0, "{bin}: nothing is contacted");
    // A good CONNECT still works.
    let mut c = Client::open(bin, addr);
    c.send(&connect_msg(&host), "a good CONNECT");
    let h = c.head("a good CONNECT");
    assert_eq!(h.status(), 200, "{bin}: {}", h.text());
    let r = c.ask(
        format!("GET /in-tunnel HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        "GET in the tunnel",
    );
    assert_eq!(r.body, ok_body("GET", "/in-tunnel"), "{bin}: {}", r.text());
}

// ---- 4. refusals ----------------------------------------------------------

/// Sends `msg` on a new connection (from a writer thread: the proxy may
/// answer before it has read all) and checks the proxy answers with its own
/// `status` reply and closes.
fn refusal_outcome(proxy: SocketAddr, msg: &[u8], status: u16) -> Result<(), String> {
    let s = connect(proxy).map_err(|e| format!("connect: {e}"))?;
    let mut w = Wire::new(s);
    let mut ws = w.s.try_clone().map_err(|e| format!("clone: {e}"))?;
    let data = msg.to_vec();
    let writer = spawn_bounded(move || ws.write_all(&data));
    let raw = match w.head() {
        Ok(Some(raw)) => raw,
        Ok(None) => return Err("the proxy closed without a reply".into()),
        Err(e) => return Err(format!("reading the reply: {e}")),
    };
    let head = Head::parse(raw);
    let n = head
        .content_length()
        .ok_or_else(|| format!("a reply without Content-Length: {}", head.text()))?;
    let body = w
        .take(n)
        .map_err(|e| format!("reading the reply body: {e}"))?;
    let r = Resp { head, body };
    if let Some(p) = own_reply_problem(&r, status, true) {
        return Err(format!("{p}; response:\n{}", r.text()));
    }
    if !w.buf.is_empty() {
        return Err(format!("bytes after the reply: {}", show(&w.buf)));
    }
    let out = read_outcome(&mut w.s, PROMPTLY);
    // A write error is expected once the proxy closed.
    let _ = writer.join(IO_TIMEOUT);
    if !out.is_closed() {
        return Err(format!(
            "the connection is not closed after the reply: {out:?}"
        ));
    }
    Ok(())
}

/// Sends each request of `cases` (name, bytes) on a new connection: each
/// must get the proxy's own `status` reply and a close, and the proxy must
/// stay up; fails with `what` and the cases that did not.
fn expect_refusals(
    p: &mut Portico,
    addr: SocketAddr,
    status: u16,
    cases: impl IntoIterator<Item = (String, Vec<u8>)>,
    what: &str,
) {
    let mut failures = Vec::new();
    for (name, msg) in cases {
        if let Err(e) = refusal_outcome(addr, &msg, status) {
            failures.push(format!("{name}: {e}"));
        }
        assert_running(p, &format!("after {name}"));
    }
    assert!(
        failures.is_empty(),
        "{}: {what}:\n{}",
        p.bin(),
        failures.join("\n")
    );
}

/// One malformed request: the status it must get; `head` when it is
/// refused on its head alone (so the origin is never contacted).
struct Refusal {
    name: &'static str,
    status: u16,
    head: bool,
    msg: Vec<u8>,
}

fn refusal_table(o: SocketAddr) -> Vec<Refusal> {
    let line = format!("GET http://{o}/refused HTTP/1.1\r\n");
    let post = format!("POST http://{o}/refused HTTP/1.1\r\nHost: {o}\r\n");
    let host = format!("Host: {o}\r\n");
    let with = |fields: &str| format!("{line}{host}{fields}\r\n").into_bytes();
    let body = |fields: &str, body: &str| format!("{post}{fields}\r\n{body}").into_bytes();
    let chunked = |b: &str| format!("{post}Transfer-Encoding: chunked\r\n\r\n{b}").into_bytes();
    let h = |name, status, msg| Refusal {
        name,
        status,
        head: true,
        msg,
    };
    let b = |name, status, msg| Refusal {
        name,
        status,
        head: false,
        msg,
    };
    let many: String = (0..300).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(5000));
    vec![
        h(
            "Content-Length and Transfer-Encoding",
            400,
            body(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        h(
            "Transfer-Encoding and Content-Length",
            400,
            body(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        h(
            "differing Content-Length fields",
            400,
            body("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        h(
            "differing Content-Length list",
            400,
            body("Content-Length: 5, 6\r\n", "hello!"),
        ),
        h(
            "Content-Length: +5",
            400,
            body("Content-Length: +5\r\n", "hello"),
        ),
        h(
            "Content-Length: -1",
            400,
            body("Content-Length: -1\r\n", ""),
        ),
        h("empty Content-Length", 400, body("Content-Length:\r\n", "")),
        h(
            "Content-Length of 20 digits",
            400,
            body("Content-Length: 10000000000000000000\r\n", ""),
        ),
        h(
            "Content-Length in hex",
            400,
            body("Content-Length: 0x5\r\n", "hello"),
        ),
        h(
            "Transfer-Encoding: gzip",
            400,
            body("Transfer-Encoding: gzip\r\n", "hello"),
        ),
        h(
            "Transfer-Encoding: chunked, chunked",
            400,
            body(
                "Transfer-Encoding: chunked, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        h(
            "Transfer-Encoding: chunked in two fields",
            400,
            body(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        h(
            "Transfer-Encoding: chunked, gzip",
            400,
            body("Transfer-Encoding: chunked, gzip\r\n", "hello"),
        ),
        b("bad chunk size", 400, chunked("zz\r\nhello\r\n0\r\n\r\n")),
        b(
            "negative chunk size",
            400,
            chunked("-5\r\nhello\r\n0\r\n\r\n"),
        ),
        b(
            "chunk size of 17 hex digits",
            400,
            chunked("10000000000000000\r\nhello\r\n0\r\n\r\n"),
        ),
        b("huge chunk extension", 400, chunked(&long_ext)),
        h("obs-fold", 400, with("X-Folded: a\r\n b\r\n")),
        h("obs-fold with a tab", 400, with("X-Folded: a\r\n\tb\r\n")),
        h("space before the colon", 400, with("X-Space : a\r\n")),
        h("tab before the colon", 400, with("X-Tab\t: a\r\n")),
        h("bare CR in a value", 400, with("X-Cr: a\rb\r\n")),
        h("bare LF ending a field line", 400, with("X-Lf: a\n")),
        h(
            "bare LF ending the request line",
            400,
            format!("GET http://{o}/refused HTTP/1.1\n{host}\r\n").into_bytes(),
        ),
        h(
            "bare LF ending the head",
            400,
            format!("{line}{host}\n").into_bytes(),
        ),
        h("NUL in a value", 400, with("X-Nul: a\0b\r\n")),
        h("NUL in a name", 400, with("X-N\0ul: a\r\n")),
        h("control byte in a value", 400, with("X-Ctl: a\x01b\r\n")),
        h("DEL in a value", 400, with("X-Del: a\x7fb\r\n")),
        h("empty header name", 400, with(": value\r\n")),
        h("field line without a colon", 400, with("NoColonHere\r\n")),
        h(
            "missing Host (HTTP/1.1)",
            400,
            format!("{line}\r\n").into_bytes(),
        ),
        h("two Host fields", 400, with(&host)),
        h(
            "a Host list",
            400,
            format!("{line}Host: {o}, {o}\r\n\r\n").into_bytes(),
        ),
        h(
            "origin-form target",
            400,
            format!("GET / HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        h(
            "https:// absolute-form",
            501,
            format!("GET https://{o}/ HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        h(
            "ftp:// absolute-form",
            501,
            format!("GET ftp://{o}/ HTTP/1.1\r\n{host}\r\n").into_bytes(),
        ),
        h("300 header fields", 431, with(&many)),
    ]
}

fn refusals(bin: Bin) {
    let (origin, mut p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut failures = Vec::new();
    for case in refusal_table(o) {
        let before = origin.accepted();
        if let Err(e) = refusal_outcome(addr, &case.msg, case.status) {
            failures.push(format!(
                "{} (want {}): {e}\n    request: {}",
                case.name,
                case.status,
                show(&case.msg)
            ));
        }
        if case.head && origin.accepted() != before {
            failures.push(format!(
                "{}: the origin was contacted for a request refused on its head",
                case.name
            ));
        }
        assert_running(&mut p, case.name);
        works_after(bin, addr, o, case.name);
    }
    assert!(
        failures.is_empty(),
        "{bin}: refusals that did not go as SPEC.md says:\n{}",
        failures.join("\n")
    );
}

fn chunked_capitalised_accepted(bin: Bin) {
    let (origin, _p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    let mut c = Client::open(bin, addr);
    for coding in ["Chunked", "CHUNKED"] {
        let mut msg = req(
            "POST",
            o,
            "/cap",
            &format!("Transfer-Encoding: {coding}\r\n"),
        );
        msg.extend_from_slice(body);
        let r = c.ask(&msg, coding);
        assert_eq!(
            r.status(),
            200,
            "{bin}: Transfer-Encoding: {coding} is chunked and accepted: {}",
            r.text()
        );
        let (_, h, got) = origin.request(bin, coding);
        assert!(
            h.chunked() && got == body,
            "{bin}: {coding}: the chunked body arrives: {} {}",
            h.text(),
            show(&got)
        );
    }
}

/// `GET http://ORIGIN/aaa… HTTP/1.1` whose request line (CRLF excluded) is
/// `len` bytes.
fn long_line_request(o: SocketAddr, len: usize) -> Vec<u8> {
    let prefix = format!("GET http://{o}/");
    let suffix = " HTTP/1.1";
    let pad = "a".repeat(len - prefix.len() - suffix.len());
    format!("{prefix}{pad}{suffix}\r\nHost: {o}\r\n\r\n").into_bytes()
}

fn request_line_limit(bin: Bin) {
    let (origin, mut p, addr) = origin_and_proxy(bin);
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        &long_line_request(o, 8192),
        "a request line of exactly 8 KiB",
    );
    assert_eq!(
        r.status(),
        200,
        "{bin}: a request line of 8192 bytes is within the limit: {}",
        show(&r.head.raw)
    );
    let (_, h, _) = origin.request(bin, "8 KiB line");
    assert_eq!(
        h.target().len(),
        8192 - format!("GET http://{o} HTTP/1.1").len()
    );
    let cases = [8193, 9000, 60_000].map(|len| {
        (
            format!("a request line of {len} bytes"),
            long_line_request(o, len),
        )
    });
    expect_refusals(&mut p, addr, 414, cases, "request lines over 8 KiB get 414");
    works_after(bin, addr, o, "after 414s");
}

/// A GET whose head (final CRLFCRLF included) is exactly `total` bytes.
fn head_of_size(o: SocketAddr, total: usize) -> Vec<u8> {
    let mut h = format!("GET http://{o}/big-head HTTP/1.1\r\nHost: {o}\r\n");
    let target = total - 2;
    let mut i = 0;
    while h.len() < target {
        let left = target - h.len();
        let name = format!("X-F{i:04}: ");
        let mut n = left.min(1000);
        if left - n < 16 {
            n = left;
        }
        h.push_str(&name);
        h.push_str(&"a".repeat(n - name.len() - 2));
        h.push_str("\r\n");
        i += 1;
    }
    h.push_str("\r\n");
    assert_eq!(h.len(), total);
    h.into_bytes()
}

fn check_head_limit(bin: Bin, limits: &str) {
    let origin = RawOrigin::ok();
    let (mut p, addr) = start_http(bin, false, &[443], limits, "");
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(&head_of_size(o, 65536), "a head of exactly 64 KiB");
    assert_eq!(
        r.status(),
        200,
        "{bin} ({limits:?}): a head of 65536 bytes is within the limit: {}",
        r.text()
    );
    let (_, h, _) = origin.request(bin, "64 KiB head");
    assert!(h.has("x-f0000"), "{bin}: the fields are forwarded");
    let cases = [65537, 70_000, 200_000]
        .map(|len| (format!("a head of {len} bytes"), head_of_size(o, len)));
    expect_refusals(
        &mut p,
        addr,
        431,
        cases,
        &format!("({limits:?}): heads over 64 KiB get 431"),
    );
    works_after(bin, addr, o, "after 431s");
}

/// With the default `buffer` of 64 KiB, a head over 64 KiB fills it.
fn head_limit(bin: Bin) {
    check_head_limit(bin, "");
}

/// With a larger buffer the 64 KiB head limit itself is what refuses.
fn head_limit_with_larger_buffer(bin: Bin) {
    check_head_limit(bin, "buffer = \"256KiB\"");
}

fn handshake_timeout_408(bin: Bin) {
    let origin = RawOrigin::ok();
    let (mut p, addr) = start_http(
        bin,
        false,
        &[443],
        "handshake_timeout = \"1s\"\nidle_timeout = \"5m\"",
        "",
    );
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    c.w.s
        .set_read_timeout(Some(STALL_BOUND))
        .expect("set_read_timeout");
    let started = Instant::now();
    let r = c.ask(
        format!("GET http://{o}/slow HTTP/1.1\r\nHost: {o}\r\n").as_bytes(),
        "waiting for the 408",
    );
    let waited = started.elapsed();
    check_own_reply(bin, &r, 408, true, "an unfinished head");
    assert!(
        waited >= Duration::from_millis(900),
        "{bin}: the 408 comes when handshake_timeout (1s) has passed, not after {waited:?}"
    );
    c.expect_closed("after the 408");
    assert_eq!(origin.accepted(), 0, "{bin}: nothing went upstream");
    assert_running(&mut p, "after a 408");
    works_after(bin, addr, o, "after a 408");
}

/// handshake_timeout applies to every request head, not only the first of
/// a connection (a slow head on a kept-alive connection holds resources
/// just the same).
fn handshake_timeout_408_on_later_request(bin: Bin) {
    let origin = RawOrigin::ok();
    let (_p, addr) = start_http(
        bin,
        false,
        &[443],
        "handshake_timeout = \"1s\"\nidle_timeout = \"5m\"",
        "",
    );
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    let r = c.ask(&get(o, "/first"), "first request");
    assert_eq!(r.status(), 200, "{bin}: {}", r.text());
    c.w.s
        .set_read_timeout(Some(STALL_BOUND))
        .expect("set_read_timeout");
    c.send(
        format!("GET http://{o}/slow HTTP/1.1\r\nHost: {o}\r\n").as_bytes(),
        "a second head without its end",
    );
    match c.w.head() {
        Ok(Some(raw)) => {
            let head = Head::parse(raw);
            assert_eq!(
                head.status(),
                408,
                "{bin}: an unfinished second head gets 408: {}",
                head.text()
            );
        }
        other => panic!(
            "{bin}: a second request head unfinished for handshake_timeout (1s) must get 408 \
             and a close; after {STALL_BOUND:?} with idle_timeout 5m: {other:?}"
        ),
    }
}

// ---- 5. upstream strictness ------------------------------------------------

fn upstream_bad_framing_502(bin: Bin) {
    let cases: Vec<(&'static str, &'static [u8])> = vec![
        (
            "/cl-te",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "/cl-differ",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
        ),
        ("/cl-sign", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
        ("/te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
        (
            "/te-twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "/obs-fold",
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("/space-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
        ("/bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
        (
            "/nul",
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("/bad-status", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
        ("/not-http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        (
            "/unasked-101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ),
    ];
    let table = cases.clone();
    let origin = RawOrigin::routes(move |h, _| {
        table
            .iter()
            .find(|(path, _)| *path == h.target())
            .map_or_else(|| ok_reply(h), |(_, bytes)| bytes.to_vec())
    });
    let (mut p, addr) = start_http(bin, false, &[443], "", "");
    let o = origin.addr;
    let mut failures = Vec::new();
    for (path, bytes) in &cases {
        if let Err(e) = refusal_outcome(addr, &get(o, path), 502) {
            failures.push(format!("{path} {}: {e}", show(bytes)));
        }
        let (conn, h, _) = origin.request(bin, path);
        assert_eq!(h.target(), *path, "{bin}: the origin got the request");
        origin.ended(bin, conn, &format!("after the bad response to {path}"));
        assert_running(&mut p, path);
        works_after(bin, addr, o, path);
        let _ = origin.request(bin, "the request afterwards");
    }
    assert!(
        failures.is_empty(),
        "{bin}: responses with broken framing must give the client a 502:\n{}",
        failures.join("\n")
    );
}

fn upstream_bad_chunk_cuts_connection(bin: Bin) {
    let origin = RawOrigin::start(|c| {
        while let Some((h, _)) = c.request()? {
            match h.target() {
                "/bad-chunk" => {
                    c.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXXzz\r\n",
                    )?;
                }
                "/truncated" => {
                    c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")?;
                    return c.close();
                }
                _ => c.write(&ok_reply(&h))?,
            }
        }
        Ok(())
    });
    let (mut p, addr) = start_http(bin, false, &[443], "", "");
    let o = origin.addr;
    for path in ["/bad-chunk", "/truncated"] {
        let mut c = Client::open(bin, addr);
        c.send(&get(o, path), path);
        let h = c.head(path);
        assert_eq!(
            h.status(),
            200,
            "{bin}: {path}: the head was good: {}",
            h.text()
        );
        let body = if h.chunked() {
            c.w.chunked()
        } else {
            c.w.take(100)
        };
        assert!(
            body.is_err(),
            "{bin}: {path}: the broken body cannot be completed: {body:?}"
        );
        let (conn, _, _) = origin.request(bin, path);
        origin.ended(bin, conn, path);
        assert_running(&mut p, path);
    }
    works_after(bin, addr, o, "after broken bodies");
}

const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL";

fn no_bytes_after_bodyless_response(bin: Bin) {
    let origin = RawOrigin::routes(|h, _| {
        let mut r = match (h.start.split(' ').next(), h.target()) {
            (_, "/nocontent") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            (_, "/notmodified") => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(),
            (Some("HEAD"), _) => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nBODY".to_vec(),
            _ => return ok_reply(h),
        };
        r.extend_from_slice(EVIL);
        r
    });
    let (_p, addr) = start_http(bin, false, &[443], "", "");
    let o = origin.addr;
    let mut c = Client::open(bin, addr);
    for (i, (method, path, status)) in [
        ("GET", "/nocontent", 204),
        ("GET", "/notmodified", 304),
        ("HEAD", "/head", 200),
    ]
    .into_iter()
    .enumerate()
    {
        c.send(&req(method, o, path, ""), path);
        let r = c.response(method == "HEAD", path);
        assert_eq!(r.status(), status, "{bin}: {method} {path}: {}", r.text());
        let next = format!("/next-{i}");
        let r = c.ask(&get(o, &next), &next);
        assert_eq!(
            (r.status(), r.body.as_slice()),
            (200, ok_body("GET", &next).as_slice()),
            "{bin}: bytes the origin sent after the body-less response to {method} {path} must \
             never reach the client; the next response was: {}",
            r.text()
        );
    }
    c.expect_quiet("after the last response");
}

fn upstream_refused_502(bin: Bin) {
    let closed = local(free_port());
    let (mut p, addr) = start_http(bin, false, &[443, closed.port()], "", "");
    let mut c = Client::open(bin, addr);
    let r = c.ask(&get(closed, "/"), "GET to a closed port");
    check_own_reply(bin, &r, 502, false, "GET to a closed port");
    let mut c = Client::open(bin, addr);
    let r = c.ask(
        &connect_msg(&closed.to_string()),
        "CONNECT to a closed port",
    );
    check_own_reply(bin, &r, 502, false, "CONNECT to a closed port");
    let l = wait_access(&p, "GET refused", |l| l.method == "GET");
    assert_eq!(l.status, "502", "{bin}: {l:?}");
    let l = wait_access(&p, "CONNECT refused", |l| l.method == "CONNECT");
    assert_eq!(l.status, "502", "{bin}: {l:?}");
    assert_running(&mut p, "after 502s");
}

fn upstream_name_not_resolved_502(bin: Bin) {
    let (mut p, addr) = start_http(bin, false, &[443], "", "");
    for (what, msg) in [
        (
            "GET http://nonexistent.invalid/",
            b"GET http://nonexistent.invalid/ HTTP/1.1\r\nHost: nonexistent.invalid\r\n\r\n"
                .to_vec(),
        ),
        (
            "CONNECT nonexistent.invalid:443",
            connect_msg("nonexistent.invalid:443"),
        ),
    ] {
        let mut c = Client::open(bin, addr);
        c.w.s
            .set_read_timeout(Some(STALL_BOUND))
            .expect("set_read_timeout");
        let r = c.ask(&msg, what);
        check_own_reply(bin, &r, 502, false, what);
    }
    assert_running(&mut p, "after names not resolved");
}

fn upstream_connect_timeout_504(bin: Bin) {
    let server = TestServer::start_held(Behaviour::Sink);
    server
        .fill_backlog()
        .unwrap_or_else(|e| panic!("{bin}: filling the destination's accept queue: {e}"));
    let (mut p, addr) = start_http(
        bin,
        false,
        &[443, server.addr().port()],
        "connect_timeout = \"1s\"",
        "",
    );
    for (what, msg) in [
        ("GET", get(server.addr(), "/")),
        ("CONNECT", connect_msg(&server.addr().to_string())),
    ] {
        let mut c = Client::open(bin, addr);
        c.w.s
            .set_read_timeout(Some(STALL_BOUND))
            .expect("set_read_timeout");
        let r = c.ask(&msg, what);
        check_own_reply(bin, &r, 504, false, &format!("{what} that cannot connect"));
        let l = wait_access(&p, what, |l| l.method == what);
        assert_eq!(l.status, "504", "{bin}: {l:?}");
    }
    assert_running(&mut p, "after 504s");
    server.release();
}

// ---- 6. authentication ------------------------------------------------------

fn basic(user_pass: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64(user_pass.as_bytes())
    )
}

const BOB: &str = "[[user]]\nname = \"bob\"\npassword = \"plain:pa:ss\"\n";

fn check_407(bin: Bin, addr: SocketAddr, msg: &[u8], what: &str) {
    let mut c = Client::open(bin, addr);
    let r = c.ask(msg, what);
    check_own_reply(bin, &r, 407, false, what);
    assert_eq!(
        r.head.all("proxy-authenticate"),
        vec![r#"Basic realm="portico""#],
        "{bin}: {what}: {}",
        r.text()
    );
}

fn auth_no_credentials_407(bin: Bin) {
    let origin = RawOrigin::ok();
    let (p, addr) = start_http(bin, true, &[443, origin.port()], "", "");
    let o = origin.addr;
    check_407(bin, addr, &get(o, "/"), "GET without credentials");
    check_407(
        bin,
        addr,
        &connect_msg(&o.to_string()),
        "CONNECT without credentials",
    );
    let out = curl(
        bin,
        addr,
        &["-w", "%{http_code}", "-o", "/dev/null"],
        &[&format!("http://{o}/")],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "407",
        "{bin}: curl without --proxy-user: {}",
        out.text()
    );
    assert_eq!(origin.accepted(), 0, "{bin}: nothing reaches the origin");
    let l = wait_access(&p, "a 407", |l| l.status == "407");
    assert_eq!(l.user, "-", "{bin}: {l:?}");
}

fn auth_wrong_credentials_407(bin: Bin) {
    let origin = RawOrigin::ok();
    let (_p, addr) = start_http(bin, true, &[443], "", BOB);
    let o = origin.addr;
    for (what, field) in [
        ("wrong password", basic("alice:wrong")),
        ("unknown user", basic("mallory:secret")),
        ("no colon", basic("alicesecret")),
        ("password cut at the second colon", basic("bob:pa")),
        (
            "not base64",
            "Proxy-Authorization: Basic !!!\r\n".to_string(),
        ),
        (
            "other scheme",
            "Proxy-Authorization: Bearer abc\r\n".to_string(),
        ),
    ] {
        check_407(bin, addr, &req("GET", o, "/", &field), what);
    }
    assert_eq!(origin.accepted(), 0, "{bin}: nothing reaches the origin");
}

fn auth_curl_alice(bin: Bin) {
    let origin = RawOrigin::ok();
    let (p, addr) = start_http(bin, true, &[443], "", "");
    let (a, b) = (
        format!("http://{}/one", origin.addr),
        format!("http://{}/two", origin.addr),
    );
    let out = curl_ok(
        bin,
        addr,
        &["-v", "--proxy-user", "alice:secret"],
        &[&a, &b],
        "curl --proxy-user alice:secret",
    );
    let mut want = ok_body("GET", "/one");
    want.extend(ok_body("GET", "/two"));
    assert_eq!(out.stdout, want, "{bin}: {}", out.text());
    expect_curl_says(
        bin,
        &out,
        "Re-using existing connection",
        None,
        "keep-alive with credentials",
    );
    for url in [&a, &b] {
        let l = wait_access(&p, url, |l| &l.target == url);
        assert_eq!(
            (l.user.as_str(), l.status.as_str()),
            ("alice", "200"),
            "{bin}: the access log names the user: {l:?}"
        );
    }
}

fn auth_password_with_colon(bin: Bin) {
    let origin = RawOrigin::ok();
    let (p, addr) = start_http(bin, true, &[443], "", BOB);
    let url = format!("http://{}/colon", origin.addr);
    let out = curl_ok(
        bin,
        addr,
        &["--proxy-user", "bob:pa:ss"],
        &[&url],
        "curl --proxy-user bob:pa:ss",
    );
    assert_eq!(
        out.stdout,
        ok_body("GET", "/colon"),
        "{bin}: {}",
        out.text()
    );
    let l = wait_access(&p, "bob", |l| l.target == url);
    assert_eq!(l.user, "bob", "{bin}: {l:?}");
}

fn auth_scheme_case_insensitive(bin: Bin) {
    let origin = RawOrigin::ok();
    let (_p, addr) = start_http(bin, true, &[443], "", "");
    let o = origin.addr;
    let token = base64(b"alice:secret");
    let mut c = Client::open(bin, addr);
    for scheme in ["basic", "BASIC", "bAsIc"] {
        let path = format!("/{scheme}");
        let r = c.ask(
            &req(
                "GET",
                o,
                &path,
                &format!("Proxy-Authorization: {scheme} {token}\r\n"),
            ),
            scheme,
        );
        assert_eq!(
            (r.status(), r.body.as_slice()),
            (200, ok_body("GET", &path).as_slice()),
            "{bin}: the scheme name {scheme:?} is case-insensitive: {}",
            r.text()
        );
        let (_, h, _) = origin.request(bin, scheme);
        assert!(
            !h.has("proxy-authorization"),
            "{bin}: the credentials stay with the proxy: {}",
            h.text()
        );
    }
}

fn auth_curl_connect(bin: Bin) {
    let origin = RawOrigin::ok();
    let (p, addr) = start_http(bin, true, &[443, origin.port()], "", "");
    let url = format!("http://{}/tunnel", origin.addr);
    let out = curl_ok(
        bin,
        addr,
        &["-p", "--proxy-user", "alice:secret"],
        &[&url],
        "curl -p --proxy-user alice:secret",
    );
    assert_eq!(
        out.stdout,
        ok_body("GET", "/tunnel"),
        "{bin}: {}",
        out.text()
    );
    let l = wait_access(&p, "CONNECT as alice", |l| l.method == "CONNECT");
    assert_eq!(
        (l.user.as_str(), l.status.as_str()),
        ("alice", "200"),
        "{bin}: {l:?}"
    );
    let out = curl(bin, addr, &["-p"], &[&url]);
    assert!(
        !out.status.success() && out.stderr.contains("407"),
        "{bin}: CONNECT without credentials: {}",
        out.text()
    );
}

// ---- 7. limits --------------------------------------------------------------

fn max_connections_503(bin: Bin) {
    let origin = RawOrigin::ok();
    let (mut p, addr) = start_http(bin, false, &[443], "max_connections = 1", "");
    let o = origin.addr;
    let mut first = Client::open(bin, addr);
    let r = first.ask(&get(o, "/first"), "first client");
    assert_eq!(r.status(), 200, "{bin}: {}", r.text());

    let mut second = Client::open(bin, addr);
    let r = second.ask(&get(o, "/second"), "a second client over max_connections");
    check_own_reply(bin, &r, 503, true, "a second client over max_connections");
    second.expect_closed("after the 503");
    assert_eq!(
        origin.accepted(),
        1,
        "{bin}: the refused client connects nowhere"
    );
    let l = wait_access(&p, "the 503", |l| l.status == "503");
    assert_eq!(l.client, second.local(), "{bin}: {l:?}");

    let r = first.ask(&get(o, "/still"), "first client after the 503");
    assert_eq!(r.body, ok_body("GET", "/still"), "{bin}: {}", r.text());
    drop(first);
    let served = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let s = connect(addr).ok()?;
        let mut w = Wire::new(s);
        w.s.write_all(&get(o, "/again")).ok()?;
        let head = Head::parse(w.head().ok()??);
        (head.status() == 200).then_some(())
    });
    assert!(
        served.is_some(),
        "{bin}: once the first client is gone, a new one is served"
    );
    assert_running(&mut p, "after the limit");
}
