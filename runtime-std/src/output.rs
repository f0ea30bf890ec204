//! Where the core's log, access and `Say` lines go.

use std::fs::{File, OpenOptions};
use std::io::{self, LineWriter, Write};
use std::time::SystemTime;

use portico_core::config::{AccessTarget, Config, LogFormat};
use portico_core::{AccessRecord, Level};

pub struct Output {
    access: Option<Box<dyn Write + Send>>,
    format: LogFormat,
}

impl Output {
    /// Opens the access log the configuration names.
    pub fn open(config: &Config) -> io::Result<Output> {
        let access: Option<Box<dyn Write + Send>> = match &config.log.access {
            AccessTarget::Off => None,
            AccessTarget::Stderr => Some(Box::new(io::stderr())),
            AccessTarget::File(p) => {
                let f: File = OpenOptions::new().create(true).append(true).open(p)?;
                Some(Box::new(LineWriter::new(f)))
            }
        };
        Ok(Output {
            access,
            format: config.log.format,
        })
    }

    pub fn access(&mut self, rec: &AccessRecord) {
        if let Some(w) = self.access.as_mut() {
            let mut line = rec.format(SystemTime::now(), self.format);
            line.push('\n');
            let _ = w.write_all(line.as_bytes());
        }
    }

    pub fn log(level: Level, message: &str) {
        let _ = writeln!(io::stderr(), "portico: {}: {message}", level.name());
    }

    pub fn say(line: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Local wall-clock time for the core's rules. The UTC offset is looked up
/// once a minute (localtime_r may read the zone file).
pub struct WallClock {
    minute: i64,
    offset: i32,
}

impl WallClock {
    pub fn new() -> Self {
        WallClock {
            minute: i64::MIN,
            offset: 0,
        }
    }

    pub fn now(&mut self) -> portico_core::rules::Wall {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if secs / 60 != self.minute {
            self.minute = secs / 60;
            let t = secs as libc::time_t;
            // SAFETY: localtime_r writes only into the tm we pass.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            if !unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
                self.offset = tm.tm_gmtoff as i32;
            }
        }
        portico_core::rules::Wall {
            unix_secs: secs,
            utc_offset_secs: self.offset,
        }
    }
}

/// `--record FILE`: the trace goes to FILE, the actions the core took to
/// FILE.actions (what `portico replay FILE` must print again).
pub struct TraceFiles {
    trace: File,
    actions: File,
}

impl TraceFiles {
    pub fn create(path: &std::path::Path) -> io::Result<TraceFiles> {
        let mut actions = path.as_os_str().to_owned();
        actions.push(".actions");
        Ok(TraceFiles {
            trace: File::create(path)?,
            actions: File::create(actions)?,
        })
    }

    pub fn write(&mut self, (trace, actions): (Vec<u8>, String)) {
        let _ = self.trace.write_all(&trace);
        let _ = self.actions.write_all(actions.as_bytes());
    }
}
