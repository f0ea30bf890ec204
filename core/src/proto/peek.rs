//! What an intercepted client says first, looked at without taking it: an
//! HTTP/1 request's `Host`, or a TLS ClientHello's server name (SNI). A
//! transparent service names the destination by it for the rules, the
//! access log and a parent; the bytes themselves go on unchanged.
//!
//! The parser is strict and decides on a prefix: once [`peek`] says
//! anything but [`Peeked::Incomplete`], more bytes never change its
//! answer. Anything that is not exactly a well-formed HTTP/1.0 or 1.1
//! request head, or a well-formed ClientHello, is [`Peeked::Other`] (its
//! connection goes by address only); a name is only ever a valid DNS
//! name, lowercased and without a final dot, never an address literal.

/// What the client's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not decided yet: more bytes may make it HTTP, TLS or other.
    Incomplete,
    /// A whole HTTP/1 request head; the name its one `Host` gives, if it
    /// gives a name (not an address, not two Hosts).
    Http(Option<String>),
    /// A whole TLS ClientHello; the host name its `server_name` gives, if any.
    Tls(Option<String>),
    /// Neither (or malformed): the connection is known by address only.
    Other,
}

/// The longest name DNS allows (RFC 1035, in its text form).
const NAME_MAX: usize = 253;
/// The longest request line or header line looked at; a longer one is not
/// a request this peek understands.
const LINE_MAX: usize = 8192;
/// The largest ClientHello looked at (real ones are a few KiB, post-quantum
/// key shares included).
const HELLO_MAX: usize = 64 * 1024;

/// Classifies the client's first bytes `data` (see the module docs).
pub fn peek(data: &[u8]) -> Peeked {
    match data.first() {
        None => Peeked::Incomplete,
        Some(0x16) => tls(data),
        Some(b) if b.is_ascii_uppercase() => http(data),
        Some(_) => Peeked::Other,
    }
}

// ---------------------------------------------------------------- HTTP

/// `tchar` of RFC 9110: the bytes of a method or a header name.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One line of `data` from `at`: its bytes without the CRLF and where the
/// next line starts; `Err(true)`: incomplete; `Err(false)`: not a line this
/// parser takes (a bare LF or CR, or too long).
fn line(data: &[u8], at: usize) -> Result<(&[u8], usize), bool> {
    let rest = &data[at..];
    let window = &rest[..rest.len().min(LINE_MAX + 2)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(false),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Ok((&rest[..i], at + i + 2)),
            Some(_) => Err(false),
            None => Err(true),
        },
        None if rest.len() > LINE_MAX => Err(false),
        None => Err(true),
    }
}

fn http(data: &[u8]) -> Peeked {
    // The request line, checked as far as it has come.
    let (first, mut at) = match line(data, 0) {
        Ok(l) => l,
        Err(true) => {
            // (A CR at the end waits for its LF.)
            let part = data.strip_suffix(b"\r").unwrap_or(data);
            return match request_line(part, false) {
                true => Peeked::Incomplete,
                false => Peeked::Other,
            };
        }
        Err(false) => return Peeked::Other,
    };
    if !request_line(first, true) {
        return Peeked::Other;
    }
    let mut host: Option<Option<String>> = None;
    let mut hosts = 0;
    loop {
        let (l, next) = match line(data, at) {
            Ok(l) => l,
            Err(true) => {
                // What has come of the line must be a header's start.
                let part = &data[at..];
                return match header_prefix(part.strip_suffix(b"\r").unwrap_or(part)) {
                    true => Peeked::Incomplete,
                    false => Peeked::Other,
                };
            }
            Err(false) => return Peeked::Other,
        };
        at = next;
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = header(l) else {
            return Peeked::Other;
        };
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(host_name(value));
        }
    }
    match (hosts, host) {
        (1, Some(name)) => Peeked::Http(name),
        // None, or several (which a server must refuse): no name.
        _ => Peeked::Http(None),
    }
}

/// Whether `l` is (`whole`) a request line, or (not `whole`) the start of
/// one: `METHOD SP TARGET SP HTTP/1.0|HTTP/1.1`.
fn request_line(l: &[u8], whole: bool) -> bool {
    let method_len = l.iter().take_while(|&&b| tchar(b)).count();
    if method_len == l.len() {
        return !whole && method_len <= 32;
    }
    if method_len == 0 || method_len > 32 || l[method_len] != b' ' {
        return false;
    }
    let rest = &l[method_len + 1..];
    let target_len = rest.iter().take_while(|&&b| b.is_ascii_graphic()).count();
    if target_len == rest.len() {
        return !whole;
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return false;
    }
    let version = &rest[target_len + 1..];
    if whole {
        version == b"HTTP/1.1" || version == b"HTTP/1.0"
    } else {
        let n = version.len().min(8);
        version.len() <= 8 && (b"HTTP/1.1"[..n] == version[..] || b"HTTP/1.0"[..n] == version[..])
    }
}

/// A header line's name and value (without the optional whitespace
/// around it); `None` for anything else (a fold, a space before the
/// colon, a control byte).
fn header(l: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = l.iter().position(|&b| b == b':')?;
    let name = &l[..colon];
    if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
        return None;
    }
    let value = &l[colon + 1..];
    if value.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        return None;
    }
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    Some((name, &value[start..end]))
}

/// Whether `part` (a header line that has not ended) may still become one.
fn header_prefix(part: &[u8]) -> bool {
    match part.iter().position(|&b| b == b':') {
        None => part.iter().all(|&b| tchar(b)),
        Some(_) => header(part).is_some(),
    }
}

/// The name a `Host` value gives: none for an address or anything that is
/// not `NAME[:PORT]`.
fn host_name(value: &[u8]) -> Option<String> {
    let host = match value.iter().rposition(|&b| b == b':') {
        Some(i) => {
            let port = &value[i + 1..];
            let ok = !port.is_empty()
                && port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(port)
                    .ok()
                    .and_then(|p| p.parse::<u16>().ok())
                    .is_some();
            if !ok {
                return None;
            }
            &value[..i]
        }
        None => value,
    };
    dns_name(host)
}

// ----------------------------------------------------------------- TLS

/// The handshake bytes of the records at the start of `data`: `Err(true)`:
/// not all of `want` bytes have come; `Err(false)`: not TLS handshake
/// records.
fn handshake_bytes(data: &[u8], want: usize) -> Result<Vec<u8>, bool> {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < want {
        let Some(head) = data.get(at..at + 5) else {
            // A partial record header must still be a handshake record's.
            let part = &data[at..];
            let ok = part.first().is_none_or(|&b| b == 0x16)
                && part.get(1).is_none_or(|&b| b == 3)
                && part.get(2).is_none_or(|&b| b <= 4);
            return Err(ok);
        };
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if head[0] != 0x16 || head[1] != 3 || head[2] > 4 || len == 0 || len > 16384 {
            return Err(false);
        }
        let body = &data[at + 5..];
        let take = body.len().min(len);
        out.extend_from_slice(&body[..take]);
        if take < len {
            return if out.len() >= want {
                Ok(out)
            } else {
                Err(true)
            };
        }
        at += 5 + len;
    }
    Ok(out)
}

/// Reads a big-endian number of `n` bytes at `*at`, moving past it.
fn number(b: &[u8], at: &mut usize, n: usize) -> Option<usize> {
    let v = b.get(*at..*at + n)?;
    *at += n;
    Some(v.iter().fold(0, |a, &x| a << 8 | usize::from(x)))
}

/// `n` bytes at `*at`, moving past them.
fn bytes<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let v = b.get(*at..*at + n)?;
    *at += n;
    Some(v)
}

fn tls(data: &[u8]) -> Peeked {
    let head = match handshake_bytes(data, 4) {
        Ok(h) => h,
        Err(true) => return Peeked::Incomplete,
        Err(false) => return Peeked::Other,
    };
    let len = usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
    if head[0] != 1 || len > HELLO_MAX {
        return Peeked::Other;
    }
    let all = match handshake_bytes(data, 4 + len) {
        Ok(h) => h,
        Err(true) => return Peeked::Incomplete,
        Err(false) => return Peeked::Other,
    };
    match client_hello(&all[4..4 + len]) {
        Some(name) => Peeked::Tls(name),
        None => Peeked::Other,
    }
}

/// A ClientHello's body: `Some(name)` when well-formed (`name`: its
/// server name, if it has a valid one), `None` when not.
fn client_hello(b: &[u8]) -> Option<Option<String>> {
    let mut at = 0;
    let version = number(b, &mut at, 2)?;
    if version >> 8 != 3 {
        return None;
    }
    bytes(b, &mut at, 32)?;
    let session = number(b, &mut at, 1)?;
    if session > 32 {
        return None;
    }
    bytes(b, &mut at, session)?;
    let suites = number(b, &mut at, 2)?;
    if suites == 0 || suites % 2 != 0 {
        return None;
    }
    bytes(b, &mut at, suites)?;
    let methods = number(b, &mut at, 1)?;
    if methods == 0 {
        return None;
    }
    bytes(b, &mut at, methods)?;
    if at == b.len() {
        // No extensions (TLS 1.0 allows it): no name.
        return Some(None);
    }
    let ext_len = number(b, &mut at, 2)?;
    if at + ext_len != b.len() {
        return None;
    }
    let mut seen = Vec::new();
    let mut name = None;
    while at < b.len() {
        let kind = number(b, &mut at, 2)?;
        let len = number(b, &mut at, 2)?;
        let body = bytes(b, &mut at, len)?;
        if seen.contains(&kind) {
            // RFC 8446 4.2: one extension of a type at most.
            return None;
        }
        seen.push(kind);
        if kind == 0 {
            name = server_name(body)?;
        }
    }
    Some(name)
}

/// The `server_name` extension (RFC 6066 3): `Some(name)` when well-formed
/// (`name` none when its host name is not a valid DNS name).
fn server_name(b: &[u8]) -> Option<Option<String>> {
    let mut at = 0;
    let list = number(b, &mut at, 2)?;
    if list == 0 || at + list != b.len() {
        return None;
    }
    let mut name = None;
    while at < b.len() {
        let kind = number(b, &mut at, 1)?;
        let len = number(b, &mut at, 2)?;
        let n = bytes(b, &mut at, len)?;
        if kind == 0 {
            if name.is_some() {
                // One host_name at most.
                return None;
            }
            name = Some(dns_name(n));
        }
    }
    Some(name.flatten())
}

// --------------------------------------------------------------- names

/// `raw` as a DNS name (letters, digits, `-` and `_` in labels of at most
/// 63, at most 253 in all, not an address), lowercased, its final dot
/// dropped.
fn dns_name(raw: &[u8]) -> Option<String> {
    let n = raw.strip_suffix(b".").unwrap_or(raw);
    if n.is_empty() || n.len() > NAME_MAX {
        return None;
    }
    let mut last = &n[..0];
    for label in n.split(|&b| b == b'.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-');
        if !ok {
            return None;
        }
        last = label;
    }
    // An all-digit last label is an address (1.2.3.4), not a name.
    if last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok().map(str::to_ascii_lowercase)
}

#[cfg(any(test, fuzzing, feature = "harness"))]
/// The fuzz target's checks: no panic; a decided answer stays the same
/// whatever follows; a name is a valid lowercase DNS name.
pub fn fuzz(data: &[u8]) {
    let whole = peek(data);
    if let Peeked::Http(Some(n)) | Peeked::Tls(Some(n)) = &whole {
        assert!(
            dns_name(n.as_bytes()).as_deref() == Some(n.as_str()),
            "peeked name {n:?} is not a lowercase DNS name"
        );
    }
    // The first decided prefix decides the whole (checked at a few cuts,
    // so that a long input stays fast).
    let step = (data.len() / 64).max(1);
    for cut in (0..data.len()).step_by(step) {
        let part = peek(&data[..cut]);
        if part != Peeked::Incomplete {
            assert_eq!(part, whole, "the answer on {cut} bytes changed with more");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn name(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    /// A ClientHello record naming `sni` (none: no server_name).
    pub(crate) fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(s) = sni {
            let s = s.as_bytes();
            let mut list = vec![0u8];
            list.extend_from_slice(&(s.len() as u16).to_be_bytes());
            list.extend_from_slice(s);
            let mut body = (list.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(&list);
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
            ext.extend_from_slice(&body);
        }
        // supported_versions: TLS 1.3.
        ext.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        let mut ch = vec![3, 3];
        ch.extend_from_slice(&[7; 32]);
        ch.push(0);
        ch.extend_from_slice(&[0, 2, 0x13, 0x01]);
        ch.extend_from_slice(&[1, 0]);
        ch.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        ch.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(ch.len() as u16).to_be_bytes());
        hs.extend_from_slice(&ch);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn http_host_is_the_name() {
        let req = b"GET /a HTTP/1.1\r\nUser-Agent: x\r\nHost: Example.COM.:8080\r\n\r\nbody";
        assert_eq!(peek(req), Peeked::Http(name("example.com")));
        assert_eq!(
            peek(b"POST / HTTP/1.0\r\nhost:\tweb.test \r\n\r\n"),
            Peeked::Http(name("web.test"))
        );
    }

    #[test]
    fn http_without_a_usable_host_has_no_name() {
        for req in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.test:99999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: bad name\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: -a.test\r\n\r\n",
        ] {
            assert_eq!(
                peek(req),
                Peeked::Http(None),
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn not_quite_http_is_other() {
        for req in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"NICK someone\r\nUSER x 0 * :x\r\n",
            b"EHLO x\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\x05\x01\x00",
            b"get / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                peek(req),
                Peeked::Other,
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn a_prefix_waits_for_more() {
        let req = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(peek(&req[..cut]), Peeked::Incomplete, "{cut}");
        }
        let h = hello(Some("tls.test"));
        for cut in 0..h.len() {
            assert_eq!(peek(&h[..cut]), Peeked::Incomplete, "{cut}");
        }
    }

    #[test]
    fn tls_sni_is_the_name() {
        assert_eq!(
            peek(&hello(Some("TLS.test"))),
            Peeked::Tls(name("tls.test"))
        );
        assert_eq!(peek(&hello(None)), Peeked::Tls(None));
        assert_eq!(peek(&hello(Some("10.0.0.1"))), Peeked::Tls(None));
    }

    #[test]
    fn a_hello_over_two_records_is_read_whole() {
        let one = hello(Some("split.test"));
        let hs = &one[5..];
        let (a, b) = hs.split_at(20);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(peek(&two), Peeked::Tls(name("split.test")));
    }

    #[test]
    fn malformed_tls_is_other() {
        let good = hello(Some("a.test"));
        // Not a ClientHello (a ServerHello's type).
        let mut m = good.clone();
        m[5] = 2;
        assert_eq!(peek(&m), Peeked::Other);
        // An alert record.
        let mut m = good.clone();
        m[0] = 0x15;
        assert_eq!(peek(&m), Peeked::Other);
        // Extensions longer than the message.
        let mut m = good.clone();
        let at = good.len() - 1;
        m[at] ^= 0xff;
        m.truncate(at);
        let len = m.len() - 5;
        m[3..5].copy_from_slice(&(len as u16).to_be_bytes());
        let hs = len - 4;
        m[6..9].copy_from_slice(&[(hs >> 16) as u8, (hs >> 8) as u8, hs as u8]);
        assert_eq!(peek(&m), Peeked::Other);
        assert_eq!(peek(&[0x16, 3, 1, 0, 0]), Peeked::Other);
    }

    #[test]
    fn real_client_hellos() {
        let corpus = |n: &str| {
            let path = format!("{}/../fuzz/corpus/peek/{n}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        assert_eq!(
            peek(&corpus("tls_openssl_sni")),
            Peeked::Tls(name("tls.example.test"))
        );
        assert_eq!(peek(&corpus("tls_curl_sni")), Peeked::Tls(name("web.test")));
        assert_eq!(peek(&corpus("tls_openssl_no_sni")), Peeked::Tls(None));
    }

    #[test]
    fn decided_answers_hold_for_any_prefix() {
        for input in [
            hello(Some("x.test")),
            b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\nmore".to_vec(),
            b"\x00\x01".to_vec(),
        ] {
            fuzz(&input);
        }
    }
}
