//! A strict base64 decoder (RFC 4648 §4, standard alphabet) for Basic
//! credentials.
//!
//! Strict means: length a multiple of 4, padding only at the end and only as
//! much as needed, no whitespace, no URL-safe alphabet, and the unused bits of
//! the last symbol zero (one encoding per value). Anything else is `None`.

fn value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes `input`, or `None` if it is not canonical padded base64.
pub(crate) fn decode(input: &[u8]) -> Option<Vec<u8>> {
    if input.is_empty() || !input.chunks_exact(4).remainder().is_empty() {
        return None;
    }
    let quads = input.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in input.chunks_exact(4).enumerate() {
        let &[a, b, c, d] = quad else { return None };
        let last = i + 1 == quads;
        let pad = match (c, d) {
            (b'=', b'=') if last => 2,
            (_, b'=') if last => 1,
            _ => 0,
        };
        let a = value(a)?;
        let b = value(b)?;
        let c = if pad == 2 { 0 } else { value(c)? };
        let d = if pad >= 1 { 0 } else { value(d)? };
        let n = (a << 18) | (b << 12) | (c << 6) | d;
        let bytes = n.to_be_bytes();
        match pad {
            0 => out.extend_from_slice(&bytes[1..4]),
            1 => {
                if n & 0xff != 0 {
                    return None;
                }
                out.extend_from_slice(&bytes[1..3]);
            }
            _ => {
                if n & 0xffff != 0 {
                    return None;
                }
                out.push(bytes[1]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc4648_vectors() {
        let cases: &[(&str, &str)] = &[
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("+/+/", "\u{fb}\u{ff}\u{bf}"),
        ];
        for (enc, dec) in cases {
            let want: Vec<u8> = if enc.starts_with('+') {
                vec![0xfb, 0xff, 0xbf]
            } else {
                dec.as_bytes().to_vec()
            };
            assert_eq!(decode(enc.as_bytes()), Some(want), "{enc}");
        }
    }

    #[test]
    fn refuses_non_canonical() {
        for bad in [
            "", "Zg", "Zg=", "Zg===", "Z===", "====", "Zh==", "Zm9=", "Zg==Zg==", "Zm9v\n", "Zm 9",
            "Zm-_", "Zm9vYg", "=Zm9", "Zm=v",
        ] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
        }
    }
}

/// Standard base64 with padding (a parent's Basic credentials).
pub(crate) fn encode(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod encode_tests {
    #[test]
    fn encodes_and_decodes_back() {
        assert_eq!(super::encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(super::encode(b"a"), "YQ==");
        assert_eq!(super::encode(b"ab"), "YWI=");
        for s in [&b"x"[..], b"xy", b"xyz", b"gateway:secret"] {
            assert_eq!(
                super::decode(super::encode(s).as_bytes()).as_deref(),
                Some(s)
            );
        }
    }
}
