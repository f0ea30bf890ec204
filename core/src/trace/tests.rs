use std::time::{Duration, Instant};

use quickcheck::{QuickCheck, TestResult};

use super::*;
use crate::config;
use crate::event::{Action, IoKind};
use crate::id::Side;
use crate::table::{Accepted, Proxy, Reload};
use crate::udp::Via;

const CONFIG: &str = r#"[limits]
idle_timeout = "10s"
shutdown_grace = "5s"

[[service]]
name = "fwd"
kind = "mapped"
listen = ["127.0.0.1:7000"]
destination = "192.0.2.1:80"

[[service]]
name = "sox"
kind = "socks"
listen = ["127.0.0.1:1080"]

[[service]]
name = "dns"
kind = "mapped"
protocol = "udp"
listen = ["127.0.0.1:5353"]
destination = "192.0.2.53:53"
"#;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn c(i: u32, g: u32) -> ConnId {
    ConnId::from_parts(i, g)
}

fn every_record() -> Vec<Record> {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let mut v = vec![
        Record::LogLevel(Level::Debug),
        Record::LogLevel(Level::Error),
        Record::Wall(Wall {
            unix_secs: 1_700_000_000,
            utc_offset_secs: 3600,
        }),
        Record::Wall(Wall {
            unix_secs: -86_401,
            utc_offset_secs: -14 * 3600,
        }),
        Record::Quotas("# portico quota counts v1\nlan\t10.0.0.8\t100\t1796256000\n".into()),
        Record::Accept {
            t: 0,
            listener: ListenerId(0),
            peer: sa("10.0.0.2:40000"),
            local: None,
            original: None,
            result: Ok(c(0, 1)),
        },
        Record::Accept {
            t: u64::MAX,
            listener: ListenerId(u32::MAX),
            peer: sa("[2001:db8::1]:1"),
            local: Some(sa("[2001:db8::2]:21")),
            original: None,
            result: Ok(c(u32::MAX, u32::MAX)),
        },
        Record::Accept {
            t: 3,
            listener: ListenerId(1),
            peer: sa("10.0.0.2:40000"),
            local: Some(sa("10.0.0.1:3130")),
            original: Some(sa("[fd00::9]:443")),
            result: Ok(c(2, 1)),
        },
        Record::Timeout { t: 1 },
        Record::Shutdown { t: NANOS },
        Record::Reload {
            t: 12_345_678_901,
            config: "a = 1\r\n\n|b\n".into(),
            recheck: false,
        },
        Record::Reload {
            t: 5,
            config: String::new(),
            recheck: true,
        },
        Record::ReloadFailed {
            t: 6,
            message: "t.toml:3:1: unknown key `x`; the old configuration stays in force".into(),
        },
        Record::Polled { n: 0 },
        Record::Polled { n: 42 },
        Record::Sent { n: 3 },
        Record::Datagram {
            t: 8,
            listener: ListenerId::new(2, 1),
            from: sa("[fe80::1]:53"),
            n: 65_507,
        },
        Record::Reply {
            t: 9,
            id: UdpId::from_parts(0, 1),
            n: 0,
        },
        Record::UdpFailed {
            t: 10,
            id: UdpId::from_parts(u32::MAX, 7),
        },
        Record::Event {
            t: 11,
            event: Event::UdpBound {
                conn: c(3, 2),
                local: sa("127.0.0.1:40000"),
            },
            bytes: None,
        },
        Record::Event {
            t: 12,
            event: Event::UdpBindFailed {
                conn: c(3, 2),
                error: IoKind::AddrInUse,
            },
            bytes: None,
        },
        Record::Event {
            t: 12,
            event: Event::BindListening {
                conn: c(4, 1),
                local: sa("10.0.0.1:40000"),
            },
            bytes: None,
        },
        Record::Event {
            t: 12,
            event: Event::BindFailed {
                conn: c(4, 1),
                error: IoKind::AddrNotAvailable,
            },
            bytes: None,
        },
        Record::Event {
            t: 12,
            event: Event::BindAccepted {
                conn: c(4, 1),
                peer: sa("[2001:db8::21]:20"),
            },
            bytes: None,
        },
        Record::AssociationDatagram {
            t: 13,
            conn: c(3, 2),
            outward: false,
            from: sa("10.0.0.2:5000"),
            n: 14,
            bytes: Some(vec![0, 0, 0, 1, 192, 0, 2, 7, 0, 7]),
        },
        Record::AssociationDatagram {
            t: 14,
            conn: c(3, 2),
            outward: true,
            from: sa("[2001:db8::7]:7"),
            n: 0,
            bytes: None,
        },
    ];
    for r in REFUSALS {
        v.push(Record::Accept {
            t: 7,
            listener: ListenerId(3),
            peer: sa("[::ffff:1.2.3.4]:65535"),
            local: None,
            original: None,
            result: Err(r),
        });
        v.push(Record::Accept {
            t: 7,
            listener: ListenerId::new(5, 9),
            peer: sa("1.2.3.4:5"),
            local: Some(sa("0.0.0.0:0")),
            original: None,
            result: Err(r),
        });
    }
    let ev = |event| Record::Event {
        t: 999_999_999,
        event,
        bytes: None,
    };
    for error in IO_KINDS {
        v.push(ev(Event::ListenFailed {
            listener: ListenerId(1),
            error,
        }));
        v.push(ev(Event::AcceptFailed {
            listener: ListenerId(2),
            error,
        }));
        v.push(ev(Event::ConnectFailed {
            conn: c(4, 2),
            attempt: 7,
            error,
        }));
        v.push(ev(Event::IoError {
            conn: c(4, 2),
            side: Side::Upstream,
            error,
        }));
    }
    v.extend([
        ev(Event::Listening {
            listener: ListenerId(0),
            local: sa("0.0.0.0:8080"),
        }),
        ev(Event::Resolved {
            conn: c(1, 1),
            addrs: vec![],
        }),
        ev(Event::Resolved {
            conn: c(1, 1),
            addrs: vec![sa("192.0.2.9:80"), sa("[2001:db8::9]:80")],
        }),
        ev(Event::ResolveFailed { conn: c(1, 2) }),
        ev(Event::PasswordChecked {
            conn: c(1, 2),
            ok: true,
        }),
        ev(Event::PasswordChecked {
            conn: c(3, 0),
            ok: false,
        }),
        ev(Event::Connected {
            conn: c(2, 3),
            attempt: 3,
            local: sa("[::1]:5000"),
        }),
        ev(Event::Read {
            conn: c(0, 1),
            side: Side::Client,
            n: 1400,
        }),
        Record::Event {
            t: 3,
            event: Event::Read {
                conn: c(0, 1),
                side: Side::Upstream,
                n: 256,
            },
            bytes: Some(all_bytes),
        },
        Record::Event {
            t: 3,
            event: Event::Read {
                conn: c(0, 1),
                side: Side::Client,
                n: 0,
            },
            bytes: Some(vec![]),
        },
        Record::Event {
            t: 3,
            event: Event::Read {
                conn: c(0, 1),
                side: Side::Client,
                n: 18,
            },
            bytes: Some(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        },
        ev(Event::ReadBlocked {
            conn: c(0, 1),
            side: Side::Client,
        }),
        ev(Event::Eof {
            conn: c(0, 1),
            side: Side::Upstream,
        }),
        ev(Event::Written {
            conn: c(0, 1),
            side: Side::Client,
            n: 65536,
        }),
        ev(Event::Spliced {
            conn: c(0, 1),
            from: Side::Upstream,
            n: 262144,
        }),
        ev(Event::Spliced {
            conn: c(7, 3),
            from: Side::Client,
            n: 0,
        }),
    ]);
    v
}

#[test]
fn round_trip_every_record_kind() {
    let header = Header {
        seed: u64::MAX,
        config: CONFIG.into(),
    };
    let records = every_record();
    let bytes = encode(&header, &records);
    let (h, r) = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h, header);
    assert_eq!(r, records);
    // One record a line, plus the multi-line reloads.
    let text = String::from_utf8(bytes).expect("utf-8");
    let start = format!(
        "portico-trace 2\nseed 18446744073709551615\nconfig {}\n|[limits]\n",
        CONFIG.split('\n').count()
    );
    assert!(text.starts_with(&start), "{text}");
    assert!(text.contains("\n0.999999999 read 0.1 client 1400\n"));
    assert!(text.contains("\n0.999999999 connected 2.3 3 [::1]:5000\n"));
    assert!(text.contains("\n0.999999999 connect-failed 4.2 7 refused\n"));
    assert!(text.contains(" read 0.1 client 18 \"GET / HTTP/1.1\\r\\n\\r\\n\"\n"));
    assert!(text.contains("accept L3 [::ffff:1.2.3.4]:65535 refused:unknown-listener\n"));
    assert!(text.contains("12.345678901 reload 4\n|a = 1\r\n|\n||b\n|\n"));
}

#[test]
fn round_trip_quickcheck_payloads_and_configs() {
    fn prop(config: String, payload: Vec<u8>, seed: u64, t: u64) -> bool {
        let header = Header { seed, config };
        let records = vec![
            Record::Event {
                t,
                event: Event::Read {
                    conn: c(1, 1),
                    side: Side::Client,
                    n: payload.len(),
                },
                bytes: Some(payload),
            },
            Record::Reload {
                t,
                config: header.config.clone(),
                recheck: seed & 1 == 0,
            },
        ];
        decode(&encode(&header, &records)) == Ok((header, records))
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(String, Vec<u8>, u64, u64) -> bool);
}

#[test]
fn comments_are_skipped_and_records_numbered() {
    let mut t = encode(
        &Header {
            seed: 1,
            config: String::new(),
        },
        &[],
    );
    t.extend_from_slice(b"# a note\n0.000000001 timeout\n# another\npolled 3\n");
    let r = Reader::new(&t).expect("header");
    let e: Vec<Entry> = r.collect::<Result<_, _>>().expect("records");
    assert_eq!(e.len(), 2);
    assert_eq!((e[0].number, e[0].line), (1, 6));
    assert_eq!((e[1].number, e[1].line), (2, 8));
    assert_eq!(e[1].record, Record::Polled { n: 3 });
}

// ---- A recorded session, replayed -----------------------------------

/// Plays the runtime by hand around a table that records itself.
struct Live {
    proxy: Proxy,
    t0: Instant,
    actions: Vec<Action>,
}

impl Live {
    fn new(text: &str) -> Live {
        Live::with_quotas(text, None)
    }

    /// Recording begins once the ledger holds the quota counts `quotas`
    /// (a state file's text), as after a start that read `[state] dir`.
    fn with_quotas(text: &str, quotas: Option<&str>) -> Live {
        let t0 = Instant::now();
        let config = config::parse(text, "live.toml").unwrap_or_else(|e| panic!("{e}"));
        let mut proxy = Proxy::new(config, 7, t0);
        if let Some(q) = quotas {
            proxy.load_quotas(q).unwrap_or_else(|e| panic!("{e}"));
        }
        proxy.record(text);
        proxy.set_log_level(Level::Debug);
        Live {
            proxy,
            t0,
            actions: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        // Odd nanoseconds, so durations are not round.
        self.t0 + Duration::from_nanos(ms * 1_000_000 + 123)
    }

    /// Takes at most `max` actions, as a runtime that handles an event
    /// in the middle of its drain would.
    fn poll(&mut self, max: usize) -> Vec<Action> {
        let mut got = Vec::new();
        while got.len() < max {
            let Some(a) = self.proxy.poll_action() else {
                break;
            };
            got.push(a);
        }
        self.actions.extend(got.iter().cloned());
        got
    }

    fn drain(&mut self) -> Vec<Action> {
        self.poll(usize::MAX)
    }

    /// Takes every datagram waiting to be sent.
    fn send(&mut self) -> Vec<(Via, Vec<u8>)> {
        std::iter::from_fn(|| self.proxy.poll_datagram()).collect()
    }

    fn datagram(&mut self, ms: u64, l: ListenerId, from: &str, bytes: &[u8]) {
        let now = self.at(ms);
        self.proxy.datagram_buf()[..bytes.len()].copy_from_slice(bytes);
        self.proxy.handle_datagram(l, sa(from), bytes.len(), now);
    }

    fn reply(&mut self, ms: u64, id: UdpId, bytes: &[u8]) {
        let now = self.at(ms);
        self.proxy.datagram_buf()[..bytes.len()].copy_from_slice(bytes);
        self.proxy.handle_reply(id, bytes.len(), now);
    }

    fn udp_failed(&mut self, ms: u64, id: UdpId) {
        let now = self.at(ms);
        self.proxy.handle_udp_failed(id, now);
    }

    fn wall(&mut self, w: Wall) {
        self.proxy.set_wall(w);
    }

    fn handle(&mut self, ms: u64, ev: Event) {
        let now = self.at(ms);
        self.proxy.handle(ev, now);
    }

    fn accept(&mut self, ms: u64, l: u32, peer: &str) -> Result<ConnId, Refused> {
        let now = self.at(ms);
        self.proxy
            .accept(Accepted::new(ListenerId(l), sa(peer)), now)
    }

    fn accept_on(
        &mut self,
        ms: u64,
        l: ListenerId,
        peer: &str,
        local: &str,
    ) -> Result<ConnId, Refused> {
        let now = self.at(ms);
        let accepted = Accepted::new(l, sa(peer)).local(sa(local));
        self.proxy.accept(accepted, now)
    }

    fn reload_failed(&mut self, ms: u64, message: &str) {
        let now = self.at(ms);
        self.proxy.reload_failed(message, now);
    }

    fn reload(&mut self, ms: u64, text: &str, recheck: bool) {
        let now = self.at(ms);
        let config = config::parse(text, "live.toml").unwrap_or_else(|e| panic!("{e}"));
        let reload = Reload {
            text,
            recheck,
            closed_elsewhere: 0,
        };
        self.proxy.reconfigure(config, reload, now);
    }

    /// A read of `bytes`; `kept`: the core may parse them, so the
    /// trace keeps them (it decides that itself; the argument says what
    /// the test expects of it).
    fn read(&mut self, ms: u64, conn: ConnId, side: Side, bytes: &[u8], kept: bool) {
        let now = self.at(ms);
        assert_eq!(
            self.proxy.keeps_payload(conn),
            kept,
            "{conn} {side:?}: whether the bytes read are kept"
        );
        let buf = self.proxy.recv_buf(conn, side).expect("read wanted");
        buf[..bytes.len()].copy_from_slice(bytes);
        let ev = Event::Read {
            conn,
            side,
            n: bytes.len(),
        };
        self.proxy.handle(ev, now);
    }

    /// Writes everything waiting for `side`; returns it.
    fn write(&mut self, ms: u64, conn: ConnId, side: Side) -> Vec<u8> {
        let data = self
            .proxy
            .send_buf(conn, side)
            .map(|parts| parts.concat())
            .unwrap_or_default();
        if !data.is_empty() {
            self.handle(
                ms,
                Event::Written {
                    conn,
                    side,
                    n: data.len(),
                },
            );
        }
        data
    }

    fn timeout(&mut self, ms: u64) {
        let now = self.at(ms);
        self.proxy.handle_timeout(now);
    }

    fn shutdown(&mut self, ms: u64) {
        let now = self.at(ms);
        self.proxy.shutdown(now);
    }

    fn finish(mut self) -> (Vec<u8>, Vec<String>, Vec<Action>) {
        self.drain();
        let (trace, lines) = self.proxy.take_trace().unwrap_or_default();
        let lines = lines.lines().map(String::from).collect();
        (trace, lines, self.actions)
    }
}

/// A session through both a mapped port (relayed bytes, lengths only)
/// and SOCKS5 (a handshake, kept), with resolution, a failed connect, a
/// pause for want of descriptors, an idle timeout and a shutdown.
fn session() -> (Vec<u8>, Vec<String>, Vec<Action>) {
    let mut l = Live::new(CONFIG);
    // Half the startup actions, then a listener reported from inside the
    // drain (as the mio runtime does), then the rest.
    assert_eq!(l.poll(1).len(), 1);
    l.handle(
        0,
        Event::Listening {
            listener: ListenerId(0),
            local: sa("127.0.0.1:7000"),
        },
    );
    l.drain();
    l.handle(
        0,
        Event::Listening {
            listener: ListenerId(1),
            local: sa("127.0.0.1:1080"),
        },
    );
    l.wall(Wall::utc(1_700_000_000));
    l.wall(Wall::utc(1_700_000_000)); // unchanged: not recorded again
    l.handle(
        0,
        Event::Listening {
            listener: ListenerId(2),
            local: sa("127.0.0.1:5353"),
        },
    );
    l.drain();

    // The UDP port: a mapping opens, a query goes out, an answer comes
    // back; a second client's mapping fails.
    let udp = ListenerId(2);
    l.datagram(0, udp, "10.0.0.8:5000", b"private query");
    let opened = |acts: Vec<Action>| {
        acts.into_iter()
            .find_map(|a| match a {
                Action::UdpOpen { id, .. } => Some(id),
                _ => None,
            })
            .expect("a mapping opens")
    };
    let id = opened(l.drain());
    let out = l.send();
    assert_eq!(out, vec![(Via::Mapping(id), b"private query".to_vec())]);
    l.reply(1, id, b"private answer");
    l.datagram(1, udp, "10.0.0.8:5000", b"again");
    assert_eq!(l.send().len(), 2);
    l.datagram(2, udp, "10.0.0.9:1", b"x");
    let id2 = opened(l.drain());
    l.udp_failed(2, id2);
    l.send();
    l.drain();

    // The mapped port: connect, relay both ways, half-closes.
    let m = l.accept(1, 0, "10.0.0.2:40000").expect("accepted");
    l.handle(
        2,
        Event::Connected {
            conn: m,
            attempt: 0,
            local: sa("10.0.0.1:50000"),
        },
    );
    l.read(3, m, Side::Client, b"secret user data", false);
    assert_eq!(l.write(4, m, Side::Upstream), b"secret user data");
    l.drain();
    l.read(5, m, Side::Upstream, b"more private bytes!", false);
    l.handle(
        5,
        Event::ReadBlocked {
            conn: m,
            side: Side::Upstream,
        },
    );
    assert_eq!(l.write(6, m, Side::Client), b"more private bytes!");
    l.handle(
        7,
        Event::Eof {
            conn: m,
            side: Side::Client,
        },
    );
    l.handle(
        8,
        Event::Eof {
            conn: m,
            side: Side::Upstream,
        },
    );
    l.drain();

    // SOCKS5 by name: the handshake is kept, so the replay resolves the
    // same name and connects to the same addresses.
    let s = l.accept(10, 1, "10.0.0.3:40001").expect("accepted");
    l.read(11, s, Side::Client, &[5, 1, 0], true);
    assert_eq!(l.write(12, s, Side::Client), [5, 0]);
    let mut req = vec![5, 1, 0, 3, 11];
    req.extend_from_slice(b"example.com");
    req.extend_from_slice(&443u16.to_be_bytes());
    l.read(13, s, Side::Client, &req, true);
    let resolve = l.drain();
    assert!(resolve.iter().any(|a| matches!(a,
            Action::Resolve { host, port: 443, .. } if host == "example.com")));
    l.handle(
        20,
        Event::Resolved {
            conn: s,
            addrs: vec![sa("192.0.2.9:443"), sa("[2001:db8::9]:443")],
        },
    );
    l.handle(
        25,
        Event::ConnectFailed {
            conn: s,
            attempt: 0,
            error: IoKind::Refused,
        },
    );
    l.handle(
        30,
        Event::Connected {
            conn: s,
            attempt: 1,
            local: sa("[2001:db8::1]:50001"),
        },
    );
    l.write(31, s, Side::Client);
    l.read(32, s, Side::Upstream, b"tls bytes", false);
    l.write(33, s, Side::Client);
    l.drain();

    // Out of descriptors: accepting pauses, then resumes.
    l.handle(
        40,
        Event::AcceptFailed {
            listener: ListenerId(0),
            error: IoKind::TooManyFiles,
        },
    );
    l.timeout(300);
    // Refused by no listener.
    assert_eq!(
        l.accept(301, 9, "10.0.0.4:1"),
        Err(Refused::UnknownListener)
    );
    // The SOCKS tunnel idles out 10 s after its last byte.
    l.timeout(5_000);
    l.timeout(10_100);
    // A reload opens another port; a connection to it and one more to
    // the first are cut by the shutdown's grace.
    let more = format!(
        "{CONFIG}\n[[service]]\nname = \"fwd2\"\nkind = \"mapped\"\n\
             listen = [\"127.0.0.1:7001\"]\ndestination = \"192.0.2.2:80\"\n"
    );
    // A file that did not load first: the status answers would say so.
    l.reload_failed(10_140, "live.toml:1:1: invalid table header");
    l.reload(10_150, &more, false);
    let new = l
        .drain()
        .into_iter()
        .find_map(|a| match a {
            Action::Listen { listener, addr, .. } if addr == sa("127.0.0.1:7001") => Some(listener),
            _ => None,
        })
        .expect("the new port opens");
    l.handle(
        10_151,
        Event::Listening {
            listener: new,
            local: sa("127.0.0.1:7001"),
        },
    );
    l.accept_on(10_152, new, "10.0.0.7:4", "127.0.0.1:7001")
        .expect("accepted");
    l.accept_on(10_200, ListenerId(0), "10.0.0.5:2", "127.0.0.1:7000")
        .expect("accepted");
    l.handle(
        10_201,
        Event::IoError {
            conn: c(60, 1),
            side: Side::Client,
            error: IoKind::Reset,
        },
    );
    l.shutdown(10_300);
    l.drain();
    assert_eq!(
        l.accept(10_301, 0, "10.0.0.6:3"),
        Err(Refused::ShuttingDown)
    );
    l.timeout(15_300);
    l.finish()
}

#[test]
fn replay_of_a_recorded_session_takes_the_live_actions() {
    let (trace, live, actions) = session();
    let replayed = replay_lines(&trace).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replayed, live);
    // The live lines are the live actions (and datagrams), rendered.
    let datagrams = live.iter().filter(|l| l.contains(" Datagram {")).count();
    assert_eq!(datagrams, 3);
    assert_eq!(live.len(), actions.len() + datagrams);
    // The session did what it claims.
    let closes = actions
        .iter()
        .filter(|a| matches!(a, Action::Close { .. }))
        .count();
    assert_eq!(closes, 4);
    let access: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Access(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(access.iter().any(|r| r.status == "idle"
        && r.destination == Some(sa("[2001:db8::9]:443"))
        && r.duration == Duration::from_millis(10_100 - 10)));
    // Two TCP connections and the UDP mapping end with the shutdown, and
    // the client accepted during it is refused as "shutdown".
    assert_eq!(access.iter().filter(|r| r.status == "shutdown").count(), 4);
    assert!(live.iter().any(|l| l.contains("Unlisten")));
    assert!(live.iter().any(|l| l.contains("PauseAccept")));
    assert!(live.iter().any(|l| l.contains("ResumeAccept")));
    // Relayed bytes stay out of the trace; the handshake is in it.
    let text = String::from_utf8(trace).expect("utf-8");
    assert!(!text.contains("secret") && !text.contains("private") && !text.contains("tls"));
    assert!(text.contains(" datagram L2 10.0.0.8:5000 13\n"), "{text}");
    assert!(text.contains(" reply 0.1 14\n"), "{text}");
    assert!(text.contains("\nsent 2\n"), "{text}");
    assert!(live
        .iter()
        .any(|l| l.contains("Datagram { via: Listener(ListenerId(2), 10.0.0.8:5000), len: 14 }")));
    assert!(access
        .iter()
        .any(|r| r.method == "UDP" && r.status == "error"));
    assert!(text.contains(" read 0.1 client 16\n"));
    assert!(text.contains("\"\\x05\\x01\\x00\\x03\\x0bexample.com\\x01\\xbb\""));
    assert!(text.contains("\npolled 1\n"), "a partial drain is recorded");
    assert!(
        text.contains(" reload-failed 1\n|live.toml:1:1: invalid table header\n"),
        "{text}"
    );
}

/// Counts loaded at start decide quotas, so the trace holds them and the
/// replay starts from them: a client whose quota was used up before the
/// recording began opens no UDP mapping, live and replayed alike.
#[test]
fn a_replay_starts_from_the_quota_counts_loaded() {
    let text = "[[service]]\nname = \"dns\"\nkind = \"mapped\"\nprotocol = \"udp\"\n\
                listen = [\"127.0.0.1:5353\"]\ndestination = \"192.0.2.53:53\"\n\n\
                [[quota]]\nname = \"lan\"\nclients = [\"10.0.0.0/8\"]\nbytes = \"100B\"\n\
                per = \"day\"\n";
    let w = Wall::utc(1_796_212_800);
    let end = crate::quota::Per::Day.end(w);
    let counts = format!("# portico quota counts v1\nlan\t10.0.0.8\t100\t{end}\n");
    let mut l = Live::with_quotas(text, Some(&counts));
    l.wall(w);
    l.drain();
    l.handle(
        0,
        Event::Listening {
            listener: ListenerId(0),
            local: sa("127.0.0.1:5353"),
        },
    );
    l.datagram(1, ListenerId(0), "10.0.0.8:5000", b"over its quota");
    l.datagram(2, ListenerId(0), "10.0.0.9:5000", b"a new client");
    assert_eq!(l.send().len(), 1, "only the new client's datagram goes out");
    let (trace, live, actions) = l.finish();
    let opened: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::UdpOpen { .. }))
        .collect();
    assert_eq!(opened.len(), 1, "only 10.0.0.9 gets a mapping: {actions:?}");
    let text = String::from_utf8(trace.clone()).expect("utf-8");
    assert!(
        text.contains(&format!(
            "\nquotas 3\n|# portico quota counts v1\n|lan\t10.0.0.8\t100\t{end}\n|\n"
        )),
        "{text}"
    );
    assert_eq!(replay_lines(&trace).unwrap_or_else(|e| panic!("{e}")), live);
    // Without the counts the replay would have opened a second mapping.
    let without = text.replacen(
        &format!("quotas 3\n|# portico quota counts v1\n|lan\t10.0.0.8\t100\t{end}\n|\n"),
        "",
        1,
    );
    assert_ne!(
        replay_lines(without.as_bytes()).unwrap_or_default(),
        live,
        "the counts make the difference"
    );
}

/// A SOCKS5 UDP association recorded and replayed: the client's headers
/// are kept (the replay parses them), payloads only as lengths.
#[test]
fn a_recorded_association_replays() {
    let mut l = Live::new(CONFIG);
    for (i, port) in [(0, 7000), (1, 1080), (2, 5353)] {
        l.handle(
            0,
            Event::Listening {
                listener: ListenerId(i),
                local: sa(&format!("127.0.0.1:{port}")),
            },
        );
    }
    l.drain();
    let conn = l
        .accept_on(1, ListenerId(1), "10.0.0.2:4000", "127.0.0.1:1080")
        .expect("accepted");
    l.drain();
    l.read(
        2,
        conn,
        Side::Client,
        &[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0],
        true,
    );
    l.drain();
    l.handle(
        3,
        Event::UdpBound {
            conn,
            local: sa("127.0.0.1:40000"),
        },
    );
    l.drain();
    l.write(4, conn, Side::Client);
    let dg = [&[0u8, 0, 0, 1, 192, 0, 2, 7, 0, 7][..], b"secret"].concat();
    let now = l.at(5);
    l.proxy.datagram_buf()[..dg.len()].copy_from_slice(&dg);
    l.proxy
        .handle_association_datagram(conn, false, sa("10.0.0.2:5000"), dg.len(), now);
    assert_eq!(l.send().len(), 1);
    let now = l.at(6);
    l.proxy.datagram_buf()[..7].copy_from_slice(b"private");
    l.proxy
        .handle_association_datagram(conn, true, sa("192.0.2.7:7"), 7, now);
    assert_eq!(l.send().len(), 1);
    l.handle(
        7,
        Event::Eof {
            conn,
            side: Side::Client,
        },
    );
    let (trace, live, actions) = l.finish();
    let text = String::from_utf8(trace.clone()).expect("utf-8");
    assert!(
        text.contains(" association 0.1 client 10.0.0.2:5000 16 \"\\x00\\x00\\x00\\x01\\xc0\\x00\\x02\\x07\\x00\\x07\"\n"),
        "{text}"
    );
    assert!(
        text.contains(" association 0.1 outward 192.0.2.7:7 7\n"),
        "{text}"
    );
    assert!(!text.contains("private") && !text.contains("secret"));
    assert!(actions.iter().any(|a| matches!(a,
        Action::Access(r) if r.method == "UDP-ASSOCIATE" && r.up == 6 && r.down == 7)));
    let replayed = replay_lines(&trace).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replayed, live);
}

#[test]
fn replay_output_is_stable_across_runs() {
    let (trace, _, _) = session();
    assert_eq!(replay_lines(&trace), replay_lines(&trace));
}

#[test]
fn a_replay_that_diverges_says_where() {
    let (trace, _, _) = session();
    let text = String::from_utf8(trace).expect("utf-8");
    // The core gave the first connection 0.1: claim it gave 0.2.
    let bad = text.replacen(" 10.0.0.2:40000 0.1\n", " 10.0.0.2:40000 0.2\n", 1);
    assert_ne!(bad, text);
    match replay_lines(bad.as_bytes()) {
        Err(TraceError::Diverged { message, .. }) => {
            assert!(message.contains("accept returned"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // The live run polled more than the replay can give.
    let bad = text.replacen("\npolled 1\n", "\npolled 1000\n", 1);
    assert!(matches!(
        replay_lines(bad.as_bytes()),
        Err(TraceError::Diverged { .. })
    ));
    // A read bigger than any buffer.
    let bad = text.replacen(" client 16\n", " client 99999999\n", 1);
    assert_ne!(bad, text);
    match replay_lines(bad.as_bytes()) {
        Err(TraceError::Diverged { message, .. }) => {
            assert!(message.contains("room for"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A configuration that does not load.
    let bad = text.replacen("kind = \"mapped\"", "kind = \"nonsense\"", 1);
    assert!(matches!(
        replay_lines(bad.as_bytes()),
        Err(TraceError::Config { .. })
    ));
}

#[test]
fn a_reload_that_does_not_load_is_a_config_error() {
    let (trace, _, _) = session();
    let mut t = trace;
    t.extend_from_slice(b"20.000000000 reload-recheck 1\n|nonsense\n");
    match replay_lines(&t) {
        Err(TraceError::Config { message }) => {
            assert!(message.contains("the reload of record"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

// ---- Corrupt and truncated traces -----------------------------------

fn err_of(t: &[u8]) -> TraceError {
    match decode(t) {
        Err(e) => e,
        Ok(_) => panic!("accepted: {:?}", String::from_utf8_lossy(t)),
    }
}

#[test]
fn malformed_traces_are_typed_errors_with_offsets() {
    assert_eq!(err_of(b"hello\n"), TraceError::NotATrace);
    assert_eq!(err_of(b"\x00\x01"), TraceError::NotATrace);
    assert!(matches!(
        err_of(b""),
        TraceError::Truncated { offset: 0, .. }
    ));
    assert!(matches!(
        err_of(b"portico-tr"),
        TraceError::Truncated { .. }
    ));
    assert_eq!(
        err_of(b"portico-trace 3\n"),
        TraceError::Version { found: "3".into() }
    );
    assert_eq!(
        err_of(b"portico-trace 01\n"),
        TraceError::Version { found: "01".into() }
    );
    let head = "portico-trace 1\nseed 1\nconfig 1\n|\n";
    let cases: &[(&str, usize, &str)] = &[
        ("0.5 timeout\n", 0, "neither a record kind nor a time"),
        ("1.000000000 timeout x\n", 20, "unexpected text"),
        ("1.000000000  timeout\n", 12, "found a space"),
        ("1.000000000 timeout \n", 20, "unexpected text"),
        ("1.000000000 frobnicate\n", 12, "unknown record kind"),
        ("1.000000000 eof 0.1 sideways\n", 20, "a side"),
        ("1.000000000 eof 0.1\n", 19, "found the end of the line"),
        ("1.000000000 eof 0.x client\n", 16, "a connection id"),
        (
            "1.000000000 accept L0 1.2.3.4 0.1\n",
            22,
            "the peer address",
        ),
        ("1.000000000 accept X0 1.2.3.4:5 0.1\n", 19, "a listener"),
        (
            "1.000000000 accept L0 1.2.3.4:5 refused:no\n",
            32,
            "refused:<why>",
        ),
        (
            "1.000000000 read 0.1 client 3 \"ab\"\n",
            30,
            "keeps 2 bytes",
        ),
        (
            "1.000000000 read 0.1 client 2 \"ab\n",
            33,
            "no closing quote",
        ),
        (
            "1.000000000 read 0.1 client 2 \"a\\q\"\n",
            32,
            "unknown escape",
        ),
        (
            "1.000000000 read 0.1 client 1 \"\\x4\"\n",
            31,
            "two hex digits",
        ),
        (
            "1.000000000 read 0.1 client 1 \"\t\"\n",
            31,
            "must be escaped",
        ),
        (
            "1.000000000 read 0.1 client 1 \"a\"b\n",
            33,
            "after the closing quote",
        ),
        ("1.000000000 read 0.1 client 1 a\n", 30, "quoted string"),
        (
            "1.000000000 io-error 0.1 client melted\n",
            32,
            "i/o error kind",
        ),
        ("1.000000000 written 0.1 client -1\n", 31, "a byte count"),
        ("1.000000000 spliced 0.1 client\n", 30, "a byte count"),
        ("1.000000000 spliced 0.1 sideways 5\n", 24, "side"),
        (
            "1.000000000 spliced 0.1 upstream 5 6\n",
            35,
            "unexpected text",
        ),
        ("wall 1 99999999999\n", 7, "UTC offset"),
        ("log-level loud\n", 10, "a log level"),
        ("polled +1\n", 7, "a number of actions"),
        ("\n", 0, "found the end of the line"),
        ("99999999999.000000000 timeout\n", 0, "nor a time"),
    ];
    for (line, col, want) in cases {
        let t = format!("{head}{line}");
        match err_of(t.as_bytes()) {
            TraceError::Corrupt {
                offset,
                line: ln,
                message,
            } => {
                assert_eq!(offset, head.len() + col, "{line:?}: {message}");
                assert_eq!(ln, 5, "{line:?}");
                assert!(message.contains(want), "{line:?}: {message}");
            }
            other => panic!("{line:?}: {other:?}"),
        }
    }
    // Not UTF-8.
    let mut t = head.as_bytes().to_vec();
    t.extend_from_slice(b"polled \xff\n");
    assert!(matches!(
        err_of(&t),
        TraceError::Corrupt { offset, .. } if offset == head.len() + 7
    ));
    // A configuration block that does not begin with `|`.
    assert!(matches!(
        err_of(b"portico-trace 1\nseed 1\nconfig 2\n|a\nb\n"),
        TraceError::Corrupt {
            offset: 35,
            line: 5,
            ..
        }
    ));
}

#[test]
fn every_truncation_is_an_error_or_a_shorter_trace() {
    let (trace, _, _) = session();
    let header_end = {
        let (h, _) = decode(&trace).expect("decodes");
        encode(&h, &[]).len()
    };
    // Where the blocks of `|` lines lie: the reload's configuration and
    // the failed reload's message.
    let text = std::str::from_utf8(&trace).expect("utf-8");
    let block = |kind: &str| {
        let start = text.find(&format!(" {kind} ")).expect(kind) + 1;
        let (_, after) = text[start..].split_once('\n').expect("a line");
        let lines: usize = text[start..][kind.len() + 1..]
            .split('\n')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count");
        let end = text.len()
            - after
                .split_inclusive('\n')
                .skip(lines)
                .map(str::len)
                .sum::<usize>();
        (start, end)
    };
    let blocks = [block("reload"), block("reload-failed")];
    let mut shorter = 0;
    for cut in 0..trace.len() {
        let t = &trace[..cut];
        let r = replay_lines(t);
        let inside_reload = blocks.iter().any(|(s, e)| cut > *s && cut < *e);
        if cut < header_end || t.last() != Some(&b'\n') || inside_reload {
            assert!(
                matches!(r, Err(TraceError::Truncated { .. })),
                "cut at {cut}: {r:?}"
            );
        } else {
            // A prefix of the inputs replays as the start of the run.
            assert!(r.is_ok(), "cut at {cut}: {r:?}");
            shorter += 1;
        }
    }
    assert!(shorter > 40, "{shorter}");
}

#[test]
fn quickcheck_mutated_traces_never_panic() {
    fn prop(edits: Vec<(usize, u8)>, cut: Option<usize>) -> TestResult {
        let (mut t, _, _) = session();
        for (pos, b) in edits {
            let len = t.len();
            // Overwrite, insert or delete a byte, somewhere.
            match b % 4 {
                0 | 1 if len > 0 => t[pos % len] = b,
                2 => t.insert(pos % (len + 1), b),
                3 if len > 0 => {
                    t.remove(pos % len);
                }
                _ => {}
            }
        }
        if let Some(c) = cut {
            let len = t.len();
            t.truncate(c % (len + 1));
        }
        // Whatever they return, they return: a panic fails the property.
        let _ = decode(&t);
        let _ = replay_lines(&t);
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<(usize, u8)>, Option<usize>) -> TestResult);
}

#[test]
fn quickcheck_mutated_records_never_panic() {
    // Edits aimed at the record lines, where a whole-file edit would
    // mostly hit the configuration.
    fn prop(line: usize, col: usize, b: u8) -> TestResult {
        let (t, _, _) = session();
        let text = String::from_utf8(t).expect("utf-8");
        let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
        let head = 3 + CONFIG.split('\n').count();
        let i = head + line % (lines.len() - head);
        let l = &mut lines[i];
        let c = col % (l.len() + 1);
        if b & 1 == 0 && c < l.len() {
            l[c] = b;
        } else {
            l.insert(c, b);
        }
        let mut t = lines.join(&b'\n');
        t.push(b'\n');
        let _ = replay_lines(&t);
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(usize, usize, u8) -> TestResult);
}

#[test]
fn recorder_time_is_relative_to_start() {
    let t0 = Instant::now();
    let mut r = Recorder::start(t0, "", 0);
    r.timeout(t0 + Duration::new(3, 5));
    // A time before the start (another thread's clock read) is 0.
    r.shutdown(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0));
    let text = String::from_utf8(r.take()).expect("utf-8");
    assert!(
        text.ends_with("3.000000005 timeout\n0.000000000 shutdown\n"),
        "{text}"
    );
    assert_eq!(r.records(), 2);
    assert!(r.take().is_empty());
}

/// A format-1 trace (no attempt numbers: one connect at a time) still
/// decodes; its connect answers mean the connection's latest attempt. A
/// format-2 trace must carry the number.
#[test]
fn format_1_connect_answers_mean_the_latest_attempt() {
    let v1 = b"portico-trace 1\nseed 1\nconfig 1\n|\n\
        0.000000001 connected 0.1 127.0.0.1:5000\n\
        0.000000002 connect-failed 0.2 refused\n";
    let (_, records) = decode(v1).unwrap_or_else(|e| panic!("{e}"));
    let events: Vec<&Event> = records
        .iter()
        .filter_map(|r| match r {
            Record::Event { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            events[..],
            [
                Event::Connected {
                    attempt: crate::LATEST_ATTEMPT,
                    ..
                },
                Event::ConnectFailed {
                    attempt: crate::LATEST_ATTEMPT,
                    error: IoKind::Refused,
                    ..
                }
            ]
        ),
        "{events:?}"
    );
    let v2 = b"portico-trace 2\nseed 1\nconfig 1\n|\n0.000000001 connected 0.1 127.0.0.1:5000\n";
    assert!(matches!(err_of(v2), TraceError::Corrupt { line: 5, .. }));
}
