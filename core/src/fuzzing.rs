//! Entry points shared by the fuzz targets in `fuzz/` and the test that
//! replays their corpus on stable Rust.
//!
//! - [`event_sequence`] decodes raw bytes into a configuration and a
//!   sequence of calls a runtime could make (accepts, every [`Event`], time
//!   advancing, reads into [`Proxy::recv_buf`] and writes from
//!   [`Proxy::send_bufs`] (both parts) with counts that may exceed what was lent, bytes
//!   spliced past the core while [`Proxy::splice_ok`] allows it (and now
//!   and then when it does not), stale ids, shutdown) and checks the table's invariants after every call.
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
/// core prunes the heap whenever it holds more than `2 * len + 64` entries).
pub const TIMER_SLACK: usize = 64;

/// The bound checked on [`Proxy::timer_entries`] after every call.
pub fn timer_bound(len: usize) -> usize {
    2 * len + TIMER_SLACK
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
    /// A SOCKS service after the mapped ones.
    socks: bool,
    /// An HTTP proxy after those.
    http: bool,
    /// A status page after those.
    status: bool,
    /// SMTP and NNTP gateways after those.
    smtp: bool,
    nntp: bool,
    /// Rules: deny client 10.0.0.4, deny destination 127.0.0.66 and the
    /// name `denied.example`, allow the rest.
    rules: bool,
    /// The first mapped service names its destination (`dest.example`),
    /// so every connection resolves first.
    named: bool,
    handshake_ms: u64,
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
        let f = input.byte();
        let g = input.byte();
        Setup {
            max_connections: 1 + (a % 8) as u32,
            max_per_client: 1 + ((a >> 3) % 4) as u32,
            buffer: 1024 * (1 + (a >> 5) as usize % 4),
            connect_ms: 50 * (1 + b as u64),
            idle_ms: 100 * (1 + c as u64),
            grace_ms: 500 * (d % 5) as u64,
            services: 1 + (d >> 3) as usize % 2,
            socks: f & 1 != 0,
            http: g & 1 != 0,
            status: g & 2 != 0,
            smtp: g & 4 != 0,
            nntp: g & 8 != 0,
            rules: f & 2 != 0,
            named: f & 4 != 0,
            handshake_ms: 100 * (1 + (f >> 3) as u64),
            debug_log: d & 0x80 != 0,
            // Rarely: one listener fails to open (a Fatal a runtime would
            // exit on; the table must still behave).
            listen_fails: if e & 15 == 0 { 1 + (e >> 4) % 3 } else { 0 },
            seed: input.u32() as u64,
        }
    }

    fn toml(&self) -> String {
        let mut t = format!(
            "[limits]\nmax_connections = {}\nmax_per_client = {}\nbuffer = {}\n\
             connect_timeout = \"{}ms\"\nidle_timeout = \"{}ms\"\nshutdown_grace = \"{}ms\"\n\
             handshake_timeout = \"{}ms\"\n",
            self.max_connections,
            self.max_per_client,
            self.buffer,
            self.connect_ms,
            self.idle_ms,
            self.grace_ms,
            self.handshake_ms,
        );
        for i in 0..self.services {
            let host = if i == 0 && self.named {
                "dest.example"
            } else {
                "127.0.0.1"
            };
            t.push_str(&format!(
                "\n[[service]]\nname = \"map{i}\"\nkind = \"mapped\"\n\
                 listen = [\"127.0.0.1:{}\"]\ndestination = \"{host}:{}\"\n",
                8000 + i,
                9000 + i
            ));
        }
        for (name, port, on) in [
            ("socks", 1080, self.socks),
            ("http", 3128, self.http),
            ("status", 8081, self.status),
            ("smtp", 2525, self.smtp),
            ("nntp", 1119, self.nntp),
        ] {
            if on {
                let dest = match name {
                    "smtp" | "nntp" => format!("destination = \"127.0.0.1:{}\"\n", 7000 + port),
                    _ => String::new(),
                };
                t.push_str(&format!(
                    "\n[[service]]\nname = \"{name}\"\nkind = \"{name}\"\n\
                     listen = [\"127.0.0.1:{port}\"]\n{dest}"
                ));
            }
        }
        if self.rules {
            t.push_str(
                "\n[[rule]]\naction = \"deny\"\nclients = [\"10.0.0.4\"]\n\
                 \n[[rule]]\naction = \"deny\"\ndestinations = [\"127.0.0.66\", \"denied.example\"]\n\
                 \n[[rule]]\naction = \"allow\"\n",
            );
        }
        t
    }

    /// The kind of each listener, in order.
    fn kinds(&self) -> Vec<Kind> {
        let mut k = vec![Kind::Mapped; self.services];
        for (kind, on) in [
            (Kind::Socks, self.socks),
            (Kind::Http, self.http),
            (Kind::Status, self.status),
            (Kind::Smtp, self.smtp),
            (Kind::Nntp, self.nntp),
        ] {
            if on {
                k.push(kind);
            }
        }
        k
    }

    fn listeners(&self) -> usize {
        self.kinds().len()
    }

    /// Where every connection of listener `i` goes, when the configuration
    /// says so with an address; `None` for SOCKS and named destinations.
    fn destination(&self, i: usize) -> Option<SocketAddr> {
        (i < self.services && !(i == 0 && self.named))
            .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000 + i as u16))
    }

    fn kind(&self, i: usize) -> Kind {
        self.kinds().get(i).copied().unwrap_or(Kind::Mapped)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mapped,
    Socks,
    Http,
    Status,
    Smtp,
    Nntp,
}

impl Kind {
    /// Kinds that answer a refusal in their own words (the connection is
    /// admitted to hear it).
    fn says_refusal(self) -> bool {
        matches!(self, Kind::Socks | Kind::Http | Kind::Smtp | Kind::Nntp)
    }

    /// What a client of this kind says first.
    fn script(self, pick: u8) -> Vec<u8> {
        match self {
            Kind::Mapped => Vec::new(),
            Kind::Socks => socks_script(pick),
            Kind::Http => http_script(pick),
            Kind::Status => {
                let path =
                    ["/", "/metrics", "/connections", "/healthz", "/nope"][pick as usize % 5];
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
            }
            Kind::Smtp => b"EHLO client\r\nMAIL FROM:<a@example.com>\r\nQUIT\r\n".to_vec(),
            Kind::Nntp => b"GROUP comp.lang.rust\r\nQUIT\r\n".to_vec(),
        }
    }

    /// What the upstream server of this kind says first.
    fn reply(self, pick: u8) -> Vec<u8> {
        match (self, pick % 4) {
            (Kind::Smtp, 0 | 1) => b"220 mail.example ESMTP\r\n250 ok\r\n".to_vec(),
            (Kind::Smtp, 2) => b"554 go away\r\n".to_vec(),
            (Kind::Nntp, 0 | 1) => b"200 news.example ready\r\n".to_vec(),
            (Kind::Nntp, 2) => b"502 no\r\n".to_vec(),
            _ => response_script(pick),
        }
    }
}
/// The address rules deny as a destination (when `rules` is on).
const DENIED_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
/// The client address rules deny (when `rules` is on).
const DENIED_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

/// What a SOCKS client of the fuzzer says first (then payload follows).
fn socks_script(pick: u8) -> Vec<u8> {
    let greet: &[u8] = &[5, 1, 0];
    let port = [0x23, 0x28]; // 9000
    let mut v = Vec::new();
    match pick % 10 {
        0 => {
            v.extend_from_slice(greet);
            v.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 1]);
            v.extend_from_slice(&port);
        }
        1 => {
            v.extend_from_slice(greet);
            v.extend_from_slice(&[5, 1, 0, 3, 9]);
            v.extend_from_slice(b"a.example");
            v.extend_from_slice(&port);
        }
        2 => {
            v.extend_from_slice(greet);
            v.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 66]);
            v.extend_from_slice(&port);
        }
        3 => {
            v.extend_from_slice(&[4, 1]);
            v.extend_from_slice(&port);
            v.extend_from_slice(&[127, 0, 0, 1, 0]);
        }
        4 => {
            v.extend_from_slice(&[4, 1]);
            v.extend_from_slice(&port);
            v.extend_from_slice(&[0, 0, 0, 1, b'u', 0]);
            v.extend_from_slice(b"a.example\0");
        }
        5 => {
            v.extend_from_slice(greet);
            v.extend_from_slice(&[5, 1, 0, 3, 14]);
            v.extend_from_slice(b"denied.example");
            v.extend_from_slice(&port);
        }
        6 => {
            v.extend_from_slice(greet);
            v.extend_from_slice(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]);
        }
        7 => {
            v.extend_from_slice(greet);
            v.extend_from_slice(&[5, 1, 0, 4]);
            v.extend_from_slice(&[0; 15]);
            v.push(1);
            v.extend_from_slice(&port);
        }
        8 => {
            v.extend_from_slice(&[5, 2, 0, 2]);
            v.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 1]);
            v.extend_from_slice(&port);
        }
        _ => v.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n"),
    }
    v
}

/// What an HTTP proxy client of the fuzzer sends first.
fn http_script(pick: u8) -> Vec<u8> {
    let host = "Host: 127.0.0.1:9000\r\n";
    let get = "GET http://127.0.0.1:9000/ HTTP/1.1\r\n";
    let t = match pick % 10 {
        0 => format!("{get}{host}\r\n"),
        1 => "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n".to_string(),
        2 => format!("GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n{get}{host}\r\n"),
        3 => {
            format!("POST http://127.0.0.1:9000/ HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello")
        }
        4 => format!(
            "POST http://127.0.0.1:9000/ HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        ),
        5 => "GET http://denied.example/ HTTP/1.1\r\nHost: denied.example\r\n\r\n".to_string(),
        6 => "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        7 => format!("{get}{host}Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        8 => format!("HEAD http://127.0.0.1:9000/ HTTP/1.1\r\n{host}\r\n{get}{host}\r\n"),
        _ => "CONNECT 127.0.0.66:443 HTTP/1.1\r\nHost: 127.0.0.66:443\r\n\r\n".to_string(),
    };
    t.into_bytes()
}

/// What an upstream server of the fuzzer answers first (an HTTP response;
/// SOCKS and mapped peers take it as payload).
fn response_script(pick: u8) -> Vec<u8> {
    let t = match pick % 8 {
        0 => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        1 => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        2 => "HTTP/1.1 204 No Content\r\n\r\nstray",
        3 => {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        }
        4 => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        5 => "HTTP/1.0 200 OK\r\n\r\nclose-delimited",
        6 => "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        _ => "",
    };
    t.as_bytes().to_vec()
}

/// What the fuzzer knows about one connection it was given.
#[derive(Debug)]
struct Model {
    peer: IpAddr,
    kind: Kind,
    /// Admitted only to be refused in its protocol's words.
    refusing: bool,
    /// Where a `Connect` must go, when the configuration says so.
    dest: Option<SocketAddr>,
    /// A `Connect` is outstanding (not yet answered).
    connecting: bool,
    /// The upstream socket is connected (as far as the core was told).
    connected: bool,
    /// The interest last told per side, (read, write).
    interest: [(bool, bool); 2],
    shut: [bool; 2],
    /// Bytes read and not yet written, per direction (`up` = client →
    /// upstream); `None` once the fuzzer lied to the core about that
    /// direction (a read it did not make, a write of bytes it was not
    /// shown), or for a protocol that speaks itself, after which the
    /// content is no longer predictable.
    up: Option<VecDeque<u8>>,
    down: Option<VecDeque<u8>>,
    /// What the client says first (a protocol's request), and how much of
    /// it was read; the same for the upstream (a response).
    script: Vec<u8>,
    script_pos: usize,
    reply: Vec<u8>,
    reply_pos: usize,
    /// Bytes made up so far (seeds the filler pattern).
    produced: usize,
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
    /// `PORTICO_FUZZ_TRACE=1`: print every operation and action (to replay
    /// a crash by hand).
    trace: bool,
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
            trace: std::env::var_os("PORTICO_FUZZ_TRACE").is_some(),
        };
        h.drain();
        assert_eq!(
            h.listeners.len(),
            h.setup.listeners(),
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

    fn addr(&self, input: &mut Input<'_>) -> SocketAddr {
        let b = input.byte();
        let last = match b % 4 {
            0 | 1 => 1,
            2 => 66,
            _ => 2,
        };
        let port = if b & 0x80 == 0 { 9000 } else { input.u16() };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
    }

    /// Forgets what a direction holds (the fuzzer lied about it).
    fn taint(&mut self, conn: ConnId, source: Side) {
        if let Some(m) = self.conns.get_mut(&conn) {
            *m.dir(source) = None;
        }
    }

    fn op(&mut self, input: &mut Input<'_>) {
        let code = input.byte();
        if self.trace {
            eprintln!(
                "[{:?}] op {} (at byte {}): len {} timers {} next {:?}",
                self.now,
                code % 18,
                input.pos,
                self.proxy.len(),
                self.proxy.timer_entries(),
                self.proxy
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(self.base))
            );
        }
        match code % 18 {
            0 | 1 => self.accept(input),
            2 => {
                let conn = self.pick_conn(input);
                let local =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + input.u16() % 1000);
                if let Some(m) = self.conns.get_mut(&conn) {
                    m.connected |= std::mem::take(&mut m.connecting);
                }
                self.proxy
                    .handle(Event::Connected { conn, local }, self.at());
            }
            3 => {
                let conn = self.pick_conn(input);
                let error = input.kind();
                if let Some(m) = self.conns.get_mut(&conn) {
                    m.connecting = false;
                }
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
                7 => self.splice(input),
                _ => {
                    // Read-only calls must be harmless.
                    let conn = self.pick_conn(input);
                    let side = input.side();
                    let _ = self.proxy.send_buf(conn, side);
                    let _ = self.proxy.splice_ok(conn, side);
                    let _ = self.proxy.listener_service(ListenerId(input.byte() as u32));
                    let _ = self.proxy.stats();
                }
            },
            15 | 16 => {
                let conn = self.pick_conn(input);
                let n = input.byte() % 4;
                if n == 3 && input.byte() & 1 == 0 {
                    self.proxy.handle(Event::ResolveFailed { conn }, self.at());
                } else {
                    let addrs = (0..n).map(|_| self.addr(input)).collect();
                    self.proxy
                        .handle(Event::Resolved { conn, addrs }, self.at());
                }
            }
            _ => self.stale(input),
        }
        self.drain();
        self.check();
    }

    /// An event for an id that was never handed out, or is long dead.
    fn stale(&mut self, input: &mut Input<'_>) {
        let conn = ConnId::from_parts(input.byte() as u32, input.u32());
        let side = input.side();
        let n = input.count();
        let event = match input.byte() % 8 {
            0 => Event::Read { conn, side, n },
            1 if n & 1 == 0 => Event::Written { conn, side, n },
            1 => Event::Spliced {
                conn,
                from: side,
                n,
            },
            2 => Event::Eof { conn, side },
            3 => Event::Connected {
                conn,
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            },
            4 => Event::ConnectFailed {
                conn,
                error: input.kind(),
            },
            5 => Event::ReadBlocked { conn, side },
            6 => Event::Resolved {
                conn,
                addrs: vec![self.addr(input)],
            },
            _ => Event::IoError {
                conn,
                side,
                error: input.kind(),
            },
        };
        if self.conns.contains_key(&conn) {
            // It happens to name a live connection: the model must follow
            // what the event does to it.
            match &event {
                Event::Read { n, .. } if *n > 0 => self.taint(conn, side),
                Event::Written { n, .. } if *n > 0 => self.taint(conn, side.other()),
                Event::Connected { .. } => {
                    if let Some(m) = self.conns.get_mut(&conn) {
                        m.connected |= std::mem::take(&mut m.connecting);
                    }
                }
                Event::ConnectFailed { .. } => {
                    if let Some(m) = self.conns.get_mut(&conn) {
                        m.connecting = false;
                    }
                }
                _ => {}
            }
            self.proxy.handle(event, self.at());
            return;
        }
        assert!(
            self.proxy.recv_buf(conn, side).is_none(),
            "recv_buf lends a buffer for dead id {conn}"
        );
        assert!(
            self.proxy.send_buf(conn, side).is_none(),
            "send_buf shows bytes for dead id {conn}"
        );
        let before = (
            self.proxy.len(),
            self.proxy.buffers_in_use(),
            self.proxy.timer_entries(),
            self.proxy.poll_timeout(),
        );
        self.proxy.handle(event.clone(), self.at());
        let after = (
            self.proxy.len(),
            self.proxy.buffers_in_use(),
            self.proxy.timer_entries(),
            self.proxy.poll_timeout(),
        );
        assert_eq!(
            before, after,
            "an event for dead id {conn} changed the table: {event:?}"
        );
        assert!(
            self.proxy.poll_action().is_none(),
            "an event for dead id {conn} produced an action: {event:?}"
        );
    }

    fn accept(&mut self, input: &mut Input<'_>) {
        let listener = self.pick_listener(input);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + input.byte() % 4));
        let peer = SocketAddr::new(ip, input.u16());
        let script = input.byte();
        let reply = input.byte();
        let served = self.conns.values().filter(|m| !m.refusing);
        let same_ip = served.clone().filter(|m| m.peer == ip).count();
        let full = served.count() >= self.setup.max_connections as usize;
        let per_client_full = same_ip >= self.setup.max_per_client as usize;
        let denied = self.setup.rules && ip == IpAddr::V4(DENIED_CLIENT);
        let refusing_now = self.conns.values().filter(|m| m.refusing).count();
        let index = self.listeners.iter().position(|(l, _)| *l == listener);
        match self.proxy.accept(listener, peer, self.at()) {
            Ok(conn) => {
                let Some(i) = index else {
                    panic!("accept succeeded on unknown listener {listener:?}");
                };
                let kind = self.setup.kind(i);
                assert!(!self.shut_down, "accept after shutdown");
                let refusing = full || per_client_full || denied;
                assert!(
                    !refusing || kind.says_refusal(),
                    "a {kind:?} service admitted a connection over a limit or denied \
                     (full {full}, per client {per_client_full}, denied {denied})"
                );
                if refusing {
                    assert!(
                        refusing_now < crate::proxy::REFUSING_MAX,
                        "more than REFUSING_MAX connections admitted only to be refused"
                    );
                }
                assert!(
                    !self.conns.contains_key(&conn),
                    "accept returned live id {conn} again"
                );
                self.conns.insert(
                    conn,
                    Model {
                        peer: ip,
                        kind,
                        refusing,
                        dest: self.setup.destination(i),
                        connecting: false,
                        connected: false,
                        interest: [(false, false); 2],
                        shut: [false; 2],
                        // A protocol's own words are not modelled.
                        up: (kind == Kind::Mapped).then(VecDeque::new),
                        down: (kind == Kind::Mapped).then(VecDeque::new),
                        script: kind.script(script),
                        script_pos: 0,
                        reply: kind.reply(reply),
                        reply_pos: 0,
                        produced: 0,
                    },
                );
                self.order.push(conn);
            }
            Err(Refused::UnknownListener) => {}
            Err(why) => {
                if let Some(i) = index {
                    let kind = self.setup.kind(i);
                    if kind.says_refusal() && !self.shut_down {
                        assert!(
                            refusing_now >= crate::proxy::REFUSING_MAX,
                            "{kind:?} refused with {why} instead of saying so (room to refuse)"
                        );
                    }
                }
                match why {
                    Refused::TooMany => assert!(full, "TooMany with room in the table"),
                    Refused::PerClient => {
                        assert!(!full && per_client_full, "PerClient with room for {ip}")
                    }
                    Refused::Denied => {
                        assert!(!full && !per_client_full && denied, "Denied {ip}")
                    }
                    Refused::ShuttingDown => {
                        assert!(self.shut_down, "ShuttingDown before shutdown")
                    }
                    _ => {}
                }
                // An HTTP proxy logs per request: its records are not
                // counted per connection.
                if index.is_none_or(|i| self.setup.kind(i) != Kind::Http) {
                    self.refusals += 1;
                }
            }
        }
    }

    fn read(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let mode = input.byte();
        let Some(len) = self.proxy.recv_buf(conn, side).map(|b| b.len()) else {
            if let Some(m) = self.conns.get_mut(&conn) {
                if n > 0 {
                    *m.dir(side) = None;
                }
            }
            self.proxy.handle(Event::Read { conn, side, n }, self.at());
            return;
        };
        assert!(len > 0, "recv_buf lent an empty slice");
        let Some(m) = self.conns.get_mut(&conn) else {
            panic!("recv_buf lent a buffer for dead id {conn}");
        };
        // What the peer sent: the client's script first, or bytes straight
        // from the input, then a filler pattern.
        let mut content = Vec::with_capacity(len);
        if mode & 1 == 0 {
            let (script, pos) = match side {
                Side::Client => (&m.script, &mut m.script_pos),
                Side::Upstream => (&m.reply, &mut m.reply_pos),
            };
            let rest = &script[*pos..];
            let k = rest.len().min(len).min(n);
            content.extend_from_slice(&rest[..k]);
            *pos += k;
        } else {
            let k = (mode as usize >> 1).min(len);
            for _ in 0..k {
                content.push(input.byte());
            }
        }
        while content.len() < len {
            content.push((m.produced + content.len()) as u8 ^ 0x5a);
        }
        let take = n.min(len);
        m.produced += take;
        if let Some(q) = m.dir(side) {
            q.extend(&content[..take]);
        }
        if let Some(buf) = self.proxy.recv_buf(conn, side) {
            assert_eq!(buf.len(), len, "recv_buf changed between two calls");
            buf.copy_from_slice(&content);
        }
        self.proxy.handle(Event::Read { conn, side, n }, self.at());
    }

    fn write(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let shown = self.proxy.send_bufs(conn, side).map(|parts| {
            assert_eq!(
                self.proxy.send_buf(conn, side),
                parts.into_iter().find(|p| !p.is_empty()),
                "send_buf is not the first part of send_bufs"
            );
            parts.concat()
        });
        match (&shown, self.conns.get_mut(&conn)) {
            (Some(data), Some(m)) => {
                assert!(!data.is_empty(), "send_bufs showed nothing");
                assert!(
                    !m.shut[idx(side)],
                    "send_buf shows bytes for {conn} {side:?} after ShutdownWrite"
                );
                if let Some(q) = m.dir(side.other()) {
                    assert!(
                        q.iter().eq(data.iter()),
                        "bytes for {conn} {side:?} differ from what was read: \
                         {} expected, {} shown",
                        q.len(),
                        data.len()
                    );
                    q.drain(..n.min(data.len()));
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
        self.proxy
            .handle(Event::Written { conn, side, n }, self.at());
    }

    /// Bytes moved from `from` to the other side by the runtime itself
    /// (splice(2)): usually when the core allows it, sometimes when it does
    /// not (a confused runtime). They never pass the core's buffers, so the
    /// model of what waits in them stays as it is; an allowed splice finds
    /// nothing waiting.
    fn splice(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let from = input.side();
        let n = input.count();
        let ok = self.proxy.splice_ok(conn, from);
        if ok {
            let Some(m) = self.conns.get(&conn) else {
                panic!("splice_ok for dead id {conn}");
            };
            assert!(
                m.interest[idx(from)].0,
                "splice_ok on {conn} {from:?}, where the core wants no read"
            );
            assert!(
                !m.shut[idx(from.other())],
                "splice_ok on {conn} {from:?} after ShutdownWrite of the other side"
            );
            if let Some(q) = match from {
                Side::Client => &m.up,
                Side::Upstream => &m.down,
            } {
                assert!(
                    q.is_empty(),
                    "splice_ok on {conn} {from:?} with {} bytes waiting in the core",
                    q.len()
                );
            }
            assert!(
                self.proxy.send_buf(conn, from.other()).is_none(),
                "splice_ok on {conn} {from:?} while send_buf shows bytes"
            );
        }
        if !ok && input.byte() & 3 != 0 {
            return;
        }
        self.proxy
            .handle(Event::Spliced { conn, from, n }, self.at());
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
        let rules = self.setup.rules;
        if self.trace {
            eprintln!("    -> {action:?}");
        }
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
            Action::Resolve { conn, host, port } => {
                let m = self.live(conn, "Resolve");
                assert!(
                    !m.refusing,
                    "Resolve for a connection admitted only to refuse"
                );
                assert!(
                    !(rules && host == "denied.example"),
                    "Resolve of a name the rules deny outright"
                );
                if m.kind == Kind::Mapped {
                    assert_eq!((host.as_str(), port), ("dest.example", 9000), "Resolve");
                }
            }
            Action::Connect { conn, addr, bind } => {
                let m = self.live(conn, "Connect");
                assert!(
                    !m.refusing,
                    "Connect for a connection admitted only to refuse"
                );
                assert!(
                    !m.connected,
                    "Connect for {conn}, whose upstream is connected"
                );
                m.connecting = true;
                if let Some(d) = m.dest {
                    assert_eq!(addr, d, "Connect to the wrong destination");
                }
                assert!(
                    !(rules && addr.ip() == IpAddr::V4(DENIED_ADDR)),
                    "Connect to {addr}, which the rules deny"
                );
                assert_eq!(
                    bind, None,
                    "Connect binds though no outgoing address is set"
                );
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
            Action::CloseUpstream { conn } => {
                let m = self.live(conn, "CloseUpstream");
                assert!(m.kind != Kind::Mapped, "CloseUpstream on a mapped port");
                // A new upstream may follow: its socket starts afresh.
                m.connected = false;
                m.connecting = false;
                m.interest[1] = (false, false);
                m.shut[1] = false;
                m.reply_pos = 0;
                m.down = None;
                m.up = None;
            }
            Action::Close { conn } => {
                let Some(m) = self.conns.remove(&conn) else {
                    panic!("Close for {conn}, which is not live");
                };
                if m.kind != Kind::Http {
                    self.closes += 1;
                }
                self.order.retain(|c| *c != conn);
                self.dead.push(conn);
                if self.dead.len() > 64 {
                    self.dead.remove(0);
                }
            }
            Action::Access(rec) => {
                if rec.service.as_ref() != "http" {
                    self.accesses += 1;
                }
                let _ = rec.format(std::time::UNIX_EPOCH, config::LogFormat::Text);
                let _ = rec.format(std::time::UNIX_EPOCH, config::LogFormat::Json);
            }
            Action::Log { message, .. } => assert!(!message.is_empty(), "empty log line"),
            Action::Say(line) => assert!(!line.is_empty(), "empty Say line"),
            Action::Fatal { message } => assert!(!message.is_empty(), "empty Fatal message"),
            #[allow(unreachable_patterns)]
            _ => {}
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
        let served = self.conns.values().filter(|m| !m.refusing).count();
        assert!(
            served <= self.setup.max_connections as usize,
            "{served} connections served, over max_connections {}",
            self.setup.max_connections
        );
        assert!(
            len - served <= crate::proxy::REFUSING_MAX,
            "{} connections only refusing",
            len - served
        );
        let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
        for m in self.conns.values().filter(|m| !m.refusing) {
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
            "one access record per closed or refused connection (HTTP aside)"
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
                let shown = p.send_bufs(*conn, side).map(|parts| parts.concat());
                if let (Some(q), Some(data)) = (q, &shown) {
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
            assert_eq!(
                self.proxy.len(),
                0,
                "connections left after every peer reset"
            );
        }
        // A deadline can lead to a state with a deadline of its own (a
        // failed connect to a protocol's reply, which drains or times out
        // in turn): pass every deadline, a few rounds deep.
        let s = &self.setup;
        let all =
            Duration::from_millis(s.connect_ms + s.idle_ms + s.grace_ms + s.handshake_ms + 1000);
        for _ in 0..4 {
            self.now += all;
            self.timeout();
        }
        self.check();
        let p = &self.proxy;
        assert_eq!(
            p.len(),
            0,
            "connections left after every deadline passed: {p:#?}"
        );
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
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "error line {} of {lines}",
                    e.line
                );
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
    assert!(
        l.max_connections >= 1 && l.max_per_client >= 1,
        "limits counts"
    );
    if let Some(w) = c.runtime.workers {
        assert!(
            (1..=config::MAX_WORKERS).contains(&w),
            "runtime.workers = {w}"
        );
    }

    let n = &c.network;
    assert!(!n.internal.is_empty(), "network.internal is empty");
    for (i, a) in n.internal.iter().enumerate() {
        assert!(!n.internal[..i].contains(a), "network.internal repeats {a}");
        assert!(!n.external.contains(a), "{a} is both internal and external");
    }

    assert!(!c.services.is_empty(), "no service");
    let mut listens: Vec<(SocketAddr, config::Transport)> = Vec::new();
    for (i, s) in c.services.iter().enumerate() {
        assert!(
            c.services[..i].iter().all(|o| o.name != s.name),
            "service name {:?} twice",
            s.name
        );
        assert!(
            !s.listen.is_empty(),
            "service {:?} has no listen address",
            s.name
        );
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
    assert_eq!(
        lines.len(),
        listens.len(),
        "one listening line per listen address"
    );
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
    assert_eq!(
        listen_actions,
        listens.len(),
        "one Listen per listen address"
    );
}

/// The protocol handshakes (SOCKS, POP3, Telnet, FTP, SMTP) as pure
/// machines: the first byte picks the protocol and whether auth is on, the
/// second how the rest is chopped; the client's bytes go to `input`, then
/// (if the machine asked to connect) `connected`, and the same bytes as
/// the server's to `upstream`. Consumed counts never exceed what was given.
pub fn protocol(data: &[u8]) {
    use crate::proto::{for_service, Next, Scope};
    let (Some(&pick), Some(&chop)) = (data.first(), data.get(1)) else {
        return;
    };
    let kinds = ["socks", "pop3", "telnet", "ftp", "smtp"];
    let kind = kinds[pick as usize % kinds.len()];
    let auth = pick & 0x80 != 0 && matches!(kind, "socks" | "telnet");
    let dest = if kind == "smtp" {
        "destination = \"127.0.0.1:25\"\n"
    } else {
        ""
    };
    let text = format!(
        "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
         [[service]]\nname = \"s\"\nkind = \"{kind}\"\nport = 9000\nauth = {auth}\n{dest}"
    );
    let Ok(config) = crate::config::parse(&text, "fuzz.toml") else {
        return;
    };
    let service = &config.services[0];
    let Some(mut hs) = for_service(service) else {
        return;
    };
    let mut users = crate::auth::Users::new(&config.users);
    let client: std::net::SocketAddr = ([127, 0, 0, 1], 40000).into();
    let mut ctx = Scope {
        service,
        users: &mut users,
        client,
    };
    let input = &data[2..];
    let step = (chop as usize % 7) + 1;
    // The high bit: connects fail, and a machine that asks again (Telnet)
    // reads on from where it stopped.
    let connects_fail = chop & 0x80 != 0;
    let mut reply = Vec::new();
    let mut step_now = hs.start(&mut reply, &mut ctx);
    let (mut have, mut used) = (0, 0);
    // Bounded whatever a machine does: each try consumes a line at least.
    for _ in 0..256 {
        while step_now == Next::Wait && have < input.len() {
            have = (have + step).min(input.len());
            let (n, s) = hs.input(&input[used..have], &mut reply, &mut ctx);
            assert!(n <= have - used, "{kind}: consumed more than it was given");
            used += n;
            step_now = s;
        }
        if !(connects_fail && matches!(step_now, Next::Connect { .. })) {
            break;
        }
        hs.failed(crate::proto::Failure::Refused, &mut reply);
        if !hs.asks_again() {
            return;
        }
        // What the client sent behind the failed request is read next.
        step_now = Next::Wait;
        have = used;
    }
    if let Next::Connect { .. } = step_now {
        let mut to_server = Vec::new();
        hs.connected(client, &mut reply, &mut to_server);
        let (mut have, mut used) = (0, 0);
        while have < input.len() {
            have = (have + step).min(input.len());
            let (n, s) = hs.upstream(&input[used..have], &mut reply, &mut to_server);
            assert!(
                n <= have - used,
                "{kind}: consumed more of the server's bytes than given"
            );
            used += n;
            if s != Next::Wait {
                break;
            }
        }
    }
    hs.failed(crate::proto::Failure::Refused, &mut reply);
}
