//! Entry points shared by the fuzz targets in `fuzz/` and the test that
//! replays their corpus on stable Rust.
//!
//! - [`event_sequence`] decodes raw bytes into a configuration and a
//!   sequence of calls a runtime could make (accepts, every [`Event`], time
//!   advancing, reads into [`Proxy::recv_buf`] and writes from
//!   [`Proxy::send_buf`] with counts that may exceed what was lent, stale
//!   ids, shutdown) and checks the table's invariants after every call.
//! - [`config`] feeds the bytes, when they are UTF-8, to
//!   [`crate::config::parse`] and checks the documented invariants of every
//!   configuration it accepts.
//!
//! Both panic (with a message saying which invariant broke) on a bug and
//! return normally on any input the core handles correctly. Neither unwraps
//! anything derived from the input.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::{self, Config, ListenSide, ServiceKind};
use crate::event::{Action, Event, IoKind, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::proxy::{listening_lines, Proxy};

/// Slack allowed in the timer heap on top of twice the table's size (the
/// core rebuilds the heap when it holds more than `2 * len + 64` entries, and
/// finished sessions leave their entry behind until it comes due).
pub const TIMER_SLACK: usize = 64;

/// The bound checked on [`Proxy::timer_entries`]: a small multiple of
/// `len() + 64`.
pub fn timer_bound(len: usize) -> usize {
    2 * (len + TIMER_SLACK)
}

const KINDS: [IoKind; 10] = [
    IoKind::Refused,
    IoKind::Reset,
    IoKind::TimedOut,
    IoKind::HostUnreachable,
    IoKind::NetUnreachable,
    IoKind::PermissionDenied,
    IoKind::AddrInUse,
    IoKind::AddrNotAvailable,
    IoKind::TooManyFiles,
    IoKind::Other,
];

/// The input, read front to back; zeros once it runs out.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn side(&mut self) -> Side {
        if self.byte() & 1 == 0 {
            Side::Client
        } else {
            Side::Upstream
        }
    }

    fn kind(&mut self) -> IoKind {
        KINDS[self.byte() as usize % KINDS.len()]
    }

    /// A read or write count: usually modest, sometimes far larger than any
    /// buffer, sometimes zero.
    fn count(&mut self) -> usize {
        match self.byte() % 8 {
            0 => 0,
            1 => usize::MAX,
            2 => self.u32() as usize,
            3 | 4 => self.byte() as usize + 1,
            _ => self.u16() as usize,
        }
    }
}

/// The limits and services an event-sequence run uses, decoded from the
/// first bytes of the input.
#[derive(Debug, Clone)]
struct Setup {
    max_connections: u32,
    max_per_client: u32,
    buffer: usize,
    connect_ms: u64,
    idle_ms: u64,
    grace_ms: u64,
    services: usize,
    seed: u64,
    debug_log: bool,
    /// Per listener: report `ListenFailed` instead of `Listening`.
    listen_fails: u8,
}

impl Setup {
    fn decode(input: &mut Input<'_>) -> Setup {
        let a = input.byte();
        let b = input.byte();
        let c = input.byte();
        let d = input.byte();
        let e = input.byte();
        Setup {
            max_connections: 1 + (a % 8) as u32,
            max_per_client: 1 + ((a >> 3) % 4) as u32,
            buffer: 1024 * (1 + (a >> 5) as usize % 4),
            connect_ms: 50 * (1 + b as u64),
            idle_ms: 100 * (1 + c as u64),
            grace_ms: 500 * (d % 5) as u64,
            services: 1 + (d >> 3) as usize % 2,
            debug_log: d & 0x80 != 0,
            // Rarely: one listener fails to open (a Fatal a runtime would
            // exit on; the table must still behave).
            listen_fails: if e % 16 == 0 { 1 + (e >> 4) % 3 } else { 0 },
            seed: input.u32() as u64,
        }
    }

    fn toml(&self) -> String {
        let mut t = format!(
            "[limits]\nmax_connections = {}\nmax_per_client = {}\nbuffer = {}\n\
             connect_timeout = \"{}ms\"\nidle_timeout = \"{}ms\"\nshutdown_grace = \"{}ms\"\n",
            self.max_connections,
            self.max_per_client,
            self.buffer,
            self.connect_ms,
            self.idle_ms,
            self.grace_ms
        );
        for i in 0..self.services {
            t.push_str(&format!(
                "\n[[service]]\nname = \"map{i}\"\nkind = \"mapped\"\n\
                 listen = [\"127.0.0.1:{}\"]\ndestination = \"127.0.0.1:{}\"\n",
                8000 + i,
                9000 + i
            ));
        }
        t
    }
}

/// What the fuzzer knows about one connection it was given.
#[derive(Debug)]
struct Model {
    peer: IpAddr,
    service_dest: SocketAddr,
    connected: bool,
    connect_seen: bool,
    /// The interest last told per side, (read, write).
    interest: [(bool, bool); 2],
    shut: [bool; 2],
    /// Bytes read and not yet written, per direction (`up` = client →
    /// upstream); `None` once the fuzzer lied to the core about that
    /// direction (a read it did not make, a write of bytes it was not
    /// shown), after which the content is no longer predictable.
    up: Option<VecDeque<u8>>,
    down: Option<VecDeque<u8>>,
    pattern: u8,
}

impl Model {
    fn dir(&mut self, source: Side) -> &mut Option<VecDeque<u8>> {
        match source {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }
}

fn idx(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

struct Harness {
    setup: Setup,
    proxy: Proxy,
    base: Instant,
    now: Duration,
    listeners: Vec<(ListenerId, SocketAddr)>,
    conns: HashMap<ConnId, Model>,
    /// Live connections in accept order (for picking one by index).
    order: Vec<ConnId>,
    dead: Vec<ConnId>,
    shut_down: bool,
    accesses: u64,
    closes: u64,
    refusals: u64,
    /// A `Connect` action must name the connection just accepted.
    expect_connect: Option<ConnId>,
}

impl Harness {
    fn new(setup: Setup, config: Config) -> Harness {
        let base = Instant::now();
        let mut proxy = Proxy::new(config, setup.seed, base);
        if setup.debug_log {
            proxy.set_log_level(Level::Debug);
        }
        let mut h = Harness {
            setup,
            proxy,
            base,
            now: Duration::ZERO,
            listeners: Vec::new(),
            conns: HashMap::new(),
            order: Vec::new(),
            dead: Vec::new(),
            shut_down: false,
            accesses: 0,
            closes: 0,
            refusals: 0,
            expect_connect: None,
        };
        h.drain();
        assert_eq!(
            h.listeners.len(),
            h.setup.services,
            "one Listen action per listen address"
        );
        for i in 0..h.listeners.len() {
            let (listener, local) = h.listeners[i];
            if h.setup.listen_fails as usize == i + 1 {
                h.proxy.handle(
                    Event::ListenFailed {
                        listener,
                        error: IoKind::AddrInUse,
                    },
                    h.at(),
                );
            } else {
                h.proxy.handle(Event::Listening { listener, local }, h.at());
            }
            h.drain();
        }
        h.check();
        h
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn pick_conn(&mut self, input: &mut Input<'_>) -> ConnId {
        let b = input.byte();
        if b < 200 && !self.order.is_empty() {
            self.order[b as usize % self.order.len()]
        } else if b < 230 && !self.dead.is_empty() {
            self.dead[b as usize % self.dead.len()]
        } else {
            ConnId::from_parts((input.byte() % 16) as u32, (input.byte() % 4) as u32)
        }
    }

    fn pick_listener(&mut self, input: &mut Input<'_>) -> ListenerId {
        let b = input.byte() as usize;
        // One past the end, and far off, name no listener.
        match b % (self.listeners.len() + 2) {
            i if i < self.listeners.len() => self.listeners[i].0,
            i if i == self.listeners.len() => ListenerId(i as u32),
            _ => ListenerId(u32::MAX),
        }
    }

    /// Forgets what a direction holds (the fuzzer lied about it).
    fn taint(&mut self, conn: ConnId, source: Side) {
        if let Some(m) = self.conns.get_mut(&conn) {
            *m.dir(source) = None;
        }
    }

    fn op(&mut self, input: &mut Input<'_>) {
        let code = input.byte();
        match code % 16 {
            0 | 1 => self.accept(input),
            2 => {
                let conn = self.pick_conn(input);
                let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + input.u16() % 1000);
                if let Some(m) = self.conns.get_mut(&conn) {
                    m.connected = true;
                }
                self.proxy.handle(Event::Connected { conn, local }, self.at());
            }
            3 => {
                let conn = self.pick_conn(input);
                let error = input.kind();
                self.proxy
                    .handle(Event::ConnectFailed { conn, error }, self.at());
            }
            4..=6 => self.read(input),
            7 => {
                // A read the runtime did not make into the lent buffer.
                let conn = self.pick_conn(input);
                let side = input.side();
                let n = input.count();
                if n > 0 {
                    self.taint(conn, side);
                }
                self.proxy.handle(Event::Read { conn, side, n }, self.at());
            }
            8 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                if input.byte() & 1 == 1 {
                    // The runtime took the buffer and the read would block.
                    let _ = self.proxy.recv_buf(conn, side);
                }
                self.proxy
                    .handle(Event::ReadBlocked { conn, side }, self.at());
            }
            9 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                self.proxy.handle(Event::Eof { conn, side }, self.at());
            }
            10 | 11 => self.write(input),
            12 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                let error = input.kind();
                self.proxy
                    .handle(Event::IoError { conn, side, error }, self.at());
            }
            13 => {
                match input.byte() % 4 {
                    0 => {
                        let ms = input.u16() as u64;
                        self.now += Duration::from_millis(ms);
                    }
                    1 => {
                        if let Some(t) = self.proxy.poll_timeout() {
                            self.now = self.now.max(t.saturating_duration_since(self.base));
                        }
                    }
                    2 => self.now += Duration::from_millis(input.byte() as u64),
                    _ => {}
                }
                self.timeout();
            }
            14 => match input.byte() % 8 {
                0 => {
                    self.shut_down = true;
                    self.proxy.shutdown(self.at());
                }
                1..=3 => {
                    let listener = self.pick_listener(input);
                    let error = input.kind();
                    self.proxy
                        .handle(Event::AcceptFailed { listener, error }, self.at());
                }
                4 => {
                    let listener = self.pick_listener(input);
                    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), input.u16());
                    self.proxy
                        .handle(Event::Listening { listener, local }, self.at());
                }
                5 => {
                    let listener = self.pick_listener(input);
                    let error = input.kind();
                    self.proxy
                        .handle(Event::ListenFailed { listener, error }, self.at());
                }
                _ => {
                    // Read-only calls must be harmless.
                    let conn = self.pick_conn(input);
                    let side = input.side();
                    let _ = self.proxy.send_buf(conn, side);
                    let _ = self.proxy.listener_service(ListenerId(input.byte() as u32));
                    let _ = self.proxy.stats();
                }
            },
            _ => {
                // An event for an id that was never handed out, or is dead.
                let conn = ConnId::from_parts(input.byte() as u32, input.u32());
                let side = input.side();
                let n = input.count();
                let event = match input.byte() % 6 {
                    0 => Event::Read { conn, side, n },
                    1 => Event::Written { conn, side, n },
                    2 => Event::Eof { conn, side },
                    3 => Event::Connected {
                        conn,
                        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
                    },
                    4 => Event::ConnectFailed {
                        conn,
                        error: input.kind(),
                    },
                    _ => Event::IoError {
                        conn,
                        side,
                        error: input.kind(),
                    },
                };
                if self.conns.contains_key(&conn) {
                    // It happens to name a live connection: the model must
                    // follow what the event does to it.
                    match &event {
                        Event::Read { n, .. } if *n > 0 => self.taint(conn, side),
                        Event::Written { n, .. } if *n > 0 => self.taint(conn, side.other()),
                        Event::Connected { .. } => {
                            if let Some(m) = self.conns.get_mut(&conn) {
                                m.connected = true;
                            }
                        }
                        _ => {}
                    }
                } else {
                    assert!(
                        self.proxy.recv_buf(conn, side).is_none(),
                        "recv_buf lends a buffer for dead id {conn}"
                    );
                    assert!(
                        self.proxy.send_buf(conn, side).is_none(),
                        "send_buf shows bytes for dead id {conn}"
                    );
                }
                let before = (self.proxy.len(), self.proxy.buffers_in_use());
                self.proxy.handle(event.clone(), self.at());
                if !self.conns.contains_key(&conn) {
                    assert_eq!(
                        before,
                        (self.proxy.len(), self.proxy.buffers_in_use()),
                        "an event for dead id {conn} changed the table: {event:?}"
                    );
                    assert!(
                        self.proxy.poll_action().is_none(),
                        "an event for dead id {conn} produced an action: {event:?}"
                    );
                }
            }
        }
        self.drain();
        self.check();
    }

    fn accept(&mut self, input: &mut Input<'_>) {
        let listener = self.pick_listener(input);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + input.byte() % 4));
        let peer = SocketAddr::new(ip, input.u16());
        let same_ip = self.conns.values().filter(|m| m.peer == ip).count();
        let full = self.conns.len() >= self.setup.max_connections as usize;
        let per_client_full = same_ip >= self.setup.max_per_client as usize;
        let service_dest = self
            .listeners
            .iter()
            .position(|(l, _)| *l == listener)
            .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000 + i as u16));
        match self.proxy.accept(listener, peer, self.at()) {
            Ok(conn) => {
                assert!(!full, "accept over max_connections");
                assert!(!per_client_full, "accept over max_per_client for {ip}");
                assert!(!self.shut_down, "accept after shutdown");
                assert!(
                    !self.conns.contains_key(&conn),
                    "accept returned live id {conn} again"
                );
                let service_dest = match service_dest {
                    Some(d) => d,
                    None => panic!("accept succeeded on unknown listener {listener:?}"),
                };
                self.conns.insert(
                    conn,
                    Model {
                        peer: ip,
                        service_dest,
                        connected: false,
                        connect_seen: false,
                        interest: [(false, false); 2],
                        shut: [false; 2],
                        up: Some(VecDeque::new()),
                        down: Some(VecDeque::new()),
                        pattern: conn.index() as u8,
                    },
                );
                self.order.push(conn);
                self.expect_connect = Some(conn);
            }
            Err(Refused::UnknownListener) => {}
            Err(why) => {
                match why {
                    Refused::TooMany => assert!(full, "TooMany with room in the table"),
                    Refused::PerClient => {
                        assert!(per_client_full, "PerClient with room for {ip}")
                    }
                    Refused::ShuttingDown => assert!(self.shut_down, "ShuttingDown before shutdown"),
                    Refused::UnknownListener => {}
                }
                self.refusals += 1;
            }
        }
    }

    fn read(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let pattern = self.conns.get(&conn).map_or(0, |m| m.pattern);
        let lent = match self.proxy.recv_buf(conn, side) {
            Some(buf) => {
                assert!(!buf.is_empty(), "recv_buf lent an empty slice");
                let mut p = pattern;
                for b in buf.iter_mut() {
                    *b = p;
                    p = p.wrapping_mul(31).wrapping_add(7);
                }
                Some(buf.len())
            }
            None => None,
        };
        if let Some(m) = self.conns.get_mut(&conn) {
            match lent {
                Some(len) => {
                    let take = n.min(len);
                    let mut p = m.pattern;
                    let mut bytes = Vec::with_capacity(take);
                    for _ in 0..take {
                        bytes.push(p);
                        p = p.wrapping_mul(31).wrapping_add(7);
                    }
                    m.pattern = p;
                    if let Some(q) = m.dir(side) {
                        q.extend(bytes);
                    }
                }
                None if n > 0 => *m.dir(side) = None,
                None => {}
            }
        } else {
            assert!(lent.is_none(), "recv_buf lent a buffer for dead id {conn}");
        }
        self.proxy.handle(Event::Read { conn, side, n }, self.at());
    }

    fn write(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let shown = self.proxy.send_buf(conn, side).map(|d| d.to_vec());
        match (&shown, self.conns.get_mut(&conn)) {
            (Some(data), Some(m)) => {
                assert!(!data.is_empty(), "send_buf showed an empty slice");
                assert!(
                    !m.shut[idx(side)],
                    "send_buf shows bytes for {conn} {side:?} after ShutdownWrite"
                );
                let dir = m.dir(side.other());
                if let Some(q) = dir {
                    assert!(
                        q.iter().eq(data.iter()),
                        "bytes for {conn} {side:?} differ from what was read: \
                         {} expected, {} shown",
                        q.len(),
                        data.len()
                    );
                    let k = n.min(data.len());
                    q.drain(..k);
                }
            }
            (None, Some(m)) => {
                // Nothing shown: a write of n > 0 bytes is a lie, unless the
                // direction is empty.
                let dir = m.dir(side.other());
                if n > 0 && dir.as_ref().is_some_and(|q| !q.is_empty()) {
                    *dir = None;
                }
            }
            (Some(_), None) => panic!("send_buf shows bytes for dead id {conn}"),
            (None, None) => {}
        }
        self.proxy.handle(Event::Written { conn, side, n }, self.at());
    }

    fn timeout(&mut self) {
        self.proxy.handle_timeout(self.at());
        self.drain();
        if !self.proxy.is_finished() {
            if let Some(t) = self.proxy.poll_timeout() {
                assert!(
                    t > self.at(),
                    "poll_timeout is still due right after handle_timeout: a runtime would spin"
                );
            }
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.proxy.poll_action() {
            self.apply(action);
        }
    }

    fn live(&mut self, conn: ConnId, what: &str) -> &mut Model {
        match self.conns.get_mut(&conn) {
            Some(m) => m,
            None => panic!("{what} for {conn}, which is not live"),
        }
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Listen { listener, addr } => {
                assert!(
                    self.listeners.iter().all(|(l, _)| *l != listener),
                    "Listen twice for {listener:?}"
                );
                self.listeners.push((listener, addr));
            }
            Action::PauseAccept { listener }
            | Action::ResumeAccept { listener }
            | Action::Unlisten { listener } => {
                assert!(
                    self.listeners.iter().any(|(l, _)| *l == listener),
                    "an action names unknown listener {listener:?}"
                );
            }
            Action::Connect { conn, addr, bind } => {
                assert_eq!(
                    self.expect_connect.take(),
                    Some(conn),
                    "Connect for {conn}, which was not just accepted"
                );
                let m = self.live(conn, "Connect");
                assert!(!m.connect_seen, "Connect twice for {conn}");
                m.connect_seen = true;
                assert_eq!(addr, m.service_dest, "Connect to the wrong destination");
                assert_eq!(bind, None, "Connect binds though no outgoing address is set");
            }
            Action::Interest {
                conn,
                side,
                read,
                write,
            } => {
                let m = self.live(conn, "Interest");
                let told = &mut m.interest[idx(side)];
                assert_ne!(
                    *told,
                    (read, write),
                    "Interest for {conn} {side:?} repeated without a change"
                );
                *told = (read, write);
                assert!(
                    !(write && m.shut[idx(side)]),
                    "write interest on {conn} {side:?} after ShutdownWrite"
                );
            }
            Action::ShutdownWrite { conn, side } => {
                let m = self.live(conn, "ShutdownWrite");
                assert!(!m.shut[idx(side)], "ShutdownWrite twice on {conn} {side:?}");
                m.shut[idx(side)] = true;
                if let Some(q) = m.dir(side.other()) {
                    assert!(
                        q.is_empty(),
                        "ShutdownWrite on {conn} {side:?} with {} bytes not yet written",
                        q.len()
                    );
                }
            }
            Action::Close { conn } => {
                assert!(
                    self.conns.remove(&conn).is_some(),
                    "Close for {conn}, which is not live"
                );
                self.order.retain(|c| *c != conn);
                self.dead.push(conn);
                if self.dead.len() > 64 {
                    self.dead.remove(0);
                }
                self.closes += 1;
                if self.expect_connect == Some(conn) {
                    self.expect_connect = None;
                }
            }
            Action::Access(rec) => {
                self.accesses += 1;
                let _ = rec.format(std::time::UNIX_EPOCH, config::LogFormat::Text);
                let _ = rec.format(std::time::UNIX_EPOCH, config::LogFormat::Json);
            }
            Action::Log { message, .. } => assert!(!message.is_empty(), "empty log line"),
            Action::Say(line) => assert!(!line.is_empty(), "empty Say line"),
            Action::Fatal { message } => assert!(!message.is_empty(), "empty Fatal message"),
        }
    }

    fn check(&mut self) {
        let p = &self.proxy;
        let len = p.len();
        assert_eq!(
            len,
            self.conns.len(),
            "the table holds {len} connections, but {} were accepted and not closed",
            self.conns.len()
        );
        assert!(
            len <= self.setup.max_connections as usize,
            "{len} connections over max_connections {}",
            self.setup.max_connections
        );
        let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
        for m in self.conns.values() {
            *per_ip.entry(m.peer).or_default() += 1;
        }
        assert!(
            per_ip
                .values()
                .all(|n| *n <= self.setup.max_per_client as usize),
            "a client holds more than max_per_client connections"
        );
        assert!(
            p.buffers_in_use() <= 2 * len,
            "{} buffers in use for {len} connections",
            p.buffers_in_use()
        );
        assert!(
            p.timer_entries() <= timer_bound(len),
            "{} timer entries for {len} connections",
            p.timer_entries()
        );
        assert_eq!(
            self.accesses,
            self.closes + self.refusals,
            "one access record per closed or refused connection"
        );
        if len == 0 {
            assert_eq!(p.timer_entries(), 0, "timer entries left in an empty table");
            assert_eq!(p.buffers_in_use(), 0, "buffers lent by an empty table");
        }
        for (conn, m) in &self.conns {
            for side in [Side::Client, Side::Upstream] {
                let q = match side {
                    Side::Client => &m.down,
                    Side::Upstream => &m.up,
                };
                let shown = p.send_buf(*conn, side);
                if let (Some(q), Some(data)) = (q, shown) {
                    assert!(
                        q.iter().eq(data.iter()),
                        "bytes waiting for {conn} {side:?} are not the bytes read"
                    );
                }
                if shown.is_some() {
                    assert!(
                        !m.shut[idx(side)],
                        "bytes waiting for {conn} {side:?} after ShutdownWrite"
                    );
                }
                if side == Side::Upstream && !m.connected {
                    assert!(shown.is_none(), "upstream bytes shown before Connected");
                }
            }
        }
        assert_eq!(p.is_finished(), self.shut_down && len == 0, "is_finished");
    }

    /// Ends the run: every peer goes away (or every deadline passes), and
    /// the table must be empty with no timer and no buffer left.
    fn finish(&mut self, how: u8) {
        if how & 1 == 0 {
            let conns: Vec<ConnId> = self.order.clone();
            for conn in conns {
                let side = if how & 2 == 0 {
                    Side::Client
                } else {
                    Side::Upstream
                };
                self.proxy.handle(
                    Event::IoError {
                        conn,
                        side,
                        error: IoKind::Reset,
                    },
                    self.at(),
                );
                self.drain();
                self.check();
            }
            assert_eq!(self.proxy.len(), 0, "connections left after every peer reset");
        }
        let s = &self.setup;
        self.now += Duration::from_millis(s.connect_ms + s.idle_ms + s.grace_ms + 1000);
        self.timeout();
        self.check();
        let p = &self.proxy;
        assert_eq!(p.len(), 0, "connections left after every deadline passed");
        assert_eq!(p.timer_entries(), 0, "timer entries left in an empty table");
        assert_eq!(p.buffers_in_use(), 0, "buffers lent by an empty table");
        if self.shut_down {
            assert!(p.is_finished(), "shut down and empty, but not finished");
        } else {
            assert_eq!(p.poll_timeout(), None, "a deadline left in an empty table");
        }
    }
}

/// Decodes `data` into a configuration and a sequence of runtime calls and
/// checks the connection table's invariants after each one. See the module
/// docs.
pub fn event_sequence(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = Setup::decode(&mut input);
    let text = setup.toml();
    let config = match config::parse(&text, "fuzz.toml") {
        Ok(c) => c,
        Err(e) => panic!("the fuzzer's own configuration was rejected: {e}\n{text}"),
    };
    let mut h = Harness::new(setup, config);
    // The last byte says how the run ends; the rest are operations.
    let how = data.last().copied().unwrap_or(0);
    let ops = data.len().saturating_sub(1);
    while input.pos < ops && !input.is_empty() {
        h.op(&mut input);
    }
    h.finish(how);
}

/// Parses `data` as a configuration file when it is UTF-8 and checks the
/// invariants [`crate::config`] documents for every configuration
/// [`crate::config::parse`] accepts.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for checked in [true, false] {
        let result = if checked {
            config::parse(text, "fuzz.toml")
        } else {
            config::parse_unchecked_kinds(text, "fuzz.toml")
        };
        match result {
            Ok(c) => check_config(&c, checked),
            Err(e) => {
                let lines = text.matches('\n').count() + 1;
                assert!(e.line >= 1 && e.line <= lines, "error line {} of {lines}", e.line);
                assert!(e.column >= 1, "error column {}", e.column);
                assert!(!e.message.is_empty(), "empty error message");
                assert_eq!(e.file, "fuzz.toml");
                let shown = e.to_string();
                assert!(shown.starts_with("fuzz.toml:"), "error shown as {shown:?}");
            }
        }
    }
}

fn check_config(c: &Config, checked: bool) {
    let l = &c.limits;
    let year = Duration::from_secs(365 * 24 * 3600);
    for (name, d) in [
        ("connect_timeout", l.connect_timeout),
        ("handshake_timeout", l.handshake_timeout),
        ("idle_timeout", l.idle_timeout),
        ("udp_idle_timeout", l.udp_idle_timeout),
    ] {
        assert!(d > Duration::ZERO && d <= year, "limits.{name} = {d:?}");
    }
    assert!(l.shutdown_grace <= year, "limits.shutdown_grace");
    assert!(
        (config::MIN_BUFFER..=config::MAX_BUFFER).contains(&l.buffer),
        "limits.buffer = {}",
        l.buffer
    );
    assert!(l.max_connections >= 1 && l.max_per_client >= 1, "limits counts");
    if let Some(w) = c.runtime.workers {
        assert!((1..=config::MAX_WORKERS).contains(&w), "runtime.workers = {w}");
    }

    let n = &c.network;
    assert!(!n.internal.is_empty(), "network.internal is empty");
    for (i, a) in n.internal.iter().enumerate() {
        assert!(!n.internal[..i].contains(a), "network.internal repeats {a}");
        assert!(!n.external.contains(a), "{a} is both internal and external");
    }

    assert!(!c.services.is_empty(), "no service");
    let mut listens: Vec<(SocketAddr, config::Protocol)> = Vec::new();
    for (i, s) in c.services.iter().enumerate() {
        assert!(
            c.services[..i].iter().all(|o| o.name != s.name),
            "service name {:?} twice",
            s.name
        );
        assert!(!s.listen.is_empty(), "service {:?} has no listen address", s.name);
        let side_addrs = match s.side {
            ListenSide::Internal => &n.internal,
            ListenSide::External => &n.external,
        };
        for a in &s.listen {
            assert_ne!(a.port(), 0, "service {:?} listens on port 0", s.name);
            assert!(
                side_addrs.contains(&a.ip()),
                "service {:?} listens on {a}, not an address of its side",
                s.name
            );
            for (o, p) in &listens {
                let same_ip = o.ip() == a.ip()
                    || (o.ip().is_unspecified() && o.is_ipv4() == a.is_ipv4())
                    || (a.ip().is_unspecified() && o.is_ipv4() == a.is_ipv4());
                assert!(
                    !(*p == s.protocol && o.port() == a.port() && same_ip),
                    "listen addresses {o} and {a} overlap"
                );
            }
            listens.push((*a, s.protocol));
        }
        let needs = matches!(
            s.kind,
            ServiceKind::Mapped | ServiceKind::Smtp | ServiceKind::Nntp
        );
        let takes_none = matches!(
            s.kind,
            ServiceKind::Http | ServiceKind::Socks | ServiceKind::Status
        );
        if needs {
            assert!(s.destination.is_some(), "{:?} needs a destination", s.name);
        }
        if takes_none {
            assert!(s.destination.is_none(), "{:?} takes no destination", s.name);
        }
        if let Some(d) = &s.destination {
            assert_ne!(d.port, 0, "destination port 0");
        }
        if s.side == ListenSide::External {
            assert!(
                s.kind == ServiceKind::Mapped || (s.open_proxy && s.kind != ServiceKind::Status),
                "service {:?} is external but neither mapped nor an open proxy",
                s.name
            );
        }
        if s.auth {
            assert!(!c.users.is_empty(), "auth without users");
        }
        if checked {
            assert!(
                config::implemented_kind(s.kind, s.protocol),
                "unimplemented kind {} accepted",
                s.kind
            );
        }
    }
    for (i, u) in c.users.iter().enumerate() {
        assert!(!u.name.is_empty(), "empty user name");
        assert!(
            !u.name.contains(':') && !u.name.chars().any(char::is_control),
            "user name {:?}",
            u.name
        );
        assert!(
            c.users[..i].iter().all(|o| o.name != u.name),
            "user {:?} twice",
            u.name
        );
    }
    for r in &c.rules {
        for s in &r.services {
            assert!(c.service(s).is_some(), "rule names unknown service {s:?}");
        }
        for u in &r.users {
            assert!(c.user(u).is_some(), "rule names unknown user {u:?}");
        }
        if r.rate.is_some() {
            assert_eq!(r.action, config::RuleAction::Allow, "rate on a deny rule");
        }
    }

    let lines = listening_lines(c);
    assert_eq!(lines.len(), listens.len(), "one listening line per listen address");
    assert!(lines.iter().all(|l| l.starts_with("listening: ")));
    let _ = config::warnings(c);

    // A table over it asks for exactly those listeners.
    let mut proxy = Proxy::new(c.clone(), 0, Instant::now());
    let mut listen_actions = 0;
    while let Some(a) = proxy.poll_action() {
        if let Action::Listen { addr, .. } = a {
            assert!(listens.iter().any(|(l, _)| *l == addr), "Listen on {addr}");
            listen_actions += 1;
        }
    }
    assert_eq!(listen_actions, listens.len(), "one Listen per listen address");
}
