//! Deterministic simulations of mapped ports: the core relays between
//! in-memory clients and servers under a seeded scheduler (see
//! `portico_core::sim`).
//!
//! Every test runs many seeds; a failure prints the seed and the last steps,
//! and `PORTICO_SIM_SEED=N cargo test -p portico-core --test sim_relay NAME`
//! replays it (`PORTICO_SIM_SEEDS=10000` runs more seeds).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use portico_core::sim::{script, Dial, Op, Rng, Server, Sim};
use portico_core::{IoKind, Refused, Side};

/// How many seeds a simulation test runs by default (`PORTICO_SIM_SEEDS`
/// overrides it).
const SEEDS: u64 = 300;
const MS: Duration = Duration::from_millis(1);
/// The first mapped service listens here; service `i` on `LISTEN_PORT + i`.
const LISTEN_PORT: u16 = 8000;
/// Service `i` forwards to `DEST_PORT + i` on 127.0.0.1.
const DEST_PORT: u16 = 9000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn seeds(name: &str, f: impl Fn(u64)) {
    portico_core::sim::seeds("sim_relay", name, SEEDS, f);
}

fn listen(service: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        LISTEN_PORT + service as u16,
    )
}

fn dest(service: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEST_PORT + service as u16)
}

/// The service a client connects to.
fn service(sim: &Sim, i: usize) -> usize {
    (sim.conns[i].to.port() - LISTEN_PORT) as usize
}

#[derive(Debug, Clone)]
struct Limits {
    max_connections: u32,
    max_per_client: u32,
    connect_timeout: Duration,
    idle_timeout: Duration,
    shutdown_grace: Duration,
    buffer: usize,
    /// Mapped services (each on its own port and destination).
    services: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            max_per_client: 1000,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
            buffer: 4096,
            services: 1,
        }
    }
}

impl Limits {
    /// The configuration file these limits describe.
    fn toml(&self) -> String {
        let mut t = format!(
            "[limits]\nmax_connections = {}\nmax_per_client = {}\nconnect_timeout = \"{}ms\"\n\
             idle_timeout = \"{}ms\"\nshutdown_grace = \"{}ms\"\nbuffer = {}\n",
            self.max_connections,
            self.max_per_client,
            self.connect_timeout.as_millis(),
            self.idle_timeout.as_millis(),
            self.shutdown_grace.as_millis(),
            self.buffer,
        );
        for i in 0..self.services {
            t.push_str(&format!(
                "\n[[service]]\nname = \"map{i}\"\nkind = \"mapped\"\n\
                 listen = [\"{}\"]\ndestination = \"{}\"\n",
                listen(i),
                dest(i),
            ));
        }
        t
    }
}

/// A proxy over `limits`, its listeners open.
fn relay(seed: u64, limits: &Limits) -> Sim {
    let sim = Sim::new("relay", seed, portico_core::sim::parse(&limits.toml()));
    assert_eq!(
        sim.rt.listeners().len(),
        limits.services,
        "seed {seed}: one Listen per service"
    );
    sim
}

/// The limits the table runs with (the configuration counts in
/// milliseconds).
fn limits(sim: &Sim) -> &portico_core::config::Limits {
    &sim.rt.config().limits
}

/// A client of service 0 playing `script`, whose server answers as `server`.
fn client(ops: Vec<Op>, server: Server) -> Dial {
    Dial::new(listen(0), script(ops)).server(server)
}

/// A server that accepts and plays `ops`.
fn accepts(ops: Vec<Op>) -> Server {
    Server::Accept(script(ops))
}

/// Sends `data` in a few pieces with short pauses, then shuts (when `shut`).
fn sends(rng: &mut Rng, data: &[u8], shut: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let k = rng.range(1, rest.len());
        ops.push(Op::Send(rest[..k].to_vec()));
        rest = &rest[k..];
        if rng.chance(1, 3) {
            ops.push(Op::Pause(
                rng.duration(Duration::from_micros(1), Duration::from_millis(20)),
            ));
        }
    }
    if shut {
        ops.push(Op::Shut);
    }
    ops
}

/// A size for one direction: empty, tiny, under one buffer, or several.
fn size(rng: &mut Rng, buffer: usize) -> usize {
    match rng.below(5) {
        0 => 0,
        1 => rng.range(1, 16),
        2 => rng.range(1, buffer),
        _ => rng.range(buffer, 3 * buffer),
    }
}

/// Random bytes of a random [`size`].
fn payload(rng: &mut Rng, buffer: usize) -> Vec<u8> {
    let n = size(rng, buffer);
    rng.bytes(n)
}

fn random_limits(rng: &mut Rng) -> Limits {
    Limits {
        buffer: [1024, 1500, 2048, 4096][rng.below(4)],
        services: rng.range(1, 2),
        ..Limits::default()
    }
}

/// Client and server scripts exchanging `up` and `down`, in one of three
/// shapes: both send at once; request then response; the client sends and
/// half-closes, the server answers only after that EOF.
fn exchange(rng: &mut Rng, up: &[u8], down: &[u8]) -> (Vec<Op>, Vec<Op>) {
    match rng.below(3) {
        0 => (sends(rng, up, true), sends(rng, down, true)),
        1 => {
            let mut c = sends(rng, up, false);
            c.push(Op::AwaitLen(down.len()));
            c.push(Op::Shut);
            let mut s = vec![Op::AwaitLen(up.len())];
            s.extend(sends(rng, down, false));
            s.push(Op::AwaitEof);
            s.push(Op::Shut);
            (c, s)
        }
        _ => {
            let c = sends(rng, up, true);
            let mut s = vec![Op::AwaitEof];
            s.extend(sends(rng, down, true));
            (c, s)
        }
    }
}

/// The server of connection `i`'s bytes, or none.
fn server_bytes(sim: &Sim, i: usize) -> (&[u8], &[u8]) {
    match sim.server_of(i) {
        Some(s) => (&s.received, &s.script_bytes),
        None => (&[], &[]),
    }
}

/// Every connection completed normally, each way unchanged and in order.
fn assert_all_ok(sim: &Sim) {
    let seed = sim.seed;
    for i in 0..sim.conns.len() {
        let (c, s) = (sim.client_of(i), sim.server_of(i).expect("a server"));
        assert_eq!(sim.status(i), Some("ok"), "seed {seed}: status of {i}");
        assert!(
            s.received == c.script_bytes,
            "seed {seed}: connection {i}: the server got {} of {} bytes, or other bytes",
            s.received.len(),
            c.script_bytes.len()
        );
        assert!(
            c.received == s.script_bytes,
            "seed {seed}: connection {i}: the client got {} of {} bytes, or other bytes",
            c.received.len(),
            s.script_bytes.len()
        );
        assert!(
            s.received_eof && c.received_eof,
            "seed {seed}: connection {i}: EOF not carried across"
        );
        let a = sim.record_of(i).expect("an access record");
        assert_eq!(
            (a.up, a.down),
            (c.script_bytes.len() as u64, s.script_bytes.len() as u64),
            "seed {seed}: byte counts of {i}"
        );
    }
}

/// Every connection ended, each with exactly one access record whose byte
/// counts are what its peers saw, and the core connected each accepted one
/// once, to its service's destination (resolving nothing, and never
/// closing an upstream alone).
fn assert_accounted(sim: &Sim) {
    let seed = sim.seed;
    assert!(
        sim.resolves.is_empty() && sim.upstream_closes.is_empty(),
        "seed {seed}: a mapped port resolved {:?} or closed upstreams {:?}",
        sim.resolves,
        sim.upstream_closes
    );
    for (i, c) in sim.conns.iter().enumerate() {
        let client = sim.client_of(i);
        let records = sim.access_of(client.addr);
        let accepted = !c.os_refused && c.refused.is_none();
        let want: Vec<SocketAddr> = accepted
            .then(|| dest(service(sim, i)))
            .into_iter()
            .collect();
        assert_eq!(sim.connects_of(i), want, "seed {seed}: connects of {i}");
        if c.os_refused {
            assert!(records.is_empty(), "seed {seed}: access record for {i}");
            continue;
        }
        assert!(c.done(), "seed {seed}: connection {i} still open");
        assert!(
            records.len() == 1,
            "seed {seed}: connection {i} ended with {} access records: {records:?}",
            records.len()
        );
        let a = records[0];
        assert_eq!(a.service.as_ref(), format!("map{}", service(sim, i)));
        assert_eq!(a.method, "TCP", "seed {seed}: method of {i}");
        assert_eq!(
            a.target,
            dest(service(sim, i)).to_string(),
            "seed {seed}: target of {i}"
        );
        if c.refused.is_some() {
            assert_eq!(
                (a.up, a.down, a.destination),
                (0, 0, None),
                "seed {seed}: a refused connection's record {a:?}"
            );
            continue;
        }
        assert_eq!(a.destination, Some(dest(service(sim, i))));
        // What was written toward each peer: what it read, plus what
        // still sits in its socket.
        let up = sim
            .server_of(i)
            .map_or(0, |s| s.received.len() + s.outbound.buf.len());
        let down = client.received.len() + client.outbound.buf.len();
        assert_eq!(
            (a.up, a.down),
            (up as u64, down as u64),
            "seed {seed}: byte counts of connection {i} ({})",
            a.status
        );
        let took = c.closed_at.unwrap_or_default() - c.accepted_at.unwrap_or_default();
        assert_eq!(a.duration, took, "seed {seed}: duration of connection {i}");
        // Whatever arrived, arrived unchanged and in order.
        let (server_got, server_sends) = server_bytes(sim, i);
        assert!(
            client.script_bytes.starts_with(server_got),
            "seed {seed}: connection {i}: the server received bytes the client did not \
             send (or out of order)"
        );
        assert!(
            server_sends.starts_with(&client.received),
            "seed {seed}: connection {i}: the client received bytes the server did not \
             send (or out of order)"
        );
    }
}

fn finish(sim: &Sim) {
    assert_accounted(sim);
    sim.rt.assert_empty();
    sim.assert_quiet();
}

#[test]
fn relay_both_ways() {
    let spliced = std::sync::atomic::AtomicU64::new(0);
    seeds("relay_both_ways", |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let (buffer, services) = (limits.buffer, limits.services);
        let mut sim = relay(seed, &limits);
        for k in 0..rng.range(1, 4) {
            let up = payload(&mut rng, buffer);
            let down = payload(&mut rng, buffer);
            let (c, s) = exchange(&mut rng, &up, &down);
            let spec = client(c, accepts(s))
                .at(rng.duration(Duration::ZERO, ms(30)))
                .to(listen(k % services))
                .delay(rng.duration(Duration::ZERO, ms(5)));
            sim.dial(spec);
        }
        sim.run();
        assert_all_ok(&sim);
        finish(&sim);
        spliced.fetch_add(sim.spliced, std::sync::atomic::Ordering::Relaxed);
    });
    // Odd seeds splice whenever the core allows it (and the scheduler
    // picks it): some bytes must have gone that way.
    assert!(spliced.into_inner() > 0, "no byte was ever spliced");
}

#[test]
fn half_close_client_first() {
    // The client sends its request and shuts its write half at once; the
    // server reads to EOF before it answers. The reply still arrives whole.
    seeds("half_close_client_first", |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let buffer = limits.buffer;
        let mut sim = relay(seed, &limits);
        let req = rng.bytes_in(1, 2 * buffer);
        let resp = rng.bytes_in(1, 4 * buffer);
        let mut ops = vec![Op::Send(req.clone()), Op::Shut];
        if rng.chance(1, 2) {
            // Shut before even one byte could go out.
            ops = vec![Op::Shut];
        }
        let mut server = vec![Op::AwaitEof];
        server.extend(sends(&mut rng, &resp, true));
        sim.dial(client(ops, accepts(server)).delay(rng.duration(Duration::ZERO, ms(10))));
        sim.run();
        let c = sim.client_of(0);
        assert!(c.received == resp, "seed {seed}: the reply");
        assert!(c.received_eof, "seed {seed}: the reply's EOF");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn half_close_server_first() {
    // The server answers and shuts first; the client, having read to EOF,
    // still sends its data, which the server gets.
    seeds("half_close_server_first", |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let buffer = limits.buffer;
        let mut sim = relay(seed, &limits);
        let banner = rng.bytes_in(1, 2 * buffer);
        let upload = rng.bytes_in(1, 4 * buffer);
        let mut ops = vec![Op::AwaitEof];
        ops.extend(sends(&mut rng, &upload, true));
        let mut server = sends(&mut rng, &banner, true);
        server.push(Op::AwaitEof);
        sim.dial(client(ops, accepts(server)));
        sim.run();
        assert!(server_bytes(&sim, 0).0 == upload, "seed {seed}: the upload");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn server_refuses_or_fails() {
    seeds("server_refuses_or_fails", |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let mut sim = relay(seed, &limits);
        let cases = [
            (None, "refused"),
            (Some(IoKind::Refused), "refused"),
            (Some(IoKind::HostUnreachable), "unreachable"),
            (Some(IoKind::NetUnreachable), "unreachable"),
            (Some(IoKind::TimedOut), "timeout"),
            (Some(IoKind::Reset), "error"),
            (Some(IoKind::Other), "error"),
        ];
        let n = rng.range(1, 3);
        let mut expect = Vec::new();
        for _ in 0..n {
            let (error, status) = cases[rng.below(cases.len())];
            let server = error.map_or(Server::Refuse, Server::Fail);
            // The client may say something before the refusal arrives; none
            // of it goes anywhere.
            let data = payload(&mut rng, 2048);
            let shut = rng.chance(1, 2);
            let ops = sends(&mut rng, &data, shut);
            sim.dial(
                client(ops, server)
                    .delay(rng.duration(Duration::ZERO, ms(20)))
                    .at(rng.duration(Duration::ZERO, ms(10))),
            );
            expect.push(status);
        }
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            let client = sim.client_of(i);
            assert_eq!(sim.status(i), Some(expect[i]), "seed {seed}: status of {i}");
            assert!(client.received.is_empty(), "seed {seed}: bytes for {i}");
            assert!(client.received_eof, "seed {seed}: {i} not closed");
            let a = sim.record_of(i).unwrap();
            assert_eq!((a.up, a.down), (0, 0), "seed {seed}: bytes of {i}");
            assert!(
                c.answered_at >= Some(c.connect_asked_at.unwrap() + c.delay),
                "seed {seed}: {i} answered early"
            );
            assert_eq!(
                c.closed_at, c.answered_at,
                "seed {seed}: {i} closed when the failure arrived"
            );
        }
        finish(&sim);
    });
}

#[test]
fn server_never_answers() {
    seeds("server_never_answers", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.connect_timeout = rng.duration(ms(1), Duration::from_secs(30));
        let mut sim = relay(seed, &limits);
        let timeout = self::limits(&sim).connect_timeout;
        let data = payload(&mut rng, 1024);
        sim.dial(client(sends(&mut rng, &data, false), Server::Silent));
        if rng.chance(1, 2) {
            // A healthy neighbour is not disturbed.
            let up = payload(&mut rng, 1024);
            let down = payload(&mut rng, 1024);
            let (c, s) = exchange(&mut rng, &up, &down);
            sim.dial(client(c, accepts(s)));
        }
        sim.run();
        let c = &sim.conns[0];
        assert_eq!(sim.status(0), Some("timeout"), "seed {seed}");
        let took = c.closed_at.unwrap() - c.accepted_at.unwrap();
        assert!(
            took >= timeout && took <= timeout + 3 * MS,
            "seed {seed}: closed after {took:?}, connect_timeout is {timeout:?}"
        );
        let first = sim.client_of(0);
        assert!(first.received_eof && first.received.is_empty());
        if sim.conns.len() > 1 {
            assert_eq!(sim.status(1), Some("ok"), "seed {seed}: the neighbour");
        }
        finish(&sim);
    });
}

#[test]
fn idle_connection_times_out_and_holds_no_buffer() {
    seeds("idle_connection_times_out", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.idle_timeout = rng.duration(ms(100), Duration::from_secs(600));
        let buffer = limits.buffer;
        let mut sim = relay(seed, &limits);
        let idle = self::limits(&sim).idle_timeout;
        // Two connections exchange a request and a reply, then say nothing
        // and never close.
        let mut sizes = Vec::new();
        for _ in 0..2 {
            let up = rng.bytes_in(1, 3 * buffer);
            let down = rng.bytes_in(0, 3 * buffer);
            sizes.push((up.len(), down.len()));
            let mut c = sends(&mut rng, &up, false);
            c.push(Op::AwaitEof);
            let mut s = vec![Op::AwaitLen(up.len())];
            s.extend(sends(&mut rng, &down, false));
            s.push(Op::AwaitEof);
            sim.dial(client(c, accepts(s)));
        }
        let transferred = |s: &Sim| {
            sizes.iter().enumerate().all(|(i, (u, d))| {
                server_bytes(s, i).0.len() == *u && s.client_of(i).received.len() == *d
            })
        };
        assert!(sim.run_until(transferred), "seed {seed}: transfers done");
        // Both connected, both idle: no buffer held.
        assert_eq!(sim.rt.len(), 2, "seed {seed}");
        assert_eq!(
            sim.rt.buffers_in_use(),
            0,
            "seed {seed}: idle connections hold buffers"
        );
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            assert_eq!(sim.status(i), Some("idle"), "seed {seed}: status of {i}");
            let quiet = c.closed_at.unwrap() - c.last_io.unwrap();
            assert!(
                quiet >= idle && quiet <= idle + 3 * MS,
                "seed {seed}: {i} closed after {quiet:?} of silence, idle_timeout {idle:?}"
            );
            let a = sim.record_of(i).unwrap();
            assert_eq!((a.up, a.down), (sizes[i].0 as u64, sizes[i].1 as u64));
        }
        finish(&sim);
    });
}

#[test]
fn trickle_keeps_a_connection_alive() {
    seeds("trickle_keeps_a_connection_alive", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.idle_timeout = rng.duration(ms(50), Duration::from_secs(300));
        let mut sim = relay(seed, &limits);
        let idle = self::limits(&sim).idle_timeout;
        let beats = rng.range(4, 10);
        let from_client = rng.chance(1, 2);
        let mut trickle = Vec::new();
        for _ in 0..beats {
            trickle.push(Op::Pause(idle / 2));
            trickle.push(Op::Send(vec![rng.next_u64() as u8]));
        }
        trickle.push(Op::Shut);
        let (ops, server) = if from_client {
            let server = vec![Op::AwaitLen(beats), Op::Send(b"ok".to_vec()), Op::Shut];
            (trickle, server)
        } else {
            (vec![Op::AwaitLen(beats), Op::Shut], trickle)
        };
        sim.dial(client(ops, accepts(server)));
        sim.run();
        let c = &sim.conns[0];
        assert_eq!(
            sim.status(0),
            Some("ok"),
            "seed {seed}: closed while trickling"
        );
        let lived = c.closed_at.unwrap() - c.accepted_at.unwrap();
        assert!(lived >= idle * 2, "seed {seed}: lived {lived:?}");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn slow_reader_is_bounded_and_does_not_slow_others() {
    seeds("slow_reader_is_bounded", |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let buffer = limits.buffer;
        let mut sim = relay(seed, &limits);
        // A: a client that asks, then stops reading; its server sends a lot.
        let req = rng.bytes_in(1, 64);
        // More than the sockets (small ones here) and the core's buffer (or
        // the splicing runtime's pipe) can hold.
        let (cap_in, cap_out) = (rng.range(1, 2048), rng.range(1, 2048));
        let extra = rng.below(buffer);
        let big = rng.bytes(cap_in + cap_out + buffer * 3 + sim.pipe_cap + extra);
        let mut a_server = vec![Op::AwaitLen(req.len())];
        a_server.extend(sends(&mut rng, &big, true));
        let a = sim.dial(client(
            vec![Op::Stall(true), Op::Send(req), Op::AwaitEof, Op::Shut],
            accepts(a_server),
        ));
        let (a_client, a_server) = (sim.conns[a].client, sim.conns[a].server.unwrap());
        sim.peers[a_server].inbound.cap = cap_in;
        sim.peers[a_client].outbound.cap = cap_out;
        // B: an ordinary exchange at the same time.
        let up = rng.bytes_in(buffer, 3 * buffer);
        let down = rng.bytes_in(buffer, 3 * buffer);
        let (c, s) = exchange(&mut rng, &up, &down);
        let b = sim.dial(client(c, accepts(s)).at(ms(1)));

        assert!(
            sim.run_until(|s| s.conns[b].done()),
            "seed {seed}: B finished"
        );
        assert_eq!(sim.status(b), Some("ok"), "seed {seed}: B");
        // Let A's server push all it can (through a pipe of a splicing
        // runtime that may take many small steps to fill).
        sim.run_for(Duration::from_secs(1));
        let stalled = |s: &Sim| {
            let pipe_full = s.splice && s.conns[a].pipe(Side::Upstream).len() == s.pipe_cap;
            s.peers[a_server].inbound.room() == 0 && (!s.interest(a, Side::Upstream).0 || pipe_full)
        };
        sim.run_until(stalled);
        sim.settle();
        let (c, server) = (&sim.conns[a], &sim.peers[a_server]);
        assert!(c.closed_at.is_none(), "seed {seed}: A still open");
        // Bytes wait in the core's buffer or in the splicing runtime's
        // pipe, never in both at once (either goes empty before the other
        // takes any).
        let held = buffer.max(sim.pipe_cap);
        let in_flight = server.inbound.cap + held + sim.peers[a_client].outbound.cap;
        assert!(
            server.sent <= in_flight,
            "seed {seed}: the server wrote {} bytes to a client that reads nothing \
             (at most {in_flight} fit in the sockets and the core's buffer or the pipe)",
            server.sent
        );
        assert!(server.sent < big.len(), "seed {seed}: nothing stalled");
        assert_eq!(
            server.inbound.room(),
            0,
            "seed {seed}: the server's writes should stall"
        );
        // The core stops reading, or (splicing) the full pipe does.
        let pipe_full = sim.splice && c.pipe(Side::Upstream).len() == sim.pipe_cap;
        assert!(
            !sim.interest(a, Side::Upstream).0 || pipe_full,
            "seed {seed}: the upstream of a stalled client is still read"
        );
        assert!(
            sim.rt.buffers_in_use() <= 2,
            "seed {seed}: {} buffers for one stalled connection",
            sim.rt.buffers_in_use()
        );
        // The client reads again: everything arrives.
        sim.peers[a_client].stalled = false;
        sim.run();
        assert!(sim.client_of(a).received == big, "seed {seed}: A's data");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn max_connections_is_enforced_and_slots_free() {
    seeds("max_connections", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        let max = rng.range(1, 4);
        limits.max_connections = max as u32;
        limits.services = 1;
        let mut sim = relay(seed, &limits);
        // The first leaves after a second; the others stay until idle.
        sim.dial(client(
            vec![Op::Pause(Duration::from_secs(1)), Op::Shut, Op::AwaitEof],
            accepts(vec![Op::AwaitEof, Op::Shut]),
        ));
        for k in 1..max + 3 {
            sim.dial(client(vec![Op::AwaitEof], accepts(vec![])).at(ms(100 * k as u64)));
        }
        let late = sim.dial(
            client(
                vec![Op::Send(b"x".to_vec()), Op::Shut, Op::AwaitEof],
                accepts(vec![Op::AwaitLen(1), Op::AwaitEof, Op::Shut]),
            )
            .at(Duration::from_secs(2)),
        );
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            let want = if i < max || i == late {
                None
            } else {
                Some(Refused::TooMany)
            };
            assert_eq!(c.refused, want, "seed {seed}: accept of {i}");
            if want.is_some() {
                assert_eq!(sim.status(i), Some("limit"), "seed {seed}: {i}");
                assert!(sim.client_of(i).received_eof, "seed {seed}: {i} not closed");
            }
        }
        assert_eq!(sim.status(0), Some("ok"));
        assert_eq!(sim.status(late), Some("ok"));
        assert_eq!(sim.rt.stats().refused, 3, "seed {seed}: refusals counted");
        finish(&sim);
    });
}

#[test]
fn max_per_client_is_enforced_and_slots_free() {
    seeds("max_per_client", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        let max = rng.range(1, 3);
        limits.max_per_client = max as u32;
        limits.services = 1;
        let mut sim = relay(seed, &limits);
        let a = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5));
        let b = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 6));
        sim.dial(
            client(
                vec![Op::Pause(Duration::from_secs(1)), Op::Shut, Op::AwaitEof],
                accepts(vec![Op::AwaitEof, Op::Shut]),
            )
            .from(a),
        );
        for k in 1..max + 2 {
            sim.dial(
                client(vec![Op::AwaitEof], accepts(vec![]))
                    .from(a)
                    .at(ms(100 * k as u64)),
            );
        }
        let other = sim.dial(
            client(vec![Op::AwaitEof], accepts(vec![]))
                .from(b)
                .at(ms(50 + 100 * max as u64)),
        );
        let again = sim.dial(
            client(vec![Op::AwaitEof], accepts(vec![]))
                .from(a)
                .at(Duration::from_secs(2)),
        );
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            let want = if i < max || i == other || i == again {
                None
            } else {
                Some(Refused::PerClient)
            };
            assert_eq!(c.refused, want, "seed {seed}: accept of {i}");
            if want.is_some() {
                assert_eq!(sim.status(i), Some("limit"), "seed {seed}: {i}");
            }
        }
        assert_eq!(sim.status(0), Some("ok"));
        finish(&sim);
    });
}

#[test]
fn shutdown_lets_connections_finish_then_closes_the_rest() {
    seeds("shutdown_lets_connections_finish", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.shutdown_grace = if rng.chance(1, 4) {
            Duration::ZERO
        } else {
            // Long enough for the busy client's bytes at the slowest the
            // simulated network moves them (a 600 ms grace was not, once in
            // some 13,000 seeds).
            rng.duration(Duration::from_secs(2), Duration::from_secs(10))
        };
        let buffer = limits.buffer;
        let mut sim = relay(seed, &limits);
        let grace = self::limits(&sim).shutdown_grace;
        // Still talking when the shutdown comes, done well within the grace.
        let up = rng.bytes_in(1, 3 * buffer);
        let down = rng.bytes_in(1, 3 * buffer);
        let mut c = vec![Op::Pause(ms(300))];
        c.extend(sends(&mut rng, &up, true));
        c.push(Op::AwaitEof);
        let mut s = vec![Op::AwaitLen(up.len())];
        s.extend(sends(&mut rng, &down, true));
        let busy = sim.dial(client(c, accepts(s)));
        // Connected and silent: only the end of the grace closes it.
        let quiet = sim.dial(client(vec![Op::AwaitEof], accepts(vec![])));
        // Arrives after the listeners closed.
        let late = sim.dial(client(vec![], accepts(vec![])).at(ms(200)));

        sim.run_for(ms(100));
        let at = sim.now();
        sim.shutdown();
        sim.run();
        assert!(sim.rt.is_finished(), "seed {seed}: finished");
        assert!(
            sim.conns[late].os_refused,
            "seed {seed}: late client accepted"
        );
        assert_eq!(
            sim.status(quiet),
            Some("shutdown"),
            "seed {seed}: the quiet one"
        );
        let closed = sim.conns[quiet].closed_at.unwrap();
        assert!(
            closed >= at + grace && closed <= at + grace + 3 * MS,
            "seed {seed}: closed at {closed:?}, shutdown at {at:?} + {grace:?}"
        );
        if grace.is_zero() {
            assert_eq!(
                sim.status(busy),
                Some("shutdown"),
                "seed {seed}: busy, no grace"
            );
        } else {
            assert_eq!(
                sim.status(busy),
                Some("ok"),
                "seed {seed}: busy within grace"
            );
            assert!(sim.client_of(busy).received == down && server_bytes(&sim, busy).0 == up);
        }
        assert_accounted(&sim);
        sim.rt.assert_empty();
    });
}

#[test]
fn random_mix() {
    // Everything at once: refusals, failures, silence, resets, stalls,
    // limits, chopping and reordering. The universal properties hold: each
    // connection ends with one access record whose counts are what its
    // peers saw; what arrives is a prefix of what was sent; the table ends
    // empty.
    seeds("random_mix", |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.max_connections = rng.range(1, 6) as u32;
        limits.max_per_client = rng.range(1, 3) as u32;
        // Longer than any server takes to answer.
        limits.connect_timeout = rng.duration(ms(50), ms(500));
        let buffer = limits.buffer;
        let services = limits.services;
        let mut sim = relay(seed, &limits);
        let n = rng.range(1, 8);
        let mut expect = Vec::new();
        for k in 0..n {
            let up = payload(&mut rng, buffer);
            let down = payload(&mut rng, buffer);
            let (mut c, mut s) = exchange(&mut rng, &up, &down);
            if rng.chance(1, 4) {
                let at = rng.below(c.len() + 1);
                c.insert(at, Op::Stall(true));
                c.insert(at + 1, Op::Pause(rng.duration(MS, ms(50))));
                c.insert(at + 2, Op::Stall(false));
            }
            let (server, mut status) = match rng.below(10) {
                0 => (Server::Refuse, vec!["refused"]),
                1 => (Server::Fail(IoKind::HostUnreachable), vec!["unreachable"]),
                2 => (Server::Silent, vec!["timeout"]),
                _ => {
                    let mut st = vec!["ok"];
                    if rng.chance(1, 8) {
                        let at = rng.below(s.len() + 1);
                        s.insert(at, Op::Reset);
                        // A reset the proxy never noticed (the pair was
                        // done) is no error.
                        st.push("error");
                    }
                    (accepts(s), st)
                }
            };
            if rng.chance(1, 8) {
                let at = rng.below(c.len() + 1);
                c.insert(at, Op::Reset);
                status.push("error");
            }
            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, rng.range(1, 3) as u8));
            sim.dial(
                client(c, server)
                    .at(rng.duration(Duration::ZERO, ms(100)))
                    .delay(rng.duration(Duration::ZERO, ms(20)))
                    .to(listen(k % services))
                    .from(ip),
            );
            expect.push(status);
        }
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            let got = sim.status(i).unwrap_or("none");
            if c.refused.is_some() {
                assert_eq!(got, "limit", "seed {seed}: {i}");
                continue;
            }
            assert!(
                expect[i].contains(&got),
                "seed {seed}: status of {i} is {got}, expected one of {:?}",
                expect[i]
            );
            if got == "ok" {
                let (client, (server_got, server_sends)) =
                    (sim.client_of(i), server_bytes(&sim, i));
                assert!(server_got == client.script_bytes, "seed {seed}: {i} up");
                assert!(client.received == server_sends, "seed {seed}: {i} down");
            }
        }
        assert_accounted(&sim);
        sim.rt.assert_empty();
    });
}
