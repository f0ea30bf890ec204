//! Properties (quickcheck), run from a fixed seed so that they are
//! deterministic: `PORTICO_QC_SEED=N` picks another, `QUICKCHECK_TESTS=N`
//! runs more cases.
//!
//! - For any bytes each way and any chopping of the reads and writes, what
//!   enters one side of a mapped port leaves the other unchanged and in
//!   order, half-closes are carried across, and the access record counts
//!   every byte.
//! - For any sequence of events (the decoder the `event_sequence` fuzz
//!   target uses, `portico_core::fuzzing::event_sequence`), the table never
//!   panics, never exceeds its limits, keeps its timers and buffers bounded,
//!   and ends empty with no timer left once every peer is gone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portico_core::{Action, Event, Proxy, Side};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

fn seed() -> u64 {
    std::env::var("PORTICO_QC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d)
}

fn tests(default: u64) -> u64 {
    std::env::var("QUICKCHECK_TESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn qc(size: usize, n: u64) -> QuickCheck {
    QuickCheck::new()
        .rng(Gen::from_size_and_seed(size, seed()))
        .tests(tests(n))
        .max_tests(tests(n) * 10)
}

/// A mapped port with `buffer` bytes per direction (parsed once per size:
/// parsing is most of a small case's time in a debug build).
fn config(buffer: usize) -> portico_core::Config {
    static CACHE: Mutex<Vec<(usize, portico_core::Config)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = cache.iter().find(|(b, _)| *b == buffer) {
        return c.clone();
    }
    let text = format!(
        "[limits]\nbuffer = {buffer}\n\n[[service]]\nname = \"m\"\nkind = \"mapped\"\n\
         listen = [\"127.0.0.1:8000\"]\ndestination = \"127.0.0.1:9000\"\n"
    );
    let c = portico_core::config::parse(&text, "prop.toml").expect("valid configuration");
    cache.push((buffer, c.clone()));
    c
}

/// Payload bytes: up to three buffers' worth (so that buffers fill, wrap
/// and push back). Shrinks by halves only: the values of the bytes never
/// matter to a relay, and per-byte shrinking of kilobytes is slow.
#[derive(Clone, Debug)]
struct Data(Vec<u8>);

impl Arbitrary for Data {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = usize::arbitrary(g) % (3 * 4096 + 1);
        Data((0..n).map(|_| u8::arbitrary(g)).collect())
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let v = &self.0;
        let half = v.len() / 2;
        let mut out = Vec::new();
        // Every candidate is strictly shorter, so shrinking ends.
        if !v.is_empty() {
            out.push(Data(Vec::new()));
        }
        if v.len() >= 2 {
            out.push(Data(v[..half].to_vec()));
            out.push(Data(v[half..].to_vec()));
        }
        Box::new(out.into_iter())
    }
}

/// A vector that shrinks by halves only (quickcheck's default shrinks every
/// element in turn: far too slow over relays of kilobytes).
#[derive(Clone, Debug)]
struct Halving<T>(Vec<T>);

impl<T: Arbitrary> Arbitrary for Halving<T> {
    fn arbitrary(g: &mut Gen) -> Self {
        Halving(Vec::arbitrary(g))
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        let v = &self.0;
        let half = v.len() / 2;
        let mut out = Vec::new();
        // Every candidate is strictly shorter, so shrinking ends.
        if !v.is_empty() {
            out.push(Halving(Vec::new()));
        }
        if v.len() >= 2 {
            out.push(Halving(v[..half].to_vec()));
            out.push(Halving(v[half..].to_vec()));
        }
        Box::new(out.into_iter())
    }
}

/// One socket of the connection, as the hand-written runtime below sees it.
#[derive(Default)]
struct Sock {
    /// Bytes its peer sent that the proxy has not read yet.
    pending: VecDeque<u8>,
    /// The peer shut its write half after `pending`; told to the core yet?
    eof_told: bool,
    /// What the proxy wrote to the peer.
    got: Vec<u8>,
    /// The proxy shut its write half toward the peer.
    shut: bool,
    interest: (bool, bool),
}

fn side_ix(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

/// Relays `up` (client → server) and `down` (server → client) through one
/// mapped connection. Each read moves `reads[i] + 1` bytes (at most what
/// is there and what the buffer lends), each write `writes[i] + 1`, and
/// `order` picks which socket is served next: any chopping, any order.
fn relay(
    Data(up): Data,
    Data(down): Data,
    Halving(reads): Halving<u16>,
    Halving(writes): Halving<u16>,
    Halving(order): Halving<u8>,
    buffer_kib: u8,
) -> TestResult {
    let buffer = 1024 * (1 + buffer_kib as usize % 4);
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = Proxy::new(config(buffer), 1, now);
    let mut actions = Vec::new();
    while let Some(a) = p.poll_action() {
        if let Action::Listen { listener, addr } = a {
            p.handle(
                Event::Listening {
                    listener,
                    local: addr,
                },
                now,
            );
        }
    }
    let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let conn = p
        .accept(portico_core::ListenerId(0), peer, now)
        .expect("accepted");
    let mut socks = [Sock::default(), Sock::default()];
    socks[0].pending = up.iter().copied().collect();
    socks[1].pending = down.iter().copied().collect();
    let mut connected = false;
    let mut closed = false;
    let mut record = None;
    let (mut r, mut w, mut o) = (0usize, 0usize, 0usize);
    let connect_at = order.first().map_or(0, |b| (b % 16) as usize);
    let pick = |v: &[u16], i: &mut usize| -> usize {
        let x = if v.is_empty() {
            usize::MAX
        } else {
            v[*i % v.len()] as usize + 1
        };
        *i += 1;
        x
    };
    // Every step moves at least one byte or tells one EOF.
    let steps = 2 * (up.len() + down.len()) + 64;
    for _ in 0..steps {
        // Carry out what the core asked for.
        while let Some(a) = p.poll_action() {
            match a {
                Action::Connect { conn: c, .. } => {
                    assert_eq!(c, conn);
                    actions.push("connect");
                }
                Action::Interest {
                    conn: c,
                    side,
                    read,
                    write,
                } => {
                    assert_eq!(c, conn);
                    socks[side_ix(side)].interest = (read, write);
                }
                Action::ShutdownWrite { conn: c, side } => {
                    assert_eq!(c, conn);
                    let s = &mut socks[side_ix(side)];
                    assert!(!s.shut, "shut twice");
                    s.shut = true;
                }
                Action::Close { conn: c } => {
                    assert_eq!(c, conn);
                    // Closing sends the FIN of a side not shut yet.
                    for s in socks.iter_mut() {
                        s.shut = true;
                    }
                    closed = true;
                }
                Action::Access(rec) => record = Some(rec),
                _ => {}
            }
        }
        if closed {
            break;
        }
        if !connected && actions.contains(&"connect") && o >= connect_at {
            // The upstream connects at some point among the client's reads.
            connected = true;
            let local = "127.0.0.1:40000".parse().unwrap();
            p.handle(Event::Connected { conn, local }, now);
            continue;
        }
        // Every operation possible now: (socket, is_write).
        let mut possible = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            if s.interest.0 && (!s.pending.is_empty() || !s.eof_told) {
                possible.push((i, false));
            }
            if s.interest.1 {
                possible.push((i, true));
            }
        }
        if possible.is_empty() {
            if !connected && actions.contains(&"connect") {
                connected = true;
                let local = "127.0.0.1:40000".parse().unwrap();
                p.handle(Event::Connected { conn, local }, now);
                continue;
            }
            return TestResult::error(format!(
                "stuck: client got {}/{}, server got {}/{}",
                socks[0].got.len(),
                down.len(),
                socks[1].got.len(),
                up.len()
            ));
        }
        let choice = if order.is_empty() {
            0
        } else {
            order[o % order.len()] as usize
        };
        o += 1;
        let (i, write) = possible[choice % possible.len()];
        let side = if i == 0 { Side::Client } else { Side::Upstream };
        now += Duration::from_micros(choice as u64);
        if write {
            let n = {
                let data = p
                    .send_buf(conn, side)
                    .expect("write wanted, nothing to write");
                let n = pick(&writes, &mut w).min(data.len());
                socks[i].got.extend_from_slice(&data[..n]);
                n
            };
            p.handle(Event::Written { conn, side, n }, now);
        } else if socks[i].pending.is_empty() {
            socks[i].eof_told = true;
            p.handle(Event::Eof { conn, side }, now);
        } else {
            let want = pick(&reads, &mut r);
            let s = &mut socks[i];
            let buf = p.recv_buf(conn, side).expect("read wanted, no buffer lent");
            let n = want.min(buf.len()).min(s.pending.len());
            for (d, b) in buf.iter_mut().zip(s.pending.drain(..n)) {
                *d = b;
            }
            p.handle(Event::Read { conn, side, n }, now);
        }
    }
    if !closed {
        return TestResult::error("never closed");
    }
    let rec = record.expect("an access record");
    let ok = socks[1].got == up
        && socks[0].got == down
        && socks[0].shut
        && socks[1].shut
        && rec.status == "ok"
        && rec.up == up.len() as u64
        && rec.down == down.len() as u64
        && p.is_empty()
        && p.buffers_in_use() == 0
        && p.timer_entries() == 0
        && p.poll_timeout().is_none();
    if !ok {
        return TestResult::error(format!(
            "server got {} of {} bytes (equal: {}), client got {} of {} (equal: {}), \
             shut {}/{}, record {rec:?}, {} buffers, {} timers",
            socks[1].got.len(),
            up.len(),
            socks[1].got == up,
            socks[0].got.len(),
            down.len(),
            socks[0].got == down,
            socks[0].shut,
            socks[1].shut,
            p.buffers_in_use(),
            p.timer_entries()
        ));
    }
    TestResult::passed()
}

#[test]
fn relay_is_lossless_for_any_chopping() {
    qc(100, 300).quickcheck(
        relay as fn(Data, Data, Halving<u16>, Halving<u16>, Halving<u8>, u8) -> TestResult,
    );
}

#[test]
fn relay_is_lossless_for_tiny_chops() {
    // Small vectors of small numbers: one- and two-byte reads and writes.
    fn tiny(
        up: Data,
        down: Data,
        Halving(reads): Halving<bool>,
        Halving(writes): Halving<bool>,
        order: Halving<u8>,
    ) -> TestResult {
        let reads = Halving(reads.into_iter().map(u16::from).collect());
        let writes = Halving(writes.into_iter().map(u16::from).collect());
        relay(up, down, reads, writes, order, 0)
    }
    qc(100, 100).quickcheck(
        tiny as fn(Data, Data, Halving<bool>, Halving<bool>, Halving<u8>) -> TestResult,
    );
}

#[test]
fn any_event_sequence_keeps_the_invariants() {
    // The decoder and the checks are the event_sequence fuzz target's.
    fn prop(data: Vec<u8>) -> bool {
        portico_core::fuzzing::event_sequence(&data);
        true
    }
    qc(2000, 1500).quickcheck(prop as fn(Vec<u8>) -> bool);
}
