//! Sockets as Portico opens them, and what a socket call did as the event
//! the core is told. Both runtimes open the same sockets with the same
//! options; they differ only in how they wait on them.

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;

use portico_core::{ConnId, Event, IoKind, Side};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// The address told when the real one is not needed, or not known.
pub const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A non-blocking listening TCP socket on `addr` (IPv6 only for an IPv6
/// address, so the two families can be listened on apart); with
/// `reuse_port`, one of a SO_REUSEPORT group the kernel spreads new
/// connections over.
pub fn tcp_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A TCP connect to `addr` (from `bind`, when given) started without
/// waiting: the socket is non-blocking from its creation (one syscall, not
/// three) and without Nagle's delay. Its outcome shows when it becomes
/// writable ([`connect_outcome`]).
pub fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_nodelay(true)?;
    if let Some(ip) = bind {
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    match s.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// What a connect in progress came to, once its socket signalled.
#[derive(Debug, PartialEq, Eq)]
pub enum Connecting {
    Done,
    /// A spurious wake-up: still connecting.
    Pending,
    Failed(IoKind),
}

/// The outcome of the connect on `socket`. `clean`: it signalled writable
/// with neither error nor hang-up, which is a connect done (a failed
/// connect always brings EPOLLERR); only otherwise are the pending error
/// and the peer asked for.
pub fn connect_outcome(socket: &impl AsFd, clean: bool) -> Connecting {
    if clean {
        return Connecting::Done;
    }
    let s = SockRef::from(socket);
    if let Ok(Some(e)) | Err(e) = s.take_error() {
        return Connecting::Failed(IoKind::from_io(&e));
    }
    match s.peer_addr() {
        Ok(_) => Connecting::Done,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Connecting::Pending,
        Err(e) => Connecting::Failed(IoKind::from_io(&e)),
    }
}

/// `socket`'s local address ([`UNSPECIFIED`] if it has none).
pub fn local_addr(socket: &impl AsFd) -> SocketAddr {
    SockRef::from(socket)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(UNSPECIFIED)
}

/// Shuts the write side of `side`'s `socket`; the event to tell when that
/// failed (not when it was not connected: nothing is left to shut then).
pub fn shutdown_write(conn: ConnId, side: Side, socket: &impl AsFd) -> Option<Event> {
    match SockRef::from(socket).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Some(Event::IoError {
            conn,
            side,
            error: IoKind::from_io(&e),
        }),
        _ => None,
    }
}

/// A non-blocking UDP socket bound to `addr`, for a UDP mapped port.
pub fn udp_bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

/// A non-blocking UDP socket from `bind` (any address of the family when
/// not given) connected to `dest`, for one UDP mapping.
pub fn udp_connect(bind: Option<IpAddr>, dest: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let from = match (bind, dest) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
        (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
    };
    s.bind(&SockAddr::from(from))?;
    s.connect(&SockAddr::from(dest))?;
    Ok(s.into())
}

/// What a read on `side` did, as the core is told it.
#[inline]
pub fn read_event(conn: ConnId, side: Side, r: io::Result<usize>) -> Event {
    match r {
        Ok(0) => Event::Eof { conn, side },
        Ok(n) => Event::Read { conn, side, n },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Event::ReadBlocked { conn, side },
        Err(e) => Event::IoError {
            conn,
            side,
            error: IoKind::from_io(&e),
        },
    }
}

/// What a write on `side` did, as the core is told it: nothing when the
/// socket took nothing (it would block).
#[inline]
pub fn write_event(conn: ConnId, side: Side, r: io::Result<usize>) -> Option<Event> {
    match r {
        Ok(n) => Some(Event::Written { conn, side, n }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some(Event::IoError {
            conn,
            side,
            error: IoKind::from_io(&e),
        }),
    }
}

/// `f` again for as long as a signal interrupts it.
#[inline]
pub fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
