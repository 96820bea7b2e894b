//! Identify (`/ipfs/id/1.0.0` and `/ipfs/id/push/1.0.0`) as a rendezvous
//! point needs it, and no more.
//!
//! A point answers every peer's identify request, as peers expect, and
//! learns each peer's agent version, which tells the flavour of record the
//! peer verifies ([`crate::server::Behaviour::set_agent_version`]). It reads
//! nothing else from a peer's identify: not its listen addresses, its
//! protocols or the address it saw us at, since a point dials nobody.
//!
//! rust-libp2p's `libp2p-identify` does all of that for every connection,
//! and its connection handler alone is 3.5 KB, which the swarm's task
//! carries several times over; on a point holding many idle connections
//! that was most of what each cost. This handler holds the remote's peer id
//! and address, the local protocols, and its substreams only while they
//! are open. The remote's public key is checked against its peer id from
//! the bytes it sent, without decoding the key.
//!
//! It asks each peer that connects ([`Config::ask_every_peer`]), or only
//! the peers it is told to ask ([`Behaviour::ask`]): a point needs a peer's
//! agent version only to serve it registrations, and a peer that only
//! registers is then spared a substream each way (see
//! [`ServerConfig::reader_wait`](rendezvous_core::ServerConfig::reader_wait)).
//! An ask that gets no usable answer is reported ([`Event::Unanswered`]),
//! so that what waits for it need not wait longer.
//!
//! What it leaves out: it never pushes (a point's addresses do not change
//! while it runs).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use futures::{AsyncRead, AsyncWrite};
use libp2p_core::transport::PortUse;
use libp2p_core::upgrade::{ReadyUpgrade, SelectUpgrade};
use libp2p_core::{Endpoint, Multiaddr};
use libp2p_identity::{PeerId, PublicKey};
use libp2p_swarm::behaviour::{ExternalAddresses, ListenAddresses};
use libp2p_swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ProtocolsChange,
};
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use prost::Message;

use crate::framed::Framed;
use crate::timed::TimedSet;

/// Identify's request protocol: the remote writes its identify message.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/id/1.0.0");

/// Identify's push protocol: the remote writes what changed.
pub const PUSH_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/id/push/1.0.0");

/// The largest identify message read: go-libp2p and js-libp2p read up to
/// 8 KiB (rust-libp2p's identify 4 KiB), and a go peer with many addresses
/// sends more than 4.
const MAX_MESSAGE: usize = 8 * 1024;

/// Time for one identify substream to be written or read.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Identify substreams open at once on one connection; more are reset.
const MAX_STREAMS: usize = 4;

/// The identify message, as written.
#[derive(Clone, PartialEq, Message)]
struct Said {
    #[prost(bytes = "vec", optional, tag = "1")]
    public_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    listen_addrs: Vec<Vec<u8>>,
    #[prost(string, repeated, tag = "3")]
    protocols: Vec<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    observed_addr: Option<Vec<u8>>,
    #[prost(string, optional, tag = "5")]
    protocol_version: Option<String>,
    #[prost(string, optional, tag = "6")]
    agent_version: Option<String>,
}

/// The fields of an identify message a point reads; the others are skipped.
#[derive(Clone, PartialEq, Message)]
struct Heard {
    #[prost(bytes = "vec", optional, tag = "1")]
    public_key: Option<Vec<u8>>,
    #[prost(string, optional, tag = "6")]
    agent_version: Option<String>,
}

/// What this node says about itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's public key.
    pub public_key: PublicKey,
    /// The protocol family, `/ipfs/id/1.0.0` for most.
    pub protocol_version: String,
    /// This implementation's name and version.
    pub agent_version: String,
    /// Ask every peer as it connects, as rust-libp2p's identify does;
    /// otherwise only the peers [`Behaviour::ask`] names.
    pub ask_every_peer: bool,
}

/// What the behaviour tells the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `peer` said it runs `agent_version`.
    Received {
        /// The peer.
        peer: PeerId,
        /// Its agent version.
        agent_version: String,
    },
    /// Asking `peer` gave no agent version: it does not speak identify, did
    /// not answer in time, sent no agent version or sent another's key.
    Unanswered {
        /// The peer.
        peer: PeerId,
        /// Why, for logs.
        reason: String,
    },
}

/// What the behaviour tells a connection's handler: ask the remote.
#[derive(Debug, Clone, Copy)]
pub struct Ask;

/// What a connection's handler tells the behaviour: what its ask or a push
/// gave.
pub type Learned = Result<String, String>;

/// What every connection's handler reads to answer.
#[derive(Debug)]
struct Shared {
    public_key: Vec<u8>,
    protocol_version: String,
    agent_version: String,
    /// Where this node listens, and its confirmed external addresses,
    /// encoded.
    addresses: Mutex<Vec<Vec<u8>>>,
    ask_every_peer: bool,
}

/// Answers identify, and learns each peer's agent version.
#[derive(Debug)]
pub struct Behaviour {
    shared: Arc<Shared>,
    listening: ListenAddresses,
    external: ExternalAddresses,
    events: VecDeque<Event>,
    /// Peers to ask, for their handlers.
    asks: VecDeque<PeerId>,
}

impl Behaviour {
    /// A behaviour saying what `config` says.
    pub fn new(config: Config) -> Self {
        Behaviour {
            shared: Arc::new(Shared {
                public_key: config.public_key.encode_protobuf(),
                protocol_version: config.protocol_version,
                agent_version: config.agent_version,
                addresses: Mutex::new(Vec::new()),
                ask_every_peer: config.ask_every_peer,
            }),
            listening: ListenAddresses::default(),
            external: ExternalAddresses::default(),
            events: VecDeque::new(),
            asks: VecDeque::new(),
        }
    }

    /// Asks `peer`, on one of its connections, for its identify message:
    /// reported as [`Event::Received`] or [`Event::Unanswered`]. A peer with
    /// no connection is not asked, and nothing is reported.
    pub fn ask(&mut self, peer: PeerId) {
        self.asks.push_back(peer);
    }

    fn handler(&self, peer: PeerId, observed: &Multiaddr) -> Handler {
        Handler {
            shared: self.shared.clone(),
            peer,
            observed: observed.clone(),
            protocols: Vec::new(),
            ask: self.shared.ask_every_peer,
            streams: None,
            unanswered: None,
        }
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
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, remote))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        address: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, address))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let listening = self.listening.on_swarm_event(&event);
        let external = self.external.on_swarm_event(&event);
        if listening || external {
            let mut addresses: Vec<Vec<u8>> = Vec::new();
            for address in self.listening.iter().chain(self.external.iter()) {
                let bytes = address.to_vec();
                if !addresses.contains(&bytes) {
                    addresses.push(bytes);
                }
            }
            *self.shared.addresses.lock().unwrap_or_else(|e| e.into_inner()) = addresses;
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        heard: THandlerOutEvent<Self>,
    ) {
        self.events.push_back(match heard {
            Ok(agent_version) => Event::Received { peer, agent_version },
            Err(reason) => Event::Unanswered { peer, reason },
        });
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(peer_id) = self.asks.pop_front() {
            let handler = NotifyHandler::Any;
            return Poll::Ready(ToSwarm::NotifyHandler { peer_id, handler, event: Ask });
        }
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ToSwarm::GenerateEvent(event)),
            None => Poll::Pending,
        }
    }
}

/// One connection's identify: answers the remote's requests, asks when
/// told to (or once, at the start), and reads its pushes.
pub struct Handler {
    shared: Arc<Shared>,
    peer: PeerId,
    /// The remote's address as this node sees it.
    observed: Multiaddr,
    /// This node's protocols on this connection.
    protocols: Vec<StreamProtocol>,
    /// A request to the remote is to be made.
    ask: bool,
    /// The open substreams, each with what it is; made with the first and
    /// dropped with the last, so that an idle connection holds none of it.
    /// A read yields the remote's agent version, if it sent one under its
    /// own key.
    streams: Option<TimedSet<io::Result<Option<String>>, Substream>>,
    /// Why this node's request failed before its substream opened, to report.
    unanswered: Option<String>,
}

/// What an identify substream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Substream {
    /// Answering the remote's request.
    Answer,
    /// Reading the answer to this node's request.
    Reply,
    /// Reading what the remote pushed.
    Push,
}

impl Handler {
    fn said(&self) -> Vec<u8> {
        let addresses = self.shared.addresses.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let said = Said {
            public_key: Some(self.shared.public_key.clone()),
            listen_addrs: addresses,
            protocols: self.protocols.iter().map(|p| p.as_ref().to_owned()).collect(),
            observed_addr: Some(self.observed.to_vec()),
            protocol_version: Some(self.shared.protocol_version.clone()),
            agent_version: Some(self.shared.agent_version.clone()),
        };
        said.encode_length_delimited_to_vec()
    }

    /// Runs `future` on a substream, or resets it if too many are open
    /// (and a reply that cannot be read is reported unanswered).
    fn start(
        &mut self,
        future: impl Future<Output = io::Result<Option<String>>> + Send + 'static,
        substream: Substream,
    ) {
        let streams =
            self.streams.get_or_insert_with(|| TimedSet::new(STREAM_TIMEOUT, MAX_STREAMS));
        if streams.try_push(future, substream).is_err() {
            tracing::debug!(peer = %self.peer, "resetting an identify substream: over the bound");
            if substream == Substream::Reply {
                self.unanswered = Some("too many identify substreams open".to_owned());
            }
        }
    }
}

/// Writes `said` on `stream`, then closes it.
async fn answer(stream: Stream, said: Vec<u8>) -> io::Result<Option<String>> {
    let mut framed = Framed::new(stream, 0);
    framed.write_frame(&said).await?;
    framed.close().await?;
    Ok(None)
}

/// Reads the remote's identify message from `stream`: its agent version,
/// if the message carries `peer`'s own key.
async fn read<S>(stream: S, peer: PeerId) -> io::Result<Option<String>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, MAX_MESSAGE);
    let Some(body) = framed.read_frame().await? else {
        return Err(io::ErrorKind::UnexpectedEof.into());
    };
    let heard = Heard::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let _ = framed.close().await;
    match heard.public_key.as_deref().map(peer_id_of) {
        Some(Some(signer)) if signer == peer => Ok(heard.agent_version),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "identify without the peer's own key")),
    }
}

/// The peer id of a protobuf-encoded public key. A key of up to 42 bytes
/// (ed25519, secp256k1) is its own identity multihash, so it is not decoded
/// at all; a longer one is decoded and hashed.
fn peer_id_of(key: &[u8]) -> Option<PeerId> {
    match u8::try_from(key.len()) {
        Ok(len) if len <= 42 => {
            let mut multihash = Vec::with_capacity(2 + key.len());
            multihash.extend_from_slice(&[0x00, len]);
            multihash.extend_from_slice(key);
            PeerId::from_bytes(&multihash).ok()
        }
        _ => PublicKey::try_decode_protobuf(key).ok().map(|key| key.to_peer_id()),
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Ask;
    /// The remote's agent version, or why asking gave none.
    type ToBehaviour = Learned;
    type InboundProtocol =
        SelectUpgrade<ReadyUpgrade<StreamProtocol>, ReadyUpgrade<StreamProtocol>>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        let protocols =
            SelectUpgrade::new(ReadyUpgrade::new(PROTOCOL), ReadyUpgrade::new(PUSH_PROTOCOL));
        SubstreamProtocol::new(protocols, ())
    }

    fn connection_keep_alive(&self) -> bool {
        false
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Learned>> {
        if self.ask {
            self.ask = false;
            let protocol = SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ());
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        if let Some(reason) = self.unanswered.take() {
            tracing::debug!(peer = %self.peer, "identify: {reason}");
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Err(reason)));
        }
        while let Some(streams) = &mut self.streams {
            let Poll::Ready((done, substream)) = streams.poll_unpin(cx) else {
                return Poll::Pending;
            };
            if streams.len() == 0 {
                self.streams = None;
            }
            let failed = match done {
                Ok(Ok(Some(agent_version))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Ok(agent_version)));
                }
                Ok(Ok(None)) if substream == Substream::Reply => "no agent version".to_owned(),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            tracing::debug!(peer = %self.peer, "identify: {failed}");
            if substream == Substream::Reply {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Err(failed)));
            }
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, _: Ask) {
        self.ask = true;
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: Either::Left(stream),
                ..
            }) => {
                let said = self.said();
                self.start(answer(stream, said), Substream::Answer);
            }
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: Either::Right(stream),
                ..
            }) => self.start(read(stream, self.peer), Substream::Push),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => self.start(read(stream, self.peer), Substream::Reply),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.unanswered = Some(format!("asking failed: {error}"));
            }
            ConnectionEvent::LocalProtocolsChange(change) => match change {
                ProtocolsChange::Added(added) => {
                    for protocol in added {
                        if !self.protocols.contains(protocol) {
                            self.protocols.push(protocol.clone());
                        }
                    }
                }
                ProtocolsChange::Removed(removed) => {
                    let removed: Vec<_> = removed.collect();
                    self.protocols.retain(|p| !removed.contains(&p));
                }
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
