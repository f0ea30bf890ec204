//! Response heads: parsing, validation and framing (RFC 9112 §6.3).

use std::mem::MaybeUninit;
use std::ops::Range;

use super::error::{Direction, ErrorKind, HttpError};
use super::fields::{self, ConnectionOptions, Headers, Name};
use super::request::{check_version_token, header_slots, map_httparse, STACK_SLOTS};
use super::scan::Scanner;
use super::{Framing, Limits, Method, Parsed, Version};

/// A parsed and validated response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// 100..=599.
    pub status: u16,
    /// All header fields as received, in order.
    pub headers: Headers,
    /// How the body is delimited, given the request method.
    pub framing: Framing,
    /// The Connection options.
    pub connection: ConnectionOptions,
    /// The Upgrade value (all fields joined), if any.
    pub upgrade: Option<String>,
    reason: Range<usize>,
}

impl Response {
    /// The reason phrase as received (may hold obs-text; may be empty).
    pub fn reason(&self) -> &[u8] {
        self.headers.raw().get(self.reason.clone()).unwrap_or(&[])
    }

    /// A 1xx other than 101: an interim response; the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Whether the upstream connection may be reused after this response:
    /// not close-delimited, not a tunnel, not `close`, and HTTP/1.1 or
    /// HTTP/1.0 with `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        !matches!(self.framing, Framing::UntilClose | Framing::Tunnel)
            && !self.connection.close
            && (self.version == Version::Http11 || self.connection.keep_alive)
    }
}

/// Parses the response head at the start of `buf`, sent in answer to a
/// request with `method`. `Partial` and `len` as for
/// [`super::parse_request`]; every error has status 502.
#[cfg(any(test, fuzzing, feature = "harness"))]
pub fn parse_response(
    buf: &[u8],
    method: &Method,
    limits: &Limits,
) -> Result<Parsed<Response>, HttpError> {
    super::HeadParser::new().parse_response(buf, method, limits)
}

pub(crate) fn parse_with(
    scanner: &mut Scanner,
    buf: &[u8],
    method: &Method,
    limits: &Limits,
) -> Result<Parsed<Response>, HttpError> {
    let err = |kind| HttpError::new(kind, Direction::Response);
    let Some(scanned) = scanner.scan(buf, limits, true).map_err(err)? else {
        return Ok(Parsed::Partial);
    };
    let head = buf
        .get(scanned.start..scanned.len)
        .ok_or(err(ErrorKind::MalformedStartLine))?;
    let line_len = scanned.start_line_end - scanned.start;
    let line = head
        .get(..line_len)
        .ok_or(err(ErrorKind::MalformedStartLine))?;
    check_version_token(line.split(|&b| b == b' ').next().unwrap_or(&[])).map_err(err)?;

    let (mut stack, mut heap) = ([MaybeUninit::uninit(); STACK_SLOTS], Vec::new());
    let slots = header_slots(&mut stack, &mut heap, scanned.fields);
    let mut parsed = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, head, slots)
        .map_err(|e| err(map_httparse(e)))?;
    if !matches!(status, httparse::Status::Complete(n) if n == head.len()) {
        return Err(err(ErrorKind::MalformedStartLine));
    }
    let version = match parsed.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(err(ErrorKind::UnsupportedVersion)),
    };
    let status = parsed.code.ok_or(err(ErrorKind::BadStatus))?;
    if !(100..=599).contains(&status) {
        return Err(err(ErrorKind::BadStatus));
    }
    // "HTTP/1.1 200 reason": the reason starts after the second space (or is
    // empty when the line ends right after the code).
    let reason = (13.min(line_len))..line_len;
    let headers = Headers::from_httparse(head, parsed.headers).map_err(err)?;
    let connection = ConnectionOptions::parse(&headers).map_err(err)?;
    let framing = response_framing(method, version, status, &headers).map_err(err)?;
    if status == 101 && !headers.has(Name::Upgrade) {
        return Err(err(ErrorKind::BadUpgrade));
    }
    let upgrade = headers.joined(Name::Upgrade);
    Ok(Parsed::Complete {
        head: Response {
            version,
            status,
            headers,
            framing,
            connection,
            upgrade,
            reason,
        },
        len: scanned.len,
    })
}

/// RFC 9112 §6.3, in its order, with every ambiguity refused:
///
/// 1. 101 → `Tunnel`; other 1xx, 204, 304, and any response to HEAD →
///    `NoBody` (their Content-Length / Transfer-Encoding describe nothing
///    and are not checked);
/// 2. 2xx to CONNECT → `Tunnel` (its CL / TE are ignored, §6.3 item 2);
/// 3. Transfer-Encoding: refused with Content-Length, in HTTP/1.0, or when it
///    does not end in `chunked` (the RFC's close-delimited fallback is a
///    guess we do not make); else `Chunked` (`gzip, chunked` included);
/// 4. Content-Length: malformed or differing values refused; else `Length`;
/// 5. otherwise `UntilClose`.
pub(crate) fn response_framing(
    method: &Method,
    version: Version,
    status: u16,
    headers: &Headers,
) -> Result<Framing, ErrorKind> {
    if status == 101 {
        return Ok(Framing::Tunnel);
    }
    if (100..200).contains(&status) || status == 204 || status == 304 || *method == Method::Head {
        return Ok(Framing::NoBody);
    }
    if *method == Method::Connect && (200..300).contains(&status) {
        return Ok(Framing::Tunnel);
    }
    let has_te = headers.has(Name::TransferEncoding);
    if has_te {
        if headers.has(Name::ContentLength) {
            return Err(ErrorKind::ContentLengthAndTransferEncoding);
        }
        if version == Version::Http10 {
            return Err(ErrorKind::TransferEncodingInHttp10);
        }
        fields::transfer_codings(headers)?;
        return Ok(Framing::Chunked);
    }
    Ok(match fields::content_length(headers)? {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}
