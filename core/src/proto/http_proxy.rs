//! The HTTP/1.1 forward proxy's exchanges: one client connection, a
//! sequence of requests, each forwarded over an upstream connection that is
//! kept while the next request goes to the same host and port.
//!
//! The message layer (`crate::http`) parses and encodes heads and tracks body
//! framing; this module decides what happens to each exchange. It works on
//! the session's two directions: a parsed head is taken out of the buffer and
//! its rewritten form queued as the direction's prefix; body bytes are then
//! cleared for forwarding in place (`Dir::fwd`), so bodies are streamed with
//! no copy beyond the relay's own, and bytes past the end of a message never
//! leave before their own head is parsed.
//!
//! # States and exits
//!
//! ```text
//! request side:   Head ──head parsed──► Body ──body done──► Sent ──response done──► Head
//!                   │                    (no body: straight to Sent)
//!                   ├─Proxy-Authorization (auth on)──► Checking ─ok─► on as parsed
//!                   │                                      └─wrong (throttled)─► 407 (429), close
//!                   ├─CONNECT allowed──► Tunnel (plain relay once connected)
//!                   └─refused (400, 403, 407, 414, 431, 501)──► close after the reply
//! response side:  Idle ──request sent──► Head ──1xx──► Head
//!                                          ├─101 to an upgrade──► Tunnel
//!                                          ├─final head──► Body ──done──► Idle
//!                                          └─bad framing / EOF──► 502, close
//! ```
//!
//! One request is in flight at a time: a pipelined request waits in the
//! buffer until the response before it is complete, so responses go back in
//! order without a queue.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Cause, Failure, Next, Outcome, Scope, Target};
use crate::auth::Verdict;
use crate::http as request;
use crate::http::{
    encode_request_head, encode_response_head, error_reply, proxy_reply, refusal_reply,
    refusal_reply_after, BodyDecoder, Direction, Forward, Framing, HeadParser, Limits, Method,
    Parsed, Persist, Version,
};
use crate::session::Dir;

#[derive(Debug)]
enum Req {
    Head,
    Body(BodyDecoder),
    Sent,
    /// CONNECT or upgrade: waiting to become a byte tunnel.
    Tunnel,
    /// A parsed head (of this many bytes, taken off the buffer) waiting
    /// for the verdict on its Proxy-Authorization; the client's next bytes
    /// stay in the buffer meanwhile.
    Checking(Box<(request::Request, usize)>),
}

#[derive(Debug)]
enum Resp {
    Idle,
    Head,
    Body(BodyDecoder),
}

/// One finished request, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub method: String,
    pub target: String,
    pub status: u16,
    pub up: u64,
    pub down: u64,
    pub duration: Duration,
    /// Why it was refused or could not connect, if it was.
    pub cause: Option<Cause>,
    /// It was sent toward an upstream (new or kept), so the rules decided
    /// it.
    pub routed: bool,
    /// Where this exchange's bytes end in each direction's count of bytes
    /// written ([`Dir::bytes`]): its line waits until both are written, so
    /// that `up=`/`down=` count what reached the sockets, as the metrics do.
    pub up_end: u64,
    pub down_end: u64,
}

#[derive(Debug)]
struct Current {
    method: Method,
    target: String,
    started: Instant,
    /// The client may keep its connection after this exchange.
    keep_alive: bool,
    version: Version,
    status: u16,
    /// [`queued`] of each direction when the exchange started.
    up0: u64,
    down0: u64,
    upgrade: bool,
    /// The request's Accept names text/html: a refusal is a page.
    html: bool,
    cause: Option<Cause>,
    /// See [`Exchange::routed`].
    routed: bool,
}

#[derive(Debug)]
pub struct HttpProxy {
    req: Req,
    resp: Resp,
    parser: HeadParser,
    /// The response head's scan so far: a head arriving in many small
    /// reads is scanned once in all, not again from its start each time.
    resp_parser: HeadParser,
    limits: Limits,
    cur: Option<Current>,
    /// Where the upstream connection goes, while it is usable.
    upstream: Option<(String, u16)>,
    pub user: Option<String>,
    /// `user` came with the connection (a TLS client certificate): no
    /// login is asked, and a Proxy-Authorization header changes nothing.
    pub proven: bool,
    /// When the first byte of a request head still incomplete arrived (the
    /// head must be complete within handshake_timeout).
    pub head_since: Option<Instant>,
    /// Exchanges are recorded for the access log (`[log] access` is not
    /// "off"); without it no request makes a target text or a record.
    pub logged: bool,
    /// Lines of finished exchanges whose bytes are not all written yet,
    /// oldest first (see [`Exchange::down_end`]); the session owns them.
    pub held: Vec<crate::session::Held>,
    /// The upstream connection goes to an http parent proxy (`via`):
    /// request heads go to it in absolute form, with this
    /// `Proxy-Authorization` line (CRLF-ended) when it has credentials.
    pub via_parent: Option<Option<String>>,
    /// The local address the client reached: the PAC file names the
    /// proxies there.
    pub here: Option<std::net::IpAddr>,
}

impl Default for HttpProxy {
    fn default() -> Self {
        HttpProxy {
            req: Req::Head,
            resp: Resp::Idle,
            parser: HeadParser::new(),
            resp_parser: HeadParser::new(),
            limits: Limits::default(),
            cur: None,
            upstream: None,
            user: None,
            proven: false,
            head_since: None,
            logged: true,
            held: Vec::new(),
            via_parent: None,
            here: None,
        }
    }
}

/// Bytes a direction has written or has queued to write.
fn queued(d: &Dir) -> u64 {
    d.bytes + (d.prefix.len() - d.prefix_pos.min(d.prefix.len())) as u64 + fwd(d) as u64
}

fn data(d: &Dir) -> &[u8] {
    d.buf.as_ref().map_or(&[][..], |b| b.data())
}

fn fwd(d: &Dir) -> usize {
    d.fwd.unwrap_or(0)
}

/// Drops the buffer's bytes after those cleared for the sink (an origin's
/// bytes that are no response), keeping the cleared ones in place.
fn drop_after_fwd(d: &mut Dir) {
    let f = fwd(d);
    if let Some(b) = d.buf.as_mut() {
        b.truncate(f);
    }
}

/// Takes `n` bytes (a parsed head) off the front of the buffer.
fn take(d: &mut Dir, n: usize) {
    if let Some(b) = d.buf.as_mut() {
        b.consume(n);
    }
}

impl HttpProxy {
    /// Whether a request is outstanding (the client connection must not be
    /// closed just because the client finished sending).
    /// The request being answered is a CONNECT (or its tunnel).
    pub fn tunnelling(&self) -> bool {
        matches!(self.req, Req::Tunnel)
    }

    pub fn busy(&self) -> bool {
        self.cur.is_some()
    }

    /// New client bytes (or a response just finished): parse and forward as
    /// far as possible. `up` is client→upstream, `down` upstream→client.
    pub fn client(
        &mut self,
        up: &mut Dir,
        down: &mut Dir,
        scope: &mut Scope,
        now: Instant,
        todo: &mut Vec<Next>,
    ) {
        loop {
            match &mut self.req {
                Req::Head => {
                    if self.cur.is_some() {
                        // The previous response is not done: responses go
                        // back in order.
                        return;
                    }
                    if !self.parse_request(up, down, scope, now, todo) {
                        return;
                    }
                }
                Req::Body(dec) => {
                    let input = &data(up)[fwd(up)..];
                    if input.is_empty() {
                        return;
                    }
                    match dec.advance(input) {
                        Ok(p) => {
                            up.fwd = Some(fwd(up) + p.consumed);
                            if p.done {
                                self.req = Req::Sent;
                            }
                            if p.consumed == 0 {
                                return;
                            }
                        }
                        Err(e) => {
                            // The request body is broken: nothing sane can
                            // follow on either connection.
                            self.refuse(down, error_reply(&e), e.status(), todo);
                            return;
                        }
                    }
                }
                Req::Sent | Req::Tunnel | Req::Checking(_) => return,
            }
        }
    }

    /// Says `reply` to the client and closes; the exchange (if any) ends
    /// with `status`.
    fn refuse(&mut self, down: &mut Dir, reply: Vec<u8>, status: u16, todo: &mut Vec<Next>) {
        down.say(&reply);
        if let Some(c) = self.cur.as_mut() {
            c.status = status;
        }
        todo.push(Next::Responded(status));
        todo.push(Next::Close(Outcome::Http(status)));
    }

    /// Refuses the request in flight for `cause`, answered `status` (see
    /// [`refusal_reply`]); `destination` is where it asked to go.
    fn refuse_for(
        &mut self,
        down: &mut Dir,
        status: u16,
        cause: Cause,
        destination: &str,
        todo: &mut Vec<Next>,
    ) {
        let (html, head_only) = self
            .cur
            .as_ref()
            .map_or((false, false), |c| (c.html, c.method == Method::Head));
        let reply = without_body(refusal_reply(status, cause, destination, html), head_only);
        if let Some(c) = self.cur.as_mut() {
            c.cause = Some(cause);
        }
        self.refuse(down, reply, status, todo);
    }

    /// Returns true if a request was taken and the loop may go on.
    fn parse_request(
        &mut self,
        up: &mut Dir,
        down: &mut Dir,
        scope: &mut Scope,
        now: Instant,
        todo: &mut Vec<Next>,
    ) -> bool {
        // The previous request's body must be out first: the next head is
        // queued ahead of the buffer, and must not overtake it.
        if fwd(up) > 0 || fwd(down) > 0 {
            // Nor may its answer (a refusal said at once) overtake the
            // previous response's body.
            return false;
        }
        let input = data(up);
        if input.is_empty() {
            return false;
        }
        let parsed = self.parser.parse_request(input, &self.limits);
        if !matches!(parsed, Ok(Parsed::Partial)) {
            self.head_since = None;
        }
        let (req, len) = match parsed {
            Ok(Parsed::Partial) => {
                self.head_since.get_or_insert(now);
                if !up.has_space() {
                    // The head does not fit in the buffer.
                    self.start(
                        up,
                        down,
                        Method::Other("-".into()),
                        "-".into(),
                        now,
                        true,
                        Version::Http11,
                    );
                    self.refuse(down, proxy_reply(431, &[], true), 431, todo);
                }
                return false;
            }
            Ok(Parsed::Complete { head, len }) => (head, len),
            Err(e) => {
                self.start(
                    up,
                    down,
                    Method::Other("-".into()),
                    "-".into(),
                    now,
                    false,
                    Version::Http11,
                );
                self.refuse(down, error_reply(&e), e.status(), todo);
                return false;
            }
        };
        take(up, len);
        let target_text = match &req.target {
            _ if !self.logged => String::new(),
            request::Target::Absolute { authority, path } => authority.url(path),
            request::Target::Authority(a) => a.to_string(),
            request::Target::Asterisk => "*".into(),
            request::Target::Origin(path) => path.clone(),
        };
        self.start(
            up,
            down,
            req.method.clone(),
            target_text,
            now,
            req.keep_alive(),
            req.version,
        );
        if let Some(c) = self.cur.as_mut() {
            c.upgrade = req.connection.upgrade && req.upgrade.is_some();
            c.html = req.accepts_html();
        }
        if let request::Target::Origin(path) = &req.target {
            // A request to the proxy itself: its PAC file, which browsers
            // fetch without proxy credentials (it says only where the
            // proxies are), or a refusal.
            let keep = req.keep_alive();
            let head_only = req.method == Method::Head;
            let pac = match (scope.config, self.here) {
                (Some(config), Some(here)) if crate::pac::is_pac_path(path) => {
                    crate::pac::script(config, here)
                }
                _ => None,
            };
            let Some(pac) = pac else {
                let e = crate::http::HttpError::new(
                    crate::http::ErrorKind::OriginForm,
                    Direction::Request,
                );
                self.refuse(down, without_body(error_reply(&e), head_only), 400, todo);
                return false;
            };
            down.say(&without_body(pac_reply(&pac, keep), head_only));
            if let Some(c) = self.cur.as_mut() {
                c.status = 200;
            }
            todo.push(Next::Responded(200));
            self.finish_exchange(up, down, now, todo, !keep);
            return keep;
        }
        // Credentials first: a client that is not allowed learns nothing else.
        if scope.service.auth && !self.proven {
            if let request::ProxyAuth::Basic { user, password } = &req.proxy_auth {
                // The session checks the login (argon2 may run off the
                // loop); nothing more is parsed until the verdict.
                todo.push(Next::Authenticate {
                    user: user.as_bytes().to_vec(),
                    password: crate::auth::Secret(password.as_bytes().to_vec()),
                });
                self.req = Req::Checking(Box::new((req, len)));
                return false;
            }
            let dest = authority_of(&req.target);
            todo.push(Next::Refused(Cause::AuthRequired));
            self.refuse_for(down, 407, Cause::AuthRequired, &dest, todo);
            return false;
        }
        self.forward(req, len, up, down, scope, now, todo)
    }

    /// The verdict on the login of the request waiting in
    /// [`Req::Checking`]: refused (429 when throttled, else 407), or
    /// forwarded; then the client's bytes buffered meanwhile are parsed.
    pub fn checked(
        &mut self,
        verdict: Verdict,
        up: &mut Dir,
        down: &mut Dir,
        scope: &mut Scope,
        now: Instant,
        todo: &mut Vec<Next>,
    ) {
        if !matches!(self.req, Req::Checking(_)) {
            return;
        }
        let Req::Checking(waiting) = std::mem::replace(&mut self.req, Req::Head) else {
            return;
        };
        let (req, len) = *waiting;
        match verdict {
            Verdict::Ok => {
                if let request::ProxyAuth::Basic { user, .. } = &req.proxy_auth {
                    self.user = Some(user.clone());
                }
                if self.forward(req, len, up, down, scope, now, todo) {
                    self.client(up, down, scope, now, todo);
                }
            }
            Verdict::Throttled(secs) => {
                let dest = authority_of(&req.target);
                todo.push(Next::Refused(Cause::Throttled));
                let (html, head_only) = self
                    .cur
                    .as_ref()
                    .map_or((false, false), |c| (c.html, c.method == Method::Head));
                let reply = without_body(
                    refusal_reply_after(429, Cause::Throttled, &dest, html, Some(secs)),
                    head_only,
                );
                if let Some(c) = self.cur.as_mut() {
                    c.cause = Some(Cause::Throttled);
                }
                self.refuse(down, reply, 429, todo);
            }
            _ => {
                let dest = authority_of(&req.target);
                todo.push(Next::Refused(Cause::AuthRequired));
                self.refuse_for(down, 407, Cause::AuthRequired, &dest, todo);
            }
        }
    }

    /// A request allowed to go on (its head taken, `len` bytes): answered
    /// here, tunnelled or forwarded. Returns true if the loop may go on.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        req: request::Request,
        len: usize,
        up: &mut Dir,
        down: &mut Dir,
        scope: &mut Scope,
        now: Instant,
        todo: &mut Vec<Next>,
    ) -> bool {
        let head_only = req.method == Method::Head;
        // A request that names Portico in Via has come round in a loop.
        let looped = req.headers.get_all("via").any(names_portico);
        if looped {
            self.refuse(down, reply_for(508, head_only), 508, todo);
            return false;
        }
        let mut head = Vec::with_capacity(len + 64);
        match (&req.target, encode_request_head(&req, &mut head)) {
            (request::Target::Authority(a), _) if req.method == Method::Connect => {
                if !scope.service.connect_ports.contains(&a.port) {
                    todo.push(Next::Refused(Cause::PortDenied));
                    self.refuse_for(down, 403, Cause::PortDenied, &a.to_string(), todo);
                    return false;
                }
                self.req = Req::Tunnel;
                self.upstream = None;
                self.via_parent = None;
                if let Some(c) = self.cur.as_mut() {
                    c.routed = true;
                }
                todo.push(Next::Connect {
                    target: target_of(&a.host, a.port),
                    user: self.user.clone(),
                });
                false
            }
            (request::Target::Origin(_), _) => {
                // Answered in parse_request; never forwarded.
                self.refuse(down, proxy_reply(400, &[], true), 400, todo);
                false
            }
            (_, Forward::AnswerLocally) => {
                // OPTIONS * and TRACE/OPTIONS with Max-Forwards: 0.
                let keep = req.keep_alive();
                let reply = if req.method == Method::Trace {
                    trace_reply(&data_before(&req, len), keep)
                } else {
                    local_options(keep)
                };
                down.say(&reply);
                if let Some(c) = self.cur.as_mut() {
                    c.status = 200;
                }
                todo.push(Next::Responded(200));
                self.finish_exchange(up, down, now, todo, !keep);
                true
            }
            (request::Target::Absolute { authority, .. }, Forward::Upstream) => {
                let same = self
                    .upstream
                    .as_ref()
                    .is_some_and(|(h, p)| *h == authority.host && *p == authority.port);
                // Kept to an http parent: its absolute form. (A new
                // upstream's head the session shapes once it knows the way.)
                let head = match (&self.via_parent, same) {
                    (Some(auth), true) => {
                        crate::proto::upstream::absolute_head(&head, auth.as_deref())
                            .unwrap_or(head)
                    }
                    _ => head,
                };
                up.say_owned(head);
                self.req = match req.framing {
                    Framing::NoBody | Framing::Length(0) => Req::Sent,
                    f => Req::Body(BodyDecoder::new(f, Direction::Request, &self.limits)),
                };
                self.resp = Resp::Head;
                self.resp_parser.reset();
                if let Some(c) = self.cur.as_mut() {
                    c.routed = true;
                }
                if !same {
                    self.via_parent = None;
                    self.upstream = Some((authority.host.clone(), authority.port));
                    todo.push(Next::Connect {
                        target: target_of(&authority.host, authority.port),
                        user: self.user.clone(),
                    });
                }
                true
            }
            _ => {
                // The parser only lets absolute-form through besides the
                // forms handled above.
                self.refuse(down, proxy_reply(400, &[], true), 400, todo);
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        up: &Dir,
        down: &Dir,
        method: Method,
        target: String,
        now: Instant,
        keep: bool,
        v: Version,
    ) {
        self.cur = Some(Current {
            method,
            target,
            started: now,
            keep_alive: keep,
            version: v,
            status: 0,
            up0: queued(up),
            down0: queued(down),
            upgrade: false,
            html: false,
            cause: None,
            routed: false,
        });
    }

    /// Upstream bytes arrived (or the upstream reached EOF, `eof`).
    pub fn upstream(
        &mut self,
        up: &mut Dir,
        down: &mut Dir,
        eof: bool,
        now: Instant,
        todo: &mut Vec<Next>,
    ) {
        loop {
            match &mut self.resp {
                Resp::Idle => {
                    // Nothing was asked: bytes here are not a response.
                    // They follow what is cleared for the client (the end
                    // of the last response, maybe not all written yet).
                    let extra = data(down).len() - fwd(down);
                    if extra > 0 || eof {
                        drop_after_fwd(down);
                        self.upstream = None;
                        todo.push(Next::DropUpstream);
                    }
                    return;
                }
                Resp::Head => {
                    let Some(cur) = self.cur.as_ref() else {
                        return;
                    };
                    if fwd(down) > 0 {
                        // The previous response's body goes out first (see
                        // parse_request); the table calls again once it has.
                        return;
                    }
                    let input = &data(down)[fwd(down)..];
                    let parsed = if input.is_empty() {
                        Ok(Parsed::Partial)
                    } else {
                        self.resp_parser
                            .parse_response(input, &cur.method, &self.limits)
                    };
                    match parsed {
                        Ok(Parsed::Partial) => {
                            if eof || !down.has_space() {
                                self.bad_gateway(down, todo);
                            }
                            return;
                        }
                        Err(_) => {
                            self.bad_gateway(down, todo);
                            return;
                        }
                        Ok(Parsed::Complete { head, len }) => {
                            take(down, len);
                            let upgrade = cur.upgrade;
                            if head.status == 101 && !upgrade {
                                self.bad_gateway(down, todo);
                                return;
                            }
                            if head.status == 407 && matches!(self.via_parent, Some(Some(_))) {
                                // The parent refused the credentials Portico
                                // holds for it: not the client's to answer.
                                let target = cur.target.clone();
                                self.upstream = None;
                                todo.push(Next::DropUpstream);
                                self.refuse_for(down, 502, Cause::ParentFailed, &target, todo);
                                return;
                            }
                            let keep =
                                cur.keep_alive && !matches!(head.framing, Framing::UntilClose);
                            let persist = if head.is_interim() || head.status == 101 {
                                Persist::Default
                            } else if !keep {
                                Persist::Close
                            } else if cur.version == Version::Http10 {
                                Persist::KeepAlive
                            } else {
                                Persist::Default
                            };
                            let mut out = Vec::with_capacity(len + 32);
                            encode_response_head(&head, persist, &mut out);
                            down.say_owned(out);
                            todo.push(Next::Responded(head.status));
                            if head.is_interim() {
                                continue;
                            }
                            let reusable = head.keep_alive();
                            if let Some(c) = self.cur.as_mut() {
                                c.status = head.status;
                                c.keep_alive = keep;
                            }
                            if head.status == 101 {
                                self.req = Req::Tunnel;
                                todo.push(Next::Relay);
                                return;
                            }
                            if !reusable {
                                // Remembered so the next request reconnects.
                                self.upstream = None;
                            }
                            match head.framing {
                                Framing::NoBody | Framing::Length(0) => {
                                    self.response_done(up, down, now, todo);
                                }
                                f => {
                                    self.resp = Resp::Body(BodyDecoder::new(
                                        f,
                                        Direction::Response,
                                        &self.limits,
                                    ))
                                }
                            }
                        }
                    }
                }
                Resp::Body(dec) => {
                    let input = &data(down)[fwd(down)..];
                    if input.is_empty() {
                        if eof {
                            match dec.finish() {
                                // A close-delimited body ends here.
                                Ok(()) => self.response_done(up, down, now, todo),
                                // Truncated: the client cannot be told.
                                Err(_) => todo.push(Next::Close(Outcome::Http(502))),
                            }
                        }
                        return;
                    }
                    match dec.advance(input) {
                        Ok(p) => {
                            down.fwd = Some(fwd(down) + p.consumed);
                            if p.done {
                                self.response_done(up, down, now, todo);
                            } else if p.consumed == 0 {
                                return;
                            }
                        }
                        Err(_) => {
                            // Part of the response may be out already: all
                            // that is left is to cut both connections.
                            todo.push(Next::Close(Outcome::Http(502)));
                            return;
                        }
                    }
                }
            }
        }
    }

    fn bad_gateway(&mut self, down: &mut Dir, todo: &mut Vec<Next>) {
        self.upstream = None;
        todo.push(Next::DropUpstream);
        let head_only = self.cur.as_ref().is_some_and(|c| c.method == Method::Head);
        self.refuse(down, reply_for(502, head_only), 502, todo);
    }

    fn response_done(&mut self, up: &mut Dir, down: &mut Dir, now: Instant, todo: &mut Vec<Next>) {
        self.resp = Resp::Idle;
        // Bytes an origin sends after a complete response (after a body-less
        // one, say) are not the client's: drop them, and the connection.
        let extra = data(down).len() - fwd(down);
        if extra > 0 {
            drop_after_fwd(down);
            self.upstream = None;
            todo.push(Next::DropUpstream);
        }
        let close = !self.cur.as_ref().is_some_and(|c| c.keep_alive);
        self.finish_exchange(up, down, now, todo, close);
    }

    fn finish_exchange(
        &mut self,
        up: &mut Dir,
        down: &mut Dir,
        now: Instant,
        todo: &mut Vec<Next>,
        close: bool,
    ) {
        if let Some(x) = self.abandon(up, down, now) {
            todo.push(Next::Log(x));
        }
        self.req = Req::Head;
        if close {
            todo.push(Next::Close(Outcome::Ok));
        }
    }

    /// The next request goes through [`Next::Connect`] (and so through
    /// the session's checks) even to the destination already connected:
    /// a quota it counts in was used up meanwhile.
    pub fn recheck_next(&mut self) {
        self.upstream = None;
    }

    /// The CONNECT tunnel (or the upstream for a request) is connected.
    pub fn connected(&mut self, _local: SocketAddr, down: &mut Dir, todo: &mut Vec<Next>) {
        if let Req::Tunnel = self.req {
            if self.resp_is_idle() {
                down.say(crate::http::CONNECT_ESTABLISHED);
                if let Some(c) = self.cur.as_mut() {
                    c.status = 200;
                }
                todo.push(Next::Responded(200));
                todo.push(Next::Relay);
            }
        }
    }

    fn resp_is_idle(&self) -> bool {
        matches!(self.resp, Resp::Idle)
    }

    /// The upstream for the request in flight could not be had;
    /// `destination` is where it was to go (`host:port`).
    pub fn failed(
        &mut self,
        why: Failure,
        destination: &str,
        down: &mut Dir,
        todo: &mut Vec<Next>,
    ) {
        self.upstream = None;
        let status = match why {
            Failure::Denied | Failure::Quota => 403,
            Failure::Limit => 503,
            Failure::TimedOut => 504,
            Failure::Refused
            | Failure::NetUnreachable
            | Failure::HostUnreachable
            | Failure::NotResolved
            | Failure::Parent(_)
            | Failure::Other => 502,
        };
        match why.cause() {
            Some(cause) => self.refuse_for(down, status, cause, destination, todo),
            None => {
                let head_only = self.cur.as_ref().is_some_and(|c| c.method == Method::Head);
                self.refuse(down, reply_for(status, head_only), status, todo);
            }
        }
    }

    /// The head of a request did not arrive within handshake_timeout.
    pub fn timed_out(&mut self, up: &Dir, down: &mut Dir, now: Instant, todo: &mut Vec<Next>) {
        if self.cur.is_none() {
            self.start(
                up,
                down,
                Method::Other("-".into()),
                "-".into(),
                now,
                false,
                Version::Http11,
            );
        }
        self.refuse(down, proxy_reply(408, &[], true), 408, todo);
    }

    /// Ends the exchange in flight, if any, and returns its record (also
    /// when the connection ends early, or a tunnel closes); none for an
    /// exchange begun while not [`HttpProxy::logged`], which has no target text.
    pub fn abandon(&mut self, up: &Dir, down: &Dir, now: Instant) -> Option<Exchange> {
        self.cur
            .take()
            .filter(|c| !c.target.is_empty())
            .map(|c| Exchange {
                method: c.method.as_str().to_string(),
                target: c.target,
                status: c.status,
                up: queued(up).saturating_sub(c.up0),
                down: queued(down).saturating_sub(c.down0),
                duration: now.saturating_duration_since(c.started),
                cause: c.cause,
                routed: c.routed,
                up_end: queued(up),
                down_end: queued(down),
            })
    }
}

fn target_of(host: &str, port: u16) -> Target {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(host.to_string(), port),
    }
}

/// Whether a Via value has an element received by `portico` (RFC 9110
/// §7.6.3: `[protocol-name "/"] protocol-version received-by [comment]`).
fn names_portico(v: &[u8]) -> bool {
    v.split(|&b| b == b',').any(|element| {
        let mut words = element
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty());
        let _version = words.next();
        words
            .next()
            .is_some_and(|by| by.eq_ignore_ascii_case(b"portico"))
    })
}

fn reply_for(status: u16, head_only: bool) -> Vec<u8> {
    without_body(proxy_reply(status, &[], true), head_only)
}

/// `reply` without its body when it answers a HEAD request.
fn without_body(mut reply: Vec<u8>, head_only: bool) -> Vec<u8> {
    if head_only {
        if let Some(i) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
            reply.truncate(i + 4);
        }
    }
    reply
}

/// Where a request asked to go, as `host:port` (for a refusal's words).
fn authority_of(target: &request::Target) -> String {
    match target {
        request::Target::Absolute { authority, .. } | request::Target::Authority(authority) => {
            authority.to_string()
        }
        request::Target::Asterisk => "*".into(),
        request::Target::Origin(path) => path.clone(),
    }
}

/// The reply carrying the PAC file `script`.
fn pac_reply(script: &str, keep: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\n",
        crate::pac::CONTENT_TYPE,
        script.len()
    )
    .into_bytes();
    if !keep {
        r.extend_from_slice(b"Connection: close\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(script.as_bytes());
    r
}

fn local_options(keep: bool) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, CONNECT, PATCH\r\nContent-Length: 0\r\n".to_vec();
    if !keep {
        r.extend_from_slice(b"Connection: close\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn trace_reply(echo: &[u8], keep: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: {}\r\n",
        echo.len()
    )
    .into_bytes();
    if !keep {
        r.extend_from_slice(b"Connection: close\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(echo);
    r
}

/// The request head as the proxy would have forwarded it (what TRACE echoes).
fn data_before(req: &request::Request, _len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    match &req.target {
        request::Target::Absolute { authority, path } => {
            out.extend_from_slice(authority.url(path).as_bytes())
        }
        request::Target::Authority(a) => out.extend_from_slice(a.to_string().as_bytes()),
        request::Target::Asterisk => out.push(b'*'),
        request::Target::Origin(path) => out.extend_from_slice(path.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        if name.eq_ignore_ascii_case("proxy-authorization") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
