//! Our records and cookies against rust-libp2p's own definitions
//! (`libp2p-core` 0.44 peer records and envelopes, `libp2p-rendezvous` 0.18
//! cookies), in both directions.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use libp2p_core::{Multiaddr, PeerRecord, SignedEnvelope};
use libp2p_identity::Keypair;
use rendezvous_core::cookie::Cookie;
use rendezvous_core::proto::{ResponseStatus, read_status};
use rendezvous_core::record::{Dialect, Flavour, Record, RecordLimits};
use rendezvous_core::testing;
use rendezvous_core::{Namespace, RequestId, Server, ServerConfig, Timestamp};

const LIMITS: RecordLimits = RecordLimits { max_bytes: 4096, max_addresses: 32 };

fn key() -> Keypair {
    Keypair::ed25519_from_bytes([7u8; 32]).unwrap()
}

fn addrs() -> Vec<Multiaddr> {
    vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap(), "/ip6/::1/udp/4001/quic-v1".parse().unwrap()]
}

#[test]
fn a_record_signed_by_rust_libp2p_parses_as_its_own_flavour() {
    let theirs = PeerRecord::new(&key(), addrs()).unwrap();
    let bytes = theirs.into_signed_envelope().into_protobuf_encoding();
    let ours = Record::parse(bytes.into(), &LIMITS).unwrap();
    assert_eq!(ours.dialect, Dialect::Signed(Flavour::RustLibp2p));
    assert_eq!(ours.peer, Some(key().public().to_peer_id()));
    assert_eq!(ours.addresses.to_vec(), addrs());
}

#[test]
fn a_standard_record_signed_by_libp2p_core_parses_as_the_standard_flavour() {
    let theirs = PeerRecord::new_interop(&key(), addrs()).unwrap();
    let bytes = theirs.into_signed_envelope().into_protobuf_encoding();
    let ours = Record::parse(bytes.into(), &LIMITS).unwrap();
    assert_eq!(ours.dialect, Dialect::Signed(Flavour::Standard));
    assert_eq!(ours.addresses.to_vec(), addrs());
}

#[test]
fn records_we_sign_parse_in_libp2p_core_and_only_in_their_flavour() {
    for (flavour, rust_reads) in [(Flavour::RustLibp2p, true), (Flavour::Standard, false)] {
        let bytes = Record::sign(&key(), &addrs(), 42, flavour).unwrap();
        let envelope = SignedEnvelope::from_protobuf_encoding(&bytes).unwrap();
        let as_rust = PeerRecord::from_signed_envelope(envelope.clone());
        let as_standard = PeerRecord::from_signed_envelope_interop(envelope);
        assert_eq!(as_rust.is_ok(), rust_reads, "{flavour:?}");
        assert_eq!(as_standard.is_ok(), !rust_reads, "{flavour:?}");
        let record = as_rust.or(as_standard).unwrap();
        assert_eq!(record.peer_id(), key().public().to_peer_id());
        assert_eq!(record.seq(), 42);
        assert_eq!(record.addresses(), &addrs()[..]);
    }
}

#[test]
fn our_server_cookies_parse_in_rust_libp2p_with_the_namespace_asked_for() {
    let mut server = Server::new(ServerConfig::default()).unwrap();
    let peer = testing::TestPeer::new(1);
    for ns in [Some("chat"), None] {
        server.handle_request(
            Timestamp::ZERO,
            peer.id,
            RequestId(1),
            testing::discover(ns, None, None),
        );
        let page = server.poll_transmit().unwrap().message.unwrap().discover_response.unwrap();
        assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
        let theirs =
            libp2p_rendezvous::Cookie::from_wire_encoding(page.cookie.unwrap().to_vec()).unwrap();
        assert_eq!(theirs.namespace().map(|n| n.to_string()), ns.map(str::to_owned));
    }
}

#[test]
fn rust_libp2p_cookies_parse_as_ours() {
    let ns = libp2p_rendezvous::Namespace::from_static("chat");
    let bytes = libp2p_rendezvous::Cookie::for_namespace(ns).into_wire_encoding();
    let ours = Cookie::parse(&bytes, 255).unwrap();
    assert_eq!(ours.namespace, Some(Namespace::new("chat", 255).unwrap()));
}
