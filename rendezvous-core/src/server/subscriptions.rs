//! Subscriptions: a peer follows one namespace and is told of every change
//! as it happens (docs/subscriptions.md).
//!
//! A subscription first gets what the namespace holds, in pages, then
//! every arrival, every refresh (so that the subscriber holds the expiry
//! the point holds), and every
//! departure (unregistration, expiry, another point's change on a shared
//! store), in batches: one `DISCOVER_RESPONSE` per input that changed the
//! namespace, whose cookie is the position reached. Each record is in the
//! subscriber's reader flavour, as in DISCOVER; departures are explicit.
//!
//! # Positions
//! Every change the registry takes gets a number on this point's feed. A
//! position is this point's epoch, the feed number reached, and the
//! highest registration position published by then. A subscriber that
//! comes back with a position is sent the departures since (from a window
//! of the latest removals) and the registrations put since (from the
//! registry's order), and nothing is missed; a position this point cannot
//! resume (another point's, another run's, older than the window) gets a
//! full resend, marked `full`.
//!
//! # Bounds
//! Subscriptions per peer and per point are limited. Each subscription's
//! backlog (bytes handed to the adapter and not yet reported written, with
//! what waits to be) is bounded: a subscriber that does not read is
//! dropped with a last message saying so, instead of being buffered
//! without end. The first pages go out only as the subscriber takes them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use libp2p_identity::PeerId;

use super::discover::{registration, registration_cost};
use super::{Refusal, Server, discover_error};
use crate::codec::{self, CodecError};
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus};
use crate::record::Reader;
use crate::registry::Entry;
use crate::time::Timestamp;

/// This implementation's subscription type, and the protocol id its
/// subscriptions are carried on.
pub const SUBSCRIPTION_TYPE: &str = "/rendezvous/subscribe/1.0.0";

/// Identifies a subscription (its substream); chosen by the adapter,
/// unique among the subscriptions it has open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

/// A message for a subscription's substream.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// The subscriber.
    pub peer: PeerId,
    /// Its subscription.
    pub subscription: SubscriptionId,
    /// What to write: one length-prefixed message. Subscribers told the
    /// same change in the same flavour share one encoding.
    pub frame: Bytes,
    /// The last one: close the substream once it is written.
    pub end: bool,
}

impl Push {
    /// The message the frame holds.
    pub fn message(&self) -> proto::Message {
        let mut body = &self.frame[..];
        let _ = prost::encoding::decode_varint(&mut body);
        codec::decode_message(body).expect("a frame this server encoded")
    }
}

/// The bounds on subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionLimits {
    /// Most subscriptions open on this point. Default: 65 536.
    pub max_subscriptions: usize,
    /// Most subscriptions one peer may have open. Default: 16.
    pub max_per_peer: usize,
    /// Most bytes a subscription may have unwritten (handed to the adapter
    /// and not reported written, and waiting to be); beyond it the
    /// subscriber is dropped. Default: 256 KiB.
    pub max_backlog: usize,
    /// How many of the latest removals are kept for subscribers that come
    /// back; one that comes back from before them gets a full resend.
    /// Default: 16 384 (about 2 MiB).
    pub removal_window: usize,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        SubscriptionLimits {
            max_subscriptions: 65_536,
            max_per_peer: 16,
            max_backlog: 256 * 1024,
            removal_window: 16_384,
        }
    }
}

/// Where a subscription is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Sending what the namespace holds, in position order, from after
    /// this position.
    Paging { after: u64 },
    /// Sending changes as they happen.
    Live,
}

#[derive(Debug)]
struct Subscription {
    peer: PeerId,
    namespace: Namespace,
    reader: Reader,
    phase: Phase,
    /// The next batch: departures go before arrivals.
    departures: Vec<proto::Unregister>,
    arrivals: Vec<proto::Register>,
    /// What the next batch will take on the wire, about.
    batch_bytes: usize,
    /// The feed numbers of the first and last change in the batch, live:
    /// two subscriptions of one namespace and flavour with the same span
    /// hold the same batch.
    span: Option<(u64, u64)>,
    /// The next page starts a full resend.
    full: bool,
    /// Bytes handed to the adapter and not yet reported written.
    backlog: usize,
}

impl Subscription {
    fn has_batch(&self) -> bool {
        !self.departures.is_empty() || !self.arrivals.is_empty()
    }
}

/// A removal, kept for subscribers that come back.
#[derive(Debug)]
struct Removal {
    feed: u64,
    namespace: Namespace,
    peer: PeerId,
}

/// What a position says, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    epoch: u64,
    feed: u64,
    seq: u64,
}

const POSITION_VERSION: u8 = 1;
const POSITION_LEN: usize = 25;

impl Position {
    fn to_bytes(self) -> Bytes {
        let mut bytes = BytesMut::with_capacity(POSITION_LEN);
        bytes.put_u8(POSITION_VERSION);
        bytes.put_u64(self.epoch);
        bytes.put_u64(self.feed);
        bytes.put_u64(self.seq);
        bytes.freeze()
    }

    fn parse(bytes: &[u8]) -> Option<Position> {
        let (&version, rest) = bytes.split_first()?;
        if version != POSITION_VERSION || rest.len() != POSITION_LEN - 1 {
            return None;
        }
        let word = |i: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&rest[i * 8..i * 8 + 8]);
            u64::from_be_bytes(bytes)
        };
        Some(Position { epoch: word(0), feed: word(1), seq: word(2) })
    }
}

/// Every subscription, and the feed they follow.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    limits: SubscriptionLimits,
    epoch: u64,
    /// Changes numbered so far.
    feed: u64,
    /// Positions at or above it can be resumed: every removal numbered
    /// after it is in `removals`.
    floor: u64,
    /// The highest registration position published.
    published_seq: u64,
    /// A position was handed out in this epoch: only then can anyone come
    /// back, and only then are removals kept for them.
    issued: bool,
    removals: VecDeque<Removal>,
    by_id: BTreeMap<SubscriptionId, Subscription>,
    by_namespace: HashMap<Namespace, BTreeSet<SubscriptionId>>,
    per_peer: HashMap<PeerId, BTreeSet<SubscriptionId>>,
    /// Subscriptions with something to send.
    dirty: BTreeSet<SubscriptionId>,
    pushes: VecDeque<Push>,
    /// Live batches encoded in this flush, for the subscribers with the
    /// same one.
    encoded: HashMap<(Namespace, Reader, (u64, u64)), Bytes>,
    events_sent: u64,
    dropped: u64,
}

impl Subscriptions {
    pub(crate) fn new(limits: SubscriptionLimits, epoch: u64) -> Self {
        Subscriptions {
            limits,
            epoch,
            feed: 0,
            floor: 0,
            published_seq: 0,
            issued: false,
            removals: VecDeque::new(),
            by_id: BTreeMap::new(),
            by_namespace: HashMap::new(),
            per_peer: HashMap::new(),
            dirty: BTreeSet::new(),
            pushes: VecDeque::new(),
            encoded: HashMap::new(),
            events_sent: 0,
            dropped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn events_sent(&self) -> u64 {
        self.events_sent
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The registry was loaded up to position `seq`, before any subscriber.
    pub(crate) fn loaded(&mut self, seq: u64) {
        self.published_seq = self.published_seq.max(seq);
    }

    fn position(&self) -> Position {
        Position { epoch: self.epoch, feed: self.feed, seq: self.published_seq }
    }

    /// Whether `position` can be resumed here.
    fn resumable(&self, position: Position) -> bool {
        position.epoch == self.epoch
            && (self.floor..=self.feed).contains(&position.feed)
            && position.seq <= self.published_seq
    }

    fn subscribers_of(&self, namespace: &Namespace) -> Vec<SubscriptionId> {
        self.by_namespace
            .get(namespace)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    fn remove(&mut self, id: SubscriptionId) -> Option<Subscription> {
        let subscription = self.by_id.remove(&id)?;
        if let Some(ids) = self.by_namespace.get_mut(&subscription.namespace) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_namespace.remove(&subscription.namespace);
            }
        }
        if let Some(ids) = self.per_peer.get_mut(&subscription.peer) {
            ids.remove(&id);
            if ids.is_empty() {
                self.per_peer.remove(&subscription.peer);
            }
        }
        self.dirty.remove(&id);
        Some(subscription)
    }

    /// Queues `frame` for `id`, counting it in its backlog.
    fn push(&mut self, id: SubscriptionId, frame: Bytes) {
        let Some(subscription) = self.by_id.get_mut(&id) else { return };
        subscription.backlog += frame.len();
        let peer = subscription.peer;
        self.pushes.push_back(Push { peer, subscription: id, frame, end: false });
    }

    /// Sends `id`'s batch, as a page whose cookie is `cookie` (a position
    /// it can come back with, or none in the middle of its first pages).
    fn seal(&mut self, id: SubscriptionId, cookie: Option<Bytes>) {
        let Some(subscription) = self.by_id.get_mut(&id) else { return };
        let registrations = std::mem::take(&mut subscription.arrivals);
        let departures = std::mem::take(&mut subscription.departures);
        self.events_sent += (registrations.len() + departures.len()) as u64;
        let full = std::mem::take(&mut subscription.full).then_some(true);
        subscription.batch_bytes = 0;
        // A live batch sealed in a flush, with its cookie, is the same for
        // every subscriber of its namespace and flavour that was told the
        // same changes.
        let key = match (subscription.span.take(), &cookie, subscription.phase) {
            (Some(span), Some(_), Phase::Live) => {
                Some((subscription.namespace.clone(), subscription.reader, span))
            }
            _ => None,
        };
        if let Some(frame) = key.as_ref().and_then(|key| self.encoded.get(key)).cloned() {
            return self.push(id, frame);
        }
        let message = proto::Message {
            r#type: Some(MessageType::DiscoverResponse as i32),
            discover_response: Some(proto::DiscoverResponse {
                registrations,
                cookie,
                status: Some(ResponseStatus::Ok as i32),
                departures,
                full,
                ..Default::default()
            }),
            ..Default::default()
        };
        let frame = codec::frame(&message);
        if let Some(key) = key {
            self.encoded.insert(key, frame.clone());
        }
        self.push(id, frame);
    }
}

/// What a departure takes on the wire, about.
fn departure_cost(namespace: &Namespace) -> usize {
    namespace.as_str().len() + 48
}

fn departure(namespace: &Namespace, peer: &PeerId) -> proto::Unregister {
    proto::Unregister {
        ns: Some(namespace.as_str().to_owned()),
        id: Some(Bytes::from(peer.to_bytes())),
    }
}

fn subscribe_response(status: ResponseStatus, text: Option<String>) -> proto::Message {
    let ok = status == ResponseStatus::Ok;
    proto::Message {
        r#type: Some(MessageType::DiscoverSubscribeResponse as i32),
        discover_subscribe_response: Some(proto::DiscoverSubscribeResponse {
            subscription_type: ok.then(|| SUBSCRIPTION_TYPE.to_owned()),
            subscription_details: ok.then(|| SUBSCRIPTION_TYPE.to_owned()),
            status: Some(status as i32),
            status_text: text,
        }),
        ..Default::default()
    }
}

impl Server {
    /// Decodes a `DISCOVER_SUBSCRIBE` read from a subscription substream
    /// (the first frame on [`SUBSCRIPTION_TYPE`]) and handles it: answered
    /// through [`poll_push`](Self::poll_push), by a
    /// `DISCOVER_SUBSCRIBE_RESPONSE` and then, if it is OK, by the
    /// namespace's registrations and every change to them. A body that is
    /// not a protobuf message is the remote's fault: end the substream.
    pub fn handle_subscribe(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        id: SubscriptionId,
        body: &[u8],
    ) -> Result<(), CodecError> {
        let message = self.decode_request(body)?;
        self.advance(now);
        if self.over_rate(peer) {
            let reason = self.rate_reason.clone();
            self.refuse_subscribe(peer, id, Refusal(ResponseStatus::EUnavailable, reason));
        } else if self.awaits_reader(peer) {
            // Served in the peer's flavour once it is known.
            if let Err(refusal) = self.hold_subscribe(peer, id, message) {
                self.refuse_subscribe(peer, id, refusal);
            }
        } else {
            self.subscribe_or_refuse(peer, id, message);
        }
        Ok(())
    }

    /// Subscribes, or answers why not.
    pub(super) fn subscribe_or_refuse(
        &mut self,
        peer: PeerId,
        id: SubscriptionId,
        message: proto::Message,
    ) {
        if let Err(refusal) = self.subscribe(peer, id, message) {
            self.refuse_subscribe(peer, id, refusal);
        }
    }

    fn refuse_subscribe(&mut self, peer: PeerId, id: SubscriptionId, refusal: Refusal) {
        let Refusal(status, reason) = refusal;
        self.refused(peer, MessageType::DiscoverSubscribe, status, reason.clone());
        let frame = codec::frame(&subscribe_response(status, Some(reason)));
        self.subscriptions.pushes.push_back(Push { peer, subscription: id, frame, end: true });
    }

    fn subscribe(
        &mut self,
        peer: PeerId,
        id: SubscriptionId,
        message: proto::Message,
    ) -> Result<(), Refusal> {
        if message.message_type() != Ok(MessageType::DiscoverSubscribe) {
            let raw = message.r#type.unwrap_or(0);
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!("message type {raw} is not DISCOVER_SUBSCRIBE (100)"),
            ));
        }
        let request = message.discover_subscribe.unwrap_or_default();
        let types = &request.supported_subscription_types;
        if !types.is_empty() && !types.iter().any(|t| t == SUBSCRIPTION_TYPE) {
            return Err(no_common_type());
        }
        let namespace = Namespace::new(
            request.ns.as_deref().unwrap_or(""),
            self.config.limits.max_namespace_len,
        )
        .map_err(super::namespace_refusal)?;
        let subs = &self.subscriptions;
        let limits = subs.limits;
        if subs.by_id.contains_key(&id) {
            return Err(Refusal::new(ResponseStatus::EUnavailable, "already subscribed"));
        }
        if subs.len() >= limits.max_subscriptions {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!("{} subscriptions open, this point's limit", limits.max_subscriptions),
            ));
        }
        if subs.per_peer.get(&peer).map_or(0, BTreeSet::len) >= limits.max_per_peer {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!("{} subscriptions open from this peer, its limit", limits.max_per_peer),
            ));
        }
        let position = match request.position.as_deref() {
            None | Some([]) => None,
            Some(bytes) => Some(Position::parse(bytes).ok_or_else(|| {
                Refusal::new(ResponseStatus::EInvalidCookie, "malformed subscription position")
            })?),
        };
        let resume = position.filter(|p| subs.resumable(*p));
        let reader = self.readers.get(&peer).unwrap_or(self.config.unknown_reader);
        let mut subscription = Subscription {
            peer,
            namespace: namespace.clone(),
            reader,
            phase: Phase::Paging { after: resume.map_or(0, |p| p.seq) },
            departures: Vec::new(),
            arrivals: Vec::new(),
            batch_bytes: 0,
            span: None,
            full: resume.is_none(),
            backlog: 0,
        };
        if let Some(resume) = resume {
            for removal in self.subscriptions.removals.iter() {
                if removal.feed > resume.feed && removal.namespace == namespace {
                    subscription.departures.push(departure(&namespace, &removal.peer));
                }
            }
        }
        let subs = &mut self.subscriptions;
        if !subs.issued {
            // No position was handed out before, so none older can come back.
            subs.issued = true;
            subs.floor = subs.feed;
        }
        subs.by_id.insert(id, subscription);
        subs.by_namespace.entry(namespace.clone()).or_default().insert(id);
        subs.per_peer.entry(peer).or_default().insert(id);
        subs.dirty.insert(id);
        subs.push(id, codec::frame(&subscribe_response(ResponseStatus::Ok, None)));
        let resumed = resume.is_some();
        self.push_event(super::Event::Subscribed { peer, namespace, resumed });
        Ok(())
    }

    /// The adapter wrote `bytes` of a subscription's pushes to its
    /// substream: room for more.
    pub fn handle_push_written(&mut self, id: SubscriptionId, bytes: usize) {
        let subs = &mut self.subscriptions;
        let Some(subscription) = subs.by_id.get_mut(&id) else { return };
        subscription.backlog = subscription.backlog.saturating_sub(bytes);
        if matches!(subscription.phase, Phase::Paging { .. }) || subscription.has_batch() {
            subs.dirty.insert(id);
        }
    }

    /// A subscription's substream ended (the subscriber closed it, or the
    /// connection went): forget it.
    pub fn handle_unsubscribed(&mut self, id: SubscriptionId) {
        if self.reader_waits.drop_subscribe(id) {
            return;
        }
        if let Some(subscription) = self.subscriptions.remove(id) {
            let Subscription { peer, namespace, .. } = subscription;
            self.push_event(super::Event::Unsubscribed { peer, namespace });
        }
    }

    /// The next message for a subscription's substream. Drain it after
    /// every input, like [`poll_transmit`](Self::poll_transmit); report
    /// what is written with [`handle_push_written`](Self::handle_push_written).
    pub fn poll_push(&mut self) -> Option<Push> {
        if self.subscriptions.pushes.is_empty() {
            let dirty = std::mem::take(&mut self.subscriptions.dirty);
            for id in dirty {
                self.flush_subscription(id);
            }
            self.subscriptions.encoded.clear();
        }
        self.subscriptions.pushes.pop_front()
    }

    /// Sends what `id` has to send: its batch, or its next pages while its
    /// backlog leaves room for them.
    fn flush_subscription(&mut self, id: SubscriptionId) {
        let budget = self.subscription_budget();
        let half = self.subscriptions.limits.max_backlog / 2;
        loop {
            let Some(sub) = self.subscriptions.by_id.get_mut(&id) else { return };
            let Phase::Paging { after } = sub.phase else {
                if sub.has_batch() {
                    let cookie = self.subscriptions.position().to_bytes();
                    self.subscriptions.seal(id, Some(cookie));
                }
                return;
            };
            if sub.backlog >= half {
                return; // `handle_push_written` comes back to it
            }
            let mut used = sub.batch_bytes;
            let mut last = after;
            let mut done = true;
            for entry in self.registry.walk(sub.reader, Some(&sub.namespace), 0..0, after) {
                let bytes = entry.record.bytes_for(sub.reader).expect("the reader's index");
                let cost = registration_cost(entry, bytes);
                let limit = self.config.limits.max_discover_limit as usize;
                if (used + cost > budget || sub.arrivals.len() >= limit) && !sub.arrivals.is_empty()
                {
                    done = false;
                    break;
                }
                used += cost;
                last = entry.seq;
                sub.arrivals.push(registration(entry, bytes.clone(), self.now));
            }
            sub.batch_bytes = used;
            if done {
                sub.phase = Phase::Live;
                let cookie = self.subscriptions.position().to_bytes();
                self.subscriptions.seal(id, Some(cookie));
                return;
            }
            sub.phase = Phase::Paging { after: last };
            self.subscriptions.seal(id, None);
        }
    }

    /// The most a batch carries, leaving room for its position.
    fn subscription_budget(&self) -> usize {
        self.config.limits.response_budget().saturating_sub(POSITION_LEN)
    }

    /// Tells the subscribers of `namespace` that `peer` registered there
    /// (the registry holds it now). Refreshes are told too, so that a
    /// subscriber holds the expiry the point holds.
    pub(super) fn publish_put(&mut self, peer: &PeerId, namespace: &Namespace) {
        let Some(entry) = self.registry.get(peer, namespace) else { return };
        let seq = entry.seq;
        if seq <= self.subscriptions.published_seq {
            // Out of the registry's order: a position issued before cannot
            // tell whether it covers this one.
            self.subscriptions.floor = self.subscriptions.feed + 1;
        }
        let budget = self.subscription_budget();
        for id in self.subscriptions.subscribers_of(namespace) {
            let Some(entry) = self.registry.get(peer, namespace) else { return };
            let subs = &mut self.subscriptions;
            let Some(sub) = subs.by_id.get(&id) else { continue };
            let pending = match sub.phase {
                Phase::Live => true,
                // The walk reaches it, unless it is behind the walk.
                Phase::Paging { after } => seq <= after,
            };
            let Some(bytes) = entry.record.bytes_for(sub.reader).filter(|_| pending) else {
                continue;
            };
            let cost = registration_cost(entry, bytes);
            let arrival = registration(entry, bytes.clone(), self.now);
            self.queue(id, cost, budget, |sub| sub.arrivals.push(arrival));
        }
        let subs = &mut self.subscriptions;
        subs.feed += 1;
        subs.published_seq = subs.published_seq.max(seq);
    }

    /// Tells the subscribers of the removed `entry`'s namespace that `peer`
    /// left, and keeps the removal for those that come back.
    pub(super) fn publish_removal(&mut self, peer: PeerId, entry: &Entry) {
        let namespace = &entry.namespace;
        let budget = self.subscription_budget();
        for id in self.subscriptions.subscribers_of(namespace) {
            let Some(sub) = self.subscriptions.by_id.get(&id) else { continue };
            let sent = match sub.phase {
                Phase::Live => true,
                Phase::Paging { after } => entry.seq <= after,
            };
            if sent && entry.record.bytes_for(sub.reader).is_some() {
                let gone = departure(namespace, &peer);
                self.queue(id, departure_cost(namespace), budget, |sub| sub.departures.push(gone));
            }
        }
        let subs = &mut self.subscriptions;
        subs.feed += 1;
        if !subs.issued {
            return; // a point nobody ever subscribed to keeps no window
        }
        subs.removals.push_back(Removal { feed: subs.feed, namespace: namespace.clone(), peer });
        while subs.removals.len() > subs.limits.removal_window {
            if let Some(oldest) = subs.removals.pop_front() {
                subs.floor = subs.floor.max(oldest.feed);
            }
        }
    }

    /// The registry was replaced (a shared store reloaded): no position
    /// issued before can be resumed, and every subscriber gets a full resend.
    pub(super) fn republish_all(&mut self) {
        let subs = &mut self.subscriptions;
        subs.feed += 1;
        subs.floor = subs.feed;
        subs.removals.clear();
        subs.published_seq = self.registry.last_seq();
        for (id, sub) in subs.by_id.iter_mut() {
            sub.arrivals.clear();
            sub.departures.clear();
            sub.batch_bytes = 0;
            sub.span = None;
            sub.phase = Phase::Paging { after: 0 };
            sub.full = true;
            subs.dirty.insert(*id);
        }
    }

    /// Adds to `id`'s batch with `add`, sealing the batch first when it
    /// would grow past `budget`, and dropping the subscriber when its
    /// backlog would pass the bound.
    fn queue(
        &mut self,
        id: SubscriptionId,
        cost: usize,
        budget: usize,
        add: impl FnOnce(&mut Subscription),
    ) {
        let subs = &mut self.subscriptions;
        let Some(sub) = subs.by_id.get_mut(&id) else { return };
        if sub.backlog + sub.batch_bytes + cost > subs.limits.max_backlog {
            return self.drop_subscriber(id);
        }
        if sub.batch_bytes + cost > budget && sub.has_batch() {
            if sub.phase == Phase::Live {
                let cookie = subs.position().to_bytes();
                subs.seal(id, Some(cookie));
            } else {
                subs.seal(id, None);
            }
        }
        let Some(sub) = subs.by_id.get_mut(&id) else { return };
        sub.batch_bytes += cost;
        // The change being told gets the next feed number. Only a live
        // batch is made of changes alone.
        let change = subs.feed + 1;
        sub.span = match sub.phase {
            Phase::Live => Some((sub.span.map_or(change, |(first, _)| first), change)),
            Phase::Paging { .. } => None,
        };
        add(sub);
        subs.dirty.insert(id);
    }

    /// Ends a subscription whose subscriber does not read.
    fn drop_subscriber(&mut self, id: SubscriptionId) {
        let subs = &mut self.subscriptions;
        let Some(sub) = subs.remove(id) else { return };
        subs.dropped += 1;
        let unread = sub.backlog;
        let reason = format!(
            "subscription dropped: {unread} bytes not read, over this point's bound of {}; \
             subscribe again from the last cookie",
            subs.limits.max_backlog
        );
        let frame = codec::frame(&discover_error(ResponseStatus::EUnavailable, reason));
        subs.pushes.push_back(Push { peer: sub.peer, subscription: id, frame, end: true });
        let Subscription { peer, namespace, .. } = sub;
        self.push_event(super::Event::SubscriberDropped { peer, namespace, unread });
    }

    /// Forgets `peer`'s subscriptions (its last connection closed).
    pub(super) fn unsubscribe_peer(&mut self, peer: &PeerId) {
        let ids = self.subscriptions.per_peer.get(peer).cloned().unwrap_or_default();
        for id in ids {
            self.handle_unsubscribed(id);
        }
    }

    /// Answers a `DISCOVER_SUBSCRIBE` read on the request protocol: which
    /// type to follow, and where (this implementation's protocol id), or
    /// that no type is in common.
    pub(super) fn subscribe_offer(
        &mut self,
        peer: PeerId,
        request: proto::Message,
    ) -> proto::Message {
        let request = request.discover_subscribe.unwrap_or_default();
        let types = &request.supported_subscription_types;
        if types.is_empty() || types.iter().any(|t| t == SUBSCRIPTION_TYPE) {
            return subscribe_response(ResponseStatus::Ok, None);
        }
        let Refusal(status, reason) = no_common_type();
        self.refused(peer, MessageType::DiscoverSubscribe, status, reason.clone());
        subscribe_response(status, Some(reason))
    }
}

fn no_common_type() -> Refusal {
    Refusal::new(
        ResponseStatus::EUnavailable,
        format!("no subscription type in common: this point offers {SUBSCRIPTION_TYPE}"),
    )
}

#[cfg(test)]
mod tests;
