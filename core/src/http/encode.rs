//! Heads written for forwarding, and the proxy's own replies.

use std::ops::Range;

use super::error::HttpError;
use super::fields::{ConnectionOptions, Headers, Name};
use super::request::{Request, Target};
use super::response::Response;
use super::{Framing, Method, Version};
use crate::outcome::Cause;

/// The reply to a CONNECT that succeeded: no Content-Length, no
/// Transfer-Encoding; the tunnel starts after it.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Fields removed from every forwarded message (RFC 9110 §7.6.1, and Proxy-Connection and Proxy-Authorization),
/// besides those the Connection header names.
const HOP_BY_HOP: [Name; 7] = [
    Name::Connection,
    Name::KeepAlive,
    Name::ProxyConnection,
    Name::ProxyAuthorization,
    Name::Te,
    Name::Trailer,
    Name::Upgrade,
];

/// What [`encode_request_head`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The head to send upstream was appended to `out`.
    Upstream,
    /// Nothing was written: the proxy answers this request itself. That is a
    /// CONNECT (tunnel), `OPTIONS *`, or a TRACE / OPTIONS whose Max-Forwards
    /// is 0 (RFC 9110 §7.6.2).
    AnswerLocally,
}

/// How the proxy means to treat the client connection after a response; it
/// decides the Connection header [`encode_response_head`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Keep it open with HTTP/1.1 defaults: no Connection header.
    Default,
    /// Keep it open for an HTTP/1.0 client that asked: `Connection: keep-alive`.
    KeepAlive,
    /// Close it after this response: `Connection: close`.
    Close,
}

/// Appends to `out` the head to send upstream for `req`, or writes nothing
/// and says the proxy must answer (see [`Forward`]).
///
/// The request line is in origin-form with HTTP/1.1 (the proxy's own
/// version); `Host` is regenerated from the target and written first;
/// hop-by-hop fields and the fields Connection names are dropped, except that
/// an upgrade request keeps its Upgrade fields and gets `Connection: upgrade`;
/// a Content-Length is written once, as the single value it was checked to
/// hold; TRACE / OPTIONS get Max-Forwards decremented; `<version> portico` is
/// appended to the last Via, or added as a new Via field at the end. All other
/// fields are copied byte for byte, in order.
pub fn encode_request_head(req: &Request, out: &mut Vec<u8>) -> Forward {
    let (authority, path) = match &req.target {
        Target::Absolute { authority, path } => (authority, path),
        Target::Authority(_) | Target::Asterisk | Target::Origin(_) => {
            return Forward::AnswerLocally
        }
    };
    if req.method == Method::Connect || req.max_forwards_exhausted() {
        return Forward::AnswerLocally;
    }
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    authority.write_host_header(80, out);
    out.extend_from_slice(b"\r\n");
    let upgrading = req.upgrade.is_some();
    let max_forwards = req.max_forwards.map(|n| n.saturating_sub(1));
    write_fields(
        &req.headers,
        &req.connection,
        upgrading,
        req.framing,
        req.version,
        |kind| match (kind, max_forwards) {
            (Name::Host, _) => Special::Skip,
            (Name::MaxForwards, Some(n)) => Special::Number(n),
            _ => Special::Copy,
        },
        out,
    );
    if upgrading {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Forward::Upstream
}

/// Appends to `out` the head to send the client for `resp`.
///
/// The status line carries HTTP/1.1, the status and the reason as received;
/// hop-by-hop fields and those Connection names are dropped (a 101 keeps its
/// Upgrade fields and gets `Connection: upgrade`, whatever `persist` says);
/// Content-Length and Via as for [`encode_request_head`]; then the Connection
/// header `persist` asks for.
pub fn encode_response_head(resp: &Response, persist: Persist, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(decimal(u64::from(resp.status), &mut [0; 20]));
    out.push(b' ');
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    let upgrading = resp.status == 101;
    write_fields(
        &resp.headers,
        &resp.connection,
        upgrading,
        resp.framing,
        resp.version,
        |_| Special::Copy,
        out,
    );
    if upgrading {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else {
        match persist {
            Persist::Default => {}
            Persist::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Persist::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written into the end of `digits` (the formatting
/// machinery costs more than the head around it).
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// Writes `name: value`, with `suffix`'s pieces appended as one more list
/// element (a Via entry).
fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], suffix: Option<[&str; 2]>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    if let Some(parts) = suffix {
        if !value.is_empty() {
            out.extend_from_slice(b", ");
        }
        for p in parts {
            out.extend_from_slice(p.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What [`write_fields`] does with a field, as one encoder asks.
enum Special {
    /// Copy it (unless it is hop-by-hop or a Content-Length to rewrite).
    Copy,
    /// Leave it out.
    Skip,
    /// Write it with this number as its value.
    Number(u64),
}

/// The field loop shared by both encoders; `special` picks a field's fate
/// before the default rules. Fields copied as they are go out as runs of
/// the head's own lines, one copy per run.
fn write_fields(
    headers: &Headers,
    connection: &ConnectionOptions,
    upgrading: bool,
    framing: Framing,
    version: Version,
    special: impl Fn(Name) -> Special,
    out: &mut Vec<u8>,
) {
    let via = [version.via(), " portico"];
    let last_via = headers
        .spans()
        .enumerate()
        .filter(|(_, (kind, _, _))| *kind == Name::Via)
        .map(|(i, _)| i)
        .last();
    let raw = headers.raw();
    // Lines of `raw` still to copy as they are.
    let mut run = 0..0;
    let flush = |run: &mut Range<usize>, out: &mut Vec<u8>| {
        out.extend_from_slice(raw.get(run.clone()).unwrap_or_default());
        *run = 0..0;
    };
    let mut length_written = false;
    for (i, (kind, name_at, value_at)) in headers.spans().enumerate() {
        let name = raw.get(name_at.clone()).unwrap_or_default();
        let value = raw.get(value_at.clone()).unwrap_or_default();
        let keep_upgrade = upgrading && kind == Name::Upgrade;
        if !keep_upgrade && (HOP_BY_HOP.contains(&kind) || connection.names_raw(name)) {
            continue;
        }
        let number = match special(kind) {
            Special::Skip => continue,
            Special::Number(n) => Some(n),
            Special::Copy => match framing {
                Framing::Length(n) if kind == Name::ContentLength => {
                    if length_written {
                        continue;
                    }
                    length_written = true;
                    Some(n)
                }
                _ => None,
            },
        };
        if let Some(n) = number {
            flush(&mut run, out);
            write_field(out, name, decimal(n, &mut [0; 20]), None);
            continue;
        }
        if Some(i) == last_via {
            flush(&mut run, out);
            write_field(out, name, value, Some(via));
            continue;
        }
        // The line as received is `name: value` CRLF exactly: copy it whole.
        let line = name_at.start..value_at.end + 2;
        let verbatim = matches!(raw.get(name_at.end..value_at.start), Some([b':', b' ']))
            && matches!(raw.get(value_at.end..line.end), Some([b'\r', b'\n']));
        if !verbatim {
            flush(&mut run, out);
            write_field(out, name, value, None);
        } else if run.is_empty() || run.end != line.start {
            flush(&mut run, out);
            run = line;
        } else {
            run.end = line.end;
        }
    }
    flush(&mut run, out);
    if last_via.is_none() {
        out.extend_from_slice(match version {
            Version::Http10 => b"Via: 1.0 portico\r\n",
            Version::Http11 => b"Via: 1.1 portico\r\n",
        });
    }
}

/// The reason phrase the proxy uses for `status`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

fn explanation(status: u16) -> &'static str {
    match status {
        400 => "the proxy could not accept this request",
        403 => "denied by the proxy's rules",
        407 => "the proxy needs a valid user name and password",
        408 => "the request did not arrive in time",
        414 => "the request line is longer than 8 KiB",
        431 => "the request head is larger than 64 KiB",
        501 => "only http:// URLs and CONNECT are proxied",
        502 => "the upstream could not be reached or sent an invalid response",
        503 => "the proxy's connection limit is reached",
        504 => "the upstream did not answer in time",
        508 => "the request came back to this proxy in a loop",
        505 => "only HTTP/1.0 and HTTP/1.1 are spoken",
        _ => "",
    }
}

/// A reply the proxy makes itself: status line, `Content-Type: text/plain;
/// charset=utf-8`, `Content-Length`, the `extra_headers` (any whose name is
/// not a token or whose value holds CR, LF or NUL is skipped), for 407
/// `Proxy-Authenticate: Basic realm="portico"`, `Connection: close` when
/// `close`, and a one-line body such as `403 Forbidden: denied by the proxy's
/// rules`. For a HEAD request, send only the head (up to the blank line).
pub fn proxy_reply(status: u16, extra_headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    reply(status, explanation(status), extra_headers, close)
}

/// The reply to a request the proxy refused, or could not connect for,
/// for `cause`: the status line, `Portico-Error: CAUSE`, for 407
/// `Proxy-Authenticate`, `Connection: close`, and a body naming the cause
/// and `destination` (`host:port`): a short HTML page when `html` (the
/// request's Accept names text/html), else one line of text such as
/// `502 Bad Gateway: the name of nowhere.invalid:80 did not resolve
/// (dns-failure)`. For a HEAD request, send only the head.
pub fn refusal_reply(status: u16, cause: Cause, destination: &str, html: bool) -> Vec<u8> {
    refusal_reply_after(status, cause, destination, html, None)
}

/// [`refusal_reply`] with `Retry-After: SECONDS` when given (429).
pub fn refusal_reply_after(
    status: u16,
    cause: Cause,
    destination: &str,
    html: bool,
    retry_after: Option<u64>,
) -> Vec<u8> {
    // A peer's bytes never make a second line (the parser lets none
    // through; this holds whatever it lets through).
    let dest: String = destination
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let why = match cause {
        Cause::DnsFailure => format!("the name of {dest} did not resolve"),
        Cause::ConnectRefused => format!("{dest} refused the connection"),
        Cause::ConnectTimeout => format!("{dest} did not answer in time"),
        Cause::Unreachable => format!("{dest} is unreachable (no route to its network or host)"),
        Cause::Denied => format!("{dest} is denied by the proxy's rules"),
        Cause::PortDenied => {
            let port = dest.rsplit_once(':').map_or("", |(_, p)| p);
            format!("CONNECT to {dest}: port {port} is not in the proxy's connect_ports")
        }
        Cause::AuthRequired => {
            format!("the proxy needs a valid user name and password to reach {dest}")
        }
        Cause::Limit => format!("the proxy's connection limit is reached; try {dest} again later"),
        Cause::Throttled => {
            format!("too many failed logins from your address; try {dest} again in a minute")
        }
        Cause::Quota => {
            format!("your data quota is used up until its period turns; {dest} is not reached")
        }
        Cause::ParentFailed => {
            format!("the parent proxy could not be reached or would not connect to {dest}")
        }
        Cause::NotRedirected => {
            format!("{dest} is a transparent proxy's own port, reached without a redirect")
        }
    };
    let reason = reason_phrase(status);
    let (ctype, body) = if html {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <title>{status} {reason}</title></head>\n<body>\n<h1>{status} {reason}</h1>\n\
                 <p>{}.</p>\n<p>Destination: <code>{}</code><br>Cause: <code>{cause}</code></p>\n\
                 <hr><address>portico</address>\n</body></html>\n",
                html_escape(&why),
                html_escape(&dest),
            ),
        )
    } else {
        (
            "text/plain; charset=utf-8",
            format!("{status} {reason}: {why} ({cause})\n"),
        )
    };
    let mut out = Vec::with_capacity(200 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Type: {ctype}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if status == 407 {
        out.extend_from_slice(b"Proxy-Authenticate: Basic realm=\"portico\"\r\n");
    }
    if let Some(secs) = retry_after {
        out.extend_from_slice(format!("Retry-After: {secs}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!("Portico-Error: {cause}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
    out
}

/// Text made safe to put in an HTML page.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The reply to a refused request (the error's status, a body naming what
/// was wrong, `Connection: close`): e.g. `400 Bad Request: Content-Length and
/// Transfer-Encoding together`. For a refused response, a 502 naming it.
pub fn error_reply(err: &HttpError) -> Vec<u8> {
    reply(err.status(), &err.to_string(), &[], true)
}

fn reply(status: u16, detail: &str, extra_headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body = if detail.is_empty() {
        format!("{status} {reason}\n")
    } else {
        format!("{status} {reason}: {detail}\n")
    };
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if status == 407 {
        out.extend_from_slice(b"Proxy-Authenticate: Basic realm=\"portico\"\r\n");
    }
    for (name, value) in extra_headers {
        let bad_value = value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if super::fields::is_token(name.as_bytes()) && !bad_value {
            write_field(&mut out, name.as_bytes(), value.as_bytes(), None);
        }
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}
