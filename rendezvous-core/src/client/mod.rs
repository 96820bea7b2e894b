//! The rendezvous client: registers, refreshes, discovers, watches,
//! caches, unregisters.
//!
//! - `config`: [`ClientConfig`] and [`RecordFlavour`];
//! - `events`: what goes out ([`ClientTransmit`], [`ClientEvent`]) and why
//!   things fail;
//! - `register`: registrations, refreshes, retries, unregistering;
//! - `dialect`: the record ladder per server;
//! - `discover`: walks with cookies, watches, the cache of peers found;
//! - `timers`: every deadline in one ordered index.

mod cache;
mod config;
mod dialect;
mod discover;
mod events;
mod register;
mod subscribe;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;

use crate::codec;
use crate::lru::Lru;
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus, read_status};
use crate::record::{Dialect, Flavour, Record, encode_peer_info};
use crate::request::RequestId;
use crate::rng::Rng;
use crate::time::Timestamp;
use cache::Cache;
pub use config::{ClientConfig, ClientConfigError, REFRESH_PERCENT, RecordFlavour};
use dialect::ServerState;
use discover::{Walk, Watch};
pub use events::{
    ClientEvent, ClientTransmit, CommandError, Discovery, Failure, LostReason, RequestError,
};
use register::Registration;
use timers::{Timer, Timers};

/// A rendezvous client, as a state machine that does no I/O and reads no clock.
///
/// # Driving it
/// Commands return a [`RequestId`] that the completing [`ClientEvent`]
/// carries back, and that every request the command sends carries too:
/// [`register`](Self::register), [`unregister`](Self::unregister),
/// [`unregister_all`](Self::unregister_all), [`discover`](Self::discover),
/// [`discover_all`](Self::discover_all). [`watch`](Self::watch) starts a
/// background rediscovery reported through [`ClientEvent::PeerFound`] and
/// [`ClientEvent::PeerLost`]. Commands never run due timers.
///
/// Inputs from the adapter, each with the current time:
/// [`handle_response`](Self::handle_response) (or
/// [`handle_response_frame`](Self::handle_response_frame)),
/// [`handle_sent`](Self::handle_sent) for requests without a response,
/// [`handle_failure`](Self::handle_failure),
/// [`handle_connected`](Self::handle_connected) /
/// [`handle_disconnected`](Self::handle_disconnected),
/// [`set_addresses`](Self::set_addresses), and
/// [`handle_timeout`](Self::handle_timeout), the only one that runs what is
/// due (refreshes, retries, rediscoveries, request deadlines, cache expiry).
///
/// After every call, drain in this order:
/// 1. [`poll_transmit`](Self::poll_transmit): requests to send, each on a new
///    substream to its server;
/// 2. [`poll_event`](Self::poll_event): what happened;
/// 3. [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout`
///    next.
///
/// Every value a server sends is untrusted: TTLs are clamped to what was
/// asked and to [`ClientConfig::max_ttl`], entries without a namespace are
/// taken as the one asked for, and nothing a server says can make the client
/// panic or loop.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    keypair: Keypair,
    addresses: Vec<Multiaddr>,
    /// Our record in each dialect, signed once per address set.
    records: BTreeMap<Dialect, Bytes>,
    record_seq: u64,
    rng: Rng,
    next_id: u64,
    now: Timestamp,
    pending: BTreeMap<RequestId, Pending>,
    registrations: BTreeMap<(PeerId, Namespace), Registration>,
    /// Where a REGISTER may have been applied since our last UNREGISTER
    /// there, kept or not: what [`unregister_all`](Self::unregister_all)
    /// covers.
    placed: Lru<(PeerId, Namespace), ()>,
    servers: BTreeMap<PeerId, ServerState>,
    cookies: Lru<(PeerId, Option<Namespace>), Bytes>,
    watches: BTreeMap<(PeerId, Namespace), Watch>,
    cache: Cache,
    timers: Timers,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<ClientEvent>,
    /// Subscriptions answered OK, and what each follows.
    subscribed: BTreeMap<RequestId, (PeerId, Namespace)>,
    /// Subscriptions for the adapter to close.
    cancels: VecDeque<RequestId>,
}

/// A request in flight.
#[derive(Debug)]
struct Pending {
    server: PeerId,
    /// The command whose completion this request carries.
    command: Option<RequestId>,
    deadline: Timestamp,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Register {
        namespace: Namespace,
        dialect: Dialect,
    },
    Unregister {
        namespace: Namespace,
    },
    Discover(Box<Walk>),
    /// A `DISCOVER_SUBSCRIBE`, until its answer.
    Subscribe {
        namespace: Namespace,
    },
}

impl Client {
    /// A client for `keypair` announcing `addresses`; `seed` drives retry
    /// jitter. Fails if `config` cannot work.
    pub fn new(
        config: ClientConfig,
        keypair: Keypair,
        addresses: Vec<Multiaddr>,
        seed: u64,
    ) -> Result<Self, ClientConfigError> {
        config.validate()?;
        Ok(Client {
            record_seq: config.record_seq,
            cookies: Lru::new(config.max_cookies),
            placed: Lru::new(config.max_registrations.saturating_mul(2)),
            cache: Cache::new(config.cache_capacity),
            config,
            keypair,
            addresses,
            records: BTreeMap::new(),
            rng: Rng::new(seed),
            next_id: 0,
            now: Timestamp::ZERO,
            pending: BTreeMap::new(),
            registrations: BTreeMap::new(),
            servers: BTreeMap::new(),
            watches: BTreeMap::new(),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            subscribed: BTreeMap::new(),
            cancels: VecDeque::new(),
        })
    }

    // Getters.

    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The settings in force.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Cached discoveries of `namespace` (or all) whose TTL has not run out,
    /// in (namespace, peer) order.
    pub fn discovered<'a>(
        &'a self,
        namespace: Option<&'a Namespace>,
    ) -> impl Iterator<Item = &'a Discovery> + 'a {
        self.cache.iter(namespace, self.now)
    }

    /// Registrations being kept alive: server, namespace, and whether the
    /// last attempt succeeded.
    pub fn registrations(&self) -> impl Iterator<Item = (&PeerId, &Namespace, bool)> {
        self.registrations.iter().map(|((s, n), r)| (s, n, r.is_registered()))
    }

    /// Requests in flight.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    // Inputs from the adapter.

    /// A response frame body arrived for `request_id`.
    pub fn handle_response_frame(&mut self, now: Timestamp, request_id: RequestId, body: &[u8]) {
        match codec::decode_message(body) {
            Ok(message) => self.handle_response(now, request_id, message),
            Err(err) => {
                self.set_now(now);
                self.fail(request_id, RequestError::Malformed(err.to_string()));
            }
        }
    }

    /// A decoded response arrived for `request_id`.
    pub fn handle_response(
        &mut self,
        now: Timestamp,
        request_id: RequestId,
        message: proto::Message,
    ) {
        self.set_now(now);
        let Some(pending) = self.take_pending(request_id) else {
            // A subscription's batch, or late (timed out) or unknown:
            // nothing waits for it.
            return self.on_push(request_id, message);
        };
        match pending.kind {
            Kind::Register { namespace, dialect } => {
                let result = register_result(message);
                let request = (request_id, pending.command);
                self.on_register(request, pending.server, namespace, dialect, result);
            }
            Kind::Discover(walk) => {
                self.on_page(request_id, pending.server, pending.command, *walk, message);
            }
            Kind::Unregister { namespace } => {
                // UNREGISTER has no response; one arriving still means it was delivered.
                self.on_unregister(pending.server, pending.command, namespace, true);
            }
            Kind::Subscribe { namespace } => {
                self.on_subscribed(request_id, pending.server, namespace, message);
            }
        }
    }

    /// A request without a response (UNREGISTER) was written.
    pub fn handle_sent(&mut self, now: Timestamp, request_id: RequestId) {
        self.set_now(now);
        // A request that expects a response is not done when written.
        if !matches!(
            self.pending.get(&request_id),
            Some(Pending { kind: Kind::Unregister { .. }, .. })
        ) {
            return;
        }
        if let Some(Pending { server, command, kind: Kind::Unregister { namespace }, .. }) =
            self.take_pending(request_id)
        {
            self.on_unregister(server, command, namespace, true);
        }
    }

    /// The adapter could not carry `request_id`.
    pub fn handle_failure(&mut self, now: Timestamp, request_id: RequestId, failure: Failure) {
        self.set_now(now);
        self.fail(request_id, RequestError::Transport(failure));
    }

    /// A connection to `server` is up. If one was lost before, the server's
    /// record dialect is probed again and everything registered there is
    /// registered again.
    pub fn handle_connected(&mut self, now: Timestamp, server: PeerId) {
        self.set_now(now);
        let state = self.servers.entry(server).or_default();
        if !state.disconnected {
            return;
        }
        state.reconnected();
        let keys: Vec<_> =
            self.registrations.keys().filter(|(s, _)| *s == server).cloned().collect();
        for (server, namespace) in keys {
            self.reregister(server, namespace);
        }
    }

    /// The last connection to `server` closed.
    pub fn handle_disconnected(&mut self, now: Timestamp, server: PeerId) {
        self.set_now(now);
        self.servers.entry(server).or_default().disconnected = true;
    }

    /// Runs what is due at `now`: request deadlines, refreshes, retries,
    /// rediscoveries, cache expiry.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.set_now(now);
        while let Some(timer) = self.timers.pop_due(self.now) {
            match timer {
                Timer::Deadline(id) => {
                    if self.pending.get(&id).is_some_and(|p| p.deadline <= self.now) {
                        self.fail(id, RequestError::Timeout);
                    }
                }
                Timer::Register(server, namespace) => self.on_register_timer(server, namespace),
                Timer::Watch(server, namespace) => self.on_watch_timer(server, namespace),
            }
        }
        for gone in self.cache.expire(self.now) {
            self.lost(gone, LostReason::Expired);
        }
    }

    /// Reports that the cached peer `gone` left.
    fn lost(&mut self, gone: Discovery, reason: LostReason) {
        let (peer, namespace) = (gone.peer, gone.namespace);
        self.events.push_back(ClientEvent::PeerLost { peer, namespace, reason });
    }

    // Outputs.

    /// The next request to send.
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next needed. O(log n).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match (self.timers.next(), self.cache.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // The machinery every kind of request shares.

    /// Time that runs backwards stands still.
    fn set_now(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
    }

    fn check_namespace(&self, namespace: Option<&Namespace>) -> Result<(), CommandError> {
        let max = self.config.max_namespace_len;
        match namespace.map(|n| n.as_str().len()) {
            Some(len) if len > max => Err(CommandError::NamespaceTooLong { len, max }),
            _ => Ok(()),
        }
    }

    fn check_pending(&self) -> Result<(), CommandError> {
        if self.pending.len() >= self.config.max_pending {
            return Err(CommandError::TooManyPending(self.config.max_pending));
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    /// Our record in `dialect`, signed once per address set.
    fn record(&mut self, dialect: Dialect) -> Result<Bytes, CommandError> {
        if self.addresses.is_empty() {
            return Err(CommandError::NoAddresses);
        }
        if let Some(record) = self.records.get(&dialect) {
            return Ok(record.clone());
        }
        let record = match dialect {
            Dialect::Legacy => encode_peer_info(&self.local_peer_id(), &self.addresses),
            Dialect::Signed(flavour) => {
                self.record_seq += 1;
                Record::sign(&self.keypair, &self.addresses, self.record_seq, flavour)
                    .map_err(|e| CommandError::Signing(e.to_string()))?
            }
        };
        self.records.insert(dialect, record.clone());
        Ok(record)
    }

    fn take_pending(&mut self, id: RequestId) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        self.timers.cancel(pending.deadline, Timer::Deadline(id));
        Some(pending)
    }

    /// Queues `message` as request `id` and waits for its outcome until the
    /// request timeout.
    fn send(
        &mut self,
        id: RequestId,
        server: PeerId,
        command: Option<RequestId>,
        kind: Kind,
        message: proto::Message,
    ) {
        let expects_response = !matches!(kind, Kind::Unregister { .. });
        let subscription = matches!(kind, Kind::Subscribe { .. });
        let deadline = self.now + self.config.request_timeout;
        self.timers.set(deadline, Timer::Deadline(id));
        self.pending.insert(id, Pending { server, command, deadline, kind });
        self.transmits.push_back(ClientTransmit {
            server,
            request_id: id,
            message,
            expects_response,
            subscription,
        });
    }

    fn fail(&mut self, id: RequestId, error: RequestError) {
        let Some(pending) = self.take_pending(id) else {
            if let Some((server, namespace)) = self.subscribed.remove(&id) {
                self.subscription_ended(id, server, namespace, error);
            }
            return;
        };
        match pending.kind {
            Kind::Register { namespace, dialect } => {
                let request = (id, pending.command);
                self.on_register(request, pending.server, namespace, dialect, Err(error));
            }
            Kind::Unregister { namespace } => {
                self.on_unregister(pending.server, pending.command, namespace, false);
            }
            Kind::Discover(walk) => {
                self.on_walk_failed(pending.server, pending.command, *walk, error)
            }
            Kind::Subscribe { namespace } => {
                self.subscription_ended(id, pending.server, namespace, error)
            }
        }
    }
}

fn register_result(message: proto::Message) -> Result<u64, RequestError> {
    expect_type(&message, MessageType::RegisterResponse)?;
    let body = message.register_response.unwrap_or_default();
    check_status(body.status, body.status_text)?;
    Ok(body.ttl.unwrap_or(0))
}

fn expect_type(message: &proto::Message, want: MessageType) -> Result<(), RequestError> {
    if message.message_type() == Ok(want) {
        return Ok(());
    }
    Err(RequestError::Malformed(format!("expected {want:?}, got type {:?}", message.r#type)))
}

fn check_status(status: Option<i32>, text: Option<String>) -> Result<(), RequestError> {
    match read_status(status) {
        Ok(ResponseStatus::Ok) => Ok(()),
        status => Err(RequestError::Refused { status, text: text.unwrap_or_default() }),
    }
}

/// The envelope flavours other than `dialect`'s, for the extension field.
fn other_flavours(dialect: Dialect) -> impl Iterator<Item = Dialect> {
    Flavour::ALL
        .into_iter()
        .map(Dialect::Signed)
        .filter(move |d| matches!(dialect, Dialect::Signed(_)) && *d != dialect)
}
