//! The core's actions sorted by whose sockets they name ([`Step`]), so that
//! a runtime routes each to the thread or structure that owns them without
//! matching on the core's `Action` itself ([`crate::Table::next_step`]
//! sorts them). The lines (`Log`, `Access`, `Say`) and `Fatal` never get
//! here: the table carries them out in their place.

use std::net::{IpAddr, SocketAddr};

use portico_core::{ConnId, ListenerId, Side};

use crate::table::UdpId;

/// One action of the core's, by owner.
#[derive(Debug)]
pub enum Step {
    /// For one connection's sockets.
    Conn(ConnId, ConnCmd),
    /// For the TCP listeners.
    Listen(ListenCmd),
    /// For the UDP sockets.
    Udp(UdpCmd),
    /// A listener closes for good: TCP or UDP, both are told (as
    /// `ListenCmd::Close` and `UdpCmd::Unlisten`).
    Unlisten(ListenerId),
    /// A status request on this connection wants every worker's table
    /// (see [`crate::Worker::gather`]).
    Gather(ConnId),
}

/// What to do with a connection's sockets.
#[derive(Debug)]
pub enum ConnCmd {
    /// Resolve `host` (`port` goes into the addresses) and tell the core.
    Resolve {
        host: String,
        port: u16,
    },
    /// Check a password against a hash (off the event loop, without the
    /// core's lock: [`crate::checks`]) and tell the core.
    CheckPassword {
        phc: String,
        password: portico_core::auth::Secret,
    },
    /// Ask the `[auth] helper` ([`crate::helpers`]) and tell the core.
    AskHelper {
        helper: std::sync::Arc<portico_core::config::HelperConfig>,
        user: String,
        password: portico_core::auth::Secret,
    },
    /// Start connect attempt `attempt` to `addr` (from `bind`): beside
    /// the attempts still connecting (a race, see [`crate::Pair`]), or in
    /// place of the upstream socket there was.
    Connect {
        attempt: u32,
        addr: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// Close the socket of connect attempt `attempt` (it lost the race).
    Abandon(u32),
    /// What the core wants of `side` now.
    Interest {
        side: Side,
        read: bool,
        write: bool,
    },
    ShutdownWrite(Side),
    /// Close the upstream socket and every attempt still connecting.
    CloseUpstream,
    Close,
    /// Listen for a SOCKS BIND's connection, on `bind` or the address this
    /// host would use toward `toward` ([`crate::net::bind_listener`]).
    BindListen {
        toward: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// The held connection becomes the upstream socket, reported as
    /// this connect attempt; the listener closes.
    BindTake(u32),
    /// The held connection closes; the listener accepts again.
    BindReject,
    /// The listener (and any connection held) closes.
    BindClose,
}

/// What to do with the TCP listeners.
#[derive(Debug)]
pub enum ListenCmd {
    /// Open a listener; with an [`portico_core::Intercept`], a transparent
    /// service's, whose accepted connections' original destinations are
    /// read so.
    Open(ListenerId, SocketAddr, Option<portico_core::Intercept>),
    Pause(ListenerId),
    Resume(ListenerId),
    Close(ListenerId),
}

/// What to do with the UDP sockets.
#[derive(Debug)]
pub enum UdpCmd {
    Listen(ListenerId, SocketAddr),
    Unlisten(ListenerId),
    Open(UdpId, Option<IpAddr>, SocketAddr),
    Close(UdpId),
    /// A SOCKS UDP association's two sockets: the client's side bound to
    /// this address, the outward one from this address (if given), or
    /// dual-stack (the last field).
    Associate(ConnId, SocketAddr, Option<IpAddr>, bool),
    Disassociate(ConnId),
}
