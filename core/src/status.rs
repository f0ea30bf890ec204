//! The status service: what the table knows, as an HTML page, Prometheus
//! metrics and JSON.
//!
//! The table (`table/status.rs`) takes a snapshot of its counters and connections
//! and this module renders it; a status connection reads one request head
//! (origin-form, `GET` or `HEAD`), is answered from the snapshot, and closes.
//!
//! # States and exits
//!
//! ```text
//! Handshake ──head complete──► answer, Closing ──written──► (closed)
//!     ├─head over 8 KiB, or not a GET/HEAD──► 400/405, Closing
//!     └─handshake_timeout──► (closed)
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{self, History};
use crate::quota::QuotaRow;
use crate::status_page::{self, About};

/// Longest request head the status service reads.
pub const MAX_HEAD: usize = 8 * 1024;

/// Counters of one service over the life of the process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceCounters {
    pub connections: u64,
    /// Bytes of finished connections, client→upstream and back.
    pub up: u64,
    pub down: u64,
    /// Refusals by reason: a [`crate::outcome::Cause`]'s word for the
    /// proxy's own refusals (`denied`, `port-denied`, `auth-required`,
    /// `limit`), and `shutdown` for a connection turned away while
    /// shutting down.
    pub refused: BTreeMap<&'static str, u64>,
    /// Failures to connect to a destination, by cause (`dns-failure`,
    /// `connect-refused`, `connect-timeout`, `unreachable`).
    pub connect_errors: BTreeMap<&'static str, u64>,
    /// HTTP responses sent to clients (the proxy's own and relayed), by
    /// status code.
    pub http_responses: BTreeMap<u16, u64>,
    /// Password hashes checked (argon2 run, not answered from the cache).
    pub password_checks: u64,
    /// Failed logins by reason (`wrong`, `unknown-user`).
    pub auth_failures: BTreeMap<&'static str, u64>,
    /// TLS handshakes that failed (plain text to a TLS port included).
    pub tls_failures: u64,
}

/// One service as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    pub kind: &'static str,
    pub listen: Vec<String>,
    pub active: u64,
    pub counters: ServiceCounters,
    /// Bytes of the connections still open, added to the finished ones.
    pub live_up: u64,
    pub live_down: u64,
}

/// One connection in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    pub id: String,
    pub service: String,
    pub client: String,
    pub user: Option<String>,
    pub destination: Option<String>,
    pub state: &'static str,
    pub age_ms: u128,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Everything a status answer is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: Vec<ServiceRow>,
    pub connections: Vec<ConnRow>,
    /// Per user: bytes up, bytes down (finished and in flight).
    pub users: BTreeMap<String, (u64, u64)>,
    /// Version, start, uptime, last reload.
    pub about: About,
    /// Each service's last minutes.
    pub history: History,
    /// The quotas' counts (from the shared ledger: every worker's
    /// snapshot has all of them).
    pub quotas: Vec<QuotaRow>,
    /// The parent proxies' addresses (from the shared ledger, like the
    /// quotas).
    pub parents: Vec<crate::parent::ParentRow>,
}

impl Snapshot {
    /// Adds another worker's table to this one: services by name (a
    /// service only the other knows, in the middle of a reload, is
    /// appended), connections side by side, users summed.
    pub fn merge(&mut self, other: Snapshot) {
        for row in other.services {
            match self.services.iter_mut().find(|s| s.name == row.name) {
                Some(s) => {
                    s.active += row.active;
                    s.live_up += row.live_up;
                    s.live_down += row.live_down;
                    let (c, o) = (&mut s.counters, &row.counters);
                    c.connections += o.connections;
                    c.up += o.up;
                    c.down += o.down;
                    for (why, n) in &o.refused {
                        *c.refused.entry(why).or_insert(0) += n;
                    }
                    for (why, n) in &o.connect_errors {
                        *c.connect_errors.entry(why).or_insert(0) += n;
                    }
                    for (code, n) in &o.http_responses {
                        *c.http_responses.entry(*code).or_insert(0) += n;
                    }
                    c.password_checks += o.password_checks;
                    c.tls_failures += o.tls_failures;
                    for (why, n) in &o.auth_failures {
                        *c.auth_failures.entry(why).or_insert(0) += n;
                    }
                }
                None => self.services.push(row),
            }
        }
        self.connections.extend(other.connections);
        self.about.merge(other.about);
        self.history.merge(other.history);
        // The same shared counts in every part: one copy.
        if self.quotas.is_empty() {
            self.quotas = other.quotas;
        }
        if self.parents.is_empty() {
            self.parents = other.parents;
        }
        for (user, (up, down)) in other.users {
            let e = self.users.entry(user).or_insert((0, 0));
            e.0 += up;
            e.1 += down;
        }
    }
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Html,
    Metrics,
    Connections,
    Services,
    Health,
    Info,
    Users,
    History,
    Quotas,
    Parents,
    /// The proxy auto-config file (`/proxy.pac`, `/wpad.dat`): made by the
    /// session from the configuration ([`pac`]), not from a snapshot.
    Pac,
    NotFound,
}

/// The outcome of reading a status request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet.
    More,
    /// A request for `page`; `head_only` for HEAD.
    Get { page: Page, head_only: bool },
    /// Not a request this service answers: the status to reply.
    Bad(u16),
}

/// Reads a status request head from the client's bytes.
pub fn parse(input: &[u8]) -> Parse {
    let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if input.len() > MAX_HEAD {
            Parse::Bad(431)
        } else {
            Parse::More
        };
    };
    if end > MAX_HEAD {
        return Parse::Bad(431);
    }
    let line_end = input.iter().position(|&b| b == b'\r').unwrap_or(end);
    let Ok(line) = std::str::from_utf8(&input[..line_end]) else {
        return Parse::Bad(400);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Bad(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Parse::Bad(400);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Parse::Bad(405),
    };
    let path = target.split('?').next().unwrap_or("");
    let page = match path {
        "/" | "/index.html" => Page::Html,
        "/metrics" => Page::Metrics,
        "/connections" => Page::Connections,
        "/services" => Page::Services,
        "/healthz" => Page::Health,
        "/info" => Page::Info,
        "/users" => Page::Users,
        "/history" => Page::History,
        "/quotas" => Page::Quotas,
        "/parents" => Page::Parents,
        "/proxy.pac" | "/wpad.dat" => Page::Pac,
        _ => Page::NotFound,
    };
    Parse::Get { page, head_only }
}

/// The whole HTTP response for `page` (the connection closes after it).
pub fn respond(page: Page, head_only: bool, snap: &Snapshot) -> Vec<u8> {
    let (status, ctype, body) = match page {
        Page::Html => (200, "text/html; charset=utf-8", status_page::html(snap)),
        Page::Metrics => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(snap),
        ),
        Page::Connections => (200, "application/json", connections_json(snap)),
        Page::Services => (200, "application/json", services_json(snap)),
        Page::Health => (200, "text/plain; charset=utf-8", "ok\n".to_string()),
        Page::Info => (200, "application/json", status_page::info_json(&snap.about)),
        Page::Users => (200, "application/json", status_page::users_json(snap)),
        Page::History => (200, "application/json", history::json(&snap.history)),
        Page::Quotas => (200, "application/json", quotas_json(&snap.quotas)),
        Page::Parents => (200, "application/json", parents_json(&snap.parents)),
        Page::NotFound | Page::Pac => (
            404,
            "text/plain; charset=utf-8",
            "404 Not Found\n".to_string(),
        ),
    };
    reply(status, ctype, &body, head_only)
}

/// The reply to a request for the PAC file: `script`, or 404 without
/// `[pac]`.
pub fn pac(script: Option<&str>, head_only: bool) -> Vec<u8> {
    match script {
        Some(js) => reply(200, crate::pac::CONTENT_TYPE, js, head_only),
        None => respond_not_found(head_only),
    }
}

fn respond_not_found(head_only: bool) -> Vec<u8> {
    reply(
        404,
        "text/plain; charset=utf-8",
        "404 Not Found\n",
        head_only,
    )
}

/// A plain-text error reply.
pub fn error(status: u16) -> Vec<u8> {
    let reason = crate::http::reason_phrase(status);
    reply(
        status,
        "text/plain; charset=utf-8",
        &format!("{status} {reason}\n"),
        false,
    )
}

fn reply(status: u16, ctype: &str, body: &str, head_only: bool) -> Vec<u8> {
    let reason = crate::http::reason_phrase(status);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // Keeps the JSON safe to inline in a page.
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// `GET /connections`: one object per connection in flight.
pub fn connections_json(snap: &Snapshot) -> String {
    let mut o = String::from("[");
    for (i, c) in snap.connections.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"id\":");
        json_str(&mut o, &c.id);
        o.push_str(",\"service\":");
        json_str(&mut o, &c.service);
        o.push_str(",\"client\":");
        json_str(&mut o, &c.client);
        o.push_str(",\"user\":");
        json_opt(&mut o, c.user.as_deref());
        o.push_str(",\"destination\":");
        json_opt(&mut o, c.destination.as_deref());
        o.push_str(",\"state\":");
        json_str(&mut o, c.state);
        let _ = write!(
            o,
            ",\"age_ms\":{},\"bytes_up\":{},\"bytes_down\":{}}}",
            c.age_ms, c.bytes_up, c.bytes_down
        );
    }
    o.push_str("]\n");
    o
}

/// `GET /services`: the services with their counters.
pub fn services_json(snap: &Snapshot) -> String {
    let mut o = String::from("[");
    for (i, s) in snap.services.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        json_str(&mut o, &s.name);
        o.push_str(",\"kind\":");
        json_str(&mut o, s.kind);
        o.push_str(",\"listen\":[");
        for (j, l) in s.listen.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            json_str(&mut o, l);
        }
        let _ = write!(
            o,
            "],\"active\":{},\"total\":{},\"bytes_up\":{},\"bytes_down\":{}",
            s.active,
            s.counters.connections,
            s.counters.up + s.live_up,
            s.counters.down + s.live_down
        );
        let c = &s.counters;
        o.push_str(",\"refused\":");
        json_counts(&mut o, c.refused.iter().map(|(k, n)| (k.to_string(), *n)));
        o.push_str(",\"connect_errors\":");
        json_counts(
            &mut o,
            c.connect_errors.iter().map(|(k, n)| (k.to_string(), *n)),
        );
        o.push_str(",\"http_responses\":");
        json_counts(
            &mut o,
            c.http_responses.iter().map(|(k, n)| (k.to_string(), *n)),
        );
        o.push('}');
    }
    o.push_str("]\n");
    o
}

/// A JSON object of counts by key.
fn json_counts(out: &mut String, counts: impl Iterator<Item = (String, u64)>) {
    out.push('{');
    for (i, (key, n)) in counts.enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, &key);
        let _ = write!(out, ":{n}");
    }
    out.push('}');
}

/// A Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`, in the Prometheus text format.
pub fn metrics(snap: &Snapshot) -> String {
    let mut o = String::new();
    o.push_str("# HELP portico_connections_total Client connections accepted.\n");
    o.push_str("# TYPE portico_connections_total counter\n");
    for s in &snap.services {
        let _ = writeln!(
            o,
            "portico_connections_total{{service=\"{}\"}} {}",
            label(&s.name),
            s.counters.connections
        );
    }
    o.push_str("# HELP portico_connections_active Client connections open now.\n");
    o.push_str("# TYPE portico_connections_active gauge\n");
    for s in &snap.services {
        let _ = writeln!(
            o,
            "portico_connections_active{{service=\"{}\"}} {}",
            label(&s.name),
            s.active
        );
    }
    o.push_str("# HELP portico_bytes_total Bytes relayed, up (from clients) and down (to them).\n");
    o.push_str("# TYPE portico_bytes_total counter\n");
    for s in &snap.services {
        let n = label(&s.name);
        let _ = writeln!(
            o,
            "portico_bytes_total{{service=\"{n}\",direction=\"up\"}} {}",
            s.counters.up + s.live_up
        );
        let _ = writeln!(
            o,
            "portico_bytes_total{{service=\"{n}\",direction=\"down\"}} {}",
            s.counters.down + s.live_down
        );
    }
    o.push_str(
        "# HELP portico_refused_total Connections and requests refused by the proxy, by reason.\n",
    );
    o.push_str("# TYPE portico_refused_total counter\n");
    for s in &snap.services {
        for (reason, n) in &s.counters.refused {
            let _ = writeln!(
                o,
                "portico_refused_total{{service=\"{}\",reason=\"{reason}\"}} {n}",
                label(&s.name)
            );
        }
    }
    o.push_str(
        "# HELP portico_connect_errors_total Connections to a destination that failed, by cause.\n",
    );
    o.push_str("# TYPE portico_connect_errors_total counter\n");
    for s in &snap.services {
        for (cause, n) in &s.counters.connect_errors {
            let _ = writeln!(
                o,
                "portico_connect_errors_total{{service=\"{}\",cause=\"{cause}\"}} {n}",
                label(&s.name)
            );
        }
    }
    // The login counters show once a service has one (a proxy without
    // users says nothing of them).
    if snap
        .services
        .iter()
        .any(|s| !s.counters.auth_failures.is_empty())
    {
        o.push_str("# HELP portico_auth_failures_total Failed logins, by reason.\n");
        o.push_str("# TYPE portico_auth_failures_total counter\n");
        for s in &snap.services {
            for (reason, n) in &s.counters.auth_failures {
                let _ = writeln!(
                    o,
                    "portico_auth_failures_total{{service=\"{}\",reason=\"{reason}\"}} {n}",
                    label(&s.name)
                );
            }
        }
    }
    if snap.services.iter().any(|s| s.counters.password_checks > 0) {
        o.push_str(
            "# HELP portico_password_checks_total Password hashes checked (argon2 run; a verdict from the cache is not counted).\n",
        );
        o.push_str("# TYPE portico_password_checks_total counter\n");
        for s in snap
            .services
            .iter()
            .filter(|s| s.counters.password_checks > 0)
        {
            let _ = writeln!(
                o,
                "portico_password_checks_total{{service=\"{}\"}} {}",
                label(&s.name),
                s.counters.password_checks
            );
        }
    }
    if snap.services.iter().any(|s| s.counters.tls_failures > 0) {
        o.push_str(
            "# HELP portico_tls_failures_total TLS handshakes that failed (plain text to a TLS port included).\n",
        );
        o.push_str("# TYPE portico_tls_failures_total counter\n");
        for s in snap.services.iter().filter(|s| s.counters.tls_failures > 0) {
            let _ = writeln!(
                o,
                "portico_tls_failures_total{{service=\"{}\"}} {}",
                label(&s.name),
                s.counters.tls_failures
            );
        }
    }
    o.push_str(
        "# HELP portico_http_responses_total HTTP responses sent to clients (the proxy's own and relayed), by status code.\n",
    );
    o.push_str("# TYPE portico_http_responses_total counter\n");
    for s in &snap.services {
        for (code, n) in &s.counters.http_responses {
            let _ = writeln!(
                o,
                "portico_http_responses_total{{service=\"{}\",code=\"{code}\"}} {n}",
                label(&s.name)
            );
        }
    }
    o.push_str("# HELP portico_user_bytes_total Bytes relayed per authenticated user.\n");
    o.push_str("# TYPE portico_user_bytes_total counter\n");
    for (user, (up, down)) in &snap.users {
        let u = label(user);
        let _ = writeln!(
            o,
            "portico_user_bytes_total{{user=\"{u}\",direction=\"up\"}} {up}"
        );
        let _ = writeln!(
            o,
            "portico_user_bytes_total{{user=\"{u}\",direction=\"down\"}} {down}"
        );
    }
    // Only with counts: a configuration without quotas answers as before.
    if !snap.quotas.is_empty() {
        o.push_str(
            "# HELP portico_quota_used_bytes Bytes counted in the current period of a quota, \
             per user or client address.\n",
        );
        o.push_str("# TYPE portico_quota_used_bytes gauge\n");
    }
    for q in &snap.quotas {
        let _ = writeln!(
            o,
            "portico_quota_used_bytes{{quota=\"{}\",subject=\"{}\"}} {}",
            label(&q.quota),
            label(&q.subject),
            q.used_bytes
        );
    }
    parent_metrics(&snap.parents, &mut o);
    status_page::metrics(&snap.about, &mut o);
    o
}

/// `portico_parent_up` and `portico_parent_connects_total`, when there
/// are parents.
fn parent_metrics(parents: &[crate::parent::ParentRow], o: &mut String) {
    if parents.is_empty() {
        return;
    }
    o.push_str(
        "# HELP portico_parent_up Whether a parent proxy's address is up (1) or marked down (0).\n",
    );
    o.push_str("# TYPE portico_parent_up gauge\n");
    for p in parents {
        for a in &p.addresses {
            let _ = writeln!(
                o,
                "portico_parent_up{{parent=\"{}\",address=\"{}\"}} {}",
                label(&p.name),
                label(&a.address),
                u8::from(a.up)
            );
        }
    }
    o.push_str(
        "# HELP portico_parent_connects_total Connects (with their handshake) to a parent \
         proxy's address, by result.\n",
    );
    o.push_str("# TYPE portico_parent_connects_total counter\n");
    for p in parents {
        for a in &p.addresses {
            for (result, n) in &a.connects {
                let _ = writeln!(
                    o,
                    "portico_parent_connects_total{{parent=\"{}\",address=\"{}\",result=\"{result}\"}} {n}",
                    label(&p.name),
                    label(&a.address),
                );
            }
        }
    }
}

/// `GET /parents`: one object per parent, with its addresses.
pub fn parents_json(rows: &[crate::parent::ParentRow]) -> String {
    let mut o = String::from("[");
    for (i, p) in rows.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        json_str(&mut o, &p.name);
        let _ = write!(
            o,
            ",\"kind\":\"{}\",\"pick\":\"{}\",\"addresses\":[",
            p.kind, p.pick
        );
        for (j, a) in p.addresses.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            o.push_str("{\"address\":");
            json_str(&mut o, &a.address);
            let _ = write!(
                o,
                ",\"state\":\"{}\",\"failures\":{},\"retry_in_ms\":",
                if a.up { "up" } else { "down" },
                a.fails
            );
            match a.retry_in_ms {
                Some(ms) => {
                    let _ = write!(o, "{ms}");
                }
                None => o.push_str("null"),
            }
            o.push_str(",\"connects\":{");
            for (k, (r, n)) in a.connects.iter().enumerate() {
                if k > 0 {
                    o.push(',');
                }
                let _ = write!(o, "\"{r}\":{n}");
            }
            o.push_str("}}");
        }
        o.push_str("]}");
    }
    o.push_str("]\n");
    o
}

/// `GET /quotas`: one object per count.
pub fn quotas_json(rows: &[QuotaRow]) -> String {
    let mut o = String::from("[");
    for (i, q) in rows.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"quota\":");
        json_str(&mut o, &q.quota);
        o.push_str(",\"subject\":");
        json_str(&mut o, &q.subject);
        let _ = write!(
            o,
            ",\"used_bytes\":{},\"limit_bytes\":{},\"period_end\":",
            q.used_bytes, q.limit_bytes
        );
        json_str(&mut o, &q.period_end);
        o.push('}');
    }
    o.push_str("]\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let mut counters = ServiceCounters {
            connections: 5,
            up: 100,
            down: 200,
            ..Default::default()
        };
        counters.refused.insert("limit", 2);
        counters.connect_errors.insert("dns-failure", 3);
        counters.http_responses.insert(502, 3);
        Snapshot {
            services: vec![ServiceRow {
                name: "web".into(),
                kind: "http",
                listen: vec!["127.0.0.1:8080".into()],
                active: 1,
                counters,
                live_up: 1,
                live_down: 2,
            }],
            connections: vec![ConnRow {
                id: "0.1".into(),
                service: "web".into(),
                client: "127.0.0.1:5000".into(),
                user: None,
                destination: Some("10.0.0.1:80".into()),
                state: "relay",
                age_ms: 1500,
                bytes_up: 1,
                bytes_down: 2,
            }],
            users: [("alice".to_string(), (7, 8))].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_requests() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x"), Parse::More);
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parse::Get {
                page: Page::Metrics,
                head_only: false
            }
        );
        assert_eq!(
            parse(b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n"),
            Parse::Get {
                page: Page::Health,
                head_only: true
            }
        );
        assert_eq!(
            parse(b"GET /nope HTTP/1.1\r\n\r\n"),
            Parse::Get {
                page: Page::NotFound,
                head_only: false
            }
        );
        for path in ["/proxy.pac", "/wpad.dat"] {
            assert_eq!(
                parse(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()),
                Parse::Get {
                    page: Page::Pac,
                    head_only: false
                }
            );
        }
        let js = "function FindProxyForURL(url, host) {}";
        let reply = String::from_utf8_lossy(&pac(Some(js), false)).into_owned();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.contains("\r\nContent-Type: application/x-ns-proxy-autoconfig\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with(js), "{reply}");
        assert!(pac(None, false).starts_with(b"HTTP/1.1 404 "));
        assert_eq!(parse(b"POST / HTTP/1.1\r\n\r\n"), Parse::Bad(405));
        assert_eq!(parse(b"GET /\r\n\r\n"), Parse::Bad(400));
        assert_eq!(parse(&[b'a'; MAX_HEAD + 1]), Parse::Bad(431));
    }

    #[test]
    fn metrics_text() {
        let m = metrics(&snap());
        for line in [
            "portico_connections_total{service=\"web\"} 5",
            "portico_connections_active{service=\"web\"} 1",
            "portico_bytes_total{service=\"web\",direction=\"up\"} 101",
            "portico_bytes_total{service=\"web\",direction=\"down\"} 202",
            "portico_refused_total{service=\"web\",reason=\"limit\"} 2",
            "portico_connect_errors_total{service=\"web\",cause=\"dns-failure\"} 3",
            "portico_http_responses_total{service=\"web\",code=\"502\"} 3",
            "portico_user_bytes_total{user=\"alice\",direction=\"up\"} 7",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing in\n{m}");
        }
    }

    #[test]
    fn services_json_has_the_counts() {
        assert_eq!(
            services_json(&snap()),
            "[{\"name\":\"web\",\"kind\":\"http\",\"listen\":[\"127.0.0.1:8080\"],\"active\":1,\
             \"total\":5,\"bytes_up\":101,\"bytes_down\":202,\"refused\":{\"limit\":2},\
             \"connect_errors\":{\"dns-failure\":3},\"http_responses\":{\"502\":3}}]\n"
        );
    }

    #[test]
    fn merged_workers_add_their_counts() {
        let mut a = snap();
        let mut b = snap();
        b.services[0].counters.refused.insert("port-denied", 1);
        b.services[0].counters.http_responses.insert(200, 4);
        a.merge(b);
        let c = &a.services[0].counters;
        assert_eq!(c.refused.get("limit"), Some(&4));
        assert_eq!(c.refused.get("port-denied"), Some(&1));
        assert_eq!(c.connect_errors.get("dns-failure"), Some(&6));
        assert_eq!(c.http_responses.get(&502), Some(&6));
        assert_eq!(c.http_responses.get(&200), Some(&4));
    }

    #[test]
    fn login_counters_merge_and_show() {
        let m = metrics(&snap());
        assert!(!m.contains("portico_auth_failures_total"), "{m}");
        assert!(!m.contains("portico_password_checks_total"), "{m}");
        let mut a = snap();
        let mut b = snap();
        a.services[0].counters.auth_failures.insert("wrong", 2);
        a.services[0].counters.password_checks = 3;
        b.services[0].counters.auth_failures.insert("wrong", 1);
        b.services[0]
            .counters
            .auth_failures
            .insert("unknown-user", 5);
        b.services[0].counters.password_checks = 4;
        a.merge(b);
        let m = metrics(&a);
        for line in [
            "portico_auth_failures_total{service=\"web\",reason=\"wrong\"} 3",
            "portico_auth_failures_total{service=\"web\",reason=\"unknown-user\"} 5",
            "portico_password_checks_total{service=\"web\"} 7",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing in\n{m}");
        }
    }

    #[test]
    fn quotas_are_json_and_metrics() {
        let mut s = snap();
        s.quotas = vec![QuotaRow {
            quota: "daily".into(),
            subject: "al\"ice".into(),
            used_bytes: 5,
            limit_bytes: 10,
            period_end: "2026-12-07T00:00:00+01:00".into(),
        }];
        assert_eq!(
            quotas_json(&s.quotas),
            "[{\"quota\":\"daily\",\"subject\":\"al\\\"ice\",\"used_bytes\":5,\
             \"limit_bytes\":10,\"period_end\":\"2026-12-07T00:00:00+01:00\"}]\n"
        );
        let m = metrics(&s);
        let line = "portico_quota_used_bytes{quota=\"daily\",subject=\"al\\\"ice\"} 5";
        assert!(m.lines().any(|l| l == line), "{m}");
        let mut other = snap();
        other.quotas = s.quotas.clone();
        let mut merged = snap();
        merged.merge(other);
        assert_eq!(merged.quotas, s.quotas);
    }

    #[test]
    fn connections_are_json() {
        let j = connections_json(&snap());
        assert_eq!(
            j,
            "[{\"id\":\"0.1\",\"service\":\"web\",\"client\":\"127.0.0.1:5000\",\"user\":null,\
             \"destination\":\"10.0.0.1:80\",\"state\":\"relay\",\"age_ms\":1500,\"bytes_up\":1,\
             \"bytes_down\":2}]\n"
        );
        let mut s = snap();
        s.connections[0].user = Some("</script>".into());
        assert!(!connections_json(&s).contains("</script>"));
    }

    #[test]
    fn responses() {
        let r = respond(Page::Health, false, &snap());
        assert!(r.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(r.ends_with(b"\r\n\r\nok\n"));
        let r = respond(Page::Health, true, &snap());
        assert!(r.ends_with(b"\r\n\r\n"));
        let page = String::from_utf8(respond(Page::Html, false, &snap())).unwrap();
        assert!(page.contains("<td>web</td>"));
        assert!(page.contains("\"10.0.0.1:80\""));
    }
}
