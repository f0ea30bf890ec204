//! The flight recorder: a trace of every input a runtime hands the core,
//! and a replay that runs the core over it again.
//!
//! The core is a pure function of its inputs — the configuration, the seed,
//! the events with their times, the wall clock — so a record of those is
//! enough to make a fresh [`Proxy`] take the same actions in the same order.
//! A trace from a failing live case becomes a regression test by committing
//! it. Payload stays out: bytes read while the core may still parse them (a
//! handshake, HTTP messages, a status page request) are kept so the replay
//! parses the same requests; bytes relayed past that are kept only as
//! lengths, and the replay reads zeros in their place.
//!
//! A trace does hold what the requests hold — SOCKS and HTTP credentials
//! among them — and the configuration text with its `[[user]]` passwords:
//! treat one as you would the configuration file.
//!
//! # Recording
//!
//! A [`Proxy`] records itself once told to ([`Proxy::record`], right after
//! it is made): each of its entry points writes its input to a pure
//! [`Recorder`] inside the table before it acts on it, so no input can be
//! missed and the order is the calls' own. The runtime only writes out
//! what [`Proxy::take_trace`] gives (the trace, and the action lines the
//! replay must print again). What each entry point records:
//!
//! ```text
//! Proxy::set_log_level / set_wall        rec.log_level(level) / rec.wall(w)
//! Proxy::accept                          rec.accept(now, &accepted, r) (its local address and
//!                                        original destination when the runtime gave them)
//! Proxy::handle(ev)                      rec.event(now, &ev, bytes) — a Read's bytes while the core
//!                                        may parse them (they sit at the start of the space it lent)
//! Proxy::handle_timeout / shutdown       rec.timeout(now) / rec.shutdown(now)
//! Proxy::reconfigure (with its text)     rec.reload(now, &text, recheck)
//! Proxy::reload_failed                   rec.reload_failed(now, &message)
//! Proxy::handle_datagram / handle_reply  rec.datagram(now, l, from, n) / rec.reply(now, id, n)
//! Proxy::handle_udp_failed               rec.udp_failed(now, id)
//! Proxy::handle_association_datagram     rec.association_datagram(now, conn, outward, from, n, header)
//! Proxy::poll_action / poll_datagram     rec.polled(&a) / rec.sent(&via, d.len())
//! ```
//!
//! [`Recorder::polled`] and [`Recorder::sent`] matter: the replay polls
//! exactly as many actions (and datagrams) at each point as the live run did, so every action line carries the same
//! record number in both (see [`render_action`]), and a replay that comes up
//! short is reported as a divergence at that record.
//!
//! # The format (version 2)
//!
//! Line-oriented UTF-8 text, every line ending in `\n`, so traces diff and
//! can be read and trimmed by hand. A header, then one record per line:
//!
//! ```text
//! portico-trace 2
//! seed 7
//! config 6                        ← the number of `|` lines that follow
//! |[[service]]                    ← the configuration text, split at '\n'
//! |name = "fwd"                     (verbatim; the last piece is what
//! |kind = "mapped"                   follows the last '\n', often empty)
//! |listen = ["127.0.0.1:7000"]
//! |destination = "192.0.2.1:80"
//! |
//! log-level debug
//! wall 1700000000 3600            ← unix seconds, UTC offset in seconds
//! 0.000000000 listening L0 127.0.0.1:7000
//! 0.001000000 accept L0 10.0.0.2:40000 0.1        ← the id the core gave
//! 0.001000000 accept L0 10.0.0.9:40000 refused:too-many
//! 0.002000000 connected 0.1 0 10.0.0.1:50000     ← attempt 0
//! 0.003000000 read 0.2 client 3 "\x05\x01\x00"     ← kept: a handshake
//! 0.004000000 read 0.1 client 1400                 ← relayed: length only
//! polled 4                        ← the runtime took 4 actions here
//! 12.500000000 timeout
//! ```
//!
//! Timed records begin with the time since the recorder started (the
//! `now` given to `Proxy::new`) as `seconds.nanoseconds`, nine digits
//! exactly. The kinds:
//!
//! ```text
//! accept L<listener> <peer> <conn>|refused:<why>
//! accept-on L<listener> <peer> <local> <conn>|refused:<why>
//! accept-to L<listener> <peer> <local> <original> <conn>|refused:<why>
//! listening L<listener> <addr>        listen-failed L<listener> <io>
//! accept-failed L<listener> <io>
//! resolved <conn> <addr>…             (zero or more addresses)
//! resolve-failed <conn>
//! connected <conn> <attempt> <local>  connect-failed <conn> <attempt> <io>
//! read <conn> <side> <n> ["bytes"]    read-blocked <conn> <side>
//! eof <conn> <side>                   written <conn> <side> <n>
//! spliced <conn> <from-side> <n>      io-error <conn> <side> <io>
//! timeout                             shutdown
//! reload <lines>                      reload-recheck <lines>
//!                                     (then that many `|` lines of the new configuration)
//! reload-failed <lines>               (then that many `|` lines of why)
//! datagram L<listener> <from> <n>     reply <udp> <n>
//! udp-failed <udp>
//! udp-bound <conn> <local>            udp-bind-failed <conn> <io>
//! bind-listening <conn> <local>       bind-failed <conn> <io>
//! bind-accepted <conn> <peer>
//! association <conn> client|outward <from> <n> ["header bytes"]
//! ```
//!
//! and untimed: `wall <secs> <offset>`, `log-level <level>`, `polled <n>`
//! (actions taken), `sent <n>` (datagrams taken), and `quotas <lines>`
//! right after the header when the ledger held quota counts as recording
//! began (read from `[state] dir`), then that many `|` lines of the state
//! file's text; the replay starts from those counts. Totals another
//! instance adds through `[state] redis` while recording are not in the
//! trace. Datagrams are relayed,
//! never parsed: only their lengths are recorded, and the replay receives
//! zeros.
//! A listener is its raw [`ListenerId`] number (as its `Debug` shows it); a
//! conn and a UDP mapping (`<udp>`) are `index.generation`; a side `client` or `upstream`; `<io>` and
//! `<why>` are the kebab-case names of the [`IoKind`] and [`Refused`]
//! variants. Kept bytes are one double-quoted string: printable ASCII as is,
//! `\\ \" \n \r \t`, every other byte `\xHH`. Lines starting with `#` are
//! comments (for annotating committed traces); records are numbered from 1,
//! comments aside. Words are separated by exactly one space.
//!
//! `<attempt>` is the connect attempt's number (see `Action::Connect`).
//! Version 1 wrote no attempt number (its runtimes held one connect at a
//! time); such traces still decode, each `connected` and `connect-failed`
//! meaning the connection's latest attempt ([`crate::LATEST_ATTEMPT`]).
//!
//! Decoding never panics: a trace that ends inside a line or a configuration
//! block is [`TraceError::Truncated`], anything else malformed is
//! [`TraceError::Corrupt`], both naming the byte offset and line. A trace cut
//! at a line break after the header is a shorter valid trace (a crashed run
//! leaves one).

mod decode;
mod encode;
mod record;
mod replay;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use crate::event::{Event, Level, Refused};
use crate::id::{ConnId, ListenerId};
use crate::rules::Wall;
use crate::udp::UdpId;

pub use decode::{decode, Reader};
pub use encode::encode;
pub use record::{render_action, render_datagram, Recorder};
pub use replay::{replay, replay_lines};

// What the parts of the format share.
use encode::*;

/// The first word of every trace.
pub const MAGIC: &str = "portico-trace";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
/// The name the trace's configuration goes by in error messages.
pub const CONFIG_NAME: &str = "(trace)";

const NANOS: u64 = 1_000_000_000;

/// Why a trace cannot be read or replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("not a Portico trace (offset 0): a trace begins with the line `{MAGIC} {VERSION}`")]
    NotATrace,
    #[error(
        "trace format version `{found}` is not supported (this build reads version {VERSION})"
    )]
    Version { found: String },
    #[error("the trace is truncated at offset {offset} (line {line}): {what}")]
    Truncated {
        offset: usize,
        line: usize,
        what: String,
    },
    #[error("the trace is corrupt at offset {offset} (line {line}): {message}")]
    Corrupt {
        offset: usize,
        line: usize,
        message: String,
    },
    #[error("the trace's configuration does not load: {message}")]
    Config { message: String },
    #[error(
        "the replay diverged from the recorded run at record {record} \
         (line {line}, offset {offset}): {message}"
    )]
    Diverged {
        record: u64,
        line: usize,
        offset: usize,
        message: String,
    },
}

/// What a trace begins with: enough to build the same [`Proxy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seed: u64,
    /// The configuration text, exactly as the runtime parsed it.
    pub config: String,
}

/// One input to the core. `t` is nanoseconds since the recorder started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// [`Proxy::set_log_level`].
    LogLevel(Level),
    /// [`Proxy::set_wall`].
    Wall(Wall),
    /// The quotas' counts the ledger held when recording began (read
    /// from `[state] dir` before the table was made), as the state file
    /// holds them.
    Quotas(String),
    /// [`Proxy::accept`] (with `local` when the runtime gave it), and
    /// what it returned.
    Accept {
        t: u64,
        listener: ListenerId,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        /// A transparent service's connection: its original destination.
        original: Option<SocketAddr>,
        result: Result<ConnId, Refused>,
    },
    /// [`Proxy::handle`]. `bytes` is only for [`Event::Read`]: the bytes
    /// read, when kept (their length is the event's `n`).
    Event {
        t: u64,
        event: Event,
        bytes: Option<Vec<u8>>,
    },
    /// [`Proxy::handle_timeout`].
    Timeout { t: u64 },
    /// [`Proxy::shutdown`].
    Shutdown { t: u64 },
    /// [`Proxy::reconfigure`] with the configuration parsed from this text.
    Reload {
        t: u64,
        config: String,
        recheck: bool,
    },
    /// [`Proxy::reload_failed`]: the file did not load, for this reason.
    ReloadFailed { t: u64, message: String },
    /// [`Proxy::handle_datagram`]: `n` bytes from `from` on a UDP
    /// listener. Datagrams are only relayed, so only their length is kept.
    Datagram {
        t: u64,
        listener: ListenerId,
        from: SocketAddr,
        n: usize,
    },
    /// [`Proxy::handle_reply`]: `n` bytes back on mapping `id` (length only).
    Reply { t: u64, id: UdpId, n: usize },
    /// [`Proxy::handle_udp_failed`].
    UdpFailed { t: u64, id: UdpId },
    /// [`Proxy::handle_association_datagram`]: `n` bytes from `from` on
    /// association `conn`'s outward or client socket; a client's header
    /// is kept (`bytes`, the first bytes of the datagram), the rest of it
    /// only as its length.
    AssociationDatagram {
        t: u64,
        conn: ConnId,
        outward: bool,
        from: SocketAddr,
        n: usize,
        bytes: Option<Vec<u8>>,
    },
    /// The runtime took `n` actions from [`Proxy::poll_action`] here.
    Polled { n: u64 },
    /// The runtime took `n` datagrams from [`Proxy::poll_datagram`] here.
    Sent { n: u64 },
}

/// A decoded record and where it stands in the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based, in file order, comments aside.
    pub number: u64,
    /// Byte offset and 1-based line of the record's first line.
    pub offset: usize,
    pub line: usize,
    pub record: Record,
}
