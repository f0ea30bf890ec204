//! Backend servers on 127.0.0.1 for the proxy to connect to.
//!
//! Each accepted connection is served on its own thread with [`SERVER_IO_TIMEOUT`]
//! on its socket, and reports what it received and sent once it is done. The
//! accept loop ends when the [`TestServer`] is dropped.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::bin::Bin;
use crate::data::{recv_all, send_stream, Digest};
use crate::net::{connect, IO_TIMEOUT, LOCALHOST};

/// Socket timeouts on the server side: the longest a server thread lives on
/// a stalled connection.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Seed of every byte stream a server sends.
pub const SERVER_SEED: u64 = 0x5e7e_5eed_0000_0001;

/// What a test server does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Writes back what it reads; on EOF shuts its write side and ends.
    Echo,
    /// Reads to EOF, then closes.
    Sink,
    /// Sends `len` pattern bytes, shuts its write side, reads to EOF, closes.
    Source { len: u64 },
    /// Reads an 8-byte big-endian length, then behaves as `Source` with it.
    RequestedSource,
    /// Sends `len` pattern bytes while reading to EOF, at the same time.
    Exchange { len: u64 },
    /// Reads to EOF, then sends `reply_len` pattern bytes followed by the
    /// count (u64 BE) and checksum (u64 BE) of what it read, and closes.
    DigestReply { reply_len: u64 },
}

/// What one connection saw, sent when it ends.
#[derive(Clone, Debug)]
pub struct Report {
    pub peer: SocketAddr,
    pub received: u64,
    pub received_digest: u64,
    /// Pattern bytes sent (for `DigestReply`, without the 16-byte trailer).
    pub sent: u64,
    pub sent_digest: u64,
    pub error: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    released: Mutex<bool>,
    release_cv: Condvar,
    sent: AtomicU64,
    accepted: AtomicU64,
}

pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    reports: Mutex<Receiver<Report>>,
    fillers: Mutex<Vec<TcpStream>>,
}

impl TestServer {
    /// Starts a server that accepts right away.
    pub fn start(behaviour: Behaviour) -> TestServer {
        TestServer::spawn(behaviour, None, true)
    }

    /// Starts a server with an accept backlog of 0 that does not accept
    /// until [`TestServer::release`]: with [`TestServer::fill_backlog`] this
    /// makes connects to it hang (their SYN is dropped and retried a second
    /// later).
    pub fn start_held(behaviour: Behaviour) -> TestServer {
        TestServer::spawn(behaviour, Some(0), false)
    }

    fn spawn(behaviour: Behaviour, backlog: Option<i32>, released: bool) -> TestServer {
        let listener = TcpListener::bind((LOCALHOST, 0)).expect("test server: bind 127.0.0.1:0");
        // std listens with a backlog of 128; a second listen() changes it.
        let backlog = backlog.unwrap_or(1024);
        // SAFETY: listen(2) on a socket fd we own.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog) };
        assert_eq!(
            rc,
            0,
            "test server: listen(): {}",
            io::Error::last_os_error()
        );
        let addr = listener.local_addr().expect("test server: local_addr");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            released: Mutex::new(released),
            release_cv: Condvar::new(),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        thread::Builder::new()
            .name(format!("server-{}", addr.port()))
            .spawn(move || accept_loop(listener, behaviour, sh, tx))
            .expect("test server: spawn the accept thread");
        TestServer {
            addr,
            shared,
            reports: Mutex::new(rx),
            fillers: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets a held server start accepting.
    pub fn release(&self) {
        let mut r = self
            .shared
            .released
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *r = true;
        self.shared.release_cv.notify_all();
    }

    /// Opens a connection that sits in the accept queue (of a held server),
    /// filling it; returns its local address, so its report can be told apart.
    pub fn fill_backlog(&self) -> io::Result<SocketAddr> {
        let s = connect(self.addr)?;
        let a = s.local_addr()?;
        self.fillers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
        Ok(a)
    }

    /// Closes the connections opened by [`TestServer::fill_backlog`].
    pub fn close_fillers(&self) {
        self.fillers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The next finished connection's report, waiting at most `wait`.
    pub fn next_report(&self, wait: Duration) -> Option<Report> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(wait)
            .ok()
    }

    /// The next finished connection's report, which must come within
    /// [`IO_TIMEOUT`] and say the connection went without error.
    pub fn report_ok(&self, bin: Bin) -> Report {
        let r = self.next_report(IO_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{bin}: the test server (the proxy's destination) saw no connection finish \
                 within {IO_TIMEOUT:?}"
            )
        });
        assert_eq!(
            r.error, None,
            "{bin}: the test server's (the proxy's destination's) connection failed: {r:?}"
        );
        r
    }

    /// Total bytes all connections have written so far.
    pub fn sent_bytes(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release();
        self.close_fillers();
        // Wake a blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept_loop(listener: TcpListener, behaviour: Behaviour, sh: Arc<Shared>, tx: Sender<Report>) {
    {
        let mut r = sh.released.lock().unwrap_or_else(|e| e.into_inner());
        while !*r {
            r = sh.release_cv.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }
    loop {
        let accepted = listener.accept();
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                // EMFILE and the like: back off a little, bounded by the
                // server's lifetime.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        sh.accepted.fetch_add(1, Ordering::Relaxed);
        let tx = tx.clone();
        let sh = sh.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{}", peer.port()))
            .spawn(move || {
                let report = serve(stream, peer, behaviour, &sh.sent);
                let _ = tx.send(report);
            });
        if spawned.is_err() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, behaviour: Behaviour, sent: &AtomicU64) -> Report {
    let mut report = Report {
        peer,
        received: 0,
        received_digest: Digest::new().finish(),
        sent: 0,
        sent_digest: Digest::new().finish(),
        error: None,
    };
    if let Err(e) = serve_inner(stream, behaviour, sent, &mut report) {
        report.error = Some(e.to_string());
    }
    report
}

fn serve_inner(
    mut s: TcpStream,
    behaviour: Behaviour,
    progress: &AtomicU64,
    rep: &mut Report,
) -> io::Result<()> {
    s.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    s.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    match behaviour {
        Behaviour::Echo => {
            let mut inbound = Digest::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match s.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        rep.received = inbound.len();
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                inbound.update(&buf[..n]);
                s.write_all(&buf[..n])?;
                progress.fetch_add(n as u64, Ordering::Relaxed);
                rep.received = inbound.len();
                rep.sent = inbound.len();
            }
            rep.received_digest = inbound.finish();
            rep.sent_digest = rep.received_digest;
            s.shutdown(Shutdown::Write)?;
        }
        Behaviour::Sink => {
            let (n, d) = recv_all(&mut s)?;
            rep.received = n;
            rep.received_digest = d;
        }
        Behaviour::Source { len } => source(&mut s, len, progress, rep)?,
        Behaviour::RequestedSource => {
            let mut head = [0u8; 8];
            s.read_exact(&mut head)?;
            let len = u64::from_be_bytes(head);
            rep.received = 8;
            source(&mut s, len, progress, rep)?;
        }
        Behaviour::Exchange { len } => {
            let mut w = s.try_clone()?;
            let writer = thread::Builder::new().spawn(move || {
                let r = send_stream(&mut w, len, SERVER_SEED, None);
                let _ = w.shutdown(Shutdown::Write);
                r
            })?;
            let got = recv_all(&mut s);
            let sent = writer
                .join()
                .map_err(|_| io::Error::other("the writer thread panicked"))?;
            let (n, d) = got?;
            rep.received = n;
            rep.received_digest = d;
            rep.sent_digest = sent?;
            rep.sent = len;
            progress.fetch_add(len, Ordering::Relaxed);
        }
        Behaviour::DigestReply { reply_len } => {
            let (n, d) = recv_all(&mut s)?;
            rep.received = n;
            rep.received_digest = d;
            rep.sent_digest = send_stream(&mut s, reply_len, SERVER_SEED, Some(progress))?;
            rep.sent = reply_len;
            let mut trailer = [0u8; 16];
            trailer[..8].copy_from_slice(&n.to_be_bytes());
            trailer[8..].copy_from_slice(&d.to_be_bytes());
            s.write_all(&trailer)?;
            s.shutdown(Shutdown::Write)?;
        }
    }
    Ok(())
}

fn source(s: &mut TcpStream, len: u64, progress: &AtomicU64, rep: &mut Report) -> io::Result<()> {
    rep.sent_digest = send_stream(s, len, SERVER_SEED, Some(progress))?;
    rep.sent = len;
    s.shutdown(Shutdown::Write)?;
    // Drain until the peer closes, so that closing never resets.
    let (n, d) = recv_all(s)?;
    rep.received += n;
    rep.received_digest = d;
    Ok(())
}

/// Reads to EOF what a [`Behaviour::DigestReply`] server with `reply_len`
/// sends through the proxy, and checks it with [`check_digest_reply`];
/// returns the reply body.
pub fn read_digest_reply(
    bin: Bin,
    s: &mut TcpStream,
    reply_len: u64,
    sent: &[u8],
    what: &str,
) -> Vec<u8> {
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap_or_else(|e| {
        panic!(
            "{bin}: {what}: reading the reply to EOF ({} bytes so far): {e}",
            reply.len()
        )
    });
    check_digest_reply(bin, &reply, reply_len, sent, what);
    reply.truncate(reply_len as usize);
    reply
}

/// Checks what a [`Behaviour::DigestReply`] server with `reply_len` sent:
/// the whole reply, then the trailer saying it received exactly `sent`.
pub fn check_digest_reply(bin: Bin, reply: &[u8], reply_len: u64, sent: &[u8], what: &str) {
    assert_eq!(
        reply.len() as u64,
        reply_len + 16,
        "{bin}: {what}: the server's reply ({reply_len} bytes) and its 16-byte trailer must \
         arrive whole"
    );
    let trailer = &reply[reply_len as usize..];
    let count = u64::from_be_bytes(trailer[..8].try_into().expect("8 bytes"));
    let sum = u64::from_be_bytes(trailer[8..].try_into().expect("8 bytes"));
    assert_eq!(
        count,
        sent.len() as u64,
        "{bin}: {what}: bytes the server received (must be exactly those sent, once)"
    );
    assert_eq!(
        sum,
        crate::data::digest(sent),
        "{bin}: {what}: the bytes the server received differ from those sent"
    );
}

/// A UDP echo server: sends every datagram back to its sender and records
/// the senders' addresses.
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl UdpEcho {
    pub fn start() -> UdpEcho {
        Self::start_on(LOCALHOST)
    }

    /// An echo on `ip` (any port).
    pub fn start_on(ip: std::net::IpAddr) -> UdpEcho {
        let sock = std::net::UdpSocket::bind((ip, 0))
            .unwrap_or_else(|e| panic!("udp echo: bind {ip} (any port): {e}"));
        let addr = sock.local_addr().expect("udp echo: local_addr");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("udp echo: set_read_timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (st, pe) = (stop.clone(), peers.clone());
        thread::Builder::new()
            .name(format!("udp-echo-{}", addr.port()))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                // Bounded lifetime: ends when dropped, or after 5 idle minutes.
                let mut idle = 0u32;
                while !st.load(Ordering::SeqCst) && idle < 1500 {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            idle = 0;
                            pe.lock().unwrap_or_else(|e| e.into_inner()).push(from);
                            let _ = sock.send_to(&buf[..n], from);
                        }
                        Err(_) => idle += 1,
                    }
                }
            })
            .expect("udp echo: spawn");
        UdpEcho { addr, stop, peers }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The source address of every datagram received so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A listener on a port of its own whose every connection is handed to a
/// handler on a thread of its own; the accept loop ends when the
/// `Acceptor` is dropped. The handler sets its socket's timeouts.
pub struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
}

impl Acceptor {
    /// Listens on `ip`:0; `handle(stream, n)` gets the `n`th accepted
    /// connection (from 1). `what` names the server in failure messages.
    pub fn start(
        ip: IpAddr,
        what: &str,
        handle: impl Fn(TcpStream, u64) + Send + Sync + 'static,
    ) -> Acceptor {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("{what}: bind {ip}:0: {e} (is loopback {ip} up?)"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{what}: local_addr: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let handle = Arc::new(handle);
        let (st, acc) = (stop.clone(), accepted.clone());
        thread::Builder::new()
            .name(format!("acceptor-{}", addr.port()))
            .spawn(move || loop {
                let got = listener.accept();
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok((stream, _)) = got else {
                    // EMFILE and the like: back off a little, bounded by
                    // the acceptor's lifetime.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let n = acc.fetch_add(1, Ordering::SeqCst) + 1;
                let handle = handle.clone();
                thread::spawn(move || handle(stream, n));
            })
            .unwrap_or_else(|e| panic!("{what}: spawn the accept thread: {e}"));
        Acceptor {
            addr,
            stop,
            accepted,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake a blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}
