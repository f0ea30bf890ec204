//! `[auth] helper` against a real directory, through both binaries:
//! Squid's `basic_ldap_auth` (Debian package squid) asking an OpenLDAP
//! `slapd` (Debian package slapd) that each case starts itself on a free
//! loopback port, over a small directory made with `slapadd`: hank and ivy
//! under `ou=people,dc=example,dc=org`, with `{SSHA}` passwords from
//! `slappasswd`. What is observed: curl through the SOCKS5 and http
//! proxies to a local origin, raw RFC 1929 logins and their replies, the
//! access log, `portico_auth_failures_total` on `/metrics`, and logins
//! while the directory is stopped and after it is back.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portico_tests::reply::exchange;
use portico_tests::{
    both, config_head, connect, curl_command, free_port, poll_until, require, run_tool, service,
    start_on_free_ports, Acceptor, Bin, Portico, StartOptions, TempDir, ToolOutput, ALICE,
    IO_TIMEOUT, PROMPTLY,
};

both!(
    ldap_users_log_in_through_socks5,
    ldap_users_log_in_through_the_http_proxy,
    a_rule_names_an_ldap_user_not_in_user_tables,
    logins_fail_while_the_directory_is_down_and_work_once_it_is_back
);

const LDAP_AUTH: &str = "/usr/lib/squid/basic_ldap_auth";
const BASE: &str = "ou=people,dc=example,dc=org";

/// The directory's users and their passwords. Both have a space, and
/// ivy's a `%`, which the helper protocol escapes; ivy logs in only by
/// raw RFC 1929 (curl takes `%41` in `--proxy-user` for `A`).
const HANK: (&str, &str) = ("hank", "hank pw");
const IVY: (&str, &str) = ("ivy", "ivy%41 pw");

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(20);

/// How long curl and the LDAP tools may run.
const TOOL_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// slapd

/// A `slapd` on 127.0.0.1 serving `dc=example,dc=org` from a directory of
/// its own; stopped (and its files removed) when dropped, a failing case
/// included.
struct Slapd {
    dir: TempDir,
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Slapd {
    /// Makes the directory with `users` and starts slapd on a free port.
    fn start(users: &[(&str, &str)]) -> Slapd {
        let slapd = require("slapd", "slapd");
        let dir = TempDir::new();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).expect("mkdir db");
        let conf = dir.write(
            "slapd.conf",
            &format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 database mdb\n\
                 maxsize 10485760\n\
                 suffix \"dc=example,dc=org\"\n\
                 rootdn \"cn=admin,dc=example,dc=org\"\n\
                 directory {}\n",
                db.display()
            ),
        );
        let mut ldif = String::from(
            "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\n\
             dc: example\no: Example\n\n\
             dn: ou=people,dc=example,dc=org\nobjectClass: organizationalUnit\nou: people\n",
        );
        for (name, password) in users {
            ldif += &format!(
                "\ndn: uid={name},{BASE}\nobjectClass: inetOrgPerson\nuid: {name}\n\
                 cn: {name}\nsn: {name}\nuserPassword: {}\n",
                ssha(password)
            );
        }
        let ldif = dir.write("people.ldif", &ldif);
        let mut add = Command::new(require("slapadd", "slapd"));
        add.arg("-f").arg(&conf).arg("-l").arg(&ldif);
        let out = run_tool("slapadd", add, None, TOOL_LIMIT);
        assert!(out.status.success(), "slapadd: {}", out.text());
        let mut s = Slapd {
            dir,
            conf,
            port: 0,
            child: None,
        };
        // Another process may take the port first: then another one.
        for _ in 0..3 {
            s.port = free_port();
            if s.run(&slapd) {
                return s;
            }
        }
        panic!("slapd did not start:\n{}", s.log());
    }

    /// Starts slapd in the foreground on `self.port`; whether it listens
    /// there (false: it exited, e.g. the port was taken).
    fn run(&mut self, slapd: &Path) -> bool {
        let log = File::create(self.dir.path().join("slapd.log")).expect("create slapd.log");
        let child = Command::new(slapd)
            .arg("-f")
            .arg(&self.conf)
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", slapd.display()));
        let child = self.child.insert(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let up = poll_until(PROMPTLY, EVERY, || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            TcpStream::connect(addr).is_ok().then_some(true)
        });
        match up {
            Some(true) => true,
            Some(false) => {
                self.child = None;
                false
            }
            None => panic!(
                "slapd does not listen on {addr} after {PROMPTLY:?}:\n{}",
                self.log()
            ),
        }
    }

    /// Stops slapd (SIGTERM, then SIGKILL if it lingers) and waits for it.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not yet waited for.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let ended = poll_until(PROMPTLY, EVERY, || child.try_wait().ok().flatten());
        if ended.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (Portico's configuration names it).
    fn restart(&mut self) {
        let slapd = require("slapd", "slapd");
        assert!(
            self.run(&slapd),
            "slapd did not start again on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// What slapd said.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// `[auth] helper = [...]`: basic_ldap_auth against this directory.
    /// `-P` keeps one connection per helper process: without it, Squid's
    /// basic_ldap_auth answers a wrong password `BH` rather than `ERR`.
    fn helper_line(&self) -> String {
        let port = self.port.to_string();
        let argv = [
            LDAP_AUTH,
            "-P",
            "-v",
            "3",
            "-b",
            BASE,
            "-f",
            "uid=%s",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ];
        let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        format!("helper = [{}]", quoted.join(", "))
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `{SSHA}` of `password`, as slappasswd makes it.
fn ssha(password: &str) -> String {
    let mut cmd = Command::new(require("slappasswd", "slapd"));
    cmd.args(["-h", "{SSHA}", "-s", password]);
    let out = run_tool("slappasswd", cmd, None, TOOL_LIMIT);
    assert!(out.status.success(), "slappasswd: {}", out.text());
    let hash = out.stdout_text().trim().to_string();
    assert!(hash.starts_with("{SSHA}"), "slappasswd printed {hash:?}");
    hash
}

// ---------------------------------------------------------------------------
// A tiny HTTP origin, and Portico in front of it.

const HELLO: &[u8] = b"hello from the origin behind portico\n";

/// Answers every request with [`HELLO`], one request per connection.
struct Origin {
    acceptor: Acceptor,
    requests: Arc<AtomicU64>,
}

impl Origin {
    fn start() -> Origin {
        let requests = Arc::new(AtomicU64::new(0));
        let rq = requests.clone();
        let acceptor = Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "origin", move |s, _| {
            let _ = serve(s, &rq);
        });
        Origin { acceptor, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/hello", self.acceptor.addr())
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(mut s: TcpStream, requests: &AtomicU64) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let h = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        HELLO.len()
    );
    s.write_all(h.as_bytes())?;
    s.write_all(HELLO)
}

/// Portico with `[auth]` `auth`, the lines `extra` (users, rules), a
/// service of `kind` with auth on and a status service; their addresses.
fn start(
    bin: Bin,
    kind: &str,
    limits: &str,
    auth: &str,
    extra: &str,
) -> (Portico, SocketAddr, SocketAddr) {
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n[auth]\n{auth}\n{extra}{}{}",
            config_head(limits, ""),
            service(kind, kind, ports[0], "auth = true"),
            service("status", "status", ports[1], "")
        )
    });
    (
        p,
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    )
}

/// curl `args` to `url` (`-w` prints the status code after the body).
fn curl(bin: Bin, args: &[&str], url: &str) -> ToolOutput {
    let mut cmd = curl_command(60);
    cmd.args(args).args(["-w", "%{http_code}"]).arg(url);
    run_tool(bin, cmd, None, TOOL_LIMIT)
}

/// curl through the SOCKS5 service `socks` as `user`:`password`.
fn curl_socks(
    bin: Bin,
    socks: SocketAddr,
    (user, password): (&str, &str),
    url: &str,
) -> ToolOutput {
    let creds = format!("{user}:{password}");
    curl(
        bin,
        &["--socks5", &socks.to_string(), "--proxy-user", &creds],
        url,
    )
}

/// The value of `portico_auth_failures_total{service,reason}` (0 when
/// absent).
fn failures(bin: Bin, status: SocketAddr, service: &str, reason: &str) -> u64 {
    let sample =
        format!("portico_auth_failures_total{{service=\"{service}\",reason=\"{reason}\"}}");
    let r = exchange(
        status,
        &format!("GET /metrics HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET /metrics: {e}"));
    assert_eq!(r.status, 200, "{bin}: GET /metrics: {r:?}");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A SOCKS5 login (greeting and RFC 1929 request at once): whether it was
/// accepted (status 0x00; refused: 0x01), and the stream.
fn login(bin: Bin, socks: SocketAddr, (name, password): (&str, &str)) -> (bool, TcpStream) {
    let mut b = vec![5, 1, 2, 1, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(password.len() as u8);
    b.extend_from_slice(password.as_bytes());
    let mut s = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect to {socks}: {e}"));
    s.write_all(&b)
        .unwrap_or_else(|e| panic!("{bin}: send a login: {e}"));
    let mut r = [0; 4];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: {name}: read the login's reply: {e}"));
    match r {
        [5, 2, 1, 0] => (true, s),
        [5, 2, 1, 1] => (false, s),
        r => panic!("{bin}: {name}: unexpected login reply {r:02x?}"),
    }
}

/// A refused SOCKS5 login of `who`: status 0x01, the access line
/// `auth-failed ... err=auth-required` for that connection.
fn refused(bin: Bin, p: &Portico, socks: SocketAddr, who: (&str, &str), what: &str) {
    let (ok, s) = login(bin, socks, who);
    assert!(!ok, "{bin}: {what}: the login must be refused");
    let client = s.local_addr().expect("local address");
    let l = p.access_of("socks", client, PROMPTLY);
    assert_eq!(l.status, "auth-failed", "{bin}: {what}: {l:?}");
    assert_eq!(
        l.err.as_deref(),
        Some("auth-required"),
        "{bin}: {what}: {l:?}"
    );
}

/// A SOCKS5 CONNECT to `dest` on a logged-in stream: the reply code.
fn connect_to(bin: Bin, s: &mut TcpStream, dest: SocketAddr) -> u8 {
    let SocketAddr::V4(a) = dest else {
        panic!("an IPv4 destination");
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&a.ip().octets());
    req.extend_from_slice(&a.port().to_be_bytes());
    s.write_all(&req)
        .unwrap_or_else(|e| panic!("{bin}: send CONNECT: {e}"));
    let mut r = [0u8; 10];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: read the CONNECT reply: {e}"));
    r[1]
}

fn need_ldap_auth() {
    assert!(
        Path::new(LDAP_AUTH).is_file(),
        "{LDAP_AUTH} is missing: this test needs the Debian package squid (.ci/run installs it)"
    );
}

// ---------------------------------------------------------------------------
// The cases.

/// hank's right password relays (curl through SOCKS5 to the origin, the
/// access line naming him); a wrong password is refused with RFC 1929
/// status 0x01 and counted `wrong` (the helper's `ERR`); a name the
/// directory does not hold is refused too (basic_ldap_auth answers it
/// `BH`, counted `helper`).
fn ldap_users_log_in_through_socks5(bin: Bin) {
    need_ldap_auth();
    let ldap = Slapd::start(&[HANK, IVY]);
    let origin = Origin::start();
    let (p, socks, status) = start(bin, "socks", "", &ldap.helper_line(), "");

    let out = curl_socks(bin, socks, HANK, &origin.url());
    assert!(
        out.status.success(),
        "{bin}: curl as hank: {}\nstderr:\n{}\nslapd:\n{}",
        out.text(),
        p.stderr_text(),
        ldap.log()
    );
    assert_eq!(
        out.stdout_text(),
        format!("{}200", String::from_utf8_lossy(HELLO)),
        "{bin}: the origin's page through SOCKS5"
    );
    let l = p.expect_access("socks", "hank's relay", PROMPTLY, |l| l.user == "hank");
    assert_eq!(l.status, "ok", "{bin}: {l:?}");
    assert_eq!(
        l.destination,
        origin.acceptor.addr().to_string(),
        "{bin}: {l:?}"
    );
    assert!(login(bin, socks, IVY).0, "{bin}: ivy's right password");

    refused(
        bin,
        &p,
        socks,
        ("hank", "hank pw%42"),
        "hank's wrong password",
    );
    assert_eq!(
        failures(bin, status, "socks", "wrong"),
        1,
        "{bin}: the helper's ERR is counted wrong"
    );
    assert_eq!(
        failures(bin, status, "socks", "helper"),
        0,
        "{bin}: no helper failure yet"
    );
    refused(
        bin,
        &p,
        socks,
        ("nobody", "x"),
        "a name not in the directory",
    );
    assert_eq!(
        failures(bin, status, "socks", "wrong") + failures(bin, status, "socks", "helper"),
        2,
        "{bin}: the unknown name counted as a failed login"
    );
    let out = curl_socks(bin, socks, ("ivy", "hank pw"), &origin.url());
    assert!(
        !out.status.success(),
        "{bin}: curl with ivy and hank's password: {}",
        out.text()
    );
    assert_eq!(
        origin.requests(),
        1,
        "{bin}: only hank's request reached the origin"
    );
}

/// The http proxy: 407 without credentials, 407 for a wrong password,
/// 200 with the origin's page for hank's right one (Basic
/// `Proxy-Authorization`, as curl sends it).
fn ldap_users_log_in_through_the_http_proxy(bin: Bin) {
    need_ldap_auth();
    let ldap = Slapd::start(&[HANK, IVY]);
    let origin = Origin::start();
    let (p, web, status) = start(bin, "http", "", &ldap.helper_line(), "");
    let proxy = format!("http://{web}");

    let out = curl(bin, &["--proxy", &proxy], &origin.url());
    assert!(
        out.stdout_text().ends_with("407"),
        "{bin}: no credentials: {}",
        out.text()
    );
    let out = curl(
        bin,
        &["--proxy", &proxy, "--proxy-user", "hank:wrong"],
        &origin.url(),
    );
    assert!(
        out.stdout_text().ends_with("407"),
        "{bin}: a wrong password: {}",
        out.text()
    );
    assert_eq!(
        failures(bin, status, "http", "wrong"),
        1,
        "{bin}: the wrong password counted"
    );
    let out = curl(
        bin,
        &["--proxy", &proxy, "--proxy-user", "hank:hank pw"],
        &origin.url(),
    );
    assert_eq!(
        out.stdout_text(),
        format!("{}200", String::from_utf8_lossy(HELLO)),
        "{bin}: hank through the http proxy: {}\nstderr:\n{}",
        out.text(),
        p.stderr_text()
    );
    let l = p.expect_access("http", "hank's request", PROMPTLY, |l| l.user == "hank");
    assert_eq!(l.status, "200", "{bin}: {l:?}");
    assert_eq!(
        origin.requests(),
        1,
        "{bin}: one request reached the origin"
    );
}

/// A rule allowing hank, who is in the directory and not in `[[user]]`:
/// he relays; ivy, also in the directory, logs in but no rule allows her
/// (the access line says `err=denied`); alice, a `[[user]]`, is still
/// checked by Portico itself.
fn a_rule_names_an_ldap_user_not_in_user_tables(bin: Bin) {
    need_ldap_auth();
    let ldap = Slapd::start(&[HANK, IVY]);
    let origin = Origin::start();
    let extra = "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
                 [[rule]]\naction = \"allow\"\nusers = [\"hank\", \"alice\"]\n";
    let (p, socks, _status) = start(bin, "socks", "", &ldap.helper_line(), extra);

    let out = curl_socks(bin, socks, HANK, &origin.url());
    assert!(
        out.status.success(),
        "{bin}: the rule allows hank: {}\nstderr:\n{}",
        out.text(),
        p.stderr_text()
    );
    let l = p.expect_access("socks", "hank's relay", PROMPTLY, |l| l.user == "hank");
    assert_eq!((l.status.as_str(), l.rule), ("ok", Some(1)), "{bin}: {l:?}");

    let (ok, mut s) = login(bin, socks, IVY);
    assert!(ok, "{bin}: ivy's login");
    assert_eq!(
        connect_to(bin, &mut s, origin.acceptor.addr()),
        2,
        "{bin}: no rule allows ivy: refused by the ruleset (SOCKS5 status 2)"
    );
    let l = p.expect_access("socks", "ivy's refusal", PROMPTLY, |l| l.user == "ivy");
    assert_eq!(l.err.as_deref(), Some("denied"), "{bin}: {l:?}");

    let out = curl_socks(bin, socks, ("alice", "secret"), &origin.url());
    assert!(
        out.status.success(),
        "{bin}: alice, a [[user]]: {}",
        out.text()
    );
    assert_eq!(origin.requests(), 2, "{bin}: hank's and alice's requests");
}

/// The directory stops: hank's logins fail (basic_ldap_auth answers `BH`,
/// counted `helper`), while Portico serves on: `/healthz`, and a
/// `[[user]]`'s login. The directory starts again on the same port: hank
/// logs in again (the helper reconnects), without a reload.
fn logins_fail_while_the_directory_is_down_and_work_once_it_is_back(bin: Bin) {
    need_ldap_auth();
    let mut ldap = Slapd::start(&[HANK, IVY]);
    let origin = Origin::start();
    // No cache: every login asks the directory.
    let limits = "auth_cache = \"0s\"";
    let (p, socks, status) = start(bin, "socks", limits, &ldap.helper_line(), ALICE);
    assert!(login(bin, socks, HANK).0, "{bin}: hank before the stop");

    ldap.stop();
    for n in 1..=2 {
        let (ok, _s) = login(bin, socks, HANK);
        assert!(!ok, "{bin}: hank's login {n} with the directory down");
    }
    assert_eq!(
        failures(bin, status, "socks", "helper"),
        2,
        "{bin}: counted helper\nstderr:\n{}",
        p.stderr_text()
    );
    let r = exchange(
        status,
        &format!("GET /healthz HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET /healthz: {e}"));
    assert_eq!(
        r.status, 200,
        "{bin}: /healthz with the directory down: {r:?}"
    );
    let out = curl_socks(bin, socks, ("alice", "secret"), &origin.url());
    assert!(
        out.status.success(),
        "{bin}: a [[user]] with the directory down: {}",
        out.text()
    );

    ldap.restart();
    let out = curl_socks(bin, socks, HANK, &origin.url());
    assert!(
        out.status.success(),
        "{bin}: hank once the directory is back: {}\nstderr:\n{}\nslapd:\n{}",
        out.text(),
        p.stderr_text(),
        ldap.log()
    );
    assert_eq!(
        failures(bin, status, "socks", "helper"),
        2,
        "{bin}: no failure once the directory is back"
    );
}
