//! Every way a message can be refused, and the status each maps to.

use std::fmt;

/// Which kind of message an error was found in. It decides the status: the
/// client's own request is answered `400`-ish, a broken upstream response is
/// answered `502`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A request from the client (and its body).
    Request,
    /// A response from the upstream (and its body).
    Response,
}

/// What exactly was wrong. [`HttpError::status`] maps it to a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorKind {
    // ---- limits ----
    /// The request or status line is longer than `Limits::max_start_line`.
    #[error("start line too long")]
    StartLineTooLong,
    /// The head is longer than `Limits::max_head`.
    #[error("head too large")]
    HeadTooLarge,
    /// More header fields than `Limits::max_headers`.
    #[error("too many header fields")]
    TooManyHeaders,

    // ---- bytes and lines ----
    /// A CR not followed by LF.
    #[error("bare CR in the head")]
    BareCr,
    /// An LF not preceded by CR.
    #[error("bare LF in the head")]
    BareLf,
    /// NUL, DEL or another control byte (HT is allowed in field values only).
    #[error("control byte in the head")]
    ControlByte,
    /// A field line starting with SP or HT (obsolete line folding).
    #[error("obsolete line folding")]
    ObsFold,
    /// SP or HT between a field name and its colon.
    #[error("whitespace before the colon of a header field")]
    SpaceBeforeColon,
    /// A field line starting with a colon.
    #[error("empty header field name")]
    EmptyHeaderName,
    /// A field line without a colon, or with a name or value httparse refused.
    #[error("malformed header field")]
    MalformedHeader,
    /// The request or status line does not parse.
    #[error("malformed start line")]
    MalformedStartLine,
    /// A well-formed `HTTP/x.y` other than 1.0 and 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,

    // ---- request target and Host ----
    /// `GET /path` with no scheme: a forward proxy needs absolute-form.
    #[error("origin-form request target: a proxy needs an absolute URL")]
    OriginForm,
    /// A target that is none of the forms this proxy serves, or is malformed.
    #[error("malformed request target")]
    BadTarget,
    /// An absolute-form target with a scheme other than `http` (e.g. `https`).
    #[error("only http:// URLs are proxied")]
    UnsupportedScheme,
    /// A CONNECT target without a port, with port 0 or over 65535, or in URL form.
    #[error("malformed CONNECT target (need host:port)")]
    BadConnectTarget,
    /// No Host header in an HTTP/1.1 request.
    #[error("missing Host header")]
    MissingHost,
    /// More than one Host header (or one holding a list).
    #[error("repeated Host header")]
    DuplicateHost,
    /// A Host value containing whitespace.
    #[error("malformed Host header")]
    BadHost,

    // ---- framing ----
    /// Both Content-Length and Transfer-Encoding.
    #[error("Content-Length and Transfer-Encoding together")]
    ContentLengthAndTransferEncoding,
    /// A Content-Length that is not 1 to 19 decimal digits.
    #[error("malformed Content-Length")]
    BadContentLength,
    /// Content-Length values that differ.
    #[error("differing Content-Length values")]
    DifferingContentLength,
    /// A Transfer-Encoding whose last coding is not `chunked`.
    #[error("Transfer-Encoding whose final coding is not chunked")]
    TransferEncodingNotChunked,
    /// `chunked` named more than once.
    #[error("chunked applied more than once")]
    ChunkedTwice,
    /// A Transfer-Encoding element that is not a valid coding (or `chunked`
    /// with parameters).
    #[error("malformed Transfer-Encoding")]
    BadTransferEncoding,
    /// A request with a transfer coding other than a lone `chunked`.
    #[error("transfer coding not implemented")]
    UnsupportedTransferCoding,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: faulty framing).
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    /// A CONNECT request with Transfer-Encoding or a non-zero Content-Length.
    #[error("CONNECT request with a body")]
    ConnectWithBody,
    /// Connection naming Content-Length, Transfer-Encoding or Host.
    #[error("Connection header names a framing header")]
    ConnectionNamesFramingHeader,
    /// Max-Forwards on TRACE/OPTIONS that is not one decimal number.
    #[error("malformed Max-Forwards")]
    BadMaxForwards,
    /// A status code outside 100..=599.
    #[error("malformed status code")]
    BadStatus,
    /// A 101 response without an Upgrade header.
    #[error("101 response without Upgrade")]
    BadUpgrade,

    // ---- bodies ----
    /// A chunk-size that is empty or has a non-hex digit.
    #[error("malformed chunk size")]
    BadChunkSize,
    /// A chunk-size of more than 16 hex digits.
    #[error("chunk size too large")]
    ChunkSizeTooLarge,
    /// A chunk-size line (size and extensions) over `Limits::max_chunk_line`.
    #[error("chunk size line too long")]
    ChunkLineTooLong,
    /// A chunk extension outside the RFC 9112 §7.1.1 grammar.
    #[error("malformed chunk extension")]
    BadChunkExtension,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingChunkCrlf,
    /// A malformed trailer field line.
    #[error("malformed trailer field")]
    BadTrailer,
    /// Trailer section over `Limits::max_trailers`.
    #[error("trailer section too large")]
    TrailerTooLarge,
    /// The connection ended before the body did.
    #[error("message body truncated")]
    Truncated,
}

/// A refused message: what was wrong, and the status the proxy answers with.
///
/// For a request the status is the reply to the client (400, 414, 431, 501 or
/// 505); for a response it is always 502 (the client gets a 502 and the
/// upstream connection is dropped). Either way the connection that sent the
/// bad message is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpError {
    kind: ErrorKind,
    direction: Direction,
}

impl HttpError {
    /// An error of `kind` found in a message going `direction`.
    pub fn new(kind: ErrorKind, direction: Direction) -> Self {
        HttpError { kind, direction }
    }

    /// What was wrong.
    #[cfg(test)]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Where it was found.
    #[cfg(test)]
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The status the proxy answers the client with.
    pub fn status(&self) -> u16 {
        if self.direction == Direction::Response {
            return 502;
        }
        match self.kind {
            ErrorKind::StartLineTooLong => 414,
            ErrorKind::HeadTooLarge | ErrorKind::TooManyHeaders => 431,
            ErrorKind::UnsupportedScheme | ErrorKind::UnsupportedTransferCoding => 501,
            ErrorKind::UnsupportedVersion => 505,
            _ => 400,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction {
            Direction::Request => write!(f, "{}", self.kind),
            Direction::Response => write!(f, "upstream response: {}", self.kind),
        }
    }
}

impl std::error::Error for HttpError {}
