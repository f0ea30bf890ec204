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
//! A direction the core calls a pure relay (`splice_ok`) moves through a
//! pipe with splice(2) instead (see `splice.rs`): socket → pipe while the
//! pipe has room, pipe → socket while the other socket is writable (the
//! core asks for no write there: its buffer is empty), each count told as
//! `Spliced`. Order is kept both ways: nothing is read into the core while
//! the pipe holds bytes, and the core allows no splice while its buffer
//! does; a source's EOF is told only once its pipe is empty, so the
//! half-close it leads to comes after the last byte.
//!
//! Tokens: `2 * index` is a connection's client socket, `2 * index + 1` its
//! upstream socket; listeners and the signal pipe live at the top of the
//! token space.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use portico_core::cli::{Plan, EXIT_OK, EXIT_RUNTIME};
use portico_core::status::Snapshot;
use portico_core::udp::{UdpId, Via};
use portico_core::{Action, ConnId, Event, IoKind, ListenerId, Recorded, Side};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::output::{Output, Start, TraceFiles, WallClock};
use crate::splice::{Fill, Pipe, Pipes};
use crate::vectored::write_parts;

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
    id: ConnId,
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// The upstream connect is still in progress.
    connecting: bool,
    sock: [Sock; 2],
    queued: bool,
    /// Per direction, by source side: the pipe its spliced bytes wait in
    /// on their way to the other socket (only while it holds some).
    pipe: [Option<Pipe>; 2],
    /// The source reached EOF with bytes still in its pipe: the core hears
    /// of it once they are out.
    eof_piped: [bool; 2],
    /// splice(2) is not supported here: read and write only.
    no_splice: bool,
}

impl Conn {
    fn new(id: ConnId, client: TcpStream) -> Conn {
        Conn {
            id,
            client,
            upstream: None,
            connecting: false,
            sock: [Sock::default(); 2],
            queued: false,
            pipe: [None, None],
            eof_piped: [false; 2],
            no_splice: false,
        }
    }

    fn stream(&self, side: Side) -> Option<&TcpStream> {
        match side {
            Side::Client => Some(&self.client),
            Side::Upstream => self.upstream.as_ref(),
        }
    }

    /// Bytes wait in the pipe of the direction `from` feeds.
    fn piped(&self, from: Side) -> bool {
        self.pipe[si(from)].as_ref().is_some_and(|p| !p.is_empty())
    }

    /// `side` is known readable and not muted, but nothing would read it
    /// now (see [`Sock::muted`]).
    fn stalled(&self, proxy: &Recorded, side: Side) -> bool {
        let s = self.sock[si(side)];
        s.readable && !s.muted && self.read_op(proxy, side) == ReadOp::None
    }

    /// Changes what `side`'s socket is registered for.
    fn reregister(
        &mut self,
        registry: &Registry,
        side: Side,
        interest: Interest,
    ) -> io::Result<()> {
        let token = Token(self.id.index() * 2 + si(side));
        match side {
            Side::Client => registry.reregister(&mut self.client, token, interest),
            Side::Upstream => match self.upstream.as_mut() {
                Some(u) => registry.reregister(u, token, interest),
                None => Ok(()),
            },
        }
    }

    /// What reading `side` would do now.
    fn read_op(&self, proxy: &Recorded, side: Side) -> ReadOp {
        let s = self.sock[si(side)];
        if !(s.want_read && s.readable) || self.eof_piped[si(side)] {
            return ReadOp::None;
        }
        let room = self.pipe[si(side)].as_ref().is_none_or(|p| p.has_room());
        if !self.no_splice && room && proxy.splice_ok(self.id, side) {
            ReadOp::Splice
        } else if self.piped(side) {
            // Bytes read earlier are still on their way: they go first.
            ReadOp::None
        } else {
            ReadOp::Read
        }
    }

    /// The pipe toward `side` holds bytes `side` can take now.
    fn pipe_out_ready(&self, side: Side) -> bool {
        self.piped(side.other()) && self.sock[si(side)].writable
    }

    /// See [`crate::splice::release`].
    fn release_pipes(&mut self, pipes: &mut Pipes, all: bool) {
        crate::splice::release(&mut self.pipe, &mut self.eof_piped, all, |p| pipes.give(p));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadOp {
    None,
    /// Into the core's buffer.
    Read,
    /// Into the direction's pipe.
    Splice,
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
    proxy: Recorded,
    trace: Option<TraceFiles>,
    conns: Vec<Option<Conn>>,
    listeners: Vec<Option<Lst>>,
    /// Connections with work to do this turn.
    work: Vec<usize>,
    /// Listeners with connections to accept.
    accept_work: Vec<usize>,
    out: Output,
    fatal: Option<String>,
    resolver: Resolver,
    wall: WallClock,
    flags: Signals,
    plan_path: Option<std::path::PathBuf>,
    reload_recheck: bool,
    /// Worker 0's signal pipe.
    sig_rx: Option<UnixStream>,
    udp_listeners: Vec<Option<(ListenerId, UdpSocket)>>,
    udp_maps: Vec<Option<(UdpId, UdpSocket)>>,
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
        config: Box<portico_core::Config>,
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

type Answer = (ConnId, io::Result<Vec<SocketAddr>>);

/// A name to resolve for one worker: where its answer goes, and the waker
/// of that worker's loop.
struct Job {
    conn: ConnId,
    host: String,
    port: u16,
    answers: Arc<Mutex<Vec<Answer>>>,
    waker: Arc<Waker>,
}

/// One worker's end of the resolver pool (threads running getaddrinfo,
/// shared by all workers, so their number does not grow with the
/// workers'); answers come back through the worker's queue and waker.
struct Resolver {
    jobs: std::sync::mpsc::Sender<Job>,
    answers: Arc<Mutex<Vec<Answer>>>,
    waker: Arc<Waker>,
}

impl Resolver {
    /// Starts the pool; returns where jobs go.
    fn pool() -> io::Result<std::sync::mpsc::Sender<Job>> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..RESOLVERS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("resolver-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let r = (job.host.as_str(), job.port)
                        .to_socket_addrs()
                        .map(|a| a.collect());
                    if let Ok(mut q) = job.answers.lock() {
                        q.push((job.conn, r));
                    }
                    let _ = job.waker.wake();
                })?;
        }
        Ok(tx)
    }

    /// False when the pool is gone.
    fn ask(&self, conn: ConnId, host: String, port: u16) -> bool {
        let job = Job {
            conn,
            host,
            port,
            answers: self.answers.clone(),
            waker: self.waker.clone(),
        };
        self.jobs.send(job).is_ok()
    }
}

fn si(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

pub fn run(plan: Plan) -> i32 {
    match run_inner(plan) {
        Ok(code) => code,
        Err(e) => {
            Output::log(portico_core::Level::Error, &e);
            EXIT_RUNTIME
        }
    }
}

fn run_inner(plan: Plan) -> Result<i32, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = plan.workers(cores);
    let (start, others) = Start::workers(plan, n)?;
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
    let jobs = Resolver::pool().map_err(|e| format!("cannot start the resolver threads: {e}"))?;
    let groups = (n > 1).then(|| Arc::new(Mutex::new(HashMap::new())));
    // Worker 0's alone: the signals, and the trace (one worker records).
    let mut signal = Some(signals(&polls[0].0)?);
    let Start {
        proxy,
        out,
        trace,
        path: plan_path,
        recheck: reload_recheck,
    } = start;
    let tables = std::iter::once((proxy, out, trace))
        .chain(others.into_iter().map(|w| (w.proxy, w.out, None)));
    let mut loops = Vec::with_capacity(n);
    for (index, (((poll, waker), mail), (mut proxy, out, trace))) in
        polls.into_iter().zip(inboxes).zip(tables).enumerate()
    {
        let resolver = Resolver {
            jobs: jobs.clone(),
            answers: Arc::default(),
            waker,
        };
        let (sig_rx, flags) = match signal.take() {
            Some((rx, flags)) => (Some(rx), flags),
            None => (None, Signals::default()),
        };
        let mut wall = WallClock::new();
        proxy.set_wall(wall.now());
        loops.push(Loop {
            trace,
            udp_listeners: Vec::new(),
            udp_maps: Vec::new(),
            udp_work: Vec::new(),
            plan_path: plan_path.clone(),
            reload_recheck,
            flags,
            sig_rx,
            resolver,
            wall,
            poll,
            proxy,
            conns: Vec::new(),
            listeners: Vec::new(),
            work: Vec::new(),
            accept_work: Vec::new(),
            out,
            fatal: None,
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
    let mut loops = loops.into_iter();
    let Some(mut lead) = loops.next() else {
        return Err("no event loop to run".into());
    };
    // Worker 0 opens the listeners before any other worker: a port that
    // cannot be had is reported once, and fatal at once. The others open
    // theirs before any worker accepts, so that connections taken early
    // cannot use up the descriptors a worker's listener needs.
    lead.drain();
    if let Some(msg) = lead.fatal.take() {
        Output::log(portico_core::Level::Error, &msg);
        return Ok(EXIT_RUNTIME);
    }
    let mut rest = Vec::with_capacity(n - 1);
    for mut lp in loops {
        lp.drain();
        if let Some(msg) = lp.fatal.take() {
            Output::log(portico_core::Level::Error, &msg);
            return Ok(EXIT_RUNTIME);
        }
        rest.push(lp);
    }
    let mut crew = Vec::new();
    for (k, mut lp) in rest.into_iter().enumerate() {
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
        let mut starting = true;
        loop {
            self.drain();
            if let (Some(t), Some(rec)) = (self.trace.as_mut(), self.proxy.take_trace()) {
                t.write(rec);
            }
            if let Some(msg) = self.fatal.take() {
                Output::log(portico_core::Level::Error, &msg);
                return EXIT_RUNTIME;
            }
            if starting && self.proxy.starting() == 0 {
                starting = false;
            }
            if self.proxy.is_finished() {
                return EXIT_OK;
            }
            let now = Instant::now();
            let timeout = if !self.work.is_empty()
                || !self.accept_work.is_empty()
                || !self.udp_work.is_empty()
            {
                Some(Duration::ZERO)
            } else {
                self.proxy
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    Output::log(
                        portico_core::Level::Error,
                        &format!("event loop failed: {e}"),
                    );
                    return EXIT_RUNTIME;
                }
            }
            let w = self.wall.now();
            self.proxy.set_wall(w);
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
                        if ev.is_readable() && c.stalled(&self.proxy, sd) {
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
            self.proxy.handle_timeout(Instant::now());
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
            self.proxy.shutdown(Instant::now());
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
        let Some((config, text)) = crate::output::load(self.plan_path.as_deref()) else {
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
        crate::output::apply(
            config,
            &text,
            recheck,
            closed,
            &mut self.proxy,
            &mut self.out,
        );
    }

    /// What the other workers sent.
    fn mail(&mut self) {
        while let Ok(mail) = self.crew.mail.try_recv() {
            match mail {
                Mail::Stop => self.proxy.shutdown(Instant::now()),
                Mail::Reload {
                    config,
                    text,
                    recheck,
                    done,
                } => {
                    let closed = crate::output::apply(
                        *config,
                        &text,
                        recheck,
                        0,
                        &mut self.proxy,
                        &mut self.out,
                    );
                    let _ = done.send(closed);
                }
                Mail::Snapshot { from, conn } => {
                    let part = Box::new(self.proxy.proxy().snapshot(Instant::now()));
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
            self.proxy.handle_gathered(conn, parts, Instant::now());
        }
    }

    /// Asks every other worker for its table. Their answers come through
    /// this loop's own mailbox, read only after this returns; a worker
    /// that is gone cannot be asked and is not waited for.
    fn gather(&mut self, conn: ConnId) {
        let from = self.crew.index;
        match self.tell_others(|| Mail::Snapshot { from, conn }) {
            0 => self.proxy.handle_gathered(conn, Vec::new(), Instant::now()),
            asked => {
                self.gathers.insert(conn, (Vec::new(), asked));
            }
        }
    }

    fn answers(&mut self) {
        let answers = match self.resolver.answers.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        let now = Instant::now();
        for (conn, r) in answers {
            let ev = match r {
                Ok(addrs) => Event::Resolved { conn, addrs },
                Err(_) => Event::ResolveFailed { conn },
            };
            self.proxy.handle(ev, now);
        }
    }

    /// Carries out every action the core has queued.
    fn drain(&mut self) {
        while let Some(action) = self.proxy.poll_action() {
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
                    if let Some(slot) = self.udp_listeners.get_mut(listener.index()) {
                        if slot.as_ref().is_some_and(|(i, _)| *i == listener) {
                            *slot = None;
                        }
                    }
                }
                Action::Connect { conn, addr, bind } => self.connect(conn, addr, bind),
                Action::ListenUdp { listener, addr } => self.listen_udp(listener, addr),
                Action::UdpOpen {
                    id,
                    bind,
                    destination,
                } => self.udp_open(id, bind, destination),
                Action::UdpClose { id } => {
                    if let Some(slot) = self.udp_maps.get_mut(id.index()) {
                        if slot.as_ref().is_some_and(|(i, _)| *i == id) {
                            *slot = None;
                        }
                    }
                }
                Action::Resolve { conn, host, port } => {
                    if !self.resolver.ask(conn, host, port) {
                        self.proxy
                            .handle(Event::ResolveFailed { conn }, Instant::now());
                    }
                }
                Action::Interest {
                    conn,
                    side,
                    read,
                    write,
                } => {
                    if let Some(c) = self.conn_mut(conn) {
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
                    if let Some(c) = self.conns.get_mut(conn.index()) {
                        if let Some(c) = c.as_mut().filter(|c| c.id == conn) {
                            c.upstream = None;
                            c.connecting = false;
                            c.sock[1] = Sock::default();
                            // What was on its way to or from it goes too.
                            c.release_pipes(&mut self.pipes, true);
                        }
                    }
                }
                Action::ShutdownWrite { conn, side } => {
                    if let Some(c) = self.conn_mut(conn) {
                        let r = match side {
                            Side::Client => c.client.shutdown(Shutdown::Write),
                            Side::Upstream => match &c.upstream {
                                Some(u) => u.shutdown(Shutdown::Write),
                                None => Ok(()),
                            },
                        };
                        if let Err(e) = r {
                            if e.kind() != io::ErrorKind::NotConnected {
                                let error = IoKind::from_io(&e);
                                self.proxy
                                    .handle(Event::IoError { conn, side, error }, Instant::now());
                            }
                        }
                    }
                }
                Action::Close { conn } => {
                    if let Some(c) = self.conns.get_mut(conn.index()) {
                        if c.as_ref().is_some_and(|c| c.id == conn) {
                            // Dropping the sockets closes them and takes them
                            // out of the poll set.
                            if let Some(mut c) = c.take() {
                                c.release_pipes(&mut self.pipes, true);
                            }
                        }
                    }
                }
                Action::Log { level, message } => Output::log(level, &message),
                Action::Access(rec) => self.out.access(&rec),
                Action::Say(line) => Output::say(&line),
                Action::Fatal { message } => {
                    if self.fatal.is_none() {
                        self.fatal = Some(message);
                    }
                }
                Action::Gather { conn } => self.gather(conn),
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

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        match self.conns.get_mut(conn.index()) {
            Some(Some(c)) if c.id == conn => Some(c),
            _ => None,
        }
    }

    fn listen(&mut self, listener: ListenerId, addr: SocketAddr) {
        // A port of the configuration is every worker's; a data port
        // (port 0) is its own session's worker's.
        let groups = self.crew.groups.clone().filter(|_| addr.port() != 0);
        let group = groups.as_ref().map(|_| addr);
        let r = (|| -> io::Result<TcpListener> {
            let mut held = groups
                .as_ref()
                .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(h) = held.as_ref() {
                if h.get(&addr).copied().unwrap_or(0) == 0 {
                    probe(addr)?;
                }
            }
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            if held.is_some() {
                s.set_reuse_port(true)?;
            }
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_nonblocking(true)?;
            s.bind(&SockAddr::from(addr))?;
            s.listen(1024)?;
            if let Some(h) = held.as_mut() {
                *h.entry(addr).or_insert(0) += 1;
            }
            Ok(TcpListener::from_std(s.into()))
        })();
        let now = Instant::now();
        match r {
            Ok(mut l) => {
                let i = listener.index();
                let token = Token(LISTENER_BASE + i);
                if let Err(e) = self
                    .poll
                    .registry()
                    .register(&mut l, token, Interest::READABLE)
                {
                    let error = IoKind::from_io(&e);
                    self.proxy
                        .handle(Event::ListenFailed { listener, error }, now);
                    return;
                }
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
                self.proxy.handle(Event::Listening { listener, local }, now);
            }
            Err(e) => {
                let error = IoKind::from_io(&e);
                self.proxy
                    .handle(Event::ListenFailed { listener, error }, now);
            }
        }
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr, bind: Option<std::net::IpAddr>) {
        let r = (|| -> io::Result<TcpStream> {
            // Non-blocking from the start: one syscall, not three.
            let s = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.nonblocking(),
                Some(Protocol::TCP),
            )?;
            s.set_nodelay(true)?;
            if let Some(ip) = bind {
                s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
            }
            match s.connect(&SockAddr::from(addr)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            Ok(TcpStream::from_std(s.into()))
        })();
        let idx = conn.index();
        let registry = self.poll.registry();
        let Some(Some(c)) = self.conns.get_mut(idx) else {
            return;
        };
        if c.id != conn {
            return;
        }
        let r = r.and_then(|mut u| {
            registry.register(
                &mut u,
                Token(idx * 2 + 1),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(u)
        });
        match r {
            Ok(u) => {
                // A previous attempt's socket (if any) closes here.
                c.upstream = Some(u);
                c.connecting = true;
                c.sock[1] = Sock::default();
                c.release_pipes(&mut self.pipes, true);
            }
            Err(e) => {
                let error = IoKind::from_io(&e);
                self.proxy
                    .handle(Event::ConnectFailed { conn, error }, Instant::now());
            }
        }
    }

    fn listen_udp(&mut self, listener: ListenerId, addr: SocketAddr) {
        let r = (|| -> io::Result<UdpSocket> {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_nonblocking(true)?;
            s.bind(&SockAddr::from(addr))?;
            let mut u = UdpSocket::from_std(s.into());
            let token = Token(UDP_LISTENER_BASE + listener.index());
            self.poll
                .registry()
                .register(&mut u, token, Interest::READABLE)?;
            Ok(u)
        })();
        let now = Instant::now();
        match r {
            Ok(u) => {
                let local = u.local_addr().unwrap_or(addr);
                let i = listener.index();
                if self.udp_listeners.len() <= i {
                    self.udp_listeners.resize_with(i + 1, || None);
                }
                self.udp_listeners[i] = Some((listener, u));
                self.proxy.handle(Event::Listening { listener, local }, now);
            }
            Err(e) => {
                let error = IoKind::from_io(&e);
                self.proxy
                    .handle(Event::ListenFailed { listener, error }, now);
            }
        }
    }

    fn udp_open(&mut self, id: UdpId, bind: Option<std::net::IpAddr>, dest: SocketAddr) {
        let r = (|| -> io::Result<UdpSocket> {
            let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
            s.set_nonblocking(true)?;
            let from = match (bind, dest) {
                (Some(ip), _) => SocketAddr::new(ip, 0),
                (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
                (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
            };
            s.bind(&SockAddr::from(from))?;
            s.connect(&SockAddr::from(dest))?;
            let mut u = UdpSocket::from_std(s.into());
            let token = Token(UDP_MAP_BASE + id.index());
            self.poll
                .registry()
                .register(&mut u, token, Interest::READABLE)?;
            Ok(u)
        })();
        match r {
            Ok(u) => {
                let i = id.index();
                if self.udp_maps.len() <= i {
                    self.udp_maps.resize_with(i + 1, || None);
                }
                self.udp_maps[i] = Some((id, u));
            }
            Err(_) => self.proxy.handle_udp_failed(id, Instant::now()),
        }
    }

    /// Reads datagrams from the UDP sockets that are ready, a bounded number
    /// each, then sends what the core has queued.
    fn udp_turn(&mut self) {
        let list = std::mem::take(&mut self.udp_work);
        for t in list {
            let mut more = false;
            for _ in 0..DATAGRAMS_PER_TURN {
                let now = Instant::now();
                if t.0 >= UDP_MAP_BASE {
                    let i = t.0 - UDP_MAP_BASE;
                    let Some(Some((id, u))) = self.udp_maps.get(i) else {
                        break;
                    };
                    let id = *id;
                    match u.recv(self.proxy.datagram_buf()) {
                        Ok(n) => self.proxy.handle_reply(id, n, now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors (port unreachable) surface here: the
                        // mapping lives on until it idles out.
                        Err(_) => break,
                    }
                } else {
                    let i = t.0 - UDP_LISTENER_BASE;
                    let Some(Some((id, u))) = self.udp_listeners.get(i) else {
                        break;
                    };
                    let id = *id;
                    match u.recv_from(self.proxy.datagram_buf()) {
                        Ok((n, from)) => self.proxy.handle_datagram(id, from, n, now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                self.drain();
                self.send_datagrams();
                more = true;
            }
            if more {
                self.udp_work.push(t);
            }
        }
        self.drain();
        self.send_datagrams();
    }

    fn send_datagrams(&mut self) {
        while let Some((via, data)) = self.proxy.poll_datagram() {
            // A datagram that cannot go now is dropped, as a network would.
            match via {
                Via::Listener(id, to) => {
                    if let Some(Some((i, u))) = self.udp_listeners.get(id.index()) {
                        if *i == id {
                            let _ = u.send_to(&data, to);
                        }
                    }
                }
                Via::Mapping(id) => {
                    if let Some(Some((i, u))) = self.udp_maps.get(id.index()) {
                        if *i == id {
                            let _ = u.send(&data);
                        }
                    }
                }
            }
        }
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
                        self.proxy
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
        let Ok(conn) = self.proxy.accept_on(listener, peer, local, Instant::now()) else {
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
            self.proxy
                .handle(Event::IoError { conn, side, error }, Instant::now());
            return;
        }
        if self.conns.len() <= idx {
            self.conns.resize_with(idx + 1, || None);
        }
        self.conns[idx] = Some(Conn::new(conn, stream));
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
            Some(Some(c)) => c.id,
            _ => return false,
        };
        let mut ops = 0;
        while ops < OPS_PER_TURN {
            let Some(c) = self.conn_mut(conn) else {
                return false;
            };
            if c.connecting && c.sock[1].writable {
                c.sock[1].writable = false;
                ops += 1;
                self.finish_connect(idx);
                self.drain();
                continue;
            }
            let mut did = false;
            for side in [Side::Client, Side::Upstream] {
                let Some(c) = self.conns.get(idx).and_then(Option::as_ref) else {
                    return false;
                };
                if c.id != conn
                    || (side == Side::Upstream && (c.upstream.is_none() || c.connecting))
                {
                    continue;
                }
                let op = c.read_op(&self.proxy, side);
                if op != ReadOp::None {
                    ops += 1;
                    did = true;
                    self.unmute(idx, side);
                    if op == ReadOp::Splice {
                        self.splice_in(conn, side);
                    } else {
                        self.read(conn, side);
                    }
                    self.drain();
                }
                let Some(c) = self.conn_mut(conn) else {
                    return false;
                };
                if c.pipe_out_ready(side) {
                    ops += 1;
                    did = true;
                    self.splice_out(conn, side.other());
                    self.drain();
                }
                let Some(c) = self.conn_mut(conn) else {
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
        let proxy = &self.proxy;
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return false;
        };
        if c.id != conn {
            return false;
        }
        c.release_pipes(&mut self.pipes, false);
        // The turn is spent: is anything still both wanted and ready?
        (c.connecting && c.sock[1].writable)
            || [Side::Client, Side::Upstream].into_iter().any(|side| {
                let s = c.sock[si(side)];
                let open = side == Side::Client || (c.upstream.is_some() && !c.connecting);
                open && (c.read_op(proxy, side) != ReadOp::None
                    || c.pipe_out_ready(side)
                    || (s.want_write && s.writable))
            })
    }

    fn finish_connect(&mut self, idx: usize) {
        let Some(Some(c)) = self.conns.get_mut(idx) else {
            return;
        };
        let conn = c.id;
        let Some(u) = c.upstream.as_ref() else {
            return;
        };
        let now = Instant::now();
        // Writable with neither error nor hang-up is connected (a failed
        // connect always brings EPOLLERR); only otherwise are the pending
        // error and the peer worth asking for.
        let peer = if c.sock[1].hup {
            if let Ok(Some(e)) | Err(e) = u.take_error() {
                c.connecting = false;
                let error = IoKind::from_io(&e);
                self.proxy.handle(Event::ConnectFailed { conn, error }, now);
                return;
            }
            u.peer_addr().map(|_| ())
        } else {
            Ok(())
        };
        match peer {
            Ok(()) => {
                c.connecting = false;
                // Writable now; readable when an event says so (a reply
                // already there came with this event or brings its own).
                c.sock[1].writable = true;
                let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                let local = if self.proxy.wants_local(conn) {
                    u.local_addr().unwrap_or(unspecified)
                } else {
                    unspecified
                };
                self.proxy.handle(Event::Connected { conn, local }, now);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                // A spurious wake-up: still connecting.
            }
            Err(e) => {
                c.connecting = false;
                let error = IoKind::from_io(&e);
                self.proxy.handle(Event::ConnectFailed { conn, error }, now);
            }
        }
    }

    fn read(&mut self, conn: ConnId, side: Side) {
        let idx = conn.index();
        let Some(Some(c)) = self.conns.get_mut(idx) else {
            return;
        };
        let stream = match side {
            Side::Client => &mut c.client,
            Side::Upstream => match c.upstream.as_mut() {
                Some(u) => u,
                None => return,
            },
        };
        let now = Instant::now();
        if c.sock[si(side)].drained {
            c.sock[si(side)].readable = false;
            self.proxy.handle(Event::Eof { conn, side }, now);
            return;
        }
        let Some(buf) = self.proxy.recv_buf(conn, side) else {
            // Not wanted after all: wait for the next Interest.
            c.sock[si(side)].want_read = false;
            return;
        };
        let want = buf.len();
        let r = loop {
            match stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let ev = match r {
            Ok(0) => {
                c.sock[si(side)].readable = false;
                Event::Eof { conn, side }
            }
            Ok(n) => {
                // A short read emptied the socket: anything arriving later
                // raises a new edge, so the read that would only say
                // WouldBlock is saved. After the peer's FIN nothing can
                // arrive, so the read that would only say end of stream is
                // saved too (not after an error, whose read tells which).
                let s = &mut c.sock[si(side)];
                if n < want {
                    if !s.hup {
                        s.readable = false;
                    } else if !s.err {
                        s.drained = true;
                    }
                }
                Event::Read { conn, side, n }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.sock[si(side)].readable = false;
                Event::ReadBlocked { conn, side }
            }
            Err(e) => Event::IoError {
                conn,
                side,
                error: IoKind::from_io(&e),
            },
        };
        self.proxy.handle(ev, now);
    }

    /// Registers `side` for reading again before it is read, so that the
    /// read that empties it is followed by an edge when more comes.
    fn unmute(&mut self, idx: usize, side: Side) {
        let Some(Some(c)) = self.conns.get_mut(idx) else {
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
        let size = self.proxy.proxy().splice_pipe();
        let Some(Some(c)) = self.conns.get_mut(conn.index()) else {
            return;
        };
        let mut pipe = match c.pipe[si(side)].take() {
            Some(p) => p,
            None => match self.pipes.take(size) {
                Ok(p) => p,
                Err(_) => {
                    // No pipe (unsupported, or out of descriptors): this
                    // connection reads and writes.
                    c.no_splice = true;
                    return;
                }
            },
        };
        let Some(stream) = c.stream(side) else {
            self.pipes.give(pipe);
            return;
        };
        let r = pipe.fill(stream.as_fd());
        let now = Instant::now();
        let empty = pipe.is_empty();
        c.pipe[si(side)] = Some(pipe);
        let s = &mut c.sock[si(side)];
        let ev = match r {
            // Nothing told yet: the core hears of bytes once they are out.
            // A short splice says nothing about the socket (the pipe may
            // have run out of page slots), so `readable` stays.
            Ok(Fill::Moved) | Ok(Fill::PipeFull) => return,
            Ok(Fill::Empty) => {
                s.readable = false;
                return;
            }
            Ok(Fill::Unsupported) => {
                c.no_splice = true;
                return;
            }
            Ok(Fill::Eof) => {
                s.readable = false;
                if !empty {
                    c.eof_piped[si(side)] = true;
                    return;
                }
                Event::Eof { conn, side }
            }
            Err(e) => Event::IoError {
                conn,
                side,
                error: IoKind::from_io(&e),
            },
        };
        self.proxy.handle(ev, now);
    }

    /// Splices what the pipe of the direction `from` feeds out to the other
    /// socket, and tells the core how much went (and the source's EOF, once
    /// the pipe is empty).
    fn splice_out(&mut self, conn: ConnId, from: Side) {
        let to = from.other();
        let Some(Some(c)) = self.conns.get_mut(conn.index()) else {
            return;
        };
        let stream = match to {
            Side::Client => Some(&c.client),
            Side::Upstream => c.upstream.as_ref(),
        };
        let (Some(pipe), Some(stream)) = (c.pipe[si(from)].as_mut(), stream) else {
            return;
        };
        let held = pipe.len();
        let r = pipe.drain(stream.as_fd());
        let drained = pipe.is_empty();
        let now = Instant::now();
        match r {
            Ok(Some(n)) => {
                // Short: the socket's buffer is full; wait for the edge.
                if n < held {
                    c.sock[si(to)].writable = false;
                }
                let eof = drained && std::mem::take(&mut c.eof_piped[si(from)]);
                self.proxy.handle(Event::Spliced { conn, from, n }, now);
                if eof {
                    self.proxy.handle(Event::Eof { conn, side: from }, now);
                }
            }
            Ok(None) => c.sock[si(to)].writable = false,
            Err(e) => {
                let error = IoKind::from_io(&e);
                self.proxy.handle(
                    Event::IoError {
                        conn,
                        side: to,
                        error,
                    },
                    now,
                );
            }
        }
    }

    fn write(&mut self, conn: ConnId, side: Side) {
        let idx = conn.index();
        let Some(Some(c)) = self.conns.get_mut(idx) else {
            return;
        };
        let stream = match side {
            Side::Client => &mut c.client,
            Side::Upstream => match c.upstream.as_mut() {
                Some(u) => u,
                None => return,
            },
        };
        let Some(parts) = self.proxy.send_bufs(conn, side) else {
            c.sock[si(side)].want_write = false;
            return;
        };
        let r = write_parts(&*stream, parts);
        let now = Instant::now();
        let want = parts[0].len() + parts[1].len();
        let ev = match r {
            Ok(n) => {
                // A short write filled the socket's buffer: wait for the edge.
                if n < want {
                    c.sock[si(side)].writable = false;
                }
                Event::Written { conn, side, n }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.sock[si(side)].writable = false;
                return;
            }
            Err(e) => Event::IoError {
                conn,
                side,
                error: IoKind::from_io(&e),
            },
        };
        self.proxy.handle(ev, now);
    }
}
