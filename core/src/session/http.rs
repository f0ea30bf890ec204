//! Driving the HTTP forward proxy's machine
//! ([`crate::proto::http_proxy::HttpProxy`]): it parses and rewrites the
//! exchanges in the session's two directions and asks, in the one
//! vocabulary ([`Next`]), for upstream connections, their drop, a tunnel,
//! the close and access-log lines; this module carries those out.
//!
//! # States and exits (of the session; the exchanges' own are in the
//! machine's module)
//!
//! ```text
//! Talking ─a request: Next::Connect─► Resolving | Connecting ─Connected─► Filtering
//! (a request with Proxy-Authorization: Next::Authenticate first; the
//! session waits in its phase, reading nothing from the client, until the
//! verdict, known at once or from the runtime's check)
//! Filtering ─a request elsewhere: Next::Connect─► Resolving | Connecting ─► Filtering
//!           ─Next::Relay (CONNECT's 200, a 101)─► Relay
//!           ─Next::Close─► Closing;  ─client done and owed nothing─► (ended)
//! ```

use std::net::SocketAddr;

use super::{Dir, HttpProxy, Machine, Phase, Session};
use crate::auth::Verdict;
use crate::event::Action;
use crate::proto::{Failure, Next};
use crate::table::context::Context;

/// The access line of a finished exchange whose bytes are still queued:
/// it goes out once they are written, or when the connection ends, less
/// what was never written. So `up=`/`down=` are what the sockets took, and
/// a service's `portico_bytes_total` is the sum of its lines.
#[derive(Debug)]
pub struct Held {
    rec: Box<crate::log::AccessRecord>,
    /// [`crate::proto::http_proxy::Exchange::up_end`] and `down_end`.
    up_end: u64,
    down_end: u64,
    /// When the exchange finished: the line's duration runs on to the
    /// last byte written.
    done: std::time::Instant,
}

impl Held {
    fn written(&self, up: &Dir, down: &Dir) -> bool {
        up.bytes >= self.up_end && down.bytes >= self.down_end
    }

    /// The line, counting only bytes written by now.
    pub(super) fn settle(
        mut self,
        up: &Dir,
        down: &Dir,
        now: std::time::Instant,
    ) -> Box<crate::log::AccessRecord> {
        let r = &mut self.rec;
        r.up = r.up.saturating_sub(self.up_end.saturating_sub(up.bytes));
        r.down = r
            .down
            .saturating_sub(self.down_end.saturating_sub(down.bytes));
        r.duration += now.saturating_duration_since(self.done);
        self.rec
    }
}

impl Session {
    /// The access line of exchange `x`, to go out once its bytes are
    /// written.
    pub(super) fn hold_line(
        &self,
        user: Option<String>,
        x: crate::proto::http_proxy::Exchange,
        cx: &Context,
    ) -> Held {
        let (up_end, down_end) = (x.up_end, x.down_end);
        Held {
            rec: Box::new(self.exchange_record(user, x, cx)),
            up_end,
            down_end,
            done: cx.now,
        }
    }

    /// Sends the held access lines whose bytes are written by now.
    pub(super) fn release_lines(&mut self, cx: &mut Context) {
        let Machine::Http(h) = &mut self.machine else {
            return;
        };
        let n = h
            .held
            .iter()
            .take_while(|x| x.written(&self.up, &self.down))
            .count();
        for x in h.held.drain(..n) {
            let rec = x.settle(&self.up, &self.down, cx.now);
            cx.actions.push_back(Action::Access(rec));
        }
    }

    /// Runs the HTTP machine over what the client has sent.
    pub(super) fn http_client(&mut self, cx: &mut Context) {
        self.http_request_step(cx, |h, up, down, scope, now, todo| {
            h.client(up, down, scope, now, todo)
        });
    }

    /// One step of the request side that may need the service's scope
    /// (the client's bytes, a login's verdict), while a request is still
    /// being answered; afterwards (a timeout answered it) nothing waits.
    fn http_request_step(
        &mut self,
        cx: &mut Context,
        step: impl FnOnce(
            &mut HttpProxy,
            &mut Dir,
            &mut Dir,
            &mut crate::proto::Scope,
            std::time::Instant,
            &mut Vec<Next>,
        ),
    ) {
        if !matches!(
            self.phase,
            Phase::Talking | Phase::Filtering | Phase::Resolving | Phase::Connecting
        ) {
            return;
        }
        let Machine::Http(h) = &mut self.machine else {
            return;
        };
        let mut todo = Vec::new();
        let now = cx.now;
        let mut scope = cx.scope(self.service);
        step(h, &mut self.up, &mut self.down, &mut scope, now, &mut todo);
        self.http_todo(todo, cx);
    }

    pub(super) fn http_server(&mut self, eof: bool, cx: &mut Context) {
        if self.phase != Phase::Filtering {
            return;
        }
        let Machine::Http(h) = &mut self.machine else {
            return;
        };
        let mut todo = Vec::new();
        h.upstream(&mut self.up, &mut self.down, eof, cx.now, &mut todo);
        if eof {
            self.upstream.open = false;
        }
        self.http_todo(todo, cx);
        // A response that finished lets a pipelined request behind it go.
        if !self.ended && self.phase == Phase::Filtering {
            self.http_client(cx);
        }
    }

    /// The upstream for the request (or the CONNECT tunnel) is up.
    pub(super) fn http_connected(&mut self, local: SocketAddr, cx: &mut Context) {
        let Machine::Http(h) = &mut self.machine else {
            return;
        };
        self.phase = Phase::Filtering;
        let mut todo = Vec::new();
        h.connected(local, &mut self.down, &mut todo);
        self.http_todo(todo, cx);
        if !self.ended {
            // A request may already wait in the prefix.
            self.sync(cx);
        }
    }

    /// The upstream for the request in flight could not be had.
    pub(super) fn http_failed(&mut self, why: Failure, cx: &mut Context) {
        let Machine::Http(h) = &mut self.machine else {
            return;
        };
        let mut todo = Vec::new();
        h.failed(why, &self.target, &mut self.down, &mut todo);
        self.http_todo(todo, cx);
    }

    /// A request head did not arrive within `handshake_timeout`: 408.
    pub(super) fn http_timed_out(&mut self, cx: &mut Context) {
        let Machine::Http(h) = &mut self.machine else {
            return;
        };
        let mut todo = Vec::new();
        h.timed_out(&self.up, &mut self.down, cx.now, &mut todo);
        self.http_todo(todo, cx);
    }

    /// The verdict on the login of the request waiting for it: the
    /// machine refuses the request or lets it go on, then parses what the
    /// client sent meanwhile.
    pub(super) fn http_checked(&mut self, v: Verdict, cx: &mut Context) {
        self.http_request_step(cx, |h, up, down, scope, now, todo| {
            h.checked(v, up, down, scope, now, todo)
        });
    }

    /// Carries out what the HTTP machine asked for.
    fn http_todo(&mut self, todo: Vec<Next>, cx: &mut Context) {
        // A login known at once lets the machine go on, and what it asks
        // then is carried out in turn (a loop, not a recursion: pipelined
        // requests may be many).
        let mut todo = std::collections::VecDeque::from(todo);
        while let Some(next) = todo.pop_front() {
            if self.ended {
                return;
            }
            match next {
                Next::Authenticate { user, password } => {
                    let Some(v) = self.login(&user, &password, cx) else {
                        // Asked of the runtime: on_password_checked goes on.
                        continue;
                    };
                    let Machine::Http(h) = &mut self.machine else {
                        continue;
                    };
                    let mut more = Vec::new();
                    let now = cx.now;
                    let mut scope = cx.scope(self.service);
                    h.checked(v, &mut self.up, &mut self.down, &mut scope, now, &mut more);
                    todo.extend(more);
                }
                Next::Connect { target, user } => {
                    if self.upstream.open {
                        self.close_upstream(cx);
                    }
                    // A new upstream: its end of stream is yet to come.
                    self.down.eof = false;
                    self.down.shut = false;
                    self.up.shut = false;
                    self.request(target, user, cx);
                }
                Next::DropUpstream if self.upstream.open => self.close_upstream(cx),
                Next::Refused(cause) => self.note_cause(cause, cx),
                Next::Responded(status) => cx.services[self.service].count_http_response(status),
                Next::Relay => {
                    self.up.fwd = None;
                    self.down.fwd = None;
                    self.phase = Phase::Relay;
                }
                Next::Close(outcome) => {
                    self.close_after_reply(outcome, cx);
                    if self.upstream.open {
                        self.close_upstream(cx);
                    }
                }
                Next::Log(x) if cx.access_logged() => {
                    let user = match &self.machine {
                        Machine::Http(h) => h.user.clone(),
                        _ => None,
                    };
                    let held = self.hold_line(user, x, cx);
                    match &mut self.machine {
                        Machine::Http(h) if !held.written(&self.up, &self.down) => {
                            h.held.push(held)
                        }
                        _ => cx.actions.push_back(Action::Access(held.rec)),
                    }
                }
                // The HTTP machine asks for nothing else.
                _ => {}
            }
        }
        if !self.ended {
            self.sync(cx);
        }
    }
}
