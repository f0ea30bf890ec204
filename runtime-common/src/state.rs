//! The quotas' counts on disk (`[state] dir`): read once at start, written
//! every [`SAVE_EVERY`] when something was counted and once more at
//! shutdown. What the file holds, and which counts a load keeps, the core
//! decides (`portico_core::quota`); here are only the reads and writes.
//!
//! A write never leaves half a file: the text goes to a temporary file in
//! the same directory, is synced, and is renamed over the old one (then
//! the directory is synced, so the rename outlives a crash). The writes
//! happen after privileges are given up, so the files belong to `[process]
//! user`, which must be able to write the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use portico_core::config::Config;
use portico_core::quota::{Book, SAVE_EVERY, STATE_FILE};
use portico_core::{Ledger, Level};

use crate::process::{log, WallClock};

/// Where the counts go, once [`load`] found a `[state] dir`.
struct Saver {
    ledger: Ledger,
    path: PathBuf,
    /// The last write's error, said once rather than every time.
    failing: Option<String>,
}

static SAVER: Mutex<Option<Saver>> = Mutex::new(None);

fn saver() -> std::sync::MutexGuard<'static, Option<Saver>> {
    SAVER.lock().unwrap_or_else(|e| e.into_inner())
}

/// At start, before anything is counted: reads the counts `config`'s
/// `[state] dir` holds into `ledger` (none there yet is no error), and
/// keeps where to write them. Without a `dir`, warns that quotas count in
/// memory only. An unreadable or malformed file stops the start, named.
pub fn load(ledger: &Ledger, config: &Config) -> Result<(), String> {
    let Some(dir) = &config.state.dir else {
        if !config.quotas.is_empty() {
            log(
                Level::Warn,
                "the quotas' counts are kept in memory only and start from zero at each start; \
                 set [state] dir to keep them",
            );
        }
        return Ok(());
    };
    if !dir.is_dir() {
        return Err(format!(
            "state.dir {} is not a directory; create it, writable by the user Portico runs as",
            dir.display()
        ));
    }
    let path = dir.join(STATE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let book = Book::decode(&text, &path.display().to_string(), WallClock::new().now())
                .map_err(|e| e.to_string())?;
            ledger.lock().quotas = book;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot read the quota counts {}: {e}",
                path.display()
            ))
        }
    }
    *saver() = Some(Saver {
        ledger: ledger.clone(),
        path,
        failing: None,
    });
    Ok(())
}

/// Once privileges are given up: writes the counts every [`SAVE_EVERY`]
/// from a thread of its own (none without `[state] dir`).
pub fn start_saving() -> Result<(), String> {
    if saver().is_none() {
        return Ok(());
    }
    every("state", SAVE_EVERY, || save(false))
        .map_err(|e| format!("cannot start the thread that saves the quota counts: {e}"))
}

/// Runs `f` every `period` from a thread of its own named `name`, for the
/// life of the process.
pub(crate) fn every(
    name: &str,
    period: std::time::Duration,
    f: impl Fn() + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            std::thread::sleep(period);
            f();
        })
        .map(drop)
}

/// At shutdown: the last counts.
pub fn save_at_exit() {
    save(true);
}

/// Writes the counts if anything was counted since the last write (or
/// `always`).
fn save(always: bool) {
    let mut guard = saver();
    let Some(s) = guard.as_mut() else {
        return;
    };
    let text = {
        let mut counts = s.ledger.lock();
        if !counts.quotas.take_changed() && !always {
            return;
        }
        counts.quotas.encode(WallClock::new().now())
    };
    match write_atomically(&s.path, text.as_bytes()) {
        Ok(()) => {
            if s.failing.take().is_some() {
                log(
                    Level::Info,
                    &format!("the quota counts are written to {} again", s.path.display()),
                );
            }
        }
        Err(e) => {
            let why = format!(
                "cannot write the quota counts to {}: {e}; check that the user Portico runs as \
                 may write its directory",
                s.path.display()
            );
            if s.failing.as_deref() != Some(why.as_str()) {
                log(Level::Error, &why);
            }
            s.failing = Some(why);
            // Try again at the next turn, counted or not.
            s.ledger.lock().quotas.touch();
        }
    }
}

/// `path` holds `bytes`, or its old content: never part of either.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    // The rename itself outlives a crash once the directory is synced.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("portico-state-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(STATE_FILE);
        write_atomically(&path, b"one\n").expect("first write");
        write_atomically(&path, b"two\n").expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "two\n");
        let left: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
