//! The rendezvous client as a `NetworkBehaviour`.
//!
//! ```no_run
//! use rendezvous_libp2p::client;
//! use rendezvous_libp2p::core::Namespace;
//! # fn demo(keypair: libp2p_identity::Keypair, server: libp2p_identity::PeerId) {
//! let mut behaviour =
//!     client::Behaviour::new(keypair, client::Config::default()).expect("valid config");
//! let chat = Namespace::new("chat", 255).expect("a valid namespace");
//! behaviour.register(server, chat.clone(), None).expect("room for the request");
//! behaviour.discover(server, Some(chat), None).expect("room for the request");
//! # }
//! ```
//!
//! The addresses announced are the swarm's confirmed external addresses, or
//! its listen addresses while none is confirmed (what a LAN or loopback
//! deployment has); every change re-registers everywhere.

mod handler;
mod pipeline;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::{Keypair, PeerId};
use libp2p_swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use std::time::Duration;

use rendezvous_core::{
    Client, ClientConfig, ClientConfigError, ClientEvent, ClientTransmit, CommandError, Discovery,
    Failure, Namespace, RequestId,
};

use crate::clock::{self, Clock, Timer};
pub use handler::Handler;
use handler::{Command, Outcome, Request};

/// Configuration of the client behaviour.
#[derive(Clone, Debug)]
pub struct Config {
    /// The core's policies: refresh, timeouts, retries, bounds. Defaults to
    /// [`ClientConfig::default`] with
    /// [`record_seq`](ClientConfig::record_seq) set to the Unix time in
    /// milliseconds, so that a restarted client's records supersede the
    /// ones it signed before.
    pub core: ClientConfig,
    /// Seed of the retry jitter. Defaults to one drawn from the system clock,
    /// so that clients started together spread their retries.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        let clock = Clock::new();
        let micros = clock.unix_micros();
        let core = ClientConfig { record_seq: micros / 1000, ..ClientConfig::default() };
        Config { core, seed: clock::seed() }
    }
}

/// What the client behaviour reports: the core's events (see
/// [`ClientEvent`]; those with a `request` complete the command that
/// returned it).
pub type Event = ClientEvent;

/// The rendezvous client.
pub struct Behaviour {
    core: Client,
    timer: Timer,
    limits: Arc<handler::Limits>,
    connections: BTreeMap<PeerId, Vec<ConnectionId>>,
    /// Requests waiting for a connection to their server.
    waiting: BTreeMap<PeerId, Vec<ClientTransmit>>,
    /// Requests handed to a connection, so a closing connection fails them.
    in_flight: BTreeMap<RequestId, (PeerId, ConnectionId)>,
    external: Vec<Multiaddr>,
    listening: Vec<Multiaddr>,
    /// Addresses of servers we were told about, to dial them by peer id.
    server_addresses: BTreeMap<PeerId, Vec<Multiaddr>>,
    /// Connected servers that answer several requests per substream in
    /// order (see [`Behaviour::set_agent_version`]).
    pipelined: BTreeSet<PeerId>,
    actions: VecDeque<ToSwarm<Event, Command>>,
}

impl Behaviour {
    /// A client for `keypair` (the swarm's own key), or why `config`
    /// cannot work.
    pub fn new(keypair: Keypair, config: Config) -> Result<Self, ClientConfigError> {
        let limits = Arc::new(handler::Limits {
            timeout: config.core.request_timeout,
            max_frame: config.core.max_response_frame,
            max_in_flight: config.core.max_pending,
        });
        Ok(Behaviour {
            core: Client::new(config.core, keypair, Vec::new(), config.seed)?,
            timer: Timer::new(Clock::new()),
            limits,
            connections: BTreeMap::new(),
            waiting: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            external: Vec::new(),
            listening: Vec::new(),
            server_addresses: BTreeMap::new(),
            pipelined: BTreeSet::new(),
            actions: VecDeque::new(),
        })
    }

    /// Tells the client the agent version identify learned for `peer`. A
    /// server of ours (agent `rendezvous-rs/…`) answers several requests
    /// per substream, in order, so every request that expects an answer
    /// goes to it on one long-lived substream per connection instead of a
    /// new one each: about half the server's CPU per request. Other servers
    /// keep one substream per request (rust-libp2p's closes a substream
    /// after its answer). Call it on every identify `Received` event.
    pub fn set_agent_version(&mut self, peer: PeerId, agent_version: &str) {
        let ours =
            agent_version.trim().to_ascii_lowercase().starts_with(rendezvous_core::AGENT_PREFIX);
        let Some(connections) = self.connections.get(&peer) else { return };
        if !ours || !self.pipelined.insert(peer) {
            return;
        }
        for &connection in connections {
            self.actions.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: Command::Pipeline,
            });
        }
    }

    /// Tells the client the protocols identify learned for `peer`: a server
    /// that lists [`SUBSCRIBE_PROTOCOL`](crate::SUBSCRIBE_PROTOCOL) is
    /// watched through a subscription, pushed every change as it happens,
    /// rather than polled. Call it on every identify `Received` event.
    pub fn set_protocols(&mut self, peer: PeerId, protocols: &[libp2p_swarm::StreamProtocol]) {
        let subscribes = protocols.contains(&crate::SUBSCRIBE_PROTOCOL);
        self.core.set_server_subscribes(self.timer.now(), peer, subscribes);
        self.flush();
    }

    /// Where to dial `server`. Addresses given to the swarm with
    /// `Swarm::add_peer_address` (or learned by other behaviours) are used
    /// too; at most [`MAX_ADDRESSES_PER_SERVER`] are kept per server.
    pub fn add_server_address(&mut self, server: PeerId, address: Multiaddr) {
        let known = self.server_addresses.entry(server).or_default();
        if !known.contains(&address) {
            if known.len() == MAX_ADDRESSES_PER_SERVER {
                known.remove(0);
            }
            known.push(address);
        }
    }

    /// Registers in `namespace` at `server` and keeps the registration alive.
    pub fn register(
        &mut self,
        server: PeerId,
        namespace: Namespace,
        ttl: Option<Duration>,
    ) -> Result<RequestId, CommandError> {
        let id = self.core.register(self.timer.now(), server, namespace, ttl)?;
        self.flush();
        Ok(id)
    }

    /// Unregisters from `namespace` at `server`.
    pub fn unregister(
        &mut self,
        server: PeerId,
        namespace: Namespace,
    ) -> Result<RequestId, CommandError> {
        let id = self.core.unregister(self.timer.now(), server, namespace)?;
        self.flush();
        Ok(id)
    }

    /// Unregisters everything (for shutdown); one id per registration.
    pub fn unregister_all(&mut self) -> Vec<RequestId> {
        let ids = self.core.unregister_all(self.timer.now());
        self.flush();
        ids
    }

    /// Asks `server` for what is new in `namespace` (`None`: all) since the
    /// last discover of the same query.
    pub fn discover(
        &mut self,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        let id = self.core.discover(self.timer.now(), server, namespace, limit)?;
        self.flush();
        Ok(id)
    }

    /// Like [`discover`](Self::discover), following cookies to the last page.
    pub fn discover_all(
        &mut self,
        server: PeerId,
        namespace: Option<Namespace>,
        limit: Option<u64>,
    ) -> Result<RequestId, CommandError> {
        let id = self.core.discover_all(self.timer.now(), server, namespace, limit)?;
        self.flush();
        Ok(id)
    }

    /// Rediscovers `namespace` at `server` periodically, reporting the peers
    /// that come and go ([`ClientEvent::PeerFound`], [`ClientEvent::PeerLost`]).
    pub fn watch(&mut self, server: PeerId, namespace: Namespace) -> Result<(), CommandError> {
        self.core.watch(self.timer.now(), server, namespace)?;
        self.flush();
        Ok(())
    }

    /// Stops watching `namespace` at `server`.
    pub fn unwatch(&mut self, server: PeerId, namespace: Namespace) {
        self.core.unwatch(server, namespace);
        self.flush();
    }

    /// Cached discoveries of `namespace` (or all) whose TTL has not run out.
    pub fn discovered<'a>(
        &'a self,
        namespace: Option<&'a Namespace>,
    ) -> impl Iterator<Item = &'a Discovery> + 'a {
        self.core.discovered(namespace)
    }

    /// The core, for inspection.
    pub fn core(&self) -> &Client {
        &self.core
    }

    /// Moves the core's requests to connections (dialing where needed), its
    /// events to the swarm, and re-arms the timer.
    fn flush(&mut self) {
        while let Some(id) = self.core.poll_cancel() {
            if let Some((server, connection)) = self.in_flight.remove(&id) {
                self.actions.push_back(ToSwarm::NotifyHandler {
                    peer_id: server,
                    handler: NotifyHandler::One(connection),
                    event: Command::Cancel(id),
                });
            }
        }
        while let Some(transmit) = self.core.poll_transmit() {
            let server = transmit.server;
            match self.connections.get(&server).and_then(|c| c.first()) {
                Some(&connection) => self.send(connection, transmit),
                None => {
                    let queue = self.waiting.entry(server).or_default();
                    if queue.is_empty() {
                        let opts = DialOpts::peer_id(server)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        self.actions.push_back(ToSwarm::Dial { opts });
                    }
                    queue.push(transmit);
                }
            }
        }
        while let Some(event) = self.core.poll_event() {
            // Every peer that appears, by a command or a watch, is dialable.
            if let ClientEvent::PeerFound { discovery, .. } = &event {
                for address in &discovery.addresses {
                    self.actions.push_back(ToSwarm::NewExternalAddrOfPeer {
                        peer_id: discovery.peer,
                        address: address.clone(),
                    });
                }
            }
            self.actions.push_back(ToSwarm::GenerateEvent(event));
        }
        self.timer.set(self.core.poll_timeout());
    }

    fn send(&mut self, connection: ConnectionId, transmit: ClientTransmit) {
        self.in_flight.insert(transmit.request_id, (transmit.server, connection));
        self.actions.push_back(ToSwarm::NotifyHandler {
            peer_id: transmit.server,
            handler: NotifyHandler::One(connection),
            event: Command::Send(Request {
                id: transmit.request_id,
                frame: transmit.to_frame(),
                expects_response: transmit.expects_response,
                subscription: transmit.subscription,
            }),
        });
    }

    fn announce(&mut self) {
        let addresses =
            if self.external.is_empty() { self.listening.clone() } else { self.external.clone() };
        self.core.set_addresses(self.timer.now(), addresses);
        self.flush();
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.limits.clone(), self.pipelined.contains(&peer)))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.and_then(|p| self.server_addresses.get(&p)).cloned().unwrap_or_default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.limits.clone(), self.pipelined.contains(&peer)))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let now = self.timer.now();
        match event {
            FromSwarm::ConnectionEstablished(established) => {
                let peer = established.peer_id;
                self.connections.entry(peer).or_default().push(established.connection_id);
                if established.other_established == 0 {
                    self.core.handle_connected(now, peer);
                }
                for transmit in self.waiting.remove(&peer).unwrap_or_default() {
                    self.send(established.connection_id, transmit);
                }
            }
            FromSwarm::ConnectionClosed(closed) => {
                let peer = closed.peer_id;
                if let Some(list) = self.connections.get_mut(&peer) {
                    list.retain(|c| *c != closed.connection_id);
                    if list.is_empty() {
                        self.connections.remove(&peer);
                    }
                }
                let lost: Vec<_> = self
                    .in_flight
                    .iter()
                    .filter(|(_, (_, c))| *c == closed.connection_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in lost {
                    self.in_flight.remove(&id);
                    self.core.handle_failure(now, id, Failure::Unreachable);
                }
                if closed.remaining_established == 0 {
                    // Identify tells again on the next connection.
                    self.pipelined.remove(&peer);
                    self.core.handle_disconnected(now, peer);
                }
            }
            FromSwarm::DialFailure(failure) => {
                let Some(peer) = failure.peer_id else { return };
                if self.connections.contains_key(&peer) {
                    return;
                }
                for transmit in self.waiting.remove(&peer).unwrap_or_default() {
                    self.core.handle_failure(now, transmit.request_id, Failure::Unreachable);
                }
            }
            FromSwarm::NewExternalAddrOfPeer(learned) => {
                // Only servers we talk to are worth remembering.
                let ours = self.waiting.contains_key(&learned.peer_id)
                    || self.connections.contains_key(&learned.peer_id)
                    || self.server_addresses.contains_key(&learned.peer_id)
                    || self.core.registrations().any(|(s, _, _)| *s == learned.peer_id);
                if ours || self.server_addresses.len() < MAX_REMEMBERED_SERVERS {
                    self.add_server_address(learned.peer_id, learned.addr.clone());
                }
            }
            FromSwarm::ExternalAddrConfirmed(confirmed)
                if !self.external.contains(confirmed.addr) =>
            {
                self.external.push(confirmed.addr.clone());
                self.announce();
            }
            FromSwarm::ExternalAddrExpired(expired) => {
                self.external.retain(|a| a != expired.addr);
                self.announce();
            }
            FromSwarm::NewListenAddr(listen) if !self.listening.contains(listen.addr) => {
                self.listening.push(listen.addr.clone());
                if self.external.is_empty() {
                    self.announce();
                }
            }
            FromSwarm::ExpiredListenAddr(expired) => {
                self.listening.retain(|a| a != expired.addr);
                if self.external.is_empty() {
                    self.announce();
                }
            }
            _ => {}
        }
        self.flush();
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let now = self.timer.now();
        let id = event.id;
        // A subscription's frames come before its end: it stays in flight.
        let done = !matches!(event.outcome, Outcome::Push(_));
        let known = if done {
            self.in_flight.remove(&id).is_some()
        } else {
            self.in_flight.contains_key(&id)
        };
        if !known {
            return; // its connection closed and the core was already told
        }
        match event.outcome {
            Outcome::Response(body) | Outcome::Push(body) => {
                self.core.handle_response_frame(now, id, &body)
            }
            Outcome::Sent => self.core.handle_sent(now, id),
            Outcome::Failed(failure) => self.core.handle_failure(now, id, failure),
        }
        self.flush();
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return Poll::Ready(action);
            }
            match self.timer.poll(cx) {
                Poll::Ready(now) => {
                    self.core.handle_timeout(now);
                    self.flush();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Peers whose addresses are remembered before any request names them.
const MAX_REMEMBERED_SERVERS: usize = 256;

/// Addresses remembered per server (oldest forgotten first).
pub const MAX_ADDRESSES_PER_SERVER: usize = 8;
