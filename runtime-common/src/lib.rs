//! What Portico's two runtimes share, and nothing that decides.
//!
//! `portico` (runtime-mio: one mio event loop per worker) and
//! `portico-threaded` (runtime-std: a thread per connection) differ only in
//! how they wait for sockets. What they do once a socket is ready is the
//! same, so it is here, once:
//!
//! - [`Table`]: the one handle on the core's connection table. Every call
//!   a runtime makes into the table goes through it, and it carries out the
//!   actions that only write lines, in the order the core queued them.
//! - [`process`]: the process around the tables — the command line's I/O
//!   ([`Process`]), where lines go, the wall clock, the flight recorder's
//!   files, the tables a runtime starts with ([`Start`]), and reading the
//!   configuration again on SIGHUP ([`load`], then [`Table::apply`]).
//! - [`net`]: opening sockets with the options Portico uses, and what a
//!   socket call did as the event the core is told.
//! - [`Pair`] and [`Directions`]: a connection's sockets, and its two
//!   directions through the core's buffers or through pipes — the ordering
//!   rule splicing must keep is written in [`directions`], and only there.
//! - [`splice`] (pipes and their pool), [`vectored`] (two-part writes),
//!   [`udp`] (a table's UDP sockets), [`resolver`] (getaddrinfo off the
//!   event loops).
//!
//! Invariants: nothing here chooses what to read, write, connect, close or
//! log — the core does, and a runtime says when; a socket call's result is
//! told to the core exactly as the call gave it; and nothing outside
//! [`table`] and [`process`] (which builds the tables and runs the command
//! line) calls into `portico-core`'s table or command line.

pub mod directions;
pub mod net;
pub mod pair;
pub mod process;
pub mod resolver;
pub mod splice;
pub mod table;
pub mod udp;
pub mod vectored;

pub use directions::{Directions, Drained, Filled, ReadOp};
pub use pair::Pair;
pub use process::{load, log, Process, Start};
pub use table::{PipeSize, Snapshot, Table, UdpId};
pub use udp::{Datagrams, UdpKey};

/// What the runtimes name of the core's face, from one place.
pub use portico_core::cli::{Plan, EXIT_OK, EXIT_RUNTIME};
pub use portico_core::{Action, Config, ConnId, Event, IoKind, Level, ListenerId, Side};
