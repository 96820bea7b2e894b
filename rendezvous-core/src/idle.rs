//! The idle-connection policy: a connection that has carried no request
//! for a while is closed, on the caller's clock.
//!
//! A connection is busy while a request it carried is unanswered; once
//! quiet, its idle time runs from its last request or answer. Connections
//! fall idle in the order they fell quiet (ties by key), so which one closes
//! first never depends on hashing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::time::Timestamp;

#[derive(Clone, Copy, Debug)]
struct Connection {
    /// Its last request or answer.
    active: Timestamp,
    in_flight: usize,
}

/// Connections by key (the adapter's connection id), and when each falls
/// idle. Drive it with [`opened`](Self::opened),
/// [`request`](Self::request), [`answered`](Self::answered) and
/// [`closed`](Self::closed); close what [`poll_close`](Self::poll_close)
/// returns, and wake up at [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct Idle<K> {
    timeout: Option<Duration>,
    connections: BTreeMap<K, Connection>,
    /// Connections with nothing in flight, by when they were last active.
    quiet: BTreeSet<(Timestamp, K)>,
}

impl<K: Ord + Copy> Idle<K> {
    /// Connections quiet for `timeout` fall idle; `None` (or zero): never.
    pub fn new(timeout: Option<Duration>) -> Self {
        let timeout = timeout.filter(|t| !t.is_zero());
        Idle { timeout, connections: BTreeMap::new(), quiet: BTreeSet::new() }
    }

    /// The timeout in force, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// A connection opened at `now`.
    pub fn opened(&mut self, now: Timestamp, key: K) {
        if let Some(old) = self.connections.insert(key, Connection { active: now, in_flight: 0 }) {
            self.quiet.remove(&(old.active, key));
        }
        self.quiet.insert((now, key));
    }

    /// The connection closed.
    pub fn closed(&mut self, key: K) {
        if let Some(c) = self.connections.remove(&key) {
            self.quiet.remove(&(c.active, key));
        }
    }

    /// It carried a request at `now`: busy until the request is answered.
    pub fn request(&mut self, now: Timestamp, key: K) {
        let Some(c) = self.connections.get_mut(&key) else { return };
        self.quiet.remove(&(c.active, key));
        c.active = c.active.max(now);
        c.in_flight += 1;
    }

    /// One of its requests was answered (or dropped) at `now`.
    pub fn answered(&mut self, now: Timestamp, key: K) {
        let Some(c) = self.connections.get_mut(&key) else { return };
        self.quiet.remove(&(c.active, key));
        c.active = c.active.max(now);
        c.in_flight = c.in_flight.saturating_sub(1);
        if c.in_flight == 0 {
            self.quiet.insert((c.active, key));
        }
    }

    /// When the next connection falls idle.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let timeout = self.timeout?;
        self.quiet.first().map(|(active, _)| *active + timeout)
    }

    /// The next connection idle at `now`, to close. It is forgotten here;
    /// calling [`closed`](Self::closed) for it afterwards is harmless.
    pub fn poll_close(&mut self, now: Timestamp) -> Option<K> {
        let timeout = self.timeout?;
        let &(active, key) = self.quiet.first()?;
        if active + timeout > now {
            return None;
        }
        self.quiet.pop_first();
        self.connections.remove(&key);
        Some(key)
    }

    /// Connections tracked.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    fn closing(idle: &mut Idle<u32>, now: Timestamp) -> Vec<u32> {
        std::iter::from_fn(|| idle.poll_close(now)).collect()
    }

    #[test]
    fn a_quiet_connection_closes_after_the_timeout_and_a_busy_one_never() {
        let mut idle = Idle::new(Some(Duration::from_secs(60)));
        idle.opened(at(0), 1);
        idle.opened(at(0), 2);
        idle.request(at(10), 2);
        assert_eq!(idle.poll_timeout(), Some(at(60)));
        assert_eq!(closing(&mut idle, at(59)), Vec::<u32>::new());
        assert_eq!(closing(&mut idle, at(60)), vec![1]);
        // Connection 2's request is unanswered for a simulated day.
        assert_eq!(idle.poll_timeout(), None);
        assert_eq!(closing(&mut idle, at(86_400)), Vec::<u32>::new());
        idle.answered(at(86_400), 2);
        assert_eq!(idle.poll_timeout(), Some(at(86_460)));
        assert_eq!(closing(&mut idle, at(86_460)), vec![2]);
        assert!(idle.is_empty());
    }

    #[test]
    fn connections_fall_idle_in_the_order_they_fell_quiet() {
        let mut idle = Idle::new(Some(Duration::from_secs(5)));
        for key in [3, 1, 2] {
            idle.opened(at(0), key);
        }
        idle.request(at(1), 3);
        idle.answered(at(2), 3);
        assert_eq!(closing(&mut idle, at(100)), vec![1, 2, 3]);
    }

    #[test]
    fn every_request_or_answer_restarts_the_clock_and_no_timeout_means_never() {
        let mut idle = Idle::new(Some(Duration::from_secs(5)));
        idle.opened(at(0), 7);
        for t in 1..1000 {
            idle.request(at(4 * t), 7);
            idle.answered(at(4 * t), 7);
            assert_eq!(closing(&mut idle, at(4 * t + 4)), Vec::<u32>::new());
        }
        idle.closed(7);
        assert_eq!(idle.poll_timeout(), None);
        let mut never = Idle::new(Some(Duration::ZERO));
        never.opened(at(0), 1);
        assert_eq!((never.poll_timeout(), never.poll_close(at(1 << 30))), (None, None));
    }
}
