//! A rendezvous point, ready to run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{FutureExt, StreamExt, select};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_core::transport::ListenerId;
use libp2p_identity::PeerId;
use libp2p_swarm::{Swarm, SwarmEvent};
use prometheus_client::registry::Registry;
use rendezvous_libp2p::core::ServerEvent as Core;
use rendezvous_libp2p::server;
use tracing::{debug, info, warn};

use super::{Identity, NodeError, executor, metrics_endpoint, next_scrape, root_cause, with_peer};
use crate::handshakes::Handshakes;
use crate::host::{self, ConnectionLimits, ServerBehaviour, ServerEvent};
use crate::metrics::{ConstHistogram, Endpoint, RegistryExt};
use crate::store::Storage;
#[cfg(feature = "redb")]
use crate::store::redb::{self, RedbStore};
#[cfg(feature = "redis")]
use crate::store::redis::RedisStore;
use crate::websocket::Tls;
use rendezvous_libp2p::core::ConfigError;

const LOG: &str = "rendezvous::server";

/// Everything a [`ServerNode`] is built from; each field is one flag of
/// `rendezvous --mode server`.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where to listen (`--listen IP`, `--port P`). Defaults to
    /// `/ip4/0.0.0.0/tcp/0`: every interface, a port the system picks.
    pub listen: Vec<Multiaddr>,
    /// The point's key (`--key-file`). Defaults to the data dir's key, or a
    /// new key every start when in memory.
    pub identity: Identity,
    /// Where registrations are kept (`--data-dir`, `--in-memory`). Defaults
    /// to the platform's per-user data directory
    /// ([`Storage::default`]).
    pub storage: Storage,
    /// The protocol's limits and the substream bounds (`--min-ttl`,
    /// `--max-ttl`, `--max-per-namespace`, `--max-per-peer`, `--max-total`).
    /// Defaults to [`server::Config::default`].
    pub rendezvous: server::Config,
    /// Connections in all and per peer. Defaults to [`ConnectionLimits::default`].
    pub connections: ConnectionLimits,
    /// How often to log namespace statistics (`--stats-interval`); `None`
    /// never. Defaults to 10 s.
    pub stats_interval: Option<Duration>,
    /// Where to serve Prometheus metrics at `/metrics` (`--metrics`);
    /// `None`, the default, for nowhere.
    pub metrics: Option<SocketAddr>,
    /// The certificate for `/wss` listen addresses (`--ws-cert`,
    /// `--ws-key`); `None`, the default, for none: such addresses are then
    /// refused.
    pub ws_tls: Option<Tls>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: vec![
                Multiaddr::empty().with(Protocol::Ip4([0, 0, 0, 0].into())).with(Protocol::Tcp(0)),
            ],
            identity: Identity::default(),
            storage: Storage::default(),
            rendezvous: server::Config::default(),
            connections: ConnectionLimits::default(),
            stats_interval: Some(Duration::from_secs(10)),
            metrics: None,
            ws_tls: None,
        }
    }
}

/// A running rendezvous point: a swarm with the rendezvous, identify, ping
/// and connection-limit behaviours, told each peer's agent version so that
/// every reader gets the record flavour its stack verifies.
pub struct ServerNode {
    swarm: Swarm<ServerBehaviour>,
    listening: Vec<Multiaddr>,
    listeners: Vec<ListenerId>,
    stats_interval: Option<Duration>,
    handshakes: Handshakes,
    metrics: Option<Endpoint>,
    limits: ConnectionLimits,
}

/// What a graceful shutdown achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Requests still unanswered when the time ran out (0: every request
    /// read was answered).
    pub unanswered: usize,
    /// Puts the store had not committed when the time ran out.
    pub uncommitted: usize,
}

impl ServerNode {
    /// Builds the point and listens; returns once every listener has an
    /// address, or with the reason one cannot.
    pub async fn start(options: ServerOptions) -> Result<ServerNode, NodeError> {
        options.rendezvous.core.limits.validate().map_err(|e| NodeError::Config(e.to_string()))?;
        let config = |e: ConfigError| NodeError::Config(e.to_string());
        let rendezvous = match &options.storage {
            Storage::InMemory => {
                let keypair = options.identity.keypair(None)?;
                (keypair, server::Behaviour::new(options.rendezvous).map_err(config)?)
            }
            #[cfg(feature = "redb")]
            Storage::DataDir(dir) => {
                let keypair = options.identity.keypair(Some(dir))?;
                let (store, snapshot) =
                    RedbStore::open(dir).map_err(|e| NodeError::Store(e.to_string()))?;
                let (behaviour, loaded) =
                    server::Behaviour::with_store(options.rendezvous, store, snapshot)
                        .map_err(config)?;
                info!(
                    target: LOG,
                    "Restored {} registrations from {} ({} had expired)",
                    loaded.registrations,
                    dir.join(redb::FILE).display(),
                    loaded.expired
                );
                (keypair, behaviour)
            }
            #[cfg(feature = "redis")]
            Storage::Redis(url) => {
                let keypair = options.identity.keypair(None)?;
                let limits = &options.rendezvous.core.limits;
                let redis = crate::store::redis::RedisOptions::default();
                let (store, snapshot) = RedisStore::connect(url, limits, &redis)
                    .await
                    .map_err(|e| NodeError::Store(e.to_string()))?;
                let clock = store.clock();
                let (behaviour, loaded) = server::Behaviour::with_store_and_clock(
                    options.rendezvous,
                    store,
                    snapshot,
                    clock,
                )
                .map_err(config)?;
                info!(
                    target: LOG,
                    "Sharing the registry in {}: {} registrations loaded ({} had expired)",
                    crate::store::redis::redacted(url),
                    loaded.registrations,
                    loaded.expired
                );
                (keypair, behaviour)
            }
        };
        let (keypair, rendezvous) = rendezvous;
        let limits = super::fds::fit(options.connections);
        let behaviour = ServerBehaviour::with(&keypair, rendezvous, limits);
        let (transport, handshakes) =
            host::server_transport(&keypair, &limits, options.ws_tls.as_ref())
                .map_err(|e| NodeError::Config(e.to_string()))?;
        let swarm = host::build_with(&keypair, transport, behaviour, executor());
        let metrics = metrics_endpoint(options.metrics)?;
        let mut node = ServerNode {
            swarm,
            listening: Vec::new(),
            listeners: Vec::new(),
            stats_interval: options.stats_interval,
            handshakes,
            metrics,
            limits,
        };
        for address in options.listen {
            let describe = |e: &dyn std::error::Error| format!("{address}: {}", root_cause(e));
            let id = node
                .swarm
                .listen_on(address.clone())
                .map_err(|e| NodeError::Listen(describe(&e)))?;
            node.listeners.push(id);
        }
        // Up once every listener has an address (TCP and WebSocket bind
        // separately; either may fail).
        let mut waiting = node.listeners.clone();
        while !waiting.is_empty() {
            match node.swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    node.listening.push(with_peer(&address, node.peer_id()));
                    waiting.retain(|id| *id != listener_id);
                }
                SwarmEvent::ListenerClosed { reason: Err(e), addresses, .. } => {
                    return Err(NodeError::Listen(format!("{addresses:?}: {}", root_cause(&e))));
                }
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NodeError::Listen(root_cause(&error)));
                }
                _ => {}
            }
        }
        Ok(node)
    }

    /// The point's peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Addresses listened on so far, each ending in `/p2p/<peer id>`.
    pub fn listen_addresses(&self) -> &[Multiaddr] {
        &self.listening
    }

    /// Where metrics are served, if anywhere.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Endpoint::local_addr)
    }

    /// The connection limits in force (after fitting them to the file
    /// descriptors this process may open).
    pub fn connection_limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// The rendezvous behaviour: its core, statistics and counters.
    pub fn rendezvous(&self) -> &server::Behaviour {
        &self.swarm.behaviour().rendezvous
    }

    /// Every metric, read now; see [`crate::metrics`].
    pub fn metrics(&self) -> Registry {
        let mut r = Registry::with_prefix("rendezvous");
        let rendezvous = self.rendezvous();
        let stats = rendezvous.stats();
        r.gauge("registrations", "Live registrations", stats.registrations);
        r.gauge("namespaces", "Namespaces with at least one registration", stats.namespaces);
        r.gauge("registered_peers", "Peers with at least one registration", stats.peers);
        let requests = stats.requests.iter().map(|(kind, status, n)| {
            let status = status.map_or("none", |s| s.label());
            (vec![("type", kind.label()), ("status", status)], n)
        });
        r.counters(
            "requests",
            "Requests answered, by type and status (none: UNREGISTER, which has no answer)",
            requests,
        );
        r.register(
            "request_duration_seconds",
            "From a request's last byte read to its answer's last byte written",
            ConstHistogram(rendezvous.request_durations()),
        );
        r.gauge("requests_in_flight", "Requests read and not yet answered", rendezvous.in_flight());
        r.counter(
            "records_verified",
            "Records parsed and signature-checked",
            stats.records_verified,
        );
        r.counter(
            "events_dropped",
            "Registry events dropped from a full queue",
            stats.dropped_events,
        );
        let rejected =
            rendezvous.stream_stats().by_reason().map(|(reason, n)| (vec![("reason", reason)], n));
        r.counters(
            "streams_rejected",
            "Substreams closed without a request served, by reason",
            rejected,
        );
        let network = self.swarm.network_info();
        let counters = network.connection_counters();
        r.gauge("connections", "Established connections", counters.num_established() as usize);
        let handshakes = self.handshakes.stats();
        r.gauge("handshakes", "Inbound connections in their handshake", handshakes.pending);
        r.counter(
            "handshakes_evicted",
            "Handshakes ended to make room for newer ones",
            handshakes.evicted,
        );
        r.gauge(
            "connections_limit",
            "Most established connections taken",
            self.limits.max_established as usize,
        );
        if let Some(commits) = rendezvous.commit_durations() {
            r.register(
                "store_commit_duration_seconds",
                "From a registration's submission to the store to its commit",
                ConstHistogram(commits),
            );
            r.gauge(
                "store_pending_puts",
                "Registrations waiting for the store",
                rendezvous.pending_writes(),
            );
        }
        r
    }

    /// The next event, with identify's agent versions already handed to
    /// the rendezvous behaviour; metrics scrapes are answered meanwhile.
    pub async fn next_event(&mut self) -> SwarmEvent<ServerEvent> {
        let event = loop {
            let scrape = next_scrape(&mut self.metrics);
            select! {
                event = self.swarm.select_next_some() => break event,
                scrape = scrape.fuse() => scrape.answer(&self.metrics()),
            }
        };
        match &event {
            SwarmEvent::Behaviour(ServerEvent::Identify(identify)) => {
                if let libp2p_identify::Event::Received { peer_id, info, .. } = identify.as_ref() {
                    debug!(target: LOG, "{peer_id} runs {}", info.agent_version);
                    self.swarm
                        .behaviour_mut()
                        .rendezvous
                        .set_agent_version(*peer_id, &info.agent_version);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = with_peer(address, self.peer_id());
                if !self.listening.contains(&full) {
                    self.listening.push(full);
                }
            }
            _ => {}
        }
        event
    }

    /// Serves until `shutdown` resolves, logging what happens: listen
    /// addresses at INFO, each registration change at DEBUG, refusals at
    /// WARN, and the statistics every `stats_interval`. Then call
    /// [`drain`](Self::drain).
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        let mut stats = ticker(self.stats_interval);
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        loop {
            select! {
                event = self.next_event().fuse() => log_event(event, self.peer_id()),
                _ = stats.select_next_some() => self.log_stats(),
                () = shutdown => return,
            }
        }
    }

    /// Shuts down gracefully: stops listening, refuses new rendezvous
    /// substreams, and keeps serving until every request already read is
    /// answered and the store has committed every registration, or until
    /// `limit` passes or `abort` resolves. Drop the node afterwards: that
    /// closes the connections and the store (which writes what it holds).
    pub async fn drain(&mut self, limit: Duration, abort: impl Future<Output = ()>) -> Drained {
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
        self.swarm.behaviour_mut().rendezvous.shut_down();
        let mut deadline = FutureExt::fuse(async_io::Timer::after(limit));
        let mut abort = std::pin::pin!(abort.fuse());
        loop {
            let rendezvous = self.rendezvous();
            let left = Drained {
                unanswered: rendezvous.in_flight(),
                uncommitted: rendezvous.pending_writes(),
            };
            if left == (Drained { unanswered: 0, uncommitted: 0 }) {
                return left;
            }
            // Handlers answer on their own tasks, without waking this one:
            // look again every few milliseconds.
            let mut tick = FutureExt::fuse(async_io::Timer::after(Duration::from_millis(5)));
            select! {
                event = self.next_event().fuse() => log_event(event, self.peer_id()),
                _ = tick => {}
                _ = deadline => return left,
                () = abort => return left,
            }
        }
    }

    /// The statistics line, as the demo prints it, and, if anything went
    /// wrong since the start, a second line saying what.
    pub fn log_stats(&self) {
        let rendezvous = self.rendezvous();
        let counts: BTreeMap<_, _> =
            rendezvous.core().namespaces().map(|(ns, n)| (ns.to_string(), n)).collect();
        if counts.is_empty() {
            info!(target: LOG, "No active registrations");
        } else {
            info!(target: LOG, "Namespace stats: {counts:?}");
        }
        let (core, streams) = (rendezvous.stats(), rendezvous.stream_stats());
        let evicted = self.handshakes.stats().evicted;
        let troubles = core.dropped_events + core.busy_refusals + streams.troubles() + evicted;
        if troubles > 0 {
            info!(
                target: LOG,
                "Dropped events: {}, requests refused as busy: {}, substreams rejected: {:?}; handshakes evicted: {evicted}",
                core.dropped_events,
                core.busy_refusals,
                streams.by_reason()
            );
        }
    }
}

fn ticker(
    every: Option<Duration>,
) -> futures::stream::Fuse<futures::stream::BoxStream<'static, ()>> {
    let ticks = match every {
        Some(every) if !every.is_zero() => {
            StreamExt::map(async_io::Timer::interval(every), drop).boxed()
        }
        _ => futures::stream::pending().boxed(),
    };
    ticks.fuse()
}

/// One line per registration change at DEBUG (`-v`): at INFO a busy point
/// would spend its time formatting peer ids and writing logs; the periodic
/// statistics say how many there are.
fn log_event(event: SwarmEvent<ServerEvent>, me: PeerId) {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            info!(target: LOG, "Listening on: {}", with_peer(&address, me));
        }
        SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
            debug!(target: LOG, "Connection from {peer_id} at {}", endpoint.get_remote_address());
        }
        SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
            debug!(target: LOG, "Incoming connection from {send_back_addr} failed: {error}");
        }
        SwarmEvent::Behaviour(ServerEvent::Rendezvous(event)) => log_rendezvous(event),
        _ => {}
    }
}

fn log_rendezvous(event: server::Event) {
    match event {
        server::Event::Core(Core::Registered { peer, namespace, ttl, dialect }) => {
            let ttl = ttl.as_secs();
            debug!(target: LOG, "Registered {peer} in '{namespace}' for {ttl}s ({dialect:?})");
        }
        server::Event::Core(Core::Refreshed { peer, namespace, ttl, .. }) => {
            let ttl = ttl.as_secs();
            debug!(target: LOG, "Refreshed {peer} in '{namespace}' for {ttl}s");
        }
        server::Event::Core(Core::Unregistered { peer, namespace }) => {
            debug!(target: LOG, "Unregistered {peer} from '{namespace}'");
        }
        server::Event::Core(Core::Expired { peer, namespace }) => {
            debug!(target: LOG, "Registration of {peer} in '{namespace}' expired");
        }
        server::Event::Core(Core::Refused { peer, request, status, reason }) => {
            warn!(target: LOG, "Refused {request:?} from {peer}: {status:?}: {reason}");
        }
        server::Event::Core(Core::Discovered { peer, namespace, count }) => {
            let ns = namespace.map_or_else(|| "all namespaces".to_owned(), |n| format!("'{n}'"));
            debug!(target: LOG, "Served {count} registrations of {ns} to {peer}");
        }
        server::Event::StreamRejected { peer, reason: server::Rejection::Malformed(error) } => {
            warn!(target: LOG, "Closed a stream from {peer}: {error}");
        }
        server::Event::StreamRejected { peer, reason } => {
            debug!(target: LOG, "Rejected a stream from {peer}: {}", reason.name());
        }
        other => debug!(target: LOG, "{other:?}"),
    }
}
