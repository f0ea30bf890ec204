//! Password checks at scale, end to end through both binaries: argon2 runs
//! on a pool of threads, so other connections are served while logins are
//! being checked (one worker, several costly SOCKS5 logins at once, a
//! status request among them); verdicts are cached (`[limits]
//! auth_cache`), and a reload empties the cache; an address that failed
//! `[limits] auth_failures` logins is refused unchecked (http 429 with
//! `Retry-After`, SOCKS5 status 1, `err=throttled`). What is observed: the
//! order of the replies, and `portico_password_checks_total` and
//! `portico_auth_failures_total` on `/metrics`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use portico_tests::reply::{exchange, Reply};
use portico_tests::{
    both, config_head, connect, poll_until, run_cli, service, start_on_free_ports, Bin, Portico,
    StartOptions, PROMPTLY,
};

both!(
    logins_being_checked_do_not_hold_up_other_connections,
    a_password_is_checked_once_until_a_reload,
    failed_logins_throttle_the_client_address
);

/// A PHC string whose check costs real work (16 MiB, three passes) and that
/// no password matches (its hash is zeros): what a client guessing a
/// password makes the proxy compute.
const COSTLY_PHC: &str =
    "$argon2id$v=19$m=16384,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(20);

/// A configuration with one worker, a socks service with auth on
/// (127.0.0.1:`ports[0]`), a status service (`ports[1]`) and `users`.
fn config(ports: &[u16], users: &str) -> String {
    format!(
        "{}\n[runtime]\nworkers = 1\n{users}{}{}",
        // Logins queue for the checks (a debug build's argon2 is slow).
        config_head("handshake_timeout = \"120s\"", ""),
        service("socks", "socks", ports[0], "auth = true"),
        service("status", "status", ports[1], "")
    )
}

fn user(name: &str, phc: &str) -> String {
    format!("[[user]]\nname = \"{name}\"\npassword = \"{phc}\"\n")
}

fn start(bin: Bin, users: &str) -> (Portico, SocketAddr, SocketAddr) {
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        config(ports, users)
    });
    (
        p,
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
    )
}

fn get(bin: Bin, status: SocketAddr, path: &str) -> Reply {
    let r = exchange(
        status,
        &format!("GET {path} HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET {path}: {e}"));
    assert_eq!(r.status, 200, "{bin}: GET {path}: {r:?}");
    r
}

/// The value of the sample `name{labels}` on `/metrics` (0 when absent:
/// the login counters show once there is something to count).
fn metric(bin: Bin, status: SocketAddr, sample: &str) -> u64 {
    let body = get(bin, status, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// The SOCKS5 greeting (username/password only) and the RFC 1929 login,
/// sent at once.
fn login_bytes(name: &str, password: &str) -> Vec<u8> {
    let mut b = vec![5, 1, 2, 1, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(password.len() as u8);
    b.extend_from_slice(password.as_bytes());
    b
}

/// Starts a SOCKS5 login; the reply is read later.
fn start_login(bin: Bin, socks: SocketAddr, name: &str, password: &str) -> TcpStream {
    let mut s = connect(socks).unwrap_or_else(|e| panic!("{bin}: connect to {socks}: {e}"));
    s.write_all(&login_bytes(name, password))
        .unwrap_or_else(|e| panic!("{bin}: send a login: {e}"));
    s
}

/// The four reply bytes of a login: the method choice (5, 2) and the
/// RFC 1929 status (1, status), read with the socket's timeout.
fn login_reply(bin: Bin, s: &mut TcpStream) -> [u8; 4] {
    let mut r = [0; 4];
    s.read_exact(&mut r)
        .unwrap_or_else(|e| panic!("{bin}: read the login's reply: {e}"));
    r
}

/// A whole login: whether the proxy accepted it.
fn login(bin: Bin, socks: SocketAddr, name: &str, password: &str) -> bool {
    let mut s = start_login(bin, socks, name, password);
    match login_reply(bin, &mut s) {
        [5, 2, 1, 0] => true,
        [5, 2, 1, 1] => false,
        r => panic!("{bin}: {name}/{password}: unexpected login reply {r:02x?}"),
    }
}

/// Whether the complete reply of a login has come, without waiting.
fn answered(bin: Bin, s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0; 4];
    let n = match s.peek(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => panic!("{bin}: peek at a login's reply: {e}"),
    };
    s.set_nonblocking(false).expect("blocking");
    n == 4
}

/// Several costly wrong-password logins at once, with one worker: a status
/// request made while they are being checked is answered while at least
/// one of them is still waiting for its verdict (a check does not run on
/// the event loop, nor under the core's lock); then every login is
/// refused, each after one check, and counted as a wrong password.
fn logins_being_checked_do_not_hold_up_other_connections(bin: Bin) {
    const N: usize = 16;
    let (p, socks, status) = start(bin, &user("carol", COSTLY_PHC));
    let mut logins: Vec<TcpStream> = (0..N)
        .map(|i| start_login(bin, socks, "carol", &format!("guess-{i}")))
        .collect();
    // Every login is in the proxy's hands (its check asked for); the
    // status requests that tell so are served meanwhile.
    let checks = "portico_password_checks_total{service=\"socks\"}";
    let asked = poll_until(PROMPTLY * 6, EVERY, || {
        (metric(bin, status, checks) == N as u64).then_some(())
    });
    assert!(
        asked.is_some(),
        "{bin}: {N} logins were not all handed to the password checks within {:?} \
         ({} so far)\nstderr:\n{}",
        PROMPTLY * 6,
        metric(bin, status, checks),
        p.stderr_text()
    );
    let health = get(bin, status, "/healthz");
    let waiting = logins.iter().filter(|s| !answered(bin, s)).count();
    assert!(
        waiting > 0,
        "{bin}: /healthz ({}) was answered only once all {N} logins had their verdict: \
         the checks held up the other connections",
        health.status
    );
    for s in &mut logins {
        assert_eq!(
            login_reply(bin, s),
            [5, 2, 1, 1],
            "{bin}: a wrong password is refused with RFC 1929 status 1"
        );
    }
    assert_eq!(
        metric(bin, status, checks),
        N as u64,
        "{bin}: one check per login"
    );
    let wrong = "portico_auth_failures_total{service=\"socks\",reason=\"wrong\"}";
    assert_eq!(metric(bin, status, wrong), N as u64, "{bin}: {wrong}");
}

/// A right password is checked once: the next login with it is answered
/// from the cache (no check counted), a wrong one likewise; an unknown
/// user costs no check at all; a reload empties the cache.
fn a_password_is_checked_once_until_a_reload(bin: Bin) {
    let out = run_cli(bin, &["hash-password"], Some(b"right-pw"), PROMPTLY * 6);
    assert_eq!(out.code(), Some(0), "{bin}: hash-password: {out:?}");
    let phc = out.stdout.trim().to_string();
    let users = user("dave", &phc);
    let (p, socks, status) = start(bin, &users);
    let checks = "portico_password_checks_total{service=\"socks\"}";
    let count = || metric(bin, status, checks);
    assert!(
        login(bin, socks, "dave", "right-pw"),
        "{bin}: right password"
    );
    assert_eq!(count(), 1, "{bin}: the first login is checked");
    assert!(
        login(bin, socks, "dave", "right-pw"),
        "{bin}: right password again"
    );
    assert_eq!(count(), 1, "{bin}: the second login comes from the cache");
    assert!(
        !login(bin, socks, "dave", "wrong-pw"),
        "{bin}: wrong password"
    );
    assert!(
        !login(bin, socks, "dave", "wrong-pw"),
        "{bin}: wrong password again"
    );
    assert_eq!(count(), 2, "{bin}: a wrong password is checked once too");
    assert!(
        !login(bin, socks, "nobody", "right-pw"),
        "{bin}: unknown user"
    );
    assert_eq!(count(), 2, "{bin}: an unknown user costs no check");
    let failures = |reason: &str| {
        metric(
            bin,
            status,
            &format!("portico_auth_failures_total{{service=\"socks\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(failures("wrong"), 2, "{bin}: wrong passwords counted");
    assert_eq!(failures("unknown-user"), 1, "{bin}: unknown users counted");

    // A reload (the same users) starts with an empty cache.
    let text = std::fs::read_to_string(p.config_path()).expect("read the configuration");
    let before = reloads(&p);
    std::fs::write(p.config_path(), format!("{text}\n# reloaded\n")).expect("rewrite");
    p.signal(libc::SIGHUP);
    let reloaded = poll_until(PROMPTLY, EVERY, || (reloads(&p) > before).then_some(()));
    assert!(
        reloaded.is_some(),
        "{bin}: no `configuration reloaded` line after SIGHUP\nstderr:\n{}",
        p.stderr_text()
    );
    assert!(
        login(bin, socks, "dave", "right-pw"),
        "{bin}: after the reload"
    );
    assert_eq!(
        count(),
        3,
        "{bin}: after a reload the password is checked again"
    );
}

fn reloads(p: &Portico) -> usize {
    p.stderr_lines()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count()
}

/// Once 127.0.0.1 has failed `auth_failures = 3` SOCKS5 logins, its next
/// logins are refused unchecked, the right password or not, on every
/// service: SOCKS5 with RFC 1929 status 1 and `err=throttled` in the
/// access line, the http proxy with 429, `Retry-After` and
/// `Portico-Error: throttled`, the telnet gateway with `login incorrect`;
/// each counted in
/// `portico_auth_failures_total`.
fn failed_logins_throttle_the_client_address(bin: Bin) {
    let (p, ports) = start_on_free_ports(bin, 4, StartOptions::default(), |ports| {
        format!(
            "{}\n{}{}{}{}{}",
            config_head("auth_failures = 3", ""),
            user("erin", "plain:right-pw"),
            service("socks", "socks", ports[0], "auth = true"),
            service("web", "http", ports[1], "auth = true"),
            service("status", "status", ports[2], ""),
            service("tn", "telnet", ports[3], "auth = true")
        )
    });
    let at = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let (socks, web, status) = (at(0), at(1), at(2));
    for i in 0..3 {
        assert!(
            !login(bin, socks, "erin", &format!("wrong-{i}")),
            "{bin}: a wrong password"
        );
    }
    let mut s = start_login(bin, socks, "erin", "right-pw");
    let me = s.local_addr().expect("local address");
    assert_eq!(
        login_reply(bin, &mut s),
        [5, 2, 1, 1],
        "{bin}: the right password from a throttled address is refused with status 1"
    );
    let line = p.access_of("socks", me, PROMPTLY);
    assert_eq!(
        line.err.as_deref(),
        Some("throttled"),
        "{bin}: the throttled login's access line {line:?}"
    );

    let r = exchange(
        web,
        &format!(
            "GET http://{status}/healthz HTTP/1.1\r\nHost: {status}\r\n\
             Proxy-Authorization: Basic ZXJpbjpyaWdodC1wdw==\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{bin}: a request through the http proxy: {e}"));
    assert_eq!(r.status, 429, "{bin}: throttled on the http proxy: {r:?}");
    assert_eq!(
        r.header("portico-error"),
        Some("throttled"),
        "{bin}: Portico-Error of {r:?}"
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{bin}: no Retry-After in seconds in {r:?}"));
    assert!(
        (1..=60).contains(&retry),
        "{bin}: Retry-After {retry} is not within the minute"
    );

    // The telnet gateway: its words for a failed login.
    let mut t = connect(at(3)).unwrap_or_else(|e| panic!("{bin}: connect to telnet: {e}"));
    let me = t.local_addr().expect("local address");
    read_until(bin, &mut t, "login: ");
    t.write_all(b"erin\r\n").expect("send the login");
    read_until(bin, &mut t, "password: ");
    t.write_all(b"right-pw\r\n").expect("send the password");
    let mut rest = Vec::new();
    t.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("{bin}: read telnet's answer: {e}"));
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("login incorrect"),
        "{bin}: telnet's answer to a throttled login: {rest:?}"
    );
    let line = p.access_of("tn", me, PROMPTLY);
    assert_eq!(line.err.as_deref(), Some("throttled"), "{bin}: {line:?}");

    let failures = |service: &str, reason: &str| {
        metric(
            bin,
            status,
            &format!("portico_auth_failures_total{{service=\"{service}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(failures("socks", "wrong"), 3, "{bin}: wrong passwords");
    assert_eq!(
        failures("socks", "throttled"),
        1,
        "{bin}: throttled socks logins"
    );
    assert_eq!(
        failures("web", "throttled"),
        1,
        "{bin}: throttled http logins"
    );
    assert_eq!(
        failures("tn", "throttled"),
        1,
        "{bin}: throttled telnet logins"
    );
}

/// Reads until `what` has come (Telnet commands and all), bounded by the
/// socket's timeout.
fn read_until(bin: Bin, s: &mut TcpStream, what: &str) {
    let mut got = Vec::new();
    let mut buf = [0; 256];
    while !String::from_utf8_lossy(&got).contains(what) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "{bin}: closed before {what:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{bin}: waiting for {what:?}: {e}"),
        }
    }
}
