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
//! Proxy::accept                          rec.accept(now, l, peer, r), or with its local address
//!                                        rec.accept_on(now, l, peer, local, r)
//! Proxy::handle(ev)                      rec.event(now, &ev, bytes) — a Read's bytes while the core
//!                                        may parse them (they sit at the start of the space it lent)
//! Proxy::handle_timeout / shutdown       rec.timeout(now) / rec.shutdown(now)
//! Proxy::reconfigure (with its text)     rec.reload(now, &text, recheck)
//! Proxy::handle_datagram / handle_reply  rec.datagram(now, l, from, n) / rec.reply(now, id, n)
//! Proxy::handle_udp_failed               rec.udp_failed(now, id)
//! Proxy::poll_action / poll_datagram     rec.polled(&a) / rec.sent(&via, d.len())
//! ```
//!
//! [`Recorder::polled`] and [`Recorder::sent`] matter: the replay polls
//! exactly as many actions (and datagrams) at each point as the live run did, so every action line carries the same
//! record number in both (see [`render_action`]), and a replay that comes up
//! short is reported as a divergence at that record.
//!
//! # The format (version 1)
//!
//! Line-oriented UTF-8 text, every line ending in `\n`, so traces diff and
//! can be read and trimmed by hand. A header, then one record per line:
//!
//! ```text
//! portico-trace 1
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
//! 0.002000000 connected 0.1 10.0.0.1:50000
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
//! listening L<listener> <addr>        listen-failed L<listener> <io>
//! accept-failed L<listener> <io>
//! resolved <conn> <addr>…             (zero or more addresses)
//! resolve-failed <conn>
//! connected <conn> <local>            connect-failed <conn> <io>
//! read <conn> <side> <n> ["bytes"]    read-blocked <conn> <side>
//! eof <conn> <side>                   written <conn> <side> <n>
//! spliced <conn> <from-side> <n>      io-error <conn> <side> <io>
//! timeout                             shutdown
//! reload <lines>                      reload-recheck <lines>
//!                                     (then that many `|` lines of the new configuration)
//! datagram L<listener> <from> <n>     reply <udp> <n>
//! udp-failed <udp>
//! ```
//!
//! and untimed: `wall <secs> <offset>`, `log-level <level>`, `polled <n>`
//! (actions taken), `sent <n>` (datagrams taken). Datagrams are relayed,
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
//! Decoding never panics: a trace that ends inside a line or a configuration
//! block is [`TraceError::Truncated`], anything else malformed is
//! [`TraceError::Corrupt`], both naming the byte offset and line. A trace cut
//! at a line break after the header is a shorter valid trace (a crashed run
//! leaves one).

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config;
use crate::event::{Action, Event, IoKind, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::rules::Wall;
use crate::table::{Accepted, Proxy, Reload};
use crate::udp::{UdpId, Via};

/// The first word of every trace.
pub const MAGIC: &str = "portico-trace";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
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
    /// [`Proxy::accept`] (with `local` when the runtime gave it), and
    /// what it returned.
    Accept {
        t: u64,
        listener: ListenerId,
        peer: SocketAddr,
        local: Option<SocketAddr>,
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

// ---- Recording -------------------------------------------------------------

/// Records a live run. Pure: appends text to a buffer the runtime writes to
/// the trace file (see the module docs for where each call goes).
#[derive(Debug)]
pub struct Recorder {
    base: Instant,
    out: String,
    /// The rendered action lines, when asked for with [`Recorder::with_actions`].
    actions: Option<String>,
    /// Records written so far (the number of the last one).
    records: u64,
    /// The number of the last record that is not a `polled` or `sent`
    /// marker.
    last_input: u64,
    /// Actions (`false`) or datagrams (`true`) taken since the last record
    /// written, and how many.
    taken: (bool, u64),
    /// The last wall time written (set_wall is called far more often than
    /// the second changes).
    wall: Option<Wall>,
}

impl Recorder {
    /// Begins a trace of a [`Proxy`] built with `Proxy::new(config, seed,
    /// now)` from the configuration `config_text`. Later times are recorded
    /// relative to `now`.
    pub fn start(now: Instant, config_text: &str, seed: u64) -> Recorder {
        let mut out = String::with_capacity(config_text.len() + 4096);
        put_header(
            &mut out,
            &Header {
                seed,
                config: config_text.to_string(),
            },
        );
        Recorder {
            base: now,
            out,
            actions: None,
            records: 0,
            last_input: 0,
            taken: (false, 0),
            wall: None,
        }
    }

    /// Also renders every polled action as [`render_action`] does, for
    /// [`Recorder::take_actions`] (the live half of a live-vs-replay check).
    pub fn with_actions(mut self) -> Recorder {
        self.actions = Some(String::new());
        self
    }

    fn at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Writes the pending `polled` or `sent` marker.
    fn flush_taken(&mut self) {
        let (datagrams, n) = self.taken;
        if n > 0 {
            self.records += 1;
            put_record(
                &mut self.out,
                &if datagrams {
                    Record::Sent { n }
                } else {
                    Record::Polled { n }
                },
            );
            self.taken = (false, 0);
        }
    }

    fn took(&mut self, datagram: bool) {
        if self.taken.1 > 0 && self.taken.0 != datagram {
            self.flush_taken();
        }
        self.taken = (datagram, self.taken.1 + 1);
    }

    /// Starts an input record.
    fn begin(&mut self) {
        self.flush_taken();
        self.records += 1;
        self.last_input = self.records;
    }

    fn put(&mut self, record: &Record) {
        self.begin();
        put_record(&mut self.out, record);
    }

    pub fn log_level(&mut self, level: Level) {
        self.put(&Record::LogLevel(level));
    }

    /// Records `wall` if it differs from the last one recorded.
    pub fn wall(&mut self, wall: Wall) {
        if self.wall != Some(wall) {
            self.wall = Some(wall);
            self.put(&Record::Wall(wall));
        }
    }

    pub fn accept(
        &mut self,
        now: Instant,
        listener: ListenerId,
        peer: SocketAddr,
        result: Result<ConnId, Refused>,
    ) {
        let t = self.at(now);
        self.put(&Record::Accept {
            t,
            listener,
            peer,
            local: None,
            result,
        });
    }

    pub fn accept_on(
        &mut self,
        now: Instant,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        result: Result<ConnId, Refused>,
    ) {
        let t = self.at(now);
        self.put(&Record::Accept {
            t,
            listener,
            peer,
            local: Some(local),
            result,
        });
    }

    /// Records `event`. For [`Event::Read`], `recv_bytes` are the bytes read
    /// when the core may parse them (`Proxy::keeps_payload`), `None` to record the
    /// length only; it is ignored for other events.
    pub fn event(&mut self, now: Instant, event: &Event, recv_bytes: Option<&[u8]>) {
        let t = self.at(now);
        self.begin();
        put_event(&mut self.out, t, event, recv_bytes);
    }

    pub fn timeout(&mut self, now: Instant) {
        let t = self.at(now);
        self.put(&Record::Timeout { t });
    }

    pub fn shutdown(&mut self, now: Instant) {
        let t = self.at(now);
        self.put(&Record::Shutdown { t });
    }

    /// `Proxy::reconfigure(config, recheck, now)` with `config` parsed
    /// from `config_text`. Only reloads that reach the core are recorded:
    /// a file that does not parse changes nothing.
    pub fn reload(&mut self, now: Instant, config_text: &str, recheck: bool) {
        let t = self.at(now);
        self.begin();
        put_reload(&mut self.out, t, config_text, recheck);
    }

    /// The runtime took `action` from [`Proxy::poll_action`].
    pub fn polled(&mut self, action: &Action) {
        self.took(false);
        if let Some(lines) = self.actions.as_mut() {
            lines.push_str(&render_action(self.last_input, action));
            lines.push('\n');
        }
    }

    /// `Proxy::handle_datagram(listener, from, n, now)`.
    pub fn datagram(&mut self, now: Instant, listener: ListenerId, from: SocketAddr, n: usize) {
        let t = self.at(now);
        self.put(&Record::Datagram {
            t,
            listener,
            from,
            n,
        });
    }

    /// `Proxy::handle_reply(id, n, now)`.
    pub fn reply(&mut self, now: Instant, id: UdpId, n: usize) {
        let t = self.at(now);
        self.put(&Record::Reply { t, id, n });
    }

    /// `Proxy::handle_udp_failed(id, now)`.
    pub fn udp_failed(&mut self, now: Instant, id: UdpId) {
        let t = self.at(now);
        self.put(&Record::UdpFailed { t, id });
    }

    /// The runtime took a datagram of `len` bytes for `via` from
    /// [`Proxy::poll_datagram`].
    pub fn sent(&mut self, via: &Via, len: usize) {
        self.took(true);
        if let Some(lines) = self.actions.as_mut() {
            lines.push_str(&render_datagram(self.last_input, via, len));
            lines.push('\n');
        }
    }

    /// The trace text recorded since the last call, for the runtime to
    /// append to the trace file.
    pub fn take(&mut self) -> Vec<u8> {
        self.flush_taken();
        std::mem::take(&mut self.out).into_bytes()
    }

    /// The action lines rendered since the last call (empty unless
    /// [`Recorder::with_actions`]), one per line, each ending in `\n`.
    pub fn take_actions(&mut self) -> String {
        self.actions
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Bytes waiting to be taken (a runtime may flush past a threshold).
    pub fn pending(&self) -> usize {
        self.out.len() + self.actions.as_ref().map_or(0, String::len)
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// The line a replay prints for `action`, taken after record number
/// `record` (0: straight after `Proxy::new`). The live runtime writes the
/// same lines through [`Recorder::with_actions`]. Actions are printed in
/// their `Debug` form; access records carry durations computed from the
/// recorded times, which the replay reproduces to the nanosecond.
pub fn render_action(record: u64, action: &Action) -> String {
    format!("{record} {action:?}")
}

/// The line for a datagram taken from [`Proxy::poll_datagram`]: where it
/// goes and its length (its bytes are not in the trace).
pub fn render_datagram(record: u64, via: &Via, len: usize) -> String {
    format!("{record} Datagram {{ via: {via:?}, len: {len} }}")
}

// ---- Encoding --------------------------------------------------------------

/// The whole trace of `header` and `records`.
pub fn encode(header: &Header, records: &[Record]) -> Vec<u8> {
    let mut out = String::new();
    put_header(&mut out, header);
    for r in records {
        put_record(&mut out, r);
    }
    out.into_bytes()
}

fn put_header(out: &mut String, h: &Header) {
    let _ = writeln!(out, "{MAGIC} {VERSION}");
    let _ = writeln!(out, "seed {}", h.seed);
    out.push_str("config ");
    put_block(out, &h.config);
}

/// `<count>\n` and the text's pieces between line breaks, each as `|piece\n`.
fn put_block(out: &mut String, text: &str) {
    let _ = writeln!(out, "{}", text.split('\n').count());
    for piece in text.split('\n') {
        out.push('|');
        out.push_str(piece);
        out.push('\n');
    }
}

fn put_time(out: &mut String, t: u64) {
    let _ = write!(out, "{}.{:09} ", t / NANOS, t % NANOS);
}

fn put_record(out: &mut String, r: &Record) {
    match r {
        Record::LogLevel(l) => {
            let _ = writeln!(out, "log-level {}", l.name());
        }
        Record::Wall(w) => {
            let _ = writeln!(out, "wall {} {}", w.unix_secs, w.utc_offset_secs);
        }
        Record::Accept {
            t,
            listener,
            peer,
            local,
            result,
        } => {
            put_time(out, *t);
            let _ = match local {
                None => write!(out, "accept L{} {peer} ", listener.0),
                Some(local) => write!(out, "accept-on L{} {peer} {local} ", listener.0),
            };
            match result {
                Ok(c) => {
                    let _ = writeln!(out, "{c}");
                }
                Err(why) => {
                    let _ = writeln!(out, "refused:{}", refused_name(*why));
                }
            }
        }
        Record::Event { t, event, bytes } => put_event(out, *t, event, bytes.as_deref()),
        Record::Timeout { t } => {
            put_time(out, *t);
            out.push_str("timeout\n");
        }
        Record::Shutdown { t } => {
            put_time(out, *t);
            out.push_str("shutdown\n");
        }
        Record::Reload { t, config, recheck } => put_reload(out, *t, config, *recheck),
        Record::Datagram {
            t,
            listener,
            from,
            n,
        } => {
            put_time(out, *t);
            let _ = writeln!(out, "datagram L{} {from} {n}", listener.0);
        }
        Record::Reply { t, id, n } => {
            put_time(out, *t);
            let _ = writeln!(out, "reply {}.{} {n}", id.idx, id.gen);
        }
        Record::UdpFailed { t, id } => {
            put_time(out, *t);
            let _ = writeln!(out, "udp-failed {}.{}", id.idx, id.gen);
        }
        Record::Polled { n } => {
            let _ = writeln!(out, "polled {n}");
        }
        Record::Sent { n } => {
            let _ = writeln!(out, "sent {n}");
        }
    }
}

fn put_reload(out: &mut String, t: u64, config: &str, recheck: bool) {
    put_time(out, t);
    out.push_str(if recheck {
        "reload-recheck "
    } else {
        "reload "
    });
    put_block(out, config);
}

struct SideName(Side);

impl fmt::Display for SideName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

fn put_event(out: &mut String, t: u64, event: &Event, bytes: Option<&[u8]>) {
    put_time(out, t);
    let _ = match event {
        Event::Listening { listener, local } => write!(out, "listening L{} {local}", listener.0),
        Event::ListenFailed { listener, error } => {
            write!(out, "listen-failed L{} {}", listener.0, io_name(*error))
        }
        Event::AcceptFailed { listener, error } => {
            write!(out, "accept-failed L{} {}", listener.0, io_name(*error))
        }
        Event::Resolved { conn, addrs } => {
            let _ = write!(out, "resolved {conn}");
            for a in addrs {
                let _ = write!(out, " {a}");
            }
            Ok(())
        }
        Event::ResolveFailed { conn } => write!(out, "resolve-failed {conn}"),
        Event::Connected { conn, local } => write!(out, "connected {conn} {local}"),
        Event::ConnectFailed { conn, error } => {
            write!(out, "connect-failed {conn} {}", io_name(*error))
        }
        Event::Read { conn, side, n } => {
            let _ = write!(out, "read {conn} {} {n}", SideName(*side));
            match bytes {
                // Kept only when they are what was read.
                Some(b) if b.len() == *n => {
                    out.push(' ');
                    quote(out, b);
                }
                _ => {}
            }
            Ok(())
        }
        Event::ReadBlocked { conn, side } => {
            write!(out, "read-blocked {conn} {}", SideName(*side))
        }
        Event::Eof { conn, side } => write!(out, "eof {conn} {}", SideName(*side)),
        Event::Written { conn, side, n } => {
            write!(out, "written {conn} {} {n}", SideName(*side))
        }
        Event::Spliced { conn, from, n } => {
            write!(out, "spliced {conn} {} {n}", SideName(*from))
        }
        Event::IoError { conn, side, error } => {
            write!(
                out,
                "io-error {conn} {} {}",
                SideName(*side),
                io_name(*error)
            )
        }
    };
    out.push('\n');
}

const IO_KINDS: [IoKind; 10] = [
    IoKind::Refused,
    IoKind::Reset,
    IoKind::TimedOut,
    IoKind::HostUnreachable,
    IoKind::NetUnreachable,
    IoKind::PermissionDenied,
    IoKind::AddrInUse,
    IoKind::AddrNotAvailable,
    IoKind::TooManyFiles,
    IoKind::Other,
];

fn io_name(k: IoKind) -> &'static str {
    match k {
        IoKind::Refused => "refused",
        IoKind::Reset => "reset",
        IoKind::TimedOut => "timed-out",
        IoKind::HostUnreachable => "host-unreachable",
        IoKind::NetUnreachable => "net-unreachable",
        IoKind::PermissionDenied => "permission-denied",
        IoKind::AddrInUse => "addr-in-use",
        IoKind::AddrNotAvailable => "addr-not-available",
        IoKind::TooManyFiles => "too-many-files",
        IoKind::Other => "other",
    }
}

const REFUSALS: [Refused; 5] = [
    Refused::TooMany,
    Refused::PerClient,
    Refused::ShuttingDown,
    Refused::Denied,
    Refused::UnknownListener,
];

fn refused_name(r: Refused) -> &'static str {
    match r {
        Refused::TooMany => "too-many",
        Refused::PerClient => "per-client",
        Refused::ShuttingDown => "shutting-down",
        Refused::Denied => "denied",
        Refused::UnknownListener => "unknown-listener",
    }
}

fn quote(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
}

// ---- Decoding --------------------------------------------------------------

/// Decodes a whole trace.
pub fn decode(trace: &[u8]) -> Result<(Header, Vec<Record>), TraceError> {
    let reader = Reader::new(trace)?;
    let header = reader.header().clone();
    let records = reader
        .map(|e| e.map(|e| e.record))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header, records))
}

/// Reads a trace record by record (after its header). Yields at most one
/// error, then ends.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The 1-based number of the next line.
    line: usize,
    record: u64,
    header: Header,
    done: bool,
}

struct RawLine<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
}

impl<'a> Reader<'a> {
    /// Reads the header of `data`.
    pub fn new(data: &'a [u8]) -> Result<Reader<'a>, TraceError> {
        let magic = format!("{MAGIC} ");
        let n = data.len().min(magic.len());
        if data[..n] != magic.as_bytes()[..n] {
            return Err(TraceError::NotATrace);
        }
        let mut r = Reader {
            data,
            pos: 0,
            line: 1,
            record: 0,
            header: Header {
                seed: 0,
                config: String::new(),
            },
            done: false,
        };
        let first = r.expect_line("the header")?;
        let Some(version) = first.text.strip_prefix(magic.as_str()) else {
            return Err(TraceError::NotATrace);
        };
        if version != VERSION.to_string() {
            return Err(TraceError::Version {
                found: shown(version),
            });
        }
        let l = r.expect_line("the header (seed)")?;
        let mut w = Words::new(&l);
        w.keyword("seed")?;
        let seed = w.parse("the seed", parse_u64)?;
        w.end()?;
        let l = r.expect_line("the header (config)")?;
        let mut w = Words::new(&l);
        w.keyword("config")?;
        let lines = w.parse("the number of configuration lines", parse_u64)?;
        w.end()?;
        let config = r.block(lines, "the configuration")?;
        r.header = Header { seed, config };
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next line, `None` at the end of the data.
    fn raw_line(&mut self, what: &str) -> Result<Option<RawLine<'a>>, TraceError> {
        let data: &'a [u8] = self.data;
        let Some(rest) = data.get(self.pos..).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(TraceError::Truncated {
                offset: data.len(),
                line: self.line,
                what: format!("{what} ends without a line break"),
            });
        };
        let (offset, line) = (self.pos, self.line);
        self.pos += nl + 1;
        self.line += 1;
        let text = std::str::from_utf8(&rest[..nl]).map_err(|e| TraceError::Corrupt {
            offset: offset + e.valid_up_to(),
            line,
            message: "the line is not valid UTF-8".into(),
        })?;
        Ok(Some(RawLine { text, offset, line }))
    }

    fn expect_line(&mut self, what: &str) -> Result<RawLine<'a>, TraceError> {
        match self.raw_line(what)? {
            Some(l) => Ok(l),
            None => Err(TraceError::Truncated {
                offset: self.data.len(),
                line: self.line,
                what: format!("the trace ends before {what}"),
            }),
        }
    }

    /// `lines` lines of `|text`, joined with '\n'.
    fn block(&mut self, lines: u64, what: &str) -> Result<String, TraceError> {
        let mut text = String::new();
        let mut i = 0u64;
        while i < lines {
            let Some(l) = self.raw_line(what)? else {
                return Err(TraceError::Truncated {
                    offset: self.data.len(),
                    line: self.line,
                    what: format!("{what} has {lines} lines; the trace ends after {i}"),
                });
            };
            let Some(piece) = l.text.strip_prefix('|') else {
                return Err(TraceError::Corrupt {
                    offset: l.offset,
                    line: l.line,
                    message: format!(
                        "line {} of {lines} of {what} does not begin with `|`",
                        i + 1
                    ),
                });
            };
            if i > 0 {
                text.push('\n');
            }
            text.push_str(piece);
            i += 1;
        }
        Ok(text)
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, TraceError> {
        loop {
            let Some(l) = self.raw_line("the last record")? else {
                return Ok(None);
            };
            if l.text.starts_with('#') {
                continue;
            }
            self.record += 1;
            let record = self.parse_record(&l)?;
            return Ok(Some(Entry {
                number: self.record,
                offset: l.offset,
                line: l.line,
                record,
            }));
        }
    }

    fn parse_record(&mut self, l: &RawLine<'a>) -> Result<Record, TraceError> {
        let mut w = Words::new(l);
        let (at, first) = w.word("a time or a record kind")?;
        let record = match first {
            "wall" => {
                let unix_secs = w.parse("seconds since the epoch", parse_i64)?;
                let utc_offset_secs = w.parse("a UTC offset in seconds", |s| {
                    parse_i64(s).and_then(|v| i32::try_from(v).ok())
                })?;
                Record::Wall(Wall {
                    unix_secs,
                    utc_offset_secs,
                })
            }
            "log-level" => Record::LogLevel(w.parse("a log level", Level::parse)?),
            "polled" => Record::Polled {
                n: w.parse("a number of actions", parse_u64)?,
            },
            "sent" => Record::Sent {
                n: w.parse("a number of datagrams", parse_u64)?,
            },
            _ => {
                let t = parse_time(first).ok_or_else(|| {
                    w.err(
                        at,
                        format!(
                            "`{}` is neither a record kind nor a time (seconds.nanoseconds)",
                            shown(first)
                        ),
                    )
                })?;
                let (at, kind) = w.word("a record kind")?;
                match kind {
                    "accept" | "accept-on" => {
                        let listener = w.parse("a listener (L<n>)", parse_listener)?;
                        let peer = w.parse("the peer address", parse_addr)?;
                        let local = if kind == "accept-on" {
                            Some(w.parse("the local address", parse_addr)?)
                        } else {
                            None
                        };
                        let result = w.parse("a connection id or refused:<why>", |s| {
                            match s.strip_prefix("refused:") {
                                Some(why) => REFUSALS
                                    .into_iter()
                                    .find(|r| refused_name(*r) == why)
                                    .map(Err),
                                None => parse_conn(s).map(Ok),
                            }
                        })?;
                        Record::Accept {
                            t,
                            listener,
                            peer,
                            local,
                            result,
                        }
                    }
                    "timeout" => Record::Timeout { t },
                    "datagram" => Record::Datagram {
                        t,
                        listener: w.parse("a listener (L<n>)", parse_listener)?,
                        from: w.parse("the sender's address", parse_addr)?,
                        n: w.parse("a byte count", parse_usize)?,
                    },
                    "reply" => Record::Reply {
                        t,
                        id: w.parse(UDP, parse_udp)?,
                        n: w.parse("a byte count", parse_usize)?,
                    },
                    "udp-failed" => Record::UdpFailed {
                        t,
                        id: w.parse(UDP, parse_udp)?,
                    },
                    "shutdown" => Record::Shutdown { t },
                    "reload" | "reload-recheck" => {
                        let lines = w.parse("the number of configuration lines", parse_u64)?;
                        w.end()?;
                        let config = self.block(lines, "the reloaded configuration")?;
                        return Ok(Record::Reload {
                            t,
                            config,
                            recheck: kind == "reload-recheck",
                        });
                    }
                    _ => {
                        let (event, bytes) = parse_event(at, kind, &mut w)?;
                        Record::Event { t, event, bytes }
                    }
                }
            }
        };
        w.end()?;
        Ok(record)
    }
}

impl Iterator for Reader<'_> {
    type Item = Result<Entry, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn parse_event(
    at: usize,
    kind: &str,
    w: &mut Words<'_>,
) -> Result<(Event, Option<Vec<u8>>), TraceError> {
    const CONN: &str = "a connection id (index.generation)";
    const SIDE: &str = "a side (client or upstream)";
    const IO: &str = "an i/o error kind";
    const LISTENER: &str = "a listener (L<n>)";
    let event = match kind {
        "listening" => Event::Listening {
            listener: w.parse(LISTENER, parse_listener)?,
            local: w.parse("the local address", parse_addr)?,
        },
        "listen-failed" => Event::ListenFailed {
            listener: w.parse(LISTENER, parse_listener)?,
            error: w.parse(IO, parse_io)?,
        },
        "accept-failed" => Event::AcceptFailed {
            listener: w.parse(LISTENER, parse_listener)?,
            error: w.parse(IO, parse_io)?,
        },
        "resolved" => {
            let conn = w.parse(CONN, parse_conn)?;
            let mut addrs = Vec::new();
            while !w.at_end() {
                addrs.push(w.parse("an address", parse_addr)?);
            }
            Event::Resolved { conn, addrs }
        }
        "resolve-failed" => Event::ResolveFailed {
            conn: w.parse(CONN, parse_conn)?,
        },
        "connected" => Event::Connected {
            conn: w.parse(CONN, parse_conn)?,
            local: w.parse("the local address", parse_addr)?,
        },
        "connect-failed" => Event::ConnectFailed {
            conn: w.parse(CONN, parse_conn)?,
            error: w.parse(IO, parse_io)?,
        },
        "read" => {
            let conn = w.parse(CONN, parse_conn)?;
            let side = w.parse(SIDE, parse_side)?;
            let n = w.parse("a byte count", parse_usize)?;
            let bytes = match w.rest() {
                None => None,
                Some((at, s)) => {
                    let b = unquote(s).map_err(|(i, m)| w.err(at + i, m))?;
                    if b.len() != n {
                        return Err(
                            w.err(at, format!("a read of {n} bytes keeps {} bytes", b.len()))
                        );
                    }
                    Some(b)
                }
            };
            return Ok((Event::Read { conn, side, n }, bytes));
        }
        "read-blocked" => Event::ReadBlocked {
            conn: w.parse(CONN, parse_conn)?,
            side: w.parse(SIDE, parse_side)?,
        },
        "eof" => Event::Eof {
            conn: w.parse(CONN, parse_conn)?,
            side: w.parse(SIDE, parse_side)?,
        },
        "written" => Event::Written {
            conn: w.parse(CONN, parse_conn)?,
            side: w.parse(SIDE, parse_side)?,
            n: w.parse("a byte count", parse_usize)?,
        },
        "spliced" => Event::Spliced {
            conn: w.parse(CONN, parse_conn)?,
            from: w.parse(SIDE, parse_side)?,
            n: w.parse("a byte count", parse_usize)?,
        },
        "io-error" => Event::IoError {
            conn: w.parse(CONN, parse_conn)?,
            side: w.parse(SIDE, parse_side)?,
            error: w.parse(IO, parse_io)?,
        },
        other => {
            return Err(w.err(at, format!("unknown record kind `{}`", shown(other))));
        }
    };
    Ok((event, None))
}

/// The space-separated words of one line, with their offsets.
struct Words<'a> {
    text: &'a str,
    /// Just past the last word taken.
    pos: usize,
    offset: usize,
    line: usize,
}

impl<'a> Words<'a> {
    fn new(l: &RawLine<'a>) -> Words<'a> {
        Words {
            text: l.text,
            pos: 0,
            offset: l.offset,
            line: l.line,
        }
    }

    fn err(&self, at: usize, message: impl Into<String>) -> TraceError {
        TraceError::Corrupt {
            offset: self.offset + at,
            line: self.line,
            message: message.into(),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// The next word and its position in the line.
    fn word(&mut self, what: &str) -> Result<(usize, &'a str), TraceError> {
        let mut p = self.pos;
        if p > 0 {
            // Words after the first follow exactly one space.
            if p >= self.text.len() {
                return Err(self.err(p, format!("expected {what}, found the end of the line")));
            }
            p += 1;
        }
        let rest = self.text.get(p..).unwrap_or("");
        let len = rest.find(' ').unwrap_or(rest.len());
        if len == 0 {
            let found = if rest.is_empty() {
                "the end of the line"
            } else {
                "a space"
            };
            return Err(self.err(p, format!("expected {what}, found {found}")));
        }
        self.pos = p + len;
        Ok((p, &rest[..len]))
    }

    fn keyword(&mut self, k: &str) -> Result<(), TraceError> {
        let (at, w) = self.word(k)?;
        if w == k {
            Ok(())
        } else {
            Err(self.err(at, format!("expected `{k}`, found `{}`", shown(w))))
        }
    }

    fn parse<T>(&mut self, what: &str, f: impl FnOnce(&str) -> Option<T>) -> Result<T, TraceError> {
        let (at, w) = self.word(what)?;
        f(w).ok_or_else(|| self.err(at, format!("expected {what}, found `{}`", shown(w))))
    }

    /// Everything after the next space, if anything follows.
    fn rest(&mut self) -> Option<(usize, &'a str)> {
        if self.at_end() {
            return None;
        }
        let p = self.pos + 1;
        self.pos = self.text.len();
        Some((p, self.text.get(p..).unwrap_or("")))
    }

    fn end(&self) -> Result<(), TraceError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err(self.pos + 1, "unexpected text at the end of the record"))
        }
    }
}

/// At most 40 characters of `s`, for messages about untrusted text.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_u64(s: &str) -> Option<u64> {
    if digits(s) {
        s.parse().ok()
    } else {
        None
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

fn parse_i64(s: &str) -> Option<i64> {
    if digits(s.strip_prefix('-').unwrap_or(s)) {
        s.parse().ok()
    } else {
        None
    }
}

fn parse_time(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.')?;
    if frac.len() != 9 || !digits(frac) {
        return None;
    }
    parse_u64(secs)?
        .checked_mul(NANOS)?
        .checked_add(parse_u64(frac)?)
}

fn parse_usize(s: &str) -> Option<usize> {
    parse_u64(s).and_then(|v| usize::try_from(v).ok())
}

const UDP: &str = "a UDP mapping id (index.generation)";

fn parse_udp(s: &str) -> Option<UdpId> {
    let (idx, gen) = s.split_once('.')?;
    Some(UdpId::from_parts(parse_u32(idx)?, parse_u32(gen)?))
}

fn parse_conn(s: &str) -> Option<ConnId> {
    let (idx, gen) = s.split_once('.')?;
    Some(ConnId::from_parts(parse_u32(idx)?, parse_u32(gen)?))
}

fn parse_listener(s: &str) -> Option<ListenerId> {
    s.strip_prefix('L').and_then(parse_u32).map(ListenerId)
}

fn parse_side(s: &str) -> Option<Side> {
    match s {
        "client" => Some(Side::Client),
        "upstream" => Some(Side::Upstream),
        _ => None,
    }
}

fn parse_io(s: &str) -> Option<IoKind> {
    IO_KINDS.into_iter().find(|k| io_name(*k) == s)
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The bytes of a quoted string that makes up all of `s`; on error, the
/// position in `s` and what is wrong.
fn unquote(s: &str) -> Result<Vec<u8>, (usize, String)> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return Err((0, "expected the bytes read, as a quoted string".into()));
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 1;
    loop {
        let Some(&c) = b.get(i) else {
            return Err((i, "the quoted string has no closing quote".into()));
        };
        match c {
            b'"' => {
                if i + 1 != b.len() {
                    return Err((i + 1, "unexpected text after the closing quote".into()));
                }
                return Ok(out);
            }
            b'\\' => {
                let e = b.get(i + 1).copied();
                let byte = match e {
                    Some(b'\\') => b'\\',
                    Some(b'"') => b'"',
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    Some(b'x') => {
                        let hi = b.get(i + 2).copied().and_then(hex);
                        let lo = b.get(i + 3).copied().and_then(hex);
                        match (hi, lo) {
                            (Some(hi), Some(lo)) => {
                                out.push((hi << 4) | lo);
                                i += 4;
                                continue;
                            }
                            _ => return Err((i, "`\\x` takes two hex digits".into())),
                        }
                    }
                    _ => return Err((i, "unknown escape in the quoted string".into())),
                };
                out.push(byte);
                i += 2;
            }
            0x20..=0x7e => {
                out.push(c);
                i += 1;
            }
            _ => {
                return Err((
                    i,
                    "a byte that must be escaped appears raw in the quoted string".into(),
                ))
            }
        }
    }
}

// ---- Replay ----------------------------------------------------------------

/// Runs a fresh core over `trace` and hands `out` one line per action (see
/// [`render_action`]), in order: actions are taken where the live run took
/// them (its `polled` records), and whatever is left at the end.
pub fn replay(trace: &[u8], out: &mut impl FnMut(String)) -> Result<(), TraceError> {
    let reader = Reader::new(trace)?;
    let header = reader.header().clone();
    let config = config::parse(&header.config, CONFIG_NAME).map_err(|e| TraceError::Config {
        message: e.to_string(),
    })?;
    let base = Instant::now();
    let mut proxy = Proxy::new(config, header.seed, base);
    let mut last_input = 0u64;
    for entry in reader {
        let Entry {
            number,
            offset,
            line,
            record,
        } = entry?;
        let diverged = |message: String| TraceError::Diverged {
            record: number,
            line,
            offset,
            message,
        };
        let at = |t: u64| {
            base.checked_add(Duration::from_nanos(t))
                .ok_or_else(|| TraceError::Corrupt {
                    offset,
                    line,
                    message: "the time is too far in the future for this system's clock".into(),
                })
        };
        match record {
            Record::Polled { n } => {
                for i in 0..n {
                    let Some(a) = proxy.poll_action() else {
                        return Err(diverged(format!(
                            "the live run took {n} actions here; the replay has only {i}"
                        )));
                    };
                    out(render_action(last_input, &a));
                }
                continue;
            }
            Record::Sent { n } => {
                for i in 0..n {
                    let Some((via, data)) = proxy.poll_datagram() else {
                        return Err(diverged(format!(
                            "the live run took {n} datagrams here; the replay has only {i}"
                        )));
                    };
                    out(render_datagram(last_input, &via, data.len()));
                }
                continue;
            }
            _ => {}
        }
        last_input = number;
        match record {
            Record::LogLevel(l) => proxy.set_log_level(l),
            Record::Wall(w) => proxy.set_wall(w),
            Record::Accept {
                t,
                listener,
                peer,
                local,
                result,
            } => {
                let now = at(t)?;
                let got = match local {
                    None => proxy.accept(Accepted::new(listener, peer), now),
                    Some(local) => proxy.accept(Accepted::new(listener, peer).local(local), now),
                };
                if got != result {
                    return Err(diverged(format!(
                        "accept returned {got:?}; the live run got {result:?}"
                    )));
                }
            }
            Record::Event { t, event, bytes } => {
                let now = at(t)?;
                if let Event::Read { conn, side, n } = event {
                    let Some(buf) = proxy.recv_buf(conn, side) else {
                        return Err(diverged(format!(
                            "the live run read {n} bytes on {} of {conn}; the replayed core \
                             offers no buffer there",
                            SideName(side)
                        )));
                    };
                    let room = buf.len();
                    let Some(dst) = buf.get_mut(..n) else {
                        return Err(diverged(format!(
                            "the live run read {n} bytes on {} of {conn}; the replayed core \
                             offers room for {room}",
                            SideName(side)
                        )));
                    };
                    match bytes {
                        Some(b) if b.len() == n => dst.copy_from_slice(&b),
                        Some(b) => {
                            return Err(TraceError::Corrupt {
                                offset,
                                line,
                                message: format!("a read of {n} bytes keeps {}", b.len()),
                            })
                        }
                        None => dst.fill(0),
                    }
                }
                proxy.handle(event, now);
            }
            Record::Timeout { t } => proxy.handle_timeout(at(t)?),
            Record::Shutdown { t } => proxy.shutdown(at(t)?),
            Record::Reload {
                t,
                config: text,
                recheck,
            } => {
                let now = at(t)?;
                let config = config::parse(&text, CONFIG_NAME).map_err(|e| TraceError::Config {
                    message: format!("the reload of record {number} (line {line}): {e}"),
                })?;
                let reload = Reload {
                    text: &text,
                    recheck,
                    closed_elsewhere: 0,
                };
                proxy.reconfigure(config, reload, now);
            }
            Record::Datagram {
                t,
                listener,
                from,
                n,
            } => {
                let now = at(t)?;
                let buf = proxy.datagram_buf();
                let room = buf.len();
                let Some(dst) = buf.get_mut(..n) else {
                    return Err(diverged(format!(
                        "the live run received a datagram of {n} bytes; the replayed core \
                         offers room for {room}"
                    )));
                };
                dst.fill(0);
                proxy.handle_datagram(listener, from, n, now);
            }
            Record::Reply { t, id, n } => {
                let now = at(t)?;
                let buf = proxy.datagram_buf();
                let room = buf.len();
                let Some(dst) = buf.get_mut(..n) else {
                    return Err(diverged(format!(
                        "the live run received a reply of {n} bytes; the replayed core \
                         offers room for {room}"
                    )));
                };
                dst.fill(0);
                proxy.handle_reply(id, n, now);
            }
            Record::UdpFailed { t, id } => proxy.handle_udp_failed(id, at(t)?),
            Record::Polled { .. } | Record::Sent { .. } => {}
        }
    }
    while let Some(a) = proxy.poll_action() {
        out(render_action(last_input, &a));
    }
    while let Some((via, data)) = proxy.poll_datagram() {
        out(render_datagram(last_input, &via, data.len()));
    }
    Ok(())
}

/// [`replay`], collecting the lines.
pub fn replay_lines(trace: &[u8]) -> Result<Vec<String>, TraceError> {
    let mut lines = Vec::new();
    replay(trace, &mut |l| lines.push(l))?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    const CONFIG: &str = r#"[limits]
idle_timeout = "10s"
shutdown_grace = "5s"

[[service]]
name = "fwd"
kind = "mapped"
listen = ["127.0.0.1:7000"]
destination = "192.0.2.1:80"

[[service]]
name = "sox"
kind = "socks"
listen = ["127.0.0.1:1080"]

[[service]]
name = "dns"
kind = "mapped"
protocol = "udp"
listen = ["127.0.0.1:5353"]
destination = "192.0.2.53:53"
"#;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn c(i: u32, g: u32) -> ConnId {
        ConnId::from_parts(i, g)
    }

    fn every_record() -> Vec<Record> {
        let all_bytes: Vec<u8> = (0..=255u8).collect();
        let mut v = vec![
            Record::LogLevel(Level::Debug),
            Record::LogLevel(Level::Error),
            Record::Wall(Wall {
                unix_secs: 1_700_000_000,
                utc_offset_secs: 3600,
            }),
            Record::Wall(Wall {
                unix_secs: -86_401,
                utc_offset_secs: -14 * 3600,
            }),
            Record::Accept {
                t: 0,
                listener: ListenerId(0),
                peer: sa("10.0.0.2:40000"),
                local: None,
                result: Ok(c(0, 1)),
            },
            Record::Accept {
                t: u64::MAX,
                listener: ListenerId(u32::MAX),
                peer: sa("[2001:db8::1]:1"),
                local: Some(sa("[2001:db8::2]:21")),
                result: Ok(c(u32::MAX, u32::MAX)),
            },
            Record::Timeout { t: 1 },
            Record::Shutdown { t: NANOS },
            Record::Reload {
                t: 12_345_678_901,
                config: "a = 1\r\n\n|b\n".into(),
                recheck: false,
            },
            Record::Reload {
                t: 5,
                config: String::new(),
                recheck: true,
            },
            Record::Polled { n: 0 },
            Record::Polled { n: 42 },
            Record::Sent { n: 3 },
            Record::Datagram {
                t: 8,
                listener: ListenerId::new(2, 1),
                from: sa("[fe80::1]:53"),
                n: 65_507,
            },
            Record::Reply {
                t: 9,
                id: UdpId::from_parts(0, 1),
                n: 0,
            },
            Record::UdpFailed {
                t: 10,
                id: UdpId::from_parts(u32::MAX, 7),
            },
        ];
        for r in REFUSALS {
            v.push(Record::Accept {
                t: 7,
                listener: ListenerId(3),
                peer: sa("[::ffff:1.2.3.4]:65535"),
                local: None,
                result: Err(r),
            });
            v.push(Record::Accept {
                t: 7,
                listener: ListenerId::new(5, 9),
                peer: sa("1.2.3.4:5"),
                local: Some(sa("0.0.0.0:0")),
                result: Err(r),
            });
        }
        let ev = |event| Record::Event {
            t: 999_999_999,
            event,
            bytes: None,
        };
        for error in IO_KINDS {
            v.push(ev(Event::ListenFailed {
                listener: ListenerId(1),
                error,
            }));
            v.push(ev(Event::AcceptFailed {
                listener: ListenerId(2),
                error,
            }));
            v.push(ev(Event::ConnectFailed {
                conn: c(4, 2),
                error,
            }));
            v.push(ev(Event::IoError {
                conn: c(4, 2),
                side: Side::Upstream,
                error,
            }));
        }
        v.extend([
            ev(Event::Listening {
                listener: ListenerId(0),
                local: sa("0.0.0.0:8080"),
            }),
            ev(Event::Resolved {
                conn: c(1, 1),
                addrs: vec![],
            }),
            ev(Event::Resolved {
                conn: c(1, 1),
                addrs: vec![sa("192.0.2.9:80"), sa("[2001:db8::9]:80")],
            }),
            ev(Event::ResolveFailed { conn: c(1, 2) }),
            ev(Event::Connected {
                conn: c(2, 3),
                local: sa("[::1]:5000"),
            }),
            ev(Event::Read {
                conn: c(0, 1),
                side: Side::Client,
                n: 1400,
            }),
            Record::Event {
                t: 3,
                event: Event::Read {
                    conn: c(0, 1),
                    side: Side::Upstream,
                    n: 256,
                },
                bytes: Some(all_bytes),
            },
            Record::Event {
                t: 3,
                event: Event::Read {
                    conn: c(0, 1),
                    side: Side::Client,
                    n: 0,
                },
                bytes: Some(vec![]),
            },
            Record::Event {
                t: 3,
                event: Event::Read {
                    conn: c(0, 1),
                    side: Side::Client,
                    n: 18,
                },
                bytes: Some(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            },
            ev(Event::ReadBlocked {
                conn: c(0, 1),
                side: Side::Client,
            }),
            ev(Event::Eof {
                conn: c(0, 1),
                side: Side::Upstream,
            }),
            ev(Event::Written {
                conn: c(0, 1),
                side: Side::Client,
                n: 65536,
            }),
            ev(Event::Spliced {
                conn: c(0, 1),
                from: Side::Upstream,
                n: 262144,
            }),
            ev(Event::Spliced {
                conn: c(7, 3),
                from: Side::Client,
                n: 0,
            }),
        ]);
        v
    }

    #[test]
    fn round_trip_every_record_kind() {
        let header = Header {
            seed: u64::MAX,
            config: CONFIG.into(),
        };
        let records = every_record();
        let bytes = encode(&header, &records);
        let (h, r) = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h, header);
        assert_eq!(r, records);
        // One record a line, plus the multi-line reloads.
        let text = String::from_utf8(bytes).expect("utf-8");
        let start = format!(
            "portico-trace 1\nseed 18446744073709551615\nconfig {}\n|[limits]\n",
            CONFIG.split('\n').count()
        );
        assert!(text.starts_with(&start), "{text}");
        assert!(text.contains("\n0.999999999 read 0.1 client 1400\n"));
        assert!(text.contains(" read 0.1 client 18 \"GET / HTTP/1.1\\r\\n\\r\\n\"\n"));
        assert!(text.contains("accept L3 [::ffff:1.2.3.4]:65535 refused:unknown-listener\n"));
        assert!(text.contains("12.345678901 reload 4\n|a = 1\r\n|\n||b\n|\n"));
    }

    #[test]
    fn round_trip_quickcheck_payloads_and_configs() {
        fn prop(config: String, payload: Vec<u8>, seed: u64, t: u64) -> bool {
            let header = Header { seed, config };
            let records = vec![
                Record::Event {
                    t,
                    event: Event::Read {
                        conn: c(1, 1),
                        side: Side::Client,
                        n: payload.len(),
                    },
                    bytes: Some(payload),
                },
                Record::Reload {
                    t,
                    config: header.config.clone(),
                    recheck: seed & 1 == 0,
                },
            ];
            decode(&encode(&header, &records)) == Ok((header, records))
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(String, Vec<u8>, u64, u64) -> bool);
    }

    #[test]
    fn comments_are_skipped_and_records_numbered() {
        let mut t = encode(
            &Header {
                seed: 1,
                config: String::new(),
            },
            &[],
        );
        t.extend_from_slice(b"# a note\n0.000000001 timeout\n# another\npolled 3\n");
        let r = Reader::new(&t).expect("header");
        let e: Vec<Entry> = r.collect::<Result<_, _>>().expect("records");
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].number, e[0].line), (1, 6));
        assert_eq!((e[1].number, e[1].line), (2, 8));
        assert_eq!(e[1].record, Record::Polled { n: 3 });
    }

    // ---- A recorded session, replayed -----------------------------------

    /// Plays the runtime by hand around a table that records itself.
    struct Live {
        proxy: Proxy,
        t0: Instant,
        actions: Vec<Action>,
    }

    impl Live {
        fn new(text: &str) -> Live {
            let t0 = Instant::now();
            let config = config::parse(text, "live.toml").unwrap_or_else(|e| panic!("{e}"));
            let mut proxy = Proxy::new(config, 7, t0);
            proxy.record(text);
            proxy.set_log_level(Level::Debug);
            Live {
                proxy,
                t0,
                actions: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            // Odd nanoseconds, so durations are not round.
            self.t0 + Duration::from_nanos(ms * 1_000_000 + 123)
        }

        /// Takes at most `max` actions, as a runtime that handles an event
        /// in the middle of its drain would.
        fn poll(&mut self, max: usize) -> Vec<Action> {
            let mut got = Vec::new();
            while got.len() < max {
                let Some(a) = self.proxy.poll_action() else {
                    break;
                };
                got.push(a);
            }
            self.actions.extend(got.iter().cloned());
            got
        }

        fn drain(&mut self) -> Vec<Action> {
            self.poll(usize::MAX)
        }

        /// Takes every datagram waiting to be sent.
        fn send(&mut self) -> Vec<(Via, Vec<u8>)> {
            std::iter::from_fn(|| self.proxy.poll_datagram()).collect()
        }

        fn datagram(&mut self, ms: u64, l: ListenerId, from: &str, bytes: &[u8]) {
            let now = self.at(ms);
            self.proxy.datagram_buf()[..bytes.len()].copy_from_slice(bytes);
            self.proxy.handle_datagram(l, sa(from), bytes.len(), now);
        }

        fn reply(&mut self, ms: u64, id: UdpId, bytes: &[u8]) {
            let now = self.at(ms);
            self.proxy.datagram_buf()[..bytes.len()].copy_from_slice(bytes);
            self.proxy.handle_reply(id, bytes.len(), now);
        }

        fn udp_failed(&mut self, ms: u64, id: UdpId) {
            let now = self.at(ms);
            self.proxy.handle_udp_failed(id, now);
        }

        fn wall(&mut self, w: Wall) {
            self.proxy.set_wall(w);
        }

        fn handle(&mut self, ms: u64, ev: Event) {
            let now = self.at(ms);
            self.proxy.handle(ev, now);
        }

        fn accept(&mut self, ms: u64, l: u32, peer: &str) -> Result<ConnId, Refused> {
            let now = self.at(ms);
            self.proxy
                .accept(Accepted::new(ListenerId(l), sa(peer)), now)
        }

        fn accept_on(
            &mut self,
            ms: u64,
            l: ListenerId,
            peer: &str,
            local: &str,
        ) -> Result<ConnId, Refused> {
            let now = self.at(ms);
            let accepted = Accepted::new(l, sa(peer)).local(sa(local));
            self.proxy.accept(accepted, now)
        }

        fn reload(&mut self, ms: u64, text: &str, recheck: bool) {
            let now = self.at(ms);
            let config = config::parse(text, "live.toml").unwrap_or_else(|e| panic!("{e}"));
            let reload = Reload {
                text,
                recheck,
                closed_elsewhere: 0,
            };
            self.proxy.reconfigure(config, reload, now);
        }

        /// A read of `bytes`; `kept`: the core may parse them, so the
        /// trace keeps them (it decides that itself; the argument says what
        /// the test expects of it).
        fn read(&mut self, ms: u64, conn: ConnId, side: Side, bytes: &[u8], kept: bool) {
            let now = self.at(ms);
            assert_eq!(
                self.proxy.keeps_payload(conn),
                kept,
                "{conn} {side:?}: whether the bytes read are kept"
            );
            let buf = self.proxy.recv_buf(conn, side).expect("read wanted");
            buf[..bytes.len()].copy_from_slice(bytes);
            let ev = Event::Read {
                conn,
                side,
                n: bytes.len(),
            };
            self.proxy.handle(ev, now);
        }

        /// Writes everything waiting for `side`; returns it.
        fn write(&mut self, ms: u64, conn: ConnId, side: Side) -> Vec<u8> {
            let data = self
                .proxy
                .send_buf(conn, side)
                .map(|parts| parts.concat())
                .unwrap_or_default();
            if !data.is_empty() {
                self.handle(
                    ms,
                    Event::Written {
                        conn,
                        side,
                        n: data.len(),
                    },
                );
            }
            data
        }

        fn timeout(&mut self, ms: u64) {
            let now = self.at(ms);
            self.proxy.handle_timeout(now);
        }

        fn shutdown(&mut self, ms: u64) {
            let now = self.at(ms);
            self.proxy.shutdown(now);
        }

        fn finish(mut self) -> (Vec<u8>, Vec<String>, Vec<Action>) {
            self.drain();
            let (trace, lines) = self.proxy.take_trace().unwrap_or_default();
            let lines = lines.lines().map(String::from).collect();
            (trace, lines, self.actions)
        }
    }

    /// A session through both a mapped port (relayed bytes, lengths only)
    /// and SOCKS5 (a handshake, kept), with resolution, a failed connect, a
    /// pause for want of descriptors, an idle timeout and a shutdown.
    fn session() -> (Vec<u8>, Vec<String>, Vec<Action>) {
        let mut l = Live::new(CONFIG);
        // Half the startup actions, then a listener reported from inside the
        // drain (as the mio runtime does), then the rest.
        assert_eq!(l.poll(1).len(), 1);
        l.handle(
            0,
            Event::Listening {
                listener: ListenerId(0),
                local: sa("127.0.0.1:7000"),
            },
        );
        l.drain();
        l.handle(
            0,
            Event::Listening {
                listener: ListenerId(1),
                local: sa("127.0.0.1:1080"),
            },
        );
        l.wall(Wall::utc(1_700_000_000));
        l.wall(Wall::utc(1_700_000_000)); // unchanged: not recorded again
        l.handle(
            0,
            Event::Listening {
                listener: ListenerId(2),
                local: sa("127.0.0.1:5353"),
            },
        );
        l.drain();

        // The UDP port: a mapping opens, a query goes out, an answer comes
        // back; a second client's mapping fails.
        let udp = ListenerId(2);
        l.datagram(0, udp, "10.0.0.8:5000", b"private query");
        let opened = |acts: Vec<Action>| {
            acts.into_iter()
                .find_map(|a| match a {
                    Action::UdpOpen { id, .. } => Some(id),
                    _ => None,
                })
                .expect("a mapping opens")
        };
        let id = opened(l.drain());
        let out = l.send();
        assert_eq!(out, vec![(Via::Mapping(id), b"private query".to_vec())]);
        l.reply(1, id, b"private answer");
        l.datagram(1, udp, "10.0.0.8:5000", b"again");
        assert_eq!(l.send().len(), 2);
        l.datagram(2, udp, "10.0.0.9:1", b"x");
        let id2 = opened(l.drain());
        l.udp_failed(2, id2);
        l.send();
        l.drain();

        // The mapped port: connect, relay both ways, half-closes.
        let m = l.accept(1, 0, "10.0.0.2:40000").expect("accepted");
        l.handle(
            2,
            Event::Connected {
                conn: m,
                local: sa("10.0.0.1:50000"),
            },
        );
        l.read(3, m, Side::Client, b"secret user data", false);
        assert_eq!(l.write(4, m, Side::Upstream), b"secret user data");
        l.drain();
        l.read(5, m, Side::Upstream, b"more private bytes!", false);
        l.handle(
            5,
            Event::ReadBlocked {
                conn: m,
                side: Side::Upstream,
            },
        );
        assert_eq!(l.write(6, m, Side::Client), b"more private bytes!");
        l.handle(
            7,
            Event::Eof {
                conn: m,
                side: Side::Client,
            },
        );
        l.handle(
            8,
            Event::Eof {
                conn: m,
                side: Side::Upstream,
            },
        );
        l.drain();

        // SOCKS5 by name: the handshake is kept, so the replay resolves the
        // same name and connects to the same addresses.
        let s = l.accept(10, 1, "10.0.0.3:40001").expect("accepted");
        l.read(11, s, Side::Client, &[5, 1, 0], true);
        assert_eq!(l.write(12, s, Side::Client), [5, 0]);
        let mut req = vec![5, 1, 0, 3, 11];
        req.extend_from_slice(b"example.com");
        req.extend_from_slice(&443u16.to_be_bytes());
        l.read(13, s, Side::Client, &req, true);
        let resolve = l.drain();
        assert!(resolve.iter().any(|a| matches!(a,
            Action::Resolve { host, port: 443, .. } if host == "example.com")));
        l.handle(
            20,
            Event::Resolved {
                conn: s,
                addrs: vec![sa("192.0.2.9:443"), sa("[2001:db8::9]:443")],
            },
        );
        l.handle(
            25,
            Event::ConnectFailed {
                conn: s,
                error: IoKind::Refused,
            },
        );
        l.handle(
            30,
            Event::Connected {
                conn: s,
                local: sa("[2001:db8::1]:50001"),
            },
        );
        l.write(31, s, Side::Client);
        l.read(32, s, Side::Upstream, b"tls bytes", false);
        l.write(33, s, Side::Client);
        l.drain();

        // Out of descriptors: accepting pauses, then resumes.
        l.handle(
            40,
            Event::AcceptFailed {
                listener: ListenerId(0),
                error: IoKind::TooManyFiles,
            },
        );
        l.timeout(300);
        // Refused by no listener.
        assert_eq!(
            l.accept(301, 9, "10.0.0.4:1"),
            Err(Refused::UnknownListener)
        );
        // The SOCKS tunnel idles out 10 s after its last byte.
        l.timeout(5_000);
        l.timeout(10_100);
        // A reload opens another port; a connection to it and one more to
        // the first are cut by the shutdown's grace.
        let more = format!(
            "{CONFIG}\n[[service]]\nname = \"fwd2\"\nkind = \"mapped\"\n\
             listen = [\"127.0.0.1:7001\"]\ndestination = \"192.0.2.2:80\"\n"
        );
        l.reload(10_150, &more, false);
        let new = l
            .drain()
            .into_iter()
            .find_map(|a| match a {
                Action::Listen { listener, addr } if addr == sa("127.0.0.1:7001") => Some(listener),
                _ => None,
            })
            .expect("the new port opens");
        l.handle(
            10_151,
            Event::Listening {
                listener: new,
                local: sa("127.0.0.1:7001"),
            },
        );
        l.accept_on(10_152, new, "10.0.0.7:4", "127.0.0.1:7001")
            .expect("accepted");
        l.accept_on(10_200, ListenerId(0), "10.0.0.5:2", "127.0.0.1:7000")
            .expect("accepted");
        l.handle(
            10_201,
            Event::IoError {
                conn: c(60, 1),
                side: Side::Client,
                error: IoKind::Reset,
            },
        );
        l.shutdown(10_300);
        l.drain();
        assert_eq!(
            l.accept(10_301, 0, "10.0.0.6:3"),
            Err(Refused::ShuttingDown)
        );
        l.timeout(15_300);
        l.finish()
    }

    #[test]
    fn replay_of_a_recorded_session_takes_the_live_actions() {
        let (trace, live, actions) = session();
        let replayed = replay_lines(&trace).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replayed, live);
        // The live lines are the live actions (and datagrams), rendered.
        let datagrams = live.iter().filter(|l| l.contains(" Datagram {")).count();
        assert_eq!(datagrams, 3);
        assert_eq!(live.len(), actions.len() + datagrams);
        // The session did what it claims.
        let closes = actions
            .iter()
            .filter(|a| matches!(a, Action::Close { .. }))
            .count();
        assert_eq!(closes, 4);
        let access: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Access(r) => Some(r),
                _ => None,
            })
            .collect();
        assert!(access.iter().any(|r| r.status == "idle"
            && r.destination == Some(sa("[2001:db8::9]:443"))
            && r.duration == Duration::from_millis(10_100 - 10)));
        // Two TCP connections and the UDP mapping end with the shutdown, and
        // the client accepted during it is refused as "shutdown".
        assert_eq!(access.iter().filter(|r| r.status == "shutdown").count(), 4);
        assert!(live.iter().any(|l| l.contains("Unlisten")));
        assert!(live.iter().any(|l| l.contains("PauseAccept")));
        assert!(live.iter().any(|l| l.contains("ResumeAccept")));
        // Relayed bytes stay out of the trace; the handshake is in it.
        let text = String::from_utf8(trace).expect("utf-8");
        assert!(!text.contains("secret") && !text.contains("private") && !text.contains("tls"));
        assert!(text.contains(" datagram L2 10.0.0.8:5000 13\n"), "{text}");
        assert!(text.contains(" reply 0.1 14\n"), "{text}");
        assert!(text.contains("\nsent 2\n"), "{text}");
        assert!(live.iter().any(
            |l| l.contains("Datagram { via: Listener(ListenerId(2), 10.0.0.8:5000), len: 14 }")
        ));
        assert!(access
            .iter()
            .any(|r| r.method == "UDP" && r.status == "error"));
        assert!(text.contains(" read 0.1 client 16\n"));
        assert!(text.contains("\"\\x05\\x01\\x00\\x03\\x0bexample.com\\x01\\xbb\""));
        assert!(text.contains("\npolled 1\n"), "a partial drain is recorded");
    }

    #[test]
    fn replay_output_is_stable_across_runs() {
        let (trace, _, _) = session();
        assert_eq!(replay_lines(&trace), replay_lines(&trace));
    }

    #[test]
    fn a_replay_that_diverges_says_where() {
        let (trace, _, _) = session();
        let text = String::from_utf8(trace).expect("utf-8");
        // The core gave the first connection 0.1: claim it gave 0.2.
        let bad = text.replacen(" 10.0.0.2:40000 0.1\n", " 10.0.0.2:40000 0.2\n", 1);
        assert_ne!(bad, text);
        match replay_lines(bad.as_bytes()) {
            Err(TraceError::Diverged { message, .. }) => {
                assert!(message.contains("accept returned"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // The live run polled more than the replay can give.
        let bad = text.replacen("\npolled 1\n", "\npolled 1000\n", 1);
        assert!(matches!(
            replay_lines(bad.as_bytes()),
            Err(TraceError::Diverged { .. })
        ));
        // A read bigger than any buffer.
        let bad = text.replacen(" client 16\n", " client 99999999\n", 1);
        assert_ne!(bad, text);
        match replay_lines(bad.as_bytes()) {
            Err(TraceError::Diverged { message, .. }) => {
                assert!(message.contains("room for"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A configuration that does not load.
        let bad = text.replacen("kind = \"mapped\"", "kind = \"nonsense\"", 1);
        assert!(matches!(
            replay_lines(bad.as_bytes()),
            Err(TraceError::Config { .. })
        ));
    }

    #[test]
    fn a_reload_that_does_not_load_is_a_config_error() {
        let (trace, _, _) = session();
        let mut t = trace;
        t.extend_from_slice(b"20.000000000 reload-recheck 1\n|nonsense\n");
        match replay_lines(&t) {
            Err(TraceError::Config { message }) => {
                assert!(message.contains("the reload of record"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    // ---- Corrupt and truncated traces -----------------------------------

    fn err_of(t: &[u8]) -> TraceError {
        match decode(t) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {:?}", String::from_utf8_lossy(t)),
        }
    }

    #[test]
    fn malformed_traces_are_typed_errors_with_offsets() {
        assert_eq!(err_of(b"hello\n"), TraceError::NotATrace);
        assert_eq!(err_of(b"\x00\x01"), TraceError::NotATrace);
        assert!(matches!(
            err_of(b""),
            TraceError::Truncated { offset: 0, .. }
        ));
        assert!(matches!(
            err_of(b"portico-tr"),
            TraceError::Truncated { .. }
        ));
        assert_eq!(
            err_of(b"portico-trace 2\n"),
            TraceError::Version { found: "2".into() }
        );
        let head = "portico-trace 1\nseed 1\nconfig 1\n|\n";
        let cases: &[(&str, usize, &str)] = &[
            ("0.5 timeout\n", 0, "neither a record kind nor a time"),
            ("1.000000000 timeout x\n", 20, "unexpected text"),
            ("1.000000000  timeout\n", 12, "found a space"),
            ("1.000000000 timeout \n", 20, "unexpected text"),
            ("1.000000000 frobnicate\n", 12, "unknown record kind"),
            ("1.000000000 eof 0.1 sideways\n", 20, "a side"),
            ("1.000000000 eof 0.1\n", 19, "found the end of the line"),
            ("1.000000000 eof 0.x client\n", 16, "a connection id"),
            (
                "1.000000000 accept L0 1.2.3.4 0.1\n",
                22,
                "the peer address",
            ),
            ("1.000000000 accept X0 1.2.3.4:5 0.1\n", 19, "a listener"),
            (
                "1.000000000 accept L0 1.2.3.4:5 refused:no\n",
                32,
                "refused:<why>",
            ),
            (
                "1.000000000 read 0.1 client 3 \"ab\"\n",
                30,
                "keeps 2 bytes",
            ),
            (
                "1.000000000 read 0.1 client 2 \"ab\n",
                33,
                "no closing quote",
            ),
            (
                "1.000000000 read 0.1 client 2 \"a\\q\"\n",
                32,
                "unknown escape",
            ),
            (
                "1.000000000 read 0.1 client 1 \"\\x4\"\n",
                31,
                "two hex digits",
            ),
            (
                "1.000000000 read 0.1 client 1 \"\t\"\n",
                31,
                "must be escaped",
            ),
            (
                "1.000000000 read 0.1 client 1 \"a\"b\n",
                33,
                "after the closing quote",
            ),
            ("1.000000000 read 0.1 client 1 a\n", 30, "quoted string"),
            (
                "1.000000000 io-error 0.1 client melted\n",
                32,
                "i/o error kind",
            ),
            ("1.000000000 written 0.1 client -1\n", 31, "a byte count"),
            ("1.000000000 spliced 0.1 client\n", 30, "a byte count"),
            ("1.000000000 spliced 0.1 sideways 5\n", 24, "side"),
            (
                "1.000000000 spliced 0.1 upstream 5 6\n",
                35,
                "unexpected text",
            ),
            ("wall 1 99999999999\n", 7, "UTC offset"),
            ("log-level loud\n", 10, "a log level"),
            ("polled +1\n", 7, "a number of actions"),
            ("\n", 0, "found the end of the line"),
            ("99999999999.000000000 timeout\n", 0, "nor a time"),
        ];
        for (line, col, want) in cases {
            let t = format!("{head}{line}");
            match err_of(t.as_bytes()) {
                TraceError::Corrupt {
                    offset,
                    line: ln,
                    message,
                } => {
                    assert_eq!(offset, head.len() + col, "{line:?}: {message}");
                    assert_eq!(ln, 5, "{line:?}");
                    assert!(message.contains(want), "{line:?}: {message}");
                }
                other => panic!("{line:?}: {other:?}"),
            }
        }
        // Not UTF-8.
        let mut t = head.as_bytes().to_vec();
        t.extend_from_slice(b"polled \xff\n");
        assert!(matches!(
            err_of(&t),
            TraceError::Corrupt { offset, .. } if offset == head.len() + 7
        ));
        // A configuration block that does not begin with `|`.
        assert!(matches!(
            err_of(b"portico-trace 1\nseed 1\nconfig 2\n|a\nb\n"),
            TraceError::Corrupt {
                offset: 35,
                line: 5,
                ..
            }
        ));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_trace() {
        let (trace, _, _) = session();
        let header_end = {
            let (h, _) = decode(&trace).expect("decodes");
            encode(&h, &[]).len()
        };
        // Where the reload's configuration block lies.
        let text = std::str::from_utf8(&trace).expect("utf-8");
        let reload = text.find(" reload ").expect("a reload") + 1;
        let reload_end = {
            let (_, after) = text[reload..].split_once('\n').expect("a line");
            let lines: usize = text[reload..]["reload ".len()..]
                .split('\n')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count");
            text.len()
                - after
                    .split_inclusive('\n')
                    .skip(lines)
                    .map(str::len)
                    .sum::<usize>()
        };
        let mut shorter = 0;
        for cut in 0..trace.len() {
            let t = &trace[..cut];
            let r = replay_lines(t);
            let inside_reload = cut > reload && cut < reload_end;
            if cut < header_end || t.last() != Some(&b'\n') || inside_reload {
                assert!(
                    matches!(r, Err(TraceError::Truncated { .. })),
                    "cut at {cut}: {r:?}"
                );
            } else {
                // A prefix of the inputs replays as the start of the run.
                assert!(r.is_ok(), "cut at {cut}: {r:?}");
                shorter += 1;
            }
        }
        assert!(shorter > 40, "{shorter}");
    }

    #[test]
    fn quickcheck_mutated_traces_never_panic() {
        fn prop(edits: Vec<(usize, u8)>, cut: Option<usize>) -> TestResult {
            let (mut t, _, _) = session();
            for (pos, b) in edits {
                let len = t.len();
                // Overwrite, insert or delete a byte, somewhere.
                match b % 4 {
                    0 | 1 if len > 0 => t[pos % len] = b,
                    2 => t.insert(pos % (len + 1), b),
                    3 if len > 0 => {
                        t.remove(pos % len);
                    }
                    _ => {}
                }
            }
            if let Some(c) = cut {
                let len = t.len();
                t.truncate(c % (len + 1));
            }
            // Whatever they return, they return: a panic fails the property.
            let _ = decode(&t);
            let _ = replay_lines(&t);
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn(Vec<(usize, u8)>, Option<usize>) -> TestResult);
    }

    #[test]
    fn quickcheck_mutated_records_never_panic() {
        // Edits aimed at the record lines, where a whole-file edit would
        // mostly hit the configuration.
        fn prop(line: usize, col: usize, b: u8) -> TestResult {
            let (t, _, _) = session();
            let text = String::from_utf8(t).expect("utf-8");
            let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
            let head = 3 + CONFIG.split('\n').count();
            let i = head + line % (lines.len() - head);
            let l = &mut lines[i];
            let c = col % (l.len() + 1);
            if b & 1 == 0 && c < l.len() {
                l[c] = b;
            } else {
                l.insert(c, b);
            }
            let mut t = lines.join(&b'\n');
            t.push(b'\n');
            let _ = replay_lines(&t);
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(usize, usize, u8) -> TestResult);
    }

    #[test]
    fn recorder_time_is_relative_to_start() {
        let t0 = Instant::now();
        let mut r = Recorder::start(t0, "", 0);
        r.timeout(t0 + Duration::new(3, 5));
        // A time before the start (another thread's clock read) is 0.
        r.shutdown(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0));
        let text = String::from_utf8(r.take()).expect("utf-8");
        assert!(
            text.ends_with("3.000000005 timeout\n0.000000000 shutdown\n"),
            "{text}"
        );
        assert_eq!(r.records(), 2);
        assert!(r.take().is_empty());
    }
}
