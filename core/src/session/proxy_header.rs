//! A trusted balancer's PROXY header (see `crate::proxy_protocol`): read
//! before anything else, it names the real client, which is then admitted
//! as if it had connected itself.
//!
//! # States and exits
//!
//! ```text
//! ProxyHeader ─header, client admitted─► the machine's first phase (begin)
//!             ─header, client refused─► (ended, refused plainly)
//!             ─bad header─► (ended, "bad-proxy-header");  ─EOF─► (ended, "aborted")
//!             ─handshake_timeout─► (ended, "timeout")
//! ```

use super::Session;
use crate::event::Level;
use crate::outcome::Outcome;
use crate::proto::Failure;
use crate::proxy_protocol::{self, Header, Parse};
use crate::table::context::Context;

impl Session {
    /// Reads the PROXY header from what the balancer has sent.
    pub(super) fn proxy_header(&mut self, cx: &mut Context) {
        let data = self.up.buf.as_ref().map_or(&[][..], |b| b.data());
        match proxy_protocol::parse(data) {
            Parse::More => {
                if self.up.eof {
                    self.outcome = Outcome::Aborted;
                    self.end_unadmitted(cx);
                }
            }
            Parse::Invalid(why) => {
                let client = self.client;
                cx.log(Level::Debug, || {
                    format!("{client}: bad PROXY header: {why}")
                });
                self.outcome = Outcome::BadProxyHeader;
                self.end_unadmitted(cx);
            }
            Parse::Done { header, len } => {
                if let Some(b) = self.up.buf.as_mut() {
                    b.consume(len);
                }
                self.up.release_if_empty(&mut cx.pool);
                if let Header::Proxied { source, .. } = header {
                    self.client = source;
                }
                let words = self.machine.has_words();
                match cx.admit(self.service, self.client.ip(), words, true) {
                    Ok(refusal) => {
                        self.refusal = refusal;
                        if refusal == Some(Failure::Denied) {
                            self.rule = cx.denying_rule(self.service, self.client.ip());
                        }
                        let first = self.machine.first_phase();
                        self.enter(first, cx.now);
                        self.begin(cx);
                        // Bytes behind the header may already be a request.
                        if !self.ended {
                            self.client_bytes(cx);
                        }
                    }
                    Err(why) => {
                        cx.refuse_plain(self.service, self.client, why);
                        self.end_unadmitted(cx);
                    }
                }
            }
        }
    }
}
