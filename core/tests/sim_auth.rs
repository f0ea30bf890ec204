//! Password checks as the core sees them, driven by hand: a login whose
//! password is a hash asks the runtime for a check (`CheckPassword`) and
//! waits for the verdict (`PasswordChecked`), taking nothing else from its
//! client meanwhile; the verdict of a client that has gone is dropped; a
//! verdict asked of a configuration since reloaded is not trusted (the
//! password is checked again against the users now configured); verdicts
//! are cached, and failures counted. The same for the HTTP proxy, whose
//! request waits for its verdict with the client's next bytes unread.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use portico_core::sim::{show, Runtime};
use portico_core::{Action, ConnId, Event, IoKind, ListenerId, Side};

const SOCKS: u16 = 1080;
const DEST: u16 = 9000;

/// Two hashes no password matches (the simulated runtime answers the
/// checks itself, so they are never computed).
const HASH_A: &str =
    "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const HASH_B: &str =
    "$argon2id$v=19$m=8,t=1,p=1$b3RoZXJzYWx0b3RoZXJzYQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A socks service with auth on, and bob whose password is `password`
/// (a PHC string or `plain:…`).
fn config(password: &str) -> String {
    format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"stderr\"\n\
         [[user]]\nname = \"bob\"\npassword = \"{password}\"\n\
         [[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n\
         auth = true\n"
    )
}

/// The greeting and login of bob with `password`, and a CONNECT to
/// 127.0.0.1:DEST pipelined behind them.
fn login(password: &str) -> Vec<u8> {
    let mut b = vec![5, 1, 2, 1, 3];
    b.extend_from_slice(b"bob");
    b.push(password.len() as u8);
    b.extend_from_slice(password.as_bytes());
    b.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 1]);
    b.extend_from_slice(&DEST.to_be_bytes());
    b
}

/// A client that connected from port `from` and sent `bytes`; the
/// actions that followed.
fn client(rt: &mut Runtime, from: u16, bytes: &[u8]) -> (ConnId, Vec<Action>) {
    let conn = rt
        .accept(ListenerId::new(0, 0), local(from), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    rt.feed(conn, Side::Client, bytes);
    (conn, rt.drain())
}

/// The hash a `CheckPassword` among `actions` asks about, for `conn`.
fn asked(actions: &[Action], conn: ConnId) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::CheckPassword {
            conn: c,
            phc,
            password,
        } if *c == conn => {
            assert_eq!(
                format!("{password:?}"),
                "Secret(..)",
                "a password never shows in an action's Debug form"
            );
            Some(phc.clone())
        }
        _ => None,
    })
}

fn connects(actions: &[Action], conn: ConnId) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Connect { conn: c, addr, .. } if *c == conn && *addr == local(DEST)))
}

fn counter(rt: &Runtime, f: impl Fn(&portico_core::ServiceCounters) -> u64) -> u64 {
    let snap = rt.snapshot();
    let row = snap
        .services
        .iter()
        .find(|s| s.name == "socks")
        .expect("socks row");
    f(&row.counters)
}

#[test]
fn a_login_waits_for_its_verdict_then_goes_on() {
    let mut rt = Runtime::started(&config(HASH_A), 1);
    let (conn, actions) = client(&mut rt, 40000, &login("pw"));
    assert_eq!(asked(&actions, conn).as_deref(), Some(HASH_A));
    assert!(!connects(&actions, conn), "no connect before the verdict");
    let said = rt.flush(conn, Side::Client);
    assert_eq!(
        said,
        vec![5, 2],
        "only the method choice before the verdict: {}",
        show(&said)
    );
    rt.handle(Event::PasswordChecked { conn, ok: true });
    let actions = rt.drain();
    assert!(
        connects(&actions, conn),
        "the pipelined CONNECT goes on: {actions:?}"
    );
    assert_eq!(rt.flush(conn, Side::Client), vec![1, 0]);
    assert_eq!(counter(&rt, |c| c.password_checks), 1);

    // The same password again: from the cache, at once.
    let (again, actions) = client(&mut rt, 40001, &login("pw"));
    assert_eq!(
        asked(&actions, again),
        None,
        "the verdict is cached: {actions:?}"
    );
    assert!(connects(&actions, again));
    assert_eq!(rt.flush(again, Side::Client), vec![5, 2, 1, 0]);
    assert_eq!(counter(&rt, |c| c.password_checks), 1);
}

#[test]
fn a_wrong_password_is_refused_and_counted() {
    let mut rt = Runtime::started(&config(HASH_A), 2);
    let (conn, actions) = client(&mut rt, 40000, &login("nope"));
    assert!(asked(&actions, conn).is_some());
    rt.handle(Event::PasswordChecked { conn, ok: false });
    let actions = rt.drain();
    assert!(!connects(&actions, conn));
    assert_eq!(rt.flush(conn, Side::Client), vec![5, 2, 1, 1]);
    rt.drain();
    assert_eq!(
        counter(&rt, |c| c.auth_failures.get("wrong").copied().unwrap_or(0)),
        1
    );
    // An unknown user costs no check, and is counted as such.
    let mut other = login("pw");
    other[5..8].copy_from_slice(b"eve");
    let (eve, actions) = client(&mut rt, 40001, &other);
    assert_eq!(asked(&actions, eve), None);
    assert_eq!(rt.flush(eve, Side::Client), vec![5, 2, 1, 1]);
    assert_eq!(
        counter(&rt, |c| c
            .auth_failures
            .get("unknown-user")
            .copied()
            .unwrap_or(0)),
        1
    );
}

#[test]
fn the_verdict_of_a_client_gone_is_dropped() {
    let mut rt = Runtime::started(&config(HASH_A), 3);
    let (conn, actions) = client(&mut rt, 40000, &login("pw"));
    assert!(asked(&actions, conn).is_some());
    rt.flush(conn, Side::Client);
    // A client that only shut its side still gets its answer...
    rt.handle(Event::Eof {
        conn,
        side: Side::Client,
    });
    rt.drain();
    assert!(
        rt.is_live(conn),
        "a half-closed client waits for its verdict"
    );
    // ...one whose connection broke is gone.
    goes_mid_check(&mut rt, conn);
}

/// `conn`'s client resets while its password is checked: the session is
/// closed, and the pool's later verdict changes nothing and asks nothing.
fn goes_mid_check(rt: &mut Runtime, conn: ConnId) {
    rt.handle(Event::IoError {
        conn,
        side: Side::Client,
        error: IoKind::Reset,
    });
    rt.drain();
    assert!(!rt.is_live(conn), "a client that went mid-check is closed");
    rt.handle_stale(
        conn,
        Side::Client,
        Event::PasswordChecked { conn, ok: true },
    );
    assert!(rt.is_empty());
}

#[test]
fn a_verdict_from_before_a_reload_is_checked_again() {
    let mut rt = Runtime::started(&config(HASH_A), 4);
    let (conn, actions) = client(&mut rt, 40000, &login("pw"));
    assert_eq!(asked(&actions, conn).as_deref(), Some(HASH_A));
    rt.reconfigure(portico_core::sim::parse(&config(HASH_B)), false);
    rt.drain();
    // The old hash's verdict is not trusted: the new one is asked about.
    rt.handle(Event::PasswordChecked { conn, ok: true });
    let actions = rt.drain();
    assert_eq!(
        asked(&actions, conn).as_deref(),
        Some(HASH_B),
        "{actions:?}"
    );
    assert!(!connects(&actions, conn));
    assert_eq!(rt.flush(conn, Side::Client), vec![5, 2]);
    rt.handle(Event::PasswordChecked { conn, ok: false });
    rt.drain();
    assert_eq!(rt.flush(conn, Side::Client), vec![1, 1]);
    rt.drain();
    assert!(!rt.is_live(conn), "closed after the refusal");

    // Reloaded to a plain password meanwhile: told at once. (Another
    // password: the wrong verdict on "pw" is cached now.)
    let (conn, actions) = client(&mut rt, 40001, &login("pw2"));
    assert_eq!(asked(&actions, conn).as_deref(), Some(HASH_B));
    rt.reconfigure(portico_core::sim::parse(&config("plain:pw2")), false);
    rt.drain();
    rt.handle(Event::PasswordChecked { conn, ok: false });
    let actions = rt.drain();
    assert!(connects(&actions, conn), "plain pw2 matches: {actions:?}");
    assert_eq!(rt.flush(conn, Side::Client), vec![5, 2, 1, 0]);
}

#[test]
fn a_reload_empties_the_cache() {
    let mut rt = Runtime::started(&config(HASH_A), 5);
    let (conn, _) = client(&mut rt, 40000, &login("pw"));
    rt.handle(Event::PasswordChecked { conn, ok: true });
    rt.drain();
    rt.reconfigure(portico_core::sim::parse(&config(HASH_A)), false);
    rt.drain();
    let (again, actions) = client(&mut rt, 40001, &login("pw"));
    assert_eq!(
        asked(&actions, again).as_deref(),
        Some(HASH_A),
        "{actions:?}"
    );
}

#[test]
fn failures_throttle_the_client_address() {
    let text = config("plain:pw").replace("[log]", "[limits]\nauth_failures = 2\n[log]");
    let mut rt = Runtime::started(&text, 6);
    for from in [40000, 40001] {
        let (conn, _) = client(&mut rt, from, &login("no"));
        assert_eq!(rt.flush(conn, Side::Client), vec![5, 2, 1, 1]);
        rt.drain();
    }
    // The right password now: refused unchecked, logged as throttled.
    let (conn, actions) = client(&mut rt, 40002, &login("pw"));
    assert!(!connects(&actions, conn), "{actions:?}");
    assert_eq!(rt.flush(conn, Side::Client), vec![5, 2, 1, 1]);
    let actions = rt.drain();
    let record = actions
        .iter()
        .find_map(|a| match a {
            Action::Access(r) if r.client == local(40002) => Some(r.clone()),
            _ => None,
        })
        .expect("an access record");
    assert_eq!(
        record.error,
        Some(portico_core::Cause::Throttled),
        "{record:?}"
    );
    let failures =
        |reason: &str| counter(&rt, |c| c.auth_failures.get(reason).copied().unwrap_or(0));
    assert_eq!((failures("wrong"), failures("throttled")), (2, 1));
    // A minute after the first failure the address may try again.
    rt.advance(std::time::Duration::from_secs(60));
    let (conn, actions) = client(&mut rt, 40003, &login("pw"));
    assert!(connects(&actions, conn), "{actions:?}");
    assert_eq!(rt.flush(conn, Side::Client), vec![5, 2, 1, 0]);
}

// ------------------------------------------------------------ the HTTP proxy

const HTTP: u16 = 3128;

/// An http service with auth on, and bob whose password is `password`.
fn http_config(password: &str) -> String {
    format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"stderr\"\n\
         [[user]]\nname = \"bob\"\npassword = \"{password}\"\n\
         [[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:{HTTP}\"]\n\
         auth = true\n"
    )
}

/// A GET to 127.0.0.1:DEST with `basic` (base64 of "user:password") as
/// its Proxy-Authorization.
fn get(basic: &str) -> String {
    format!(
        "GET http://127.0.0.1:{DEST}/ HTTP/1.1\r\nHost: 127.0.0.1:{DEST}\r\n\
         Proxy-Authorization: Basic {basic}\r\n\r\n"
    )
}

/// base64 of "bob:pw", "bob:nope" and "bob:pw2".
const BOB_PW: &str = "Ym9iOnB3";
const BOB_NOPE: &str = "Ym9iOm5vcGU=";
const BOB_PW2: &str = "Ym9iOnB3Mg==";

fn http_client(rt: &mut Runtime, from: u16, bytes: &[u8]) -> (ConnId, Vec<Action>) {
    let conn = rt
        .accept(ListenerId::new(0, 0), local(from), Some(local(HTTP)))
        .expect("accepted");
    rt.drain();
    rt.feed(conn, Side::Client, bytes);
    (conn, rt.drain())
}

fn checks_asked(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::CheckPassword { .. }))
        .count()
}

fn web_counter(rt: &Runtime, f: impl Fn(&portico_core::ServiceCounters) -> u64) -> u64 {
    let snap = rt.snapshot();
    let row = snap
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("web row");
    f(&row.counters)
}

#[test]
fn an_http_request_waits_for_its_verdict_and_what_follows_it_stays_unread() {
    let mut rt = Runtime::started(&http_config(HASH_A), 11);
    // Two requests pipelined: only the first is parsed and asked about.
    let two = format!("{}{}", get(BOB_PW), get(BOB_PW));
    let (conn, actions) = http_client(&mut rt, 40000, two.as_bytes());
    assert_eq!(asked(&actions, conn).as_deref(), Some(HASH_A));
    assert_eq!(checks_asked(&actions), 1, "{actions:?}");
    assert!(!connects(&actions, conn), "no connect before the verdict");
    assert!(
        rt.flush(conn, Side::Client).is_empty(),
        "nothing said before the verdict"
    );
    assert!(
        !rt.interest(conn, Side::Client).0,
        "the client is not read while its request waits"
    );
    rt.handle(Event::PasswordChecked { conn, ok: true });
    let actions = rt.drain();
    assert!(connects(&actions, conn), "the request goes on: {actions:?}");
    assert_eq!(
        checks_asked(&actions),
        0,
        "the pipelined request waits for the response: {actions:?}"
    );
    assert_eq!(web_counter(&rt, |c| c.password_checks), 1);

    // Another client with the same credentials: the cache answers at once.
    let (again, actions) = http_client(&mut rt, 40001, get(BOB_PW).as_bytes());
    assert_eq!(asked(&actions, again), None, "{actions:?}");
    assert!(connects(&actions, again), "{actions:?}");
    assert_eq!(web_counter(&rt, |c| c.password_checks), 1);
}

#[test]
fn an_http_request_with_a_wrong_password_gets_407_on_the_verdict() {
    let mut rt = Runtime::started(&http_config(HASH_A), 12);
    let (conn, actions) = http_client(&mut rt, 40000, get(BOB_NOPE).as_bytes());
    assert!(asked(&actions, conn).is_some());
    rt.handle(Event::PasswordChecked { conn, ok: false });
    let actions = rt.drain();
    assert!(!connects(&actions, conn), "{actions:?}");
    let said = rt.flush(conn, Side::Client);
    assert!(
        said.starts_with(b"HTTP/1.1 407 "),
        "the refusal: {}",
        show(&said)
    );
    let actions = rt.drain();
    assert!(!rt.is_live(conn), "closed after the refusal");
    let record = actions
        .iter()
        .find_map(|a| match a {
            Action::Access(r) if r.client == local(40000) => Some(r.clone()),
            _ => None,
        })
        .expect("an access record");
    assert_eq!(record.status, "407", "{record:?}");
    assert_eq!(
        web_counter(&rt, |c| c.auth_failures.get("wrong").copied().unwrap_or(0)),
        1
    );
}

#[test]
fn the_verdict_of_an_http_client_gone_is_dropped() {
    let mut rt = Runtime::started(&http_config(HASH_A), 13);
    let (conn, actions) = http_client(&mut rt, 40000, get(BOB_PW).as_bytes());
    assert!(asked(&actions, conn).is_some());
    goes_mid_check(&mut rt, conn);
}

#[test]
fn an_http_verdict_from_before_a_reload_is_checked_again() {
    let mut rt = Runtime::started(&http_config(HASH_A), 14);
    let (conn, actions) = http_client(&mut rt, 40000, get(BOB_PW).as_bytes());
    assert_eq!(asked(&actions, conn).as_deref(), Some(HASH_A));
    rt.reconfigure(portico_core::sim::parse(&http_config(HASH_B)), false);
    rt.drain();
    rt.handle(Event::PasswordChecked { conn, ok: true });
    let actions = rt.drain();
    assert_eq!(
        asked(&actions, conn).as_deref(),
        Some(HASH_B),
        "{actions:?}"
    );
    assert!(!connects(&actions, conn));
    assert!(rt.flush(conn, Side::Client).is_empty());
    rt.handle(Event::PasswordChecked { conn, ok: false });
    rt.drain();
    let said = rt.flush(conn, Side::Client);
    assert!(said.starts_with(b"HTTP/1.1 407 "), "{}", show(&said));
    rt.drain();
    assert!(!rt.is_live(conn), "closed after the refusal");

    // Reloaded to a plain password meanwhile: told at once.
    let (conn, actions) = http_client(&mut rt, 40001, get(BOB_PW2).as_bytes());
    assert_eq!(asked(&actions, conn).as_deref(), Some(HASH_B));
    rt.reconfigure(portico_core::sim::parse(&http_config("plain:pw2")), false);
    rt.drain();
    rt.handle(Event::PasswordChecked { conn, ok: false });
    let actions = rt.drain();
    assert!(connects(&actions, conn), "plain pw2 matches: {actions:?}");
}

#[test]
fn a_throttled_http_client_gets_429_unchecked() {
    let text = http_config(HASH_A).replace("[log]", "[limits]\nauth_failures = 1\n[log]");
    let mut rt = Runtime::started(&text, 15);
    let (conn, _) = http_client(&mut rt, 40000, get(BOB_NOPE).as_bytes());
    rt.handle(Event::PasswordChecked { conn, ok: false });
    rt.drain();
    rt.flush(conn, Side::Client);
    rt.drain();
    let (conn, actions) = http_client(&mut rt, 40001, get(BOB_PW).as_bytes());
    assert_eq!(asked(&actions, conn), None, "{actions:?}");
    let said = rt.flush(conn, Side::Client);
    assert!(said.starts_with(b"HTTP/1.1 429 "), "{}", show(&said));
}
