//! The core's actions sorted by whose sockets they name ([`Step`]), so that
//! a runtime routes each to the thread or structure that owns them without
//! matching on the core's `Action` itself. The lines (`Log`, `Access`,
//! `Say`) and `Fatal` never get here: [`crate::Table::next_step`] carries
//! them out in their place.

use std::net::{IpAddr, SocketAddr};

use portico_core::{Action, ConnId, ListenerId, Side};

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
    /// A status request on this connection wants every worker's table
    /// (see [`crate::Crew::gather`]).
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
    /// Start a connect of the upstream socket to `addr` (from `bind`),
    /// replacing the upstream socket a previous attempt left.
    Connect {
        addr: SocketAddr,
        bind: Option<IpAddr>,
    },
    /// What the core wants of `side` now.
    Interest {
        side: Side,
        read: bool,
        write: bool,
    },
    ShutdownWrite(Side),
    CloseUpstream,
    Close,
}

/// What to do with the TCP listeners.
#[derive(Debug)]
pub enum ListenCmd {
    Open(ListenerId, SocketAddr),
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
}

/// `action` as a step, and a second one when it names two owners (a
/// listener the core closes may be TCP or UDP: both are told). `None` for
/// the actions that are lines.
pub(crate) fn sort(action: Action) -> Option<(Step, Option<Step>)> {
    let one = |s| Some((s, None));
    match action {
        Action::Listen { listener, addr } => one(Step::Listen(ListenCmd::Open(listener, addr))),
        Action::PauseAccept { listener } => one(Step::Listen(ListenCmd::Pause(listener))),
        Action::ResumeAccept { listener } => one(Step::Listen(ListenCmd::Resume(listener))),
        Action::Unlisten { listener } => Some((
            Step::Listen(ListenCmd::Close(listener)),
            Some(Step::Udp(UdpCmd::Unlisten(listener))),
        )),
        Action::ListenUdp { listener, addr } => one(Step::Udp(UdpCmd::Listen(listener, addr))),
        Action::UdpOpen {
            id,
            bind,
            destination,
        } => one(Step::Udp(UdpCmd::Open(id, bind, destination))),
        Action::UdpClose { id } => one(Step::Udp(UdpCmd::Close(id))),
        Action::Resolve { conn, host, port } => {
            one(Step::Conn(conn, ConnCmd::Resolve { host, port }))
        }
        Action::Connect { conn, addr, bind } => {
            one(Step::Conn(conn, ConnCmd::Connect { addr, bind }))
        }
        Action::Interest {
            conn,
            side,
            read,
            write,
        } => one(Step::Conn(conn, ConnCmd::Interest { side, read, write })),
        Action::ShutdownWrite { conn, side } => one(Step::Conn(conn, ConnCmd::ShutdownWrite(side))),
        Action::CloseUpstream { conn } => one(Step::Conn(conn, ConnCmd::CloseUpstream)),
        Action::Close { conn } => one(Step::Conn(conn, ConnCmd::Close)),
        Action::Gather { conn } => one(Step::Gather(conn)),
        Action::Log { .. } | Action::Access(_) | Action::Say(_) | Action::Fatal { .. } => None,
    }
}
