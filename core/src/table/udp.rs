//! UDP mapped ports' entry points: the runtime receives a datagram into
//! [`Proxy::datagram_buf`] and hands it in; the mappings themselves are
//! `crate::udp`'s.

use std::net::SocketAddr;
use std::time::Instant;

use super::listeners::ListenerState;
use super::Proxy;
use crate::id::ListenerId;
use crate::proto::Target;
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
