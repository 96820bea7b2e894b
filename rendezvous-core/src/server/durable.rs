//! The durable path: writes handed to the store and settled by its
//! commits ([`writes`](super::writes) keeps them in order), changes another
//! point made coming back through a shared log, and what a store kept
//! loaded back at start.

use std::time::Duration;

use libp2p_identity::PeerId;

use super::writes::{Key, Write};
use super::{Event, Server, register_response};
use crate::namespace::Namespace;
use crate::proto::{MessageType, ResponseStatus};
use crate::record::Dialect;
use crate::registry::StoredRecord;
use crate::request::RequestId;
use crate::store::{ActionId, Commit, Replicated, StoreAction, StoredRegistration};
use crate::time::Timestamp;

/// Where a server's registrations live, and so when it answers a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// In memory only: every request takes effect at once. The default.
    #[default]
    Volatile,
    /// In a store of this point's own: writes go out as
    /// [`StoreAction`]s and take effect, and are answered, once the
    /// adapter reports them committed; expiry, decided by this point's
    /// clock, removes at once and tells the store.
    Local,
    /// In a store shared with other points, which orders every write in one
    /// log ([`Commit::Logged`]) and expires registrations by its own clock:
    /// writes take effect when they come back through the log, and expiry
    /// is never sent to the store.
    Shared,
}

impl Durability {
    /// Whether writes wait for a store.
    pub fn is_durable(self) -> bool {
        self != Durability::Volatile
    }
}

/// Why a REGISTER a failover lost is refused.
const LOST: &str = "the shared store lost the registration in a failover; retry";
/// Why a REGISTER whose put a shared store logged is refused once it has
/// waited [`ServerConfig::max_log_wait`](crate::ServerConfig) for this point
/// to read it back.
const NOT_READ_BACK: &str = concat!(
    "the shared store took the registration, but this point could not read it back in time; ",
    "it may still take effect: retry"
);
/// Ranges of lost positions remembered, for writes whose position comes
/// back after the loss was learnt.
const LOST_RANGES: usize = 16;

/// What a successful REGISTER grants, to apply and to answer with.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) peer: PeerId,
    pub(crate) namespace: Namespace,
    pub(crate) ttl: Duration,
    pub(crate) dialect: Dialect,
    /// Nothing was held or pending for the key when it was read.
    pub(crate) new: bool,
}

/// What [`Server::load`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Registrations restored.
    pub registrations: usize,
    /// Registrations that had expired meanwhile; a delete for each is queued
    /// (unless the store is shared, which expires them itself).
    pub expired: usize,
}

impl Server {
    /// The next action for the store, in order (durable servers only).
    pub fn poll_store(&mut self) -> Option<StoreAction> {
        self.store.pop_front()
    }

    /// What became of a store action.
    pub fn handle_commit(&mut self, now: Timestamp, commit: Commit) {
        self.advance(now);
        let id = commit.id();
        let submitted = self.submitted.remove(&id);
        if let Some(since) = submitted {
            self.commit_durations.observe(self.now - since);
        }
        match commit {
            Commit::Stored { id, seq } => self.settle_put(id, seq, None),
            Commit::Removed { id } => self.settle_delete(id),
            Commit::Logged { id, seq } if self.position_lost(seq) => self.lose(id),
            // Back through the log already (applied as it came).
            Commit::Logged { id, seq } if seq <= self.log_position => self.settle_passed(id, seq),
            Commit::Logged { id, seq } => {
                self.writes.await_log(seq, id, self.now + self.config.max_log_wait)
            }
            Commit::Refused { id, status, reason } => self.refuse_put(id, status, reason),
        }
    }

    /// Answers the REGISTER of put `id` with `status`: it took no effect.
    fn refuse_put(&mut self, id: ActionId, status: ResponseStatus, reason: String) {
        let Some(key) = self.writes.key_of(id).cloned() else { return };
        let Some(Write::Put(put)) = self.writes.settle(id, None) else { return };
        if !put.answered {
            self.refuse_register(put.grant.peer, put.request, status, reason);
        }
        self.after_settling(&key);
    }

    fn refuse_register(
        &mut self,
        peer: PeerId,
        request: RequestId,
        status: ResponseStatus,
        reason: String,
    ) {
        let message = register_response(status, Some(reason.clone()), None);
        self.refused(peer, MessageType::Register, status, reason);
        self.answer(peer, request, Ok(MessageType::Register), Some(message));
    }

    /// Answers `E_UNAVAILABLE` to the REGISTERs whose puts a shared store
    /// logged but this point has not read back from the log in
    /// [`ServerConfig::max_log_wait`](crate::ServerConfig) (its follower is
    /// behind, or the store went away right after taking them). Each put
    /// keeps its place: it takes effect if the log holds it, the writes
    /// read after it still wait for it, and its peer's DISCOVERs no longer
    /// do.
    pub(super) fn stop_waiting_for_log(&mut self) {
        for (peer, request) in self.writes.stop_waiting_for_log(self.now) {
            let status = ResponseStatus::EUnavailable;
            self.refuse_register(peer, request, status, NOT_READ_BACK.to_owned());
            self.serve_waiting(peer);
        }
    }

    /// Restores what a store kept, at start: registrations whose expiry has
    /// passed are dropped (and, for a store of this point's own, deleted
    /// from it), the others keep their position and expiry. New positions
    /// continue from `last_seq` (the highest the store ever gave) when it
    /// gave any, so that cookies issued before the restart stay valid and
    /// positions stay dense (a shared store's positions are the only ones a
    /// point uses). Limits are not checked: these were admitted
    /// under the limits of their time. No events are emitted.
    pub fn load(
        &mut self,
        now: Timestamp,
        registrations: impl IntoIterator<Item = StoredRegistration>,
        last_seq: u64,
    ) -> Loaded {
        self.now = self.now.max(now);
        // A shared store gives every position; a store of this point's own
        // that never gave any leaves the configured start.
        if last_seq > 0 || self.config.durability == Durability::Shared {
            self.registry.continue_from(last_seq);
        }
        self.log_position = self.log_position.max(last_seq);
        let mut loaded = Loaded::default();
        // In position order, the registry's ordered indexes grow at their
        // right edge: several times faster than in the store's key order.
        let mut registrations: Vec<_> = registrations.into_iter().collect();
        registrations.sort_unstable_by_key(|r| r.seq);
        for stored in registrations {
            if stored.expires <= self.now {
                loaded.expired += 1;
                self.expired_in_store(stored.peer, stored.namespace, stored.seq);
                continue;
            }
            let StoredRegistration { peer, namespace, seq, expires, record } = stored;
            self.registry.insert(peer, namespace, seq, expires, record);
            loaded.registrations += 1;
        }
        self.subscriptions.loaded(self.registry.last_seq());
        loaded
    }

    /// Applies a change from a shared store, in the store's order:
    /// another point's, or one of ours coming back (then its request is
    /// answered). Older than what is held, it changes nothing. No events
    /// are emitted for other points' changes.
    pub fn apply_replicated(&mut self, now: Timestamp, change: Replicated) {
        self.advance(now);
        match change {
            Replicated::Put(stored) => {
                self.log_position = self.log_position.max(stored.seq);
                let key = (stored.peer, stored.namespace.clone());
                if let Some(id) = self.take_logged(stored.seq, &key) {
                    return self.settle_put(id, stored.seq, Some(stored.expires));
                }
                let held = self.registry.get(&stored.peer, &stored.namespace).map(|e| e.seq);
                if held.is_none_or(|seq| seq < stored.seq) {
                    let StoredRegistration { peer, namespace, seq, expires, record } = stored;
                    self.registry.insert(peer, namespace.clone(), seq, expires, record);
                    self.publish_put(&peer, &namespace);
                }
                self.recount(&key);
            }
            Replicated::Delete { peer, namespace, seq, position } => {
                self.log_position = self.log_position.max(position);
                if self.registry.get(&peer, &namespace).is_some_and(|e| e.seq <= seq)
                    && let Some(entry) = self.registry.remove(&peer, &namespace)
                {
                    self.publish_removal(peer, &entry);
                }
                let key = (peer, namespace);
                match self.take_logged(position, &key) {
                    Some(id) => self.settle_delete(id),
                    None => self.recount(&key),
                }
            }
        }
    }

    /// Replaces everything held with what a shared store holds at log
    /// position `last_seq` (after falling behind its log); writes still on
    /// their way stay on their way, and those the log had taken by then are
    /// settled.
    pub fn resync(
        &mut self,
        now: Timestamp,
        registrations: impl IntoIterator<Item = StoredRegistration>,
        last_seq: u64,
    ) -> Loaded {
        let keep = self.registry.last_seq();
        self.registry = crate::registry::Registry::starting_at(keep);
        let loaded = self.load(now, registrations, last_seq);
        // Cookies issued before stay valid.
        self.registry.raise_seq(keep);
        for (seq, id) in self.writes.logged_up_to(last_seq) {
            self.settle_passed(id, seq);
        }
        for key in self.writes.keys() {
            self.recount(&key);
        }
        self.republish_all();
        loaded
    }

    /// A shared store lost the writes it had logged at positions after
    /// `after`, up to `up_to` (a failover to a replica that lagged): the
    /// REGISTERs among them still waiting are answered `E_UNAVAILABLE`, and
    /// the UNREGISTERs go to the store again; so are those whose position
    /// in that range the store reports later. Call it before the
    /// [`resync`](Self::resync) that follows.
    pub fn handle_lost_writes(&mut self, now: Timestamp, after: u64, up_to: u64) {
        self.advance(now);
        if self.lost_positions.len() >= LOST_RANGES {
            self.lost_positions.pop_front();
        }
        self.lost_positions.push_back((after, up_to));
        for (_, id) in self.writes.logged_between(after, up_to) {
            self.lose(id);
        }
    }

    fn position_lost(&self, position: u64) -> bool {
        self.lost_positions.iter().any(|(after, up_to)| (after + 1..=*up_to).contains(&position))
    }

    /// Our write waiting for the log entry at `position`, if that entry is
    /// for the same registration; one that finds another registration's
    /// entry at its position was lost (a failover gave the position again).
    fn take_logged(&mut self, position: u64, key: &Key) -> Option<ActionId> {
        let id = self.writes.take_logged(position)?;
        if self.writes.key_of(id) == Some(key) {
            return Some(id);
        }
        self.lose(id);
        None
    }

    /// Our write `id`, which the store put at `position`, which the log
    /// has passed: a put took effect if the registry holds the registration
    /// from there or later (else a failover lost it); a delete is settled.
    fn settle_passed(&mut self, id: ActionId, position: u64) {
        let Some((peer, namespace)) = self.writes.key_of(id).cloned() else { return };
        if !self.writes.is_put(&(peer, namespace.clone()), id) {
            return self.settle_delete(id);
        }
        match self.registry.get(&peer, &namespace) {
            Some(held) if held.seq >= position => self.answer_put_applied(id, position),
            _ => self.lose(id),
        }
    }

    /// A write the store lost: a REGISTER is refused `E_UNAVAILABLE`, an
    /// UNREGISTER goes to the store again.
    fn lose(&mut self, id: ActionId) {
        let Some(key) = self.writes.key_of(id).cloned() else { return };
        if self.writes.is_put(&key, id) {
            self.refuse_put(id, ResponseStatus::EUnavailable, LOST.to_owned());
        } else if let Some(key) = self.writes.unsubmit(id) {
            self.after_settling(&key);
        }
    }

    /// Writes (puts and deletes) waiting for the store.
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }

    /// Hands a checked registration to the store; it is answered once the
    /// store settles it.
    pub(super) fn hold(
        &mut self,
        request: RequestId,
        grant: Grant,
        expires: Timestamp,
        record: StoredRecord,
    ) {
        let id = self.next_action();
        self.proposed_seq = self.proposed_seq.max(self.registry.last_seq()) + 1;
        let key = (grant.peer, grant.namespace.clone());
        let ttl = grant.ttl;
        let registration = StoredRegistration {
            peer: grant.peer,
            namespace: grant.namespace.clone(),
            seq: self.proposed_seq,
            expires,
            record: record.clone(),
        };
        self.store.push_back(StoreAction::Put { id, registration, ttl });
        self.submitted.insert(id, self.now);
        let ticket = self.writes.ticket();
        self.writes.push_put(key.clone(), id, request, grant, expires, record, ticket);
        self.recount(&key);
    }

    /// Queues an UNREGISTER of `key` behind the writes before it; sends it
    /// to the store at once if none is pending.
    pub(super) fn hold_delete(&mut self, key: Key, request: RequestId) {
        let held = self.registry.get(&key.0, &key.1).map(|e| e.seq);
        let ticket = self.writes.ticket();
        if self.writes.push_delete(key.clone(), request, held, ticket) {
            self.after_settling(&key);
        }
    }

    /// A put is durable at `seq`: apply it (unless something newer is held)
    /// and answer OK. `expires`: the expiry the store decided, if it did.
    fn settle_put(&mut self, id: ActionId, seq: u64, expires: Option<Timestamp>) {
        let Some(key) = self.writes.key_of(id).cloned() else { return };
        let Some(Write::Put(put)) = self.writes.settle(id, Some(seq)) else { return };
        let held = self.registry.get(&key.0, &key.1).map(|e| e.seq);
        if held.is_none_or(|held| held < seq) {
            self.apply(put.grant.clone(), seq, expires.unwrap_or(put.expires), put.record);
        } else {
            self.registered_event(&put.grant);
        }
        if !put.answered {
            self.answer_ok(&put.grant, put.request);
        }
        self.after_settling(&key);
    }

    /// A put of ours came back through the log before its commit did: it is
    /// applied already.
    fn answer_put_applied(&mut self, id: ActionId, seq: u64) {
        let Some(key) = self.writes.key_of(id).cloned() else { return };
        let Some(Write::Put(put)) = self.writes.settle(id, Some(seq)) else { return };
        self.registered_event(&put.grant);
        if !put.answered {
            self.answer_ok(&put.grant, put.request);
        }
        self.after_settling(&key);
    }

    /// A delete is durable: remove what it covers and answer its
    /// UNREGISTERs.
    fn settle_delete(&mut self, id: ActionId) {
        let Some(key) = self.writes.key_of(id).cloned() else { return };
        let Some(Write::Delete(delete)) = self.writes.settle(id, None) else { return };
        self.finish_delete(&key, delete);
        self.after_settling(&key);
    }

    fn finish_delete(&mut self, (peer, namespace): &Key, delete: super::writes::Delete) {
        let covered = self.registry.get(peer, namespace).map(|e| e.seq);
        if covered.is_some_and(|seq| delete.upto.is_some_and(|upto| seq <= upto))
            && let Some(entry) = self.registry.remove(peer, namespace)
        {
            self.publish_removal(*peer, &entry);
            self.push_event(Event::Unregistered { peer: *peer, namespace: namespace.clone() });
        }
        for request in delete.requests {
            self.answer(*peer, request, Ok(MessageType::Unregister), None);
        }
    }

    /// After a write of `key` settled: hand the delete now at the head of
    /// its queue to the store (or settle it, if the writes before it left
    /// nothing to remove), recount the key, and serve the DISCOVERs of its
    /// peer that waited for it.
    fn after_settling(&mut self, key: &Key) {
        loop {
            let held = self.registry.get(&key.0, &key.1).map(|e| e.seq);
            let Some(delete) = self.writes.ready_delete(key) else { break };
            match delete.upto.filter(|upto| held.is_some_and(|held| held <= *upto)) {
                Some(upto) => {
                    let id = self.next_action();
                    let (peer, namespace) = key.clone();
                    self.store.push_back(StoreAction::Delete { id, peer, namespace, seq: upto });
                    self.submitted.insert(id, self.now);
                    self.writes.submitted_delete(key, id);
                    break;
                }
                None => {
                    // Settled puts may have left two deletes in a row.
                    if let Some(delete) = self.writes.settle_ready_delete(key) {
                        self.finish_delete(key, delete);
                    }
                }
            }
        }
        self.recount(key);
        self.serve_waiting(key.0);
    }

    /// Brings `key`'s count toward the limits up to date.
    pub(super) fn recount(&mut self, key: &Key) {
        let held = self.registry.get(&key.0, &key.1).is_some();
        self.writes.recount(key, held);
    }

    fn registered_event(&mut self, grant: &Grant) {
        let Grant { peer, namespace, ttl, dialect, new } = grant.clone();
        self.readers.registered(peer, dialect.into());
        self.push_event(match new {
            true => Event::Registered { peer, namespace, ttl, dialect },
            false => Event::Refreshed { peer, namespace, ttl, dialect },
        });
    }

    fn answer_ok(&mut self, grant: &Grant, request: RequestId) {
        let message = register_response(ResponseStatus::Ok, None, Some(grant.ttl.as_secs()));
        self.answer(grant.peer, request, Ok(MessageType::Register), Some(message));
    }

    /// A registration that expired, as the store must learn of it: a store
    /// of this point's own is told to delete it (unless a newer put
    /// replaced it); a shared store expires registrations by its own clock.
    pub(super) fn expired_in_store(&mut self, peer: PeerId, namespace: Namespace, seq: u64) {
        if self.config.durability == Durability::Local {
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
mod order_model;
#[cfg(test)]
mod tests;
