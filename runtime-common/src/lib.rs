//! What Portico's two runtimes share, and nothing that decides.
//!
//! `portico` (runtime-mio: one mio event loop per worker) and
//! `portico-threaded` (runtime-std: a thread per connection) differ only in
//! how they wait for sockets. What they do once a socket is ready is the
//! same, so it is here, once:
//!
//! - [`Table`]: the one handle on the core's connection table. Every call
//!   a runtime makes into the table goes through it; it carries out the
//!   actions that only write lines, in the order the core queued them, and
//!   hands out the others as [`Step`]s sorted by owner ([`steps`]).
//! - [`process`]: the process around the tables — the command line's I/O
//!   ([`Process`]), where lines go, the wall clock, the flight recorder's
//!   files, the tables a runtime starts with ([`Start`]), and reading the
//!   configuration again ([`load`]); [`signals`]: SIGTERM, SIGINT, SIGHUP,
//!   SIGUSR1;
//!   [`Worker`]: what the tables of one process tell each other (stop,
//!   reload, status), one table being a worker alone.
//! - [`diagnostics`]: the sink behind the `log` facade (stderr with time
//!   and level, the journal's `<N>` prefixes, a file, or [`syslog`]);
//!   [`privileges`]: giving up root once listening; [`notify`]: telling
//!   systemd how the process is doing; [`state`]: the quotas' counts on
//!   disk (`[state] dir`), read at start and written atomically.
//! - [`net`]: opening sockets with the options Portico uses (listening
//!   ports shared by several workers included), and what a socket call did
//!   as the event the core is told.
//! - [`Pair`] and [`Directions`]: a connection's sockets, and its two
//!   directions through the core's buffers or through pipes. The ordering
//!   rule splicing must keep is written in [`directions`], and only there.
//! - [`splice`] (pipes and their pool), [`vectored`] (two-part writes),
//!   [`udp`] (a table's UDP sockets), [`resolver`] (getaddrinfo, and a pool
//!   of threads for it), [`slots`] (values by the core's ids).
//!
//! Invariants: nothing here chooses what to read, write, connect, close or
//! log — the core does, and a runtime says when, by its readiness; a
//! socket call's result is told to the core as the call gave it, once; and
//! only [`table`] and [`process`] (which builds the tables and runs the
//! command line) call into `portico-core` or match on its actions — the
//! rest names only its plain types (ids, events) — so that a change of the
//! core's face is met there.

pub mod checks;
pub mod diagnostics;
pub mod directions;
pub mod helpers;
pub mod net;
pub mod notify;
pub mod pair;
pub mod pool;
pub mod privileges;
pub mod process;
pub mod resolver;
pub mod share;
pub mod signals;
pub mod slots;
pub mod splice;
pub mod state;
pub mod steps;
pub mod syslog;
pub mod table;
pub mod udp;
pub mod vectored;
pub mod worker;

pub use directions::{Directions, Drained, Filled, ReadOp};
pub use pair::{Pair, Placed, Seen};
pub use process::{assume, load, log, ready, Process, Start};
pub use signals::Signals;
pub use slots::Slots;
pub use steps::{ConnCmd, ListenCmd, Step, UdpCmd};
pub use table::{PipeSize, Snapshot, Table, UdpId};
pub use udp::{Datagrams, UdpKey};
pub use worker::{Wake, Worker};

/// What the runtimes name of the core's face, from one place.
pub use portico_core::cli::{Plan, EXIT_OK, EXIT_RUNTIME};
pub use portico_core::{ConnId, Event, Intercept, IoKind, Level, ListenerId, Side};
