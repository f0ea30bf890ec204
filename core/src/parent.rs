//! The parent proxies' shared state (`[[parent]]`): which of each parent's
//! addresses are up, whose turn it is, and what the connects to each came
//! to. One [`Registry`] lives in the ledger, so every worker picks from and
//! counts into the same one.
//!
//! # An address's states
//!
//! ```text
//! up ─failure (fails < down_after)─► up
//!    ─failure (fails = down_after)─► down until now + retry_after
//! down ─retry_after passed─► up again, on probation: its next failure
//!                            marks it down at once; a success clears it
//! any ─success─► up, fails = 0
//! ```
//!
//! No timer is needed: whether an address is down is a question of `now`,
//! asked when a connection picks one and when the status page is drawn.

use std::net::IpAddr;
use std::time::Instant;

use crate::config::{Parent, Pick};

/// How one connect to a parent's address (with its handshake) ended: the
/// `result` label of `portico_parent_connects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    Ok,
    Refused,
    Timeout,
    /// The parent answered, and said no (or said nonsense).
    Rejected,
}

impl Result {
    pub const ALL: [Result; 4] = [
        Result::Ok,
        Result::Refused,
        Result::Timeout,
        Result::Rejected,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Result::Ok => "ok",
            Result::Refused => "refused",
            Result::Timeout => "timeout",
            Result::Rejected => "rejected",
        }
    }
}

/// One address of a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    /// As written in the file.
    written: String,
    /// Failures in a row.
    fails: u32,
    /// Down until then.
    down_until: Option<Instant>,
    /// Connects by [`Result`], in [`Result::ALL`]'s order.
    connects: [u64; 4],
}

impl Address {
    fn up(&self, now: Instant) -> bool {
        self.down_until.is_none_or(|t| t <= now)
    }
}

/// One parent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    name: String,
    addresses: Vec<Address>,
    /// Round-robin: where the next connection starts looking.
    turn: usize,
}

/// Every parent's state, in the configuration's order.
#[derive(Debug, Default)]
pub struct Registry {
    parents: Vec<State>,
}

/// One address as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRow {
    pub address: String,
    pub up: bool,
    pub fails: u32,
    /// Milliseconds until a down address is tried again.
    pub retry_in_ms: Option<u64>,
    /// Connects by result word, in [`Result::ALL`]'s order.
    pub connects: Vec<(&'static str, u64)>,
}

/// One parent as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRow {
    pub name: String,
    pub kind: &'static str,
    pub pick: &'static str,
    pub addresses: Vec<AddressRow>,
}

impl Registry {
    /// Brings the registry in line with `parents` (after a reload): an
    /// address a parent of the same name still lists keeps its state.
    fn follow(&mut self, parents: &[Parent]) {
        let same = self.parents.len() == parents.len()
            && self.parents.iter().zip(parents).all(|(s, p)| {
                s.name == p.name
                    && s.addresses.len() == p.addresses.len()
                    && s.addresses
                        .iter()
                        .zip(&p.addresses)
                        .all(|(a, (w, _))| &a.written == w)
            });
        if same {
            return;
        }
        let mut old = std::mem::take(&mut self.parents);
        self.parents = parents
            .iter()
            .map(|p| {
                let before = old.iter_mut().find(|s| s.name == p.name);
                let mut before = before.map(|s| std::mem::take(&mut s.addresses));
                State {
                    name: p.name.clone(),
                    turn: 0,
                    addresses: p
                        .addresses
                        .iter()
                        .map(|(w, _)| {
                            before
                                .as_mut()
                                .and_then(|b| {
                                    b.iter()
                                        .position(|a| &a.written == w)
                                        .map(|i| b.swap_remove(i))
                                })
                                .unwrap_or(Address {
                                    written: w.clone(),
                                    fails: 0,
                                    down_until: None,
                                    connects: [0; 4],
                                })
                        })
                        .collect(),
                }
            })
            .collect();
    }

    /// The address of parent `p` a connection from `client` tries next,
    /// none of `tried` and up now: its index, or none when every address
    /// is down or tried. `first`: the connection's first pick (round-robin
    /// takes a turn).
    pub fn pick(
        &mut self,
        parents: &[Parent],
        p: usize,
        client: IpAddr,
        tried: &[usize],
        first: bool,
        now: Instant,
    ) -> Option<usize> {
        self.follow(parents);
        let conf = parents.get(p)?;
        let state = self.parents.get_mut(p)?;
        let n = state.addresses.len();
        let start = match conf.pick {
            Pick::Failover => 0,
            Pick::RoundRobin => state.turn % n.max(1),
            Pick::ClientHash => (client_hash(client) % n.max(1) as u64) as usize,
        };
        let chosen = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !tried.contains(&i) && state.addresses[i].up(now))?;
        if first && conf.pick == Pick::RoundRobin {
            state.turn = chosen + 1;
        }
        Some(chosen)
    }

    /// A connect to address `a` of parent `p` ended with `result`: counted,
    /// and the address's state follows (see the module docs).
    pub fn record(&mut self, parents: &[Parent], p: usize, a: usize, result: Result, now: Instant) {
        self.follow(parents);
        let (Some(conf), Some(state)) = (parents.get(p), self.parents.get_mut(p)) else {
            return;
        };
        let Some(addr) = state.addresses.get_mut(a) else {
            return;
        };
        let i = Result::ALL.iter().position(|r| *r == result).unwrap_or(0);
        addr.connects[i] += 1;
        if result == Result::Ok {
            addr.fails = 0;
            addr.down_until = None;
            return;
        }
        addr.fails = addr.fails.saturating_add(1);
        if addr.fails >= conf.down_after && addr.up(now) {
            addr.down_until = Some(now + conf.retry_after);
        }
    }

    /// What the status page shows, as of `now`.
    pub fn rows(&mut self, parents: &[Parent], now: Instant) -> Vec<ParentRow> {
        self.follow(parents);
        parents
            .iter()
            .zip(&self.parents)
            .map(|(conf, s)| ParentRow {
                name: conf.name.clone(),
                kind: conf.kind.name(),
                pick: match conf.pick {
                    Pick::Failover => "failover",
                    Pick::RoundRobin => "round-robin",
                    Pick::ClientHash => "client-hash",
                },
                addresses: s
                    .addresses
                    .iter()
                    .map(|a| AddressRow {
                        address: a.written.clone(),
                        up: a.up(now),
                        fails: a.fails,
                        retry_in_ms: a
                            .down_until
                            .filter(|t| *t > now)
                            .map(|t| t.saturating_duration_since(now).as_millis() as u64),
                        connects: Result::ALL
                            .iter()
                            .zip(a.connects)
                            .map(|(r, n)| (r.word(), n))
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// A client address's place among a parent's addresses: the same for the
/// same address in every process (FNV-1a over its bytes).
fn client_hash(ip: IpAddr) -> u64 {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => a.octets().to_vec(),
        },
    };
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Destination, Host, ParentKind};
    use std::time::Duration;

    fn parent(pick: Pick, n: usize) -> Vec<Parent> {
        vec![Parent {
            name: "corp".into(),
            kind: ParentKind::Http,
            addresses: (0..n)
                .map(|i| {
                    (
                        format!("10.0.0.{i}:3128"),
                        Destination {
                            host: Host::Ip([10, 0, 0, i as u8].into()),
                            port: 3128,
                        },
                    )
                })
                .collect(),
            pick,
            user: None,
            password: None,
            down_after: 2,
            retry_after: Duration::from_secs(30),
            send_proxy_protocol: None,
        }]
    }

    fn ip(last: u8) -> IpAddr {
        [192, 168, 1, last].into()
    }

    #[test]
    fn failover_marks_down_and_retries_after() {
        let conf = parent(Pick::Failover, 2);
        let mut r = Registry::default();
        let t0 = Instant::now();
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, t0), Some(0));
        assert_eq!(r.pick(&conf, 0, ip(1), &[0], false, t0), Some(1));
        r.record(&conf, 0, 0, Result::Refused, t0);
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, t0), Some(0));
        r.record(&conf, 0, 0, Result::Timeout, t0);
        // Two in a row: down for 30s.
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, t0), Some(1));
        let rows = r.rows(&conf, t0);
        assert!(!rows[0].addresses[0].up);
        assert_eq!(rows[0].addresses[0].retry_in_ms, Some(30_000));
        let later = t0 + Duration::from_secs(30);
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, later), Some(0));
        // On probation: one more failure marks it down again.
        r.record(&conf, 0, 0, Result::Rejected, later);
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, later), Some(1));
        r.record(&conf, 0, 1, Result::Refused, later);
        r.record(&conf, 0, 1, Result::Refused, later);
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, later), None);
        let much_later = later + Duration::from_secs(31);
        r.record(&conf, 0, 0, Result::Ok, much_later);
        let rows = r.rows(&conf, much_later);
        assert!(rows[0].addresses[0].up);
        assert_eq!(rows[0].addresses[0].fails, 0);
        assert_eq!(
            rows[0].addresses[0].connects,
            [("ok", 1), ("refused", 1), ("timeout", 1), ("rejected", 1)]
        );
    }

    #[test]
    fn round_robin_takes_turns_and_client_hash_sticks() {
        let conf = parent(Pick::RoundRobin, 3);
        let mut r = Registry::default();
        let t = Instant::now();
        let picks: Vec<_> = (0..4)
            .map(|_| r.pick(&conf, 0, ip(1), &[], true, t))
            .collect();
        assert_eq!(picks, [Some(0), Some(1), Some(2), Some(0)]);
        // A retry within a connection does not take a turn.
        assert_eq!(r.pick(&conf, 0, ip(1), &[1], false, t), Some(2));
        assert_eq!(r.pick(&conf, 0, ip(1), &[], true, t), Some(1));

        let conf = parent(Pick::ClientHash, 3);
        let mut r = Registry::default();
        let a = r.pick(&conf, 0, ip(7), &[], true, t);
        for _ in 0..5 {
            assert_eq!(r.pick(&conf, 0, ip(7), &[], true, t), a);
        }
        let spread: std::collections::BTreeSet<_> = (0..50)
            .filter_map(|i| r.pick(&conf, 0, ip(i), &[], true, t))
            .collect();
        assert!(spread.len() > 1, "{spread:?}");
    }

    #[test]
    fn a_reload_keeps_the_state_of_addresses_still_listed() {
        let conf = parent(Pick::Failover, 2);
        let mut r = Registry::default();
        let t = Instant::now();
        r.record(&conf, 0, 1, Result::Refused, t);
        r.record(&conf, 0, 1, Result::Refused, t);
        let mut next = parent(Pick::Failover, 3);
        next[0].addresses.remove(0);
        let rows = r.rows(&next, t);
        assert_eq!(rows[0].addresses[0].address, "10.0.0.1:3128");
        assert!(!rows[0].addresses[0].up);
        assert!(rows[0].addresses[1].up);
    }
}
