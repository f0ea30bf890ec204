//! Where a simulation's choices come from: a seeded PRNG ([`Rng`]), or, for
//! a property test, the lists quickcheck gives ([`Given`]), behind one
//! interface the scheduler asks for every choice it makes ([`Dice`]).

use std::time::Duration;

/// SplitMix64: tiny, fast, and good enough to drive a scheduler.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    /// The stream of a scenario's own choices for `seed`, apart from the
    /// scheduler's (which is `Rng::new(seed)`).
    pub fn scenario(seed: u64) -> Self {
        Rng::new(seed ^ 0x5ce7_a210_d00d_f00d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }

    /// How many of `len` bytes one read or write moves: 1..=len, often
    /// small, sometimes all of them.
    pub fn chop(&mut self, len: usize) -> usize {
        if len <= 1 {
            return len;
        }
        match self.below(8) {
            0 | 1 => self.range(1, len.min(16)),
            2 | 3 => len,
            _ => self.range(1, len),
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// `lo..=hi` random bytes.
    pub fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }

    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(lo + self.next_u64() % (hi - lo + 1))
    }
}

/// Choices given by a property test: which ready operation runs next
/// (`order`, each taken modulo the number ready), and how many bytes each
/// read and each write of the core moves (`reads[i] + 1`, `writes[i] + 1`,
/// at most what there is); the lists are used round and round, an empty
/// one means "the first" and "all". Everything else is the plainest run:
/// peers move all they can at once, sockets are unbounded, nothing jitters.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub order: Vec<u8>,
    pub reads: Vec<u16>,
    pub writes: Vec<u16>,
    at: [usize; 3],
}

impl Given {
    pub fn new(order: Vec<u8>, reads: Vec<u16>, writes: Vec<u16>) -> Self {
        Given {
            order,
            reads,
            writes,
            at: [0; 3],
        }
    }

    fn next(list: &[u16], at: &mut usize) -> Option<usize> {
        let v = (!list.is_empty()).then(|| list[*at % list.len()] as usize);
        *at += 1;
        v
    }
}

/// The scheduler's source of choices.
#[derive(Debug, Clone)]
pub enum Dice {
    Random(Rng),
    Given(Given),
}

impl Dice {
    /// Which of `n` ready operations runs next.
    pub fn op(&mut self, n: usize) -> usize {
        match self {
            Dice::Random(r) => r.below(n),
            Dice::Given(g) => {
                let i = g.at[0];
                g.at[0] += 1;
                match g.order.len() {
                    0 => 0,
                    len => g.order[i % len] as usize % n.max(1),
                }
            }
        }
    }

    /// How many of `len` bytes a read into the core moves (1..=len).
    pub fn read(&mut self, len: usize) -> usize {
        match self {
            Dice::Random(r) => r.chop(len),
            Dice::Given(g) => Given::next(&g.reads, &mut g.at[1]).map_or(len, |x| (x + 1).min(len)),
        }
    }

    /// How many of `len` bytes a write out of the core moves (1..=len).
    pub fn write(&mut self, len: usize) -> usize {
        match self {
            Dice::Random(r) => r.chop(len),
            Dice::Given(g) => {
                Given::next(&g.writes, &mut g.at[2]).map_or(len, |x| (x + 1).min(len))
            }
        }
    }

    /// How many of `len` bytes a peer or a pipe moves (1..=len).
    pub fn chop(&mut self, len: usize) -> usize {
        match self {
            Dice::Random(r) => r.chop(len),
            Dice::Given(_) => len,
        }
    }

    /// True with probability `num / den` (never, given).
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        match self {
            Dice::Random(r) => r.chance(num, den),
            Dice::Given(_) => false,
        }
    }

    /// `0..n` (0, given).
    pub fn below(&mut self, n: usize) -> usize {
        match self {
            Dice::Random(r) => r.below(n),
            Dice::Given(_) => 0,
        }
    }

    /// `lo..=hi` (`lo`, given).
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        match self {
            Dice::Random(r) => r.duration(lo, hi),
            Dice::Given(_) => lo,
        }
    }

    /// What one direction of a socket holds (the kernel's buffer): tiny
    /// now and then, else a few KiB; unbounded, given.
    pub fn capacity(&mut self) -> usize {
        match self {
            Dice::Random(r) => {
                if r.chance(1, 4) {
                    r.range(1, 64)
                } else {
                    r.range(256, 16384)
                }
            }
            Dice::Given(_) => usize::MAX,
        }
    }

    pub fn is_given(&self) -> bool {
        matches!(self, Dice::Given(_))
    }
}
