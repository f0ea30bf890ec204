//! Threads: one acceptor waiting on every listener with `polling`, one thread
//! per connection waiting on that connection's two sockets, one UDP thread,
//! one timer thread and one signal thread, all driving a single core behind
//! a mutex.
//!
//! The listeners open on the main thread before any other thread starts;
//! root is given up (`[process] user`) right then, so that every thread
//! (capabilities are per thread) starts with only the capability kept.
//!
//! A connection's thread is taken from a pool of parked ones (a new one
//! only when none is parked) and goes back there when its connection
//! ends: no thread is started per connection once the pool holds enough.
//! It waits with ppoll(2) on its own sockets, so that a connection costs
//! no descriptor beyond its sockets, and is woken by a signal to it alone
//! (see `wait`).
//!
//! Whoever holds the lock drains the core's actions and routes each to the
//! thread that owns the sockets it names (a channel plus a wake-up of that
//! thread); log lines are written by whoever drains them. Sockets are
//! non-blocking: a connection's thread holds the lock only for one read
//! that cannot block, so a stalled peer stalls nobody else. Writes go out
//! with the lock let go: before letting go, the thread copies what the
//! core has to write on its sockets, and tells the core what went under
//! the next hold (a write on loopback carries the peer's whole receive
//! path, too long to keep every other connection waiting). Bytes read
//! from one socket are written to the other before the thread waits
//! again, and a read short of the room there was is taken to have
//! emptied its socket: per request, one wait, one read, one write and two
//! holds of the lock.
//! What the core asks of a new connection at once (a mapped port's
//! connect) its thread carries out first thing.
//!
//! Connects are non-blocking and waited for on the connection's thread,
//! so several attempts of one connection race there at once (Happy
//! Eyeballs: the core says when each starts, under a key of its own, and
//! which one wins).
//!
//! A direction the core calls a pure relay moves through a pipe with
//! splice(2) instead, in the order `portico_runtime::directions` keeps,
//! without the lock: the thread takes it only to tell the core what went
//! (`Spliced`, or an EOF or error), and asks `splice_ok` again while it
//! holds it. Only this thread's own events move its session between
//! relaying and not (anything else closes it), so that answer holds until
//! the next one.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use polling::{Event as PEvent, Events, Poller};
use portico_runtime::checks::{self, Checkers};
use portico_runtime::helpers::Helpers;
use portico_runtime::net::{self, Connecting, Ports};
use portico_runtime::resolver::resolve;
use portico_runtime::splice::{Pipe, Pipes};
use portico_runtime::Intercept;
use portico_runtime::{
    ConnCmd, ConnId, Datagrams, Drained, Event, Filled, IoKind, ListenCmd, ListenerId, Pair,
    PipeSize, Plan, ReadOp, Seen, Side, Signals, Slots, Start, Step, Table, UdpCmd, UdpKey, Worker,
    EXIT_OK,
};

use crate::wait::{self, Waker};

/// Accepts one listener may do before the others get a turn.
const ACCEPTS_PER_TURN: usize = 64;
/// Reads or writes in a row on one socket before the lock is let go.
const OPS_PER_TURN: usize = 16;

struct Route {
    id: ConnId,
    tx: Sender<ConnCmd>,
    waker: Arc<Waker>,
}

struct Core {
    table: Table,
    /// A worker alone: the status page's gathering, the reload, the stop.
    worker: Worker,
    routes: HashMap<usize, Route>,
    acceptor_tx: (Sender<ListenCmd>, Arc<Poller>),
    udp_tx: (Sender<UdpCmd>, Arc<Poller>),
    /// When the timer thread plans to wake next.
    timer_wake: Option<Instant>,
}

struct Shared {
    core: Mutex<Core>,
    /// Wakes the timer thread when a deadline moved earlier.
    timer: Condvar,
    /// Wakes the main thread when the core is finished.
    done: Condvar,
    /// Empty pipes for directions that start splicing (a lock of its own:
    /// taken when a direction starts, and when its thread goes to wait).
    pipes: Mutex<Pipes>,
    /// The password-checking threads: a connection's thread waits for its
    /// verdict there, without the core's lock.
    checkers: Checkers,
    /// The `[auth] helper` processes: a connection's thread waits for its
    /// answer there, without the core's lock.
    helpers: Arc<Helpers>,
    /// Connection threads parked between connections (a lock of its own:
    /// taken when a connection starts and when one ends).
    parked: Mutex<Vec<Arc<Hand>>>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Core> {
    // A thread that panicked while holding the lock leaves the core as it
    // was; carrying on beats taking every other connection down.
    let mut core = shared.core.lock().unwrap_or_else(|p| p.into_inner());
    core.table.set_wall_clock();
    core
}

impl Shared {
    /// Tells the core something (with the lock held) and routes what it
    /// then asks for.
    fn tell<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = lock(self);
        let r = f(&mut core);
        core.drain(self, None, &mut Vec::new());
        r
    }

    fn pipes(&self) -> MutexGuard<'_, Pipes> {
        self.pipes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give(&self, pipe: Pipe) {
        self.pipes().give(pipe);
    }
}

impl Core {
    /// Drains the core's actions. Those for `me` are returned for the caller
    /// to carry out; the rest go to their owners.
    fn drain(&mut self, shared: &Shared, me: Option<ConnId>, mine: &mut Vec<ConnCmd>) {
        while let Some(step) = self.table.next_step() {
            let (conn, cmd) = match step {
                Step::Conn(conn, cmd) => (conn, cmd),
                Step::Listen(cmd) => {
                    self.to_acceptor(cmd);
                    continue;
                }
                Step::Udp(cmd) => {
                    self.to_udp(cmd);
                    continue;
                }
                Step::Unlisten(listener) => {
                    self.to_acceptor(ListenCmd::Close(listener));
                    self.to_udp(UdpCmd::Unlisten(listener));
                    continue;
                }
                Step::Gather(conn) => {
                    self.worker.gather(&mut self.table, conn);
                    continue;
                }
            };
            let closing = matches!(cmd, ConnCmd::Close);
            if Some(conn) == me {
                if closing {
                    self.routes.remove(&conn.index());
                }
                mine.push(cmd);
                continue;
            }
            let Some(route) = self.routes.get(&conn.index()) else {
                continue;
            };
            if route.id != conn {
                continue;
            }
            // A thread that has gone away has nothing left to be told.
            let _ = route.tx.send(cmd);
            route.waker.wake();
            if closing {
                self.routes.remove(&conn.index());
            }
        }
        self.table.flush_trace();
        if self.table.is_finished() {
            shared.done.notify_all();
        }
        let next = self.table.poll_timeout();
        if next.is_some() && (self.timer_wake.is_none() || next < self.timer_wake) {
            shared.timer.notify_one();
        }
    }

    fn to_acceptor(&self, cmd: ListenCmd) {
        let (tx, poller) = &self.acceptor_tx;
        let _ = tx.send(cmd);
        let _ = poller.notify();
    }

    fn to_udp(&self, cmd: UdpCmd) {
        let (tx, poller) = &self.udp_tx;
        let _ = tx.send(cmd);
        let _ = poller.notify();
    }
}

/// Serves `plan` until it is finished: the exit code, or why it could not
/// serve.
pub fn run(plan: Plan) -> Result<i32, String> {
    let (signals, mut wake) = Signals::install()?;
    let Start {
        mut table,
        path,
        recheck,
        credentials,
    } = Start::new(plan)?;

    // The start's actions, carried out in the order the core queued them
    // (its lines among them) before any thread runs: a listener that cannot
    // be opened is fatal here. The threads get the sockets.
    let ports = Ports::new(1);
    let mut listeners = Vec::new();
    let mut udp = Datagrams::default();
    while let Some(step) = table.next_step() {
        match step {
            Step::Listen(ListenCmd::Open(listener, addr, how)) => {
                let opened = ports.listen(addr, how).map(|(l, _)| {
                    let local = l.local_addr().unwrap_or(addr);
                    listeners.push((listener, l, how));
                    local
                });
                table.listened(listener, opened);
            }
            Step::Udp(cmd) => {
                // Registered with the UDP thread's poller once it runs.
                if let (Some(opened), _) = udp.apply(cmd, |_, _| Ok(())) {
                    opened.tell(&mut table);
                }
            }
            // Nothing else comes before the first connection.
            _ => {}
        }
    }
    if let Some(message) = table.take_fatal() {
        return Err(message);
    }
    // Every listener is open, and this is still the only thread: give up
    // root now, so that every thread started from here on (the acceptor,
    // and the connections' threads it starts) starts without it.
    portico_runtime::assume(credentials.as_ref())?;
    let ledger = table.ledger();

    let poller = || Poller::new().map(Arc::new);
    let poller_failed = |e| format!("cannot create a poller: {e}");
    let acceptor_poller = poller().map_err(poller_failed)?;
    let udp_poller = poller().map_err(poller_failed)?;
    let (acc_tx, acc_rx) = channel();
    let (udp_tx, udp_rx) = channel();
    let (checkers, checker_threads) = Checkers::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    checker_threads
        .start(checks::threads(cores))
        .map_err(|e| format!("cannot start the password-checking threads: {e}"))?;
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            table,
            worker: Worker::alone(path, recheck),
            routes: HashMap::new(),
            acceptor_tx: (acc_tx, acceptor_poller.clone()),
            udp_tx: (udp_tx, udp_poller.clone()),
            timer_wake: None,
        }),
        timer: Condvar::new(),
        done: Condvar::new(),
        pipes: Mutex::new(Pipes::new()),
        checkers,
        helpers: Helpers::new(),
        parked: Mutex::new(Vec::new()),
    });

    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(|_| ())
            .map_err(|e| format!("cannot start a thread: {e}"))
    };
    let sh = shared.clone();
    spawn(
        "signals",
        Box::new(move || loop {
            // Blocks until a signal's byte comes.
            match net::retry(|| wake.read(&mut [0u8; 64])) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            sh.tell(|core| {
                // Reopened first, as in `portico`.
                if signals.reopen() {
                    core.worker.reopen(&mut core.table);
                }
                if signals.reload() {
                    core.worker.reload(&mut core.table);
                    sh.helpers.follow(core.table.config().helper.as_ref());
                }
                if signals.stop() {
                    core.worker.stop(&mut core.table);
                }
            });
        }),
    )?;
    let sh = shared.clone();
    spawn("timers", Box::new(move || timer_thread(&sh)))?;
    let sh = shared.clone();
    spawn(
        "udp",
        Box::new(move || udp_thread(&sh, udp_poller, udp_rx, udp)),
    )?;
    wait::install().map_err(|e| format!("cannot set up the wake signal: {e}"))?;
    let sh = shared.clone();
    spawn(
        "acceptor",
        Box::new(move || acceptor(&sh, listeners, ports, acceptor_poller, acc_rx)),
    )?;
    portico_runtime::ready(ledger)?;

    let mut core = lock(&shared);
    loop {
        if let Some(msg) = core.table.take_fatal() {
            return Err(msg);
        }
        if core.table.is_finished() {
            return Ok(EXIT_OK);
        }
        core = shared
            .done
            .wait_timeout(core, Duration::from_millis(500))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

fn timer_thread(shared: &Shared) {
    let mut core = lock(shared);
    loop {
        let now = Instant::now();
        core.table.handle_timeout(now);
        core.drain(shared, None, &mut Vec::new());
        let next = core.table.poll_timeout();
        core.timer_wake = next;
        let wait = match next {
            Some(t) => t.saturating_duration_since(now) + Duration::from_millis(1),
            None => Duration::from_secs(3600),
        };
        core = shared
            .timer
            .wait_timeout(core, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Poller keys of UDP mappings sit above those of UDP listeners.
const UDP_MAP_KEY: usize = 1 << 40;
/// SOCKS UDP associations' sockets, two per connection.
const UDP_ASSOC_KEY: usize = 1 << 41;

/// One thread for every UDP socket: datagrams are small and independent, so
/// a thread per mapping would buy nothing.
fn udp_thread(shared: &Arc<Shared>, poller: Arc<Poller>, rx: Receiver<UdpCmd>, mut udp: Datagrams) {
    // SAFETY (each `add`): a socket is deleted from the poller before it is
    // dropped (`Datagrams` hands back the ones it closes or replaces).
    let register = |u: &UdpSocket, key: UdpKey| {
        let key = match key {
            UdpKey::Port(i) => i,
            UdpKey::Mapping(i) => UDP_MAP_KEY + i,
            UdpKey::Association(i, out) => UdpKey::association_token(i, out, UDP_ASSOC_KEY),
        };
        unsafe { poller.add(u, PEvent::readable(key)) }
    };
    for (key, u) in udp.sockets() {
        let _ = register(u, key);
    }
    let mut events = Events::new();
    loop {
        while let Ok(cmd) = rx.try_recv() {
            let (opened, gone) = udp.apply(cmd, register);
            for u in gone {
                let _ = poller.delete(&u);
            }
            if let Some(opened) = opened {
                shared.tell(|core| opened.tell(&mut core.table));
            }
        }
        // Datagrams the core queued (the first one of a new mapping waits
        // for its socket, opened just above).
        udp.send(&mut lock(shared).table);
        events.clear();
        if poller.wait(&mut events, None).is_err() {
            continue;
        }
        for ev in events.iter() {
            let key = if ev.key >= UDP_ASSOC_KEY {
                UdpKey::from_association_token(ev.key, UDP_ASSOC_KEY)
            } else {
                match ev.key.checked_sub(UDP_MAP_KEY) {
                    Some(i) => UdpKey::Mapping(i),
                    None => UdpKey::Port(ev.key),
                }
            };
            for _ in 0..ACCEPTS_PER_TURN {
                if !shared.tell(|core| udp.recv(&mut core.table, key)) {
                    break;
                }
            }
            // Oneshot: arm the socket again.
            if let Some(u) = udp.socket(key) {
                let _ = poller.modify(u, PEvent::readable(ev.key));
            }
        }
        // Back to the top: opens the datagrams asked for, then sends them.
    }
}

struct Lst {
    sock: TcpListener,
    paused: bool,
    /// A transparent service's: how an accepted connection's original
    /// destination is read.
    intercept: Option<Intercept>,
}

fn acceptor(
    shared: &Arc<Shared>,
    opened: Vec<(ListenerId, TcpListener, Option<Intercept>)>,
    ports: Ports,
    poller: Arc<Poller>,
    rx: Receiver<ListenCmd>,
) {
    // The connection threads start from here: with the wake signal
    // blocked from their first instruction.
    wait::block();
    let mut listeners: Slots<ListenerId, Lst> = Slots::default();
    // SAFETY (each `add`): every listener is deleted from the poller before
    // it is dropped (replaced here, or closed by ListenCmd::Close).
    let add = |listeners: &mut Slots<ListenerId, Lst>,
               id: ListenerId,
               sock: TcpListener,
               intercept: Option<Intercept>| {
        let _ = unsafe { poller.add(&sock, PEvent::readable(id.index())) };
        let paused = false;
        let l = Lst {
            sock,
            paused,
            intercept,
        };
        if let Some(old) = listeners.insert(id, l) {
            let _ = poller.delete(&old.sock);
        }
    };
    for (id, sock, how) in opened {
        add(&mut listeners, id, sock, how);
    }
    let mut events = Events::new();
    loop {
        events.clear();
        if poller.wait(&mut events, None).is_err() {
            continue;
        }
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                ListenCmd::Open(id, addr, how) => {
                    let opened = ports.listen(addr, how).map(|(sock, _)| {
                        let local = sock.local_addr().unwrap_or(addr);
                        add(&mut listeners, id, sock, how);
                        local
                    });
                    shared.tell(|core| core.table.listened(id, opened));
                }
                ListenCmd::Pause(id) => {
                    if let Some(l) = listeners.get_mut(id) {
                        l.paused = true;
                    }
                }
                ListenCmd::Resume(id) => {
                    if let Some(l) = listeners.get_mut(id) {
                        l.paused = false;
                        let _ = poller.modify(&l.sock, PEvent::readable(id.index()));
                    }
                }
                ListenCmd::Close(id) => {
                    if let Some(l) = listeners.remove(id) {
                        let _ = poller.delete(&l.sock);
                    }
                }
            }
        }
        for ev in events.iter() {
            let i = ev.key;
            for _ in 0..ACCEPTS_PER_TURN {
                let Some((id, l)) = listeners.at(i) else {
                    break;
                };
                if l.paused {
                    break;
                }
                match l.sock.accept() {
                    Ok((stream, peer)) => accepted(shared, id, stream, peer, l.intercept),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let (listener, error) = (id, IoKind::from_io(&e));
                        let ev = Event::AcceptFailed { listener, error };
                        shared.tell(|core| core.table.handle(ev, Instant::now()));
                        break;
                    }
                }
            }
            // The poller is oneshot: arm the listener again unless paused.
            if let Some((_, l)) = listeners.at(i).filter(|(_, l)| !l.paused) {
                let _ = poller.modify(&l.sock, PEvent::readable(i));
            }
        }
    }
}

/// The stack of a connection's thread. Only the pages a thread has used
/// take memory; this bounds how deep the core may go (a TLS handshake is
/// the deepest).
const STACK: usize = 256 * 1024;

/// One connection thread, as the acceptor hands it a connection: parked
/// in `Shared::parked` between connections.
struct Hand {
    job: Mutex<Option<Job>>,
    ready: Condvar,
    /// Where the core's commands for its connection go, and how it is
    /// woken to read them.
    tx: Sender<ConnCmd>,
    waker: Arc<Waker>,
}

/// A connection for a thread: its id and socket, and the commands its
/// accept brought.
struct Job {
    conn: ConnId,
    stream: TcpStream,
    first: Vec<ConnCmd>,
}

impl Hand {
    fn give(&self, job: Job) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
        self.ready.notify_one();
    }

    fn take(&self) -> Job {
        let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = slot.take() {
                return job;
            }
            slot = self.ready.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A parked connection thread, or a new one. Threads are never ended:
/// a waker must find its thread alive, and a thread that served once
/// will likely serve again.
fn hand(shared: &Arc<Shared>) -> std::io::Result<Arc<Hand>> {
    let parked = shared
        .parked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    if let Some(h) = parked {
        return Ok(h);
    }
    let (tx, rx) = channel();
    let hand = Arc::new(Hand {
        job: Mutex::new(None),
        ready: Condvar::new(),
        tx,
        waker: Arc::new(Waker::new()),
    });
    let (sh, h) = (shared.clone(), hand.clone());
    let thread = std::thread::Builder::new()
        .name("conn".into())
        .stack_size(STACK)
        .spawn(move || serve(&sh, &h, rx))?;
    hand.waker.set_thread(thread.as_pthread_t());
    Ok(hand)
}

/// A connection thread's life: a connection, then parked until the next.
fn serve(shared: &Arc<Shared>, hand: &Arc<Hand>, mut rx: Receiver<ConnCmd>) {
    let mask = wait::block();
    loop {
        let Job {
            conn,
            stream,
            first,
        } = hand.take();
        let mut c = ConnThread {
            shared: shared.clone(),
            waker: hand.waker.clone(),
            mask,
            rx,
            pair: Pair::new(conn, stream),
            want: [(false, false); 2],
            closed: false,
            splice_ok: [false; 2],
            pipe_size: PipeSize::default(),
            bind: None,
            fds: Vec::new(),
            readable: [false; 2],
            writable: [true, false],
            out: [Vec::new(), Vec::new()],
        };
        if let Some(rest) = c.start(first) {
            c.run(rest);
        }
        rx = c.rx;
        // No command can come for this connection any more once its route
        // is gone (the core's Close took it, unless the thread ended
        // first); what came before is for nobody now.
        {
            let mut core = lock(shared);
            if core.routes.get(&conn.index()).is_some_and(|r| r.id == conn) {
                core.routes.remove(&conn.index());
            }
        }
        while rx.try_recv().is_ok() {}
        shared
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hand.clone());
    }
}

fn accepted(
    shared: &Arc<Shared>,
    listener: ListenerId,
    stream: TcpStream,
    peer: SocketAddr,
    how: Option<Intercept>,
) {
    let hand = match hand(shared) {
        Ok(h) => h,
        Err(e) => {
            // Out of threads or memory: the core pauses accepting and
            // says so once.
            drop(stream);
            let ev = Event::AcceptFailed {
                listener,
                error: IoKind::from_io(&e),
            };
            shared.tell(|core| core.table.handle(ev, Instant::now()));
            return;
        }
    };
    let local = stream.local_addr().unwrap_or(peer);
    // Read before the lock: a syscall the core need not wait for.
    let original = how.and_then(|how| net::original_destination(&stream, how, local));
    let mut core = lock(shared);
    let Ok(conn) = core
        .table
        .accept(listener, peer, local, original, Instant::now())
    else {
        core.drain(shared, None, &mut Vec::new());
        drop(core);
        shared
            .parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hand);
        return;
    };
    let _ = stream.set_nonblocking(true);
    let _ = stream.set_nodelay(true);
    core.routes.insert(
        conn.index(),
        Route {
            id: conn,
            tx: hand.tx.clone(),
            waker: hand.waker.clone(),
        },
    );
    // The new connection's first commands come back here, for its thread.
    let mut first = Vec::new();
    core.drain(shared, Some(conn), &mut first);
    drop(core);
    hand.give(Job {
        conn,
        stream,
        first,
    });
}

struct ConnThread {
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    /// The signal mask this thread waits with (the wake signal let in).
    mask: libc::sigset_t,
    rx: Receiver<ConnCmd>,
    pair: Pair<TcpStream>,
    /// The core's last interest per side: (read, write).
    want: [(bool, bool); 2],
    closed: bool,
    /// What `splice_ok` said per source side when this thread last held
    /// the lock.
    splice_ok: [bool; 2],
    /// The size new pipes are made (as the core says).
    pipe_size: PipeSize,
    /// A SOCKS BIND's listener, and the connection it holds until the core
    /// says what becomes of it.
    bind: Option<(std::net::TcpListener, Option<TcpStream>)>,
    /// What the next wait polls, each with its key (kept between waits:
    /// no allocation per wait).
    fds: Vec<(libc::pollfd, usize)>,
    /// Per side: the last wait said the socket has bytes (or its end), and
    /// no read since found it empty. A read short of the room there was
    /// empties it: the read that would only say it would block is saved.
    readable: [bool; 2],
    /// Per side: the socket took all of the last write (or the last wait
    /// said it takes more).
    writable: [bool; 2],
    /// Per side: a copy of what the core had to write there when this
    /// thread last let go of the lock, written once the lock is let go
    /// (the write, and the wake-up of its peer it costs, keeps no other
    /// connection waiting). Between the copy and the count told, only
    /// another thread's call can change what the core has there, and the
    /// core never puts bytes ahead of what it has shown (it appends, or
    /// gives a direction up; the simulations check this after every
    /// call), so the count still covers exactly the copied bytes; one for
    /// a connection it closed meanwhile is ignored. Allocated only while
    /// something is to be written: an idle connection holds none.
    out: [Vec<u8>; 2],
}

/// Keys (and per-side indices) of a connection's two sockets.
const CLIENT: usize = 0;
const UPSTREAM: usize = 1;
/// Key of a SOCKS BIND's listener.
const BIND: usize = 2;
/// Keys of connect attempts racing the upstream one (Happy Eyeballs):
/// `RACING + attempt`.
const RACING: usize = 3;

/// What a socket's wait came to.
struct Ready {
    readable: bool,
    writable: bool,
    /// Writable with neither error nor hang-up (a connect's success).
    clean: bool,
}

fn ready((pfd, _): &(libc::pollfd, usize)) -> Ready {
    let (asked, got) = (pfd.events, pfd.revents);
    let trouble = got & (libc::POLLERR | libc::POLLHUP) != 0;
    Ready {
        readable: asked & libc::POLLIN != 0
            && (got & (libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP) != 0 || trouble),
        writable: asked & libc::POLLOUT != 0 && (got & libc::POLLOUT != 0 || trouble),
        clean: got & libc::POLLOUT != 0 && !trouble,
    }
}

fn pollfd(fd: &impl AsRawFd, (read, write): (bool, bool), key: usize) -> (libc::pollfd, usize) {
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    let fd = fd.as_raw_fd();
    let pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    (pfd, key)
}

impl ConnThread {
    /// First thing on the connection's thread: carries out the commands
    /// the accept brought, up to the first that may block (a name to
    /// resolve, a password to check), which `run` goes on with. The
    /// commands left, or `None` when the connection is closed already. (On
    /// the acceptor instead, this work would cost every new connection a
    /// wait behind the others'; a backlog that cannot be served for want
    /// of descriptors is worked off at once anyway, since the core resumes
    /// accepting as soon as a connection ends.)
    fn start(&mut self, first: Vec<ConnCmd>) -> Option<Vec<ConnCmd>> {
        let mut todo = std::collections::VecDeque::from(first);
        while !self.closed {
            match todo.pop_front() {
                Some(
                    cmd @ (ConnCmd::Resolve { .. }
                    | ConnCmd::CheckPassword { .. }
                    | ConnCmd::AskHelper { .. }),
                ) => {
                    todo.push_front(cmd);
                    break;
                }
                Some(cmd) => {
                    let mut more = Vec::new();
                    self.apply(cmd, &mut more);
                    todo.extend(more);
                }
                None => break,
            }
        }
        if self.closed {
            self.finish();
            return None;
        }
        Some(todo.into())
    }

    fn run(&mut self, mut mine: Vec<ConnCmd>) {
        loop {
            // Cleared before looking: a wake from here on ends the wait.
            self.waker.clear();
            while let Ok(cmd) = self.rx.try_recv() {
                self.apply(cmd, &mut mine);
            }
            while !mine.is_empty() {
                for cmd in std::mem::take(&mut mine) {
                    self.apply(cmd, &mut mine);
                }
            }
            if self.closed {
                break;
            }
            self.release_pipes(false);
            // Nothing is kept staged across a wait (see `out`).
            self.out = [Vec::new(), Vec::new()];
            self.poll_set();
            let mut fds: Vec<libc::pollfd> = self.fds.iter().map(|(p, _)| *p).collect();
            match wait::poll(&mut fds, &self.mask) {
                Ok(n) if n > 0 => {}
                // Woken (or nothing ready): back to the commands.
                _ => continue,
            }
            for (slot, pfd) in self.fds.iter_mut().zip(&fds) {
                slot.0.revents = pfd.revents;
            }
            let fired: Vec<(Ready, usize)> = self
                .fds
                .iter()
                .filter(|(p, _)| p.revents != 0)
                .map(|f| (ready(f), f.1))
                .collect();
            for (ev, key) in &fired {
                if *key == CLIENT || (*key == UPSTREAM && !self.pair.connecting) {
                    self.readable[*key] |= ev.readable;
                    self.writable[*key] |= ev.writable;
                }
            }
            for (ev, key) in fired {
                // What the core asked meanwhile first (an attempt that lost
                // the race goes before its own news is read).
                for cmd in std::mem::take(&mut mine) {
                    self.apply(cmd, &mut mine);
                }
                if self.closed {
                    break;
                }
                if key == BIND {
                    self.bind_accept(&mut mine);
                    continue;
                }
                if key >= RACING {
                    let attempt = u32::try_from(key - RACING).unwrap_or(u32::MAX);
                    self.finish_racing(attempt, ev.clean, &mut mine);
                    continue;
                }
                let side = if key == CLIENT {
                    Side::Client
                } else {
                    Side::Upstream
                };
                if side == Side::Upstream && self.pair.connecting {
                    // See `net::connect_outcome` for what a clean event says.
                    self.finish_connect(ev.clean, &mut mine);
                    continue;
                }
                if ev.readable || ev.writable {
                    self.pump(side, &mut mine);
                }
            }
        }
        self.finish();
    }

    /// What the next wait is for: each socket as the core wants it now
    /// (one wanted for nothing is left out, lest its hang-up wake the
    /// thread for nothing again and again).
    fn poll_set(&mut self) {
        let mut fds = std::mem::take(&mut self.fds);
        fds.clear();
        let want = self.wants(Side::Client);
        if want != (false, false) {
            fds.push(pollfd(&self.pair.client, want, CLIENT));
        }
        if let Some(u) = &self.pair.upstream {
            let want = if self.pair.connecting {
                (false, true)
            } else {
                self.wants(Side::Upstream)
            };
            if want != (false, false) {
                fds.push(pollfd(u, want, UPSTREAM));
            }
        }
        if let Some((l, None)) = &self.bind {
            fds.push(pollfd(l, (true, false), BIND));
        }
        for (n, r) in &self.pair.racing {
            fds.push(pollfd(r, (false, true), RACING + *n as usize));
        }
        self.fds = fds;
    }

    /// The BIND listener accepted: the connection is held and told to the
    /// core, which takes or refuses it at once.
    fn bind_accept(&mut self, mine: &mut Vec<ConnCmd>) {
        let Some((l, held)) = self.bind.as_mut() else {
            return;
        };
        if held.is_some() {
            return;
        }
        // A failed accept: waited for again, for the next one.
        if let Ok((s, peer)) = l.accept() {
            if net::bind_accepted(&s).is_err() {
                return;
            }
            *held = Some(s);
            let conn = self.pair.id;
            self.event(Event::BindAccepted { conn, peer }, mine);
        }
    }

    /// Lets go of the BIND listener and any connection it holds.
    fn bind_close(&mut self) {
        self.bind = None;
    }

    /// The connection is over: its pipes go back or close (its sockets
    /// close as the thread lets go of them).
    fn finish(&mut self) {
        self.bind_close();
        self.release_pipes(true);
    }

    /// Gives the pipes that are empty back to the pool (all of them when
    /// the connection ends; those that hold bytes are closed then).
    fn release_pipes(&mut self, all: bool) {
        let shared = &self.shared;
        self.pair.dirs.release(all, |p| shared.give(p));
    }

    /// What reading `side` would do now.
    fn read_op(&self, side: Side) -> ReadOp {
        let i = side.index();
        self.pair
            .read_op(side, self.want[i].0, || self.splice_ok[i])
    }

    /// What `side`'s socket is wanted for now: (read, write).
    fn wants(&self, side: Side) -> (bool, bool) {
        let (i, dirs) = (side.index(), &self.pair.dirs);
        dirs.wants(side, self.want[i].0, self.want[i].1, || self.splice_ok[i])
    }

    /// Lets go of the upstream socket (and what was on its way to or from
    /// it).
    /// The upstream socket just connected: it takes bytes, and has none
    /// to read until a wait says so.
    fn fresh_upstream(&mut self) {
        self.readable[UPSTREAM] = false;
        self.writable[UPSTREAM] = true;
        self.out[UPSTREAM].clear();
    }

    fn drop_upstream(&mut self) {
        let shared = &self.shared;
        drop(self.pair.close_upstream(|p| shared.give(p)));
    }

    /// Lets go of connect attempt `attempt`'s socket, wherever it is.
    fn drop_attempt(&mut self, attempt: u32) {
        if self.pair.upstream.is_some() && self.pair.attempt == attempt {
            self.drop_upstream();
            self.splice_ok = [false; 2];
        } else {
            drop(self.pair.abandon(attempt, |_| {}));
        }
    }

    /// A racing attempt's socket signalled (`clean`: writable with neither
    /// error nor hang-up).
    fn finish_racing(&mut self, attempt: u32, clean: bool, mine: &mut Vec<ConnCmd>) {
        let conn = self.pair.id;
        match self.pair.racer_outcome(attempt, clean) {
            None => {}
            // Waited for again: the next wait polls every racer.
            Some(Connecting::Pending) => {}
            Some(Connecting::Failed(error)) => {
                self.drop_attempt(attempt);
                let ev = Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                };
                self.event(ev, mine);
            }
            Some(Connecting::Done) => {
                // The winner answers to the upstream key from the next
                // wait on, and the attempt it displaced to its own.
                if self.pair.adopt(attempt).is_none() {
                    return;
                }
                self.splice_ok = [false; 2];
                self.fresh_upstream();
                let mut core = lock(&self.shared);
                if let Some(u) = &self.pair.upstream {
                    core.table.connected(conn, attempt, u, Instant::now());
                }
                (self.splice_ok, self.pipe_size) = settle(
                    &mut core,
                    &self.shared,
                    &self.pair,
                    self.writable,
                    &mut self.out,
                    mine,
                );
            }
        }
    }

    fn apply(&mut self, cmd: ConnCmd, mine: &mut Vec<ConnCmd>) {
        match cmd {
            ConnCmd::Resolve { host, port } => {
                // This thread serves only this connection: it may wait here.
                self.event(resolve(self.pair.id, &host, port), mine);
                // A SOCKS UDP association's datagrams may have waited for
                // the name: the UDP thread sends what the core queued.
                let _ = lock(&self.shared).udp_tx.1.notify();
            }
            ConnCmd::CheckPassword { phc, password } => {
                // Waits for the pool (which bounds how many checks run at
                // once), not holding the core's lock; no pool left: the
                // login fails rather than hangs.
                let ok = self.shared.checkers.check(phc, password).unwrap_or(false);
                let conn = self.pair.id;
                self.event(Event::PasswordChecked { conn, ok }, mine);
            }
            ConnCmd::AskHelper {
                helper,
                user,
                password,
            } => {
                // Like a password check: waited for without the lock.
                let answer = self.shared.helpers.check(helper, user, password);
                let conn = self.pair.id;
                self.event(Event::HelperAnswered { conn, answer }, mine);
            }
            ConnCmd::Connect {
                attempt,
                addr,
                bind,
            } => match net::tcp_connect(addr, bind) {
                Ok(u) if self.pair.connecting && self.pair.upstream.is_some() => {
                    // Beside the attempt still connecting: a race, under a
                    // key of its own.
                    self.pair.connect_started(attempt, u, |_| {});
                }
                Ok(u) => {
                    // A previous upstream socket (if any) closes here.
                    self.drop_upstream();
                    self.splice_ok = [false; 2];
                    self.pair.connect_started(attempt, u, |_| {});
                }
                Err(e) => self.connect_failed(attempt, IoKind::from_io(&e), mine),
            },
            ConnCmd::BindListen { toward, bind } => {
                let opened = net::bind_listener(toward, bind).and_then(|l| {
                    let local = l.local_addr()?;
                    self.bind = Some((l, None));
                    Ok(local)
                });
                let conn = self.pair.id;
                let mut core = lock(&self.shared);
                core.table.bind_listening(conn, opened);
                (self.splice_ok, self.pipe_size) = settle(
                    &mut core,
                    &self.shared,
                    &self.pair,
                    self.writable,
                    &mut self.out,
                    mine,
                );
            }
            ConnCmd::BindTake(attempt) => {
                let held = self.bind.as_mut().and_then(|(_, held)| held.take());
                self.bind_close();
                let Some(u) = held else {
                    return self.connect_failed(attempt, IoKind::Other, mine);
                };
                self.drop_upstream();
                self.splice_ok = [false; 2];
                // Reported Connected like a connect once writable.
                self.pair.connect_started(attempt, u, |_| {});
            }
            ConnCmd::BindReject => {
                // Waited on again from the next wait on.
                if let Some((_, held)) = self.bind.as_mut() {
                    *held = None;
                }
            }
            ConnCmd::BindClose => self.bind_close(),
            ConnCmd::Abandon(attempt) => self.drop_attempt(attempt),
            ConnCmd::Interest { side, read, write } => self.want[side.index()] = (read, write),
            ConnCmd::ShutdownWrite(side) => {
                if let Some(ev) = self.pair.shutdown_write(side) {
                    self.event(ev, mine);
                }
            }
            ConnCmd::CloseUpstream => {
                self.drop_upstream();
                drop(self.pair.take_racing());
                self.splice_ok = [false; 2];
                self.want[UPSTREAM] = (false, false);
            }
            ConnCmd::Close => self.closed = true,
        }
    }

    fn event(&mut self, ev: Event, mine: &mut Vec<ConnCmd>) {
        let mut core = lock(&self.shared);
        core.table.handle(ev, Instant::now());
        (self.splice_ok, self.pipe_size) = settle(
            &mut core,
            &self.shared,
            &self.pair,
            self.writable,
            &mut self.out,
            mine,
        );
    }

    /// Splices what `side` has into its direction's pipe; true if anything
    /// happened (bytes moved, or the core was told something).
    fn splice_in(&mut self, side: Side, mine: &mut Vec<ConnCmd>) -> bool {
        let (shared, size) = (&self.shared, self.pipe_size);
        match self.pair.splice_in(side, || shared.pipes().take(size)) {
            Filled::Moved | Filled::Eof(None) => true,
            Filled::Full | Filled::Empty | Filled::Unsupported => false,
            Filled::Eof(Some(ev)) | Filled::Failed(ev) => {
                self.event(ev, mine);
                true
            }
        }
    }

    /// Splices what the pipe of the direction `from` feeds out to the other
    /// socket and tells the core what went; true if anything went.
    fn splice_out(&mut self, from: Side, mine: &mut Vec<ConnCmd>) -> bool {
        match self.pair.splice_out(from) {
            Drained::Sent { told, .. } => {
                let mut core = lock(&self.shared);
                let now = Instant::now();
                for ev in told {
                    core.table.handle(ev, now);
                }
                (self.splice_ok, self.pipe_size) = settle(
                    &mut core,
                    &self.shared,
                    &self.pair,
                    self.writable,
                    &mut self.out,
                    mine,
                );
                true
            }
            Drained::Blocked => false,
            Drained::Failed(ev) => {
                self.event(ev, mine);
                true
            }
        }
    }

    /// Connect attempt `attempt` could not even start.
    fn connect_failed(&mut self, attempt: u32, error: IoKind, mine: &mut Vec<ConnCmd>) {
        let conn = self.pair.id;
        let ev = Event::ConnectFailed {
            conn,
            attempt,
            error,
        };
        self.event(ev, mine);
    }

    /// The upstream socket signalled while connecting (`clean`: writable
    /// with neither error nor hang-up).
    fn finish_connect(&mut self, clean: bool, mine: &mut Vec<ConnCmd>) {
        let conn = self.pair.id;
        let attempt = self.pair.attempt;
        match self.pair.finish_connect(clean) {
            Connecting::Done => {
                self.fresh_upstream();
                let mut core = lock(&self.shared);
                if let Some(u) = &self.pair.upstream {
                    core.table.connected(conn, attempt, u, Instant::now());
                }
                (self.splice_ok, self.pipe_size) = settle(
                    &mut core,
                    &self.shared,
                    &self.pair,
                    self.writable,
                    &mut self.out,
                    mine,
                );
            }
            Connecting::Pending => {}
            Connecting::Failed(error) => {
                // The failed socket goes now: an attempt racing it may
                // take the slot.
                self.drop_upstream();
                let ev = Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                };
                self.event(ev, mine);
            }
        }
    }

    /// Reads and writes on both sockets, `first`'s first, while the core
    /// wants them and the sockets can take them (as far as this thread
    /// knows: see `readable` and `writable`), a bounded number in a row:
    /// bytes read from one socket are written to the other at once, with
    /// no wait in between. Splices from a socket and on to the other
    /// socket at once, and what waits in a pipe toward it.
    fn pump(&mut self, first: Side, mine: &mut Vec<ConnCmd>) {
        for _ in 0..OPS_PER_TURN {
            let mut did = false;
            for side in [first, first.other()] {
                // Commands from this thread's own drains apply at once
                // (interest changes decide whether the next operation is
                // wanted).
                for cmd in std::mem::take(mine) {
                    self.apply(cmd, mine);
                }
                if self.closed {
                    return;
                }
                if !self.pair.open(side) {
                    continue;
                }
                let i = side.index();
                if self.pair.dirs.piped(side.other()) {
                    // Toward `side`: the pipe first.
                    did |= self.splice_out(side.other(), mine);
                }
                let op = self.read_op(side);
                if op == ReadOp::Splice && self.readable[i] {
                    // From `side`, straight on to the other socket.
                    did |= self.splice_in(side, mine);
                    if self.pair.dirs.piped(side) {
                        did |= self.splice_out(side, mine);
                    }
                }
                if self.want[i].1 && self.writable[i] {
                    did |= self.write_out(side, mine);
                }
                if op == ReadOp::Core && self.readable[i] && !self.closed {
                    did |= self.read_in(side, mine);
                }
            }
            if !did {
                break;
            }
        }
        for cmd in std::mem::take(mine) {
            self.apply(cmd, mine);
        }
    }

    /// Reads `side` into the core's buffer (the lock held only for that
    /// read) and tells the core; true if anything came.
    fn read_in(&mut self, side: Side, mine: &mut Vec<ConnCmd>) -> bool {
        let mut core = lock(&self.shared);
        let Some((ev, seen)) = self.pair.read(&mut core.table, side) else {
            return false;
        };
        if seen != Seen::More {
            // Empty now: the next wait says when more comes (or its end).
            self.readable[side.index()] = false;
        }
        let did = !matches!(ev, Event::ReadBlocked { .. });
        core.table.handle(ev, Instant::now());
        (self.splice_ok, self.pipe_size) = settle(
            &mut core,
            &self.shared,
            &self.pair,
            self.writable,
            &mut self.out,
            mine,
        );
        did
    }

    /// Writes what was staged for `side` (staging it first if nothing is)
    /// with the lock let go, then tells the core what went; true if
    /// anything went.
    fn write_out(&mut self, side: Side, mine: &mut Vec<ConnCmd>) -> bool {
        let (conn, i) = (self.pair.id, side.index());
        if self.out[i].is_empty() {
            let mut core = lock(&self.shared);
            stage(&mut core, conn, side, &mut self.out[i]);
        }
        if self.out[i].is_empty() {
            return false;
        }
        let Some(s) = self.pair.stream(side) else {
            return false;
        };
        let r = net::retry(|| (&*s).write(&self.out[i]));
        let whole = matches!(r, Ok(n) if n == self.out[i].len());
        if !whole {
            // Short, or it would block: the socket's buffer is full.
            self.writable[i] = false;
        }
        self.out[i].clear();
        let Some(ev) = net::write_event(conn, side, r) else {
            return false;
        };
        let mut core = lock(&self.shared);
        core.table.handle(ev, Instant::now());
        (self.splice_ok, self.pipe_size) = settle(
            &mut core,
            &self.shared,
            &self.pair,
            self.writable,
            &mut self.out,
            mine,
        );
        true
    }
}

/// Before the lock on `pair`'s behalf is let go, after telling the core
/// something: routes what it asked for, and stages what it has to write on
/// each socket that takes bytes (anything staged before may be out of date
/// now); its splice answer.
fn settle(
    core: &mut Core,
    shared: &Shared,
    pair: &Pair<TcpStream>,
    writable: [bool; 2],
    out: &mut [Vec<u8>; 2],
    mine: &mut Vec<ConnCmd>,
) -> ([bool; 2], PipeSize) {
    let conn = pair.id;
    core.drain(shared, Some(conn), mine);
    for side in [Side::Client, Side::Upstream] {
        let i = side.index();
        out[i].clear();
        if writable[i] && pair.open(side) {
            stage(core, conn, side, &mut out[i]);
        }
    }
    splice_answer(core, conn)
}

/// Copies what the core has to write on `side` of `conn` into `out` (the
/// caller holds the lock; `out` is empty).
fn stage(core: &mut Core, conn: ConnId, side: Side, out: &mut Vec<u8>) {
    // A Vec takes every byte: what the core has, in order.
    let _ = core.table.write(conn, side, &mut *out);
}

/// Whether each direction of `conn` may splice now (the caller holds the
/// lock), and the size the core wants its pipes.
fn splice_answer(core: &Core, conn: ConnId) -> ([bool; 2], PipeSize) {
    let t = &core.table;
    let ok = [
        t.splice_ok(conn, Side::Client),
        t.splice_ok(conn, Side::Upstream),
    ];
    (ok, t.splice_pipe())
}
