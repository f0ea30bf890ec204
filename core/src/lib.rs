//! Portico's core: everything Portico decides, and nothing it does.
//!
//! It has no sockets, no threads, no clock and no randomness beyond a seed
//! it is given. A runtime turns socket readiness into [`Event`]s, hands
//! them to the connection table, [`Proxy`], with the current time, and
//! carries out the [`Action`]s that come back. Payload bytes stay in the
//! core's buffers: the runtime reads into [`Proxy::recv_buf`] and writes
//! from [`Proxy::send_buf`], except where [`Proxy::splice_ok`] lets it move
//! a pure relay's bytes itself (splice(2)) and report their count. The
//! call order every runtime follows is written once, at [`Proxy`].
//!
//! Besides the table, a runtime uses [`cli`] (the command line, which
//! loads the [`config`] and starts the runtime's loop with a
//! [`cli::Plan`]), [`process`] (whom the process runs as, what it tells a
//! service manager) and [`trace`] (the flight recorder's replay).
//!
//! # The map
//!
//! - `table/`: the connection table. It owns what connections share (the
//!   slab of sessions and their ids, admission and limits, the listeners,
//!   the timer heap, the action queue, the buffer pool, the ledger shared
//!   with other workers), lends a `Context` to the one session an event is
//!   for, and knows no protocol. New connections, admission, status
//!   answers, reload and the UDP entry points each have a module there.
//! - `session/`: one connection. A session has a `Phase` (where it is in
//!   its life) and one `Machine` (the protocol it speaks: a mapped port,
//!   an FTP data connection, a gateway, the HTTP proxy, the status page),
//!   and handles its own events; each machine's driver is a module there
//!   with its states and exits drawn beside it, as is the way out
//!   (`connect`: rules, resolution, addresses, failures).
//! - `proto/`: the protocol machines, pure over bytes: SOCKS, Telnet, POP3,
//!   FTP, SMTP/NNTP and the HTTP proxy's exchanges. They all speak one
//!   vocabulary, `proto::Next`, and end with an `outcome::Outcome`.
//! - `http/`: HTTP/1.1 messages (parsing, framing, encoding).
//! - [`config`], [`cli`], `rules`, `auth`, `rate`, `ledger`, `status`
//!   (the answers), `status_page` (the page, and the process's version,
//!   start and last reload), `history` (each service's last minutes),
//!   `log` (the access line), [`trace`] (the flight recorder
//!   and its replay), `udp` (UDP mapped ports), `proxy_protocol`.
//! - `sim/` (with the `harness` feature, and under cargo-fuzz): the
//!   deterministic simulation every core test and fuzz target runs on.
//!
//! # Adding a protocol
//!
//! A gateway that talks with its client before it knows where to connect
//! is one module in `proto/` implementing `proto::Protocol` (its states
//! and exits drawn beside it, its unit tests beside it) and one line in
//! `proto::for_service`, besides its kind in [`config`] (the name, which
//! keys it takes) and its words in the docs. The session drives it like
//! the others: the rules, the limits, the connect, the relay and the
//! access log come with it.
//!
//! A machine of another shape (an upstream handshake to a parent, a UDP
//! association, a BIND wait, a transparent peek) is one driver module in
//! `session/` and one `Machine` variant; the table does not change. Slow
//! work is an [`Action`] and its answer an [`Event`], as name resolution
//! is.

pub mod auth;
mod buffer;
pub mod cli;
pub mod config;
mod event;
pub mod explain;
pub mod helper_policy;
mod history;
mod http;
mod id;
mod ledger;
mod log;
mod outcome;
pub mod pac;
mod parent;
pub mod process;
mod proto;
mod proxy_protocol;
pub mod quota;
mod rate;
mod rules;
mod session;
#[cfg(any(fuzzing, feature = "harness"))]
pub mod sim;
mod status;
mod status_page;
mod table;
pub mod trace;
mod udp;

pub use config::Config;
pub use event::{Action, Event, Intercept, IoKind, Level, Refused, LATEST_ATTEMPT};
pub use id::{ConnId, ListenerId, Side};
pub use ledger::Ledger;
pub use log::{rfc3339_millis, AccessRecord};
pub use outcome::Cause;
pub use rules::Wall;
pub use status::{ServiceCounters, Snapshot};
pub use table::{
    Accepted, PipeSize, Proxy, Reload, Stats, REFUSING_MAX, SPLICED_MAX, SPLICE_BULK,
    SPLICE_GROW_AFTER, SPLICE_PIPE_MIN,
};
pub use udp::{UdpId, Via};
