//! TLS between the client's socket and the session's machine: the client
//! side's bytes go through a rustls `ServerConnection` (rustls does no
//! I/O), so that the machine inside (http, socks, status) reads and writes
//! plain text in `up` and `down` exactly as without TLS.
//!
//! ```text
//! socket ─read─► rx ─read_tls─► rustls ─reader─► up   (the machine parses it)
//! socket ◄─write─ tx ◄─write_tls─ rustls ◄─writer─ down (the machine's replies, relayed bytes)
//! ```
//!
//! # States and exits
//!
//! ```text
//! handshaking ─complete─► open ─client's close_notify or EOF─► (plain EOF in up)
//!     ├─rustls error (plain text, bad certificate, no client certificate)
//!     │     ─► failed: the alert drains, then the session ends; logged and
//!     │        counted in portico_tls_failures_total
//!     └─EOF after some bytes─► failed the same way ("closed during the handshake")
//! open ─down drained at its end─► close_notify, then the write half shuts
//! ```
//!
//! Bounds: `rx` holds at most [`RX_MAX`] bytes (one largest TLS record);
//! rustls holds at most 16 KiB of decrypted text not yet taken into `up`
//! (reading stops until `up` takes it), and at most [`SEND_MAX`] of text
//! to encrypt, which `tx` carries out as records before more is taken from
//! `down`. A TLS session's bytes are never spliced.

use std::io::{ErrorKind, Read, Write};

use super::{Phase, Session};
use crate::event::Level;
use crate::id::Side;
use crate::outcome::Outcome;
use crate::table::context::Context;

/// The largest TLS record on the wire: 16 KiB of payload, 2 KiB of
/// expansion allowed by TLS 1.2, and the 5-byte header.
pub const RX_MAX: usize = 16 * 1024 + 2048 + 5;

/// The most plain text rustls holds to encrypt (one full record).
pub const SEND_MAX: usize = 16 * 1024;

/// A session's TLS layer on its client side.
pub(crate) struct Tls {
    conn: rustls::ServerConnection,
    /// The time its handshake is checked against (see `config::tls::Clock`).
    clock: std::sync::Arc<crate::config::tls::Clock>,
    /// Bytes read from the client, not yet taken by rustls: the first
    /// `rx_len` (allocated while there are some).
    rx: Vec<u8>,
    rx_len: usize,
    /// Records for the client, written from `tx_pos` on.
    tx: Vec<u8>,
    tx_pos: usize,
    /// The client's socket reached EOF.
    pub eof: bool,
    /// rustls was told of the EOF.
    eof_told: bool,
    /// Some bytes arrived (an EOF before any is no failed handshake).
    started: bool,
    /// The handshake completed.
    open: bool,
    /// close_notify is queued.
    closed: bool,
    /// The handshake failed: only the alert drains.
    pub failed: bool,
    /// The layer is running (a sync inside it leaves it alone).
    busy: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("rx", &self.rx_len)
            .field("tx", &(self.tx.len() - self.tx_pos))
            .field("open", &self.open)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Tls {
    pub fn new(server: &crate::config::tls::Server) -> Result<Tls, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(server.config.clone())?;
        conn.set_buffer_limit(Some(SEND_MAX));
        Ok(Tls {
            conn,
            clock: server.clock.clone(),
            rx: Vec::new(),
            rx_len: 0,
            tx: Vec::new(),
            tx_pos: 0,
            eof: false,
            eof_told: false,
            started: false,
            open: false,
            closed: false,
            failed: false,
            busy: false,
        })
    }

    /// Room for the client's next bytes.
    pub fn room(&self) -> bool {
        self.rx_len < RX_MAX
    }

    /// Where the runtime reads the client's next bytes to.
    pub fn space(&mut self) -> &mut [u8] {
        if self.rx.len() < RX_MAX {
            self.rx.resize(RX_MAX, 0);
        }
        &mut self.rx[self.rx_len..]
    }

    /// `n` bytes were read into [`Tls::space`].
    pub fn received(&mut self, n: usize) {
        self.rx_len = (self.rx_len + n).min(self.rx.len());
        if n > 0 {
            self.started = true;
        }
    }

    /// Drops what the client sent and rustls has not taken.
    pub fn discard(&mut self) {
        self.rx_len = 0;
        self.rx = Vec::new();
    }

    /// Records waiting for the client.
    pub fn out(&self) -> &[u8] {
        self.tx.get(self.tx_pos..).unwrap_or(&[])
    }

    /// `n` bytes of [`Tls::out`] were written.
    pub fn sent(&mut self, n: usize) {
        self.tx_pos = (self.tx_pos + n).min(self.tx.len());
        if self.tx_pos == self.tx.len() {
            self.tx = Vec::new();
            self.tx_pos = 0;
        }
    }

    /// Nothing is left to send the client.
    pub fn flushed(&self) -> bool {
        self.out().is_empty() && !self.conn.wants_write()
    }

    /// Takes what rustls has for the client into `tx`, once `tx` is empty.
    fn fill_tx(&mut self) {
        if !self.out().is_empty() {
            return;
        }
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.tx).is_err() {
                break;
            }
        }
    }
}

impl Session {
    /// The client's socket reached EOF (with TLS, before its plain text
    /// ends).
    pub(super) fn client_eof(&self) -> bool {
        self.tls.as_ref().map_or(self.up.eof, |t| t.eof)
    }

    /// Nothing the TLS layer holds is left to send the client.
    pub(super) fn tls_flushed(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| t.flushed())
    }

    fn tls(&mut self) -> Option<&mut Tls> {
        self.tls.as_deref_mut()
    }

    /// Runs the TLS layer until it moves nothing more: the client's bytes
    /// in, plain text up to the machine, the machine's text out as
    /// records. Called from `sync`; a sync from inside leaves it alone.
    pub(super) fn tls_pump(&mut self, cx: &mut Context) {
        match self.tls() {
            Some(t) if !t.busy => t.busy = true,
            _ => return,
        }
        if let Some(t) = self.tls() {
            t.clock.set(cx.wall.unix_secs);
        }
        // Each round moves bytes or stops; the bound only guards against
        // a round that moves nothing but says it did.
        for _ in 0..1024 {
            if !self.tls_round(cx) || self.ended {
                break;
            }
        }
        if let Some(t) = self.tls() {
            t.busy = false;
        }
    }

    /// One round of [`Session::tls_pump`]; whether it moved anything.
    fn tls_round(&mut self, cx: &mut Context) -> bool {
        let mut moved = false;
        let Some(t) = self.tls() else { return false };
        if t.failed {
            t.discard();
            t.fill_tx();
            return false;
        }
        // The client's bytes into rustls.
        let mut error = None;
        while t.rx_len > 0 {
            let mut rd = &t.rx[..t.rx_len];
            match t.conn.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    t.rx.copy_within(k..t.rx_len, 0);
                    t.rx_len -= k;
                    moved = true;
                }
            }
            if let Err(e) = t.conn.process_new_packets() {
                error = Some(e.to_string());
                break;
            }
        }
        if t.rx_len == 0 && !t.rx.is_empty() {
            t.rx = Vec::new();
        }
        if error.is_none() && t.eof && t.rx_len == 0 && !t.eof_told {
            t.eof_told = true;
            moved = true;
            let _ = t.conn.read_tls(&mut &[][..]);
            if let Err(e) = t.conn.process_new_packets() {
                error = Some(e.to_string());
            }
        }
        if let Some(why) = error {
            self.tls_failed(&why, cx);
            return false;
        }
        let Some(t) = self.tls() else { return false };
        if t.conn.is_handshaking() {
            if t.eof_told {
                if t.started {
                    self.tls_failed("the client closed the connection during the handshake", cx);
                } else {
                    self.outcome = Outcome::Aborted;
                    self.end();
                }
                return false;
            }
            t.fill_tx();
            return moved;
        }
        if !t.open {
            t.open = true;
            moved = true;
            if !self.tls_opened(cx) {
                return false;
            }
        }
        // Plain text to the machine.
        let mut plain_eof = false;
        while self.phase == Phase::Closing || self.up.has_space() {
            let space = self.up.space(&mut cx.pool);
            let Some(t) = self.tls.as_deref_mut() else {
                return false;
            };
            match t.conn.reader().read(space) {
                Ok(0) => {
                    plain_eof = true;
                    break;
                }
                Ok(k) => {
                    moved = true;
                    self.took(Side::Client, k, false, cx);
                    if self.ended {
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The socket's EOF without close_notify: an end all
                    // the same (what came is what the client sent).
                    plain_eof = true;
                    break;
                }
            }
        }
        self.up.release_if_empty(&mut cx.pool);
        if plain_eof && !self.up.eof {
            moved = true;
            self.up.eof = true;
            self.client_bytes(cx);
            if self.ended {
                return false;
            }
        }
        // The machine's text out as records.
        let Some(t) = self.tls.as_deref_mut() else {
            return false;
        };
        if !t.closed {
            let mut k = 0;
            for part in self.down.out_parts() {
                if part.is_empty() {
                    continue;
                }
                match t.conn.writer().write(part) {
                    Ok(n) => {
                        k += n;
                        if n < part.len() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if k > 0 {
                moved = true;
                self.written_plain(Side::Client, k, cx);
                if self.ended {
                    return false;
                }
            }
            // The last of down went: close_notify before the write half
            // shuts (or the connection closes after a last reply).
            let ending =
                (self.down.eof && self.phase == Phase::Relay) || self.phase == Phase::Closing;
            let Some(t) = self.tls.as_deref_mut() else {
                return false;
            };
            if ending && self.down.drained() && !t.closed {
                t.closed = true;
                t.conn.send_close_notify();
                moved = true;
            }
        }
        if let Some(t) = self.tls.as_deref_mut() {
            t.fill_tx();
        }
        moved
    }

    /// The handshake completed: with `client_cert_user`, the client
    /// certificate's CN becomes the user. False when the session ended.
    fn tls_opened(&mut self, cx: &mut Context) -> bool {
        let conf = cx.services[self.service].conf.clone();
        let by_cert = conf.tls.as_ref().is_some_and(|t| t.client_cert_user);
        let cn = self.tls.as_deref().and_then(|t| {
            t.conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::config::tls::subject_cn(c.as_ref()))
        });
        let name = cx.services[self.service].name.clone();
        let client = self.client;
        let version = self
            .tls
            .as_deref()
            .and_then(|t| t.conn.protocol_version())
            .map_or("?", |v| v.as_str().unwrap_or("?"));
        cx.log(Level::Debug, || {
            format!(
                "{name}: {client}: TLS handshake done ({version}{})",
                match &cn {
                    Some(cn) => format!(", client certificate CN={cn}"),
                    None => String::new(),
                }
            )
        });
        if by_cert {
            match cn.filter(|c| !c.is_empty() && !c.chars().any(char::is_control)) {
                Some(cn) => self.cert_user(cn, cx),
                None => {
                    self.tls_failed("the client certificate has no usable subject CN", cx);
                    return false;
                }
            }
        }
        !self.ended
    }

    /// A TLS service's connection rustls would not take: it ends unserved.
    pub(crate) fn tls_failed_at_accept(&mut self) {
        self.outcome = Outcome::Error;
        self.end();
    }

    /// The client certificate named `user` (`client_cert_user`): the
    /// machine takes it as authenticated, and rules and the access log see
    /// it.
    fn cert_user(&mut self, user: String, _cx: &mut Context) {
        match &mut self.machine {
            super::Machine::Http(h) => {
                h.user = Some(user);
                h.proven = true;
            }
            super::Machine::Gateway(p) => p.authenticated(user),
            _ => self.user = Some(user),
        }
    }

    /// The handshake failed: logged, counted, the alert sent, then the end.
    pub(super) fn tls_failed(&mut self, why: &str, cx: &mut Context) {
        let svc = &mut cx.services[self.service];
        svc.counters.tls_failures += 1;
        let name = svc.name.clone();
        let client = self.client;
        cx.log(Level::Info, || {
            format!("{name}: {client}: TLS handshake failed: {why}")
        });
        self.outcome = Outcome::Error;
        self.enter(Phase::Closing, cx.now);
        self.down.prefix = Vec::new();
        self.down.prefix_pos = 0;
        self.down.release(&mut cx.pool);
        self.up.release(&mut cx.pool);
        if let Some(t) = self.tls() {
            t.failed = true;
            t.discard();
            t.fill_tx();
        }
    }
}

/// A TLS handshake end to end in memory: a rustls client talking to the
/// table through the simulated runtime.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::io::{self, Read, Write};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    use crate::config::Files;
    use crate::sim::runtime::Runtime;
    use crate::{ConnId, Side};

    const CA: &str = include_str!("testdata/ca.pem");
    const SERVER: &str = include_str!("testdata/server.pem");
    const SERVER_KEY: &str = include_str!("testdata/server.key");
    const CLIENT: &str = include_str!("testdata/client.pem");
    const CLIENT_KEY: &str = include_str!("testdata/client.key");

    struct Mem(HashMap<PathBuf, String>);

    impl Files for Mem {
        fn read(&mut self, path: &Path) -> io::Result<String> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn list(&mut self, _dir: &Path) -> io::Result<Vec<OsString>> {
            Ok(Vec::new())
        }
    }

    fn files() -> Mem {
        Mem(HashMap::from([
            ("/ca.pem".into(), CA.to_string()),
            ("/server.pem".into(), SERVER.to_string()),
            ("/server.key".into(), SERVER_KEY.to_string()),
            ("/client.key".into(), CLIENT_KEY.to_string()),
        ]))
    }

    fn started(services: &str) -> Runtime {
        let text = format!(
            "[network]\ninternal = [\"127.0.0.1\"]\n[[user]]\nname = \"alice\"\n\
             password = \"plain:pw\"\n{services}"
        );
        let config = crate::config::parse_with_files(&text, "tls.toml", &mut files())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rt = Runtime::new(config, 1, std::time::Instant::now());
        // Within the test certificates' validity (2026 to 2126).
        rt.set_wall(crate::rules::Wall::utc(1_830_000_000));
        rt.open();
        rt
    }

    fn client(with_cert: bool) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(CA.as_bytes()) {
            roots.add(c.expect("CA")).expect("CA added");
        }
        let b = rustls::ClientConfig::builder_with_provider(crate::config::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = if with_cert {
            let chain = CertificateDer::pem_slice_iter(CLIENT.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert");
            let key = PrivateKeyDer::from_pem_slice(CLIENT_KEY.as_bytes()).expect("client key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        } else {
            b.with_no_client_auth()
        };
        let name = ServerName::try_from("localhost").expect("name");
        rustls::ClientConnection::new(Arc::new(config), name).expect("client")
    }

    fn connect(rt: &mut Runtime) -> ConnId {
        let l = rt.listeners()[0].id;
        let id = rt
            .accept(l, "127.0.0.1:40000".parse().expect("addr"), None)
            .expect("accepted");
        rt.drain();
        id
    }

    /// Moves bytes both ways, a few at a time, until neither side has
    /// more; returns the plain text the client read.
    fn talk(rt: &mut Runtime, id: ConnId, c: &mut rustls::ClientConnection) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..1000 {
            let mut moved = false;
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).expect("write_tls");
            }
            // Chopped at 7 bytes: records arrive in pieces.
            for piece in wire.chunks(7) {
                if rt.is_live(id) {
                    rt.feed(id, Side::Client, piece);
                    moved = true;
                }
            }
            if rt.is_live(id) {
                let out = rt.flush(id, Side::Client);
                if !out.is_empty() {
                    moved = true;
                    let mut rd = &out[..];
                    while !rd.is_empty() {
                        if c.read_tls(&mut rd).is_err() {
                            break;
                        }
                        if c.process_new_packets().is_err() {
                            return got;
                        }
                    }
                }
            }
            rt.drain();
            let mut buf = [0; 4096];
            while let Ok(n) = c.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        got
    }

    const STATUS: &str = "[[service]]\nname = \"st\"\nkind = \"status\"\nport = 8443\n\
         tls = { cert = \"/server.pem\", key = \"/server.key\" }\n";

    #[test]
    fn status_page_over_tls() {
        let mut rt = started(STATUS);
        let id = connect(&mut rt);
        let mut c = client(false);
        c.writer()
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let got = String::from_utf8_lossy(&talk(&mut rt, id, &mut c)).to_string();
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert!(got.contains("portico_connections_total"), "{got}");
        assert!(!rt.is_live(id), "the connection closes after its page");
        assert_eq!(rt.snapshot().services[0].counters.tls_failures, 0);
    }

    #[test]
    fn plain_text_to_a_tls_port_is_closed_unserved_and_counted() {
        let mut rt = started(STATUS);
        let id = connect(&mut rt);
        rt.feed(
            id,
            Side::Client,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        rt.drain();
        let out = if rt.is_live(id) {
            rt.flush(id, Side::Client)
        } else {
            Vec::new()
        };
        // At most an alert record (content type 21), never an HTTP answer.
        assert!(out.is_empty() || out[0] == 21, "{out:?}");
        rt.drain();
        assert!(!rt.is_live(id), "closed");
        assert_eq!(rt.snapshot().services[0].counters.tls_failures, 1);
        let logged = rt
            .logs
            .iter()
            .any(|(_, m)| m.contains("TLS handshake failed"));
        assert!(logged, "{:?}", rt.logs);
    }

    const HTTP_CA: &str = "[[service]]\nname = \"web\"\nkind = \"http\"\nport = 3129\n\
         auth = true\ntls = { cert = \"/server.pem\", key = \"/server.key\", \
         client_ca = \"/ca.pem\", client_cert_user = true }\n";

    #[test]
    fn client_ca_refuses_a_client_without_a_certificate() {
        let mut rt = started(HTTP_CA);
        let id = connect(&mut rt);
        let mut c = client(false);
        c.writer()
            .write_all(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .expect("write");
        let got = talk(&mut rt, id, &mut c);
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        rt.drain();
        assert!(!rt.is_live(id));
        assert_eq!(rt.snapshot().services[0].counters.tls_failures, 1);
    }

    #[test]
    fn client_certificate_cn_is_the_user_without_a_password() {
        let mut rt = started(HTTP_CA);
        let id = connect(&mut rt);
        let mut c = client(true);
        c.writer()
            .write_all(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .expect("write");
        // The request passes the login (no 407): the proxy resolves its host.
        let got = talk(&mut rt, id, &mut c);
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert!(rt.is_live(id));
        let rows = rt.snapshot().connections;
        assert!(
            rows.iter()
                .any(|r| r.user.as_deref() == Some("carol") && r.state == "resolving"),
            "{rows:?}"
        );
    }

    /// The client certificate's validity is checked against the time the
    /// table was given, not a clock of the core's own: given a time after
    /// the certificate expires, the same client is refused.
    #[test]
    fn client_certificate_checked_against_the_tables_clock() {
        let mut rt = started(HTTP_CA);
        rt.set_wall(crate::rules::Wall::utc(7_500_000_000));
        let id = connect(&mut rt);
        let mut c = client(true);
        c.writer()
            .write_all(b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .expect("write");
        let got = talk(&mut rt, id, &mut c);
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        rt.drain();
        assert!(!rt.is_live(id));
        assert_eq!(rt.snapshot().services[0].counters.tls_failures, 1);
        let why = rt.logs.iter().any(|(_, m)| m.contains("expired"));
        assert!(why, "{:?}", rt.logs);
    }
}
