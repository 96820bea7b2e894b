//! Where a durable server's registrations go: one small trait in the
//! core's vocabulary ([`StoreAction`] in, [`Commit`] out), so that the
//! server behaviour drives any engine the same way. The engines live in
//! `rendezvous-async-std` (an embedded one, and Redis), each behind a cargo
//! feature.
//!
//! An engine takes actions in order, never blocks the caller, and reports
//! the fate of every action: a put stored or refused, a delete removed (it
//! retries a delete until it commits, and never lets an action submitted
//! after a delete commit before it). It may commit many actions together
//! (group commit): durability then costs latency, not throughput. The core
//! bounds how many writes wait for it
//! ([`ServerConfig::max_pending_writes`](rendezvous_core::ServerConfig::max_pending_writes)).

use std::task::{Context, Poll};

pub use rendezvous_core::store::{
    ActionId, Commit, Replicated, StoreAction, StoredRegistration, store_key,
};

/// A store engine, as the server behaviour sees it.
pub trait Store: Send + 'static {
    /// Takes the next action. Must not block: queue it for the engine's own
    /// thread or task.
    fn submit(&mut self, action: StoreAction);

    /// The fate of the next action the engine has finished with, when there
    /// is one; registers `cx` to be woken otherwise.
    fn poll_commit(&mut self, cx: &mut Context<'_>) -> Poll<Commit>;

    /// Whether other points share the store: then it orders every write in
    /// one log, expires registrations by its own clock, and reports
    /// [`Change`]s.
    fn is_shared(&self) -> bool {
        false
    }

    /// Why the store cannot take writes now (unreachable, disk full, being
    /// reopened), in one line; `None` when it can.
    fn trouble(&self) -> Option<String> {
        None
    }

    /// This machine's wall clock minus the shared store's, in seconds, once
    /// known (a shared store only).
    fn clock_offset(&self) -> Option<f64> {
        None
    }

    /// The next change another writer made, for a store shared by several
    /// points (in the store's order). A store of one point never has any.
    fn poll_change(&mut self, _cx: &mut Context<'_>) -> Poll<Change> {
        Poll::Pending
    }
}

/// What a shared store reports beside commits.
#[derive(Debug)]
#[non_exhaustive]
pub enum Change {
    /// One change, in the store's order.
    Replicated(Replicated),
    /// The point fell too far behind: everything the store holds, to hold
    /// instead of what the point has.
    Resync(Snapshot),
    /// The store lost the writes it had logged at positions after `after`,
    /// up to `up_to` (a failover to a replica that lagged); a
    /// [`Change::Resync`] follows.
    Lost {
        /// The last position the store still holds.
        after: u64,
        /// The highest position it had given.
        up_to: u64,
    },
}

/// What a store holds when the server starts.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every registration stored (expired ones included: the server drops
    /// those and deletes them).
    pub registrations: Vec<StoredRegistration>,
    /// The highest position the store ever gave, so that positions (and
    /// cookies) keep increasing across a restart.
    pub last_seq: u64,
}
