use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use super::*;
use crate::cookie::Cookie;
use crate::proto::{DiscoverResponse, RegisterResponse, read_status};
use crate::record::{Dialect, Flavour, Reader, Record};
use crate::testing::{self, DIALECTS, TestPeer, World};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);
const LEGACY: Dialect = Dialect::Legacy;

/// The server alone in the shared test world, asked directly.
struct Harness {
    w: World,
    id: PeerId,
}

impl Harness {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        let mut w = World::new();
        let id = w.add_server(100, ServerConfig { limits, ..ServerConfig::default() });
        Harness { w, id }
    }

    fn server(&mut self) -> &mut Server {
        self.w.server(self.id)
    }

    fn now(&self) -> Timestamp {
        self.w.now
    }

    /// Moves the clock without firing the server's timer.
    fn advance(&mut self, secs: u64) {
        self.w.now = self.w.now + Duration::from_secs(secs);
    }

    /// Sends `message` and returns the one response, if any.
    fn request(&mut self, peer: &PeerId, message: proto::Message) -> Option<proto::Message> {
        self.w.request(self.id, *peer, message)
    }

    fn register(
        &mut self,
        peer: &TestPeer,
        ns: &str,
        dialect: Dialect,
        ttl: Option<u64>,
    ) -> RegisterResponse {
        let message = testing::register(ns, peer.record(dialect), ttl);
        let response = self.request(&peer.id, message).expect("REGISTER is answered");
        assert_eq!(response.message_type(), Ok(MessageType::RegisterResponse));
        response.register_response.expect("a register response body")
    }

    fn register_ok(&mut self, peer: &TestPeer, ns: &str, dialect: Dialect) {
        let response = self.register(peer, ns, dialect, None);
        assert_eq!(read_status(response.status), Ok(ResponseStatus::Ok), "{response:?}");
    }

    fn register_ok_ttl(&mut self, peer: &TestPeer, ns: &str, ttl: u64) {
        let response = self.register(peer, ns, RUST, Some(ttl));
        assert_eq!(response.ttl, Some(ttl), "{response:?}");
    }

    fn discover(
        &mut self,
        peer: &PeerId,
        ns: Option<&str>,
        limit: Option<u64>,
        cookie: Option<Bytes>,
    ) -> DiscoverResponse {
        let response =
            self.request(peer, testing::discover(ns, limit, cookie)).expect("DISCOVER is answered");
        assert_eq!(response.message_type(), Ok(MessageType::DiscoverResponse));
        response.discover_response.expect("a discover response body")
    }

    /// The peers a DISCOVER returns, parsed from their records.
    fn discover_peers(&mut self, peer: &PeerId, ns: Option<&str>) -> Vec<PeerId> {
        let response = self.discover(peer, ns, None, None);
        assert_eq!(read_status(response.status), Ok(ResponseStatus::Ok));
        response.registrations.iter().map(record_peer).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        let mut events: Vec<Event> =
            std::mem::take(&mut self.w.server_events).into_iter().map(|(_, e)| e).collect();
        events.extend(std::iter::from_fn(|| self.server().poll_event()));
        events
    }
}

fn record_peer(register: &proto::Register) -> PeerId {
    let limits = Limits::default().record_limits();
    let record = Record::parse(register.signed_peer_record.clone().unwrap(), &limits).unwrap();
    record.peer.unwrap()
}

fn status(response: &RegisterResponse) -> (ResponseStatus, String) {
    (read_status(response.status).unwrap(), response.status_text.clone().unwrap_or_default())
}

#[test]
fn a_registered_peer_is_discovered_with_its_own_record() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    let response = h.register(&a, "chat", RUST, Some(3600));
    assert_eq!(response.ttl, Some(3600));
    let page = h.discover(&b.id, Some("chat"), None, None);
    assert_eq!(page.registrations.len(), 1);
    let reg = &page.registrations[0];
    assert_eq!(reg.ns.as_deref(), Some("chat"));
    assert_eq!(reg.signed_peer_record, Some(a.record(RUST)));
    assert_eq!(reg.ttl, Some(3600));
    assert_eq!(
        h.events()[0],
        Event::Registered {
            peer: a.id,
            namespace: Namespace::new("chat", 255).unwrap(),
            ttl: Duration::from_secs(3600),
            dialect: RUST
        }
    );
}

#[test]
fn a_missing_or_zero_ttl_gets_the_default() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    assert_eq!(h.register(&a, "x", RUST, None).ttl, Some(7200));
    assert_eq!(h.register(&a, "y", RUST, Some(0)).ttl, Some(7200));
}

#[test]
fn discovered_ttl_is_what_is_left() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    h.advance(7000);
    assert_eq!(h.discover(&a.id, Some("x"), None, None).registrations[0].ttl, Some(200));
}

#[test]
fn re_registering_replaces_the_registration_and_reports_a_refresh() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    h.advance(7000);
    h.register_ok(&a, "x", RUST);
    h.advance(7000);
    let page = h.discover(&a.id, Some("x"), None, None);
    assert_eq!(page.registrations.len(), 1, "replaced, not duplicated");
    assert_eq!(page.registrations[0].ttl, Some(200));
    let events = h.events();
    assert!(
        matches!(&events[1], Event::Refreshed { ttl, .. } if ttl.as_secs() == 7200),
        "{events:?}"
    );
    assert_eq!(h.server().stats().registrations, 1);
}

#[test]
fn an_expired_registration_is_not_discovered_even_before_the_timeout_fires() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    h.register_ok(&a, "x", RUST);
    h.advance(7199);
    assert_eq!(h.discover_peers(&b.id, Some("x")), vec![a.id]);
    h.advance(1);
    assert_eq!(h.discover_peers(&b.id, Some("x")), Vec::<PeerId>::new());
    assert!(
        h.events()
            .contains(&Event::Expired { peer: a.id, namespace: Namespace::new("x", 9).unwrap() })
    );
}

#[test]
fn the_timeout_is_the_earliest_expiry_and_moves_forward_after_it_fires() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    assert_eq!(h.server().poll_timeout(), None);
    h.register_ok_ttl(&a, "x", 300);
    h.register_ok_ttl(&b, "x", 150);
    assert_eq!(h.server().poll_timeout(), Some(Timestamp::from_secs(150)));
    h.server().handle_timeout(Timestamp::from_secs(150));
    assert_eq!(h.server().poll_timeout(), Some(Timestamp::from_secs(300)));
    h.server().handle_timeout(Timestamp::from_secs(300));
    assert_eq!(h.server().poll_timeout(), None);
    let expired: Vec<_> =
        h.events().into_iter().filter(|e| matches!(e, Event::Expired { .. })).collect();
    assert_eq!(expired.len(), 2);
    // Their readers are remembered until they disconnect, not until expiry.
    let stats = h.server().stats();
    let counts =
        (stats.registrations, stats.peers, stats.records_verified, stats.remembered_readers);
    assert_eq!(counts, (0, 0, 2, 2));
}

#[test]
fn a_peer_refreshing_at_80_percent_stays_registered_for_a_simulated_month() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    for _ in 0..(30 * 24 * 3600 / 5760) {
        h.register_ok(&a, "x", RUST);
        h.advance(5760);
        assert_eq!(h.discover_peers(&b.id, Some("x")), vec![a.id]);
    }
    assert_eq!(h.server().stats().records_verified, 1, "refreshes reuse the verified record");
}

#[test]
fn unregister_removes_the_registration_and_sends_no_response() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    assert_eq!(h.request(&a.id, testing::unregister("x")), None);
    assert!(h.discover_peers(&a.id, Some("x")).is_empty());
    assert!(h.events().iter().any(|e| matches!(e, Event::Unregistered { .. })));
    assert_eq!(h.server().poll_timeout(), None);
    assert_eq!(h.request(&a.id, testing::unregister("never-registered")), None);
}

#[test]
fn a_peer_cannot_unregister_someone_else() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    h.register_ok(&a, "x", RUST);
    h.request(&b.id, testing::unregister("x"));
    assert_eq!(h.discover_peers(&b.id, Some("x")), vec![a.id]);
}

#[test]
fn paging_with_cookies_returns_every_registration_once_then_only_what_is_new() {
    let mut h = Harness::new();
    let peers: Vec<_> = (0..25).map(TestPeer::new).collect();
    for p in &peers {
        h.register_ok(p, "x", RUST);
    }
    let reader = peers[0].id;
    let mut seen = Vec::new();
    let mut cookie = None;
    for _ in 0..3 {
        let page = h.discover(&reader, Some("x"), Some(10), cookie.take());
        seen.extend(page.registrations.iter().map(record_peer));
        cookie = page.cookie;
    }
    seen.sort();
    let mut all: Vec<_> = peers.iter().map(|p| p.id).collect();
    all.sort();
    assert_eq!(seen, all, "each once, wherever the walk started");
    let empty = h.discover(&reader, Some("x"), Some(10), cookie.clone());
    assert!(empty.registrations.is_empty());
    assert_eq!(empty.cookie, cookie, "an empty page keeps the position");
    let newcomer = TestPeer::new(99);
    h.register_ok(&newcomer, "x", RUST);
    let page = h.discover(&reader, Some("x"), Some(10), cookie);
    assert_eq!(page.registrations.iter().map(record_peer).collect::<Vec<_>>(), vec![newcomer.id]);
}

#[test]
fn discovering_all_namespaces_returns_each_registration_with_its_namespace() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    h.register_ok(&a, "x", RUST);
    h.register_ok(&b, "y", RUST);
    h.register_ok(&a, "y", RUST);
    let page = h.discover(&a.id, None, None, None);
    let mut got: Vec<_> =
        page.registrations.iter().map(|r| (r.ns.clone().unwrap(), record_peer(r))).collect();
    got.sort();
    let mut expected = vec![("x".into(), a.id), ("y".into(), b.id), ("y".into(), a.id)];
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(page.cookie.as_ref().map(|c| c.len()), Some(8), "all-namespaces cookie has no name");
}

#[test]
fn a_cookie_for_another_namespace_or_from_the_future_is_refused() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    let cookie = h.discover(&a.id, Some("x"), None, None).cookie;
    for (ns, cookie, why) in [
        (Some("y"), cookie.clone(), "another namespace"),
        (None, cookie, "all namespaces"),
        (Some("x"), Some(Cookie { position: 2, namespace: None }.to_bytes()), "forged"),
        (Some("x"), Some(Bytes::from_static(b"garbage")), "malformed"),
    ] {
        let page = h.discover(&a.id, ns, None, cookie);
        assert_eq!(read_status(page.status), Ok(ResponseStatus::EInvalidCookie), "{why}");
        assert!(page.status_text.unwrap().contains("cookie"));
    }
}

#[test]
fn ttls_outside_the_range_are_refused_with_the_range_in_the_text() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    for ttl in [1, 119, 72 * 3600 + 1, u64::MAX] {
        let (status, text) = status(&h.register(&a, "x", RUST, Some(ttl)));
        assert_eq!(status, ResponseStatus::EInvalidTtl);
        assert!(text.contains("120 to 259200"), "{text}");
    }
    assert_eq!(h.register(&a, "x", RUST, Some(120)).ttl, Some(120));
    assert_eq!(h.register(&a, "x", RUST, Some(72 * 3600)).ttl, Some(72 * 3600));
}

#[test]
fn empty_and_over_long_namespaces_are_refused() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    let (status_, text) = status(&h.register(&a, "", RUST, None));
    assert_eq!((status_, text.as_str()), (ResponseStatus::EInvalidNamespace, "namespace is empty"));
    let long = "n".repeat(256);
    let (status_, text) = status(&h.register(&a, &long, RUST, None));
    assert_eq!(status_, ResponseStatus::EInvalidNamespace);
    assert!(text.contains("255"), "{text}");
    let page = h.discover(&a.id, Some(&long), None, None);
    assert_eq!(read_status(page.status), Ok(ResponseStatus::EInvalidNamespace));
    assert_eq!(status(&h.register(&a, &long[..255], RUST, None)).0, ResponseStatus::Ok);
}

#[test]
fn the_per_peer_per_namespace_and_total_limits_hold_and_name_themselves() {
    let limits = Limits {
        max_registrations_per_peer: 2,
        max_registrations_per_namespace: 3,
        max_registrations: 5,
        ..Limits::default()
    };
    let mut h = Harness::with(limits);
    let peers: Vec<_> = (0..6).map(TestPeer::new).collect();
    h.register_ok(&peers[0], "a", RUST);
    h.register_ok(&peers[0], "b", RUST);
    let (s, text) = status(&h.register(&peers[0], "c", RUST, None));
    assert_eq!(s, ResponseStatus::ENotAuthorized);
    assert!(text.contains("limit per peer"), "{text}");
    h.register_ok(&peers[0], "a", RUST); // a refresh is not a new registration
    h.register_ok(&peers[1], "a", RUST);
    h.register_ok(&peers[2], "a", RUST);
    let (s, text) = status(&h.register(&peers[3], "a", RUST, None));
    assert_eq!(s, ResponseStatus::EUnavailable);
    assert!(text.contains("limit per namespace"), "{text}");
    h.register_ok(&peers[3], "c", RUST);
    let (s, text) = status(&h.register(&peers[4], "d", RUST, None));
    assert_eq!(s, ResponseStatus::EUnavailable);
    assert!(text.contains("its limit"), "{text}");
    assert_eq!(h.server().stats().registrations, 5);
    h.request(&peers[3].id, testing::unregister("c"));
    h.register_ok(&peers[4], "d", RUST);
}

#[test]
fn one_address_cannot_hold_more_than_its_quota_whatever_its_peer_ids() {
    let limits = Limits { max_registrations_per_origin: Some(3), ..Limits::default() };
    let mut h = Harness::with(limits);
    let (home, elsewhere) =
        (Origin::from_ipv4([192, 0, 2, 1]).unwrap(), Origin::from_ipv4([192, 0, 2, 2]).unwrap());
    let peers: Vec<_> = (0..6).map(TestPeer::new).collect();
    for peer in &peers[..4] {
        h.server().set_peer_origin(peer.id, home);
    }
    h.server().set_peer_origin(peers[4].id, elsewhere);
    h.register_ok(&peers[0], "a", RUST);
    h.register_ok(&peers[1], "a", RUST);
    h.register_ok(&peers[2], "b", STANDARD);
    let (s, text) = status(&h.register(&peers[3], "a", RUST, None));
    assert_eq!(s, ResponseStatus::EUnavailable);
    assert_eq!(text, "192.0.2.1 holds 3 registrations, the limit per address");
    h.register_ok(&peers[0], "a", RUST); // a refresh is not a new registration
    h.register_ok(&peers[4], "a", RUST); // another address has its own quota
    h.register_ok(&peers[5], "a", RUST); // and an unknown origin counts toward none
    h.request(&peers[1].id, testing::unregister("a"));
    h.register_ok(&peers[3], "a", RUST);
    // Expiry frees the quota too.
    h.advance(3 * 3600);
    h.register_ok(&peers[1], "c", RUST);
}

#[test]
fn every_request_is_counted_by_type_and_status() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    h.register(&a, "x", RUST, Some(1));
    h.discover(&a.id, Some("x"), None, None);
    h.discover(&a.id, Some("x"), None, Some(Bytes::from_static(b"bad")));
    h.request(&a.id, testing::unregister("x"));
    let mut other = testing::discover(None, None, None);
    other.r#type = Some(MessageType::RegisterResponse as i32);
    h.request(&a.id, other);
    let counts = h.server().stats().requests;
    let kinds = [RequestKind::Register, RequestKind::Discover, RequestKind::Unregister];
    let [register, discover, unregister] = kinds;
    assert_eq!(counts.get(register, Some(ResponseStatus::Ok)), 1);
    assert_eq!(counts.get(register, Some(ResponseStatus::EInvalidTtl)), 1);
    assert_eq!(counts.get(discover, Some(ResponseStatus::Ok)), 1);
    assert_eq!(counts.get(discover, Some(ResponseStatus::EInvalidCookie)), 1);
    assert_eq!(counts.get(unregister, None), 1);
    assert_eq!(counts.get(RequestKind::Other, Some(ResponseStatus::EUnavailable)), 1);
    assert_eq!(counts.iter().count(), 6);
    assert_eq!(counts.total(), 6);
}

#[test]
fn a_record_for_another_peer_is_not_authorized() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    for dialect in DIALECTS {
        let response = h.request(&b.id, testing::register("x", a.record(dialect), None)).unwrap();
        let (s, text) = status(&response.register_response.unwrap());
        assert_eq!(s, ResponseStatus::ENotAuthorized, "{dialect:?}");
        assert!(text.contains("not for the sender"), "{text}");
    }
    assert_eq!(h.server().stats().registrations, 0);
}

#[test]
fn a_tampered_envelope_is_refused_as_an_invalid_record() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    let mut bytes = a.record(RUST).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // inside the signature
    let response = h.request(&a.id, testing::register("x", bytes.into(), None)).unwrap();
    let (s, text) = status(&response.register_response.unwrap());
    assert_eq!(
        (s, text.as_str()),
        (ResponseStatus::EInvalidSignedPeerRecord, "envelope signature does not verify")
    );
}

#[test]
fn garbage_and_missing_records_are_refused_with_a_reason() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    for (bytes, want) in [
        (Bytes::new(), "missing peer record"),
        (Bytes::from_static(&[0xff, 0xff]), "malformed peer record: not a protobuf message"),
        (Bytes::from_static(&[0x0a, 0x00]), "peer record has no addresses"),
    ] {
        let response = h.request(&a.id, testing::register("x", bytes, None)).unwrap();
        assert_eq!(
            status(&response.register_response.unwrap()),
            (ResponseStatus::EInvalidSignedPeerRecord, want.into())
        );
    }
}

#[test]
fn a_legacy_record_without_an_id_registers_the_sender() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    let info = proto::PeerInfo { id: None, addrs: vec![a.addr.to_vec().into()] };
    let response =
        h.request(&a.id, testing::register("x", prost::Message::encode_to_vec(&info).into(), None));
    assert_eq!(
        read_status(response.unwrap().register_response.unwrap().status),
        Ok(ResponseStatus::Ok)
    );
    let now = h.now();
    h.server().set_reader_dialect(now, b.id, LEGACY);
    let page = h.discover(&b.id, Some("x"), None, None);
    assert_eq!(
        page.registrations[0].signed_peer_record,
        Some(a.record(LEGACY)),
        "served with the id filled in"
    );
}

#[test]
fn each_reader_gets_only_what_it_can_parse() {
    let mut h = Harness::new();
    let (r, s, l) = (TestPeer::new(1), TestPeer::new(2), TestPeer::new(3));
    h.register_ok(&r, "x", RUST);
    h.register_ok(&s, "x", STANDARD);
    h.register_ok(&l, "x", LEGACY);
    // Each learned its reader dialect from its own REGISTER.
    assert_eq!(h.discover_peers(&r.id, Some("x")), vec![r.id]);
    assert_eq!(h.discover_peers(&s.id, Some("x")), vec![s.id]);
    let legacy_page = h.discover(&l.id, Some("x"), None, None);
    let mut expected: Vec<_> = [&r, &s, &l].iter().map(|p| Some(p.record(LEGACY))).collect();
    let mut got: Vec<_> =
        legacy_page.registrations.iter().map(|x| x.signed_peer_record.clone()).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "a legacy reader gets every registration as PeerInfo");
    // A peer that never registered reads rust-libp2p's flavour unless told otherwise.
    let stranger = TestPeer::new(4);
    assert_eq!(h.discover_peers(&stranger.id, Some("x")), vec![r.id]);
    let now = h.now();
    h.server().set_reader_dialect(now, stranger.id, STANDARD);
    assert_eq!(h.discover_peers(&stranger.id, Some("x")), vec![s.id]);
    let now = h.now();
    h.server().handle_disconnected(now, &stranger.id);
    assert_eq!(h.discover_peers(&stranger.id, Some("x")), vec![r.id]);
}

#[test]
fn unsupported_message_types_get_a_status_not_silence() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    for raw in [1, 4, 101, 7777] {
        let message = proto::Message { r#type: Some(raw), ..Default::default() };
        let response = h.request(&a.id, message).expect("answered");
        let body = response.discover_response.unwrap();
        assert_eq!(read_status(body.status), Ok(ResponseStatus::EUnavailable));
        assert!(body.status_text.unwrap().contains(&raw.to_string()));
    }
}

#[test]
fn a_page_stops_before_the_response_frame_limit_and_the_cookie_continues_it() {
    let limits = Limits { max_response_frame: 2048, max_record_bytes: 1024, ..Limits::default() };
    let mut h = Harness::with(limits.clone());
    let peers: Vec<_> = (0..40).map(TestPeer::new).collect();
    for p in &peers {
        h.register_ok(p, "x", RUST);
    }
    let mut seen = 0;
    let mut cookie = None;
    for _ in 0..40 {
        let now = h.now();
        h.server().handle_request(
            now,
            peers[0].id,
            RequestId(7),
            testing::discover(Some("x"), Some(1000), cookie.take()),
        );
        let frame = h.server().poll_transmit().unwrap().to_frame().unwrap();
        assert!(frame.len() <= limits.max_response_frame, "{} bytes", frame.len());
        let body = codec::FrameDecoder::new(limits.max_response_frame)
            .feed(&mut &frame[..])
            .unwrap()
            .unwrap();
        let page = codec::decode_message(&body).unwrap().discover_response.unwrap();
        seen += page.registrations.len();
        cookie = page.cookie;
        if page.registrations.is_empty() {
            break;
        }
    }
    assert_eq!(seen, 40);
}

#[test]
fn a_discover_limit_above_the_maximum_is_clamped() {
    let limits = Limits { max_discover_limit: 3, default_discover_limit: 2, ..Limits::default() };
    let mut h = Harness::with(limits);
    for p in (0..5).map(TestPeer::new) {
        h.register_ok(&p, "x", RUST);
    }
    let reader = TestPeer::new(0).id;
    assert_eq!(h.discover(&reader, Some("x"), Some(1_000_000), None).registrations.len(), 3);
    assert_eq!(h.discover(&reader, Some("x"), None, None).registrations.len(), 2);
}

#[test]
fn an_undecodable_frame_is_an_error_for_the_adapter_and_nothing_else_changes() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    let now = h.now();
    let err = h.server().handle_frame(now, a.id, RequestId(9), &[0x0a, 0xff]).unwrap_err();
    assert!(matches!(err, CodecError::Malformed(_)), "{err:?}");
    assert!(h.server().poll_transmit().is_none());
    assert_eq!(h.discover_peers(&a.id, Some("x")), vec![a.id]);
}

#[test]
fn time_running_backwards_is_treated_as_standing_still() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.advance(1000);
    h.register_ok(&a, "x", RUST);
    h.w.now = Timestamp::ZERO;
    assert_eq!(h.discover(&a.id, Some("x"), None, None).registrations[0].ttl, Some(7200));
}

#[test]
fn namespace_statistics_count_live_registrations() {
    let mut h = Harness::new();
    for (seed, ns) in [(1, "b"), (2, "a"), (3, "b")] {
        h.register_ok(&TestPeer::new(seed), ns, LEGACY);
    }
    let stats: Vec<_> = h.server().namespaces(None).map(|(ns, n)| (ns.to_string(), n)).collect();
    assert_eq!(stats, vec![("a".into(), 1), ("b".into(), 2)]);
    let after_a: Vec<_> = h.server().namespaces(Some("a")).map(|(ns, _)| ns.to_string()).collect();
    assert_eq!(after_a, ["b"], "a page starts after the name given");
    assert_eq!(h.server().stats().peers, 3);
    assert_eq!(h.server().stats().namespaces, 2);
}

#[test]
fn a_cookie_from_before_a_restart_with_a_later_initial_sequence_sees_the_new_registry() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    h.register_ok(&a, "x", RUST);
    let old_cookie = h.discover(&b.id, Some("x"), None, None).cookie;
    let config = ServerConfig { initial_sequence: 1_000_000, ..ServerConfig::default() };
    *h.server() = Server::new(config).unwrap();
    h.register_ok(&a, "x", RUST);
    let page = h.discover(&b.id, Some("x"), None, old_cookie);
    assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
    assert_eq!(page.registrations.iter().map(record_peer).collect::<Vec<_>>(), vec![a.id]);
}

#[test]
fn a_reader_of_any_dialect_gets_every_registration_as_registered() {
    let mut h = Harness::new();
    let (r, l, reader) = (TestPeer::new(1), TestPeer::new(2), TestPeer::new(3));
    h.register_ok(&r, "x", RUST);
    h.register_ok(&l, "x", LEGACY);
    let now = h.now();
    h.server().set_reader_dialect(now, reader.id, Reader::Any);
    // Its own signed REGISTER does not narrow what the adapter said it reads.
    h.register_ok(&reader, "y", RUST);
    let page = h.discover(&reader.id, Some("x"), None, None);
    let mut got: Vec<_> = page.registrations.iter().map(|x| x.signed_peer_record.clone()).collect();
    got.sort();
    let mut expected = vec![Some(r.record(RUST)), Some(l.record(LEGACY))];
    expected.sort();
    assert_eq!(got, expected);
}

fn served_records(page: &DiscoverResponse) -> Vec<Bytes> {
    page.registrations.iter().map(|r| r.signed_peer_record.clone().unwrap()).collect()
}

#[test]
fn a_peer_registered_in_two_flavours_is_found_by_rust_and_by_standard_readers() {
    let mut h = Harness::new();
    let (a, rust_reader, standard_reader) = (TestPeer::new(1), TestPeer::new(2), TestPeer::new(3));
    h.register_ok(&a, "x", RUST);
    h.register_ok(&a, "x", STANDARD);
    let now = h.now();
    h.server().set_reader_dialect(now, rust_reader.id, Reader::Signed(Flavour::RustLibp2p));
    let now = h.now();
    h.server().set_reader_dialect(now, standard_reader.id, Reader::Signed(Flavour::Standard));
    let page = h.discover(&rust_reader.id, Some("x"), None, None);
    assert_eq!(served_records(&page), vec![a.record(RUST)]);
    let page = h.discover(&standard_reader.id, Some("x"), None, None);
    assert_eq!(served_records(&page), vec![a.record(STANDARD)]);
    let page = h.discover(&TestPeer::new(4).id, Some("x"), None, None);
    assert_eq!(served_records(&page), vec![a.record(RUST)], "unknown readers get rust's");
    let now = h.now();
    h.server().set_reader_dialect(now, TestPeer::new(5).id, Reader::Legacy);
    let page = h.discover(&TestPeer::new(5).id, Some("x"), None, None);
    assert_eq!(served_records(&page), vec![a.record(LEGACY)]);
    assert_eq!(h.server().stats().registrations, 1, "one registration, two envelopes");
}

#[test]
fn one_register_carrying_both_flavours_serves_every_reader_and_refreshes_without_verifying() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    let mut message = testing::register("x", a.record(RUST), None);
    message.register.as_mut().unwrap().other_records = vec![a.record(STANDARD)];
    let response = h.request(&a.id, message.clone()).unwrap().register_response.unwrap();
    assert_eq!(read_status(response.status), Ok(ResponseStatus::Ok), "{response:?}");
    for (reader, dialect) in [(2, RUST), (3, STANDARD), (4, LEGACY)] {
        let peer = TestPeer::new(reader).id;
        let now = h.now();
        h.server().set_reader_dialect(now, peer, dialect);
        let page = h.discover(&peer, Some("x"), None, None);
        assert_eq!(served_records(&page), vec![a.record(dialect)], "{dialect:?}");
    }
    let verified = h.server().stats().records_verified;
    assert_eq!(verified, 2);
    h.advance(3600);
    let response = h.request(&a.id, message).unwrap().register_response.unwrap();
    assert_eq!(read_status(response.status), Ok(ResponseStatus::Ok));
    assert_eq!(h.server().stats().records_verified, verified, "a refresh reuses both checks");
}

#[test]
fn a_flavour_with_other_addresses_replaces_the_registration_instead_of_joining_it() {
    let mut h = Harness::new();
    let (a, standard_reader) = (TestPeer::new(1), TestPeer::new(2));
    h.register_ok(&a, "x", STANDARD);
    let moved: multiaddr::Multiaddr = "/ip4/127.0.0.2/tcp/9".parse().unwrap();
    let record = Record::sign(&a.keypair, &[moved], 2, Flavour::RustLibp2p).unwrap();
    let response = h.request(&a.id, testing::register("x", record.clone(), None)).unwrap();
    assert_eq!(read_status(response.register_response.unwrap().status), Ok(ResponseStatus::Ok));
    let now = h.now();
    h.server().set_reader_dialect(now, standard_reader.id, Reader::Signed(Flavour::Standard));
    assert!(served_records(&h.discover(&standard_reader.id, Some("x"), None, None)).is_empty());
    let page = h.discover(&TestPeer::new(3).id, Some("x"), None, None);
    assert_eq!(served_records(&page), vec![record]);
}

#[test]
fn an_other_record_that_is_not_a_matching_envelope_refuses_the_register() {
    let mut h = Harness::new();
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    let cases = [
        (vec![a.record(LEGACY)], "must be an envelope of another flavour"),
        (vec![a.record(RUST)], "must be an envelope of another flavour"),
        (vec![b.record(STANDARD)], "other record 0: peer record is for"),
        (vec![Bytes::from_static(b"junk")], "other record 0: malformed"),
        (vec![a.record(STANDARD); 3], "3 other records"),
    ];
    for (others, why) in cases {
        let mut message = testing::register("x", a.record(RUST), None);
        message.register.as_mut().unwrap().other_records = others;
        let response = h.request(&a.id, message).unwrap().register_response.unwrap();
        let (status, text) = status(&response);
        assert!(
            matches!(
                status,
                ResponseStatus::EInvalidSignedPeerRecord | ResponseStatus::ENotAuthorized
            ),
            "{status:?}"
        );
        assert!(text.contains(why), "{text:?} lacks {why:?}");
    }
    assert_eq!(h.server().stats().registrations, 0);
}

#[test]
fn a_discover_all_cookie_continues_a_namespaced_discover() {
    let mut h = Harness::new();
    let (a, b, c) = (TestPeer::new(1), TestPeer::new(2), TestPeer::new(3));
    h.register_ok(&a, "x", RUST);
    let all = h.discover(&c.id, None, None, None);
    h.register_ok(&b, "x", RUST);
    let page = h.discover(&c.id, Some("x"), None, all.cookie.clone());
    assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok), "{page:?}");
    assert_eq!(page.registrations.iter().map(record_peer).collect::<Vec<_>>(), vec![b.id]);
    // The other way round stays refused: a namespace's position says
    // nothing about the others.
    let page = h.discover(&c.id, None, None, page.cookie);
    assert_eq!(read_status(page.status), Ok(ResponseStatus::EInvalidCookie));
}

#[test]
fn a_busy_adapter_gets_every_answerable_request_refused_and_unregisters_applied() {
    let mut h = Harness::new();
    let a = TestPeer::new(1);
    h.register_ok(&a, "x", RUST);
    let busy = |h: &mut Harness, message: proto::Message| {
        let body = prost::Message::encode_to_vec(&message);
        let id = RequestId(7);
        let now = h.now();
        h.server().handle_frame_busy(now, a.id, id, &body, "256 requests in flight").unwrap();
        h.server().poll_transmit().and_then(|t| t.message)
    };
    let answer = busy(&mut h, testing::register("y", a.record(RUST), None)).unwrap();
    let (status, text) = status(&answer.register_response.unwrap());
    assert_eq!((status, text.as_str()), (ResponseStatus::EUnavailable, "256 requests in flight"));
    let answer = busy(&mut h, testing::discover(Some("x"), None, None)).unwrap();
    let page = answer.discover_response.unwrap();
    assert_eq!(read_status(page.status), Ok(ResponseStatus::EUnavailable));
    assert!(busy(&mut h, testing::unregister("x")).is_none(), "UNREGISTER has no answer");
    assert_eq!(h.server().stats().registrations, 0, "but it was applied");
    assert_eq!(h.server().stats().busy_refusals, 2);
}

#[test]
fn agent_versions_map_to_the_flavour_their_stack_verifies() {
    let standard = Some(Reader::Signed(Flavour::Standard));
    for agent in [
        "js-libp2p/2.8.0 UserAgent=v20.11.1",
        "helia/5.0.0 libp2p/2.1.0 UserAgent=linux",
        "github.com/libp2p/go-libp2p@v0.36.0",
        "kubo/0.30.0/",
        "nim-libp2p",
        "nimbus",
    ] {
        assert_eq!(Reader::from_agent_version(agent), standard, "{agent}");
    }
    assert_eq!(Reader::from_agent_version("py-libp2p/0.8.1"), Some(Reader::Legacy));
    assert_eq!(
        Reader::from_agent_version("rust-libp2p/0.47.0"),
        Some(Reader::Signed(Flavour::RustLibp2p))
    );
    assert_eq!(Reader::from_agent_version("rendezvous-rs/0.1.0"), Some(Reader::Any));
    assert_eq!(Reader::from_agent_version("my-app/1.0"), None);
}

#[test]
fn a_js_agent_that_never_registered_gets_only_standard_entries() {
    let mut h = Harness::new();
    let (r, s, l, js) = (TestPeer::new(1), TestPeer::new(2), TestPeer::new(3), TestPeer::new(4));
    h.register_ok(&r, "x", RUST);
    h.register_ok(&s, "x", STANDARD);
    h.register_ok(&l, "x", LEGACY);
    let reader = Reader::from_agent_version("js-libp2p/2.8.0 UserAgent=v20").unwrap();
    let now = h.now();
    h.server().set_reader_dialect(now, js.id, reader);
    let page = h.discover(&js.id, Some("x"), None, None);
    assert_eq!(served_records(&page), vec![s.record(STANDARD)]);
}
