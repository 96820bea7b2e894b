//! The rendezvous point: answers REGISTER, UNREGISTER and DISCOVER.

mod discover;
mod durable;
mod events;
mod reader_waits;
mod readers;
mod register;
mod requests;
mod subscriptions;
mod writes;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use crate::codec::{self, CodecError};
use crate::histogram::{self, Histogram};
use crate::limits::{ConfigError, DiscoverStart, Limits, ServerConfig};
use crate::namespace::{Namespace, NamespaceError};
use crate::origin::Origin;
use crate::proto::{self, MessageType, ResponseStatus};
use crate::rate::Buckets;
use crate::record::Reader;
use crate::registry::Registry;
use crate::request::RequestId;
use crate::rng::Rng;
use crate::store::{ActionId, StoreAction};
use crate::time::Timestamp;
use discover::Waiting;
pub use durable::{Durability, Loaded};
pub use events::{Event, Stats};
use reader_waits::ReaderWaits;
use readers::Readers;
pub use requests::{RequestCounts, RequestKind};
use subscriptions::Subscriptions;
pub use subscriptions::{Push, SUBSCRIPTION_TYPE, SubscriptionId, SubscriptionLimits};
use writes::Writes;

/// A rendezvous point, as a state machine that does no I/O and reads no clock.
///
/// # Driving it
/// Inputs, each taking the current time where it matters:
/// - [`handle_frame`](Self::handle_frame) (or [`handle_request`](Self::handle_request)
///   with a decoded message) for every request read from a substream, tagged
///   with a [`RequestId`] the adapter chose to find the substream again;
/// - [`handle_commit`](Self::handle_commit) when a store reports a put's fate,
///   and [`load`](Self::load) at start;
/// - [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) is reached;
/// - [`set_reader_dialect`](Self::set_reader_dialect),
///   [`reader_unknown`](Self::reader_unknown) and
///   [`handle_disconnected`](Self::handle_disconnected) as the adapter learns
///   about peers.
///
/// After every input, drain the outputs in this order:
/// 1. [`poll_store`](Self::poll_store) until `None` (durable servers only):
///    actions to hand to the store, in order; report each put's fate with
///    [`handle_commit`](Self::handle_commit). See [`store`](crate::store).
/// 2. [`poll_transmit`](Self::poll_transmit) until `None`: one per request,
///    each for the substream of its request id: a response to write, or
///    (UNREGISTER, which has no response) nothing to write. Either way the
///    request is done and that substream may carry the next one. Answers
///    may come out of the order their requests were read in (a durable
///    server answers a write once the store settles it, and a DISCOVER once
///    every write its peer made before it is settled, and once its peer's
///    reader is known), so an adapter reading several requests from one
///    substream writes their answers in the order of the requests.
/// 3. [`poll_reader_wanted`](Self::poll_reader_wanted) until `None` (with
///    [`ServerConfig::reader_wait`] set): peers to ask what they read.
/// 4. [`poll_event`](Self::poll_event) until `None`: what happened, for logs
///    and metrics.
/// 5. [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout` next
///    (the earliest expiry). Reset the one timer to it.
///
/// Expired registrations are never served even if `handle_timeout` is late:
/// every input first expires what is due at its `now`. Time that runs
/// backwards is treated as standing still.
///
/// # Order
/// Requests for one registration (peer, namespace) take effect in the
/// order they were handed in, on any substream or connection: with a store,
/// an UNREGISTER read behind a REGISTER still waiting for its commit waits
/// too, and a DISCOVER is served once every write its peer made before it
/// is settled. The limits count writes on their way, so no peer ever holds
/// more than its limit, even for a moment.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    registry: Registry,
    /// Draws where a DISCOVER without a cookie starts.
    rng: Rng,
    /// What each peer reads, as the adapter said and its REGISTERs showed.
    readers: Readers,
    /// Peers whose reader is being asked, and what waits for it.
    reader_waits: ReaderWaits,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Actions for the store (durable only), and the last action id given.
    store: VecDeque<StoreAction>,
    next_action: u64,
    /// Writes waiting for the store, and the last position proposed.
    writes: Writes,
    proposed_seq: u64,
    /// When each action went to the store, to time its commit.
    submitted: HashMap<ActionId, Timestamp>,
    commit_durations: Histogram,
    /// The last position applied from a shared log, and the latest ranges
    /// of positions it lost (a failover).
    log_position: u64,
    lost_positions: VecDeque<(u64, u64)>,
    /// DISCOVERs waiting for the writes their peer made before them, and
    /// when each stops waiting.
    waiting: HashMap<PeerId, VecDeque<Waiting>>,
    waiting_until: BTreeMap<(Timestamp, u64), PeerId>,
    waiting_len: usize,
    /// Each peer's tokens, when requests are rate-limited.
    rate: Option<Buckets>,
    rate_reason: String,
    now: Timestamp,
    dropped_events: u64,
    records_verified: u64,
    busy_refusals: u64,
    requests: RequestCounts,
    /// Who follows which namespace, and the feed they follow.
    subscriptions: Subscriptions,
}

/// The outcome of one request: a response to write, or nothing to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// Who asked.
    pub peer: PeerId,
    /// The id the adapter gave the request.
    pub request_id: RequestId,
    /// The response; `None` for a request that has none (UNREGISTER).
    pub message: Option<proto::Message>,
}

impl Transmit {
    /// The response as a length-prefixed frame, if there is one.
    pub fn to_frame(&self) -> Option<Bytes> {
        self.message.as_ref().map(codec::frame)
    }
}

/// What became of a request that passed its checks.
enum Admitted<T> {
    /// Done; answer with this.
    Now(T),
    /// Waiting (for the store, or for writes before it); answered later.
    Held,
}

/// A refusal: the status to answer with and the text saying why.
struct Refusal(ResponseStatus, String);

impl Refusal {
    fn new(status: ResponseStatus, reason: impl ToString) -> Self {
        Refusal(status, reason.to_string())
    }
}

fn namespace_refusal(err: NamespaceError) -> Refusal {
    Refusal::new(ResponseStatus::EInvalidNamespace, err)
}

impl Server {
    /// A server with `config`, or why its limits or policies cannot work.
    pub fn new(config: ServerConfig) -> Result<Server, ConfigError> {
        config.validate()?;
        let rate_reason = config.rate_limit.map_or_else(String::new, |rate| {
            format!(
                "over {} requests/s from this peer, the server's limit; retry later",
                rate.rate()
            )
        });
        Ok(Server {
            rate: config.rate_limit.map(Buckets::new),
            subscriptions: Subscriptions::new(
                config.subscriptions,
                Rng::new(config.initial_sequence ^ discover_seed(config.discover_start)).next_u64(),
            ),
            rate_reason,
            registry: Registry::starting_at(config.initial_sequence),
            rng: Rng::new(discover_seed(config.discover_start)),
            readers: Readers::new(config.max_remembered_readers),
            reader_waits: ReaderWaits::default(),
            config,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            store: VecDeque::new(),
            next_action: 0,
            writes: Writes::default(),
            proposed_seq: 0,
            submitted: HashMap::new(),
            commit_durations: Histogram::new(),
            log_position: 0,
            lost_positions: VecDeque::new(),
            waiting: HashMap::new(),
            waiting_until: BTreeMap::new(),
            waiting_len: 0,
            now: Timestamp::ZERO,
            dropped_events: 0,
            records_verified: 0,
            busy_refusals: 0,
            requests: RequestCounts::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Decodes one request body (a frame without its length prefix) and
    /// handles it. A body that is not a protobuf message is the remote's
    /// fault: the error is for the adapter, which should end that substream.
    pub fn handle_frame(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        body: &[u8],
    ) -> Result<(), CodecError> {
        let message = self.decode_request(body)?;
        self.advance(now);
        if self.over_rate(peer) {
            let reason = std::mem::take(&mut self.rate_reason);
            self.refuse_busy(now, peer, request_id, message, &reason);
            self.rate_reason = reason;
        } else {
            self.handle_request(now, peer, request_id, message);
        }
        Ok(())
    }

    /// Whether `peer` is over the rate limit; takes one of its tokens if not.
    fn over_rate(&mut self, peer: PeerId) -> bool {
        match &mut self.rate {
            Some(buckets) => !buckets.take(self.now, peer),
            None => false,
        }
    }

    /// A request body as a message, if it is within the request frame limit
    /// and decodes.
    fn decode_request(&self, body: &[u8]) -> Result<proto::Message, CodecError> {
        let max = self.config.limits.max_request_frame;
        if body.len() > max {
            return Err(CodecError::FrameTooLarge { claimed: body.len() as u64, max });
        }
        codec::decode_message(body)
    }

    /// Answers a request the adapter cannot take now (it is over one of its
    /// bounds, named by `reason`) with `E_UNAVAILABLE` and `reason` as the
    /// `statusText`, so that the requester learns it at once instead of
    /// timing out. An UNREGISTER is applied all the same: it gets no answer,
    /// so refusing it would lose it silently.
    pub fn handle_frame_busy(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        body: &[u8],
        reason: &str,
    ) -> Result<(), CodecError> {
        let message = self.decode_request(body)?;
        self.refuse_busy(now, peer, request_id, message, reason);
        Ok(())
    }

    /// Answers `message` `E_UNAVAILABLE` with `reason`, unless it is an
    /// UNREGISTER (applied: it has no answer to carry a refusal) or of a
    /// type no server serves.
    fn refuse_busy(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        message: proto::Message,
        reason: &str,
    ) {
        let kind = match message.message_type() {
            Ok(MessageType::Unregister) | Err(_) => {
                return self.handle_request(now, peer, request_id, message);
            }
            Ok(kind) => kind,
        };
        self.advance(now);
        self.busy_refusals += 1;
        let status = ResponseStatus::EUnavailable;
        let reason = reason.to_owned();
        let response = match kind {
            MessageType::Register => register_response(status, Some(reason.clone()), None),
            _ => discover_error(status, reason.clone()),
        };
        self.refused(peer, kind, status, reason);
        self.answer(peer, request_id, Ok(kind), Some(response));
    }

    /// Handles one decoded request from `peer`.
    pub fn handle_request(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        message: proto::Message,
    ) {
        self.advance(now);
        let kind = message.message_type();
        let response = match kind {
            Ok(MessageType::Register) => {
                let register = message.register.unwrap_or_default();
                match self.register(peer, request_id, register) {
                    Ok(Admitted::Now(ttl)) => {
                        Some(register_response(ResponseStatus::Ok, None, Some(ttl.as_secs())))
                    }
                    // Answered when the store settles it.
                    Ok(Admitted::Held) => return,
                    Err(Refusal(status, reason)) => {
                        let response = register_response(status, Some(reason.clone()), None);
                        self.refused(peer, MessageType::Register, status, reason);
                        Some(response)
                    }
                }
            }
            Ok(MessageType::Unregister) => {
                let unregister = message.unregister.unwrap_or_default();
                match self.unregister(peer, request_id, unregister) {
                    Admitted::Now(()) => None,
                    // Answered when the store settles it.
                    Admitted::Held => return,
                }
            }
            Ok(MessageType::Discover) => {
                let discover = message.discover.unwrap_or_default();
                match self.discover_after_writes(peer, request_id, discover) {
                    Admitted::Now(response) => Some(response),
                    // Answered once the peer's writes before it are settled.
                    Admitted::Held => return,
                }
            }
            Ok(MessageType::DiscoverSubscribe) => Some(self.subscribe_offer(peer, message)),
            Ok(other) => Some(self.unsupported(peer, other as i32, Some(other))),
            Err(raw) => Some(self.unsupported(peer, raw, None)),
        };
        self.answer(peer, request_id, kind, response);
    }

    /// Queues the outcome of a request of type `kind`, and counts it.
    fn answer(
        &mut self,
        peer: PeerId,
        request_id: RequestId,
        kind: Result<MessageType, i32>,
        message: Option<proto::Message>,
    ) {
        self.requests.count(kind, message.as_ref());
        self.transmits.push_back(Transmit { peer, request_id, message });
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.advance(now);
    }

    /// Tells the server what `peer` reads, usually from identify's agent
    /// version through [`Reader::from_agent_version`]. The dialect of the
    /// peer's own REGISTERs overrides it (a peer reads what it writes), but
    /// never narrows [`Reader::Any`]. A peer nothing is known of reads
    /// [`ServerConfig::unknown_reader`]. What waited for the answer
    /// ([`poll_reader_wanted`](Self::poll_reader_wanted)) is served now.
    pub fn set_reader_dialect(&mut self, now: Timestamp, peer: PeerId, reader: impl Into<Reader>) {
        self.advance(now);
        self.readers.told(peer, reader.into());
        self.reader_wait_over(peer);
    }

    /// Tells the server that asking what `peer` reads
    /// ([`poll_reader_wanted`](Self::poll_reader_wanted)) gave nothing usable:
    /// the peer did not answer identify, or named an agent no flavour is
    /// known for. What waited for it is served as
    /// [`ServerConfig::unknown_reader`] now, not when the wait runs out.
    pub fn reader_unknown(&mut self, now: Timestamp, peer: PeerId) {
        self.advance(now);
        self.reader_wait_over(peer);
    }

    /// Tells the server where `peer` connects from (the IP address of its
    /// connection), so that its new registrations count toward that
    /// origin's quota ([`Limits::max_registrations_per_origin`]). Call it
    /// when a connection is established; the latest call wins.
    pub fn set_peer_origin(&mut self, peer: PeerId, origin: Origin) {
        self.readers.connects_from(peer, origin);
    }

    /// The adapter's last connection to `peer` closed: forget its dialect.
    /// Its registrations stay until they expire or are unregistered.
    pub fn handle_disconnected(&mut self, now: Timestamp, peer: &PeerId) {
        self.advance(now);
        self.readers.forget(peer);
        self.forget_reader_wait(*peer);
        self.unsubscribe_peer(peer);
        if let Some(rate) = &mut self.rate {
            rate.forget(peer);
        }
    }

    /// The next response to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called:
    /// the earliest expiry, or a DISCOVER's, a REGISTER's or a reader's
    /// wait running out; `None` while there is none.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let waiting = self.waiting_until.keys().next().map(|(at, _)| *at);
        let reader = self.reader_waits.next_deadline();
        [self.registry.next_expiry(), waiting, self.writes.log_deadline(), reader]
            .into_iter()
            .flatten()
            .min()
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        Stats {
            registrations: self.registry.len(),
            namespaces: self.registry.namespace_count(),
            peers: self.registry.peer_count(),
            dropped_events: self.dropped_events,
            records_verified: self.records_verified,
            remembered_readers: self.readers.len(),
            readers_evicted: self.readers.evicted(),
            busy_refusals: self.busy_refusals,
            pending_writes: self.writes.len(),
            waiting_discovers: self.waiting_len,
            readers_asked: self.reader_waits.asked(),
            reader_waits: self.reader_waits.len(),
            reader_waits_expired: self.reader_waits.expired(),
            requests: self.requests,
            subscriptions: self.subscriptions.len(),
            subscription_events: self.subscriptions.events_sent(),
            subscribers_dropped: self.subscriptions.dropped(),
        }
    }

    /// From a write's hand-over to the store to its commit, so far.
    pub fn commit_durations(&self) -> histogram::Snapshot {
        self.commit_durations.snapshot()
    }

    /// The namespaces after `after` (every one, for `None`) with their
    /// numbers of live registrations, in name order: a page at a time for
    /// an operator, at O(log n) a page.
    pub fn namespaces(&self, after: Option<&str>) -> impl Iterator<Item = (&Namespace, usize)> {
        self.registry.namespaces_after(after)
    }

    /// Time left on `peer`'s registration in `namespace`, if it has one.
    pub fn registration_ttl(&self, peer: &PeerId, namespace: &Namespace) -> Option<Duration> {
        self.registry.get(peer, namespace).map(|e| e.expires - self.now)
    }

    fn advance(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        self.stop_reader_waits(self.now);
        self.stop_waiting(self.now);
        self.stop_waiting_for_log();
        let mut expired = Vec::new();
        self.registry.expire(self.now, |peer, entry| expired.push((peer, entry)));
        for (peer, entry) in expired {
            self.publish_removal(peer, &entry);
            let (namespace, seq) = (entry.namespace, entry.seq);
            self.expired_in_store(peer, namespace.clone(), seq);
            let key = (peer, namespace);
            self.recount(&key);
            let (peer, namespace) = key;
            self.push_event(Event::Expired { peer, namespace });
        }
    }

    fn unsupported(
        &mut self,
        peer: PeerId,
        raw: i32,
        known: Option<MessageType>,
    ) -> proto::Message {
        let reason = match known {
            Some(kind) => format!("message type {raw} ({kind:?}) is not a supported request"),
            None => format!("message type {raw} is unknown"),
        };
        self.push_event(Event::Unsupported { peer, message_type: raw });
        discover_error(ResponseStatus::EUnavailable, reason)
    }

    fn refused(
        &mut self,
        peer: PeerId,
        request: MessageType,
        status: ResponseStatus,
        reason: String,
    ) {
        self.push_event(Event::Refused { peer, request, status, reason });
    }

    fn push_event(&mut self, event: Event) {
        // One call can expire the whole registry at once; an adapter that
        // drains after every call must never lose an event to that.
        let cap = self.config.max_queued_events.max(self.config.limits.max_registrations + 16);
        if self.events.len() < cap {
            self.events.push_back(event);
        } else {
            self.dropped_events += 1;
        }
    }
}

#[cfg(test)]
mod tests;

fn discover_seed(start: DiscoverStart) -> u64 {
    match start {
        DiscoverStart::Random { seed } => seed,
        DiscoverStart::Oldest => 0,
    }
}

pub(crate) fn register_response(
    status: ResponseStatus,
    text: Option<String>,
    ttl: Option<u64>,
) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::RegisterResponse as i32),
        register_response: Some(proto::RegisterResponse {
            status: Some(status as i32),
            status_text: text,
            ttl,
        }),
        ..Default::default()
    }
}

fn discover_error(status: ResponseStatus, text: String) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::DiscoverResponse as i32),
        discover_response: Some(proto::DiscoverResponse {
            registrations: Vec::new(),
            cookie: None,
            status: Some(status as i32),
            status_text: Some(text),
            ..Default::default()
        }),
        ..Default::default()
    }
}
