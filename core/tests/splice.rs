//! When a runtime may move bytes itself (`Proxy::splice_ok`) and how the
//! bytes it moved are counted (`Event::Spliced`), driven by hand through
//! one connection at a time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portico_core::proxy::{PipeSize, SPLICE_BULK};
use portico_core::{AccessRecord, Action, ConnId, Event, ListenerId, Proxy, Recorded, Side};

const MAPPED: &str = "[[service]]\nname = \"map\"\nkind = \"mapped\"\n\
    listen = [\"127.0.0.1:8000\"]\ndestination = \"127.0.0.1:9000\"\n";

/// A table over `text` with its listeners open, and the first listener.
fn open(text: &str, now: Instant) -> (Proxy, ListenerId) {
    let config = portico_core::config::parse(text, "splice.toml").expect("valid configuration");
    let mut p = Proxy::new(config, 1, now);
    let mut first = None;
    while let Some(a) = p.poll_action() {
        if let Action::Listen { listener, addr } = a {
            first.get_or_insert(listener);
            p.handle(
                Event::Listening {
                    listener,
                    local: addr,
                },
                now,
            );
        }
    }
    (p, first.expect("a listener"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

/// Drains the actions; returns the access records among them.
fn drain(p: &mut Proxy) -> Vec<AccessRecord> {
    let mut recs = Vec::new();
    while let Some(a) = p.poll_action() {
        if let Action::Access(r) = a {
            recs.push(*r);
        }
    }
    recs
}

/// A client connected, its upstream connected too.
fn connected(p: &mut Proxy, l: ListenerId, now: Instant) -> ConnId {
    let conn = p.accept(l, addr("127.0.0.1:40000"), now).expect("accepted");
    drain(p);
    up(p, conn, "127.0.0.1:50000", now);
    conn
}

/// A table over `text` and a client accepted on its first listener.
fn accepted(text: &str, now: Instant) -> (Proxy, ConnId) {
    let (mut p, l) = open(text, now);
    let conn = p.accept(l, addr("127.0.0.1:40000"), now).expect("accepted");
    drain(&mut p);
    (p, conn)
}

/// `conn`'s upstream connected, from `local`.
fn up(p: &mut Proxy, conn: ConnId, local: &str, now: Instant) {
    let local = addr(local);
    p.handle(Event::Connected { conn, local }, now);
    drain(p);
}

/// The client (or server) sent `bytes`, read into the core's buffer.
fn read(p: &mut Proxy, conn: ConnId, side: Side, bytes: &[u8], now: Instant) {
    let buf = p.recv_buf(conn, side).expect("a read is wanted");
    buf[..bytes.len()].copy_from_slice(bytes);
    p.handle(
        Event::Read {
            conn,
            side,
            n: bytes.len(),
        },
        now,
    );
    drain(p);
}

/// Writes all the core has for `side`; returns it.
fn write(p: &mut Proxy, conn: ConnId, side: Side, now: Instant) -> Vec<u8> {
    let data = p
        .send_buf(conn, side)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    if !data.is_empty() {
        p.handle(
            Event::Written {
                conn,
                side,
                n: data.len(),
            },
            now,
        );
        drain(p);
    }
    data
}

/// `side` sends a bulk amount (what says a transfer is worth splicing),
/// which goes out to the other side.
fn warm(p: &mut Proxy, conn: ConnId, side: Side, now: Instant) {
    read(p, conn, side, &[7; SPLICE_BULK], now);
    let out = write(p, conn, side.other(), now);
    assert_eq!(out.len(), SPLICE_BULK, "the bulk went through");
}

fn both(p: &Proxy, conn: ConnId) -> (bool, bool) {
    (
        p.splice_ok(conn, Side::Client),
        p.splice_ok(conn, Side::Upstream),
    )
}

#[test]
fn a_mapped_relay_with_empty_buffers_may_splice() {
    let now = Instant::now();
    let (mut p, conn) = accepted(MAPPED, now);
    assert_eq!(
        both(&p, conn),
        (false, false),
        "before the upstream connects"
    );
    up(&mut p, conn, "127.0.0.1:50000", now);
    assert_eq!(
        both(&p, conn),
        (false, false),
        "no bulk seen yet either way"
    );
    warm(&mut p, conn, Side::Upstream, now);
    assert_eq!(
        both(&p, conn),
        (false, true),
        "the upstream sent a bulk amount"
    );
    warm(&mut p, conn, Side::Client, now);
    assert_eq!(both(&p, conn), (true, true), "a relay with nothing held");
    // A small read says the transfer is not (or no longer) bulk.
    read(&mut p, conn, Side::Client, b"small", now);
    write(&mut p, conn, Side::Upstream, now);
    assert_eq!(both(&p, conn), (false, true), "small messages are read");
}

#[test]
fn bytes_held_in_the_core_go_out_before_any_splice() {
    let now = Instant::now();
    let (mut p, l) = open(MAPPED, now);
    let conn = connected(&mut p, l, now);
    warm(&mut p, conn, Side::Upstream, now);
    read(&mut p, conn, Side::Client, &[1; SPLICE_BULK], now);
    assert_eq!(
        both(&p, conn),
        (false, true),
        "client bytes held: only the other direction may splice"
    );
    assert_eq!(write(&mut p, conn, Side::Upstream, now), [1; SPLICE_BULK]);
    assert_eq!(both(&p, conn), (true, true), "held bytes written");
    read(&mut p, conn, Side::Upstream, &[2; SPLICE_BULK], now);
    assert_eq!(both(&p, conn), (true, false));
}

#[test]
fn bytes_read_before_the_upstream_connects_hold_the_splice() {
    let now = Instant::now();
    let (mut p, conn) = accepted(MAPPED, now);
    read(&mut p, conn, Side::Client, &[3; SPLICE_BULK], now);
    up(&mut p, conn, "127.0.0.1:50000", now);
    warm(&mut p, conn, Side::Upstream, now);
    assert_eq!(both(&p, conn), (false, true));
    write(&mut p, conn, Side::Upstream, now);
    assert_eq!(both(&p, conn), (true, true));
}

#[test]
fn no_splice_after_eof() {
    let now = Instant::now();
    let (mut p, l) = open(MAPPED, now);
    let conn = connected(&mut p, l, now);
    warm(&mut p, conn, Side::Client, now);
    warm(&mut p, conn, Side::Upstream, now);
    p.handle(
        Event::Eof {
            conn,
            side: Side::Client,
        },
        now,
    );
    drain(&mut p);
    assert_eq!(both(&p, conn), (false, true), "the client's side is done");
    p.handle(
        Event::Eof {
            conn,
            side: Side::Upstream,
        },
        now,
    );
    let recs = drain(&mut p);
    assert_eq!(recs.len(), 1, "both ways done: the connection ended");
    assert_eq!(both(&p, conn), (false, false), "a dead id");
}

#[test]
fn no_splice_under_a_bandwidth_cap() {
    let now = Instant::now();
    let text = format!(
        "{MAPPED}[[rule]]\naction = \"allow\"\nclients = [\"127.0.0.1/32\"]\n\
         rate = \"1MiB/s\"\n[[rule]]\naction = \"allow\"\n"
    );
    let (mut p, l) = open(&text, now);
    let conn = connected(&mut p, l, now);
    warm(&mut p, conn, Side::Client, now);
    warm(&mut p, conn, Side::Upstream, now);
    assert_eq!(both(&p, conn), (false, false), "the cap counts every byte");
    // Another client, not capped, may.
    let other = p.accept(l, addr("127.0.0.2:40000"), now).expect("accepted");
    up(&mut p, other, "127.0.0.1:50001", now);
    warm(&mut p, other, Side::Client, now);
    warm(&mut p, other, Side::Upstream, now);
    assert_eq!(both(&p, other), (true, true));
}

#[test]
fn no_splice_while_proxying_http_exchanges() {
    let now = Instant::now();
    let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:3128\"]\n";
    let (mut p, conn) = accepted(text, now);
    read(
        &mut p,
        conn,
        Side::Client,
        b"GET http://127.0.0.1:9000/ HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n",
        now,
    );
    up(&mut p, conn, "127.0.0.1:50000", now);
    let head = write(&mut p, conn, Side::Upstream, now);
    assert!(head.starts_with(b"GET / HTTP/1.1\r\n"), "{head:?}");
    assert_eq!(
        both(&p, conn),
        (false, false),
        "the HTTP machine reads both ways"
    );
    read(
        &mut p,
        conn,
        Side::Upstream,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        now,
    );
    write(&mut p, conn, Side::Client, now);
    assert_eq!(both(&p, conn), (false, false), "between exchanges too");
}

#[test]
fn a_connect_tunnel_splices_after_its_200() {
    let now = Instant::now();
    let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:3128\"]\n\
                connect_ports = [9000]\n";
    let (mut p, conn) = accepted(text, now);
    read(
        &mut p,
        conn,
        Side::Client,
        b"CONNECT 127.0.0.1:9000 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n",
        now,
    );
    assert_eq!(both(&p, conn), (false, false), "before the tunnel is up");
    up(&mut p, conn, "127.0.0.1:50000", now);
    warm(&mut p, conn, Side::Client, now);
    read(&mut p, conn, Side::Upstream, &[4; SPLICE_BULK], now);
    assert_eq!(
        both(&p, conn),
        (true, false),
        "the 200 waits for the client: nothing from upstream may pass it"
    );
    let reply = write(&mut p, conn, Side::Client, now);
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
    assert_eq!(
        both(&p, conn),
        (true, false),
        "the upstream's bytes are still held"
    );
    assert_eq!(write(&mut p, conn, Side::Client, now), [4; SPLICE_BULK]);
    assert_eq!(both(&p, conn), (true, true));
}

#[test]
fn socks_splices_after_its_reply() {
    let now = Instant::now();
    let text = "[[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:1080\"]\n";
    let (mut p, conn) = accepted(text, now);
    read(&mut p, conn, Side::Client, &[5, 1, 0], now);
    assert_eq!(write(&mut p, conn, Side::Client, now), [5, 0]);
    read(
        &mut p,
        conn,
        Side::Client,
        &[5, 1, 0, 1, 127, 0, 0, 1, 0x23, 0x28],
        now,
    );
    assert_eq!(both(&p, conn), (false, false), "still in the handshake");
    up(&mut p, conn, "127.0.0.1:50000", now);
    warm(&mut p, conn, Side::Client, now);
    read(&mut p, conn, Side::Upstream, &[6; SPLICE_BULK], now);
    assert_eq!(both(&p, conn), (true, false), "the reply goes first");
    let reply = write(&mut p, conn, Side::Client, now);
    assert_eq!(&reply[..2], [5, 0]);
    assert_eq!(write(&mut p, conn, Side::Client, now), [6; SPLICE_BULK]);
    assert_eq!(both(&p, conn), (true, true));
}

#[test]
fn spliced_bytes_are_counted_in_the_access_record() {
    let t0 = Instant::now();
    let (mut p, l) = open(MAPPED, t0);
    let conn = connected(&mut p, l, t0);
    read(&mut p, conn, Side::Client, b"abc", t0);
    write(&mut p, conn, Side::Upstream, t0);
    for (from, n) in [
        (Side::Client, 65536),
        (Side::Upstream, 1000),
        (Side::Client, 7),
        (Side::Upstream, 0),
    ] {
        p.handle(Event::Spliced { conn, from, n }, t0);
        assert!(drain(&mut p).is_empty());
    }
    let snap = p.snapshot(t0);
    assert_eq!(
        (snap.connections[0].bytes_up, snap.connections[0].bytes_down),
        (3 + 65536 + 7, 1000),
        "the status page counts spliced bytes as they go"
    );
    read(&mut p, conn, Side::Upstream, b"de", t0);
    write(&mut p, conn, Side::Client, t0);
    for side in [Side::Client, Side::Upstream] {
        p.handle(Event::Eof { conn, side }, t0);
    }
    let recs = drain(&mut p);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!((r.status.as_str(), r.up, r.down), ("ok", 65546, 1002));
}

#[test]
fn spliced_bytes_keep_a_relay_from_idling_out() {
    let t0 = Instant::now();
    let text = format!("[limits]\nidle_timeout = \"10s\"\n{MAPPED}");
    let (mut p, l) = open(&text, t0);
    let conn = connected(&mut p, l, t0);
    let mut now = t0;
    for _ in 0..5 {
        now += Duration::from_secs(6);
        p.handle(
            Event::Spliced {
                conn,
                from: Side::Upstream,
                n: 100,
            },
            now,
        );
        p.handle_timeout(now);
        assert!(drain(&mut p).is_empty(), "busy at {:?}", now - t0);
        assert!(p.poll_timeout().is_some_and(|t| t > now));
    }
    // Quiet from now on: it idles out ten seconds after the last splice,
    // not before.
    let idle_at = now + Duration::from_secs(10);
    while let Some(t) = p.poll_timeout().filter(|t| *t < idle_at) {
        p.handle_timeout(t);
        assert!(drain(&mut p).is_empty(), "closed early, at {:?}", t - t0);
    }
    p.handle_timeout(idle_at);
    let recs = drain(&mut p);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].status.as_str(), recs[0].down), ("idle", 500));
}

#[test]
fn spliced_for_a_dead_or_stale_id_changes_nothing() {
    let now = Instant::now();
    let (mut p, l) = open(MAPPED, now);
    let conn = connected(&mut p, l, now);
    p.handle(
        Event::IoError {
            conn,
            side: Side::Client,
            error: portico_core::IoKind::Reset,
        },
        now,
    );
    drain(&mut p);
    assert!(p.is_empty());
    let stale = ConnId::from_parts(conn.index() as u32, 99);
    for c in [conn, stale] {
        p.handle(
            Event::Spliced {
                conn: c,
                from: Side::Client,
                n: 10,
            },
            now,
        );
        assert!(p.poll_action().is_none());
        assert!(!p.splice_ok(c, Side::Client));
    }
    assert!(p.is_empty());
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn recording_never_splices() {
    let now = Instant::now();
    let config = portico_core::config::parse(MAPPED, "splice.toml").expect("valid");
    for record in [false, true] {
        let mut r = Recorded::new(config.clone(), MAPPED, 1, now, record);
        let mut listener = None;
        while let Some(a) = r.poll_action() {
            if let Action::Listen { listener: l, addr } = a {
                listener = Some(l);
                r.handle(
                    Event::Listening {
                        listener: l,
                        local: addr,
                    },
                    now,
                );
            }
        }
        let conn = r
            .accept_on(
                listener.expect("a listener"),
                addr("127.0.0.1:40000"),
                addr("127.0.0.1:8000"),
                now,
            )
            .expect("accepted");
        r.handle(
            Event::Connected {
                conn,
                local: addr("127.0.0.1:50000"),
            },
            now,
        );
        while r.poll_action().is_some() {}
        let buf = r.recv_buf(conn, Side::Client).expect("a read is wanted");
        buf[..SPLICE_BULK].fill(9);
        r.handle(
            Event::Read {
                conn,
                side: Side::Client,
                n: SPLICE_BULK,
            },
            now,
        );
        r.handle(
            Event::Written {
                conn,
                side: Side::Upstream,
                n: SPLICE_BULK,
            },
            now,
        );
        while r.poll_action().is_some() {}
        // The same session splices when not recorded (record = false).
        assert_eq!(
            r.splice_ok(conn, Side::Client),
            !record,
            "recording: {record}"
        );
    }
}

#[test]
fn pipes_are_at_least_256_kib_and_hold_at_most_the_buffer() {
    let now = Instant::now();
    let (p, _) = open(MAPPED, now);
    let want = PipeSize {
        size: 256 * 1024,
        limit: 64 * 1024,
    };
    assert_eq!(p.splice_pipe(), want, "the default 64 KiB buffer");
    let (p, _) = open(&format!("[limits]\nbuffer = 1048576\n{MAPPED}"), now);
    let want = PipeSize {
        size: 1024 * 1024,
        limit: 1024 * 1024,
    };
    assert_eq!(p.splice_pipe(), want);
}

/// A plain relay has no use for its upstream's local address (the runtime
/// may spare the getsockname), nor has HTTP or a line gateway; SOCKS (its
/// bound address) and FTP's control connection (its data ports) do.
#[test]
fn only_protocols_want_the_upstream_local_address() {
    let now = Instant::now();
    let (p, conn) = accepted(MAPPED, now);
    assert!(!p.wants_local(conn), "a mapped port");
    for (text, wants) in [
        ("[[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:1080\"]\n", true),
        ("[[service]]\nname = \"ftp\"\nkind = \"ftp\"\nlisten = [\"127.0.0.1:2121\"]\n", true),
        ("[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:3128\"]\n", false),
        ("[[service]]\nname = \"news\"\nkind = \"nntp\"\nlisten = [\"127.0.0.1:1119\"]\ndestination = \"127.0.0.1:119\"\n", false),
    ] {
        let (p, conn) = accepted(text, now);
        assert_eq!(p.wants_local(conn), wants, "{text}");
    }
    let stale = ConnId::from_parts(conn.index() as u32, 99);
    assert!(!p.wants_local(stale));
}
