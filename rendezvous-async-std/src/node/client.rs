//! A rendezvous client connected to one rendezvous point, and the demo's
//! session: register, discover, watch, unregister. The session reports
//! what happens as [`SessionEvent`]s; printing them is the caller's
//! ([`demo::client_event`](super::demo::client_event) prints the demo's
//! lines).

use std::net::SocketAddr;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, future, select};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;
use libp2p_swarm::{DialError, SwarmEvent};
use prometheus_client::registry::Registry;
use rendezvous_libp2p::client;
use rendezvous_libp2p::core::{
    ClientConfig, ClientEvent, Dialect, Discovery, LostReason, Namespace, RequestError, RequestId,
};

use super::event_loop::{EventLoop, Next, peer_of};
use super::{Identity, NodeError, executor, http_endpoint, root_cause};
use crate::host::{self, ClientBehaviour, ClientHostEvent};
use crate::http::{Query, Reply};
use crate::metrics::RegistryExt;

/// How long [`ClientNode::run`] waits for its UNREGISTERs on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`ClientNode::run`] does: the demo's client.
#[derive(Clone, Debug)]
pub struct Session {
    /// Where to register and discover (`--namespace`).
    pub namespace: Namespace,
    /// The TTL to ask for (`--ttl`).
    pub ttl: Duration,
    /// Keep the registration alive and watch the namespace until the first
    /// interrupt (`--refresh`, the default); otherwise register, discover
    /// once, unregister and return.
    pub refresh: bool,
}

impl Session {
    /// A session in `namespace`, which must be a namespace the protocol
    /// allows ([`Namespace::MAX_LEN`] bytes at most).
    pub fn new(namespace: &str, ttl: Duration, refresh: bool) -> Result<Session, NodeError> {
        let namespace = Namespace::new(namespace, Namespace::MAX_LEN)
            .map_err(|e| NodeError::Config(format!("invalid namespace '{namespace}': {e}")))?;
        Ok(Session { namespace, ttl, refresh })
    }
}

/// What happens in a [`Session`], in order.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SessionEvent {
    /// Registering in `namespace`.
    Registering {
        /// Where.
        namespace: Namespace,
    },
    /// The point granted `ttl`.
    Registered {
        /// The TTL granted.
        ttl: Duration,
    },
    /// Discovering `namespace`.
    Discovering {
        /// Where.
        namespace: Namespace,
    },
    /// The first discovery's result.
    Discovered {
        /// Our own peer id, which the result may hold.
        me: PeerId,
        /// What was found.
        registrations: Vec<Discovery>,
        /// Registrations whose record could not be read.
        skipped: usize,
    },
    /// Watching the namespace from now on.
    Watching,
    /// The registration was refreshed.
    Refreshed {
        /// Where.
        namespace: Namespace,
        /// The TTL granted.
        ttl: Duration,
    },
    /// A refresh failed and is retried.
    RefreshFailed {
        /// Where.
        namespace: Namespace,
        /// Why.
        error: RequestError,
        /// When it goes again.
        retry_in: Duration,
    },
    /// The point refused a record flavour.
    FlavourRefused {
        /// The point.
        server: PeerId,
        /// The flavour refused.
        dialect: Dialect,
        /// How.
        error: RequestError,
        /// The flavour tried next, if any.
        next: Option<Dialect>,
    },
    /// The point took a record flavour.
    FlavourAccepted {
        /// The point.
        server: PeerId,
        /// The flavour it took.
        dialect: Dialect,
    },
    /// A peer appeared in the namespace.
    PeerFound(Discovery),
    /// A peer left it.
    PeerLost {
        /// Who.
        peer: PeerId,
        /// How we know.
        reason: LostReason,
    },
    /// A rediscovery failed; the watch goes on.
    RediscoverFailed {
        /// Where.
        namespace: Namespace,
        /// Why.
        error: RequestError,
    },
    /// Unregistering from `namespace`.
    Unregistering {
        /// Where.
        namespace: Namespace,
    },
    /// An UNREGISTER could not be delivered.
    Undelivered,
    /// Every UNREGISTER is out.
    Unregistered,
    /// Left without seeing the UNREGISTERs out.
    GaveUp {
        /// How long it waited.
        waited: Duration,
    },
    /// Anything else the client reported, for a DEBUG line.
    Other(String),
}

/// Everything a [`ClientNode`] is built from; each field is one flag of
/// `rendezvous --mode client`, at most two levels deep.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The rendezvous point, ending in `/p2p/<peer id>` (`--address`).
    pub server: Multiaddr,
    /// Where to listen, so that peers who find us can dial us (`--listen`,
    /// `--port`). Defaults to `/ip4/0.0.0.0/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Our key (`--key-file`). Defaults to a new key every start.
    pub identity: Identity,
    /// The client's policies (`--refresh`, `--record-flavour`,
    /// `--discover-interval`). Defaults to [`client::Config::default`]'s.
    pub client: ClientConfig,
    /// How long to wait for the point to answer the dial. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// Where to serve metrics and health (`--metrics`); `None`, the
    /// default, for nowhere.
    pub metrics: Option<SocketAddr>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            server: Multiaddr::empty(),
            listen: vec![
                Multiaddr::empty().with(Protocol::Ip4([0, 0, 0, 0].into())).with(Protocol::Tcp(0)),
            ],
            identity: Identity::default(),
            client: client::Config::default().core,
            connect_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// A client connected to its rendezvous point; command it through
/// [`rendezvous`](Self::rendezvous) and read what happens with
/// [`next_event`](Self::next_event).
pub struct ClientNode {
    events: EventLoop<ClientBehaviour>,
    server: PeerId,
    counts: Counts,
}

/// What the client did since the start, for metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    registered: u64,
    register_failed: u64,
    refreshed: u64,
    refresh_failed: u64,
    discovered: u64,
    discover_failed: u64,
    peers_found: u64,
    peers_lost: u64,
}

impl Counts {
    fn count(&mut self, event: &ClientEvent) {
        let counter = match event {
            ClientEvent::Registered { request: Some(_), .. } => &mut self.registered,
            ClientEvent::Registered { request: None, .. } => &mut self.refreshed,
            ClientEvent::RegisterFailed { request: Some(_), .. } => &mut self.register_failed,
            ClientEvent::RegisterFailed { request: None, .. } => &mut self.refresh_failed,
            ClientEvent::Discovered { .. } => &mut self.discovered,
            ClientEvent::DiscoverFailed { .. } | ClientEvent::RediscoverFailed { .. } => {
                &mut self.discover_failed
            }
            ClientEvent::PeerFound { .. } => &mut self.peers_found,
            ClientEvent::PeerLost { .. } => &mut self.peers_lost,
            _ => return,
        };
        *counter += 1;
    }
}

impl ClientNode {
    /// Listens, dials the point and returns once connected, or with why not.
    pub async fn connect(options: ClientOptions) -> Result<ClientNode, NodeError> {
        let server = peer_of(&options.server)
            .map_err(|why| NodeError::Config(format!("{}: {why}", options.server)))?;
        let keypair = options.identity.keypair(None)?;
        let config = client::Config { core: options.client, ..client::Config::default() };
        let behaviour =
            ClientBehaviour::new(&keypair, config).map_err(|e| NodeError::Config(e.to_string()))?;
        let swarm = host::build(&keypair, behaviour, executor())
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let mut events = EventLoop::new(swarm, http_endpoint(options.metrics)?);
        // Listen first, so that our record has an address.
        events.listen(options.listen).await?;
        let swarm = &mut events.swarm;
        swarm.behaviour_mut().rendezvous.add_server_address(server, options.server.clone());
        swarm.dial(options.server.clone()).map_err(|e| NodeError::Connect(dial_error(&e)))?;
        let connected = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server => {
                        return Ok(());
                    }
                    SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. }
                        if p == server =>
                    {
                        return Err(NodeError::Connect(dial_error(&error)));
                    }
                    _ => {}
                }
            }
        };
        let timeout = options.connect_timeout;
        select! {
            result = connected.fuse() => result?,
            _ = FutureExt::fuse(async_io::Timer::after(timeout)) => {
                let why = format!("no answer from {} within {}s", options.server, timeout.as_secs());
                return Err(NodeError::Connect(why));
            }
        }
        Ok(ClientNode { events, server, counts: Counts::default() })
    }

    /// Where metrics and health are served, if anywhere.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.events.http_address()
    }

    /// Every metric, read now; see [`crate::metrics`].
    pub fn metrics(&self) -> Registry {
        let mut r = Registry::with_prefix("rendezvous_client");
        let c = &self.counts;
        let outcomes = |ok: u64, failed: u64| {
            [(vec![("result", "ok")], ok), (vec![("result", "failed")], failed)]
        };
        r.counters(
            "registrations",
            "First registrations, by result",
            outcomes(c.registered, c.register_failed),
        );
        r.counters(
            "refreshes",
            "Registrations renewed before their TTL ran out, by result",
            outcomes(c.refreshed, c.refresh_failed),
        );
        r.counters(
            "discovers",
            "Discoveries and rediscoveries, by result",
            outcomes(c.discovered, c.discover_failed),
        );
        r.counter("peers_found", "Peers that appeared in a watched namespace", c.peers_found);
        r.counter("peers_lost", "Peers that left a watched namespace", c.peers_lost);
        let connections = self.events.swarm.network_info().connection_counters().num_established();
        r.gauge("connections", "Established connections", connections as usize);
        r
    }

    /// The answer to an HTTP query.
    pub fn answer(&self, query: &Query) -> Reply {
        match query {
            Query::Metrics => crate::metrics::reply(&self.metrics()),
            Query::Health => Reply::ok("ok\n"),
            Query::Ready if self.events.swarm.is_connected(&self.server) => Reply::ok("ready\n"),
            Query::Ready => Reply::status(503, "not connected to the rendezvous point"),
            Query::Namespaces { .. } => Reply::status(404, "a client holds no namespaces"),
        }
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.events.swarm.local_peer_id()
    }

    /// The rendezvous point's peer id.
    pub fn server(&self) -> PeerId {
        self.server
    }

    /// The client behaviour, to command.
    pub fn rendezvous(&mut self) -> &mut client::Behaviour {
        &mut self.events.swarm.behaviour_mut().rendezvous
    }

    /// The next rendezvous event (the swarm's other events and HTTP
    /// requests are handled here: identify's agent versions go to the
    /// rendezvous behaviour, which carries requests to servers of ours on
    /// one long-lived substream).
    pub async fn next_event(&mut self) -> ClientEvent {
        loop {
            match self.events.next().await {
                Next::Swarm(SwarmEvent::Behaviour(ClientHostEvent::Rendezvous(event))) => {
                    self.counts.count(&event);
                    return *event;
                }
                Next::Swarm(_) => {}
                Next::Http(request) => {
                    let reply = self.answer(&request.query);
                    request.answer(reply);
                }
            }
        }
    }

    /// Registers, discovers and, with [`Session::refresh`], keeps the
    /// registration alive and reports each peer that comes and goes until
    /// the first item of `interrupts`; then unregisters (a second interrupt
    /// leaves at once) and closes. Every step goes to `report`.
    pub async fn run(
        &mut self,
        session: Session,
        interrupts: impl Stream<Item = ()> + Unpin,
        mut report: impl FnMut(&SessionEvent),
    ) -> Result<(), NodeError> {
        let mut interrupts = interrupts.fuse();
        let (me, server, ns) = (self.peer_id(), self.server, session.namespace.clone());
        report(&SessionEvent::Registering { namespace: ns.clone() });
        let failed = |why: String| NodeError::Rendezvous(why);
        let registration = self
            .rendezvous()
            .register(server, ns.clone(), Some(session.ttl))
            .map_err(|e| failed(e.to_string()))?;
        let (mut discovery, mut leaving) = (None, None::<Vec<RequestId>>);
        let mut deadline = future::Fuse::terminated();
        loop {
            let event = select! {
                event = self.next_event().fuse() => event,
                _ = interrupts.select_next_some() => {
                    if leaving.is_some() {
                        return Ok(()); // a second interrupt: leave now
                    }
                    leaving = Some(self.unregister_all(&ns, &mut report));
                    deadline = sleep(SHUTDOWN_TIMEOUT);
                    continue;
                },
                () = deadline => {
                    report(&SessionEvent::GaveUp { waited: SHUTDOWN_TIMEOUT });
                    return Ok(());
                },
            };
            let said = match event {
                ClientEvent::Registered { request, ttl, .. } if request == Some(registration) => {
                    report(&SessionEvent::Registered { ttl });
                    report(&SessionEvent::Discovering { namespace: ns.clone() });
                    let id = self.rendezvous().discover_all(server, Some(ns.clone()), Some(100));
                    discovery = Some(id.map_err(|e| failed(e.to_string()))?);
                    continue;
                }
                ClientEvent::Registered { request: None, namespace, ttl, .. } => {
                    SessionEvent::Refreshed { namespace, ttl }
                }
                ClientEvent::RegisterFailed { request, error, .. }
                    if request == Some(registration) =>
                {
                    return Err(failed(format!(
                        "Registration failed: {}",
                        super::demo::describe(&error)
                    )));
                }
                ClientEvent::RegisterFailed {
                    error, retry_in: Some(retry_in), namespace, ..
                } => SessionEvent::RefreshFailed { namespace, error, retry_in },
                ClientEvent::RegisterFailed { error, namespace, .. } => {
                    let why = super::demo::describe(&error);
                    return Err(failed(format!("Registration in '{namespace}' lost: {why}")));
                }
                ClientEvent::FlavourRefused { server, dialect, error, next } => {
                    SessionEvent::FlavourRefused { server, dialect, error, next }
                }
                ClientEvent::FlavourAccepted { server, dialect } => {
                    SessionEvent::FlavourAccepted { server, dialect }
                }
                ClientEvent::Discovered { request, registrations, skipped, .. }
                    if Some(request) == discovery =>
                {
                    report(&SessionEvent::Discovered { me, registrations, skipped });
                    if session.refresh {
                        report(&SessionEvent::Watching);
                        self.rendezvous()
                            .watch(server, ns.clone())
                            .map_err(|e| failed(e.to_string()))?;
                    } else {
                        leaving = Some(self.unregister_all(&ns, &mut report));
                        deadline = sleep(SHUTDOWN_TIMEOUT);
                    }
                    continue;
                }
                ClientEvent::DiscoverFailed { request, error, .. }
                    if Some(request) == discovery =>
                {
                    return Err(failed(format!(
                        "Discovery failed: {}",
                        super::demo::describe(&error)
                    )));
                }
                ClientEvent::PeerFound { request: None, discovery, .. } if discovery.peer != me => {
                    SessionEvent::PeerFound(discovery)
                }
                ClientEvent::PeerLost { peer, reason, .. } => {
                    SessionEvent::PeerLost { peer, reason }
                }
                ClientEvent::RediscoverFailed { namespace, error, .. } => {
                    SessionEvent::RediscoverFailed { namespace, error }
                }
                ClientEvent::Unregistered { request: Some(id), delivered, .. } => {
                    let Some(left) = &mut leaving else { continue };
                    left.retain(|r| *r != id);
                    if !delivered {
                        report(&SessionEvent::Undelivered);
                    }
                    if left.is_empty() {
                        report(&SessionEvent::Unregistered);
                        self.close(SHUTDOWN_TIMEOUT).await;
                        return Ok(());
                    }
                    continue;
                }
                other => SessionEvent::Other(format!("{other:?}")),
            };
            report(&said);
            if leaving.as_ref().is_some_and(Vec::is_empty) {
                return Ok(());
            }
        }
    }

    fn unregister_all(
        &mut self,
        namespace: &Namespace,
        report: &mut impl FnMut(&SessionEvent),
    ) -> Vec<RequestId> {
        report(&SessionEvent::Unregistering { namespace: namespace.clone() });
        self.rendezvous().unregister_all()
    }

    /// Closes the connection to the point gracefully, so that what was
    /// written (an UNREGISTER) leaves the socket first; waits at most
    /// `limit`.
    pub async fn close(&mut self, limit: Duration) {
        let server = self.server;
        let swarm = &mut self.events.swarm;
        if swarm.disconnect_peer_id(server).is_err() {
            return;
        }
        let closed = async {
            loop {
                if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } =
                    swarm.select_next_some().await
                    && peer_id == server
                {
                    return;
                }
            }
        };
        select! {
            () = closed.fuse() => {},
            _ = FutureExt::fuse(async_io::Timer::after(limit)) => {},
        }
    }
}

fn dial_error(error: &DialError) -> String {
    match error {
        DialError::Transport(attempts) => attempts
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", root_cause(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => root_cause(other),
    }
}

fn sleep(duration: Duration) -> future::Fuse<future::BoxFuture<'static, ()>> {
    FutureExt::map(async_io::Timer::after(duration), drop).boxed().fuse()
}
