//! The way out: a destination named by the client (or a service's
//! configuration) is checked against the rules, resolved when it is a name,
//! and connected to; a failure is said in the machine's own words.
//!
//! # States and exits
//!
//! ```text
//! request ─denied─► fail(Denied)
//!         ─address─► Connecting ─Connected─► (the machine's next phase)
//!         ─name────► Resolving ─Resolved─► Connecting (one attempt, or a race)
//!                       ├─no address, or none allowed─► fail(NotResolved | Denied)
//!                       └─ResolveFailed─► fail(NotResolved)
//! Connecting ─ConnectFailed, another attempt flying or left─► Connecting
//!            ─ConnectFailed of the last─► fail(its cause)
//!            ─connect_timeout (the whole race)─► fail(TimedOut)
//! ```
//!
//! # Happy Eyeballs (RFC 8305)
//!
//! A name with several allowed addresses is raced ([`Race`]): the
//! addresses are ordered with the families interleaved, starting with the
//! family of the resolver's first answer (the system resolver sorts by
//! RFC 6724 and leaves out a family the host has no address of, which is
//! all the core can know of the host's IPv6 without I/O), each family in
//! the resolver's order. The first attempt starts at once; each next one
//! `connect_attempt_delay` after the one before, or at once when the one
//! before has failed. The first attempt to connect wins: the others are
//! abandoned ([`Action::Abandon`]). `connect_timeout` counts from the
//! first attempt and bounds the whole race; a race that loses every
//! attempt fails with the last failure's cause. A single address is one
//! attempt and no race (nothing is allocated for it).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Machine, Phase, Session};
use crate::event::{Action, IoKind, Level, LATEST_ATTEMPT};
use crate::proto::{Failure, Target};
use crate::rate::{Bucket, Key as RateKey};
use crate::rules::{self, Query, Verdict};
use crate::table::context::Context;

/// Connect attempts racing to the addresses of one name (see the module
/// docs).
#[derive(Debug, Default)]
pub(crate) struct Race {
    /// Addresses not tried yet, the next one last (popped).
    queue: Vec<SocketAddr>,
    /// Attempts in flight, oldest first: number and address.
    flying: Vec<(u32, SocketAddr)>,
    /// The attempt started last.
    newest: u32,
    /// When the next attempt starts, unless one connects first.
    next_at: Option<Instant>,
}

impl Race {
    /// The attempt an event names (`LATEST_ATTEMPT`: the newest).
    fn number(&self, attempt: u32) -> u32 {
        if attempt == LATEST_ATTEMPT {
            self.newest
        } else {
            attempt
        }
    }
}

/// RFC 8305 section 4: the families interleaved, the family of the
/// resolver's first answer first, each family in the resolver's order.
pub(crate) fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(|a| a.is_ipv6());
    let mut first = addrs.iter().filter(|a| a.is_ipv6() == first_v6);
    let mut other = addrs.iter().filter(|a| a.is_ipv6() != first_v6);
    let mut out = Vec::with_capacity(addrs.len());
    loop {
        match (first.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// A rule's number as people count it: from 1, in the configuration's
/// order (what `portico explain` and the access log's `rule=` say).
pub(crate) fn rule_number(index: usize) -> u32 {
    u32::try_from(index).map_or(u32::MAX, |i| i.saturating_add(1))
}

impl Session {
    /// The rules' question about this session going to `host`/`addr`.
    fn query<'a>(
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

    /// The rules' verdict on going to `addr` (named `host`, if it was).
    pub(super) fn verdict(&self, cx: &Context, host: Option<&str>, addr: SocketAddr) -> Verdict {
        let q = self.query(cx, host, Some(addr.ip()), addr.port());
        rules::check(&cx.config.rules, &q, cx.wall)
    }

    /// Takes `v` as the decision on this session's request (the rule it
    /// names goes to the access log): `None`: denied; `Some(rate)`:
    /// allowed, capped at `rate` if any.
    pub(super) fn decided(&mut self, v: Verdict) -> Option<Option<u64>> {
        let (rule, allowed) = match v {
            Verdict::Allow { rule, rate } => (rule, Some(rate)),
            Verdict::Deny { rule } => (rule, None),
        };
        self.rule = rule.map(rule_number);
        allowed
    }

    /// Puts the session under a bandwidth cap shared with the other
    /// connections of its user (or client address).
    pub(super) fn set_rate(&mut self, rate: Option<u64>, cx: &mut Context) {
        let Some(rate) = rate else {
            return;
        };
        if self.bucket.is_some() {
            return;
        }
        let key = match &self.user {
            Some(u) => RateKey::User(u.clone()),
            None => RateKey::Client(self.client.ip()),
        };
        let mut counts = cx.ledger.lock();
        let b = counts
            .buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(rate, cx.now));
        b.rate = rate;
        b.users += 1;
        drop(counts);
        self.bucket = Some(key);
    }

    /// Checks the request's user and client against their quotas and
    /// `max_per_user`, and counts the connection for its user: the
    /// refusal, if any. Under the ledger's lock, so that two workers
    /// cannot both take a user's last place. An HTTP connection asks at
    /// each request; it stays counted once, for its latest user.
    pub(super) fn admit_user(&mut self, cx: &mut Context) -> Option<Failure> {
        let pairs =
            crate::quota::subjects(&cx.config.quotas, self.user.as_deref(), self.client.ip());
        if pairs.is_empty() && self.user.is_none() && self.account.is_none() {
            return None;
        }
        let account = self.account.get_or_insert_with(Box::default);
        let mut counts = cx.ledger.lock();
        if counts
            .quotas
            .first_reached(&cx.config.quotas, &pairs, cx.wall)
            .is_some()
        {
            return Some(Failure::Quota);
        }
        if self.user != account.user {
            if let Some(old) = account.user.take() {
                counts.remove_user(&old);
            }
            if let Some(u) = &self.user {
                let cap = cx.config.limits.max_per_user.unwrap_or(u32::MAX);
                if counts.user(u) >= cap {
                    return Some(Failure::Limit);
                }
                counts.add_user(u);
                account.user = Some(u.clone());
            }
        }
        drop(counts);
        account.quotas = pairs;
        None
    }

    /// `n` bytes moved for this connection: they count in its quotas.
    /// Once one is used up, an HTTP connection's next request is checked
    /// again even to the destination it has open.
    pub(super) fn count_quota(&mut self, n: usize, cx: &Context) {
        let Some(a) = self.account.as_ref().filter(|a| !a.quotas.is_empty()) else {
            return;
        };
        let reached =
            cx.ledger
                .lock()
                .quotas
                .add_all(&cx.config.quotas, &a.quotas, n as u64, cx.wall);
        if let (true, Machine::Http(h)) = (reached, &mut self.machine) {
            h.recheck_next();
        }
    }

    /// The client (or a mapped port's configuration) named a destination.
    pub(super) fn request(&mut self, target: Target, user: Option<String>, cx: &mut Context) {
        self.user = user;
        self.target = target.to_string();
        // A new request: no parent yet.
        self.parent = None;
        if let Some(f) = self.refusal {
            return self.fail(f, cx);
        }
        // A new request: no rule has decided it yet.
        self.rule = None;
        if let Some(f) = self.admit_user(cx) {
            return self.fail(f, cx);
        }
        // Through a parent (`via`): the name is not resolved here.
        if let Some((p, v)) = self.route(&target, cx) {
            return self.via_parent(p, v, target, cx);
        }
        match target {
            Target::Addr(addr) => {
                let v = self.verdict(cx, None, addr);
                let Some(rate) = self.decided(v) else {
                    return self.fail(Failure::Denied, cx);
                };
                self.set_rate(rate, cx);
                self.connect(addr, cx);
            }
            Target::Name(host, port) => {
                // Refuse by name before resolving only when the address
                // could not change the verdict.
                let q = self.query(cx, Some(&host), None, port);
                if let Some(v @ Verdict::Deny { .. }) =
                    rules::check_by_name(&cx.config.rules, &q, cx.wall)
                {
                    self.decided(v);
                    return self.fail(Failure::Denied, cx);
                }
                let conn = self.id;
                self.enter(Phase::Resolving, cx.now);
                cx.actions.push_back(Action::Resolve { conn, host, port });
                self.sync(cx);
            }
        }
    }

    /// The destination's name resolved to `addrs` (in the resolver's order).
    pub fn on_resolved(&mut self, addrs: Vec<SocketAddr>, cx: &mut Context) {
        if self.parent_resolving() {
            return self.parent_resolved(&addrs, cx);
        }
        if self.phase != Phase::Resolving {
            return;
        }
        if addrs.is_empty() {
            return self.fail(Failure::NotResolved, cx);
        }
        let host = self.target.rsplit_once(':').map_or("", |(h, _)| h);
        let ips: Vec<IpAddr> = addrs.iter().map(|a| Context::rule_ip(a.ip())).collect();
        let q = self.query(cx, Some(host), None, addrs[0].port());
        let allowed: Vec<SocketAddr> =
            rules::allowed_addresses(&cx.config.rules, &q, &ips, cx.wall)
                .into_iter()
                .map(|i| addrs[i])
                .collect();
        if allowed.is_empty() {
            // Every address denied: the first one's rule tells why.
            let v = self.verdict(cx, Some(host), addrs[0]);
            self.decided(v);
            return self.fail(Failure::Denied, cx);
        }
        let first = allowed[0];
        let v = self.verdict(cx, Some(host), first);
        let rate = self.decided(v).flatten();
        self.set_rate(rate, cx);
        if allowed.len() == 1 {
            return self.connect(first, cx);
        }
        let mut queue = interleave(&allowed);
        queue.reverse();
        self.upstream.race = Some(Box::new(Race {
            queue,
            ..Race::default()
        }));
        self.race_next(cx);
    }

    /// The destination's name did not resolve.
    pub fn on_resolve_failed(&mut self, cx: &mut Context) {
        if self.parent_resolving() {
            return self.parent_resolved(&[], cx);
        }
        if self.phase == Phase::Resolving {
            self.fail(Failure::NotResolved, cx);
        }
    }

    /// Has the runtime connect to `addr` (replacing any earlier socket),
    /// one attempt and no race.
    pub(crate) fn connect(&mut self, addr: SocketAddr, cx: &mut Context) {
        self.abandon_race(cx);
        self.start_attempt(addr, cx);
        self.upstream.flying = true;
    }

    /// Starts a connect attempt to `addr`: its number.
    fn start_attempt(&mut self, addr: SocketAddr, cx: &mut Context) -> u32 {
        let conn = self.id;
        if let Some(v) = cx.services[self.service].conf.send_proxy_protocol {
            // The destination learns the real client before any byte of it
            // (a retry to another address says it again, on its own socket).
            let version = match v {
                crate::config::ProxyVersion::V1 => crate::proxy_protocol::Version::V1,
                crate::config::ProxyVersion::V2 => crate::proxy_protocol::Version::V2,
            };
            let mut header = Vec::new();
            crate::proxy_protocol::encode(version, self.client, self.local, &mut header);
            self.up.prefix.clear();
            self.up.prefix_pos = 0;
            self.up.say(&header);
        }
        self.upstream.addr = Some(addr);
        // A new upstream socket: the runtime knows no interest for it yet.
        self.interest[1] = (false, false);
        if self.phase != Phase::Connecting {
            self.enter(Phase::Connecting, cx.now);
        }
        let bind = match self.upstream.source.as_deref().copied() {
            Some(ip) if self.upstream.outward && ip.is_ipv6() == addr.is_ipv6() => Some(ip),
            _ => cx.bind(self.upstream.outward, self.service, self.rule, addr),
        };
        let attempt = self.next_attempt();
        cx.actions.push_back(Action::Connect {
            conn,
            attempt,
            addr,
            bind,
        });
        self.sync(cx);
        attempt
    }

    /// The number a new upstream socket's attempt gets.
    pub(super) fn next_attempt(&mut self) -> u32 {
        let attempt = self.upstream.attempt;
        // Numbers grow; the one format-1 traces use is never given.
        self.upstream.attempt = attempt.wrapping_add(1) % LATEST_ATTEMPT;
        attempt
    }

    /// The attempt started last (the only one, without a race).
    fn latest_attempt(&self) -> u32 {
        self.upstream
            .attempt
            .checked_sub(1)
            .unwrap_or(LATEST_ATTEMPT - 1)
    }

    /// Whether `attempt` is one the session waits for (`LATEST_ATTEMPT`:
    /// the latest).
    fn awaited(&self, attempt: u32) -> Option<SocketAddr> {
        match &self.upstream.race {
            Some(r) => {
                let want = r.number(attempt);
                r.flying.iter().find(|(n, _)| *n == want).map(|(_, a)| *a)
            }
            None if self.upstream.flying
                && (attempt == LATEST_ATTEMPT || attempt == self.latest_attempt()) =>
            {
                self.upstream.addr
            }
            None => None,
        }
    }

    /// The next race attempt is due at `now`.
    pub(super) fn race_due(&self, now: Instant) -> bool {
        self.race_at().is_some_and(|t| t <= now)
    }

    /// When the next race attempt is due, while connecting.
    pub(super) fn race_at(&self) -> Option<Instant> {
        if self.phase != Phase::Connecting {
            return None;
        }
        self.upstream.race.as_ref().and_then(|r| r.next_at)
    }

    /// Starts the race's next attempt, if an address is left, and plans
    /// the one after.
    pub(super) fn race_next(&mut self, cx: &mut Context) {
        let Some(r) = self.upstream.race.as_mut() else {
            return;
        };
        let Some(addr) = r.queue.pop() else {
            r.next_at = None;
            return;
        };
        r.next_at = (!r.queue.is_empty()).then(|| cx.now + cx.config.limits.connect_attempt_delay);
        let n = self.start_attempt(addr, cx);
        if let Some(r) = self.upstream.race.as_mut() {
            r.flying.push((n, addr));
            r.newest = n;
        }
    }

    /// Attempt `attempt` connected: whether it is the one the session
    /// takes. It wins a race: the others are abandoned.
    pub(super) fn won(&mut self, attempt: u32, cx: &mut Context) -> bool {
        let Some(addr) = self.awaited(attempt) else {
            return false;
        };
        if let Some(r) = self.upstream.race.take() {
            let conn = self.id;
            let winner = r.number(attempt);
            for &(n, _) in &r.flying {
                if n != winner {
                    cx.actions.push_back(Action::Abandon { conn, attempt: n });
                }
            }
        }
        self.upstream.addr = Some(addr);
        self.upstream.flying = false;
        true
    }

    /// The attempts still in flight are given up (the request failed, or
    /// a new one begins); the sockets they have go.
    fn abandon_race(&mut self, cx: &mut Context) {
        if std::mem::take(&mut self.upstream.flying) {
            let (conn, attempt) = (self.id, self.latest_attempt());
            cx.actions.push_back(Action::Abandon { conn, attempt });
        }
        if let Some(r) = self.upstream.race.take() {
            let conn = self.id;
            for (attempt, _) in r.flying {
                cx.actions.push_back(Action::Abandon { conn, attempt });
            }
        }
    }

    /// Connect attempt `attempt` failed: the race goes on, or the failure
    /// is said.
    pub fn on_connect_failed(&mut self, attempt: u32, error: IoKind, cx: &mut Context) {
        if self.phase != Phase::Connecting {
            return;
        }
        let Some(addr) = self.awaited(attempt) else {
            return;
        };
        if self.parent_connecting() {
            self.upstream.flying = false;
            return self.parent_connect_failed(error, cx);
        }
        let name = cx.services[self.service].name.clone();
        let client = self.client;
        cx.log(Level::Debug, || {
            format!(
                "{name}: {client}: connect to {addr} failed: {}",
                error.describe()
            )
        });
        self.upstream.open = false;
        self.upstream.flying = false;
        if let Some(r) = self.upstream.race.as_mut() {
            let failed = r.number(attempt);
            r.flying.retain(|(n, _)| *n != failed);
            if r.flying.iter().all(|(n, _)| *n != r.newest) && !r.queue.is_empty() {
                // The latest attempt failed: the next one need not wait.
                return self.race_next(cx);
            }
            if !r.flying.is_empty() {
                return;
            }
            // Every address failed: the last failure says why (and the
            // access log names its address).
            self.upstream.race = None;
            self.upstream.addr = Some(addr);
        }
        let why = match error {
            IoKind::Refused => Failure::Refused,
            IoKind::TimedOut => Failure::TimedOut,
            IoKind::HostUnreachable => Failure::HostUnreachable,
            IoKind::NetUnreachable => Failure::NetUnreachable,
            _ => Failure::Other,
        };
        self.fail(why, cx);
    }

    /// Has the runtime close the upstream socket only (the client stays);
    /// a new one starts with no interest told.
    pub(super) fn close_upstream(&mut self, cx: &mut Context) {
        self.upstream.open = false;
        // Attempts still in flight close with it.
        self.upstream.race = None;
        self.upstream.flying = false;
        self.interest[1] = (false, false);
        cx.actions
            .push_back(Action::CloseUpstream { conn: self.id });
    }

    /// The request cannot be served: the machine says why in its own
    /// words, or (a mapped port) the connection just closes.
    pub(super) fn fail(&mut self, why: Failure, cx: &mut Context) {
        self.abandon_race(cx);
        self.outcome = why.outcome();
        self.cause = None;
        if let Some(c) = why.cause() {
            self.note_cause(c, cx);
        }
        match &self.machine {
            Machine::Http(_) => self.http_failed(why, cx),
            Machine::Gateway(_) => self.gateway_failed(why, cx),
            Machine::Transparent(_) => self.intercept_failed(why, cx),
            _ => self.end(),
        }
    }
}
