//! When an `[auth] helper` process is started again, and which of its
//! failures are logged: the policy the runtimes' process managers follow
//! (they only start processes, write and read lines, and keep the time).
//!
//! Invariants: the pause before a start is zero unless the starts before
//! it died at once, and never more than [`BACKOFF_MAX`]; a kind of failure
//! is logged at most once per [`QUIET`] while it keeps happening, with the
//! count of those not logged.

use std::time::{Duration, Instant};

/// The pause before starting a process again after one start that died
/// at once; it doubles with each such start, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A process that lived this long, or answered anything, was not a crash
/// loop: the pause starts again from nothing.
pub const STEADY: Duration = Duration::from_secs(10);

/// A kind of failure already logged is logged again only after this long
/// without one (or, for a failure, once the helper answered again).
pub const QUIET: Duration = Duration::from_secs(60);

/// The pause before the next start after `quick` starts in a row that
/// died at once: none, then 100 ms doubling up to 10 s.
pub fn backoff(quick: u32) -> Duration {
    match quick {
        0 => Duration::ZERO,
        n => BACKOFF_FIRST
            .checked_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX)),
    }
}

/// When one process slot may start its next process.
#[derive(Debug, Default)]
pub struct Restarts {
    /// Starts in a row that could not start or died at once.
    quick: u32,
    not_before: Option<Instant>,
}

impl Restarts {
    /// A start failed, or its process died at once, at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.quick = self.quick.saturating_add(1);
        self.not_before = Some(now + backoff(self.quick));
    }

    /// A process proved it works (it answered, or lived a while).
    pub fn steady(&mut self) {
        *self = Restarts::default();
    }

    /// How long from `now` the next start has to wait.
    pub fn wait(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

/// What went wrong with a helper process, each logged on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The program could not be started.
    Start,
    /// It exited before answering anything, soon after it started.
    Early,
    /// It did not answer within `helper_timeout`.
    Stalled,
    /// It exited after having answered (some helpers do, after a while).
    Exited,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Start, Kind::Early, Kind::Stalled, Kind::Exited];

    /// Not working, rather than a process's normal end.
    pub fn is_failure(self) -> bool {
        self != Kind::Exited
    }
}

/// Which failures are logged: the first of a kind, then that kind again
/// only after [`QUIET`] without it or once the helper answered again, so
/// that a crash loop is one line rather than one per restart.
#[derive(Debug, Default)]
pub struct Notes {
    /// Per [`Kind`]: when it last happened, and how many times since the
    /// last line that said so.
    seen: [(Option<Instant>, u64); 4],
}

impl Notes {
    /// `kind` happened at `now`: `Some(n)` when it is to be logged, `n`
    /// being how many of it were not logged since its last line.
    pub fn happened(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        let (last, unlogged) = &mut self.seen[kind as usize];
        let quiet = last.is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
        *last = Some(now);
        if quiet {
            Some(std::mem::take(unlogged))
        } else {
            *unlogged += 1;
            None
        }
    }

    /// A process answered: failures are logged again from now on; how
    /// many were not logged since the last line (to say it is working
    /// again).
    pub fn answered(&mut self) -> u64 {
        let mut unlogged = 0;
        for kind in Kind::ALL.into_iter().filter(|k| k.is_failure()) {
            let (last, n) = &mut self.seen[kind as usize];
            *last = None;
            unlogged += std::mem::take(n);
        }
        unlogged
    }
}

impl Kind {
    /// How a process that stopped serving is classed: `stalled`, a
    /// request went past its deadline; otherwise a crash at start when it
    /// never answered and lived less than [`STEADY`], else an exit.
    pub fn of_end(stalled: bool, answered: bool, lived: Duration) -> Kind {
        if stalled {
            Kind::Stalled
        } else if !answered && lived < STEADY {
            Kind::Early
        } else {
            Kind::Exited
        }
    }

    /// What the log says of it, for helper `program` (`detail`: the
    /// operating system's error, for [`Kind::Start`]; `timeout`:
    /// `helper_timeout`).
    pub fn message(self, program: &str, detail: &str, timeout: Duration) -> String {
        match self {
            Kind::Start => {
                format!("cannot start the auth helper {program}: {detail}; check [auth] helper")
            }
            Kind::Early => format!(
                "the auth helper {program} exited before answering; it is started again after \
                 a pause that doubles, up to {BACKOFF_MAX:?}, while it keeps doing so (run it \
                 by hand to see why)"
            ),
            Kind::Stalled => format!(
                "the auth helper {program} did not answer within {timeout:?}; starting it again"
            ),
            Kind::Exited => format!("the auth helper {program} exited; starting it again"),
        }
    }
}

impl Restarts {
    /// A process ended as `kind` at `now`: a crash at start adds to the
    /// pause before the next; an exit after a working life clears it; a
    /// stall changes nothing.
    pub fn ended(&mut self, kind: Kind, now: Instant) {
        match kind {
            Kind::Early => self.failed(now),
            Kind::Exited => self.steady(),
            Kind::Start | Kind::Stalled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_100ms_up_to_10s() {
        let ms = |n| backoff(n).as_millis();
        let schedule: Vec<u128> = (0..10).map(ms).collect();
        assert_eq!(
            schedule,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(backoff(40), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn restarts_wait_after_quick_deaths_and_not_after_a_steady_process() {
        let t0 = Instant::now();
        let mut r = Restarts::default();
        assert_eq!(
            r.wait(t0),
            Duration::ZERO,
            "a first start waits for nothing"
        );
        r.failed(t0);
        assert_eq!(r.wait(t0), Duration::from_millis(100));
        assert_eq!(
            r.wait(t0 + Duration::from_millis(60)),
            Duration::from_millis(40)
        );
        assert_eq!(r.wait(t0 + Duration::from_secs(1)), Duration::ZERO);
        let t1 = t0 + Duration::from_secs(1);
        r.failed(t1);
        assert_eq!(r.wait(t1), Duration::from_millis(200));
        for _ in 0..20 {
            r.failed(t1);
        }
        assert_eq!(r.wait(t1), BACKOFF_MAX, "capped");
        r.steady();
        assert_eq!(r.wait(t1), Duration::ZERO, "an answer starts over");
        r.failed(t1);
        assert_eq!(r.wait(t1), Duration::from_millis(100));
    }

    #[test]
    fn a_failure_kind_is_logged_once_until_quiet_or_answered() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut n = Notes::default();
        assert_eq!(n.happened(Kind::Early, t0), Some(0), "the first is logged");
        assert_eq!(n.happened(Kind::Early, t0 + s(1)), None);
        assert_eq!(n.happened(Kind::Early, t0 + s(11)), None, "a crash loop");
        assert_eq!(
            n.happened(Kind::Start, t0 + s(12)),
            Some(0),
            "another kind has its own line"
        );
        assert_eq!(
            n.happened(Kind::Early, t0 + s(70)),
            None,
            "still going: 60 s since the last one are needed"
        );
        assert_eq!(
            n.happened(Kind::Early, t0 + s(131)),
            Some(3),
            "after a quiet minute, with the count not logged"
        );
        assert_eq!(n.happened(Kind::Early, t0 + s(132)), None);
        assert_eq!(n.happened(Kind::Exited, t0 + s(133)), Some(0));
        assert_eq!(n.happened(Kind::Exited, t0 + s(134)), None);
        assert_eq!(n.answered(), 1, "one failure not logged");
        assert_eq!(
            n.happened(Kind::Early, t0 + s(135)),
            Some(0),
            "a new outage after an answer"
        );
        assert_eq!(
            n.happened(Kind::Exited, t0 + s(136)),
            None,
            "a process that exits after answering is no outage: still quiet"
        );
    }

    #[test]
    fn an_end_is_classed_by_stall_answers_and_life() {
        let s = Duration::from_secs;
        assert_eq!(Kind::of_end(true, true, s(100)), Kind::Stalled);
        assert_eq!(Kind::of_end(false, false, s(1)), Kind::Early);
        assert_eq!(Kind::of_end(false, true, s(1)), Kind::Exited);
        assert_eq!(Kind::of_end(false, false, STEADY), Kind::Exited);
        let t = Instant::now();
        let mut r = Restarts::default();
        r.ended(Kind::Early, t);
        assert_eq!(r.wait(t), BACKOFF_FIRST);
        r.ended(Kind::Stalled, t);
        assert_eq!(r.wait(t), BACKOFF_FIRST, "a stall changes nothing");
        r.ended(Kind::Exited, t);
        assert_eq!(r.wait(t), Duration::ZERO);
    }
}
