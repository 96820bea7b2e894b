//! What a peer reads, learned from its identify only once it is needed,
//! against the binary over real connections on loopback: a peer that
//! DISCOVERs first, before the point has asked it anything, is served the
//! flavour its agent names; a peer without identify, the default; and the
//! point counts whom it asked, and nobody that only registered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use bytes::Bytes;
use common::{get, http_of, peer_of, runtime, sample};
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::{Raw, raw_connection, raw_connection_as, raw_connection_named};

const NS: &str = "readers";
const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);

/// The records of the first page of [`NS`], sorted.
async fn first_page(raw: &mut Raw, server: PeerId) -> Vec<Bytes> {
    let answer = raw.request(server, &testing::discover(Some(NS), None, None)).await.unwrap();
    let page = answer.discover_response.unwrap();
    assert_eq!(page.status, Some(0), "{:?}", page.status_text);
    let mut records: Vec<Bytes> =
        page.registrations.into_iter().map(|r| r.signed_peer_record.unwrap()).collect();
    records.sort();
    records
}

fn sorted(mut records: Vec<Bytes>) -> Vec<Bytes> {
    records.sort();
    records
}

#[test]
fn a_peer_that_discovers_first_gets_the_flavour_its_agent_names() {
    let (mut server, address) = common::server(&["--metrics", "127.0.0.1:0"]);
    let (server_id, addr) = peer_of(&address);
    runtime().block_on(async {
        let (rust, standard) = (TestPeer::new(1), TestPeer::new(2));
        for (peer, dialect) in [(&rust, RUST), (&standard, STANDARD)] {
            let mut raw = raw_connection_as(peer.keypair.clone(), server_id, &addr).await;
            let register = testing::register(NS, peer.record(dialect), None);
            let answer = raw.request(server_id, &register).await.unwrap();
            assert_eq!(answer.register_response.unwrap().status, Some(0));
        }
        let mut js = raw_connection_named(server_id, &addr, "js-libp2p/2.8.0").await;
        assert_eq!(first_page(&mut js, server_id).await, vec![standard.record(STANDARD)]);
        let mut py = raw_connection_named(server_id, &addr, "py-libp2p/0.8.1").await;
        let legacy = sorted(vec![rust.record(Dialect::Legacy), standard.record(Dialect::Legacy)]);
        assert_eq!(first_page(&mut py, server_id).await, legacy);
        // No identify at all: served rust-libp2p's envelope.
        let mut bare = raw_connection(server_id, &addr).await;
        assert_eq!(first_page(&mut bare, server_id).await, vec![rust.record(RUST)]);
    });
    // The three that discovered, not the two that only registered; none
    // left the point waiting.
    let (_, metrics) = get(http_of(&mut server), "/metrics");
    assert_eq!(sample(&metrics, "rendezvous_readers_asked_total"), 3.0);
    assert_eq!(sample(&metrics, "rendezvous_reader_waits_expired_total"), 0.0);
}
