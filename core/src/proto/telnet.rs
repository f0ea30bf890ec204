//! The Telnet gateway (`docs/configuration.md`, "telnet").
//!
//! With no `destination` the gateway is interactive: it greets
//! `portico telnet gateway`, prompts `portico> ` and reads one command line
//! at a time: `connect HOST [PORT]` (also `c`, `open`), a bare
//! `HOST [PORT]`, `HOST:PORT` or `[V6]:PORT` (port 23 by default), `help`
//! (also `?`), or `quit` (also `exit`). With a `destination` it connects
//! straight there and says nothing of its own. With `auth` on it first asks
//! `login: ` and `password: ` (in both modes).
//!
//! # States and exits
//!
//! ```text
//! start ─auth──────────────► Login ─line─► Password ─line─► Checking ─verdict─┬─wrong─► "login incorrect", close
//!   │                         (empty line: ask again)                          ├─right, destination─► Connect(destination)
//!   │                                                                          └─right─► Command
//!   ├─destination (no auth)─► Connect(destination)
//!   └─otherwise─► greeting, prompt ─► Command
//! Command ─line─┬─empty─────────────► prompt again
//!               ├─help | ?──────────► the command list, prompt again
//!               ├─quit | exit───────► "goodbye", close
//!               ├─connect … | HOST …► Connect(HOST:PORT)
//!               └─anything invalid──► one line saying why, prompt again
//! any line state ─line over 1 KiB──────────► "line too long", close
//!                ─more than MAX_LINES lines─► "too many commands", close
//! Connect ─connected─► ("connected to HOST:PORT" when interactive) relay untouched
//!         └─failed──► "access denied" | "cannot connect to HOST:PORT: REASON",
//!                     then prompt again ─► Command (interactive) | close (destination)
//! refused at accept ─► "access denied" | "too many connections, try again later", close
//! ```
//!
//! # Bytes of a line
//!
//! A line ends at CR LF, CR NUL or a bare LF. A CR followed by any other
//! byte also ends it, and that byte begins the next line; so a CR that is
//! the last byte received so far waits for the next one (RFC 854 has every
//! CR followed by LF or NUL). Backspace (0x08) and DEL (0x7F) erase the last
//! character, as do the Telnet commands EC (erase character) and EL (erase
//! line). Other NULs are ignored.
//!
//! Telnet commands from the client are never part of a line: `IAC DO x` is
//! answered `IAC WONT x` and `IAC WILL x` is answered `IAC DONT x` (each
//! option answered at most once per direction, so what a client can make
//! the gateway say is bounded); `IAC DONT x` and `IAC WONT x` need no
//! answer; subnegotiations `IAC SB … IAC SE` are skipped; other two-byte
//! commands are ignored. `IAC IAC` is a literal 0xFF, which no command or
//! host name contains, so such a line is refused as invalid (a password may
//! hold one).
//!
//! # Decisions
//!
//! - Password: the gateway says `IAC WILL ECHO` before `password: ` so the
//!   client stops echoing locally (the gateway echoes nothing, so the
//!   password is not shown), and `IAC WONT ECHO` after the password line.
//!   The client's `DO ECHO` answer to that offer is taken silently.
//! - A wrong login or password closes the connection after
//!   `login incorrect` (no retry: each try costs a connection and a
//!   password check, which keeps guessing slow).
//! - With `auth` and a `destination`, the login comes first, then the
//!   connect, with no greeting or prompt of the gateway's own.
//! - `connected to HOST:PORT` is said only in interactive mode; with a
//!   `destination` the client sees the server's bytes alone.
//! - A destination that is denied or cannot be reached is said
//!   (`access denied`, `cannot connect to HOST:PORT: REASON`) and, in
//!   interactive mode, the gateway prompts again, as a user at a terminal
//!   expects ([`Protocol::asks_again`]; the table returns the session to
//!   its handshake). Lines typed meanwhile are read as the next commands,
//!   and [`MAX_LINES`] still bounds the tries. With a `destination` the
//!   connection closes: there is nothing else to try.
//! - The lines a client may send before connecting are bounded
//!   ([`MAX_LINES`]), so that a client that never reads cannot make the
//!   gateway queue replies without end.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::simple::destination_target;
use super::{Failure, Next, Outcome, Protocol, Scope, Target};

/// The longest command line (after editing), in bytes; one byte more
/// closes the connection.
pub const MAX_LINE: usize = 1024;
/// Lines (commands, empty lines, login and password) answered before the
/// connection either connects or closes.
pub const MAX_LINES: usize = 64;
/// The port when a command names none.
pub const DEFAULT_PORT: u16 = 23;

pub const GREETING: &str = "portico telnet gateway\r\n";
pub const PROMPT: &str = "portico> ";
pub const HELP: &str = "commands:\r\n\
    \x20 connect HOST [PORT]  connect to HOST, port 23 unless given (also: c, open)\r\n\
    \x20 HOST [PORT]          the same; also HOST:PORT and [IPv6]:PORT\r\n\
    \x20 help                 this list (also: ?)\r\n\
    \x20 quit                 close the connection (also: exit)\r\n";

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const EL: u8 = 248;
const EC: u8 = 247;
const SE: u8 = 240;
const ECHO: u8 = 1;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `start`.
    #[default]
    Start,
    Login,
    Password,
    /// Waiting for the verdict on the login; then to `after_login`, or
    /// the prompt.
    Checking,
    Command,
    /// Waiting for the connect.
    Connecting,
    Done,
}

/// Where the byte reader is within Telnet's framing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Esc {
    #[default]
    Data,
    /// A CR ended the line; the next byte (LF, NUL or other) decides.
    Cr,
    Iac,
    /// `IAC DO|DONT|WILL|WONT`, waiting for the option.
    Opt(u8),
    Sb,
    SbIac,
}

/// The gateway's ECHO option, which it offers only for the password.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Echo {
    #[default]
    Off,
    /// `WILL ECHO` sent, no answer yet.
    Offered,
    On,
}

#[derive(Debug, Default)]
pub struct Telnet {
    phase: Phase,
    esc: Esc,
    line: Vec<u8>,
    lines: usize,
    /// The name given at `login: `.
    login: Vec<u8>,
    /// Where a login being checked goes once it is right (the service's
    /// destination), if anywhere.
    after_login: Option<Target>,
    user: Option<String>,
    target: Option<Target>,
    interactive: bool,
    echo: Echo,
    /// Options already refused: [DO answered WONT, WILL answered DONT].
    refused: [[u64; 4]; 2],
}

/// What one byte did.
enum Byte {
    /// Nothing to act on yet.
    Held,
    /// The line ended with this byte.
    Line,
    /// The line ended before this byte, which is not consumed.
    LineBefore,
    /// The line grew past [`MAX_LINE`].
    TooLong,
}

/// A command line, understood.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Empty,
    Help,
    Quit,
    Connect(Target),
    /// Invalid: the line to say.
    Error(&'static str),
}

impl Telnet {
    /// The step for a finished line.
    fn line_done(&mut self, reply: &mut Vec<u8>, scope: &mut Scope) -> Next {
        let line = std::mem::take(&mut self.line);
        self.lines += 1;
        if self.lines > MAX_LINES {
            self.phase = Phase::Done;
            reply.extend_from_slice(b"too many commands\r\n");
            return Next::Close(Outcome::BadRequest);
        }
        match self.phase {
            Phase::Login => {
                let name = trim(&line);
                if name.is_empty() {
                    reply.extend_from_slice(b"login: ");
                    return Next::Wait;
                }
                self.login = name.to_vec();
                self.phase = Phase::Password;
                if self.echo == Echo::Off {
                    reply.extend_from_slice(&[IAC, WILL, ECHO]);
                    self.echo = Echo::Offered;
                }
                reply.extend_from_slice(b"password: ");
                Next::Wait
            }
            Phase::Password => {
                if self.echo != Echo::Off {
                    reply.extend_from_slice(&[IAC, WONT, ECHO]);
                    self.echo = Echo::Off;
                }
                // The client echoed nothing, not even the end of the line.
                reply.extend_from_slice(b"\r\n");
                // The name stays in `login` until the verdict says it is
                // a user's.
                self.after_login = scope.service.destination.as_ref().map(destination_target);
                self.phase = Phase::Checking;
                Next::Authenticate {
                    user: self.login.clone(),
                    password: crate::auth::Secret(line),
                }
            }
            Phase::Command => match parse_command(&line) {
                Command::Empty => {
                    reply.extend_from_slice(PROMPT.as_bytes());
                    Next::Wait
                }
                Command::Help => {
                    reply.extend_from_slice(HELP.as_bytes());
                    reply.extend_from_slice(PROMPT.as_bytes());
                    Next::Wait
                }
                Command::Quit => {
                    self.phase = Phase::Done;
                    reply.extend_from_slice(b"goodbye\r\n");
                    Next::Close(Outcome::Quit)
                }
                Command::Error(why) => {
                    reply.extend_from_slice(why.as_bytes());
                    reply.extend_from_slice(b"\r\n");
                    reply.extend_from_slice(PROMPT.as_bytes());
                    Next::Wait
                }
                Command::Connect(t) => self.connect(t),
            },
            Phase::Start | Phase::Checking | Phase::Connecting | Phase::Done => Next::Wait,
        }
    }

    fn connect(&mut self, target: Target) -> Next {
        self.phase = Phase::Connecting;
        self.target = Some(target.clone());
        Next::Connect {
            target,
            user: self.user.clone(),
        }
    }

    /// Feeds one byte through Telnet's framing and the line editor.
    fn byte(&mut self, b: u8, reply: &mut Vec<u8>) -> Byte {
        match self.esc {
            Esc::Data => match b {
                IAC => self.esc = Esc::Iac,
                b'\r' => self.esc = Esc::Cr,
                b'\n' => return Byte::Line,
                0x08 | 0x7f => {
                    self.line.pop();
                }
                0 => {}
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Byte::TooLong;
                    }
                    self.line.push(b);
                }
            },
            Esc::Cr => {
                self.esc = Esc::Data;
                return match b {
                    b'\n' | 0 => Byte::Line,
                    _ => Byte::LineBefore,
                };
            }
            Esc::Iac => {
                self.esc = Esc::Data;
                match b {
                    IAC => {
                        if self.line.len() >= MAX_LINE {
                            return Byte::TooLong;
                        }
                        self.line.push(IAC);
                    }
                    DO | DONT | WILL | WONT => self.esc = Esc::Opt(b),
                    SB => self.esc = Esc::Sb,
                    EC => {
                        self.line.pop();
                    }
                    EL => self.line.clear(),
                    // NOP, DM, BRK, IP, AO, AYT, GA, a stray SE.
                    _ => {}
                }
            }
            Esc::Opt(cmd) => {
                self.esc = Esc::Data;
                self.negotiate(cmd, b, reply);
            }
            Esc::Sb => {
                if b == IAC {
                    self.esc = Esc::SbIac;
                }
            }
            Esc::SbIac => {
                self.esc = if b == SE { Esc::Data } else { Esc::Sb };
            }
        }
        Byte::Held
    }

    /// Answers the client's `IAC cmd opt`.
    fn negotiate(&mut self, cmd: u8, opt: u8, reply: &mut Vec<u8>) {
        match (cmd, opt) {
            // The answer to the gateway's own offer (or a repeat of it).
            (DO, ECHO) if self.echo != Echo::Off => self.echo = Echo::On,
            (DONT, ECHO) if self.echo == Echo::On => {
                self.echo = Echo::Off;
                reply.extend_from_slice(&[IAC, WONT, ECHO]);
            }
            (DONT, ECHO) => self.echo = Echo::Off,
            (DO, _) => self.refuse(0, WONT, opt, reply),
            (WILL, _) => self.refuse(1, DONT, opt, reply),
            // DONT and WONT: the option stays off, nothing to say.
            _ => {}
        }
    }

    fn refuse(&mut self, which: usize, answer: u8, opt: u8, reply: &mut Vec<u8>) {
        let (word, bit) = (opt as usize / 64, 1u64 << (opt % 64));
        if self.refused[which][word] & bit == 0 {
            self.refused[which][word] |= bit;
            reply.extend_from_slice(&[IAC, answer, opt]);
        }
    }
}

impl Protocol for Telnet {
    fn start(&mut self, reply: &mut Vec<u8>, scope: &mut Scope) -> Next {
        let service = scope.service;
        self.interactive = service.destination.is_none();
        if service.auth {
            if self.interactive {
                reply.extend_from_slice(GREETING.as_bytes());
            }
            reply.extend_from_slice(b"login: ");
            self.phase = Phase::Login;
            return Next::Wait;
        }
        match &service.destination {
            Some(d) => self.connect(destination_target(d)),
            None => {
                reply.extend_from_slice(GREETING.as_bytes());
                reply.extend_from_slice(PROMPT.as_bytes());
                self.phase = Phase::Command;
                Next::Wait
            }
        }
    }

    fn input(&mut self, input: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        if !matches!(self.phase, Phase::Login | Phase::Password | Phase::Command) {
            return (0, Next::Wait);
        }
        let mut used = 0;
        while used < input.len() {
            let b = input[used];
            used += 1;
            let ended = match self.byte(b, reply) {
                Byte::Held => continue,
                Byte::Line => true,
                Byte::LineBefore => {
                    used -= 1;
                    true
                }
                Byte::TooLong => false,
            };
            if !ended {
                self.phase = Phase::Done;
                reply.extend_from_slice(b"line too long\r\n");
                return (used, Next::Close(Outcome::BadRequest));
            }
            match self.line_done(reply, scope) {
                Next::Wait => {}
                step => return (used, step),
            }
        }
        (used, Next::Wait)
    }

    fn checked(&mut self, verdict: crate::auth::Verdict, reply: &mut Vec<u8>) -> Next {
        if self.phase != Phase::Checking {
            return Next::Wait;
        }
        let name = std::mem::take(&mut self.login);
        if verdict != crate::auth::Verdict::Ok {
            self.phase = Phase::Done;
            // Throttled: the same words, the cause in the log.
            reply.extend_from_slice(b"login incorrect\r\n");
            return Next::Close(match verdict {
                crate::auth::Verdict::Throttled(_) => Outcome::Throttled,
                _ => Outcome::AuthFailed,
            });
        }
        self.user = String::from_utf8(name).ok();
        match self.after_login.take() {
            Some(target) => self.connect(target),
            None => {
                self.phase = Phase::Command;
                reply.extend_from_slice(PROMPT.as_bytes());
                Next::Wait
            }
        }
    }

    fn connected(&mut self, _: SocketAddr, reply: &mut Vec<u8>, _: &mut Vec<u8>) -> Next {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Done;
            if self.interactive {
                if let Some(t) = &self.target {
                    reply.extend_from_slice(format!("connected to {t}\r\n").as_bytes());
                }
            }
        }
        Next::Relay
    }

    fn failed(&mut self, why: Failure, reply: &mut Vec<u8>) {
        // Only a destination the user typed is worth another try; a
        // refusal at accept or a fixed destination that fails closes.
        let again = self.interactive && self.phase == Phase::Connecting;
        self.phase = if again { Phase::Command } else { Phase::Done };
        let line = match (why, self.target.take()) {
            (Failure::Denied | Failure::Quota, _) => "access denied\r\n".to_string(),
            (Failure::Limit, _) => "too many connections, try again later\r\n".to_string(),
            (why, Some(t)) => format!("cannot connect to {t}: {}\r\n", reason(why)),
            (why, None) => format!("cannot connect: {}\r\n", reason(why)),
        };
        reply.extend_from_slice(line.as_bytes());
        if again {
            reply.extend_from_slice(PROMPT.as_bytes());
        }
    }

    fn asks_again(&self) -> bool {
        self.phase == Phase::Command
    }

    /// The authenticated user, for the access log of a session that never
    /// connects.
    fn log_user(&self) -> Option<String> {
        self.user.clone()
    }

    fn method(&self) -> &'static str {
        "TELNET"
    }
}

/// The REASON of `cannot connect to HOST:PORT: REASON`.
fn reason(why: Failure) -> &'static str {
    match why {
        Failure::Refused => "connection refused",
        Failure::NetUnreachable => "network unreachable",
        Failure::HostUnreachable => "host unreachable",
        Failure::NotResolved => "host name not found",
        Failure::TimedOut => "timed out",
        Failure::Denied | Failure::Quota => "access denied",
        Failure::Limit => "too many connections",
        Failure::Parent(_) => "parent proxy failed",
        Failure::Other => "connection failed",
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let is_space = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !is_space(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !is_space(c))
        .map_or(start, |i| i + 1);
    &b[start..end]
}

fn parse_command(line: &[u8]) -> Command {
    const USAGE: &str = "usage: connect HOST [PORT]; type help for the commands";
    let Ok(text) = std::str::from_utf8(line) else {
        return Command::Error("invalid characters in the command line");
    };
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Command::Error("invalid characters in the command line");
    }
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let Some(first) = words.first() else {
        return Command::Empty;
    };
    let args = match first.to_ascii_lowercase().as_str() {
        "help" | "?" => return Command::Help,
        "quit" | "exit" => return Command::Quit,
        "connect" | "c" | "open" => &words[1..],
        _ => &words[..],
    };
    let target = match args {
        [] => return Command::Error(USAGE),
        [hp] => parse_target(hp, DEFAULT_PORT),
        [h, p] => match parse_target(h, 0) {
            Ok(Target::Name(n, 0)) => parse_port(p).map(|p| Target::Name(n, p)),
            Ok(Target::Addr(a)) if a.port() == 0 => {
                parse_port(p).map(|p| Target::Addr(SocketAddr::new(a.ip(), p)))
            }
            Ok(_) => Err(BadTarget::Host),
            Err(e) => Err(e),
        },
        _ => return Command::Error(USAGE),
    };
    match target {
        Ok(t) => Command::Connect(t),
        Err(BadTarget::Host) => Command::Error("invalid host name"),
        Err(BadTarget::Port) => Command::Error("invalid port: use a number from 1 to 65535"),
        Err(BadTarget::Empty) => Command::Error(USAGE),
    }
}

/// Why `HOST[:PORT]` did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTarget {
    /// No host at all.
    Empty,
    Host,
    Port,
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address; the
/// port is `default_port` when none is given (0 lets a caller tell).
pub(crate) fn parse_target(s: &str, default_port: u16) -> Result<Target, BadTarget> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(BadTarget::Host);
        };
        let ip: Ipv6Addr = inside.parse().map_err(|_| BadTarget::Host)?;
        let port = match after {
            "" => default_port,
            _ => match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None => return Err(BadTarget::Host),
            },
        };
        return Ok(Target::Addr(SocketAddr::new(IpAddr::V6(ip), port)));
    } else {
        match s.matches(':').count() {
            0 => (s, default_port),
            1 => {
                let (h, p) = s.split_once(':').unwrap_or((s, ""));
                (h, parse_port(p)?)
            }
            _ => {
                let ip: Ipv6Addr = s.parse().map_err(|_| BadTarget::Host)?;
                return Ok(Target::Addr(SocketAddr::new(IpAddr::V6(ip), default_port)));
            }
        }
    };
    if host.is_empty() {
        return Err(BadTarget::Empty);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, port)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(BadTarget::Host);
    }
    Ok(Target::Name(name.to_ascii_lowercase(), port))
}

/// A port: decimal digits only, 1–65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, BadTarget> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(BadTarget::Port);
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(BadTarget::Port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::config;

    /// A telnet service: `mode` is "" (interactive), "dest" (destination
    /// 10.0.0.9:2323), "auth", or "auth+dest".
    fn service(mode: &str) -> (config::Config, Users) {
        let auth = mode.contains("auth");
        let dest = if mode.contains("dest") {
            "destination = \"10.0.0.9:2323\"\n"
        } else {
            ""
        };
        let text = format!(
            "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
             [[service]]\nname = \"t\"\nkind = \"telnet\"\nport = 2300\nauth = {auth}\n{dest}"
        );
        let c = config::parse_unchecked_kinds(&text, "t").expect("config");
        let users = Users::new(&c.users, 1, std::time::Duration::ZERO);
        (c, users)
    }

    /// What a run of the machine gave, as the table would see it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Run {
        step: Next,
        reply: Vec<u8>,
        /// Bytes not consumed (relayed to the server after a Connect).
        left: Vec<u8>,
    }

    /// Starts the machine, then hands it `input` in the pieces `cuts` marks
    /// (end offsets), each time with every byte not consumed before, until
    /// a step other than More.
    fn run_cut(mode: &str, input: &[u8], cuts: &[usize]) -> Run {
        let (c, mut users) = service(mode);
        let mut detached = crate::proto::Detached::new();
        let mut scope = detached.scope(&c.services[0], &mut users);
        let mut t = Telnet::default();
        let mut reply = Vec::new();
        let step = t.start(&mut reply, &mut scope);
        if step != Next::Wait {
            return Run {
                step,
                reply,
                left: input.to_vec(),
            };
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(fed, input.len());
            pending.extend_from_slice(&input[fed..cut]);
            fed = cut;
            let (n, mut step) = t.input(&pending, &mut reply, &mut scope);
            assert!(n <= pending.len());
            pending.drain(..n);
            if let Next::Authenticate { user, password } = &step {
                // The session's part: the verdict, then the rest.
                let v = scope
                    .users
                    .check_blocking(user, &password.0, std::time::Instant::now());
                step = t.checked(v, &mut reply);
                if step == Next::Wait {
                    let (n, s) = t.input(&pending, &mut reply, &mut scope);
                    pending.drain(..n);
                    step = s;
                }
            }
            if step != Next::Wait {
                pending.extend_from_slice(&input[fed..]);
                return Run {
                    step,
                    reply,
                    left: pending,
                };
            }
        }
        Run {
            step: Next::Wait,
            reply,
            left: pending,
        }
    }

    /// Runs `input` whole, split at every byte offset, and a byte at a
    /// time; all must give the same result, which is returned.
    fn run(mode: &str, input: &[u8]) -> Run {
        let whole = run_cut(mode, input, &[]);
        for at in 0..=input.len() {
            assert_eq!(run_cut(mode, input, &[at]), whole, "{mode}: split at {at}");
        }
        let each: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run_cut(mode, input, &each), whole, "{mode}: byte by byte");
        whole
    }

    fn connect(t: &str, user: Option<&str>) -> Next {
        let target = match t.parse::<SocketAddr>() {
            Ok(a) => Target::Addr(a),
            Err(_) => {
                let (h, p) = t.rsplit_once(':').unwrap();
                Target::Name(h.into(), p.parse().unwrap())
            }
        };
        Next::Connect {
            target,
            user: user.map(str::to_string),
        }
    }

    fn greeted(rest: &str) -> Vec<u8> {
        [GREETING, PROMPT, rest].concat().into_bytes()
    }

    const MORE: Next = Next::Wait;

    #[test]
    fn commands() {
        let bad_port = "invalid port: use a number from 1 to 65535\r\n";
        let bad_host = "invalid host name\r\n";
        let usage = "usage: connect HOST [PORT]; type help for the commands\r\n";
        type Case = (&'static str, &'static [u8], Next, String, &'static [u8]);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("connect host port", b"connect example.com 8023\r\n", connect("example.com:8023", None), String::new(), b""),
            ("c", b"c Example.COM\r\n", connect("example.com:23", None), String::new(), b""),
            ("open", b"open 10.1.2.3 2323\r\n", connect("10.1.2.3:2323", None), String::new(), b""),
            ("OPEN in capitals", b"OPEN 10.1.2.3\r\n", connect("10.1.2.3:23", None), String::new(), b""),
            ("bare host", b"example.com\r\n", connect("example.com:23", None), String::new(), b""),
            ("bare host port", b"example.com 25\r\n", connect("example.com:25", None), String::new(), b""),
            ("host:port", b"example.com:2525\r\n", connect("example.com:2525", None), String::new(), b""),
            ("connect host:port", b"connect 127.0.0.1:7\r\n", connect("127.0.0.1:7", None), String::new(), b""),
            ("[v6]:port", b"[::1]:2323\r\n", connect("[::1]:2323", None), String::new(), b""),
            ("[v6]", b"open [::1]\r\n", connect("[::1]:23", None), String::new(), b""),
            ("bare v6", b"connect ::1\r\n", connect("[::1]:23", None), String::new(), b""),
            ("bare v6 port", b"::1 99\r\n", connect("[::1]:99", None), String::new(), b""),
            ("trailing dot", b"example.com.\r\n", connect("example.com:23", None), String::new(), b""),
            ("spaces and tabs", b"  connect\t h  \t 7 \r\n", connect("h:7", None), String::new(), b""),
            ("bare LF", b"h 7\n", connect("h:7", None), String::new(), b""),
            ("CR NUL", b"h 7\r\0", connect("h:7", None), String::new(), b""),
            ("pipelined payload", b"h 7\r\nGET / HTTP/1.0\r\n\r\n", connect("h:7", None), String::new(), b"GET / HTTP/1.0\r\n\r\n"),
            ("bare CR then payload", b"h 7\rxyz", connect("h:7", None), String::new(), b"xyz"),
            ("CR then IAC stays for the server", b"h 7\r\xff\xfb\x18", connect("h:7", None), String::new(), b"\xff\xfb\x18"),
            ("several commands pipelined", b"help\r\n\r\nnope!\r\nh 7\r\nrest",
             connect("h:7", None), format!("{HELP}{PROMPT}{PROMPT}{bad_host}{PROMPT}"), b"rest"),
            ("empty line", b"\r\n", MORE, PROMPT.into(), b""),
            ("help", b"help\r\n", MORE, format!("{HELP}{PROMPT}"), b""),
            ("?", b"?\r\n", MORE, format!("{HELP}{PROMPT}"), b""),
            ("quit", b"quit\r\nmore", Next::Close(Outcome::Quit), "goodbye\r\n".into(), b"more"),
            ("exit", b"EXIT\n", Next::Close(Outcome::Quit), "goodbye\r\n".into(), b""),
            ("connect alone", b"connect\r\n", MORE, format!("{usage}{PROMPT}"), b""),
            ("three words", b"a b c\r\n", MORE, format!("{usage}{PROMPT}"), b""),
            ("port 0", b"h 0\r\n", MORE, format!("{bad_port}{PROMPT}"), b""),
            ("port too big", b"h 65536\r\n", MORE, format!("{bad_port}{PROMPT}"), b""),
            ("port with sign", b"h:+23\r\n", MORE, format!("{bad_port}{PROMPT}"), b""),
            ("port not a number", b"connect h telnet\r\n", MORE, format!("{bad_port}{PROMPT}"), b""),
            ("empty port", b"h:\r\n", MORE, format!("{bad_port}{PROMPT}"), b""),
            ("empty host", b":23\r\n", MORE, format!("{usage}{PROMPT}"), b""),
            ("host:port and a port", b"h:1 2\r\n", MORE, format!("{bad_host}{PROMPT}"), b""),
            ("bad host", b"exa$mple.com\r\n", MORE, format!("{bad_host}{PROMPT}"), b""),
            ("empty label", b"a..b\r\n", MORE, format!("{bad_host}{PROMPT}"), b""),
            ("bad v6", b"[::g]:23\r\n", MORE, format!("{bad_host}{PROMPT}"), b""),
            ("unclosed bracket", b"[::1:23\r\n", MORE, format!("{bad_host}{PROMPT}"), b""),
            ("junk after bracket", b"[::1]x\r\n", MORE, format!("{bad_host}{PROMPT}"), b""),
            ("control byte", b"h\x1b[A\r\n", MORE, "invalid characters in the command line\r\n".to_string() + PROMPT, b""),
            ("IAC IAC is a literal 0xFF", b"h\xff\xff\r\n", MORE, "invalid characters in the command line\r\n".to_string() + PROMPT, b""),
            ("waits for the byte after CR", b"h 7\r", MORE, String::new(), b""),
            ("partial line", b"connect h", MORE, String::new(), b""),
        ];
        for (what, input, step, reply, left) in cases {
            let got = run("", input);
            assert_eq!(got.step, step, "{what}");
            assert_eq!(
                String::from_utf8_lossy(&got.reply),
                String::from_utf8_lossy(&greeted(&reply)),
                "{what}"
            );
            assert_eq!(got.left, left, "{what}");
        }
    }

    #[test]
    fn editing_and_negotiation() {
        type Case = (
            &'static str,
            &'static [u8],
            Next,
            &'static [u8],
            &'static [u8],
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("backspace", b"hx\x08 7\r\n", connect("h:7", None), b"", b""),
            ("DEL", b"hxy\x7f\x7f 7\r\n", connect("h:7", None), b"", b""),
            ("backspace past the start", b"\x08\x08h 7\r\n", connect("h:7", None), b"", b""),
            ("IAC EC", b"hx\xff\xf7 7\r\n", connect("h:7", None), b"", b""),
            ("IAC EL", b"junk\xff\xf8h 7\r\n", connect("h:7", None), b"", b""),
            ("DO answered WONT", b"\xff\xfd\x03h 7\r\n", connect("h:7", None), b"\xff\xfc\x03", b""),
            ("WILL answered DONT", b"\xff\xfb\x18h 7\r\n", connect("h:7", None), b"\xff\xfe\x18", b""),
            ("DONT and WONT unanswered", b"\xff\xfe\x01\xff\xfc\x03h 7\r\n", connect("h:7", None), b"", b""),
            ("mid-line negotiation", b"h\xff\xfd\x01\xff\xfb\x1f 7\r\n", connect("h:7", None), b"\xff\xfc\x01\xff\xfe\x1f", b""),
            ("answered once", b"\xff\xfd\x03\xff\xfd\x03\xff\xfb\x03\xff\xfb\x03h 7\r\n", connect("h:7", None), b"\xff\xfc\x03\xff\xfe\x03", b""),
            ("subnegotiation skipped", b"h\xff\xfa\x18\x00VT100\xff\xff\r\n\xff\xf0 7\r\n", connect("h:7", None), b"", b""),
            ("other commands ignored", b"\xff\xf1h\xff\xf6 \xff\xf97\r\n", connect("h:7", None), b"", b""),
            ("a client's typical opening", b"\xff\xfd\x03\xff\xfb\x18\xff\xfb\x1f\xff\xfb\x20\xff\xfb\x21\xff\xfb\x22\xff\xfb\x27\xff\xfd\x05open h 7\r\n",
             connect("h:7", None),
             b"\xff\xfc\x03\xff\xfe\x18\xff\xfe\x1f\xff\xfe\x20\xff\xfe\x21\xff\xfe\x22\xff\xfe\x27\xff\xfc\x05", b""),
            ("negotiation after the line is the server's", b"h 7\r\n\xff\xfd\x03", connect("h:7", None), b"", b"\xff\xfd\x03"),
        ];
        for (what, input, step, reply, left) in cases {
            let got = run("", input);
            assert_eq!(got.step, step, "{what}");
            assert_eq!(got.reply, [&greeted("")[..], reply].concat(), "{what}");
            assert_eq!(got.left, left, "{what}");
        }
    }

    #[test]
    fn long_lines() {
        let mut ok = vec![b'a'; MAX_LINE];
        ok.extend_from_slice(b"\r\n");
        let got = run_cut("", &ok, &[]);
        assert_eq!(got.step, Next::Wait);
        assert_eq!(
            got.reply,
            greeted(&format!("invalid host name\r\n{PROMPT}"))
        );
        let long = vec![b'a'; MAX_LINE + 1];
        for input in [long.clone(), [&long[..], b"\r\n"].concat()] {
            let got = run("", &input);
            assert_eq!(got.step, Next::Close(Outcome::BadRequest));
            assert_eq!(got.reply, greeted("line too long\r\n"));
        }
        // Editing keeps a line short; 0xFF counts as a byte of it.
        let mut edited = b"h".to_vec();
        for _ in 0..2 * MAX_LINE {
            edited.extend_from_slice(b"xy\x08\x08");
        }
        edited.extend_from_slice(b" 7\r\n");
        assert_eq!(run_cut("", &edited, &[]).step, connect("h:7", None));
        let iacs = vec![IAC; 2 * (MAX_LINE + 1)];
        assert_eq!(
            run_cut("", &iacs, &[]).step,
            Next::Close(Outcome::BadRequest)
        );
    }

    #[test]
    fn lines_are_bounded() {
        let input: Vec<u8> = b"\r\n".repeat(MAX_LINES + 1);
        let got = run_cut("", &input, &[]);
        assert_eq!(got.step, Next::Close(Outcome::BadRequest));
        let want = [
            GREETING,
            &PROMPT.repeat(MAX_LINES + 1),
            "too many commands\r\n",
        ]
        .concat();
        assert_eq!(got.reply, want.as_bytes());
        // Negotiation replies are bounded too: every option once each way.
        let mut input = Vec::new();
        for _ in 0..3 {
            for opt in 0..=255u8 {
                input.extend_from_slice(&[IAC, DO, opt, IAC, WILL, opt]);
            }
        }
        let got = run_cut("", &input, &[]);
        assert_eq!(got.reply.len(), greeted("").len() + 2 * 256 * 3);
    }

    #[test]
    fn login() {
        let pw_prompt: &[u8] = b"\xff\xfb\x01password: ";
        let after_pw: &[u8] = b"\xff\xfc\x01\r\n";
        type Case = (
            &'static str,
            &'static str,
            &'static [u8],
            Next,
            Vec<u8>,
            &'static [u8],
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("login then connect", "auth", b"alice\r\nsecret\r\nh 7\r\n",
             connect("h:7", Some("alice")),
             [GREETING.as_bytes(), b"login: ", pw_prompt, after_pw, PROMPT.as_bytes()].concat(), b""),
            ("client agrees to echo", "auth", b"alice\r\n\xff\xfd\x01secret\r\n\xff\xfe\x01h 7\r\n",
             connect("h:7", Some("alice")),
             [GREETING.as_bytes(), b"login: ", pw_prompt, after_pw, PROMPT.as_bytes()].concat(), b""),
            ("client refuses echo", "auth", b"alice\r\n\xff\xfe\x01secret\r\nh 7\r\n",
             connect("h:7", Some("alice")),
             [GREETING.as_bytes(), b"login: ", pw_prompt, b"\r\n", PROMPT.as_bytes()].concat(), b""),
            ("edited password", "auth", b"alice\r\nsecrex\x08t\r\n",
             MORE,
             [GREETING.as_bytes(), b"login: ", pw_prompt, after_pw, PROMPT.as_bytes()].concat(), b""),
            ("empty name asks again", "auth", b"\r\n  \r\nalice\r\nsecret\r\n",
             MORE,
             [GREETING.as_bytes(), b"login: login: login: ", pw_prompt, after_pw, PROMPT.as_bytes()].concat(), b""),
            ("wrong password", "auth", b"alice\r\nsecreT\r\nh 7\r\n",
             Next::Close(Outcome::AuthFailed),
             [GREETING.as_bytes(), b"login: ", pw_prompt, after_pw, b"login incorrect\r\n"].concat(), b"h 7\r\n"),
            ("unknown user", "auth", b"bob\r\nsecret\r\n",
             Next::Close(Outcome::AuthFailed),
             [GREETING.as_bytes(), b"login: ", pw_prompt, after_pw, b"login incorrect\r\n"].concat(), b""),
            ("commands are not logins", "auth", b"h 7\r\nsecret\r\n",
             Next::Close(Outcome::AuthFailed),
             [GREETING.as_bytes(), b"login: ", pw_prompt, after_pw, b"login incorrect\r\n"].concat(), b""),
            ("destination after login", "auth+dest", b"alice\r\nsecret\r\nfor the server\r\n",
             connect("10.0.0.9:2323", Some("alice")),
             [&b"login: "[..], pw_prompt, after_pw].concat(), b"for the server\r\n"),
            ("destination, wrong login", "auth+dest", b"alice\r\nx\r\n",
             Next::Close(Outcome::AuthFailed),
             [&b"login: "[..], pw_prompt, after_pw, b"login incorrect\r\n"].concat(), b""),
        ];
        for (what, mode, input, step, reply, left) in cases {
            let got = run(mode, input);
            assert_eq!(got.step, step, "{what}");
            assert_eq!(got.reply, reply, "{what}");
            assert_eq!(got.left, left, "{what}");
        }
    }

    #[test]
    fn destination_connects_at_once() {
        let got = run_cut("dest", b"anything\r\n", &[]);
        assert_eq!(got.step, connect("10.0.0.9:2323", None));
        assert!(got.reply.is_empty());
        assert_eq!(got.left, b"anything\r\n");
    }

    fn connecting(interactive: bool, target: &str) -> Telnet {
        let Next::Connect { target, .. } = connect(target, None) else {
            unreachable!()
        };
        Telnet {
            phase: Phase::Connecting,
            target: Some(target),
            interactive,
            ..Default::default()
        }
    }

    #[test]
    fn after_the_connect() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut r = Vec::new();
        let mut up = Vec::new();
        let after = connecting(true, "example.com:23").connected(local, &mut r, &mut up);
        assert_eq!(after, Next::Relay);
        assert_eq!(r, b"connected to example.com:23\r\n");
        assert!(up.is_empty());
        r.clear();
        connecting(false, "10.0.0.9:2323").connected(local, &mut r, &mut up);
        assert!(r.is_empty(), "destination mode says nothing");
        let cases = [
            (Failure::Denied, "access denied\r\n"),
            (Failure::Limit, "too many connections, try again later\r\n"),
            (
                Failure::Refused,
                "cannot connect to [::1]:2323: connection refused\r\n",
            ),
            (
                Failure::NotResolved,
                "cannot connect to [::1]:2323: host name not found\r\n",
            ),
            (
                Failure::TimedOut,
                "cannot connect to [::1]:2323: timed out\r\n",
            ),
            (
                Failure::NetUnreachable,
                "cannot connect to [::1]:2323: network unreachable\r\n",
            ),
            (
                Failure::HostUnreachable,
                "cannot connect to [::1]:2323: host unreachable\r\n",
            ),
            (
                Failure::Other,
                "cannot connect to [::1]:2323: connection failed\r\n",
            ),
        ];
        for (why, line) in cases {
            // Interactive: the line, then the prompt for another try.
            let mut r = Vec::new();
            let mut t = connecting(true, "[::1]:2323");
            t.failed(why, &mut r);
            assert_eq!(
                String::from_utf8_lossy(&r),
                format!("{line}{PROMPT}"),
                "{why:?}"
            );
            assert!(t.asks_again(), "{why:?}");
            // With a destination: the line, and the close.
            let mut r = Vec::new();
            let mut t = connecting(false, "[::1]:2323");
            t.failed(why, &mut r);
            assert_eq!(String::from_utf8_lossy(&r), line, "{why:?}");
            assert!(!t.asks_again(), "{why:?}");
        }
        // Refused at accept: nothing was started.
        for (why, line) in [
            (Failure::Denied, "access denied\r\n"),
            (Failure::Limit, "too many connections, try again later\r\n"),
        ] {
            let mut r = Vec::new();
            let mut t = Telnet::default();
            t.failed(why, &mut r);
            assert_eq!(String::from_utf8_lossy(&r), line);
            assert!(!t.asks_again());
        }
        assert_eq!(Telnet::default().method(), "TELNET");
    }

    #[test]
    fn targets() {
        let name = |h: &str, p| Ok(Target::Name(h.into(), p));
        let addr = |a: &str| Ok(Target::Addr(a.parse().unwrap()));
        let cases = [
            ("host", name("host", 23)),
            ("HOST.Example:1", name("host.example", 1)),
            ("a_b-c.d", name("a_b-c.d", 23)),
            ("1.2.3.4", addr("1.2.3.4:23")),
            ("1.2.3.4:65535", addr("1.2.3.4:65535")),
            ("[fe80::1]:8", addr("[fe80::1]:8")),
            ("fe80::1", addr("[fe80::1]:23")),
            ("", Err(BadTarget::Empty)),
            (":5", Err(BadTarget::Empty)),
            ("h:0", Err(BadTarget::Port)),
            ("h:123456", Err(BadTarget::Port)),
            ("h:-1", Err(BadTarget::Port)),
            ("h:1:2", Err(BadTarget::Host)),
            ("[1.2.3.4]:5", Err(BadTarget::Host)),
            (".", Err(BadTarget::Host)),
            ("a.-", name("a.-", 23)),
            (&"a".repeat(64), Err(BadTarget::Host)),
            ("h\u{e9}", Err(BadTarget::Host)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_target(s, 23), want, "{s:?}");
        }
    }
}
