//! Deterministic test data and a fast checksum.
//!
//! The checksum is not cryptographic: it only has to notice a lost, added,
//! reordered or corrupted byte, which it does for any single difference and
//! with overwhelming probability for several. It is computed a 64-bit word at
//! a time so that it stays fast in an unoptimised test build, and it does not
//! depend on how the bytes were chopped into reads.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Streaming checksum over a byte sequence.
#[derive(Clone, Debug)]
pub struct Digest {
    state: u64,
    pending: [u8; 8],
    npend: usize,
    len: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

impl Digest {
    pub fn new() -> Digest {
        Digest {
            state: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            npend: 0,
            len: 0,
        }
    }

    #[inline]
    fn mix(&mut self, word: u64) {
        // Each step is a bijection of the state for a given word, so a single
        // differing word always yields a different final value.
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npend > 0 {
            let take = (8 - self.npend).min(data.len());
            self.pending[self.npend..self.npend + take].copy_from_slice(&data[..take]);
            self.npend += take;
            data = &data[take..];
            if self.npend < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.mix(w);
            self.npend = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npend = rest.len();
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(&self) -> u64 {
        let mut d = self.clone();
        if d.npend > 0 {
            let mut w = [0u8; 8];
            w[..d.npend].copy_from_slice(&d.pending[..d.npend]);
            d.mix(u64::from_le_bytes(w));
        }
        d.mix(d.len);
        let mut x = d.state;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

/// Checksum of a whole slice.
pub fn digest(data: &[u8]) -> u64 {
    let mut d = Digest::new();
    d.update(data);
    d.finish()
}

/// The length and checksum of the file at `path`; fails the test (the
/// message starting with `who`) if it cannot be read.
pub fn file_digest(who: impl std::fmt::Display, path: &std::path::Path) -> (usize, u64) {
    let data =
        std::fs::read(path).unwrap_or_else(|e| panic!("{who}: reading {}: {e}", path.display()));
    (data.len(), digest(&data))
}

/// A deterministic pseudo-random byte stream (splitmix64).
#[derive(Clone, Debug)]
pub struct PatternStream {
    state: u64,
}

impl PatternStream {
    pub fn new(seed: u64) -> PatternStream {
        PatternStream { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next bytes (the stream restarts at a word
    /// boundary for every call, which is fine: senders checksum what they
    /// actually send).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

/// `len` bytes of the pattern stream for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    PatternStream::new(seed).fill(&mut v);
    v
}

const CHUNK: usize = 64 * 1024;

/// Writes `len` pattern bytes to `w`; returns their checksum. `progress`, if
/// given, is increased by every byte as soon as the kernel took it.
pub fn send_stream(
    w: &mut impl Write,
    len: u64,
    seed: u64,
    progress: Option<&AtomicU64>,
) -> io::Result<u64> {
    let mut gen = PatternStream::new(seed);
    let mut digest = Digest::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = (left.min(CHUNK as u64)) as usize;
        gen.fill(&mut buf[..n]);
        digest.update(&buf[..n]);
        let mut off = 0;
        while off < n {
            match w.write(&buf[off..n]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
                Ok(k) => {
                    off += k;
                    if let Some(p) = progress {
                        p.fetch_add(k as u64, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        left -= n as u64;
    }
    w.flush()?;
    Ok(digest.finish())
}

/// Reads `r` to EOF; returns the byte count and checksum. A read timeout is
/// an error (`WouldBlock`/`TimedOut`), never a hang.
pub fn recv_all(r: &mut impl Read) -> io::Result<(u64, u64)> {
    let d = recv_digest(r, None)?;
    Ok((d.len(), d.finish()))
}

/// Reads exactly `len` bytes of `r` (never more); returns their checksum.
/// An early EOF or a read timeout is an error.
pub fn recv_exact(r: &mut impl Read, len: u64) -> io::Result<u64> {
    Ok(recv_digest(r, Some(len))?.finish())
}

/// Reads `r` to EOF, or exactly `want` bytes, into a checksum.
fn recv_digest(r: &mut impl Read, want: Option<u64>) -> io::Result<Digest> {
    let mut digest = Digest::new();
    let mut buf = vec![0u8; CHUNK];
    let so_far = |d: &Digest| match want {
        Some(len) => format!("{} of {len} bytes", d.len()),
        None => format!("{} bytes", d.len()),
    };
    loop {
        let room = match want {
            Some(len) if digest.len() >= len => return Ok(digest),
            Some(len) => ((len - digest.len()) as usize).min(CHUNK),
            None => CHUNK,
        };
        match r.read(&mut buf[..room]) {
            Ok(0) if want.is_none() => return Ok(digest),
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("EOF after {}", so_far(&digest)),
                ))
            }
            Ok(n) => digest.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {}: {e}", so_far(&digest)),
                ))
            }
        }
    }
}

/// Standard base64 with padding (Basic credentials).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [
            c[0],
            c.get(1).copied().unwrap_or(0),
            c.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_independent_of_chopping() {
        let data = pattern(7, 10_007);
        let whole = digest(&data);
        for step in [1usize, 3, 7, 8, 9, 1000] {
            let mut d = Digest::new();
            for c in data.chunks(step) {
                d.update(c);
            }
            assert_eq!(d.finish(), whole, "step {step}");
        }
    }

    #[test]
    fn digest_notices_changes() {
        let data = pattern(7, 4096);
        let whole = digest(&data);
        let mut other = data.clone();
        other[100] ^= 1;
        assert_ne!(digest(&other), whole);
        assert_ne!(digest(&data[..4095]), whole);
        let mut swapped = data.clone();
        swapped.swap(0, 8);
        assert_ne!(digest(&swapped), whole);
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(digest(&longer), whole);
    }

    #[test]
    fn send_and_recv_agree() {
        let mut out = Vec::new();
        let d = send_stream(&mut out, 200_001, 3, None).expect("send to a Vec");
        assert_eq!(out.len(), 200_001);
        let (n, d2) = recv_all(&mut &out[..]).expect("read a slice");
        assert_eq!((n, d2), (200_001, d));
    }
}
