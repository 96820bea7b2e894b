//! The rendezvous point as a `NetworkBehaviour`.
//!
//! ```no_run
//! use rendezvous_libp2p::server;
//! let behaviour = server::Behaviour::new(server::Config::default()).expect("valid limits");
//! ```

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p_core::upgrade::ReadyUpgrade;
use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use rendezvous_core::codec::FrameDecoder;
use rendezvous_core::{
    LimitsError, Reader, RequestId, Server, ServerConfig, ServerEvent, Stats, Timestamp,
};

use crate::PROTOCOL;
use crate::clock::Clock;
use crate::io::{read_frame, timeout, write_frame};

/// Configuration of the server behaviour.
#[derive(Clone, Debug)]
pub struct Config {
    /// The core's limits and policies.
    pub core: ServerConfig,
    /// Most inbound rendezvous substreams open at once on one connection;
    /// further ones are dropped. Limit connections per peer in the swarm
    /// (e.g. `libp2p-connection-limits`) to bound substreams per peer.
    pub max_streams_per_connection: usize,
    /// Longest wait for the next request on an open substream, and for the
    /// rest of a request once it started.
    pub read_timeout: Duration,
    /// Longest wait to write one response.
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            core: ServerConfig::default(),
            max_streams_per_connection: 16,
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
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
    /// A substream sent bytes that are not a rendezvous request; that
    /// substream was closed, nothing else was affected.
    BadStream {
        /// Who sent them.
        peer: PeerId,
        /// What was wrong.
        error: io::Error,
    },
}

/// The rendezvous point.
pub struct Behaviour {
    core: Server,
    clock: Clock,
    handler_config: Arc<HandlerConfig>,
    next_request: u64,
    events: VecDeque<Event>,
}

impl Behaviour {
    /// A server with `config`, or why its limits cannot work.
    pub fn new(config: Config) -> Result<Self, LimitsError> {
        let handler_config = Arc::new(HandlerConfig {
            max_streams: config.max_streams_per_connection,
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            max_frame: config.core.limits.max_request_frame,
        });
        Ok(Behaviour {
            core: Server::new(config.core)?,
            clock: Clock::new(),
            handler_config,
            next_request: 0,
            events: VecDeque::new(),
        })
    }

    /// The core, for statistics and inspection.
    pub fn core(&self) -> &Server {
        &self.core
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Tells the server what `peer` reads, e.g. from identify's agent version
    /// via [`reader_from_agent_version`].
    pub fn set_reader_dialect(&mut self, peer: PeerId, reader: impl Into<Reader>) {
        self.core.set_reader_dialect(peer, reader);
    }

    fn drain_core(&mut self) {
        while let Some(event) = self.core.poll_event() {
            self.events.push_back(Event::Core(event));
        }
        self.clock.set(self.core.poll_timeout());
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// The agent version prefix of hosts running this crate's client, which
/// reads both dialects.
pub const AGENT_PREFIX: &str = "rendezvous-rs/";

/// What a peer reads, told by its identify agent version: this crate's
/// client ([`AGENT_PREFIX`]) reads everything, py-libp2p and go-libp2p read
/// the legacy `PeerInfo`, rust-libp2p its own signed flavour, nim-libp2p the
/// standard one.
pub fn reader_from_agent_version(agent_version: &str) -> Option<Reader> {
    use rendezvous_core::Flavour;
    let agent = agent_version.to_ascii_lowercase();
    if agent.starts_with(AGENT_PREFIX) {
        Some(Reader::Any)
    } else if agent.starts_with("py-libp2p")
        || agent.starts_with("go-libp2p")
        || agent.contains("libp2p/go")
    {
        Some(Reader::Legacy)
    } else if agent.starts_with("rust-libp2p") {
        Some(Reader::Signed(Flavour::RustLibp2p))
    } else if agent.starts_with("nim-libp2p") {
        Some(Reader::Signed(Flavour::Standard))
    } else {
        None
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.handler_config.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.handler_config.clone()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && closed.remaining_established == 0
        {
            self.core.handle_disconnected(&closed.peer_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            HandlerEvent::Request { body, reply } => {
                self.next_request += 1;
                let id = RequestId(self.next_request);
                match self.core.handle_frame(self.now(), peer, id, &body) {
                    Ok(()) => {
                        // The core answers synchronously, at most once.
                        let response = self.core.poll_transmit().map(|t| {
                            debug_assert_eq!(t.request_id, id);
                            t.to_frame()
                        });
                        let _ = reply.send(Reply::Continue(response));
                    }
                    Err(error) => {
                        let _ = reply.send(Reply::Close);
                        let error = io::Error::new(io::ErrorKind::InvalidData, error);
                        self.events.push_back(Event::BadStream { peer, error });
                    }
                }
                self.drain_core();
            }
            HandlerEvent::StreamFailed { error } => {
                self.events.push_back(Event::BadStream { peer, error });
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(event));
            }
            match self.clock.poll(cx) {
                Poll::Ready(now) => {
                    self.core.handle_timeout(now);
                    self.drain_core();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

struct HandlerConfig {
    max_streams: usize,
    read_timeout: Duration,
    write_timeout: Duration,
    max_frame: usize,
}

/// What a substream task asks of the behaviour.
#[doc(hidden)]
#[derive(Debug)]
pub enum HandlerEvent {
    /// A request arrived; answer through `reply`.
    Request { body: Bytes, reply: oneshot::Sender<Reply> },
    /// A substream broke (malformed frame, time limit, I/O error).
    StreamFailed { error: io::Error },
}

/// The behaviour's answer to one request.
#[doc(hidden)]
#[derive(Debug)]
pub enum Reply {
    /// Write this frame (if any) and read the next request.
    Continue(Option<Bytes>),
    /// Close the substream.
    Close,
}

/// Moves frames between inbound substreams and the behaviour; holds no
/// protocol state.
pub struct Handler {
    config: Arc<HandlerConfig>,
    streams: FuturesUnordered<futures::future::BoxFuture<'static, ()>>,
    to_behaviour: mpsc::UnboundedSender<HandlerEvent>,
    from_streams: mpsc::UnboundedReceiver<HandlerEvent>,
}

impl Handler {
    fn new(config: Arc<HandlerConfig>) -> Self {
        let (to_behaviour, from_streams) = mpsc::unbounded();
        Handler { config, streams: FuturesUnordered::new(), to_behaviour, from_streams }
    }

    /// Serves one substream: request, answer, request, ... until it closes.
    async fn serve(
        config: Arc<HandlerConfig>,
        mut stream: Stream,
        events: mpsc::UnboundedSender<HandlerEvent>,
    ) {
        let mut decoder = FrameDecoder::new(config.max_frame);
        let mut pending = Vec::new();
        let result: io::Result<()> = async {
            loop {
                let read = read_frame(&mut stream, &mut decoder, &mut pending);
                let Some(body) = timeout(config.read_timeout, read).await? else {
                    return Ok(());
                };
                let (reply, answer) = oneshot::channel();
                if events.unbounded_send(HandlerEvent::Request { body, reply }).is_err() {
                    return Ok(());
                }
                match answer.await {
                    Ok(Reply::Continue(Some(frame))) => {
                        timeout(config.write_timeout, write_frame(&mut stream, &frame)).await?;
                    }
                    Ok(Reply::Continue(None)) => {}
                    Ok(Reply::Close) | Err(_) => return Ok(()),
                }
            }
        }
        .await;
        if let Err(error) = result {
            let _ = events.unbounded_send(HandlerEvent::StreamFailed { error });
        }
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = std::convert::Infallible;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<libp2p_swarm::StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<libp2p_swarm::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
        match self.from_streams.poll_next_unpin(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event)),
            _ => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: stream,
            ..
        }) = event
        {
            if self.streams.len() >= self.config.max_streams {
                tracing::debug!(
                    "dropping an inbound rendezvous substream: {} already open",
                    self.streams.len()
                );
                return;
            }
            let task = Self::serve(self.config.clone(), stream, self.to_behaviour.clone());
            self.streams.push(task.boxed());
        }
    }
}
