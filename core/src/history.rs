//! The last minutes of each service, for the status page's charts: per
//! service, how many connections it accepted and how many bytes it moved
//! each way in every interval of [`INTERVAL`], the last [`SLOTS`] of them.
//!
//! The core has no clock: intervals are counted from the table's birth on
//! the monotonic `now` of the calls it gets. Counters change only inside
//! those calls, so the table closes an interval on the first call that
//! comes after it ([`Ring::close`]): what the counters gained since the
//! previous close all happened in the interval of that close, and the
//! intervals in between saw nothing. A table without traffic does no work
//! and asks for no wake-up. Memory is [`SLOTS`] samples per service.
//!
//! All the tables of a process are born at the same instant, so their
//! interval numbers agree and their histories add up slot by slot
//! ([`History::merge`]).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One sample's span.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How many intervals are kept (ten minutes).
pub const SLOTS: usize = 60;

/// What a service did in one interval, or (as a running total) so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub connections: u64,
    pub up: u64,
    pub down: u64,
}

impl Sample {
    fn since(self, base: Sample) -> Sample {
        Sample {
            connections: self.connections.saturating_sub(base.connections),
            up: self.up.saturating_sub(base.up),
            down: self.down.saturating_sub(base.down),
        }
    }

    fn add(&mut self, o: Sample) {
        self.connections += o.connections;
        self.up += o.up;
        self.down += o.down;
    }
}

/// The number of the interval `now` falls in, counting from `origin`.
pub fn interval_of(origin: Instant, now: Instant) -> u64 {
    (now.saturating_duration_since(origin).as_millis() / INTERVAL.as_millis()) as u64
}

/// One service's closed intervals, in a ring indexed by interval number,
/// and its running totals when the current one began. The interval number
/// itself is the table's (every ring of a table is closed at once).
#[derive(Debug, Clone)]
pub struct Ring {
    slots: Box<[Sample; SLOTS]>,
    base: Sample,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            slots: Box::new([Sample::default(); SLOTS]),
            base: Sample::default(),
        }
    }
}

impl Ring {
    /// Interval `from` is over and `to` began: `from` gets what the totals
    /// gained since it began (they are `total` now), the intervals between
    /// get nothing.
    pub fn close(&mut self, from: u64, to: u64, total: Sample) {
        if to <= from {
            return;
        }
        self.slots[slot(from)] = total.since(self.base);
        for i in from + 1..=to.min(from + SLOTS as u64) {
            self.slots[slot(i)] = Sample::default();
        }
        self.base = total;
    }

    /// The last [`SLOTS`] intervals up to `now_index`, oldest first, as of
    /// totals `total`: the ring was last closed at `current`, so what the
    /// totals gained since then is interval `current`'s, and any after it
    /// saw nothing.
    pub fn view(&self, current: u64, now_index: u64, total: Sample) -> Vec<Sample> {
        let first = (now_index + 1).saturating_sub(SLOTS as u64);
        let mut out = Vec::with_capacity(SLOTS);
        // Intervals before the table's first are empty.
        out.resize(
            (SLOTS as u64 - (now_index + 1 - first)) as usize,
            Sample::default(),
        );
        for i in first..=now_index {
            out.push(match i {
                i if i == current => total.since(self.base),
                i if i < current && current - i < SLOTS as u64 => self.slots[slot(i)],
                _ => Sample::default(),
            });
        }
        out
    }
}

fn slot(i: u64) -> usize {
    (i % SLOTS as u64) as usize
}

/// One service's last intervals, oldest first; the last one is the
/// interval under way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    pub samples: Vec<Sample>,
}

/// Every service's last intervals, as a status answer shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The number of the interval under way (the last sample's).
    pub index: u64,
    /// How far into it the answer was made.
    pub elapsed_ms: u64,
    pub services: Vec<Series>,
}

impl History {
    /// Adds another table's history: interval by interval (the one that
    /// is further on decides which intervals are shown), services by name.
    pub fn merge(&mut self, other: History) {
        let mut other = other;
        if other.index > self.index {
            std::mem::swap(self, &mut other);
        }
        // `other` is behind by `lag` intervals: its sample i is interval
        // index - lag - (len - 1 - i), which is our sample i - lag.
        let lag = (self.index - other.index) as usize;
        for series in other.services {
            let at = match self.services.iter().position(|s| s.name == series.name) {
                Some(at) => at,
                None => {
                    self.services.push(Series {
                        name: series.name.clone(),
                        samples: vec![Sample::default(); series.samples.len()],
                    });
                    self.services.len() - 1
                }
            };
            let mine = &mut self.services[at].samples;
            for (i, s) in series.samples.into_iter().enumerate() {
                if let Some(k) = i.checked_sub(lag) {
                    if let Some(m) = mine.get_mut(k) {
                        m.add(s);
                    }
                }
            }
        }
    }
}

/// `GET /history`: per service, connections and bytes each way in each of
/// the last intervals, oldest first (the last one is under way,
/// `elapsed_ms` into it).
pub fn json(h: &History) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"interval_s\":{},\"index\":{},\"elapsed_ms\":{},\"services\":[",
        INTERVAL.as_secs(),
        h.index,
        h.elapsed_ms
    );
    for (i, s) in h.services.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        crate::status::json_str(&mut o, &s.name);
        for (key, get) in [
            (
                "connections",
                (|x: &Sample| x.connections) as fn(&Sample) -> u64,
            ),
            ("bytes_up", |x| x.up),
            ("bytes_down", |x| x.down),
        ] {
            let _ = write!(o, ",\"{key}\":[");
            for (j, x) in s.samples.iter().enumerate() {
                if j > 0 {
                    o.push(',');
                }
                let _ = write!(o, "{}", get(x));
            }
            o.push(']');
        }
        o.push('}');
    }
    o.push_str("]}\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(connections: u64, up: u64, down: u64) -> Sample {
        Sample {
            connections,
            up,
            down,
        }
    }

    #[test]
    fn intervals_count_from_the_origin() {
        let t0 = Instant::now();
        assert_eq!(interval_of(t0, t0), 0);
        assert_eq!(interval_of(t0, t0 + Duration::from_millis(9_999)), 0);
        assert_eq!(interval_of(t0, t0 + INTERVAL), 1);
        assert_eq!(interval_of(t0 + INTERVAL, t0), 0, "never before the origin");
    }

    #[test]
    fn a_ring_keeps_what_each_interval_gained() {
        let mut r = Ring::default();
        // Interval 0: 2 connections, 100 up, 50 down so far.
        let v = r.view(0, 0, s(2, 100, 50));
        assert_eq!(v.len(), SLOTS);
        assert_eq!(v[SLOTS - 1], s(2, 100, 50));
        assert!(v[..SLOTS - 1].iter().all(|x| *x == Sample::default()));
        // The first call in interval 3 closes 0; 1 and 2 saw nothing.
        r.close(0, 3, s(2, 100, 50));
        let v = r.view(3, 3, s(3, 110, 50));
        assert_eq!(
            &v[SLOTS - 4..],
            &[s(2, 100, 50), s(0, 0, 0), s(0, 0, 0), s(1, 10, 0)]
        );
        // Seen later without a call in between: interval 3 keeps what it
        // gained, the ones after it are empty.
        let v = r.view(3, 5, s(3, 110, 50));
        assert_eq!(
            &v[SLOTS - 6..SLOTS - 2],
            &[s(2, 100, 50), s(0, 0, 0), s(0, 0, 0), s(1, 10, 0)]
        );
        assert_eq!(&v[SLOTS - 2..], &[Sample::default(); 2]);
    }

    #[test]
    fn a_ring_forgets_what_is_older_than_its_slots() {
        let mut r = Ring::default();
        r.close(0, 1, s(1, 1, 1));
        let v = r.view(1, SLOTS as u64 - 1, s(1, 1, 1));
        assert_eq!(v[0], s(1, 1, 1), "interval 0 is the oldest kept");
        let v = r.view(1, SLOTS as u64, s(1, 1, 1));
        assert!(v.iter().all(|x| *x == Sample::default()), "{v:?}");
        // A long silence clears every slot, however long it was.
        r.close(1, 10 * SLOTS as u64, s(5, 5, 5));
        let v = r.view(10 * SLOTS as u64, 10 * SLOTS as u64, s(5, 5, 5));
        assert!(v.iter().all(|x| *x == Sample::default()), "{v:?}");
    }

    #[test]
    fn a_full_ring_stays_bounded() {
        let mut r = Ring::default();
        let mut total = Sample::default();
        for i in 0..10 * SLOTS as u64 {
            total.add(s(1, i, 2 * i));
            r.close(i, i + 1, total);
        }
        let now = 10 * SLOTS as u64;
        let v = r.view(now, now, total);
        assert_eq!(v.len(), SLOTS);
        assert_eq!(v[SLOTS - 2], s(1, now - 1, 2 * (now - 1)));
        assert_eq!(
            v[0],
            s(1, now - SLOTS as u64 + 1, 2 * (now - SLOTS as u64 + 1))
        );
    }

    fn series(name: &str, samples: &[Sample]) -> Series {
        let mut v = vec![Sample::default(); SLOTS - samples.len()];
        v.extend_from_slice(samples);
        Series {
            name: name.into(),
            samples: v,
        }
    }

    #[test]
    fn histories_merge_by_interval_and_name() {
        let mut a = History {
            index: 10,
            elapsed_ms: 500,
            services: vec![series("web", &[s(1, 1, 1), s(2, 2, 2)])],
        };
        // One interval behind: its last sample is a's next to last.
        let b = History {
            index: 9,
            elapsed_ms: 9_900,
            services: vec![
                series("web", &[s(10, 10, 10)]),
                series("socks", &[s(3, 0, 0)]),
            ],
        };
        a.merge(b.clone());
        assert_eq!(a.index, 10);
        assert_eq!(a.elapsed_ms, 500);
        let web = &a.services[0].samples;
        assert_eq!(&web[SLOTS - 2..], &[s(11, 11, 11), s(2, 2, 2)]);
        assert_eq!(a.services[1].name, "socks");
        assert_eq!(
            &a.services[1].samples[SLOTS - 2..],
            &[s(3, 0, 0), s(0, 0, 0)]
        );
        // The other order gives the same.
        let mut b2 = b;
        b2.merge(History {
            index: 10,
            elapsed_ms: 500,
            services: vec![series("web", &[s(1, 1, 1), s(2, 2, 2)])],
        });
        let web2 = b2.services.iter().find(|x| x.name == "web").expect("web");
        assert_eq!(&web2.samples[SLOTS - 2..], &[s(11, 11, 11), s(2, 2, 2)]);
        assert_eq!(b2.index, 10);
    }

    #[test]
    fn history_json() {
        let h = History {
            index: 7,
            elapsed_ms: 1234,
            services: vec![Series {
                name: "a\"<b>".into(),
                samples: vec![s(1, 2, 3), s(4, 5, 6)],
            }],
        };
        assert_eq!(
            json(&h),
            "{\"interval_s\":10,\"index\":7,\"elapsed_ms\":1234,\"services\":[{\"name\":\
             \"a\\\"\\u003cb\\u003e\",\"connections\":[1,4],\"bytes_up\":[2,5],\
             \"bytes_down\":[3,6]}]}\n"
        );
    }
}
