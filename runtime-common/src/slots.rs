//! [`Slots`]: what a runtime keeps per id of the core's (a connection, a
//! listener, a UDP mapping), at the id's index, with the id beside it to
//! check: an id of an older generation at a reused index finds nothing,
//! as the core ignores a stale id.

use portico_core::{ConnId, ListenerId};

use crate::table::UdpId;

/// An id of the core's: a slot index and a generation.
pub trait Key: Copy + Eq {
    fn index(self) -> usize;
}

impl Key for ConnId {
    #[inline]
    fn index(self) -> usize {
        ConnId::index(self)
    }
}

impl Key for ListenerId {
    #[inline]
    fn index(self) -> usize {
        ListenerId::index(self)
    }
}

impl Key for UdpId {
    #[inline]
    fn index(self) -> usize {
        UdpId::index(self)
    }
}

/// Values by id.
pub struct Slots<K, T> {
    slots: Vec<Option<(K, T)>>,
}

impl<K, T> Default for Slots<K, T> {
    fn default() -> Self {
        Slots { slots: Vec::new() }
    }
}

impl<K: Key, T> Slots<K, T> {
    /// Puts `value` at `key`'s index; what was there (of any generation).
    pub fn insert(&mut self, key: K, value: T) -> Option<T> {
        let i = key.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i].replace((key, value)).map(|(_, v)| v)
    }

    #[inline]
    pub fn get(&self, key: K) -> Option<&T> {
        match self.slots.get(key.index()) {
            Some(Some((k, v))) if *k == key => Some(v),
            _ => None,
        }
    }

    #[inline]
    pub fn get_mut(&mut self, key: K) -> Option<&mut T> {
        match self.slots.get_mut(key.index()) {
            Some(Some((k, v))) if *k == key => Some(v),
            _ => None,
        }
    }

    /// Takes out what `key` names.
    pub fn remove(&mut self, key: K) -> Option<T> {
        let slot = self.slots.get_mut(key.index())?;
        match slot {
            Some((k, _)) if *k == key => slot.take().map(|(_, v)| v),
            _ => None,
        }
    }

    /// What sits at index `i`, with its id (a readiness token names an
    /// index, not a generation).
    #[inline]
    pub fn at(&self, i: usize) -> Option<(K, &T)> {
        let (k, v) = self.slots.get(i)?.as_ref()?;
        Some((*k, v))
    }

    #[inline]
    pub fn at_mut(&mut self, i: usize) -> Option<(K, &mut T)> {
        let (k, v) = self.slots.get_mut(i)?.as_mut()?;
        Some((*k, v))
    }

    /// Every value, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> {
        self.slots.iter().flatten().map(|(k, v)| (*k, v))
    }
}
