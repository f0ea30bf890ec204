//! SOCKS 4, 4a and 5 (RFC 1928, RFC 1929) on one port.
//!
//! # States and exits
//!
//! ```text
//! Start ──first byte 5──► Methods ──[5, n, methods]──► Auth (method 2) ──[1, ulen, u, plen, p]──► Request
//!   │                        │                           │                 (bad → [1,1], close)
//!   │                        ├─no acceptable → [5, FF], close
//!   │                        └─method 0 ─────────────────────────────────────────────────────► Request
//!   ├─first byte 4──► V4 ──[4, cmd, port, ip, userid\0 (host\0)]──► Connect (cmd 1) | Bind (cmd 2) | [0,5B] close
//!   └─other──► close
//! Request ──[5, cmd, 0, atyp, addr, port]──► Connect (cmd 1) | Bind (cmd 2) | Associate (cmd 3)
//!                                          ├─a command not in `commands`, or another → reply 07, close
//!                                          └─atyp other → reply 08, close
//! Connect ──connected──► success reply with the bound address, relay
//!         └─failed──► reply 01..06 (5) or 5B (4), close
//! Bind ──bound──► first reply (the listener) ──bind_peer, connected──► second reply (the peer), relay
//! Associate ──► the session's (`crate::session` associate): this machine is done
//! ```
//!
//! Every length field is bounded by the protocol (one byte) or here
//! ([`MAX_V4_FIELD`]); a malformed handshake closes the connection without a
//! reply. With `auth` on, SOCKS5 offers only username/password; SOCKS4 has no
//! password field, so its USERID must be `name:password`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use super::{Failure, Next, Outcome, Protocol, Scope, Target};
use crate::auth::Verdict;

/// Longest SOCKS4 USERID or 4a host name accepted.
pub const MAX_V4_FIELD: usize = 512;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Start,
    Methods,
    Auth,
    Request,
    /// Waiting for the verdict on the login (SOCKS5) or on the USERID's
    /// password (SOCKS4, which then connects to `v4_target`).
    Checking,
    /// Waiting for the connect; the version decides the reply format.
    Connecting,
    Done,
}

#[derive(Debug, Default)]
pub struct Socks {
    state: State,
    v4: bool,
    user: Option<String>,
    /// The name being checked (SOCKS4: and where to go once it is).
    checking: Option<String>,
    v4_target: Option<Target>,
    /// A BIND: its peer, once a connection from it was taken.
    bind: Option<Option<SocketAddr>>,
    /// The user came with the connection (a TLS client certificate).
    proven: bool,
}

const NEED: (usize, Next) = (0, Next::Wait);

fn close(outcome: Outcome) -> Next {
    Next::Close(outcome)
}

impl Protocol for Socks {
    /// The bound address of the success reply.
    fn uses_local(&self) -> bool {
        true
    }

    fn refuses_at_accept(&self) -> bool {
        false
    }

    fn authenticated(&mut self, user: String) {
        self.user = Some(user);
        self.proven = true;
    }

    /// The authenticated user, for the access log of a client that goes no
    /// further than the login.
    fn log_user(&self) -> Option<String> {
        self.user.clone()
    }

    fn method(&self) -> &'static str {
        if self.v4 {
            "SOCKS4"
        } else {
            "SOCKS5"
        }
    }

    fn input(&mut self, input: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let (n, step) = match self.state {
                State::Start => match rest.first() {
                    None => return (used, Next::Wait),
                    Some(5) => {
                        self.state = State::Methods;
                        continue;
                    }
                    Some(4) => {
                        self.v4 = true;
                        self.v4_request(rest, reply, scope)
                    }
                    Some(_) => (0, close(Outcome::BadRequest)),
                },
                State::Methods => self.methods(rest, reply, scope),
                State::Auth => self.auth(rest),
                State::Request => self.request(rest, reply, scope),
                State::Checking | State::Connecting | State::Done => return (used, Next::Wait),
            };
            used += n;
            match step {
                Next::Wait if n > 0 => continue,
                step => return (used, step),
            }
        }
    }

    fn checked(&mut self, verdict: Verdict, reply: &mut Vec<u8>) -> Next {
        if self.state != State::Checking {
            return Next::Wait;
        }
        let ok = verdict == Verdict::Ok;
        // Throttled: the words of a failed login (RFC 1929 has no other),
        // the cause in the log.
        let failed = match verdict {
            Verdict::Throttled(_) => Outcome::Throttled,
            _ => Outcome::AuthFailed,
        };
        let name = self.checking.take();
        if self.v4 {
            let Some(target) = self.v4_target.take().filter(|_| ok) else {
                self.state = State::Done;
                reply.extend_from_slice(&v4_reply(false, None));
                return close(failed);
            };
            self.user = name;
            self.state = State::Connecting;
            return self.go(target);
        }
        if ok {
            self.user = name;
            reply.extend_from_slice(&[1, 0]);
            self.state = State::Request;
            Next::Wait
        } else {
            reply.extend_from_slice(&[1, 1]);
            self.state = State::Done;
            close(failed)
        }
    }

    fn connected(&mut self, local: SocketAddr, reply: &mut Vec<u8>, _: &mut Vec<u8>) -> Next {
        if self.state != State::Connecting {
            return Next::Relay;
        }
        self.state = State::Done;
        // A BIND's second reply names the peer that connected.
        let named = self.bind.flatten().unwrap_or(local);
        if self.v4 {
            reply.extend_from_slice(&v4_reply(true, Some(named)));
        } else {
            reply.extend_from_slice(&v5_reply(0x00, Some(named)));
        }
        Next::Relay
    }

    fn bound(&mut self, local: SocketAddr, reply: &mut Vec<u8>) {
        if self.state != State::Connecting || self.bind.is_none() {
            return;
        }
        if self.v4 {
            reply.extend_from_slice(&v4_reply(true, Some(local)));
        } else {
            reply.extend_from_slice(&v5_reply(0x00, Some(local)));
        }
    }

    fn bind_peer(&mut self, peer: SocketAddr) {
        if let Some(p) = self.bind.as_mut() {
            *p = Some(peer);
        }
    }

    fn failed(&mut self, why: Failure, reply: &mut Vec<u8>) {
        if self.state != State::Connecting {
            return;
        }
        self.state = State::Done;
        if self.v4 {
            reply.extend_from_slice(&v4_reply(false, None));
            return;
        }
        let code = match why {
            Failure::Denied | Failure::Quota => 0x02,
            Failure::NetUnreachable => 0x03,
            Failure::HostUnreachable | Failure::NotResolved => 0x04,
            Failure::Refused => 0x05,
            Failure::TimedOut => 0x06,
            // A SOCKS5 parent's own reply code says it best.
            Failure::Parent(Some(code)) => code,
            Failure::Limit | Failure::Parent(None) | Failure::Other => 0x01,
        };
        reply.extend_from_slice(&v5_reply(code, None));
    }
}

impl Socks {
    fn methods(&mut self, b: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        let Some(&n) = b.get(1) else { return NEED };
        let len = 2 + n as usize;
        let Some(methods) = b.get(2..len) else {
            return NEED;
        };
        // A user the connection proved needs no password.
        let auth_on = scope.service.auth && !self.proven;
        let choice = if !auth_on && methods.contains(&0) {
            Some(0)
        } else if methods.contains(&2) && !scope.users.is_empty() {
            Some(2)
        } else {
            None
        };
        match choice {
            Some(m) => {
                reply.extend_from_slice(&[5, m]);
                self.state = if m == 2 { State::Auth } else { State::Request };
                (len, Next::Wait)
            }
            None => {
                reply.extend_from_slice(&[5, 0xFF]);
                self.state = State::Done;
                (len, close(Outcome::AuthRequired))
            }
        }
    }

    fn auth(&mut self, b: &[u8]) -> (usize, Next) {
        if b.is_empty() {
            return NEED;
        }
        if b[0] != 1 {
            self.state = State::Done;
            return (0, close(Outcome::BadRequest));
        }
        let Some(&ulen) = b.get(1) else { return NEED };
        let u_end = 2 + ulen as usize;
        let Some(&plen) = b.get(u_end) else {
            return NEED;
        };
        let p_end = u_end + 1 + plen as usize;
        if b.len() < p_end {
            return NEED;
        }
        self.authenticate(&b[2..u_end], &b[u_end + 1..p_end], p_end)
    }

    /// Asks for the verdict on a login (the `used` bytes that held it are
    /// taken); [`Protocol::checked`] goes on.
    fn authenticate(&mut self, name: &[u8], password: &[u8], used: usize) -> (usize, Next) {
        self.checking = std::str::from_utf8(name).ok().map(str::to_string);
        self.state = State::Checking;
        (
            used,
            Next::Authenticate {
                user: name.to_vec(),
                password: crate::auth::Secret(password.to_vec()),
            },
        )
    }

    fn request(&mut self, b: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        if b.len() < 4 {
            return NEED;
        }
        if b[0] != 5 || b[2] != 0 {
            self.state = State::Done;
            return (0, close(Outcome::BadRequest));
        }
        let (cmd, atyp) = (b[1], b[3]);
        let (target, len) = match atyp {
            1 => {
                let Some(a) = b.get(4..10) else { return NEED };
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let port = u16::from_be_bytes([a[4], a[5]]);
                (Target::Addr(SocketAddr::new(ip.into(), port)), 10)
            }
            4 => {
                let Some(a) = b.get(4..22) else { return NEED };
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[..16]);
                let port = u16::from_be_bytes([a[16], a[17]]);
                (
                    Target::Addr(SocketAddr::new(Ipv6Addr::from(o).into(), port)),
                    22,
                )
            }
            3 => {
                let Some(&n) = b.get(4) else { return NEED };
                let end = 5 + n as usize;
                let Some(a) = b.get(5..end + 2) else {
                    return NEED;
                };
                let name = &a[..n as usize];
                let port = u16::from_be_bytes([a[n as usize], a[n as usize + 1]]);
                match host_name(name) {
                    Some(h) => (name_target(h, port), end + 2),
                    None => {
                        self.state = State::Done;
                        reply.extend_from_slice(&v5_reply(0x04, None));
                        return (end + 2, close(Outcome::BadRequest));
                    }
                }
            }
            _ => {
                self.state = State::Done;
                reply.extend_from_slice(&v5_reply(0x08, None));
                return (b.len(), close(Outcome::Unsupported));
            }
        };
        let commands = scope.service.commands;
        if cmd == 3 && commands.udp {
            // The session answers once the association's socket is open;
            // a refusal (a limit) is said by `failed`, as for a connect.
            self.state = State::Connecting;
            return (
                len,
                Next::Associate {
                    client: target,
                    user: self.user.clone(),
                },
            );
        }
        if cmd == 2 && commands.bind {
            self.bind = Some(None);
        } else if cmd != 1 || !commands.connect {
            // A command the service does not accept.
            self.state = State::Done;
            reply.extend_from_slice(&v5_reply(0x07, None));
            return (len, close(Outcome::Unsupported));
        }
        self.state = State::Connecting;
        (len, self.go(target))
    }

    /// Where a request goes: a connect, or a BIND waiting for `target`.
    fn go(&self, target: Target) -> Next {
        let user = self.user.clone();
        match self.bind {
            Some(_) => Next::Bind { peer: target, user },
            None => Next::Connect { target, user },
        }
    }

    fn v4_request(&mut self, b: &[u8], reply: &mut Vec<u8>, scope: &mut Scope) -> (usize, Next) {
        if b.len() < 8 {
            return NEED;
        }
        let cmd = b[1];
        let port = u16::from_be_bytes([b[2], b[3]]);
        let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
        let Some((userid, after)) = nul_field(&b[8..]) else {
            return if b.len() - 8 > MAX_V4_FIELD {
                self.state = State::Done;
                (0, close(Outcome::BadRequest))
            } else {
                NEED
            };
        };
        let mut len = 8 + after;
        // SOCKS4a: 0.0.0.x with x != 0 means "a host name follows".
        let o = ip.octets();
        let target = if o[..3] == [0, 0, 0] && o[3] != 0 {
            let Some((host, after)) = nul_field(&b[len..]) else {
                return if b.len() - len > MAX_V4_FIELD {
                    self.state = State::Done;
                    (0, close(Outcome::BadRequest))
                } else {
                    NEED
                };
            };
            len += after;
            match host_name(host) {
                Some(h) => name_target(h, port),
                None => {
                    self.state = State::Done;
                    reply.extend_from_slice(&v4_reply(false, None));
                    return (len, close(Outcome::BadRequest));
                }
            }
        } else {
            Target::Addr(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        };
        let commands = scope.service.commands;
        if cmd == 2 && commands.bind {
            self.bind = Some(None);
        } else if cmd != 1 || !commands.connect {
            self.state = State::Done;
            reply.extend_from_slice(&v4_reply(false, None));
            return (len, close(Outcome::Unsupported));
        }
        if scope.service.auth && !self.proven {
            // USERID is `name:password` (SOCKS4 has no password field).
            let (name, password) = match userid.iter().position(|&c| c == b':') {
                Some(i) => (&userid[..i], &userid[i + 1..]),
                None => (userid, &b""[..]),
            };
            self.v4_target = Some(target);
            return self.authenticate(name, password, len);
        }
        self.state = State::Connecting;
        (len, self.go(target))
    }
}

/// A NUL-terminated field: (bytes before the NUL, bytes used incl. the NUL).
fn nul_field(b: &[u8]) -> Option<(&[u8], usize)> {
    let end = b.iter().take(MAX_V4_FIELD + 1).position(|&c| c == 0)?;
    Some((&b[..end], end + 1))
}

/// A destination host as sent by the client: an IP literal or a DNS name.
pub(super) fn host_name(b: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(b).ok()?;
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b':'));
    ok.then_some(s)
}

pub(super) fn name_target(host: &str, port: u16) -> Target {
    match host.parse::<IpAddr>() {
        Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(host.to_ascii_lowercase(), port),
    }
}

pub(crate) fn v5_reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut r = vec![5, code, 0];
    match bound {
        Some(SocketAddr::V6(a)) => {
            r.push(4);
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V4(a)) => {
            r.push(1);
            r.extend_from_slice(&a.ip().octets());
            r.extend_from_slice(&a.port().to_be_bytes());
        }
        None => r.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]),
    }
    r
}

fn v4_reply(granted: bool, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut r = vec![0, if granted { 0x5A } else { 0x5B }];
    match bound {
        Some(SocketAddr::V4(a)) => {
            r.extend_from_slice(&a.port().to_be_bytes());
            r.extend_from_slice(&a.ip().octets());
        }
        _ => r.extend_from_slice(&[0; 6]),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Users;
    use crate::config;

    fn service(auth: bool) -> (config::Config, Users) {
        let text = format!(
            "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
             [[service]]\nname = \"s\"\nkind = \"socks\"\nport = 1080\nauth = {auth}\n"
        );
        let c = config::parse(&text, "t").expect("config");
        let users = Users::new(&c.users, 1, std::time::Duration::ZERO);
        (c, users)
    }

    /// Feeds `input` in pieces of `chop` bytes (as a client might send it)
    /// and returns (bytes consumed, the step, the reply).
    fn run(auth: bool, input: &[u8], chop: usize) -> (usize, Next, Vec<u8>) {
        let (c, mut users) = service(auth);
        let now = std::time::Instant::now();
        let mut detached = crate::proto::Detached::new();
        let mut scope = detached.scope(&c.services[0], &mut users);
        let mut s = Socks::default();
        let mut reply = Vec::new();
        let mut used = 0;
        let mut have = 0;
        loop {
            have = (have + chop).min(input.len());
            let (n, mut step) = s.input(&input[used..have], &mut reply, &mut scope);
            used += n;
            if let Next::Authenticate { user, password } = &step {
                // The session's part: the verdict, then the rest of what
                // the client sent.
                let v = scope.users.check_blocking(user, &password.0, now);
                step = s.checked(v, &mut reply);
                if step == Next::Wait {
                    continue;
                }
            }
            if step != Next::Wait || have == input.len() {
                return (used, step, reply);
            }
        }
    }

    fn connect(t: Target, user: Option<&str>) -> Next {
        Next::Connect {
            target: t,
            user: user.map(str::to_string),
        }
    }

    fn addr(s: &str) -> Target {
        Target::Addr(s.parse().unwrap())
    }

    #[test]
    fn handshakes() {
        let name = |h: &str, p| Target::Name(h.into(), p);
        type Case = (&'static str, bool, Vec<u8>, Next, Vec<u8>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("v5 no-auth ipv4", false,
             vec![5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80],
             connect(addr("10.0.0.1:80"), None), vec![5, 0]),
            ("v5 domain", false,
             [&[5u8, 1, 0, 5, 1, 0, 3, 11][..], b"example.COM", &[1, 187]].concat(),
             connect(name("example.com", 443), None), vec![5, 0]),
            ("v5 ipv6", false,
             [&[5u8, 1, 0, 5, 1, 0, 4][..], &[0; 15], &[1, 0, 22]].concat(),
             connect(addr("[::1]:22"), None), vec![5, 0]),
            ("v5 domain that is an address", false,
             [&[5u8, 1, 0, 5, 1, 0, 3, 9][..], b"127.0.0.1", &[0, 80]].concat(),
             connect(addr("127.0.0.1:80"), None), vec![5, 0]),
            ("v5 user/pass", true,
             [&[5u8, 2, 0, 2, 1, 5][..], b"alice", &[6], b"secret", &[5, 1, 0, 1, 1, 2, 3, 4, 0, 80]].concat(),
             connect(addr("1.2.3.4:80"), Some("alice")), vec![5, 2, 1, 0]),
            ("v5 wrong password", true,
             [&[5u8, 1, 2, 1, 5][..], b"alice", &[6], b"secreT"].concat(),
             Next::Close(Outcome::AuthFailed), vec![5, 2, 1, 1]),
            ("v5 name with NUL never matches", true,
             [&[5u8, 1, 2, 1, 6][..], b"alice\0", &[6], b"secret"].concat(),
             Next::Close(Outcome::AuthFailed), vec![5, 2, 1, 1]),
            ("v5 auth on, only no-auth offered", true,
             vec![5, 1, 0],
             Next::Close(Outcome::AuthRequired), vec![5, 0xFF]),
            ("v5 no methods", false,
             vec![5, 0],
             Next::Close(Outcome::AuthRequired), vec![5, 0xFF]),
            ("v5 bind", false,
             vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80],
             Next::Bind { peer: addr("1.2.3.4:80"), user: None }, vec![5, 0]),
            ("v5 udp associate", false,
             vec![5, 1, 0, 5, 3, 0, 1, 1, 2, 3, 4, 0, 80],
             Next::Associate { client: addr("1.2.3.4:80"), user: None }, vec![5, 0]),
            ("v5 bad address type", false,
             vec![5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80],
             Next::Close(Outcome::Unsupported), [&[5u8, 0][..], &[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]].concat()),
            ("v5 bad request version", false,
             vec![5, 1, 0, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80],
             Next::Close(Outcome::BadRequest), vec![5, 0]),
            ("v5 bad reserved byte", false,
             vec![5, 1, 0, 5, 1, 1, 1, 1, 2, 3, 4, 0, 80],
             Next::Close(Outcome::BadRequest), vec![5, 0]),
            ("v5 bad auth version", true,
             vec![5, 1, 2, 2, 1, b'a', 1, b'b'],
             Next::Close(Outcome::BadRequest), vec![5, 2]),
            ("v5 empty domain", false,
             vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80],
             Next::Close(Outcome::BadRequest), [&[5u8, 0][..], &[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]].concat()),
            ("v4", false,
             [&[4u8, 1, 0, 80, 10, 0, 0, 1][..], b"bob\0"].concat(),
             connect(addr("10.0.0.1:80"), None), vec![]),
            ("v4a", false,
             [&[4u8, 1, 1, 187, 0, 0, 0, 1][..], b"\0example.com\0"].concat(),
             connect(name("example.com", 443), None), vec![]),
            ("v4 auth name:password", true,
             [&[4u8, 1, 0, 80, 10, 0, 0, 1][..], b"alice:secret\0"].concat(),
             connect(addr("10.0.0.1:80"), Some("alice")), vec![]),
            ("v4 auth name only", true,
             [&[4u8, 1, 0, 80, 10, 0, 0, 1][..], b"alice\0"].concat(),
             Next::Close(Outcome::AuthFailed), vec![0, 0x5B, 0, 0, 0, 0, 0, 0]),
            ("v4 bind", false,
             [&[4u8, 2, 0, 80, 10, 0, 0, 1][..], b"\0"].concat(),
             Next::Bind { peer: addr("10.0.0.1:80"), user: None }, vec![]),
            ("v4 unknown command", false,
             [&[4u8, 3, 0, 80, 10, 0, 0, 1][..], b"\0"].concat(),
             Next::Close(Outcome::Unsupported), vec![0, 0x5B, 0, 0, 0, 0, 0, 0]),
            ("v5 unknown command", false,
             vec![5, 1, 0, 5, 9, 0, 1, 1, 2, 3, 4, 0, 80],
             Next::Close(Outcome::Unsupported), [&[5u8, 0][..], &[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]].concat()),
            ("v4 userid too long", false,
             [&[4u8, 1, 0, 80, 10, 0, 0, 1][..], &[b'a'; MAX_V4_FIELD + 1]].concat(),
             Next::Close(Outcome::BadRequest), vec![]),
            ("unknown version", false, vec![6, 1, 0], Next::Close(Outcome::BadRequest), vec![]),
        ];
        for (what, auth, input, step, reply) in cases {
            for chop in [1, 2, 3, 7, input.len().max(1)] {
                let (_, got, got_reply) = run(auth, &input, chop);
                assert_eq!(got, step, "{what} (chop {chop})");
                assert_eq!(got_reply, reply, "{what} (chop {chop})");
            }
        }
    }

    #[test]
    fn a_command_the_service_leaves_out_is_not_supported() {
        let text = "[[service]]\nname = \"s\"\nkind = \"socks\"\nport = 1080\n\
                    commands = [\"udp\"]\n";
        let c = config::parse(text, "t").expect("config");
        let mut users = Users::new(&c.users, 1, std::time::Duration::ZERO);
        let mut detached = crate::proto::Detached::new();
        let mut scope = detached.scope(&c.services[0], &mut users);
        let mut s = Socks::default();
        let mut reply = Vec::new();
        let input = [5u8, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80];
        let (_, step) = s.input(&input, &mut reply, &mut scope);
        assert_eq!(step, Next::Close(Outcome::Unsupported));
        assert_eq!(reply, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut s4 = Socks::default();
        let mut reply = Vec::new();
        let (_, step) = s4.input(&[4, 1, 0, 80, 10, 0, 0, 1, 0], &mut reply, &mut scope);
        assert_eq!(step, Next::Close(Outcome::Unsupported));
        assert_eq!(reply, [0, 0x5B, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn payload_behind_the_request_is_not_consumed() {
        let input = [
            &[5u8, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80][..],
            b"GET / HTTP/1.1\r\n",
        ]
        .concat();
        let (used, step, _) = run(false, &input, input.len());
        assert_eq!(used, 13);
        assert_eq!(step, connect(addr("10.0.0.1:80"), None));
        let input = [&[4u8, 1, 0, 80, 10, 0, 0, 1, 0][..], b"payload"].concat();
        let (used, _, _) = run(false, &input, input.len());
        assert_eq!(used, 9);
    }

    #[test]
    fn partial_input_waits() {
        for input in [
            &[5u8][..],
            &[5, 2, 0],
            &[5, 1, 0, 5, 1, 0, 3, 5, b'a'],
            &[4, 1, 0, 80, 1, 2, 3, 4, b'x'],
        ] {
            let (_, step, _) = run(false, input, input.len());
            assert_eq!(step, Next::Wait, "{input:?}");
        }
    }

    #[test]
    fn replies() {
        let mut s = Socks {
            state: State::Connecting,
            ..Default::default()
        };
        let mut r = Vec::new();
        s.connected("192.168.1.1:4242".parse().unwrap(), &mut r, &mut Vec::new());
        assert_eq!(r, vec![5, 0, 0, 1, 192, 168, 1, 1, 0x10, 0x92]);
        let codes = [
            (Failure::Denied, 2),
            (Failure::NetUnreachable, 3),
            (Failure::HostUnreachable, 4),
            (Failure::NotResolved, 4),
            (Failure::Refused, 5),
            (Failure::TimedOut, 6),
            (Failure::Limit, 1),
            (Failure::Other, 1),
        ];
        for (f, code) in codes {
            let mut s = Socks {
                state: State::Connecting,
                ..Default::default()
            };
            let mut r = Vec::new();
            s.failed(f, &mut r);
            assert_eq!(r, vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0], "{f:?}");
            let mut s4 = Socks {
                state: State::Connecting,
                v4: true,
                ..Default::default()
            };
            let mut r = Vec::new();
            s4.failed(f, &mut r);
            assert_eq!(r, vec![0, 0x5B, 0, 0, 0, 0, 0, 0], "{f:?}");
        }
        let mut s4 = Socks {
            state: State::Connecting,
            v4: true,
            ..Default::default()
        };
        let mut r = Vec::new();
        s4.connected("10.1.2.3:80".parse().unwrap(), &mut r, &mut Vec::new());
        assert_eq!(r, vec![0, 0x5A, 0, 80, 10, 1, 2, 3]);
        let mut s = Socks {
            state: State::Connecting,
            ..Default::default()
        };
        let mut r = Vec::new();
        s.connected("[::1]:1".parse().unwrap(), &mut r, &mut Vec::new());
        assert_eq!(r.len(), 4 + 16 + 2);
        assert_eq!(r[3], 4);
    }
}
