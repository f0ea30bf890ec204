//! Portico's core: everything Portico decides, and nothing it does.
//!
//! This crate owns the connection table ([`Proxy`]), the protocol state
//! machines, the configuration ([`config`]), the access log format ([`log`])
//! and the command line ([`cli`]). It has no sockets, no threads, no clock and
//! no randomness beyond a seed it is given: a runtime turns socket readiness
//! into [`Event`]s, hands them in with the current time, and carries out the
//! [`Action`]s that come back. Payload bytes stay in the core's buffers; the
//! runtime reads into [`Proxy::recv_buf`] and writes from [`Proxy::send_bufs`]
//! — except where [`Proxy::splice_ok`] lets it move a pure relay's bytes
//! itself (splice(2)) and report their count.
//!
//! See [`proxy`] for the loop every runtime writes.

pub mod auth;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod event;
pub mod http;
pub mod id;
pub mod ledger;
pub mod log;
pub mod outcome;
pub mod proto;
pub mod proxy_protocol;
pub mod rate;
pub mod recorded;
pub mod rules;
mod session;
#[cfg(any(fuzzing, feature = "harness"))]
pub mod sim;
pub mod status;
mod table;
pub mod trace;
pub mod udp;

/// The connection table's module path of old.
pub mod proxy {
    pub use crate::table::{
        listening_line, listening_lines, PipeSize, Proxy, Stats, REFUSING_MAX, SPLICED_MAX,
        SPLICE_BULK, SPLICE_PIPE_MIN,
    };
}

pub use config::Config;
pub use event::{Action, Event, IoKind, Level, Refused};
pub use id::{ConnId, ListenerId, Side};
pub use log::AccessRecord;
pub use recorded::Recorded;
pub use table::{Proxy, Stats};
