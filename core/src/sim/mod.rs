//! The simulation harness: one runtime, network and set of peers that the
//! core's simulations, property tests and fuzz targets all play around the
//! table. Built only for them (`--features harness`, which the core's own
//! tests turn on, or `--cfg fuzzing`); no binary contains it.
//!
//! From the inside out:
//!
//! - [`runtime`] — [`Runtime`]: the one place that calls into
//!   [`crate::Proxy`]. It keeps what a runtime knows of each connection and
//!   listener, carries out every action on that record with the checks a
//!   runtime can make, and feeds events, reads and writes in.
//! - [`check`] — what must hold of the table after every call, after
//!   `handle_timeout` and at the end, and of a simulated world when it has
//!   run out; byte assertions that show where two streams part.
//! - [`rng`] — the seeded PRNG, and [`Dice`]: every choice a simulation
//!   makes, drawn from a seed or given by a property test.
//! - [`net`] — sockets as bounded byte queues, the servers at addresses,
//!   the resolver, what is on its way to the runtime, and what the network
//!   of a [`Sim`] makes of each action.
//! - [`peers`] — the programs at the far end of the sockets: scripts,
//!   echo and line servers.
//! - [`sched`] — [`Sim`]: the seeded scheduler that runs a world of peers
//!   around one table in simulated time.
//! - [`mod@seeds`] — running many seeds, replaying one.
//! - [`fuzz`] — the fuzz targets' entry points (event sequences,
//!   configurations, protocol machines), which the corpus test replays.
//!
//! The tests in `core/tests/` use it: `sim_relay` and `sim_protocols` run
//! [`Sim`] worlds, `properties` runs one on quickcheck's choices and the
//! event decoder of [`fuzz`], and the hand-driven tests (`splice`, `rate`,
//! `workers`, `known_bugs`) drive a [`Runtime`] step by step.

pub mod check;
pub mod fuzz;
pub mod net;
pub mod peers;
pub mod rng;
pub mod runtime;
pub mod sched;
pub mod seeds;

/// The Prometheus text of a snapshot, as `GET /metrics` answers it.
pub use crate::status::metrics;
pub use check::{same_bytes, show, timer_bound};
pub use net::{Pipe, Server};
pub use peers::{
    echo, find, lines, lines_with, replies, script, sender, Answer, Behavior, Dial, Frame, Io,
    IoAnswer, Op, Peer, PeerId,
};
pub use rng::{Dice, Given, Rng};
pub use runtime::{parse, Runtime};
pub use sched::{Conn, Sim};
pub use seeds::seeds;
