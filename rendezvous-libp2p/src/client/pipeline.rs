//! One long-lived substream for every request that expects an answer, to a
//! server known to answer several requests per substream in order (ours:
//! see [`super::Behaviour::set_agent_version`]).
//!
//! A new substream per request costs both sides a yamux stream, a
//! multistream-select negotiation and the server's per-substream set-up;
//! on one long-lived substream, requests are written as they come, without
//! waiting for earlier answers, and each answer goes to the oldest request
//! still waiting for one. The server reads a substream's next request only
//! after answering the one before, so order is kept on both sides.
//!
//! The substream closes after [`IDLE`] with nothing written, well before a
//! server resets it for silence (ours does after 10 s). If it ends while
//! requests wait on it (the server closed or reset it), those requests come
//! back to the handler, which sends them again on a substream each and
//! carries this connection's requests that way from then on: a server that
//! does not keep a substream open for several requests is evidence enough.

use std::time::Duration;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::{Either, select};
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, StreamExt};
use futures_timer::Delay;
use libp2p_swarm::Stream;
use rendezvous_core::Failure;
use smallvec::SmallVec;

use super::handler::Outcome;
use crate::framed::{Framed, joined};

/// How long the substream stays open with nothing written.
pub(crate) const IDLE: Duration = Duration::from_secs(3);

/// Most requests written in one go: those queued when the writer wakes
/// share one write (one muxer frame, one encrypted frame), as the server
/// reads up to as many together.
const WRITE_BATCH: usize = 16;

/// A request for the pipe: its frame, and where its outcome goes.
#[doc(hidden)]
#[derive(Debug)]
pub struct Queued {
    pub(crate) frame: Bytes,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// Carries `inbox`'s requests on `stream` until it is idle for [`IDLE`]
/// (the inbox is closed then, so that later requests open a new pipe),
/// fails, or the inbox's sender is dropped. Returns the requests that were
/// not answered because the substream ended: closed or reset by the
/// server, or cut off while writing.
pub(crate) async fn run(
    stream: Stream,
    max_frame: usize,
    mut inbox: mpsc::UnboundedReceiver<Queued>,
) -> Vec<Queued> {
    let (read, write) = stream.split();
    let (mut reader, mut writer) = (Framed::new(read, max_frame), Framed::new(write, max_frame));
    // Written (or being written), oldest first: the reader answers them in
    // this order.
    let (waiting_tx, mut waiting) = mpsc::unbounded::<Queued>();
    let mut leftovers = Vec::new();
    {
        let writing = write_loop(&mut writer, &mut inbox, waiting_tx);
        let reading = read_loop(&mut reader, &mut waiting);
        futures::pin_mut!(writing, reading);
        // Once writing ends, the answers still owed are read; if reading
        // ends first, the substream is broken and writing stops with it.
        match select(writing, reading).await {
            Either::Left(((), reading)) => leftovers.extend(reading.await),
            Either::Right((unanswered, _)) => leftovers.extend(unanswered),
        }
    }
    inbox.close();
    while let Ok(queued) = waiting.try_recv() {
        leftovers.push(queued);
    }
    while let Ok(queued) = inbox.try_recv() {
        leftovers.push(queued);
    }
    let _ = writer.close().await;
    leftovers
}

/// Writes requests as they come until idle, the inbox ends, or a write
/// fails; each goes to the reader before it is written, and those queued
/// together are written together (up to [`WRITE_BATCH`]).
async fn write_loop(
    writer: &mut Framed<WriteHalf<Stream>>,
    inbox: &mut mpsc::UnboundedReceiver<Queued>,
    waiting: mpsc::UnboundedSender<Queued>,
) {
    let mut tick = Delay::new(IDLE);
    let mut wrote = false;
    loop {
        match select(inbox.next(), &mut tick).await {
            Either::Left((Some(queued), _)) => {
                // Each is taken from the inbox only once the one before it
                // is with the reader: if the reader is gone, the rest stay
                // in the inbox and are sent again.
                let mut frames: SmallVec<[Bytes; 1]> = SmallVec::new();
                let mut next = Some(queued);
                while let Some(queued) = next.take() {
                    frames.push(queued.frame.clone());
                    if waiting.unbounded_send(queued).is_err() {
                        return; // the reader is gone
                    }
                    if frames.len() < WRITE_BATCH {
                        next = inbox.try_recv().ok();
                    }
                }
                if let Some(frames) = joined(frames)
                    && writer.write_frame(&frames).await.is_err()
                {
                    return; // the reader will find the substream broken
                }
                wrote = true;
            }
            Either::Left((None, _)) => return,
            Either::Right(((), _)) if wrote => {
                wrote = false;
                tick = Delay::new(IDLE);
            }
            Either::Right(((), _)) => {
                // Idle: later requests go to a new pipe.
                inbox.close();
                return;
            }
        }
    }
}

/// Reads the answers in order; returns the request whose answer never came
/// (the rest are still in `waiting`).
async fn read_loop(
    reader: &mut Framed<ReadHalf<Stream>>,
    waiting: &mut mpsc::UnboundedReceiver<Queued>,
) -> Option<Queued> {
    while let Some(queued) = waiting.next().await {
        let outcome = match reader.read_frame().await {
            Ok(Some(body)) => Outcome::Response(body),
            // A malformed answer fails its request like any other's; the
            // substream cannot be trusted for the rest.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = queued.reply.send(Outcome::Failed(Failure::InvalidResponse));
                return None;
            }
            Ok(None) | Err(_) => return Some(queued),
        };
        let _ = queued.reply.send(outcome);
    }
    None
}
