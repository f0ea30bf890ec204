//! The connection table with its flight recorder on demand: [`Proxy`]
//! records itself (see [`Proxy::record`]); this keeps the calling
//! convention runtimes used before that.

use std::net::SocketAddr;
use std::time::Instant;

use crate::config::Config;
use crate::event::{Action, Event, Level, Refused};
use crate::id::{ConnId, ListenerId, Side};
use crate::rules::Wall;
use crate::table::Proxy;
use crate::udp::{UdpId, Via};

#[derive(Debug)]
pub struct Recorded {
    proxy: Proxy,
}

impl Recorded {
    /// The table for `config` (parsed from `config_text`); recording when
    /// `record`.
    pub fn new(config: Config, config_text: &str, seed: u64, now: Instant, record: bool) -> Self {
        let mut proxy = Proxy::new(config, seed, now);
        if record {
            proxy.record(config_text);
        }
        Recorded { proxy }
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
        }
    }

    /// See [`Proxy::reconfigure_worker`].
    pub fn reconfigure_worker(
        &mut self,
        config: Config,
        config_text: &str,
        recheck: bool,
        closed_elsewhere: usize,
        now: Instant,
    ) -> usize {
        let reload = crate::table::Reload {
            text: config_text,
            recheck,
            closed_elsewhere,
        };
        self.proxy.reconfigure(config, reload, now)
    }

    pub fn handle_gathered(
        &mut self,
        conn: ConnId,
        parts: Vec<crate::status::Snapshot>,
        now: Instant,
    ) {
        self.proxy.handle_gathered(conn, parts, now);
    }

    pub fn wants_local(&self, conn: ConnId) -> bool {
        self.proxy.wants_local(conn)
    }

    /// The table itself, for what only reads it.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    pub fn take_trace(&mut self) -> Option<(Vec<u8>, String)> {
        self.proxy.take_trace()
    }

    pub fn set_log_level(&mut self, level: Level) {
        self.proxy.set_log_level(level);
    }

    pub fn set_wall(&mut self, wall: Wall) {
        self.proxy.set_wall(wall);
    }

    pub fn accept_on(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let accepted = crate::table::Accepted::new(listener, peer).local(local);
        self.proxy.accept(accepted, now)
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        self.proxy.handle(event, now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.proxy.handle_timeout(now);
    }

    pub fn shutdown(&mut self, now: Instant) {
        self.proxy.shutdown(now);
    }

    pub fn reconfigure(&mut self, config: Config, config_text: &str, recheck: bool, now: Instant) {
        self.reconfigure_worker(config, config_text, recheck, 0, now);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.proxy.poll_action()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.proxy.poll_timeout()
    }

    pub fn recv_buf(&mut self, conn: ConnId, side: Side) -> Option<&mut [u8]> {
        self.proxy.recv_buf(conn, side)
    }

    pub fn send_bufs(&self, conn: ConnId, side: Side) -> Option<[&[u8]; 2]> {
        self.proxy.send_buf(conn, side)
    }

    pub fn splice_ok(&self, conn: ConnId, from: Side) -> bool {
        self.proxy.splice_ok(conn, from)
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
        self.proxy.handle_datagram(listener, from, n, now);
    }

    pub fn handle_reply(&mut self, id: UdpId, n: usize, now: Instant) {
        self.proxy.handle_reply(id, n, now);
    }

    pub fn handle_udp_failed(&mut self, id: UdpId, now: Instant) {
        self.proxy.handle_udp_failed(id, now);
    }

    pub fn poll_datagram(&mut self) -> Option<(Via, Vec<u8>)> {
        self.proxy.poll_datagram()
    }
}
