//! A bounded map that forgets the entry used least recently when full.
//!
//! Both maps are ordered (`BTreeMap`), so nothing here depends on hash order;
//! every operation is O(log n).

use std::collections::BTreeMap;

/// At most `capacity` entries; inserting into a full map evicts the entry
/// used least recently. A lookup through [`get_mut`](Self::get_mut) or
/// [`touch`](Self::touch) counts as a use; [`peek`](Self::peek) does not.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    entries: BTreeMap<K, (V, u64)>,
    by_use: BTreeMap<u64, K>,
    tick: u64,
    capacity: usize,
    evicted: u64,
}

impl<K: Ord + Clone, V> Lru<K, V> {
    /// An empty map holding at most `capacity` (at least one) entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Lru {
            entries: BTreeMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries evicted to make room, since the start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The value of `key` without counting a use.
    #[cfg(test)]
    pub(crate) fn peek(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// The value of `key`, counting a use.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.touch(key);
        self.entries.get_mut(key).map(|(v, _)| v)
    }

    /// Marks `key` as just used.
    pub(crate) fn touch(&mut self, key: &K) {
        let Some((_, used)) = self.entries.get_mut(key) else {
            return;
        };
        self.by_use.remove(used);
        self.tick += 1;
        *used = self.tick;
        self.by_use.insert(self.tick, key.clone());
    }

    /// The value of `key`, inserted with `make` (evicting the least recently
    /// used entry if full) when absent; counts as a use.
    pub(crate) fn entry(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if self.entries.contains_key(&key) {
            self.touch(&key);
        } else {
            if self.entries.len() >= self.capacity
                && let Some((_, oldest)) = self.by_use.pop_first()
            {
                self.entries.remove(&oldest);
                self.evicted += 1;
            }
            self.tick += 1;
            self.by_use.insert(self.tick, key.clone());
            self.entries.insert(key.clone(), (make(), self.tick));
        }
        &mut self.entries.get_mut(&key).expect("present or inserted above").0
    }

    /// Sets `key` to `value`; counts as a use.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let mut value = Some(value);
        let slot = self.entry(key, || value.take().expect("taken once"));
        if let Some(value) = value {
            *slot = value;
        }
    }

    /// Removes and returns the entry used least recently.
    pub(crate) fn pop(&mut self) -> Option<(K, V)> {
        let (_, key) = self.by_use.pop_first()?;
        let (value, _) = self.entries.remove(&key)?;
        Some((key, value))
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, used) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_evicts_the_least_recently_used_and_keeps_the_newcomer() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get_mut(&"a"), Some(&mut 1)); // b is now the oldest
        lru.insert("c", 3);
        assert_eq!((lru.len(), lru.evicted()), (2, 1));
        assert_eq!(lru.peek(&"b"), None);
        assert_eq!((lru.peek(&"a"), lru.peek(&"c")), (Some(&1), Some(&3)));
        lru.insert("a", 10);
        assert_eq!(lru.remove(&"a"), Some(10));
        assert_eq!(lru.len(), 1);
    }
}
