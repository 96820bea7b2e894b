//! Fair discovery against the binary, over real connections on loopback:
//! fresh clients asking for a small first page are spread over the
//! namespace, and each one's cookie walk still sees every registration
//! exactly once, with raw requests and with rust-libp2p's own client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{page, peer_of, runtime};
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::libp2p::rendezvous as theirs;
use rendezvous_tests::net::{connect, raw_connection, raw_connection_as, swarm, until};

/// Peers registered in the namespace.
const PEERS: u32 = 50;
/// Fresh clients, each asking for a first page of [`LIMIT`].
const ASKERS: usize = 20;
const LIMIT: u64 = 5;
/// More pages than a walk of [`PEERS`] in pages of [`LIMIT`] takes.
const MAX_PAGES: usize = 2 * PEERS as usize / LIMIT as usize + 2;
const NS: &str = "fair";

/// Asserts that `served` holds each of `registered` exactly once.
fn each_once(who: &str, served: &[PeerId], registered: &BTreeSet<PeerId>) {
    let mut counts = BTreeMap::new();
    for peer in served {
        *counts.entry(*peer).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&n| n == 1), "{who}: served some twice: {counts:?}");
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), *registered, "{who}");
}

#[test]
fn small_first_pages_are_spread_over_the_namespace_and_every_walk_sees_each_peer_once() {
    let (_server, address) = common::server(&[]);
    let (server_id, addr) = peer_of(&address);
    let rt = runtime();
    rt.block_on(async {
        let peers: Vec<TestPeer> = (0..PEERS).map(|i| TestPeer::new(100 + i)).collect();
        for peer in &peers {
            let mut raw = raw_connection_as(peer.keypair.clone(), server_id, &addr).await;
            let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
            let answer = raw.request(server_id, &testing::register(NS, record, None)).await;
            assert_eq!(answer.unwrap().register_response.unwrap().status, Some(0));
        }
        let registered: BTreeSet<PeerId> = peers.iter().map(|p| p.id).collect();

        // Fresh clients: a first page each, then their cookie walks.
        let mut named = BTreeSet::new();
        for asker in 0..ASKERS {
            let mut raw = raw_connection(server_id, &addr).await;
            let (first, mut cookie) = page(&mut raw, server_id, NS, Some(LIMIT), None).await;
            assert_eq!(first.len(), LIMIT as usize);
            named.extend(first.iter().copied());
            let mut served = first;
            for _ in 0..MAX_PAGES {
                let (more, next) = page(&mut raw, server_id, NS, Some(LIMIT), cookie.take()).await;
                if more.is_empty() {
                    break;
                }
                served.extend(more);
                cookie = next;
            }
            each_once(&format!("client {asker}"), &served, &registered);
        }
        eprintln!("{ASKERS} first pages of {LIMIT} named {} of {PEERS} peers", named.len());
        assert!(named.len() >= 30, "{ASKERS} first pages named only {} peers", named.len());

        // rust-libp2p's client follows the same cookies.
        let mut theirs = swarm(|key| theirs::client::Behaviour::new(key.clone()));
        connect(&mut theirs, server_id, &addr).await;
        let namespace = theirs::Namespace::new(NS.to_owned()).unwrap();
        let (mut served, mut cookie) = (Vec::new(), None);
        for _ in 0..MAX_PAGES {
            let ns = Some(namespace.clone());
            theirs.behaviour_mut().discover(ns, cookie.take(), Some(LIMIT), server_id);
            let (registrations, next) = until(&mut theirs, |e| match e {
                theirs::client::Event::Discovered { registrations, cookie, .. } => {
                    Some((registrations, cookie))
                }
                theirs::client::Event::DiscoverFailed { error, .. } => {
                    panic!("rust-libp2p's discover failed: {error:?}")
                }
                _ => None,
            })
            .await;
            if registrations.is_empty() {
                break;
            }
            assert_eq!(next.namespace(), Some(&namespace));
            served.extend(registrations.iter().map(|r| r.record.peer_id()));
            cookie = Some(next);
        }
        each_once("rust-libp2p's client", &served, &registered);
    });
}
