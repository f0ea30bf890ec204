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
            _ => Outcome::Limit,
        };
        self.stats.refused += 1;
        match outcome.cause() {
            Some(c) => self.services[service].count_cause(c),
            // Turned away while shutting down: a reason of its own.
            None => self.services[service].count_refused(outcome.word()),
        }
        if self.access_logged() {
            let svc = &self.services[service];
            let method = if svc.kind == crate::config::ServiceKind::Mapped {
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
            };
            self.actions.push_back(Action::Access(Box::new(rec)));
        }
        self.log(Level::Debug, || format!("refused {peer}: {why}"));
        why
    }
}
