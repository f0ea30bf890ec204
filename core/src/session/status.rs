//! The status service's connection: one request head, answered from the
//! table's snapshot (see `crate::status` for the pages), then the close.
//!
//! # States and exits
//!
//! ```text
//! Talking ─head complete, a page─► (the table answers) ─► Closing ─written─► (ended)
//!     ├─/proxy.pac or /wpad.dat──► the PAC file (or 404), Closing
//!     ├─head too long, or not a GET/HEAD──► 400/405/431, Closing
//!     ├─client EOF before a complete head──► (ended)
//!     └─handshake_timeout──► (ended)
//! ```
//!
//! A client that shuts its side after a complete request still gets its
//! answer, also when it has to be gathered from the other workers.

use super::{Machine, Phase, Session};
use crate::status;
use crate::table::context::{Context, Request};

impl Session {
    /// Reads the status request; a page is answered by the table (it needs
    /// every connection), an error at once.
    pub(super) fn status_request(&mut self, cx: &mut Context) {
        if self.phase != Phase::Talking || matches!(self.machine, Machine::Status { asked: true }) {
            return;
        }
        let input = self.up.buf.as_ref().map_or(&[][..], |b| b.data());
        let reply = match status::parse(input) {
            status::Parse::More if !self.up.has_space() => status::error(431),
            status::Parse::More => return,
            status::Parse::Bad(code) => status::error(code),
            status::Parse::Get {
                page: status::Page::Pac,
                head_only,
            } => {
                // Made from the configuration in force and the address the
                // client reached; nothing of the table's is needed.
                let script = crate::pac::script(&cx.config, self.local.ip());
                status::pac(script.as_deref(), head_only)
            }
            status::Parse::Get { page, head_only } => {
                self.machine = Machine::Status { asked: true };
                cx.requests.push(Request::Status {
                    conn: self.id,
                    page,
                    head_only,
                });
                return;
            }
        };
        self.status_reply(&reply, cx);
    }

    /// Says a status answer and closes once it is written.
    pub fn status_reply(&mut self, reply: &[u8], cx: &mut Context) {
        self.method = "GET";
        self.down.say(reply);
        self.enter(Phase::Closing, cx.now);
        self.drop_unsent(cx);
    }

    /// Whether a status request is still to be answered (not yet by
    /// another worker's part).
    pub fn awaits_status(&self) -> bool {
        self.phase == Phase::Talking
    }
}
