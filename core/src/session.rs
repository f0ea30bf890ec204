//! One client connection and what the core does for it.
//!
//! # States and exits
//!
//! ```text
//!  accept ─(mapped)──────────────────────────────┐
//!  accept ─(protocol)─► Handshake ─Step::Connect─┼─(name)─► Resolving ─Resolved─┐
//!                         │                      └─(address)────────────────────┴─► Connecting
//!                         ├─Step::Close──────────────────────────► Closing
//!                         └─handshake_timeout / client EOF─► (closed)
//!  Resolving ─ResolveFailed─► Closing (protocol reply) | (closed, mapped)
//!  Connecting ─Connected─► Relay ─both directions shut─► (closed, "ok")
//!      ├─ConnectFailed, another address left─► Connecting (next address)
//!      ├─ConnectFailed─► Closing (protocol reply) | (closed, "refused" | "unreachable" | "error")
//!      └─connect_timeout─► Closing | (closed, "timeout")
//!  Relay ─idle_timeout─► (closed, "idle");  ─IoError─► (closed, "error")
//!  Closing ─reply written─► (closed);  ─handshake_timeout─► (closed)
//!  any state ─shutdown_grace passed─► (closed, "shutdown")
//! ```
//!
//! A mapped port goes straight to `Connecting` (it knows where to go at
//! accept); a protocol service talks in `Handshake` until its request names
//! a destination, and the rules are checked again then.
//!
//! # The two directions
//!
//! `up` carries client → upstream, `down` upstream → client. A direction
//! holds a buffer only while bytes are in it. When its source reaches EOF and
//! its buffer is empty, the write half of its sink is shut (half-close carried
//! across); the session is finished when both directions are shut.

use std::net::SocketAddr;
use std::time::Instant;

use crate::buffer::{Buffer, Pool};
use crate::id::{ListenerId, Side};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// A trusted balancer's PROXY header is awaited; nothing is admitted yet.
    ProxyHeader,
    /// The protocol talks with the client until it names a destination.
    Handshake,
    /// Waiting for the runtime to resolve the destination's name.
    Resolving,
    /// Waiting for the upstream connection.
    Connecting,
    /// The protocol talks with the server before relaying (POP3's login).
    ServerHandshake,
    /// Bytes flow both ways.
    Relay,
    /// A control connection (FTP): both directions go through the
    /// protocol's [`crate::proto::Control`].
    Control,
    /// HTTP exchanges: both directions go through the HTTP machine.
    Http,
    /// The last reply drains to the client; what the client sends is
    /// discarded; then the connection closes.
    Closing,
}

/// Bytes the core may have queued for a peer (replies, rewritten heads)
/// before it stops reading what makes it say more.
pub const SAID_MAX: usize = 64 * 1024;

/// One direction of a session.
///
/// What the sink is sent: first `prefix` (bytes the core made: a protocol's
/// replies, a rewritten head), then the first `fwd` bytes of `buf` (all of
/// them when `fwd` is `None`: a plain relay).
#[derive(Debug, Default)]
pub struct Dir {
    pub buf: Option<Buffer>,
    pub prefix: Vec<u8>,
    /// How much of `prefix` is already written.
    pub prefix_pos: usize,
    /// How many bytes at the front of `buf` may be written; `None`: all.
    pub fwd: Option<usize>,
    /// The source side reached end of stream.
    pub eof: bool,
    /// The sink's write half has been shut.
    pub shut: bool,
    /// The last read moved a bulk amount: worth splicing.
    pub bulk: bool,
    /// Bytes written to the sink.
    pub bytes: u64,
}

impl Dir {
    /// The bytes to write to the sink next, in two parts that go out in
    /// this order: what is left of `prefix`, then the buffer's bytes that
    /// may follow it. Written together (one vectored write) they save a
    /// system call, and a wake-up of the peer, per rewritten head.
    pub fn out_parts(&self) -> [&[u8]; 2] {
        let said = self.prefix.get(self.prefix_pos..).unwrap_or(&[]);
        let cleared = match &self.buf {
            Some(b) => {
                let d = b.data();
                &d[..self.fwd.map_or(d.len(), |f| f.min(d.len()))]
            }
            None => &[],
        };
        [said, cleared]
    }

    /// The first bytes to write to the sink next: the first non-empty
    /// part of [`Dir::out_parts`].
    pub fn out(&self) -> &[u8] {
        match self.out_parts() {
            [said, _] if !said.is_empty() => said,
            [_, cleared] => cleared,
        }
    }

    /// There is something to write to the sink.
    pub fn has_data(&self) -> bool {
        !self.out().is_empty()
    }

    /// Nothing at all is held, written or not.
    pub fn drained(&self) -> bool {
        self.prefix_pos >= self.prefix.len() && self.buf.as_ref().is_none_or(|b| b.is_empty())
    }

    pub fn has_space(&self) -> bool {
        self.buf.as_ref().is_none_or(|b| !b.is_full())
    }

    /// Bytes the core made that are not written yet.
    pub fn said(&self) -> usize {
        self.prefix.len().saturating_sub(self.prefix_pos)
    }

    /// Queues bytes the core made, ahead of the buffer's.
    pub fn say(&mut self, bytes: &[u8]) {
        if self.prefix_pos >= self.prefix.len() {
            self.prefix.clear();
            self.prefix_pos = 0;
        }
        self.prefix.extend_from_slice(bytes);
    }

    /// As [`Dir::say`], taking the bytes: no copy when nothing else waits
    /// to be said (a rewritten head, made in a buffer of its own).
    pub fn say_owned(&mut self, bytes: Vec<u8>) {
        if self.prefix_pos >= self.prefix.len() {
            self.prefix = bytes;
            self.prefix_pos = 0;
        } else {
            self.prefix.extend_from_slice(&bytes);
        }
    }

    /// `n` bytes of [`Dir::out_parts`] were written, the prefix's first;
    /// returns how many counted (never more than were shown).
    pub fn written(&mut self, n: usize) -> usize {
        let mut left = n;
        if self.prefix_pos < self.prefix.len() {
            let k = left.min(self.prefix.len() - self.prefix_pos);
            self.prefix_pos += k;
            left -= k;
            if self.prefix_pos == self.prefix.len() {
                // Keep no capacity: an idle connection holds nothing.
                self.prefix = Vec::new();
                self.prefix_pos = 0;
            }
        }
        let k = left.min(self.out_parts()[1].len());
        if k > 0 {
            if let Some(b) = self.buf.as_mut() {
                b.consume(k);
            }
            if let Some(f) = self.fwd.as_mut() {
                *f -= k;
            }
        }
        let counted = n - left + k;
        self.bytes += counted as u64;
        counted
    }

    /// Gives an empty buffer back to the pool.
    pub fn release_if_empty(&mut self, pool: &mut Pool) {
        if self.buf.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(b) = self.buf.take() {
                pool.give(b);
            }
        }
    }

    pub fn release(&mut self, pool: &mut Pool) {
        if let Some(b) = self.buf.take() {
            pool.give(b);
        }
    }

    /// Space to read into, taking a buffer from the pool if there is none.
    pub fn space<'a>(&'a mut self, pool: &mut Pool) -> &'a mut [u8] {
        self.buf.get_or_insert_with(|| pool.take()).space()
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub gen: u32,
    pub service: usize,
    #[allow(dead_code)] // kept for the status page and reload
    pub listener: ListenerId,
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    pub state: State,
    pub accepted: Instant,
    /// When the current state was entered (connect and handshake deadlines).
    pub state_since: Instant,
    /// The last byte either way (the idle deadline).
    pub last_active: Instant,
    /// The deadline this session has in the timer heap, if any.
    pub timer_at: Option<Instant>,
    pub up: Dir,
    pub down: Dir,
    /// The interest last told to the runtime, per side: (read, write).
    pub told: [(bool, bool); 2],
    pub target: String,
    pub user: Option<String>,
    /// The access log's method column.
    pub method: &'static str,
    /// The protocol's handshake, for services that have one.
    pub hs: Option<crate::proto::Handshake>,
    /// Resolved addresses not tried yet (tried in order on failure).
    pub addrs: Vec<SocketAddr>,
    /// This connection is over a limit or denied at accept: its protocol
    /// runs only to say so in its own words.
    pub refusing: Option<crate::proto::Failure>,
    /// The HTTP proxy's machine, for http services.
    pub http: Option<Box<crate::proto::http::Http>>,
    /// The control connection this one carries data for (FTP).
    pub owner: Option<crate::id::ConnId>,
    /// Connect from `network.outgoing` (false: toward a LAN client).
    pub bind_out: bool,
    /// The bandwidth cap this connection shares, if a rule set one.
    pub bucket: Option<crate::rate::Key>,
    /// Per direction (up, down): reading waits for the cap's bucket until
    /// then.
    pub throttle: [Option<Instant>; 2],
    /// An upstream socket exists and is connected (http keeps the client
    /// while upstream connections come and go).
    pub upstream_open: bool,
    pub upstream: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    /// Outcome word for the access log once the session ends.
    pub status: &'static str,
}

impl Session {
    /// A session as accepted: nothing read, no upstream, outcome "ok".
    pub fn new(
        service: usize,
        listener: ListenerId,
        client: SocketAddr,
        local: SocketAddr,
        state: State,
        now: Instant,
    ) -> Session {
        Session {
            gen: 0,
            service,
            listener,
            client,
            local,
            state,
            accepted: now,
            state_since: now,
            last_active: now,
            timer_at: None,
            up: Dir::default(),
            down: Dir::default(),
            told: [(false, false); 2],
            target: String::new(),
            user: None,
            method: "-",
            hs: None,
            addrs: Vec::new(),
            refusing: None,
            http: None,
            upstream_open: false,
            bucket: None,
            owner: None,
            bind_out: true,
            throttle: [None, None],
            upstream: None,
            upstream_local: None,
            status: "ok",
        }
    }

    /// The direction that `side`'s reads fill.
    pub fn source_dir(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }

    /// [`Session::source_dir`], to look at.
    pub fn source(&self, side: Side) -> &Dir {
        match side {
            Side::Client => &self.up,
            Side::Upstream => &self.down,
        }
    }

    /// The direction that `side`'s writes drain.
    pub fn sink_dir(&self, side: Side) -> &Dir {
        match side {
            Side::Client => &self.down,
            Side::Upstream => &self.up,
        }
    }

    pub fn sink_dir_mut(&mut self, side: Side) -> &mut Dir {
        match side {
            Side::Client => &mut self.down,
            Side::Upstream => &mut self.up,
        }
    }

    /// What the core wants from `side` now: (read, write).
    pub fn wanted(&self, side: Side) -> (bool, bool) {
        let upstream_open = matches!(
            self.state,
            State::Relay | State::ServerHandshake | State::Control
        ) || (self.state == State::Http && self.upstream_open);
        match side {
            // Closing: what the client sends is read and dropped, so that
            // closing with unread bytes does not reset the reply away.
            Side::Client if self.state == State::Closing => (!self.up.eof, self.down.has_data()),
            Side::Client => (
                !self.up.eof
                    && self.up.has_space()
                    && self.throttle[0].is_none()
                    // A client that does not read its replies is not read
                    // either: what the core says to it stays bounded.
                    && self.down.said() < SAID_MAX,
                self.down.has_data(),
            ),
            Side::Upstream if upstream_open => (
                !self.down.eof && self.down.has_space() && self.throttle[1].is_none(),
                self.up.has_data(),
            ),
            Side::Upstream => (false, false),
        }
    }

    pub fn finished(&self) -> bool {
        self.up.shut && self.down.shut
    }
}

pub(crate) fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the sink is sent: the prefix, then the cleared bytes of the
    /// buffer; a write counts across both, never past what was shown.
    #[test]
    fn a_write_counts_across_prefix_and_buffer() {
        let mut pool = Pool::new(64, 1);
        let mut d = Dir::default();
        d.space(&mut pool);
        d.buf.as_mut().map(|b| b.push(b"body+next"));
        d.fwd = Some(4);
        d.say(b"head:");
        assert_eq!(d.out_parts(), [&b"head:"[..], &b"body"[..]]);
        assert_eq!(d.out(), b"head:");
        assert_eq!(d.written(3), 3);
        assert_eq!(d.out_parts(), [&b"d:"[..], &b"body"[..]]);
        assert_eq!(d.written(4), 4);
        assert_eq!(d.out_parts(), [&b""[..], &b"dy"[..]]);
        assert_eq!(d.out(), b"dy");
        // More than shown counts only what was shown.
        assert_eq!(d.written(10), 2);
        assert_eq!(d.fwd, Some(0));
        assert_eq!(d.buf.as_ref().map(|b| b.data()), Some(&b"+next"[..]));
        assert_eq!(d.bytes, 9);
    }
}
