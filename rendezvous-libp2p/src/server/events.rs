//! What the server behaviour reports: the core's events, and substreams
//! rejected before a request was served on them.

use std::io;

use libp2p_identity::PeerId;
use rendezvous_core::ServerEvent;

/// What the server behaviour reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Something happened in the registry (registered, refreshed, expired,
    /// refused, discovered, ...).
    Core(ServerEvent),
    /// A substream was closed or reset without a request served on it;
    /// nothing else was affected.
    StreamRejected {
        /// Whose.
        peer: PeerId,
        /// Why.
        reason: Rejection,
    },
    /// The point needs to know what `peer` reads, to serve it: ask it
    /// (identify), then call [`Behaviour::set_agent_version`](super::Behaviour::set_agent_version),
    /// or [`Behaviour::reader_unknown`](super::Behaviour::reader_unknown) if
    /// the peer gave no answer. Only with
    /// [`ServerConfig::reader_wait`](rendezvous_core::ServerConfig::reader_wait)
    /// set; its DISCOVERs and subscriptions wait meanwhile.
    ReaderWanted {
        /// The peer.
        peer: PeerId,
    },
}

/// Why a substream was rejected.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// It sent bytes that are not a rendezvous request.
    Malformed(io::Error),
    /// Reading or writing failed.
    Io(io::Error),
    /// It did not deliver a complete request within
    /// [`Substreams::request_timeout`](super::Substreams::request_timeout).
    TimedOut,
    /// It arrived while the connection was over both substream limits.
    OverLimit,
    /// It ended without sending a request.
    Empty,
    /// It arrived while the point was shutting down
    /// ([`Behaviour::shut_down`](super::Behaviour::shut_down)).
    ShuttingDown,
}

impl Rejection {
    /// Every reason's name, in the order of [`StreamStats::by_reason`].
    pub const NAMES: [&'static str; 6] =
        ["malformed", "io", "timeout", "over_limit", "empty", "shutting_down"];

    fn index(&self) -> usize {
        match self {
            Rejection::Malformed(_) => 0,
            Rejection::Io(_) => 1,
            Rejection::TimedOut => 2,
            Rejection::OverLimit => 3,
            Rejection::Empty => 4,
            Rejection::ShuttingDown => 5,
        }
    }

    /// A short name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// Substreams rejected since the start, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats([u64; Rejection::NAMES.len()]);

impl StreamStats {
    pub(crate) fn count(&mut self, rejection: &Rejection) {
        self.0[rejection.index()] += 1;
    }

    /// Every reason with its count, named as [`Rejection::name`] names it.
    pub fn by_reason(&self) -> [(&'static str, u64); Rejection::NAMES.len()] {
        std::array::from_fn(|i| (Rejection::NAMES[i], self.0[i]))
    }

    /// Rejected for the point's own reasons or a peer's fault (everything
    /// but a substream ended empty or refused during a shutdown), for a
    /// line of trouble in the logs.
    pub fn troubles(&self) -> u64 {
        self.0[..4].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rejection_is_counted_under_its_own_name() {
        let mut stats = StreamStats::default();
        let all = [
            Rejection::Malformed(io::Error::other("x")),
            Rejection::Io(io::Error::other("x")),
            Rejection::TimedOut,
            Rejection::OverLimit,
            Rejection::Empty,
            Rejection::ShuttingDown,
        ];
        for (i, rejection) in all.iter().enumerate() {
            for _ in 0..=i {
                stats.count(rejection);
            }
        }
        let counted: Vec<_> = stats.by_reason().into_iter().collect();
        let expected: Vec<_> =
            all.iter().enumerate().map(|(i, r)| (r.name(), i as u64 + 1)).collect();
        assert_eq!(counted, expected);
        assert_eq!(stats.troubles(), 1 + 2 + 3 + 4);
    }
}
