//! What each peer reads, and where it connects from, remembered for a
//! bounded number of peers.
//!
//! Two sources tell what a peer reads: the adapter (from identify's agent
//! version, see [`Reader::from_agent_version`]) and the peer's own REGISTERs
//! (a peer reads the dialect it writes). A REGISTER overrides the agent,
//! because it is what the peer actually does, except that it never narrows
//! [`Reader::Any`]: a client that reads everything still registers in one
//! dialect. When full, the peer used least recently is forgotten; a new peer
//! is never refused.

use libp2p_identity::PeerId;

use crate::lru::Lru;
use crate::origin::Origin;
use crate::record::Reader;

#[derive(Debug, Default)]
struct Remembered {
    from_agent: Option<Reader>,
    from_register: Option<Reader>,
    origin: Option<Origin>,
    /// The server asked the adapter what this peer reads.
    asked: bool,
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
pub(crate) struct Readers(Lru<PeerId, Remembered>);

impl Readers {
    pub(crate) fn new(capacity: usize) -> Self {
        Readers(Lru::new(capacity))
    }

    /// What `peer` reads, if known; counts as a use.
    pub(crate) fn get(&mut self, peer: &PeerId) -> Option<Reader> {
        self.0.get_mut(peer)?.reader()
    }

    /// The adapter says what `peer` reads.
    pub(crate) fn told(&mut self, peer: PeerId, reader: Reader) {
        self.0.entry(peer, Remembered::default).from_agent = Some(reader);
    }

    /// Whether the server should ask the adapter what `peer` reads: the
    /// adapter has not said, and was never asked. Its REGISTERs do not
    /// settle it, since a reader of every flavour registers in one. Marks
    /// it asked.
    pub(crate) fn first_ask(&mut self, peer: PeerId) -> bool {
        let remembered = self.0.entry(peer, Remembered::default);
        let ask = remembered.from_agent.is_none() && !remembered.asked;
        remembered.asked = true;
        ask
    }

    /// The adapter says where `peer` connects from.
    pub(crate) fn connects_from(&mut self, peer: PeerId, origin: Origin) {
        self.0.entry(peer, Remembered::default).origin = Some(origin);
    }

    /// Where `peer` connects from, if known; counts as a use.
    pub(crate) fn origin(&mut self, peer: &PeerId) -> Option<Origin> {
        self.0.get_mut(peer)?.origin
    }

    /// `peer` registered a record that `reader`s read.
    pub(crate) fn registered(&mut self, peer: PeerId, reader: Reader) {
        self.0.entry(peer, Remembered::default).from_register = Some(reader);
    }

    /// Forgets `peer` (its last connection closed).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.0.remove(peer);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Peers forgotten to make room, since the start.
    pub(crate) fn evicted(&self) -> u64 {
        self.0.evicted()
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
    fn a_peer_is_asked_about_once_and_only_until_the_adapter_says() {
        let mut readers = Readers::new(8);
        let (a, b, c) = (TestPeer::new(1).id, TestPeer::new(2).id, TestPeer::new(3).id);
        assert!(readers.first_ask(a));
        assert!(!readers.first_ask(a));
        readers.told(b, Reader::Any);
        assert!(!readers.first_ask(b));
        readers.registered(c, Reader::Legacy);
        assert!(readers.first_ask(c), "it may read more than it writes");
        readers.forget(&a);
        assert!(readers.first_ask(a), "a peer that comes back is asked again");
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
