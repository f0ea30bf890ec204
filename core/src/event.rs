//! What a runtime tells the core ([`Event`]) and what the core asks of a
//! runtime ([`Action`]). Payload bytes never travel inside either: they sit in
//! the core's buffers, which the runtime reads into and writes out of.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::id::{ConnId, ListenerId, Side};
use crate::log::AccessRecord;

/// Something that happened on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A listener asked for with [`Action::Listen`] is open.
    Listening {
        listener: ListenerId,
        local: SocketAddr,
    },
    /// A listener could not be opened.
    ListenFailed { listener: ListenerId, error: IoKind },
    /// `accept` on a listener failed (the listener itself stays open).
    AcceptFailed { listener: ListenerId, error: IoKind },
    /// The name asked for with [`Action::Resolve`] resolved (in the
    /// resolver's order; an empty list means no address).
    Resolved {
        conn: ConnId,
        addrs: Vec<SocketAddr>,
    },
    /// The name asked for with [`Action::Resolve`] did not resolve.
    ResolveFailed { conn: ConnId },
    /// The verdict on the password asked for with
    /// [`Action::CheckPassword`]: whether it matches the hash.
    PasswordChecked { conn: ConnId, ok: bool },
    /// The `[auth] helper`'s answer on the login asked for with
    /// [`Action::AskHelper`].
    HelperAnswered {
        conn: ConnId,
        answer: crate::auth::Answer,
    },
    /// Connect attempt `attempt` (asked for with [`Action::Connect`]) is
    /// established; `local` is its local address. Its socket is the
    /// upstream socket from now on (the attempts racing it are closed when
    /// the core says so, with [`Action::Abandon`]).
    Connected {
        conn: ConnId,
        attempt: u32,
        local: SocketAddr,
    },
    /// Connect attempt `attempt` failed; its socket is gone.
    ConnectFailed {
        conn: ConnId,
        attempt: u32,
        error: IoKind,
    },
    /// `n` bytes were read into [`crate::Proxy::recv_buf`] of `side`.
    Read { conn: ConnId, side: Side, n: usize },
    /// A read on `side` found nothing to read (would block). Lets the core
    /// give an empty buffer back to the pool.
    ReadBlocked { conn: ConnId, side: Side },
    /// `side` reached end of stream (the peer shut its write side).
    Eof { conn: ConnId, side: Side },
    /// `n` bytes of [`crate::Proxy::send_buf`] of `side` were written,
    /// counted across its two parts in order.
    Written { conn: ConnId, side: Side, n: usize },
    /// `n` bytes read from `from` were written to the other side by the
    /// runtime itself (splice(2) through a pipe), never entering the core's
    /// buffers. Only while [`crate::Proxy::splice_ok`] says so; the core
    /// counts them as a `Read` and a `Written` of `n` would, and changes
    /// nothing else. At most [`crate::SPLICED_MAX`] count per event.
    Spliced { conn: ConnId, from: Side, n: usize },
    /// A read, write or shutdown on `side` failed.
    IoError {
        conn: ConnId,
        side: Side,
        error: IoKind,
    },
    /// The sockets asked for with [`Action::UdpAssociate`] are open;
    /// `local` is the client-facing one's address.
    UdpBound { conn: ConnId, local: SocketAddr },
    /// The sockets asked for with [`Action::UdpAssociate`] could not be
    /// opened.
    UdpBindFailed { conn: ConnId, error: IoKind },
    /// The listening socket asked for with [`Action::BindListen`] is open
    /// at `local`.
    BindListening { conn: ConnId, local: SocketAddr },
    /// The listening socket asked for with [`Action::BindListen`] could not
    /// be opened.
    BindFailed { conn: ConnId, error: IoKind },
    /// `conn`'s BIND listener accepted a connection from `peer`; the
    /// runtime holds it (accepting no other) until told
    /// [`Action::BindTake`] or [`Action::BindReject`].
    BindAccepted { conn: ConnId, peer: SocketAddr },
}

/// Something the core asks the runtime to do. Drain them with
/// [`crate::Proxy::poll_action`] after every call into the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a listening TCP socket on `addr`, then report
    /// [`Event::Listening`] or [`Event::ListenFailed`]. With `intercept`,
    /// its connections were sent by the firewall: the runtime reads each
    /// one's original destination as it says, and gives it with the
    /// accepted connection ([`crate::Accepted::original`]).
    Listen {
        listener: ListenerId,
        addr: SocketAddr,
        intercept: Option<Intercept>,
    },
    /// Open a UDP socket bound to `addr` for a UDP mapped port, then report
    /// [`Event::Listening`] or [`Event::ListenFailed`]; datagrams on it go
    /// to [`crate::Proxy::handle_datagram`].
    ListenUdp {
        listener: ListenerId,
        addr: SocketAddr,
    },
    /// Open UDP mapping `id`'s own socket (from `bind`, if given) connected
    /// to `destination`; datagrams on it go to
    /// [`crate::Proxy::handle_reply`]. On failure call
    /// [`crate::Proxy::handle_udp_failed`].
    UdpOpen {
        id: crate::udp::UdpId,
        bind: Option<IpAddr>,
        destination: SocketAddr,
    },
    /// Close UDP mapping `id`'s socket.
    UdpClose { id: crate::udp::UdpId },
    /// Stop accepting on a listener for now (it stays open).
    PauseAccept { listener: ListenerId },
    /// Accept on a paused listener again.
    ResumeAccept { listener: ListenerId },
    /// Close a listener for good.
    Unlisten { listener: ListenerId },
    /// Resolve `host` (off the event loop), then report [`Event::Resolved`]
    /// or [`Event::ResolveFailed`]. `port` goes into the addresses.
    Resolve {
        conn: ConnId,
        host: String,
        port: u16,
    },
    /// Check `password` against the PHC string `phc` (argon2, costly: off
    /// the event loop and without the table's lock), then report
    /// [`Event::PasswordChecked`]. A verdict for a connection closed
    /// meanwhile may still be reported; the table drops it.
    CheckPassword {
        conn: ConnId,
        phc: String,
        password: crate::auth::Secret,
    },
    /// Ask the `[auth] helper` described by `helper` (its processes run
    /// by the runtime, started on first use and again when `helper`
    /// changes) about `user` and `password`, then report
    /// [`Event::HelperAnswered`]. Like [`Action::CheckPassword`], a
    /// verdict for a connection closed meanwhile may still be reported.
    AskHelper {
        conn: ConnId,
        helper: std::sync::Arc<crate::config::HelperConfig>,
        user: String,
        password: crate::auth::Secret,
    },
    /// Start connect attempt `attempt` of `conn` to `addr` (from `bind`
    /// when given) on a new non-blocking socket; report
    /// [`Event::Connected`] or [`Event::ConnectFailed`] with the same
    /// `attempt`. Attempt numbers grow over a connection's life, so an
    /// answer for an attempt the core has given up on is told apart.
    ///
    /// While another attempt of `conn` is still connecting, the new one
    /// races it (Happy Eyeballs, RFC 8305): a runtime holds both, and the
    /// first to connect becomes the upstream socket. Otherwise the new
    /// socket replaces the upstream socket there was, if any (an HTTP
    /// origin closed its end and the client's next request needs a new
    /// connection).
    Connect {
        conn: ConnId,
        attempt: u32,
        addr: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// Close the socket of connect attempt `attempt` of `conn`, connected
    /// or not (another attempt won the race); nothing more is reported of
    /// it. An attempt the runtime no longer holds is ignored.
    Abandon { conn: ConnId, attempt: u32 },
    /// Which operations the core wants on one socket from now on. Emitted
    /// only when it changes. A runtime attempts a wanted operation whenever
    /// the socket is ready for it.
    Interest {
        conn: ConnId,
        side: Side,
        read: bool,
        write: bool,
    },
    /// Close the upstream socket of `conn`, and any connect attempt of it
    /// still in flight; the client stays (an HTTP client's next request may
    /// go elsewhere).
    CloseUpstream { conn: ConnId },
    /// Shut the write half of `side` (half-close carried across).
    ShutdownWrite { conn: ConnId, side: Side },
    /// Close both sockets of `conn`; the id is dead from now on.
    Close { conn: ConnId },
    /// A diagnostic line for stderr, already filtered by the log level.
    Log { level: Level, message: String },
    /// A finished connection (or request) for the access log; none comes
    /// when `[log] access = "off"`.
    Access(Box<AccessRecord>),
    /// A line for standard output (the `listening:` lines at start).
    Say(String),
    /// Startup cannot go on: print `message` to stderr and exit 1.
    Fatal { message: String },
    /// A status page request on `conn` needs what the other workers'
    /// tables hold: collect [`crate::Proxy::snapshot`] from each of them
    /// and hand the parts to [`crate::Proxy::handle_gathered`]. Only ever
    /// asked when several workers share a [`crate::ledger::Ledger`].
    Gather { conn: ConnId },
    /// Open the two unconnected UDP sockets of `conn`'s SOCKS UDP
    /// association: one facing the client, bound to `client_side` (the
    /// system picks the port), and one facing the destinations, from
    /// `outward` when given (any address of the client side's family
    /// when not). With `dual_stack` (never with `outward`), the outward
    /// one is `[::]` with IPV6_V6ONLY off, reaching both families; the
    /// core names IPv4 destinations on it as IPv4-mapped IPv6 addresses.
    /// Report [`Event::UdpBound`] or [`Event::UdpBindFailed`];
    /// datagrams on either go to
    /// [`crate::Proxy::handle_association_datagram`].
    UdpAssociate {
        conn: ConnId,
        client_side: SocketAddr,
        outward: Option<IpAddr>,
        dual_stack: bool,
    },
    /// Close `conn`'s association sockets (asked before its `Close`).
    UdpDisassociate { conn: ConnId },
    /// Open a TCP listening socket for `conn`'s SOCKS BIND on `bind` if
    /// given, else on the local address this host would use toward
    /// `toward` (the system picks the port); report
    /// [`Event::BindListening`] or [`Event::BindFailed`], then
    /// [`Event::BindAccepted`] for each connection it accepts.
    BindListen {
        conn: ConnId,
        toward: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// The connection held since [`Event::BindAccepted`] becomes `conn`'s
    /// upstream socket, reported [`Event::Connected`] (or
    /// [`Event::ConnectFailed`]) with `attempt` like a connect that
    /// finished; the listener closes.
    BindTake { conn: ConnId, attempt: u32 },
    /// Close the connection held since [`Event::BindAccepted`]; the
    /// listener accepts again.
    BindReject { conn: ConnId },
    /// Close `conn`'s BIND listener and any connection it holds (asked
    /// before its `Close`).
    BindClose { conn: ConnId },
}

/// The attempt an event of a format-1 trace means: the connection's
/// latest (those traces come from runtimes that held one connect at a
/// time, and carry no attempt number). No [`Action::Connect`] uses it.
pub const LATEST_ATTEMPT: u32 = u32::MAX;

/// Diagnostic log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// The kinds of socket error the core tells apart. A runtime maps an
/// `io::Error` with [`IoKind::from_io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKind {
    Refused,
    Reset,
    TimedOut,
    HostUnreachable,
    NetUnreachable,
    PermissionDenied,
    AddrInUse,
    AddrNotAvailable,
    /// The process or system is out of file descriptors.
    TooManyFiles,
    Other,
}

// errno values of the Linux/BSD families; only used to classify.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
#[cfg(target_os = "linux")]
const ENETUNREACH: i32 = 101;
#[cfg(target_os = "linux")]
const EHOSTUNREACH: i32 = 113;
#[cfg(not(target_os = "linux"))]
const ENETUNREACH: i32 = 51;
#[cfg(not(target_os = "linux"))]
const EHOSTUNREACH: i32 = 65;

impl IoKind {
    pub fn from_io(e: &io::Error) -> IoKind {
        match e.raw_os_error() {
            Some(EMFILE) | Some(ENFILE) => return IoKind::TooManyFiles,
            Some(ENETUNREACH) => return IoKind::NetUnreachable,
            Some(EHOSTUNREACH) => return IoKind::HostUnreachable,
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => IoKind::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => IoKind::Reset,
            io::ErrorKind::TimedOut => IoKind::TimedOut,
            io::ErrorKind::PermissionDenied => IoKind::PermissionDenied,
            io::ErrorKind::AddrInUse => IoKind::AddrInUse,
            io::ErrorKind::AddrNotAvailable => IoKind::AddrNotAvailable,
            _ => IoKind::Other,
        }
    }

    /// How a person would say it.
    pub fn describe(self) -> &'static str {
        match self {
            IoKind::Refused => "connection refused",
            IoKind::Reset => "connection reset",
            IoKind::TimedOut => "timed out",
            IoKind::HostUnreachable => "host unreachable",
            IoKind::NetUnreachable => "network unreachable",
            IoKind::PermissionDenied => "permission denied",
            IoKind::AddrInUse => "address already in use",
            IoKind::AddrNotAvailable => "address not available on this machine",
            IoKind::TooManyFiles => "too many open files",
            IoKind::Other => "i/o error",
        }
    }
}

/// Why [`crate::Proxy::accept`] turned a connection away. The runtime closes
/// the socket; the core has already logged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("connection limit reached (limits.max_connections)")]
    TooMany,
    #[error("too many connections from this client (limits.max_per_client)")]
    PerClient,
    #[error("shutting down")]
    ShuttingDown,
    #[error("denied by a rule")]
    Denied,
    #[error("no such listener")]
    UnknownListener,
    /// A transparent service's connection that the firewall did not
    /// redirect (it came to the port itself): carrying it would loop.
    #[error(
        "not redirected: a transparent service takes only connections the firewall redirected \
         to it"
    )]
    NotRedirected,
}

/// How a transparent service's listener learns where each connection was
/// going before the firewall sent it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercept {
    /// nftables `redirect` (NAT): `getsockopt(SO_ORIGINAL_DST)` (IPv4) or
    /// `IP6T_SO_ORIGINAL_DST` (IPv6) on the accepted socket.
    Redirect,
    /// TPROXY: the listener is opened with `IP_TRANSPARENT`
    /// (`IPV6_TRANSPARENT`), and the accepted socket's local address is
    /// the original destination.
    Tproxy,
}
