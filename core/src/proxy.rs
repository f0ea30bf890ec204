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
//!     for each writable socket:    write from proxy.send_bufs(conn, side), then
//!                                  proxy.handle(Event::Written { .. }, now)
//!     (or, where proxy.splice_ok(conn, side): splice side → pipe → other side
//!      without the core's buffers, then proxy.handle(Event::Spliced { .. }, now),
//!      and Eof only once the pipe is empty)
//!     proxy.handle_timeout(now);
//! }
//! ```
//!
//! Several tables (one per worker) may share one [`Ledger`]: the limits
//! count the sessions of all of them.
//!
//! Invariants: the tables sharing a ledger never hold more than
//! `limits.max_connections` sessions that are served (plus at most
//! [`REFUSING_MAX`] that only refuse), nor more than
//! `limits.max_per_client` from one address; every
//! live session has exactly one current entry in the timer heap; a session
//! holds a buffer only while bytes are in it; an event naming a dead or
//! reused id changes nothing.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::auth::Users;
use crate::buffer::Pool;
use crate::config::{AccessTarget, Config, Host, Protocol, ServiceKind};
use crate::event::{Action, Event, IoKind, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::ledger::Ledger;
use crate::log::AccessRecord;
use crate::proto::http::Todo as HttpTodo;
use crate::proto::{After, ControlCtx, ControlTodo, Ctx, Failure, Step, Target, UpStep};
use crate::rate::{Bucket, Key as RateKey};
use crate::rules::{self, Query, Verdict, Wall};
use crate::session::{side_index, Session, State};
use crate::status::{self, ConnRow, ServiceCounters, ServiceRow, Snapshot};
use crate::timer::Timers;
use crate::udp::{UdpId, UdpTable, UdpTodo, Via};

/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);
/// How often a lasting shortage of file descriptors is logged again.
const FD_WARN_EVERY: Duration = Duration::from_secs(60);
/// Free buffers kept warm in the pool, at most.
const POOL_KEEP: usize = 1024;
/// Connections over a limit (or denied) that may exist at once only to be
/// told so in their protocol's words; past this they are just closed.
pub const REFUSING_MAX: usize = 64;
/// The smallest pipe a runtime splices a direction through (see
/// [`PipeSize`]: its size gives page slots; what it holds is bounded by
/// `limits.buffer`).
pub const SPLICE_PIPE_MIN: usize = 256 * 1024;
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

/// A read this big (or half the buffer, if that is less) says a direction
/// carries a bulk transfer, which splicing speeds up; small messages (a
/// request, a short reply) cost a syscall or two more through a pipe than
/// through the buffer, so they are not spliced.
pub const SPLICE_BULK: usize = 16 * 1024;
/// The most bytes one [`Event::Spliced`] counts (a runtime reports each
/// splice(2) on its own, far less than this; the bound keeps the counters
/// of a confused runtime from overflowing).
pub const SPLICED_MAX: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerState {
    Opening,
    Open,
    Closed,
}

#[derive(Debug)]
struct Listener {
    id: ListenerId,
    service: usize,
    addr: SocketAddr,
    state: ListenerState,
    /// An FTP data port: open for one connection of one session.
    data: Option<DataPort>,
    /// A UDP mapped port's socket.
    udp: bool,
}

/// A data port an FTP control connection opened.
#[derive(Debug, Clone)]
struct DataPort {
    owner: ConnId,
    token: u32,
    /// Only this peer may connect (the session's client or server).
    accept_from: IpAddr,
    /// Where the data connection goes.
    connect_to: SocketAddr,
}

#[derive(Debug)]
struct ServiceInfo {
    name: Arc<str>,
    kind: ServiceKind,
    /// For a mapped port: where every connection goes.
    destination: Option<Target>,
    target: String,
    listen: Vec<String>,
    counters: ServiceCounters,
    /// Served connections open now.
    active: u64,
    conf: Arc<crate::config::Service>,
    /// Gone from the configuration; kept while connections still use it.
    retired: bool,
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
    listeners: Slab<Listener>,
    /// Generation per listener slot.
    lgens: Vec<u32>,
    sessions: Slab<Session>,
    gens: Vec<u32>,
    /// The counts the process-wide limits are checked against, shared
    /// with the other workers' tables.
    ledger: Ledger,
    /// This table's worker: the first (0) alone opens UDP ports and says
    /// what is listening.
    worker: usize,
    timers: Timers,
    actions: VecDeque<Action>,
    pool: Pool,
    log_level: Level,
    /// Listeners not yet reported open at startup; a failure among them is fatal.
    starting: usize,
    /// Accepting is paused (out of file descriptors) until then.
    accept_paused_until: Option<Instant>,
    /// When the shortage of descriptors was last logged, and how many
    /// pauses there have been since.
    fd_warned: Option<Instant>,
    fd_pauses: u64,
    /// Shutting down: connections still open then are closed.
    grace_until: Option<Instant>,
    stats: Stats,
    #[allow(dead_code)] // seeds the randomness later protocols need
    seed: u64,
    users: Users,
    udp: UdpTable,
    /// The time of the call being handled (recv_buf has no `now`).
    now: Instant,
    /// Where the runtime puts a datagram it received.
    datagram: Vec<u8>,
    /// Bytes of finished connections per authenticated user: up, down.
    user_bytes: std::collections::BTreeMap<String, (u64, u64)>,
    wall: Wall,
    /// Status requests waiting for the other workers' snapshots.
    gathering: Vec<(ConnId, status::Page, bool)>,
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

fn service_info(s: &crate::config::Service) -> ServiceInfo {
    let destination = s.destination.as_ref().map(|d| match &d.host {
        Host::Ip(ip) => Target::Addr(SocketAddr::new(*ip, d.port)),
        Host::Name(n) => Target::Name(n.clone(), d.port),
    });
    ServiceInfo {
        name: Arc::from(s.name.as_str()),
        kind: s.kind,
        destination,
        listen: s.listen.iter().map(|a| a.to_string()).collect(),
        counters: ServiceCounters::default(),
        active: 0,
        target: s
            .destination
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default(),
        conf: Arc::new(s.clone()),
        retired: false,
    }
}

/// Whether worker `worker` listens for service `s`: every worker on a TCP
/// port; a UDP port's mappings are one table's, the first worker's.
fn listens(worker: usize, s: &crate::config::Service) -> bool {
    worker == 0 || s.protocol != Protocol::Udp
}

/// The configuration's warnings, said once: by worker 0.
fn warnings(worker: usize, config: &Config) -> Vec<String> {
    if worker == 0 {
        crate::config::warnings(config)
    } else {
        Vec::new()
    }
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
        Proxy::worker(config, seed, now, Ledger::default(), 0)
    }

    /// The table of worker `worker` among those sharing `ledger` (see
    /// [`crate::ledger`]). Every worker listens on the same TCP addresses;
    /// only worker 0 opens UDP ports, warns about the configuration and
    /// prints the `listening:` lines.
    pub fn worker(config: Config, seed: u64, now: Instant, ledger: Ledger, worker: usize) -> Self {
        let services: Vec<ServiceInfo> = config.services.iter().map(service_info).collect();
        let mut listeners = Slab::new();
        let mut actions = VecDeque::new();
        for (i, s) in config.services.iter().enumerate() {
            if !listens(worker, s) {
                continue;
            }
            for addr in &s.listen {
                let id = ListenerId::new(listeners.vacant_key(), 0);
                listeners.insert(Listener {
                    id,
                    service: i,
                    addr: *addr,
                    state: ListenerState::Opening,
                    data: None,
                    udp: s.protocol == Protocol::Udp,
                });
                actions.push_back(if s.protocol == Protocol::Udp {
                    Action::ListenUdp {
                        listener: id,
                        addr: *addr,
                    }
                } else {
                    Action::Listen {
                        listener: id,
                        addr: *addr,
                    }
                });
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
            starting: listeners.len(),
            lgens: vec![0; listeners.len()],
            services,
            listeners,
            sessions: Slab::new(),
            gens: Vec::new(),
            ledger,
            worker,
            timers: Timers::default(),
            actions,
            pool,
            log_level: Level::Info,
            accept_paused_until: None,
            fd_warned: None,
            fd_pauses: 0,
            grace_until: None,
            stats: Stats::default(),
            seed,
            users: Users::new(&config.users),
            user_bytes: Default::default(),
            udp: UdpTable::default(),
            now,
            datagram: Vec::new(),
            wall: Wall::default(),
            gathering: Vec::new(),
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
        let l = self.listener(listener)?;
        let s = &self.services[l.service];
        Some((&s.name, s.kind))
    }

    fn listener(&self, id: ListenerId) -> Option<&Listener> {
        self.listeners.get(id.index()).filter(|l| l.id == id)
    }

    fn listener_mut(&mut self, id: ListenerId) -> Option<&mut Listener> {
        self.listeners.get_mut(id.index()).filter(|l| l.id == id)
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

    /// Counts as activity on `conn` (an FTP control connection whose data
    /// connection is busy).
    fn touch(&mut self, conn: ConnId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(conn.idx as usize) {
            if s.gen == conn.gen {
                s.last_active = now;
            }
        }
    }

    fn id_of_checked(&self, idx: usize) -> Option<ConnId> {
        self.sessions.get(idx).map(|s| ConnId {
            idx: idx as u32,
            gen: s.gen,
        })
    }

    fn live(&self, conn: ConnId) -> bool {
        self.sessions
            .get(conn.idx as usize)
            .is_some_and(|s| s.gen == conn.gen)
    }

    /// A client connected to `listener` from `peer`. On `Err` the runtime
    /// closes the socket (the refusal is already logged).
    ///
    /// A connection over a limit, or denied by the rules on its address, is
    /// still admitted when its protocol has words for the refusal (SOCKS,
    /// HTTP, the gateways): it then lives only to say so, and at most
    /// [`REFUSING_MAX`] such connections exist at once.
    pub fn accept(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let local = match self.listener(listener) {
            Some(l) => l.addr,
            None => return Err(Refused::UnknownListener),
        };
        self.accept_on(listener, peer, local, now)
    }

    /// [`Proxy::accept`], with the local address the client connected to
    /// (which FTP's passive mode announces; it differs from the listen
    /// address when that is a wildcard).
    pub fn accept_on(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        self.now = now;
        let (service, data) = match self.listener(listener) {
            Some(l) if l.state == ListenerState::Open => (l.service, l.data.clone()),
            // Accepted by the runtime before it closed the listener.
            Some(l) if self.grace_until.is_some() => {
                let service = l.service;
                return Err(self.refuse_plain(service, peer, Refused::ShuttingDown));
            }
            _ => return Err(Refused::UnknownListener),
        };
        if let Some(port) = data {
            return self.accept_data(listener, port, service, peer, now);
        }
        let kind = self.services[service].kind;
        let conf = &self.services[service].conf;
        let trusted = conf.proxy_protocol
            && conf
                .proxy_protocol_from
                .iter()
                .any(|n| n.contains(&peer.ip()));
        let hs = crate::proto::for_service(&self.services[service].conf);
        let is_http = kind == ServiceKind::Http;
        let is_status = kind == ServiceKind::Status;
        let refusing = if trusted {
            // A balancer in front: limits and rules wait for the real client
            // its PROXY header names. Only the table's own bound applies now.
            if self.grace_until.is_some() {
                return Err(self.refuse_plain(service, peer, Refused::ShuttingDown));
            }
            let mut counts = self.ledger.lock();
            if counts.served() >= self.config.limits.max_connections as usize {
                drop(counts);
                return Err(self.refuse_plain(service, peer, Refused::TooMany));
            }
            counts.sessions += 1;
            None
        } else {
            match self.admit(service, peer.ip(), hs.is_some() || is_http, false) {
                Ok(r) => r,
                Err(why) => return Err(self.refuse_plain(service, peer, why)),
            }
        };
        let svc = &self.services[service];
        let method = hs.as_ref().map_or(method_of(kind), |h| h.method());
        let state = if trusted {
            State::ProxyHeader
        } else if hs.is_some() || is_http || is_status {
            State::Handshake
        } else {
            State::Connecting
        };
        let mut session = Session::new(service, listener, peer, local, state, now);
        session.target = svc.target.clone();
        session.method = method;
        session.hs = hs;
        session.refusing = refusing;
        if is_http {
            let mut http = Box::<crate::proto::http::Http>::default();
            http.logged = self.access_logged();
            session.http = Some(http);
            session.method = "HTTP";
            // Only bytes the HTTP machine clears are forwarded.
            session.up.fwd = Some(0);
            session.down.fwd = Some(0);
        }
        let conn = self.insert(session);
        let idx = conn.index();
        if trusted {
            self.sync(idx, now);
            return Ok(conn);
        }
        self.begin(idx, now);
        Ok(conn)
    }

    /// Checks a new client against the limits and the rules on its
    /// address, and counts it. `Ok(Some(why))`: admitted only to be told
    /// `why` in its protocol's words (`words`: the protocol has them).
    ///
    /// `in_table`: the session is in the table (and counted) already, as
    /// one behind a PROXY header is; otherwise it is counted here, under
    /// the same lock as the check, so two workers cannot both take the
    /// last place.
    fn admit(
        &mut self,
        service: usize,
        client: IpAddr,
        words: bool,
        in_table: bool,
    ) -> Result<Option<Failure>, Refused> {
        let limits = &self.config.limits;
        let mut counts = self.ledger.lock();
        let others = counts.served().saturating_sub(usize::from(in_table));
        let over = if self.grace_until.is_some() {
            Some(Refused::ShuttingDown)
        } else if others >= limits.max_connections as usize {
            Some(Refused::TooMany)
        } else if counts.client(client) >= limits.max_per_client {
            Some(Refused::PerClient)
        } else {
            None
        };
        let denied = over.is_none()
            && matches!(
                rules::check_early(
                    &self.config.rules,
                    &self.services[service].name,
                    client,
                    self.wall
                ),
                Verdict::Deny { .. }
            );
        let refusing = match over {
            Some(Refused::TooMany | Refused::PerClient) => Some(Failure::Limit),
            _ if denied => Some(Failure::Denied),
            _ => None,
        };
        let say_it = words && counts.refusing < REFUSING_MAX && refusing.is_some();
        if (over.is_some() || denied) && !say_it {
            return Err(over.unwrap_or(Refused::Denied));
        }
        match refusing {
            Some(_) => counts.refusing += 1,
            None => counts.add_client(client),
        }
        if !in_table {
            counts.sessions += 1;
        }
        drop(counts);
        if let Some(f) = refusing {
            self.stats.refused += 1;
            *self.services[service]
                .counters
                .refused
                .entry(f.status())
                .or_insert(0) += 1;
        } else {
            self.count_served(service);
        }
        Ok(refusing)
    }

    /// Counts a connection of `service` that is served (not only refused).
    fn count_served(&mut self, service: usize) {
        self.stats.accepted += 1;
        let svc = &mut self.services[service];
        svc.counters.connections += 1;
        svc.active += 1;
    }

    /// Logs and counts a connection turned away at accept.
    fn refuse_plain(&mut self, service: usize, peer: SocketAddr, why: Refused) -> Refused {
        let status = match why {
            Refused::ShuttingDown => "shutdown",
            Refused::Denied => "denied",
            _ => "limit",
        };
        self.stats.refused += 1;
        *self.services[service]
            .counters
            .refused
            .entry(status)
            .or_insert(0) += 1;
        if self.access_logged() {
            let svc = &self.services[service];
            let rec = AccessRecord {
                service: svc.name.clone(),
                client: peer,
                user: None,
                method: method_of(svc.kind).into(),
                target: svc.target.clone(),
                destination: None,
                status: status.into(),
                up: 0,
                down: 0,
                duration: Duration::ZERO,
            };
            self.actions.push_back(Action::Access(Box::new(rec)));
        }
        self.log(Level::Debug, || format!("refused {peer}: {why}"));
        why
    }

    /// Reads the PROXY header a trusted balancer sends first; the client
    /// it names is then admitted as if it had connected itself.
    fn proxy_header(&mut self, idx: usize, now: Instant) {
        let s = &mut self.sessions[idx];
        if s.state != State::ProxyHeader {
            return;
        }
        let data = s.up.buf.as_ref().map_or(&[][..], |b| b.data());
        match crate::proxy_protocol::parse(data) {
            crate::proxy_protocol::Parse::More => {
                if s.up.eof {
                    s.status = "aborted";
                    self.finish_unadmitted(idx, now);
                }
            }
            crate::proxy_protocol::Parse::Invalid(why) => {
                let client = s.client;
                self.log(Level::Debug, || {
                    format!("{client}: bad PROXY header: {why}")
                });
                self.sessions[idx].status = "bad-proxy-header";
                self.finish_unadmitted(idx, now);
            }
            crate::proxy_protocol::Parse::Done { header, len } => {
                if let Some(b) = s.up.buf.as_mut() {
                    b.consume(len);
                }
                s.up.release_if_empty(&mut self.pool);
                if let crate::proxy_protocol::Header::Proxied { source, .. } = header {
                    s.client = source;
                }
                let (service, client) = (s.service, s.client);
                let words = s.hs.is_some() || s.http.is_some();
                let admitted = self.admit(service, client.ip(), words, true);
                match admitted {
                    Ok(refusing) => {
                        let s = &mut self.sessions[idx];
                        s.refusing = refusing;
                        s.state = if s.hs.is_some()
                            || s.http.is_some()
                            || self.services[service].kind == ServiceKind::Status
                        {
                            State::Handshake
                        } else {
                            State::Connecting
                        };
                        s.state_since = now;
                        self.begin(idx, now);
                        // Bytes behind the header may already be a request.
                        if self.live(self.id_of(idx)) {
                            self.advance(idx, now);
                        }
                    }
                    Err(why) => {
                        self.refuse_plain(service, client, why);
                        self.finish_unadmitted(idx, now);
                    }
                }
            }
        }
    }

    /// Ends a session that was never admitted (its PROXY header was bad or
    /// its client is over a limit): it was counted in no limit.
    fn finish_unadmitted(&mut self, idx: usize, now: Instant) {
        // finish() undoes an admission; make it undo nothing.
        self.ledger.lock().refusing += 1;
        self.sessions[idx].refusing = Some(Failure::Other);
        self.finish(idx, now);
    }

    /// Starts what the service does with a newly admitted connection.
    fn begin(&mut self, idx: usize, now: Instant) {
        let s = &self.sessions[idx];
        let kind = self.services[s.service].kind;
        let (is_http, is_status) = (kind == ServiceKind::Http, kind == ServiceKind::Status);
        let target = self.services[s.service].destination.clone();
        if s.hs.is_some() {
            return self.start_handshake(idx, now);
        }
        if !is_http && !is_status {
            match target {
                Some(t) => self.request(idx, t, None, now),
                None => {
                    // Validation lets through only kinds this table serves.
                    self.sessions[idx].status = "error";
                    self.finish(idx, now);
                }
            }
            return;
        }
        self.sync(idx, now);
    }

    /// Opens a data port for session `owner` on `bind` (the system picks the
    /// port), for one connection from `accept_from`, which is then carried
    /// to `connect_to`. The owner hears back through its control machine.
    fn open_data_port(
        &mut self,
        owner: usize,
        token: u32,
        bind: IpAddr,
        accept_from: IpAddr,
        connect_to: SocketAddr,
    ) {
        let owner_id = self.id_of(owner);
        // One pending port per token: a second PASV replaces the first.
        self.close_data_ports(owner_id, Some(token));
        let idx = self.listeners.vacant_key();
        if self.lgens.len() <= idx {
            self.lgens.resize(idx + 1, 0);
        }
        self.lgens[idx] = self.lgens[idx].wrapping_add(1);
        let id = ListenerId::new(idx, self.lgens[idx]);
        let addr = SocketAddr::new(bind, 0);
        self.listeners.insert(Listener {
            id,
            service: self.sessions[owner].service,
            addr,
            state: ListenerState::Opening,
            data: Some(DataPort {
                owner: owner_id,
                token,
                accept_from,
                connect_to,
            }),
            udp: false,
        });
        self.actions
            .push_back(Action::Listen { listener: id, addr });
    }

    /// Closes the data ports of `owner` (those with `token`, or all).
    fn close_data_ports(&mut self, owner: ConnId, token: Option<u32>) {
        let ids: Vec<ListenerId> = self
            .listeners
            .iter()
            .filter(|(_, l)| {
                l.data
                    .as_ref()
                    .is_some_and(|d| d.owner == owner && token.is_none_or(|t| d.token == t))
            })
            .map(|(_, l)| l.id)
            .collect();
        for id in ids {
            self.listeners.remove(id.index());
            self.actions.push_back(Action::Unlisten { listener: id });
        }
    }

    fn data_port_open(&mut self, port: DataPort, local: SocketAddr, now: Instant) {
        if !self.live(port.owner) {
            return;
        }
        let idx = port.owner.idx as usize;
        let s = &mut self.sessions[idx];
        if let Some(c) = s.hs.as_mut().and_then(|h| h.control()) {
            c.data_listening(port.token, local, &mut s.up, &mut s.down);
        }
        self.sync(idx, now);
    }

    fn data_port_failed(&mut self, port: DataPort, now: Instant) {
        if !self.live(port.owner) {
            return;
        }
        let idx = port.owner.idx as usize;
        let s = &mut self.sessions[idx];
        if let Some(c) = s.hs.as_mut().and_then(|h| h.control()) {
            c.data_failed(port.token, &mut s.up, &mut s.down);
        }
        self.sync(idx, now);
    }

    /// A connection to an FTP data port: only its own session's peer, once.
    fn accept_data(
        &mut self,
        listener: ListenerId,
        port: DataPort,
        service: usize,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        if peer.ip() != port.accept_from || !self.live(port.owner) {
            self.log(Level::Debug, || {
                format!("data port {listener:?}: connection from {peer} refused")
            });
            return Err(Refused::Denied);
        }
        // One transfer per port.
        self.listeners.remove(listener.index());
        self.actions.push_back(Action::Unlisten { listener });
        let mut counts = self.ledger.lock();
        if counts.served() >= self.config.limits.max_connections as usize {
            return Err(Refused::TooMany);
        }
        counts.add_client(peer.ip());
        counts.sessions += 1;
        drop(counts);
        let owner = &self.sessions[port.owner.idx as usize];
        let user = owner
            .user
            .clone()
            .or_else(|| owner.hs.as_ref().and_then(|h| h.log_user()));
        let owner_client = owner.client.ip();
        self.count_served(service);
        let mut session = Session::new(service, listener, peer, peer, State::Connecting, now);
        session.target = port.connect_to.to_string();
        session.user = user;
        session.method = "FTP-DATA";
        session.owner = Some(port.owner);
        session.bind_out = port.connect_to.ip() != owner_client;
        let conn = self.insert(session);
        self.connect(conn.index(), port.connect_to, now);
        Ok(conn)
    }

    /// Puts a new session in the table under a fresh generation.
    fn insert(&mut self, mut session: Session) -> ConnId {
        let idx = self.sessions.vacant_key();
        if self.gens.len() <= idx {
            self.gens.resize(idx + 1, 0);
        }
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        session.gen = self.gens[idx];
        let gen = session.gen;
        // Counted in the ledger already, when it was admitted.
        self.sessions.insert(session);
        ConnId {
            idx: idx as u32,
            gen,
        }
    }

    /// Local wall-clock time, for rules with `days` and `hours`. A runtime
    /// sets it before handing in events (the core has no clock).
    pub fn set_wall(&mut self, wall: Wall) {
        self.wall = wall;
    }

    /// Rules see the address a connection would really reach: the
    /// unspecified address (0.0.0.0, ::) reaches this very host, so it is
    /// checked as loopback.
    fn rule_ip(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            other => other,
        }
    }

    fn query<'a>(
        &'a self,
        s: &'a Session,
        host: Option<&'a str>,
        addr: Option<IpAddr>,
        port: u16,
    ) -> Query<'a> {
        Query {
            service: &self.services[s.service].name,
            client: s.client.ip(),
            user: s.user.as_deref(),
            host,
            addr: addr.map(Self::rule_ip),
            port: Some(port),
        }
    }

    fn allowed(&self, q: &Query) -> bool {
        self.verdict(q).is_some()
    }

    /// `None`: denied; `Some(rate)`: allowed, capped at `rate` if any.
    fn verdict(&self, q: &Query) -> Option<Option<u64>> {
        match rules::check(&self.config.rules, q, self.wall) {
            Verdict::Allow { rate, .. } => Some(rate),
            Verdict::Deny { .. } => None,
        }
    }

    /// Puts session `idx` under a bandwidth cap shared with the other
    /// connections of its user (or client address).
    fn set_rate(&mut self, idx: usize, rate: Option<u64>, now: Instant) {
        let s = &mut self.sessions[idx];
        let Some(rate) = rate else {
            return;
        };
        if s.bucket.is_some() {
            return;
        }
        let key = match &s.user {
            Some(u) => RateKey::User(u.clone()),
            None => RateKey::Client(s.client.ip()),
        };
        let mut counts = self.ledger.lock();
        let b = counts
            .buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(rate, now));
        b.rate = rate;
        b.users += 1;
        drop(counts);
        s.bucket = Some(key);
    }

    /// The client (or a mapped port's configuration) named a destination.
    fn request(&mut self, idx: usize, target: Target, user: Option<String>, now: Instant) {
        let s = &mut self.sessions[idx];
        s.user = user;
        s.target = target.to_string();
        if let Some(f) = s.refusing {
            return self.fail(idx, f, now);
        }
        let s = &self.sessions[idx];
        match target {
            Target::Addr(addr) => {
                let Some(rate) = self.verdict(&self.query(s, None, Some(addr.ip()), addr.port()))
                else {
                    return self.fail(idx, Failure::Denied, now);
                };
                self.set_rate(idx, rate, now);
                self.connect(idx, addr, now);
            }
            Target::Name(host, port) => {
                // Refuse by name before resolving only when the address
                // could not change the verdict.
                let q = self.query(s, Some(&host), None, port);
                if let Some(Verdict::Deny { .. }) =
                    rules::check_by_name(&self.config.rules, &q, self.wall)
                {
                    return self.fail(idx, Failure::Denied, now);
                }
                let conn = self.id_of(idx);
                let s = &mut self.sessions[idx];
                s.state = State::Resolving;
                s.state_since = now;
                self.actions.push_back(Action::Resolve { conn, host, port });
                self.sync(idx, now);
            }
        }
    }

    fn connect(&mut self, idx: usize, addr: SocketAddr, now: Instant) {
        let conn = self.id_of(idx);
        let s = &mut self.sessions[idx];
        if let Some(v) = self.services[s.service].conf.send_proxy_protocol {
            // The destination learns the real client before any byte of it
            // (a retry to another address says it again, on its own socket).
            let version = match v {
                crate::config::ProxyVersion::V1 => crate::proxy_protocol::Version::V1,
                crate::config::ProxyVersion::V2 => crate::proxy_protocol::Version::V2,
            };
            let mut header = Vec::new();
            crate::proxy_protocol::encode(version, s.client, s.local, &mut header);
            s.up.prefix.clear();
            s.up.prefix_pos = 0;
            s.up.say(&header);
        }
        s.upstream = Some(addr);
        // A new upstream socket: the runtime knows no interest for it yet.
        s.told[1] = (false, false);
        if s.state != State::Connecting {
            s.state = State::Connecting;
            s.state_since = now;
        }
        let bind = if self.sessions[idx].bind_out {
            self.config.network.outgoing
        } else {
            // Active FTP data toward the LAN client: not from the outside.
            None
        };
        self.actions.push_back(Action::Connect { conn, addr, bind });
        self.sync(idx, now);
    }

    /// The request cannot be served: the protocol says why, or (a mapped
    /// port) the connection just closes.
    fn fail(&mut self, idx: usize, why: Failure, now: Instant) {
        let s = &mut self.sessions[idx];
        s.status = why.status();
        if why == Failure::Denied && s.refusing.is_none() {
            *self.services[s.service]
                .counters
                .refused
                .entry("denied")
                .or_insert(0) += 1;
        }
        if let Some(h) = s.http.as_mut() {
            let mut todo = Vec::new();
            h.failed(why, &mut s.down, &mut todo);
            return self.todo(idx, todo, now);
        }
        let Some(hs) = s.hs.as_mut() else {
            return self.finish(idx, now);
        };
        let mut reply = Vec::new();
        hs.failed(why, &mut reply);
        let again = s.refusing.is_none() && hs.asks_again();
        s.down.say(&reply);
        s.state_since = now;
        let buffered = s.up.buf.as_ref().is_some_and(|b| !b.data().is_empty());
        if again && (buffered || !s.up.eof) {
            // Back to the handshake: the client names another destination
            // (what it typed meanwhile is its next request). The try was
            // answered, so the log line says how the session ends; the
            // failed socket goes now rather than when the next replaces it.
            s.status = "ok";
            s.state = State::Handshake;
            s.upstream = None;
            s.addrs.clear();
            self.close_upstream(idx);
            return self.advance(idx, now);
        }
        s.state = State::Closing;
        self.sync(idx, now);
    }

    /// Answers a status page request from the table itself.
    fn status_request(&mut self, idx: usize, now: Instant) {
        let s = &self.sessions[idx];
        if s.state != State::Handshake {
            return;
        }
        let input = s.up.buf.as_ref().map_or(&[][..], |b| b.data());
        let reply = match status::parse(input) {
            status::Parse::More => {
                if !s.up.has_space() {
                    status::error(431)
                } else {
                    return;
                }
            }
            status::Parse::Bad(code) => status::error(code),
            status::Parse::Get { page, head_only } if self.ledger.workers() > 1 => {
                // The other workers' connections are part of the answer.
                let conn = self.id_of(idx);
                if !self.gathering.iter().any(|(c, _, _)| *c == conn) {
                    self.gathering.push((conn, page, head_only));
                    self.actions.push_back(Action::Gather { conn });
                }
                return;
            }
            status::Parse::Get { page, head_only } => {
                status::respond(page, head_only, &self.snapshot(now))
            }
        };
        self.status_reply(idx, &reply, now);
    }

    /// Says a status answer and closes once it is written.
    fn status_reply(&mut self, idx: usize, reply: &[u8], now: Instant) {
        let s = &mut self.sessions[idx];
        s.method = "GET";
        s.down.say(reply);
        s.state = State::Closing;
        s.state_since = now;
    }

    /// The other workers' snapshots for the status request on `conn`
    /// ([`Action::Gather`]): answers it with them and this table's own.
    pub fn handle_gathered(&mut self, conn: ConnId, parts: Vec<Snapshot>, now: Instant) {
        self.now = now;
        let Some(i) = self.gathering.iter().position(|(c, _, _)| *c == conn) else {
            return;
        };
        let (_, page, head_only) = self.gathering.swap_remove(i);
        if !self.live(conn) {
            return;
        }
        let idx = conn.idx as usize;
        if self.sessions[idx].state != State::Handshake {
            return;
        }
        let mut snap = self.snapshot(now);
        for part in parts {
            snap.merge(part);
        }
        let reply = status::respond(page, head_only, &snap);
        self.status_reply(idx, &reply, now);
        self.sync(idx, now);
    }

    /// What the status page shows, as of `now`: this table's part (the
    /// whole of it with one worker).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut services: Vec<ServiceRow> = self
            .services
            .iter()
            .map(|s| ServiceRow {
                name: s.name.to_string(),
                kind: s.kind.name(),
                listen: s.listen.clone(),
                active: s.active,
                counters: s.counters.clone(),
                live_up: 0,
                live_down: 0,
            })
            .collect();
        let mut users = self.user_bytes.clone();
        let mut connections = Vec::with_capacity(self.sessions.len());
        for (idx, s) in self.sessions.iter() {
            let row = &mut services[s.service];
            row.live_up += s.up.bytes;
            row.live_down += s.down.bytes;
            let user = s
                .user
                .clone()
                .or_else(|| s.http.as_ref().and_then(|h| h.user.clone()));
            if let Some(u) = &user {
                let e = users.entry(u.clone()).or_insert((0, 0));
                e.0 += s.up.bytes;
                e.1 += s.down.bytes;
            }
            let destination = match (s.upstream, s.target.is_empty()) {
                (Some(a), _) => Some(a.to_string()),
                (None, false) => Some(s.target.clone()),
                (None, true) => None,
            };
            let id = ConnId {
                idx: idx as u32,
                gen: s.gen,
            };
            connections.push(ConnRow {
                // Ids are a table's own: with several, the worker tells them apart.
                id: if self.ledger.workers() > 1 {
                    format!("{}:{id}", self.worker)
                } else {
                    id.to_string()
                },
                service: self.services[s.service].name.to_string(),
                client: s.client.to_string(),
                user,
                destination,
                state: match s.state {
                    State::ProxyHeader => "proxy-header",
                    State::Handshake => "handshake",
                    State::Resolving => "resolving",
                    State::Connecting => "connecting",
                    State::Relay => "relay",
                    State::Http => "http",
                    State::Control => "control",
                    State::ServerHandshake => "server-handshake",
                    State::Closing => "closing",
                },
                age_ms: now.saturating_duration_since(s.accepted).as_millis(),
                bytes_up: s.up.bytes,
                bytes_down: s.down.bytes,
            });
        }
        Snapshot {
            services,
            connections,
            users,
        }
    }

    /// Passes new bytes of `side` through a control machine (FTP).
    fn control_input(&mut self, idx: usize, side: Side, now: Instant) {
        let s = &mut self.sessions[idx];
        if s.state != State::Control {
            return;
        }
        let ctx = ControlCtx {
            client: s.client,
            client_local: s.local,
            server: s.upstream.unwrap_or(s.client),
            server_local: s.upstream_local.unwrap_or(s.local),
        };
        let Some(c) = s.hs.as_mut().and_then(|h| h.control()) else {
            return;
        };
        let mut todo = Vec::new();
        match side {
            Side::Client => c.from_client(&mut s.up, &mut s.down, &ctx, &mut todo),
            Side::Upstream => c.from_server(&mut s.up, &mut s.down, &ctx, &mut todo),
        }
        for t in todo {
            match t {
                ControlTodo::OpenData {
                    token,
                    bind,
                    accept_from,
                    connect_to,
                } => self.open_data_port(idx, token, bind, accept_from, connect_to),
                ControlTodo::Close { status } => {
                    let s = &mut self.sessions[idx];
                    s.status = status;
                    s.state = State::Closing;
                    s.state_since = now;
                }
            }
        }
    }

    /// Runs the HTTP machine over what the upstream has sent.
    fn upstream_input(&mut self, idx: usize, eof: bool, now: Instant) {
        let s = &mut self.sessions[idx];
        if s.state != State::Http {
            return;
        }
        let Some(h) = s.http.as_mut() else {
            return;
        };
        let mut todo = Vec::new();
        h.upstream(&mut s.up, &mut s.down, eof, now, &mut todo);
        if eof {
            s.upstream_open = false;
        }
        self.todo(idx, todo, now);
        // A response that finished lets a pipelined request behind it go.
        let conn = self.id_of_checked(idx);
        if conn.is_some_and(|c| self.live(c)) && self.sessions[idx].state == State::Http {
            self.advance(idx, now);
        }
    }

    /// Has the runtime close `idx`'s upstream socket (the client stays);
    /// a new one starts with no interest told.
    fn close_upstream(&mut self, idx: usize) {
        let conn = self.id_of(idx);
        let s = &mut self.sessions[idx];
        s.upstream_open = false;
        s.told[1] = (false, false);
        self.actions.push_back(Action::CloseUpstream { conn });
    }

    /// Carries out what the HTTP machine asked for.
    fn todo(&mut self, idx: usize, todo: Vec<HttpTodo>, now: Instant) {
        let conn = self.id_of(idx);
        for t in todo {
            if !self.live(conn) {
                return;
            }
            match t {
                HttpTodo::Connect { target } => {
                    if self.sessions[idx].upstream_open {
                        self.close_upstream(idx);
                    }
                    let s = &mut self.sessions[idx];
                    // A new upstream: its end of stream is yet to come.
                    s.down.eof = false;
                    s.down.shut = false;
                    s.up.shut = false;
                    let user = s.http.as_ref().and_then(|h| h.user.clone());
                    self.request(idx, target, user, now);
                }
                HttpTodo::DropUpstream => {
                    if self.sessions[idx].upstream_open {
                        self.close_upstream(idx);
                    }
                }
                HttpTodo::Tunnel => {
                    let s = &mut self.sessions[idx];
                    s.up.fwd = None;
                    s.down.fwd = None;
                    s.state = State::Relay;
                }
                HttpTodo::Close { status } => {
                    let s = &mut self.sessions[idx];
                    s.status = status;
                    s.state = State::Closing;
                    s.state_since = now;
                    if s.upstream_open {
                        self.close_upstream(idx);
                    }
                }
                HttpTodo::Log(x) if self.access_logged() => {
                    let s = &self.sessions[idx];
                    let user = s.http.as_ref().and_then(|h| h.user.clone());
                    let rec = self.exchange_record(s, user, x);
                    self.actions.push_back(Action::Access(Box::new(rec)));
                }
                HttpTodo::Log(_) => {}
            }
        }
        if self.live(conn) {
            self.sync(idx, now);
        }
    }

    /// Whether access records are wanted: with `[log] access = "off"` none
    /// is made, so no [`Action::Access`] comes out (an HTTP connection
    /// would make one per request).
    fn access_logged(&self) -> bool {
        self.config.log.access != AccessTarget::Off
    }

    fn exchange_record(
        &self,
        s: &Session,
        user: Option<String>,
        x: crate::proto::http::Exchange,
    ) -> AccessRecord {
        AccessRecord {
            service: self.services[s.service].name.clone(),
            client: s.client,
            user,
            method: x.method.into(),
            target: x.target,
            destination: s.upstream,
            status: x.status.to_string(),
            up: x.up,
            down: x.down,
            duration: x.duration,
        }
    }

    /// Runs the handshake over what the client has sent.
    fn advance(&mut self, idx: usize, now: Instant) {
        if self.sessions[idx].state == State::ProxyHeader {
            return self.proxy_header(idx, now);
        }
        let s = &mut self.sessions[idx];
        if self.services[s.service].kind == ServiceKind::Status {
            return self.status_request(idx, now);
        }
        if let Some(h) = s.http.as_mut() {
            if !matches!(
                s.state,
                State::Handshake | State::Http | State::Resolving | State::Connecting
            ) {
                return;
            }
            let mut todo = Vec::new();
            let mut ctx = Ctx {
                service: &self.services[s.service].conf,
                users: &mut self.users,
                client: s.client,
            };
            h.client(&mut s.up, &mut s.down, &mut ctx, now, &mut todo);
            return self.todo(idx, todo, now);
        }
        if s.state != State::Handshake {
            return;
        }
        let Some(hs) = s.hs.as_mut() else {
            return;
        };
        let data = s.up.buf.as_ref().map_or(&[][..], |b| b.data());
        let mut reply = Vec::new();
        let mut ctx = Ctx {
            service: &self.services[s.service].conf,
            users: &mut self.users,
            client: s.client,
        };
        let (n, step) = hs.input(data, &mut reply, &mut ctx);
        s.method = hs.method();
        if let Some(b) = s.up.buf.as_mut() {
            b.consume(n);
        }
        s.up.release_if_empty(&mut self.pool);
        if !reply.is_empty() {
            s.down.say(&reply);
        }
        self.step(idx, step, now);
    }

    /// Greets the client, or connects at once, as the protocol says.
    fn start_handshake(&mut self, idx: usize, now: Instant) {
        let s = &mut self.sessions[idx];
        let Some(hs) = s.hs.as_mut() else {
            return;
        };
        if let (Some(why), true) = (s.refusing, hs.refuses_at_accept()) {
            return self.fail(idx, why, now);
        }
        let mut reply = Vec::new();
        let mut ctx = Ctx {
            service: &self.services[s.service].conf,
            users: &mut self.users,
            client: s.client,
        };
        let step = hs.start(&mut reply, &mut ctx);
        s.method = hs.method();
        s.down.say(&reply);
        self.step(idx, step, now);
    }

    /// Carries out a handshake's step.
    fn step(&mut self, idx: usize, step: Step, now: Instant) {
        let s = &mut self.sessions[idx];
        match step {
            Step::More => {
                if s.up.eof {
                    // The client gave up before finishing.
                    s.status = "aborted";
                    return self.finish(idx, now);
                }
                self.sync(idx, now);
            }
            Step::Connect { target, user } => self.request(idx, target, user, now),
            Step::Close { status } => {
                s.status = status;
                s.state = State::Closing;
                s.state_since = now;
                self.sync(idx, now);
            }
        }
    }

    /// Runs the protocol's talk with the server over what it has sent.
    fn server_handshake(&mut self, idx: usize, eof: bool, now: Instant) {
        let s = &mut self.sessions[idx];
        if s.state != State::ServerHandshake {
            return;
        }
        let Some(hs) = s.hs.as_mut() else {
            return;
        };
        let data = s.down.buf.as_ref().map_or(&[][..], |b| b.data());
        let mut reply = Vec::new();
        let mut to_server = Vec::new();
        let (n, step) = hs.upstream(data, &mut reply, &mut to_server);
        if let Some(b) = s.down.buf.as_mut() {
            b.consume(n);
        }
        s.down.release_if_empty(&mut self.pool);
        s.down.say(&reply);
        s.up.say(&to_server);
        match step {
            UpStep::More if eof => {
                // The server hung up mid-handshake.
                self.fail(idx, Failure::Other, now)
            }
            UpStep::More => {}
            UpStep::Relay if hs.control().is_some() => {
                // The protocol stays in the path: bytes left over from the
                // handshake go through it too.
                s.state = State::Control;
                s.last_active = now;
                self.control_input(idx, Side::Upstream, now);
                if self.live(self.id_of(idx)) {
                    self.control_input(idx, Side::Client, now);
                }
            }
            UpStep::Relay => {
                s.up.fwd = None;
                s.down.fwd = None;
                s.state = State::Relay;
                s.last_active = now;
            }
            UpStep::Close { status } => {
                s.status = status;
                s.state = State::Closing;
                s.state_since = now;
            }
        }
    }

    /// Whether [`Event::Connected`] for `conn` needs the upstream socket's
    /// real local address: only where its protocol uses it (SOCKS, FTP's
    /// control connection; see `Protocol::uses_local`). Every other
    /// session (HTTP, the line gateways, a mapped port, an FTP data
    /// connection) does not, and a runtime may spare the syscall and give
    /// the unspecified address.
    pub fn wants_local(&self, conn: ConnId) -> bool {
        self.session(conn)
            .and_then(|s| s.hs.as_ref())
            .is_some_and(|h| h.uses_local())
    }

    /// The live session `conn` names, if any.
    fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions
            .get(conn.idx as usize)
            .filter(|s| s.gen == conn.gen)
    }

    /// Whether bytes read on `side` now may be parsed by the core (the
    /// flight recorder keeps those; relayed bytes it keeps as lengths).
    pub fn keeps_payload(&self, conn: ConnId, side: Side) -> bool {
        let _ = side;
        let Some(s) = self.session(conn) else {
            return false;
        };
        match s.state {
            State::Relay => false,
            // Nothing parses what a mapped port reads before it relays.
            State::Connecting | State::Resolving => s.hs.is_some() || s.http.is_some(),
            _ => true,
        }
    }

    /// Whether the runtime may move bytes from `from` to the other side
    /// itself (splice(2)), reporting them with [`Event::Spliced`], instead
    /// of reading into [`Proxy::recv_buf`]. True only while the direction
    /// is a pure relay the core has nothing to do with: the session relays
    /// (a mapped port, SOCKS after its reply, an HTTP CONNECT tunnel after
    /// its 200, an FTP data connection), no bandwidth cap counts its bytes,
    /// nothing of it waits in the core (what the core holds goes out first,
    /// so the order is kept; a reply or PROXY header it made, too), its
    /// source has not reached EOF, and the core wants a read there (a relay
    /// is never parsed, so [`Proxy::keeps_payload`] is false for it).
    ///
    /// Asked before each splice from `from`'s socket; bytes already in the
    /// runtime's pipe may still be written out after it turns false.
    pub fn splice_ok(&self, conn: ConnId, from: Side) -> bool {
        let Some(s) = self.session(conn) else {
            return false;
        };
        let d = s.source(from);
        d.bulk
            && s.state == State::Relay
            && s.bucket.is_none()
            && s.upstream_open
            && d.fwd.is_none()
            && d.drained()
            && !d.eof
            && !d.shut
            && s.wanted(from).0
        // (In Relay the core parses nothing: `keeps_payload` is false.)
    }

    /// How a runtime makes the pipe it splices a direction through.
    pub fn splice_pipe(&self) -> PipeSize {
        let limit = self.config.limits.buffer;
        PipeSize {
            size: limit.max(SPLICE_PIPE_MIN),
            limit,
        }
    }

    /// `n` bytes at once are a bulk transfer (see [`SPLICE_BULK`]).
    fn bulk(&self, n: usize) -> bool {
        n >= SPLICE_BULK.min(self.config.limits.buffer / 2)
    }

    /// Where the runtime reads `side`'s next bytes to: free space in the
    /// buffer of the direction `side` feeds. `None` when the core does not
    /// want a read on `side` now (or the id is stale).
    pub fn recv_buf(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        let s = self.sessions.get_mut(conn.idx as usize)?;
        if s.gen != conn.gen || !s.wanted(side).0 {
            return None;
        }
        let cap = match &s.bucket {
            Some(k) => self
                .ledger
                .lock()
                .buckets
                .get_mut(k)
                .map_or(usize::MAX, |b| b.available(side_index(side), self.now)),
            None => usize::MAX,
        };
        let space = s.source_dir(side).space(&mut self.pool);
        let n = space.len().min(cap);
        if n == 0 {
            None
        } else {
            Some(&mut space[..n])
        }
    }

    /// The bytes waiting to be written to `side`, if any: the first part
    /// of [`Proxy::send_bufs`].
    pub fn send_buf(&self, conn: ConnId, side: Side) -> Option<&[u8]> {
        self.send_bufs(conn, side)
            .map(|[a, b]| if a.is_empty() { b } else { a })
    }

    /// All the bytes waiting to be written to `side`, if any, in two parts
    /// to be written in order, best with one vectored write: bytes the core
    /// made (a reply, a rewritten head), then bytes it forwards. Either
    /// part may be empty, not both. An [`Event::Written`] of `n` counts
    /// across them, the first part's bytes first.
    pub fn send_bufs(&self, conn: ConnId, side: Side) -> Option<[&[u8]; 2]> {
        let s = self.sessions.get(conn.idx as usize)?;
        if s.gen != conn.gen || !s.wanted(side).1 {
            return None;
        }
        let parts = s.sink_dir(side).out_parts();
        if parts[0].is_empty() && parts[1].is_empty() {
            None
        } else {
            Some(parts)
        }
    }

    /// Feeds one socket event to the table.
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.now = now;
        match event {
            Event::Listening { listener, local } => self.on_listening(listener, local, now),
            Event::ListenFailed { listener, error } => self.on_listen_failed(listener, error, now),
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
                s.upstream_open = true;
                if let Some(h) = s.http.as_mut() {
                    s.state = State::Http;
                    let mut todo = Vec::new();
                    h.connected(local, &mut s.down, &mut todo);
                    self.todo(idx, todo, now);
                    if self.live(conn) {
                        // A request may already wait in the prefix.
                        self.sync(idx, now);
                    }
                    return;
                }
                if let Some(hs) = s.hs.as_mut() {
                    let mut reply = Vec::new();
                    let mut to_server = Vec::new();
                    let after = hs.connected(local, &mut reply, &mut to_server);
                    s.down.say(&reply);
                    s.up.say(&to_server);
                    if after == After::Upstream {
                        // Nothing is relayed until the protocol says so.
                        s.state = State::ServerHandshake;
                        s.state_since = now;
                        s.up.fwd = Some(0);
                        s.down.fwd = Some(0);
                    }
                }
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
                let (svc, client, up) = (s.service, s.client, s.upstream);
                let name = self.services[svc].name.clone();
                self.log(Level::Debug, || {
                    format!(
                        "{name}: {client}: connect to {} failed: {}",
                        up.map(|a| a.to_string()).unwrap_or_default(),
                        error.describe()
                    )
                });
                let s = &mut self.sessions[idx];
                s.upstream_open = false;
                if !s.addrs.is_empty() {
                    let next = s.addrs.remove(0);
                    return self.connect(idx, next, now);
                }
                let why = match error {
                    IoKind::Refused => Failure::Refused,
                    IoKind::TimedOut => Failure::TimedOut,
                    IoKind::HostUnreachable => Failure::HostUnreachable,
                    IoKind::NetUnreachable => Failure::NetUnreachable,
                    _ => Failure::Other,
                };
                self.fail(idx, why, now);
            }
            Event::Resolved { conn, addrs } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                if self.sessions[idx].state != State::Resolving {
                    return;
                }
                if addrs.is_empty() {
                    return self.fail(idx, Failure::NotResolved, now);
                }
                let s = &self.sessions[idx];
                let host = s.target.rsplit_once(':').map_or("", |(h, _)| h);
                let mut ok: Vec<SocketAddr> = addrs
                    .iter()
                    .copied()
                    .filter(|a| self.allowed(&self.query(s, Some(host), Some(a.ip()), a.port())))
                    .collect();
                if ok.is_empty() {
                    return self.fail(idx, Failure::Denied, now);
                }
                let first = ok.remove(0);
                let s = &self.sessions[idx];
                let rate = self
                    .verdict(&self.query(s, Some(host), Some(first.ip()), first.port()))
                    .flatten();
                self.set_rate(idx, rate, now);
                self.sessions[idx].addrs = ok;
                self.connect(idx, first, now);
            }
            Event::ResolveFailed { conn } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                if self.sessions[idx].state == State::Resolving {
                    self.fail(idx, Failure::NotResolved, now);
                }
            }
            Event::Read { conn, side, n } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let bulk = self.bulk(n);
                let s = &mut self.sessions[idx];
                if n > 0 {
                    if let Some(k) = s.bucket.as_ref() {
                        if let Some(b) = self.ledger.lock().buckets.get_mut(k) {
                            let d = side_index(side);
                            b.take(d, n);
                            s.throttle[d] = b.resume_at(d, now);
                        }
                    }
                    let closing = s.state == State::Closing && side == Side::Client;
                    let d = s.source_dir(side);
                    d.bulk = bulk;
                    if let Some(b) = d.buf.as_mut() {
                        b.fill(n);
                        if closing {
                            // Nothing the client says matters any more.
                            b.consume(n);
                        }
                    }
                    d.release_if_empty(&mut self.pool);
                    s.last_active = now;
                    if let Some(owner) = s.owner {
                        // A transfer keeps its control connection alive.
                        self.touch(owner, now);
                    }
                }
                if side == Side::Client {
                    self.advance(idx, now);
                } else {
                    self.upstream_input(idx, false, now);
                    if self.live(conn) {
                        self.server_handshake(idx, false, now);
                    }
                }
                if self.live(conn) {
                    self.control_input(idx, side, now);
                }
                if !self.live(conn) {
                    return;
                }
                self.sync(idx, now);
            }
            Event::Spliced { conn, from, n } => {
                if !self.live(conn) || n == 0 {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                // As a Read of n then a Written of n: the direction's count
                // and the idle clock; the bytes never were in the core.
                // (What goes out at once says more of the sink than of the
                // source: a spliced direction stays spliced.)
                let d = s.source_dir(from);
                d.bytes = d.bytes.saturating_add(n.min(SPLICED_MAX) as u64);
                s.last_active = now;
                if let Some(owner) = s.owner {
                    // A transfer keeps its control connection alive.
                    self.touch(owner, now);
                }
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
                if side == Side::Client {
                    self.advance(idx, now);
                } else {
                    self.upstream_input(idx, true, now);
                    if self.live(conn) {
                        self.server_handshake(idx, true, now);
                    }
                }
                if !self.live(conn) {
                    return;
                }
                self.sync(idx, now);
            }
            Event::Written { conn, side, n } => {
                if !self.live(conn) {
                    return;
                }
                let idx = conn.idx as usize;
                let s = &mut self.sessions[idx];
                let d = s.sink_dir_mut(side);
                let moved = d.written(n) > 0;
                let cleared = d.fwd == Some(0);
                if moved {
                    s.last_active = now;
                }
                let owner = s.owner.filter(|_| moved);
                s.sink_dir_mut(side).release_if_empty(&mut self.pool);
                if let Some(owner) = owner {
                    // A transfer keeps its control connection alive.
                    self.touch(owner, now);
                }
                let s = &mut self.sessions[idx];
                if side == Side::Client
                    && s.state == State::Handshake
                    && s.up.buf.as_ref().is_some_and(|b| !b.is_empty())
                {
                    // Replies drained: commands the client pipelined behind
                    // them may run now.
                    self.advance(idx, now);
                    if !self.live(conn) {
                        return;
                    }
                }
                let s = &mut self.sessions[idx];
                if s.state == State::Control {
                    // A line held behind the bytes just written may go now.
                    self.control_input(idx, side.other(), now);
                    if !self.live(conn) {
                        return;
                    }
                }
                let s = &mut self.sessions[idx];
                if cleared && s.state == State::Http {
                    // A head waiting behind the bytes just written may go.
                    match side {
                        Side::Client => self.upstream_input(idx, false, now),
                        Side::Upstream => self.advance(idx, now),
                    }
                    if !self.live(conn) {
                        return;
                    }
                }
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

    fn on_listening(&mut self, listener: ListenerId, local: SocketAddr, now: Instant) {
        let Some(l) = self.listener_mut(listener) else {
            return;
        };
        if l.state != ListenerState::Opening {
            return;
        }
        l.state = ListenerState::Open;
        if let Some(port) = l.data.clone() {
            return self.data_port_open(port, local, now);
        }
        let service = l.service;
        self.starting = self.starting.saturating_sub(1);
        let s = &self.services[service];
        if self.worker == 0 {
            let line = listening_line(&s.name, s.kind, local);
            self.actions.push_back(Action::Say(line));
        }
    }

    fn on_listen_failed(&mut self, listener: ListenerId, error: IoKind, now: Instant) {
        let Some(l) = self.listener_mut(listener) else {
            return;
        };
        if l.state != ListenerState::Opening {
            return;
        }
        l.state = ListenerState::Closed;
        if let Some(port) = l.data.clone() {
            self.listeners.remove(listener.index());
            return self.data_port_failed(port, now);
        }
        let (service, addr) = (l.service, l.addr);
        let s = &self.services[service];
        let hint = match error {
            IoKind::PermissionDenied if addr.port() < 1024 => {
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
            addr,
            s.name,
            error.describe()
        );
        if self.starting > 0 {
            self.actions.push_back(Action::Fatal { message });
        } else {
            // After a reload: the rest serves on.
            self.listeners.remove(listener.index());
            self.log(Level::Error, || message);
        }
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
        // Logged once, then at most once a minute while it lasts.
        self.fd_pauses += 1;
        if self.fd_warned.is_none_or(|t| now >= t + FD_WARN_EVERY) {
            self.fd_warned = Some(now);
            let open = self.sessions.len();
            let pauses = std::mem::take(&mut self.fd_pauses);
            self.log(Level::Warn, || {
                format!(
                    "out of file descriptors with {open} connections open: accepting paused \
                     {}ms at a time ({pauses} pauses since the last report); raise the limit \
                     (ulimit -n) or lower limits.max_connections",
                    ACCEPT_PAUSE.as_millis()
                )
            });
        }
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
        for (_, l) in self.listeners.iter() {
            if l.state == ListenerState::Open {
                self.actions
                    .push_back(Action::PauseAccept { listener: l.id });
            }
        }
    }

    /// Brings the runtime's view of session `idx` up to date: interest,
    /// half-closes, the end of the session, and its deadline.
    fn sync(&mut self, idx: usize, now: Instant) {
        let conn = self.id_of(idx);
        let s = &mut self.sessions[idx];
        if s.state == State::Closing && !s.down.has_data() {
            return self.finish(idx, now);
        }
        if s.state == State::Handshake && s.up.eof {
            return self.finish(idx, now);
        }
        if s.state == State::Control
            && ((s.up.eof && s.up.drained()) || (s.down.eof && s.down.drained()))
        {
            // Either end of a control connection leaving ends the session
            // once what it said has been passed on.
            return self.finish(idx, now);
        }
        if s.state == State::Http
            && s.up.eof
            && s.up.drained()
            && s.down.drained()
            && !s.http.as_ref().is_some_and(|h| h.busy())
        {
            // The client is done and owed nothing.
            return self.finish(idx, now);
        }
        if s.state == State::Relay {
            // Half-close carried across once a direction is drained.
            let mut shut = [None; 2];
            if s.up.eof && !s.up.shut && s.up.drained() {
                s.up.shut = true;
                shut[0] = Some(Side::Upstream);
            }
            if s.down.eof && !s.down.shut && s.down.drained() {
                s.down.shut = true;
                shut[1] = Some(Side::Client);
            }
            if s.finished() {
                // Both ways done and drained: the Close that follows sends
                // the FIN a last shutdown would (nothing is left unread to
                // turn it into a reset), one syscall fewer.
                self.finish(idx, now);
                return;
            }
            for side in shut.into_iter().flatten() {
                self.actions.push_back(Action::ShutdownWrite { conn, side });
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
        let t = self.state_deadline(s);
        s.throttle.iter().flatten().fold(t, |a, b| a.min(*b))
    }

    fn state_deadline(&self, s: &Session) -> Instant {
        let l = &self.config.limits;
        match s.state {
            State::ProxyHeader | State::Handshake | State::ServerHandshake | State::Closing => {
                s.state_since + l.handshake_timeout
            }
            State::Resolving | State::Connecting => s.state_since + l.connect_timeout,
            State::Http => {
                let idle = s.last_active + l.idle_timeout;
                match s.http.as_ref().and_then(|h| h.head_since) {
                    Some(t) => idle.min(t + l.handshake_timeout),
                    None => idle,
                }
            }
            State::Relay | State::Control => s.last_active + l.idle_timeout,
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
            self.prune_timers();
        }
    }

    /// Drops the heap entries no session owns any more.
    fn prune_timers(&mut self) {
        let sessions = &self.sessions;
        self.timers.retain(|t, i, g| {
            sessions
                .get(i as usize)
                .is_some_and(|s| s.gen == g && s.timer_at == Some(t))
        });
    }

    /// Ends session `idx`: Close, access record, counters, buffers back.
    fn finish(&mut self, idx: usize, now: Instant) {
        let conn = self.id_of(idx);
        let mut s = self.sessions.remove(idx);
        s.up.release(&mut self.pool);
        s.down.release(&mut self.pool);
        let mut counts = self.ledger.lock();
        counts.sessions -= 1;
        if s.refusing.is_some() {
            counts.refusing -= 1;
        } else {
            counts.remove_client(s.client.ip());
        }
        if let Some(k) = s.bucket.take() {
            if let Some(b) = counts.buckets.get_mut(&k) {
                b.users -= 1;
                if b.users == 0 {
                    counts.buckets.remove(&k);
                }
            }
        }
        drop(counts);
        if s.refusing.is_none() {
            let svc = &mut self.services[s.service];
            svc.active -= 1;
        }
        let svc = &mut self.services[s.service];
        svc.counters.up += s.up.bytes;
        svc.counters.down += s.down.bytes;
        let user = s
            .user
            .clone()
            .or_else(|| s.http.as_ref().and_then(|h| h.user.clone()));
        if let Some(u) = user {
            let e = self.user_bytes.entry(u).or_insert((0, 0));
            e.0 += s.up.bytes;
            e.1 += s.down.bytes;
        }
        self.stats.closed += 1;
        self.actions.push_back(Action::Close { conn });
        if s.hs.as_mut().is_some_and(|h| h.control().is_some()) {
            self.close_data_ports(conn, None);
        }
        if !self.gathering.is_empty() {
            self.gathering.retain(|(c, _, _)| *c != conn);
        }
        if let Some(mut h) = s.http.take() {
            // http logs one line per request, the last one now.
            if let Some(x) = h.abandon(&s.up, &s.down, now) {
                if self.access_logged() {
                    let rec = self.exchange_record(&s, h.user.clone(), x);
                    self.actions.push_back(Action::Access(Box::new(rec)));
                }
            }
        } else if self.access_logged() {
            let svc = &self.services[s.service];
            let rec = AccessRecord {
                service: svc.name.clone(),
                client: s.client,
                user: s
                    .user
                    .take()
                    .or_else(|| s.hs.as_ref().and_then(|h| h.log_user())),
                method: s.method.into(),
                target: std::mem::take(&mut s.target),
                destination: s.upstream,
                status: s.status.into(),
                up: s.up.bytes,
                down: s.down.bytes,
                duration: now.saturating_duration_since(s.accepted),
            };
            self.actions.push_back(Action::Access(Box::new(rec)));
        }
        if self.sessions.is_empty() {
            // Nothing can be current any more.
            self.timers.clear();
        } else if self.timers.len() > 2 * self.sessions.len() + 64 {
            self.prune_timers();
        }
    }

    /// Runs every deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let mut todo = Vec::new();
        self.udp
            .handle_timeout(self.config.limits.udp_idle_timeout, now, &mut todo);
        self.udp_todo(todo);
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            for (_, l) in self.listeners.iter() {
                if l.state == ListenerState::Open {
                    self.actions
                        .push_back(Action::ResumeAccept { listener: l.id });
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
            // A capped direction whose bucket has refilled reads again.
            if s.throttle.iter().flatten().any(|t| *t <= now) {
                for t in &mut s.throttle {
                    if t.is_some_and(|t| t <= now) {
                        *t = None;
                    }
                }
                self.sync(idx, now);
            }
            let due = self.state_deadline(&self.sessions[idx]);
            if due > now {
                self.arm(idx);
                continue;
            }
            let s = &mut self.sessions[idx];
            match s.state {
                State::Resolving | State::Connecting => self.fail(idx, Failure::TimedOut, now),
                State::Handshake => {
                    s.status = "timeout";
                    if let Some(h) = s.http.as_mut() {
                        let mut todo = Vec::new();
                        h.timed_out(&s.up, &mut s.down, now, &mut todo);
                        self.todo(idx, todo, now);
                    } else {
                        self.finish(idx, now);
                    }
                }
                State::ProxyHeader => {
                    s.status = "timeout";
                    self.finish_unadmitted(idx, now);
                }
                State::Closing => self.finish(idx, now),
                State::ServerHandshake => self.fail(idx, Failure::TimedOut, now),
                State::Http
                    if s.http.as_ref().is_some_and(|h| {
                        h.head_since
                            .is_some_and(|t| t + self.config.limits.handshake_timeout <= now)
                    }) =>
                {
                    // A request head that does not finish in time: 408.
                    if let Some(h) = s.http.as_mut() {
                        let mut todo = Vec::new();
                        h.timed_out(&s.up, &mut s.down, now, &mut todo);
                        self.todo(idx, todo, now);
                    }
                }
                State::Relay | State::Http | State::Control => {
                    s.status = "idle";
                    self.finish(idx, now);
                }
            }
        }
    }

    /// The next time [`Proxy::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.udp.next_deadline(),
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
        for (_, l) in self.listeners.iter_mut() {
            if l.state != ListenerState::Closed {
                l.state = ListenerState::Closed;
                self.actions.push_back(Action::Unlisten { listener: l.id });
            }
        }
        let mut todo = Vec::new();
        self.udp.close_all(now, &mut todo);
        self.udp_todo(todo);
        // Worker 0 says it for all (the others are told right after).
        let open = self.ledger.lock().sessions;
        if self.worker == 0 {
            self.log(Level::Info, || {
                format!(
                    "shutting down: {open} connections open, waiting up to {}s",
                    grace.as_secs_f64()
                )
            });
        }
        if grace.is_zero() {
            self.handle_timeout(now);
        }
    }

    /// Takes a new configuration (SIGHUP): listeners that are new open,
    /// those gone close, those that stay keep their sockets; the new rules,
    /// limits and users apply to new connections, and connections in flight
    /// keep going — unless `recheck`, which closes those the new rules deny.
    pub fn reconfigure(&mut self, config: Config, recheck: bool, now: Instant) {
        self.reconfigure_worker(config, recheck, 0, now);
    }

    /// [`Proxy::reconfigure`] for one of several workers. The others reload
    /// first; worker 0 last, with `closed_elsewhere` (what theirs closed),
    /// and only it logs the reload. Returns how many connections this
    /// table closed.
    pub fn reconfigure_worker(
        &mut self,
        config: Config,
        recheck: bool,
        closed_elsewhere: usize,
        now: Instant,
    ) -> usize {
        // Services: same name and kind → the same entry (its counters go
        // on); others are added; those gone are retired.
        let mut index = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            let found = self
                .services
                .iter()
                .position(|s| !s.retired && *s.name == *svc.name && s.kind == svc.kind);
            let fresh = service_info(svc);
            match found {
                Some(i) => {
                    let s = &mut self.services[i];
                    s.destination = fresh.destination;
                    s.target = fresh.target;
                    s.listen = fresh.listen;
                    s.conf = fresh.conf;
                    index.push(i);
                }
                None => {
                    self.services.push(fresh);
                    index.push(self.services.len() - 1);
                }
            }
        }
        for (i, s) in self.services.iter_mut().enumerate() {
            if !index.contains(&i) {
                s.retired = true;
            }
        }
        // Listeners: keep an open one whose address and service stay.
        let mut wanted: Vec<(usize, SocketAddr, bool)> = Vec::new();
        for (n, svc) in config.services.iter().enumerate() {
            if !listens(self.worker, svc) {
                continue;
            }
            let udp = svc.protocol == Protocol::Udp;
            for a in &svc.listen {
                wanted.push((index[n], *a, udp));
            }
        }
        let mut keep = Vec::new();
        let mut close = Vec::new();
        for (_, l) in self.listeners.iter() {
            if l.data.is_some() {
                continue;
            }
            let stays = l.state != ListenerState::Closed
                && wanted
                    .iter()
                    .any(|(svc, a, udp)| *svc == l.service && *a == l.addr && *udp == l.udp);
            if stays {
                keep.push((l.service, l.addr));
            } else {
                close.push(l.id);
            }
        }
        for id in close {
            self.listeners.remove(id.index());
            self.actions.push_back(Action::Unlisten { listener: id });
        }
        for (svc, addr, udp) in wanted {
            if keep.contains(&(svc, addr)) {
                continue;
            }
            let idx = self.listeners.vacant_key();
            if self.lgens.len() <= idx {
                self.lgens.resize(idx + 1, 0);
            }
            self.lgens[idx] = self.lgens[idx].wrapping_add(1);
            let id = ListenerId::new(idx, self.lgens[idx]);
            self.listeners.insert(Listener {
                id,
                service: svc,
                addr,
                state: ListenerState::Opening,
                data: None,
                udp,
            });
            self.actions.push_back(if udp {
                Action::ListenUdp { listener: id, addr }
            } else {
                Action::Listen { listener: id, addr }
            });
        }
        let first = self.worker == 0;
        for w in warnings(self.worker, &config) {
            self.log(Level::Warn, || w);
        }
        if config.limits.buffer != self.pool.buffer_size() {
            // Buffers of the old size drain back and are freed.
            self.pool = Pool::new(
                config.limits.buffer,
                POOL_KEEP.min(config.limits.max_connections as usize * 2),
            );
        }
        self.users = Users::new(&config.users);
        self.config = config;
        // The access log may have been turned on or off: requests from now
        // on are recorded, or not, on connections already open too.
        let logged = self.access_logged();
        for (_, s) in self.sessions.iter_mut() {
            if let Some(h) = s.http.as_mut() {
                h.logged = logged;
            }
        }
        let mut closed = 0;
        if recheck {
            let ids: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
            for idx in ids {
                let s = &self.sessions[idx];
                if s.refusing.is_some() {
                    continue;
                }
                let svc = &self.services[s.service];
                let host = match &s.target {
                    t if t.parse::<SocketAddr>().is_ok() => None,
                    t => t
                        .rsplit_once(':')
                        .map(|(h, _)| h.trim_start_matches("http://")),
                };
                let q = Query {
                    service: &svc.name,
                    client: s.client.ip(),
                    user: s.user.as_deref(),
                    host,
                    addr: s.upstream.map(|a| Self::rule_ip(a.ip())),
                    port: s.upstream.map(|a| a.port()),
                };
                let denied = svc.retired
                    || matches!(
                        rules::check(&self.config.rules, &q, self.wall),
                        Verdict::Deny { .. }
                    );
                if denied {
                    self.sessions[idx].status = "denied";
                    closed += 1;
                    self.finish(idx, now);
                }
            }
        }
        if !first {
            // Worker 0 reloads last and says it for all.
            return closed;
        }
        closed += closed_elsewhere;
        let open = self.ledger.lock().sessions;
        self.log(Level::Info, || {
            if recheck {
                format!(
                    "configuration reloaded; {closed} connections the new rules deny were \
                     closed, {open} go on"
                )
            } else {
                format!("configuration reloaded; {open} connections go on under the old rules")
            }
        });
        closed
    }

    /// Shutting down and nothing left in flight: the runtime may exit.
    pub fn is_finished(&self) -> bool {
        self.grace_until.is_some() && self.sessions.is_empty() && self.udp.len() == 0
    }

    /// Where the runtime receives a datagram, then reports it with
    /// [`Proxy::handle_datagram`] or [`Proxy::handle_reply`].
    pub fn datagram_buf(&mut self) -> &mut [u8] {
        if self.datagram.len() < crate::udp::MAX_DATAGRAM {
            self.datagram.resize(crate::udp::MAX_DATAGRAM, 0);
        }
        &mut self.datagram
    }

    /// `n` bytes of [`Proxy::datagram_buf`] came from `from` on a UDP
    /// listener.
    pub fn handle_datagram(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        n: usize,
        now: Instant,
    ) {
        let Some(l) = self
            .listener(listener)
            .filter(|l| l.udp && l.state == ListenerState::Open)
        else {
            return;
        };
        if self.grace_until.is_some() {
            return;
        }
        let svc = &self.services[l.service];
        let Some(Target::Addr(dest)) = svc.destination.clone() else {
            // Validation keeps UDP destinations to addresses.
            return;
        };
        let n = n.min(self.datagram.len());
        let name = svc.name.clone();
        let mut todo = Vec::new();
        let max = self.config.limits.max_connections as usize;
        let idle = self.config.limits.udp_idle_timeout;
        let bind = self.config.network.outgoing;
        self.udp.client_datagram(
            listener,
            &name,
            from,
            dest,
            bind,
            &self.datagram[..n],
            max,
            idle,
            now,
            &mut todo,
        );
        self.udp_todo(todo);
    }

    /// `n` bytes of [`Proxy::datagram_buf`] came back on mapping `id`.
    pub fn handle_reply(&mut self, id: UdpId, n: usize, now: Instant) {
        let n = n.min(self.datagram.len());
        let idle = self.config.limits.udp_idle_timeout;
        self.udp.reply(id, &self.datagram[..n], idle, now);
    }

    /// Mapping `id`'s socket could not be made, or failed.
    pub fn handle_udp_failed(&mut self, id: UdpId, now: Instant) {
        let mut todo = Vec::new();
        self.udp.failed(id, now, &mut todo);
        self.udp_todo(todo);
    }

    /// The next datagram to send, and by which socket (a runtime sends
    /// them all after each UDP event; one that cannot be sent is dropped).
    pub fn poll_datagram(&mut self) -> Option<(Via, Vec<u8>)> {
        self.udp.pop()
    }

    fn udp_todo(&mut self, todo: Vec<UdpTodo>) {
        for t in todo {
            if matches!(t, UdpTodo::Access(_)) && !self.access_logged() {
                continue;
            }
            self.actions.push_back(match t {
                UdpTodo::Open {
                    id,
                    bind,
                    destination,
                } => Action::UdpOpen {
                    id,
                    bind,
                    destination,
                },
                UdpTodo::Close { id } => Action::UdpClose { id },
                UdpTodo::Access(r) => Action::Access(r),
            });
        }
    }

    /// Startup listeners not yet reported open.
    pub fn starting(&self) -> usize {
        self.starting
    }
}

#[cfg(test)]
mod size_tests {
    /// An idle connection costs the table one `Session` (no buffer): keep it
    /// small (HAProxy idles at 3.3 KiB per connection, kernel included).
    #[test]
    fn idle_session_is_small() {
        let n = std::mem::size_of::<super::Session>();
        assert!(n <= 640, "Session is {n} bytes");
    }
}
