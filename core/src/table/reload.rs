//! A new configuration taking over (SIGHUP): services matched by name and
//! kind keep their counters, listeners that stay keep their sockets, new
//! ones open and those gone close; the new rules, limits and users apply to
//! new connections — and, with `recheck`, close those in flight that the
//! new rules deny.

use std::net::SocketAddr;
use std::time::Instant;

use super::context::ServiceInfo;
use super::listeners::Socket;
use super::{listens, warnings, Proxy, POOL_KEEP};
use crate::buffer::Pool;
use crate::config::Config;
use crate::event::Level;
use crate::id::ConnId;
use crate::outcome::Outcome;
use crate::rules::{self, Query, Verdict};
use crate::session::Machine;
use crate::status_page::LastReload;
use crate::table::context::Context;

/// How a configuration is taken over (see [`Proxy::reconfigure`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reload<'a> {
    /// The configuration's text, which the flight recorder keeps.
    pub text: &'a str,
    /// Close the connections in flight that the new rules deny.
    pub recheck: bool,
    /// How many connections the other workers' tables closed (worker 0
    /// says the total).
    pub closed_elsewhere: usize,
}

impl Proxy {
    /// Takes a new configuration (SIGHUP): listeners that are new open,
    /// those gone close, those that stay keep their sockets; the new rules,
    /// limits and users apply to new connections, and connections in flight
    /// keep going — unless `reload.recheck`, which closes those the new
    /// rules deny. Returns how many connections this table closed.
    ///
    /// With several workers, the others reload first; worker 0 last, with
    /// `reload.closed_elsewhere` (what theirs closed), and only it logs the
    /// reload.
    pub fn reconfigure(&mut self, config: Config, reload: Reload<'_>, now: Instant) -> usize {
        if let Some(rec) = self.recorder.as_mut() {
            rec.reload(now, reload.text, reload.recheck);
        }
        let Reload {
            recheck,
            closed_elsewhere,
            ..
        } = reload;
        self.cx.now = now;
        // What the services did so far counts in the interval it was done in.
        self.tick(now);
        let at = self.cx.wall.unix_secs;
        self.last_reload = LastReload {
            when: Some(now),
            at,
            ok: true,
            message: None,
            last_success: at,
        };
        let index = self.match_services(&config);
        self.match_listeners(&config, &index);
        for w in warnings(self.cx.worker, &config) {
            self.cx.log(Level::Warn, || w);
        }
        if config.limits.buffer != self.cx.pool.buffer_size() {
            // Buffers of the old size drain back and are freed.
            self.cx.pool = Pool::new(
                config.limits.buffer,
                POOL_KEEP.min(config.limits.max_connections as usize * 2),
            );
        }
        self.cx.users = self
            .cx
            .users
            .reloaded(&config.users, config.limits.auth_cache)
            .with_helper(config.helper.clone());
        self.cx.config = config;
        // The access log may have been turned on or off: requests from now
        // on are recorded, or not, on connections already open too.
        let logged = self.cx.access_logged();
        for (_, s) in self.sessions.iter_mut() {
            if let Machine::Http(h) = &mut s.machine {
                h.logged = logged;
            }
        }
        let mut closed = 0;
        if recheck {
            let ids: Vec<ConnId> = self.sessions.iter().map(|(_, s)| s.id).collect();
            for conn in ids {
                if let Some(rule) = self.denied_now(conn) {
                    closed += 1;
                    self.run(conn, now, |s, _| {
                        s.outcome = Outcome::Denied;
                        // The new rule that denied it, not the old one
                        // that had allowed it.
                        s.rule = rule;
                        s.ended = true;
                    });
                }
            }
        }
        if self.cx.worker != 0 {
            // Worker 0 reloads last and says it for all.
            return closed;
        }
        closed += closed_elsewhere;
        let open = self.cx.ledger.lock().sessions;
        self.cx.log(Level::Info, || {
            if recheck {
                format!(
                    "configuration reloaded; {closed} connections the new rules deny were \
                     closed, {open} go on"
                )
            } else {
                format!("configuration reloaded; {open} connections go on under the old rules")
            }
        });
        closed
    }

    /// The configuration SIGHUP read again did not load (`message` says
    /// why; the runtime logged it): nothing changes but what the status
    /// answers say of the last reload.
    pub fn reload_failed(&mut self, message: &str, now: Instant) {
        if let Some(rec) = self.recorder.as_mut() {
            rec.reload_failed(now, message);
        }
        self.last_reload = LastReload {
            when: Some(now),
            at: self.cx.wall.unix_secs,
            ok: false,
            message: Some(message.to_string()),
            last_success: self.last_reload.last_success,
        };
    }

    /// Services: same name and kind → the same entry (its counters go on);
    /// others are added; those gone are retired. Returns each new service's
    /// entry.
    fn match_services(&mut self, config: &Config) -> Vec<usize> {
        let services = &mut self.cx.services;
        let mut index = Vec::with_capacity(config.services.len());
        for svc in &config.services {
            let found = services
                .iter()
                .position(|s| !s.retired && *s.name == *svc.name && s.kind == svc.kind);
            let fresh = ServiceInfo::new(svc);
            match found {
                Some(i) => {
                    let s = &mut services[i];
                    s.destination = fresh.destination;
                    s.target = fresh.target;
                    s.listen = fresh.listen;
                    s.conf = fresh.conf;
                    index.push(i);
                }
                None => {
                    services.push(fresh);
                    index.push(services.len() - 1);
                }
            }
        }
        for (i, s) in services.iter_mut().enumerate() {
            if !index.contains(&i) {
                s.retired = true;
            }
        }
        index
    }

    /// Listeners: keep an open one whose address and service stay; close
    /// the rest; open what is new.
    fn match_listeners(&mut self, config: &Config, index: &[usize]) {
        let cx = &mut self.cx;
        let mut wanted: Vec<(usize, SocketAddr, Socket)> = Vec::new();
        for (n, svc) in config.services.iter().enumerate() {
            if !listens(cx.worker, svc) {
                continue;
            }
            let socket = Socket::of(svc);
            for a in &svc.listen {
                wanted.push((index[n], *a, socket));
            }
        }
        let mut keep = Vec::new();
        let mut close = Vec::new();
        for l in cx.listeners.iter() {
            if l.data.is_some() {
                continue;
            }
            let stays = l.state != super::listeners::ListenerState::Closed
                && wanted.iter().any(|(svc, a, socket)| {
                    *svc == l.service && *a == l.addr && *socket == l.socket()
                });
            if stays {
                keep.push((l.service, l.addr));
            } else {
                close.push(l.id);
            }
        }
        for id in close {
            cx.listeners.close(id, &mut cx.actions);
        }
        for (svc, addr, socket) in wanted {
            if keep.contains(&(svc, addr)) {
                continue;
            }
            cx.listeners
                .open(svc, addr, socket, None, false, &mut cx.actions);
        }
    }

    /// Whether the rules now in force deny connection `conn` (or its
    /// service is gone): `Some(the number of the rule that denies it, if
    /// one does)`. One only refusing is left to finish.
    fn denied_now(&self, conn: ConnId) -> Option<Option<u32>> {
        let s = self.session(conn)?;
        if s.refusal.is_some() {
            return None;
        }
        let svc = &self.cx.services[s.service];
        let q = Query {
            service: &svc.name,
            client: s.client.ip(),
            user: s.user.as_deref(),
            host: s.target_host(),
            addr: s.upstream.addr.map(|a| Context::rule_ip(a.ip())),
            port: s.upstream.addr.map(|a| a.port()),
        };
        if svc.retired {
            return Some(None);
        }
        match rules::check(&self.cx.config.rules, &q, self.cx.wall) {
            Verdict::Deny { rule } => Some(rule.map(crate::session::rule_number)),
            Verdict::Allow { .. } => None,
        }
    }
}
