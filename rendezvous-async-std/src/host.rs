//! A libp2p host for the rendezvous behaviours: TCP or WebSocket, noise,
//! yamux, identify, ping and connection limits, on any executor.
//!
//! A point's connections are bounded at every stage: handshakes under way
//! ([`handshakes`](crate::handshakes), oldest evicted), established ones in
//! all and per peer (libp2p-connection-limits) and per IP address
//! ([`per_ip`]); a handshake has [`ConnectionLimits::handshake_timeout`]
//! to finish, and a connection that carries no rendezvous request for the
//! rendezvous behaviour's idle timeout is closed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use libp2p_core::muxing::StreamMuxerBox;
use libp2p_core::transport::{Boxed, Transport};
use libp2p_core::upgrade::Version;
use libp2p_identity::{Keypair, PeerId};
use libp2p_swarm::{Config, Executor, NetworkBehaviour, Swarm};
use rendezvous_libp2p::{client, identify, ping, server};

use crate::handshakes::{Bounded, HandshakeLimits, Handshakes};
use crate::node::Identified;
use crate::per_ip;
use crate::transport::{Config as TcpConfig, TcpTransport};
use crate::websocket;

/// What this host announces in identify: the prefix our server reads as
/// "reads every dialect" ([`rendezvous_libp2p::core::AGENT_PREFIX`]).
pub const AGENT_VERSION: &str = concat!("rendezvous-rs/", env!("CARGO_PKG_VERSION"));

/// The protocol family this host names in identify.
const IDENTIFY_PROTOCOL_VERSION: &str = "/ipfs/id/1.0.0";

/// Inbound substreams negotiating at once on one connection (libp2p's
/// default is 128): room for the server's 256 concurrent rendezvous
/// substreams and its 32 answered busy, with identify and ping beside them.
pub const MAX_NEGOTIATING_INBOUND_STREAMS: usize = 512;

/// How long a connection no behaviour needs stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The rendezvous point's behaviours. The limits come first: a connection
/// they deny is never seen by the others.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p_swarm::derive_prelude", to_swarm = "ServerHostEvent")]
pub struct ServerBehaviour {
    /// Bounds connections in all and per peer.
    pub limits: libp2p_connection_limits::Behaviour,
    /// Bounds connections per IP address.
    pub per_ip: per_ip::Behaviour,
    /// The rendezvous protocol.
    pub rendezvous: server::Behaviour,
    /// Identify: peers expect it, and its agent version tells the dialect a
    /// peer reads. The point's own, which keeps only that
    /// ([`rendezvous_libp2p::identify`]).
    pub identify: identify::Behaviour,
    /// Ping, answered: peers expect it. The point sends none of its own
    /// ([`rendezvous_libp2p::ping`]); TCP keepalive finds silent peers.
    pub ping: ping::Behaviour,
}

/// The rendezvous client's behaviours.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p_swarm::derive_prelude", to_swarm = "ClientHostEvent")]
pub struct ClientBehaviour {
    /// The rendezvous protocol.
    pub rendezvous: client::Behaviour,
    /// Identify.
    pub identify: libp2p_identify::Behaviour,
    /// Ping.
    pub ping: libp2p_ping::Behaviour,
}

/// What a [`ServerBehaviour`] reports.
#[derive(Debug)]
pub enum ServerHostEvent {
    /// From the rendezvous behaviour.
    Rendezvous(server::Event),
    /// From identify.
    Identify(identify::Event),
}

/// What a [`ClientBehaviour`] reports.
#[derive(Debug)]
pub enum ClientHostEvent {
    /// From the rendezvous behaviour (boxed: it is much larger than the rest).
    Rendezvous(Box<client::Event>),
    /// From identify.
    Identify(Box<libp2p_identify::Event>),
    /// From ping.
    Ping(libp2p_ping::Event),
}

macro_rules! from_events {
    ($target:ident: $($variant:ident($source:ty) $(=> $wrap:path)?),*) => {
        $(impl From<$source> for $target {
            fn from(event: $source) -> Self {
                $target::$variant($($wrap)?(event))
            }
        })*
    };
}

from_events!(ServerHostEvent: Rendezvous(server::Event), Identify(identify::Event));
from_events!(ClientHostEvent: Rendezvous(client::Event) => Box::new, Identify(libp2p_identify::Event) => Box::new, Ping(libp2p_ping::Event));

impl From<std::convert::Infallible> for ServerHostEvent {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// How many connections a server takes, and how long it gives each to
/// finish its handshake.
///
/// Each established connection takes a file descriptor and, idle, about
/// 38 KiB (noise and yamux state, the handlers; measured on 2,000
/// connections that had each made one request, by `rendezvous-bench`'s
/// `idle`); each handshake under way a
/// descriptor and a few KiB. The defaults fit a small machine: 4,096 idle
/// connections take about 150 MiB. A point lowers
/// [`max_established`](Self::max_established) at start if the process may
/// not open that many files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established, in all.
    pub max_established: u32,
    /// Established, from one peer id.
    pub max_per_peer: u32,
    /// Established, from one IP address (peer ids are free; addresses are
    /// not).
    pub max_per_ip: u32,
    /// Handshakes under way at once; the oldest is evicted to make room.
    pub max_handshakes: usize,
    /// Handshakes under way at once from one IP address (at most
    /// [`max_handshakes`](Self::max_handshakes)).
    pub max_handshakes_per_ip: usize,
    /// Longest a handshake (security and muxer negotiation) may take.
    pub handshake_timeout: Duration,
    /// TCP keepalive's idle time on every connection (`None`: the
    /// system's setting); see [`crate::transport::Config::keepalive`].
    pub tcp_keepalive: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_established: 4096,
            max_per_peer: 4,
            max_per_ip: 256,
            max_handshakes: HandshakeLimits::default().max,
            max_handshakes_per_ip: HandshakeLimits::default().max_per_ip,
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(crate::transport::KEEPALIVE_IDLE),
        }
    }
}

impl ConnectionLimits {
    /// The handshake bounds in force: the per-address one never above the
    /// total.
    pub fn handshakes(&self) -> HandshakeLimits {
        HandshakeLimits {
            max: self.max_handshakes,
            max_per_ip: self.max_handshakes_per_ip.min(self.max_handshakes),
        }
    }

    /// Why these limits cannot work, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_established == 0 || self.max_per_peer == 0 || self.max_per_ip == 0 {
            return Err("connection limits must be at least 1".into());
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_ip == 0 {
            return Err("handshake limits must be at least 1".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("the handshake timeout must be at least 1 s".into());
        }
        Ok(())
    }
}

/// Identify's news goes to the point, and the point's questions to identify.
impl Identified for ServerBehaviour {
    fn identified<'e>(&mut self, event: &'e ServerHostEvent) -> Option<(PeerId, &'e str)> {
        match event {
            ServerHostEvent::Identify(identify::Event::Received { peer, agent_version }) => {
                self.rendezvous.set_agent_version(*peer, agent_version);
                Some((*peer, agent_version))
            }
            ServerHostEvent::Identify(identify::Event::Unanswered { peer, .. }) => {
                self.rendezvous.reader_unknown(*peer);
                None
            }
            ServerHostEvent::Rendezvous(server::Event::ReaderWanted { peer }) => {
                self.identify.ask(*peer);
                None
            }
            _ => None,
        }
    }
}

impl Identified for ClientBehaviour {
    fn identified<'e>(&mut self, event: &'e ClientHostEvent) -> Option<(PeerId, &'e str)> {
        let ClientHostEvent::Identify(event) = event else {
            return None;
        };
        let libp2p_identify::Event::Received { peer_id, info, .. } = event.as_ref() else {
            return None;
        };
        self.rendezvous.set_agent_version(*peer_id, &info.agent_version);
        self.rendezvous.set_protocols(*peer_id, &info.protocols);
        Some((*peer_id, &info.agent_version))
    }
}

impl ServerBehaviour {
    /// A server with `config` and connection `limits`.
    pub fn new(
        keypair: &Keypair,
        config: server::Config,
        limits: ConnectionLimits,
    ) -> Result<Self, rendezvous_libp2p::core::ConfigError> {
        Ok(Self::with(keypair, server::Behaviour::new(config)?, limits))
    }

    /// A server around a rendezvous behaviour already built (a durable one,
    /// say), with connection `limits`.
    pub fn with(
        keypair: &Keypair,
        rendezvous: server::Behaviour,
        limits: ConnectionLimits,
    ) -> Self {
        let connection_limits = libp2p_connection_limits::ConnectionLimits::default()
            .with_max_established(Some(limits.max_established))
            .with_max_established_per_peer(Some(limits.max_per_peer));
        // Identify asks a peer only when the point needs to know, if it says so.
        let ask_every_peer = !rendezvous.asks_for_readers();
        ServerBehaviour {
            limits: libp2p_connection_limits::Behaviour::new(connection_limits),
            per_ip: per_ip::Behaviour::new(limits.max_per_ip),
            identify: identify::Behaviour::new(identify::Config {
                public_key: keypair.public(),
                protocol_version: IDENTIFY_PROTOCOL_VERSION.into(),
                agent_version: AGENT_VERSION.into(),
                ask_every_peer,
            }),
            rendezvous,
            ping: ping::Behaviour,
        }
    }
}

impl ClientBehaviour {
    /// A client with `config`, or why `config` cannot work.
    pub fn new(
        keypair: &Keypair,
        config: client::Config,
    ) -> Result<Self, rendezvous_libp2p::core::ClientConfigError> {
        Ok(ClientBehaviour {
            rendezvous: client::Behaviour::new(keypair.clone(), config)?,
            identify: identify(keypair),
            ping: libp2p_ping::Behaviour::default(),
        })
    }
}

fn identify(keypair: &Keypair) -> libp2p_identify::Behaviour {
    let config = libp2p_identify::Config::new(IDENTIFY_PROTOCOL_VERSION.into(), keypair.public())
        .with_agent_version(AGENT_VERSION.into());
    libp2p_identify::Behaviour::new(config)
}

/// TCP (with `tcp`'s settings) or WebSocket (`/ws`, and `/wss` with
/// `tls`), then noise and yamux, authenticated with `keypair`, each
/// handshake given `handshake_timeout`.
fn upgraded(
    keypair: &Keypair,
    handshake_timeout: Duration,
    tcp: TcpConfig,
    tls: Option<&websocket::Tls>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, libp2p_noise::Error> {
    Ok(TcpTransport::new(tcp)
        .or_transport(websocket::transport(tcp, tls))
        .upgrade(Version::V1)
        .authenticate(libp2p_noise::Config::new(keypair)?)
        .multiplex(libp2p_yamux::Config::default())
        .timeout(handshake_timeout)
        .boxed())
}

/// TCP or WebSocket (`/ws`, `/wss`), then noise and yamux, authenticated
/// with `keypair`, each handshake given `handshake_timeout`.
pub fn transport(
    keypair: &Keypair,
    handshake_timeout: Duration,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, libp2p_noise::Error> {
    upgraded(keypair, handshake_timeout, TcpConfig::default(), None)
}

/// A point's transport: [`transport`], serving `/wss` with `tls` if given,
/// with its inbound handshakes bounded by `limits`; and a handle on their
/// counts.
pub fn server_transport(
    keypair: &Keypair,
    limits: &ConnectionLimits,
    tls: Option<&websocket::Tls>,
) -> Result<(Boxed<(PeerId, StreamMuxerBox)>, Handshakes), libp2p_noise::Error> {
    let tcp = TcpConfig { keepalive: limits.tcp_keepalive, ..Default::default() };
    let transport = upgraded(keypair, limits.handshake_timeout, tcp, tls)?;
    let (bounded, handshakes) = Bounded::new(transport, limits.handshakes());
    Ok((bounded.boxed(), handshakes))
}

/// A task the swarm hands its executor.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs futures with a spawn function (`async_std::task::spawn`,
/// `smol::spawn(..).detach()`, ...).
pub struct SpawnWith<F>(pub F);

impl<F> Executor for SpawnWith<F>
where
    F: Fn(Task) + Send + 'static,
{
    fn exec(&self, future: Task) {
        (self.0)(future)
    }
}

/// A swarm for `behaviour` on `executor`, over [`transport`] with a 10 s
/// handshake timeout.
pub fn build<B: NetworkBehaviour>(
    keypair: &Keypair,
    behaviour: B,
    executor: impl Executor + Send + 'static,
) -> Result<Swarm<B>, libp2p_noise::Error> {
    let transport = transport(keypair, Duration::from_secs(10))?;
    Ok(build_with(keypair, transport, behaviour, executor))
}

/// A swarm for `behaviour` on `executor`, over `transport`.
pub fn build_with<B: NetworkBehaviour>(
    keypair: &Keypair,
    transport: Boxed<(PeerId, StreamMuxerBox)>,
    behaviour: B,
    executor: impl Executor + Send + 'static,
) -> Swarm<B> {
    let config = Config::with_executor(executor)
        .with_idle_connection_timeout(IDLE_TIMEOUT)
        .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_INBOUND_STREAMS);
    Swarm::new(transport, behaviour, keypair.public().to_peer_id(), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_agent_version_tells_our_server_we_read_both_dialects() {
        let reader = rendezvous_libp2p::core::Reader::from_agent_version(AGENT_VERSION);
        assert_eq!(reader, Some(rendezvous_libp2p::core::Reader::Any));
    }

    /// The swarm's task for a connection holds its handler several times
    /// over (in the connection, and in what closing it awaits), so every
    /// byte here costs an idle connection about three. libp2p-identify's
    /// handler alone was 3.5 KB, which made this 4 KB and the task 15 KB.
    #[test]
    fn a_points_connection_handler_stays_small() {
        let size = std::mem::size_of::<<ServerBehaviour as NetworkBehaviour>::ConnectionHandler>();
        assert!(size <= 1024, "the point's connection handler is {size} bytes");
    }
}
