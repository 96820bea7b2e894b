//! Discovering: pages and cookies, walks, watches, and the cache.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::*;

fn crowd(s: &mut Setup, name: &str, seeds: std::ops::Range<u32>) -> Vec<PeerId> {
    seeds
        .map(|seed| {
            let peer = TestPeer::new(seed);
            s.other_registers(&peer, name, RUST, None);
            peer.id
        })
        .collect()
}

/// The peers a watch reported found, in order.
fn found_by_watch(events: Vec<ClientEvent>) -> Vec<PeerId> {
    events
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::PeerFound { request: None, discovery, .. } => Some(discovery.peer),
            _ => None,
        })
        .collect()
}

/// A server that serves pages of three, the peers of `seeds` registered in
/// "chat", and a watch of it every 60 s that walks it whole every
/// `full_discover_every`th round.
fn watch_in_pages_of_three(
    full_discover_every: u32,
    seeds: std::ops::Range<u32>,
) -> (Setup, Vec<PeerId>) {
    let limits =
        crate::Limits { default_discover_limit: 3, max_discover_limit: 3, ..Default::default() };
    let config = ClientConfig {
        discover_interval: secs(60),
        full_discover_every,
        ..ClientConfig::default()
    };
    let mut s = Setup::with_server(config, ServerConfig { limits, ..ServerConfig::default() });
    let crowd = crowd(&mut s, "chat", seeds);
    let (now, server) = (s.w.now, s.server);
    s.client().watch(now, server, ns("chat")).unwrap();
    (s, crowd)
}

#[test]
fn a_request_without_an_answer_times_out() {
    let mut s = Setup::new(ClientConfig::default());
    s.w.network = Box::new(|_| Fate::LoseAnswer);
    let id = s.discover(Some("x"), None, false);
    assert_eq!(s.client().poll_timeout(), Some(s.at(20)));
    s.w.run_until(s.at(20));
    assert!(matches!(
        &s.events()[..],
        [ClientEvent::DiscoverFailed { request, error: RequestError::Timeout, .. }] if *request == id
    ));
    assert_eq!(s.client().pending_requests(), 0);
}

#[test]
fn a_malformed_response_is_an_error_event() {
    let mut s = Setup::new(ClientConfig::default());
    let (now, server) = (s.w.now, s.server);
    let id = s.client().discover(now, server, Some(ns("x")), None).unwrap();
    let t = s.client().poll_transmit().unwrap();
    s.client().handle_response_frame(now, t.request_id, &[0xff, 0xff, 0xff]);
    s.w.pump();
    let events = s.events();
    assert!(
        matches!(&events[..], [ClientEvent::DiscoverFailed { request, error: RequestError::Malformed(_), .. }] if *request == id),
        "{events:?}"
    );
}

#[test]
fn a_second_discover_asks_only_for_what_is_new() {
    let mut s =
        Setup::new(ClientConfig { record_flavour: RecordFlavour::Rust, ..ClientConfig::default() });
    s.register("chat", None);
    let other = TestPeer::new(7);
    s.other_registers(&other, "chat", RUST, None);
    s.events();
    s.discover(Some("chat"), None, false);
    assert_eq!(s.found(), sorted(vec![s.me, other.id]));
    s.discover(Some("chat"), None, false);
    assert_eq!(s.found(), Vec::<PeerId>::new());
    // A rust-flavour reader does not get legacy registrations: still nothing.
    s.other_registers(&TestPeer::new(8), "chat", Dialect::Legacy, None);
    s.discover(Some("chat"), None, false);
    assert_eq!(s.found(), Vec::<PeerId>::new());
}

#[test]
fn discover_all_pages_until_the_server_returns_an_empty_page_under_one_request_id() {
    let mut s = Setup::new(ClientConfig::default());
    crowd(&mut s, "big", 10..35);
    let ids = Rc::new(RefCell::new(Vec::new()));
    let seen = ids.clone();
    s.w.network = Box::new(move |sent| {
        seen.borrow_mut().push(sent.transmit.request_id);
        deliver()
    });
    let id = s.discover(Some("big"), Some(10), true);
    match &s.events()[..] {
        [.., ClientEvent::Discovered { request, registrations, skipped: 0, .. }] => {
            assert_eq!(*request, id);
            assert_eq!(registrations.len(), 25);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        *ids.borrow(),
        vec![id; 4],
        "three pages and an empty one, all under the command's id"
    );
    assert_eq!(s.client().discovered(Some(&ns("big"))).count(), 25);
}

#[test]
fn a_full_cookie_store_forgets_the_oldest_cookie_instead_of_asking_page_one_again() {
    let mut s = Setup::new(ClientConfig { max_cookies: 2, ..ClientConfig::default() });
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let base = 10 + 30 * i as u32;
        crowd(&mut s, name, base..base + 25);
    }
    let requests = Rc::new(Cell::new(0));
    let count = requests.clone();
    s.w.network = Box::new(move |_| {
        count.set(count.get() + 1);
        deliver()
    });
    for name in ["a", "b", "c", "a"] {
        requests.set(0);
        s.discover(Some(name), Some(10), true);
        let found = s.found();
        assert!(found.len() == 25 || found.is_empty(), "{name}: {}", found.len());
        assert!(requests.get() <= 4, "{name}: {} pages", requests.get());
    }
}

#[test]
fn an_invalid_cookie_mid_walk_restarts_it_once_and_reports_each_peer_once() {
    let mut s = Setup::new(ClientConfig::default());
    let peers = crowd(&mut s, "chat", 10..35);
    let pages = Rc::new(Cell::new(0));
    let count = pages.clone();
    s.w.network = Box::new(move |_| {
        count.set(count.get() + 1);
        if count.get() == 2 {
            // The server restarted and does not know the cookie of page one.
            let page = proto::DiscoverResponse {
                status: Some(ResponseStatus::EInvalidCookie as i32),
                ..Default::default()
            };
            return Fate::Forge(Box::new(proto::Message {
                r#type: Some(MessageType::DiscoverResponse as i32),
                discover_response: Some(page),
                ..Default::default()
            }));
        }
        deliver()
    });
    s.discover(Some("chat"), Some(10), true);
    let events = s.events();
    let found = s_found(&events);
    assert_eq!(found.len(), 25, "each peer once: {found:?}");
    let mut sorted = found.clone();
    sorted.sort();
    let mut expected = peers.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    let appeared = events.iter().filter(|e| matches!(e, ClientEvent::PeerFound { .. })).count();
    assert_eq!(appeared, 25);
}

fn s_found(events: &[ClientEvent]) -> Vec<PeerId> {
    events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Discovered { registrations, .. } => {
                Some(registrations.iter().map(|d| d.peer).collect())
            }
            _ => None,
        })
        .expect("a Discovered event")
}

#[test]
fn entries_without_a_namespace_belong_to_the_namespace_asked_for() {
    let mut s = Setup::new(ClientConfig::default());
    let peers = crowd(&mut s, "chat", 10..13);
    // go-libp2p-rendezvous servers leave `ns` out of a namespaced DISCOVER.
    s.w.network = Box::new(|_| {
        Fate::Alter(Box::new(|m| {
            for entry in &mut m.discover_response.as_mut().unwrap().registrations {
                entry.ns = None;
            }
        }))
    });
    s.discover(Some("chat"), None, false);
    let events = s.events();
    match events.last() {
        Some(ClientEvent::Discovered { registrations, skipped: 0, .. }) => {
            assert_eq!(sorted(registrations.iter().map(|d| d.peer).collect()), sorted(peers));
            assert!(registrations.iter().all(|d| d.namespace == ns("chat")));
        }
        other => panic!("{other:?}"),
    }
    // Asked for all namespaces, such an entry says nowhere where it belongs.
    s.discover(None, None, false);
    assert!(matches!(s.events().last(), Some(ClientEvent::Discovered { skipped: 3, .. })));
}

#[test]
fn absurd_discovered_ttls_are_clamped() {
    let mut s = Setup::new(ClientConfig::default());
    crowd(&mut s, "chat", 10..11);
    s.w.network = Box::new(|_| {
        Fate::Alter(Box::new(|m| {
            for entry in &mut m.discover_response.as_mut().unwrap().registrations {
                entry.ttl = Some(u64::MAX);
            }
        }))
    });
    s.discover(Some("chat"), None, false);
    let ttl = s.client().discovered(None).next().unwrap().ttl;
    assert_eq!(ttl, ClientConfig::default().max_ttl);
}

#[test]
fn cached_discoveries_expire_with_their_ttl_and_are_reported_lost() {
    let mut s = Setup::new(ClientConfig::default());
    let other = TestPeer::new(7);
    s.other_registers(&other, "chat", RUST, Some(600));
    s.discover(Some("chat"), None, false);
    assert_eq!(s.client().discovered(None).count(), 1);
    s.events();
    s.w.run_until(s.at(599));
    assert_eq!(s.client().discovered(None).count(), 1);
    s.w.run_until(s.at(600));
    let lost = ClientEvent::PeerLost {
        peer: other.id,
        namespace: ns("chat"),
        reason: LostReason::Expired,
    };
    assert_eq!(s.events(), vec![lost]);
    assert_eq!(s.client().discovered(None).count(), 0);
}

#[test]
fn a_watch_reports_each_peer_that_arrives_and_each_that_leaves() {
    let config = ClientConfig {
        discover_interval: secs(60),
        full_discover_every: 2,
        ..ClientConfig::default()
    };
    let mut s = Setup::new(config);
    s.register("chat", None);
    s.discover(Some("chat"), None, true);
    let (now, server) = (s.w.now, s.server);
    s.client().watch(now, server, ns("chat")).unwrap();
    s.events();
    let (arriving, leaving) = (TestPeer::new(20), TestPeer::new(21));
    s.other_registers(&arriving, "chat", RUST, None);
    s.other_registers(&leaving, "chat", RUST, Some(150));
    s.w.advance(secs(60));
    assert_eq!(found_by_watch(s.events()), vec![arriving.id, leaving.id]);
    // One unregisters; the next full walk (the second round) notices.
    s.other_unregisters(&arriving, "chat");
    s.w.advance(secs(60));
    let lost = ClientEvent::PeerLost {
        peer: arriving.id,
        namespace: ns("chat"),
        reason: LostReason::Unregistered,
    };
    assert_eq!(s.events(), vec![lost]);
    // The other never refreshes: gone at its TTL.
    s.w.advance(secs(60));
    let events = s.events();
    let expired = ClientEvent::PeerLost {
        peer: leaving.id,
        namespace: ns("chat"),
        reason: LostReason::Expired,
    };
    assert!(events.contains(&expired), "{events:?}");
    s.client().unwatch(server, ns("chat"));
    let me = s.me;
    assert!(s.client().discovered(Some(&ns("chat"))).any(|d| d.peer == me));
}

#[test]
fn a_watch_whose_walks_start_anywhere_reports_each_arrival_and_departure_once() {
    // Pages of three: every walk spans pages, and each full walk starts at
    // a random place in the namespace.
    let (mut s, crowd) = watch_in_pages_of_three(2, 30..50);
    let mut found = Vec::new();
    let mut lost = Vec::new();
    let round = |s: &mut Setup, found: &mut Vec<PeerId>, lost: &mut Vec<PeerId>| {
        s.w.advance(secs(60));
        for event in s.events() {
            match event {
                ClientEvent::PeerFound { discovery, .. } => found.push(discovery.peer),
                ClientEvent::PeerLost { peer, reason: LostReason::Unregistered, .. } => {
                    lost.push(peer)
                }
                other => panic!("{other:?}"),
            }
        }
    };
    round(&mut s, &mut found, &mut lost);
    assert_eq!(sorted(std::mem::take(&mut found)), sorted(crowd.clone()));
    // Two leave and two arrive; the second round walks everything again.
    for peer in [3, 11] {
        s.other_unregisters(&TestPeer::new(30 + peer), "chat");
    }
    let (a, b) = (TestPeer::new(60), TestPeer::new(61));
    s.other_registers(&a, "chat", RUST, None);
    s.other_registers(&b, "chat", RUST, None);
    round(&mut s, &mut found, &mut lost);
    assert_eq!(sorted(std::mem::take(&mut found)), sorted(vec![a.id, b.id]));
    assert_eq!(sorted(std::mem::take(&mut lost)), sorted(vec![crowd[3], crowd[11]]));
    // A refresh and an arrival; the third round walks on from its cookie.
    let c = TestPeer::new(62);
    s.other_registers(&c, "chat", RUST, None);
    s.other_registers(&TestPeer::new(35), "chat", RUST, None);
    round(&mut s, &mut found, &mut lost);
    assert_eq!((found, lost), (vec![c.id], vec![]));
}

/// Records whether each DISCOVER the client sends carries a cookie.
fn record_cookies(s: &mut Setup) -> Rc<RefCell<Vec<bool>>> {
    let cookies = Rc::new(RefCell::new(Vec::new()));
    let seen = cookies.clone();
    s.w.network = Box::new(move |sent| {
        if let Some(discover) = &sent.transmit.message.discover {
            seen.borrow_mut().push(discover.cookie.is_some());
        }
        deliver()
    });
    cookies
}

#[test]
fn a_watched_namespace_that_fits_in_one_page_shows_each_departure_at_the_next_round() {
    // The default: a whole walk every tenth round, and every round while
    // the namespace fits in one page.
    let config = ClientConfig { discover_interval: secs(60), ..ClientConfig::default() };
    let mut s = Setup::new(config);
    let crowd = crowd(&mut s, "chat", 30..35);
    let (now, server) = (s.w.now, s.server);
    s.client().watch(now, server, ns("chat")).unwrap();
    let cookies = record_cookies(&mut s);
    s.w.advance(secs(60));
    assert_eq!(sorted(found_by_watch(s.events())), sorted(crowd.clone()));
    for (round, leaving) in crowd.iter().take(3).enumerate() {
        s.other_unregisters(&TestPeer::new(30 + round as u32), "chat");
        cookies.borrow_mut().clear();
        s.w.advance(secs(60));
        let lost = ClientEvent::PeerLost {
            peer: *leaving,
            namespace: ns("chat"),
            reason: LostReason::Unregistered,
        };
        assert_eq!(s.events(), vec![lost], "round {}", round + 2);
        // A whole walk: a first page asked without a cookie, and an empty
        // second page.
        assert_eq!(*cookies.borrow(), vec![false, true], "round {}", round + 2);
    }
}

#[test]
fn a_watched_namespace_of_several_pages_is_walked_whole_only_every_so_often() {
    let (mut s, _) = watch_in_pages_of_three(3, 30..40);
    let cookies = record_cookies(&mut s);
    let mut whole = Vec::new();
    for _ in 0..6 {
        cookies.borrow_mut().clear();
        s.w.advance(secs(60));
        whole.push(!cookies.borrow()[0]);
    }
    // The first round learns the namespace's size; then every third.
    assert_eq!(whole, vec![true, false, true, false, false, true]);
}
