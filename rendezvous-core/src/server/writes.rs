//! Writes on their way to the store, per registration, in the order the
//! point read them, and what they count toward the limits meanwhile.
//!
//! Requests for one (peer, namespace) take effect in the order the point
//! read them, whatever substream or connection carried them:
//! - a put goes to the store at once, so that puts share the store's
//!   batches;
//! - a delete goes once every write read before it on the same
//!   registration is settled, and removes at most what those writes left
//!   (its `upto` position): a put read after it never loses to it, even if
//!   the store settles that put first;
//! - each write changes the registry only once the store has it, so a
//!   point killed at any moment comes back with what it had answered.
//!
//! Meanwhile a registration counts toward the limits while it is held or
//! any put of it is pending. Whatever order the store settles them in, no
//! peer holds more than its limit at any instant, and the registry never
//! more than its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use libp2p_identity::PeerId;
use smallvec::SmallVec;

use super::durable::Grant;
use crate::namespace::Namespace;
use crate::origin::Origin;
use crate::registry::StoredRecord;
use crate::request::RequestId;
use crate::store::ActionId;
use crate::time::Timestamp;

/// A registration's key.
pub(crate) type Key = (PeerId, Namespace);

/// Orders a peer's writes against its DISCOVERs: a DISCOVER sees every
/// write its peer made before it.
pub(crate) type Ticket = u64;

/// A REGISTER handed to the store, answered when the store settles it.
#[derive(Debug)]
pub(crate) struct Put {
    pub(crate) action: ActionId,
    pub(crate) request: RequestId,
    pub(crate) grant: Grant,
    pub(crate) expires: Timestamp,
    pub(crate) record: StoredRecord,
    ticket: Ticket,
    /// The REGISTER was answered before the put settled: a shared log took
    /// it, and this point did not read it back in time. It takes effect
    /// all the same if the log holds it, without a second answer.
    pub(crate) answered: bool,
}

/// An UNREGISTER (or several in a row), waiting for the writes before it.
#[derive(Debug)]
pub(crate) struct Delete {
    /// Given once the delete is handed to the store.
    pub(crate) action: Option<ActionId>,
    /// Remove the registration only if its position is at most this: what
    /// the writes read before the delete left. `None`: they left nothing.
    pub(crate) upto: Option<u64>,
    /// The UNREGISTERs it answers (with nothing) once settled.
    pub(crate) requests: SmallVec<[RequestId; 1]>,
    ticket: Ticket,
}

/// One pending write.
#[derive(Debug)]
pub(crate) enum Write {
    Put(Put),
    Delete(Delete),
}

impl Write {
    fn action(&self) -> Option<ActionId> {
        match self {
            Write::Put(put) => Some(put.action),
            Write::Delete(delete) => delete.action,
        }
    }

    fn ticket(&self) -> Ticket {
        match self {
            Write::Put(put) => put.ticket,
            Write::Delete(delete) => delete.ticket,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    writes: VecDeque<Write>,
    /// Counted toward the limits as a registration not held (with the
    /// origin counted), while it is not held and holds a put.
    counted: Option<Option<Origin>>,
    /// The last write read was a delete, still queued: an UNREGISTER read
    /// now joins it.
    joinable: bool,
}

impl Queue {
    fn latest_put(&self) -> Option<&Put> {
        self.writes.iter().rev().find_map(|w| match w {
            Write::Put(put) => Some(put),
            Write::Delete(_) => None,
        })
    }
}

/// Registrations counted toward the limits that the registry does not hold
/// yet.
#[derive(Debug, Default)]
struct Uncommitted {
    per_peer: HashMap<PeerId, usize>,
    per_namespace: HashMap<Namespace, usize>,
    per_origin: HashMap<Origin, usize>,
    total: usize,
}

impl Uncommitted {
    fn add(&mut self, (peer, namespace): &Key, origin: Option<Origin>) {
        *self.per_peer.entry(*peer).or_default() += 1;
        *self.per_namespace.entry(namespace.clone()).or_default() += 1;
        if let Some(origin) = origin {
            *self.per_origin.entry(origin).or_default() += 1;
        }
        self.total += 1;
    }

    fn remove(&mut self, (peer, namespace): &Key, origin: Option<Origin>) {
        decrement(&mut self.per_peer, peer);
        decrement(&mut self.per_namespace, namespace);
        if let Some(origin) = origin {
            decrement(&mut self.per_origin, &origin);
        }
        self.total -= 1;
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

/// Every pending write, by registration.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    queues: BTreeMap<Key, Queue>,
    /// Writes handed to the store, by action.
    submitted: HashMap<ActionId, Key>,
    /// Writes in a shared log, waiting to come back at their position,
    /// with when a put's REGISTER stops waiting for that.
    logged: BTreeMap<u64, (ActionId, Option<Timestamp>)>,
    /// The same deadlines, in time order.
    log_deadlines: BTreeSet<(Timestamp, u64)>,
    uncommitted: Uncommitted,
    /// Each peer's pending tickets.
    tickets: HashMap<PeerId, BTreeSet<Ticket>>,
    next_ticket: Ticket,
    len: usize,
}

impl Writes {
    /// Pending writes, puts and deletes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn new_for_peer(&self, peer: &PeerId) -> usize {
        self.uncommitted.per_peer.get(peer).copied().unwrap_or(0)
    }

    pub(crate) fn new_in_namespace(&self, namespace: &Namespace) -> usize {
        self.uncommitted.per_namespace.get(namespace).copied().unwrap_or(0)
    }

    pub(crate) fn new_with_origin(&self, origin: &Origin) -> usize {
        self.uncommitted.per_origin.get(origin).copied().unwrap_or(0)
    }

    pub(crate) fn new_in_all(&self) -> usize {
        self.uncommitted.total
    }

    /// Whether a put of `key` is pending.
    pub(crate) fn has_put(&self, key: &Key) -> bool {
        self.queues.get(key).is_some_and(|q| q.latest_put().is_some())
    }

    /// What `key` holds once its pending writes are settled, if they are
    /// all stored: `None` when nothing is pending, `Some(None)` when the
    /// last is a delete, `Some(record)` when it is a put.
    pub(crate) fn outcome(&self, key: &Key) -> Option<Option<&StoredRecord>> {
        let last = self.queues.get(key)?.writes.back()?;
        Some(match last {
            Write::Put(put) => Some(&put.record),
            Write::Delete(_) => None,
        })
    }

    /// The next ticket: writes and DISCOVERs of a peer are ordered by them.
    pub(crate) fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// `peer`'s DISCOVERs no longer wait for the write of `ticket`.
    fn release(&mut self, peer: &PeerId, ticket: Ticket) {
        if let Some(tickets) = self.tickets.get_mut(peer) {
            tickets.remove(&ticket);
            if tickets.is_empty() {
                self.tickets.remove(peer);
            }
        }
    }

    /// Whether every write `peer` made before `ticket` is settled.
    pub(crate) fn settled_before(&self, peer: &PeerId, ticket: Ticket) -> bool {
        self.tickets.get(peer).and_then(|t| t.first()).is_none_or(|first| *first > ticket)
    }

    /// Queues a put already handed to the store.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_put(
        &mut self,
        key: Key,
        action: ActionId,
        request: RequestId,
        grant: Grant,
        expires: Timestamp,
        record: StoredRecord,
        ticket: Ticket,
    ) {
        self.tickets.entry(key.0).or_default().insert(ticket);
        self.submitted.insert(action, key.clone());
        let put = Put { action, request, grant, expires, record, ticket, answered: false };
        let queue = self.queues.entry(key).or_default();
        queue.writes.push_back(Write::Put(put));
        queue.joinable = false;
        self.len += 1;
    }

    /// Queues an UNREGISTER of `key` behind its pending writes, removing at
    /// most `held` (the position the registry holds now). One read right
    /// after another (no put between them) joins it. Returns whether the
    /// queue was empty: then the delete is ready to go at once.
    pub(crate) fn push_delete(
        &mut self,
        key: Key,
        request: RequestId,
        held: Option<u64>,
        ticket: Ticket,
    ) -> bool {
        let queue = self.queues.entry(key.clone()).or_default();
        if queue.joinable
            && let Some(Write::Delete(last)) = queue.writes.back_mut()
        {
            last.requests.push(request);
            return false;
        }
        queue.joinable = true;
        let first = queue.writes.is_empty();
        let delete =
            Delete { action: None, upto: held, requests: SmallVec::from_elem(request, 1), ticket };
        queue.writes.push_back(Write::Delete(delete));
        self.tickets.entry(key.0).or_default().insert(ticket);
        self.len += 1;
        first
    }

    /// The delete at the head of `key`'s queue, if it is not handed to the
    /// store yet: every write before it is settled, so it may go now.
    pub(crate) fn ready_delete(&mut self, key: &Key) -> Option<&mut Delete> {
        match self.queues.get_mut(key)?.writes.front_mut()? {
            Write::Delete(delete) if delete.action.is_none() => Some(delete),
            _ => None,
        }
    }

    /// Records that the ready delete of `key` went to the store as `action`.
    pub(crate) fn submitted_delete(&mut self, key: &Key, action: ActionId) {
        if let Some(delete) = self.ready_delete(key) {
            delete.action = Some(action);
            self.submitted.insert(action, key.clone());
        }
    }

    /// Whether the pending write `action` of `key` is a put.
    pub(crate) fn is_put(&self, key: &Key, action: ActionId) -> bool {
        self.queues.get(key).is_some_and(|q| {
            q.writes.iter().any(|w| matches!(w, Write::Put(put) if put.action == action))
        })
    }

    /// The key of a write handed to the store.
    pub(crate) fn key_of(&self, action: ActionId) -> Option<&Key> {
        self.submitted.get(&action)
    }

    /// Removes the write `action` from its queue. A put stored at `seq`
    /// raises the `upto` of every delete read after it, since they must
    /// remove what it stored.
    pub(crate) fn settle(&mut self, action: ActionId, stored_at: Option<u64>) -> Option<Write> {
        let key = self.submitted.remove(&action)?;
        let queue = self.queues.get_mut(&key)?;
        let at = queue.writes.iter().position(|w| w.action() == Some(action))?;
        let write = queue.writes.remove(at)?;
        if let Some(seq) = stored_at {
            for later in queue.writes.iter_mut().skip(at) {
                if let Write::Delete(delete) = later {
                    delete.upto = Some(delete.upto.map_or(seq, |upto| upto.max(seq)));
                }
            }
        }
        self.len -= 1;
        self.release(&key.0, write.ticket());
        Some(write)
    }

    /// Settles the ready delete of `key` without the store: the writes
    /// before it left nothing to remove.
    pub(crate) fn settle_ready_delete(&mut self, key: &Key) -> Option<Delete> {
        let queue = self.queues.get_mut(key)?;
        let Some(Write::Delete(_)) = queue.writes.front() else {
            return None;
        };
        let Some(Write::Delete(delete)) = queue.writes.pop_front() else {
            return None;
        };
        self.len -= 1;
        self.release(&key.0, delete.ticket);
        Some(delete)
    }

    /// Brings `key`'s count toward the limits up to date, given whether the
    /// registry holds it; forgets its queue once empty.
    pub(crate) fn recount(&mut self, key: &Key, held: bool) {
        let Some(queue) = self.queues.get_mut(key) else {
            return;
        };
        let wanted = match queue.latest_put() {
            Some(put) if !held => Some(put.record.origin()),
            _ => None,
        };
        if queue.counted != wanted {
            if let Some(origin) = queue.counted {
                self.uncommitted.remove(key, origin);
            }
            if let Some(origin) = wanted {
                self.uncommitted.add(key, origin);
            }
            queue.counted = wanted;
        }
        if queue.writes.is_empty() {
            self.queues.remove(key);
        }
    }

    /// Remembers that `action` is in a shared log at `seq`; a put's
    /// REGISTER stops waiting for it at `until`.
    pub(crate) fn await_log(&mut self, seq: u64, action: ActionId, until: Timestamp) {
        let put = self.submitted.get(&action).is_some_and(|key| self.is_put(key, action));
        let until = put.then_some(until);
        if let Some((_, Some(replaced))) = self.logged.insert(seq, (action, until)) {
            self.log_deadlines.remove(&(replaced, seq));
        }
        if let Some(until) = until {
            self.log_deadlines.insert((until, seq));
        }
    }

    /// Forgets the deadline of what waited for the log at `seq`.
    fn logged_back(
        &mut self,
        seq: u64,
        (action, until): (ActionId, Option<Timestamp>),
    ) -> ActionId {
        if let Some(until) = until {
            self.log_deadlines.remove(&(until, seq));
        }
        action
    }

    /// When the first REGISTER waiting for the log stops waiting.
    pub(crate) fn log_deadline(&self) -> Option<Timestamp> {
        self.log_deadlines.first().map(|(until, _)| *until)
    }

    /// The puts still waiting for the log whose REGISTERs stop waiting by
    /// `now`, marked answered, each with its peer and request. Their
    /// tickets are released: the peer's DISCOVERs no longer wait for
    /// them, as the peer was told the write may not have happened.
    pub(crate) fn stop_waiting_for_log(&mut self, now: Timestamp) -> Vec<(PeerId, RequestId)> {
        let mut overdue = Vec::new();
        while let Some(&(until, seq)) = self.log_deadlines.first() {
            if until > now {
                break;
            }
            self.log_deadlines.pop_first();
            let Some(&(action, _)) = self.logged.get(&seq) else { continue };
            let Some(key) = self.submitted.get(&action) else { continue };
            let Some(queue) = self.queues.get_mut(key) else { continue };
            let put = queue.writes.iter_mut().find_map(|w| match w {
                Write::Put(put) if put.action == action && !put.answered => Some(put),
                _ => None,
            });
            if let Some(put) = put {
                put.answered = true;
                overdue.push((key.0, put.request));
                let (peer, ticket) = (key.0, put.ticket);
                self.release(&peer, ticket);
            }
        }
        overdue
    }

    /// The write waiting for the log entry at `seq`, if one of ours.
    pub(crate) fn take_logged(&mut self, seq: u64) -> Option<ActionId> {
        let waiting = self.logged.remove(&seq)?;
        Some(self.logged_back(seq, waiting))
    }

    /// Every write waiting for the log at or before `seq` (a reload put the
    /// point past them), in log order.
    pub(crate) fn logged_up_to(&mut self, seq: u64) -> Vec<(u64, ActionId)> {
        let later = self.logged.split_off(&seq.saturating_add(1));
        let passed = std::mem::replace(&mut self.logged, later);
        passed.into_iter().map(|(seq, waiting)| (seq, self.logged_back(seq, waiting))).collect()
    }

    /// The writes waiting for the log in `after < position <= up_to`, in
    /// log order, taken.
    pub(crate) fn logged_between(&mut self, after: u64, up_to: u64) -> Vec<(u64, ActionId)> {
        let positions: Vec<u64> =
            self.logged.range(after.saturating_add(1)..=up_to).map(|(seq, _)| *seq).collect();
        positions.into_iter().filter_map(|seq| Some((seq, self.take_logged(seq)?))).collect()
    }

    /// Takes the delete `action` back, as if never handed to the store: it
    /// goes again once it is at the head of its queue. Returns its key.
    pub(crate) fn unsubmit(&mut self, action: ActionId) -> Option<Key> {
        let key = self.submitted.remove(&action)?;
        for write in self.queues.get_mut(&key)?.writes.iter_mut() {
            if let Write::Delete(delete) = write
                && delete.action == Some(action)
            {
                delete.action = None;
            }
        }
        Some(key)
    }

    /// Every registration with pending writes, in key order.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.queues.keys().cloned().collect()
    }
}
