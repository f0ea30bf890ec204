//! The header every datagram of a SOCKS5 UDP association carries
//! (RFC 1928 section 7): `RSV(2) = 0, FRAG(1), ATYP(1), DST.ADDR, DST.PORT`,
//! then the payload. Pure, and strict: a datagram whose header is not
//! exactly this is dropped, never guessed at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Target;

/// Longest header: RSV, FRAG, ATYP, a 255-byte name with its length byte,
/// the port.
pub const MAX_HEADER: usize = 4 + 1 + 255 + 2;

/// Why a datagram's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("datagram shorter than its SOCKS header")]
    Short,
    #[error("reserved bytes of the SOCKS header are not zero")]
    Reserved,
    #[error("fragment {0} (fragmented datagrams are not reassembled)")]
    Fragment(u8),
    #[error("address type {0} is not 1 (IPv4), 3 (name) or 4 (IPv6)")]
    AddressType(u8),
    #[error("destination name is empty or not a host name")]
    Name,
}

/// A parsed header: where the payload goes, and where the payload starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub target: Target,
    pub len: usize,
}

/// Parses the header at the front of `datagram`. FRAG other than 0 is an
/// error: fragments are never reassembled (RFC 1928 allows dropping them).
pub fn parse(datagram: &[u8]) -> Result<Header, HeaderError> {
    let Some(&[r0, r1, frag, atyp]) = datagram.first_chunk::<4>() else {
        return Err(HeaderError::Short);
    };
    if r0 != 0 || r1 != 0 {
        return Err(HeaderError::Reserved);
    }
    if frag != 0 {
        return Err(HeaderError::Fragment(frag));
    }
    let port_at = |at: usize| -> Result<u16, HeaderError> {
        let p = datagram.get(at..at + 2).ok_or(HeaderError::Short)?;
        Ok(u16::from_be_bytes([p[0], p[1]]))
    };
    let (target, len) = match atyp {
        1 => {
            let a = datagram.get(4..8).ok_or(HeaderError::Short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (Target::Addr(SocketAddr::new(ip.into(), port_at(8)?)), 10)
        }
        4 => {
            let a = datagram.get(4..20).ok_or(HeaderError::Short)?;
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            let ip = Ipv6Addr::from(o);
            (Target::Addr(SocketAddr::new(ip.into(), port_at(20)?)), 22)
        }
        3 => {
            let n = *datagram.get(4).ok_or(HeaderError::Short)? as usize;
            let name = datagram.get(5..5 + n).ok_or(HeaderError::Short)?;
            let port = port_at(5 + n)?;
            let host = super::socks::host_name(name).ok_or(HeaderError::Name)?;
            (super::socks::name_target(host, port), 5 + n + 2)
        }
        other => return Err(HeaderError::AddressType(other)),
    };
    Ok(Header { target, len })
}

/// Appends the header naming `from` (where a reply came from) to `out`.
pub fn encode(from: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0]);
    match from.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&from.port().to_be_bytes());
}

#[cfg(any(test, fuzzing, feature = "harness"))]
/// Parses arbitrary bytes and checks [`parse`]'s invariants; panics on a
/// bug. For the fuzz target and the corpus test.
pub fn fuzz(data: &[u8]) {
    let Ok(h) = parse(data) else {
        return;
    };
    assert!(
        h.len <= data.len(),
        "header length {} past the input",
        h.len
    );
    assert!(
        h.len <= MAX_HEADER,
        "header length {} past MAX_HEADER",
        h.len
    );
    let head = data.get(..h.len).unwrap_or_default();
    assert_eq!(parse(head).as_ref(), Ok(&h), "header not self-delimiting");
    if let Some(short) = h.len.checked_sub(1).and_then(|n| data.get(..n)) {
        assert_eq!(parse(short), Err(HeaderError::Short), "a cut header parsed");
    }
    if let Target::Addr(a) = h.target {
        let mut out = Vec::new();
        encode(a, &mut out);
        let again = parse(&out);
        assert_eq!(
            again.as_ref().map(|g| &g.target),
            Ok(&h.target),
            "re-encoded"
        );
        assert_eq!(again.map(|g| g.len), Ok(out.len()), "re-encoded length");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Target {
        Target::Addr(s.parse().expect("address"))
    }

    #[test]
    fn headers() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, Result<Header, HeaderError>)> = vec![
            ("ipv4", vec![0, 0, 0, 1, 10, 0, 0, 1, 0, 53, b'x'],
             Ok(Header { target: addr("10.0.0.1:53"), len: 10 })),
            ("ipv6", [&[0u8, 0, 0, 4][..], &[0; 15], &[1, 1, 187]].concat(),
             Ok(Header { target: addr("[::1]:443"), len: 22 })),
            ("name", [&[0u8, 0, 0, 3, 12][..], b"Example.TEST", &[0, 53], b"q"].concat(),
             Ok(Header { target: Target::Name("example.test".into(), 53), len: 19 })),
            ("name that is an address", [&[0u8, 0, 0, 3, 9][..], b"127.0.0.1", &[0, 7]].concat(),
             Ok(Header { target: addr("127.0.0.1:7"), len: 16 })),
            ("empty payload is fine", vec![0, 0, 0, 1, 1, 2, 3, 4, 0, 1],
             Ok(Header { target: addr("1.2.3.4:1"), len: 10 })),
            ("empty", vec![], Err(HeaderError::Short)),
            ("three bytes", vec![0, 0, 0], Err(HeaderError::Short)),
            ("ipv4 cut", vec![0, 0, 0, 1, 10, 0, 0, 1, 0], Err(HeaderError::Short)),
            ("ipv6 cut", [&[0u8, 0, 0, 4][..], &[0; 16], &[1]].concat(), Err(HeaderError::Short)),
            ("name cut", [&[0u8, 0, 0, 3, 12][..], b"example"].concat(), Err(HeaderError::Short)),
            ("name without port", [&[0u8, 0, 0, 3, 1][..], b"a", &[0]].concat(), Err(HeaderError::Short)),
            ("reserved", vec![0, 1, 0, 1, 10, 0, 0, 1, 0, 53], Err(HeaderError::Reserved)),
            ("reserved first", vec![1, 0, 0, 1, 10, 0, 0, 1, 0, 53], Err(HeaderError::Reserved)),
            ("fragment", vec![0, 0, 1, 1, 10, 0, 0, 1, 0, 53], Err(HeaderError::Fragment(1))),
            ("fragment end", vec![0, 0, 0x81, 1, 10, 0, 0, 1, 0, 53], Err(HeaderError::Fragment(0x81))),
            ("address type", vec![0, 0, 0, 2, 10, 0, 0, 1, 0, 53], Err(HeaderError::AddressType(2))),
            ("empty name", vec![0, 0, 0, 3, 0, 0, 53], Err(HeaderError::Name)),
            ("bad name", [&[0u8, 0, 0, 3, 3][..], b"a b", &[0, 53]].concat(), Err(HeaderError::Name)),
        ];
        for (what, input, want) in cases {
            assert_eq!(parse(&input), want, "{what}");
            fuzz(&input);
        }
    }

    #[test]
    fn encodes_what_it_parses() {
        for a in ["192.0.2.1:53", "[2001:db8::1]:5353", "0.0.0.0:0"] {
            let a: SocketAddr = a.parse().expect("address");
            let mut out = vec![];
            encode(a, &mut out);
            assert_eq!(
                parse(&out),
                Ok(Header {
                    target: Target::Addr(a),
                    len: out.len()
                })
            );
        }
        let mut out = vec![];
        encode("192.0.2.1:53".parse().expect("address"), &mut out);
        assert_eq!(out, [0, 0, 0, 1, 192, 0, 2, 1, 0, 53]);
    }
}
