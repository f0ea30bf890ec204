//! Happy Eyeballs (RFC 8305) as the core plays it, driven by hand in
//! simulated time: a name with several addresses is raced, the next
//! attempt `connect_attempt_delay` after the one before (at once when that
//! one failed), the first to connect wins and the others are abandoned,
//! `connect_timeout` bounds the whole race, and a client gone mid-race
//! leaves nothing behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use portico_core::sim::Runtime;
use portico_core::{Action, ConnId, Event, IoKind, ListenerId, Side};

const SOCKS: u16 = 1080;
const PORT: u16 = 9000;

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Destination address number `n` (127.0.0.n:PORT).
fn dest(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), PORT)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A socks service; `limits` goes into `[limits]`.
fn start(limits: &str) -> Runtime {
    let text = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"stderr\"\n\
         [limits]\n{limits}\n\
         [[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n"
    );
    Runtime::started(&text, 7)
}

/// A SOCKS5 client asking for `name`:PORT, whose name resolves to
/// `addrs`; the connection and the actions that followed the resolution.
fn race(rt: &mut Runtime, addrs: &[SocketAddr]) -> (ConnId, Vec<Action>) {
    let conn = rt
        .accept(ListenerId::new(0, 0), local(40000), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    let name = b"multi.test";
    let mut b = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
    b.extend_from_slice(name);
    b.extend_from_slice(&PORT.to_be_bytes());
    rt.feed(conn, Side::Client, &b);
    let asked = rt.drain();
    assert!(
        asked
            .iter()
            .any(|a| matches!(a, Action::Resolve { host, .. } if host == "multi.test")),
        "{asked:?}"
    );
    rt.handle(Event::Resolved {
        conn,
        addrs: addrs.to_vec(),
    });
    (conn, rt.drain())
}

/// The connects among `actions`: (attempt, address).
fn connects(actions: &[Action]) -> Vec<(u32, SocketAddr)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect { attempt, addr, .. } => Some((*attempt, *addr)),
            _ => None,
        })
        .collect()
}

/// The attempts abandoned among `actions`.
fn abandoned(actions: &[Action]) -> Vec<u32> {
    let mut v: Vec<u32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Abandon { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v
}

/// Moves the clock to `at` (since the start) and fires what is due.
fn at(rt: &mut Runtime, at: Duration) -> Vec<Action> {
    rt.set_now(at);
    rt.handle_timeout();
    rt.drain()
}

/// The SOCKS5 reply the client got after its method reply: its code.
fn reply_code(rt: &mut Runtime, conn: ConnId) -> u8 {
    let out = rt.flush(conn, Side::Client);
    assert!(out.len() >= 4, "no reply yet: {out:?}");
    assert_eq!(&out[..2], &[5, 0], "the method reply first: {out:?}");
    out[3]
}

#[test]
fn black_holed_first_address_costs_the_attempt_delay() {
    let mut rt = start("connect_timeout = \"20s\"");
    let (conn, actions) = race(&mut rt, &[dest(2), dest(3)]);
    assert_eq!(connects(&actions), [(0, dest(2))]);
    // The first attempt has 250 ms alone...
    assert!(connects(&at(&mut rt, ms(249))).is_empty());
    // ...then the second starts beside it.
    let second = at(&mut rt, ms(250));
    assert_eq!(connects(&second), [(1, dest(3))]);
    assert!(abandoned(&second).is_empty(), "{second:?}");
    assert_eq!(rt.conn(conn).map(|s| s.attempts.len()), Some(2));
    rt.set_now(ms(251));
    rt.handle(Event::Connected {
        conn,
        attempt: 1,
        local: local(50000),
    });
    let won = rt.drain();
    // The black hole is given up; the client hears success at 251 ms.
    assert_eq!(abandoned(&won), [0]);
    assert_eq!(rt.conn(conn).map(|s| s.attempts.len()), Some(0));
    assert_eq!(reply_code(&mut rt, conn), 0x00);
    rt.drain();
    // A late answer of the loser changes nothing.
    rt.handle(Event::Connected {
        conn,
        attempt: 0,
        local: local(50001),
    });
    assert!(rt.drain().is_empty());
    rt.handle(Event::Eof {
        conn,
        side: Side::Client,
    });
    rt.handle(Event::Eof {
        conn,
        side: Side::Upstream,
    });
    rt.drain();
    assert!(rt.is_empty());
    let rec = rt.access.last().expect("an access record");
    assert_eq!(rec.destination, Some(dest(3)), "{rec:?}");
}

#[test]
fn a_fast_failure_starts_the_next_attempt_at_once() {
    let mut rt = start("");
    let (conn, actions) = race(&mut rt, &[dest(2), dest(3)]);
    assert_eq!(connects(&actions), [(0, dest(2))]);
    rt.set_now(ms(10));
    rt.handle(Event::ConnectFailed {
        conn,
        attempt: 0,
        error: IoKind::Refused,
    });
    let next = rt.drain();
    assert_eq!(connects(&next), [(1, dest(3))], "at 10 ms, not 250");
    rt.handle(Event::Connected {
        conn,
        attempt: 1,
        local: local(50000),
    });
    let won = rt.drain();
    assert!(
        abandoned(&won).is_empty(),
        "nothing left to abandon: {won:?}"
    );
    assert_eq!(reply_code(&mut rt, conn), 0x00);
}

#[test]
fn every_attempt_failing_says_the_last_failure() {
    let mut rt = start("");
    let (conn, actions) = race(&mut rt, &[dest(2), dest(3), dest(4)]);
    assert_eq!(connects(&actions), [(0, dest(2))]);
    let fail = |rt: &mut Runtime, attempt, error| {
        rt.handle(Event::ConnectFailed {
            conn,
            attempt,
            error,
        });
        rt.drain()
    };
    assert_eq!(connects(&fail(&mut rt, 0, IoKind::Refused)), [(1, dest(3))]);
    // The second is still connecting when the third's turn comes.
    assert_eq!(connects(&at(&mut rt, ms(250))), [(2, dest(4))]);
    // An older attempt failing while a newer one flies starts nothing.
    let none = fail(&mut rt, 1, IoKind::HostUnreachable);
    assert!(connects(&none).is_empty() && rt.is_live(conn), "{none:?}");
    fail(&mut rt, 2, IoKind::NetUnreachable);
    // SOCKS5 0x03: network unreachable, the last attempt's cause.
    assert_eq!(reply_code(&mut rt, conn), 0x03);
    rt.drain();
    let rec = rt.access.last().expect("an access record");
    assert_eq!(rec.destination, Some(dest(4)), "{rec:?}");
}

#[test]
fn connect_timeout_bounds_the_whole_race() {
    let mut rt = start("connect_timeout = \"1s\"\nconnect_attempt_delay = \"300ms\"");
    let addrs: Vec<SocketAddr> = (2..12).map(dest).collect();
    let (conn, actions) = race(&mut rt, &addrs);
    let mut started = connects(&actions);
    for t in [300, 600, 900] {
        started.extend(connects(&at(&mut rt, ms(t))));
    }
    assert_eq!(
        started,
        [(0, dest(2)), (1, dest(3)), (2, dest(4)), (3, dest(5))]
    );
    assert!(rt.is_live(conn));
    assert_eq!(rt.deadline(), Some(ms(1000)), "the race's deadline");
    // At 1 s the race is over: no fifth attempt, every one in flight goes.
    let end = at(&mut rt, ms(1000));
    assert!(connects(&end).is_empty(), "{end:?}");
    assert_eq!(abandoned(&end), [0, 1, 2, 3]);
    // SOCKS5 0x06: TTL expired, its word for a timeout.
    assert_eq!(reply_code(&mut rt, conn), 0x06);
}

#[test]
fn losers_are_abandoned_when_one_wins() {
    let mut rt = start("");
    let (conn, _) = race(&mut rt, &[dest(2), dest(3), dest(4)]);
    at(&mut rt, ms(250));
    at(&mut rt, ms(500));
    assert_eq!(rt.conn(conn).map(|s| s.attempts.len()), Some(3));
    rt.set_now(ms(600));
    rt.handle(Event::Connected {
        conn,
        attempt: 1,
        local: local(50000),
    });
    let won = rt.drain();
    assert_eq!(abandoned(&won), [0, 2]);
    assert!(connects(&won).is_empty());
    // No attempt is planned any more.
    assert!(connects(&at(&mut rt, ms(2000))).is_empty());
    assert_eq!(reply_code(&mut rt, conn), 0x00);
}

#[test]
fn a_client_gone_mid_race_leaves_nothing() {
    let mut rt = start("");
    let (conn, _) = race(&mut rt, &[dest(2), dest(3), dest(4)]);
    at(&mut rt, ms(250));
    rt.handle(Event::IoError {
        conn,
        side: Side::Client,
        error: IoKind::Reset,
    });
    let gone = rt.drain();
    assert!(
        gone.iter()
            .any(|a| matches!(a, Action::Close { conn: c } if *c == conn)),
        "{gone:?}"
    );
    assert!(rt.is_empty() && rt.buffers_in_use() == 0);
    // Answers for its attempts are dropped; no timer starts a third.
    rt.handle_stale(
        conn,
        Side::Upstream,
        Event::Connected {
            conn,
            attempt: 1,
            local: local(50000),
        },
    );
    assert!(at(&mut rt, ms(5000)).is_empty());
    assert_eq!(rt.deadline(), None);
}

#[test]
fn families_interleave_from_the_first_answers_family() {
    let v6 = |n: u16| {
        SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n)),
            PORT,
        )
    };
    let mut rt = start("connect_attempt_delay = \"100ms\"");
    let (_, actions) = race(&mut rt, &[v6(1), v6(2), dest(2), dest(3), dest(4)]);
    let mut started = connects(&actions);
    for t in [100, 200, 300, 400] {
        started.extend(connects(&at(&mut rt, ms(t))));
    }
    let order: Vec<SocketAddr> = started.into_iter().map(|(_, a)| a).collect();
    assert_eq!(order, [v6(1), dest(2), v6(2), dest(3), dest(4)]);
}

#[test]
fn a_single_address_is_one_attempt_without_a_race() {
    let mut rt = start("");
    let (conn, actions) = race(&mut rt, &[dest(2)]);
    assert_eq!(connects(&actions), [(0, dest(2))]);
    assert!(connects(&at(&mut rt, ms(5000))).is_empty());
    rt.handle(Event::Connected {
        conn,
        attempt: 0,
        local: local(50000),
    });
    assert!(abandoned(&rt.drain()).is_empty());
    assert_eq!(reply_code(&mut rt, conn), 0x00);
}

#[test]
fn each_attempt_binds_the_most_specific_source_of_its_family() {
    let text = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n\
         external = [\"192.0.2.1\", \"192.0.2.2\", \"2001:db8::1\"]\n\
         outgoing = \"192.0.2.1\"\noutgoing6 = \"2001:db8::1\"\n\
         [[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n\
         [[rule]]\naction = \"allow\"\nports = [{PORT}]\noutgoing = \"192.0.2.2\"\n\
         [[rule]]\naction = \"allow\"\n"
    );
    let mut rt = Runtime::started(&text, 7);
    let v6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), PORT);
    let (_, actions) = race(&mut rt, &[v6, dest(2)]);
    let mut all = actions;
    all.extend(at(&mut rt, ms(250)));
    let binds: Vec<(SocketAddr, Option<IpAddr>)> = all
        .iter()
        .filter_map(|a| match a {
            Action::Connect { addr, bind, .. } => Some((*addr, *bind)),
            _ => None,
        })
        .collect();
    // IPv6: the rule's IPv4 source cannot serve, outgoing6 does; IPv4: the
    // rule's, over [network] outgoing.
    assert_eq!(
        binds,
        [
            (v6, Some("2001:db8::1".parse().expect("ip"))),
            (dest(2), Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))))
        ]
    );
}
