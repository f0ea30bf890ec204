//! Deterministic simulations of mapped ports: the core relays between
//! in-memory clients and servers under a seeded scheduler (see `sim/`).
//!
//! Every test runs many seeds; a failure prints the seed and the last steps,
//! and `PORTICO_SIM_SEED=N cargo test -p portico-core --test sim_relay NAME`
//! replays it (`PORTICO_SIM_SEEDS=10000` runs more seeds).

mod sim;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use portico_core::{IoKind, Refused, Side};
use sim::{seeds, sends, ClientSpec, Limits, Op, Rng, Server, Sim, SEEDS};

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
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
            c.push(Op::WaitRecv(down.len()));
            c.push(Op::Shut);
            let mut s = vec![Op::WaitRecv(up.len())];
            s.extend(sends(rng, down, false));
            s.push(Op::WaitEof);
            s.push(Op::Shut);
            (c, s)
        }
        _ => {
            let c = sends(rng, up, true);
            let mut s = vec![Op::WaitEof];
            s.extend(sends(rng, down, true));
            (c, s)
        }
    }
}

/// Every connection completed normally, each way unchanged and in order.
fn assert_all_ok(sim: &Sim) {
    let seed = sim.seed;
    for (i, c) in sim.conns.iter().enumerate() {
        assert_eq!(c.status(), Some("ok"), "seed {seed}: status of {i}");
        assert!(
            c.server.received == c.client.script_bytes,
            "seed {seed}: connection {i}: the server got {} of {} bytes, or other bytes",
            c.server.received.len(),
            c.client.script_bytes.len()
        );
        assert!(
            c.client.received == c.server.script_bytes,
            "seed {seed}: connection {i}: the client got {} of {} bytes, or other bytes",
            c.client.received.len(),
            c.server.script_bytes.len()
        );
        assert!(
            c.server.received_eof && c.client.received_eof,
            "seed {seed}: connection {i}: EOF not carried across"
        );
        let a = c.access.as_ref().expect("an access record");
        assert_eq!(
            (a.up, a.down),
            (
                c.client.script_bytes.len() as u64,
                c.server.script_bytes.len() as u64
            ),
            "seed {seed}: byte counts of {i}"
        );
    }
}

fn finish(sim: &Sim) {
    sim.assert_accounted();
    sim.assert_empty();
    sim.assert_quiet();
}

#[test]
fn relay_both_ways() {
    let spliced = std::sync::atomic::AtomicU64::new(0);
    seeds("relay_both_ways", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let (buffer, services) = (limits.buffer, limits.services);
        let mut sim = Sim::new(seed, limits);
        for k in 0..rng.range(1, 4) {
            let up = payload(&mut rng, buffer);
            let down = payload(&mut rng, buffer);
            let (c, s) = exchange(&mut rng, &up, &down);
            let spec = ClientSpec::new(c, Server::Accept(s))
                .at(rng.duration(Duration::ZERO, ms(30)))
                .service(k % services)
                .delay(rng.duration(Duration::ZERO, ms(5)));
            sim.client(spec);
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
    seeds("half_close_client_first", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let buffer = limits.buffer;
        let mut sim = Sim::new(seed, limits);
        let req = rng.bytes_in(1, 2 * buffer);
        let resp = rng.bytes_in(1, 4 * buffer);
        let mut client = vec![Op::Send(req.clone()), Op::Shut];
        if rng.chance(1, 2) {
            // Shut before even one byte could go out.
            client = vec![Op::Shut];
        }
        let mut server = vec![Op::WaitEof];
        server.extend(sends(&mut rng, &resp, true));
        sim.client(
            ClientSpec::new(client, Server::Accept(server))
                .delay(rng.duration(Duration::ZERO, ms(10))),
        );
        sim.run();
        let c = &sim.conns[0];
        assert!(c.client.received == resp, "seed {seed}: the reply");
        assert!(c.client.received_eof, "seed {seed}: the reply's EOF");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn half_close_server_first() {
    // The server answers and shuts first; the client, having read to EOF,
    // still sends its data, which the server gets.
    seeds("half_close_server_first", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let buffer = limits.buffer;
        let mut sim = Sim::new(seed, limits);
        let banner = rng.bytes_in(1, 2 * buffer);
        let upload = rng.bytes_in(1, 4 * buffer);
        let mut client = vec![Op::WaitEof];
        client.extend(sends(&mut rng, &upload, true));
        let mut server = sends(&mut rng, &banner, true);
        server.push(Op::WaitEof);
        sim.client(ClientSpec::new(client, Server::Accept(server)));
        sim.run();
        let c = &sim.conns[0];
        assert!(c.server.received == upload, "seed {seed}: the upload");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn server_refuses_or_fails() {
    seeds("server_refuses_or_fails", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let mut sim = Sim::new(seed, limits);
        let cases = [
            (Server::Refuse, "refused"),
            (Server::Fail(IoKind::Refused), "refused"),
            (Server::Fail(IoKind::HostUnreachable), "unreachable"),
            (Server::Fail(IoKind::NetUnreachable), "unreachable"),
            (Server::Fail(IoKind::TimedOut), "timeout"),
            (Server::Fail(IoKind::Reset), "error"),
            (Server::Fail(IoKind::Other), "error"),
        ];
        let n = rng.range(1, 3);
        let mut expect = Vec::new();
        for _ in 0..n {
            let (server, status) = cases[rng.below(cases.len())].clone();
            // The client may say something before the refusal arrives; none
            // of it goes anywhere.
            let data = payload(&mut rng, 2048);
            let shut = rng.chance(1, 2);
            let script = sends(&mut rng, &data, shut);
            sim.client(
                ClientSpec::new(script, server)
                    .delay(rng.duration(Duration::ZERO, ms(20)))
                    .at(rng.duration(Duration::ZERO, ms(10))),
            );
            expect.push(status);
        }
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            assert_eq!(c.status(), Some(expect[i]), "seed {seed}: status of {i}");
            assert!(c.client.received.is_empty(), "seed {seed}: bytes for {i}");
            assert!(c.client.received_eof, "seed {seed}: {i} not closed");
            let a = c.access.as_ref().unwrap();
            assert_eq!((a.up, a.down), (0, 0), "seed {seed}: bytes of {i}");
            assert!(
                c.answered_at >= Some(c.connect_asked_at.unwrap() + c.spec.connect_delay),
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
    seeds("server_never_answers", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.connect_timeout = rng.duration(ms(1), Duration::from_secs(30));
        let mut sim = Sim::new(seed, limits);
        let timeout = sim.limits.connect_timeout;
        let data = payload(&mut rng, 1024);
        sim.client(ClientSpec::new(
            sends(&mut rng, &data, false),
            Server::Silent,
        ));
        if rng.chance(1, 2) {
            // A healthy neighbour is not disturbed.
            let up = payload(&mut rng, 1024);
            let down = payload(&mut rng, 1024);
            let (c, s) = exchange(&mut rng, &up, &down);
            sim.client(ClientSpec::new(c, Server::Accept(s)));
        }
        sim.run();
        let c = &sim.conns[0];
        assert_eq!(c.status(), Some("timeout"), "seed {seed}");
        let took = c.closed_at.unwrap() - c.accepted_at.unwrap();
        assert!(
            took >= timeout && took <= timeout + 3 * MS,
            "seed {seed}: closed after {took:?}, connect_timeout is {timeout:?}"
        );
        assert!(c.client.received_eof && c.client.received.is_empty());
        if let Some(other) = sim.conns.get(1) {
            assert_eq!(other.status(), Some("ok"), "seed {seed}: the neighbour");
        }
        finish(&sim);
    });
}

#[test]
fn idle_connection_times_out_and_holds_no_buffer() {
    seeds("idle_connection_times_out", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.idle_timeout = rng.duration(ms(100), Duration::from_secs(600));
        let buffer = limits.buffer;
        let mut sim = Sim::new(seed, limits);
        let idle = sim.limits.idle_timeout;
        // Two connections exchange a request and a reply, then say nothing
        // and never close.
        let mut sizes = Vec::new();
        for _ in 0..2 {
            let up = rng.bytes_in(1, 3 * buffer);
            let down = rng.bytes_in(0, 3 * buffer);
            sizes.push((up.len(), down.len()));
            let mut c = sends(&mut rng, &up, false);
            c.push(Op::WaitEof);
            let mut s = vec![Op::WaitRecv(up.len())];
            s.extend(sends(&mut rng, &down, false));
            s.push(Op::WaitEof);
            sim.client(ClientSpec::new(c, Server::Accept(s)));
        }
        let transferred = |s: &Sim| {
            s.conns
                .iter()
                .zip(&sizes)
                .all(|(c, (u, d))| c.server.received.len() == *u && c.client.received.len() == *d)
        };
        assert!(sim.run_until(transferred), "seed {seed}: transfers done");
        // Both connected, both idle: no buffer held.
        assert_eq!(sim.proxy.len(), 2, "seed {seed}");
        assert_eq!(
            sim.proxy.buffers_in_use(),
            0,
            "seed {seed}: idle connections hold buffers"
        );
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            assert_eq!(c.status(), Some("idle"), "seed {seed}: status of {i}");
            let quiet = c.closed_at.unwrap() - c.last_io.unwrap();
            assert!(
                quiet >= idle && quiet <= idle + 3 * MS,
                "seed {seed}: {i} closed after {quiet:?} of silence, idle_timeout {idle:?}"
            );
            let a = c.access.as_ref().unwrap();
            assert_eq!((a.up, a.down), (sizes[i].0 as u64, sizes[i].1 as u64));
        }
        finish(&sim);
    });
}

#[test]
fn trickle_keeps_a_connection_alive() {
    seeds("trickle_keeps_a_connection_alive", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.idle_timeout = rng.duration(ms(50), Duration::from_secs(300));
        let mut sim = Sim::new(seed, limits);
        let idle = sim.limits.idle_timeout;
        let beats = rng.range(4, 10);
        let from_client = rng.chance(1, 2);
        let mut trickle = Vec::new();
        for _ in 0..beats {
            trickle.push(Op::Sleep(idle / 2));
            trickle.push(Op::Send(vec![rng.next_u64() as u8]));
        }
        let (client, server) = if from_client {
            trickle.push(Op::Shut);
            (
                trickle,
                vec![Op::WaitRecv(beats), Op::Send(b"ok".to_vec()), Op::Shut],
            )
        } else {
            trickle.push(Op::Shut);
            (vec![Op::WaitRecv(beats), Op::Shut], trickle)
        };
        sim.client(ClientSpec::new(client, Server::Accept(server)));
        sim.run();
        let c = &sim.conns[0];
        assert_eq!(
            c.status(),
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
    seeds("slow_reader_is_bounded", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let limits = random_limits(&mut rng);
        let buffer = limits.buffer;
        let mut sim = Sim::new(seed, limits);
        // A: a client that asks, then stops reading; its server sends a lot.
        let req = rng.bytes_in(1, 64);
        // More than the sockets (small ones here) and the core's buffer (or
        // the splicing runtime's pipe) can hold.
        let (cap_in, cap_out) = (rng.range(1, 2048), rng.range(1, 2048));
        let extra = rng.below(buffer);
        let big = rng.bytes(cap_in + cap_out + buffer * 3 + sim.pipe_cap + extra);
        let mut a_server = vec![Op::WaitRecv(req.len())];
        a_server.extend(sends(&mut rng, &big, true));
        let a = sim.client(ClientSpec::new(
            vec![Op::Stall(true), Op::Send(req), Op::WaitEof, Op::Shut],
            Server::Accept(a_server),
        ));
        sim.conns[a].server.inbound.cap = cap_in;
        sim.conns[a].client.outbound.cap = cap_out;
        // B: an ordinary exchange at the same time.
        let up = rng.bytes_in(buffer, 3 * buffer);
        let down = rng.bytes_in(buffer, 3 * buffer);
        let (c, s) = exchange(&mut rng, &up, &down);
        let b = sim.client(ClientSpec::new(c, Server::Accept(s)).at(ms(1)));

        assert!(
            sim.run_until(|s| s.conns[b].done()),
            "seed {seed}: B finished"
        );
        assert_eq!(sim.conns[b].status(), Some("ok"), "seed {seed}: B");
        // Let A's server push all it can (through a pipe of a splicing
        // runtime that may take many small steps to fill).
        sim.run_for(Duration::from_secs(1));
        let stalled = |s: &Sim| {
            let c = &s.conns[a];
            let pipe_full = s.splice && c.pipe(Side::Upstream).len() == s.pipe_cap;
            c.server.inbound.room() == 0 && (!c.server.interest.0 || pipe_full)
        };
        sim.run_until(stalled);
        sim.settle();
        let c = &sim.conns[a];
        assert!(c.closed_at.is_none(), "seed {seed}: A still open");
        // Bytes wait in the core's buffer or in the splicing runtime's
        // pipe, never in both at once (either goes empty before the other
        // takes any).
        let held = buffer.max(sim.pipe_cap);
        let in_flight = c.server.inbound.cap + held + c.client.outbound.cap;
        assert!(
            c.server.sent <= in_flight,
            "seed {seed}: the server wrote {} bytes to a client that reads nothing \
             (at most {in_flight} fit in the sockets and the core's buffer or the pipe)",
            c.server.sent
        );
        assert!(c.server.sent < big.len(), "seed {seed}: nothing stalled");
        assert_eq!(
            c.server.inbound.room(),
            0,
            "seed {seed}: the server's writes should stall"
        );
        // The core stops reading, or (splicing) the full pipe does.
        let pipe_full = sim.splice && c.pipe(Side::Upstream).len() == sim.pipe_cap;
        assert!(
            !c.server.interest.0 || pipe_full,
            "seed {seed}: the upstream of a stalled client is still read"
        );
        assert!(
            sim.proxy.buffers_in_use() <= 2,
            "seed {seed}: {} buffers for one stalled connection",
            sim.proxy.buffers_in_use()
        );
        // The client reads again: everything arrives.
        sim.conns[a].client.stalled = false;
        sim.run();
        assert!(sim.conns[a].client.received == big, "seed {seed}: A's data");
        assert_all_ok(&sim);
        finish(&sim);
    });
}

#[test]
fn max_connections_is_enforced_and_slots_free() {
    seeds("max_connections", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        let max = rng.range(1, 4);
        limits.max_connections = max as u32;
        limits.services = 1;
        let mut sim = Sim::new(seed, limits);
        // The first leaves after a second; the others stay until idle.
        sim.client(ClientSpec::new(
            vec![Op::Sleep(Duration::from_secs(1)), Op::Shut, Op::WaitEof],
            Server::Accept(vec![Op::WaitEof, Op::Shut]),
        ));
        for k in 1..max + 3 {
            sim.client(
                ClientSpec::new(vec![Op::WaitEof], Server::Accept(vec![])).at(ms(100 * k as u64)),
            );
        }
        let late = sim.client(
            ClientSpec::new(
                vec![Op::Send(b"x".to_vec()), Op::Shut, Op::WaitEof],
                Server::Accept(vec![Op::WaitRecv(1), Op::WaitEof, Op::Shut]),
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
                assert_eq!(c.status(), Some("limit"), "seed {seed}: {i}");
                assert!(c.client.received_eof, "seed {seed}: {i} not closed");
            }
        }
        assert_eq!(sim.conns[0].status(), Some("ok"));
        assert_eq!(sim.conns[late].status(), Some("ok"));
        assert_eq!(
            sim.proxy.stats().refused,
            3,
            "seed {seed}: refusals counted"
        );
        finish(&sim);
    });
}

#[test]
fn max_per_client_is_enforced_and_slots_free() {
    seeds("max_per_client", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        let max = rng.range(1, 3);
        limits.max_per_client = max as u32;
        limits.services = 1;
        let mut sim = Sim::new(seed, limits);
        let a = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5));
        let b = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 6));
        sim.client(
            ClientSpec::new(
                vec![Op::Sleep(Duration::from_secs(1)), Op::Shut, Op::WaitEof],
                Server::Accept(vec![Op::WaitEof, Op::Shut]),
            )
            .ip(a),
        );
        for k in 1..max + 2 {
            sim.client(
                ClientSpec::new(vec![Op::WaitEof], Server::Accept(vec![]))
                    .ip(a)
                    .at(ms(100 * k as u64)),
            );
        }
        let other = sim.client(
            ClientSpec::new(vec![Op::WaitEof], Server::Accept(vec![]))
                .ip(b)
                .at(ms(50 + 100 * max as u64)),
        );
        let again = sim.client(
            ClientSpec::new(vec![Op::WaitEof], Server::Accept(vec![]))
                .ip(a)
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
                assert_eq!(c.status(), Some("limit"), "seed {seed}: {i}");
            }
        }
        assert_eq!(sim.conns[0].status(), Some("ok"));
        finish(&sim);
    });
}

#[test]
fn shutdown_lets_connections_finish_then_closes_the_rest() {
    seeds("shutdown_lets_connections_finish", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.shutdown_grace = if rng.chance(1, 4) {
            Duration::ZERO
        } else {
            rng.duration(ms(600), Duration::from_secs(10))
        };
        let buffer = limits.buffer;
        let mut sim = Sim::new(seed, limits);
        let grace = sim.limits.shutdown_grace;
        // Still talking when the shutdown comes, done well within the grace.
        let up = rng.bytes_in(1, 3 * buffer);
        let down = rng.bytes_in(1, 3 * buffer);
        let mut c = vec![Op::Sleep(ms(300))];
        c.extend(sends(&mut rng, &up, true));
        c.push(Op::WaitEof);
        let mut s = vec![Op::WaitRecv(up.len())];
        s.extend(sends(&mut rng, &down, true));
        let busy = sim.client(ClientSpec::new(c, Server::Accept(s)));
        // Connected and silent: only the end of the grace closes it.
        let quiet = sim.client(ClientSpec::new(vec![Op::WaitEof], Server::Accept(vec![])));
        // Arrives after the listeners closed.
        let late = sim.client(ClientSpec::new(vec![], Server::Accept(vec![])).at(ms(200)));

        sim.run_for(ms(100));
        let at = sim.now;
        sim.shutdown();
        sim.run();
        assert!(sim.proxy.is_finished(), "seed {seed}: finished");
        assert!(
            sim.conns[late].os_refused,
            "seed {seed}: late client accepted"
        );
        let q = &sim.conns[quiet];
        assert_eq!(q.status(), Some("shutdown"), "seed {seed}: the quiet one");
        let closed = q.closed_at.unwrap();
        assert!(
            closed >= at + grace && closed <= at + grace + 3 * MS,
            "seed {seed}: closed at {closed:?}, shutdown at {at:?} + {grace:?}"
        );
        let b = &sim.conns[busy];
        if grace.is_zero() {
            assert_eq!(b.status(), Some("shutdown"), "seed {seed}: busy, no grace");
        } else {
            assert_eq!(b.status(), Some("ok"), "seed {seed}: busy within grace");
            assert!(b.client.received == down && b.server.received == up);
        }
        sim.assert_accounted();
        sim.assert_empty();
    });
}

#[test]
fn random_mix() {
    // Everything at once: refusals, failures, silence, resets, stalls,
    // limits, chopping and reordering. The universal properties hold: each
    // connection ends with one access record whose counts are what its
    // peers saw; what arrives is a prefix of what was sent; the table ends
    // empty.
    seeds("random_mix", SEEDS, |seed| {
        let mut rng = Rng::new(seed);
        let mut limits = random_limits(&mut rng);
        limits.max_connections = rng.range(1, 6) as u32;
        limits.max_per_client = rng.range(1, 3) as u32;
        // Longer than any server takes to answer.
        limits.connect_timeout = rng.duration(ms(50), ms(500));
        let buffer = limits.buffer;
        let services = limits.services;
        let mut sim = Sim::new(seed, limits);
        let n = rng.range(1, 8);
        let mut expect = Vec::new();
        for k in 0..n {
            let up = payload(&mut rng, buffer);
            let down = payload(&mut rng, buffer);
            let (mut c, mut s) = exchange(&mut rng, &up, &down);
            if rng.chance(1, 4) {
                let at = rng.below(c.len() + 1);
                c.insert(at, Op::Stall(true));
                c.insert(at + 1, Op::Sleep(rng.duration(MS, ms(50))));
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
                    (Server::Accept(s), st)
                }
            };
            if rng.chance(1, 8) {
                let at = rng.below(c.len() + 1);
                c.insert(at, Op::Reset);
                status.push("error");
            }
            let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 0, rng.range(1, 3) as u8));
            sim.client(
                ClientSpec::new(c, server)
                    .at(rng.duration(Duration::ZERO, ms(100)))
                    .delay(rng.duration(Duration::ZERO, ms(20)))
                    .service(k % services)
                    .ip(ip),
            );
            expect.push(status);
        }
        sim.run();
        for (i, c) in sim.conns.iter().enumerate() {
            let got = c.status().unwrap_or("none");
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
                assert!(
                    c.server.received == c.client.script_bytes,
                    "seed {seed}: {i} up"
                );
                assert!(
                    c.client.received == c.server.script_bytes,
                    "seed {seed}: {i} down"
                );
            }
        }
        sim.assert_accounted();
        sim.assert_empty();
    });
}
