//! The protocol machines: what a service says to its client before it
//! knows where to connect, what it says once it knows how that went, and
//! (FTP) what it rewrites while the connection lasts.
//!
//! A machine is pure: it sees bytes, says how much of them it took, may
//! append reply bytes, and says what it wants [`Next`]. Bytes behind a
//! handshake (pipelined payload) stay in the buffer and are relayed once
//! connected. The session (`crate::session`) carries out what the machines
//! ask: rule checks, name resolution, the connect, the limits.
//!
//! Adding a gateway protocol is one module here implementing [`Protocol`]
//! and one line in [`for_service`]; the session drives it like the others.

pub mod ftp;
pub(crate) mod http_proxy;
pub mod peek;
pub mod pop3;
pub mod simple;
pub mod socks;
pub mod socks_udp;
pub mod telnet;
pub mod upstream;

use std::net::SocketAddr;

use crate::auth::Users;
use crate::config::Service;
pub use crate::outcome::{Cause, Outcome};
pub use crate::session::Dir;

/// Where a client asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// What a protocol machine asks of its session next: the one vocabulary
/// every machine (a gateway's handshake, FTP's control filter, the HTTP
/// proxy's exchanges) speaks. The session carries each out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing until more bytes come.
    Wait,
    /// Connect to `target` on behalf of `user` (a new upstream connection
    /// replaces the one there is).
    Connect {
        target: Target,
        user: Option<String>,
    },
    /// The upstream connection is up; the machine talks with the server
    /// before anything is relayed ([`Protocol::upstream`]).
    Converse,
    /// Relay bytes untouched from now on (or, for a protocol that stays in
    /// the path, pass them through its [`Control`]).
    Relay,
    /// Drop the upstream connection; the client stays (an HTTP client's next
    /// request may go elsewhere).
    DropUpstream,
    /// Open a data port (FTP).
    OpenData(DataPort),
    /// An HTTP exchange ended: its access-log line.
    Log(http_proxy::Exchange),
    /// The machine refused the request itself, for this cause (the HTTP
    /// proxy's CONNECT port check and proxy authentication); the session
    /// counts it. (A refusal the session decides, by a rule or a limit, or
    /// a failed connect, it counts itself.)
    Refused(Cause),
    /// An HTTP response with this status is on its way to the client (the
    /// proxy's own or relayed, interim ones included): counted.
    Responded(u16),
    /// Write what was said, then close; the access log says `outcome`.
    Close(Outcome),
    /// Check this login; the machine hears the verdict through
    /// [`Protocol::checked`] and takes no input meanwhile (the session
    /// may have to wait for the runtime's argon2).
    Authenticate {
        user: Vec<u8>,
        password: crate::auth::Secret,
    },
    /// SOCKS5 UDP ASSOCIATE for `user`: `client` is the address the
    /// client says it will send from (an unspecified address or port 0:
    /// any). The session opens the association and writes the reply.
    Associate {
        client: Target,
        user: Option<String>,
    },
    /// SOCKS BIND for `user`: listen for one connection from `peer`'s
    /// address. The machine says the listening address through
    /// [`Protocol::bound`], and the peer's through [`Protocol::connected`]
    /// once [`Protocol::bind_peer`] named it.
    Bind { peer: Target, user: Option<String> },
}

/// A data port a control machine asks for: on `bind` (the system picks the
/// port), for one connection from `accept_from`, carried to `connect_to`.
/// The machine hears back through [`Control::data_listening`] or
/// [`Control::data_failed`] with `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPort {
    pub token: u32,
    pub bind: std::net::IpAddr,
    pub accept_from: std::net::IpAddr,
    pub connect_to: SocketAddr,
}

/// Why a connection attempt did not succeed, in the terms a protocol answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A rule denied it.
    Denied,
    /// A limit (max_connections, max_per_client, max_per_user) was reached.
    Limit,
    /// A byte quota was used up: said as the protocol says a denial.
    Quota,
    Refused,
    NetUnreachable,
    HostUnreachable,
    /// The name did not resolve.
    NotResolved,
    TimedOut,
    /// The parent proxy (`via`) failed; a SOCKS5 parent's own reply code
    /// when it gave one (a SOCKS5 client is told that code).
    Parent(Option<u8>),
    Other,
}

impl Failure {
    /// How a connection that failed this way ends in the access log.
    pub fn outcome(self) -> Outcome {
        match self {
            Failure::Denied => Outcome::Denied,
            Failure::Limit => Outcome::Limit,
            Failure::Quota => Outcome::Quota,
            Failure::Refused => Outcome::Refused,
            Failure::NetUnreachable | Failure::HostUnreachable => Outcome::Unreachable,
            Failure::NotResolved => Outcome::Unresolved,
            Failure::TimedOut => Outcome::ConnectTimeout,
            Failure::Parent(_) => Outcome::ParentFailed,
            Failure::Other => Outcome::Error,
        }
    }

    /// Why, in the words of the access log and the metrics (none for
    /// another failure: a socket error that says nothing more).
    pub fn cause(self) -> Option<Cause> {
        self.outcome().cause()
    }
}

/// What a protocol may consult: its service and the users. (A login's
/// verdict is the session's to find: [`Next::Authenticate`].)
pub struct Scope<'a> {
    pub service: &'a Service,
    pub users: &'a mut Users,
    /// The configuration in force, for the proxy auto-config file the HTTP
    /// proxy serves (none in a machine's own tests: no PAC file).
    pub config: Option<&'a crate::config::Config>,
}

/// What a machine's own tests and the protocol fuzz target lend it besides
/// the service and its users: nothing yet, and one place to add it.
#[cfg(any(test, fuzzing, feature = "harness"))]
pub(crate) struct Detached;

#[cfg(any(test, fuzzing, feature = "harness"))]
impl Detached {
    pub(crate) fn new() -> Detached {
        Detached
    }

    /// A scope for one call.
    pub(crate) fn scope<'a>(&'a mut self, service: &'a Service, users: &'a mut Users) -> Scope<'a> {
        Scope {
            service,
            users,
            config: None,
        }
    }
}

/// A protocol's handshake: the part of a service that talks before (and
/// right after) the upstream connection, as a pure machine over bytes.
///
/// Call order: [`start`](Protocol::start) once at accept; then
/// [`input`](Protocol::input) whenever client bytes arrive, until it returns
/// [`Next::Connect`] (or `Close`); then exactly one of
/// [`connected`](Protocol::connected) or [`failed`](Protocol::failed); if
/// `connected` said [`Next::Converse`], [`upstream`](Protocol::upstream)
/// whenever server bytes arrive, until it returns `Relay` or `Close`.
///
/// Each returns [`Next::Wait`], `Connect`, `Close` (`start`, `input`),
/// `Relay` or `Converse` (`connected`), `Wait`, `Relay` or `Close`
/// (`upstream`).
pub trait Protocol: std::fmt::Debug + Send {
    /// The client proved who it is before speaking (its TLS certificate,
    /// `client_cert_user`): `user` is authenticated and no password is
    /// asked. Protocols with no users ignore it.
    fn authenticated(&mut self, _user: String) {}

    /// At accept: may greet the client, or name the destination at once.
    fn start(&mut self, _reply: &mut Vec<u8>, _scope: &mut Scope) -> Next {
        Next::Wait
    }

    /// A refusal at accept (limit, rule on the client's address) is said at
    /// once, before the client speaks (true), or only in answer to its
    /// request (false: SOCKS, HTTP).
    fn refuses_at_accept(&self) -> bool {
        true
    }

    /// Whether [`Protocol::connected`] uses the upstream's real local
    /// address (SOCKS says it, FTP opens data ports by it); when not, a
    /// runtime may spare the syscall that finds it.
    fn uses_local(&self) -> bool {
        false
    }

    /// The client's bytes so far (those not consumed before); returns
    /// (bytes consumed, what next). Bytes left unconsumed when it returns
    /// `Connect` are relayed to the server.
    fn input(&mut self, input: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next);

    /// The verdict on the login asked for with [`Next::Authenticate`]:
    /// the machine says it to the client and goes on. Returns `Wait`,
    /// `Connect` or `Close`, like [`Protocol::input`].
    fn checked(&mut self, _verdict: crate::auth::Verdict, _reply: &mut Vec<u8>) -> Next {
        Next::Close(Outcome::Error)
    }

    /// The upstream connection is up; `local` is its local address. Bytes
    /// for the client go to `reply`, bytes for the server to `to_server`.
    fn connected(
        &mut self,
        local: SocketAddr,
        reply: &mut Vec<u8>,
        to_server: &mut Vec<u8>,
    ) -> Next;

    /// The server's bytes so far (those not consumed before), while
    /// `connected` asked to talk with it; returns (bytes consumed, what
    /// next).
    /// Bytes left unconsumed when it returns `Relay` are relayed to the
    /// client.
    fn upstream(
        &mut self,
        _input: &[u8],
        _reply: &mut Vec<u8>,
        _to_server: &mut Vec<u8>,
    ) -> (usize, Next) {
        (0, Next::Relay)
    }

    /// The request cannot be served (or is refused at accept); the
    /// connection closes after the reply, unless [`Protocol::asks_again`].
    fn failed(&mut self, why: Failure, reply: &mut Vec<u8>);

    /// After [`Protocol::failed`] for a request the client made: whether
    /// the client may name another destination on the same connection (the
    /// interactive Telnet gateway prompts again) instead of the close.
    fn asks_again(&self) -> bool {
        false
    }

    /// SOCKS BIND: the listening socket is open at `local` (the first
    /// reply).
    fn bound(&mut self, _local: SocketAddr, _reply: &mut Vec<u8>) {}

    /// SOCKS BIND: the connection taken came from `peer` (the second
    /// reply, said when it is [`Protocol::connected`]).
    fn bind_peer(&mut self, _peer: SocketAddr) {}

    /// The method column of the access log.
    fn method(&self) -> &'static str;

    /// The user name the protocol learnt before it named a destination:
    /// authenticated (SOCKS, Telnet) or only passed on for the server to
    /// check (FTP, POP3). The access log shows it when no connect carried a
    /// user; rules never see it from here.
    fn log_user(&self) -> Option<String> {
        None
    }

    /// A protocol that stays in the path after its handshake (FTP's control
    /// connection) returns its [`Control`]; the table then passes every
    /// byte through it instead of relaying untouched.
    fn control(&mut self) -> Option<&mut dyn Control> {
        None
    }
}

/// The addresses of a control connection's two ends, for a control
/// machine to announce data ports by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The control connection's client and the address it connected to.
    pub client: SocketAddr,
    pub client_local: SocketAddr,
    /// The server, and the local address of the connection to it.
    pub server: SocketAddr,
    pub server_local: SocketAddr,
}

/// A protocol that filters its control connection after the handshake.
/// It asks for [`Next::OpenData`] and [`Next::Close`] only.
// `from_client` reads as "bytes from the client", not a constructor.
///
/// The directions are the session's: `up` client→server, `down`
/// server→client. In each, `buf` holds the bytes read and not yet written;
/// only its first `fwd` bytes are written, after the direction's prefix
/// (bytes queued with `say`). A machine clears bytes for writing by raising
/// `fwd`, or takes a line off the front (only when `fwd` is 0, so order is
/// kept) and queues its rewritten form with `say`.
#[allow(clippy::wrong_self_convention)]
pub trait Control {
    /// Client bytes arrived in `up`.
    fn from_client(&mut self, up: &mut Dir, down: &mut Dir, ends: &Addresses, todo: &mut Vec<Next>);
    /// Server bytes arrived in `down`.
    fn from_server(&mut self, up: &mut Dir, down: &mut Dir, ends: &Addresses, todo: &mut Vec<Next>);
    /// The data port `token` is open at `local`.
    fn data_listening(&mut self, token: u32, local: SocketAddr, up: &mut Dir, down: &mut Dir);
    /// The data port `token` could not be opened.
    fn data_failed(&mut self, token: u32, up: &mut Dir, down: &mut Dir);
}

/// A handshake in progress.
pub type Handshake = Box<dyn Protocol>;

/// The handshake for a service kind, if it has one (http and status have
/// machines of their own; a mapped port has none).
pub fn for_service(service: &Service) -> Option<Handshake> {
    use crate::config::ServiceKind;
    match service.kind {
        // An auto service starts as SOCKS only once its first byte says so
        // (crate::session).
        ServiceKind::Socks => Some(Box::new(socks::Socks::default())),
        ServiceKind::Smtp => Some(Box::new(simple::Simple::smtp())),
        ServiceKind::Nntp => Some(Box::new(simple::Simple::nntp())),
        ServiceKind::Telnet => Some(Box::new(telnet::Telnet::default())),
        ServiceKind::Pop3 => Some(Box::new(pop3::Pop3::default())),
        ServiceKind::Ftp => Some(Box::new(ftp::Ftp::default())),
        _ => None,
    }
}
