//! Relay buffers and the pool they come from.
//!
//! Invariants: a [`Buffer`] never grows (its capacity is the configured
//! `buffer` size); `start <= end <= capacity`. A connection takes a buffer from
//! the [`Pool`] only when it has bytes to hold and gives it back as soon as it
//! is empty again, so an idle connection holds none. The pool keeps a bounded
//! number of free buffers warm and frees the rest.

/// One direction's bytes in flight: read from one socket, not yet written to
/// the other.
#[derive(Debug)]
pub struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new(size: usize) -> Self {
        Buffer {
            data: vec![0; size].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.data.len()
    }

    /// The bytes waiting to be written.
    pub fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Free space at the end, compacting first if the free space is all at
    /// the front (bytes are moved only when they must be).
    pub fn space(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    /// Marks `n` bytes of [`Buffer::space`] as filled. Returns how many were
    /// accepted (a runtime that reports more than it was lent is clamped).
    pub fn fill(&mut self, n: usize) -> usize {
        let n = n.min(self.data.len() - self.end);
        self.end += n;
        n
    }

    /// Drops `n` bytes from the front (they were written). Clamped like fill.
    pub fn consume(&mut self, n: usize) -> usize {
        let n = n.min(self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        n
    }

    /// Keeps the first `len` bytes waiting, drops the rest.
    pub fn truncate(&mut self, len: usize) {
        self.end = self.start + len.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends as much of `bytes` as fits; returns how much did (tests
    /// fill buffers with it).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let space = self.space();
        let n = bytes.len().min(space.len());
        space[..n].copy_from_slice(&bytes[..n]);
        self.fill(n)
    }
}

/// Free buffers kept for reuse.
#[derive(Debug)]
pub struct Pool {
    size: usize,
    free: Vec<Buffer>,
    keep: usize,
    /// Buffers handed out and not yet returned.
    out: usize,
}

impl Pool {
    /// `size` bytes per buffer; at most `keep` free buffers are kept warm.
    pub fn new(size: usize, keep: usize) -> Self {
        Pool {
            size,
            free: Vec::new(),
            keep,
            out: 0,
        }
    }

    pub fn buffer_size(&self) -> usize {
        self.size
    }

    pub fn take(&mut self) -> Buffer {
        self.out += 1;
        self.free.pop().unwrap_or_else(|| Buffer::new(self.size))
    }

    pub fn give(&mut self, mut buf: Buffer) {
        self.out = self.out.saturating_sub(1);
        if self.free.len() < self.keep && buf.data.len() == self.size {
            buf.start = 0;
            buf.end = 0;
            self.free.push(buf);
        }
    }

    /// Buffers currently lent to connections.
    pub fn in_use(&self) -> usize {
        self.out
    }

    /// Free buffers kept warm.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_consume_compact() {
        let mut p = Pool::new(8, 4);
        let mut b = p.take();
        assert_eq!(b.push(b"abcdef"), 6);
        assert_eq!(b.consume(4), 4);
        assert_eq!(b.data(), b"ef");
        // 2 bytes free at the end, 4 at the front: space() compacts only when
        // the end is reached.
        assert_eq!(b.space().len(), 2);
        assert_eq!(b.push(b"gh"), 2);
        assert_eq!(b.space().len(), 4);
        assert_eq!(b.data(), b"efgh");
        assert_eq!(b.push(b"ijklmn"), 4);
        assert!(b.is_full());
        assert_eq!(b.fill(3), 0);
        assert_eq!(b.consume(100), 8);
        assert!(b.is_empty());
        p.give(b);
        assert_eq!(p.in_use(), 0);
        assert_eq!(p.idle(), 1);
    }

    #[test]
    fn pool_keeps_at_most_keep() {
        let mut p = Pool::new(4, 1);
        let a = p.take();
        let b = p.take();
        assert_eq!(p.in_use(), 2);
        p.give(a);
        p.give(b);
        assert_eq!(p.idle(), 1);
        assert_eq!(p.in_use(), 0);
    }
}
