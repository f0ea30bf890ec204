//! The process plumbing both runtimes share (this file is compiled into
//! `portico-threaded` too): where the core's log, access and `Say` lines go,
//! the command line's I/O ([`Process`]), the wall clock the rules need, and
//! the flight recorder's files. Nothing here decides anything.

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

/// The I/O `portico_core::cli::main` needs, for a real process; `run`
/// serves a plan (the runtime's event loop or threads).
pub struct Process {
    pub run: fn(portico_core::cli::Plan) -> i32,
}

impl portico_core::cli::Host for Process {
    fn read_file(&mut self, path: &std::path::Path) -> io::Result<String> {
        std::fs::read_to_string(path)
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
    fn run(&mut self, plan: portico_core::cli::Plan) -> i32 {
        (self.run)(plan)
    }
}

/// A seed for the core's randomness.
pub fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

/// What both runtimes start from: the table (recording when `--record`),
/// the access log, and the trace files.
pub struct Start {
    pub proxy: portico_core::Recorded,
    pub out: Output,
    pub trace: Option<TraceFiles>,
    /// The file SIGHUP reads again, and `--reload-recheck`.
    pub path: Option<std::path::PathBuf>,
    pub recheck: bool,
}

/// Another worker's table and access log (`portico` with several
/// workers; worker 0 is the [`Start`]).
#[allow(dead_code)] // portico-threaded runs one table
pub struct Worker {
    pub proxy: portico_core::Recorded,
    pub out: Output,
}

impl Start {
    #[allow(dead_code)] // portico-threaded's; portico starts with `workers`
    pub fn new(plan: portico_core::cli::Plan) -> Result<Start, String> {
        Ok(Start::workers(plan, 1)?.0)
    }

    /// The start of `workers` event loops sharing one ledger: worker 0's
    /// table (recording when asked, which needs `workers` to be 1) and the
    /// others'.
    pub fn workers(
        plan: portico_core::cli::Plan,
        workers: usize,
    ) -> Result<(Start, Vec<Worker>), String> {
        let mut others = Vec::new();
        let ledger = portico_core::ledger::Ledger::new(workers);
        let now = std::time::Instant::now();
        for k in 1..workers {
            let mut proxy =
                portico_core::Recorded::worker(plan.config.clone(), seed(), now, ledger.clone(), k);
            proxy.set_log_level(plan.log_level);
            let out = Output::open(&plan.config).map_err(|e| {
                format!(
                    "cannot open the access log: {e}; check [log] access in {}",
                    plan.source
                )
            })?;
            others.push(Worker { proxy, out });
        }
        let start = Start::first(plan, ledger)?;
        Ok((start, others))
    }

    fn first(
        plan: portico_core::cli::Plan,
        ledger: portico_core::ledger::Ledger,
    ) -> Result<Start, String> {
        let out = Output::open(&plan.config).map_err(|e| {
            format!(
                "cannot open the access log: {e}; check [log] access in {}",
                plan.source
            )
        })?;
        let trace = match &plan.record {
            Some(p) => Some(
                TraceFiles::create(p)
                    .map_err(|e| format!("cannot create the trace {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let now = std::time::Instant::now();
        let mut proxy = if ledger.workers() > 1 {
            portico_core::Recorded::worker(plan.config, seed(), now, ledger, 0)
        } else {
            portico_core::Recorded::new(
                plan.config,
                &plan.config_text,
                seed(),
                now,
                trace.is_some(),
            )
        };
        proxy.set_log_level(plan.log_level);
        Ok(Start {
            proxy,
            out,
            trace,
            path: plan.path,
            recheck: plan.reload_recheck,
        })
    }
}

/// SIGHUP: reads the configuration again and applies it to `proxy`,
/// switching `out` to the new access log. A file that does not load is
/// logged and changes nothing.
#[allow(dead_code)] // portico-threaded's; portico's workers load, then apply
pub fn reload(
    path: Option<&std::path::Path>,
    recheck: bool,
    proxy: &mut portico_core::Recorded,
    out: &mut Output,
) {
    if let Some((config, text)) = load(path) {
        apply(config, &text, recheck, 0, proxy, out);
    }
}

/// Reads and checks the configuration SIGHUP switches to; `None` (logged)
/// when it does not load.
pub fn load(path: Option<&std::path::Path>) -> Option<(Config, String)> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p),
        None => Ok(String::new()),
    };
    match portico_core::cli::reload(path, text) {
        Ok(loaded) => Some(loaded),
        Err(msg) => {
            Output::log(Level::Error, &msg);
            None
        }
    }
}

/// Applies a loaded configuration to one worker's table and access log;
/// returns how many connections the table closed (see
/// `Proxy::reconfigure_worker` for `closed_elsewhere`).
pub fn apply(
    config: Config,
    text: &str,
    recheck: bool,
    closed_elsewhere: usize,
    proxy: &mut portico_core::Recorded,
    out: &mut Output,
) -> usize {
    match Output::open(&config) {
        Ok(o) => *out = o,
        Err(e) => Output::log(
            Level::Error,
            &format!("cannot open the new access log: {e}; keeping the old one"),
        ),
    }
    proxy.reconfigure_worker(
        config,
        text,
        recheck,
        closed_elsewhere,
        std::time::Instant::now(),
    )
}
