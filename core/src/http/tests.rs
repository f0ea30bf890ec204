//! Table-driven tests of the HTTP message layer.

use super::*;
use quickcheck::{Arbitrary, Gen, QuickCheck};

fn limits() -> Limits {
    Limits::default()
}

fn parse_req(raw: &[u8]) -> Result<Parsed<Request>, HttpError> {
    parse_request(raw, &limits())
}

fn request(raw: &str) -> (Request, usize) {
    match parse_req(raw.as_bytes()) {
        Ok(Parsed::Complete { head, len }) => (head, len),
        other => panic!("{raw:?}: expected a complete request, got {other:?}"),
    }
}

fn response_for(method: &Method, raw: &str) -> Response {
    match parse_response(raw.as_bytes(), method, &limits()) {
        Ok(Parsed::Complete { head, .. }) => head,
        other => panic!("{raw:?}: expected a complete response, got {other:?}"),
    }
}

/// A request with `fields` (each ending in CRLF) after a standard line + Host.
fn with_fields(fields: &str) -> String {
    format!("GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n{fields}\r\n")
}

fn post_with(fields: &str) -> String {
    format!("POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\n{fields}\r\n")
}

// ---------------------------------------------------------------- requests

#[test]
fn request_refusals() {
    use ErrorKind::*;
    let long_target = format!("http://a.example/{}", "a".repeat(8200));
    let cases: Vec<(&str, String, u16, ErrorKind)> = vec![
        // framing
        ("CL+TE", post_with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400, ContentLengthAndTransferEncoding),
        ("TE+CL", post_with("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), 400, ContentLengthAndTransferEncoding),
        ("CL+TE with bad CL", post_with("Content-Length: x\r\nTransfer-Encoding: chunked\r\n"), 400, ContentLengthAndTransferEncoding),
        ("differing CL fields", post_with("Content-Length: 5\r\nContent-Length: 6\r\n"), 400, DifferingContentLength),
        ("differing CL list", post_with("Content-Length: 5, 6\r\n"), 400, DifferingContentLength),
        ("CL +5", post_with("Content-Length: +5\r\n"), 400, BadContentLength),
        ("CL -1", post_with("Content-Length: -1\r\n"), 400, BadContentLength),
        ("CL empty", post_with("Content-Length:\r\n"), 400, BadContentLength),
        ("CL spaces only", post_with("Content-Length:   \r\n"), 400, BadContentLength),
        ("CL non-digit", post_with("Content-Length: 5a\r\n"), 400, BadContentLength),
        ("CL hex", post_with("Content-Length: 0x5\r\n"), 400, BadContentLength),
        ("CL inner space", post_with("Content-Length: 5 5\r\n"), 400, BadContentLength),
        ("CL empty element", post_with("Content-Length: 5,\r\n"), 400, BadContentLength),
        ("CL empty middle", post_with("Content-Length: 5,,5\r\n"), 400, BadContentLength),
        ("CL 20 digits", post_with("Content-Length: 18446744073709551616\r\n"), 400, BadContentLength),
        ("CL 20 digits zero", post_with("Content-Length: 00000000000000000005\r\n"), 400, BadContentLength),
        ("CL decimal", post_with("Content-Length: 5.0\r\n"), 400, BadContentLength),
        ("TE gzip", post_with("Transfer-Encoding: gzip\r\n"), 400, TransferEncodingNotChunked),
        ("TE identity", post_with("Transfer-Encoding: identity\r\n"), 400, TransferEncodingNotChunked),
        ("TE chunked, gzip", post_with("Transfer-Encoding: chunked, gzip\r\n"), 400, TransferEncodingNotChunked),
        ("TE chunked then gzip field", post_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"), 400, TransferEncodingNotChunked),
        ("TE empty", post_with("Transfer-Encoding:\r\n"), 400, TransferEncodingNotChunked),
        ("TE commas only", post_with("Transfer-Encoding: , ,\r\n"), 400, TransferEncodingNotChunked),
        ("TE chunked twice", post_with("Transfer-Encoding: chunked, chunked\r\n"), 400, ChunkedTwice),
        ("TE chunked two fields", post_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400, ChunkedTwice),
        ("TE chunked twice mixed case", post_with("Transfer-Encoding: Chunked, CHUNKED\r\n"), 400, ChunkedTwice),
        ("TE chunked with params", post_with("Transfer-Encoding: chunked;x=1\r\n"), 400, BadTransferEncoding),
        ("TE not a token", post_with("Transfer-Encoding: chun ked\r\n"), 400, BadTransferEncoding),
        ("TE gzip, chunked", post_with("Transfer-Encoding: gzip, chunked\r\n"), 501, UnsupportedTransferCoding),
        ("TE in HTTP/1.0", "POST http://a.example/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(), 400, TransferEncodingInHttp10),
        // bytes and lines
        ("obs-fold SP", with_fields("X-A: a\r\n b\r\n"), 400, ObsFold),
        ("obs-fold HT", with_fields("X-A: a\r\n\tb\r\n"), 400, ObsFold),
        ("space before first field", "GET http://a.example/ HTTP/1.1\r\n Host: a.example\r\n\r\n".into(), 400, ObsFold),
        ("space before colon", with_fields("X-A : a\r\n"), 400, SpaceBeforeColon),
        ("tab before colon", with_fields("X-A\t: a\r\n"), 400, SpaceBeforeColon),
        ("space before colon on Host", "GET http://a.example/ HTTP/1.1\r\nHost : a.example\r\n\r\n".into(), 400, SpaceBeforeColon),
        ("space inside name", with_fields("X A: a\r\n"), 400, SpaceBeforeColon),
        ("bare CR in value", with_fields("X-A: a\rb\r\n"), 400, BareCr),
        ("bare CR in request line", "GET http://a.example/\r HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BareCr),
        ("bare CR as line end", with_fields("X-A: a\r"), 400, BareCr),
        ("bare LF request line", "GET http://a.example/ HTTP/1.1\nHost: a.example\r\n\r\n".into(), 400, BareLf),
        ("bare LF field", with_fields("X-A: a\n"), 400, BareLf),
        ("bare LF end", "GET http://a.example/ HTTP/1.1\r\nHost: a.example\n\n".into(), 400, BareLf),
        ("bare LF blank line", "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\n".into(), 400, BareLf),
        ("leading bare LF", "\nGET http://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BareLf),
        ("NUL in value", with_fields("X-A: a\0b\r\n"), 400, ControlByte),
        ("NUL in request line", "GET http://a.example/\0 HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, ControlByte),
        ("control in name", with_fields("X\x01A: a\r\n"), 400, ControlByte),
        ("DEL in value", with_fields("X-A: a\x7fb\r\n"), 400, ControlByte),
        ("ESC in value", with_fields("X-A: \x1b[31m\r\n"), 400, ControlByte),
        ("HT in request line", "GET\thttp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, ControlByte),
        ("empty name", with_fields(": a\r\n"), 400, EmptyHeaderName),
        ("no colon", with_fields("X-A\r\n"), 400, MalformedHeader),
        ("bad name char", with_fields("X(A): a\r\n"), 400, MalformedHeader),
        ("non-ASCII name", with_fields("X-\u{e9}: a\r\n"), 400, MalformedHeader),
        // start line
        ("double space", "GET  http://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, MalformedStartLine),
        ("bad method", "G(T http://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, MalformedStartLine),
        ("no version", "GET http://a.example/\r\nHost: a\r\n\r\n".into(), 400, MalformedStartLine),
        ("garbage version", "GET http://a.example/ HTTP/1.x\r\nHost: a\r\n\r\n".into(), 400, MalformedStartLine),
        ("lowercase version", "GET http://a.example/ http/1.1\r\nHost: a\r\n\r\n".into(), 400, MalformedStartLine),
        ("trailing space", "GET http://a.example/ HTTP/1.1 \r\nHost: a\r\n\r\n".into(), 400, MalformedStartLine),
        ("HTTP/2.0", "GET http://a.example/ HTTP/2.0\r\nHost: a\r\n\r\n".into(), 505, UnsupportedVersion),
        ("HTTP/1.2", "GET http://a.example/ HTTP/1.2\r\nHost: a\r\n\r\n".into(), 505, UnsupportedVersion),
        ("HTTP/0.9", "GET http://a.example/ HTTP/0.9\r\nHost: a\r\n\r\n".into(), 505, UnsupportedVersion),
        // Host
        ("missing Host", "GET http://a.example/ HTTP/1.1\r\nX-A: b\r\n\r\n".into(), 400, MissingHost),
        ("repeated Host", with_fields("Host: a.example\r\n"), 400, DuplicateHost),
        ("repeated Host on 1.0", "GET http://a.example/ HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n".into(), 400, DuplicateHost),
        ("Host list", "GET http://a.example/ HTTP/1.1\r\nHost: a, b\r\n\r\n".into(), 400, DuplicateHost),
        ("Host with space", "GET http://a.example/ HTTP/1.1\r\nHost: a b\r\n\r\n".into(), 400, BadHost),
        // targets
        // (Origin-form GET and HEAD parse: the proxy answers them itself.)
        ("origin-form", "POST / HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, OriginForm),
        ("origin-form path", "DELETE /x?y HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, OriginForm),
        ("https", "GET https://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 501, UnsupportedScheme),
        ("HTTPS upper", "GET HTTPS://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 501, UnsupportedScheme),
        ("ftp", "GET ftp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 501, UnsupportedScheme),
        ("no scheme", "GET a.example/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("authority-form GET", "GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("bad scheme", "GET 1http://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("userinfo", "GET http://u:p@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("fragment", "GET http://a.example/#f HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("empty host", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("empty host with port", "GET http://:80/x HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("port 0", "GET http://a.example:0/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("port 65536", "GET http://a.example:65536/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("port letters", "GET http://a.example:8o/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("percent host", "GET http://a%2eexample/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("bad v6", "GET http://[::g]/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("v6 zone", "GET http://[fe80::1%25eth0]/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("unclosed v6", "GET http://[::1/ HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("non-ASCII target", "GET http://a.example/\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        ("asterisk on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, BadTarget),
        // CONNECT
        ("CONNECT no port", "CONNECT a.example HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT empty port", "CONNECT a.example: HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT port 0", "CONNECT a.example:0 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT port 65536", "CONNECT a.example:65536 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT port huge", "CONNECT a.example:4294967297 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT negative port", "CONNECT a.example:-443 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT URL form", "CONNECT http://a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT https URL", "CONNECT https://a.example:443/ HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT with path", "CONNECT a.example:443/x HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT v6 no port", "CONNECT [::1] HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT empty host", "CONNECT :443 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT userinfo", "CONNECT u@a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: a.example\r\n\r\n".into(), 400, BadConnectTarget),
        ("CONNECT with TE", "CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".into(), 400, ConnectWithBody),
        ("CONNECT with CL", "CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n".into(), 400, ConnectWithBody),
        ("CONNECT missing Host", "CONNECT a.example:443 HTTP/1.1\r\n\r\n".into(), 400, MissingHost),
        // other fields
        ("Connection names CL", post_with("Connection: Content-Length\r\nContent-Length: 1\r\n"), 400, ConnectionNamesFramingHeader),
        ("Connection names TE", post_with("Connection: close, transfer-encoding\r\n"), 400, ConnectionNamesFramingHeader),
        ("Connection names Host", with_fields("Connection: host\r\n")[..].into(), 400, ConnectionNamesFramingHeader),
        ("TRACE bad Max-Forwards", "TRACE http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: x\r\n\r\n".into(), 400, BadMaxForwards),
        ("TRACE empty Max-Forwards", "TRACE http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards:\r\n\r\n".into(), 400, BadMaxForwards),
        ("OPTIONS two Max-Forwards", "OPTIONS http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 1\r\nMax-Forwards: 1\r\n\r\n".into(), 400, BadMaxForwards),
        // limits
        ("request line over 8 KiB", format!("GET {long_target} HTTP/1.1\r\nHost: a\r\n\r\n"), 414, StartLineTooLong),
        ("head over 64 KiB", with_fields(&format!("X-A: {}\r\n", "a".repeat(65536))), 431, HeadTooLarge),
        ("too many fields", with_fields(&"X-A: a\r\n".repeat(256)), 431, TooManyHeaders),
    ];
    for (name, raw, status, kind) in cases {
        match parse_req(raw.as_bytes()) {
            Err(e) => {
                assert_eq!((e.kind(), e.status()), (kind, status), "{name}: {raw:?}");
                assert_eq!(e.direction(), Direction::Request);
            }
            Ok(other) => panic!("{name}: expected {kind:?}, got {other:?}"),
        }
        // The same verdict when the head arrives one byte at a time.
        let mut parser = HeadParser::new();
        let mut verdict = Ok(Parsed::Partial);
        for end in 1..=raw.len() {
            verdict = parser.parse_request(&raw.as_bytes()[..end], &limits());
            if !matches!(verdict, Ok(Parsed::Partial)) {
                break;
            }
        }
        assert_eq!(
            verdict.map_err(|e| e.kind()),
            Err(kind),
            "{name} (byte by byte)"
        );
    }
}

#[test]
fn limits_are_detected_while_partial() {
    // 8 KiB + 1 of request line and no CRLF yet.
    let line = format!("GET http://a.example/{}", "a".repeat(8192));
    let err = parse_req(&line.as_bytes()[..8193]).unwrap_err();
    assert_eq!(
        (err.kind(), err.status()),
        (ErrorKind::StartLineTooLong, 414)
    );
    // Exactly 8 KiB and no CRLF yet: still partial; a CR alone too.
    assert_eq!(parse_req(&line.as_bytes()[..8192]), Ok(Parsed::Partial));
    let mut with_cr = line.as_bytes()[..8192].to_vec();
    with_cr.push(b'\r');
    assert_eq!(parse_req(&with_cr), Ok(Parsed::Partial));

    // A head of 64 KiB + 1 that has not ended.
    let mut head = with_fields("").into_bytes();
    head.truncate(head.len() - 2);
    while head.len() <= 65536 {
        head.extend_from_slice(format!("X-A: {}\r\n", "b".repeat(500)).as_bytes());
    }
    let err = parse_req(&head[..65537]).unwrap_err();
    assert_eq!((err.kind(), err.status()), (ErrorKind::HeadTooLarge, 431));
    assert_eq!(parse_req(&head[..65535]), Ok(Parsed::Partial));
}

#[test]
fn limits_at_the_edge() {
    // A request line of exactly 8192 bytes is accepted.
    let prefix = "GET http://a.example/";
    let suffix = " HTTP/1.1";
    let pad = 8192 - prefix.len() - suffix.len();
    let line = format!("{prefix}{}{suffix}", "a".repeat(pad));
    assert_eq!(line.len(), 8192);
    let raw = format!("{line}\r\nHost: a\r\n\r\n");
    let (req, len) = request(&raw);
    assert_eq!(len, raw.len());
    assert!(matches!(req.target, Target::Absolute { .. }));
    let raw = format!("{prefix}{}{suffix}\r\nHost: a\r\n\r\n", "a".repeat(pad + 1));
    assert_eq!(parse_req(raw.as_bytes()).unwrap_err().status(), 414);

    // A head of exactly 64 KiB is accepted, one byte more is not.
    let base = with_fields("X-A: \r\n");
    let fill = 65536 - base.len();
    let raw = with_fields(&format!("X-A: {}\r\n", "b".repeat(fill)));
    assert_eq!(raw.len(), 65536);
    assert_eq!(request(&raw).1, 65536);
    let raw = with_fields(&format!("X-A: {}\r\n", "b".repeat(fill + 1)));
    assert_eq!(parse_req(raw.as_bytes()).unwrap_err().status(), 431);

    // 256 fields (Host included) are accepted.
    let raw = with_fields(&"X-A: a\r\n".repeat(255));
    assert_eq!(request(&raw).0.headers.len(), 256);
}

#[test]
fn request_targets() {
    let cases: &[(&str, &str, Target)] = &[
        (
            "GET",
            "http://a.example/x?y=1",
            abs("a.example", 80, "/x?y=1"),
        ),
        ("GET", "http://A.Example:8080", abs("a.example", 8080, "/")),
        ("GET", "HTTP://a.example?q", abs("a.example", 80, "/?q")),
        ("GET", "http://a.example:/p", abs("a.example", 80, "/p")),
        ("GET", "http://10.0.0.1:81/", abs("10.0.0.1", 81, "/")),
        ("GET", "http://[::1]:8080/p", abs("::1", 8080, "/p")),
        ("GET", "http://[2001:DB8::1]/", abs("2001:db8::1", 80, "/")),
        (
            "GET",
            "http://a_b.example//x",
            abs("a_b.example", 80, "//x"),
        ),
        ("OPTIONS", "http://a.example", abs("a.example", 80, "*")),
        ("OPTIONS", "http://a.example/", abs("a.example", 80, "/")),
        ("OPTIONS", "http://a.example?x", abs("a.example", 80, "/?x")),
        ("OPTIONS", "*", Target::Asterisk),
        (
            "CONNECT",
            "a.example:443",
            Target::Authority(auth("a.example", 443)),
        ),
        (
            "CONNECT",
            "A.EXAMPLE:1",
            Target::Authority(auth("a.example", 1)),
        ),
        (
            "CONNECT",
            "[2001:db8::1]:65535",
            Target::Authority(auth("2001:db8::1", 65535)),
        ),
        (
            "CONNECT",
            "192.0.2.1:8443",
            Target::Authority(auth("192.0.2.1", 8443)),
        ),
    ];
    for (method, target, want) in cases {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let (req, _) = request(&raw);
        assert_eq!(&req.target, want, "{raw:?}");
        assert_eq!(req.method.as_str(), *method);
    }
}

fn auth(host: &str, port: u16) -> Authority {
    Authority {
        host: host.into(),
        port,
    }
}

fn abs(host: &str, port: u16, path: &str) -> Target {
    Target::Absolute {
        authority: auth(host, port),
        path: path.into(),
    }
}

#[test]
fn request_framing() {
    let cases: &[(&str, Framing)] = &[
        ("", Framing::NoBody),
        ("Content-Length: 0\r\n", Framing::Length(0)),
        ("Content-Length: 5\r\n", Framing::Length(5)),
        ("Content-Length: 5, 5\r\n", Framing::Length(5)),
        (
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            Framing::Length(5),
        ),
        (
            "Content-Length: 005\r\nContent-Length: 5\r\n",
            Framing::Length(5),
        ),
        (
            "Content-Length: 9999999999999999999\r\n",
            Framing::Length(9_999_999_999_999_999_999),
        ),
        ("Transfer-Encoding: chunked\r\n", Framing::Chunked),
        ("Transfer-Encoding: Chunked\r\n", Framing::Chunked),
        ("Transfer-Encoding: CHUNKED\r\n", Framing::Chunked),
        ("Transfer-Encoding: , chunked ,\r\n", Framing::Chunked),
        ("transfer-encoding:chunked\r\n", Framing::Chunked),
    ];
    for (fields, want) in cases {
        let (req, _) = request(&post_with(fields));
        assert_eq!(req.framing, *want, "{fields:?}");
    }
    let (req, _) =
        request("CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(req.framing, Framing::Length(0));
}

#[test]
fn request_derived_fields() {
    let (req, len) = request(
        "\r\n\r\nPUT http://a.example/ HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, X-Hop\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nExpect: 100-Continue\r\n\
         X-Obs: caf\u{e9}\tau lait\r\n\r\nBODY",
    );
    assert_eq!(len, "\r\n\r\nPUT http://a.example/ HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, X-Hop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nExpect: 100-Continue\r\nX-Obs: caf\u{e9}\tau lait\r\n\r\n".len());
    assert!(req.connection.keep_alive && req.connection.upgrade && !req.connection.close);
    assert_eq!(req.connection.tokens, ["keep-alive", "upgrade", "x-hop"]);
    assert!(req.connection.names("X-HOP"));
    assert!(req.expect_continue);
    assert_eq!(req.upgrade.as_deref(), Some("websocket"));
    assert!(req.keep_alive());
    assert_eq!(
        req.headers.get("x-obs"),
        Some("caf\u{e9}\tau lait".as_bytes())
    );
    assert_eq!(req.version, Version::Http11);

    // Upgrade without Connection: upgrade is not an upgrade; on 1.0 neither.
    let (req, _) = request(&with_fields("Upgrade: websocket\r\n"));
    assert_eq!(req.upgrade, None);
    let (req, _) = request("GET http://a/ HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: ws\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(req.upgrade, None);
    assert!(!req.expect_continue);
    assert!(!req.keep_alive());
    let (req, _) = request("GET http://a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(req.keep_alive());
    let (req, _) = request(&with_fields("Connection: close\r\n"));
    assert!(!req.keep_alive());

    // Max-Forwards: only TRACE / OPTIONS; saturating.
    let (req, _) = request("TRACE http://a/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
    assert!(req.max_forwards_exhausted());
    let (req, _) = request(
        "OPTIONS http://a/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 99999999999999999999999\r\n\r\n",
    );
    assert_eq!(req.max_forwards, Some(u64::MAX));
    let (req, _) = request(&with_fields("Max-Forwards: nonsense\r\n"));
    assert_eq!(req.max_forwards, None);
    // Methods are case-sensitive tokens.
    let (req, _) = request("get http://a/ HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(req.method, Method::Other("get".into()));
}

#[test]
fn partial_heads() {
    let raw = with_fields("X-A: b\r\n");
    for end in 0..raw.len() {
        assert_eq!(
            parse_req(&raw.as_bytes()[..end]),
            Ok(Parsed::Partial),
            "{end}"
        );
    }
    assert!(
        matches!(parse_req(raw.as_bytes()), Ok(Parsed::Complete { len, .. }) if len == raw.len())
    );
}

#[test]
fn resumed_parse_matches_whole_parse() {
    let samples = [
        with_fields("X-A: b\r\n"),
        post_with("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n",
        with_fields("X-A : b\r\n"),
        "\r\n\r\nGET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nGET http://b/".into(),
        "HTTP/1.1 200 OK\r\n\r\n".into(),
    ];
    for raw in &samples {
        let whole = parse_req(raw.as_bytes());
        for stride in 1..8 {
            let mut parser = HeadParser::new();
            let mut end = 0;
            let resumed = loop {
                end = (end + stride).min(raw.len());
                let r = parser.parse_request(&raw.as_bytes()[..end], &limits());
                if !matches!(r, Ok(Parsed::Partial)) || end == raw.len() {
                    break r;
                }
            };
            assert_eq!(whole, resumed, "{raw:?} stride {stride}");
        }
    }
}

// ---------------------------------------------------------- Basic credentials

#[test]
fn basic_credentials() {
    let basic = |u: &str, p: &str| ProxyAuth::Basic {
        user: u.into(),
        password: p.into(),
    };
    let cases: &[(&str, ProxyAuth)] = &[
        ("Basic dXNlcjpwYXNz", basic("user", "pass")),
        ("basic dXNlcjpwYXNz", basic("user", "pass")),
        ("BASIC dXNlcjpwYXNz", basic("user", "pass")),
        ("bAsIc   dXNlcjpwYXNz", basic("user", "pass")),
        ("Basic dXNlcjpwYTpzcw==", basic("user", "pa:ss")),
        ("Basic dXNlcjo=", basic("user", "")),
        ("Basic OnBhc3M=", basic("", "pass")),
        ("Basic YWwgaWNlOnDDpHNz", basic("al ice", "p\u{e4}ss")),
        ("Basic dXNlcg==", ProxyAuth::Invalid),
        ("Basic dXNlcjpwYXNz=", ProxyAuth::Invalid),
        ("Basic dXNlcjpwYXN", ProxyAuth::Invalid),
        ("Basic dXNlcj pwYXNz", ProxyAuth::Invalid),
        ("Basic dXNlcjpwYXNz====", ProxyAuth::Invalid),
        ("Basic YTpiAQ==", ProxyAuth::Invalid),
        ("Basic", ProxyAuth::Invalid),
        ("Basic ", ProxyAuth::Invalid),
        ("Bearer dXNlcjpwYXNz", ProxyAuth::Invalid),
        ("Basically dXNlcjpwYXNz", ProxyAuth::Invalid),
        ("Digest username=\"u\"", ProxyAuth::Invalid),
    ];
    for (value, want) in cases {
        assert_eq!(&ProxyAuth::parse_basic(value.as_bytes()), want, "{value:?}");
        let (req, _) = request(&with_fields(&format!("Proxy-Authorization: {value}\r\n")));
        assert_eq!(&req.proxy_auth, want, "{value:?} in a request");
    }
    let (req, _) = request(&with_fields(
        "Proxy-Authorization: Basic dXNlcjpwYXNz\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n",
    ));
    assert_eq!(req.proxy_auth, ProxyAuth::Invalid);
    let (req, _) = request(&with_fields(""));
    assert_eq!(req.proxy_auth, ProxyAuth::None);
    // Debug output never shows the password, nor the raw field.
    let (req, _) = request(&with_fields("Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"));
    let dbg = format!("{req:?}");
    assert!(
        !dbg.contains("\"pass\"") && !dbg.contains("dXNlcjpwYXNz"),
        "{dbg}"
    );
    assert!(dbg.contains("user"));
}

// ---------------------------------------------------------------- responses

#[test]
fn response_framing_rfc9112_order() {
    use Framing::*;
    let get = Method::Get;
    let head = Method::Head;
    let connect = Method::Connect;
    let cases: &[(&Method, &str, Framing)] = &[
        // 1. 1xx, 204, 304 and HEAD: no body whatever the fields say.
        (&get, "HTTP/1.1 100 Continue\r\n\r\n", NoBody),
        (
            &get,
            "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
            NoBody,
        ),
        (
            &get,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            Tunnel,
        ),
        (
            &get,
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            NoBody,
        ),
        (
            &get,
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            NoBody,
        ),
        (
            &head,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            NoBody,
        ),
        (
            &head,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            NoBody,
        ),
        (
            &head,
            "HTTP/1.1 404 Not Found\r\nContent-Length: x\r\n\r\n",
            NoBody,
        ),
        // 2. CONNECT 2xx: a tunnel, CL / TE ignored.
        (
            &connect,
            "HTTP/1.1 200 Connection established\r\n\r\n",
            Tunnel,
        ),
        (
            &connect,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Tunnel,
        ),
        (
            &connect,
            "HTTP/1.1 407 Auth\r\nContent-Length: 5\r\n\r\n",
            Length(5),
        ),
        // 3. Transfer-Encoding ending in chunked.
        (
            &get,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Chunked,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            Chunked,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            Chunked,
        ),
        // 4. Content-Length.
        (
            &get,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Length(5),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            Length(5),
        ),
        (
            &get,
            "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            Length(0),
        ),
        // 5. Otherwise until close.
        (&get, "HTTP/1.1 200 OK\r\n\r\n", UntilClose),
        (
            &get,
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n",
            UntilClose,
        ),
    ];
    for (method, raw, want) in cases {
        let resp = response_for(method, raw);
        assert_eq!(resp.framing, *want, "{method:?} {raw:?}");
    }
}

#[test]
fn response_refusals() {
    use ErrorKind::*;
    let get = Method::Get;
    let cases: Vec<(&str, String, ErrorKind)> = vec![
        (
            "CL+TE",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            ContentLengthAndTransferEncoding,
        ),
        (
            "differing CL",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n".into(),
            DifferingContentLength,
        ),
        (
            "CL list",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 7\r\n\r\n".into(),
            DifferingContentLength,
        ),
        (
            "bad CL",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".into(),
            BadContentLength,
        ),
        (
            "20-digit CL",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n".into(),
            BadContentLength,
        ),
        (
            "TE not chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
            TransferEncodingNotChunked,
        ),
        (
            "TE chunked, gzip",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".into(),
            TransferEncodingNotChunked,
        ),
        (
            "TE chunked twice",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n".into(),
            ChunkedTwice,
        ),
        (
            "TE in 1.0",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            TransferEncodingInHttp10,
        ),
        (
            "101 without Upgrade",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n".into(),
            BadUpgrade,
        ),
        (
            "Connection names CL",
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n".into(),
            ConnectionNamesFramingHeader,
        ),
        ("status 099", "HTTP/1.1 099 Low\r\n\r\n".into(), BadStatus),
        ("status 600", "HTTP/1.1 600 High\r\n\r\n".into(), BadStatus),
        (
            "status 2 digits",
            "HTTP/1.1 20 OK\r\n\r\n".into(),
            BadStatus,
        ),
        (
            "HTTP/2",
            "HTTP/2.0 200 OK\r\n\r\n".into(),
            UnsupportedVersion,
        ),
        ("not HTTP", "ICY 200 OK\r\n\r\n".into(), MalformedStartLine),
        (
            "bare LF",
            "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n".into(),
            BareLf,
        ),
        (
            "bare CR",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n".into(),
            BareCr,
        ),
        (
            "NUL",
            "HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n".into(),
            ControlByte,
        ),
        (
            "obs-fold",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n".into(),
            ObsFold,
        ),
        (
            "space before colon",
            "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n".into(),
            SpaceBeforeColon,
        ),
        (
            "empty name",
            "HTTP/1.1 200 OK\r\n: x\r\n\r\n".into(),
            EmptyHeaderName,
        ),
        (
            "head too large",
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(65536)),
            HeadTooLarge,
        ),
        (
            "status line too long",
            format!("HTTP/1.1 200 {}\r\n\r\n", "a".repeat(8192)),
            StartLineTooLong,
        ),
    ];
    for (name, raw, kind) in cases {
        match parse_response(raw.as_bytes(), &get, &limits()) {
            Err(e) => {
                assert_eq!((e.kind(), e.status()), (kind, 502), "{name}");
                assert_eq!(e.direction(), Direction::Response);
            }
            Ok(other) => panic!("{name}: expected {kind:?}, got {other:?}"),
        }
    }
}

#[test]
fn response_fields() {
    let resp = response_for(
        &Method::Get,
        "HTTP/1.1 200 Tr\u{e8}s\tbien\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.reason(), "Tr\u{e8}s\tbien".as_bytes());
    assert!(resp.connection.close);
    assert!(!resp.keep_alive());
    let resp = response_for(&Method::Get, "HTTP/1.1 204\r\n\r\n");
    assert_eq!(resp.reason(), b"");
    assert!(resp.keep_alive());
    let resp = response_for(&Method::Get, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
    assert!(!resp.keep_alive());
    let resp = response_for(
        &Method::Get,
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
    );
    assert!(resp.keep_alive());
    let resp = response_for(&Method::Get, "HTTP/1.1 100 Continue\r\n\r\n");
    assert!(resp.is_interim());
    let resp = response_for(
        &Method::Get,
        "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(!resp.is_interim());
    assert_eq!(resp.upgrade.as_deref(), Some("websocket"));
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::Get, &limits()),
        Ok(Parsed::Partial)
    );
}

// ---------------------------------------------------------------- bodies

/// Runs a decoder over `input` split at the given cut points (sorted);
/// returns (consumed, done, payload bytes).
fn run_body(
    framing: Framing,
    input: &[u8],
    cuts: &[usize],
) -> Result<(usize, bool, Vec<u8>), ErrorKind> {
    let mut decoder = BodyDecoder::new(framing, Direction::Request, &limits());
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.push(input.len());
    let mut payload = Vec::new();
    let mut at = 0usize;
    let mut fed = 0usize;
    for end in bounds {
        if end < fed {
            continue;
        }
        fed = end;
        // Everything up to `fed` is available; the decoder consumes it all
        // unless the message ends.
        loop {
            let piece = &input[at..fed];
            let step = decoder.step(piece).map_err(|e| e.kind())?;
            assert!(step.consumed <= piece.len());
            assert!(step.data.end <= step.consumed);
            payload.extend_from_slice(&piece[step.data.clone()]);
            at += step.consumed;
            if step.done {
                return Ok((at, true, payload));
            }
            if at == fed {
                break;
            }
        }
    }
    Ok((at, false, payload))
}

const NEXT: &[u8] = b"GET http://next/ HTTP/1.1\r\n";

#[test]
fn chunked_bodies_at_every_split_point() {
    let cases: &[(&str, &str)] = &[
        ("0\r\n\r\n", ""),
        ("5\r\nhello\r\n0\r\n\r\n", "hello"),
        ("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
        ("A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
        ("a\r\n0123456789\r\n000\r\n\r\n", "0123456789"),
        ("0000000000000003\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3;name\r\nabc\r\n0;last=yes\r\n\r\n", "abc"),
        ("3 ; a = b ;c\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3;a=\"q \\\" ; \\\\ x\"\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3;a=\"\"\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3\t;\tx=y\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3\r\nabc\r\n0\r\nX-Trailer: one\r\nX-Two:\r\n\r\n", "abc"),
        (
            "3\r\n\r\n\r\r\n0\r\nChecksum: a\tb \u{e9}\r\n\r\n",
            "\r\n\r",
        ),
    ];
    for (body, payload) in cases {
        let mut input = body.as_bytes().to_vec();
        input.extend_from_slice(NEXT);
        let want = Ok((body.len(), true, payload.as_bytes().to_vec()));
        assert_eq!(
            run_body(Framing::Chunked, &input, &[]),
            want,
            "{body:?} whole"
        );
        for cut in 0..=input.len() {
            assert_eq!(
                run_body(Framing::Chunked, &input, &[cut]),
                want,
                "{body:?} cut at {cut}"
            );
        }
        let every: Vec<usize> = (0..=input.len()).collect();
        assert_eq!(
            run_body(Framing::Chunked, &input, &every),
            want,
            "{body:?} byte by byte"
        );
        let mut decoder = BodyDecoder::new(Framing::Chunked, Direction::Request, &limits());
        assert_eq!(
            decoder.advance(&input),
            Ok(Progress {
                consumed: body.len(),
                done: true
            })
        );
        assert!(decoder.is_done());
        assert_eq!(
            decoder.advance(NEXT),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
    }
}

#[test]
fn chunked_refusals_at_every_split_point() {
    use ErrorKind::*;
    let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(4096));
    let big_trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(16 * 1024));
    let cases: Vec<(String, ErrorKind)> = vec![
        ("-1\r\n".into(), BadChunkSize),
        ("\r\n".into(), BadChunkSize),
        (";a\r\n".into(), BadChunkSize),
        (" 5\r\n".into(), BadChunkSize),
        ("0x5\r\n".into(), BadChunkSize),
        ("5g\r\n".into(), BadChunkSize),
        ("+5\r\n".into(), BadChunkSize),
        ("5\nhello".into(), BadChunkSize),
        ("5\r\rhello".into(), BadChunkSize),
        ("00000000000000001\r\n".into(), ChunkSizeTooLarge),
        ("10000000000000000\r\n".into(), ChunkSizeTooLarge),
        ("5 \r\nhello".into(), BadChunkExtension),
        ("5;\r\n".into(), BadChunkExtension),
        ("5;=b\r\n".into(), BadChunkExtension),
        ("5;a=\r\n".into(), BadChunkExtension),
        ("5;a =\r\n".into(), BadChunkExtension),
        ("5;a \r\n".into(), BadChunkExtension),
        ("5;a=b \r\n".into(), BadChunkExtension),
        ("5;a=\"b\r\n".into(), BadChunkExtension),
        ("5;a=\"b\"c\r\n".into(), BadChunkExtension),
        ("5;a=b\nhello".into(), BadChunkExtension),
        ("5;a=\"\n\"\r\n".into(), BadChunkExtension),
        ("5;a=\"\0\"\r\n".into(), BadChunkExtension),
        ("5;a(b)\r\n".into(), BadChunkExtension),
        (long_ext, ChunkLineTooLong),
        ("5\r\nhelloX\r\n".into(), MissingChunkCrlf),
        ("5\r\nhello\rX".into(), MissingChunkCrlf),
        ("5\r\nhello\n0\r\n\r\n".into(), MissingChunkCrlf),
        ("0\r\nX: a\r\n b\r\n\r\n".into(), BadTrailer),
        ("0\r\n X: a\r\n\r\n".into(), BadTrailer),
        ("0\r\nX : a\r\n\r\n".into(), BadTrailer),
        ("0\r\n: a\r\n\r\n".into(), BadTrailer),
        ("0\r\nX\r\n\r\n".into(), BadTrailer),
        ("0\r\nX: a\0\r\n\r\n".into(), BadTrailer),
        ("0\r\nX: a\nY: b\r\n\r\n".into(), BadTrailer),
        ("0\r\nX: a\r\r\n".into(), BadTrailer),
        ("0\r\n\r\r".into(), BadTrailer),
        ("0\r\n\n".into(), BadTrailer),
        (big_trailer, TrailerTooLarge),
    ];
    for (body, kind) in cases {
        let input = body.as_bytes();
        assert_eq!(
            run_body(Framing::Chunked, input, &[]).map(|_| ()),
            Err(kind),
            "{body:?}"
        );
        // Every cut of the short cases; of the long ones, a spread of cuts.
        let every = if input.len() > 256 { 61 } else { 1 };
        for cut in (0..=input.len()).step_by(every) {
            assert_eq!(
                run_body(Framing::Chunked, input, &[cut]).map(|_| ()),
                Err(kind),
                "{body:?} cut at {cut}"
            );
        }
    }
    // Errors are sticky, and carry the side's status.
    let mut decoder = BodyDecoder::new(Framing::Chunked, Direction::Response, &limits());
    let err = decoder.step(b"z").unwrap_err();
    assert_eq!((err.kind(), err.status()), (BadChunkSize, 502));
    assert_eq!(decoder.step(b"0\r\n\r\n"), Err(err));
    let mut decoder = BodyDecoder::new(Framing::Chunked, Direction::Request, &limits());
    assert_eq!(decoder.step(b"z").unwrap_err().status(), 400);
}

#[test]
fn huge_chunk_sizes_are_streamed_not_buffered() {
    let mut decoder = BodyDecoder::new(Framing::Chunked, Direction::Response, &limits());
    let step = decoder.step(b"ffffffffffffffff\r\nabc").unwrap();
    assert_eq!((step.consumed, step.data, step.done), (21, 18..21, false));
    assert!(decoder.finish().is_err());
}

#[test]
fn length_and_close_delimited_bodies() {
    let input = b"helloGET";
    for cut in 0..=input.len() {
        assert_eq!(
            run_body(Framing::Length(5), input, &[cut]),
            Ok((5, true, b"hello".to_vec())),
            "cut at {cut}"
        );
    }
    assert_eq!(run_body(Framing::NoBody, input, &[]), Ok((0, true, vec![])));
    assert_eq!(
        run_body(Framing::Length(0), input, &[]),
        Ok((0, true, vec![]))
    );
    assert_eq!(
        run_body(Framing::UntilClose, input, &[3]),
        Ok((8, false, input.to_vec()))
    );

    // EOF ends a close-delimited body and truncates any other.
    let mut d = BodyDecoder::new(Framing::UntilClose, Direction::Response, &limits());
    assert_eq!(
        d.advance(b"abc"),
        Ok(Progress {
            consumed: 3,
            done: false
        })
    );
    assert_eq!(d.finish(), Ok(()));
    assert!(d.is_done());
    let mut d = BodyDecoder::new(Framing::Length(10), Direction::Response, &limits());
    assert_eq!(
        d.advance(b"abc"),
        Ok(Progress {
            consumed: 3,
            done: false
        })
    );
    let e = d.finish().unwrap_err();
    assert_eq!((e.kind(), e.status()), (ErrorKind::Truncated, 502));
    let mut d = BodyDecoder::new(Framing::Chunked, Direction::Request, &limits());
    assert_eq!(
        d.advance(b"3\r\nab"),
        Ok(Progress {
            consumed: 5,
            done: false
        })
    );
    assert_eq!(d.finish().unwrap_err().status(), 400);
    let mut d = BodyDecoder::new(Framing::Length(2), Direction::Request, &limits());
    assert_eq!(
        d.advance(b"ab"),
        Ok(Progress {
            consumed: 2,
            done: true
        })
    );
    assert_eq!(d.finish(), Ok(()));
    // A large Length counts down across calls.
    let mut d = BodyDecoder::new(Framing::Length(u64::MAX), Direction::Request, &limits());
    assert_eq!(
        d.advance(b"abc"),
        Ok(Progress {
            consumed: 3,
            done: false
        })
    );
}

/// A valid chunked body, re-chopped at arbitrary points.
#[derive(Debug, Clone)]
struct ChoppedChunked {
    body: Vec<u8>,
    payload: Vec<u8>,
    cuts: Vec<usize>,
}

impl Arbitrary for ChoppedChunked {
    fn arbitrary(g: &mut Gen) -> Self {
        let mut body = Vec::new();
        let mut payload = Vec::new();
        let exts: &[&str] = &["", ";a", ";a=b", " ;a=\"x;y\"", ";a=1;b=2", "\t; k = v"];
        let chunks = usize::arbitrary(g) % 6;
        for _ in 0..chunks {
            let data: Vec<u8> = Vec::<u8>::arbitrary(g);
            if data.is_empty() {
                continue;
            }
            let upper = bool::arbitrary(g);
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:0width$x}", data.len(), width = usize::arbitrary(g) % 5)
            };
            body.extend_from_slice(size.as_bytes());
            body.extend_from_slice(g.choose(exts).unwrap_or(&"").as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(&data);
            body.extend_from_slice(b"\r\n");
            payload.extend_from_slice(&data);
        }
        body.extend_from_slice(b"0");
        body.extend_from_slice(g.choose(exts).unwrap_or(&"").as_bytes());
        body.extend_from_slice(b"\r\n");
        for i in 0..usize::arbitrary(g) % 3 {
            body.extend_from_slice(format!("X-T{i}: v {i}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        let total = body.len() + NEXT.len();
        let mut cuts: Vec<usize> = Vec::<usize>::arbitrary(g)
            .into_iter()
            .map(|c| c % (total + 1))
            .collect();
        cuts.sort_unstable();
        ChoppedChunked {
            body,
            payload,
            cuts,
        }
    }
}

#[test]
fn quickcheck_chunked_rechopped() {
    fn prop(case: ChoppedChunked) -> bool {
        let mut input = case.body.clone();
        input.extend_from_slice(NEXT);
        run_body(Framing::Chunked, &input, &case.cuts)
            == Ok((case.body.len(), true, case.payload.clone()))
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(ChoppedChunked) -> bool);
}

// ---------------------------------------------------------------- encoders

fn encoded_request(raw: &str) -> (Forward, String) {
    let (req, _) = request(raw);
    let mut out = Vec::new();
    let fwd = encode_request_head(&req, &mut out);
    (fwd, String::from_utf8(out).unwrap())
}

#[test]
fn request_head_rewriting() {
    let cases: &[(&str, &str)] = &[
        (
            "GET http://Example.com:8080/a?b HTTP/1.1\r\nHost: wrong\r\nUser-Agent: x\r\n\
             Connection: keep-alive, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: 300\r\n\
             Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             TE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nAccept: */*\r\n\r\n",
            "GET /a?b HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: x\r\nAccept: */*\r\n\
             Via: 1.1 portico\r\n\r\n",
        ),
        (
            "GET http://a.example/ HTTP/1.1\r\nhost: a.example\r\nVia: 1.0 first\r\nX: 1\r\nvia: 1.1 second\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.example\r\nVia: 1.0 first\r\nX: 1\r\nvia: 1.1 second, 1.1 portico\r\n\r\n",
        ),
        (
            "GET http://a.example/chat HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, X-A\r\n\
             Upgrade: websocket\r\nX-A: 1\r\nSec-WebSocket-Key: k\r\n\r\n",
            "GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\
             Via: 1.1 portico\r\nConnection: upgrade\r\n\r\n",
        ),
        (
            "POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\ncontent-length: 5, 5\r\nX: y\r\nContent-Length: 05\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.example\r\ncontent-length: 5\r\nX: y\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "GET http://a.example/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.example\r\nVia: 1.0 portico\r\n\r\n",
        ),
        (
            "GET http://[::1]:80/ HTTP/1.1\r\nHost: x\r\nVia:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "GET http://[::1]:81/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:81\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "TRACE http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\nX: 1\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: a.example\r\nMax-Forwards: 2\r\nX: 1\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "OPTIONS http://a.example HTTP/1.1\r\nHost: a\r\nMax-Forwards: 1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a.example\r\nMax-Forwards: 0\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "GET http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.example\r\nMax-Forwards: 0\r\nExpect: 100-continue\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            "GET http://a.example/ HTTP/1.1\r\nHost: a\r\nX-Bin: caf\u{e9}\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.example\r\nX-Bin: caf\u{e9}\r\nVia: 1.1 portico\r\n\r\n",
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(
            encoded_request(raw),
            (Forward::Upstream, (*want).to_owned()),
            "{raw:?}"
        );
    }
    for raw in [
        "TRACE http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n",
        "OPTIONS http://a.example/ HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            encoded_request(raw),
            (Forward::AnswerLocally, String::new()),
            "{raw:?}"
        );
    }
}

#[test]
fn response_head_rewriting() {
    let get = Method::Get;
    let cases: &[(&Method, &str, Persist, &str)] = &[
        (
            &get,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, X-A\r\nX-A: 1\r\n\
             Keep-Alive: timeout=5\r\nServer: s\r\nUpgrade: h2c\r\nTrailer: X\r\n\r\n",
            Persist::Close,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\nVia: 1.1 portico\r\nConnection: close\r\n\r\n",
        ),
        (
            &get,
            "HTTP/1.0 200 Fine\r\nContent-Length: 2, 2\r\nVia: 1.1 up\r\n\r\n",
            Persist::KeepAlive,
            "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nVia: 1.1 up, 1.0 portico\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            &get,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\n",
            Persist::Close,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\nVia: 1.1 portico\r\nConnection: upgrade\r\n\r\n",
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTE: x\r\n\r\n",
            Persist::Default,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            &Method::Head,
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            Persist::Default,
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nVia: 1.1 portico\r\n\r\n",
        ),
        (
            &get,
            "HTTP/1.1 204\r\n\r\n",
            Persist::Default,
            "HTTP/1.1 204 \r\nVia: 1.1 portico\r\n\r\n",
        ),
    ];
    for (method, raw, persist, want) in cases {
        let resp = response_for(method, raw);
        let mut out = Vec::new();
        encode_response_head(&resp, *persist, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), *want, "{raw:?}");
    }
}

#[test]
fn proxy_replies() {
    assert_eq!(
        String::from_utf8(proxy_reply(407, &[], false)).unwrap(),
        "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 82\r\nProxy-Authenticate: Basic realm=\"portico\"\r\n\r\n\
         407 Proxy Authentication Required: the proxy needs a valid user name and password\n"
    );
    assert_eq!(
        String::from_utf8(proxy_reply(403, &[("X-Why", "rule 3"), ("Bad\r\nName", "x"), ("X-Bad", "a\r\nb")], true)).unwrap(),
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 43\r\n\
         X-Why: rule 3\r\nConnection: close\r\n\r\n403 Forbidden: denied by the proxy's rules\n"
    );
    for status in [400, 403, 407, 408, 414, 431, 501, 502, 503, 504, 505] {
        let reply = proxy_reply(status, &[], true);
        let Ok(Parsed::Complete { head, len }) = parse_response(&reply, &Method::Get, &limits())
        else {
            panic!("{status}: reply does not parse");
        };
        assert_eq!(head.status, status);
        let body = &reply[len..];
        assert_eq!(head.framing, Framing::Length(body.len() as u64));
        assert!(body.ends_with(b"\n") && !body[..body.len() - 1].contains(&b'\n'));
        assert!(body.starts_with(status.to_string().as_bytes()));
        assert_eq!(head.headers.contains("proxy-authenticate"), status == 407);
        assert!(!head.keep_alive());
    }
    assert_eq!(
        CONNECT_ESTABLISHED,
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    );

    let err =
        parse_req(post_with("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n").as_bytes())
            .unwrap_err();
    let reply = String::from_utf8(error_reply(&err)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\n400 Bad Request: Content-Length and Transfer-Encoding together\n"),
        "{reply}"
    );
    assert!(reply.contains("Connection: close\r\n"));
    let err = parse_req(b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err();
    assert!(error_reply(&err).starts_with(b"HTTP/1.1 501 Not Implemented\r\n"));
}

// ---------------------------------------------------------------- fuzz entry points

#[test]
fn fuzz_entry_points_survive_samples() {
    let samples: Vec<Vec<u8>> = vec![
        vec![],
        b"\x05".to_vec(),
        post_with("Transfer-Encoding: chunked\r\n").into_bytes(),
        (post_with("Transfer-Encoding: chunked\r\n") + "5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\nGET")
            .into_bytes(),
        (post_with("Content-Length: 3\r\n") + "abcdef").into_bytes(),
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03".to_vec(),
        b"\x01HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
        b"\x00HTTP/1.1 200 OK\r\n\r\nrest".to_vec(),
        b"\x02HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"\x00HTTP/1.1 101 S\r\nUpgrade: ws\r\n\r\n".to_vec(),
        b"\x00\r\n\r\n\r".to_vec(),
        vec![0xff; 300],
    ];
    for s in &samples {
        fuzz_request(s);
        fuzz_response(s);
        for stride in [1u8, 2, 7, 63] {
            let mut t = s.clone();
            if let Some(first) = t.first_mut() {
                *first = stride;
            }
            fuzz_request(&t);
            fuzz_response(&t);
        }
    }
}

#[test]
fn quickcheck_fuzz_entry_points() {
    fn prop(data: Vec<u8>) -> bool {
        fuzz_request(&data);
        fuzz_response(&data);
        true
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(Vec<u8>) -> bool);
    // Random mutations of a valid request, which reach deeper.
    fn mutated(edits: Vec<(u16, u8)>) -> bool {
        let mut base =
            (post_with("Transfer-Encoding: chunked\r\nConnection: upgrade\r\nUpgrade: x\r\n")
                + "5;a=\"b\"\r\nhello\r\n0\r\nT: 1\r\n\r\n")
                .into_bytes();
        let mut resp = b"\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: a\r\n\r\nhello".to_vec();
        for (at, byte) in edits {
            let i = usize::from(at) % base.len();
            base[i] = byte;
            let j = usize::from(at) % resp.len();
            resp[j] = byte;
        }
        fuzz_request(&base);
        fuzz_response(&resp);
        true
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(mutated as fn(Vec<(u16, u8)>) -> bool);
}

#[test]
fn decimal_digits_match_to_string() {
    for n in [0, 7, 10, 99, 100, 65535, 1 << 40, u64::MAX - 1, u64::MAX] {
        assert_eq!(encode::decimal(n, &mut [0; 20]), n.to_string().as_bytes());
    }
}

#[test]
fn an_authority_is_written_with_brackets_and_its_port() {
    for (host, port, shown, host_80) in [
        ("a.example", 80, "a.example:80", "a.example"),
        ("10.0.0.1", 8080, "10.0.0.1:8080", "10.0.0.1:8080"),
        ("::1", 1, "[::1]:1", "[::1]:1"),
        ("fe80::2", 80, "[fe80::2]:80", "[fe80::2]"),
    ] {
        let a = Authority {
            host: host.to_owned(),
            port,
        };
        assert_eq!(a.to_string(), shown);
        assert_eq!(a.url("/x?y=1"), format!("http://{shown}/x?y=1"));
        assert_eq!(a.host_header(80), host_80);
        let mut out = b"Host: ".to_vec();
        a.write_host_header(80, &mut out);
        assert_eq!(out, format!("Host: {host_80}").as_bytes());
    }
}

#[test]
fn known_names_are_told_apart_case_insensitively() {
    use fields::Name;
    // Every variant but Other (the first), in declaration order.
    assert_eq!(Name::KNOWN.len(), Name::MaxForwards as usize);
    for kind in Name::KNOWN {
        let lower = kind.lowercase();
        assert_eq!(Name::of(lower), kind);
        assert_eq!(Name::of(&lower.to_ascii_uppercase()), kind);
        let mut other = lower.to_vec();
        other[lower.len() - 1] ^= 0x01;
        assert_eq!(Name::of(&other), Name::Other, "{other:?}");
    }
    for other in [
        &b""[..],
        b"t",
        b"hosts",
        b"Hist",
        b"Content-Type",
        b"X-Via",
        b"Date",
    ] {
        assert_eq!(Name::of(other), Name::Other);
    }
    // Lookups by name find known and other fields alike, in order.
    let (req, _) = request(&with_fields("X-A: 1\r\nVia: a\r\nx-a: 2\r\nVIA: b\r\n"));
    assert_eq!(req.headers.get_all("x-A").collect::<Vec<_>>(), [b"1", b"2"]);
    assert_eq!(req.headers.get_all("via").collect::<Vec<_>>(), [b"a", b"b"]);
    assert_eq!(req.headers.count("Host"), 1);
    assert!(!req.headers.contains("upgrade") && !req.headers.contains("x-b"));
}

#[test]
fn tchar_is_rfc9110s() {
    for b in 0..=255u8 {
        let want = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        assert_eq!(fields::is_tchar(b), want, "{b:#x}");
    }
}

#[test]
fn fields_named_by_connection_are_dropped_whatever_their_length() {
    let long = "X-".to_owned() + &"l".repeat(70);
    let longer = long.clone() + "l";
    let (req, _) = request(&with_fields(&format!(
        "Connection: x-drop, {long}, close\r\nX-Drop: 1\r\nX-Dropped: 2\r\nx-DROP: 3\r\n\
         {long}: 4\r\n{longer}: 5\r\nClose: 6\r\nX-Keep:7\r\nX-Also:  8 \r\n"
    )));
    let mut out = Vec::new();
    assert_eq!(encode_request_head(&req, &mut out), Forward::Upstream);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "GET / HTTP/1.1\r\nHost: a.example\r\nX-Dropped: 2\r\n{longer}: 5\r\n\
             X-Keep: 7\r\nX-Also: 8\r\nVia: 1.1 portico\r\n\r\n"
        )
    );
}

fn get_with_accept(accept: &str) -> Request {
    let raw = format!(
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nAccept: {accept}\r\n\r\n"
    );
    request(&raw).0
}

#[test]
fn accept_names_html() {
    for html in [
        "text/html",
        "TEXT/HTML",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "application/json, text/html ; q=0.5",
    ] {
        assert!(get_with_accept(html).accepts_html(), "{html}");
    }
    for not in [
        "*/*",
        "text/*",
        "text/plain",
        "application/xhtml+xml",
        "text/html;q=0",
        "text/html; q=0.000",
        "text/htmlx",
    ] {
        assert!(!get_with_accept(not).accepts_html(), "{not}");
    }
    let (no_accept, _) = request("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert!(!no_accept.accepts_html());
}

/// The head and body of a reply, the head's fields by lower-case name.
fn split_reply(reply: &[u8]) -> (Response, String) {
    let Ok(Parsed::Complete { head, len }) = parse_response(reply, &Method::Get, &limits()) else {
        panic!(
            "the reply does not parse: {}",
            String::from_utf8_lossy(reply)
        );
    };
    let body = String::from_utf8(reply[len..].to_vec()).expect("a UTF-8 body");
    assert_eq!(head.framing, Framing::Length(body.len() as u64));
    (head, body)
}

#[test]
fn refusal_replies_say_the_cause() {
    use crate::outcome::Cause;
    let causes = [
        (502, Cause::DnsFailure),
        (502, Cause::ConnectRefused),
        (504, Cause::ConnectTimeout),
        (502, Cause::Unreachable),
        (403, Cause::Denied),
        (403, Cause::PortDenied),
        (407, Cause::AuthRequired),
        (503, Cause::Limit),
    ];
    for (status, cause) in causes {
        for html in [false, true] {
            let reply = refusal_reply(status, cause, "example.com:25", html);
            let (head, body) = split_reply(&reply);
            assert_eq!(head.status, status);
            assert_eq!(
                head.headers.get("portico-error"),
                Some(cause.word().as_bytes()),
                "{cause:?}"
            );
            assert!(!head.keep_alive(), "{cause:?}: the connection closes");
            assert_eq!(head.headers.contains("proxy-authenticate"), status == 407);
            let ctype = head.headers.get("content-type").unwrap_or_default();
            assert!(body.contains("example.com:25"), "{body}");
            assert!(body.contains(cause.word()), "{body}");
            if html {
                assert_eq!(ctype, b"text/html; charset=utf-8");
                assert!(body.starts_with("<!doctype html>"), "{body}");
                assert!(body.contains(&format!("<title>{status} ")), "{body}");
            } else {
                assert_eq!(ctype, b"text/plain; charset=utf-8");
                assert!(body.starts_with(&format!("{status} ")), "{body}");
                assert!(body.ends_with(&format!("({cause})\n")), "{body}");
                assert_eq!(body.matches('\n').count(), 1, "{body}");
            }
        }
    }
    let (_, text) = split_reply(&refusal_reply(
        403,
        Cause::PortDenied,
        "mail.example:25",
        false,
    ));
    assert_eq!(
        text,
        "403 Forbidden: CONNECT to mail.example:25: port 25 is not in the proxy's connect_ports \
         (port-denied)\n"
    );
    assert!(!text.contains("rules"));
}

#[test]
fn refusal_pages_escape_the_destination() {
    use crate::outcome::Cause;
    let dest = "<script>alert('x')</script>&\"q\":80";
    let (_, page) = split_reply(&refusal_reply(502, Cause::DnsFailure, dest, true));
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;q&quot;:80"),
        "{page}"
    );
    let (_, line) = split_reply(&refusal_reply(502, Cause::DnsFailure, "a\r\nb:80", false));
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
}
