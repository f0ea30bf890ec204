//! The access-rule engine: which `[[rule]]` decides a
//! request, and what it decides.
//!
//! Rules are walked in order and the first one whose every condition
//! matches decides ([`Verdict::Allow`] or [`Verdict::Deny`], with its index).
//! With no rules at all everything is allowed; with at least one rule, a
//! request that matches none is denied (implicit deny, `rule: None`).
//!
//! This module does no I/O and reads no clock: the caller passes the local
//! wall-clock time as a [`Wall`].
//!
//! # Conditions
//!
//! A condition whose list is empty in the [`Rule`] matches anything. When
//! present:
//!
//! - `services`: the service name, exactly.
//! - `clients`: the client address is in one of the networks. An
//!   IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) also matches as the IPv4
//!   address `a.b.c.d`, and an IPv4 address also matches as its mapped form,
//!   so dual-stack sockets cannot dodge an IPv4 rule.
//! - `users`: only an authenticated user named in the list (exact,
//!   case-sensitive, as user names are in `[[user]]`); an unauthenticated
//!   request never matches.
//! - `destinations`: any entry matches. Name patterns (`Exact`, `Suffix`)
//!   match the host name the client gave, compared ASCII-case-insensitively
//!   and ignoring one trailing dot; `Suffix("example.com")` (written
//!   `*.example.com`) matches names strictly under `example.com`
//!   (`a.example.com`, `a.b.example.com`), never `example.com` itself nor
//!   `badexample.com`. A name pattern never matches a destination given as
//!   an IP address. `Net` patterns match the destination address, whether the
//!   client gave it or a name resolved to it (IPv4-mapped addresses handled
//!   as for clients). A `host` that is itself an IP literal (`"10.0.0.1"`,
//!   `"[::1]"`) is treated as that address, not as a name.
//! - `ports`: the destination port is in one of the ranges.
//! - `days` / `hours`: see [`Wall`] and below.
//!
//! ## Days and hours, and windows that cross midnight
//!
//! The local time is `unix_secs + utc_offset_secs`. `hours = (start, end)`
//! matches minute `m` of the local day when `start <= m < end`; when the
//! window crosses midnight (`start > end`), when `m >= start || m < end`.
//!
//! **Decision:** `days` names the day a window *starts* on (as a person
//! reads `days = ["fri"]`, `hours = "22:00-06:00"`: Friday night, until
//! Saturday 06:00). So for a window crossing midnight, the part after
//! midnight (`m < end`) is checked against the *previous* local day; the
//! part before midnight, and every non-crossing window, against the current
//! local day. Without `hours`, `days` is the current local day.
//!
//! # Unknown fields
//!
//! A request is checked several times as it becomes known. [`check`] takes
//! what it is given as final: a condition on a field that is `None` in the
//! [`Query`] does **not** match (`users` with `user: None`, `ports` with
//! `port: None`, `destinations` with nothing that matches — in particular
//! `Net` patterns with `addr: None`). That is the right check once the
//! request is complete (after name resolution when [`needs_address`]).
//!
//! Before that, a verdict from [`check`] can be premature: with
//! `[allow 10.0.0.0/8, deny]` a name not resolved yet fails the first rule
//! and is denied by the second, although its address may be in 10/8. So
//! there are two checks that only answer when the outcome is already
//! certain, treating the missing fields as "might match either way":
//!
//! - [`check_early`], at accept time: only service and client are known;
//! - [`check_by_name`], after the request named its destination but before
//!   any lookup: everything is known except the address a name resolves to.
//!
//! The intended sequence: `check_early` at accept (refuse on `Deny`);
//! `check_by_name` when the request is parsed (refuse on `Some(Deny)`);
//! then, if the destination is a name and [`needs_address`] is true,
//! resolve and `check` with the address (otherwise `check` right away).
//! The last `check` is the one whose `Allow` (and `rate`) counts.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use crate::config::{DestPattern, Rule, RuleAction};

const SECS_PER_DAY: i64 = 86_400;

/// Local wall-clock time as the runtime saw it (the core has no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wall {
    /// Seconds since the Unix epoch (UTC).
    pub unix_secs: i64,
    /// The local zone's offset from UTC at that instant (east positive).
    pub utc_offset_secs: i32,
}

impl Wall {
    /// A time in UTC.
    pub fn utc(unix_secs: i64) -> Wall {
        Wall {
            unix_secs,
            utc_offset_secs: 0,
        }
    }

    /// Seconds since the epoch, shifted to local time.
    fn local_secs(&self) -> i64 {
        self.unix_secs
            .saturating_add(i64::from(self.utc_offset_secs))
    }

    /// The local day of the week, 0 = Monday … 6 = Sunday.
    pub fn weekday(&self) -> u8 {
        let days = self.local_secs().div_euclid(SECS_PER_DAY);
        // 1970-01-01 was a Thursday (3).
        (days + 3).rem_euclid(7) as u8
    }

    /// Minutes since local midnight, 0–1439.
    pub fn minute_of_day(&self) -> u16 {
        (self.local_secs().rem_euclid(SECS_PER_DAY) / 60) as u16
    }
}

/// What is known about a request when a rule is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub service: &'a str,
    pub client: IpAddr,
    /// `None`: not authenticated.
    pub user: Option<&'a str>,
    /// The destination name as the client gave it (any case, maybe one
    /// trailing dot); `None` if the client gave an IP or nothing yet.
    pub host: Option<&'a str>,
    /// The destination address (given, or resolved); `None` if not known
    /// yet.
    pub addr: Option<IpAddr>,
    /// The destination port; `None` if not known yet.
    pub port: Option<u16>,
}

impl<'a> Query<'a> {
    /// A query knowing only the service and the client.
    pub fn new(service: &'a str, client: IpAddr) -> Query<'a> {
        Query {
            service,
            client,
            user: None,
            host: None,
            addr: None,
            port: None,
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `rule`: the index of the allow rule that matched; `None` when there
    /// are no rules at all (or, from [`check_early`], when the outcome is
    /// not decided yet). `rate`: that rule's bandwidth cap, bytes per second.
    Allow {
        rule: Option<usize>,
        rate: Option<u64>,
    },
    /// `rule`: the index of the deny rule that matched; `None` for the
    /// implicit deny (there are rules and none matched).
    Deny { rule: Option<usize> },
}

impl Verdict {
    #[cfg(test)]
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// The verdict for a request, taking `q` as all there is to know (see the
/// module docs: a condition on a `None` field does not match). First match
/// wins; with no rules everything is allowed; with rules, a query matching
/// none is denied.
pub fn check(rules: &[Rule], q: &Query, wall: Wall) -> Verdict {
    walk(rules, q, wall, Unknown::NONE, &mut |_, _| {})
        .expect("every field is known: always decided")
}

/// Why one rule did not match a request: the first of its conditions that
/// failed, in the order they are checked (service, client, days, hours,
/// user, port, destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    Service,
    Client,
    /// The (local) day is not one of the rule's `days`; for a window
    /// crossing midnight, after midnight, the day before.
    Days,
    /// The (local) time of day is outside the rule's `hours`.
    Hours,
    /// No user, or not one the rule names.
    User,
    /// No port, or not one of the rule's ports.
    Port,
    /// The destination matches none of the rule's patterns.
    Destination,
}

/// [`check`], telling also why each rule before the deciding one did not
/// match (every rule, when none did): the same walk, reported as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    /// `(rule index, why)`, in rule order.
    pub skipped: Vec<(usize, Mismatch)>,
}

/// [`check`] with its reasons (what `portico explain` prints).
pub fn explain(rules: &[Rule], q: &Query, wall: Wall) -> Explanation {
    let mut skipped = Vec::new();
    let verdict = walk(rules, q, wall, Unknown::NONE, &mut |i, why| {
        skipped.push((i, why))
    })
    .expect("every field is known: always decided");
    Explanation { verdict, skipped }
}

/// The check at accept time, when only the service and client are known.
///
/// Returns `Deny` only when that is already certain: walking the rules in
/// order, a rule whose service and client conditions match and whose other
/// conditions are all unset (or, for `days`/`hours`, satisfied now)
/// decides — `Deny { rule: Some(i) }` or `Allow { rule: Some(i), rate }`; a
/// rule that might match depending on users, destinations or ports stops
/// the walk undecided, returned as `Allow { rule: None, rate: None }`
/// (allow for now, check again later). Rules whose service, client or time
/// conditions fail are skipped; when every rule is skipped the result is
/// the implicit `Deny { rule: None }`. No rules: `Allow { rule: None, .. }`.
pub fn check_early(rules: &[Rule], service: &str, client: IpAddr, wall: Wall) -> Verdict {
    walk(
        rules,
        &Query::new(service, client),
        wall,
        Unknown::ALL,
        &mut |_, _| {},
    )
    .unwrap_or(Verdict::Allow {
        rule: None,
        rate: None,
    })
}

/// The check before a name lookup: everything in `q` is final except that,
/// when `q.addr` is `None`, the destination address is not known *yet*
/// (the name has not been resolved). Returns the verdict when it is certain
/// whatever address the name turns out to have, and `None` when a rule with
/// a network destination might match once it is known (resolve and call
/// [`check`] then).
///
/// With `q.addr` set this is the same as `Some(check(..))`.
pub fn check_by_name(rules: &[Rule], q: &Query, wall: Wall) -> Option<Verdict> {
    let unknown = Unknown {
        addr: q.addr.is_none(),
        ..Unknown::NONE
    };
    walk(rules, q, wall, unknown, &mut |_, _| {})
}

/// The addresses a name resolved to that the rules allow `q` to go to
/// (indexes into `addrs`, in order): the request goes to the first, and
/// to the next ones should it fail; none allowed, it is denied (by the
/// first address's verdict). `q.addr` is replaced by each address.
pub fn allowed_addresses(rules: &[Rule], q: &Query, addrs: &[IpAddr], wall: Wall) -> Vec<usize> {
    addrs
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            let q = Query {
                addr: Some(**a),
                ..*q
            };
            matches!(check(rules, &q, wall), Verdict::Allow { .. })
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether any rule has a network (`Net`) destination, i.e. whether a
/// request for a host name must be checked again once the name is resolved.
#[cfg(test)]
pub fn needs_address(rules: &[Rule]) -> bool {
    rules
        .iter()
        .flat_map(|r| &r.destinations)
        .any(|d| matches!(d, DestPattern::Net(_)))
}

/// Whether `rule` applies to `q` at `wall`, with every field of `q` final
/// (what [`check`] uses for each rule).
#[cfg(test)]
pub fn rule_matches(rule: &Rule, q: &Query, wall: Wall) -> bool {
    matches_rule(rule, q, wall, Unknown::NONE) == Tri::Yes
}

/// Which fields of a query are not known yet: a `None` there "might match".
/// A `None` in a field not listed here is final and matches no condition.
#[derive(Debug, Clone, Copy)]
struct Unknown {
    user: bool,
    host: bool,
    addr: bool,
    port: bool,
}

impl Unknown {
    const NONE: Unknown = Unknown {
        user: false,
        host: false,
        addr: false,
        port: false,
    };
    const ALL: Unknown = Unknown {
        user: true,
        host: true,
        addr: true,
        port: true,
    };
}

/// Three-valued match; `No` says which condition failed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    No(Mismatch),
    Maybe,
    Yes,
}

impl Tri {
    fn from_bool(b: bool, why: Mismatch) -> Tri {
        if b {
            Tri::Yes
        } else {
            Tri::No(why)
        }
    }

    /// Both: the first `No` (in the order of the conditions) wins.
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No(w), _) | (_, Tri::No(w)) => Tri::No(w),
            (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
            (Tri::Yes, Tri::Yes) => Tri::Yes,
        }
    }
}

/// First match wins; `None` when a rule that might match stops the walk.
/// `skipped` hears of each rule passed over, and why.
fn walk(
    rules: &[Rule],
    q: &Query,
    wall: Wall,
    unknown: Unknown,
    skipped: &mut impl FnMut(usize, Mismatch),
) -> Option<Verdict> {
    if rules.is_empty() {
        return Some(Verdict::Allow {
            rule: None,
            rate: None,
        });
    }
    for (i, r) in rules.iter().enumerate() {
        match matches_rule(r, q, wall, unknown) {
            Tri::No(why) => skipped(i, why),
            Tri::Maybe => return None,
            Tri::Yes => {
                return Some(match r.action {
                    RuleAction::Allow => Verdict::Allow {
                        rule: Some(i),
                        rate: r.rate,
                    },
                    RuleAction::Deny => Verdict::Deny { rule: Some(i) },
                })
            }
        }
    }
    Some(Verdict::Deny { rule: None })
}

fn matches_rule(r: &Rule, q: &Query, wall: Wall, unknown: Unknown) -> Tri {
    // The known-for-sure conditions first: a No there settles it.
    if !r.service_matches(q.service) {
        return Tri::No(Mismatch::Service);
    }
    if !(r.clients.is_empty() || r.clients.iter().any(|n| net_contains(n, q.client))) {
        return Tri::No(Mismatch::Client);
    }
    if let Some(why) = time_mismatch(r, wall) {
        return Tri::No(why);
    }
    users_match(r, q, unknown)
        .and(ports_match(r, q, unknown))
        .and(destinations_match(r, q, unknown))
}

fn users_match(r: &Rule, q: &Query, unknown: Unknown) -> Tri {
    if r.users.is_empty() {
        return Tri::Yes;
    }
    match q.user {
        Some(u) => Tri::from_bool(r.users.iter().any(|x| x == u), Mismatch::User),
        None if unknown.user => Tri::Maybe,
        None => Tri::No(Mismatch::User),
    }
}

fn ports_match(r: &Rule, q: &Query, unknown: Unknown) -> Tri {
    if r.ports.is_empty() {
        return Tri::Yes;
    }
    match q.port {
        Some(p) => Tri::from_bool(r.port_matches(p), Mismatch::Port),
        None if unknown.port => Tri::Maybe,
        None => Tri::No(Mismatch::Port),
    }
}

fn destinations_match(r: &Rule, q: &Query, unknown: Unknown) -> Tri {
    if r.destinations.is_empty() {
        return Tri::Yes;
    }
    let (name, literal) = match q.host.map(normalize_host) {
        Some(HostKind::Name(n)) => (Some(n), None),
        Some(HostKind::Ip(ip)) => (None, Some(ip)),
        None => (None, None),
    };
    let addr = q.addr.or(literal);
    let mut has_names = false;
    let mut has_nets = false;
    for d in &r.destinations {
        match d {
            DestPattern::Exact(_) | DestPattern::Suffix(_) => {
                has_names = true;
                if name.is_some_and(|n| name_matches(d, n)) {
                    return Tri::Yes;
                }
            }
            DestPattern::Net(net) => {
                has_nets = true;
                if addr.is_some_and(|a| net_contains(net, a)) {
                    return Tri::Yes;
                }
            }
        }
    }
    let name_pending = unknown.host && q.host.is_none() && has_names;
    let addr_pending = unknown.addr && addr.is_none() && has_nets;
    if name_pending || addr_pending {
        Tri::Maybe
    } else {
        Tri::No(Mismatch::Destination)
    }
}

enum HostKind<'a> {
    /// A name without its trailing dot, case as given.
    Name(&'a str),
    /// The host was an IP literal.
    Ip(IpAddr),
}

fn normalize_host(host: &str) -> HostKind<'_> {
    let h = host.strip_suffix('.').unwrap_or(host);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return HostKind::Ip(ip);
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<Ipv6Addr>() {
            return HostKind::Ip(IpAddr::V6(ip));
        }
    }
    HostKind::Name(h)
}

/// `name` (no trailing dot, any ASCII case) against a name pattern (stored
/// lower-case). Byte-wise, so a non-ASCII name never panics.
fn name_matches(pattern: &DestPattern, name: &str) -> bool {
    let n = name.as_bytes();
    match pattern {
        DestPattern::Exact(e) => n.eq_ignore_ascii_case(e.as_bytes()),
        DestPattern::Suffix(d) => {
            let d = d.as_bytes();
            n.len() > d.len() + 1
                && n[n.len() - d.len()..].eq_ignore_ascii_case(d)
                && n[n.len() - d.len() - 1] == b'.'
        }
        DestPattern::Net(_) => false,
    }
}

/// Whether `ip` is in `net`, also trying the other form of an IPv4 address
/// (`a.b.c.d` ⇄ `::ffff:a.b.c.d`).
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    if net.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_some_and(|v4| net.contains(&IpAddr::V4(v4))),
        IpAddr::V4(v4) => net.contains(&IpAddr::V6(v4.to_ipv6_mapped())),
    }
}

/// `days` and `hours` at `wall`: `None` when they match, else which failed
/// (see the module docs for windows crossing midnight: `days` is the day
/// the window started).
fn time_mismatch(r: &Rule, wall: Wall) -> Option<Mismatch> {
    let today = wall.weekday();
    let m = wall.minute_of_day();
    let day = |d: u8| (!r.day_matches(d)).then_some(Mismatch::Days);
    match r.hours {
        None => day(today),
        Some((start, end)) if start < end => {
            if start <= m && m < end {
                day(today)
            } else {
                Some(Mismatch::Hours)
            }
        }
        // Crossing midnight (start == end, which `parse` refuses, is read
        // as a 24-hour window starting at `start`).
        Some((start, end)) => {
            if m >= start {
                day(today)
            } else if m < end || start == end {
                day((today + 6) % 7)
            } else {
                Some(Mismatch::Hours)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;
    use crate::config;

    // ---- helpers -------------------------------------------------------

    /// 2024-01-01 00:00:00 UTC, a Monday.
    const MONDAY: i64 = 1_704_067_200;

    /// UTC time on day `d` (0 = Monday of 2024-01-01's week) at hh:mm.
    fn at(d: i64, hh: i64, mm: i64) -> Wall {
        Wall::utc(MONDAY + d * SECS_PER_DAY + hh * 3600 + mm * 60)
    }

    const MON: i64 = 0;
    const TUE: i64 = 1;
    const WED: i64 = 2;
    const THU: i64 = 3;
    const FRI: i64 = 4;
    const SAT: i64 = 5;
    const SUN: i64 = 6;

    fn noon() -> Wall {
        at(WED, 12, 0)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn allow() -> Rule {
        Rule {
            action: RuleAction::Allow,
            services: Vec::new(),
            clients: Vec::new(),
            users: Vec::new(),
            destinations: Vec::new(),
            ports: Vec::new(),
            days: None,
            hours: None,
            rate: None,
            outgoing: None,
            via: None,
        }
    }

    fn deny() -> Rule {
        Rule {
            action: RuleAction::Deny,
            ..allow()
        }
    }

    fn exact(s: &str) -> DestPattern {
        DestPattern::Exact(s.to_string())
    }

    fn suffix(s: &str) -> DestPattern {
        DestPattern::Suffix(s.to_string())
    }

    fn dnet(s: &str) -> DestPattern {
        DestPattern::Net(net(s))
    }

    fn q(service: &str) -> Query<'_> {
        Query::new(service, ip("192.168.1.5"))
    }

    fn full<'a>(host: Option<&'a str>, addr: Option<&str>, port: u16) -> Query<'a> {
        Query {
            service: "web",
            client: ip("192.168.1.5"),
            user: Some("alice"),
            host,
            addr: addr.map(ip),
            port: Some(port),
        }
    }

    const A: Verdict = Verdict::Allow {
        rule: None,
        rate: None,
    };
    const D: Verdict = Verdict::Deny { rule: None };

    fn a(i: usize) -> Verdict {
        Verdict::Allow {
            rule: Some(i),
            rate: None,
        }
    }

    fn d(i: usize) -> Verdict {
        Verdict::Deny { rule: Some(i) }
    }

    /// One rule `allow` + condition: whether it matches (checked as the
    /// single rule, so no match = implicit deny).
    fn single(rule: Rule, q: &Query, wall: Wall) -> bool {
        match check(std::slice::from_ref(&rule), q, wall) {
            Verdict::Allow { rule: Some(0), .. } => true,
            Verdict::Deny { rule: None } => false,
            v => panic!("unexpected {v:?}"),
        }
    }

    const BASE_TOML: &str = r#"
[network]
internal = ["127.0.0.1"]

[[user]]
name = "alice"
password = "plain:a"

[[user]]
name = "bob"
password = "plain:b"

[[service]]
name = "web"
kind = "mapped"
listen = ["127.0.0.1:8080"]
destination = "192.0.2.1:80"

[[service]]
name = "mail"
kind = "mapped"
listen = ["127.0.0.1:2525"]
destination = "192.0.2.1:25"
"#;

    fn parse_rules(rules: &str) -> Vec<Rule> {
        let text = format!("{BASE_TOML}\n{rules}");
        config::parse(&text, "test.toml")
            .unwrap_or_else(|e| panic!("{e}"))
            .rules
    }

    // ---- Wall ----------------------------------------------------------

    #[test]
    fn wall_weekday_and_minute() {
        let cases: &[(i64, i32, u8, u16)] = &[
            (MONDAY, 0, 0, 0),
            (MONDAY - 1, 0, 6, 1439),       // Sunday 23:59:59
            (0, 0, 3, 0),                   // 1970-01-01, Thursday
            (-1, 0, 2, 1439),               // 1969-12-31 23:59:59, Wednesday
            (-SECS_PER_DAY * 365, 0, 2, 0), // 1969-01-01, Wednesday
            (MONDAY + 59, 0, 0, 0),         // seconds are dropped
            (MONDAY + 60, 0, 0, 1),         // 00:01
            (MONDAY + 4 * SECS_PER_DAY + 13 * 3600 + 30 * 60, 0, 4, 810), // Fri 13:30
            (MONDAY, 3600, 0, 60),          // UTC+1: Monday 01:00
            (MONDAY, -3600, 6, 1380),       // UTC-1: Sunday 23:00
            (MONDAY - 1800, 3600, 0, 30),   // Sun 23:30 UTC is Mon 00:30 at UTC+1
            (MONDAY + 23 * 3600, 5 * 3600 + 1800, 1, 270), // Mon 23:00 UTC = Tue 04:30 at +05:30
            (MONDAY + 3600, -14 * 3600, 6, 660), // Mon 01:00 UTC = Sun 11:00 at UTC-14
        ];
        for &(secs, off, wd, min) in cases {
            let w = Wall {
                unix_secs: secs,
                utc_offset_secs: off,
            };
            assert_eq!((w.weekday(), w.minute_of_day()), (wd, min), "{w:?}");
        }
        // No panic at the extremes.
        for secs in [i64::MIN, i64::MAX] {
            for off in [i32::MIN, 0, i32::MAX] {
                let w = Wall {
                    unix_secs: secs,
                    utc_offset_secs: off,
                };
                assert!(w.weekday() < 7 && w.minute_of_day() < 1440);
            }
        }
    }

    // ---- walk order ----------------------------------------------------

    #[test]
    fn no_rules_allows_everything() {
        assert_eq!(check(&[], &q("web"), noon()), A);
        assert_eq!(check(&[], &full(Some("x.org"), None, 1), noon()), A);
        assert_eq!(check_early(&[], "web", ip("1.2.3.4"), noon()), A);
        assert_eq!(check_by_name(&[], &q("web"), noon()), Some(A));
        assert!(!needs_address(&[]));
    }

    #[test]
    fn first_match_wins_and_implicit_deny() {
        let web_only = |r: Rule| Rule {
            services: vec!["web".into()],
            ..r
        };
        let rated = Rule {
            rate: Some(1000),
            ..allow()
        };
        type Case = (&'static str, Vec<Rule>, &'static str, Verdict);
        let cases: Vec<Case> = vec![
            ("allow all", vec![allow()], "web", a(0)),
            ("deny all", vec![deny()], "web", d(0)),
            ("deny then allow", vec![deny(), allow()], "web", d(0)),
            ("allow then deny", vec![allow(), deny()], "web", a(0)),
            (
                "skip non-matching",
                vec![web_only(deny()), allow()],
                "mail",
                a(1),
            ),
            (
                "first matching of several",
                vec![web_only(deny()), web_only(allow()), deny()],
                "web",
                d(0),
            ),
            ("implicit deny", vec![web_only(allow())], "mail", D),
            (
                "implicit deny after deny",
                vec![web_only(deny())],
                "mail",
                D,
            ),
            (
                "rate carried",
                vec![web_only(deny()), rated.clone()],
                "mail",
                Verdict::Allow {
                    rule: Some(1),
                    rate: Some(1000),
                },
            ),
        ];
        for (name, rules, service, want) in cases {
            assert_eq!(check(&rules, &q(service), noon()), want, "{name}");
        }
    }

    // ---- each condition alone ------------------------------------------

    #[test]
    fn services_condition() {
        let r = Rule {
            services: vec!["web".into(), "mail".into()],
            ..allow()
        };
        for (service, want) in [
            ("web", true),
            ("mail", true),
            ("ftp", false),
            ("Web", false),
        ] {
            assert_eq!(single(r.clone(), &q(service), noon()), want, "{service}");
        }
    }

    #[test]
    fn clients_condition() {
        let r = Rule {
            clients: vec![net("192.168.1.0/24"), net("10.0.0.1/32"), net("fd00::/8")],
            ..allow()
        };
        let cases = [
            ("192.168.1.0", true),
            ("192.168.1.255", true),
            ("192.168.2.1", false),
            ("192.168.0.255", false),
            ("10.0.0.1", true),
            ("10.0.0.2", false),
            ("fd12:3456::1", true),
            ("fe80::1", false),
            ("::ffff:192.168.1.7", true), // v4-mapped matches the v4 network
            ("::ffff:192.168.2.7", false),
            ("::ffff:10.0.0.1", true),
            ("::192.168.1.7", false),     // v4-compatible is not mapped
            ("64:ff9b::c0a8:107", false), // NAT64 is not mapped either
        ];
        for (client, want) in cases {
            let query = Query::new("web", ip(client));
            assert_eq!(single(r.clone(), &query, noon()), want, "{client}");
        }
        // A v4 client against a network written in mapped form.
        let mapped = Rule {
            clients: vec![net("::ffff:192.168.1.0/120")],
            ..allow()
        };
        for (client, want) in [
            ("192.168.1.9", true),
            ("192.168.2.9", false),
            ("::ffff:192.168.1.9", true),
        ] {
            let query = Query::new("web", ip(client));
            assert_eq!(single(mapped.clone(), &query, noon()), want, "{client}");
        }
        // /0 networks.
        let any4 = Rule {
            clients: vec![net("0.0.0.0/0")],
            ..allow()
        };
        assert!(single(
            any4.clone(),
            &Query::new("web", ip("1.2.3.4")),
            noon()
        ));
        assert!(single(
            any4.clone(),
            &Query::new("web", ip("::ffff:1.2.3.4")),
            noon()
        ));
        assert!(!single(any4, &Query::new("web", ip("2001:db8::1")), noon()));
        let any6 = Rule {
            clients: vec![net("::/0")],
            ..allow()
        };
        assert!(single(
            any6.clone(),
            &Query::new("web", ip("2001:db8::1")),
            noon()
        ));
        // ::/0 contains ::ffff:0:0/96, hence every v4 address in mapped form.
        assert!(single(any6, &Query::new("web", ip("1.2.3.4")), noon()));
    }

    #[test]
    fn users_condition() {
        let r = Rule {
            users: vec!["alice".into(), "bob".into()],
            ..allow()
        };
        for (user, want) in [
            (Some("alice"), true),
            (Some("bob"), true),
            (Some("carol"), false),
            (Some("Alice"), false),
            (None, false), // unauthenticated never matches a users list
        ] {
            let query = Query { user, ..q("web") };
            assert_eq!(single(r.clone(), &query, noon()), want, "{user:?}");
        }
        // No users list: anyone, authenticated or not.
        for user in [Some("alice"), None] {
            assert!(single(allow(), &Query { user, ..q("web") }, noon()));
        }
    }

    #[test]
    fn ports_condition() {
        let r = Rule {
            ports: vec![25..=25, 6660..=6669, 65535..=65535],
            ..allow()
        };
        for (port, want) in [
            (Some(25), true),
            (Some(24), false),
            (Some(26), false),
            (Some(6659), false),
            (Some(6660), true),
            (Some(6665), true),
            (Some(6669), true),
            (Some(6670), false),
            (Some(65535), true),
            (Some(1), false),
            (None, false), // unknown port does not match
        ] {
            let query = Query { port, ..q("web") };
            assert_eq!(single(r.clone(), &query, noon()), want, "{port:?}");
        }
    }

    #[test]
    fn destination_name_patterns() {
        let r = Rule {
            destinations: vec![exact("example.com"), suffix("example.org")],
            ..allow()
        };
        let cases = [
            // Exact
            ("example.com", true),
            ("EXAMPLE.com", true),
            ("example.com.", true), // one trailing dot ignored
            ("Example.COM.", true),
            ("example.com..", false), // only one
            ("a.example.com", false), // exact is exact
            ("badexample.com", false),
            ("example.co", false),
            ("xample.com", false),
            // Suffix (*.example.org)
            ("example.org", false), // not the domain itself
            ("example.org.", false),
            ("a.example.org", true),
            ("A.Example.Org", true),
            ("a.b.example.org", true),
            ("a.example.org.", true),
            ("badexample.org", false),
            ("a.badexample.org", false),
            (".example.org", false), // empty label
            ("example.org.evil.net", false),
            ("a-example.org", false),
            ("", false),
            (".", false),
            ("é.example.org", true), // non-ASCII: no panic, matches byte-wise
            ("ǝxample.org", false),
        ];
        for (host, want) in cases {
            let query = Query {
                host: Some(host),
                ..q("web")
            };
            assert_eq!(single(r.clone(), &query, noon()), want, "{host:?}");
            // The resolved address changes nothing for name patterns.
            let resolved = Query {
                addr: Some(ip("93.184.216.34")),
                ..query
            };
            assert_eq!(
                single(r.clone(), &resolved, noon()),
                want,
                "{host:?} resolved"
            );
        }
        // No host known at all: no name pattern matches.
        assert!(!single(r.clone(), &q("web"), noon()));
    }

    #[test]
    fn destination_name_pattern_never_matches_an_ip() {
        let r = Rule {
            destinations: vec![exact("10.0.0.1"), suffix("0.0.1")],
            ..allow()
        };
        // Bare IP destination: host None, addr set.
        let by_addr = Query {
            addr: Some(ip("10.0.0.1")),
            ..q("web")
        };
        assert!(!single(r.clone(), &by_addr, noon()));
        // Even if a caller passes the literal as host.
        let by_literal = Query {
            host: Some("10.0.0.1"),
            ..by_addr
        };
        assert!(!single(r, &by_literal, noon()));
    }

    #[test]
    fn destination_net_patterns() {
        let r = Rule {
            destinations: vec![
                dnet("10.0.0.0/8"),
                dnet("2001:db8::/32"),
                dnet("192.0.2.7/32"),
            ],
            ..allow()
        };
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (None, Some("10.1.2.3"), true),
            (None, Some("11.0.0.0"), false),
            (None, Some("192.0.2.7"), true),
            (None, Some("192.0.2.8"), false),
            (None, Some("2001:db8:1::1"), true),
            (None, Some("2001:db9::1"), false),
            (None, Some("::ffff:10.9.9.9"), true), // mapped dodges nothing
            // A name that resolved into a network matches.
            (Some("intranet.corp"), Some("10.0.0.5"), true),
            (Some("intranet.corp"), Some("8.8.8.8"), false),
            // Not resolved yet: a Net-only rule does not match (check again).
            (Some("intranet.corp"), None, false),
            // A host that is an IP literal counts as the address.
            (Some("10.2.3.4"), None, true),
            (Some("[2001:db8::5]"), None, true),
            (Some("2001:db8::5"), None, true),
            (Some("8.8.8.8"), None, false),
            (None, None, false),
        ];
        for &(host, addr, want) in cases {
            let query = Query {
                host,
                addr: addr.map(ip),
                ..q("web")
            };
            assert_eq!(single(r.clone(), &query, noon()), want, "{host:?} {addr:?}");
        }
    }

    #[test]
    fn destination_mixed_list_any_entry() {
        let r = Rule {
            destinations: vec![suffix("example.com"), dnet("10.0.0.0/8")],
            ..allow()
        };
        let cases: &[(Option<&str>, Option<&str>, bool)] = &[
            (Some("www.example.com"), None, true),
            (Some("www.example.com"), Some("1.1.1.1"), true),
            (Some("other.net"), Some("10.0.0.1"), true),
            (Some("other.net"), Some("1.1.1.1"), false),
            (Some("other.net"), None, false),
            (None, Some("10.0.0.1"), true),
            (None, Some("1.1.1.1"), false),
        ];
        for &(host, addr, want) in cases {
            let query = Query {
                host,
                addr: addr.map(ip),
                ..q("web")
            };
            assert_eq!(single(r.clone(), &query, noon()), want, "{host:?} {addr:?}");
        }
    }

    #[test]
    fn days_condition() {
        let mask = |days: &[i64]| days.iter().fold(0u8, |m, &d| m | (1 << d));
        let weekdays = Rule {
            days: Some(mask(&[MON, TUE, WED, THU, FRI])),
            ..allow()
        };
        let fri_mon = Rule {
            days: Some(mask(&[FRI, SAT, SUN, MON])),
            ..allow()
        };
        let sunday = Rule {
            days: Some(mask(&[SUN])),
            ..allow()
        };
        for day in MON..=SUN {
            let w = at(day, 12, 0);
            assert_eq!(single(weekdays.clone(), &q("web"), w), day <= FRI, "{day}");
            assert_eq!(
                single(fri_mon.clone(), &q("web"), w),
                matches!(day, FRI | SAT | SUN | MON),
                "{day}"
            );
            assert_eq!(single(sunday.clone(), &q("web"), w), day == SUN, "{day}");
        }
        // Day boundaries.
        assert!(single(sunday.clone(), &q("web"), at(SUN, 0, 0)));
        assert!(single(sunday.clone(), &q("web"), at(SUN, 23, 59)));
        assert!(!single(sunday.clone(), &q("web"), at(SUN + 1, 0, 0)));
        // Also a week later and a week earlier (negative day count past the epoch too).
        assert!(single(sunday.clone(), &q("web"), at(SUN + 7, 12, 0)));
        assert!(single(sunday.clone(), &q("web"), at(SUN - 7, 12, 0)));
        // 1969-12-28 was a Sunday.
        assert!(single(
            sunday,
            &q("web"),
            Wall::utc(-4 * SECS_PER_DAY + 3600)
        ));
    }

    #[test]
    fn days_follow_the_utc_offset() {
        let saturday = Rule {
            days: Some(1 << SAT),
            ..allow()
        };
        // Friday 23:30 UTC.
        let t = MONDAY + FRI * SECS_PER_DAY + 23 * 3600 + 1800;
        for (offset, want) in [
            (0, false),
            (1800, true), // UTC+00:30: Saturday 00:00
            (1799, false),
            (3600, true),
            (-3600, false),
            (14 * 3600, true),
        ] {
            let w = Wall {
                unix_secs: t,
                utc_offset_secs: offset,
            };
            assert_eq!(single(saturday.clone(), &q("web"), w), want, "{offset}");
        }
        // Saturday 00:30 UTC at UTC-1 is still Friday.
        let w = Wall {
            unix_secs: MONDAY + SAT * SECS_PER_DAY + 1800,
            utc_offset_secs: -3600,
        };
        assert!(!single(saturday, &q("web"), w));
    }

    #[test]
    fn hours_condition() {
        let office = Rule {
            hours: Some((8 * 60, 18 * 60)),
            ..allow()
        };
        let night = Rule {
            hours: Some((22 * 60, 6 * 60)),
            ..allow()
        };
        let to_midnight = Rule {
            hours: Some((20 * 60, 24 * 60)),
            ..allow()
        };
        let from_midnight = Rule {
            hours: Some((0, 60)),
            ..allow()
        };
        let cases: &[(&Rule, i64, i64, bool)] = &[
            (&office, 7, 59, false),
            (&office, 8, 0, true), // start included
            (&office, 12, 0, true),
            (&office, 17, 59, true),
            (&office, 18, 0, false), // end excluded
            (&office, 0, 0, false),
            (&night, 21, 59, false),
            (&night, 22, 0, true),
            (&night, 23, 59, true),
            (&night, 0, 0, true),
            (&night, 5, 59, true),
            (&night, 6, 0, false), // end excluded
            (&night, 12, 0, false),
            (&to_midnight, 19, 59, false),
            (&to_midnight, 20, 0, true),
            (&to_midnight, 23, 59, true),
            (&to_midnight, 0, 0, false),
            (&from_midnight, 0, 0, true),
            (&from_midnight, 0, 59, true),
            (&from_midnight, 1, 0, false),
            (&from_midnight, 23, 59, false),
        ];
        for &(r, hh, mm, want) in cases {
            assert_eq!(
                single(r.clone(), &q("web"), at(WED, hh, mm)),
                want,
                "{:?} at {hh}:{mm}",
                r.hours
            );
        }
        // The offset moves the hour: 07:30 UTC is 08:30 at UTC+1.
        let w = Wall {
            unix_secs: at(WED, 7, 30).unix_secs,
            utc_offset_secs: 3600,
        };
        assert!(single(office.clone(), &q("web"), w));
        assert!(!single(office, &q("web"), at(WED, 7, 30)));
    }

    #[test]
    fn days_with_hours_crossing_midnight_use_the_start_day() {
        // Friday 22:00 until Saturday 06:00.
        let fri_night = Rule {
            days: Some(1 << FRI),
            hours: Some((22 * 60, 6 * 60)),
            ..allow()
        };
        let cases = [
            (THU, 23, 0, false),
            (FRI, 1, 0, false), // Thursday night's window
            (FRI, 21, 59, false),
            (FRI, 22, 0, true),
            (FRI, 23, 59, true),
            (SAT, 0, 0, true), // after midnight: still Friday's window
            (SAT, 5, 59, true),
            (SAT, 6, 0, false),
            (SAT, 22, 0, false), // Saturday night: not Friday
            (SUN, 1, 0, false),
        ];
        for (day, hh, mm, want) in cases {
            assert_eq!(
                single(fri_night.clone(), &q("web"), at(day, hh, mm)),
                want,
                "day {day} {hh}:{mm}"
            );
        }
        // Sunday night wraps into Monday.
        let sun_night = Rule {
            days: Some(1 << SUN),
            hours: Some((23 * 60, 60)),
            ..allow()
        };
        assert!(single(sun_night.clone(), &q("web"), at(SUN, 23, 30)));
        assert!(single(sun_night.clone(), &q("web"), at(MON + 7, 0, 30)));
        assert!(!single(sun_night.clone(), &q("web"), at(MON, 23, 30)));
        assert!(!single(sun_night, &q("web"), at(SAT, 23, 30)));
        // A window that does not cross midnight uses the current day.
        let sat_morning = Rule {
            days: Some(1 << SAT),
            hours: Some((0, 6 * 60)),
            ..allow()
        };
        assert!(single(sat_morning.clone(), &q("web"), at(SAT, 1, 0)));
        assert!(!single(sat_morning, &q("web"), at(FRI, 23, 0)));
        // The offset can move a time across midnight and hence the start day:
        // Friday 21:30 UTC is Saturday 00:30 at UTC+3 -> Friday's window.
        let w = Wall {
            unix_secs: at(FRI, 21, 30).unix_secs,
            utc_offset_secs: 3 * 3600,
        };
        assert!(single(fri_night.clone(), &q("web"), w));
        // Saturday 05:30 UTC is Saturday 06:30 at UTC+1 -> outside.
        let w = Wall {
            unix_secs: at(SAT, 5, 30).unix_secs,
            utc_offset_secs: 3600,
        };
        assert!(!single(fri_night, &q("web"), w));
    }

    // ---- combined ------------------------------------------------------

    #[test]
    fn all_conditions_combined() {
        // The rule of the configuration reference's example, as allow.
        let r = Rule {
            action: RuleAction::Allow,
            services: vec!["web".into()],
            clients: vec![net("192.168.1.0/24")],
            users: vec!["alice".into()],
            destinations: vec![suffix("example.com"), dnet("10.0.0.0/8")],
            ports: vec![25..=25, 6660..=6669],
            days: Some(0b001_1111), // mon-fri
            hours: Some((8 * 60, 18 * 60)),
            rate: Some(1 << 20),
            outgoing: None,
            via: None,
        };
        let good = full(Some("www.example.com"), None, 25);
        let good_wall = at(TUE, 9, 0);
        assert_eq!(
            check(std::slice::from_ref(&r), &good, good_wall),
            Verdict::Allow {
                rule: Some(0),
                rate: Some(1 << 20)
            }
        );
        // Break one condition at a time.
        let other_client = Query {
            client: ip("192.168.2.5"),
            ..good
        };
        let cases: Vec<(&str, Query, Wall)> = vec![
            (
                "service",
                Query {
                    service: "mail",
                    ..good
                },
                good_wall,
            ),
            ("client", other_client, good_wall),
            (
                "user",
                Query {
                    user: Some("bob"),
                    ..good
                },
                good_wall,
            ),
            ("no user", Query { user: None, ..good }, good_wall),
            (
                "destination",
                Query {
                    host: Some("example.com"),
                    ..good
                },
                good_wall,
            ),
            (
                "port",
                Query {
                    port: Some(80),
                    ..good
                },
                good_wall,
            ),
            ("no port", Query { port: None, ..good }, good_wall),
            ("day", good, at(SAT, 9, 0)),
            ("hour", good, at(TUE, 18, 0)),
        ];
        for (what, query, wall) in cases {
            assert_eq!(check(std::slice::from_ref(&r), &query, wall), D, "{what}");
        }
        // Address instead of name.
        let by_addr = full(None, Some("10.20.30.40"), 6666);
        assert!(check(std::slice::from_ref(&r), &by_addr, good_wall).is_allow());
    }

    #[test]
    fn spec_like_policy_from_toml() {
        let rules = parse_rules(
            r#"
[[rule]]
action = "deny"
destinations = ["*.ads.example", "10.0.0.0/8"]

[[rule]]
action = "allow"
services = ["mail"]
ports = [25, "587"]

[[rule]]
action = "allow"
services = ["web"]
clients = ["192.168.1.0/24", "fd00::/8"]
users = ["alice"]
days = ["mon-fri"]
hours = "08:00-18:00"
rate = "1MiB/s"

[[rule]]
action = "allow"
services = ["web"]
users = ["bob"]
days = ["fri-mon"]
hours = "22:00-06:00"
"#,
        );
        assert_eq!(
            rules[0].destinations,
            vec![suffix("ads.example"), dnet("10.0.0.0/8")]
        );
        assert!(needs_address(&rules));
        let alice = |host, addr| Query {
            service: "web",
            client: ip("192.168.1.9"),
            user: Some("alice"),
            host,
            addr,
            port: Some(443),
        };
        let bob = |wall: Wall| {
            check(
                &rules,
                &Query {
                    user: Some("bob"),
                    ..alice(Some("x.org"), Some(ip("1.1.1.1")))
                },
                wall,
            )
        };
        let tue9 = at(TUE, 9, 0);
        let cases: Vec<(&str, Verdict)> = vec![
            (
                "alice ok",
                check(&rules, &alice(Some("x.org"), Some(ip("1.1.1.1"))), tue9),
            ),
            (
                "ads by name",
                check(&rules, &alice(Some("a.ADS.example."), None), tue9),
            ),
            (
                "resolves into 10/8",
                check(&rules, &alice(Some("x.org"), Some(ip("10.1.1.1"))), tue9),
            ),
            (
                "alice at night",
                check(&rules, &alice(Some("x.org"), None), at(TUE, 23, 0)),
            ),
            ("bob fri night", bob(at(FRI, 23, 0))),
            ("bob sat early", bob(at(SAT, 3, 0))),
            ("bob mon night", bob(at(MON, 23, 0))),
            ("bob tue early", bob(at(TUE, 3, 0))), // Monday's window
            ("bob tue night", bob(at(TUE, 23, 0))),
            ("bob wed early", bob(at(WED, 3, 0))),
            (
                "mail 587",
                check(
                    &rules,
                    &Query {
                        port: Some(587),
                        ..full(Some("smtp.x.org"), None, 0)
                    }
                    .with_service("mail"),
                    tue9,
                ),
            ),
        ];
        let want = [
            Verdict::Allow {
                rule: Some(2),
                rate: Some(1 << 20),
            },
            d(0),
            d(0),
            D,
            a(3),
            a(3),
            a(3),
            a(3),
            D,
            D,
            a(1),
        ];
        for ((what, got), want) in cases.into_iter().zip(want) {
            assert_eq!(got, want, "{what}");
        }
    }

    impl<'a> Query<'a> {
        fn with_service(self, service: &'a str) -> Query<'a> {
            Query { service, ..self }
        }
    }

    // ---- explain -------------------------------------------------------

    #[test]
    fn explain_walks_as_check_does_and_says_the_first_failure() {
        let rules = vec![
            Rule {
                services: vec!["mail".into()],
                users: vec!["bob".into()],
                ..deny()
            },
            Rule {
                clients: vec![net("10.0.0.0/8")],
                ..deny()
            },
            Rule {
                days: Some(1 << SUN),
                ..deny()
            },
            Rule {
                hours: Some((22 * 60, 6 * 60)),
                ..deny()
            },
            // User and port both fail: the user is said (checked first).
            Rule {
                users: vec!["bob".into()],
                ports: vec![22..=22],
                ..deny()
            },
            Rule {
                ports: vec![22..=22],
                destinations: vec![exact("nowhere.example")],
                ..deny()
            },
            Rule {
                destinations: vec![suffix("x.org"), dnet("10.0.0.0/8")],
                ..deny()
            },
            Rule {
                rate: Some(7),
                ..allow()
            },
        ];
        let query = full(Some("y.org"), Some("1.1.1.1"), 443);
        let e = explain(&rules, &query, noon());
        assert_eq!(e.verdict, check(&rules, &query, noon()));
        assert_eq!(
            e.verdict,
            Verdict::Allow {
                rule: Some(7),
                rate: Some(7)
            }
        );
        use Mismatch::*;
        assert_eq!(
            e.skipped,
            [
                (0, Service),
                (1, Client),
                (2, Days),
                (3, Hours),
                (4, User),
                (5, Port),
                (6, Destination)
            ]
        );
        // A window crossing midnight: after midnight, the day it started.
        let fri_night = vec![Rule {
            days: Some(1 << FRI),
            hours: Some((22 * 60, 6 * 60)),
            ..allow()
        }];
        let q = q("web");
        assert_eq!(explain(&fri_night, &q, at(SAT, 3, 0)).skipped, []);
        assert_eq!(explain(&fri_night, &q, at(FRI, 3, 0)).skipped, [(0, Days)]);
        assert_eq!(
            explain(&fri_night, &q, at(FRI, 12, 0)).skipped,
            [(0, Hours)]
        );
        // No rule matches: every rule is said, and the implicit deny.
        let e = explain(&rules[..7], &query, noon());
        assert_eq!((e.verdict, e.skipped.len()), (D, 7));
        // No rules: allowed, nothing to say.
        assert_eq!(
            explain(&[], &query, noon()),
            Explanation {
                verdict: A,
                skipped: Vec::new()
            }
        );
    }

    // ---- check_early ---------------------------------------------------

    #[test]
    fn check_early_outcomes() {
        let web = || vec!["web".to_string()];
        let lan = || vec![net("192.168.1.0/24")];
        let office = Some((8 * 60, 18 * 60));
        let undecided = A;
        type Case = (&'static str, Vec<Rule>, Verdict);
        let cases: Vec<Case> = vec![
            ("no rules", vec![], A),
            // Decided by a rule with only service/client conditions.
            (
                "deny by client",
                vec![
                    Rule {
                        clients: lan(),
                        ..deny()
                    },
                    allow(),
                ],
                d(0),
            ),
            (
                "deny by service",
                vec![
                    Rule {
                        services: web(),
                        ..deny()
                    },
                    allow(),
                ],
                d(0),
            ),
            (
                "allow by client",
                vec![
                    Rule {
                        clients: lan(),
                        ..allow()
                    },
                    deny(),
                ],
                a(0),
            ),
            (
                "allow carries rate",
                vec![Rule {
                    rate: Some(5),
                    ..allow()
                }],
                Verdict::Allow {
                    rule: Some(0),
                    rate: Some(5),
                },
            ),
            // Days/hours satisfied now count as decided...
            (
                "deny in office hours",
                vec![
                    Rule {
                        hours: office,
                        ..deny()
                    },
                    allow(),
                ],
                d(0),
            ),
            (
                "deny on wednesdays",
                vec![Rule {
                    days: Some(1 << WED),
                    ..deny()
                }],
                d(0),
            ),
            // ...and not satisfied now skip the rule.
            (
                "deny on sundays skipped",
                vec![
                    Rule {
                        days: Some(1 << SUN),
                        ..deny()
                    },
                    allow(),
                ],
                a(1),
            ),
            (
                "night rule skipped, implicit deny",
                vec![Rule {
                    hours: Some((22 * 60, 6 * 60)),
                    ..allow()
                }],
                D,
            ),
            // Rules that might match on later fields stop the walk.
            (
                "users undecided",
                vec![
                    Rule {
                        users: vec!["alice".into()],
                        ..allow()
                    },
                    deny(),
                ],
                undecided,
            ),
            (
                "users undecided (deny)",
                vec![
                    Rule {
                        users: vec!["alice".into()],
                        ..deny()
                    },
                    deny(),
                ],
                undecided,
            ),
            (
                "destinations undecided",
                vec![
                    Rule {
                        destinations: vec![exact("x.org")],
                        ..deny()
                    },
                    deny(),
                ],
                undecided,
            ),
            (
                "net destinations undecided",
                vec![Rule {
                    destinations: vec![dnet("10.0.0.0/8")],
                    ..allow()
                }],
                undecided,
            ),
            (
                "ports undecided",
                vec![Rule {
                    ports: vec![443..=443],
                    ..allow()
                }],
                undecided,
            ),
            // A failed service/client condition skips even an undecidable rule.
            (
                "skip other service's user rule",
                vec![
                    Rule {
                        services: vec!["mail".into()],
                        users: vec!["alice".into()],
                        ..allow()
                    },
                    deny(),
                ],
                d(1),
            ),
            (
                "skip other client's port rule, implicit deny",
                vec![Rule {
                    clients: vec![net("10.0.0.0/8")],
                    ports: vec![80..=80],
                    ..allow()
                }],
                D,
            ),
            (
                "decided before an undecidable rule",
                vec![
                    Rule {
                        clients: lan(),
                        ..deny()
                    },
                    Rule {
                        users: vec!["alice".into()],
                        ..allow()
                    },
                ],
                d(0),
            ),
            (
                "every rule's service/client fail",
                vec![
                    Rule {
                        services: vec!["mail".into()],
                        ..allow()
                    },
                    Rule {
                        clients: vec![net("10.0.0.0/8")],
                        users: vec!["bob".into()],
                        ..allow()
                    },
                ],
                D,
            ),
        ];
        for (name, rules, want) in cases {
            let got = check_early(&rules, "web", ip("192.168.1.5"), noon());
            assert_eq!(got, want, "{name}");
            // A certain early verdict agrees with every full check.
            if got != undecided || rules.is_empty() {
                for query in [
                    full(Some("x.org"), Some("10.0.0.1"), 443),
                    full(None, Some("1.1.1.1"), 80),
                    Query {
                        user: None,
                        ..full(Some("y.org"), None, 22)
                    },
                ] {
                    assert_eq!(check(&rules, &query, noon()), got, "{name}: {query:?}");
                }
            }
        }
    }

    #[test]
    fn check_early_v4_mapped_client() {
        let rules = vec![
            Rule {
                clients: vec![net("192.168.1.0/24")],
                ..allow()
            },
            deny(),
        ];
        assert_eq!(
            check_early(&rules, "web", ip("::ffff:192.168.1.3"), noon()),
            a(0)
        );
        assert_eq!(
            check_early(&rules, "web", ip("::ffff:192.168.9.3"), noon()),
            d(1)
        );
    }

    // ---- check_by_name / needs_address ----------------------------------

    #[test]
    fn check_by_name_outcomes() {
        let rules = vec![
            Rule {
                destinations: vec![suffix("bad.example")],
                ..deny()
            },
            Rule {
                destinations: vec![dnet("10.0.0.0/8")],
                ..allow()
            },
            Rule {
                destinations: vec![exact("good.example")],
                ..allow()
            },
            deny(),
        ];
        let by_name = |host| Query {
            host: Some(host),
            ..full(None, None, 443)
        };
        // Denied by name before any lookup.
        assert_eq!(
            check_by_name(&rules, &by_name("x.bad.example"), noon()),
            Some(d(0))
        );
        // Might resolve into 10/8: undecided, while a plain check would
        // (prematurely) deny.
        assert_eq!(
            check_by_name(&rules, &by_name("good.example"), noon()),
            None
        );
        assert_eq!(
            check_by_name(&rules, &by_name("other.example"), noon()),
            None
        );
        assert_eq!(check(&rules, &by_name("other.example"), noon()), d(3));
        // After resolution: the full check.
        let resolved = |host, addr| Query {
            addr: Some(ip(addr)),
            ..by_name(host)
        };
        for (host, addr, want) in [
            ("good.example", "10.0.0.1", a(1)),
            ("good.example", "1.1.1.1", a(2)),
            ("other.example", "10.0.0.1", a(1)),
            ("other.example", "1.1.1.1", d(3)),
        ] {
            let query = resolved(host, addr);
            assert_eq!(check(&rules, &query, noon()), want, "{host} {addr}");
            assert_eq!(
                check_by_name(&rules, &query, noon()),
                Some(want),
                "{host} {addr}"
            );
        }
        // An IP literal destination is fully known.
        let literal = full(None, Some("10.9.9.9"), 443);
        assert_eq!(check_by_name(&rules, &literal, noon()), Some(a(1)));
        assert_eq!(
            check_by_name(&rules, &by_name("10.9.9.9"), noon()),
            Some(a(1))
        );
        // Without Net patterns a name check is final.
        let names_only = vec![
            Rule {
                destinations: vec![exact("good.example")],
                ..allow()
            },
            deny(),
        ];
        assert!(!needs_address(&names_only));
        assert_eq!(
            check_by_name(&names_only, &by_name("good.example"), noon()),
            Some(a(0))
        );
        assert_eq!(
            check_by_name(&names_only, &by_name("x.example"), noon()),
            Some(d(1))
        );
        // User and port are final in check_by_name.
        let user_rule = vec![Rule {
            users: vec!["bob".into()],
            ..allow()
        }];
        assert_eq!(check_by_name(&user_rule, &by_name("x"), noon()), Some(D));
    }

    #[test]
    fn needs_address_cases() {
        let names = Rule {
            destinations: vec![exact("a"), suffix("b")],
            ..allow()
        };
        let nets = Rule {
            destinations: vec![suffix("b"), dnet("10.0.0.0/8")],
            ..deny()
        };
        assert!(!needs_address(&[allow(), deny()]));
        assert!(!needs_address(std::slice::from_ref(&names)));
        assert!(needs_address(&[names, nets]));
    }

    // ---- CIDR property -------------------------------------------------

    /// Naive reference: the first `prefix` bits of `a` and `b` agree,
    /// compared bit by bit from the most significant one.
    fn naive_prefix_match(a: u128, b: u128, bits: u32, prefix: u32) -> bool {
        (0..prefix).all(|i| {
            let bit = bits - 1 - i;
            (a >> bit) & 1 == (b >> bit) & 1
        })
    }

    /// The address to test: random, or the network's address with one bit
    /// flipped (so that both outcomes come up often).
    fn pick(net: u128, other: u128, flip: Option<u8>, bits: u32) -> u128 {
        match flip {
            Some(k) => net ^ (1u128 << (u32::from(k) % bits)),
            None => other,
        }
    }

    fn prop_v4(net_addr: u32, prefix: u8, other: u32, flip: Option<u8>) -> bool {
        let prefix = prefix % 33;
        let addr = pick(u128::from(net_addr), u128::from(other), flip, 32) as u32;
        let n = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(net_addr), prefix).unwrap());
        let want = naive_prefix_match(
            u128::from(net_addr),
            u128::from(addr),
            32,
            u32::from(prefix),
        );
        let v4 = IpAddr::V4(Ipv4Addr::from(addr));
        let mapped = IpAddr::V6(Ipv4Addr::from(addr).to_ipv6_mapped());
        let rule = Rule {
            clients: vec![n],
            ..allow()
        };
        net_contains(&n, v4) == want
            && net_contains(&n, mapped) == want
            && rule_matches(&rule, &Query::new("s", v4), Wall::default()) == want
            && rule_matches(&rule, &Query::new("s", mapped), Wall::default()) == want
    }

    fn prop_v6(net_addr: u128, prefix: u8, other: u128, flip: Option<u8>) -> bool {
        let prefix = prefix % 129;
        let addr = pick(net_addr, other, flip, 128);
        let n = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(net_addr), prefix).unwrap());
        let a = Ipv6Addr::from(addr);
        // The mapped alternative applies too when `a` is v4-mapped.
        let want = naive_prefix_match(net_addr, addr, 128, u32::from(prefix))
            || a.to_ipv4_mapped().is_some_and(|v4| {
                let m = u128::from(v4.to_ipv6_mapped());
                naive_prefix_match(net_addr, m, 128, u32::from(prefix))
            });
        net_contains(&n, IpAddr::V6(a)) == want
    }

    /// A v6 network in ::ffff:0:0/96 and a v4 client: matches exactly when
    /// the mapped form of the client is in it.
    fn prop_mapped_net(v4net: u32, prefix: u8, other: u32, flip: Option<u8>) -> bool {
        let prefix = 96 + prefix % 33;
        let addr = pick(u128::from(v4net), u128::from(other), flip, 32) as u32;
        let net6 = u128::from(Ipv4Addr::from(v4net).to_ipv6_mapped());
        let addr6 = u128::from(Ipv4Addr::from(addr).to_ipv6_mapped());
        let n = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(net6), prefix).unwrap());
        let want = naive_prefix_match(net6, addr6, 128, u32::from(prefix));
        net_contains(&n, IpAddr::V4(Ipv4Addr::from(addr))) == want
    }

    #[test]
    fn cidr_matches_naive_reference() {
        let mut qc = quickcheck::QuickCheck::new().tests(2000);
        qc.quickcheck(prop_v4 as fn(u32, u8, u32, Option<u8>) -> bool);
        qc.quickcheck(prop_v6 as fn(u128, u8, u128, Option<u8>) -> bool);
        qc.quickcheck(prop_mapped_net as fn(u32, u8, u32, Option<u8>) -> bool);
        // A few fixed points the generator might miss.
        assert!(prop_v4(0, 0, u32::MAX, None));
        assert!(prop_v4(u32::MAX, 32, u32::MAX, None));
        assert!(prop_v4(u32::MAX, 32, 0, Some(0)));
        assert!(prop_v6(0, 0, u128::MAX, None));
        assert!(prop_v6(u128::MAX, 128, u128::MAX, Some(127)));
    }
}
