//! `portico explain`: why a request would be allowed or denied, in words.
//!
//! The verdict comes from [`rules::explain`], the same walk the proxy
//! decides with ([`rules::check`]); this module only puts the question
//! together from the command line and says the answer.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{Config, DestPattern, Host, Rule, RuleAction};
use crate::rules::{self, Mismatch, Query, Verdict, Wall};
use crate::table::context::Context;

/// A local date and time, `YYYY-MM-DDTHH:MM` (`--at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

impl LocalTime {
    /// Parses `YYYY-MM-DDTHH:MM` (a space instead of the `T` also does).
    pub fn parse(s: &str) -> Result<LocalTime, String> {
        let bad = || format!("\"{s}\" is not a local time like 2026-12-07T09:30");
        let (date, time) = s.split_once(['T', ' ']).ok_or_else(bad)?;
        let mut d = date.splitn(3, '-');
        let num = |x: Option<&str>, len: usize| -> Result<i64, String> {
            match x {
                Some(t) if t.len() == len && t.bytes().all(|b| b.is_ascii_digit()) => {
                    t.parse().map_err(|_| bad())
                }
                _ => Err(bad()),
            }
        };
        let year = num(d.next(), 4)?;
        let month = num(d.next(), 2)? as u32;
        let day = num(d.next(), 2)? as u32;
        let mut t = time.splitn(2, ':');
        let hour = num(t.next(), 2)? as u32;
        let minute = num(t.next(), 2)? as u32;
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(format!("{s}: there is no such date"));
        }
        if hour > 23 || minute > 59 {
            return Err(format!("{s}: the time must be 00:00 to 23:59"));
        }
        Ok(LocalTime {
            year,
            month,
            day,
            hour,
            minute,
        })
    }

    /// The wall time of this local time in a zone `utc_offset_secs` from
    /// UTC. Rules read only the local time, which is exactly this one
    /// whatever the offset.
    pub fn wall(&self, utc_offset_secs: i32) -> Wall {
        let local = days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour * 3600 + self.minute * 60);
        Wall {
            unix_secs: local - i64::from(utc_offset_secs),
            utc_offset_secs,
        }
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm; the inverse of `log::civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The request `portico explain` asks about.
#[derive(Debug, Clone)]
pub struct Question {
    pub service: String,
    pub client: IpAddr,
    pub user: Option<String>,
    /// `HOST:PORT`; `None`: the service's own destination, if it has one.
    pub destination: Option<String>,
    pub wall: Wall,
}

/// Why `portico explain` cannot answer (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no service is named '{name}'; the services are: {known}")]
    UnknownService { name: String, known: String },
    #[error(
        "--destination \"{0}\" is not HOST:PORT (e.g. example.com:443, 192.0.2.1:80, [2001:db8::1]:80)"
    )]
    BadDestination(String),
}

/// The answer: whether it is allowed, and the text to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub text: String,
}

/// Splits `HOST:PORT` (`[v6]:PORT` for an IPv6 address).
fn split_destination(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            v6.to_string()
        }
        None if host.contains(':') || host.is_empty() => return None,
        None => host.to_string(),
    };
    Some((host, port))
}

/// Resolves a host name to its addresses, in the resolver's order (`Err`:
/// why not, in words).
pub type Resolve<'a> = &'a mut dyn FnMut(&str, u16) -> Result<Vec<IpAddr>, String>;

/// Says how the rules of `config` decide `q` (rule `i` written at
/// `rules_at[i]`). A destination name is resolved with `resolve` only when
/// the proxy would resolve it (a rule's network could match its address),
/// and the address the proxy would go to is the one checked.
pub fn explain(
    config: &Config,
    rules_at: &[String],
    q: &Question,
    resolve: Resolve<'_>,
) -> Result<Answer, ExplainError> {
    let Some(service) = config.service(&q.service) else {
        let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        return Err(ExplainError::UnknownService {
            name: q.service.clone(),
            known: known.join(", "),
        });
    };
    let dest = match &q.destination {
        Some(d) => {
            Some(split_destination(d).ok_or_else(|| ExplainError::BadDestination(d.clone()))?)
        }
        None => service
            .destination
            .as_ref()
            .map(|d| (d.host.to_string(), d.port)),
    };
    let (host, addr) = match &dest {
        Some((h, _)) => match h.parse::<IpAddr>() {
            Ok(ip) => (None, Some(ip)),
            Err(_) => (Some(h.as_str()), None),
        },
        None => (None, None),
    };
    let mut query = Query {
        service: &service.name,
        client: q.client,
        user: q.user.as_deref(),
        host,
        addr: addr.map(Context::rule_ip),
        port: dest.as_ref().map(|(_, p)| *p),
    };
    // As the proxy does: a name is resolved only when the verdict could
    // depend on its address, and goes to the first address allowed (or,
    // none allowed, is denied as its first address is).
    // As the proxy does: through a parent (the rule's via, else the
    // service's) the name is not resolved, and the rules see it as named.
    let parent = match (&dest, rules::check(&config.rules, &query, q.wall)) {
        (None, _) => None,
        (Some(_), Verdict::Allow { rule: Some(i), .. }) => config.rules[i].via.or(service.via),
        (Some(_), _) => service.via,
    }
    .and_then(|v| match v {
        crate::config::Via::Parent(p) => config.parents.get(p),
        crate::config::Via::Direct => None,
    });
    let mut resolved = None;
    if let (Some(h), Some(port), None) = (host, query.port, parent) {
        if rules::check_by_name(&config.rules, &query, q.wall).is_none() {
            let line = match resolve(h, port) {
                Ok(addrs) if !addrs.is_empty() => {
                    let ips: Vec<IpAddr> = addrs.iter().map(|a| Context::rule_ip(*a)).collect();
                    let first = rules::allowed_addresses(&config.rules, &query, &ips, q.wall)
                        .first()
                        .copied()
                        .unwrap_or(0);
                    query.addr = Some(ips[first]);
                    format!("resolved: {h} to {}; checked {}", list(&addrs), ips[first])
                }
                Ok(_) => format!("resolved: {h} to no address; the proxy would refuse it"),
                Err(e) => format!(
                    "resolved: {h} did not resolve here ({e}); network destinations were \
                     checked against no address"
                ),
            };
            resolved = Some(line);
        }
    }
    let e = rules::explain(&config.rules, &query, q.wall);
    let at = |i: usize| rules_at.get(i).map_or("?", String::as_str);
    let mut out = String::new();
    let (allowed, rule, rate) = match e.verdict {
        Verdict::Allow { rule, rate } => (true, rule, rate),
        Verdict::Deny { rule } => (false, rule, None),
    };
    let _ = writeln!(
        out,
        "verdict: {}",
        if allowed { "allowed" } else { "denied" }
    );
    match rule {
        Some(i) => {
            let _ = writeln!(out, "rule: {} at {}", i + 1, at(i));
        }
        None if config.rules.is_empty() => {
            out.push_str("rule: none (no [[rule]] is configured: everything is allowed)\n")
        }
        None => out.push_str("rule: none (no rule matched: a request no rule matches is denied)\n"),
    }
    if allowed {
        match parent {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "parent: {} ({}, {}; the destination goes to it as named)",
                    p.name,
                    p.kind.name(),
                    p.addresses
                        .iter()
                        .map(|(w, _)| w.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            None => out.push_str("parent: none\n"),
        }
        // The connection out is the one to the parent when there is one
        // (its first address), else to the destination.
        let to = match parent {
            Some(p) => p.addresses.first().and_then(|(_, d)| match d.host {
                Host::Ip(ip) => Some(ip),
                Host::Name(_) => None,
            }),
            None => query.addr,
        };
        let _ = writeln!(out, "outgoing: {}", outgoing(config, rule, service, to));
        match rate {
            Some(r) => {
                let _ = writeln!(out, "rate: {r} bytes/s each way");
            }
            None => out.push_str("rate: none\n"),
        }
        // The quotas the request would count in (whether one is used up
        // only the running proxy knows: its /quotas).
        let counted = crate::quota::subjects(&config.quotas, q.user.as_deref(), q.client);
        if counted.is_empty() {
            out.push_str("quota: none\n");
        }
        for (name, subject) in &counted {
            if let Some(quota) = config.quotas.iter().find(|x| &x.name == name) {
                let _ = writeln!(
                    out,
                    "quota: {name}: {} bytes a {} for {subject}",
                    quota.bytes,
                    quota.per.name()
                );
            }
        }
    }
    if let Some(line) = resolved {
        out.push_str(&line);
        out.push('\n');
    }
    for (i, why) in &e.skipped {
        let _ = writeln!(
            out,
            "rule {} at {}: no match: {}",
            i + 1,
            at(*i),
            reason(&config.rules[*i], *why, &query, q.wall)
        );
    }
    Ok(Answer { allowed, text: out })
}

/// The `outgoing:` line's words: the source address the proxy would bind
/// to `to` (as [`crate::table::context::source`] decides), or, the
/// address's family not known here (a name), the one for each family.
fn outgoing(
    config: &Config,
    rule: Option<usize>,
    service: &crate::config::Service,
    to: Option<IpAddr>,
) -> String {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let rule = rule.and_then(|i| u32::try_from(i + 1).ok());
    let pick = |ip| crate::table::context::source(config, rule, service.outgoing, ip);
    let word = |ip: Option<IpAddr>| ip.map_or("none".to_string(), |ip| ip.to_string());
    let none = "none (the system picks)";
    match to {
        Some(ip) => pick(ip).map_or(none.to_string(), |ip| ip.to_string()),
        None => match (
            pick(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            pick(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ) {
            (None, None) => none.to_string(),
            (v4, v6) => format!(
                "{} toward an IPv4 address, {} toward an IPv6 address (the name's addresses \
                 decide)",
                word(v4),
                word(v6)
            ),
        },
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `why` rule `r` did not match `q`, in words.
fn reason(r: &Rule, why: Mismatch, q: &Query, wall: Wall) -> String {
    let action = match r.action {
        RuleAction::Allow => "allow",
        RuleAction::Deny => "deny",
    };
    let text = match why {
        Mismatch::Service => format!("service {} is not one of {}", q.service, list(&r.services)),
        Mismatch::Client => format!("client {} is not in {}", q.client, list(&r.clients)),
        Mismatch::Days => {
            let days: Vec<&str> = (0..7u8)
                .filter(|d| r.day_matches(*d))
                .map(|d| DAYS[usize::from(d)])
                .collect();
            format!(
                "{} is not one of its days {} (a window crossing midnight counts from the day it \
                 starts)",
                DAYS[usize::from(wall.weekday())],
                days.join(",")
            )
        }
        Mismatch::Hours => {
            let (s, e) = r.hours.unwrap_or((0, 0));
            format!(
                "{} is outside its hours {}-{}",
                hhmm(wall.minute_of_day()),
                hhmm(s),
                hhmm(e)
            )
        }
        Mismatch::User => match q.user {
            Some(u) => format!("user {u} is not one of {}", list(&r.users)),
            None => format!("no user (it names users {})", list(&r.users)),
        },
        Mismatch::Port => {
            let ports: Vec<String> = r
                .ports
                .iter()
                .map(|p| {
                    if p.start() == p.end() {
                        p.start().to_string()
                    } else {
                        format!("{}-{}", p.start(), p.end())
                    }
                })
                .collect();
            match q.port {
                Some(p) => format!("port {p} is not one of {}", ports.join(", ")),
                None => format!("no destination port (it names ports {})", ports.join(", ")),
            }
        }
        Mismatch::Destination => {
            let patterns: Vec<String> = r
                .destinations
                .iter()
                .map(|d| match d {
                    DestPattern::Exact(n) => n.clone(),
                    DestPattern::Suffix(n) => format!("*.{n}"),
                    DestPattern::Net(n) => n.to_string(),
                })
                .collect();
            let what = match (q.host, q.addr) {
                (Some(h), Some(a)) => format!("{h} ({a})"),
                (Some(h), None) => h.to_string(),
                (None, Some(a)) => Host::Ip(a).to_string(),
                (None, None) => "none".to_string(),
            };
            let nets = r
                .destinations
                .iter()
                .any(|d| matches!(d, DestPattern::Net(_)));
            let note = if q.host.is_some() && q.addr.is_none() && nets {
                " (its networks match the address a name resolves to, and there is none)"
            } else {
                ""
            };
            format!(
                "destination {what} is not one of {}{note}",
                patterns.join(", ")
            )
        }
    };
    format!("{action} rule: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// 2026-12-07 (a Monday) at hh:mm, UTC.
    fn monday(hh: u32, mm: u32) -> Wall {
        LocalTime {
            year: 2026,
            month: 12,
            day: 7,
            hour: hh,
            minute: mm,
        }
        .wall(0)
    }

    const BASE: &str = "[[user]]\nname = \"alice\"\npassword = \"plain:a\"\n\
                        [[user]]\nname = \"bob\"\npassword = \"plain:b\"\n\
                        [[service]]\nname = \"web\"\nkind = \"http\"\nport = 8080\n\
                        [[service]]\nname = \"mail\"\nkind = \"smtp\"\nport = 2525\n\
                        destination = \"192.0.2.9:25\"\n";

    fn ask(rules: &str, q: &Question) -> Answer {
        let text = format!("{BASE}{rules}");
        let config = config::parse(&text, "p.toml").unwrap_or_else(|e| panic!("{e}"));
        let at = config::rule_lines(&text, "p.toml");
        explain(&config, &at, q, &mut resolver).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A resolver that knows a few names.
    fn resolver(host: &str, _: u16) -> Result<Vec<IpAddr>, String> {
        let ips = |a: &[&str]| a.iter().map(|x| x.parse().unwrap()).collect();
        match host {
            "example.com" => Ok(ips(&["93.184.215.14"])),
            "intranet.lan" => Ok(ips(&["10.1.1.1", "192.0.2.80"])),
            "inside.lan" => Ok(ips(&["10.1.1.2"])),
            "empty.lan" => Ok(Vec::new()),
            _ => Err("unknown name".into()),
        }
    }

    fn question(dest: Option<&str>) -> Question {
        Question {
            service: "web".into(),
            client: "192.168.1.5".parse().unwrap(),
            user: Some("alice".into()),
            destination: dest.map(String::from),
            wall: monday(9, 30),
        }
    }

    #[test]
    fn local_times() {
        let t = LocalTime::parse("2026-12-07T09:30").unwrap();
        let w = t.wall(3600);
        assert_eq!((w.weekday(), w.minute_of_day()), (0, 570));
        assert_eq!(w.unix_secs, 1_796_635_800 - 3600);
        assert_eq!(
            LocalTime::parse("2024-02-29 23:59")
                .unwrap()
                .wall(0)
                .weekday(),
            3
        );
        for bad in [
            "2026-12-07",
            "2026-13-01T00:00",
            "2025-02-29T00:00",
            "2026-12-07T24:00",
            "2026-12-07T09:60",
            "26-12-07T09:30",
            "2026-12-07T9:30",
            "2026-12-07T09:30:00",
        ] {
            assert!(LocalTime::parse(bad).is_err(), "{bad}");
        }
        for z in [-800_000, -1, 0, 1, 19_782, 20_794, 2_000_000] {
            let (y, m, d) = crate::log::civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn every_reason_then_the_deciding_rule() {
        // One rule per reason (each failing on that condition only), then
        // the one that matches.
        let rules = "[[rule]]\naction = \"deny\"\nservices = [\"mail\"]\n\
                     [[rule]]\naction = \"deny\"\nclients = [\"10.0.0.0/8\"]\n\
                     [[rule]]\naction = \"deny\"\ndays = [\"sat-sun\"]\n\
                     [[rule]]\naction = \"deny\"\nhours = \"22:00-06:00\"\n\
                     [[rule]]\naction = \"deny\"\nusers = [\"bob\"]\n\
                     [[rule]]\naction = \"deny\"\nports = [22, \"8000-8999\"]\n\
                     [[rule]]\naction = \"deny\"\ndestinations = [\"*.ads.example\", \"10.0.0.0/8\"]\n\
                     [[rule]]\naction = \"allow\"\nusers = [\"alice\"]\nrate = \"1MiB/s\"\n\
                     [[rule]]\naction = \"deny\"\n\
                     [[quota]]\nname = \"daily\"\nusers = [\"alice\"]\nbytes = \"10GiB\"\nper = \"day\"\n\
                     [[quota]]\nname = \"lan\"\nclients = [\"192.168.1.0/24\"]\nbytes = \"1GB\"\n\
                     per = \"month\"\n\
                     [[quota]]\nname = \"guests\"\nclients = [\"10.0.0.0/8\"]\nbytes = \"1GB\"\n\
                     per = \"week\"\n";
        let a = ask(rules, &question(Some("example.com:443")));
        assert!(a.allowed);
        let lines: Vec<&str> = a.text.lines().collect();
        assert_eq!(
            lines,
            [
                "verdict: allowed",
                "rule: 8 at p.toml:37",
                "parent: none",
                "outgoing: none (the system picks)",
                "rate: 1048576 bytes/s each way",
                "quota: daily: 10737418240 bytes a day for alice",
                "quota: lan: 1000000000 bytes a month for 192.168.1.5",
                "resolved: example.com to 93.184.215.14; checked 93.184.215.14",
                "rule 1 at p.toml:16: no match: deny rule: service web is not one of mail",
                "rule 2 at p.toml:19: no match: deny rule: client 192.168.1.5 is not in \
                 10.0.0.0/8",
                "rule 3 at p.toml:22: no match: deny rule: mon is not one of its days \
                 sat,sun (a window crossing midnight counts from the day it starts)",
                "rule 4 at p.toml:25: no match: deny rule: 09:30 is outside its hours \
                 22:00-06:00",
                "rule 5 at p.toml:28: no match: deny rule: user alice is not one of bob",
                "rule 6 at p.toml:31: no match: deny rule: port 443 is not one of 22, \
                 8000-8999",
                "rule 7 at p.toml:34: no match: deny rule: destination example.com \
                 (93.184.215.14) is not one of *.ads.example, 10.0.0.0/8",
            ]
        );
        // An address is checked against the networks; the deny decides.
        let a = ask(rules, &question(Some("10.1.2.3:443")));
        assert!(!a.allowed);
        assert!(
            a.text
                .starts_with("verdict: denied\nrule: 7 at p.toml:34\n"),
            "{}",
            a.text
        );
        assert!(!a.text.contains("parent:"), "{}", a.text);
        assert!(!a.text.contains("rule 7 at"), "{}", a.text);
        // No user and no destination: the conditions on them fail.
        let a = ask(
            "[[rule]]\naction = \"allow\"\nusers = [\"bob\"]\n\
             [[rule]]\naction = \"allow\"\nports = [443]\n",
            &Question {
                user: None,
                ..question(None)
            },
        );
        assert!(!a.allowed);
        assert!(
            a.text.contains(": no user (it names users bob)\n"),
            "{}",
            a.text
        );
        assert!(
            a.text
                .contains(": no destination port (it names ports 443)\n"),
            "{}",
            a.text
        );
    }

    #[test]
    fn a_name_is_resolved_as_the_proxy_would() {
        let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"10.0.0.0/8\"]\n\
                     [[rule]]\naction = \"allow\"\n";
        // The first address is denied, the second allowed: the proxy goes
        // to the second.
        let a = ask(rules, &question(Some("intranet.lan:80")));
        assert!(a.allowed, "{}", a.text);
        assert!(
            a.text.contains(
                "resolved: intranet.lan to 10.1.1.1, 192.0.2.80; checked 192.0.2.80\n\
                 rule 1 at p.toml:16: no match: deny rule: destination intranet.lan \
                 (192.0.2.80) is not one of 10.0.0.0/8\n"
            ),
            "{}",
            a.text
        );
        // Every address denied: denied as the first one is.
        let a = ask(rules, &question(Some("inside.lan:80")));
        assert!(!a.allowed);
        assert!(
            a.text.starts_with(
                "verdict: denied\nrule: 1 at p.toml:16\nresolved: inside.lan to 10.1.1.2; \
                 checked 10.1.1.2\n"
            ),
            "{}",
            a.text
        );
        // Not resolved: said, and the networks matched no address.
        let a = ask(rules, &question(Some("nowhere.lan:80")));
        assert!(
            a.text.contains(
                "resolved: nowhere.lan did not resolve here (unknown name); network \
                 destinations were checked against no address\n"
            ),
            "{}",
            a.text
        );
        assert!(
            a.text.contains(
                "destination nowhere.lan is not one of 10.0.0.0/8 (its networks match the \
                 address a name resolves to, and there is none)"
            ),
            "{}",
            a.text
        );
        let a = ask(rules, &question(Some("empty.lan:80")));
        assert!(
            a.text.contains("resolved: empty.lan to no address"),
            "{}",
            a.text
        );
        // A verdict that cannot depend on the address: nothing resolved.
        let names = "[[rule]]\naction = \"deny\"\ndestinations = [\"*.lan\"]\n\
                     [[rule]]\naction = \"allow\"\n";
        let a = ask(names, &question(Some("nowhere.lan:80")));
        assert!(!a.allowed);
        assert!(!a.text.contains("resolved:"), "{}", a.text);
        // The unspecified address is checked as loopback, as the proxy does.
        let lo = "[[rule]]\naction = \"deny\"\ndestinations = [\"127.0.0.0/8\"]\n\
                  [[rule]]\naction = \"allow\"\n";
        assert!(!ask(lo, &question(Some("0.0.0.0:80"))).allowed);
    }

    #[test]
    fn names_the_parent_and_does_not_resolve() {
        let parents = "[[parent]]\nname = \"corp\"\nkind = \"socks5\"\n\
                       addresses = [\"10.0.0.8:1080\"]\n";
        let text = format!(
            "{parents}[[rule]]\naction = \"deny\"\ndestinations = [\"10.0.0.0/8\"]\n\
             [[rule]]\naction = \"allow\"\ndestinations = [\"*.example.com\"]\nvia = \"corp\"\n\
             [[rule]]\naction = \"allow\"\n"
        );
        let a = ask(&text, &question(Some("www.example.com:443")));
        assert!(a.allowed, "{}", a.text);
        assert!(
            a.text.contains("rule: 2 at")
                && a.text.contains(
                    "parent: corp (socks5, 10.0.0.8:1080; the destination goes to it as named)"
                )
                && !a.text.contains("resolved:"),
            "{}",
            a.text
        );
        let a = ask(&text, &question(Some("other.test:443")));
        assert!(a.text.contains("parent: none"), "{}", a.text);
    }

    #[test]
    fn says_the_source_address() {
        let net = "[network]\nexternal = [\"192.0.2.1\", \"192.0.2.2\", \"192.0.2.3\", \
                   \"2001:db8::1\"]\noutgoing = \"192.0.2.1\"\noutgoing6 = \"2001:db8::1\"\n";
        let parents = "[[parent]]\nname = \"corp\"\nkind = \"http\"\n\
                       addresses = [\"10.0.0.8:3128\"]\n\
                       [[parent]]\nname = \"named\"\nkind = \"http\"\n\
                       addresses = [\"proxy.lan:3128\"]\n";
        let rules = "[[rule]]\naction = \"allow\"\ndestinations = [\"203.0.113.0/24\"]\n\
                     outgoing = \"192.0.2.3\"\n\
                     [[rule]]\naction = \"allow\"\ndestinations = [\"corp.example\"]\n\
                     via = \"corp\"\n\
                     [[rule]]\naction = \"allow\"\ndestinations = [\"named.example\"]\n\
                     via = \"named\"\n\
                     [[rule]]\naction = \"deny\"\ndestinations = [\"no.example\"]\n\
                     [[rule]]\naction = \"allow\"\n";
        let line = |text: &str, dest: &str, service: &str| {
            let a = ask(
                &format!("{parents}{rules}{text}"),
                &Question {
                    service: service.into(),
                    ..question(Some(dest))
                },
            );
            a.text
                .lines()
                .find(|l| l.starts_with("outgoing:"))
                .map(String::from)
        };
        // [network] by the destination's family.
        assert_eq!(
            line(net, "198.51.100.7:80", "web").as_deref(),
            Some("outgoing: 192.0.2.1")
        );
        assert_eq!(
            line(net, "[2001:db8:9::7]:80", "web").as_deref(),
            Some("outgoing: 2001:db8::1")
        );
        // The rule's wins over the service's and the network's.
        let svc = format!(
            "{net}[[service]]\nname = \"own\"\nkind = \"socks\"\nport = 1080\n\
                           outgoing = \"192.0.2.2\"\n"
        );
        assert_eq!(
            line(&svc, "203.0.113.5:80", "own").as_deref(),
            Some("outgoing: 192.0.2.3")
        );
        assert_eq!(
            line(&svc, "198.51.100.7:80", "own").as_deref(),
            Some("outgoing: 192.0.2.2")
        );
        // Through a parent: toward the parent's first address.
        assert_eq!(
            line(net, "corp.example:443", "web").as_deref(),
            Some("outgoing: 192.0.2.1")
        );
        // A name whose family is not known here: both.
        let both = Some(
            "outgoing: 192.0.2.1 toward an IPv4 address, 2001:db8::1 toward an IPv6 address \
             (the name's addresses decide)",
        );
        assert_eq!(line(net, "named.example:443", "web").as_deref(), both);
        assert_eq!(line(net, "other.example:443", "web").as_deref(), both);
        // Nothing configured; nothing said for a denied request.
        assert_eq!(
            line(
                "[network]\nexternal = [\"192.0.2.3\"]\n",
                "198.51.100.7:80",
                "web"
            )
            .as_deref(),
            Some("outgoing: none (the system picks)")
        );
        assert_eq!(line(net, "no.example:80", "web"), None);
    }

    #[test]
    fn without_a_deciding_rule() {
        let a = ask("", &question(Some("example.com:443")));
        assert!(a.allowed);
        assert_eq!(
            a.text,
            "verdict: allowed\nrule: none (no [[rule]] is configured: everything is allowed)\n\
             parent: none\noutgoing: none (the system picks)\nrate: none\nquota: none\n"
        );
        let a = ask(
            "[[rule]]\naction = \"allow\"\nservices = [\"mail\"]\n",
            &question(Some("example.com:443")),
        );
        assert!(!a.allowed);
        assert_eq!(
            a.text,
            "verdict: denied\nrule: none (no rule matched: a request no rule matches is \
             denied)\nrule 1 at p.toml:16: no match: allow rule: service web is not one of \
             mail\n"
        );
    }

    #[test]
    fn a_fixed_destination_and_its_errors() {
        // The smtp service's own destination is the one checked.
        let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"192.0.2.0/24\"]\n\
                     [[rule]]\naction = \"allow\"\n";
        let a = ask(
            rules,
            &Question {
                service: "mail".into(),
                ..question(None)
            },
        );
        assert!(
            a.text.starts_with("verdict: denied\nrule: 1 at"),
            "{}",
            a.text
        );
        let config = config::parse(BASE, "p.toml").unwrap();
        let e = explain(
            &config,
            &[],
            &Question {
                service: "news".into(),
                ..question(None)
            },
            &mut resolver,
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "no service is named 'news'; the services are: web, mail"
        );
        for bad in ["example.com", "example.com:0", "::1:80", ":80", "[nope]:80"] {
            let e = explain(&config, &[], &question(Some(bad)), &mut resolver);
            assert!(matches!(e, Err(ExplainError::BadDestination(_))), "{bad}");
        }
        let a = explain(
            &config,
            &[],
            &question(Some("[2001:db8::1]:80")),
            &mut resolver,
        )
        .unwrap();
        assert!(a.allowed);
    }
}
