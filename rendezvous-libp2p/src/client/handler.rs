//! The client's connection handler: opens one substream per request, writes
//! it, reads the answer. It holds no protocol state; requests in flight are
//! bounded by the core's `max_pending`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use libp2p_core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p_swarm::handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedOutbound};
use libp2p_swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamUpgradeError, SubstreamProtocol,
};
use rendezvous_core::{Failure, RequestId};

use crate::PROTOCOL;
use crate::framed::Framed;
use crate::timed::TimedSet;

/// Longest wait for a server to close a substream that carried a request
/// without a response.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) max_frame: usize,
    pub(crate) max_in_flight: usize,
}

/// A request for the handler to carry on a new substream.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) id: RequestId,
    pub(crate) frame: Bytes,
    pub(crate) expects_response: bool,
}

/// How a request went.
#[doc(hidden)]
#[derive(Debug)]
pub struct Done {
    pub(crate) id: RequestId,
    pub(crate) outcome: Outcome,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Response(Bytes),
    /// Written, for a request without a response.
    Sent,
    Failed(Failure),
}

/// Opens, writes and reads the substreams of one connection.
pub struct Handler {
    limits: Arc<Limits>,
    to_open: VecDeque<Request>,
    running: TimedSet<Outcome, RequestId>,
    done: VecDeque<Done>,
}

impl Handler {
    pub(crate) fn new(limits: Arc<Limits>) -> Self {
        let running = TimedSet::new(limits.timeout, limits.max_in_flight.max(1));
        Handler { limits, to_open: VecDeque::new(), running, done: VecDeque::new() }
    }

    fn fail(&mut self, id: RequestId, failure: Failure) {
        self.done.push_back(Done { id, outcome: Outcome::Failed(failure) });
    }
}

/// Writes the request and reads its answer, telling apart a substream that
/// closed after the whole request went out (the server read it) from one
/// cut off while writing.
async fn exchange(mut framed: Framed<Stream>, request: Request) -> Outcome {
    if framed.write_frame(&request.frame).await.is_err() {
        return Outcome::Failed(Failure::StreamClosed { written: false });
    }
    if !request.expects_response {
        // Half-close and wait for the server to close its side: then it has
        // read past our frame, and closing the connection right after
        // cannot lose it. Written either way; this only waits.
        let _ = framed.close().await;
        let drained = futures::future::select(
            Box::pin(framed.drain()),
            futures_timer::Delay::new(DRAIN_TIMEOUT),
        );
        let _ = drained.await;
        return Outcome::Sent;
    }
    let outcome = match framed.read_frame().await {
        Ok(Some(body)) => Outcome::Response(body),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Outcome::Failed(Failure::InvalidResponse)
        }
        Ok(None) | Err(_) => Outcome::Failed(Failure::StreamClosed { written: true }),
    };
    let _ = framed.close().await;
    outcome
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Request;
    type ToBehaviour = Done;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = ReadyUpgrade<libp2p_swarm::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Request;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.to_open.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Request, Done>> {
        if let Some(done) = self.done.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(done));
        }
        if let Poll::Ready((result, id)) = self.running.poll_unpin(cx) {
            let outcome = result.unwrap_or(Outcome::Failed(Failure::TimedOut));
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Done { id, outcome }));
        }
        if let Some(request) = self.to_open.pop_front() {
            let protocol = SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), request)
                .with_timeout(self.limits.timeout);
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, request: Request) {
        self.to_open.push_back(request);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Request>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info,
            }) => {
                let id = info.id;
                let framed = Framed::new(stream, self.limits.max_frame);
                if self.running.try_push(exchange(framed, info), id).is_err() {
                    // The core bounds requests in flight below the set's room.
                    self.fail(id, Failure::StreamClosed { written: false });
                }
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let failure = match error {
                    StreamUpgradeError::NegotiationFailed => Failure::Unsupported,
                    StreamUpgradeError::Timeout => Failure::TimedOut,
                    _ => Failure::StreamClosed { written: false },
                };
                self.fail(info.id, failure);
            }
            _ => {}
        }
    }
}
