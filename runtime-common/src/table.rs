//! [`Table`]: a runtime's one handle on the core's connection table.
//!
//! Every call either runtime makes into the table goes through here, and
//! only here (the tables themselves are made here too), so that a change of
//! the core's face is met in this file alone. Beside the table it keeps what
//! goes with one: the access log, the flight recorder's files, the wall
//! clock, and the first fatal error; and it carries out the actions that
//! only write lines, in the order the core queued them among the others.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Instant;

use portico_core::config::Config;
use portico_core::{
    Accepted, Action, ConnId, Event, IoKind, Level, ListenerId, Proxy, Refused, Reload, Side,
};

use crate::process::{log, say, Output, TraceFiles, WallClock};
use crate::steps::{ConnCmd, ListenCmd, Step, UdpCmd};
use crate::vectored::write_parts;

pub use portico_core::{Ledger, PipeSize, Snapshot, UdpId, Via, Wall};

/// One connection table, with its access log, trace files and clock.
pub struct Table {
    proxy: Proxy,
    out: Output,
    trace: Option<TraceFiles>,
    wall: WallClock,
    fatal: Option<String>,
}

impl Table {
    /// The only table of the process (recording when `trace` is given),
    /// keeping its counts in `ledger`.
    pub(crate) fn first(
        config: Config,
        text: &str,
        now: Instant,
        ledger: Ledger,
        out: Output,
        trace: Option<TraceFiles>,
        level: Level,
    ) -> Table {
        let mut proxy = Proxy::worker(config, crate::process::seed(), now, ledger, 0);
        if trace.is_some() {
            proxy.record(text);
        }
        Table::with(proxy, out, trace, level)
    }

    /// Worker `worker`'s table among those sharing `ledger` (never
    /// recording: a trace is one table's).
    pub(crate) fn worker(
        config: Config,
        now: Instant,
        ledger: Ledger,
        worker: usize,
        out: Output,
        level: Level,
    ) -> Table {
        let seed = crate::process::seed();
        let proxy = Proxy::worker(config, seed, now, ledger, worker);
        Table::with(proxy, out, None, level)
    }

    fn with(mut proxy: Proxy, out: Output, trace: Option<TraceFiles>, level: Level) -> Table {
        proxy.set_log_level(level);
        let mut wall = WallClock::new();
        proxy.set_wall(wall.now());
        Table {
            proxy,
            out,
            trace,
            wall,
            fatal: None,
        }
    }

    /// Tells the table the time of day (its rules may depend on it): once
    /// per wake-up, before the events it brings.
    #[inline(always)]
    pub fn set_wall_clock(&mut self) {
        let w = self.wall.now();
        self.proxy.set_wall(w);
    }

    /// The next of the core's actions that names a socket, a connection or
    /// another worker, sorted by owner. The actions that only write lines
    /// (`Log`, `Access`, `Say`) are carried out on the way, so every line
    /// comes out in the order the core queued it among the rest; the first
    /// `Fatal` is kept for [`Table::take_fatal`]. Inlined, and one match:
    /// a runtime asks after every event.
    #[inline(always)]
    pub fn next_step(&mut self) -> Option<Step> {
        loop {
            let conn = |conn, cmd| Some(Step::Conn(conn, cmd));
            return match self.proxy.poll_action()? {
                Action::Interest {
                    conn: c,
                    side,
                    read,
                    write,
                } => conn(c, ConnCmd::Interest { side, read, write }),
                Action::Connect {
                    conn: c,
                    attempt,
                    addr,
                    bind,
                } => conn(
                    c,
                    ConnCmd::Connect {
                        attempt,
                        addr,
                        bind,
                    },
                ),
                Action::Abandon { conn: c, attempt } => conn(c, ConnCmd::Abandon(attempt)),
                Action::Resolve {
                    conn: c,
                    host,
                    port,
                } => conn(c, ConnCmd::Resolve { host, port }),
                Action::CheckPassword {
                    conn: c,
                    phc,
                    password,
                } => conn(c, ConnCmd::CheckPassword { phc, password }),
                Action::AskHelper {
                    conn: c,
                    helper,
                    user,
                    password,
                } => conn(
                    c,
                    ConnCmd::AskHelper {
                        helper,
                        user,
                        password,
                    },
                ),
                Action::ShutdownWrite { conn: c, side } => conn(c, ConnCmd::ShutdownWrite(side)),
                Action::CloseUpstream { conn: c } => conn(c, ConnCmd::CloseUpstream),
                Action::Close { conn: c } => conn(c, ConnCmd::Close),
                Action::BindListen {
                    conn: c,
                    toward,
                    bind,
                } => conn(c, ConnCmd::BindListen { toward, bind }),
                Action::BindTake { conn: c, attempt } => conn(c, ConnCmd::BindTake(attempt)),
                Action::BindReject { conn: c } => conn(c, ConnCmd::BindReject),
                Action::BindClose { conn: c } => conn(c, ConnCmd::BindClose),
                Action::Gather { conn } => Some(Step::Gather(conn)),
                Action::Listen {
                    listener,
                    addr,
                    intercept,
                } => Some(Step::Listen(ListenCmd::Open(listener, addr, intercept))),
                Action::PauseAccept { listener } => Some(Step::Listen(ListenCmd::Pause(listener))),
                Action::ResumeAccept { listener } => {
                    Some(Step::Listen(ListenCmd::Resume(listener)))
                }
                Action::Unlisten { listener } => Some(Step::Unlisten(listener)),
                Action::ListenUdp { listener, addr } => {
                    Some(Step::Udp(UdpCmd::Listen(listener, addr)))
                }
                Action::UdpOpen {
                    id,
                    bind,
                    destination,
                } => Some(Step::Udp(UdpCmd::Open(id, bind, destination))),
                Action::UdpClose { id } => Some(Step::Udp(UdpCmd::Close(id))),
                Action::UdpAssociate {
                    conn,
                    client_side,
                    outward,
                    dual_stack,
                } => Some(Step::Udp(UdpCmd::Associate(
                    conn,
                    client_side,
                    outward,
                    dual_stack,
                ))),
                Action::UdpDisassociate { conn } => Some(Step::Udp(UdpCmd::Disassociate(conn))),
                line @ (Action::Log { .. }
                | Action::Access(_)
                | Action::Say(_)
                | Action::Fatal { .. }) => {
                    self.line(line);
                    continue;
                }
            };
        }
    }

    /// Carries out an action that writes a line (or keeps the first
    /// `Fatal`); out of line, as most steps are not lines.
    #[inline(never)]
    fn line(&mut self, action: Action) {
        match action {
            Action::Log { level, message } => log(level, &message),
            Action::Access(rec) => self.out.access(&rec),
            Action::Say(line) => say(&line),
            Action::Fatal { message } => {
                self.fatal.get_or_insert(message);
            }
            // Only the lines come here (see `next_step`).
            _ => {}
        }
    }

    /// SIGUSR1: opens the access log file again at its path (logrotate
    /// moved it); the configuration is not read.
    pub fn reopen_access(&mut self) {
        if let Err(e) = self.out.reopen() {
            let path = self.out.path().map(|p| p.display().to_string());
            log(
                Level::Error,
                &format!(
                    "cannot open the access log {} again: {e}; still writing to the old file",
                    path.unwrap_or_default()
                ),
            );
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        self.proxy.config()
    }

    /// The counts shared by every table of the process (connections open).
    pub fn ledger(&self) -> Ledger {
        self.proxy.ledger()
    }

    /// The first `Fatal` the core asked for, once.
    pub fn take_fatal(&mut self) -> Option<String> {
        self.fatal.take()
    }

    /// Appends what the flight recorder took down to its files.
    #[inline]
    pub fn flush_trace(&mut self) {
        if let Some(t) = self.trace.as_mut() {
            if let Some(rec) = self.proxy.take_trace() {
                t.write(rec);
            }
        }
    }

    #[inline]
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.proxy.handle(event, now);
    }

    #[inline]
    pub fn handle_timeout(&mut self, now: Instant) {
        self.proxy.handle_timeout(now);
    }

    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.proxy.poll_timeout()
    }

    #[inline]
    pub fn is_finished(&self) -> bool {
        self.proxy.is_finished()
    }

    /// SIGTERM or SIGINT.
    pub fn shutdown(&mut self, now: Instant) {
        self.proxy.shutdown(now);
    }

    /// A client socket accepted on `listener`, whose local address is
    /// `local` (and, on a transparent service's listener, whose original
    /// destination is `original`, if it could be read).
    #[inline]
    pub fn accept(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        local: SocketAddr,
        original: Option<SocketAddr>,
        now: Instant,
    ) -> Result<ConnId, Refused> {
        let accepted = Accepted::new(listener, peer)
            .local(local)
            .original(original);
        self.proxy.accept(accepted, now)
    }

    /// Tells how opening `listener` (TCP or UDP) went: its local address,
    /// or why it failed.
    pub fn listened(&mut self, listener: ListenerId, opened: io::Result<SocketAddr>) {
        let event = match opened {
            Ok(local) => Event::Listening { listener, local },
            Err(e) => Event::ListenFailed {
                listener,
                error: IoKind::from_io(&e),
            },
        };
        self.proxy.handle(event, Instant::now());
    }

    /// Reads `src` into `side`'s buffer in the core, retrying on EINTR:
    /// what the read did and the room there was, or `None` when the core
    /// has no room lent for that side (it wants no read after all). The
    /// caller tells the core ([`crate::net::read_event`]).
    #[inline]
    pub fn read(
        &mut self,
        conn: ConnId,
        side: Side,
        mut src: impl Read,
    ) -> Option<(io::Result<usize>, usize)> {
        let buf = self.proxy.recv_buf(conn, side)?;
        let room = buf.len();
        Some((crate::net::retry(|| src.read(buf)), room))
    }

    /// Writes what the core has for `side` to `dst` (its two parts in one
    /// vectored write): what the write did and how much there was, or
    /// `None` when the core has nothing for it. The caller tells the core
    /// ([`crate::net::write_event`]).
    #[inline]
    pub fn write(
        &mut self,
        conn: ConnId,
        side: Side,
        dst: impl Write,
    ) -> Option<(io::Result<usize>, usize)> {
        let parts = self.proxy.send_buf(conn, side)?;
        let want = parts[0].len() + parts[1].len();
        Some((write_parts(dst, parts), want))
    }

    /// The direction from `from` is a pure relay a runtime may splice.
    #[inline]
    pub fn splice_ok(&self, conn: ConnId, from: Side) -> bool {
        self.proxy.splice_ok(conn, from)
    }

    /// The pipe a spliced direction goes through.
    #[inline]
    pub fn splice_pipe(&self) -> PipeSize {
        self.proxy.splice_pipe()
    }

    /// The pipe the direction from `from` of `conn` goes through now (it
    /// may hold more once the core lets it grow).
    #[inline]
    pub fn splice_pipe_for(&self, conn: ConnId, from: Side) -> PipeSize {
        self.proxy.splice_pipe_for(conn, from)
    }

    /// Connect attempt `attempt` of `conn` connected on `socket`: tells
    /// the core, with the socket's local address only where the core uses
    /// it (SOCKS, FTP), sparing a getsockname elsewhere.
    pub fn connected(&mut self, conn: ConnId, attempt: u32, socket: &impl AsFd, now: Instant) {
        let local = if self.proxy.wants_local(conn) {
            crate::net::local_addr(socket)
        } else {
            crate::net::UNSPECIFIED
        };
        let ev = Event::Connected {
            conn,
            attempt,
            local,
        };
        self.proxy.handle(ev, now);
    }

    /// This table, for a status request on another worker.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        self.proxy.snapshot(now)
    }

    /// The other workers' tables, for the status request on `conn`.
    pub fn handle_gathered(&mut self, conn: ConnId, parts: Vec<Snapshot>, now: Instant) {
        self.proxy.handle_gathered(conn, parts, now);
    }

    /// Where a datagram is received into.
    #[inline]
    pub fn datagram_buf(&mut self) -> &mut [u8] {
        self.proxy.datagram_buf()
    }

    /// A datagram of `n` bytes from `from` on UDP port `listener`.
    #[inline]
    pub fn handle_datagram(&mut self, listener: ListenerId, from: SocketAddr, n: usize) {
        self.proxy
            .handle_datagram(listener, from, n, Instant::now());
    }

    /// A reply of `n` bytes on UDP mapping `id`'s socket.
    #[inline]
    pub fn handle_reply(&mut self, id: UdpId, n: usize) {
        self.proxy.handle_reply(id, n, Instant::now());
    }

    /// `conn`'s BIND listener opened (its address), or why not.
    pub fn bind_listening(&mut self, conn: ConnId, opened: io::Result<SocketAddr>) {
        let event = match opened {
            Ok(local) => Event::BindListening { conn, local },
            Err(e) => Event::BindFailed {
                conn,
                error: IoKind::from_io(&e),
            },
        };
        self.proxy.handle(event, Instant::now());
    }

    /// A datagram of `n` bytes from `from` on one of association `conn`'s
    /// sockets (`outward`: the one facing the destinations).
    #[inline]
    pub fn handle_association_datagram(
        &mut self,
        conn: ConnId,
        outward: bool,
        from: SocketAddr,
        n: usize,
    ) {
        self.proxy
            .handle_association_datagram(conn, outward, from, n, Instant::now());
    }

    /// Association `conn`'s sockets opened (the client side's address),
    /// or why not.
    pub fn associated(&mut self, conn: ConnId, opened: io::Result<SocketAddr>) {
        let event = match opened {
            Ok(local) => Event::UdpBound { conn, local },
            Err(e) => Event::UdpBindFailed {
                conn,
                error: IoKind::from_io(&e),
            },
        };
        self.proxy.handle(event, Instant::now());
    }

    /// UDP mapping `id`'s socket could not be opened.
    pub fn handle_udp_failed(&mut self, id: UdpId) {
        self.proxy.handle_udp_failed(id, Instant::now());
    }

    /// The next datagram the core has to send.
    #[inline]
    pub fn poll_datagram(&mut self) -> Option<(Via, Vec<u8>)> {
        self.proxy.poll_datagram()
    }

    /// The configuration SIGHUP read again did not load, for the reason
    /// given (already logged).
    pub fn reload_failed(&mut self, why: &str) {
        self.proxy.reload_failed(why, Instant::now());
    }

    /// Switches this table to a configuration [`crate::load`]ed again,
    /// and its access log with it (a log that does not open keeps the old
    /// one); how many connections the table closed. `closed_elsewhere`:
    /// what the other workers' tables closed, for the one that logs the
    /// reload for all.
    pub fn apply(
        &mut self,
        config: Config,
        text: &str,
        recheck: bool,
        closed_elsewhere: usize,
    ) -> usize {
        match Output::open(&config) {
            Ok(o) => self.out = o,
            Err(e) => log(
                Level::Error,
                &format!("cannot open the new access log: {e}; keeping the old one"),
            ),
        }
        let now = Instant::now();
        let reload = Reload {
            text,
            recheck,
            closed_elsewhere,
        };
        self.proxy.reconfigure(config, reload, now)
    }
}
