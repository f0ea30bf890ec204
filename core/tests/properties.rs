//! Properties (quickcheck), run from a fixed seed so that they are
//! deterministic: `PORTICO_QC_SEED=N` picks another, `QUICKCHECK_TESTS=N`
//! runs more cases.
//!
//! - For any bytes each way and any chopping of the reads and writes, what
//!   enters one side of a mapped port leaves the other unchanged and in
//!   order, half-closes are carried across, and the access record counts
//!   every byte (a simulation whose choices quickcheck gives).
//! - For any sequence of events (the decoder the `event_sequence` fuzz
//!   target uses, `portico_core::sim::fuzz::event_sequence`), the table never
//!   panics, never exceeds its limits, keeps its timers and buffers bounded,
//!   and ends empty with no timer left once every peer is gone.

use std::sync::Mutex;

use portico_core::sim::{script, Dial, Dice, Given, Op, Server, Sim};
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
    let c = portico_core::sim::parse(&text);
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

/// Relays `up` (client → server) and `down` (server → client) through one
/// mapped connection of a simulation that takes its choices from the
/// lists: each read into the core moves `reads[i] + 1` bytes, each write
/// out of it `writes[i] + 1` (at most what is there and what the buffer
/// lends), and `order` picks which ready operation runs next — the
/// upstream's connect among them: any chopping, any order.
fn relay(
    Data(up): Data,
    Data(down): Data,
    Halving(reads): Halving<u16>,
    Halving(writes): Halving<u16>,
    Halving(order): Halving<u8>,
    buffer_kib: u8,
) -> TestResult {
    let buffer = 1024 * (1 + buffer_kib as usize % 4);
    let dice = Dice::Given(Given::new(order, reads, writes));
    let mut sim = Sim::with_dice("relay", 1, config(buffer), dice);
    sim.read_blocked = false;
    let server = script(vec![Op::Send(down.clone()), Op::Shut]);
    let client = script(vec![Op::Send(up.clone()), Op::Shut]);
    let to = "127.0.0.1:8000".parse().expect("an address");
    let i = sim.dial(Dial::new(to, client).server(Server::Accept(server)));
    sim.run();
    let (c, s) = (sim.client_of(i), sim.server_of(i).expect("a server"));
    if sim.conns[i].closed_at.is_none() {
        return TestResult::error(format!(
            "stuck: client got {}/{}, server got {}/{}",
            c.received.len(),
            down.len(),
            s.received.len(),
            up.len()
        ));
    }
    // Every read, write and splice moves a byte at least, or tells an EOF.
    let bound = 2 * (up.len() + down.len()) as u64 + 64;
    if sim.io_steps > bound {
        return TestResult::error(format!("{} steps, more than {bound}", sim.io_steps));
    }
    let rec = sim.record_of(i).expect("an access record");
    let rt = &sim.rt;
    let ok = s.received == up
        && c.received == down
        && c.received_eof
        && s.received_eof
        && rec.status == "ok"
        && rec.up == up.len() as u64
        && rec.down == down.len() as u64
        && rt.is_empty()
        && rt.buffers_in_use() == 0
        && rt.timer_entries() == 0
        && rt.deadline().is_none();
    if !ok {
        return TestResult::error(format!(
            "server got {} of {} bytes (equal: {}), client got {} of {} (equal: {}), \
             shut {}/{}, record {rec:?}, {} buffers, {} timers",
            s.received.len(),
            up.len(),
            s.received == up,
            c.received.len(),
            down.len(),
            c.received == down,
            c.received_eof,
            s.received_eof,
            rt.buffers_in_use(),
            rt.timer_entries()
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
        portico_core::sim::fuzz::event_sequence(&data);
        true
    }
    qc(2000, 1500).quickcheck(prop as fn(Vec<u8>) -> bool);
}
