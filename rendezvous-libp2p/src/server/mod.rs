//! The rendezvous point as a `NetworkBehaviour`.
//!
//! ```no_run
//! use rendezvous_libp2p::server;
//! let behaviour = server::Behaviour::new(server::Config::default()).expect("valid limits");
//! ```
//!
//! Give it what identify learns ([`Behaviour::set_agent_version`]) so that
//! each peer is served the record flavour its stack verifies. Raise the
//! swarm's `max_negotiating_inbound_streams` (default 128) to at least
//! [`Config::max_streams_per_connection`], or bursts of new substreams wait
//! in the muxer before the handler sees them.

mod handler;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures_timer::Delay;
use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use rendezvous_core::codec;
use rendezvous_core::proto::MessageType;
use rendezvous_core::{
    LimitsError, Loaded, Origin, Reader, RequestId, Server, ServerConfig, ServerEvent, Stats,
    Timestamp,
};

use crate::clock::{Clock, Timer};
use crate::histogram;
use crate::store::{Change, Snapshot, Store};
pub use handler::Handler;
use handler::{FromBehaviour, Shared, StreamId, ToBehaviour, Totals};
use rendezvous_core::store::{ActionId, StoreAction};

/// Configuration of the server behaviour.
///
/// Memory per connection is bounded by the substream limits: each open
/// substream holds at most one request frame being read
/// ([`Limits::max_request_frame`](rendezvous_core::Limits::max_request_frame),
/// 8 KiB) and a 1 KiB read buffer, and, while the behaviour has its
/// requests, at most 9 KiB more of requests pipelined behind the first (not
/// for busy substreams), so with the defaults the handler holds at most
/// 256 × 18 KiB + 32 × 9 KiB ≈ 4.8 MiB of requests. Answers the client has
/// not taken yet are bounded by
/// [`max_unread_bytes_per_connection`](Self::max_unread_bytes_per_connection)
/// (16 MiB) and, over all connections from its address, by
/// [`max_unread_bytes_per_address`](Self::max_unread_bytes_per_address)
/// (256 MiB), or one batch's if more: a batch ends at its first DISCOVER, so
/// it holds at most one page
/// ([`Limits::max_response_frame`](rendezvous_core::Limits::max_response_frame),
/// 1 MiB). The muxer buffers what a peer sends ahead on a substream the
/// handler is not reading; yamux allows 256 KiB per substream, so also bound
/// its number of substreams (the host of `rendezvous-async-std` sets it to
/// the two limits here plus a few).
#[derive(Clone, Debug)]
pub struct Config {
    /// The core's limits and policies. Defaults to [`ServerConfig::default`]
    /// with [`initial_sequence`](ServerConfig::initial_sequence) set to the
    /// Unix time in microseconds, so that cookies from an earlier run of the
    /// same point read as "before everything now".
    pub core: ServerConfig,
    /// Most rendezvous substreams open at once on one connection. Defaults
    /// to 256 (rust-libp2p clients keep up to 100 in flight, js-libp2p 64).
    pub max_streams_per_connection: usize,
    /// Substreams beyond that, each read once and answered `E_UNAVAILABLE`
    /// with a `statusText` naming the limit, then closed; beyond these, a
    /// substream is reset on arrival. Defaults to 32.
    pub max_busy_streams_per_connection: usize,
    /// Longest a substream may take to deliver a complete request, from its
    /// opening or from the previous answer; then it is reset. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Longest wait to write one response. Defaults to 10 s.
    pub write_timeout: Duration,
    /// Most bytes of answers one connection may hold for a client that has
    /// not taken them yet, a DISCOVER not yet answered counting as a page
    /// as long as [`Limits::max_response_frame`](rendezvous_core::Limits::max_response_frame);
    /// past it, the connection's next requests wait, read but not handled,
    /// until the client takes some (a batch alone goes whatever it may
    /// take). A client that asks for pages and does not read them so stops
    /// being served instead of growing the point's memory. Defaults to
    /// 16 MiB: sixteen DISCOVERs at once before their pages are sized, and
    /// any number of small answers.
    pub max_unread_bytes_per_connection: usize,
    /// The same over all connections from one address (an IPv6 one by its
    /// /64), so that a client cannot multiply the bound by its connections.
    /// Defaults to 256 MiB: as many DISCOVERs at once before their pages are
    /// sized as one connection may have substreams, from all the clients
    /// behind one address. A connection held back by its address's total
    /// looks at it again every 50 ms (its own answers wake it at once).
    pub max_unread_bytes_per_address: usize,
    /// Close a connection that has carried no rendezvous request for this
    /// long, whatever else (identify, ping) still uses it; `None` never.
    /// Defaults to 60 s. Clients reconnect when they next need the point.
    pub idle_timeout: Option<Duration>,
    /// Most requests per second one peer may make, over all its
    /// connections; beyond it requests are answered `E_UNAVAILABLE`
    /// (UNREGISTERs are still applied). `None`, the default, for no limit.
    /// A REGISTER with a record not seen before costs a signature check
    /// (tens of µs), which this bounds per peer.
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket per peer: `per_second` tokens added each second, up to
/// `burst`; each request takes one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

impl RateLimit {
    /// `per_second` sustained, bursts of twice that.
    pub fn per_second(per_second: f64) -> Self {
        RateLimit { per_second, burst: (2.0 * per_second).max(1.0) }
    }
}

impl Default for Config {
    fn default() -> Self {
        let core = ServerConfig {
            initial_sequence: Clock::new().unix_micros(),
            ..ServerConfig::default()
        };
        Config {
            core,
            max_streams_per_connection: 256,
            max_busy_streams_per_connection: 32,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_unread_bytes_per_connection: 16 << 20,
            max_unread_bytes_per_address: 256 << 20,
            idle_timeout: Some(Duration::from_secs(60)),
            rate_limit: None,
        }
    }
}

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
    /// [`Config::request_timeout`].
    TimedOut,
    /// It arrived while the connection was over both substream limits.
    OverLimit,
    /// It ended without sending a request.
    Empty,
    /// It arrived while the point was shutting down
    /// ([`Behaviour::drain`]).
    ShuttingDown,
}

impl Rejection {
    /// A short name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Io(_) => "io",
            Rejection::TimedOut => "timeout",
            Rejection::OverLimit => "over_limit",
            Rejection::Empty => "empty",
            Rejection::ShuttingDown => "shutting_down",
        }
    }
}

/// Substreams rejected since the start, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Sent something that is not a request.
    pub malformed: u64,
    /// Failed to read or write.
    pub io: u64,
    /// Too slow to deliver a request.
    pub timed_out: u64,
    /// Reset for being over the connection's limits.
    pub over_limit: u64,
    /// Ended without sending a request.
    pub empty: u64,
    /// Reset because the point was shutting down.
    pub shutting_down: u64,
}

impl StreamStats {
    /// Every reason with its count, named as [`Rejection::name`] names it.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("malformed", self.malformed),
            ("io", self.io),
            ("timeout", self.timed_out),
            ("over_limit", self.over_limit),
            ("empty", self.empty),
            ("shutting_down", self.shutting_down),
        ]
    }
}

/// A connection, for the idle timeout.
#[derive(Debug)]
struct Connection {
    peer: PeerId,
    /// When it last carried a request or an answer.
    active: Instant,
    /// Its address, whose total of unread answers it counts into.
    origin: Option<Origin>,
}

/// A peer's token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Where a request's answer goes.
#[derive(Debug)]
struct Route {
    peer: PeerId,
    connection: ConnectionId,
    stream: StreamId,
    /// Which of the requests handed over together.
    index: usize,
}

/// With a store, one substream's requests behind those not yet answered:
/// a REGISTER's answer waits for its commit, and a DISCOVER or an
/// UNREGISTER behind it must see what it stored, so it waits for the
/// answers before it; REGISTERs go on at once, so that their commits share
/// the store's batches.
#[derive(Debug, Default)]
struct Ordered {
    /// Requests handed to the core and not yet answered.
    unanswered: usize,
    /// Requests waiting, in order, each with its index in the substream's
    /// batch.
    waiting: VecDeque<(usize, Bytes)>,
}

/// The rendezvous point.
pub struct Behaviour {
    core: Server,
    timer: Timer,
    shared: Arc<Shared>,
    busy_reason: String,
    routes: HashMap<RequestId, Route>,
    /// With a store, the substreams with requests not yet answered.
    ordered: HashMap<(ConnectionId, StreamId), Ordered>,
    next_request: u64,
    actions: VecDeque<ToSwarm<Event, FromBehaviour>>,
    streams: StreamStats,
    store: Option<Box<dyn Store>>,
    connections: HashMap<ConnectionId, Connection>,
    /// Bytes of answers not yet taken by the clients at each address with a
    /// connection open (shared with those connections' handlers).
    unread_by_origin: HashMap<Origin, Arc<AtomicUsize>>,
    idle_timeout: Option<Duration>,
    /// When to look for idle connections next.
    sweep: Option<Delay>,
    rate_limit: Option<RateLimit>,
    rate_reason: String,
    buckets: HashMap<PeerId, Bucket>,
    /// When each put still waiting for its commit was handed to the store.
    submitted: HashMap<ActionId, Instant>,
    commit_durations: histogram::Histogram,
}

impl Behaviour {
    /// A server with `config`, or why its limits cannot work.
    pub fn new(config: Config) -> Result<Self, LimitsError> {
        let idle_timeout = config.idle_timeout.filter(|t| !t.is_zero());
        let shared = Arc::new(Shared {
            max_streams: config.max_streams_per_connection.max(1),
            max_busy_streams: config.max_busy_streams_per_connection,
            request_timeout: config.request_timeout,
            write_timeout: config.write_timeout,
            max_frame: config.core.limits.max_request_frame,
            max_unwritten: config.max_unread_bytes_per_connection,
            max_unwritten_per_origin: config.max_unread_bytes_per_address,
            max_page: config.core.limits.max_response_frame,
            keep_alive: idle_timeout.is_some(),
            durations: histogram::Histogram::new(),
            in_flight: Default::default(),
            draining: Default::default(),
        });
        let busy_reason = format!(
            "{} requests in flight on this connection, the server's limit; retry later",
            shared.max_streams
        );
        let rate_reason = config.rate_limit.map_or_else(String::new, |rate| {
            format!(
                "over {} requests/s from this peer, the server's limit; retry later",
                rate.per_second
            )
        });
        Ok(Behaviour {
            core: Server::new(config.core)?,
            timer: Timer::new(Clock::new()),
            shared,
            busy_reason,
            routes: HashMap::new(),
            ordered: HashMap::new(),
            next_request: 0,
            actions: VecDeque::new(),
            streams: StreamStats::default(),
            store: None,
            connections: HashMap::new(),
            unread_by_origin: HashMap::new(),
            idle_timeout,
            sweep: None,
            rate_limit: config.rate_limit,
            rate_reason,
            buckets: HashMap::new(),
            submitted: HashMap::new(),
            commit_durations: histogram::Histogram::new(),
        })
    }

    /// A durable server: nothing is applied or answered OK before `store`
    /// has it (see [`rendezvous_core::store`]). `snapshot` is what the store
    /// held at start; what it restored is returned.
    pub fn with_store(
        mut config: Config,
        store: impl Store,
        snapshot: Snapshot,
    ) -> Result<(Self, Loaded), LimitsError> {
        config.core.durable = true;
        let mut behaviour = Behaviour::new(config)?;
        let now = behaviour.now();
        let loaded = behaviour.core.load(now, snapshot.registrations, snapshot.last_seq);
        behaviour.store = Some(Box::new(store));
        behaviour.drain_core();
        Ok((behaviour, loaded))
    }

    /// The core, for statistics and inspection.
    pub fn core(&self) -> &Server {
        &self.core
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Substreams rejected since the start.
    pub fn stream_stats(&self) -> StreamStats {
        self.streams
    }

    /// Requests read and not yet answered, on every connection.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// How long requests took, from their last byte read to their answer's
    /// last byte written.
    pub fn request_durations(&self) -> histogram::Snapshot {
        self.shared.durations.snapshot()
    }

    /// How long the store took to commit each put, from its submission to
    /// its commit; `None` without a store.
    pub fn commit_durations(&self) -> Option<histogram::Snapshot> {
        self.store.as_ref().map(|_| self.commit_durations.snapshot())
    }

    /// Puts handed to the store and not yet committed.
    pub fn pending_puts(&self) -> usize {
        self.core.pending_puts()
    }

    /// Starts a graceful shutdown: new rendezvous substreams are reset
    /// (counted as [`Rejection::ShuttingDown`]); requests already read are
    /// answered. Wait for [`in_flight`](Self::in_flight) to reach 0, then
    /// close.
    pub fn drain(&mut self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Tells the server what `peer` reads; see
    /// [`Server::set_reader_dialect`].
    pub fn set_reader_dialect(&mut self, peer: PeerId, reader: impl Into<Reader>) {
        self.core.set_reader_dialect(peer, reader);
    }

    /// Tells the server the agent version identify learned for `peer`, from
    /// which it knows the record flavour `peer` reads
    /// ([`Reader::from_agent_version`]). Call it on every identify
    /// `Received` event.
    pub fn set_agent_version(&mut self, peer: PeerId, agent_version: &str) {
        if let Some(reader) = Reader::from_agent_version(agent_version) {
            self.core.set_reader_dialect(peer, reader);
        }
    }

    fn now(&self) -> Timestamp {
        self.timer.now()
    }

    fn on_request(&mut self, peer: PeerId, connection: ConnectionId, request: ToBehaviour) {
        let reason = match request {
            ToBehaviour::Request { stream, bodies, busy } => {
                if let Some(c) = self.connections.get_mut(&connection) {
                    c.active = Instant::now();
                }
                // A substream's next batch comes once the last is answered:
                // its indices start again from 0.
                let requests = bodies.into_iter().enumerate();
                let handed = self.hand_over(peer, connection, stream, busy, requests);
                self.drain_core();
                let Err(error) = handed else {
                    return;
                };
                self.malformed(error)
            }
            ToBehaviour::Failed { error } if error.kind() == io::ErrorKind::InvalidData => {
                self.malformed(error)
            }
            ToBehaviour::Failed { error } => {
                self.streams.io += 1;
                Rejection::Io(error)
            }
            ToBehaviour::TimedOut => {
                self.streams.timed_out += 1;
                Rejection::TimedOut
            }
            ToBehaviour::Refused => {
                self.streams.over_limit += 1;
                Rejection::OverLimit
            }
            ToBehaviour::Draining => {
                self.streams.shutting_down += 1;
                Rejection::ShuttingDown
            }
            ToBehaviour::Empty => {
                self.streams.empty += 1;
                Rejection::Empty
            }
        };
        self.rejected(peer, reason);
    }

    /// Counts a substream closed for a malformed request.
    fn malformed(&mut self, error: io::Error) -> Rejection {
        self.streams.malformed += 1;
        Rejection::Malformed(error)
    }

    fn rejected(&mut self, peer: PeerId, reason: Rejection) {
        let event = Event::StreamRejected { peer, reason };
        self.actions.push_back(ToSwarm::GenerateEvent(event));
    }

    /// Hands a substream's requests, each with its index in the batch, to
    /// the core, in order. A malformed one is answered by closing the
    /// substream, and those after it are dropped: its error is returned.
    /// With a store, a request that must wait for those before it (see
    /// [`Ordered`]) waits with all after it.
    fn hand_over(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        stream: StreamId,
        busy: bool,
        requests: impl IntoIterator<Item = (usize, Bytes)>,
    ) -> io::Result<()> {
        let now = self.now();
        let instant = Instant::now();
        let mut requests = requests.into_iter();
        while let Some((index, body)) = requests.next() {
            if self.store.is_some() {
                let ordered = self.ordered.entry((connection, stream)).or_default();
                let waits =
                    !ordered.waiting.is_empty() || (ordered.unanswered > 0 && !is_register(&body));
                if waits {
                    ordered.waiting.push_back((index, body));
                    ordered.waiting.extend(requests);
                    return Ok(());
                }
                ordered.unanswered += 1;
            }
            self.next_request += 1;
            let id = RequestId(self.next_request);
            self.routes.insert(id, Route { peer, connection, stream, index });
            let handled = if busy {
                self.core.handle_frame_busy(now, peer, id, &body, &self.busy_reason)
            } else if !self.take_token(peer, instant) {
                self.core.handle_frame_busy(now, peer, id, &body, &self.rate_reason)
            } else {
                self.core.handle_frame(now, peer, id, &body)
            };
            // Those after it are not handled: nothing waits while a request
            // is handed over, and the rest of `requests` is dropped.
            if let Err(error) = handled {
                self.routes.remove(&id);
                self.answered(connection, stream);
                self.answer(peer, connection, FromBehaviour::one(stream, index, None, true));
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
        Ok(())
    }

    /// One of the substream's requests is answered: whether the requests
    /// waiting behind it may go on now.
    fn answered(&mut self, connection: ConnectionId, stream: StreamId) -> bool {
        let key = (connection, stream);
        let Some(ordered) = self.ordered.get_mut(&key) else {
            return false;
        };
        ordered.unanswered = ordered.unanswered.saturating_sub(1);
        if ordered.unanswered > 0 {
            return false;
        }
        if ordered.waiting.is_empty() {
            self.ordered.remove(&key);
            return false;
        }
        true
    }

    /// Whether `peer` may make a request now, under the rate limit.
    fn take_token(&mut self, peer: PeerId, now: Instant) -> bool {
        let Some(rate) = self.rate_limit else {
            return true;
        };
        let bucket = self.buckets.entry(peer).or_insert(Bucket { tokens: rate.burst, at: now });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = (bucket.tokens + refill).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Closes connections that carried no request for the idle timeout and
    /// have none in flight; re-arms the sweep.
    fn sweep_idle(&mut self, cx: &mut Context<'_>) {
        let Some(timeout) = self.idle_timeout else {
            return;
        };
        let every = (timeout / 4).max(Duration::from_millis(100));
        let sweep = self.sweep.get_or_insert_with(|| Delay::new(every));
        if sweep.poll_unpin(cx).is_pending() {
            return;
        }
        let now = Instant::now();
        let busy: std::collections::HashSet<ConnectionId> =
            self.routes.values().map(|r| r.connection).collect();
        for (&id, c) in &self.connections {
            if now.saturating_duration_since(c.active) >= timeout && !busy.contains(&id) {
                self.actions.push_back(ToSwarm::CloseConnection {
                    peer_id: c.peer,
                    connection: CloseConnection::One(id),
                });
            }
        }
        // Addresses whose last connection closed while a handler still
        // held their total.
        self.unread_by_origin.retain(|_, total| Arc::strong_count(total) > 1);
        let mut next = Delay::new(every);
        let _ = next.poll_unpin(cx); // registers the waker
        self.sweep = Some(next);
    }

    fn answer(&mut self, peer: PeerId, connection: ConnectionId, answer: FromBehaviour) {
        // Answers to one substream queued one after another go as one
        // event: one trip through the swarm for a batch.
        if let Some(ToSwarm::NotifyHandler { handler: NotifyHandler::One(to), event, .. }) =
            self.actions.back_mut()
            && *to == connection
            && event.stream == answer.stream
        {
            event.answers.extend(answer.answers);
            return;
        }
        self.actions.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: answer,
        });
    }

    /// Routes the core's answers to their substreams (handing over the
    /// requests that waited for them), its events to the swarm, and re-arms
    /// the timer.
    fn drain_core(&mut self) {
        let mut go_on = Vec::new();
        loop {
            if let Some(store) = &mut self.store {
                while let Some(action) = self.core.poll_store() {
                    if let StoreAction::Put { id, .. } = &action {
                        self.submitted.insert(*id, Instant::now());
                    }
                    store.submit(action);
                }
            }
            while let Some(transmit) = self.core.poll_transmit() {
                // Gone if its connection closed meanwhile.
                if let Some(route) = self.routes.remove(&transmit.request_id) {
                    if let Some(c) = self.connections.get_mut(&route.connection) {
                        c.active = Instant::now();
                    }
                    if self.answered(route.connection, route.stream) {
                        go_on.push((route.connection, route.stream));
                    }
                    let answer =
                        FromBehaviour::one(route.stream, route.index, transmit.to_frame(), false);
                    self.answer(route.peer, route.connection, answer);
                }
            }
            while let Some(event) = self.core.poll_event() {
                self.actions.push_back(ToSwarm::GenerateEvent(Event::Core(event)));
            }
            if go_on.is_empty() {
                break;
            }
            for (connection, stream) in go_on.drain(..) {
                let peer = self.connections.get(&connection).map(|c| c.peer);
                let ordered = self.ordered.get_mut(&(connection, stream));
                let (Some(peer), Some(ordered)) = (peer, ordered) else {
                    continue;
                };
                let waiting = std::mem::take(&mut ordered.waiting);
                if let Err(error) = self.hand_over(peer, connection, stream, false, waiting) {
                    let reason = self.malformed(error);
                    self.rejected(peer, reason);
                }
            }
        }
        self.timer.set(self.core.poll_timeout());
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let origin = crate::origin_of(remote);
        let unread = origin.map(|origin| {
            self.core.set_peer_origin(peer, origin);
            self.unread_by_origin.entry(origin).or_default().clone()
        });
        let active = Instant::now();
        self.connections.insert(connection, Connection { peer, active, origin });
        Ok(Handler::new(self.shared.clone(), Totals::new(unread)))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let active = Instant::now();
        self.connections.insert(connection, Connection { peer, active, origin: None });
        Ok(Handler::new(self.shared.clone(), Totals::default()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            self.routes.retain(|_, route| route.connection != closed.connection_id);
            self.ordered.retain(|(connection, _), _| *connection != closed.connection_id);
            let gone = self.connections.remove(&closed.connection_id);
            // The address's total goes with its last connection (whose
            // handler has dropped its own reference by now).
            if let Some(origin) = gone.and_then(|c| c.origin)
                && self.unread_by_origin.get(&origin).is_some_and(|t| Arc::strong_count(t) == 1)
            {
                self.unread_by_origin.remove(&origin);
            }
            if closed.remaining_established == 0 {
                self.buckets.remove(&closed.peer_id);
                self.core.handle_disconnected(self.timer.now(), &closed.peer_id);
                self.drain_core();
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.on_request(peer, connection, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        self.sweep_idle(cx);
        loop {
            if let Some(action) = self.actions.pop_front() {
                return Poll::Ready(action);
            }
            let commit = self.store.as_mut().map(|store| store.poll_commit(cx));
            if let Some(Poll::Ready(commit)) = commit {
                if let Some(since) = self.submitted.remove(&commit.id()) {
                    self.commit_durations.observe(since.elapsed());
                }
                let now = self.now();
                self.core.handle_commit(now, commit);
                self.drain_core();
                continue;
            }
            let change = self.store.as_mut().map(|store| store.poll_change(cx));
            if let Some(Poll::Ready(change)) = change {
                let now = self.now();
                match change {
                    Change::Replicated(change) => self.core.apply_replicated(now, change),
                    Change::Resync(snapshot) => {
                        self.core.resync(now, snapshot.registrations, snapshot.last_seq);
                    }
                }
                self.drain_core();
                continue;
            }
            match self.timer.poll(cx) {
                Poll::Ready(now) => {
                    self.core.handle_timeout(now);
                    self.drain_core();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Whether `body` is a REGISTER, by its type field alone (the core decodes
/// the rest, and refuses it if malformed, in its turn).
fn is_register(body: &[u8]) -> bool {
    codec::peek_type(body) == Some(MessageType::Register)
}
