//! A connection's two directions as a runtime moves their bytes: through
//! the core's buffers (read into it, written out of it), or, where the core
//! calls a direction a pure relay (`splice_ok`), through a pipe with
//! splice(2) (socket → pipe while the pipe has room, pipe → the other
//! socket while that one takes bytes, each count told as `Spliced`).
//!
//! # The ordering rule
//!
//! Bytes of one direction leave in the order they came, and its end of
//! stream after its last byte, whichever way each byte went:
//!
//! 1. nothing is read into the core while the pipe holds bytes (they were
//!    read earlier: they go first);
//! 2. the core allows no splice while its buffer holds bytes (that is the
//!    core's half: `splice_ok` says no until its buffer is out);
//! 3. a source's end of stream is told to the core only once its pipe is
//!    empty, so the half-close it leads to comes after the last byte.
//!
//! [`Directions::read_op`] keeps (1) and asks the core for (2);
//! [`Directions::fill`] and [`Directions::drain`] keep (3). Both runtimes
//! go through these three and nowhere else, so the rule is written once.
//! The bytes a pipe holds toward a socket are written there whatever the
//! core wants of that socket: by (2) the core's own buffer of that
//! direction is empty while they wait.

use std::io;
use std::os::fd::BorrowedFd;

use portico_core::{ConnId, Event, IoKind, Side};

use crate::splice::{Fill, Pipe};

/// What a read on one side should be now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// No read: the core wants none, or bytes read earlier still wait in
    /// the pipe, or the source's end is already known.
    Nothing,
    /// A read into the core's buffer.
    Core,
    /// A splice into the direction's pipe.
    Splice,
}

/// What splicing from a socket into its direction's pipe came to.
#[derive(Debug)]
pub enum Filled {
    /// Bytes went into the pipe; the core hears of them once they are out.
    Moved,
    /// Nothing moved with bytes in the pipe: it is full (or out of page
    /// slots). The socket may still hold bytes.
    Full,
    /// The socket had nothing to read.
    Empty,
    /// No splicing here (unsupported, or no pipe to be had, e.g. out of
    /// descriptors): from now on this connection reads and writes.
    Unsupported,
    /// The source reached its end. `Some`: tell the core now (the pipe was
    /// empty); `None`: the core hears of it once its pipe is empty.
    Eof(Option<Event>),
    /// The splice failed: tell the core.
    Failed(Event),
}

/// What splicing a pipe out to the other socket came to.
#[derive(Debug)]
pub enum Drained {
    /// Bytes reached the socket: tell the core `told`, in order. `short`:
    /// the socket took less than the pipe held (its buffer is full).
    Sent { short: bool, told: Told },
    /// The socket takes nothing now.
    Blocked,
    /// Writing to the other socket failed: tell the core.
    Failed(Event),
}

/// What to tell the core after a splice out: the count, then the source's
/// end of stream if that emptied its pipe.
#[derive(Debug)]
pub struct Told {
    spliced: Event,
    eof: Option<Event>,
}

impl IntoIterator for Told {
    type Item = Event;
    type IntoIter = std::iter::Chain<std::iter::Once<Event>, std::option::IntoIter<Event>>;

    fn into_iter(self) -> Self::IntoIter {
        std::iter::once(self.spliced).chain(self.eof)
    }
}

/// One connection's spliced directions, indexed by source side.
#[derive(Default)]
pub struct Directions {
    /// The pipe each direction's spliced bytes wait in on their way to the
    /// other socket; held only while it holds bytes (or owes an EOF).
    pipe: [Option<Pipe>; 2],
    /// The source reached EOF with bytes still in its pipe: the core hears
    /// of it once they are out.
    eof_piped: [bool; 2],
    /// splice(2) is not supported here (or no pipe could be had): read and
    /// write only.
    no_splice: bool,
}

impl Directions {
    /// What a read on `side` should be, given that the core `wants` one
    /// (and, for a runtime that caches readiness, that the socket has
    /// something). `splice_ok` is asked only when a splice could follow.
    #[inline]
    pub fn read_op(&self, side: Side, wants: bool, splice_ok: impl FnOnce() -> bool) -> ReadOp {
        let i = side.index();
        if !wants || self.eof_piped[i] {
            return ReadOp::Nothing;
        }
        let room = self.pipe[i].as_ref().is_none_or(|p| p.has_room());
        if !self.no_splice && room && splice_ok() {
            ReadOp::Splice
        } else if self.piped(side) {
            // Bytes read earlier are still on their way: they go first.
            ReadOp::Nothing
        } else {
            ReadOp::Core
        }
    }

    /// What `side`'s socket is wanted for now: a read that would do
    /// something (see [`Directions::read_op`]), and a write — the core
    /// `writes` one, or the pipe toward `side` holds bytes (by rule 2 the
    /// core's own buffer of that direction is empty while they wait).
    #[inline]
    pub fn wants(
        &self,
        side: Side,
        reads: bool,
        writes: bool,
        splice_ok: impl FnOnce() -> bool,
    ) -> (bool, bool) {
        let read = self.read_op(side, reads, splice_ok) != ReadOp::Nothing;
        (read, writes || self.piped(side.other()))
    }

    /// Bytes wait in the pipe of the direction `from` feeds.
    #[inline]
    pub fn piped(&self, from: Side) -> bool {
        self.pipe[from.index()]
            .as_ref()
            .is_some_and(|p| !p.is_empty())
    }

    /// Splices what `src` (`side`'s socket) has into its direction's pipe,
    /// taking a pipe with `take` if the direction has none.
    pub fn fill(
        &mut self,
        conn: ConnId,
        side: Side,
        src: BorrowedFd<'_>,
        take: impl FnOnce() -> io::Result<Pipe>,
    ) -> Filled {
        let i = side.index();
        let mut pipe = match self.pipe[i].take() {
            Some(p) => p,
            None => match take() {
                Ok(p) => p,
                Err(_) => {
                    self.no_splice = true;
                    return Filled::Unsupported;
                }
            },
        };
        let r = pipe.fill(src);
        let empty = pipe.is_empty();
        self.pipe[i] = Some(pipe);
        match r {
            Ok(Fill::Moved) => Filled::Moved,
            // A short splice says nothing about the socket (the pipe may
            // have run out of page slots): it may still be readable.
            Ok(Fill::PipeFull) => Filled::Full,
            Ok(Fill::Empty) => Filled::Empty,
            Ok(Fill::Unsupported) => {
                self.no_splice = true;
                Filled::Unsupported
            }
            Ok(Fill::Eof) if !empty => {
                self.eof_piped[i] = true;
                Filled::Eof(None)
            }
            Ok(Fill::Eof) => Filled::Eof(Some(Event::Eof { conn, side })),
            Err(e) => Filled::Failed(Event::IoError {
                conn,
                side,
                error: IoKind::from_io(&e),
            }),
        }
    }

    /// Splices what the pipe of the direction `from` feeds out to `dst`
    /// (the other side's socket).
    pub fn drain(&mut self, conn: ConnId, from: Side, dst: BorrowedFd<'_>) -> Drained {
        let i = from.index();
        let Some(pipe) = self.pipe[i].as_mut() else {
            return Drained::Blocked;
        };
        let held = pipe.len();
        match pipe.drain(dst) {
            Ok(Some(n)) if n > 0 => {
                let eof = pipe.is_empty() && std::mem::take(&mut self.eof_piped[i]);
                Drained::Sent {
                    short: n < held,
                    told: Told {
                        spliced: Event::Spliced { conn, from, n },
                        eof: eof.then_some(Event::Eof { conn, side: from }),
                    },
                }
            }
            Ok(_) => Drained::Blocked,
            Err(e) => Drained::Failed(Event::IoError {
                conn,
                side: from.other(),
                error: IoKind::from_io(&e),
            }),
        }
    }

    /// Gives back, through `give`, the pipes that are empty and owe no EOF;
    /// with `all` (the connection or its upstream is gone) every one, and
    /// what they hold goes with them.
    pub fn release(&mut self, all: bool, mut give: impl FnMut(Pipe)) {
        for i in 0..2 {
            let empty = self.pipe[i].as_ref().is_some_and(|p| p.is_empty());
            if all || (empty && !self.eof_piped[i]) {
                if let Some(p) = self.pipe[i].take() {
                    give(p);
                }
            }
        }
        if all {
            self.eof_piped = [false; 2];
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::splice::tests::pair;
    use crate::splice::Pipes;
    use crate::table::PipeSize;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::os::fd::AsFd;

    fn conn() -> ConnId {
        // Any id will do: nothing here looks it up.
        ConnId::from_parts(3, 1)
    }

    fn fill_until(d: &mut Directions, c: ConnId, s: &TcpStream, pipes: &mut Pipes) -> Filled {
        for _ in 0..1000 {
            let size = PipeSize {
                size: 64 * 1024,
                limit: 64 * 1024,
            };
            match d.fill(c, Side::Client, s.as_fd(), || pipes.take(size)) {
                Filled::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
                f => return f,
            }
        }
        Filled::Empty
    }

    #[test]
    fn nothing_is_read_into_the_core_while_the_pipe_holds_bytes() {
        let (mut a, b) = pair();
        let (c_out, mut d_in) = pair();
        let c = conn();
        let mut pipes = Pipes::new();
        let mut d = Directions::default();
        assert_eq!(d.read_op(Side::Client, true, || true), ReadOp::Splice);
        assert_eq!(d.read_op(Side::Client, true, || false), ReadOp::Core);
        assert_eq!(d.read_op(Side::Client, false, || true), ReadOp::Nothing);
        a.write_all(b"first").expect("write");
        assert!(matches!(
            fill_until(&mut d, c, &b, &mut pipes),
            Filled::Moved
        ));
        // The core has stopped allowing splices: the pipe's bytes still go
        // first, so no read into the core.
        assert_eq!(d.read_op(Side::Client, true, || false), ReadOp::Nothing);
        let told = match d.drain(c, Side::Client, c_out.as_fd()) {
            Drained::Sent { short, told } => {
                assert!(!short);
                told.into_iter().collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            told,
            vec![Event::Spliced {
                conn: c,
                from: Side::Client,
                n: 5
            }]
        );
        assert_eq!(d.read_op(Side::Client, true, || false), ReadOp::Core);
        let mut got = [0u8; 5];
        d_in.set_nonblocking(false).expect("blocking");
        d_in.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"first");
    }

    #[test]
    fn an_end_of_stream_behind_piped_bytes_is_told_after_them() {
        let (mut a, b) = pair();
        let (c_out, _d_in) = pair();
        let c = conn();
        let mut pipes = Pipes::new();
        let mut d = Directions::default();
        a.write_all(b"last bytes").expect("write");
        a.shutdown(Shutdown::Write).expect("shutdown");
        // Bytes then EOF: the EOF waits for the pipe to empty.
        let mut eof_held = false;
        for _ in 0..1000 {
            match fill_until(&mut d, c, &b, &mut pipes) {
                Filled::Moved => continue,
                Filled::Eof(None) => {
                    eof_held = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(eof_held, "the end of stream waits behind the pipe's bytes");
        assert_eq!(d.read_op(Side::Client, true, || true), ReadOp::Nothing);
        // The pipe is kept (it owes an EOF) while it holds bytes.
        d.release(false, |_| panic!("a pipe that owes an EOF is kept"));
        let told = match d.drain(c, Side::Client, c_out.as_fd()) {
            Drained::Sent { told, .. } => told.into_iter().collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            told,
            vec![
                Event::Spliced {
                    conn: c,
                    from: Side::Client,
                    n: 10
                },
                Event::Eof {
                    conn: c,
                    side: Side::Client
                }
            ]
        );
        let mut given = 0;
        d.release(false, |p| {
            given += 1;
            pipes.give(p)
        });
        assert_eq!(given, 1, "an empty pipe that owes nothing goes back");
    }
}
