//! Store actions: how the registry reaches a durable or shared store, and
//! comes back from one.
//!
//! A durable server ([`ServerConfig::durability`](crate::ServerConfig::durability))
//! changes nothing it has not heard is stored. A REGISTER that passes every
//! check becomes a [`StoreAction::Put`] and its answer is held: when the
//! adapter reports the put stored ([`Commit::Stored`], with the position the
//! store gave it), the registration is applied and answered OK; when it
//! reports [`Commit::Refused`], the REGISTER is answered with that status and
//! nothing changes. An UNREGISTER becomes a [`StoreAction::Delete`] once the
//! writes read before it on the same registration are settled, and takes
//! effect when the store reports it ([`Commit::Removed`]); a store never
//! refuses a delete, it retries it until it commits. At start the adapter
//! feeds the stored registrations back through
//! [`Server::load`](crate::Server::load).
//!
//! A registration is stored as a protobuf message (not a format of our own):
//! [`StoredRegistration::encode`] and [`StoredRegistration::decode`], under
//! the key [`store_key`] of its peer and namespace.

use bytes::Bytes;
use libp2p_identity::PeerId;
use prost::Message as _;

use crate::namespace::Namespace;
use crate::origin::Origin;
use crate::proto::ResponseStatus;
use crate::record::Flavour;
use crate::registry::StoredRecord;
use crate::time::Timestamp;

/// Identifies a store action, so that its commit can be matched to it.
/// Strictly increasing within one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionId(pub u64);

/// One registration as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRegistration {
    /// Whose.
    pub peer: PeerId,
    /// Where.
    pub namespace: Namespace,
    /// Its position in the registry's order. In a [`StoreAction::Put`] it is
    /// the server's proposal; a store that orders writes itself (a shared
    /// one) reports the position it gave in [`Commit::Stored`].
    pub seq: u64,
    /// When it expires, on the adapter's clock (Unix time for this
    /// project's adapters, so that it survives a restart).
    pub expires: Timestamp,
    pub(crate) record: StoredRecord,
}

/// Something the store must do, in the order the server emits them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreAction {
    /// Store this registration, replacing any of the same peer and
    /// namespace; report the outcome with a [`Commit`].
    Put {
        /// The action.
        id: ActionId,
        /// What to store.
        registration: StoredRegistration,
        /// The TTL granted: a shared store that decides expiry by its own
        /// clock counts it from its time of writing, and reports the
        /// expiry it decided through the log.
        ttl: std::time::Duration,
    },
    /// Remove the registration of `peer` in `namespace`, unless the stored
    /// one is newer than `seq` (a later put already replaced it). Retry it
    /// until it commits, never drop it, and keep it before every action
    /// submitted after it; report it with [`Commit::Removed`] (or
    /// [`Commit::Logged`], for a shared log that took it).
    Delete {
        /// The action.
        id: ActionId,
        /// Whose.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
        /// The position of the registration removed.
        seq: u64,
    },
}

/// What became of a [`StoreAction`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Commit {
    /// Durable, at position `seq`: apply it and answer.
    Stored {
        /// The put.
        id: ActionId,
        /// Its position in the registry's order.
        seq: u64,
    },
    /// A put or a delete is durable in a shared, ordered log at position
    /// `seq`; the change comes back through
    /// [`Server::apply_replicated`](crate::Server::apply_replicated) in the
    /// log's order, and takes effect (and is answered) then: a point never
    /// serves a position out of the shared order.
    Logged {
        /// The put.
        id: ActionId,
        /// Its position in the shared order.
        seq: u64,
    },
    /// A delete is durable, or a shared store found nothing left for it to
    /// remove (another point removed it, or a newer put replaced it).
    Removed {
        /// The delete.
        id: ActionId,
    },
    /// A put was not stored: the REGISTER is answered with `status` and `reason` (a
    /// store that cannot write says `E_UNAVAILABLE`; a shared store that
    /// finds a limit reached across points says which).
    Refused {
        /// The put.
        id: ActionId,
        /// The status to answer with.
        status: ResponseStatus,
        /// The `statusText`.
        reason: String,
    },
}

impl Commit {
    /// The put it is about.
    pub fn id(&self) -> ActionId {
        match self {
            Commit::Stored { id, .. }
            | Commit::Logged { id, .. }
            | Commit::Removed { id }
            | Commit::Refused { id, .. } => *id,
        }
    }
}

/// A change in a shared store, in the store's order: another point's, or
/// one of ours coming back. Applying one twice, or one older than what is
/// held, changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replicated {
    /// A registration was stored.
    Put(StoredRegistration),
    /// The registration of `peer` in `namespace` at position `seq` (or an
    /// older one) was removed.
    Delete {
        /// Whose.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
        /// The position of the registration removed.
        seq: u64,
        /// The position of the removal itself in the log.
        position: u64,
    },
}

/// The key a registration of `peer` in `namespace` is stored under: the
/// peer id's length, the peer id, the namespace. Keys of one peer sort
/// together.
pub fn store_key(peer: &PeerId, namespace: &Namespace) -> Vec<u8> {
    let peer = peer.to_bytes();
    let mut key = Vec::with_capacity(1 + peer.len() + namespace.as_str().len());
    key.push(u8::try_from(peer.len()).expect("a peer id is at most 255 bytes"));
    key.extend_from_slice(&peer);
    key.extend_from_slice(namespace.as_str().as_bytes());
    key
}

/// The peer and namespace a [`store_key`] names.
pub fn split_store_key(key: &[u8]) -> Option<(PeerId, Namespace)> {
    let (len, rest) = key.split_first()?;
    let (peer, namespace) = rest.split_at_checked(usize::from(*len))?;
    let peer = PeerId::from_bytes(peer).ok()?;
    let namespace = Namespace::new(std::str::from_utf8(namespace).ok()?, usize::MAX).ok()?;
    Some((peer, namespace))
}

/// Why stored bytes are not a registration: the store is damaged or written
/// by something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored registration is unreadable: {0}")]
pub struct StoreDecodeError(&'static str);

/// The stored form.
#[derive(Clone, PartialEq, prost::Message)]
struct Stored {
    #[prost(bytes = "bytes", tag = "1")]
    peer: Bytes,
    #[prost(string, tag = "2")]
    namespace: String,
    #[prost(uint64, tag = "3")]
    seq: u64,
    /// Nanoseconds since the adapter's origin (the Unix epoch).
    #[prost(uint64, tag = "4")]
    expires: u64,
    #[prost(bytes = "bytes", optional, tag = "5")]
    rust_envelope: Option<Bytes>,
    #[prost(bytes = "bytes", optional, tag = "6")]
    standard_envelope: Option<Bytes>,
    #[prost(bytes = "bytes", tag = "7")]
    peer_info: Bytes,
    /// [`Origin::to_bits`]; absent when unknown.
    #[prost(fixed64, optional, tag = "8")]
    origin: Option<u64>,
}

impl StoredRegistration {
    /// The key to store it under ([`store_key`]).
    pub fn key(&self) -> Vec<u8> {
        store_key(&self.peer, &self.namespace)
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let [rust, standard] = Flavour::ALL.map(|f| self.record.envelope(f).cloned());
        Stored {
            peer: self.peer.to_bytes().into(),
            namespace: self.namespace.to_string(),
            seq: self.seq,
            expires: u64::try_from(self.expires.as_duration().as_nanos()).unwrap_or(u64::MAX),
            rust_envelope: rust,
            standard_envelope: standard,
            peer_info: self.record.peer_info().clone(),
            origin: self.record.origin().map(Origin::to_bits),
        }
        .encode_to_vec()
    }

    /// A registration from stored bytes. The records were verified when
    /// they were registered and are not verified again.
    pub fn decode(bytes: &[u8]) -> Result<StoredRegistration, StoreDecodeError> {
        let stored =
            Stored::decode(bytes).map_err(|_| StoreDecodeError("not a protobuf message"))?;
        let peer = PeerId::from_bytes(&stored.peer).map_err(|_| StoreDecodeError("bad peer id"))?;
        let namespace = Namespace::new(&stored.namespace, usize::MAX)
            .map_err(|_| StoreDecodeError("empty namespace"))?;
        let record = StoredRecord::from_parts(
            [stored.rust_envelope, stored.standard_envelope],
            stored.peer_info,
            stored.origin.and_then(Origin::from_bits),
        );
        Ok(StoredRegistration {
            peer,
            namespace,
            seq: stored.seq,
            expires: Timestamp::from_duration(std::time::Duration::from_nanos(stored.expires)),
            record,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Dialect;
    use crate::testing::TestPeer;

    #[test]
    fn a_stored_registration_reads_back_as_itself_and_garbage_is_an_error() {
        let peer = TestPeer::new(1);
        let record = StoredRecord::from_parts(
            [Some(peer.record(Dialect::Signed(Flavour::RustLibp2p))), None],
            peer.record(Dialect::Legacy),
            Origin::from_ipv4([192, 0, 2, 1]),
        );
        let stored = StoredRegistration {
            peer: peer.id,
            namespace: Namespace::new("chat", 255).unwrap(),
            seq: 42,
            expires: Timestamp::from_secs(1_800_000_000),
            record,
        };
        assert_eq!(StoredRegistration::decode(&stored.encode()), Ok(stored.clone()));
        assert!(StoredRegistration::decode(b"\xff\xff").is_err());
        let key = stored.key();
        assert_eq!(usize::from(key[0]), peer.id.to_bytes().len());
        assert!(key.ends_with(b"chat"));
        assert_eq!(split_store_key(&key), Some((peer.id, stored.namespace.clone())));
        assert_eq!(split_store_key(b"\x05ab"), None);
    }
}
