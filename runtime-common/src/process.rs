//! The process around the tables: where the core's lines go ([`Output`],
//! [`log`]), the command line's I/O ([`Process`]), the wall clock the rules
//! need ([`WallClock`]), the flight recorder's files ([`TraceFiles`]), what
//! a runtime starts from ([`Start`]), giving up root once listening
//! ([`assume`]) and saying it serves ([`ready`]), and reading the
//! configuration again on SIGHUP ([`load`]).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use portico_core::cli::Plan;
use portico_core::config::{AccessTarget, Config, Files, LogFormat};
use portico_core::{AccessRecord, Level};

use crate::diagnostics;
use crate::privileges::Credentials;
use crate::syslog::Syslog;
use crate::table::{Ledger, Table, Wall};

/// Where one table's access lines go.
pub struct Output {
    access: Access,
    format: LogFormat,
}

enum Access {
    Off,
    Stderr,
    File { path: PathBuf, w: LineWriter<File> },
    Syslog(Syslog),
}

impl Output {
    /// Opens the access log the configuration names.
    pub fn open(config: &Config) -> io::Result<Output> {
        let access = match &config.log.access {
            AccessTarget::Off => Access::Off,
            AccessTarget::Stderr => Access::Stderr,
            AccessTarget::File(p) => Access::File {
                path: p.clone(),
                w: LineWriter::new(diagnostics::open_append(p)?),
            },
            AccessTarget::Syslog => Access::Syslog(Syslog::open(&config.log.syslog_socket)?),
        };
        Ok(Output {
            access,
            format: config.log.format,
        })
    }

    /// Opens the access log at start, or says what to check.
    fn open_for(plan: &Plan) -> Result<Output, String> {
        Output::open(&plan.config).map_err(|e| {
            let what = match plan.config.log.access {
                AccessTarget::Syslog => format!(
                    "cannot reach the syslog socket {} for the access log: {e}; check that a \
                     syslog daemon is running, or set [log] syslog_socket",
                    plan.config.log.syslog_socket.display()
                ),
                _ => format!("cannot open the access log: {e}"),
            };
            format!("{what}; check [log] in {}", plan.source)
        })
    }

    /// Opens the access log file again at its path (SIGUSR1, after
    /// logrotate moved it); the old file stays in use if the new one cannot
    /// be opened. Other targets have nothing to reopen.
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Access::File { path, w } = &mut self.access {
            let f = diagnostics::open_append(path)?;
            let _ = w.flush();
            *w = LineWriter::new(f);
        }
        Ok(())
    }

    /// The path of the access log file, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.access {
            Access::File { path, .. } => Some(path),
            _ => None,
        }
    }

    pub fn access(&mut self, rec: &AccessRecord) {
        let mut line = match &self.access {
            Access::Off => return,
            _ => rec.format(SystemTime::now(), self.format),
        };
        match &mut self.access {
            Access::Off => {}
            Access::Stderr => {
                line.push('\n');
                let _ = io::stderr().write_all(line.as_bytes());
            }
            Access::File { w, .. } => {
                line.push('\n');
                let _ = w.write_all(line.as_bytes());
            }
            Access::Syslog(s) => {
                if let Err(e) = s.send(crate::syslog::INFO, &line) {
                    log(
                        Level::Error,
                        &format!("cannot send an access line to syslog: {e}; the line was: {line}"),
                    );
                }
            }
        }
    }
}

/// A diagnostic line, through the `log` facade to the process's sink
/// ([`crate::diagnostics`]).
pub fn log(level: Level, message: &str) {
    log::log!(diagnostics::level_of(level), "{message}");
}

/// A line on stdout (the `listening:` lines), flushed at once so that it
/// comes before whatever stderr says next.
pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
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

    #[inline]
    pub fn now(&mut self) -> Wall {
        let secs = SystemTime::now()
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
        Wall {
            unix_secs: secs,
            utc_offset_secs: self.offset,
        }
    }
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::new()
    }
}

/// `--record FILE`: the trace goes to FILE, the actions the core took to
/// FILE.actions (what `portico replay FILE` must print again).
pub struct TraceFiles {
    trace: File,
    actions: File,
}

impl TraceFiles {
    pub fn create(path: &Path) -> io::Result<TraceFiles> {
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

/// The I/O `portico_core::cli::main` needs, for a real process; `run`
/// serves a plan (the runtime's event loops or threads): its exit code, or
/// why it could not serve (logged, then the runtime-failure exit).
pub struct Process {
    pub run: fn(Plan) -> Result<i32, String>,
}

impl Process {
    /// Runs the command line of the binary called `name` with `run`
    /// serving; the process's exit code.
    pub fn main(name: &'static str, run: fn(Plan) -> Result<i32, String>) -> i32 {
        diagnostics::init(Level::Info);
        portico_core::cli::main(name, std::env::args_os(), &mut Process { run })
    }
}

/// The configuration's files, read from the file system.
pub struct Fs;

impl Files for Fs {
    fn read(&mut self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }
    fn now(&self) -> Option<std::time::SystemTime> {
        Some(std::time::SystemTime::now())
    }
}

impl Files for Process {
    fn read(&mut self, path: &Path) -> io::Result<String> {
        Fs.read(path)
    }
    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        Fs.list(dir)
    }
    fn now(&self) -> Option<std::time::SystemTime> {
        Fs.now()
    }
}

impl portico_core::cli::System for Process {
    fn read_bytes(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn read_stdin(&mut self) -> io::Result<String> {
        let mut s = String::new();
        io::Read::read_to_string(&mut io::stdin(), &mut s)?;
        Ok(s)
    }
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        io::Read::read_exact(&mut File::open("/dev/urandom")?, buf)
    }
    fn stdout(&mut self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    fn stderr(&mut self, text: &str) {
        let _ = io::stderr().write_all(text.as_bytes());
    }
    fn log(&mut self, level: Level, message: &str) {
        log(level, message);
    }
    fn euid(&mut self) -> u32 {
        crate::privileges::euid()
    }
    fn wall(&mut self) -> Wall {
        WallClock::new().now()
    }
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<std::net::IpAddr>> {
        use std::net::ToSocketAddrs;
        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
    fn run(&mut self, plan: Plan) -> i32 {
        diagnostics::set_level(plan.log_level);
        // Diagnostics go where the configuration says before anything
        // else is said.
        let served = diagnostics::configure(&plan.config.log).and_then(|()| (self.run)(plan));
        // The quotas' last counts, however the serving ended.
        crate::share::share_at_exit();
        crate::state::save_at_exit();
        served.unwrap_or_else(|e| {
            log(Level::Error, &e);
            portico_core::cli::EXIT_RUNTIME
        })
    }
}

/// A seed for the core's randomness.
pub fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

/// What a runtime starts from: the first table (recording with
/// `--record`, its trace files open), and what SIGHUP needs.
pub struct Start {
    pub table: Table,
    /// The file SIGHUP reads again.
    pub path: Option<PathBuf>,
    /// `--reload-recheck`.
    pub recheck: bool,
    /// Whom to become once every listener is open (looked up already).
    pub credentials: Option<Credentials>,
}

impl Start {
    /// One table (`portico-threaded`).
    pub fn new(plan: Plan) -> Result<Start, String> {
        Ok(Start::workers(plan, 1)?.0)
    }

    /// The tables of `workers` event loops sharing one ledger of the
    /// process-wide limits: worker 0's in the [`Start`] (recording when
    /// asked, which needs `workers` to be 1), then the others'.
    pub fn workers(plan: Plan, workers: usize) -> Result<(Start, Vec<Table>), String> {
        // Before anything listens: a user that does not exist stops the
        // start before any port is taken.
        let credentials = Credentials::for_plan(&plan.privileges).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let ledger = Ledger::new(workers);
        crate::state::load(&ledger, &plan.config)?;
        crate::share::prepare(&ledger, &plan.config)?;
        let mut others = Vec::new();
        for k in 1..workers {
            let out = Output::open_for(&plan)?;
            let config = plan.config.clone();
            others.push(Table::worker(
                config,
                now,
                ledger.clone(),
                k,
                out,
                plan.log_level,
            ));
        }
        let out = Output::open_for(&plan)?;
        if plan.record.is_some() && plan.config.state.redis.is_some() {
            log(
                Level::Warn,
                "the trace does not hold the quota totals other instances share through \
                 [state] redis; its replay decides quotas on this instance's counts only",
            );
        }
        let trace = match &plan.record {
            Some(p) => Some(
                TraceFiles::create(p)
                    .map_err(|e| format!("cannot create the trace {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let table = if workers > 1 {
            Table::worker(plan.config, now, ledger, 0, out, plan.log_level)
        } else {
            Table::first(
                plan.config,
                &plan.config_text,
                now,
                ledger,
                out,
                trace,
                plan.log_level,
            )
        };
        let start = Start {
            table,
            path: plan.path,
            recheck: plan.reload_recheck,
            credentials,
        };
        Ok((start, others))
    }
}

/// Gives up root when the configuration says to (see
/// [`crate::privileges`]): call it once every listener is open and
/// before any other thread is started.
pub fn assume(credentials: Option<&Credentials>) -> Result<(), String> {
    let Some(c) = credentials else {
        return Ok(());
    };
    c.assume().map_err(|e| e.to_string())?;
    log(
        Level::Info,
        &format!(
            "running as user {} and group {}, keeping only CAP_NET_BIND_SERVICE",
            c.user(),
            c.group()
        ),
    );
    Ok(())
}

/// Every listener is open and privileges are given up: tells a service
/// manager (if any) that the process is ready, and starts keeping its
/// status line (connections open in `ledger`'s tables) up to date.
pub fn ready(ledger: Ledger) -> Result<(), String> {
    crate::notify::tell(&portico_core::process::Notice::Ready);
    crate::state::start_saving()?;
    crate::share::start()?;
    crate::notify::start_status(ledger)
}

/// Reads and checks the configuration SIGHUP switches to (with the files
/// it includes); why not (logged) when it does not load or may not be
/// served as the process now runs, and then nothing changes.
pub fn load(path: Option<&Path>) -> Result<(Config, String), String> {
    portico_core::cli::reload(path, &mut Fs)
        .and_then(|(config, text)| {
            match portico_core::process::reload_refusal(&config, crate::privileges::is_root()) {
                Some(why) => Err(format!("{why}; the old configuration stays in force")),
                None => Ok((config, text)),
            }
        })
        .inspect_err(|msg| log(Level::Error, msg))
}
