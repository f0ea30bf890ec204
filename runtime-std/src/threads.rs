//! Threads: one acceptor waiting on every listener with `polling`, one thread
//! per connection waiting on that connection's two sockets, one timer thread
//! and one signal thread, all driving a single core behind a mutex.
//!
//! Whoever holds the lock drains the core's actions and routes each to the
//! thread that owns the sockets it names (a channel plus a wake-up of that
//! thread's poller); log lines are written by whoever drains them. Sockets
//! are non-blocking: a connection's thread holds the lock only for one read
//! or write that cannot block, so a stalled peer stalls nobody else.
//!
//! A direction the core calls a pure relay (`splice_ok`) moves through a
//! pipe with splice(2) instead (see `splice.rs`), without the lock: the
//! thread takes it only to tell the core what went (`Spliced`, or an EOF or
//! error), and asks `splice_ok` again while it holds it. Only this thread's
//! own events move its session between relaying and not (anything else
//! closes it), so that answer holds until the next one. Order is kept as in
//! `portico`: nothing is read into the core while the pipe holds bytes, no
//! splice while the core's buffer does, and a source's EOF is told once
//! its pipe is empty.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use polling::{Event as PEvent, Events, Poller};
use portico_core::cli::{Plan, EXIT_OK, EXIT_RUNTIME};
use portico_core::proxy::PipeSize;
use portico_core::udp::{UdpId, Via};
use portico_core::{Action, ConnId, Event, IoKind, Level, ListenerId, Recorded, Side};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::output::{Output, Start, TraceFiles, WallClock};
use crate::splice::{Fill, Pipe, Pipes};
use crate::vectored::write_parts;

/// Accepts one listener may do before the others get a turn.
const ACCEPTS_PER_TURN: usize = 64;
/// Reads or writes in a row on one socket before the lock is let go.
const OPS_PER_TURN: usize = 16;

/// What a connection's thread is told to do.
enum Cmd {
    Resolve {
        host: String,
        port: u16,
    },
    Connect {
        addr: SocketAddr,
        bind: Option<IpAddr>,
    },
    Interest {
        side: Side,
        read: bool,
        write: bool,
    },
    ShutdownWrite(Side),
    CloseUpstream,
    Close,
}

/// What the acceptor is told to do.
enum ListenCmd {
    Open(ListenerId, SocketAddr),
    Pause(ListenerId),
    Resume(ListenerId),
    Close(ListenerId),
}

/// What the UDP thread is told to do.
enum UdpCmd {
    Listen(ListenerId, SocketAddr),
    Unlisten(ListenerId),
    Open(UdpId, Option<IpAddr>, SocketAddr),
    Close(UdpId),
}

struct Route {
    id: ConnId,
    tx: Sender<Cmd>,
    poller: Arc<Poller>,
}

struct Core {
    proxy: Recorded,
    trace: Option<TraceFiles>,
    wall: WallClock,
    routes: HashMap<usize, Route>,
    acceptor_tx: Option<(Sender<ListenCmd>, Arc<Poller>)>,
    udp_tx: Option<(Sender<UdpCmd>, Arc<Poller>)>,
    out: Output,
    /// When the timer thread plans to wake next.
    timer_wake: Option<Instant>,
    fatal: Option<String>,
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
}

fn lock(shared: &Shared) -> MutexGuard<'_, Core> {
    // A thread that panicked while holding the lock leaves the core as it
    // was; carrying on beats taking every other connection down.
    let mut core = shared.core.lock().unwrap_or_else(|p| p.into_inner());
    let w = core.wall.now();
    core.proxy.set_wall(w);
    core
}

impl Core {
    /// Drains the core's actions. Those for `me` are returned for the caller
    /// to carry out; the rest go to their owners.
    fn drain(&mut self, shared: &Shared, me: Option<ConnId>, mine: &mut Vec<Cmd>) {
        while let Some(action) = self.proxy.poll_action() {
            let (conn, cmd) = match action {
                Action::Connect { conn, addr, bind } => (conn, Cmd::Connect { addr, bind }),
                Action::Resolve { conn, host, port } => (conn, Cmd::Resolve { host, port }),
                Action::Interest {
                    conn,
                    side,
                    read,
                    write,
                } => (conn, Cmd::Interest { side, read, write }),
                Action::ShutdownWrite { conn, side } => (conn, Cmd::ShutdownWrite(side)),
                Action::CloseUpstream { conn } => (conn, Cmd::CloseUpstream),
                Action::Close { conn } => (conn, Cmd::Close),
                Action::PauseAccept { listener } => {
                    self.to_acceptor(ListenCmd::Pause(listener));
                    continue;
                }
                Action::ResumeAccept { listener } => {
                    self.to_acceptor(ListenCmd::Resume(listener));
                    continue;
                }
                Action::Unlisten { listener } => {
                    self.to_acceptor(ListenCmd::Close(listener));
                    self.to_udp(UdpCmd::Unlisten(listener));
                    continue;
                }
                Action::ListenUdp { listener, addr } => {
                    self.to_udp(UdpCmd::Listen(listener, addr));
                    continue;
                }
                Action::UdpOpen {
                    id,
                    bind,
                    destination,
                } => {
                    self.to_udp(UdpCmd::Open(id, bind, destination));
                    continue;
                }
                Action::UdpClose { id } => {
                    self.to_udp(UdpCmd::Close(id));
                    continue;
                }
                Action::Listen { listener, addr } => {
                    // Those of the configuration opened at start (see `run`);
                    // these come later (FTP data ports).
                    self.to_acceptor(ListenCmd::Open(listener, addr));
                    continue;
                }
                Action::Log { level, message } => {
                    Output::log(level, &message);
                    continue;
                }
                Action::Access(rec) => {
                    self.out.access(&rec);
                    continue;
                }
                Action::Say(line) => {
                    Output::say(&line);
                    continue;
                }
                Action::Fatal { message } => {
                    self.fatal.get_or_insert(message);
                    continue;
                }
                Action::Gather { conn } => {
                    // One table here: it is the whole answer.
                    let now = std::time::Instant::now();
                    self.proxy.handle_gathered(conn, Vec::new(), now);
                    continue;
                }
            };
            let closing = matches!(cmd, Cmd::Close);
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
            let _ = route.poller.notify();
            if closing {
                self.routes.remove(&conn.index());
            }
        }
        if let (Some(t), Some(rec)) = (self.trace.as_mut(), self.proxy.take_trace()) {
            t.write(rec);
        }
        if self.proxy.is_finished() {
            shared.done.notify_all();
        }
        let next = self.proxy.poll_timeout();
        if next.is_some() && (self.timer_wake.is_none() || next < self.timer_wake) {
            shared.timer.notify_one();
        }
    }

    fn to_udp(&self, cmd: UdpCmd) {
        if let Some((tx, poller)) = &self.udp_tx {
            let _ = tx.send(cmd);
            let _ = poller.notify();
        }
    }

    fn to_acceptor(&self, cmd: ListenCmd) {
        if let Some((tx, poller)) = &self.acceptor_tx {
            let _ = tx.send(cmd);
            let _ = poller.notify();
        }
    }
}

pub fn run(plan: Plan) -> i32 {
    match run_inner(plan) {
        Ok(code) => code,
        Err(e) => {
            Output::log(Level::Error, &e);
            EXIT_RUNTIME
        }
    }
}

fn run_inner(plan: Plan) -> Result<i32, String> {
    // Before anything listens: a signal that comes early is queued, not fatal.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot set up signals: {e}"))?;
    let Start {
        mut proxy,
        out,
        trace,
        path: plan_path,
        recheck: plan_recheck,
    } = Start::new(plan)?;

    // Open the listeners before any thread runs: a failure here is fatal.
    let mut listeners: Vec<Option<TcpListener>> = Vec::new();
    let mut pending = Vec::new();
    while let Some(a) = proxy.poll_action() {
        pending.push(a);
    }
    let mut early = Vec::new();
    let mut udp_early = Vec::new();
    for a in pending {
        match a {
            Action::Listen { listener, addr } => {
                let now = Instant::now();
                match listen(addr) {
                    Ok(l) => {
                        let local = l.local_addr().unwrap_or(addr);
                        let i = listener.index();
                        if listeners.len() <= i {
                            listeners.resize_with(i + 1, || None);
                        }
                        listeners[i] = Some(l);
                        proxy.handle(Event::Listening { listener, local }, now);
                    }
                    Err(e) => {
                        let error = IoKind::from_io(&e);
                        proxy.handle(Event::ListenFailed { listener, error }, now);
                    }
                }
            }
            Action::ListenUdp { listener, addr } => udp_early.push((listener, addr)),
            other => early.push(other),
        }
        // Say/Fatal/Log produced by the listener events.
        while let Some(b) = proxy.poll_action() {
            early.push(b);
        }
    }
    let mut out = out;
    for a in early {
        match a {
            Action::Say(line) => Output::say(&line),
            Action::Log { level, message } => Output::log(level, &message),
            Action::Access(rec) => out.access(&rec),
            Action::Fatal { message } => return Err(message),
            _ => {}
        }
    }

    let acceptor_poller =
        Arc::new(Poller::new().map_err(|e| format!("cannot create a poller: {e}"))?);
    let (acc_tx, acc_rx) = channel();
    let udp_poller = Arc::new(Poller::new().map_err(|e| format!("cannot create a poller: {e}"))?);
    let (udp_tx, udp_rx) = channel();
    for (listener, addr) in udp_early {
        let _ = udp_tx.send(UdpCmd::Listen(listener, addr));
    }
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            proxy,
            trace,
            wall: WallClock::new(),
            routes: HashMap::new(),
            acceptor_tx: Some((acc_tx, acceptor_poller.clone())),
            udp_tx: Some((udp_tx.clone(), udp_poller.clone())),
            out,
            timer_wake: None,
            fatal: None,
        }),
        timer: Condvar::new(),
        done: Condvar::new(),
        pipes: Mutex::new(Pipes::new()),
    });

    {
        let shared = shared.clone();
        let path = plan_path.clone();
        let recheck = plan_recheck;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig == signal_hook::consts::SIGHUP {
                        let mut guard = lock(&shared);
                        let core = &mut *guard;
                        crate::output::reload(
                            path.as_deref(),
                            recheck,
                            &mut core.proxy,
                            &mut core.out,
                        );
                        core.drain(&shared, None, &mut Vec::new());
                        continue;
                    }
                    let mut core = lock(&shared);
                    core.proxy.shutdown(Instant::now());
                    core.drain(&shared, None, &mut Vec::new());
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || timer_thread(&shared))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("udp".into())
            .spawn(move || udp_thread(&shared, udp_poller, udp_rx))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || acceptor(&shared, listeners, acceptor_poller, acc_rx))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
    }

    let mut core = lock(&shared);
    loop {
        if let Some(msg) = core.fatal.take() {
            return Err(msg);
        }
        if core.proxy.is_finished() {
            return Ok(EXIT_OK);
        }
        core = shared
            .done
            .wait_timeout(core, Duration::from_millis(500))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn timer_thread(shared: &Shared) {
    let mut core = lock(shared);
    loop {
        let now = Instant::now();
        core.proxy.handle_timeout(now);
        core.drain(shared, None, &mut Vec::new());
        let next = core.proxy.poll_timeout();
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

/// One thread for every UDP socket: datagrams are small and independent, so
/// a thread per mapping would buy nothing.
fn udp_thread(shared: &Arc<Shared>, poller: Arc<Poller>, rx: Receiver<UdpCmd>) {
    let mut listeners: HashMap<usize, (ListenerId, UdpSocket)> = HashMap::new();
    let mut maps: HashMap<usize, (UdpId, UdpSocket)> = HashMap::new();
    let mut events = Events::new();
    loop {
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                UdpCmd::Listen(id, addr) => {
                    let now = Instant::now();
                    let ev = match bind_udp(addr) {
                        Ok(u) => {
                            let local = u.local_addr().unwrap_or(addr);
                            // SAFETY: deleted from the poller before it is dropped.
                            let _ = unsafe { poller.add(&u, PEvent::readable(id.index())) };
                            if let Some((_, old)) = listeners.insert(id.index(), (id, u)) {
                                let _ = poller.delete(&old);
                            }
                            Event::Listening {
                                listener: id,
                                local,
                            }
                        }
                        Err(e) => Event::ListenFailed {
                            listener: id,
                            error: IoKind::from_io(&e),
                        },
                    };
                    let mut core = lock(shared);
                    core.proxy.handle(ev, now);
                    core.drain(shared, None, &mut Vec::new());
                }
                UdpCmd::Unlisten(id) => {
                    if listeners.get(&id.index()).is_some_and(|(i, _)| *i == id) {
                        if let Some((_, u)) = listeners.remove(&id.index()) {
                            let _ = poller.delete(&u);
                        }
                    }
                }
                UdpCmd::Open(id, bind, dest) => match open_udp(bind, dest) {
                    Ok(u) => {
                        let key = UDP_MAP_KEY + id.index();
                        // SAFETY: deleted from the poller before it is dropped.
                        let _ = unsafe { poller.add(&u, PEvent::readable(key)) };
                        if let Some((_, old)) = maps.insert(id.index(), (id, u)) {
                            let _ = poller.delete(&old);
                        }
                    }
                    Err(_) => {
                        let mut core = lock(shared);
                        core.proxy.handle_udp_failed(id, Instant::now());
                        core.drain(shared, None, &mut Vec::new());
                    }
                },
                UdpCmd::Close(id) => {
                    if maps.get(&id.index()).is_some_and(|(i, _)| *i == id) {
                        if let Some((_, u)) = maps.remove(&id.index()) {
                            let _ = poller.delete(&u);
                        }
                    }
                }
            }
        }
        // Datagrams the core queued (the first one of a new mapping waits
        // for its socket, opened just above).
        {
            let mut core = lock(shared);
            while let Some((via, data)) = core.proxy.poll_datagram() {
                // One that cannot go now is dropped, as a network would.
                match via {
                    Via::Listener(id, to) => {
                        if let Some((i, u)) = listeners.get(&id.index()) {
                            if *i == id {
                                let _ = u.send_to(&data, to);
                            }
                        }
                    }
                    Via::Mapping(id) => {
                        if let Some((i, u)) = maps.get(&id.index()) {
                            if *i == id {
                                let _ = u.send(&data);
                            }
                        }
                    }
                }
            }
        }
        events.clear();
        if poller.wait(&mut events, None).is_err() {
            continue;
        }
        for ev in events.iter() {
            for _ in 0..ACCEPTS_PER_TURN {
                let now = Instant::now();
                let mut core = lock(shared);
                let r = if ev.key >= UDP_MAP_KEY {
                    let Some((id, u)) = maps.get(&(ev.key - UDP_MAP_KEY)) else {
                        break;
                    };
                    match u.recv(core.proxy.datagram_buf()) {
                        Ok(n) => {
                            core.proxy.handle_reply(*id, n, now);
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    let Some((id, u)) = listeners.get(&ev.key) else {
                        break;
                    };
                    match u.recv_from(core.proxy.datagram_buf()) {
                        Ok((n, from)) => {
                            core.proxy.handle_datagram(*id, from, n, now);
                            true
                        }
                        Err(_) => false,
                    }
                };
                core.drain(shared, None, &mut Vec::new());
                if !r {
                    break;
                }
            }
            // Oneshot: arm the socket again.
            if ev.key >= UDP_MAP_KEY {
                if let Some((_, u)) = maps.get(&(ev.key - UDP_MAP_KEY)) {
                    let _ = poller.modify(u, PEvent::readable(ev.key));
                }
            } else if let Some((_, u)) = listeners.get(&ev.key) {
                let _ = poller.modify(u, PEvent::readable(ev.key));
            }
        }
        // Back to the top: opens the datagrams asked for, then sends them.
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn open_udp(bind: Option<IpAddr>, dest: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let from = match (bind, dest) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
        (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
    };
    s.bind(&SockAddr::from(from))?;
    s.connect(&SockAddr::from(dest))?;
    Ok(s.into())
}

struct Lst {
    id: ListenerId,
    sock: TcpListener,
    paused: bool,
}

fn acceptor(
    shared: &Arc<Shared>,
    opened: Vec<Option<TcpListener>>,
    poller: Arc<Poller>,
    rx: Receiver<ListenCmd>,
) {
    let mut listeners: Vec<Option<Lst>> = Vec::new();
    for (i, l) in opened.into_iter().enumerate() {
        listeners.push(l.map(|sock| Lst {
            id: ListenerId::new(i, 0),
            sock,
            paused: false,
        }));
    }
    for (i, l) in listeners.iter().enumerate() {
        if let Some(l) = l {
            // SAFETY: every listener is deleted from the poller before it is
            // dropped (see ListenCmd::Close below).
            let _ = unsafe { poller.add(&l.sock, PEvent::readable(i)) };
        }
    }
    let mut events = Events::new();
    loop {
        events.clear();
        if poller.wait(&mut events, None).is_err() {
            continue;
        }
        while let Ok(cmd) = rx.try_recv() {
            let (ListenCmd::Open(id, _)
            | ListenCmd::Pause(id)
            | ListenCmd::Resume(id)
            | ListenCmd::Close(id)) = &cmd;
            let i = id.index();
            let slot = listeners
                .get_mut(i)
                .filter(|l| l.as_ref().is_some_and(|l| l.id == *id));
            match (cmd, slot) {
                (ListenCmd::Open(id, addr), _) => {
                    let now = Instant::now();
                    let ev = match listen(addr) {
                        Ok(sock) => {
                            let local = sock.local_addr().unwrap_or(addr);
                            if listeners.len() <= i {
                                listeners.resize_with(i + 1, || None);
                            }
                            if let Some(old) = listeners[i].take() {
                                let _ = poller.delete(&old.sock);
                            }
                            // SAFETY: deleted from the poller before it is dropped.
                            let _ = unsafe { poller.add(&sock, PEvent::readable(i)) };
                            listeners[i] = Some(Lst {
                                id,
                                sock,
                                paused: false,
                            });
                            Event::Listening {
                                listener: id,
                                local,
                            }
                        }
                        Err(e) => Event::ListenFailed {
                            listener: id,
                            error: IoKind::from_io(&e),
                        },
                    };
                    let mut core = lock(shared);
                    core.proxy.handle(ev, now);
                    core.drain(shared, None, &mut Vec::new());
                }
                (ListenCmd::Pause(_), Some(Some(l))) => l.paused = true,
                (ListenCmd::Resume(_), Some(Some(l))) => {
                    l.paused = false;
                    let _ = poller.modify(&l.sock, PEvent::readable(i));
                }
                (ListenCmd::Close(_), Some(slot)) => {
                    if let Some(l) = slot.take() {
                        let _ = poller.delete(&l.sock);
                    }
                }
                _ => {}
            }
        }
        for ev in events.iter() {
            let i = ev.key;
            for _ in 0..ACCEPTS_PER_TURN {
                let Some(Some(l)) = listeners.get(i) else {
                    break;
                };
                if l.paused {
                    break;
                }
                let id = l.id;
                match l.sock.accept() {
                    Ok((stream, peer)) => accepted(shared, id, stream, peer),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let error = IoKind::from_io(&e);
                        let mut core = lock(shared);
                        let listener = id;
                        core.proxy
                            .handle(Event::AcceptFailed { listener, error }, Instant::now());
                        core.drain(shared, None, &mut Vec::new());
                        break;
                    }
                }
            }
            // The poller is oneshot: arm the listener again unless paused.
            if let Some(Some(l)) = listeners.get(i) {
                if !l.paused {
                    let _ = poller.modify(&l.sock, PEvent::readable(i));
                }
            }
        }
    }
}

fn accepted(shared: &Arc<Shared>, listener: ListenerId, stream: TcpStream, peer: SocketAddr) {
    let poller = match Poller::new() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            // Out of descriptors, most likely: the core pauses accepting
            // and says so once.
            drop(stream);
            let mut core = lock(shared);
            let error = IoKind::from_io(&e);
            core.proxy
                .handle(Event::AcceptFailed { listener, error }, Instant::now());
            core.drain(shared, None, &mut Vec::new());
            return;
        }
    };
    let mut core = lock(shared);
    let local = stream.local_addr().unwrap_or(peer);
    let Ok(conn) = core.proxy.accept_on(listener, peer, local, Instant::now()) else {
        core.drain(shared, None, &mut Vec::new());
        return;
    };
    let _ = stream.set_nonblocking(true);
    let _ = stream.set_nodelay(true);
    let (tx, rx) = channel();
    core.routes.insert(
        conn.index(),
        Route {
            id: conn,
            tx,
            poller: poller.clone(),
        },
    );
    core.drain(shared, None, &mut Vec::new());
    drop(core);
    let shared2 = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("conn-{conn}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut c = ConnThread {
                shared: shared2,
                id: conn,
                poller,
                rx,
                client: stream,
                upstream: None,
                connecting: false,
                want: [(false, false); 2],
                closed: false,
                splice_ok: [false; 2],
                pipe: [None, None],
                eof_piped: [false; 2],
                no_splice: false,
                pipe_size: PipeSize::default(),
                armed: [None; 2],
            };
            c.run();
        });
    if let Err(e) = spawned {
        let mut core = lock(shared);
        let side = Side::Client;
        let error = IoKind::from_io(&e);
        core.proxy
            .handle(Event::IoError { conn, side, error }, Instant::now());
        core.drain(shared, None, &mut Vec::new());
    }
}

struct ConnThread {
    shared: Arc<Shared>,
    id: ConnId,
    poller: Arc<Poller>,
    rx: Receiver<Cmd>,
    client: TcpStream,
    upstream: Option<TcpStream>,
    connecting: bool,
    /// The core's last interest per side: (read, write).
    want: [(bool, bool); 2],
    closed: bool,
    /// What `splice_ok` said per source side when this thread last held
    /// the lock.
    splice_ok: [bool; 2],
    /// Per direction, by source side: the pipe its spliced bytes wait in
    /// on their way to the other socket.
    pipe: [Option<Pipe>; 2],
    /// The source reached EOF with bytes still in its pipe: the core hears
    /// of it once they are out.
    eof_piped: [bool; 2],
    /// splice(2) is not supported here: read and write only.
    no_splice: bool,
    /// The size new pipes are made (as the core says).
    pipe_size: PipeSize,
    /// What each socket is armed for in the (oneshot) poller: `None` once
    /// an event for it fired, which disarms it. `arm` asks the poller only
    /// where this differs from what is wanted.
    armed: [Option<(bool, bool)>; 2],
}

const CLIENT: usize = 0;
const UPSTREAM: usize = 1;

fn si(side: Side) -> usize {
    match side {
        Side::Client => CLIENT,
        Side::Upstream => UPSTREAM,
    }
}

impl ConnThread {
    fn run(&mut self) {
        // SAFETY: the client socket is deleted from the poller before this
        // thread returns and drops it.
        if unsafe { self.poller.add(&self.client, PEvent::none(CLIENT)) }.is_err() {
            self.fail(Side::Client, IoKind::Other);
        }
        self.armed[CLIENT] = Some((false, false));
        let mut events = Events::new();
        let mut mine = Vec::new();
        loop {
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
            self.arm();
            events.clear();
            if self.poller.wait(&mut events, None).is_err() {
                continue;
            }
            for ev in events.iter() {
                if let Some(a) = self.armed.get_mut(ev.key) {
                    *a = None;
                }
                let side = if ev.key == CLIENT {
                    Side::Client
                } else {
                    Side::Upstream
                };
                if side == Side::Upstream && self.connecting {
                    // Writable with neither error nor hang-up is connected
                    // (a failed connect always brings EPOLLERR); only
                    // otherwise are the pending error and the peer asked.
                    let clean = ev.writable && ev.is_err() == Some(false) && !ev.is_interrupt();
                    self.finish_connect(clean, &mut mine);
                    continue;
                }
                if ev.readable || ev.writable {
                    self.pump(side, &mut mine);
                }
            }
        }
        let _ = self.poller.delete(&self.client);
        if let Some(u) = &self.upstream {
            let _ = self.poller.delete(u);
        }
        self.release_pipes(true);
    }

    /// Gives the pipes that are empty back to the pool (all of them when
    /// the connection ends; those that hold bytes are closed then).
    fn release_pipes(&mut self, all: bool) {
        let shared = &self.shared;
        crate::splice::release(&mut self.pipe, &mut self.eof_piped, all, |p| {
            let mut pool = shared.pipes.lock().unwrap_or_else(|p| p.into_inner());
            pool.give(p);
        });
    }

    /// Bytes wait in the pipe of the direction `from` feeds.
    fn piped(&self, from: Side) -> bool {
        self.pipe[si(from)].as_ref().is_some_and(|p| !p.is_empty())
    }

    /// Reading `side` would splice now.
    fn can_splice(&self, side: Side) -> bool {
        !self.no_splice
            && self.splice_ok[si(side)]
            && !self.eof_piped[si(side)]
            && self.pipe[si(side)].as_ref().is_none_or(|p| p.has_room())
    }

    /// Reading `side` would do something now (a read, or a splice).
    fn can_read(&self, side: Side) -> bool {
        self.want[si(side)].0
            && !self.eof_piped[si(side)]
            && (self.can_splice(side) || !self.piped(side))
    }

    /// Tells the poller what to wait for: it is oneshot, so a socket whose
    /// event fired is armed again, and one still armed only if what is
    /// wanted changed.
    fn arm(&mut self) {
        // A pipe toward a socket is written whatever the core wants there
        // (its own buffer is empty while the pipe holds bytes).
        let r = self.can_read(Side::Client);
        let w = self.want[CLIENT].1 || self.piped(Side::Upstream);
        if self.armed[CLIENT] != Some((r, w)) {
            let _ = self.poller.modify(&self.client, interest(CLIENT, r, w));
            self.armed[CLIENT] = Some((r, w));
        }
        if let Some(u) = &self.upstream {
            let (r, w) = if self.connecting {
                (false, true)
            } else {
                let r = self.can_read(Side::Upstream);
                let w = self.want[UPSTREAM].1 || self.piped(Side::Client);
                (r, w)
            };
            if self.armed[UPSTREAM] != Some((r, w)) {
                let _ = self.poller.modify(u, interest(UPSTREAM, r, w));
                self.armed[UPSTREAM] = Some((r, w));
            }
        }
    }

    fn apply(&mut self, cmd: Cmd, mine: &mut Vec<Cmd>) {
        match cmd {
            Cmd::Resolve { host, port } => {
                // This thread serves only this connection: it may wait here.
                let conn = self.id;
                let ev = match (host.as_str(), port).to_socket_addrs() {
                    Ok(a) => Event::Resolved {
                        conn,
                        addrs: a.collect(),
                    },
                    Err(_) => Event::ResolveFailed { conn },
                };
                self.event(ev, mine);
            }
            Cmd::Connect { addr, bind } => match connect(addr, bind) {
                Ok(u) => {
                    if let Some(old) = self.upstream.take() {
                        let _ = self.poller.delete(&old);
                    }
                    self.release_pipes(true);
                    self.splice_ok = [false; 2];
                    // SAFETY: deleted from the poller before the thread ends.
                    if unsafe { self.poller.add(&u, PEvent::writable(UPSTREAM)) }.is_err() {
                        self.connect_failed(IoKind::Other, mine);
                        return;
                    }
                    self.armed[UPSTREAM] = Some((false, true));
                    self.upstream = Some(u);
                    self.connecting = true;
                }
                Err(e) => self.connect_failed(IoKind::from_io(&e), mine),
            },
            Cmd::Interest { side, read, write } => self.want[si(side)] = (read, write),
            Cmd::ShutdownWrite(side) => {
                let r = match side {
                    Side::Client => self.client.shutdown(Shutdown::Write),
                    Side::Upstream => match &self.upstream {
                        Some(u) => u.shutdown(Shutdown::Write),
                        None => Ok(()),
                    },
                };
                if let Err(e) = r {
                    if e.kind() != io::ErrorKind::NotConnected {
                        self.event(
                            Event::IoError {
                                conn: self.id,
                                side,
                                error: IoKind::from_io(&e),
                            },
                            mine,
                        );
                    }
                }
            }
            Cmd::CloseUpstream => {
                if let Some(old) = self.upstream.take() {
                    let _ = self.poller.delete(&old);
                }
                self.armed[UPSTREAM] = None;
                // What was on its way to or from it goes too.
                self.release_pipes(true);
                self.splice_ok = [false; 2];
                self.connecting = false;
                self.want[UPSTREAM] = (false, false);
            }
            Cmd::Close => self.closed = true,
        }
    }

    fn event(&mut self, ev: Event, mine: &mut Vec<Cmd>) {
        let mut core = lock(&self.shared);
        core.proxy.handle(ev, Instant::now());
        core.drain(&self.shared, Some(self.id), mine);
        (self.splice_ok, self.pipe_size) = splice_answer(&core, self.id);
    }

    /// Splices what `side` has into its direction's pipe; true if anything
    /// happened (bytes moved, or the core was told something).
    fn splice_in(&mut self, side: Side, mine: &mut Vec<Cmd>) -> bool {
        let pipe = match self.pipe[si(side)].take() {
            Some(p) => Ok(p),
            None => {
                let mut pool = self.shared.pipes.lock().unwrap_or_else(|p| p.into_inner());
                pool.take(self.pipe_size)
            }
        };
        let Ok(mut pipe) = pipe else {
            // No pipe (unsupported, or out of descriptors): this connection
            // reads and writes.
            self.no_splice = true;
            return false;
        };
        let stream = match side {
            Side::Client => &self.client,
            Side::Upstream => match &self.upstream {
                Some(u) => u,
                None => return false,
            },
        };
        let r = pipe.fill(stream.as_fd());
        let empty = pipe.is_empty();
        self.pipe[si(side)] = Some(pipe);
        let conn = self.id;
        let ev = match r {
            Ok(Fill::Moved) => return true,
            Ok(Fill::PipeFull) | Ok(Fill::Empty) => return false,
            Ok(Fill::Unsupported) => {
                self.no_splice = true;
                return false;
            }
            Ok(Fill::Eof) if !empty => {
                self.eof_piped[si(side)] = true;
                return true;
            }
            Ok(Fill::Eof) => Event::Eof { conn, side },
            Err(e) => Event::IoError {
                conn,
                side,
                error: IoKind::from_io(&e),
            },
        };
        self.event(ev, mine);
        true
    }

    /// Splices what the pipe of the direction `from` feeds out to the other
    /// socket and tells the core how much went (and the source's EOF, once
    /// the pipe is empty); true if anything went.
    fn splice_out(&mut self, from: Side, mine: &mut Vec<Cmd>) -> bool {
        let to = match from.other() {
            Side::Client => &self.client,
            Side::Upstream => match &self.upstream {
                Some(u) => u,
                None => return false,
            },
        };
        let Some(pipe) = self.pipe[si(from)].as_mut() else {
            return false;
        };
        let r = pipe.drain(to.as_fd());
        let drained = pipe.is_empty();
        let conn = self.id;
        match r {
            Ok(Some(n)) if n > 0 => {
                let eof = drained && std::mem::take(&mut self.eof_piped[si(from)]);
                let mut core = lock(&self.shared);
                let now = Instant::now();
                core.proxy.handle(Event::Spliced { conn, from, n }, now);
                if eof {
                    core.proxy.handle(Event::Eof { conn, side: from }, now);
                }
                core.drain(&self.shared, Some(conn), mine);
                (self.splice_ok, self.pipe_size) = splice_answer(&core, conn);
                true
            }
            Ok(_) => false,
            Err(e) => {
                let error = IoKind::from_io(&e);
                let side = from.other();
                self.event(Event::IoError { conn, side, error }, mine);
                true
            }
        }
    }

    fn fail(&mut self, side: Side, error: IoKind) {
        let mut mine = Vec::new();
        self.event(
            Event::IoError {
                conn: self.id,
                side,
                error,
            },
            &mut mine,
        );
        for cmd in mine {
            if let Cmd::Close = cmd {
                self.closed = true;
            }
        }
    }

    fn connect_failed(&mut self, error: IoKind, mine: &mut Vec<Cmd>) {
        self.connecting = false;
        self.event(
            Event::ConnectFailed {
                conn: self.id,
                error,
            },
            mine,
        );
    }

    fn finish_connect(&mut self, clean: bool, mine: &mut Vec<Cmd>) {
        let Some(u) = &self.upstream else {
            return;
        };
        let peer = if clean {
            Ok(())
        } else {
            match u.take_error() {
                Ok(Some(e)) | Err(e) => return self.connect_failed(IoKind::from_io(&e), mine),
                Ok(None) => {}
            }
            u.peer_addr().map(|_| ())
        };
        match peer {
            Ok(_) => {
                self.connecting = false;
                // As in `portico`: the local address only where the core
                // uses it (SOCKS, FTP), sparing a getsockname elsewhere.
                let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                let wants = lock(&self.shared).proxy.wants_local(self.id);
                let local = if wants {
                    u.local_addr().unwrap_or(unspecified)
                } else {
                    unspecified
                };
                let conn = self.id;
                self.event(Event::Connected { conn, local }, mine);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => self.connect_failed(IoKind::from_io(&e), mine),
        }
    }

    /// Reads and writes on `side` while the core wants them and the socket
    /// can take them, a bounded number in a row; splices from `side` and
    /// on to the other socket at once, and what waits in a pipe toward
    /// `side`.
    fn pump(&mut self, side: Side, mine: &mut Vec<Cmd>) {
        let conn = self.id;
        for _ in 0..OPS_PER_TURN {
            let mut did = false;
            // Commands from this thread's own drains apply at once (interest
            // changes decide whether the next operation is wanted).
            for cmd in std::mem::take(mine) {
                self.apply(cmd, mine);
            }
            if self.closed {
                return;
            }
            if self.upstream.is_none() && side == Side::Upstream {
                return;
            }
            if self.piped(side.other()) {
                // Toward `side`: the pipe first (the core's buffer of that
                // direction is empty while the pipe holds bytes).
                did |= self.splice_out(side.other(), mine);
            }
            let splicing = self.want[si(side)].0 && self.can_splice(side);
            if splicing {
                // From `side`, straight on to the other socket.
                did |= self.splice_in(side, mine);
                if self.piped(side) {
                    did |= self.splice_out(side, mine);
                }
            }
            let stream = match side {
                Side::Client => &self.client,
                Side::Upstream => match &self.upstream {
                    Some(u) => u,
                    None => return,
                },
            };
            let (want_read, want_write) = self.want[si(side)];
            // Bytes read earlier still wait in the pipe: they go first.
            let want_read =
                want_read && !splicing && !self.piped(side) && !self.eof_piped[si(side)];
            if want_write {
                let mut core = lock(&self.shared);
                if let Some(parts) = core.proxy.send_bufs(conn, side) {
                    let r = write_parts(stream, parts);
                    let ev = match r {
                        Ok(n) => Some(Event::Written { conn, side, n }),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        Err(e) => Some(Event::IoError {
                            conn,
                            side,
                            error: IoKind::from_io(&e),
                        }),
                    };
                    if let Some(ev) = ev {
                        did = true;
                        core.proxy.handle(ev, Instant::now());
                        core.drain(&self.shared, Some(conn), mine);
                        // The core's buffer may have drained: a splice may
                        // follow.
                        (self.splice_ok, self.pipe_size) = splice_answer(&core, conn);
                    }
                }
            }
            if want_read && !self.closed {
                let mut core = lock(&self.shared);
                if let Some(buf) = core.proxy.recv_buf(conn, side) {
                    let r = retry(|| (&*stream).read(buf));
                    let ev = match r {
                        Ok(0) => Event::Eof { conn, side },
                        Ok(n) => Event::Read { conn, side, n },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            Event::ReadBlocked { conn, side }
                        }
                        Err(e) => Event::IoError {
                            conn,
                            side,
                            error: IoKind::from_io(&e),
                        },
                    };
                    did |= !matches!(ev, Event::ReadBlocked { .. });
                    core.proxy.handle(ev, Instant::now());
                    core.drain(&self.shared, Some(conn), mine);
                    (self.splice_ok, self.pipe_size) = splice_answer(&core, conn);
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
}

/// Whether each direction of `conn` may splice now (the caller holds the
/// lock), and the size the core wants its pipes.
fn splice_answer(core: &Core, conn: ConnId) -> ([bool; 2], PipeSize) {
    let p = &core.proxy;
    (
        [
            p.splice_ok(conn, Side::Client),
            p.splice_ok(conn, Side::Upstream),
        ],
        p.proxy().splice_pipe(),
    )
}

fn interest(key: usize, read: bool, write: bool) -> PEvent {
    match (read, write) {
        (true, true) => PEvent::all(key),
        (true, false) => PEvent::readable(key),
        (false, true) => PEvent::writable(key),
        (false, false) => PEvent::none(key),
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if let Some(ip) = bind {
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    match s.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}
