//! Writing records as the trace's text.

use std::fmt::{self, Write as _};

use super::*;
use crate::event::{Event, IoKind, Refused};
use crate::id::Side;

/// The whole trace of `header` and `records`.
pub fn encode(header: &Header, records: &[Record]) -> Vec<u8> {
    let mut out = String::new();
    put_header(&mut out, header);
    for r in records {
        put_record(&mut out, r);
    }
    out.into_bytes()
}

pub(super) fn put_header(out: &mut String, h: &Header) {
    let _ = writeln!(out, "{MAGIC} {VERSION}");
    let _ = writeln!(out, "seed {}", h.seed);
    out.push_str("config ");
    put_block(out, &h.config);
}

/// `<count>\n` and the text's pieces between line breaks, each as `|piece\n`.
pub(super) fn put_block(out: &mut String, text: &str) {
    let _ = writeln!(out, "{}", text.split('\n').count());
    for piece in text.split('\n') {
        out.push('|');
        out.push_str(piece);
        out.push('\n');
    }
}

pub(super) fn put_time(out: &mut String, t: u64) {
    let _ = write!(out, "{}.{:09} ", t / NANOS, t % NANOS);
}

pub(super) fn put_record(out: &mut String, r: &Record) {
    match r {
        Record::LogLevel(l) => {
            let _ = writeln!(out, "log-level {}", l.name());
        }
        Record::Wall(w) => {
            let _ = writeln!(out, "wall {} {}", w.unix_secs, w.utc_offset_secs);
        }
        Record::Quotas(text) => {
            out.push_str("quotas ");
            put_block(out, text);
        }
        Record::Accept {
            t,
            listener,
            peer,
            local,
            original,
            result,
        } => {
            put_time(out, *t);
            let _ = match (local, original) {
                (Some(local), Some(orig)) => {
                    write!(out, "accept-to L{} {peer} {local} {orig} ", listener.0)
                }
                (None, _) => write!(out, "accept L{} {peer} ", listener.0),
                (Some(local), None) => write!(out, "accept-on L{} {peer} {local} ", listener.0),
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
        Record::ReloadFailed { t, message } => put_reload_failed(out, *t, message),
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
        Record::AssociationDatagram {
            t,
            conn,
            outward,
            from,
            n,
            bytes,
        } => {
            put_time(out, *t);
            let side = if *outward { "outward" } else { "client" };
            let _ = write!(out, "association {conn} {side} {from} {n}");
            if let Some(b) = bytes {
                out.push(' ');
                quote(out, b);
            }
            out.push('\n');
        }
        Record::Polled { n } => {
            let _ = writeln!(out, "polled {n}");
        }
        Record::Sent { n } => {
            let _ = writeln!(out, "sent {n}");
        }
    }
}

pub(super) fn put_reload(out: &mut String, t: u64, config: &str, recheck: bool) {
    put_time(out, t);
    out.push_str(if recheck {
        "reload-recheck "
    } else {
        "reload "
    });
    put_block(out, config);
}

pub(super) fn put_reload_failed(out: &mut String, t: u64, message: &str) {
    put_time(out, t);
    out.push_str("reload-failed ");
    put_block(out, message);
}

pub(super) struct SideName(pub(super) Side);

impl fmt::Display for SideName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

pub(super) fn put_event(out: &mut String, t: u64, event: &Event, bytes: Option<&[u8]>) {
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
        Event::PasswordChecked { conn, ok } => write!(
            out,
            "password-checked {conn} {}",
            if *ok { "ok" } else { "wrong" }
        ),
        Event::HelperAnswered { conn, answer } => write!(
            out,
            "helper-answered {conn} {}",
            match answer {
                crate::auth::Answer::Ok => "ok",
                crate::auth::Answer::Wrong => "wrong",
                crate::auth::Answer::Failed => "failed",
            }
        ),
        Event::Connected {
            conn,
            attempt,
            local,
        } => write!(out, "connected {conn} {attempt} {local}"),
        Event::ConnectFailed {
            conn,
            attempt,
            error,
        } => {
            write!(out, "connect-failed {conn} {attempt} {}", io_name(*error))
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
        Event::UdpBound { conn, local } => write!(out, "udp-bound {conn} {local}"),
        Event::BindListening { conn, local } => write!(out, "bind-listening {conn} {local}"),
        Event::BindFailed { conn, error } => {
            write!(out, "bind-failed {conn} {}", io_name(*error))
        }
        Event::BindAccepted { conn, peer } => write!(out, "bind-accepted {conn} {peer}"),
        Event::UdpBindFailed { conn, error } => {
            write!(out, "udp-bind-failed {conn} {}", io_name(*error))
        }
    };
    out.push('\n');
}

pub(super) const IO_KINDS: [IoKind; 10] = [
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

pub(super) fn io_name(k: IoKind) -> &'static str {
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

pub(super) const REFUSALS: [Refused; 6] = [
    Refused::TooMany,
    Refused::PerClient,
    Refused::ShuttingDown,
    Refused::Denied,
    Refused::UnknownListener,
    Refused::NotRedirected,
];

pub(super) fn refused_name(r: Refused) -> &'static str {
    match r {
        Refused::TooMany => "too-many",
        Refused::PerClient => "per-client",
        Refused::ShuttingDown => "shutting-down",
        Refused::Denied => "denied",
        Refused::UnknownListener => "unknown-listener",
        Refused::NotRedirected => "not-redirected",
    }
}

pub(super) fn quote(out: &mut String, bytes: &[u8]) {
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
