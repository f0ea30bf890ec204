//! The way out through a parent proxy (`via`): once the rules have allowed
//! a request, a session whose rule or service names a parent connects to
//! one of the parent's addresses instead of the destination, and asks the
//! parent to connect onward ([`crate::proto::upstream::Handshake`]) before
//! the machine goes on as if it had connected directly. The destination's
//! name is never resolved here: it goes to the parent as written.
//!
//! # States and exits
//!
//! ```text
//! request ─via parent─► (pick an address that is up and not tried)
//!     ├─none left─► fail(Parent)
//!     ├─a name─► Resolving ─Resolved─► Connecting;  ─ResolveFailed─► next address
//!     └─an address─► Connecting (PROXY header and handshake queued, the
//!                    client's bytes held)
//! Connecting ─Connected─► Conversing (the handshake)
//!            ─ConnectFailed / connect_timeout─► next address
//! Conversing ─Done─► (the machine's Connected, the parent's answer taken)
//!            ─Rejected / Malformed / EOF / error / handshake_timeout─► next address
//! ```
//!
//! Every attempt's end is counted in the shared [`crate::parent::Registry`]
//! (which marks an address down after `down_after` failures in a row).

use std::net::SocketAddr;

use super::{Machine, Phase, Session};
use crate::config::{Host, ParentKind, Via};
use crate::event::{Action, IoKind, Level};
use crate::parent::Result as Attempt;
use crate::proto::upstream::{absolute_head, basic_header, Handshake, Step};
use crate::proto::{Failure, Target};
use crate::rules::{self, Verdict};
use crate::table::context::Context;

/// A session's way through a parent, for its current request.
#[derive(Debug)]
pub(crate) struct Leg {
    /// `Config::parents[parent]`.
    pub parent: usize,
    /// Its name, for the access log's `via=`.
    pub name: String,
    /// What the parent is asked to connect to.
    pub target: Target,
    /// Addresses tried already (indexes into the parent's `addresses`).
    tried: Vec<usize>,
    /// The address being tried now.
    current: Option<usize>,
    /// The handshake with it: queued (connecting) or under way.
    handshake: Option<Handshake>,
    /// The handshake has finished and the machine has been told.
    pub done: bool,
    /// The last SOCKS5 reply code a parent refused with, if any.
    code: Option<u8>,
    /// What the machine queued for the destination before the connect
    /// (a rewritten request head), and the service's own PROXY header:
    /// said once the parent has connected onward.
    held: Vec<u8>,
    /// The directions' `fwd` before the handshake held them.
    fwd: (Option<usize>, Option<usize>),
    /// Client bytes the machine cleared for the destination while the
    /// handshake held them back.
    extra: usize,
    /// Plain HTTP requests to an http parent: no handshake, the heads go
    /// in absolute form.
    plain: bool,
    /// The current address's name resolved to these too, not tried yet.
    resolved: Vec<SocketAddr>,
}

impl Session {
    /// Where the rules and the service send a request for `target`: the
    /// parent and the rules' verdict, or none for a direct connection
    /// (decided by the direct path, unchanged). Through a parent the
    /// name is not resolved, so the rules see it as a name only: network
    /// patterns match literal addresses alone.
    pub(super) fn route(&self, target: &Target, cx: &Context) -> Option<(usize, Verdict)> {
        let (host, addr, port) = match target {
            Target::Addr(a) => (None, Some(a.ip()), a.port()),
            Target::Name(h, p) => (Some(h.as_str()), None, *p),
        };
        self.route_to(host, addr, port, cx)
    }

    /// [`Session::route`] for a destination known by name, address or
    /// both (an intercepted connection's peeked name and original address).
    pub(super) fn route_to(
        &self,
        host: Option<&str>,
        addr: Option<std::net::IpAddr>,
        port: u16,
        cx: &Context,
    ) -> Option<(usize, Verdict)> {
        let svc_via = cx.services[self.service].conf.via;
        let rule_via = cx.config.rules.iter().any(|r| r.via.is_some());
        if !rule_via && !matches!(svc_via, Some(Via::Parent(_))) {
            return None;
        }
        let addr = addr.map(Context::rule_ip);
        let q = rules::Query {
            service: &cx.services[self.service].name,
            client: self.client.ip(),
            user: self.user.as_deref(),
            host,
            addr,
            port: Some(port),
        };
        let v = rules::check(&cx.config.rules, &q, cx.wall);
        let via = match v {
            Verdict::Allow { rule: Some(i), .. } => cx.config.rules[i].via.or(svc_via),
            _ => svc_via,
        };
        match via {
            Some(Via::Parent(p)) => Some((p, v)),
            _ => None,
        }
    }

    /// The rules sent the request through parent `p` with verdict `v`.
    pub(super) fn via_parent(&mut self, p: usize, v: Verdict, target: Target, cx: &mut Context) {
        let Some(rate) = self.decided(v) else {
            return self.fail(Failure::Denied, cx);
        };
        self.set_rate(rate, cx);
        // What the machine has queued for the destination waits for the
        // parent's consent, behind the service's own PROXY header.
        let mut held = Vec::new();
        if let Some(v) = cx.services[self.service].conf.send_proxy_protocol {
            crate::proxy_protocol::encode(proxy_version(v), self.client, self.local, &mut held);
        }
        held.extend_from_slice(self.up.prefix.get(self.up.prefix_pos..).unwrap_or(&[]));
        self.up.prefix.clear();
        self.up.prefix_pos = 0;
        let conf = &cx.config.parents[p];
        let plain = match &mut self.machine {
            Machine::Http(h) if conf.kind == ParentKind::Http && !h.tunnelling() => {
                let auth = basic_header(conf.user.as_deref(), conf.password.as_deref());
                if let Some(a) = absolute_head(&held, auth.as_deref()) {
                    held = a;
                }
                h.via_parent = Some(auth);
                true
            }
            _ => false,
        };
        let fwd = (self.up.fwd, self.down.fwd);
        if !plain {
            self.up.fwd = Some(0);
            self.down.fwd = Some(0);
        }
        self.parent = Some(Box::new(Leg {
            parent: p,
            name: cx.config.parents[p].name.clone(),
            target,
            tried: Vec::new(),
            current: None,
            handshake: None,
            done: false,
            code: None,
            held,
            fwd,
            extra: 0,
            plain,
            resolved: Vec::new(),
        }));
        self.parent_next(cx);
    }

    /// Tries the parent's next address, or fails when none is left.
    fn parent_next(&mut self, cx: &mut Context) {
        let Some(leg) = self.parent.as_mut() else {
            return;
        };
        let first = leg.tried.is_empty();
        let picked = cx.ledger.lock().parents.pick(
            &cx.config.parents,
            leg.parent,
            self.client.ip(),
            &leg.tried,
            first,
            cx.now,
        );
        let Some(a) = picked else {
            let code = leg.code;
            // The machine's directions as they were: it answers (and a
            // Telnet client may ask again) with nothing held.
            self.release_held();
            return self.fail(Failure::Parent(code), cx);
        };
        leg.tried.push(a);
        leg.current = Some(a);
        leg.handshake = None;
        // (pick answers only for a parent and address the configuration
        // has: this is not reached.)
        let Some((_, dest)) = cx
            .config
            .parents
            .get(leg.parent)
            .and_then(|c| c.addresses.get(a))
            .cloned()
        else {
            return self.fail(Failure::Parent(None), cx);
        };
        match dest.host {
            Host::Ip(ip) => self.parent_connect(SocketAddr::new(ip, dest.port), cx),
            Host::Name(host) => {
                let conn = self.id;
                self.enter(Phase::Resolving, cx.now);
                cx.actions.push_back(Action::Resolve {
                    conn,
                    host,
                    port: dest.port,
                });
                self.sync(cx);
            }
        }
    }

    /// Whether the session is resolving a parent's address (not the
    /// destination's name).
    pub(super) fn parent_resolving(&self) -> bool {
        self.phase == Phase::Resolving && self.parent.as_ref().is_some_and(|l| !l.done)
    }

    /// The parent's address resolved to `addrs`: tried in order, as one
    /// address of the parent (one failure when none connects).
    pub(super) fn parent_resolved(&mut self, addrs: &[SocketAddr], cx: &mut Context) {
        let Some((first, rest)) = addrs.split_first() else {
            return self.parent_attempt_failed(Attempt::Refused, "its name did not resolve", cx);
        };
        if let Some(leg) = self.parent.as_mut() {
            leg.resolved = rest.to_vec();
        }
        self.parent_connect(*first, cx)
    }

    /// Connects to a parent's address, with its PROXY header and the
    /// handshake queued and the client's bytes held back.
    fn parent_connect(&mut self, addr: SocketAddr, cx: &mut Context) {
        let Some(leg) = self.parent.as_mut() else {
            return;
        };
        let Some(conf) = cx.config.parents.get(leg.parent) else {
            // A reload took the parent away meanwhile.
            return self.fail(Failure::Parent(None), cx);
        };
        let mut first = Vec::new();
        if let Some(v) = conf.send_proxy_protocol {
            crate::proxy_protocol::encode(proxy_version(v), self.client, self.local, &mut first);
        }
        if leg.plain {
            self.connect(addr, cx);
            self.enter(Phase::Connecting, cx.now);
            self.up.prefix = first;
            self.up.prefix_pos = 0;
            return self.sync(cx);
        }
        let Some(h) = Handshake::start(
            conf.kind,
            &leg.target,
            conf.user.as_deref(),
            conf.password.as_deref(),
            &mut first,
        ) else {
            // Nothing any address of this parent could carry.
            let name = leg.name.clone();
            cx.log(Level::Info, || {
                format!("parent '{name}' is socks4 and cannot carry an IPv6 destination")
            });
            return self.fail(Failure::Parent(None), cx);
        };
        leg.handshake = Some(h);
        self.connect(addr, cx);
        // Each attempt has its own connect_timeout.
        self.enter(Phase::Connecting, cx.now);
        self.up.prefix = first;
        self.up.prefix_pos = 0;
        self.hold();
        self.sync(cx);
    }

    /// Whether a connect to a parent's address is under way.
    pub(super) fn parent_connecting(&self) -> bool {
        self.phase == Phase::Connecting && self.parent.as_ref().is_some_and(|l| !l.done)
    }

    /// Whether the handshake with a parent is under way.
    pub(super) fn parent_talking(&self) -> bool {
        self.phase == Phase::Conversing && self.parent.as_ref().is_some_and(|l| !l.done)
    }

    /// The parent's address answered: the handshake goes out.
    pub(super) fn parent_connected(&mut self, local: SocketAddr, cx: &mut Context) {
        self.upstream.local = Some(local);
        self.upstream.open = true;
        self.last_active = cx.now;
        self.enter(Phase::Conversing, cx.now);
        if self.parent.as_ref().is_some_and(|l| l.plain) {
            // No handshake: the parent takes requests as they are.
            return self.parent_done(0, cx);
        }
        self.hold();
        self.sync(cx);
    }

    /// Holds back what the client sends (and what the parent says) during
    /// the handshake; what the machine cleared meanwhile goes after it.
    fn hold(&mut self) {
        if let Some(leg) = self.parent.as_mut() {
            leg.extra += self.up.fwd.unwrap_or(0);
        }
        self.up.fwd = Some(0);
        self.down.fwd = Some(0);
    }

    /// The directions as the machine had them (with what it cleared
    /// meanwhile), when the parent's handshake is over.
    fn release_held(&mut self) {
        let Some(leg) = self.parent.as_mut() else {
            return;
        };
        if leg.plain {
            return;
        }
        let extra = std::mem::take(&mut leg.extra) + self.up.fwd.unwrap_or(0);
        self.up.fwd = leg.fwd.0.map(|f| f + extra);
        self.down.fwd = leg.fwd.1;
    }

    /// The connect to the parent's address failed.
    pub(super) fn parent_connect_failed(&mut self, error: IoKind, cx: &mut Context) {
        self.upstream.open = false;
        // Another address of the same name first.
        if let Some(next) = self
            .parent
            .as_mut()
            .and_then(|l| (!l.resolved.is_empty()).then(|| l.resolved.remove(0)))
        {
            if let Some(b) = self.down.buf.as_mut() {
                let k = b.data().len();
                b.consume(k);
            }
            return self.parent_connect(next, cx);
        }
        let result = match error {
            IoKind::TimedOut => Attempt::Timeout,
            _ => Attempt::Refused,
        };
        self.parent_attempt_failed(result, error.describe(), cx);
    }

    /// The attempt's deadline passed (connect_timeout or, in the
    /// handshake, handshake_timeout).
    pub(super) fn parent_timed_out(&mut self, cx: &mut Context) {
        self.parent_attempt_failed(Attempt::Timeout, "timed out", cx);
    }

    /// The upstream socket failed mid-handshake.
    pub(super) fn parent_io_error(&mut self, error: IoKind, cx: &mut Context) {
        self.parent_attempt_failed(Attempt::Rejected, error.describe(), cx);
    }

    /// The parent's bytes (or their end, `eof`) during the handshake.
    pub(super) fn parent_bytes(&mut self, eof: bool, cx: &mut Context) {
        let Some(leg) = self.parent.as_mut() else {
            return;
        };
        let Some(h) = leg.handshake.as_mut() else {
            return;
        };
        let data = self.down.buf.as_ref().map_or(&[][..], |b| b.data());
        let mut say = Vec::new();
        let step = h.input(data, &mut say);
        self.up.say(&say);
        match step {
            Step::Wait if eof => {
                self.parent_attempt_failed(Attempt::Rejected, "it closed the connection", cx)
            }
            Step::Wait => self.sync(cx),
            Step::Done(n) => self.parent_done(n, cx),
            Step::Rejected(code) => {
                leg.code = code.or(leg.code);
                let why = match code {
                    Some(c) => format!("it refused (SOCKS5 reply {c})"),
                    None => "it refused".to_string(),
                };
                self.parent_attempt_failed(Attempt::Rejected, &why, cx);
            }
            Step::Malformed => {
                self.parent_attempt_failed(Attempt::Rejected, "its answer did not parse", cx)
            }
        }
    }

    /// The parent connected onward; its answer took the first `n` bytes
    /// the session read from it. The machine goes on as if it had
    /// connected directly.
    fn parent_done(&mut self, n: usize, cx: &mut Context) {
        let Some(leg) = self.parent.as_mut() else {
            return;
        };
        leg.done = true;
        leg.handshake = None;
        if let Some(a) = leg.current {
            cx.ledger
                .lock()
                .parents
                .record(&cx.config.parents, leg.parent, a, Attempt::Ok, cx.now);
        }
        if let Some(b) = self.down.buf.as_mut() {
            b.consume(n);
        }
        self.down.release_if_empty(&mut cx.pool);
        let held = std::mem::take(&mut leg.held);
        self.release_held();
        self.up.say_owned(held);
        let local = self.upstream.local.unwrap_or(self.local);
        self.phase = Phase::Connecting;
        self.connected(local, cx);
        // What the destination said along with the parent's answer is
        // the machine's to read now.
        if !self.ended && self.down.buf.as_ref().is_some_and(|b| !b.is_empty()) {
            let eof = self.down.eof;
            self.server_bytes(eof, cx);
        }
    }

    /// This attempt failed for `why` (counted as `result`): the next
    /// address, on a new socket.
    fn parent_attempt_failed(&mut self, result: Attempt, why: &str, cx: &mut Context) {
        let Some(leg) = self.parent.as_mut() else {
            return;
        };
        let (p, a) = (leg.parent, leg.current);
        if let Some(a) = a {
            cx.ledger
                .lock()
                .parents
                .record(&cx.config.parents, p, a, result, cx.now);
            let address = cx
                .config
                .parents
                .get(p)
                .and_then(|c| c.addresses.get(a))
                .map(|(w, _)| w.clone())
                .unwrap_or_default();
            let (svc, name) = (cx.services[self.service].name.clone(), leg.name.clone());
            let client = self.client;
            cx.log(Level::Debug, || {
                format!("{svc}: {client}: parent '{name}' at {address} failed: {why}")
            });
        }
        leg.handshake = None;
        leg.current = None;
        leg.resolved.clear();
        if self.upstream.open {
            self.close_upstream(cx);
        }
        // The failed parent's bytes are not the next one's.
        if let Some(b) = self.down.buf.as_mut() {
            let k = b.data().len();
            b.consume(k);
        }
        self.down.release_if_empty(&mut cx.pool);
        self.down.eof = false;
        self.up.prefix.clear();
        self.up.prefix_pos = 0;
        self.parent_next(cx);
    }

    /// An FTP data port toward `to`, opened by this control connection:
    /// when the control connection went through a parent and `to` is the
    /// server's side (the parent's address, as the control machine saw
    /// it), the server's name as the parent was asked for it.
    pub(super) fn data_via_host(&self, to: SocketAddr) -> Option<String> {
        let leg = self.parent.as_ref().filter(|l| l.done)?;
        if Some(to.ip()) != self.upstream.addr.map(|a| a.ip()) {
            return None;
        }
        Some(match &leg.target {
            Target::Name(h, _) => h.clone(),
            Target::Addr(a) => a.ip().to_string(),
        })
    }

    /// An FTP data connection's way out: to `to`, or (`via_host`, see
    /// [`Session::data_via_host`]) through the parent the rules pick for
    /// that name and `to`'s port.
    pub(crate) fn connect_data(
        &mut self,
        to: SocketAddr,
        via_host: Option<String>,
        cx: &mut Context,
    ) {
        if let Some(h) = via_host {
            let target = match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Target::Addr(SocketAddr::new(ip, to.port())),
                Err(_) => Target::Name(h, to.port()),
            };
            if let Some((p, v)) = self.route(&target, cx) {
                return self.via_parent(p, v, target, cx);
            }
        }
        self.connect(to, cx);
    }

    /// The access log's `via=`: the parent the current request went
    /// through.
    pub(super) fn via_name(&self) -> Option<String> {
        self.parent.as_ref().map(|l| l.name.clone())
    }
}

fn proxy_version(v: crate::config::ProxyVersion) -> crate::proxy_protocol::Version {
    match v {
        crate::config::ProxyVersion::V1 => crate::proxy_protocol::Version::V1,
        crate::config::ProxyVersion::V2 => crate::proxy_protocol::Version::V2,
    }
}
