//! The UDP sockets of one table: its UDP mapped ports, one connected
//! socket per mapping, and two unconnected ones per SOCKS UDP association
//! (the client's side and the outward side). Datagrams are small and independent: each is read
//! straight into the core, and what the core queued is sent as it is; one
//! that cannot go now is dropped, as a network would.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use portico_core::{ConnId, ListenerId};

use crate::slots::Slots;
use crate::steps::UdpCmd;
use crate::table::{Table, UdpId, Via};

/// Which UDP socket of a table; a runtime keys its waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpKey {
    /// The UDP port of the listener with this index.
    Port(usize),
    /// The socket of the mapping with this index.
    Mapping(usize),
    /// A socket of the association of the connection with this index:
    /// the outward one (true) or the client's side.
    Association(usize, bool),
}

impl UdpKey {
    /// The key as one number from `base` up (two per association), for a
    /// runtime's token space.
    pub fn association_token(index: usize, outward: bool, base: usize) -> usize {
        base + 2 * index + usize::from(outward)
    }

    /// The association key of a number [`UdpKey::association_token`] gave.
    pub fn from_association_token(token: usize, base: usize) -> UdpKey {
        let i = token - base;
        UdpKey::Association(i / 2, i % 2 == 1)
    }
}

/// What opening a UDP socket came to, for the core to hear.
#[must_use]
pub enum Opened {
    /// A UDP port opened (its local address), or why not.
    Port(ListenerId, io::Result<SocketAddr>),
    /// A mapping's socket could not be opened.
    MappingFailed(UdpId),
    /// An association's sockets opened (the client side's address), or
    /// why not.
    Association(ConnId, io::Result<SocketAddr>),
}

impl Opened {
    pub fn tell(self, table: &mut Table) {
        match self {
            Opened::Port(listener, r) => table.listened(listener, r),
            Opened::MappingFailed(id) => table.handle_udp_failed(id),
            Opened::Association(conn, r) => table.associated(conn, r),
        }
    }
}

/// An association's two sockets, registered: the client's side bound to
/// `client_side`, the outward one from `outward` (any address of the
/// client side's family when not given; `[::]` with IPV6_V6ONLY off when
/// `dual`). On failure, the sockets already registered, for the runtime to
/// let go of.
fn open_pair(
    client_side: SocketAddr,
    outward: Option<std::net::IpAddr>,
    dual: bool,
    mut register: impl FnMut(&UdpSocket, bool) -> io::Result<()>,
) -> Result<[UdpSocket; 2], (io::Error, Vec<UdpSocket>)> {
    let c = crate::net::udp_bind(client_side).map_err(|e| (e, vec![]))?;
    let from = outward.unwrap_or(match client_side {
        SocketAddr::V4(_) => [0u8; 4].into(),
        SocketAddr::V6(_) => [0u16; 8].into(),
    });
    let o = if dual {
        crate::net::udp_bind_dual()
    } else {
        crate::net::udp_bind(SocketAddr::new(from, 0))
    }
    .map_err(|e| (e, vec![]))?;
    register(&c, false).map_err(|e| (e, vec![]))?;
    if let Err(e) = register(&o, true) {
        return Err((e, vec![c]));
    }
    Ok([c, o])
}

/// A table's UDP sockets.
#[derive(Default)]
pub struct Datagrams {
    ports: Slots<ListenerId, UdpSocket>,
    maps: Slots<UdpId, UdpSocket>,
    /// Per association: the client's side, then the outward side.
    assocs: Slots<ConnId, [UdpSocket; 2]>,
}

impl Datagrams {
    /// Carries out `cmd`, having the runtime `register` each socket it
    /// opens for waiting. Returns what to tell the core (it opened
    /// something), and the sockets closed or replaced, for the runtime to
    /// let go of.
    pub fn apply(
        &mut self,
        cmd: UdpCmd,
        mut register: impl FnMut(&UdpSocket, UdpKey) -> io::Result<()>,
    ) -> (Option<Opened>, Vec<UdpSocket>) {
        let one = |(opened, gone): (Option<Opened>, Option<UdpSocket>)| {
            (opened, gone.into_iter().collect())
        };
        one(match cmd {
            UdpCmd::Associate(conn, client_side, outward, dual) => {
                let key = |out| UdpKey::Association(conn.index(), out);
                let opened = open_pair(client_side, outward, dual, |u, out| register(u, key(out)));
                return match opened {
                    Ok(pair) => {
                        let local = pair[0].local_addr();
                        let gone = self.assocs.insert(conn, pair);
                        (
                            Some(Opened::Association(conn, local)),
                            gone.into_iter().flatten().collect(),
                        )
                    }
                    Err((e, gone)) => (Some(Opened::Association(conn, Err(e))), gone),
                };
            }
            UdpCmd::Disassociate(conn) => {
                return (
                    None,
                    self.assocs.remove(conn).into_iter().flatten().collect(),
                );
            }
            UdpCmd::Listen(id, addr) => {
                let opened = crate::net::udp_bind(addr).and_then(|u| {
                    register(&u, UdpKey::Port(id.index()))?;
                    Ok(u)
                });
                match opened {
                    Ok(u) => {
                        let local = u.local_addr().unwrap_or(addr);
                        (Some(Opened::Port(id, Ok(local))), self.ports.insert(id, u))
                    }
                    Err(e) => (Some(Opened::Port(id, Err(e))), None),
                }
            }
            UdpCmd::Unlisten(id) => (None, self.ports.remove(id)),
            UdpCmd::Open(id, bind, dest) => {
                let opened = crate::net::udp_connect(bind, dest).and_then(|u| {
                    register(&u, UdpKey::Mapping(id.index()))?;
                    Ok(u)
                });
                match opened {
                    Ok(u) => (None, self.maps.insert(id, u)),
                    Err(_) => (Some(Opened::MappingFailed(id)), None),
                }
            }
            UdpCmd::Close(id) => (None, self.maps.remove(id)),
        })
    }

    /// The socket `key` names, if open.
    pub fn socket(&self, key: UdpKey) -> Option<&UdpSocket> {
        match key {
            UdpKey::Port(i) => self.ports.at(i).map(|(_, u)| u),
            UdpKey::Mapping(i) => self.maps.at(i).map(|(_, u)| u),
            UdpKey::Association(i, out) => self.assocs.at(i).map(|(_, p)| &p[usize::from(out)]),
        }
    }

    /// Every open socket, to register them all at once.
    pub fn sockets(&self) -> impl Iterator<Item = (UdpKey, &UdpSocket)> {
        let ports = self
            .ports
            .iter()
            .map(|(id, u)| (UdpKey::Port(id.index()), u));
        let maps = self
            .maps
            .iter()
            .map(|(id, u)| (UdpKey::Mapping(id.index()), u));
        let assocs = self.assocs.iter().flat_map(|(c, [a, b])| {
            [
                (UdpKey::Association(c.index(), false), a),
                (UdpKey::Association(c.index(), true), b),
            ]
        });
        ports.chain(maps).chain(assocs)
    }

    /// Reads one datagram from `key`'s socket into the core; false when
    /// there was none. An error ends the turn too: ICMP errors (port
    /// unreachable) surface here, and the mapping lives on until it idles
    /// out.
    pub fn recv(&self, table: &mut Table, key: UdpKey) -> bool {
        match key {
            UdpKey::Port(i) => {
                let Some((id, u)) = self.ports.at(i) else {
                    return false;
                };
                match u.recv_from(table.datagram_buf()) {
                    Ok((n, from)) => table.handle_datagram(id, from, n),
                    Err(_) => return false,
                }
            }
            UdpKey::Mapping(i) => {
                let Some((id, u)) = self.maps.at(i) else {
                    return false;
                };
                match u.recv(table.datagram_buf()) {
                    Ok(n) => table.handle_reply(id, n),
                    Err(_) => return false,
                }
            }
            UdpKey::Association(i, outward) => {
                let Some((conn, pair)) = self.assocs.at(i) else {
                    return false;
                };
                match pair[usize::from(outward)].recv_from(table.datagram_buf()) {
                    Ok((n, from)) => table.handle_association_datagram(conn, outward, from, n),
                    Err(_) => return false,
                }
            }
        }
        true
    }

    /// Sends every datagram the core has queued (asked after every turn:
    /// inline, so that asking costs little when there is none).
    #[inline]
    pub fn send(&self, table: &mut Table) {
        while let Some((via, data)) = table.poll_datagram() {
            match via {
                Via::Listener(id, to) => {
                    if let Some(u) = self.ports.get(id) {
                        let _ = u.send_to(&data, to);
                    }
                }
                Via::Mapping(id) => {
                    if let Some(u) = self.maps.get(id) {
                        let _ = u.send(&data);
                    }
                }
                Via::Association { conn, outward, to } => {
                    if let Some(pair) = self.assocs.get(conn) {
                        let _ = pair[usize::from(outward)].send_to(&data, to);
                    }
                }
            }
        }
    }
}
