//! The HTTP/1.1 message layer of the forward proxy (RFC 9110, RFC 9112),
//! sans-IO: parsers and encoders over byte slices, no sockets, no clock.
//!
//! # What it owns
//!
//! - Request heads: [`parse_request`] / [`HeadParser::parse_request`] →
//!   [`Request`] (method, [`Target`], version, fields, and what follows:
//!   [`Framing`], [`ConnectionOptions`], `Expect: 100-continue`, Upgrade,
//!   [`ProxyAuth`], Max-Forwards).
//! - Response heads: [`parse_response`] → [`Response`], framed per RFC 9112
//!   §6.3 given the request method.
//! - Bodies: [`BodyDecoder`], a streaming state machine that says which bytes
//!   belong to the message (states and exits are drawn in [`body`]'s docs).
//! - Forwarded heads: [`encode_request_head`], [`encode_response_head`]; and
//!   the proxy's own replies: [`proxy_reply`], [`error_reply`] (the client's
//!   own errors, one line of text), [`refusal_reply`] (a refusal or a failed
//!   connect, with `Portico-Error` and an HTML page for a browser),
//!   [`CONNECT_ESTABLISHED`].
//!
//! # Invariants
//!
//! - Every refusal is an [`HttpError`]: an [`ErrorKind`] plus the status to
//!   answer with (request: 400, 414, 431, 501 or 505; response: always 502).
//!   After any error the connection is to be closed.
//! - Strictness does not depend on httparse's defaults: a byte pre-scan
//!   refuses bare CR, bare LF, control bytes (HT only in field values and a
//!   reason phrase), obs-fold, whitespace before a colon, empty names and
//!   lines without a colon, and detects the start-line and head limits while
//!   the head is still partial. httparse then runs with its strict defaults
//!   on the complete head only.
//! - Nothing panics on input, and memory is bounded by the head limit: a
//!   parsed head holds one copy of the head's bytes plus an index; the body
//!   decoder holds a few counters.
//! - A head is `Complete { head, len }` only when all of `buf[..len]` is the
//!   head; the body starts at `buf[len]`.
//!
//! # Decisions where the RFCs leave a choice
//!
//! - Content-Length: `5, 5`, repeated identical fields and leading zeros are
//!   accepted as one length (RFC 9110 §8.6); forwarded as a single
//!   `Content-Length: 5`. Empty elements, signs, whitespace inside, non-digits
//!   and more than 19 digits are refused.
//! - Transfer-Encoding on a request: only a lone `chunked` is forwarded;
//!   `gzip, chunked` is 501 (legal, but an origin that does not know `gzip`
//!   as a transfer coding could misframe it). On a response, codings before
//!   a final `chunked` are accepted and forwarded. Any Transfer-Encoding in
//!   an HTTP/1.0 message is refused (RFC 9112 §6.1 calls its framing faulty).
//! - A response whose Transfer-Encoding does not end in `chunked` is 502, not
//!   close-delimited as RFC 9112 §6.3 item 4 allows; the framing fields of
//!   1xx, 204, 304, HEAD and CONNECT-2xx responses are not checked (they frame
//!   nothing).
//! - CONNECT with Transfer-Encoding or a non-zero Content-Length is 400.
//! - Connection naming Content-Length, Transfer-Encoding or Host is refused
//!   (stripping them as hop-by-hop would change framing or routing).
//! - Leading empty lines before a start line are skipped (RFC 9112 §2.2),
//!   bounded by the head limit.
//! - A well-formed `HTTP/x.y` other than 1.0/1.1 in a request is 505.
//! - Absolute-form: scheme case-insensitive; userinfo, fragments, an empty
//!   host, percent-encoded or non-LDH host names, port 0 and ports over
//!   65535 are 400; `host:` (empty port) means port 80; other schemes than
//!   `http` (not only `https`) are 501.
//! - Via records the received protocol version (`1.0 portico` for an
//!   HTTP/1.0 message, RFC 9110 §7.6.3); forwarded messages carry HTTP/1.1.
//! - Malformed Proxy-Authorization (other scheme, bad base64, no colon, not
//!   UTF-8, control characters, repeated field) is [`ProxyAuth::Invalid`]:
//!   answer 407 as for wrong credentials, not 400.
//! - A chunk-size line allows whitespace only where RFC 9112 §7.1.1's BWS
//!   does (`5 ;a=b` yes, `5 ` no).

pub(crate) mod base64;
pub mod body;
mod encode;
mod error;
mod fields;
pub mod request;
pub mod response;
mod scan;

#[cfg(test)]
mod tests;

pub use body::BodyDecoder;
#[cfg(test)]
pub use body::Progress;
pub use encode::{
    encode_request_head, encode_response_head, error_reply, proxy_reply, reason_phrase,
    refusal_reply, refusal_reply_after, Forward, Persist, CONNECT_ESTABLISHED,
};
pub use error::{Direction, ErrorKind, HttpError};
#[cfg(any(test, fuzzing, feature = "harness"))]
pub use request::parse_request;
#[cfg(test)]
pub use request::Authority;
pub use request::{ProxyAuth, Request, Target};
#[cfg(any(test, fuzzing, feature = "harness"))]
pub use response::parse_response;
pub use response::Response;

/// Size limits. The defaults: a request line of 8 KiB, a head of 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request / status line, CRLF excluded (8 KiB; over it: 414).
    pub max_start_line: usize,
    /// Longest head, leading empty lines and final CRLFCRLF included (64 KiB;
    /// over it: 431).
    pub max_head: usize,
    /// Most header fields in one head (256; over it: 431).
    pub max_headers: usize,
    /// Longest chunk-size line, extensions included, CRLF excluded (4 KiB).
    pub max_chunk_line: usize,
    /// Largest trailer section, CRLFs included (16 KiB).
    pub max_trailers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_start_line: 8 * 1024,
            max_head: 64 * 1024,
            max_headers: 256,
            max_chunk_line: 4 * 1024,
            max_trailers: 16 * 1024,
        }
    }
}

/// The result of parsing a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The head is not complete: read more and call again.
    Partial,
    /// The head, and how many bytes of the buffer it took.
    Complete {
        /// The parsed head.
        head: T,
        /// Bytes of the head, from the start of the buffer through CRLFCRLF.
        len: usize,
    },
}

/// The HTTP version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

impl Version {
    /// `1.0` or `1.1`, as a Via received-protocol.
    pub fn via(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        }
    }
}

/// A request method. Methods are case-sensitive: `get` is `Other("get")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token.
    Other(String),
}

impl Method {
    /// The method for a token (validated by the parser).
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method's token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }
}

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// No body: the message ends with its head.
    NoBody,
    /// Exactly this many bytes (`Length(0)` is an empty body).
    Length(u64),
    /// Chunked transfer coding, ending with the last chunk and trailers.
    Chunked,
    /// Responses only: the body runs until the upstream closes.
    UntilClose,
    /// Responses only (CONNECT 2xx, 101): after the head, a byte tunnel. The
    /// caller must check the request asked for it (CONNECT, or an upgrade).
    Tunnel,
}

/// A resumable head parser: remembers how far it has scanned, so a head that
/// arrives in many small reads is scanned once in total. Give it the same
/// buffer each time (starting at the message's first byte, only growing);
/// it resets itself after `Complete` or an error. [`reset`](Self::reset) it
/// if the buffer moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadParser {
    scanner: scan::Scanner,
}

impl HeadParser {
    /// A parser at the start of a head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the scan so far.
    pub fn reset(&mut self) {
        self.scanner = scan::Scanner::default();
    }

    /// As [`parse_request`], resuming the scan.
    pub fn parse_request(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Parsed<Request>, HttpError> {
        let result = request::parse_with(&mut self.scanner, buf, limits);
        if !matches!(result, Ok(Parsed::Partial)) {
            self.reset();
        }
        result
    }

    /// As [`parse_response`], resuming the scan.
    pub fn parse_response(
        &mut self,
        buf: &[u8],
        method: &Method,
        limits: &Limits,
    ) -> Result<Parsed<Response>, HttpError> {
        let result = response::parse_with(&mut self.scanner, buf, method, limits);
        if !matches!(result, Ok(Parsed::Partial)) {
            self.reset();
        }
        result
    }
}

#[cfg(any(test, fuzzing, feature = "harness"))]
/// Feeds `data` to the decoder in pieces of `stride` bytes and checks the
/// step invariants; returns (consumed, done) or the error.
fn fuzz_body(
    decoder: &mut BodyDecoder,
    data: &[u8],
    stride: usize,
) -> Result<(usize, bool), HttpError> {
    let mut whole = decoder.clone();
    let expected = whole.advance(data);
    let mut consumed = 0usize;
    let outcome = loop {
        let end = consumed.saturating_add(stride).min(data.len());
        let piece = data.get(consumed..end).unwrap_or(&[]);
        let step = match decoder.step(piece) {
            Ok(step) => step,
            Err(e) => break Err(e),
        };
        assert!(step.consumed <= piece.len());
        assert!(step.data.start <= step.data.end && step.data.end <= step.consumed);
        assert!(step.data.is_empty() || step.data.end == step.consumed);
        consumed += step.consumed;
        if step.done {
            break Ok((consumed, true));
        }
        if consumed >= data.len() {
            break Ok((consumed, false));
        }
        assert!(step.consumed > 0 || piece.is_empty());
    };
    match (&outcome, &expected) {
        (Ok((c, d)), Ok(p)) => assert_eq!((*c, *d), (p.consumed, p.done)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("split and whole body decoding disagree: {outcome:?} vs {expected:?}"),
    }
    if let Ok((_, false)) = outcome {
        let _ = decoder.finish();
    }
    outcome
}

#[cfg(any(test, fuzzing, feature = "harness"))]
fn fuzz_stride(data: &[u8]) -> usize {
    usize::from(data.first().copied().unwrap_or(1) % 64).max(1)
}

#[cfg(any(test, fuzzing, feature = "harness"))]
/// Fuzz entry point: parses `data` as a request head (whole, and resumed in
/// pieces: both must agree), encodes what parsed, and runs the body decoder
/// over the rest. Panics on a broken invariant only.
pub fn fuzz_request(data: &[u8]) {
    let limits = Limits::default();
    let stride = fuzz_stride(data);
    let whole = parse_request(data, &limits);
    let mut parser = HeadParser::new();
    let mut end = 0usize;
    let resumed = loop {
        end = end.saturating_add(stride).min(data.len());
        let r = parser.parse_request(data.get(..end).unwrap_or(&[]), &limits);
        if !matches!(r, Ok(Parsed::Partial)) || end >= data.len() {
            break r;
        }
    };
    assert_eq!(whole, resumed);
    match whole {
        Ok(Parsed::Complete { head, len }) => {
            assert!(len <= data.len());
            let mut out = Vec::new();
            if encode_request_head(&head, &mut out) == Forward::Upstream {
                assert!(out.ends_with(b"\r\n\r\n"));
                // What we send is a well-formed head (as origin-form it would
                // be refused by our own proxy-side parser, so check it at the
                // byte level and with httparse).
                let relaxed = Limits {
                    max_head: limits.max_head + 4096,
                    max_headers: limits.max_headers + 4,
                    ..limits
                };
                let scanned = scan::Scanner::default().scan(&out, &relaxed, false);
                assert!(
                    matches!(scanned, Ok(Some(s)) if s.len == out.len()),
                    "scan of {:?}: {scanned:?}",
                    String::from_utf8_lossy(&out)
                );
                let mut slots = vec![httparse::EMPTY_HEADER; relaxed.max_headers];
                let mut req = httparse::Request::new(&mut slots);
                let parsed = req.parse(&out);
                assert!(
                    matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
                    "httparse of {:?}: {parsed:?}",
                    String::from_utf8_lossy(&out)
                );
            }
            let mut decoder = BodyDecoder::new(head.framing, Direction::Request, &limits);
            let _ = fuzz_body(&mut decoder, data.get(len..).unwrap_or(&[]), stride);
        }
        Ok(Parsed::Partial) => {}
        Err(e) => {
            let reply = error_reply(&e);
            assert!(reply.starts_with(b"HTTP/1.1 "));
        }
    }
}

#[cfg(any(test, fuzzing, feature = "harness"))]
/// Fuzz entry point: the first byte picks the request method (GET, HEAD or
/// CONNECT), the rest is parsed as a response head (whole and resumed), then
/// encoded, then its body decoded.
pub fn fuzz_response(data: &[u8]) {
    let limits = Limits::default();
    let method = match data.first().map(|b| b % 3) {
        Some(1) => Method::Head,
        Some(2) => Method::Connect,
        _ => Method::Get,
    };
    let stride = fuzz_stride(data);
    let data = data.get(1..).unwrap_or(&[]);
    let whole = parse_response(data, &method, &limits);
    let mut parser = HeadParser::new();
    let mut end = 0usize;
    let resumed = loop {
        end = end.saturating_add(stride).min(data.len());
        let r = parser.parse_response(data.get(..end).unwrap_or(&[]), &method, &limits);
        if !matches!(r, Ok(Parsed::Partial)) || end >= data.len() {
            break r;
        }
    };
    assert_eq!(whole, resumed);
    if let Ok(Parsed::Complete { head, len }) = whole {
        assert!(len <= data.len());
        let mut out = Vec::new();
        encode_response_head(&head, Persist::Close, &mut out);
        let relaxed = Limits {
            max_head: limits.max_head + 4096,
            max_headers: limits.max_headers + 4,
            ..limits
        };
        let reparsed = parse_response(&out, &method, &relaxed);
        assert!(
            matches!(reparsed, Ok(Parsed::Complete { .. })),
            "re-parse of {:?}: {reparsed:?}",
            String::from_utf8_lossy(&out)
        );
        let mut decoder = BodyDecoder::new(head.framing, Direction::Response, &limits);
        let _ = fuzz_body(&mut decoder, data.get(len..).unwrap_or(&[]), stride);
    }
}
