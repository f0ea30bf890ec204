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
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::{self, Config};
use crate::event::{Action, Event, IoKind, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::sim::runtime::Runtime;
use crate::table::REFUSING_MAX;
use crate::udp::{Via, MAX_DATAGRAM};

mod harness;
use harness::Harness;

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

    /// Where every connection of listener `i` goes, when the configuration
    /// says so with an address; `None` for SOCKS and named destinations.
    fn destination(&self, i: usize) -> Option<SocketAddr> {
        (i < self.services && !(i == 0 && self.named))
            .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000 + i as u16))
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
