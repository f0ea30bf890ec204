//! The FTP gateway (RFC 959, with RFC 2428's EPRT/EPSV): the client logs in
//! as `USER name@host[:port]`, the gateway logs in to that server as `name`
//! and then stays in the control connection, rewriting what carries data
//! addresses so that every data connection goes through a data port of its
//! own.
//!
//! # States and exits
//!
//! ```text
//! Login ──USER name@host[:port]──► Connecting ──connected──► Greeting
//!   │  ├─USER without @host (no destination) → 530, stay
//!   │  ├─USER with an empty host, a bad host or port → 501, stay
//!   │  ├─NOOP → 200; AUTH → 534; anything else → 530; stay
//!   │  ├─QUIT → 221, close ("quit")
//!   │  └─line over MAX_LINE → 500, close ("line-too-long")
//! Connecting ─failed─► 530 access denied | 421 too many connections | 421 cannot reach, close
//! Greeting ──server's complete 220 (multi-line aware; 120 first is skipped)──► UserReply,
//!   │         sends `USER name`
//!   └─any other reply, garbage or a line over MAX_LINE → 421 cannot reach, close ("unavailable")
//! UserReply ──server's complete reply, relayed byte for byte──► Control
//! Control: every line passes untouched (cleared with `fwd`), except
//!   client PORT/EPRT naming the client's own address → data port on the
//!       outside for the server → `PORT`/`EPRT` with the gateway's address
//!   client PORT/EPRT naming another address, or malformed → 500, dropped
//!   client AUTH → 534 (dropped); LPRT/LPSV → 502 (dropped); an empty line is dropped
//!   client line over MAX_LINE → 500 line too long, close ("line-too-long")
//!   server 227/229 → data port on the inside for the client → 227/229
//!       with the gateway's address; a port that cannot be opened → 425
//!   server line over MAX_LINE → streamed through unexamined
//! ```
//!
//! # Decisions
//!
//! - **Where data goes.** A passive reply's address is ignored: the data
//!   port connects to the *server's control address* at the reply's port
//!   (NAT-safe, and the server cannot send the gateway elsewhere). An
//!   active command must name the control client's own address (anything
//!   else is an FTP bounce attempt: `500 illegal PORT command`), and the data
//!   port connects back to that address. Each data port accepts one
//!   connection, from the session's own client (passive) or server (active).
//! - **Held lines.** A line that needs a data port is taken off the stream
//!   and everything behind it waits until the table says the port is open
//!   (or failed). So at most one line per direction is held and at most
//!   two data ports are pending; a second PASV (or PORT) replaces the first
//!   unused port (one token per direction).
//! - **Order of local answers.** Answers the gateway makes itself in the
//!   control phase (500, 502, 534, 425 for PORT) are put in the reply stream
//!   after the server's replies to the commands sent before them: the
//!   machine counts commands forwarded and final replies (2xx–5xx) seen, and
//!   puts an answer in only at a reply boundary, never inside a multi-line
//!   reply.
//! - **TLS.** `AUTH TLS`/`AUTH SSL` would make the control channel opaque,
//!   and the gateway could no longer rewrite PASV or PORT, so every data
//!   connection would fail; it is answered `534 TLS is not supported
//!   through this gateway`, before and after login, and not forwarded.
//!   Clients that only *try* TLS (curl's `--ssl`) go on in the clear.
//! - **Before login** the gateway cannot speak for a server it has not
//!   reached: `FEAT`, `SYST`, `HELP` and the rest get `530 please log in with
//!   USER name@host` (clients ask again after login); `NOOP` gets `200`.
//! - **USER without @host** uses the service's `destination` when one is
//!   configured; otherwise it is answered 530.
//! - **Next login** `USER` and `REIN` pass through to the same server; the
//!   server cannot be changed within a session.
//! - **IPv6.** A 227 reply can only carry an IPv4 address: a client that
//!   reached the gateway over IPv6 gets 425 for it (IPv6 clients use EPSV).
//!   Toward a server reached over IPv6 an active command is sent as `EPRT
//!   |2|…|`, otherwise as `PORT`.
//! - **Bounds.** Lines are at most [`MAX_LINE`] bytes. Moving cleared bytes
//!   ahead of a rewritten line copies at most [`FLUSH_MAX`] bytes into a
//!   direction's prefix; past that the line waits for the next call.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::simple::destination_target;
use super::{Addresses, Control, DataPort, Dir, Failure, Next, Outcome, Protocol, Scope, Target};

/// The longest command or reply line, CRLF included.
pub const MAX_LINE: usize = 4096;
/// The most bytes moved from a buffer into its direction's prefix (and
/// waiting there) so that a rewritten line can be said in order.
pub const FLUSH_MAX: usize = 2 * MAX_LINE;
/// Local answers waiting for the server's replies to earlier commands.
const MAX_OWED: usize = 8;
/// The data port of a passive reply (for the client) and of an active
/// command (for the server).
const PASSIVE: u32 = 1;
const ACTIVE: u32 = 2;

const GREETING: &str = "220 portico FTP gateway ready\r\n";
const LOGIN_FIRST: &str = "530 please log in with USER name@host\r\n";
const BYE: &str = "221 bye\r\n";
const NOOP_OK: &str = "200 NOOP ok\r\n";
const NO_TLS: &str = "534 TLS is not supported through this gateway\r\n";
const TOO_LONG: &str = "500 line too long\r\n";
const DENIED: &str = "530 access denied\r\n";
const LIMIT: &str = "421 too many connections, try again later\r\n";
const NO_DATA: &str = "425 cannot open data connection\r\n";
const BAD_PORT: &str = "500 illegal PORT command\r\n";
const BAD_EPRT: &str = "500 illegal EPRT command\r\n";
const NO_LONG: &str =
    "502 LPRT and LPSV are not supported through this gateway; use EPRT or EPSV\r\n";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Login,
    Connecting,
    Greeting,
    UserReply,
    Control,
    Done,
}

/// A passive reply waiting for its data port: which form to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passive {
    Pasv,
    Epsv,
}

/// What one line of the server's is, in the reply structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The last line of a reply with this code.
    End(u16),
    /// The first or a middle line of a multi-line reply.
    Inside,
    /// Not a reply line (outside any multi-line reply).
    Bad,
}

/// Where the server's reply stream is: inside a multi-line reply (its code)
/// or between replies.
#[derive(Debug, Default, Clone, Copy)]
struct Replies {
    open: Option<[u8; 3]>,
}

impl Replies {
    fn classify(&self, line: &[u8]) -> (Line, Option<[u8; 3]>) {
        let code: Option<[u8; 3]> = line
            .get(..3)
            .filter(|c| c.iter().all(u8::is_ascii_digit))
            .map(|c| [c[0], c[1], c[2]]);
        let sep = line.get(3).copied();
        let value = |c: [u8; 3]| {
            u16::from(c[0] - b'0') * 100 + u16::from(c[1] - b'0') * 10 + u16::from(c[2] - b'0')
        };
        match self.open {
            Some(open) => {
                if code == Some(open) && sep == Some(b' ') {
                    (Line::End(value(open)), None)
                } else {
                    (Line::Inside, Some(open))
                }
            }
            None => match (code, sep) {
                (Some(c), Some(b'-')) => (Line::Inside, Some(c)),
                (Some(c), Some(b' ' | b'\r' | b'\n') | None) => (Line::End(value(c)), None),
                _ => (Line::Bad, None),
            },
        }
    }

    /// Takes `line` into account and says what it was.
    fn line(&mut self, line: &[u8]) -> Line {
        let (kind, open) = self.classify(line);
        self.open = open;
        kind
    }

    fn between(&self) -> bool {
        self.open.is_none()
    }
}

/// The FTP gateway's machine: login, then the control connection.
#[derive(Debug, Default)]
pub struct Ftp {
    phase: Phase,
    /// The name to log in to the server with.
    user: String,
    target: Option<Target>,
    replies: Replies,
    /// The addresses of the control connection, as of the last call.
    ends: Option<Addresses>,
    /// A server reply (227/229) waits for the client's data port.
    down_hold: Option<Passive>,
    /// A client command (PORT/EPRT) waits for the server's data port.
    up_hold: bool,
    /// Passing the rest of an overlong server line.
    down_long: bool,
    /// Local answers: (commands forwarded before it, the line).
    owed: VecDeque<(u64, &'static str)>,
    /// Commands forwarded to the server, and final replies seen from it.
    sent: u64,
    answered: u64,
}

fn close(outcome: Outcome) -> Next {
    Next::Close(outcome)
}

/// The position of the first `\n` within the first [`MAX_LINE`] bytes.
fn line_end(b: &[u8]) -> Option<usize> {
    b.iter().take(MAX_LINE).position(|&c| c == b'\n')
}

/// A line without its line ending.
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A command line's verb (upper-cased) and argument (after the first space).
fn command(line: &[u8]) -> (Vec<u8>, &[u8]) {
    let line = trim_eol(line);
    let (verb, arg) = match line.iter().position(|&c| c == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    (verb.to_ascii_uppercase(), arg)
}

fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 address; port 21 by default.
fn host_port(s: &str) -> Result<Target, &'static str> {
    const BAD_HOST: &str = "501 bad host name in USER name@host\r\n";
    const BAD_PORT: &str = "501 bad port in USER name@host:port\r\n";
    const NO_HOST: &str = "501 no ftp server named after @ in USER name@host\r\n";
    if s.is_empty() {
        return Err(NO_HOST);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or(BAD_HOST)?;
        let ip: Ipv6Addr = h.parse().map_err(|_| BAD_HOST)?;
        let port = match after {
            "" => 21,
            p => port_number(p.strip_prefix(':').ok_or(BAD_HOST)?).ok_or(BAD_PORT)?,
        };
        return Ok(Target::Addr(SocketAddr::new(ip.into(), port)));
    }
    if s.matches(':').count() > 1 {
        let ip: Ipv6Addr = s.parse().map_err(|_| BAD_HOST)?;
        return Ok(Target::Addr(SocketAddr::new(ip.into(), 21)));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, port_number(p).ok_or(BAD_PORT)?),
        None => (s, 21),
    };
    if host.is_empty() {
        return Err(NO_HOST);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Target::Addr(SocketAddr::new(ip.into(), port)));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !ok {
        return Err(BAD_HOST);
    }
    Ok(Target::Name(host.to_ascii_lowercase(), port))
}

/// Numbers separated by commas: `h1,h2,h3,h4,p1,p2` → (address, port).
fn six_numbers(s: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let s = std::str::from_utf8(s).ok()?;
    let mut n = [0u8; 6];
    let mut parts = s.split(',');
    for v in n.iter_mut() {
        let p = parts.next()?.trim();
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *v = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let port = u16::from(n[4]) * 256 + u16::from(n[5]);
    (port != 0).then(|| (Ipv4Addr::new(n[0], n[1], n[2], n[3]), port))
}

/// The port of a `227` reply: the first run of six comma-separated numbers
/// after the code, in any of the forms servers use (`(h,h,h,h,p,p)`,
/// `=h,h,h,h,p,p`, bare).
fn parse_227(line: &[u8]) -> Option<u16> {
    let text = trim_eol(line).get(4..)?;
    let start = text.iter().position(u8::is_ascii_digit)?;
    let rest = &text[start..];
    let end = rest
        .iter()
        .position(|&c| !(c.is_ascii_digit() || c == b',' || c == b' '))
        .unwrap_or(rest.len());
    six_numbers(rest[..end].trim_ascii_end()).map(|(_, port)| port)
}

/// The port of a `229` reply: `(|||port|)` with any delimiter.
fn parse_229(line: &[u8]) -> Option<u16> {
    let text = trim_eol(line).get(4..)?;
    let open = text.iter().position(|&c| c == b'(')?;
    let inner = &text[open + 1..];
    let close = inner.iter().position(|&c| c == b')')?;
    let inner = &inner[..close];
    let d = *inner.first()?;
    if !(33..=126).contains(&d) || d.is_ascii_digit() {
        return None;
    }
    let fields: Vec<&[u8]> = inner.split(|&c| c == d).collect();
    match fields.as_slice() {
        [a, b, c, port, e] if a.is_empty() && b.is_empty() && c.is_empty() && e.is_empty() => {
            port_number(std::str::from_utf8(port).ok()?)
        }
        _ => None,
    }
}

/// `PORT h1,h2,h3,h4,p1,p2`.
fn parse_port(arg: &[u8]) -> Option<SocketAddr> {
    six_numbers(arg.trim_ascii()).map(|(ip, port)| SocketAddr::new(ip.into(), port))
}

/// `EPRT |1|a.b.c.d|port|` or `EPRT |2|v6|port|`, with any delimiter.
fn parse_eprt(arg: &[u8]) -> Option<SocketAddr> {
    let arg = std::str::from_utf8(arg.trim_ascii()).ok()?;
    let d = arg.chars().next()?;
    if !(33..=126).contains(&(d as u32)) || d.is_ascii_digit() {
        return None;
    }
    let fields: Vec<&str> = arg.split(d).collect();
    let [first, proto, addr, port, last] = fields.as_slice() else {
        return None;
    };
    if !first.is_empty() || !last.is_empty() {
        return None;
    }
    let ip: IpAddr = match *proto {
        "1" => addr.parse::<Ipv4Addr>().ok()?.into(),
        "2" => addr.parse::<Ipv6Addr>().ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port_number(port)?))
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn ipv4_of(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip.to_canonical() {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

/// The address to announce for a data port: where it listens, or (if it
/// listens on a wildcard) the address the peer already reaches.
fn announced(local: SocketAddr, fallback: Option<IpAddr>) -> IpAddr {
    match (local.ip().is_unspecified(), fallback) {
        (true, Some(f)) => f,
        _ => local.ip(),
    }
}

fn pasv_reply(ip: Ipv4Addr, port: u16) -> String {
    let o = ip.octets();
    format!(
        "227 Entering Passive Mode ({},{},{},{},{},{})\r\n",
        o[0],
        o[1],
        o[2],
        o[3],
        port >> 8,
        port & 0xff
    )
}

fn epsv_reply(port: u16) -> String {
    format!("229 Entering Extended Passive Mode (|||{port}|)\r\n")
}

/// The active command toward the server: PORT over IPv4, EPRT over IPv6.
fn port_command(ip: IpAddr, port: u16) -> String {
    match ipv4_of(ip) {
        Some(v) => {
            let o = v.octets();
            format!(
                "PORT {},{},{},{},{},{}\r\n",
                o[0],
                o[1],
                o[2],
                o[3],
                port >> 8,
                port & 0xff
            )
        }
        None => format!("EPRT |2|{ip}|{port}|\r\n"),
    }
}

// --- The directions, as the table keeps them (see `Control`).

fn data(d: &Dir) -> &[u8] {
    d.buf.as_ref().map_or(&[][..], |b| b.data())
}

fn cleared(d: &Dir) -> usize {
    d.fwd.unwrap_or(0).min(data(d).len())
}

fn clear(d: &mut Dir, n: usize) {
    d.fwd = Some(n);
}

fn pending_prefix(d: &Dir) -> usize {
    d.prefix.len().saturating_sub(d.prefix_pos)
}

/// Moves the bytes cleared in `d` into its prefix, so that what is said
/// next comes after them; false if that would hold more than [`FLUSH_MAX`].
fn flush(d: &mut Dir) -> bool {
    let f = cleared(d);
    // Checked even when nothing is cleared: what is said next must not
    // pile up behind a sink that does not read.
    if pending_prefix(d) + f > FLUSH_MAX {
        return false;
    }
    if f == 0 {
        d.fwd = Some(0);
        return true;
    }
    if d.prefix_pos >= d.prefix.len() {
        d.prefix.clear();
        d.prefix_pos = 0;
    }
    if let Some(b) = d.buf.as_mut() {
        d.prefix.extend_from_slice(&b.data()[..f]);
        b.consume(f);
    }
    d.fwd = Some(0);
    true
}

/// A partial line fills the whole buffer (a `buffer` smaller than
/// [`MAX_LINE`]): it can never be completed, so it counts as too long.
fn stuck(d: &Dir, cleared: usize) -> bool {
    cleared == 0 && !d.has_space()
}

/// Drops `n` bytes off the front of `d` (whose cleared part is empty).
fn drop_front(d: &mut Dir, n: usize) {
    if let Some(b) = d.buf.as_mut() {
        b.consume(n);
    }
    d.fwd = Some(0);
}

impl Ftp {
    /// One command before login; returns the step it leads to.
    fn login_line(&mut self, line: &[u8], reply: &mut Vec<u8>, scope: &Scope) -> Next {
        let (verb, arg) = command(line);
        match verb.as_slice() {
            b"USER" => match self.user_line(arg, scope) {
                Ok(step) => step,
                Err(msg) => {
                    reply.extend_from_slice(msg.as_bytes());
                    Next::Wait
                }
            },
            b"QUIT" => {
                reply.extend_from_slice(BYE.as_bytes());
                self.phase = Phase::Done;
                close(Outcome::Quit)
            }
            b"NOOP" => {
                reply.extend_from_slice(NOOP_OK.as_bytes());
                Next::Wait
            }
            b"AUTH" => {
                reply.extend_from_slice(NO_TLS.as_bytes());
                Next::Wait
            }
            _ => {
                reply.extend_from_slice(LOGIN_FIRST.as_bytes());
                Next::Wait
            }
        }
    }

    fn user_line(&mut self, arg: &[u8], scope: &Scope) -> Result<Next, &'static str> {
        let arg = std::str::from_utf8(arg).map_err(|_| "501 bad user name\r\n")?;
        let (name, target) = match arg.rsplit_once('@') {
            Some((name, host)) => (name, host_port(host)?),
            None => match &scope.service.destination {
                Some(d) => (arg, destination_target(d)),
                None => return Err(LOGIN_FIRST),
            },
        };
        if name.is_empty() {
            return Err("501 empty user name\r\n");
        }
        if name.chars().any(char::is_control) {
            return Err("501 bad user name\r\n");
        }
        self.user = name.to_string();
        self.target = Some(target.clone());
        self.phase = Phase::Connecting;
        // The name is the FTP server's to check, not Portico's: it is
        // logged (log_user) but no rule sees it as an authenticated user.
        Ok(Next::Connect { target, user: None })
    }

    fn unreachable(&self) -> String {
        match &self.target {
            Some(t) => format!("421 cannot reach ftp server {t}\r\n"),
            None => "421 cannot reach ftp server\r\n".to_string(),
        }
    }

    /// Runs both directions until neither moves.
    fn pump(&mut self, up: &mut Dir, down: &mut Dir, mut todo: Option<&mut Vec<Next>>) {
        while self.phase == Phase::Control {
            let a = self.pump_down(down, todo.as_deref_mut());
            if self.phase != Phase::Control {
                return;
            }
            let b = self.pump_up(up, down, todo.as_deref_mut());
            if !a && !b {
                return;
            }
        }
    }

    /// A server reply was final (2xx–5xx): one more command answered.
    fn answer_seen(&mut self, code: u16) {
        if code >= 200 && self.answered < self.sent {
            self.answered += 1;
        }
    }

    /// The server's lines; returns whether anything moved.
    fn pump_down(&mut self, down: &mut Dir, mut todo: Option<&mut Vec<Next>>) -> bool {
        let mut moved = false;
        loop {
            if self.down_hold.is_some() {
                return moved;
            }
            if self.replies.between() && !self.down_long {
                while let Some(&(mark, msg)) = self.owed.front() {
                    if self.answered < mark || !flush(down) {
                        break;
                    }
                    down.say(msg.as_bytes());
                    self.owed.pop_front();
                    moved = true;
                }
            }
            let f = cleared(down);
            let rest = &data(down)[f..];
            if rest.is_empty() {
                return moved;
            }
            if self.down_long {
                match rest.iter().position(|&c| c == b'\n') {
                    Some(i) => {
                        clear(down, f + i + 1);
                        self.down_long = false;
                    }
                    None => clear(down, f + rest.len()),
                }
                moved = true;
                continue;
            }
            let Some(i) = line_end(rest) else {
                if rest.len() < MAX_LINE && !stuck(down, f) {
                    return moved;
                }
                // Too long to be a reply that matters: it streams through.
                if let Line::End(code) = self.replies.line(rest) {
                    self.answer_seen(code);
                }
                self.down_long = true;
                clear(down, f + rest.len());
                moved = true;
                continue;
            };
            let line = &rest[..=i];
            let (kind, _) = self.replies.classify(line);
            let special = match kind {
                Line::End(227) => parse_227(line).map(|p| (Passive::Pasv, p)),
                Line::End(229) => parse_229(line).map(|p| (Passive::Epsv, p)),
                _ => None,
            };
            let Some((form, port)) = special else {
                let len = line.len();
                if let Line::End(code) = self.replies.line(line) {
                    self.answer_seen(code);
                }
                clear(down, f + len);
                moved = true;
                continue;
            };
            let (Some(todo), Some(ends)) = (todo.as_deref_mut(), self.ends) else {
                return moved;
            };
            let len = line.len();
            if !flush(down) {
                return moved;
            }
            drop_front(down, len);
            self.replies.open = None;
            self.answer_seen(227);
            moved = true;
            if form == Passive::Pasv && ipv4_of(ends.client_local.ip()).is_none() {
                down.say(NO_DATA.as_bytes());
                continue;
            }
            todo.push(Next::OpenData(DataPort {
                token: PASSIVE,
                bind: ends.client_local.ip(),
                accept_from: ends.client.ip(),
                connect_to: SocketAddr::new(ends.server.ip(), port),
            }));
            self.down_hold = Some(form);
        }
    }

    /// The client's lines; returns whether anything moved.
    fn pump_up(&mut self, up: &mut Dir, down: &mut Dir, todo: Option<&mut Vec<Next>>) -> bool {
        let mut moved = false;
        let mut todo = todo;
        loop {
            if self.up_hold || self.phase != Phase::Control {
                return moved;
            }
            let f = cleared(up);
            let rest = &data(up)[f..];
            if rest.is_empty() {
                return moved;
            }
            let Some(i) = line_end(rest) else {
                if rest.len() < MAX_LINE && !stuck(up, f) {
                    return moved;
                }
                let Some(todo) = todo.as_deref_mut() else {
                    return moved;
                };
                flush(down);
                down.say(TOO_LONG.as_bytes());
                todo.push(Next::Close(Outcome::LineTooLong));
                self.phase = Phase::Done;
                return true;
            };
            let line = &rest[..=i];
            let len = line.len();
            let (verb, arg) = command(line);
            let local = match verb.as_slice() {
                b"" => None,
                b"AUTH" => Some(NO_TLS),
                b"LPRT" | b"LPSV" => Some(NO_LONG),
                b"PORT" | b"EPRT" => {
                    let extended = verb == b"EPRT";
                    let asked = if extended {
                        parse_eprt(arg)
                    } else {
                        parse_port(arg)
                    };
                    let Some(ends) = self.ends else {
                        return moved;
                    };
                    match asked {
                        Some(a) if same_ip(a.ip(), ends.client.ip()) => {
                            let Some(todo) = todo.as_deref_mut() else {
                                return moved;
                            };
                            if self.owed.len() >= MAX_OWED || !flush(up) {
                                return moved;
                            }
                            drop_front(up, len);
                            todo.push(Next::OpenData(DataPort {
                                token: ACTIVE,
                                bind: ends.server_local.ip(),
                                accept_from: ends.server.ip(),
                                connect_to: SocketAddr::new(ends.client.ip(), a.port()),
                            }));
                            self.up_hold = true;
                            moved = true;
                            continue;
                        }
                        _ if extended => Some(BAD_EPRT),
                        _ => Some(BAD_PORT),
                    }
                }
                _ => {
                    clear(up, f + len);
                    self.sent += 1;
                    moved = true;
                    continue;
                }
            };
            // Dropped, with or without a local answer.
            if (local.is_some() && self.owed.len() >= MAX_OWED) || !flush(up) {
                return moved;
            }
            drop_front(up, len);
            if let Some(msg) = local {
                self.owed.push_back((self.sent, msg));
            }
            moved = true;
        }
    }
}

impl Protocol for Ftp {
    /// Data ports toward the server open on the control connection's
    /// local address.
    fn uses_local(&self) -> bool {
        true
    }

    fn start(&mut self, reply: &mut Vec<u8>, _scope: &mut Scope) -> Next {
        reply.extend_from_slice(GREETING.as_bytes());
        Next::Wait
    }

    fn input(&mut self, input: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        let mut used = 0;
        while self.phase == Phase::Login {
            let rest = &input[used..];
            let Some(i) = line_end(rest) else {
                if rest.len() >= MAX_LINE {
                    reply.extend_from_slice(TOO_LONG.as_bytes());
                    self.phase = Phase::Done;
                    return (input.len(), close(Outcome::LineTooLong));
                }
                return (used, Next::Wait);
            };
            used += i + 1;
            match self.login_line(&rest[..=i], reply, scope) {
                Next::Wait => {}
                step => return (used, step),
            }
        }
        (used, Next::Wait)
    }

    fn connected(&mut self, _: SocketAddr, _: &mut Vec<u8>, _: &mut Vec<u8>) -> Next {
        self.phase = Phase::Greeting;
        self.replies = Replies::default();
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
            let Some(i) = line_end(rest) else {
                if rest.len() < MAX_LINE {
                    return (used, Next::Wait);
                }
                reply.extend_from_slice(self.unreachable().as_bytes());
                self.phase = Phase::Done;
                return (input.len(), Next::Close(Outcome::Unavailable));
            };
            let line = &rest[..=i];
            used += line.len();
            let kind = self.replies.line(line);
            match self.phase {
                Phase::Greeting => match kind {
                    Line::Inside | Line::End(120) => {}
                    Line::End(220) => {
                        to_server.extend_from_slice(b"USER ");
                        to_server.extend_from_slice(self.user.as_bytes());
                        to_server.extend_from_slice(b"\r\n");
                        self.phase = Phase::UserReply;
                    }
                    Line::End(_) | Line::Bad => {
                        reply.extend_from_slice(self.unreachable().as_bytes());
                        self.phase = Phase::Done;
                        return (input.len(), Next::Close(Outcome::Unavailable));
                    }
                },
                Phase::UserReply => {
                    reply.extend_from_slice(line);
                    if kind != Line::Inside {
                        self.phase = Phase::Control;
                        self.replies = Replies::default();
                        return (used, Next::Relay);
                    }
                }
                _ => return (used - line.len(), Next::Relay),
            }
        }
    }

    fn failed(&mut self, why: Failure, reply: &mut Vec<u8>) {
        self.phase = Phase::Done;
        let line = match why {
            Failure::Denied | Failure::Quota => DENIED.to_string(),
            Failure::Limit => LIMIT.to_string(),
            _ => self.unreachable(),
        };
        reply.extend_from_slice(line.as_bytes());
    }

    fn method(&self) -> &'static str {
        "FTP"
    }

    fn log_user(&self) -> Option<String> {
        (!self.user.is_empty()).then(|| self.user.clone())
    }

    fn control(&mut self) -> Option<&mut dyn Control> {
        Some(self)
    }
}

impl Control for Ftp {
    fn from_client(
        &mut self,
        up: &mut Dir,
        down: &mut Dir,
        ends: &Addresses,
        todo: &mut Vec<Next>,
    ) {
        self.ends = Some(*ends);
        self.pump(up, down, Some(todo));
    }

    fn from_server(
        &mut self,
        up: &mut Dir,
        down: &mut Dir,
        ends: &Addresses,
        todo: &mut Vec<Next>,
    ) {
        self.ends = Some(*ends);
        self.pump(up, down, Some(todo));
    }

    fn data_listening(&mut self, token: u32, local: SocketAddr, up: &mut Dir, down: &mut Dir) {
        match token {
            PASSIVE => {
                let Some(form) = self.down_hold.take() else {
                    return;
                };
                let ip = announced(local, self.ends.map(|c| c.client_local.ip()));
                let line = match (form, ipv4_of(ip)) {
                    (Passive::Pasv, Some(v4)) => pasv_reply(v4, local.port()),
                    (Passive::Pasv, None) => NO_DATA.to_string(),
                    (Passive::Epsv, _) => epsv_reply(local.port()),
                };
                down.say(line.as_bytes());
            }
            ACTIVE => {
                if !std::mem::take(&mut self.up_hold) {
                    return;
                }
                let ip = announced(local, self.ends.map(|c| c.server_local.ip()));
                up.say(port_command(ip, local.port()).as_bytes());
                self.sent += 1;
            }
            _ => return,
        }
        self.pump(up, down, None);
    }

    fn data_failed(&mut self, token: u32, up: &mut Dir, down: &mut Dir) {
        match token {
            PASSIVE => {
                if self.down_hold.take().is_none() {
                    return;
                }
                down.say(NO_DATA.as_bytes());
            }
            ACTIVE => {
                if !std::mem::take(&mut self.up_hold) {
                    return;
                }
                self.owed.push_back((self.sent, NO_DATA));
            }
            _ => return,
        }
        self.pump(up, down, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::buffer::Pool;
    use crate::config;

    fn config(destination: Option<&str>) -> config::Config {
        let dest = destination
            .map(|d| format!("destination = \"{d}\"\n"))
            .unwrap_or_default();
        let text = format!("[[service]]\nname = \"f\"\nkind = \"ftp\"\nport = 2121\n{dest}");
        config::parse_unchecked_kinds(&text, "t").expect("config")
    }

    // ------------------------------------------------------------------
    // Before login.

    /// Feeds `input` as the table would, the bytes arriving in pieces that
    /// end at `cuts`; returns (step, reply, bytes consumed).
    fn login(input: &[u8], cuts: &[usize], destination: Option<&str>) -> (Next, String, usize) {
        let c = config(destination);
        let mut users = Users::new(&c.users, 1, std::time::Duration::ZERO);
        let mut detached = crate::proto::Detached::new();
        let mut scope = detached.scope(&c.services[0], &mut users);
        let mut f = Ftp::default();
        let mut reply = Vec::new();
        assert_eq!(f.start(&mut reply, &mut scope), Next::Wait);
        assert_eq!(reply, GREETING.as_bytes());
        reply.clear();
        let mut used = 0;
        let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
        ends.push(input.len());
        for have in ends {
            if have < used {
                continue;
            }
            let (n, step) = f.input(&input[used..have], &mut reply, &mut scope);
            used += n;
            if step != Next::Wait {
                return (step, String::from_utf8(reply).unwrap(), used);
            }
        }
        (Next::Wait, String::from_utf8(reply).unwrap(), used)
    }

    /// Every way of cutting `input` in two, and byte by byte.
    fn cuttings(input: &[u8]) -> Vec<Vec<usize>> {
        let mut all: Vec<Vec<usize>> = (0..=input.len()).map(|i| vec![i]).collect();
        all.push((1..input.len()).collect());
        all
    }

    fn connect(target: &str, user: &str) -> Next {
        let target = match target.parse::<SocketAddr>() {
            Ok(a) => Target::Addr(a),
            Err(_) => {
                let (h, p) = target.rsplit_once(':').unwrap();
                Target::Name(h.to_string(), p.parse().unwrap())
            }
        };
        let _ = user;
        Next::Connect { target, user: None }
    }

    #[test]
    fn login_phase() {
        type Case = (&'static str, &'static [u8], Next, &'static str);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("user at host", b"USER alice@ftp.example.com\r\n",
             connect("ftp.example.com:21", "alice"), ""),
            ("user at host:port", b"USER alice@10.0.0.1:2121\r\n",
             connect("10.0.0.1:2121", "alice"), ""),
            ("the last @ counts", b"USER me@example.com@ftp.example.com\r\n",
             connect("ftp.example.com:21", "me@example.com"), ""),
            ("verb in lower case, host upper case", b"user bob@FTP.Example.COM:21\r\n",
             connect("ftp.example.com:21", "bob"), ""),
            ("bare LF", b"USER bob@h\n", connect("h:21", "bob"), ""),
            ("IPv6 in brackets", b"USER bob@[2001:db8::1]:2121\r\n",
             connect("[2001:db8::1]:2121", "bob"), ""),
            ("bare IPv6", b"USER bob@2001:db8::1\r\n", connect("[2001:db8::1]:21", "bob"), ""),
            ("empty host", b"USER bob@\r\n", Next::Wait,
             "501 no ftp server named after @ in USER name@host\r\n"),
            ("empty host with port", b"USER bob@:21\r\n", Next::Wait,
             "501 no ftp server named after @ in USER name@host\r\n"),
            ("port 0", b"USER bob@h:0\r\n", Next::Wait, "501 bad port in USER name@host:port\r\n"),
            ("port too big", b"USER bob@h:65536\r\n", Next::Wait,
             "501 bad port in USER name@host:port\r\n"),
            ("port not a number", b"USER bob@h:ftp\r\n", Next::Wait,
             "501 bad port in USER name@host:port\r\n"),
            ("bad host", b"USER bob@a/b\r\n", Next::Wait, "501 bad host name in USER name@host\r\n"),
            ("empty name", b"USER @h\r\n", Next::Wait, "501 empty user name\r\n"),
            ("no @host", b"USER bob\r\n", Next::Wait, LOGIN_FIRST),
            ("PASS first", b"PASS x\r\n", Next::Wait, LOGIN_FIRST),
            ("FEAT", b"FEAT\r\n", Next::Wait, LOGIN_FIRST),
            ("SYST", b"SYST\r\n", Next::Wait, LOGIN_FIRST),
            ("NOOP", b"NOOP\r\n", Next::Wait, NOOP_OK),
            ("AUTH TLS", b"AUTH TLS\r\n", Next::Wait, NO_TLS),
            ("QUIT", b"QUIT\r\n", close(Outcome::Quit), BYE),
            ("quit in lower case", b"quit\r\n", close(Outcome::Quit), BYE),
            ("pipelined", b"NOOP\r\nFEAT\r\nUSER a@b\r\n", connect("b:21", "a"),
             "200 NOOP ok\r\n530 please log in with USER name@host\r\n"),
            ("QUIT ends before USER", b"QUIT\r\nUSER a@b\r\n", close(Outcome::Quit), BYE),
            ("a partial line waits", b"USER a@b", Next::Wait, ""),
        ];
        for (what, input, step, reply) in cases {
            for cuts in cuttings(input) {
                let (got, got_reply, _) = login(input, &cuts, None);
                assert_eq!(got, step, "{what} (cut at {cuts:?})");
                assert_eq!(got_reply, reply, "{what} (cut at {cuts:?})");
            }
        }
    }

    #[test]
    fn bytes_behind_user_are_left_for_the_server() {
        let input = b"USER a@b\r\nPASS secret\r\n";
        let (step, _, used) = login(input, &[], None);
        assert_eq!(step, connect("b:21", "a"));
        assert_eq!(used, 10);
    }

    #[test]
    fn user_without_host_uses_the_destination() {
        let (step, reply, _) = login(b"USER bob\r\n", &[], Some("ftp.example.net:2121"));
        assert_eq!(step, connect("ftp.example.net:2121", "bob"));
        assert_eq!(reply, "");
    }

    #[test]
    fn overlong_login_line_closes() {
        let mut input = b"USER ".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE));
        let (step, reply, _) = login(&input, &[], None);
        assert_eq!(step, close(Outcome::LineTooLong));
        assert_eq!(reply, TOO_LONG);
        // Just under the bound, a complete line is still a command.
        let mut input = b"USER ".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE - 9));
        input.extend_from_slice(b"@h\r\n");
        assert_eq!(input.len(), MAX_LINE);
        let (step, _, _) = login(&input, &[], None);
        assert!(matches!(step, Next::Connect { .. }), "{step:?}");
    }

    #[test]
    fn refusals() {
        let mut f = Ftp::default();
        let mut r = Vec::new();
        f.failed(Failure::Denied, &mut r);
        assert_eq!(r, DENIED.as_bytes());
        let mut r = Vec::new();
        Ftp::default().failed(Failure::Limit, &mut r);
        assert_eq!(r, LIMIT.as_bytes());
        for why in [
            Failure::Refused,
            Failure::TimedOut,
            Failure::NotResolved,
            Failure::HostUnreachable,
            Failure::Other,
        ] {
            let mut f = Ftp {
                target: Some(Target::Name("ftp.example.com".into(), 21)),
                ..Ftp::default()
            };
            let mut r = Vec::new();
            f.failed(why, &mut r);
            assert_eq!(
                r, b"421 cannot reach ftp server ftp.example.com:21\r\n",
                "{why:?}"
            );
        }
        assert_eq!(Ftp::default().method(), "FTP");
    }

    // ------------------------------------------------------------------
    // The server's greeting and the USER exchange.

    /// Runs the server handshake over `server` cut at `cuts`; returns
    /// (step, to the client, to the server, bytes left unconsumed).
    fn handshake(server: &[u8], cuts: &[usize]) -> (Next, Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut f = Ftp {
            phase: Phase::Connecting,
            user: "alice".into(),
            target: Some(Target::Addr("10.0.0.9:21".parse().unwrap())),
            ..Ftp::default()
        };
        let (mut reply, mut to_server) = (Vec::new(), Vec::new());
        let after = f.connected(
            "10.0.0.1:50000".parse().unwrap(),
            &mut reply,
            &mut to_server,
        );
        assert_eq!(after, Next::Converse);
        assert!(reply.is_empty() && to_server.is_empty());
        let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < server.len()).collect();
        ends.push(server.len());
        let mut used = 0;
        let mut step = Next::Wait;
        for have in ends {
            if have < used {
                continue;
            }
            let (n, s) = f.upstream(&server[used..have], &mut reply, &mut to_server);
            used += n;
            step = s;
            if step != Next::Wait {
                break;
            }
        }
        (step, reply, to_server, server[used..].to_vec())
    }

    #[test]
    fn server_handshake() {
        let unreachable = "421 cannot reach ftp server 10.0.0.9:21\r\n";
        let unavailable = Next::Close(Outcome::Unavailable);
        type Case = (
            &'static str,
            &'static [u8],
            Next,
            &'static str,
            &'static str,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("plain", b"220 hello\r\n331 Password required\r\n",
             Next::Relay, "331 Password required\r\n", "USER alice\r\n"),
            ("multi-line greeting", b"220-Welcome\r\n220-to the server\r\n220 ready\r\n331 Password required for alice\r\n",
             Next::Relay, "331 Password required for alice\r\n", "USER alice\r\n"),
            ("a continuation line that looks like a reply", b"220-Welcome\r\n530 not the end\r\n220 ready\r\n331 pw\r\n",
             Next::Relay, "331 pw\r\n", "USER alice\r\n"),
            ("120 then 220", b"120 wait a minute\r\n220 ready\r\n230 logged in\r\n",
             Next::Relay, "230 logged in\r\n", "USER alice\r\n"),
            ("multi-line USER reply relayed byte for byte", b"220 hi\r\n331-Password\r\n331 required\n",
             Next::Relay, "331-Password\r\n331 required\n", "USER alice\r\n"),
            ("server refuses", b"421 too busy\r\n", unavailable.clone(), unreachable, ""),
            ("server speaks nonsense", b"hello\r\n", unavailable.clone(), unreachable, ""),
            ("greeting incomplete", b"220-Welcome\r\n220 rea", Next::Wait, "", ""),
            ("USER reply incomplete", b"220 hi\r\n331 Pass", Next::Wait, "", "USER alice\r\n"),
        ];
        for (what, server, step, reply, to_server) in cases {
            for cuts in cuttings(server) {
                let (got, got_reply, got_server, _) = handshake(server, &cuts);
                assert_eq!(got, step, "{what} (cut at {cuts:?})");
                assert_eq!(
                    String::from_utf8_lossy(&got_reply),
                    reply,
                    "{what} (cut at {cuts:?})"
                );
                assert_eq!(
                    String::from_utf8_lossy(&got_server),
                    to_server,
                    "{what} (cut at {cuts:?})"
                );
            }
        }
    }

    #[test]
    fn bytes_behind_the_user_reply_are_left_for_control() {
        let (step, _, _, left) = handshake(b"220 hi\r\n331 pw\r\n200 extra\r\n", &[]);
        assert_eq!(step, Next::Relay);
        assert_eq!(left, b"200 extra\r\n");
    }

    #[test]
    fn overlong_greeting_line_closes() {
        let mut server = b"220 ".to_vec();
        server.extend(std::iter::repeat_n(b'x', MAX_LINE));
        let (step, reply, _, _) = handshake(&server, &[]);
        assert_eq!(step, Next::Close(Outcome::Unavailable));
        assert_eq!(reply, b"421 cannot reach ftp server 10.0.0.9:21\r\n");
    }

    // ------------------------------------------------------------------
    // The control connection, with a stand-in for the table.

    const CLIENT: &str = "192.168.1.5:40000";
    const CLIENT_LOCAL: &str = "192.168.1.1:2121";
    const SERVER: &str = "203.0.113.7:21";
    const SERVER_LOCAL: &str = "203.0.113.5:50000";

    fn ctx() -> Addresses {
        Addresses {
            client: CLIENT.parse().unwrap(),
            client_local: CLIENT_LOCAL.parse().unwrap(),
            server: SERVER.parse().unwrap(),
            server_local: SERVER_LOCAL.parse().unwrap(),
        }
    }

    /// What the table does for a session in `State::Control`: it keeps the
    /// two directions, writes what they clear (at once, unless `lazy`), and
    /// opens data ports (at once with port 40000 + n, unless `manual` or
    /// `fail`).
    struct Table {
        ftp: Ftp,
        up: Dir,
        down: Dir,
        pool: Pool,
        ctx: Addresses,
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        opened: Vec<Next>,
        closed: Option<Outcome>,
        lazy: bool,
        manual: bool,
        fail: bool,
    }

    impl Table {
        fn new() -> Table {
            Table::with_buffer(64 * 1024)
        }

        fn with_buffer(size: usize) -> Table {
            Table {
                ftp: Ftp {
                    phase: Phase::Control,
                    ..Ftp::default()
                },
                up: Dir {
                    fwd: Some(0),
                    ..Dir::default()
                },
                down: Dir {
                    fwd: Some(0),
                    ..Dir::default()
                },
                pool: Pool::new(size, 4),
                ctx: ctx(),
                to_server: Vec::new(),
                to_client: Vec::new(),
                opened: Vec::new(),
                closed: None,
                lazy: false,
                manual: false,
                fail: false,
            }
        }

        fn client(&mut self, bytes: &[u8]) {
            self.feed(true, bytes);
        }

        fn server(&mut self, bytes: &[u8]) {
            self.feed(false, bytes);
        }

        fn feed(&mut self, from_client: bool, bytes: &[u8]) {
            if self.closed.is_some() {
                return;
            }
            let d = if from_client {
                &mut self.up
            } else {
                &mut self.down
            };
            let pushed = d.buf.get_or_insert_with(|| self.pool.take()).push(bytes);
            assert_eq!(pushed, bytes.len(), "the test overfilled a buffer");
            let mut todo = Vec::new();
            if from_client {
                self.ftp
                    .from_client(&mut self.up, &mut self.down, &self.ctx, &mut todo);
            } else {
                self.ftp
                    .from_server(&mut self.up, &mut self.down, &self.ctx, &mut todo);
            }
            self.todo(todo);
        }

        fn todo(&mut self, todo: Vec<Next>) {
            for t in todo {
                match t {
                    Next::Close(outcome) => self.closed = Some(outcome),
                    open @ Next::OpenData(_) => {
                        self.opened.push(open.clone());
                        if !self.manual {
                            self.answer_last();
                        }
                    }
                    other => panic!("a control machine asked for {other:?}"),
                }
            }
            if !self.lazy {
                self.write();
            }
        }

        /// The table reports on the last data port asked for.
        fn answer_last(&mut self) {
            let Some(Next::OpenData(DataPort { token, bind, .. })) = self.opened.last().cloned()
            else {
                panic!("no data port was asked for");
            };
            if self.fail {
                self.ftp.data_failed(token, &mut self.up, &mut self.down);
            } else {
                let local = SocketAddr::new(bind, 40000 + self.opened.len() as u16);
                self.ftp
                    .data_listening(token, local, &mut self.up, &mut self.down);
            }
            if !self.lazy {
                self.write();
            }
        }

        /// Writes everything each direction has cleared, a few bytes at a
        /// time.
        fn write(&mut self) {
            for (d, sink) in [
                (&mut self.up, &mut self.to_server),
                (&mut self.down, &mut self.to_client),
            ] {
                loop {
                    let out = d.out();
                    if out.is_empty() {
                        break;
                    }
                    let n = out.len().min(5);
                    sink.extend_from_slice(&out[..n]);
                    assert_eq!(d.written(n), n);
                }
            }
        }

        fn server_text(&self) -> String {
            String::from_utf8_lossy(&self.to_server).into_owned()
        }

        fn client_text(&self) -> String {
            String::from_utf8_lossy(&self.to_client).into_owned()
        }
    }

    fn open(token: u32, bind: &str, from: &str, to: &str) -> Next {
        Next::OpenData(DataPort {
            token,
            bind: bind.parse().unwrap(),
            accept_from: from.parse().unwrap(),
            connect_to: to.parse().unwrap(),
        })
    }

    /// One control exchange: what each side sends, in order, and what the
    /// other side must have received at the end.
    struct Exchange {
        what: &'static str,
        steps: Vec<(bool, &'static [u8])>,
        to_server: &'static str,
        to_client: &'static str,
        opened: Vec<Next>,
    }

    fn c(b: &'static [u8]) -> (bool, &'static [u8]) {
        (true, b)
    }

    fn s(b: &'static [u8]) -> (bool, &'static [u8]) {
        (false, b)
    }

    fn exchanges() -> Vec<Exchange> {
        let passive = || open(PASSIVE, "192.168.1.1", "192.168.1.5", "203.0.113.7:1025");
        let active = || open(ACTIVE, "203.0.113.5", "203.0.113.7", "192.168.1.5:1025");
        vec![
            Exchange {
                what: "plain lines pass untouched",
                steps: vec![c(b"PASS secret\r\n"), s(b"230 Logged in\r\n"), c(b"TYPE I\r\n"), s(b"200 ok\r\n")],
                to_server: "PASS secret\r\nTYPE I\r\n",
                to_client: "230 Logged in\r\n200 ok\r\n",
                opened: vec![],
            },
            Exchange {
                what: "pipelined commands pass untouched",
                steps: vec![c(b"PASS secret\r\nSYST\r\nPWD\r\n"), s(b"230 ok\r\n215 UNIX\r\n257 \"/\"\r\n")],
                to_server: "PASS secret\r\nSYST\r\nPWD\r\n",
                to_client: "230 ok\r\n215 UNIX\r\n257 \"/\"\r\n",
                opened: vec![],
            },
            Exchange {
                what: "multi-line replies pass untouched",
                steps: vec![c(b"FEAT\r\n"), s(b"211-Features:\r\n EPSV\r\n MDTM\r\n211 End\r\n")],
                to_server: "FEAT\r\n",
                to_client: "211-Features:\r\n EPSV\r\n MDTM\r\n211 End\r\n",
                opened: vec![],
            },
            Exchange {
                what: "PASV reply rewritten to the gateway's port",
                steps: vec![c(b"PASV\r\n"), s(b"227 Entering Passive Mode (10,9,8,7,4,1)\r\n")],
                to_server: "PASV\r\n",
                to_client: "227 Entering Passive Mode (192,168,1,1,156,65)\r\n",
                opened: vec![passive()],
            },
            Exchange {
                what: "pyftpdlib's 227",
                steps: vec![c(b"PASV\r\n"), s(b"227 Entering passive mode (127,0,0,1,4,1).\r\n")],
                to_server: "PASV\r\n",
                to_client: "227 Entering Passive Mode (192,168,1,1,156,65)\r\n",
                opened: vec![passive()],
            },
            Exchange {
                what: "227 =h,h,h,h,p,p",
                steps: vec![c(b"PASV\r\n"), s(b"227 =10,9,8,7,4,1\r\n")],
                to_server: "PASV\r\n",
                to_client: "227 Entering Passive Mode (192,168,1,1,156,65)\r\n",
                opened: vec![passive()],
            },
            Exchange {
                what: "227 without parentheses",
                steps: vec![c(b"PASV\r\n"), s(b"227 Entering Passive Mode 10,9,8,7,4,1\r\n")],
                to_server: "PASV\r\n",
                to_client: "227 Entering Passive Mode (192,168,1,1,156,65)\r\n",
                opened: vec![passive()],
            },
            Exchange {
                what: "EPSV reply rewritten",
                steps: vec![c(b"EPSV\r\n"), s(b"229 Entering Extended Passive Mode (|||1025|)\r\n")],
                to_server: "EPSV\r\n",
                to_client: "229 Entering Extended Passive Mode (|||40001|)\r\n",
                opened: vec![passive()],
            },
            Exchange {
                what: "EPSV reply with another delimiter",
                steps: vec![c(b"EPSV\r\n"), s(b"229 ok (!!!1025!).\r\n")],
                to_server: "EPSV\r\n",
                to_client: "229 Entering Extended Passive Mode (|||40001|)\r\n",
                opened: vec![passive()],
            },
            Exchange {
                what: "a 227 that cannot be read passes as it is",
                steps: vec![c(b"PASV\r\n"), s(b"227 no numbers here\r\n")],
                to_server: "PASV\r\n",
                to_client: "227 no numbers here\r\n",
                opened: vec![],
            },
            Exchange {
                what: "a 227 line inside another multi-line reply is not a reply",
                steps: vec![c(b"HELP\r\n"), s(b"214-Help\r\n227 Entering Passive Mode (1,2,3,4,5,6)\r\n214 End\r\n")],
                to_server: "HELP\r\n",
                to_client: "214-Help\r\n227 Entering Passive Mode (1,2,3,4,5,6)\r\n214 End\r\n",
                opened: vec![],
            },
            Exchange {
                what: "PORT with the client's address",
                steps: vec![c(b"PORT 192,168,1,5,4,1\r\n"), s(b"200 PORT ok\r\n")],
                to_server: "PORT 203,0,113,5,156,65\r\n",
                to_client: "200 PORT ok\r\n",
                opened: vec![active()],
            },
            Exchange {
                what: "pipelined TYPE, PORT, RETR keep their order",
                steps: vec![c(b"TYPE I\r\nPORT 192,168,1,5,4,1\r\nRETR f\r\n"), s(b"200 a\r\n200 b\r\n150 c\r\n226 d\r\n")],
                to_server: "TYPE I\r\nPORT 203,0,113,5,156,65\r\nRETR f\r\n",
                to_client: "200 a\r\n200 b\r\n150 c\r\n226 d\r\n",
                opened: vec![active()],
            },
            Exchange {
                what: "EPRT |1|",
                steps: vec![c(b"EPRT |1|192.168.1.5|1025|\r\n"), s(b"200 ok\r\n")],
                to_server: "PORT 203,0,113,5,156,65\r\n",
                to_client: "200 ok\r\n",
                opened: vec![active()],
            },
            Exchange {
                what: "PORT naming another address is refused",
                steps: vec![c(b"PORT 10,0,0,1,0,25\r\nNOOP\r\n"), s(b"200 NOOP\r\n")],
                to_server: "NOOP\r\n",
                to_client: "500 illegal PORT command\r\n200 NOOP\r\n",
                opened: vec![],
            },
            Exchange {
                what: "EPRT naming another address is refused",
                steps: vec![c(b"EPRT |1|10.0.0.1|25|\r\n")],
                to_server: "",
                to_client: "500 illegal EPRT command\r\n",
                opened: vec![],
            },
            Exchange {
                what: "EPRT |2| from an IPv4 client is refused",
                steps: vec![c(b"EPRT |2|::1|1025|\r\n")],
                to_server: "",
                to_client: "500 illegal EPRT command\r\n",
                opened: vec![],
            },
            Exchange {
                what: "malformed PORT is refused",
                steps: vec![c(b"PORT 192,168,1,5,4\r\nPORT 192,168,1,5,0,0\r\nPORT 192,168,1,256,4,1\r\n")],
                to_server: "",
                to_client: "500 illegal PORT command\r\n500 illegal PORT command\r\n500 illegal PORT command\r\n",
                opened: vec![],
            },
            Exchange {
                what: "a local answer waits for the replies to earlier commands",
                steps: vec![c(b"NOOP\r\nPORT 10,0,0,1,0,25\r\nSTAT\r\n"), s(b"200 NOOP\r\n211-status\r\n"), s(b" more\r\n211 end\r\n")],
                to_server: "NOOP\r\nSTAT\r\n",
                to_client: "200 NOOP\r\n500 illegal PORT command\r\n211-status\r\n more\r\n211 end\r\n",
                opened: vec![],
            },
            Exchange {
                what: "preliminary replies do not count as answers",
                steps: vec![c(b"RETR f\r\nAUTH TLS\r\n"), s(b"150 opening\r\n"), s(b"226 done\r\n")],
                to_server: "RETR f\r\n",
                to_client: "150 opening\r\n226 done\r\n534 TLS is not supported through this gateway\r\n",
                opened: vec![],
            },
            Exchange {
                what: "AUTH is answered locally",
                steps: vec![c(b"AUTH TLS\r\n")],
                to_server: "",
                to_client: "534 TLS is not supported through this gateway\r\n",
                opened: vec![],
            },
            Exchange {
                what: "LPRT and LPSV are refused",
                steps: vec![c(b"LPSV\r\nLPRT 4,4,1,2,3,4,2,4,1\r\n")],
                to_server: "",
                to_client: "502 LPRT and LPSV are not supported through this gateway; use EPRT or EPSV\r\n\
                            502 LPRT and LPSV are not supported through this gateway; use EPRT or EPSV\r\n",
                opened: vec![],
            },
            Exchange {
                what: "empty lines are dropped",
                steps: vec![c(b"\r\nNOOP\r\n\n")],
                to_server: "NOOP\r\n",
                to_client: "",
                opened: vec![],
            },
            Exchange {
                what: "bytes behind a held reply wait for the data port",
                steps: vec![c(b"PASV\r\nLIST\r\n"), s(b"227 (10,9,8,7,4,1)\r\n150 here it comes\r\n226 done\r\n")],
                to_server: "PASV\r\nLIST\r\n",
                to_client: "227 Entering Passive Mode (192,168,1,1,156,65)\r\n150 here it comes\r\n226 done\r\n",
                opened: vec![passive()],
            },
        ]
    }

    /// Runs every exchange with each message cut at every byte (each piece
    /// fed as its own read), and with writes done at once or only at the end.
    #[test]
    fn control_exchanges() {
        for x in exchanges() {
            for lazy in [false, true] {
                let longest = x.steps.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
                for cut in 0..=longest {
                    let mut t = Table::new();
                    t.lazy = lazy;
                    for (from_client, bytes) in &x.steps {
                        let (a, b) = bytes.split_at(cut.min(bytes.len()));
                        for piece in [a, b] {
                            if !piece.is_empty() {
                                if *from_client {
                                    t.client(piece);
                                } else {
                                    t.server(piece);
                                }
                            }
                        }
                    }
                    t.write();
                    let what = format!("{} (cut at {cut}, lazy {lazy})", x.what);
                    assert_eq!(t.server_text(), x.to_server, "{what}: to the server");
                    assert_eq!(t.client_text(), x.to_client, "{what}: to the client");
                    assert_eq!(t.opened, x.opened, "{what}: data ports");
                    assert_eq!(t.closed, None, "{what}");
                }
                // And byte by byte.
                let mut t = Table::new();
                t.lazy = lazy;
                for (from_client, bytes) in &x.steps {
                    for b in bytes.chunks(1) {
                        if *from_client {
                            t.client(b);
                        } else {
                            t.server(b);
                        }
                    }
                }
                t.write();
                assert_eq!(t.server_text(), x.to_server, "{} byte by byte", x.what);
                assert_eq!(t.client_text(), x.to_client, "{} byte by byte", x.what);
            }
        }
    }

    #[test]
    fn passive_reply_waits_for_the_data_port() {
        let mut t = Table::new();
        t.manual = true;
        t.client(b"PASV\r\n");
        t.server(b"227 Entering Passive Mode (10,9,8,7,4,1)\r\n");
        t.server(b"150 early\r\n");
        assert_eq!(
            t.client_text(),
            "",
            "nothing passes before the port is open"
        );
        assert_eq!(
            t.opened,
            vec![open(
                PASSIVE,
                "192.168.1.1",
                "192.168.1.5",
                "203.0.113.7:1025"
            )]
        );
        t.answer_last();
        assert_eq!(
            t.client_text(),
            "227 Entering Passive Mode (192,168,1,1,156,65)\r\n150 early\r\n"
        );
        // A report for a port nobody waits for changes nothing.
        let mut up = Dir::default();
        let mut down = Dir::default();
        t.ftp
            .data_listening(PASSIVE, "1.2.3.4:5".parse().unwrap(), &mut up, &mut down);
        t.ftp.data_failed(ACTIVE, &mut up, &mut down);
        t.ftp.data_failed(99, &mut up, &mut down);
        assert!(up.prefix.is_empty() && down.prefix.is_empty());
    }

    #[test]
    fn active_command_waits_for_the_data_port() {
        let mut t = Table::new();
        t.manual = true;
        t.client(b"PORT 192,168,1,5,4,1\r\nRETR f\r\n");
        assert_eq!(t.server_text(), "");
        t.answer_last();
        assert_eq!(t.server_text(), "PORT 203,0,113,5,156,65\r\nRETR f\r\n");
    }

    #[test]
    fn data_ports_that_fail() {
        let mut t = Table::new();
        t.fail = true;
        t.client(b"PASV\r\n");
        t.server(b"227 Entering Passive Mode (10,9,8,7,4,1)\r\n");
        assert_eq!(t.client_text(), NO_DATA);
        let mut t = Table::new();
        t.fail = true;
        t.client(b"EPSV\r\n");
        t.server(b"229 (|||1025|)\r\n");
        assert_eq!(t.client_text(), NO_DATA);
        let mut t = Table::new();
        t.fail = true;
        t.client(b"PORT 192,168,1,5,4,1\r\nNOOP\r\n");
        t.server(b"200 NOOP\r\n");
        assert_eq!(t.server_text(), "NOOP\r\n");
        assert_eq!(
            t.client_text(),
            "425 cannot open data connection\r\n200 NOOP\r\n"
        );
    }

    #[test]
    fn ipv6_client_and_server() {
        let mut t = Table::new();
        t.ctx = Addresses {
            client: "[2001:db8::5]:40000".parse().unwrap(),
            client_local: "[2001:db8::1]:2121".parse().unwrap(),
            server: "[2001:db8:1::7]:21".parse().unwrap(),
            server_local: "[2001:db8:1::5]:50000".parse().unwrap(),
        };
        t.client(b"EPSV\r\n");
        t.server(b"229 Entering Extended Passive Mode (|||1025|)\r\n");
        assert_eq!(
            t.client_text(),
            "229 Entering Extended Passive Mode (|||40001|)\r\n"
        );
        t.client(b"PASV\r\n");
        t.server(b"227 Entering Passive Mode (10,9,8,7,4,1)\r\n");
        assert!(t.client_text().ends_with(NO_DATA), "{}", t.client_text());
        t.client(b"EPRT |2|2001:db8::5|1025|\r\n");
        assert!(
            t.server_text()
                .ends_with("EPRT |2|2001:db8:1::5|40002|\r\n"),
            "{}",
            t.server_text()
        );
        assert_eq!(
            t.opened.last(),
            Some(&open(
                ACTIVE,
                "2001:db8:1::5",
                "2001:db8:1::7",
                "[2001:db8::5]:1025"
            ))
        );
        // A client on a v4-mapped address names its plain IPv4 address.
        let mut t = Table::new();
        t.ctx.client = "[::ffff:192.168.1.5]:40000".parse().unwrap();
        t.client(b"PORT 192,168,1,5,4,1\r\n");
        assert_eq!(t.server_text(), "PORT 203,0,113,5,156,65\r\n");
    }

    #[test]
    fn overlong_client_line_closes() {
        let mut t = Table::new();
        t.client(b"NOOP\r\n");
        let long = vec![b'a'; MAX_LINE];
        t.client(&long);
        assert_eq!(t.closed, Some(Outcome::LineTooLong));
        assert_eq!(t.server_text(), "NOOP\r\n");
        assert_eq!(t.client_text(), TOO_LONG);
    }

    #[test]
    fn a_line_that_fills_a_small_buffer_is_too_long() {
        let mut t = Table::with_buffer(1024);
        t.server(&[b'x'; 1024]);
        assert_eq!(t.to_client.len(), 1024, "the server's line streams through");
        t.server(b"yy\r\n");
        assert_eq!(t.to_client.len(), 1028);
        t.client(&[b'a'; 1024]);
        assert_eq!(t.closed, Some(Outcome::LineTooLong));
        assert!(t.client_text().ends_with(TOO_LONG));
        // Under the bound a partial line waits.
        let mut t = Table::with_buffer(1024);
        t.client(&[b'a'; 1023]);
        assert_eq!(t.closed, None);
        assert_eq!(t.server_text(), "");
    }

    #[test]
    fn overlong_server_line_streams_through() {
        let mut t = Table::new();
        t.client(b"STAT\r\n");
        let mut long = b"211-".to_vec();
        long.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
        long.extend_from_slice(b"\r\n211 end\r\n");
        for piece in long.chunks(1000) {
            t.server(piece);
        }
        assert_eq!(t.to_client, long);
        assert_eq!(t.closed, None);
        // The reply stream is back in step: a 227 is still rewritten.
        t.client(b"PASV\r\n");
        t.server(b"227 (10,9,8,7,4,1)\r\n");
        assert!(t
            .client_text()
            .ends_with("227 Entering Passive Mode (192,168,1,1,156,65)\r\n"));
    }

    #[test]
    fn cleared_bytes_are_kept_in_order_when_writes_lag() {
        let mut t = Table::new();
        t.lazy = true;
        t.server(b"150 a\r\n");
        t.server(b"226 b\r\n");
        t.client(b"PASV\r\n");
        t.server(b"227 (10,9,8,7,4,1)\r\n200 after\r\n");
        t.write();
        assert_eq!(
            t.client_text(),
            "150 a\r\n226 b\r\n227 Entering Passive Mode (192,168,1,1,156,65)\r\n200 after\r\n"
        );
    }

    #[test]
    fn a_rewrite_waits_when_too_much_is_unwritten() {
        let mut t = Table::new();
        t.lazy = true;
        // More cleared and unwritten than FLUSH_MAX: a 211 reply.
        let mut big = b"211-".to_vec();
        while big.len() < FLUSH_MAX + 10 {
            big.extend_from_slice(b"x line of status\r\n");
        }
        big.extend_from_slice(b"211 end\r\n");
        t.client(b"STAT\r\nPASV\r\n");
        t.server(&big);
        t.server(b"227 (10,9,8,7,4,1)\r\n");
        assert!(
            t.opened.is_empty(),
            "waits until the bytes before it are written"
        );
        t.write();
        // The next bytes from the server move it along.
        t.server(b"");
        assert_eq!(t.opened.len(), 1);
        t.write();
        let mut want = big.clone();
        want.extend_from_slice(b"227 Entering Passive Mode (192,168,1,1,156,65)\r\n");
        assert_eq!(t.to_client, want);
    }

    #[test]
    fn local_answers_are_bounded() {
        let mut t = Table::new();
        t.lazy = true;
        // The server never answers the first command: local answers queue
        // up to MAX_OWED, then the client's lines wait.
        t.client(b"NOOP\r\n");
        for _ in 0..MAX_OWED + 4 {
            t.client(b"AUTH TLS\r\n");
        }
        assert_eq!(t.ftp.owed.len(), MAX_OWED);
        t.server(b"200 NOOP\r\n");
        t.write();
        assert_eq!(
            t.client_text(),
            format!("200 NOOP\r\n{}", NO_TLS.repeat(MAX_OWED + 4))
        );
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_227(b"227 Entering Passive Mode (1,2,3,4,5,6)\r\n"),
            Some(1286)
        );
        assert_eq!(
            parse_227(b"227 Entering Passive Mode (1,2,3,4,5)\r\n"),
            None
        );
        assert_eq!(
            parse_227(b"227 Entering Passive Mode (1,2,3,4,5,6,7)\r\n"),
            None
        );
        assert_eq!(parse_227(b"227 (1,2,3,4,0,0)\r\n"), None);
        assert_eq!(parse_227(b"227 (1,2,3,4,256,1)\r\n"), None);
        assert_eq!(parse_227(b"227 = 1, 2, 3, 4, 5, 6\r\n"), Some(1286));
        assert_eq!(parse_229(b"229 (|||65535|)\r\n"), Some(65535));
        assert_eq!(parse_229(b"229 (|||65536|)\r\n"), None);
        assert_eq!(parse_229(b"229 (||1|2|)\r\n"), None);
        assert_eq!(parse_229(b"229 (111211)\r\n"), None);
        assert_eq!(parse_229(b"229 |||21|\r\n"), None);
        assert_eq!(parse_eprt(b"|2|::1|21|"), Some("[::1]:21".parse().unwrap()));
        assert_eq!(parse_eprt(b"|1|::1|21|"), None);
        assert_eq!(parse_eprt(b"|3|1.2.3.4|21|"), None);
        assert_eq!(parse_eprt(b"|1|1.2.3.4|21"), None);
        assert_eq!(parse_eprt(b""), None);
        assert_eq!(
            parse_port(b" 1,2,3,4,0,21 "),
            Some("1.2.3.4:21".parse().unwrap())
        );
        assert_eq!(parse_port(b"1,2,3,4,0,21,"), None);
        assert_eq!(parse_port(b"1,2,3,4,0,-1"), None);
        assert_eq!(
            port_command("::ffff:1.2.3.4".parse().unwrap(), 258),
            "PORT 1,2,3,4,1,2\r\n"
        );
        let mut r = Replies::default();
        assert_eq!(r.line(b"220\r\n"), Line::End(220));
        assert_eq!(r.line(b"220-a\r\n"), Line::Inside);
        assert_eq!(r.line(b"221 not the end\r\n"), Line::Inside);
        assert_eq!(r.line(b"220-still not\r\n"), Line::Inside);
        assert_eq!(r.line(b"220 end\r\n"), Line::End(220));
        assert_eq!(r.line(b"xyz\r\n"), Line::Bad);
    }

    /// No input, however malformed, makes the machine panic or hold more
    /// than its bounds.
    #[test]
    fn arbitrary_bytes() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: &[&[u8]] = &[
            b"PORT 192,168,1,5,4,1\r\n",
            b"PORT 1,2,3,4,5,6\r\n",
            b"EPRT |1|192.168.1.5|99|\r\n",
            b"AUTH TLS\r\n",
            b"227 (1,2,3,4,5,6)\r\n",
            b"229 (|||77|)\r\n",
            b"211-",
            b"211 x\r\n",
            b"\r\n",
            b"\xff\xf4",
            b"200 ok\r\n",
            b"NOOP\r\n",
        ];
        for round in 0..200 {
            let mut t = Table::new();
            t.lazy = round % 2 == 0;
            t.manual = round % 3 == 0;
            for _ in 0..60 {
                let r = next();
                let piece = alphabet[(r % alphabet.len() as u64) as usize];
                let cut = (r >> 8) as usize % (piece.len() + 1);
                let from_client = (r >> 16) % 2 == 0;
                for part in [&piece[..cut], &piece[cut..]] {
                    let d = if from_client { &t.up } else { &t.down };
                    if data(d).len() + part.len() > 60_000 {
                        continue;
                    }
                    if from_client {
                        t.client(part);
                    } else {
                        t.server(part);
                    }
                }
                if (r >> 20) % 4 == 0 {
                    t.write();
                }
                if t.manual && (r >> 24) % 3 == 0 && !t.opened.is_empty() {
                    t.answer_last();
                }
                assert!(t.ftp.owed.len() <= MAX_OWED + 1);
                assert!(pending_prefix(&t.up) <= FLUSH_MAX + 2 * MAX_LINE);
                assert!(pending_prefix(&t.down) <= FLUSH_MAX + 2 * MAX_LINE);
            }
        }
    }
}
