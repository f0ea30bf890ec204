//! SOCKS BIND as the core sees it, driven by hand: a listener toward the
//! named peer (`BindListen` → `BindListening`, the first reply), a
//! stranger's connection refused while the wait goes on, the peer's taken
//! (`BindTake` → `Connected`, the second reply) and relayed; rules and
//! `connect_timeout` apply, and nothing is left behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use portico_core::sim::{show, Runtime};
use portico_core::{Action, ConnId, Event, ListenerId, Side};

const SOCKS: u16 = 1080;

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

fn config(rules: &str) -> String {
    format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"stderr\"\n\
         [limits]\nconnect_timeout = \"5s\"\n\
         [[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n\
         {rules}"
    )
}

fn v5_reply(code: u8, a: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(a) = a else {
        panic!("IPv4 only here")
    };
    [
        &[5, code, 0, 1][..],
        &a.ip().octets(),
        &a.port().to_be_bytes(),
    ]
    .concat()
}

fn client(rt: &mut Runtime, request: &[u8]) -> (ConnId, Vec<Action>) {
    let conn = rt
        .accept(ListenerId::new(0, 0), local(50000), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    rt.feed(conn, Side::Client, request);
    (conn, rt.drain())
}

fn bind_request(peer: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(p) = peer else {
        panic!("IPv4 only here")
    };
    [
        &[5, 1, 0, 5, 2, 0, 1][..],
        &p.ip().octets(),
        &p.port().to_be_bytes(),
    ]
    .concat()
}

#[test]
fn a_bind_waits_for_its_peer_and_relays() {
    let mut rt = Runtime::started(&config(""), 1);
    let peer = addr("192.0.2.9:0");
    let (conn, actions) = client(&mut rt, &bind_request(peer));
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::BindListen { conn: c, toward, bind: None } if *c == conn && *toward == peer)),
        "{actions:?}"
    );
    let listening = addr("10.0.0.1:40000");
    rt.handle(Event::BindListening {
        conn,
        local: listening,
    });
    rt.drain();
    let said = rt.flush(conn, Side::Client);
    assert_eq!(
        said,
        [vec![5, 0], v5_reply(0, listening)].concat(),
        "the first reply names the listener: {}",
        show(&said)
    );
    rt.drain();
    // A stranger is refused; the wait goes on.
    rt.handle(Event::BindAccepted {
        conn,
        peer: addr("192.0.2.10:5555"),
    });
    let actions = rt.drain();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::BindReject { conn: c } if *c == conn)),
        "{actions:?}"
    );
    assert!(rt.is_live(conn));
    // The peer, from any port, is taken.
    let from = addr("192.0.2.9:6000");
    rt.handle(Event::BindAccepted { conn, peer: from });
    let actions = rt.drain();
    let attempt = taken(&actions, conn);
    assert!(
        rt.bind_listeners.is_empty(),
        "the listener closed with the take"
    );
    rt.handle(Event::Connected {
        conn,
        attempt,
        local: listening,
    });
    rt.drain();
    let said = rt.flush(conn, Side::Client);
    assert_eq!(said, v5_reply(0, from), "the second reply names the peer");
    rt.drain();
    rt.feed(conn, Side::Client, b"to the peer");
    rt.drain();
    assert_eq!(rt.flush(conn, Side::Upstream), b"to the peer");
    rt.drain();
    rt.feed(conn, Side::Upstream, b"to the client");
    rt.drain();
    assert_eq!(rt.flush(conn, Side::Client), b"to the client");
    rt.drain();
    for side in [Side::Client, Side::Upstream] {
        rt.handle(Event::Eof { conn, side });
        rt.drain();
    }
    assert!(!rt.is_live(conn));
    assert!(rt.is_empty());
    assert_eq!(rt.buffers_in_use(), 0);
    let rec = rt.access.last().expect("an access record");
    assert_eq!(rec.method, "SOCKS5");
    assert_eq!(rec.destination, Some(from));
    // Down counts the proxy's own replies too (2 + 10 + 10 bytes).
    assert_eq!((rec.up, rec.down), (11, 13 + 22));
}

#[test]
fn a_denied_peer_is_refused() {
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"192.0.2.66\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let mut rt = Runtime::started(&config(rules), 2);
    let (conn, actions) = client(&mut rt, &bind_request(addr("192.0.2.66:21")));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::BindListen { .. })),
        "{actions:?}"
    );
    let said = rt.flush(conn, Side::Client);
    assert_eq!(said, [vec![5, 0], v5_reply(2, addr("0.0.0.0:0"))].concat());
    rt.drain();
    assert!(!rt.is_live(conn));
    // SOCKS4 says 5B.
    let v4 = [&[4u8, 2, 0, 21, 192, 0, 2, 66][..], b"\0"].concat();
    let (conn, _) = {
        let conn = rt
            .accept(ListenerId::new(0, 0), local(50001), Some(local(SOCKS)))
            .expect("accepted");
        rt.drain();
        rt.feed(conn, Side::Client, &v4);
        (conn, rt.drain())
    };
    assert_eq!(rt.flush(conn, Side::Client), [0, 0x5B, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn no_peer_within_connect_timeout() {
    let mut rt = Runtime::started(&config(""), 3);
    let (conn, _) = client(&mut rt, &bind_request(addr("192.0.2.9:0")));
    rt.handle(Event::BindListening {
        conn,
        local: addr("10.0.0.1:40000"),
    });
    rt.drain();
    rt.flush(conn, Side::Client);
    rt.drain();
    rt.advance(Duration::from_secs(6));
    rt.handle_timeout();
    let mut actions = rt.drain();
    assert!(rt.bind_listeners.is_empty(), "the listener closes at once");
    let said = rt.flush(conn, Side::Client);
    assert_eq!(
        said,
        v5_reply(6, addr("0.0.0.0:0")),
        "the second reply: timeout"
    );
    actions.extend(rt.drain());
    let order: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::BindClose { .. } => Some("bind-close"),
            Action::Close { .. } => Some("close"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["bind-close", "close"], "{actions:?}");
    assert!(!rt.is_live(conn));
    assert!(rt.bind_listeners.is_empty());
}

#[test]
fn socks4_bind_replies_twice() {
    let mut rt = Runtime::started(&config(""), 4);
    let v4 = [&[4u8, 2, 0, 21, 192, 0, 2, 9][..], b"user\0"].concat();
    let (conn, actions) = client(&mut rt, &v4);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::BindListen { .. })));
    rt.handle(Event::BindListening {
        conn,
        local: addr("10.0.0.1:40000"),
    });
    rt.drain();
    assert_eq!(
        rt.flush(conn, Side::Client),
        [0, 0x5A, 0x9C, 0x40, 10, 0, 0, 1]
    );
    rt.drain();
    rt.handle(Event::BindAccepted {
        conn,
        peer: addr("192.0.2.9:20"),
    });
    let attempt = taken(&rt.drain(), conn);
    rt.handle(Event::Connected {
        conn,
        attempt,
        local: addr("10.0.0.1:40000"),
    });
    rt.drain();
    assert_eq!(rt.flush(conn, Side::Client), [0, 0x5A, 0, 20, 192, 0, 2, 9]);
}

#[test]
fn bind_left_out_of_commands_is_not_supported() {
    let text = config("").replace(
        "listen = [",
        "commands = [\"connect\", \"udp\"]\nlisten = [",
    );
    let mut rt = Runtime::started(&text, 5);
    let (conn, actions) = client(&mut rt, &bind_request(addr("192.0.2.9:0")));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::BindListen { .. })));
    assert_eq!(
        rt.flush(conn, Side::Client),
        [vec![5, 0], v5_reply(7, addr("0.0.0.0:0"))].concat()
    );
}

#[test]
fn a_peer_named_by_name_is_resolved_first() {
    let mut rt = Runtime::started(&config(""), 6);
    let req = [&[5u8, 1, 0, 5, 2, 0, 3, 8][..], b"ftp.test", &[0, 21]].concat();
    let (conn, actions) = client(&mut rt, &req);
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Resolve { conn: c, host, port: 21 } if *c == conn && host == "ftp.test")),
        "{actions:?}"
    );
    rt.handle(Event::Resolved {
        conn,
        addrs: vec![addr("192.0.2.21:21")],
    });
    let actions = rt.drain();
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::BindListen { conn: c, toward, .. } if *c == conn && *toward == addr("192.0.2.21:21"))),
        "{actions:?}"
    );
    rt.handle(Event::BindAccepted {
        conn,
        peer: addr("192.0.2.21:20"),
    });
    let actions = rt.drain();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::BindTake { conn: c, .. } if *c == conn)),
        "{actions:?}"
    );
}

/// The attempt a `BindTake` for `conn` among `actions` names (its
/// Connected must name it too).
fn taken(actions: &[Action], conn: ConnId) -> u32 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::BindTake { conn: c, attempt } if *c == conn => Some(*attempt),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no BindTake for {conn}: {actions:?}"))
}
