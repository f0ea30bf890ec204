//! The handshake with a parent proxy (`[[parent]]`): what Portico says to
//! it so that it connects onward to the destination, and how its answer is
//! read. A pure machine over bytes like the others in this module: HTTP
//! CONNECT (with Basic `Proxy-Authorization`), SOCKS5 (with RFC 1929
//! username/password), SOCKS4 and SOCKS4a.
//!
//! # States and exits
//!
//! ```text
//! start ─► (request said) ─parent's bytes─► Wait (more needed)
//!                                         ─► Done(n)       the n bytes of its answer are taken;
//!                                                          what follows is the destination's
//!                                         ─► Rejected(c)   it said no (SOCKS5: its reply code)
//!                                         ─► Malformed     it said something else
//! SOCKS5: greeting ─method 0─► request;  ─method 2─► login ─ok─► request
//! ```
//!
//! The destination's name is handed over unresolved (CONNECT `host:port`,
//! SOCKS5 domain, SOCKS4a).

use std::net::{IpAddr, SocketAddr};

use crate::config::ParentKind;
use crate::proto::Target;

/// The longest parent answer to a CONNECT read before it is taken as
/// malformed (a status line and a few headers).
pub const MAX_HTTP_ANSWER: usize = 16 * 1024;

/// What the parent's bytes so far mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Its answer is not complete yet.
    Wait,
    /// It connected onward; its answer took the first `n` bytes.
    Done(usize),
    /// It refused; a SOCKS5 parent's reply code when it gave one.
    Rejected(Option<u8>),
    /// Its answer does not parse in its protocol.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// HTTP: the CONNECT's response head is awaited.
    HttpHead,
    /// SOCKS5: the method choice is awaited.
    Method,
    /// SOCKS5: the username/password verdict is awaited.
    Login,
    /// SOCKS5: the CONNECT reply is awaited.
    Reply5,
    /// SOCKS4: the 8-byte reply is awaited.
    Reply4,
    /// Finished one way or another; nothing more is read.
    Over,
}

/// One handshake with one parent address.
#[derive(Debug, Clone)]
pub struct Handshake {
    state: State,
    /// Bytes of the parent's answer taken by finished steps.
    taken: usize,
    target: Target,
    user: Option<String>,
    password: Option<String>,
}

impl Handshake {
    /// A handshake asking a parent of `kind` to connect to `target`; its
    /// first bytes go to `out`. `None` when the parent cannot carry the
    /// target at all (an IPv6 address to a SOCKS4 parent).
    pub fn start(
        kind: ParentKind,
        target: &Target,
        user: Option<&str>,
        password: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Option<Handshake> {
        let mut h = Handshake {
            state: State::Over,
            taken: 0,
            target: target.clone(),
            user: user.map(str::to_string),
            password: password.map(str::to_string),
        };
        match kind {
            ParentKind::Http => {
                let authority = authority(target);
                out.extend_from_slice(
                    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").as_bytes(),
                );
                if let Some(line) = h.basic_header() {
                    out.extend_from_slice(line.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                h.state = State::HttpHead;
            }
            ParentKind::Socks5 => {
                if h.user.is_some() {
                    out.extend_from_slice(&[5, 2, 0, 2]);
                } else {
                    out.extend_from_slice(&[5, 1, 0]);
                }
                h.state = State::Method;
            }
            ParentKind::Socks4 => {
                let (ip, port, name) = match target {
                    Target::Addr(SocketAddr::V4(a)) => (a.ip().octets(), a.port(), None),
                    Target::Addr(SocketAddr::V6(_)) => return None,
                    // SOCKS4a: an address 0.0.0.x with x non-zero, the name after the user id.
                    Target::Name(n, p) => ([0, 0, 0, 1], *p, Some(n.as_str())),
                };
                out.extend_from_slice(&[4, 1]);
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&ip);
                out.extend_from_slice(h.user.as_deref().unwrap_or("").as_bytes());
                out.push(0);
                if let Some(n) = name {
                    out.extend_from_slice(n.as_bytes());
                    out.push(0);
                }
                h.state = State::Reply4;
            }
        }
        Some(h)
    }

    /// The `Proxy-Authorization` header line (with its CRLF) for these
    /// credentials, if there are any.
    pub fn basic_header(&self) -> Option<String> {
        basic_header(self.user.as_deref(), self.password.as_deref())
    }

    /// The parent's bytes so far, all of them since the handshake began
    /// (the caller takes them out of its buffer only on [`Step::Done`]);
    /// what to say next to the parent goes to `out`.
    pub fn input(&mut self, data: &[u8], out: &mut Vec<u8>) -> Step {
        loop {
            let rest = data.get(self.taken..).unwrap_or(&[]);
            let (used, step) = self.step(rest, out);
            self.taken += used;
            match step {
                // A step finished: the next one reads what follows.
                None if used > 0 => continue,
                None => return Step::Wait,
                Some(Step::Done(n)) => return Step::Done(self.taken - used + n),
                Some(s) => return s,
            }
        }
    }

    /// One step of the handshake over what follows the steps before:
    /// (bytes it took, its end if the handshake ended).
    fn step(&mut self, data: &[u8], out: &mut Vec<u8>) -> (usize, Option<Step>) {
        match self.state {
            State::Over => (0, Some(Step::Malformed)),
            State::HttpHead => (0, self.http(data)),
            State::Method => {
                let [ver, method, ..] = *data else {
                    return (0, None);
                };
                if ver != 5 {
                    return (0, Some(self.over(Step::Malformed)));
                }
                match (method, &self.user, &self.password) {
                    (0, _, _) => {
                        self.request5(out);
                        (2, None)
                    }
                    (2, Some(u), Some(p)) => {
                        let (u, p) = (
                            &u.as_bytes()[..u.len().min(255)],
                            &p.as_bytes()[..p.len().min(255)],
                        );
                        out.push(1);
                        out.push(u.len() as u8);
                        out.extend_from_slice(u);
                        out.push(p.len() as u8);
                        out.extend_from_slice(p);
                        self.state = State::Login;
                        (2, None)
                    }
                    // 0xFF (none acceptable), or a method never offered.
                    _ => (0, Some(self.over(Step::Rejected(None)))),
                }
            }
            State::Login => {
                let [_, status, ..] = *data else {
                    return (0, None);
                };
                if status != 0 {
                    return (0, Some(self.over(Step::Rejected(None))));
                }
                self.request5(out);
                (2, None)
            }
            State::Reply5 => {
                let [ver, rep, _, atyp, ..] = *data else {
                    return (0, None);
                };
                if ver != 5 {
                    return (0, Some(self.over(Step::Malformed)));
                }
                if rep != 0 {
                    return (0, Some(self.over(Step::Rejected(Some(rep)))));
                }
                let len = match atyp {
                    1 => 4 + 4 + 2,
                    4 => 4 + 16 + 2,
                    3 => match data.get(4) {
                        Some(&n) => 4 + 1 + usize::from(n) + 2,
                        None => return (0, None),
                    },
                    _ => return (0, Some(self.over(Step::Malformed))),
                };
                if data.len() < len {
                    return (0, None);
                }
                (0, Some(self.over(Step::Done(len))))
            }
            State::Reply4 => {
                // A SOCKS4 reply is 8 bytes, refusal or not.
                if data.len() < 8 {
                    return (0, None);
                }
                let s = match data[..2] {
                    [0, 0x5A] => Step::Done(8),
                    [0, _] => Step::Rejected(None),
                    _ => Step::Malformed,
                };
                (0, Some(self.over(s)))
            }
        }
    }

    /// The SOCKS5 CONNECT request.
    fn request5(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[5, 1, 0]);
        let port = match &self.target {
            Target::Addr(SocketAddr::V4(a)) => {
                out.push(1);
                out.extend_from_slice(&a.ip().octets());
                a.port()
            }
            Target::Addr(SocketAddr::V6(a)) => {
                out.push(4);
                out.extend_from_slice(&a.ip().octets());
                a.port()
            }
            Target::Name(n, p) => {
                // Names come from a parser that keeps them under 256 bytes.
                let n = &n.as_bytes()[..n.len().min(255)];
                out.push(3);
                out.push(n.len() as u8);
                out.extend_from_slice(n);
                *p
            }
        };
        out.extend_from_slice(&port.to_be_bytes());
        self.state = State::Reply5;
    }

    /// The CONNECT's response head, once it is complete.
    fn http(&mut self, data: &[u8]) -> Option<Step> {
        let Some(end) = find_head_end(data) else {
            if data.len() > MAX_HTTP_ANSWER {
                return Some(self.over(Step::Malformed));
            }
            return None;
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&data[..end]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Some(self.over(Step::Malformed)),
        }
        Some(match resp.code {
            Some(code) if (200..300).contains(&code) => self.over(Step::Done(end)),
            // 1xx before the answer are not expected of a CONNECT; refuse
            // rather than guess.
            Some(_) => self.over(Step::Rejected(None)),
            None => self.over(Step::Malformed),
        })
    }

    fn over(&mut self, s: Step) -> Step {
        self.state = State::Over;
        s
    }
}

/// The end of an HTTP head (just past its empty line), if it is there.
fn find_head_end(data: &[u8]) -> Option<usize> {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// `host:port` of a CONNECT (an IPv6 address in brackets).
pub fn authority(target: &Target) -> String {
    match target {
        Target::Addr(a) => a.to_string(),
        Target::Name(h, p) => match h.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{p}"),
            _ => format!("{h}:{p}"),
        },
    }
}

/// A request head Portico made in origin form (`GET /path HTTP/1.1`, then
/// `Host:`), in the absolute form an http parent takes (`GET
/// http://host/path HTTP/1.1`), with the parent's `auth` line (CRLF-ended)
/// after the request line. `None` if the head is not of that shape.
pub fn absolute_head(head: &[u8], auth: Option<&str>) -> Option<Vec<u8>> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = &head[..line_end];
    let sp = line.iter().position(|b| *b == b' ')?;
    let rest = &head[line_end + 2..];
    let host = rest.strip_prefix(b"Host: ")?;
    let host = &host[..host.windows(2).position(|w| w == b"\r\n")?];
    let mut out = Vec::with_capacity(head.len() + host.len() + 64);
    out.extend_from_slice(&line[..=sp]);
    out.extend_from_slice(b"http://");
    out.extend_from_slice(host);
    out.extend_from_slice(&line[sp + 1..]);
    out.extend_from_slice(b"\r\n");
    if let Some(a) = auth {
        out.extend_from_slice(a.as_bytes());
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// `Proxy-Authorization: Basic …\r\n` for `user` and `password`.
pub fn basic_header(user: Option<&str>, password: Option<&str>) -> Option<String> {
    let user = user?;
    let creds = format!("{user}:{}", password.unwrap_or(""));
    Some(format!(
        "Proxy-Authorization: Basic {}\r\n",
        crate::http::base64::encode(creds.as_bytes())
    ))
}

/// Feeds `data` as one parent's answers to a handshake of a kind its
/// first byte picks (the fuzz target and its corpus replay): offered a
/// byte more at a time and whole, the answer is the same, never panics,
/// and never takes more than it was given.
#[cfg(any(test, fuzzing, feature = "harness"))]
pub fn fuzz_reply(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let kind = match head % 3 {
        0 => ParentKind::Http,
        1 => ParentKind::Socks5,
        _ => ParentKind::Socks4,
    };
    let target = if head & 4 == 0 {
        Target::Name("example.com".into(), 443)
    } else {
        Target::Addr(SocketAddr::from(([192, 0, 2, 1], 80)))
    };
    let creds = head & 8 != 0;
    let user = creds.then_some("u");
    let password = creds.then_some("p");
    let (mut a, mut out_a) = (Vec::new(), Vec::new());
    let Some(mut whole) = Handshake::start(kind, &target, user, password, &mut a) else {
        return;
    };
    let mut piecemeal = whole.clone();
    let once = whole.input(rest, &mut out_a);
    let mut out_b = Vec::new();
    let mut last = Step::Wait;
    for end in 0..=rest.len() {
        last = piecemeal.input(&rest[..end], &mut out_b);
        if last != Step::Wait {
            break;
        }
    }
    if let Step::Done(n) = once {
        assert!(n <= rest.len());
    }
    if last != Step::Wait {
        assert_eq!(once, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> Target {
        Target::Name("example.com".into(), 443)
    }

    #[test]
    fn http_connect_with_credentials() {
        let mut out = Vec::new();
        let mut h =
            Handshake::start(ParentKind::Http, &name(), Some("gw"), Some("pw"), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
             Proxy-Authorization: Basic Z3c6cHc=\r\n\r\n"
        );
        let answer = b"HTTP/1.1 200 Connection established\r\n\r\nhello";
        assert_eq!(h.input(&answer[..20], &mut Vec::new()), Step::Wait);
        assert_eq!(
            h.input(answer, &mut Vec::new()),
            Step::Done(answer.len() - 5)
        );
    }

    #[test]
    fn http_refusals() {
        for answer in [
            &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
        ] {
            let mut h =
                Handshake::start(ParentKind::Http, &name(), None, None, &mut Vec::new()).unwrap();
            assert_eq!(h.input(answer, &mut Vec::new()), Step::Rejected(None));
        }
        let mut h =
            Handshake::start(ParentKind::Http, &name(), None, None, &mut Vec::new()).unwrap();
        assert_eq!(
            h.input(b"SSH-2.0-x\r\n\r\n", &mut Vec::new()),
            Step::Malformed
        );
        let mut h =
            Handshake::start(ParentKind::Http, &name(), None, None, &mut Vec::new()).unwrap();
        let endless = vec![b'a'; MAX_HTTP_ANSWER + 1];
        assert_eq!(h.input(&endless, &mut Vec::new()), Step::Malformed);
    }

    #[test]
    fn socks5_with_login_and_domain() {
        let mut out = Vec::new();
        let mut h =
            Handshake::start(ParentKind::Socks5, &name(), Some("u"), Some("pw"), &mut out).unwrap();
        assert_eq!(out, [5, 2, 0, 2]);
        out.clear();
        let mut answer = vec![5];
        assert_eq!(h.input(&answer, &mut out), Step::Wait);
        answer.push(2);
        assert_eq!(h.input(&answer, &mut out), Step::Wait);
        assert_eq!(out, [1, 1, b'u', 2, b'p', b'w']);
        out.clear();
        answer.extend_from_slice(&[1, 0]);
        assert_eq!(h.input(&answer, &mut out), Step::Wait);
        let mut req = vec![5, 1, 0, 3, 11];
        req.extend_from_slice(b"example.com");
        req.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(out, req);
        answer.extend_from_slice(&[5, 0, 0, 1, 10, 0, 0, 1, 0, 80, b'x']);
        assert_eq!(h.input(&answer, &mut Vec::new()), Step::Done(14));
    }

    #[test]
    fn heads_in_absolute_form() {
        let head = b"GET /a?b HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n";
        let auth = basic_header(Some("gw"), Some("pw"));
        assert_eq!(
            String::from_utf8(absolute_head(head, auth.as_deref()).unwrap()).unwrap(),
            "GET http://example.com:8080/a?b HTTP/1.1\r\nProxy-Authorization: Basic Z3c6cHc=\r\n\
             Host: example.com:8080\r\nAccept: */*\r\n\r\n"
        );
        assert_eq!(
            absolute_head(b"GET / HTTP/1.1\r\nAccept: x\r\n\r\n", None),
            None
        );
    }

    #[test]
    fn socks5_refusals() {
        let mut h =
            Handshake::start(ParentKind::Socks5, &name(), None, None, &mut Vec::new()).unwrap();
        assert_eq!(h.input(&[5, 0xFF], &mut Vec::new()), Step::Rejected(None));
        let mut h =
            Handshake::start(ParentKind::Socks5, &name(), None, None, &mut Vec::new()).unwrap();
        let mut out = Vec::new();
        assert_eq!(h.input(&[5, 0], &mut out), Step::Wait);
        assert_eq!(
            h.input(&[5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0], &mut out),
            Step::Rejected(Some(5))
        );
        let mut h = Handshake::start(
            ParentKind::Socks5,
            &name(),
            Some("u"),
            Some("p"),
            &mut Vec::new(),
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(h.input(&[5, 2], &mut out), Step::Wait);
        assert_eq!(h.input(&[5, 2, 1, 1], &mut out), Step::Rejected(None));
    }

    #[test]
    fn socks4a_and_socks4() {
        let mut out = Vec::new();
        let mut h =
            Handshake::start(ParentKind::Socks4, &name(), Some("id"), None, &mut out).unwrap();
        let mut want = vec![4, 1, 1, 187, 0, 0, 0, 1, b'i', b'd', 0];
        want.extend_from_slice(b"example.com\0");
        assert_eq!(out, want);
        assert_eq!(h.input(&[0, 0x5A, 0, 0], &mut Vec::new()), Step::Wait);
        assert_eq!(
            h.input(&[0, 0x5A, 0, 0, 0, 0, 0, 0, 1], &mut Vec::new()),
            Step::Done(8)
        );
        let addr = Target::Addr(SocketAddr::from(([10, 1, 2, 3], 25)));
        let mut out = Vec::new();
        let mut h = Handshake::start(ParentKind::Socks4, &addr, None, None, &mut out).unwrap();
        assert_eq!(out, [4, 1, 0, 25, 10, 1, 2, 3, 0]);
        assert_eq!(
            h.input(&[0, 0x5B, 0, 0, 0, 0, 0, 0], &mut Vec::new()),
            Step::Rejected(None)
        );
        let v6 = Target::Addr("[2001:db8::1]:80".parse().unwrap());
        assert!(Handshake::start(ParentKind::Socks4, &v6, None, None, &mut Vec::new()).is_none());
    }

    #[test]
    fn fuzz_entry_survives_odd_answers() {
        for data in [
            &b""[..],
            &[0],
            &[1, 5, 2, 1, 0, 5, 0, 0, 3],
            &[9, 5, 2, 1, 0, 5, 0, 0, 3, 255],
            &[2, 0, 0x5A],
            b"\x00HTTP/1.1 200 ok\r\n\r\n",
        ] {
            fuzz_reply(data);
        }
    }
}
