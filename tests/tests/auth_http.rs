//! The http proxy's logins off the event loop, end to end through both
//! binaries: a request with `Proxy-Authorization` waits for the verdict on
//! its password while the worker serves other connections (one worker,
//! several costly wrong passwords at once, a status request among them),
//! each then refused with 407; the right password goes through, and its
//! verdict is cached (a request pipelined behind the first one, and the
//! next connection's, cost no check). What is observed: the order of the
//! replies, and `portico_password_checks_total` and
//! `portico_auth_failures_total` on `/metrics`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use portico_tests::data::base64;
use portico_tests::reply::{exchange, Reply};
use portico_tests::{
    both, config_head, connect, poll_until, run_cli, service, start_on_free_ports, Bin,
    StartOptions, PROMPTLY,
};

both!(http_logins_being_checked_do_not_hold_up_other_connections);

/// A PHC string whose check costs real work (16 MiB, three passes) and that
/// no password matches (its hash is zeros).
const COSTLY_PHC: &str =
    "$argon2id$v=19$m=16384,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(20);

/// How many wrong passwords are sent at once.
const N: usize = 8;

/// `Basic` credentials for `user:password` (RFC 7617).
fn basic(user: &str, password: &str) -> String {
    base64(format!("{user}:{password}").as_bytes())
}

/// A GET of `/healthz` on `status` through the proxy, as `user:password`.
fn request(status: SocketAddr, user: &str, password: &str, close: bool) -> String {
    format!(
        "GET http://{status}/healthz HTTP/1.1\r\nHost: {status}\r\n\
         Proxy-Authorization: Basic {}\r\n{}\r\n",
        basic(user, password),
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// The value of the sample `name{labels}` on `/metrics` (0 when absent:
/// the login counters show once there is something to count).
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

/// Whether any of the reply to a request has come, without waiting.
fn answered(bin: Bin, s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0; 1];
    let n = match s.peek(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => panic!("{bin}: peek at a reply: {e}"),
    };
    s.set_nonblocking(false).expect("blocking");
    n > 0
}

/// Everything the proxy says on `s` until it closes.
fn read_all(bin: Bin, s: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{bin}: read a reply: {e} (after {} bytes)", raw.len()));
    raw
}

/// With one worker, N requests with a costly wrong password at once: a
/// status request made while their checks run is answered while at least
/// one of them still waits for its verdict; each is then refused with 407
/// after one check, counted as a wrong password. The right password then
/// goes through, checked once: a request pipelined behind it on the same
/// connection, and a request on another connection, are answered from the
/// cache.
fn http_logins_being_checked_do_not_hold_up_other_connections(bin: Bin) {
    let out = run_cli(bin, &["hash-password"], Some(b"right-pw"), PROMPTLY * 6);
    assert_eq!(out.code(), Some(0), "{bin}: hash-password: {out:?}");
    let phc = out.stdout.trim().to_string();
    let (p, ports) = start_on_free_ports(bin, 2, StartOptions::default(), |ports| {
        format!(
            "{}\n[runtime]\nworkers = 1\n\
             [[user]]\nname = \"carol\"\npassword = \"{COSTLY_PHC}\"\n\
             [[user]]\nname = \"dave\"\npassword = \"{phc}\"\n{}{}",
            // Requests queue for the checks (a debug build's argon2 is
            // slow); the wrong passwords stay below the throttle.
            config_head("handshake_timeout = \"120s\"\nauth_failures = 100", ""),
            service("web", "http", ports[0], "auth = true"),
            service("status", "status", ports[1], "")
        )
    });
    let web = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let status = SocketAddr::from(([127, 0, 0, 1], ports[1]));

    let mut waiting: Vec<TcpStream> = (0..N)
        .map(|i| {
            let mut s = connect(web).unwrap_or_else(|e| panic!("{bin}: connect to {web}: {e}"));
            s.write_all(request(status, "carol", &format!("guess-{i}"), false).as_bytes())
                .unwrap_or_else(|e| panic!("{bin}: send a request: {e}"));
            s
        })
        .collect();
    // Every request is in the proxy's hands (its check asked for); the
    // status requests that tell so are served meanwhile.
    let checks = "portico_password_checks_total{service=\"web\"}";
    let asked = poll_until(PROMPTLY * 6, EVERY, || {
        (metric(bin, status, checks) == N as u64).then_some(())
    });
    assert!(
        asked.is_some(),
        "{bin}: {N} requests were not all handed to the password checks within {:?} \
         ({} so far)\nstderr:\n{}",
        PROMPTLY * 6,
        metric(bin, status, checks),
        p.stderr_text()
    );
    let health = exchange(
        status,
        &format!("GET /healthz HTTP/1.1\r\nHost: {status}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap_or_else(|e| panic!("{bin}: GET /healthz: {e}"));
    let pending = waiting.iter().filter(|s| !answered(bin, s)).count();
    assert_eq!(health.status, 200, "{bin}: /healthz: {health:?}");
    assert!(
        pending > 0,
        "{bin}: /healthz was answered only once all {N} requests had their verdict: \
         the checks held up the other connections"
    );
    for s in &mut waiting {
        let raw = read_all(bin, s);
        let r = Reply::parse(&raw).unwrap_or_else(|e| panic!("{bin}: a refusal: {e}"));
        assert_eq!(r.status, 407, "{bin}: a wrong password: {r:?}");
        assert!(
            r.header("proxy-authenticate").is_some(),
            "{bin}: the 407 asks for credentials: {r:?}"
        );
    }
    assert_eq!(
        metric(bin, status, checks),
        N as u64,
        "{bin}: one check per request"
    );
    let wrong = "portico_auth_failures_total{service=\"web\",reason=\"wrong\"}";
    assert_eq!(metric(bin, status, wrong), N as u64, "{bin}: {wrong}");

    // The right password, and a second request pipelined behind it: the
    // second waits, buffered, for the first one's verdict and its
    // response, then is answered from the cache.
    let mut s = connect(web).unwrap_or_else(|e| panic!("{bin}: connect to {web}: {e}"));
    let two = format!(
        "{}{}",
        request(status, "dave", "right-pw", false),
        request(status, "dave", "right-pw", true)
    );
    s.write_all(two.as_bytes())
        .unwrap_or_else(|e| panic!("{bin}: send two requests: {e}"));
    let raw = String::from_utf8_lossy(&read_all(bin, &mut s)).into_owned();
    assert_eq!(
        raw.matches("HTTP/1.1 200 ").count(),
        2,
        "{bin}: both pipelined requests with the right password are answered: {raw:?}"
    );
    assert_eq!(
        metric(bin, status, checks),
        N as u64 + 1,
        "{bin}: the right password is checked once for both requests"
    );
    let r = exchange(web, &request(status, "dave", "right-pw", true))
        .unwrap_or_else(|e| panic!("{bin}: a request with the right password: {e}"));
    assert_eq!(r.status, 200, "{bin}: the right password again: {r:?}");
    assert_eq!(
        metric(bin, status, checks),
        N as u64 + 1,
        "{bin}: the next connection's request is answered from the cache"
    );
}
