//! The peers: the programs at the far end of each socket (clients, and the
//! servers the core connects to). A peer is a [`Behavior`] the scheduler
//! polls whenever something may have changed; it sees what it received
//! and asks to send, shut, stall, reset, sleep or open connections of its
//! own. [`Script`] plays a list of [`Op`]s; [`Echo`], [`Lines`] and
//! [`Sender`] are the usual servers.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::check::show;
use super::net::Server;

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

/// A server that sends `greeting`, then echoes; it shuts once the core has.
pub struct Echo {
    greeting: Vec<u8>,
    started: bool,
    echoed: usize,
    shut: bool,
}

pub fn echo(greeting: &[u8]) -> Box<dyn Behavior> {
    Box::new(Echo {
        greeting: greeting.to_vec(),
        started: false,
        echoed: 0,
        shut: false,
    })
}

impl Behavior for Echo {
    fn poll(&mut self, io: &mut Io) {
        if !self.started {
            self.started = true;
            io.send.extend_from_slice(&self.greeting);
        }
        if self.shut {
            return;
        }
        io.send.extend_from_slice(&io.received[self.echoed..]);
        self.echoed = io.received.len();
        if io.eof {
            self.shut = true;
            io.shut = true;
        }
    }

    fn done(&self) -> bool {
        self.shut
    }

    fn waiting(&self) -> String {
        "echo: end of stream from the core".into()
    }
}

/// A line answer: what to send back, and whether to quit (shut) after it.
pub type Answer = Box<dyn FnMut(&[u8]) -> (Vec<u8>, bool)>;
/// A line answer that may also act on its own (open connections).
pub type IoAnswer = Box<dyn FnMut(&[u8], &mut Io) -> (Vec<u8>, bool)>;

/// A line-oriented server: a greeting, then one answer per line.
pub struct Lines {
    greeting: Vec<u8>,
    started: bool,
    pos: usize,
    answer: IoAnswer,
    shut: bool,
}

pub fn lines(greeting: &[u8], mut answer: Answer) -> Box<dyn Behavior> {
    lines_with(greeting, Box::new(move |line, _| answer(line)))
}

pub fn lines_with(greeting: &[u8], answer: IoAnswer) -> Box<dyn Behavior> {
    Box::new(Lines {
        greeting: greeting.to_vec(),
        started: false,
        pos: 0,
        answer,
        shut: false,
    })
}

impl Behavior for Lines {
    fn poll(&mut self, io: &mut Io) {
        if !self.started {
            self.started = true;
            io.send.extend_from_slice(&self.greeting);
        }
        let received = io.received;
        while !self.shut {
            let Some(i) = find(&received[self.pos..], b"\n") else {
                break;
            };
            let line = &received[self.pos..self.pos + i + 1];
            self.pos += i + 1;
            let (reply, quit) = (self.answer)(line, io);
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
        format!("line server at byte {}", self.pos)
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
