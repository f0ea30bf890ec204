//! The mio event loops: one per worker thread (`[runtime] workers`), each
//! over its own sockets and its own connection table; the tables share
//! only the ledger of process-wide limits (see `portico_core::ledger`).
//!
//! Every worker listens on every TCP address: with more than one, each has
//! its own socket in a SO_REUSEPORT group and the kernel spreads new
//! connections over them. Before the first socket of a group binds, a
//! plain bind of the address is tried, so a port another program (or
//! another Portico) holds is still refused as in use rather than silently
//! shared. Every worker's listeners are open before any worker accepts.
//! Worker 0 alone handles signals and UDP; it tells the others to
//! stop and to reload, and a status request on any worker asks the others
//! for their tables through their mailboxes.
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
//! upstream socket; listeners and the signal pipe live at the top of the
//! token space.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use portico_runtime::net::{self, Connecting};
use portico_runtime::resolver::{Answers, Resolvers};
use portico_runtime::splice::Pipes;
use portico_runtime::{
    load, log, Action, Config, ConnId, Datagrams, Drained, Event, Filled, IoKind, Level,
    ListenerId, Pair, Plan, ReadOp, Side, Snapshot, Start, Table, UdpKey, EXIT_OK, EXIT_RUNTIME,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const SIGNAL: Token = Token(usize::MAX);
/// The loop's one waker: resolver answers or mail from another worker.
const RESOLVED: Token = Token(usize::MAX - 1);
/// Threads that resolve names (for all workers), so no loop waits on DNS.
const RESOLVERS: usize = 4;
const LISTENER_BASE: usize = usize::MAX / 2;
/// UDP listeners and UDP mappings sit above the TCP listeners.
const UDP_LISTENER_BASE: usize = LISTENER_BASE + (1 << 21);
const UDP_MAP_BASE: usize = LISTENER_BASE + (1 << 22);
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
}

impl Conn {
    /// `side` is known readable and not muted, but nothing would read it
    /// now (see [`Sock::muted`]).
    fn stalled(&self, table: &Table, side: Side) -> bool {
        let s = self.sock[si(side)];
        s.readable && !s.muted && self.read_op(table, side) == ReadOp::Nothing
    }

    /// Changes what `side`'s socket is registered for.
    fn reregister(
        &mut self,
        registry: &Registry,
        side: Side,
        interest: Interest,
    ) -> io::Result<()> {
        let token = Token(self.pair.id.index() * 2 + si(side));
        match self.pair.stream_mut(side) {
            Some(s) => registry.reregister(s, token, interest),
            None => Ok(()),
        }
    }

    /// What reading `side` would do now: wanted by the core, and known
    /// readable.
    fn read_op(&self, table: &Table, side: Side) -> ReadOp {
        let s = self.sock[si(side)];
        let id = self.pair.id;
        self.pair.read_op(side, s.want_read && s.readable, || {
            table.splice_ok(id, side)
        })
    }

    /// The pipe toward `side` holds bytes `side` can take now.
    fn pipe_out_ready(&self, side: Side) -> bool {
        self.pair.dirs.piped(side.other()) && self.sock[si(side)].writable
    }

    /// Still both wanted and ready: read, splice or write.
    fn has_work(&self, table: &Table) -> bool {
        (self.pair.connecting && self.sock[1].writable)
            || [Side::Client, Side::Upstream].into_iter().any(|side| {
                let s = self.sock[si(side)];
                self.pair.open(side)
                    && (self.read_op(table, side) != ReadOp::Nothing
                        || self.pipe_out_ready(side)
                        || (s.want_write && s.writable))
            })
    }
}

struct Lst {
    id: ListenerId,
    sock: TcpListener,
    /// The address of the SO_REUSEPORT group this socket is in.
    group: Option<SocketAddr>,
    /// The address every accepted socket has locally, unless the listener
    /// is on a wildcard address (then each socket is asked).
    local: Option<SocketAddr>,
    ready: bool,
    paused: bool,
    queued: bool,
}

struct Loop {
    poll: Poll,
    table: Table,
    conns: Vec<Option<Conn>>,
    listeners: Vec<Option<Lst>>,
    /// Connections with work to do this turn.
    work: Vec<usize>,
    /// Listeners with connections to accept.
    accept_work: Vec<usize>,
    resolvers: Resolvers,
    answered: Arc<Answered>,
    flags: Signals,
    plan_path: Option<std::path::PathBuf>,
    reload_recheck: bool,
    /// Worker 0's signal pipe.
    sig_rx: Option<UnixStream>,
    udp: Datagrams,
    /// UDP sockets (tokens) with datagrams left to read.
    udp_work: Vec<Token>,
    /// This loop among the others.
    crew: Crew,
    /// Status requests waiting for the other workers' tables: the parts
    /// so far and how many are still to come.
    gathers: HashMap<ConnId, (Vec<Snapshot>, usize)>,
    /// Empty pipes for directions that start splicing.
    pipes: Pipes,
}

/// What one worker knows of the others.
struct Crew {
    index: usize,
    mail: Receiver<Mail>,
    /// Every worker's mailbox, this one's included.
    boxes: Arc<Vec<Mailbox>>,
    /// Sockets open per SO_REUSEPORT group (none with one worker).
    groups: Option<Arc<Mutex<HashMap<SocketAddr, usize>>>>,
}

#[derive(Clone)]
struct Mailbox {
    tx: Sender<Mail>,
    waker: Arc<Waker>,
}

impl Mailbox {
    /// False when that worker is gone.
    fn send(&self, mail: Mail) -> bool {
        self.tx.send(mail).is_ok() && self.waker.wake().is_ok()
    }
}

/// What workers tell each other.
enum Mail {
    Stop,
    /// Apply this configuration, then say how many connections it closed.
    Reload {
        config: Box<Config>,
        text: Arc<str>,
        recheck: bool,
        done: Sender<usize>,
    },
    /// Worker `from` wants this table for its status request on `conn`.
    Snapshot {
        from: usize,
        conn: ConnId,
    },
    /// The table asked for.
    Part {
        conn: ConnId,
        part: Box<Snapshot>,
    },
}

/// Which signals have come since the loop last looked.
#[derive(Default)]
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

/// One loop's answers from the resolver pool, and the waker that tells it.
struct Answered {
    queue: Mutex<Vec<Event>>,
    waker: Arc<Waker>,
}

impl Answers for Answered {
    fn answer(&self, event: Event) {
        if let Ok(mut q) = self.queue.lock() {
            q.push(event);
        }
        let _ = self.waker.wake();
    }
}

fn si(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

fn udp_token(key: UdpKey) -> Token {
    match key {
        UdpKey::Port(i) => Token(UDP_LISTENER_BASE + i),
        UdpKey::Mapping(i) => Token(UDP_MAP_BASE + i),
    }
}

fn udp_key(t: Token) -> UdpKey {
    if t.0 >= UDP_MAP_BASE {
        UdpKey::Mapping(t.0 - UDP_MAP_BASE)
    } else {
        UdpKey::Port(t.0 - UDP_LISTENER_BASE)
    }
}

fn conn_in(conns: &mut [Option<Conn>], conn: ConnId) -> Option<&mut Conn> {
    match conns.get_mut(conn.index()) {
        Some(Some(c)) if c.pair.id == conn => Some(c),
        _ => None,
    }
}

pub fn run(plan: Plan) -> i32 {
    match run_inner(plan) {
        Ok(code) => code,
        Err(e) => {
            log(Level::Error, &e);
            EXIT_RUNTIME
        }
    }
}

fn run_inner(plan: Plan) -> Result<i32, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = plan.workers(cores);
    let (start, others) = Start::workers(plan, n)?;
    let resolvers = Resolvers::start(RESOLVERS)
        .map_err(|e| format!("cannot start the resolver threads: {e}"))?;
    // Every loop's poll and waker first: each mailbox names them.
    let mut polls = Vec::with_capacity(n);
    let mut boxes = Vec::with_capacity(n);
    let mut inboxes = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), RESOLVED)
                .map_err(|e| format!("cannot create the event loop: {e}"))?,
        );
        let (tx, rx) = std::sync::mpsc::channel();
        boxes.push(Mailbox {
            tx,
            waker: waker.clone(),
        });
        polls.push((poll, waker));
        inboxes.push(rx);
    }
    let boxes = Arc::new(boxes);
    let groups = (n > 1).then(|| Arc::new(Mutex::new(HashMap::new())));
    // Worker 0's alone: the signals, and the trace (one worker records).
    let mut signal = Some(signals(&polls[0].0)?);
    let tables = std::iter::once(start.table).chain(others);
    let mut loops = Vec::with_capacity(n);
    for (index, (((poll, waker), mail), table)) in
        polls.into_iter().zip(inboxes).zip(tables).enumerate()
    {
        let (sig_rx, flags) = match signal.take() {
            Some((rx, flags)) => (Some(rx), flags),
            None => (None, Signals::default()),
        };
        loops.push(Loop {
            udp: Datagrams::default(),
            udp_work: Vec::new(),
            plan_path: start.path.clone(),
            reload_recheck: start.recheck,
            flags,
            sig_rx,
            resolvers: resolvers.clone(),
            answered: Arc::new(Answered {
                queue: Mutex::default(),
                waker,
            }),
            poll,
            table,
            conns: Vec::new(),
            listeners: Vec::new(),
            work: Vec::new(),
            accept_work: Vec::new(),
            crew: Crew {
                index,
                mail,
                boxes: boxes.clone(),
                groups: groups.clone(),
            },
            gathers: HashMap::new(),
            pipes: Pipes::new(),
        });
    }
    // Worker 0 opens the listeners before any other worker: a port that
    // cannot be had is reported once, and fatal at once. The others open
    // theirs before any worker accepts, so that connections taken early
    // cannot use up the descriptors a worker's listener needs.
    let mut ready = Vec::with_capacity(n);
    for mut lp in loops {
        lp.drain();
        if let Some(msg) = lp.table.take_fatal() {
            log(Level::Error, &msg);
            return Ok(EXIT_RUNTIME);
        }
        ready.push(lp);
    }
    let mut ready = ready.into_iter();
    let Some(mut lead) = ready.next() else {
        return Err("no event loop to run".into());
    };
    let mut crew = Vec::new();
    for (k, mut lp) in ready.enumerate() {
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
        crew.push(h);
    }
    let code = lead.run();
    if code == EXIT_OK {
        for h in crew {
            let _ = h.join();
        }
    }
    Ok(code)
}

/// A plain bind of `addr` (no SO_REUSEPORT): fails as "in use" when any
/// socket of any program listens there, which joining a SO_REUSEPORT group
/// would not tell.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))
}

/// Signal handling for worker 0's loop: flags say which signal came, a
/// pipe registered in `poll` wakes the loop.
fn signals(poll: &Poll) -> Result<(UnixStream, Signals), String> {
    let (sig_rx, sig_tx) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("cannot create the signal pipe: {e}"))?;
    sig_rx
        .set_nonblocking(true)
        .map_err(|e| format!("cannot create the signal pipe: {e}"))?;
    let mut sig_rx = UnixStream::from_std(sig_rx);
    // One flag per signal says which came; the pipe only wakes the loop
    // (its byte says nothing about which signal it was).
    let flags = Signals::default();
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &flags.stop),
        (signal_hook::consts::SIGINT, &flags.stop),
        (signal_hook::consts::SIGHUP, &flags.reload),
    ] {
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| format!("cannot set up signals: {e}"))?;
        let tx = sig_tx
            .try_clone()
            .map_err(|e| format!("cannot set up signals: {e}"))?;
        signal_hook::low_level::pipe::register_raw(sig, tx.into_raw_fd())
            .map_err(|e| format!("cannot set up signals: {e}"))?;
    }
    poll.registry()
        .register(&mut sig_rx, SIGNAL, Interest::READABLE)
        .map_err(|e| format!("cannot set up signals: {e}"))?;
    Ok((sig_rx, flags))
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
                } else if t == RESOLVED {
                    self.answers();
                    self.mail();
                } else if t.0 >= UDP_LISTENER_BASE {
                    self.udp_work.push(t);
                } else if t.0 >= LISTENER_BASE {
                    let i = t.0 - LISTENER_BASE;
                    if let Some(Some(l)) = self.listeners.get_mut(i) {
                        l.ready = true;
                        if !l.queued {
                            l.queued = true;
                            self.accept_work.push(i);
                        }
                    }
                } else {
                    let idx = t.0 / 2;
                    let side = t.0 % 2;
                    if let Some(Some(c)) = self.conns.get_mut(idx) {
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
            self.udp_turn();
            self.work_turn();
            self.table.handle_timeout(Instant::now());
        }
    }

    fn signals(&mut self) {
        let mut buf = [0u8; 64];
        // Drain the wake-up bytes; the flags say what happened.
        if let Some(sig_rx) = self.sig_rx.as_mut() {
            loop {
                match sig_rx.read(&mut buf) {
                    Ok(n) if n > 0 => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
        }
        if self.flags.reload.swap(false, Ordering::SeqCst) {
            self.reload();
        }
        if self.flags.stop.swap(false, Ordering::SeqCst) {
            self.table.shutdown(Instant::now());
            self.tell_others(|| Mail::Stop);
        }
    }

    /// Sends `mail` to every other worker; how many took it.
    fn tell_others(&self, mut mail: impl FnMut() -> Mail) -> usize {
        let me = self.crew.index;
        let boxes = self.crew.boxes.iter().enumerate();
        boxes.filter(|(k, b)| *k != me && b.send(mail())).count()
    }

    /// SIGHUP: read the file again; a bad one leaves everything as it is.
    /// The other workers apply it first, then this one, which logs it for
    /// all (with what theirs closed).
    fn reload(&mut self) {
        let Some((config, text)) = load(self.plan_path.as_deref()) else {
            return;
        };
        let recheck = self.reload_recheck;
        let shared: Arc<str> = Arc::from(text.as_str());
        let (done, replies) = std::sync::mpsc::channel();
        let asked = self.tell_others(|| Mail::Reload {
            config: Box::new(config.clone()),
            text: shared.clone(),
            recheck,
            done: done.clone(),
        });
        drop(done);
        let mut closed = 0;
        for _ in 0..asked {
            // A worker answers within its turn; one that does not is
            // stuck or gone, and is not waited for.
            match replies.recv_timeout(Duration::from_secs(5)) {
                Ok(n) => closed += n,
                Err(_) => break,
            }
        }
        self.table.apply(config, &text, recheck, closed);
    }

    /// What the other workers sent.
    fn mail(&mut self) {
        while let Ok(mail) = self.crew.mail.try_recv() {
            match mail {
                Mail::Stop => self.table.shutdown(Instant::now()),
                Mail::Reload {
                    config,
                    text,
                    recheck,
                    done,
                } => {
                    let closed = self.table.apply(*config, &text, recheck, 0);
                    let _ = done.send(closed);
                }
                Mail::Snapshot { from, conn } => {
                    let part = Box::new(self.table.snapshot(Instant::now()));
                    if let Some(b) = self.crew.boxes.get(from) {
                        b.send(Mail::Part { conn, part });
                    }
                }
                Mail::Part { conn, part } => self.part(conn, *part),
            }
            self.drain();
        }
    }

    /// One more answer to the status request on `conn`; the last one lets
    /// the core reply.
    fn part(&mut self, conn: ConnId, part: Snapshot) {
        let Some((parts, left)) = self.gathers.get_mut(&conn) else {
            return;
        };
        parts.push(part);
        *left = left.saturating_sub(1);
        if *left == 0 {
            let parts = self.gathers.remove(&conn).map(|g| g.0).unwrap_or_default();
            self.table.handle_gathered(conn, parts, Instant::now());
        }
    }

    /// Asks every other worker for its table. Their answers come through
    /// this loop's own mailbox, read only after this returns; a worker
    /// that is gone cannot be asked and is not waited for.
    fn gather(&mut self, conn: ConnId) {
        let from = self.crew.index;
        match self.tell_others(|| Mail::Snapshot { from, conn }) {
            0 => self.table.handle_gathered(conn, Vec::new(), Instant::now()),
            asked => {
                self.gathers.insert(conn, (Vec::new(), asked));
            }
        }
    }

    fn answers(&mut self) {
        let answers = match self.answered.queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        let now = Instant::now();
        for ev in answers {
            self.table.handle(ev, now);
        }
    }

    /// Carries out every action the core has queued, in order.
    fn drain(&mut self) {
        while let Some(action) = self.table.next_action() {
            match action {
                Action::Listen { listener, addr } => self.listen(listener, addr),
                Action::PauseAccept { listener } => {
                    if let Some(Some(l)) = self.listeners.get_mut(listener.index()) {
                        if l.id == listener {
                            l.paused = true;
                        }
                    }
                }
                Action::ResumeAccept { listener } => {
                    let i = listener.index();
                    if let Some(Some(l)) = self
                        .listeners
                        .get_mut(i)
                        .filter(|l| l.as_ref().is_some_and(|l| l.id == listener))
                    {
                        l.paused = false;
                        // The edge may have come and gone while paused.
                        l.ready = true;
                        if !l.queued {
                            l.queued = true;
                            self.accept_work.push(i);
                        }
                    }
                }
                Action::Unlisten { listener } => {
                    if let Some(slot) = self.listeners.get_mut(listener.index()) {
                        if slot.as_ref().is_some_and(|l| l.id == listener) {
                            if let Some(addr) = slot.take().and_then(|l| l.group) {
                                self.leave_group(addr);
                            }
                        }
                    }
                    // Dropping a socket closes it and takes it out of the
                    // poll set.
                    self.udp.unlisten(listener);
                }
                Action::Connect { conn, addr, bind } => self.connect(conn, addr, bind),
                Action::ListenUdp { listener, addr } => {
                    let registry = self.poll.registry();
                    let (opened, _) = self.udp.listen(listener, addr, |u, key| {
                        registry.register(
                            &mut SourceFd(&u.as_raw_fd()),
                            udp_token(key),
                            Interest::READABLE,
                        )
                    });
                    self.table.listened(listener, opened);
                }
                Action::UdpOpen {
                    id,
                    bind,
                    destination,
                } => {
                    let registry = self.poll.registry();
                    let opened = self.udp.open(id, bind, destination, |u, key| {
                        registry.register(
                            &mut SourceFd(&u.as_raw_fd()),
                            udp_token(key),
                            Interest::READABLE,
                        )
                    });
                    if opened.is_err() {
                        self.table.handle_udp_failed(id);
                    }
                }
                Action::UdpClose { id } => {
                    self.udp.close(id);
                }
                Action::Resolve { conn, host, port } => {
                    let to = self.answered.clone();
                    if !self.resolvers.ask(conn, host, port, to) {
                        self.table
                            .handle(Event::ResolveFailed { conn }, Instant::now());
                    }
                }
                Action::Interest {
                    conn,
                    side,
                    read,
                    write,
                } => {
                    if let Some(c) = conn_in(&mut self.conns, conn) {
                        let s = &mut c.sock[si(side)];
                        s.want_read = read;
                        s.want_write = write;
                        if ((read && s.readable) || (write && s.writable)) && !c.queued {
                            c.queued = true;
                            self.work.push(conn.index());
                        }
                    }
                }
                Action::CloseUpstream { conn } => {
                    if let Some(c) = conn_in(&mut self.conns, conn) {
                        let pipes = &mut self.pipes;
                        c.pair.close_upstream(|p| pipes.give(p));
                        c.sock[1] = Sock::default();
                    }
                }
                Action::ShutdownWrite { conn, side } => {
                    let failed =
                        conn_in(&mut self.conns, conn).and_then(|c| c.pair.shutdown_write(side));
                    if let Some(ev) = failed {
                        self.table.handle(ev, Instant::now());
                    }
                }
                Action::Close { conn } => {
                    // Dropping the sockets closes them and takes them out of
                    // the poll set.
                    if conn_in(&mut self.conns, conn).is_some() {
                        if let Some(mut c) = self.conns[conn.index()].take() {
                            let pipes = &mut self.pipes;
                            c.pair.dirs.release(true, |p| pipes.give(p));
                        }
                    }
                }
                Action::Gather { conn } => self.gather(conn),
                // Lines: written by `next_action`, in their place.
                Action::Log { .. } | Action::Access(_) | Action::Say(_) | Action::Fatal { .. } => {}
            }
        }
    }

    /// One socket fewer in `addr`'s SO_REUSEPORT group (its last one
    /// gone, the next to listen there checks the port is free again).
    fn leave_group(&mut self, addr: SocketAddr) {
        if let Some(g) = self.crew.groups.as_ref() {
            let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = g.get_mut(&addr) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.remove(&addr);
                }
            }
        }
    }

    fn listen(&mut self, listener: ListenerId, addr: SocketAddr) {
        // A port of the configuration is every worker's; a data port
        // (port 0) is its own session's worker's.
        let groups = self.crew.groups.clone().filter(|_| addr.port() != 0);
        let group = groups.as_ref().map(|_| addr);
        let registry = self.poll.registry();
        let i = listener.index();
        let opened = (|| -> io::Result<TcpListener> {
            let mut held = groups
                .as_ref()
                .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(h) = held.as_ref() {
                if h.get(&addr).copied().unwrap_or(0) == 0 {
                    probe(addr)?;
                }
            }
            let l = net::tcp_listener(addr, held.is_some())?;
            if let Some(h) = held.as_mut() {
                *h.entry(addr).or_insert(0) += 1;
            }
            let mut l = TcpListener::from_std(l);
            registry.register(&mut l, Token(LISTENER_BASE + i), Interest::READABLE)?;
            Ok(l)
        })();
        let opened = opened.map(|l| {
            let local = l.local_addr().unwrap_or(addr);
            if self.listeners.len() <= i {
                self.listeners.resize_with(i + 1, || None);
            }
            self.listeners[i] = Some(Lst {
                id: listener,
                group,
                local: (!local.ip().is_unspecified()).then_some(local),
                sock: l,
                ready: false,
                paused: false,
                queued: false,
            });
            local
        });
        self.table.listened(listener, opened);
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr, bind: Option<IpAddr>) {
        let r = net::tcp_connect(addr, bind).map(TcpStream::from_std);
        let registry = self.poll.registry();
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        let token = Token(conn.index() * 2 + 1);
        let both = Interest::READABLE | Interest::WRITABLE;
        match r.and_then(|mut u| registry.register(&mut u, token, both).map(|()| u)) {
            Ok(u) => {
                // A previous attempt's socket (if any) closes here.
                let pipes = &mut self.pipes;
                c.pair.connect_started(u, |p| pipes.give(p));
                c.sock[1] = Sock::default();
            }
            Err(e) => {
                let error = IoKind::from_io(&e);
                self.table
                    .handle(Event::ConnectFailed { conn, error }, Instant::now());
            }
        }
    }

    /// Reads datagrams from the UDP sockets that are ready, a bounded number
    /// each, then sends what the core has queued.
    fn udp_turn(&mut self) {
        let list = std::mem::take(&mut self.udp_work);
        for t in list {
            let mut more = false;
            for _ in 0..DATAGRAMS_PER_TURN {
                if !self.udp.recv(&mut self.table, udp_key(t)) {
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
                let Some(Some(l)) = self.listeners.get_mut(i) else {
                    break;
                };
                if l.paused || !l.ready {
                    break;
                }
                let (id, local) = (l.id, l.local);
                match l.sock.accept() {
                    Ok((stream, peer)) => self.accepted(id, stream, peer, local),
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
            if let Some(Some(l)) = self.listeners.get_mut(i) {
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
    ) {
        let local = local.unwrap_or_else(|| stream.local_addr().unwrap_or(peer));
        let Ok(conn) = self.table.accept(listener, peer, local, Instant::now()) else {
            // Refused and logged by the core: dropping closes it.
            return;
        };
        let _ = stream.set_nodelay(true);
        let idx = conn.index();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(idx * 2),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            let error = IoKind::from_io(&e);
            let side = Side::Client;
            self.table
                .handle(Event::IoError { conn, side, error }, Instant::now());
            return;
        }
        if self.conns.len() <= idx {
            self.conns.resize_with(idx + 1, || None);
        }
        self.conns[idx] = Some(Conn {
            pair: Pair::new(conn, stream),
            sock: [Sock::default(); 2],
            queued: false,
        });
        // Actions for this connection (Connect, Interest) need its slot.
        self.drain();
    }

    fn work_turn(&mut self) {
        let list = std::mem::take(&mut self.work);
        for idx in list {
            let more = self.pump(idx);
            if let Some(Some(c)) = self.conns.get_mut(idx) {
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
        let conn = match self.conns.get(idx) {
            Some(Some(c)) => c.pair.id,
            _ => return false,
        };
        let mut ops = 0;
        while ops < OPS_PER_TURN {
            let Some(c) = conn_in(&mut self.conns, conn) else {
                return false;
            };
            if c.pair.connecting && c.sock[1].writable {
                c.sock[1].writable = false;
                ops += 1;
                self.finish_connect(conn);
                self.drain();
                continue;
            }
            let mut did = false;
            for side in [Side::Client, Side::Upstream] {
                let Some(c) = conn_in(&mut self.conns, conn) else {
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
                let Some(c) = conn_in(&mut self.conns, conn) else {
                    return false;
                };
                if c.pipe_out_ready(side) {
                    ops += 1;
                    did = true;
                    self.splice_out(conn, side.other());
                    self.drain();
                }
                let Some(c) = conn_in(&mut self.conns, conn) else {
                    return false;
                };
                let s = c.sock[si(side)];
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
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return false;
        };
        let pipes = &mut self.pipes;
        c.pair.dirs.release(false, |p| pipes.give(p));
        // The turn is spent: is anything still both wanted and ready?
        c.has_work(&self.table)
    }

    fn finish_connect(&mut self, conn: ConnId) {
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        let now = Instant::now();
        match c.pair.finish_connect(!c.sock[1].hup) {
            Connecting::Done => {
                // Writable now; readable when an event says so (a reply
                // already there came with this event or brings its own).
                c.sock[1].writable = true;
                if let Some(u) = c.pair.upstream.as_ref() {
                    self.table.connected(conn, u, now);
                }
            }
            Connecting::Pending => {}
            Connecting::Failed(error) => {
                self.table.handle(Event::ConnectFailed { conn, error }, now);
            }
        }
    }

    fn read(&mut self, conn: ConnId, side: Side) {
        let Some(Conn { pair, sock, .. }) = conn_in(&mut self.conns, conn) else {
            return;
        };
        let Some(stream) = pair.stream(side) else {
            return;
        };
        let now = Instant::now();
        let s = &mut sock[si(side)];
        if s.drained {
            s.readable = false;
            self.table.handle(Event::Eof { conn, side }, now);
            return;
        }
        let Some((r, room)) = self.table.read(conn, side, stream) else {
            // Not wanted after all: wait for the next Interest.
            s.want_read = false;
            return;
        };
        match &r {
            Ok(0) => s.readable = false,
            // A short read emptied the socket: anything arriving later
            // raises a new edge, so the read that would only say
            // WouldBlock is saved. After the peer's FIN nothing can
            // arrive, so the read that would only say end of stream is
            // saved too (not after an error, whose read tells which).
            Ok(n) if *n < room => {
                if !s.hup {
                    s.readable = false;
                } else if !s.err {
                    s.drained = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.readable = false,
            _ => {}
        }
        self.table.handle(net::read_event(conn, side, r), now);
    }

    /// Registers `side` for reading again before it is read, so that the
    /// read that empties it is followed by an edge when more comes.
    fn unmute(&mut self, conn: ConnId, side: Side) {
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        if c.sock[si(side)].muted {
            c.sock[si(side)].muted = false;
            let both = Interest::READABLE | Interest::WRITABLE;
            let _ = c.reregister(self.poll.registry(), side, both);
        }
    }

    /// Splices what `side` has into its direction's pipe (the core said the
    /// direction is a pure relay).
    fn splice_in(&mut self, conn: ConnId, side: Side) {
        let size = self.table.splice_pipe();
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        let pipes = &mut self.pipes;
        let filled = c.pair.splice_in(side, || pipes.take(size));
        let s = &mut c.sock[si(side)];
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
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        let to = si(from.other());
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
        let Some(Conn { pair, sock, .. }) = conn_in(&mut self.conns, conn) else {
            return;
        };
        let Some(stream) = pair.stream(side) else {
            return;
        };
        let s = &mut sock[si(side)];
        let Some((r, want)) = self.table.write(conn, side, stream) else {
            s.want_write = false;
            return;
        };
        let now = Instant::now();
        match &r {
            // A short write filled the socket's buffer: wait for the edge.
            Ok(n) if *n < want => s.writable = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable = false,
            _ => {}
        }
        if let Some(ev) = net::write_event(conn, side, r) {
            self.table.handle(ev, now);
        }
    }
}
