//! A connection's subscription substreams: the first frame read (the
//! `DISCOVER_SUBSCRIBE`), then the core's pushes written in order, each
//! write reported so that the core can bound what its subscriber has not
//! taken (the policy is the core's). A write that takes longer than the
//! write timeout ends the substream: its subscriber does not read.
//!
//! Nothing is read after the first frame: a subscriber may close its
//! writing side and keep reading. One that goes away is found out at the
//! next write, or when its connection closes.

use std::collections::HashMap;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p_swarm::Stream;

use super::handler::{StreamId, ToBehaviour};
use crate::framed::Framed;
use crate::timed::{TimedOut, TimedSet};

type FirstRead = (Framed<Stream>, io::Result<Option<Bytes>>);

/// What the handler hands a substream to write: a frame, and whether it
/// is the last.
type Outbox = mpsc::UnboundedSender<(Option<Bytes>, bool)>;

pub(crate) struct Subscribers {
    write_timeout: Duration,
    max_frame: usize,
    max: usize,
    /// Substreams whose first frame is awaited.
    opening: TimedSet<FirstRead, StreamId>,
    /// Substreams following, by id: where their frames go.
    open: HashMap<StreamId, Outbox>,
    running: FuturesUnordered<BoxFuture<'static, StreamId>>,
    written_tx: mpsc::UnboundedSender<(StreamId, usize)>,
    written_rx: mpsc::UnboundedReceiver<(StreamId, usize)>,
    /// Ids continue the request substreams' far above them.
    next_id: u64,
}

impl Subscribers {
    pub(crate) fn new(
        read_timeout: Duration,
        write_timeout: Duration,
        max_frame: usize,
        max: usize,
    ) -> Self {
        let (written_tx, written_rx) = mpsc::unbounded();
        Subscribers {
            write_timeout,
            max_frame,
            max,
            opening: TimedSet::new(read_timeout, max.max(1)),
            open: HashMap::new(),
            running: FuturesUnordered::new(),
            written_tx,
            written_rx,
            next_id: 1 << 62,
        }
    }

    /// A new subscription substream; refused (dropped, so reset) over the
    /// bound.
    pub(crate) fn accept(&mut self, stream: Stream) -> Result<(), ()> {
        if self.opening.len() + self.running.len() >= self.max {
            return Err(());
        }
        self.next_id += 1;
        let mut framed = Framed::new(stream, self.max_frame);
        let first = async move {
            let read = framed.read_frame().await;
            (framed, read)
        };
        self.opening.try_push(first, StreamId(self.next_id)).map_err(|_| ())
    }

    /// A frame for `stream` (none: end it), last if `end`.
    pub(crate) fn push(&mut self, stream: StreamId, frame: Option<Bytes>, end: bool) {
        if let Some(outbox) = self.open.get(&stream) {
            let _ = outbox.unbounded_send((frame, end));
        }
        if end {
            // Its substream ends once what it has is written.
            self.open.remove(&stream);
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToBehaviour> {
        if let Poll::Ready(Some((stream, bytes))) = self.written_rx.poll_next_unpin(cx) {
            return Poll::Ready(ToBehaviour::PushWritten { stream, bytes });
        }
        if let Poll::Ready(Some(stream)) = self.running.poll_next_unpin(cx) {
            self.open.remove(&stream);
            return Poll::Ready(ToBehaviour::Unsubscribed { stream });
        }
        let Poll::Ready((read, stream)) = self.opening.poll_unpin(cx) else {
            return Poll::Pending;
        };
        Poll::Ready(match read {
            Ok((framed, Ok(Some(body)))) => {
                let (outbox, frames) = mpsc::unbounded();
                self.open.insert(stream, outbox);
                let writes =
                    follow(stream, framed, frames, self.written_tx.clone(), self.write_timeout);
                self.running.push(writes.boxed());
                ToBehaviour::Subscribe { stream, body }
            }
            Ok((_, Ok(None))) => ToBehaviour::Empty,
            Ok((_, Err(error))) => ToBehaviour::Failed { error },
            Err(TimedOut) => ToBehaviour::TimedOut,
        })
    }
}

/// Writes `frames` in order, reporting each written, until the last, a
/// failed or overdue write, or the handler letting go.
async fn follow(
    stream: StreamId,
    mut framed: Framed<Stream>,
    mut frames: mpsc::UnboundedReceiver<(Option<Bytes>, bool)>,
    written: mpsc::UnboundedSender<(StreamId, usize)>,
    write_timeout: Duration,
) -> StreamId {
    while let Some((frame, end)) = frames.next().await {
        if let Some(frame) = frame {
            let write = framed.write_frame(&frame);
            let overdue = futures_timer::Delay::new(write_timeout);
            match futures::future::select(Box::pin(write), overdue).await {
                futures::future::Either::Left((Ok(()), _)) => {
                    let _ = written.unbounded_send((stream, frame.len()));
                }
                _ => return stream,
            }
        }
        if end {
            let _ = framed.close().await;
            return stream;
        }
    }
    stream
}
