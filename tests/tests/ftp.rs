//! The FTP gateway (`kind = "ftp"`) end to end through both binaries:
//! pyftpdlib as the server; Python's ftplib, curl and a raw client as the
//! clients. 5 MiB RETR and STOR with checksums in passive (PASV, EPSV) and
//! active (PORT, EPRT) mode, LIST, a data port that refuses a stranger, a
//! PORT naming another address, the words before login and the refusals.
//!
//! Tools the cases need beyond the harness: `python3` (Debian package
//! python3) with the PyPI package `pyftpdlib`, and `curl` (package curl). A
//! case whose tool is missing fails and names the package.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use portico_tests::logline::AccessLine;
use portico_tests::{
    both, config_head, connect, connect_from, curl_command, digest, file_digest, free_port, local,
    pattern, read_outcome, recv_all, require_python_module, run_tool, service, start_on_free_port,
    start_on_free_ports, without_proxy_env, Bin, LineLog, Portico, StartOptions, TempDir,
    ToolOutput, CLIENT_SEED, PROMPTLY, SERVER_SEED,
};

/// The size of the transfers.
const SIZE: usize = 5 * 1024 * 1024;
/// How long one client run (a 5 MiB transfer in a debug build) may take.
const TOOL_LIMIT: Duration = Duration::from_secs(120);
/// How long the FTP server may take to start.
const SERVER_START: Duration = Duration::from_secs(20);
/// The server's banner: over 75 characters, so pyftpdlib sends it as a
/// multi-line reply (`220-…` then `220 `), which the gateway must wait out.
const BANNER: &str = "pyftpdlib test server for the portico gateway, with a banner long enough \
                      to span two reply lines";

// ---------------------------------------------------------------------------
// The proxy under test.

fn start_gateway(bin: Bin, limits: &str, extra: &str) -> (Portico, SocketAddr) {
    start_on_free_port(bin, StartOptions::default(), |port| {
        format!(
            "{}{}{extra}\n",
            config_head(limits, ""),
            service("ftp", "ftp", port, "")
        )
    })
}

/// Access-log lines of the ftp service that satisfy `pred`, waiting until
/// there are `n` of them (at most [`PROMPTLY`]).
fn access_lines(p: &Portico, n: usize, pred: impl Fn(&AccessLine) -> bool) -> Vec<AccessLine> {
    p.expect_access_lines("ftp", n, PROMPTLY, pred)
}

// ---------------------------------------------------------------------------
// External tools.

/// python3 with pyftpdlib importable; fails the test naming what is missing.
fn python() -> PathBuf {
    require_python_module(
        "pyftpdlib",
        "the PyPI package `pyftpdlib` (pip install pyftpdlib)",
    )
}

// ---------------------------------------------------------------------------
// The FTP server: pyftpdlib with the user alice (password `secret`).

const SERVER_PY: &str = r#"
import logging, sys, time
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.WARNING)
port, home, banner = int(sys.argv[1]), sys.argv[2], sys.argv[3]
auth = DummyAuthorizer()
auth.add_user("alice", "secret", home, perm="elradfmwMT")
class Handler(FTPHandler):
    pass
Handler.authorizer = auth
Handler.banner = banner
server = FTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
# A bounded life: the test kills it, but it never outlives ten minutes.
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    server.serve_forever(timeout=0.5, blocking=False)
"#;

struct FtpServer {
    child: Child,
    addr: SocketAddr,
    home: TempDir,
    stderr: Arc<LineLog>,
    _stdout: Arc<LineLog>,
}

impl FtpServer {
    fn start() -> FtpServer {
        let py = python();
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let home = TempDir::new();
            let mut child = Command::new(&py)
                .arg("-c")
                .arg(SERVER_PY)
                .arg(port.to_string())
                .arg(home.path())
                .arg(BANNER)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start pyftpdlib: {e}"));
            // Both pipes are read to their end, so that the server never
            // blocks on a full one.
            let stdout = LineLog::start(child.stdout.take());
            let stderr = LineLog::start(child.stderr.take());
            if stdout
                .wait_for(|l| l.trim() == "ready", SERVER_START)
                .is_some()
            {
                return FtpServer {
                    child,
                    addr: local(port),
                    home,
                    stderr,
                    _stdout: stdout,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            stderr.wait(Duration::from_secs(2), |_| false);
            last = stderr.text();
        }
        panic!("pyftpdlib did not start within {SERVER_START:?} (three tries):\n{last}");
    }

    /// Writes a file of `SIZE` pattern bytes in the server's home; returns
    /// its checksum.
    fn put(&self, name: &str) -> u64 {
        let data = pattern(SERVER_SEED, SIZE);
        std::fs::write(self.home.path().join(name), &data).expect("write the server's file");
        digest(&data)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            self.stderr.wait(Duration::from_secs(2), |_| false);
            eprintln!("---- pyftpdlib stderr ----\n{}", self.stderr.text());
        }
    }
}

/// A local file of `SIZE` client pattern bytes; returns its checksum.
fn client_file(dir: &TempDir, name: &str) -> (PathBuf, u64) {
    let data = pattern(CLIENT_SEED, SIZE);
    let p = dir.path().join(name);
    std::fs::write(&p, &data).expect("write the client's file");
    (p, digest(&data))
}

/// `name@127.0.0.1:PORT`, the user name that picks the server.
fn gateway_user(server: &FtpServer) -> String {
    format!("alice@{}", server.addr)
}

// ---------------------------------------------------------------------------
// Clients.

const CLIENT_PY: &str = r#"
import ftplib, sys
host, port, user, pw, mode = sys.argv[1:6]
f = ftplib.FTP(timeout=60)
print(f.connect(host, int(port)))
print(f.login(user, pw))
f.set_pasv(mode == "passive")
for action in sys.argv[6:]:
    verb, a, b = (action.split("|") + ["", ""])[:3]
    if verb == "retr":
        with open(b, "wb") as out:
            print(f.retrbinary("RETR " + a, out.write))
    elif verb == "stor":
        with open(a, "rb") as src:
            print(f.storbinary("STOR " + b, src))
    elif verb == "list":
        lines = []
        print(f.retrlines("LIST", lines.append))
        for l in lines:
            print("LIST:" + l)
print(f.quit())
"#;

/// Runs a client through the gateway, which must succeed.
fn run_ok(bin: Bin, mut cmd: Command, what: &str) -> ToolOutput {
    without_proxy_env(&mut cmd);
    let out = run_tool(bin, cmd, None, TOOL_LIMIT);
    assert!(
        out.status.success(),
        "{bin}: {what} through the gateway failed: {}",
        out.text()
    );
    out
}

/// Runs ftplib through the gateway in `mode` ("passive" or "active") with
/// `actions` (`retr|remote|local`, `stor|local|remote`, `list`).
fn ftplib(
    bin: Bin,
    gateway: SocketAddr,
    server: &FtpServer,
    mode: &str,
    actions: &[String],
) -> ToolOutput {
    let mut cmd = Command::new(python());
    cmd.arg("-c")
        .arg(CLIENT_PY)
        .arg(gateway.ip().to_string())
        .arg(gateway.port().to_string())
        .arg(gateway_user(server))
        .arg("secret")
        .arg(mode)
        .args(actions);
    run_ok(bin, cmd, &format!("ftplib ({mode})"))
}

/// `curl -q -sS --max-time 90 ARGS… ftp://alice%40127.0.0.1%3APORT:secret@GATEWAY/PATH`
/// (the user name holds `@` and `:`, so it goes in the URL, escaped).
fn curl(
    bin: Bin,
    gateway: SocketAddr,
    server: &FtpServer,
    args: &[&str],
    path: &str,
) -> ToolOutput {
    let user = gateway_user(server).replace('@', "%40").replace(':', "%3A");
    let mut cmd = curl_command(90);
    // -v: a failure shows the commands and replies that led to it.
    cmd.arg("-v")
        .args(args)
        .arg(format!("ftp://{user}:secret@{gateway}/{path}"));
    run_ok(bin, cmd, &format!("curl {args:?}"))
}

/// A hand-driven control connection.
struct Ctl {
    s: TcpStream,
    buf: Vec<u8>,
    bin: Bin,
}

impl Ctl {
    fn open(bin: Bin, gateway: SocketAddr) -> Ctl {
        let s = connect(gateway).unwrap_or_else(|e| panic!("{bin}: connect to the gateway: {e}"));
        Ctl {
            s,
            buf: Vec::new(),
            bin,
        }
    }

    fn local(&self) -> SocketAddr {
        self.s.local_addr().expect("local_addr")
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: reading a reply: {e}", self.bin),
            }
        }
    }

    /// One complete reply, all its lines, CRLFs kept.
    fn reply(&mut self) -> String {
        let first = self
            .line()
            .unwrap_or_else(|| panic!("{}: the gateway closed instead of replying", self.bin));
        let mut all = first.clone();
        if first.len() >= 4 && first.as_bytes()[3] == b'-' {
            let end = format!("{} ", &first[..3]);
            loop {
                let l = self.line().unwrap_or_else(|| {
                    panic!("{}: closed inside a multi-line reply: {all:?}", self.bin)
                });
                all.push_str(&l);
                if l.starts_with(&end) {
                    break;
                }
            }
        }
        all
    }

    fn send(&mut self, line: &str) {
        self.s
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{}: sending {line:?}: {e}", self.bin));
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.reply()
    }

    /// Sends `line`; the reply must be `want`.
    fn expect(&mut self, line: &str, want: &str, what: &str) {
        assert_eq!(self.cmd(line), want, "{}: {what}", self.bin);
    }

    /// Sends `line`; the reply must start with `code`; returns it.
    fn expect_code(&mut self, line: &str, code: &str, what: &str) -> String {
        let r = self.cmd(line);
        assert!(r.starts_with(code), "{}: {what}: {r:?}", self.bin);
        r
    }

    /// The connection is closed (EOF or reset) within [`PROMPTLY`].
    fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "{}: unread bytes {:?}",
            self.bin,
            self.buf
        );
        let got = read_outcome(&mut self.s, PROMPTLY);
        assert!(got.is_closed(), "{}: want the close, got {got:?}", self.bin);
    }

    /// Logs in to `server` through the gateway.
    fn login(bin: Bin, gateway: SocketAddr, server: &FtpServer) -> Ctl {
        let mut c = Ctl::open(bin, gateway);
        assert_eq!(
            c.reply(),
            "220 portico FTP gateway ready\r\n",
            "{bin}: greeting"
        );
        let r = c.cmd(&format!("USER {}", gateway_user(server)));
        assert!(r.starts_with("331 "), "{bin}: reply to USER: {r:?}");
        let r = c.cmd("PASS secret");
        assert!(r.starts_with("230 "), "{bin}: reply to PASS: {r:?}");
        c
    }
}

/// The address of a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` reply.
fn pasv_addr(reply: &str) -> SocketAddr {
    let inner = reply
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("not a 227 reply: {reply:?}"));
    let n: Vec<u8> = inner
        .split(',')
        .map(|x| x.trim().parse().expect("a number in the 227 reply"))
        .collect();
    assert_eq!(n.len(), 6, "{reply:?}");
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(n[0], n[1], n[2], n[3])),
        u16::from(n[4]) * 256 + u16::from(n[5]),
    )
}

// ---------------------------------------------------------------------------
// The cases.

both!(
    ftplib_passive_retr_and_stor,
    ftplib_active_retr_and_stor,
    curl_epsv_retr_and_stor,
    curl_eprt_retr_and_stor,
    list_directory,
    data_port_refuses_another_address,
    port_naming_another_address,
    auth_tls_is_refused,
    user_without_host,
    greeting_and_quit_before_login,
    denied_client,
    unreachable_server,
    over_the_limit,
    transfers_count_in_the_quota,
);

/// A 5 MiB RETR and STOR: the server with `down.bin`, the client's
/// `up.bin`, where the client puts what it gets, and the gateway.
struct Transfer {
    server: FtpServer,
    want_down: u64,
    _dir: TempDir,
    up_path: PathBuf,
    want_up: u64,
    got_path: PathBuf,
    p: Portico,
    gateway: SocketAddr,
}

impl Transfer {
    fn new(bin: Bin) -> Transfer {
        let server = FtpServer::start();
        let want_down = server.put("down.bin");
        let dir = TempDir::new();
        let (up_path, want_up) = client_file(&dir, "up.bin");
        let got_path = dir.path().join("got.bin");
        let (p, gateway) = start_gateway(bin, "", "");
        Transfer {
            server,
            want_down,
            _dir: dir,
            up_path,
            want_up,
            got_path,
            p,
            gateway,
        }
    }

    /// The file the client received is the server's `down.bin`.
    fn check_retr(&self, bin: Bin, what: &str) {
        assert_eq!(
            file_digest(bin, &self.got_path),
            (SIZE, self.want_down),
            "{bin}: {what} RETR: the file received"
        );
    }

    /// The server stored the client's file as `up.bin`.
    fn check_stor(&self, bin: Bin, what: &str) {
        assert_eq!(
            file_digest(bin, &self.server.path("up.bin")),
            (SIZE, self.want_up),
            "{bin}: {what} STOR: the file stored"
        );
    }
}

/// ftplib in `mode`: RETR and STOR of 5 MiB, checksums, and the access log.
fn ftplib_retr_and_stor(bin: Bin, mode: &str) {
    let t = Transfer::new(bin);
    let (server, gateway) = (&t.server, t.gateway);
    let (up_path, got_path) = (&t.up_path, &t.got_path);
    ftplib(
        bin,
        gateway,
        server,
        mode,
        &[
            format!("retr|down.bin|{}", got_path.display()),
            format!("stor|{}|up.bin", up_path.display()),
        ],
    );
    let what = format!("ftplib ({mode})");
    t.check_retr(bin, &what);
    t.check_stor(bin, &what);
    check_log(&t.p, server, mode == "passive");
}

/// The control line (FTP to the server) and the two data lines (FTP-DATA,
/// 5 MiB each, the direction depending on who connected to the data port).
fn check_log(p: &Portico, server: &FtpServer, passive: bool) {
    let bin = p.bin();
    let dest = server.addr.to_string();
    let control = access_lines(p, 1, |a| a.method == "FTP");
    let c = &control[0];
    assert_eq!(c.user, "alice", "{bin}: user in {c:?}");
    assert_eq!(c.target, dest, "{bin}: target in {c:?}");
    assert_eq!(c.destination, dest, "{bin}: destination in {c:?}");
    assert_eq!(c.status, "ok", "{bin}: status in {c:?}");
    let data = access_lines(p, 2, |a| a.method == "FTP-DATA");
    let size = SIZE as u64;
    for d in &data {
        assert_eq!(d.user, "alice", "{bin}: user in {d:?}");
        assert_eq!(d.target, d.destination, "{bin}: {d:?}");
        let to: SocketAddr = d.destination.parse().expect("destination address");
        assert_eq!(to.ip(), server.addr.ip(), "{bin}: {d:?}");
    }
    // Passive: the data session's client is the FTP client, so RETR is
    // down; active: it is the server, so RETR is up.
    let (retr, stor) = if passive {
        ((0, size), (size, 0))
    } else {
        ((size, 0), (0, size))
    };
    for (what, (up, down)) in [("RETR", retr), ("STOR", stor)] {
        assert!(
            data.iter().any(|d| d.up == up && d.down == down),
            "{bin}: no FTP-DATA line with up={up} down={down} for the {what}: {data:?}"
        );
    }
}

fn ftplib_passive_retr_and_stor(bin: Bin) {
    ftplib_retr_and_stor(bin, "passive");
}

fn ftplib_active_retr_and_stor(bin: Bin) {
    ftplib_retr_and_stor(bin, "active");
}

/// curl with `args` selecting the mode: RETR and STOR of 5 MiB.
fn curl_retr_and_stor(bin: Bin, args: &[&str], passive: bool) {
    let t = Transfer::new(bin);
    let (server, gateway, p) = (&t.server, t.gateway, &t.p);
    let what = format!("curl {args:?}");
    let got = t.got_path.to_string_lossy().into_owned();
    let mut a = args.to_vec();
    a.extend(["-o", &got]);
    curl(bin, gateway, server, &a, "down.bin");
    t.check_retr(bin, &what);
    let up = t.up_path.to_string_lossy().into_owned();
    let mut a = args.to_vec();
    a.extend(["-T", &up]);
    curl(bin, gateway, server, &a, "up.bin");
    t.check_stor(bin, &what);
    // Two control connections, one per run.
    let control = access_lines(p, 2, |a| a.method == "FTP");
    for c in &control {
        assert_eq!(c.destination, server.addr.to_string(), "{bin}: {c:?}");
        assert_eq!(c.status, "ok", "{bin}: {c:?}");
    }
    let data = access_lines(p, 2, |a| a.method == "FTP-DATA");
    let size = SIZE as u64;
    let carried = |d: &AccessLine| {
        if passive {
            (d.up, d.down)
        } else {
            (d.down, d.up)
        }
    };
    assert!(
        data.iter().any(|d| carried(d) == (0, size)),
        "{bin}: no FTP-DATA line for the RETR: {data:?}"
    );
    assert!(
        data.iter().any(|d| carried(d) == (size, 0)),
        "{bin}: no FTP-DATA line for the STOR: {data:?}"
    );
}

fn curl_epsv_retr_and_stor(bin: Bin) {
    curl_retr_and_stor(bin, &["--ftp-pasv"], true);
}

fn curl_eprt_retr_and_stor(bin: Bin) {
    curl_retr_and_stor(bin, &["-P", "-"], false);
}

/// LIST through ftplib (PASV) and curl (EPRT): the listing names the files.
fn list_directory(bin: Bin) {
    let server = FtpServer::start();
    std::fs::write(server.path("alpha.txt"), b"a").expect("write");
    std::fs::write(server.path("beta.txt"), b"b").expect("write");
    let (_p, gateway) = start_gateway(bin, "", "");
    let out = ftplib(bin, gateway, &server, "passive", &["list".to_string()]);
    for name in ["alpha.txt", "beta.txt"] {
        assert!(
            out.stdout_text()
                .lines()
                .any(|l| l.starts_with("LIST:") && l.ends_with(name)),
            "{bin}: ftplib LIST does not name {name}: {}",
            out.text()
        );
    }
    let out = curl(bin, gateway, &server, &["-P", "-"], "");
    for name in ["alpha.txt", "beta.txt"] {
        assert!(
            out.stdout_text().lines().any(|l| l.ends_with(name)),
            "{bin}: curl LIST does not name {name}: {}",
            out.text()
        );
    }
}

/// A client-address quota counts the data connections' bytes as well as
/// the control connection's: after a 5 MiB RETR, `/quotas` shows more
/// than 5 MiB for 127.0.0.1.
fn transfers_count_in_the_quota(bin: Bin) {
    let server = FtpServer::start();
    let want_down = server.put("down.bin");
    let dir = TempDir::new();
    let got = dir.path().join("got.bin");
    let (_p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n[[quota]]\nname = \"lan\"\nclients = [\"127.0.0.0/8\"]\nbytes = \"1GiB\"\n\
             per = \"day\"\n{}{}",
            config_head("", ""),
            service("ftp", "ftp", ports[0], ""),
            service("status", "status", ports[1], ""),
        )
    });
    ftplib(
        bin,
        local(ports[0]),
        &server,
        "passive",
        &[format!("retr|down.bin|{}", got.display())],
    );
    assert_eq!(file_digest(bin, &got), (SIZE, want_down), "{bin}: RETR");
    let body = |r: &str| -> Option<u64> {
        let (_, rest) = r.split_once("\"used_bytes\":")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let used = portico_tests::poll_until(PROMPTLY, Duration::from_millis(50), || {
        let r = portico_tests::reply::exchange(
            local(ports[1]),
            "GET /quotas HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
        body(&r.body).filter(|&n| n > SIZE as u64)
    });
    assert!(
        used.is_some(),
        "{bin}: /quotas does not count the 5 MiB transfer"
    );
}

/// A connection to the announced data port from another address (127.0.0.2)
/// is refused; the client's own connection then carries the transfer.
fn data_port_refuses_another_address(bin: Bin) {
    let server = FtpServer::start();
    let want = server.put("down.bin");
    let (p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::login(bin, gateway, &server);
    c.expect_code("TYPE I", "200", "TYPE I");
    let r = c.cmd("PASV");
    assert!(r.starts_with("227 "), "{bin}: PASV: {r:?}");
    let data_addr = pasv_addr(&r);
    assert_eq!(
        data_addr.ip(),
        gateway.ip(),
        "{bin}: the data port is the gateway's: {r:?}"
    );
    // A stranger first: accepted by the kernel, then closed by the gateway.
    let mut stranger = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), data_addr)
        .unwrap_or_else(|e| panic!("{bin}: connect from 127.0.0.2: {e}"));
    let got = read_outcome(&mut stranger, PROMPTLY);
    assert!(
        got.is_closed(),
        "{bin}: a data connection from 127.0.0.2 must be refused, got {got:?}"
    );
    // The client itself still gets the transfer.
    let mut data = connect(data_addr).unwrap_or_else(|e| panic!("{bin}: data connect: {e}"));
    let data_local = data.local_addr().expect("local_addr");
    c.send("RETR down.bin");
    let r = c.reply();
    assert!(
        r.starts_with("150") || r.starts_with("125"),
        "{bin}: RETR: {r:?}"
    );
    let (n, d) = recv_all(&mut data).unwrap_or_else(|e| panic!("{bin}: reading the data: {e}"));
    assert_eq!((n, d), (SIZE as u64, want), "{bin}: the file received");
    drop(data);
    let r = c.reply();
    assert!(r.starts_with("226"), "{bin}: end of the transfer: {r:?}");
    c.expect_code("QUIT", "221", "QUIT");
    // The transfer went through the gateway's data port, and only the
    // client's connection was carried.
    let data = access_lines(&p, 1, |a| a.method == "FTP-DATA");
    assert_eq!(data.len(), 1, "{bin}: {data:?}");
    assert_eq!(data[0].client, data_local, "{bin}: {:?}", data[0]);
    assert_eq!(data[0].down, SIZE as u64, "{bin}: {:?}", data[0]);
}

/// PORT and EPRT naming an address other than the client's are refused by
/// the gateway (FTP bounce); the session goes on.
fn port_naming_another_address(bin: Bin) {
    let server = FtpServer::start();
    let (_p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::login(bin, gateway, &server);
    c.expect(
        "PORT 127,0,0,2,4,1",
        "500 illegal PORT command\r\n",
        "PORT to 127.0.0.2",
    );
    c.expect(
        "EPRT |1|127.0.0.2|1025|",
        "500 illegal EPRT command\r\n",
        "EPRT to 127.0.0.2",
    );
    let r = c.cmd("NOOP");
    assert!(r.starts_with("200"), "{bin}: the session goes on: {r:?}");
    // The client's own address is fine; the server gets the gateway's.
    let me = c.local().ip().to_string().replace('.', ",");
    let r = c.cmd(&format!("PORT {me},4,1"));
    assert!(
        r.starts_with("200"),
        "{bin}: PORT to the client itself: {r:?}"
    );
    c.expect_code("QUIT", "221", "QUIT");
}

fn auth_tls_is_refused(bin: Bin) {
    let server = FtpServer::start();
    let (_p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::open(bin, gateway);
    c.reply();
    c.expect(
        "AUTH TLS",
        "534 TLS is not supported through this gateway\r\n",
        "AUTH before login",
    );
    let mut c = Ctl::login(bin, gateway, &server);
    c.expect(
        "AUTH TLS",
        "534 TLS is not supported through this gateway\r\n",
        "AUTH after login",
    );
    c.expect_code("PWD", "257", "the session goes on");
    c.expect_code("QUIT", "221", "QUIT");
}

fn user_without_host(bin: Bin) {
    let (_p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::open(bin, gateway);
    c.reply();
    c.expect(
        "USER alice",
        "530 please log in with USER name@host\r\n",
        "USER without @host",
    );
    c.expect_code("USER alice@", "501 ", "empty host");
    c.expect_code("USER alice@127.0.0.1:99999", "501 ", "bad port");
    c.expect("QUIT", "221 bye\r\n", "QUIT");
    c.assert_closed();
}

fn greeting_and_quit_before_login(bin: Bin) {
    let (p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::open(bin, gateway);
    let me = c.local();
    assert_eq!(
        c.reply(),
        "220 portico FTP gateway ready\r\n",
        "{bin}: greeting"
    );
    c.expect_code("NOOP", "200 ", "NOOP");
    for cmd in ["FEAT", "SYST", "PASS secret", "LIST"] {
        c.expect(
            cmd,
            "530 please log in with USER name@host\r\n",
            &format!("{cmd} before login"),
        );
    }
    // Pipelined and split commands are all answered, in order.
    c.s.write_all(b"NO").expect("write");
    c.s.write_all(b"OP\r\nFEAT\r\nQU").expect("write");
    assert!(c.reply().starts_with("200 "), "{bin}: split NOOP");
    assert!(c.reply().starts_with("530 "), "{bin}: pipelined FEAT");
    c.s.write_all(b"IT\r\n").expect("write");
    assert_eq!(c.reply(), "221 bye\r\n", "{bin}: QUIT");
    c.assert_closed();
    let l = access_lines(&p, 1, |a| a.client == me);
    assert_eq!(l[0].method, "FTP", "{bin}: {:?}", l[0]);
    assert_eq!(l[0].status, "quit", "{bin}: {:?}", l[0]);
}

fn denied_client(bin: Bin) {
    let (p, gateway) = start_gateway(
        bin,
        "",
        "[[rule]]\naction = \"deny\"\nclients = [\"127.0.0.1/32\"]\n",
    );
    let mut c = Ctl::open(bin, gateway);
    let me = c.local();
    assert_eq!(
        c.reply(),
        "530 access denied\r\n",
        "{bin}: denied at accept"
    );
    c.assert_closed();
    let l = access_lines(&p, 1, |a| a.client == me);
    assert_eq!(l[0].status, "denied", "{bin}: {:?}", l[0]);
}

fn unreachable_server(bin: Bin) {
    let (p, gateway) = start_gateway(bin, "", "");
    let dead = local(free_port());
    let mut c = Ctl::open(bin, gateway);
    let me = c.local();
    c.reply();
    c.expect(
        &format!("USER alice@{dead}"),
        &format!("421 cannot reach ftp server {dead}\r\n"),
        &format!("nothing listens at {dead}"),
    );
    c.assert_closed();
    let l = access_lines(&p, 1, |a| a.client == me);
    assert_eq!(l[0].status, "refused", "{bin}: {:?}", l[0]);
    assert_eq!(l[0].user, "alice", "{bin}: {:?}", l[0]);
    assert_eq!(l[0].target, dead.to_string(), "{bin}: {:?}", l[0]);
}

fn over_the_limit(bin: Bin) {
    let (_p, gateway) = start_gateway(bin, "max_connections = 1", "");
    let mut first = Ctl::open(bin, gateway);
    assert_eq!(
        first.reply(),
        "220 portico FTP gateway ready\r\n",
        "{bin}: first"
    );
    let mut second = Ctl::open(bin, gateway);
    assert_eq!(
        second.reply(),
        "421 too many connections, try again later\r\n",
        "{bin}: second connection over max_connections = 1"
    );
    second.assert_closed();
    first.expect("QUIT", "221 bye\r\n", "the first goes on");
}
