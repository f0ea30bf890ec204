//! Connecting out, end to end through both binaries: a name with several
//! addresses is raced (Happy Eyeballs), so a first address that never
//! answers costs `connect_attempt_delay`, not `connect_timeout`, the
//! families are interleaved (IPv6 first), and `connect_timeout` bounds the
//! whole race; and the
//! source address of connections out is the most specific `outgoing`
//! (a rule's, then the service's, then `[network]`'s).
//!
//! The name `multi.test` resolves through a private `/etc/hosts`: each
//! proxy runs in a mount namespace of its own with a file mounted over it
//! (`StartOptions::hosts`; the machine's file is untouched). Its first
//! address (in the order the system resolver gives, asked the same way)
//! is a real black hole on loopback: a listener with a backlog of 0 whose
//! queue is full and which never accepts, so that further SYNs are
//! dropped; the test checks that a connect to it really hangs before
//! relying on it.
//!
//! `[network] outgoing6` is checked in a network namespace the test makes
//! (`ip netns add`, entered by the test's thread, removed when it ends):
//! only addresses inside it are used.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use portico_tests::{
    both, config_head, connect, free_port, run_on_config, send_all, service, Behaviour, Bin,
    BlackHole, Portico, StartOptions, TempDir, TestServer,
};

/// Generous: without the race, the request would take all of it and fail.
const CONNECT_TIMEOUT: &str = "20s";
/// Longer than the connect timeout, so that a reply that only comes when
/// the first attempt times out is read (and seen to be a failure).
const REPLY_WAIT: Duration = Duration::from_secs(40);

const NAME: &str = "multi.test";
const HOSTS: &str = "127.0.0.1 localhost\n127.0.0.2 multi.test\n127.0.0.3 multi.test\n";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The addresses of `multi.test` in the order the system resolver gives
/// them under [`HOSTS`] (getaddrinfo sorts them, RFC 6724), asked in a
/// namespace like the proxy's.
fn resolver_order() -> Vec<IpAddr> {
    let dir = TempDir::new();
    let hosts = dir.write("hosts", HOSTS);
    let mut cmd = Command::new("getent");
    cmd.args(["ahostsv4", NAME])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    portico_tests::private_hosts(&mut cmd, &hosts);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("getent (package libc-bin): {e}"));
    assert!(
        out.status.success(),
        "getent ahostsv4 {NAME} with a private /etc/hosts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut order = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(a) = line.split_whitespace().next().and_then(|w| w.parse().ok()) {
            if !order.contains(&a) {
                order.push(a);
            }
        }
    }
    assert_eq!(
        order.len(),
        2,
        "{NAME} must resolve to two addresses: {order:?}"
    );
    order
}

/// An echo server on `addr` (one connection at a time is enough here);
/// each connection's peer address goes to the receiver.
fn echo_server(addr: SocketAddr) -> mpsc::Receiver<SocketAddr> {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("echo server: bind {addr}: {e}"));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            if let Ok(peer) = s.peer_addr() {
                let _ = tx.send(peer);
            }
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

/// A port free on both addresses of [`HOSTS`].
fn port_free_on_both() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if [2, 3]
            .iter()
            .all(|&n| TcpListener::bind(SocketAddr::new(ip(n), p)).is_ok())
        {
            return p;
        }
    }
    panic!("no port free on 127.0.0.2 and 127.0.0.3");
}

/// The black hole on the resolver's first address of `multi.test`, an
/// echo server on its second, both on one port: (port, server's address,
/// its peers, the black hole).
fn race_setup() -> (u16, SocketAddr, mpsc::Receiver<SocketAddr>, BlackHole) {
    let order = resolver_order();
    let port = port_free_on_both();
    let hole = BlackHole::open(SocketAddr::new(order[0], port));
    let server = SocketAddr::new(order[1], port);
    let peers = echo_server(server);
    (port, server, peers, hole)
}

fn start(bin: Bin, config: &str) -> Portico {
    Portico::start_with(
        bin,
        config,
        StartOptions {
            hosts: Some(HOSTS),
            ..StartOptions::default()
        },
    )
}

fn read_exact(bin: Bin, s: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{bin}: {what}: reading {n} bytes: {e}"));
    buf
}

fn echo_through(bin: Bin, s: &mut TcpStream, what: &str) {
    send_all(bin, s, b"ping through the race", what);
    let back = read_exact(bin, s, 21, what);
    assert_eq!(back, b"ping through the race", "{bin}: {what}: echo");
}

/// SOCKS5 CONNECT to `multi.test`: the first address is a black hole, the
/// second answers; the request succeeds long before `connect_timeout`
/// (which a sequential try would have spent on the first).
fn socks_name_with_a_black_holed_first_address(bin: Bin) {
    let (port, server, peers, _hole) = race_setup();
    let proxy_port = free_port();
    let config = format!(
        "{}{}",
        config_head(&format!("connect_timeout = \"{CONNECT_TIMEOUT}\""), ""),
        service("socks", "socks", proxy_port, "")
    );
    let p = start(bin, &config);
    let mut c = connect(SocketAddr::new(ip(1), proxy_port))
        .unwrap_or_else(|e| panic!("{bin}: connect to the proxy: {e}"));
    c.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    let began = Instant::now();
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, NAME.len() as u8];
    req.extend_from_slice(NAME.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    send_all(bin, &mut c, &req, "SOCKS5 CONNECT multi.test");
    assert_eq!(read_exact(bin, &mut c, 2, "method reply"), [5, 0]);
    let reply = read_exact(bin, &mut c, 10, "CONNECT reply");
    let took = began.elapsed();
    assert_eq!(
        reply[1],
        0,
        "{bin}: CONNECT {NAME}:{port} must succeed through the second address \
         (after {took:?}), reply {reply:?}\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(
        took < Duration::from_secs(20),
        "{bin}: connected only after {took:?}: the black hole held it up"
    );
    echo_through(bin, &mut c, "SOCKS5 tunnel");
    let peer = peers.recv_timeout(Duration::from_secs(5));
    assert!(
        peer.is_ok(),
        "{bin}: the server at {server} saw no connection"
    );
    let me = c.local_addr().expect("local_addr");
    drop(c);
    // The access log names the address that won.
    let line = p.access_of("socks", me, Duration::from_secs(10));
    assert_eq!(
        line.destination,
        server.to_string(),
        "{bin}: the access line's destination: {line:?}"
    );
}

/// SOCKS5 CONNECT to `multi.test` whose first address refuses (nothing
/// listens there): the second is tried at once, and the tunnel works.
fn socks_name_with_a_refusing_first_address(bin: Bin) {
    let order = resolver_order();
    let port = port_free_on_both();
    let server = SocketAddr::new(order[1], port);
    let peers = echo_server(server);
    let proxy_port = free_port();
    let config = format!(
        "{}{}",
        config_head(&format!("connect_timeout = \"{CONNECT_TIMEOUT}\""), ""),
        service("socks", "socks", proxy_port, "")
    );
    let p = start(bin, &config);
    let mut c = connect(SocketAddr::new(ip(1), proxy_port))
        .unwrap_or_else(|e| panic!("{bin}: connect to the proxy: {e}"));
    c.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, NAME.len() as u8];
    req.extend_from_slice(NAME.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    send_all(bin, &mut c, &req, "SOCKS5 CONNECT multi.test");
    assert_eq!(read_exact(bin, &mut c, 2, "method reply"), [5, 0]);
    let reply = read_exact(bin, &mut c, 10, "CONNECT reply");
    assert_eq!(
        reply[1],
        0,
        "{bin}: CONNECT {NAME}:{port} must succeed through {server}: {reply:?}\nstderr:\n{}",
        p.stderr_text()
    );
    echo_through(bin, &mut c, "SOCKS5 tunnel");
    assert!(
        peers.recv_timeout(Duration::from_secs(5)).is_ok(),
        "{bin}: the server at {server} saw no connection"
    );
}

/// HTTP CONNECT to `multi.test`, as above.
fn http_name_with_a_black_holed_first_address(bin: Bin) {
    let (port, server, peers, _hole) = race_setup();
    let proxy_port = free_port();
    let config = format!(
        "{}{}",
        config_head(&format!("connect_timeout = \"{CONNECT_TIMEOUT}\""), ""),
        service(
            "web",
            "http",
            proxy_port,
            &format!("connect_ports = [{port}]")
        )
    );
    let p = start(bin, &config);
    let mut c = connect(SocketAddr::new(ip(1), proxy_port))
        .unwrap_or_else(|e| panic!("{bin}: connect to the proxy: {e}"));
    c.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    let began = Instant::now();
    let req = format!("CONNECT {NAME}:{port} HTTP/1.1\r\nHost: {NAME}:{port}\r\n\r\n");
    send_all(bin, &mut c, req.as_bytes(), "CONNECT multi.test");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "{bin}: CONNECT reply cut short ({other:?}) after {:?}: {:?}\nstderr:\n{}",
                began.elapsed(),
                String::from_utf8_lossy(&head),
                p.stderr_text()
            ),
        }
    }
    let took = began.elapsed();
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{bin}: CONNECT {NAME}:{port} must succeed through {server} (after {took:?}): {head}"
    );
    assert!(
        took < Duration::from_secs(20),
        "{bin}: connected only after {took:?}: the black hole held it up"
    );
    echo_through(bin, &mut c, "CONNECT tunnel");
    assert!(
        peers.recv_timeout(Duration::from_secs(5)).is_ok(),
        "{bin}: the server at {server} saw no connection"
    );
}

/// The source of a connection out: a matching allow rule's `outgoing`,
/// else its service's, else `[network] outgoing`; the servers see it.
fn outgoing_most_specific_wins(bin: Bin) {
    let a = TestServer::start(Behaviour::Echo);
    let b = TestServer::start(Behaviour::Echo);
    let (s1, s2) = (free_port(), free_port());
    let config = format!(
        r#"[network]
internal = ["127.0.0.1"]
external = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
outgoing = "127.0.0.5"
[log]
access = "stderr"
{}{}
[[rule]]
action = "allow"
services = ["s1"]
ports = [{pa}]
outgoing = "127.0.0.4"
[[rule]]
action = "allow"
"#,
        service("s1", "socks", s1, "outgoing = \"127.0.0.3\""),
        service("s2", "socks", s2, ""),
        pa = a.addr().port(),
    );
    let p = Portico::start(bin, &config);
    let mut seen = Vec::new();
    for (via, server, what) in [
        (s1, &a, "s1 to the rule's port"),
        (s1, &b, "s1 elsewhere"),
        (s2, &b, "s2"),
    ] {
        let mut c = connect(SocketAddr::new(ip(1), via))
            .unwrap_or_else(|e| panic!("{bin}: connect to {what}: {e}"));
        let mut req = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
        req.extend_from_slice(&server.addr().port().to_be_bytes());
        send_all(bin, &mut c, &req, what);
        let reply = read_exact(bin, &mut c, 12, what);
        assert_eq!(
            reply[3],
            0,
            "{bin}: {what}: CONNECT must succeed: {reply:?}\nstderr:\n{}",
            p.stderr_text()
        );
        // BND.ADDR is the source the proxy connected from.
        let bound = Ipv4Addr::new(reply[6], reply[7], reply[8], reply[9]);
        echo_through(bin, &mut c, what);
        drop(c);
        let peer = server.report_ok(bin).peer;
        assert_eq!(peer.ip(), IpAddr::V4(bound), "{bin}: {what}: BND.ADDR");
        seen.push(peer.ip());
    }
    assert_eq!(
        seen,
        [ip(4), ip(3), ip(5)],
        "{bin}: sources seen by the servers: the rule's, the service's, [network]'s"
    );
}

/// A pyftpdlib server on 127.0.0.1:PORT (args: port, home) with the user
/// alice (`secret`). It refuses a data connection from another address
/// than the control connection's, as servers commonly do.
const FTP_SERVER_PY: &str = r#"
import sys, time
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
auth = DummyAuthorizer()
auth.add_user("alice", "secret", sys.argv[2], perm="elr")
class Handler(FTPHandler):
    permit_foreign_addresses = False
Handler.authorizer = auth
server = FTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    server.serve_forever(timeout=0.5, blocking=False)
"#;

/// ftplib through the gateway (args: gateway port, user): a passive RETR
/// of `file.txt`, printed. From 127.0.0.2, so that the gateway tells the
/// client (LAN) from the server (outside) by address.
const FTP_CLIENT_PY: &str = r#"
import ftplib, sys
f = ftplib.FTP(timeout=30, source_address=("127.0.0.2", 0))
f.connect("127.0.0.1", int(sys.argv[1]))
f.login(sys.argv[2], "secret")
f.set_pasv(True)
got = []
f.retrbinary("RETR file.txt", got.append)
sys.stdout.write("GOT:" + b"".join(got).decode())
f.quit()
"#;

/// An FTP transfer through the gateway whose control connection leaves
/// from a rule's `outgoing`: its data connection leaves from the same
/// address (not the service's), so a server that checks succeeds.
fn ftp_data_leaves_from_the_control_connections_address(bin: Bin) {
    let py = portico_tests::require_python_module(
        "pyftpdlib",
        "the PyPI package `pyftpdlib` (pip install pyftpdlib)",
    );
    let home = TempDir::new();
    home.write("file.txt", "the data connection went through");
    let ftp_port = free_port();
    let mut server = Command::new(&py)
        .arg("-c")
        .arg(FTP_SERVER_PY)
        .arg(ftp_port.to_string())
        .arg(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start pyftpdlib: {e}"));
    let out = portico_tests::LineLog::start(server.stdout.take());
    let err = portico_tests::LineLog::start(server.stderr.take());
    let ready = out.wait_for(|l| l.trim() == "ready", Duration::from_secs(20));
    let gw = free_port();
    let config = format!(
        r#"[network]
internal = ["127.0.0.1"]
external = ["127.0.0.3", "127.0.0.4"]
[log]
access = "stderr"
{}
[[rule]]
action = "allow"
ports = [{ftp_port}]
outgoing = "127.0.0.4"
[[rule]]
action = "allow"
"#,
        service("ftp", "ftp", gw, "outgoing = \"127.0.0.3\"")
    );
    let p = Portico::start(bin, &config);
    let mut cmd = Command::new(&py);
    cmd.arg("-c")
        .arg(FTP_CLIENT_PY)
        .arg(gw.to_string())
        .arg(format!("alice@127.0.0.1:{ftp_port}"));
    portico_tests::without_proxy_env(&mut cmd);
    let client = portico_tests::run_tool(bin, cmd, None, Duration::from_secs(60));
    let _ = server.kill();
    let _ = server.wait();
    assert!(ready.is_some(), "pyftpdlib did not start: {}", err.text());
    assert!(
        client.status.success()
            && client
                .stdout_text()
                .contains("GOT:the data connection went through"),
        "{bin}: passive RETR through the gateway: {}\npyftpdlib: {}\nportico: {}",
        client.text(),
        err.text(),
        p.stderr_text()
    );
}

/// An `outgoing` that is not one of `network.external` is refused at
/// start, saying where and what to do.
fn outgoing_must_be_external(bin: Bin) {
    let config = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.3\"]\n{}\
         [[rule]]\naction = \"allow\"\noutgoing = \"127.0.0.9\"\n",
        service("s", "socks", free_port(), "")
    );
    let (path, out) = run_on_config(bin, &config, &["--check"], Duration::from_secs(30));
    assert_eq!(out.code(), Some(2), "{bin}: exit code: {out:?}");
    assert!(
        out.stderr.contains(&path)
            && out.stderr.contains("127.0.0.9")
            && out.stderr.contains("network.external"),
        "{bin}: the error must name the file, the address and network.external: {}",
        out.stderr
    );
}

/// A network namespace of its own, entered by the calling thread (its
/// sockets and the processes it starts live there); left and removed when
/// dropped, also when the test panics.
struct Netns {
    name: String,
    home: std::fs::File,
}

impl Netns {
    /// Makes the namespace, enters it, brings `lo` up and adds `v6` to it.
    fn enter(v6: &[&str]) -> Netns {
        use std::os::fd::AsRawFd;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "portico-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        // The thread's own namespace, to come back to.
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("this thread's netns");
        let ns = Netns { name, home };
        let there = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("the new netns");
        // SAFETY: setns on this thread with a namespace fd it holds open.
        let rc = unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        for a in v6 {
            ip(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in enter, with the namespace the thread came from.
        unsafe {
            libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `[network] outgoing6`: a SOCKS5 CONNECT to an IPv6 server leaves from
/// it. In a network namespace with fd00::1 and fd00::2 on `lo`; without
/// `outgoing6` the system would pick fd00::1 itself (the destination).
fn outgoing6_is_the_source_toward_ipv6(bin: Bin) {
    let _ns = Netns::enter(&["fd00::1", "fd00::2"]);
    let server = TcpListener::bind("[fd00::1]:0").expect("bind [fd00::1]:0");
    let dest = server.local_addr().expect("its address");
    // Says the address each connection came from.
    thread::spawn(move || {
        for s in server.incoming().flatten() {
            let mut s = s;
            if let Ok(peer) = s.peer_addr() {
                let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes());
            }
        }
    });
    let (p, ports) = portico_tests::start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        format!(
            "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"fd00::2\"]\n\
             outgoing6 = \"fd00::2\"\n[log]\naccess = \"stderr\"\n{}",
            service("socks", "socks", ports[0], "")
        )
    });
    let mut s = connect(portico_tests::local(ports[0])).expect("connect to socks");
    let _ = s.set_read_timeout(Some(REPLY_WAIT));
    let IpAddr::V6(v6) = dest.ip() else {
        unreachable!("bound to an IPv6 address")
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 4];
    req.extend_from_slice(&v6.octets());
    req.extend_from_slice(&dest.port().to_be_bytes());
    s.write_all(&req).expect("SOCKS5 request");
    let mut head = [0u8; 2 + 4];
    s.read_exact(&mut head)
        .expect("SOCKS5 method reply and reply head");
    assert_eq!((head[0], head[1], head[2]), (5, 0, 5), "{bin}: {head:?}");
    assert_eq!(head[3], 0, "{bin}: SOCKS5 reply code {head:?}");
    let rest = match head[5] {
        1 => 4 + 2,
        4 => 16 + 2,
        other => panic!("{bin}: reply address type {other}"),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).expect("the reply's address");
    let mut seen = String::new();
    let _ = s.read_to_string(&mut seen);
    assert_eq!(
        seen, "fd00::2\n",
        "{bin}: the server saw the connection from"
    );
    drop(p);
}

both!(
    ipv6_first_and_families_interleaved,
    connect_timeout_bounds_the_whole_race,
    a_services_outgoing_must_be_external,
    bad_connecting_out_settings_are_refused,
    connect_attempt_delay_spaces_the_attempts,
    outgoing6_is_the_source_toward_ipv6,
    socks_name_with_a_black_holed_first_address,
    socks_name_with_a_refusing_first_address,
    http_name_with_a_black_holed_first_address,
    outgoing_most_specific_wins,
    ftp_data_leaves_from_the_control_connections_address,
    outgoing_must_be_external,
);

/// A SOCKS5 CONNECT to `name`:`port` through the socks service at `proxy`:
/// the reply code, the client's address (for its access line) and the
/// stream.
fn socks5_name(bin: Bin, proxy: SocketAddr, name: &str, port: u16) -> (u8, SocketAddr, TcpStream) {
    let mut c = connect(proxy).unwrap_or_else(|e| panic!("{bin}: connect to the proxy: {e}"));
    c.set_read_timeout(Some(REPLY_WAIT)).expect("read timeout");
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
    req.extend_from_slice(name.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    send_all(bin, &mut c, &req, "SOCKS5 CONNECT");
    assert_eq!(read_exact(bin, &mut c, 2, "method reply"), [5, 0]);
    let reply = read_exact(bin, &mut c, 4, "CONNECT reply");
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        other => panic!("{bin}: reply address type {other}: {reply:?}"),
    };
    read_exact(bin, &mut c, rest, "the reply's address");
    let me = c.local_addr().expect("local_addr");
    (reply[1], me, c)
}

/// In a network namespace with global IPv6 addresses on `lo`, a name with
/// two IPv6 and two IPv4 addresses (the resolver gives IPv6 first): the
/// first IPv6 address wins when it answers; when it black-holes, the next
/// attempt is the first IPv4 address (the families interleaved), not the
/// second IPv6 one.
fn ipv6_first_and_families_interleaved(bin: Bin) {
    let _ns = Netns::enter(&["2001:db8::1", "2001:db8::2"]);
    let hosts = "127.0.0.1 localhost\n2001:db8::1 mix.test\n127.0.0.2 mix.test\n\
                 2001:db8::2 mix.test\n127.0.0.3 mix.test\n";
    let addrs: [IpAddr; 4] = [
        "2001:db8::1".parse().expect("address"),
        "2001:db8::2".parse().expect("address"),
        ip(2),
        ip(3),
    ];
    let (p, ports) = portico_tests::start_on_free_ports(
        bin,
        1,
        StartOptions {
            hosts: Some(hosts),
            ..StartOptions::default()
        },
        |ports| {
            format!(
                "{}{}",
                config_head(&format!("connect_timeout = \"{CONNECT_TIMEOUT}\""), ""),
                service("socks", "socks", ports[0], "")
            )
        },
    );
    let proxy = portico_tests::local(ports[0]);
    // The namespace is new: every port is free in it.
    let (all_up, first_holed) = (free_port(), free_port());
    let _servers: Vec<_> = addrs
        .iter()
        .map(|a| echo_server(SocketAddr::new(*a, all_up)))
        .collect();
    let _hole = BlackHole::open(SocketAddr::new(addrs[0], first_holed));
    let _others: Vec<_> = addrs[1..]
        .iter()
        .map(|a| echo_server(SocketAddr::new(*a, first_holed)))
        .collect();
    for (port, winner, what) in [
        (all_up, addrs[0], "every address answers: IPv6 first"),
        (
            first_holed,
            addrs[2],
            "the first IPv6 address black-holes: IPv4 next",
        ),
    ] {
        let (code, me, mut c) = socks5_name(bin, proxy, "mix.test", port);
        assert_eq!(
            code,
            0,
            "{bin}: {what}: CONNECT mix.test:{port}\nstderr:\n{}",
            p.stderr_text()
        );
        echo_through(bin, &mut c, what);
        drop(c);
        let line = p.access_of("socks", me, Duration::from_secs(10));
        assert_eq!(
            line.destination,
            SocketAddr::new(winner, port).to_string(),
            "{bin}: {what}: the address that won: {line:?}"
        );
    }
}

/// Three addresses of one name that all black-hole: `connect_timeout`
/// bounds the whole race (a sequential try would take it three times),
/// and the client is told `connect-timeout` (SOCKS5 0x06).
fn connect_timeout_bounds_the_whole_race(bin: Bin) {
    let port = free_port();
    let _holes: Vec<BlackHole> = [2, 3, 4]
        .iter()
        .map(|&n| BlackHole::open(SocketAddr::new(ip(n), port)))
        .collect();
    let proxy_port = free_port();
    let config = format!(
        "{}{}",
        config_head("connect_timeout = \"6s\"", ""),
        service("socks", "socks", proxy_port, "")
    );
    let p = Portico::start_with(
        bin,
        &config,
        StartOptions {
            hosts: Some(
                "127.0.0.1 localhost\n127.0.0.2 holes.test\n127.0.0.3 holes.test\n\
                 127.0.0.4 holes.test\n",
            ),
            ..StartOptions::default()
        },
    );
    let began = Instant::now();
    let (code, me, _c) = socks5_name(bin, SocketAddr::new(ip(1), proxy_port), "holes.test", port);
    let took = began.elapsed();
    assert_eq!(code, 0x06, "{bin}: the race timed out: reply {code:#04x}");
    assert!(
        took < Duration::from_secs(12),
        "{bin}: the race took {took:?}: connect_timeout (6s) must bound all of it, not each try"
    );
    let line = p.access_of("socks", me, Duration::from_secs(10));
    assert_eq!(
        line.err.as_deref(),
        Some("connect-timeout"),
        "{bin}: {line:?}"
    );
}

/// A service's `outgoing` must be one of `network.external` too.
fn a_services_outgoing_must_be_external(bin: Bin) {
    let config = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.3\"]\n{}",
        service("s", "socks", free_port(), "outgoing = \"127.0.0.9\"")
    );
    let (path, out) = run_on_config(bin, &config, &["--check"], Duration::from_secs(30));
    assert_eq!(out.code(), Some(2), "{bin}: exit code: {out:?}");
    assert!(
        out.stderr.contains(&path)
            && out.stderr.contains("127.0.0.9")
            && out.stderr.contains("network.external"),
        "{bin}: the error must name the file, the address and network.external: {}",
        out.stderr
    );
}

/// `connect_attempt_delay` and `outgoing6` are checked at start: a bad
/// value is refused (exit 2) at its line, saying what is wrong.
fn bad_connecting_out_settings_are_refused(bin: Bin) {
    let socks = service("s", "socks", free_port(), "");
    let line = "connect_attempt_delay = \"soon\"";
    portico_tests::expect_config_error(
        bin,
        &format!("{}{socks}", config_head(line, "")),
        line,
        &["connect_attempt_delay", "not a duration"],
    );
    for (line, words) in [
        ("outgoing6 = \"127.0.0.3\"", &["outgoing6", "IPv6"][..]),
        (
            "outgoing6 = \"fd00::9\"",
            &["outgoing6", "network.external"],
        ),
    ] {
        portico_tests::expect_config_error(
            bin,
            &format!(
                "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.3\"]\n{line}\n{socks}"
            ),
            line,
            words,
        );
    }
}

/// `connect_attempt_delay` is the wait before the next attempt while the
/// previous one is still pending: set longer than `connect_timeout`, a
/// black-holed first address leaves no time for the second, and the race
/// ends `connect-timeout` (with the default it succeeds, see above).
fn connect_attempt_delay_spaces_the_attempts(bin: Bin) {
    let (port, _server, peers, _hole) = race_setup();
    let proxy_port = free_port();
    let config = format!(
        "{}{}",
        config_head(
            "connect_timeout = \"3s\"\nconnect_attempt_delay = \"1m\"",
            ""
        ),
        service("socks", "socks", proxy_port, "")
    );
    let p = start(bin, &config);
    let (code, me, _c) = socks5_name(bin, SocketAddr::new(ip(1), proxy_port), NAME, port);
    assert_eq!(
        code, 0x06,
        "{bin}: no second attempt within connect_timeout: reply {code:#04x}"
    );
    let line = p.access_of("socks", me, Duration::from_secs(10));
    assert_eq!(
        line.err.as_deref(),
        Some("connect-timeout"),
        "{bin}: {line:?}"
    );
    assert!(
        peers.try_recv().is_err(),
        "{bin}: the second address was never tried"
    );
    // It applies on SIGHUP like the rest: back to the default, the race
    // reaches the second address.
    std::fs::write(
        p.config_path(),
        config.replace("connect_attempt_delay = \"1m\"", ""),
    )
    .expect("rewrite the configuration");
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _, mut c) = socks5_name(bin, SocketAddr::new(ip(1), proxy_port), NAME, port);
        if code == 0 {
            echo_through(bin, &mut c, "after the reload");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bin}: after the reload the race must reach the second address: {code:#04x}\n{}",
            p.stderr_text()
        );
    }
}
