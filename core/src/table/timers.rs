//! Connection deadlines.
//!
//! One min-heap of `(when, slab index, generation)`. A session remembers the
//! deadline it has in the heap; an entry whose session is gone, has another
//! generation, or now remembers a different time is stale and is skipped when
//! it comes up. Deadlines that only move later (the idle timer, reset on every
//! byte) are not pushed again on each byte: the stale early entry fires, the
//! session's real deadline is computed and pushed then. The heap is rebuilt
//! when stale entries outnumber live ones, so its size stays within a small
//! multiple of the number of connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, idx: u32, gen: u32) {
        self.heap.push(Reverse((at, idx, gen)));
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pops the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `live` says are current.
    pub fn retain(&mut self, mut live: impl FnMut(Instant, u32, u32) -> bool) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse((t, i, g))| live(*t, *i, *g))
            .collect();
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}
