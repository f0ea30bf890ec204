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
