//! Admission: whether a new client is served, told a refusal in its
//! protocol's words, or turned away at once — the process-wide limits
//! (counted in the shared [`crate::ledger::Ledger`]) and the rules on the
//! client's address.
//!
//! Invariant: the tables sharing a ledger never hold more than
//! `limits.max_connections` sessions that are served (plus at most
//! [`REFUSING_MAX`] that only refuse), nor more than
//! `limits.max_per_client` from one address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::context::Context;
use crate::event::{Action, Level, Refused};
use crate::outcome::Outcome;
use crate::proto::Failure;
use crate::rules::{self, Verdict};

/// Connections over a limit (or denied) that may exist at once only to be
/// told so in their protocol's words; past this they are just closed.
pub const REFUSING_MAX: usize = 64;

impl Context {
    /// Checks a new client against the limits and the rules on its
    /// address, and counts it. `Ok(Some(why))`: admitted only to be told
    /// `why` in its protocol's words (`words`: the protocol has them).
    ///
    /// `in_table`: the session is in the table (and counted) already, as
    /// one behind a PROXY header is; otherwise it is counted here, under
    /// the same lock as the check, so two workers cannot both take the
    /// last place.
    pub fn admit(
        &mut self,
        service: usize,
        client: IpAddr,
        words: bool,
        in_table: bool,
    ) -> Result<Option<Failure>, Refused> {
        let limits = &self.config.limits;
        let mut counts = self.ledger.lock();
        let others = counts.served().saturating_sub(usize::from(in_table));
        let over = if self.grace_until.is_some() {
            Some(Refused::ShuttingDown)
        } else if others >= limits.max_connections as usize {
            Some(Refused::TooMany)
        } else if counts.client(client) >= limits.max_per_client {
            Some(Refused::PerClient)
        } else {
            None
        };
        let denied = over.is_none()
            && matches!(
                rules::check_early(
                    &self.config.rules,
                    &self.services[service].name,
                    client,
                    self.wall
                ),
                Verdict::Deny { .. }
            );
        let refusal = match over {
            Some(Refused::TooMany | Refused::PerClient) => Some(Failure::Limit),
            _ if denied => Some(Failure::Denied),
            _ => None,
        };
        let say_it = words && counts.refusing < REFUSING_MAX && refusal.is_some();
        if (over.is_some() || denied) && !say_it {
            return Err(over.unwrap_or(Refused::Denied));
        }
        match refusal {
            Some(_) => counts.refusing += 1,
            None => counts.add_client(client),
        }
        if !in_table {
            counts.sessions += 1;
        }
        drop(counts);
        match refusal {
            Some(f) => {
                self.stats.refused += 1;
                if let Some(c) = f.cause() {
                    self.services[service].count_cause(c);
                }
            }
            None => self.count_served(service),
        }
        Ok(refusal)
    }

    /// The number of the rule that denied `client` at accept (what
    /// [`Context::admit`] decided with), for the access log.
    pub fn denying_rule(&self, service: usize, client: IpAddr) -> Option<u32> {
        match rules::check_early(
            &self.config.rules,
            &self.services[service].name,
            client,
            self.wall,
        ) {
            Verdict::Deny { rule } => rule.map(crate::session::rule_number),
            Verdict::Allow { .. } => None,
        }
    }

    /// Counts a connection of `service` that is served (not only refused).
    pub fn count_served(&mut self, service: usize) {
        self.stats.accepted += 1;
        let svc = &mut self.services[service];
        svc.counters.connections += 1;
        svc.active += 1;
    }

    /// Logs and counts a connection turned away at accept.
    pub fn refuse_plain(&mut self, service: usize, peer: SocketAddr, why: Refused) -> Refused {
        let outcome = match why {
            Refused::ShuttingDown => Outcome::Shutdown,
            Refused::Denied => Outcome::Denied,
            Refused::NotRedirected => Outcome::NotRedirected,
            _ => Outcome::Limit,
        };
        self.stats.refused += 1;
        match outcome.cause() {
            Some(c) => self.services[service].count_cause(c),
            // Turned away while shutting down: a reason of its own.
            None => self.services[service].count_refused(outcome.word()),
        }
        if self.access_logged() {
            let rule = match why {
                Refused::Denied => self.denying_rule(service, peer.ip()),
                _ => None,
            };
            let svc = &self.services[service];
            let method = if matches!(
                svc.kind,
                crate::config::ServiceKind::Mapped | crate::config::ServiceKind::Transparent
            ) {
                "TCP"
            } else {
                "-"
            };
            let rec = crate::log::AccessRecord {
                service: svc.name.clone(),
                client: peer,
                user: None,
                method: method.into(),
                target: svc.target.clone(),
                destination: None,
                status: outcome.word().into(),
                up: 0,
                down: 0,
                duration: Duration::ZERO,
                error: outcome.cause(),
                rule,
                datagrams: None,
                via: None,
            };
            self.actions.push_back(Action::Access(Box::new(rec)));
        }
        self.log(Level::Debug, || format!("refused {peer}: {why}"));
        why
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::event::{Action, Event};
    use crate::id::{ConnId, Side};
    use crate::outcome::Cause;
    use crate::table::tests::{drain, open_first};
    use crate::table::{Accepted, Proxy};

    const HTTP: &str = "[limits]\nmax_per_client = 1\n[[service]]\nname = \"web\"\n\
                        kind = \"http\"\nport = 8080\n";

    /// Sends `bytes` from the client of `conn`; returns what the table
    /// then has for the client, and the actions it queued.
    fn say(p: &mut Proxy, conn: ConnId, bytes: &[u8], now: Instant) -> (String, Vec<Action>) {
        let buf = p.recv_buf(conn, Side::Client).expect("a read is wanted");
        buf[..bytes.len()].copy_from_slice(bytes);
        let n = bytes.len();
        p.handle(
            Event::Read {
                conn,
                side: Side::Client,
                n,
            },
            now,
        );
        let reply = p
            .send_buf(conn, Side::Client)
            .map(|b| [b[0], b[1]].concat())
            .unwrap_or_default();
        (String::from_utf8_lossy(&reply).into_owned(), drain(p))
    }

    fn error_of(actions: &[Action]) -> Option<Option<Cause>> {
        actions.iter().find_map(|a| match a {
            Action::Access(rec) => Some(rec.error),
            _ => None,
        })
    }

    /// A refusal decided at accept is counted then, once, under its cause
    /// (not again when the request is answered); one decided later (a
    /// CONNECT port) when it is; every reply counts as an HTTP response;
    /// the access records carry the causes.
    #[test]
    fn refusals_are_counted_once_under_their_cause() {
        let config = crate::config::parse(HTTP, "t.toml").expect("valid");
        let now = Instant::now();
        let mut p = Proxy::new(config, 1, now);
        let listener = open_first(&mut p, now);
        let first = "10.0.0.1:1000".parse().expect("address");
        let second = "10.0.0.1:1001".parse().expect("address");
        let a = p
            .accept(Accepted::new(listener, first), now)
            .expect("admitted");
        let b = p
            .accept(Accepted::new(listener, second), now)
            .expect("admitted to be told");
        drain(&mut p);
        let counters = |p: &Proxy| p.snapshot(now).services[0].counters.clone();
        assert_eq!(counters(&p).refused.get("limit"), Some(&1));

        let (reply, actions) = say(
            &mut p,
            b,
            b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nAccept: text/html\r\n\r\n",
            now,
        );
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        assert!(reply.contains("\r\nPortico-Error: limit\r\n"), "{reply}");
        assert!(reply.contains("<code>a.example:80</code>"), "{reply}");
        let n = reply.len();
        p.handle(
            Event::Written {
                conn: b,
                side: Side::Client,
                n,
            },
            now,
        );
        let closed = [actions, drain(&mut p)].concat();
        assert_eq!(error_of(&closed), Some(Some(Cause::Limit)), "{closed:?}");

        let (reply, _) = say(
            &mut p,
            a,
            b"CONNECT a.example:25 HTTP/1.1\r\nHost: a.example:25\r\n\r\n",
            now,
        );
        assert!(reply.starts_with("HTTP/1.1 403 "), "{reply}");
        assert!(
            reply.contains("\r\nPortico-Error: port-denied\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with("connect_ports (port-denied)\n"), "{reply}");
        let n = reply.len();
        p.handle(
            Event::Written {
                conn: a,
                side: Side::Client,
                n,
            },
            now,
        );
        assert_eq!(error_of(&drain(&mut p)), Some(Some(Cause::PortDenied)));

        let c = counters(&p);
        assert_eq!(c.refused.get("limit"), Some(&1), "{c:?}");
        assert_eq!(c.refused.get("port-denied"), Some(&1), "{c:?}");
        assert_eq!(c.http_responses.get(&503), Some(&1), "{c:?}");
        assert_eq!(c.http_responses.get(&403), Some(&1), "{c:?}");
        assert!(c.connect_errors.is_empty(), "{c:?}");
    }

    /// `max_per_user` and a quota hold across two workers sharing a
    /// ledger: alice's place taken on one is missing on the other, and
    /// bytes counted on one refuse the client on the other.
    #[test]
    fn user_caps_and_quotas_hold_across_workers() {
        use crate::ledger::Ledger;
        use crate::rules::Wall;
        let text = "[limits]\nmax_per_user = 1\n[[user]]\nname = \"alice\"\n\
                    password = \"plain:secret\"\n[[quota]]\nname = \"lan\"\n\
                    clients = [\"10.0.0.0/8\"]\nbytes = \"1KiB\"\nper = \"day\"\n\
                    [[service]]\nname = \"web\"\nkind = \"http\"\nport = 8080\nauth = true\n\
                    [[service]]\nname = \"map\"\nkind = \"mapped\"\nport = 2000\n\
                    destination = \"192.0.2.1:22\"\n";
        let config = crate::config::parse(text, "t.toml").expect("valid");
        let now = Instant::now();
        let wall = Wall::utc(1_796_212_800);
        let ledger = Ledger::new(2);
        let mut a = Proxy::worker(config.clone(), 1, now, ledger.clone(), 0);
        let mut b = Proxy::worker(config, 2, now, ledger.clone(), 1);
        let mut listeners = Vec::new();
        for p in [&mut a, &mut b] {
            p.set_wall(wall);
            let mut ids = Vec::new();
            while let Some(Action::Listen { listener, addr, .. }) = p.poll_action() {
                p.handle(
                    Event::Listening {
                        listener,
                        local: addr,
                    },
                    now,
                );
                ids.push(listener);
            }
            drain(p);
            listeners.push(ids);
        }
        let get = b"GET http://192.0.2.9/ HTTP/1.1\r\nHost: 192.0.2.9\r\n\
                    Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n";
        let from = |s: &str| -> std::net::SocketAddr { s.parse().expect("address") };

        // alice on worker a takes her one place...
        let c = a
            .accept(
                Accepted::new(listeners[0][0], from("192.168.0.5:1000")),
                now,
            )
            .expect("admitted");
        drain(&mut a);
        let (_, actions) = say(&mut a, c, get, now);
        assert!(
            actions.iter().any(|x| matches!(x, Action::Connect { .. })),
            "{actions:?}"
        );
        // ...so on worker b she is over max_per_user.
        let d = b
            .accept(
                Accepted::new(listeners[1][0], from("192.168.0.5:1001")),
                now,
            )
            .expect("admitted");
        drain(&mut b);
        let (reply, _) = say(&mut b, d, get, now);
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
        assert!(reply.contains("\r\nPortico-Error: limit\r\n"), "{reply}");
        assert_eq!(ledger.lock().user("alice"), 1);

        // 10.1.1.1 moves 1 KiB through the mapped port on worker a...
        let m = a
            .accept(Accepted::new(listeners[0][1], from("10.1.1.1:2000")), now)
            .expect("admitted");
        let local = from("10.0.0.1:40000");
        let attempt = 0;
        a.handle(
            Event::Connected {
                conn: m,
                attempt,
                local,
            },
            now,
        );
        drain(&mut a);
        let buf = a.recv_buf(m, Side::Client).expect("a read is wanted");
        let n = buf.len().min(1024);
        buf[..n].fill(b'x');
        a.handle(
            Event::Read {
                conn: m,
                side: Side::Client,
                n,
            },
            now,
        );
        drain(&mut a);
        assert_eq!(ledger.lock().quotas.used("lan", "10.1.1.1", wall), n as u64);
        assert_eq!(n, 1024);
        // ...so worker b refuses its next connection, with the cause quota.
        b.accept(Accepted::new(listeners[1][1], from("10.1.1.1:2001")), now)
            .expect("admitted, then refused");
        let actions = drain(&mut b);
        assert_eq!(error_of(&actions), Some(Some(Cause::Quota)), "{actions:?}");
        // Another address of the network has a count of its own.
        b.accept(Accepted::new(listeners[1][1], from("10.1.1.2:2001")), now)
            .expect("admitted");
        let actions = drain(&mut b);
        assert!(
            actions.iter().any(|x| matches!(x, Action::Connect { .. })),
            "{actions:?}"
        );
        let rows = b.snapshot(now).quotas;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (
                rows[0].used_bytes,
                rows[0].limit_bytes,
                rows[0].period_end.as_str()
            ),
            (1024, 1024, "2026-12-03T00:00:00Z")
        );
    }
}
