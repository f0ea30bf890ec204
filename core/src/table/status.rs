//! The status service's answers: what the table knows, as a
//! [`Snapshot`] (see `crate::status` for the pages made from it), the
//! gathering of the other workers' parts when there are several, and the
//! services' history (see `crate::history`).

use std::time::{Duration, Instant};

use super::Proxy;
use crate::event::Action;
use crate::history::{self, History, Sample, Series, INTERVAL};
use crate::id::ConnId;
use crate::status::{self, ConnRow, Page, ServiceRow, Snapshot};
use crate::status_page::About;

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
        self.tick(now);
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
            let (up, down) = s.moved_bytes();
            row.live_up += up;
            row.live_down += down;
            let user = s.shown_user();
            if let Some(u) = &user {
                let e = users.entry(u.clone()).or_insert((0, 0));
                e.0 += up;
                e.1 += down;
            }
            let intercepted = matches!(s.machine, crate::session::Machine::Transparent(_));
            let destination = match (s.upstream.addr, s.target.is_empty()) {
                // An intercepted connection: the name its peek found (the
                // original address without one), as its access line says.
                _ if intercepted => Some(s.target.clone()),
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
                bytes_up: up,
                bytes_down: down,
            });
        }
        let index = history::interval_of(self.born, now).max(self.interval);
        let history = History {
            index,
            elapsed_ms: (now.saturating_duration_since(self.born).as_millis()
                % INTERVAL.as_millis()) as u64,
            services: cx
                .services
                .iter()
                .zip(&services)
                .map(|(info, row)| Series {
                    name: row.name.clone(),
                    samples: info.history.view(self.interval, index, total(row)),
                })
                .collect(),
        };
        let about = About {
            started: self.started.unwrap_or(0),
            now: cx.wall.unix_secs,
            uptime_ms: now.saturating_duration_since(self.born).as_millis() as u64,
            reload: self.last_reload.clone(),
        };
        let parents = match cx.config.parents.is_empty() {
            true => Vec::new(),
            false => cx.ledger.lock().parents.rows(&cx.config.parents, now),
        };
        let quotas = match cx.config.quotas.is_empty() {
            true => Vec::new(),
            false => cx.ledger.lock().quotas.rows(&cx.config.quotas, cx.wall),
        };
        Snapshot {
            services,
            connections,
            users,
            about,
            history,
            quotas,
            parents,
        }
    }

    /// Closes the services' history intervals that ended before `now`:
    /// first thing in every call that may change a counter, so that what
    /// changed since the last close all happened in the interval of that
    /// close. One comparison unless an interval ended.
    #[inline]
    pub(super) fn tick(&mut self, now: Instant) {
        if now >= self.next_interval {
            self.close_intervals(now);
        }
    }

    #[inline(never)]
    fn close_intervals(&mut self, now: Instant) {
        let to = history::interval_of(self.born, now);
        let mut totals: Vec<Sample> = self
            .cx
            .services
            .iter()
            .map(|s| Sample {
                connections: s.counters.connections,
                up: s.counters.up,
                down: s.counters.down,
            })
            .collect();
        for (_, s) in self.sessions.iter() {
            let t = &mut totals[s.service];
            let (up, down) = s.moved_bytes();
            t.up += up;
            t.down += down;
        }
        for (s, total) in self.cx.services.iter_mut().zip(totals) {
            s.history.close(self.interval, to, total);
        }
        self.interval = to;
        let next = INTERVAL.as_millis() as u64 * to.saturating_add(1);
        self.next_interval = self.born + Duration::from_millis(next);
    }
}

/// A service's running totals: connections, and bytes of the finished
/// connections and those in flight.
fn total(row: &ServiceRow) -> Sample {
    Sample {
        connections: row.counters.connections,
        up: row.counters.up + row.live_up,
        down: row.counters.down + row.live_down,
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
    const MAPPED_AND_STATUS: &str = "[[service]]\nname = \"m\"\nkind = \"mapped\"\n\
        listen = [\"127.0.0.1:8000\"]\ndestination = \"127.0.0.1:9000\"\n\
        [[service]]\nname = \"status\"\nkind = \"status\"\nport = 8081\n";

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

    /// Each table counts a connection in the interval it came in, an
    /// interval without any in between is empty, and the workers' tables
    /// add up interval by interval.
    #[test]
    fn history_counts_each_interval_and_merges_across_workers() {
        use crate::history::SLOTS;
        use std::time::Duration;
        let config = crate::config::parse(MAPPED_AND_STATUS, "t.toml").expect("valid");
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let ledger = Ledger::new(2);
        let mut first = Proxy::worker(config.clone(), 1, t0, ledger.clone(), 0);
        let mut second = Proxy::worker(config, 2, t0, ledger, 1);
        let l1 = open_first(&mut first, t0);
        let l2 = open_first(&mut second, t0);
        let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("address");
        for (worker, t) in [(0, 1), (0, 2), (1, 12), (0, 25)] {
            let (p, l) = if worker == 0 {
                (&mut first, l1)
            } else {
                (&mut second, l2)
            };
            p.accept(crate::Accepted::new(l, peer), at(t))
                .expect("accepted");
            drain(p);
        }
        let mut snap = first.snapshot(at(25));
        snap.merge(second.snapshot(at(25)));
        assert_eq!(snap.history.index, 2);
        assert_eq!(snap.history.elapsed_ms, 5_000);
        let m = snap
            .history
            .services
            .iter()
            .find(|s| s.name == "m")
            .expect("the mapped service's history");
        assert_eq!(m.samples.len(), SLOTS);
        let conns: Vec<u64> = m.samples.iter().map(|s| s.connections).collect();
        assert_eq!(&conns[SLOTS - 3..], &[2, 1, 1], "{conns:?}");
        assert_eq!(conns.iter().sum::<u64>(), 4);
        // Seen ten minutes later, every one of them is too old to show.
        let later = first.snapshot(at(25 + 600));
        let m = &later.history.services[0];
        assert!(m.samples.iter().all(|s| s.connections == 0), "{m:?}");
    }

    /// The start counts as the last successful load; a reload that failed
    /// says why and keeps the time of the last success; one that worked
    /// moves it.
    #[test]
    fn the_snapshot_says_the_start_and_the_last_reload() {
        use crate::rules::Wall;
        use crate::table::Reload;
        use std::time::Duration;
        let config = crate::config::parse(CONFIG, "t.toml").expect("valid");
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Proxy::new(config.clone(), 1, t0);
        p.set_wall(Wall::utc(1_000));
        p.set_wall(Wall::utc(1_005));
        let a = p.snapshot(at(5)).about;
        assert_eq!((a.started, a.now, a.uptime_ms), (1_000, 1_005, 5_000));
        assert!(a.reload.ok);
        assert_eq!((a.reload.at, a.reload.last_success), (1_000, 1_000));

        p.set_wall(Wall::utc(1_010));
        p.reload_failed("t.toml:3:1: unknown key", at(10));
        let snap = p.snapshot(at(10));
        let a = &snap.about;
        assert!(!a.reload.ok);
        assert_eq!(a.reload.message.as_deref(), Some("t.toml:3:1: unknown key"));
        assert_eq!((a.reload.at, a.reload.last_success), (1_010, 1_000));
        let m = crate::status::metrics(&snap);
        assert!(
            m.contains("\nportico_config_last_reload_successful 0\n"),
            "{m}"
        );
        assert!(m.contains("\nportico_config_last_reload_success_timestamp_seconds 1000\n"));
        assert!(m.contains("\nprocess_start_time_seconds 1000\n"));

        p.set_wall(Wall::utc(1_020));
        p.reconfigure(config, Reload::default(), at(20));
        drain(&mut p);
        let a = p.snapshot(at(20)).about;
        assert!(a.reload.ok);
        assert_eq!(a.reload.message, None);
        assert_eq!((a.reload.at, a.reload.last_success), (1_020, 1_020));
        assert_eq!(a.started, 1_000, "the start stays");
    }
}
