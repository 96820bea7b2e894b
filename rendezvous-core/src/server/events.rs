//! What the server reports: its events, and the counts it keeps.

use std::time::Duration;

use libp2p_identity::PeerId;

use super::RequestCounts;
use crate::namespace::Namespace;
use crate::proto::{MessageType, ResponseStatus};
use crate::record::Dialect;

/// Something that happened on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A peer registered in a namespace where it had no registration.
    Registered {
        /// Who.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
        /// The TTL granted.
        ttl: Duration,
        /// The dialect of its record.
        dialect: Dialect,
    },
    /// A peer replaced its registration in a namespace (a refresh).
    Refreshed {
        /// Who.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
        /// The TTL granted.
        ttl: Duration,
        /// The dialect of its record.
        dialect: Dialect,
    },
    /// A peer removed its registration.
    Unregistered {
        /// Who.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
    },
    /// A registration reached the end of its TTL and was removed.
    Expired {
        /// Whose.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
    },
    /// A request was answered with an error status.
    Refused {
        /// Who asked.
        peer: PeerId,
        /// What it asked.
        request: MessageType,
        /// The status sent.
        status: ResponseStatus,
        /// The `statusText` sent.
        reason: String,
    },
    /// A peer subscribed to a namespace.
    Subscribed {
        /// Who.
        peer: PeerId,
        /// Which namespace.
        namespace: Namespace,
        /// It came back from a position it had reached, and gets only what
        /// changed since.
        resumed: bool,
    },
    /// A subscription ended: its substream closed.
    Unsubscribed {
        /// Who.
        peer: PeerId,
        /// Which namespace.
        namespace: Namespace,
    },
    /// A subscriber that did not read was dropped.
    SubscriberDropped {
        /// Who.
        peer: PeerId,
        /// Which namespace.
        namespace: Namespace,
        /// Bytes handed out and not yet written to it.
        unread: usize,
    },
    /// A request of a type the server does not serve (a response type, the
    /// legacy DISCOVER_SUBSCRIBE, or an unknown number) was answered with
    /// `E_UNAVAILABLE`.
    Unsupported {
        /// Who asked.
        peer: PeerId,
        /// The `Message.type` it sent.
        message_type: i32,
    },
    /// A DISCOVER was answered.
    Discovered {
        /// Who asked.
        peer: PeerId,
        /// The namespace asked for; `None` for all.
        namespace: Option<Namespace>,
        /// How many registrations the page held.
        count: usize,
    },
}

/// Counts the server keeps, all O(1) to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live registrations.
    pub registrations: usize,
    /// Namespaces with at least one registration.
    pub namespaces: usize,
    /// Peers with at least one registration.
    pub peers: usize,
    /// Events dropped because the event queue was full.
    pub dropped_events: u64,
    /// Records parsed and, for envelopes, signature-checked; a re-registration
    /// of the same bytes does not count.
    pub records_verified: u64,
    /// Peers whose reader dialect is remembered.
    pub remembered_readers: usize,
    /// Remembered readers forgotten to make room for newer ones.
    pub readers_evicted: u64,
    /// Requests answered `E_UNAVAILABLE` because the adapter was over a
    /// bound ([`Server::handle_frame_busy`](crate::Server::handle_frame_busy)) or the peer
    /// over its rate.
    pub busy_refusals: u64,
    /// Writes (puts and deletes) waiting for the store.
    pub pending_writes: usize,
    /// DISCOVERs waiting for writes their peer made before them, or for
    /// its reader.
    pub waiting_discovers: usize,
    /// Peers whose reader the server asked the adapter for
    /// ([`Server::poll_reader_wanted`](crate::Server::poll_reader_wanted)), so far.
    pub readers_asked: u64,
    /// Peers whose reader is being asked for now.
    pub reader_waits: usize,
    /// Waits for a reader that ran out before an answer, so far.
    pub reader_waits_expired: u64,
    /// Requests answered, by type and status.
    pub requests: RequestCounts,
    /// Subscriptions open.
    pub subscriptions: usize,
    /// Arrivals and departures pushed to subscribers, so far.
    pub subscription_events: u64,
    /// Subscribers dropped for not reading, so far.
    pub subscribers_dropped: u64,
}
