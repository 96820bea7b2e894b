//! Peers the client has discovered, kept until their registration's TTL runs out.

use std::collections::BTreeMap;

use libp2p_identity::PeerId;

use crate::client::Discovery;
use crate::namespace::Namespace;
use crate::time::Timestamp;

type Key = (Namespace, PeerId);

/// A bounded cache with an ordered expiry index; nothing is iterated in hash
/// order and every operation is O(log n).
#[derive(Debug)]
pub(crate) struct Cache {
    entries: BTreeMap<Key, (Timestamp, Discovery)>,
    expiry: BTreeMap<(Timestamp, Key), ()>,
    capacity: usize,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache { entries: BTreeMap::new(), expiry: BTreeMap::new(), capacity }
    }

    /// Stores `discovery` until `expires`, replacing what was known of the
    /// same peer in the same namespace. When full, the entry closest to
    /// expiry makes room; returns false if the newcomer itself expires first.
    pub(crate) fn insert(&mut self, expires: Timestamp, discovery: Discovery) -> bool {
        let key = (discovery.namespace.clone(), discovery.peer);
        if let Some((old, _)) = self.entries.remove(&key) {
            self.expiry.remove(&(old, key.clone()));
        }
        if self.entries.len() >= self.capacity {
            match self.expiry.first_key_value() {
                Some(((soonest, _), _)) if *soonest < expires => {
                    let ((_, victim), ()) = self.expiry.pop_first().expect("just seen");
                    self.entries.remove(&victim);
                }
                _ => return false,
            }
        }
        self.expiry.insert((expires, key.clone()), ());
        self.entries.insert(key, (expires, discovery));
        true
    }

    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.keys().next().map(|(t, _)| *t)
    }

    /// Removes and returns every entry due at `now`, earliest first.
    pub(crate) fn expire(&mut self, now: Timestamp) -> Vec<Discovery> {
        let mut out = Vec::new();
        while let Some(((t, _), ())) = self.expiry.first_key_value() {
            if *t > now {
                break;
            }
            let ((_, key), ()) = self.expiry.pop_first().expect("just seen");
            if let Some((_, discovery)) = self.entries.remove(&key) {
                out.push(discovery);
            }
        }
        out
    }

    /// Live entries of `namespace` (or all), in key order.
    pub(crate) fn iter<'a>(
        &'a self,
        namespace: Option<&'a Namespace>,
    ) -> impl Iterator<Item = &'a Discovery> + 'a {
        self.entries
            .iter()
            .filter(move |((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, (_, d))| d)
    }
}
