//! Running as a service: giving up root once listening (`[process]`),
//! systemd's readiness protocol (`NOTIFY_SOCKET`), diagnostics with time
//! and level, the journal's priority prefixes and syslog, and SIGUSR1
//! opening the access log again.
//!
//! These tests run as root (as CI does): the privilege cases need it to
//! start as root and to open ports below 1024.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_tests::{
    both, connect, echo_check, free_port, local, poll_until, run_on_config, Behaviour, Bin,
    LineLog, Portico, StartOptions, TempDir, TestServer, START_TIMEOUT,
};

both!(
    drops_to_user_on_every_thread_and_reloads_low_ports,
    root_without_user_refuses_the_external_side,
    a_reload_as_root_refuses_the_external_side,
    unknown_user_exits_one,
    notifies_readiness_reload_status_and_stopping,
    diagnostics_carry_time_and_level,
    journal_stream_gives_priority_prefixes,
    syslog_takes_diagnostics_and_access_lines,
    sigusr1_reopens_the_access_log_without_reading_the_configuration,
    diagnostics_file_is_timestamped_and_reopened_on_sigusr1,
);

const WAIT: Duration = Duration::from_secs(10);

/// A port below 1024 free on 127.0.0.1 (the tests run as root).
fn low_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % 300;
    for _ in 0..300 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (700 + (start + n) % 300) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below 1024 on 127.0.0.1 (do the tests run as root?)")
}

/// uid of `user` and gid of `group`, from the system's databases.
fn ids(user: &str, group: &str) -> (u32, u32) {
    let u = CString::new(user).expect("a name without NUL");
    let g = CString::new(group).expect("a name without NUL");
    // SAFETY: getpwnam/getgrnam return null or a pointer to static data,
    // read at once; the tests call them from this thread only here.
    unsafe {
        let pw = libc::getpwnam(u.as_ptr());
        let gr = libc::getgrnam(g.as_ptr());
        assert!(
            !pw.is_null() && !gr.is_null(),
            "user {user} and group {group} must exist"
        );
        ((*pw).pw_uid, (*gr).gr_gid)
    }
}

/// The `Name:\tvalue` fields of one thread's status file.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Checks every thread of `pid`: all four user ids `uid`, group ids `gid`,
/// no supplementary groups, and CapEff and CapPrm exactly
/// CAP_NET_BIND_SERVICE (bit 10). Returns how many threads there are.
fn check_threads(bin: Bin, pid: u32, uid: u32, gid: u32) -> usize {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{bin}: {dir}: {e}"));
    let mut n = 0;
    for t in tasks {
        let t = t.unwrap_or_else(|e| panic!("{bin}: {dir}: {e}"));
        let path = t.path().join("status");
        // A thread that ended since the listing has nothing to check.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        n += 1;
        let name = field(&status, "Name").unwrap_or("?");
        let want_ids = format!("{uid}\t{uid}\t{uid}\t{uid}");
        assert_eq!(
            field(&status, "Uid"),
            Some(want_ids.as_str()),
            "{bin}: thread {name} ({path:?}) must run as uid {uid}\n{status}"
        );
        let want_ids = format!("{gid}\t{gid}\t{gid}\t{gid}");
        assert_eq!(
            field(&status, "Gid"),
            Some(want_ids.as_str()),
            "{bin}: thread {name} ({path:?}) must run as gid {gid}\n{status}"
        );
        assert_eq!(
            field(&status, "Groups"),
            Some(""),
            "{bin}: thread {name} must have no supplementary groups\n{status}"
        );
        for cap in ["CapEff", "CapPrm"] {
            let v = field(&status, cap)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .unwrap_or_else(|| panic!("{bin}: no {cap} in {path:?}\n{status}"));
            assert_eq!(
                v, 0x400,
                "{bin}: thread {name}: {cap} must be CAP_NET_BIND_SERVICE alone (0x400)\n{status}"
            );
        }
        for cap in ["CapInh", "CapAmb"] {
            if let Some(v) = field(&status, cap) {
                assert_eq!(
                    u64::from_str_radix(v, 16).ok(),
                    Some(0),
                    "{bin}: thread {name}: {cap} must be empty\n{status}"
                );
            }
        }
    }
    n
}

fn mapped(name: &str, port: u16, dest: std::net::SocketAddr) -> String {
    format!(
        "\n[[service]]\nname = \"{name}\"\nkind = \"mapped\"\nlisten = [\"127.0.0.1:{port}\"]\n\
         destination = \"{dest}\"\n"
    )
}

/// `[process] user = "nobody"`, `group = "nogroup"`: once listening on a
/// port below 1024, every thread (workers, resolvers, a connection's
/// thread) runs as nobody:nogroup with CAP_NET_BIND_SERVICE alone, and a
/// reload can still open another port below 1024.
fn drops_to_user_on_every_thread_and_reloads_low_ports(bin: Bin) {
    let (uid, gid) = ids("nobody", "nogroup");
    let server = TestServer::start(Behaviour::Echo);
    let (a, b) = (low_port(), low_port());
    let head = "[network]\ninternal = [\"127.0.0.1\"]\n[runtime]\nworkers = 2\n\
                [process]\nuser = \"nobody\"\ngroup = \"nogroup\"\n";
    let first = format!("{head}{}", mapped("low", a, server.addr()));
    let p = Portico::start(bin, &first);
    // The configuration must stay readable for nobody, for the reload.
    let dir = p.config_path().parent().expect("a directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = connect(local(a)).unwrap_or_else(|e| panic!("{bin}: connect to port {a}: {e}"));
    echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo on port {a}: {e}"));
    // With a connection open (its thread, in portico-threaded), every
    // thread has given root up.
    let threads = check_threads(bin, p.pid(), uid, gid);
    assert!(
        threads >= 2,
        "{bin}: expected worker or helper threads beside the main one, found {threads}"
    );
    p.expect_log_line("running as user nobody and group nogroup", WAIT);

    // The reloaded file leaves `group` out (nobody's primary group is
    // nogroup): a change of [process], which only a restart applies.
    let second = format!(
        "{}{}{}",
        head.replace("group = \"nogroup\"\n", ""),
        mapped("low", a, server.addr()),
        mapped("low2", b, server.addr())
    );
    std::fs::write(p.config_path(), second).expect("rewrite the configuration");
    std::fs::set_permissions(p.config_path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    p.signal(libc::SIGHUP);
    let served = poll_until(WAIT, Duration::from_millis(20), || {
        let mut n = connect(local(b)).ok()?;
        echo_check(&mut n, b"new").ok().map(|()| n)
    });
    let Some(_n) = served else {
        panic!(
            "{bin}: after SIGHUP the new service on port {b} (below 1024) must serve as \
             nobody\nstderr:\n{}",
            p.stderr_text()
        );
    };
    echo_check(&mut c, b"still").unwrap_or_else(|e| panic!("{bin}: in flight: {e}"));
    p.expect_log_line("[process] changed", WAIT);
    check_threads(bin, p.pid(), uid, gid);
}

/// As root, a service on the external side without `[process] user` is
/// refused: exit 1, naming the fix.
fn root_without_user_refuses_the_external_side(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.2\"]\n\
         [[service]]\nname = \"in\"\nkind = \"mapped\"\nside = \"external\"\n\
         listen = [\"127.0.0.2:{}\"]\ndestination = \"{}\"\n",
        free_port(),
        server.addr()
    );
    let (_path, out) = run_on_config(bin, &toml, &[], WAIT);
    assert_eq!(
        out.code(),
        Some(1),
        "{bin}: as root with an external-side service and no user: exit 1\n{out:?}"
    );
    assert!(
        out.stderr.contains("'in'") && out.stderr.contains("[process] user"),
        "{bin}: the refusal must name the service and the fix ([process] user)\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening:"),
        "{bin}: nothing may listen\n{}",
        out.stdout
    );
    // --check by the same user says so too, rather than `configuration ok`.
    let (_path, check) = run_on_config(bin, &toml, &["--check"], WAIT);
    assert!(
        check.code() == Some(1)
            && check.stderr.contains("[process] user")
            && !check.stdout.contains("configuration ok"),
        "{bin}: --check as root must refuse what a start refuses\n{check:?}"
    );
}

/// Started as root with internal services only, a reload that adds one
/// on the external side is refused (the old configuration serves on),
/// also when the new file names a user: that is switched to at start.
fn a_reload_as_root_refuses_the_external_side(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let (inside, outside) = (free_port(), free_port());
    let head = "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"127.0.0.2\"]\n";
    let first = format!("{head}{}", mapped("m", inside, server.addr()));
    let p = Portico::start(bin, &first);
    let external = format!(
        "\n[[service]]\nname = \"in\"\nkind = \"mapped\"\nside = \"external\"\n\
         listen = [\"127.0.0.2:{outside}\"]\ndestination = \"{}\"\n",
        server.addr()
    );
    for (process, says) in [
        ("", "restart Portico"),
        ("[process]\nuser = \"nobody\"\n", "next start"),
    ] {
        let before = p.stderr_lines().len();
        std::fs::write(p.config_path(), format!("{process}{first}{external}"))
            .expect("rewrite the configuration");
        p.signal(libc::SIGHUP);
        let refused = poll_until(WAIT, Duration::from_millis(20), || {
            p.stderr_lines()[before..]
                .iter()
                .any(|l| {
                    l.contains("'in'") && l.contains(says) && l.contains("old configuration stays")
                })
                .then_some(())
        });
        assert!(
            refused.is_some(),
            "{bin}: the reload must be refused as root ({says})\nstderr:\n{}",
            p.stderr_text()
        );
        assert!(
            connect(std::net::SocketAddr::from(([127, 0, 0, 2], outside))).is_err(),
            "{bin}: the external service must not listen"
        );
        let mut c = connect(local(inside)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
        echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: the old service: {e}"));
    }
}

/// A user that does not exist: exit 1, saying so, before anything listens.
fn unknown_user_exits_one(bin: Bin) {
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[process]\nuser = \"no-such-portico-user\"\n{}",
        mapped("m", free_port(), local(9))
    );
    let (_path, out) = run_on_config(bin, &toml, &[], WAIT);
    assert_eq!(out.code(), Some(1), "{bin}: unknown user: exit 1\n{out:?}");
    assert!(
        out.stderr.contains("no-such-portico-user") && out.stderr.contains("does not exist"),
        "{bin}: the message must say the user does not exist\n{}",
        out.stderr
    );
    assert!(!out.stdout.contains("listening:"), "{bin}: {}", out.stdout);
}

/// The datagrams a service manager's socket received, collected by a
/// thread.
struct Manager {
    log: Arc<LineLog>,
    _dir: TempDir,
    path: String,
    /// Ends the collecting thread.
    stop: Arc<AtomicBool>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Manager {
    /// Binds a datagram socket in a new directory; each datagram it gets
    /// becomes one line (its lines joined with `|`).
    fn bind(name: &str) -> Manager {
        let dir = TempDir::new();
        let path = dir.path().join(name);
        let sock = UnixDatagram::bind(&path).expect("bind a datagram socket");
        // Writable for a process that gave up root.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let (rx, mut tx) = std::os::unix::net::UnixStream::pair().expect("a pair");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut buf = vec![0u8; 65536];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let line = text.trim_end_matches('\n').replace('\n', "|");
                        if writeln!(tx, "{line}").is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Manager {
            log: LineLog::start(Some(rx)),
            path: path.to_str().expect("utf-8 temp path").to_string(),
            _dir: dir,
            stop,
        }
    }

    /// The first datagram (after `after` of them) satisfying `pred`.
    fn expect(&self, bin: Bin, what: &str, after: usize, pred: impl Fn(&str) -> bool) -> usize {
        let mut at = None;
        self.log.wait(WAIT, |lines| {
            at = lines.iter().skip(after).position(|l| pred(l));
            at.is_some()
        });
        match at {
            Some(i) => after + i,
            None => panic!(
                "{bin}: no {what} within {WAIT:?}; got:\n{}",
                self.log.text()
            ),
        }
    }
}

/// `READY=1` once listening (with a `STATUS=` line of the connections
/// open, kept up to date), `RELOADING=1` with `MONOTONIC_USEC` then
/// `READY=1` around a reload, `STOPPING=1` at shutdown.
fn notifies_readiness_reload_status_and_stopping(bin: Bin) {
    let m = Manager::bind("notify");
    let server = TestServer::start(Behaviour::Echo);
    let port = free_port();
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[limits]\nshutdown_grace = \"1s\"\n{}",
        mapped("m", port, server.addr())
    );
    let env = [("NOTIFY_SOCKET", m.path.as_str())];
    let mut p = Portico::start_with(
        bin,
        &toml,
        StartOptions {
            env: &env,
            ..Default::default()
        },
    );
    let ready = m.expect(bin, "READY=1", 0, |l| l.split('|').any(|f| f == "READY=1"));
    m.expect(bin, "STATUS= with 0 connections", 0, |l| {
        l == "STATUS=serving; 0 connections open"
    });
    let mut c = connect(local(port)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo: {e}"));
    m.expect(bin, "STATUS= with 1 connection", 0, |l| {
        l == "STATUS=serving; 1 connection open"
    });

    p.signal(libc::SIGHUP);
    let reloading = m.expect(bin, "RELOADING=1 with MONOTONIC_USEC", ready + 1, |l| {
        let f: Vec<&str> = l.split('|').collect();
        f.contains(&"RELOADING=1")
            && f.iter().any(|x| {
                x.strip_prefix("MONOTONIC_USEC=")
                    .is_some_and(|v| v.parse::<u64>().is_ok_and(|n| n > 0))
            })
    });
    m.expect(bin, "READY=1 after the reload", reloading + 1, |l| {
        l.split('|').any(|f| f == "READY=1")
    });

    p.signal(libc::SIGTERM);
    m.expect(bin, "STOPPING=1", reloading + 1, |l| {
        l.split('|').any(|f| f == "STOPPING=1")
    });
    drop(c);
    let st = p.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{bin}: {st}");
}

/// `2026-01-02T03:04:05.678Z` at the start of `line`.
fn starts_with_rfc3339_millis(line: &str) -> bool {
    let b = line.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() > 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && b[24] == b' '
}

/// On stderr (not the journal) a diagnostic starts with the UTC time to
/// the millisecond, then the level.
fn diagnostics_carry_time_and_level(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n{}",
        mapped("m", free_port(), server.addr())
    );
    let p = Portico::start(bin, &toml);
    p.signal(libc::SIGHUP);
    let line = p.expect_log_line("configuration reloaded", WAIT);
    assert!(
        starts_with_rfc3339_millis(&line) && line[25..].starts_with("portico: info: "),
        "{bin}: want `YYYY-MM-DDTHH:MM:SS.mmmZ portico: info: ...`, got {line:?}"
    );
    std::fs::write(p.config_path(), "[network\n").expect("write a bad configuration");
    p.signal(libc::SIGHUP);
    let line = p.expect_log_line("the old configuration stays in force", WAIT);
    assert!(
        starts_with_rfc3339_millis(&line) && line[25..].starts_with("portico: error: "),
        "{bin}: want `TIME portico: error: ...`, got {line:?}"
    );
    assert!(
        p.stdout_lines()
            .iter()
            .all(|l| l.starts_with("listening: ")),
        "{bin}: stdout keeps the listening lines alone: {:?}",
        p.stdout_lines()
    );
}

/// A process whose stderr is a pipe we made, so that `JOURNAL_STREAM` can
/// name it as systemd names the journal's stream.
struct Journaled {
    child: Child,
    stdout: Arc<LineLog>,
    stderr: Arc<LineLog>,
}

impl Drop for Journaled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_journaled(bin: Bin, config: &Path, env: bool) -> Journaled {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, each then owned once.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fstat writes only into the stat we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(w.as_raw_fd(), &mut st) }, 0);
    let mut cmd = Command::new(bin.path());
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(w));
    if env {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino));
    } else {
        // Another stream's identity: stderr is not the journal.
        cmd.env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino + 1));
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: cannot start: {e}"));
    // The child has its copy of the write end; ours closes with `cmd`.
    drop(cmd);
    let stdout = LineLog::start(child.stdout.take());
    let stderr = LineLog::start(Some(File::from(r)));
    let p = Journaled {
        child,
        stdout,
        stderr,
    };
    assert!(
        p.stdout.wait(START_TIMEOUT, |l| l
            .iter()
            .any(|l| l.starts_with("listening: "))),
        "{bin}: did not start\nstderr:\n{}",
        p.stderr.text()
    );
    p
}

/// `JOURNAL_STREAM` naming stderr: each diagnostic is `<N>message`
/// (6 info, 3 error), without time or level words; naming another stream:
/// time and level as on a terminal.
fn journal_stream_gives_priority_prefixes(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let dir = TempDir::new();
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n{}",
        mapped("m", free_port(), server.addr())
    );
    let config = dir.write("portico.toml", &toml);
    let p = start_journaled(bin, &config, true);
    let hup = |p: &Journaled| {
        // SAFETY: kill(2) on our own child.
        let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
    };
    hup(&p);
    let line = p
        .stderr
        .wait_for(|l| l.contains("configuration reloaded"), WAIT)
        .unwrap_or_else(|| panic!("{bin}: no reload line\n{}", p.stderr.text()));
    assert!(
        line.starts_with("<6>configuration reloaded"),
        "{bin}: under the journal an info line is `<6>message`: {line:?}"
    );
    std::fs::write(&config, "[network\n").expect("write a bad configuration");
    hup(&p);
    let line = p
        .stderr
        .wait_for(|l| l.contains("old configuration stays"), WAIT)
        .unwrap_or_else(|| panic!("{bin}: no error line\n{}", p.stderr.text()));
    assert!(
        line.starts_with("<3>"),
        "{bin}: under the journal an error line is `<3>message`: {line:?}"
    );
    drop(p);

    std::fs::write(&config, &toml).expect("write the configuration");
    let p = start_journaled(bin, &config, false);
    hup(&p);
    let line = p
        .stderr
        .wait_for(|l| l.contains("configuration reloaded"), WAIT)
        .unwrap_or_else(|| panic!("{bin}: no reload line\n{}", p.stderr.text()));
    assert!(
        starts_with_rfc3339_millis(&line),
        "{bin}: JOURNAL_STREAM naming another stream: time and level as usual: {line:?}"
    );
}

/// `[log] diagnostics = "syslog"` and `access = "syslog"`: both go to the
/// socket `[log] syslog_socket` names, as `<PRI>Mmm dd hh:mm:ss
/// portico[PID]: message` with facility daemon; nothing of them on stderr.
fn syslog_takes_diagnostics_and_access_lines(bin: Bin) {
    let m = Manager::bind("log");
    let server = TestServer::start(Behaviour::Echo);
    let port = free_port();
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"syslog\"\n\
         diagnostics = \"syslog\"\nsyslog_socket = \"{}\"\n{}",
        m.path,
        mapped("m", port, server.addr())
    );
    let p = Portico::start(bin, &toml);
    let tag = format!(" portico[{}]: ", p.pid());
    let shape = |l: &str, pri: &str| -> bool {
        // `<PRI>` `Mmm dd hh:mm:ss` (15) then ` portico[PID]: `.
        l.strip_prefix(pri)
            .is_some_and(|rest| rest.get(15..).is_some_and(|r| r.starts_with(&tag)))
    };
    let mut c = connect(local(port)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo: {e}"));
    let client = c.local_addr().expect("local address");
    drop(c);
    // daemon.info = 3 * 8 + 6.
    m.expect(bin, "an access line (daemon.info)", 0, |l| {
        shape(l, "<30>") && l.contains(&format!(" m {client} "))
    });
    p.signal(libc::SIGHUP);
    m.expect(bin, "the reload's info line", 0, |l| {
        shape(l, "<30>") && l.contains("configuration reloaded")
    });
    std::fs::write(p.config_path(), "[network\n").expect("write a bad configuration");
    p.signal(libc::SIGHUP);
    // daemon.err = 3 * 8 + 3.
    m.expect(bin, "the bad reload's error line", 0, |l| {
        shape(l, "<27>") && l.contains("old configuration stays")
    });
    let stderr = p.stderr_text();
    assert!(
        !stderr.contains("configuration reloaded") && !stderr.contains(&format!(" m {client} ")),
        "{bin}: with syslog, neither diagnostics nor access lines go to stderr:\n{stderr}"
    );
}

/// SIGUSR1 after logrotate renamed the access log: new lines go to a new
/// file at the original path, from every worker, and the configuration
/// is not read (here it was made invalid: no error, the service serves).
fn sigusr1_reopens_the_access_log_without_reading_the_configuration(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let dir = TempDir::new();
    let access = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let port = free_port();
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[runtime]\nworkers = 2\n[log]\naccess = \"{}\"\n{}",
        access.display(),
        mapped("m", port, server.addr())
    );
    let p = Portico::start(bin, &toml);
    let round = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let mut c = connect(local(port)).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
                echo_check(&mut c, b"x").unwrap_or_else(|e| panic!("{bin}: echo: {e}"));
                format!(" m {} ", c.local_addr().expect("local address"))
            })
            .collect()
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let before = round(8);
    poll_until(WAIT, Duration::from_millis(20), || {
        let text = read(&access);
        before.iter().all(|n| text.contains(n)).then_some(())
    })
    .unwrap_or_else(|| panic!("{bin}: the access lines must reach {}", access.display()));
    std::fs::rename(&access, &rotated).expect("rename the access log");
    std::fs::write(p.config_path(), "this is not [valid\n").expect("spoil the configuration");
    p.signal(libc::SIGUSR1);
    // Until the signal is handled (by every worker) a line may still go to
    // the renamed file: rounds of connections until one lands wholly in
    // the new file. Each round is waited for until every line is in one
    // file or the other.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let names = round(8);
        let landed = poll_until(WAIT, Duration::from_millis(20), || {
            let (new, old) = (read(&access), read(&rotated));
            names
                .iter()
                .all(|n| new.contains(n) || old.contains(n))
                .then(|| names.iter().all(|n| new.contains(n)))
        });
        match landed {
            Some(true) => break names,
            Some(false) if Instant::now() < deadline => continue,
            _ => panic!(
                "{bin}: after SIGUSR1 new access lines must go to a new {}\nstderr:\n{}",
                access.display(),
                p.stderr_text()
            ),
        }
    };
    let old = std::fs::read_to_string(&rotated).expect("the rotated file");
    assert!(
        after.iter().all(|n| !old.contains(n)),
        "{bin}: lines after SIGUSR1 must not go to the renamed file:\n{old}"
    );
    let stderr = p.stderr_text();
    assert!(
        !stderr.contains("error") && !stderr.contains("portico.toml"),
        "{bin}: SIGUSR1 must not read the configuration (it is invalid now):\n{stderr}"
    );
}

/// `[log] diagnostics = FILE`: timestamped lines in the file (none on
/// stderr); after logrotate renamed it, SIGUSR1 has the next line go to a
/// new file at the original path.
fn diagnostics_file_is_timestamped_and_reopened_on_sigusr1(bin: Bin) {
    let server = TestServer::start(Behaviour::Echo);
    let dir = TempDir::new();
    let diag = dir.path().join("portico.log");
    let rotated = dir.path().join("portico.log.1");
    let toml = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\ndiagnostics = \"{}\"\n{}",
        diag.display(),
        mapped("m", free_port(), server.addr())
    );
    let p = Portico::start(bin, &toml);
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let reloads = |path: &Path| read(path).matches("configuration reloaded").count();
    p.signal(libc::SIGHUP);
    let line = poll_until(WAIT, Duration::from_millis(20), || {
        read(&diag)
            .lines()
            .find(|l| l.contains("configuration reloaded"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("{bin}: no reload line in {}", diag.display()));
    assert!(
        starts_with_rfc3339_millis(&line) && line[25..].starts_with("portico: info: "),
        "{bin}: in a file, `TIME portico: info: ...`: {line:?}"
    );
    assert!(
        !p.stderr_text().contains("configuration reloaded"),
        "{bin}: diagnostics go to the file only"
    );
    std::fs::rename(&diag, &rotated).expect("rename the diagnostics log");
    p.signal(libc::SIGUSR1);
    // A SIGHUP handled before the SIGUSR1 writes to the old file: then
    // another SIGHUP follows.
    let deadline = Instant::now() + WAIT;
    loop {
        let (new_before, old_before) = (reloads(&diag), reloads(&rotated));
        p.signal(libc::SIGHUP);
        let landed = poll_until(WAIT, Duration::from_millis(20), || {
            let (new, old) = (reloads(&diag), reloads(&rotated));
            (new + old > new_before + old_before).then_some(new > new_before)
        });
        match landed {
            Some(true) => break,
            Some(false) if Instant::now() < deadline => continue,
            _ => panic!(
                "{bin}: after SIGUSR1 a diagnostic must go to a new {}\nstderr:\n{}",
                diag.display(),
                p.stderr_text()
            ),
        }
    }
}
