//! Deterministic peers and request builders for tests, fuzzing and benches.
//!
//! Enabled by the `testing` feature; not part of the stable API.

use bytes::Bytes;
use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;

use crate::proto::{self, MessageType};
use crate::record::{Dialect, Flavour, Record, encode_peer_info};

/// A peer with a fixed key and one record in each dialect, signed once.
#[derive(Clone, Debug)]
pub struct TestPeer {
    /// Its key.
    pub keypair: Keypair,
    /// Its id.
    pub id: PeerId,
    /// Its one address.
    pub addr: Multiaddr,
    rust: Bytes,
    standard: Bytes,
    legacy: Bytes,
}

impl TestPeer {
    /// The peer made from `seed`; the same seed always gives the same peer.
    pub fn new(seed: u32) -> TestPeer {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&seed.to_be_bytes());
        secret[31] = 1;
        let keypair =
            Keypair::ed25519_from_bytes(secret).expect("any 32 bytes are an ed25519 secret");
        let id = keypair.public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", 1000 + seed % 60_000)
            .parse()
            .expect("a well-formed multiaddr");
        let sign = |flavour| {
            Record::sign(&keypair, std::slice::from_ref(&addr), 1, flavour)
                .expect("ed25519 signing cannot fail")
        };
        let rust = sign(Flavour::RustLibp2p);
        let standard = sign(Flavour::Standard);
        let legacy = encode_peer_info(&id, std::slice::from_ref(&addr));
        TestPeer { keypair, id, addr, rust, standard, legacy }
    }

    /// Its record in `dialect`.
    pub fn record(&self, dialect: Dialect) -> Bytes {
        match dialect {
            Dialect::Signed(Flavour::RustLibp2p) => self.rust.clone(),
            Dialect::Signed(Flavour::Standard) => self.standard.clone(),
            Dialect::Legacy => self.legacy.clone(),
        }
    }
}

/// Every dialect, in a fixed order.
pub const DIALECTS: [Dialect; 3] =
    [Dialect::Signed(Flavour::RustLibp2p), Dialect::Signed(Flavour::Standard), Dialect::Legacy];

/// A REGISTER request.
pub fn register(ns: &str, record: Bytes, ttl: Option<u64>) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::Register as i32),
        register: Some(proto::Register {
            ns: Some(ns.to_owned()),
            signed_peer_record: Some(record),
            ttl,
            other_records: Vec::new(),
        }),
        ..Default::default()
    }
}

/// An UNREGISTER request.
pub fn unregister(ns: &str) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::Unregister as i32),
        unregister: Some(proto::Unregister { ns: Some(ns.to_owned()), id: None }),
        ..Default::default()
    }
}

/// A DISCOVER request; `ns` `None` asks for every namespace.
pub fn discover(ns: Option<&str>, limit: Option<u64>, cookie: Option<Bytes>) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::Discover as i32),
        discover: Some(proto::Discover { ns: ns.map(str::to_owned), limit, cookie }),
        ..Default::default()
    }
}
