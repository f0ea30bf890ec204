//! The in-memory network around the runtime: each socket's two directions
//! as bounded byte queues ([`Pipe`]), the servers that answer at addresses,
//! the names the resolver knows, and what is on its way to the runtime
//! (connect answers, resolutions, opened listeners) with the time it
//! arrives; and what the network makes of the runtime's calls and the
//! core's actions in a [`Sim`]: clients accepted or refused, listeners
//! opened on a port of their own, connects answered, names resolved,
//! sockets shut and closed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::peers::Behavior;
use super::runtime::ListenState;
use super::sched::{Plan, Sim, LOCALHOST};
use crate::{Action, ConnId, Event, IoKind, ListenerId, Side};

/// One direction of a socket: bytes in flight, with room for `cap`.
#[derive(Debug, Default)]
pub struct Pipe {
    pub buf: VecDeque<u8>,
    pub cap: usize,
    /// The writer shut (or closed) its end: after the bytes, EOF.
    pub eof: bool,
}

impl Pipe {
    pub fn new(cap: usize) -> Self {
        Pipe {
            buf: VecDeque::new(),
            cap,
            eof: false,
        }
    }

    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.buf.len())
    }
}

/// How the far end answers a connect.
pub enum Server {
    /// Accepts, then plays this.
    Accept(Box<dyn Behavior>),
    /// Refuses (RST): `ConnectFailed { Refused }`.
    Refuse,
    /// The connect fails with this error.
    Fail(IoKind),
    /// Never answers: the connect hangs until the core gives up.
    Silent,
}

impl Server {
    /// The error a failed connect reports, if it fails.
    pub fn error(&self) -> Option<IoKind> {
        match self {
            Server::Refuse => Some(IoKind::Refused),
            Server::Fail(e) => Some(*e),
            _ => None,
        }
    }
}

/// How a server is made for each connection to its address.
pub type Factory = Box<dyn FnMut() -> Box<dyn Behavior>>;

/// Something on its way to the runtime.
#[derive(Debug)]
pub enum Deliver {
    Listening {
        listener: ListenerId,
        local: SocketAddr,
    },
    /// The connect of connection `conn` (an index of the scheduler's),
    /// attempt `attempt` (the scheduler's count; `core`: the core's number
    /// for it), finished: connected from a local address, or failed. The
    /// scheduler plays one connect at a time: a newer one makes an older
    /// answer stale (a race it plays is won by the latest attempt).
    Answer {
        conn: usize,
        attempt: u32,
        core: u32,
        result: Result<SocketAddr, IoKind>,
    },
    Resolved {
        conn: ConnId,
        addrs: Vec<SocketAddr>,
    },
    ResolveFailed {
        conn: ConnId,
    },
    PasswordChecked {
        conn: ConnId,
        ok: bool,
    },
}

#[derive(Debug)]
pub struct Pending {
    pub at: Duration,
    pub what: Deliver,
}

/// Who answers where, and what is in flight.
#[derive(Default)]
pub struct Net {
    servers: BTreeMap<SocketAddr, Factory>,
    /// Connects to these never finish.
    pub blackholes: BTreeSet<SocketAddr>,
    names: BTreeMap<String, Vec<IpAddr>>,
    pub pending: Vec<Pending>,
}

impl Net {
    /// A server for every connection to `addr`.
    pub fn serve(&mut self, addr: SocketAddr, f: Factory) {
        self.servers.insert(addr, f);
    }

    /// `name` resolves to these addresses.
    pub fn name(&mut self, name: &str, ips: &[IpAddr]) {
        self.names.insert(name.to_string(), ips.to_vec());
    }

    /// What the resolver says of `host`, with `port` in the addresses.
    pub fn resolve(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let ips = self.names.get(host)?;
        Some(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }

    /// How a connect to `addr` is answered: a server listening there, a
    /// black hole, or nobody (refused).
    pub fn connect(&mut self, addr: SocketAddr) -> Server {
        if self.blackholes.contains(&addr) {
            Server::Silent
        } else if let Some(make) = self.servers.get_mut(&addr) {
            Server::Accept(make())
        } else {
            Server::Refuse
        }
    }

    pub fn deliver(&mut self, at: Duration, what: Deliver) {
        self.pending.push(Pending { at, what });
    }
}

impl Sim {
    pub(super) fn accept(&mut self, i: usize) {
        let c = &self.conns[i];
        let peer = self.peers[c.client].addr;
        let listener = self.rt.listener_at(c.to).map(|l| (l.id, l.asked == c.to));
        let Some((listener, plain)) = listener else {
            // Nobody listens there: the OS refuses the connection.
            self.conns[i].os_refused = true;
            let client = &mut self.peers[self.conns[i].client];
            client.started = true;
            client.outbound.eof = true;
            return;
        };
        // The local address, as a runtime that asks the socket tells it;
        // one that knows the listener's address may leave it out.
        let local = (!plain || !self.dice.chance(1, 2)).then_some(c.to);
        let result = self.rt.accept(listener, peer, local);
        let now = self.now();
        let c = &mut self.conns[i];
        c.accepted_at = Some(now);
        let client = &mut self.peers[c.client];
        client.started = true;
        match result {
            Ok(id) => {
                c.id = Some(id);
                client.open = true;
                self.live.insert(id, i);
            }
            Err(why) => {
                // The runtime closes the socket: the client sees EOF.
                c.refused = Some(why);
                client.outbound.eof = true;
            }
        }
    }

    pub(super) fn deliver(&mut self, what: Deliver) {
        let now = self.now();
        match what {
            Deliver::Listening { listener, local } => {
                let closed = self
                    .rt
                    .listeners()
                    .iter()
                    .any(|l| l.id == listener && l.state == ListenState::Closed);
                if !closed {
                    self.rt.handle(Event::Listening { listener, local });
                }
            }
            Deliver::Answer {
                conn,
                attempt,
                core,
                result,
            } => {
                let id = self.id(conn);
                let event = match result {
                    Ok(local) => Event::Connected {
                        conn: id,
                        attempt: core,
                        local,
                    },
                    Err(error) => Event::ConnectFailed {
                        conn: id,
                        attempt: core,
                        error,
                    },
                };
                let c = &mut self.conns[conn];
                if c.closed_at.is_some() {
                    return self.rt.handle_stale(id, Side::Upstream, event);
                }
                if c.attempt != attempt {
                    return;
                }
                c.answered_at = Some(now);
                if let (Ok(local), Some(p)) = (result, c.server) {
                    c.connected_at = Some(now);
                    let server = &mut self.peers[p];
                    server.open = true;
                    server.started = true;
                    server.local = Some(local);
                }
                self.rt.handle(event);
            }
            Deliver::Resolved { conn, addrs } => {
                self.event_for(conn, Event::Resolved { conn, addrs });
            }
            Deliver::ResolveFailed { conn } => {
                self.event_for(conn, Event::ResolveFailed { conn });
            }
            Deliver::PasswordChecked { conn, ok } => {
                self.event_for(conn, Event::PasswordChecked { conn, ok });
            }
        }
    }

    /// An event for `conn`, which may have closed since it was asked for.
    fn event_for(&mut self, conn: ConnId, event: Event) {
        if self.rt.is_live(conn) {
            self.rt.handle(event);
        } else {
            self.rt.handle_stale(conn, Side::Upstream, event);
        }
    }

    /// What the network and the peers make of an action (the runtime has
    /// carried it out on its record and checked it).
    pub(super) fn apply(&mut self, action: Action) {
        let now = self.now();
        match action {
            Action::Listen { listener, addr, .. } => {
                let local = if addr.port() == 0 {
                    self.ports += 1;
                    let port = 50000 + self.ports * 7 + self.dice.below(7) as u16;
                    SocketAddr::new(addr.ip(), port)
                } else {
                    addr
                };
                self.listens.push((listener, addr, local));
                // Those of the start open at once.
                let at = if self.steps == 0 {
                    now
                } else {
                    now + self.dice.duration(Duration::ZERO, Duration::from_millis(2))
                };
                self.net.deliver(at, Deliver::Listening { listener, local });
            }
            Action::Resolve { conn, host, port } => {
                self.resolves.push((self.live[&conn], host.clone()));
                let what = match self.net.resolve(&host, port) {
                    Some(addrs) => Deliver::Resolved { conn, addrs },
                    None => Deliver::ResolveFailed { conn },
                };
                let at = now + self.dice.duration(Duration::ZERO, Duration::from_millis(5));
                self.net.deliver(at, what);
            }
            Action::CheckPassword {
                conn,
                phc,
                password,
            } => {
                // A pool of threads runs argon2 meanwhile: the verdict
                // comes late, after other events, maybe after the client
                // has gone or the configuration was reloaded.
                let ok = crate::auth::verify_password(&phc, &password.0);
                let at = now
                    + self
                        .dice
                        .duration(Duration::ZERO, Duration::from_millis(50));
                self.net.deliver(at, Deliver::PasswordChecked { conn, ok });
            }
            Action::Connect {
                conn,
                attempt,
                addr,
                ..
            } => self.connect(self.live[&conn], attempt, addr),
            Action::Abandon { conn, attempt } => {
                // The scheduler plays only the last connect: abandoning
                // it closes its socket, and its answer will not come.
                let i = self.live[&conn];
                let c = &mut self.conns[i];
                if c.core_attempt == Some(attempt) {
                    c.attempt += 1;
                    c.core_attempt = None;
                    if let Some(p) = c.server.take() {
                        self.peers[p].gone();
                    }
                }
            }
            Action::CloseUpstream { conn } => {
                let i = self.live[&conn];
                self.upstream_closes.push(i);
                let c = &mut self.conns[i];
                c.attempt += 1;
                if let Some(p) = c.server.take() {
                    self.peers[p].gone();
                }
            }
            Action::ShutdownWrite { conn, side } => {
                let i = self.live[&conn];
                assert!(
                    self.conns[i].pipe(side.other()).is_empty(),
                    "{}: ShutdownWrite on {conn} {side:?} with bytes still in the pipe",
                    self.tag
                );
                let p = self.end(i, side);
                self.peers[p].outbound.eof = true;
            }
            Action::Close { conn } => {
                let i = self.live.remove(&conn).expect("a live connection");
                let c = &mut self.conns[i];
                c.closed_at = Some(now);
                // What the runtime's pipes held is lost with the sockets.
                c.pipe = Default::default();
                for p in [Some(c.client), c.server].into_iter().flatten() {
                    self.peers[p].gone();
                }
            }
            Action::Access(rec) => {
                assert!(
                    self.conns
                        .iter()
                        .any(|c| self.peers[c.client].addr == rec.client),
                    "{}: access record for unknown client {}",
                    self.tag,
                    rec.client
                );
            }
            _ => {}
        }
    }

    /// The core asks connection `i`'s upstream socket to connect to `addr`.
    fn connect(&mut self, i: usize, core: u32, addr: SocketAddr) {
        let now = self.now();
        self.connects.push((i, addr));
        let c = &mut self.conns[i];
        c.attempt += 1;
        c.core_attempt = Some(core);
        c.connect_asked_at = Some(now);
        if let Some(old) = c.server.take() {
            // A new socket replaces the one there was.
            self.peers[old].gone();
        }
        let (plan, delay) = match self.conns[i].plan.take() {
            Some(plan) => (plan, self.conns[i].delay),
            None => {
                let delay = self
                    .dice
                    .duration(Duration::ZERO, Duration::from_millis(20));
                let plan = match self.net.connect(addr) {
                    Server::Accept(b) => {
                        let label = format!("server {addr} #{}", self.servers_at(addr).len());
                        Plan::Accept(self.new_peer(label, addr, i, b))
                    }
                    Server::Silent => Plan::Silent,
                    other => Plan::Fail(other.error().unwrap_or(IoKind::Refused)),
                };
                (plan, delay)
            }
        };
        let attempt = self.conns[i].attempt;
        let result = match plan {
            Plan::Accept(p) => {
                self.peers[p].addr = addr;
                self.upstreams.push(p);
                self.conns[i].server = Some(p);
                self.ports += 1;
                let port = 30000 + self.ports * 13 + self.dice.below(13) as u16;
                Ok(SocketAddr::new(LOCALHOST, port))
            }
            Plan::Fail(error) => Err(error),
            // The connect hangs until the core gives up.
            Plan::Silent => return,
        };
        let what = Deliver::Answer {
            conn: i,
            attempt,
            core,
            result,
        };
        self.net.deliver(now + delay, what);
    }
}
