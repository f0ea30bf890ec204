//! A deterministic simulation of a runtime around a [`Proxy`].
//!
//! The harness plays every part a real runtime and the network play: it opens
//! the listeners the core asks for, brings clients in at their arrival times,
//! plays the upstream servers (which accept, refuse, fail or never answer),
//! carries every [`Action`] out faithfully, and feeds back the events a real
//! event loop would see. Sockets are in-memory byte queues with a capacity
//! (the kernel's buffers) and EOF flags; time is a base [`Instant`] plus an
//! offset that jumps straight to the next deadline when nothing else can
//! happen — nothing ever sleeps.
//!
//! A seeded PRNG decides everything else: the socket capacities, how many
//! bytes each read and write moves (1..=len, often small), and which of the
//! ready operations happens next (so independent events are reordered).
//!
//! Every run checks, after each call into the core, what a runtime could
//! notice: the table agrees with the sockets the runtime holds, limits hold,
//! buffers stay bounded, no action names a dead connection, no write follows
//! a shutdown, no deadline is left due (a spinning runtime). A failing run
//! prints its seed and the last steps it took; [`seeds`] replays one seed
//! given in `PORTICO_SIM_SEED`.
//!
//! Odd seeds play a runtime that splices: while [`Proxy::splice_ok`] allows
//! it, bytes may go from a socket into a bounded pipe of the runtime's own
//! and from there to the other socket, past the core's buffers (reported
//! as [`Event::Spliced`]), interleaved at random with ordinary reads; a
//! direction's EOF is reported only once its pipe is empty.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use portico_core::{
    AccessRecord, Action, Config, ConnId, Event, IoKind, Level, ListenerId, Proxy, Refused, Side,
};

// ---------------------------------------------------------------- the PRNG

/// SplitMix64: tiny, fast, and good enough to drive a scheduler.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// How many of `len` bytes one read or write moves: 1..=len, often
    /// small, sometimes all of them.
    pub fn chop(&mut self, len: usize) -> usize {
        if len <= 1 {
            return len;
        }
        match self.below(8) {
            0 | 1 => self.range(1, len.min(16)),
            2 | 3 => len,
            _ => self.range(1, len),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// `lo..=hi` random bytes.
    pub fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }

    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(lo + self.next_u64() % (hi - lo + 1))
    }
}

// ---------------------------------------------------------- running seeds

/// How many seeds a simulation test runs by default (`PORTICO_SIM_SEEDS`
/// overrides it).
pub const SEEDS: u64 = 300;

/// Runs `f` for `n` seeds, or for the seeds listed in `PORTICO_SIM_SEED`
/// (comma-separated). A failure names the seed and how to replay it.
pub fn seeds(name: &str, n: u64, f: impl Fn(u64)) {
    let list: Vec<u64> = match std::env::var("PORTICO_SIM_SEED") {
        Ok(s) => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .expect("PORTICO_SIM_SEED: seeds are numbers")
            })
            .collect(),
        Err(_) => {
            let n = std::env::var("PORTICO_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(n);
            (0..n).collect()
        }
    };
    for seed in list {
        if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!(
                "\n*** simulation `{name}` failed with seed {seed}\n\
                 *** replay it: PORTICO_SIM_SEED={seed} cargo test -p portico-core {name}\n"
            );
            panic::resume_unwind(e);
        }
    }
}

// ------------------------------------------------------- the configuration

/// The first mapped service listens here; service `i` on `LISTEN_PORT + i`.
pub const LISTEN_PORT: u16 = 8000;
/// Service `i` forwards to `DEST_PORT + i` on 127.0.0.1.
pub const DEST_PORT: u16 = 9000;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: u32,
    pub max_per_client: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub buffer: usize,
    /// Mapped services (each on its own port and destination).
    pub services: usize,
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
    pub fn toml(&self) -> String {
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
                 listen = [\"127.0.0.1:{}\"]\ndestination = \"127.0.0.1:{}\"\n",
                LISTEN_PORT as usize + i,
                DEST_PORT as usize + i,
            ));
        }
        t
    }

    pub fn config(&self) -> Config {
        let text = self.toml();
        match portico_core::config::parse(&text, "sim.toml") {
            Ok(c) => c,
            Err(e) => panic!("the simulation's configuration is invalid: {e}\n{text}"),
        }
    }
}

pub fn dest(service: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEST_PORT + service as u16)
}

// ------------------------------------------------------------- the peers

/// One step of what a peer (client or server) does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write these bytes (in chunks, as the socket takes them).
    Send(Vec<u8>),
    /// Shut the write half (the other end sees EOF).
    Shut,
    /// Do nothing for a while.
    Sleep(Duration),
    /// Wait until the other end's EOF arrived.
    WaitEof,
    /// Wait until this many bytes in total arrived.
    WaitRecv(usize),
    /// Stop (true) or resume (false) reading.
    Stall(bool),
    /// Reset the connection: the proxy's next operation on it fails.
    Reset,
}

/// Sends `data` in a few pieces with short pauses, then shuts (when `shut`).
pub fn sends(rng: &mut Rng, data: &[u8], shut: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let k = rng.range(1, rest.len());
        ops.push(Op::Send(rest[..k].to_vec()));
        rest = &rest[k..];
        if rng.chance(1, 3) {
            ops.push(Op::Sleep(
                rng.duration(Duration::from_micros(1), Duration::from_millis(20)),
            ));
        }
    }
    if shut {
        ops.push(Op::Shut);
    }
    ops
}

/// How the upstream server of a connection behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// Accepts, then plays its script.
    Accept(Vec<Op>),
    /// Refuses the connection (RST): `ConnectFailed { Refused }`.
    Refuse,
    /// The connect fails with this error.
    Fail(IoKind),
    /// Never answers: the connect hangs until the core gives up.
    Silent,
}

/// One client of the simulation and the server it ends up talking to.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// When it connects, from the start of the simulation.
    pub at: Duration,
    /// Which mapped service (listener) it connects to.
    pub service: usize,
    /// Its address; `None`: a fresh one of its own.
    pub ip: Option<IpAddr>,
    pub script: Vec<Op>,
    pub server: Server,
    /// How long the server takes to answer the connect.
    pub connect_delay: Duration,
}

impl ClientSpec {
    pub fn new(script: Vec<Op>, server: Server) -> Self {
        ClientSpec {
            at: Duration::ZERO,
            service: 0,
            ip: None,
            script,
            server,
            connect_delay: Duration::ZERO,
        }
    }

    pub fn at(mut self, at: Duration) -> Self {
        self.at = at;
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    pub fn service(mut self, service: usize) -> Self {
        self.service = service;
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.connect_delay = d;
        self
    }
}

/// A byte queue of one direction of a socket, with room for `cap` bytes.
#[derive(Debug, Default)]
pub struct Pipe {
    pub buf: VecDeque<u8>,
    pub cap: usize,
    /// The writer shut (or closed) its end: after the bytes, EOF.
    pub eof: bool,
}

impl Pipe {
    fn new(cap: usize) -> Self {
        Pipe {
            buf: VecDeque::new(),
            cap,
            eof: false,
        }
    }

    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }
}

/// One TCP connection between the proxy and a remote peer, and that peer.
#[derive(Debug)]
pub struct End {
    /// What the peer still has to do.
    pub script: VecDeque<Op>,
    sleep_until: Option<Duration>,
    /// The peer has begun its script (accepted, or connected to).
    pub started: bool,
    /// The peer does not read (a slow or stalled client).
    pub stalled: bool,
    /// Peer → proxy.
    pub inbound: Pipe,
    /// Proxy → peer.
    pub outbound: Pipe,
    /// What the peer received, and whether its EOF arrived.
    pub received: Vec<u8>,
    pub received_eof: bool,
    /// Bytes the peer wrote into the socket.
    pub sent: usize,
    /// Everything the peer's script sends, in order.
    pub script_bytes: Vec<u8>,
    /// The proxy's socket exists (accepted or connected, not closed).
    pub open: bool,
    /// The peer reset the connection.
    pub reset: bool,
    /// The proxy was told about the EOF on `inbound`.
    eof_reported: bool,
    /// The proxy was told a read would block, and nothing arrived since.
    blocked_reported: bool,
    /// The proxy shut its write half.
    pub shut_by_proxy: bool,
    /// The interest the core last told for this socket: (read, write).
    pub interest: (bool, bool),
}

impl End {
    fn new(script: Vec<Op>, rng: &mut Rng) -> End {
        let mut cap = || {
            if rng.chance(1, 4) {
                rng.range(1, 64)
            } else {
                rng.range(256, 16384)
            }
        };
        let inbound = Pipe::new(cap());
        let outbound = Pipe::new(cap());
        let script_bytes = script
            .iter()
            .flat_map(|op| match op {
                Op::Send(v) => v.clone(),
                _ => Vec::new(),
            })
            .collect();
        End {
            script: script.into(),
            sleep_until: None,
            started: false,
            stalled: false,
            inbound,
            outbound,
            received: Vec::new(),
            received_eof: false,
            sent: 0,
            script_bytes,
            open: false,
            reset: false,
            eof_reported: false,
            blocked_reported: false,
            shut_by_proxy: false,
            interest: (false, false),
        }
    }

    /// Every byte the script sends went into the socket.
    pub fn sent_all(&self) -> bool {
        self.sent == self.script_bytes.len()
    }

    /// Runs the script's steps that need no socket operation.
    fn advance(&mut self, now: Duration) {
        if !self.started {
            return;
        }
        while let Some(op) = self.script.front() {
            match op {
                Op::Sleep(d) => {
                    let until = *self.sleep_until.get_or_insert(now + *d);
                    if now < until {
                        return;
                    }
                    self.sleep_until = None;
                }
                Op::WaitEof if !self.received_eof => return,
                Op::WaitRecv(n) if self.received.len() < *n => return,
                Op::WaitEof | Op::WaitRecv(_) => {}
                Op::Stall(b) => self.stalled = *b,
                Op::Shut => {
                    if self.open {
                        self.inbound.eof = true;
                    }
                }
                Op::Reset => {
                    if self.open {
                        self.reset = true;
                    }
                }
                Op::Send(v) if v.is_empty() => {}
                Op::Send(_) => {
                    if !self.open {
                        // The proxy closed: nothing more goes anywhere.
                        self.script.clear();
                    }
                    return;
                }
            }
            self.script.pop_front();
        }
    }

    /// When a sleeping script wakes up.
    fn wakeup(&self) -> Option<Duration> {
        match self.script.front() {
            Some(Op::Sleep(_)) if self.started => self.sleep_until,
            _ => None,
        }
    }
}

/// A client connection of the simulation, from its arrival to its end.
#[derive(Debug)]
pub struct Conn {
    pub spec: ClientSpec,
    pub peer: SocketAddr,
    pub id: Option<ConnId>,
    /// `accept` said no.
    pub refused: Option<Refused>,
    /// The listener was gone when it arrived (the OS refused it).
    pub os_refused: bool,
    pub accepted_at: Option<Duration>,
    /// Where the core asked to connect, and when.
    pub connect_to: Option<SocketAddr>,
    pub connect_asked_at: Option<Duration>,
    /// When the server's answer (connected or failed) was handed in.
    pub answered_at: Option<Duration>,
    pub connected_at: Option<Duration>,
    pub closed_at: Option<Duration>,
    /// The last time a read or write moved bytes (the idle clock).
    pub last_io: Option<Duration>,
    pub client: End,
    pub server: End,
    pub access: Option<AccessRecord>,
    /// The splicing runtime's pipe per direction, by source side (client
    /// → upstream first): bytes taken from one socket, not yet written to
    /// the other.
    pub pipe: [VecDeque<u8>; 2],
}

impl Conn {
    pub fn end(&self, side: Side) -> &End {
        match side {
            Side::Client => &self.client,
            Side::Upstream => &self.server,
        }
    }

    pub fn end_mut(&mut self, side: Side) -> &mut End {
        match side {
            Side::Client => &mut self.client,
            Side::Upstream => &mut self.server,
        }
    }

    /// The pipe of the direction `from` feeds.
    pub fn pipe(&self, from: Side) -> &VecDeque<u8> {
        &self.pipe[six(from)]
    }

    /// The connection ended (refused at accept, or closed by the core).
    pub fn done(&self) -> bool {
        self.refused.is_some() || self.os_refused || self.closed_at.is_some()
    }

    pub fn status(&self) -> Option<&str> {
        self.access.as_ref().map(|a| a.status.as_str())
    }
}

fn six(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    Accept(usize),
    Answer(usize),
    RemoteWrite(usize, Side),
    RemoteRead(usize, Side),
    ProxyRead(usize, Side),
    ProxyBlocked(usize, Side),
    ProxyWrite(usize, Side),
    /// Splice from this side's socket into its direction's pipe.
    SpliceIn(usize, Side),
    /// Splice from this side's direction's pipe to the other socket.
    SpliceOut(usize, Side),
    Tick,
}

#[derive(Debug)]
enum Trace {
    Op(Duration, Ready),
    Action(Duration, Action),
    Jump(Duration),
}

#[derive(Debug, Clone, Copy)]
struct ListenerState {
    id: ListenerId,
    addr: SocketAddr,
    open: bool,
    paused: bool,
}

/// Steps taken before a run is declared stuck in a loop.
const MAX_STEPS: u64 = 5_000_000;
/// Trace entries kept to print when a run fails.
const TRACE_KEEP: usize = 80;

/// The simulated runtime.
pub struct Sim {
    pub seed: u64,
    pub rng: Rng,
    pub proxy: Proxy,
    pub limits: Limits,
    base: Instant,
    /// Simulated time since the start.
    pub now: Duration,
    listeners: Vec<ListenerState>,
    pub conns: Vec<Conn>,
    live: HashMap<ConnId, usize>,
    /// Every access record, in order.
    pub access: Vec<AccessRecord>,
    pub logs: Vec<(Level, String)>,
    pub says: Vec<String>,
    trace: VecDeque<Trace>,
    pub steps: u64,
    /// Let small amounts of time pass between operations.
    pub jitter: bool,
    /// Report `ReadBlocked` when a wanted read finds nothing (sometimes).
    pub read_blocked: bool,
    /// The most buffers the core had lent at once.
    pub max_buffers: usize,
    /// Splice while the core allows it (odd seeds), through pipes of this
    /// many bytes.
    pub splice: bool,
    pub pipe_cap: usize,
    /// Bytes that went through the pipes.
    pub spliced: u64,
    /// Extra wake-up times (see [`Sim::run_for`]).
    alarms: Vec<Duration>,
    /// Scratch space for the ready operations of one step.
    ready: Vec<Ready>,
}

impl Sim {
    /// A proxy over `limits`, its listeners open.
    pub fn new(seed: u64, limits: Limits) -> Sim {
        let mut rng = Rng::new(seed);
        let base = Instant::now();
        let proxy = Proxy::new(limits.config(), seed, base);
        // The configuration counts in milliseconds: use what it holds.
        let mut limits = limits;
        let l = &proxy.config().limits;
        limits.connect_timeout = l.connect_timeout;
        limits.idle_timeout = l.idle_timeout;
        limits.shutdown_grace = l.shutdown_grace;
        let jitter = rng.chance(1, 2);
        let splice = seed % 2 == 1;
        let pipe_cap = if splice {
            [1, 16, 4096, 65536][rng.below(4)]
        } else {
            0
        };
        let mut sim = Sim {
            splice,
            pipe_cap,
            spliced: 0,
            seed,
            rng,
            proxy,
            limits,
            base,
            now: Duration::ZERO,
            listeners: Vec::new(),
            conns: Vec::new(),
            live: HashMap::new(),
            access: Vec::new(),
            logs: Vec::new(),
            says: Vec::new(),
            trace: VecDeque::new(),
            steps: 0,
            jitter,
            read_blocked: true,
            max_buffers: 0,
            alarms: Vec::new(),
            ready: Vec::new(),
        };
        sim.drain();
        assert_eq!(
            sim.listeners.len(),
            sim.limits.services,
            "seed {seed}: one Listen per service"
        );
        assert!(
            sim.listeners.iter().all(|l| l.open),
            "seed {seed}: listeners open"
        );
        assert_eq!(sim.proxy.starting(), 0, "seed {seed}: startup done");
        sim
    }

    pub fn at(&self) -> Instant {
        self.base + self.now
    }

    fn since(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.base)
    }

    fn record(&mut self, t: Trace) {
        if self.trace.len() == TRACE_KEEP {
            self.trace.pop_front();
        }
        self.trace.push_back(t);
    }

    /// Adds a client; returns its index in [`Sim::conns`].
    pub fn client(&mut self, spec: ClientSpec) -> usize {
        let i = self.conns.len();
        let ip = spec.ip.unwrap_or(IpAddr::V4(Ipv4Addr::new(
            10,
            (i / 250) as u8,
            (i % 250) as u8 + 1,
            1,
        )));
        let peer = SocketAddr::new(ip, 20000 + i as u16);
        let client = End::new(spec.script.clone(), &mut self.rng);
        let server_script = match &spec.server {
            Server::Accept(s) => s.clone(),
            _ => Vec::new(),
        };
        let server = End::new(server_script, &mut self.rng);
        self.conns.push(Conn {
            spec,
            peer,
            id: None,
            refused: None,
            os_refused: false,
            accepted_at: None,
            connect_to: None,
            connect_asked_at: None,
            answered_at: None,
            connected_at: None,
            closed_at: None,
            last_io: None,
            client,
            server,
            access: None,
            pipe: Default::default(),
        });
        i
    }

    // ---------------------------------------------------------- stepping

    /// Runs until nothing can happen any more.
    pub fn run(&mut self) {
        while self.step() {}
    }

    /// Runs until `done` holds (true) or nothing can happen any more (false).
    pub fn run_until(&mut self, done: impl Fn(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
    }

    /// Runs until `d` more time has passed (or nothing can happen).
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.alarms.push(until);
        self.run_until(|s| s.now >= until);
        self.alarms.retain(|a| *a != until);
    }

    /// Runs, without letting time jump, until no operation is ready (every
    /// socket has done what it can for now).
    pub fn settle(&mut self) {
        loop {
            for c in &mut self.conns {
                c.client.advance(self.now);
                c.server.advance(self.now);
            }
            let jitter = std::mem::replace(&mut self.jitter, false);
            self.collect_ready();
            self.jitter = jitter;
            if self.ready.is_empty() {
                return;
            }
            self.step();
        }
    }

    /// One operation, or one jump in time. False when nothing is left.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        assert!(
            self.steps < MAX_STEPS,
            "seed {}: {MAX_STEPS} steps and still going: a livelock",
            self.seed
        );
        for c in &mut self.conns {
            c.client.advance(self.now);
            c.server.advance(self.now);
        }
        self.collect_ready();
        if self.ready.is_empty() {
            return self.jump();
        }
        let op = self.ready[self.rng.below(self.ready.len())];
        self.record(Trace::Op(self.now, op));
        self.perform(op);
        self.drain();
        if self.rng.chance(1, 16) {
            // A runtime calls handle_timeout on every turn of its loop.
            self.timeout();
        }
        true
    }

    /// Every operation that could happen now, into `self.ready`.
    fn collect_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        let now = self.now;
        for (i, c) in self.conns.iter().enumerate() {
            if c.id.is_none() && !c.done() && c.spec.at <= now {
                let l = self.listeners[c.spec.service];
                if !l.paused || !l.open {
                    ready.push(Ready::Accept(i));
                }
            }
            if c.connect_asked_at.is_some()
                && c.answered_at.is_none()
                && c.closed_at.is_none()
                && c.spec.server != Server::Silent
                && c.connect_asked_at.unwrap_or_default() + c.spec.connect_delay <= now
            {
                ready.push(Ready::Answer(i));
            }
            for side in [Side::Client, Side::Upstream] {
                let e = c.end(side);
                if !e.started {
                    continue;
                }
                if e.open
                    && !e.inbound.eof
                    && !e.reset
                    && matches!(e.script.front(), Some(Op::Send(v)) if !v.is_empty())
                    && e.inbound.room() > 0
                {
                    ready.push(Ready::RemoteWrite(i, side));
                }
                if !e.stalled && (!e.outbound.buf.is_empty() || (e.outbound.eof && !e.received_eof))
                {
                    ready.push(Ready::RemoteRead(i, side));
                }
                if !e.open {
                    continue;
                }
                let (read, write) = e.interest;
                if e.reset && (read || write) {
                    ready.push(Ready::ProxyRead(i, side));
                    continue;
                }
                let piped = !c.pipe(side).is_empty();
                if piped {
                    let to = c.end(side.other());
                    if to.open && to.outbound.room() > 0 {
                        ready.push(Ready::SpliceOut(i, side));
                    }
                }
                let splice_ok =
                    self.splice && c.id.is_some_and(|id| self.proxy.splice_ok(id, side));
                if splice_ok {
                    assert!(
                        read,
                        "seed {}: splice_ok on {i} {side:?} without read interest",
                        self.seed
                    );
                    if c.pipe(side).len() < self.pipe_cap && !e.inbound.buf.is_empty() {
                        ready.push(Ready::SpliceIn(i, side));
                    }
                }
                // Nothing is read into the core (nor EOF told) while bytes
                // read before wait in the pipe: the order is kept.
                if read
                    && !piped
                    && (!e.inbound.buf.is_empty() || (e.inbound.eof && !e.eof_reported))
                {
                    ready.push(Ready::ProxyRead(i, side));
                }
                if read
                    && !piped
                    && self.read_blocked
                    && e.inbound.buf.is_empty()
                    && !e.inbound.eof
                    && !e.blocked_reported
                {
                    ready.push(Ready::ProxyBlocked(i, side));
                }
                if write && e.outbound.room() > 0 {
                    ready.push(Ready::ProxyWrite(i, side));
                }
            }
        }
        if self.jitter && !ready.is_empty() && self.rng.chance(1, 8) {
            ready.push(Ready::Tick);
        }
        self.ready = ready;
    }

    /// Nothing is ready: time passes to the next thing that will happen.
    fn jump(&mut self) -> bool {
        let now = self.now;
        let mut next: Option<Duration> = None;
        let mut consider = |t: Duration| {
            next = Some(next.map_or(t, |n: Duration| n.min(t)));
        };
        if !self.proxy.is_finished() {
            if let Some(t) = self.proxy.poll_timeout() {
                consider(self.since(t));
            }
        }
        for c in &self.conns {
            if c.id.is_none() && !c.done() && c.spec.at > now {
                consider(c.spec.at);
            }
            if let (Some(asked), None, None) = (c.connect_asked_at, c.answered_at, c.closed_at) {
                if c.spec.server != Server::Silent && asked + c.spec.connect_delay > now {
                    consider(asked + c.spec.connect_delay);
                }
            }
            for e in [&c.client, &c.server] {
                if let Some(t) = e.wakeup() {
                    consider(t);
                }
            }
        }
        for a in &self.alarms {
            if *a > now {
                consider(*a);
            }
        }
        let Some(t) = next else {
            return false;
        };
        self.now = self.now.max(t);
        self.record(Trace::Jump(self.now));
        self.timeout();
        true
    }

    /// `handle_timeout` at the current time, then the checks a runtime
    /// would notice: nothing may be left due.
    fn timeout(&mut self) {
        self.proxy.handle_timeout(self.at());
        self.drain();
        if !self.proxy.is_finished() {
            if let Some(t) = self.proxy.poll_timeout() {
                assert!(
                    t > self.at(),
                    "seed {}: poll_timeout ({:?}) is still due after handle_timeout at {:?}: \
                     a runtime would spin",
                    self.seed,
                    self.since(t),
                    self.now
                );
            }
        }
    }

    fn id(&self, i: usize) -> ConnId {
        match self.conns[i].id {
            Some(id) => id,
            None => panic!("seed {}: connection {i} has no id", self.seed),
        }
    }

    fn perform(&mut self, op: Ready) {
        let seed = self.seed;
        match op {
            Ready::Tick => {
                self.now += self
                    .rng
                    .duration(Duration::from_micros(1), Duration::from_millis(2));
                self.timeout();
            }
            Ready::Accept(i) => self.accept(i),
            Ready::Answer(i) => {
                let id = self.id(i);
                let c = &mut self.conns[i];
                c.answered_at = Some(self.now);
                let event = match &c.spec.server {
                    Server::Accept(_) => {
                        c.server.open = true;
                        c.server.started = true;
                        c.connected_at = Some(self.now);
                        Event::Connected {
                            conn: id,
                            local: SocketAddr::new(
                                IpAddr::V4(Ipv4Addr::LOCALHOST),
                                40000 + i as u16,
                            ),
                        }
                    }
                    Server::Refuse => Event::ConnectFailed {
                        conn: id,
                        error: IoKind::Refused,
                    },
                    Server::Fail(error) => Event::ConnectFailed {
                        conn: id,
                        error: *error,
                    },
                    Server::Silent => unreachable!("a silent server never answers"),
                };
                self.proxy.handle(event, self.at());
            }
            Ready::RemoteWrite(i, side) => {
                let e = self.conns[i].end_mut(side);
                let Some(Op::Send(v)) = e.script.front_mut() else {
                    unreachable!()
                };
                let k = self.rng.chop(v.len().min(e.inbound.room()));
                e.inbound.buf.extend(v.drain(..k));
                e.sent += k;
                e.blocked_reported = false;
                if v.is_empty() {
                    e.script.pop_front();
                }
            }
            Ready::RemoteRead(i, side) => {
                let e = self.conns[i].end_mut(side);
                if e.outbound.buf.is_empty() {
                    e.received_eof = true;
                } else {
                    let k = self.rng.chop(e.outbound.buf.len());
                    e.received.extend(e.outbound.buf.drain(..k));
                }
            }
            Ready::ProxyRead(i, side) => {
                let id = self.id(i);
                let e = self.conns[i].end_mut(side);
                if e.reset {
                    self.proxy.handle(
                        Event::IoError {
                            conn: id,
                            side,
                            error: IoKind::Reset,
                        },
                        self.at(),
                    );
                    return;
                }
                if e.inbound.buf.is_empty() {
                    e.eof_reported = true;
                    self.proxy.handle(Event::Eof { conn: id, side }, self.at());
                    return;
                }
                let avail = e.inbound.buf.len();
                let Some(buf) = self.proxy.recv_buf(id, side) else {
                    panic!(
                        "seed {seed}: the core wants a read on {id} {side:?} but recv_buf \
                         lends nothing"
                    );
                };
                let k = self.rng.chop(avail.min(buf.len()));
                let e = self.conns[i].end_mut(side);
                for (dst, src) in buf.iter_mut().zip(e.inbound.buf.drain(..k)) {
                    *dst = src;
                }
                self.conns[i].last_io = Some(self.now);
                self.proxy.handle(
                    Event::Read {
                        conn: id,
                        side,
                        n: k,
                    },
                    self.at(),
                );
            }
            Ready::ProxyBlocked(i, side) => {
                let id = self.id(i);
                // A real runtime lends the buffer to read(2), which would block.
                let _ = self.proxy.recv_buf(id, side);
                self.conns[i].end_mut(side).blocked_reported = true;
                self.proxy
                    .handle(Event::ReadBlocked { conn: id, side }, self.at());
            }
            Ready::SpliceIn(i, from) => {
                let id = self.id(i);
                assert!(
                    self.proxy.splice_ok(id, from),
                    "seed {seed}: splice_ok turned false between two calls"
                );
                let room = self.pipe_cap - self.conns[i].pipe(from).len();
                let c = &mut self.conns[i];
                let e = c.end_mut(from);
                let k = self.rng.chop(e.inbound.buf.len().min(room));
                let bytes: Vec<u8> = e.inbound.buf.drain(..k).collect();
                c.pipe[six(from)].extend(bytes);
            }
            Ready::SpliceOut(i, from) => {
                let id = self.id(i);
                let c = &mut self.conns[i];
                let room = c.end(from.other()).outbound.room();
                let k = self.rng.chop(c.pipe(from).len().min(room));
                let to = c.end(from.other());
                assert!(
                    !to.outbound.eof,
                    "seed {seed}: spliced to {id} {:?} after its ShutdownWrite",
                    from.other()
                );
                let bytes: Vec<u8> = c.pipe[six(from)].drain(..k).collect();
                c.end_mut(from.other()).outbound.buf.extend(bytes);
                c.last_io = Some(self.now);
                self.spliced += k as u64;
                self.proxy.handle(
                    Event::Spliced {
                        conn: id,
                        from,
                        n: k,
                    },
                    self.at(),
                );
            }
            Ready::ProxyWrite(i, side) => {
                let id = self.id(i);
                let room = self.conns[i].end(side).outbound.room();
                let Some([said, forwarded]) = self.proxy.send_bufs(id, side) else {
                    panic!(
                        "seed {seed}: the core wants a write on {id} {side:?} but send_bufs \
                         shows nothing"
                    );
                };
                // A vectored write moves both parts at once; a plain one
                // only the first.
                let data = if said.is_empty() || self.rng.chance(1, 2) {
                    [said, forwarded].concat()
                } else {
                    said.to_vec()
                };
                let k = self.rng.chop(data.len().min(room));
                let bytes = data[..k].to_vec();
                let e = self.conns[i].end_mut(side);
                assert!(
                    !e.outbound.eof,
                    "seed {seed}: a write on {id} {side:?} after its ShutdownWrite"
                );
                e.outbound.buf.extend(bytes);
                if k > 0 {
                    self.conns[i].last_io = Some(self.now);
                }
                self.proxy.handle(
                    Event::Written {
                        conn: id,
                        side,
                        n: k,
                    },
                    self.at(),
                );
            }
        }
    }

    fn accept(&mut self, i: usize) {
        let seed = self.seed;
        let l = self.listeners[self.conns[i].spec.service];
        if !l.open {
            // Nobody listens there any more: the OS refuses the connection.
            let c = &mut self.conns[i];
            c.os_refused = true;
            c.client.outbound.eof = true;
            c.client.started = true;
            return;
        }
        let peer = self.conns[i].peer;
        let result = self.proxy.accept(l.id, peer, self.at());
        let c = &mut self.conns[i];
        c.accepted_at = Some(self.now);
        match result {
            Ok(id) => {
                assert!(
                    !self.live.contains_key(&id),
                    "seed {seed}: accept handed out live id {id} again"
                );
                c.id = Some(id);
                c.client.open = true;
                c.client.started = true;
                self.live.insert(id, i);
            }
            Err(why) => {
                // The runtime closes the socket: the client sees EOF.
                c.refused = Some(why);
                c.client.started = true;
                c.client.outbound.eof = true;
            }
        }
    }

    // ---------------------------------------------------------- actions

    /// Carries out every action the core has queued.
    pub fn drain(&mut self) {
        while let Some(action) = self.proxy.poll_action() {
            self.record(Trace::Action(self.now, action.clone()));
            self.apply(action);
        }
        self.check();
    }

    fn conn_of(&self, id: ConnId, what: &str) -> usize {
        match self.live.get(&id) {
            Some(i) => *i,
            None => panic!(
                "seed {}: {what} names {id}, which is not a live connection",
                self.seed
            ),
        }
    }

    fn apply(&mut self, action: Action) {
        let seed = self.seed;
        match action {
            Action::Listen { listener, addr } => {
                self.listeners.push(ListenerState {
                    id: listener,
                    addr,
                    open: true,
                    paused: false,
                });
                self.proxy.handle(
                    Event::Listening {
                        listener,
                        local: addr,
                    },
                    self.at(),
                );
            }
            Action::PauseAccept { listener } => self.listener(listener).paused = true,
            Action::ResumeAccept { listener } => self.listener(listener).paused = false,
            Action::Unlisten { listener } => self.listener(listener).open = false,
            Action::Connect { conn, addr, bind } => {
                let i = self.conn_of(conn, "Connect");
                let c = &mut self.conns[i];
                assert!(
                    c.connect_to.is_none(),
                    "seed {seed}: a second Connect for {conn}"
                );
                assert_eq!(
                    addr,
                    dest(c.spec.service),
                    "seed {seed}: Connect to the wrong address"
                );
                assert_eq!(bind, None, "seed {seed}: Connect binds without `outgoing`");
                c.connect_to = Some(addr);
                c.connect_asked_at = Some(self.now);
            }
            Action::Interest {
                conn,
                side,
                read,
                write,
            } => {
                let i = self.conn_of(conn, "Interest");
                let c = &mut self.conns[i];
                let e = c.end_mut(side);
                assert_ne!(
                    e.interest,
                    (read, write),
                    "seed {seed}: Interest for {conn} {side:?} repeated unchanged"
                );
                assert!(
                    !(write && e.shut_by_proxy),
                    "seed {seed}: write interest on {conn} {side:?} after ShutdownWrite"
                );
                if side == Side::Upstream && (read || write) {
                    assert!(
                        c.connected_at.is_some(),
                        "seed {seed}: interest in the upstream socket of {conn} before it \
                         connected"
                    );
                }
                c.end_mut(side).interest = (read, write);
            }
            Action::ShutdownWrite { conn, side } => {
                let i = self.conn_of(conn, "ShutdownWrite");
                assert!(
                    self.proxy.send_buf(conn, side).is_none(),
                    "seed {seed}: ShutdownWrite on {conn} {side:?} with bytes still to write"
                );
                assert!(
                    self.conns[i].pipe(side.other()).is_empty(),
                    "seed {seed}: ShutdownWrite on {conn} {side:?} with bytes still in the pipe"
                );
                let e = self.conns[i].end_mut(side);
                assert!(e.open, "seed {seed}: ShutdownWrite on a socket not open");
                assert!(
                    !e.shut_by_proxy,
                    "seed {seed}: ShutdownWrite twice on {conn} {side:?}"
                );
                e.shut_by_proxy = true;
                e.outbound.eof = true;
            }
            Action::Close { conn } => {
                let i = self.conn_of(conn, "Close");
                self.live.remove(&conn);
                let c = &mut self.conns[i];
                c.closed_at = Some(self.now);
                // What the runtime's pipes held is lost with the sockets.
                c.pipe = Default::default();
                for e in [&mut c.client, &mut c.server] {
                    if e.open || e.started {
                        // The peer reads what was sent, then EOF.
                        e.outbound.eof = true;
                    }
                    e.open = false;
                    e.interest = (false, false);
                }
            }
            Action::Access(rec) => {
                let port = rec.client.port();
                let i = (port as usize).wrapping_sub(20000);
                assert!(
                    i < self.conns.len() && self.conns[i].peer == rec.client,
                    "seed {seed}: access record for unknown client {}",
                    rec.client
                );
                assert!(
                    self.conns[i].access.is_none(),
                    "seed {seed}: a second access record for connection {i}: {rec:?}"
                );
                self.conns[i].access = Some((*rec).clone());
                self.access.push(*rec);
            }
            Action::Log { level, message } => self.logs.push((level, message)),
            Action::Say(line) => self.says.push(line),
            Action::Fatal { message } => panic!("seed {seed}: Fatal: {message}"),
            other => panic!("seed {seed}: the simulation does not know {other:?}"),
        }
    }

    fn listener(&mut self, id: ListenerId) -> &mut ListenerState {
        let seed = self.seed;
        match self.listeners.iter_mut().find(|l| l.id == id) {
            Some(l) => l,
            None => panic!("seed {seed}: an action names unknown listener {id:?}"),
        }
    }

    /// What must hold after every call into the core.
    fn check(&mut self) {
        let seed = self.seed;
        let p = &self.proxy;
        let len = p.len();
        assert_eq!(
            len,
            self.live.len(),
            "seed {seed}: the table holds {len} connections, the runtime {}",
            self.live.len()
        );
        assert!(
            len <= self.limits.max_connections as usize,
            "seed {seed}: {len} connections over max_connections"
        );
        if len > self.limits.max_per_client as usize {
            let mut per_ip: HashMap<IpAddr, u32> = HashMap::new();
            for i in self.live.values() {
                *per_ip.entry(self.conns[*i].peer.ip()).or_default() += 1;
            }
            assert!(
                per_ip.values().all(|n| *n <= self.limits.max_per_client),
                "seed {seed}: over max_per_client"
            );
        }
        assert!(
            p.buffers_in_use() <= 2 * len,
            "seed {seed}: {} buffers for {len} connections",
            p.buffers_in_use()
        );
        assert!(
            p.timer_entries() <= portico_core::fuzzing::timer_bound(len),
            "seed {seed}: {} timer entries for {len} connections",
            p.timer_entries()
        );
        self.max_buffers = self.max_buffers.max(p.buffers_in_use());
    }

    // ---------------------------------------------------------- helpers

    /// Stops accepting and lets connections finish (see [`Proxy::shutdown`]).
    pub fn shutdown(&mut self) {
        self.proxy.shutdown(self.at());
        self.drain();
    }

    /// Every connection has ended and every peer has read all it was sent.
    pub fn all_done(&self) -> bool {
        self.conns.iter().all(|c| c.done())
    }

    /// The table is empty and holds nothing: no timer, no buffer, no
    /// deadline (unless shutting down, then it is finished).
    pub fn assert_empty(&self) {
        let seed = self.seed;
        let p = &self.proxy;
        assert_eq!(p.len(), 0, "seed {seed}: connections left");
        assert_eq!(p.buffers_in_use(), 0, "seed {seed}: buffers left");
        assert_eq!(p.timer_entries(), 0, "seed {seed}: timer entries left");
        if p.is_finished() {
            return;
        }
        assert_eq!(p.poll_timeout(), None, "seed {seed}: a deadline left");
    }

    /// Every connection ended, each with exactly one access record whose
    /// byte counts are what its peers saw.
    pub fn assert_accounted(&self) {
        let seed = self.seed;
        for (i, c) in self.conns.iter().enumerate() {
            if c.os_refused {
                assert!(c.access.is_none(), "seed {seed}: access record for {i}");
                continue;
            }
            assert!(c.done(), "seed {seed}: connection {i} still open: {c:?}");
            let Some(a) = &c.access else {
                panic!("seed {seed}: connection {i} ended without an access record");
            };
            assert_eq!(a.service.as_ref(), format!("map{}", c.spec.service));
            assert_eq!(a.method, "TCP", "seed {seed}: method of {i}");
            assert_eq!(
                a.target,
                dest(c.spec.service).to_string(),
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
            assert_eq!(a.destination, Some(dest(c.spec.service)));
            // What was written toward each peer: what it read, plus what
            // still sits in its socket.
            let up = c.server.received.len() + c.server.outbound.buf.len();
            let down = c.client.received.len() + c.client.outbound.buf.len();
            assert_eq!(
                (a.up, a.down),
                (up as u64, down as u64),
                "seed {seed}: byte counts of connection {i} ({})",
                a.status
            );
            let took = c.closed_at.unwrap_or_default() - c.accepted_at.unwrap_or_default();
            assert_eq!(a.duration, took, "seed {seed}: duration of connection {i}");
            // Whatever arrived, arrived unchanged and in order.
            assert!(
                c.client.script_bytes.starts_with(&c.server.received),
                "seed {seed}: connection {i}: the server received bytes the client did not \
                 send (or out of order)"
            );
            assert!(
                c.server.script_bytes.starts_with(&c.client.received),
                "seed {seed}: connection {i}: the client received bytes the server did not \
                 send (or out of order)"
            );
        }
    }

    /// No diagnostic at warn or error level was logged.
    pub fn assert_quiet(&self) {
        let loud: Vec<_> = self
            .logs
            .iter()
            .filter(|(l, _)| *l <= Level::Warn)
            .collect();
        assert!(loud.is_empty(), "seed {}: {loud:?}", self.seed);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- simulation seed {} at {:?}, step {}: the last {} steps:",
                self.seed,
                self.now,
                self.steps,
                self.trace.len()
            );
            for t in &self.trace {
                eprintln!("  {t:?}");
            }
            for (i, c) in self.conns.iter().enumerate() {
                eprintln!(
                    "  conn {i}: id {:?} refused {:?} closed {:?} client sent {}/{} got {}{} \
                     server sent {}/{} got {}{} status {:?}",
                    c.id,
                    c.refused,
                    c.closed_at,
                    c.client.sent,
                    c.client.script_bytes.len(),
                    c.client.received.len(),
                    if c.client.received_eof { "+eof" } else { "" },
                    c.server.sent,
                    c.server.script_bytes.len(),
                    c.server.received.len(),
                    if c.server.received_eof { "+eof" } else { "" },
                    c.status()
                );
            }
        }
    }
}
