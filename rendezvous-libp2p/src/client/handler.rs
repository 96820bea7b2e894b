//! The client's connection handler: opens one substream per request, writes
//! it, reads the answer; or, to a server the behaviour knows answers several
//! requests per substream in order, carries every request that expects an
//! answer on one long-lived substream ([`super::pipeline`]). It holds no
//! protocol state; requests in flight are bounded by the core's
//! `max_pending`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::channel::{mpsc, oneshot};
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p_core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p_swarm::handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedOutbound};
use libp2p_swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamUpgradeError, SubstreamProtocol,
};
use rendezvous_core::{Failure, RequestId};

use crate::framed::Framed;
use crate::timed::TimedSet;
use crate::{PROTOCOL, SUBSCRIBE_PROTOCOL};

use super::pipeline::{self, Queued};

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
    /// A subscription: on [`SUBSCRIBE_PROTOCOL`], every frame read is an
    /// [`Outcome::Push`] until the substream ends.
    pub(crate) subscription: bool,
}

/// What the behaviour tells a connection's handler.
#[doc(hidden)]
#[derive(Debug)]
pub enum Command {
    /// Carry this request.
    Send(Request),
    /// The server answers several requests per substream, in order: carry
    /// the requests that expect an answer on one long-lived substream.
    Pipeline,
    /// Close this subscription's substream.
    Cancel(RequestId),
}

/// What an outbound substream is opened for.
#[doc(hidden)]
#[derive(Debug)]
pub enum Open {
    /// One request.
    Request(Request),
    /// The long-lived substream.
    Pipe,
    /// A request that was on a long-lived substream when it ended, sent
    /// again on its own.
    Resend(Queued),
    /// A subscription.
    Subscription(Request),
}

/// The long-lived substream, when the server takes one.
#[derive(Debug)]
enum Pipe {
    /// One substream per request.
    Off,
    /// None open; the next request opens one.
    Idle,
    /// Asked the swarm for one; these wait for it.
    Opening(Vec<Queued>),
    /// Open: requests go to its inbox.
    Open(mpsc::UnboundedSender<Queued>),
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
    /// A frame on a subscription; more may follow, and its end comes as
    /// `Failed`.
    Push(Bytes),
    /// Written, for a request without a response.
    Sent,
    Failed(Failure),
}

/// Opens, writes and reads the substreams of one connection.
pub struct Handler {
    limits: Arc<Limits>,
    to_open: VecDeque<Open>,
    /// Each request's exchange, tagged with its id and whether it went to
    /// a long-lived substream.
    running: TimedSet<Outcome, (RequestId, bool)>,
    done: VecDeque<Done>,
    pipe: Pipe,
    /// Long-lived substreams at work (the open one, and closing ones still
    /// reading the answers they owe) and requests sent again on their own;
    /// each gives back the requests it could not carry.
    pipes: FuturesUnordered<BoxFuture<'static, Vec<Queued>>>,
    /// Subscription substreams, each ending with how it ended; their frames
    /// come through `pushes`.
    following: FuturesUnordered<BoxFuture<'static, Done>>,
    aborts: HashMap<RequestId, AbortHandle>,
    pushes_tx: mpsc::UnboundedSender<Done>,
    pushes: mpsc::UnboundedReceiver<Done>,
}

impl Handler {
    /// A handler; `pipeline`: the server is known to answer several
    /// requests per substream in order.
    pub(crate) fn new(limits: Arc<Limits>, pipeline: bool) -> Self {
        let running = TimedSet::new(limits.timeout, limits.max_in_flight.max(1));
        let (pushes_tx, pushes) = mpsc::unbounded();
        Handler {
            following: FuturesUnordered::new(),
            aborts: HashMap::new(),
            pushes_tx,
            pushes,
            limits,
            to_open: VecDeque::new(),
            running,
            done: VecDeque::new(),
            pipe: if pipeline { Pipe::Idle } else { Pipe::Off },
            pipes: FuturesUnordered::new(),
        }
    }

    fn fail(&mut self, id: RequestId, failure: Failure) {
        self.done.push_back(Done { id, outcome: Outcome::Failed(failure) });
    }

    /// Carries `request` on the long-lived substream, opening one if none
    /// is; its outcome comes back through `running` like any other's.
    fn pipeline(&mut self, request: Request) {
        let (reply, outcome) = oneshot::channel();
        let waiting =
            outcome.map(|o| o.unwrap_or(Outcome::Failed(Failure::StreamClosed { written: false })));
        if self.running.try_push(waiting, (request.id, true)).is_err() {
            // The core bounds requests in flight below the set's room.
            self.fail(request.id, Failure::StreamClosed { written: false });
            return;
        }
        let mut queued = Queued { frame: request.frame, reply };
        if let Pipe::Open(inbox) = &self.pipe {
            match inbox.unbounded_send(queued) {
                Ok(()) => return,
                // That pipe is closing: open another.
                Err(e) => queued = e.into_inner(),
            }
        }
        match &mut self.pipe {
            Pipe::Opening(waiting) => waiting.push(queued),
            _ => {
                self.pipe = Pipe::Opening(vec![queued]);
                self.to_open.push_back(Open::Pipe);
            }
        }
    }
}

/// Writes the request and reads its answer, telling apart a substream that
/// closed after the whole request went out (the server read it) from one
/// cut off while writing.
async fn exchange(mut framed: Framed<Stream>, frame: Bytes, expects_response: bool) -> Outcome {
    if framed.write_frame(&frame).await.is_err() {
        return Outcome::Failed(Failure::StreamClosed { written: false });
    }
    if !expects_response {
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

/// Writes a subscription's request, then hands on every frame read until
/// the substream ends; the end is the outcome.
async fn follow(
    mut framed: Framed<Stream>,
    id: RequestId,
    frame: Bytes,
    pushes: mpsc::UnboundedSender<Done>,
) -> Outcome {
    if framed.write_frame(&frame).await.is_err() {
        return Outcome::Failed(Failure::StreamClosed { written: false });
    }
    loop {
        match framed.read_frame().await {
            Ok(Some(body)) => {
                let _ = pushes.unbounded_send(Done { id, outcome: Outcome::Push(body) });
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Outcome::Failed(Failure::InvalidResponse);
            }
            Ok(None) | Err(_) => return Outcome::Failed(Failure::StreamClosed { written: true }),
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = Done;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = ReadyUpgrade<libp2p_swarm::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Open;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.to_open.is_empty() || matches!(self.pipe, Pipe::Opening(_))
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Open, Done>> {
        while let Poll::Ready(Some(unanswered)) = self.pipes.poll_next_unpin(cx) {
            if !unanswered.is_empty() {
                // The server ended a substream with requests on it: send
                // them again, and from now on one substream per request.
                self.pipe = Pipe::Off;
                self.to_open.extend(unanswered.into_iter().map(Open::Resend));
            }
        }
        if let Pipe::Open(inbox) = &self.pipe
            && inbox.is_closed()
        {
            self.pipe = Pipe::Idle;
        }
        if let Some(done) = self.done.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(done));
        }
        // A subscription's frames before its end.
        if let Poll::Ready(Some(push)) = self.pushes.poll_next_unpin(cx) {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(push));
        }
        if let Poll::Ready(Some(done)) = self.following.poll_next_unpin(cx) {
            self.aborts.remove(&done.id);
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(done));
        }
        if let Poll::Ready((result, (id, piped))) = self.running.poll_unpin(cx) {
            if piped && result.is_err() {
                // An answer did not come in time on the long-lived
                // substream, and every later one waits behind it: drop it
                // (what was on it fails and is retried) and use a substream
                // per request on this connection from now on.
                self.pipe = Pipe::Off;
                self.pipes.clear();
            }
            let outcome = result.unwrap_or(Outcome::Failed(Failure::TimedOut));
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Done { id, outcome }));
        }
        if let Some(request) = self.to_open.pop_front() {
            let name = match &request {
                Open::Subscription(_) => SUBSCRIBE_PROTOCOL,
                _ => PROTOCOL,
            };
            let protocol = SubstreamProtocol::new(ReadyUpgrade::new(name), request)
                .with_timeout(self.limits.timeout);
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, command: Command) {
        match command {
            Command::Send(request) if request.subscription => {
                self.to_open.push_back(Open::Subscription(request));
            }
            Command::Cancel(id) => {
                if let Some(abort) = self.aborts.remove(&id) {
                    abort.abort();
                }
            }
            Command::Send(request)
                if request.expects_response && !matches!(self.pipe, Pipe::Off) =>
            {
                self.pipeline(request);
            }
            Command::Send(request) => self.to_open.push_back(Open::Request(request)),
            Command::Pipeline => {
                if matches!(self.pipe, Pipe::Off) {
                    self.pipe = Pipe::Idle;
                }
            }
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Open>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: Open::Request(request),
            }) => {
                let id = request.id;
                let framed = Framed::new(stream, self.limits.max_frame);
                let exchange = exchange(framed, request.frame, request.expects_response);
                if self.running.try_push(exchange, (id, false)).is_err() {
                    // The core bounds requests in flight below the set's room.
                    self.fail(id, Failure::StreamClosed { written: false });
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: Open::Subscription(request),
            }) => {
                let id = request.id;
                let framed = Framed::new(stream, self.limits.max_frame);
                let (abort, registration) = AbortHandle::new_pair();
                let follow = follow(framed, id, request.frame, self.pushes_tx.clone());
                let ended = Abortable::new(follow, registration).map(move |outcome| Done {
                    id,
                    outcome: outcome
                        .unwrap_or(Outcome::Failed(Failure::StreamClosed { written: true })),
                });
                self.aborts.insert(id, abort);
                self.following.push(ended.boxed());
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: Open::Pipe,
            }) => {
                let Pipe::Opening(waiting) = std::mem::replace(&mut self.pipe, Pipe::Idle) else {
                    return; // dropping it closes it
                };
                let (inbox, requests) = mpsc::unbounded();
                for queued in waiting {
                    let _ = inbox.unbounded_send(queued);
                }
                self.pipes.push(pipeline::run(stream, self.limits.max_frame, requests).boxed());
                self.pipe = Pipe::Open(inbox);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: Open::Resend(queued),
            }) => {
                let framed = Framed::new(stream, self.limits.max_frame);
                self.pipes.push(
                    async move {
                        let _ = queued.reply.send(exchange(framed, queued.frame, true).await);
                        Vec::new()
                    }
                    .boxed(),
                );
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let failure = match error {
                    StreamUpgradeError::NegotiationFailed => Failure::Unsupported,
                    StreamUpgradeError::Timeout => Failure::TimedOut,
                    _ => Failure::StreamClosed { written: false },
                };
                match info {
                    Open::Request(request) | Open::Subscription(request) => {
                        self.fail(request.id, failure)
                    }
                    Open::Resend(queued) => {
                        let _ = queued.reply.send(Outcome::Failed(failure));
                    }
                    Open::Pipe => {
                        if let Pipe::Opening(waiting) =
                            std::mem::replace(&mut self.pipe, Pipe::Idle)
                        {
                            for queued in waiting {
                                let _ = queued.reply.send(Outcome::Failed(failure));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
