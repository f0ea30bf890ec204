//! Parsers for the scalar value formats of the configuration: durations,
//! sizes, rates, ports and port ranges, days, hours, host names, `host:port`
//! destinations, listen addresses and IP networks.
//!
//! Each parser takes the text of one value and returns the parsed value or a
//! message saying what is wrong; the caller attaches the position.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;
use toml::Value;

use super::{DestPattern, Destination, Host};

/// The longest duration accepted anywhere (365 days), so that a runtime can
/// always add it to the current time without overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const DURATION_HINT: &str =
    "write a whole number with a unit: ms, s, m, h or d (e.g. \"250ms\", \"10s\", \"5m\"), \
     or a bare integer number of seconds";
const SIZE_HINT: &str = "write a whole number with a unit: B, KB, KiB, MB, MiB, GB or GiB \
     (e.g. \"64KiB\"), or a bare integer number of bytes";
const RATE_HINT: &str = "write a size per second, e.g. \"1MiB/s\", \"500KiB/s\", \"100KB/s\", \
     or a bare integer number of bytes per second";

/// The TOML type name of `v`, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Splits `s` (trimmed) into its leading decimal digits and the rest (trimmed).
fn split_number(s: &str) -> (&str, &str) {
    let t = s.trim();
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    (num, unit.trim())
}

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"2d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(format!("\"{s}\" is not a duration; {DURATION_HINT}"));
    }
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!(
                "duration \"{s}\" has no unit; write \"{num}s\" for seconds, or another unit: \
                 ms, s, m, h or d"
            ))
        }
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in duration \"{s}\"; {DURATION_HINT}"
            ))
        }
    };
    let too_long = || {
        format!(
            "duration \"{s}\" is too long; the longest accepted is {} days",
            MAX_DURATION.as_secs() / 86_400
        )
    };
    let n: u64 = num.parse().map_err(|_| too_long())?;
    let ms = n
        .checked_mul(ms_per_unit)
        .filter(|&ms| u128::from(ms) <= MAX_DURATION.as_millis())
        .ok_or_else(too_long)?;
    Ok(Duration::from_millis(ms))
}

/// A duration value: a string as in [`parse_duration`] or an integer number
/// of seconds.
pub fn duration_value(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        Value::Integer(i) if *i < 0 => Err(format!("a duration cannot be negative ({i})")),
        Value::Integer(i) => {
            let secs = u64::try_from(*i).unwrap_or(u64::MAX);
            if secs > MAX_DURATION.as_secs() {
                Err(format!(
                    "duration {i} s is too long; the longest accepted is {} days",
                    MAX_DURATION.as_secs() / 86_400
                ))
            } else {
                Ok(Duration::from_secs(secs))
            }
        }
        other => Err(format!(
            "expected a duration, found {}; {DURATION_HINT}",
            type_name(other)
        )),
    }
}

/// `"64KiB"`, `"1MiB"`, `"512B"`, `"16KB"` (units case-insensitive; KB = 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(format!("\"{s}\" is not a size; {SIZE_HINT}"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "" => {
            return Err(format!(
                "size \"{s}\" has no unit; write \"{num}B\" for bytes, or use KB, KiB, MB, MiB, \
                 GB or GiB"
            ))
        }
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in size \"{s}\"; {SIZE_HINT}"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

/// A size value: a string as in [`parse_size`] or an integer number of bytes.
pub fn size_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_size(s),
        Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| format!("a size cannot be negative ({i})"))
        }
        other => Err(format!(
            "expected a size, found {}; {SIZE_HINT}",
            type_name(other)
        )),
    }
}

/// `"1MiB/s"`, `"500KiB/s"`, `"100KB/s"`, `"10B/s"`: bytes per second, > 0.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let Some(size) = lower.strip_suffix("/s") else {
        return Err(format!("\"{s}\" is not a rate; {RATE_HINT}"));
    };
    let n = parse_size(size).map_err(|_| format!("\"{s}\" is not a rate; {RATE_HINT}"))?;
    if n == 0 {
        return Err(format!(
            "rate \"{s}\" is zero; to block traffic use action = \"deny\""
        ));
    }
    Ok(n)
}

/// A rate value: a string as in [`parse_rate`] or an integer number of bytes
/// per second.
pub fn rate_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_rate(s),
        Value::Integer(i) if *i <= 0 => Err(format!(
            "a rate must be more than 0 bytes per second ({i}); to block traffic use \
             action = \"deny\""
        )),
        Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("bad rate {i}")),
        other => Err(format!(
            "expected a rate, found {}; {RATE_HINT}",
            type_name(other)
        )),
    }
}

fn port_out_of_range(shown: &str) -> String {
    format!("port {shown} is out of range; ports go from 1 to 65535")
}

/// A port number from a TOML integer: 1 to 65535.
pub fn port_from_int(i: i64) -> Result<u16, String> {
    match u16::try_from(i) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(port_out_of_range(&i.to_string())),
    }
}

/// A port number written as decimal digits: 1 to 65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{s}\" is not a port number (1 to 65535)"));
    }
    match t.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(port_out_of_range(t)),
    }
}

/// A port or port range in a rule: `25`, `"25"` or `"6660-6669"`.
pub fn port_range_value(v: &Value) -> Result<RangeInclusive<u16>, String> {
    match v {
        Value::Integer(i) => port_from_int(*i).map(|p| p..=p),
        Value::String(s) => {
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (parse_port(a)?, parse_port(b)?),
                None => {
                    let p = parse_port(s)?;
                    (p, p)
                }
            };
            if a > b {
                return Err(format!(
                    "port range \"{s}\" starts after it ends; write \"{b}-{a}\""
                ));
            }
            Ok(a..=b)
        }
        other => Err(format!(
            "expected a port (25) or a port range (\"6660-6669\"), found {}",
            type_name(other)
        )),
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_FULL_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// 0 = Monday … 6 = Sunday.
fn day_index(s: &str) -> Result<u8, String> {
    let l = s.trim().to_ascii_lowercase();
    (0u8..7)
        .find(|&i| DAY_NAMES[usize::from(i)] == l || DAY_FULL_NAMES[usize::from(i)] == l)
        .ok_or_else(|| {
            format!(
                "\"{}\" is not a day; days are mon tue wed thu fri sat sun",
                s.trim()
            )
        })
}

/// One `days` entry: `"mon"` or a range `"mon-fri"` (which may wrap past
/// Sunday: `"fri-mon"`). Returns the bitmask, bit 0 = Monday.
pub fn parse_days(s: &str) -> Result<u8, String> {
    match s.split_once('-') {
        None => Ok(1 << day_index(s)?),
        Some((a, b)) => {
            let a = day_index(a)?;
            let b = day_index(b)?;
            let mut mask = 0u8;
            let mut d = a;
            loop {
                mask |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
            Ok(mask)
        }
    }
}

/// `"HH:MM"`, 00:00 to 24:00, as minutes since midnight.
fn parse_time(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// `"HH:MM-HH:MM"`: start included, end excluded, may cross midnight.
/// Returns minutes since midnight; the end may be 1440 (24:00).
pub fn parse_hours(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "\"{s}\" is not an hour range; write \"HH:MM-HH:MM\" with times from 00:00 to 24:00, \
             e.g. \"08:00-18:00\" or \"22:00-06:00\""
        )
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start = parse_time(a).ok_or_else(bad)?;
    let end = parse_time(b).ok_or_else(bad)?;
    if start == 24 * 60 {
        return Err(format!(
            "hours \"{s}\" starts at 24:00; write 00:00 instead (24:00 can only end a range)"
        ));
    }
    if start == end {
        return Err(format!(
            "hours \"{s}\" starts and ends at the same time; for all day remove the hours key \
             (or write \"00:00-24:00\")"
        ));
    }
    Ok((start, end))
}

/// A DNS host name: letters, digits, hyphens and underscores in dot-separated labels of
/// 1 to 63 characters (no leading or trailing hyphen), 253 characters at
/// most, not all-numeric at the end. One trailing dot is dropped. Returns
/// the name lower-cased.
pub fn parse_dns_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    let bad = |why: &str| format!("\"{s}\" is not a valid host name: {why}");
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 253 {
        return Err(bad("it is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad(
                "it has an empty label (two dots in a row, or a leading dot)",
            ));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(bad(&format!(
                "'{}' is not allowed (letters, digits, '-', '_' and '.' only)",
                c.escape_default()
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("it is neither an IP address nor a name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Splits `host:port` / `[v6]:port` / `host` / `[v6]` / bare IPv6.
/// Returns the host text, whether it was in brackets, and the port text.
fn split_host_port(s: &str) -> Result<(&str, bool, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("\"{s}\" has a '[' without its ']'"));
        };
        return match after {
            "" => Ok((host, true, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, true, Some(p))),
                None => Err(format!(
                    "\"{s}\": expected ':' and a port after ']', e.g. \"[{host}]:22\""
                )),
            },
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, false, None)),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            Ok((h, false, Some(p)))
        }
        // A bare IPv6 address (never with a port: that would be ambiguous).
        _ => Ok((s, false, None)),
    }
}

/// A `destination`: `"192.168.1.20:22"`, `"[2001:db8::1]:22"`,
/// `"mail.example.net:25"`. Without a port, `default_port` is used when
/// there is one.
pub fn parse_destination(s: &str, default_port: Option<u16>) -> Result<Destination, String> {
    let t = s.trim();
    let (host_text, bracketed, port_text) = split_host_port(t)?;
    let host = if let Ok(ip) = host_text.parse::<IpAddr>() {
        if bracketed && ip.is_ipv4() {
            return Err(format!(
                "\"{s}\": only IPv6 addresses go in brackets; write \"{ip}:PORT\""
            ));
        }
        Host::Ip(ip)
    } else if bracketed {
        return Err(format!("\"{s}\": \"{host_text}\" is not an IPv6 address"));
    } else if host_text.contains(':') {
        return Err(format!(
            "\"{s}\" is not host:port; write an IPv6 address in brackets, e.g. \"[2001:db8::1]:22\""
        ));
    } else {
        Host::Name(parse_dns_name(host_text)?)
    };
    let port = match (port_text, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(d)) => d,
        (None, None) => {
            let example = match &host {
                Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:22"),
                h => format!("{h}:22"),
            };
            if let (Host::Ip(IpAddr::V6(_)), false) = (&host, bracketed) {
                return Err(format!(
                    "\"{s}\" has no port; write an IPv6 address in brackets with the port, \
                     e.g. \"{example}\""
                ));
            }
            return Err(format!(
                "\"{s}\" has no port; write host:port, e.g. \"{example}\""
            ));
        }
    };
    Ok(Destination { host, port })
}

/// A listen address: `"127.0.0.1:8080"` or `"[::1]:8080"`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let hint = "write ip:port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"";
    let (host_text, bracketed, port_text) = split_host_port(t)?;
    let ip: IpAddr = host_text
        .parse()
        .map_err(|_| format!("\"{s}\" is not an IP address and port; {hint}"))?;
    if ip.is_ipv6() && !bracketed {
        return Err(format!(
            "\"{s}\": write the IPv6 address in brackets with the port, e.g. \"[{ip}]:8080\""
        ));
    }
    if ip.is_ipv4() && bracketed {
        return Err(format!(
            "\"{s}\": only IPv6 addresses go in brackets; {hint}"
        ));
    }
    let Some(p) = port_text else {
        return Err(format!("listen address \"{s}\" has no port; {hint}"));
    };
    Ok(SocketAddr::new(ip, parse_port(p)?))
}

/// A plain IP address (no port, no prefix length).
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim().parse::<IpAddr>().map_err(|_| {
        format!(
            "\"{s}\" is not an IP address; write a plain address such as \"192.168.1.1\" or \
             \"fd00::1\" (no port, no /prefix, no brackets)"
        )
    })
}

/// An IP network `"10.0.0.0/8"`, or a bare IP meaning just that address
/// (a /32 or /128). Host bits are cleared (`"192.168.1.5/24"` is
/// 192.168.1.0/24).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    t.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        format!(
            "\"{s}\" is not an IP network; write an address (\"192.168.1.5\") or a network \
             (\"192.168.1.0/24\", \"fd00::/8\")"
        )
    })
}

/// A `destinations` entry of a rule: `"*.example.com"`, `"example.com"`,
/// `"10.0.0.0/8"`, `"10.1.2.3"`.
pub fn parse_dest_pattern(s: &str) -> Result<DestPattern, String> {
    let t = s.trim();
    if let Ok(net) = parse_net(t) {
        return Ok(DestPattern::Net(net));
    }
    if t == "*" {
        return Err(
            "\"*\" would match everything; leave out the destinations key to match anywhere"
                .to_string(),
        );
    }
    if let Some(rest) = t.strip_prefix("*.") {
        if rest.contains('*') {
            return Err(format!(
                "\"{s}\": '*' is only allowed as the first label, as in \"*.example.com\""
            ));
        }
        return parse_dns_name(rest).map(DestPattern::Suffix);
    }
    if t.contains('*') {
        return Err(format!(
            "\"{s}\": '*' is only allowed as the first label, as in \"*.example.com\""
        ));
    }
    if t.contains('/') {
        return Err(format!(
            "\"{s}\" is not an IP network; write e.g. \"10.0.0.0/8\" or \"fd00::/8\""
        ));
    }
    if t.contains(':') {
        return Err(format!(
            "\"{s}\": a destination pattern is a host name, \"*.domain\" or an IP network, \
             without a port; put ports in the rule's ports key"
        ));
    }
    parse_dns_name(t).map(DestPattern::Exact)
}
