//! SOCKS BIND (RFC 1928 section 4, and SOCKS4): Portico listens for one
//! connection from the peer the request named, and that connection
//! becomes the session's upstream.
//!
//! # States and exits
//!
//! ```text
//! Talking ─Next::Bind─┬─denied by a rule─► fail(Denied)
//!                     ├─(name)─► Resolving ─Resolved─► as below (first address)
//!                     └─(address)─► Connecting (BindListen)
//! Connecting ─BindListening─► first reply (the listening address), Connecting again
//!            ─BindAccepted from the peer's address─► BindTake ─Connected─► second reply (the peer), Relay
//!            ─BindAccepted from another address─► BindReject (the wait goes on)
//!            ─BindFailed─► fail(Other);  ─connect_timeout─► fail(TimedOut)
//! ```
//!
//! The listener is on the address Portico would connect from toward the
//! peer (`network.outgoing` when set, else the one the system routes
//! from), and it closes once a connection is taken or the session ends.

use std::net::{IpAddr, SocketAddr};

use super::{Machine, Phase, Session};
use crate::event::{Action, IoKind, Level};
use crate::proto::{Failure, Target};
use crate::rules::{self, Query, Verdict};
use crate::table::context::Context;

impl Session {
    /// The SOCKS machine asked to BIND for a connection from `peer`.
    pub(super) fn bind(&mut self, peer: Target, user: Option<String>, cx: &mut Context) {
        self.user = user;
        self.target = peer.to_string();
        if let Some(f) = self.refusal {
            return self.fail(f, cx);
        }
        self.rule = None;
        if let Some(f) = self.admit_user(cx) {
            return self.fail(f, cx);
        }
        match peer {
            Target::Addr(addr) => self.bind_to(None, addr, cx),
            Target::Name(host, port) => {
                let q = self.bind_query(cx, Some(&host), None, port);
                if let Some(v @ Verdict::Deny { .. }) =
                    rules::check_by_name(&cx.config.rules, &q, cx.wall)
                {
                    self.bind_decided(v);
                    return self.fail(Failure::Denied, cx);
                }
                self.upstream.bind_name = true;
                self.enter(Phase::Resolving, cx.now);
                let conn = self.id;
                cx.actions.push_back(Action::Resolve { conn, host, port });
                self.sync(cx);
            }
        }
    }

    /// The peer's name resolved (`None`: it did not): the first address the
    /// rules allow is the one waited for.
    pub fn on_bind_resolved(&mut self, addrs: Option<Vec<SocketAddr>>, cx: &mut Context) {
        if self.phase != Phase::Resolving || !self.upstream.bind_name {
            return;
        }
        self.upstream.bind_name = false;
        let addrs = addrs.unwrap_or_default();
        let Some(first) = addrs.first().copied() else {
            return self.fail(Failure::NotResolved, cx);
        };
        let host = self
            .target
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .to_string();
        let ips: Vec<IpAddr> = addrs.iter().map(|a| Context::rule_ip(a.ip())).collect();
        let q = self.bind_query(cx, Some(&host), None, first.port());
        let allowed = rules::allowed_addresses(&cx.config.rules, &q, &ips, cx.wall);
        let addr = allowed.first().and_then(|i| addrs.get(*i)).copied();
        self.bind_to(Some(&host), addr.unwrap_or(first), cx);
    }

    /// Checks `addr` (named `host`) against the rules, then listens.
    fn bind_to(&mut self, host: Option<&str>, addr: SocketAddr, cx: &mut Context) {
        let q = self.bind_query(cx, host, Some(addr.ip()), addr.port());
        let v = rules::check(&cx.config.rules, &q, cx.wall);
        if !self.bind_decided(v) {
            return self.fail(Failure::Denied, cx);
        }
        self.upstream.addr = Some(addr);
        self.upstream.binding = true;
        self.enter(Phase::Connecting, cx.now);
        cx.actions.push_back(Action::BindListen {
            conn: self.id,
            toward: addr,
            bind: cx.bind(true, self.service, self.rule, addr),
        });
        self.sync(cx);
    }

    fn bind_query<'a>(
        &'a self,
        cx: &'a Context,
        host: Option<&'a str>,
        addr: Option<IpAddr>,
        port: u16,
    ) -> Query<'a> {
        Query {
            service: &cx.services[self.service].name,
            client: self.client.ip(),
            user: self.user.as_deref(),
            host,
            addr: addr.map(Context::rule_ip),
            port: Some(port),
        }
    }

    /// Takes `v` as the decision on the BIND (its rule goes to the access
    /// log); whether it is allowed.
    fn bind_decided(&mut self, v: Verdict) -> bool {
        let (rule, allowed) = match v {
            Verdict::Allow { rule, .. } => (rule, true),
            Verdict::Deny { rule } => (rule, false),
        };
        self.rule = rule.map(super::rule_number);
        allowed
    }

    fn waiting_for_peer(&self) -> bool {
        self.phase == Phase::Connecting
            && self.upstream.binding
            && matches!(self.machine, Machine::Gateway(_))
    }

    /// The BIND listener is open at `local`: the first reply says where.
    pub fn on_bind_listening(&mut self, local: SocketAddr, cx: &mut Context) {
        if !self.waiting_for_peer() {
            return;
        }
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let mut reply = Vec::new();
        p.bound(local, &mut reply);
        self.down.say(&reply);
        // connect_timeout counts from the reply that names the port.
        self.enter(Phase::Connecting, cx.now);
        self.sync(cx);
    }

    /// The BIND listener could not be opened.
    pub fn on_bind_failed(&mut self, error: IoKind, cx: &mut Context) {
        if !self.waiting_for_peer() {
            return;
        }
        let name = cx.services[self.service].name.clone();
        let client = self.client;
        cx.log(Level::Warn, || {
            format!(
                "{name}: {client}: cannot listen for a SOCKS BIND: {}",
                error.describe()
            )
        });
        self.fail(Failure::Other, cx);
    }

    /// The BIND listener accepted a connection from `peer`: taken when it
    /// comes from the address the request named, else closed (the wait
    /// goes on).
    pub fn on_bind_accepted(&mut self, peer: SocketAddr, cx: &mut Context) {
        let conn = self.id;
        let expected = self.upstream.addr.map(|a| a.ip().to_canonical());
        if !self.waiting_for_peer() || expected != Some(peer.ip().to_canonical()) {
            let name = cx.services[self.service].name.clone();
            cx.log(Level::Debug, || {
                format!("{name}: BIND for {conn}: connection from {peer} refused")
            });
            cx.actions.push_back(Action::BindReject { conn });
            return;
        }
        if let Machine::Gateway(p) = &mut self.machine {
            p.bind_peer(peer);
        }
        // The listener closes with the take; the socket is the upstream,
        // reported Connected like a connect.
        self.upstream.binding = false;
        self.upstream.addr = Some(peer);
        self.interest[1] = (false, false);
        // Awaited like a connect's attempt.
        let attempt = self.next_attempt();
        self.upstream.flying = true;
        cx.actions.push_back(Action::BindTake { conn, attempt });
    }
}
