//! UDP mapped ports: datagrams from each client address and port go out
//! from a socket of their own to the service's destination, and replies
//! come back to that client.
//!
//! A *mapping* is one client (address and port) on one listener. It is made
//! by the first datagram, lives while datagrams flow either way, and ends
//! `udp_idle_timeout` after the last one (or when the runtime reports its
//! socket failed). At most `max_connections` mappings exist at once; a
//! datagram that would need one more is dropped. Datagrams wait in a
//! bounded queue until the runtime sends them; past the bound they are
//! dropped, as a network would.
//!
//! # States and exits
//!
//! ```text
//! first datagram ──► Opening (UdpOpen) ──► Open ──idle timeout──► (closed, "idle")
//!                                         └─UdpFailed──► (closed, "error")
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::event::Action;
use crate::id::ListenerId;
use crate::log::AccessRecord;
use crate::outcome::Outcome;
use crate::table::timers::Timers;

/// Largest datagram carried (the largest UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;
/// Datagrams waiting to be sent, at most.
pub const QUEUE_MAX: usize = 1024;

/// One UDP mapping; a slab index and a generation, like [`crate::ConnId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl UdpId {
    pub fn index(self) -> usize {
        self.idx as usize
    }

    pub fn from_parts(index: u32, generation: u32) -> Self {
        UdpId {
            idx: index,
            gen: generation,
        }
    }
}

/// Which socket a datagram leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The service's listening socket, to the client `to`.
    Listener(ListenerId, SocketAddr),
    /// The mapping's own socket, connected to the destination.
    Mapping(UdpId),
    /// A SOCKS UDP association's socket (the outward one, or the one
    /// facing the client), to `to`.
    Association {
        conn: crate::id::ConnId,
        outward: bool,
        to: SocketAddr,
    },
}

#[derive(Debug)]
struct Mapping {
    gen: u32,
    listener: ListenerId,
    service: Arc<str>,
    client: SocketAddr,
    destination: SocketAddr,
    opened: Instant,
    last: Instant,
    timer_at: Option<Instant>,
    up: u64,
    down: u64,
}

#[derive(Debug, Default)]
pub(crate) struct UdpTable {
    maps: Slab<Mapping>,
    gens: Vec<u32>,
    by_client: HashMap<(ListenerId, SocketAddr), UdpId>,
    out: VecDeque<(Via, Vec<u8>)>,
    timers: Timers,
    /// Datagrams dropped (queue full or no room for a mapping).
    pub dropped: u64,
    /// Datagrams SOCKS UDP associations hold while their destination's
    /// name resolves: they count in [`QUEUE_MAX`] too.
    pub held: usize,
}

impl UdpTable {
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    fn live(&self, id: UdpId) -> bool {
        self.maps.get(id.index()).is_some_and(|m| m.gen == id.gen)
    }

    /// Whether one more datagram may wait.
    pub fn has_room(&self) -> bool {
        self.out.len() + self.held < QUEUE_MAX
    }

    fn queue(&mut self, via: Via, data: &[u8]) {
        if !self.has_room() {
            self.dropped += 1;
            return;
        }
        self.out.push_back((via, data.to_vec()));
    }

    /// Queues a datagram of a SOCKS UDP association; false when the
    /// queue is full and it was dropped (the association counts it).
    pub fn push(&mut self, via: Via, data: Vec<u8>) -> bool {
        if !self.has_room() {
            return false;
        }
        self.out.push_back((via, data));
        true
    }

    /// Whether `client` has a mapping on `listener`.
    pub fn has(&self, listener: ListenerId, client: SocketAddr) -> bool {
        self.by_client.contains_key(&(listener, client))
    }

    /// The client of mapping `id`, while it lives.
    pub fn client_of(&self, id: UdpId) -> Option<SocketAddr> {
        self.maps
            .get(id.index())
            .filter(|m| m.gen == id.gen)
            .map(|m| m.client)
    }

    /// A datagram from `client` on a listener of `service`.
    #[allow(clippy::too_many_arguments)]
    pub fn client_datagram(
        &mut self,
        listener: ListenerId,
        service: &Arc<str>,
        client: SocketAddr,
        destination: SocketAddr,
        bind: Option<std::net::IpAddr>,
        data: &[u8],
        max: usize,
        idle: Duration,
        now: Instant,
        actions: &mut VecDeque<Action>,
    ) {
        let id = match self.by_client.get(&(listener, client)) {
            Some(id) => *id,
            None => {
                if self.maps.len() >= max {
                    self.dropped += 1;
                    return;
                }
                let idx = self.maps.vacant_key();
                if self.gens.len() <= idx {
                    self.gens.resize(idx + 1, 0);
                }
                self.gens[idx] = self.gens[idx].wrapping_add(1);
                let id = UdpId {
                    idx: idx as u32,
                    gen: self.gens[idx],
                };
                self.maps.insert(Mapping {
                    gen: id.gen,
                    listener,
                    service: service.clone(),
                    client,
                    destination,
                    opened: now,
                    last: now,
                    timer_at: None,
                    up: 0,
                    down: 0,
                });
                self.by_client.insert((listener, client), id);
                actions.push_back(Action::UdpOpen {
                    id,
                    bind,
                    destination,
                });
                id
            }
        };
        if let Some(m) = self.maps.get_mut(id.index()) {
            m.last = now;
            m.up += data.len() as u64;
        }
        self.arm(id, idle);
        self.queue(Via::Mapping(id), data);
    }

    /// A datagram from the destination on mapping `id`.
    pub fn reply(&mut self, id: UdpId, data: &[u8], idle: Duration, now: Instant) {
        let Some(m) = self.maps.get_mut(id.index()).filter(|m| m.gen == id.gen) else {
            return;
        };
        m.last = now;
        m.down += data.len() as u64;
        let via = Via::Listener(m.listener, m.client);
        self.arm(id, idle);
        self.queue(via, data);
    }

    fn arm(&mut self, id: UdpId, idle: Duration) {
        let Some(m) = self.maps.get_mut(id.index()) else {
            return;
        };
        let at = m.last + idle;
        if m.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        m.timer_at = Some(at);
        self.timers.push(at, id.idx, id.gen);
        if self.timers.len() > 2 * self.maps.len() + 64 {
            let maps = &self.maps;
            self.timers.retain(|t, i, g| {
                maps.get(i as usize)
                    .is_some_and(|m| m.gen == g && m.timer_at == Some(t))
            });
        }
    }

    /// The mapping's socket could not be made or failed.
    pub fn failed(
        &mut self,
        id: UdpId,
        now: Instant,
        logged: bool,
        actions: &mut VecDeque<Action>,
    ) {
        if self.live(id) {
            self.end(id, Outcome::Error, now, logged, actions);
        }
    }

    /// Ends mapping `id`: its socket closes, and (`logged`) its access
    /// record goes out.
    fn end(
        &mut self,
        id: UdpId,
        outcome: Outcome,
        now: Instant,
        logged: bool,
        actions: &mut VecDeque<Action>,
    ) {
        let m = self.maps.remove(id.index());
        self.by_client.remove(&(m.listener, m.client));
        // Datagrams still queued for a closed mapping's socket go nowhere.
        self.out.retain(|(via, _)| *via != Via::Mapping(id));
        actions.push_back(Action::UdpClose { id });
        if logged {
            actions.push_back(Action::Access(Box::new(AccessRecord {
                service: m.service,
                client: m.client,
                user: None,
                method: "UDP".into(),
                target: m.destination.to_string(),
                destination: Some(m.destination),
                status: outcome.word().into(),
                up: m.up,
                down: m.down,
                duration: now.saturating_duration_since(m.opened),
                error: outcome.cause(),
                rule: None,
                datagrams: None,
                via: None,
            })));
        }
        if self.maps.is_empty() {
            self.timers.clear();
        }
    }

    pub fn handle_timeout(
        &mut self,
        idle: Duration,
        now: Instant,
        logged: bool,
        actions: &mut VecDeque<Action>,
    ) {
        while let Some((at, idx, gen)) = self.timers.pop_due(now) {
            let Some(m) = self.maps.get_mut(idx as usize) else {
                continue;
            };
            if m.gen != gen || m.timer_at != Some(at) {
                continue;
            }
            m.timer_at = None;
            let id = UdpId { idx, gen };
            if m.last + idle > now {
                self.arm(id, idle);
                continue;
            }
            self.end(id, Outcome::Idle, now, logged, actions);
        }
    }

    /// Closes every mapping (shutdown).
    pub fn close_all(&mut self, now: Instant, logged: bool, actions: &mut VecDeque<Action>) {
        let ids: Vec<UdpId> = self
            .maps
            .iter()
            .map(|(i, m)| UdpId {
                idx: i as u32,
                gen: m.gen,
            })
            .collect();
        for id in ids {
            self.end(id, Outcome::Shutdown, now, logged, actions);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next datagram to send, and the socket it leaves by.
    pub fn pop(&mut self) -> Option<(Via, Vec<u8>)> {
        self.out.pop_front()
    }
}
