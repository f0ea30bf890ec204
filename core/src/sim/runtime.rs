//! The runtime a harness plays around a [`Proxy`]: the one place that calls
//! into the table.
//!
//! It keeps what a real runtime would know — which connections are live,
//! what the core last asked of each socket, which listeners it opened — and
//! carries out every [`Action`] on that record ([`Runtime::poll`]) with the
//! checks any runtime could make: no action names a dead connection, no
//! interest is told twice, nothing is written after a shutdown, no upstream
//! socket is used before it connected, and so on. Events go in through
//! [`Runtime::handle`], reads through [`Runtime::recv`] and writes through
//! [`Runtime::send`]; what the table must look like after each call is in
//! [`super::check`]. A harness (the scheduler in [`super::sched`], the fuzz
//! decoder in [`super::fuzz`], a hand-written test) decides what happens
//! and when; this part only does it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::config::{Config, LogFormat, ServiceKind};
use crate::ledger::Ledger;
use crate::status::Snapshot;
use crate::table::{Accepted, PipeSize, Reload, Stats};
use crate::{AccessRecord, Action, ConnId, Event, Level, ListenerId, Proxy, Refused, Side};

/// Parses a configuration a harness wrote (a harness bug if it fails).
pub fn parse(text: &str) -> Config {
    crate::config::parse(text, "sim.toml")
        .unwrap_or_else(|e| panic!("the harness's configuration is invalid: {e}\n{text}"))
}

/// Where a connection's upstream socket is, as far as the core was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    None,
    /// Asked for with `Connect`, not yet answered.
    Connecting,
    Connected,
}

/// What the runtime holds for one live connection.
#[derive(Debug, Clone)]
pub struct Sockets {
    pub peer: SocketAddr,
    pub listener: ListenerId,
    /// Admitted only to be refused in its protocol's words (set by a
    /// harness that knows; such connections do not count as served).
    pub refusing: bool,
    /// The interest last told per side (client first): (read, write).
    pub interest: [(bool, bool); 2],
    /// `ShutdownWrite` carried out, per side.
    pub shut: [bool; 2],
    pub upstream: Upstream,
    /// Where the last `Connect` went.
    pub connect_to: Option<SocketAddr>,
    /// Connect attempts asked for and not answered nor abandoned yet
    /// (several while a name's addresses race).
    pub attempts: Vec<(u32, SocketAddr)>,
    /// The last `Connect` replaced a connected socket (an HTTP session
    /// whose origin closed connects anew without `CloseUpstream`).
    pub replaced: bool,
    /// Per side: what `send_buf` showed at the last check, less what was
    /// written since. A runtime may write those bytes with the table let
    /// go and report the count later (`portico-threaded` does), so what
    /// the core shows next must begin with them: nothing it says may go
    /// ahead of bytes already shown (it may give them all up).
    pub shown: std::cell::RefCell<[Vec<u8>; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenState {
    /// Asked for; `Listening` not told yet.
    Opening,
    Open,
    Failed,
    Closed,
}

/// A listener the core asked for, in the order asked.
#[derive(Debug, Clone)]
pub struct Listener {
    pub id: ListenerId,
    /// The address in the `Listen` action.
    pub asked: SocketAddr,
    /// The address told with `Listening`.
    pub local: Option<SocketAddr>,
    pub state: ListenState,
    pub paused: bool,
    pub udp: bool,
}

/// The live connections, by slab index (the core's ids are dense and
/// small).
#[derive(Debug, Default)]
pub(super) struct Table {
    slots: Vec<Option<(ConnId, Sockets)>>,
    len: usize,
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, id: ConnId) -> Option<&Sockets> {
        match self.slots.get(id.index()) {
            Some(Some((live, s))) if *live == id => Some(s),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Sockets> {
        match self.slots.get_mut(id.index()) {
            Some(Some((live, s))) if *live == id => Some(s),
            _ => None,
        }
    }

    pub(super) fn contains_key(&self, id: ConnId) -> bool {
        self.get(id).is_some()
    }

    fn insert(&mut self, id: ConnId, s: Sockets) {
        let i = id.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if let Some((live, _)) = &self.slots[i] {
            panic!("accept returned {id}, whose index {live} still holds");
        }
        self.slots[i] = Some((id, s));
        self.len += 1;
    }

    fn remove(&mut self, id: ConnId) -> Option<Sockets> {
        self.get(id)?;
        self.len -= 1;
        self.slots[id.index()].take().map(|(_, s)| s)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ConnId, &Sockets)> + Clone {
        self.slots.iter().flatten().map(|(id, s)| (*id, s))
    }
}

/// One line of the trace a failing run prints.
#[derive(Debug)]
pub enum Entry {
    Accept {
        listener: ListenerId,
        peer: SocketAddr,
        result: Result<ConnId, Refused>,
    },
    Event(Event),
    Timeout,
    Shutdown,
    Reload,
    Action(Action),
    /// A step of the harness: what it did, and to which connection or peer.
    Step(&'static str, usize, Option<Side>),
    /// The clock jumped to the next thing due.
    Jump,
}

pub struct Runtime {
    proxy: Proxy,
    base: Instant,
    now: Duration,
    pub(super) conns: Table,
    pub(super) listeners: Vec<Listener>,
    pub(super) shut_down: bool,
    /// One of several tables sharing a ledger (`Gather` may come).
    worker: bool,
    /// `Fatal` is a possible outcome (a harness that makes listeners fail).
    pub fatal_ok: bool,
    /// Keep every access record and log line (below).
    pub collect: bool,
    /// Every access record, log line and `Say`, in order.
    pub access: Vec<AccessRecord>,
    pub logs: Vec<(Level, String)>,
    pub says: Vec<String>,
    /// Per service name: the bytes up and down of its access records (kept
    /// whether or not `collect` is), to hold against its counters.
    logged_bytes: Vec<(String, u64, u64)>,
    /// Services a reload removed: their counters went with them, their
    /// lines may still come, so they are not held to each other.
    uncounted: Vec<String>,
    /// A confused runtime reported a splice the core did not allow: the
    /// counts of bytes moved are not held to the access lines.
    pub bytes_told_wrong: bool,
    trace: VecDeque<(Duration, Entry)>,
    keep: usize,
    /// Print every action as it comes (`PORTICO_FUZZ_TRACE`).
    pub live: bool,
    /// SOCKS UDP associations whose sockets were asked for and not
    /// closed yet.
    pub associations: Vec<ConnId>,
    /// SOCKS BIND listeners asked for and not taken or closed yet.
    pub bind_listeners: Vec<ConnId>,
}

impl Runtime {
    /// A table over `config`, at time zero of a clock starting at `base`.
    pub fn new(config: Config, seed: u64, base: Instant) -> Self {
        Self::around(Proxy::new(config, seed, base), base, false)
    }

    /// The table of worker `worker` of several sharing `ledger`.
    pub fn worker(config: Config, seed: u64, base: Instant, ledger: Ledger, worker: usize) -> Self {
        Self::around(
            Proxy::worker(config, seed, base, ledger, worker),
            base,
            true,
        )
    }

    fn around(proxy: Proxy, base: Instant, worker: bool) -> Self {
        Runtime {
            proxy,
            base,
            now: Duration::ZERO,
            conns: Table::default(),
            listeners: Vec::new(),
            shut_down: false,
            worker,
            fatal_ok: false,
            collect: true,
            access: Vec::new(),
            logs: Vec::new(),
            says: Vec::new(),
            logged_bytes: Vec::new(),
            uncounted: Vec::new(),
            bytes_told_wrong: false,
            trace: VecDeque::new(),
            keep: 0,
            live: false,
            associations: Vec::new(),
            bind_listeners: Vec::new(),
        }
    }

    /// A table over `text` with its listeners open (see [`Runtime::open`]).
    pub fn started(text: &str, seed: u64) -> Self {
        let mut rt = Runtime::new(parse(text), seed, Instant::now());
        rt.open();
        rt
    }

    // ------------------------------------------------------------ the clock

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn at(&self) -> Instant {
        self.base + self.now
    }

    pub fn set_now(&mut self, now: Duration) {
        self.now = now;
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    // ------------------------------------------------------------ the trace

    /// Keep the last `n` steps to print (none by default).
    pub fn keep_trace(&mut self, n: usize) {
        self.keep = n;
    }

    pub fn note(&mut self, entry: impl FnOnce() -> Entry) {
        if self.keep == 0 {
            return;
        }
        if self.trace.len() == self.keep {
            self.trace.pop_front();
        }
        self.trace.push_back((self.now, entry()));
    }

    pub fn print_trace(&self) {
        eprintln!("--- the last {} steps:", self.trace.len());
        for (at, e) in &self.trace {
            eprintln!("  {:>10.3}ms {e:?}", at.as_secs_f64() * 1e3);
        }
        for (level, message) in self.logs.iter().rev().take(40).rev() {
            eprintln!("  log {}: {message}", level.name());
        }
    }

    // ---------------------------------------------------- what it knows

    pub fn config(&self) -> &Config {
        self.proxy.config()
    }

    pub fn conn(&self, id: ConnId) -> Option<&Sockets> {
        self.conns.get(id)
    }

    /// The live connections, by id.
    pub fn conns(&self) -> impl Iterator<Item = &Sockets> + Clone {
        self.conns.iter().map(|(_, s)| s)
    }

    pub fn is_live(&self, id: ConnId) -> bool {
        self.conns.contains_key(id)
    }

    /// The interest last told for one socket ((false, false) once gone).
    pub fn interest(&self, id: ConnId, side: Side) -> (bool, bool) {
        self.conns
            .get(id)
            .map_or((false, false), |s| s.interest[side.index()])
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// The open listener at `addr`.
    pub fn listener_at(&self, addr: SocketAddr) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| l.state == ListenState::Open && l.local == Some(addr))
    }

    /// Marks `conn` as admitted only to be refused (or not).
    pub fn set_refusing(&mut self, conn: ConnId, refusing: bool) {
        if let Some(s) = self.conns.get_mut(conn) {
            s.refusing = refusing;
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    // ------------------------------------------ what the table says (reads)

    pub fn len(&self) -> usize {
        self.proxy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proxy.is_empty()
    }

    pub fn buffers_in_use(&self) -> usize {
        self.proxy.buffers_in_use()
    }

    pub fn timer_entries(&self) -> usize {
        self.proxy.timer_entries()
    }

    pub fn is_finished(&self) -> bool {
        self.proxy.is_finished()
    }

    pub fn starting(&self) -> usize {
        self.proxy.starting()
    }

    pub fn stats(&self) -> &Stats {
        self.proxy.stats()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.proxy.snapshot(self.at())
    }

    pub fn splice_pipe(&self) -> PipeSize {
        self.proxy.splice_pipe()
    }

    pub fn splice_pipe_for(&self, conn: ConnId, from: Side) -> PipeSize {
        self.proxy.splice_pipe_for(conn, from)
    }

    pub fn wants_local(&self, conn: ConnId) -> bool {
        self.proxy.wants_local(conn)
    }

    pub fn listener_service(&self, listener: ListenerId) -> Option<(&str, ServiceKind)> {
        self.proxy.listener_service(listener)
    }

    /// The table, for a failure message.
    pub fn dump(&self) -> String {
        format!("{:#?}", self.proxy)
    }

    /// The next deadline, as time since the start.
    pub fn deadline(&self) -> Option<Duration> {
        self.proxy
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base))
    }

    /// The bytes waiting to be written to `side`, in their two parts; checks
    /// that only a live socket that may still be written shows any.
    pub fn send_buf(&self, conn: ConnId, side: Side) -> Option<[&[u8]; 2]> {
        let parts = self.shown(conn, side)?;
        assert!(
            !(parts[0].is_empty() && parts[1].is_empty()),
            "send_buf showed nothing"
        );
        Some(parts)
    }

    /// [`Runtime::send_buf`] without the checks of the parts themselves.
    pub(super) fn shown(&self, conn: ConnId, side: Side) -> Option<[&[u8]; 2]> {
        let parts = self.proxy.send_buf(conn, side)?;
        let Some(s) = self.conns.get(conn) else {
            panic!("send_buf shows bytes for dead id {conn}");
        };
        assert!(
            !s.shut[side.index()],
            "send_buf shows bytes for {conn} {side:?} after ShutdownWrite"
        );
        if side == Side::Upstream {
            assert!(
                s.upstream == Upstream::Connected,
                "upstream bytes of {conn} shown before Connected"
            );
        }
        Some(parts)
    }

    /// Whether the runtime may splice from `from`; checks what that
    /// promises: a live connection, a read wanted, the other side still
    /// open for writing and nothing of the direction waiting in the core.
    pub fn splice_ok(&self, conn: ConnId, from: Side) -> bool {
        let ok = self.proxy.splice_ok(conn, from);
        if ok {
            let Some(s) = self.conns.get(conn) else {
                panic!("splice_ok for dead id {conn}");
            };
            assert!(
                s.interest[from.index()].0,
                "splice_ok on {conn} {from:?}, where the core wants no read"
            );
            assert!(
                !s.shut[from.other().index()],
                "splice_ok on {conn} {from:?} after ShutdownWrite of the other side"
            );
            assert!(
                self.proxy.send_buf(conn, from.other()).is_none(),
                "splice_ok on {conn} {from:?} while send_buf shows bytes"
            );
        }
        ok
    }

    // ------------------------------------------------ calls into the table

    /// The time of day the table is told (as a runtime does each wake-up).
    pub fn set_wall(&mut self, wall: crate::rules::Wall) {
        self.proxy.set_wall(wall);
    }

    pub fn set_log_level(&mut self, level: Level) {
        self.proxy.set_log_level(level);
    }

    /// A client socket accepted on `listener`, with the local address it
    /// connected to when the runtime tells it.
    pub fn accept(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Result<ConnId, Refused> {
        self.accept_to(listener, peer, local, None)
    }

    /// [`Runtime::accept`] of a connection on a transparent service's
    /// listener, whose original destination the runtime read as `original`.
    pub fn accept_to(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        original: Option<SocketAddr>,
    ) -> Result<ConnId, Refused> {
        let at = self.at();
        let accepted = match local {
            Some(local) => Accepted::new(listener, peer).local(local),
            None => Accepted::new(listener, peer),
        };
        let result = self.proxy.accept(accepted.original(original), at);
        self.note(|| Entry::Accept {
            listener,
            peer,
            result,
        });
        if let Ok(id) = result {
            assert!(
                self.listeners.iter().any(|l| l.id == listener),
                "accept succeeded on unknown listener {listener:?}"
            );
            assert!(!self.shut_down, "accept after shutdown");
            assert!(
                !self.conns.contains_key(id),
                "accept returned live id {id} again"
            );
            let sockets = Sockets {
                peer,
                listener,
                refusing: false,
                interest: [(false, false); 2],
                shut: [false; 2],
                upstream: Upstream::None,
                connect_to: None,
                attempts: Vec::new(),
                replaced: false,
                shown: Default::default(),
            };
            self.conns.insert(id, sockets);
        }
        result
    }

    /// Hands one event in, keeping the record of listeners and upstream
    /// sockets up to date.
    pub fn handle(&mut self, event: Event) {
        self.note(|| Entry::Event(event.clone()));
        match &event {
            Event::Written { conn, side, n } => {
                if let Some(s) = self.conns.get(*conn) {
                    let shown = &mut s.shown.borrow_mut()[side.index()];
                    shown.drain(..(*n).min(shown.len()));
                }
            }
            Event::Connected { conn, attempt, .. } => {
                assert_ne!(
                    *attempt,
                    crate::LATEST_ATTEMPT,
                    "a runtime names the attempt (LATEST_ATTEMPT is for format-1 traces)"
                );
                if let Some(s) = self.conns.get_mut(*conn) {
                    let before = s.attempts.len();
                    s.attempts.retain(|(n, _)| n != attempt);
                    if s.attempts.len() < before {
                        // This attempt's socket is the upstream socket now.
                        s.upstream = Upstream::Connected;
                    }
                }
            }
            Event::ConnectFailed { conn, attempt, .. } => {
                assert_ne!(
                    *attempt,
                    crate::LATEST_ATTEMPT,
                    "a runtime names the attempt (LATEST_ATTEMPT is for format-1 traces)"
                );
                if let Some(s) = self.conns.get_mut(*conn) {
                    s.attempts.retain(|(n, _)| n != attempt);
                    if s.upstream == Upstream::Connecting && s.attempts.is_empty() {
                        s.upstream = Upstream::None;
                    }
                }
            }
            Event::Listening { listener, local } => {
                if let Some(l) = self.listeners.iter_mut().find(|l| l.id == *listener) {
                    if l.state != ListenState::Closed {
                        l.state = ListenState::Open;
                        l.local = Some(*local);
                    }
                }
            }
            Event::ListenFailed { listener, .. } => {
                if let Some(l) = self.listeners.iter_mut().find(|l| l.id == *listener) {
                    if l.state != ListenState::Closed {
                        l.state = ListenState::Failed;
                    }
                }
            }
            _ => {}
        }
        let at = self.at();
        self.proxy.handle(event, at);
    }

    /// Hands in an event naming `conn`, which is dead (never handed out,
    /// or closed): nothing may change and no action may come.
    pub fn handle_stale(&mut self, conn: ConnId, side: Side, event: Event) {
        assert!(
            self.proxy.recv_buf(conn, side).is_none(),
            "recv_buf lends a buffer for dead id {conn}"
        );
        assert!(
            self.proxy.send_buf(conn, side).is_none(),
            "send_buf shows bytes for dead id {conn}"
        );
        let state = |p: &Proxy| {
            (
                p.len(),
                p.buffers_in_use(),
                p.timer_entries(),
                p.poll_timeout(),
            )
        };
        let before = state(&self.proxy);
        self.handle(event.clone());
        assert_eq!(
            before,
            state(&self.proxy),
            "an event for dead id {conn} changed the table: {event:?}"
        );
        assert!(
            self.proxy.poll_action().is_none(),
            "an event for dead id {conn} produced an action: {event:?}"
        );
    }

    /// The space `side`'s next bytes are read into, as a runtime asks for
    /// it (and may leave unused).
    pub fn lend(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        self.proxy.recv_buf(conn, side)
    }

    /// A read on `side`: `fill` writes what arrived into the space the
    /// core lends and says how many bytes to report; `None` (and no event)
    /// when the core lends nothing.
    pub fn recv(
        &mut self,
        conn: ConnId,
        side: Side,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Option<usize> {
        let len = self.proxy.recv_buf(conn, side)?.len();
        assert!(len > 0, "recv_buf lent an empty slice");
        assert!(
            self.conns.contains_key(conn),
            "recv_buf lent a buffer for dead id {conn}"
        );
        let buf = self.proxy.recv_buf(conn, side);
        let buf = buf.expect("recv_buf lends the same space when asked again");
        assert_eq!(buf.len(), len, "recv_buf changed between two calls");
        let n = fill(buf);
        self.handle(Event::Read { conn, side, n });
        Some(n)
    }

    /// A write to `side`: `take` writes out what it can of the two parts
    /// and says how many bytes went; `None` (and no event) when the core
    /// has nothing to write there.
    pub fn send(
        &mut self,
        conn: ConnId,
        side: Side,
        take: impl FnOnce([&[u8]; 2]) -> usize,
    ) -> Option<usize> {
        let n = take(self.send_buf(conn, side)?);
        self.handle(Event::Written { conn, side, n });
        Some(n)
    }

    pub fn handle_timeout(&mut self) {
        self.note(|| Entry::Timeout);
        let at = self.at();
        self.proxy.handle_timeout(at);
    }

    pub fn shutdown(&mut self) {
        self.note(|| Entry::Shutdown);
        self.shut_down = true;
        let at = self.at();
        self.proxy.shutdown(at);
    }

    pub fn reconfigure(&mut self, config: Config, recheck: bool) {
        self.note(|| Entry::Reload);
        let gone: Vec<String> = (self.config().services.iter())
            .filter(|old| !config.services.iter().any(|s| s.name == old.name))
            .map(|old| old.name.to_string())
            .collect();
        self.uncounted.extend(gone);
        let at = self.at();
        let reload = Reload {
            recheck,
            ..Reload::default()
        };
        self.proxy.reconfigure(config, reload, at);
    }

    /// With the access log on, each service's byte counters (finished
    /// connections' and live ones') are the sums of its access lines:
    /// what `portico_bytes_total` says is what the log says.
    pub fn assert_bytes_logged(&self) {
        if self.config().log.access == crate::config::AccessTarget::Off || self.bytes_told_wrong {
            return;
        }
        for row in self.snapshot().services {
            if self.uncounted.contains(&row.name) {
                continue;
            }
            let (up, down) = self
                .logged_bytes
                .iter()
                .find(|(n, ..)| *n == row.name)
                .map_or((0, 0), |&(_, u, d)| (u, d));
            assert_eq!(
                (
                    row.counters.up + row.live_up,
                    row.counters.down + row.live_down
                ),
                (up, down),
                "service {}: bytes counted (up, down) differ from its access lines' sums",
                row.name
            );
        }
    }

    pub fn handle_gathered(&mut self, conn: ConnId, parts: Vec<Snapshot>) {
        let at = self.at();
        self.proxy.handle_gathered(conn, parts, at);
    }

    /// The next action, carried out on the runtime's record after the
    /// checks a runtime can make; the harness does the rest.
    pub fn poll(&mut self) -> Option<Action> {
        let action = self.proxy.poll_action()?;
        if self.live {
            eprintln!("    -> {action:?}");
        }
        self.note(|| Entry::Action(action.clone()));
        self.carry_out(&action);
        Some(action)
    }

    fn live_conn(&mut self, conn: ConnId, what: &str) -> &mut Sockets {
        match self.conns.get_mut(conn) {
            Some(s) => s,
            None => panic!("{what} for {conn}, which is not live"),
        }
    }

    fn listener_mut(&mut self, id: ListenerId) -> &mut Listener {
        match self.listeners.iter_mut().find(|l| l.id == id) {
            Some(l) => l,
            None => panic!("an action names unknown listener {id:?}"),
        }
    }

    fn carry_out(&mut self, action: &Action) {
        match *action {
            Action::Listen { listener, addr, .. } | Action::ListenUdp { listener, addr } => {
                assert!(
                    self.listeners.iter().all(|l| l.id != listener),
                    "Listen twice for {listener:?}"
                );
                self.listeners.push(Listener {
                    id: listener,
                    asked: addr,
                    local: None,
                    state: ListenState::Opening,
                    paused: false,
                    udp: matches!(action, Action::ListenUdp { .. }),
                });
            }
            Action::PauseAccept { listener } => self.listener_mut(listener).paused = true,
            Action::ResumeAccept { listener } => self.listener_mut(listener).paused = false,
            Action::Unlisten { listener } => {
                self.listener_mut(listener).state = ListenState::Closed
            }
            Action::CheckPassword { conn, .. } | Action::AskHelper { conn, .. } => {
                let s = self.live_conn(conn, "CheckPassword");
                assert!(
                    !s.refusing,
                    "CheckPassword for a connection admitted only to refuse"
                );
            }
            Action::Resolve { conn, .. } => {
                let s = self.live_conn(conn, "Resolve");
                assert!(
                    !s.refusing,
                    "Resolve for a connection admitted only to refuse"
                );
            }
            Action::Connect {
                conn,
                attempt,
                addr,
                bind,
            } => {
                let c = self.proxy.config();
                let any_outgoing = c.network.outgoing.is_some()
                    || c.network.outgoing6.is_some()
                    || c.services.iter().any(|s| s.outgoing.is_some())
                    || c.rules.iter().any(|r| r.outgoing.is_some());
                if !any_outgoing {
                    assert_eq!(
                        bind, None,
                        "Connect binds though no outgoing address is set"
                    );
                }
                if let Some(ip) = bind {
                    assert_eq!(
                        ip.is_ipv6(),
                        addr.is_ipv6(),
                        "Connect to {addr} binds to {ip}, of the other family"
                    );
                }
                assert_ne!(
                    attempt,
                    crate::LATEST_ATTEMPT,
                    "Connect with LATEST_ATTEMPT"
                );
                let s = self.live_conn(conn, "Connect");
                assert!(
                    !s.refusing,
                    "Connect for a connection admitted only to refuse"
                );
                assert!(
                    s.attempts.iter().all(|(n, _)| *n != attempt),
                    "Connect attempt {attempt} of {conn} twice"
                );
                if s.attempts.is_empty() {
                    // A new socket; it replaces the one there was.
                    s.replaced = s.upstream == Upstream::Connected;
                    s.upstream = Upstream::Connecting;
                    s.interest[1] = (false, false);
                    s.shut[1] = false;
                    s.shown.borrow_mut()[1].clear();
                } else {
                    assert_eq!(
                        s.upstream,
                        Upstream::Connecting,
                        "a racing Connect on {conn} beside a connected upstream"
                    );
                }
                s.attempts.push((attempt, addr));
                s.connect_to = Some(addr);
            }
            Action::Abandon { conn, attempt } => {
                let s = self.live_conn(conn, "Abandon");
                assert!(
                    s.attempts.iter().any(|(n, _)| *n == attempt),
                    "Abandon of attempt {attempt} of {conn}, which is not in flight"
                );
                s.attempts.retain(|(n, _)| *n != attempt);
                if s.upstream == Upstream::Connecting && s.attempts.is_empty() {
                    s.upstream = Upstream::None;
                }
            }
            Action::Interest {
                conn,
                side,
                read,
                write,
            } => {
                let s = self.live_conn(conn, "Interest");
                let told = &mut s.interest[side.index()];
                assert_ne!(
                    *told,
                    (read, write),
                    "Interest for {conn} {side:?} repeated without a change"
                );
                *told = (read, write);
                assert!(
                    !(write && s.shut[side.index()]),
                    "write interest on {conn} {side:?} after ShutdownWrite"
                );
                if side == Side::Upstream && (read || write) {
                    assert!(
                        s.upstream == Upstream::Connected,
                        "interest in the upstream socket of {conn} before it connected"
                    );
                }
            }
            Action::ShutdownWrite { conn, side } => {
                let shown = self.proxy.send_buf(conn, side).is_some();
                let s = self.live_conn(conn, "ShutdownWrite");
                let shut = &mut s.shut[side.index()];
                assert!(!*shut, "ShutdownWrite twice on {conn} {side:?}");
                *shut = true;
                assert!(
                    !shown,
                    "ShutdownWrite on {conn} {side:?} with bytes still to write"
                );
                if side == Side::Upstream {
                    assert!(
                        s.upstream == Upstream::Connected,
                        "ShutdownWrite on the upstream of {conn}, which is not connected"
                    );
                }
            }
            Action::CloseUpstream { conn } => {
                let s = self.live_conn(conn, "CloseUpstream");
                // A new upstream may follow: its socket starts afresh.
                s.upstream = Upstream::None;
                s.attempts.clear();
                s.interest[1] = (false, false);
                s.shut[1] = false;
                s.shown.borrow_mut()[1].clear();
            }
            Action::Close { conn } => {
                assert!(
                    !self.associations.contains(&conn),
                    "Close for {conn} with its UDP association's sockets still open"
                );
                assert!(
                    !self.bind_listeners.contains(&conn),
                    "Close for {conn} with its BIND listener still open"
                );
                assert!(
                    self.conns.remove(conn).is_some(),
                    "Close for {conn}, which is not live"
                );
            }
            Action::Access(ref rec) => {
                let _ = rec.format(UNIX_EPOCH, LogFormat::Text);
                let _ = rec.format(UNIX_EPOCH, LogFormat::Json);
                match self
                    .logged_bytes
                    .iter_mut()
                    .find(|(n, ..)| **n == *rec.service)
                {
                    Some((_, up, down)) => {
                        *up += rec.up;
                        *down += rec.down;
                    }
                    None => self
                        .logged_bytes
                        .push((rec.service.to_string(), rec.up, rec.down)),
                }
                if self.collect {
                    self.access.push((**rec).clone());
                }
            }
            Action::Log { level, ref message } => {
                assert!(!message.is_empty(), "empty log line");
                if self.collect {
                    self.logs.push((level, message.clone()));
                }
            }
            Action::Say(ref line) => {
                assert!(!line.is_empty(), "empty Say line");
                self.says.push(line.clone());
            }
            Action::Fatal { ref message } => {
                assert!(!message.is_empty(), "empty Fatal message");
                assert!(self.fatal_ok, "Fatal: {message}");
            }
            Action::Gather { conn } => {
                assert!(self.worker, "Gather for {conn} with one table");
                self.live_conn(conn, "Gather");
            }
            Action::UdpAssociate { conn, .. } => {
                let s = self.live_conn(conn, "UdpAssociate");
                assert!(
                    !s.refusing,
                    "UdpAssociate for a connection admitted only to refuse"
                );
                assert!(
                    !self.associations.contains(&conn),
                    "UdpAssociate twice for {conn}"
                );
                self.associations.push(conn);
            }
            Action::UdpDisassociate { conn } => {
                let Some(i) = self.associations.iter().position(|c| *c == conn) else {
                    panic!("UdpDisassociate for {conn}, which has no association");
                };
                self.associations.swap_remove(i);
            }
            Action::BindListen { conn, .. } => {
                let s = self.live_conn(conn, "BindListen");
                assert!(
                    !s.refusing,
                    "BindListen for a connection admitted only to refuse"
                );
                assert!(
                    !self.bind_listeners.contains(&conn),
                    "BindListen twice for {conn}"
                );
                self.bind_listeners.push(conn);
            }
            Action::BindTake { conn, attempt } => {
                let Some(i) = self.bind_listeners.iter().position(|c| *c == conn) else {
                    panic!("BindTake for {conn}, which has no BIND listener");
                };
                self.bind_listeners.swap_remove(i);
                // The accepted socket is the upstream, connecting.
                let s = self.live_conn(conn, "BindTake");
                s.upstream = Upstream::Connecting;
                s.interest[1] = (false, false);
                s.shut[1] = false;
                // Answered Connected (or ConnectFailed) like a connect.
                let peer = s
                    .connect_to
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                s.attempts.push((attempt, peer));
            }
            Action::BindReject { conn } => {
                self.live_conn(conn, "BindReject");
            }
            Action::BindClose { conn } => {
                let Some(i) = self.bind_listeners.iter().position(|c| *c == conn) else {
                    panic!("BindClose for {conn}, which has no BIND listener");
                };
                self.bind_listeners.swap_remove(i);
            }
            Action::UdpOpen { .. } | Action::UdpClose { .. } => {
                panic!("the harness plays no UDP mapping: {action:?}")
            }
        }
    }

    // -------------------------------------------- driving a table by hand

    /// Carries out every action queued, checks the table, and returns the
    /// actions.
    pub fn drain(&mut self) -> Vec<Action> {
        let actions = std::iter::from_fn(|| self.poll()).collect();
        self.check();
        actions
    }

    /// Drains, then opens every listener asked for on the address asked
    /// (`Listening`), and drains again; returns the listeners opened.
    pub fn open(&mut self) -> Vec<ListenerId> {
        self.drain();
        let asked: Vec<(ListenerId, SocketAddr)> = self
            .listeners
            .iter()
            .filter(|l| l.state == ListenState::Opening)
            .map(|l| (l.id, l.asked))
            .collect();
        for &(listener, local) in &asked {
            self.handle(Event::Listening { listener, local });
        }
        self.drain();
        asked.into_iter().map(|(l, _)| l).collect()
    }

    /// A datagram of `bytes` from `from` arrived at association `conn`'s
    /// outward socket (`outward`) or the one facing its client.
    pub fn association_datagram(
        &mut self,
        conn: ConnId,
        outward: bool,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let at = self.at();
        let buf = self.proxy.datagram_buf();
        buf[..bytes.len()].copy_from_slice(bytes);
        self.proxy
            .handle_association_datagram(conn, outward, from, bytes.len(), at);
    }

    /// Every datagram the core has queued to send.
    pub fn datagrams(&mut self) -> Vec<(crate::udp::Via, Vec<u8>)> {
        std::iter::from_fn(|| self.proxy.poll_datagram()).collect()
    }

    /// `side` sent `bytes`, read into the core's buffer at once.
    pub fn feed(&mut self, conn: ConnId, side: Side, bytes: &[u8]) {
        let read = self.recv(conn, side, |buf| {
            buf[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        });
        assert!(read.is_some(), "no read is wanted on {conn} {side:?}");
    }

    /// Writes out all the core has for `side`, a part at a time; returns
    /// the bytes (the actions wait for the next drain).
    pub fn flush(&mut self, conn: ConnId, side: Side) -> Vec<u8> {
        let mut out = Vec::new();
        let first = |parts: [&[u8]; 2], out: &mut Vec<u8>| {
            let part = if parts[0].is_empty() {
                parts[1]
            } else {
                parts[0]
            };
            out.extend_from_slice(part);
            part.len()
        };
        while self.send(conn, side, |p| first(p, &mut out)).is_some() {}
        out
    }
}
