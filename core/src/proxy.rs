//! The connection table: every connection in flight, its deadlines, the
//! listeners, and the limits they share.
//!
//! # Call order (the loop every runtime writes)
//!
//! ```text
//! let mut proxy = Proxy::new(config, seed, now);
//! loop {
//!     while let Some(action) = proxy.poll_action() { carry it out }
//!     if proxy.is_finished() { break }
//!     wait for sockets, at most until proxy.poll_timeout();
//!     for each new client socket:  proxy.accept(listener, peer, now)
//!     for each readable socket:    read into proxy.recv_buf(conn, side), then
//!                                  proxy.handle(Event::Read { .. } | Eof | ReadBlocked, now)
//!     for each writable socket:    write from proxy.send_buf(conn, side), then
//!                                  proxy.handle(Event::Written { .. }, now)
//!     proxy.handle_timeout(now);
//! }
//! ```
//!
//! Invariants: the table never holds more than `limits.max_connections`
//! sessions, nor more than `limits.max_per_client` from one address; every
//! live session has exactly one current entry in the timer heap; a session
//! holds a buffer only while bytes are in it; an event naming a dead or
//! reused id changes nothing.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::buffer::Pool;
use crate::config::{Config, Host, ServiceKind};
use crate::event::{Action, Event, IoKind, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::log::AccessRecord;
use crate::session::{side_index, Dir, Session, State};
use crate::timer::Timers;

/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);
/// Free buffers kept warm in the pool, at most.
const POOL_KEEP: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerState {
    Opening,
    Open,
    Closed,
}

#[derive(Debug)]
struct Listener {
    service: usize,
    addr: SocketAddr,
    state: ListenerState,
}

#[derive(Debug)]
struct ServiceInfo {
    name: Arc<str>,
    kind: ServiceKind,
    /// For a mapped port: where every connection goes.
    destination: Option<SocketAddr>,
    target: String,
}

/// Counters over the life of the table (for tests and the status page).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
}

/// The connection table. See the module docs for the call order.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    services: Vec<ServiceInfo>,
    listeners: Vec<Listener>,
    sessions: Slab<Session>,
    gens: Vec<u32>,
    per_client: HashMap<IpAddr, u32>,
    timers: Timers,
    actions: VecDeque<Action>,
    pool: Pool,
    log_level: Level,
    /// Listeners not yet reported open at startup; a failure among them is fatal.
    starting: usize,
    /// Accepting is paused (out of file descriptors) until then.
    accept_paused_until: Option<Instant>,
    fd_warned: bool,
    /// Shutting down: connections still open then are closed.
    grace_until: Option<Instant>,
    stats: Stats,
    #[allow(dead_code)] // seeds the randomness later protocols need
    seed: u64,
}

/// The `listening:` line for one listener (printed at start and by `--check`).
pub fn listening_line(service: &str, kind: ServiceKind, addr: SocketAddr) -> String {
    format!("listening: {service} ({}) on {addr}", kind.name())
}

/// Every `listening:` line a start with `config` prints.
pub fn listening_lines(config: &Config) -> Vec<String> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.listen
                .iter()
                .map(move |a| listening_line(&s.name, s.kind, *a))
        })
        .collect()
}

fn method_of(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Mapped => "TCP",
        _ => "-",
    }
}

impl Proxy {
    /// A table for `config`; queues a [`Action::Listen`] for every listen
    /// address. `seed` seeds any randomness; `now` is the current time.
    pub fn new(config: Config, seed: u64, now: Instant) -> Self {
        let _ = now;
        let services = config
            .services
            .iter()
            .map(|s| {
                let destination = s.destination.as_ref().and_then(|d| match d.host {
                    Host::Ip(ip) => Some(SocketAddr::new(ip, d.port)),
                    Host::Name(_) => None,
                });
                ServiceInfo {
                    name: Arc::from(s.name.as_str()),
                    kind: s.kind,
                    destination,
                    target: s
                        .destination
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let mut listeners = Vec::new();
        let mut actions = VecDeque::new();
        for (i, s) in config.services.iter().enumerate() {
            for addr in &s.listen {
                let id = ListenerId(listeners.len() as u32);
                listeners.push(Listener {
                    service: i,
                    addr: *addr,
                    state: ListenerState::Opening,
                });
                actions.push_back(Action::Listen {
                    listener: id,
                    addr: *addr,
                });
            }
        }
        for w in crate::config::warnings(&config) {
            actions.push_back(Action::Log {
                level: Level::Warn,
                message: w,
            });
        }
        let pool = Pool::new(
            config.limits.buffer,
            POOL_KEEP.min(config.limits.max_connections as usize * 2),
        );
        Proxy {
            starting: listeners.len(),
            services,
            listeners,
            sessions: Slab::new(),
            gens: Vec::new(),
            per_client: HashMap::new(),
            timers: Timers::default(),
            actions,
            pool,
            log_level: Level::Info,
            accept_paused_until: None,
            fd_warned: false,
            grace_until: None,
            stats: Stats::default(),
            seed,
            config,
        }
    }

    /// Diagnostics below `level` are not emitted.
    pub fn set_log_level(&mut self, level: Level) {
        self.log_level = level;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections in flight.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Buffers lent to connections right now.
    pub fn buffers_in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// Entries in the timer heap (bounded by a small multiple of `len()`).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The service a listener belongs to: its name and kind.
    pub fn listener_service(&self, listener: ListenerId) -> Option<(&str, ServiceKind)> {
        let l = self.listeners.get(listener.index())?;
        let s = &self.services[l.service];
        Some((&s.name, s.kind))
    }

    fn log(&mut self, level: Level, message: impl FnOnce() -> String) {
        if level <= self.log_level {
            self.actions.push_back(Action::Log {
                level,
                message: message(),
            });
        }
    }

    fn id_of(&self, idx: usize) -> ConnId {
        ConnId {
            idx: idx as u32,
            gen: self.sessions[idx].gen,
        }
    }

    fn live(&self, conn: ConnId) -> bool {
        self.sessions
            .get(conn.idx as usize)
            .is_some_and(|s| s.gen == conn.gen)
    }

    /// A client connected to `listener` from `peer`. On `Err` the runtime
    /// closes the socket (the refusal is already logged).
    pub fn accept(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let service = match self.listeners.get(listener.index()) {
            Some(l) if l.state == ListenerState::Open => l.service,
            _ => return Err(Refused::UnknownListener),
        };
        // An accept succeeded: the descriptor shortage, if any, is over.
        self.fd_warned = false;
        let refusal = if self.grace_until.is_some() {
            Some((Refused::ShuttingDown, "shutdown"))
        } else if self.sessions.len() >= self.config.limits.max_connections as usize {
            Some((Refused::TooMany, "limit"))
        } else if self.per_client.get(&peer.ip()).copied().unwrap_or(0)
            >= self.config.limits.max_per_client
        {
            Some((Refused::PerClient, "limit"))
        } else {
            None
        };
        if let Some((why, status)) = refusal {
            self.stats.refused += 1;
            let svc = &self.services[service];
            let rec = AccessRecord {
                service: svc.name.clone(),
                client: peer,
                user: None,
                method: method_of(svc.kind),
                target: svc.target.clone(),
                destination: None,
                status: status.into(),
                up: 0,
                down: 0,
                duration: Duration::ZERO,
            };
            self.actions.push_back(Action::Access(Box::new(rec)));
            self.log(Level::Debug, || format!("refused {peer}: {why}"));
            return Err(why);
        }
        self.stats.accepted += 1;
        *self.per_client.entry(peer.ip()).or_insert(0) += 1;
        let idx = self.sessions.vacant_key();
        if self.gens.len() <= idx {
            self.gens.resize(idx + 1, 0);
        }
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        let gen = self.gens[idx];
        let svc = &self.services[service];
        let session = Session {
            gen,
            service,
            listener,
            client: peer,
            state: State::Connecting,
            accepted: now,
            state_since: now,
            last_active: now,
            timer_at: None,
            up: Dir::default(),
            down: Dir::default(),
            told: [(false, false); 2],
            target: svc.target.clone(),
            upstream: None,
            upstream_local: None,
            status: "ok",
        };
        let kind = svc.kind;
        let destination = svc.destination;
        self.sessions.insert(session);
        let conn = ConnId {
            idx: idx as u32,
            gen,
        };
        match (kind, destination) {
            (ServiceKind::Mapped, Some(addr)) => {
                self.sessions[idx].upstream = Some(addr);
                self.actions.push_back(Action::Connect {
                    conn,
                    addr,
                    bind: self.config.network.outgoing,
                });
            }
            _ => {
                // Validation lets through only kinds this table serves.
                self.sessions[idx].status = "error";
                self.finish(idx, now);
                return Ok(conn);
            }
        }
        self.sync(idx, now);
        Ok(conn)
    }

    /// Where the runtime reads `side`'s next bytes to: free space in the
    /// buffer of the direction `side` feeds. `None` when the core does not
    /// want a read on `side` now (or the id is stale).
    pub fn recv_buf(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        let s = self.sessions.get_mut(conn.idx as usize)?;
        if s.gen != conn.gen || !s.wanted(side).0 {
            return None;
        }
        let space = s.source_dir(side).space(&mut self.pool);
        if space.is_empty() {
            None
        } else {
            Some(space)
        }
    }

    /// The bytes waiting to be written to `side`, if any.
    pub fn send_buf(&self, conn: ConnId, side: Side) -> Option<&[u8]> {
        let s = self.sessions.get(conn.idx as usize)?;
        if s.gen != conn.gen {
            return None;
        }
        if side == Side::Upstream && s.state != State::Relay {
            return None;
        }
        let data = s.sink_dir(side).buf.as_ref()?.data();
        if data.is_empty() {
            None
        } else {
            Some(data)
        }
    }

    /// Feeds one socket event to the table.
    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Listening { listener, local } => self.on_listening(listener, local),
            Event::ListenFailed { listener, error } => self.on_listen_failed(listener, error),
            Event::AcceptFailed { listener, error } => self.on_accept_failed(listener, error, now),
            Event::Connected { conn, local } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                if s.state != State::Connecting {
                    return;
                }
                s.state = State::Relay;
                s.state_since = now;
                s.last_active = now;
                s.upstream_local = Some(local);
                self.sync(idx, now);
            }
            Event::ConnectFailed { conn, error } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                if s.state != State::Connecting {
                    return;
                }
                s.status = match error {
                    IoKind::Refused => "refused",
                    IoKind::TimedOut => "timeout",
                    IoKind::HostUnreachable | IoKind::NetUnreachable => "unreachable",
                    _ => "error",
                };
                let (svc, client, up) = (s.service, s.client, s.upstream);
                let name = self.services[svc].name.clone();
                self.log(Level::Debug, || {
                    format!(
                        "{name}: {client}: connect to {} failed: {}",
                        up.map(|a| a.to_string()).unwrap_or_default(),
                        error.describe()
                    )
                });
                self.finish(idx, now);
            }
            Event::Read { conn, side, n } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                if n > 0 {
                    if let Some(b) = s.source_dir(side).buf.as_mut() {
                        b.fill(n);
                    }
                    s.last_active = now;
                }
                self.sync(idx, now);
            }
            Event::ReadBlocked { conn, side } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                self.sessions[idx]
                    .source_dir(side)
                    .release_if_empty(&mut self.pool);
            }
            Event::Eof { conn, side } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                let d = s.source_dir(side);
                d.eof = true;
                d.release_if_empty(&mut self.pool);
                self.sync(idx, now);
            }
            Event::Written { conn, side, n } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                let d = s.sink_dir_mut(side);
                if let Some(b) = d.buf.as_mut() {
                    let n = b.consume(n);
                    d.bytes += n as u64;
                    if n > 0 {
                        s.last_active = now;
                    }
                }
                s.sink_dir_mut(side).release_if_empty(&mut self.pool);
                self.sync(idx, now);
            }
            Event::IoError { conn, side, error } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                // A reset after both halves were shut is an ordinary end.
                if !s.finished() {
                    s.status = "error";
                }
                let name = self.services[s.service].name.clone();
                let client = s.client;
                self.log(Level::Debug, || {
                    format!(
                        "{name}: {client}: {} side: {}",
                        match side {
                            Side::Client => "client",
                            Side::Upstream => "upstream",
                        },
                        error.describe()
                    )
                });
                self.finish(idx, now);
            }
        }
    }

    fn on_listening(&mut self, listener: ListenerId, local: SocketAddr) {
        let Some(l) = self.listeners.get_mut(listener.index()) else {
            return;
        };
        if l.state != ListenerState::Opening {
            return;
        }
        l.state = ListenerState::Open;
        self.starting = self.starting.saturating_sub(1);
        let s = &self.services[l.service];
        let line = listening_line(&s.name, s.kind, local);
        self.actions.push_back(Action::Say(line));
    }

    fn on_listen_failed(&mut self, listener: ListenerId, error: IoKind) {
        let Some(l) = self.listeners.get_mut(listener.index()) else {
            return;
        };
        if l.state != ListenerState::Opening {
            return;
        }
        l.state = ListenerState::Closed;
        let s = &self.services[l.service];
        let hint = match error {
            IoKind::PermissionDenied if l.addr.port() < 1024 => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            IoKind::AddrInUse => " (another program is listening there; stop it or choose another port)",
            IoKind::AddrNotAvailable => {
                " (no interface of this machine has that address; check [network] internal/external)"
            }
            _ => "",
        };
        let message = format!(
            "cannot listen on {} for service '{}': {}{hint}",
            l.addr,
            s.name,
            error.describe()
        );
        self.actions.push_back(Action::Fatal { message });
    }

    fn on_accept_failed(&mut self, _listener: ListenerId, error: IoKind, now: Instant) {
        if error != IoKind::TooManyFiles {
            // Aborted handshakes and the like: the listener is fine.
            self.log(Level::Debug, || {
                format!("accept failed: {}", error.describe())
            });
            return;
        }
        if self.accept_paused_until.is_some() {
            return;
        }
        if !self.fd_warned {
            self.fd_warned = true;
            let open = self.sessions.len();
            self.log(Level::Warn, || {
                format!(
                    "out of file descriptors with {open} connections open: not accepting for {}ms; \
                     raise the limit (ulimit -n) or lower limits.max_connections",
                    ACCEPT_PAUSE.as_millis()
                )
            });
        }
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        for (i, l) in self.listeners.iter().enumerate() {
            if l.state == ListenerState::Open {
                self.actions.push_back(Action::PauseAccept {
                    listener: ListenerId(i as u32),
                });
            }
        }
    }

    /// Brings the runtime's view of session `idx` up to date: interest,
    /// half-closes, the end of the session, and its deadline.
    fn sync(&mut self, idx: usize, now: Instant) {
        let conn = self.id_of(idx);
        let s = &mut self.sessions[idx];
        if s.state == State::Relay {
            // Half-close carried across once a direction is drained.
            if s.up.eof && !s.up.shut && !s.up.has_data() {
                s.up.shut = true;
                self.actions.push_back(Action::ShutdownWrite {
                    conn,
                    side: Side::Upstream,
                });
            }
            if s.down.eof && !s.down.shut && !s.down.has_data() {
                s.down.shut = true;
                self.actions.push_back(Action::ShutdownWrite {
                    conn,
                    side: Side::Client,
                });
            }
            if s.finished() {
                self.finish(idx, now);
                return;
            }
        }
        for side in [Side::Client, Side::Upstream] {
            let want = s.wanted(side);
            let told = &mut s.told[side_index(side)];
            if *told != want {
                *told = want;
                self.actions.push_back(Action::Interest {
                    conn,
                    side,
                    read: want.0,
                    write: want.1,
                });
            }
        }
        self.arm(idx);
    }

    fn deadline(&self, s: &Session) -> Instant {
        let l = &self.config.limits;
        match s.state {
            State::Connecting => s.state_since + l.connect_timeout,
            State::Relay => s.last_active + l.idle_timeout,
        }
    }

    /// Makes sure the heap holds an entry no later than the session's deadline.
    fn arm(&mut self, idx: usize) {
        let s = &self.sessions[idx];
        let at = self.deadline(s);
        if s.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let gen = s.gen;
        self.sessions[idx].timer_at = Some(at);
        self.timers.push(at, idx as u32, gen);
        // Stale entries (sessions gone, deadlines moved) outnumber live ones:
        // rebuild so the heap stays proportional to the table.
        if self.timers.len() > 2 * self.sessions.len() + 64 {
            let sessions = &self.sessions;
            self.timers.retain(|t, i, g| {
                sessions
                    .get(i as usize)
                    .is_some_and(|s| s.gen == g && s.timer_at == Some(t))
            });
        }
    }

    /// Ends session `idx`: Close, access record, counters, buffers back.
    fn finish(&mut self, idx: usize, now: Instant) {
        let conn = self.id_of(idx);
        let mut s = self.sessions.remove(idx);
        s.up.release(&mut self.pool);
        s.down.release(&mut self.pool);
        if let Some(n) = self.per_client.get_mut(&s.client.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&s.client.ip());
            }
        }
        self.stats.closed += 1;
        self.actions.push_back(Action::Close { conn });
        let svc = &self.services[s.service];
        let rec = AccessRecord {
            service: svc.name.clone(),
            client: s.client,
            user: None,
            method: method_of(svc.kind),
            target: std::mem::take(&mut s.target),
            destination: s.upstream,
            status: s.status.into(),
            up: s.up.bytes,
            down: s.down.bytes,
            duration: now.saturating_duration_since(s.accepted),
        };
        self.actions.push_back(Action::Access(Box::new(rec)));
        if self.sessions.is_empty() {
            // Nothing can be current any more.
            self.timers.clear();
        }
    }

    /// Runs every deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            for (i, l) in self.listeners.iter().enumerate() {
                if l.state == ListenerState::Open {
                    self.actions.push_back(Action::ResumeAccept {
                        listener: ListenerId(i as u32),
                    });
                }
            }
        }
        if self.grace_until.is_some_and(|t| t <= now) {
            let open: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
            for idx in open {
                self.sessions[idx].status = "shutdown";
                self.finish(idx, now);
            }
        }
        while let Some((at, idx, gen)) = self.timers.pop_due(now) {
            let idx = idx as usize;
            let Some(s) = self.sessions.get_mut(idx) else {
                continue;
            };
            if s.gen != gen || s.timer_at != Some(at) {
                continue;
            }
            s.timer_at = None;
            let due = self.deadline(&self.sessions[idx]);
            if due > now {
                self.arm(idx);
                continue;
            }
            let s = &mut self.sessions[idx];
            s.status = match s.state {
                State::Connecting => "timeout",
                State::Relay => "idle",
            };
            self.finish(idx, now);
        }
    }

    /// The next time [`Proxy::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.accept_paused_until,
            self.grace_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Stops accepting and lets connections finish for `shutdown_grace`;
    /// those still open then are closed. Idempotent.
    pub fn shutdown(&mut self, now: Instant) {
        if self.grace_until.is_some() {
            return;
        }
        let grace = self.config.limits.shutdown_grace;
        self.grace_until = Some(now + grace);
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if l.state != ListenerState::Closed {
                l.state = ListenerState::Closed;
                self.actions.push_back(Action::Unlisten {
                    listener: ListenerId(i as u32),
                });
            }
        }
        let open = self.sessions.len();
        self.log(Level::Info, || {
            format!(
                "shutting down: {open} connections open, waiting up to {}s",
                grace.as_secs_f64()
            )
        });
        if grace.is_zero() {
            self.handle_timeout(now);
        }
    }

    /// Shutting down and nothing left in flight: the runtime may exit.
    pub fn is_finished(&self) -> bool {
        self.grace_until.is_some() && self.sessions.is_empty()
    }

    /// Startup listeners not yet reported open.
    pub fn starting(&self) -> usize {
        self.starting
    }
}
