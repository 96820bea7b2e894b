//! Registering, refreshing, retrying, unregistering.

use super::*;

#[test]
fn a_register_command_completes_with_the_granted_ttl_and_the_dialect_taken() {
    let mut s = Setup::new(ClientConfig::default());
    let id = s.register("chat", Some(3600));
    let server = s.server;
    let events = s.events();
    assert_eq!(
        events,
        vec![
            ClientEvent::FlavourAccepted { server, dialect: RUST },
            ClientEvent::Registered {
                request: Some(id),
                server,
                namespace: ns("chat"),
                ttl: secs(3600),
                dialect: RUST,
            }
        ]
    );
    assert!(s.server_sees("chat"));
}

#[test]
fn refresh_fires_at_80_percent_of_the_granted_ttl_for_days_without_drift() {
    let mut s = Setup::new(ClientConfig::default());
    s.register("chat", Some(1000));
    s.events();
    for cycle in 1..=(7 * 24 * 3600 / 800) {
        let due = s.at(800 * cycle);
        assert_eq!(s.w.client(s.me).poll_timeout(), Some(due), "cycle {cycle}");
        s.w.run_until(due);
        let events = s.events();
        assert_eq!(registered(&events), 1, "{events:?}");
        assert!(s.server_sees("chat"));
    }
}

#[test]
fn the_refresh_follows_the_ttl_the_server_granted_not_the_one_asked() {
    let mut s = Setup::new(ClientConfig::default());
    s.w.network = Box::new(|sent| match is_register(sent.transmit) {
        true => Fate::Alter(Box::new(|m| m.register_response.as_mut().unwrap().ttl = Some(500))),
        false => deliver(),
    });
    s.register("chat", Some(7200));
    assert_eq!(s.client().poll_timeout(), Some(s.at(400)));
}

#[test]
fn an_absurd_ttl_grant_is_clamped_to_what_was_asked_and_never_panics() {
    let mut s = Setup::new(ClientConfig::default());
    s.w.network = Box::new(|sent| match is_register(sent.transmit) {
        true => {
            Fate::Alter(Box::new(|m| m.register_response.as_mut().unwrap().ttl = Some(u64::MAX)))
        }
        false => deliver(),
    });
    s.register("chat", Some(3600));
    assert!(
        s.events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Registered { ttl, .. } if *ttl == secs(3600)))
    );
    assert_eq!(s.client().poll_timeout(), Some(s.at(2880)));
    // Asking the server's default: believed as the spec's default, 2 h.
    s.register("other", None);
    assert_eq!(s.client().poll_timeout(), Some(s.at(2880)));
    s.w.advance(secs(3 * 24 * 3600));
    assert!(s.server_sees("other") && s.server_sees("chat"), "still refreshing, days later");
}

#[test]
fn no_refresh_when_switched_off() {
    let mut s = Setup::new(ClientConfig { refresh: false, ..ClientConfig::default() });
    s.register("chat", Some(1000));
    assert_eq!(s.client().poll_timeout(), None);
    s.w.run_until(s.at(1000));
    assert!(!s.server_sees("chat"), "expired on the server, never refreshed");
    assert_eq!(registered(&s.events()), 1);
}

#[test]
fn transient_failures_retry_with_bounded_jittered_backoff_then_give_up() {
    let config = ClientConfig { max_retries: 12, ..ClientConfig::default() };
    let mut s = Setup::new(config.clone());
    s.w.network = Box::new(|_| Fate::Fail(Failure::Unreachable));
    s.register("chat", None);
    s.w.run_until(s.at(24 * 3600));
    let mut delays = Vec::new();
    for event in s.events() {
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
    assert_eq!(s.client().registrations().count(), 0);
    assert_eq!(s.client().poll_timeout(), None);
}

#[test]
fn a_permanent_refusal_is_not_retried() {
    let mut s = Setup::new(ClientConfig::default());
    let id = s.register("chat", Some(5)); // below the server's minimum TTL
    match &s.events()[..] {
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
    assert_eq!(s.client().poll_timeout(), None);
}

#[test]
fn garbage_answers_are_retried_with_backoff_not_fatal() {
    let mut s = Setup::new(ClientConfig::default());
    // A DISCOVER_RESPONSE to a REGISTER, with a status no spec defines.
    s.w.network = Box::new(|_| {
        Fate::Forge(Box::new(proto::Message {
            r#type: Some(MessageType::DiscoverResponse as i32),
            discover_response: Some(proto::DiscoverResponse {
                status: Some(-7),
                ..Default::default()
            }),
            ..Default::default()
        }))
    });
    s.register("chat", None);
    match &s.events()[..] {
        [
            ClientEvent::RegisterFailed {
                error: RequestError::Malformed(_),
                retry_in: Some(_),
                ..
            },
        ] => {}
        other => panic!("{other:?}"),
    }
    s.w.network = Box::new(|_| deliver());
    s.w.advance(secs(10));
    assert!(s.server_sees("chat"), "the retry went through");
}

#[test]
fn unregister_all_covers_every_registration_and_stops_refreshing() {
    let mut s = Setup::new(ClientConfig::default());
    for name in ["a", "b", "c"] {
        s.register(name, None);
    }
    s.events();
    let now = s.w.now;
    let ids = s.client().unregister_all(now);
    s.w.pump();
    assert_eq!(ids.len(), 3);
    let done: Vec<_> = s
        .events()
        .into_iter()
        .map(|e| match e {
            ClientEvent::Unregistered { request: Some(id), delivered: true, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(done, ids);
    for name in ["a", "b", "c"] {
        assert!(!s.server_sees(name));
    }
    assert_eq!(s.client().poll_timeout(), None);
}

#[test]
fn unregistering_while_a_register_is_in_flight_leaves_nothing_on_the_server() {
    let mut s = Setup::new(ClientConfig::default());
    // The REGISTER reaches the server after the UNREGISTER sent later, and
    // its answer is lost.
    s.w.network = Box::new(|sent| match is_register(sent.transmit) {
        true => Fate::Late { delay: secs(5), lose_answer: true },
        false => deliver(),
    });
    s.register("chat", None);
    let (now, server) = (s.w.now + secs(1), s.server);
    s.w.run_until(now);
    s.client().unregister(now, server, ns("chat")).unwrap();
    s.w.pump();
    s.w.run_until(s.at(6));
    assert!(s.server_sees("chat"), "the late REGISTER was applied after the UNREGISTER");
    s.w.network = Box::new(|_| deliver());
    s.w.advance(secs(60));
    assert!(!s.server_sees("chat"), "an UNREGISTER followed the unanswered REGISTER");
}

#[test]
fn reconnecting_to_a_server_registers_everything_again() {
    let mut s = Setup::new(ClientConfig::default());
    s.register("a", None);
    s.register("b", None);
    s.events();
    let (now, server) = (s.w.now, s.server);
    s.client().handle_connected(now, server);
    s.w.pump();
    assert!(s.events().is_empty(), "a first connection re-registers nothing");
    *s.w.server(server) = Server::new(ServerConfig::default()).unwrap(); // the server restarted
    s.client().handle_disconnected(now, server);
    s.client().handle_connected(now, server);
    s.w.pump();
    assert_eq!(registered(&s.events()), 2);
    assert!(s.server_sees("a") && s.server_sees("b"));
}

#[test]
fn commands_beyond_the_pending_bound_are_refused() {
    let mut s = Setup::new(ClientConfig { max_pending: 2, ..ClientConfig::default() });
    let (now, server) = (s.w.now, s.server);
    s.client().discover(now, server, None, None).unwrap();
    s.client().discover(now, server, None, None).unwrap();
    let third = s.client().discover(now, server, None, None);
    assert_eq!(third, Err(CommandError::TooManyPending(2)));
}

#[test]
fn new_addresses_are_announced_everywhere_with_a_newer_record() {
    let mut s = Setup::new(ClientConfig::default());
    s.register("a", None);
    s.events();
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/9999".parse().unwrap();
    let now = s.w.now;
    s.client().set_addresses(now, vec![addr.clone()]);
    s.w.pump();
    assert_eq!(registered(&s.events()), 1);
    let page = s.w.request(s.server, TestPeer::new(5).id, testing::discover(Some("a"), None, None));
    let page = page.unwrap().discover_response.unwrap();
    let limits = crate::record::RecordLimits { max_bytes: 4096, max_addresses: 8 };
    let record =
        Record::parse(page.registrations[0].signed_peer_record.clone().unwrap(), &limits).unwrap();
    assert_eq!(record.addresses.to_vec(), vec![addr]);
}

#[test]
fn commands_never_run_due_timers_only_handle_timeout_does() {
    let mut s = Setup::new(ClientConfig::default());
    s.register("a", Some(1000));
    s.events();
    // Past the refresh: a command at that time sends only its own request.
    let (later, server) = (s.at(900), s.server);
    let id = s.client().discover(later, server, None, None).unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| s.w.client(s.me).poll_transmit()).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].request_id, id);
    s.client().handle_timeout(later);
    let refresh = s.client().poll_transmit().expect("the refresh, now");
    assert!(is_register(&refresh));
}

#[test]
fn a_namespace_over_the_spec_limit_is_refused_before_anything_is_sent() {
    let mut s = Setup::new(ClientConfig::default());
    let (now, server) = (s.w.now, s.server);
    let long = Namespace::new(&"n".repeat(256), usize::MAX).unwrap();
    let err = s.client().register(now, server, long.clone(), None).unwrap_err();
    assert_eq!(err, CommandError::NamespaceTooLong { len: 256, max: 255 });
    assert!(s.client().discover(now, server, Some(long), None).is_err());
    assert!(s.client().poll_transmit().is_none());
}

#[test]
fn time_is_injected_so_durations_follow_the_callers_clock() {
    // Guard against accidental wall-clock use: nothing happens between calls.
    let mut s = Setup::new(ClientConfig::default());
    s.register("a", Some(1000));
    let before = s.client().poll_timeout();
    std::thread::yield_now();
    assert_eq!(s.client().poll_timeout(), before);
    assert_eq!(before, Some(s.at(800)));
}
