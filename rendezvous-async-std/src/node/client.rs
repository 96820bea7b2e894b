//! A rendezvous client connected to one rendezvous point.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, future, select};
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_identity::PeerId;
use libp2p_swarm::{DialError, Swarm, SwarmEvent};
use rendezvous_libp2p::client;
use rendezvous_libp2p::core::{
    ClientEvent, Dialect, Discovery, Flavour, Namespace, RequestError, RequestId,
};
use tracing::{debug, info, warn};

use prometheus_client::registry::Registry;

use super::{Identity, NodeError, executor, metrics_endpoint, next_scrape, root_cause};
use crate::metrics::{Endpoint, RegistryExt};

const LOG: &str = "rendezvous::client";

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
    pub stay: bool,
}
use crate::host::{self, ClientBehaviour, ClientEvent as HostEvent};

/// Everything a [`ClientNode`] is built from; each field is one flag of
/// `rendezvous --mode client`.
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
    /// `--discover-interval`). Defaults to [`client::Config::default`].
    pub rendezvous: client::Config,
    /// How long to wait for the point to answer the dial. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// Where to serve Prometheus metrics at `/metrics` (`--metrics`);
    /// `None`, the default, for nowhere.
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
            rendezvous: client::Config::default(),
            connect_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// A client connected to its rendezvous point; command it through
/// [`rendezvous`](Self::rendezvous) and read what happens with
/// [`next_event`](Self::next_event).
pub struct ClientNode {
    swarm: Swarm<ClientBehaviour>,
    server: PeerId,
    metrics: Option<Endpoint>,
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
        let Some(Protocol::P2p(server)) = options.server.iter().last() else {
            let why = format!("{} must end with /p2p/<peer id>", options.server);
            return Err(NodeError::Config(why));
        };
        let keypair = options.identity.keypair(None)?;
        let behaviour = ClientBehaviour::new(&keypair, options.rendezvous)
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let mut swarm = host::build(&keypair, behaviour, executor())
            .map_err(|e| NodeError::Config(e.to_string()))?;
        for address in &options.listen {
            swarm
                .listen_on(address.clone())
                .map_err(|e| NodeError::Listen(format!("{address}: {}", root_cause(&e))))?;
        }
        // The first listen address, so that our record has one.
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { .. } => break,
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NodeError::Listen(root_cause(&error)));
                }
                SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                    return Err(NodeError::Listen(root_cause(&e)));
                }
                _ => {}
            }
        }
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
        let metrics = metrics_endpoint(options.metrics)?;
        Ok(ClientNode { swarm, server, metrics, counts: Counts::default() })
    }

    /// Where metrics are served, if anywhere.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Endpoint::local_addr)
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
        let connections = self.swarm.network_info().connection_counters().num_established();
        r.gauge("connections", "Established connections", connections as usize);
        r
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The rendezvous point's peer id.
    pub fn server(&self) -> PeerId {
        self.server
    }

    /// The client behaviour, to command.
    pub fn rendezvous(&mut self) -> &mut client::Behaviour {
        &mut self.swarm.behaviour_mut().rendezvous
    }

    /// The next rendezvous event (the swarm's other events, and metrics
    /// scrapes, are handled here: identify's agent versions go to the
    /// rendezvous behaviour, which carries requests to servers of ours on one
    /// long-lived substream).
    pub async fn next_event(&mut self) -> ClientEvent {
        loop {
            let scrape = next_scrape(&mut self.metrics);
            select! {
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::Behaviour(HostEvent::Rendezvous(event)) => {
                        self.counts.count(&event);
                        return *event;
                    }
                    SwarmEvent::Behaviour(HostEvent::Identify(identify)) => {
                        if let libp2p_identify::Event::Received { peer_id, info, .. } = *identify {
                            debug!(target: LOG, "{peer_id} runs {}", info.agent_version);
                            self.rendezvous().set_agent_version(peer_id, &info.agent_version);
                        }
                    }
                    _ => {}
                },
                scrape = scrape.fuse() => scrape.answer(&self.metrics()),
            }
        }
    }

    /// Registers, discovers, prints what it finds and, with
    /// [`Session::stay`], keeps the registration alive and reports each peer
    /// that comes and goes until the first item of `interrupts`; then
    /// unregisters (a second interrupt leaves at once) and closes. Logs
    /// every step in the demo's words.
    pub async fn run(
        &mut self,
        session: Session,
        interrupts: impl Stream<Item = ()> + Unpin,
    ) -> Result<(), NodeError> {
        let mut interrupts = interrupts.fuse();
        let (me, server, ns) = (self.peer_id(), self.server, session.namespace.clone());
        info!(target: LOG, "Registering in namespace '{ns}'...");
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
                    leaving = Some(self.unregister_all(&ns));
                    deadline = sleep(SHUTDOWN_TIMEOUT);
                    continue;
                },
                () = deadline => {
                    warn!(target: LOG, "Gave up waiting for the unregistration after {}s", SHUTDOWN_TIMEOUT.as_secs());
                    return Ok(());
                },
            };
            match event {
                ClientEvent::Registered { request, ttl, .. } if request == Some(registration) => {
                    info!(target: LOG, "✓ Registered with TTL {}s", ttl.as_secs());
                    info!(target: LOG, "Discovering peers in namespace '{ns}'...");
                    let id = self.rendezvous().discover_all(server, Some(ns.clone()), Some(100));
                    discovery = Some(id.map_err(|e| failed(e.to_string()))?);
                }
                ClientEvent::Registered { request: None, namespace, ttl, .. } => {
                    info!(target: LOG, "↻ Refreshed registration in '{namespace}' with TTL {}s", ttl.as_secs());
                }
                ClientEvent::RegisterFailed { request, error, .. }
                    if request == Some(registration) =>
                {
                    return Err(failed(format!("Registration failed: {}", describe(&error))));
                }
                ClientEvent::RegisterFailed { error, retry_in: Some(delay), namespace, .. } => {
                    warn!(target: LOG, "Refresh in '{namespace}' failed ({}); retrying in {}s", describe(&error), delay.as_secs());
                }
                ClientEvent::RegisterFailed { error, namespace, .. } => {
                    return Err(failed(format!(
                        "Registration in '{namespace}' lost: {}",
                        describe(&error)
                    )));
                }
                ClientEvent::FlavourRefused { server, dialect, error, next } => {
                    let next = next.map_or("it reads none of our records".into(), |d| {
                        format!("trying the {}", name(d))
                    });
                    info!(target: LOG, "{server} refused our {} ({}); {next}", name(dialect), describe(&error));
                }
                ClientEvent::FlavourAccepted { server, dialect } => {
                    info!(target: LOG, "{server} took our {}", name(dialect));
                }
                ClientEvent::Discovered { request, registrations, skipped, .. }
                    if Some(request) == discovery =>
                {
                    report(me, &registrations, skipped);
                    if session.stay {
                        info!(target: LOG, "Refresh mode: Registration will auto-refresh; press Ctrl+C to stop");
                        self.rendezvous()
                            .watch(server, ns.clone())
                            .map_err(|e| failed(e.to_string()))?;
                    } else {
                        leaving = Some(self.unregister_all(&ns));
                        deadline = sleep(SHUTDOWN_TIMEOUT);
                    }
                }
                ClientEvent::DiscoverFailed { request, error, .. }
                    if Some(request) == discovery =>
                {
                    return Err(failed(format!("Discovery failed: {}", describe(&error))));
                }
                ClientEvent::PeerFound { request: None, discovery, .. } if discovery.peer != me => {
                    info!(target: LOG, "  Found peer: {} {}", discovery.peer, addresses(&discovery));
                }
                ClientEvent::PeerLost { peer, reason, .. } => {
                    info!(target: LOG, "  Lost peer: {peer} ({reason:?})");
                }
                ClientEvent::RediscoverFailed { namespace, error, .. } => {
                    warn!(target: LOG, "Rediscovering '{namespace}' failed ({}); trying again later", describe(&error));
                }
                ClientEvent::Unregistered { request: Some(id), delivered, .. } => {
                    let Some(left) = &mut leaving else { continue };
                    left.retain(|r| *r != id);
                    if !delivered {
                        warn!(target: LOG, "The unregistration could not be delivered; the server drops it at its TTL");
                    }
                    if left.is_empty() {
                        info!(target: LOG, "✓ Unregistered successfully");
                        self.close(SHUTDOWN_TIMEOUT).await;
                        return Ok(());
                    }
                }
                other => debug!(target: LOG, "{other:?}"),
            }
            if leaving.as_ref().is_some_and(Vec::is_empty) {
                return Ok(());
            }
        }
    }

    fn unregister_all(&mut self, namespace: &Namespace) -> Vec<RequestId> {
        info!(target: LOG, "Unregistering from namespace '{namespace}'...");
        self.rendezvous().unregister_all()
    }

    /// Closes the connection to the point gracefully, so that what was
    /// written (an UNREGISTER) leaves the socket first; waits at most
    /// `limit`.
    pub async fn close(&mut self, limit: Duration) {
        let server = self.server;
        if self.swarm.disconnect_peer_id(server).is_err() {
            return;
        }
        let closed = async {
            loop {
                if let SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } =
                    self.swarm.select_next_some().await
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

/// The demo's lines for a completed discovery.
fn report(me: PeerId, registrations: &[Discovery], skipped: usize) {
    for found in registrations {
        if found.peer == me {
            info!(target: LOG, "  Found self: {}", found.peer);
        } else {
            info!(target: LOG, "  Found peer: {} {}", found.peer, addresses(found));
        }
    }
    if skipped > 0 {
        warn!(target: LOG, "Skipped {skipped} registrations whose record could not be read");
    }
    info!(target: LOG, "Total peers found: {}", registrations.len());
    if registrations.iter().any(|r| r.peer != me) {
        info!(target: LOG, "✓ Successfully discovered other peers!");
    } else {
        info!(target: LOG, "No other peers found (only self)");
    }
}

fn addresses(found: &Discovery) -> String {
    found.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

fn sleep(duration: Duration) -> future::Fuse<future::BoxFuture<'static, ()>> {
    FutureExt::map(async_io::Timer::after(duration), drop).boxed().fuse()
}

fn name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Signed(Flavour::RustLibp2p) => "rust-libp2p envelope",
        Dialect::Signed(Flavour::Standard) => "standard envelope",
        Dialect::Legacy => "legacy PeerInfo",
    }
}

fn describe(error: &RequestError) -> String {
    match error {
        RequestError::Refused { status: Ok(status), text } => format!("{status:?}: {text}"),
        RequestError::Refused { status: Err(raw), text } => format!("status {raw}: {text}"),
        other => other.to_string(),
    }
}
