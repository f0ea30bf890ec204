//! What the connection tables of several event loops share: the counts the
//! process-wide limits are checked against, and the bandwidth buckets.
//!
//! `portico` runs one table per worker thread (`[runtime] workers`). A
//! limit is the process's, not a loop's: `max_connections`,
//! `max_per_client`, the bound on connections kept only to be refused, a
//! user's `rate` and the throttling of failed logins hold across all of
//! them. So those counts live here, in
//! one place every table updates under a short lock; nothing else is
//! shared (each table has its own sessions, timers, buffers and counters).
//! With one table the lock is never contended.
//!
//! Invariants: `sessions` is the number of sessions in all tables sharing
//! the ledger, `refusing` how many of them only refuse; `per_client` holds
//! only addresses with at least one served session, `per_user` only users
//! with at least one session counted for them; a bucket exists while at
//! least one session uses it. The quotas' byte counts live here too, so
//! every worker counts into the same ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rate::{Bucket, Key};

/// The shared counts; cloning gives another handle on the same ones.
#[derive(Debug, Clone)]
pub struct Ledger {
    inner: Arc<Mutex<Counts>>,
    workers: usize,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub sessions: usize,
    pub refusing: usize,
    pub per_client: HashMap<IpAddr, u32>,
    pub buckets: HashMap<Key, Bucket>,
    /// Failed logins per client address: throttling is the process's.
    pub throttle: crate::auth::Throttle,
    /// Served sessions per authenticated user (`max_per_user`); only users
    /// with at least one.
    pub per_user: HashMap<String, u32>,
    /// The byte quotas' counts.
    pub quotas: crate::quota::Book,
    /// The parent proxies' addresses: up or down, and their connects.
    pub parents: crate::parent::Registry,
    /// Spliced directions whose pipe may hold more than `limits.buffer`
    /// (see `Proxy::splice_pipe_for`).
    pub grown_pipes: usize,
}

impl Counts {
    /// Sessions that are served (not only refused).
    pub fn served(&self) -> usize {
        self.sessions.saturating_sub(self.refusing)
    }

    pub fn add_client(&mut self, ip: IpAddr) {
        *self.per_client.entry(ip).or_insert(0) += 1;
    }

    pub fn remove_client(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
    }

    pub fn add_user(&mut self, user: &str) {
        *self.per_user.entry(user.to_string()).or_insert(0) += 1;
    }

    pub fn remove_user(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    pub fn user(&self, user: &str) -> u32 {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    pub fn client(&self, ip: IpAddr) -> u32 {
        self.per_client.get(&ip).copied().unwrap_or(0)
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(1)
    }
}

impl Ledger {
    /// A ledger for `workers` tables (at least one).
    pub fn new(workers: usize) -> Self {
        Ledger {
            inner: Arc::default(),
            workers: workers.max(1),
        }
    }

    /// How many tables share this ledger.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The counts, locked. A table that panicked while holding the lock
    /// left counts that are still counts: carry on with them.
    pub fn lock(&self) -> MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now in every table sharing the ledger (the count
    /// the process's status line names).
    pub fn open(&self) -> usize {
        self.lock().sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_counts() {
        let a = Ledger::new(2);
        let b = a.clone();
        let ip: IpAddr = [10, 0, 0, 1].into();
        a.lock().add_client(ip);
        a.lock().sessions += 1;
        assert_eq!(b.lock().client(ip), 1);
        assert_eq!(b.lock().served(), 1);
        b.lock().remove_client(ip);
        assert_eq!(a.lock().client(ip), 0);
        assert!(a.lock().per_client.is_empty());
        assert_eq!(b.workers(), 2);
    }
}
