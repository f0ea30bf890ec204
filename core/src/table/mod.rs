//! The connection table, [`Proxy`]: the one type a runtime drives. It owns
//! what connections share — the slab of sessions and their ids, admission
//! and limits, the listeners, the timer heap, the action queue, the buffer
//! pool — routes each event to its session, and knows no protocol: what a
//! connection does is its session's [`crate::session::Machine`].
//!
//! Several tables (one per worker) may share one [`Ledger`]: the limits
//! count the sessions of all of them.
//!
//! Invariants: the limits hold (see [`admission`]); every live session has
//! exactly one current entry in the timer heap, which stays within a small
//! multiple of the table's size; a session holds a buffer only while bytes
//! are in it; an event naming a dead or reused id changes nothing.

mod accept;
mod admission;
pub(crate) mod context;
pub(crate) mod listeners;
mod reload;
mod status;
pub(crate) mod timers;
mod udp;

use std::net::SocketAddr;
use std::time::Instant;

use slab::Slab;

pub use accept::Accepted;
pub use admission::REFUSING_MAX;
pub use context::Stats;
pub use listeners::listening_lines;
pub use reload::Reload;

use crate::auth::Answer;
use crate::auth::Users;
use crate::buffer::Pool;
use crate::config::{Config, ServiceKind, Transport};
use crate::event::{Action, Event, Level};
use crate::history::INTERVAL;
use crate::id::{ConnId, ListenerId, Side};
use crate::ledger::Ledger;
use crate::rules::Wall;
use crate::session::Session;
use crate::trace::Recorder;
use crate::udp::UdpTable;

use context::{Context, Request, ServiceInfo};
use listeners::Listeners;
use timers::Timers;

/// Free buffers kept warm in the pool, at most.
const POOL_KEEP: usize = 1024;
/// The smallest pipe a runtime splices a direction through (see
/// [`PipeSize`]: its size gives page slots; what it holds is bounded by
/// `limits.buffer`).
pub const SPLICE_PIPE_MIN: usize = 256 * 1024;
/// A read this big (or half the buffer, if that is less) says a direction
/// carries a bulk transfer, which splicing speeds up; small messages (a
/// request, a short reply) cost a syscall or two more through a pipe than
/// through the buffer, so they are not spliced.
pub const SPLICE_BULK: usize = 16 * 1024;
/// A spliced direction that has carried this much stays bulk: its pipe
/// may then hold up to [`SPLICE_PIPE_MIN`] bytes (more bytes per splice(2),
/// fewer wake-ups of both peers) where `limits.buffer` is less, as long as
/// the memory bound holds (see [`Proxy::splice_pipe_for`]).
pub const SPLICE_GROW_AFTER: u64 = 1 << 20;
/// The most bytes one [`Event::Spliced`] counts (a runtime reports each
/// splice(2) on its own, far less than this; the bound keeps the counters
/// of a confused runtime from overflowing).
pub const SPLICED_MAX: usize = 1 << 30;

/// The pipe a spliced direction goes through: `size` bytes of pipe (at
/// least [`SPLICE_PIPE_MIN`], so that it has page slots enough to fill by
/// bytes, not by slots: a socket's data is spliced a page slot per
/// fragment), holding at most `limit` bytes at once — `limits.buffer`, the
/// bound on what any direction holds, as for the core's own buffer. A full
/// pipe stops reading from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PipeSize {
    pub size: usize,
    pub limit: usize,
}

/// Whether worker `worker` listens for service `s`: every worker on a TCP
/// port; a UDP port's mappings are one table's, the first worker's.
fn listens(worker: usize, s: &crate::config::Service) -> bool {
    worker == 0 || s.protocol != Transport::Udp
}

/// The configuration's warnings, said once: by worker 0.
fn warnings(worker: usize, config: &Config) -> Vec<String> {
    if worker == 0 {
        crate::config::warnings(config)
    } else {
        Vec::new()
    }
}

/// The connection table: the one type a runtime drives.
///
/// # Call order (the loop every runtime writes)
///
/// ```text
/// let mut proxy = Proxy::new(config, seed, now);  // Proxy::worker(…) for one of several
/// proxy.record(&config_text);                     // only with --record, before anything else
/// proxy.set_log_level(level);
/// loop {
///     while let Some(action) = proxy.poll_action() { carry it out }
///     if proxy.is_finished() { break }
///     wait for sockets, at most until proxy.poll_timeout();
///     proxy.set_wall(local wall-clock time);
///     each new client socket:  proxy.accept(Accepted::new(listener, peer).local(addr), now)
///     each readable socket:    read into proxy.recv_buf(conn, side), then
///                              proxy.handle(Event::Read { .. } | Eof | ReadBlocked, now)
///     each writable socket:    write proxy.send_buf(conn, side) (two parts, one writev),
///                              then proxy.handle(Event::Written { .. }, now)
///     (where proxy.splice_ok(conn, side): splice side → pipe → other side past the
///      core's buffers, then proxy.handle(Event::Spliced { .. }, now), and Eof only
///      once the pipe is empty; the pipe as proxy.splice_pipe() says)
///     a connect attempt that finished: proxy.handle(Event::Connected { conn, attempt, local }
///                              | ConnectFailed { .. }, now), with the real local address
///                              only where proxy.wants_local(conn); its socket is the
///                              upstream socket from then on
///     Action::Connect while an attempt of that conn still connects: a second socket
///                              racing it; Action::Abandon closes one attempt's socket
///     names resolved, listeners opened, accepts failed: proxy.handle(Event::…, now)
///     UDP: receive into proxy.datagram_buf(), then proxy.handle_datagram(…) or
///          handle_reply(…); send what proxy.poll_datagram() gives
///     proxy.handle_timeout(now);
///     SIGHUP:  proxy.reconfigure(config, Reload { text, recheck, closed_elsewhere }, now),
///              or, when the file does not load, proxy.reload_failed(why, now)
///     SIGTERM: proxy.shutdown(now)
///     Action::Gather (several workers): proxy.handle_gathered(conn, the others'
///                              proxy.snapshot(now), now)
///     with --record: append proxy.take_trace() to the trace files now and then
/// }
/// ```
#[derive(Debug)]
pub struct Proxy {
    sessions: Slab<Session>,
    /// Generation per session slot.
    gens: Vec<u32>,
    /// What a session may use while it handles an event.
    cx: Context,
    udp: UdpTable,
    /// Status requests waiting for the other workers' snapshots.
    gathering: Vec<(ConnId, crate::status::Page, bool)>,
    /// Where the runtime puts a datagram it received.
    datagram: Vec<u8>,
    /// The flight recorder, when recording (`--record`).
    recorder: Option<Box<Recorder>>,
    /// When the table was made, and its seed (a trace starts with both).
    born: Instant,
    seed: u64,
    /// The interval the services' histories are at, counted from `born`,
    /// and when the next one begins (see [`crate::history`]).
    interval: u64,
    next_interval: Instant,
    /// When the process started (Unix seconds), once a runtime told the
    /// table the time.
    started: Option<i64>,
    last_reload: crate::status_page::LastReload,
}

impl Proxy {
    /// A table for `config`; queues a [`Action::Listen`] for every listen
    /// address. `seed` seeds any randomness; `now` is the current time.
    pub fn new(config: Config, seed: u64, now: Instant) -> Self {
        Proxy::worker(config, seed, now, Ledger::default(), 0)
    }

    /// The table of worker `worker` among those sharing `ledger` (see
    /// [`Ledger`]). Every worker listens on the same TCP addresses;
    /// only worker 0 opens UDP ports, warns about the configuration and
    /// prints the `listening:` lines.
    pub fn worker(config: Config, seed: u64, now: Instant, ledger: Ledger, worker: usize) -> Self {
        let services: Vec<ServiceInfo> = config.services.iter().map(ServiceInfo::new).collect();
        let mut listeners = Listeners::default();
        let mut actions = std::collections::VecDeque::new();
        for (i, s) in config.services.iter().enumerate() {
            if !listens(worker, s) {
                continue;
            }
            let socket = listeners::Socket::of(s);
            for addr in &s.listen {
                listeners.open(i, *addr, socket, None, true, &mut actions);
                listeners.starting += 1;
            }
        }
        for w in warnings(worker, &config) {
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
            sessions: Slab::new(),
            gens: Vec::new(),
            cx: Context {
                now,
                users: Users::new(&config.users, seed, config.limits.auth_cache)
                    .with_helper(config.helper.clone()),
                config,
                services,
                ledger,
                pool,
                actions,
                log_level: Level::Info,
                timers: Timers::default(),
                wall: Wall::default(),
                stats: Stats::default(),
                user_bytes: Default::default(),
                listeners,
                grace_until: None,
                worker,
                requests: Vec::new(),
            },
            udp: UdpTable::default(),
            gathering: Vec::new(),
            datagram: Vec::new(),
            recorder: None,
            born: now,
            seed,
            interval: 0,
            next_interval: now + INTERVAL,
            started: None,
            // The start counts as a successful load (its wall-clock time
            // comes with the first `set_wall`).
            last_reload: crate::status_page::LastReload {
                when: Some(now),
                ok: true,
                ..Default::default()
            },
        }
    }

    /// Starts the flight recorder (see [`crate::trace`]): every input from
    /// now on is written to a trace that replays to the same actions. Call
    /// it right after [`Proxy::new`], before anything else; a trace is one
    /// table's, so `--record` runs one worker. While recording no
    /// direction is spliced, so the trace holds every read and write.
    pub fn record(&mut self, config_text: &str) {
        let mut rec = Recorder::start(self.born, config_text, self.seed).with_actions();
        // Counts loaded from `[state] dir` decide quotas: the replay
        // starts from them too.
        let book = &self.cx.ledger.lock().quotas;
        if !book.is_empty() {
            rec.quotas(&book.encode_all());
        }
        self.recorder = Some(Box::new(rec));
    }

    /// Replaces the quotas' counts with those of a state file's `text`
    /// (a replay starting where its live run started).
    pub fn load_quotas(&mut self, text: &str) -> Result<(), crate::quota::StateError> {
        let book = crate::quota::Book::decode_all(text, "the trace")?;
        self.cx.ledger.lock().quotas = book;
        Ok(())
    }

    /// Trace bytes and action lines recorded since the last call, for the
    /// runtime to append to its files.
    pub fn take_trace(&mut self) -> Option<(Vec<u8>, String)> {
        let rec = self.recorder.as_mut()?;
        if rec.pending() == 0 {
            return None;
        }
        Some((rec.take(), rec.take_actions()))
    }

    /// Diagnostics below `level` are not emitted.
    pub fn set_log_level(&mut self, level: Level) {
        if let Some(r) = self.recorder.as_mut() {
            r.log_level(level);
        }
        self.cx.log_level = level;
    }

    /// Local wall-clock time, for rules with `days` and `hours`. A runtime
    /// sets it before handing in events (the core has no clock).
    pub fn set_wall(&mut self, wall: Wall) {
        if let Some(r) = self.recorder.as_mut() {
            r.wall(wall);
        }
        self.cx.wall = wall;
        if self.started.is_none() {
            self.started = Some(wall.unix_secs);
            if self.last_reload.last_success == 0 {
                self.last_reload.at = wall.unix_secs;
                self.last_reload.last_success = wall.unix_secs;
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.cx.config
    }

    pub fn stats(&self) -> &Stats {
        &self.cx.stats
    }

    /// The counts this table shares with the others of the process (a
    /// handle another thread may keep, e.g. for the status line).
    pub fn ledger(&self) -> Ledger {
        self.cx.ledger.clone()
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
        self.cx.pool.in_use()
    }

    /// Entries in the timer heap (bounded by a small multiple of `len()`).
    pub fn timer_entries(&self) -> usize {
        self.cx.timers.len()
    }

    /// Startup listeners not yet reported open.
    pub fn starting(&self) -> usize {
        self.cx.listeners.starting
    }

    /// The service a listener belongs to: its name and kind.
    pub fn listener_service(&self, listener: ListenerId) -> Option<(&str, ServiceKind)> {
        let l = self.cx.listeners.get(listener)?;
        let s = &self.cx.services[l.service];
        Some((&s.name, s.kind))
    }

    /// The live session `conn` names, if any.
    fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions.get(conn.index()).filter(|s| s.id == conn)
    }

    /// Lends the context to session `conn` for `f`, then carries out what
    /// it asked of the table, brings the runtime's view up to date when
    /// `then_sync`, and finishes the session if it ended.
    fn dispatch(
        &mut self,
        conn: ConnId,
        now: Instant,
        then_sync: bool,
        f: impl FnOnce(&mut Session, &mut Context),
    ) {
        self.cx.now = now;
        let Some(s) = self.sessions.get_mut(conn.index()).filter(|s| s.id == conn) else {
            return;
        };
        f(s, &mut self.cx);
        self.requests();
        if let Some(s) = self.sessions.get_mut(conn.index()).filter(|s| s.id == conn) {
            if then_sync && !s.ended {
                s.sync(&mut self.cx);
            }
            if s.ended {
                self.finish(conn);
            }
        }
        self.tidy_timers();
    }

    /// [`Proxy::dispatch`] for calls that sync where they need to.
    fn run(&mut self, conn: ConnId, now: Instant, f: impl FnOnce(&mut Session, &mut Context)) {
        self.dispatch(conn, now, false, f);
    }

    /// Carries out what sessions asked of the table.
    fn requests(&mut self) {
        if self.cx.requests.is_empty() {
            return;
        }
        // The list keeps its room for the next call (a data connection asks
        // on every read).
        let mut list = std::mem::take(&mut self.cx.requests);
        for r in list.drain(..) {
            match r {
                Request::Touch(owner) => {
                    if let Some(s) = self
                        .sessions
                        .get_mut(owner.index())
                        .filter(|s| s.id == owner)
                    {
                        s.last_active = self.cx.now;
                    }
                }
                Request::Status {
                    conn,
                    page,
                    head_only,
                } => self.status_request(conn, page, head_only),
            }
        }
        self.cx.requests = list;
    }

    /// Ends session `conn`: Close, access record, counters, buffers back;
    /// accepting paused for want of descriptors goes on at once, since
    /// the connection's are free again.
    fn finish(&mut self, conn: ConnId) {
        let s = self.sessions.remove(conn.index());
        self.udp.held = self.udp.held.saturating_sub(s.association_held());
        s.close(&mut self.cx);
        self.cx.listeners.resume(&mut self.cx.actions);
        if !self.gathering.is_empty() {
            self.gathering.retain(|(c, _, _)| *c != conn);
        }
        if self.sessions.is_empty() {
            // Nothing can be current any more.
            self.cx.timers.clear();
        }
    }

    /// Stale entries (sessions gone, deadlines moved) outnumber live ones:
    /// rebuild so the heap stays proportional to the table.
    fn tidy_timers(&mut self) {
        if self.cx.timers.len() > 2 * self.sessions.len() + 64 {
            let sessions = &self.sessions;
            self.cx.timers.retain(|t, i, g| {
                sessions
                    .get(i as usize)
                    .is_some_and(|s| s.id.gen == g && s.timer_at == Some(t))
            });
        }
    }

    /// Whether [`Event::Connected`] for `conn` needs the upstream socket's
    /// real local address: only where its protocol uses it (SOCKS, FTP's
    /// control connection). Every other session (HTTP, the line gateways,
    /// a mapped port, an FTP data connection) does not, and a runtime may
    /// spare the syscall and give the unspecified address.
    pub fn wants_local(&self, conn: ConnId) -> bool {
        self.session(conn).is_some_and(|s| s.wants_local())
    }

    /// Whether bytes read on `conn` now may be parsed by the core (the
    /// flight recorder keeps those; relayed bytes it keeps as lengths).
    pub(crate) fn keeps_payload(&self, conn: ConnId) -> bool {
        self.session(conn).is_some_and(|s| s.keeps_payload())
    }

    /// Whether the runtime may move bytes from `from` to the other side
    /// itself (splice(2)), reporting them with [`Event::Spliced`], instead
    /// of reading into [`Proxy::recv_buf`]. True only while the direction
    /// is a pure relay the core has nothing to do with: the session relays
    /// (a mapped port, SOCKS after its reply, an HTTP CONNECT tunnel after
    /// its 200, an FTP data connection), no bandwidth cap counts its bytes,
    /// nothing of it waits in the core (what the core holds goes out first,
    /// so the order is kept; a reply or PROXY header it made, too), its
    /// source has not reached EOF, and the core wants a read there; and
    /// never while recording.
    ///
    /// Asked before each splice from `from`'s socket; bytes already in the
    /// runtime's pipe may still be written out after it turns false.
    pub fn splice_ok(&self, conn: ConnId, from: Side) -> bool {
        self.recorder.is_none() && self.session(conn).is_some_and(|s| s.splice_ok(from))
    }

    /// How a runtime makes the pipe it splices a direction through.
    pub fn splice_pipe(&self) -> PipeSize {
        let limit = self.cx.config.limits.buffer;
        PipeSize {
            size: limit.max(SPLICE_PIPE_MIN),
            limit,
        }
    }

    /// The pipe the direction from `from` goes through now: as
    /// [`Proxy::splice_pipe`], holding up to [`SPLICE_PIPE_MIN`] bytes once
    /// the core has let it grow (see [`Session::on_spliced`]).
    /// While connections fill the room grown pipes took, each is held to
    /// `limits.buffer` again from its next pipe on.
    pub fn splice_pipe_for(&self, conn: ConnId, from: Side) -> PipeSize {
        let mut p = self.splice_pipe();
        if self.session(conn).is_some_and(|s| s.source(from).grown) {
            let limits = &self.cx.config.limits;
            let counts = self.cx.ledger.lock();
            if crate::session::grown_room(limits, &counts, counts.grown_pipes) {
                p.limit = p.limit.max(SPLICE_PIPE_MIN);
            }
        }
        p
    }

    /// Where the runtime reads `side`'s next bytes to: free space in the
    /// buffer of the direction `side` feeds. `None` when the core does not
    /// want a read on `side` now (or the id is stale).
    pub fn recv_buf(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        let s = self.sessions.get_mut(conn.index())?;
        if s.id != conn || !s.wanted(side).0 {
            return None;
        }
        let cap = match &s.bucket {
            Some(k) => self
                .cx
                .ledger
                .lock()
                .buckets
                .get_mut(k)
                .map_or(usize::MAX, |b| b.available(side.index(), self.cx.now)),
            None => usize::MAX,
        };
        let space = s.read_space(side, &mut self.cx.pool);
        let n = space.len().min(cap);
        if n == 0 {
            None
        } else {
            Some(&mut space[..n])
        }
    }

    /// All the bytes waiting to be written to `side`, if any, in two parts
    /// to be written in order, best with one vectored write: bytes the core
    /// made (a reply, a rewritten head), then bytes it forwards. Either
    /// part may be empty, not both. An [`Event::Written`] of `n` counts
    /// across them, the first part's bytes first.
    pub fn send_buf(&self, conn: ConnId, side: Side) -> Option<[&[u8]; 2]> {
        let s = self.session(conn)?;
        if !s.wanted(side).1 {
            return None;
        }
        let parts = s.out_parts(side);
        if parts[0].is_empty() && parts[1].is_empty() {
            None
        } else {
            Some(parts)
        }
    }

    /// `n` bytes at once are a bulk transfer (see [`SPLICE_BULK`]).
    fn bulk(&self, n: usize) -> bool {
        n >= SPLICE_BULK.min(self.cx.config.limits.buffer / 2)
    }

    /// Feeds one socket event to the table.
    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.recorder.is_some() {
            self.record_event(&event, now);
        }
        self.cx.now = now;
        self.tick(now);
        match event {
            Event::Listening { listener, local } => self.on_listening(listener, local, now),
            Event::ListenFailed { listener, error } => {
                let services = &self.cx.services;
                let (report, message) = self.cx.listeners.listen_failed(
                    listener,
                    error,
                    |i| services[i].name.clone(),
                    &mut self.cx.actions,
                );
                if let Some(m) = message {
                    self.cx.log(Level::Error, || m);
                }
                self.data_port_report(report, now);
            }
            Event::AcceptFailed { error, .. } => {
                if error != crate::event::IoKind::TooManyFiles {
                    // Aborted handshakes and the like: the listener is fine.
                    self.cx.log(Level::Debug, || {
                        format!("accept failed: {}", error.describe())
                    });
                } else if self.cx.listeners.paused_until.is_none() {
                    let open = self.sessions.len();
                    if let Some(w) = self.cx.listeners.shortage_report(open, now) {
                        self.cx.log(Level::Warn, || w);
                    }
                    self.cx.listeners.pause(now, &mut self.cx.actions);
                }
            }
            Event::Resolved { conn, addrs } if self.associated(conn) => {
                self.association_resolved(conn, Some(addrs), now)
            }
            Event::ResolveFailed { conn } if self.associated(conn) => {
                self.association_resolved(conn, None, now)
            }
            Event::Resolved { conn, addrs } if self.bind_resolving(conn) => {
                self.run(conn, now, |s, cx| s.on_bind_resolved(Some(addrs), cx))
            }
            Event::ResolveFailed { conn } if self.bind_resolving(conn) => {
                self.run(conn, now, |s, cx| s.on_bind_resolved(None, cx))
            }
            Event::Connected {
                conn,
                attempt,
                local,
            } => self.run(conn, now, |s, cx| s.on_connected(attempt, local, cx)),
            Event::ConnectFailed {
                conn,
                attempt,
                error,
            } => self.run(conn, now, |s, cx| s.on_connect_failed(attempt, error, cx)),
            Event::Resolved { conn, addrs } => {
                self.run(conn, now, |s, cx| s.on_resolved(addrs, cx))
            }
            Event::ResolveFailed { conn } => self.run(conn, now, |s, cx| s.on_resolve_failed(cx)),
            Event::PasswordChecked { conn, ok } => {
                let answer = if ok { Answer::Ok } else { Answer::Wrong };
                self.run(conn, now, |s, cx| s.on_password_checked(answer, cx))
            }
            Event::HelperAnswered { conn, answer } => {
                self.run(conn, now, |s, cx| s.on_password_checked(answer, cx))
            }
            Event::Read { conn, side, n } => {
                let bulk = self.bulk(n);
                self.dispatch(conn, now, true, |s, cx| s.on_read(side, n, bulk, cx))
            }
            Event::Spliced { conn, from, n } => {
                if n > 0 {
                    self.run(conn, now, |s, cx| s.on_spliced(from, n, cx))
                }
            }
            Event::ReadBlocked { conn, side } => {
                self.run(conn, now, |s, cx| s.on_read_blocked(side, cx))
            }
            Event::Eof { conn, side } => self.dispatch(conn, now, true, |s, cx| s.on_eof(side, cx)),
            Event::Written { conn, side, n } => {
                self.dispatch(conn, now, true, |s, cx| s.on_written(side, n, cx))
            }
            Event::IoError { conn, side, error } => {
                self.run(conn, now, |s, cx| s.on_io_error(side, error, cx))
            }
            Event::UdpBound { conn, local } => {
                self.run(conn, now, |s, cx| s.on_udp_bound(local, cx))
            }
            Event::UdpBindFailed { conn, error } => self.run(conn, now, |s, cx| {
                s.on_udp_bind_failed(crate::proto::Failure::Other, Some(error), cx)
            }),
            Event::BindListening { conn, local } => {
                self.run(conn, now, |s, cx| s.on_bind_listening(local, cx))
            }
            Event::BindFailed { conn, error } => {
                self.run(conn, now, |s, cx| s.on_bind_failed(error, cx))
            }
            Event::BindAccepted { conn, peer } => {
                self.run(conn, now, |s, cx| s.on_bind_accepted(peer, cx))
            }
        }
    }

    /// Writes `event` to the trace (the bytes of a read the core may parse
    /// too: they sit at the start of the space it lent, not taken yet).
    fn record_event(&mut self, event: &Event, now: Instant) {
        let kept = match event {
            Event::Read { conn, side, n } if self.keeps_payload(*conn) => self
                .recv_buf(*conn, *side)
                .map(|b| b[..(*n).min(b.len())].to_vec()),
            _ => None,
        };
        if let Some(rec) = self.recorder.as_mut() {
            rec.event(now, event, kept.as_deref());
        }
    }

    fn on_listening(&mut self, listener: ListenerId, local: SocketAddr, now: Instant) {
        let say = self.cx.listeners.get(listener).and_then(|l| {
            let s = &self.cx.services[l.service];
            (self.cx.worker == 0).then(|| (s.name.clone(), s.kind))
        });
        let report = self.cx.listeners.listening(
            listener,
            local,
            say.as_ref().map(|(n, k)| (&**n, *k)),
            &mut self.cx.actions,
        );
        self.data_port_report(report, now);
    }

    /// Runs every deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.timeout(now);
        }
        self.timeout(now);
    }

    fn timeout(&mut self, now: Instant) {
        self.cx.now = now;
        self.tick(now);
        let idle = self.cx.config.limits.udp_idle_timeout;
        let logged = self.cx.access_logged();
        self.udp
            .handle_timeout(idle, now, logged, &mut self.cx.actions);
        self.cx.listeners.resume_if_due(now, &mut self.cx.actions);
        if self.cx.grace_until.is_some_and(|t| t <= now) {
            let open: Vec<ConnId> = self.sessions.iter().map(|(_, s)| s.id).collect();
            for conn in open {
                self.run(conn, now, |s, _| {
                    s.outcome = crate::outcome::Outcome::Shutdown;
                    s.ended = true;
                });
            }
        }
        while let Some((at, idx, gen)) = self.cx.timers.pop_due(now) {
            let Some(s) = self.sessions.get(idx as usize) else {
                continue;
            };
            if s.id.gen != gen || s.timer_at != Some(at) {
                continue;
            }
            let conn = s.id;
            self.run(conn, now, |s, cx| s.on_timer(cx));
        }
    }

    /// The next time [`Proxy::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.cx.timers.next(),
            self.udp.next_deadline(),
            self.cx.listeners.paused_until,
            self.cx.grace_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing the core asks of the runtime. Drain them after every
    /// call into the core.
    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.cx.actions.pop_front()?;
        if let Some(rec) = self.recorder.as_mut() {
            rec.polled(&a);
        }
        Some(a)
    }

    /// Stops accepting and lets connections finish for `shutdown_grace`;
    /// those still open then are closed. Idempotent.
    pub fn shutdown(&mut self, now: Instant) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.shutdown(now);
        }
        self.cx.now = now;
        self.tick(now);
        if self.cx.grace_until.is_some() {
            return;
        }
        let grace = self.cx.config.limits.shutdown_grace;
        self.cx.grace_until = Some(now + grace);
        self.cx.listeners.close_all(&mut self.cx.actions);
        let logged = self.cx.access_logged();
        self.udp.close_all(now, logged, &mut self.cx.actions);
        // Worker 0 says it for all (the others are told right after).
        let open = self.cx.ledger.lock().sessions;
        if self.cx.worker == 0 {
            self.cx.log(Level::Info, || {
                format!(
                    "shutting down: {open} connections open, waiting up to {}s",
                    grace.as_secs_f64()
                )
            });
        }
        if grace.is_zero() {
            self.timeout(now);
        }
    }

    /// Shutting down and nothing left in flight: the runtime may exit.
    pub fn is_finished(&self) -> bool {
        self.cx.grace_until.is_some() && self.sessions.is_empty() && self.udp.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, Instant};

    use super::Proxy;
    use crate::event::{Action, Event, IoKind};
    use crate::id::{ConnId, ListenerId, Side};
    use crate::table::Accepted;

    const MAPPED: &str = "[[service]]\nname = \"m\"\nkind = \"mapped\"\n\
                          listen = [\"127.0.0.1:8000\"]\ndestination = \"127.0.0.1:9000\"\n";

    /// Every action queued, taken.
    pub(crate) fn drain(p: &mut Proxy) -> Vec<Action> {
        std::iter::from_fn(|| p.poll_action()).collect()
    }

    /// Reports the table's first listener open, as a runtime would, and
    /// takes what that queued.
    pub(crate) fn open_first(p: &mut Proxy, now: Instant) -> ListenerId {
        let listener = match p.poll_action() {
            Some(Action::Listen { listener, addr, .. }) => {
                p.handle(
                    Event::Listening {
                        listener,
                        local: addr,
                    },
                    now,
                );
                listener
            }
            other => panic!("expected a Listen, got {other:?}"),
        };
        drain(p);
        listener
    }

    fn resumed(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::ResumeAccept { .. }))
    }

    /// Out of file descriptors, accepting pauses; a connection that ends
    /// gives its descriptors back, and accepting goes on at once rather
    /// than at the end of the pause.
    #[test]
    fn a_connection_that_ends_resumes_accepting_paused_for_descriptors() {
        let config = crate::config::parse(MAPPED, "t.toml").expect("valid");
        let now = Instant::now();
        let mut p = Proxy::new(config, 1, now);
        let listener = open_first(&mut p, now);
        let peer = "127.0.0.1:40000".parse().expect("address");
        let conn: ConnId = p
            .accept(Accepted::new(listener, peer), now)
            .expect("accepted");
        drain(&mut p);
        let error = IoKind::TooManyFiles;
        p.handle(Event::AcceptFailed { listener, error }, now);
        let paused = drain(&mut p);
        assert!(
            paused
                .iter()
                .any(|a| matches!(a, Action::PauseAccept { .. })),
            "{paused:?}"
        );
        let later = now + Duration::from_millis(10);
        p.handle_timeout(later);
        assert!(!resumed(&drain(&mut p)), "resumed before the pause ended");
        let side = Side::Client;
        let error = IoKind::Reset;
        p.handle(Event::IoError { conn, side, error }, later);
        let ended = drain(&mut p);
        assert!(resumed(&ended), "{ended:?}");
        assert_eq!(p.poll_timeout(), None, "no pause left to time out");
    }
}
