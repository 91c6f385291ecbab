//! The worker's subprotocol table: what each connection's 101 named, behind a one-byte tag in the
//! connection slot (see the `entry_size` test).
//!
//! Tags `1..=MAX_INTERNED` index interned names: the configured subprotocols first (pinned), then
//! any other name a handler chose (or, for an outgoing connection, the server picked), counted by
//! the live connections that name it and freed when the last of them is removed, so the table
//! holds no dead names and never more than `MAX_INTERNED`. A name that finds the table full is
//! kept for its connection alone in a side table under the tag `OVERFLOW` (as the worker's
//! `peers6` keeps IPv6 addresses), removed with it. Memory thus follows the live connections: a
//! handler that picks a fresh name per connection (say, echoing what the client offered) costs at
//! most one name per live connection, and the common case (a few names shared by many
//! connections) costs nothing per connection.

use std::collections::HashMap;

use crate::server::registry::ConnId;

/// The tag of a name kept in the side table.
const OVERFLOW: u8 = u8::MAX;
/// Interned names at most (tags `1..=MAX_INTERNED`).
const MAX_INTERNED: usize = OVERFLOW as usize - 1;

#[derive(Debug)]
struct Slot {
    name: Box<str>,
    /// Live connections that name it (not counted for a configured slot, which is never freed).
    live: u32,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Protocols {
    slots: Vec<Slot>,
    /// The first `configured` slots are the configured subprotocols.
    configured: usize,
    /// Freed slots (indices), reused before the table grows.
    free: Vec<u8>,
    /// Names of connections tagged `OVERFLOW`.
    overflow: HashMap<ConnId, Box<str>>,
}

impl Protocols {
    /// A table holding the configured subprotocols (past `MAX_INTERNED` of them, the others are
    /// kept per connection when chosen).
    pub(crate) fn new(configured: &[String]) -> Self {
        let slots: Vec<Slot> = configured
            .iter()
            .take(MAX_INTERNED)
            .map(|p| Slot {
                name: p.as_str().into(),
                live: 0,
            })
            .collect();
        Protocols {
            configured: slots.len(),
            slots,
            free: Vec::new(),
            overflow: HashMap::new(),
        }
    }

    /// The tag for connection `id`, whose 101 named `name` (release it with [`release`] when the
    /// connection is removed).
    ///
    /// [`release`]: Protocols::release
    pub(crate) fn intern(&mut self, id: ConnId, name: &str) -> u8 {
        let found = self
            .slots
            .iter()
            .enumerate()
            .position(|(i, s)| (i < self.configured || s.live > 0) && &*s.name == name);
        let index = match found {
            Some(i) => i,
            None => match self.free.pop() {
                Some(i) => {
                    self.slots[usize::from(i)].name = name.into();
                    usize::from(i)
                }
                None if self.slots.len() < MAX_INTERNED => {
                    self.slots.push(Slot {
                        name: name.into(),
                        live: 0,
                    });
                    self.slots.len() - 1
                }
                None => {
                    self.overflow.insert(id, name.into());
                    return OVERFLOW;
                }
            },
        };
        if index >= self.configured {
            self.slots[index].live += 1;
        }
        // Below MAX_INTERNED, so the tag is at most OVERFLOW - 1.
        (index + 1) as u8
    }

    /// Connection `id`, tagged `tag`, is gone.
    pub(crate) fn release(&mut self, id: ConnId, tag: u8) {
        match tag {
            0 => {}
            OVERFLOW => {
                self.overflow.remove(&id);
            }
            _ => {
                let i = usize::from(tag) - 1;
                if i >= self.configured {
                    let slot = &mut self.slots[i];
                    slot.live -= 1;
                    if slot.live == 0 {
                        // An empty `Box<str>` owns no memory.
                        slot.name = Box::default();
                        self.free.push(tag - 1);
                    }
                }
            }
        }
    }

    /// The name of connection `id`, tagged `tag`.
    pub(crate) fn get(&self, id: ConnId, tag: u8) -> Option<&str> {
        match tag {
            0 => None,
            OVERFLOW => self.overflow.get(&id).map(|p| &**p),
            _ => Some(&self.slots[usize::from(tag) - 1].name),
        }
    }

    /// Interned names held (configured ones included) and names in the side table.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let interned = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i < self.configured || s.live > 0)
            .count();
        (interned, self.overflow.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_names_are_pinned() {
        let mut t = Protocols::new(&["chat".into(), "v2".into()]);
        let a = t.intern(ConnId(1), "v2");
        assert_eq!(a, 2);
        t.release(ConnId(1), a);
        assert_eq!(t.get(ConnId(9), 2), Some("v2"));
        assert_eq!(t.held(), (2, 0));
    }

    #[test]
    fn names_are_shared_counted_and_freed() {
        let mut t = Protocols::new(&[]);
        let a = t.intern(ConnId(1), "x");
        let b = t.intern(ConnId(2), "x");
        assert_eq!(a, b);
        t.release(ConnId(1), a);
        assert_eq!(t.get(ConnId(2), b), Some("x"));
        t.release(ConnId(2), b);
        assert_eq!(t.held(), (0, 0));
        // The freed slot is reused for another name.
        let c = t.intern(ConnId(3), "y");
        assert_eq!(c, a);
        assert_eq!(t.get(ConnId(3), c), Some("y"));
        // An empty name is a name.
        let e = t.intern(ConnId(4), "");
        assert_eq!(t.get(ConnId(4), e), Some(""));
    }

    #[test]
    fn past_the_table_names_are_kept_per_connection() {
        let mut t = Protocols::new(&["c".into()]);
        let tags: Vec<u8> = (0..300u64)
            .map(|i| t.intern(ConnId(i), &format!("p{i}")))
            .collect();
        for (i, &tag) in tags.iter().enumerate() {
            assert_eq!(t.get(ConnId(i as u64), tag), Some(&*format!("p{i}")));
        }
        assert_eq!(t.held(), (MAX_INTERNED, 300 - (MAX_INTERNED - 1)));
        for (i, &tag) in tags.iter().enumerate() {
            t.release(ConnId(i as u64), tag);
        }
        assert_eq!(t.held(), (1, 0));
        // The configured name survives, the table takes new names again.
        assert_ne!(t.intern(ConnId(1000), "new"), OVERFLOW);
        assert_eq!(t.intern(ConnId(1001), "c"), 1);
    }
}
