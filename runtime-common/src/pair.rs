//! [`Pair`]: one connection's sockets as a runtime holds them — the
//! client's, the upstream's once a connect starts, and the connect
//! attempts racing it (Happy Eyeballs) — with its two [`Directions`]. What
//! to do with them stays the core's; when, the runtime's; this only names
//! the socket each step is on.
//!
//! A connect attempt goes into the upstream slot unless another attempt
//! is connecting there; then it waits in `racing`. The attempt the runtime
//! reports connected moves into the slot ([`Pair::adopt`]), and the one it
//! displaces (still connecting) into `racing`, so that the upstream socket
//! is always the one the core was told connected. A failed attempt's
//! socket goes at once. The core abandons the losers by number.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use portico_core::{ConnId, Event, Side};

use crate::directions::{Directions, Drained, Filled, ReadOp};
use crate::net::{connect_outcome, read_event, write_event, Connecting};
use crate::splice::Pipe;
use crate::table::Table;

/// What a read or write showed of its socket, for a runtime that caches
/// readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// It may have (or take) more.
    More,
    /// It has (or takes) nothing more now: wait until it signals again.
    Spent,
    /// A read short of the room there was: the socket is empty now, unless
    /// its peer has closed (then its end is all that is left to read).
    Short,
}

/// One connection: its id, its sockets and its directions. `S` is the
/// runtime's stream type (mio's, or std's).
pub struct Pair<S> {
    pub id: ConnId,
    pub client: S,
    pub upstream: Option<S>,
    /// The connect attempt `upstream` belongs to.
    pub attempt: u32,
    /// The upstream connect is in progress.
    pub connecting: bool,
    /// Connect attempts racing the one in `upstream`: number and socket.
    /// Empty (nothing allocated) unless a name's addresses race.
    pub racing: Vec<(u32, S)>,
    pub dirs: Directions,
}

/// Where a new connect attempt's socket went.
pub enum Placed<S> {
    /// Into the upstream slot, in place of this socket (if there was one),
    /// for the runtime to let go of.
    Upstream(Option<S>),
    /// Beside the attempt connecting in the slot, into `racing`.
    Racing,
}

impl<S: AsFd> Pair<S> {
    pub fn new(id: ConnId, client: S) -> Pair<S> {
        Pair {
            id,
            client,
            upstream: None,
            attempt: 0,
            connecting: false,
            racing: Vec::new(),
            dirs: Directions::default(),
        }
    }

    #[inline]
    pub fn stream(&self, side: Side) -> Option<&S> {
        match side {
            Side::Client => Some(&self.client),
            Side::Upstream => self.upstream.as_ref(),
        }
    }

    #[inline]
    pub fn stream_mut(&mut self, side: Side) -> Option<&mut S> {
        match side {
            Side::Client => Some(&mut self.client),
            Side::Upstream => self.upstream.as_mut(),
        }
    }

    /// `side` carries bytes: the client, or an upstream that connected.
    #[inline]
    pub fn open(&self, side: Side) -> bool {
        side == Side::Client || (self.upstream.is_some() && !self.connecting)
    }

    /// See [`Directions::read_op`].
    #[inline]
    pub fn read_op(&self, side: Side, wants: bool, splice_ok: impl FnOnce() -> bool) -> ReadOp {
        self.dirs.read_op(side, wants, splice_ok)
    }

    /// Reads `side` into the core's buffer: the event to tell the core and
    /// what the read showed; `None` when the core lent no room for it.
    #[inline]
    pub fn read(&self, table: &mut Table, side: Side) -> Option<(Event, Seen)>
    where
        for<'a> &'a S: Read,
    {
        let (r, room) = table.read(self.id, side, self.stream(side)?)?;
        let seen = match &r {
            Ok(0) => Seen::Spent,
            Ok(n) if *n < room => Seen::Short,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Seen::Spent,
            _ => Seen::More,
        };
        Some((read_event(self.id, side, r), seen))
    }

    /// Writes what the core has for `side`: the event to tell the core
    /// (none when the socket took nothing) and what the write showed;
    /// `None` when the core has nothing for it.
    #[inline]
    pub fn write(&self, table: &mut Table, side: Side) -> Option<(Option<Event>, Seen)>
    where
        for<'a> &'a S: Write,
    {
        let (r, want) = table.write(self.id, side, self.stream(side)?)?;
        let seen = match &r {
            // A short write filled the socket's buffer.
            Ok(n) if *n < want => Seen::Spent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Seen::Spent,
            _ => Seen::More,
        };
        Some((write_event(self.id, side, r), seen))
    }

    /// Splices what `side` has into its direction's pipe (see
    /// [`Directions::fill`]); without that socket nothing moves.
    pub fn splice_in(&mut self, side: Side, take: impl FnOnce() -> io::Result<Pipe>) -> Filled {
        let src = match side {
            Side::Client => &self.client,
            Side::Upstream => match &self.upstream {
                Some(u) => u,
                None => return Filled::Full,
            },
        };
        self.dirs.fill(self.id, side, src.as_fd(), take)
    }

    /// Splices what the pipe of the direction `from` feeds out to the other
    /// socket (see [`Directions::drain`]).
    pub fn splice_out(&mut self, from: Side) -> Drained {
        let dst = match from.other() {
            Side::Client => &self.client,
            Side::Upstream => match &self.upstream {
                Some(u) => u,
                None => return Drained::Blocked,
            },
        };
        self.dirs.drain(self.id, from, dst.as_fd())
    }

    /// Shuts `side`'s write side; the event to tell if that failed.
    pub fn shutdown_write(&self, side: Side) -> Option<Event> {
        crate::net::shutdown_write(self.id, side, self.stream(side)?)
    }

    /// Connect attempt `attempt` started on `socket`: where it went (see
    /// [`Placed`]). In the slot, what was on its way to or from the
    /// socket it replaces goes too, through `give`.
    pub fn connect_started(
        &mut self,
        attempt: u32,
        socket: S,
        give: impl FnMut(Pipe),
    ) -> Placed<S> {
        if self.connecting && self.upstream.is_some() {
            self.racing.push((attempt, socket));
            return Placed::Racing;
        }
        self.dirs.release(true, give);
        self.connecting = true;
        self.attempt = attempt;
        Placed::Upstream(self.upstream.replace(socket))
    }

    /// The core closed the upstream: its socket (for the runtime to let go
    /// of), and what was on its way to or from it goes too. The attempts
    /// racing it are the caller's to take ([`Pair::take_racing`]).
    pub fn close_upstream(&mut self, give: impl FnMut(Pipe)) -> Option<S> {
        self.dirs.release(true, give);
        self.connecting = false;
        self.upstream.take()
    }

    /// Every racing attempt's socket, for the runtime to let go of.
    pub fn take_racing(&mut self) -> Vec<(u32, S)> {
        std::mem::take(&mut self.racing)
    }

    /// Attempt `attempt`'s socket leaves (it lost the race, or failed):
    /// the socket, for the runtime to let go of; `None` if no socket of
    /// that attempt is held.
    pub fn abandon(&mut self, attempt: u32, give: impl FnMut(Pipe)) -> Option<S> {
        if self.upstream.is_some() && self.attempt == attempt {
            return self.close_upstream(give);
        }
        let i = self.racing.iter().position(|(n, _)| *n == attempt)?;
        Some(self.racing.swap_remove(i).1)
    }

    /// The racing socket of `attempt`, if held.
    pub fn racer(&self, attempt: u32) -> Option<&S> {
        self.racing
            .iter()
            .find(|(n, _)| *n == attempt)
            .map(|(_, s)| s)
    }

    /// What racing attempt `attempt`'s connect came to, once its socket
    /// signalled (see [`connect_outcome`] for `clean`); `None` if no such
    /// attempt races.
    pub fn racer_outcome(&self, attempt: u32, clean: bool) -> Option<Connecting> {
        self.racer(attempt).map(|s| connect_outcome(s, clean))
    }

    /// Racing attempt `attempt` connected: its socket becomes the upstream
    /// socket. The attempt that was connecting in the slot, if any, races
    /// on in its place: its number is returned, so that the runtime
    /// registers both sockets anew. `None` if `attempt` does not race.
    pub fn adopt(&mut self, attempt: u32) -> Option<Option<u32>> {
        let i = self.racing.iter().position(|(n, _)| *n == attempt)?;
        let (_, socket) = self.racing.swap_remove(i);
        let displaced = match self.upstream.replace(socket) {
            // A slot whose attempt failed was emptied then.
            Some(old) => {
                self.racing.push((self.attempt, old));
                Some(self.attempt)
            }
            None => None,
        };
        self.attempt = attempt;
        self.connecting = false;
        Some(displaced)
    }

    /// What the upstream connect came to, once its socket signalled (see
    /// [`connect_outcome`] for `clean`).
    pub fn finish_connect(&mut self, clean: bool) -> Connecting {
        let Some(u) = self.upstream.as_ref() else {
            return Connecting::Pending;
        };
        let r = connect_outcome(u, clean);
        if r != Connecting::Pending {
            self.connecting = false;
        }
        r
    }
}
