//! What each peer reads, remembered for a bounded number of peers.
//!
//! Two sources tell what a peer reads: the adapter (from identify's agent
//! version, see [`Reader::from_agent_version`]) and the peer's own REGISTERs
//! (a peer reads the dialect it writes). A REGISTER overrides the agent,
//! because it is what the peer actually does, except that it never narrows
//! [`Reader::Any`]: a client that reads everything still registers in one
//! dialect. When full, the peer used least recently is forgotten; a new peer
//! is never refused.

use std::collections::{BTreeMap, HashMap};

use libp2p_identity::PeerId;

use crate::record::Reader;

#[derive(Debug)]
struct Remembered {
    from_agent: Option<Reader>,
    from_register: Option<Reader>,
    /// The tick of the last use; the key of `by_use`.
    used: u64,
}

impl Remembered {
    fn reader(&self) -> Option<Reader> {
        match self.from_agent {
            Some(Reader::Any) => Some(Reader::Any),
            agent => self.from_register.or(agent),
        }
    }
}

/// Peers' readers, least recently used evicted first.
#[derive(Debug)]
pub(crate) struct Readers {
    by_peer: HashMap<PeerId, Remembered>,
    by_use: BTreeMap<u64, PeerId>,
    tick: u64,
    capacity: usize,
    evicted: u64,
}

impl Readers {
    pub(crate) fn new(capacity: usize) -> Self {
        Readers {
            by_peer: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// What `peer` reads, if known; counts as a use.
    pub(crate) fn get(&mut self, peer: &PeerId) -> Option<Reader> {
        let reader = self.by_peer.get(peer)?.reader();
        self.touch(peer);
        reader
    }

    /// The adapter says what `peer` reads.
    pub(crate) fn told(&mut self, peer: PeerId, reader: Reader) {
        self.entry(peer).from_agent = Some(reader);
    }

    /// `peer` registered a record that `reader`s read.
    pub(crate) fn registered(&mut self, peer: PeerId, reader: Reader) {
        self.entry(peer).from_register = Some(reader);
    }

    /// Forgets `peer` (its last connection closed).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        if let Some(gone) = self.by_peer.remove(peer) {
            self.by_use.remove(&gone.used);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// Peers forgotten to make room, since the start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    fn entry(&mut self, peer: PeerId) -> &mut Remembered {
        if self.by_peer.contains_key(&peer) {
            self.touch(&peer);
        } else {
            if self.by_peer.len() >= self.capacity
                && let Some((_, oldest)) = self.by_use.pop_first()
            {
                self.by_peer.remove(&oldest);
                self.evicted += 1;
            }
            self.tick += 1;
            self.by_use.insert(self.tick, peer);
            let fresh = Remembered { from_agent: None, from_register: None, used: self.tick };
            self.by_peer.insert(peer, fresh);
        }
        self.by_peer.get_mut(&peer).expect("inserted or present above")
    }

    fn touch(&mut self, peer: &PeerId) {
        let Some(remembered) = self.by_peer.get_mut(peer) else {
            return;
        };
        self.by_use.remove(&remembered.used);
        self.tick += 1;
        remembered.used = self.tick;
        self.by_use.insert(self.tick, *peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Flavour;
    use crate::testing::TestPeer;

    const RUST: Reader = Reader::Signed(Flavour::RustLibp2p);
    const STANDARD: Reader = Reader::Signed(Flavour::Standard);

    #[test]
    fn a_register_overrides_the_agent_in_either_order_but_never_narrows_any() {
        let mut readers = Readers::new(8);
        let (a, b, c) = (TestPeer::new(1).id, TestPeer::new(2).id, TestPeer::new(3).id);
        readers.told(a, STANDARD);
        readers.registered(a, Reader::Legacy);
        readers.registered(b, Reader::Legacy);
        readers.told(b, STANDARD);
        assert_eq!(readers.get(&a), Some(Reader::Legacy));
        assert_eq!(readers.get(&b), Some(Reader::Legacy));
        readers.told(c, Reader::Any);
        readers.registered(c, RUST);
        assert_eq!(readers.get(&c), Some(Reader::Any));
    }

    #[test]
    fn when_full_the_least_recently_used_peer_is_forgotten_not_the_newcomer() {
        let mut readers = Readers::new(2);
        let (a, b, c) = (TestPeer::new(1).id, TestPeer::new(2).id, TestPeer::new(3).id);
        readers.told(a, STANDARD);
        readers.told(b, Reader::Legacy);
        assert_eq!(readers.get(&a), Some(STANDARD)); // b is now the oldest
        readers.told(c, RUST);
        assert_eq!(readers.len(), 2);
        assert_eq!(readers.evicted(), 1);
        assert_eq!(readers.get(&b), None);
        assert_eq!((readers.get(&a), readers.get(&c)), (Some(STANDARD), Some(RUST)));
        readers.forget(&a);
        assert_eq!((readers.len(), readers.get(&a)), (1, None));
    }
}
