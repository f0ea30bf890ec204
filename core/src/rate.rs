//! Bandwidth caps: a token bucket per user (or per client address where
//! there is no user) and per direction, shared by all of that user's
//! connections, refilled from the times the core is given.
//!
//! A bucket holds at most one second's worth (the burst a `rate` allows).
//! A connection may read only as many bytes as its bucket holds; when the
//! bucket is empty it stops reading that side until enough has refilled
//! for a worthwhile read ([`Bucket::resume_at`]), so a capped user costs a
//! timer, never a spin.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Whose bytes a bucket counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    User(String),
    Client(IpAddr),
}

#[derive(Debug, Clone)]
pub struct Bucket {
    /// Bytes per second.
    pub rate: u64,
    /// Tokens per direction: 0 up (from clients), 1 down (to them).
    tokens: [f64; 2],
    last: Instant,
    /// Connections using this bucket.
    pub users: u32,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: [rate as f64; 2],
            last: now,
            users: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        let cap = self.rate as f64;
        for t in &mut self.tokens {
            *t = (*t + dt * cap).min(cap);
        }
    }

    /// Bytes that may be read in direction `dir` now.
    pub fn available(&mut self, dir: usize, now: Instant) -> usize {
        self.refill(now);
        self.tokens[dir].max(0.0) as usize
    }

    pub fn take(&mut self, dir: usize, n: usize) {
        self.tokens[dir] -= n as f64;
    }

    /// The smallest read worth waking for: a twentieth of a second's worth,
    /// at least 1 byte, at most 64 KiB.
    fn chunk(&self) -> f64 {
        ((self.rate / 20).clamp(1, 64 * 1024)) as f64
    }

    /// When direction `dir` has a worthwhile read again, if it has not now.
    pub fn resume_at(&mut self, dir: usize, now: Instant) -> Option<Instant> {
        self.refill(now);
        let need = self.chunk() - self.tokens[dir];
        if need <= 0.0 {
            return None;
        }
        Some(now + Duration::from_secs_f64(need / self.rate.max(1) as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert_eq!(b.available(0, t0), 1000);
        b.take(0, 1000);
        assert_eq!(b.available(0, t0), 0);
        // The other direction is untouched.
        assert_eq!(b.available(1, t0), 1000);
        let r = b.resume_at(0, t0).unwrap();
        assert_eq!(r.duration_since(t0), Duration::from_millis(50));
        assert_eq!(b.available(0, t0 + Duration::from_millis(500)), 500);
        // Never more than one second's worth.
        assert_eq!(b.available(0, t0 + Duration::from_secs(10)), 1000);
        assert_eq!(b.resume_at(0, t0 + Duration::from_secs(10)), None);
    }
}
