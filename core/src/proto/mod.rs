//! Protocol handshakes: what a service says to its client before it knows
//! where to connect, and what it says once it knows how that went.
//!
//! A handshake is a pure machine over the client's bytes: [`Handshake::input`]
//! sees everything the client has sent so far, says how much of it was the
//! handshake, may append reply bytes, and returns a [`Step`]. Bytes behind the
//! handshake (pipelined payload) stay in the buffer and are relayed upstream
//! once connected. The table (`proxy.rs`) carries out the steps: rule checks,
//! name resolution, the connect, the limits.

pub(crate) mod http;
pub mod socks;

use std::net::SocketAddr;

use crate::auth::Users;
use crate::config::Service;

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

/// What a handshake wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More bytes from the client are needed.
    More,
    /// Connect to `target` on behalf of `user`.
    Connect {
        target: Target,
        user: Option<String>,
    },
    /// Write what was replied, then close; `status` goes to the access log.
    Close { status: &'static str },
}

/// Why a connection attempt did not succeed, in the terms a protocol answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A rule denied it.
    Denied,
    /// A limit (max_connections, max_per_client) was reached.
    Limit,
    Refused,
    NetUnreachable,
    HostUnreachable,
    /// The name did not resolve.
    NotResolved,
    TimedOut,
    Other,
}

impl Failure {
    /// The access log's outcome word.
    pub fn status(self) -> &'static str {
        match self {
            Failure::Denied => "denied",
            Failure::Limit => "limit",
            Failure::Refused => "refused",
            Failure::NetUnreachable | Failure::HostUnreachable => "unreachable",
            Failure::NotResolved => "unresolved",
            Failure::TimedOut => "timeout",
            Failure::Other => "error",
        }
    }
}

/// What a handshake may consult.
pub struct Ctx<'a> {
    pub service: &'a Service,
    pub users: &'a mut Users,
    pub client: SocketAddr,
}

/// A handshake in progress.
#[derive(Debug)]
pub enum Handshake {
    Socks(socks::Socks),
}

impl Handshake {
    /// The handshake for a service kind, if it has one.
    pub fn for_kind(kind: crate::config::ServiceKind) -> Option<Handshake> {
        match kind {
            crate::config::ServiceKind::Socks => Some(Handshake::Socks(socks::Socks::default())),
            _ => None,
        }
    }

    /// Feeds the client's bytes so far; returns (bytes consumed, step).
    pub fn input(&mut self, input: &[u8], reply: &mut Vec<u8>, ctx: &mut Ctx) -> (usize, Step) {
        match self {
            Handshake::Socks(s) => s.input(input, reply, ctx),
        }
    }

    /// The upstream connection is up; `local` is its local address.
    pub fn connected(&mut self, local: SocketAddr, reply: &mut Vec<u8>) {
        match self {
            Handshake::Socks(s) => s.connected(local, reply),
        }
    }

    /// The request cannot be served; the connection closes after the reply.
    pub fn failed(&mut self, why: Failure, reply: &mut Vec<u8>) {
        match self {
            Handshake::Socks(s) => s.failed(why, reply),
        }
    }

    /// The method column of the access log.
    pub fn method(&self) -> &'static str {
        match self {
            Handshake::Socks(s) => s.method(),
        }
    }
}
