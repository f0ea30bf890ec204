//! SOCKS5 UDP ASSOCIATE as the core sees it, driven by hand: the runtime
//! opens the association's sockets (`UdpAssociate` → `UdpBound`), the
//! client's datagrams go out by the outward socket with their header taken
//! off, replies come back with a header naming their source, and
//! everything a stranger, a wrong header or a rule would let through is
//! dropped and counted. The association ends with its TCP connection and
//! leaves nothing behind.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use portico_core::sim::{show, Runtime};
use portico_core::{Action, ConnId, Event, ListenerId, Side, Via};

const SOCKS: u16 = 1080;
/// Where the runtime says the association's client socket is.
const BOUND: u16 = 40001;

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

fn config(rules: &str) -> String {
    format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"stderr\"\n\
         [[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n\
         {rules}"
    )
}

/// The header of a datagram to (or from) `to`.
fn header(to: SocketAddr) -> Vec<u8> {
    let mut h = vec![0, 0, 0];
    match to {
        SocketAddr::V4(a) => {
            h.push(1);
            h.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            h.push(4);
            h.extend_from_slice(&a.ip().octets());
        }
    }
    h.extend_from_slice(&to.port().to_be_bytes());
    h
}

fn datagram(to: SocketAddr, payload: &[u8]) -> Vec<u8> {
    [header(to), payload.to_vec()].concat()
}

/// A client at 127.0.0.1:`from` that asked for an association sending
/// from `udp_port` (0: any), and the association open; returns its id.
fn associated(rt: &mut Runtime, from: u16, udp_port: u16) -> ConnId {
    let conn = rt
        .accept(ListenerId::new(0, 0), local(from), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    let mut req = vec![5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0];
    req.extend_from_slice(&udp_port.to_be_bytes());
    rt.feed(conn, Side::Client, &req);
    let actions = rt.drain();
    let asked = actions.iter().find_map(|a| match a {
        Action::UdpAssociate {
            conn: c,
            client_side,
            ..
        } if *c == conn => Some(*client_side),
        _ => None,
    });
    assert_eq!(
        asked,
        Some(local(0)),
        "the client's socket is bound to the address the client reached: {actions:?}"
    );
    assert_eq!(
        rt.flush(conn, Side::Client),
        vec![5, 0],
        "no reply before the socket is open"
    );
    rt.handle(Event::UdpBound {
        conn,
        local: local(BOUND),
    });
    rt.drain();
    let said = rt.flush(conn, Side::Client);
    let mut want = vec![5, 0, 0, 1, 127, 0, 0, 1];
    want.extend_from_slice(&BOUND.to_be_bytes());
    assert_eq!(said, want, "the reply names the socket: {}", show(&said));
    rt.drain();
    conn
}

/// The client closes its TCP connection: the association ends.
fn close(rt: &mut Runtime, conn: ConnId) -> Vec<Action> {
    rt.handle(Event::Eof {
        conn,
        side: Side::Client,
    });
    let actions = rt.drain();
    assert!(!rt.is_live(conn), "the association ended: {actions:?}");
    assert!(rt.associations.is_empty(), "its sockets closed");
    assert!(rt.is_empty());
    assert_eq!(rt.buffers_in_use(), 0, "no buffer left");
    actions
}

/// The association's access line.
fn line(rt: &Runtime) -> String {
    let rec = rt
        .access
        .iter()
        .find(|r| r.method == "UDP-ASSOCIATE")
        .expect("an UDP-ASSOCIATE access record");
    rec.format(std::time::UNIX_EPOCH, portico_core::config::LogFormat::Text)
}

#[test]
fn a_datagram_goes_out_and_its_reply_comes_back() {
    let mut rt = Runtime::started(&config(""), 1);
    let conn = associated(&mut rt, 50000, 0);
    let client_udp = local(50001);
    let echo = addr("192.0.2.7:7");
    // No `outgoing`: the outward socket is dual-stack, which names an
    // IPv4 peer IPv4-mapped.
    let mapped = addr("[::ffff:192.0.2.7]:7");
    rt.association_datagram(conn, false, client_udp, &datagram(echo, b"ping"));
    rt.drain();
    let out = rt.datagrams();
    assert_eq!(
        out,
        vec![(
            Via::Association {
                conn,
                outward: true,
                to: mapped
            },
            b"ping".to_vec()
        )],
        "the payload goes out without its header"
    );
    rt.association_datagram(conn, true, mapped, b"pong!");
    rt.drain();
    let back = rt.datagrams();
    assert_eq!(
        back,
        vec![(
            Via::Association {
                conn,
                outward: false,
                to: client_udp
            },
            datagram(echo, b"pong!")
        )],
        "the reply comes back to the client with a header naming its source"
    );
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.contains(" UDP-ASSOCIATE ") && l.contains(" ok up=4 down=5 "),
        "{l}"
    );
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=1 dropped=0"),
        "{l}"
    );
}

#[test]
fn a_strangers_datagram_is_dropped() {
    let mut rt = Runtime::started(&config(""), 2);
    let conn = associated(&mut rt, 50000, 50001);
    let echo = addr("192.0.2.7:7");
    // Another address, and the client's address from another port than
    // the one its request named.
    rt.association_datagram(conn, false, addr("10.9.9.9:50001"), &datagram(echo, b"x"));
    rt.association_datagram(conn, false, local(50002), &datagram(echo, b"y"));
    rt.drain();
    assert!(rt.datagrams().is_empty(), "nothing goes out for a stranger");
    rt.association_datagram(conn, false, local(50001), &datagram(echo, b"z"));
    assert_eq!(rt.datagrams().len(), 1, "the client's own goes out");
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=0 dropped=2"),
        "{l}"
    );
}

#[test]
fn a_reply_from_where_the_client_never_sent_is_dropped() {
    let mut rt = Runtime::started(&config(""), 3);
    let conn = associated(&mut rt, 50000, 0);
    let echo = addr("192.0.2.7:7");
    // Before the client sent anything, and then from another port and
    // another host than the one it sent to.
    rt.association_datagram(conn, true, echo, b"early");
    rt.association_datagram(conn, false, local(50001), &datagram(echo, b"ping"));
    rt.datagrams();
    rt.association_datagram(conn, true, addr("192.0.2.7:8"), b"other port");
    rt.association_datagram(conn, true, addr("192.0.2.8:7"), b"other host");
    rt.drain();
    assert!(rt.datagrams().is_empty(), "no stranger's reply relayed");
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=0 dropped=3"),
        "{l}"
    );
}

#[test]
fn a_fragment_or_a_bad_header_is_dropped() {
    let mut rt = Runtime::started(&config(""), 4);
    let conn = associated(&mut rt, 50000, 0);
    let echo = addr("192.0.2.7:7");
    let mut frag = datagram(echo, b"part");
    frag[2] = 1;
    rt.association_datagram(conn, false, local(50001), &frag);
    rt.association_datagram(conn, false, local(50001), &[0, 0, 0, 9, 1, 2]);
    rt.association_datagram(conn, false, local(50001), &[0, 0]);
    rt.drain();
    assert!(rt.datagrams().is_empty(), "nothing goes out");
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=0 datagrams_down=0 dropped=3"),
        "{l}"
    );
}

#[test]
fn a_denied_destination_is_dropped() {
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"blocked.test\"]\n\
                 [[rule]]\naction = \"deny\"\ndestinations = [\"192.0.2.66\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let mut rt = Runtime::started(&config(rules), 5);
    let conn = associated(&mut rt, 50000, 0);
    rt.association_datagram(
        conn,
        false,
        local(50001),
        &datagram(addr("192.0.2.66:53"), b"q"),
    );
    let name = [&[0u8, 0, 0, 3, 12][..], b"blocked.test", &[0, 53], b"q"].concat();
    rt.association_datagram(conn, false, local(50001), &name);
    let actions = rt.drain();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Resolve { .. })),
        "a name denied by name is not even resolved: {actions:?}"
    );
    assert!(rt.datagrams().is_empty(), "nothing goes out");
    rt.association_datagram(
        conn,
        false,
        local(50001),
        &datagram(addr("192.0.2.67:53"), b"q"),
    );
    assert_eq!(rt.datagrams().len(), 1, "an allowed one goes out");
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=0 dropped=2"),
        "{l}"
    );
}

#[test]
fn a_name_is_resolved_then_checked() {
    let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"192.0.2.66\"]\n\
                 [[rule]]\naction = \"allow\"\n";
    let mut rt = Runtime::started(&config(rules), 6);
    let conn = associated(&mut rt, 50000, 0);
    let name = |n: &str| {
        [
            &[0u8, 0, 0, 3, n.len() as u8][..],
            n.as_bytes(),
            &[0, 53],
            b"q",
        ]
        .concat()
    };
    rt.association_datagram(conn, false, local(50001), &name("dns.test"));
    rt.association_datagram(conn, false, local(50001), &name("evil.test"));
    rt.association_datagram(conn, false, local(50001), &name("dns.test"));
    let actions = rt.drain();
    let asked: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::Resolve { .. }))
        .collect();
    assert_eq!(asked.len(), 1, "one name at a time: {actions:?}");
    assert!(rt.datagrams().is_empty(), "they wait for the name");
    rt.handle(Event::Resolved {
        conn,
        addrs: vec![addr("192.0.2.53:53")],
    });
    let actions = rt.drain();
    let out = rt.datagrams();
    assert_eq!(out.len(), 2, "both datagrams for the name go: {out:?}");
    assert!(out.iter().all(|(v, d)| *v
        == Via::Association {
            conn,
            outward: true,
            to: addr("[::ffff:192.0.2.53]:53")
        }
        && d == b"q"));
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Resolve { host, .. } if host == "evil.test")),
        "then the next name: {actions:?}"
    );
    // A name whose address a rule denies is dropped once resolved.
    rt.handle(Event::Resolved {
        conn,
        addrs: vec![addr("192.0.2.66:53")],
    });
    rt.drain();
    assert!(rt.datagrams().is_empty());
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=2 datagrams_down=0 dropped=1"),
        "{l}"
    );
}

#[test]
fn closing_the_tcp_connection_ends_it() {
    let mut rt = Runtime::started(&config(""), 7);
    let conn = associated(&mut rt, 50000, 0);
    let echo = addr("192.0.2.7:7");
    rt.association_datagram(conn, false, local(50001), &datagram(echo, b"ping"));
    rt.datagrams();
    let actions = close(&mut rt, conn);
    let order: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::UdpDisassociate { .. } => Some("disassociate"),
            Action::Close { .. } => Some("close"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["disassociate", "close"], "{actions:?}");
    // Whatever arrives for it now is ignored.
    rt.association_datagram(conn, true, echo, b"late");
    assert!(rt.datagrams().is_empty());
    assert!(rt.drain().is_empty());
    assert_eq!(rt.timer_entries(), 0, "no timer left");
    assert!(line(&rt).contains(" ok up=4 down=0 "), "{}", line(&rt));
}

#[test]
fn an_idle_association_ends_after_udp_idle_timeout() {
    let text = config("").replace(
        "[log]",
        "[limits]\nudp_idle_timeout = \"5s\"\nidle_timeout = \"1h\"\n[log]",
    );
    let mut rt = Runtime::started(&text, 8);
    let conn = associated(&mut rt, 50000, 0);
    rt.advance(Duration::from_secs(4));
    rt.association_datagram(
        conn,
        false,
        local(50001),
        &datagram(addr("192.0.2.7:7"), b"a"),
    );
    rt.datagrams();
    rt.advance(Duration::from_secs(4));
    rt.handle_timeout();
    rt.drain();
    assert!(rt.is_live(conn), "a datagram keeps it alive");
    rt.advance(Duration::from_secs(2));
    rt.handle_timeout();
    rt.drain();
    assert!(!rt.is_live(conn), "idle for udp_idle_timeout: ended");
    assert!(rt.associations.is_empty());
    assert!(line(&rt).contains(" idle up=1 "), "{}", line(&rt));
}

#[test]
fn a_socket_that_cannot_open_is_a_general_failure() {
    let mut rt = Runtime::started(&config(""), 9);
    let conn = rt
        .accept(ListenerId::new(0, 0), local(50000), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    rt.feed(conn, Side::Client, &[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
    rt.drain();
    // The dual-stack outward socket fails: asked again for the client's
    // family alone, which fails too.
    rt.handle(Event::UdpBindFailed {
        conn,
        error: portico_core::IoKind::AddrInUse,
    });
    let actions = rt.drain();
    assert!(
        actions.contains(&Action::UdpDisassociate { conn })
            && actions.contains(&Action::UdpAssociate {
                conn,
                client_side: local(0),
                outward: None,
                dual_stack: false
            }),
        "{actions:?}"
    );
    rt.handle(Event::UdpBindFailed {
        conn,
        error: portico_core::IoKind::AddrInUse,
    });
    rt.drain();
    let said = rt.flush(conn, Side::Client);
    assert_eq!(said, vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    rt.drain();
    assert!(!rt.is_live(conn));
    assert!(rt.associations.is_empty());
}

#[test]
fn udp_left_out_of_commands_is_not_supported() {
    let text = config("").replace("listen = [", "commands = [\"connect\"]\nlisten = [");
    let mut rt = Runtime::started(&text, 10);
    let conn = rt
        .accept(ListenerId::new(0, 0), local(50000), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    rt.feed(conn, Side::Client, &[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
    let actions = rt.drain();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::UdpAssociate { .. })),
        "{actions:?}"
    );
    let said = rt.flush(conn, Side::Client);
    assert_eq!(said, vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn at_most_1024_datagrams_wait() {
    let mut rt = Runtime::started(&config(""), 11);
    let conn = associated(&mut rt, 50000, 0);
    let d = datagram(addr("192.0.2.7:7"), b"x");
    // The runtime sends nothing meanwhile: the queue fills up.
    for _ in 0..1100 {
        rt.association_datagram(conn, false, local(50001), &d);
    }
    // A name's datagram cannot wait either.
    let name = [&[0u8, 0, 0, 3, 8][..], b"dns.test", &[0, 53], b"q"].concat();
    rt.association_datagram(conn, false, local(50001), &name);
    let actions = rt.drain();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Resolve { .. })),
        "{actions:?}"
    );
    assert_eq!(rt.datagrams().len(), 1024);
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1024 datagrams_down=0 dropped=77"),
        "{l}"
    );
}

/// An association of `conn` asked for (the request read), and the
/// `UdpAssociate` it asked for.
fn asking(rt: &mut Runtime) -> (ConnId, Action) {
    let conn = rt
        .accept(ListenerId::new(0, 0), local(50000), Some(local(SOCKS)))
        .expect("accepted");
    rt.drain();
    rt.feed(conn, Side::Client, &[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
    let actions = rt.drain();
    let asked = actions
        .into_iter()
        .find(|a| matches!(a, Action::UdpAssociate { .. }))
        .expect("a UdpAssociate");
    (conn, asked)
}

/// The association's sockets open; the client sends to `to` from port
/// 50001 and `to` answers from `from` (what the outward socket reports).
fn round_trip(rt: &mut Runtime, conn: ConnId, to: SocketAddr, from: SocketAddr) -> usize {
    rt.handle(Event::UdpBound {
        conn,
        local: local(BOUND),
    });
    rt.drain();
    rt.association_datagram(conn, false, local(50001), &datagram(to, b"ping"));
    rt.drain();
    let out = rt.datagrams();
    rt.association_datagram(conn, true, from, b"pong");
    rt.drain();
    let back = rt.datagrams();
    assert!(
        back.is_empty()
            || back
                == vec![(
                    Via::Association {
                        conn,
                        outward: false,
                        to: local(50001)
                    },
                    datagram(to, b"pong")
                )],
        "a reply names its source as the client sent to it: {back:?}"
    );
    out.len() + back.len()
}

#[test]
fn an_ipv4_client_reaches_an_ipv6_destination() {
    let mut rt = Runtime::started(&config(""), 11);
    let (conn, asked) = asking(&mut rt);
    assert_eq!(
        asked,
        Action::UdpAssociate {
            conn,
            client_side: local(0),
            outward: None,
            dual_stack: true
        },
        "no outgoing: one dual-stack outward socket"
    );
    let v6 = addr("[2001:db8::7]:7");
    assert_eq!(round_trip(&mut rt, conn, v6, v6), 2, "out and back");
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=1 dropped=0"),
        "{l}"
    );
}

#[test]
fn a_family_without_an_outward_socket_is_dropped() {
    // An IPv4 `outgoing` only: the outward socket is IPv4, and IPv6
    // destinations are out of its reach.
    let text = config("")
        .replace(
            "kind = \"socks\"\n",
            "kind = \"socks\"\noutgoing = \"192.0.2.1\"\n",
        )
        .replace("[network]\n", "[network]\nexternal = [\"192.0.2.1\"]\n");
    let mut rt = Runtime::started(&text, 12);
    let (conn, asked) = asking(&mut rt);
    assert_eq!(
        asked,
        Action::UdpAssociate {
            conn,
            client_side: local(0),
            outward: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            dual_stack: false
        }
    );
    let v6 = addr("[2001:db8::7]:7");
    assert_eq!(round_trip(&mut rt, conn, v6, v6), 0, "nothing goes out");
    let v4 = addr("192.0.2.7:7");
    assert_eq!(
        round_trip(&mut rt, conn, v4, v4),
        2,
        "IPv4 goes out and back"
    );
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=1 dropped=2"),
        "the IPv6 datagram and the reply from where nothing went: {l}"
    );
}

#[test]
fn without_a_dual_stack_socket_the_clients_family_is_asked_for() {
    let mut rt = Runtime::started(&config(""), 13);
    let (conn, _) = asking(&mut rt);
    rt.handle(Event::UdpBindFailed {
        conn,
        error: portico_core::IoKind::Other,
    });
    let actions = rt.drain();
    assert!(
        actions.contains(&Action::UdpAssociate {
            conn,
            client_side: local(0),
            outward: None,
            dual_stack: false
        }),
        "asked again for IPv4 alone: {actions:?}"
    );
    let v6 = addr("[2001:db8::7]:7");
    assert_eq!(round_trip(&mut rt, conn, v6, v6), 0, "IPv6 is out of reach");
    let v4 = addr("192.0.2.7:7");
    assert_eq!(round_trip(&mut rt, conn, v4, v4), 2, "IPv4 goes as it is");
    close(&mut rt, conn);
    let l = line(&rt);
    assert!(
        l.ends_with(" datagrams_up=1 datagrams_down=1 dropped=2"),
        "{l}"
    );
}

#[test]
fn an_ipv4_mapped_destination_is_ipv4() {
    let text = config("")
        .replace(
            "kind = \"socks\"\n",
            "kind = \"socks\"\noutgoing = \"192.0.2.1\"\n",
        )
        .replace("[network]\n", "[network]\nexternal = [\"192.0.2.1\"]\n");
    let mut rt = Runtime::started(&text, 14);
    let (conn, _) = asking(&mut rt);
    rt.handle(Event::UdpBound {
        conn,
        local: local(BOUND),
    });
    rt.drain();
    let mapped = addr("[::ffff:192.0.2.7]:7");
    rt.association_datagram(conn, false, local(50001), &datagram(mapped, b"ping"));
    rt.drain();
    let v4 = addr("192.0.2.7:7");
    let out = rt.datagrams();
    assert_eq!(
        out,
        vec![(
            Via::Association {
                conn,
                outward: true,
                to: v4
            },
            b"ping".to_vec()
        )],
        "it goes out by the IPv4 socket"
    );
    rt.association_datagram(conn, true, v4, b"pong");
    rt.drain();
    assert_eq!(rt.datagrams().len(), 1, "its reply comes back");
    close(&mut rt, conn);
}
