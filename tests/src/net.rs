//! Swarms on loopback for the network tests: building, listening, dialing,
//! and waiting for events, with every wait bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::fmt::Debug;
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId, SwarmBuilder, noise, tcp, yamux};
use rendezvous_core::codec::{self, FrameDecoder};
use rendezvous_core::proto;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// rust-libp2p as these helpers build it, rendezvous client and server
/// included, for tests in crates that do not depend on it themselves.
pub use libp2p;

/// Bound on every wait: a test fails rather than hangs.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A swarm with a new identity on loopback TCP + noise + yamux.
pub fn swarm<B: NetworkBehaviour>(make: impl FnOnce(&Keypair) -> B) -> Swarm<B> {
    swarm_as(Keypair::generate_ed25519(), make)
}

/// A swarm for `keypair` on loopback TCP + noise + yamux.
pub fn swarm_as<B: NetworkBehaviour>(
    keypair: Keypair,
    make: impl FnOnce(&Keypair) -> B,
) -> Swarm<B> {
    SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| make(key))
        .unwrap()
        // Room for many concurrent substreams, as the rendezvous-async-std host has.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(30))
                .with_max_negotiating_inbound_streams(512)
        })
        .build()
}

/// Listens on a free loopback port; returns the address.
pub async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Multiaddr {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .expect("a listen address in time")
}

/// Drives `swarm` until `f` picks an event out of its behaviour's events.
pub async fn until<B: NetworkBehaviour, T>(
    swarm: &mut Swarm<B>,
    mut f: impl FnMut(B::ToSwarm) -> Option<T>,
) -> T
where
    B::ToSwarm: Debug,
{
    tokio::time::timeout(LIMIT, async {
        loop {
            if let SwarmEvent::Behaviour(event) = swarm.select_next_some().await
                && let Some(t) = f(event)
            {
                return t;
            }
        }
    })
    .await
    .expect("the expected event in time")
}

/// Runs a swarm in the background, forwarding its behaviour's events.
pub fn spawn<B>(mut swarm: Swarm<B>) -> UnboundedReceiver<B::ToSwarm>
where
    B: NetworkBehaviour + Send + 'static,
    B::ToSwarm: Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(event) = swarm.select_next_some().await
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Waits until `f` picks an event out of a background swarm's events.
pub async fn expect<E: Debug, T>(
    rx: &mut UnboundedReceiver<E>,
    mut f: impl FnMut(E) -> Option<T>,
) -> T {
    tokio::time::timeout(LIMIT, async {
        loop {
            let event = rx.recv().await.expect("the swarm runs");
            if let Some(t) = f(event) {
                return t;
            }
        }
    })
    .await
    .expect("the expected event in time")
}

/// Dials `server` and drives `swarm` until the connection is up.
pub async fn connect<B: NetworkBehaviour>(swarm: &mut Swarm<B>, server: PeerId, addr: &Multiaddr) {
    swarm.dial(addr.clone().with(Protocol::P2p(server))).unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                return;
            }
        }
    })
    .await
    .expect("connected in time");
}

/// A connection that opens raw `/rendezvous/1.0.0` substreams, as any
/// rust-libp2p program can with `libp2p-stream`.
pub struct Raw {
    /// Our identity.
    pub id: PeerId,
    /// Opens substreams.
    pub control: libp2p_stream::Control,
}

/// Dials `server` from a new identity and keeps the swarm running.
pub async fn raw_connection(server: PeerId, addr: &Multiaddr) -> Raw {
    raw_connection_as(Keypair::generate_ed25519(), server, addr).await
}

/// Dials `server` as `keypair` and keeps the swarm running.
pub async fn raw_connection_as(keypair: Keypair, server: PeerId, addr: &Multiaddr) -> Raw {
    let raw = swarm_as(keypair, |_| libp2p_stream::Behaviour::new());
    let control = raw.behaviour().new_control();
    keep_connected(raw, control, server, addr).await
}

/// Dials `server` from `raw`, whose substreams `control` opens, and keeps
/// the swarm running.
async fn keep_connected<B: NetworkBehaviour + Send + 'static>(
    mut raw: Swarm<B>,
    control: libp2p_stream::Control,
    server: PeerId,
    addr: &Multiaddr,
) -> Raw {
    let id = *raw.local_peer_id();
    connect(&mut raw, server, addr).await;
    tokio::spawn(async move {
        loop {
            raw.select_next_some().await;
        }
    });
    Raw { id, control }
}

/// A raw connection's swarm that also runs identify, naming `agent`.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Identified {
    stream: libp2p_stream::Behaviour,
    identify: libp2p::identify::Behaviour,
}

/// Dials `server` from a new identity whose identify names `agent` (as a
/// js, go or py peer's does), and keeps the swarm running.
pub async fn raw_connection_named(server: PeerId, addr: &Multiaddr, agent: &str) -> Raw {
    let raw = swarm(|key| Identified {
        stream: libp2p_stream::Behaviour::new(),
        identify: libp2p::identify::Behaviour::new(
            libp2p::identify::Config::new("/ipfs/id/1.0.0".into(), key.public())
                .with_agent_version(agent.into()),
        ),
    });
    let control = raw.behaviour().stream.new_control();
    keep_connected(raw, control, server, addr).await
}

impl Raw {
    /// Another handle on the same connection, for requests in parallel.
    pub fn clone_handle(&self) -> Raw {
        Raw { id: self.id, control: self.control.clone() }
    }

    /// Opens a `/rendezvous/1.0.0` substream.
    pub async fn open(&mut self, server: PeerId) -> libp2p::Stream {
        let protocol = libp2p::StreamProtocol::new("/rendezvous/1.0.0");
        tokio::time::timeout(LIMIT, self.control.open_stream(server, protocol))
            .await
            .expect("a substream in time")
            .expect("the server speaks rendezvous")
    }

    /// Sends `request` on a new substream and reads its one response;
    /// `Err` if the substream ends without one.
    pub async fn request(
        &mut self,
        server: PeerId,
        request: &proto::Message,
    ) -> Result<proto::Message, String> {
        let mut stream = self.open(server).await;
        stream.write_all(&codec::frame(request)).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let body = read_frame(&mut stream).await?;
        let _ = stream.close().await;
        codec::decode_message(&body).map_err(|e| e.to_string())
    }
}

/// A subscription as any rust-libp2p program can hold one: a
/// `/rendezvous/subscribe/1.0.0` substream, its `DISCOVER_SUBSCRIBE`
/// written, read frame by frame.
pub struct Subscriber {
    stream: libp2p::Stream,
    decoder: FrameDecoder,
    /// Bytes read past the last frame.
    leftover: Vec<u8>,
}

impl Raw {
    /// Subscribes to `namespace` at `server`, from `position` (a cookie of
    /// an earlier subscription's batch) if given.
    pub async fn subscribe(
        &mut self,
        server: PeerId,
        namespace: &str,
        position: Option<Bytes>,
    ) -> Subscriber {
        let protocol = libp2p::StreamProtocol::new(rendezvous_core::SUBSCRIPTION_TYPE);
        let mut stream = tokio::time::timeout(LIMIT, self.control.open_stream(server, protocol))
            .await
            .expect("a substream in time")
            .expect("the server takes subscriptions");
        let request = proto::Message {
            r#type: Some(proto::MessageType::DiscoverSubscribe as i32),
            discover_subscribe: Some(proto::DiscoverSubscribe {
                supported_subscription_types: vec![rendezvous_core::SUBSCRIPTION_TYPE.into()],
                ns: Some(namespace.into()),
                position,
            }),
            ..Default::default()
        };
        stream.write_all(&codec::frame(&request)).await.unwrap();
        stream.flush().await.unwrap();
        Subscriber { stream, decoder: FrameDecoder::new(4 * 1024 * 1024), leftover: Vec::new() }
    }
}

impl Subscriber {
    /// The next message, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Result<proto::Message, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut rest = &self.leftover[..];
            let frame = self.decoder.feed(&mut rest).map_err(|e| e.to_string())?;
            self.leftover = rest.to_vec();
            if let Some(body) = frame {
                return codec::decode_message(&body).map_err(|e| e.to_string());
            }
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await;
            let n = read.map_err(|_| "nothing in time".to_owned())?.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the subscription ended".into());
            }
            self.leftover.extend_from_slice(&buf[..n]);
        }
    }
}

/// Reads one frame body from `stream`.
pub async fn read_frame(stream: &mut libp2p::Stream) -> Result<Bytes, String> {
    let mut decoder = FrameDecoder::new(4 * 1024 * 1024);
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await;
        let n = read.map_err(|_| "no response in time".to_owned())?.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the substream ended without a response".into());
        }
        if let Some(body) = decoder.feed(&mut &buf[..n]).map_err(|e| e.to_string())? {
            return Ok(body);
        }
    }
}
