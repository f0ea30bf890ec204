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
