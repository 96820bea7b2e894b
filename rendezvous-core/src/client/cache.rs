//! Peers the client has discovered, kept until their registration's TTL runs
//! out or a full rediscovery no longer finds them.

use std::collections::{BTreeMap, BTreeSet};

use libp2p_identity::PeerId;

use crate::client::Discovery;
use crate::namespace::Namespace;
use crate::time::Timestamp;

type Key = (Namespace, PeerId);

#[derive(Debug)]
struct Cached {
    expires: Timestamp,
    /// The server it was last found at.
    server: PeerId,
    discovery: Discovery,
}

/// What [`Cache::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// A peer not cached before: it appeared.
    New,
    /// A cached peer, with its TTL and record renewed.
    Renewed,
    /// The cache is full of entries that outlive this one.
    NoRoom,
}

/// A bounded cache with an ordered expiry index; nothing is iterated in hash
/// order and every operation is O(log n) (a full walk's cleanup is linear
/// in its namespace).
#[derive(Debug)]
pub(crate) struct Cache {
    entries: BTreeMap<Namespace, BTreeMap<PeerId, Cached>>,
    expiry: BTreeSet<(Timestamp, Key)>,
    len: usize,
    capacity: usize,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache { entries: BTreeMap::new(), expiry: BTreeSet::new(), len: 0, capacity }
    }

    /// Stores `discovery`, found at `server`, until `expires`. When full, the
    /// entry closest to expiry makes room, unless the newcomer expires first.
    pub(crate) fn insert(
        &mut self,
        expires: Timestamp,
        server: PeerId,
        discovery: Discovery,
    ) -> Inserted {
        let key = (discovery.namespace.clone(), discovery.peer);
        let known = self.remove(&key).is_some();
        if self.len >= self.capacity {
            match self.expiry.first() {
                Some((soonest, _)) if *soonest < expires => {
                    let (_, victim) = self.expiry.first().cloned().expect("just seen");
                    self.remove(&victim);
                }
                _ => return Inserted::NoRoom,
            }
        }
        self.expiry.insert((expires, key.clone()));
        let (namespace, peer) = key;
        self.entries
            .entry(namespace)
            .or_default()
            .insert(peer, Cached { expires, server, discovery });
        self.len += 1;
        if known { Inserted::Renewed } else { Inserted::New }
    }

    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Removes and returns every entry due at `now`, earliest first.
    pub(crate) fn expire(&mut self, now: Timestamp) -> Vec<Discovery> {
        let mut out = Vec::new();
        while let Some((_, key)) = self.expiry.first().filter(|(t, _)| *t <= now).cloned() {
            out.extend(self.remove(&key));
        }
        out
    }

    /// Removes the entries of `namespace` last found at `server` whose peer
    /// is not in `present`: a full walk of that namespace did not find them.
    pub(crate) fn retain_found(
        &mut self,
        server: PeerId,
        namespace: &Namespace,
        present: &BTreeSet<PeerId>,
    ) -> Vec<Discovery> {
        let gone: Vec<Key> = self
            .entries
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|(peer, cached)| cached.server == server && !present.contains(*peer))
            .map(|(peer, _)| (namespace.clone(), *peer))
            .collect();
        gone.iter().filter_map(|key| self.remove(key)).collect()
    }

    /// Removes `peer`'s entry in `namespace` if it was last found at
    /// `server`: that server says it left.
    pub(crate) fn remove_found(
        &mut self,
        server: PeerId,
        namespace: &Namespace,
        peer: &PeerId,
    ) -> Option<Discovery> {
        let cached = self.entries.get(namespace)?.get(peer)?;
        if cached.server != server {
            return None;
        }
        self.remove(&(namespace.clone(), *peer))
    }

    /// Entries of `namespace` (or all) live at `now`, in (namespace, peer) order.
    pub(crate) fn iter<'a>(
        &'a self,
        namespace: Option<&'a Namespace>,
        now: Timestamp,
    ) -> impl Iterator<Item = &'a Discovery> + 'a {
        self.entries
            .iter()
            .filter(move |(ns, _)| namespace.is_none_or(|n| n == *ns))
            .flat_map(|(_, peers)| peers.values())
            .filter(move |cached| cached.expires > now)
            .map(|cached| &cached.discovery)
    }

    fn remove(&mut self, (namespace, peer): &Key) -> Option<Discovery> {
        let peers = self.entries.get_mut(namespace)?;
        let cached = peers.remove(peer)?;
        if peers.is_empty() {
            self.entries.remove(namespace);
        }
        self.expiry.remove(&(cached.expires, (namespace.clone(), *peer)));
        self.len -= 1;
        Some(cached.discovery)
    }
}
