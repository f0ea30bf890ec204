//! What a session may use of the table while it handles an event: the
//! configuration, the services and their counters, the users, the ledger of
//! limits, the buffer pool, the listeners, the deadlines and the action
//! queue. The table lends it, with the time of the call, to the one session
//! an event is for; the session table itself (the slab) is not in it, so a
//! session can never reach another one except through a [`Request`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Logins, Users};
use crate::buffer::Pool;
use crate::config::{AccessTarget, Config, Service, ServiceKind};
use crate::event::{Action, Level};
use crate::id::ConnId;
use crate::ledger::Ledger;
use crate::outcome::Cause;
use crate::proto::Scope;
use crate::proto::Target;
use crate::rules::Wall;
use crate::status::{Page, ServiceCounters};

use super::listeners::Listeners;
use super::timers::Timers;

/// Counters over the life of the table (for tests and the status page).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub refused: u64,
    pub closed: u64,
}

/// One configured service as the table keeps it: its configuration, what
/// its connections are logged with, and its counters.
#[derive(Debug)]
pub(crate) struct ServiceInfo {
    pub name: Arc<str>,
    pub kind: ServiceKind,
    /// For a mapped port and the forwarding gateways: where every
    /// connection goes.
    pub destination: Option<Target>,
    /// The access log's target for a connection that names none.
    pub target: String,
    pub listen: Vec<String>,
    pub counters: ServiceCounters,
    /// Served connections open now.
    pub active: u64,
    pub conf: Arc<Service>,
    /// Gone from the configuration; kept while connections still use it.
    pub retired: bool,
    /// Its last minutes, for the status page.
    pub history: crate::history::Ring,
}

impl ServiceInfo {
    pub fn new(s: &Service) -> ServiceInfo {
        ServiceInfo {
            name: Arc::from(s.name.as_str()),
            kind: s.kind,
            destination: s
                .destination
                .as_ref()
                .map(crate::proto::simple::destination_target),
            listen: s.listen.iter().map(|a| a.to_string()).collect(),
            counters: ServiceCounters::default(),
            active: 0,
            target: s
                .destination
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default(),
            conf: Arc::new(s.clone()),
            retired: false,
            history: Default::default(),
        }
    }

    /// Counts a refusal under `reason` (the status page's and metrics'
    /// reason word).
    pub fn count_refused(&mut self, reason: &'static str) {
        *self.counters.refused.entry(reason).or_insert(0) += 1;
    }

    /// Counts a refusal or a failure to connect under its cause: a connect
    /// failure in `connect_errors`, the proxy's own refusal in `refused`.
    pub fn count_cause(&mut self, cause: Cause) {
        let counts = if cause.is_connect_error() {
            &mut self.counters.connect_errors
        } else {
            &mut self.counters.refused
        };
        *counts.entry(cause.word()).or_insert(0) += 1;
    }

    /// Counts an HTTP response with `status` sent to a client.
    pub fn count_http_response(&mut self, status: u16) {
        *self.counters.http_responses.entry(status).or_insert(0) += 1;
    }
}

/// What a session asks that only the table can do, carried out right
/// after the session's call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Answer the status request on `conn` from the table's snapshot (and
    /// the other workers', when there are several).
    Status {
        conn: ConnId,
        page: Page,
        head_only: bool,
    },
    /// Counts as activity on control connection `owner`: its data
    /// connection moved bytes.
    Touch(ConnId),
}

/// The table's state a session may use (see the module docs).
#[derive(Debug)]
pub(crate) struct Context {
    /// The time of the call being handled.
    pub now: Instant,
    pub config: Config,
    pub services: Vec<ServiceInfo>,
    pub users: Users,
    /// The counts the process-wide limits are checked against, shared with
    /// the other workers' tables.
    pub ledger: Ledger,
    pub pool: Pool,
    pub actions: VecDeque<Action>,
    pub log_level: Level,
    pub timers: Timers,
    /// Local wall-clock time, for rules with `days` and `hours`.
    pub wall: Wall,
    pub stats: Stats,
    /// Bytes of finished connections per authenticated user: up, down.
    pub user_bytes: BTreeMap<String, (u64, u64)>,
    pub listeners: Listeners,
    /// Shutting down: connections still open then are closed.
    pub grace_until: Option<Instant>,
    /// This table's worker: the first (0) alone opens UDP ports and says
    /// what is listening.
    pub worker: usize,
    pub requests: Vec<Request>,
}

impl Context {
    /// What a login from `client` on service `service` is checked with
    /// besides the users.
    pub fn logins(&mut self, service: usize, client: std::net::IpAddr) -> Logins<'_> {
        Logins {
            client,
            ledger: &self.ledger,
            limit: self.config.limits.auth_failures,
            failures: &mut self.services[service].counters.auth_failures,
        }
    }

    /// What a protocol machine of service `service` may consult.
    pub fn scope(&mut self, service: usize) -> Scope<'_> {
        Scope {
            service: &self.services[service].conf,
            users: &mut self.users,
            config: Some(&self.config),
        }
    }

    /// Queues a diagnostic line if `level` is logged; the message is made
    /// only then.
    pub fn log(&mut self, level: Level, message: impl FnOnce() -> String) {
        if level <= self.log_level {
            self.actions.push_back(Action::Log {
                level,
                message: message(),
            });
        }
    }

    /// Whether access records are wanted: with `[log] access = "off"` none
    /// is made, so no [`Action::Access`] comes out (an HTTP connection
    /// would make one per request).
    pub fn access_logged(&self) -> bool {
        self.config.log.access != AccessTarget::Off
    }

    /// The source address for a connection out to `dest`, or none toward
    /// the LAN (`outward` false: active FTP data to a client). The most
    /// specific `outgoing` of the destination's family wins: the deciding
    /// allow rule's (`rule`, counted from 1), the service's, then
    /// `[network] outgoing6` (IPv6 destinations) or `outgoing`. One of the
    /// other family would make the connect fail, so it is passed over.
    pub fn bind(
        &self,
        outward: bool,
        service: usize,
        rule: Option<u32>,
        dest: std::net::SocketAddr,
    ) -> Option<std::net::IpAddr> {
        if !outward {
            return None;
        }
        let service = self.services.get(service).and_then(|s| s.conf.outgoing);
        source(&self.config, rule, service, dest.ip())
    }

    /// Rules see the address a connection would really reach: the
    /// unspecified address (0.0.0.0, ::) reaches this very host, so it is
    /// checked as loopback.
    pub fn rule_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        match ip {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        }
    }
}

/// The source address `outgoing` gives a connection out to `dest`: the
/// deciding allow rule's (`rule`, counted from 1), the service's
/// (`service`), then `[network] outgoing6` (IPv6 destinations) or
/// `outgoing`, the first of `dest`'s family. Shared by [`Context::bind`]
/// and `portico explain`, so both say the same.
pub(crate) fn source(
    config: &Config,
    rule: Option<u32>,
    service: Option<std::net::IpAddr>,
    dest: std::net::IpAddr,
) -> Option<std::net::IpAddr> {
    let net = &config.network;
    let rule = rule
        .and_then(|n| config.rules.get((n as usize).checked_sub(1)?))
        .and_then(|r| r.outgoing);
    let v6 = if dest.is_ipv6() { net.outgoing6 } else { None };
    [rule, service, v6, net.outgoing]
        .into_iter()
        .flatten()
        .find(|ip| ip.is_ipv6() == dest.is_ipv6())
}
