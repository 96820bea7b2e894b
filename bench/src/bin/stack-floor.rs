//! The stack under our point, without the point: the same host (one runtime
//! thread with its coalesced sends, TCP, noise, yamux, the swarm's settings)
//! serving `/rendezvous/1.0.0` substreams with a handler that answers every
//! request with the same REGISTER acknowledgement, reading nothing out of it
//! and storing nothing. No behaviour sees a request, no core handles one,
//! and there is no identify or ping.
//!
//! `register_path` measures it as it measures the point, in place of the
//! `rendezvous` binary: what one registration costs the stack alone, and so
//! what is left of the point's cost to the rendezvous layers (handler,
//! behaviour, core).
//!
//! ```text
//! cargo build --release --bins
//! RENDEZVOUS_BIN=target/release/stack-floor target/release/register_path --measure cpu
//! RENDEZVOUS_BIN=target/release/stack-floor target/release/load --sizes none --servers ours \
//!   --inflight-list 8,64 --points 0
//! ```
//!
//! The load tool's in-flight sweep runs against it as against the point (its
//! registry-size sweep asks for discover pages, which the floor does not
//! serve, hence `--sizes none`).
//!
//! Takes the server flags `register_path` and the load tool pass and ignores
//! them; prints the same `--address <multiaddr>` line the point logs at
//! start, and exits on SIGINT.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::identity::Keypair;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, Stream, SubstreamProtocol, SwarmEvent, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, StreamProtocol};
use rendezvous_async_std::host::{self, SpawnWith};
use rendezvous_async_std::runtime;
use rendezvous_core::proto::ResponseStatus;
use rendezvous_core::{codec, testing};
use rendezvous_libp2p::framed::Framed;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/rendezvous/1.0.0");

/// The point's default bound on a request frame.
const MAX_FRAME: usize = 8 * 1024;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    // `register_path` stops its server with SIGINT and wants a clean exit
    // (and callgrind or strace then write their counts).
    ctrlc::set_handler(|| std::process::exit(0))?;
    runtime::run(NonZeroUsize::MIN, serve())
}

async fn serve() -> Result<(), Error> {
    let answer = codec::frame(&testing::register_response(ResponseStatus::Ok, Some(7200)));
    let keypair = Keypair::generate_ed25519();
    let mut swarm = host::build(&keypair, Floor { answer }, SpawnWith(runtime::spawn))?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let id = *swarm.local_peer_id();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            eprintln!("stack-floor: serving; register with --address {address}/p2p/{id}");
            break;
        }
    }
    loop {
        swarm.select_next_some().await;
    }
}

/// Hands each connection a [`Answering`] handler; hears nothing back.
struct Floor {
    answer: Bytes,
}

impl Floor {
    fn handler(&self) -> Answering {
        Answering { answer: self.answer.clone(), streams: FuturesUnordered::new() }
    }
}

impl NetworkBehaviour for Floor {
    type ConnectionHandler = Answering;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
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

/// Answers every request of every inbound substream with `answer`, in the
/// connection's own task, until the client closes the substream.
struct Answering {
    answer: Bytes,
    streams: FuturesUnordered<BoxFuture<'static, ()>>,
}

async fn answer_all(stream: Stream, answer: Bytes) {
    let mut framed = Framed::new(stream, MAX_FRAME);
    while let Ok(Some(_request)) = framed.read_frame().await {
        if framed.write_frame(&answer).await.is_err() {
            return;
        }
    }
    let _ = framed.close().await;
}

impl ConnectionHandler for Answering {
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
        true
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
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
            self.streams.push(answer_all(stream, self.answer.clone()).boxed());
        }
    }
}
