//! Per-user connection caps and byte quotas, end to end through both
//! binaries: `[limits] max_per_user` (http 503, SOCKS5 0x01, `err=limit`),
//! `[[quota]]` (http 403 `Portico-Error: quota`, SOCKS5 0x02, `err=quota`,
//! an open tunnel going on), `GET /quotas` and
//! `portico_quota_used_bytes`, and `[state] dir` keeping the counts
//! across a clean restart and a `kill -9`, written as `[process] user`.
//!
//! `the_state_is_written_as_the_user_dropped_to` runs as root (as CI
//! does): it starts as root and gives root up to `nobody`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use portico_tests::json::{parse_json, Json};
use portico_tests::reply::{exchange, Reply};
use portico_tests::{
    both, config_head, connect, echo_check, local, mapped_service, poll_until, service,
    socks5_as_alice, start_on_free_ports, Acceptor, Behaviour, Bin, Portico, StartOptions, TempDir,
    TestServer, ALICE, IO_TIMEOUT, PROMPTLY,
};

both!(
    max_per_user_says_limit,
    a_used_quota_refuses_new_requests,
    keep_alive_requests_are_checked_each,
    counts_survive_restarts,
    the_state_is_written_as_the_user_dropped_to,
    a_malformed_state_file_stops_the_start,
);

/// How often a bounded poll looks again.
const EVERY: Duration = Duration::from_millis(50);
/// How long a state file may take to show a count: one write period (10 s)
/// and room for a busy machine.
const SAVED: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd proxy may take to exit.
const EXIT: Duration = Duration::from_secs(20);
/// `alice:secret` in Basic credentials.
const ALICE_BASIC: &str = "YWxpY2U6c2VjcmV0";

fn start(bin: Bin, n: usize, config: impl Fn(&[u16]) -> String) -> (Portico, Vec<u16>) {
    start_on_free_ports(bin, n, StartOptions::default(), config)
}

/// A GET through the http proxy at `proxy` as alice.
fn get_as_alice(bin: Bin, proxy: SocketAddr, origin: SocketAddr) -> Reply {
    let req = format!(
        "GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\nProxy-Authorization: Basic \
         {ALICE_BASIC}\r\nConnection: close\r\n\r\n"
    );
    exchange(proxy, &req).unwrap_or_else(|e| panic!("{bin}: GET as alice: {e}"))
}

/// `GET path` from the status service.
fn status_get(bin: Bin, status: SocketAddr, path: &str) -> String {
    let r = exchange(
        status,
        &format!("GET {path} HTTP/1.1\r\nHost: status\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET {path}: {e}"));
    assert_eq!(r.status, 200, "{bin}: GET {path}: {r:?}");
    r.body
}

/// `/quotas` as (quota, subject, used, limit, period_end) rows.
fn quotas(bin: Bin, status: SocketAddr) -> Vec<(String, String, u64, u64, String)> {
    let body = status_get(bin, status, "/quotas");
    let Ok(Json::Arr(rows)) = parse_json(&body) else {
        panic!("{bin}: /quotas is not a JSON array: {body}");
    };
    rows.iter()
        .map(|r| {
            let s = |k: &str| {
                r.str_of(k)
                    .unwrap_or_else(|| panic!("{bin}: /quotas: no string {k} in {body}"))
                    .to_string()
            };
            let n = |k: &str| {
                r.u64_of(k)
                    .unwrap_or_else(|| panic!("{bin}: /quotas: no number {k} in {body}"))
            };
            (
                s("quota"),
                s("subject"),
                n("used_bytes"),
                n("limit_bytes"),
                s("period_end"),
            )
        })
        .collect()
}

/// The bytes `/quotas` says `subject` used in `quota` (0 when not listed).
fn used(bin: Bin, status: SocketAddr, quota: &str, subject: &str) -> u64 {
    quotas(bin, status)
        .into_iter()
        .find(|r| r.0 == quota && r.1 == subject)
        .map_or(0, |r| r.2)
}

/// Waits (bounded) until /metrics has the line `want`.
fn expect_metric(bin: Bin, status: SocketAddr, want: &str) {
    let mut last = String::new();
    poll_until(PROMPTLY, EVERY, || {
        last = status_get(bin, status, "/metrics");
        last.lines().any(|l| l == want).then_some(())
    })
    .unwrap_or_else(|| panic!("{bin}: /metrics lacks {want:?}:\n{last}"));
}

/// `max_per_user = 1`: while alice holds a SOCKS tunnel, her next SOCKS5
/// request is answered 0x01 and her http request 503, both logged and
/// counted `limit`; once the tunnel closes she is served again.
fn max_per_user_says_limit(bin: Bin) {
    let echo = TestServer::start(Behaviour::Echo);
    let (p, ports) = start(bin, 3, |ports| {
        format!(
            "{}{ALICE}{}{}{}",
            config_head("max_per_user = 1", ""),
            service("web", "http", ports[0], "auth = true"),
            service("socks", "socks", ports[1], "auth = true"),
            service("status", "status", ports[2], ""),
        )
    });
    let (web, socks, status) = (local(ports[0]), local(ports[1]), local(ports[2]));
    let (code, mut held) = socks5_as_alice(bin, socks, echo.addr());
    assert_eq!(code, 0, "{bin}: alice's first tunnel is granted");
    echo_check(&mut held, b"first").unwrap_or_else(|e| panic!("{bin}: the first tunnel: {e}"));

    let (code, _) = socks5_as_alice(bin, socks, echo.addr());
    assert_eq!(code, 1, "{bin}: SOCKS5 over max_per_user is answered 0x01");
    let r = get_as_alice(bin, web, echo.addr());
    assert_eq!(r.status, 503, "{bin}: http over max_per_user: {r:?}");
    assert_eq!(r.header("Portico-Error"), Some("limit"), "{bin}: {r:?}");
    for svc in ["socks", "web"] {
        let l = p.expect_access_lines(svc, 1, PROMPTLY, |l| l.err.as_deref() == Some("limit"));
        assert_eq!(l[0].user, "alice", "{bin}: {l:?}");
    }
    for svc in ["socks", "web"] {
        expect_metric(
            bin,
            status,
            &format!("portico_refused_total{{service=\"{svc}\",reason=\"limit\"}} 1"),
        );
    }
    echo_check(&mut held, b"still served")
        .unwrap_or_else(|e| panic!("{bin}: the first tunnel after the refusals: {e}"));

    drop(held);
    let again = poll_until(PROMPTLY, EVERY, || {
        let (code, s) = socks5_as_alice(bin, socks, echo.addr());
        (code == 0).then_some(s)
    });
    let mut again =
        again.unwrap_or_else(|| panic!("{bin}: alice is served once her tunnel closed"));
    echo_check(&mut again, b"again").unwrap_or_else(|e| panic!("{bin}: the new tunnel: {e}"));
}

/// A daily quota of 4 KiB for alice: a tunnel moving more than that goes
/// on, but her new SOCKS5 requests are answered 0x02 and her http requests
/// 403 `Portico-Error: quota`, logged `err=quota`; `/quotas` and the
/// metric say the count.
fn a_used_quota_refuses_new_requests(bin: Bin) {
    let echo = TestServer::start(Behaviour::Echo);
    let (p, ports) = start(bin, 3, |ports| {
        format!(
            "{}{ALICE}\n[[quota]]\nname = \"daily\"\nusers = [\"alice\"]\nbytes = \"4KiB\"\n\
             per = \"day\"\n{}{}{}",
            config_head("", ""),
            service("web", "http", ports[0], "auth = true"),
            service("socks", "socks", ports[1], "auth = true"),
            service("status", "status", ports[2], ""),
        )
    });
    let (web, socks, status) = (local(ports[0]), local(ports[1]), local(ports[2]));
    // A start with quotas and no [state] dir warns.
    p.expect_log_line("kept in memory only", PROMPTLY);
    let (code, mut tunnel) = socks5_as_alice(bin, socks, echo.addr());
    assert_eq!(code, 0, "{bin}: alice's tunnel is granted");
    let chunk = vec![b'q'; 3000];
    echo_check(&mut tunnel, &chunk).unwrap_or_else(|e| panic!("{bin}: the tunnel: {e}"));
    let n = poll_until(PROMPTLY, EVERY, || {
        let n = used(bin, status, "daily", "alice");
        (n >= 6000).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "{bin}: /quotas counts alice's 6000 bytes: {:?}",
            quotas(bin, status)
        )
    });
    assert_eq!(n, 6000, "{bin}: both directions counted, once");

    let (code, _) = socks5_as_alice(bin, socks, echo.addr());
    assert_eq!(code, 2, "{bin}: SOCKS5 over the quota is answered 0x02");
    let r = get_as_alice(bin, web, echo.addr());
    assert_eq!(r.status, 403, "{bin}: http over the quota: {r:?}");
    assert_eq!(r.header("Portico-Error"), Some("quota"), "{bin}: {r:?}");
    for svc in ["socks", "web"] {
        p.expect_access_lines(svc, 1, PROMPTLY, |l| {
            l.err.as_deref() == Some("quota") && l.user == "alice"
        });
        expect_metric(
            bin,
            status,
            &format!("portico_refused_total{{service=\"{svc}\",reason=\"quota\"}} 1"),
        );
    }
    // The tunnel open before goes on, and its bytes still count.
    echo_check(&mut tunnel, b"goes on").unwrap_or_else(|e| panic!("{bin}: the open tunnel: {e}"));
    let rows = poll_until(PROMPTLY, EVERY, || {
        let rows = quotas(bin, status);
        (rows.len() == 1 && rows[0].2 == 6014).then_some(rows)
    })
    .unwrap_or_else(|| panic!("{bin}: /quotas: {:?}", quotas(bin, status)));
    let (q, subject, used_bytes, limit, end) = &rows[0];
    assert_eq!(
        (q.as_str(), subject.as_str(), *limit),
        ("daily", "alice", 4096)
    );
    // RFC 3339 at local midnight: 2026-12-07T00:00:00Z or …+01:00.
    assert!(
        end.len() >= 20 && end[10..].starts_with("T00:00:00") && end.as_bytes()[4] == b'-',
        "{bin}: period_end {end:?}"
    );
    expect_metric(
        bin,
        status,
        &format!("portico_quota_used_bytes{{quota=\"daily\",subject=\"alice\"}} {used_bytes}"),
    );
}

/// An HTTP origin that keeps its connections open and answers every
/// request with `BODY` bytes.
fn keep_alive_origin() -> Acceptor {
    Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "origin", |mut s, _| {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        loop {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => return,
                }
            }
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
            if s.write_all(reply.as_bytes()).is_err() || s.write_all(&[b'o'; BODY]).is_err() {
                return;
            }
        }
    })
}

/// The body the keep-alive origin sends.
const BODY: usize = 3000;

/// Reads one response with a Content-Length body from `s`: its status
/// and `Portico-Error` header, if any.
fn read_response(bin: Bin, s: &mut TcpStream) -> (u16, Option<String>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!("{bin}: reading a response head: {other:?} after {head:?}"),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{bin}: status line of {head:?}"));
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = field("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{bin}: no Content-Length in {head:?}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .unwrap_or_else(|e| panic!("{bin}: the body of {head:?}: {e}"));
    (status, field("portico-error"))
}

/// Requests on one keep-alive connection to one origin are each checked:
/// once the quota is used up, the next request on the same connection is
/// refused 403 `Portico-Error: quota`.
fn keep_alive_requests_are_checked_each(bin: Bin) {
    let origin = keep_alive_origin();
    let (_p, ports) = start(bin, 1, |ports| {
        format!(
            "{}{ALICE}\n[[quota]]\nname = \"daily\"\nusers = [\"alice\"]\nbytes = \"4KiB\"\n\
             per = \"day\"\n{}",
            config_head("", ""),
            service("web", "http", ports[0], "auth = true"),
        )
    });
    let o = origin.addr();
    let req = format!(
        "GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nProxy-Authorization: Basic {ALICE_BASIC}\r\n\r\n"
    );
    let mut s = connect(local(ports[0])).unwrap_or_else(|e| panic!("{bin}: connect: {e}"));
    // About 3.3 KB counted: under 4 KiB, so the second is served too.
    for n in 1..=2 {
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{bin}: request {n}: {e}"));
        assert_eq!(
            read_response(bin, &mut s),
            (200, None),
            "{bin}: request {n}"
        );
    }
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{bin}: request 3: {e}"));
    assert_eq!(
        read_response(bin, &mut s),
        (403, Some("quota".to_string())),
        "{bin}: the request after the quota was used up"
    );
    assert_eq!(
        origin.accepted(),
        1,
        "{bin}: both served requests shared one upstream"
    );
}

/// The state file's text (empty when there is none yet).
fn state_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("quotas.state")).unwrap_or_default()
}

/// Starts `bin` with a client-address quota on a mapped port to `echo`,
/// its counts in `dir`: the proxy, the mapped port and the status service.
fn start_counted(bin: Bin, echo: SocketAddr, dir: &Path) -> (Portico, SocketAddr, SocketAddr) {
    let (p, ports) = start(bin, 2, |ports| {
        format!(
            "{}[state]\ndir = \"{}\"\n\n[[quota]]\nname = \"lan\"\nclients = [\"127.0.0.0/8\"]\n\
             bytes = \"1MiB\"\nper = \"month\"\n{}{}",
            config_head("", ""),
            dir.display(),
            mapped_service("map", ports[0], echo, ""),
            service("status", "status", ports[1], ""),
        )
    });
    (p, local(ports[0]), local(ports[1]))
}

/// Moves `n` bytes each way through the mapped port.
fn move_bytes(bin: Bin, map: SocketAddr, n: usize) {
    let mut s = connect(map).unwrap_or_else(|e| panic!("{bin}: connect to the mapped port: {e}"));
    echo_check(&mut s, &vec![b'm'; n]).unwrap_or_else(|e| panic!("{bin}: through the map: {e}"));
}

/// The counts outlive a SIGTERM (written at shutdown) and a `kill -9`
/// after a periodic write (the state file changed).
fn counts_survive_restarts(bin: Bin) {
    let echo = TestServer::start(Behaviour::Echo);
    let dir = TempDir::new();
    let (mut p, map, status) = start_counted(bin, echo.addr(), dir.path());
    move_bytes(bin, map, 1000);
    poll_until(PROMPTLY, EVERY, || {
        (used(bin, status, "lan", "127.0.0.1") == 2000).then_some(())
    })
    .unwrap_or_else(|| panic!("{bin}: /quotas: {:?}", quotas(bin, status)));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(EXIT).success(), "{bin}: exit after SIGTERM");
    assert!(
        state_text(dir.path()).contains("\t2000\t"),
        "{bin}: the state file after SIGTERM:\n{}",
        state_text(dir.path())
    );

    let (mut p, map, status) = start_counted(bin, echo.addr(), dir.path());
    assert_eq!(
        used(bin, status, "lan", "127.0.0.1"),
        2000,
        "{bin}: the count after a clean restart"
    );
    move_bytes(bin, map, 500);
    poll_until(SAVED, EVERY, || {
        state_text(dir.path()).contains("\t3000\t").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{bin}: the state file does not show 3000 bytes within {SAVED:?}:\n{}",
            state_text(dir.path())
        )
    });
    p.signal(libc::SIGKILL);
    p.wait_exit(EXIT);

    let (_p, _map, status) = start_counted(bin, echo.addr(), dir.path());
    assert_eq!(
        used(bin, status, "lan", "127.0.0.1"),
        3000,
        "{bin}: the count after kill -9"
    );
}

/// Started as root with `[process] user = "nobody"`, the counts are
/// written after root is given up: the state file belongs to nobody, and a
/// restart reads it back.
fn the_state_is_written_as_the_user_dropped_to(bin: Bin) {
    use std::os::unix::fs::MetadataExt;
    let name = std::ffi::CString::new("nobody").expect("no NUL");
    // SAFETY: getpwnam returns null or a pointer to static data, read at
    // once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "the user nobody must exist");
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    let echo = TestServer::start(Behaviour::Echo);
    let state = TempDir::new();
    let dir = state.path();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: chown(2) on a path we made.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert_eq!(
        rc,
        0,
        "{bin}: chown {}: {}",
        dir.display(),
        io::Error::last_os_error()
    );
    let config = |ports: &[u16]| {
        format!(
            "{}[process]\nuser = \"nobody\"\n[state]\ndir = \"{}\"\n\n[[quota]]\n\
             name = \"lan\"\nclients = [\"127.0.0.0/8\"]\nbytes = \"1MiB\"\nper = \"week\"\n{}{}",
            config_head("", ""),
            dir.display(),
            mapped_service("map", ports[0], echo.addr(), ""),
            service("status", "status", ports[1], ""),
        )
    };
    let (mut p, ports) = start(bin, 2, config);
    p.expect_log_line("running as user nobody", PROMPTLY);
    move_bytes(bin, local(ports[0]), 700);
    poll_until(PROMPTLY, EVERY, || {
        (used(bin, local(ports[1]), "lan", "127.0.0.1") == 1400).then_some(())
    })
    .unwrap_or_else(|| panic!("{bin}: /quotas: {:?}", quotas(bin, local(ports[1]))));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(EXIT).success(), "{bin}: exit after SIGTERM");
    let file = dir.join("quotas.state");
    let meta = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{bin}: {}: {e}\n{}", file.display(), p.stderr_text()));
    assert_eq!(
        meta.uid(),
        uid,
        "{bin}: {} belongs to nobody",
        file.display()
    );
    assert!(
        state_text(dir).contains("\t1400\t"),
        "{bin}: {}",
        state_text(dir)
    );

    let (_p, ports) = start(bin, 2, config);
    assert_eq!(
        used(bin, local(ports[1]), "lan", "127.0.0.1"),
        1400,
        "{bin}: the count read back after the restart"
    );
}

/// A `quotas.state` that does not read stops the start, naming the file
/// and the line, rather than starting the counts from zero unasked.
fn a_malformed_state_file_stops_the_start(bin: Bin) {
    let echo = TestServer::start(Behaviour::Echo);
    let state = TempDir::new();
    let file = state.write(
        "quotas.state",
        "# portico quota counts v1\nlan\t127.0.0.1\tmany\t1\n",
    );
    let port = portico_tests::free_port();
    let config = format!(
        "{}[state]\ndir = \"{}\"\n\n[[quota]]\nname = \"lan\"\nclients = [\"127.0.0.0/8\"]\n\
         bytes = \"1MiB\"\nper = \"day\"\n{}",
        config_head("", ""),
        state.path().display(),
        mapped_service("map", port, echo.addr(), ""),
    );
    let Err(e) = Portico::try_start_with(bin, &config, StartOptions::default()) else {
        panic!("{bin}: started on a malformed {}", file.display());
    };
    let want = format!("{}:2: ", file.display());
    assert!(
        e.stderr
            .iter()
            .any(|l| l.contains(&want) && l.contains("move the file away")),
        "{bin}: stderr names {want:?}:\n{}",
        e.stderr.join("\n")
    );
}
