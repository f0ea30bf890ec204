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
    run_tool, service, start_on_free_ports, Acceptor, Bin, Portico, StartOptions, TempDir,
    ToolOutput, IO_TIMEOUT,
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
    let (p, [socks, _, _]) = portico(
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
