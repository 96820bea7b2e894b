//! Every deadline the client keeps, in one ordered index: the next one is
//! the first key, and a tick costs in proportion to what is due.

use std::collections::BTreeSet;

use libp2p_identity::PeerId;

use crate::namespace::Namespace;
use crate::request::RequestId;
use crate::time::Timestamp;

/// What is due.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A request's answer is overdue.
    Deadline(RequestId),
    /// A registration's refresh or retry.
    Register(PeerId, Namespace),
    /// A watched namespace's rediscovery.
    Watch(PeerId, Namespace),
}

/// Timers ordered by deadline. Whoever sets a timer keeps its deadline, to
/// cancel it in O(log n).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    due: BTreeSet<(Timestamp, Timer)>,
}

impl Timers {
    pub(crate) fn set(&mut self, at: Timestamp, timer: Timer) {
        self.due.insert((at, timer));
    }

    pub(crate) fn cancel(&mut self, at: Timestamp, timer: Timer) {
        self.due.remove(&(at, timer));
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The earliest timer due at `now`, removed.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<Timer> {
        if self.next()? > now {
            return None;
        }
        self.due.pop_first().map(|(_, timer)| timer)
    }
}
