//! Sockets as Portico opens them, and what a socket call did as the event
//! the core is told. Both runtimes open the same sockets with the same
//! options; they differ only in how they wait on them.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use portico_core::{ConnId, Event, Intercept, IoKind, Side};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// The address told when the real one is not needed, or not known.
pub const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A non-blocking listening TCP socket on `addr` (IPv6 only for an IPv6
/// address, so the two families can be listened on apart); with
/// `reuse_port`, one of a SO_REUSEPORT group the kernel spreads new
/// connections over. Without Nagle's delay: on Linux an accepted socket
/// inherits TCP_NODELAY from its listener, which saves a setsockopt(2) per
/// connection (see [`accepted_nodelay`]). With TPROXY, an IP_TRANSPARENT socket (which needs
/// CAP_NET_ADMIN), so that it takes connections to any address.
fn tcp_listener(
    addr: SocketAddr,
    reuse_port: bool,
    intercept: Option<Intercept>,
) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nodelay(true)?;
    if intercept == Some(Intercept::Tproxy) {
        set_transparent(&s, addr.is_ipv6()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{e} (setting IP_TRANSPARENT for tproxy = true needs CAP_NET_ADMIN: start \
                     Portico as root or give it that capability)"
                ),
            )
        })?;
    }
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

/// How a process listens on its TCP ports. With several workers, every
/// worker listens on every configured address, each with its own socket in
/// a SO_REUSEPORT group the kernel spreads new connections over; before the
/// first socket of a group binds, a plain bind of the address is tried, so
/// that a port another program (or another Portico) holds is still refused
/// as in use rather than silently shared. With one worker, a plain socket.
#[derive(Clone)]
pub struct Ports {
    /// Sockets open per group (none with one worker).
    groups: Option<Arc<Mutex<HashMap<SocketAddr, usize>>>>,
}

impl Ports {
    pub fn new(workers: usize) -> Ports {
        Ports {
            groups: (workers > 1).then(Arc::default),
        }
    }

    /// A listener on `addr`, and the group it joined, to
    /// [`Ports::leave`] when it closes. A port 0 (an FTP data port) is one
    /// worker's own.
    pub fn listen(
        &self,
        addr: SocketAddr,
        intercept: Option<Intercept>,
    ) -> io::Result<(TcpListener, Option<SocketAddr>)> {
        let Some(groups) = self.groups.as_ref().filter(|_| addr.port() != 0) else {
            return Ok((tcp_listener(addr, false, intercept)?, None));
        };
        let mut held = groups.lock().unwrap_or_else(|e| e.into_inner());
        if held.get(&addr).copied().unwrap_or(0) == 0 {
            probe(addr)?;
        }
        let l = tcp_listener(addr, true, intercept)?;
        *held.entry(addr).or_insert(0) += 1;
        Ok((l, Some(addr)))
    }

    /// One socket fewer in `group` (its last one gone, the next to listen
    /// there checks the port is free again).
    pub fn leave(&self, group: SocketAddr) {
        if let Some(g) = self.groups.as_ref() {
            let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = g.get_mut(&group) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.remove(&group);
                }
            }
        }
    }
}

/// Sets IP_TRANSPARENT (IPV6_TRANSPARENT for `v6`) on `s`.
fn set_transparent(s: &Socket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this function borrows, with a c_int
    // value and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where an accepted connection on a transparent service's listener was
/// going before the firewall sent it here: for `redirect`, what
/// `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) says (none
/// when the kernel has no translation to tell, e.g. no conntrack entry);
/// for TPROXY, the socket's local address, `local`.
pub fn original_destination(
    socket: &impl AsFd,
    how: Intercept,
    local: SocketAddr,
) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    match how {
        Intercept::Tproxy => Some(local),
        Intercept::Redirect => {
            // Both options are 80 (linux/netfilter_ipv4.h, netfilter_ipv6/ip6_tables.h).
            const SO_ORIGINAL_DST: libc::c_int = 80;
            let fd = socket.as_fd().as_raw_fd();
            // SAFETY: a zeroed sockaddr_storage is a valid value; the
            // kernel writes at most `len` bytes into it.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let level = if local.is_ipv6() && !is_v4_mapped(local) {
                libc::SOL_IPV6
            } else {
                libc::SOL_IP
            };
            // SAFETY: getsockopt into a buffer of `len` bytes this
            // function owns.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    level,
                    SO_ORIGINAL_DST,
                    (&mut storage as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return None;
            }
            // SAFETY: the kernel filled `len` bytes of a sockaddr_storage.
            let addr = unsafe { SockAddr::new(storage, len) };
            addr.as_socket()
        }
    }
}

/// `a` is an IPv4-mapped IPv6 address (an IPv4 client on a dual-stack
/// socket, whose translation is IPv4's).
fn is_v4_mapped(a: SocketAddr) -> bool {
    match a {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
        SocketAddr::V4(_) => false,
    }
}

/// A plain bind of `addr` (no SO_REUSEPORT): fails as "in use" when any
/// socket of any program listens there, which joining a SO_REUSEPORT group
/// would not tell.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(addr))
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

/// A non-blocking listening socket for one SOCKS BIND: on `bind` when
/// given, else on the local address this host routes from toward `toward`
/// (what a connect to it would use); the system picks the port.
pub fn bind_listener(toward: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpListener> {
    let ip = match bind {
        Some(ip) => ip,
        None => {
            // A UDP connect sends nothing: it only asks the routing table.
            let probe = UdpSocket::bind(match toward {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
            })?;
            probe.connect(toward)?;
            probe.local_addr()?.ip()
        }
    };
    let addr = SocketAddr::new(ip, 0);
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(8)?;
    Ok(s.into())
}

/// Whether a socket accepted from a listener made here still needs
/// TCP_NODELAY set: not on Linux, where it inherits the listener's.
pub const fn accepted_nodelay() -> bool {
    !cfg!(target_os = "linux")
}

/// A connection a BIND listener accepted, made ready to relay.
pub fn bind_accepted(s: &TcpStream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    s.set_nodelay(true)
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

/// A non-blocking UDP socket on `[::]` (any port) with IPV6_V6ONLY off:
/// it reaches IPv4 peers too, as IPv4-mapped addresses.
pub fn udp_bind_dual() -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(SocketAddr::from(([0u16; 8], 0))))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The setsockopt(2) saved per accepted connection rests on this.
    #[test]
    fn an_accepted_socket_is_without_nagle() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = addr.parse().expect("address");
            let Ok(l) = tcp_listener(addr, false, None) else {
                // No IPv6 on this machine.
                assert!(addr.is_ipv6(), "cannot listen on {addr}");
                continue;
            };
            let to = l.local_addr().expect("local address");
            let _c = TcpStream::connect(to).expect("connect");
            l.set_nonblocking(false).expect("blocking");
            let (a, _) = l.accept().expect("accept");
            if !accepted_nodelay() {
                a.set_nodelay(true).expect("nodelay");
            }
            assert!(a.nodelay().expect("nodelay"), "accepted on {addr}");
        }
    }
}
