//! New connections: a client socket the runtime accepted becomes a session
//! with its service's machine — admitted, admitted only to be told a
//! refusal, or turned away — and a connection to an FTP data port becomes
//! a relay for the control connection that opened the port.

use std::net::SocketAddr;
use std::time::Instant;

use super::listeners::{DataPort, ListenerState, Report};
use super::Proxy;
use crate::config::ServiceKind;
use crate::event::{Intercept, Level, Refused};
use crate::id::{ConnId, ListenerId};
use crate::proto::http_proxy::HttpProxy;
use crate::proto::Failure;
use crate::session::{Machine, Phase, Session};

/// A client socket a runtime accepted, and what only the runtime can read
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Accepted {
    pub listener: ListenerId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client reached (the socket's local address), which
    /// FTP's passive mode announces; when not given, the listener's own,
    /// which differs from it only for a listener on a wildcard address.
    pub local: Option<SocketAddr>,
    /// On a transparent service's listener: where the client was going
    /// before the firewall sent it here (none: the runtime could not
    /// read it, so the connection was not redirected).
    pub original: Option<SocketAddr>,
}

impl Accepted {
    /// `peer` connected to `listener`.
    pub fn new(listener: ListenerId, peer: SocketAddr) -> Self {
        Accepted {
            listener,
            peer,
            local: None,
            original: None,
        }
    }

    /// The address the client reached.
    pub fn local(mut self, local: SocketAddr) -> Self {
        self.local = Some(local);
        self
    }

    /// Where the client was going before the firewall redirected it (see
    /// [`crate::Intercept`]).
    pub fn original(mut self, original: Option<SocketAddr>) -> Self {
        self.original = original;
        self
    }
}

impl Proxy {
    /// A client socket the runtime accepted. On `Err` the runtime closes
    /// it (the refusal is already logged).
    ///
    /// A connection over a limit, or denied by the rules on its address, is
    /// still admitted when its protocol has words for the refusal (SOCKS,
    /// HTTP, the gateways): it then lives only to say so, and at most
    /// [`crate::REFUSING_MAX`] such connections exist at once.
    pub fn accept(&mut self, accepted: Accepted, now: Instant) -> Result<ConnId, Refused> {
        let Accepted {
            listener,
            peer,
            local,
            original,
        } = accepted;
        self.tick(now);
        let at = local.or_else(|| self.cx.listeners.get(listener).map(|l| l.addr));
        let r = match at {
            Some(local) => self.admit_new(listener, peer, local, original, now),
            None => Err(Refused::UnknownListener),
        };
        if let Some(rec) = self.recorder.as_mut() {
            // An original destination is recorded with the address reached.
            let local = if original.is_some() {
                local.or(at)
            } else {
                local
            };
            let a = Accepted {
                listener,
                peer,
                local,
                original,
            };
            rec.accept(now, &a, r);
        }
        r
    }

    fn admit_new(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        self.cx.now = now;
        let (service, data) = match self.cx.listeners.get(listener) {
            Some(l) if l.state == ListenerState::Open => (l.service, l.data.clone()),
            // Accepted by the runtime before it closed the listener.
            Some(l) if self.cx.grace_until.is_some() => {
                let service = l.service;
                return Err(self.cx.refuse_plain(service, peer, Refused::ShuttingDown));
            }
            _ => return Err(Refused::UnknownListener),
        };
        if let Some(port) = data {
            return self.accept_data(listener, port, service, peer, now);
        }
        let conf = &self.cx.services[service].conf;
        let trusted = conf.proxy_protocol
            && conf
                .proxy_protocol_from
                .iter()
                .any(|n| n.contains(&peer.ip()));
        let machine = match conf.kind {
            ServiceKind::Http => {
                let mut h = Box::<HttpProxy>::default();
                h.logged = self.cx.access_logged();
                h.here = Some(local.ip());
                Machine::Http(h)
            }
            // Which protocol is known only from the client's first byte.
            ServiceKind::Auto => Machine::Auto,
            ServiceKind::Transparent => {
                let l = self.cx.listeners.get(listener);
                let how = l.and_then(|l| l.intercept).unwrap_or(Intercept::Redirect);
                let listening = l.map_or(local, |l| l.addr);
                match crate::session::Intercepted::new(how, original, local, listening) {
                    Some(i) => Machine::Transparent(Box::new(i)),
                    None => {
                        return Err(self.cx.refuse_plain(service, peer, Refused::NotRedirected))
                    }
                }
            }
            ServiceKind::Status => Machine::Status { asked: false },
            _ => match crate::proto::for_service(conf) {
                Some(p) => Machine::Gateway(p),
                None => Machine::Mapped,
            },
        };
        let refusal = if trusted {
            // A balancer in front: limits and rules wait for the real client
            // its PROXY header names. Only the table's own bound applies now.
            if self.cx.grace_until.is_some() {
                return Err(self.cx.refuse_plain(service, peer, Refused::ShuttingDown));
            }
            let mut counts = self.cx.ledger.lock();
            if counts.served() >= self.cx.config.limits.max_connections as usize {
                drop(counts);
                return Err(self.cx.refuse_plain(service, peer, Refused::TooMany));
            }
            counts.sessions += 1;
            None
        } else {
            match self
                .cx
                .admit(service, peer.ip(), machine.has_words(), false)
            {
                Ok(r) => r,
                Err(why) => return Err(self.cx.refuse_plain(service, peer, why)),
            }
        };
        let phase = if trusted {
            Phase::ProxyHeader
        } else {
            machine.first_phase()
        };
        let conn = self.next_id();
        let mut s = Session::new(conn, service, peer, local, machine, phase, now);
        s.target = match &s.machine {
            // The address until the peek names it better.
            Machine::Transparent(t) => t.original.to_string(),
            _ => self.cx.services[service].target.clone(),
        };
        s.refusal = refusal;
        if refusal == Some(Failure::Denied) {
            s.rule = self.cx.denying_rule(service, peer.ip());
        }
        if let Machine::Http(_) = s.machine {
            // Only bytes the HTTP machine clears are forwarded.
            s.up.fwd = Some(0);
            s.down.fwd = Some(0);
        }
        if let Some(server) = self.cx.services[service]
            .conf
            .tls
            .as_ref()
            .and_then(|t| t.server.as_ref())
        {
            match crate::session::Tls::new(server) {
                Ok(t) => s.tls = Some(Box::new(t)),
                Err(e) => {
                    // rustls refuses a connection only for a configuration
                    // it would not have built: end it rather than serve
                    // plain text on a TLS port.
                    self.cx.log(Level::Error, || format!("TLS: {e}"));
                    s.tls_failed_at_accept();
                }
            }
        }
        self.sessions.insert(s);
        self.run(
            conn,
            now,
            |s, cx| {
                if trusted {
                    s.sync(cx)
                } else {
                    s.begin(cx)
                }
            },
        );
        Ok(conn)
    }

    /// A connection to an FTP data port: only its own session's peer, once.
    fn accept_data(
        &mut self,
        listener: ListenerId,
        port: DataPort,
        service: usize,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let owner = match self.session(port.owner) {
            Some(owner) if peer.ip() == port.accept_from => owner,
            _ => {
                self.cx.log(Level::Debug, || {
                    format!("data port {listener:?}: connection from {peer} refused")
                });
                return Err(Refused::Denied);
            }
        };
        let user = owner.user.clone().or_else(|| match &owner.machine {
            Machine::Gateway(p) => p.log_user(),
            _ => None,
        });
        let owner_client = owner.client.ip();
        // A transfer's bytes count in its control connection's quotas.
        let quotas = owner
            .account
            .as_ref()
            .map(|a| a.quotas.clone())
            .filter(|q| !q.is_empty());
        // Toward the server, data leaves from where the control connection
        // did (servers check that the two come from one address).
        let owner_source = owner.upstream.local.map(|a| a.ip());
        // One transfer per port.
        self.cx.listeners.close(listener, &mut self.cx.actions);
        let mut counts = self.cx.ledger.lock();
        if counts.served() >= self.cx.config.limits.max_connections as usize {
            return Err(Refused::TooMany);
        }
        counts.add_client(peer.ip());
        counts.sessions += 1;
        drop(counts);
        self.cx.count_served(service);
        let conn = self.next_id();
        let machine = Machine::FtpData { owner: port.owner };
        let mut s = Session::new(conn, service, peer, peer, machine, Phase::Connecting, now);
        s.target = match &port.via_host {
            Some(h) => crate::proto::Target::Name(h.clone(), port.connect_to.port()).to_string(),
            None => port.connect_to.to_string(),
        };
        s.user = user;
        s.account = quotas.map(|quotas| {
            Box::new(crate::session::Account {
                // Not a connection of the user's own for max_per_user.
                user: None,
                quotas,
            })
        });
        s.upstream.outward = port.connect_to.ip() != owner_client;
        // (Without any `outgoing`, the system picks as it did for control.)
        let c = &self.cx.config;
        let pinned = c.network.outgoing.is_some()
            || c.network.outgoing6.is_some()
            || c.services.iter().any(|s| s.outgoing.is_some())
            || c.rules.iter().any(|r| r.outgoing.is_some());
        if s.upstream.outward && pinned {
            s.upstream.source = owner_source.filter(|ip| !ip.is_unspecified()).map(Box::new);
        }
        self.sessions.insert(s);
        let via_host = port.via_host.clone();
        self.run(conn, now, |s, cx| {
            s.connect_data(port.connect_to, via_host, cx)
        });
        Ok(conn)
    }

    /// The id the next session inserted gets: its slot, under a fresh
    /// generation.
    fn next_id(&mut self) -> ConnId {
        let idx = self.sessions.vacant_key();
        if self.gens.len() <= idx {
            self.gens.resize(idx + 1, 0);
        }
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        ConnId {
            idx: idx as u32,
            gen: self.gens[idx],
        }
    }

    /// A data port opened (or could not be): its session hears of it.
    pub(super) fn data_port_report(&mut self, report: Report, now: Instant) {
        if let Report::Data(port, local) = report {
            self.run(port.owner, now, |s, cx| {
                s.data_port_ready(port.token, local, cx)
            });
        }
    }
}
