//! The two dialects of `Register.signedPeerRecord`, told apart per request.
//!
//! - **Signed** (the current spec): an RFC 0002 envelope holding a PeerRecord,
//!   in one of two [`Flavour`]s that differ only in payload type and signing
//!   domain. The signature is checked with `libp2p-identity`; this module only
//!   frames the bytes that are signed.
//! - **Legacy** (go-libp2p-rendezvous, py-libp2p 0.8.1): an embedded
//!   `PeerInfo { id = 1, addrs = 2 }`, unsigned.
//!
//! Both are length-delimited fields 1 and 2 on the wire; only an envelope has
//! a payload (3) or a signature (5), which is how [`Record::parse`] decides.

use bytes::{Bytes, BytesMut};
use libp2p_identity::{Keypair, PeerId, PublicKey, SigningError};
use multiaddr::Multiaddr;
use prost::Message as _;
use smallvec::SmallVec;

use crate::proto;

/// Addresses of one peer; most peers have one or two.
pub type Addresses = SmallVec<[Multiaddr; 2]>;

/// How a registration's record is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dialect {
    /// A signed envelope holding a PeerRecord.
    Signed(Flavour),
    /// An unsigned embedded `PeerInfo`.
    Legacy,
}

/// What a discovering peer can read, and so what a DISCOVER answer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reader {
    /// Only `PeerInfo` (go-libp2p-rendezvous, py-libp2p): every registration,
    /// signed ones converted.
    Legacy,
    /// Only envelopes of this flavour (rust-libp2p fails a whole page on one
    /// entry it cannot parse): the registrations signed that way.
    Signed(Flavour),
    /// Both dialects (this crate's client): every registration as it was
    /// registered, signatures kept.
    Any,
}

/// The agent version prefix of hosts running this project's client, which
/// reads every dialect.
pub const AGENT_PREFIX: &str = "rendezvous-rs/";

impl Reader {
    /// What a peer reads, told by its identify agent version; `None` when the
    /// agent says nothing about it (the server then uses its default, or the
    /// peer's own REGISTERs).
    ///
    /// | agent version starts with | stack | reads |
    /// |---|---|---|
    /// | `rendezvous-rs/` | this project's client | every dialect ([`Reader::Any`]) |
    /// | `rust-libp2p/` (identify's default, e.g. `rust-libp2p/0.48.0`) | rust-libp2p | rust-libp2p's envelope |
    /// | `js-libp2p/` (`js-libp2p/2.10.0 node/20.20.2`, `… browser/…`), `helia/`, `lodestar/`, `js-waku` | js-libp2p | the standard envelope |
    /// | `github.com/` (go-libp2p's default: the main module's path and version), `go-libp2p`, `kubo/`, `go-ipfs/`, `go-waku` | go-libp2p | the standard envelope |
    /// | `nim-libp2p`, `nimbus`, `nwaku`, `nim-waku` | nim-libp2p | the standard envelope |
    /// | `py-libp2p/` | py-libp2p | the legacy `PeerInfo` |
    ///
    /// Matching ignores case. rust-libp2p applications that set their own
    /// agent are unknown here and get the server's default, which is
    /// rust-libp2p's envelope. A go-libp2p-rendezvous client of the legacy
    /// dialect is told apart by its own REGISTER, which overrides the agent.
    pub fn from_agent_version(agent_version: &str) -> Option<Reader> {
        const STANDARD: &[&str] = &[
            "js-libp2p/",
            "helia/",
            "lodestar/",
            "js-waku",
            "github.com/",
            "go-libp2p",
            "kubo/",
            "go-ipfs/",
            "go-waku",
            "nim-libp2p",
            "nimbus",
            "nwaku",
            "nim-waku",
        ];
        let agent = agent_version.trim().to_ascii_lowercase();
        let starts = |prefixes: &[&str]| prefixes.iter().any(|p| agent.starts_with(p));
        if agent.starts_with(AGENT_PREFIX) {
            Some(Reader::Any)
        } else if agent.starts_with("rust-libp2p/") {
            Some(Reader::Signed(Flavour::RustLibp2p))
        } else if starts(STANDARD) {
            Some(Reader::Signed(Flavour::Standard))
        } else if agent.starts_with("py-libp2p") {
            Some(Reader::Legacy)
        } else {
            None
        }
    }
}

impl From<Dialect> for Reader {
    /// A peer that writes a dialect reads it.
    fn from(dialect: Dialect) -> Reader {
        match dialect {
            Dialect::Legacy => Reader::Legacy,
            Dialect::Signed(flavour) => Reader::Signed(flavour),
        }
    }
}

/// The two kinds of signed PeerRecord envelope in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavour {
    /// rust-libp2p's own: payload type `/libp2p/routing-state-record`, domain
    /// `libp2p-routing-state`. The only one rust-libp2p's rendezvous parses.
    RustLibp2p,
    /// RFC 0003's: payload type `0x0301`, domain `libp2p-peer-record`; used by
    /// go, js and nim libp2p.
    Standard,
}

impl Flavour {
    /// Both flavours, in index order.
    pub const ALL: [Flavour; 2] = [Flavour::RustLibp2p, Flavour::Standard];

    /// Position in [`Flavour::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Flavour::RustLibp2p => 0,
            Flavour::Standard => 1,
        }
    }

    fn payload_type(self) -> &'static [u8] {
        match self {
            Flavour::RustLibp2p => b"/libp2p/routing-state-record",
            Flavour::Standard => &[0x03, 0x01],
        }
    }

    fn domain(self) -> &'static [u8] {
        match self {
            Flavour::RustLibp2p => b"libp2p-routing-state",
            Flavour::Standard => b"libp2p-peer-record",
        }
    }

    fn from_payload_type(payload_type: &[u8]) -> Option<Flavour> {
        Flavour::ALL.into_iter().find(|f| f.payload_type() == payload_type)
    }
}

/// Bounds on a record, checked before any signature work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimits {
    /// Most bytes in `Register.signedPeerRecord`.
    pub max_bytes: usize,
    /// Most addresses in one record.
    pub max_addresses: usize,
}

/// Why a record was refused. Every variant is the remote peer's fault and is
/// answered with `E_INVALID_SIGNED_PEER_RECORD`; the `Display` text is what
/// goes into `statusText`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// `Register.signedPeerRecord` is absent or empty.
    #[error("missing peer record")]
    Missing,
    /// Longer than [`RecordLimits::max_bytes`].
    #[error("peer record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The record's length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Neither a valid envelope nor a valid `PeerInfo`.
    #[error("malformed peer record: {0}")]
    Malformed(&'static str),
    /// A well-formed envelope whose payload is not a peer record.
    #[error("envelope payload type is not a peer record")]
    UnknownPayloadType,
    /// The envelope's public key cannot be decoded (or is of a type this
    /// build does not support).
    #[error("envelope public key cannot be decoded")]
    InvalidPublicKey,
    /// The signature does not verify.
    #[error("envelope signature does not verify")]
    InvalidSignature,
    /// The record names a peer other than the envelope's signer.
    #[error("peer record's peer id does not match the signing key")]
    SignerMismatch,
    /// The peer id bytes do not parse.
    #[error("invalid peer id in peer record")]
    InvalidPeerId,
    /// An address does not parse as a multiaddr.
    #[error("invalid multiaddr in peer record")]
    InvalidAddress,
    /// The record has no address, so nobody could reach the peer.
    #[error("peer record has no addresses")]
    NoAddresses,
    /// More than [`RecordLimits::max_addresses`].
    #[error("peer record has {count} addresses, more than the limit of {max}")]
    TooManyAddresses {
        /// How many the record has.
        count: usize,
        /// The limit in force.
        max: usize,
    },
}

/// A parsed, verified record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Whose record it is: the signer, or the `PeerInfo` id. `None` only for a
    /// legacy record that leaves the id out (the sender is then implied).
    pub peer: Option<PeerId>,
    /// The addresses it announces.
    pub addresses: Addresses,
    /// How it was encoded.
    pub dialect: Dialect,
    /// The bytes as received.
    pub bytes: Bytes,
}

impl Record {
    /// Tells the dialect of `bytes`, decodes it and, for an envelope, checks
    /// the signature. Does not check who sent it: compare [`Record::peer`].
    pub fn parse(bytes: Bytes, limits: &RecordLimits) -> Result<Record, RecordError> {
        if bytes.is_empty() {
            return Err(RecordError::Missing);
        }
        if bytes.len() > limits.max_bytes {
            return Err(RecordError::TooLarge { len: bytes.len(), max: limits.max_bytes });
        }
        let envelope = proto::Envelope::decode(bytes.clone())
            .map_err(|_| RecordError::Malformed("not a protobuf message"))?;
        if envelope.payload.is_some() || envelope.signature.is_some() {
            Self::parse_envelope(envelope, bytes, limits)
        } else {
            Self::parse_peer_info(bytes, limits)
        }
    }

    fn parse_envelope(
        envelope: proto::Envelope,
        bytes: Bytes,
        limits: &RecordLimits,
    ) -> Result<Record, RecordError> {
        let payload_type = envelope.payload_type.unwrap_or_default();
        let flavour =
            Flavour::from_payload_type(&payload_type).ok_or(RecordError::UnknownPayloadType)?;
        let payload = envelope.payload.unwrap_or_default();
        let record = proto::PeerRecord::decode(payload.clone())
            .map_err(|_| RecordError::Malformed("envelope payload is not a PeerRecord"))?;
        let raw: Vec<Bytes> =
            record.addresses.into_iter().map(|a| a.multiaddr.unwrap_or_default()).collect();
        let addresses = parse_addresses(&raw, limits)?;
        let key = PublicKey::try_decode_protobuf(&envelope.public_key.unwrap_or_default())
            .map_err(|_| RecordError::InvalidPublicKey)?;
        let peer = PeerId::from_bytes(&record.peer_id.unwrap_or_default())
            .map_err(|_| RecordError::InvalidPeerId)?;
        if key.to_peer_id() != peer {
            return Err(RecordError::SignerMismatch);
        }
        let signed = signing_input(flavour, &payload);
        if !key.verify(&signed, &envelope.signature.unwrap_or_default()) {
            return Err(RecordError::InvalidSignature);
        }
        Ok(Record { peer: Some(peer), addresses, dialect: Dialect::Signed(flavour), bytes })
    }

    fn parse_peer_info(bytes: Bytes, limits: &RecordLimits) -> Result<Record, RecordError> {
        let info = proto::PeerInfo::decode(bytes.clone())
            .map_err(|_| RecordError::Malformed("not a PeerInfo message"))?;
        let peer = match info.id {
            Some(id) if !id.is_empty() => {
                Some(PeerId::from_bytes(&id).map_err(|_| RecordError::InvalidPeerId)?)
            }
            _ => None,
        };
        let addresses = parse_addresses(&info.addrs, limits)?;
        Ok(Record { peer, addresses, dialect: Dialect::Legacy, bytes })
    }

    /// Signs a PeerRecord for `keypair` with `addresses` and returns the
    /// envelope bytes, ready for `Register.signedPeerRecord`.
    pub fn sign(
        keypair: &Keypair,
        addresses: &[Multiaddr],
        seq: u64,
        flavour: Flavour,
    ) -> Result<Bytes, SigningError> {
        let payload = proto::PeerRecord {
            peer_id: Some(keypair.public().to_peer_id().to_bytes().into()),
            seq: Some(seq),
            addresses: addresses
                .iter()
                .map(|a| proto::AddressInfo { multiaddr: Some(a.to_vec().into()) })
                .collect(),
        }
        .encode_to_vec();
        let signature = keypair.sign(&signing_input(flavour, &payload))?;
        let envelope = proto::Envelope {
            public_key: Some(keypair.public().encode_protobuf().into()),
            payload_type: Some(Bytes::from_static(flavour.payload_type())),
            payload: Some(payload.into()),
            signature: Some(signature.into()),
        };
        Ok(envelope.encode_to_vec().into())
    }
}

/// `peer` and `addresses` as a legacy `PeerInfo`, the form go and py clients read.
pub fn encode_peer_info(peer: &PeerId, addresses: &[Multiaddr]) -> Bytes {
    proto::PeerInfo {
        id: Some(peer.to_bytes().into()),
        addrs: addresses.iter().map(|a| a.to_vec().into()).collect(),
    }
    .encode_to_vec()
    .into()
}

/// Checks the count before parsing any address, then parses each one.
fn parse_addresses(raw: &[Bytes], limits: &RecordLimits) -> Result<Addresses, RecordError> {
    if raw.is_empty() {
        return Err(RecordError::NoAddresses);
    }
    if raw.len() > limits.max_addresses {
        return Err(RecordError::TooManyAddresses { count: raw.len(), max: limits.max_addresses });
    }
    raw.iter()
        .map(|bytes| Multiaddr::try_from(bytes.to_vec()).map_err(|_| RecordError::InvalidAddress))
        .collect()
}

/// What the envelope's signature covers: domain, payload type and payload,
/// each prefixed by its length as an unsigned varint (RFC 0002).
fn signing_input(flavour: Flavour, payload: &[u8]) -> BytesMut {
    let parts = [flavour.domain(), flavour.payload_type(), payload];
    let mut out = BytesMut::with_capacity(parts.iter().map(|p| p.len() + 10).sum());
    for part in parts {
        prost::encoding::encode_varint(part.len() as u64, &mut out);
        out.extend_from_slice(part);
    }
    out
}
