//! The UDP sockets of one table: its UDP mapped ports, and one connected
//! socket per mapping. Datagrams are small and independent: each is read
//! straight into the core, and what the core queued is sent as it is; one
//! that cannot go now is dropped, as a network would.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use portico_core::ListenerId;

use crate::table::{Table, UdpId, Via};

/// Which UDP socket of a table; a runtime keys its waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpKey {
    /// The UDP port of the listener with this index.
    Port(usize),
    /// The socket of the mapping with this index.
    Mapping(usize),
}

/// A table's UDP sockets, by index, each with the id it was opened for (a
/// stale id finds nothing).
#[derive(Default)]
pub struct Datagrams {
    ports: Vec<Option<(ListenerId, UdpSocket)>>,
    maps: Vec<Option<(UdpId, UdpSocket)>>,
}

fn put<I>(
    slots: &mut Vec<Option<(I, UdpSocket)>>,
    i: usize,
    v: (I, UdpSocket),
) -> Option<UdpSocket> {
    if slots.len() <= i {
        slots.resize_with(i + 1, || None);
    }
    slots[i].replace(v).map(|(_, u)| u)
}

fn take<I: PartialEq>(slots: &mut [Option<(I, UdpSocket)>], i: usize, id: I) -> Option<UdpSocket> {
    let slot = slots.get_mut(i)?;
    if slot.as_ref().is_some_and(|(k, _)| *k == id) {
        slot.take().map(|(_, u)| u)
    } else {
        None
    }
}

fn find<I: PartialEq>(slots: &[Option<(I, UdpSocket)>], i: usize, id: I) -> Option<&UdpSocket> {
    match slots.get(i) {
        Some(Some((k, u))) if *k == id => Some(u),
        _ => None,
    }
}

impl Datagrams {
    /// Opens UDP port `listener` on `addr` and has the runtime `register`
    /// it for waiting: its local address (or why it failed) for
    /// [`Table::listened`], and a socket it replaced, for the runtime to
    /// let go of.
    pub fn listen(
        &mut self,
        listener: ListenerId,
        addr: SocketAddr,
        register: impl FnOnce(&UdpSocket, UdpKey) -> io::Result<()>,
    ) -> (io::Result<SocketAddr>, Option<UdpSocket>) {
        let i = listener.index();
        let opened = crate::net::udp_bind(addr).and_then(|u| {
            register(&u, UdpKey::Port(i))?;
            Ok(u)
        });
        match opened {
            Ok(u) => {
                let local = u.local_addr().unwrap_or(addr);
                (Ok(local), put(&mut self.ports, i, (listener, u)))
            }
            Err(e) => (Err(e), None),
        }
    }

    /// Closes UDP port `listener`: its socket, for the runtime to let go
    /// of.
    pub fn unlisten(&mut self, listener: ListenerId) -> Option<UdpSocket> {
        take(&mut self.ports, listener.index(), listener)
    }

    /// Opens mapping `id`'s socket (from `bind`) connected to `dest` and
    /// has the runtime `register` it: a socket it replaced, or the failure
    /// to tell with [`Table::handle_udp_failed`].
    pub fn open(
        &mut self,
        id: UdpId,
        bind: Option<IpAddr>,
        dest: SocketAddr,
        register: impl FnOnce(&UdpSocket, UdpKey) -> io::Result<()>,
    ) -> io::Result<Option<UdpSocket>> {
        let i = id.index();
        let u = crate::net::udp_connect(bind, dest)?;
        register(&u, UdpKey::Mapping(i))?;
        Ok(put(&mut self.maps, i, (id, u)))
    }

    /// Closes mapping `id`'s socket: it, for the runtime to let go of.
    pub fn close(&mut self, id: UdpId) -> Option<UdpSocket> {
        take(&mut self.maps, id.index(), id)
    }

    /// Every open socket, to register them all at once.
    pub fn sockets(&self) -> impl Iterator<Item = (UdpKey, &UdpSocket)> {
        let ports = self.ports.iter().enumerate();
        let ports = ports.filter_map(|(i, s)| Some((UdpKey::Port(i), &s.as_ref()?.1)));
        let maps = self.maps.iter().enumerate();
        let maps = maps.filter_map(|(i, s)| Some((UdpKey::Mapping(i), &s.as_ref()?.1)));
        ports.chain(maps)
    }

    /// The socket `key` names, if open.
    pub fn socket(&self, key: UdpKey) -> Option<&UdpSocket> {
        match key {
            UdpKey::Port(i) => self.ports.get(i)?.as_ref().map(|s| &s.1),
            UdpKey::Mapping(i) => self.maps.get(i)?.as_ref().map(|s| &s.1),
        }
    }

    /// Reads one datagram from `key`'s socket into the core; false when
    /// there was none. An error ends the turn too: ICMP errors (port
    /// unreachable) surface here, and the mapping lives on until it idles
    /// out.
    pub fn recv(&self, table: &mut Table, key: UdpKey) -> bool {
        match key {
            UdpKey::Port(i) => {
                let Some(Some((id, u))) = self.ports.get(i) else {
                    return false;
                };
                match u.recv_from(table.datagram_buf()) {
                    Ok((n, from)) => table.handle_datagram(*id, from, n),
                    Err(_) => return false,
                }
            }
            UdpKey::Mapping(i) => {
                let Some(Some((id, u))) = self.maps.get(i) else {
                    return false;
                };
                match u.recv(table.datagram_buf()) {
                    Ok(n) => table.handle_reply(*id, n),
                    Err(_) => return false,
                }
            }
        }
        true
    }

    /// Sends every datagram the core has queued.
    pub fn send(&self, table: &mut Table) {
        while let Some((via, data)) = table.poll_datagram() {
            match via {
                Via::Listener(id, to) => {
                    if let Some(u) = find(&self.ports, id.index(), id) {
                        let _ = u.send_to(&data, to);
                    }
                }
                Via::Mapping(id) => {
                    if let Some(u) = find(&self.maps, id.index(), id) {
                        let _ = u.send(&data);
                    }
                }
            }
        }
    }
}
