//! The connection table with its flight recorder: every input a runtime
//! hands [`Proxy`] goes through here, and, when recording, is written to the
//! trace (see [`crate::trace`]) right beside the call, so no input can be
//! missed. Without `--record` this is the table and an `Option` check.
//!
//! Bytes read are kept in the trace only while the core may still parse
//! them ([`Proxy::keeps_payload`]); relayed bytes are kept as lengths.

use std::net::SocketAddr;
use std::time::Instant;

use crate::config::Config;
use crate::event::{Action, Event, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::proxy::Proxy;
use crate::rules::Wall;
use crate::trace::Recorder;
use crate::udp::{UdpId, Via};

#[derive(Debug)]
pub struct Recorded {
    proxy: Proxy,
    rec: Option<Recorder>,
}

impl Recorded {
    /// The table for `config` (parsed from `config_text`); recording when
    /// `record`.
    pub fn new(config: Config, config_text: &str, seed: u64, now: Instant, record: bool) -> Self {
        Recorded {
            proxy: Proxy::new(config, seed, now),
            rec: record.then(|| Recorder::start(now, config_text, seed).with_actions()),
        }
    }

    /// The table of worker `worker` of several sharing `ledger`, not
    /// recording (a trace is one table's: `--record` runs one worker).
    pub fn worker(
        config: Config,
        seed: u64,
        now: Instant,
        ledger: crate::ledger::Ledger,
        worker: usize,
    ) -> Self {
        Recorded {
            proxy: Proxy::worker(config, seed, now, ledger, worker),
            rec: None,
        }
    }

    /// See [`Proxy::reconfigure_worker`]; one worker alone records.
    pub fn reconfigure_worker(
        &mut self,
        config: Config,
        config_text: &str,
        recheck: bool,
        closed_elsewhere: usize,
        now: Instant,
    ) -> usize {
        if let Some(rec) = self.rec.as_mut() {
            rec.reload(now, config_text, recheck);
        }
        self.proxy
            .reconfigure_worker(config, recheck, closed_elsewhere, now)
    }

    /// See [`Proxy::handle_gathered`] (never while recording: one worker).
    pub fn handle_gathered(
        &mut self,
        conn: ConnId,
        parts: Vec<crate::status::Snapshot>,
        now: Instant,
    ) {
        self.proxy.handle_gathered(conn, parts, now);
    }

    /// See [`Proxy::wants_local`].
    pub fn wants_local(&self, conn: ConnId) -> bool {
        self.proxy.wants_local(conn)
    }

    /// The table itself, for what only reads it.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Trace bytes and action lines recorded since the last call, for the
    /// runtime to append to its files.
    pub fn take_trace(&mut self) -> Option<(Vec<u8>, String)> {
        let rec = self.rec.as_mut()?;
        if rec.pending() == 0 {
            return None;
        }
        Some((rec.take(), rec.take_actions()))
    }

    pub fn set_log_level(&mut self, level: Level) {
        if let Some(r) = self.rec.as_mut() {
            r.log_level(level);
        }
        self.proxy.set_log_level(level);
    }

    pub fn set_wall(&mut self, wall: Wall) {
        if let Some(r) = self.rec.as_mut() {
            r.wall(wall);
        }
        self.proxy.set_wall(wall);
    }

    pub fn accept_on(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let r = self.proxy.accept_on(listener, peer, local, now);
        if let Some(rec) = self.rec.as_mut() {
            rec.accept_on(now, listener, peer, local, r);
        }
        r
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        if let Some(rec) = self.rec.as_mut() {
            match &event {
                Event::Read { conn, side, n } if self.proxy.keeps_payload(*conn, *side) => {
                    // The bytes just read sit at the start of the space the
                    // core lent (it has not taken them yet).
                    let kept = self
                        .proxy
                        .recv_buf(*conn, *side)
                        .map(|b| b[..(*n).min(b.len())].to_vec());
                    rec.event(now, &event, kept.as_deref());
                }
                _ => rec.event(now, &event, None),
            }
        }
        self.proxy.handle(event, now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(rec) = self.rec.as_mut() {
            rec.timeout(now);
        }
        self.proxy.handle_timeout(now);
    }

    pub fn shutdown(&mut self, now: Instant) {
        if let Some(rec) = self.rec.as_mut() {
            rec.shutdown(now);
        }
        self.proxy.shutdown(now);
    }

    pub fn reconfigure(&mut self, config: Config, config_text: &str, recheck: bool, now: Instant) {
        if let Some(rec) = self.rec.as_mut() {
            rec.reload(now, config_text, recheck);
        }
        self.proxy.reconfigure(config, recheck, now);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.proxy.poll_action()?;
        if let Some(rec) = self.rec.as_mut() {
            rec.polled(&a);
        }
        Some(a)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.proxy.poll_timeout()
    }

    pub fn recv_buf(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        self.proxy.recv_buf(conn, side)
    }

    pub fn send_buf(&self, conn: ConnId, side: Side) -> Option<&[u8]> {
        self.proxy.send_buf(conn, side)
    }

    pub fn send_bufs(&self, conn: ConnId, side: Side) -> Option<[&[u8]; 2]> {
        self.proxy.send_bufs(conn, side)
    }

    /// [`Proxy::splice_ok`], and never while recording: a recorded run
    /// moves every byte through the core's buffers, so its trace holds each
    /// read and write, and the replay steps through the same buffer states.
    pub fn splice_ok(&self, conn: ConnId, from: Side) -> bool {
        self.rec.is_none() && self.proxy.splice_ok(conn, from)
    }

    pub fn is_finished(&self) -> bool {
        self.proxy.is_finished()
    }

    pub fn starting(&self) -> usize {
        self.proxy.starting()
    }

    pub fn datagram_buf(&mut self) -> &mut [u8] {
        self.proxy.datagram_buf()
    }

    pub fn handle_datagram(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        n: usize,
        now: Instant,
    ) {
        if let Some(rec) = self.rec.as_mut() {
            rec.datagram(now, listener, from, n);
        }
        self.proxy.handle_datagram(listener, from, n, now);
    }

    pub fn handle_reply(&mut self, id: UdpId, n: usize, now: Instant) {
        if let Some(rec) = self.rec.as_mut() {
            rec.reply(now, id, n);
        }
        self.proxy.handle_reply(id, n, now);
    }

    pub fn handle_udp_failed(&mut self, id: UdpId, now: Instant) {
        if let Some(rec) = self.rec.as_mut() {
            rec.udp_failed(now, id);
        }
        self.proxy.handle_udp_failed(id, now);
    }

    pub fn poll_datagram(&mut self) -> Option<(Via, Vec<u8>)> {
        let d = self.proxy.poll_datagram()?;
        if let Some(rec) = self.rec.as_mut() {
            rec.sent(&d.0, d.1.len());
        }
        Some(d)
    }
}
