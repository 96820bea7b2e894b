//! The server behaviour's protections, over real TCP + noise + yamux: the
//! per-peer rate limit, the quota per address, the idle timeout that no
//! other protocol can defeat, and draining for a graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use rendezvous_libp2p::core::proto::{ResponseStatus, read_status};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour, Limits, Timestamp, codec};
use rendezvous_libp2p::server::{self, RateLimit};
use rendezvous_libp2p::{Clock, ManualClock};
use rendezvous_tests::net::{LIMIT, listen, raw_connection_as, read_frame, spawn, swarm};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use common::{our_server, register_status};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

#[tokio::test]
async fn a_peer_over_its_rate_is_answered_unavailable_and_its_unregisters_still_apply() {
    let mut config = server::Config::default();
    // A bucket that holds 5 and refills too slowly to matter here.
    config.core.rate_limit = Some(RateLimit::new(0.001, 5.0).unwrap());
    let (server_id, addr, _events) = our_server(config).await;
    let me = TestPeer::new(1);
    let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
    let mut answers = Vec::new();
    for i in 0..8 {
        let request = testing::register(&format!("ns{i}"), me.record(RUST), None);
        answers.push(register_status(&raw.request(server_id, &request).await.unwrap()));
    }
    let ok = answers.iter().filter(|(s, _)| *s == ResponseStatus::Ok).count();
    assert_eq!(ok, 5, "{answers:?}");
    let (refused, text) = &answers[7];
    assert_eq!(*refused, ResponseStatus::EUnavailable);
    assert!(text.contains("requests/s from this peer"), "{text}");
    // Another peer has its own bucket.
    let other = TestPeer::new(2);
    let mut raw2 = raw_connection_as(other.keypair.clone(), server_id, &addr).await;
    let request = testing::register("ns0", other.record(RUST), None);
    assert_eq!(
        register_status(&raw2.request(server_id, &request).await.unwrap()).0,
        ResponseStatus::Ok
    );
    // Over the rate, an UNREGISTER is still applied (it has no answer to
    // refuse with): ns0 is gone for a discoverer.
    let mut stream = raw.open(server_id).await;
    stream.write_all(&codec::frame(&testing::unregister("ns0"))).await.unwrap();
    stream.close().await.unwrap();
    let discover = testing::discover(Some("ns0"), None, None);
    let found = async {
        loop {
            let page = raw2.request(server_id, &discover).await.unwrap();
            let page = page.discover_response.unwrap();
            if page.registrations.len() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(LIMIT, found).await.expect("the unregister applied");
}

#[tokio::test]
async fn identities_from_one_address_share_its_quota() {
    let mut config = server::Config::default();
    config.core.limits = Limits { max_registrations_per_origin: Some(3), ..Limits::default() };
    let (server_id, addr, _events) = our_server(config).await;
    let mut answers = Vec::new();
    for i in 0..5 {
        let me = TestPeer::new(10 + i);
        let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
        let request = testing::register("chat", me.record(RUST), None);
        answers.push(register_status(&raw.request(server_id, &request).await.unwrap()));
    }
    let statuses: Vec<_> = answers.iter().map(|(s, _)| *s).collect();
    use ResponseStatus::{EUnavailable, Ok};
    assert_eq!(statuses, [Ok, Ok, Ok, EUnavailable, EUnavailable]);
    assert_eq!(answers[3].1, "127.0.0.1 holds 3 registrations, the limit per address");
}

#[tokio::test]
async fn a_connection_without_rendezvous_work_is_closed_whatever_keeps_it_alive() {
    // The point's clock stands still until the test moves it: no waiting.
    let manual = ManualClock::at(Timestamp::from_secs(1_800_000_000));
    let clock = Clock::manual(&manual);
    let mut s = swarm(|_| server::Behaviour::with_clock(server::Config::default(), clock).unwrap());
    let addr = listen(&mut s).await;
    let server_id = *s.local_peer_id();
    let _events = spawn(s);
    let me = TestPeer::new(3);
    // The swarms on both sides (identify, ping) would keep the connection.
    let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
    // Requests keep it open over many timeouts' worth of time...
    for i in 0..8 {
        let request = testing::discover(Some("x"), None, None);
        raw.request(server_id, &request).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        manual.advance(Duration::from_secs(50));
    }
    // ...and without them it closes once the point's clock passes 60 s.
    manual.advance(Duration::from_secs(11));
    let closed = async {
        loop {
            let protocol = libp2p::StreamProtocol::new("/rendezvous/1.0.0");
            if raw.control.open_stream(server_id, protocol).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(LIMIT, closed).await.expect("the idle connection closed");
}

#[tokio::test]
async fn draining_answers_what_was_read_and_refuses_new_substreams() {
    let mut s = swarm(|_| server::Behaviour::new(server::Config::default()).unwrap());
    let addr = listen(&mut s).await;
    let server_id = *s.local_peer_id();
    let (drain, mut drains): (UnboundedSender<()>, _) = unbounded_channel();
    let (in_flight_tx, mut in_flight) = unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = s.select_next_some() => {
                    if let SwarmEvent::Behaviour(server::Event::StreamRejected { reason, .. }) = event {
                        assert_eq!(reason.name(), "shutting_down");
                    }
                }
                Some(()) = drains.recv() => {
                    s.behaviour_mut().shut_down();
                    let _ = in_flight_tx.send(s.behaviour().in_flight());
                }
            }
        }
    });
    let me = TestPeer::new(4);
    let mut raw = raw_connection_as(me.keypair.clone(), server_id, &addr).await;
    // A substream open and serving before the drain keeps being served.
    let mut before = raw.open(server_id).await;
    let discover = codec::frame(&testing::discover(Some("x"), None, None));
    before.write_all(&discover).await.unwrap();
    read_frame(&mut before).await.unwrap();
    drain.send(()).unwrap();
    assert_eq!(in_flight.recv().await, Some(0));
    before.write_all(&discover).await.unwrap();
    let page = codec::decode_message(&read_frame(&mut before).await.unwrap()).unwrap();
    assert_eq!(read_status(page.discover_response.unwrap().status), Ok(ResponseStatus::Ok));
    // A new substream is reset: the client learns at once.
    let answer = raw.request(server_id, &testing::discover(Some("x"), None, None)).await;
    assert!(answer.is_err(), "{answer:?}");
}
