//! The `event_sequence` target: raw bytes decoded into a configuration and
//! a sequence of calls a runtime could make — accepts, every [`Event`],
//! time advancing, reads into the lent buffer and writes of both parts of
//! what waits, with counts that may exceed what was lent, bytes spliced
//! past the core while splicing is allowed (and now and then when it is
//! not), stale ids, shutdown — played on the shared [`Runtime`], whose
//! checks run after every call along with the decoder's own: the bytes it
//! knows each connection holds, and the limits and refusals its
//! configuration implies.
//!
//! A SOCKS service allows all three commands, so its clients also open UDP
//! associations and BIND listeners: the runtime's answers to those
//! (bound or failed, connections accepted from the peer asked for or
//! another, the handed-over connection established or not) and datagrams
//! from the client's side and from destinations, with headers
//! well-formed or not, are operations of their own.
//!
//! The decoding is fixed: the committed corpus
//! (`fuzz/corpus/event_sequence/`) was found with it and keeps its meaning
//! only as long as the same bytes make the same calls.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::{self, Config};
use crate::event::{Action, Event, IoKind, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::sim::runtime::Runtime;
use crate::table::REFUSING_MAX;
use crate::udp::{Via, MAX_DATAGRAM};

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
    /// A transparent service (its connections come with an original
    /// destination, or without one).
    transparent: bool,
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
            transparent: g & 16 != 0,
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
        if self.transparent {
            t.push_str(
                "\n[[service]]\nname = \"transparent\"\nkind = \"transparent\"\n\
                 listen = [\"127.0.0.1:3130\"]\n",
            );
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

    /// The configuration [`Setup::toml`] parses to. Parsing TOML is most
    /// of what an input costs, and only the services and rules change what
    /// it builds beyond `[limits]`: each shape is parsed once (per thread)
    /// and its limits are set from the setup; a test checks this is what
    /// parsing `toml()` gives.
    fn config(&self) -> Config {
        thread_local! {
            static SHAPES: RefCell<HashMap<u16, Config>> = RefCell::new(HashMap::new());
        }
        let mut c = SHAPES.with(|shapes| {
            shapes
                .borrow_mut()
                .entry(self.shape())
                .or_insert_with(|| {
                    let text = self.toml();
                    config::parse(&text, "fuzz.toml").unwrap_or_else(|e| {
                        panic!("the fuzzer's own configuration was rejected: {e}\n{text}")
                    })
                })
                .clone()
        });
        let l = &mut c.limits;
        l.max_connections = self.max_connections;
        l.max_per_client = self.max_per_client;
        l.buffer = self.buffer;
        l.connect_timeout = Duration::from_millis(self.connect_ms);
        l.idle_timeout = Duration::from_millis(self.idle_ms);
        l.shutdown_grace = Duration::from_millis(self.grace_ms);
        l.handshake_timeout = Duration::from_millis(self.handshake_ms);
        c
    }

    /// What [`Setup::toml`] says outside `[limits]`.
    fn shape(&self) -> u16 {
        [
            self.services == 2,
            self.socks,
            self.http,
            self.status,
            self.smtp,
            self.nntp,
            self.rules,
            self.named,
            self.transparent,
        ]
        .iter()
        .fold(0, |acc, &bit| acc << 1 | u16::from(bit))
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
            (Kind::Transparent, self.transparent),
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
    Transparent,
}

/// A transparent service's listener.
const TRANSPARENT_AT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3130);

/// A TLS ClientHello record naming `sni`.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let n = sni.len() as u16;
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(n + 5).to_be_bytes());
    ext.extend_from_slice(&(n + 3).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&n.to_be_bytes());
    ext.extend_from_slice(sni);
    let mut ch = vec![3, 3];
    ch.extend_from_slice(&[7; 32]);
    ch.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    ch.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    ch.extend_from_slice(&ext);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(ch.len() as u16 + 4).to_be_bytes());
    rec.extend_from_slice(&[1, 0]);
    rec.extend_from_slice(&(ch.len() as u16).to_be_bytes());
    rec.extend_from_slice(&ch);
    rec
}

impl Kind {
    /// Kinds that answer a refusal in their own words (the connection is
    /// admitted to hear it).
    fn says_refusal(self) -> bool {
        matches!(
            self,
            Kind::Socks | Kind::Http | Kind::Smtp | Kind::Nntp | Kind::Transparent
        )
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
            // What an intercepted client says first: a request whose Host
            // names a destination (allowed or denied), a ClientHello, or
            // nothing (its server speaks first).
            Kind::Transparent => match pick % 5 {
                0 => b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec(),
                1 => b"GET / HTTP/1.1\r\nHost: denied.example\r\n\r\n".to_vec(),
                2 => client_hello(b"a.example"),
                3 => client_hello(b"denied.example"),
                _ => Vec::new(),
            },
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

/// What a SOCKS client says first in the operations added with UDP
/// ASSOCIATE and BIND (the older scripts keep their numbers).
fn socks_more_script(pick: u8) -> Vec<u8> {
    let greet: &[u8] = &[5, 1, 0];
    let mut v = greet.to_vec();
    match pick % 8 {
        // UDP ASSOCIATE, any source port.
        0 => v.extend_from_slice(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]),
        // From port 5000 of the client's address (as named).
        1 => v.extend_from_slice(&[5, 3, 0, 1, 10, 0, 0, 1, 0x13, 0x88]),
        // From [::]:5000, a name, and then bytes on the control
        // connection.
        2 => {
            v.extend_from_slice(&[5, 3, 0, 4]);
            v.extend_from_slice(&[0; 16]);
            v.extend_from_slice(&[0x13, 0x88]);
        }
        3 => {
            v.extend_from_slice(&[5, 3, 0, 3, 9]);
            v.extend_from_slice(b"a.example");
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(b"noise");
        }
        // BIND toward 127.0.0.1:9000, toward a denied address, toward a
        // name.
        4 => v.extend_from_slice(&[5, 2, 0, 1, 127, 0, 0, 1, 0x23, 0x28]),
        5 => v.extend_from_slice(&[5, 2, 0, 1, 127, 0, 0, 66, 0x23, 0x28]),
        6 => {
            v.extend_from_slice(&[5, 2, 0, 3, 9]);
            v.extend_from_slice(b"a.example");
            v.extend_from_slice(&[0x23, 0x28]);
        }
        // SOCKS4 BIND.
        _ => v = vec![4, 2, 0x23, 0x28, 127, 0, 0, 1, 0],
    }
    v
}

/// An RFC 1928 UDP request header (or something that fails to be one).
fn udp_header(pick: u8, input: &mut Input<'_>) -> Vec<u8> {
    let port = [0x23, 0x28];
    let mut v = vec![0, 0];
    match pick % 10 {
        0 | 1 => v.extend_from_slice(&[0, 1, 127, 0, 0, 1]),
        2 => v.extend_from_slice(&[0, 1, 127, 0, 0, 66]),
        3 => {
            v.extend_from_slice(&[0, 3, 9]);
            v.extend_from_slice(b"a.example");
        }
        4 => {
            v.extend_from_slice(&[0, 3, 14]);
            v.extend_from_slice(b"denied.example");
        }
        5 => {
            v.extend_from_slice(&[0, 4]);
            v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        }
        // A fragment, an unknown address type, a header cut short.
        6 => v.extend_from_slice(&[1 + input.byte() % 255, 1, 127, 0, 0, 1]),
        7 => v.extend_from_slice(&[0, input.byte(), 127, 0, 0, 1]),
        8 => {
            let n = input.byte() % 8;
            v = vec![0, 0, 0, 1, 127, 0, 0, 1, 0x23];
            v.truncate(n as usize);
            return v;
        }
        // Straight from the input.
        _ => {
            let n = input.byte() % 32;
            return (0..n).map(|_| input.byte()).collect();
        }
    }
    v.extend_from_slice(&port);
    v
}

/// Appends a payload: a few bytes from the input, or a larger run.
fn payload(v: &mut Vec<u8>, input: &mut Input<'_>) {
    let b = input.byte();
    if b & 0x80 == 0 {
        v.extend((0..b % 16).map(|_| input.byte()));
    } else {
        let n = (b as usize & 0x7f) * 64;
        v.extend((0..n).map(|i| i as u8));
    }
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

/// Fills `buf` with the pattern a peer sends after its script, from the
/// `at`th byte it made up: byte `i` is `i as u8 ^ 0x5a` (copied from a
/// table: a byte at a time, under the fuzzer's instrumentation, costs
/// more than the rest of a read).
fn filler(buf: &mut [u8], at: usize) {
    const PATTERN: [u8; 512] = {
        let mut p = [0; 512];
        let mut i = 0;
        while i < 512 {
            p[i] = i as u8 ^ 0x5a;
            i += 1;
        }
        p
    };
    let mut from = at % 256;
    for chunk in buf.chunks_mut(256) {
        chunk.copy_from_slice(&PATTERN[from..from + chunk.len()]);
        from = (from + chunk.len()) % 256;
    }
}

/// Whether the bytes `q` holds are those of `parts`, in order (compared
/// a run at a time, without copying).
fn same(q: &VecDeque<u8>, parts: [&[u8]; 2]) -> bool {
    if q.len() != parts[0].len() + parts[1].len() {
        return false;
    }
    let (mut a, mut b) = q.as_slices();
    for mut part in parts {
        while !part.is_empty() {
            if a.is_empty() {
                (a, b) = (b, &[]);
            }
            let k = a.len().min(part.len());
            if a[..k] != part[..k] {
                return false;
            }
            (a, part) = (&a[k..], &part[k..]);
        }
    }
    true
}

/// What the fuzzer knows about one connection it was given, beyond what
/// the runtime holds of its sockets.
#[derive(Debug)]
struct Model {
    kind: Kind,
    /// Where a `Connect` must go, when the configuration says so.
    dest: Option<SocketAddr>,
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

struct Harness {
    setup: Setup,
    rt: Runtime,
    conns: HashMap<ConnId, Model>,
    /// Live connections in accept order (for picking one by index).
    order: Vec<ConnId>,
    dead: Vec<ConnId>,
    accesses: u64,
    closes: u64,
    refusals: u64,
    /// `PORTICO_FUZZ_TRACE=1`: print every operation and action (to replay
    /// a crash by hand).
    trace: bool,
    /// SOCKS UDP associations asked for and not yet answered.
    assoc_asked: Vec<ConnId>,
    /// SOCKS BIND listeners asked for, with the address each was asked
    /// toward (the peer the client expects).
    bind_toward: HashMap<ConnId, SocketAddr>,
    /// BIND listeners asked for and not yet answered.
    bind_asked: Vec<ConnId>,
    /// Accepted BIND connections handed over, with their attempt.
    taken: Vec<(ConnId, u32)>,
}

impl Harness {
    fn new(setup: Setup, config: Config) -> Harness {
        let mut rt = Runtime::new(config, setup.seed, Instant::now());
        // A listener that fails to open is fatal to a runtime; the table
        // must still behave.
        rt.fatal_ok = true;
        // What it needs of the records, it counts as they come.
        rt.collect = false;
        if setup.debug_log {
            rt.set_log_level(Level::Debug);
        }
        let trace = std::env::var_os("PORTICO_FUZZ_TRACE").is_some();
        rt.live = trace;
        let mut h = Harness {
            setup,
            rt,
            conns: HashMap::new(),
            order: Vec::new(),
            dead: Vec::new(),
            accesses: 0,
            closes: 0,
            refusals: 0,
            trace,
            assoc_asked: Vec::new(),
            bind_toward: HashMap::new(),
            bind_asked: Vec::new(),
            taken: Vec::new(),
        };
        h.drain();
        assert_eq!(
            h.rt.listeners().len(),
            h.setup.listeners(),
            "one Listen action per listen address"
        );
        for i in 0..h.setup.listeners() {
            let (listener, local) = (h.rt.listeners()[i].id, h.rt.listeners()[i].asked);
            if h.setup.listen_fails as usize == i + 1 {
                let error = IoKind::AddrInUse;
                h.rt.handle(Event::ListenFailed { listener, error });
            } else {
                h.rt.handle(Event::Listening { listener, local });
            }
            h.drain();
        }
        h.check();
        h
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
        let listeners = self.rt.listeners();
        // One past the end, and far off, name no listener.
        match b % (listeners.len() + 2) {
            i if i < listeners.len() => listeners[i].id,
            i if i == listeners.len() => ListenerId(i as u32),
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
                self.rt.now(),
                code % 18,
                input.pos,
                self.rt.len(),
                self.rt.timer_entries(),
                self.rt.deadline()
            );
        }
        match code % 18 {
            0 | 1 => self.accept(input),
            2 => {
                let conn = self.pick_conn(input);
                let attempt = self.pick_attempt(conn, input);
                let local =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + input.u16() % 1000);
                self.rt.handle(Event::Connected {
                    conn,
                    attempt,
                    local,
                });
            }
            3 => {
                let conn = self.pick_conn(input);
                let attempt = self.pick_attempt(conn, input);
                let error = input.kind();
                self.rt.handle(Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                });
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
                self.rt.handle(Event::Read { conn, side, n });
            }
            8 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                if input.byte() & 1 == 1 {
                    // The runtime took the buffer and the read would block.
                    let _ = self.rt.lend(conn, side);
                }
                self.rt.handle(Event::ReadBlocked { conn, side });
            }
            9 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                self.rt.handle(Event::Eof { conn, side });
            }
            10 | 11 => self.write(input),
            12 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                let error = input.kind();
                self.rt.handle(Event::IoError { conn, side, error });
            }
            13 => {
                match input.byte() % 4 {
                    0 => {
                        let ms = input.u16() as u64;
                        self.rt.advance(Duration::from_millis(ms));
                    }
                    1 => {
                        if let Some(t) = self.rt.deadline() {
                            self.rt.set_now(self.rt.now().max(t));
                        }
                    }
                    2 => self.rt.advance(Duration::from_millis(input.byte() as u64)),
                    _ => {}
                }
                self.timeout();
            }
            14 => match input.byte() % 8 {
                0 => self.rt.shutdown(),
                1..=3 => {
                    let listener = self.pick_listener(input);
                    let error = input.kind();
                    self.rt.handle(Event::AcceptFailed { listener, error });
                }
                4 => {
                    let listener = self.pick_listener(input);
                    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), input.u16());
                    self.rt.handle(Event::Listening { listener, local });
                }
                5 => {
                    let listener = self.pick_listener(input);
                    let error = input.kind();
                    self.rt.handle(Event::ListenFailed { listener, error });
                }
                7 => self.splice(input),
                // SOCKS UDP associations and BIND (added after the rest:
                // it replaced read-only calls, which it still makes).
                6 => self.socks_op(input),
                _ => self.read_only(input),
            },
            15 | 16 => {
                let conn = self.pick_conn(input);
                let n = input.byte() % 4;
                if n == 3 && input.byte() & 1 == 0 {
                    self.rt.handle(Event::ResolveFailed { conn });
                } else {
                    let addrs = (0..n).map(|_| self.addr(input)).collect();
                    self.rt.handle(Event::Resolved { conn, addrs });
                }
            }
            _ => self.stale(input),
        }
        self.drain();
        self.check();
    }

    /// A connect attempt of `conn` to answer: mostly one in flight, else
    /// any number (one long given up on, or never asked for).
    fn pick_attempt(&self, conn: ConnId, input: &mut Input<'_>) -> u32 {
        let pick = input.byte();
        match self.rt.conn(conn).map(|s| &s.attempts) {
            Some(a) if !a.is_empty() && !pick.is_multiple_of(4) => a[pick as usize % a.len()].0,
            // Never LATEST_ATTEMPT: only format-1 traces say that.
            _ => input.u32() % crate::LATEST_ATTEMPT,
        }
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
                attempt: input.u32() % crate::LATEST_ATTEMPT,
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            },
            4 => Event::ConnectFailed {
                conn,
                attempt: input.u32() % crate::LATEST_ATTEMPT,
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
        if !self.rt.is_live(conn) {
            return self.rt.handle_stale(conn, side, event);
        }
        // It happens to name a live connection: the model must follow what
        // the event does to it.
        match &event {
            Event::Read { n, .. } if *n > 0 => self.taint(conn, side),
            Event::Written { n, .. } if *n > 0 => self.taint(conn, side.other()),
            _ => {}
        }
        self.rt.handle(event);
    }

    fn accept(&mut self, input: &mut Input<'_>) {
        self.accept_with(input, None);
    }

    /// An accept whose client says `script` first (a SOCKS one's) instead
    /// of its kind's own.
    fn accept_with(&mut self, input: &mut Input<'_>, script_override: Option<Vec<u8>>) {
        let listener = self.pick_listener(input);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + input.byte() % 4));
        let peer = SocketAddr::new(ip, input.u16());
        let script = input.byte();
        let reply = input.byte();
        let served = self.rt.conns().filter(|s| !s.refusing);
        let same_ip = served.clone().filter(|s| s.peer.ip() == ip).count();
        let full = served.count() >= self.setup.max_connections as usize;
        let per_client_full = same_ip >= self.setup.max_per_client as usize;
        let denied = self.setup.rules && ip == IpAddr::V4(DENIED_CLIENT);
        let refusing_now = self.rt.conns().filter(|s| s.refusing).count();
        let index = self.rt.listeners().iter().position(|l| l.id == listener);
        // A transparent service's connection: where it was going (or, not
        // redirected, nothing or the port itself).
        let transparent = index.is_some_and(|i| self.setup.kind(i) == Kind::Transparent);
        let original = transparent.then(|| match input.byte() % 8 {
            0 => None,
            1 => Some(TRANSPARENT_AT),
            2 => Some(SocketAddr::new(IpAddr::V4(DENIED_ADDR), 80)),
            b => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                9100 + u16::from(b),
            )),
        });
        let redirected = original.flatten().filter(|a| *a != TRANSPARENT_AT);
        let accepted = match original {
            Some(o) => self.rt.accept_to(listener, peer, None, o),
            None => self.rt.accept(listener, peer, None),
        };
        match accepted {
            Ok(conn) => {
                let Some(i) = index else {
                    panic!("accept succeeded on unknown listener {listener:?}");
                };
                let kind = self.setup.kind(i);
                let refusing = full || per_client_full || denied;
                assert!(
                    !refusing || kind.says_refusal(),
                    "a {kind:?} service admitted a connection over a limit or denied \
                     (full {full}, per client {per_client_full}, denied {denied})"
                );
                if refusing {
                    assert!(
                        refusing_now < REFUSING_MAX,
                        "more than REFUSING_MAX connections admitted only to be refused"
                    );
                }
                self.rt.set_refusing(conn, refusing);
                self.conns.insert(
                    conn,
                    Model {
                        kind,
                        // A peek never moves a direct connection.
                        dest: if kind == Kind::Transparent {
                            assert!(redirected.is_some(), "a connection not redirected admitted");
                            redirected
                        } else {
                            self.setup.destination(i)
                        },
                        // A protocol's own words are not modelled.
                        up: (kind == Kind::Mapped).then(VecDeque::new),
                        down: (kind == Kind::Mapped).then(VecDeque::new),
                        script: match script_override {
                            Some(s) if kind == Kind::Socks => s,
                            _ => kind.script(script),
                        },
                        script_pos: 0,
                        reply: kind.reply(reply),
                        reply_pos: 0,
                        produced: 0,
                    },
                );
                self.order.push(conn);
            }
            Err(Refused::UnknownListener) => {}
            Err(Refused::NotRedirected) => {
                assert!(
                    transparent && redirected.is_none(),
                    "refused as not redirected: {original:?} on listener {index:?}"
                );
                self.refusals += 1;
            }
            Err(why) => {
                let shut_down = self.rt.is_shut_down();
                if let Some(i) = index {
                    let kind = self.setup.kind(i);
                    if kind.says_refusal() && !shut_down {
                        assert!(
                            refusing_now >= REFUSING_MAX,
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
                    Refused::ShuttingDown => assert!(shut_down, "ShuttingDown before shutdown"),
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
        let conns = &mut self.conns;
        let read = self.rt.recv(conn, side, |buf| {
            let len = buf.len();
            let m = conns
                .get_mut(&conn)
                .expect("a model of every live connection");
            // What the peer sent: the client's script first, or bytes
            // straight from the input, then a filler pattern; written
            // straight into the lent buffer.
            let at = if mode & 1 == 0 {
                let (script, pos) = match side {
                    Side::Client => (&m.script, &mut m.script_pos),
                    Side::Upstream => (&m.reply, &mut m.reply_pos),
                };
                let rest = &script[*pos..];
                let k = rest.len().min(len).min(n);
                buf[..k].copy_from_slice(&rest[..k]);
                *pos += k;
                k
            } else {
                let k = (mode as usize >> 1).min(len);
                for b in &mut buf[..k] {
                    *b = input.byte();
                }
                k
            };
            filler(&mut buf[at..], m.produced + at);
            let take = n.min(len);
            m.produced += take;
            if let Some(q) = m.dir(side) {
                q.extend(&buf[..take]);
            }
            n
        });
        if read.is_none() {
            // Nothing lent: a read of n > 0 bytes is a lie.
            if n > 0 {
                self.taint(conn, side);
            }
            self.rt.handle(Event::Read { conn, side, n });
        }
    }

    fn write(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let shown = self.rt.send_buf(conn, side);
        match (shown, self.conns.get_mut(&conn)) {
            (Some(parts), Some(m)) => {
                if let Some(q) = m.dir(side.other()) {
                    let len = parts[0].len() + parts[1].len();
                    assert!(
                        same(q, parts),
                        "bytes for {conn} {side:?} differ from what was read: \
                         {} expected, {len} shown",
                        q.len(),
                    );
                    q.drain(..n.min(len));
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
            _ => {}
        }
        self.rt.handle(Event::Written { conn, side, n });
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
        let ok = self.rt.splice_ok(conn, from);
        if let Some(m) = self.conns.get(&conn).filter(|_| ok) {
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
        }
        if !ok && input.byte() & 3 != 0 {
            return;
        }
        self.rt.handle(Event::Spliced { conn, from, n });
    }

    fn timeout(&mut self) {
        self.rt.handle_timeout();
        self.drain();
        self.rt.assert_not_due();
    }

    fn drain(&mut self) {
        while let Some(action) = self.rt.poll() {
            self.apply(action);
        }
        // Datagrams go out by an association's socket only while it is
        // open.
        for (via, bytes) in self.rt.datagrams() {
            assert!(bytes.len() <= MAX_DATAGRAM, "a datagram over the limit");
            match via {
                Via::Association { conn, .. } => assert!(
                    self.rt.associations.contains(&conn),
                    "a datagram by {conn}'s association, which has no sockets"
                ),
                other => panic!("a datagram by {other:?}, which the fuzzer never opened"),
            }
        }
    }

    /// Read-only calls must be harmless.
    fn read_only(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let _ = self.rt.send_buf(conn, side);
        let _ = self.rt.splice_ok(conn, side);
        let _ = self.rt.listener_service(ListenerId(input.byte() as u32));
        let _ = self.rt.stats();
    }

    /// A connection with a pending item in `list` (mostly), else any.
    fn pick_in(&mut self, list: &[ConnId], input: &mut Input<'_>) -> ConnId {
        let b = input.byte();
        if b < 224 && !list.is_empty() {
            list[b as usize % list.len()]
        } else {
            self.pick_conn(input)
        }
    }

    /// The SOCKS UDP association and BIND operations.
    fn socks_op(&mut self, input: &mut Input<'_>) {
        match input.byte() % 8 {
            0 => {
                let pick = input.byte();
                self.accept_with(input, Some(socks_more_script(pick)));
            }
            1 => {
                let list = self.assoc_asked.clone();
                let conn = self.pick_in(&list, input);
                self.assoc_asked.retain(|c| *c != conn);
                let b = input.byte();
                let event = if b & 3 == 3 {
                    Event::UdpBindFailed {
                        conn,
                        error: input.kind(),
                    }
                } else {
                    let ip = if b & 4 == 0 {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                    };
                    Event::UdpBound {
                        conn,
                        local: SocketAddr::new(ip, 50000 + input.u16() % 1000),
                    }
                };
                self.rt.handle(event);
            }
            2 => {
                let list = self.bind_asked.clone();
                let conn = self.pick_in(&list, input);
                self.bind_asked.retain(|c| *c != conn);
                let event = if input.byte() & 3 == 3 {
                    Event::BindFailed {
                        conn,
                        error: input.kind(),
                    }
                } else {
                    let local = SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        51000 + input.u16() % 1000,
                    );
                    Event::BindListening { conn, local }
                };
                self.rt.handle(event);
            }
            3 => {
                // From the client's side: its address (or another), a
                // header well-formed or not, then payload.
                let list = self.rt.associations.clone();
                let conn = self.pick_in(&list, input);
                let b = input.byte();
                let ip = match (b & 3, self.rt.conn(conn).map(|s| s.peer.ip())) {
                    (0..=2, Some(ip)) => ip,
                    (3, _) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                    _ => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                };
                let port = if b & 4 == 0 { 5000 } else { input.u16() };
                let mut bytes = udp_header(input.byte(), input);
                payload(&mut bytes, input);
                self.rt
                    .association_datagram(conn, false, SocketAddr::new(ip, port), &bytes);
            }
            4 => {
                // From a destination (one the client sent to, or not).
                let list = self.rt.associations.clone();
                let conn = self.pick_in(&list, input);
                let from = match input.byte() % 4 {
                    0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000),
                    // As a dual-stack socket names an IPv4 peer.
                    1 => SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 9000),
                    2 => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9000),
                    _ => self.addr(input),
                };
                let mut bytes = Vec::new();
                payload(&mut bytes, input);
                self.rt.association_datagram(conn, true, from, &bytes);
            }
            5 => {
                // A connection reaches a BIND listener: from the address
                // asked toward, or from elsewhere.
                let list: Vec<ConnId> = self.rt.bind_listeners.clone();
                let conn = self.pick_in(&list, input);
                let b = input.byte();
                let ip = match (b & 1, self.bind_toward.get(&conn)) {
                    (0, Some(t)) => t.ip(),
                    _ => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (b >> 1) % 64)),
                };
                let peer = SocketAddr::new(ip, 30000 + input.u16() % 1000);
                self.rt.handle(Event::BindAccepted { conn, peer });
            }
            6 => {
                // The connection a BindTake handed over: established, or
                // gone.
                let b = input.byte();
                let (conn, attempt) = match self.taken.get(b as usize % self.taken.len().max(1)) {
                    Some(&t) if b < 240 => t,
                    _ => {
                        let conn = self.pick_conn(input);
                        (conn, self.pick_attempt(conn, input))
                    }
                };
                let event = if input.byte() & 3 == 3 {
                    Event::ConnectFailed {
                        conn,
                        attempt,
                        error: input.kind(),
                    }
                } else {
                    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 51000);
                    Event::Connected {
                        conn,
                        attempt,
                        local,
                    }
                };
                self.rt.handle(event);
            }
            _ => self.read_only(input),
        }
    }

    fn model(&mut self, conn: ConnId) -> &mut Model {
        // The runtime checked the connection is live.
        self.conns
            .get_mut(&conn)
            .expect("a model of every live connection")
    }

    /// What the fuzzer's own knowledge says of an action (the runtime has
    /// checked what any runtime can).
    fn apply(&mut self, action: Action) {
        let rules = self.setup.rules;
        match action {
            Action::Resolve { conn, host, port } => {
                assert!(
                    !(rules && host == "denied.example"),
                    "Resolve of a name the rules deny outright"
                );
                if self.model(conn).kind == Kind::Mapped {
                    assert_eq!((host.as_str(), port), ("dest.example", 9000), "Resolve");
                }
                assert!(
                    self.model(conn).kind != Kind::Transparent,
                    "Resolve of {host} for an intercepted connection, which goes to its \
                     original address"
                );
            }
            Action::Connect { conn, addr, .. } => {
                let replaced = self.rt.conn(conn).is_some_and(|s| s.replaced);
                assert!(!replaced, "Connect for {conn}, whose upstream is connected");
                if let Some(d) = self.model(conn).dest {
                    assert_eq!(addr, d, "Connect to the wrong destination");
                }
                assert!(
                    !(rules && addr.ip() == IpAddr::V4(DENIED_ADDR)),
                    "Connect to {addr}, which the rules deny"
                );
            }
            Action::ShutdownWrite { conn, side } => {
                if let Some(q) = self.model(conn).dir(side.other()) {
                    assert!(
                        q.is_empty(),
                        "ShutdownWrite on {conn} {side:?} with {} bytes not yet written",
                        q.len()
                    );
                }
            }
            Action::CloseUpstream { conn } => {
                let m = self.model(conn);
                assert!(m.kind != Kind::Mapped, "CloseUpstream on a mapped port");
                // A new upstream may follow: its bytes start afresh.
                m.reply_pos = 0;
                m.down = None;
                m.up = None;
            }
            Action::UdpAssociate { conn, .. } => self.assoc_asked.push(conn),
            Action::BindListen { conn, toward, .. } => {
                self.bind_toward.insert(conn, toward);
                self.bind_asked.push(conn);
            }
            Action::BindTake { conn, attempt } => {
                self.taken.push((conn, attempt));
                if self.taken.len() > 16 {
                    self.taken.remove(0);
                }
            }
            Action::Close { conn } => {
                self.assoc_asked.retain(|c| *c != conn);
                self.bind_asked.retain(|c| *c != conn);
                self.bind_toward.remove(&conn);
                if self.model(conn).kind != Kind::Http {
                    self.closes += 1;
                }
                self.conns.remove(&conn);
                self.order.retain(|c| *c != conn);
                self.dead.push(conn);
                if self.dead.len() > 64 {
                    self.dead.remove(0);
                }
            }
            // An HTTP proxy logs per request: not counted per connection.
            Action::Access(rec) if rec.service.as_ref() != "http" => self.accesses += 1,
            _ => {}
        }
    }

    fn check(&mut self) {
        self.rt.check();
        assert_eq!(
            self.accesses,
            self.closes + self.refusals,
            "one access record per closed or refused connection (HTTP aside)"
        );
        for (conn, m) in &self.conns {
            for side in [Side::Client, Side::Upstream] {
                let q = match side {
                    Side::Client => &m.down,
                    Side::Upstream => &m.up,
                };
                if let (Some(q), Some(parts)) = (q, self.rt.send_buf(*conn, side)) {
                    assert!(
                        same(q, parts),
                        "bytes waiting for {conn} {side:?} are not the bytes read"
                    );
                }
            }
        }
    }

    /// Ends the run: every peer goes away (or every deadline passes), and
    /// the table must be empty with no timer and no buffer left.
    fn finish(&mut self, how: u8) {
        if how & 1 == 0 {
            let side = if how & 2 == 0 {
                Side::Client
            } else {
                Side::Upstream
            };
            for conn in self.order.clone() {
                let error = IoKind::Reset;
                self.rt.handle(Event::IoError { conn, side, error });
                self.drain();
                self.check();
            }
            assert_eq!(self.rt.len(), 0, "connections left after every peer reset");
        }
        // A deadline can lead to a state with a deadline of its own (a
        // failed connect to a protocol's reply, which drains or times out
        // in turn): pass every deadline, a few rounds deep. A SOCKS UDP
        // association lasts until `udp_idle_timeout` without a datagram.
        let s = &self.setup;
        let all =
            Duration::from_millis(s.connect_ms + s.idle_ms + s.grace_ms + s.handshake_ms + 1000)
                + self.rt.config().limits.udp_idle_timeout;
        for _ in 0..4 {
            self.rt.advance(all);
            self.timeout();
        }
        self.check();
        assert_eq!(
            self.rt.len(),
            0,
            "connections left after every deadline passed: {}",
            self.rt.dump()
        );
        self.rt.assert_empty();
    }
}

/// Decodes `data` into a configuration and a sequence of runtime calls and
/// checks the connection table's invariants after each one. See the module
/// docs.
pub fn event_sequence(data: &[u8]) {
    let mut input = Input::new(data);
    let setup = Setup::decode(&mut input);
    let config = setup.config();
    let mut h = Harness::new(setup, config);
    // The last byte says how the run ends; the rest are operations.
    let how = data.last().copied().unwrap_or(0);
    let ops = data.len().saturating_sub(1);
    while input.pos < ops && !input.is_empty() {
        h.op(&mut input);
    }
    h.finish(how);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filler is the pattern a byte at a time, from any start.
    #[test]
    fn filler_is_the_pattern() {
        for at in [0, 1, 255, 256, 300, 70_000] {
            for len in [0, 1, 255, 256, 257, 1000, 4096] {
                let mut buf = vec![0; len];
                filler(&mut buf, at);
                let want: Vec<u8> = (0..len).map(|i| (at + i) as u8 ^ 0x5a).collect();
                assert_eq!(buf, want, "at {at}, {len} bytes");
            }
        }
    }

    /// `same` agrees with comparing the bytes one by one, wherever the
    /// queue and the parts split.
    #[test]
    fn same_compares_across_splits() {
        let bytes: Vec<u8> = (0..40).collect();
        for front in 0..=bytes.len() {
            // A queue whose storage wraps: `front` bytes pushed at the
            // front, the rest at the back.
            let mut q: VecDeque<u8> = bytes[front..].iter().copied().collect();
            for &b in bytes[..front].iter().rev() {
                q.push_front(b);
            }
            for cut in 0..=bytes.len() {
                let parts = [&bytes[..cut], &bytes[cut..]];
                assert!(same(&q, parts), "front {front}, cut {cut}");
                let mut other = bytes.clone();
                other[(cut + front) % bytes.len()] ^= 1;
                let parts = [&other[..cut], &other[cut..]];
                assert!(!same(&q, parts), "front {front}, cut {cut}, one byte off");
                let short = &bytes[..bytes.len() - 1];
                let cut = cut.min(short.len());
                assert!(!same(&q, [&short[..cut], &short[cut..]]), "one byte short");
            }
        }
    }

    /// The configuration built from a parsed shape is the one parsing the
    /// setup's own text gives, for every shape and a spread of limits.
    #[test]
    fn config_of_a_shape_is_the_parsed_one() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for shape in 0..512u32 {
            for _ in 0..3 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let r = rng.to_le_bytes();
                // a..g as `Setup::decode` reads them; d, f and g carry the
                // shape's bits.
                let d = (r[3] & !0x08) | (((shape & 1) as u8) << 3);
                let f = (r[5] & !0x07)
                    | ((shape >> 1 & 1) as u8)
                    | ((shape >> 2 & 1) as u8) << 1
                    | ((shape >> 3 & 1) as u8) << 2;
                let g = (shape >> 4) as u8 & 0x1f;
                let bytes = [r[0], r[1], r[2], d, r[4], f, g, 1, 2, 3, 4];
                let setup = Setup::decode(&mut Input::new(&bytes));
                let parsed = config::parse(&setup.toml(), "fuzz.toml")
                    .unwrap_or_else(|e| panic!("{e}\n{}", setup.toml()));
                assert_eq!(setup.config(), parsed, "{}", setup.toml());
            }
        }
    }
}
