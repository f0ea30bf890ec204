//! Identifiers the core hands to a runtime.
//!
//! A [`ConnId`] is a slab index plus a generation: when a connection ends its
//! index may be reused, but the generation changes, so an event or timer that
//! still names the old connection is recognised as stale and ignored.

use std::fmt;

/// One client connection (and the upstream connection made for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The slab index: dense, small, reused after the connection ends. A
    /// runtime may index its own socket table with it (and keep the whole id
    /// beside the sockets to tell generations apart).
    pub fn index(self) -> usize {
        self.idx as usize
    }

    /// Rebuilds an id from its parts (for runtimes that pack ids into tokens,
    /// and for traces).
    pub fn from_parts(index: u32, generation: u32) -> Self {
        ConnId {
            idx: index,
            gen: generation,
        }
    }

    /// The generation of this index.
    pub fn generation(self) -> u32 {
        self.gen
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.idx, self.gen)
    }
}

/// One listening socket: a slot index in the low [`ListenerId::INDEX_BITS`]
/// bits and a generation above them, so that a slot reused for a new
/// listener (FTP data ports come and go) is not mistaken for the old one.
/// A runtime indexes its own table with [`ListenerId::index`] and keeps the
/// whole id beside the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u32);

impl ListenerId {
    pub const INDEX_BITS: u32 = 20;

    pub fn new(index: usize, generation: u32) -> Self {
        let mask = (1u32 << Self::INDEX_BITS) - 1;
        ListenerId((index as u32 & mask) | (generation << Self::INDEX_BITS))
    }

    pub fn index(self) -> usize {
        (self.0 & ((1u32 << Self::INDEX_BITS) - 1)) as usize
    }
}

/// Which of a connection's two sockets an event or action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The socket accepted from the LAN (or Internet, for incoming mapped ports).
    Client,
    /// The socket the core asked the runtime to connect on the client's behalf.
    Upstream,
}

impl Side {
    /// Both sides, client first (the order of [`Side::index`]).
    pub const BOTH: [Side; 2] = [Side::Client, Side::Upstream];

    /// 0 for the client, 1 for the upstream: where a side's entry sits in
    /// a pair of per-side values.
    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Upstream => 1,
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}
