//! The rendezvous client: registers, refreshes, discovers, caches, unregisters.

mod cache;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;

use crate::RequestId;
use crate::codec;
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus, read_status};
use crate::record::{Addresses, Dialect, Flavour, Record, RecordLimits, encode_peer_info};
use crate::rng::Rng;
use crate::time::Timestamp;
use cache::Cache;

/// The TTL the spec says a server grants when none is asked, in seconds.
const DEFAULT_TTL: u64 = 2 * 60 * 60;

/// How the client behaves; every queue and cache it keeps is bounded here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Re-register at 80% of the granted TTL (the demo's `--refresh`).
    pub refresh: bool,
    /// The envelope flavour of our signed records; servers that refuse it
    /// are sent the legacy `PeerInfo` instead.
    pub flavour: Flavour,
    /// A request with no answer after this long fails with
    /// [`RequestError::Timeout`].
    pub request_timeout: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Transient failures in a row before a registration is given up.
    pub max_retries: u32,
    /// Most requests in flight; commands beyond it are refused.
    pub max_pending: usize,
    /// Most registrations kept alive at once.
    pub max_registrations: usize,
    /// Most discovered peers cached.
    pub cache_capacity: usize,
    /// Most discovery cookies remembered (one per server and namespace).
    pub max_cookies: usize,
    /// Most pages one [`Client::discover_all`] fetches.
    pub max_discover_pages: usize,
    /// Largest response body accepted; py-libp2p allows 4 MiB.
    pub max_response_frame: usize,
    /// Longest namespace a command accepts; the spec's 255 bytes, which every
    /// server accepts.
    pub max_namespace_len: usize,
    /// Bounds on records found in DISCOVER responses.
    pub record_limits: RecordLimits,
    /// Sequence number of the first signed record; later ones count up.
    /// Adapters pass the wall-clock time (e.g. Unix milliseconds) so that a
    /// restarted client's records supersede its earlier ones.
    pub record_seq: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            refresh: true,
            flavour: Flavour::RustLibp2p,
            request_timeout: Duration::from_secs(20),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_retries: 10,
            max_pending: 1024,
            max_registrations: 1024,
            cache_capacity: 100_000,
            max_cookies: 4096,
            max_discover_pages: 1000,
            max_response_frame: 4 * 1024 * 1024,
            max_namespace_len: 255,
            record_limits: RecordLimits { max_bytes: 4096, max_addresses: 64 },
            record_seq: 0,
        }
    }
}

/// A request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientTransmit {
    /// The rendezvous server to send it to (dial it if not connected).
    pub server: PeerId,
    /// Report the outcome with this id.
    pub request_id: RequestId,
    /// The request.
    pub message: proto::Message,
    /// Whether to read one response frame after writing. When false
    /// (UNREGISTER), report [`Client::handle_sent`] once written.
    pub expects_response: bool,
}

impl ClientTransmit {
    /// The request as a length-prefixed frame.
    pub fn to_frame(&self) -> Bytes {
        codec::frame(&self.message)
    }
}

/// A peer found by DISCOVER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// Who.
    pub peer: PeerId,
    /// Where it can be reached.
    pub addresses: Addresses,
    /// The namespace it registered in.
    pub namespace: Namespace,
    /// Seconds its registration had left when discovered.
    pub ttl: u64,
    /// The record as the server sent it, in the dialect it sent.
    pub record: Bytes,
    /// That dialect.
    pub dialect: Dialect,
}

/// How an adapter failed to carry a request, and so whether the server may
/// have acted on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The server could not be dialed, or the connection closed before the
    /// outcome was known. A request already written may have been applied.
    Unreachable,
    /// The server does not speak `/rendezvous/1.0.0`; nothing was sent.
    Unsupported,
    /// The substream closed or was reset before a response was read. With
    /// `written`, the whole request had gone out: the server read it and may
    /// have acted on it, and a server that rejects a record by closing the
    /// substream (rust-libp2p's on a record it cannot parse, canvas-js's on
    /// any error) looks like this. Without, it was cut off while writing.
    StreamClosed {
        /// Whether the request was written whole.
        written: bool,
    },
    /// The adapter's own time limit passed with no response; the server
    /// may have acted on the request.
    TimedOut,
    /// The response frame was over the size limit or cut short.
    InvalidResponse,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error status.
    #[error("server refused: {status:?}: {text}")]
    Refused {
        /// The status, or the raw number if unknown.
        status: Result<ResponseStatus, i32>,
        /// The server's `statusText`.
        text: String,
    },
    /// No answer within [`ClientConfig::request_timeout`].
    #[error("no response in time")]
    Timeout,
    /// The adapter could not carry the request.
    #[error("transport failure: {0:?}")]
    Transport(Failure),
    /// The response could not be understood.
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl RequestError {
    /// Worth retrying later: the server may accept the same request then.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Refused { status, .. } => matches!(
                status,
                Ok(ResponseStatus::EUnavailable | ResponseStatus::EInternalError) | Err(_)
            ),
            RequestError::Timeout | RequestError::Transport(_) | RequestError::Malformed(_) => true,
        }
    }

    /// What a server that does not read signed records says to one.
    fn suggests_legacy(&self) -> bool {
        matches!(
            self,
            RequestError::Refused {
                status: Ok(
                    ResponseStatus::EInvalidSignedPeerRecord | ResponseStatus::ENotAuthorized
                ),
                ..
            } | RequestError::Transport(Failure::StreamClosed { written: true })
        )
    }
}

/// Why a command was not accepted; nothing was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// [`ClientConfig::max_pending`] requests are in flight.
    #[error("{0} requests already in flight")]
    TooManyPending(usize),
    /// [`ClientConfig::max_registrations`] registrations are kept alive.
    #[error("{0} registrations already kept alive")]
    TooManyRegistrations(usize),
    /// The local key cannot sign a record.
    #[error("cannot sign the peer record: {0}")]
    Signing(String),
    /// The client has no address to announce.
    #[error("no addresses to announce")]
    NoAddresses,
    /// The namespace is longer than [`ClientConfig::max_namespace_len`].
    #[error("namespace of {len} bytes exceeds the limit of {max} bytes")]
    NamespaceTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// What happened. Events carrying `request: Some(id)` complete the command
/// that returned `id`; every command gets exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A registration was accepted. `request` is `None` for background
    /// re-registrations (refresh, retry, reconnect, new addresses).
    Registered {
        /// The command this completes, if any.
        request: Option<RequestId>,
        /// Where.
        server: PeerId,
        /// In which namespace.
        namespace: Namespace,
        /// The TTL granted, in seconds; the refresh is due at 80% of it.
        ttl: u64,
    },
    /// A registration failed. With `retry_in` set it will be retried;
    /// without, it is given up.
    RegisterFailed {
        /// The command this completes, if any.
        request: Option<RequestId>,
        /// Where.
        server: PeerId,
        /// In which namespace.
        namespace: Namespace,
        /// Why.
        error: RequestError,
        /// When the next attempt goes out.
        retry_in: Option<Duration>,
    },
    /// An UNREGISTER was written (`delivered`) or could not be.
    Unregistered {
        /// The command this completes, if any.
        request: Option<RequestId>,
        /// Where.
        server: PeerId,
        /// Which namespace.
        namespace: Namespace,
        /// Whether the adapter reported it written.
        delivered: bool,
    },
    /// A DISCOVER (or every page of a `discover_all`) was answered.
    Discovered {
        /// The command this completes.
        request: RequestId,
        /// Which server.
        server: PeerId,
        /// The namespace asked for; `None` for all.
        namespace: Option<Namespace>,
        /// The peers found, in the server's order; our own registration too.
        registrations: Vec<Discovery>,
        /// Entries skipped because their record did not parse.
        skipped: usize,
    },
    /// A DISCOVER failed.
    DiscoverFailed {
        /// The command this completes.
        request: RequestId,
        /// Which server.
        server: PeerId,
        /// The namespace asked for; `None` for all.
        namespace: Option<Namespace>,
        /// Why.
        error: RequestError,
    },
    /// A cached discovery reached the end of its TTL.
    Expired {
        /// Who.
        peer: PeerId,
        /// In which namespace.
        namespace: Namespace,
    },
    /// `server` refused our signed record; from now on it gets the legacy
    /// `PeerInfo` dialect.
    LegacyFallback {
        /// Which server.
        server: PeerId,
        /// What it said.
        reason: RequestError,
    },
}

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
    Register { namespace: Namespace, dialect: Dialect, fallback_tried: bool },
    Unregister { namespace: Namespace },
    Discover(Discovering),
}

#[derive(Debug)]
struct Discovering {
    namespace: Option<Namespace>,
    limit: Option<u64>,
    all: bool,
    sent_cookie: bool,
    pages: usize,
    found: Vec<Discovery>,
    skipped: usize,
}

#[derive(Debug)]
struct Registration {
    ttl: Option<u64>,
    attempt: u32,
    phase: Phase,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    InFlight(RequestId),
    /// Registered; refresh due then (`None`: refresh is off).
    Registered(Option<Timestamp>),
    /// Waiting to retry.
    Backoff(Timestamp),
}

#[derive(Debug, Default)]
struct ServerState {
    /// The dialect to send; `None` until the server accepted one or refused
    /// the signed one.
    dialect: Option<Dialect>,
    /// The server accepted a REGISTER in `dialect`.
    confirmed: bool,
    disconnected: bool,
}

/// A rendezvous client, as a state machine that does no I/O and reads no clock.
///
/// # Driving it
/// Commands ([`register`](Self::register), [`unregister`](Self::unregister),
/// [`discover`](Self::discover), [`discover_all`](Self::discover_all),
/// [`unregister_all`](Self::unregister_all)) return a [`RequestId`] that the
/// completing [`ClientEvent`] carries back. Inputs from the adapter:
/// [`handle_response`](Self::handle_response) (or `handle_response_frame`),
/// [`handle_sent`](Self::handle_sent) for requests without a response,
/// [`handle_failure`](Self::handle_failure),
/// [`handle_connected`](Self::handle_connected) /
/// [`handle_disconnected`](Self::handle_disconnected), and
/// [`handle_timeout`](Self::handle_timeout).
///
/// After every call, drain in this order:
/// 1. [`poll_transmit`](Self::poll_transmit): requests to send, each on a new
///    substream to its server;
/// 2. [`poll_event`](Self::poll_event): what happened;
/// 3. [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout`
///    next (refreshes, retries, request deadlines, cache expiry).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    keypair: Keypair,
    addresses: Vec<Multiaddr>,
    records: BTreeMap<Dialect, Bytes>,
    record_seq: u64,
    rng: Rng,
    next_id: u64,
    now: Timestamp,
    pending: BTreeMap<RequestId, Pending>,
    deadlines: BTreeMap<(Timestamp, RequestId), ()>,
    registrations: BTreeMap<(PeerId, Namespace), Registration>,
    servers: BTreeMap<PeerId, ServerState>,
    cookies: BTreeMap<(PeerId, Option<Namespace>), Bytes>,
    cache: Cache,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// A client for `keypair` announcing `addresses`; `seed` drives retry jitter.
    pub fn new(
        config: ClientConfig,
        keypair: Keypair,
        addresses: Vec<Multiaddr>,
        seed: u64,
    ) -> Self {
        let cache = Cache::new(config.cache_capacity);
        Client {
            record_seq: config.record_seq,
            config,
            keypair,
            addresses,
            records: BTreeMap::new(),
            rng: Rng::new(seed),
            next_id: 0,
            now: Timestamp::ZERO,
            pending: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            registrations: BTreeMap::new(),
            servers: BTreeMap::new(),
            cookies: BTreeMap::new(),
            cache,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Registers in `namespace` at `server`, and keeps the registration alive
    /// until [`unregister`](Self::unregister). `ttl` `None` takes the server's
    /// default.
    pub fn register(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Namespace,
        ttl: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        self.advance(now);
        self.check_pending()?;
        self.check_namespace(Some(&namespace))?;
        let key = (server, namespace.clone());
        if !self.registrations.contains_key(&key)
            && self.registrations.len() >= self.config.max_registrations
        {
            return Err(CommandError::TooManyRegistrations(self.config.max_registrations));
        }
        self.record(self.dialect_for(&server))?;
        let id = self.allocate_id();
        self.registrations
            .entry(key)
            .and_modify(|r| {
                r.ttl = ttl;
                r.attempt = 0;
            })
            .or_insert(Registration { ttl, attempt: 0, phase: Phase::InFlight(id) });
        self.send_register(id, Some(id), server, namespace, None);
        Ok(id)
    }

    /// Stops keeping the registration alive and tells the server.
    pub fn unregister(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Namespace,
    ) -> Result<RequestId, CommandError> {
        self.advance(now);
        self.check_pending()?;
        self.check_namespace(Some(&namespace))?;
        self.registrations.remove(&(server, namespace.clone()));
        let id = self.allocate_id();
        self.send_unregister(id, Some(id), server, namespace);
        Ok(id)
    }

    /// Unregisters everything (for shutdown). Returns one id per UNREGISTER;
    /// each completes with [`ClientEvent::Unregistered`]. Not bounded by
    /// [`ClientConfig::max_pending`]: shutdown must not leave any behind.
    pub fn unregister_all(&mut self, now: Timestamp) -> Vec<RequestId> {
        self.advance(now);
        let all = std::mem::take(&mut self.registrations);
        all.into_keys()
            .map(|(server, namespace)| {
                let id = self.allocate_id();
                self.send_unregister(id, Some(id), server, namespace);
                id
            })
            .collect()
    }

    /// Asks `server` for one page of `namespace` (`None`: all namespaces),
    /// continuing from the cookie of the previous discover of the same query,
    /// so only what is new comes back.
    pub fn discover(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        self.start_discover(now, server, namespace, limit, false)
    }

    /// Like [`discover`](Self::discover), but follows cookies until the
    /// server returns an empty page (at most
    /// [`ClientConfig::max_discover_pages`]), and completes with everything.
    pub fn discover_all(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        self.start_discover(now, server, namespace, limit, true)
    }

    /// Announces new addresses: re-signs the record and re-registers
    /// everywhere it is registered.
    pub fn set_addresses(&mut self, now: Timestamp, addresses: Vec<Multiaddr>) {
        self.advance(now);
        if addresses == self.addresses {
            return;
        }
        self.addresses = addresses;
        self.records.clear();
        let keys: Vec<_> = self.registrations.keys().cloned().collect();
        for (server, namespace) in keys {
            self.reregister(server, namespace);
        }
    }

    /// A response frame body arrived for `request_id`.
    pub fn handle_response_frame(&mut self, now: Timestamp, request_id: RequestId, body: &[u8]) {
        match codec::decode_message(body) {
            Ok(message) => self.handle_response(now, request_id, message),
            Err(err) => {
                self.advance(now);
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
        self.advance(now);
        let Some(pending) = self.take_pending(request_id) else {
            return; // late (timed out) or unknown: nothing waits for it
        };
        match pending.kind {
            Kind::Register { namespace, dialect, fallback_tried } => {
                let result = register_result(message);
                self.on_register(
                    request_id,
                    pending.server,
                    pending.command,
                    namespace,
                    dialect,
                    fallback_tried,
                    result,
                );
            }
            Kind::Discover(discovering) => {
                self.on_discover(pending.server, pending.command, discovering, message);
            }
            Kind::Unregister { namespace } => {
                // UNREGISTER has no response; one arriving still means it was delivered.
                self.on_unregister(pending.server, pending.command, namespace, true);
            }
        }
    }

    /// A request without a response (UNREGISTER) was written.
    pub fn handle_sent(&mut self, now: Timestamp, request_id: RequestId) {
        self.advance(now);
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
        self.advance(now);
        self.fail(request_id, RequestError::Transport(failure));
    }

    /// A connection to `server` is up. If one was lost before, everything
    /// registered there is registered again.
    pub fn handle_connected(&mut self, now: Timestamp, server: PeerId) {
        self.advance(now);
        let state = self.servers.entry(server).or_default();
        if !std::mem::take(&mut state.disconnected) {
            return;
        }
        let keys: Vec<_> =
            self.registrations.keys().filter(|(s, _)| *s == server).cloned().collect();
        for (server, namespace) in keys {
            self.reregister(server, namespace);
        }
    }

    /// The last connection to `server` closed.
    pub fn handle_disconnected(&mut self, now: Timestamp, server: PeerId) {
        self.advance(now);
        self.servers.entry(server).or_default().disconnected = true;
    }

    /// Runs what is due: request deadlines, refreshes, retries, cache expiry.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.advance(now);
    }

    /// The next request to send.
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next needed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let deadline = self.deadlines.keys().next().map(|(t, _)| *t);
        let timers = self.registrations.values().filter_map(|r| match r.phase {
            Phase::Registered(at) => at,
            Phase::Backoff(at) => Some(at),
            Phase::InFlight(_) => None,
        });
        deadline.into_iter().chain(timers).chain(self.cache.next_expiry()).min()
    }

    /// Cached discoveries of `namespace` (or all), in (namespace, peer) order.
    pub fn discovered<'a>(
        &'a self,
        namespace: Option<&'a Namespace>,
    ) -> impl Iterator<Item = &'a Discovery> + 'a {
        self.cache.iter(namespace)
    }

    /// Registrations being kept alive: server, namespace, and whether the
    /// last attempt succeeded.
    pub fn registrations(&self) -> impl Iterator<Item = (&PeerId, &Namespace, bool)> {
        self.registrations.iter().map(|((s, n), r)| (s, n, matches!(r.phase, Phase::Registered(_))))
    }

    /// Requests in flight.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    fn advance(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        let now = self.now;
        while let Some((&(at, id), ())) = self.deadlines.first_key_value() {
            if at > now {
                break;
            }
            self.fail(id, RequestError::Timeout);
        }
        let due: Vec<_> = self
            .registrations
            .iter()
            .filter(|(_, r)| match r.phase {
                Phase::Registered(Some(at)) | Phase::Backoff(at) => at <= now,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (server, namespace) in due {
            self.reregister(server, namespace);
        }
        for gone in self.cache.expire(now) {
            self.events
                .push_back(ClientEvent::Expired { peer: gone.peer, namespace: gone.namespace });
        }
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

    fn dialect_for(&self, server: &PeerId) -> Dialect {
        self.servers
            .get(server)
            .and_then(|s| s.dialect)
            .unwrap_or(Dialect::Signed(self.config.flavour))
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
        self.deadlines.remove(&(pending.deadline, id));
        Some(pending)
    }

    /// Sends a REGISTER for a registration we keep, in the server's dialect
    /// (or `dialect` if given).
    fn send_register(
        &mut self,
        id: RequestId,
        command: Option<RequestId>,
        server: PeerId,
        namespace: Namespace,
        dialect: Option<Dialect>,
    ) {
        let dialect = dialect.unwrap_or_else(|| self.dialect_for(&server));
        let ttl = self.registrations.get(&(server, namespace.clone())).and_then(|r| r.ttl);
        let record = match self.record(dialect) {
            Ok(record) => record,
            Err(err) => {
                // Only reachable if the addresses were emptied after registering.
                self.registrations.remove(&(server, namespace.clone()));
                let error = RequestError::Malformed(err.to_string());
                self.events.push_back(ClientEvent::RegisterFailed {
                    request: command,
                    server,
                    namespace,
                    error,
                    retry_in: None,
                });
                return;
            }
        };
        if let Some(r) = self.registrations.get_mut(&(server, namespace.clone())) {
            r.phase = Phase::InFlight(id);
        }
        let message = proto::Message {
            r#type: Some(MessageType::Register as i32),
            register: Some(proto::Register {
                ns: Some(namespace.to_string()),
                signed_peer_record: Some(record),
                ttl,
                other_records: Vec::new(),
            }),
            ..Default::default()
        };
        let kind =
            Kind::Register { namespace, dialect, fallback_tried: dialect == Dialect::Legacy };
        self.send(id, server, command, kind, message);
    }

    /// Sends a fresh REGISTER; one still in flight is superseded (its answer
    /// no longer moves the registration).
    fn reregister(&mut self, server: PeerId, namespace: Namespace) {
        let id = self.allocate_id();
        self.send_register(id, None, server, namespace, None);
    }

    fn send_unregister(
        &mut self,
        id: RequestId,
        command: Option<RequestId>,
        server: PeerId,
        namespace: Namespace,
    ) {
        let message = proto::Message {
            r#type: Some(MessageType::Unregister as i32),
            // The deprecated id: legacy servers (py-libp2p) ignore an
            // UNREGISTER without it, the others ignore the field.
            unregister: Some(proto::Unregister {
                ns: Some(namespace.to_string()),
                id: Some(self.local_peer_id().to_bytes().into()),
            }),
            ..Default::default()
        };
        self.send(id, server, command, Kind::Unregister { namespace }, message);
    }

    fn start_discover(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
        all: bool,
    ) -> Result<RequestId, CommandError> {
        self.advance(now);
        self.check_pending()?;
        self.check_namespace(namespace.as_ref())?;
        let id = self.allocate_id();
        let discovering = Discovering {
            namespace,
            limit,
            all,
            sent_cookie: false,
            pages: 0,
            found: Vec::new(),
            skipped: 0,
        };
        self.send_discover(id, server, id, discovering);
        Ok(id)
    }

    fn send_discover(
        &mut self,
        id: RequestId,
        server: PeerId,
        command: RequestId,
        mut discovering: Discovering,
    ) {
        let cookie = self.cookies.get(&(server, discovering.namespace.clone())).cloned();
        discovering.sent_cookie = cookie.is_some();
        let message = proto::Message {
            r#type: Some(MessageType::Discover as i32),
            discover: Some(proto::Discover {
                ns: discovering.namespace.as_ref().map(ToString::to_string),
                limit: discovering.limit,
                cookie,
            }),
            ..Default::default()
        };
        self.send(id, server, Some(command), Kind::Discover(discovering), message);
    }

    /// Queues `message` and waits for its outcome until the request timeout.
    fn send(
        &mut self,
        id: RequestId,
        server: PeerId,
        command: Option<RequestId>,
        kind: Kind,
        message: proto::Message,
    ) {
        let expects_response = !matches!(kind, Kind::Unregister { .. });
        let deadline = self.now + self.config.request_timeout;
        self.deadlines.insert((deadline, id), ());
        self.pending.insert(id, Pending { server, command, deadline, kind });
        self.transmits.push_back(ClientTransmit {
            server,
            request_id: id,
            message,
            expects_response,
        });
    }

    fn fail(&mut self, id: RequestId, error: RequestError) {
        let Some(pending) = self.take_pending(id) else {
            return;
        };
        match pending.kind {
            Kind::Register { namespace, dialect, fallback_tried } => {
                self.on_register(
                    id,
                    pending.server,
                    pending.command,
                    namespace,
                    dialect,
                    fallback_tried,
                    Err(error),
                );
            }
            Kind::Unregister { namespace } => {
                self.on_unregister(pending.server, pending.command, namespace, false);
            }
            Kind::Discover(discovering) => {
                let command = pending.command.expect("every discover is a command");
                self.events.push_back(ClientEvent::DiscoverFailed {
                    request: command,
                    server: pending.server,
                    namespace: discovering.namespace,
                    error,
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_register(
        &mut self,
        id: RequestId,
        server: PeerId,
        command: Option<RequestId>,
        namespace: Namespace,
        dialect: Dialect,
        fallback_tried: bool,
        result: Result<u64, RequestError>,
    ) {
        let key = (server, namespace.clone());
        let current = self.registrations.get(&key).is_some_and(|r| r.phase == Phase::InFlight(id));
        let confirmed = self.servers.get(&server).is_some_and(|s| s.confirmed);
        match result {
            Ok(granted) => {
                let state = self.servers.entry(server).or_default();
                state.dialect = Some(dialect);
                state.confirmed = true;
                // A server that leaves the TTL out granted what was asked
                // (or the protocol's default).
                let asked = self.registrations.get(&key).and_then(|r| r.ttl);
                let ttl = if granted == 0 { asked.unwrap_or(DEFAULT_TTL) } else { granted };
                if current {
                    let refresh_at =
                        self.config.refresh.then(|| self.now + Duration::from_secs(ttl) * 4 / 5);
                    let r = self.registrations.get_mut(&key).expect("current");
                    r.phase = Phase::Registered(refresh_at);
                    r.attempt = 0;
                } else if !self.registrations.contains_key(&key) {
                    // Unregistered while this was in flight; the server may
                    // have applied the REGISTER after the UNREGISTER.
                    let id = self.allocate_id();
                    self.send_unregister(id, None, server, namespace.clone());
                }
                self.events.push_back(ClientEvent::Registered {
                    request: command,
                    server,
                    namespace,
                    ttl,
                });
            }
            Err(error) if !fallback_tried && !confirmed && error.suggests_legacy() => {
                self.servers.entry(server).or_default().dialect = Some(Dialect::Legacy);
                self.events
                    .push_back(ClientEvent::LegacyFallback { server, reason: error.clone() });
                if current {
                    let retry = self.allocate_id();
                    self.send_register(retry, command, server, namespace, Some(Dialect::Legacy));
                } else if command.is_some() {
                    let event = ClientEvent::RegisterFailed {
                        request: command,
                        server,
                        namespace,
                        error,
                        retry_in: None,
                    };
                    self.events.push_back(event);
                }
            }
            Err(error) => {
                if dialect == Dialect::Legacy && !confirmed && error.suggests_legacy() {
                    // It reads neither dialect (or something else went wrong
                    // with both): go back to the spec's dialect next time.
                    self.servers.entry(server).or_default().dialect = None;
                }
                let mut retry_in = None;
                if current {
                    let attempt = self.registrations.get(&key).map_or(0, |r| r.attempt) + 1;
                    if error.is_transient() && attempt <= self.config.max_retries {
                        let delay = self.backoff(attempt);
                        let r = self.registrations.get_mut(&key).expect("current");
                        r.attempt = attempt;
                        r.phase = Phase::Backoff(self.now + delay);
                        retry_in = Some(delay);
                    } else {
                        self.registrations.remove(&key);
                    }
                }
                self.events.push_back(ClientEvent::RegisterFailed {
                    request: command,
                    server,
                    namespace,
                    error,
                    retry_in,
                });
            }
        }
    }

    /// `retry_base * 2^(attempt-1)`, capped at `retry_max`, less up to 25% jitter.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = self
            .config
            .retry_base
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(self.config.retry_max);
        let nanos = u64::try_from(base.as_nanos() / 4).unwrap_or(u64::MAX);
        base - Duration::from_nanos(self.rng.below_or_eq(nanos))
    }

    fn on_unregister(
        &mut self,
        server: PeerId,
        command: Option<RequestId>,
        namespace: Namespace,
        delivered: bool,
    ) {
        if command.is_some() {
            self.events.push_back(ClientEvent::Unregistered {
                request: command,
                server,
                namespace,
                delivered,
            });
        }
    }

    fn on_discover(
        &mut self,
        server: PeerId,
        command: Option<RequestId>,
        mut d: Discovering,
        message: proto::Message,
    ) {
        let command = command.expect("every discover is a command");
        let cookie_key = (server, d.namespace.clone());
        let page = match discover_page(message) {
            Ok(page) => page,
            Err(RequestError::Refused { status: Ok(ResponseStatus::EInvalidCookie), .. })
                if d.sent_cookie =>
            {
                // The server forgot us (restart) or cannot read its old
                // cookie: start over, once, under the same command.
                self.cookies.remove(&cookie_key);
                let id = self.allocate_id();
                self.send_discover(id, server, command, d);
                return;
            }
            Err(error) => {
                self.events.push_back(ClientEvent::DiscoverFailed {
                    request: command,
                    server,
                    namespace: d.namespace,
                    error,
                });
                return;
            }
        };
        let empty = page.registrations.is_empty();
        let more = !empty && page.cookie.as_ref().is_some_and(|c| !c.is_empty());
        match page.cookie.filter(|c| !c.is_empty()) {
            Some(cookie)
                if self.cookies.contains_key(&cookie_key)
                    || self.cookies.len() < self.config.max_cookies =>
            {
                self.cookies.insert(cookie_key, cookie);
            }
            // An empty cookie means "start over" (py-libp2p's last page).
            _ => {
                self.cookies.remove(&cookie_key);
            }
        }
        for reg in page.registrations {
            match self.parse_registration(reg) {
                Some(discovery) => {
                    let expires = self.now + Duration::from_secs(discovery.ttl);
                    self.cache.insert(expires, discovery.clone());
                    d.found.push(discovery);
                }
                None => d.skipped += 1,
            }
        }
        d.pages += 1;
        if d.all && more && d.pages < self.config.max_discover_pages {
            let id = self.allocate_id();
            self.send_discover(id, server, command, d);
            return;
        }
        self.events.push_back(ClientEvent::Discovered {
            request: command,
            server,
            namespace: d.namespace,
            registrations: d.found,
            skipped: d.skipped,
        });
    }

    fn parse_registration(&self, reg: proto::Register) -> Option<Discovery> {
        let namespace = Namespace::new(reg.ns.as_deref().unwrap_or(""), usize::MAX).ok()?;
        let record = Record::parse(reg.signed_peer_record?, &self.config.record_limits).ok()?;
        Some(Discovery {
            peer: record.peer?,
            addresses: record.addresses,
            namespace,
            ttl: reg.ttl.unwrap_or(0),
            record: record.bytes,
            dialect: record.dialect,
        })
    }
}

fn register_result(message: proto::Message) -> Result<u64, RequestError> {
    expect_type(&message, MessageType::RegisterResponse)?;
    let body = message.register_response.unwrap_or_default();
    check_status(body.status, body.status_text)?;
    Ok(body.ttl.unwrap_or(0))
}

fn discover_page(message: proto::Message) -> Result<proto::DiscoverResponse, RequestError> {
    expect_type(&message, MessageType::DiscoverResponse)?;
    let mut body = message.discover_response.unwrap_or_default();
    check_status(body.status, body.status_text.take())?;
    Ok(body)
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
