//! The durable path: held answers, commits, refusals, deletes, and restarts.

use std::time::Duration;

use super::*;
use crate::proto::{self, read_status};
use crate::record::Flavour;
use crate::store::Replicated;
use crate::testing::{self, TestPeer};
use crate::{Limits, ServerConfig};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);

fn durable(limits: Limits) -> Server {
    with(Durability::Local, limits)
}

fn with(durability: Durability, limits: Limits) -> Server {
    Server::new(ServerConfig { limits, durability, ..ServerConfig::default() }).unwrap()
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

/// Sends a REGISTER; returns what the server answered at once.
fn register(
    s: &mut Server,
    now: Timestamp,
    peer: &TestPeer,
    ns: &str,
    dialect: Dialect,
) -> Option<proto::Message> {
    s.handle_request(
        now,
        peer.id,
        RequestId(7),
        testing::register(ns, peer.record(dialect), Some(3600)),
    );
    s.poll_transmit().and_then(|t| t.message)
}

fn puts(s: &mut Server) -> Vec<(ActionId, StoredRegistration)> {
    std::iter::from_fn(|| s.poll_store())
        .filter_map(|a| match a {
            StoreAction::Put { id, registration, .. } => Some((id, registration)),
            _ => None,
        })
        .collect()
}

fn found(
    s: &mut Server,
    now: Timestamp,
    ns: &str,
    cookie: Option<bytes::Bytes>,
) -> proto::DiscoverResponse {
    let reader = TestPeer::new(50).id;
    s.handle_request(now, reader, RequestId(8), testing::discover(Some(ns), None, cookie));
    s.poll_transmit().and_then(|t| t.message).unwrap().discover_response.unwrap()
}

/// Reports the put stored and takes the answer it releases.
fn commit(s: &mut Server, now: Timestamp, id: ActionId, seq: u64) -> proto::Message {
    s.handle_commit(now, Commit::Stored { id, seq });
    s.poll_transmit().and_then(|t| t.message).expect("the held answer")
}

/// A shared store logs delete `id` of `peer`'s registration in "x" (held at
/// `seq`) at `position`, and the point reads it back.
fn log_delete(s: &mut Server, now: Timestamp, id: ActionId, peer: PeerId, seq: u64, position: u64) {
    s.handle_commit(now, Commit::Logged { id, seq: position });
    let namespace = Namespace::new("x", 255).unwrap();
    s.apply_replicated(now, Replicated::Delete { peer, namespace, seq, position });
}

fn status(answer: &proto::Message) -> ResponseStatus {
    read_status(answer.register_response.as_ref().unwrap().status).unwrap()
}

#[test]
fn a_register_is_answered_and_served_only_once_its_put_is_stored() {
    let mut s = durable(Limits::default());
    let a = TestPeer::new(1);
    assert_eq!(register(&mut s, at(1), &a, "x", RUST), None, "held");
    assert!(
        found(&mut s, at(1), "x", None).registrations.is_empty(),
        "not served before it is stored"
    );
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    assert_eq!((stored.peer, stored.namespace.as_str(), stored.expires), (a.id, "x", at(3601)));
    s.handle_commit(at(2), Commit::Stored { id, seq: stored.seq });
    let answer = s.poll_transmit().unwrap();
    assert_eq!((answer.peer, answer.request_id), (a.id, RequestId(7)));
    assert_eq!(status(answer.message.as_ref().unwrap()), ResponseStatus::Ok);
    assert_eq!(found(&mut s, at(2), "x", None).registrations.len(), 1);
}

#[test]
fn a_put_the_store_could_not_write_is_answered_unavailable_and_changes_nothing() {
    let mut s = durable(Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, _)] = puts(&mut s).try_into().unwrap();
    let reason = "the store could not write: no space left on device".to_owned();
    s.handle_commit(at(1), Commit::Refused { id, status: ResponseStatus::EUnavailable, reason });
    let answer = s.poll_transmit().unwrap().message.unwrap();
    assert_eq!(status(&answer), ResponseStatus::EUnavailable);
    assert!(answer.register_response.unwrap().status_text.unwrap().contains("no space left"));
    assert_eq!(s.stats().registrations, 0);
    assert_eq!(s.pending_writes(), 0);
}

#[test]
fn puts_on_their_way_count_toward_the_limits() {
    let mut s = durable(Limits { max_registrations_per_peer: 1, ..Limits::default() });
    let a = TestPeer::new(1);
    assert_eq!(register(&mut s, at(1), &a, "x", RUST), None);
    let refused = register(&mut s, at(1), &a, "y", RUST).expect("answered at once");
    assert_eq!(status(&refused), ResponseStatus::ENotAuthorized);
    // A refresh of the pending one is not a new registration.
    assert_eq!(register(&mut s, at(1), &a, "x", RUST), None);
}

#[test]
fn a_second_flavour_joins_the_put_still_on_its_way() {
    let mut s = durable(Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    register(&mut s, at(1), &a, "x", STANDARD);
    let stored = puts(&mut s);
    let last = &stored[1].1;
    assert_eq!(last.record.envelope(Flavour::RustLibp2p), Some(&a.record(RUST)));
    assert_eq!(last.record.envelope(Flavour::Standard), Some(&a.record(STANDARD)));
}

#[test]
fn an_unregister_takes_effect_and_is_answered_once_its_delete_is_stored() {
    let mut s = durable(Limits::default());
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    for peer in [&a, &b] {
        register(&mut s, at(1), peer, "x", RUST);
        let [(id, stored)] = puts(&mut s).try_into().unwrap();
        commit(&mut s, at(1), id, stored.seq);
    }
    s.handle_request(at(2), a.id, RequestId(9), testing::unregister("x"));
    assert!(s.poll_transmit().is_none(), "answered once stored");
    let Some(StoreAction::Delete { id, peer, .. }) = s.poll_store() else { panic!("a delete") };
    assert_eq!(peer, a.id);
    // Until then it is still served: a point killed now comes back with it,
    // and nobody saw it gone.
    assert_eq!(found(&mut s, at(2), "x", None).registrations.len(), 2);
    s.handle_commit(at(2), Commit::Removed { id });
    let done = s.poll_transmit().unwrap();
    assert_eq!((done.request_id, done.message), (RequestId(9), None));
    assert_eq!(found(&mut s, at(2), "x", None).registrations.len(), 1);
    // Expiry removes at once (it is decided by the stored time) and tells
    // the store.
    s.handle_timeout(at(3601));
    assert_eq!(s.stats().registrations, 0);
    assert!(matches!(s.poll_store(), Some(StoreAction::Delete { peer, .. }) if peer == b.id));
}

#[test]
fn an_unregister_read_behind_a_pending_put_waits_for_it_and_wins() {
    for durability in [Durability::Local, Durability::Shared] {
        let mut s = with(durability, Limits::default());
        let a = TestPeer::new(1);
        register(&mut s, at(1), &a, "x", RUST);
        let [(put, stored)] = puts(&mut s).try_into().unwrap();
        s.handle_request(at(1), a.id, RequestId(9), testing::unregister("x"));
        assert!(s.poll_store().is_none(), "the delete waits for the put before it");
        match durability {
            Durability::Local => {
                s.handle_commit(at(1), Commit::Stored { id: put, seq: stored.seq })
            }
            _ => {
                s.handle_commit(at(1), Commit::Logged { id: put, seq: 40 });
                let back = StoredRegistration { seq: 40, ..stored.clone() };
                s.apply_replicated(at(1), Replicated::Put(back));
            }
        }
        assert_eq!(status(&s.poll_transmit().unwrap().message.unwrap()), ResponseStatus::Ok);
        let Some(StoreAction::Delete { id, seq, .. }) = s.poll_store() else { panic!("a delete") };
        match durability {
            Durability::Local => s.handle_commit(at(1), Commit::Removed { id }),
            _ => {
                s.handle_commit(at(1), Commit::Logged { id, seq: 41 });
                let (peer, namespace) = (a.id, Namespace::new("x", 255).unwrap());
                s.apply_replicated(
                    at(1),
                    Replicated::Delete { peer, namespace, seq, position: 41 },
                );
            }
        }
        assert_eq!(s.poll_transmit().unwrap().request_id, RequestId(9));
        assert_eq!(s.stats().registrations, 0, "{durability:?}: read in that order, gone");
        assert_eq!(s.pending_writes(), 0);
    }
}

#[test]
fn a_put_read_after_a_delete_survives_even_when_stored_first() {
    let mut s = durable(Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    commit(&mut s, at(1), id, stored.seq);
    s.handle_request(at(2), a.id, RequestId(9), testing::unregister("x"));
    let Some(StoreAction::Delete { id: delete, seq: upto, .. }) = s.poll_store() else {
        panic!("a delete")
    };
    assert_eq!(upto, stored.seq, "it removes at most what was there");
    // The store retries the delete, and the put read after it lands first.
    assert_eq!(register(&mut s, at(3), &a, "x", RUST), None);
    let [(put, again)] = puts(&mut s).try_into().unwrap();
    commit(&mut s, at(3), put, again.seq);
    s.handle_commit(at(4), Commit::Removed { id: delete });
    assert_eq!(s.poll_transmit().unwrap().request_id, RequestId(9));
    assert_eq!(found(&mut s, at(4), "x", None).registrations.len(), 1, "the later put stays");
}

#[test]
fn writes_on_their_way_keep_a_peer_within_its_limit_at_every_instant() {
    let mut s = durable(Limits { max_registrations_per_peer: 2, ..Limits::default() });
    let a = TestPeer::new(1);
    for ns in ["a", "b"] {
        register(&mut s, at(1), &a, ns, RUST);
        let [(id, stored)] = puts(&mut s).try_into().unwrap();
        commit(&mut s, at(1), id, stored.seq);
    }
    // REGISTER(a), UNREGISTER(a), REGISTER(c), all at once.
    assert_eq!(register(&mut s, at(2), &a, "a", RUST), None);
    s.handle_request(at(2), a.id, RequestId(9), testing::unregister("a"));
    let refused = register(&mut s, at(2), &a, "c", RUST).expect("answered at once");
    assert_eq!(status(&refused), ResponseStatus::ENotAuthorized, "a still counts until removed");
    // Once the writes settle, there is room again.
    while let Some(action) = s.poll_store() {
        match action {
            StoreAction::Put { id, registration, .. } => {
                s.handle_commit(at(2), Commit::Stored { id, seq: registration.seq });
            }
            StoreAction::Delete { id, .. } => s.handle_commit(at(2), Commit::Removed { id }),
        }
        assert!(s.stats().registrations <= 2);
    }
    assert_eq!(s.stats().registrations, 1);
    while s.poll_transmit().is_some() {}
    assert_eq!(register(&mut s, at(3), &a, "c", RUST), None);
}

#[test]
fn a_discover_waits_for_the_writes_its_peer_made_before_it() {
    let mut s = durable(Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_request(at(1), a.id, RequestId(8), testing::discover(Some("x"), None, None));
    assert!(s.poll_transmit().is_none(), "waits for the put before it");
    // Another peer's DISCOVER does not wait.
    assert!(found(&mut s, at(1), "x", None).registrations.is_empty());
    s.handle_commit(at(1), Commit::Stored { id, seq: stored.seq });
    let answers: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(
        answers.iter().map(|t| t.request_id).collect::<Vec<_>>(),
        [RequestId(7), RequestId(8)]
    );
    let page = answers[1].message.clone().unwrap().discover_response.unwrap();
    assert_eq!(page.registrations.len(), 1, "it sees its own REGISTER");
}

#[test]
fn registers_beyond_the_pending_writes_bound_are_refused_at_once() {
    let config = ServerConfig {
        durability: Durability::Local,
        max_pending_writes: 2,
        ..ServerConfig::default()
    };
    let mut s = Server::new(config).unwrap();
    let a = TestPeer::new(1);
    assert_eq!(register(&mut s, at(1), &a, "x", RUST), None);
    assert_eq!(register(&mut s, at(1), &a, "y", RUST), None);
    let refused = register(&mut s, at(1), &a, "z", RUST).expect("answered at once");
    assert_eq!(status(&refused), ResponseStatus::EUnavailable);
    assert!(
        refused.register_response.unwrap().status_text.unwrap().contains("waiting for the store")
    );
}

#[test]
fn a_shared_store_is_never_sent_expiries() {
    let mut s = with(Durability::Shared, Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id, seq: 9 });
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 9, ..stored }));
    s.handle_timeout(at(3601));
    assert_eq!(s.stats().registrations, 0, "not served past its expiry");
    assert!(s.poll_store().is_none(), "the shared store expires it by its own clock");
}

#[test]
fn a_put_takes_the_expiry_its_shared_store_decided() {
    let mut s = with(Durability::Shared, Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    assert_eq!(stored.expires, at(3601), "the point's guess");
    s.handle_commit(at(1), Commit::Logged { id, seq: 9 });
    let decided = StoredRegistration { seq: 9, expires: at(3605), ..stored };
    s.apply_replicated(at(1), Replicated::Put(decided));
    let x = Namespace::new("x", 255).unwrap();
    assert_eq!(s.registration_ttl(&a.id, &x), Some(Duration::from_secs(3604)));
}

#[test]
fn a_restart_keeps_positions_expiries_and_cookies() {
    let mut before = durable(Limits::default());
    let peers: Vec<_> = (1..=3).map(TestPeer::new).collect();
    let mut stored = Vec::new();
    for peer in &peers {
        register(&mut before, at(10), peer, "x", RUST);
        let [(id, registration)] = puts(&mut before).try_into().unwrap();
        commit(&mut before, at(10), id, registration.seq);
        stored.push(StoredRegistration { seq: registration.seq, ..registration });
    }
    let page = found(&mut before, at(10), "x", None);
    assert_eq!(page.registrations.len(), 3);
    let last_seq = stored.iter().map(|r| r.seq).max().unwrap();

    // A restart an hour later: the clock goes on; one registration expired.
    let mut after = durable(Limits::default());
    let mut expiring = stored[0].clone();
    expiring.expires = at(100);
    let kept = vec![expiring, stored[1].clone(), stored[2].clone()];
    let loaded = after.load(at(3000), kept, last_seq);
    assert_eq!(loaded, Loaded { registrations: 2, expired: 1 });
    assert!(
        matches!(after.poll_store(), Some(StoreAction::Delete { peer, .. }) if peer == peers[0].id)
    );
    assert_eq!(
        after.registration_ttl(&peers[1].id, &Namespace::new("x", 255).unwrap()),
        Some(Duration::from_secs(610))
    );
    // The old cookie still works: nothing new since it was issued...
    let page = found(&mut after, at(3000), "x", page.cookie);
    assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
    assert!(page.registrations.is_empty());
    // ...and what registers now comes after it.
    let d = TestPeer::new(4);
    register(&mut after, at(3000), &d, "x", RUST);
    let [(id, registration)] = puts(&mut after).try_into().unwrap();
    assert!(registration.seq > last_seq);
    commit(&mut after, at(3000), id, registration.seq);
    let page = found(&mut after, at(3000), "x", page.cookie);
    assert_eq!(page.registrations.len(), 1);
    // Expiry runs across the restart, at the stored times.
    after.handle_timeout(at(3610));
    assert_eq!(after.stats().registrations, 1);
}

#[test]
fn a_put_in_a_shared_log_is_answered_when_it_comes_back_in_either_order() {
    let mut s = durable(Limits::default());
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    // The commit first, then the log.
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id, seq: 500 });
    assert!(s.poll_transmit().is_none(), "not before it is back in the shared order");
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 500, ..stored }));
    assert_eq!(status(&s.poll_transmit().unwrap().message.unwrap()), ResponseStatus::Ok);
    // The log first, then the commit.
    register(&mut s, at(1), &b, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 501, ..stored }));
    assert!(s.poll_transmit().is_none());
    s.handle_commit(at(1), Commit::Logged { id, seq: 501 });
    assert_eq!(status(&s.poll_transmit().unwrap().message.unwrap()), ResponseStatus::Ok);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    let registered = events.iter().filter(|e| matches!(e, Event::Registered { .. })).count();
    assert_eq!(registered, 2, "{events:?}");
    assert_eq!(found(&mut s, at(1), "x", None).registrations.len(), 2);
}

#[test]
fn another_points_changes_apply_in_order_and_stale_ones_change_nothing() {
    let mut other = durable(Limits::default());
    let a = TestPeer::new(1);
    register(&mut other, at(1), &a, "x", RUST);
    let [(_, stored)] = puts(&mut other).try_into().unwrap();
    let mut s = durable(Limits::default());
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 10, ..stored.clone() }));
    assert_eq!(found(&mut s, at(1), "x", None).registrations.len(), 1);
    // An older put of the same key, and a delete of an older position: stale.
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 5, ..stored.clone() }));
    let (peer, namespace) = (a.id, Namespace::new("x", 255).unwrap());
    let stale = Replicated::Delete { peer, namespace: namespace.clone(), seq: 9, position: 12 };
    s.apply_replicated(at(1), stale);
    assert_eq!(s.stats().registrations, 1);
    s.apply_replicated(at(1), Replicated::Delete { peer, namespace, seq: 10, position: 13 });
    assert_eq!(s.stats().registrations, 0);
    assert!(s.poll_store().is_none(), "nothing goes back to the store");
    // A resync replaces what is held.
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 14, ..stored.clone() }));
    let loaded = s.resync(at(2), Vec::new(), 14);
    assert_eq!((loaded.registrations, s.stats().registrations), (0, 0));
}

#[test]
fn a_shared_point_uses_only_the_stores_positions() {
    let config = ServerConfig {
        durability: Durability::Shared,
        initial_sequence: 1_800_000_000_000_000,
        ..ServerConfig::default()
    };
    let mut s = Server::new(config).unwrap();
    let loaded = s.load(at(1), Vec::new(), 0);
    assert_eq!(loaded, Loaded::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id, seq: 1 });
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 1, ..stored }));
    assert_eq!(status(&s.poll_transmit().unwrap().message.unwrap()), ResponseStatus::Ok);
    // Positions are the store's alone: a walk's cookie, whose start is
    // rebuilt from the last position, means the same at every point.
    assert_eq!(s.registry.last_seq(), 1);
}

#[test]
fn a_discover_waits_for_its_peers_writes_only_so_long() {
    let mut s = durable(Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    s.handle_request(at(1), a.id, RequestId(8), testing::discover(Some("x"), None, None));
    assert!(s.poll_transmit().is_none());
    assert_eq!(s.poll_timeout(), Some(at(6)), "the wait runs out after 5 s");
    s.handle_timeout(at(6));
    let answer = s.poll_transmit().unwrap();
    assert_eq!(answer.request_id, RequestId(8));
    let page = answer.message.unwrap().discover_response.unwrap();
    assert_eq!(read_status(page.status), Ok(ResponseStatus::EUnavailable));
    // The put, stored later, is still answered.
    let [(id, stored)] = puts(&mut s).try_into().unwrap();
    assert_eq!(status(&commit(&mut s, at(7), id, stored.seq)), ResponseStatus::Ok);
}

#[test]
fn writes_a_failover_lost_are_refused_or_sent_again() {
    let mut s = with(Durability::Shared, Limits::default());
    let (a, b) = (TestPeer::new(1), TestPeer::new(2));
    // b is held at 5; a's put is logged at 7, then the primary fails and
    // the new one ends at 6.
    register(&mut s, at(1), &b, "x", RUST);
    let [(put, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id: put, seq: 5 });
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 5, ..stored }));
    assert_eq!(status(&s.poll_transmit().unwrap().message.unwrap()), ResponseStatus::Ok);
    register(&mut s, at(1), &a, "x", RUST);
    let [(put, _)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id: put, seq: 7 });
    s.handle_request(at(1), b.id, RequestId(9), testing::unregister("x"));
    let Some(StoreAction::Delete { id: delete, .. }) = s.poll_store() else { panic!("a delete") };
    s.handle_commit(at(1), Commit::Logged { id: delete, seq: 8 });
    s.handle_lost_writes(at(2), 6, 8);
    let answer = s.poll_transmit().unwrap();
    assert_eq!(answer.request_id, RequestId(7));
    assert_eq!(status(&answer.message.unwrap()), ResponseStatus::EUnavailable);
    // The UNREGISTER goes to the store again, and takes effect then.
    let Some(StoreAction::Delete { id: again, .. }) = s.poll_store() else { panic!("sent again") };
    assert_ne!(again, delete);
    log_delete(&mut s, at(2), again, b.id, 5, 9);
    assert_eq!(s.poll_transmit().unwrap().request_id, RequestId(9));
    assert_eq!((s.pending_writes(), s.stats().registrations), (0, 0));
}

#[test]
fn a_write_whose_position_another_history_holds_is_refused_not_confirmed() {
    let mut s = with(Durability::Shared, Limits::default());
    let (a, b, c) = (TestPeer::new(1), TestPeer::new(2), TestPeer::new(3));
    let refused = |s: &mut Server| {
        let answer = s.poll_transmit().expect("an answer");
        status(&answer.message.expect("a REGISTER answer"))
    };
    // The store reports a's position only after the log lost it.
    register(&mut s, at(1), &a, "x", RUST);
    let [(late, _)] = puts(&mut s).try_into().unwrap();
    s.handle_lost_writes(at(1), 3, 9);
    s.handle_commit(at(1), Commit::Logged { id: late, seq: 7 });
    assert_eq!(refused(&mut s), ResponseStatus::EUnavailable);
    // b's position comes back holding c's registration: a failover gave
    // it again.
    register(&mut s, at(1), &b, "x", RUST);
    let [(put, _)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id: put, seq: 12 });
    register(&mut s, at(1), &c, "y", RUST);
    let [(_, other)] = puts(&mut s).try_into().unwrap();
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 12, ..other }));
    assert_eq!(refused(&mut s), ResponseStatus::EUnavailable);
    assert_eq!(s.stats().registrations, 1, "c's registration, as the log holds it");
    // A reload past a's next position that does not hold it.
    register(&mut s, at(1), &a, "z", RUST);
    let [(put, _)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id: put, seq: 20 });
    s.resync(at(2), Vec::new(), 30);
    assert_eq!(refused(&mut s), ResponseStatus::EUnavailable);
    assert_eq!((s.pending_writes(), s.stats().registrations), (1, 0), "c's put still waits");
}

#[test]
fn a_register_the_log_took_but_the_point_cannot_read_back_is_answered_in_time_and_keeps_its_place()
{
    let mut s = with(Durability::Shared, Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(put, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id: put, seq: 5 });
    // The follower does not read position 5 back: the store went away
    // right after taking it. Its peer's DISCOVER and UNREGISTER queue
    // behind it.
    s.handle_request(at(1), a.id, RequestId(10), testing::discover(Some("x"), None, None));
    s.handle_request(at(1), a.id, RequestId(9), testing::unregister("x"));
    assert!(s.poll_transmit().is_none());
    assert_eq!(s.poll_timeout(), Some(at(2)), "the REGISTER waits 1 s");
    s.handle_timeout(at(2));
    let answer = s.poll_transmit().unwrap();
    assert_eq!(answer.request_id, RequestId(7));
    let response = answer.message.unwrap().register_response.unwrap();
    assert_eq!(read_status(response.status), Ok(ResponseStatus::EUnavailable));
    assert!(response.status_text.unwrap().contains("may still take effect"));
    // Told the write may not have happened, the peer's DISCOVER no longer
    // waits for it.
    let page = s.poll_transmit().unwrap();
    assert_eq!(page.request_id, RequestId(10));
    assert!(page.message.unwrap().discover_response.unwrap().registrations.is_empty());
    // The UNREGISTER still waits: it must remove what the put left.
    assert!(s.poll_store().is_none());
    assert_eq!(s.poll_timeout(), None, "no other wait");
    // The store comes back holding the put: it takes effect, unanswered
    // again, and the UNREGISTER read after it removes it.
    s.apply_replicated(at(30), Replicated::Put(StoredRegistration { seq: 5, ..stored }));
    assert!(s.poll_transmit().is_none(), "answered once");
    let Some(StoreAction::Delete { id: delete, seq, .. }) = s.poll_store() else {
        panic!("the UNREGISTER's delete")
    };
    assert_eq!(seq, 5, "it covers the put");
    log_delete(&mut s, at(30), delete, a.id, 5, 6);
    assert_eq!(s.poll_transmit().unwrap().request_id, RequestId(9));
    assert_eq!((s.pending_writes(), s.stats().registrations), (0, 0));
}

#[test]
fn a_register_read_back_in_time_is_answered_ok_and_leaves_no_wait_behind() {
    let mut s = with(Durability::Shared, Limits::default());
    let a = TestPeer::new(1);
    register(&mut s, at(1), &a, "x", RUST);
    let [(put, stored)] = puts(&mut s).try_into().unwrap();
    s.handle_commit(at(1), Commit::Logged { id: put, seq: 5 });
    s.apply_replicated(at(1), Replicated::Put(StoredRegistration { seq: 5, ..stored }));
    assert_eq!(status(&s.poll_transmit().unwrap().message.unwrap()), ResponseStatus::Ok);
    assert_eq!(s.poll_timeout(), Some(at(3601)), "only the expiry is left");
}
