//! [`Pair`]: one connection's sockets as a runtime holds them — the
//! client's, the upstream's once a connect starts — with its two
//! [`Directions`]. What to do with them stays the core's; when, the
//! runtime's; this only names the socket each step is on.

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
    /// The upstream connect is in progress.
    pub connecting: bool,
    pub dirs: Directions,
}

impl<S: AsFd> Pair<S> {
    pub fn new(id: ConnId, client: S) -> Pair<S> {
        Pair {
            id,
            client,
            upstream: None,
            connecting: false,
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

    /// A connect started on `upstream`, in place of a previous attempt's
    /// socket (returned, for the runtime to let go of); what was on its way
    /// to or from that one goes too, through `give`.
    pub fn connect_started(&mut self, upstream: S, give: impl FnMut(Pipe)) -> Option<S> {
        self.dirs.release(true, give);
        self.connecting = true;
        self.upstream.replace(upstream)
    }

    /// The core closed the upstream: its socket (for the runtime to let go
    /// of), and what was on its way to or from it goes too.
    pub fn close_upstream(&mut self, give: impl FnMut(Pipe)) -> Option<S> {
        self.dirs.release(true, give);
        self.connecting = false;
        self.upstream.take()
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
