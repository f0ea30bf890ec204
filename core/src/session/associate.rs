//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): a control connection and
//! the two UDP sockets of its association, one facing the client (bound to
//! the address the client reached Portico on) and one facing the
//! destinations. The association lives exactly as long as its TCP
//! connection, and counts as that one connection against every limit.
//!
//! # States and exits
//!
//! ```text
//! Talking ─Next::Associate─► Connecting (UdpAssociate) ─UdpBound─► Associated (reply 00, address)
//!                              ├─UdpBindFailed─► Closing (reply 01)
//!                              ├─connect_timeout─► Closing (reply 06)
//!                              └─client EOF─► (ended)
//! Associated ─client EOF or error─► (ended, "ok")
//!            ─udp_idle_timeout without a datagram─► (ended, "idle")
//! ```
//!
//! A datagram from the client is taken only from its IP address (and the
//! port its request named, unless 0), with a well-formed header (FRAG 0);
//! its destination is checked against the rules like a CONNECT's, resolved
//! first when it is a name (one name at a time, a few datagrams waiting
//! for it). A datagram arriving at the outward socket is relayed only from
//! an address and port the client has sent to. Everything else is dropped
//! and counted; nothing a peer sends grows memory past fixed bounds.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::{Machine, Phase, Session};
use crate::event::{Action, IoKind, Level};
use crate::log::DatagramCounts;
use crate::proto::socks::v5_reply;
use crate::proto::{socks_udp, Failure, Target};
use crate::rules::{self, Query, Verdict};
use crate::table::context::Context;
use crate::udp::{UdpTable, Via, MAX_DATAGRAM};

/// Destinations (address and port) remembered for replies, at most; past
/// that the oldest is forgotten.
pub(crate) const MAX_PEERS: usize = 1024;
/// Datagrams waiting for their destination's name to resolve, at most.
pub(crate) const MAX_WAITING: usize = 32;
/// Names remembered with their addresses, at most.
const MAX_NAMES: usize = 64;

#[derive(Debug)]
pub(crate) struct Association {
    /// The port the client said it sends from (0: any).
    port: u16,
    /// Where the client's datagrams come from: replies go there.
    client_udp: Option<SocketAddr>,
    /// Address and port pairs the client has sent to, in the order first
    /// sent (the oldest is forgotten first).
    peers: HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
    /// Names resolved, with their addresses (empty: did not resolve).
    names: VecDeque<(String, Vec<IpAddr>)>,
    /// The name being resolved.
    resolving: Option<String>,
    /// Datagrams waiting for a name: (name, port, payload).
    waiting: VecDeque<(String, u16, Vec<u8>)>,
    pub counts: DatagramCounts,
    /// Payload bytes relayed each way.
    pub up: u64,
    pub down: u64,
    /// The families the outward socket reaches; `mapped`: it is a
    /// dual-stack IPv6 one, which names IPv4 peers IPv4-mapped.
    v4: bool,
    v6: bool,
    mapped: bool,
}

impl Association {
    fn new(port: u16) -> Association {
        Association {
            port,
            client_udp: None,
            peers: HashSet::new(),
            order: VecDeque::new(),
            names: VecDeque::new(),
            resolving: None,
            waiting: VecDeque::new(),
            counts: DatagramCounts::default(),
            up: 0,
            down: 0,
            v4: false,
            v6: false,
            mapped: false,
        }
    }

    /// Asks for the association's sockets. Destinations are many and not
    /// known yet: the source is the service's (or the network's)
    /// `outgoing` of the client's family, else of the other family; with
    /// neither, one dual-stack socket reaches both families (unless
    /// `dual` is off: it failed once), else only the client's family.
    fn ask(&mut self, s: &Session, dual: bool, cx: &mut Context) {
        let any = |ip: IpAddr| SocketAddr::new(ip, 0);
        let client = s.client.ip();
        let other = match client {
            IpAddr::V4(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        };
        let outward = cx
            .bind(true, s.service, None, any(client))
            .or_else(|| cx.bind(true, s.service, None, any(other)));
        let dual_stack = dual && outward.is_none();
        let family = outward.unwrap_or(client);
        self.mapped = dual_stack;
        self.v4 = dual_stack || family.is_ipv4();
        self.v6 = dual_stack || family.is_ipv6();
        cx.actions.push_back(Action::UdpAssociate {
            conn: s.id,
            client_side: SocketAddr::new(s.local.ip(), 0),
            outward,
            dual_stack,
        });
    }

    fn remember_peer(&mut self, to: SocketAddr) {
        if self.peers.insert(to) {
            self.order.push_back(to);
            if self.order.len() > MAX_PEERS {
                if let Some(old) = self.order.pop_front() {
                    self.peers.remove(&old);
                }
            }
        }
    }

    fn addresses_of(&self, host: &str) -> Option<&[IpAddr]> {
        self.names
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, a)| a.as_slice())
    }
}

/// Who a datagram is sent for, as the rules ask it.
struct Who<'a> {
    service: &'a str,
    client: IpAddr,
    user: Option<&'a str>,
}

impl Who<'_> {
    fn query<'a>(&'a self, host: Option<&'a str>, port: u16) -> Query<'a> {
        Query {
            service: self.service,
            client: self.client,
            user: self.user,
            host,
            addr: None,
            port: Some(port),
        }
    }

    /// Where a datagram for `host` (resolved to `ips`) on `port` may go:
    /// the first address the rules allow.
    fn pick(&self, cx: &Context, host: &str, ips: &[IpAddr], port: u16) -> Option<SocketAddr> {
        let q = self.query(Some(host), port);
        let checked: Vec<IpAddr> = ips.iter().map(|i| Context::rule_ip(*i)).collect();
        let first = *rules::allowed_addresses(&cx.config.rules, &q, &checked, cx.wall).first()?;
        ips.get(first).map(|ip| SocketAddr::new(*ip, port))
    }

    fn allows(&self, cx: &Context, addr: SocketAddr) -> bool {
        let q = Query {
            addr: Some(Context::rule_ip(addr.ip())),
            ..self.query(None, addr.port())
        };
        matches!(
            rules::check(&cx.config.rules, &q, cx.wall),
            Verdict::Allow { .. }
        )
    }
}

impl Session {
    /// The SOCKS machine asked for a UDP association (the client will send
    /// from `client`): the runtime opens its sockets.
    pub(super) fn associate(&mut self, client: Target, user: Option<String>, cx: &mut Context) {
        self.user = user;
        self.target = client.to_string();
        self.method = "UDP-ASSOCIATE";
        if let Some(f) = self.refusal {
            return self.fail(f, cx);
        }
        if let Some(f) = self.admit_user(cx) {
            return self.fail(f, cx);
        }
        let port = match client {
            Target::Addr(a) => a.port(),
            Target::Name(_, p) => p,
        };
        let mut a = Box::new(Association::new(port));
        a.ask(self, true, cx);
        self.machine = Machine::Associate(a);
        self.enter(Phase::Connecting, cx.now);
        self.sync(cx);
    }

    /// The association's sockets are open; `local` is the client's side.
    pub fn on_udp_bound(&mut self, local: SocketAddr, cx: &mut Context) {
        if self.phase != Phase::Connecting || !matches!(self.machine, Machine::Associate(_)) {
            return;
        }
        let announce = cx.services[self.service].conf.udp_announce;
        let named = announce.map_or(local, |ip| SocketAddr::new(ip, local.port()));
        self.down.say(&v5_reply(0x00, Some(named)));
        self.enter(Phase::Associated, cx.now);
        self.last_active = cx.now;
        self.sync(cx);
    }

    /// The association's sockets could not be opened (or not in time).
    pub fn on_udp_bind_failed(&mut self, why: Failure, error: Option<IoKind>, cx: &mut Context) {
        if self.phase != Phase::Connecting || !matches!(self.machine, Machine::Associate(_)) {
            return;
        }
        // A host without IPv6 cannot open a dual-stack socket: ask again
        // for the client's family alone.
        if error.is_some() {
            if let Machine::Associate(mut a) = std::mem::replace(&mut self.machine, Machine::Mapped)
            {
                let retry = a.mapped;
                if retry {
                    cx.actions
                        .push_back(Action::UdpDisassociate { conn: self.id });
                    a.ask(self, false, cx);
                }
                self.machine = Machine::Associate(a);
                if retry {
                    return;
                }
            }
        }
        if let Some(e) = error {
            let name = cx.services[self.service].name.clone();
            let (client, local) = (self.client, self.local.ip());
            cx.log(Level::Warn, || {
                format!(
                    "{name}: {client}: cannot open a UDP association socket on {local}: {}",
                    e.describe()
                )
            });
        }
        let code = if why == Failure::TimedOut { 0x06 } else { 0x01 };
        self.down.say(&v5_reply(code, None));
        self.close_after_reply(why.outcome(), cx);
        self.sync(cx);
    }

    /// Whatever the client sends on the control connection of an
    /// association means nothing (RFC 1928): it is read and dropped, so
    /// that its end is seen.
    pub(super) fn association_control(&mut self, cx: &mut Context) {
        if let Some(b) = self.up.buf.as_mut() {
            let n = b.data().len();
            b.consume(n);
        }
        self.up.release_if_empty(&mut cx.pool);
    }

    /// A datagram arrived at one of the association's sockets (`outward`:
    /// the one facing the destinations) from `from`.
    pub fn on_association_datagram(
        &mut self,
        outward: bool,
        from: SocketAddr,
        data: &[u8],
        cx: &mut Context,
        udp: &mut UdpTable,
    ) {
        let conn = self.id;
        let Machine::Associate(a) = &mut self.machine else {
            return;
        };
        if self.phase != Phase::Associated {
            a.counts.dropped += 1;
            return;
        }
        if outward {
            // A dual-stack socket names IPv4 peers IPv4-mapped.
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            let (Some(to), true) = (a.client_udp, a.peers.contains(&from)) else {
                a.counts.dropped += 1;
                return;
            };
            let mut out = Vec::with_capacity(22 + data.len());
            socks_udp::encode(from, &mut out);
            out.extend_from_slice(data);
            let room = out.len() <= MAX_DATAGRAM;
            let via = Via::Association {
                conn,
                outward: false,
                to,
            };
            if !room || !udp.push(via, out) {
                a.counts.dropped += 1;
                return;
            }
            a.counts.down += 1;
            a.down += data.len() as u64;
            self.last_active = cx.now;
            self.count_quota(data.len(), cx);
            return;
        }
        let from_client = from.ip().to_canonical() == self.client.ip().to_canonical()
            && (a.port == 0 || a.port == from.port());
        let header = socks_udp::parse(data);
        let header = match header {
            Ok(h) if from_client => h,
            _ => {
                a.counts.dropped += 1;
                return;
            }
        };
        a.client_udp = Some(from);
        let payload = data.get(header.len..).unwrap_or_default();
        let who = Who {
            service: &cx.services[self.service].name,
            client: self.client.ip(),
            user: self.user.as_deref(),
        };
        let sent = match header.target {
            Target::Addr(to) => {
                let ok = who.allows(cx, to);
                send(a, conn, ok.then_some(to), payload, udp)
            }
            Target::Name(host, port) => {
                let q = who.query(Some(&host), port);
                if let Some(Verdict::Deny { .. }) =
                    rules::check_by_name(&cx.config.rules, &q, cx.wall)
                {
                    a.counts.dropped += 1;
                    return;
                }
                if let Some(ips) = a.addresses_of(&host) {
                    let to = who.pick(cx, &host, ips, port);
                    send(a, conn, to, payload, udp)
                } else if a.waiting.len() >= MAX_WAITING || !udp.has_room() {
                    a.counts.dropped += 1;
                    0
                } else {
                    udp.held += 1;
                    a.waiting.push_back((host.clone(), port, payload.to_vec()));
                    if a.resolving.is_none() {
                        a.resolving = Some(host.clone());
                        cx.actions.push_back(Action::Resolve { conn, host, port });
                    }
                    0
                }
            }
        };
        self.last_active = cx.now;
        if sent > 0 {
            self.count_quota(sent, cx);
        }
    }

    /// The name the association asked about resolved to `addrs` (`None`:
    /// it did not): the datagrams waiting for it go, or are dropped.
    pub fn on_association_resolved(
        &mut self,
        addrs: Option<Vec<SocketAddr>>,
        cx: &mut Context,
        udp: &mut UdpTable,
    ) {
        let conn = self.id;
        let Machine::Associate(a) = &mut self.machine else {
            return;
        };
        let Some(host) = a.resolving.take() else {
            return;
        };
        let ips: Vec<IpAddr> = addrs.unwrap_or_default().iter().map(|s| s.ip()).collect();
        if a.names.len() >= MAX_NAMES {
            a.names.pop_front();
        }
        a.names.push_back((host, ips));
        let who = Who {
            service: &cx.services[self.service].name,
            client: self.client.ip(),
            user: self.user.as_deref(),
        };
        let mut sent = 0;
        let mut left = VecDeque::new();
        while let Some((h, port, payload)) = a.waiting.pop_front() {
            match a.addresses_of(&h) {
                Some(ips) => {
                    udp.held = udp.held.saturating_sub(1);
                    let to = who.pick(cx, &h, ips, port);
                    sent += send(a, conn, to, &payload, udp);
                }
                None => left.push_back((h, port, payload)),
            }
        }
        a.waiting = left;
        if let Some((h, port, _)) = a.waiting.front() {
            a.resolving = Some(h.clone());
            cx.actions.push_back(Action::Resolve {
                conn,
                host: h.clone(),
                port: *port,
            });
        }
        if sent > 0 {
            self.count_quota(sent, cx);
        }
    }

    /// The access record of an association, at its end.
    pub(super) fn association_record(
        &mut self,
        a: &Association,
        cx: &mut Context,
    ) -> crate::log::AccessRecord {
        let svc = &cx.services[self.service];
        crate::log::AccessRecord {
            service: svc.name.clone(),
            client: self.client,
            user: self.user.take(),
            method: self.method.into(),
            target: std::mem::take(&mut self.target),
            destination: None,
            status: self.outcome.word().into(),
            // The datagrams' payload (see `Session::moved_bytes`).
            up: a.up,
            down: a.down,
            duration: cx.now.saturating_duration_since(self.accepted),
            error: self.cause,
            rule: None,
            // Datagrams go direct: parents carry TCP only.
            via: None,
            datagrams: Some(DatagramCounts {
                dropped: a.counts.dropped + a.waiting.len() as u64,
                ..a.counts
            }),
        }
    }

    /// The datagrams it holds for a name, given up (it ends).
    pub(crate) fn association_held(&self) -> usize {
        match &self.machine {
            Machine::Associate(a) => a.waiting.len(),
            _ => 0,
        }
    }

    /// Whether the association's control connection is done: the client
    /// closed it (while its sockets open, or after).
    pub(super) fn association_done(&self) -> bool {
        matches!(self.machine, Machine::Associate(_))
            && matches!(self.phase, Phase::Connecting | Phase::Associated)
            && self.up.eof
    }
}

/// Sends `payload` out to `to` (`None`: denied or not resolved, dropped);
/// the payload bytes relayed.
fn send(
    a: &mut Association,
    conn: crate::id::ConnId,
    to: Option<SocketAddr>,
    payload: &[u8],
    udp: &mut UdpTable,
) -> usize {
    // A family the outward socket does not reach is dropped too; an
    // IPv4-mapped destination is IPv4 (and remembered so, as its replies
    // are).
    let to = to.map(|t| SocketAddr::new(t.ip().to_canonical(), t.port()));
    let Some(to) = to.filter(|t| if t.is_ipv4() { a.v4 } else { a.v6 }) else {
        a.counts.dropped += 1;
        return 0;
    };
    let named = match to.ip() {
        IpAddr::V4(v4) if a.mapped => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port()),
        _ => to,
    };
    let via = Via::Association {
        conn,
        outward: true,
        to: named,
    };
    if !udp.push(via, payload.to_vec()) {
        a.counts.dropped += 1;
        return 0;
    }
    a.remember_peer(to);
    a.counts.up += 1;
    a.up += payload.len() as u64;
    payload.len()
}
