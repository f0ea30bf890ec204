//! The peers: the programs at the far end of each socket (clients, and the
//! servers the core connects to), each with its socket ([`Peer`]). A
//! peer's program is a [`Behavior`] the scheduler polls whenever something
//! it can see changed; it sees what it received and asks to send, shut,
//! stall, reset, sleep or open connections of its own. [`Script`] plays a
//! list of [`Op`]s; [`Replies`] (of which [`echo`] and [`lines`]) and
//! [`Sender`] are the usual servers.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::check::show;
use super::net::{Pipe, Server};

pub type PeerId = usize;

/// A program at the far end of a socket, and that socket.
pub struct Peer {
    pub label: String,
    /// A client's own address; where a server was connected to.
    pub addr: SocketAddr,
    /// A server: the local address of the core's socket.
    pub local: Option<SocketAddr>,
    /// The connection (index in [`super::Sim::conns`]) it belongs to.
    pub conn: usize,
    pub(super) behavior: Box<dyn Behavior>,
    /// Every byte its program means to send, when known in advance.
    pub script_bytes: Vec<u8>,
    /// Its program runs (accepted, refused, or connected to).
    pub started: bool,
    /// The core's end of the socket exists.
    pub open: bool,
    /// It does not read (a slow or stalled client).
    pub stalled: bool,
    /// It reset the connection.
    pub reset: bool,
    /// Written by its program, not yet into the socket.
    pub unsent: VecDeque<u8>,
    pub(super) shut_asked: bool,
    /// Peer → core.
    pub inbound: Pipe,
    /// Core → peer.
    pub outbound: Pipe,
    pub received: Vec<u8>,
    pub received_eof: bool,
    /// Bytes it wrote into the socket.
    pub sent: usize,
    pub(super) wake: Option<Duration>,
    /// The core was told about the EOF on `inbound`.
    pub(super) eof_reported: bool,
    /// The core was told a read would block, and nothing arrived since.
    pub(super) blocked_reported: bool,
    /// What it saw when it last acted.
    pub(super) seen: Option<View>,
}

/// What a peer's program sees of its socket: bytes received, the end of
/// stream, the socket open, everything it sent written.
pub(super) type View = (usize, bool, bool, bool);

impl Peer {
    pub fn done(&self) -> bool {
        self.behavior.done()
    }

    /// How many of its bytes could go into the socket now.
    pub(super) fn can_write(&self) -> usize {
        if self.started && self.open && !self.inbound.eof && !self.reset {
            self.unsent.len().min(self.inbound.room())
        } else {
            0
        }
    }

    /// `k` of its bytes go into the socket.
    pub(super) fn write(&mut self, k: usize) {
        self.inbound.buf.extend(self.unsent.drain(..k));
        self.sent += k;
        self.blocked_reported = false;
        if self.unsent.is_empty() && self.shut_asked {
            self.inbound.eof = true;
        }
    }

    /// Something waits for it to read: bytes, or the end of stream.
    pub(super) fn can_read(&self) -> bool {
        let out = &self.outbound;
        self.started && !self.stalled && (!out.buf.is_empty() || (out.eof && !self.received_eof))
    }

    /// It reads `k` bytes, or, when none are left, the end of stream.
    pub(super) fn read(&mut self, k: usize) {
        if self.outbound.buf.is_empty() {
            self.received_eof = true;
        } else {
            self.received.extend(self.outbound.buf.drain(..k));
        }
    }

    pub(super) fn view(&self) -> View {
        let (received, eof) = (self.received.len(), self.received_eof);
        (received, eof, self.open, self.unsent.is_empty())
    }

    /// The core closed its end: the peer reads what was sent, then EOF.
    pub(super) fn gone(&mut self) {
        if self.open || self.started {
            self.outbound.eof = true;
        }
        self.open = false;
    }
}

/// What a behaviour sees of its socket, and what it asks for.
pub struct Io<'a> {
    /// Simulated time since the start.
    pub now: Duration,
    /// Every byte the peer received so far.
    pub received: &'a [u8],
    /// The end of stream arrived (the core shut its write half toward the
    /// peer, or closed the socket).
    pub eof: bool,
    /// The core's end of the socket exists.
    pub open: bool,
    /// Bytes it asked to send that are not in the socket yet.
    pub unsent: usize,
    pub send: Vec<u8>,
    /// Shut the write half once all it sent is in the socket.
    pub shut: bool,
    /// Stop (true) or resume (false) reading.
    pub stall: Option<bool>,
    /// Reset the connection: the core's next operation on it fails.
    pub reset: bool,
    /// Poll again then.
    pub wake: Option<Duration>,
    /// Client connections to open.
    pub dials: Vec<Dial>,
}

pub trait Behavior {
    /// Something may have changed: act on it.
    fn poll(&mut self, io: &mut Io);
    /// Nothing more to do.
    fn done(&self) -> bool;
    /// What it waits for (for failure messages).
    fn waiting(&self) -> String {
        String::new()
    }
    /// Every byte it means to send, when that is known in advance.
    fn planned(&self) -> Vec<u8> {
        Vec::new()
    }
    /// It waits on something besides its own socket and the clock (and
    /// is polled at every step, not only when its socket changed).
    fn watches_others(&self) -> bool {
        false
    }
}

/// A client connection to open: to `to`, `at` after now, from `from` (or
/// an address of its own), playing `behavior`; with `server`, the upstream
/// server the core reaches for it (whatever the address), answering
/// `delay` after the connect.
pub struct Dial {
    pub to: SocketAddr,
    pub at: Duration,
    pub from: Option<IpAddr>,
    pub label: String,
    pub behavior: Box<dyn Behavior>,
    pub server: Option<Server>,
    pub delay: Duration,
}

impl Dial {
    pub fn new(to: SocketAddr, behavior: Box<dyn Behavior>) -> Self {
        Dial {
            to,
            at: Duration::ZERO,
            from: None,
            label: "client".into(),
            behavior,
            server: None,
            delay: Duration::ZERO,
        }
    }

    pub fn to(mut self, to: SocketAddr) -> Self {
        self.to = to;
        self
    }

    pub fn at(mut self, at: Duration) -> Self {
        self.at = at;
        self
    }

    pub fn from(mut self, ip: IpAddr) -> Self {
        self.from = Some(ip);
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn server(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

pub type Check = Box<dyn FnMut(&Io) -> bool>;
pub type Act = Box<dyn FnMut(&mut Io)>;

/// One step of a script.
pub enum Op {
    /// Write these bytes; the next step waits until all are in the socket.
    Send(Vec<u8>),
    /// Do nothing for a while.
    Pause(Duration),
    /// Until the bytes received since the last match contain these.
    Await(Vec<u8>),
    /// Until this many bytes have been received in all.
    AwaitLen(usize),
    /// Until the end of stream arrived.
    AwaitEof,
    /// Shut the write half.
    Shut,
    /// Stop (true) or resume (false) reading.
    Stall(bool),
    /// Reset the connection.
    Reset,
    Do(Act),
    Until(&'static str, Check),
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Send(b) => write!(f, "Send({} bytes)", b.len()),
            Op::Pause(d) => write!(f, "Pause({d:?})"),
            Op::Await(b) => write!(f, "Await(\"{}\")", show(b)),
            Op::AwaitLen(n) => write!(f, "AwaitLen({n})"),
            Op::AwaitEof => write!(f, "AwaitEof"),
            Op::Shut => write!(f, "Shut"),
            Op::Stall(b) => write!(f, "Stall({b})"),
            Op::Reset => write!(f, "Reset"),
            Op::Do(_) => write!(f, "Do(..)"),
            Op::Until(what, _) => write!(f, "Until({what})"),
        }
    }
}

/// Plays its ops in order. Once the socket is gone, a `Send` ends the
/// script (nothing more goes anywhere).
pub struct Script {
    ops: VecDeque<Op>,
    /// Where the next `Await` starts looking.
    cursor: usize,
    until: Option<Duration>,
    /// The `Send` in front was handed over; it ends once all is written.
    sending: bool,
}

pub fn script(ops: Vec<Op>) -> Box<dyn Behavior> {
    Box::new(Script {
        ops: ops.into(),
        cursor: 0,
        until: None,
        sending: false,
    })
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Behavior for Script {
    fn poll(&mut self, io: &mut Io) {
        while let Some(op) = self.ops.front_mut() {
            match op {
                Op::Send(b) if b.is_empty() => {}
                Op::Send(b) => {
                    if !io.open {
                        self.ops.clear();
                        return;
                    }
                    if !self.sending {
                        self.sending = true;
                        io.send.extend_from_slice(b);
                        return;
                    }
                    if io.unsent > 0 {
                        return;
                    }
                    self.sending = false;
                }
                Op::Pause(d) => {
                    let at = *self.until.get_or_insert(io.now + *d);
                    if io.now < at {
                        io.wake = Some(at);
                        return;
                    }
                    self.until = None;
                }
                Op::Await(pat) => match find(&io.received[self.cursor..], pat) {
                    Some(i) => self.cursor += i + pat.len(),
                    None => return,
                },
                Op::AwaitLen(n) => {
                    if io.received.len() < *n {
                        return;
                    }
                }
                Op::AwaitEof => {
                    if !io.eof {
                        return;
                    }
                }
                Op::Shut => io.shut = true,
                Op::Stall(b) => io.stall = Some(*b),
                Op::Reset => io.reset = true,
                Op::Do(f) => f(io),
                Op::Until(_, f) => {
                    if !f(io) {
                        return;
                    }
                }
            }
            self.ops.pop_front();
        }
    }

    fn done(&self) -> bool {
        self.ops.is_empty()
    }

    fn waiting(&self) -> String {
        format!("{:?} ({} ops left)", self.ops.front(), self.ops.len())
    }

    fn watches_others(&self) -> bool {
        matches!(self.ops.front(), Some(Op::Until(..)))
    }

    fn planned(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for op in &self.ops {
            if let Op::Send(v) = op {
                all.extend_from_slice(v);
            }
        }
        all
    }
}

/// A line answer: what to send back, and whether to quit (shut) after it.
pub type Answer = Box<dyn FnMut(&[u8]) -> (Vec<u8>, bool)>;
/// An answer that may also act on its own (open connections).
pub type IoAnswer = Box<dyn FnMut(&[u8], &mut Io) -> (Vec<u8>, bool)>;
/// The length of the complete message at the front of the bytes, if one is.
pub type Frame = fn(&[u8]) -> Option<usize>;

/// A server that answers its client: a greeting, then, for each complete
/// message (as its [`Frame`] finds them), what its answer says; it shuts
/// when the answer says to quit, or once the core has shut.
pub struct Replies {
    greeting: Vec<u8>,
    started: bool,
    pos: usize,
    frame: Frame,
    answer: IoAnswer,
    shut: bool,
}

pub fn replies(greeting: &[u8], frame: Frame, answer: IoAnswer) -> Box<dyn Behavior> {
    Box::new(Replies {
        greeting: greeting.to_vec(),
        started: false,
        pos: 0,
        frame,
        answer,
        shut: false,
    })
}

/// Sends `greeting`, then echoes.
pub fn echo(greeting: &[u8]) -> Box<dyn Behavior> {
    let all: Frame = |b| (!b.is_empty()).then_some(b.len());
    replies(greeting, all, Box::new(|b, _| (b.to_vec(), false)))
}

/// A line-oriented server: a greeting, then one answer per line.
pub fn lines(greeting: &[u8], mut answer: Answer) -> Box<dyn Behavior> {
    lines_with(greeting, Box::new(move |line, _| answer(line)))
}

pub fn lines_with(greeting: &[u8], answer: IoAnswer) -> Box<dyn Behavior> {
    replies(greeting, |b| find(b, b"\n").map(|i| i + 1), answer)
}

impl Behavior for Replies {
    fn poll(&mut self, io: &mut Io) {
        if !self.started {
            self.started = true;
            io.send.extend_from_slice(&self.greeting);
        }
        let received = io.received;
        while !self.shut {
            let Some(n) = (self.frame)(&received[self.pos..]) else {
                break;
            };
            let message = &received[self.pos..self.pos + n];
            self.pos += n;
            let (reply, quit) = (self.answer)(message, io);
            io.send.extend_from_slice(&reply);
            if quit {
                self.shut = true;
                io.shut = true;
            }
        }
        if io.eof && !self.shut {
            self.shut = true;
            io.shut = true;
        }
    }

    fn done(&self) -> bool {
        self.shut
    }

    fn waiting(&self) -> String {
        format!("a server at byte {}: end of stream from the core", self.pos)
    }
}

/// Sends `data` at once and shuts.
pub struct Sender {
    pub data: Vec<u8>,
    pub sent: bool,
}

pub fn sender(data: Vec<u8>) -> Box<dyn Behavior> {
    Box::new(Sender { data, sent: false })
}

impl Behavior for Sender {
    fn poll(&mut self, io: &mut Io) {
        if !self.sent {
            self.sent = true;
            io.send.extend_from_slice(&self.data);
            io.shut = true;
        }
    }

    fn done(&self) -> bool {
        self.sent
    }
}
