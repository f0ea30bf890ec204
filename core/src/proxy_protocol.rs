//! The PROXY protocol, versions 1 and 2 (HAProxy's `doc/proxy-protocol.txt`).
//!
//! A load balancer in front of Portico opens each connection with a header
//! naming the real client and the address it connected to; a mapped port can
//! send the same header to its destination. [`parse`] reads a header of
//! either version from the start of a connection's first bytes and [`encode`]
//! writes one. Both are pure functions over bytes: the caller decides whom to
//! trust (`proxy_protocol_from`) and what to do with the payload that follows.
//!
//! # Parsing
//!
//! The version is told by the first byte (`P` for v1, `\r` for v2), and every
//! later byte is checked as soon as it arrives, so a connection that does not
//! start with a header is refused after its first byte, and one whose header
//! goes wrong is refused at the first byte that rules a valid header out. A
//! prefix of a valid header is always [`Parse::More`], never `Invalid`; a
//! result of `Done` or `Invalid` never changes when more bytes arrive. The
//! parser never reads past the header: [`Parse::Done`]'s `len` is its exact
//! size and everything after it is the client's payload. Whatever the input,
//! [`parse`] decides (`Done` or `Invalid`) once it holds [`MAX_LEN`] bytes, so
//! a caller never has to buffer more than that.
//!
//! Version 1 is read strictly:
//!
//! - the line is `PROXY TCP4 src dst sport dport\r\n` (or `TCP6`), with single
//!   spaces, and at most [`MAX_V1`] (107) bytes including the CRLF; a bare LF,
//!   a CR not followed by LF, or 107 bytes without a CRLF are invalid;
//! - `TCP4` needs two dotted-quad IPv4 addresses (no leading zeros, as
//!   `inet_pton` reads them), `TCP6` two IPv6 addresses (any textual form,
//!   `::ffff:a.b.c.d` included, but no zone index);
//! - ports are decimal `0..=65535` **without leading zeros** (`0` itself is
//!   fine): no sender writes them otherwise, and one spelling per value keeps
//!   the header unambiguous;
//! - `PROXY UNKNOWN` followed directly by CRLF, or by a space and anything up
//!   to the first CR (which must be followed by LF), is [`Header::Local`]: the
//!   spec says the receiver ignores what follows `UNKNOWN`.
//!
//! Version 2:
//!
//! - the 12-byte signature, then the version nibble (must be 2) and the
//!   command nibble (0 `LOCAL`, 1 `PROXY`; anything else is invalid);
//! - `LOCAL` (health checks) is [`Header::Local`] whatever the family byte
//!   says: the spec discards the whole address block, family included;
//! - `PROXY` with `TCP4`/`TCP6` (0x11, 0x21) is [`Header::Proxied`]. `UDP4`/
//!   `UDP6` (0x12, 0x22) are accepted the same way and their addresses taken:
//!   they still name the real client, which is all logs and rules want from a
//!   trusted balancer (HAProxy itself would keep the local addresses);
//! - `PROXY` with `UNSPEC` (0x00) or a Unix socket family (0x31, 0x32), which
//!   cannot be expressed as a [`SocketAddr`], is [`Header::Local`], as the
//!   spec allows; any other family byte is invalid, as the spec requires;
//! - the length must cover the family's address block (12, 36 or 216 bytes)
//!   and may not exceed [`MAX_V2_BODY`] (4096) bytes: a header announcing more
//!   is refused as soon as its length field arrives, so [`MAX_V2`] is 4112
//!   bytes rather than the format's 16 + 65535;
//! - TLVs after the addresses (`PROXY` only) are skipped, but their framing is
//!   checked as HAProxy does: each needs its 3-byte type and length and must
//!   end within the header. Their contents (CRC32C included) are not checked.
//!
//! # Encoding
//!
//! [`encode`] writes `TCP4` when both addresses are IPv4 and `TCP6` when both
//! are IPv6. When the families differ, the IPv4 one is written as its
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) and the header says `TCP6`, so
//! the real client still reaches the destination (writing `UNKNOWN`/`LOCAL`
//! would throw it away). IPv6 flow information and scope ids are not part of
//! the protocol and are dropped. Version 2 headers carry no TLVs and always
//! say `STREAM`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// The real client (`source`) and the address it connected to
    /// (`destination`).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v1 `UNKNOWN`, v2 `LOCAL`, or v2 `PROXY` with an address family that
    /// has no [`SocketAddr`] (`UNSPEC`, Unix sockets): keep the connection's
    /// own addresses.
    Local,
}

/// The outcome of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parse {
    /// Everything so far is the start of a valid header; read more.
    More,
    /// A complete header of `len` bytes; the bytes after it are payload.
    Done { header: Header, len: usize },
    /// Not a valid header (the reason, for the log). More bytes will not
    /// change this.
    Invalid(&'static str),
}

/// Which version [`encode`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text line.
    V1,
    /// The binary header.
    V2,
}

/// The longest v1 header, CRLF included (the spec's bound).
pub const MAX_V1: usize = 107;

/// The longest v2 address block plus TLVs (the header's length field) that
/// [`parse`] accepts; a longer one is [`Parse::Invalid`].
pub const MAX_V2_BODY: usize = 4096;

/// The longest v2 header [`parse`] accepts: the 16 fixed bytes and
/// [`MAX_V2_BODY`].
#[cfg(any(test, fuzzing, feature = "harness"))]
pub const MAX_V2: usize = 16 + MAX_V2_BODY;

/// The most bytes [`parse`] needs to decide: with this many it never returns
/// [`Parse::More`].
#[cfg(any(test, fuzzing, feature = "harness"))]
pub const MAX_LEN: usize = if MAX_V1 > MAX_V2 { MAX_V1 } else { MAX_V2 };

/// The v2 signature.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The v1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";

const V1_TOO_LONG: &str = "PROXY v1 header without CRLF within 107 bytes";

/// Parses a v1 or v2 header at the start of `buf`.
///
/// The version is told by the first byte; anything that starts neither
/// `PROXY ` nor the v2 signature is [`Parse::Invalid`] at its first byte that
/// rules both out. Never reads past the header: `len` in [`Parse::Done`] is
/// the header's size, and `buf[len..]` is the client's payload. See the
/// [module documentation](self) for exactly what is accepted.
#[must_use]
pub fn parse(buf: &[u8]) -> Parse {
    match buf.first() {
        None => Parse::More,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Parse::Invalid("not a PROXY protocol header"),
    }
}

/// Appends the header announcing `source` → `destination` to `out`.
///
/// Both IPv4: `TCP4`; both IPv6: `TCP6`; mixed: the IPv4 one is written as
/// IPv4-mapped IPv6 and the header says `TCP6`. Writes at most 104 bytes for
/// v1 and 52 for v2.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => {
            let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {protocol} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            );
            out.extend_from_slice(line.as_bytes());
        }
        Version::V2 => {
            out.extend_from_slice(SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&as_v6(s).octets());
                    out.extend_from_slice(&as_v6(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
}

#[cfg(any(test, fuzzing, feature = "harness"))]
/// Parses arbitrary bytes and checks [`parse`]'s documented invariants;
/// panics on a bug. For the fuzz targets and the tests.
pub fn fuzz(data: &[u8]) {
    let result = parse(data);
    match result {
        Parse::Done { header, len } => {
            assert!(len <= data.len(), "len {len} past the input");
            assert!(len <= MAX_LEN, "len {len} past MAX_LEN");
            let header_bytes = data.get(..len).unwrap_or_default();
            assert_eq!(parse(header_bytes), result, "header not self-delimiting");
            if let Some(short) = len.checked_sub(1).and_then(|n| data.get(..n)) {
                assert_eq!(parse(short), Parse::More, "header done early");
            }
            if let Header::Proxied {
                source,
                destination,
            } = header
            {
                for version in [Version::V1, Version::V2] {
                    let mut out = Vec::new();
                    encode(version, source, destination, &mut out);
                    match parse(&out) {
                        Parse::Done { header: again, len } => {
                            assert_eq!(len, out.len(), "re-encoded length");
                            if source.is_ipv4() == destination.is_ipv4() {
                                assert_eq!(again, header, "re-encoded header");
                            }
                        }
                        other => panic!("re-encoded header parsed as {other:?}"),
                    }
                }
            }
        }
        Parse::More => {
            assert!(data.len() < MAX_LEN, "More with {} bytes", data.len());
            if let Some(short) = data.len().checked_sub(1).and_then(|n| data.get(..n)) {
                assert_eq!(parse(short), Parse::More, "prefix of More not More");
            }
        }
        Parse::Invalid(_) => {}
    }
}

/// Why the v1 parser stopped before the end of the header.
enum Stop {
    More,
    Invalid(&'static str),
}

impl From<Stop> for Parse {
    fn from(stop: Stop) -> Parse {
        match stop {
            Stop::More => Parse::More,
            Stop::Invalid(why) => Parse::Invalid(why),
        }
    }
}

/// A cursor over the first [`MAX_V1`] bytes of the input.
struct Line<'a> {
    window: &'a [u8],
    pos: usize,
    /// The input holds at least `MAX_V1` bytes: running out of the window
    /// means the line is too long, not that more may come.
    full: bool,
}

impl<'a> Line<'a> {
    fn out_of_input(&self) -> Stop {
        if self.full {
            Stop::Invalid(V1_TOO_LONG)
        } else {
            Stop::More
        }
    }

    fn next(&mut self) -> Result<u8, Stop> {
        match self.window.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.out_of_input()),
        }
    }

    fn literal(&mut self, literal: &[u8], why: &'static str) -> Result<(), Stop> {
        for &expected in literal {
            if self.next()? != expected {
                return Err(Stop::Invalid(why));
            }
        }
        Ok(())
    }

    /// A non-empty run of at most `max` bytes satisfying `allowed`, ended by
    /// `end` (consumed, not returned).
    fn token(
        &mut self,
        allowed: fn(u8) -> bool,
        max: usize,
        end: u8,
        why: &'static str,
    ) -> Result<&'a [u8], Stop> {
        let start = self.pos;
        loop {
            let b = self.next()?;
            let taken = self.pos - 1 - start;
            if b == end && taken > 0 {
                return Ok(self.window.get(start..self.pos - 1).unwrap_or_default());
            }
            if b == end || !allowed(b) || taken == max {
                return Err(Stop::Invalid(why));
            }
        }
    }
}

#[derive(Clone, Copy)]
enum V1Protocol {
    Tcp4,
    Tcp6,
    Unknown,
}

fn parse_v1(buf: &[u8]) -> Parse {
    let mut line = Line {
        window: buf.get(..MAX_V1).unwrap_or(buf),
        pos: 0,
        full: buf.len() >= MAX_V1,
    };
    match v1(&mut line) {
        Ok(header) => Parse::Done {
            header,
            len: line.pos,
        },
        Err(stop) => stop.into(),
    }
}

fn v1(line: &mut Line<'_>) -> Result<Header, Stop> {
    const BAD_SPORT: &str = "PROXY v1: bad source port";
    const BAD_DPORT: &str = "PROXY v1: bad destination port";
    line.literal(V1_PREFIX, "not a PROXY protocol header")?;
    let protocol = v1_protocol(line)?;
    let (src, dst) = match protocol {
        V1Protocol::Unknown => return v1_unknown(line),
        V1Protocol::Tcp4 => {
            let src = line.token(is_v4_char, 15, b' ', "PROXY v1: bad TCP4 source address")?;
            let src = parse_ip::<Ipv4Addr>(src)
                .ok_or(Stop::Invalid("PROXY v1: bad TCP4 source address"))?;
            let dst = line.token(
                is_v4_char,
                15,
                b' ',
                "PROXY v1: bad TCP4 destination address",
            )?;
            let dst = parse_ip::<Ipv4Addr>(dst)
                .ok_or(Stop::Invalid("PROXY v1: bad TCP4 destination address"))?;
            (IpAddr::V4(src), IpAddr::V4(dst))
        }
        V1Protocol::Tcp6 => {
            let src = line.token(is_v6_char, 45, b' ', "PROXY v1: bad TCP6 source address")?;
            let src = parse_ip::<Ipv6Addr>(src)
                .ok_or(Stop::Invalid("PROXY v1: bad TCP6 source address"))?;
            let dst = line.token(
                is_v6_char,
                45,
                b' ',
                "PROXY v1: bad TCP6 destination address",
            )?;
            let dst = parse_ip::<Ipv6Addr>(dst)
                .ok_or(Stop::Invalid("PROXY v1: bad TCP6 destination address"))?;
            (IpAddr::V6(src), IpAddr::V6(dst))
        }
    };
    let sport = line.token(is_digit, 5, b' ', BAD_SPORT)?;
    let sport = parse_port(sport).ok_or(Stop::Invalid(BAD_SPORT))?;
    let dport = line.token(is_digit, 5, b'\r', BAD_DPORT)?;
    let dport = parse_port(dport).ok_or(Stop::Invalid(BAD_DPORT))?;
    line.literal(b"\n", "PROXY v1: CR not followed by LF")?;
    Ok(Header::Proxied {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

/// `TCP4 `, `TCP6 ` or `UNKNOWN` (the space after it is checked by
/// [`v1_unknown`]).
fn v1_protocol(line: &mut Line<'_>) -> Result<V1Protocol, Stop> {
    const PROTOCOLS: [(&[u8], V1Protocol); 3] = [
        (b"TCP4 ", V1Protocol::Tcp4),
        (b"TCP6 ", V1Protocol::Tcp6),
        (b"UNKNOWN", V1Protocol::Unknown),
    ];
    let rest = line.window.get(line.pos..).unwrap_or_default();
    for (name, protocol) in PROTOCOLS {
        let n = rest.len().min(name.len());
        if rest.get(..n) == name.get(..n) {
            if n < name.len() {
                return Err(line.out_of_input());
            }
            line.pos += n;
            return Ok(protocol);
        }
    }
    Err(Stop::Invalid(
        "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
    ))
}

/// After `UNKNOWN`: CRLF, or a space and anything up to the first CR, which
/// must be followed by LF.
fn v1_unknown(line: &mut Line<'_>) -> Result<Header, Stop> {
    let mut first = true;
    loop {
        match line.next()? {
            b'\r' => {
                line.literal(b"\n", "PROXY v1: CR not followed by LF")?;
                return Ok(Header::Local);
            }
            b'\n' => return Err(Stop::Invalid("PROXY v1: LF without CR")),
            b' ' => {}
            _ if first => {
                return Err(Stop::Invalid(
                    "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
                ))
            }
            _ => {}
        }
        first = false;
    }
}

fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn is_v4_char(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.'
}

fn is_v6_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

fn parse_ip<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Decimal `0..=65535`, no sign, no leading zeros.
fn parse_port(token: &[u8]) -> Option<u16> {
    if token.len() > 1 && token.first() == Some(&b'0') {
        return None;
    }
    let mut value: u32 = 0;
    for &b in token {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(value).ok()
}

fn parse_v2(buf: &[u8]) -> Parse {
    let n = buf.len().min(SIGNATURE.len());
    if buf.get(..n) != SIGNATURE.get(..n) {
        return Parse::Invalid("not a PROXY protocol header");
    }
    let Some(&version_command) = buf.get(12) else {
        return Parse::More;
    };
    if version_command >> 4 != 2 {
        return Parse::Invalid("PROXY v2: version is not 2");
    }
    let proxy = match version_command & 0x0f {
        0 => false,
        1 => true,
        _ => return Parse::Invalid("PROXY v2: command is neither LOCAL nor PROXY"),
    };
    let Some(&family) = buf.get(13) else {
        return Parse::More;
    };
    // The address block's size, for PROXY; LOCAL ignores the family.
    let addresses = if proxy {
        match family {
            0x00 => 0,
            0x11 | 0x12 => 12,
            0x21 | 0x22 => 36,
            0x31 | 0x32 => 216,
            _ => return Parse::Invalid("PROXY v2: unknown address family or protocol"),
        }
    } else {
        0
    };
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Parse::More;
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    if body_len > MAX_V2_BODY {
        return Parse::Invalid("PROXY v2: header longer than 4096 bytes of addresses and TLVs");
    }
    if body_len < addresses {
        return Parse::Invalid("PROXY v2: address block shorter than its family needs");
    }
    let len = 16 + body_len;
    let Some(body) = buf.get(16..len) else {
        return Parse::More;
    };
    if !proxy {
        return Parse::Done {
            header: Header::Local,
            len,
        };
    }
    let (block, tlvs) = body.split_at(addresses);
    if !tlvs_well_formed(tlvs) {
        return Parse::Invalid("PROXY v2: malformed TLV");
    }
    let header = match family {
        0x11 | 0x12 => v2_addresses::<4>(block, |o| IpAddr::V4(Ipv4Addr::from(o))),
        0x21 | 0x22 => v2_addresses::<16>(block, |o| IpAddr::V6(Ipv6Addr::from(o))),
        _ => None,
    }
    .unwrap_or(Header::Local);
    Parse::Done { header, len }
}

/// Source address, destination address (`N` bytes each), source port,
/// destination port.
fn v2_addresses<const N: usize>(block: &[u8], ip: fn([u8; N]) -> IpAddr) -> Option<Header> {
    let (src, rest) = block.split_first_chunk::<N>()?;
    let (dst, rest) = rest.split_first_chunk::<N>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, _) = rest.split_first_chunk::<2>()?;
    Some(Header::Proxied {
        source: SocketAddr::new(ip(*src), u16::from_be_bytes(*sport)),
        destination: SocketAddr::new(ip(*dst), u16::from_be_bytes(*dport)),
    })
}

/// Each TLV is a type byte, a big-endian length and that many bytes, and the
/// last ends exactly at the end of the header.
fn tlvs_well_formed(mut tlvs: &[u8]) -> bool {
    while !tlvs.is_empty() {
        let Some((&[_, hi, lo], rest)) = tlvs.split_first_chunk::<3>() else {
            return false;
        };
        let Some(rest) = rest.get(usize::from(u16::from_be_bytes([hi, lo]))..) else {
            return false;
        };
        tlvs = rest;
    }
    true
}

/// Both addresses in one family: an IPv4 address next to an IPv6 one becomes
/// IPv4-mapped IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let v6 = |a: SocketAddr| SocketAddr::V6(SocketAddrV6::new(as_v6(a.ip()), a.port(), 0, 0));
    (v6(source), v6(destination))
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxied {
            source: sa(source),
            destination: sa(destination),
        }
    }

    /// Valid headers, each with what it says.
    fn valid() -> Vec<(Vec<u8>, Header)> {
        let mut cases: Vec<(Vec<u8>, Header)> = vec![
            // v1, the spec's examples.
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
                proxied("255.255.255.255:65535", "255.255.255.255:65535"),
            ),
            (
                b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                  ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                    .to_vec(),
                proxied(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                ),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
            (
                // The spec's worst case: exactly 107 bytes.
                b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                  ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                    .to_vec(),
                Header::Local,
            ),
            (
                b"PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n".to_vec(),
                proxied("0.0.0.0:0", "10.0.0.1:1"),
            ),
            (
                b"PROXY TCP6 ::1 2001:db8::7 1080 22\r\n".to_vec(),
                proxied("[::1]:1080", "[2001:db8::7]:22"),
            ),
            (
                b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:192.0.2.2 5 6\r\n".to_vec(),
                proxied("[::ffff:192.0.2.1]:5", "[::ffff:192.0.2.2]:6"),
            ),
            (
                b"PROXY UNKNOWN whatever\tgoes\x00here\r\n".to_vec(),
                Header::Local,
            ),
            (b"PROXY UNKNOWN \r\n".to_vec(), Header::Local),
        ];
        let sig = SIGNATURE.to_vec();
        let v2 = |rest: &[u8]| [sig.as_slice(), rest].concat();
        cases.extend([
            // PROXY TCP4 192.168.0.1:56324 -> 192.168.0.11:443
            (
                v2(&[
                    0x21, 0x11, 0x00, 0x0c, 192, 168, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb,
                ]),
                proxied("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            // PROXY TCP6 2001:db8::1:1234 -> 2001:db8::2:80
            (
                v2(&[
                    0x21, 0x21, 0x00, 0x24, //
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, //
                    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, //
                    0x04, 0xd2, 0x00, 0x50,
                ]),
                proxied("[2001:db8::1]:1234", "[2001:db8::2]:80"),
            ),
            // HAProxy's health check: LOCAL, UNSPEC, no addresses.
            (v2(&[0x20, 0x00, 0x00, 0x00]), Header::Local),
            // LOCAL with an address block and a family it ignores.
            (
                v2(&[0x20, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
                Header::Local,
            ),
            (v2(&[0x20, 0x7f, 0x00, 0x02, 0xaa, 0xbb]), Header::Local),
            // PROXY UNSPEC: keep the connection's addresses.
            (v2(&[0x21, 0x00, 0x00, 0x00]), Header::Local),
            // PROXY UNSPEC with a TLV.
            (
                v2(&[0x21, 0x00, 0x00, 0x04, 0x04, 0x00, 0x01, 0x00]),
                Header::Local,
            ),
            // UDP4: addresses taken.
            (
                v2(&[
                    0x21, 0x12, 0x00, 0x0c, 10, 0, 0, 1, 10, 0, 0, 2, 0x00, 0x35, 0x00, 0x35,
                ]),
                proxied("10.0.0.1:53", "10.0.0.2:53"),
            ),
            // TCP4 with TLVs: an authority "a.example" and an empty NOOP.
            (
                v2(&[
                    0x21, 0x11, 0x00, 0x1b, 127, 0, 0, 1, 127, 0, 0, 2, 0x30, 0x39, 0x00, 0x50,
                    0x02, 0x00, 0x09, b'a', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e', //
                    0x04, 0x00, 0x00,
                ]),
                proxied("127.0.0.1:12345", "127.0.0.2:80"),
            ),
        ]);
        // UDP6 with ports 0.
        let mut udp6 = v2(&[0x21, 0x22, 0x00, 0x24]);
        udp6.extend_from_slice(&[0; 15]);
        udp6.push(1);
        udp6.extend_from_slice(&[0; 15]);
        udp6.push(2);
        udp6.extend_from_slice(&[0, 0, 0, 0]);
        cases.push((udp6, proxied("[::1]:0", "[::2]:0")));
        // A Unix socket (216 bytes of addresses): Local.
        let mut unix = v2(&[0x21, 0x31, 0x00, 0xd8]);
        unix.extend_from_slice(&[b'/'; 216]);
        cases.push((unix, Header::Local));
        // The largest length accepted, all TLVs.
        let mut big = v2(&[0x21, 0x11, 0x10, 0x00, 1, 1, 1, 1, 2, 2, 2, 2, 0, 3, 0, 4]);
        let tlv_len = MAX_V2_BODY - 12 - 3;
        big.push(0xe0);
        big.extend_from_slice(&u16::try_from(tlv_len).expect("fits").to_be_bytes());
        big.resize(MAX_V2, 0x55);
        cases.push((big, proxied("1.1.1.1:3", "2.2.2.2:4")));
        cases
    }

    /// Invalid inputs, each with the reason `parse` gives.
    fn invalid() -> Vec<(Vec<u8>, &'static str)> {
        let mut cases: Vec<(Vec<u8>, &'static str)> = [
            (&b"GET / HTTP/1.1\r\n"[..], "not a PROXY protocol header"),
            (b"\x05\x01\x00", "not a PROXY protocol header"),
            (b"PROXX TCP4", "not a PROXY protocol header"),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (
                b"PROXY TCP4\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (
                b"PROXY UNKNOWNX\r\n",
                "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (b"PROXY UNKNOWN\n", "PROXY v1: LF without CR"),
            (b"PROXY UNKNOWN foo\nbar\r\n", "PROXY v1: LF without CR"),
            (b"PROXY UNKNOWN\rX", "PROXY v1: CR not followed by LF"),
            (
                b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP4 source address",
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP4 destination address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
                "PROXY v1: bad source port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
                "PROXY v1: bad destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP4 source address",
            ),
            (
                b"PROXY TCP4 ::1 ::1 1 2\r\n",
                "PROXY v1: bad TCP4 source address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
                "PROXY v1: bad TCP4 destination address",
            ),
            (
                b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP6 source address",
            ),
            (
                b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP6 destination address",
            ),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
                "PROXY v1: bad TCP6 source address",
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP4 source address",
            ),
            (
                b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP4 source address",
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                "PROXY v1: bad TCP4 source address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                "PROXY v1: bad source port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
                "PROXY v1: bad source port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n",
                "PROXY v1: bad source port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
                "PROXY v1: bad source port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
                "PROXY v1: bad destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n",
                "PROXY v1: bad destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                "PROXY v1: bad source port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                "PROXY v1: bad destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                "PROXY v1: bad destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
                "PROXY v1: CR not followed by LF",
            ),
            (
                b"PROXY TCP6 ::ffff:255.255.255.255 ::ffff:255.255.255.255 65535 65535\
                  \x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20",
                "PROXY v1: bad destination port",
            ),
        ]
        .into_iter()
        .map(|(bytes, why)| (bytes.to_vec(), why))
        .collect();
        // 108 bytes, CRLF last.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1 - 1, b'x');
        long.extend_from_slice(b"\r\n");
        cases.push((long, V1_TOO_LONG));
        // No CRLF at all.
        let mut endless = b"PROXY UNKNOWN ".to_vec();
        endless.resize(500, b'x');
        cases.push((endless, V1_TOO_LONG));
        // Longest IPv6 spellings: the line cannot fit in 107 bytes.
        let v4_mapped = "0000:0000:0000:0000:0000:ffff:255.255.255.255";
        cases.push((
            format!("PROXY TCP6 {v4_mapped} {v4_mapped} 65535 65535\r\n").into_bytes(),
            V1_TOO_LONG,
        ));

        let sig = SIGNATURE.to_vec();
        let v2 = |rest: &[u8]| [sig.as_slice(), rest].concat();
        cases.extend([
            (
                b"\r\n\r\n\0\r\nQUIX\n".to_vec(),
                "not a PROXY protocol header",
            ),
            (b"\r\r".to_vec(), "not a PROXY protocol header"),
            (v2(&[0x11]), "PROXY v2: version is not 2"),
            (v2(&[0x31]), "PROXY v2: version is not 2"),
            (v2(&[0x22]), "PROXY v2: command is neither LOCAL nor PROXY"),
            (v2(&[0x2f]), "PROXY v2: command is neither LOCAL nor PROXY"),
            (
                v2(&[0x21, 0x13]),
                "PROXY v2: unknown address family or protocol",
            ),
            (
                v2(&[0x21, 0x01]),
                "PROXY v2: unknown address family or protocol",
            ),
            (
                v2(&[0x21, 0x41]),
                "PROXY v2: unknown address family or protocol",
            ),
            (
                v2(&[0x21, 0x11, 0x00, 0x0b]),
                "PROXY v2: address block shorter than its family needs",
            ),
            (
                v2(&[0x21, 0x21, 0x00, 0x0c]),
                "PROXY v2: address block shorter than its family needs",
            ),
            (
                v2(&[0x21, 0x31, 0x00, 0xd7]),
                "PROXY v2: address block shorter than its family needs",
            ),
            (
                v2(&[0x21, 0x11, 0x10, 0x01]),
                "PROXY v2: header longer than 4096 bytes of addresses and TLVs",
            ),
            (
                v2(&[0x20, 0x00, 0xff, 0xff]),
                "PROXY v2: header longer than 4096 bytes of addresses and TLVs",
            ),
            // A TLV cut short by the header's end.
            (
                v2(&[
                    0x21, 0x11, 0x00, 0x0e, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0x04, 0x00,
                ]),
                "PROXY v2: malformed TLV",
            ),
            // A TLV whose value runs past the header's end.
            (
                v2(&[
                    0x21, 0x11, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0x02, 0x00, 0x02,
                    b'a',
                ]),
                "PROXY v2: malformed TLV",
            ),
            (
                v2(&[0x21, 0x00, 0x00, 0x01, 0x00]),
                "PROXY v2: malformed TLV",
            ),
        ]);
        cases
    }

    #[test]
    fn valid_headers() {
        for (bytes, header) in valid() {
            assert_eq!(
                parse(&bytes),
                Parse::Done {
                    header,
                    len: bytes.len()
                },
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn invalid_headers() {
        for (bytes, why) in invalid() {
            assert_eq!(parse(&bytes), Parse::Invalid(why), "{bytes:?}");
        }
    }

    /// Byte by byte: More until the header is whole, then Done with the same
    /// length however much payload follows, which stays untouched.
    #[test]
    fn every_split_point_of_valid_headers() {
        let payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPROXY \r\n\r\n\0\r\nQUIT\n";
        for (header_bytes, header) in valid() {
            let whole = [header_bytes.as_slice(), payload].concat();
            let len = header_bytes.len();
            for k in 0..len {
                assert_eq!(parse(&whole[..k]), Parse::More, "{header_bytes:?} at {k}");
            }
            for k in len..=whole.len() {
                assert_eq!(
                    parse(&whole[..k]),
                    Parse::Done { header, len },
                    "{header_bytes:?} at {k}"
                );
                assert_eq!(&whole[len..k], &payload[..k - len]);
            }
            fuzz(&whole);
        }
    }

    /// Byte by byte: More until the first byte that rules a header out, then
    /// Invalid for good.
    #[test]
    fn invalid_headers_stay_invalid() {
        for (bytes, why) in invalid() {
            let first = (0..=bytes.len())
                .find(|&k| parse(&bytes[..k]) != Parse::More)
                .expect("decided by the end");
            for k in first..=bytes.len() {
                assert_eq!(parse(&bytes[..k]), Parse::Invalid(why), "{bytes:?} at {k}");
            }
            fuzz(&bytes);
        }
    }

    #[test]
    fn rejected_early() {
        assert_eq!(parse(b"G"), Parse::Invalid("not a PROXY protocol header"));
        assert_eq!(
            parse(b"\x16"),
            Parse::Invalid("not a PROXY protocol header")
        );
        assert_eq!(
            parse(b"PROXY X"),
            Parse::Invalid("PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN")
        );
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4:"),
            Parse::Invalid("PROXY v1: bad TCP4 source address")
        );
        assert_eq!(
            parse(b"PROXY TCP4 1111111111111111"),
            Parse::Invalid("PROXY v1: bad TCP4 source address")
        );
        // The length field alone refuses an oversized v2 header.
        let mut big = SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), Parse::Invalid(_)));
        // MAX_LEN bytes always decide.
        assert!(matches!(parse(&[b'P'; MAX_LEN]), Parse::Invalid(_)));
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x10, 0x00]);
        local.resize(MAX_LEN, 0);
        assert_eq!(
            parse(&local),
            Parse::Done {
                header: Header::Local,
                len: MAX_V2
            }
        );
    }

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        encode(
            Version::V1,
            sa("192.168.0.1:56324"),
            sa("192.168.0.11:443"),
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");

        out.clear();
        encode(
            Version::V1,
            sa("[2001:db8::1]:1234"),
            sa("[::1]:80"),
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 ::1 1234 80\r\n");

        // Appends.
        out.clear();
        out.extend_from_slice(b"xy");
        encode(
            Version::V2,
            sa("192.168.0.1:56324"),
            sa("192.168.0.11:443"),
            &mut out,
        );
        assert_eq!(
            out,
            b"xy\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\xa8\x00\x01\xc0\xa8\x00\x0b\xdc\x04\x01\xbb"
        );

        out.clear();
        encode(
            Version::V2,
            sa("[2001:db8::1]:1234"),
            sa("[2001:db8::2]:80"),
            &mut out,
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50]);
        assert_eq!(out, expected);
    }

    #[test]
    fn mixed_families_are_v4_mapped() {
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            encode(
                version,
                sa("10.1.2.3:5000"),
                sa("[2001:db8::9]:443"),
                &mut out,
            );
            assert_eq!(
                parse(&out),
                Parse::Done {
                    header: proxied("[::ffff:10.1.2.3]:5000", "[2001:db8::9]:443"),
                    len: out.len()
                }
            );
        }
        let mut out = Vec::new();
        encode(Version::V1, sa("[::1]:1"), sa("127.0.0.1:2"), &mut out);
        assert_eq!(out, b"PROXY TCP6 ::1 ::ffff:127.0.0.1 1 2\r\n");
    }

    #[test]
    fn longest_encodings_fit() {
        let v6 = sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%7]:65535");
        let mut out = Vec::new();
        encode(Version::V1, v6, v6, &mut out);
        assert_eq!(out.len(), 104);
        out.clear();
        encode(Version::V2, v6, v6, &mut out);
        assert_eq!(out.len(), 52);
    }

    fn round_trip(
        version: Version,
        source: SocketAddr,
        destination: SocketAddr,
        split: usize,
    ) -> bool {
        let mut out = b"before".to_vec();
        encode(version, source, destination, &mut out);
        let header = out.split_off(6);
        let expected = Header::Proxied {
            source: SocketAddr::new(source.ip(), source.port()),
            destination: SocketAddr::new(destination.ip(), destination.port()),
        };
        let payload = b"\r\n\r\n\0\r\nQUIT\nPROXY ";
        let whole = [header.as_slice(), payload].concat();
        let done = Parse::Done {
            header: expected,
            len: header.len(),
        };
        let max = match version {
            Version::V1 => MAX_V1,
            Version::V2 => MAX_V2,
        };
        let split = split % header.len();
        out == b"before"
            && header.len() <= max
            && parse(&whole) == done
            && parse(&header) == done
            && parse(&whole[..split]) == Parse::More
    }

    #[test]
    fn quickcheck_round_trip_v4() {
        fn prop(
            source: std::net::SocketAddrV4,
            destination: std::net::SocketAddrV4,
            split: usize,
        ) -> bool {
            [Version::V1, Version::V2]
                .into_iter()
                .all(|v| round_trip(v, source.into(), destination.into(), split))
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(std::net::SocketAddrV4, std::net::SocketAddrV4, usize) -> bool);
    }

    #[test]
    fn quickcheck_round_trip_v6() {
        fn prop(source: SocketAddrV6, destination: SocketAddrV6, split: usize) -> bool {
            // Flow information and scope ids are dropped; round_trip compares
            // addresses and ports only.
            [Version::V1, Version::V2]
                .into_iter()
                .all(|v| round_trip(v, source.into(), destination.into(), split))
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(SocketAddrV6, SocketAddrV6, usize) -> bool);
    }

    #[test]
    fn quickcheck_fuzz_arbitrary_bytes() {
        fn prop(data: Vec<u8>, v2: bool) -> TestResult {
            fuzz(&data);
            // Most inputs also start with a real prefix, so the parser gets
            // past its first byte.
            let prefix: &[u8] = if v2 { SIGNATURE } else { V1_PREFIX };
            fuzz(&[prefix, &data].concat());
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(5000)
            .quickcheck(prop as fn(Vec<u8>, bool) -> TestResult);
    }

    /// Valid headers with a few bytes changed, to reach the deep branches.
    #[test]
    fn quickcheck_fuzz_mutated_headers() {
        fn prop(which: usize, edits: Vec<(u16, u8)>, cut: u16) -> bool {
            let cases = valid();
            let (mut bytes, _) = cases[which % cases.len()].clone();
            for (at, byte) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = usize::from(at) % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(usize::from(cut) % (bytes.len() + 1) + bytes.len() / 2);
            fuzz(&bytes);
            true
        }
        QuickCheck::new()
            .tests(5000)
            .quickcheck(prop as fn(usize, Vec<(u16, u8)>, u16) -> bool);
    }
}
