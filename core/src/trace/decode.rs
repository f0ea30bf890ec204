//! Reading a trace back: its header and records, with typed errors that
//! name the offset and line of what is wrong.

use std::net::SocketAddr;

use super::*;
use crate::event::{Event, IoKind, Level};
use crate::id::{ConnId, ListenerId, Side};
use crate::rules::Wall;
use crate::udp::UdpId;

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
    /// The trace's format version (1 or 2: see the format's notes).
    version: u32,
    data: &'a [u8],
    pos: usize,
    /// The 1-based number of the next line.
    line: usize,
    record: u64,
    header: Header,
    done: bool,
}

pub(super) struct RawLine<'a> {
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
            version: VERSION,
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
        r.version = match version.parse::<u32>() {
            Ok(v @ (1 | VERSION)) if version == v.to_string() => v,
            _ => {
                return Err(TraceError::Version {
                    found: shown(version),
                })
            }
        };
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
            "quotas" => {
                let lines = w.parse("the number of quota count lines", parse_u64)?;
                w.end()?;
                return Ok(Record::Quotas(self.block(lines, "the quota counts")?));
            }
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
                    "accept" | "accept-on" | "accept-to" => {
                        let listener = w.parse("a listener (L<n>)", parse_listener)?;
                        let peer = w.parse("the peer address", parse_addr)?;
                        let local = if kind != "accept" {
                            Some(w.parse("the local address", parse_addr)?)
                        } else {
                            None
                        };
                        let original = if kind == "accept-to" {
                            Some(w.parse("the original destination", parse_addr)?)
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
                            original,
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
                    "association" => {
                        let conn = w.parse("a connection id (index.generation)", parse_conn)?;
                        let outward = w.parse("client or outward", |s| match s {
                            "client" => Some(false),
                            "outward" => Some(true),
                            _ => None,
                        })?;
                        let from = w.parse("the sender's address", parse_addr)?;
                        let n = w.parse("a byte count", parse_usize)?;
                        let bytes = match w.rest() {
                            None => None,
                            Some((at, s)) => {
                                let b = unquote(s).map_err(|(i, m)| w.err(at + i, m))?;
                                if b.len() > n {
                                    return Err(w.err(
                                        at,
                                        format!("a datagram of {n} bytes keeps {}", b.len()),
                                    ));
                                }
                                Some(b)
                            }
                        };
                        return Ok(Record::AssociationDatagram {
                            t,
                            conn,
                            outward,
                            from,
                            n,
                            bytes,
                        });
                    }
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
                    "reload-failed" => {
                        let lines = w.parse("the number of message lines", parse_u64)?;
                        w.end()?;
                        let message = self.block(lines, "the reload's failure")?;
                        return Ok(Record::ReloadFailed { t, message });
                    }
                    _ => {
                        let (event, bytes) = parse_event(at, kind, self.version, &mut w)?;
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

pub(super) fn parse_event(
    at: usize,
    kind: &str,
    version: u32,
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
        "password-checked" => Event::PasswordChecked {
            conn: w.parse(CONN, parse_conn)?,
            ok: w.parse("ok or wrong", |s| match s {
                "ok" => Some(true),
                "wrong" => Some(false),
                _ => None,
            })?,
        },
        "helper-answered" => Event::HelperAnswered {
            conn: w.parse(CONN, parse_conn)?,
            answer: w.parse("ok, wrong or failed", |s| match s {
                "ok" => Some(crate::auth::Answer::Ok),
                "wrong" => Some(crate::auth::Answer::Wrong),
                "failed" => Some(crate::auth::Answer::Failed),
                _ => None,
            })?,
        },
        "connected" => Event::Connected {
            conn: w.parse(CONN, parse_conn)?,
            attempt: attempt(version, w)?,
            local: w.parse("the local address", parse_addr)?,
        },
        "connect-failed" => Event::ConnectFailed {
            conn: w.parse(CONN, parse_conn)?,
            attempt: attempt(version, w)?,
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
        "udp-bound" => Event::UdpBound {
            conn: w.parse(CONN, parse_conn)?,
            local: w.parse("the local address", parse_addr)?,
        },
        "bind-listening" => Event::BindListening {
            conn: w.parse(CONN, parse_conn)?,
            local: w.parse("the local address", parse_addr)?,
        },
        "bind-failed" => Event::BindFailed {
            conn: w.parse(CONN, parse_conn)?,
            error: w.parse(IO, parse_io)?,
        },
        "bind-accepted" => Event::BindAccepted {
            conn: w.parse(CONN, parse_conn)?,
            peer: w.parse("the peer address", parse_addr)?,
        },
        "udp-bind-failed" => Event::UdpBindFailed {
            conn: w.parse(CONN, parse_conn)?,
            error: w.parse(IO, parse_io)?,
        },
        other => {
            return Err(w.err(at, format!("unknown record kind `{}`", shown(other))));
        }
    };
    Ok((event, None))
}

/// The space-separated words of one line, with their offsets.
pub(super) struct Words<'a> {
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
pub(super) fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

pub(super) fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A connect attempt's number: written since format 2; a format-1 trace
/// (one connect at a time) means the latest.
fn attempt(version: u32, w: &mut Words<'_>) -> Result<u32, TraceError> {
    if version < 2 {
        return Ok(crate::event::LATEST_ATTEMPT);
    }
    w.parse("a connect attempt number", |s| {
        parse_u64(s)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n != crate::event::LATEST_ATTEMPT)
    })
}

pub(super) fn parse_u64(s: &str) -> Option<u64> {
    if digits(s) {
        s.parse().ok()
    } else {
        None
    }
}

pub(super) fn parse_u32(s: &str) -> Option<u32> {
    parse_u64(s).and_then(|v| u32::try_from(v).ok())
}

pub(super) fn parse_i64(s: &str) -> Option<i64> {
    if digits(s.strip_prefix('-').unwrap_or(s)) {
        s.parse().ok()
    } else {
        None
    }
}

pub(super) fn parse_time(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.')?;
    if frac.len() != 9 || !digits(frac) {
        return None;
    }
    parse_u64(secs)?
        .checked_mul(NANOS)?
        .checked_add(parse_u64(frac)?)
}

pub(super) fn parse_usize(s: &str) -> Option<usize> {
    parse_u64(s).and_then(|v| usize::try_from(v).ok())
}

pub(super) const UDP: &str = "a UDP mapping id (index.generation)";

pub(super) fn parse_udp(s: &str) -> Option<UdpId> {
    let (idx, gen) = s.split_once('.')?;
    Some(UdpId::from_parts(parse_u32(idx)?, parse_u32(gen)?))
}

pub(super) fn parse_conn(s: &str) -> Option<ConnId> {
    let (idx, gen) = s.split_once('.')?;
    Some(ConnId::from_parts(parse_u32(idx)?, parse_u32(gen)?))
}

pub(super) fn parse_listener(s: &str) -> Option<ListenerId> {
    s.strip_prefix('L').and_then(parse_u32).map(ListenerId)
}

pub(super) fn parse_side(s: &str) -> Option<Side> {
    match s {
        "client" => Some(Side::Client),
        "upstream" => Some(Side::Upstream),
        _ => None,
    }
}

pub(super) fn parse_io(s: &str) -> Option<IoKind> {
    IO_KINDS.into_iter().find(|k| io_name(*k) == s)
}

pub(super) fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

pub(super) fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The bytes of a quoted string that makes up all of `s`; on error, the
/// position in `s` and what is wrong.
pub(super) fn unquote(s: &str) -> Result<Vec<u8>, (usize, String)> {
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
