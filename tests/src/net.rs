//! Sockets on 127.0.0.1 with every wait bounded.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::bin::Bin;

/// Read and write timeout put on every test socket: a stall fails the test
/// instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connect may take on loopback before the test gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for something that should happen "at once".
pub const PROMPTLY: Duration = Duration::from_secs(10);

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A TCP port on 127.0.0.1 that nothing listens on right now.
///
/// Ports are taken below the kernel's ephemeral range, so that they never
/// collide with the local port of some outgoing connection, and from a
/// per-process sequence, so that two tests of one process never get the same
/// one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const BASE: u32 = 10_000;
    if low > BASE + 1000 {
        let span = low - BASE;
        let start = (std::process::id().wrapping_mul(7919)) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = BASE + (start + n) % span;
            if TcpListener::bind((LOCALHOST, port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    let l = TcpListener::bind((LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::new(LOCALHOST, port)
}

fn prepare(s: &TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(())
}

/// Connects with a bounded wait and puts [`IO_TIMEOUT`] on the socket.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    prepare(&s)?;
    Ok(s)
}

/// Connects from a chosen local address (e.g. 127.0.0.2, which is loopback
/// too on Linux) to `addr`.
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    sock.connect_timeout(&SockAddr::from(addr), CONNECT_TIMEOUT)?;
    let s: TcpStream = sock.into();
    prepare(&s)?;
    Ok(s)
}

/// What one read on a socket gave.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Bytes arrived.
    Data(Vec<u8>),
    /// Orderly close (read returned 0).
    Eof,
    /// Closed with a reset or abort.
    Reset(ErrorKind),
    /// Nothing happened within the wait.
    TimedOut,
    /// Any other error.
    Error(io::Error),
}

impl ReadOutcome {
    /// The peer closed the connection, one way or the other.
    pub fn is_closed(&self) -> bool {
        matches!(self, ReadOutcome::Eof | ReadOutcome::Reset(_))
    }
}

/// Reads once with a bounded wait (the socket's read timeout is restored to
/// [`IO_TIMEOUT`] afterwards).
pub fn read_outcome(s: &mut TcpStream, wait: Duration) -> ReadOutcome {
    if let Err(e) = s.set_read_timeout(Some(wait.max(Duration::from_millis(1)))) {
        return ReadOutcome::Error(e);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let r = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    match r {
        Ok(0) => ReadOutcome::Eof,
        Ok(n) => ReadOutcome::Data(buf[..n].to_vec()),
        Err(e) => match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ReadOutcome::TimedOut,
            k @ (ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::NotConnected) => ReadOutcome::Reset(k),
            _ => ReadOutcome::Error(e),
        },
    }
}

/// Writes all of `bytes` on `s`; fails the test, saying `what`, if it cannot.
pub fn send_all(bin: Bin, s: &mut TcpStream, bytes: &[u8], what: &str) {
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("{bin}: {what}: writing {} bytes: {e}", bytes.len()));
}

/// The proxy must close the connection within [`PROMPTLY`], sending
/// nothing more.
pub fn expect_closed(bin: Bin, s: &mut TcpStream, what: &str) {
    let outcome = read_outcome(s, PROMPTLY);
    assert!(
        outcome.is_closed(),
        "{bin}: {what}: the proxy must close the connection (sending nothing more); got {outcome:?}"
    );
}

/// Sends `data` and reads the same number of bytes back, checking they are
/// `data` (for an echo server behind the proxy).
pub fn echo_check(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    let mut got = 0;
    while got < back.len() {
        match s.read(&mut back[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {got} of {} echoed bytes",
                        data.len()
                    ),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {got} of {} echoed bytes: {e}", data.len()),
                ))
            }
        }
    }
    if back != data {
        let at = back.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("echoed bytes differ from those sent, first at offset {at}"),
        ));
    }
    Ok(())
}

/// Resident memory of a process in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Calls `f` every `every` until it returns `Some`, for at most `limit`.
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// A barrier with a timeout: `n` parties; `arrive_and_wait` returns false if
/// not everyone arrived in time (so a failed thread cannot hang the others).
#[derive(Clone)]
pub struct Rendezvous {
    inner: Arc<(Mutex<usize>, Condvar)>,
    parties: usize,
}

impl Rendezvous {
    pub fn new(parties: usize) -> Rendezvous {
        Rendezvous {
            inner: Arc::new((Mutex::new(0), Condvar::new())),
            parties,
        }
    }

    pub fn arrive_and_wait(&self, limit: Duration) -> bool {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + limit;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        cv.notify_all();
        while *n < self.parties {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            n = cv
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// The kernel's count of connection attempts dropped because a listener's
/// accept queue was full (`TcpExt: ListenOverflows` in /proc/net/netstat).
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// A listener on `addr` that never accepts, with its queue full: a connect
/// to it hangs (its SYNs are dropped), as to a black-holed address. Kept
/// open while the value lives.
pub struct BlackHole {
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    /// Opens it and checks that a further connect really hangs, or a test
    /// relying on it would prove nothing.
    pub fn open(addr: SocketAddr) -> BlackHole {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let l = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .expect("socket");
        l.set_reuse_address(true).expect("SO_REUSEADDR");
        l.bind(&SockAddr::from(addr))
            .unwrap_or_else(|e| panic!("black hole: bind {addr}: {e}"));
        l.listen(0).expect("listen(0)");
        // Fill the accept queue: the first connects complete and wait there.
        let mut fillers = Vec::new();
        for _ in 0..2 {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                fillers.push(s);
            }
        }
        assert!(
            !fillers.is_empty(),
            "black hole {addr}: nothing filled its queue"
        );
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(1500));
        assert!(
            matches!(&probe, Err(e) if e.kind() == ErrorKind::TimedOut),
            "black hole {addr}: a further connect must hang, got {probe:?}"
        );
        BlackHole {
            _listener: l,
            _fillers: fillers,
        }
    }
}
