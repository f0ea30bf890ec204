//! The protocol gateways (SPEC.md "telnet", "smtp", "pop3" and "nntp"), end
//! to end through both binaries, with real clients and servers: Python's
//! smtplib, poplib and nntplib as clients, aiosmtpd as the SMTP server,
//! dovecot as a POP3 server, the `telnet` client; scripted POP3 and NNTP
//! servers and raw sockets for the corners (exact bytes, refusals, limits).
//!
//! Tools the cases need beyond the harness: `python3` with nntplib (in the
//! standard library up to Python 3.12; pip `standard-nntplib` after),
//! pip `aiosmtpd`, Debian `telnet` and Debian `dovecot-pop3d`. A case whose
//! tool is missing fails and names the package.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use portico_tests::logline::AccessLine;
use portico_tests::{
    both, config_head, connect, echo_check, free_port, local, poll_until, require,
    require_python_module, run_tool, send_all, start_on_free_port, Acceptor, Behaviour, Bin,
    LineLog, Portico, StartOptions, TempDir, TestServer, ALICE, PROMPTLY,
};
/// How long one run of a client tool may take.
const TOOL_LIMIT: Duration = Duration::from_secs(60);
/// How long a server (aiosmtpd, dovecot) may take to come up.
const SERVER_START: Duration = Duration::from_secs(20);

const TELNET_GREETING: &[u8] = b"portico telnet gateway\r\nportico> ";
const POP3_GREETING: &[u8] = b"+OK portico POP3 gateway ready\r\n";

// ---------------------------------------------------------------------------
// The proxy under test.

/// A configuration with one service on 127.0.0.1:`port`; `service` holds
/// its lines (name, kind, …), `limits` lines of `[limits]`, `extra` what
/// follows (rules). The user alice has the password `secret`.
fn gw_config(port: u16, service: &str, limits: &str, extra: &str) -> String {
    format!(
        "{}\n{ALICE}\n[[service]]\nlisten = [\"127.0.0.1:{port}\"]\n{service}\n\n{extra}\n",
        config_head(limits, "")
    )
}

fn start_gw(bin: Bin, service: &str, limits: &str, extra: &str) -> (Portico, SocketAddr) {
    start_on_free_port(bin, StartOptions::default(), |port| {
        gw_config(port, service, limits, extra)
    })
}

/// The lines of a service `name` of `kind` relaying to `destination`.
fn relay_service(name: &str, kind: &str, destination: SocketAddr) -> String {
    format!("name = \"{name}\"\nkind = \"{kind}\"\ndestination = \"{destination}\"")
}

/// A rule that denies every client on 127.0.0.1 at accept.
const DENY_LOCAL: &str = "[[rule]]\naction = \"deny\"\nclients = [\"127.0.0.1/32\"]\n";

/// The first access-log line of service `service` that `pred` accepts,
/// waiting at most [`PROMPTLY`].
fn access_line(
    p: &Portico,
    service: &str,
    what: &str,
    pred: impl Fn(&AccessLine) -> bool,
) -> AccessLine {
    p.expect_access(service, what, PROMPTLY, pred)
}

/// The access-log line of the connection from `client`.
fn access_of(p: &Portico, service: &str, client: SocketAddr) -> AccessLine {
    p.access_of(service, client, PROMPTLY)
}

fn check_line(bin: Bin, l: &AccessLine, method: &str, target: &str, dest: &str, status: &str) {
    let got = (
        l.method.as_str(),
        l.target.as_str(),
        l.destination.as_str(),
        l.status.as_str(),
    );
    assert_eq!(
        got,
        (method, target, dest, status),
        "{bin}: access-log line (method, target, destination, status) of {l:?}"
    );
}

// ---------------------------------------------------------------------------
// Tools.

/// Runs a Python client `code` with `args` (under python3, which `py` is),
/// which must succeed; returns the `key value` lines it printed.
fn python_client(
    py: &Path,
    code: &str,
    args: &[String],
    stdin: &[u8],
    what: &str,
) -> Vec<(String, String)> {
    let mut cmd = Command::new(py);
    cmd.args(["-W", "ignore", "-c", code]).args(args);
    let out = run_tool(what, cmd, Some(stdin), TOOL_LIMIT);
    assert!(
        out.status.success(),
        "{what}: the Python client failed: {}",
        out.text()
    );
    out.stdout_text()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn field<'a>(f: &'a [(String, String)], key: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the client printed no {key:?}: {f:?}"))
}

/// Checks the fields a Python client printed: `(key, value, what)`.
fn expect_fields(bin: Bin, f: &[(String, String)], want: &[(&str, &str, &str)]) {
    for (key, value, what) in want {
        assert_eq!(
            field(f, key),
            *value,
            "{bin}: {what} (the client's {key:?})"
        );
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex from the client"))
        .collect()
}

/// A server process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Raw clients.

fn dial(bin: Bin, addr: SocketAddr) -> TcpStream {
    connect(addr).unwrap_or_else(|e| panic!("{bin}: connect to {addr}: {e}"))
}

fn me(s: &TcpStream) -> SocketAddr {
    s.local_addr().expect("local_addr of a connected socket")
}

/// Connects and reads the gateway's `greeting`.
fn greeted(bin: Bin, addr: SocketAddr, greeting: &[u8], what: &str) -> TcpStream {
    let mut s = dial(bin, addr);
    expect(bin, &mut s, greeting, what);
    s
}

/// Sends `line` and expects `want` in answer.
fn exchange(bin: Bin, s: &mut TcpStream, line: &[u8], want: &[u8], what: &str) {
    send_all(bin, s, line, what);
    expect(bin, s, want, what);
}

/// Reads exactly `want.len()` bytes and checks they are `want`.
fn expect(bin: Bin, s: &mut TcpStream, want: &[u8], what: &str) {
    let mut buf = vec![0u8; want.len()];
    let mut got = 0;
    while got < want.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!(
                "{bin}: {what}: closed after {:?}, want {:?}",
                String::from_utf8_lossy(&buf[..got]),
                String::from_utf8_lossy(want)
            ),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{bin}: {what}: {e} after {:?}, want {:?}",
                String::from_utf8_lossy(&buf[..got]),
                String::from_utf8_lossy(want)
            ),
        }
        if buf[..got] != want[..got] {
            break;
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&buf[..got]),
        String::from_utf8_lossy(want),
        "{bin}: {what}"
    );
    assert_eq!(&buf[..got], want, "{bin}: {what} (bytes)");
}

/// Reads until the bytes read end with `end`; returns them all.
fn read_until(bin: Bin, s: &mut TcpStream, end: &[u8], what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(end) {
        match s.read(&mut b) {
            Ok(0) => panic!(
                "{bin}: {what}: closed after {:?}, waiting for {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(end)
            ),
            Ok(_) => got.push(b[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{bin}: {what}: {e} after {:?}, waiting for {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(end)
            ),
        }
    }
    got
}

/// The proxy must close the connection now, sending nothing more; the
/// client then closes its side too (a relayed session ends, and is logged,
/// when both directions have).
fn expect_closed(bin: Bin, s: &mut TcpStream, what: &str) {
    portico_tests::expect_closed(bin, s, what);
    let _ = s.shutdown(Shutdown::Write);
}

/// The proxy closes `s` (see [`expect_closed`]); returns the connection's
/// access-log line of `service`.
fn closed_line(bin: Bin, p: &Portico, service: &str, s: &mut TcpStream, what: &str) -> AccessLine {
    expect_closed(bin, s, what);
    access_of(p, service, me(s))
}

/// Sends `line`, expects `want` in answer, then the close; returns the
/// connection's access-log line of `service`.
fn answered_then_closed(
    bin: Bin,
    p: &Portico,
    service: &str,
    s: &mut TcpStream,
    line: &[u8],
    want: &[u8],
    what: &str,
) -> AccessLine {
    exchange(bin, s, line, want, what);
    closed_line(bin, p, service, s, &format!("after {what}"))
}

/// Connects and reads everything until the proxy closes.
fn refused_with(bin: Bin, addr: SocketAddr, want: &[u8], what: &str) -> SocketAddr {
    let mut s = dial(bin, addr);
    let client = me(&s);
    expect(bin, &mut s, want, what);
    expect_closed(bin, &mut s, what);
    client
}

// ---------------------------------------------------------------------------
// Scripted servers.

/// What a scripted server does with each line: the reply, and whether to
/// close after it.
type Script = fn(&[u8]) -> (Vec<u8>, bool);

/// A server on its own port that serves every connection with a function,
/// on a thread of its own, and reports what the function returned when the
/// connection ends.
struct Reporting<T> {
    addr: SocketAddr,
    acceptor: Acceptor,
    reports: Mutex<mpsc::Receiver<T>>,
    /// What the server is, for failure messages.
    name: &'static str,
}

impl<T: Send + 'static> Reporting<T> {
    fn start(
        ip: IpAddr,
        name: &'static str,
        serve: impl Fn(TcpStream) -> T + Send + Sync + 'static,
    ) -> Reporting<T> {
        let (tx, rx) = mpsc::channel();
        let acceptor = Acceptor::start(ip, name, move |stream, _| {
            let _ = tx.send(serve(stream));
        });
        Reporting {
            addr: acceptor.addr(),
            acceptor,
            reports: Mutex::new(rx),
            name,
        }
    }

    fn accepted(&self) -> u64 {
        self.acceptor.accepted()
    }

    /// What the next connection to end reported.
    fn next_report(&self, what: &str) -> T {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(PROMPTLY)
            .unwrap_or_else(|_| panic!("{what}: no connection to the {} ended in time", self.name))
    }
}

/// A line-by-line server: greets, answers each line by its [`Script`], and
/// reports every connection's lines (with their line ends) when it ends.
type Scripted = Reporting<Vec<Vec<u8>>>;

impl Scripted {
    fn scripted(greeting: &'static [u8], script: Script) -> Scripted {
        Reporting::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "server", move |stream| {
            serve_script(stream, greeting, script)
        })
    }

    /// The lines of the next connection to end.
    fn next_lines(&self, what: &str) -> Vec<String> {
        self.next_report(what)
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

fn serve_script(stream: TcpStream, greeting: &[u8], script: Script) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return lines,
    };
    if w.write_all(greeting).is_err() {
        return lines;
    }
    let mut r = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (reply, close) = script(&line);
        lines.push(line);
        if w.write_all(&reply).is_err() {
            break;
        }
        if close {
            // The client has no more to say after the last command.
            let _ = w.shutdown(Shutdown::Write);
            break;
        }
    }
    lines
}

fn verb_arg(line: &[u8]) -> (String, String) {
    let l = String::from_utf8_lossy(line);
    let l = l.trim_end_matches(['\r', '\n']);
    let (v, a) = l.split_once(' ').unwrap_or((l, ""));
    (v.to_ascii_uppercase(), a.to_string())
}

/// The message the scripted POP3 server holds, as sent on the wire
/// (dot-stuffed), 8-bit and odd spacing included.
const POP3_WIRE_MESSAGE: &[u8] = b"From: sender@example.com\r\nTo: alice@example.com\r\n\
Subject: through the gateway\r\n\r\nfirst line\r\n..a line that starts with a dot\r\n\
\xc3\xa9t\xc3\xa9 \t  spaces\r\n\r\n";

/// A POP3 server: USER (any name: `+OK hello NAME`), PASS (`secret`),
/// STAT, RETR 1, QUIT.
fn pop3_script(line: &[u8]) -> (Vec<u8>, bool) {
    let (verb, arg) = verb_arg(line);
    let r = match verb.as_str() {
        "USER" => format!("+OK hello {arg}\r\n").into_bytes(),
        "PASS" if arg == "secret" => b"+OK logged in\r\n".to_vec(),
        "PASS" => b"-ERR wrong password\r\n".to_vec(),
        "STAT" => format!("+OK 1 {}\r\n", POP3_WIRE_MESSAGE.len()).into_bytes(),
        "RETR" if arg == "1" => [
            format!("+OK {} octets\r\n", POP3_WIRE_MESSAGE.len()).as_bytes(),
            POP3_WIRE_MESSAGE,
            b".\r\n",
        ]
        .concat(),
        "QUIT" => return (b"+OK bye\r\n".to_vec(), true),
        _ => b"-ERR unknown command\r\n".to_vec(),
    };
    (r, false)
}

const NNTP_GREETING: &[u8] = b"200 news.test ready, posting allowed\r\n";
/// The article as sent on the wire (dot-stuffed).
const NNTP_WIRE_ARTICLE: &[u8] = b"Path: news.test!not-for-mail\r\nFrom: poster@example.com\r\n\
Newsgroups: local.test\r\nSubject: hello\r\nMessage-ID: <1@news.test>\r\n\r\nbody line\r\n\
..starts with a dot\r\nlast\r\n";

/// An NNTP reader server: CAPABILITIES, MODE READER, GROUP, ARTICLE 1, QUIT.
fn nntp_script(line: &[u8]) -> (Vec<u8>, bool) {
    let (verb, arg) = verb_arg(line);
    let r = match verb.as_str() {
        "CAPABILITIES" => b"101 Capability list:\r\nVERSION 2\r\nREADER\r\n.\r\n".to_vec(),
        "MODE" => b"200 reader mode\r\n".to_vec(),
        "GROUP" => format!("211 1 1 1 {arg}\r\n").into_bytes(),
        "ARTICLE" => [
            &b"220 1 <1@news.test> article\r\n"[..],
            NNTP_WIRE_ARTICLE,
            b".\r\n",
        ]
        .concat(),
        "QUIT" => return (b"205 bye\r\n".to_vec(), true),
        _ => b"500 unknown command\r\n".to_vec(),
    };
    (r, false)
}

/// An echo server that reports every connection's bytes when it ends.
type Recorder = Reporting<Vec<u8>>;

impl Recorder {
    fn recorder() -> Recorder {
        Recorder::recorder_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn recorder_on(ip: IpAddr) -> Recorder {
        Reporting::start(ip, "echo server", |mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
            all
        })
    }
}

/// A port on 127.0.0.1 where nothing listens.
fn dead_port() -> u16 {
    free_port()
}

// ---------------------------------------------------------------------------
// smtp

/// An aiosmtpd server storing each message's envelope and original bytes
/// in a file; prints its port, and runs until its standard input closes.
const AIOSMTPD_SERVER: &str = r#"
import asyncio, os, sys
from aiosmtpd.smtp import SMTP

out = sys.argv[1]

class Store:
    async def handle_DATA(self, server, session, envelope):
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(envelope.mail_from.encode() + b"\n")
            f.write(",".join(envelope.rcpt_tos).encode() + b"\n")
            f.write(envelope.original_content)
        os.rename(tmp, out)
        return "250 2.0.0 stored"

async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: SMTP(Store(), hostname="mx.test"), "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"#;

/// smtplib sends the message on standard input through the gateway.
const SMTPLIB_CLIENT: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
code, banner = s.ehlo("client.test")
print("ehlo", code)
refused = s.sendmail("sender@example.com", ["rcpt@example.net"], sys.stdin.buffer.read())
print("refused", len(refused))
print("quit", s.quit()[0])
"#;

struct Aiosmtpd {
    _daemon: Daemon,
    _stdin: ChildStdin,
    addr: SocketAddr,
    store: PathBuf,
    _dir: TempDir,
}

fn start_aiosmtpd() -> Aiosmtpd {
    let py = require_python_module(
        "aiosmtpd",
        "the pip package aiosmtpd (pip install aiosmtpd)",
    );
    let dir = TempDir::new();
    let script = dir.write("server.py", AIOSMTPD_SERVER);
    let store = dir.path().join("message");
    let mut child = Command::new(&py)
        .arg(&script)
        .arg(&store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start aiosmtpd: {e}"));
    let stdin = child.stdin.take().expect("stdin pipe");
    let stdout = LineLog::start(child.stdout.take());
    let daemon = Daemon { child };
    let line = stdout
        .wait_for(|_| true, SERVER_START)
        .unwrap_or_else(|| panic!("aiosmtpd did not print its port within {SERVER_START:?}"));
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("aiosmtpd printed {line:?}, not a port"));
    Aiosmtpd {
        _daemon: daemon,
        _stdin: stdin,
        addr: local(port),
        store,
        _dir: dir,
    }
}

fn smtp_sends_a_message(bin: Bin) {
    let server = start_aiosmtpd();
    let (p, addr) = start_gw(bin, &relay_service("mail", "smtp", server.addr), "", "");
    let message = b"From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: gateway test\r\n\
\r\nHello through Portico.\r\n.A line that starts with a dot.\r\n..and two dots.\r\n\
\tindented line   with trailing spaces   \r\nlast line\r\n";
    let py = require("python3", "python3");
    let f = python_client(
        &py,
        SMTPLIB_CLIENT,
        &[addr.port().to_string()],
        message,
        &format!("{bin}: smtplib through the gateway"),
    );
    expect_fields(
        bin,
        &f,
        &[
            ("ehlo", "250", "EHLO through the gateway"),
            ("refused", "0", "recipients refused"),
            ("quit", "221", "QUIT"),
        ],
    );
    let stored = std::fs::read(&server.store)
        .unwrap_or_else(|e| panic!("{bin}: the server stored no message: {e}"));
    let want = [&b"sender@example.com\nrcpt@example.net\n"[..], &message[..]].concat();
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(&want),
        "{bin}: the message the SMTP server received"
    );
    let l = access_line(&p, "mail", "the smtplib session", |_| true);
    let dest = server.addr.to_string();
    check_line(bin, &l, "SMTP", &dest, &dest, "ok");
}

/// A relaying gateway refuses in its protocol's words: a client denied at
/// accept gets `denied` (the server never hears of it); with nothing
/// listening at the destination, `unreachable` and a `refused` line.
fn relay_refusals(
    bin: Bin,
    (name, kind, method): (&str, &str, &str),
    server: SocketAddr,
    server_accepted: impl Fn() -> u64,
    denied: &[u8],
    unreachable: &[u8],
) {
    // Denied at accept: said before any connect.
    let (p, addr) = start_gw(bin, &relay_service(name, kind, server), "", DENY_LOCAL);
    let c = refused_with(bin, addr, denied, "denied client");
    assert_eq!(access_of(&p, name, c).status, "denied", "{bin}: {name}");
    assert_eq!(
        server_accepted(),
        0,
        "{bin}: a denied client reached the server"
    );
    drop(p);
    // The server is down.
    let dead = local(dead_port());
    let (p, addr) = start_gw(bin, &relay_service(name, kind, dead), "", "");
    let c = refused_with(bin, addr, unreachable, "unreachable server");
    let l = access_of(&p, name, c);
    let d = dead.to_string();
    check_line(bin, &l, method, &d, &d, "refused");
}

fn smtp_refusals(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    relay_refusals(
        bin,
        ("mail", "smtp", "SMTP"),
        server.addr(),
        || server.accepted(),
        b"554 5.7.1 access denied\r\n",
        b"421 4.3.0 mail server unavailable, try again later\r\n",
    );
}

// ---------------------------------------------------------------------------
// pop3

fn pop3_service(name: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nkind = \"pop3\"\n{extra}")
}

/// Sends the POP3 `command`; the answer must be one `-ERR` line, which is
/// returned.
fn pop3_error(bin: Bin, s: &mut TcpStream, command: &str, what: &str) -> String {
    send_all(bin, s, format!("{command}\r\n").as_bytes(), what);
    let line = String::from_utf8_lossy(&read_until(bin, s, b"\r\n", what)).into_owned();
    assert!(
        line.starts_with("-ERR "),
        "{bin}: {what}: want -ERR, got {line:?}"
    );
    line
}

/// USER, PASS, STAT, RETR and QUIT through the gateway, each answer byte
/// for byte; the server sees `USER alice`, then the client's lines.
fn pop3_session(bin: Bin) {
    let server = Scripted::scripted(b"+OK scripted POP3 ready <1.2@pop.test>\r\n", pop3_script);
    let (p, addr) = start_gw(bin, &pop3_service("pop", ""), "", "");
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    let user = format!("USER alice#{}\r\n", server.addr);
    exchange(
        bin,
        &mut s,
        user.as_bytes(),
        b"+OK hello alice\r\n",
        "the server's answer to USER",
    );
    exchange(
        bin,
        &mut s,
        b"PASS secret\r\n",
        b"+OK logged in\r\n",
        "PASS relayed",
    );
    send_all(bin, &mut s, b"STAT\r\n", "STAT");
    let stat = format!("+OK 1 {}\r\n", POP3_WIRE_MESSAGE.len());
    expect(bin, &mut s, stat.as_bytes(), "STAT");
    send_all(bin, &mut s, b"RETR 1\r\n", "RETR");
    let retr = [
        format!("+OK {} octets\r\n", POP3_WIRE_MESSAGE.len()).as_bytes(),
        POP3_WIRE_MESSAGE,
        b".\r\n",
    ]
    .concat();
    expect(bin, &mut s, &retr, "RETR 1, byte for byte");
    exchange(bin, &mut s, b"QUIT\r\n", b"+OK bye\r\n", "QUIT");
    expect_closed(bin, &mut s, "after QUIT");
    let lines = server.next_lines(&format!("{bin}: the POP3 session"));
    assert_eq!(
        lines,
        [
            "USER alice\r\n",
            "PASS secret\r\n",
            "STAT\r\n",
            "RETR 1\r\n",
            "QUIT\r\n"
        ],
        "{bin}: what the POP3 server received"
    );
    let l = access_of(&p, "pop", me(&s));
    let dest = server.addr.to_string();
    check_line(bin, &l, "POP3", &dest, &dest, "ok");

    // All at once: USER and what follows it, pipelined.
    let mut s = dial(bin, addr);
    let all = format!("USER bob#{}\r\nPASS secret\r\nQUIT\r\n", server.addr);
    exchange(
        bin,
        &mut s,
        all.as_bytes(),
        b"+OK portico POP3 gateway ready\r\n+OK hello bob\r\n+OK logged in\r\n+OK bye\r\n",
        "answers to pipelined commands",
    );
    expect_closed(bin, &mut s, "after the pipelined QUIT");
    let lines = server.next_lines(&format!("{bin}: the pipelined session"));
    assert_eq!(
        lines,
        ["USER bob\r\n", "PASS secret\r\n", "QUIT\r\n"],
        "{bin}: what the POP3 server received (pipelined)"
    );
}

/// CAPA, QUIT and anything else before USER are the gateway's own.
fn pop3_before_user(bin: Bin) {
    let (p, addr) = start_gw(bin, &pop3_service("pop", ""), "", "");
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    exchange(
        bin,
        &mut s,
        b"CAPA\r\n",
        b"+OK\r\nUSER\r\n.\r\n",
        "CAPA before USER",
    );
    for cmd in [
        "STAT",
        "PASS secret",
        "STLS",
        "APOP alice 0123456789abcdef",
        "RETR 1",
        "uidl",
    ] {
        pop3_error(bin, &mut s, cmd, &format!("{cmd} before USER"));
    }
    let l = answered_then_closed(
        bin,
        &p,
        "pop",
        &mut s,
        b"capa\r\nquit\r\n",
        b"+OK\r\nUSER\r\n.\r\n+OK bye\r\n",
        "capa then quit",
    );
    check_line(bin, &l, "POP3", "-", "-", "quit");
    // poplib sees the capability list.
    let py = require("python3", "python3");
    let code = "import poplib, sys\np = poplib.POP3('127.0.0.1', int(sys.argv[1]), timeout=30)\n\
                print('welcome', p.getwelcome().decode())\nprint('capa', sorted(p.capa()))\n\
                print('quit', p.quit().decode())\n";
    let f = python_client(&py, code, &[addr.port().to_string()], b"", "poplib CAPA");
    expect_fields(
        bin,
        &f,
        &[
            ("welcome", "+OK portico POP3 gateway ready", "poplib"),
            ("capa", "['USER']", "poplib capa()"),
            ("quit", "+OK bye", "poplib quit()"),
        ],
    );
}

/// The last separator counts; `separator` sets another; the name the
/// server sees is what is before it.
fn pop3_separators(bin: Bin) {
    let server = Scripted::scripted(b"+OK ready\r\n", pop3_script);
    let a = server.addr;
    let (p, addr) = start_gw(bin, &pop3_service("pop", ""), "", "");
    for (user, name) in [
        (format!("me@example.com#{a}"), "me@example.com"),
        (format!("a#b#{a}"), "a#b"),
        (format!("x%y#{a}"), "x%y"),
    ] {
        let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
        exchange(
            bin,
            &mut s,
            format!("USER {user}\r\nQUIT\r\n").as_bytes(),
            format!("+OK hello {name}\r\n+OK bye\r\n").as_bytes(),
            &user,
        );
        expect_closed(bin, &mut s, &user);
        let lines = server.next_lines(&format!("{bin}: USER {user}"));
        assert_eq!(
            lines,
            [format!("USER {name}\r\n"), "QUIT\r\n".into()],
            "{bin}: {user}"
        );
        let l = access_of(&p, "pop", me(&s));
        check_line(bin, &l, "POP3", &a.to_string(), &a.to_string(), "ok");
    }
    drop(p);
    // separator = "%": `#` is then part of the name.
    let (p, addr) = start_gw(bin, &pop3_service("pop", "separator = \"%\""), "", "");
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    exchange(
        bin,
        &mut s,
        format!("USER me#home%{a}\r\nQUIT\r\n").as_bytes(),
        b"+OK hello me#home\r\n+OK bye\r\n",
        "% separator",
    );
    expect_closed(bin, &mut s, "% separator");
    let lines = server.next_lines(&format!("{bin}: separator %"));
    assert_eq!(
        lines,
        ["USER me#home\r\n", "QUIT\r\n"],
        "{bin}: separator %"
    );
    // No `%` and no destination: an error, no connection.
    let before = server.accepted();
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    let line = pop3_error(
        bin,
        &mut s,
        &format!("USER alice#{a}"),
        "USER without the separator and no destination",
    );
    assert!(
        line.contains('%'),
        "{bin}: USER without the separator and no destination: {line:?}"
    );
    assert_eq!(server.accepted(), before, "{bin}: a connection was made");
    drop(p);
}

/// An empty host or a bad port is an error, with no connection attempt;
/// without a separator the service's destination is used.
fn pop3_bad_targets(bin: Bin) {
    let server = Scripted::scripted(b"+OK ready\r\n", pop3_script);
    let service = pop3_service("pop", &format!("destination = \"{}\"", server.addr));
    let (p, addr) = start_gw(bin, &service, "", "");
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    for user in [
        "alice#",
        "alice#:110",
        "alice#127.0.0.1:",
        "alice#127.0.0.1:0",
        "alice#127.0.0.1:65536",
        "alice#127.0.0.1:pop3",
        "alice#bad/host",
        "#127.0.0.1",
    ] {
        pop3_error(
            bin,
            &mut s,
            &format!("USER {user}"),
            &format!("USER {user}"),
        );
    }
    assert_eq!(server.accepted(), 0, "{bin}: a bad USER made a connection");
    // The destination, when the name has no separator.
    exchange(
        bin,
        &mut s,
        b"USER alice\r\n",
        b"+OK hello alice\r\n",
        "USER to the destination",
    );
    exchange(bin, &mut s, b"QUIT\r\n", b"+OK bye\r\n", "QUIT");
    expect_closed(bin, &mut s, "after QUIT");
    assert_eq!(server.accepted(), 1);
    let lines = server.next_lines(&format!("{bin}: USER to the destination"));
    assert_eq!(lines, ["USER alice\r\n", "QUIT\r\n"], "{bin}");
    let l = access_of(&p, "pop", me(&s));
    let dest = server.addr.to_string();
    check_line(bin, &l, "POP3", &dest, &dest, "ok");
}

fn pop3_refusals(bin: Bin) {
    // The server greets -ERR.
    let server = Scripted::scripted(b"-ERR not now\r\n", pop3_script);
    let (p, addr) = start_gw(bin, &pop3_service("pop", ""), "", "");
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    let want = format!("-ERR cannot reach mail server {}\r\n", server.addr);
    let l = answered_then_closed(
        bin,
        &p,
        "pop",
        &mut s,
        format!("USER alice#{}\r\n", server.addr).as_bytes(),
        want.as_bytes(),
        "USER: a server greeting -ERR",
    );
    assert_eq!(l.destination, server.addr.to_string(), "{bin}: {l:?}");
    assert_ne!(l.status, "ok", "{bin}: {l:?}");
    // Nothing listens.
    let dead = local(dead_port());
    let mut s = greeted(bin, addr, POP3_GREETING, "greeting");
    let want = format!("-ERR cannot reach mail server {dead}\r\n");
    let l = answered_then_closed(
        bin,
        &p,
        "pop",
        &mut s,
        format!("USER alice#{dead}\r\n").as_bytes(),
        want.as_bytes(),
        "USER: an unreachable server",
    );
    check_line(
        bin,
        &l,
        "POP3",
        &dead.to_string(),
        &dead.to_string(),
        "refused",
    );
    drop(p);
    // Denied at accept: said instead of the greeting.
    let (p, addr) = start_gw(bin, &pop3_service("pop", ""), "", DENY_LOCAL);
    let c = refused_with(bin, addr, b"-ERR access denied\r\n", "denied client");
    assert_eq!(access_of(&p, "pop", c).status, "denied");
}

const DOVECOT_CONF: &str = r#"
base_dir = DIR/run
state_dir = DIR/state
log_path = DIR/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u DIR/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=DIR/home/%u
}
mail_location = maildir:~/Maildir
service pop3-login {
  inet_listener pop3 {
    port = PORT
  }
}
"#;

/// Dovecot's POP3 server on 127.0.0.1, user alice (password `secret`)
/// with one message.
struct Dovecot {
    _daemon: Daemon,
    addr: SocketAddr,
    _dir: TempDir,
}

fn start_dovecot(message: &[u8]) -> Dovecot {
    let dovecot = require("dovecot", "dovecot-pop3d");
    assert!(
        Path::new("/usr/lib/dovecot/pop3").exists(),
        "dovecot's POP3 server is not installed: this test needs the Debian package \
         `dovecot-pop3d` (apt-get install -y dovecot-pop3d; .ci/run must install it)"
    );
    let mut tries = 0;
    loop {
        let dir = TempDir::new();
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = DOVECOT_CONF
            .replace("DIR", &d)
            .replace("PORT", &port.to_string());
        let conf = dir.write("dovecot.conf", &conf);
        dir.write("passwd", "alice:{PLAIN}secret\n");
        let maildir = dir.path().join("home/alice/Maildir");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("create the maildir");
        }
        std::fs::write(maildir.join("new/1000000000.M1P1.test"), message)
            .expect("write the message");
        let mut chown = Command::new("chown");
        chown
            .args(["-R", "nobody:nogroup"])
            .arg(dir.path().join("home"));
        let out = run_tool("dovecot", chown, None, TOOL_LIMIT);
        assert!(
            out.status.success(),
            "dovecot: chown the maildir: {}",
            out.text()
        );
        let child = Command::new(&dovecot)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", dovecot.display()));
        let mut daemon = Daemon { child };
        let addr = local(port);
        let up = poll_until(SERVER_START, Duration::from_millis(20), || {
            if daemon.exited().is_some() {
                return Some(false);
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .ok()
                .map(|_| true)
        });
        if up == Some(true) {
            return Dovecot {
                _daemon: daemon,
                addr,
                _dir: dir,
            };
        }
        let log = std::fs::read_to_string(dir.path().join("dovecot.log")).unwrap_or_default();
        tries += 1;
        if tries >= 3 || !log.contains("in use") {
            panic!("dovecot did not come up on {addr} within {SERVER_START:?}; its log:\n{log}");
        }
    }
}

/// poplib logs in to dovecot through the gateway and fetches the message.
const POPLIB_CLIENT: &str = r#"
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=30)
print("welcome", p.getwelcome().decode())
print("capa", sorted(p.capa()))
print("user", p.user(sys.argv[2]).decode())
print("pass", p.pass_("secret").decode())
count, size = p.stat()
print("stat", count, size)
resp, lines, octets = p.retr(1)
print("retr", resp.decode())
print("message", b"".join(l + b"\n" for l in lines).hex())
print("quit", p.quit().decode())
"#;

fn pop3_dovecot(bin: Bin) {
    let message = b"From: sender@example.com\nTo: alice@example.com\nSubject: from dovecot\n\n\
Hello through the gateway.\n.a line that starts with a dot\n\nlast line\n";
    let dovecot = start_dovecot(message);
    let (p, addr) = start_gw(bin, &pop3_service("pop", ""), "", "");
    let py = require("python3", "python3");
    let user = format!("alice#{}", dovecot.addr);
    let f = python_client(
        &py,
        POPLIB_CLIENT,
        &[addr.port().to_string(), user],
        b"",
        &format!("{bin}: poplib through the gateway to dovecot"),
    );
    expect_fields(
        bin,
        &f,
        &[
            (
                "welcome",
                "+OK portico POP3 gateway ready",
                "poplib through the gateway to dovecot",
            ),
            ("capa", "['USER']", "poplib through the gateway to dovecot"),
            ("user", "+OK", "dovecot's answer to USER"),
            ("pass", "+OK Logged in.", "dovecot's answer to PASS"),
            (
                "stat",
                &format!(
                    "1 {}",
                    message.len() + message.iter().filter(|&&c| c == b'\n').count()
                ),
                "STAT (dovecot counts CR LF line ends)",
            ),
        ],
    );
    assert!(field(&f, "retr").starts_with("+OK"), "{bin}: {f:?}");
    assert_eq!(
        String::from_utf8_lossy(&unhex(field(&f, "message"))),
        String::from_utf8_lossy(message),
        "{bin}: the message fetched from dovecot"
    );
    assert_eq!(field(&f, "quit"), "+OK Logging out.", "{bin}");
    let l = access_line(&p, "pop", "the poplib session", |_| true);
    let dest = dovecot.addr.to_string();
    check_line(bin, &l, "POP3", &dest, &dest, "ok");
}

// ---------------------------------------------------------------------------
// nntp

const NNTPLIB_CLIENT: &str = r#"
import sys
import nntplib
s = nntplib.NNTP("127.0.0.1", int(sys.argv[1]), timeout=30)
print("welcome", s.getwelcome())
resp, count, first, last, name = s.group("local.test")
print("group", resp)
resp, info = s.article("1")
print("article", resp)
print("lines", b"".join(l + b"\r\n" for l in info.lines).hex())
print("quit", s.quit())
"#;

fn nntp_relays(bin: Bin) {
    let server = Scripted::scripted(NNTP_GREETING, nntp_script);
    let (p, addr) = start_gw(bin, &relay_service("news", "nntp", server.addr), "", "");
    let py = require_python_module(
        "nntplib",
        "Python's nntplib (standard up to 3.12; pip install standard-nntplib after)",
    );
    let f = python_client(
        &py,
        NNTPLIB_CLIENT,
        &[addr.port().to_string()],
        b"",
        &format!("{bin}: nntplib through the gateway"),
    );
    expect_fields(
        bin,
        &f,
        &[
            (
                "welcome",
                "200 news.test ready, posting allowed",
                "the server's greeting, relayed",
            ),
            (
                "group",
                "211 1 1 1 local.test",
                "nntplib through the gateway",
            ),
            (
                "article",
                "220 1 <1@news.test> article",
                "nntplib through the gateway",
            ),
        ],
    );
    let unstuffed: Vec<u8> = String::from_utf8_lossy(NNTP_WIRE_ARTICLE)
        .replace("\r\n..", "\r\n.")
        .into_bytes();
    assert_eq!(
        String::from_utf8_lossy(&unhex(field(&f, "lines"))),
        String::from_utf8_lossy(&unstuffed),
        "{bin}: the article"
    );
    assert_eq!(field(&f, "quit"), "205 bye", "{bin}");
    let lines = server.next_lines(&format!("{bin}: the NNTP session"));
    assert!(
        lines.iter().any(|l| l == "GROUP local.test\r\n")
            && lines.iter().any(|l| l == "ARTICLE 1\r\n")
            && lines.last().is_some_and(|l| l == "QUIT\r\n"),
        "{bin}: what the NNTP server received: {lines:?}"
    );
    let l = access_line(&p, "news", "the nntplib session", |_| true);
    let dest = server.addr.to_string();
    check_line(bin, &l, "NNTP", &dest, &dest, "ok");
}

fn nntp_refusals(bin: Bin) {
    let server = Scripted::scripted(NNTP_GREETING, nntp_script);
    relay_refusals(
        bin,
        ("news", "nntp", "NNTP"),
        server.addr,
        || server.accepted(),
        b"502 access denied\r\n",
        b"400 news server unavailable\r\n",
    );
}

// ---------------------------------------------------------------------------
// telnet

const TELNET: &str = "name = \"tel\"\nkind = \"telnet\"";

/// Sends `command`, expects `connected to TARGET`, echoes a payload (Telnet
/// command bytes included, since after the connect nothing is looked at),
/// closes; checks the server saw exactly the payload and the access log.
fn through(
    bin: Bin,
    p: &Portico,
    s: &mut TcpStream,
    server: &Recorder,
    command: &str,
    target: &str,
) {
    exchange(
        bin,
        s,
        format!("{command}\r\n").as_bytes(),
        format!("connected to {target}\r\n").as_bytes(),
        &format!("{command}: connected"),
    );
    let payload = b"payload \xff\xfd\x01 with Telnet bytes\r\n\x08\x7f".to_vec();
    echo_check(s, &payload).unwrap_or_else(|e| panic!("{bin}: {command}: echo: {e}"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    expect_closed(bin, s, &format!("{command}: after the end"));
    let got = server.next_report(&format!("{bin}: {command}"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&payload),
        "{bin}: {command}: what the server received"
    );
    let l = access_of(p, "tel", me(s));
    check_line(bin, &l, "TELNET", target, &server.addr.to_string(), "ok");
}

fn telnet_command_forms(bin: Bin) {
    let server = Recorder::recorder();
    let v6 = Recorder::recorder_on(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let (p, addr) = start_gw(bin, TELNET, "", "");
    let port = server.addr.port();
    let t = server.addr.to_string();
    for command in [
        format!("connect 127.0.0.1 {port}"),
        format!("c 127.0.0.1 {port}"),
        format!("open 127.0.0.1 {port}"),
        format!("OPEN 127.0.0.1:{port}"),
        format!("127.0.0.1 {port}"),
        format!("127.0.0.1:{port}"),
        format!("  connect\t127.0.0.1   {port}  "),
    ] {
        let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
        through(bin, &p, &mut s, &server, &command, &t);
    }
    for command in [
        format!("[::1]:{}", v6.addr.port()),
        format!("open ::1 {}", v6.addr.port()),
    ] {
        let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
        through(bin, &p, &mut s, &v6, &command, &v6.addr.to_string());
    }
    // A name, resolved by the proxy.
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    send_all(
        bin,
        &mut s,
        format!("connect localhost {port}\r\n").as_bytes(),
        "localhost",
    );
    let line = read_until(bin, &mut s, b"\r\n", "connect localhost");
    assert_eq!(
        String::from_utf8_lossy(&line),
        format!("connected to localhost:{port}\r\n"),
        "{bin}: connect localhost (is localhost 127.0.0.1 here?)"
    );
}

/// What the client sends before the command line is refused (WONT/DONT)
/// and never part of the line, nor sent to the server.
fn telnet_negotiation(bin: Bin) {
    let server = Recorder::recorder();
    let (p, addr) = start_gw(bin, TELNET, "", "");
    let port = server.addr.port();
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    // DO SGA, WILL TTYPE, a subnegotiation, DONT ECHO, WONT LINEMODE,
    // NOP, and WILL NAWS in the middle of the command.
    let mut input =
        b"\xff\xfd\x03\xff\xfb\x18\xff\xfa\x18\x00xterm\xff\xf0\xff\xfe\x01\xff\xfc\x22\xff\xf1con"
            .to_vec();
    input.extend_from_slice(b"\xff\xfb\x1f");
    input.extend_from_slice(format!("nect 127.0.0.1 {port}").as_bytes());
    exchange(
        bin,
        &mut s,
        &input,
        b"\xff\xfc\x03\xff\xfe\x18\xff\xfe\x1f",
        "negotiation and a command: WONT SGA, DONT TTYPE, DONT NAWS back",
    );
    through(bin, &p, &mut s, &server, "", &server.addr.to_string());
    // IAC IAC is a 0xFF in the line, which no host name has.
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    send_all(
        bin,
        &mut s,
        &[&b"127.0.0.1\xff\xff "[..], format!("{port}\r\n").as_bytes()].concat(),
        "IAC IAC",
    );
    let line = read_until(bin, &mut s, b"portico> ", "IAC IAC in a line");
    assert!(
        !line.starts_with(b"connected"),
        "{bin}: IAC IAC in a line: {:?}",
        String::from_utf8_lossy(&line)
    );
}

fn telnet_editing(bin: Bin) {
    let server = Recorder::recorder();
    let (p, addr) = start_gw(bin, TELNET, "", "");
    let port = server.addr.port();
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    // help lists the commands and prompts again.
    send_all(bin, &mut s, b"help\r\n", "help");
    let help = String::from_utf8_lossy(&read_until(bin, &mut s, b"portico> ", "help")).into_owned();
    for word in ["connect HOST [PORT]", "help", "quit"] {
        assert!(help.contains(word), "{bin}: help lacks {word:?}: {help:?}");
    }
    // Invalid: one line, and the prompt again.
    send_all(bin, &mut s, b"connect 127.0.0.1 99999\r\n", "bad port");
    let err = read_until(bin, &mut s, b"portico> ", "bad port");
    assert_eq!(
        err.iter().filter(|&&c| c == b'\n').count(),
        1,
        "{bin}: a bad command gets one line: {:?}",
        String::from_utf8_lossy(&err)
    );
    // Backspace and DEL erase; CR NUL and bare LF end lines too.
    exchange(
        bin,
        &mut s,
        b"x\x08\r\0",
        b"portico> ",
        "an erased line is empty",
    );
    exchange(bin, &mut s, b"\n", b"portico> ", "a bare LF ends a line");
    let cmd = format!("conZ\x08nect 127.0.0.9\x7f1 {port}");
    through(bin, &p, &mut s, &server, &cmd, &server.addr.to_string());
    // quit.
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    let l = answered_then_closed(bin, &p, "tel", &mut s, b"quit\r\n", b"goodbye\r\n", "quit");
    check_line(bin, &l, "TELNET", "-", "-", "quit");
}

/// A command line of 1 KiB is a command; one byte more closes.
fn telnet_long_line(bin: Bin) {
    let (p, addr) = start_gw(bin, TELNET, "", "");
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    let mut line = vec![b'a'; 1024];
    line.extend_from_slice(b"\r\n");
    send_all(bin, &mut s, &line, "a 1 KiB line");
    read_until(bin, &mut s, b"portico> ", "a 1 KiB line is answered");
    send_all(bin, &mut s, &[b'b'; 1025], "a line of 1 KiB + 1");
    let rest = read_until(bin, &mut s, b"\r\n", "a line over 1 KiB");
    assert!(!rest.is_empty());
    assert_eq!(
        closed_line(bin, &p, "tel", &mut s, "a line over 1 KiB").destination,
        "-"
    );
}

fn telnet_auth(bin: Bin) {
    let server = Recorder::recorder();
    let port = server.addr.port();
    let service = format!("{TELNET}\nauth = true");
    let (p, addr) = start_gw(bin, &service, "", "");
    let mut s = dial(bin, addr);
    expect(
        bin,
        &mut s,
        b"portico telnet gateway\r\nlogin: ",
        "login prompt",
    );
    exchange(
        bin,
        &mut s,
        b"alice\r\n",
        b"\xff\xfb\x01password: ",
        "the name: WILL ECHO and the password prompt back",
    );
    exchange(
        bin,
        &mut s,
        b"\xff\xfd\x01secret\r\n",
        b"\xff\xfc\x01\r\nportico> ",
        "DO ECHO and the password: WONT ECHO and the prompt back",
    );
    let t = server.addr.to_string();
    through(
        bin,
        &p,
        &mut s,
        &server,
        &format!("connect 127.0.0.1 {port}"),
        &t,
    );
    assert_eq!(
        access_of(&p, "tel", me(&s)).user,
        "alice",
        "{bin}: the user"
    );
    // A wrong password: said, closed.
    let mut s = dial(bin, addr);
    expect(
        bin,
        &mut s,
        b"portico telnet gateway\r\nlogin: ",
        "login prompt",
    );
    let l = answered_then_closed(
        bin,
        &p,
        "tel",
        &mut s,
        b"alice\r\nsecreT\r\n",
        b"\xff\xfb\x01password: \xff\xfc\x01\r\nlogin incorrect\r\n",
        "a wrong password",
    );
    check_line(bin, &l, "TELNET", "-", "-", "auth-failed");
}

/// With `destination`: no greeting, straight through, bytes untouched.
fn telnet_destination(bin: Bin) {
    let server = Recorder::recorder();
    let service = format!("{TELNET}\ndestination = \"{}\"", server.addr);
    let (p, addr) = start_gw(bin, &service, "", "");
    let mut s = dial(bin, addr);
    let payload = b"\xff\xfd\x03\xff\xfb\x18help\r\nquit\r\n\x08\x00\xff\xff";
    echo_check(&mut s, payload).unwrap_or_else(|e| panic!("{bin}: echo: {e}"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    expect_closed(bin, &mut s, "after the end");
    assert_eq!(
        server.next_report(&format!("{bin}: destination")),
        payload,
        "{bin}"
    );
    let l = access_of(&p, "tel", me(&s));
    let dest = server.addr.to_string();
    check_line(bin, &l, "TELNET", &dest, &dest, "ok");
}

fn telnet_refusals(bin: Bin) {
    let dead = dead_port();
    let allowed = Recorder::recorder();
    // Denied by destination, allowed otherwise.
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"127.0.0.2\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let (p, addr) = start_gw(bin, TELNET, "", rules);
    // An unreachable server and a denied destination are said, and the
    // gateway prompts again; quitting then logs the last try.
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    let dead_t = format!("127.0.0.1:{dead}");
    let want = format!("cannot connect to {dead_t}: connection refused\r\nportico> ");
    exchange(
        bin,
        &mut s,
        format!("connect 127.0.0.1 {dead}\r\n").as_bytes(),
        want.as_bytes(),
        "connect to a dead port: said, then the prompt",
    );
    let denied_t = format!("127.0.0.2:{}", allowed.addr.port());
    exchange(
        bin,
        &mut s,
        format!("127.0.0.2 {}\r\n", allowed.addr.port()).as_bytes(),
        b"access denied\r\nportico> ",
        "a denied destination: said, then the prompt",
    );
    let l = answered_then_closed(
        bin,
        &p,
        "tel",
        &mut s,
        b"quit\r\n",
        b"goodbye\r\n",
        "quit after two failed tries",
    );
    check_line(bin, &l, "TELNET", &denied_t, "-", "quit");
    // A failed try, then one that works, typed ahead of the answer: the
    // second line waits in the buffer and is read as the next command.
    let mut s = greeted(bin, addr, TELNET_GREETING, "greeting and prompt");
    let good = allowed.addr.to_string();
    let lines = format!("connect 127.0.0.1 {dead}\r\nconnect {good}\r\n");
    let want = format!(
        "cannot connect to {dead_t}: connection refused\r\nportico> connected to {good}\r\n"
    );
    exchange(
        bin,
        &mut s,
        lines.as_bytes(),
        want.as_bytes(),
        "a dead port, then a live one typed ahead",
    );
    let payload = b"after a failed try\r\n".to_vec();
    echo_check(&mut s, &payload).unwrap_or_else(|e| panic!("{bin}: retry: echo: {e}"));
    s.shutdown(Shutdown::Write).expect("shutdown");
    expect_closed(bin, &mut s, "retry: after the end");
    let got = allowed.next_report(&format!("{bin}: retry"));
    assert_eq!(got, payload, "{bin}: retry: what the server received");
    let l = access_of(&p, "tel", me(&s));
    check_line(bin, &l, "TELNET", &good, &good, "ok");
    drop(p);
    // Denied at accept.
    let (p, addr) = start_gw(bin, TELNET, "", DENY_LOCAL);
    let c = refused_with(bin, addr, b"access denied\r\n", "denied client");
    assert_eq!(access_of(&p, "tel", c).status, "denied");
}

/// Output collected from a child: the bytes, and how many of its two
/// pipes have ended.
type Captured = Arc<(Mutex<(Vec<u8>, u8)>, Condvar)>;

/// The `telnet` client, driven through pipes.
struct TelnetClient {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Captured,
    what: String,
}

impl TelnetClient {
    fn start(args: &[String], what: &str) -> TelnetClient {
        let telnet = require("telnet", "telnet");
        let mut child = Command::new(telnet)
            .arg("-c")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start telnet: {e}"));
        let stdin = child.stdin.take();
        let out = Arc::new((Mutex::new((Vec::new(), 0)), Condvar::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = out.clone();
            let mut pipe = pipe;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut st = out.0.lock().unwrap_or_else(|e| e.into_inner());
                    st.0.extend_from_slice(&buf[..n]);
                    out.1.notify_all();
                }
                let mut st = out.0.lock().unwrap_or_else(|e| e.into_inner());
                st.1 += 1;
                out.1.notify_all();
            });
        }
        TelnetClient {
            child,
            stdin,
            out,
            what: what.to_string(),
        }
    }

    fn text(&self) -> String {
        let st = self.out.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&st.0).into_owned()
    }

    /// Waits until the output holds `needle` `n` times.
    fn expect(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + PROMPTLY;
        let mut st = self.out.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if String::from_utf8_lossy(&st.0).matches(needle).count() >= n {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .out
                .1
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let text = String::from_utf8_lossy(&st.0).into_owned();
        drop(st);
        panic!(
            "{}: telnet's output did not show {needle:?} {n} time(s) within {PROMPTLY:?}:\n{text}",
            self.what
        );
    }

    fn send(&mut self, text: &str) {
        let what = &self.what;
        self.stdin
            .as_mut()
            .expect("stdin open")
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: writing to telnet: {e}"));
    }

    /// Closes telnet's input and waits for it to exit; returns its output.
    fn finish(mut self) -> String {
        self.stdin = None;
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{}: telnet did not exit after its input closed:\n{}",
                    self.what,
                    self.text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        let (lock, cv) = &*self.out;
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let st = cv
            .wait_timeout_while(st, PROMPTLY, |st| st.1 < 2)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        String::from_utf8_lossy(&st.0).into_owned()
    }
}

impl Drop for TelnetClient {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Debian telnet client: with `-- HOST -PORT` it opens with its usual
/// option negotiation, which the gateway refuses; then help, an edited
/// command, the connect, and a line echoed by the server.
fn telnet_real_client(bin: Bin) {
    let server = Recorder::recorder();
    let (p, addr) = start_gw(bin, TELNET, "", "");
    let what = format!("{bin}: telnet client");
    let mut t = TelnetClient::start(
        &["--".into(), "127.0.0.1".into(), format!("-{}", addr.port())],
        &what,
    );
    t.expect("portico telnet gateway", 1);
    t.expect("portico> ", 1);
    t.send("help\n");
    t.expect("portico> ", 2);
    assert!(
        t.text().contains("connect HOST [PORT]"),
        "{what}: {}",
        t.text()
    );
    t.send(&format!("connect 127.0.0.1 9\x7f{}\n", server.addr.port()));
    t.expect(&format!("connected to {}", server.addr), 1);
    t.send("hello through telnet\n");
    t.expect("hello through telnet", 1);
    let out = t.finish();
    let got = server.next_report(&what);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "hello through telnet\r\n",
        "{what}: what the server received (nothing of the negotiation or the command)\n\
         telnet's output:\n{out}"
    );
    let l = access_line(&p, "tel", &what, |_| true);
    let dest = server.addr.to_string();
    check_line(bin, &l, "TELNET", &dest, &dest, "ok");
}

/// The telnet client logs in (it answers the gateway's WILL ECHO).
fn telnet_real_client_login(bin: Bin) {
    let server = Recorder::recorder();
    let service = format!("{TELNET}\nauth = true");
    let (p, addr) = start_gw(bin, &service, "", "");
    let what = format!("{bin}: telnet client login");
    let mut t = TelnetClient::start(&["127.0.0.1".into(), addr.port().to_string()], &what);
    t.expect("login: ", 1);
    t.send("alice\n");
    t.expect("password: ", 1);
    t.send("secret\n");
    t.expect("portico> ", 1);
    t.send(&format!("{}\n", server.addr));
    t.expect(&format!("connected to {}", server.addr), 1);
    t.send("after login\n");
    t.expect("after login", 1);
    let out = t.finish();
    assert!(
        !out.contains("secret"),
        "{what}: the password was shown:\n{out}"
    );
    let got = server.next_report(&what);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "after login\r\n",
        "{what}: what the server received\ntelnet's output:\n{out}"
    );
    let l = access_line(&p, "tel", &what, |_| true);
    assert_eq!(l.user, "alice", "{what}: {l:?}");
}

// ---------------------------------------------------------------------------
// Limits

/// `max_connections = 1`: a second client is refused in its protocol's
/// words while the first is served.
fn limits_in_protocol_words(bin: Bin) {
    let echo = TestServer::start(Behaviour::Echo);
    let e = echo.addr();
    let cases: [(&str, String, &[u8], &[u8]); 4] = [
        (
            "mail",
            relay_service("mail", "smtp", e),
            b"",
            b"421 4.7.0 too many connections, try again later\r\n",
        ),
        (
            "pop",
            pop3_service("pop", ""),
            POP3_GREETING,
            b"-ERR too many connections\r\n",
        ),
        (
            "news",
            relay_service("news", "nntp", e),
            b"",
            b"400 too many connections, try again later\r\n",
        ),
        (
            "tel",
            TELNET.to_string(),
            TELNET_GREETING,
            b"too many connections, try again later\r\n",
        ),
    ];
    for (name, service, greeting, refusal) in cases {
        let (p, addr) = start_gw(bin, &service, "max_connections = 1", "");
        let mut first = dial(bin, addr);
        if greeting.is_empty() {
            // Relayed to the echo server: served for sure once it answers.
            echo_check(&mut first, b"hello\r\n")
                .unwrap_or_else(|e| panic!("{bin}: {name}: the first client: {e}"));
        } else {
            expect(
                bin,
                &mut first,
                greeting,
                &format!("{name}: the first client"),
            );
        }
        let c = refused_with(bin, addr, refusal, &format!("{name}: the second client"));
        assert_eq!(access_of(&p, name, c).status, "limit", "{bin}: {name}");
        // The first is still served.
        if greeting.is_empty() {
            echo_check(&mut first, b"still here\r\n")
                .unwrap_or_else(|e| panic!("{bin}: {name}: the first client after: {e}"));
        }
        drop(first);
    }
}

both!(
    smtp_sends_a_message,
    smtp_refusals,
    pop3_session,
    pop3_before_user,
    pop3_separators,
    pop3_bad_targets,
    pop3_refusals,
    pop3_dovecot,
    nntp_relays,
    nntp_refusals,
    telnet_command_forms,
    telnet_negotiation,
    telnet_editing,
    telnet_long_line,
    telnet_auth,
    telnet_destination,
    telnet_refusals,
    telnet_real_client,
    telnet_real_client_login,
    limits_in_protocol_words,
);
