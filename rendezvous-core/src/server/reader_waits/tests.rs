//! Asking what a peer reads only when it is first served, on the virtual
//! clock.

use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use crate::proto::{self, MessageType, ResponseStatus, read_status};
use crate::record::{Dialect, Flavour, Reader};
use crate::testing::{self, TestPeer};
use crate::{ConfigError, RequestId, Server, ServerConfig, SubscriptionId, Timestamp};

const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);
const NS: &str = "chat";
const WAIT: Duration = Duration::from_secs(2);

/// A point that asks for readers, holding a rust-libp2p registration of
/// peer 1 and a standard one of peer 2.
fn point() -> (Server, TestPeer, TestPeer) {
    let config = ServerConfig { reader_wait: WAIT, ..ServerConfig::default() };
    let mut server = Server::new(config).unwrap();
    let (rust, standard) = (TestPeer::new(1), TestPeer::new(2));
    for (peer, dialect, id) in [(&rust, RUST, 1), (&standard, STANDARD, 2)] {
        let message = testing::register(NS, peer.record(dialect), None);
        server.handle_request(Timestamp::ZERO, peer.id, RequestId(id), message);
    }
    assert_eq!(transmits(&mut server).len(), 2, "both registered");
    assert_eq!(server.poll_reader_wanted(), None, "a peer that registers is never asked about");
    (server, rust, standard)
}

fn at(secs: u64) -> Timestamp {
    Timestamp::ZERO + Duration::from_secs(secs)
}

fn discover(server: &mut Server, now: Timestamp, peer: PeerId, id: u64) {
    server.handle_request(now, peer, RequestId(id), testing::discover(Some(NS), None, None));
}

/// The answers written so far: request id and the records of each page
/// (none for a REGISTER's or an UNREGISTER's).
fn transmits(server: &mut Server) -> Vec<(u64, Vec<Bytes>)> {
    std::iter::from_fn(|| server.poll_transmit())
        .map(|t| {
            let page = t.message.and_then(|message| message.discover_response);
            let records = page.map_or_else(Vec::new, |page| {
                assert_eq!(read_status(page.status), Ok(ResponseStatus::Ok));
                page.registrations.into_iter().map(|r| r.signed_peer_record.unwrap()).collect()
            });
            (t.request_id.0, records)
        })
        .collect()
}

/// The one answer written, to request `id`: its page, sorted.
fn only(server: &mut Server, id: u64) -> Vec<Bytes> {
    let answers = transmits(server);
    assert_eq!(answers.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![id]);
    let mut page = answers.into_iter().next().unwrap().1;
    page.sort();
    page
}

#[test]
fn a_peer_that_discovers_first_is_asked_once_and_served_in_the_flavour_it_names() {
    let (mut server, _, standard) = point();
    let reader = TestPeer::new(3).id;
    discover(&mut server, at(0), reader, 10);
    discover(&mut server, at(0), reader, 11);
    assert_eq!(transmits(&mut server), vec![], "both wait for the answer");
    assert_eq!(server.poll_reader_wanted(), Some(reader));
    assert_eq!(server.poll_reader_wanted(), None, "asked once");
    assert_eq!(server.poll_timeout(), Some(at(2)));
    assert_eq!(server.stats().waiting_discovers, 2);
    server.set_reader_dialect(at(1), reader, Reader::Signed(Flavour::Standard));
    let page = vec![standard.record(STANDARD)];
    assert_eq!(transmits(&mut server), vec![(10, page.clone()), (11, page)], "in order");
    discover(&mut server, at(1), reader, 12);
    assert_eq!(transmits(&mut server).len(), 1, "served at once now");
    let stats = server.stats();
    assert_eq!((stats.readers_asked, stats.reader_waits, stats.waiting_discovers), (1, 0, 0));
}

#[test]
fn without_an_answer_the_default_flavour_is_served_when_the_wait_runs_out_or_is_given_up() {
    let (mut server, rust, _) = point();
    let (silent, unknown) = (TestPeer::new(3).id, TestPeer::new(4).id);
    discover(&mut server, at(0), silent, 10);
    discover(&mut server, at(1), unknown, 11);
    assert_eq!(server.poll_reader_wanted(), Some(silent));
    assert_eq!(server.poll_reader_wanted(), Some(unknown));
    server.reader_unknown(at(1), unknown);
    let page = vec![rust.record(RUST)];
    assert_eq!(transmits(&mut server), vec![(11, page.clone())]);
    server.handle_timeout(at(2));
    assert_eq!(transmits(&mut server), vec![(10, page)]);
    assert_eq!(server.stats().reader_waits_expired, 1);
    discover(&mut server, at(3), silent, 12);
    assert_eq!(transmits(&mut server).len(), 1, "not held again");
    assert_eq!(server.poll_reader_wanted(), None, "not asked again");
    assert!(server.poll_timeout() > Some(at(3)), "no wait is left to time");
}

#[test]
fn a_peer_that_registered_is_still_asked_since_it_may_read_more_than_it_writes() {
    let (mut server, rust, standard) = point();
    let (everything, silent) = (TestPeer::new(3), TestPeer::new(4));
    for (peer, id) in [(&everything, 10), (&silent, 20)] {
        let message = testing::register(NS, peer.record(STANDARD), None);
        server.handle_request(at(0), peer.id, RequestId(id), message);
        discover(&mut server, at(0), peer.id, id + 1);
    }
    let ids: Vec<u64> = transmits(&mut server).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![10, 20], "registered at once; the DISCOVERs wait");
    assert_eq!(server.poll_reader_wanted(), Some(everything.id));
    assert_eq!(server.poll_reader_wanted(), Some(silent.id));
    // This project's client reads every flavour, and registers in one.
    server.set_reader_dialect(at(1), everything.id, Reader::Any);
    let page = only(&mut server, 11);
    let mut all = vec![rust.record(RUST), standard.record(STANDARD), everything.record(STANDARD)];
    all.push(silent.record(STANDARD));
    all.sort();
    assert_eq!(page, all);
    // No answer: it reads what it writes.
    server.handle_timeout(at(2));
    let page = only(&mut server, 21);
    let mut standard_only =
        vec![standard.record(STANDARD), everything.record(STANDARD), silent.record(STANDARD)];
    standard_only.sort();
    assert_eq!(page, standard_only);
}

#[test]
fn a_peer_that_leaves_while_asked_about_is_answered_and_forgotten() {
    let (mut server, _, _) = point();
    let peer = TestPeer::new(3).id;
    discover(&mut server, at(0), peer, 10);
    server.handle_disconnected(at(0), &peer);
    assert_eq!(transmits(&mut server).len(), 1, "no request is left unanswered");
    assert_eq!(server.stats().reader_waits, 0);
    assert_eq!(server.poll_timeout().map(|t| t > at(2)), Some(true), "its wait is gone");
}

fn subscribe(server: &mut Server, peer: PeerId, id: u64) {
    let request = prost::Message::encode_to_vec(&proto::Message {
        r#type: Some(MessageType::DiscoverSubscribe as i32),
        discover_subscribe: Some(proto::DiscoverSubscribe {
            supported_subscription_types: vec![crate::SUBSCRIPTION_TYPE.into()],
            ns: Some(NS.into()),
            position: None,
        }),
        ..Default::default()
    });
    server.handle_subscribe(at(0), peer, SubscriptionId(id), &request).unwrap();
}

#[test]
fn a_subscription_waits_for_its_reader_and_one_closed_meanwhile_is_forgotten() {
    let (mut server, _, standard) = point();
    let peer = TestPeer::new(3).id;
    subscribe(&mut server, peer, 1);
    subscribe(&mut server, peer, 2);
    assert!(server.poll_push().is_none(), "nothing before the reader is known");
    server.handle_unsubscribed(SubscriptionId(2));
    assert_eq!(server.stats().subscriptions, 0);
    server.set_reader_dialect(at(1), peer, Reader::Signed(Flavour::Standard));
    let pushes: Vec<_> = std::iter::from_fn(|| server.poll_push()).collect();
    assert!(pushes.iter().all(|p| p.subscription == SubscriptionId(1)), "{pushes:?}");
    let records: Vec<Bytes> = pushes
        .iter()
        .filter_map(|p| p.message().discover_response)
        .flat_map(|page| page.registrations)
        .filter_map(|r| r.signed_peer_record)
        .collect();
    assert_eq!(records, vec![standard.record(STANDARD)]);
    assert_eq!(server.stats().subscriptions, 1);
}

#[test]
fn a_reader_wait_must_end_before_the_discovers_it_holds_time_out() {
    let config = ServerConfig {
        reader_wait: Duration::from_secs(5),
        max_discover_wait: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    assert_eq!(Server::new(config).err(), Some(ConfigError::ReaderWait));
}

#[test]
fn a_discover_whose_writes_settle_first_still_waits_for_its_reader() {
    use crate::store::{Commit, StoreAction};
    let config = ServerConfig {
        reader_wait: WAIT,
        durability: crate::Durability::Local,
        ..ServerConfig::default()
    };
    let mut server = Server::new(config).unwrap();
    let (standard, peer) = (TestPeer::new(2), TestPeer::new(3));
    let stored = |server: &mut Server, who: &TestPeer, ns: &str| {
        let message = testing::register(ns, who.record(STANDARD), None);
        server.handle_request(at(0), who.id, RequestId(1), message);
        let Some(StoreAction::Put { id, registration, .. }) = server.poll_store() else {
            panic!("a put")
        };
        server.handle_commit(at(0), Commit::Stored { id, seq: registration.seq });
    };
    stored(&mut server, &standard, NS);
    stored(&mut server, &peer, "other");
    transmits(&mut server);
    // It comes back with a new connection: what it reads is forgotten.
    server.handle_disconnected(at(0), &peer.id);
    server.handle_request(at(0), peer.id, RequestId(10), testing::unregister("other"));
    discover(&mut server, at(0), peer.id, 11);
    let Some(StoreAction::Delete { id, .. }) = server.poll_store() else { panic!("a delete") };
    assert_eq!(server.poll_reader_wanted(), Some(peer.id));
    server.handle_commit(at(1), Commit::Removed { id });
    assert_eq!(transmits(&mut server), vec![(10, vec![])], "the page waits for the reader");
    server.set_reader_dialect(at(1), peer.id, Reader::Signed(Flavour::Standard));
    assert_eq!(transmits(&mut server), vec![(11, vec![standard.record(STANDARD)])]);
}

mod model {
    //! Random DISCOVERs, REGISTERs, answers, timeouts and disconnects of a
    //! few peers against the plainest model of the wait: every DISCOVER is
    //! answered exactly once, in its peer's order, each page in the
    //! flavour the peer was known to read when it was served, and a peer
    //! is asked only when the model says so.

    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;

    use super::*;
    use crate::testing::DIALECTS;

    const ASKERS: usize = 3;
    const READERS: [Reader; 4] = [
        Reader::Signed(Flavour::RustLibp2p),
        Reader::Signed(Flavour::Standard),
        Reader::Legacy,
        Reader::Any,
    ];

    #[derive(Clone, Debug)]
    enum Op {
        Discover(usize),
        Register(usize, usize),
        Tell(usize, usize),
        Unknown(usize),
        Advance(u64),
        Disconnect(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let peer = 0..ASKERS;
        prop_oneof![
            4 => peer.clone().prop_map(Op::Discover),
            2 => (peer.clone(), 0..DIALECTS.len()).prop_map(|(p, d)| Op::Register(p, d)),
            2 => (peer.clone(), 0..READERS.len()).prop_map(|(p, r)| Op::Tell(p, r)),
            1 => peer.clone().prop_map(Op::Unknown),
            2 => (0..3u64).prop_map(Op::Advance),
            1 => peer.prop_map(Op::Disconnect),
        ]
    }

    /// What the point knows of an asking peer.
    #[derive(Default)]
    struct Peer {
        told: Option<Reader>,
        registered: Option<Reader>,
        asked: bool,
        until: Option<Timestamp>,
        held: VecDeque<u64>,
    }

    impl Peer {
        fn reader(&self) -> Reader {
            match self.told {
                Some(Reader::Any) => Reader::Any,
                told => self.registered.or(told).unwrap_or(Reader::Signed(Flavour::RustLibp2p)),
            }
        }
    }

    /// The namespace's records as `reader` is served them; peers 10, 11
    /// and 12 registered there in the three dialects.
    fn page_for(reader: Reader) -> Vec<Bytes> {
        let [rust, standard, legacy] = [10, 11, 12].map(TestPeer::new);
        let mut page = match reader {
            Reader::Signed(Flavour::RustLibp2p) => vec![rust.record(RUST)],
            Reader::Signed(Flavour::Standard) => vec![standard.record(STANDARD)],
            Reader::Legacy => [&rust, &standard, &legacy].map(|p| p.record(Dialect::Legacy)).into(),
            Reader::Any => {
                vec![rust.record(RUST), standard.record(STANDARD), legacy.record(Dialect::Legacy)]
            }
        };
        page.sort();
        page
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let config = ServerConfig { reader_wait: WAIT, ..ServerConfig::default() };
        let mut server = Server::new(config).unwrap();
        for (seed, dialect) in [(10, RUST), (11, STANDARD), (12, Dialect::Legacy)] {
            let peer = TestPeer::new(seed);
            let message = testing::register(NS, peer.record(dialect), None);
            server.handle_request(at(0), peer.id, RequestId(0), message);
        }
        let ids: Vec<PeerId> = (0..ASKERS).map(|i| TestPeer::new(i as u32 + 1).id).collect();
        let mut peers: Vec<Peer> = (0..ASKERS).map(|_| Peer::default()).collect();
        let mut now = at(0);
        let mut next_id = 1;
        let mut asked: Vec<usize> = Vec::new();
        let mut served: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
        let mut owner: BTreeMap<u64, usize> = BTreeMap::new();
        let end = |peer: &mut Peer, served: &mut BTreeMap<u64, Vec<Bytes>>| {
            peer.until = None;
            let page = page_for(peer.reader());
            for id in peer.held.drain(..) {
                served.insert(id, page.clone());
            }
        };
        for op in ops.into_iter().chain([Op::Advance(3)]) {
            let mut expected = BTreeMap::new();
            match op {
                Op::Discover(p) => {
                    let (id, peer) = (next_id, &mut peers[p]);
                    next_id += 1;
                    owner.insert(id, p);
                    if peer.until.is_none() && peer.told.is_none() && !peer.asked {
                        peer.asked = true;
                        peer.until = Some(now + WAIT);
                        asked.push(p);
                    }
                    if peer.until.is_some() {
                        peer.held.push_back(id);
                    } else {
                        expected.insert(id, page_for(peer.reader()));
                    }
                    discover(&mut server, now, ids[p], id);
                }
                Op::Register(p, d) => {
                    let me = TestPeer::new(p as u32 + 1);
                    let message = testing::register("own", me.record(DIALECTS[d]), None);
                    server.handle_request(now, me.id, RequestId(0), message);
                    peers[p].registered = Some(DIALECTS[d].into());
                }
                Op::Tell(p, r) => {
                    peers[p].told = Some(READERS[r]);
                    if peers[p].until.is_some() {
                        end(&mut peers[p], &mut expected);
                    }
                    server.set_reader_dialect(now, ids[p], READERS[r]);
                }
                Op::Unknown(p) => {
                    end(&mut peers[p], &mut expected);
                    server.reader_unknown(now, ids[p]);
                }
                Op::Advance(secs) => {
                    now = now + Duration::from_secs(secs);
                    for peer in &mut peers {
                        if peer.until.is_some_and(|until| until <= now) {
                            end(peer, &mut expected);
                        }
                    }
                    server.handle_timeout(now);
                }
                Op::Disconnect(p) => {
                    let held = std::mem::take(&mut peers[p].held);
                    peers[p] = Peer { held, ..Peer::default() };
                    end(&mut peers[p], &mut expected);
                    server.handle_disconnected(now, &ids[p]);
                }
            }
            let answers: Vec<(u64, Vec<Bytes>)> = transmits(&mut server)
                .into_iter()
                .filter(|(id, _)| *id != 0)
                .map(|(id, mut page)| {
                    page.sort();
                    (id, page)
                })
                .collect();
            // Each peer's answers come in the order it asked.
            for p in 0..ASKERS {
                let mine: Vec<u64> =
                    answers.iter().map(|(id, _)| *id).filter(|id| owner[id] == p).collect();
                prop_assert!(mine.is_sorted(), "peer {} answered out of order: {:?}", p, mine);
            }
            let got: BTreeMap<u64, Vec<Bytes>> = answers.iter().cloned().collect();
            prop_assert_eq!(got.len(), answers.len(), "answered once");
            prop_assert_eq!(&got, &expected, "what is answered, and in which flavour");
            let wanted: Vec<PeerId> = std::iter::from_fn(|| server.poll_reader_wanted()).collect();
            let want: Vec<PeerId> = asked.drain(..).map(|p| ids[p]).collect();
            prop_assert_eq!(wanted, want, "who is asked");
            served.extend(got);
        }
        prop_assert_eq!(served.len() as u64, next_id - 1, "every DISCOVER is answered");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn discovers_wait_for_their_reader_in_order_and_none_is_lost(
            ops in prop::collection::vec(op(), 1..40)
        ) {
            run(ops)?;
        }
    }
}
