//! The quotas' counts shared through Redis or Valkey (`[state] redis`).
//!
//! A thread of its own, every [`SHARE_EVERY`]: takes from the core what
//! was counted here since the last round, adds it to the shared keys in
//! one transaction, reads every shared total back and gives them to the
//! core. Which keys, what is added, and how a total meets a local count
//! the core decides (`portico_core::quota`); here are only the Redis
//! commands. The ledger's lock is held only to take and to give, never
//! while Redis is asked, so the data path never waits on Redis.
//!
//! Redis unreachable (or slow past [`IO_TIMEOUT`]): the counts go on
//! locally and pile up as unshared; one line says so, one line when
//! Redis is back, and the next round adds what was counted meanwhile.

use std::sync::Mutex;
use std::time::Duration;

use portico_core::config::{Config, RedisUrl};
use portico_core::quota::{Share, SHARED_PREFIX, SHARE_EVERY};
use portico_core::{Ledger, Level};

use crate::process::{log, WallClock};

/// How long one connect, write or read may take before the round gives
/// up (and the counts wait for the next one).
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// SCAN steps of one round at most (each asks for about [`SCAN_COUNT`]
/// keys): bounds what one round reads.
const SCAN_STEPS: usize = 1000;
const SCAN_COUNT: usize = 1000;

/// Keys read per MGET.
const MGET_CHUNK: usize = 500;

struct Sharer {
    ledger: Ledger,
    url: RedisUrl,
    client: redis::Client,
    conn: Option<redis::Connection>,
    /// None until the first round; then whether the last one went through.
    up: Option<bool>,
}

static SHARER: Mutex<Option<Sharer>> = Mutex::new(None);

fn sharer() -> std::sync::MutexGuard<'static, Option<Sharer>> {
    SHARER.lock().unwrap_or_else(|e| e.into_inner())
}

/// At start, before anything is counted: with `[state] redis`, has the
/// core keep what it counts until it is shared, and keeps where to share
/// it. A URL the client cannot read stops the start, named.
pub fn prepare(ledger: &Ledger, config: &Config) -> Result<(), String> {
    let Some(url) = &config.state.redis else {
        return Ok(());
    };
    let client = redis::Client::open(url.full()).map_err(|e| {
        format!(
            "state.redis {}: {e}; write it like redis://127.0.0.1:6379/0",
            url.shown()
        )
    })?;
    ledger.lock().quotas.share();
    *sharer() = Some(Sharer {
        ledger: ledger.clone(),
        url: url.clone(),
        client,
        conn: None,
        up: None,
    });
    Ok(())
}

/// Once privileges are given up: shares every [`SHARE_EVERY`] from a
/// thread of its own (none without `[state] redis`).
pub fn start() -> Result<(), String> {
    if sharer().is_none() {
        return Ok(());
    }
    crate::state::every("share", SHARE_EVERY, || {
        if let Some(s) = sharer().as_mut() {
            s.round();
        }
    })
    .map_err(|e| format!("cannot start the thread that shares the quota counts: {e}"))
}

/// At shutdown: adds what is left to share (one try, bounded by
/// [`IO_TIMEOUT`]s).
pub fn share_at_exit() {
    if let Some(s) = sharer().as_mut() {
        s.round();
    }
}

impl Sharer {
    fn round(&mut self) {
        let wall = WallClock::new().now();
        let conn = match self.conn.take() {
            Some(c) => c,
            None => match self.connect() {
                Ok(c) => c,
                Err(e) => return self.went(&e),
            },
        };
        let mut conn = conn;
        let adds = self.ledger.lock().quotas.unshared(wall);
        if let Err(e) = add(&mut conn, &adds) {
            return self.went(&e);
        }
        self.ledger.lock().quotas.shared(&adds);
        match totals(&mut conn) {
            Ok(t) => {
                self.ledger.lock().quotas.merge_totals(&t, wall);
                self.conn = Some(conn);
                self.back();
            }
            Err(e) => self.went(&e),
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    /// A round failed: said once until one goes through again.
    fn went(&mut self, e: &redis::RedisError) {
        self.conn = None;
        if self.up != Some(false) {
            log(
                Level::Warn,
                &format!(
                    "the quota counts are not shared: {}: {e}; each instance counts on its own \
                     until Redis answers again",
                    self.url.shown()
                ),
            );
        }
        self.up = Some(false);
    }

    fn back(&mut self) {
        match self.up {
            Some(false) => log(
                Level::Info,
                &format!(
                    "the quota counts are shared through {} again; what was counted meanwhile \
                     is added",
                    self.url.shown()
                ),
            ),
            None => log(
                Level::Info,
                &format!("the quota counts are shared through {}", self.url.shown()),
            ),
            Some(true) => {}
        }
        self.up = Some(true);
    }
}

/// Adds `adds` to their keys, all or none (MULTI/EXEC), each key
/// expiring a while after its period.
fn add(conn: &mut redis::Connection, adds: &[Share]) -> redis::RedisResult<()> {
    if adds.is_empty() {
        return Ok(());
    }
    let mut p = redis::pipe();
    p.atomic();
    for a in adds {
        let key = a.key();
        p.cmd("INCRBY").arg(&key).arg(a.add).ignore();
        p.cmd("EXPIREAT").arg(&key).arg(a.expire_at()).ignore();
    }
    p.exec(conn)
}

/// Every shared count: (key, bytes). A value that is not a whole number
/// (not Portico's) is passed over.
fn totals(conn: &mut redis::Connection) -> redis::RedisResult<Vec<(String, u64)>> {
    let pattern = format!("{SHARED_PREFIX}*");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    for _ in 0..SCAN_STEPS {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(conn)?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may give a key twice.
    keys.sort_unstable();
    keys.dedup();
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(MGET_CHUNK) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(conn)?;
        for (k, v) in chunk.iter().zip(values) {
            if let Some(n) = v.and_then(|v| v.parse().ok()) {
                out.push((k.clone(), n));
            }
        }
    }
    Ok(out)
}
