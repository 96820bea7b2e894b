//! Subscriptions over real connections to the binary: arrivals and
//! departures pushed within a second at one point and across two points on
//! one Redis, a subscriber that comes back missing nothing, one that does
//! not read dropped while the point's memory stays flat, and the binary's
//! client printing `Found peer:` and `Lost peer:` within a second whatever
//! its `--discover-interval`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, http_of, peer_of, rss_kib, runtime, sample, server};
use libp2p_identity::PeerId;
use rendezvous_libp2p::core::proto::{self, ResponseStatus, read_status};
use rendezvous_libp2p::core::record::{Record, RecordLimits};
use rendezvous_libp2p::core::testing::{self, TestPeer};
use rendezvous_libp2p::core::{Dialect, Flavour};
use rendezvous_tests::net::{Raw, Subscriber, raw_connection_as};
use rendezvous_tests::redis::RedisServer;

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
const SECOND: Duration = Duration::from_secs(1);

/// What one batch says: peers that arrived, peers that left, its cookie.
struct Batch {
    arrived: Vec<PeerId>,
    left: Vec<PeerId>,
    cookie: Option<Bytes>,
    full: bool,
}

fn batch(message: proto::Message) -> Batch {
    let body = message.discover_response.expect("a batch");
    assert_eq!(read_status(body.status), Ok(ResponseStatus::Ok), "{:?}", body.status_text);
    let limits = RecordLimits { max_bytes: 4096, max_addresses: 64 };
    let arrived = (body.registrations.iter())
        .map(|r| {
            Record::parse(r.signed_peer_record.clone().unwrap(), &limits).unwrap().peer.unwrap()
        })
        .collect();
    let left = (body.departures.iter())
        .map(|d| PeerId::from_bytes(d.id.as_ref().unwrap()).unwrap())
        .collect();
    Batch { arrived, left, cookie: body.cookie, full: body.full == Some(true) }
}

/// The OK answer, then the first batch (what the namespace holds).
async fn opened(subscriber: &mut Subscriber) -> Batch {
    let answer = subscriber.next(SECOND * 5).await.unwrap();
    let answer = answer.discover_subscribe_response.expect("the subscription's answer");
    assert_eq!(read_status(answer.status), Ok(ResponseStatus::Ok), "{:?}", answer.status_text);
    batch(subscriber.next(SECOND * 5).await.unwrap())
}

async fn register(raw: &mut Raw, point: PeerId, peer: &TestPeer, ns: &str) {
    let request = testing::register(ns, peer.record(RUST), Some(3600));
    let answer = raw.request(point, &request).await.unwrap().register_response.unwrap();
    assert_eq!(read_status(answer.status), Ok(ResponseStatus::Ok));
}

async fn unregister(raw: &mut Raw, point: PeerId, ns: &str) {
    // No answer: the substream just ends.
    let _ = raw.request(point, &testing::unregister(ns)).await;
}

/// Registers and unregisters `peer` at `at`, and checks `subscriber` is
/// told each within a second.
async fn told_within_a_second(
    subscriber: &mut Subscriber,
    at: (PeerId, &mut Raw),
    peer: &TestPeer,
) {
    let (point, raw) = at;
    let started = Instant::now();
    register(raw, point, peer, "chat").await;
    let arrival = batch(subscriber.next(SECOND).await.unwrap());
    assert_eq!(arrival.arrived, vec![peer.id]);
    assert!(arrival.cookie.is_some());
    let registered = started.elapsed();
    let started = Instant::now();
    unregister(raw, point, "chat").await;
    let departure = batch(subscriber.next(SECOND).await.unwrap());
    assert_eq!(departure.left, vec![peer.id]);
    eprintln!("arrival told in {registered:?}, departure in {:?}", started.elapsed());
}

#[test]
fn one_point_pushes_arrivals_and_departures_within_a_second() {
    let (_point, address) = server(&[]);
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        let watcher = TestPeer::new(1);
        let mut listening = raw_connection_as(watcher.keypair.clone(), id, &addr).await;
        let mut subscriber = listening.subscribe(id, "chat", None).await;
        let first = opened(&mut subscriber).await;
        assert!(first.arrived.is_empty() && first.full && first.cookie.is_some());
        let peer = TestPeer::new(2);
        let mut raw = raw_connection_as(peer.keypair.clone(), id, &addr).await;
        told_within_a_second(&mut subscriber, (id, &mut raw), &peer).await;
    });
}

#[test]
fn a_point_pushes_what_another_point_on_the_same_redis_took() {
    let redis = RedisServer::start("subscriptions");
    let url = redis.url();
    let (_a, at_a) = server(&["--redis", &url]);
    let (_b, at_b) = server(&["--redis", &url]);
    let ((a, addr_a), (b, addr_b)) = (peer_of(&at_a), peer_of(&at_b));
    runtime().block_on(async {
        let watcher = TestPeer::new(1);
        let mut listening = raw_connection_as(watcher.keypair.clone(), a, &addr_a).await;
        let mut subscriber = listening.subscribe(a, "chat", None).await;
        opened(&mut subscriber).await;
        let peer = TestPeer::new(2);
        let mut raw = raw_connection_as(peer.keypair.clone(), b, &addr_b).await;
        told_within_a_second(&mut subscriber, (b, &mut raw), &peer).await;
    });
}

#[test]
fn a_subscriber_that_comes_back_mid_stream_misses_nothing() {
    let (_point, address) = server(&[]);
    let (id, addr) = peer_of(&address);
    runtime().block_on(async {
        let (stays, leaves, arrives) = (TestPeer::new(2), TestPeer::new(3), TestPeer::new(4));
        let mut raws = Vec::new();
        for peer in [&stays, &leaves] {
            let mut raw = raw_connection_as(peer.keypair.clone(), id, &addr).await;
            register(&mut raw, id, peer, "chat").await;
            raws.push(raw);
        }
        let watcher = TestPeer::new(1);
        let position = {
            let mut connection = raw_connection_as(watcher.keypair.clone(), id, &addr).await;
            let mut subscriber = connection.subscribe(id, "chat", None).await;
            let first = opened(&mut subscriber).await;
            assert_eq!(first.arrived.len(), 2);
            // The subscriber goes away: its substream is dropped.
            first.cookie.unwrap()
        };
        unregister(&mut raws[1], id, "chat").await;
        let mut raw = raw_connection_as(arrives.keypair.clone(), id, &addr).await;
        register(&mut raw, id, &arrives, "chat").await;
        let mut again = raw_connection_as(watcher.keypair.clone(), id, &addr).await;
        let mut subscriber = again.subscribe(id, "chat", Some(position)).await;
        let resumed = opened(&mut subscriber).await;
        assert!(!resumed.full, "resumed, not resent");
        assert_eq!(resumed.left, vec![leaves.id]);
        assert_eq!(resumed.arrived, vec![arrives.id], "only what changed");
        assert!(resumed.cookie.is_some());
    });
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_and_the_point_stays_small() {
    let (mut point, address) = server(&["--metrics", "127.0.0.1:0"]);
    let http = http_of(&mut point);
    let (id, addr) = peer_of(&address);
    let pid = point.pid();
    runtime().block_on(async {
        let watcher = TestPeer::new(1);
        let mut stalled = raw_connection_as(watcher.keypair.clone(), id, &addr).await;
        // Subscribed, and never read from.
        let _subscriber = stalled.subscribe(id, "chat", None).await;
        let peer = TestPeer::new(2);
        let mut raw = raw_connection_as(peer.keypair.clone(), id, &addr).await;
        register(&mut raw, id, &peer, "chat").await;
        let before = rss_kib(pid);
        // Each refresh is pushed: 16,000 of them are about 4 MiB of pushes,
        // sixteen times the bound on what a subscriber may leave unread.
        let mut dropped = 0.0;
        let frame = rendezvous_libp2p::core::codec::frame(&testing::register(
            "chat",
            peer.record(RUST),
            None,
        ))
        .len();
        for round in 0..16_000 {
            register(&mut raw, id, &peer, "chat").await;
            if round % 2000 == 1999 {
                dropped = sample(
                    &common::http(http, "/metrics").1,
                    "rendezvous_subscribers_dropped_total",
                );
            }
        }
        let grown = rss_kib(pid).saturating_sub(before);
        let metrics = common::http(http, "/metrics").1;
        assert!(dropped >= 1.0, "dropped while the refreshes went on");
        assert_eq!(sample(&metrics, "rendezvous_subscribers_dropped_total"), 1.0);
        assert_eq!(sample(&metrics, "rendezvous_subscribers"), 0.0);
        let pushed = 16_000 * frame as u64 / 1024;
        assert!(grown < pushed / 2, "the point grew by {grown} KiB, with {pushed} KiB pushed");
        eprintln!("the point grew by {grown} KiB over 16,000 refreshes, {pushed} KiB pushed");
    });
}

#[test]
fn the_binary_prints_found_and_lost_peers_within_a_second_of_the_change() {
    let (_point, address) = server(&[]);
    // Polling would take an hour.
    let mut watcher = client(&address, &["--namespace", "chat", "--discover-interval", "3600"]);
    watcher.expect("Refresh mode: Registration will auto-refresh");
    let mut peer = client(&address, &["--namespace", "chat"]);
    let line = peer.expect("Client started with peer ID: ");
    let id = common::peer_id(&line);
    peer.expect("Refresh mode: Registration will auto-refresh");
    let started = Instant::now();
    let found = watcher.expect("Found peer: ");
    assert!(found.contains(&id), "{found}");
    assert!(started.elapsed() < SECOND, "found after {:?}", started.elapsed());
    peer.interrupt();
    peer.expect("Unregistered successfully");
    let started = Instant::now();
    let lost = watcher.expect("Lost peer: ");
    assert!(lost.contains(&id), "{lost}");
    assert!(started.elapsed() < SECOND, "lost after {:?}", started.elapsed());
}
