//! What must hold of the table: after every call a runtime makes
//! ([`Runtime::check`]), after `handle_timeout` ([`Runtime::assert_not_due`]),
//! and once every peer is gone ([`Runtime::assert_empty`]); what must hold
//! of a simulated world at its end ([`Sim::assert_settled`]); and
//! assertions on bytes that show where two streams part.

use std::fmt::Write as _;
use std::net::IpAddr;

use std::net::SocketAddr;

use super::runtime::{ListenState, Runtime};
use super::sched::Sim;
use crate::table::REFUSING_MAX;
use crate::{AccessRecord, ConnId, Level, Side};

/// Slack allowed in the timer heap on top of twice the table's size (the
/// core prunes the heap whenever it holds more than `2 * len + 64` entries).
pub const TIMER_SLACK: usize = 64;

/// The bound checked on the timer heap's size after every call.
pub fn timer_bound(len: usize) -> usize {
    2 * len + TIMER_SLACK
}

impl Runtime {
    /// What must hold after every call into the core, as far as a runtime
    /// can tell: the table agrees with the sockets the runtime holds, the
    /// limits hold, buffers and timers stay bounded, nothing waits to be
    /// written where it may not be, and the table is finished exactly when
    /// it was shut down and has emptied.
    pub fn check(&self) {
        self.check_shown(|_, _, _| {});
    }

    /// [`Runtime::check`], handing `each` the bytes shown for every side
    /// of every live connection that shows any (a harness's own checks of
    /// them, without asking the table a second time).
    pub fn check_shown(&self, mut each: impl FnMut(ConnId, Side, [&[u8]; 2])) {
        let len = self.len();
        assert_eq!(
            len,
            self.conns.len(),
            "the table holds {len} connections, but {} were accepted and not closed",
            self.conns.len()
        );
        let limits = &self.config().limits;
        let (max, per_client) = (limits.max_connections, limits.max_per_client as usize);
        // Served connections in all, and per client address when that
        // could be over the limit.
        let (mut served, mut per_ip) = (0, Vec::<(IpAddr, usize)>::new());
        for (conn, s) in self.conns.iter() {
            if !s.refusing {
                served += 1;
                if len > per_client {
                    match per_ip.iter_mut().find(|(ip, _)| *ip == s.peer.ip()) {
                        Some((_, n)) => *n += 1,
                        None => per_ip.push((s.peer.ip(), 1)),
                    }
                }
            }
            for side in [Side::Client, Side::Upstream] {
                // Its checks: bytes only where they may be written.
                let parts = self.send_buf(conn, side);
                // What was shown before, less what was written since,
                // still comes first (or the direction was given up: a
                // request whose origin went away before taking it).
                let [p0, p1] = parts.unwrap_or([&[], &[]]);
                let before = &mut s.shown.borrow_mut()[side.index()];
                if !(before.is_empty() && p0.is_empty() && p1.is_empty()) {
                    let (k0, k1) = (
                        before.len().min(p0.len()),
                        before.len().saturating_sub(p0.len()),
                    );
                    let first = before.len() <= p0.len() + p1.len()
                        && before[..k0] == p0[..k0]
                        && before[k0..] == p1[..k1];
                    assert!(
                        (p0.is_empty() && p1.is_empty()) || first,
                        "{conn} {side:?}: bytes shown to be written were overtaken: \
                         before \"{}\", now \"{}{}\"",
                        show(before),
                        show(p0),
                        show(p1)
                    );
                    before.clear();
                    before.extend_from_slice(p0);
                    before.extend_from_slice(p1);
                }
                if let Some(parts) = parts {
                    each(conn, side, parts);
                }
            }
        }
        assert!(
            served <= max as usize,
            "{served} connections served, over max_connections {max}"
        );
        assert!(
            len - served <= REFUSING_MAX,
            "{} connections only refusing",
            len - served
        );
        assert!(
            per_ip.iter().all(|(_, n)| *n <= per_client),
            "a client holds more than max_per_client connections"
        );
        let buffers = self.buffers_in_use();
        assert!(
            buffers <= 2 * len,
            "{buffers} buffers in use for {len} connections"
        );
        let timers = self.timer_entries();
        assert!(
            timers <= timer_bound(len),
            "{timers} timer entries for {len} connections"
        );
        if len == 0 {
            assert_eq!(timers, 0, "timer entries left in an empty table");
            assert_eq!(buffers, 0, "buffers lent by an empty table");
        }
        assert_eq!(
            self.is_finished(),
            self.shut_down && len == 0,
            "is_finished"
        );
    }

    /// Nothing is left due right after `handle_timeout` (a runtime would
    /// spin).
    pub fn assert_not_due(&self) {
        if self.is_finished() {
            return;
        }
        if let Some(t) = self.deadline() {
            assert!(
                t > self.now(),
                "poll_timeout ({t:?}) is still due after handle_timeout at {:?}: a runtime \
                 would spin",
                self.now()
            );
        }
    }

    /// The table is empty and holds nothing: no timer, no buffer, and no
    /// deadline — or, shut down, it is finished.
    pub fn assert_empty(&self) {
        assert_eq!(self.len(), 0, "connections left");
        assert_eq!(self.buffers_in_use(), 0, "buffers left");
        assert_eq!(self.timer_entries(), 0, "timer entries left");
        self.assert_bytes_logged();
        if self.is_shut_down() {
            assert!(self.is_finished(), "shut down and empty, but not finished");
        } else {
            assert_eq!(self.deadline(), None, "a deadline left in an empty table");
        }
    }
}

impl Sim {
    pub fn check_record(
        &self,
        rec: &AccessRecord,
        method: &str,
        status: &str,
        destination: Option<SocketAddr>,
        user: Option<&str>,
    ) {
        let tag = &self.tag;
        assert_eq!(rec.method, method, "{tag}: method of {rec:?}");
        assert_eq!(rec.status, status, "{tag}: status of {rec:?}");
        assert_eq!(
            rec.destination, destination,
            "{tag}: destination of {rec:?}"
        );
        assert_eq!(rec.user.as_deref(), user, "{tag}: user of {rec:?}");
    }

    /// The client of connection `i` got exactly `want`, then end of stream.
    pub fn check_client(&self, i: usize, want: &[u8]) {
        let c = self.client_of(i);
        let what = format!("what {} received", c.label);
        same_bytes(&self.tag, &what, &c.received, want);
        assert!(
            c.received_eof,
            "{}: {} saw no end of stream",
            self.tag, c.label
        );
    }

    /// Every peer is done, every connection ended, the table is empty with
    /// no timer and no buffer left, and no data port is left open.
    pub fn assert_settled(&self) {
        let tag = &self.tag;
        for p in &self.peers {
            let c = &self.conns[p.conn];
            if !p.done() && c.refused.is_none() && !c.os_refused {
                panic!(
                    "{tag}: {} never finished: waiting for {}; it received {} bytes: \"{}\"",
                    p.label,
                    p.behavior.waiting(),
                    p.received.len(),
                    show(&p.received[p.received.len().saturating_sub(300)..]),
                );
            }
        }
        for (i, c) in self.conns.iter().enumerate() {
            assert!(
                c.done(),
                "{tag}: connection {i} ({:?}) was never closed",
                c.id
            );
        }
        self.rt.assert_empty();
        let open_data_port = self.listens.iter().find(|(l, asked, _)| {
            asked.port() == 0
                && self
                    .rt
                    .listeners()
                    .iter()
                    .any(|x| x.id == *l && x.state != ListenState::Closed)
        });
        assert!(
            open_data_port.is_none(),
            "{tag}: data port {open_data_port:?} left open"
        );
    }

    /// No diagnostic at warn or error level was logged.
    pub fn assert_quiet(&self) {
        let loud: Vec<_> = self
            .rt
            .logs
            .iter()
            .filter(|(l, _)| *l <= Level::Warn)
            .collect();
        assert!(loud.is_empty(), "{}: {loud:?}", self.tag);
    }
}

/// `b` with control bytes escaped.
pub fn show(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    s
}

/// A little of `b` around `at`.
fn around(b: &[u8], at: usize) -> String {
    let lo = at.saturating_sub(60);
    let hi = (at + 60).min(b.len());
    show(&b[lo..hi])
}

/// Asserts two byte strings are equal, showing where they part.
pub fn same_bytes(tag: &str, what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let whole = if got.len() + want.len() < 1200 {
        format!("\n  got:  \"{}\"\n  want: \"{}\"", show(got), show(want))
    } else {
        String::new()
    };
    panic!(
        "{tag}: {what}: {} bytes, want {}; they differ from byte {at}:\n  \
         got  …\"{}\"\n  want …\"{}\"{whole}",
        got.len(),
        want.len(),
        around(got, at),
        around(want, at),
    );
}
