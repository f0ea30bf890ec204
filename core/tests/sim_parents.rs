//! Deterministic simulations of connections through parent proxies
//! (`[[parent]]`, `via`): scripted parents (HTTP CONNECT, SOCKS5, SOCKS4a)
//! in the shared harness (`portico_core::sim`), seeded chopping of every
//! read and write, simulated time.
//!
//! - `socks_through_each_parent_kind`: a SOCKS5 client's CONNECT to a name
//!   goes through an http (with Basic credentials), socks5 (with RFC 1929)
//!   or socks4a parent; the name reaches the parent unresolved (the
//!   simulated resolver knows no name at all), payload both ways exactly,
//!   the access record names the parent as peer and `via`.
//! - `failover_marks_down_and_retries`: the first address is dead; the
//!   connection goes to the second, the next connection skips the dead one,
//!   and after `retry_after` it is tried again.
//! - `parent_refusals_in_each_protocol`: a parent that says no: SOCKS5 gets
//!   the SOCKS5 parent's own code (or 0x01), SOCKS4 0x5B, with
//!   `err=parent-failed`.
//! - `plain_http_through_an_http_parent`: plain requests go to an http
//!   parent in absolute form with `Proxy-Authorization`, two over one
//!   kept-alive connection; a 407 for Portico's credentials is a 502.
//! - `silent_parents_time_out_and_the_next_serves`: a connect that hangs
//!   (`connect_timeout`) and a parent that never answers
//!   (`handshake_timeout`) each count a timeout and are marked down.
//!
//! Replay a seed: `PORTICO_SIM_SEED=N cargo test -p portico-core --test
//! sim_parents NAME`.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use portico_core::sim::{find, replies, script, Behavior, Op, Rng, Sim};

const SEEDS: u64 = 60;
const SOCKS: u16 = 1080;
const PARENT: u16 = 3128;
const PARENT2: u16 = 3129;
/// Nothing listens here.
const DEAD: u16 = 3999;

fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn seeds(name: &str, f: impl Fn(u64)) {
    portico_core::sim::seeds("sim_parents", name, SEEDS, f);
}

fn world(name: &str, seed: u64, parents: &str) -> Sim {
    world_with(name, seed, parents, "")
}

/// [`world`] with more `[limits]` lines.
fn world_with(name: &str, seed: u64, parents: &str, limits: &str) -> Sim {
    let text = format!(
        "[network]\ninternal = [\"127.0.0.1\"]\n\
         [limits]\nbuffer = 4096\n{limits}\n\
         [log]\naccess = \"stderr\"\n\
         {parents}\n\
         [[service]]\nname = \"socks\"\nkind = \"socks\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n\
         via = \"up\"\n"
    );
    let mut sim = Sim::new(name, seed, portico_core::sim::parse(&text));
    sim.vary_chops();
    sim
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Socks5,
    Socks4,
}

/// What a scripted parent saw: the handshake bytes, up to the first
/// payload byte.
type Seen = Rc<RefCell<Vec<u8>>>;

/// A parent of `kind` that grants (or, `refuse`, refuses with its
/// protocol's no) and then echoes.
fn parent(kind: Kind, refuse: Option<u8>, seen: Seen) -> Box<dyn Behavior> {
    let all: fn(&[u8]) -> Option<usize> = |b| (!b.is_empty()).then_some(b.len());
    let mut buf: Vec<u8> = Vec::new();
    let mut stage = 0u8;
    replies(
        b"",
        all,
        Box::new(move |bytes, _| {
            if stage == 9 {
                return (bytes.to_vec(), false);
            }
            buf.extend_from_slice(bytes);
            seen.borrow_mut().extend_from_slice(bytes);
            let mut out = Vec::new();
            loop {
                match (kind, stage) {
                    (Kind::Http, 0) => {
                        let Some(i) = find(&buf, b"\r\n\r\n") else {
                            break;
                        };
                        buf.drain(..i + 4);
                        if refuse.is_some() {
                            out.extend_from_slice(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
                            return (out, true);
                        }
                        out.extend_from_slice(b"HTTP/1.1 200 Connection established\r\n\r\n");
                        stage = 9;
                    }
                    (Kind::Socks5, 0) => {
                        if buf.len() < 2 || buf.len() < 2 + usize::from(buf[1]) {
                            break;
                        }
                        let n = 2 + usize::from(buf[1]);
                        buf.drain(..n);
                        out.extend_from_slice(&[5, 2]);
                        stage = 1;
                    }
                    (Kind::Socks5, 1) => {
                        // RFC 1929: ver, ulen, user, plen, password.
                        let Some(&ul) = buf.get(1) else { break };
                        let Some(&pl) = buf.get(2 + usize::from(ul)) else {
                            break;
                        };
                        let n = 3 + usize::from(ul) + usize::from(pl);
                        if buf.len() < n {
                            break;
                        }
                        buf.drain(..n);
                        out.extend_from_slice(&[1, 0]);
                        stage = 2;
                    }
                    (Kind::Socks5, 2) => {
                        let Some(&len) = buf.get(4) else { break };
                        let n = 5 + usize::from(len) + 2;
                        if buf.len() < n {
                            break;
                        }
                        buf.drain(..n);
                        if let Some(code) = refuse {
                            out.extend_from_slice(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
                            return (out, true);
                        }
                        out.extend_from_slice(&[5, 0, 0, 1, 10, 9, 8, 7, 0, 99]);
                        stage = 9;
                    }
                    (Kind::Socks4, 0) => {
                        // VN CD PORT IP USERID\0 HOST\0
                        let Some(z1) = buf.iter().skip(8).position(|b| *b == 0) else {
                            break;
                        };
                        let Some(z2) = buf.iter().skip(9 + z1).position(|b| *b == 0) else {
                            break;
                        };
                        buf.drain(..9 + z1 + z2 + 1);
                        if refuse.is_some() {
                            out.extend_from_slice(&[0, 0x5B, 0, 0, 0, 0, 0, 0]);
                            return (out, true);
                        }
                        out.extend_from_slice(&[0, 0x5A, 0, 0, 0, 0, 0, 0]);
                        stage = 9;
                    }
                    _ => break,
                }
            }
            if stage == 9 {
                // Payload that came with the handshake's last step.
                out.append(&mut buf);
            }
            (out, false)
        }),
    )
}

/// A SOCKS5 (no auth) CONNECT to `example.test:443`, then `payload`,
/// expecting it echoed; or, when `refused`, a reply with that code.
fn socks5_client(payload: &[u8], refused: Option<u8>) -> Box<dyn Behavior> {
    let mut hello = vec![5, 1, 0, 5, 1, 0, 3, 12];
    hello.extend_from_slice(b"example.test");
    hello.extend_from_slice(&443u16.to_be_bytes());
    let mut ops = vec![Op::Send(hello), Op::AwaitLen(12)];
    if refused.is_none() {
        ops.push(Op::Send(payload.to_vec()));
        ops.push(Op::AwaitLen(12 + payload.len()));
    }
    ops.push(Op::Shut);
    ops.push(Op::AwaitEof);
    script(ops)
}

fn parents_toml(kind: Kind, addresses: &[u16], extra: &str) -> String {
    let kind_word = match kind {
        Kind::Http => "http",
        Kind::Socks5 => "socks5",
        Kind::Socks4 => "socks4",
    };
    let creds = match kind {
        Kind::Socks4 => "user = \"gw\"\n",
        _ => "user = \"gw\"\npassword = \"pw\"\n",
    };
    let list: Vec<String> = addresses
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        "[[parent]]\nname = \"up\"\nkind = \"{kind_word}\"\naddresses = [{}]\n{creds}{extra}",
        list.join(", ")
    )
}

#[test]
fn socks_through_each_parent_kind() {
    seeds("socks_through_each_parent_kind", |seed| {
        let mut rng = Rng::new(seed);
        let kind = rng.pick(&[Kind::Http, Kind::Socks5, Kind::Socks4]);
        let mut sim = world("through", seed, &parents_toml(kind, &[PARENT], ""));
        let seen: Seen = Rc::default();
        let s = seen.clone();
        sim.server(local(PARENT), move || parent(kind, None, s.clone()));
        let n = rng.range(1, 3000);
        let payload = rng.bytes(n);
        let c = sim.client(local(SOCKS), Duration::ZERO, socks5_client(&payload, None));
        sim.run();
        let client = sim.client_of(c);
        assert_eq!(
            client.received.get(..2),
            Some(&[5u8, 0][..]),
            "{kind:?}: method"
        );
        assert_eq!(
            client.received.get(2..4),
            Some(&[5u8, 0][..]),
            "{kind:?}: granted"
        );
        assert_eq!(
            &client.received[12..],
            &payload[..],
            "{kind:?}: payload echoed"
        );
        let seen = seen.borrow();
        let asked = match kind {
            Kind::Http => find(
                &seen,
                b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\
                  Proxy-Authorization: Basic Z3c6cHc=\r\n\r\n",
            ),
            Kind::Socks5 => find(
                &seen,
                b"\x05\x02\x00\x02\x01\x02gw\x02pw\x05\x01\x00\x03\x0cexample.test\x01\xbb",
            ),
            Kind::Socks4 => find(
                &seen,
                b"\x04\x01\x01\xbb\x00\x00\x00\x01gw\x00example.test\x00",
            ),
        };
        assert_eq!(
            asked,
            Some(0),
            "{kind:?}: the parent was asked {:?}",
            String::from_utf8_lossy(&seen)
        );
        let rec = sim.record_of(c).expect("an access record");
        assert_eq!(rec.via.as_deref(), Some("up"));
        assert_eq!(rec.destination, Some(local(PARENT)));
        assert_eq!(rec.status, "ok");
        assert_eq!(rec.error, None);
        sim.rt.assert_empty();
        sim.assert_quiet();
    });
}

#[test]
fn failover_marks_down_and_retries() {
    seeds("failover_marks_down_and_retries", |seed| {
        let extra = "down_after = 1\nretry_after = \"30s\"\n";
        let mut sim = world(
            "failover",
            seed,
            &parents_toml(Kind::Http, &[DEAD, PARENT2], extra),
        );
        sim.server(local(PARENT2), move || {
            parent(Kind::Http, None, Rc::default())
        });
        let first = sim.client(local(SOCKS), Duration::ZERO, socks5_client(b"one", None));
        sim.run();
        assert_eq!(sim.connects_of(first), [local(DEAD), local(PARENT2)]);
        assert_eq!(sim.client_of(first).received[12..], *b"one");
        // The dead address is down now: the next connection goes straight on.
        let second = sim.client(local(SOCKS), Duration::ZERO, socks5_client(b"two", None));
        sim.run();
        assert_eq!(sim.connects_of(second), [local(PARENT2)]);
        let metrics = portico_core::sim::metrics(&sim.rt.snapshot());
        assert!(
            metrics.contains(&format!(
                "portico_parent_up{{parent=\"up\",address=\"127.0.0.1:{DEAD}\"}} 0"
            )),
            "{metrics}"
        );
        assert!(metrics.contains(&format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"127.0.0.1:{DEAD}\",result=\"refused\"}} 1"
        )));
        assert!(metrics.contains(&format!(
            "portico_parent_connects_total{{parent=\"up\",address=\"127.0.0.1:{PARENT2}\",result=\"ok\"}} 2"
        )));
        // After retry_after it is tried again.
        sim.run_for(Duration::from_secs(31));
        let third = sim.client(local(SOCKS), Duration::ZERO, socks5_client(b"three", None));
        sim.run();
        assert_eq!(sim.connects_of(third), [local(DEAD), local(PARENT2)]);
        sim.rt.assert_empty();
        sim.assert_quiet();
    });
}

#[test]
fn parent_refusals_in_each_protocol() {
    seeds("parent_refusals_in_each_protocol", |seed| {
        let mut rng = Rng::new(seed);
        let kind = rng.pick(&[Kind::Http, Kind::Socks5, Kind::Socks4]);
        let code = rng.pick(&[2u8, 4, 5]);
        let mut sim = world("refusals", seed, &parents_toml(kind, &[PARENT], ""));
        sim.server(local(PARENT), move || {
            parent(kind, Some(code), Rc::default())
        });
        let want = match kind {
            Kind::Socks5 => code,
            _ => 1,
        };
        let c = sim.client(local(SOCKS), Duration::ZERO, socks5_client(b"", Some(want)));
        sim.run();
        let got = &sim.client_of(c).received;
        assert_eq!(got.get(2..4), Some(&[5u8, want][..]), "{kind:?}: {got:?}");
        let rec = sim.record_of(c).expect("an access record");
        assert_eq!(
            rec.error.map(|e| e.to_string()).as_deref(),
            Some("parent-failed")
        );
        assert_eq!(rec.via.as_deref(), Some("up"));
        sim.rt.assert_empty();
        sim.assert_quiet();

        // A SOCKS4 client is told 0x5B.
        let mut sim = world("refusals4", seed, &parents_toml(kind, &[PARENT], ""));
        sim.server(local(PARENT), move || {
            parent(kind, Some(code), Rc::default())
        });
        let mut hello = vec![4, 1, 1, 187, 0, 0, 0, 1, 0];
        hello.extend_from_slice(b"example.test\0");
        let c = sim.client(
            local(SOCKS),
            Duration::ZERO,
            script(vec![Op::Send(hello), Op::AwaitLen(8), Op::AwaitEof]),
        );
        sim.run();
        assert_eq!(sim.client_of(c).received.get(..2), Some(&[0u8, 0x5B][..]));
    });
}

/// An http parent answering each request head with `answer`, recording
/// the heads.
fn http_parent(answer: &'static [u8], seen: Seen) -> Box<dyn Behavior> {
    let heads: fn(&[u8]) -> Option<usize> = |b| find(b, b"\r\n\r\n").map(|i| i + 4);
    replies(
        b"",
        heads,
        Box::new(move |head, _| {
            seen.borrow_mut().extend_from_slice(head);
            (answer.to_vec(), false)
        }),
    )
}

/// Plain requests through an http parent: absolute form with the
/// parent's credentials, two over one kept-alive connection; a 407 from
/// the parent for Portico's own credentials is a 502 parent-failed.
#[test]
fn plain_http_through_an_http_parent() {
    seeds("plain_http_through_an_http_parent", |seed| {
        let text = format!(
            "[network]\ninternal = [\"127.0.0.1\"]\n[log]\naccess = \"stderr\"\n\
             {}\n[[service]]\nname = \"web\"\nkind = \"http\"\nlisten = [\"127.0.0.1:{SOCKS}\"]\n\
             via = \"up\"\n",
            parents_toml(Kind::Http, &[PARENT], "")
        );
        let mut sim = Sim::new("plain", seed, portico_core::sim::parse(&text));
        sim.vary_chops();
        let seen: Seen = Rc::default();
        let s = seen.clone();
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        sim.server(local(PARENT), move || http_parent(ok, s.clone()));
        let req = |path: &str| {
            format!("GET http://example.test/{path} HTTP/1.1\r\nHost: example.test\r\n\r\n")
                .into_bytes()
        };
        let c = sim.client(
            local(SOCKS),
            Duration::ZERO,
            script(vec![
                Op::Send(req("a")),
                Op::Await(b"\r\n\r\nok".to_vec()),
                Op::Send(req("b")),
                Op::Await(b"\r\n\r\nok".to_vec()),
                Op::Shut,
                Op::AwaitEof,
            ]),
        );
        sim.run();
        let seen = String::from_utf8_lossy(&seen.borrow()).into_owned();
        for path in ["a", "b"] {
            let want = format!(
                "GET http://example.test/{path} HTTP/1.1\r\n\
                 Proxy-Authorization: Basic Z3c6cHc=\r\nHost: example.test\r\n"
            );
            assert!(seen.contains(&want), "the parent saw {seen:?}");
        }
        assert_eq!(
            sim.connects_of(c),
            [local(PARENT)],
            "one kept-alive connection"
        );
        let recs = sim.access_of(sim.client_of(c).addr);
        assert_eq!(recs.len(), 2, "{recs:?}");
        for r in recs {
            assert_eq!((r.status.as_str(), r.via.as_deref()), ("200", Some("up")));
            assert_eq!(r.destination, Some(local(PARENT)));
        }
        sim.rt.assert_empty();
        sim.assert_quiet();

        // A 407 for the credentials Portico holds.
        let mut sim = Sim::new("plain407", seed, portico_core::sim::parse(&text));
        sim.vary_chops();
        let denied: &[u8] =
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n";
        sim.server(local(PARENT), move || http_parent(denied, Rc::default()));
        let c = sim.client(
            local(SOCKS),
            Duration::ZERO,
            script(vec![
                Op::Send(req("a")),
                Op::Await(b"\r\n\r\n".to_vec()),
                Op::Shut,
                Op::AwaitEof,
            ]),
        );
        sim.run();
        let got = String::from_utf8_lossy(&sim.client_of(c).received).into_owned();
        assert!(
            got.starts_with("HTTP/1.1 502") && got.contains("Portico-Error: parent-failed"),
            "{got:?}"
        );
        let r = sim.record_of(c).expect("an access record");
        assert_eq!(
            r.error.map(|e| e.to_string()).as_deref(),
            Some("parent-failed")
        );
        sim.rt.assert_empty();
        sim.assert_quiet();
    });
}

/// A parent address whose connect hangs (connect_timeout) and one that
/// accepts and never answers (handshake_timeout) each cost one timeout and
/// are marked down; the third address serves.
#[test]
fn silent_parents_time_out_and_the_next_serves() {
    seeds("silent_parents_time_out_and_the_next_serves", |seed| {
        const HOLE: u16 = 3777;
        let extra = "down_after = 1\n";
        let text = parents_toml(Kind::Socks5, &[HOLE, PARENT, PARENT2], extra);
        let limits = "connect_timeout = \"2s\"\nhandshake_timeout = \"3s\"";
        let mut sim = world_with("silent", seed, &text, limits);
        sim.net.blackholes.insert(local(HOLE));
        sim.server(local(PARENT), || script(vec![Op::AwaitEof]));
        sim.server(local(PARENT2), || parent(Kind::Socks5, None, Rc::default()));
        let c = sim.client(local(SOCKS), Duration::ZERO, socks5_client(b"late", None));
        sim.run();
        assert_eq!(
            sim.connects_of(c),
            [local(HOLE), local(PARENT), local(PARENT2)]
        );
        assert_eq!(sim.client_of(c).received[12..], *b"late");
        let metrics = portico_core::sim::metrics(&sim.rt.snapshot());
        for port in [HOLE, PARENT] {
            for want in [
                format!("portico_parent_up{{parent=\"up\",address=\"127.0.0.1:{port}\"}} 0"),
                format!(
                    "portico_parent_connects_total{{parent=\"up\",address=\"127.0.0.1:{port}\",\
                     result=\"timeout\"}} 1"
                ),
            ] {
                assert!(metrics.contains(&want), "{want}:\n{metrics}");
            }
        }
        sim.rt.assert_empty();
        sim.assert_quiet();
    });
}
