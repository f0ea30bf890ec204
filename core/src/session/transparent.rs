//! A transparent service's connection (`kind = "transparent"`): one the
//! firewall redirected here (nftables `redirect`, or TPROXY), carried to
//! its original destination, which the runtime read and gave at accept.
//!
//! Before connecting, the session peeks at what the client says first
//! ([`crate::proto::peek`]), for at most `handshake_timeout`: an HTTP
//! request's `Host` or a TLS ClientHello's server name names the
//! destination for the rules, the access log and a parent; nothing is
//! taken from the buffer, so what was peeked goes on unchanged, and the
//! rest is relayed. A direct connection always goes to the original
//! address: a name never redirects it.
//!
//! # States and exits
//!
//! ```text
//! accept ─no original destination, or the port itself─► refused ("not-redirected")
//! Talking (peek) ─HTTP head, ClientHello, or neither decided─┐
//!                ─handshake_timeout (nothing or too little)──┤
//!                ─client EOF, or the buffer full─────────────┴─► decide
//! decide ─refused at accept, or denied─► 403 (HTTP) then Closing | (ended)
//!        ─via a parent─► CONNECT NAME:PORT (ADDRESS:PORT without a name)
//!        ─direct─► Connecting (the original address) ─► Relay
//! ```
//!
//! A protocol whose server speaks first (SMTP, FTP, SSH's banner…) sends
//! nothing: its connection waits `handshake_timeout`, then goes by address.

use std::net::SocketAddr;

use super::{Machine, Phase, Session};
use crate::event::Intercept;
use crate::outcome::{Cause, Outcome};
use crate::proto::peek::{peek, Peeked};
use crate::proto::{Failure, Target};
use crate::table::context::Context;

/// What a transparent session knows of where its client was going.
#[derive(Debug)]
pub(crate) struct Intercepted {
    /// The original destination the firewall redirected from.
    pub original: SocketAddr,
    /// The peek found an HTTP request (a denial is said with a 403).
    pub http: bool,
}

/// `a` with an IPv4-mapped IPv6 address as plain IPv4.
fn plain(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

impl Intercepted {
    /// A connection accepted at `local` on a listener bound to
    /// `listening`, whose original destination is `original` (read as
    /// `how` says): none when it was not redirected, which would loop —
    /// nothing was read, or its destination is this very port. With
    /// `redirect`, a connection that was not translated reads its own local
    /// address back; with TPROXY, whose local address is always the
    /// original destination, one to the listening port itself (on a
    /// wildcard listener: to any address at its port number, as this host's
    /// addresses are not known here).
    pub fn new(
        how: Intercept,
        original: Option<SocketAddr>,
        local: SocketAddr,
        listening: SocketAddr,
    ) -> Option<Intercepted> {
        let original = plain(original?);
        let listening = plain(listening);
        let to_port = original == listening
            || (listening.ip().is_unspecified() && original.port() == listening.port());
        let itself = match how {
            Intercept::Redirect => original == plain(local) || original == listening,
            Intercept::Tproxy => to_port,
        };
        if itself || original.port() == 0 || original.ip().is_unspecified() {
            return None;
        }
        Some(Intercepted {
            original,
            http: false,
        })
    }
}

impl Session {
    /// The peek, over what the client has sent so far: decides once it
    /// knows, once the client has said all it will, or once the buffer is
    /// full; else waits (the phase's deadline ends the wait).
    pub(super) fn intercept_input(&mut self, cx: &mut Context) {
        if self.phase != Phase::Talking {
            return;
        }
        let data = self.up.buf.as_ref().map_or(&[][..], |b| b.data());
        let seen = peek(data);
        if seen == Peeked::Incomplete && !self.up.eof && self.up.has_space() {
            return self.sync(cx);
        }
        self.intercept_decide(seen, cx);
    }

    /// `handshake_timeout` passed while peeking: the connection goes on
    /// with what is known (a server-speaks-first protocol: the address).
    pub(super) fn intercept_timed_out(&mut self, cx: &mut Context) {
        let data = self.up.buf.as_ref().map_or(&[][..], |b| b.data());
        let seen = peek(data);
        self.intercept_decide(seen, cx);
    }

    /// The peek is over (`seen`: what it found; undecided counts as
    /// nothing): the destination is named, checked and connected to.
    fn intercept_decide(&mut self, seen: Peeked, cx: &mut Context) {
        let Machine::Transparent(t) = &mut self.machine else {
            return;
        };
        let original = t.original;
        let (name, method) = match seen {
            Peeked::Http(n) => {
                t.http = true;
                (n, "HTTP")
            }
            Peeked::Tls(n) => (n, "TLS"),
            Peeked::Incomplete | Peeked::Other => (None, "TCP"),
        };
        self.method = method;
        let port = original.port();
        let target = match name {
            Some(n) => Target::Name(n, port),
            None => Target::Addr(original),
        };
        self.target = target.to_string();
        self.parent = None;
        if let Some(f) = self.refusal {
            return self.fail(f, cx);
        }
        self.rule = None;
        if let Some(f) = self.admit_user(cx) {
            return self.fail(f, cx);
        }
        let host = match &target {
            Target::Name(n, _) => Some(n.clone()),
            Target::Addr(_) => None,
        };
        // Through a parent it is asked for the name (the address without
        // one); the rules see both.
        if let Some((p, v)) = self.route_to(host.as_deref(), Some(original.ip()), port, cx) {
            return self.via_parent(p, v, target, cx);
        }
        let v = self.verdict(cx, host.as_deref(), original);
        let Some(rate) = self.decided(v) else {
            return self.fail(Failure::Denied, cx);
        };
        self.set_rate(rate, cx);
        self.connect(original, cx);
    }

    /// The connection cannot go on: an HTTP request denied hears a 403
    /// saying so; anything else is closed.
    pub(super) fn intercept_failed(&mut self, why: Failure, cx: &mut Context) {
        let http = matches!(&self.machine, Machine::Transparent(t) if t.http);
        if http && why == Failure::Denied {
            let reply = crate::http::refusal_reply(403, Cause::Denied, &self.target, false);
            self.down.say(&reply);
            self.close_after_reply(Outcome::Denied, cx);
            return self.sync(cx);
        }
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::event::{Action, Event, Refused};
    use crate::id::{ConnId, ListenerId, Side};
    use crate::table::tests::{drain, open_first};
    use crate::table::{Accepted, Proxy};

    const SERVICE: &str = "[limits]\nhandshake_timeout = \"2s\"\n\
                           [[service]]\nname = \"lan\"\nkind = \"transparent\"\n\
                           listen = [\"127.0.0.1:3130\"]\n";

    fn proxy(extra: &str, now: Instant) -> (Proxy, ListenerId) {
        let text = format!("{SERVICE}{extra}");
        let config = crate::config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let mut p = Proxy::new(config, 1, now);
        let listener = open_first(&mut p, now);
        (p, listener)
    }

    fn accept(
        p: &mut Proxy,
        l: ListenerId,
        original: Option<&str>,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let peer = sa("10.0.0.2:40000");
        let accepted = Accepted::new(l, peer)
            .local(sa("127.0.0.1:3130"))
            .original(original.map(sa));
        let r = p.accept(accepted, now);
        drain(p);
        r
    }

    /// The client sends `bytes`: what it is told back, and the actions.
    fn say(p: &mut Proxy, conn: ConnId, bytes: &[u8], now: Instant) -> (Vec<u8>, Vec<Action>) {
        let buf = p.recv_buf(conn, Side::Client).expect("a read is wanted");
        buf[..bytes.len()].copy_from_slice(bytes);
        let (side, n) = (Side::Client, bytes.len());
        p.handle(Event::Read { conn, side, n }, now);
        let reply = p
            .send_buf(conn, Side::Client)
            .map(|b| [b[0], b[1]].concat())
            .unwrap_or_default();
        (reply, drain(p))
    }

    fn connect_to(actions: &[Action]) -> Option<(u32, SocketAddr)> {
        actions.iter().find_map(|a| match a {
            Action::Connect { attempt, addr, .. } => Some((*attempt, *addr)),
            _ => None,
        })
    }

    fn access(actions: &[Action]) -> Option<&crate::log::AccessRecord> {
        actions.iter().find_map(|a| match a {
            Action::Access(r) => Some(&**r),
            _ => None,
        })
    }

    /// Connects `conn`'s attempt and returns what goes upstream.
    fn connected(p: &mut Proxy, conn: ConnId, attempt: u32, now: Instant) -> Vec<u8> {
        let local = sa("10.0.0.1:50000");
        p.handle(
            Event::Connected {
                conn,
                attempt,
                local,
            },
            now,
        );
        drain(p);
        p.send_buf(conn, Side::Upstream)
            .map(|b| [b[0], b[1]].concat())
            .unwrap_or_default()
    }

    #[test]
    fn a_host_names_it_and_the_original_address_is_connected() {
        let now = Instant::now();
        let (mut p, l) = proxy("", now);
        let c = accept(&mut p, l, Some("10.9.0.1:80"), now).expect("accepted");
        let req = b"GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n";
        let (reply, actions) = say(&mut p, c, req, now);
        assert!(reply.is_empty(), "{reply:?}");
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Resolve { .. })),
            "{actions:?}"
        );
        let (attempt, addr) = connect_to(&actions).expect("a connect");
        assert_eq!(addr, sa("10.9.0.1:80"));
        // What was peeked goes on unchanged.
        assert_eq!(connected(&mut p, c, attempt, now), req);
        let (conn, side, n) = (c, Side::Upstream, req.len());
        p.handle(Event::Written { conn, side, n }, now);
        // The rest is a pure relay: a bulk answer, once written, leaves
        // the next ones to splice(2).
        let n = p.recv_buf(c, side).map_or(0, |b| b.len());
        p.handle(Event::Read { conn, side, n }, now);
        p.handle(
            Event::Written {
                conn,
                side: Side::Client,
                n,
            },
            now,
        );
        drain(&mut p);
        assert!(p.splice_ok(c, Side::Upstream), "the relay splices");
        p.handle(
            Event::Eof {
                conn: c,
                side: Side::Client,
            },
            now,
        );
        p.handle(
            Event::Eof {
                conn: c,
                side: Side::Upstream,
            },
            now,
        );
        let actions = drain(&mut p);
        let rec = access(&actions).expect("an access record");
        assert_eq!(
            (&*rec.method, &*rec.target, rec.destination),
            ("HTTP", "elsewhere.test:80", Some(sa("10.9.0.1:80")))
        );
    }

    #[test]
    fn a_denied_name_is_told_403_over_http_and_closed_over_tls() {
        let now = Instant::now();
        let rules = "[[rule]]\naction = \"deny\"\ndestinations = [\"blocked.test\"]\n\
                     [[rule]]\naction = \"allow\"\n";
        let (mut p, l) = proxy(rules, now);
        let c = accept(&mut p, l, Some("10.9.0.1:80"), now).expect("accepted");
        let req = b"GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n";
        let (reply, actions) = say(&mut p, c, req, now);
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 403 "), "{text}");
        assert!(text.contains("Portico-Error: denied\r\n"), "{text}");
        assert!(connect_to(&actions).is_none(), "{actions:?}");

        let c = accept(&mut p, l, Some("10.9.0.1:443"), now).expect("accepted");
        let hello = crate::proto::peek::tests::hello(Some("blocked.test"));
        let (reply, actions) = say(&mut p, c, &hello, now);
        assert!(reply.is_empty(), "{reply:?}");
        assert!(connect_to(&actions).is_none(), "{actions:?}");
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Close { conn } if *conn == c)),
            "{actions:?}"
        );
        let rec = access(&actions).expect("an access record");
        assert_eq!(
            (&*rec.method, &*rec.target, &*rec.status, rec.rule),
            ("TLS", "blocked.test:443", "denied", Some(1))
        );
        // An allowed name goes.
        let c = accept(&mut p, l, Some("10.9.0.1:443"), now).expect("accepted");
        let hello = crate::proto::peek::tests::hello(Some("fine.test"));
        let (_, actions) = say(&mut p, c, &hello, now);
        assert_eq!(connect_to(&actions).map(|c| c.1), Some(sa("10.9.0.1:443")));
    }

    #[test]
    fn silence_goes_by_address_once_the_peek_times_out() {
        let now = Instant::now();
        let (mut p, l) = proxy("", now);
        let c = accept(&mut p, l, Some("10.9.0.1:25"), now).expect("accepted");
        p.handle_timeout(now + Duration::from_millis(1999));
        assert!(connect_to(&drain(&mut p)).is_none());
        p.handle_timeout(now + Duration::from_secs(2));
        let actions = drain(&mut p);
        let (attempt, addr) = connect_to(&actions).expect("a connect");
        assert_eq!(addr, sa("10.9.0.1:25"));
        assert!(connected(&mut p, c, attempt, now).is_empty());
    }

    #[test]
    fn a_connection_not_redirected_is_refused() {
        let now = Instant::now();
        let (mut p, l) = proxy("", now);
        assert_eq!(accept(&mut p, l, None, now), Err(Refused::NotRedirected));
        assert_eq!(
            accept(&mut p, l, Some("127.0.0.1:3130"), now),
            Err(Refused::NotRedirected)
        );
    }

    #[test]
    fn a_parent_is_asked_for_the_name_or_the_address() {
        let now = Instant::now();
        let parent = "[[parent]]\nname = \"up\"\nkind = \"http\"\n\
                      addresses = [\"127.0.0.1:3128\"]\n";
        let text = SERVICE.replace(
            "kind = \"transparent\"\n",
            "kind = \"transparent\"\nvia = \"up\"\n",
        );
        let config = crate::config::parse(&format!("{text}{parent}"), "t.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut p = Proxy::new(config, 1, now);
        let l = open_first(&mut p, now);
        let c = accept(&mut p, l, Some("10.9.0.1:80"), now).expect("accepted");
        let (_, actions) = say(&mut p, c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n", now);
        let (attempt, addr) = connect_to(&actions).expect("a connect");
        assert_eq!(addr, sa("127.0.0.1:3128"));
        let out = connected(&mut p, c, attempt, now);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("CONNECT web.test:80 HTTP/1.1\r\n"),
            "{text}"
        );
        // No name: the address.
        let c = accept(&mut p, l, Some("10.9.0.1:25"), now).expect("accepted");
        p.handle_timeout(now + Duration::from_secs(2));
        let (attempt, _) = connect_to(&drain(&mut p)).expect("a connect");
        let out = connected(&mut p, c, attempt, now);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("CONNECT 10.9.0.1:25 HTTP/1.1\r\n"),
            "{text}"
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_port_itself_is_not_redirected() {
        use Intercept::{Redirect, Tproxy};
        let l = sa("0.0.0.0:3130");
        let here = sa("10.0.0.1:3130");
        assert!(Intercepted::new(Redirect, None, here, l).is_none());
        assert!(Intercepted::new(Redirect, Some(here), here, l).is_none());
        let mapped = sa("[::ffff:10.0.0.1]:3130");
        assert!(Intercepted::new(Redirect, Some(mapped), here, l).is_none());
        assert!(Intercepted::new(Redirect, Some(sa("0.0.0.0:80")), here, l).is_none());
        let t = Intercepted::new(Redirect, Some(sa("10.9.0.1:80")), here, l).expect("redirected");
        assert_eq!(t.original, sa("10.9.0.1:80"));
        // Redirected to a server elsewhere that uses the same port number.
        assert!(Intercepted::new(Redirect, Some(sa("10.9.0.1:3130")), here, l).is_some());
        // TPROXY: the local address is the original destination.
        let far = sa("10.9.0.1:80");
        assert!(Intercepted::new(Tproxy, Some(far), far, l).is_some());
        assert!(Intercepted::new(Tproxy, Some(here), here, l).is_none());
        let bound = sa("10.0.0.1:3131");
        assert!(Intercepted::new(Tproxy, Some(bound), bound, bound).is_none());
        assert!(Intercepted::new(Tproxy, Some(here), here, bound).is_some());
    }
}
