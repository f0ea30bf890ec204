//! Request heads: parsing, validation and what follows from them.

use std::fmt;
use std::mem::MaybeUninit;

use super::error::{Direction, ErrorKind, HttpError};
use super::fields::{self, ConnectionOptions, Headers, Name};
use super::scan::{self, Scanner};
use super::{base64, Framing, Limits, Method, Parsed, Version};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Absolute-form `http://host[:port]/path?query`.
    Absolute {
        /// Host and port (80 if not given).
        authority: Authority,
        /// Path and query to send upstream in origin-form: starts with `/`,
        /// or is `*` for an OPTIONS whose URL had an empty path and no query
        /// (RFC 9112 §3.2.4).
        path: String,
    },
    /// Authority-form `host:port` of a CONNECT.
    Authority(Authority),
    /// Asterisk-form `*` of `OPTIONS * HTTP/1.1`: a question about the proxy
    /// itself, answered locally.
    Asterisk,
    /// Origin-form `/path?query` of a GET or HEAD: a request for the
    /// proxy's own resource (its PAC file), never forwarded.
    Origin(String),
}

/// A host and port from a request target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    /// A DNS name (lowercased) or an IP address; an IPv6 address without
    /// its brackets.
    pub host: String,
    /// 1..=65535.
    pub port: u16,
}

impl Authority {
    /// The value for a Host header: the port is left out when it is `default`.
    #[cfg(test)]
    pub fn host_header(&self, default: u16) -> String {
        let mut out = String::new();
        self.render(Some(default), |s| out.push_str(s));
        out
    }

    /// `http://host:port` and `path`: the target an access log names.
    pub(crate) fn url(&self, path: &str) -> String {
        let mut url = String::with_capacity(16 + self.host.len() + path.len());
        url.push_str("http://");
        self.render(None, |s| url.push_str(s));
        url.push_str(path);
        url
    }

    /// [`Authority::host_header`], appended to `out`.
    pub(crate) fn write_host_header(&self, default: u16, out: &mut Vec<u8>) {
        self.render(Some(default), |s| out.extend_from_slice(s.as_bytes()));
    }

    /// `host:port` in pieces, with brackets around an IPv6 address and no
    /// port when it is `default` (written straight into a head: the
    /// formatting machinery costs more than the head around it).
    fn render(&self, default: Option<u16>, mut push: impl FnMut(&str)) {
        let v6 = self.host.contains(':');
        if v6 {
            push("[");
        }
        push(&self.host);
        if v6 {
            push("]");
        }
        if default != Some(self.port) {
            push(":");
            let mut digits = [0; 20];
            let digits = super::encode::decimal(u64::from(self.port), &mut digits);
            push(std::str::from_utf8(digits).unwrap_or_default());
        }
    }
}

impl fmt::Display for Authority {
    /// `host:port`, with brackets around an IPv6 address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut r = Ok(());
        self.render(None, |s| r = r.and_then(|()| f.write_str(s)));
        r
    }
}

/// The Proxy-Authorization of a request.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ProxyAuth {
    /// No Proxy-Authorization field.
    #[default]
    None,
    /// `Basic` credentials, decoded and split at the first colon.
    Basic {
        /// The user-id (before the first colon).
        user: String,
        /// The password (everything after the first colon; may hold colons).
        password: String,
    },
    /// Present but unusable: another scheme, bad base64, no colon, not UTF-8,
    /// control characters, or the field repeated. Answer 407 as for wrong
    /// credentials.
    Invalid,
}

impl fmt::Debug for ProxyAuth {
    /// The password is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyAuth::None => f.write_str("None"),
            ProxyAuth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            ProxyAuth::Invalid => f.write_str("Invalid"),
        }
    }
}

impl ProxyAuth {
    /// Parses one Proxy-Authorization value: `Basic <token68>`, the scheme
    /// case-insensitive, one or more spaces between, the token strict
    /// padded base64 of `user:password` in UTF-8 with no control characters.
    pub fn parse_basic(value: &[u8]) -> ProxyAuth {
        let value = fields::trim_ows(value);
        let Some(sp) = value.iter().position(|&b| b == b' ') else {
            return ProxyAuth::Invalid;
        };
        let (scheme, rest) = value.split_at(sp);
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return ProxyAuth::Invalid;
        }
        let token = fields::trim_ows(rest);
        let Some(decoded) = base64::decode(token) else {
            return ProxyAuth::Invalid;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return ProxyAuth::Invalid;
        };
        if text.chars().any(char::is_control) {
            return ProxyAuth::Invalid;
        }
        match text.split_once(':') {
            Some((user, password)) => ProxyAuth::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            None => ProxyAuth::Invalid,
        }
    }
}

/// A parsed and validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method (case-sensitive).
    pub method: Method,
    /// The target.
    pub target: Target,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// All header fields as received, in order.
    pub headers: Headers,
    /// How the body is delimited: `NoBody`, `Length` or `Chunked`.
    pub framing: Framing,
    /// The Connection options.
    pub connection: ConnectionOptions,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1: 1.0
    /// requests' Expect is ignored). Other expectations are forwarded as is.
    pub expect_continue: bool,
    /// The Upgrade value (all fields joined) when this is an upgrade request:
    /// HTTP/1.1, Connection names `upgrade`, and an Upgrade field is present.
    pub upgrade: Option<String>,
    /// Proxy-Authorization.
    pub proxy_auth: ProxyAuth,
    /// Max-Forwards, for TRACE and OPTIONS only (RFC 9110 §7.6.2); digits
    /// beyond u64 saturate. `None` for other methods, whose Max-Forwards is
    /// forwarded untouched.
    pub max_forwards: Option<u64>,
}

impl Request {
    /// Whether the request's Accept names `text/html` (with a weight above
    /// 0): a browser, to be answered a refusal as a page. A bare `*/*` or
    /// `text/*` does not count: a program saying that wants the one line.
    pub fn accepts_html(&self) -> bool {
        self.headers.get_all("accept").any(|v| {
            v.split(|&b| b == b',').any(|range| {
                let mut parts = range.split(|&b| b == b';');
                let media = parts.next().map(trim_ows).unwrap_or_default();
                media.eq_ignore_ascii_case(b"text/html")
                    && !parts.any(|p| {
                        let p = trim_ows(p);
                        p.len() >= 2
                            && p[..2].eq_ignore_ascii_case(b"q=")
                            && p[2..].iter().all(|&b| b == b'0' || b == b'.')
                    })
            })
        })
    }

    /// Whether the client connection may stay open after this exchange, as
    /// far as the request says: HTTP/1.1 unless `close`; HTTP/1.0 only with
    /// `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        !self.connection.close && (self.version == Version::Http11 || self.connection.keep_alive)
    }

    /// TRACE or OPTIONS with `Max-Forwards: 0`: the proxy must answer itself.
    pub fn max_forwards_exhausted(&self) -> bool {
        self.max_forwards == Some(0)
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Partial` until the head's CRLFCRLF is in `buf`, except that a start line
/// or head over the limits is refused as soon as it is seen. On `Complete`,
/// `len` bytes of `buf` are the head (leading empty lines included); the body,
/// if any, starts at `buf[len..]`. Stateless: it rescans from the start, so
/// call it when new bytes have come, or use [`super::HeadParser`].
#[cfg(any(test, fuzzing, feature = "harness"))]
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed<Request>, HttpError> {
    super::HeadParser::new().parse_request(buf, limits)
}

pub(crate) fn parse_with(
    scanner: &mut Scanner,
    buf: &[u8],
    limits: &Limits,
) -> Result<Parsed<Request>, HttpError> {
    let err = |kind| HttpError::new(kind, Direction::Request);
    let Some(scanned) = scanner.scan(buf, limits, false).map_err(err)? else {
        return Ok(Parsed::Partial);
    };
    let head = buf
        .get(scanned.start..scanned.len)
        .ok_or(err(ErrorKind::MalformedStartLine))?;
    let line = buf
        .get(scanned.start..scanned.start_line_end)
        .ok_or(err(ErrorKind::MalformedStartLine))?;
    check_version_token(line.rsplit(|&b| b == b' ').next().unwrap_or(&[])).map_err(err)?;

    let (mut stack, mut heap) = ([MaybeUninit::uninit(); STACK_SLOTS], Vec::new());
    let slots = header_slots(&mut stack, &mut heap, scanned.fields);
    let mut parsed = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut parsed, head, slots)
        .map_err(|e| err(map_httparse(e)))?;
    if !matches!(status, httparse::Status::Complete(n) if n == head.len()) {
        return Err(err(ErrorKind::MalformedStartLine));
    }
    let version = match parsed.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(err(ErrorKind::UnsupportedVersion)),
    };
    let method = Method::from_token(parsed.method.ok_or(err(ErrorKind::MalformedStartLine))?);
    let raw_target = parsed.path.ok_or(err(ErrorKind::MalformedStartLine))?;
    let headers = Headers::from_httparse(head, parsed.headers).map_err(err)?;

    let request = build(method, raw_target, version, headers).map_err(err)?;
    Ok(Parsed::Complete {
        head: request,
        len: scanned.len,
    })
}

/// Heads with up to this many fields give httparse slots on the stack.
pub(crate) const STACK_SLOTS: usize = 64;

/// `n` uninitialised slots for httparse's fields: on the stack for the usual
/// few, else in `heap`.
pub(crate) fn header_slots<'s, 'b>(
    stack: &'s mut [MaybeUninit<httparse::Header<'b>>; STACK_SLOTS],
    heap: &'s mut Vec<MaybeUninit<httparse::Header<'b>>>,
    n: usize,
) -> &'s mut [MaybeUninit<httparse::Header<'b>>] {
    match stack.get_mut(..n) {
        Some(slots) => slots,
        None => {
            heap.resize(n, MaybeUninit::uninit());
            heap
        }
    }
}

/// A well-formed `HTTP/d.d` other than 1.0 / 1.1 is 505; anything else is
/// left for httparse to refuse as malformed.
pub(crate) fn check_version_token(token: &[u8]) -> Result<(), ErrorKind> {
    if let [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] = token {
        if major.is_ascii_digit() && minor.is_ascii_digit() && !(*major == b'1' && *minor <= b'1') {
            return Err(ErrorKind::UnsupportedVersion);
        }
    }
    Ok(())
}

pub(crate) fn map_httparse(e: httparse::Error) -> ErrorKind {
    match e {
        httparse::Error::HeaderName | httparse::Error::HeaderValue => ErrorKind::MalformedHeader,
        httparse::Error::TooManyHeaders => ErrorKind::TooManyHeaders,
        httparse::Error::Status => ErrorKind::BadStatus,
        _ => ErrorKind::MalformedStartLine,
    }
}

fn build(
    method: Method,
    raw_target: &str,
    version: Version,
    headers: Headers,
) -> Result<Request, ErrorKind> {
    let target = parse_target(&method, raw_target)?;

    // Host: exactly one on 1.1, at most one on 1.0. Its value is otherwise
    // ignored: the target's authority wins (RFC 9112 §3.2.2).
    match headers.values(Name::Host).count() {
        0 if version == Version::Http11 => return Err(ErrorKind::MissingHost),
        0 | 1 => {}
        _ => return Err(ErrorKind::DuplicateHost),
    }
    if let Some(host) = headers.values(Name::Host).next() {
        if host.contains(&b',') {
            return Err(ErrorKind::DuplicateHost);
        }
        if host.iter().any(|&b| b == b' ' || b == b'\t') {
            return Err(ErrorKind::BadHost);
        }
    }

    let connection = ConnectionOptions::parse(&headers)?;
    let framing = request_framing(&method, version, &headers)?;

    let expect_continue = version == Version::Http11
        && headers
            .values(Name::Expect)
            .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let upgrade = if version == Version::Http11 && connection.upgrade {
        headers.joined(Name::Upgrade)
    } else {
        None
    };
    let proxy_auth = match headers.values(Name::ProxyAuthorization).count() {
        0 => ProxyAuth::None,
        1 => ProxyAuth::parse_basic(
            headers
                .values(Name::ProxyAuthorization)
                .next()
                .unwrap_or(&[]),
        ),
        _ => ProxyAuth::Invalid,
    };
    let max_forwards = if matches!(method, Method::Trace | Method::Options) {
        max_forwards(&headers)?
    } else {
        None
    };
    Ok(Request {
        method,
        target,
        version,
        headers,
        framing,
        connection,
        expect_continue,
        upgrade,
        proxy_auth,
        max_forwards,
    })
}

fn max_forwards(headers: &Headers) -> Result<Option<u64>, ErrorKind> {
    match headers.values(Name::MaxForwards).count() {
        0 => Ok(None),
        1 => {
            let v = headers.values(Name::MaxForwards).next().unwrap_or(&[]);
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(ErrorKind::BadMaxForwards);
            }
            Ok(Some(v.iter().fold(0u64, |n, &d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            })))
        }
        _ => Err(ErrorKind::BadMaxForwards),
    }
}

/// RFC 9112 §6.3 for requests: Transfer-Encoding (ending in chunked) wins
/// only if there is no Content-Length, which wins otherwise; else no body.
fn request_framing(
    method: &Method,
    version: Version,
    headers: &Headers,
) -> Result<Framing, ErrorKind> {
    let has_te = headers.has(Name::TransferEncoding);
    let has_cl = headers.has(Name::ContentLength);
    if has_te && has_cl {
        return Err(ErrorKind::ContentLengthAndTransferEncoding);
    }
    let framing = if has_te {
        if version == Version::Http10 {
            return Err(ErrorKind::TransferEncodingInHttp10);
        }
        if fields::transfer_codings(headers)?.is_some_and(|c| c.others) {
            return Err(ErrorKind::UnsupportedTransferCoding);
        }
        Framing::Chunked
    } else {
        match fields::content_length(headers)? {
            None => Framing::NoBody,
            Some(n) => Framing::Length(n),
        }
    };
    if *method == Method::Connect && !matches!(framing, Framing::NoBody | Framing::Length(0)) {
        return Err(ErrorKind::ConnectWithBody);
    }
    Ok(framing)
}

/// The end of `s` whose bytes are `tail` (a suffix of `s`'s bytes).
fn suffix<'a>(s: &'a str, tail: &[u8]) -> &'a str {
    s.get(s.len().saturating_sub(tail.len())..)
        .unwrap_or_default()
}

// Targets come as httparse's `&str`; once checked to be visible ASCII, any
// slice of it is one too, so the strings kept need no UTF-8 check.
fn parse_target(method: &Method, target: &str) -> Result<Target, ErrorKind> {
    let raw = target.as_bytes();
    // Visible ASCII only, and no fragment (RFC 9112 §3.2).
    if raw.is_empty() || scan::run(raw, scan::non_target_mask) != raw.len() {
        return Err(ErrorKind::BadTarget);
    }
    if *method == Method::Connect {
        if raw.windows(3).any(|w| w == b"://") || raw.contains(&b'/') {
            return Err(ErrorKind::BadConnectTarget);
        }
        return parse_authority(target, None)
            .map(Target::Authority)
            .map_err(|_| ErrorKind::BadConnectTarget);
    }
    if raw == b"*" {
        return if *method == Method::Options {
            Ok(Target::Asterisk)
        } else {
            Err(ErrorKind::BadTarget)
        };
    }
    if raw.first() == Some(&b'/') {
        return match method {
            Method::Get | Method::Head => Ok(Target::Origin(target.to_string())),
            _ => Err(ErrorKind::OriginForm),
        };
    }
    let Some(colon) = raw.iter().position(|&b| b == b':') else {
        return Err(ErrorKind::BadTarget);
    };
    let (scheme, rest) = raw.split_at(colon);
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    let Some(rest) = rest.strip_prefix(b"://") else {
        return Err(ErrorKind::BadTarget);
    };
    if !valid_scheme {
        return Err(ErrorKind::BadTarget);
    }
    if !scheme.eq_ignore_ascii_case(b"http") {
        return Err(ErrorKind::UnsupportedScheme);
    }
    let rest = suffix(target, rest);
    let end = rest
        .bytes()
        .position(|b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at_checked(end).unwrap_or((rest, ""));
    let authority = parse_authority(authority, Some(80))?;
    let path = match path.as_bytes().first() {
        None if *method == Method::Options => "*".to_owned(),
        None => "/".to_owned(),
        Some(b'?') => {
            let mut p = String::with_capacity(1 + path.len());
            p.push('/');
            p.push_str(path);
            p
        }
        Some(_) => path.to_owned(),
    };
    Ok(Target::Absolute { authority, path })
}

/// `host[:port]`. With `default`, the port may be left out or empty; without,
/// it is required. Userinfo, an empty host, percent-encoding, port 0 and
/// ports over 65535 are refused.
fn parse_authority(text: &str, default: Option<u16>) -> Result<Authority, ErrorKind> {
    let raw = text.as_bytes();
    let (host, port) = if let Some(rest) = raw.strip_prefix(b"[") {
        let close = rest
            .iter()
            .position(|&b| b == b']')
            .ok_or(ErrorKind::BadTarget)?;
        let (v6, after) = rest.split_at(close);
        let v6 = text.get(1..1 + v6.len()).unwrap_or_default();
        let v6: std::net::Ipv6Addr = v6.parse().map_err(|_| ErrorKind::BadTarget)?;
        let after = after.get(1..).unwrap_or(&[]);
        let port = match after {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(ErrorKind::BadTarget),
        };
        (v6.to_string(), port)
    } else {
        let (host, port) = match raw.iter().rposition(|&b| b == b':') {
            Some(i) => (raw.get(..i).unwrap_or(&[]), raw.get(i + 1..)),
            None => (raw, None),
        };
        let valid = !host.is_empty()
            && host.len() <= 255
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(ErrorKind::BadTarget);
        }
        let host = text.get(..host.len()).unwrap_or_default();
        (host.to_ascii_lowercase(), port)
    };
    let port = match (port, default) {
        (None, Some(d)) | (Some([]), Some(d)) => d,
        (None, None) | (Some([]), None) => return Err(ErrorKind::BadTarget),
        (Some(digits), _) => parse_port(digits)?,
    };
    Ok(Authority { host, port })
}

fn parse_port(digits: &[u8]) -> Result<u16, ErrorKind> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ErrorKind::BadTarget);
    }
    let n = digits
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    match u16::try_from(n) {
        Ok(0) | Err(_) => Err(ErrorKind::BadTarget),
        Ok(p) => Ok(p),
    }
}

/// `s` without the spaces and tabs around it.
fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}
