//! The status service's answers: what the table knows, as a
//! [`Snapshot`] (see `crate::status` for the pages made from it), and the
//! gathering of the other workers' parts when there are several.

use std::time::Instant;

use super::Proxy;
use crate::event::Action;
use crate::id::ConnId;
use crate::status::{self, ConnRow, Page, ServiceRow, Snapshot};

impl Proxy {
    /// A status request on `conn` for `page`: answered from this table, or,
    /// with several workers, once the others' parts are in
    /// ([`Action::Gather`], [`Proxy::handle_gathered`]).
    pub(super) fn status_request(&mut self, conn: ConnId, page: Page, head_only: bool) {
        if self.cx.ledger.workers() > 1 {
            // The other workers' connections are part of the answer.
            if !self.gathering.iter().any(|(c, _, _)| *c == conn) {
                self.gathering.push((conn, page, head_only));
                self.cx.actions.push_back(Action::Gather { conn });
            }
            return;
        }
        let reply = status::respond(page, head_only, &self.snapshot(self.cx.now));
        if let Some(s) = self.sessions.get_mut(conn.index()).filter(|s| s.id == conn) {
            s.status_reply(&reply, &mut self.cx);
        }
    }

    /// The other workers' snapshots for the status request on `conn`
    /// ([`Action::Gather`]): answers it with them and this table's own.
    pub fn handle_gathered(&mut self, conn: ConnId, parts: Vec<Snapshot>, now: Instant) {
        self.cx.now = now;
        let Some(i) = self.gathering.iter().position(|(c, _, _)| *c == conn) else {
            return;
        };
        let (_, page, head_only) = self.gathering.swap_remove(i);
        if !self.session(conn).is_some_and(|s| s.awaits_status()) {
            return;
        }
        let mut snap = self.snapshot(now);
        for part in parts {
            snap.merge(part);
        }
        let reply = status::respond(page, head_only, &snap);
        self.dispatch(conn, now, true, |s, cx| s.status_reply(&reply, cx));
    }

    /// What the status page shows, as of `now`: this table's part (the
    /// whole of it with one worker).
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let cx = &self.cx;
        let mut services: Vec<ServiceRow> = cx
            .services
            .iter()
            .map(|s| ServiceRow {
                name: s.name.to_string(),
                kind: s.kind.name(),
                listen: s.listen.clone(),
                active: s.active,
                counters: s.counters.clone(),
                live_up: 0,
                live_down: 0,
            })
            .collect();
        let mut users = cx.user_bytes.clone();
        let mut connections = Vec::with_capacity(self.sessions.len());
        for (_, s) in self.sessions.iter() {
            let row = &mut services[s.service];
            row.live_up += s.up.bytes;
            row.live_down += s.down.bytes;
            let user = s.shown_user();
            if let Some(u) = &user {
                let e = users.entry(u.clone()).or_insert((0, 0));
                e.0 += s.up.bytes;
                e.1 += s.down.bytes;
            }
            let destination = match (s.upstream.addr, s.target.is_empty()) {
                (Some(a), _) => Some(a.to_string()),
                (None, false) => Some(s.target.clone()),
                (None, true) => None,
            };
            connections.push(ConnRow {
                // Ids are a table's own: with several, the worker tells them apart.
                id: if cx.ledger.workers() > 1 {
                    format!("{}:{}", cx.worker, s.id)
                } else {
                    s.id.to_string()
                },
                service: cx.services[s.service].name.to_string(),
                client: s.client.to_string(),
                user,
                destination,
                state: s.state_name(),
                age_ms: now.saturating_duration_since(s.accepted).as_millis(),
                bytes_up: s.up.bytes,
                bytes_down: s.down.bytes,
            });
        }
        Snapshot {
            services,
            connections,
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::Proxy;
    use crate::event::{Action, Event};
    use crate::id::{ConnId, Side};
    use crate::ledger::Ledger;
    use crate::table::tests::{drain, open_first};

    const CONFIG: &str = "[[service]]\nname = \"status\"\nkind = \"status\"\nport = 8081\n";

    fn closes(actions: &[Action], conn: ConnId) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, Action::Close { conn: c } if *c == conn))
    }

    /// A status client that sends its request and shuts its side at once
    /// (`nc -q1`) is answered, also when the answer waits for the other
    /// workers' tables.
    #[test]
    fn a_request_whose_client_shuts_its_side_is_answered() {
        let config = crate::config::parse(CONFIG, "t.toml").expect("valid");
        let now = Instant::now();
        let ledger = Ledger::new(2);
        let mut first = Proxy::worker(config.clone(), 1, now, ledger.clone(), 0);
        let second = Proxy::worker(config, 2, now, ledger, 1);
        let listener = open_first(&mut first, now);
        let peer = "127.0.0.1:40000".parse().expect("address");
        let conn = first
            .accept(crate::Accepted::new(listener, peer), now)
            .expect("accepted");
        drain(&mut first);
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        let buf = first
            .recv_buf(conn, Side::Client)
            .expect("a read is wanted");
        buf[..request.len()].copy_from_slice(request);
        let n = request.len();
        first.handle(
            Event::Read {
                conn,
                side: Side::Client,
                n,
            },
            now,
        );
        let asked = drain(&mut first);
        assert!(
            asked
                .iter()
                .any(|a| matches!(a, Action::Gather { conn: c } if *c == conn)),
            "the other worker is asked: {asked:?}"
        );
        first.handle(
            Event::Eof {
                conn,
                side: Side::Client,
            },
            now,
        );
        let after_eof = drain(&mut first);
        assert!(
            !closes(&after_eof, conn),
            "closed before the answer: {after_eof:?}"
        );
        first.handle_gathered(conn, vec![second.snapshot(now)], now);
        drain(&mut first);
        let answer = first.send_buf(conn, Side::Client).expect("an answer");
        let answer = [answer[0], answer[1]].concat();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        first.handle(
            Event::Written {
                conn,
                side: Side::Client,
                n: answer.len(),
            },
            now,
        );
        assert!(closes(&drain(&mut first), conn), "closed once written");
    }
}
