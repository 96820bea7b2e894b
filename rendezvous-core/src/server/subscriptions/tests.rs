//! Subscriptions on the virtual clock: a client watching through one sees
//! every change in order, comes back without missing any, and a subscriber
//! that does not read is dropped.

use std::time::Duration;

use libp2p_identity::PeerId;

use super::*;
use crate::client::{ClientConfig, ClientEvent, Failure};
use crate::limits::{Limits, ServerConfig};
use crate::proto::read_status;
use crate::record::{Dialect, Flavour, Record};
use crate::request::RequestId;
use crate::testing::{self, Fate, TestPeer, World};

const NS: &str = "chat";

fn ns() -> Namespace {
    Namespace::new(NS, 255).unwrap()
}

struct Setup {
    w: World,
    server: PeerId,
    watcher: PeerId,
}

/// A server and a client watching `NS` there through a subscription.
fn watching(config: ServerConfig) -> Setup {
    let mut w = World::new();
    let server = w.add_server(100, config);
    let watcher = w.add_client(&TestPeer::new(1), ClientConfig::default());
    let now = w.now;
    w.client(watcher).set_server_subscribes(now, server, true);
    w.client(watcher).watch(now, server, ns()).unwrap();
    w.pump();
    Setup { w, server, watcher }
}

impl Setup {
    fn register(&mut self, peer: &TestPeer, ttl: u64) {
        let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
        let answer = self.w.request(self.server, peer.id, testing::register(NS, record, Some(ttl)));
        let status = answer.unwrap().register_response.unwrap().status;
        assert_eq!(read_status(status), Ok(ResponseStatus::Ok));
        self.w.pump();
    }

    fn unregister(&mut self, peer: &TestPeer) {
        assert_eq!(self.w.request(self.server, peer.id, testing::unregister(NS)), None);
        self.w.pump();
    }

    /// The peers found and lost so far, in order: `+` found, `-` lost.
    fn changes(&mut self) -> Vec<(char, PeerId)> {
        let events = self.w.take_events(self.watcher);
        events
            .into_iter()
            .filter_map(|event| match event {
                ClientEvent::PeerFound { discovery, .. } => Some(('+', discovery.peer)),
                ClientEvent::PeerLost { peer, .. } => Some(('-', peer)),
                _ => None,
            })
            .collect()
    }

    fn resumed(&mut self) -> Vec<bool> {
        let events = std::mem::take(&mut self.w.server_events);
        events
            .into_iter()
            .filter_map(|(_, e)| match e {
                super::super::Event::Subscribed { resumed, .. } => Some(resumed),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_subscriber_sees_every_arrival_and_departure_as_it_happens_in_order() {
    let mut s = watching(ServerConfig::default());
    let (a, b, c) = (TestPeer::new(2), TestPeer::new(3), TestPeer::new(4));
    s.register(&a, 86400);
    assert_eq!(s.changes(), vec![('+', a.id)], "seen at once, no interval passed");
    s.register(&b, 7200);
    s.register(&c, 86400);
    s.unregister(&a);
    assert_eq!(s.changes(), vec![('+', b.id), ('+', c.id), ('-', a.id)]);
    // A refresh is no news; an expiry is a departure at the moment it happens.
    s.register(&c, 86400);
    assert_eq!(s.changes(), vec![]);
    let expiry = s.w.now + Duration::from_secs(7200);
    s.w.run_until(expiry);
    assert_eq!(s.changes(), vec![('-', b.id)]);
    assert_eq!(s.w.now, expiry);
    // Nothing was polled: one subscription did it all. The refresh went
    // out too (the subscriber holds the expiry the point holds), unreported.
    assert_eq!(s.w.server(s.server).stats().requests.total(), 5);
    assert_eq!(s.w.server(s.server).stats().subscription_events, 6);
}

#[test]
fn a_subscriber_joining_late_gets_what_is_there_first() {
    let mut w = World::new();
    let server = w.add_server(100, ServerConfig::default());
    let peers: Vec<_> = (2..40).map(TestPeer::new).collect();
    for peer in &peers {
        let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
        w.request(server, peer.id, testing::register(NS, record, Some(3600)));
    }
    let watcher = w.add_client(&TestPeer::new(1), ClientConfig::default());
    let now = w.now;
    w.client(watcher).set_server_subscribes(now, server, true);
    w.client(watcher).watch(now, server, ns()).unwrap();
    w.pump();
    let found =
        w.take_events(watcher).into_iter().filter(|e| matches!(e, ClientEvent::PeerFound { .. }));
    assert_eq!(found.count(), peers.len());
}

#[test]
fn a_subscriber_that_comes_back_misses_nothing_and_gets_only_what_changed() {
    let mut s = watching(ServerConfig::default());
    let (a, b, c) = (TestPeer::new(2), TestPeer::new(3), TestPeer::new(4));
    s.register(&a, 3600);
    s.register(&b, 3600);
    assert_eq!(s.changes(), vec![('+', a.id), ('+', b.id)]);
    assert_eq!(s.resumed(), vec![false]);
    // The connection breaks; meanwhile one leaves and one arrives.
    let watcher = s.watcher;
    s.w.cut_subscriptions(watcher);
    s.unregister(&a);
    s.register(&c, 3600);
    assert_eq!(s.changes(), vec![]);
    // The watch comes back after its backoff, from where it was.
    s.w.advance(Duration::from_secs(3));
    assert_eq!(s.resumed(), vec![true]);
    assert_eq!(s.changes(), vec![('-', a.id), ('+', c.id)]);
    // Only the change was sent again: a, b, then a's departure and c.
    assert_eq!(s.w.server(s.server).stats().subscription_events, 4);
}

#[test]
fn a_position_the_window_no_longer_covers_gets_a_full_resend() {
    let limits = SubscriptionLimits { removal_window: 2, ..SubscriptionLimits::default() };
    let mut s = watching(ServerConfig { subscriptions: limits, ..ServerConfig::default() });
    let peers: Vec<_> = (2..7).map(TestPeer::new).collect();
    for peer in &peers {
        s.register(peer, 3600);
    }
    s.changes();
    assert_eq!(s.resumed(), vec![false]);
    let watcher = s.watcher;
    s.w.cut_subscriptions(watcher);
    for peer in &peers[..3] {
        s.unregister(peer);
    }
    s.w.advance(Duration::from_secs(3));
    assert_eq!(s.resumed(), vec![false], "a full resend, not a resumption");
    let mut lost: Vec<_> =
        s.changes().into_iter().filter(|(c, _)| *c == '-').map(|(_, p)| p).collect();
    lost.sort();
    let mut gone: Vec<_> = peers[..3].iter().map(|p| p.id).collect();
    gone.sort();
    assert_eq!(lost, gone, "the resend's end tells who left");
    let namespace = ns();
    let left: Vec<_> = s.w.client(watcher).discovered(Some(&namespace)).map(|d| d.peer).collect();
    assert_eq!(left.len(), 2);
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_with_a_status() {
    let limits = SubscriptionLimits { max_backlog: 8 * 1024, ..SubscriptionLimits::default() };
    let config = ServerConfig { subscriptions: limits, ..ServerConfig::default() };
    let mut server = Server::new(config).unwrap();
    let reader = TestPeer::new(1);
    let request = subscribe_request(None);
    server.handle_subscribe(Timestamp::ZERO, reader.id, SubscriptionId(7), &request).unwrap();
    let mut pushed = 0;
    let mut end = None;
    for seed in 2..200 {
        let peer = TestPeer::new(seed);
        let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
        server.handle_request(
            Timestamp::ZERO,
            peer.id,
            RequestId(seed.into()),
            testing::register(NS, record, None),
        );
        while server.poll_transmit().is_some() {}
        // Handed out, never reported written.
        while let Some(push) = server.poll_push() {
            pushed += push.frame.len();
            if push.end {
                end = Some(push.message());
            }
        }
        if end.is_some() {
            break;
        }
    }
    let end = end.expect("dropped");
    let body = end.discover_response.unwrap();
    assert_eq!(read_status(body.status), Ok(ResponseStatus::EUnavailable));
    assert!(body.status_text.unwrap().contains("not read"));
    assert!(pushed <= 8 * 1024 + 512, "held to its bound: {pushed}");
    assert_eq!(server.stats().subscribers_dropped, 1);
    assert_eq!(server.stats().subscriptions, 0);
}

fn subscribe_request(position: Option<Bytes>) -> Vec<u8> {
    prost::Message::encode_to_vec(&proto::Message {
        r#type: Some(MessageType::DiscoverSubscribe as i32),
        discover_subscribe: Some(proto::DiscoverSubscribe {
            supported_subscription_types: vec![SUBSCRIPTION_TYPE.into()],
            ns: Some(NS.into()),
            position,
        }),
        ..Default::default()
    })
}

/// The first answer to a subscription request.
fn first_answer(
    server: &mut Server,
    peer: PeerId,
    id: u64,
    position: Option<Bytes>,
) -> proto::Message {
    server
        .handle_subscribe(Timestamp::ZERO, peer, SubscriptionId(id), &subscribe_request(position))
        .unwrap();
    server.poll_push().expect("an answer").message()
}

#[test]
fn subscriptions_are_limited_per_peer_and_per_point_and_positions_are_checked() {
    let limits = SubscriptionLimits {
        max_subscriptions: 3,
        max_per_peer: 2,
        ..SubscriptionLimits::default()
    };
    let config = ServerConfig { subscriptions: limits, ..ServerConfig::default() };
    let mut server = Server::new(config).unwrap();
    let (a, b) = (TestPeer::new(1).id, TestPeer::new(2).id);
    let status =
        |m: &proto::Message| read_status(m.discover_subscribe_response.as_ref().unwrap().status);
    for id in 1..=2 {
        assert_eq!(status(&first_answer(&mut server, a, id, None)), Ok(ResponseStatus::Ok));
    }
    let refused = first_answer(&mut server, a, 3, None);
    assert_eq!(status(&refused), Ok(ResponseStatus::EUnavailable));
    assert_eq!(status(&first_answer(&mut server, b, 4, None)), Ok(ResponseStatus::Ok));
    assert_eq!(status(&first_answer(&mut server, b, 5, None)), Ok(ResponseStatus::EUnavailable));
    server.handle_unsubscribed(SubscriptionId(1));
    let bad = first_answer(&mut server, b, 6, Some(Bytes::from_static(b"nonsense")));
    assert_eq!(status(&bad), Ok(ResponseStatus::EInvalidCookie));
    assert_eq!(server.stats().subscriptions, 2);
}

#[test]
fn each_subscriber_gets_the_flavour_it_reads_and_departures_name_the_peer() {
    let mut server = Server::new(ServerConfig::default()).unwrap();
    let legacy = TestPeer::new(1);
    server.set_reader_dialect(Timestamp::ZERO, legacy.id, Reader::Legacy);
    let rust = TestPeer::new(2);
    first_answer(&mut server, legacy.id, 1, None);
    first_answer(&mut server, rust.id, 2, None);
    while server.poll_push().is_some() {}
    let peer = TestPeer::new(3);
    let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
    server.handle_request(
        Timestamp::ZERO,
        peer.id,
        RequestId(1),
        testing::register(NS, record.clone(), None),
    );
    server.handle_request(Timestamp::ZERO, peer.id, RequestId(2), testing::unregister(NS));
    let limits = Limits::default().record_limits();
    let mut seen = Vec::new();
    while let Some(push) = server.poll_push() {
        let batch = push.message().discover_response.unwrap();
        let arrival = &batch.registrations[0];
        let parsed = Record::parse(arrival.signed_peer_record.clone().unwrap(), &limits).unwrap();
        let gone = PeerId::from_bytes(batch.departures[0].id.as_ref().unwrap()).unwrap();
        assert_eq!(gone, peer.id);
        assert!(batch.cookie.is_some());
        seen.push((push.subscription, parsed.dialect));
    }
    seen.sort_by_key(|(id, _)| *id);
    assert_eq!(
        seen,
        vec![
            (SubscriptionId(1), Dialect::Legacy),
            (SubscriptionId(2), Dialect::Signed(Flavour::RustLibp2p))
        ]
    );
}

#[test]
fn a_server_without_the_protocol_is_polled_as_before() {
    let mut w = World::new();
    let server = w.add_server(100, ServerConfig::default());
    let watcher = w.add_client(&TestPeer::new(1), ClientConfig::default());
    // Identify said it subscribes, but the protocol is refused: evidence.
    w.network = Box::new(|sent| match sent.transmit.subscription {
        true => Fate::Fail(Failure::Unsupported),
        false => Fate::NOW,
    });
    let now = w.now;
    w.client(watcher).set_server_subscribes(now, server, true);
    w.client(watcher).watch(now, server, ns()).unwrap();
    w.pump();
    let peer = TestPeer::new(2);
    let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
    w.request(server, peer.id, testing::register(NS, record, Some(3600)));
    w.advance(Duration::from_secs(61));
    let found = w.take_events(watcher).into_iter().any(
        |e| matches!(e, ClientEvent::PeerFound { discovery, .. } if discovery.peer == peer.id),
    );
    assert!(found, "found by polling");
    assert_eq!(w.server(server).stats().subscriptions, 0);
    assert!(w.server(server).stats().requests.total() >= 2);
}

#[test]
fn discover_subscribe_on_the_request_protocol_names_the_type_or_refuses() {
    let mut w = World::new();
    let server = w.add_server(100, ServerConfig::default());
    let peer = TestPeer::new(1).id;
    let ask = |types: Vec<String>| proto::Message {
        r#type: Some(MessageType::DiscoverSubscribe as i32),
        discover_subscribe: Some(proto::DiscoverSubscribe {
            supported_subscription_types: types,
            ns: Some(NS.into()),
            position: None,
        }),
        ..Default::default()
    };
    let ours =
        w.request(server, peer, ask(vec!["inmem".into(), SUBSCRIPTION_TYPE.into()])).unwrap();
    assert_eq!(ours.message_type(), Ok(MessageType::DiscoverSubscribeResponse));
    let body = ours.discover_subscribe_response.unwrap();
    assert_eq!(read_status(body.status), Ok(ResponseStatus::Ok));
    assert_eq!(body.subscription_type.as_deref(), Some(SUBSCRIPTION_TYPE));
    let berty = w.request(server, peer, ask(vec!["inmem".into()])).unwrap();
    let body = berty.discover_subscribe_response.unwrap();
    assert_eq!(read_status(body.status), Ok(ResponseStatus::EUnavailable));
    assert!(body.status_text.unwrap().contains(SUBSCRIPTION_TYPE));
}

#[test]
fn subscribers_told_the_same_change_in_the_same_flavour_share_one_encoding() {
    let mut server = Server::new(ServerConfig::default()).unwrap();
    let legacy = TestPeer::new(1);
    server.set_reader_dialect(Timestamp::ZERO, legacy.id, Reader::Legacy);
    first_answer(&mut server, legacy.id, 1, None);
    first_answer(&mut server, TestPeer::new(2).id, 2, None);
    first_answer(&mut server, TestPeer::new(3).id, 3, None);
    while server.poll_push().is_some() {}
    let peer = TestPeer::new(4);
    let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
    let register = testing::register(NS, record, None);
    server.handle_request(Timestamp::ZERO, peer.id, RequestId(1), register);
    let pushes: Vec<Push> = std::iter::from_fn(|| server.poll_push()).collect();
    assert_eq!(pushes.len(), 3);
    let (legacy, rust) = (&pushes[0].frame, [&pushes[1].frame, &pushes[2].frame]);
    assert_eq!(rust[0].as_ptr(), rust[1].as_ptr(), "one encoding for both");
    assert_ne!(legacy, rust[0], "another flavour, another batch");
    assert_eq!(pushes[1].message(), pushes[2].message());
}

#[test]
fn a_point_nobody_subscribed_to_keeps_no_removals_and_its_first_subscriber_misses_nothing() {
    let mut server = Server::new(ServerConfig::default()).unwrap();
    let churn = |server: &mut Server, seed: u32| {
        let peer = TestPeer::new(seed);
        let record = peer.record(Dialect::Signed(Flavour::RustLibp2p));
        server.handle_request(
            Timestamp::ZERO,
            peer.id,
            RequestId(1),
            testing::register(NS, record, None),
        );
        server.handle_request(Timestamp::ZERO, peer.id, RequestId(2), testing::unregister(NS));
        while server.poll_transmit().is_some() {}
    };
    for seed in 10..20 {
        churn(&mut server, seed);
    }
    assert!(server.subscriptions.removals.is_empty());
    let reader = TestPeer::new(1).id;
    first_answer(&mut server, reader, 1, None);
    let position = std::iter::from_fn(|| server.poll_push())
        .find_map(|push| push.message().discover_response?.cookie)
        .expect("a first batch with its position");
    churn(&mut server, 30);
    assert_eq!(server.subscriptions.removals.len(), 1);
    server.handle_unsubscribed(SubscriptionId(1));
    // Coming back from the position the first subscription got resumes.
    server
        .handle_subscribe(
            Timestamp::ZERO,
            reader,
            SubscriptionId(2),
            &subscribe_request(Some(position)),
        )
        .unwrap();
    let events: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
    assert!(events.contains(&super::super::Event::Subscribed {
        peer: reader,
        namespace: ns(),
        resumed: true
    }));
}
