//! One client connection and what the core does for it: where it is in its
//! life (its [`Phase`]), the protocol it speaks (its [`Machine`], one per
//! session), its two directions, its deadline and its end.
//!
//! A session handles its own events with a [`Context`] the table lends it
//! (see `crate::table`); it never reaches another session, and it never
//! removes itself: once it has ended (`ended`), the table finishes it right
//! after the call and nothing else is done for it.
//!
//! # States and exits
//!
//! ```text
//!  accept ─(mapped)─────────────────────────────────────┐
//!  accept ─(protocol)─► Talking ─Next::Connect─┬─(name)─► Resolving ─Resolved─┐
//!                         │                    └─(address)───────────────────┴─► Connecting
//!                         ├─Next::Close────────────────────────► Closing
//!                         └─handshake_timeout / client EOF─► (ended)
//!  accept ─(trusted balancer)─► ProxyHeader ─header─► as above, for the client it names
//!  Resolving ─ResolveFailed─► Closing (protocol reply) | (ended, mapped)
//!  Connecting ─Connected─► Relay | Conversing (Next::Converse) | Filtering (HTTP)
//!      ├─ConnectFailed, another attempt flying or left─► Connecting (Happy Eyeballs:
//!      │     the next address at once; see `connect.rs`)
//!      ├─connect_attempt_delay passed, an address left─► Connecting (one more attempt)
//!      ├─ConnectFailed of the last─► Closing (protocol reply) | (ended: "refused" | "unreachable" | "error")
//!      └─connect_timeout (the whole race)─► Closing | (ended, "timeout")
//!  Conversing ─Next::Relay─► Relay | Filtering (a protocol that stays in the path: FTP)
//!  Filtering ─(HTTP) a request to elsewhere─► Resolving | Connecting ─► Filtering
//!            ─(HTTP) CONNECT or upgrade─► Relay
//!  Relay ─both directions shut─► (ended, "ok");  ─idle_timeout─► (ended, "idle")
//!  Closing ─reply written─► (ended);  ─handshake_timeout─► (ended)
//!  any phase ─IoError─► (ended, "error");  ─shutdown_grace passed─► (ended, "shutdown")
//! ```
//!
//! A mapped port starts in `Connecting` (it knows where to go at accept); a
//! protocol service talks in `Talking` until its request names a
//! destination, and the rules are checked again then. An auto service's
//! session waits in `Talking` for the client's first byte, then becomes
//! the HTTP or SOCKS session it names (see `auto`) and goes on as that.
//! A transparent service's session peeks in `Talking` at what its client
//! says first (for a name), then goes to its original destination (see
//! `transparent`).
//!
//! # The two directions
//!
//! `up` carries client → upstream, `down` upstream → client (see
//! [`Dir`]). The session is finished when both directions are shut.

mod associate;
mod auto;
mod bind;
mod connect;
pub(crate) use connect::rule_number;
mod dir;
mod gateway;
mod http;
pub use http::Held;
mod parent;
mod proxy_header;
mod status;
mod tls;
mod transparent;
pub(crate) use tls::Tls;
pub(crate) use transparent::Intercepted;

use std::net::SocketAddr;
use std::time::Instant;

pub use dir::{Dir, SAID_MAX};

use crate::event::{Action, IoKind, Level};
use crate::id::{ConnId, Side};
use crate::outcome::{Cause, Outcome};
use crate::proto::http_proxy::HttpProxy;
use crate::proto::{Failure, Protocol};
use crate::table::context::Context;

/// Where a session is in its life; what happens within a phase is its
/// [`Machine`]'s business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A trusted balancer's PROXY header is awaited; nothing is admitted yet.
    ProxyHeader,
    /// The machine talks with the client until it names a destination.
    Talking,
    /// Waiting for the runtime to resolve the destination's name.
    Resolving,
    /// Waiting for the upstream connection.
    Connecting,
    /// The machine talks with the server before relaying (POP3's and FTP's
    /// logins).
    Conversing,
    /// Bytes flow untouched both ways.
    Relay,
    /// Every byte both ways goes through the machine (HTTP's exchanges,
    /// FTP's control connection).
    Filtering,
    /// The last reply drains to the client; what the client sends is
    /// discarded; then the connection closes.
    Closing,
    /// A SOCKS UDP association carries datagrams; its control connection
    /// only waits for the client to close it.
    Associated,
}

/// The protocol a session speaks, for its whole life.
#[derive(Debug)]
pub(crate) enum Machine {
    /// A mapped port: connects to its destination at accept, then relays.
    Mapped,
    /// An FTP data connection, carried for control connection `owner`.
    FtpData { owner: ConnId },
    /// A gateway (socks, telnet, smtp, nntp, pop3, ftp): its handshake,
    /// and for FTP the control connection's filter.
    Gateway(Box<dyn Protocol>),
    /// The HTTP forward proxy's exchanges.
    Http(Box<HttpProxy>),
    /// The status page; `asked`: its request is complete and the table
    /// is gathering the answer (from the other workers' tables).
    Status { asked: bool },
    /// A SOCKS5 UDP association (the SOCKS handshake is over).
    Associate(Box<associate::Association>),
    /// An auto service before the client's first byte: it becomes `Http`
    /// or a SOCKS `Gateway` once that byte says which.
    Auto,
    /// A transparent service's redirected connection: a peek at its first
    /// bytes, then a relay to its original destination (see
    /// `transparent`).
    Transparent(Box<Intercepted>),
}

impl Machine {
    /// Whether the protocol has words for a refusal (a limit, a rule on the
    /// client's address), so that a refused client is told, not just cut.
    pub fn has_words(&self) -> bool {
        // Auto: both protocols it may become answer refusals in words;
        // transparent: an HTTP request its peek finds is told a denial.
        matches!(
            self,
            Machine::Gateway(_) | Machine::Http(_) | Machine::Auto | Machine::Transparent(_)
        )
    }

    /// The access log's method before the protocol says better.
    pub fn method(&self) -> &'static str {
        match self {
            Machine::Mapped | Machine::Transparent(_) => "TCP",
            Machine::FtpData { .. } => "FTP-DATA",
            Machine::Gateway(p) => p.method(),
            Machine::Http(_) => "HTTP",
            Machine::Status { .. } | Machine::Auto => "-",
            Machine::Associate(_) => "UDP-ASSOCIATE",
        }
    }

    /// The phase a newly admitted connection starts in.
    pub fn first_phase(&self) -> Phase {
        match self {
            Machine::Mapped | Machine::FtpData { .. } => Phase::Connecting,
            _ => Phase::Talking,
        }
    }

    /// The user an HTTP client authenticated as, if any.
    fn http_user(&self) -> Option<&String> {
        match self {
            Machine::Http(h) => h.user.as_ref(),
            _ => None,
        }
    }
}

/// What a connection counts in beyond its client address.
#[derive(Debug, Default)]
pub(crate) struct Account {
    /// The user it is counted for in the ledger's `per_user`.
    pub user: Option<String>,
    /// The (quota, subject) counts its bytes go to.
    pub quotas: Vec<(String, String)>,
}

/// The runtime's view of one socket: (read, write) as last told.
type Interest = (bool, bool);

/// The upstream connection, as far as there is one.
#[derive(Debug, Default)]
pub(crate) struct Upstream {
    /// Where it goes (or went).
    pub addr: Option<SocketAddr>,
    /// Its local address, once connected.
    pub local: Option<SocketAddr>,
    /// A socket exists and is connected (HTTP keeps the client while
    /// upstream connections come and go).
    pub open: bool,
    /// The number the next connect attempt gets (see [`Action::Connect`]).
    pub attempt: u32,
    /// The latest attempt (not a race's) is in flight: not answered, not
    /// abandoned.
    pub flying: bool,
    /// Attempts racing to several addresses of one name (Happy Eyeballs);
    /// none for a single address, the common case (boxed: a session
    /// mostly has none).
    pub race: Option<Box<connect::Race>>,
    /// Connect from an `outgoing` address (false: toward a LAN client).
    pub outward: bool,
    /// A SOCKS BIND listener was asked for and not taken yet.
    pub binding: bool,
    /// A SOCKS BIND's peer name is being resolved.
    pub bind_name: bool,
    /// The source address fixed for this session, over any `outgoing`: an
    /// FTP data connection to the server leaves from its control
    /// connection's address (boxed: only those have one, and the session
    /// stays small).
    pub source: Option<Box<std::net::IpAddr>>,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub id: ConnId,
    pub service: usize,
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    pub phase: Phase,
    pub machine: Machine,
    pub accepted: Instant,
    /// When the current phase was entered (connect and handshake deadlines).
    pub phase_since: Instant,
    /// The last byte either way (the idle deadline).
    pub last_active: Instant,
    /// The deadline this session has in the timer heap, if any.
    pub timer_at: Option<Instant>,
    pub up: Dir,
    pub down: Dir,
    /// The interest last told to the runtime, per side.
    pub interest: [Interest; 2],
    pub target: String,
    pub user: Option<String>,
    /// The access log's method column.
    pub method: &'static str,
    /// This connection is over a limit or denied at accept: its protocol
    /// runs only to say so in its own words.
    pub refusal: Option<Failure>,
    pub upstream: Upstream,
    /// The bandwidth cap this connection shares, if a rule set one.
    pub bucket: Option<crate::rate::Key>,
    /// Its user's place in `max_per_user` and its quotas, once it has
    /// either (boxed: most connections have neither).
    pub account: Option<Box<Account>>,
    /// Per direction (up, down): reading waits for the cap's bucket until
    /// then.
    pub throttle: [Option<Instant>; 2],
    /// How it ends, for the access log.
    pub outcome: Outcome,
    /// Why it was refused or could not connect, if it was (the access
    /// log's `err=`).
    pub cause: Option<Cause>,
    /// The number (from 1) of the rule that decided its latest check, if
    /// one did (the access log's `rule=`).
    pub rule: Option<u32>,
    /// It has ended: the table finishes it once the call returns.
    pub ended: bool,
    /// The password check the runtime is running for this login, if any.
    pub checking: Option<Box<crate::auth::Pending>>,
    /// The parent proxy its current request goes through, if any.
    pub parent: Option<Box<parent::Leg>>,
    /// The client side speaks TLS (see `tls.rs`).
    pub tls: Option<Box<Tls>>,
}

impl Session {
    /// A session as accepted: nothing read, no upstream, outcome "ok".
    pub fn new(
        id: ConnId,
        service: usize,
        client: SocketAddr,
        local: SocketAddr,
        machine: Machine,
        phase: Phase,
        now: Instant,
    ) -> Session {
        Session {
            id,
            service,
            client,
            local,
            phase,
            method: machine.method(),
            machine,
            accepted: now,
            phase_since: now,
            last_active: now,
            timer_at: None,
            up: Dir::default(),
            down: Dir::default(),
            interest: [(false, false); 2],
            target: String::new(),
            user: None,
            refusal: None,
            upstream: Upstream {
                outward: true,
                ..Upstream::default()
            },
            bucket: None,
            account: None,
            throttle: [None, None],
            outcome: Outcome::Ok,
            cause: None,
            rule: None,
            ended: false,
            checking: None,
            parent: None,
            tls: None,
        }
    }

    /// Enters `phase` now.
    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.phase_since = now;
    }

    /// Says the last reply, then closes with `outcome`.
    fn close_after_reply(&mut self, outcome: Outcome, cx: &mut Context) {
        self.outcome = outcome;
        if let Some(c) = outcome.cause() {
            self.note_cause(c, cx);
        }
        self.enter(Phase::Closing, cx.now);
        self.drop_unsent(cx);
    }

    /// Closing: what the client sent that was not passed on never will be
    /// (the upstream gets nothing more), so it goes now, and what the
    /// client still sends is read into room and dropped rather than left
    /// unread behind a full buffer. HTTP keeps the bytes it cleared for
    /// forwarding: its exchange's record counts them.
    fn drop_unsent(&mut self, cx: &mut Context) {
        let keep = match self.machine {
            Machine::Http(_) => self.up.fwd.unwrap_or(0),
            _ => {
                if self.up.fwd.is_some() {
                    self.up.fwd = Some(0);
                }
                0
            }
        };
        if let Some(b) = self.up.buf.as_mut() {
            b.truncate(keep);
        }
        self.up.release_if_empty(&mut cx.pool);
    }

    /// The request was refused, or its destination could not be reached,
    /// for `cause`: the access log says it, and the service counts it —
    /// unless the refusal was decided (and counted) at accept.
    fn note_cause(&mut self, cause: Cause, cx: &mut Context) {
        self.cause = Some(cause);
        if self.refusal.is_none() {
            cx.services[self.service].count_cause(cause);
        }
    }

    /// Ends the session now (the table finishes it after the call).
    fn end(&mut self) {
        self.ended = true;
    }

    /// Ends a session that was never admitted (its PROXY header was bad or
    /// its client is over a limit): it was counted in no limit, so its end
    /// must undo none.
    fn end_unadmitted(&mut self, cx: &mut Context) {
        cx.ledger.lock().refusing += 1;
        self.refusal = Some(Failure::Other);
        self.end();
    }

    /// The direction that `side`'s reads fill.
    pub fn source_mut(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }

    /// [`Session::source_mut`], to look at.
    pub fn source(&self, side: Side) -> &Dir {
        match side {
            Side::Client => &self.up,
            Side::Upstream => &self.down,
        }
    }

    /// The direction that `side`'s writes drain.
    pub fn sink(&self, side: Side) -> &Dir {
        match side {
            Side::Client => &self.down,
            Side::Upstream => &self.up,
        }
    }

    fn sink_mut(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.down,
            Side::Upstream => &mut self.up,
        }
    }

    /// The upstream socket may be read and written: it is there, and the
    /// phase uses it.
    fn upstream_usable(&self) -> bool {
        match self.phase {
            Phase::Relay | Phase::Conversing => true,
            Phase::Filtering => self.upstream.open,
            _ => false,
        }
    }

    /// What the core wants from `side` now: (read, write).
    pub fn wanted(&self, side: Side) -> Interest {
        match side {
            // Closing: what the client sends is read and dropped, so that
            // closing with unread bytes does not reset the reply away.
            Side::Client if self.phase == Phase::Closing => {
                (!self.client_eof() && self.client_room(), self.client_out())
            }
            Side::Client => (
                !self.client_eof()
                    && self.client_room()
                    && self.throttle[0].is_none()
                    // A client that does not read its replies is not read
                    // either: what the core says to it stays bounded.
                    && self.down.said() < SAID_MAX
                    // An HTTP request waiting for its login's verdict:
                    // what the client pipelines behind it waits unread.
                    && !(self.checking.is_some() && matches!(self.machine, Machine::Http(_))),
                self.client_out(),
            ),
            Side::Upstream if self.upstream_usable() => (
                !self.down.eof && self.down.has_space() && self.throttle[1].is_none(),
                self.up.has_data(),
            ),
            Side::Upstream => (false, false),
        }
    }

    /// Room for the client's next bytes: in `up`, or with TLS in its
    /// layer's input.
    fn client_room(&self) -> bool {
        match &self.tls {
            Some(t) => t.room(),
            None => self.up.has_space(),
        }
    }

    /// There is something to write to the client.
    fn client_out(&self) -> bool {
        match &self.tls {
            Some(t) => !t.out().is_empty(),
            None => self.down.has_data(),
        }
    }

    /// The bytes to write to `side` next (see [`Dir::out_parts`]); with
    /// TLS, the client is sent records.
    pub fn out_parts(&self, side: Side) -> [&[u8]; 2] {
        match (&self.tls, side) {
            (Some(t), Side::Client) => [t.out(), &[]],
            _ => self.sink(side).out_parts(),
        }
    }

    /// Where the runtime reads `side`'s next bytes to.
    pub fn read_space(&mut self, side: Side, pool: &mut crate::buffer::Pool) -> &mut [u8] {
        match side {
            Side::Client if self.tls.is_some() => match self.tls.as_deref_mut() {
                Some(t) => t.space(),
                None => &mut [],
            },
            _ => self.source_mut(side).space(pool),
        }
    }

    /// Both directions are shut.
    pub fn finished(&self) -> bool {
        self.up.shut && self.down.shut
    }

    /// Bytes moved for the client so far, up and down: what its sockets
    /// carried; for a SOCKS UDP association, its datagrams' payload (the
    /// few bytes of the SOCKS exchange on its TCP connection are not
    /// counted). The counters, the status page and the access line all
    /// count this, so a service's lines add up to its
    /// `portico_bytes_total`.
    pub fn moved_bytes(&self) -> (u64, u64) {
        match &self.machine {
            Machine::Associate(a) => (a.up, a.down),
            _ => (self.up.bytes, self.down.bytes),
        }
    }

    /// The user to show for this connection: the one a request carried,
    /// else the one an HTTP client authenticated as.
    pub fn shown_user(&self) -> Option<String> {
        self.user
            .clone()
            .or_else(|| self.machine.http_user().cloned())
    }

    /// The status page's word for where the session is.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::ProxyHeader => "proxy-header",
            Phase::Talking => "handshake",
            Phase::Resolving => "resolving",
            Phase::Connecting => "connecting",
            Phase::Conversing => "server-handshake",
            Phase::Relay => "relay",
            Phase::Filtering if matches!(self.machine, Machine::Http(_)) => "http",
            Phase::Filtering => "control",
            Phase::Closing => "closing",
            Phase::Associated => "udp-associate",
        }
    }

    /// Whether bytes read now may be parsed (the flight recorder keeps
    /// those; relayed bytes it keeps as lengths).
    pub fn keeps_payload(&self) -> bool {
        match self.phase {
            Phase::Relay => false,
            // Nothing parses what a mapped port reads before it relays.
            Phase::Connecting | Phase::Resolving => {
                matches!(self.machine, Machine::Gateway(_) | Machine::Http(_))
            }
            _ => true,
        }
    }

    /// Whether a runtime may splice `from`'s bytes past the core (see
    /// `Proxy::splice_ok`).
    pub fn splice_ok(&self, from: Side) -> bool {
        let d = self.source(from);
        d.bulk
            && self.tls.is_none()
            && self.phase == Phase::Relay
            && self.bucket.is_none()
            && self.upstream.open
            && d.fwd.is_none()
            && d.drained()
            && !d.eof
            && !d.shut
            && self.wanted(from).0
    }

    /// Whether [`crate::Event::Connected`] needs the upstream socket's real
    /// local address: only where the protocol uses it (SOCKS says it, FTP
    /// opens data ports by it).
    pub fn wants_local(&self) -> bool {
        match &self.machine {
            Machine::Gateway(p) => p.uses_local(),
            _ => false,
        }
    }

    /// The access log's target without its scheme, and the rules' host
    /// name in it (none when it is an address).
    pub fn target_host(&self) -> Option<&str> {
        match &self.target {
            t if t.parse::<SocketAddr>().is_ok() => None,
            t => t
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches("http://")),
        }
    }

    // ---------------------------------------------------------- starting

    /// Starts what the service does with a newly admitted connection.
    pub fn begin(&mut self, cx: &mut Context) {
        if self.ended {
            return;
        }
        match &self.machine {
            Machine::Gateway(_) => self.start_gateway(cx),
            Machine::Mapped | Machine::FtpData { .. } => {
                match cx.services[self.service].destination.clone() {
                    Some(target) => self.request(target, None, cx),
                    None => {
                        // Validation lets through only kinds this table serves.
                        self.outcome = Outcome::Error;
                        self.end();
                    }
                }
            }
            Machine::Http(_)
            | Machine::Status { .. }
            | Machine::Associate(_)
            | Machine::Auto
            | Machine::Transparent(_) => self.sync(cx),
        }
    }

    // ------------------------------------------------------------ events

    /// New bytes (or the end of them) from the client: the machine that
    /// talks with the client now runs over them.
    fn client_bytes(&mut self, cx: &mut Context) {
        if self.phase == Phase::ProxyHeader {
            return self.proxy_header(cx);
        }
        match &self.machine {
            Machine::Status { .. } => self.status_request(cx),
            Machine::Http(_) => self.http_client(cx),
            Machine::Gateway(_) => self.gateway_input(cx),
            Machine::Associate(_) => self.association_control(cx),
            Machine::Auto => self.auto_input(cx),
            Machine::Transparent(_) => self.intercept_input(cx),
            Machine::Mapped | Machine::FtpData { .. } => {}
        }
    }

    /// New bytes (or the end of them, `eof`) from the server, while the
    /// machine reads them.
    fn server_bytes(&mut self, eof: bool, cx: &mut Context) {
        if self.parent_talking() {
            return self.parent_bytes(eof, cx);
        }
        match &self.machine {
            Machine::Http(_) => self.http_server(eof, cx),
            Machine::Gateway(_) => self.converse(eof, cx),
            _ => {}
        }
    }

    /// `n` bytes were read into `side`'s buffer (`bulk`: a bulk amount).
    pub fn on_read(&mut self, side: Side, n: usize, bulk: bool, cx: &mut Context) {
        if n > 0 {
            self.count_quota(n, cx);
            if let Some(k) = self.bucket.as_ref() {
                if let Some(b) = cx.ledger.lock().buckets.get_mut(k) {
                    let d = side.index();
                    b.take(d, n);
                    self.throttle[d] = b.resume_at(d, cx.now);
                }
            }
            if side == Side::Client {
                if let Some(t) = self.tls.as_deref_mut() {
                    // The TLS layer takes the bytes (in sync).
                    t.received(n);
                    self.moved(cx);
                    return self.sync(cx);
                }
            }
        }
        self.took(side, n, bulk, cx);
    }

    /// `n` bytes were put in `side`'s direction's buffer (by the runtime,
    /// or by the TLS layer): the machine that reads them runs.
    fn took(&mut self, side: Side, n: usize, bulk: bool, cx: &mut Context) {
        if n > 0 {
            let closing = self.phase == Phase::Closing && side == Side::Client;
            let d = self.source_mut(side);
            d.bulk = bulk;
            if let Some(b) = d.buf.as_mut() {
                b.fill(n);
                if closing {
                    // Nothing the client says matters any more.
                    b.consume(n);
                }
            }
            d.release_if_empty(&mut cx.pool);
            self.moved(cx);
        }
        match side {
            Side::Client => self.client_bytes(cx),
            Side::Upstream => self.server_bytes(false, cx),
        }
        if !self.ended {
            self.control(side, cx);
        }
    }

    /// Bytes moved: the idle clock restarts (and a data connection's
    /// control connection counts as active too).
    fn moved(&mut self, cx: &mut Context) {
        self.last_active = cx.now;
        if let Machine::FtpData { owner } = self.machine {
            cx.requests
                .push(crate::table::context::Request::Touch(owner));
        }
    }

    /// `n` bytes from `from` were spliced to the other side by the runtime.
    pub fn on_spliced(&mut self, from: Side, n: usize, cx: &mut Context) {
        // As a Read of n then a Written of n: the direction's count and the
        // idle clock; the bytes never were in the core. (What goes out at
        // once says more of the sink than of the source: a spliced
        // direction stays spliced.)
        let n = n.min(crate::table::SPLICED_MAX);
        self.count_quota(n, cx);
        let d = self.source_mut(from);
        let before = d.bytes;
        d.bytes = d.bytes.saturating_add(n as u64);
        let step = crate::table::SPLICE_GROW_AFTER;
        if !d.grown && d.bytes / step != before / step {
            d.grown = grow_pipe(cx);
        }
        self.moved(cx);
    }

    /// A read on `side` found nothing: an empty buffer goes back.
    pub fn on_read_blocked(&mut self, side: Side, cx: &mut Context) {
        self.source_mut(side).release_if_empty(&mut cx.pool);
    }

    /// `side` reached end of stream.
    pub fn on_eof(&mut self, side: Side, cx: &mut Context) {
        if side == Side::Client {
            if let Some(t) = self.tls.as_deref_mut() {
                // The plain text ends once the layer has passed on all of it.
                t.eof = true;
                return self.sync(cx);
            }
        }
        let d = self.source_mut(side);
        d.eof = true;
        d.release_if_empty(&mut cx.pool);
        match side {
            Side::Client => self.client_bytes(cx),
            Side::Upstream => self.server_bytes(true, cx),
        }
    }

    /// `n` bytes were written to `side`.
    pub fn on_written(&mut self, side: Side, n: usize, cx: &mut Context) {
        if side == Side::Client {
            if let Some(t) = self.tls.as_deref_mut() {
                t.sent(n);
                if n > 0 {
                    self.moved(cx);
                }
                return self.sync(cx);
            }
        }
        self.written_plain(side, n, cx);
    }

    /// `n` bytes of `side`'s sink went out (with TLS to the client: into
    /// the layer, to be sent as records).
    fn written_plain(&mut self, side: Side, n: usize, cx: &mut Context) {
        let d = self.sink_mut(side);
        let moved = d.written(n) > 0;
        let cleared = d.fwd == Some(0);
        d.release_if_empty(&mut cx.pool);
        if moved {
            self.moved(cx);
            self.release_lines(cx);
        }
        if side == Side::Client
            && self.phase == Phase::Talking
            && self.up.buf.as_ref().is_some_and(|b| !b.is_empty())
        {
            // Replies drained: commands the client pipelined behind them
            // may run now.
            self.client_bytes(cx);
            if self.ended {
                return;
            }
        }
        // A line held behind the bytes just written may go now.
        self.control(side.other(), cx);
        if self.ended {
            return;
        }
        if cleared && self.phase == Phase::Filtering {
            // A head waiting behind the bytes just written may go.
            if let Machine::Http(_) = self.machine {
                match side {
                    Side::Client => self.http_server(false, cx),
                    Side::Upstream => self.http_client(cx),
                }
            }
        }
    }

    /// A read, write or shutdown on `side` failed.
    pub fn on_io_error(&mut self, side: Side, error: IoKind, cx: &mut Context) {
        if side == Side::Upstream && self.parent_talking() {
            return self.parent_io_error(error, cx);
        }
        // A reset after both halves were shut is an ordinary end.
        if !self.finished() {
            self.outcome = Outcome::Error;
        }
        let name = cx.services[self.service].name.clone();
        let client = self.client;
        cx.log(Level::Debug, || {
            format!(
                "{name}: {client}: {} side: {}",
                match side {
                    Side::Client => "client",
                    Side::Upstream => "upstream",
                },
                error.describe()
            )
        });
        self.end();
    }

    /// Connect attempt `attempt` is up; `local` is its local address.
    pub fn on_connected(&mut self, attempt: u32, local: SocketAddr, cx: &mut Context) {
        // A BIND not yet taken, or a UDP association, asked for no
        // connect: nothing can have connected.
        if self.phase != Phase::Connecting
            || self.upstream.binding
            || matches!(self.machine, Machine::Associate(_))
            || !self.won(attempt, cx)
        {
            return;
        }
        if self.parent_connecting() {
            // The parent's address: the handshake with it comes first.
            return self.parent_connected(local, cx);
        }
        self.connected(local, cx);
    }

    /// The way to the destination is open (directly, or through a parent
    /// that connected onward): the machine goes on.
    pub(super) fn connected(&mut self, local: SocketAddr, cx: &mut Context) {
        self.enter(Phase::Relay, cx.now);
        self.last_active = cx.now;
        self.upstream.local = Some(local);
        self.upstream.open = true;
        match &self.machine {
            Machine::Http(_) => self.http_connected(local, cx),
            Machine::Gateway(_) => self.gateway_connected(local, cx),
            _ => self.sync(cx),
        }
    }

    /// The session's deadline passed (or a capped direction may read
    /// again).
    pub fn on_timer(&mut self, cx: &mut Context) {
        self.timer_at = None;
        let now = cx.now;
        // A capped direction whose bucket has refilled reads again.
        if self.throttle.iter().flatten().any(|t| *t <= now) {
            for t in &mut self.throttle {
                if t.is_some_and(|t| t <= now) {
                    *t = None;
                }
            }
            self.sync(cx);
            if self.ended {
                return;
            }
        }
        if self.phase == Phase::Connecting && self.race_due(now) && self.phase_deadline(cx) > now {
            // Happy Eyeballs: the next address's turn (unless the race is
            // over: connect_timeout bounds all of it).
            self.race_next(cx);
            if self.ended {
                return;
            }
        }
        if self.phase_deadline(cx) > now {
            self.arm(cx);
            return;
        }
        match self.phase {
            Phase::Connecting if matches!(self.machine, Machine::Associate(_)) => {
                self.on_udp_bind_failed(Failure::TimedOut, None, cx)
            }
            Phase::Resolving | Phase::Connecting | Phase::Conversing
                if self.parent.as_ref().is_some_and(|l| !l.done) =>
            {
                self.parent_timed_out(cx)
            }
            Phase::Resolving | Phase::Connecting | Phase::Conversing => {
                self.fail(Failure::TimedOut, cx)
            }
            Phase::Talking if matches!(self.machine, Machine::Transparent(_)) => {
                // The peek's time is up: on with what is known.
                self.intercept_timed_out(cx)
            }
            Phase::Talking => {
                self.outcome = Outcome::Timeout;
                if let Machine::Http(_) = self.machine {
                    self.http_timed_out(cx);
                } else {
                    self.end();
                }
            }
            Phase::ProxyHeader => {
                self.outcome = Outcome::Timeout;
                self.end_unadmitted(cx);
            }
            Phase::Closing => self.end(),
            Phase::Filtering if self.head_deadline(cx).is_some_and(|t| t <= now) => {
                // A request head that does not finish in time: 408.
                self.http_timed_out(cx);
            }
            Phase::Relay | Phase::Filtering | Phase::Associated => {
                self.outcome = Outcome::Idle;
                self.end();
            }
        }
    }

    // ------------------------------------------------- the runtime's view

    /// Brings the runtime's view of the session up to date: interest,
    /// half-closes, the end of the session, and its deadline.
    pub fn sync(&mut self, cx: &mut Context) {
        let conn = self.id;
        if self.tls.is_some() {
            self.tls_pump(cx);
            if self.ended {
                return;
            }
        }
        let done = match self.phase {
            Phase::Closing => !self.down.has_data() && self.tls_flushed(),
            // A client that has asked and shut its side waits for its
            // answer (a status page gathered from every worker).
            // (Likewise a login waiting for its password's verdict.)
            Phase::Talking => {
                self.up.eof
                    && !matches!(self.machine, Machine::Status { asked: true })
                    && self.checking.is_none()
            }
            Phase::Filtering => self.filtering_done(),
            _ => self.association_done(),
        };
        if done {
            return self.end();
        }
        if self.phase == Phase::Relay {
            // Half-close carried across once a direction is drained.
            let mut shut = [None; 2];
            if self.up.eof && !self.up.shut && self.up.drained() {
                self.up.shut = true;
                shut[0] = Some(Side::Upstream);
            }
            if self.down.eof && !self.down.shut && self.down.drained() && self.tls_flushed() {
                self.down.shut = true;
                shut[1] = Some(Side::Client);
            }
            if self.finished() {
                // Both ways done and drained: the Close that follows sends
                // the FIN a last shutdown would (nothing is left unread to
                // turn it into a reset), one syscall fewer.
                return self.end();
            }
            for side in shut.into_iter().flatten() {
                cx.actions.push_back(Action::ShutdownWrite { conn, side });
            }
        }
        for side in Side::BOTH {
            let want = self.wanted(side);
            let told = &mut self.interest[side.index()];
            if *told != want {
                *told = want;
                cx.actions.push_back(Action::Interest {
                    conn,
                    side,
                    read: want.0,
                    write: want.1,
                });
            }
        }
        self.arm(cx);
    }

    /// While filtering, whether the session is over: for a control
    /// connection, either end leaving once what it said has been passed
    /// on; for HTTP, the client done and owed nothing.
    fn filtering_done(&self) -> bool {
        match &self.machine {
            Machine::Http(h) => {
                self.up.eof
                    && self.up.drained()
                    && self.down.drained()
                    && self.tls_flushed()
                    && !h.busy()
            }
            _ => (self.up.eof && self.up.drained()) || (self.down.eof && self.down.drained()),
        }
    }

    /// When an HTTP request head that has begun must be complete.
    fn head_deadline(&self, cx: &Context) -> Option<Instant> {
        match &self.machine {
            Machine::Http(h) => h.head_since.map(|t| t + cx.config.limits.handshake_timeout),
            _ => None,
        }
    }

    /// When the current phase times out.
    fn phase_deadline(&self, cx: &Context) -> Instant {
        let l = &cx.config.limits;
        match self.phase {
            Phase::ProxyHeader | Phase::Talking | Phase::Conversing | Phase::Closing => {
                self.phase_since + l.handshake_timeout
            }
            Phase::Resolving | Phase::Connecting => self.phase_since + l.connect_timeout,
            Phase::Filtering => {
                let idle = self.last_active + l.idle_timeout;
                self.head_deadline(cx).map_or(idle, |t| idle.min(t))
            }
            Phase::Relay => self.last_active + l.idle_timeout,
            Phase::Associated => self.last_active + l.udp_idle_timeout,
        }
    }

    /// Makes sure the heap holds an entry no later than the session's
    /// deadline (the phase's, or a capped direction's).
    fn arm(&mut self, cx: &mut Context) {
        let at = self
            .throttle
            .iter()
            .flatten()
            .chain(self.race_at().as_ref())
            .fold(self.phase_deadline(cx), |a, b| a.min(*b));
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        self.timer_at = Some(at);
        cx.timers.push(at, self.id.idx, self.id.gen);
    }

    // ------------------------------------------------------------ the end

    /// The session has been taken out of the table: gives back what it
    /// held, counts it, tells the runtime to close it, and writes its
    /// access record.
    pub fn close(mut self, cx: &mut Context) {
        let conn = self.id;
        let now = cx.now;
        self.up.release(&mut cx.pool);
        self.down.release(&mut cx.pool);
        let mut counts = cx.ledger.lock();
        counts.sessions -= 1;
        let grown = usize::from(self.up.grown) + usize::from(self.down.grown);
        counts.grown_pipes = counts.grown_pipes.saturating_sub(grown);
        if self.refusal.is_some() {
            counts.refusing -= 1;
        } else {
            counts.remove_client(self.client.ip());
        }
        if let Some(u) = self.account.as_mut().and_then(|a| a.user.take()) {
            counts.remove_user(&u);
        }
        if let Some(k) = self.bucket.take() {
            if let Some(b) = counts.buckets.get_mut(&k) {
                b.users -= 1;
                if b.users == 0 {
                    counts.buckets.remove(&k);
                }
            }
        }
        drop(counts);
        let svc = &mut cx.services[self.service];
        if self.refusal.is_none() {
            svc.active -= 1;
        }
        let (up, down) = self.moved_bytes();
        svc.counters.up += up;
        svc.counters.down += down;
        if let Some(u) = self.shown_user() {
            let e = cx.user_bytes.entry(u).or_insert((0, 0));
            e.0 += up;
            e.1 += down;
        }
        cx.stats.closed += 1;
        if let Machine::Associate(_) = self.machine {
            // Its sockets go before the connection they belong to.
            cx.actions.push_back(Action::UdpDisassociate { conn });
        }
        if self.upstream.binding {
            cx.actions.push_back(Action::BindClose { conn });
        }
        cx.actions.push_back(Action::Close { conn });
        let machine = std::mem::replace(&mut self.machine, Machine::Mapped);
        match machine {
            Machine::Associate(a) => {
                let rec = self.association_record(&a, cx);
                if cx.access_logged() {
                    cx.actions.push_back(Action::Access(Box::new(rec)));
                }
            }
            Machine::Http(mut h) => {
                // HTTP logs one line per request: those held for their
                // bytes, then the one cut short, each less what was not
                // written.
                if let Some(x) = h.abandon(&self.up, &self.down, now) {
                    if cx.access_logged() {
                        let held = self.hold_line(h.user.clone(), x, cx);
                        h.held.push(held);
                    }
                }
                for x in std::mem::take(&mut h.held) {
                    let rec = x.settle(&self.up, &self.down, now);
                    cx.actions.push_back(Action::Access(rec));
                }
            }
            mut machine => {
                if let Machine::Gateway(p) = &mut machine {
                    if p.control().is_some() {
                        cx.listeners.close_data(conn, None, &mut cx.actions);
                    }
                }
                if cx.access_logged() {
                    let log_user = match &machine {
                        Machine::Gateway(p) => p.log_user(),
                        _ => None,
                    };
                    let rec = crate::log::AccessRecord {
                        service: cx.services[self.service].name.clone(),
                        client: self.client,
                        user: self.user.take().or(log_user),
                        method: self.method.into(),
                        target: std::mem::take(&mut self.target),
                        destination: self.upstream.addr,
                        status: self.outcome.word().into(),
                        up: self.up.bytes,
                        down: self.down.bytes,
                        duration: now.saturating_duration_since(self.accepted),
                        error: self.cause,
                        rule: self.rule,
                        datagrams: None,
                        via: self.via_name(),
                    };
                    cx.actions.push_back(Action::Access(Box::new(rec)));
                }
            }
        }
    }

    /// The access record of one HTTP exchange.
    fn exchange_record(
        &self,
        user: Option<String>,
        x: crate::proto::http_proxy::Exchange,
        cx: &Context,
    ) -> crate::log::AccessRecord {
        crate::log::AccessRecord {
            service: cx.services[self.service].name.clone(),
            client: self.client,
            user,
            method: x.method.into(),
            target: x.target,
            destination: self.upstream.addr,
            status: x.status.to_string(),
            up: x.up,
            down: x.down,
            duration: x.duration,
            error: x.cause,
            // The rule that decided the exchange's upstream, if it had one.
            rule: if x.routed { self.rule } else { None },
            datagrams: None,
            via: if x.routed { self.via_name() } else { None },
        }
    }
}

/// One more spliced direction may hold a grown pipe (see
/// [`crate::table::SPLICE_GROW_AFTER`]): counted, if the memory bound
/// allows it now (see [`grown_room`]).
fn grow_pipe(cx: &mut Context) -> bool {
    let limits = &cx.config.limits;
    let mut counts = cx.ledger.lock();
    let ok = grown_room(limits, &counts, counts.grown_pipes + 1);
    if ok {
        counts.grown_pipes += 1;
    }
    ok
}

/// Whether `grown` pipes holding [`crate::table::SPLICE_PIPE_MIN`] bytes
/// each keep memory under `max_connections × 2 × buffer`: what they hold
/// beyond `buffer` must fit in the room of the connections not open. False
/// where `buffer` is that much already (nothing to grow).
pub(crate) fn grown_room(
    limits: &crate::config::Limits,
    counts: &crate::ledger::Counts,
    grown: usize,
) -> bool {
    let buffer = limits.buffer as u64;
    let extra = (crate::table::SPLICE_PIPE_MIN as u64).saturating_sub(buffer);
    if extra == 0 {
        return false;
    }
    let free = u64::from(limits.max_connections).saturating_sub(counts.sessions as u64);
    (grown as u64).saturating_mul(extra) <= free.saturating_mul(2).saturating_mul(buffer)
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
