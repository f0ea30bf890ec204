//! The FTP gateway (`kind = "ftp"`) end to end through both binaries:
//! pyftpdlib as the server; Python's ftplib, curl and a raw client as the
//! clients. 5 MiB RETR and STOR with checksums in passive (PASV, EPSV) and
//! active (PORT, EPRT) mode, LIST, a data port that refuses a stranger, a
//! PORT naming another address, the words before login and the refusals.
//!
//! Tools the cases need beyond the harness: `python3` (Debian package
//! python3) with the PyPI package `pyftpdlib`, and `curl` (package curl). A
//! case whose tool is missing fails and names the package.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use portico_tests::logline::{parse_text_line, AccessLine};
use portico_tests::{
    both, connect, connect_from, digest, free_port, local, pattern, poll_until, read_outcome,
    recv_all, Bin, Portico, TempDir, CLIENT_SEED, SERVER_SEED,
};

/// The size of the transfers.
const SIZE: usize = 5 * 1024 * 1024;
/// How long to wait for something that should happen "at once".
const PROMPTLY: Duration = Duration::from_secs(10);
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

fn ftp_config(port: u16, limits: &str, extra: &str) -> String {
    format!(
        r#"[network]
internal = ["127.0.0.1"]

[limits]
{limits}

[log]
access = "stderr"

[[service]]
name = "ftp"
kind = "ftp"
listen = ["127.0.0.1:{port}"]

{extra}
"#
    )
}

fn start_gateway(bin: Bin, limits: &str, extra: &str) -> (Portico, SocketAddr) {
    let port = free_port();
    let p = Portico::start(bin, &ftp_config(port, limits, extra));
    (p, local(port))
}

/// Access-log lines of the ftp service that satisfy `pred`, waiting until
/// there are `n` of them (at most [`PROMPTLY`]).
fn access_lines(p: &Portico, n: usize, pred: impl Fn(&AccessLine) -> bool) -> Vec<AccessLine> {
    let matching = |lines: &[String]| -> Vec<AccessLine> {
        lines
            .iter()
            .filter_map(|l| parse_text_line(l).ok())
            .filter(|a| a.service == "ftp" && pred(a))
            .collect()
    };
    // The log lines come when connections end: poll the collected stderr.
    let found = poll_until(PROMPTLY, Duration::from_millis(20), || {
        let found = matching(&p.stderr_lines());
        (found.len() >= n).then_some(found)
    })
    .unwrap_or_else(|| matching(&p.stderr_lines()));
    assert!(
        found.len() >= n,
        "{}: want {n} matching access-log lines, found {}: {found:?}\nstderr:\n{}",
        p.bin(),
        found.len(),
        p.stderr_text()
    );
    found
}

// ---------------------------------------------------------------------------
// External tools.

/// The path of `tool`; fails the test, naming the package, if it is not
/// installed.
fn require(tool: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/bin", "/usr/bin"] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        let p = d.join(tool);
        if let Ok(m) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "`{tool}` is not installed: this test needs the Debian package `{package}` \
         (apt-get install -y {package}; .ci/run must install it)"
    );
}

/// python3 with pyftpdlib importable; fails the test naming what is missing.
fn python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        let py = require("python3", "python3");
        let out = Command::new(&py)
            .args(["-c", "import pyftpdlib"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
        if !out.status.success() {
            return Err(format!(
                "the Python package `pyftpdlib` is not installed: this test needs the PyPI \
                 package `pyftpdlib` (pip install pyftpdlib; .ci/run must install it): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(py)
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

struct ToolOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl ToolOutput {
    fn text(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with no stdin, waiting at most `limit` (then it is killed and
/// the test fails). Proxy variables of the environment are removed.
fn run_tool(bin: Bin, mut cmd: Command, limit: Duration) -> ToolOutput {
    for v in [
        "ftp_proxy",
        "FTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: cannot run {described}: {e}"));
    let out_t = reader(child.stdout.take());
    let err_t = reader(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_t.join().unwrap_or_default();
                panic!(
                    "{bin}: {described} still running after {limit:?}; killed\nstderr:\n{stderr}"
                );
            }
            Err(e) => panic!("{bin}: waiting for {described}: {e}"),
        }
    };
    ToolOutput {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut v);
        }
        String::from_utf8_lossy(&v).into_owned()
    })
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
    stderr: Option<thread::JoinHandle<String>>,
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
            let stdout = child.stdout.take().expect("stdout pipe");
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let _ = tx.send(line);
                // Keep reading so that the server never blocks on a full pipe.
                let mut rest = Vec::new();
                let _ = r.read_to_end(&mut rest);
            });
            let stderr = reader(child.stderr.take());
            match rx.recv_timeout(SERVER_START) {
                Ok(l) if l.trim() == "ready" => {
                    return FtpServer {
                        child,
                        addr: local(port),
                        home,
                        stderr: Some(stderr),
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = stderr.join().unwrap_or_default();
                }
            }
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
            if let Some(t) = self.stderr.take() {
                eprintln!(
                    "---- pyftpdlib stderr ----\n{}",
                    t.join().unwrap_or_default()
                );
            }
        }
    }
}

fn file_digest(path: &Path) -> (usize, u64) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (data.len(), digest(&data))
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
    let out = run_tool(bin, cmd, TOOL_LIMIT);
    assert!(
        out.status.success(),
        "{bin}: ftplib ({mode}) through the gateway failed: {}",
        out.text()
    );
    out
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
    let url = format!("ftp://{user}:secret@{gateway}/{path}");
    let mut cmd = Command::new(require("curl", "curl"));
    cmd.args(["-q", "-sS", "--max-time", "90"])
        .args(args)
        .arg(url);
    let out = run_tool(bin, cmd, TOOL_LIMIT);
    assert!(
        out.status.success(),
        "{bin}: curl {args:?} through the gateway failed: {}",
        out.text()
    );
    out
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
);

/// ftplib in `mode`: RETR and STOR of 5 MiB, checksums, and the access log.
fn ftplib_retr_and_stor(bin: Bin, mode: &str) {
    let server = FtpServer::start();
    let want_down = server.put("down.bin");
    let dir = TempDir::new();
    let (up_path, want_up) = client_file(&dir, "up.bin");
    let got_path = dir.path().join("got.bin");
    let (p, gateway) = start_gateway(bin, "", "");
    ftplib(
        bin,
        gateway,
        &server,
        mode,
        &[
            format!("retr|down.bin|{}", got_path.display()),
            format!("stor|{}|up.bin", up_path.display()),
        ],
    );
    assert_eq!(
        file_digest(&got_path),
        (SIZE, want_down),
        "{bin}: RETR ({mode}): the file received"
    );
    assert_eq!(
        file_digest(&server.path("up.bin")),
        (SIZE, want_up),
        "{bin}: STOR ({mode}): the file stored"
    );
    check_log(&p, &server, mode == "passive");
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
    let server = FtpServer::start();
    let want_down = server.put("down.bin");
    let dir = TempDir::new();
    let (up_path, want_up) = client_file(&dir, "up.bin");
    let got_path = dir.path().join("got.bin");
    let (p, gateway) = start_gateway(bin, "", "");
    let got = got_path.to_string_lossy().into_owned();
    let mut a = args.to_vec();
    a.extend(["-o", &got]);
    curl(bin, gateway, &server, &a, "down.bin");
    assert_eq!(
        file_digest(&got_path),
        (SIZE, want_down),
        "{bin}: curl {args:?} RETR: the file received"
    );
    let up = up_path.to_string_lossy().into_owned();
    let mut a = args.to_vec();
    a.extend(["-T", &up]);
    curl(bin, gateway, &server, &a, "up.bin");
    assert_eq!(
        file_digest(&server.path("up.bin")),
        (SIZE, want_up),
        "{bin}: curl {args:?} STOR: the file stored"
    );
    // Two control connections, one per run.
    let control = access_lines(&p, 2, |a| a.method == "FTP");
    for c in &control {
        assert_eq!(c.destination, server.addr.to_string(), "{bin}: {c:?}");
        assert_eq!(c.status, "ok", "{bin}: {c:?}");
    }
    let data = access_lines(&p, 2, |a| a.method == "FTP-DATA");
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
            out.stdout
                .lines()
                .any(|l| l.starts_with("LIST:") && l.ends_with(name)),
            "{bin}: ftplib LIST does not name {name}: {}",
            out.text()
        );
    }
    let out = curl(bin, gateway, &server, &["-P", "-"], "");
    for name in ["alpha.txt", "beta.txt"] {
        assert!(
            out.stdout.lines().any(|l| l.ends_with(name)),
            "{bin}: curl LIST does not name {name}: {}",
            out.text()
        );
    }
}

/// A connection to the announced data port from another address (127.0.0.2)
/// is refused; the client's own connection then carries the transfer.
fn data_port_refuses_another_address(bin: Bin) {
    let server = FtpServer::start();
    let want = server.put("down.bin");
    let (p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::login(bin, gateway, &server);
    assert!(c.cmd("TYPE I").starts_with("200"), "{bin}: TYPE I");
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
    assert!(c.cmd("QUIT").starts_with("221"), "{bin}: QUIT");
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
    assert_eq!(
        c.cmd("PORT 127,0,0,2,4,1"),
        "500 illegal PORT command\r\n",
        "{bin}: PORT to 127.0.0.2"
    );
    assert_eq!(
        c.cmd("EPRT |1|127.0.0.2|1025|"),
        "500 illegal EPRT command\r\n",
        "{bin}: EPRT to 127.0.0.2"
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
    assert!(c.cmd("QUIT").starts_with("221"), "{bin}: QUIT");
}

fn auth_tls_is_refused(bin: Bin) {
    let server = FtpServer::start();
    let (_p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::open(bin, gateway);
    c.reply();
    assert_eq!(
        c.cmd("AUTH TLS"),
        "534 TLS is not supported through this gateway\r\n",
        "{bin}: AUTH before login"
    );
    let mut c = Ctl::login(bin, gateway, &server);
    assert_eq!(
        c.cmd("AUTH TLS"),
        "534 TLS is not supported through this gateway\r\n",
        "{bin}: AUTH after login"
    );
    assert!(
        c.cmd("PWD").starts_with("257"),
        "{bin}: the session goes on"
    );
    assert!(c.cmd("QUIT").starts_with("221"), "{bin}: QUIT");
}

fn user_without_host(bin: Bin) {
    let (_p, gateway) = start_gateway(bin, "", "");
    let mut c = Ctl::open(bin, gateway);
    c.reply();
    assert_eq!(
        c.cmd("USER alice"),
        "530 please log in with USER name@host\r\n",
        "{bin}: USER without @host"
    );
    assert!(
        c.cmd("USER alice@").starts_with("501 "),
        "{bin}: empty host"
    );
    assert!(
        c.cmd("USER alice@127.0.0.1:99999").starts_with("501 "),
        "{bin}: bad port"
    );
    assert_eq!(c.cmd("QUIT"), "221 bye\r\n", "{bin}: QUIT");
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
    assert!(c.cmd("NOOP").starts_with("200 "), "{bin}: NOOP");
    for cmd in ["FEAT", "SYST", "PASS secret", "LIST"] {
        assert_eq!(
            c.cmd(cmd),
            "530 please log in with USER name@host\r\n",
            "{bin}: {cmd} before login"
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
    assert_eq!(
        c.cmd(&format!("USER alice@{dead}")),
        format!("421 cannot reach ftp server {dead}\r\n"),
        "{bin}: nothing listens at {dead}"
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
    assert_eq!(first.cmd("QUIT"), "221 bye\r\n", "{bin}: the first goes on");
}
