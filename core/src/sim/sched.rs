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

use super::check::same_bytes;
use super::net::{Deliver, Net, Pipe, Server};
use super::peers::{Behavior, Dial, Io};
use super::rng::{Dice, Rng};
use super::runtime::{Entry, ListenState, Runtime};
use super::seeds::{replaying, tracing};
use super::side_index;
use crate::{AccessRecord, Action, Config, ConnId, Event, IoKind, Level, Refused, Side};

/// Steps taken before a run is declared stuck in a loop.
const MAX_STEPS: u64 = 5_000_000;
/// Trace entries kept to print when a run fails (more when replaying).
const TRACE_KEEP: usize = 80;
const TRACE_REPLAY: usize = 20_000;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub type PeerId = usize;

/// A program at the far end of a socket, and that socket.
pub struct Peer {
    pub label: String,
    /// A client's own address; where a server was connected to.
    pub addr: SocketAddr,
    /// A server: the local address of the core's socket.
    pub local: Option<SocketAddr>,
    /// The connection (index in [`Sim::conns`]) it belongs to.
    pub conn: usize,
    behavior: Box<dyn Behavior>,
    /// Every byte its program means to send, when known in advance.
    pub script_bytes: Vec<u8>,
    /// Its program runs (accepted, refused, or connected to).
    pub started: bool,
    /// The core's end of the socket exists.
    pub open: bool,
    /// It does not read (a slow or stalled client).
    pub stalled: bool,
    /// It reset the connection.
    pub reset: bool,
    /// Written by its program, not yet into the socket.
    pub unsent: VecDeque<u8>,
    shut_asked: bool,
    /// Peer → core.
    pub inbound: Pipe,
    /// Core → peer.
    pub outbound: Pipe,
    pub received: Vec<u8>,
    pub received_eof: bool,
    /// Bytes it wrote into the socket.
    pub sent: usize,
    wake: Option<Duration>,
    /// The core was told about the EOF on `inbound`.
    eof_reported: bool,
    /// The core was told a read would block, and nothing arrived since.
    blocked_reported: bool,
    /// A wanted read (write) found nothing lent (shown): none is tried
    /// until the core tells this socket's interest again.
    mute: [bool; 2],
}

impl Peer {
    /// Every byte its script sends went into the socket.
    pub fn sent_all(&self) -> bool {
        self.sent == self.script_bytes.len()
    }

    pub fn done(&self) -> bool {
        self.behavior.done()
    }

    /// The core closed its end: the peer reads what was sent, then EOF.
    fn gone(&mut self) {
        if self.open || self.started {
            self.outbound.eof = true;
        }
        self.open = false;
    }
}

/// How a client's planned server answers its connect.
enum Plan {
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
    plan: Option<Plan>,
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
    attempt: u32,
}

impl Conn {
    /// Refused at accept, or closed by the core.
    pub fn done(&self) -> bool {
        self.refused.is_some() || self.os_refused || self.closed_at.is_some()
    }

    /// The pipe of the direction `from` feeds.
    pub fn pipe(&self, from: Side) -> &VecDeque<u8> {
        &self.pipe[side_index(from)]
    }

    fn peer(&self, side: Side) -> Option<PeerId> {
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
    live: BTreeMap<ConnId, usize>,
    /// Every `Connect`: (connection, address), in order.
    pub connects: Vec<(usize, SocketAddr)>,
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
    /// A wanted read finds space lent, and a wanted write finds bytes
    /// shown; when false, one that does not waits for the core's next
    /// `Interest` for that socket (as a runtime that stops at an empty
    /// read does).
    pub strict: bool,
    /// The most one read into the core, and one write out of it, moves.
    pub max_read: usize,
    pub max_write: usize,
    /// Bytes that went through the pipes.
    pub spliced: u64,
    pub steps: u64,
    /// Steps that called into the core with a read, write or splice.
    pub io_steps: u64,
    /// Extra wake-up times (see [`Sim::run_for`]).
    alarms: Vec<Duration>,
    /// Scratch space for the ready operations of one step.
    ready: Vec<Ready>,
    /// Ports handed out (data ports, upstream sockets).
    ports: u16,
}

impl Sim {
    /// A table over `config` with its listeners open, the choices drawn
    /// from `seed`.
    pub fn new(name: &str, seed: u64, config: Config) -> Sim {
        Sim::with_dice(name, seed, config, Dice::Random(Rng::new(seed)))
    }

    pub fn with_dice(name: &str, seed: u64, config: Config, mut dice: Dice) -> Sim {
        let mut rt = Runtime::new(config, seed, Instant::now());
        if replaying() {
            rt.set_log_level(Level::Debug);
            rt.keep_trace(TRACE_REPLAY);
        } else {
            rt.keep_trace(TRACE_KEEP);
        }
        let jitter = dice.chance(1, 2);
        let splice = !dice.is_given() && seed % 2 == 1;
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
            upstreams: Vec::new(),
            listens: Vec::new(),
            jitter,
            read_blocked: true,
            strict: true,
            splice,
            pipe_cap,
            max_read: usize::MAX,
            max_write: usize::MAX,
            spliced: 0,
            steps: 0,
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

    fn new_peer(
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
            mute: [false; 2],
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
            self.steps < MAX_STEPS,
            "{}: {MAX_STEPS} steps and still going: a livelock",
            self.tag
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
            if !peer.started || peer.behavior.done() || peer.wake.is_some_and(|w| w > now) {
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
        for (p, e) in self.peers.iter().enumerate() {
            if !e.started {
                continue;
            }
            if e.open && !e.inbound.eof && !e.reset && !e.unsent.is_empty() && e.inbound.room() > 0
            {
                ready.push(Ready::RemoteWrite(p));
            }
            if !e.stalled && (!e.outbound.buf.is_empty() || (e.outbound.eof && !e.received_eof)) {
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
                let (read, write) = interest[side_index(side)];
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
                let (read, write) = (read && !e.mute[0], write && !e.mute[1]);
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

    fn id(&self, i: usize) -> ConnId {
        match self.conns[i].id {
            Some(id) => id,
            None => panic!("{}: connection {i} has no id", self.tag),
        }
    }

    /// The peer at `side` of connection `i` (it exists: the op was ready).
    fn end(&self, i: usize, side: Side) -> PeerId {
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
                let e = &mut self.peers[p];
                let k = self.dice.chop(e.unsent.len().min(e.inbound.room()));
                e.inbound.buf.extend(e.unsent.drain(..k));
                e.sent += k;
                e.blocked_reported = false;
                if e.unsent.is_empty() && e.shut_asked {
                    e.inbound.eof = true;
                }
            }
            Ready::RemoteRead(p) => {
                let e = &mut self.peers[p];
                if e.outbound.buf.is_empty() {
                    e.received_eof = true;
                } else {
                    let k = self.dice.chop(e.outbound.buf.len());
                    e.received.extend(e.outbound.buf.drain(..k));
                }
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
                if read.is_none() {
                    assert!(
                        !self.strict,
                        "{}: the core wants a read on {id} {side:?} but recv_buf lends nothing",
                        self.tag
                    );
                    self.peers[p].mute[0] = true;
                    return;
                }
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
                c.pipe[side_index(from)].extend(inbound.drain(..k));
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
                to.buf.extend(c.pipe[side_index(from)].drain(..k));
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
                    None => {
                        assert!(
                            !self.strict,
                            "{}: the core wants a write on {id} {side:?} but send_bufs shows \
                             nothing",
                            self.tag
                        );
                        self.peers[p].mute[1] = true;
                    }
                    Some(0) => {}
                    Some(_) => self.conns[i].last_io = Some(now),
                }
            }
        }
    }

    fn accept(&mut self, i: usize) {
        let c = &self.conns[i];
        let peer = self.peers[c.client].addr;
        let listener = self.rt.listener_at(c.to).map(|l| (l.id, l.asked == c.to));
        let Some((listener, plain)) = listener else {
            // Nobody listens there: the OS refuses the connection.
            self.conns[i].os_refused = true;
            let client = &mut self.peers[self.conns[i].client];
            client.started = true;
            client.outbound.eof = true;
            return;
        };
        // The local address, as a runtime that asks the socket tells it;
        // one that knows the listener's address may leave it out.
        let local = (!plain || !self.dice.chance(1, 2)).then_some(c.to);
        let result = self.rt.accept(listener, peer, local);
        let now = self.now();
        let c = &mut self.conns[i];
        c.accepted_at = Some(now);
        let client = &mut self.peers[c.client];
        client.started = true;
        match result {
            Ok(id) => {
                c.id = Some(id);
                client.open = true;
                self.live.insert(id, i);
            }
            Err(why) => {
                // The runtime closes the socket: the client sees EOF.
                c.refused = Some(why);
                client.outbound.eof = true;
            }
        }
    }

    fn deliver(&mut self, what: Deliver) {
        let now = self.now();
        match what {
            Deliver::Listening { listener, local } => {
                let closed = self
                    .rt
                    .listeners()
                    .iter()
                    .any(|l| l.id == listener && l.state == ListenState::Closed);
                if !closed {
                    self.rt.handle(Event::Listening { listener, local });
                }
            }
            Deliver::Answer {
                conn,
                attempt,
                result,
            } => {
                let id = self.id(conn);
                let event = match result {
                    Ok(local) => Event::Connected { conn: id, local },
                    Err(error) => Event::ConnectFailed { conn: id, error },
                };
                let c = &mut self.conns[conn];
                if c.closed_at.is_some() {
                    return self.rt.handle_stale(id, Side::Upstream, event);
                }
                if c.attempt != attempt {
                    return;
                }
                c.answered_at = Some(now);
                if let (Ok(local), Some(p)) = (result, c.server) {
                    c.connected_at = Some(now);
                    let server = &mut self.peers[p];
                    server.open = true;
                    server.started = true;
                    server.local = Some(local);
                }
                self.rt.handle(event);
            }
            Deliver::Resolved { conn, addrs } => {
                self.event_for(conn, Event::Resolved { conn, addrs });
            }
            Deliver::ResolveFailed { conn } => {
                self.event_for(conn, Event::ResolveFailed { conn });
            }
        }
    }

    /// An event for `conn`, which may have closed since it was asked for.
    fn event_for(&mut self, conn: ConnId, event: Event) {
        if self.rt.is_live(conn) {
            self.rt.handle(event);
        } else {
            self.rt.handle_stale(conn, Side::Upstream, event);
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

    /// What the network and the peers make of an action (the runtime has
    /// carried it out on its record and checked it).
    fn apply(&mut self, action: Action) {
        let now = self.now();
        match action {
            Action::Listen { listener, addr } => {
                let local = if addr.port() == 0 {
                    self.ports += 1;
                    let port = 50000 + self.ports * 7 + self.dice.below(7) as u16;
                    SocketAddr::new(addr.ip(), port)
                } else {
                    addr
                };
                self.listens.push((listener, addr, local));
                // Those of the start open at once.
                let at = if self.steps == 0 {
                    now
                } else {
                    now + self.dice.duration(Duration::ZERO, Duration::from_millis(2))
                };
                self.net.deliver(at, Deliver::Listening { listener, local });
            }
            Action::Resolve { conn, host, port } => {
                let what = match self.net.resolve(&host, port) {
                    Some(addrs) => Deliver::Resolved { conn, addrs },
                    None => Deliver::ResolveFailed { conn },
                };
                let at = now + self.dice.duration(Duration::ZERO, Duration::from_millis(5));
                self.net.deliver(at, what);
            }
            Action::Connect { conn, addr, .. } => self.connect(self.live[&conn], addr),
            Action::Interest { conn, side, .. } => {
                let i = self.live[&conn];
                if let Some(p) = self.conns[i].peer(side) {
                    self.peers[p].mute = [false; 2];
                }
            }
            Action::CloseUpstream { conn } => {
                let i = self.live[&conn];
                let c = &mut self.conns[i];
                c.attempt += 1;
                if let Some(p) = c.server.take() {
                    self.peers[p].gone();
                }
            }
            Action::ShutdownWrite { conn, side } => {
                let i = self.live[&conn];
                assert!(
                    self.conns[i].pipe(side.other()).is_empty(),
                    "{}: ShutdownWrite on {conn} {side:?} with bytes still in the pipe",
                    self.tag
                );
                let p = self.end(i, side);
                self.peers[p].outbound.eof = true;
            }
            Action::Close { conn } => {
                let i = self.live.remove(&conn).expect("a live connection");
                let c = &mut self.conns[i];
                c.closed_at = Some(now);
                // What the runtime's pipes held is lost with the sockets.
                c.pipe = Default::default();
                for p in [Some(c.client), c.server].into_iter().flatten() {
                    self.peers[p].gone();
                }
            }
            Action::Access(rec) => {
                assert!(
                    self.conns
                        .iter()
                        .any(|c| self.peers[c.client].addr == rec.client),
                    "{}: access record for unknown client {}",
                    self.tag,
                    rec.client
                );
            }
            _ => {}
        }
    }

    /// The core asks connection `i`'s upstream socket to connect to `addr`.
    fn connect(&mut self, i: usize, addr: SocketAddr) {
        let now = self.now();
        self.connects.push((i, addr));
        let c = &mut self.conns[i];
        c.attempt += 1;
        c.connect_asked_at = Some(now);
        if let Some(old) = c.server.take() {
            // A new socket replaces the one whose connect failed.
            self.peers[old].gone();
        }
        let (plan, delay) = match self.conns[i].plan.take() {
            Some(plan) => (plan, self.conns[i].delay),
            None => {
                let delay = self
                    .dice
                    .duration(Duration::ZERO, Duration::from_millis(20));
                let plan = match self.net.connect(addr) {
                    Server::Accept(b) => {
                        let n = self
                            .upstreams
                            .iter()
                            .filter(|&&p| self.peers[p].addr == addr);
                        let label = format!("server {addr} #{}", n.count());
                        Plan::Accept(self.new_peer(label, addr, i, b))
                    }
                    Server::Silent => Plan::Silent,
                    other => Plan::Fail(other.error().unwrap_or(IoKind::Refused)),
                };
                (plan, delay)
            }
        };
        let attempt = self.conns[i].attempt;
        let result = match plan {
            Plan::Accept(p) => {
                self.peers[p].addr = addr;
                self.upstreams.push(p);
                self.conns[i].server = Some(p);
                self.ports += 1;
                let port = 30000 + self.ports * 13 + self.dice.below(13) as u16;
                Ok(SocketAddr::new(LOCALHOST, port))
            }
            Plan::Fail(error) => Err(error),
            // The connect hangs until the core gives up.
            Plan::Silent => return,
        };
        let what = Deliver::Answer {
            conn: i,
            attempt,
            result,
        };
        self.net.deliver(now + delay, what);
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
        self.upstreams
            .iter()
            .map(|&p| &self.peers[p])
            .filter(|p| p.addr == addr)
            .collect()
    }

    /// The upstream peers made for connection `i`, in order.
    pub fn servers_of(&self, i: usize) -> Vec<&Peer> {
        self.upstreams
            .iter()
            .map(|&p| &self.peers[p])
            .filter(|p| p.conn == i)
            .collect()
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

    pub fn check_record(
        &self,
        rec: &AccessRecord,
        method: &str,
        status: &str,
        destination: Option<SocketAddr>,
        user: Option<&str>,
    ) {
        let tag = &self.tag;
        assert_eq!(rec.method, method, "{tag}: method of {rec:?}");
        assert_eq!(rec.status, status, "{tag}: status of {rec:?}");
        assert_eq!(
            rec.destination, destination,
            "{tag}: destination of {rec:?}"
        );
        assert_eq!(rec.user.as_deref(), user, "{tag}: user of {rec:?}");
    }

    /// The client of connection `i` got exactly `want`, then end of stream.
    pub fn check_client(&self, i: usize, want: &[u8]) {
        let c = self.client_of(i);
        let what = format!("what {} received", c.label);
        same_bytes(&self.tag, &what, &c.received, want);
        assert!(
            c.received_eof,
            "{}: {} saw no end of stream",
            self.tag, c.label
        );
    }

    /// Every peer is done, every connection ended, the table is empty with
    /// no timer and no buffer left, and no data port is left open.
    pub fn assert_settled(&self) {
        let tag = &self.tag;
        for p in &self.peers {
            let c = &self.conns[p.conn];
            if !p.done() && c.refused.is_none() && !c.os_refused {
                panic!(
                    "{tag}: {} never finished: waiting for {}; it received {} bytes: \"{}\"",
                    p.label,
                    p.behavior.waiting(),
                    p.received.len(),
                    super::check::show(&p.received[p.received.len().saturating_sub(300)..]),
                );
            }
        }
        for (i, c) in self.conns.iter().enumerate() {
            assert!(
                c.done(),
                "{tag}: connection {i} ({:?}) was never closed",
                c.id
            );
        }
        self.rt.assert_empty();
        let open_data_port = self.listens.iter().find(|(l, asked, _)| {
            asked.port() == 0
                && self
                    .rt
                    .listeners()
                    .iter()
                    .any(|x| x.id == *l && x.state != ListenState::Closed)
        });
        assert!(
            open_data_port.is_none(),
            "{tag}: data port {open_data_port:?} left open"
        );
    }

    /// No diagnostic at warn or error level was logged.
    pub fn assert_quiet(&self) {
        let loud: Vec<_> = self
            .rt
            .logs
            .iter()
            .filter(|(l, _)| *l <= Level::Warn)
            .collect();
        assert!(loud.is_empty(), "{}: {loud:?}", self.tag);
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
