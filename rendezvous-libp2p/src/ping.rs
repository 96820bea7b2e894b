//! Ping (`/ipfs/ping/1.0.0`), answered and never asked.
//!
//! Peers ping the connections they keep, and some close one that stops
//! answering (js-libp2p's connection monitor does), so a point echoes every
//! 32 bytes a peer sends on its ping substream. It sends no pings of its
//! own: it reads nothing from a round-trip time, and rust-libp2p's
//! `libp2p-ping` would open a substream to every peer as soon as it
//! connects, then one every 15 s on every connection it holds. A point
//! that holds many connections learns that a silent peer is gone, and keeps
//! a NAT's mapping open, from TCP keepalive instead, which costs it no
//! wakeup.
//!
//! One ping substream per connection is echoed; a new one replaces the
//! last, and none keeps an otherwise idle connection open, as in
//! `libp2p-ping`.

use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p_core::transport::PortUse;
use libp2p_core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p_core::{Endpoint, Multiaddr};
use libp2p_identity::PeerId;
use libp2p_swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p_swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, StreamProtocol, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};

/// The ping protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/ping/1.0.0");

/// The bytes of one ping, echoed as they came.
const PING_SIZE: usize = 32;

/// Answers every peer's pings; see the module docs.
#[derive(Debug, Default)]
pub struct Behaviour;

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// One connection's ping: the remote's substream, echoed while it is open.
#[derive(Default)]
pub struct Handler {
    echo: Option<BoxFuture<'static, io::Result<()>>>,
}

/// Writes back each ping read, until the remote closes the substream.
async fn echo(mut stream: Stream) -> io::Result<()> {
    let mut ping = [0u8; PING_SIZE];
    loop {
        match stream.read_exact(&mut ping).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return stream.close().await,
            Err(e) => return Err(e),
        }
        stream.write_all(&ping).await?;
        stream.flush().await?;
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        false
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        if let Some(echo) = &mut self.echo
            && let Poll::Ready(done) = echo.poll_unpin(cx)
        {
            self.echo = None;
            if let Err(e) = done {
                tracing::debug!("ping: {e}");
            }
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, DeniedUpgrade, (), ()>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: mut stream,
            ..
        }) = event
        {
            // A peer's ping substream, open between pings, does not keep an
            // otherwise idle connection open.
            stream.ignore_for_keep_alive();
            self.echo = Some(echo(stream).boxed());
        }
    }
}

#[cfg(test)]
mod tests;
