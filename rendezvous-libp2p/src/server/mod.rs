//! The rendezvous point as a `NetworkBehaviour`.
//!
//! ```no_run
//! use rendezvous_libp2p::server;
//! let behaviour = server::Behaviour::new(server::Config::default()).expect("valid limits");
//! ```
//!
//! Give it what identify learns ([`Behaviour::set_agent_version`]) so that
//! each peer is served the record flavour its stack verifies: of every peer
//! that connects, or, with
//! [`ServerConfig::reader_wait`](rendezvous_core::ServerConfig::reader_wait)
//! set, of the peers it asks for ([`Event::ReaderWanted`]). Raise the
//! swarm's `max_negotiating_inbound_streams` (default 128) to at least
//! [`Substreams::max_per_connection`], or bursts of new substreams wait
//! in the muxer before the handler sees them.
//!
//! The behaviour translates: requests from the handlers go to the core
//! ([`rendezvous_core::Server`]) with the time of its one clock, the core's
//! answers go back to their substreams, its store actions to the store and
//! the store's commits back; the idle policy
//! ([`rendezvous_core::idle::Idle`]) closes connections that carry no
//! request. Every limit and policy lives in the core.

mod config;
mod events;
mod handler;
mod subscribers;
mod unread;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use rendezvous_core::idle::Idle;
use rendezvous_core::{
    ConfigError, Durability, Loaded, Origin, Reader, RequestId, Server, Stats, SubscriptionId,
    Timestamp,
};

use crate::clock::{Clock, Timer};
use crate::histogram;
use crate::store::{Change, Snapshot, Store};
pub use config::{Config, Substreams};
pub use events::{Event, Rejection, StreamStats};
pub use handler::Handler;
use handler::{FromBehaviour, Shared, StreamId, ToBehaviour};
pub use rendezvous_core::RateLimit;
use unread::{OriginTotal, Totals};

/// Where a request's answer goes.
#[derive(Debug)]
struct Route {
    peer: PeerId,
    connection: ConnectionId,
    stream: StreamId,
    /// Which of the requests handed over together.
    index: usize,
}

/// A connection, the address its unread answers count under, and its
/// subscription substreams.
#[derive(Debug)]
struct Connection {
    peer: PeerId,
    origin: Option<Origin>,
    subscriptions: HashMap<StreamId, SubscriptionId>,
}

/// The rendezvous point.
pub struct Behaviour {
    core: Server,
    timer: Timer,
    idle: Idle<ConnectionId>,
    shared: Arc<Shared>,
    busy_reason: String,
    routes: HashMap<RequestId, Route>,
    next_request: u64,
    actions: VecDeque<ToSwarm<Event, FromBehaviour>>,
    streams: StreamStats,
    store: Option<Box<dyn Store>>,
    connections: HashMap<ConnectionId, Connection>,
    /// Bytes of answers not yet taken by the clients at each address with a
    /// connection open (shared with those connections' handlers).
    origins: HashMap<Origin, Arc<OriginTotal>>,
    /// Subscription substreams, both ways.
    subscribers: HashMap<SubscriptionId, (PeerId, ConnectionId, StreamId)>,
    next_subscription: u64,
}

impl Behaviour {
    /// A server with `config`, or why its limits or policies cannot work.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Behaviour::with_clock(config, Clock::new())
    }

    /// A server reading the time from `clock` (a
    /// [`ManualClock`](crate::ManualClock)'s, in tests that drive it
    /// through simulated time).
    pub fn with_clock(config: Config, clock: Clock) -> Result<Self, ConfigError> {
        config.validate()?;
        let idle_timeout = config.idle_timeout.filter(|t| !t.is_zero());
        let shared = Arc::new(Shared {
            admission: config.admission(),
            request_timeout: config.substreams.request_timeout,
            write_timeout: config.substreams.write_timeout,
            max_frame: config.core.limits.max_request_frame,
            keep_alive: idle_timeout.is_some(),
            durations: histogram::Histogram::new(),
            in_flight: Default::default(),
            shutting_down: Default::default(),
            max_subscriptions: config.core.subscriptions.max_per_peer,
        });
        let busy_reason = format!(
            "{} requests in flight on this connection, the server's limit; retry later",
            shared.admission.max_streams
        );
        Ok(Behaviour {
            core: Server::new(config.core)?,
            timer: Timer::new(clock),
            idle: Idle::new(idle_timeout),
            shared,
            busy_reason,
            routes: HashMap::new(),
            next_request: 0,
            actions: VecDeque::new(),
            streams: StreamStats::default(),
            store: None,
            connections: HashMap::new(),
            origins: HashMap::new(),
            subscribers: HashMap::new(),
            next_subscription: 0,
        })
    }

    /// A durable server: nothing is applied or answered OK before `store`
    /// has it (see [`rendezvous_core::store`]). `snapshot` is what the store
    /// held at start; what it restored is returned.
    pub fn with_store(
        config: Config,
        store: impl Store,
        snapshot: Snapshot,
    ) -> Result<(Self, Loaded), ConfigError> {
        Behaviour::with_store_and_clock(config, store, snapshot, Clock::new())
    }

    /// [`with_store`](Self::with_store), reading the time from `clock`: one
    /// that follows a shared store's (see [`Clock::follow`]), or a manual
    /// one.
    pub fn with_store_and_clock(
        mut config: Config,
        store: impl Store,
        snapshot: Snapshot,
        clock: Clock,
    ) -> Result<(Self, Loaded), ConfigError> {
        config.core.durability =
            if store.is_shared() { Durability::Shared } else { Durability::Local };
        let mut behaviour = Behaviour::with_clock(config, clock)?;
        let now = behaviour.now();
        let loaded = behaviour.core.load(now, snapshot.registrations, snapshot.last_seq);
        behaviour.store = Some(Box::new(store));
        behaviour.route_core_outputs();
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

    /// How long the store took to commit each write, from its hand-over to
    /// its commit; `None` without a store.
    pub fn commit_durations(&self) -> Option<histogram::Snapshot> {
        self.store.as_ref().map(|_| self.core.commit_durations())
    }

    /// Writes handed to the store and not yet committed.
    pub fn pending_writes(&self) -> usize {
        self.core.pending_writes()
    }

    /// Whether the point has a store.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Why the store cannot take writes now, if it cannot (`None` without a
    /// store, or when it can).
    pub fn store_trouble(&self) -> Option<String> {
        self.store.as_ref().and_then(|store| store.trouble())
    }

    /// This machine's wall clock minus a shared store's, in seconds, once
    /// known.
    pub fn store_clock_offset(&self) -> Option<f64> {
        self.store.as_ref().and_then(|store| store.clock_offset())
    }

    /// Starts a graceful shutdown: new rendezvous substreams are reset
    /// (counted as [`Rejection::ShuttingDown`]); requests already read are
    /// answered. Wait for [`in_flight`](Self::in_flight) and
    /// [`pending_writes`](Self::pending_writes) to reach 0, then close.
    pub fn shut_down(&mut self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Tells the server what `peer` reads; see
    /// [`Server::set_reader_dialect`].
    pub fn set_reader_dialect(&mut self, peer: PeerId, reader: impl Into<Reader>) {
        self.core.set_reader_dialect(self.now(), peer, reader);
        self.route_core_outputs();
    }

    /// Tells the server the agent version identify learned for `peer`, from
    /// which it knows the record flavour `peer` reads
    /// ([`Reader::from_agent_version`]). Call it on every identify
    /// `Received` event.
    pub fn set_agent_version(&mut self, peer: PeerId, agent_version: &str) {
        match Reader::from_agent_version(agent_version) {
            Some(reader) => self.set_reader_dialect(peer, reader),
            None => self.reader_unknown(peer),
        }
    }

    /// Tells the server that asking `peer` what it reads
    /// ([`Event::ReaderWanted`]) gave no answer; see
    /// [`Server::reader_unknown`].
    pub fn reader_unknown(&mut self, peer: PeerId) {
        self.core.reader_unknown(self.now(), peer);
        self.route_core_outputs();
    }

    /// Whether the point asks what a peer reads only when it needs to
    /// ([`ServerConfig::reader_wait`](rendezvous_core::ServerConfig::reader_wait)),
    /// through [`Event::ReaderWanted`]. If not, it must be told of every
    /// peer unasked, as identify does when it asks every peer that connects.
    pub fn asks_for_readers(&self) -> bool {
        self.core.asks_for_readers()
    }

    fn now(&self) -> Timestamp {
        self.timer.now()
    }

    fn on_handler_event(&mut self, peer: PeerId, connection: ConnectionId, event: ToBehaviour) {
        let rejection = match event {
            ToBehaviour::Request { stream, bodies, busy } => {
                // A substream's next batch comes once the last is answered:
                // its indices start again from 0.
                let handed = self.hand_over(peer, connection, stream, busy, bodies);
                self.route_core_outputs();
                match handed {
                    Ok(()) => return,
                    Err(error) => Rejection::Malformed(error),
                }
            }
            ToBehaviour::Failed { error } if error.kind() == io::ErrorKind::InvalidData => {
                Rejection::Malformed(error)
            }
            ToBehaviour::Failed { error } => Rejection::Io(error),
            ToBehaviour::TimedOut => Rejection::TimedOut,
            ToBehaviour::Refused => Rejection::OverLimit,
            ToBehaviour::ShuttingDown => Rejection::ShuttingDown,
            ToBehaviour::Empty => Rejection::Empty,
            ToBehaviour::Subscribe { stream, body } => {
                let subscribed = self.subscribe(peer, connection, stream, &body);
                self.route_core_outputs();
                match subscribed {
                    Ok(()) => return,
                    Err(error) => Rejection::Malformed(error),
                }
            }
            ToBehaviour::PushWritten { stream, bytes } => {
                if let Some(&id) = self.subscription(connection, stream) {
                    self.core.handle_push_written(id, bytes);
                    self.route_core_outputs();
                }
                return;
            }
            ToBehaviour::Unsubscribed { stream } => {
                let gone = self.connections.get_mut(&connection);
                if let Some(id) = gone.and_then(|c| c.subscriptions.remove(&stream)) {
                    self.subscribers.remove(&id);
                    self.idle.answered(self.now(), connection);
                    self.core.handle_unsubscribed(id);
                    self.route_core_outputs();
                }
                return;
            }
        };
        self.rejected(peer, rejection);
    }

    /// Hands a subscription's request to the core; while it is open, its
    /// connection is not idle.
    fn subscribe(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        stream: StreamId,
        body: &[u8],
    ) -> io::Result<()> {
        let now = self.now();
        self.next_subscription += 1;
        let id = SubscriptionId(self.next_subscription);
        if let Err(error) = self.core.handle_subscribe(now, peer, id, body) {
            let end = FromBehaviour::Push { stream, frame: None, end: true };
            self.notify(peer, connection, end);
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        self.subscribers.insert(id, (peer, connection, stream));
        if let Some(c) = self.connections.get_mut(&connection) {
            c.subscriptions.insert(stream, id);
        }
        self.idle.request(now, connection);
        Ok(())
    }

    /// The subscription on `stream` of `connection`, if it is one.
    fn subscription(&self, connection: ConnectionId, stream: StreamId) -> Option<&SubscriptionId> {
        self.connections.get(&connection)?.subscriptions.get(&stream)
    }

    fn notify(&mut self, peer: PeerId, connection: ConnectionId, event: FromBehaviour) {
        self.actions.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event,
        });
    }

    fn rejected(&mut self, peer: PeerId, reason: Rejection) {
        self.streams.count(&reason);
        let event = Event::StreamRejected { peer, reason };
        self.actions.push_back(ToSwarm::GenerateEvent(event));
    }

    /// Hands a substream's requests to the core, in order. A malformed one
    /// is answered by closing the substream, and those after it are
    /// dropped: its error is returned.
    fn hand_over(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        stream: StreamId,
        busy: bool,
        bodies: impl IntoIterator<Item = Bytes>,
    ) -> io::Result<()> {
        let now = self.now();
        for (index, body) in bodies.into_iter().enumerate() {
            self.next_request += 1;
            let id = RequestId(self.next_request);
            self.routes.insert(id, Route { peer, connection, stream, index });
            self.idle.request(now, connection);
            let handled = if busy {
                self.core.handle_frame_busy(now, peer, id, &body, &self.busy_reason)
            } else {
                self.core.handle_frame(now, peer, id, &body)
            };
            if let Err(error) = handled {
                self.routes.remove(&id);
                self.idle.answered(now, connection);
                self.answer(peer, connection, FromBehaviour::one(stream, index, None, true));
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
        Ok(())
    }

    fn answer(&mut self, peer: PeerId, connection: ConnectionId, answer: FromBehaviour) {
        // Answers to one substream queued one after another go as one
        // event: one trip through the swarm for a batch.
        let answer = match answer {
            FromBehaviour::Answers(answer) => answer,
            push => return self.notify(peer, connection, push),
        };
        if let Some(ToSwarm::NotifyHandler {
            handler: NotifyHandler::One(to),
            event: FromBehaviour::Answers(event),
            ..
        }) = self.actions.back_mut()
            && *to == connection
            && event.stream == answer.stream
        {
            event.answers.extend(answer.answers);
            return;
        }
        self.notify(peer, connection, FromBehaviour::Answers(answer));
    }

    /// Moves the core's outputs where they go: store actions to the store,
    /// answers to their substreams, events to the swarm; re-arms the timer.
    fn route_core_outputs(&mut self) {
        if let Some(store) = &mut self.store {
            while let Some(action) = self.core.poll_store() {
                store.submit(action);
            }
        }
        let now = self.now();
        while let Some(transmit) = self.core.poll_transmit() {
            // Gone if its connection closed meanwhile.
            if let Some(route) = self.routes.remove(&transmit.request_id) {
                self.idle.answered(now, route.connection);
                let answer =
                    FromBehaviour::one(route.stream, route.index, transmit.to_frame(), false);
                self.answer(route.peer, route.connection, answer);
            }
        }
        while let Some(push) = self.core.poll_push() {
            // Gone if its substream or connection ended meanwhile.
            if let Some(&(peer, connection, stream)) = self.subscribers.get(&push.subscription) {
                let frame = Some(push.frame);
                self.notify(peer, connection, FromBehaviour::Push { stream, frame, end: push.end });
            }
        }
        while let Some(peer) = self.core.poll_reader_wanted() {
            self.actions.push_back(ToSwarm::GenerateEvent(Event::ReaderWanted { peer }));
        }
        while let Some(event) = self.core.poll_event() {
            self.actions.push_back(ToSwarm::GenerateEvent(Event::Core(event)));
        }
        let deadlines = [self.core.poll_timeout(), self.idle.poll_timeout()];
        self.timer.set(deadlines.into_iter().flatten().min());
    }

    /// Closes the connections idle at `now`.
    fn close_idle(&mut self, now: Timestamp) {
        while let Some(connection) = self.idle.poll_close(now) {
            if let Some(c) = self.connections.get(&connection) {
                self.actions.push_back(ToSwarm::CloseConnection {
                    peer_id: c.peer,
                    connection: CloseConnection::One(connection),
                });
            }
        }
    }

    fn connected(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        origin: Option<Origin>,
    ) -> Totals {
        let total = origin.map(|origin| {
            self.core.set_peer_origin(peer, origin);
            self.origins.entry(origin).or_default().clone()
        });
        let subscriptions = HashMap::new();
        self.connections.insert(connection, Connection { peer, origin, subscriptions });
        self.idle.opened(self.now(), connection);
        self.route_core_outputs();
        Totals::new(total)
    }

    fn on_store_change(&mut self, change: Change) {
        let now = self.now();
        match change {
            Change::Replicated(change) => self.core.apply_replicated(now, change),
            Change::Resync(snapshot) => {
                self.core.resync(now, snapshot.registrations, snapshot.last_seq);
            }
            Change::Lost { after, up_to } => self.core.handle_lost_writes(now, after, up_to),
        }
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
        let totals = self.connected(connection, peer, crate::origin_of(remote));
        Ok(Handler::new(self.shared.clone(), totals))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let totals = self.connected(connection, peer, None);
        Ok(Handler::new(self.shared.clone(), totals))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            self.routes.retain(|_, route| route.connection != closed.connection_id);
            self.idle.closed(closed.connection_id);
            let gone = self.connections.remove(&closed.connection_id);
            for id in gone.iter().flat_map(|c| c.subscriptions.values()) {
                self.subscribers.remove(id);
                self.core.handle_unsubscribed(*id);
            }
            // The address's total goes with its last connection (whose
            // handler has dropped its own reference by now).
            if let Some(origin) = gone.and_then(|c| c.origin)
                && self.origins.get(&origin).is_some_and(|t| Arc::strong_count(t) == 1)
            {
                self.origins.remove(&origin);
            }
            if closed.remaining_established == 0 {
                self.core.handle_disconnected(self.timer.now(), &closed.peer_id);
                self.route_core_outputs();
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.on_handler_event(peer, connection, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return Poll::Ready(action);
            }
            let commit = self.store.as_mut().map(|store| store.poll_commit(cx));
            if let Some(Poll::Ready(commit)) = commit {
                let now = self.now();
                self.core.handle_commit(now, commit);
                self.route_core_outputs();
                continue;
            }
            let change = self.store.as_mut().map(|store| store.poll_change(cx));
            if let Some(Poll::Ready(change)) = change {
                self.on_store_change(change);
                self.route_core_outputs();
                continue;
            }
            match self.timer.poll(cx) {
                Poll::Ready(now) => {
                    self.core.handle_timeout(now);
                    self.close_idle(now);
                    self.route_core_outputs();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests;
