//! Where diagnostics go: the sink behind the `log` facade.
//!
//! The core's `Log` actions and the runtime's own errors are `log` records
//! at their level. The sink writes each as one line:
//!
//! - on stderr or a file: `2026-01-02T03:04:05.678Z portico: warn: message`
//!   (UTC, milliseconds, as the access log's);
//! - on stderr when it is the journal (`JOURNAL_STREAM` names its device
//!   and inode): `<4>message`, the sd-daemon priority prefix the journal
//!   reads, since the journal keeps its own time;
//! - to the local syslog socket: see [`crate::syslog`].
//!
//! Until the configuration is taken it writes to stderr; [`configure`]
//! switches it to `[log] diagnostics`, and [`reopen`] opens its file again
//! (SIGUSR1).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use portico_core::config::{DiagnosticsTarget, LogConfig};
use portico_core::Level;

use crate::syslog::{self, Syslog};

enum Dest {
    Stderr,
    File { path: PathBuf, file: File },
    Syslog(Syslog),
}

struct Sink {
    dest: Mutex<Dest>,
    /// stderr is the journal: `<N>` prefixes instead of time and level.
    journal: AtomicBool,
}

static SINK: Sink = Sink {
    dest: Mutex::new(Dest::Stderr),
    journal: AtomicBool::new(false),
};

impl Sink {
    fn dest(&self) -> std::sync::MutexGuard<'_, Dest> {
        // A thread that panicked while writing a line left a destination
        // that still works.
        self.dest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl log::Log for Sink {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let level = record.level();
        let mut dest = self.dest();
        match &mut *dest {
            Dest::Stderr if self.journal.load(Ordering::Relaxed) => {
                let line = format!("<{}>{message}\n", severity(level));
                let _ = io::stderr().write_all(line.as_bytes());
            }
            Dest::Stderr => {
                let _ = io::stderr().write_all(stamped(level, &message).as_bytes());
            }
            Dest::File { file, .. } => {
                let _ = file.write_all(stamped(level, &message).as_bytes());
            }
            Dest::Syslog(s) => {
                if let Err(e) = s.send(severity(level), &message) {
                    // Nowhere better to say it, and the line is not lost.
                    let text = format!("cannot send to syslog: {e}; the line was: {message}");
                    let _ = io::stderr().write_all(stamped(log::Level::Error, &text).as_bytes());
                }
            }
        }
    }

    fn flush(&self) {}
}

/// `2026-01-02T03:04:05.678Z portico: warn: message\n`.
fn stamped(level: log::Level, message: &str) -> String {
    format!(
        "{} portico: {}: {message}\n",
        portico_core::rfc3339_millis(SystemTime::now()),
        name(level)
    )
}

/// The core's names for the levels (`warn`, not `WARN`).
fn name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug | log::Level::Trace => "debug",
    }
}

/// The syslog / sd-daemon severity of `level`.
fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => syslog::ERROR,
        log::Level::Warn => syslog::WARNING,
        log::Level::Info => syslog::INFO,
        log::Level::Debug | log::Level::Trace => syslog::DEBUG,
    }
}

/// The `log` level of the core's `level`.
pub fn level_of(level: Level) -> log::Level {
    match level {
        Level::Error => log::Level::Error,
        Level::Warn => log::Level::Warn,
        Level::Info => log::Level::Info,
        Level::Debug => log::Level::Debug,
    }
}

/// Installs the sink (once per process; later calls change nothing but
/// the level), writing to stderr, at `level` and above.
pub fn init(level: Level) {
    SINK.journal.store(stderr_is_journal(), Ordering::Relaxed);
    // Err only when already installed: the level below still applies.
    let _ = log::set_logger(&SINK);
    set_level(level);
}

/// Lines at `level` and above are written (`--log-level`).
pub fn set_level(level: Level) {
    log::set_max_level(level_of(level).to_level_filter());
}

/// Switches the sink to `config`'s `[log] diagnostics`. On failure the
/// sink stays where it was and the error says what to check.
pub fn configure(config: &LogConfig) -> Result<(), String> {
    let dest = match &config.diagnostics {
        DiagnosticsTarget::Stderr => Dest::Stderr,
        DiagnosticsTarget::File(p) => Dest::File {
            file: open_append(p).map_err(|e| {
                format!(
                    "cannot open the diagnostics log {}: {e}; check [log] diagnostics",
                    p.display()
                )
            })?,
            path: p.clone(),
        },
        DiagnosticsTarget::Syslog => {
            Dest::Syslog(Syslog::open(&config.syslog_socket).map_err(|e| {
                format!(
                    "cannot reach the syslog socket {}: {e}; check that a syslog daemon is \
                     running, or set [log] syslog_socket",
                    config.syslog_socket.display()
                )
            })?)
        }
    };
    *SINK.dest() = dest;
    Ok(())
}

/// Opens the diagnostics file again at its path (after logrotate moved
/// it); the old one stays in use if the new one cannot be opened.
pub fn reopen() -> Result<(), String> {
    let mut dest = SINK.dest();
    if let Dest::File { path, file } = &mut *dest {
        match open_append(path) {
            Ok(f) => *file = f,
            Err(e) => {
                return Err(format!(
                    "cannot open the diagnostics log {} again: {e}; still writing to the old one",
                    path.display()
                ))
            }
        }
    }
    Ok(())
}

/// Opens `path` for appending, creating it.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Whether stderr is the journal: `JOURNAL_STREAM` is `DEVICE:INODE` of
/// the stream systemd connected, and stderr is still that stream (not
/// redirected since).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat writes only into the stat we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(io::stderr().as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}
