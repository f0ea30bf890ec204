//! Upstream proxies (`[[parent]]`, `via`) end to end through both binaries,
//! chained to real parents from Debian, each started with a configuration
//! of its own in a temporary directory on a free loopback port:
//!
//! - `squid` (http parent: CONNECT, and plain requests in absolute form),
//! - `tinyproxy` (http parent demanding Basic credentials),
//! - `danted` from dante-server (socks5 and socks4a parent, no login: its
//!   username method checks system accounts, which a test must not make),
//! - `microsocks` (socks5 parent demanding an RFC 1929 login).
//!
//! Parents written here (`Scripted`) show what a real one cannot: the
//! exact bytes Portico says to its parent (PROXY header, CONNECT with the
//! unresolved name and credentials, plain requests in absolute form), a
//! parent's own SOCKS5 reply code, a 403 or 407, and an address that
//! black-holes.
//!
//! curl is the client, through Portico's socks and http services; a tiny
//! HTTP origin on 127.0.0.1 is the destination, always named `localhost`
//! so that only the parent resolves it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_tests::{
    both, config_head, connect, curl_command, free_port, local, poll_until, recv_all, require,
    run_tool, service, start_on_free_ports, Acceptor, Bin, BlackHole, Portico, StartOptions,
    TempDir, ToolOutput, IO_TIMEOUT,
};

/// How long one run of curl may take.
const TOOL_LIMIT: Duration = Duration::from_secs(90);
/// How long a parent may take to start listening (squid takes seconds).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long an access line or a metric may take to show.
const SHOW_LIMIT: Duration = Duration::from_secs(20);

const HELLO: &[u8] = b"hello from the origin behind the parent\n";

// ---------------------------------------------------------------------------
// The origin.

/// Serves `GET /hello` on every request of a kept-alive connection.
struct Origin {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    _acceptor: Acceptor,
}

impl Origin {
    fn start() -> Origin {
        let requests = Arc::new(AtomicU64::new(0));
        let rq = requests.clone();
        let acceptor = Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "origin", move |s, _| {
            let _ = serve(s, &rq);
        });
        Origin {
            addr: acceptor.addr(),
            requests,
            _acceptor: acceptor,
        }
    }

    /// The URL of its hello page, by name (only a parent resolves it).
    fn url(&self) -> String {
        format!("http://localhost:{}/hello", self.addr.port())
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(mut s: TcpStream, requests: &AtomicU64) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let n = s.read(&mut chunk)?;
            if n == 0 || buf.len() > 64 * 1024 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            continue;
        };
        buf.drain(..end + 4);
        requests.fetch_add(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            HELLO.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(HELLO)?;
    }
    s.shutdown(Shutdown::Write)?;
    let _ = recv_all(&mut s);
    Ok(())
}

// ---------------------------------------------------------------------------
// The parents.

/// Makes a parent's configuration for its port and directory.
type Writer<'a> = dyn Fn(u16, &str) -> String + 'a;

/// A parent proxy process, stopped when dropped.
struct Parent {
    what: &'static str,
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Parent {
    /// Starts `program` with `args(port, dir)` on a free port, once its
    /// configuration `conf(port, dir)` (if any) is written to `NAME.conf`
    /// in a directory of its own, and waits until it accepts.
    fn start(
        what: &'static str,
        program: std::path::PathBuf,
        conf: Option<&Writer<'_>>,
        args: &dyn Fn(u16, &str) -> Vec<String>,
    ) -> Parent {
        Parent::start_on(free_port(), what, program, conf, args)
    }

    /// [`Parent::start`] on `port`.
    fn start_on(
        port: u16,
        what: &'static str,
        program: std::path::PathBuf,
        conf: Option<&Writer<'_>>,
        args: &dyn Fn(u16, &str) -> Vec<String>,
    ) -> Parent {
        let dir = TempDir::new();
        // Squid and tinyproxy drop to an unprivileged user that still
        // writes its logs here.
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        );
        let path = dir.path().to_string_lossy().into_owned();
        if let Some(conf) = conf {
            dir.write(&format!("{what}.conf"), &conf(port, &path));
        }
        let child = Command::new(&program)
            .args(args(port, &path))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot run {}: {e}", program.display()));
        let mut p = Parent {
            what,
            child,
            port,
            dir,
        };
        let up = poll_until(START_LIMIT, Duration::from_millis(50), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Some(Err(format!("{what} exited with {status}")));
            }
            connect(local(port)).ok().map(|_| Ok(()))
        });
        match up {
            Some(Ok(())) => p,
            Some(Err(e)) => panic!("{e}; its directory holds:\n{}", p.logs()),
            None => panic!(
                "{what} does not accept on 127.0.0.1:{port} after {START_LIMIT:?}; its directory \
                 holds:\n{}",
                p.logs()
            ),
        }
    }

    fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    /// Every file of its directory, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.push_str(&format!("--- {}\n{text}\n", e.path().display()));
            }
        }
        out
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        // SIGTERM first, so that danted and squid take their children down.
        let pid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.what;
    }
}

fn squid() -> Parent {
    Parent::start(
        "squid",
        require("squid", "squid"),
        Some(&|port, dir| {
            format!(
                "http_port 127.0.0.1:{port}\n\
                 http_access allow all\n\
                 cache deny all\n\
                 cache_mem 1 MB\n\
                 pid_filename none\n\
                 access_log {dir}/access.log\n\
                 cache_log {dir}/cache.log\n\
                 cache_store_log none\n\
                 coredump_dir {dir}\n\
                 cache_effective_user proxy\n\
                 shutdown_lifetime 0 seconds\n\
                 pinger_enable off\n"
            )
        }),
        &|_, dir| vec!["-N".into(), "-f".into(), format!("{dir}/squid.conf")],
    )
}

fn tinyproxy() -> Parent {
    Parent::start(
        "tinyproxy",
        require("tinyproxy", "tinyproxy"),
        Some(&|port, dir| {
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n\
                 BasicAuth gw pw\nUser nobody\nGroup nogroup\nMaxClients 20\n\
                 LogFile \"{dir}/tinyproxy.log\"\nPidFile \"{dir}/tinyproxy.pid\"\n"
            )
        }),
        &|_, dir| vec!["-d".into(), "-c".into(), format!("{dir}/tinyproxy.conf")],
    )
}

fn dante() -> Parent {
    dante_on(free_port())
}

fn dante_on(port: u16) -> Parent {
    Parent::start_on(
        port,
        "danted",
        require("danted", "dante-server"),
        Some(&|port, dir| {
            format!(
                "logoutput: {dir}/danted.log\n\
                 internal: 127.0.0.1 port = {port}\n\
                 external: 127.0.0.1\n\
                 socksmethod: none\n\
                 clientmethod: none\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n"
            )
        }),
        &|_, dir| {
            vec![
                "-f".into(),
                format!("{dir}/danted.conf"),
                "-p".into(),
                format!("{dir}/danted.pid"),
            ]
        },
    )
}

/// OpenSSH's dynamic forwarding (`ssh -D`, SOCKS4, 4a and 5) to a private
/// sshd: the SOCKS4a parent (dante takes SOCKS4 by address only).
struct SshSocks {
    sshd: Child,
    parent: Parent,
}

impl Drop for SshSocks {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

fn ssh_socks(bin: Bin) -> SshSocks {
    let sshd = require("sshd", "openssh-server");
    let keygen = require("ssh-keygen", "openssh-client");
    let dir = TempDir::new();
    for key in ["host", "client"] {
        let mut cmd = Command::new(&keygen);
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path().join(key));
        let out = run_tool(bin, cmd, None, TOOL_LIMIT);
        assert!(out.status.success(), "{bin}: ssh-keygen: {}", out.text());
    }
    let pubkey = std::fs::read_to_string(dir.path().join("client.pub"))
        .unwrap_or_else(|e| panic!("{bin}: reading client.pub: {e}"));
    dir.write("authorized_keys", &pubkey);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let user = if root {
        // Privilege separation needs its directory.
        std::fs::create_dir_all("/run/sshd")
            .unwrap_or_else(|e| panic!("{bin}: mkdir /run/sshd: {e}"));
        "root".to_string()
    } else {
        std::env::var("USER").unwrap_or_else(|_| panic!("{bin}: USER is not set"))
    };
    let sshd_port = free_port();
    let d = dir.path().display();
    let config = dir.write(
        "sshd_config",
        &format!(
            "ListenAddress 127.0.0.1\nPort {sshd_port}\nHostKey {d}/host\nPidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PermitRootLogin yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nLogLevel INFO\n"
        ),
    );
    let child = Command::new(&sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: cannot start {}: {e}", sshd.display()));
    let sshd_up = poll_until(START_LIMIT, Duration::from_millis(50), || {
        connect(local(sshd_port)).ok()
    });
    assert!(
        sshd_up.is_some(),
        "{bin}: sshd does not listen on {sshd_port}"
    );
    let key = dir.path().join("client");
    let parent = Parent::start("ssh", require("ssh", "openssh-client"), None, &|port, _| {
        [
            "-F",
            "/dev/null",
            "-N",
            "-i",
            &key.to_string_lossy(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-D",
            &format!("127.0.0.1:{port}"),
            "-p",
            &sshd_port.to_string(),
            &format!("{user}@127.0.0.1"),
        ]
        .map(String::from)
        .to_vec()
    });
    let _ = dir;
    SshSocks {
        sshd: child,
        parent,
    }
}

fn microsocks() -> Parent {
    Parent::start(
        "microsocks",
        require("microsocks", "microsocks"),
        None,
        &|port, _| {
            [
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                "gw",
                "-P",
                "pw",
            ]
            .map(String::from)
            .to_vec()
        },
    )
}

// ---------------------------------------------------------------------------
// Portico in front.

/// Portico with a socks service (`ports[0]`), an http service (`ports[1]`,
/// CONNECT to the origin's port) and a status service (`ports[2]`), all `via =
/// "up"`, and `parent` as the `[[parent]]` named up.
fn portico(bin: Bin, parent: &str, origin: &Origin) -> (Portico, [SocketAddr; 3]) {
    let connect_ports = format!("connect_ports = [{}]", origin.addr.port());
    let (p, ports) = start_on_free_ports(bin, 3, StartOptions::default(), |ports| {
        format!(
            "{}\n[[parent]]\nname = \"up\"\n{parent}\n{}{}{}",
            config_head("", ""),
            service("socks", "socks", ports[0], "via = \"up\""),
            service(
                "web",
                "http",
                ports[1],
                &format!("via = \"up\"\n{connect_ports}")
            ),
            service("status", "status", ports[2], ""),
        )
    });
    (p, [local(ports[0]), local(ports[1]), local(ports[2])])
}

fn curl(bin: Bin, args: &[&str], url: &str) -> ToolOutput {
    let mut cmd = curl_command(60);
    cmd.args(args).arg(url);
    run_tool(bin, cmd, None, TOOL_LIMIT)
}

/// curl's SOCKS5 (names passed on) through Portico's socks service.
fn via_socks(bin: Bin, socks: SocketAddr, url: &str) -> ToolOutput {
    curl(bin, &["--socks5-hostname", &socks.to_string()], url)
}

/// curl's CONNECT through Portico's http service.
fn via_connect(bin: Bin, web: SocketAddr, url: &str) -> ToolOutput {
    curl(bin, &["-p", "-x", &format!("http://{web}")], url)
}

/// curl's plain request through Portico's http service.
fn via_http(bin: Bin, web: SocketAddr, url: &str) -> ToolOutput {
    curl(bin, &["-x", &format!("http://{web}")], url)
}

/// `url` through the socks service and through a CONNECT of the http
/// service both fetch the hello page ("socks WHAT", "CONNECT WHAT").
fn hello_through(bin: Bin, socks: SocketAddr, web: SocketAddr, url: &str, what: &str) {
    assert_hello(bin, &via_socks(bin, socks, url), &format!("socks {what}"));
    assert_hello(bin, &via_connect(bin, web, url), &format!("CONNECT {what}"));
}

fn assert_hello(bin: Bin, out: &ToolOutput, what: &str) {
    assert!(
        out.status.success() && out.stdout == HELLO,
        "{bin}: {what}: {}",
        out.text()
    );
}

/// `GET path` on the status service: the body of a 200.
fn status_get(bin: Bin, status: SocketAddr, path: &str) -> String {
    let mut s = connect(status).unwrap_or_else(|e| panic!("{bin}: connect {status}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap_or_else(|e| panic!("{bin}: GET {path}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{bin}: GET {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{bin}: GET {path}: {text}"
    );
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Waits until `/metrics` has the sample `series` with `value`.
fn expect_metric(bin: Bin, status: SocketAddr, series: &str, value: &str) {
    let want = format!("{series} {value}");
    let found = poll_until(SHOW_LIMIT, Duration::from_millis(50), || {
        let m = status_get(bin, status, "/metrics");
        m.lines().any(|l| l == want).then_some(())
    });
    if found.is_none() {
        panic!(
            "{bin}: /metrics has no line {want:?}:\n{}",
            status_get(bin, status, "/metrics")
        );
    }
}

/// The access line of `service` for `target` (a CONNECT or SOCKS
/// destination, or an URL).
fn line_for(p: &Portico, service: &str, target: &str) -> portico_tests::logline::AccessLine {
    p.expect_access(service, &format!("target {target}"), SHOW_LIMIT, |a| {
        a.target == target
    })
}

// ---------------------------------------------------------------------------
// The cases.

both!(
    socks_and_connect_through_squid,
    plain_requests_through_squid_keep_alive,
    socks_and_connect_through_dante,
    socks4_parents,
    microsocks_login,
    tinyproxy_demands_credentials,
    dead_first_address_fails_over,
);

/// curl through Portico's socks and http services, chained to squid: the
/// origin answers; the access lines say `via=up` with squid as the peer.
fn socks_and_connect_through_squid(bin: Bin) {
    let origin = Origin::start();
    let parent = squid();
    let (p, [socks, web, status]) = portico(
        bin,
        &format!("kind = \"http\"\naddresses = [\"{}\"]", parent.addr()),
        &origin,
    );
    hello_through(bin, socks, web, &origin.url(), "via squid");
    let target = format!("localhost:{}", origin.addr.port());
    for service in ["socks", "web"] {
        let a = line_for(&p, service, &target);
        assert_eq!(a.via.as_deref(), Some("up"), "{bin}: {service}: {a:?}");
        assert_eq!(a.destination, parent.addr().to_string(), "{bin}: {a:?}");
        assert_eq!(a.err, None, "{bin}: {a:?}");
    }
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"{}\",result=\"ok\"}}",
            parent.addr()
        ),
        "2",
    );
}

/// Plain requests go to an http parent in absolute form, two over one
/// kept-alive connection, and its answer reaches the client unchanged.
fn plain_requests_through_squid_keep_alive(bin: Bin) {
    let origin = Origin::start();
    let parent = squid();
    let (p, [_, web, status]) = portico(
        bin,
        &format!("kind = \"http\"\naddresses = [\"{}\"]", parent.addr()),
        &origin,
    );
    let url = origin.url();
    // Two URLs on one command line: curl keeps its connection for both.
    let out = curl(bin, &["-x", &format!("http://{web}"), &url], &url);
    assert!(out.status.success(), "{bin}: {}", out.text());
    assert_eq!(out.stdout, [HELLO, HELLO].concat(), "{bin}: {}", out.text());
    assert_eq!(
        origin.requests(),
        2,
        "{bin}: both requests reached the origin"
    );
    let a = line_for(&p, "web", &url);
    assert_eq!(a.via.as_deref(), Some("up"), "{bin}: {a:?}");
    assert_eq!(a.destination, parent.addr().to_string(), "{bin}: {a:?}");
    assert_eq!(a.status, "200", "{bin}: {a:?}");
    // Squid saw them as proxy requests for the origin's URL.
    let log = poll_until(SHOW_LIMIT, Duration::from_millis(50), || {
        let l = std::fs::read_to_string(parent.dir.path().join("access.log")).ok()?;
        (l.matches(&url).count() >= 2).then_some(l)
    });
    assert!(
        log.is_some(),
        "{bin}: squid logged both requests:\n{}",
        parent.logs()
    );
    // One connection from Portico to squid carried the two requests to
    // the origin.
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"{}\",result=\"ok\"}}",
            parent.addr()
        ),
        "1",
    );
    // Squid's own answer (its error page for a dead origin) is the answer.
    let dead = format!("http://localhost:{}/hello", free_port());
    let out = curl(bin, &["-x", &format!("http://{web}"), "-i"], &dead);
    let text = out.stdout_text();
    assert!(
        text.starts_with("HTTP/1.1 503")
            && text.contains("X-Squid-Error:")
            && !text.contains("Portico-Error"),
        "{bin}: squid's 503 unchanged: {}",
        out.text()
    );
}

/// Through dante as a socks5 parent.
fn socks_and_connect_through_dante(bin: Bin) {
    let origin = Origin::start();
    let parent = dante();
    let (p, [socks, web, _]) = portico(
        bin,
        &format!("kind = \"socks5\"\naddresses = [\"{}\"]", parent.addr()),
        &origin,
    );
    hello_through(bin, socks, web, &origin.url(), "via dante");
    let a = line_for(&p, "socks", &format!("localhost:{}", origin.addr.port()));
    assert_eq!(a.via.as_deref(), Some("up"), "{bin}: {a:?}");
    assert_eq!(a.destination, parent.addr().to_string(), "{bin}: {a:?}");
}

/// Socks4 parents: a name goes as SOCKS4a (to `ssh -D`), an address as
/// SOCKS4 (to dante, which takes no SOCKS4a, and to `ssh -D`).
fn socks4_parents(bin: Bin) {
    let origin = Origin::start();
    let by_address = format!("http://127.0.0.1:{}/hello", origin.addr.port());
    let ssh = ssh_socks(bin);
    let (p, [socks, web, _]) = portico(
        bin,
        &format!(
            "kind = \"socks4\"\naddresses = [\"{}\"]\nuser = \"portico\"",
            ssh.parent.addr()
        ),
        &origin,
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &origin.url()),
        "a name via socks4a",
    );
    assert_hello(
        bin,
        &via_connect(bin, web, &origin.url()),
        "CONNECT via socks4a",
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &by_address),
        "an address via socks4",
    );
    let a = line_for(&p, "socks", &format!("localhost:{}", origin.addr.port()));
    assert_eq!(a.via.as_deref(), Some("up"), "{bin}: {a:?}");
    assert_eq!(a.destination, ssh.parent.addr().to_string(), "{bin}: {a:?}");

    let parent = dante();
    let (_p, [socks, _, _]) = portico(
        bin,
        &format!("kind = \"socks4\"\naddresses = [\"{}\"]", parent.addr()),
        &origin,
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &by_address),
        "an address via dante's socks4",
    );
}

/// microsocks demands a login: with user and password configured it
/// connects; with a wrong password the SOCKS client is refused and the
/// line says parent-failed.
fn microsocks_login(bin: Bin) {
    let origin = Origin::start();
    let parent = microsocks();
    let (_p, [socks, web, _]) = portico(
        bin,
        &format!(
            "kind = \"socks5\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"pw\"",
            parent.addr()
        ),
        &origin,
    );
    hello_through(bin, socks, web, &origin.url(), "via microsocks");

    let (p, [socks, _, _]) = portico(
        bin,
        &format!(
            "kind = \"socks5\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"wrong\"",
            parent.addr()
        ),
        &origin,
    );
    let out = via_socks(bin, socks, &origin.url());
    assert!(
        !out.status.success(),
        "{bin}: a wrong password: {}",
        out.text()
    );
    let a = line_for(&p, "socks", &format!("localhost:{}", origin.addr.port()));
    assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
    assert_eq!(a.via.as_deref(), Some("up"), "{bin}: {a:?}");
}

/// tinyproxy demands Basic credentials: with them CONNECT and plain
/// requests work; without, CONNECT gets 502 with Portico-Error:
/// parent-failed.
fn tinyproxy_demands_credentials(bin: Bin) {
    let origin = Origin::start();
    let parent = tinyproxy();
    let (_p, [socks, web, _]) = portico(
        bin,
        &format!(
            "kind = \"http\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"pw\"",
            parent.addr()
        ),
        &origin,
    );
    hello_through(bin, socks, web, &origin.url(), "via tinyproxy");
    assert_hello(bin, &via_http(bin, web, &origin.url()), "GET via tinyproxy");

    // Wrong credentials: tinyproxy answers a plain request 401, which is
    // not a 407: it goes to the client unchanged.
    let (p, [_, web, _]) = portico(
        bin,
        &format!(
            "kind = \"http\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"wrong\"",
            parent.addr()
        ),
        &origin,
    );
    let out = curl(bin, &["-x", &format!("http://{web}"), "-i"], &origin.url());
    let text = out.stdout_text();
    assert!(
        text.starts_with("HTTP/1.1 401")
            && text.contains("Server: tinyproxy")
            && !text.contains("Portico-Error"),
        "{bin}: tinyproxy's 401 unchanged: {}",
        out.text()
    );
    let a = line_for(&p, "web", &origin.url());
    assert_eq!(a.err, None, "{bin}: {a:?}");
    assert_eq!(a.status, "401", "{bin}: {a:?}");

    let (p, [socks, web, _]) = portico(
        bin,
        &format!("kind = \"http\"\naddresses = [\"{}\"]", parent.addr()),
        &origin,
    );
    let out = curl(
        bin,
        &["-p", "-x", &format!("http://{web}"), "-v"],
        &origin.url(),
    );
    assert!(
        !out.status.success() && out.stderr.contains("502"),
        "{bin}: CONNECT without credentials: {}",
        out.text()
    );
    assert!(
        out.stderr
            .to_ascii_lowercase()
            .contains("portico-error: parent-failed"),
        "{bin}: {}",
        out.text()
    );
    let out = via_socks(bin, socks, &origin.url());
    assert!(
        !out.status.success(),
        "{bin}: socks without credentials: {}",
        out.text()
    );
    let a = line_for(&p, "socks", &format!("localhost:{}", origin.addr.port()));
    assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
}

/// A parent whose first address has nothing listening: the second is
/// used, the first is marked down (`portico_parent_up` 0, `/parents`
/// says down) and the next connection goes straight to the second.
fn dead_first_address_fails_over(bin: Bin) {
    let origin = Origin::start();
    let parent = dante();
    let dead = local(free_port());
    let (p, [socks, _, status]) = portico(
        bin,
        &format!(
            "kind = \"socks5\"\naddresses = [\"{dead}\", \"{}\"]\ndown_after = 1\n\
             retry_after = \"5m\"",
            parent.addr()
        ),
        &origin,
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &origin.url()),
        "first connection",
    );
    expect_metric(
        bin,
        status,
        &format!("portico_parent_up{{parent=\"up\",address=\"{dead}\"}}"),
        "0",
    );
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_up{{parent=\"up\",address=\"{}\"}}",
            parent.addr()
        ),
        "1",
    );
    let json = status_get(bin, status, "/parents");
    assert!(
        json.contains(&format!("{{\"address\":\"{dead}\",\"state\":\"down\""))
            && json.contains(&format!(
                "{{\"address\":\"{}\",\"state\":\"up\"",
                parent.addr()
            )),
        "{bin}: /parents: {json}"
    );
    let page = status_get(bin, status, "/");
    assert!(
        page.contains(&format!("<td>{dead}</td><td>down</td>")),
        "{bin}: the status page shows the dead address down"
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &origin.url()),
        "second connection",
    );
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"{dead}\",result=\"refused\"}}"
        ),
        "1",
    );
    let _ = p;
}

// ---------------------------------------------------------------------------
// Every other service through a parent.

const GREETING: &[u8] = b"+OK greeter ready\r\n";

/// Greets with [`GREETING`], then answers every line with itself.
fn greeter() -> Acceptor {
    Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "greeter", |mut s, _| {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        if s.write_all(GREETING).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut line = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                line.push(b);
                if b == b'\n' {
                    if s.write_all(&line).is_err() {
                        return;
                    }
                    line.clear();
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Reads from `s` until `want` has arrived (or fails saying what came).
fn read_until(bin: Bin, s: &mut TcpStream, want: &[u8], what: &str) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "{bin}: {what}: waiting for {:?}, got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// mapped TCP, smtp, nntp, pop3 and telnet services, each `via` a dante
/// parent, reach a server named `localhost` through it: the server's
/// greeting and echo come back, and each access line names the parent.
fn gateways_through_a_parent(bin: Bin) {
    let server = greeter();
    let dest = format!("localhost:{}", server.port());
    let parent = dante();
    let (p, ports) =
        start_on_free_ports(bin, 5, StartOptions::default(), |ports| {
            let via = "via = \"up\"";
            format!(
            "{}\n[[parent]]\nname = \"up\"\nkind = \"socks5\"\naddresses = [\"{}\"]\n{}{}{}{}{}",
            config_head("", ""),
            parent.addr(),
            service("map", "mapped", ports[0], &format!("destination = \"{dest}\"\n{via}")),
            service("mail", "smtp", ports[1], &format!("destination = \"{dest}\"\n{via}")),
            service("news", "nntp", ports[2], &format!("destination = \"{dest}\"\n{via}")),
            service("pop", "pop3", ports[3], via),
            service("tel", "telnet", ports[4], via),
        )
        });
    for (i, name) in ["map", "mail", "news"].into_iter().enumerate() {
        let mut c = connect(local(ports[i])).unwrap_or_else(|e| panic!("{bin}: {name}: {e}"));
        read_until(bin, &mut c, GREETING, name);
        c.write_all(b"PING one\r\n").expect("write");
        read_until(bin, &mut c, b"PING one\r\n", name);
        drop(c);
    }
    let mut c = connect(local(ports[3])).expect("pop3");
    read_until(bin, &mut c, b"+OK", "pop3 greeting");
    c.write_all(format!("USER alice#{dest}\r\n").as_bytes())
        .expect("write");
    // The server's answer to USER (an echo here) is relayed.
    read_until(
        bin,
        &mut c,
        b"USER alice\r\n",
        "pop3 USER through the parent",
    );
    drop(c);
    let mut c = connect(local(ports[4])).expect("telnet");
    read_until(bin, &mut c, b"portico> ", "telnet prompt");
    c.write_all(format!("connect localhost {}\r\n", server.port()).as_bytes())
        .expect("write");
    read_until(bin, &mut c, GREETING, "telnet through the parent");
    c.write_all(b"PING two\r\n").expect("write");
    read_until(bin, &mut c, b"PING two\r\n", "telnet echo");
    drop(c);
    for name in ["map", "mail", "news", "pop", "tel"] {
        let a = p.expect_access(name, "a line via the parent", SHOW_LIMIT, |a| {
            a.via.is_some()
        });
        assert_eq!(a.via.as_deref(), Some("up"), "{bin}: {name}: {a:?}");
        assert_eq!(
            a.destination,
            parent.addr().to_string(),
            "{bin}: {name}: {a:?}"
        );
        assert_eq!(a.err, None, "{bin}: {name}: {a:?}");
    }
}

/// An FTP server (pyftpdlib) through a socks5 parent: the control
/// connection and a passive download's data connection both go through
/// the parent, to the server's name.
fn ftp_through_a_parent(bin: Bin) {
    let py = portico_tests::require_python_module(
        "pyftpdlib",
        "the PyPI package `pyftpdlib` (pip install pyftpdlib)",
    );
    let home = TempDir::new();
    home.write("file.txt", "hello over ftp through a parent\n");
    let ftp_port = free_port();
    let script = "import sys\n\
        from pyftpdlib.authorizers import DummyAuthorizer\n\
        from pyftpdlib.handlers import FTPHandler\n\
        from pyftpdlib.servers import FTPServer\n\
        a = DummyAuthorizer(); a.add_user('alice', 'secret', sys.argv[2], perm='elr')\n\
        FTPHandler.authorizer = a\n\
        FTPServer(('127.0.0.1', int(sys.argv[1])), FTPHandler).serve_forever(timeout=0.5)\n";
    let mut server = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(ftp_port.to_string())
        .arg(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: cannot start pyftpdlib: {e}"));
    let up = poll_until(START_LIMIT, Duration::from_millis(50), || {
        connect(local(ftp_port)).ok()
    });
    let parent = dante();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(up.is_some(), "{bin}: pyftpdlib does not listen");
        let (p, [gw]) = {
            let (p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
                format!(
                    "{}\n[[parent]]\nname = \"up\"\nkind = \"socks5\"\naddresses = [\"{}\"]\n{}",
                    config_head("", ""),
                    parent.addr(),
                    service("files", "ftp", ports[0], "via = \"up\""),
                )
            });
            (p, [local(ports[0])])
        };
        let user = format!("alice%40localhost%3A{ftp_port}");
        let out = curl(bin, &[], &format!("ftp://{user}:secret@{gw}/file.txt"));
        assert!(
            out.status.success() && out.stdout == b"hello over ftp through a parent\n",
            "{bin}: curl through the ftp gateway: {}",
            out.text()
        );
        let data = p.expect_access("files", "the data connection", SHOW_LIMIT, |a| {
            a.method == "FTP-DATA"
        });
        assert_eq!(data.via.as_deref(), Some("up"), "{bin}: {data:?}");
        assert_eq!(
            data.destination,
            parent.addr().to_string(),
            "{bin}: {data:?}"
        );
        let control = p.expect_access("files", "the control connection", SHOW_LIMIT, |a| {
            a.method == "FTP"
        });
        assert_eq!(control.via.as_deref(), Some("up"), "{bin}: {control:?}");
    }));
    let _ = server.kill();
    let _ = server.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// `send_proxy_protocol` puts a PROXY header first on every connection to
/// the parent: squid with `require-proxy-header` serves through a parent
/// that sends one, and refuses one that does not (parent-failed).
fn send_proxy_protocol_to_squid(bin: Bin) {
    let origin = Origin::start();
    let parent = Parent::start(
        "squid",
        require("squid", "squid"),
        Some(&|port, dir| {
            format!(
                "http_port 127.0.0.1:{port} require-proxy-header\n\
                 proxy_protocol_access allow all\n\
                 http_access allow all\n\
                 cache deny all\n\
                 cache_mem 1 MB\n\
                 pid_filename none\n\
                 access_log {dir}/access.log\n\
                 cache_log {dir}/cache.log\n\
                 cache_store_log none\n\
                 coredump_dir {dir}\n\
                 cache_effective_user proxy\n\
                 shutdown_lifetime 0 seconds\n\
                 pinger_enable off\n"
            )
        }),
        &|_, dir| vec!["-N".into(), "-f".into(), format!("{dir}/squid.conf")],
    );
    for version in ["v1", "v2"] {
        let (_p, [socks, _, _]) = portico(
            bin,
            &format!(
                "kind = \"http\"\naddresses = [\"{}\"]\nsend_proxy_protocol = \"{version}\"",
                parent.addr()
            ),
            &origin,
        );
        assert_hello(
            bin,
            &via_socks(bin, socks, &origin.url()),
            &format!("through squid with a PROXY {version} header"),
        );
    }
    let (p, [socks, _, _]) = portico(
        bin,
        &format!("kind = \"http\"\naddresses = [\"{}\"]", parent.addr()),
        &origin,
    );
    let out = via_socks(bin, socks, &origin.url());
    assert!(
        !out.status.success(),
        "{bin}: no PROXY header: {}",
        out.text()
    );
    let a = line_for(&p, "socks", &format!("localhost:{}", origin.addr.port()));
    assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
}

both!(
    gateways_through_a_parent,
    ftp_through_a_parent,
    send_proxy_protocol_to_squid,
);

// ---------------------------------------------------------------------------
// A parent that demands credentials Portico holds wrong.

/// Squid with Basic authentication over an htpasswd file (user gw,
/// password pw), checked by its own basic_ncsa_auth.
fn squid_with_login() -> Parent {
    let mut cmd = Command::new(require("openssl", "openssl"));
    cmd.args(["passwd", "-apr1", "-stdin"]);
    let out = run_tool("openssl passwd", cmd, Some(b"pw"), TOOL_LIMIT);
    assert!(out.status.success(), "openssl passwd: {}", out.text());
    let line = format!("gw:{}\n", out.stdout_text().trim());
    let ncsa = "/usr/lib/squid/basic_ncsa_auth";
    assert!(
        std::path::Path::new(ncsa).exists(),
        "{ncsa} is missing: this test needs the Debian package squid"
    );
    Parent::start(
        "squid",
        require("squid", "squid"),
        Some(&|port, dir| {
            std::fs::write(format!("{dir}/htpasswd"), &line)
                .unwrap_or_else(|e| panic!("write {dir}/htpasswd: {e}"));
            format!(
                "http_port 127.0.0.1:{port}\n\
                 auth_param basic program {ncsa} {dir}/htpasswd\n\
                 auth_param basic realm parent\n\
                 acl authed proxy_auth REQUIRED\n\
                 http_access allow authed\n\
                 http_access deny all\n\
                 cache deny all\n\
                 cache_mem 1 MB\n\
                 pid_filename none\n\
                 access_log {dir}/access.log\n\
                 cache_log {dir}/cache.log\n\
                 cache_store_log none\n\
                 coredump_dir {dir}\n\
                 cache_effective_user proxy\n\
                 shutdown_lifetime 0 seconds\n\
                 pinger_enable off\n"
            )
        }),
        &|_, dir| vec!["-N".into(), "-f".into(), format!("{dir}/squid.conf")],
    )
}

/// Squid demands a login: with Portico's user and password right, plain
/// requests (absolute form with Proxy-Authorization) and CONNECT work;
/// with them wrong, squid's 407 becomes 502 parent-failed for a plain
/// request, and CONNECT fails parent-failed too.
fn squid_demands_credentials(bin: Bin) {
    let origin = Origin::start();
    let parent = squid_with_login();
    let (_p, [socks, web, _]) = portico(
        bin,
        &format!(
            "kind = \"http\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"pw\"",
            parent.addr()
        ),
        &origin,
    );
    assert_hello(
        bin,
        &via_http(bin, web, &origin.url()),
        "GET via squid with a login",
    );
    assert_hello(
        bin,
        &via_connect(bin, web, &origin.url()),
        "CONNECT via squid with a login",
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &origin.url()),
        "socks via squid with a login",
    );

    let (p, [_, web, _]) = portico(
        bin,
        &format!(
            "kind = \"http\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"wrong\"",
            parent.addr()
        ),
        &origin,
    );
    let out = curl(bin, &["-x", &format!("http://{web}"), "-i"], &origin.url());
    let text = out.stdout_text();
    assert!(
        text.starts_with("HTTP/1.1 502") && text.contains("Portico-Error: parent-failed"),
        "{bin}: squid's 407 for Portico's credentials: {}",
        out.text()
    );
    let a = line_for(&p, "web", &origin.url());
    assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
    assert_eq!(a.status, "502", "{bin}: {a:?}");
    let out = curl(
        bin,
        &["-p", "-x", &format!("http://{web}"), "-v"],
        &origin.url(),
    );
    assert!(
        !out.status.success()
            && out.stderr.contains("502")
            && out
                .stderr
                .to_ascii_lowercase()
                .contains("portico-error: parent-failed"),
        "{bin}: CONNECT with wrong credentials: {}",
        out.text()
    );
}

both!(squid_demands_credentials);

// ---------------------------------------------------------------------------
// Rules, reloads and picking.

/// A rule's `via` wins over the service's: `via = "direct"` on a rule
/// bypasses the service's dead parent; after a reload a rule sends a
/// service without `via` through a parent that works.
fn rules_via_and_reload(bin: Bin) {
    let origin = Origin::start();
    let parent = dante();
    let dead = local(free_port());
    let by_address = format!("http://127.0.0.1:{}/hello", origin.addr.port());
    let config = |socks: u16, parent_at: SocketAddr, service_via: &str, rule_via: (&str, &str)| {
        format!(
            "{}\n[[parent]]\nname = \"up\"\nkind = \"socks5\"\naddresses = [\"{parent_at}\"]\n{}\
             [[rule]]\naction = \"allow\"\ndestinations = [\"{}\"]\nvia = \"{}\"\n\
             [[rule]]\naction = \"allow\"\n",
            config_head("", ""),
            service("socks", "socks", socks, service_via),
            rule_via.0,
            rule_via.1,
        )
    };
    let (mut p, ports) = start_on_free_ports(bin, 1, StartOptions::default(), |ports| {
        config(ports[0], dead, "via = \"up\"", ("127.0.0.1", "direct"))
    });
    let socks = local(ports[0]);
    assert_hello(
        bin,
        &via_socks(bin, socks, &by_address),
        "a rule's via = direct",
    );
    let a = line_for(&p, "socks", &format!("127.0.0.1:{}", origin.addr.port()));
    assert_eq!((a.via.as_deref(), a.rule), (None, Some(1)), "{bin}: {a:?}");
    assert_eq!(a.destination, origin.addr.to_string(), "{bin}: {a:?}");
    let out = via_socks(bin, socks, &origin.url());
    assert!(
        !out.status.success(),
        "{bin}: the service's dead parent: {}",
        out.text()
    );
    let a = line_for(&p, "socks", &format!("localhost:{}", origin.addr.port()));
    assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
    assert_eq!(
        (a.via.as_deref(), a.rule),
        (Some("up"), Some(2)),
        "{bin}: {a:?}"
    );

    // Reload: no via on the service, a rule sends localhost through dante.
    std::fs::write(
        p.config_path(),
        config(ports[0], parent.addr(), "", ("localhost", "up")),
    )
    .expect("rewrite the configuration");
    p.signal(libc::SIGHUP);
    let served = poll_until(SHOW_LIMIT, Duration::from_millis(100), || {
        let out = via_socks(bin, socks, &origin.url());
        (out.status.success() && out.stdout == HELLO).then_some(())
    });
    assert!(
        served.is_some(),
        "{bin}: after the reload:\n{}",
        p.stderr_text()
    );
    let a = p.expect_access("socks", "a line through dante", SHOW_LIMIT, |a| {
        a.destination == parent.addr().to_string()
    });
    assert_eq!(
        (a.via.as_deref(), a.rule),
        (Some("up"), Some(1)),
        "{bin}: {a:?}"
    );
    assert_hello(
        bin,
        &via_socks(bin, socks, &by_address),
        "no via after the reload",
    );
    let direct = p.expect_access("socks", "a direct line after the reload", SHOW_LIMIT, |a| {
        a.target == format!("127.0.0.1:{}", origin.addr.port()) && a.rule == Some(2)
    });
    assert_eq!(direct.via, None, "{bin}: {direct:?}");
    let _ = &mut p;
}

/// `pick = "round-robin"` takes turns per new connection between two
/// parents, one of them listed by name.
fn round_robin_takes_turns(bin: Bin) {
    let origin = Origin::start();
    let (a, b) = (dante(), dante());
    let (p, [socks, _, status]) = portico(
        bin,
        &format!(
            "kind = \"socks5\"\naddresses = [\"{}\", \"localhost:{}\"]\npick = \"round-robin\"",
            a.addr(),
            b.port
        ),
        &origin,
    );
    for i in 0..4 {
        assert_hello(
            bin,
            &via_socks(bin, socks, &origin.url()),
            &format!("connection {i}"),
        );
    }
    let lines = p.expect_access_lines("socks", 4, SHOW_LIMIT, |l| l.via.is_some());
    let peers: Vec<String> = lines.iter().map(|l| l.destination.clone()).collect();
    let (pa, pb) = (a.addr().to_string(), b.addr().to_string());
    assert_eq!(peers, [pa.as_str(), &pb, &pa, &pb], "{bin}: {lines:?}");
    // The metrics name each address as the file writes it.
    expect_metric(bin, status, &connects(a.addr(), "ok"), "2");
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"localhost:{}\",result=\"ok\"}}",
            b.port
        ),
        "2",
    );
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_up{{parent=\"up\",address=\"localhost:{}\"}}",
            b.port
        ),
        "1",
    );
}

both!(rules_via_and_reload, round_robin_takes_turns);

/// Every gateway says parent-failed in its own words for an unreachable
/// server when its parent's only address is dead; a mapped port just
/// closes; each line says `via=up err=parent-failed` (telnet's prompt
/// comes back instead).
fn gateways_say_parent_failed(bin: Bin) {
    let dead = local(free_port());
    let dest = format!("localhost:{}", free_port());
    let (p, ports) = start_on_free_ports(bin, 6, StartOptions::default(), |ports| {
        let via = "via = \"up\"";
        format!(
            "{}\n[[parent]]\nname = \"up\"\nkind = \"socks5\"\naddresses = [\"{dead}\"]\n\
             {}{}{}{}{}{}",
            config_head("", ""),
            service(
                "map",
                "mapped",
                ports[0],
                &format!("destination = \"{dest}\"\n{via}")
            ),
            service(
                "mail",
                "smtp",
                ports[1],
                &format!("destination = \"{dest}\"\n{via}")
            ),
            service(
                "news",
                "nntp",
                ports[2],
                &format!("destination = \"{dest}\"\n{via}")
            ),
            service("pop", "pop3", ports[3], via),
            service("tel", "telnet", ports[4], via),
            service("files", "ftp", ports[5], via),
        )
    });
    let mut c = connect(local(ports[0])).expect("mapped");
    let _ = c.set_read_timeout(Some(IO_TIMEOUT));
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "{bin}: mapped closes without a word: {rest:?}"
    );
    for (i, words) in [
        (
            1,
            &b"421 4.3.0 mail server unavailable, try again later\r\n"[..],
        ),
        (2, b"400 news server unavailable\r\n"),
    ] {
        let mut c = connect(local(ports[i])).expect("connect");
        read_until(bin, &mut c, words, "the gateway's words");
    }
    let mut c = connect(local(ports[3])).expect("pop3");
    read_until(bin, &mut c, b"+OK", "pop3 greeting");
    c.write_all(format!("USER alice#{dest}\r\n").as_bytes())
        .expect("write");
    read_until(
        bin,
        &mut c,
        format!("-ERR cannot reach mail server {dest}\r\n").as_bytes(),
        "pop3",
    );
    let mut c = connect(local(ports[4])).expect("telnet");
    read_until(bin, &mut c, b"portico> ", "telnet prompt");
    c.write_all(format!("connect {}\r\n", dest.replace(':', " ")).as_bytes())
        .expect("write");
    read_until(
        bin,
        &mut c,
        format!("cannot connect to {dest}: parent proxy failed").as_bytes(),
        "telnet",
    );
    drop(c);
    let mut c = connect(local(ports[5])).expect("ftp");
    read_until(bin, &mut c, b"220 ", "ftp greeting");
    c.write_all(format!("USER alice@{dest}\r\n").as_bytes())
        .expect("write");
    read_until(
        bin,
        &mut c,
        format!("421 cannot reach ftp server {dest}\r\n").as_bytes(),
        "ftp",
    );
    // The telnet gateway prompted again: its line says how the session
    // ended (the client left), as for a direct try that failed.
    let a = p.expect_access("tel", "the telnet line", SHOW_LIMIT, |_| true);
    assert_eq!((&a.err, &a.via), (&None, &None), "{bin}: {a:?}");
    for name in ["map", "mail", "news", "pop", "files"] {
        let a = p.expect_access(name, "a parent-failed line", SHOW_LIMIT, |a| {
            a.err.is_some()
        });
        assert_eq!(
            (a.err.as_deref(), a.via.as_deref(), a.status.as_str()),
            (Some("parent-failed"), Some("up"), "parent-failed"),
            "{bin}: {name}: {a:?}"
        );
    }
}

both!(gateways_say_parent_failed);

/// `pick = "client-hash"`: every connection from one client address goes
/// to the same parent address (which one the hash picks is not promised);
/// round-robin would alternate.
fn client_hash_keeps_a_client_on_one_address(bin: Bin) {
    let origin = Origin::start();
    let (a, b) = (dante(), dante());
    let (p, [socks, _, _]) = portico(
        bin,
        &format!(
            "kind = \"socks5\"\naddresses = [\"{}\", \"{}\"]\npick = \"client-hash\"",
            a.addr(),
            b.addr()
        ),
        &origin,
    );
    let peers = [a.addr().to_string(), b.addr().to_string()];
    for client in ["127.0.0.1", "127.0.0.2"] {
        for i in 0..3 {
            let out = curl(
                bin,
                &[
                    "--interface",
                    client,
                    "--socks5-hostname",
                    &socks.to_string(),
                ],
                &origin.url(),
            );
            assert_hello(bin, &out, &format!("{client}: connection {i}"));
        }
        let ip: IpAddr = client.parse().expect("an address");
        let lines = p.expect_access_lines("socks", 3, SHOW_LIMIT, |l| l.client.ip() == ip);
        let first = &lines[0].destination;
        assert!(peers.contains(first), "{bin}: {client}: {lines:?}");
        assert!(
            lines.iter().all(|l| &l.destination == first),
            "{bin}: {client} went to more than one parent address: {lines:?}"
        );
    }
}

/// An address marked down (nothing listening, `down_after = 1`) is tried
/// again after `retry_after`: once a parent listens there it is used and
/// counted up again.
fn a_down_address_comes_back(bin: Bin) {
    let origin = Origin::start();
    let port = free_port();
    let dead = local(port);
    let (p, [socks, _, status]) = portico(
        bin,
        &format!(
            "kind = \"socks5\"\naddresses = [\"{dead}\"]\ndown_after = 1\nretry_after = \"1s\""
        ),
        &origin,
    );
    let up = format!("portico_parent_up{{parent=\"up\",address=\"{dead}\"}}");
    let out = via_socks(bin, socks, &origin.url());
    assert!(
        !out.status.success(),
        "{bin}: no parent yet: {}",
        out.text()
    );
    expect_metric(bin, status, &up, "0");
    expect_metric(
        bin,
        status,
        &format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"{dead}\",result=\"refused\"}}"
        ),
        "1",
    );
    let parent = dante_on(port);
    let served = poll_until(SHOW_LIMIT, Duration::from_millis(200), || {
        let out = via_socks(bin, socks, &origin.url());
        (out.status.success() && out.stdout == HELLO).then_some(())
    });
    assert!(
        served.is_some(),
        "{bin}: the address is not used again after retry_after; /parents: {}",
        status_get(bin, status, "/parents")
    );
    expect_metric(bin, status, &up, "1");
    expect_metric(
        bin,
        status,
        &format!("portico_parent_connects_total{{parent=\"up\",address=\"{dead}\",result=\"ok\"}}"),
        "1",
    );
    let a = p.expect_access("socks", "a line through the parent", SHOW_LIMIT, |a| {
        a.err.is_none() && a.via.is_some()
    });
    assert_eq!(a.destination, dead.to_string(), "{bin}: {a:?}");
    drop(parent);
}

both!(
    client_hash_keeps_a_client_on_one_address,
    a_down_address_comes_back
);

// ---------------------------------------------------------------------------
// Parents written here, for what a real one cannot show: exactly what
// Portico says to its parent, and answers a real one gives only by chance.

/// The name the scripted parents are asked for: it resolves nowhere, so a
/// connection only works if Portico hands it over unresolved.
const PARENT_ONLY: &str = "only.parent.test";
/// The destination port: the http service's default CONNECT port.
const DEST_PORT: u16 = 443;

/// A parent speaking http or socks5 that answers every request the same
/// way; after a 2xx CONNECT or a SOCKS5 success it echoes. It keeps, per
/// connection, every byte read before that (a PROXY header, the
/// requests), as they arrive.
struct Scripted {
    acceptor: Acceptor,
    seen: Seen,
}

/// What each connection said: (its number from 1, the bytes).
type Seen = Arc<std::sync::Mutex<Vec<(u64, Vec<u8>)>>>;

/// Where one connection's bytes are kept.
struct Log {
    seen: Seen,
    n: u64,
}

impl Log {
    fn add(&self, bytes: &[u8]) {
        let mut all = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter_mut().find(|(k, _)| *k == self.n) {
            Some((_, b)) => b.extend_from_slice(bytes),
            None => all.push((self.n, bytes.to_vec())),
        }
    }

    /// Reads exactly `n` bytes, kept.
    fn take(&self, s: &mut TcpStream, n: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b)?;
        self.add(&b);
        Ok(b)
    }
}

impl Scripted {
    /// An http parent answering a CONNECT with `connect` and every plain
    /// request of a connection with `plain`.
    fn http(connect: &'static str, plain: &'static str) -> Scripted {
        Scripted::start(move |s, log| {
            proxy_header(s, log)?;
            loop {
                let head = read_head(s)?;
                log.add(&head);
                if !head.starts_with(b"CONNECT ") {
                    s.write_all(plain.as_bytes())?;
                    continue;
                }
                s.write_all(connect.as_bytes())?;
                return if connect.starts_with("HTTP/1.1 2") {
                    echo(s)
                } else {
                    Ok(())
                };
            }
        })
    }

    /// A SOCKS5 parent (no authentication) answering with `code`.
    fn socks5(code: u8) -> Scripted {
        Scripted::start(move |s, log| {
            let g = log.take(s, 2)?;
            log.take(s, usize::from(g[1]))?;
            s.write_all(&[5, 0])?;
            let r = log.take(s, 4)?;
            let len = match r[3] {
                1 => 4,
                4 => 16,
                _ => usize::from(log.take(s, 1)?[0]),
            };
            log.take(s, len + 2)?;
            s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0])?;
            if code == 0 {
                echo(s)?;
            }
            Ok(())
        })
    }

    fn start(
        serve: impl Fn(&mut TcpStream, &Log) -> io::Result<()> + Send + Sync + 'static,
    ) -> Scripted {
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        let acceptor = Acceptor::start(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "scripted parent",
            move |mut s, n| {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                let log = Log {
                    seen: kept.clone(),
                    n,
                };
                log.add(b"");
                // A client that goes away ends it; the test judges what
                // was kept.
                let _ = serve(&mut s, &log);
            },
        );
        Scripted { acceptor, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// What each connection said, in the order they came.
    fn seen(&self) -> Vec<Vec<u8>> {
        let mut all = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        all.sort_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, b)| b).collect()
    }
}

/// Reads a PROXY header if one comes first (v1 or v2), kept.
fn proxy_header(s: &mut TcpStream, log: &Log) -> io::Result<()> {
    const V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let mut first = [0u8; 6];
    let mut n = 0;
    // peek may return fewer bytes than have been sent so far.
    let deadline = Instant::now() + IO_TIMEOUT;
    while n < first.len() && Instant::now() < deadline {
        n = s.peek(&mut first)?;
        if n == 0 {
            return Ok(());
        }
        if n < first.len() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if first[..n] == V2[..n] {
        let fixed = log.take(s, 16)?;
        log.take(s, usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))?;
    } else if first[..n].starts_with(b"PROXY ") {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.extend(log.take(s, 1)?);
        }
    }
    Ok(())
}

/// Reads one request or response head, to its blank line.
fn read_head(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b)?;
        head.push(b[0]);
    }
    Ok(head)
}

fn echo(s: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

/// Portico with a socks service (`ports[0]`), an http service (`ports[1]`)
/// and a status service (`ports[2]`), all `via = "up"`; `limits` in
/// `[limits]`, `rules` after the services.
fn front(bin: Bin, limits: &str, parent: &str, rules: &str) -> (Portico, [SocketAddr; 3]) {
    let (p, ports) = start_on_free_ports(bin, 3, StartOptions::default(), |ports| {
        format!(
            "{}\n[[parent]]\nname = \"up\"\n{parent}\n{}{}{}{rules}",
            config_head(limits, ""),
            service("socks", "socks", ports[0], "via = \"up\""),
            service("web", "http", ports[1], "via = \"up\""),
            service("status", "status", ports[2], ""),
        )
    });
    (p, [local(ports[0]), local(ports[1]), local(ports[2])])
}

/// A SOCKS5 CONNECT (no authentication) through `socks` from `from` to
/// `host` (a name, or an IPv4 address) and port [`DEST_PORT`]: the reply
/// code and the stream.
fn socks5_to(bin: Bin, socks: SocketAddr, from: IpAddr, host: &str) -> (u8, TcpStream) {
    let mut s = portico_tests::connect_from(from, socks)
        .unwrap_or_else(|e| panic!("{bin}: connect to {socks}: {e}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = vec![5, 1, 0, 5, 1, 0];
    match host.parse::<Ipv4Addr>() {
        Ok(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            req.extend_from_slice(&[3, host.len() as u8]);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&DEST_PORT.to_be_bytes());
    s.write_all(&req)
        .unwrap_or_else(|e| panic!("{bin}: SOCKS5 request: {e}"));
    let mut r = [0u8; 12];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: SOCKS5 reply for {host}: {e}"));
    assert_eq!((r[0], r[1], r[2]), (5, 0, 5), "{bin}: {r:?}");
    (r[3], s)
}

/// Bytes go through an open tunnel to an echoing parent and back.
fn echoes(bin: Bin, s: &mut TcpStream, what: &str) {
    s.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{bin}: {what}: no echo: {e}"));
    assert_eq!(&back, b"ping", "{bin}: {what}");
}

fn connects(parent: SocketAddr, result: &str) -> String {
    format!(
        "portico_parent_connects_total{{parent=\"up\",address=\"{parent}\",result=\"{result}\"}}"
    )
}

const OK_200: &str = "HTTP/1.1 200 Connection established\r\n\r\n";
const NO_403: &str = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";

/// A parent address that black-holes (its SYNs dropped) costs one
/// `connect_timeout` and counts as `timeout`; the next address serves.
fn a_black_holed_parent_address_times_out(bin: Bin) {
    let hole_at = local(free_port());
    let _hole = BlackHole::open(hole_at);
    let good = Scripted::http(OK_200, NO_403);
    let (p, [socks, _, status]) = front(
        bin,
        "connect_timeout = \"2s\"",
        &format!(
            "kind = \"http\"\naddresses = [\"{hole_at}\", \"{}\"]",
            good.addr()
        ),
        "",
    );
    let (code, mut s) = socks5_to(bin, socks, IpAddr::V4(Ipv4Addr::LOCALHOST), PARENT_ONLY);
    assert_eq!(
        code,
        0,
        "{bin}: through the second address\n{}",
        p.stderr_text()
    );
    echoes(bin, &mut s, "after a black-holed first address");
    expect_metric(bin, status, &connects(hole_at, "timeout"), "1");
    expect_metric(bin, status, &connects(good.addr(), "ok"), "1");
}

/// A parent that answers CONNECT with 403 fails that attempt: the next
/// address serves, and the first counts as `rejected`. Each got the name,
/// unresolved.
fn a_parent_saying_no_moves_to_the_next_address(bin: Bin) {
    let (no, yes) = (
        Scripted::http(NO_403, NO_403),
        Scripted::http(OK_200, NO_403),
    );
    let (p, [socks, _, status]) = front(
        bin,
        "",
        &format!(
            "kind = \"http\"\naddresses = [\"{}\", \"{}\"]",
            no.addr(),
            yes.addr()
        ),
        "",
    );
    let (code, mut s) = socks5_to(bin, socks, IpAddr::V4(Ipv4Addr::LOCALHOST), PARENT_ONLY);
    assert_eq!(
        code,
        0,
        "{bin}: through the second address\n{}",
        p.stderr_text()
    );
    echoes(bin, &mut s, "after a parent said no");
    expect_metric(bin, status, &connects(no.addr(), "rejected"), "1");
    expect_metric(bin, status, &connects(yes.addr(), "ok"), "1");
    let want = format!("CONNECT {PARENT_ONLY}:{DEST_PORT} HTTP/1.1\r\n");
    for parent in [&no, &yes] {
        let seen = parent.seen();
        assert!(
            seen.len() == 1 && seen[0].starts_with(want.as_bytes()),
            "{bin}: the parent at {} got {:?}",
            parent.addr(),
            seen.iter()
                .map(|b| String::from_utf8_lossy(b))
                .collect::<Vec<_>>()
        );
    }
    drop(s);
    let a = p.expect_access("socks", "the line", SHOW_LIMIT, |_| true);
    assert_eq!(a.destination, yes.addr().to_string(), "{bin}: {a:?}");
}

/// When the parent fails the request, a SOCKS5 client gets the SOCKS5
/// parent's own reply code, a SOCKS4 client 0x5B; with no reply code
/// (nothing listening) a SOCKS5 client gets 0x01. Each line says
/// `via=up err=parent-failed`.
fn socks_clients_get_the_parents_words(bin: Bin) {
    let parent = Scripted::socks5(0x03);
    let (p, [socks, _, _]) = front(
        bin,
        "",
        &format!("kind = \"socks5\"\naddresses = [\"{}\"]", parent.addr()),
        "",
    );
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (code, s) = socks5_to(bin, socks, lo, PARENT_ONLY);
    assert_eq!(code, 0x03, "{bin}: the parent's own code");
    let me = s.local_addr().expect("local address");
    drop(s);
    let a = p.access_of("socks", me, SHOW_LIMIT);
    assert_eq!(
        (a.err.as_deref(), a.via.as_deref()),
        (Some("parent-failed"), Some("up")),
        "{bin}: {a:?}"
    );
    // The name went to the parent as a SOCKS5 domain name.
    let mut want = vec![5, 1, 0, 3, PARENT_ONLY.len() as u8];
    want.extend_from_slice(PARENT_ONLY.as_bytes());
    want.extend_from_slice(&DEST_PORT.to_be_bytes());
    assert!(
        parent.seen()[0].ends_with(&want),
        "{bin}: the parent got {:?}",
        parent.seen()
    );

    let mut s = connect(socks).expect("connect");
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    s.write_all(&[4, 1, 1, 187, 127, 0, 0, 1, 0])
        .expect("SOCKS4 request");
    let mut r = [0u8; 8];
    s.read_exact(&mut r).expect("SOCKS4 reply");
    assert_eq!(r[1], 0x5B, "{bin}: SOCKS4 refused: {r:?}");

    let dead = local(free_port());
    let (p, [socks, _, _]) = front(
        bin,
        "",
        &format!("kind = \"socks5\"\naddresses = [\"{dead}\"]"),
        "",
    );
    let (code, s) = socks5_to(bin, socks, lo, PARENT_ONLY);
    assert_eq!(code, 0x01, "{bin}: no code from a parent: general failure");
    let a = p.access_of("socks", s.local_addr().expect("local address"), SHOW_LIMIT);
    assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
}

/// `send_proxy_protocol = "v2"` and credentials: every connection to the
/// parent starts with a PROXY v2 header naming the LAN client and the
/// address it reached; a CONNECT (for a socks client) carries the name
/// and `Proxy-Authorization`, and plain requests go in absolute form with
/// it, two over one kept-alive connection.
fn proxy_header_and_credentials_to_an_http_parent(bin: Bin) {
    let parent = Scripted::http(
        OK_200,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
    );
    let (p, [socks, web, _]) = front(
        bin,
        "",
        &format!(
            "kind = \"http\"\naddresses = [\"{}\"]\nuser = \"gw\"\npassword = \"pw\"\n\
             send_proxy_protocol = \"v2\"",
            parent.addr()
        ),
        "",
    );
    let lan = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let (code, mut s) = socks5_to(bin, socks, lan, PARENT_ONLY);
    assert_eq!(
        code,
        0,
        "{bin}: CONNECT through the parent\n{}",
        p.stderr_text()
    );
    echoes(bin, &mut s, "the tunnel");
    let client = s.local_addr().expect("local address");
    let v2 = |src: SocketAddr, dst: SocketAddr| {
        let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
            panic!("IPv4 only")
        };
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        h.extend_from_slice(&s.ip().octets());
        h.extend_from_slice(&d.ip().octets());
        h.extend_from_slice(&s.port().to_be_bytes());
        h.extend_from_slice(&d.port().to_be_bytes());
        h
    };
    let auth = "Proxy-Authorization: Basic Z3c6cHc=\r\n";
    let want = [
        v2(client, socks),
        format!("CONNECT {PARENT_ONLY}:{DEST_PORT} HTTP/1.1\r\n").into_bytes(),
    ]
    .concat();
    let seen = parent.seen();
    assert!(
        seen[0].starts_with(&want) && String::from_utf8_lossy(&seen[0]).contains(auth),
        "{bin}: the CONNECT connection began {:?}, want {:?} and {auth:?}",
        String::from_utf8_lossy(&seen[0]),
        String::from_utf8_lossy(&want)
    );
    drop(s);

    let mut c = portico_tests::connect_from(lan, web).expect("connect to web");
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let url = format!("http://{PARENT_ONLY}/page");
    for _ in 0..2 {
        c.write_all(format!("GET {url} HTTP/1.1\r\nHost: {PARENT_ONLY}\r\n\r\n").as_bytes())
            .expect("request");
        let head = read_head(&mut c).unwrap_or_else(|e| panic!("{bin}: no answer: {e}"));
        let mut body = [0u8; 2];
        c.read_exact(&mut body).expect("body");
        assert!(
            head.starts_with(b"HTTP/1.1 200") && &body == b"ok",
            "{bin}: {}",
            String::from_utf8_lossy(&head)
        );
    }
    let client = c.local_addr().expect("local address");
    let seen = parent.seen();
    assert_eq!(seen.len(), 2, "{bin}: one connection per client connection");
    let text = String::from_utf8_lossy(&seen[1]).into_owned();
    assert!(
        seen[1].starts_with(&v2(client, web))
            && text.matches(&format!("GET {url} HTTP/1.1\r\n")).count() == 2
            && text.matches(auth).count() == 2,
        "{bin}: the plain requests' connection: {text:?}"
    );
}

/// A 407 a parent gives to a forwarded plain request goes to the client
/// unchanged when Portico holds no credentials for it; with credentials
/// it is 502 `parent-failed`.
fn a_parents_407_without_credentials_is_the_answer(bin: Bin) {
    let parent = Scripted::http(
        NO_403,
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"parent\"\r\nContent-Length: 0\r\n\r\n",
    );
    let url = format!("http://{PARENT_ONLY}/page");
    for (creds, want) in [("", "407"), ("user = \"gw\"\npassword = \"pw\"", "502")] {
        let (p, [_, web, _]) = front(
            bin,
            "",
            &format!(
                "kind = \"http\"\naddresses = [\"{}\"]\n{creds}",
                parent.addr()
            ),
            "",
        );
        let out = curl(bin, &["-x", &format!("http://{web}"), "-i"], &url);
        let text = out.stdout_text();
        assert!(
            text.starts_with(&format!("HTTP/1.1 {want}")),
            "{bin}: credentials {creds:?}: {}",
            out.text()
        );
        let a = line_for(&p, "web", &format!("http://{PARENT_ONLY}:80/page"));
        assert_eq!(a.status, want, "{bin}: {a:?}");
        if want == "407" {
            assert!(
                text.contains("Proxy-Authenticate: Basic realm=\"parent\"")
                    && !text.contains("Portico-Error"),
                "{bin}: the parent's 407 unchanged: {text}"
            );
            assert_eq!(a.err, None, "{bin}: {a:?}");
        } else {
            assert!(
                text.contains("Portico-Error: parent-failed"),
                "{bin}: {text}"
            );
            assert_eq!(a.err.as_deref(), Some("parent-failed"), "{bin}: {a:?}");
        }
    }
}

/// Through a parent the rules see the name as given: a name pattern
/// denies it before any parent is asked, and a network pattern matches a
/// literal address only (the name is not resolved to be checked).
fn rules_see_a_name_through_a_parent(bin: Bin) {
    let parent = Scripted::socks5(0);
    let rules =
        "[[rule]]\naction = \"deny\"\ndestinations = [\"127.0.0.0/8\", \"*.blocked.test\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let (p, [socks, _, _]) = front(
        bin,
        "",
        &format!("kind = \"socks5\"\naddresses = [\"{}\"]", parent.addr()),
        rules,
    );
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for host in ["127.0.0.1", "x.blocked.test"] {
        let (code, s) = socks5_to(bin, socks, lo, host);
        assert_eq!(code, 0x02, "{bin}: {host} is denied");
        let a = p.access_of("socks", s.local_addr().expect("local address"), SHOW_LIMIT);
        assert_eq!(a.err.as_deref(), Some("denied"), "{bin}: {a:?}");
    }
    assert_eq!(
        parent.acceptor.accepted(),
        0,
        "{bin}: no parent is asked about a denied destination"
    );
    // localhost would be 127.0.0.1, were it resolved.
    let (code, mut s) = socks5_to(bin, socks, lo, "localhost");
    assert_eq!(code, 0, "{bin}: a name is not checked against networks");
    echoes(bin, &mut s, "localhost through the parent");
}

/// `down_after = 2`: one failure leaves an address up, the second in a
/// row marks it down, and then it is not tried (until `retry_after`).
fn down_after_counts_failures_in_a_row(bin: Bin) {
    let dead = local(free_port());
    let good = Scripted::socks5(0);
    let (_p, [socks, _, status]) = front(
        bin,
        "",
        &format!(
            "kind = \"socks5\"\naddresses = [\"{dead}\", \"{}\"]\ndown_after = 2\n\
             retry_after = \"5m\"",
            good.addr()
        ),
        "",
    );
    let up = format!("portico_parent_up{{parent=\"up\",address=\"{dead}\"}}");
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (i, (refused, is_up)) in [("1", "1"), ("2", "0"), ("2", "0")].into_iter().enumerate() {
        let (code, mut s) = socks5_to(bin, socks, lo, PARENT_ONLY);
        assert_eq!(code, 0, "{bin}: connection {i}");
        echoes(bin, &mut s, "through the second address");
        expect_metric(
            bin,
            status,
            &connects(good.addr(), "ok"),
            &(i + 1).to_string(),
        );
        expect_metric(bin, status, &connects(dead, "refused"), refused);
        expect_metric(bin, status, &up, is_up);
    }
}

/// With every address down, a connection fails `parent-failed` at once,
/// no address tried; once `retry_after` has passed the address is tried
/// again.
fn all_addresses_down_fails_at_once(bin: Bin) {
    let dead = local(free_port());
    let (p, [socks, _, status]) = front(
        bin,
        "",
        &format!(
            "kind = \"socks5\"\naddresses = [\"{dead}\"]\ndown_after = 1\nretry_after = \"5m\""
        ),
        "",
    );
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for i in 0..2 {
        let (code, s) = socks5_to(bin, socks, lo, PARENT_ONLY);
        assert_eq!(code, 0x01, "{bin}: connection {i}");
        let a = p.access_of("socks", s.local_addr().expect("local address"), SHOW_LIMIT);
        assert_eq!(
            (a.err.as_deref(), a.via.as_deref()),
            (Some("parent-failed"), Some("up")),
            "{bin}: connection {i}: {a:?}"
        );
    }
    // Only the first connection tried the address.
    expect_metric(bin, status, &connects(dead, "refused"), "1");
}

/// Every `[[parent]]` key and `via` is checked at start: a bad value, an
/// unknown key or an unknown name is refused (exit 2) at its line, saying
/// what is wrong.
fn bad_parent_configurations_are_refused(bin: Bin) {
    let head = "[network]\ninternal = [\"127.0.0.1\"]\n";
    let socks = service("s", "socks", free_port(), "");
    // A parent with `line` (in place of its kind when it sets one).
    let parent = |line: &str| {
        let kind = if line.starts_with("kind") {
            ""
        } else {
            "kind = \"socks5\"\n"
        };
        format!(
            "{head}[[parent]]\nname = \"up\"\n{kind}addresses = [\"127.0.0.1:1\"]\n{line}\n{socks}"
        )
    };
    for (line, words) in [
        ("kind = \"gopher\"", &["\"gopher\"", "socks4"][..]),
        ("pick = \"random\"", &["\"random\"", "client-hash"]),
        ("down_after = 0", &["down_after"]),
        ("retry_after = \"soon\"", &["retry_after", "not a duration"]),
        ("send_proxy_protocol = \"v3\"", &["\"v3\"", "\"v2\""]),
        ("password = \"x\"", &["password needs user"]),
        ("colour = \"red\"", &["unknown field `colour`"]),
    ] {
        portico_tests::expect_config_error(bin, &parent(line), line, words);
    }
    for (line, words) in [
        ("addresses = []", &["at least one"][..]),
        ("addresses = [\"nowhere\"]", &["no port"]),
    ] {
        let toml = format!("{head}[[parent]]\nname = \"up\"\nkind = \"http\"\n{line}\n{socks}");
        portico_tests::expect_config_error(bin, &toml, line, words);
    }
    let two = format!(
        "{head}[[parent]]\nname = \"up\"\nkind = \"http\"\naddresses = [\"127.0.0.1:1\"]\n\
         [[parent]]\nname = \"up\" # again\nkind = \"http\"\naddresses = [\"127.0.0.1:2\"]\n{socks}"
    );
    portico_tests::expect_config_error(bin, &two, "name = \"up\" # again", &["defined twice"]);
    let direct = format!(
        "{head}[[parent]]\nname = \"direct\"\nkind = \"http\"\naddresses = [\"127.0.0.1:1\"]\n{socks}"
    );
    portico_tests::expect_config_error(bin, &direct, "name = \"direct\"", &["\"direct\""]);
    // via naming no parent, on a service and on a rule.
    let on_service = format!(
        "{head}{}",
        service("s", "socks", free_port(), "via = \"nope\"")
    );
    let on_rule = format!("{head}{socks}[[rule]]\naction = \"allow\"\nvia = \"nope\"\n");
    for toml in [on_service, on_rule] {
        portico_tests::expect_config_error(
            bin,
            &toml,
            "via = \"nope\"",
            &["unknown parent 'nope'"],
        );
    }
}

both!(
    a_black_holed_parent_address_times_out,
    a_parent_saying_no_moves_to_the_next_address,
    socks_clients_get_the_parents_words,
    proxy_header_and_credentials_to_an_http_parent,
    a_parents_407_without_credentials_is_the_answer,
    rules_see_a_name_through_a_parent,
    down_after_counts_failures_in_a_row,
    all_addresses_down_fails_at_once,
    bad_parent_configurations_are_refused,
);
