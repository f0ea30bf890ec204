//! Byte quotas (`[[quota]]`): each user (or client address) a quota
//! names has a count of the bytes its connections moved, both directions
//! together, in the current period (a local day, a week from Monday, a
//! month). Once a count reaches the quota's `bytes`, new connections and
//! requests of that subject are refused until the period turns; those
//! already open go on.
//!
//! The counts ([`Book`]) live in the shared [`crate::Ledger`], so every
//! worker counts into, and checks against, the same ones. With `[state]
//! dir` they outlive the process: this module decides what the state file
//! holds ([`Book::encode`], [`Book::decode`]), when it is written
//! ([`SAVE_EVERY`], and only when something changed), and that a count
//! whose period ended before the load is dropped; the runtime only reads
//! and writes the file.
//!
//! With `[state] redis` several instances share their counts: each adds
//! what it counted since the last round to one Redis key per quota,
//! subject and period ([`Share`], [`shared_key`]) and reads the totals
//! back ([`Book::merge_totals`]). This module decides the keys, what is
//! still to be added, and how a total read back meets the local count;
//! the runtime only talks to Redis, off the data path. Invariant: a
//! count's `used` never goes down within its period (a total read back
//! lower than the local count, say after Redis lost its data, leaves the
//! local count as it is), and `unshared` holds only what was counted here
//! and is not yet in the shared total.
//!
//! A period's end is computed in local time with the UTC offset in force
//! when the count starts; a count crossing a change of offset (daylight
//! saving) ends at the hour the old offset said.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Quota, QuotaSubjects};
use crate::log::civil_from_days;
use crate::rules::Wall;

/// How often the counts are written to `[state] dir` (at most this much
/// counting is lost to a `kill -9`).
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// How often the counts are shared through `[state] redis`.
pub const SHARE_EVERY: Duration = Duration::from_secs(1);

/// The prefix of every key Portico keeps in Redis.
pub const SHARED_PREFIX: &str = "portico:quota:";

/// A shared count's key outlives its period by this much, so that an
/// instance whose clock is a little behind still finds it.
const SHARED_GRACE_SECS: i64 = 3600;

/// The state file's name in `[state] dir`.
pub const STATE_FILE: &str = "quotas.state";

/// The state file's first line: names the format, so that a later version
/// can tell its own from this one.
const HEADER: &str = "# portico quota counts v1";

const SECS_PER_DAY: i64 = 86_400;

/// A quota's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Day,
    /// From Monday 00:00.
    Week,
    Month,
}

impl Per {
    /// `day`, `week` or `month`.
    pub fn parse(s: &str) -> Option<Per> {
        match s {
            "day" => Some(Per::Day),
            "week" => Some(Per::Week),
            "month" => Some(Per::Month),
            _ => None,
        }
    }

    /// `day`, `week` or `month`, as written.
    pub fn name(self) -> &'static str {
        match self {
            Per::Day => "day",
            Per::Week => "week",
            Per::Month => "month",
        }
    }

    /// When the period holding `wall` ends (seconds since the epoch, UTC):
    /// the next local midnight, Monday 00:00, or first of the month 00:00.
    pub fn end(self, wall: Wall) -> i64 {
        let off = i64::from(wall.utc_offset_secs);
        let days = wall.unix_secs.saturating_add(off).div_euclid(SECS_PER_DAY);
        let end_day = match self {
            Per::Day => days + 1,
            Per::Week => {
                // 1970-01-01 was a Thursday: 0 = Monday.
                let weekday = (days + 3).rem_euclid(7);
                days + 7 - weekday
            }
            Per::Month => {
                let (y, m, _) = civil_from_days(days);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1)
            }
        };
        end_day * SECS_PER_DAY - off
    }
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's algorithm, the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-07T00:00:00+01:00`: `unix` in the zone `offset` seconds east.
pub fn rfc3339(unix: i64, offset: i32) -> String {
    let local = unix.saturating_add(i64::from(offset));
    let (y, m, d) = civil_from_days(local.div_euclid(SECS_PER_DAY));
    let rem = local.rem_euclid(SECS_PER_DAY);
    let zone = if offset == 0 {
        "Z".to_string()
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let a = offset.unsigned_abs();
        format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60)
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{zone}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One subject's count in one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub used: u64,
    /// When its period ends (seconds since the epoch).
    pub end: i64,
}

/// The counts: (quota name, subject) → count. `changed`: something was
/// counted since the last [`Book::take_changed`]. With sharing on,
/// `unshared` holds, per count, the bytes counted here that are not yet
/// in the shared total (and the period they belong to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    counts: BTreeMap<(String, String), Count>,
    changed: bool,
    sharing: bool,
    unshared: BTreeMap<(String, String), Count>,
}

/// Bytes one instance adds to a shared count: `used` more for `subject`
/// in `quota`'s period ending at `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub quota: String,
    pub subject: String,
    pub end: i64,
    pub add: u64,
}

impl Share {
    /// The Redis key of the count this adds to.
    pub fn key(&self) -> String {
        shared_key(&self.quota, self.end, &self.subject)
    }

    /// When the key may go (seconds since the epoch): a while after its
    /// period.
    pub fn expire_at(&self) -> i64 {
        self.end.saturating_add(SHARED_GRACE_SECS)
    }
}

/// `portico:quota:QUOTA:END:SUBJECT`: one key per quota, subject and
/// period (named by its end, seconds since the epoch); names escaped so
/// that a `:` in them cannot shift the fields.
pub fn shared_key(quota: &str, end: i64, subject: &str) -> String {
    format!(
        "{SHARED_PREFIX}{}:{end}:{}",
        key_escape(quota),
        key_escape(subject)
    )
}

/// (quota, period end, subject) of a key [`shared_key`] made; `None` for
/// anything else found under the prefix.
pub fn parse_shared_key(key: &str) -> Option<(String, i64, String)> {
    let rest = key.strip_prefix(SHARED_PREFIX)?;
    let mut f = rest.splitn(3, ':');
    let quota = unescape(f.next()?)?;
    let end_text = f.next()?;
    if end_text.is_empty() || !end_text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    let end = end_text.parse().ok()?;
    let subject = unescape(f.next()?)?;
    (!quota.is_empty() && !subject.is_empty()).then_some((quota, end, subject))
}

/// `%`, `:` and control characters as `%XX`.
fn key_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | ':' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() && (c as u32) < 0x100 => {
                out.push_str(&format!("%{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The (quota, subject) pairs a connection of `user` from `client` counts
/// in: a user quota names its user, a client quota its address.
pub fn subjects(quotas: &[Quota], user: Option<&str>, client: IpAddr) -> Vec<(String, String)> {
    // A v4 client on a dual-stack socket counts as its v4 address.
    let client = match client {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    quotas
        .iter()
        .filter_map(|q| {
            let subject = match &q.subjects {
                QuotaSubjects::Users(us) => {
                    let u = user?;
                    us.iter().any(|x| x == u).then(|| u.to_string())?
                }
                QuotaSubjects::Clients(nets) => nets
                    .iter()
                    .any(|n| n.contains(&client))
                    .then(|| client.to_string())?,
            };
            Some((q.name.clone(), subject))
        })
        .collect()
}

impl Book {
    /// `n` more bytes for `subject` in `quota`; a count whose period has
    /// ended starts again at zero.
    pub fn add(&mut self, quota: &Quota, subject: &str, n: u64, wall: Wall) {
        if n == 0 {
            return;
        }
        let key = (quota.name.clone(), subject.to_string());
        let c = self.counts.entry(key).or_insert(Count {
            used: 0,
            end: quota.per.end(wall),
        });
        if c.end <= wall.unix_secs {
            *c = Count {
                used: 0,
                end: quota.per.end(wall),
            };
        }
        c.used = c.used.saturating_add(n);
        self.changed = true;
        if self.sharing {
            let end = c.end;
            let key = (quota.name.clone(), subject.to_string());
            let u = self.unshared.entry(key).or_insert(Count { used: 0, end });
            if u.end != end {
                // What was left of an ended period is not worth adding.
                *u = Count { used: 0, end };
            }
            u.used = u.used.saturating_add(n);
        }
    }

    /// `n` more bytes in each of `pairs`' counts (quota, subject);
    /// whether one of them is now used up.
    pub fn add_all(
        &mut self,
        quotas: &[Quota],
        pairs: &[(String, String)],
        n: u64,
        wall: Wall,
    ) -> bool {
        let mut reached = false;
        for (q, s) in pairs {
            if let Some(quota) = quotas.iter().find(|x| &x.name == q) {
                self.add(quota, s, n, wall);
                reached |= self.reached(quota, s, wall);
            }
        }
        reached
    }

    /// From now on, keeps what is counted here until it is shared.
    pub fn share(&mut self) {
        self.sharing = true;
    }

    /// What was counted here since it was last added to the shared
    /// totals, for the counts of periods not yet ended at `wall` (what is
    /// left of an ended period is dropped). Stays counted as unshared
    /// until [`Book::shared`] says it went.
    pub fn unshared(&mut self, wall: Wall) -> Vec<Share> {
        self.unshared
            .retain(|_, u| u.end > wall.unix_secs && u.used > 0);
        self.unshared
            .iter()
            .map(|((q, s), u)| Share {
                quota: q.clone(),
                subject: s.clone(),
                end: u.end,
                add: u.used,
            })
            .collect()
    }

    /// `sent` (from [`Book::unshared`]) is in the shared totals now; what
    /// was counted meanwhile stays to be shared.
    pub fn shared(&mut self, sent: &[Share]) {
        for s in sent {
            let key = (s.quota.clone(), s.subject.clone());
            if let Some(u) = self.unshared.get_mut(&key) {
                if u.end == s.end {
                    u.used = u.used.saturating_sub(s.add);
                }
            }
        }
        self.unshared.retain(|_, u| u.used > 0);
    }

    /// Meets the shared totals read back from Redis (key, bytes): each
    /// count of a period not ended becomes the total plus what was
    /// counted here and is not in it yet, unless it is already more.
    /// Keys that are not Portico's, or of an ended period, are passed
    /// over; so is a total for a period other than the local count's
    /// current one (an instance in another time zone).
    pub fn merge_totals(&mut self, totals: &[(String, u64)], wall: Wall) {
        self.counts.retain(|_, c| c.end > wall.unix_secs);
        for (key, total) in totals {
            let Some((q, end, s)) = parse_shared_key(key) else {
                continue;
            };
            if end <= wall.unix_secs {
                continue;
            }
            let k = (q, s);
            let pending = self
                .unshared
                .get(&k)
                .filter(|u| u.end == end)
                .map_or(0, |u| u.used);
            let want = total.saturating_add(pending);
            match self.counts.get_mut(&k) {
                Some(c) if c.end != end => {}
                Some(c) => {
                    if want > c.used {
                        c.used = want;
                        self.changed = true;
                    }
                }
                None => {
                    self.counts.insert(k, Count { used: want, end });
                    self.changed = true;
                }
            }
        }
    }

    /// The bytes `subject` used in `quota`'s current period.
    pub fn used(&self, quota: &str, subject: &str, wall: Wall) -> u64 {
        self.counts
            .get(&(quota.to_string(), subject.to_string()))
            .filter(|c| c.end > wall.unix_secs)
            .map_or(0, |c| c.used)
    }

    /// Whether `subject` has used all of `quota` in its current period.
    pub fn reached(&self, quota: &Quota, subject: &str, wall: Wall) -> bool {
        self.used(&quota.name, subject, wall) >= quota.bytes
    }

    /// The first of `pairs` whose quota is reached, by name.
    pub fn first_reached<'a>(
        &self,
        quotas: &[Quota],
        pairs: &'a [(String, String)],
        wall: Wall,
    ) -> Option<&'a (String, String)> {
        pairs.iter().find(|(q, s)| {
            quotas
                .iter()
                .find(|x| &x.name == q)
                .is_some_and(|x| self.reached(x, s, wall))
        })
    }

    /// Whether anything was counted since the last call (and so whether
    /// the state file needs writing).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Has the next [`Book::take_changed`] say yes (a write failed and is
    /// to be tried again).
    pub fn touch(&mut self) {
        self.changed = true;
    }

    /// The counts of the current periods of the quotas configured, for
    /// `GET /quotas` and the metrics.
    pub fn rows(&self, quotas: &[Quota], wall: Wall) -> Vec<QuotaRow> {
        self.counts
            .iter()
            .filter(|(_, c)| c.end > wall.unix_secs)
            .filter_map(|((q, s), c)| {
                let quota = quotas.iter().find(|x| &x.name == q)?;
                Some(QuotaRow {
                    quota: q.clone(),
                    subject: s.clone(),
                    used_bytes: c.used,
                    limit_bytes: quota.bytes,
                    period_end: rfc3339(c.end, wall.utc_offset_secs),
                })
            })
            .collect()
    }

    /// The state file's text: a header, then one line per count of a
    /// period not yet ended: quota, subject, bytes used, period end (unix
    /// seconds), separated by tabs (names escaped, see [`escape`]).
    pub fn encode(&self, wall: Wall) -> String {
        let mut out = String::with_capacity(64 + 48 * self.counts.len());
        out.push_str(HEADER);
        out.push('\n');
        for ((q, s), c) in &self.counts {
            if c.end > wall.unix_secs {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\n",
                    escape(q),
                    escape(s),
                    c.used,
                    c.end
                ));
            }
        }
        out
    }

    /// Whether there is no count at all.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Every count, ended or not, as [`Book::encode`] writes them.
    pub fn encode_all(&self) -> String {
        self.encode(Wall {
            unix_secs: i64::MIN,
            utc_offset_secs: 0,
        })
    }

    /// Every count of `text`, ended or not (see [`Book::decode`]).
    pub fn decode_all(text: &str, file: &str) -> Result<Book, StateError> {
        Book::decode(
            text,
            file,
            Wall {
                unix_secs: i64::MIN,
                utc_offset_secs: 0,
            },
        )
    }

    /// Reads a state file's `text` (from `file`, for errors): the counts
    /// whose period had not ended at `wall`; counts of a period that ended
    /// meanwhile are dropped (they would start at zero anyway).
    pub fn decode(text: &str, file: &str, wall: Wall) -> Result<Book, StateError> {
        let mut lines = text.lines().enumerate();
        let bad = |line: usize, why: &str| StateError {
            file: file.to_string(),
            line,
            why: why.to_string(),
        };
        match lines.next() {
            Some((_, h)) if h == HEADER => {}
            _ => {
                return Err(bad(
                    1,
                    "it does not start with the line \"# portico quota counts v1\"",
                ))
            }
        }
        let mut book = Book::default();
        for (i, line) in lines {
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let [q, s, used, end] = f[..] else {
                return Err(bad(i + 1, "a count needs four tab-separated fields"));
            };
            let used: u64 = used
                .parse()
                .map_err(|_| bad(i + 1, "the bytes used are not a whole number"))?;
            let end: i64 = end
                .parse()
                .map_err(|_| bad(i + 1, "the period end is not a whole number"))?;
            let q = unescape(q).ok_or_else(|| bad(i + 1, "a bad %-escape in the quota name"))?;
            let s = unescape(s).ok_or_else(|| bad(i + 1, "a bad %-escape in the subject"))?;
            if end > wall.unix_secs {
                book.counts.insert((q, s), Count { used, end });
            }
        }
        Ok(book)
    }
}

/// A state file that does not read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{file}:{line}: not a quota state file Portico can read: {why}; \
     move the file away to start the counts from zero"
)]
pub struct StateError {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// `%`, tab, CR and LF as `%XX`, so a name stays within its field.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '\t' | '\n' | '\r' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One count as `GET /quotas` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRow {
    pub quota: String,
    pub subject: String,
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// RFC 3339, local offset.
    pub period_end: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    /// 2026-12-02 (a Wednesday) 12:00:00 UTC.
    const WED_NOON: i64 = 1_796_212_800;

    fn wall(unix_secs: i64, utc_offset_secs: i32) -> Wall {
        Wall {
            unix_secs,
            utc_offset_secs,
        }
    }

    fn quota(per: Per, bytes: u64) -> Quota {
        Quota {
            name: "daily".into(),
            subjects: QuotaSubjects::Users(vec!["alice".into()]),
            bytes,
            per,
        }
    }

    #[test]
    fn the_reference_day_is_a_wednesday() {
        assert_eq!(rfc3339(WED_NOON, 0), "2026-12-02T12:00:00Z");
        assert_eq!(wall(WED_NOON, 0).weekday(), 2);
    }

    #[test]
    fn days_end_at_local_midnight() {
        assert_eq!(
            rfc3339(Per::Day.end(wall(WED_NOON, 0)), 0),
            "2026-12-03T00:00:00Z"
        );
        // 12:00 UTC is 23:00 at +11:00: the day ends an hour later.
        let w = wall(WED_NOON, 11 * 3600);
        assert_eq!(Per::Day.end(w), WED_NOON + 3600);
        assert_eq!(
            rfc3339(Per::Day.end(w), 11 * 3600),
            "2026-12-03T00:00:00+11:00"
        );
        // At -05:00 it is 07:00: 17 hours to go.
        let w = wall(WED_NOON, -5 * 3600);
        assert_eq!(Per::Day.end(w), WED_NOON + 17 * 3600);
        assert_eq!(
            rfc3339(Per::Day.end(w), -5 * 3600),
            "2026-12-03T00:00:00-05:00"
        );
        // The last second of a day belongs to it; midnight starts the next.
        let midnight = WED_NOON + 12 * 3600;
        assert_eq!(Per::Day.end(wall(midnight - 1, 0)), midnight);
        assert_eq!(Per::Day.end(wall(midnight, 0)), midnight + SECS_PER_DAY);
    }

    #[test]
    fn weeks_start_on_monday() {
        // Wednesday → Monday 2026-12-07.
        let end = Per::Week.end(wall(WED_NOON, 0));
        assert_eq!(rfc3339(end, 0), "2026-12-07T00:00:00Z");
        // Sunday 23:59:59 still ends then; Monday 00:00 is a new week.
        assert_eq!(Per::Week.end(wall(end - 1, 0)), end);
        assert_eq!(Per::Week.end(wall(end, 0)), end + 7 * SECS_PER_DAY);
        // Sunday 20:00 UTC is already Monday 05:00 at +09:00.
        let w = wall(end - 4 * 3600, 9 * 3600);
        assert_eq!(
            rfc3339(Per::Week.end(w), 9 * 3600),
            "2026-12-14T00:00:00+09:00"
        );
    }

    #[test]
    fn months_end_on_the_first() {
        let m = |unix, off| rfc3339(Per::Month.end(wall(unix, off)), off);
        assert_eq!(m(WED_NOON, 0), "2027-01-01T00:00:00Z");
        // 2028-02-29 (a leap day) 10:00 UTC → March.
        assert_eq!(m(1_835_431_200, 0), "2028-03-01T00:00:00Z");
        // 2027-02-28 23:30 UTC: February in UTC, March 1st at +01:00.
        assert_eq!(m(1_803_857_400, 0), "2027-03-01T00:00:00Z");
        assert_eq!(m(1_803_857_400, 3600), "2027-04-01T00:00:00+01:00");
        // 2026-04-30 (30 days) and 2026-01-31.
        assert_eq!(m(1_777_550_400, 0), "2026-05-01T00:00:00Z");
        assert_eq!(m(1_769_860_800, 0), "2026-02-01T00:00:00Z");
        for (y, mo, d) in [(1970, 1, 1), (2000, 2, 29), (2026, 12, 31), (2100, 3, 1)] {
            assert_eq!(civil_from_days(days_from_civil(y, mo, d)), (y, mo, d));
        }
    }

    #[test]
    fn counts_start_again_when_the_period_turns() {
        let q = quota(Per::Day, 100);
        let mut b = Book::default();
        let w = wall(WED_NOON, 0);
        b.add(&q, "alice", 60, w);
        assert!(!b.reached(&q, "alice", w));
        b.add(&q, "alice", 40, w);
        assert!(b.reached(&q, "alice", w));
        assert!(!b.reached(&q, "bob", w));
        let next = wall(Per::Day.end(w), 0);
        assert!(!b.reached(&q, "alice", next));
        assert_eq!(b.used("daily", "alice", next), 0);
        b.add(&q, "alice", 5, next);
        assert_eq!(b.used("daily", "alice", next), 5);
    }

    #[test]
    fn workers_count_into_one_book() {
        let q = quota(Per::Day, 100);
        let w = wall(WED_NOON, 0);
        let a = Ledger::new(2);
        let b = a.clone();
        a.lock().quotas.add(&q, "alice", 70, w);
        assert!(!b.lock().quotas.reached(&q, "alice", w));
        b.lock().quotas.add(&q, "alice", 30, w);
        assert!(a.lock().quotas.reached(&q, "alice", w));
        assert_eq!(a.lock().quotas.used("daily", "alice", w), 100);
    }

    #[test]
    fn the_state_file_round_trips() {
        let q = quota(Per::Week, 1 << 40);
        let w = wall(WED_NOON, 3600);
        let mut b = Book::default();
        b.add(&q, "alice", 12_345, w);
        b.add(&q, "odd\tname%\n", 7, w);
        assert!(b.take_changed());
        assert!(!b.take_changed());
        let text = b.encode(w);
        assert_eq!(text.lines().count(), 3, "{text}");
        let back = Book::decode(&text, "/var/lib/portico/quotas.state", w).expect("reads");
        assert_eq!(back, b);
        assert_eq!(back.used("daily", "odd\tname%\n", w), 7);
        // Loaded after the period ended: the counts are dropped.
        let later = wall(Per::Week.end(w), 3600);
        let stale = Book::decode(&text, "f", later).expect("reads");
        assert_eq!(stale, Book::default());
        assert_eq!(stale.encode(later), format!("{HEADER}\n"));
    }

    #[test]
    fn a_malformed_state_file_is_an_error_naming_it() {
        let w = wall(WED_NOON, 0);
        let file = "/var/lib/portico/quotas.state";
        for (text, line) in [
            ("", 1),
            ("garbage\n", 1),
            ("# portico quota counts v1\ndaily\talice\t12\n", 2),
            ("# portico quota counts v1\ndaily\talice\tx\t1\n", 2),
            ("# portico quota counts v1\n\ndaily\talice\t1\t-\n", 3),
            ("# portico quota counts v1\nd%zz\talice\t1\t1\n", 2),
            ("# portico quota counts v1\nd\ta\t1\t1\textra\n", 2),
        ] {
            let e = Book::decode(text, file, w).expect_err(text);
            assert_eq!(e.line, line, "{text:?}");
            let m = e.to_string();
            assert!(m.starts_with(&format!("{file}:{line}: ")), "{m}");
            assert!(m.contains("move the file away"), "{m}");
        }
    }

    #[test]
    fn subjects_are_users_or_client_addresses() {
        let quotas = vec![
            quota(Per::Day, 10),
            Quota {
                name: "lan".into(),
                subjects: QuotaSubjects::Clients(vec!["10.0.0.0/8".parse().expect("net")]),
                bytes: 10,
                per: Per::Month,
            },
        ];
        let ip: IpAddr = [10, 1, 2, 3].into();
        assert_eq!(
            subjects(&quotas, Some("alice"), ip),
            [
                ("daily".to_string(), "alice".to_string()),
                ("lan".to_string(), "10.1.2.3".to_string())
            ]
        );
        assert!(subjects(&quotas, Some("bob"), [192, 168, 0, 1].into()).is_empty());
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(subjects(&quotas, None, mapped)[0].1, "10.1.2.3");
    }

    #[test]
    fn shared_keys_name_quota_period_and_subject() {
        let k = shared_key("da:ily%", 1_796_256_000, "2001:db8::1");
        assert_eq!(k, "portico:quota:da%3Aily%25:1796256000:2001%3Adb8%3A%3A1");
        assert_eq!(
            parse_shared_key(&k),
            Some(("da:ily%".into(), 1_796_256_000, "2001:db8::1".into()))
        );
        for bad in [
            "portico:quota:daily:soon:alice",
            "portico:quota:daily:1796256000",
            "portico:quota::1796256000:alice",
            "portico:quota:daily:1796256000:",
            "portico:quota:da%4:1796256000:alice",
            "other:daily:1796256000:alice",
        ] {
            assert_eq!(parse_shared_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn what_is_counted_is_shared_once() {
        let q = quota(Per::Day, 1000);
        let w = wall(WED_NOON, 0);
        let mut b = Book::default();
        b.add(&q, "alice", 7, w);
        assert!(b.unshared(w).is_empty(), "not sharing: nothing kept");
        b.share();
        b.add(&q, "alice", 100, w);
        let round = b.unshared(w);
        assert_eq!(round.len(), 1);
        assert_eq!(round[0].add, 100);
        assert_eq!(
            round[0].key(),
            shared_key("daily", Per::Day.end(w), "alice")
        );
        assert_eq!(round[0].expire_at(), Per::Day.end(w) + 3600);
        // Counted while the round was on its way: shared at the next one.
        b.add(&q, "alice", 5, w);
        b.shared(&round);
        let next = b.unshared(w);
        assert_eq!(next.iter().map(|s| s.add).collect::<Vec<_>>(), [5]);
        b.shared(&next);
        assert!(b.unshared(w).is_empty());
        // A round that failed is not said to be shared: it stays.
        b.add(&q, "alice", 9, w);
        assert_eq!(b.unshared(w)[0].add, 9);
        assert_eq!(b.unshared(w)[0].add, 9);
    }

    #[test]
    fn totals_read_back_raise_the_counts() {
        let q = quota(Per::Day, 1000);
        let w = wall(WED_NOON, 0);
        let end = Per::Day.end(w);
        let mut b = Book::default();
        b.share();
        b.add(&q, "alice", 100, w);
        let round = b.unshared(w);
        b.shared(&round);
        b.add(&q, "alice", 10, w);
        b.take_changed();
        // Redis holds our 100 and another instance's 500; our 10 are on
        // their way.
        let totals = vec![
            (shared_key("daily", end, "alice"), 600),
            (shared_key("daily", end, "bob"), 2000),
            (shared_key("daily", end - 86_400, "carol"), 50),
            ("portico:quota:junk".to_string(), 1),
        ];
        b.merge_totals(&totals, w);
        assert_eq!(b.used("daily", "alice", w), 610);
        assert!(b.reached(&q, "bob", w), "a subject only others counted");
        assert_eq!(b.used("daily", "carol", w), 0, "an ended period");
        assert!(b.take_changed(), "the state file learns the totals too");
        // A lower total (Redis lost its data) never lowers a count.
        b.merge_totals(&[(shared_key("daily", end, "alice"), 3)], w);
        assert_eq!(b.used("daily", "alice", w), 610);
        // A total for another period than ours (another time zone) is
        // passed over.
        b.merge_totals(&[(shared_key("daily", end + 3600, "alice"), 5000)], w);
        assert_eq!(b.used("daily", "alice", w), 610);
        // What is left of an ended period is not shared.
        let later = wall(end + 1, 0);
        assert!(b.unshared(later).is_empty());
    }
}
