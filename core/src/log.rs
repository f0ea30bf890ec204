//! The access log: one record per finished connection (per request for
//! http), formatted as the text line `docs/configuration.md` shows or as one
//! JSON object.
//!
//! The core has no clock, so a record carries no wall time; the runtime passes
//! the wall-clock time when it writes the line.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;
use crate::outcome::Cause;

/// What a SOCKS UDP association carried: datagrams relayed each way, and
/// those dropped for any reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramCounts {
    pub up: u64,
    pub down: u64,
    pub dropped: u64,
}

/// A finished connection.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessRecord {
    pub service: Arc<str>,
    pub client: SocketAddr,
    pub user: Option<String>,
    /// `CONNECT`, `GET`, … for http; `TCP` for a mapped port.
    pub method: Cow<'static, str>,
    /// What the client asked for (for a mapped port, its destination).
    pub target: String,
    /// The address actually connected to, if any.
    pub destination: Option<SocketAddr>,
    /// The HTTP status for http; an outcome word for the others
    /// (`ok`, `refused`, `timeout`, `unreachable`, `error`, `idle`, `limit`,
    /// `shutdown`).
    pub status: String,
    pub up: u64,
    pub down: u64,
    pub duration: Duration,
    /// Why it was refused or could not connect, if it was: ` err=CAUSE`
    /// after the duration (JSON `"error"`), only when there is one.
    pub error: Option<Cause>,
    /// The number (from 1, in the configuration's order) of the
    /// `[[rule]]` that allowed or denied it: ` rule=N` after `err=` (JSON
    /// `"rule"`), only when a rule decided.
    pub rule: Option<u32>,
    /// The parent proxy it went through (`via`): ` via=NAME` after
    /// `rule=` (JSON `"via"`), only when there was one.
    pub via: Option<String>,
    /// A SOCKS UDP association's datagram counts: ` datagrams_up=N
    /// datagrams_down=N dropped=N` right after the duration (JSON
    /// `"datagrams_up"`, `"datagrams_down"`, `"dropped"`).
    pub datagrams: Option<DatagramCounts>,
}

// By hand so that a record without datagram counts or a parent reads as
// it always has (recorded traces compare these lines).
impl std::fmt::Debug for AccessRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("AccessRecord");
        d.field("service", &self.service)
            .field("client", &self.client)
            .field("user", &self.user)
            .field("method", &self.method)
            .field("target", &self.target)
            .field("destination", &self.destination)
            .field("status", &self.status)
            .field("up", &self.up)
            .field("down", &self.down)
            .field("duration", &self.duration)
            .field("error", &self.error)
            .field("rule", &self.rule);
        if let Some(c) = &self.datagrams {
            d.field("datagrams", c);
        }
        if let Some(v) = &self.via {
            d.field("via", v);
        }
        d.finish()
    }
}

impl AccessRecord {
    /// The line to write, without a trailing newline.
    pub fn format(&self, wall: SystemTime, format: LogFormat) -> String {
        let ts = rfc3339_millis(wall);
        let user = self.user.as_deref();
        let dest = self.destination.map(|d| d.to_string());
        let secs = self.duration.as_secs_f64();
        match format {
            LogFormat::Text => {
                let mut s = format!(
                    "{ts} {} {} {} {} {} {} {} up={} down={} {secs:.3}s",
                    self.service,
                    self.client,
                    user.map_or(Cow::Borrowed("-"), text_field),
                    self.method,
                    text_field(&self.target),
                    dest.as_deref().unwrap_or("-"),
                    self.status,
                    self.up,
                    self.down,
                );
                if let Some(c) = &self.datagrams {
                    let _ = write!(
                        s,
                        " datagrams_up={} datagrams_down={} dropped={}",
                        c.up, c.down, c.dropped
                    );
                }
                // Always in this order: rule, via, err.
                if let Some(n) = self.rule {
                    let _ = write!(s, " rule={n}");
                }
                if let Some(v) = &self.via {
                    let _ = write!(s, " via={}", text_field(v));
                }
                if let Some(c) = self.error {
                    let _ = write!(s, " err={c}");
                }
                s
            }
            LogFormat::Json => {
                let mut s = String::with_capacity(192);
                s.push_str("{\"time\":");
                json_str(&mut s, &ts);
                s.push_str(",\"service\":");
                json_str(&mut s, &self.service);
                s.push_str(",\"client\":");
                json_str(&mut s, &self.client.to_string());
                s.push_str(",\"user\":");
                match user {
                    Some(u) => json_str(&mut s, u),
                    None => s.push_str("null"),
                }
                s.push_str(",\"method\":");
                json_str(&mut s, &self.method);
                s.push_str(",\"target\":");
                json_str(&mut s, &self.target);
                s.push_str(",\"destination\":");
                match &dest {
                    Some(d) => json_str(&mut s, d),
                    None => s.push_str("null"),
                }
                s.push_str(",\"status\":");
                json_str(&mut s, &self.status);
                let _ = write!(
                    s,
                    ",\"up\":{},\"down\":{},\"duration_ms\":{}",
                    self.up,
                    self.down,
                    self.duration.as_millis()
                );
                if let Some(c) = &self.datagrams {
                    let _ = write!(
                        s,
                        ",\"datagrams_up\":{},\"datagrams_down\":{},\"dropped\":{}",
                        c.up, c.down, c.dropped
                    );
                }
                if let Some(c) = self.error {
                    let _ = write!(s, ",\"error\":\"{c}\"");
                }
                if let Some(n) = self.rule {
                    let _ = write!(s, ",\"rule\":{n}");
                }
                if let Some(v) = &self.via {
                    s.push_str(",\"via\":");
                    json_str(&mut s, v);
                }
                s.push('}');
                s
            }
        }
    }
}

/// A field of the text format: no spaces or control bytes (a peer's bytes
/// must never forge a second field or line). Borrowed when nothing needs
/// replacing (the usual case: one record per request).
fn text_field(s: &str) -> Cow<'_, str> {
    if s.is_empty() {
        return Cow::Borrowed("-");
    }
    let forging = |c: char| c.is_whitespace() || c.is_control();
    if !s.contains(forging) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if forging(c) { '_' } else { c })
            .collect(),
    )
}

/// `s` as a JSON string; runs with nothing to escape are copied whole.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    // Everything escaped is ASCII, so a byte at a time finds it and never
    // cuts a character.
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// `2026-11-23T19:30:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AccessRecord {
        AccessRecord {
            service: "web".into(),
            client: "192.168.1.5:53211".parse().unwrap(),
            user: Some("alice".into()),
            method: "CONNECT".into(),
            target: "example.com:443".into(),
            destination: Some("93.184.216.34:443".parse().unwrap()),
            status: "200".into(),
            up: 1234,
            down: 56789,
            duration: Duration::from_millis(1234),
            error: None,
            rule: None,
            datagrams: None,
            via: None,
        }
    }

    #[test]
    fn datagram_counts_follow_the_duration() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_462_200_123);
        let mut r = rec();
        r.method = "UDP-ASSOCIATE".into();
        r.datagrams = Some(DatagramCounts {
            up: 3,
            down: 2,
            dropped: 1,
        });
        r.error = Some(Cause::Denied);
        assert!(r
            .format(t, LogFormat::Text)
            .ends_with(" 1.234s datagrams_up=3 datagrams_down=2 dropped=1 err=denied"));
        let json = r.format(t, LogFormat::Json);
        assert!(
            json.contains(",\"datagrams_up\":3,\"datagrams_down\":2,\"dropped\":1"),
            "{json}"
        );
        assert!(!rec().format(t, LogFormat::Text).contains("datagrams"));
        // Records without counts read as they always have (recorded traces).
        assert!(!format!("{:?}", rec()).contains("datagrams"));
        assert!(format!("{r:?}").contains("datagrams: DatagramCounts"));
    }

    #[test]
    fn the_deciding_rule_comes_last() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_462_200_123);
        let mut r = rec();
        r.rule = Some(3);
        assert!(
            r.format(t, LogFormat::Text).ends_with(" 1.234s rule=3"),
            "{}",
            r.format(t, LogFormat::Text)
        );
        r.status = "403".into();
        r.error = Some(Cause::Denied);
        assert!(r
            .format(t, LogFormat::Text)
            .ends_with(" 1.234s rule=3 err=denied"));
        let json = r.format(t, LogFormat::Json);
        assert!(
            json.ends_with(",\"error\":\"denied\",\"rule\":3}"),
            "{json}"
        );
        assert!(!rec().format(t, LogFormat::Json).contains("rule"));
        assert!(!rec().format(t, LogFormat::Text).contains("rule"));
    }

    #[test]
    fn the_cause_follows_the_duration() {
        let mut r = rec();
        r.status = "502".into();
        r.error = Some(Cause::DnsFailure);
        let t = UNIX_EPOCH + Duration::from_millis(1_795_462_200_123);
        assert_eq!(
            r.format(t, LogFormat::Text),
            "2026-11-23T19:30:00.123Z web 192.168.1.5:53211 alice CONNECT example.com:443 \
             93.184.216.34:443 502 up=1234 down=56789 1.234s err=dns-failure"
        );
        let json = r.format(t, LogFormat::Json);
        assert!(
            json.ends_with("\"duration_ms\":1234,\"error\":\"dns-failure\"}"),
            "{json}"
        );
        assert!(!rec().format(t, LogFormat::Json).contains("error"));
    }

    #[test]
    fn text_line_matches_spec() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_462_200_123);
        assert_eq!(
            rec().format(t, LogFormat::Text),
            "2026-11-23T19:30:00.123Z web 192.168.1.5:53211 alice CONNECT example.com:443 \
             93.184.216.34:443 200 up=1234 down=56789 1.234s"
        );
    }

    #[test]
    fn json_line_escapes() {
        let mut r = rec();
        r.target = "a\"b\nc".into();
        r.user = None;
        let line = r.format(UNIX_EPOCH, LogFormat::Json);
        assert!(
            line.starts_with("{\"time\":\"1970-01-01T00:00:00.000Z\""),
            "{line}"
        );
        assert!(line.contains("\"target\":\"a\\\"b\\nc\""), "{line}");
        assert!(line.contains("\"user\":null"), "{line}");
        assert!(line.ends_with("\"duration_ms\":1234}"), "{line}");
    }

    /// Every character a JSON string may not hold raw is escaped, the rest
    /// (multi-byte ones too) copied, wherever it falls in the string.
    #[test]
    fn json_strings_escape_exactly_what_they_must() {
        let mut out = String::new();
        json_str(&mut out, "");
        assert_eq!(out, "\"\"");
        for (raw, want) in [
            ("plain", "plain"),
            ("\"", "\\\""),
            ("a\\b", "a\\\\b"),
            ("\tx\r\n", "\\tx\\r\\n"),
            ("\u{1}\u{1f}\u{7f}", "\\u0001\\u001f\u{7f}"),
            ("é\"ü\n日本", "é\\\"ü\\n日本"),
            ("end\"", "end\\\""),
        ] {
            let mut out = String::new();
            json_str(&mut out, raw);
            assert_eq!(out, format!("\"{want}\""), "{raw:?}");
        }
    }

    #[test]
    fn text_fields_cannot_forge_fields() {
        assert_eq!(text_field(""), "-");
        assert_eq!(text_field("a\u{85}b\u{2003}c\td"), "a_b_c_d");
        assert!(matches!(text_field("example.com:443"), Cow::Borrowed(_)));
        let mut r = rec();
        r.target = "x y\nz".into();
        let line = r.format(UNIX_EPOCH, LogFormat::Text);
        assert!(line.contains(" x_y_z "), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
