//! UDP mapped ports' entry points: the runtime receives a datagram into
//! [`Proxy::datagram_buf`] and hands it in; the mappings themselves are
//! `crate::udp`'s.

use std::net::SocketAddr;
use std::time::Instant;

use super::listeners::ListenerState;
use super::Proxy;
use crate::id::{ConnId, ListenerId};
use crate::proto::Target;
use crate::session::Machine;
use crate::udp::{UdpId, Via, MAX_DATAGRAM};

impl Proxy {
    /// Where the runtime receives a datagram, then reports it with
    /// [`Proxy::handle_datagram`] or [`Proxy::handle_reply`].
    pub fn datagram_buf(&mut self) -> &mut [u8] {
        if self.datagram.len() < MAX_DATAGRAM {
            self.datagram.resize(MAX_DATAGRAM, 0);
        }
        &mut self.datagram
    }

    /// `n` bytes of [`Proxy::datagram_buf`] came from `from` on a UDP
    /// listener.
    pub fn handle_datagram(
        &mut self,
        listener: ListenerId,
        from: SocketAddr,
        n: usize,
        now: Instant,
    ) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.datagram(now, listener, from, n);
        }
        self.cx.now = now;
        let cx = &mut self.cx;
        let Some(l) = cx
            .listeners
            .get(listener)
            .filter(|l| l.udp && l.state == ListenerState::Open)
        else {
            return;
        };
        if cx.grace_until.is_some() {
            return;
        }
        let svc = &cx.services[l.service];
        let Some(Target::Addr(dest)) = svc.destination.clone() else {
            // Validation keeps UDP destinations to addresses.
            return;
        };
        let n = n.min(self.datagram.len());
        if !cx.config.quotas.is_empty() {
            // A client whose quota is used up opens no new mapping; one
            // already open goes on, and its datagrams count.
            let pairs = crate::quota::subjects(&cx.config.quotas, None, from.ip());
            let mut counts = cx.ledger.lock();
            let reached = counts
                .quotas
                .first_reached(&cx.config.quotas, &pairs, cx.wall)
                .is_some();
            if reached && !self.udp.has(listener, from) {
                drop(counts);
                self.udp.dropped += 1;
                return;
            }
            counts
                .quotas
                .add_all(&cx.config.quotas, &pairs, n as u64, cx.wall);
        }
        let name = svc.name.clone();
        let limits = &cx.config.limits;
        let (max, idle) = (limits.max_connections as usize, limits.udp_idle_timeout);
        // The service's outgoing, else [network]'s, of dest's family.
        let bind = cx.bind(true, l.service, None, dest);
        self.udp.client_datagram(
            listener,
            &name,
            from,
            dest,
            bind,
            &self.datagram[..n],
            max,
            idle,
            now,
            &mut cx.actions,
        );
    }

    /// `n` bytes of [`Proxy::datagram_buf`] came back on mapping `id`.
    pub fn handle_reply(&mut self, id: UdpId, n: usize, now: Instant) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.reply(now, id, n);
        }
        self.cx.now = now;
        let n = n.min(self.datagram.len());
        let cx = &self.cx;
        if !cx.config.quotas.is_empty() {
            if let Some(client) = self.udp.client_of(id) {
                let pairs = crate::quota::subjects(&cx.config.quotas, None, client.ip());
                let mut counts = cx.ledger.lock();
                counts
                    .quotas
                    .add_all(&cx.config.quotas, &pairs, n as u64, cx.wall);
            }
        }
        let idle = self.cx.config.limits.udp_idle_timeout;
        self.udp.reply(id, &self.datagram[..n], idle, now);
    }

    /// Mapping `id`'s socket could not be made, or failed.
    pub fn handle_udp_failed(&mut self, id: UdpId, now: Instant) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.udp_failed(now, id);
        }
        self.cx.now = now;
        let logged = self.cx.access_logged();
        self.udp.failed(id, now, logged, &mut self.cx.actions);
    }

    /// The next datagram to send, and by which socket (a runtime sends
    /// them all after each UDP event; one that cannot be sent is dropped).
    pub fn poll_datagram(&mut self) -> Option<(Via, Vec<u8>)> {
        let d = self.udp.pop()?;
        if let Some(rec) = self.recorder.as_mut() {
            rec.sent(&d.0, d.1.len());
        }
        Some(d)
    }
}

impl Proxy {
    /// Whether `conn` is a SOCKS UDP association (its names resolve for
    /// its datagrams, not for a connect).
    pub(super) fn associated(&self, conn: ConnId) -> bool {
        self.sessions
            .get(conn.index())
            .is_some_and(|s| s.id == conn && matches!(s.machine, Machine::Associate(_)))
    }

    /// Whether `conn` resolves its SOCKS BIND peer's name.
    pub(super) fn bind_resolving(&self, conn: ConnId) -> bool {
        self.sessions
            .get(conn.index())
            .is_some_and(|s| s.id == conn && s.upstream.bind_name)
    }

    /// `n` bytes of [`Proxy::datagram_buf`] came from `from` on one of
    /// association `conn`'s sockets (`outward`: the one facing the
    /// destinations, else the client's).
    pub fn handle_association_datagram(
        &mut self,
        conn: ConnId,
        outward: bool,
        from: SocketAddr,
        n: usize,
        now: Instant,
    ) {
        let n = n.min(self.datagram.len());
        if let Some(rec) = self.recorder.as_mut() {
            // The client's header is parsed: it is kept, the payload not
            // (a header that does not parse fails within its first bytes).
            let kept = (!outward).then(|| {
                let d = &self.datagram[..n];
                let head = crate::proto::socks_udp::parse(d)
                    .map_or(crate::proto::socks_udp::MAX_HEADER.min(n), |h| h.len);
                &d[..head]
            });
            rec.association_datagram(now, conn, outward, from, n, kept);
        }
        self.cx.now = now;
        self.tick(now);
        let Some(s) = self.sessions.get_mut(conn.index()).filter(|s| s.id == conn) else {
            return;
        };
        s.on_association_datagram(
            outward,
            from,
            &self.datagram[..n],
            &mut self.cx,
            &mut self.udp,
        );
        self.settle(conn);
    }

    /// The name association `conn` asked about resolved (`None`: did not).
    pub(super) fn association_resolved(
        &mut self,
        conn: ConnId,
        addrs: Option<Vec<SocketAddr>>,
        now: Instant,
    ) {
        self.cx.now = now;
        let Some(s) = self.sessions.get_mut(conn.index()).filter(|s| s.id == conn) else {
            return;
        };
        s.on_association_resolved(addrs, &mut self.cx, &mut self.udp);
        self.settle(conn);
    }

    /// After a call into session `conn`: its view brought up to date, or
    /// its end.
    fn settle(&mut self, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(conn.index()).filter(|s| s.id == conn) {
            if !s.ended {
                s.sync(&mut self.cx);
            }
            if s.ended {
                self.finish(conn);
            }
        }
        self.tidy_timers();
    }
}
