//! Writing what the core has for a socket. The core shows it in two parts
//! (`Proxy::send_buf`: the bytes it made, then the bytes it forwards);
//! when both hold bytes they go out in one vectored write, so that a
//! rewritten HTTP head and the body behind it cost one system call and one
//! wake-up of the peer, not two.

use std::io::{self, IoSlice, Write};

/// Writes as much of `parts` as `w` takes, in order, retrying on EINTR;
/// returns the count across both.
pub fn write_parts<W: Write>(mut w: W, parts: [&[u8]; 2]) -> io::Result<usize> {
    loop {
        let r = match parts {
            [a, []] => w.write(a),
            [[], b] => w.write(b),
            [a, b] => w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_parts_go_out_in_order() {
        let mut out = Vec::new();
        let n = write_parts(&mut out, [b"head ", b"body"]).unwrap();
        assert_eq!(n, 9);
        assert_eq!(out, b"head body");
        let mut out = Vec::new();
        assert_eq!(write_parts(&mut out, [b"", b"body"]).unwrap(), 4);
        assert_eq!(write_parts(&mut out, [b"x", b""]).unwrap(), 1);
        assert_eq!(out, b"bodyx");
    }
}
