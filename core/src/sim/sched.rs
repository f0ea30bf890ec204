//! The seeded scheduler: a whole world around one table, run in simulated
//! time.
//!
//! [`Sim`] plays every part a real runtime and the network play. It opens
//! the listeners the core asks for (a port 0 gets a port of its own),
//! brings clients in at their arrival times (the OS refuses those that
//! find no listener), answers connects with the server at the address (or
//! the one planned for the client), a refusal, an error or silence,
//! resolves names, and moves bytes: peers write into and read from their
//! sockets, and the runtime reads into the core, writes out of it and —
//! on odd seeds, while [`Runtime::splice_ok`] allows it — splices through
//! pipes of its own past the core's buffers (a direction's EOF is reported
//! only once its pipe is empty). Sockets are bounded byte queues with EOF
//! flags (see [`super::net`]); peers are [`Behavior`]s.
//!
//! The [`Dice`] decide everything else: socket capacities, how many bytes
//! each read and write moves (1..=len, often small), which of the ready
//! operations happens next (so independent events are reordered), small
//! steps of the clock, and a `handle_timeout` now and then besides the one
//! after every move of the clock. When nothing is ready the clock jumps
//! straight to the next thing due — nothing ever sleeps.
//!
//! After every call into the core the runtime's checks run (see
//! [`super::runtime`] and [`super::check`]). A failing run prints its tag,
//! the last steps and what each peer saw.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::net::{Net, Pipe, Server};
use super::peers::{Behavior, Dial, Io, Peer, PeerId};
use super::rng::{Dice, Rng};
use super::runtime::{Entry, ListenState, Runtime};
use super::seeds::{replaying, tracing};
use crate::{AccessRecord, Config, ConnId, Event, IoKind, Level, Refused, Side};

/// Trace entries kept to print when a run fails (more when replaying).
const TRACE_KEEP: usize = 80;
const TRACE_REPLAY: usize = 20_000;
pub(super) const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How a client's planned server answers its connect.
pub(super) enum Plan {
    Accept(PeerId),
    Fail(IoKind),
    Silent,
}

/// One client connection, from its arrival to its end.
pub struct Conn {
    pub client: PeerId,
    /// The upstream peer now (a planned one before the connect).
    pub server: Option<PeerId>,
    /// Where the client connects, and when.
    pub to: SocketAddr,
    pub at: Duration,
    /// How long its planned server takes to answer a connect.
    pub delay: Duration,
    pub(super) plan: Option<Plan>,
    pub id: Option<ConnId>,
    /// `accept` said no.
    pub refused: Option<Refused>,
    /// No listener was there (the OS refused it).
    pub os_refused: bool,
    pub accepted_at: Option<Duration>,
    pub connect_asked_at: Option<Duration>,
    /// When the answer to the last connect (connected or failed) came.
    pub answered_at: Option<Duration>,
    pub connected_at: Option<Duration>,
    pub closed_at: Option<Duration>,
    /// The last time a read or write moved bytes (the idle clock).
    pub last_io: Option<Duration>,
    /// The splicing runtime's pipe per direction, by source side: bytes
    /// taken from one socket, not yet written to the other.
    pub pipe: [VecDeque<u8>; 2],
    /// Connects asked for (an answer to an older one is dropped).
    pub(super) attempt: u32,
    /// The core's number for the last connect it asked for.
    pub(super) core_attempt: Option<u32>,
}

impl Conn {
    /// Refused at accept, or closed by the core.
    pub fn done(&self) -> bool {
        self.refused.is_some() || self.os_refused || self.closed_at.is_some()
    }

    /// The pipe of the direction `from` feeds.
    pub fn pipe(&self, from: Side) -> &VecDeque<u8> {
        &self.pipe[from.index()]
    }

    pub(super) fn peer(&self, side: Side) -> Option<PeerId> {
        match side {
            Side::Client => Some(self.client),
            Side::Upstream => self.server,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Ready {
    Accept(usize),
    Deliver(usize),
    RemoteWrite(PeerId),
    RemoteRead(PeerId),
    ProxyRead(usize, Side),
    ProxyBlocked(usize, Side),
    ProxyWrite(usize, Side),
    /// Splice from this side's socket into its direction's pipe.
    SpliceIn(usize, Side),
    /// Splice from this side's direction's pipe to the other socket.
    SpliceOut(usize, Side),
    Tick,
}

impl Ready {
    fn entry(self) -> Entry {
        let (what, who, side) = match self {
            Ready::Accept(i) => ("accept", i, None),
            Ready::Deliver(j) => ("deliver", j, None),
            Ready::RemoteWrite(p) => ("peer writes", p, None),
            Ready::RemoteRead(p) => ("peer reads", p, None),
            Ready::ProxyRead(i, s) => ("read", i, Some(s)),
            Ready::ProxyBlocked(i, s) => ("read blocks", i, Some(s)),
            Ready::ProxyWrite(i, s) => ("write", i, Some(s)),
            Ready::SpliceIn(i, s) => ("splice in", i, Some(s)),
            Ready::SpliceOut(i, s) => ("splice out", i, Some(s)),
            Ready::Tick => ("tick", 0, None),
        };
        Entry::Step(what, who, side)
    }
}

/// The simulated world. See the module docs.
pub struct Sim {
    /// Names the run in failure messages.
    pub tag: String,
    pub seed: u64,
    pub rt: Runtime,
    pub dice: Dice,
    pub net: Net,
    pub peers: Vec<Peer>,
    pub conns: Vec<Conn>,
    pub(super) live: BTreeMap<ConnId, usize>,
    /// Every `Connect`: (connection, address), in order; every `Resolve`
    /// (connection, name) and every `CloseUpstream` (connection).
    pub connects: Vec<(usize, SocketAddr)>,
    pub resolves: Vec<(usize, String)>,
    pub upstream_closes: Vec<usize>,
    /// Every upstream peer, in the order connected to.
    pub upstreams: Vec<PeerId>,
    /// Every `Listen`: (listener, the address asked, the one given).
    pub listens: Vec<(crate::ListenerId, SocketAddr, SocketAddr)>,
    /// Let small amounts of time pass between operations.
    pub jitter: bool,
    /// Report `ReadBlocked` when a wanted read finds nothing (sometimes).
    pub read_blocked: bool,
    /// Splice while the core allows it (odd seeds), through pipes of this
    /// many bytes.
    pub splice: bool,
    pub pipe_cap: usize,
    /// Peers move all they can at once, between the steps (given dice).
    pub instant: bool,
    /// The most one read into the core, and one write out of it, moves.
    pub max_read: usize,
    pub max_write: usize,
    /// Bytes that went through the pipes.
    pub spliced: u64,
    pub steps: u64,
    /// Steps taken before a run is declared stuck in a loop.
    pub max_steps: u64,
    /// Steps that called into the core with a read, write or splice.
    pub io_steps: u64,
    /// Extra wake-up times (see [`Sim::run_for`]).
    alarms: Vec<Duration>,
    /// Scratch space for the ready operations of one step.
    ready: Vec<Ready>,
    /// Ports handed out (data ports, upstream sockets).
    pub(super) ports: u16,
}

impl Sim {
    /// A table over `config` with its listeners open, the choices drawn
    /// from `seed`.
    pub fn new(name: &str, seed: u64, config: Config) -> Sim {
        Sim::with_dice(name, seed, config, Dice::Random(Rng::new(seed)))
    }

    /// The same, the choices drawn from `dice` (a property test's [`Given`]
    /// lists, say).
    ///
    /// [`Given`]: super::Given
    pub fn with_dice(name: &str, seed: u64, config: Config, mut dice: Dice) -> Sim {
        let mut rt = Runtime::new(config, seed, Instant::now());
        if replaying() {
            rt.set_log_level(Level::Debug);
            rt.keep_trace(TRACE_REPLAY);
        } else {
            rt.keep_trace(TRACE_KEEP);
        }
        let jitter = dice.chance(1, 2);
        let given = dice.is_given();
        let splice = !given && seed % 2 == 1;
        let pipe_cap = if splice {
            [1, 16, 4096, 65536][dice.below(4)]
        } else {
            0
        };
        let mut sim = Sim {
            tag: format!("[{name}, seed {seed}]"),
            seed,
            rt,
            dice,
            net: Net::default(),
            peers: Vec::new(),
            conns: Vec::new(),
            live: BTreeMap::new(),
            connects: Vec::new(),
            resolves: Vec::new(),
            upstream_closes: Vec::new(),
            upstreams: Vec::new(),
            listens: Vec::new(),
            jitter,
            read_blocked: true,
            instant: given,
            splice,
            pipe_cap,
            max_read: usize::MAX,
            max_write: usize::MAX,
            spliced: 0,
            steps: 0,
            max_steps: 5_000_000,
            io_steps: 0,
            alarms: Vec::new(),
            ready: Vec::new(),
            ports: 0,
        };
        sim.drain();
        while let Some(j) = sim.net.pending.iter().position(|p| p.at <= sim.now()) {
            let p = sim.net.pending.remove(j);
            sim.deliver(p.what);
            sim.drain();
        }
        let tag = &sim.tag;
        assert!(
            sim.rt
                .listeners()
                .iter()
                .all(|l| l.state == ListenState::Open),
            "{tag}: listeners open"
        );
        assert_eq!(sim.rt.starting(), 0, "{tag}: startup done");
        sim
    }

    /// Caps each read and write of this run at a size of its own, often
    /// one byte.
    pub fn vary_chops(&mut self) {
        let reads = [1, 1, 1, 2, 3, 7, 16, 64, 100_000];
        let writes = [1, 1, 2, 5, 13, 64, 100_000];
        self.max_read = reads[self.dice.below(reads.len())];
        self.max_write = writes[self.dice.below(writes.len())];
    }

    pub fn now(&self) -> Duration {
        self.rt.now()
    }

    // ------------------------------------------------------------ the world

    /// A server for every connection to `addr`.
    pub fn server(&mut self, addr: SocketAddr, f: impl FnMut() -> Box<dyn Behavior> + 'static) {
        self.net.serve(addr, Box::new(f));
    }

    /// `name` resolves to these addresses.
    pub fn name(&mut self, name: &str, ips: &[IpAddr]) {
        self.net.name(name, ips);
    }

    pub(super) fn new_peer(
        &mut self,
        label: String,
        addr: SocketAddr,
        conn: usize,
        b: Box<dyn Behavior>,
    ) -> PeerId {
        let (inbound, outbound) = (self.dice.capacity(), self.dice.capacity());
        self.peers.push(Peer {
            label,
            addr,
            local: None,
            conn,
            script_bytes: b.planned(),
            behavior: b,
            started: false,
            open: false,
            stalled: false,
            reset: false,
            unsent: VecDeque::new(),
            shut_asked: false,
            inbound: Pipe::new(inbound),
            outbound: Pipe::new(outbound),
            received: Vec::new(),
            received_eof: false,
            sent: 0,
            wake: None,
            eof_reported: false,
            blocked_reported: false,
            seen: None,
        });
        self.peers.len() - 1
    }

    /// Adds a client connection; returns its index in [`Sim::conns`]. Its
    /// address is its own (`10.x.y.1`) unless given, its port `20000 + i`.
    pub fn dial(&mut self, d: Dial) -> usize {
        let i = self.conns.len();
        let fresh = IpAddr::V4(Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8 + 1, 1));
        let addr = SocketAddr::new(d.from.unwrap_or(fresh), 20000 + i as u16);
        let client = self.new_peer(format!("{} {addr}", d.label), addr, i, d.behavior);
        let plan = d.server.map(|s| match s {
            Server::Accept(b) => {
                Plan::Accept(self.new_peer(format!("server of {addr}"), d.to, i, b))
            }
            Server::Silent => Plan::Silent,
            other => Plan::Fail(other.error().unwrap_or(IoKind::Refused)),
        });
        let server = match plan {
            Some(Plan::Accept(p)) => Some(p),
            _ => None,
        };
        self.conns.push(Conn {
            client,
            server,
            to: d.to,
            at: self.now() + d.at,
            delay: d.delay,
            plan,
            id: None,
            refused: None,
            os_refused: false,
            accepted_at: None,
            connect_asked_at: None,
            answered_at: None,
            connected_at: None,
            closed_at: None,
            last_io: None,
            pipe: Default::default(),
            attempt: 0,
            core_attempt: None,
        });
        i
    }

    /// A client from 127.0.0.1 that connects to `to` after `delay`.
    pub fn client(&mut self, to: SocketAddr, delay: Duration, b: Box<dyn Behavior>) -> usize {
        self.dial(Dial::new(to, b).at(delay).from(LOCALHOST))
    }

    // ------------------------------------------------------------- stepping

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
        let until = self.now() + d;
        self.alarms.push(until);
        self.run_until(|s| s.now() >= until);
        self.alarms.retain(|a| *a != until);
    }

    /// Runs, without letting time jump, until no operation is ready (every
    /// socket has done what it can for now).
    pub fn settle(&mut self) {
        loop {
            self.advance();
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
            self.steps < self.max_steps,
            "{}: {} steps and still going: a livelock",
            self.tag,
            self.max_steps
        );
        self.advance();
        self.collect_ready();
        if self.ready.is_empty() {
            return self.jump();
        }
        let op = self.ready[self.dice.op(self.ready.len())];
        self.rt.note(|| op.entry());
        self.perform(op);
        self.drain();
        if self.dice.chance(1, 16) {
            // A runtime calls handle_timeout on every turn of its loop.
            self.timeout();
        }
        true
    }

    /// Lets every peer act on what it has seen.
    fn advance(&mut self) {
        let now = self.now();
        let mut dials = Vec::new();
        for peer in &mut self.peers {
            while self.instant && peer.can_read() {
                peer.read(peer.outbound.buf.len());
            }
            if !peer.started || peer.behavior.done() || peer.wake.is_some_and(|w| w > now) {
                continue;
            }
            // Nothing it can see changed since it last acted (and it waits
            // for no time): it would do nothing.
            let unchanged = peer.seen == Some(peer.view());
            if unchanged && peer.wake.is_none() && !peer.behavior.watches_others() {
                continue;
            }
            let mut io = Io {
                now,
                received: &peer.received,
                eof: peer.received_eof,
                open: peer.open,
                unsent: peer.unsent.len(),
                send: Vec::new(),
                shut: false,
                stall: None,
                reset: false,
                wake: None,
                dials: Vec::new(),
            };
            peer.behavior.poll(&mut io);
            let Io {
                send,
                shut,
                stall,
                reset,
                wake,
                dials: d,
                ..
            } = io;
            peer.wake = wake;
            if !send.is_empty() {
                assert!(
                    !peer.shut_asked,
                    "{}: {} sends after shutting",
                    self.tag, peer.label
                );
                if peer.open {
                    peer.unsent.extend(send);
                }
            }
            if let Some(s) = stall {
                peer.stalled = s;
            }
            peer.reset |= reset && peer.open;
            peer.shut_asked |= shut;
            if peer.shut_asked && peer.unsent.is_empty() && peer.open {
                peer.inbound.eof = true;
            }
            peer.seen = Some(peer.view());
            if self.instant {
                peer.write(peer.can_write());
            }
            dials.extend(d);
        }
        for d in dials {
            let after = d.at + self.dice.duration(Duration::ZERO, Duration::from_millis(2));
            self.dial(d.at(after));
        }
    }

    /// Every operation that could happen now, into `self.ready`.
    fn collect_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        let now = self.now();
        for (j, p) in self.net.pending.iter().enumerate() {
            if p.at <= now {
                ready.push(Ready::Deliver(j));
            }
        }
        for (p, e) in self.peers.iter().enumerate().filter(|_| !self.instant) {
            if e.can_write() > 0 {
                ready.push(Ready::RemoteWrite(p));
            }
            if e.can_read() {
                ready.push(Ready::RemoteRead(p));
            }
        }
        for (i, c) in self.conns.iter().enumerate() {
            if c.id.is_none() && !c.done() && c.at <= now {
                match self.rt.listener_at(c.to) {
                    Some(l) if l.paused => {}
                    _ => ready.push(Ready::Accept(i)),
                }
            }
            let Some(id) = c.id else {
                continue;
            };
            let Some(interest) = self.rt.conn(id).map(|s| s.interest) else {
                continue;
            };
            for side in [Side::Client, Side::Upstream] {
                let Some(e) = c.peer(side).map(|p| &self.peers[p]) else {
                    continue;
                };
                if !e.open {
                    continue;
                }
                let (read, write) = interest[side.index()];
                if e.reset && (read || write) {
                    ready.push(Ready::ProxyRead(i, side));
                    continue;
                }
                let piped = !c.pipe(side).is_empty();
                if piped {
                    let to = c.peer(side.other()).map(|p| &self.peers[p]);
                    if to.is_some_and(|to| to.open && to.outbound.room() > 0) {
                        ready.push(Ready::SpliceOut(i, side));
                    }
                }
                if self.splice
                    && self.rt.splice_ok(id, side)
                    && c.pipe(side).len() < self.pipe_cap
                    && !e.inbound.buf.is_empty()
                {
                    ready.push(Ready::SpliceIn(i, side));
                }
                // Nothing is read into the core (nor EOF told) while bytes
                // read before wait in the pipe: the order is kept.
                if read && !piped {
                    if !e.inbound.buf.is_empty() || (e.inbound.eof && !e.eof_reported) {
                        ready.push(Ready::ProxyRead(i, side));
                    } else if self.read_blocked && !e.inbound.eof && !e.blocked_reported {
                        ready.push(Ready::ProxyBlocked(i, side));
                    }
                }
                if write && e.outbound.room() > 0 {
                    ready.push(Ready::ProxyWrite(i, side));
                }
            }
        }
        if self.jitter && !ready.is_empty() && self.dice.chance(1, 8) {
            ready.push(Ready::Tick);
        }
        self.ready = ready;
    }

    /// Nothing is ready: time passes to the next thing that will happen.
    fn jump(&mut self) -> bool {
        let now = self.now();
        let mut next: Option<Duration> = None;
        let mut consider = |t: Duration| {
            if t > now {
                next = Some(next.map_or(t, |n: Duration| n.min(t)));
            }
        };
        if !self.rt.is_finished() {
            if let Some(t) = self.rt.deadline() {
                consider(t);
            }
        }
        for c in &self.conns {
            if c.id.is_none() && !c.done() {
                consider(c.at);
            }
        }
        self.net.pending.iter().for_each(|p| consider(p.at));
        for p in &self.peers {
            if let Some(w) = p.wake.filter(|_| p.started && !p.done()) {
                consider(w);
            }
        }
        self.alarms.iter().for_each(|a| consider(*a));
        let Some(t) = next else {
            return false;
        };
        self.rt.set_now(t);
        self.rt.note(|| Entry::Jump);
        self.timeout();
        true
    }

    /// `handle_timeout` now, then the check a runtime would notice: nothing
    /// may be left due.
    fn timeout(&mut self) {
        self.rt.handle_timeout();
        self.drain();
        self.rt.assert_not_due();
    }

    pub(super) fn id(&self, i: usize) -> ConnId {
        match self.conns[i].id {
            Some(id) => id,
            None => panic!("{}: connection {i} has no id", self.tag),
        }
    }

    /// The peer at `side` of connection `i` (it exists: the op was ready).
    pub(super) fn end(&self, i: usize, side: Side) -> PeerId {
        self.conns[i].peer(side).expect("a socket on that side")
    }

    fn perform(&mut self, op: Ready) {
        let now = self.now();
        match op {
            Ready::Tick => {
                let d = self
                    .dice
                    .duration(Duration::from_micros(1), Duration::from_millis(2));
                self.rt.advance(d);
                self.timeout();
            }
            Ready::Accept(i) => self.accept(i),
            Ready::Deliver(j) => {
                let p = self.net.pending.remove(j);
                self.deliver(p.what);
            }
            Ready::RemoteWrite(p) => {
                let k = self.dice.chop(self.peers[p].can_write());
                self.peers[p].write(k);
            }
            Ready::RemoteRead(p) => {
                let k = self.dice.chop(self.peers[p].outbound.buf.len());
                self.peers[p].read(k);
            }
            Ready::ProxyRead(i, side) => {
                self.io_steps += 1;
                let (id, p) = (self.id(i), self.end(i, side));
                let e = &mut self.peers[p];
                if e.reset {
                    let error = IoKind::Reset;
                    self.rt.handle(Event::IoError {
                        conn: id,
                        side,
                        error,
                    });
                    return;
                }
                if e.inbound.buf.is_empty() {
                    e.eof_reported = true;
                    self.rt.handle(Event::Eof { conn: id, side });
                    return;
                }
                let avail = e.inbound.buf.len().min(self.max_read);
                let (dice, inbound) = (&mut self.dice, &mut e.inbound.buf);
                let read = self.rt.recv(id, side, |buf| {
                    let k = dice.read(avail.min(buf.len()));
                    for (dst, src) in buf.iter_mut().zip(inbound.drain(..k)) {
                        *dst = src;
                    }
                    k
                });
                assert!(
                    read.is_some(),
                    "{}: the core wants a read on {id} {side:?} but recv_buf lends nothing",
                    self.tag
                );
                self.conns[i].last_io = Some(now);
            }
            Ready::ProxyBlocked(i, side) => {
                self.io_steps += 1;
                let (id, p) = (self.id(i), self.end(i, side));
                // A real runtime lends the buffer to read(2), which would block.
                let _ = self.rt.lend(id, side);
                self.peers[p].blocked_reported = true;
                self.rt.handle(Event::ReadBlocked { conn: id, side });
            }
            Ready::SpliceIn(i, from) => {
                let (id, p) = (self.id(i), self.end(i, from));
                assert!(
                    self.rt.splice_ok(id, from),
                    "{}: splice_ok turned false between two calls",
                    self.tag
                );
                let c = &mut self.conns[i];
                let room = self.pipe_cap - c.pipe(from).len();
                let inbound = &mut self.peers[p].inbound.buf;
                let k = self.dice.chop(inbound.len().min(room));
                c.pipe[from.index()].extend(inbound.drain(..k));
            }
            Ready::SpliceOut(i, from) => {
                self.io_steps += 1;
                let (id, p) = (self.id(i), self.end(i, from.other()));
                let c = &mut self.conns[i];
                let to = &mut self.peers[p].outbound;
                assert!(
                    !to.eof,
                    "{}: spliced to {id} {:?} after its ShutdownWrite",
                    self.tag,
                    from.other()
                );
                let k = self.dice.chop(c.pipe(from).len().min(to.room()));
                to.buf.extend(c.pipe[from.index()].drain(..k));
                c.last_io = Some(now);
                self.spliced += k as u64;
                self.rt.handle(Event::Spliced {
                    conn: id,
                    from,
                    n: k,
                });
            }
            Ready::ProxyWrite(i, side) => {
                self.io_steps += 1;
                let (id, p) = (self.id(i), self.end(i, side));
                let out = &mut self.peers[p].outbound;
                assert!(
                    !out.eof,
                    "{}: a write on {id} {side:?} after its ShutdownWrite",
                    self.tag
                );
                let room = out.room().min(self.max_write);
                let dice = &mut self.dice;
                let wrote = self.rt.send(id, side, |[said, forwarded]| {
                    // A vectored write moves both parts at once; a plain
                    // one only the first.
                    let vectored = said.is_empty() || dice.chance(1, 2);
                    let len = said.len() + if vectored { forwarded.len() } else { 0 };
                    let k = dice.write(len.min(room));
                    let first = k.min(said.len());
                    out.buf.extend(&said[..first]);
                    out.buf.extend(&forwarded[..k - first]);
                    k
                });
                match wrote {
                    None => panic!(
                        "{}: the core wants a write on {id} {side:?} but send_buf shows nothing",
                        self.tag
                    ),
                    Some(0) => {}
                    Some(_) => self.conns[i].last_io = Some(now),
                }
            }
        }
    }

    // -------------------------------------------------------------- actions

    /// Carries out every action the core has queued, then checks the table.
    pub fn drain(&mut self) {
        while let Some(action) = self.rt.poll() {
            self.apply(action);
        }
        self.rt.check();
    }

    /// Stops accepting and lets connections finish (see `Proxy::shutdown`).
    pub fn shutdown(&mut self) {
        self.rt.shutdown();
        self.drain();
    }

    // ------------------------------------------------------- what happened

    pub fn peer(&self, p: PeerId) -> &Peer {
        &self.peers[p]
    }

    /// The client of connection `i`.
    pub fn client_of(&self, i: usize) -> &Peer {
        &self.peers[self.conns[i].client]
    }

    /// The upstream peer of connection `i` (the last, or the planned one).
    pub fn server_of(&self, i: usize) -> Option<&Peer> {
        self.conns[i].server.map(|p| &self.peers[p])
    }

    /// The interest last told for one of connection `i`'s sockets.
    pub fn interest(&self, i: usize, side: Side) -> (bool, bool) {
        self.conns[i]
            .id
            .map_or((false, false), |id| self.rt.interest(id, side))
    }

    /// The upstream peers made for connections to `addr`, in order.
    pub fn servers_at(&self, addr: SocketAddr) -> Vec<&Peer> {
        self.servers(|p| p.addr == addr)
    }

    /// The upstream peers made for connection `i`, in order.
    pub fn servers_of(&self, i: usize) -> Vec<&Peer> {
        self.servers(|p| p.conn == i)
    }

    fn servers(&self, which: impl Fn(&Peer) -> bool) -> Vec<&Peer> {
        let all = self.upstreams.iter().map(|&p| &self.peers[p]);
        all.filter(|p| which(p)).collect()
    }

    /// The addresses connected to for connection `i`, in order.
    pub fn connects_of(&self, i: usize) -> Vec<SocketAddr> {
        self.connects
            .iter()
            .filter(|(c, _)| *c == i)
            .map(|(_, a)| *a)
            .collect()
    }

    /// The access records of the client at `addr`.
    pub fn access_of(&self, client: SocketAddr) -> Vec<&AccessRecord> {
        self.rt
            .access
            .iter()
            .filter(|r| r.client == client)
            .collect()
    }

    /// The one access record of the client at `addr`.
    pub fn record(&self, client: SocketAddr) -> &AccessRecord {
        let recs = self.access_of(client);
        if recs.len() != 1 {
            panic!(
                "{}: {} access records for {client}: {recs:?}",
                self.tag,
                recs.len()
            );
        }
        recs[0]
    }

    /// The (first) access record of connection `i`, and its status.
    pub fn record_of(&self, i: usize) -> Option<&AccessRecord> {
        self.access_of(self.client_of(i).addr).into_iter().next()
    }

    pub fn status(&self, i: usize) -> Option<&str> {
        self.record_of(i).map(|r| r.status.as_str())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if !(std::thread::panicking() || tracing() && replaying()) {
            return;
        }
        eprintln!(
            "--- simulation {} at {:?}, step {}:",
            self.tag,
            self.now(),
            self.steps
        );
        self.rt.print_trace();
        for (i, c) in self.conns.iter().enumerate() {
            let ends: Vec<String> = [Some(c.client), c.server]
                .into_iter()
                .flatten()
                .map(|p| {
                    let e = &self.peers[p];
                    format!(
                        "{} sent {}/{} got {}{}{}",
                        e.label,
                        e.sent,
                        e.script_bytes.len(),
                        e.received.len(),
                        if e.received_eof { "+eof" } else { "" },
                        if e.done() { "" } else { " (not done)" },
                    )
                })
                .collect();
            eprintln!(
                "  conn {i}: id {:?} refused {:?}{} closed {:?} status {:?}: {}",
                c.id,
                c.refused,
                if c.os_refused { " (by the OS)" } else { "" },
                c.closed_at,
                self.status(i),
                ends.join("; ")
            );
        }
    }
}
