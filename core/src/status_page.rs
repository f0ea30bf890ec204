//! The status page and what it draws from besides the services and
//! connections: the process ([`About`]: version, start, uptime, last
//! reload), the users with the most traffic, and the services' last
//! minutes (`crate::history`).
//!
//! The page (`status_page.html`) is static but for a few values filled in
//! here; its script then fetches the JSON answers (`/info`, `/services`,
//! `/connections`, `/users`, `/history`) every second and draws from
//! them, so the page shows nothing `/metrics` and the JSON do not.

use std::fmt::Write as _;
use std::time::Instant;

use crate::status::{json_str, Snapshot};

/// The version the page and `portico_build_info` show.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How many users `/users` (and the page) lists, most traffic first.
pub const TOP_USERS: usize = 10;

const PAGE: &str = include_str!("status_page.html");

/// The last time the configuration was loaded, from a table's point of
/// view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastReload {
    /// When, on the monotonic clock: orders what the workers' tables say
    /// (a reload that failed is known to the one table that read the file).
    pub when: Option<Instant>,
    /// When, as Unix seconds (wall clock).
    pub at: i64,
    pub ok: bool,
    /// Why it failed.
    pub message: Option<String>,
    /// The last load that succeeded (the start counts), Unix seconds.
    pub last_success: i64,
}

/// The process, as the status answers show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct About {
    /// When the process started, Unix seconds (0 while no runtime told the
    /// table the time).
    pub started: i64,
    /// The wall clock as of the answer, Unix seconds.
    pub now: i64,
    /// How long the process has run, on the monotonic clock.
    pub uptime_ms: u64,
    pub reload: LastReload,
}

impl About {
    /// Adds another table's account: the earliest start, the latest reload.
    pub fn merge(&mut self, other: About) {
        if self.started == 0 || (other.started != 0 && other.started < self.started) {
            self.started = other.started;
        }
        self.now = self.now.max(other.now);
        self.uptime_ms = self.uptime_ms.max(other.uptime_ms);
        let last_success = self.reload.last_success.max(other.reload.last_success);
        if other.reload.when > self.reload.when {
            self.reload = other.reload;
        }
        self.reload.last_success = last_success;
    }
}

/// `n` bytes in binary units, one decimal from KiB on (as the page's
/// script writes them too).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `GET /info`: version, start, uptime and the last reload.
pub fn info_json(a: &About) -> String {
    let mut o = String::new();
    o.push_str("{\"version\":");
    json_str(&mut o, VERSION);
    let r = &a.reload;
    let _ = write!(
        o,
        ",\"started\":{},\"now\":{},\"uptime_s\":{},\"reload\":{{\"at\":{},\"ok\":{},\"message\":",
        a.started,
        a.now,
        a.uptime_ms / 1000,
        r.at,
        r.ok
    );
    match &r.message {
        Some(m) => json_str(&mut o, m),
        None => o.push_str("null"),
    }
    let _ = writeln!(o, ",\"last_success\":{}}}}}", r.last_success);
    o
}

/// The users with the most traffic (both ways, finished and in flight),
/// at most `n`; ties by name.
pub fn top_users(snap: &Snapshot, n: usize) -> Vec<(&str, u64, u64)> {
    let mut users: Vec<(&str, u64, u64)> = snap
        .users
        .iter()
        .map(|(u, (up, down))| (u.as_str(), *up, *down))
        .collect();
    users.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(b.0)));
    users.truncate(n);
    users
}

/// `GET /users`: the [`TOP_USERS`] users with the most traffic.
pub fn users_json(snap: &Snapshot) -> String {
    let mut o = String::from("[");
    for (i, (user, up, down)) in top_users(snap, TOP_USERS).into_iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"user\":");
        json_str(&mut o, user);
        let _ = write!(o, ",\"bytes_up\":{up},\"bytes_down\":{down}}}");
    }
    o.push_str("]\n");
    o
}

/// The process's lines of `/metrics`.
pub fn metrics(a: &About, o: &mut String) {
    o.push_str("# HELP portico_build_info The version of Portico running.\n");
    o.push_str("# TYPE portico_build_info gauge\n");
    let _ = writeln!(o, "portico_build_info{{version=\"{VERSION}\"}} 1");
    o.push_str("# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n");
    o.push_str("# TYPE process_start_time_seconds gauge\n");
    let _ = writeln!(o, "process_start_time_seconds {}", a.started);
    o.push_str(
        "# HELP portico_config_last_reload_successful Whether the last configuration load \
         succeeded (1) or failed (0).\n",
    );
    o.push_str("# TYPE portico_config_last_reload_successful gauge\n");
    let _ = writeln!(
        o,
        "portico_config_last_reload_successful {}",
        u8::from(a.reload.ok)
    );
    o.push_str(
        "# HELP portico_config_last_reload_success_timestamp_seconds When the configuration \
         last loaded successfully (at start or on SIGHUP), since the Unix epoch in seconds.\n",
    );
    o.push_str("# TYPE portico_config_last_reload_success_timestamp_seconds gauge\n");
    let _ = writeln!(
        o,
        "portico_config_last_reload_success_timestamp_seconds {}",
        a.reload.last_success
    );
}

/// Text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// `GET /`: the page, with the services table and the connections as of
/// `snap` (its script redraws everything from the JSON answers at once and
/// every second).
pub fn html(snap: &Snapshot) -> String {
    let mut rows = String::new();
    for s in &snap.services {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            s.kind,
            esc(&s.listen.join(" ")),
            s.active,
            s.counters.connections,
            human_bytes(s.counters.up + s.live_up),
            human_bytes(s.counters.down + s.live_down)
        );
    }
    let mut parents = String::new();
    for p in &snap.parents {
        for a in &p.addresses {
            let count = |w: &str| {
                a.connects
                    .iter()
                    .find(|(r, _)| *r == w)
                    .map_or(0, |(_, n)| *n)
            };
            let failed: u64 = a
                .connects
                .iter()
                .filter(|(r, _)| *r != "ok")
                .map(|(_, n)| n)
                .sum();
            let _ = write!(
                parents,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.name),
                p.kind,
                esc(&a.address),
                if a.up { "up" } else { "down" },
                a.fails,
                count("ok"),
                failed
            );
        }
    }
    if parents.is_empty() {
        parents.push_str("<tr><td colspan=\"7\">none configured</td></tr>");
    }
    // One pass over the page: what is put in is never read for markers.
    let mut out = String::with_capacity(PAGE.len() + rows.len() + 1024);
    let mut rest = PAGE;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[at..]);
            rest = "";
            break;
        };
        match &after[..end] {
            "VERSION" => out.push_str(&esc(VERSION)),
            "SERVICE_ROWS" => out.push_str(&rows),
            "PARENT_ROWS" => out.push_str(&parents),
            // JSON escapes `<`, `>` and `&`: it cannot end the script.
            "CONNECTIONS" => out.push_str(crate::status::connections_json(snap).trim_end()),
            other => {
                out.push_str("{{");
                out.push_str(other);
                out.push_str("}}");
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ConnRow, ServiceCounters, ServiceRow};

    fn snap() -> Snapshot {
        Snapshot {
            services: vec![ServiceRow {
                name: "<web & co>".into(),
                kind: "http",
                listen: vec!["127.0.0.1:8080".into()],
                active: 1,
                counters: ServiceCounters {
                    connections: 3,
                    up: 2048,
                    down: 5 * 1024 * 1024,
                    ..Default::default()
                },
                live_up: 0,
                live_down: 0,
            }],
            connections: vec![ConnRow {
                id: "1".into(),
                service: "<web & co>".into(),
                client: "127.0.0.1:5000".into(),
                user: Some("</script><script>alert(1)</script>".into()),
                destination: None,
                state: "relay",
                age_ms: 10,
                bytes_up: 0,
                bytes_down: 0,
            }],
            users: [
                ("bob".to_string(), (10, 10)),
                ("alice".to_string(), (100, 0)),
                ("carol".to_string(), (10, 10)),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 + 1), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn the_page_escapes_what_it_is_given() {
        let page = html(&snap());
        assert!(page.contains("<td>&lt;web &amp; co&gt;</td>"), "{page}");
        assert!(!page.contains("<web & co>"));
        assert!(
            !page.contains("</script><script>alert"),
            "a user name closed the script"
        );
        assert!(page.contains("showConnections([{\"id\":\"1\""));
        assert!(page.contains("<td>2.0 KiB</td><td>5.0 MiB</td>"), "{page}");
        assert!(page.contains(VERSION));
        assert!(!page.contains("{{"), "every marker is filled");
    }

    #[test]
    fn the_page_draws_itself() {
        let page = html(&Snapshot::default());
        // Nothing from elsewhere: no external script, style or font.
        for needle in ["src=\"http", "href=\"http", "@import", "url("] {
            assert!(!page.contains(needle), "{needle} in the page");
        }
        for endpoint in ["/info", "/services", "/connections", "/users", "/history"] {
            assert!(
                page.contains(&format!("\"{endpoint}\"")),
                "{endpoint} not fetched"
            );
        }
    }

    #[test]
    fn top_users_most_traffic_first() {
        let s = snap();
        assert_eq!(
            top_users(&s, 2),
            vec![("alice", 100, 0), ("bob", 10, 10)],
            "ties go by name"
        );
        assert_eq!(
            users_json(&s),
            "[{\"user\":\"alice\",\"bytes_up\":100,\"bytes_down\":0},\
             {\"user\":\"bob\",\"bytes_up\":10,\"bytes_down\":10},\
             {\"user\":\"carol\",\"bytes_up\":10,\"bytes_down\":10}]\n"
        );
    }

    fn about(started: i64, when: Instant, ok: bool, message: Option<&str>, success: i64) -> About {
        About {
            started,
            now: started + 100,
            uptime_ms: 100_000,
            reload: LastReload {
                when: Some(when),
                at: started + 50,
                ok,
                message: message.map(String::from),
                last_success: success,
            },
        }
    }

    #[test]
    fn the_latest_reload_wins_a_merge() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(1);
        // Worker 0 saw the file fail to load after the success both saw.
        let mut a = about(1000, t0, true, None, 1040);
        a.merge(about(999, t1, false, Some("bad"), 1030));
        assert_eq!(a.started, 999);
        assert!(!a.reload.ok);
        assert_eq!(a.reload.message.as_deref(), Some("bad"));
        assert_eq!(a.reload.last_success, 1040);
        let mut b = about(999, t1, false, Some("bad"), 1030);
        b.merge(about(1000, t0, true, None, 1040));
        assert_eq!(a, b, "merging is symmetric");
        // A table never told the time does not make the start 0.
        let mut c = About::default();
        c.merge(about(1000, t0, true, None, 1000));
        assert_eq!(c.started, 1000);
    }

    #[test]
    fn info_json_and_metrics() {
        let t0 = Instant::now();
        let a = about(
            1_700_000_000,
            t0,
            false,
            Some("line 3: \"x\" <bad>"),
            1_700_000_040,
        );
        assert_eq!(
            info_json(&a),
            format!(
                "{{\"version\":\"{VERSION}\",\"started\":1700000000,\"now\":1700000100,\
                 \"uptime_s\":100,\"reload\":{{\"at\":1700000050,\"ok\":false,\"message\":\
                 \"line 3: \\\"x\\\" \\u003cbad\\u003e\",\"last_success\":1700000040}}}}\n"
            )
        );
        let mut m = String::new();
        metrics(&a, &mut m);
        for line in [
            format!("portico_build_info{{version=\"{VERSION}\"}} 1"),
            "process_start_time_seconds 1700000000".to_string(),
            "portico_config_last_reload_successful 0".to_string(),
            "portico_config_last_reload_success_timestamp_seconds 1700000040".to_string(),
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing in\n{m}");
        }
        for family in [
            "portico_build_info",
            "process_start_time_seconds",
            "portico_config_last_reload_successful",
            "portico_config_last_reload_success_timestamp_seconds",
        ] {
            assert!(m.contains(&format!("# TYPE {family} gauge\n")), "{family}");
        }
    }
}
