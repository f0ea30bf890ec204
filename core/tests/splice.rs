//! When a runtime may move bytes itself (`Proxy::splice_ok`) and how the
//! bytes it moved are counted (`Event::Spliced`), driven by hand through
//! one connection at a time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portico_core::sim::Runtime;
use portico_core::{
    Accepted, AccessRecord, Action, ConnId, Event, ListenerId, PipeSize, Proxy, Side, SPLICE_BULK,
    SPLICE_GROW_AFTER, SPLICE_PIPE_MIN,
};

const MAPPED: &str = "[[service]]\nname = \"map\"\nkind = \"mapped\"\n\
    listen = [\"127.0.0.1:8000\"]\ndestination = \"127.0.0.1:9000\"\n";

/// A table over `text` with its listeners open, and the first listener.
fn open(text: &str) -> (Runtime, ListenerId) {
    let rt = Runtime::started(text, 1);
    let first = rt.listeners().first().expect("a listener").id;
    (rt, first)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

/// Drains the actions; returns the access records among them.
fn drain(rt: &mut Runtime) -> Vec<AccessRecord> {
    let actions = rt.drain().into_iter();
    actions
        .filter_map(|a| match a {
            Action::Access(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// A client connected, its upstream connected too.
fn connected(rt: &mut Runtime, l: ListenerId) -> ConnId {
    let conn = rt
        .accept(l, addr("127.0.0.1:40000"), None)
        .expect("accepted");
    drain(rt);
    up(rt, conn, "127.0.0.1:50000");
    conn
}

/// A table over `text` and a client accepted on its first listener.
fn accepted(text: &str) -> (Runtime, ConnId) {
    let (mut rt, l) = open(text);
    let conn = rt
        .accept(l, addr("127.0.0.1:40000"), None)
        .expect("accepted");
    drain(&mut rt);
    (rt, conn)
}

/// `conn`'s upstream connected, from `local`.
fn up(rt: &mut Runtime, conn: ConnId, local: &str) {
    let local = addr(local);
    rt.handle(Event::Connected {
        conn,
        attempt: 0,
        local,
    });
    drain(rt);
}

/// The client (or server) sent `bytes`, read into the core's buffer.
fn read(rt: &mut Runtime, conn: ConnId, side: Side, bytes: &[u8]) {
    rt.feed(conn, side, bytes);
    drain(rt);
}

/// Writes the first part of what the core has for `side`; returns it.
fn write(rt: &mut Runtime, conn: ConnId, side: Side) -> Vec<u8> {
    let mut data = Vec::new();
    let wrote = rt.send(conn, side, |[a, b]| {
        data.extend_from_slice(if a.is_empty() { b } else { a });
        data.len()
    });
    if wrote.is_some() {
        drain(rt);
    }
    data
}

/// `side` sends a bulk amount (what says a transfer is worth splicing),
/// which goes out to the other side.
fn warm(rt: &mut Runtime, conn: ConnId, side: Side) {
    read(rt, conn, side, &[7; SPLICE_BULK]);
    let out = write(rt, conn, side.other());
    assert_eq!(out.len(), SPLICE_BULK, "the bulk went through");
}

fn both(rt: &Runtime, conn: ConnId) -> (bool, bool) {
    (
        rt.splice_ok(conn, Side::Client),
        rt.splice_ok(conn, Side::Upstream),
    )
}

#[test]
fn a_mapped_relay_with_empty_buffers_may_splice() {
    let (mut rt, conn) = accepted(MAPPED);
    assert_eq!(
        both(&rt, conn),
        (false, false),
        "before the upstream connects"
    );
    up(&mut rt, conn, "127.0.0.1:50000");
    assert_eq!(
        both(&rt, conn),
        (false, false),
        "no bulk seen yet either way"
    );
    warm(&mut rt, conn, Side::Upstream);
    assert_eq!(
        both(&rt, conn),
        (false, true),
        "the upstream sent a bulk amount"
    );
    warm(&mut rt, conn, Side::Client);
    assert_eq!(both(&rt, conn), (true, true), "a relay with nothing held");
    // A small read says the transfer is not (or no longer) bulk.
    read(&mut rt, conn, Side::Client, b"small");
    write(&mut rt, conn, Side::Upstream);
    assert_eq!(both(&rt, conn), (false, true), "small messages are read");
}

#[test]
fn bytes_held_in_the_core_go_out_before_any_splice() {
    let (mut rt, l) = open(MAPPED);
    let conn = connected(&mut rt, l);
    warm(&mut rt, conn, Side::Upstream);
    read(&mut rt, conn, Side::Client, &[1; SPLICE_BULK]);
    assert_eq!(
        both(&rt, conn),
        (false, true),
        "client bytes held: only the other direction may splice"
    );
    assert_eq!(write(&mut rt, conn, Side::Upstream), [1; SPLICE_BULK]);
    assert_eq!(both(&rt, conn), (true, true), "held bytes written");
    read(&mut rt, conn, Side::Upstream, &[2; SPLICE_BULK]);
    assert_eq!(both(&rt, conn), (true, false));
}

#[test]
fn bytes_read_before_the_upstream_connects_hold_the_splice() {
    let (mut rt, conn) = accepted(MAPPED);
    read(&mut rt, conn, Side::Client, &[3; SPLICE_BULK]);
    up(&mut rt, conn, "127.0.0.1:50000");
    warm(&mut rt, conn, Side::Upstream);
    assert_eq!(both(&rt, conn), (false, true));
    write(&mut rt, conn, Side::Upstream);
    assert_eq!(both(&rt, conn), (true, true));
}

#[test]
fn no_splice_after_eof() {
    let (mut rt, l) = open(MAPPED);
    let conn = connected(&mut rt, l);
    warm(&mut rt, conn, Side::Client);
    warm(&mut rt, conn, Side::Upstream);
    rt.handle(Event::Eof {
        conn,
        side: Side::Client,
    });
    drain(&mut rt);
    assert_eq!(both(&rt, conn), (false, true), "the client's side is done");
    rt.handle(Event::Eof {
        conn,
        side: Side::Upstream,
    });
    let recs = drain(&mut rt);
    assert_eq!(recs.len(), 1, "both ways done: the connection ended");
    assert_eq!(both(&rt, conn), (false, false), "a dead id");
}

#[test]
fn no_splice_under_a_bandwidth_cap() {
    let text = format!(
        "{MAPPED}[[rule]]\naction = \"allow\"\nclients = [\"127.0.0.1/32\"]\n\
         rate = \"1MiB/s\"\n[[rule]]\naction = \"allow\"\n"
    );
    let (mut rt, l) = open(&text);
    let conn = connected(&mut rt, l);
    warm(&mut rt, conn, Side::Client);
    warm(&mut rt, conn, Side::Upstream);
    assert_eq!(both(&rt, conn), (false, false), "the cap counts every byte");
    // Another client, not capped, may.
    let other = rt
        .accept(l, addr("127.0.0.2:40000"), None)
        .expect("accepted");
    drain(&mut rt);
    up(&mut rt, other, "127.0.0.1:50001");
    warm(&mut rt, other, Side::Client);
    warm(&mut rt, other, Side::Upstream);
    assert_eq!(both(&rt, other), (true, true));
}

#[test]
fn no_splice_while_proxying_http_exchanges() {
    let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:3128\"]\n";
    let (mut rt, conn) = accepted(text);
    read(
        &mut rt,
        conn,
        Side::Client,
        b"GET http://127.0.0.1:9000/ HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n",
    );
    up(&mut rt, conn, "127.0.0.1:50000");
    let head = write(&mut rt, conn, Side::Upstream);
    assert!(head.starts_with(b"GET / HTTP/1.1\r\n"), "{head:?}");
    assert_eq!(
        both(&rt, conn),
        (false, false),
        "the HTTP machine reads both ways"
    );
    read(
        &mut rt,
        conn,
        Side::Upstream,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    write(&mut rt, conn, Side::Client);
    assert_eq!(both(&rt, conn), (false, false), "between exchanges too");
}

#[test]
fn a_connect_tunnel_splices_after_its_200() {
    let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:3128\"]\n\
                connect_ports = [9000]\n";
    let (mut rt, conn) = accepted(text);
    read(
        &mut rt,
        conn,
        Side::Client,
        b"CONNECT 127.0.0.1:9000 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n",
    );
    assert_eq!(both(&rt, conn), (false, false), "before the tunnel is up");
    up(&mut rt, conn, "127.0.0.1:50000");
    warm(&mut rt, conn, Side::Client);
    read(&mut rt, conn, Side::Upstream, &[4; SPLICE_BULK]);
    assert_eq!(
        both(&rt, conn),
        (true, false),
        "the 200 waits for the client: nothing from upstream may pass it"
    );
    let reply = write(&mut rt, conn, Side::Client);
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
    assert_eq!(
        both(&rt, conn),
        (true, false),
        "the upstream's bytes are still held"
    );
    assert_eq!(write(&mut rt, conn, Side::Client), [4; SPLICE_BULK]);
    assert_eq!(both(&rt, conn), (true, true));
}

#[test]
fn socks_splices_after_its_reply() {
    let text = "[[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:1080\"]\n";
    let (mut rt, conn) = accepted(text);
    read(&mut rt, conn, Side::Client, &[5, 1, 0]);
    assert_eq!(write(&mut rt, conn, Side::Client), [5, 0]);
    read(
        &mut rt,
        conn,
        Side::Client,
        &[5, 1, 0, 1, 127, 0, 0, 1, 0x23, 0x28],
    );
    assert_eq!(both(&rt, conn), (false, false), "still in the handshake");
    up(&mut rt, conn, "127.0.0.1:50000");
    warm(&mut rt, conn, Side::Client);
    read(&mut rt, conn, Side::Upstream, &[6; SPLICE_BULK]);
    assert_eq!(both(&rt, conn), (true, false), "the reply goes first");
    let reply = write(&mut rt, conn, Side::Client);
    assert_eq!(&reply[..2], [5, 0]);
    assert_eq!(write(&mut rt, conn, Side::Client), [6; SPLICE_BULK]);
    assert_eq!(both(&rt, conn), (true, true));
}

#[test]
fn spliced_bytes_are_counted_in_the_access_record() {
    let (mut rt, l) = open(MAPPED);
    let conn = connected(&mut rt, l);
    read(&mut rt, conn, Side::Client, b"abc");
    write(&mut rt, conn, Side::Upstream);
    for (from, n) in [
        (Side::Client, 65536),
        (Side::Upstream, 1000),
        (Side::Client, 7),
        (Side::Upstream, 0),
    ] {
        rt.handle(Event::Spliced { conn, from, n });
        assert!(drain(&mut rt).is_empty());
    }
    let snap = rt.snapshot();
    assert_eq!(
        (snap.connections[0].bytes_up, snap.connections[0].bytes_down),
        (3 + 65536 + 7, 1000),
        "the status page counts spliced bytes as they go"
    );
    read(&mut rt, conn, Side::Upstream, b"de");
    write(&mut rt, conn, Side::Client);
    for side in [Side::Client, Side::Upstream] {
        rt.handle(Event::Eof { conn, side });
    }
    let recs = drain(&mut rt);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!((r.status.as_str(), r.up, r.down), ("ok", 65546, 1002));
}

#[test]
fn spliced_bytes_keep_a_relay_from_idling_out() {
    let text = format!("[limits]\nidle_timeout = \"10s\"\n{MAPPED}");
    let (mut rt, l) = open(&text);
    let conn = connected(&mut rt, l);
    for _ in 0..5 {
        rt.advance(Duration::from_secs(6));
        rt.handle(Event::Spliced {
            conn,
            from: Side::Upstream,
            n: 100,
        });
        rt.handle_timeout();
        assert!(drain(&mut rt).is_empty(), "busy at {:?}", rt.now());
        assert!(rt.deadline().is_some_and(|t| t > rt.now()));
    }
    // Quiet from now on: it idles out ten seconds after the last splice,
    // not before.
    let idle_at = rt.now() + Duration::from_secs(10);
    while let Some(t) = rt.deadline().filter(|t| *t < idle_at) {
        rt.set_now(t);
        rt.handle_timeout();
        assert!(drain(&mut rt).is_empty(), "closed early, at {t:?}");
    }
    rt.set_now(idle_at);
    rt.handle_timeout();
    let recs = drain(&mut rt);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].status.as_str(), recs[0].down), ("idle", 500));
}

#[test]
fn spliced_for_a_dead_or_stale_id_changes_nothing() {
    let (mut rt, l) = open(MAPPED);
    let conn = connected(&mut rt, l);
    rt.handle(Event::IoError {
        conn,
        side: Side::Client,
        error: portico_core::IoKind::Reset,
    });
    drain(&mut rt);
    assert!(rt.is_empty());
    let stale = ConnId::from_parts(conn.index() as u32, 99);
    for c in [conn, stale] {
        rt.handle(Event::Spliced {
            conn: c,
            from: Side::Client,
            n: 10,
        });
        assert!(rt.poll().is_none());
        assert!(!rt.splice_ok(c, Side::Client));
    }
    assert!(rt.is_empty());
    assert_eq!(rt.deadline(), None);
}

/// Driven on a table that records itself (not through the harness).
#[test]
fn recording_never_splices() {
    let now = Instant::now();
    let config = portico_core::config::parse(MAPPED, "splice.toml").expect("valid");
    for record in [false, true] {
        let mut r = Proxy::new(config.clone(), 1, now);
        if record {
            r.record(MAPPED);
        }
        let mut listener = None;
        while let Some(a) = r.poll_action() {
            if let Action::Listen {
                listener: l, addr, ..
            } = a
            {
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
        let accepted = Accepted::new(listener.expect("a listener"), addr("127.0.0.1:40000"))
            .local(addr("127.0.0.1:8000"));
        let conn = r.accept(accepted, now).expect("accepted");
        r.handle(
            Event::Connected {
                conn,
                attempt: 0,
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
    let (rt, _) = open(MAPPED);
    let want = PipeSize {
        size: 256 * 1024,
        limit: 64 * 1024,
    };
    assert_eq!(rt.splice_pipe(), want, "the default 64 KiB buffer");
    let (rt, _) = open(&format!("[limits]\nbuffer = 1048576\n{MAPPED}"));
    let want = PipeSize {
        size: 1024 * 1024,
        limit: 1024 * 1024,
    };
    assert_eq!(rt.splice_pipe(), want);
}

/// `n` bytes from `from` spliced through, in splices of 64 KiB.
fn splice(rt: &mut Runtime, conn: ConnId, from: Side, n: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(64 * 1024);
        rt.handle(Event::Spliced {
            conn,
            from,
            n: k as usize,
        });
        left -= k;
    }
    drain(rt);
}

/// `conn`, connected, ends: both sides say end of stream.
fn end(rt: &mut Runtime, conn: ConnId) {
    for side in [Side::Client, Side::Upstream] {
        rt.handle(Event::Eof { conn, side });
    }
    drain(rt);
}

#[test]
fn a_direction_that_stays_bulk_may_hold_a_whole_pipe() {
    let (mut rt, l) = open(MAPPED);
    let conn = connected(&mut rt, l);
    let small = rt.splice_pipe();
    assert_eq!(small.limit, 64 * 1024);
    splice(&mut rt, conn, Side::Upstream, SPLICE_GROW_AFTER - 1);
    assert_eq!(rt.splice_pipe_for(conn, Side::Upstream), small, "not yet");
    splice(&mut rt, conn, Side::Upstream, 1);
    let grown = rt.splice_pipe_for(conn, Side::Upstream);
    assert_eq!(
        grown,
        PipeSize {
            size: SPLICE_PIPE_MIN,
            limit: SPLICE_PIPE_MIN
        },
        "past {SPLICE_GROW_AFTER} bytes"
    );
    assert_eq!(
        rt.splice_pipe_for(conn, Side::Client),
        small,
        "the other direction moved nothing"
    );
    // A buffer as big as the pipe has nothing to grow into.
    let (mut rt, l) = open(&format!("[limits]\nbuffer = 1048576\n{MAPPED}"));
    let conn = connected(&mut rt, l);
    splice(&mut rt, conn, Side::Client, 4 * SPLICE_GROW_AFTER);
    assert_eq!(rt.splice_pipe_for(conn, Side::Client), rt.splice_pipe());
}

/// What grown pipes hold beyond `buffer` comes out of the room of the
/// connections not open: `max_connections × 2 × buffer` stays the bound.
#[test]
fn grown_pipes_keep_within_the_memory_bound() {
    // 4 connections of 2 × 64 KiB: 512 KiB. A grown pipe holds 192 KiB
    // more: with 3 connections open, 128 KiB of room is left, no growth;
    // with 2, 256 KiB: one.
    let text = format!("[limits]\nmax_connections = 4\n{MAPPED}");
    let (mut rt, l) = open(&text);
    let a = connected(&mut rt, l);
    let b = rt
        .accept(l, addr("127.0.0.1:40001"), None)
        .expect("accepted");
    drain(&mut rt);
    up(&mut rt, b, "127.0.0.1:50001");
    let c = rt
        .accept(l, addr("127.0.0.1:40002"), None)
        .expect("accepted");
    drain(&mut rt);
    splice(&mut rt, a, Side::Upstream, SPLICE_GROW_AFTER);
    assert_eq!(
        rt.splice_pipe_for(a, Side::Upstream).limit,
        64 * 1024,
        "three open: no room"
    );
    up(&mut rt, c, "127.0.0.1:50002");
    end(&mut rt, c);
    assert_eq!(rt.snapshot().connections.len(), 2, "c closed");
    // Another bulk mebibyte asks again.
    splice(&mut rt, a, Side::Upstream, SPLICE_GROW_AFTER);
    assert_eq!(rt.splice_pipe_for(a, Side::Upstream).limit, SPLICE_PIPE_MIN);
    splice(&mut rt, b, Side::Upstream, 2 * SPLICE_GROW_AFTER);
    assert_eq!(
        rt.splice_pipe_for(b, Side::Upstream).limit,
        64 * 1024,
        "room for one grown pipe only"
    );
    // A new connection takes the room back: the grown pipe is held to
    // `buffer` again from its next pipe on.
    let d = rt
        .accept(l, addr("127.0.0.1:40003"), None)
        .expect("accepted");
    drain(&mut rt);
    assert_eq!(rt.splice_pipe_for(a, Side::Upstream).limit, 64 * 1024);
    up(&mut rt, d, "127.0.0.1:50003");
    end(&mut rt, d);
    assert_eq!(rt.splice_pipe_for(a, Side::Upstream).limit, SPLICE_PIPE_MIN);
    // Closing the grown direction's connection gives its room to b.
    end(&mut rt, a);
    splice(&mut rt, b, Side::Upstream, SPLICE_GROW_AFTER);
    assert_eq!(rt.splice_pipe_for(b, Side::Upstream).limit, SPLICE_PIPE_MIN);
}

/// A plain relay has no use for its upstream's local address (the runtime
/// may spare the getsockname), nor has HTTP or a line gateway; SOCKS (its
/// bound address) and FTP's control connection (its data ports) do.
#[test]
fn only_protocols_want_the_upstream_local_address() {
    let (rt, conn) = accepted(MAPPED);
    assert!(!rt.wants_local(conn), "a mapped port");
    for (text, wants) in [
        ("[[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:1080\"]\n", true),
        ("[[service]]\nname = \"ftp\"\nkind = \"ftp\"\nlisten = [\"127.0.0.1:2121\"]\n", true),
        ("[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:3128\"]\n", false),
        ("[[service]]\nname = \"news\"\nkind = \"nntp\"\nlisten = [\"127.0.0.1:1119\"]\ndestination = \"127.0.0.1:119\"\n", false),
    ] {
        let (rt, conn) = accepted(text);
        assert_eq!(rt.wants_local(conn), wants, "{text}");
    }
    let stale = ConnId::from_parts(conn.index() as u32, 99);
    assert!(!rt.wants_local(stale));
}
