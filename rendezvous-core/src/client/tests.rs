use std::time::Duration;

use libp2p_identity::PeerId;

use super::*;
use crate::testing::TestPeer;
use crate::{Server, ServerConfig};

fn ns(name: &str) -> Namespace {
    Namespace::new(name, 255).unwrap()
}

/// A client wired to a real server core; every request is answered at once
/// unless `answer` says otherwise.
struct World {
    client: Client,
    server: Server,
    server_id: PeerId,
    now: Timestamp,
    events: Vec<ClientEvent>,
    /// What the network does with each request: `None` answers it with the
    /// server, `Some(f)` hands it to the test.
    intercept: Option<Intercept>,
}

type Intercept = Box<dyn FnMut(&ClientTransmit) -> Option<Outcome>>;

enum Outcome {
    Respond(Box<proto::Message>),
    Fail(Failure),
    Drop,
}

impl World {
    fn new(config: ClientConfig) -> Self {
        Self::with_peer(config, TestPeer::new(1))
    }

    fn with_peer(config: ClientConfig, me: TestPeer) -> Self {
        let client = Client::new(config, me.keypair.clone(), vec![me.addr.clone()], 42);
        World {
            client,
            server: Server::new(ServerConfig::default()).unwrap(),
            server_id: TestPeer::new(100).id,
            now: Timestamp::ZERO,
            events: Vec::new(),
            intercept: None,
        }
    }

    fn pump(&mut self) {
        let me = self.client.local_peer_id();
        while let Some(t) = self.client.poll_transmit() {
            assert_eq!(t.server, self.server_id);
            let outcome = self.intercept.as_mut().and_then(|f| f(&t));
            match outcome {
                Some(Outcome::Respond(message)) => {
                    self.client.handle_response(self.now, t.request_id, *message)
                }
                Some(Outcome::Fail(failure)) => {
                    self.client.handle_failure(self.now, t.request_id, failure)
                }
                Some(Outcome::Drop) => {}
                None => {
                    self.server.handle_request(self.now, me, t.request_id, t.message);
                    match self.server.poll_transmit().and_then(|r| r.message) {
                        Some(response) => {
                            assert!(t.expects_response);
                            self.client.handle_response(self.now, t.request_id, response);
                        }
                        None => self.client.handle_sent(self.now, t.request_id),
                    }
                }
            }
        }
        while self.server.poll_event().is_some() {}
        self.events.extend(std::iter::from_fn(|| self.client.poll_event()));
    }

    /// Runs every timer up to `until`, like an adapter would.
    fn run_until(&mut self, until: Timestamp) {
        while let Some(at) = self.client.poll_timeout().filter(|at| *at <= until) {
            assert!(at >= self.now, "the timeout never points into the past");
            self.now = at;
            self.client.handle_timeout(at);
            self.pump();
        }
        self.now = until;
        self.server.handle_timeout(until);
    }

    fn register(&mut self, name: &str, ttl: Option<u64>) -> RequestId {
        let id = self.client.register(self.now, self.server_id, ns(name), ttl).unwrap();
        self.pump();
        id
    }

    fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }

    fn server_sees(&mut self, name: &str) -> bool {
        let me = self.client.local_peer_id();
        self.server.registration_ttl(&me, &ns(name)).is_some()
    }
}

fn registered_at(events: &[ClientEvent]) -> usize {
    events.iter().filter(|e| matches!(e, ClientEvent::Registered { .. })).count()
}

#[test]
fn a_register_command_completes_with_the_granted_ttl() {
    let mut w = World::new(ClientConfig::default());
    let id = w.register("chat", Some(3600));
    assert_eq!(
        w.take_events(),
        vec![ClientEvent::Registered {
            request: Some(id),
            server: w.server_id,
            namespace: ns("chat"),
            ttl: 3600
        }]
    );
    assert!(w.server_sees("chat"));
}

#[test]
fn refresh_fires_at_80_percent_of_the_granted_ttl_for_days_without_drift() {
    let mut w = World::new(ClientConfig::default());
    w.register("chat", Some(1000));
    w.take_events();
    for cycle in 1..=(7 * 24 * 3600 / 800) {
        let due = Timestamp::from_secs(800 * cycle);
        assert_eq!(w.client.poll_timeout(), Some(due), "cycle {cycle}");
        w.run_until(due);
        let events = w.take_events();
        assert_eq!(registered_at(&events), 1, "{events:?}");
        assert!(w.server_sees("chat"));
    }
}

#[test]
fn the_refresh_follows_the_ttl_the_server_granted_not_the_one_asked() {
    let mut w = World::new(ClientConfig::default());
    let server_id = w.server_id;
    w.intercept = Some(Box::new(move |t| {
        (t.server == server_id && t.message.message_type() == Ok(MessageType::Register)).then(
            || {
                Outcome::Respond(Box::new(proto::Message {
                    r#type: Some(MessageType::RegisterResponse as i32),
                    register_response: Some(proto::RegisterResponse {
                        status: Some(0),
                        status_text: None,
                        ttl: Some(500),
                    }),
                    ..Default::default()
                }))
            },
        )
    }));
    w.register("chat", Some(7200));
    assert_eq!(w.client.poll_timeout(), Some(Timestamp::from_secs(400)));
}

#[test]
fn no_refresh_when_switched_off() {
    let mut w = World::new(ClientConfig { refresh: false, ..ClientConfig::default() });
    w.register("chat", Some(1000));
    assert_eq!(w.client.poll_timeout(), None);
    w.run_until(Timestamp::from_secs(1000));
    assert!(!w.server_sees("chat"), "expired on the server, never refreshed");
    assert_eq!(registered_at(&w.take_events()), 1);
}

#[test]
fn transient_failures_retry_with_bounded_jittered_backoff_then_give_up() {
    let config = ClientConfig { max_retries: 12, ..ClientConfig::default() };
    let mut w = World::new(config.clone());
    w.intercept = Some(Box::new(|_| Some(Outcome::Fail(Failure::Unreachable))));
    let id = w.register("chat", None);
    let mut delays = Vec::new();
    w.run_until(Timestamp::from_secs(24 * 3600));
    for event in w.take_events() {
        match event {
            ClientEvent::RegisterFailed { retry_in: Some(d), error, .. } => {
                assert_eq!(error, RequestError::Transport(Failure::Unreachable));
                delays.push(d);
            }
            ClientEvent::RegisterFailed { retry_in: None, request, .. } => {
                assert_eq!(request, None, "the command completed on the first failure");
                assert_eq!(delays.len(), 12, "gave up after max_retries");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delays.len(), 12);
    for (attempt, d) in delays.iter().enumerate() {
        let cap = (config.retry_base * 2u32.pow(attempt as u32)).min(config.retry_max);
        assert!(*d <= cap && *d >= cap * 3 / 4, "attempt {attempt}: {d:?} vs cap {cap:?}");
    }
    assert!(delays.windows(2).any(|w| w[0] * 2 != w[1]), "jitter spreads retries");
    assert_eq!(w.client.registrations().count(), 0);
    assert_eq!(w.client.poll_timeout(), None);
    let _ = id;
}

#[test]
fn a_permanent_refusal_is_not_retried() {
    let mut w = World::new(ClientConfig::default());
    let id = w.register("chat", Some(5)); // below the server's minimum TTL
    match &w.take_events()[..] {
        [
            ClientEvent::RegisterFailed {
                request,
                error: RequestError::Refused { status, text },
                retry_in: None,
                ..
            },
        ] => {
            assert_eq!(*request, Some(id));
            assert_eq!(*status, Ok(ResponseStatus::EInvalidTtl));
            assert!(text.contains("120"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.client.poll_timeout(), None);
}

#[test]
fn a_request_without_an_answer_times_out() {
    let mut w = World::new(ClientConfig::default());
    w.intercept = Some(Box::new(|_| Some(Outcome::Drop)));
    let id = w.client.discover(w.now, w.server_id, Some(ns("x")), None).unwrap();
    w.pump();
    assert_eq!(w.client.poll_timeout(), Some(Timestamp::from_secs(20)));
    w.run_until(Timestamp::from_secs(20));
    assert!(matches!(
        &w.take_events()[..],
        [ClientEvent::DiscoverFailed { request, error: RequestError::Timeout, .. }] if *request == id
    ));
    assert_eq!(w.client.pending_requests(), 0);
}

#[test]
fn a_malformed_response_is_an_error_event() {
    let mut w = World::new(ClientConfig::default());
    let id = w.client.discover(w.now, w.server_id, Some(ns("x")), None).unwrap();
    let t = w.client.poll_transmit().unwrap();
    w.client.handle_response_frame(w.now, t.request_id, &[0xff, 0xff, 0xff]);
    w.pump();
    assert!(
        matches!(&w.take_events()[..], [ClientEvent::DiscoverFailed { request, error: RequestError::Malformed(_), .. }] if *request == id)
    );
}

#[test]
fn a_second_discover_asks_only_for_what_is_new() {
    let mut w = World::new(ClientConfig::default());
    w.register("chat", None);
    let other = TestPeer::new(7);
    w.server.handle_request(
        w.now,
        other.id,
        RequestId(0),
        crate::testing::register("chat", other.record(Dialect::Signed(Flavour::RustLibp2p)), None),
    );
    while w.server.poll_transmit().is_some() {}
    w.take_events();
    let found = |w: &mut World| -> Vec<PeerId> {
        w.client.discover(w.now, w.server_id, Some(ns("chat")), None).unwrap();
        w.pump();
        match w.take_events().pop() {
            Some(ClientEvent::Discovered { registrations, .. }) => {
                registrations.iter().map(|d| d.peer).collect()
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(found(&mut w), vec![w.client.local_peer_id(), other.id]);
    assert_eq!(found(&mut w), Vec::<PeerId>::new());
    let third = TestPeer::new(8);
    w.server.handle_request(
        w.now,
        third.id,
        RequestId(0),
        crate::testing::register("chat", third.record(Dialect::Legacy), None),
    );
    while w.server.poll_transmit().is_some() {}
    // A signed-dialect client does not get legacy registrations: still nothing.
    assert_eq!(found(&mut w), Vec::<PeerId>::new());
}

#[test]
fn discover_all_pages_until_the_server_returns_an_empty_page() {
    let mut w = World::new(ClientConfig::default());
    for seed in 10..35 {
        let p = TestPeer::new(seed);
        w.server.handle_request(
            w.now,
            p.id,
            RequestId(0),
            crate::testing::register("big", p.record(Dialect::Signed(Flavour::RustLibp2p)), None),
        );
    }
    while w.server.poll_transmit().is_some() {}
    let id = w.client.discover_all(w.now, w.server_id, Some(ns("big")), Some(10)).unwrap();
    w.pump();
    match &w.take_events()[..] {
        [ClientEvent::Discovered { request, registrations, skipped: 0, .. }] => {
            assert_eq!(*request, id);
            assert_eq!(registrations.len(), 25);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.client.discovered(Some(&ns("big"))).count(), 25);
}

#[test]
fn cached_discoveries_expire_with_their_ttl_and_are_reported() {
    let mut w = World::new(ClientConfig::default());
    let other = TestPeer::new(7);
    w.server.handle_request(
        w.now,
        other.id,
        RequestId(0),
        crate::testing::register(
            "chat",
            other.record(Dialect::Signed(Flavour::RustLibp2p)),
            Some(600),
        ),
    );
    while w.server.poll_transmit().is_some() {}
    w.client.discover(w.now, w.server_id, Some(ns("chat")), None).unwrap();
    w.pump();
    assert_eq!(w.client.discovered(None).count(), 1);
    w.take_events();
    w.run_until(Timestamp::from_secs(599));
    assert_eq!(w.client.discovered(None).count(), 1);
    w.run_until(Timestamp::from_secs(600));
    assert_eq!(
        w.take_events(),
        vec![ClientEvent::Expired { peer: other.id, namespace: ns("chat") }]
    );
    assert_eq!(w.client.discovered(None).count(), 0);
}

#[test]
fn unregister_all_covers_every_registration_and_stops_refreshing() {
    let mut w = World::new(ClientConfig::default());
    for name in ["a", "b", "c"] {
        w.register(name, None);
    }
    w.take_events();
    let ids = w.client.unregister_all(w.now);
    w.pump();
    assert_eq!(ids.len(), 3);
    let done: Vec<_> = w
        .take_events()
        .into_iter()
        .map(|e| match e {
            ClientEvent::Unregistered { request: Some(id), delivered: true, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(done, ids);
    for name in ["a", "b", "c"] {
        assert!(!w.server_sees(name));
    }
    assert_eq!(w.client.poll_timeout(), None);
}

#[test]
fn a_server_refusing_signed_records_gets_the_legacy_dialect_and_is_remembered() {
    let mut w = World::new(ClientConfig::default());
    // A py-libp2p server reads the envelope as a PeerInfo with the wrong id.
    w.intercept = Some(Box::new(|t| {
        let record = t.message.register.as_ref()?.signed_peer_record.clone()?;
        let limits = RecordLimits { max_bytes: 4096, max_addresses: 8 };
        (Record::parse(record, &limits).ok()?.dialect != Dialect::Legacy).then(|| {
            Outcome::Respond(Box::new(proto::Message {
                r#type: Some(MessageType::RegisterResponse as i32),
                register_response: Some(proto::RegisterResponse {
                    status: Some(ResponseStatus::ENotAuthorized as i32),
                    status_text: Some("Peer can only register itself".into()),
                    ttl: None,
                }),
                ..Default::default()
            }))
        })
    }));
    let id = w.register("chat", None);
    let events = w.take_events();
    assert!(matches!(events[0], ClientEvent::LegacyFallback { .. }), "{events:?}");
    assert!(
        matches!(events[1], ClientEvent::Registered { request: Some(r), ttl: 7200, .. } if r == id),
        "{events:?}"
    );
    assert!(w.server_sees("chat"));
    w.register("other", None);
    assert_eq!(
        registered_at(&w.take_events()),
        1,
        "no second fallback: the server's dialect is known"
    );
}

#[test]
fn reconnecting_to_a_server_registers_everything_again() {
    let mut w = World::new(ClientConfig::default());
    w.register("a", None);
    w.register("b", None);
    w.take_events();
    w.client.handle_connected(w.now, w.server_id);
    w.pump();
    assert!(w.take_events().is_empty(), "a first connection re-registers nothing");
    w.server = Server::new(ServerConfig::default()).unwrap(); // the server restarted
    w.client.handle_disconnected(w.now, w.server_id);
    w.client.handle_connected(w.now, w.server_id);
    w.pump();
    assert_eq!(registered_at(&w.take_events()), 2);
    assert!(w.server_sees("a") && w.server_sees("b"));
}

#[test]
fn a_stale_cookie_is_dropped_and_the_discover_starts_over_once() {
    let mut w = World::new(ClientConfig::default());
    for seed in 10..15 {
        let p = TestPeer::new(seed);
        w.server.handle_request(
            w.now,
            p.id,
            RequestId(0),
            crate::testing::register("chat", p.record(Dialect::Signed(Flavour::RustLibp2p)), None),
        );
    }
    while w.server.poll_transmit().is_some() {}
    let id = w.client.discover(w.now, w.server_id, Some(ns("chat")), None).unwrap();
    w.pump();
    // The server restarted without a sequence offset: our cookie (position
    // 5) is ahead of anything it issued.
    w.server = Server::new(ServerConfig::default()).unwrap();
    w.register("chat", None);
    w.take_events();
    let again = w.client.discover(w.now, w.server_id, Some(ns("chat")), None).unwrap();
    w.pump();
    match &w.take_events()[..] {
        [ClientEvent::Discovered { request, registrations, .. }] => {
            assert_eq!(*request, again);
            assert_eq!(registrations.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_ne!(id, again);
}

#[test]
fn commands_beyond_the_pending_bound_are_refused() {
    let mut w = World::new(ClientConfig { max_pending: 2, ..ClientConfig::default() });
    let server = w.server_id;
    w.client.discover(w.now, server, None, None).unwrap();
    w.client.discover(w.now, server, None, None).unwrap();
    assert_eq!(w.client.discover(w.now, server, None, None), Err(CommandError::TooManyPending(2)));
}

#[test]
fn new_addresses_are_announced_everywhere_with_a_newer_record() {
    let mut w = World::new(ClientConfig::default());
    w.register("a", None);
    w.take_events();
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/9999".parse().unwrap();
    w.client.set_addresses(w.now, vec![addr.clone()]);
    w.pump();
    assert_eq!(registered_at(&w.take_events()), 1);
    let other = TestPeer::new(5).id;
    w.server.handle_request(
        w.now,
        other,
        RequestId(0),
        crate::testing::discover(Some("a"), None, None),
    );
    let page = w.server.poll_transmit().unwrap().message.unwrap().discover_response.unwrap();
    let limits = RecordLimits { max_bytes: 4096, max_addresses: 8 };
    let record =
        Record::parse(page.registrations[0].signed_peer_record.clone().unwrap(), &limits).unwrap();
    assert_eq!(record.addresses.to_vec(), vec![addr]);
}

#[test]
fn time_is_injected_so_durations_follow_the_callers_clock() {
    // Guard against accidental wall-clock use: nothing happens between calls.
    let mut w = World::new(ClientConfig::default());
    w.register("a", Some(1000));
    let before = w.client.poll_timeout();
    std::thread::yield_now();
    assert_eq!(w.client.poll_timeout(), before);
    assert_eq!(before, Some(Timestamp::ZERO + Duration::from_secs(800)));
}

#[test]
fn a_namespace_over_the_spec_limit_is_refused_before_anything_is_sent() {
    let mut w = World::new(ClientConfig::default());
    let long = Namespace::new(&"n".repeat(256), usize::MAX).unwrap();
    let err = w.client.register(w.now, w.server_id, long.clone(), None).unwrap_err();
    assert_eq!(err, CommandError::NamespaceTooLong { len: 256, max: 255 });
    assert!(w.client.discover(w.now, w.server_id, Some(long), None).is_err());
    assert!(w.client.poll_transmit().is_none());
}

#[test]
fn a_server_reading_neither_dialect_goes_back_to_signed_records() {
    let mut w = World::new(ClientConfig::default());
    // rust-libp2p's server closes the stream on a request it cannot decode.
    w.intercept = Some(Box::new(|t| {
        (t.message.register.as_ref()?.ns.as_deref() == Some("bad"))
            .then_some(Outcome::Fail(Failure::StreamClosed { written: true }))
    }));
    w.register("bad", None);
    let events = w.take_events();
    assert!(matches!(events[0], ClientEvent::LegacyFallback { .. }), "{events:?}");
    assert!(
        matches!(events[1], ClientEvent::RegisterFailed { retry_in: Some(_), .. }),
        "{events:?}"
    );
    w.register("good", None);
    let events = w.take_events();
    assert_eq!(registered_at(&events), 1, "{events:?}");
    let me = w.client.local_peer_id();
    w.server.handle_request(
        w.now,
        TestPeer::new(9).id,
        RequestId(0),
        crate::testing::discover(Some("good"), None, None),
    );
    let page = w.server.poll_transmit().unwrap().message.unwrap().discover_response.unwrap();
    let limits = RecordLimits { max_bytes: 4096, max_addresses: 8 };
    let record =
        Record::parse(page.registrations[0].signed_peer_record.clone().unwrap(), &limits).unwrap();
    assert_eq!((record.peer, record.dialect), (Some(me), Dialect::Signed(Flavour::RustLibp2p)));
}
