//! Arrival order and limits under random commit delays and failures: a
//! property test against the plainest model, applying every request that
//! was answered OK in the order the server read it. With a shared store,
//! time also passes: a REGISTER whose put the log took but the point has
//! not read back is answered before it settles, and the model applies it
//! too (this store never loses a write).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use libp2p_identity::PeerId;
use proptest::prelude::*;

use super::*;
use crate::proto::read_status;
use crate::record::Flavour;
use crate::store::StoreAction;
use crate::testing::{self, TestPeer};
use crate::{Limits, RequestId, ServerConfig};

const PER_PEER: usize = 2;
const TOTAL: usize = 3;
const NAMESPACES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Op {
    Register(usize, usize),
    Unregister(usize, usize),
    /// The store takes its next action; a put fails (refused), a delete
    /// fails and goes to the back of the queue to be retried.
    Store {
        fail: bool,
    },
    /// Shared: deliver the next commit (true) or the next log entry.
    Deliver(bool),
    /// Time passes: past every REGISTER's wait for the log.
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..3usize).prop_map(|(p, n)| Op::Register(p, n)),
        2 => (0..2usize, 0..3usize).prop_map(|(p, n)| Op::Unregister(p, n)),
        3 => prop::bool::weighted(0.2).prop_map(|fail| Op::Store { fail }),
        2 => any::<bool>().prop_map(Op::Deliver),
        1 => Just(Op::Wait),
    ]
}

type Key = (PeerId, Namespace);

/// A store that runs actions in order, except deletes that fail, which it
/// retries after everything queued since.
#[derive(Default)]
struct Store {
    queue: VecDeque<StoreAction>,
    held: BTreeMap<Key, u64>,
    position: u64,
    commits: VecDeque<Commit>,
    log: VecDeque<Replicated>,
}

impl Store {
    fn step(&mut self, durability: Durability, fail: bool) {
        let Some(action) = self.queue.pop_front() else { return };
        match action {
            StoreAction::Put { id, registration, .. } if fail => {
                let _ = registration;
                let reason = "the store failed".to_owned();
                self.commits.push_back(Commit::Refused {
                    id,
                    status: ResponseStatus::EUnavailable,
                    reason,
                });
            }
            StoreAction::Delete { .. } if fail => self.queue.push_back(action),
            StoreAction::Put { id, mut registration, .. } => {
                let key = (registration.peer, registration.namespace.clone());
                if durability == Durability::Shared {
                    self.position += 1;
                    registration.seq = self.position;
                    self.commits.push_back(Commit::Logged { id, seq: self.position });
                    self.log.push_back(Replicated::Put(registration.clone()));
                } else {
                    self.commits.push_back(Commit::Stored { id, seq: registration.seq });
                }
                self.held.insert(key, registration.seq);
            }
            StoreAction::Delete { id, peer, namespace, seq } => {
                let key = (peer, namespace.clone());
                match self.held.get(&key) {
                    Some(&stored) if stored <= seq => {
                        self.held.remove(&key);
                        if durability == Durability::Shared {
                            self.position += 1;
                            let position = self.position;
                            self.commits.push_back(Commit::Logged { id, seq: position });
                            self.log.push_back(Replicated::Delete {
                                peer,
                                namespace,
                                seq: stored,
                                position,
                            });
                        } else {
                            self.commits.push_back(Commit::Removed { id });
                        }
                    }
                    _ => self.commits.push_back(Commit::Removed { id }),
                }
            }
        }
    }
}

fn run(durability: Durability, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limits = Limits {
        max_registrations_per_peer: PER_PEER,
        max_registrations: TOTAL,
        ..Limits::default()
    };
    let mut s =
        Server::new(ServerConfig { limits, durability, ..ServerConfig::default() }).unwrap();
    let peers = [TestPeer::new(1), TestPeer::new(2)];
    let mut now = Timestamp::from_secs(10);
    let mut store = Store::default();
    // Every request in the order read: (request, key, is a register).
    let mut read: Vec<(RequestId, Key, bool)> = Vec::new();
    let mut answers: BTreeMap<RequestId, Option<ResponseStatus>> = BTreeMap::new();
    // REGISTERs answered while their put was still on its way.
    let mut answered_early = BTreeSet::new();
    // Then the store catches up, and everything comes back.
    let settle = [Op::Store { fail: false }, Op::Deliver(true), Op::Deliver(false)];
    let ops = ops.into_iter().chain(settle.into_iter().cycle().take(600));
    for op in ops {
        match op {
            Op::Register(p, n) => {
                let id = RequestId(read.len() as u64);
                let record = peers[p].record(Dialect::Signed(Flavour::RustLibp2p));
                s.handle_request(
                    now,
                    peers[p].id,
                    id,
                    testing::register(NAMESPACES[n], record, None),
                );
                read.push((id, (peers[p].id, Namespace::new(NAMESPACES[n], 255).unwrap()), true));
            }
            Op::Unregister(p, n) => {
                let id = RequestId(read.len() as u64);
                s.handle_request(now, peers[p].id, id, testing::unregister(NAMESPACES[n]));
                read.push((id, (peers[p].id, Namespace::new(NAMESPACES[n], 255).unwrap()), false));
            }
            Op::Store { fail } => store.step(durability, fail),
            Op::Deliver(true) => {
                if let Some(commit) = store.commits.pop_front() {
                    s.handle_commit(now, commit);
                }
            }
            Op::Deliver(false) => {
                if let Some(change) = store.log.pop_front() {
                    s.apply_replicated(now, change);
                }
            }
            Op::Wait => {
                now = now + s.config.max_log_wait + Duration::from_millis(1);
                s.handle_timeout(now);
            }
        }
        store.queue.extend(std::iter::from_fn(|| s.poll_store()));
        while let Some(t) = s.poll_transmit() {
            let response = t.message.map(|m| m.register_response.unwrap());
            if response.as_ref().is_some_and(|r| r.status_text.as_deref() == Some(NOT_READ_BACK)) {
                prop_assert_eq!(durability, Durability::Shared);
                answered_early.insert(t.request_id);
            }
            let status = response.map(|r| read_status(r.status).unwrap());
            prop_assert!(answers.insert(t.request_id, status).is_none(), "answered twice");
        }
        // The limits hold at every instant.
        prop_assert!(s.stats().registrations <= TOTAL);
        for peer in &peers {
            prop_assert!(s.registry.peer_len(&peer.id) <= PER_PEER);
        }
    }
    prop_assert_eq!(answers.len(), read.len(), "every request answered");
    prop_assert_eq!(s.pending_writes(), 0);
    // The model: what was answered OK, applied in the order read.
    let mut model = BTreeSet::new();
    for (id, key, register) in &read {
        match (register, answers[id]) {
            (true, Some(ResponseStatus::Ok)) => {
                model.insert(key.clone());
            }
            (true, _) if answered_early.contains(id) => {
                model.insert(key.clone());
            }
            (false, _) => {
                model.remove(key);
            }
            _ => {}
        }
    }
    let held: BTreeSet<Key> = model
        .iter()
        .chain(store.held.keys())
        .filter(|(peer, ns)| s.registry.get(peer, ns).is_some())
        .cloned()
        .collect();
    prop_assert_eq!(&held, &model, "the server holds what arrival order gives");
    let stored: BTreeSet<Key> = store.held.keys().cloned().collect();
    prop_assert_eq!(&stored, &model, "the store holds it too");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn writes_take_effect_in_arrival_order_within_the_limits_at_a_local_store(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(Durability::Local, ops)?;
    }

    #[test]
    fn writes_take_effect_in_arrival_order_within_the_limits_at_a_shared_store(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(Durability::Shared, ops)?;
    }
}
