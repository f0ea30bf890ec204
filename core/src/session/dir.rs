//! One direction of a session: its buffer, the bytes the core made for the
//! sink, and how far each is written.
//!
//! `up` carries client → upstream, `down` upstream → client. A direction
//! holds a buffer only while bytes are in it. When its source reaches EOF
//! and its buffer is empty, the write half of its sink is shut (half-close
//! carried across).

use crate::buffer::{Buffer, Pool};

/// Bytes the core may have queued for a peer (replies, rewritten heads)
/// before it stops reading what makes it say more.
pub const SAID_MAX: usize = 64 * 1024;

/// One direction of a session.
///
/// What the sink is sent: first `prefix` (bytes the core made: a protocol's
/// replies, a rewritten head), then the first `fwd` bytes of `buf` (all of
/// them when `fwd` is `None`: a plain relay).
#[derive(Debug, Default)]
pub struct Dir {
    pub buf: Option<Buffer>,
    pub prefix: Vec<u8>,
    /// How much of `prefix` is already written.
    pub prefix_pos: usize,
    /// How many bytes at the front of `buf` may be written; `None`: all.
    pub fwd: Option<usize>,
    /// The source side reached end of stream.
    pub eof: bool,
    /// The sink's write half has been shut.
    pub shut: bool,
    /// The last read moved a bulk amount: worth splicing.
    pub bulk: bool,
    /// A spliced direction that stayed bulk: its pipe may hold
    /// [`crate::table::SPLICE_PIPE_MIN`] bytes rather than `limits.buffer`
    /// (counted in the ledger's `grown_pipes` until the session closes).
    pub grown: bool,
    /// Bytes written to the sink.
    pub bytes: u64,
}

impl Dir {
    /// The bytes to write to the sink next, in two parts that go out in
    /// this order: what is left of `prefix`, then the buffer's bytes that
    /// may follow it. Written together (one vectored write) they save a
    /// system call, and a wake-up of the peer, per rewritten head.
    pub fn out_parts(&self) -> [&[u8]; 2] {
        let said = self.prefix.get(self.prefix_pos..).unwrap_or(&[]);
        let cleared = match &self.buf {
            Some(b) => {
                let d = b.data();
                &d[..self.fwd.map_or(d.len(), |f| f.min(d.len()))]
            }
            None => &[],
        };
        [said, cleared]
    }

    /// The first bytes to write to the sink next: the first non-empty
    /// part of [`Dir::out_parts`].
    pub fn out(&self) -> &[u8] {
        match self.out_parts() {
            [said, _] if !said.is_empty() => said,
            [_, cleared] => cleared,
        }
    }

    /// There is something to write to the sink.
    pub fn has_data(&self) -> bool {
        !self.out().is_empty()
    }

    /// Nothing at all is held, written or not.
    pub fn drained(&self) -> bool {
        self.prefix_pos >= self.prefix.len() && self.buf.as_ref().is_none_or(|b| b.is_empty())
    }

    pub fn has_space(&self) -> bool {
        self.buf.as_ref().is_none_or(|b| !b.is_full())
    }

    /// Bytes the core made that are not written yet.
    pub fn said(&self) -> usize {
        self.prefix.len().saturating_sub(self.prefix_pos)
    }

    /// Queues bytes the core made, ahead of the buffer's.
    pub fn say(&mut self, bytes: &[u8]) {
        if self.prefix_pos >= self.prefix.len() {
            self.prefix.clear();
            self.prefix_pos = 0;
        }
        self.prefix.extend_from_slice(bytes);
    }

    /// As [`Dir::say`], taking the bytes: no copy when nothing else waits
    /// to be said (a rewritten head, made in a buffer of its own).
    pub fn say_owned(&mut self, bytes: Vec<u8>) {
        if self.prefix_pos >= self.prefix.len() {
            self.prefix = bytes;
            self.prefix_pos = 0;
        } else {
            self.prefix.extend_from_slice(&bytes);
        }
    }

    /// `n` bytes of [`Dir::out_parts`] were written, the prefix's first;
    /// returns how many counted (never more than were shown).
    pub fn written(&mut self, n: usize) -> usize {
        let mut left = n;
        if self.prefix_pos < self.prefix.len() {
            let k = left.min(self.prefix.len() - self.prefix_pos);
            self.prefix_pos += k;
            left -= k;
            if self.prefix_pos == self.prefix.len() {
                // Keep no capacity: an idle connection holds nothing.
                self.prefix = Vec::new();
                self.prefix_pos = 0;
            }
        }
        let k = left.min(self.out_parts()[1].len());
        if k > 0 {
            if let Some(b) = self.buf.as_mut() {
                b.consume(k);
            }
            if let Some(f) = self.fwd.as_mut() {
                *f -= k;
            }
        }
        let counted = n - left + k;
        self.bytes += counted as u64;
        counted
    }

    /// Gives an empty buffer back to the pool.
    pub fn release_if_empty(&mut self, pool: &mut Pool) {
        if self.buf.as_ref().is_some_and(|b| b.is_empty()) {
            if let Some(b) = self.buf.take() {
                pool.give(b);
            }
        }
    }

    pub fn release(&mut self, pool: &mut Pool) {
        if let Some(b) = self.buf.take() {
            pool.give(b);
        }
    }

    /// Space to read into, taking a buffer from the pool if there is none.
    pub fn space<'a>(&'a mut self, pool: &mut Pool) -> &'a mut [u8] {
        self.buf.get_or_insert_with(|| pool.take()).space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the sink is sent: the prefix, then the cleared bytes of the
    /// buffer; a write counts across both, never past what was shown.
    #[test]
    fn a_write_counts_across_prefix_and_buffer() {
        let mut pool = Pool::new(64, 1);
        let mut d = Dir::default();
        d.space(&mut pool);
        d.buf.as_mut().map(|b| b.push(b"body+next"));
        d.fwd = Some(4);
        d.say(b"head:");
        assert_eq!(d.out_parts(), [&b"head:"[..], &b"body"[..]]);
        assert_eq!(d.out(), b"head:");
        assert_eq!(d.written(3), 3);
        assert_eq!(d.out_parts(), [&b"d:"[..], &b"body"[..]]);
        assert_eq!(d.written(4), 4);
        assert_eq!(d.out_parts(), [&b""[..], &b"dy"[..]]);
        assert_eq!(d.out(), b"dy");
        // More than shown counts only what was shown.
        assert_eq!(d.written(10), 2);
        assert_eq!(d.fwd, Some(0));
        assert_eq!(d.buf.as_ref().map(|b| b.data()), Some(&b"+next"[..]));
        assert_eq!(d.bytes, 9);
    }
}
