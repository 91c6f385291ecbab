//! The worker's connections: a paged slab with generations.
//!
//! Pages of [`PAGE`] slots are allocated as needed and never move, so growing by one connection
//! costs at most one page, not a doubling of one big vector (which would, at 10k connections, hold
//! room for 16k). A slot's generation changes each time it is freed, so a [`ConnId`] (slot +
//! generation) held by the application, or a stale readiness event, never reaches the next
//! connection that reuses the slot.

/// Slots per page.
pub(crate) const PAGE: usize = 256;

/// Generations use 28 bits: connection tokens then never collide with the worker's special tokens
/// (top bit set, epoll) and fit in the 60-bit payload of an io_uring `user_data` (the top 4 bits
/// name the operation).
const GEN_MASK: u32 = 0x0fff_ffff;

/// Identifies a connection within its worker: slot index and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    pub(crate) fn new(index: u32, gen: u32) -> Self {
        ConnId(u64::from(gen) << 32 | u64::from(index))
    }
    /// The slot index.
    pub fn index(self) -> u32 {
        self.0 as u32
    }
    pub(crate) fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The id as one number (stable while the connection lives).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
enum Slot<T> {
    Vacant { gen: u32, next: u32 },
    Occupied { gen: u32, value: T },
}

/// A paged slab of `T` keyed by [`ConnId`].
#[derive(Debug)]
pub(crate) struct Registry<T> {
    pages: Vec<Vec<Slot<T>>>,
    /// Head of the free list (`u32::MAX`: none).
    free: u32,
    len: usize,
}

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Registry {
            pages: Vec::new(),
            free: u32::MAX,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, index: u32) -> Option<&Slot<T>> {
        let i = index as usize;
        self.pages.get(i / PAGE)?.get(i % PAGE)
    }

    fn slot_mut(&mut self, index: u32) -> Option<&mut Slot<T>> {
        let i = index as usize;
        self.pages.get_mut(i / PAGE)?.get_mut(i % PAGE)
    }

    /// Stores `value`, returning its id.
    pub(crate) fn insert(&mut self, value: T) -> ConnId {
        self.len += 1;
        if self.free != u32::MAX {
            let index = self.free;
            let slot = self.slot_mut(index).expect("free list points at a slot");
            let Slot::Vacant { gen, next } = *slot else {
                unreachable!("free list points at an occupied slot")
            };
            *slot = Slot::Occupied { gen, value };
            self.free = next;
            return ConnId::new(index, gen);
        }
        match self.pages.last() {
            Some(page) if page.len() < PAGE => {}
            _ => self.pages.push(Vec::with_capacity(PAGE)),
        }
        let index = ((self.pages.len() - 1) * PAGE + self.pages.last().map_or(0, Vec::len)) as u32;
        let page = self.pages.last_mut().expect("a page was just ensured");
        page.push(Slot::Occupied { gen: 0, value });
        ConnId::new(index, 0)
    }

    /// The value of a live id.
    pub(crate) fn get(&self, id: ConnId) -> Option<&T> {
        match self.slot(id.index())? {
            Slot::Occupied { gen, value } if *gen == id.gen() => Some(value),
            _ => None,
        }
    }

    /// The value of a live id.
    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        match self.slot_mut(id.index())? {
            Slot::Occupied { gen, value } if *gen == id.gen() => Some(value),
            _ => None,
        }
    }

    /// Removes a live id's value; its slot's next occupant gets a new generation.
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<T> {
        let free = self.free;
        let slot = self.slot_mut(id.index())?;
        match slot {
            Slot::Occupied { gen, .. } if *gen == id.gen() => {}
            _ => return None,
        }
        let next_gen = (id.gen() + 1) & GEN_MASK;
        let old = std::mem::replace(
            slot,
            Slot::Vacant {
                gen: next_gen,
                next: free,
            },
        );
        self.free = id.index();
        self.len -= 1;
        match old {
            Slot::Occupied { value, .. } => Some(value),
            Slot::Vacant { .. } => unreachable!(),
        }
    }

    /// Ids of every live value, in slot order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.pages.iter().enumerate().flat_map(|(p, page)| {
            page.iter()
                .enumerate()
                .filter_map(move |(i, slot)| match slot {
                    Slot::Occupied { gen, .. } => Some(ConnId::new((p * PAGE + i) as u32, *gen)),
                    Slot::Vacant { .. } => None,
                })
        })
    }

    /// Bytes of one slot (for memory accounting).
    #[cfg(test)]
    pub(crate) const fn slot_size() -> usize {
        std::mem::size_of::<Slot<T>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_guard_reuse() {
        let mut r = Registry::new();
        let a = r.insert("a");
        let b = r.insert("b");
        assert_eq!(r.get(a), Some(&"a"));
        assert_eq!(r.remove(a), Some("a"));
        assert_eq!(r.get(a), None);
        assert_eq!(r.remove(a), None);
        let c = r.insert("c");
        assert_eq!(c.index(), a.index(), "the slot is reused");
        assert_ne!(c, a);
        assert_eq!(r.get(a), None, "a stale id does not reach the new value");
        assert_eq!(r.get(c), Some(&"c"));
        assert_eq!(r.len(), 2);
        assert_eq!(r.ids().collect::<Vec<_>>(), vec![c, b]);
    }

    #[test]
    fn pages_grow_one_at_a_time() {
        let mut r = Registry::new();
        let ids: Vec<_> = (0..PAGE * 2 + 1).map(|i| r.insert(i)).collect();
        assert_eq!(r.pages.len(), 3);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(r.get(*id), Some(&i));
        }
        for id in &ids {
            r.remove(*id);
        }
        assert_eq!(r.len(), 0);
        assert_eq!(r.ids().count(), 0);
    }
}
