//! The durable path: a REGISTER held until its put is stored, removals
//! passed on to the store, and what a store kept loaded back at start.
//!
//! Puts waiting for their commit count toward the limits, so the server
//! never admits more than it could hold; a later flavour of the same
//! registration joins the latest pending put, so what is stored has every
//! flavour.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use libp2p_identity::PeerId;

use super::{Event, Server, register_response};
use crate::RequestId;
use crate::namespace::Namespace;
use crate::origin::Origin;
use crate::proto::{MessageType, ResponseStatus};
use crate::record::Dialect;
use crate::registry::StoredRecord;
use crate::store::{ActionId, Commit, Replicated, StoreAction, StoredRegistration};
use crate::time::Timestamp;

/// What a successful REGISTER grants, to apply and to answer with.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) peer: PeerId,
    pub(crate) namespace: Namespace,
    pub(crate) ttl: Duration,
    pub(crate) dialect: Dialect,
}

#[derive(Debug)]
struct PendingPut {
    request_id: RequestId,
    grant: Grant,
    expires: Timestamp,
    record: StoredRecord,
    /// The key had no registration: it counts toward the limits.
    new: bool,
}

/// Puts on their way to the store.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    puts: BTreeMap<ActionId, PendingPut>,
    new_per_peer: HashMap<PeerId, usize>,
    new_per_namespace: HashMap<Namespace, usize>,
    new_per_origin: HashMap<Origin, usize>,
    new_total: usize,
    /// The latest pending put of each key.
    latest: HashMap<(PeerId, Namespace), ActionId>,
    /// Puts in a shared log, waiting to come back at their position.
    logged: HashMap<u64, ActionId>,
}

impl Pending {
    pub(crate) fn new_for_peer(&self, peer: &PeerId) -> usize {
        self.new_per_peer.get(peer).copied().unwrap_or(0)
    }

    pub(crate) fn new_in_namespace(&self, namespace: &Namespace) -> usize {
        self.new_per_namespace.get(namespace).copied().unwrap_or(0)
    }

    pub(crate) fn new_with_origin(&self, origin: &Origin) -> usize {
        self.new_per_origin.get(origin).copied().unwrap_or(0)
    }

    pub(crate) fn new_in_all(&self) -> usize {
        self.new_total
    }

    pub(crate) fn len(&self) -> usize {
        self.puts.len()
    }

    /// The record of the latest pending put of `peer` in `namespace`.
    pub(crate) fn latest_record(
        &self,
        peer: &PeerId,
        namespace: &Namespace,
    ) -> Option<&StoredRecord> {
        let id = self.latest.get(&(*peer, namespace.clone()))?;
        self.puts.get(id).map(|put| &put.record)
    }

    fn add(&mut self, id: ActionId, put: PendingPut) {
        let key = (put.grant.peer, put.grant.namespace.clone());
        if put.new {
            *self.new_per_peer.entry(key.0).or_default() += 1;
            *self.new_per_namespace.entry(key.1.clone()).or_default() += 1;
            if let Some(origin) = put.record.origin() {
                *self.new_per_origin.entry(origin).or_default() += 1;
            }
            self.new_total += 1;
        }
        self.latest.insert(key, id);
        self.puts.insert(id, put);
    }

    fn await_replication(&mut self, seq: u64, id: ActionId) {
        self.logged.insert(seq, id);
    }

    fn take_logged(&mut self, seq: u64) -> Option<PendingPut> {
        let id = self.logged.remove(&seq)?;
        self.take(id)
    }

    fn take(&mut self, id: ActionId) -> Option<PendingPut> {
        let put = self.puts.remove(&id)?;
        let key = (put.grant.peer, put.grant.namespace.clone());
        if self.latest.get(&key) == Some(&id) {
            self.latest.remove(&key);
        }
        if put.new {
            decrement(&mut self.new_per_peer, &key.0);
            decrement(&mut self.new_per_namespace, &key.1);
            if let Some(origin) = put.record.origin() {
                decrement(&mut self.new_per_origin, &origin);
            }
            self.new_total -= 1;
        }
        Some(put)
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// What [`Server::load`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Registrations restored.
    pub registrations: usize,
    /// Registrations that had expired meanwhile; a delete for each is queued.
    pub expired: usize,
}

impl Server {
    /// The next action for the store, in order (durable servers only).
    pub fn poll_store(&mut self) -> Option<StoreAction> {
        self.store.pop_front()
    }

    /// What became of a put: apply and answer OK, or answer the refusal.
    pub fn handle_commit(&mut self, now: Timestamp, commit: Commit) {
        self.advance(now);
        match commit {
            Commit::Stored { id, seq } => {
                if let Some(put) = self.pending.take(id) {
                    self.apply_and_answer(put, seq);
                }
            }
            Commit::Logged { id, seq } => {
                let key =
                    self.pending.puts.get(&id).map(|p| (p.grant.peer, p.grant.namespace.clone()));
                let Some((peer, namespace)) = key else {
                    return;
                };
                // Already back through the log, or waiting for it.
                if self.registry.get(&peer, &namespace).is_some_and(|e| e.seq >= seq) {
                    if let Some(put) = self.pending.take(id) {
                        let Grant { peer, namespace, ttl, dialect } = put.grant.clone();
                        self.readers.registered(peer, dialect.into());
                        self.push_event(match put.new {
                            true => Event::Registered { peer, namespace, ttl, dialect },
                            false => Event::Refreshed { peer, namespace, ttl, dialect },
                        });
                        self.answer_ok(put);
                    }
                } else {
                    self.pending.await_replication(seq, id);
                }
            }
            Commit::Refused { id, status, reason } => {
                let Some(put) = self.pending.take(id) else {
                    return;
                };
                let (peer, request_id) = (put.grant.peer, put.request_id);
                let message = register_response(status, Some(reason.clone()), None);
                self.refused(peer, MessageType::Register, status, reason);
                self.answer(peer, request_id, Ok(MessageType::Register), Some(message));
            }
        }
    }

    /// Restores what a store kept, at start: registrations whose expiry has
    /// passed are dropped (and deleted from the store), the others keep
    /// their position and expiry, and new positions start above
    /// `last_seq` (the highest the store ever gave) so that cookies issued
    /// before the restart stay valid. Limits are not checked: these were
    /// admitted under the limits of their time. No events are emitted.
    pub fn load(
        &mut self,
        now: Timestamp,
        registrations: impl IntoIterator<Item = StoredRegistration>,
        last_seq: u64,
    ) -> Loaded {
        self.now = self.now.max(now);
        self.registry.raise_seq(last_seq);
        let mut loaded = Loaded::default();
        // In position order, the registry's ordered indexes grow at their
        // right edge: several times faster than in the store's key order.
        let mut registrations: Vec<_> = registrations.into_iter().collect();
        registrations.sort_unstable_by_key(|r| r.seq);
        for stored in registrations {
            if stored.expires <= self.now {
                loaded.expired += 1;
                self.store_delete(stored.peer, stored.namespace, stored.seq);
                continue;
            }
            let StoredRegistration { peer, namespace, seq, expires, record } = stored;
            self.registry.insert(peer, namespace, seq, expires, record);
            loaded.registrations += 1;
        }
        loaded
    }

    /// Applies a change from a shared store, in the store's order:
    /// another point's, or one of ours coming back (then its REGISTER is
    /// answered). Older than what is held, it changes nothing. No events
    /// are emitted for other points' changes.
    pub fn apply_replicated(&mut self, now: Timestamp, change: Replicated) {
        self.advance(now);
        match change {
            Replicated::Put(stored) => {
                let held = self.registry.get(&stored.peer, &stored.namespace).map(|e| e.seq);
                if held.is_some_and(|seq| seq >= stored.seq) {
                    return;
                }
                let seq = stored.seq;
                match self.pending.take_logged(seq) {
                    Some(put) => self.apply_and_answer(put, seq),
                    None => {
                        let StoredRegistration { peer, namespace, seq, expires, record } = stored;
                        self.registry.insert(peer, namespace, seq, expires, record);
                    }
                }
            }
            Replicated::Delete { peer, namespace, seq } => {
                if self.registry.get(&peer, &namespace).is_some_and(|e| e.seq <= seq) {
                    self.registry.remove(&peer, &namespace);
                }
            }
        }
    }

    /// Replaces everything held with what a shared store holds (after
    /// falling too far behind its log to catch up); puts still on their way
    /// stay on their way.
    pub fn resync(
        &mut self,
        now: Timestamp,
        registrations: impl IntoIterator<Item = StoredRegistration>,
        last_seq: u64,
    ) -> Loaded {
        let keep = self.registry.last_seq();
        self.registry = crate::registry::Registry::starting_at(keep);
        self.load(now, registrations, last_seq)
    }

    /// Puts waiting for their commit.
    pub fn pending_puts(&self) -> usize {
        self.pending.len()
    }

    fn apply_and_answer(&mut self, put: PendingPut, seq: u64) {
        self.apply(put.grant.clone(), seq, put.expires, put.record.clone());
        self.answer_ok(put);
    }

    fn answer_ok(&mut self, put: PendingPut) {
        let (peer, request_id, ttl) = (put.grant.peer, put.request_id, put.grant.ttl);
        let message = register_response(ResponseStatus::Ok, None, Some(ttl.as_secs()));
        self.answer(peer, request_id, Ok(MessageType::Register), Some(message));
    }

    /// Hands a checked registration to the store and holds its answer.
    pub(super) fn hold(
        &mut self,
        request_id: RequestId,
        grant: Grant,
        expires: Timestamp,
        record: StoredRecord,
        new: bool,
    ) {
        let id = self.next_action();
        self.proposed_seq = self.proposed_seq.max(self.registry.last_seq()) + 1;
        let registration = StoredRegistration {
            peer: grant.peer,
            namespace: grant.namespace.clone(),
            seq: self.proposed_seq,
            expires,
            record: record.clone(),
        };
        self.store.push_back(StoreAction::Put { id, registration });
        self.pending.add(id, PendingPut { request_id, grant, expires, record, new });
    }

    /// Passes a removal on to the store, when durable.
    pub(super) fn store_delete(&mut self, peer: PeerId, namespace: Namespace, seq: u64) {
        if self.config.durable {
            let id = self.next_action();
            self.store.push_back(StoreAction::Delete { id, peer, namespace, seq });
        }
    }

    fn next_action(&mut self) -> ActionId {
        self.next_action += 1;
        ActionId(self.next_action)
    }
}

#[cfg(test)]
mod tests;

impl Server {
    /// Expiry, passed on to the store.
    pub(super) fn on_expired(&mut self, peer: PeerId, namespace: Namespace, seq: u64) {
        self.store_delete(peer, namespace.clone(), seq);
        self.push_event(Event::Expired { peer, namespace });
    }
}
