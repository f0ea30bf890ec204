//! The command line both binaries share, and what it leads to.
//!
//! [`main`] parses the arguments, loads and validates the configuration and
//! answers `--check` and `hash-password`; the I/O it needs (reading a file or
//! standard input, random bytes, printing, running the proxy) is done through
//! the [`System`] a runtime passes in, so the decisions stay here.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::event::Level;
use crate::process::{self, Privileges};

/// Exit code: clean exit.
pub const EXIT_OK: i32 = 0;
/// Exit code: runtime failure.
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code: configuration error.
pub const EXIT_CONFIG: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    about = "Portico: a LAN gateway proxy (HTTP, SOCKS, mail and news gateways, mapped ports)",
    version
)]
pub struct Args {
    /// Configuration file (TOML). Without it, the embedded default is used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Parse and validate the configuration, print what would listen, and exit.
    #[arg(long)]
    pub check: bool,
    /// Diagnostics at this level and above go to stderr.
    #[arg(long, value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug"])]
    pub log_level: String,
    /// On SIGHUP, also check connections in flight against the new rules
    /// and close those they deny.
    #[arg(long)]
    pub reload_recheck: bool,
    /// Write every event handed to the core, with its time, to FILE (and the
    /// actions it took to FILE.actions); `portico replay FILE` replays it.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a password on standard input and print its argon2id PHC string
    /// for a `[[user]]` entry.
    HashPassword,
    /// Run the core over a trace written with --record and print the
    /// actions it takes (the same as the recorded FILE.actions).
    Replay {
        /// The trace file.
        trace: PathBuf,
    },
}

/// What a runtime needs to start serving.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    pub log_level: Level,
    /// Where the configuration came from (a path, or the embedded default).
    pub source: String,
    /// The file to read again on SIGHUP (none: the embedded default).
    pub path: Option<PathBuf>,
    pub reload_recheck: bool,
    /// The configuration's text (the flight recorder keeps it).
    pub config_text: String,
    /// `--record FILE`.
    pub record: Option<PathBuf>,
    /// Whom to run as once every listener is open.
    pub privileges: Privileges,
}

impl Plan {
    /// How many event loops to run on a machine with `cores` cores:
    /// `[runtime] workers`, else one per core; one when recording (a trace
    /// is one table's inputs in order).
    pub fn workers(&self, cores: usize) -> usize {
        if self.record.is_some() {
            return 1;
        }
        self.config.runtime.workers.unwrap_or(cores).max(1)
    }
}

/// The configuration to switch to on SIGHUP, from the file's new text (as
/// the runtime read it). `Err` is the message to log; the old
/// configuration then stays in force.
pub fn reload(path: Option<&Path>, text: io::Result<String>) -> Result<(Config, String), String> {
    let (text, name) = match path {
        Some(p) => match text {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                return Err(format!(
                "{}: cannot read the configuration file: {e}; the old configuration stays in force",
                p.display()
            ))
            }
        },
        None => (config::DEFAULT_TOML.to_string(), EMBEDDED.to_string()),
    };
    config::parse(&text, &name)
        .map(|c| (c, text.clone()))
        .map_err(|e| format!("{e}; the old configuration stays in force"))
}

/// The I/O [`main`] needs, provided by a runtime.
pub trait System {
    fn read_file(&mut self, path: &Path) -> io::Result<String>;
    /// The whole file as bytes (a trace).
    fn read_bytes(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn read_stdin(&mut self) -> io::Result<String>;
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()>;
    fn stdout(&mut self, text: &str);
    fn stderr(&mut self, text: &str);
    /// A diagnostic line (the runtime's sink adds the time and level).
    fn log(&mut self, level: Level, message: &str);
    /// The process's effective user id (0: root).
    fn euid(&mut self) -> u32;
    /// Serves `plan` until shutdown; returns the exit code.
    fn run(&mut self, plan: Plan) -> i32;
}

/// The name the embedded default configuration goes by in messages.
pub const EMBEDDED: &str = "(embedded default)";

/// Loads and validates the configuration named by `path` (or the embedded
/// default). `Err` holds the message for stderr.
pub fn load(
    path: Option<&Path>,
    system: &mut impl System,
) -> Result<(Config, String, String), String> {
    let (text, name) = match path {
        Some(p) => {
            let name = p.display().to_string();
            match system.read_file(p) {
                Ok(t) => (t, name),
                Err(e) => return Err(format!("{name}: cannot read the configuration file: {e}")),
            }
        }
        None => (config::DEFAULT_TOML.to_string(), EMBEDDED.to_string()),
    };
    match config::parse(&text, &name) {
        Ok(c) => Ok((c, name, text)),
        Err(e) => Err(e.to_string()),
    }
}

/// The whole command line: returns the process exit code.
pub fn main<I, T>(args: I, system: &mut impl System) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                system.stderr(&text);
                return EXIT_CONFIG;
            }
            system.stdout(&text);
            return EXIT_OK;
        }
    };
    match &args.command {
        Some(Command::HashPassword) => return hash_password(system),
        Some(Command::Replay { trace }) => return replay(trace, system),
        None => {}
    }
    let (config, source, config_text) = match load(args.config.as_deref(), system) {
        Ok(c) => c,
        Err(msg) => {
            system.stderr(&format!("{msg}\n"));
            return EXIT_CONFIG;
        }
    };
    if args.check {
        // A real start logs these through the core instead.
        for w in config::warnings(&config) {
            system.stderr(&format!("warning: {w}\n"));
        }
        let mut out = String::new();
        for line in crate::table::listening_lines(&config) {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str("configuration ok\n");
        system.stdout(&out);
        return EXIT_OK;
    }
    let privileges = match process::privileges(&config, system.euid()) {
        Ok(p) => p,
        Err(msg) => {
            system.log(Level::Error, &msg);
            return EXIT_RUNTIME;
        }
    };
    let log_level = Level::parse(&args.log_level).unwrap_or(Level::Info);
    system.run(Plan {
        privileges,
        config,
        log_level,
        source,
        path: args.config.clone(),
        reload_recheck: args.reload_recheck,
        config_text,
        record: args.record.clone(),
    })
}

fn replay(trace: &Path, system: &mut impl System) -> i32 {
    let bytes = match system.read_bytes(trace) {
        Ok(b) => b,
        Err(e) => {
            system.stderr(&format!(
                "{}: cannot read the trace: {e}\n",
                trace.display()
            ));
            return EXIT_RUNTIME;
        }
    };
    let mut out = String::new();
    let r = crate::trace::replay(&bytes, &mut |line| {
        out.push_str(&line);
        out.push('\n');
    });
    system.stdout(&out);
    match r {
        Ok(()) => EXIT_OK,
        Err(e) => {
            system.stderr(&format!("{}: {e}\n", trace.display()));
            EXIT_RUNTIME
        }
    }
}

fn hash_password(system: &mut impl System) -> i32 {
    let input = match system.read_stdin() {
        Ok(s) => s,
        Err(e) => {
            system.stderr(&format!(
                "cannot read the password from standard input: {e}\n"
            ));
            return EXIT_RUNTIME;
        }
    };
    // One line: the password is what precedes the first line break.
    let password = input.split(['\r', '\n']).next().unwrap_or("");
    let mut salt = [0u8; 16];
    if let Err(e) = system.random(&mut salt) {
        system.stderr(&format!("cannot get random bytes for the salt: {e}\n"));
        return EXIT_RUNTIME;
    }
    match crate::auth::hash_password(password, &salt) {
        Ok(h) => {
            system.stdout(&format!("{h}\n"));
            EXIT_OK
        }
        Err(e) => {
            system.stderr(&format!("{e}\n"));
            EXIT_RUNTIME
        }
    }
}
