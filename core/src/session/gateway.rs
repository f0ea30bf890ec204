//! Driving a gateway's [`crate::proto::Protocol`] (socks, telnet, smtp,
//! nntp, pop3, ftp): its greeting and handshake with the client, its talk
//! with the server once connected, its refusals, and for FTP the control
//! connection's filter ([`crate::proto::Control`]) and data ports.
//!
//! # States and exits
//!
//! ```text
//! Talking ─input: Next::Connect─► (the way out: crate::session::connect)
//!         ─input: Next::Close──► Closing;  ─client EOF mid-handshake─► (ended, "aborted")
//! Connecting ─Connected: Next::Relay─► Relay;  ─Next::Converse─► Conversing
//! Conversing ─upstream: Next::Relay─► Relay | Filtering (FTP: Control)
//!            ─Next::Close─► Closing;  ─server EOF mid-talk─► fail(Other)
//! Filtering ─Next::OpenData─► a data port;  ─Next::Close─► Closing
//! failed: the protocol's words, then Closing — or back to Talking when the
//! protocol asks again (interactive Telnet)
//! ```

use std::net::SocketAddr;

use super::{Machine, Phase, Session};
use crate::auth::{Answer, Check, Checker, Pending, Verdict};
use crate::event::Action;
use crate::id::Side;
use crate::outcome::Outcome;
use crate::proto::{Addresses, Failure, Next};
use crate::table::context::Context;
use crate::table::listeners::DataPort;

impl Session {
    /// Greets the client, or connects at once, as the protocol says.
    pub(super) fn start_gateway(&mut self, cx: &mut Context) {
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        if let (Some(why), true) = (self.refusal, p.refuses_at_accept()) {
            return self.fail(why, cx);
        }
        let mut reply = Vec::new();
        let mut scope = cx.scope(self.service);
        let next = p.start(&mut reply, &mut scope);
        self.method = p.method();
        self.down.say(&reply);
        self.step(next, cx);
    }

    /// Runs the handshake over what the client has sent.
    pub(super) fn gateway_input(&mut self, cx: &mut Context) {
        if self.phase != Phase::Talking {
            return;
        }
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let data = self.up.buf.as_ref().map_or(&[][..], |b| b.data());
        let mut reply = Vec::new();
        let mut scope = cx.scope(self.service);
        let (n, next) = p.input(data, &mut reply, &mut scope);
        self.method = p.method();
        if let Some(b) = self.up.buf.as_mut() {
            b.consume(n);
        }
        self.up.release_if_empty(&mut cx.pool);
        if !reply.is_empty() {
            self.down.say(&reply);
        }
        self.step(next, cx);
    }

    /// Carries out what the handshake asked for.
    fn step(&mut self, next: Next, cx: &mut Context) {
        match next {
            Next::Wait => {
                if self.up.eof && self.checking.is_none() {
                    // The client gave up before finishing.
                    self.outcome = Outcome::Aborted;
                    return self.end();
                }
                self.sync(cx);
            }
            Next::Connect { target, user } => self.request(target, user, cx),
            Next::Associate { client, user } => self.associate(client, user, cx),
            Next::Bind { peer, user } => self.bind(peer, user, cx),
            Next::Authenticate { user, password } => {
                if let Some(v) = self.login(&user, &password, cx) {
                    self.authenticated(v, cx)
                }
            }
            Next::Close(outcome) => {
                self.close_after_reply(outcome, cx);
                self.sync(cx);
            }
            // A handshake asks for nothing else; a machine that does is
            // broken, and its connection ends rather than guesses.
            _ => {
                self.close_after_reply(Outcome::Error, cx);
                self.sync(cx);
            }
        }
    }

    /// A login a machine asked about ([`Next::Authenticate`]): its verdict
    /// when it is known at once (throttled, unknown user, plain password,
    /// cached; counted), or none while the runtime checks the password.
    pub(super) fn login(
        &mut self,
        user: &[u8],
        password: &crate::auth::Secret,
        cx: &mut Context,
    ) -> Option<Verdict> {
        let (now, ip) = (cx.now, self.client.ip());
        if let Some(v) = cx.logins(self.service, ip).gate(now) {
            return Some(v);
        }
        match cx.users.check(user, &password.0, now) {
            Check::Known(v) => {
                cx.logins(self.service, ip).settle(v, now);
                Some(v)
            }
            Check::Ask(p) => {
                self.ask_check(p, cx);
                None
            }
        }
    }

    /// Hands a password check to the runtime; the session waits for
    /// [`Session::on_password_checked`].
    fn ask_check(&mut self, p: Box<Pending>, cx: &mut Context) {
        cx.services[self.service].counters.password_checks += 1;
        cx.actions.push_back(match &p.checker {
            Checker::Hash(phc) => Action::CheckPassword {
                conn: self.id,
                phc: phc.clone(),
                password: p.password.clone(),
            },
            Checker::Helper(h) => Action::AskHelper {
                conn: self.id,
                helper: h.clone(),
                user: p.name.clone(),
                password: p.password.clone(),
            },
        });
        self.checking = Some(p);
        self.sync(cx);
    }

    /// The runtime's verdict on the password check this session asked
    /// for (none asked: a verdict that is not this session's, dropped).
    pub fn on_password_checked(&mut self, answer: Answer, cx: &mut Context) {
        let Some(p) = self.checking.take() else {
            return;
        };
        match cx.users.settle_answer(&p, answer, cx.now) {
            Check::Known(v) => {
                let now = cx.now;
                cx.logins(self.service, self.client.ip()).settle(v, now);
                self.authenticated(v, cx)
            }
            // Reloaded meanwhile, and the new users' hash is to be checked.
            Check::Ask(p) => self.ask_check(p, cx),
        }
    }

    /// A login's verdict (counted already): told to the protocol, and
    /// then what the client sent meanwhile is its next step.
    fn authenticated(&mut self, v: Verdict, cx: &mut Context) {
        if let Machine::Http(_) = self.machine {
            return self.http_checked(v, cx);
        }
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let mut reply = Vec::new();
        let next = p.checked(v, &mut reply);
        self.down.say(&reply);
        let buffered = self.up.buf.as_ref().is_some_and(|b| !b.data().is_empty());
        if next == Next::Wait && buffered {
            // Before a client's end of stream is taken for giving up.
            self.gateway_input(cx);
        } else {
            self.step(next, cx);
        }
    }

    /// The upstream connection is up: the protocol says its success, and
    /// whether it talks with the server first.
    pub(super) fn gateway_connected(&mut self, local: SocketAddr, cx: &mut Context) {
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let mut reply = Vec::new();
        let mut to_server = Vec::new();
        let next = p.connected(local, &mut reply, &mut to_server);
        self.down.say(&reply);
        self.up.say(&to_server);
        if next == Next::Converse {
            // Nothing is relayed until the protocol says so.
            self.enter(Phase::Conversing, cx.now);
            self.up.fwd = Some(0);
            self.down.fwd = Some(0);
        }
        self.sync(cx);
    }

    /// Runs the protocol's talk with the server over what it has sent
    /// (`eof`: and no more will come).
    pub(super) fn converse(&mut self, eof: bool, cx: &mut Context) {
        if self.phase != Phase::Conversing {
            return;
        }
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let data = self.down.buf.as_ref().map_or(&[][..], |b| b.data());
        let mut reply = Vec::new();
        let mut to_server = Vec::new();
        let (n, next) = p.upstream(data, &mut reply, &mut to_server);
        let stays = p.control().is_some();
        if let Some(b) = self.down.buf.as_mut() {
            b.consume(n);
        }
        self.down.release_if_empty(&mut cx.pool);
        self.down.say(&reply);
        self.up.say(&to_server);
        match next {
            // The server hung up mid-handshake.
            Next::Wait if eof => self.fail(Failure::Other, cx),
            Next::Wait => {}
            Next::Relay if stays => {
                // The protocol stays in the path: bytes left over from the
                // handshake go through it too.
                self.phase = Phase::Filtering;
                self.last_active = cx.now;
                self.control(Side::Upstream, cx);
                if !self.ended {
                    self.control(Side::Client, cx);
                }
            }
            Next::Relay => {
                self.up.fwd = None;
                self.down.fwd = None;
                self.phase = Phase::Relay;
                self.last_active = cx.now;
            }
            Next::Close(outcome) => self.close_after_reply(outcome, cx),
            _ => self.close_after_reply(Outcome::Error, cx),
        }
    }

    /// Passes new bytes of `side` through a control machine (FTP), while
    /// filtering.
    pub(super) fn control(&mut self, side: Side, cx: &mut Context) {
        if self.phase != Phase::Filtering {
            return;
        }
        let ends = Addresses {
            client: self.client,
            client_local: self.local,
            server: self.upstream.addr.unwrap_or(self.client),
            server_local: self.upstream.local.unwrap_or(self.local),
        };
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let Some(c) = p.control() else {
            return;
        };
        let mut todo = Vec::new();
        match side {
            Side::Client => c.from_client(&mut self.up, &mut self.down, &ends, &mut todo),
            Side::Upstream => c.from_server(&mut self.up, &mut self.down, &ends, &mut todo),
        }
        for next in todo {
            match next {
                Next::OpenData(port) => {
                    let data = DataPort {
                        owner: self.id,
                        token: port.token,
                        accept_from: port.accept_from,
                        connect_to: port.connect_to,
                        via_host: self.data_via_host(port.connect_to),
                    };
                    cx.listeners
                        .open_data(self.service, port.bind, data, &mut cx.actions);
                }
                Next::Close(outcome) => self.close_after_reply(outcome, cx),
                // A control machine asks for nothing else.
                _ => {}
            }
        }
    }

    /// The data port `token` is open at `local` (or, `None`, could not be
    /// opened): the control machine says so to its client.
    pub fn data_port_ready(&mut self, token: u32, local: Option<SocketAddr>, cx: &mut Context) {
        if let Machine::Gateway(p) = &mut self.machine {
            if let Some(c) = p.control() {
                match local {
                    Some(local) => c.data_listening(token, local, &mut self.up, &mut self.down),
                    None => c.data_failed(token, &mut self.up, &mut self.down),
                }
            }
        }
        self.sync(cx);
    }

    /// The request cannot be served: the protocol's words, then the close
    /// — or, where the protocol asks again, the handshake once more.
    pub(super) fn gateway_failed(&mut self, why: Failure, cx: &mut Context) {
        if self.upstream.binding {
            // A BIND that failed waits no more: its listener goes before
            // the reply says so.
            self.upstream.binding = false;
            cx.actions
                .push_back(crate::event::Action::BindClose { conn: self.id });
        }
        let Machine::Gateway(p) = &mut self.machine else {
            return;
        };
        let mut reply = Vec::new();
        p.failed(why, &mut reply);
        let again = self.refusal.is_none() && p.asks_again();
        self.down.say(&reply);
        self.phase_since = cx.now;
        let buffered = self.up.buf.as_ref().is_some_and(|b| !b.data().is_empty());
        if again && (buffered || !self.up.eof) {
            // Back to the handshake: the client names another destination
            // (what it typed meanwhile is its next request). The try was
            // answered, so the log line says how the session ends; the
            // failed socket goes now rather than when the next replaces it.
            self.outcome = Outcome::Ok;
            self.cause = None;
            self.phase = Phase::Talking;
            self.upstream.addr = None;
            self.parent = None;
            self.close_upstream(cx);
            return self.client_bytes(cx);
        }
        self.phase = Phase::Closing;
        self.drop_unsent(cx);
        self.sync(cx);
    }
}
