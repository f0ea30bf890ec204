//! Transparent interception (`kind = "transparent"`), end to end through
//! both binaries, in a network the test makes and removes: three network
//! namespaces joined by veth pairs,
//!
//! ```text
//!   LAN client 10.8.0.2 ── lan0 | gw0 10.8.0.1  Portico  gw1 10.9.0.254 | srv0 ── origins 10.9.0.1, 10.9.0.2
//!   fd00:8::2                      fd00:8::1          fd00:9::fe             fd00:9::1
//! ```
//!
//! with nftables on the gateway redirecting the LAN's TCP to 10.9.0.0/24
//! ports 80, 443 and 2525 (and fd00:9::/64 ports 80 and 443) to Portico
//! (`redirect to :3130`), and port 8080
//! by TPROXY (`tproxy to 10.8.0.1:3131`, and fd00:9::/64 port 8080 to
//! `[fd00:8::1]:3131`, with `ip rule`/`ip route` for the marked packets). The clients are real (curl for HTTP and HTTPS with its
//! SNI, openssl's s_server behind) and a banner server speaks first. Only
//! addresses inside the test's own namespaces are used; each test has its
//! own namespaces (unique names), removed when it ends, also on failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use portico_tests::{
    both, curl_command, poll_until, private_hosts, require, run_on_config, run_tool, Bin, Portico,
    TempDir, ToolOutput,
};

const GW: &str = "10.8.0.1";
const GW6: &str = "fd00:8::1";
const WEB: &str = "10.9.0.1";
const OTHER: &str = "10.9.0.2";
/// Where nftables redirects to, and the TPROXY listener.
const PORT: u16 = 3130;
const TPROXY_PORT: u16 = 3131;
/// The banner server's port (it speaks first).
const BANNER_PORT: u16 = 2525;
/// The status page, on the gateway's loopback.
const STATUS_PORT: u16 = 8081;
/// The peek's bound, short so that a server-speaks-first connection waits
/// little.
const HANDSHAKE: &str = "2s";
/// A bound on any one wait.
const LIMIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ the rig

/// Runs `cmd`, failing the test with its output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new(require("ip", "iproute2")).args(args));
}

/// Enters the network namespace `name` with the calling thread.
fn enter(name: &str) {
    let ns = std::fs::File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("netns {name}: {e}"));
    // SAFETY: setns on this thread with a namespace fd it holds open.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread of its own inside namespace `name` (its sockets
/// stay there), and returns what it returns.
fn inside<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_string();
    thread::spawn(move || {
        enter(&name);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The three namespaces and what joins them; the calling thread is in
/// the gateway's (so Portico and the tools it starts run there) until the
/// rig is dropped, which leaves them and removes them, also when the test
/// panics.
struct Rig {
    lan: String,
    gw: String,
    srv: String,
    home: std::fs::File,
}

impl Rig {
    fn new() -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "pti-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("this thread's netns");
        let rig = Rig {
            lan: format!("{base}-lan"),
            gw: format!("{base}-gw"),
            srv: format!("{base}-srv"),
            home,
        };
        for ns in [&rig.lan, &rig.gw, &rig.srv] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let link = |a: &str, a_ns: &str, b: &str, b_ns: &str| {
            ip(&[
                "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ]);
            ip(&["-n", a_ns, "link", "set", a, "up"]);
            ip(&["-n", b_ns, "link", "set", b, "up"]);
        };
        link("lan0", &rig.lan, "gw0", &rig.gw);
        link("gw1", &rig.gw, "srv0", &rig.srv);
        let addr = |ns: &str, a: &str, dev: &str| ip(&["-n", ns, "addr", "add", a, "dev", dev]);
        addr(&rig.lan, "10.8.0.2/24", "lan0");
        addr(&rig.gw, "10.8.0.1/24", "gw0");
        addr(&rig.gw, "10.9.0.254/24", "gw1");
        addr(&rig.srv, "10.9.0.1/24", "srv0");
        addr(&rig.srv, "10.9.0.2/24", "srv0");
        ip(&["-n", &rig.lan, "route", "add", "default", "via", GW]);
        let addr6 = |ns: &str, a: &str, dev: &str| {
            ip(&["-n", ns, "-6", "addr", "add", a, "dev", dev, "nodad"])
        };
        addr6(&rig.lan, "fd00:8::2/64", "lan0");
        addr6(&rig.gw, "fd00:8::1/64", "gw0");
        addr6(&rig.gw, "fd00:9::fe/64", "gw1");
        addr6(&rig.srv, "fd00:9::1/64", "srv0");
        ip(&[
            "-n",
            &rig.lan,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:8::1",
        ]);
        ip(&[
            "-n",
            &rig.srv,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:9::fe",
        ]);
        ip(&[
            "-n",
            &rig.srv,
            "route",
            "add",
            "default",
            "via",
            "10.9.0.254",
        ]);
        // TPROXY: marked packets are delivered locally, whatever their
        // destination.
        for (family, any) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
            ip(&[
                "-n", &rig.gw, family, "rule", "add", "fwmark", "1", "lookup", "100",
            ]);
            ip(&[
                "-n", &rig.gw, family, "route", "add", "local", any, "dev", "lo", "table", "100",
            ]);
        }
        enter(&rig.gw);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward in the gateway");
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
            .expect("IPv6 forwarding in the gateway");
        let nft = format!(
            "table inet portico_test {{\n\
             chain pre {{ type nat hook prerouting priority dstnat; \
             iifname \"gw0\" ip daddr 10.9.0.0/24 tcp dport {{ 80, 443, {BANNER_PORT} }} \
             redirect to :{PORT}; \
             iifname \"gw0\" ip6 daddr fd00:9::/64 tcp dport {{ 80, 443 }} \
             redirect to :{PORT}; }}\n\
             chain tp {{ type filter hook prerouting priority mangle; \
             iifname \"gw0\" ip daddr 10.9.0.0/24 tcp dport 8080 \
             tproxy ip to {GW}:{TPROXY_PORT} meta mark set 1 accept; \
             iifname \"gw0\" ip6 daddr fd00:9::/64 tcp dport 8080 \
             tproxy ip6 to [{GW6}]:{TPROXY_PORT} meta mark set 1 accept; }}\n\
             }}\n"
        );
        let out = run_tool(
            "nft",
            {
                let mut c = Command::new(require("nft", "nftables"));
                c.args(["-f", "-"]);
                c
            },
            Some(nft.as_bytes()),
            LIMIT,
        );
        assert!(out.status.success(), "nft -f: {}", out.text());
        rig
    }

    /// `program args…` run in the LAN namespace.
    fn lan_cmd(&self, cmd: Command) -> Command {
        let mut c = Command::new(require("ip", "iproute2"));
        c.args(["netns", "exec", &self.lan]).arg(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // SAFETY: as in `enter`, with the namespace the thread came from.
        unsafe {
            libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET);
        }
        for ns in [&self.lan, &self.gw, &self.srv] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// --------------------------------------------------------------- the origins

/// An HTTP origin in the servers' namespace on `addr`: answers every
/// request (keeping the connection) with `origin ADDRESS`.
fn http_origin(rig: &Rig, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("an address");
    let l = inside(&rig.srv, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("origin on {addr}: {e}"));
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = serve_http(s, addr);
            });
        }
    });
}

fn serve_http(s: TcpStream, me: SocketAddr) -> std::io::Result<()> {
    s.set_read_timeout(Some(LIMIT))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    loop {
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
        }
        let body = format!("origin {}\n", me.ip());
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// A server that speaks first: `220 banner ready`, then `221 bye` to
/// whatever line comes.
fn banner_server(rig: &Rig) {
    let addr: SocketAddr = format!("{WEB}:{BANNER_PORT}").parse().expect("an address");
    let l = inside(&rig.srv, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("banner server on {addr}: {e}"));
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(LIMIT));
                let _ = s.write_all(b"220 banner ready\r\n");
                let mut buf = [0u8; 64];
                if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    let _ = s.write_all(b"221 bye\r\n");
                }
            });
        }
    });
}

/// openssl's s_server in the servers' namespace on WEB:443, with a
/// certificate made for the test; stopped when dropped.
struct TlsOrigin {
    child: Child,
    _dir: TempDir,
}

impl TlsOrigin {
    fn start(rig: &Rig) -> TlsOrigin {
        let openssl = require("openssl", "openssl");
        let dir = TempDir::new();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = run_tool(
            "openssl req",
            {
                let mut c = Command::new(&openssl);
                c.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                    .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                    .args(["-subj", "/CN=tls.test", "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert);
                c
            },
            None,
            LIMIT,
        );
        assert!(out.status.success(), "openssl req: {}", out.text());
        let child = Command::new(require("ip", "iproute2"))
            .args(["netns", "exec", &rig.srv])
            .arg(&openssl)
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("{WEB}:443"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("openssl s_server: {e}"));
        let mut t = TlsOrigin { child, _dir: dir };
        let srv = rig.srv.clone();
        let up = poll_until(LIMIT, Duration::from_millis(50), || {
            if let Ok(Some(status)) = t.child.try_wait() {
                panic!("openssl s_server exited with {status}");
            }
            let srv = srv.clone();
            inside(&srv, || {
                TcpStream::connect_timeout(&SocketAddr::from(([10, 9, 0, 1], 443)), LIMIT).ok()
            })
            .map(|_| ())
        });
        assert!(
            up.is_some(),
            "openssl s_server does not accept on {WEB}:443"
        );
        t
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------------- Portico

/// Portico on the gateway: a transparent service on GW:3130 and on IPv6
/// (where a redirect sends to the gateway's address on the LAN's
/// interface), the TPROXY one on GW:3131, a status page on 127.0.0.1,
/// `extra` after them.
fn portico(bin: Bin, extra: &str) -> Portico {
    let config = format!(
        "[network]\ninternal = [\"{GW}\", \"{GW6}\", \"127.0.0.1\", \"::\"]\n\
         [limits]\nhandshake_timeout = \"{HANDSHAKE}\"\n\
         [log]\naccess = \"stderr\"\n\
         [[service]]\nname = \"intercept\"\nkind = \"transparent\"\n\
         listen = [\"{GW}:{PORT}\", \"[::]:{PORT}\"]\n\
         [[service]]\nname = \"tproxy\"\nkind = \"transparent\"\ntproxy = true\n\
         listen = [\"{GW}:{TPROXY_PORT}\", \"[{GW6}]:{TPROXY_PORT}\"]\n\
         [[service]]\nname = \"status\"\nkind = \"status\"\n\
         listen = [\"127.0.0.1:{STATUS_PORT}\"]\n{extra}"
    );
    Portico::start(bin, &config)
}

/// curl from the LAN client, with `args`.
fn lan_curl(rig: &Rig, bin: Bin, args: &[&str]) -> ToolOutput {
    let mut c = curl_command(15);
    c.args(args);
    run_tool(bin, rig.lan_cmd(c), None, LIMIT)
}

/// A TCP connection from the LAN client to `addr`.
fn lan_connect(rig: &Rig, addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.parse().expect("an address");
    let s = inside(&rig.lan, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .unwrap_or_else(|e| panic!("connect from the LAN to {addr}: {e}"));
    s.set_read_timeout(Some(LIMIT)).expect("read timeout");
    s
}

/// Reads until `want` has come (or the stream ends, or LIMIT passes).
fn read_until(s: &mut TcpStream, want: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// What the status page's `GET /connections` says now.
fn connections(bin: Bin) -> String {
    let mut c = curl_command(10);
    c.arg(format!("http://127.0.0.1:{STATUS_PORT}/connections"));
    let out = run_tool(bin, c, None, LIMIT);
    assert!(out.status.success(), "{bin}: status page: {}", out.text());
    out.stdout_text()
}

// ------------------------------------------------------------------- cases

/// An HTTP request's Host names the destination: logged as NAME:PORT,
/// connected to the original address, shown on the status page while open.
fn http_host_is_peeked_and_logged(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, &format!("{WEB}:80"));
    let p = portico(bin, "");
    let out = lan_curl(
        &rig,
        bin,
        &[
            "--resolve",
            &format!("web.test:80:{WEB}"),
            "http://web.test/",
        ],
    );
    assert!(out.status.success(), "{bin}: {}", out.text());
    assert_eq!(out.stdout_text(), format!("origin {WEB}\n"), "{bin}");
    let a = p.expect_access("intercept", "the request to web.test", LIMIT, |a| {
        a.target == "web.test:80"
    });
    assert_eq!(
        (&*a.method, &*a.destination, &*a.status),
        ("HTTP", &*format!("{WEB}:80"), "ok"),
        "{bin}: {a:?}"
    );
    assert_eq!(a.client.ip().to_string(), "10.8.0.2", "{bin}: {a:?}");
    assert!(a.up > 0 && a.down > 0, "{bin}: {a:?}");

    // While a connection is open, the status page names it by its Host.
    let mut s = lan_connect(&rig, &format!("{WEB}:80"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: held.test\r\n\r\n")
        .expect("request");
    let reply = read_until(&mut s, "origin");
    assert!(reply.contains(&format!("origin {WEB}")), "{bin}: {reply}");
    let listed = connections(bin);
    assert!(
        listed.contains("\"held.test:80\""),
        "{bin}: /connections: {listed}"
    );
}

/// A TLS ClientHello's SNI names the destination; the handshake goes
/// through unchanged (curl checks nothing of the certificate here, but
/// the session completes with the real server's).
fn tls_sni_is_peeked_and_logged(bin: Bin) {
    let rig = Rig::new();
    let _tls = TlsOrigin::start(&rig);
    let p = portico(bin, "");
    let out = lan_curl(
        &rig,
        bin,
        &[
            "-k",
            "--resolve",
            &format!("tls.test:443:{WEB}"),
            "https://tls.test/",
        ],
    );
    assert!(out.status.success(), "{bin}: {}", out.text());
    // s_server -www answers with a page about the session it served.
    assert!(
        out.stdout_text().contains("s_server"),
        "{bin}: {}",
        out.text()
    );
    let a = p.expect_access("intercept", "the TLS connection", LIMIT, |a| {
        a.target == "tls.test:443"
    });
    assert_eq!(
        (&*a.method, &*a.destination, &*a.status),
        ("TLS", &*format!("{WEB}:443"), "ok"),
        "{bin}: {a:?}"
    );
}

/// A server that speaks first: the client says nothing, so after the
/// peek's bound the connection goes by its address, and is relayed both
/// ways.
fn server_speaks_first_goes_by_address(bin: Bin) {
    let rig = Rig::new();
    banner_server(&rig);
    let p = portico(bin, "");
    let mut s = lan_connect(&rig, &format!("{WEB}:{BANNER_PORT}"));
    let banner = read_until(&mut s, "\r\n");
    assert_eq!(banner, "220 banner ready\r\n", "{bin}");
    let listed = connections(bin);
    assert!(
        listed.contains(&format!("\"{WEB}:{BANNER_PORT}\"")),
        "{bin}: /connections: {listed}"
    );
    s.write_all(b"QUIT\r\n").expect("QUIT");
    let bye = read_until(&mut s, "\r\n");
    assert_eq!(bye, "221 bye\r\n", "{bin}");
    drop(s);
    let a = p.expect_access("intercept", "the banner connection", LIMIT, |a| {
        a.target == format!("{WEB}:{BANNER_PORT}")
    });
    assert_eq!(
        (&*a.method, &*a.destination),
        ("TCP", &*format!("{WEB}:{BANNER_PORT}")),
        "{bin}: {a:?}"
    );
    assert_eq!((a.up, a.down), (6, 18 + 9), "{bin}: {a:?}");
}

/// Rules on destinations see the peeked name: a denied HTTP request is
/// told 403 with `Portico-Error: denied`, a denied TLS one is closed; an
/// allowed name still goes.
fn rules_deny_by_peeked_name(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, &format!("{WEB}:80"));
    let _tls = TlsOrigin::start(&rig);
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"blocked.test\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let p = portico(bin, rules);
    let out = lan_curl(
        &rig,
        bin,
        &[
            "-i",
            "--resolve",
            &format!("blocked.test:80:{WEB}"),
            "http://blocked.test/",
        ],
    );
    let text = out.stdout_text();
    assert!(text.starts_with("HTTP/1.1 403 "), "{bin}: {}", out.text());
    assert!(text.contains("Portico-Error: denied\r\n"), "{bin}: {text}");
    let a = p.expect_access("intercept", "the denied request", LIMIT, |a| {
        a.target == "blocked.test:80"
    });
    assert_eq!(
        (&*a.method, &*a.status, a.err.as_deref(), a.rule),
        ("HTTP", "denied", Some("denied"), Some(1)),
        "{bin}: {a:?}"
    );

    let out = lan_curl(
        &rig,
        bin,
        &[
            "-k",
            "--resolve",
            &format!("blocked.test:443:{WEB}"),
            "https://blocked.test/",
        ],
    );
    assert!(!out.status.success(), "{bin}: {}", out.text());
    assert!(out.stdout.is_empty(), "{bin}: {}", out.text());
    let a = p.expect_access("intercept", "the denied TLS connection", LIMIT, |a| {
        a.target == "blocked.test:443"
    });
    assert_eq!(
        (&*a.method, &*a.status, a.err.as_deref(), a.down),
        ("TLS", "denied", Some("denied"), 0),
        "{bin}: {a:?}"
    );

    let out = lan_curl(
        &rig,
        bin,
        &[
            "--resolve",
            &format!("web.test:80:{WEB}"),
            "http://web.test/",
        ],
    );
    assert_eq!(
        out.stdout_text(),
        format!("origin {WEB}\n"),
        "{bin}: {}",
        out.text()
    );
}

/// A Host naming elsewhere never moves a direct connection: it goes to
/// the address the client connected to, logged under the name it gave.
fn host_elsewhere_does_not_redirect(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, &format!("{WEB}:80"));
    http_origin(&rig, &format!("{OTHER}:80"));
    let p = portico(bin, "");
    let out = lan_curl(
        &rig,
        bin,
        &["-H", "Host: other.test", &format!("http://{WEB}/")],
    );
    assert_eq!(
        out.stdout_text(),
        format!("origin {WEB}\n"),
        "{bin}: {}",
        out.text()
    );
    let a = p.expect_access("intercept", "the request naming other.test", LIMIT, |a| {
        a.target == "other.test:80"
    });
    assert_eq!(a.destination, format!("{WEB}:80"), "{bin}: {a:?}");
}

/// Through a parent (`via`), every intercepted connection is asked for as
/// `CONNECT NAME:PORT` — the address when no name was peeked. The parent
/// is tinyproxy on the gateway, resolving the test's names from a hosts
/// file of its own.
fn parent_gets_connect_name(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, &format!("{WEB}:80"));
    banner_server(&rig);
    let dir = TempDir::new();
    let _ = std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    );
    let parent_port = 8888;
    let d = dir.path().display();
    let conf = dir.write(
        "tinyproxy.conf",
        &format!(
            "Port {parent_port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n\
             User nobody\nGroup nogroup\nMaxClients 20\nLogLevel Info\n\
             ConnectPort 80\nConnectPort {BANNER_PORT}\n\
             LogFile \"{d}/tinyproxy.log\"\nPidFile \"{d}/tinyproxy.pid\"\n"
        ),
    );
    let hosts = dir.write("hosts", &format!("127.0.0.1 localhost\n{WEB} web.test\n"));
    let mut cmd = Command::new(require("tinyproxy", "tinyproxy"));
    cmd.arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    private_hosts(&mut cmd, &hosts);
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _tiny = Kill(cmd.spawn().expect("tinyproxy"));
    let up = poll_until(LIMIT, Duration::from_millis(50), || {
        TcpStream::connect(("127.0.0.1", parent_port)).ok()
    });
    assert!(
        up.is_some(),
        "tinyproxy does not accept on 127.0.0.1:{parent_port}"
    );
    let log = dir.path().join("tinyproxy.log");
    let parent = format!(
        "[[parent]]\nname = \"up\"\nkind = \"http\"\naddresses = [\"127.0.0.1:{parent_port}\"]\n"
    );
    // `via` on the transparent service itself.
    let config = format!(
        "[network]\ninternal = [\"{GW}\", \"127.0.0.1\"]\n\
         [limits]\nhandshake_timeout = \"{HANDSHAKE}\"\n\
         [log]\naccess = \"stderr\"\n\
         [[service]]\nname = \"intercept\"\nkind = \"transparent\"\nlisten = [\"{GW}:{PORT}\"]\n\
         via = \"up\"\n{parent}"
    );
    let p = Portico::start(bin, &config);
    let out = lan_curl(
        &rig,
        bin,
        &[
            "--resolve",
            &format!("web.test:80:{WEB}"),
            "http://web.test/",
        ],
    );
    assert_eq!(
        out.stdout_text(),
        format!("origin {WEB}\n"),
        "{bin}: {}",
        out.text()
    );
    let a = p.expect_access("intercept", "the request via the parent", LIMIT, |a| {
        a.target == "web.test:80"
    });
    assert_eq!(
        (a.via.as_deref(), &*a.destination),
        (Some("up"), &*format!("127.0.0.1:{parent_port}")),
        "{bin}: {a:?}"
    );
    // No name: the address.
    let mut s = lan_connect(&rig, &format!("{WEB}:{BANNER_PORT}"));
    assert_eq!(read_until(&mut s, "\r\n"), "220 banner ready\r\n", "{bin}");
    drop(s);
    let said = poll_until(LIMIT, Duration::from_millis(50), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.contains("CONNECT web.test:80 ") && t.contains(&format!("CONNECT {WEB}:{BANNER_PORT} ")))
            .then_some(t)
    });
    assert!(
        said.is_some(),
        "{bin}: tinyproxy was not asked CONNECT web.test:80 and CONNECT {WEB}:{BANNER_PORT}; \
         its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A connection to the port itself, not redirected, is refused (carrying
/// it would loop), on both kinds of listener.
fn not_redirected_is_refused(bin: Bin) {
    let rig = Rig::new();
    let p = portico(bin, "");
    for (service, port) in [("intercept", PORT), ("tproxy", TPROXY_PORT)] {
        let mut s = lan_connect(&rig, &format!("{GW}:{port}"));
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n");
        let got = read_until(&mut s, "\r\n");
        assert!(got.is_empty(), "{bin}: {service}: {got:?}");
        let a = p.expect_access(service, "the connection to the port itself", LIMIT, |a| {
            a.status == "not-redirected"
        });
        assert_eq!(a.err.as_deref(), Some("not-redirected"), "{bin}: {a:?}");
    }
    let mut c = curl_command(10);
    c.arg(format!("http://127.0.0.1:{STATUS_PORT}/metrics"));
    let metrics = run_tool(bin, c, None, LIMIT).stdout_text();
    for service in ["intercept", "tproxy"] {
        let line =
            format!("portico_refused_total{{service=\"{service}\",reason=\"not-redirected\"}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "{bin}: no {line:?} in\n{metrics}"
        );
    }
}

/// TPROXY (`tproxy = true`): the original destination is the accepted
/// socket's own address; peeked and relayed as with a redirect.
fn tproxy_is_peeked_and_relayed(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, &format!("{WEB}:8080"));
    let p = portico(bin, "");
    let out = lan_curl(
        &rig,
        bin,
        &[
            "--resolve",
            &format!("web.test:8080:{WEB}"),
            "http://web.test:8080/",
        ],
    );
    assert_eq!(
        out.stdout_text(),
        format!("origin {WEB}\n"),
        "{bin}: {}",
        out.text()
    );
    let a = p.expect_access("tproxy", "the TPROXY request", LIMIT, |a| {
        a.target == "web.test:8080"
    });
    assert_eq!(
        (&*a.method, &*a.destination, &*a.status),
        ("HTTP", &*format!("{WEB}:8080"), "ok"),
        "{bin}: {a:?}"
    );
}

/// `--check`: a transparent service is valid; `tproxy` on another kind,
/// or a destination on a transparent one, is an error saying what to do.
fn check_validates_transparent_services(bin: Bin) {
    let ok = "[[service]]\nname = \"t\"\nkind = \"transparent\"\nport = 3130\ntproxy = true\n";
    let (_, out) = run_on_config(bin, ok, &["--check"], LIMIT);
    assert_eq!(out.code(), Some(0), "{bin}: {out:?}");
    for (bad, says) in [
        (
            "[[service]]\nname = \"w\"\nkind = \"http\"\nport = 8080\ntproxy = true\n",
            "tproxy = true only applies to transparent services, not http",
        ),
        (
            "[[service]]\nname = \"t\"\nkind = \"transparent\"\nport = 3130\n\
             destination = \"10.9.0.1:80\"\n",
            "a transparent service takes no destination",
        ),
    ] {
        let (path, out) = run_on_config(bin, bad, &["--check"], LIMIT);
        assert_eq!(out.code(), Some(2), "{bin}: {out:?}");
        assert!(
            out.stderr.contains(&path) && out.stderr.contains(says),
            "{bin}: want {says:?} at {path}: {}",
            out.stderr
        );
    }
}

/// IPv6: the original destination of a redirect is read with
/// IP6T_SO_ORIGINAL_DST.
fn ipv6_redirect_is_peeked(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, "[fd00:9::1]:80");
    let p = portico(bin, "");
    let out = lan_curl(
        &rig,
        bin,
        &["--resolve", "web.test:80:[fd00:9::1]", "http://web.test/"],
    );
    assert_eq!(
        out.stdout_text(),
        "origin fd00:9::1\n",
        "{bin}: {}",
        out.text()
    );
    let a = p.expect_access("intercept", "the IPv6 request", LIMIT, |a| {
        a.target == "web.test:80"
    });
    assert_eq!(
        (&*a.method, &*a.destination, a.client.ip().to_string()),
        ("HTTP", "[fd00:9::1]:80", "fd00:8::2".to_string()),
        "{bin}: {a:?}"
    );
}

/// TPROXY over IPv6 (IPV6_TRANSPARENT on the listener): the original
/// destination is the accepted socket's own IPv6 address.
fn ipv6_tproxy_is_peeked_and_relayed(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, "[fd00:9::1]:8080");
    let p = portico(bin, "");
    let out = lan_curl(
        &rig,
        bin,
        &[
            "--resolve",
            "web.test:8080:[fd00:9::1]",
            "http://web.test:8080/",
        ],
    );
    assert_eq!(
        out.stdout_text(),
        "origin fd00:9::1\n",
        "{bin}: {}",
        out.text()
    );
    let a = p.expect_access("tproxy", "the IPv6 TPROXY request", LIMIT, |a| {
        a.target == "web.test:8080"
    });
    assert_eq!(
        (&*a.method, &*a.destination, a.client.ip().to_string()),
        ("HTTP", "[fd00:9::1]:8080", "fd00:8::2".to_string()),
        "{bin}: {a:?}"
    );
}

/// A reload that turns `tproxy` off and on again reopens the listener
/// without and with IP_TRANSPARENT. Off, nftables' `tproxy` finds no
/// transparent socket, so the rule does not match and the gateway simply
/// forwards the request (Portico never sees it); on again, Portico takes,
/// peeks and relays it.
fn reload_turns_tproxy_off_and_on(bin: Bin) {
    let rig = Rig::new();
    http_origin(&rig, &format!("{WEB}:8080"));
    let p = portico(bin, "");
    let on = std::fs::read_to_string(p.config_path()).expect("the configuration");
    let off = on.replace("tproxy = true\n", "");
    assert_ne!(on, off, "the configuration has tproxy = true");
    let reload = |text: &str, n: usize| {
        std::fs::write(p.config_path(), text).expect("rewrite the configuration");
        p.signal(libc::SIGHUP);
        let done = poll_until(LIMIT, Duration::from_millis(50), || {
            let reloads = (p.stderr_lines().iter())
                .filter(|l| l.contains("configuration reloaded"))
                .count();
            (reloads >= n).then_some(())
        });
        assert!(done.is_some(), "{bin}: reload {n}\n{}", p.stderr_text());
    };
    let args = [
        "--resolve",
        &format!("web.test:8080:{WEB}"),
        "http://web.test:8080/",
    ];
    let want = format!("origin {WEB}\n");
    reload(&off, 1);
    let out = lan_curl(&rig, bin, &args);
    assert_eq!(out.stdout_text(), want, "{bin}: forwarded: {}", out.text());
    reload(&on, 2);
    let out = lan_curl(&rig, bin, &args);
    assert_eq!(
        out.stdout_text(),
        want,
        "{bin}: through Portico: {}",
        out.text()
    );
    p.expect_access("tproxy", "the request after tproxy came back", LIMIT, |a| {
        a.target == "web.test:8080"
    });
    // The request made while tproxy was off left no line: the one line is
    // the last request's.
    let lines = p.expect_access_lines("tproxy", 1, LIMIT, |_| true);
    assert_eq!(lines.len(), 1, "{bin}: {lines:?}");
}

both!(
    check_validates_transparent_services,
    reload_turns_tproxy_off_and_on,
    ipv6_tproxy_is_peeked_and_relayed,
    ipv6_redirect_is_peeked,
    http_host_is_peeked_and_logged,
    tls_sni_is_peeked_and_logged,
    server_speaks_first_goes_by_address,
    rules_deny_by_peeked_name,
    host_elsewhere_does_not_redirect,
    parent_gets_connect_name,
    not_redirected_is_refused,
    tproxy_is_peeked_and_relayed,
);
