//! The command line both binaries share, and what it leads to.
//!
//! [`main`] parses the arguments, loads and validates the configuration and
//! answers `--check`, `hash-password`, `completions` and `man`; the I/O it
//! needs (reading files and directories or standard input, random bytes,
//! printing, running the proxy) is done through the [`System`] a runtime
//! passes in, so the decisions stay here.
//!
//! The manual page `portico(8)` and the shell completions are generated
//! from [`Args`] itself (`portico man`, `portico completions SHELL`), so
//! the options are written once.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Config, Files};
use crate::event::Level;
use crate::process::{self, Privileges};

/// Exit code: clean exit.
pub const EXIT_OK: i32 = 0;
/// Exit code: runtime failure.
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code: configuration error.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code of `portico explain` when the request would be denied.
pub const EXIT_DENIED: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    about = "Portico: a LAN gateway proxy (HTTP, SOCKS, mail and news gateways, mapped ports)",
    long_about = "Portico is a gateway proxy for a local network. The machines of the LAN \
reach the Internet through it, protocol by protocol (an HTTP proxy, SOCKS 4/4a/5, Telnet, \
SMTP, POP3, NNTP and FTP gateways), and chosen traffic comes in through mapped TCP and UDP \
ports. It reads one TOML configuration file, described in portico.toml(5); without --config \
it runs on an embedded default that listens on 127.0.0.1 only.\n\n\
portico runs on event loops, portico-threaded on a thread per connection; both take the same \
command line and configuration.",
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
    /// Say whether the rules allow a request, which rule decides it (its
    /// number and FILE:LINE), the parent, rate cap and quotas it would get, and why
    /// each earlier rule does not match. Exit status 0: allowed, 3: denied.
    Explain {
        /// Configuration file (TOML), as for a start.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The service the client connects to.
        #[arg(long, value_name = "NAME")]
        service: String,
        /// The client's address.
        #[arg(long, value_name = "ADDR")]
        client: std::net::IpAddr,
        /// The user the client authenticated as (none: not authenticated).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Where the request goes (default: the service's own destination,
        /// if it has one). A name is resolved when the proxy would resolve
        /// it.
        #[arg(long, value_name = "HOST:PORT")]
        destination: Option<String>,
        /// The local time to decide at (default: now).
        #[arg(long, value_name = "YYYY-MM-DDTHH:MM",
              value_parser = crate::explain::LocalTime::parse)]
        at: Option<crate::explain::LocalTime>,
    },
    /// Print the completion script for SHELL (e.g. `portico completions
    /// bash > /etc/bash_completion.d/portico`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print this program's manual page, portico(8), as roff (`portico man
    /// | man -l -`).
    #[command(hide = true)]
    Man,
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
    /// The configuration as one text, included files merged in (the
    /// flight recorder keeps it).
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

/// The configuration to switch to on SIGHUP: the file `path` read again
/// (with the files it includes), or the embedded default. `Err` is the
/// message to log; the old configuration then stays in force.
pub fn reload(path: Option<&Path>, files: &mut dyn Files) -> Result<(Config, String), String> {
    load(path, files)
        .map(|(config, _, text)| (config, text))
        .map_err(|e| format!("{e}; the old configuration stays in force"))
}

/// The I/O [`main`] needs, provided by a runtime; reading the
/// configuration's files is [`Files`].
pub trait System: Files {
    /// The whole file as bytes (a trace).
    fn read_bytes(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    fn read_stdin(&mut self) -> io::Result<String>;
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()>;
    fn stdout(&mut self, text: &str);
    fn stderr(&mut self, text: &str);
    /// A diagnostic line (the runtime's sink adds the time and level).
    fn log(&mut self, level: Level, message: &str);
    /// The process's effective user id (0: root).
    fn euid(&mut self) -> u32;
    /// The wall-clock time now, with the local zone's offset.
    fn wall(&mut self) -> crate::rules::Wall;
    /// The addresses `host` resolves to, in the resolver's order (as the
    /// proxy would resolve it).
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<std::net::IpAddr>>;
    /// Serves `plan` until shutdown; returns the exit code.
    fn run(&mut self, plan: Plan) -> i32;
}

/// The name the embedded default configuration goes by in messages.
pub const EMBEDDED: &str = "(embedded default)";

/// Loads and validates the configuration named by `path`, with the files
/// it includes (or the embedded default): the configuration, where it came
/// from, and its text as one file. `Err` holds the message for stderr.
pub fn load(
    path: Option<&Path>,
    files: &mut dyn Files,
) -> Result<(Config, String, String), String> {
    match path {
        Some(p) => match config::load(p, files) {
            Ok(l) => Ok((l.config, p.display().to_string(), l.text)),
            Err(e) => Err(e.to_string()),
        },
        None => match config::parse(config::DEFAULT_TOML, EMBEDDED) {
            Ok(c) => Ok((c, EMBEDDED.to_string(), config::DEFAULT_TOML.to_string())),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// The command line of the binary called `name` (`portico`,
/// `portico-threaded`): what `--version`, `--help`, the completions and the
/// manual page call it.
pub fn command(name: &'static str) -> clap::Command {
    Args::command().name(name).bin_name(name)
}

/// The whole command line of the binary called `name`: returns the
/// process exit code.
pub fn main<I, T>(name: &'static str, args: I, system: &mut impl System) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let parsed = command(name)
        .try_get_matches_from(args)
        .and_then(|m| Args::from_arg_matches(&m));
    let args = match parsed {
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
        Some(Command::Completions { shell }) => {
            system.stdout(&completions(name, *shell));
            return EXIT_OK;
        }
        Some(Command::Man) => {
            system.stdout(&manual(name));
            return EXIT_OK;
        }
        Some(Command::Explain { .. }) => return explain(&args, system),
        None => {}
    }
    let (config, source, config_text) = match load(args.config.as_deref(), &mut *system) {
        Ok(c) => c,
        Err(msg) => {
            system.stderr(&format!("{msg}\n"));
            return EXIT_CONFIG;
        }
    };
    let privileges = process::privileges(&config, system.euid());
    if args.check {
        // A real start logs these through the core instead.
        for w in config::warnings(&config) {
            system.stderr(&format!("warning: {w}\n"));
        }
        // What a start by this user would refuse, --check says too.
        if let Err(msg) = &privileges {
            system.stderr(&format!("{msg}\n"));
            return EXIT_RUNTIME;
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
    let privileges = match privileges {
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

/// `portico explain`: the verdict on stdout; exit 0 allowed, 3 denied, 2
/// when the configuration or the question is wrong.
fn explain(args: &Args, system: &mut impl System) -> i32 {
    let Some(Command::Explain {
        config,
        service,
        client,
        user,
        destination,
        at,
    }) = &args.command
    else {
        return EXIT_CONFIG;
    };
    let path = config.as_deref().or(args.config.as_deref());
    let loaded = match path {
        Some(p) => config::load(p, &mut *system).map(|l| (l.config, l.rules_at)),
        None => config::parse(config::DEFAULT_TOML, EMBEDDED)
            .map(|c| (c, config::rule_lines(config::DEFAULT_TOML, EMBEDDED)))
            .map_err(config::LoadError::from),
    };
    let (config, rules_at) = match loaded {
        Ok(l) => l,
        Err(e) => {
            system.stderr(&format!("{e}\n"));
            return EXIT_CONFIG;
        }
    };
    let now = system.wall();
    let question = crate::explain::Question {
        service: service.clone(),
        client: *client,
        user: user.clone(),
        destination: destination.clone(),
        wall: at.map_or(now, |t| t.wall(now.utc_offset_secs)),
    };
    let mut resolve = |host: &str, port: u16| system.resolve(host, port).map_err(|e| e.to_string());
    let answer = crate::explain::explain(&config, &rules_at, &question, &mut resolve);
    match answer {
        Ok(answer) => {
            system.stdout(&answer.text);
            if answer.allowed {
                EXIT_OK
            } else {
                EXIT_DENIED
            }
        }
        Err(e) => {
            system.stderr(&format!("{e}\n"));
            EXIT_CONFIG
        }
    }
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

/// The completion script of `shell` for the binary called `name`.
pub fn completions(name: &'static str, shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(name), name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The manual page of the binary called `name`, section 8, as roff: what
/// clap_mangen makes of [`Args`], its commands, then what the options do
/// not say (the files, signals, exit status, and where to read more).
pub fn manual(name: &'static str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let cmd = command(name);
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("8")
        .date(format!("Portico {version}"))
        .source("Portico")
        .manual("System Administration");
    let mut out = Vec::new();
    let rendered = [
        man.render_title(&mut out),
        man.render_name_section(&mut out),
        man.render_synopsis_section(&mut out),
        man.render_description_section(&mut out),
        man.render_options_section(&mut out),
    ];
    // Writing into a Vec cannot fail; a section that did is left out.
    debug_assert!(rendered.iter().all(|r| r.is_ok()));
    let mut page = String::from_utf8_lossy(&out).into_owned();
    page.push_str(&commands_section(&cmd));
    page.push_str(MANUAL_TAIL);
    page
}

/// The subcommands, from their definitions. (clap_mangen would point at a
/// page per subcommand, and there is one page.)
fn commands_section(cmd: &clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let mut head = format!("\\fB{} {}\\fR", roff(cmd.get_name()), roff(sub.get_name()));
        let mut values = String::new();
        // Its options, as a synopsis: `[--opt VALUE]`, required ones bare.
        for a in sub
            .get_arguments()
            .filter(|a| !a.is_positional() && !a.is_hide_set())
        {
            let Some(long) = a.get_long() else {
                continue;
            };
            if long == "help" {
                continue;
            }
            let value = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| format!(" \\fI{}\\fR", roff(v)))
                .unwrap_or_default();
            let opt = format!("\\fB\\-\\-{}\\fR{value}", roff(long));
            if a.is_required_set() {
                head.push_str(&format!(" {opt}"));
            } else {
                head.push_str(&format!(" [{opt}]"));
            }
        }
        for a in sub.get_positionals() {
            let arg = a.get_id().as_str().to_uppercase();
            head.push_str(&format!(" \\fI{arg}\\fR"));
            let possible: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_string())
                .collect();
            if !possible.is_empty() {
                values.push_str(&format!(" {arg}: {}.", possible.join(", ")));
            }
        }
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let stop = if about.ends_with('.') || values.is_empty() {
            ""
        } else {
            "."
        };
        out.push_str(&format!(
            ".TP\n{head}\n{}\n",
            roff(&format!("{about}{stop}{values}"))
        ));
    }
    out
}

/// `text` as a line of roff text: backslashes and dashes escaped, and no
/// request character at its start.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The sections of portico(8) that are not about options, in roff.
const MANUAL_TAIL: &str = r#".SH FILES
.TP
\fI/etc/portico/portico.toml\fR
The configuration the packaged service (\fIportico.service\fR) runs on; the
Debian package installs it equal to the embedded default. Its format is in
\fBportico.toml\fR(5).
.TP
\fI/etc/portico/conf.d/\fR
Where files named by \fBinclude\fR usually go.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Read the configuration again (with the files it includes): new listeners
open, removed ones close, new rules apply to new connections. A file that does
not load is reported and the old configuration stays in force.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, let connections finish for \fBshutdown_grace\fR, close the
rest and exit.
.SH EXIT STATUS
.TP
\fB0\fR
Clean exit (and \fB\-\-check\fR of a good file).
.TP
\fB1\fR
Runtime failure, such as a port that cannot be opened.
.TP
\fB2\fR
Configuration error, printed as \fIFILE\fR:\fILINE\fR:\fICOLUMN\fR: \fImessage\fR.
.TP
\fB3\fR
\fBexplain\fR: the request would be denied.
.SH SEE ALSO
\fBportico.toml\fR(5), \fBsystemctl\fR(1)
"#;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A process with files in memory, recording what it prints and the
    /// plan it was asked to run.
    #[derive(Default)]
    struct Fake {
        files: HashMap<PathBuf, String>,
        out: String,
        err: String,
        plan: Option<Plan>,
        euid: u32,
    }

    impl Files for Fake {
        fn read(&mut self, path: &Path) -> io::Result<String> {
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        }
        fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
            Ok(self
                .files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                .collect())
        }
    }

    impl System for Fake {
        fn read_bytes(&mut self, _: &Path) -> io::Result<Vec<u8>> {
            Err(io::Error::new(io::ErrorKind::NotFound, "no trace"))
        }
        fn read_stdin(&mut self) -> io::Result<String> {
            Ok(String::new())
        }
        fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
            buf.fill(7);
            Ok(())
        }
        fn stdout(&mut self, text: &str) {
            self.out.push_str(text);
        }
        fn stderr(&mut self, text: &str) {
            self.err.push_str(text);
        }
        fn run(&mut self, plan: Plan) -> i32 {
            self.plan = Some(plan);
            EXIT_OK
        }
        fn log(&mut self, level: Level, message: &str) {
            self.err.push_str(&format!("{}: {message}\n", level.name()));
        }
        fn euid(&mut self) -> u32 {
            self.euid
        }
        fn wall(&mut self) -> crate::rules::Wall {
            // Monday 2026-12-07 12:00 UTC.
            crate::rules::Wall::utc(1_796_644_800)
        }
        fn resolve(&mut self, _: &str, _: u16) -> io::Result<Vec<std::net::IpAddr>> {
            Err(io::Error::new(io::ErrorKind::NotFound, "no names here"))
        }
    }

    #[test]
    fn version_and_help_name_the_binary() {
        for name in ["portico", "portico-threaded"] {
            let mut sys = Fake::default();
            assert_eq!(main(name, [name, "--version"], &mut sys), EXIT_OK);
            assert_eq!(sys.out, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
            let mut sys = Fake::default();
            assert_eq!(main(name, ["anything", "--help"], &mut sys), EXIT_OK);
            assert!(sys.out.contains(&format!("Usage: {name} ")), "{}", sys.out);
        }
    }

    #[test]
    fn completions_and_manual_come_from_the_arguments() {
        let mut sys = Fake::default();
        assert_eq!(
            main("portico", ["portico", "completions", "bash"], &mut sys),
            EXIT_OK
        );
        for option in [
            "--config",
            "--check",
            "--log-level",
            "--reload-recheck",
            "--record",
        ] {
            assert!(sys.out.contains(option), "bash completion lacks {option}");
        }
        let mut sys = Fake::default();
        assert_eq!(main("portico", ["portico", "man"], &mut sys), EXIT_OK);
        assert!(
            sys.out.starts_with(".ie") || sys.out.starts_with(".TH"),
            "{}",
            sys.out
        );
        assert!(sys.out.contains(".TH PORTICO 8"), "{}", sys.out);
        for text in [
            "\\-\\-config",
            "\\-\\-reload\\-recheck",
            "hash\\-password",
            ".SH COMMANDS",
        ] {
            assert!(
                sys.out.contains(text),
                "portico(8) lacks {text}:\n{}",
                sys.out
            );
        }
        // `man` is not offered to users: neither in --help nor completed.
        let mut sys = Fake::default();
        main("portico", ["portico", "--help"], &mut sys);
        assert!(!sys.out.contains("\n  man "), "{}", sys.out);
    }

    #[test]
    fn explain_answers_with_its_exit_status() {
        let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nport = 8080\n\
                    [[rule]]\naction = \"allow\"\nhours = \"08:00-18:00\"\n";
        let run = |args: &[&str]| {
            let mut sys = Fake::default();
            sys.files.insert("/p.toml".into(), text.into());
            let mut all = vec!["portico"];
            all.extend_from_slice(args);
            let code = main("portico", all, &mut sys);
            (code, sys.out, sys.err)
        };
        let q = ["--service", "web", "--client", "192.0.2.1"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            let mut v = vec!["explain", "--config", "/p.toml"];
            v.extend_from_slice(&q);
            v.extend_from_slice(extra);
            v
        };
        // The Fake's clock says Monday 12:00 UTC: inside the hours.
        let (code, out, _) = run(&with(&[]));
        assert_eq!(code, EXIT_OK, "{out}");
        assert!(
            out.starts_with("verdict: allowed\nrule: 1 at /p.toml:5\n"),
            "{out}"
        );
        let (code, out, _) = run(&with(&["--at", "2026-12-07T19:00"]));
        assert_eq!(code, EXIT_DENIED, "{out}");
        assert!(
            out.ends_with(
                "rule 1 at /p.toml:5: no match: allow rule: 19:00 is outside its hours \
                 08:00-18:00\n"
            ),
            "{out}"
        );
        // --config before the command works too.
        let mut before = vec!["--config", "/p.toml", "explain"];
        before.extend_from_slice(&q);
        before.extend_from_slice(&["--at", "2026-12-07T19:00"]);
        assert_eq!(run(&before).0, EXIT_DENIED);
        let (code, _, err) = run(&[
            "explain",
            "--config",
            "/nope.toml",
            "--service",
            "web",
            "--client",
            "::1",
        ]);
        assert_eq!(code, EXIT_CONFIG);
        assert!(err.contains("/nope.toml"), "{err}");
        let (code, _, err) = run(&with(&["--at", "tomorrow"]));
        assert_eq!(code, EXIT_CONFIG);
        assert!(err.contains("like 2026-12-07T09:30"), "{err}");
    }

    #[test]
    fn check_as_root_refuses_what_a_start_refuses() {
        let text = "[network]\ninternal = [\"127.0.0.1\"]\nexternal = [\"192.0.2.1\"]\n\
                    [[service]]\nname = \"in\"\nkind = \"mapped\"\nside = \"external\"\n\
                    port = 2222\ndestination = \"127.0.0.1:22\"\n";
        let args = ["portico", "--config", "/p.toml", "--check"];
        let mut sys = Fake::default();
        sys.files.insert("/p.toml".into(), text.into());
        assert_eq!(main("portico", args, &mut sys), EXIT_RUNTIME);
        assert!(sys.err.contains("[process] user"), "{}", sys.err);
        assert!(!sys.out.contains("configuration ok"), "{}", sys.out);
        // Another user would run it as it is.
        let mut sys = Fake {
            euid: 1000,
            ..Fake::default()
        };
        sys.files.insert("/p.toml".into(), text.into());
        assert_eq!(main("portico", args, &mut sys), EXIT_OK, "{}", sys.err);
        assert!(sys.out.ends_with("configuration ok\n"), "{}", sys.out);
    }

    #[test]
    fn the_configuration_is_loaded_with_its_includes() {
        let svc =
            |n: &str, p: u16| format!("[[service]]\nname = \"{n}\"\nkind = \"http\"\nport = {p}\n");
        let mut sys = Fake::default();
        let main_text = format!("include = [\"conf.d/*.toml\"]\n{}", svc("main", 8080));
        sys.files.insert("/etc/p/portico.toml".into(), main_text);
        sys.files
            .insert("/etc/p/conf.d/a.toml".into(), svc("a", 8081));
        let code = main(
            "portico",
            ["portico", "--config", "/etc/p/portico.toml"],
            &mut sys,
        );
        assert_eq!(code, EXIT_OK, "{}", sys.err);
        let plan = sys.plan.take().expect("a plan to run");
        let names: Vec<&str> = plan
            .config
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["a", "main"]);
        assert!(
            !plan.config_text.contains("include"),
            "{}",
            plan.config_text
        );

        // SIGHUP reads the included file again, the same way.
        sys.files
            .insert("/etc/p/conf.d/a.toml".into(), svc("b", 8082));
        let (config, _) = reload(Some(Path::new("/etc/p/portico.toml")), &mut sys)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.services[0].name, "b");
        sys.files.insert(
            "/etc/p/conf.d/a.toml".into(),
            "[[service]]\nname = 5\n".into(),
        );
        let e = reload(Some(Path::new("/etc/p/portico.toml")), &mut sys).expect_err("bad file");
        assert!(e.starts_with("/etc/p/conf.d/a.toml:2:8: "), "{e}");
        assert!(e.ends_with("the old configuration stays in force"), "{e}");
    }
}
