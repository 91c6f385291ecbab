//! A worker's topics: topic -> subscribers, and each linked connection's side entry.
//!
//! Per worker and single-threaded, like the rest of a worker's state. A publish walks one topic's
//! subscriber `Vec` (contiguous ids, no hashing per subscriber). Unsubscribing is O(1): each
//! subscription remembers its position in the topic's list, and `swap_remove` fixes the one entry
//! it moves.
//!
//! Idle memory: connections that never subscribe (nor hand out a handle) have no entry here and
//! carry nothing for it in their registry slot except one flag bit (`LINKED` in the worker).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::registry::ConnId;

/// One topic: its name and subscribers (on this worker).
#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subs: Vec<ConnId>,
}

/// What a linked connection has beyond its registry slot.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// (topic index, position in the topic's subscriber list).
    topics: Vec<(u32, u32)>,
    /// Shared with the connection's `ConnHandle`s: cleared when the connection closes, so that a
    /// handle fails at once.
    pub(crate) alive: Option<Arc<AtomicBool>>,
}

/// Topics and links of one worker.
#[derive(Debug, Default)]
pub(crate) struct TopicTable {
    by_name: HashMap<Arc<str>, u32>,
    topics: slab::Slab<Topic>,
    links: HashMap<ConnId, Links>,
}

impl TopicTable {
    /// The side entry of `id`, created empty if missing.
    pub(crate) fn links_mut(&mut self, id: ConnId) -> &mut Links {
        self.links.entry(id).or_default()
    }

    /// Subscribes `id` to `name`: `None` if it already was, `Some(true)` if `name` had no
    /// subscriber on this worker before, `Some(false)` otherwise.
    pub(crate) fn subscribe(&mut self, id: ConnId, name: &str) -> Option<bool> {
        let (t, created) = match self.by_name.get(name) {
            Some(&t) => (t, false),
            None => {
                let name: Arc<str> = Arc::from(name);
                let t = self.topics.insert(Topic {
                    name: Arc::clone(&name),
                    subs: Vec::new(),
                }) as u32;
                self.by_name.insert(name, t);
                (t, true)
            }
        };
        let links = self.links.entry(id).or_default();
        if links.topics.iter().any(|&(x, _)| x == t) {
            return None;
        }
        let topic = &mut self.topics[t as usize];
        links.topics.push((t, topic.subs.len() as u32));
        topic.subs.push(id);
        Some(created)
    }

    /// Unsubscribes `id` from `name`: `None` if it was not subscribed, `Some(name)` if that was
    /// the topic's last subscriber on this worker (the topic is gone), `Some(None)` otherwise.
    pub(crate) fn unsubscribe(&mut self, id: ConnId, name: &str) -> Option<Option<Arc<str>>> {
        let &t = self.by_name.get(name)?;
        let links = self.links.get_mut(&id)?;
        let i = links.topics.iter().position(|&(x, _)| x == t)?;
        let (_, pos) = links.topics.swap_remove(i);
        if links.topics.is_empty() && links.alive.is_none() {
            self.links.remove(&id);
        }
        Some(self.detach(t, pos))
    }

    /// Removes subscriber `pos` of topic `t`, fixing the position of the one moved into its place
    /// and dropping the topic once empty (then its name is returned).
    fn detach(&mut self, t: u32, pos: u32) -> Option<Arc<str>> {
        let topic = &mut self.topics[t as usize];
        topic.subs.swap_remove(pos as usize);
        if let Some(&moved) = topic.subs.get(pos as usize) {
            let entry = self
                .links
                .get_mut(&moved)
                .and_then(|l| l.topics.iter_mut().find(|(x, _)| *x == t))
                .expect("every subscriber has a link entry for its topic");
            entry.1 = pos;
        }
        if topic.subs.is_empty() {
            let topic = self.topics.remove(t as usize);
            self.by_name.remove(&topic.name);
            return Some(topic.name);
        }
        None
    }

    /// The connection is closed: every subscription goes (`ended` is told each topic's name, and
    /// whether that was the topic's last subscriber on this worker) and its handles fail from now
    /// on.
    pub(crate) fn unlink(&mut self, id: ConnId, mut ended: impl FnMut(&Arc<str>, bool)) {
        let Some(links) = self.links.remove(&id) else {
            return;
        };
        if let Some(alive) = &links.alive {
            alive.store(false, Ordering::Release);
        }
        for &(t, pos) in &links.topics {
            let name = Arc::clone(&self.topics[t as usize].name);
            let gone = self.detach(t, pos).is_some();
            ended(&name, gone);
        }
    }

    /// Subscribers of `name` on this worker.
    pub(crate) fn subscribers(&self, name: &str) -> &[ConnId] {
        match self.by_name.get(name) {
            Some(&t) => &self.topics[t as usize].subs,
            None => &[],
        }
    }

    /// Whether `id` is subscribed to `name`.
    pub(crate) fn is_subscribed(&self, id: ConnId, name: &str) -> bool {
        let Some(&t) = self.by_name.get(name) else {
            return false;
        };
        self.links
            .get(&id)
            .is_some_and(|l| l.topics.iter().any(|&(x, _)| x == t))
    }

    /// Topics with at least one subscriber on this worker.
    #[cfg(test)]
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(t: &TopicTable) {
        for (ti, topic) in &t.topics {
            for (pos, id) in topic.subs.iter().enumerate() {
                let l = &t.links[id];
                assert!(l.topics.contains(&(ti as u32, pos as u32)));
            }
        }
    }

    #[test]
    fn subscribe_unsubscribe_unlink_keep_positions_right() {
        let mut t = TopicTable::default();
        let ids: Vec<ConnId> = (0..50).map(|i| ConnId::new(i, 0)).collect();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(
                t.subscribe(id, "all"),
                Some(i == 0),
                "first one creates the topic"
            );
            if i % 2 == 0 {
                assert_eq!(t.subscribe(id, "even"), Some(i == 0));
            }
        }
        assert_eq!(t.subscribe(ids[0], "all"), None, "already subscribed");
        assert_eq!(t.subscribers("all").len(), 50);
        assert_eq!(t.subscribers("even").len(), 25);
        check(&t);
        for &id in ids.iter().step_by(3) {
            assert_eq!(t.unsubscribe(id, "all"), Some(None));
            assert_eq!(t.unsubscribe(id, "all"), None);
            check(&t);
        }
        for &id in ids.iter().step_by(4) {
            t.unlink(id, |_, gone| assert!(!gone));
            check(&t);
        }
        let mut left: Vec<_> = t.subscribers("all").to_vec();
        left.sort();
        let want: Vec<_> = (0..50u32)
            .filter(|i| i % 3 != 0 && i % 4 != 0)
            .map(|i| ConnId::new(i, 0))
            .collect();
        assert_eq!(left, want);
        let mut ended = Vec::new();
        for &id in &ids {
            t.unlink(id, |name, gone| {
                if gone {
                    ended.push(name.to_string());
                }
            });
        }
        ended.sort();
        assert_eq!(
            ended,
            ["all", "even"],
            "each topic ends once, with its last subscriber"
        );
        assert_eq!(t.topic_count(), 0);
        assert!(t.links.is_empty() && t.by_name.is_empty());
        assert!(t.subscribers("all").is_empty());
    }
}
