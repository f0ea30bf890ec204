//! From [`RawConfig`] to a validated [`Config`]: every check of the configuration's
//! configuration section, each error pointing at the key or value at fault.
//!
//! Order: network, limits, log, runtime, users, services (each in file
//! order), rules, then "at least one service", and last of all whether each
//! service's kind is implemented, so that a file is fully checked before it
//! is refused only for needing a kind this version lacks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Value;

use super::doc::{self, Node};
use super::include::{one_line, take_include, Files, Sources};
use super::raw::{
    List, RawAuth, RawConfig, RawLimits, RawNetwork, RawProcess, RawQuota, RawRule, RawService,
    RawUser, S,
};
use super::values;
use super::{
    implemented_kind, AccessTarget, Config, ConfigError, DiagnosticsTarget, HelperConfig, Limits,
    ListenSide, LogConfig, LogFormat, Network, Parent, Password, ProcessConfig, ProxyVersion,
    Quota, QuotaSubjects, Rule, RuleAction, RuntimeConfig, Service, ServiceKind, SocksCommands,
    StateConfig, Transport, User, DEFAULT_SYSLOG_SOCKET, MAX_BUFFER, MAX_WORKERS, MIN_BUFFER,
};

type Result<T> = std::result::Result<T, ConfigError>;

mod parents;
mod rules;
mod services;
use parents::{pac, parent, via};
use rules::rule;
use services::service;

struct Ctx<'a> {
    sources: &'a Sources,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        self.sources.error(span.start, message)
    }

    /// Where `earlier` is, for an error at `now`: `line N`, or `line N of
    /// FILE` when it is in another file.
    fn line_from(&self, earlier: &Range<usize>, now: &Range<usize>) -> String {
        self.sources.line_from(earlier.start, now.start)
    }

    /// Applies a value parser, turning its message into an error at `v`.
    fn value<T, U>(
        &self,
        v: &S<T>,
        f: impl FnOnce(&T) -> std::result::Result<U, String>,
    ) -> Result<U> {
        f(v.get_ref()).map_err(|m| self.err(v.span(), m))
    }

    /// Like [`Ctx::value`], with `what` (e.g. `limits.buffer`) before the message.
    fn named<T, U>(
        &self,
        what: &str,
        v: &S<T>,
        f: impl FnOnce(&T) -> std::result::Result<U, String>,
    ) -> Result<U> {
        f(v.get_ref()).map_err(|m| self.err(v.span(), format!("{what}: {m}")))
    }
}

/// Parses and checks one text (no `include`: it names no directory).
pub(super) fn parse(
    text: &str,
    file: &str,
    check_kinds: bool,
    files: Option<&mut dyn Files>,
) -> Result<Config> {
    let sources = Sources::single(file, text);
    let mut root =
        doc::parse(text, 0).map_err(|e| sources.error(e.span.start, one_line(&e.message)))?;
    if let Some(e) = take_include(&mut root) {
        return Err(sources.error(
            e.key_span.start,
            "include works only in a configuration file read with --config FILE",
        ));
    }
    check(root, &sources, check_kinds, files)
}

/// Checks a configuration's (merged) document.
pub(super) fn check(
    root: Node,
    sources: &Sources,
    check_kinds: bool,
    mut files: Option<&mut dyn Files>,
) -> Result<Config> {
    let cx = Ctx { sources };
    let raw = RawConfig::deserialize(root).map_err(|e| {
        let offset = e.span.map_or(0, |s| s.start);
        sources.error(offset, one_line(&e.message))
    })?;

    let network = network(&cx, raw.network.as_ref())?;
    let limits = limits(&cx, raw.limits.as_ref())?;
    let log = match &raw.log {
        None => LogConfig::default(),
        Some(l) => LogConfig {
            access: match &l.access {
                None => AccessTarget::default(),
                Some(a) => cx.named("log.access", a, |s| access_target(s))?,
            },
            format: match &l.format {
                None => LogFormat::default(),
                Some(f) => cx.named("log.format", f, |s| match s.as_str() {
                    "text" => Ok(LogFormat::Text),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(format!(
                        "\"{s}\" is not a log format; use \"text\" or \"json\""
                    )),
                })?,
            },
            diagnostics: match &l.diagnostics {
                None => DiagnosticsTarget::default(),
                Some(d) => cx.named("log.diagnostics", d, |s| diagnostics_target(s))?,
            },
            syslog_socket: match &l.syslog_socket {
                None => PathBuf::from(DEFAULT_SYSLOG_SOCKET),
                Some(p) => cx.named("log.syslog_socket", p, |s| match s.as_str() {
                    "" => Err("empty; give the path of the local syslog socket, e.g. \
                               \"/dev/log\""
                        .to_string()),
                    _ if s.contains('\0') => Err("the path contains a NUL character".to_string()),
                    _ => Ok(PathBuf::from(s)),
                })?,
            },
        },
    };
    let runtime = match raw.runtime.as_ref().and_then(|r| r.workers.as_ref()) {
        None => RuntimeConfig::default(),
        Some(w) => RuntimeConfig {
            workers: Some(cx.named("runtime.workers", w, |&n| {
                usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_WORKERS).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "{n} is out of range; use 1 to {MAX_WORKERS}, or leave it out for \
                             one event loop per core"
                        )
                    })
            })?),
        },
    };

    let process = process(&cx, raw.process.as_ref())?;

    let mut users: Vec<User> = Vec::new();
    let mut user_spans: HashMap<String, Range<usize>> = HashMap::new();
    for u in &raw.user {
        let user = user(&cx, u.get_ref())?;
        let name = u.get_ref().name.clone();
        if let Some(first) = user_spans.get(&user.name) {
            return Err(cx.err(
                name.span(),
                format!(
                    "user '{}' is defined twice (first on {}); user names must be unique",
                    user.name,
                    cx.line_from(first, &name.span())
                ),
            ));
        }
        user_spans.insert(user.name.clone(), name.span());
        users.push(user);
    }

    let helper = helper(&cx, raw.auth.as_ref())?;

    let mut parents: Vec<Parent> = Vec::new();
    for p in &raw.parent {
        let name = &p.get_ref().name;
        let parent = parent(&cx, p)?;
        if parents.iter().any(|o| o.name == parent.name) {
            return Err(cx.err(
                name.span(),
                format!(
                    "parent '{}' is defined twice; parent names must be unique",
                    parent.name
                ),
            ));
        }
        parents.push(parent);
    }

    let mut services: Vec<Service> = Vec::new();
    let mut service_spans: HashMap<String, Range<usize>> = HashMap::new();
    // Every listen address so far: (address, protocol, service name).
    let mut taken: Vec<(SocketAddr, Transport, String)> = Vec::new();
    for s in &raw.service {
        let name_span = s.get_ref().name.span();
        let mut svc = service(&cx, s, &network, !users.is_empty() || helper.is_some())?;
        if let Some(v) = &s.get_ref().via {
            if svc.kind == ServiceKind::Status || svc.protocol == Transport::Udp {
                return Err(cx.err(
                    v.span(),
                    format!(
                        "service '{}': via applies to services that connect out over TCP, \
                         not a {} service",
                        svc.name,
                        if svc.kind == ServiceKind::Status {
                            "status"
                        } else {
                            "udp mapped"
                        }
                    ),
                ));
            }
            svc.via = Some(via(&cx, v, &parents)?);
        }
        if let (Some(tls), Some(raw)) = (svc.tls.as_mut(), s.get_ref().tls.as_ref()) {
            let name = &svc.name;
            match files.as_deref_mut() {
                Some(files) => {
                    let now = files.now();
                    tls.server = Some(
                        super::tls::load(tls, files, now)
                            .map_err(|m| cx.err(raw.span(), format!("service '{name}': {m}")))?,
                    );
                }
                None => {
                    return Err(cx.err(
                        raw.span(),
                        format!(
                            "service '{name}': tls names files, and this configuration is \
                             read as text alone; give it as a file (--config FILE)"
                        ),
                    ))
                }
            }
        }
        if let Some(first) = service_spans.get(&svc.name) {
            return Err(cx.err(
                name_span.clone(),
                format!(
                    "service '{}' is defined twice (first on {}); service names must be unique",
                    svc.name,
                    cx.line_from(first, &name_span)
                ),
            ));
        }
        service_spans.insert(svc.name.clone(), name_span);
        let listen_span = listen_span(s.get_ref());
        for (i, addr) in svc.listen.iter().enumerate() {
            let span = listen_span(i);
            if let Some((other, _, owner)) = taken
                .iter()
                .find(|(o, p, _)| *p == svc.protocol && overlaps(*o, *addr))
            {
                let how = if other == addr {
                    format!("is already used by service '{owner}'")
                } else {
                    format!("overlaps {other} of service '{owner}'")
                };
                let fix = if owner == &svc.name {
                    "list each address once"
                } else {
                    "give each service its own port"
                };
                return Err(cx.err(
                    span,
                    format!(
                        "service '{}': listen address {addr} ({}) {how}; {fix}",
                        svc.name,
                        svc.protocol.name()
                    ),
                ));
            }
            taken.push((*addr, svc.protocol, svc.name.clone()));
        }
        services.push(svc);
    }

    let mut rules = Vec::new();
    for r in &raw.rule {
        // A client certificate (client_cert_user) may name users that
        // [[user]] does not, as a helper may.
        let outside = helper.is_some()
            || services
                .iter()
                .any(|s| s.tls.as_ref().is_some_and(|t| t.client_cert_user));
        let mut rule = rule(&cx, r.get_ref(), &services, &users, outside, &network)?;
        if let Some(v) = &r.get_ref().via {
            if rule.action == RuleAction::Deny {
                return Err(cx.err(
                    v.span(),
                    "via only applies to allow rules (a denied connection goes nowhere); \
                     remove it or use action = \"allow\"",
                ));
            }
            rule.via = Some(via(&cx, v, &parents)?);
        }
        rules.push(rule);
    }

    let mut quotas: Vec<Quota> = Vec::new();
    for q in &raw.quota {
        let name = &q.get_ref().name;
        let quota = quota(&cx, q, &users, helper.is_some())?;
        if quotas.iter().any(|o| o.name == quota.name) {
            return Err(cx.err(
                name.span(),
                format!(
                    "quota '{}' is defined twice; quota names must be unique",
                    quota.name
                ),
            ));
        }
        quotas.push(quota);
    }
    let raw_state = raw.state.as_ref();
    let state = StateConfig {
        dir: match raw_state.and_then(|s| s.dir.as_ref()) {
            None => None,
            Some(d) => Some(cx.named("state.dir", d, |s| {
                match s.as_str() {
                    "" => Err("empty; give a directory Portico may write, e.g. \
                           \"/var/lib/portico\", or leave it out to keep counts in memory"
                        .to_string()),
                    _ if s.contains('\0') => Err("the path contains a NUL character".to_string()),
                    _ if !s.starts_with('/') => Err(format!(
                    "\"{s}\" is not an absolute path; write it from /, e.g. \"/var/lib/portico\""
                )),
                    _ => Ok(PathBuf::from(s)),
                }
            })?),
        },
        redis: match raw_state.and_then(|s| s.redis.as_ref()) {
            None => None,
            Some(r) => Some(cx.named("state.redis", r, |s| crate::config::RedisUrl::parse(s))?),
        },
    };

    if services.is_empty() {
        return Err(cx.err(
            0..0,
            "no [[service]] is configured; add at least one, e.g. [[service]] name = \"web\" \
             kind = \"http\" port = 8080",
        ));
    }

    let pac = match &raw.pac {
        None => None,
        Some(p) => Some(pac(&cx, p.get_ref(), &services)?),
    };

    if check_kinds {
        for (raw, svc) in raw.service.iter().zip(&services) {
            if !implemented_kind(svc.kind, svc.protocol) {
                let r = raw.get_ref();
                return Err(match (svc.protocol, &r.protocol) {
                    (Transport::Udp, Some(p)) if svc.kind == ServiceKind::Mapped => cx.err(
                        p.span(),
                        "mapped ports with protocol = \"udp\" are not available in this \
                         version of portico yet",
                    ),
                    _ => cx.err(
                        r.kind.span(),
                        format!(
                            "service kind '{}' is not available in this version of portico yet",
                            svc.kind.name()
                        ),
                    ),
                });
            }
        }
    }

    Ok(Config {
        network,
        limits,
        log,
        runtime,
        process,
        users,
        services,
        rules,
        quotas,
        state,
        helper,
        parents,
        pac,
    })
}

/// `[auth]`: the helper program and its settings.
fn helper(cx: &Ctx, raw: Option<&RawAuth>) -> Result<Option<std::sync::Arc<HelperConfig>>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(list) = &raw.helper else {
        for (set, what) in [
            (raw.helpers.as_ref().map(|v| v.span()), "helpers"),
            (
                raw.helper_concurrency.as_ref().map(|v| v.span()),
                "helper_concurrency",
            ),
            (
                raw.helper_timeout.as_ref().map(|v| v.span()),
                "helper_timeout",
            ),
        ] {
            if let Some(span) = set {
                return Err(cx.err(
                    span,
                    format!(
                        "auth.{what} is set but auth.helper is not; give the helper program, \
                         e.g. helper = [\"/usr/lib/squid/basic_ncsa_auth\", \"/etc/portico/htpasswd\"]"
                    ),
                ));
            }
        }
        return Ok(None);
    };
    let mut argv = Vec::new();
    for a in list.get_ref() {
        if a.get_ref().contains('\0') {
            return Err(cx.err(
                a.span(),
                "auth.helper: an argument contains a NUL character",
            ));
        }
        argv.push(a.get_ref().clone());
    }
    match argv.first() {
        None => {
            return Err(cx.err(
                list.span(),
                "auth.helper is empty; give the program and its arguments, e.g. \
                 [\"/usr/lib/squid/basic_ncsa_auth\", \"/etc/portico/htpasswd\"]",
            ))
        }
        Some(p) if !p.starts_with('/') => {
            return Err(cx.err(
                list.get_ref()[0].span(),
                format!("auth.helper: \"{p}\" is not an absolute path; write the program from /"),
            ))
        }
        Some(_) => {}
    }
    let mut h = HelperConfig {
        argv,
        processes: 2,
        concurrency: 0,
        timeout: Duration::from_secs(5),
    };
    if let Some(v) = &raw.helpers {
        h.processes = cx.named("auth.helpers", v, |&n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_HELPERS).contains(n))
                .ok_or_else(|| format!("{n} is out of range; use 1 to {MAX_HELPERS}"))
        })?;
    }
    if let Some(v) = &raw.helper_concurrency {
        h.concurrency = cx.named("auth.helper_concurrency", v, |&n| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_HELPER_CONCURRENCY)
                .ok_or_else(|| {
                    format!(
                        "{n} is out of range; use 0 (one request at a time) to \
                         {MAX_HELPER_CONCURRENCY}"
                    )
                })
        })?;
    }
    if let Some(v) = &raw.helper_timeout {
        let d = cx.named("auth.helper_timeout", v, values::duration_value)?;
        if d.is_zero() {
            return Err(cx.err(
                v.span(),
                "auth.helper_timeout must be more than zero, e.g. \"5s\"",
            ));
        }
        h.timeout = d;
    }
    Ok(Some(std::sync::Arc::new(h)))
}

/// The most helper processes (`[auth] helpers`).
const MAX_HELPERS: u32 = 64;
/// The most requests one helper process takes at once.
const MAX_HELPER_CONCURRENCY: u32 = 1000;

/// One `[[quota]]`: a name, exactly one of `users` and `clients`, a size
/// and a period.
fn quota(cx: &Ctx, q: &S<RawQuota>, users: &[User], helper: bool) -> Result<Quota> {
    let r = q.get_ref();
    let name = r.name.get_ref().trim();
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        return Err(cx.err(
            r.name.span(),
            "quota name is empty or has control characters; give it a word, e.g. \"daily\"",
        ));
    }
    let what = format!("quota '{name}'");
    let subjects = match (&r.users, &r.clients) {
        (Some(u), None) => {
            if u.get_ref().is_empty() {
                return Err(cx.err(
                    u.span(),
                    format!("{what}: users is empty; list who it counts"),
                ));
            }
            let mut out = Vec::new();
            for n in u.get_ref() {
                // A helper may know users that [[user]] does not.
                if !helper && !users.iter().any(|x| &x.name == n.get_ref()) {
                    return Err(cx.err(
                        n.span(),
                        format!(
                            "{what} names unknown user '{}'; define it with [[user]]",
                            n.get_ref()
                        ),
                    ));
                }
                out.push(n.get_ref().clone());
            }
            QuotaSubjects::Users(out)
        }
        (None, Some(c)) => {
            if c.get_ref().is_empty() {
                return Err(cx.err(
                    c.span(),
                    format!("{what}: clients is empty; list the networks it counts"),
                ));
            }
            let mut out = Vec::new();
            for n in c.get_ref() {
                out.push(cx.named(&format!("{what} clients"), n, |t| values::parse_net(t))?);
            }
            QuotaSubjects::Clients(out)
        }
        (Some(_), Some(c)) => {
            return Err(cx.err(
                c.span(),
                format!("{what} has both users and clients; give one of them per [[quota]]"),
            ))
        }
        (None, None) => {
            return Err(cx.err(
                q.span(),
                format!("{what} needs users = [...] or clients = [...]: whom it counts"),
            ))
        }
    };
    let bytes = cx.named(&format!("{what} bytes"), &r.bytes, values::size_value)?;
    if bytes == 0 {
        return Err(cx.err(
            r.bytes.span(),
            format!("{what}: bytes must be more than zero, e.g. \"10GiB\""),
        ));
    }
    let per = cx.named(&format!("{what} per"), &r.per, |s| {
        crate::quota::Per::parse(s)
            .ok_or_else(|| format!("\"{s}\" is not a period; use \"day\", \"week\" or \"month\""))
    })?;
    Ok(Quota {
        name: name.to_string(),
        subjects,
        bytes,
        per,
    })
}

/// Whether binding `a` and `b` would collide: same port, and the same
/// address or a wildcard of the same family. (`[::]` is taken not to cover
/// IPv4, so `0.0.0.0:N` and `[::]:N` can both be listed: a runtime sets
/// `IPV6_V6ONLY` on its IPv6 listeners.)
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && ips_overlap(a.ip(), b.ip(), false)
}

/// Same address, or one is a wildcard that covers the other: `0.0.0.0`
/// covers IPv4, `::` covers IPv6 and, when `v6_covers_v4`, IPv4 too (as
/// it does on Linux without `IPV6_V6ONLY`).
fn ips_overlap(a: IpAddr, b: IpAddr, v6_covers_v4: bool) -> bool {
    let covers = |w: IpAddr, x: IpAddr| {
        w.is_unspecified() && (w.is_ipv4() == x.is_ipv4() || (w.is_ipv6() && v6_covers_v4))
    };
    a == b || covers(a, b) || covers(b, a)
}

/// The span to blame for the `i`-th resolved listen address of `s`.
fn listen_span(s: &RawService) -> impl Fn(usize) -> Range<usize> + '_ {
    move |i| match (&s.listen, &s.port) {
        (Some(l), _) => l.get_ref().get(i).map_or(l.span(), |x| x.span()),
        (None, Some(p)) => p.span(),
        (None, None) => s.name.span(),
    }
}

fn network(cx: &Ctx, raw: Option<&RawNetwork>) -> Result<Network> {
    let Some(raw) = raw else {
        return Ok(Network::default());
    };
    let list = |l: &List<String>, what: &str| -> Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = Vec::new();
        for a in l.get_ref() {
            let ip = cx.named(what, a, |s| values::parse_ip(s))?;
            if out.contains(&ip) {
                return Err(cx.err(
                    a.span(),
                    format!("{what}: {ip} is listed twice; list each address once"),
                ));
            }
            out.push(ip);
        }
        Ok(out)
    };
    let internal = match &raw.internal {
        None => Network::default().internal,
        Some(l) => {
            let v = list(l, "network.internal")?;
            if v.is_empty() {
                return Err(cx.err(
                    l.span(),
                    "network.internal is empty; list the LAN-facing addresses of this machine \
                     (e.g. [\"192.168.1.1\"]), or leave it out for [\"127.0.0.1\"]",
                ));
            }
            v
        }
    };
    let external = match &raw.external {
        None => Vec::new(),
        Some(l) => list(l, "network.external")?,
    };
    if let Some(l) = &raw.external {
        for (a, ip) in l.get_ref().iter().zip(&external) {
            if let Some(other) = internal.iter().find(|i| ips_overlap(**i, *ip, true)) {
                let what = if other == ip {
                    format!("{ip} is in both network.internal and network.external")
                } else {
                    format!(
                        "network.external address {ip} overlaps network.internal address \
                         {other} (a wildcard covers every address)"
                    )
                };
                return Err(cx.err(
                    a.span(),
                    format!(
                        "{what}; an address is either LAN-facing (internal) or Internet-facing \
                         (external), never both"
                    ),
                ));
            }
        }
    }
    let outgoing = match &raw.outgoing {
        None => None,
        Some(o) => Some(source_address(cx, o, "network.outgoing", &external, false)?),
    };
    let outgoing6 = match &raw.outgoing6 {
        None => None,
        Some(o) => Some(source_address(cx, o, "network.outgoing6", &external, true)?),
    };
    Ok(Network {
        internal,
        external,
        outgoing,
        outgoing6,
    })
}

/// A source address for connections out (`key`, e.g. `network.outgoing`):
/// a plain IP address (IPv6 when `v6`) that is one of `network.external`,
/// the addresses this machine faces the Internet with.
fn source_address(
    cx: &Ctx,
    v: &S<String>,
    key: &str,
    external: &[IpAddr],
    v6: bool,
) -> Result<IpAddr> {
    cx.value(v, |s| {
        let ip = values::parse_ip(s).map_err(|_| {
            format!(
                "{key} must be a plain IP address such as \"203.0.113.5\" (no port, no \
                 /prefix, no brackets, no host name); found \"{s}\""
            )
        })?;
        if v6 && !ip.is_ipv6() {
            return Err(format!(
                "{key} is the source of connections to IPv6 destinations and must be an IPv6 \
                 address such as \"2001:db8::5\"; found {ip} (an IPv4 source goes in outgoing)"
            ));
        }
        if !external.contains(&ip) {
            let listed = if external.is_empty() {
                "network.external is empty".to_string()
            } else {
                let all: Vec<String> = external.iter().map(|a| a.to_string()).collect();
                format!("network.external is [{}]", all.join(", "))
            };
            return Err(format!(
                "{key} = \"{ip}\" is not one of the external addresses ({listed}); add it to \
                 network.external, or use one of those"
            ));
        }
        Ok(ip)
    })
}

fn limits(cx: &Ctx, raw: Option<&RawLimits>) -> Result<Limits> {
    let mut l = Limits::default();
    let Some(raw) = raw else {
        return Ok(l);
    };
    let count = |v: &Option<S<i64>>, what: &str, into: &mut u32| -> Result<()> {
        if let Some(v) = v {
            *into = cx.named(what, v, |&n| {
                u32::try_from(n)
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("{n} is out of range; use 1 to {}", u32::MAX))
            })?;
        }
        Ok(())
    };
    count(
        &raw.max_connections,
        "limits.max_connections",
        &mut l.max_connections,
    )?;
    count(
        &raw.max_per_client,
        "limits.max_per_client",
        &mut l.max_per_client,
    )?;
    let duration =
        |v: &Option<S<Value>>, what: &str, zero_ok: bool, into: &mut Duration| -> Result<()> {
            if let Some(v) = v {
                let d = cx.named(what, v, values::duration_value)?;
                if d.is_zero() && !zero_ok {
                    return Err(cx.err(
                        v.span(),
                        format!("{what} must be more than zero, e.g. \"10s\""),
                    ));
                }
                *into = d;
            }
            Ok(())
        };
    duration(
        &raw.connect_timeout,
        "limits.connect_timeout",
        false,
        &mut l.connect_timeout,
    )?;
    duration(
        &raw.connect_attempt_delay,
        "limits.connect_attempt_delay",
        false,
        &mut l.connect_attempt_delay,
    )?;
    duration(
        &raw.handshake_timeout,
        "limits.handshake_timeout",
        false,
        &mut l.handshake_timeout,
    )?;
    duration(
        &raw.idle_timeout,
        "limits.idle_timeout",
        false,
        &mut l.idle_timeout,
    )?;
    duration(
        &raw.shutdown_grace,
        "limits.shutdown_grace",
        true,
        &mut l.shutdown_grace,
    )?;
    duration(
        &raw.udp_idle_timeout,
        "limits.udp_idle_timeout",
        false,
        &mut l.udp_idle_timeout,
    )?;
    duration(
        &raw.auth_cache,
        "limits.auth_cache",
        true,
        &mut l.auth_cache,
    )?;
    count(
        &raw.auth_failures,
        "limits.auth_failures",
        &mut l.auth_failures,
    )?;
    if let Some(v) = &raw.max_per_user {
        let mut n = 0;
        count(&Some(v.clone()), "limits.max_per_user", &mut n)?;
        l.max_per_user = Some(n);
    }
    if let Some(b) = &raw.buffer {
        let n = cx.named("limits.buffer", b, values::size_value)?;
        l.buffer = usize::try_from(n)
            .ok()
            .filter(|n| (MIN_BUFFER..=MAX_BUFFER).contains(n))
            .ok_or_else(|| {
                cx.err(
                    b.span(),
                    format!(
                        "limits.buffer is {n} bytes; it must be between 1KiB and 64MiB \
                         (e.g. \"64KiB\")"
                    ),
                )
            })?;
    }
    Ok(l)
}

fn access_target(s: &str) -> std::result::Result<AccessTarget, String> {
    match s {
        "stderr" => Ok(AccessTarget::Stderr),
        "off" => Ok(AccessTarget::Off),
        "syslog" => Ok(AccessTarget::Syslog),
        "" => Err("empty; use \"stderr\", \"syslog\", \"off\" or a file path".to_string()),
        "stdout" | "-" => Err(format!(
            "\"{s}\" is not supported; use \"stderr\", \"syslog\", \"off\" or a file path \
             (write \"./{s}\" for a file of that name)"
        )),
        _ if s.contains('\0') => Err("the file path contains a NUL character".to_string()),
        _ => Ok(AccessTarget::File(PathBuf::from(s))),
    }
}

fn diagnostics_target(s: &str) -> std::result::Result<DiagnosticsTarget, String> {
    match s {
        "stderr" => Ok(DiagnosticsTarget::Stderr),
        "syslog" => Ok(DiagnosticsTarget::Syslog),
        "" => Err("empty; use \"stderr\", \"syslog\" or a file path".to_string()),
        "stdout" | "-" | "off" => Err(format!(
            "\"{s}\" is not supported; use \"stderr\", \"syslog\" or a file path (write \
             \"./{s}\" for a file of that name)"
        )),
        _ if s.contains('\0') => Err("the file path contains a NUL character".to_string()),
        _ => Ok(DiagnosticsTarget::File(PathBuf::from(s))),
    }
}

/// `[process]`: names only (whether they exist is known when the process
/// starts, not here).
fn process(cx: &Ctx<'_>, raw: Option<&RawProcess>) -> Result<ProcessConfig> {
    let Some(p) = raw else {
        return Ok(ProcessConfig::default());
    };
    let name = |what: &str, v: &S<String>| {
        cx.named(what, v, |s| {
            if s.is_empty() {
                return Err("empty; give a name, e.g. \"portico\"".to_string());
            }
            if s.contains(':') || s.contains('\0') {
                return Err(format!(
                    "\"{}\" cannot be a name in the system's user database",
                    s.escape_default()
                ));
            }
            check_no_control(s, "the").map(|()| s.clone())
        })
    };
    let user = p
        .user
        .as_ref()
        .map(|u| name("process.user", u))
        .transpose()?;
    let group = p
        .group
        .as_ref()
        .map(|g| name("process.group", g))
        .transpose()?;
    if let (None, Some(g)) = (&user, &p.group) {
        return Err(cx.err(
            g.span(),
            "process.group: given without process.user; set user too (the group is switched to \
             only when the user is)",
        ));
    }
    Ok(ProcessConfig { user, group })
}

/// A name with no control characters; `what` says whose, for messages.
fn check_no_control(name: &str, what: &str) -> std::result::Result<(), String> {
    match name.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{what} name \"{}\" contains the control character {}; use printable characters",
            name.escape_default(),
            c.escape_unicode()
        )),
        None => Ok(()),
    }
}

fn user(cx: &Ctx, raw: &RawUser) -> Result<User> {
    let name = cx.value(&raw.name, |n| {
        if n.is_empty() {
            return Err("a user name must not be empty".to_string());
        }
        check_no_control(n, "user")?;
        if n.contains(':') {
            return Err(format!(
                "user name \"{n}\" contains ':'; HTTP Basic credentials split at the first \
                 colon, so user names cannot contain one"
            ));
        }
        Ok(n.clone())
    })?;
    let password = cx.value(&raw.password, |p| password(p)).map_err(|mut e| {
        e.message = format!("user '{name}': {}", e.message);
        e
    })?;
    Ok(User { name, password })
}

const PASSWORD_HINT: &str = "run `portico hash-password` and paste the \"$argon2id$...\" string \
     it prints, or write \"plain:SECRET\" for a clear-text password";

fn password(p: &str) -> std::result::Result<Password, String> {
    if let Some(secret) = p.strip_prefix("plain:") {
        if secret.is_empty() {
            return Err("the plain password is empty; write \"plain:SECRET\"".to_string());
        }
        return Ok(Password::Plain(secret.to_string()));
    }
    if !p.starts_with('$') {
        return Err(format!(
            "the password is neither a PHC hash nor \"plain:...\"; {PASSWORD_HINT}"
        ));
    }
    check_phc(p)
        .map_err(|why| format!("the password is not a valid PHC hash ({why}); {PASSWORD_HINT}"))?;
    Ok(Password::Phc(p.to_string()))
}

/// `$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH` (the version is optional; the
/// salt and hash are unpadded base64).
fn check_phc(p: &str) -> std::result::Result<(), &'static str> {
    let mut parts = p.split('$');
    let _ = parts.next(); // the empty text before the first '$'
    let id = parts.next().unwrap_or("");
    if !matches!(id, "argon2id" | "argon2i" | "argon2d") {
        return Err("the algorithm must be argon2id, argon2i or argon2d");
    }
    let mut rest: Vec<&str> = parts.collect();
    if rest.first().is_some_and(|v| v.starts_with("v=")) {
        let v = rest.remove(0);
        if v.len() < 3 || !v[2..].bytes().all(|b| b.is_ascii_digit()) {
            return Err("the version field must be v=NUMBER");
        }
    }
    let [params, salt, hash] = rest[..] else {
        return Err("expected parameters, salt and hash after the algorithm");
    };
    let b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    let param_ok = |kv: &str| match kv.split_once('=') {
        Some((k, v)) => {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !v.is_empty()
                && v.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'.' || b == b'-'
                })
        }
        None => false,
    };
    if params.is_empty() || !params.split(',').all(param_ok) {
        return Err("the parameters must look like m=19456,t=2,p=1");
    }
    if !b64(salt) {
        return Err("the salt must be base64");
    }
    if !b64(hash) {
        return Err("the hash must be base64");
    }
    Ok(())
}
