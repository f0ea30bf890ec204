//! The POP3 gateway (RFC 1939; `docs/configuration.md`, "pop3").
//!
//! The client chooses its mail server in the user name:
//! `USER name#host[:port]` (the service's `separator`, `#` by default; the
//! last one in the argument counts, so `me@example.com#pop.example.com`
//! logs in as `me@example.com`). Without a separator the service's
//! `destination` is the server. The gateway connects, checks the server's
//! `+OK` greeting, sends `USER name`, and relays the server's reply to it;
//! from then on (PASS included) bytes flow untouched.
//!
//! # States and exits
//!
//! ```text
//! start ─► "+OK portico POP3 gateway ready" ─► Command
//! Command ─line─┬─CAPA──────────────► "+OK" USER "." , Command
//!               ├─QUIT──────────────► "+OK bye", close
//!               ├─USER name#host────► Connect(host:port)
//!               ├─USER name (no separator)─► Connect(destination) | -ERR (none), Command
//!               ├─USER, bad name, host or port─► -ERR, Command (no connection attempt)
//!               ├─anything else─────► -ERR, Command
//!               ├─line over 1 KiB───► "-ERR line too long", close
//!               └─more than MAX_COMMANDS lines─► "-ERR too many commands", close
//! Connect ─connected─► Greeting (the server's bytes)
//!         └─failed──► "-ERR access denied" | "-ERR cannot reach mail server HOST:PORT", close
//! Greeting ─"+OK …" line─► send "USER name" ─► UserReply
//!          └─other line, or none within 1 KiB─► "-ERR cannot reach mail server HOST:PORT", close
//! UserReply ─a whole line─► relay untouched, starting with that line
//! server closes or handshake_timeout before that ─► "-ERR cannot reach mail server HOST:PORT", close
//! refused at accept ─► "-ERR access denied" | "-ERR too many connections", close
//! ```
//!
//! # Decisions
//!
//! - Commands are case-insensitive; a line ends at LF (CR LF or a bare LF).
//!   Every line is bounded: 1 KiB with its end, longer closes the
//!   connection, from the client and from the server alike.
//! - The server's greeting is not shown to the client (it had the
//!   gateway's); its reply to `USER` is relayed byte for byte, unconsumed.
//! - Client bytes sent behind `USER` (a pipelined `PASS`) wait until the
//!   server has answered `USER`, then go through untouched.
//! - The POP3 name is the mail server's account, not a Portico user: it is
//!   not checked here, and rules with `users` do not see it.
//! - A name or host with control characters, and a line that is not UTF-8,
//!   are refused with -ERR.

use std::net::SocketAddr;

use super::simple::destination_target;
use super::telnet::{parse_target, BadTarget};
use super::{Failure, Next, Outcome, Protocol, Scope, Target};

/// The longest line, its CR LF included, from the client or the server.
pub const MAX_LINE: usize = 1024;
/// Commands answered before USER; one more closes the connection.
pub const MAX_COMMANDS: usize = 32;
/// The port when `USER name#host` names none.
pub const DEFAULT_PORT: u16 = 110;

pub const GREETING: &str = "+OK portico POP3 gateway ready\r\n";
pub const CAPA: &str = "+OK\r\nUSER\r\n.\r\n";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Command,
    Connecting,
    Greeting,
    UserReply,
    Done,
}

#[derive(Debug, Default)]
pub struct Pop3 {
    state: State,
    commands: usize,
    /// The name to log in as at the server.
    name: String,
    target: Option<Target>,
}

/// A whole line at the front of `b`: its length with the LF, `Err` when
/// there is none within [`MAX_LINE`], `Ok(None)` when more may come.
fn line_len(b: &[u8]) -> Result<Option<usize>, ()> {
    match b.iter().take(MAX_LINE).position(|&c| c == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if b.len() >= MAX_LINE => Err(()),
        None => Ok(None),
    }
}

impl Pop3 {
    /// One command line (without its line end); `None` to go on reading.
    fn command(&mut self, line: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> Option<Next> {
        let (verb, arg) = match line.iter().position(|&c| c == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        if verb.eq_ignore_ascii_case(b"CAPA") {
            reply.extend_from_slice(CAPA.as_bytes());
        } else if verb.eq_ignore_ascii_case(b"QUIT") {
            self.state = State::Done;
            reply.extend_from_slice(b"+OK bye\r\n");
            return Some(Next::Close(Outcome::Quit));
        } else if verb.eq_ignore_ascii_case(b"USER") {
            match self.user(arg, scope) {
                Ok(target) => {
                    self.state = State::Connecting;
                    self.target = Some(target.clone());
                    return Some(Next::Connect { target, user: None });
                }
                Err(why) => {
                    reply.extend_from_slice(format!("-ERR {why}\r\n").as_bytes());
                }
            }
        } else {
            let sep = &scope.service.separator;
            reply.extend_from_slice(
                format!("-ERR log in first: USER name{sep}host[:port]\r\n").as_bytes(),
            );
        }
        None
    }

    /// `USER`'s argument: the server to connect to (and the name, kept).
    fn user(&mut self, arg: &[u8], scope: &mut Scope) -> Result<Target, String> {
        let sep = scope.service.separator.as_str();
        let usage = || format!("usage: USER name{sep}host[:port]");
        let Ok(arg) = std::str::from_utf8(arg) else {
            return Err("the name is not UTF-8".into());
        };
        let arg = arg.trim_matches(|c| c == ' ' || c == '\t');
        if arg.chars().any(char::is_control) {
            return Err("control characters in the name".into());
        }
        if arg.is_empty() {
            return Err(usage());
        }
        let (name, target) = match arg.rfind(sep) {
            Some(i) => {
                let host = &arg[i + sep.len()..];
                let target = match parse_target(host, DEFAULT_PORT) {
                    Ok(t) => t,
                    Err(BadTarget::Empty) => {
                        return Err(format!("no mail server after '{sep}': {}", usage()))
                    }
                    Err(BadTarget::Host) => return Err("invalid mail server host name".into()),
                    Err(BadTarget::Port) => {
                        return Err("invalid port: use a number from 1 to 65535".into())
                    }
                };
                (&arg[..i], target)
            }
            None => match &scope.service.destination {
                Some(d) => (arg, destination_target(d)),
                None => return Err(format!("no mail server given: {}", usage())),
            },
        };
        if name.is_empty() {
            return Err(format!("no user name: {}", usage()));
        }
        self.name = name.to_string();
        Ok(target)
    }

    fn unreachable(&mut self, reply: &mut Vec<u8>) {
        self.state = State::Done;
        match &self.target {
            Some(t) => {
                reply.extend_from_slice(format!("-ERR cannot reach mail server {t}\r\n").as_bytes())
            }
            None => reply.extend_from_slice(b"-ERR cannot reach mail server\r\n"),
        }
    }
}

impl Protocol for Pop3 {
    fn start(&mut self, reply: &mut Vec<u8>, _scope: &mut Scope) -> Next {
        reply.extend_from_slice(GREETING.as_bytes());
        Next::Wait
    }

    fn input(&mut self, input: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        let mut used = 0;
        while self.state == State::Command {
            let rest = &input[used..];
            let n = match line_len(rest) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(()) => {
                    self.state = State::Done;
                    reply.extend_from_slice(b"-ERR line too long\r\n");
                    return (used, Next::Close(Outcome::BadRequest));
                }
            };
            let mut line = &rest[..n - 1];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            used += n;
            self.commands += 1;
            if self.commands > MAX_COMMANDS {
                self.state = State::Done;
                reply.extend_from_slice(b"-ERR too many commands\r\n");
                return (used, Next::Close(Outcome::BadRequest));
            }
            if let Some(step) = self.command(line, reply, scope) {
                return (used, step);
            }
        }
        (used, Next::Wait)
    }

    fn connected(&mut self, _: SocketAddr, _: &mut Vec<u8>, _: &mut Vec<u8>) -> Next {
        if self.state != State::Connecting {
            return Next::Relay;
        }
        self.state = State::Greeting;
        Next::Converse
    }

    fn upstream(
        &mut self,
        input: &[u8],
        reply: &mut Vec<u8>,
        to_server: &mut Vec<u8>,
    ) -> (usize, Next) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Greeting => match line_len(rest) {
                    Ok(Some(n)) if rest.starts_with(b"+OK") => {
                        used += n;
                        to_server.extend_from_slice(format!("USER {}\r\n", self.name).as_bytes());
                        self.state = State::UserReply;
                    }
                    Ok(None) => return (used, Next::Wait),
                    Ok(Some(_)) | Err(()) => {
                        // Nothing of the server's reaches the client.
                        used = input.len();
                        self.unreachable(reply);
                        return (used, Next::Close(Outcome::BadGreeting));
                    }
                },
                State::UserReply => {
                    // A whole reply (or more than a line's worth): relayed
                    // from its first byte.
                    return match line_len(rest) {
                        Ok(None) => (used, Next::Wait),
                        Ok(Some(_)) | Err(()) => {
                            self.state = State::Done;
                            (used, Next::Relay)
                        }
                    };
                }
                State::Command | State::Connecting | State::Done => return (used, Next::Relay),
            }
        }
    }

    fn failed(&mut self, why: Failure, reply: &mut Vec<u8>) {
        match why {
            Failure::Denied | Failure::Quota => {
                self.state = State::Done;
                reply.extend_from_slice(b"-ERR access denied\r\n");
            }
            Failure::Limit => {
                self.state = State::Done;
                reply.extend_from_slice(b"-ERR too many connections\r\n");
            }
            _ => self.unreachable(reply),
        }
    }

    fn method(&self) -> &'static str {
        "POP3"
    }

    fn log_user(&self) -> Option<String> {
        (!self.name.is_empty()).then(|| self.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::config;

    /// A pop3 service with `extra` lines (destination, separator).
    fn service(extra: &str) -> config::Config {
        let text = format!("[[service]]\nname = \"p\"\nkind = \"pop3\"\nport = 1100\n{extra}\n");
        config::parse_unchecked_kinds(&text, "t").expect("config")
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Run<S> {
        step: S,
        reply: Vec<u8>,
        /// Bytes not consumed.
        left: Vec<u8>,
    }

    /// Feeds `input` in the pieces `cuts` marks (end offsets) to `feed`,
    /// each time with every byte not consumed before, as the table does,
    /// until it returns a step other than `more`.
    fn cut<S: PartialEq + Clone>(
        input: &[u8],
        cuts: &[usize],
        more: S,
        mut feed: impl FnMut(&[u8], &mut Vec<u8>) -> (usize, S),
    ) -> Run<S> {
        let mut reply = Vec::new();
        let mut pending = Vec::new();
        let mut fed = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(fed, input.len());
            pending.extend_from_slice(&input[fed..c]);
            fed = c;
            let (n, step) = feed(&pending, &mut reply);
            assert!(n <= pending.len());
            pending.drain(..n);
            if step != more {
                pending.extend_from_slice(&input[fed..]);
                return Run {
                    step,
                    reply,
                    left: pending,
                };
            }
        }
        Run {
            step: more,
            reply,
            left: pending,
        }
    }

    /// Runs `input` through a fresh gateway's `input`, whole, split at
    /// every offset and byte by byte; all must agree.
    fn client(extra: &str, input: &[u8]) -> (Run<Next>, Pop3) {
        let c = service(extra);
        let once = |cuts: &[usize]| {
            let mut users = Users::default();
            let mut detached = crate::proto::Detached::new();
            let mut scope = detached.scope(&c.services[0], &mut users);
            let mut p = Pop3::default();
            let mut greeting = Vec::new();
            assert_eq!(p.start(&mut greeting, &mut scope), Next::Wait);
            assert_eq!(greeting, GREETING.as_bytes());
            let run = cut(input, cuts, Next::Wait, |b, r| p.input(b, r, &mut scope));
            (run, p)
        };
        let (whole, p) = once(&[]);
        for at in 0..=input.len() {
            assert_eq!(once(&[at]).0, whole, "split at {at} of {input:?}");
        }
        let each: Vec<usize> = (1..input.len()).collect();
        assert_eq!(once(&each).0, whole, "byte by byte: {input:?}");
        (whole, p)
    }

    fn connect(t: &str) -> Next {
        let target = match t.parse::<SocketAddr>() {
            Ok(a) => Target::Addr(a),
            Err(_) => {
                let (h, p) = t.rsplit_once(':').unwrap();
                Target::Name(h.into(), p.parse().unwrap())
            }
        };
        Next::Connect { target, user: None }
    }

    const MORE: Next = Next::Wait;

    #[test]
    fn before_user() {
        let first = "-ERR log in first: USER name#host[:port]\r\n";
        let usage = "usage: USER name#host[:port]";
        type Case = (
            &'static str,
            &'static str,
            &'static [u8],
            Next,
            String,
            &'static [u8],
            &'static str,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("user#host", "", b"USER alice#pop.example.com\r\n", connect("pop.example.com:110"), String::new(), b"", "alice"),
            ("user#host:port", "", b"USER alice#127.0.0.1:1110\r\n", connect("127.0.0.1:1110"), String::new(), b"", "alice"),
            ("user#[v6]:port", "", b"user alice#[::1]:995\r\n", connect("[::1]:995"), String::new(), b"", "alice"),
            ("last separator counts", "", b"USER a#b@example.com#Pop.Example.com\r\n", connect("pop.example.com:110"), String::new(), b"", "a#b@example.com"),
            ("e-mail address as name", "", b"USER me@example.com#pop.example.com:1995\r\n", connect("pop.example.com:1995"), String::new(), b"", "me@example.com"),
            ("custom separator", "separator = \"%\"", b"USER a#b%h\r\n", connect("h:110"), String::new(), b"", "a#b"),
            ("two-character separator", "separator = \"%%\"", b"USER a%b%%h%%k:7\r\n", connect("k:7"), String::new(), b"", "a%b%%h"),
            ("destination when no separator", "destination = \"10.0.0.5\"", b"USER alice\r\n", connect("10.0.0.5:110"), String::new(), b"", "alice"),
            ("separator wins over destination", "destination = \"10.0.0.5\"", b"USER alice#h:1\r\n", connect("h:1"), String::new(), b"", "alice"),
            ("bare LF, spaces", "", b"USER   alice#h  \n", connect("h:110"), String::new(), b"", "alice"),
            ("name with a space", "", b"USER john smith#h\r\n", connect("h:110"), String::new(), b"", "john smith"),
            ("pipelined PASS stays", "", b"USER a#h\r\nPASS x\r\nSTAT\r\n", connect("h:110"), String::new(), b"PASS x\r\nSTAT\r\n", "a"),
            ("CAPA", "", b"CAPA\r\n", MORE, CAPA.into(), b"", ""),
            ("capa lower case, then USER", "", b"capa\r\nUSER a#h\r\n", connect("h:110"), CAPA.into(), b"", "a"),
            ("QUIT", "", b"QUIT\r\nUSER a#h\r\n", Next::Close(Outcome::Quit), "+OK bye\r\n".into(), b"USER a#h\r\n", ""),
            ("other commands", "", b"STAT\r\nPASS x\r\nSTLS\r\nAPOP a b\r\n\r\n", MORE, first.repeat(5), b"", ""),
            ("other, custom separator", "separator = \"%\"", b"AUTH\r\n", MORE, "-ERR log in first: USER name%host[:port]\r\n".into(), b"", ""),
            ("USER alone", "", b"USER\r\n", MORE, format!("-ERR {usage}\r\n"), b"", ""),
            ("USER space", "", b"USER \r\n", MORE, format!("-ERR {usage}\r\n"), b"", ""),
            ("no separator, no destination", "", b"USER alice\r\n", MORE, format!("-ERR no mail server given: {usage}\r\n"), b"", ""),
            ("empty host", "", b"USER alice#\r\n", MORE, format!("-ERR no mail server after '#': {usage}\r\n"), b"", ""),
            ("empty host with port", "", b"USER alice#:110\r\n", MORE, format!("-ERR no mail server after '#': {usage}\r\n"), b"", ""),
            ("empty host, destination set", "destination = \"10.0.0.5\"", b"USER alice#\r\n", MORE, format!("-ERR no mail server after '#': {usage}\r\n"), b"", ""),
            ("bad port", "", b"USER alice#h:99999\r\n", MORE, "-ERR invalid port: use a number from 1 to 65535\r\n".into(), b"", ""),
            ("port 0", "", b"USER alice#h:0\r\n", MORE, "-ERR invalid port: use a number from 1 to 65535\r\n".into(), b"", ""),
            ("port not a number", "", b"USER alice#h:pop\r\n", MORE, "-ERR invalid port: use a number from 1 to 65535\r\n".into(), b"", ""),
            ("bad host", "", b"USER alice#h/x\r\n", MORE, "-ERR invalid mail server host name\r\n".into(), b"", ""),
            ("empty name", "", b"USER #h\r\n", MORE, format!("-ERR no user name: {usage}\r\n"), b"", ""),
            ("control character", "", b"USER a\x01b#h\r\n", MORE, "-ERR control characters in the name\r\n".into(), b"", ""),
            ("CR inside", "", b"USER a\rb#h\r\n", MORE, "-ERR control characters in the name\r\n".into(), b"", ""),
            ("not UTF-8", "", b"USER a\xff#h\r\n", MORE, "-ERR the name is not UTF-8\r\n".into(), b"", ""),
            ("errors, then a good USER", "", b"USER a#h:0\r\nUSER a#h:1\r\n", connect("h:1"), "-ERR invalid port: use a number from 1 to 65535\r\n".into(), b"", "a"),
            ("partial line waits", "", b"USER a#h", MORE, String::new(), b"USER a#h", ""),
        ];
        for (what, extra, input, step, reply, left, name) in cases {
            let (got, p) = client(extra, input);
            assert_eq!(got.step, step, "{what}");
            assert_eq!(String::from_utf8_lossy(&got.reply), reply, "{what}");
            assert_eq!(got.left, left, "{what}");
            assert_eq!(p.name, name, "{what}");
        }
    }

    #[test]
    fn bounds() {
        let long = [&b"USER "[..], &[b'a'; MAX_LINE - 7], b"\r\n"].concat();
        assert_eq!(long.len(), MAX_LINE);
        let (got, _) = client("destination = \"10.0.0.5\"", &long);
        assert_eq!(got.step, connect("10.0.0.5:110"));
        let longer = [&b"USER "[..], &[b'a'; MAX_LINE - 6], b"\r\n"].concat();
        let (got, _) = client("destination = \"10.0.0.5\"", &longer);
        assert_eq!(got.step, Next::Close(Outcome::BadRequest));
        assert_eq!(got.reply, b"-ERR line too long\r\n");
        let (got, _) = client("", &[b'x'; MAX_LINE]);
        assert_eq!(got.step, Next::Close(Outcome::BadRequest));
        let many = b"NOOP\r\n".repeat(MAX_COMMANDS + 1);
        let (got, _) = client("", &many);
        assert_eq!(got.step, Next::Close(Outcome::BadRequest));
        let want = [
            "-ERR log in first: USER name#host[:port]\r\n".repeat(MAX_COMMANDS),
            "-ERR too many commands\r\n".into(),
        ]
        .concat();
        assert_eq!(String::from_utf8_lossy(&got.reply), want);
    }

    /// A gateway that asked to connect to 127.0.0.1:1110 as `alice`.
    fn connecting() -> Pop3 {
        Pop3 {
            state: State::Connecting,
            name: "alice".into(),
            target: Some(Target::Addr("127.0.0.1:1110".parse().unwrap())),
            ..Default::default()
        }
    }

    /// Runs the server's `input` through a connected gateway, whole, split
    /// at every offset and byte by byte; all must agree.
    fn server(input: &[u8]) -> (Run<Next>, Vec<u8>) {
        let once = |cuts: &[usize]| {
            let mut p = connecting();
            let mut r = Vec::new();
            let mut up = Vec::new();
            assert_eq!(
                p.connected("127.0.0.1:4000".parse().unwrap(), &mut r, &mut up),
                Next::Converse
            );
            assert!(r.is_empty() && up.is_empty());
            let run = cut(input, cuts, Next::Wait, |b, r| p.upstream(b, r, &mut up));
            (run, up)
        };
        let whole = once(&[]);
        for at in 0..=input.len() {
            assert_eq!(once(&[at]), whole, "split at {at} of {input:?}");
        }
        let each: Vec<usize> = (1..input.len()).collect();
        assert_eq!(once(&each), whole, "byte by byte: {input:?}");
        whole
    }

    #[test]
    fn with_the_server() {
        let unreachable = "-ERR cannot reach mail server 127.0.0.1:1110\r\n";
        let bad = Next::Close(Outcome::BadGreeting);
        type Case = (
            &'static str,
            &'static [u8],
            Next,
            &'static str,
            &'static [u8],
            &'static str,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("greeting and reply", b"+OK ready <1.2@h>\r\n+OK send PASS\r\n", Next::Relay, "", b"+OK send PASS\r\n", "USER alice\r\n"),
            ("-ERR reply relayed too", b"+OK\r\n-ERR no such user\r\n", Next::Relay, "", b"-ERR no such user\r\n", "USER alice\r\n"),
            ("bare LF", b"+OK hi\n+OK\n", Next::Relay, "", b"+OK\n", "USER alice\r\n"),
            ("more behind the reply", b"+OK\r\n+OK\r\nextra", Next::Relay, "", b"+OK\r\nextra", "USER alice\r\n"),
            ("waits for the reply", b"+OK hi\r\n+OK par", Next::Wait, "", b"+OK par", "USER alice\r\n"),
            ("waits for the greeting", b"+OK hi", Next::Wait, "", b"+OK hi", ""),
            ("greeting -ERR", b"-ERR go away\r\n", bad.clone(), unreachable, b"", ""),
            ("greeting junk", b"220 smtp here\r\n", bad.clone(), unreachable, b"", ""),
            ("greeting lower case", b"+ok\r\n", bad.clone(), unreachable, b"", ""),
        ];
        for (what, input, step, reply, left, sent) in cases {
            let (got, up) = server(input);
            assert_eq!(got.step, step, "{what}");
            assert_eq!(String::from_utf8_lossy(&got.reply), reply, "{what}");
            assert_eq!(got.left, left, "{what}");
            assert_eq!(String::from_utf8_lossy(&up), sent, "{what}");
        }
        let long = [&b"+OK "[..], &[b'x'; MAX_LINE - 4]].concat();
        let (got, up) = server(&long);
        assert_eq!(got.step, bad);
        assert!(up.is_empty());
        // A long reply to USER is relayed without waiting for its end.
        let long_reply = [&b"+OK\r\n"[..], &[b'x'; MAX_LINE]].concat();
        let (got, _) = server(&long_reply);
        assert_eq!(got.step, Next::Relay);
        assert_eq!(got.left, &long_reply[5..]);
    }

    #[test]
    fn failures() {
        let cases = [
            (Failure::Denied, "-ERR access denied\r\n"),
            (Failure::Limit, "-ERR too many connections\r\n"),
            (
                Failure::Refused,
                "-ERR cannot reach mail server 127.0.0.1:1110\r\n",
            ),
            (
                Failure::NotResolved,
                "-ERR cannot reach mail server 127.0.0.1:1110\r\n",
            ),
            (
                Failure::TimedOut,
                "-ERR cannot reach mail server 127.0.0.1:1110\r\n",
            ),
            (
                Failure::Other,
                "-ERR cannot reach mail server 127.0.0.1:1110\r\n",
            ),
        ];
        for (why, line) in cases {
            let mut r = Vec::new();
            connecting().failed(why, &mut r);
            assert_eq!(String::from_utf8_lossy(&r), line, "{why:?}");
        }
        // Refused at accept: nothing was asked yet.
        let mut r = Vec::new();
        Pop3::default().failed(Failure::Denied, &mut r);
        assert_eq!(r, b"-ERR access denied\r\n");
        r.clear();
        Pop3::default().failed(Failure::Limit, &mut r);
        assert_eq!(r, b"-ERR too many connections\r\n");
        // A name target is said as named.
        let mut p = connecting();
        p.target = Some(Target::Name("pop.example.com".into(), 110));
        r.clear();
        p.failed(Failure::Refused, &mut r);
        assert_eq!(r, b"-ERR cannot reach mail server pop.example.com:110\r\n");
        assert_eq!(Pop3::default().method(), "POP3");
    }
}
