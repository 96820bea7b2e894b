//! The server's connection handler: reads requests from inbound
//! substreams, hands them to the behaviour, writes the answers back. Every
//! decision (how many substreams, which are answered busy, when requests
//! wait for the client to read) is the core's
//! [`Admission`](rendezvous_core::admission); this handler does the I/O,
//! and everything it holds is bounded.
//!
//! A substream is in one of three places: reading its next request (after
//! writing the previous answers), parked while the behaviour has its
//! requests, or closing (writing a last answer). A client may pipeline
//! requests on one substream: those it has already sent when the first is
//! read go to the behaviour together (up to [`BATCH`], and up to the first
//! request answered with a page), and their answers are written together,
//! in order.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::Either;
use libp2p_core::upgrade::{DeniedUpgrade, ReadyUpgrade, SelectUpgrade};
use libp2p_swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p_swarm::{ConnectionHandler, ConnectionHandlerEvent, Stream, SubstreamProtocol};
use rendezvous_core::admission::{Admission, AdmissionLimits, Opened, asks_for_page};
use rendezvous_core::histogram::Histogram;
use smallvec::{SmallVec, smallvec};

use super::subscribers::Subscribers;
use super::unread::{Totals, Unwritten};
use crate::clock;
use crate::framed::{Framed, joined};
use crate::timed::{TimedOut, TimedSet};
use crate::{PROTOCOL, SUBSCRIBE_PROTOCOL};

/// Most requests of one substream handed to the behaviour at once.
pub(crate) const BATCH: usize = 16;

/// Most bytes read ahead of a substream's first request to fill its batch.
pub(crate) const READ_AHEAD: usize = 8 * 1024;

/// A batch of requests, or of what goes with them; a client that does not
/// pipeline makes batches of one, which need no allocation.
pub(crate) type Batch<T> = SmallVec<[T; 1]>;

/// What every handler of one behaviour shares: the bounds of a connection's
/// substreams, and what the behaviour reads across connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) admission: AdmissionLimits,
    pub(crate) request_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) max_frame: usize,
    /// The behaviour closes idle connections itself, so its handlers keep
    /// them open in between: otherwise the swarm arms a timer of its own
    /// each time a connection's last substream closes and drops it when
    /// the next one opens.
    pub(crate) keep_alive: bool,
    /// From a request's last byte read to its answer's last byte written.
    pub(crate) durations: Histogram,
    /// Requests read and not yet answered (or dropped with their
    /// connection), on every connection.
    pub(crate) in_flight: AtomicUsize,
    /// Shutting down: new substreams are refused; the ones open are served.
    pub(crate) shutting_down: AtomicBool,
    /// Most subscription substreams open on one connection (the core
    /// bounds them per peer too).
    pub(crate) max_subscriptions: usize,
}

/// A request read and not yet answered: counted in
/// [`Shared::in_flight`] until dropped, and timed until answered.
#[derive(Debug)]
struct InFlight {
    shared: Arc<Shared>,
    since: Instant,
}

impl InFlight {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { shared: shared.clone(), since: clock::monotonic() }
    }

    /// Its answer is written (or it needed none).
    fn answered(self) {
        self.shared.durations.observe(clock::monotonic() - self.since);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Identifies a substream within its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub(crate) u64);

/// What the handler tells the behaviour.
#[doc(hidden)]
#[derive(Debug)]
pub enum ToBehaviour {
    /// Requests arrived on one substream, in order; answer each with a
    /// [`FromBehaviour`] naming its index. `busy`: the connection is over its
    /// substream bound, so answer `E_UNAVAILABLE`.
    Request { stream: StreamId, bodies: Batch<Bytes>, busy: bool },
    /// A substream failed: a malformed frame or an I/O error.
    Failed { error: io::Error },
    /// A substream did not finish a request in time and was reset.
    TimedOut,
    /// A substream arrived over both bounds and was reset.
    Refused,
    /// A substream arrived while shutting down and was reset.
    ShuttingDown,
    /// A substream ended without delivering a request.
    Empty,
    /// A subscription substream delivered its `DISCOVER_SUBSCRIBE`.
    Subscribe { stream: StreamId, body: Bytes },
    /// Bytes of a subscription's pushes were written.
    PushWritten { stream: StreamId, bytes: usize },
    /// A subscription substream ended.
    Unsubscribed { stream: StreamId },
}

/// What the behaviour tells a handler.
#[doc(hidden)]
#[derive(Debug)]
pub enum FromBehaviour {
    /// Answers to requests.
    Answers(Answers),
    /// A frame for a subscription substream (none: just end it); `end`:
    /// close it once written.
    Push { stream: StreamId, frame: Option<Bytes>, end: bool },
}

/// The behaviour's answers to requests of one substream: each with its
/// index, in the order the requests were handed over. Answers given
/// together go together, so that a batch costs one trip back.
#[doc(hidden)]
#[derive(Debug)]
pub struct Answers {
    pub(crate) stream: StreamId,
    pub(crate) answers: Batch<(usize, Answer)>,
}

impl FromBehaviour {
    /// The answer to the request at `index`.
    pub(crate) fn one(stream: StreamId, index: usize, frame: Option<Bytes>, close: bool) -> Self {
        FromBehaviour::Answers(Answers {
            stream,
            answers: smallvec![(index, Answer { frame, close })],
        })
    }
}

/// The behaviour's answer to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The response frame, if the request has one.
    pub(crate) frame: Option<Bytes>,
    /// Close the substream after it (a malformed request, or busy).
    close: bool,
}

#[derive(Clone, Copy, Debug)]
struct Tag {
    id: StreamId,
    busy: bool,
    /// At least one request was answered on it.
    served: bool,
}

type Read = (Framed<Stream>, io::Result<Option<Bytes>>);

/// A substream whose requests the behaviour has (or that wait their turn).
struct Parked {
    framed: Framed<Stream>,
    busy: bool,
    /// Its requests in order, each with the behaviour's answer once given.
    requests: Batch<(InFlight, Option<Answer>)>,
    /// What its answers may take, counted until they are given (nothing
    /// while the requests wait).
    reserved: Option<Unwritten>,
}

/// A substream's requests read and waiting for admission.
struct Waiting {
    stream: StreamId,
    bodies: Batch<Bytes>,
    busy: bool,
}

/// Moves frames between inbound substreams and the behaviour.
pub struct Handler {
    shared: Arc<Shared>,
    admission: Admission<Waiting>,
    reading: TimedSet<Read, Tag>,
    /// Substreams whose requests the behaviour has, or that wait.
    /// Boxed: a map keeps its table after it empties, and a connection
    /// that made one request would otherwise keep room for several whole
    /// substreams (1.4 KB) for its life.
    parked: HashMap<StreamId, Box<Parked>>,
    /// Substreams writing a last answer and closing, tagged `busy`.
    closing: TimedSet<(), bool>,
    next_id: u64,
    events: VecDeque<ToBehaviour>,
    /// Bytes of answers this connection's client (and its address's) has
    /// not taken yet, and reserved for answers not yet given.
    unwritten: Totals,
    /// Subscription substreams, once the connection opens one (most never
    /// do, and an idle connection should not pay for the machinery).
    subscribers: Option<Box<Subscribers>>,
}

impl Handler {
    pub(crate) fn new(shared: Arc<Shared>, unwritten: Totals) -> Self {
        let limits = shared.admission;
        let all = limits.max_streams + limits.max_busy_streams;
        Handler {
            admission: Admission::new(limits),
            reading: TimedSet::new(shared.request_timeout, all),
            closing: TimedSet::new(shared.write_timeout, all),
            parked: HashMap::new(),
            next_id: 0,
            events: VecDeque::new(),
            unwritten,
            subscribers: None,
            shared,
        }
    }

    fn accept(&mut self, stream: Stream) {
        let busy = match self.admission.opened(self.shared.shutting_down.load(Ordering::Relaxed)) {
            Opened::Serve => false,
            Opened::Busy => true,
            Opened::Reset => {
                tracing::debug!("resetting an inbound rendezvous substream: over both bounds");
                self.events.push_back(ToBehaviour::Refused);
                return; // dropping it resets it
            }
            Opened::ShuttingDown => {
                self.events.push_back(ToBehaviour::ShuttingDown);
                return;
            }
        };
        self.next_id += 1;
        let tag = Tag { id: StreamId(self.next_id), busy, served: false };
        let framed = Framed::new(stream, self.shared.max_frame);
        if self.reading.try_push(answer_then_read(framed, None, Batch::new()), tag).is_err() {
            self.admission.closed(busy); // unreachable: the set has room for every open substream
        }
    }

    fn subscribers(&mut self) -> &mut Subscribers {
        let shared = &self.shared;
        self.subscribers.get_or_insert_with(|| {
            Box::new(Subscribers::new(
                shared.request_timeout,
                shared.write_timeout,
                shared.max_frame,
                shared.max_subscriptions,
            ))
        })
    }

    fn close(
        &mut self,
        framed: Framed<Stream>,
        answer: Option<(Bytes, Unwritten)>,
        busy: bool,
        requests: Batch<InFlight>,
    ) {
        if self.closing.try_push(finish(framed, answer, requests), busy).is_err() {
            self.admission.closed(busy); // unreachable: the set has room for every open substream
        }
    }

    /// Gives a batch to the behaviour, reserving room for its answers.
    fn hand_over(&mut self, Waiting { stream, bodies, busy }: Waiting, reserve: usize) {
        if let Some(parked) = self.parked.get_mut(&stream) {
            parked.reserved = Some(Unwritten::new(&self.unwritten, reserve));
        }
        self.events.push_back(ToBehaviour::Request { stream, bodies, busy });
    }

    /// Hands over the waiting batches that now fit, oldest first; while one
    /// still waits, asks to be woken when the address's other connections
    /// take answers (this connection's own writes wake it anyway).
    fn release(&mut self, cx: &mut Context<'_>) {
        while let Some((waiting, reserve)) = self.admission.release(self.unwritten.unread()) {
            self.hand_over(waiting, reserve);
        }
        if self.admission.held() > 0 {
            self.unwritten.wake_on_origin(cx.waker());
            // A write may have finished in between.
            while let Some((waiting, reserve)) = self.admission.release(self.unwritten.unread()) {
                self.hand_over(waiting, reserve);
            }
        }
    }

    fn on_read(&mut self, result: Result<Read, TimedOut>, tag: Tag) {
        match result {
            Ok((mut framed, Ok(Some(body)))) => {
                // A batch ends at its one page, if any; a busy substream's
                // answer is short whatever it asked.
                let mut bodies: Batch<Bytes> = smallvec![body];
                if !tag.busy && !asks_for_page(&bodies[0]) {
                    framed.ready_frames(&mut bodies, BATCH - 1, READ_AHEAD, asks_for_page);
                }
                let reserve = self.admission.reserve(&bodies[bodies.len() - 1], tag.busy);
                let requests = bodies.iter().map(|_| (InFlight::new(&self.shared), None)).collect();
                let parked = Parked { framed, busy: tag.busy, requests, reserved: None };
                self.parked.insert(tag.id, Box::new(parked));
                let waiting = Waiting { stream: tag.id, bodies, busy: tag.busy };
                match self.admission.offer(waiting, reserve, self.unwritten.unread()) {
                    Some((waiting, reserve)) => self.hand_over(waiting, reserve),
                    None => {
                        let unread = self.unwritten.unread();
                        tracing::debug!(
                            "holding requests back: {} bytes of answers not taken by the \
                             client, {} by its address",
                            unread.connection,
                            unread.origin
                        );
                    }
                }
            }
            Ok((framed, Ok(None))) => {
                if !tag.served {
                    self.events.push_back(ToBehaviour::Empty);
                }
                self.close(framed, None, tag.busy, Batch::new());
            }
            // A reset after the last answer is how go clients end a
            // substream; anything else is a failure.
            Ok((framed, Err(error))) => {
                self.admission.closed(tag.busy);
                if !(tag.served && framed.is_between_frames())
                    || error.kind() == io::ErrorKind::InvalidData
                {
                    self.events.push_back(ToBehaviour::Failed { error });
                }
            }
            Err(_) => {
                self.admission.closed(tag.busy);
                self.events.push_back(ToBehaviour::TimedOut);
            }
        }
    }
}

/// Writes `answer` (if any: the frames answering `requests`), then reads
/// the next request.
async fn answer_then_read(
    mut framed: Framed<Stream>,
    answer: Option<(Bytes, Unwritten)>,
    requests: Batch<InFlight>,
) -> Read {
    if let Some((frames, unwritten)) = answer {
        if let Err(e) = framed.write_frame(&frames).await {
            return (framed, Err(e));
        }
        drop(unwritten);
    }
    requests.into_iter().for_each(InFlight::answered);
    let next = framed.read_frame().await;
    (framed, next)
}

/// Writes `answer` (if any: the frames answering `requests`) and closes.
async fn finish(
    mut framed: Framed<Stream>,
    answer: Option<(Bytes, Unwritten)>,
    requests: Batch<InFlight>,
) {
    let written = match answer {
        Some((frames, unwritten)) => {
            let written = framed.write_frame(&frames).await.is_ok();
            drop(unwritten);
            written
        }
        None => true,
    };
    if written {
        requests.into_iter().for_each(InFlight::answered);
    }
    let _ = framed.close().await;
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = SelectUpgrade<
        ReadyUpgrade<libp2p_swarm::StreamProtocol>,
        ReadyUpgrade<libp2p_swarm::StreamProtocol>,
    >;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        let protocols =
            SelectUpgrade::new(ReadyUpgrade::new(PROTOCOL), ReadyUpgrade::new(SUBSCRIBE_PROTOCOL));
        SubstreamProtocol::new(protocols, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.shared.keep_alive
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        loop {
            // Polled again after every read: a read that ended its
            // substream has just put the closing in this set.
            while let Poll::Ready((_, busy)) = self.closing.poll_unpin(cx) {
                self.admission.closed(busy);
            }
            // Answers written (or dropped) since may make room for waiting
            // requests.
            self.release(cx);
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
            }
            if let Some(subscribers) = &mut self.subscribers
                && let Poll::Ready(event) = subscribers.poll(cx)
            {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
            }
            match self.reading.poll_unpin(cx) {
                Poll::Ready((result, tag)) => self.on_read(result, tag),
                Poll::Pending => {
                    self.release(cx);
                    if self.events.is_empty() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        let Answers { stream, answers } = match event {
            FromBehaviour::Answers(answers) => answers,
            FromBehaviour::Push { stream, frame, end } => {
                if let Some(subscribers) = &mut self.subscribers {
                    subscribers.push(stream, frame, end);
                }
                return;
            }
        };
        let Some(parked) = self.parked.get_mut(&stream) else {
            return;
        };
        for (index, answer) in answers {
            if let Some((_, slot)) = parked.requests.get_mut(index) {
                *slot = Some(answer);
            }
        }
        // Written in order, once every request has its answer, or every one
        // up to an answer that closes the substream (the behaviour handles
        // none after it).
        let mut answered = 0;
        let mut close = parked.busy;
        for (_, answer) in &parked.requests {
            let Some(answer) = answer else {
                return;
            };
            answered += 1;
            if answer.close {
                close = true;
                break;
            }
        }
        let Some(Parked { framed, busy, requests, reserved }) =
            self.parked.remove(&stream).map(|parked| *parked)
        else {
            return;
        };
        let (served, answers): (Batch<InFlight>, Batch<Option<Answer>>) =
            requests.into_iter().take(answered).unzip();
        let frames = joined(answers.into_iter().filter_map(|answer| answer?.frame)).map(|frames| {
            let unwritten = Unwritten::new(&self.unwritten, frames.len());
            (frames, unwritten)
        });
        // What was reserved for the answers is now what they take.
        drop(reserved);
        if close {
            self.close(framed, frames, busy, served);
            return;
        }
        let tag = Tag { id: stream, busy, served: true };
        let next = answer_then_read(framed, frames, served);
        if self.reading.try_push(next, tag).is_err() {
            self.admission.closed(busy); // unreachable: the set has room for every open substream
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol, ..
        }) = event
        {
            match protocol {
                Either::Left(stream) => self.accept(stream),
                Either::Right(stream) => {
                    if self.shared.shutting_down.load(Ordering::Relaxed) {
                        self.events.push_back(ToBehaviour::ShuttingDown);
                    } else if let Err(()) = self.subscribers().accept(stream) {
                        tracing::debug!("resetting a subscription substream: over the bound");
                        self.events.push_back(ToBehaviour::Refused);
                    }
                }
            }
        }
    }
}
