//! The in-memory network around the runtime: each socket's two directions
//! as bounded byte queues ([`Pipe`]), the servers that answer at addresses,
//! the names the resolver knows, and what is on its way to the runtime
//! (connect answers, resolutions, opened listeners) with the time it
//! arrives.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::peers::Behavior;
use crate::{ConnId, IoKind, ListenerId};

/// One direction of a socket: bytes in flight, with room for `cap`.
#[derive(Debug, Default)]
pub struct Pipe {
    pub buf: VecDeque<u8>,
    pub cap: usize,
    /// The writer shut (or closed) its end: after the bytes, EOF.
    pub eof: bool,
}

impl Pipe {
    pub fn new(cap: usize) -> Self {
        Pipe {
            buf: VecDeque::new(),
            cap,
            eof: false,
        }
    }

    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }
}

/// How the far end answers a connect.
pub enum Server {
    /// Accepts, then plays this.
    Accept(Box<dyn Behavior>),
    /// Refuses (RST): `ConnectFailed { Refused }`.
    Refuse,
    /// The connect fails with this error.
    Fail(IoKind),
    /// Never answers: the connect hangs until the core gives up.
    Silent,
}

impl Server {
    /// The error a failed connect reports, if it fails.
    pub fn error(&self) -> Option<IoKind> {
        match self {
            Server::Refuse => Some(IoKind::Refused),
            Server::Fail(e) => Some(*e),
            _ => None,
        }
    }
}

/// How a server is made for each connection to its address.
pub type Factory = Box<dyn FnMut() -> Box<dyn Behavior>>;

/// Something on its way to the runtime.
#[derive(Debug)]
pub enum Deliver {
    Listening {
        listener: ListenerId,
        local: SocketAddr,
    },
    /// The connect of connection `conn` (an index of the scheduler's),
    /// attempt `attempt`, finished: connected from a local address, or
    /// failed.
    Answer {
        conn: usize,
        attempt: u32,
        result: Result<SocketAddr, IoKind>,
    },
    Resolved {
        conn: ConnId,
        addrs: Vec<SocketAddr>,
    },
    ResolveFailed {
        conn: ConnId,
    },
}

#[derive(Debug)]
pub struct Pending {
    pub at: Duration,
    pub what: Deliver,
}

/// Who answers where, and what is in flight.
#[derive(Default)]
pub struct Net {
    servers: BTreeMap<SocketAddr, Factory>,
    /// Connects to these never finish.
    pub blackholes: BTreeSet<SocketAddr>,
    names: BTreeMap<String, Vec<IpAddr>>,
    pub pending: Vec<Pending>,
}

impl Net {
    /// A server for every connection to `addr`.
    pub fn serve(&mut self, addr: SocketAddr, f: Factory) {
        self.servers.insert(addr, f);
    }

    /// `name` resolves to these addresses.
    pub fn name(&mut self, name: &str, ips: &[IpAddr]) {
        self.names.insert(name.to_string(), ips.to_vec());
    }

    /// What the resolver says of `host`, with `port` in the addresses.
    pub fn resolve(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let ips = self.names.get(host)?;
        Some(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }

    /// How a connect to `addr` is answered: a server listening there, a
    /// black hole, or nobody (refused).
    pub fn connect(&mut self, addr: SocketAddr) -> Server {
        if self.blackholes.contains(&addr) {
            Server::Silent
        } else if let Some(make) = self.servers.get_mut(&addr) {
            Server::Accept(make())
        } else {
            Server::Refuse
        }
    }

    pub fn deliver(&mut self, at: Duration, what: Deliver) {
        self.pending.push(Pending { at, what });
    }
}
