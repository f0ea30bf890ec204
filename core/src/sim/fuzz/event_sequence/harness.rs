//! The harness of the `event_sequence` target: the shared [`Runtime`] and
//! what the fuzzer knows of each connection it was given, one operation
//! decoded from the input at a time, and the checks after each (see the
//! parent module's docs).

use super::*;

/// What the fuzzer knows about one connection it was given, beyond what
/// the runtime holds of its sockets.
#[derive(Debug)]
struct Model {
    kind: Kind,
    /// Where a `Connect` must go, when the configuration says so.
    dest: Option<SocketAddr>,
    /// Bytes read and not yet written, per direction (`up` = client →
    /// upstream); `None` once the fuzzer lied to the core about that
    /// direction (a read it did not make, a write of bytes it was not
    /// shown), or for a protocol that speaks itself, after which the
    /// content is no longer predictable.
    up: Option<VecDeque<u8>>,
    down: Option<VecDeque<u8>>,
    /// What the client says first (a protocol's request), and how much of
    /// it was read; the same for the upstream (a response).
    script: Vec<u8>,
    script_pos: usize,
    reply: Vec<u8>,
    reply_pos: usize,
    /// Bytes made up so far (seeds the filler pattern).
    produced: usize,
}

impl Model {
    fn dir(&mut self, source: Side) -> &mut Option<VecDeque<u8>> {
        match source {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }
}

pub(super) struct Harness {
    setup: Setup,
    /// [`Setup::kinds`], once (it is asked on every accept).
    kinds: Vec<Kind>,
    rt: Runtime,
    /// By id: a handful at a time, so an ordered map (one node, no
    /// hashing, and a fixed order for the checks) is the cheapest.
    conns: BTreeMap<ConnId, Model>,
    /// Live connections in accept order (for picking one by index).
    order: Vec<ConnId>,
    dead: Vec<ConnId>,
    accesses: u64,
    closes: u64,
    refusals: u64,
    /// `PORTICO_FUZZ_TRACE=1`: print every operation and action (to replay
    /// a crash by hand).
    trace: bool,
    /// SOCKS UDP associations asked for and not yet answered.
    assoc_asked: Vec<ConnId>,
    /// SOCKS BIND listeners asked for, with the address each was asked
    /// toward (the peer the client expects).
    bind_toward: BTreeMap<ConnId, SocketAddr>,
    /// BIND listeners asked for and not yet answered.
    bind_asked: Vec<ConnId>,
    /// Accepted BIND connections handed over, with their attempt.
    taken: Vec<(ConnId, u32)>,
}

impl Harness {
    pub(super) fn new(setup: Setup, config: Config) -> Harness {
        let mut rt = Runtime::new(config, setup.seed, Instant::now());
        // A listener that fails to open is fatal to a runtime; the table
        // must still behave.
        rt.fatal_ok = true;
        // What it needs of the records, it counts as they come.
        rt.collect = false;
        if setup.debug_log {
            rt.set_log_level(Level::Debug);
        }
        let trace = std::env::var_os("PORTICO_FUZZ_TRACE").is_some();
        rt.live = trace;
        let mut h = Harness {
            kinds: setup.kinds(),
            setup,
            rt,
            conns: BTreeMap::new(),
            order: Vec::new(),
            dead: Vec::new(),
            accesses: 0,
            closes: 0,
            refusals: 0,
            trace,
            assoc_asked: Vec::new(),
            bind_toward: BTreeMap::new(),
            bind_asked: Vec::new(),
            taken: Vec::new(),
        };
        h.drain();
        assert_eq!(
            h.rt.listeners().len(),
            h.kinds.len(),
            "one Listen action per listen address"
        );
        for i in 0..h.kinds.len() {
            let (listener, local) = (h.rt.listeners()[i].id, h.rt.listeners()[i].asked);
            if h.setup.listen_fails as usize == i + 1 {
                let error = IoKind::AddrInUse;
                h.rt.handle(Event::ListenFailed { listener, error });
            } else {
                h.rt.handle(Event::Listening { listener, local });
            }
            h.drain();
        }
        h.check();
        h
    }

    /// The kind of listener `i`.
    fn kind(&self, i: usize) -> Kind {
        self.kinds.get(i).copied().unwrap_or(Kind::Mapped)
    }

    fn pick_conn(&mut self, input: &mut Input<'_>) -> ConnId {
        let b = input.byte();
        if b < 200 && !self.order.is_empty() {
            self.order[b as usize % self.order.len()]
        } else if b < 230 && !self.dead.is_empty() {
            self.dead[b as usize % self.dead.len()]
        } else {
            ConnId::from_parts((input.byte() % 16) as u32, (input.byte() % 4) as u32)
        }
    }

    fn pick_listener(&mut self, input: &mut Input<'_>) -> ListenerId {
        let b = input.byte() as usize;
        let listeners = self.rt.listeners();
        // One past the end, and far off, name no listener.
        match b % (listeners.len() + 2) {
            i if i < listeners.len() => listeners[i].id,
            i if i == listeners.len() => ListenerId(i as u32),
            _ => ListenerId(u32::MAX),
        }
    }

    fn addr(&self, input: &mut Input<'_>) -> SocketAddr {
        let b = input.byte();
        let last = match b % 4 {
            0 | 1 => 1,
            2 => 66,
            _ => 2,
        };
        let port = if b & 0x80 == 0 { 9000 } else { input.u16() };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
    }

    /// Forgets what a direction holds (the fuzzer lied about it).
    fn taint(&mut self, conn: ConnId, source: Side) {
        if let Some(m) = self.conns.get_mut(&conn) {
            *m.dir(source) = None;
        }
    }

    pub(super) fn op(&mut self, input: &mut Input<'_>) {
        let code = input.byte();
        if self.trace {
            eprintln!(
                "[{:?}] op {} (at byte {}): len {} timers {} next {:?}",
                self.rt.now(),
                code % 18,
                input.pos,
                self.rt.len(),
                self.rt.timer_entries(),
                self.rt.deadline()
            );
        }
        match code % 18 {
            0 | 1 => self.accept(input),
            2 => {
                let conn = self.pick_conn(input);
                let attempt = self.pick_attempt(conn, input);
                let local =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000 + input.u16() % 1000);
                self.rt.handle(Event::Connected {
                    conn,
                    attempt,
                    local,
                });
            }
            3 => {
                let conn = self.pick_conn(input);
                let attempt = self.pick_attempt(conn, input);
                let error = input.kind();
                self.rt.handle(Event::ConnectFailed {
                    conn,
                    attempt,
                    error,
                });
            }
            4..=6 => self.read(input),
            7 => {
                // A read the runtime did not make into the lent buffer.
                let conn = self.pick_conn(input);
                let side = input.side();
                let n = input.count();
                if n > 0 {
                    self.taint(conn, side);
                }
                self.rt.handle(Event::Read { conn, side, n });
            }
            8 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                if input.byte() & 1 == 1 {
                    // The runtime took the buffer and the read would block.
                    let _ = self.rt.lend(conn, side);
                }
                self.rt.handle(Event::ReadBlocked { conn, side });
            }
            9 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                self.rt.handle(Event::Eof { conn, side });
            }
            10 | 11 => self.write(input),
            12 => {
                let conn = self.pick_conn(input);
                let side = input.side();
                let error = input.kind();
                self.rt.handle(Event::IoError { conn, side, error });
            }
            13 => {
                match input.byte() % 4 {
                    0 => {
                        let ms = input.u16() as u64;
                        self.rt.advance(Duration::from_millis(ms));
                    }
                    1 => {
                        if let Some(t) = self.rt.deadline() {
                            self.rt.set_now(self.rt.now().max(t));
                        }
                    }
                    2 => self.rt.advance(Duration::from_millis(input.byte() as u64)),
                    _ => {}
                }
                self.timeout();
            }
            14 => match input.byte() % 8 {
                0 => self.rt.shutdown(),
                1..=3 => {
                    let listener = self.pick_listener(input);
                    let error = input.kind();
                    self.rt.handle(Event::AcceptFailed { listener, error });
                }
                4 => {
                    let listener = self.pick_listener(input);
                    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), input.u16());
                    self.rt.handle(Event::Listening { listener, local });
                }
                5 => {
                    let listener = self.pick_listener(input);
                    let error = input.kind();
                    self.rt.handle(Event::ListenFailed { listener, error });
                }
                7 => self.splice(input),
                // SOCKS UDP associations and BIND (added after the rest:
                // it replaced read-only calls, which it still makes).
                6 => self.socks_op(input),
                _ => self.read_only(input),
            },
            15 | 16 => {
                let conn = self.pick_conn(input);
                let n = input.byte() % 4;
                if n == 3 && input.byte() & 1 == 0 {
                    self.rt.handle(Event::ResolveFailed { conn });
                } else {
                    let addrs = (0..n).map(|_| self.addr(input)).collect();
                    self.rt.handle(Event::Resolved { conn, addrs });
                }
            }
            _ => self.stale(input),
        }
        self.drain();
        self.check();
    }

    /// A connect attempt of `conn` to answer: mostly one in flight, else
    /// any number (one long given up on, or never asked for).
    fn pick_attempt(&self, conn: ConnId, input: &mut Input<'_>) -> u32 {
        let pick = input.byte();
        match self.rt.conn(conn).map(|s| &s.attempts) {
            Some(a) if !a.is_empty() && !pick.is_multiple_of(4) => a[pick as usize % a.len()].0,
            // Never LATEST_ATTEMPT: only format-1 traces say that.
            _ => input.u32() % crate::LATEST_ATTEMPT,
        }
    }

    /// An event for an id that was never handed out, or is long dead.
    fn stale(&mut self, input: &mut Input<'_>) {
        let conn = ConnId::from_parts(input.byte() as u32, input.u32());
        let side = input.side();
        let n = input.count();
        let event = match input.byte() % 8 {
            0 => Event::Read { conn, side, n },
            1 if n & 1 == 0 => Event::Written { conn, side, n },
            1 => Event::Spliced {
                conn,
                from: side,
                n,
            },
            2 => Event::Eof { conn, side },
            3 => Event::Connected {
                conn,
                attempt: input.u32() % crate::LATEST_ATTEMPT,
                local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
            },
            4 => Event::ConnectFailed {
                conn,
                attempt: input.u32() % crate::LATEST_ATTEMPT,
                error: input.kind(),
            },
            5 => Event::ReadBlocked { conn, side },
            6 => Event::Resolved {
                conn,
                addrs: vec![self.addr(input)],
            },
            _ => Event::IoError {
                conn,
                side,
                error: input.kind(),
            },
        };
        if !self.rt.is_live(conn) {
            return self.rt.handle_stale(conn, side, event);
        }
        // It happens to name a live connection: the model must follow what
        // the event does to it.
        match &event {
            Event::Read { n, .. } if *n > 0 => self.taint(conn, side),
            Event::Written { n, .. } if *n > 0 => self.taint(conn, side.other()),
            // A splice the core did not allow: see `splice`.
            Event::Spliced { from, .. } if !self.rt.splice_ok(conn, *from) => {
                self.rt.bytes_told_wrong = true
            }
            _ => {}
        }
        self.rt.handle(event);
    }

    fn accept(&mut self, input: &mut Input<'_>) {
        self.accept_with(input, None);
    }

    /// An accept whose client says `script` first (a SOCKS one's) instead
    /// of its kind's own.
    fn accept_with(&mut self, input: &mut Input<'_>, script_override: Option<Vec<u8>>) {
        let listener = self.pick_listener(input);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + input.byte() % 4));
        let peer = SocketAddr::new(ip, input.u16());
        let script = input.byte();
        let reply = input.byte();
        let served = self.rt.conns().filter(|s| !s.refusing);
        let same_ip = served.clone().filter(|s| s.peer.ip() == ip).count();
        let full = served.count() >= self.setup.max_connections as usize;
        let per_client_full = same_ip >= self.setup.max_per_client as usize;
        let denied = self.setup.rules && ip == IpAddr::V4(DENIED_CLIENT);
        let refusing_now = self.rt.conns().filter(|s| s.refusing).count();
        let index = self.rt.listeners().iter().position(|l| l.id == listener);
        // A transparent service's connection: where it was going (or, not
        // redirected, nothing or the port itself).
        let transparent = index.is_some_and(|i| self.kind(i) == Kind::Transparent);
        let original = transparent.then(|| match input.byte() % 8 {
            0 => None,
            1 => Some(TRANSPARENT_AT),
            2 => Some(SocketAddr::new(IpAddr::V4(DENIED_ADDR), 80)),
            b => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                9100 + u16::from(b),
            )),
        });
        let redirected = original.flatten().filter(|a| *a != TRANSPARENT_AT);
        let accepted = match original {
            Some(o) => self.rt.accept_to(listener, peer, None, o),
            None => self.rt.accept(listener, peer, None),
        };
        match accepted {
            Ok(conn) => {
                let Some(i) = index else {
                    panic!("accept succeeded on unknown listener {listener:?}");
                };
                let kind = self.kind(i);
                let refusing = full || per_client_full || denied;
                assert!(
                    !refusing || kind.says_refusal(),
                    "a {kind:?} service admitted a connection over a limit or denied \
                     (full {full}, per client {per_client_full}, denied {denied})"
                );
                if refusing {
                    assert!(
                        refusing_now < REFUSING_MAX,
                        "more than REFUSING_MAX connections admitted only to be refused"
                    );
                }
                self.rt.set_refusing(conn, refusing);
                self.conns.insert(
                    conn,
                    Model {
                        kind,
                        // A peek never moves a direct connection.
                        dest: if kind == Kind::Transparent {
                            assert!(redirected.is_some(), "a connection not redirected admitted");
                            redirected
                        } else {
                            self.setup.destination(i)
                        },
                        // A protocol's own words are not modelled.
                        up: (kind == Kind::Mapped).then(VecDeque::new),
                        down: (kind == Kind::Mapped).then(VecDeque::new),
                        script: match script_override {
                            Some(s) if kind == Kind::Socks => s,
                            _ => kind.script(script),
                        },
                        script_pos: 0,
                        reply: kind.reply(reply),
                        reply_pos: 0,
                        produced: 0,
                    },
                );
                self.order.push(conn);
            }
            Err(Refused::UnknownListener) => {}
            Err(Refused::NotRedirected) => {
                assert!(
                    transparent && redirected.is_none(),
                    "refused as not redirected: {original:?} on listener {index:?}"
                );
                self.refusals += 1;
            }
            Err(why) => {
                let shut_down = self.rt.is_shut_down();
                if let Some(i) = index {
                    let kind = self.kind(i);
                    if kind.says_refusal() && !shut_down {
                        assert!(
                            refusing_now >= REFUSING_MAX,
                            "{kind:?} refused with {why} instead of saying so (room to refuse)"
                        );
                    }
                }
                match why {
                    Refused::TooMany => assert!(full, "TooMany with room in the table"),
                    Refused::PerClient => {
                        assert!(!full && per_client_full, "PerClient with room for {ip}")
                    }
                    Refused::Denied => {
                        assert!(!full && !per_client_full && denied, "Denied {ip}")
                    }
                    Refused::ShuttingDown => assert!(shut_down, "ShuttingDown before shutdown"),
                    _ => {}
                }
                // An HTTP proxy logs per request: its records are not
                // counted per connection.
                if index.is_none_or(|i| self.kind(i) != Kind::Http) {
                    self.refusals += 1;
                }
            }
        }
    }

    fn read(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let mode = input.byte();
        let conns = &mut self.conns;
        let read = self.rt.recv(conn, side, |buf| {
            let len = buf.len();
            let m = conns
                .get_mut(&conn)
                .expect("a model of every live connection");
            // What the peer sent: the client's script first, or bytes
            // straight from the input, then a filler pattern; written
            // straight into the lent buffer.
            let at = if mode & 1 == 0 {
                let (script, pos) = match side {
                    Side::Client => (&m.script, &mut m.script_pos),
                    Side::Upstream => (&m.reply, &mut m.reply_pos),
                };
                let rest = &script[*pos..];
                let k = rest.len().min(len).min(n);
                buf[..k].copy_from_slice(&rest[..k]);
                *pos += k;
                k
            } else {
                let k = (mode as usize >> 1).min(len);
                for b in &mut buf[..k] {
                    *b = input.byte();
                }
                k
            };
            let take = n.min(len);
            // Only the bytes the read says it made are ever looked at.
            if at < take {
                filler(&mut buf[at..take], m.produced + at);
            }
            m.produced += take;
            if let Some(q) = m.dir(side) {
                q.extend(&buf[..take]);
            }
            n
        });
        if read.is_none() {
            // Nothing lent: a read of n > 0 bytes is a lie.
            if n > 0 {
                self.taint(conn, side);
            }
            self.rt.handle(Event::Read { conn, side, n });
        }
    }

    fn write(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let n = input.count();
        let shown = self.rt.send_buf(conn, side);
        match (shown, self.conns.get_mut(&conn)) {
            (Some(parts), Some(m)) => {
                if let Some(q) = m.dir(side.other()) {
                    let len = parts[0].len() + parts[1].len();
                    assert!(
                        same(q, parts),
                        "bytes for {conn} {side:?} differ from what was read: \
                         {} expected, {len} shown",
                        q.len(),
                    );
                    q.drain(..n.min(len));
                }
            }
            (None, Some(m)) => {
                // Nothing shown: a write of n > 0 bytes is a lie, unless the
                // direction is empty.
                let dir = m.dir(side.other());
                if n > 0 && dir.as_ref().is_some_and(|q| !q.is_empty()) {
                    *dir = None;
                }
            }
            _ => {}
        }
        self.rt.handle(Event::Written { conn, side, n });
    }

    /// Bytes moved from `from` to the other side by the runtime itself
    /// (splice(2)): usually when the core allows it, sometimes when it does
    /// not (a confused runtime). They never pass the core's buffers, so the
    /// model of what waits in them stays as it is; an allowed splice finds
    /// nothing waiting.
    fn splice(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let from = input.side();
        let n = input.count();
        let ok = self.rt.splice_ok(conn, from);
        if let Some(m) = self.conns.get(&conn).filter(|_| ok) {
            if let Some(q) = match from {
                Side::Client => &m.up,
                Side::Upstream => &m.down,
            } {
                assert!(
                    q.is_empty(),
                    "splice_ok on {conn} {from:?} with {} bytes waiting in the core",
                    q.len()
                );
            }
        }
        if !ok && input.byte() & 3 != 0 {
            return;
        }
        if !ok {
            // The core counts the bytes it is told moved: its counters and
            // the access lines may now both be off from what moved.
            self.rt.bytes_told_wrong = true;
        }
        self.rt.handle(Event::Spliced { conn, from, n });
    }

    fn timeout(&mut self) {
        self.rt.handle_timeout();
        self.drain();
        self.rt.assert_not_due();
    }

    fn drain(&mut self) {
        while let Some(action) = self.rt.poll() {
            self.apply(action);
        }
        // Datagrams go out by an association's socket only while it is
        // open.
        for (via, bytes) in self.rt.datagrams() {
            assert!(bytes.len() <= MAX_DATAGRAM, "a datagram over the limit");
            match via {
                Via::Association { conn, .. } => assert!(
                    self.rt.associations.contains(&conn),
                    "a datagram by {conn}'s association, which has no sockets"
                ),
                other => panic!("a datagram by {other:?}, which the fuzzer never opened"),
            }
        }
    }

    /// Read-only calls must be harmless.
    fn read_only(&mut self, input: &mut Input<'_>) {
        let conn = self.pick_conn(input);
        let side = input.side();
        let _ = self.rt.send_buf(conn, side);
        let _ = self.rt.splice_ok(conn, side);
        let _ = self.rt.listener_service(ListenerId(input.byte() as u32));
        let _ = self.rt.stats();
    }

    /// A connection with a pending item in `list` (mostly), else any.
    fn pick_in(&mut self, list: &[ConnId], input: &mut Input<'_>) -> ConnId {
        let b = input.byte();
        if b < 224 && !list.is_empty() {
            list[b as usize % list.len()]
        } else {
            self.pick_conn(input)
        }
    }

    /// The SOCKS UDP association and BIND operations.
    fn socks_op(&mut self, input: &mut Input<'_>) {
        match input.byte() % 8 {
            0 => {
                let pick = input.byte();
                self.accept_with(input, Some(socks_more_script(pick)));
            }
            1 => {
                let list = self.assoc_asked.clone();
                let conn = self.pick_in(&list, input);
                self.assoc_asked.retain(|c| *c != conn);
                let b = input.byte();
                let event = if b & 3 == 3 {
                    Event::UdpBindFailed {
                        conn,
                        error: input.kind(),
                    }
                } else {
                    let ip = if b & 4 == 0 {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                    };
                    Event::UdpBound {
                        conn,
                        local: SocketAddr::new(ip, 50000 + input.u16() % 1000),
                    }
                };
                self.rt.handle(event);
            }
            2 => {
                let list = self.bind_asked.clone();
                let conn = self.pick_in(&list, input);
                self.bind_asked.retain(|c| *c != conn);
                let event = if input.byte() & 3 == 3 {
                    Event::BindFailed {
                        conn,
                        error: input.kind(),
                    }
                } else {
                    let local = SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        51000 + input.u16() % 1000,
                    );
                    Event::BindListening { conn, local }
                };
                self.rt.handle(event);
            }
            3 => {
                // From the client's side: its address (or another), a
                // header well-formed or not, then payload.
                let list = self.rt.associations.clone();
                let conn = self.pick_in(&list, input);
                let b = input.byte();
                let ip = match (b & 3, self.rt.conn(conn).map(|s| s.peer.ip())) {
                    (0..=2, Some(ip)) => ip,
                    (3, _) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                    _ => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                };
                let port = if b & 4 == 0 { 5000 } else { input.u16() };
                let mut bytes = udp_header(input.byte(), input);
                payload(&mut bytes, input);
                self.rt
                    .association_datagram(conn, false, SocketAddr::new(ip, port), &bytes);
            }
            4 => {
                // From a destination (one the client sent to, or not).
                let list = self.rt.associations.clone();
                let conn = self.pick_in(&list, input);
                let from = match input.byte() % 4 {
                    0 => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000),
                    // As a dual-stack socket names an IPv4 peer.
                    1 => SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 9000),
                    2 => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9000),
                    _ => self.addr(input),
                };
                let mut bytes = Vec::new();
                payload(&mut bytes, input);
                self.rt.association_datagram(conn, true, from, &bytes);
            }
            5 => {
                // A connection reaches a BIND listener: from the address
                // asked toward, or from elsewhere.
                let list: Vec<ConnId> = self.rt.bind_listeners.clone();
                let conn = self.pick_in(&list, input);
                let b = input.byte();
                let ip = match (b & 1, self.bind_toward.get(&conn)) {
                    (0, Some(t)) => t.ip(),
                    _ => IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (b >> 1) % 64)),
                };
                let peer = SocketAddr::new(ip, 30000 + input.u16() % 1000);
                self.rt.handle(Event::BindAccepted { conn, peer });
            }
            6 => {
                // The connection a BindTake handed over: established, or
                // gone.
                let b = input.byte();
                let (conn, attempt) = match self.taken.get(b as usize % self.taken.len().max(1)) {
                    Some(&t) if b < 240 => t,
                    _ => {
                        let conn = self.pick_conn(input);
                        (conn, self.pick_attempt(conn, input))
                    }
                };
                let event = if input.byte() & 3 == 3 {
                    Event::ConnectFailed {
                        conn,
                        attempt,
                        error: input.kind(),
                    }
                } else {
                    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 51000);
                    Event::Connected {
                        conn,
                        attempt,
                        local,
                    }
                };
                self.rt.handle(event);
            }
            _ => self.read_only(input),
        }
    }

    fn model(&mut self, conn: ConnId) -> &mut Model {
        // The runtime checked the connection is live.
        self.conns
            .get_mut(&conn)
            .expect("a model of every live connection")
    }

    /// What the fuzzer's own knowledge says of an action (the runtime has
    /// checked what any runtime can).
    fn apply(&mut self, action: Action) {
        let rules = self.setup.rules;
        match action {
            Action::Resolve { conn, host, port } => {
                assert!(
                    !(rules && host == "denied.example"),
                    "Resolve of a name the rules deny outright"
                );
                if self.model(conn).kind == Kind::Mapped {
                    assert_eq!((host.as_str(), port), ("dest.example", 9000), "Resolve");
                }
                assert!(
                    self.model(conn).kind != Kind::Transparent,
                    "Resolve of {host} for an intercepted connection, which goes to its \
                     original address"
                );
            }
            Action::Connect { conn, addr, .. } => {
                let replaced = self.rt.conn(conn).is_some_and(|s| s.replaced);
                assert!(!replaced, "Connect for {conn}, whose upstream is connected");
                if let Some(d) = self.model(conn).dest {
                    assert_eq!(addr, d, "Connect to the wrong destination");
                }
                assert!(
                    !(rules && addr.ip() == IpAddr::V4(DENIED_ADDR)),
                    "Connect to {addr}, which the rules deny"
                );
            }
            Action::ShutdownWrite { conn, side } => {
                if let Some(q) = self.model(conn).dir(side.other()) {
                    assert!(
                        q.is_empty(),
                        "ShutdownWrite on {conn} {side:?} with {} bytes not yet written",
                        q.len()
                    );
                }
            }
            Action::CloseUpstream { conn } => {
                let m = self.model(conn);
                assert!(m.kind != Kind::Mapped, "CloseUpstream on a mapped port");
                // A new upstream may follow: its bytes start afresh.
                m.reply_pos = 0;
                m.down = None;
                m.up = None;
            }
            Action::UdpAssociate { conn, .. } => self.assoc_asked.push(conn),
            Action::BindListen { conn, toward, .. } => {
                self.bind_toward.insert(conn, toward);
                self.bind_asked.push(conn);
            }
            Action::BindTake { conn, attempt } => {
                self.taken.push((conn, attempt));
                if self.taken.len() > 16 {
                    self.taken.remove(0);
                }
            }
            Action::Close { conn } => {
                self.assoc_asked.retain(|c| *c != conn);
                self.bind_asked.retain(|c| *c != conn);
                self.bind_toward.remove(&conn);
                if self.model(conn).kind != Kind::Http {
                    self.closes += 1;
                }
                self.conns.remove(&conn);
                self.order.retain(|c| *c != conn);
                self.dead.push(conn);
                if self.dead.len() > 64 {
                    self.dead.remove(0);
                }
            }
            // An HTTP proxy logs per request: not counted per connection.
            Action::Access(rec) if rec.service.as_ref() != "http" => self.accesses += 1,
            _ => {}
        }
    }

    fn check(&mut self) {
        assert_eq!(
            self.conns.len(),
            self.rt.len(),
            "the fuzzer models {} connections, the table holds {}",
            self.conns.len(),
            self.rt.len()
        );
        let conns = &self.conns;
        self.rt.check_shown(|conn, side, parts| {
            let Some(m) = conns.get(&conn) else {
                panic!("{conn} shows bytes and was never accepted");
            };
            let q = match side {
                Side::Client => &m.down,
                Side::Upstream => &m.up,
            };
            if let Some(q) = q {
                assert!(
                    same(q, parts),
                    "bytes waiting for {conn} {side:?} are not the bytes read"
                );
            }
        });
        assert_eq!(
            self.accesses,
            self.closes + self.refusals,
            "one access record per closed or refused connection (HTTP aside)"
        );
    }

    /// Ends the run: every peer goes away (or every deadline passes), and
    /// the table must be empty with no timer and no buffer left.
    pub(super) fn finish(&mut self, how: u8) {
        if how & 1 == 0 {
            let side = if how & 2 == 0 {
                Side::Client
            } else {
                Side::Upstream
            };
            for conn in self.order.clone() {
                let error = IoKind::Reset;
                self.rt.handle(Event::IoError { conn, side, error });
                self.drain();
                self.check();
            }
            assert_eq!(self.rt.len(), 0, "connections left after every peer reset");
        }
        // A deadline can lead to a state with a deadline of its own (a
        // failed connect to a protocol's reply, which drains or times out
        // in turn): pass every deadline, a few rounds deep. A SOCKS UDP
        // association lasts until `udp_idle_timeout` without a datagram.
        let s = &self.setup;
        let all =
            Duration::from_millis(s.connect_ms + s.idle_ms + s.grace_ms + s.handshake_ms + 1000)
                + self.rt.config().limits.udp_idle_timeout;
        for _ in 0..4 {
            self.rt.advance(all);
            self.timeout();
        }
        self.check();
        assert_eq!(
            self.rt.len(),
            0,
            "connections left after every deadline passed: {}",
            self.rt.dump()
        );
        self.rt.assert_empty();
    }
}
