//! The mio event loops: one per worker thread (`[runtime] workers`), each
//! over its own sockets and its own connection table; the tables share
//! only the ledger of process-wide limits (see `portico_core::ledger`).
//!
//! Every worker listens on every TCP address (see `portico_runtime::net::
//! Ports`); every worker's listeners are open before any worker accepts.
//! Worker 0 alone handles signals and UDP; it tells the others to stop,
//! to reload and to reopen their access logs, and a status request on any
//! worker asks the others for their tables (see `portico_runtime::Worker`).
//!
//! Root is given up (`[process] user`) once every worker's listeners are
//! open and before any other thread starts, the resolvers' included: a
//! thread starts with its creator's capabilities, and only the one
//! capability kept (opening ports below 1024, for a reload) is left.
//!
//! Sockets are registered once, edge-triggered, for both directions; the loop
//! caches readiness per socket and attempts an operation when the socket is
//! ready *and* the core wants it (its last `Interest`). Reads and writes go
//! straight into and out of the core's buffers. Each wake-up does a bounded
//! amount of work per connection: a connection with more to do is queued
//! again behind the others, so none starves the rest. A short read means
//! the socket is empty: the read that would only say WouldBlock is not
//! made (new bytes raise a new edge), and after the peer's FIN neither is
//! the one that would only say end of stream. A socket known readable that
//! nothing can read for now (the core's buffer or the pipe is full) is
//! registered for writing only once more bytes are announced, so that each
//! further segment does not wake the loop; it is registered for both again
//! just before its next read.
//!
//! A direction the core calls a pure relay moves through a pipe with
//! splice(2) instead, in the order `portico_runtime::directions` keeps:
//! socket → pipe while the pipe has room, pipe → socket while the other
//! socket is writable.
//!
//! Tokens: `2 * index` is a connection's client socket, `2 * index + 1` its
//! upstream socket; a connect attempt racing the upstream one (Happy
//! Eyeballs) is `RACE_BASE + (index << 16 | attempt % 2^16)` until it wins
//! (then it takes the upstream token) or goes; listeners and the signal
//! pipe live at the top of the token space.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use portico_runtime::checks::{self, Checkers};
use portico_runtime::helpers::Helpers;
use portico_runtime::net::{self, Connecting, Ports};
use portico_runtime::resolver::{Inbox, Resolvers};
use portico_runtime::splice::Pipes;
use portico_runtime::{
    log, ConnCmd, ConnId, Datagrams, Drained, Event, Filled, Intercept, IoKind, Level, ListenCmd,
    ListenerId, Pair, Placed, Plan, ReadOp, Seen, Side, Signals, Slots, Start, Step, Table, UdpCmd,
    UdpKey, Wake, Worker, EXIT_OK, EXIT_RUNTIME,
};

const SIGNAL: Token = Token(usize::MAX);
/// The loop's one waker: resolver answers or mail from another worker.
const WOKEN: Token = Token(usize::MAX - 1);
/// Threads that resolve names (for all workers), so no loop waits on DNS.
const RESOLVERS: usize = 4;
const LISTENER_BASE: usize = usize::MAX / 2;
/// Racing connect attempts sit below the listeners (see the module docs).
const RACE_BASE: usize = usize::MAX / 4;
/// The bits of a racing token that hold the attempt (its low bits: the
/// attempts racing at once are a few consecutive numbers).
const RACE_BITS: u32 = 16;
/// UDP listeners and UDP mappings sit above the TCP listeners.
const UDP_LISTENER_BASE: usize = LISTENER_BASE + (1 << 21);
const UDP_MAP_BASE: usize = LISTENER_BASE + (1 << 22);
/// SOCKS UDP associations' sockets, two per connection.
const UDP_ASSOC_BASE: usize = LISTENER_BASE + (1 << 23);
/// SOCKS BIND listeners, one per connection (above the UDP tokens).
const BIND_BASE: usize = LISTENER_BASE + (1 << 25);
/// Datagrams one UDP socket may take before the others get a turn.
const DATAGRAMS_PER_TURN: usize = 64;
/// Reads or writes one connection may do before the others get a turn.
const OPS_PER_TURN: usize = 16;
/// Accepts one listener may do before the others get a turn.
const ACCEPTS_PER_TURN: usize = 64;

#[derive(Default, Clone, Copy)]
struct Sock {
    readable: bool,
    writable: bool,
    want_read: bool,
    want_write: bool,
    /// The peer has closed (or the socket failed): readable until a read
    /// says so, whatever a short read suggests.
    hup: bool,
    /// The socket failed (EPOLLERR): its next read says how.
    err: bool,
    /// A short read after the peer's FIN emptied the socket: the next read
    /// can only say end of stream, so it is told without the syscall.
    drained: bool,
    /// Registered for writing only: readiness to read came again while
    /// unread (the core or the pipe had no room), and each new segment
    /// would wake the loop for nothing. Registered for both again before
    /// the next read.
    muted: bool,
}

struct Conn {
    pair: Pair<TcpStream>,
    sock: [Sock; 2],
    queued: bool,
    /// Racing attempts whose socket signalled, with whether it was clean
    /// (writable, no error, no hang-up): their outcome is to be read.
    signalled: Vec<(u32, bool)>,
}

/// The token of racing connect attempt `attempt` of `conn`.
fn race_token(conn: ConnId, attempt: u32) -> Token {
    let low = attempt as usize & ((1 << RACE_BITS) - 1);
    Token(RACE_BASE + (conn.index() << RACE_BITS | low))
}

impl Conn {
    /// `side` is known readable and not muted, but nothing would read it
    /// now (see [`Sock::muted`]).
    fn stalled(&self, table: &Table, side: Side) -> bool {
        let s = self.sock[side.index()];
        s.readable && !s.muted && self.read_op(table, side) == ReadOp::Nothing
    }

    /// Changes what `side`'s socket is registered for.
    fn reregister(
        &mut self,
        registry: &Registry,
        side: Side,
        interest: Interest,
    ) -> io::Result<()> {
        let token = Token(self.pair.id.index() * 2 + side.index());
        match self.pair.stream_mut(side) {
            Some(s) => registry.reregister(s, token, interest),
            None => Ok(()),
        }
    }

    /// What reading `side` would do now: wanted by the core, and known
    /// readable.
    fn read_op(&self, table: &Table, side: Side) -> ReadOp {
        let s = self.sock[side.index()];
        let id = self.pair.id;
        let wants = s.want_read && s.readable;
        self.pair.read_op(side, wants, || table.splice_ok(id, side))
    }

    /// The pipe toward `side` holds bytes `side` can take now.
    fn pipe_out_ready(&self, side: Side) -> bool {
        self.pair.dirs.piped(side.other()) && self.sock[side.index()].writable
    }

    /// Anything both wanted and ready: a connect's outcome, a read, a
    /// splice or a write.
    fn has_work(&self, table: &Table) -> bool {
        let id = self.pair.id;
        (self.pair.connecting && self.sock[1].writable)
            || !self.signalled.is_empty()
            || [Side::Client, Side::Upstream].into_iter().any(|side| {
                if !self.pair.open(side) {
                    return false;
                }
                let s = self.sock[side.index()];
                let reads = s.want_read && s.readable;
                let ok = || table.splice_ok(id, side);
                let (r, w) = self.pair.dirs.wants(side, reads, s.want_write, ok);
                r || (w && s.writable)
            })
    }
}

struct Lst {
    sock: TcpListener,
    /// The SO_REUSEPORT group this socket is in.
    group: Option<SocketAddr>,
    /// The address every accepted socket has locally, unless the listener
    /// is on a wildcard address (then each socket is asked).
    local: Option<SocketAddr>,
    /// A transparent service's: how an accepted connection's original
    /// destination is read.
    intercept: Option<Intercept>,
    ready: bool,
    paused: bool,
    queued: bool,
}

struct Loop {
    poll: Poll,
    table: Table,
    conns: Slots<ConnId, Conn>,
    listeners: Slots<ListenerId, Lst>,
    ports: Ports,
    /// Connections with work to do this turn.
    work: Vec<usize>,
    /// Listeners with connections to accept.
    accept_work: Vec<usize>,
    resolvers: Resolvers,
    /// The password-checking threads; their verdicts come to `answers`.
    checkers: Checkers,
    /// The `[auth] helper` processes, shared by every loop; their answers
    /// come to `answers`.
    helpers: Arc<Helpers>,
    /// Names this loop asked the resolvers for, answered; verdicts on the
    /// passwords it asked the checkers about.
    answers: Arc<Inbox>,
    /// Worker 0's signals, and the pipe that wakes it for them.
    signals: Option<(Signals, UnixStream)>,
    udp: Datagrams,
    /// UDP sockets (tokens) with datagrams left to read.
    udp_work: Vec<Token>,
    /// SOCKS BIND listeners, and the connection each holds until the
    /// core says what becomes of it.
    binds: Slots<ConnId, (TcpListener, Option<TcpStream>)>,
    /// BIND listeners (by connection index) that may have connections
    /// waiting.
    bind_work: Vec<usize>,
    worker: Worker,
    /// Empty pipes for directions that start splicing.
    pipes: Pipes,
}

/// Registers a UDP socket for datagrams.
fn register_udp(registry: &Registry, u: &std::net::UdpSocket, key: UdpKey) -> io::Result<()> {
    let token = match key {
        UdpKey::Port(i) => Token(UDP_LISTENER_BASE + i),
        UdpKey::Mapping(i) => Token(UDP_MAP_BASE + i),
        UdpKey::Association(i, out) => Token(UdpKey::association_token(i, out, UDP_ASSOC_BASE)),
    };
    registry.register(&mut SourceFd(&u.as_raw_fd()), token, Interest::READABLE)
}

/// Serves `plan` until it is finished: the exit code, or why it could not
/// serve.
pub fn run(plan: Plan) -> Result<i32, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = plan.workers(cores);
    let (start, others) = Start::workers(plan, n)?;
    let failed = |e: io::Error| format!("cannot create the event loop: {e}");
    // Every loop's poll and waker first: each worker wakes the others.
    let mut polls = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new().map_err(failed)?;
        let waker = Arc::new(Waker::new(poll.registry(), WOKEN).map_err(failed)?);
        polls.push((poll, waker));
    }
    let wakes = polls.iter().map(|(_, w)| {
        let w = w.clone();
        Arc::new(move || w.wake().is_ok()) as Wake
    });
    let credentials = start.credentials.clone();
    let ledger = start.table.ledger();
    let workers = Worker::new(wakes.collect(), start.path, start.recheck);
    // Its threads start once privileges are given up (below).
    let (resolvers, resolver_threads) = Resolvers::new();
    let (checkers, checker_threads) = Checkers::new();
    let helpers = Helpers::new();
    let ports = Ports::new(n);
    // Worker 0's alone: the signals, and the trace (one worker records).
    let (flags, wake) = Signals::install()?;
    let wake = wake
        .set_nonblocking(true)
        .map(|()| UnixStream::from_std(wake))
        .map_err(|e| format!("cannot set up signals: {e}"))?;
    let mut signals = Some((flags, wake));
    let tables = std::iter::once(start.table).chain(others);
    let mut loops = Vec::with_capacity(n);
    for (((poll, waker), worker), table) in polls.into_iter().zip(workers).zip(tables) {
        let mut signals = signals.take();
        if let Some((_, wake)) = signals.as_mut() {
            poll.registry()
                .register(wake, SIGNAL, Interest::READABLE)
                .map_err(|e| format!("cannot set up signals: {e}"))?;
        }
        let answers = Inbox::new(Arc::new(move || waker.wake().is_ok()));
        // Worker 0 opens the listeners before any other worker: a port
        // that cannot be had is reported once, and fatal at once. The
        // others open theirs before any worker accepts, so that
        // connections taken early cannot use up the descriptors a worker's
        // listener needs.
        let mut lp = Loop {
            poll,
            table,
            conns: Slots::default(),
            listeners: Slots::default(),
            ports: ports.clone(),
            work: Vec::new(),
            accept_work: Vec::new(),
            resolvers: resolvers.clone(),
            checkers: checkers.clone(),
            helpers: helpers.clone(),
            answers,
            signals,
            udp: Datagrams::default(),
            udp_work: Vec::new(),
            binds: Slots::default(),
            bind_work: Vec::new(),
            worker,
            pipes: Pipes::new(),
        };
        lp.drain();
        if let Some(msg) = lp.table.take_fatal() {
            log(Level::Error, &msg);
            return Ok(EXIT_RUNTIME);
        }
        loops.push(lp);
    }
    // Every listener is open, and this is still the only thread: give up
    // root now, so that every thread started from here on starts without
    // it (capabilities are per thread).
    portico_runtime::assume(credentials.as_ref())?;
    resolver_threads
        .start(RESOLVERS)
        .map_err(|e| format!("cannot start the resolver threads: {e}"))?;
    checker_threads
        .start(checks::threads(cores))
        .map_err(|e| format!("cannot start the password-checking threads: {e}"))?;
    let mut loops = loops.into_iter();
    let Some(mut lead) = loops.next() else {
        return Err("no event loop to run".into());
    };
    let mut others = Vec::new();
    for (k, mut lp) in loops.enumerate() {
        let h = std::thread::Builder::new()
            .name(format!("worker-{}", k + 1))
            .spawn(move || {
                let code = lp.run();
                if code != EXIT_OK {
                    // Its reason is logged; the process cannot serve on
                    // with a worker missing.
                    std::process::exit(code);
                }
            })
            .map_err(|e| format!("cannot start worker {}: {e}", k + 1))?;
        others.push(h);
    }
    portico_runtime::ready(ledger)?;
    let code = lead.run();
    if code == EXIT_OK {
        for h in others {
            let _ = h.join();
        }
    }
    Ok(code)
}

impl Loop {
    fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(1024);
        loop {
            self.drain();
            self.table.flush_trace();
            if let Some(msg) = self.table.take_fatal() {
                log(Level::Error, &msg);
                return EXIT_RUNTIME;
            }
            if self.table.is_finished() {
                return EXIT_OK;
            }
            let now = Instant::now();
            let timeout = if !self.work.is_empty()
                || !self.accept_work.is_empty()
                || !self.udp_work.is_empty()
                || !self.bind_work.is_empty()
            {
                Some(Duration::ZERO)
            } else {
                self.table
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log(Level::Error, &format!("event loop failed: {e}"));
                    return EXIT_RUNTIME;
                }
            }
            self.table.set_wall_clock();
            for ev in events.iter() {
                let t = ev.token();
                if t == SIGNAL {
                    self.signals();
                } else if t == WOKEN {
                    let now = Instant::now();
                    for ev in self.answers.take() {
                        self.table.handle(ev, now);
                    }
                    while self.worker.read_mail(&mut self.table) {
                        self.drain();
                    }
                } else if t.0 >= BIND_BASE {
                    self.bind_work.push(t.0 - BIND_BASE);
                } else if t.0 >= UDP_LISTENER_BASE {
                    self.udp_work.push(t);
                } else if t.0 >= LISTENER_BASE {
                    let i = t.0 - LISTENER_BASE;
                    if let Some((_, l)) = self.listeners.at_mut(i) {
                        l.ready = true;
                        if !l.queued {
                            l.queued = true;
                            self.accept_work.push(i);
                        }
                    }
                } else if t.0 >= RACE_BASE {
                    let idx = (t.0 - RACE_BASE) >> RACE_BITS;
                    let low = (t.0 - RACE_BASE) & ((1 << RACE_BITS) - 1);
                    if let Some((_, c)) = self.conns.at_mut(idx) {
                        let racer = c
                            .pair
                            .racing
                            .iter()
                            .find(|(n, _)| *n as usize & ((1 << RACE_BITS) - 1) == low);
                        if let Some(&(attempt, _)) = racer {
                            let clean = ev.is_writable()
                                && !ev.is_error()
                                && !ev.is_read_closed()
                                && !ev.is_write_closed();
                            c.signalled.push((attempt, clean));
                            if !c.queued {
                                c.queued = true;
                                self.work.push(idx);
                            }
                        }
                    }
                } else {
                    let idx = t.0 / 2;
                    let side = t.0 % 2;
                    if let Some((_, c)) = self.conns.at_mut(idx) {
                        let sd = if side == 0 {
                            Side::Client
                        } else {
                            Side::Upstream
                        };
                        if ev.is_readable() && c.stalled(&self.table, sd) {
                            // Known readable, and unread because the core or
                            // the pipe has no room: news of more bytes would
                            // only wake the loop until it reads again.
                            let r = c.reregister(self.poll.registry(), sd, Interest::WRITABLE);
                            c.sock[side].muted = r.is_ok();
                        }
                        let s = &mut c.sock[side];
                        // Errors and hang-ups surface on the next read/write.
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            s.readable = true;
                        }
                        if ev.is_read_closed() || ev.is_error() {
                            s.hup = true;
                        }
                        if ev.is_error() {
                            s.err = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            s.writable = true;
                        }
                        if !c.queued {
                            c.queued = true;
                            self.work.push(idx);
                        }
                    }
                }
            }
            self.accept_turn();
            self.bind_turn();
            self.udp_turn();
            self.work_turn();
            self.table.handle_timeout(Instant::now());
        }
    }

    fn signals(&mut self) {
        let Some((flags, wake)) = self.signals.as_mut() else {
            return;
        };
        Signals::drain(wake);
        // Reopened first: logrotate's signal then a reload's lines land in
        // the new files.
        if flags.reopen() {
            self.worker.reopen(&mut self.table);
        }
        if flags.reload() {
            self.worker.reload(&mut self.table);
            // Every loop shares the helpers: this one follows for all.
            self.helpers.follow(self.table.config().helper.as_ref());
        }
        if flags.stop() {
            self.worker.stop(&mut self.table);
        }
    }

    /// Carries out every action the core has queued, in order. Called
    /// after every event: what is rare (listeners, UDP, a connect) stays
    /// out of line, so that this loop stays small.
    fn drain(&mut self) {
        while let Some(step) = self.table.next_step() {
            match step {
                Step::Conn(conn, cmd) => self.conn_cmd(conn, cmd),
                Step::Listen(cmd) => self.listen_cmd(cmd),
                Step::Udp(cmd) => self.udp_cmd(cmd),
                Step::Unlisten(listener) => {
                    self.listen_cmd(ListenCmd::Close(listener));
                    self.udp_cmd(UdpCmd::Unlisten(listener));
                }
                Step::Gather(conn) => self.worker.gather(&mut self.table, conn),
            }
        }
    }

    #[inline(never)]
    fn udp_cmd(&mut self, cmd: UdpCmd) {
        // A socket let go of closes as it drops, which takes it out of the
        // poll set.
        let registry = self.poll.registry();
        let (opened, _) = self.udp.apply(cmd, |u, k| register_udp(registry, u, k));
        if let Some(o) = opened {
            o.tell(&mut self.table);
        }
    }

    #[inline(never)]
    fn listen_cmd(&mut self, cmd: ListenCmd) {
        match cmd {
            ListenCmd::Open(listener, addr, how) => self.listen(listener, addr, how),
            ListenCmd::Pause(listener) => {
                if let Some(l) = self.listeners.get_mut(listener) {
                    l.paused = true;
                }
            }
            ListenCmd::Resume(listener) => {
                if let Some(l) = self.listeners.get_mut(listener) {
                    l.paused = false;
                    // The edge may have come and gone while paused.
                    l.ready = true;
                    if !l.queued {
                        l.queued = true;
                        self.accept_work.push(listener.index());
                    }
                }
            }
            ListenCmd::Close(listener) => {
                if let Some(group) = self.listeners.remove(listener).and_then(|l| l.group) {
                    self.ports.leave(group);
                }
            }
        }
    }

    fn conn_cmd(&mut self, conn: ConnId, cmd: ConnCmd) {
        let pipes = &mut self.pipes;
        match cmd {
            ConnCmd::Resolve { host, port } => {
                if !self.resolvers.ask(conn, host, port, self.answers.clone()) {
                    let ev = Event::ResolveFailed { conn };
                    self.table.handle(ev, Instant::now());
                }
            }
            ConnCmd::CheckPassword { phc, password } => {
                if !self.checkers.ask(conn, phc, password, self.answers.clone()) {
                    // No pool left to ask: the login fails rather than hangs.
                    let ev = Event::PasswordChecked { conn, ok: false };
                    self.table.handle(ev, Instant::now());
                }
            }
            ConnCmd::AskHelper {
                helper,
                user,
                password,
            } => self
                .helpers
                .ask(helper, conn, user, password, self.answers.clone()),
            ConnCmd::Connect {
                attempt,
                addr,
                bind,
            } => self.connect(conn, attempt, addr, bind),
            ConnCmd::Abandon(attempt) => {
                if let Some(c) = self.conns.get_mut(conn) {
                    let slot = c.pair.upstream.is_some() && c.pair.attempt == attempt;
                    // Dropped: closed, and out of the poll set.
                    drop(c.pair.abandon(attempt, |p| pipes.give(p)));
                    if slot {
                        c.sock[1] = Sock::default();
                    }
                }
            }
            ConnCmd::Interest { side, read, write } => {
                if let Some(c) = self.conns.get_mut(conn) {
                    let s = &mut c.sock[side.index()];
                    s.want_read = read;
                    s.want_write = write;
                    if ((read && s.readable) || (write && s.writable)) && !c.queued {
                        c.queued = true;
                        self.work.push(conn.index());
                    }
                }
            }
            ConnCmd::ShutdownWrite(side) => {
                let failed = self
                    .conns
                    .get(conn)
                    .and_then(|c| c.pair.shutdown_write(side));
                if let Some(ev) = failed {
                    self.table.handle(ev, Instant::now());
                }
            }
            ConnCmd::CloseUpstream => {
                if let Some(c) = self.conns.get_mut(conn) {
                    c.pair.close_upstream(|p| pipes.give(p));
                    c.pair.take_racing();
                    c.signalled.clear();
                    c.sock[1] = Sock::default();
                }
            }
            ConnCmd::BindListen { toward, bind } => {
                let token = Token(BIND_BASE + conn.index());
                let registry = self.poll.registry();
                let opened = net::bind_listener(toward, bind).and_then(|l| {
                    let mut l = TcpListener::from_std(l);
                    registry.register(&mut l, token, Interest::READABLE)?;
                    let local = l.local_addr()?;
                    self.binds.insert(conn, (l, None));
                    Ok(local)
                });
                self.table.bind_listening(conn, opened);
            }
            ConnCmd::BindTake(attempt) => {
                let taken = self.binds.remove(conn).and_then(|(_, held)| held);
                let registry = self.poll.registry();
                let token = Token(conn.index() * 2 + 1);
                let both = Interest::READABLE | Interest::WRITABLE;
                let taken =
                    taken.and_then(|mut u| registry.register(&mut u, token, both).ok().map(|()| u));
                match (taken, self.conns.get_mut(conn)) {
                    (Some(u), Some(c)) => {
                        // Reported Connected like a connect once writable.
                        c.pair.connect_started(attempt, u, |p| pipes.give(p));
                        c.sock[1] = Sock::default();
                    }
                    _ => {
                        let error = IoKind::Other;
                        let failed = Event::ConnectFailed {
                            conn,
                            attempt,
                            error,
                        };
                        self.table.handle(failed, Instant::now());
                    }
                }
            }
            ConnCmd::BindReject => {
                if let Some((_, held)) = self.binds.get_mut(conn) {
                    *held = None;
                    // Others may be waiting behind the one refused.
                    self.bind_work.push(conn.index());
                }
            }
            ConnCmd::BindClose => {
                self.binds.remove(conn);
            }
            ConnCmd::Close => {
                self.binds.remove(conn);
                // Dropping the sockets closes them and takes them out of
                // the poll set.
                if let Some(mut c) = self.conns.remove(conn) {
                    c.pair.dirs.release(true, |p| pipes.give(p));
                }
            }
        }
    }

    fn listen(&mut self, listener: ListenerId, addr: SocketAddr, intercept: Option<Intercept>) {
        let token = Token(LISTENER_BASE + listener.index());
        let registry = self.poll.registry();
        let opened = self.ports.listen(addr, intercept).and_then(|(l, group)| {
            let mut sock = TcpListener::from_std(l);
            if let Err(e) = registry.register(&mut sock, token, Interest::READABLE) {
                if let Some(group) = group {
                    self.ports.leave(group);
                }
                return Err(e);
            }
            let local = sock.local_addr().unwrap_or(addr);
            let lst = Lst {
                sock,
                group,
                // TPROXY: every connection has its own local address.
                local: (!local.ip().is_unspecified() && intercept != Some(Intercept::Tproxy))
                    .then_some(local),
                intercept,
                ready: false,
                paused: false,
                queued: false,
            };
            self.listeners.insert(listener, lst);
            Ok(local)
        });
        self.table.listened(listener, opened);
    }

    #[inline(never)]
    fn connect(&mut self, conn: ConnId, attempt: u32, addr: SocketAddr, bind: Option<IpAddr>) {
        let r = net::tcp_connect(addr, bind).map(TcpStream::from_std);
        let registry = self.poll.registry();
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        // Beside an attempt still connecting, it races under its own token.
        let racing = c.pair.connecting && c.pair.upstream.is_some();
        let token = if racing {
            race_token(conn, attempt)
        } else {
            Token(conn.index() * 2 + 1)
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        match r.and_then(|mut u| registry.register(&mut u, token, both).map(|()| u)) {
            Ok(u) => {
                // A previous upstream socket (if any) closes here.
                let pipes = &mut self.pipes;
                if let Placed::Upstream(_) = c.pair.connect_started(attempt, u, |p| pipes.give(p)) {
                    c.sock[1] = Sock::default();
                }
            }
            Err(e) => {
                let error = IoKind::from_io(&e);
                let ev = Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                };
                self.table.handle(ev, Instant::now());
            }
        }
    }

    /// The outcomes of the racing attempts of `conn` that signalled: one
    /// that connected becomes the upstream socket (and the core is told);
    /// one that failed goes (and the core is told).
    fn finish_racing(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let Some((attempt, clean)) = c.signalled.pop() else {
            return;
        };
        let now = Instant::now();
        match c.pair.racer_outcome(attempt, clean) {
            None | Some(Connecting::Pending) => {}
            Some(Connecting::Failed(error)) => {
                drop(c.pair.abandon(attempt, |_| {}));
                c.signalled.retain(|(n, _)| *n != attempt);
                let ev = Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                };
                self.table.handle(ev, now);
            }
            Some(Connecting::Done) => {
                let Some(displaced) = c.pair.adopt(attempt) else {
                    return;
                };
                c.signalled.retain(|(n, _)| *n != attempt);
                let registry = self.poll.registry();
                let both = Interest::READABLE | Interest::WRITABLE;
                let up = Token(conn.index() * 2 + 1);
                let mut moved = Ok(());
                if let Some(u) = c.pair.upstream.as_mut() {
                    moved = registry.reregister(u, up, both);
                }
                if let Some(n) = displaced {
                    if let Some((_, s)) = c.pair.racing.iter_mut().find(|(a, _)| *a == n) {
                        let _ = registry.reregister(s, race_token(conn, n), both);
                    }
                }
                // Writable now; readable when an event says so.
                c.sock[1] = Sock {
                    writable: true,
                    ..Sock::default()
                };
                match moved {
                    Ok(()) => {
                        if let Some(u) = c.pair.upstream.as_ref() {
                            self.table.connected(conn, attempt, u, now);
                        }
                    }
                    Err(e) => {
                        // Unusable without its events: a failed attempt.
                        drop(c.pair.close_upstream(|_| {}));
                        c.sock[1] = Sock::default();
                        let error = IoKind::from_io(&e);
                        let ev = Event::ConnectFailed {
                            conn,
                            attempt,
                            error,
                        };
                        self.table.handle(ev, now);
                    }
                }
            }
        }
    }

    /// Accepts on the BIND listeners that are ready: each connection is
    /// held and told to the core, which takes or refuses it at once.
    fn bind_turn(&mut self) {
        let list = std::mem::take(&mut self.bind_work);
        for i in list {
            for _ in 0..ACCEPTS_PER_TURN {
                let Some((conn, (l, held))) = self.binds.at_mut(i) else {
                    break;
                };
                if held.is_some() {
                    break;
                }
                let Ok((s, peer)) = l.accept() else {
                    break;
                };
                let _ = s.set_nodelay(true);
                *held = Some(s);
                self.table
                    .handle(Event::BindAccepted { conn, peer }, Instant::now());
                self.drain();
            }
        }
    }

    /// Reads datagrams from the UDP sockets that are ready, a bounded number
    /// each, then sends what the core has queued.
    fn udp_turn(&mut self) {
        let list = std::mem::take(&mut self.udp_work);
        for t in list {
            let key = if t.0 >= UDP_ASSOC_BASE {
                UdpKey::from_association_token(t.0, UDP_ASSOC_BASE)
            } else if t.0 >= UDP_MAP_BASE {
                UdpKey::Mapping(t.0 - UDP_MAP_BASE)
            } else {
                UdpKey::Port(t.0 - UDP_LISTENER_BASE)
            };
            let mut more = false;
            for _ in 0..DATAGRAMS_PER_TURN {
                if !self.udp.recv(&mut self.table, key) {
                    break;
                }
                self.drain();
                self.udp.send(&mut self.table);
                more = true;
            }
            if more {
                self.udp_work.push(t);
            }
        }
        self.drain();
        self.udp.send(&mut self.table);
    }

    fn accept_turn(&mut self) {
        let list = std::mem::take(&mut self.accept_work);
        for i in list {
            let mut again = false;
            for _ in 0..ACCEPTS_PER_TURN {
                let Some((id, l)) = self.listeners.at_mut(i) else {
                    break;
                };
                if l.paused || !l.ready {
                    break;
                }
                let (local, how) = (l.local, l.intercept);
                match l.sock.accept() {
                    Ok((stream, peer)) => self.accepted(id, stream, peer, local, how),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        l.ready = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let error = IoKind::from_io(&e);
                        let listener = id;
                        self.table
                            .handle(Event::AcceptFailed { listener, error }, Instant::now());
                        self.drain();
                    }
                }
                again = true;
            }
            if let Some((_, l)) = self.listeners.at_mut(i) {
                l.queued = false;
                if again && l.ready && !l.paused {
                    l.queued = true;
                    self.accept_work.push(i);
                }
            }
        }
        self.drain();
    }

    fn accepted(
        &mut self,
        listener: ListenerId,
        mut stream: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        how: Option<Intercept>,
    ) {
        let local = local.unwrap_or_else(|| stream.local_addr().unwrap_or(peer));
        let original = how.and_then(|how| net::original_destination(&stream, how, local));
        let now = Instant::now();
        let Ok(conn) = self.table.accept(listener, peer, local, original, now) else {
            // Refused and logged by the core: dropping closes it.
            return;
        };
        if net::accepted_nodelay() {
            let _ = stream.set_nodelay(true);
        }
        let both = Interest::READABLE | Interest::WRITABLE;
        let token = Token(conn.index() * 2);
        if let Err(e) = self.poll.registry().register(&mut stream, token, both) {
            let error = IoKind::from_io(&e);
            let side = Side::Client;
            self.table
                .handle(Event::IoError { conn, side, error }, Instant::now());
            return;
        }
        let c = Conn {
            pair: Pair::new(conn, stream),
            sock: [Sock::default(); 2],
            queued: false,
            signalled: Vec::new(),
        };
        self.conns.insert(conn, c);
        // Actions for this connection (Connect, Interest) need its slot.
        self.drain();
    }

    fn work_turn(&mut self) {
        let list = std::mem::take(&mut self.work);
        for idx in list {
            let more = self.pump(idx);
            if let Some((_, c)) = self.conns.at_mut(idx) {
                c.queued = more;
                if more {
                    self.work.push(idx);
                }
            }
        }
    }

    /// Does up to [`OPS_PER_TURN`] operations on connection `idx`; true if it
    /// still has work that is ready.
    fn pump(&mut self, idx: usize) -> bool {
        let Some((conn, _)) = self.conns.at(idx) else {
            return false;
        };
        let mut ops = 0;
        while ops < OPS_PER_TURN {
            let Some(c) = self.conns.get_mut(conn) else {
                return false;
            };
            if !c.signalled.is_empty() {
                ops += 1;
                self.finish_racing(conn);
                self.drain();
                continue;
            }
            if c.pair.connecting && c.sock[1].writable {
                c.sock[1].writable = false;
                ops += 1;
                self.finish_connect(conn);
                self.drain();
                continue;
            }
            let mut did = false;
            for side in [Side::Client, Side::Upstream] {
                let Some(c) = self.conns.get(conn) else {
                    return false;
                };
                if !c.pair.open(side) {
                    continue;
                }
                let op = c.read_op(&self.table, side);
                if op != ReadOp::Nothing {
                    ops += 1;
                    did = true;
                    self.unmute(conn, side);
                    if op == ReadOp::Splice {
                        self.splice_in(conn, side);
                    } else {
                        self.read(conn, side);
                    }
                    self.drain();
                }
                if self.conns.get(conn).is_some_and(|c| c.pipe_out_ready(side)) {
                    ops += 1;
                    did = true;
                    self.splice_out(conn, side.other());
                    self.drain();
                }
                let Some(c) = self.conns.get(conn) else {
                    return false;
                };
                let s = c.sock[side.index()];
                if s.want_write && s.writable {
                    ops += 1;
                    did = true;
                    self.write(conn, side);
                    self.drain();
                }
            }
            if !did {
                break;
            }
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        let pipes = &mut self.pipes;
        c.pair.dirs.release(false, |p| pipes.give(p));
        // The turn is spent: is anything still both wanted and ready?
        c.has_work(&self.table)
    }

    fn finish_connect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let now = Instant::now();
        let attempt = c.pair.attempt;
        match c.pair.finish_connect(!c.sock[1].hup) {
            Connecting::Done => {
                // Writable now; readable when an event says so (a reply
                // already there came with this event or brings its own).
                c.sock[1].writable = true;
                if let Some(u) = c.pair.upstream.as_ref() {
                    self.table.connected(conn, attempt, u, now);
                }
            }
            Connecting::Pending => {}
            Connecting::Failed(error) => {
                // The failed socket goes now: an attempt racing it may
                // take the slot.
                drop(c.pair.close_upstream(|_| {}));
                c.sock[1] = Sock::default();
                let ev = Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                };
                self.table.handle(ev, now);
            }
        }
    }

    fn read(&mut self, conn: ConnId, side: Side) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let now = Instant::now();
        let s = &mut c.sock[side.index()];
        if s.drained {
            s.readable = false;
            self.table.handle(Event::Eof { conn, side }, now);
            return;
        }
        let Some((ev, seen)) = c.pair.read(&mut self.table, side) else {
            // Not wanted after all: wait for the next Interest.
            s.want_read = false;
            return;
        };
        // A short read emptied the socket: anything arriving later raises
        // a new edge, so the read that would only say WouldBlock is saved.
        // After the peer's FIN nothing can arrive, so the read that would
        // only say end of stream is saved too (not after an error, whose
        // read tells which).
        match seen {
            Seen::Spent => s.readable = false,
            Seen::Short if !s.hup => s.readable = false,
            Seen::Short if !s.err => s.drained = true,
            Seen::Short | Seen::More => {}
        }
        self.table.handle(ev, now);
    }

    /// Registers `side` for reading again before it is read, so that the
    /// read that empties it is followed by an edge when more comes.
    fn unmute(&mut self, conn: ConnId, side: Side) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.sock[side.index()].muted {
            c.sock[side.index()].muted = false;
            let both = Interest::READABLE | Interest::WRITABLE;
            let _ = c.reregister(self.poll.registry(), side, both);
        }
    }

    /// Splices what `side` has into its direction's pipe (the core said the
    /// direction is a pure relay).
    fn splice_in(&mut self, conn: ConnId, side: Side) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let pipes = &mut self.pipes;
        let table = &self.table;
        let filled = c
            .pair
            .splice_in(side, || pipes.take(table.splice_pipe_for(conn, side)));
        let s = &mut c.sock[side.index()];
        let ev = match filled {
            // Nothing to tell yet; a short splice says nothing about the
            // socket, so `readable` stays.
            Filled::Moved | Filled::Full | Filled::Unsupported => return,
            Filled::Empty | Filled::Eof(None) => {
                s.readable = false;
                return;
            }
            Filled::Eof(Some(ev)) => {
                s.readable = false;
                ev
            }
            Filled::Failed(ev) => ev,
        };
        self.table.handle(ev, Instant::now());
    }

    /// Splices what the pipe of the direction `from` feeds out to the other
    /// socket, and tells the core what went.
    fn splice_out(&mut self, conn: ConnId, from: Side) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let to = from.other().index();
        let now = Instant::now();
        match c.pair.splice_out(from) {
            Drained::Sent { short, told } => {
                // Short: the socket's buffer is full; wait for the edge.
                if short {
                    c.sock[to].writable = false;
                }
                for ev in told {
                    self.table.handle(ev, now);
                }
            }
            Drained::Blocked => c.sock[to].writable = false,
            Drained::Failed(ev) => self.table.handle(ev, now),
        }
    }

    fn write(&mut self, conn: ConnId, side: Side) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let s = &mut c.sock[side.index()];
        let Some((ev, seen)) = c.pair.write(&mut self.table, side) else {
            s.want_write = false;
            return;
        };
        // A short write filled the socket's buffer: wait for the edge.
        if seen == Seen::Spent {
            s.writable = false;
        }
        if let Some(ev) = ev {
            self.table.handle(ev, Instant::now());
        }
    }
}
