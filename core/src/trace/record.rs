//! Recording a live run: the [`Recorder`] the table writes every input to.

use std::net::SocketAddr;
use std::time::Instant;

use super::*;
use crate::event::{Action, Event, Level, Refused};
use crate::id::{ConnId, ListenerId};
use crate::rules::Wall;
use crate::table::Accepted;
use crate::udp::{UdpId, Via};

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

    /// The quotas' counts the ledger holds as recording begins (the
    /// state file's text).
    pub fn quotas(&mut self, text: &str) {
        self.put(&Record::Quotas(text.to_string()));
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

    /// Records an accept: `local` and `original` as the runtime gave them
    /// (an original destination is recorded only with a local address).
    pub fn accept(&mut self, now: Instant, a: &Accepted, result: Result<ConnId, Refused>) {
        let t = self.at(now);
        self.put(&Record::Accept {
            t,
            listener: a.listener,
            peer: a.peer,
            local: a.local,
            original: a.original.filter(|_| a.local.is_some()),
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

    /// `Proxy::reload_failed(message, now)`.
    pub fn reload_failed(&mut self, now: Instant, message: &str) {
        let t = self.at(now);
        self.begin();
        put_reload_failed(&mut self.out, t, message);
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

    /// `Proxy::handle_association_datagram(conn, outward, from, n, now)`,
    /// with the client's header bytes.
    pub fn association_datagram(
        &mut self,
        now: Instant,
        conn: ConnId,
        outward: bool,
        from: SocketAddr,
        n: usize,
        bytes: Option<&[u8]>,
    ) {
        let t = self.at(now);
        self.put(&Record::AssociationDatagram {
            t,
            conn,
            outward,
            from,
            n,
            bytes: bytes.map(<[u8]>::to_vec),
        });
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
