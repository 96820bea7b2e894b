//! Fair discovery on a virtual clock: where walks without a cookie start,
//! and that their cookies stay exact however the registry changes meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use crate::cookie::{Cookie, Position};
use crate::proto::{self, ResponseStatus, read_status};
use crate::record::{Dialect, Flavour};
use crate::testing::{self, TestPeer, World};
use crate::{DiscoverStart, Namespace, Server, ServerConfig};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);

/// Peers 0..60, made once (each signs its records).
fn peers() -> &'static [TestPeer] {
    static PEERS: OnceLock<Vec<TestPeer>> = OnceLock::new();
    PEERS.get_or_init(|| (0..60).map(TestPeer::new).collect())
}

/// The index of the peer whose record `entry` holds.
fn who(entry: &proto::Register) -> usize {
    let record = entry.signed_peer_record.as_ref().expect("a record");
    peers().iter().position(|p| p.record(RUST) == *record).expect("one of ours")
}

/// A point alone in the test world, asked directly.
struct Point {
    w: World,
    id: PeerId,
}

impl Point {
    fn new(discover_start: DiscoverStart) -> Point {
        Point::with(ServerConfig { discover_start, ..ServerConfig::default() })
    }

    fn with(config: ServerConfig) -> Point {
        let mut w = World::new();
        let id = w.add_server(100, config);
        Point { w, id }
    }

    fn server(&mut self) -> &mut Server {
        self.w.server(self.id)
    }

    fn register(&mut self, peer: usize, ns: &str, ttl: u64) {
        let p = &peers()[peer];
        let message = testing::register(ns, p.record(RUST), Some(ttl));
        let answer = self.w.request(self.id, p.id, message).and_then(|m| m.register_response);
        let status = answer.map(|r| read_status(r.status));
        assert_eq!(status, Some(Ok(ResponseStatus::Ok)), "peer {peer} in {ns}");
    }

    fn unregister(&mut self, peer: usize, ns: &str) {
        assert!(self.w.request(self.id, peers()[peer].id, testing::unregister(ns)).is_none());
    }

    fn advance(&mut self, secs: u64) {
        self.w.now = self.w.now + Duration::from_secs(secs);
    }

    /// One page for a reader that never registered (it reads rust's
    /// flavour): the peers in it, in order, and the cookie.
    fn page(&mut self, ns: Option<&str>, limit: u64, cookie: Option<Bytes>) -> (Vec<usize>, Bytes) {
        let reader = peers()[59].id;
        let message = testing::discover(ns, Some(limit), cookie);
        let body = self.w.request(self.id, reader, message).and_then(|m| m.discover_response);
        let body = body.expect("DISCOVER is answered");
        assert_eq!(read_status(body.status), Ok(ResponseStatus::Ok), "{:?}", body.status_text);
        (body.registrations.iter().map(who).collect(), body.cookie.expect("a cookie"))
    }
}

fn position(cookie: &Bytes, last: u64) -> Position {
    Cookie::parse(cookie, 255).unwrap().resolve(last).unwrap()
}

#[test]
fn first_pages_without_a_cookie_are_spread_over_the_namespace() {
    let mut fair = Point::new(DiscoverStart::Random { seed: 7 });
    let mut in_order = Point::new(DiscoverStart::Oldest);
    for point in [&mut fair, &mut in_order] {
        for peer in 0..50 {
            point.register(peer, "x", 7200);
        }
    }
    let named = |point: &mut Point| {
        let pages: Vec<_> = (0..20).map(|_| point.page(Some("x"), 5, None).0).collect();
        pages.into_iter().flatten().collect::<BTreeSet<_>>()
    };
    let spread = named(&mut fair).len();
    assert!(spread >= 30, "20 first pages of 5 named {spread} of 50 peers");
    assert_eq!(named(&mut in_order), (0..5).collect(), "in registration order, the oldest 5");
}

#[test]
fn the_same_seed_starts_the_same_walks() {
    let pages = |seed| {
        let mut point = Point::new(DiscoverStart::Random { seed });
        for peer in 0..20 {
            point.register(peer, "x", 7200);
        }
        (0..10).map(|_| point.page(Some("x"), 3, None).0).collect::<Vec<_>>()
    };
    assert_eq!(pages(1), pages(1));
    assert_ne!(pages(1), pages(2));
}

/// What one peer's registration did while a walk went on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Untouched,
    Arrived,
    Refreshed,
    Removed,
}

/// Walks `ns` (or all namespaces) from a first page without a cookie to an
/// empty page, three at a time, while peers register, refresh, unregister
/// and expire; returns how often each peer was served, whether the walk
/// started past the oldest registration, and the point and cookie after.
fn churning_walk(
    seed: u64,
    ns: Option<&str>,
) -> (BTreeMap<usize, (Fate, usize)>, bool, Point, Bytes) {
    let mut point = Point::new(DiscoverStart::Random { seed });
    let space = |peer: usize| ns.unwrap_or(if peer.is_multiple_of(2) { "x" } else { "y" });
    let mut fates = BTreeMap::new();
    for peer in 0..30 {
        // Peers 0..4 expire during the walk; the rest outlive it.
        point.register(peer, space(peer), if peer < 4 { 200 } else { 7200 });
        fates.insert(peer, (Fate::Untouched, 0));
    }
    let (mut cookie, mut pages) = (None, 0);
    let mut wrapped = false;
    loop {
        let (page, next) = point.page(ns, 3, cookie.take());
        if pages == 0 {
            wrapped = page.first() != Some(&0);
        }
        for peer in &page {
            fates.get_mut(peer).expect("a peer of the walk").1 += 1;
        }
        cookie = Some(next);
        pages += 1;
        if page.is_empty() {
            break;
        }
        assert!(pages < 40, "the walk never ended");
        let mut set = |peer, fate| fates.entry(peer).or_insert((fate, 0)).0 = fate;
        match pages {
            1 => {
                for peer in [30, 31] {
                    point.register(peer, space(peer), 7200);
                    set(peer, Fate::Arrived);
                }
                for peer in [5, 20] {
                    point.register(peer, space(peer), 7200);
                    set(peer, Fate::Refreshed);
                }
                point.unregister(12, space(12));
                set(12, Fate::Removed);
            }
            2 => {
                point.advance(300);
                for peer in 0..4 {
                    set(peer, Fate::Removed);
                }
            }
            3 => {
                point.register(32, space(32), 7200);
                set(32, Fate::Arrived);
                point.register(9, space(9), 7200);
                set(9, Fate::Refreshed);
            }
            _ => {}
        }
    }
    (fates, wrapped, point, cookie.expect("the last page's"))
}

fn check_walk(ns: Option<&str>) {
    let mut wrapped = 0;
    for seed in 0..24 {
        let (fates, started_inside, mut point, cookie) = churning_walk(seed, ns);
        wrapped += usize::from(started_inside);
        for (peer, (fate, served)) in fates {
            let ok = match fate {
                Fate::Untouched | Fate::Arrived => served == 1,
                // Its old registration if the walk got there first, and its
                // new one, which arrived after the walk began.
                Fate::Refreshed => (1..=2).contains(&served),
                Fate::Removed => served <= 1,
            };
            assert!(ok, "seed {seed}: peer {peer} ({fate:?}) served {served} times");
        }
        // Once through, only what is newer.
        point.register(40, ns.unwrap_or("y"), 7200);
        point.register(6, ns.unwrap_or("x"), 7200);
        let (page, cookie) = point.page(ns, 3, Some(cookie));
        assert_eq!(page, vec![40, 6], "seed {seed}");
        assert_eq!(point.page(ns, 3, Some(cookie)).0, Vec::<usize>::new());
    }
    assert!(wrapped >= 18, "only {wrapped} of 24 walks started past the oldest");
}

#[test]
fn a_walk_sees_each_registration_live_at_its_start_once_then_only_newer_ones() {
    check_walk(Some("x"));
}

#[test]
fn a_walk_of_all_namespaces_sees_each_registration_once_then_only_newer_ones() {
    check_walk(None);
}

#[test]
fn a_cookie_from_before_random_starts_still_means_after_its_position() {
    let mut point = Point::new(DiscoverStart::Random { seed: 3 });
    for peer in 0..10 {
        point.register(peer, "x", 7200);
    }
    // What every earlier version issued: the last position served.
    let x = Namespace::new("x", 255).ok();
    let old = Cookie { position: 4, namespace: x.clone() }.to_bytes();
    let (page, cookie) = point.page(Some("x"), 3, Some(old));
    assert_eq!(page, vec![4, 5, 6], "positions 5, 6 and 7, in registration order");
    assert_eq!(cookie, Cookie { position: 7, namespace: x }.to_bytes());
}

#[test]
fn a_first_page_of_an_empty_namespace_continues_with_what_arrives() {
    let mut point = Point::new(DiscoverStart::Random { seed: 5 });
    point.register(1, "other", 7200);
    let (page, cookie) = point.page(Some("x"), 5, None);
    assert!(page.is_empty());
    point.register(2, "x", 7200);
    point.register(3, "x", 7200);
    assert_eq!(point.page(Some("x"), 5, Some(cookie)).0, vec![2, 3]);
}

#[test]
fn a_walk_that_ends_its_first_phase_on_a_page_boundary_goes_on_in_order() {
    for seed in 0..16 {
        let mut point = Point::new(DiscoverStart::Random { seed });
        for peer in 0..12 {
            point.register(peer, "x", 7200);
        }
        let mut cookie = None;
        let mut seen = Vec::new();
        for _ in 0..13 {
            let (page, next) = point.page(Some("x"), 1, cookie.take());
            seen.extend(page);
            // Ended its first phase exactly: a plain position from here on.
            if let Position::After(after) = position(&next, 12) {
                let rest: Vec<_> = (after as usize..12).collect();
                let mut next = Some(next);
                for expected in rest {
                    let (page, c) = point.page(Some("x"), 1, next.take());
                    assert_eq!(page, vec![expected], "seed {seed}");
                    seen.push(expected);
                    next = Some(c);
                }
                break;
            }
            cookie = Some(next);
        }
        seen.sort();
        assert_eq!(seen, (0..12).collect::<Vec<_>>(), "seed {seed}");
    }
}

#[test]
fn a_walk_never_starts_further_above_the_lowest_than_its_cookie_reaches() {
    let mut point = Point::new(DiscoverStart::Random { seed: 11 });
    point.register(0, "x", 7200);
    // Positions jump by more than a first-phase cookie can span (a store
    // that numbered them sparsely).
    let now = point.w.now;
    point.server().load(now, Vec::new(), 1 << 33);
    point.register(1, "x", 7200);
    point.register(2, "x", 7200);
    for _ in 0..30 {
        let mut cookie = None;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (page, next) = point.page(Some("x"), 1, cookie.take());
            seen.extend(page);
            cookie = Some(next);
        }
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
    }
}

#[test]
fn a_first_phase_cookie_from_before_a_restart_that_skipped_ahead_reads_as_before_everything() {
    let mut point = Point::new(DiscoverStart::Random { seed: 2 });
    for peer in 0..10 {
        point.register(peer, "x", 7200);
    }
    let old = std::iter::repeat_with(|| point.page(Some("x"), 1, None).1)
        .take(50)
        .find(|cookie| matches!(position(cookie, 10), Position::Below { start, .. } if start > 1))
        .expect("a walk that started inside the namespace");
    // An in-memory point restarts at the clock in microseconds.
    let initial_sequence = (5 << 31) + (1 << 30);
    let mut point = Point::with(ServerConfig { initial_sequence, ..ServerConfig::default() });
    for peer in [20, 21, 22] {
        point.register(peer, "x", 7200);
    }
    let (page, _) = point.page(Some("x"), 10, Some(old));
    assert_eq!(page, vec![20, 21, 22]);
}

#[test]
fn registrations_that_expire_mid_walk_are_not_served_and_the_walk_goes_on() {
    let mut point = Point::new(DiscoverStart::Random { seed: 9 });
    for peer in 0..20 {
        point.register(peer, "x", if peer % 2 == 0 { 150 } else { 7200 });
    }
    let (first, mut cookie) = point.page(Some("x"), 2, None);
    point.advance(200);
    let mut seen = first.clone();
    for _ in 0..20 {
        let (page, next) = point.page(Some("x"), 2, Some(cookie));
        assert!(page.iter().all(|p| p % 2 == 1), "an expired peer served: {page:?}");
        seen.extend(&page);
        cookie = next;
        if page.is_empty() {
            break;
        }
    }
    let odd: BTreeSet<_> = (0..20).filter(|p| p % 2 == 1).collect();
    let seen_odd: Vec<_> = seen.iter().copied().filter(|p| p % 2 == 1).collect();
    assert_eq!(seen_odd.len(), odd.len(), "each live one once: {seen:?}");
    assert_eq!(seen_odd.into_iter().collect::<BTreeSet<_>>(), odd);
}
