//! The server's connection handler: reads requests from inbound substreams,
//! hands them to the behaviour, writes the answers back. It holds no
//! protocol state, and everything it holds is bounded.
//!
//! A substream is in one of three places: reading its next request (after
//! writing the previous answers), parked while the behaviour has its
//! requests, or closing (writing a last answer). A client may pipeline
//! requests on one substream: those it has already sent when the first is
//! read go to the behaviour together (up to [`BATCH`], and up to the first
//! DISCOVER, whose page may be long), and their answers are written
//! together, in order. At most
//! [`Limits::max_streams`] are open at once; beyond that, up to
//! [`Limits::max_busy_streams`] more are read once and answered
//! `E_UNAVAILABLE` by the core, so that the client learns at once rather than
//! timing out; beyond both, a substream is reset on arrival. Answers the
//! client has not taken yet count against a bound per connection and one
//! per address (a DISCOVER not yet answered as a whole page): past either,
//! requests read are held back, in order, until the clients take some.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures_timer::Delay;
use libp2p_core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p_swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p_swarm::{ConnectionHandler, ConnectionHandlerEvent, Stream, SubstreamProtocol};
use smallvec::{SmallVec, smallvec};

use rendezvous_core::codec;
use rendezvous_core::proto::MessageType;

use crate::PROTOCOL;
use crate::framed::{Framed, joined};
use crate::histogram::Histogram;
use crate::timed::{TimedOut, TimedSet};

/// Most requests of one substream handed to the behaviour at once.
pub(crate) const BATCH: usize = 16;

/// Most bytes read ahead of a substream's first request to fill its batch.
pub(crate) const READ_AHEAD: usize = 8 * 1024;

/// Whether a request is answered with a page of registrations, up to
/// [`Limits::max_response_frame`](rendezvous_core::Limits::max_response_frame)
/// long: a batch ends with such a request, so that a substream holds at most
/// one page and short answers to the requests before it while they are
/// written (a client that asks for pages and does not read them would
/// otherwise hold [`BATCH`] pages on each of its substreams).
fn pages(body: &[u8]) -> bool {
    codec::peek_type(body) == Some(MessageType::Discover)
}

/// How often a handler holding requests back looks again at its address's
/// total, which its other connections lower without waking it.
const RECHECK: Duration = Duration::from_millis(50);

/// A batch of requests, or of what goes with them; a client that does not
/// pipeline makes batches of one, which need no allocation.
pub(crate) type Batch<T> = SmallVec<[T; 1]>;

/// What every handler of one behaviour shares: the bounds of a connection's
/// substreams, and what the behaviour reads across connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) max_streams: usize,
    pub(crate) max_busy_streams: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) max_frame: usize,
    /// Most bytes of answers a connection holds for its client, counting
    /// a page not yet made as [`Shared::max_page`].
    pub(crate) max_unwritten: usize,
    /// The same over all connections from one address.
    pub(crate) max_unwritten_per_origin: usize,
    /// The longest answer frame the core makes.
    pub(crate) max_page: usize,
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
    pub(crate) draining: AtomicBool,
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
        InFlight { shared: shared.clone(), since: Instant::now() }
    }

    /// Its answer is written (or it needed none).
    fn answered(self) {
        self.shared.durations.observe(self.since.elapsed());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes of answers a connection holds for its client, and those all
/// connections from its address hold (none for a connection whose remote
/// address is not an IP one).
#[derive(Clone, Debug, Default)]
pub(crate) struct Totals {
    connection: Arc<AtomicUsize>,
    origin: Option<Arc<AtomicUsize>>,
}

impl Totals {
    /// A connection's totals, counting into `origin`'s as well.
    pub(crate) fn new(origin: Option<Arc<AtomicUsize>>) -> Self {
        Totals { connection: Arc::default(), origin }
    }

    fn loads(&self) -> (usize, usize) {
        let origin = self.origin.as_ref().map_or(0, |o| o.load(Ordering::Relaxed));
        (self.connection.load(Ordering::Relaxed), origin)
    }

    fn each(&self, f: impl Fn(&AtomicUsize)) {
        f(&self.connection);
        if let Some(origin) = &self.origin {
            f(origin);
        }
    }
}

/// Bytes of answers counted in a connection's totals until written, or
/// until the future holding them is dropped.
#[derive(Debug)]
struct Unwritten {
    totals: Totals,
    bytes: usize,
}

impl Unwritten {
    fn new(totals: &Totals, bytes: usize) -> Self {
        totals.each(|total| {
            total.fetch_add(bytes, Ordering::Relaxed);
        });
        Unwritten { totals: totals.clone(), bytes }
    }
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        self.totals.each(|total| {
            total.fetch_sub(self.bytes, Ordering::Relaxed);
        });
    }
}

/// Identifies a substream within its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(u64);

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
    Draining,
    /// A substream ended without delivering a request.
    Empty,
}

/// The behaviour's answers to requests of one substream: each with its
/// index, in the order the requests were handed over. Answers given
/// together go together, so that a batch costs one trip back.
#[doc(hidden)]
#[derive(Debug)]
pub struct FromBehaviour {
    pub(crate) stream: StreamId,
    pub(crate) answers: Batch<(usize, Answer)>,
}

impl FromBehaviour {
    /// The answer to the request at `index`.
    pub(crate) fn one(stream: StreamId, index: usize, frame: Option<Bytes>, close: bool) -> Self {
        FromBehaviour { stream, answers: smallvec![(index, Answer { frame, close })] }
    }
}

#[derive(Clone, Copy, Debug)]
struct Tag {
    id: StreamId,
    busy: bool,
    /// At least one request was answered on it.
    served: bool,
}

type Read = (Framed<Stream>, io::Result<Option<Bytes>>);

/// A substream whose requests the behaviour has.
struct Parked {
    framed: Framed<Stream>,
    busy: bool,
    /// Its requests in order, each with the behaviour's answer once given.
    requests: Batch<(InFlight, Option<Answer>)>,
    /// What its answers may take, counted until they are given (nothing
    /// while the requests are held back).
    reserved: Option<Unwritten>,
}

/// A substream's requests read and held back until the connection's client
/// takes enough of the answers it owes, with what their answers may take.
struct Held {
    stream: StreamId,
    bodies: Batch<Bytes>,
    busy: bool,
    reserve: usize,
}

/// The behaviour's answer to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The response frame, if the request has one.
    frame: Option<Bytes>,
    /// Close the substream after it (a malformed request, or busy).
    close: bool,
}

/// Moves frames between inbound substreams and the behaviour.
pub struct Handler {
    shared: Arc<Shared>,
    reading: TimedSet<Read, Tag>,
    /// Substreams whose requests the behaviour has.
    parked: HashMap<StreamId, Parked>,
    /// Substreams writing a last answer and closing, tagged `busy`.
    closing: TimedSet<(), bool>,
    /// Open substreams within the bound, and over it, wherever they are
    /// (reading, parked or closing), so that each set always has room.
    open: usize,
    busy: usize,
    next_id: u64,
    events: VecDeque<ToBehaviour>,
    /// Bytes of answers this connection's client (and its address's) has
    /// not taken yet, and reserved for answers not yet given.
    unwritten: Totals,
    /// Requests waiting for `unwritten` to fall, oldest first.
    held: VecDeque<Held>,
    /// When to look at `unwritten` again while requests are held.
    recheck: Option<Delay>,
}

impl Handler {
    pub(crate) fn new(shared: Arc<Shared>, unwritten: Totals) -> Self {
        let all = shared.max_streams + shared.max_busy_streams;
        Handler {
            reading: TimedSet::new(shared.request_timeout, all),
            closing: TimedSet::new(shared.write_timeout, all),
            parked: HashMap::new(),
            open: 0,
            busy: 0,
            next_id: 0,
            events: VecDeque::new(),
            unwritten,
            held: VecDeque::new(),
            recheck: None,
            shared,
        }
    }

    fn accept(&mut self, stream: Stream) {
        if self.shared.draining.load(Ordering::Relaxed) {
            self.events.push_back(ToBehaviour::Draining);
            return; // dropping it resets it
        }
        let busy = if self.open < self.shared.max_streams {
            false
        } else if self.busy < self.shared.max_busy_streams {
            true
        } else {
            tracing::debug!("resetting an inbound rendezvous substream: {} open", self.open);
            self.events.push_back(ToBehaviour::Refused);
            return; // dropping it resets it
        };
        self.next_id += 1;
        let tag = Tag { id: StreamId(self.next_id), busy, served: false };
        let framed = Framed::new(stream, self.shared.max_frame);
        if self.reading.try_push(answer_then_read(framed, None, Batch::new()), tag).is_ok() {
            self.count(busy, 1);
        }
    }

    fn close(
        &mut self,
        framed: Framed<Stream>,
        answer: Option<(Bytes, Unwritten)>,
        busy: bool,
        requests: Batch<InFlight>,
    ) {
        if self.closing.try_push(finish(framed, answer, requests), busy).is_err() {
            self.count(busy, -1); // unreachable: the set has room for every open substream
        }
    }

    fn count(&mut self, busy: bool, up: isize) {
        let counter = if busy { &mut self.busy } else { &mut self.open };
        *counter = counter.saturating_add_signed(up);
    }

    /// Whether answers that may take `reserve` bytes fit beside those the
    /// client, and all clients at its address, have not taken (a batch goes
    /// alone if it must, so that a reserve over a bound cannot wait
    /// forever).
    fn admits(&self, reserve: usize) -> bool {
        let fits = |unwritten: usize, max: usize| {
            unwritten == 0 || unwritten.saturating_add(reserve) <= max
        };
        let (connection, origin) = self.unwritten.loads();
        fits(connection, self.shared.max_unwritten)
            && fits(origin, self.shared.max_unwritten_per_origin)
    }

    /// Gives a batch to the behaviour, reserving room for its answers.
    fn hand_over(&mut self, Held { stream, bodies, busy, reserve }: Held) {
        if let Some(parked) = self.parked.get_mut(&stream) {
            parked.reserved = Some(Unwritten::new(&self.unwritten, reserve));
        }
        self.events.push_back(ToBehaviour::Request { stream, bodies, busy });
    }

    /// Hands over the held batches that now fit, oldest first.
    fn release(&mut self) {
        while let Some(held) = self.held.front()
            && self.admits(held.reserve)
        {
            let Some(held) = self.held.pop_front() else { return };
            self.hand_over(held);
        }
    }

    /// Whether it is time to look at the totals again: this connection's
    /// writes wake it, but those of other connections from its address do
    /// not, so while requests are held it looks every [`RECHECK`].
    fn recheck_due(&mut self, cx: &mut Context<'_>) -> bool {
        if self.held.is_empty() {
            self.recheck = None;
            return false;
        }
        let due = self.recheck.get_or_insert_with(|| Delay::new(RECHECK)).poll_unpin(cx);
        if due.is_ready() {
            self.recheck = None;
        }
        due.is_ready()
    }

    fn on_read(&mut self, result: Result<Read, TimedOut>, tag: Tag) {
        match result {
            Ok((mut framed, Ok(Some(body)))) => {
                // A batch ends at its one page, if any; a busy substream's
                // answer is short whatever it asked.
                let mut bodies: Batch<Bytes> = smallvec![body];
                let page = if tag.busy {
                    false
                } else if pages(&bodies[0]) {
                    true
                } else {
                    framed.ready_frames(&mut bodies, BATCH - 1, READ_AHEAD, pages)
                };
                let requests = bodies.iter().map(|_| (InFlight::new(&self.shared), None)).collect();
                let parked = Parked { framed, busy: tag.busy, requests, reserved: None };
                self.parked.insert(tag.id, parked);
                let reserve = if page { self.shared.max_page } else { 0 };
                let held = Held { stream: tag.id, bodies, busy: tag.busy, reserve };
                if self.held.is_empty() && self.admits(held.reserve) {
                    self.hand_over(held);
                } else {
                    if self.held.is_empty() {
                        let (connection, origin) = self.unwritten.loads();
                        tracing::debug!(
                            "holding requests back: {connection} bytes of answers not taken by \
                             the client, {origin} by its address"
                        );
                    }
                    self.held.push_back(held);
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
                self.count(tag.busy, -1);
                if !(tag.served && framed.is_between_frames())
                    || error.kind() == io::ErrorKind::InvalidData
                {
                    self.events.push_back(ToBehaviour::Failed { error });
                }
            }
            Err(_) => {
                self.count(tag.busy, -1);
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
    type InboundProtocol = ReadyUpgrade<libp2p_swarm::StreamProtocol>;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
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
                self.count(busy, -1);
            }
            // Answers written (or dropped) since may make room for held
            // requests.
            self.release();
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
            }
            match self.reading.poll_unpin(cx) {
                Poll::Ready((result, tag)) => self.on_read(result, tag),
                Poll::Pending => {
                    self.release();
                    if self.events.is_empty() && !self.recheck_due(cx) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn on_behaviour_event(&mut self, FromBehaviour { stream, answers }: FromBehaviour) {
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
        let Some(Parked { framed, busy, requests, reserved }) = self.parked.remove(&stream) else {
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
            self.count(busy, -1); // unreachable: the set has room for every open substream
        }
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
            self.accept(stream);
        }
    }
}
