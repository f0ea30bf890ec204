//! `[auth] helper` end to end through both binaries: users not in
//! `[[user]]` checked by an external program speaking the Squid basic-auth
//! helper protocol. Squid's own `basic_ncsa_auth` (Debian package squid)
//! over an htpasswd file made with `openssl passwd -apr1`; scripts written
//! here for the helper that dies after each answer (started again), the
//! one that never answers (a failure after `helper_timeout`), `BH`, and
//! `helper_concurrency` answered out of order, the one that exits at once
//! at every start. What is observed: SOCKS5 and telnet logins, SOCKS5
//! requests, `portico_auth_failures_total` on `/metrics`, the diagnostics,
//! and the helper's processes in /proc around a reload.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portico_tests::data::base64;
use portico_tests::reply::exchange;
use portico_tests::{
    both, config_head, connect, echo_check, poll_until, require, run_tool, service,
    start_on_free_ports, Behaviour, Bin, Portico, StartOptions, TempDir, TestServer, PROMPTLY,
};

both!(
    ncsa_helper_checks_users_not_in_user_tables,
    a_helper_that_dies_is_started_again,
    a_helper_that_fails_or_does_not_answer_fails_the_login,
    a_concurrent_helper_may_answer_out_of_order,
    telnet_logins_ask_the_helper,
    http_proxy_logins_ask_the_helper,
    answers_are_cached_and_a_reload_changes_the_helper,
    a_reload_ends_the_processes_of_the_old_helper,
    a_helper_that_dies_at_once_is_logged_once_and_not_restarted_in_a_loop
);

const NCSA: &str = "/usr/lib/squid/basic_ncsa_auth";

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(20);

/// A configuration with `[auth]` lines `auth`, `extra` (users, rules), a
/// socks service with auth on (`ports[0]`) and a status service
/// (`ports[1]`).
fn config(ports: &[u16], limits: &str, auth: &str, extra: &str) -> String {
    config_of("socks", ports, limits, auth, extra)
}

/// [`config`] with a service of `kind` (named after it) on `ports[0]`.
fn config_of(kind: &str, ports: &[u16], limits: &str, auth: &str, extra: &str) -> String {
    format!(
        "{}\n[auth]\n{auth}\n{extra}{}{}",
        config_head(limits, ""),
        service(kind, kind, ports[0], "auth = true"),
        service("status", "status", ports[1], "")
    )
}

fn start(bin: Bin, limits: &str, auth: &str, extra: &str) -> (Portico, SocketAddr, SocketAddr) {
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        config(ports, limits, auth, extra)
    });
    (
        p,
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    )
}

/// `helper = [...]` for `argv`.
fn helper_line(argv: &[&Path]) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("helper = [{}]", quoted.join(", "))
}

/// An executable shell script `name` in `dir`.
fn script(dir: &TempDir, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.write(name, &format!("#!/bin/sh\n{body}\n"));
    let mut perm = std::fs::metadata(&p).expect("metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&p, perm).expect("chmod");
    p
}

/// The value of `portico_auth_failures_total{service="socks",reason}`
/// (0 when absent).
fn failures(bin: Bin, status: SocketAddr, reason: &str) -> u64 {
    let sample = format!("portico_auth_failures_total{{service=\"socks\",reason=\"{reason}\"}}");
    metric(bin, status, &sample)
}

/// The value of the sample `sample` on `/metrics` (0 when absent).
fn metric(bin: Bin, status: SocketAddr, sample: &str) -> u64 {
    let r = exchange(
        status,
        &format!("GET /metrics HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET /metrics: {e}"));
    assert_eq!(r.status, 200, "{bin}: GET /metrics: {r:?}");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Starts a SOCKS5 login (greeting and RFC 1929 request at once).
fn start_login(bin: Bin, socks: SocketAddr, name: &str, password: &str) -> TcpStream {
    let mut b = vec![5, 1, 2, 1, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(password.len() as u8);
    b.extend_from_slice(password.as_bytes());
    let mut s = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect to {socks}: {e}"));
    s.write_all(&b)
        .unwrap_or_else(|e| panic!("{bin}: send a login: {e}"));
    s
}

/// The login's reply: whether it was accepted.
fn login_reply(bin: Bin, s: &mut TcpStream, what: &str) -> bool {
    let mut r = [0; 4];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: {what}: read the login's reply: {e}"));
    match r {
        [5, 2, 1, 0] => true,
        [5, 2, 1, 1] => false,
        r => panic!("{bin}: {what}: unexpected login reply {r:02x?}"),
    }
}

fn login(bin: Bin, socks: SocketAddr, name: &str, password: &str) -> (bool, TcpStream) {
    let mut s = start_login(bin, socks, name, password);
    let ok = login_reply(bin, &mut s, &format!("{name}/{password}"));
    (ok, s)
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

/// An htpasswd line for `user` with an MD5 (`$apr1$`) hash of `password`,
/// which basic_ncsa_auth reads.
fn htpasswd_line(user: &str, password: &str) -> String {
    let mut cmd = Command::new(require("openssl", "openssl"));
    cmd.args(["passwd", "-apr1", "-stdin"]);
    let out = run_tool(
        "openssl passwd",
        cmd,
        Some(password.as_bytes()),
        PROMPTLY * 4,
    );
    assert!(out.status.success(), "openssl passwd: {}", out.text());
    format!("{user}:{}\n", out.stdout_text().trim())
}

/// basic_ncsa_auth over an htpasswd file with hank and ivy: the right
/// password logs in (a password with a space and `%` proves the escaping),
/// a wrong one is refused and counted `wrong`; a rule naming hank (who is
/// not in `[[user]]`) applies to him and not to ivy; a `[[user]]` is still
/// checked by Portico itself.
fn ncsa_helper_checks_users_not_in_user_tables(bin: Bin) {
    assert!(
        Path::new(NCSA).is_file(),
        "{NCSA} is missing: this test needs the Debian package squid (.ci/run installs it)"
    );
    let dir = TempDir::new();
    let htpasswd = dir.write(
        "htpasswd",
        &(htpasswd_line("hank", "hank pw%41") + &htpasswd_line("ivy", "ivy-pw")),
    );
    let echo = TestServer::start(Behaviour::Echo);
    let extra = "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
                 [[rule]]\naction = \"allow\"\nusers = [\"hank\", \"alice\"]\n";
    let (p, socks, status) = start(bin, "", &helper_line(&[Path::new(NCSA), &htpasswd]), extra);

    let (ok, mut s) = login(bin, socks, "hank", "hank pw%41");
    assert!(
        ok,
        "{bin}: hank's right password\nstderr:\n{}",
        p.stderr_text()
    );
    assert_eq!(
        connect_to(bin, &mut s, echo.addr()),
        0,
        "{bin}: the rule naming hank allows him"
    );
    echo_check(&mut s, b"through the helper's login")
        .unwrap_or_else(|e| panic!("{bin}: relay for hank: {e}"));

    let (ok, mut s) = login(bin, socks, "ivy", "ivy-pw");
    assert!(ok, "{bin}: ivy's right password");
    assert_eq!(
        connect_to(bin, &mut s, echo.addr()),
        2,
        "{bin}: no rule allows ivy: refused by the ruleset (SOCKS5 status 2)"
    );

    assert!(
        !login(bin, socks, "hank", "hank pw%42").0,
        "{bin}: wrong password"
    );
    assert!(
        !login(bin, socks, "nobody", "x").0,
        "{bin}: unknown to the helper"
    );
    assert!(login(bin, socks, "alice", "secret").0, "{bin}: a [[user]]");
    assert!(
        !login(bin, socks, "alice", "hank pw%41").0,
        "{bin}: a [[user]]'s wrong password"
    );
    // The helper's ERR and the [[user]]'s wrong password alike.
    assert_eq!(
        failures(bin, status, "wrong"),
        3,
        "{bin}: failures counted wrong"
    );
    assert_eq!(
        failures(bin, status, "helper"),
        0,
        "{bin}: the helper never failed"
    );
}

/// The http proxy's logins take the same path: a name the helper knows
/// is served (a CONNECT through to the echo server), a wrong password is
/// 407 and counted `wrong`.
fn http_proxy_logins_ask_the_helper(bin: Bin) {
    let dir = TempDir::new();
    let htpasswd = dir.write("htpasswd", &htpasswd_line("hank", "hank-pw"));
    let echo = TestServer::start(Behaviour::Echo);
    let auth = helper_line(&[Path::new(NCSA), &htpasswd]);
    let port = echo.addr().port();
    let (_p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n[auth]\n{auth}\n{}{}",
            config_head("", ""),
            service(
                "http",
                "http",
                ports[0],
                &format!("auth = true\nconnect_ports = [{port}]")
            ),
            service("status", "status", ports[1], "")
        )
    });
    let (web, status) = (
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    );
    let connect = |credentials: &str| -> (TcpStream, String) {
        let mut s = portico_tests::connect(web).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
        let basic = base64(credentials.as_bytes());
        let dest = echo.addr();
        s.write_all(
            format!(
                "CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{bin}: send CONNECT: {e}"));
        // The head: a 200 is all there is before the tunnel; a 407 has a
        // body and the close after it.
        let mut got = Vec::new();
        let mut buf = [0; 512];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{bin}: the CONNECT reply: {e}"),
            }
        }
        (s, String::from_utf8_lossy(&got).into_owned())
    };
    let (mut s, head) = connect("hank:hank-pw");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{bin}: hank through the helper: {head}"
    );
    echo_check(&mut s, b"an http tunnel after the helper's OK")
        .unwrap_or_else(|e| panic!("{bin}: relay for hank: {e}"));
    let (_s, head) = connect("hank:wrong");
    assert!(
        head.starts_with("HTTP/1.1 407"),
        "{bin}: a wrong password: {head}"
    );
    let http_failures = |reason: &str| {
        let sample = format!("portico_auth_failures_total{{service=\"http\",reason=\"{reason}\"}}");
        metric(bin, status, &sample)
    };
    assert_eq!(http_failures("wrong"), 1, "{bin}: counted wrong");
    assert_eq!(http_failures("helper"), 0, "{bin}: the helper never failed");
}

/// A helper that answers one login and exits (noting each start in a
/// file): each next login is answered by a new process.
fn a_helper_that_dies_is_started_again(bin: Bin) {
    let dir = TempDir::new();
    let starts = dir.path().join("starts");
    let body = format!(
        "echo started >> {:?}\nread u p\nif [ \"$p\" = good ]; then echo OK; else echo ERR; fi",
        starts.display().to_string()
    );
    let helper = script(&dir, "once.sh", &body);
    let auth = format!("{}\nhelpers = 1", helper_line(&[&helper]));
    let (p, socks, status) = start(bin, "", &auth, "");
    for name in ["u1", "u2", "u3"] {
        assert!(
            login(bin, socks, name, "good").0,
            "{bin}: {name}'s login after the helper exited\nstderr:\n{}",
            p.stderr_text()
        );
    }
    assert!(!login(bin, socks, "u4", "bad").0, "{bin}: wrong password");
    let started = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        started >= 4,
        "{bin}: the helper was started {started} times for 4 logins"
    );
    assert_eq!(
        failures(bin, status, "helper"),
        0,
        "{bin}: no login failed for the helper"
    );
    assert_eq!(
        failures(bin, status, "wrong"),
        1,
        "{bin}: ERR counted wrong"
    );
}

/// `BH` is a failure, and so is no answer within `helper_timeout`; both
/// are counted `helper`, not `wrong`; the stalled process is replaced, so
/// the logins after it are answered.
fn a_helper_that_fails_or_does_not_answer_fails_the_login(bin: Bin) {
    let dir = TempDir::new();
    let helper = script(
        &dir,
        "moody.sh",
        "while read u p; do\n\
         case \"$u\" in\n\
         bh) echo 'BH message=backend%20down' ;;\n\
         silent) ;;\n\
         *) echo OK ;;\n\
         esac\n\
         done",
    );
    let auth = format!(
        "{}\nhelpers = 1\nhelper_timeout = \"300ms\"",
        helper_line(&[&helper])
    );
    let (p, socks, status) = start(bin, "", &auth, "");
    assert!(
        !login(bin, socks, "bh", "x").0,
        "{bin}: BH refuses the login"
    );
    assert_eq!(
        failures(bin, status, "helper"),
        1,
        "{bin}: BH counted helper"
    );
    assert!(
        !login(bin, socks, "silent", "x").0,
        "{bin}: no answer refuses the login"
    );
    let counted = poll_until(PROMPTLY, EVERY, || {
        (failures(bin, status, "helper") == 2).then_some(())
    });
    assert!(counted.is_some(), "{bin}: a timeout is counted helper");
    assert!(
        login(bin, socks, "after", "x").0,
        "{bin}: the helper is started again after a timeout\nstderr:\n{}",
        p.stderr_text()
    );
    assert_eq!(
        failures(bin, status, "wrong"),
        0,
        "{bin}: none counted wrong"
    );
}

/// `helper_concurrency = 4`: four logins at once go to one process, each
/// with a channel id; the script answers only once it holds all four, in
/// reverse order, and each login gets its own verdict.
fn a_concurrent_helper_may_answer_out_of_order(bin: Bin) {
    let dir = TempDir::new();
    let helper = script(
        &dir,
        "reverse.sh",
        "answer() { set -- $1; if [ \"$3\" = good ]; then echo \"$1 OK\"; else echo \"$1 ERR\"; fi; }\n\
         while read a && read b && read c && read d; do\n\
         for l in \"$d\" \"$c\" \"$b\" \"$a\"; do answer \"$l\"; done\n\
         done",
    );
    let auth = format!(
        "{}\nhelpers = 1\nhelper_concurrency = 4\nhelper_timeout = \"20s\"",
        helper_line(&[&helper])
    );
    let (p, socks, status) = start(bin, "", &auth, "");
    let logins = [("c1", "good"), ("c2", "bad"), ("c3", "good"), ("c4", "bad")];
    let mut streams: Vec<TcpStream> = logins
        .iter()
        .map(|(n, pw)| start_login(bin, socks, n, pw))
        .collect();
    for ((name, pw), s) in logins.iter().zip(&mut streams) {
        assert_eq!(
            login_reply(bin, s, name),
            *pw == "good",
            "{bin}: {name}/{pw}\nstderr:\n{}",
            p.stderr_text()
        );
    }
    assert_eq!(failures(bin, status, "wrong"), 2, "{bin}: two ERR");
    assert_eq!(failures(bin, status, "helper"), 0, "{bin}: no failure");
}

/// Reads from `s` until what was read ends with `end` (bounded by the
/// socket's timeout); everything read.
fn read_until_end(bin: Bin, s: &mut TcpStream, end: &[u8], what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0; 256];
    while !got.ends_with(end) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "{bin}: {what}: closed after {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "{bin}: {what}: {e} after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

/// A telnet login of a user not in `[[user]]`: the helper's OK gives the
/// gateway's prompt, its ERR `login incorrect`, counted `wrong`.
fn telnet_logins_ask_the_helper(bin: Bin) {
    let dir = TempDir::new();
    let helper = script(
        &dir,
        "pw.sh",
        "while read u p; do if [ \"$u $p\" = \"tina good%20one\" ]; then echo OK; else echo ERR; fi; done",
    );
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        config_of("telnet", ports, "", &helper_line(&[&helper]), "")
    });
    let telnet = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let status = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let mut s = connect(telnet).unwrap_or_else(|e| panic!("{bin}: connect to telnet: {e}"));
    read_until_end(bin, &mut s, b"login: ", "login prompt");
    s.write_all(b"tina\r\n").expect("send the name");
    read_until_end(bin, &mut s, b"password: ", "password prompt");
    s.write_all(b"good one\r\n").expect("send the password");
    let got = read_until_end(bin, &mut s, b"portico> ", "the gateway's prompt");
    assert!(
        !String::from_utf8_lossy(&got).contains("incorrect"),
        "{bin}: tina's login: {got:?}\nstderr:\n{}",
        p.stderr_text()
    );
    let mut s = connect(telnet).unwrap_or_else(|e| panic!("{bin}: connect to telnet: {e}"));
    read_until_end(bin, &mut s, b"login: ", "login prompt");
    s.write_all(b"tina\r\nbad\r\n").expect("send the login");
    read_until_end(bin, &mut s, b"login incorrect\r\n", "a wrong password");
    let wrong = "portico_auth_failures_total{service=\"telnet\",reason=\"wrong\"}";
    let counted = poll_until(PROMPTLY, EVERY, || {
        (metric(bin, status, wrong) == 1).then_some(())
    });
    assert!(counted.is_some(), "{bin}: {wrong} is not 1");
}

/// The lines of `path` (none when it does not exist yet).
fn lines_of(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

/// The helper's OK is cached (`[limits] auth_cache`): the same login
/// again is not asked; a reload that names another helper empties the
/// cache and the new program answers the next login.
fn answers_are_cached_and_a_reload_changes_the_helper(bin: Bin) {
    let dir = TempDir::new();
    let (asked_a, asked_b) = (dir.path().join("a"), dir.path().join("b"));
    let ok = script(
        &dir,
        "ok.sh",
        &format!(
            "while read u p; do echo \"$u\" >> {:?}; echo OK; done",
            asked_a.display().to_string()
        ),
    );
    let err = script(
        &dir,
        "err.sh",
        &format!(
            "while read u p; do echo \"$u\" >> {:?}; echo ERR; done",
            asked_b.display().to_string()
        ),
    );
    // One worker: each event loop has a cache of its own.
    let one = "[runtime]\nworkers = 1\n";
    let (p, socks, status) = start(bin, "", &helper_line(&[&ok]), one);
    assert!(login(bin, socks, "pat", "pw").0, "{bin}: the first login");
    assert!(
        login(bin, socks, "pat", "pw").0,
        "{bin}: the same login again"
    );
    assert_eq!(lines_of(&asked_a), 1, "{bin}: the helper is asked once");
    let checks = "portico_password_checks_total{service=\"socks\"}";
    assert_eq!(metric(bin, status, checks), 1, "{bin}: {checks}");

    let text = std::fs::read_to_string(p.config_path()).expect("read the configuration");
    let reloads = |p: &Portico| {
        p.stderr_lines()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    };
    let before = reloads(&p);
    std::fs::write(
        p.config_path(),
        text.replace(&helper_line(&[&ok]), &helper_line(&[&err])),
    )
    .expect("rewrite");
    p.signal(libc::SIGHUP);
    let reloaded = poll_until(PROMPTLY, EVERY, || (reloads(&p) > before).then_some(()));
    assert!(
        reloaded.is_some(),
        "{bin}: no `configuration reloaded` line after SIGHUP\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(
        !login(bin, socks, "pat", "pw").0,
        "{bin}: after the reload the new helper refuses"
    );
    assert_eq!(
        (lines_of(&asked_a), lines_of(&asked_b)),
        (1, 1),
        "{bin}: the new helper was asked, the old one not"
    );
    assert_eq!(
        failures(bin, status, "wrong"),
        1,
        "{bin}: ERR counted wrong"
    );
}

/// The processes whose command line names `script` (a shell script runs
/// as `/bin/sh SCRIPT`).
fn processes_of(script: &Path) -> Vec<u32> {
    let needle = script.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        panic!("/proc cannot be read: this test needs Linux's /proc");
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == needle))
        })
        .collect()
}

/// Rewrites `p`'s configuration with `from` replaced by `to`, sends
/// SIGHUP, and waits for the `configuration reloaded` line.
fn reload_replacing(bin: Bin, p: &Portico, from: &str, to: &str) {
    let text = std::fs::read_to_string(p.config_path()).expect("read the configuration");
    assert!(
        text.contains(from),
        "{bin}: {from:?} is not in the configuration"
    );
    let reloads = |p: &Portico| {
        p.stderr_lines()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    };
    let before = reloads(p);
    std::fs::write(p.config_path(), text.replace(from, to)).expect("rewrite");
    p.signal(libc::SIGHUP);
    let reloaded = poll_until(PROMPTLY, EVERY, || (reloads(p) > before).then_some(()));
    assert!(
        reloaded.is_some(),
        "{bin}: no `configuration reloaded` line after SIGHUP\nstderr:\n{}",
        p.stderr_text()
    );
}

/// A reload that keeps `[auth] helper` keeps its process (the same pid
/// answers after it); one that names another program ends the old
/// processes at the reload, not at the next login, and the new program
/// answers the next login.
fn a_reload_ends_the_processes_of_the_old_helper(bin: Bin) {
    let dir = TempDir::new();
    let answered = dir.path().join("answered");
    let body = |verdict: &str| {
        format!(
            "while read u p; do echo \"$$\" >> {:?}; echo {verdict}; done",
            answered.display().to_string()
        )
    };
    let (old, new) = (
        script(&dir, "old.sh", &body("OK")),
        script(&dir, "new.sh", &body("ERR")),
    );
    let (old_line, new_line) = (helper_line(&[&old]), helper_line(&[&new]));
    let auth = format!("{old_line}\nhelpers = 1");
    let (p, socks, status) = start(bin, "", &auth, "");
    assert!(
        login(bin, socks, "u1", "pw").0,
        "{bin}: the old helper's OK"
    );
    let first = processes_of(&old);
    assert_eq!(
        first.len(),
        1,
        "{bin}: one process of the old helper: {first:?}"
    );

    // Another key changes; the helper stays, and so does its process.
    reload_replacing(bin, &p, "[auth]\n", "[auth]\n# reloaded once\n");
    assert!(
        login(bin, socks, "u2", "pw").0,
        "{bin}: after the first reload"
    );
    let pids = std::fs::read_to_string(&answered).unwrap_or_default();
    let pids: Vec<&str> = pids.lines().collect();
    assert_eq!(
        pids,
        [first[0].to_string(), first[0].to_string()],
        "{bin}: the same process answered before and after a reload that kept the helper"
    );

    reload_replacing(bin, &p, &old_line, &new_line);
    let gone = poll_until(PROMPTLY, EVERY, || {
        processes_of(&old).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "{bin}: the old helper's process still runs after the reload: {:?}\nstderr:\n{}",
        processes_of(&old),
        p.stderr_text()
    );
    assert!(
        processes_of(&new).is_empty(),
        "{bin}: the new helper starts only when a login needs it"
    );
    assert!(
        !login(bin, socks, "u3", "pw").0,
        "{bin}: the new helper's ERR"
    );
    assert_eq!(
        processes_of(&new).len(),
        1,
        "{bin}: one process of the new helper"
    );
    assert_eq!(
        failures(bin, status, "wrong"),
        1,
        "{bin}: ERR counted wrong"
    );
}

/// A helper that exits at once at every start: each login fails, counted
/// `helper`; the program is started at most twice per login (the login's
/// retry, after a pause), never in a loop; the diagnostics say so in one
/// line, not one per start. Portico serves on meanwhile.
fn a_helper_that_dies_at_once_is_logged_once_and_not_restarted_in_a_loop(bin: Bin) {
    let dir = TempDir::new();
    let starts = dir.path().join("starts");
    let helper = script(
        &dir,
        "crash.sh",
        &format!("echo started >> {:?}\nexit 1", starts.display().to_string()),
    );
    let auth = format!(
        "{}\nhelpers = 1\nhelper_timeout = \"1s\"",
        helper_line(&[&helper])
    );
    let (p, socks, status) = start(bin, "", &auth, "");
    for name in ["c1", "c2", "c3"] {
        assert!(
            !login(bin, socks, name, "pw").0,
            "{bin}: {name}: a helper that cannot answer refuses the login"
        );
    }
    assert_eq!(failures(bin, status, "helper"), 3, "{bin}: counted helper");
    let started = lines_of(&starts);
    assert!(
        (3..=6).contains(&started),
        "{bin}: {started} starts for 3 logins (at most the login's own and one retry each)"
    );
    let lines: Vec<String> = p
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("exited before answering"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{bin}: one line for the crash loop, not one per start: {lines:?}\nstderr:\n{}",
        p.stderr_text()
    );
    let r = exchange(
        status,
        &format!("GET /healthz HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET /healthz: {e}"));
    assert_eq!(r.status, 200, "{bin}: the status service serves on: {r:?}");
}
