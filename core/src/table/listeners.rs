//! The listening sockets the table asked for: the services' ports (TCP and
//! UDP) and FTP's one-shot data ports, each under an id whose generation
//! changes when its slot is reused; and accepting's pause when the process
//! runs out of file descriptors.
//!
//! # States and exits (one listener)
//!
//! ```text
//! (asked: Listen / ListenUdp) Opening ─Listening─► Open ─shutdown─► Closed
//!                                │                   └─reload drops it──► (gone: Unlisten)
//!                                └─ListenFailed─► Closed (at start: fatal) | (gone: after a reload)
//! a data port: Opening ─Listening─► Open ─its one connection, or its session ends─► (gone: Unlisten)
//! ```
//!
//! Invariants: a listener's id names it only while it is in the slab;
//! `starting` counts the configuration's listeners not yet reported open
//! at start, and a listener that fails while it is not zero is fatal.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::config::ServiceKind;
use crate::event::{Action, Intercept, IoKind};
use crate::id::{ConnId, ListenerId};

/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);
/// How often a lasting shortage of file descriptors is logged again.
const FD_WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerState {
    Opening,
    Open,
    Closed,
}

#[derive(Debug)]
pub(crate) struct Listener {
    pub id: ListenerId,
    pub service: usize,
    pub addr: SocketAddr,
    pub state: ListenerState,
    /// An FTP data port: open for one connection of one session.
    pub data: Option<DataPort>,
    /// A UDP mapped port's socket.
    pub udp: bool,
    /// A transparent service's: how its connections' original
    /// destinations are read.
    pub intercept: Option<Intercept>,
}

/// What a listener's socket is: TCP (a transparent service's, with how
/// its connections' original destinations are read) or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Socket {
    Tcp(Option<Intercept>),
    Udp,
}

impl Socket {
    /// The socket `s` listens with.
    pub fn of(s: &crate::config::Service) -> Socket {
        use crate::config::{ServiceKind, Transport};
        match (s.protocol, s.kind, s.tproxy) {
            (Transport::Udp, _, _) => Socket::Udp,
            (_, ServiceKind::Transparent, false) => Socket::Tcp(Some(Intercept::Redirect)),
            (_, ServiceKind::Transparent, true) => Socket::Tcp(Some(Intercept::Tproxy)),
            _ => Socket::Tcp(None),
        }
    }
}

impl Listener {
    /// The socket it was opened as.
    pub fn socket(&self) -> Socket {
        match self.udp {
            true => Socket::Udp,
            false => Socket::Tcp(self.intercept),
        }
    }
}

/// A data port an FTP control connection opened.
#[derive(Debug, Clone)]
pub(crate) struct DataPort {
    pub owner: ConnId,
    pub token: u32,
    /// Only this peer may connect (the session's client or server).
    pub accept_from: IpAddr,
    /// Where the data connection goes.
    pub connect_to: SocketAddr,
    /// The control connection went through a parent proxy: the server's
    /// name (or address) as the parent was asked for it, for the data
    /// connection to go through a parent to that name and
    /// `connect_to`'s port.
    pub via_host: Option<String>,
}

/// What became of a listener the runtime reported on.
pub(crate) enum Report {
    /// Nothing more to do (a stale id, a service's port).
    Done,
    /// A data port is open at this address, or could not be opened: its
    /// session hears of it.
    Data(DataPort, Option<SocketAddr>),
}

#[derive(Debug, Default)]
pub(crate) struct Listeners {
    slab: Slab<Listener>,
    /// Generation per slot.
    gens: Vec<u32>,
    /// Listeners of the configuration not yet reported open at startup; a
    /// failure among them is fatal.
    pub starting: usize,
    /// Accepting is paused (out of file descriptors) until then.
    pub paused_until: Option<Instant>,
    /// When the shortage of descriptors was last logged, and how many
    /// pauses there have been since.
    fd_warned: Option<Instant>,
    fd_pauses: u64,
}

impl Listeners {
    pub fn get(&self, id: ListenerId) -> Option<&Listener> {
        self.slab.get(id.index()).filter(|l| l.id == id)
    }

    fn get_mut(&mut self, id: ListenerId) -> Option<&mut Listener> {
        self.slab.get_mut(id.index()).filter(|l| l.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.slab.iter().map(|(_, l)| l)
    }

    /// Asks the runtime for a listener of `service` on `addr`. At start
    /// (`first`) ids have generation 0; a slot used again later gets the
    /// next generation.
    pub fn open(
        &mut self,
        service: usize,
        addr: SocketAddr,
        socket: Socket,
        data: Option<DataPort>,
        first: bool,
        actions: &mut VecDeque<Action>,
    ) -> ListenerId {
        let (udp, intercept) = match socket {
            Socket::Udp => (true, None),
            Socket::Tcp(how) => (false, how),
        };
        let idx = self.slab.vacant_key();
        if self.gens.len() <= idx {
            self.gens.resize(idx + 1, 0);
        }
        if !first {
            self.gens[idx] = self.gens[idx].wrapping_add(1);
        }
        let id = ListenerId::new(idx, self.gens[idx]);
        self.slab.insert(Listener {
            id,
            service,
            addr,
            state: ListenerState::Opening,
            data,
            udp,
            intercept,
        });
        actions.push_back(if udp {
            Action::ListenUdp { listener: id, addr }
        } else {
            Action::Listen {
                listener: id,
                addr,
                intercept,
            }
        });
        id
    }

    /// Forgets listener `id` and has the runtime close it.
    pub fn close(&mut self, id: ListenerId, actions: &mut VecDeque<Action>) {
        self.slab.remove(id.index());
        actions.push_back(Action::Unlisten { listener: id });
    }

    /// Opens a data port for session `owner` on `bind` (the system picks the
    /// port); one pending port per token, so a second PASV replaces the
    /// first.
    pub fn open_data(
        &mut self,
        service: usize,
        bind: IpAddr,
        port: DataPort,
        actions: &mut VecDeque<Action>,
    ) {
        self.close_data(port.owner, Some(port.token), actions);
        let addr = SocketAddr::new(bind, 0);
        self.open(service, addr, Socket::Tcp(None), Some(port), false, actions);
    }

    /// Closes the data ports of `owner` (those with `token`, or all).
    pub fn close_data(
        &mut self,
        owner: ConnId,
        token: Option<u32>,
        actions: &mut VecDeque<Action>,
    ) {
        let ids: Vec<ListenerId> = self
            .slab
            .iter()
            .filter(|(_, l)| {
                l.data
                    .as_ref()
                    .is_some_and(|d| d.owner == owner && token.is_none_or(|t| d.token == t))
            })
            .map(|(_, l)| l.id)
            .collect();
        for id in ids {
            self.close(id, actions);
        }
    }

    /// The runtime opened listener `id` at `local`. A service's port is
    /// announced with its `listening:` line (by worker 0, for all).
    pub fn listening(
        &mut self,
        id: ListenerId,
        local: SocketAddr,
        say: Option<(&str, ServiceKind)>,
        actions: &mut VecDeque<Action>,
    ) -> Report {
        let Some(l) = self.get_mut(id) else {
            return Report::Done;
        };
        if l.state != ListenerState::Opening {
            return Report::Done;
        }
        l.state = ListenerState::Open;
        if let Some(port) = l.data.clone() {
            return Report::Data(port, Some(local));
        }
        self.starting = self.starting.saturating_sub(1);
        if let Some((name, kind)) = say {
            actions.push_back(Action::Say(listening_line(name, kind, local)));
        }
        Report::Done
    }

    /// The runtime could not open listener `id`. At start this is fatal;
    /// after a reload the rest serves on and it is logged (the returned
    /// message); a data port's session hears of it.
    pub fn listen_failed(
        &mut self,
        id: ListenerId,
        error: IoKind,
        service_name: impl FnOnce(usize) -> std::sync::Arc<str>,
        actions: &mut VecDeque<Action>,
    ) -> (Report, Option<String>) {
        let Some(l) = self.get_mut(id) else {
            return (Report::Done, None);
        };
        if l.state != ListenerState::Opening {
            return (Report::Done, None);
        }
        l.state = ListenerState::Closed;
        if let Some(port) = l.data.clone() {
            self.slab.remove(id.index());
            return (Report::Data(port, None), None);
        }
        let (service, addr) = (l.service, l.addr);
        let hint = match error {
            IoKind::PermissionDenied if addr.port() < 1024 => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            }
            IoKind::AddrInUse => " (another program is listening there; stop it or choose another port)",
            IoKind::AddrNotAvailable => {
                " (no interface of this machine has that address; check [network] internal/external)"
            }
            _ => "",
        };
        let message = format!(
            "cannot listen on {} for service '{}': {}{hint}",
            addr,
            service_name(service),
            error.describe()
        );
        if self.starting > 0 {
            actions.push_back(Action::Fatal { message });
            (Report::Done, None)
        } else {
            self.slab.remove(id.index());
            (Report::Done, Some(message))
        }
    }

    /// Out of file descriptors: the warning to log, once and then at most
    /// once a minute while the shortage lasts (`open`: connections open).
    pub fn shortage_report(&mut self, open: usize, now: Instant) -> Option<String> {
        self.fd_pauses += 1;
        if self.fd_warned.is_some_and(|t| now < t + FD_WARN_EVERY) {
            return None;
        }
        self.fd_warned = Some(now);
        let pauses = std::mem::take(&mut self.fd_pauses);
        Some(format!(
            "out of file descriptors with {open} connections open: accepting paused \
             {}ms at a time ({pauses} pauses since the last report); raise the limit \
             (ulimit -n) or lower limits.max_connections",
            ACCEPT_PAUSE.as_millis()
        ))
    }

    /// Pauses accepting on every open listener for a moment.
    pub fn pause(&mut self, now: Instant, actions: &mut VecDeque<Action>) {
        self.paused_until = Some(now + ACCEPT_PAUSE);
        for l in self.iter() {
            if l.state == ListenerState::Open {
                actions.push_back(Action::PauseAccept { listener: l.id });
            }
        }
    }

    /// Accepting again once the pause is over.
    pub fn resume_if_due(&mut self, now: Instant, actions: &mut VecDeque<Action>) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.resume(actions);
        }
    }

    /// Accepting again now, if it is paused: a connection that ended gave
    /// its descriptors back, and the clients waiting in the accept queue
    /// need not wait for the rest of the pause.
    pub fn resume(&mut self, actions: &mut VecDeque<Action>) {
        if self.paused_until.take().is_none() {
            return;
        }
        for l in self.iter() {
            if l.state == ListenerState::Open {
                actions.push_back(Action::ResumeAccept { listener: l.id });
            }
        }
    }

    /// Shutdown: every listener closes (and stays known as closed, so a
    /// connection the runtime accepted meanwhile is told "shutting down").
    pub fn close_all(&mut self, actions: &mut VecDeque<Action>) {
        for (_, l) in self.slab.iter_mut() {
            if l.state != ListenerState::Closed {
                l.state = ListenerState::Closed;
                actions.push_back(Action::Unlisten { listener: l.id });
            }
        }
    }
}

/// The `listening:` line for one listener (printed at start and by `--check`).
pub fn listening_line(service: &str, kind: ServiceKind, addr: SocketAddr) -> String {
    format!("listening: {service} ({}) on {addr}", kind.name())
}

/// Every `listening:` line a start with `config` prints.
pub fn listening_lines(config: &crate::config::Config) -> Vec<String> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.listen
                .iter()
                .map(move |a| listening_line(&s.name, s.kind, *a))
        })
        .collect()
}
