//! The UDP sockets of one table: its UDP mapped ports, and one connected
//! socket per mapping. Datagrams are small and independent: each is read
//! straight into the core, and what the core queued is sent as it is; one
//! that cannot go now is dropped, as a network would.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use portico_core::ListenerId;

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
}

/// What opening a UDP socket came to, for the core to hear.
#[must_use]
pub enum Opened {
    /// A UDP port opened (its local address), or why not.
    Port(ListenerId, io::Result<SocketAddr>),
    /// A mapping's socket could not be opened.
    MappingFailed(UdpId),
}

impl Opened {
    pub fn tell(self, table: &mut Table) {
        match self {
            Opened::Port(listener, r) => table.listened(listener, r),
            Opened::MappingFailed(id) => table.handle_udp_failed(id),
        }
    }
}

/// A table's UDP sockets.
#[derive(Default)]
pub struct Datagrams {
    ports: Slots<ListenerId, UdpSocket>,
    maps: Slots<UdpId, UdpSocket>,
}

impl Datagrams {
    /// Carries out `cmd`, having the runtime `register` each socket it
    /// opens for waiting. Returns what to tell the core (it opened
    /// something), and a socket closed or replaced, for the runtime to let
    /// go of.
    pub fn apply(
        &mut self,
        cmd: UdpCmd,
        register: impl FnOnce(&UdpSocket, UdpKey) -> io::Result<()>,
    ) -> (Option<Opened>, Option<UdpSocket>) {
        match cmd {
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
        }
    }

    /// The socket `key` names, if open.
    pub fn socket(&self, key: UdpKey) -> Option<&UdpSocket> {
        match key {
            UdpKey::Port(i) => self.ports.at(i).map(|(_, u)| u),
            UdpKey::Mapping(i) => self.maps.at(i).map(|(_, u)| u),
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
        ports.chain(maps)
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
            }
        }
    }
}
