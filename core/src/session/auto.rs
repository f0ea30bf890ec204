//! The auto service's connection (`kind = "auto"`): HTTP, SOCKS4 and SOCKS5
//! on one port. The session waits for the client's first byte (within
//! `handshake_timeout`, like any handshake), then becomes the HTTP proxy's
//! session (any byte but 4 and 5) or the SOCKS gateway's (4: SOCKS4, 5:
//! SOCKS5) and goes on exactly as on an http or socks service: the same
//! machine, the service's `auth` and `connect_ports`, its refusals in that
//! protocol's words; counted and logged under the auto service's name.
//!
//! # States and exits
//!
//! ```text
//! Talking (Machine::Auto) ─first byte 4 or 5─► Machine::Gateway(SOCKS), Talking
//!                         ─any other byte────► Machine::Http, Talking
//!                         ─client EOF────────► (ended, "aborted")
//!                         ─handshake_timeout─► (ended, "timeout")
//! ```

use super::{Machine, Phase, Session};
use crate::outcome::Outcome;
use crate::proto::http_proxy::HttpProxy;
use crate::proto::socks::Socks;
use crate::table::context::Context;

/// The first bytes of SOCKS4 and SOCKS5 requests (their version numbers).
const SOCKS4: u8 = 4;
const SOCKS5: u8 = 5;

impl Session {
    /// Reads the client's first byte, if it has come, and becomes the
    /// session it names; then that session reads what the client sent.
    pub(super) fn auto_input(&mut self, cx: &mut Context) {
        if self.phase != Phase::Talking || !matches!(self.machine, Machine::Auto) {
            return;
        }
        let first = self.up.buf.as_ref().and_then(|b| b.data().first().copied());
        let Some(first) = first else {
            if self.up.eof {
                // Gone before saying anything.
                self.outcome = Outcome::Aborted;
                return self.end();
            }
            return self.sync(cx);
        };
        self.machine = match first {
            SOCKS4 | SOCKS5 => Machine::Gateway(Box::<Socks>::default()),
            _ => {
                let mut h = Box::<HttpProxy>::default();
                h.logged = cx.access_logged();
                h.here = Some(self.local.ip());
                // As at an http service's accept: only bytes the HTTP
                // machine clears are forwarded.
                self.up.fwd = Some(0);
                self.down.fwd = Some(0);
                Machine::Http(h)
            }
        };
        self.method = self.machine.method();
        // Neither SOCKS nor HTTP says anything before the client's
        // request (a refusal decided at accept waits for it too), so what
        // the machine's start would do is only to read: that is next.
        self.client_bytes(cx);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::event::{Action, Event};
    use crate::id::{ConnId, ListenerId, Side};
    use crate::table::tests::{drain, open_first};
    use crate::table::{Accepted, Proxy};

    const AUTO: &str = "[[user]]\nname = \"alice\"\npassword = \"plain:secret\"\n\
                        [[service]]\nname = \"all\"\nkind = \"auto\"\n\
                        listen = [\"127.0.0.1:8000\"]\n";

    fn proxy(extra: &str, now: Instant) -> (Proxy, ListenerId) {
        let text = format!("{AUTO}{extra}");
        let config = crate::config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let mut p = Proxy::new(config, 1, now);
        let listener = open_first(&mut p, now);
        (p, listener)
    }

    fn accept(p: &mut Proxy, listener: ListenerId, port: u16, now: Instant) -> ConnId {
        let peer = std::net::SocketAddr::from(([10, 0, 0, 1], port));
        let local = "127.0.0.1:8000".parse().expect("address");
        let conn = p
            .accept(Accepted::new(listener, peer).local(local), now)
            .expect("accepted");
        drain(p);
        conn
    }

    /// Sends `bytes` from the client of `conn`; returns what the table then
    /// has for the client, and the actions it queued.
    fn say(p: &mut Proxy, conn: ConnId, bytes: &[u8], now: Instant) -> (Vec<u8>, Vec<Action>) {
        let buf = p.recv_buf(conn, Side::Client).expect("a read is wanted");
        buf[..bytes.len()].copy_from_slice(bytes);
        let n = bytes.len();
        let side = Side::Client;
        p.handle(Event::Read { conn, side, n }, now);
        let reply = p
            .send_buf(conn, Side::Client)
            .map(|b| [b[0], b[1]].concat())
            .unwrap_or_default();
        (reply, drain(p))
    }

    fn connects(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::Connect { .. } | Action::Resolve { .. }))
    }

    #[test]
    fn the_first_byte_picks_the_protocol() {
        let now = Instant::now();
        let (mut p, l) = proxy("", now);
        // SOCKS5: the method reply, then a CONNECT goes out.
        let c = accept(&mut p, l, 1, now);
        let (reply, _) = say(&mut p, c, &[5, 1, 0], now);
        assert_eq!(reply, [5, 0]);
        // SOCKS4: straight to the connect.
        let c = accept(&mut p, l, 2, now);
        let (reply, actions) = say(&mut p, c, &[4, 1, 0, 80, 10, 0, 0, 9, b'x', 0], now);
        assert!(
            reply.is_empty() && connects(&actions),
            "{reply:?} {actions:?}"
        );
        // HTTP: a request through the proxy.
        let c = accept(&mut p, l, 3, now);
        let req = b"GET http://10.0.0.9/ HTTP/1.1\r\nHost: 10.0.0.9\r\n\r\n";
        let (reply, actions) = say(&mut p, c, req, now);
        assert!(
            reply.is_empty() && connects(&actions),
            "{reply:?} {actions:?}"
        );
    }

    #[test]
    fn with_auth_socks4_is_refused_and_http_asks_for_credentials() {
        let now = Instant::now();
        let (mut p, l) = proxy("auth = true\n", now);
        let c = accept(&mut p, l, 1, now);
        let (reply, actions) = say(&mut p, c, &[4, 1, 0, 80, 10, 0, 0, 9, b'x', 0], now);
        assert_eq!(reply.get(..2), Some(&[0, 0x5B][..]), "{actions:?}");
        assert!(!connects(&actions), "{actions:?}");
        let c = accept(&mut p, l, 2, now);
        let req = b"GET http://10.0.0.9/ HTTP/1.1\r\nHost: 10.0.0.9\r\n\r\n";
        let (reply, actions) = say(&mut p, c, req, now);
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 407 "), "{text}");
        assert!(!connects(&actions), "{actions:?}");
        // SOCKS5 offers only username/password.
        let c = accept(&mut p, l, 3, now);
        let (reply, _) = say(&mut p, c, &[5, 2, 0, 2], now);
        assert_eq!(reply, [5, 2]);
    }

    #[test]
    fn the_pac_file_is_served_on_the_http_side() {
        let now = Instant::now();
        let (mut p, l) = proxy("[pac]\nproxy = \"all\"\n", now);
        let c = accept(&mut p, l, 1, now);
        let req = b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n";
        let (reply, actions) = say(&mut p, c, req, now);
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: application/x-ns-proxy-autoconfig\r\n"),
            "{text}"
        );
        assert!(
            text.contains("return \"PROXY 127.0.0.1:8000; SOCKS5 127.0.0.1:8000\";"),
            "{text}"
        );
        assert!(!connects(&actions), "{actions:?}");
    }

    #[test]
    fn a_client_that_says_nothing_times_out() {
        let now = Instant::now();
        let (mut p, l) = proxy("", now);
        let c = accept(&mut p, l, 1, now);
        let later = now + Duration::from_secs(31);
        p.handle_timeout(later);
        let actions = drain(&mut p);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Close { conn } if *conn == c)),
            "{actions:?}"
        );
        let rec = actions
            .iter()
            .find_map(|a| match a {
                Action::Access(r) => Some(r),
                _ => None,
            })
            .expect("an access record");
        assert_eq!((&*rec.method, &*rec.status), ("-", "timeout"));
        assert_eq!(&*rec.service, "all");
    }
}
