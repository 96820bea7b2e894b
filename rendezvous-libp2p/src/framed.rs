//! Rendezvous frames on any byte stream: the length-prefixed protobuf
//! messages of `/rendezvous/1.0.0`, read with the core's
//! [`FrameDecoder`] so that a claimed
//! length over the limit fails before anything is allocated for it.
//!
//! Both behaviours' connection handlers drive their substreams with it, and
//! so does the load tool on its own streams.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use rendezvous_core::codec::{CodecError, FrameDecoder};

/// Bytes read per call: a request is a few hundred bytes, and this is what
/// an idle substream holds while it waits.
const READ_CHUNK: usize = 1024;

/// A byte stream carrying rendezvous frames in both directions.
#[derive(Debug)]
pub struct Framed<S> {
    io: S,
    decoder: FrameDecoder,
    /// Bytes read past the end of the last frame (a pipelined request).
    leftover: Vec<u8>,
    /// How the stream ended (`Ok`: cleanly) when [`Framed::ready_frames`]
    /// found it, for the next [`Framed::read_frame`] to report.
    ended: Option<io::Result<()>>,
    /// The last read filled its buffer, so the stream may hold more; a read
    /// that did not took everything the stream had.
    full: bool,
}

impl<S> Framed<S> {
    /// Frames on `io`, refusing incoming bodies over `max_frame` bytes.
    pub fn new(io: S, max_frame: usize) -> Self {
        Framed {
            io,
            decoder: FrameDecoder::new(max_frame),
            leftover: Vec::new(),
            ended: None,
            full: false,
        }
    }

    /// Whether no part of a frame has been read: the stream stands between
    /// frames.
    pub fn is_between_frames(&self) -> bool {
        self.leftover.is_empty() && self.decoder.is_idle()
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + Unpin> Framed<S> {
    /// Reads the next frame's body. `Ok(None)` when the stream ends cleanly
    /// between frames; an `InvalidData` error for a frame over the limit, a
    /// malformed length or an end inside a frame.
    pub async fn read_frame(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(end) = self.ended.take() {
            return end.map(|()| None);
        }
        if let Some(body) = self.decode_leftover()? {
            return Ok(Some(body));
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let n = self.io.read(&mut chunk).await?;
            self.full = n == chunk.len();
            if n == 0 {
                return self.decoder.finish().map(|()| None).map_err(invalid);
            }
            let mut input = &chunk[..n];
            if let Some(body) = self.decoder.feed(&mut input).map_err(invalid)? {
                self.leftover.extend_from_slice(input);
                return Ok(Some(body));
            }
        }
    }

    /// Adds to `into` up to `max` frames that can be had without waiting:
    /// those in bytes already read, then, while reads fill their buffer (a
    /// read that does not has taken all the stream held), those that reads
    /// the stream answers at once bring, reading at most `budget` bytes. A
    /// frame for which `last` holds is the last one taken, and then it
    /// returns `true`. An end of the stream or an error found meanwhile is
    /// what the next [`read_frame`](Self::read_frame) returns.
    ///
    /// A client that pipelines its requests has usually sent the next ones
    /// by the time the first is read: handed over together, they cost one
    /// trip through the caller instead of one each.
    pub fn ready_frames(
        &mut self,
        into: &mut impl Extend<Bytes>,
        max: usize,
        budget: usize,
        last: impl Fn(&[u8]) -> bool,
    ) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        let (mut taken, mut read) = (0, 0);
        while taken < max && self.ended.is_none() {
            match self.decode_leftover() {
                Ok(Some(body)) => {
                    let stop = last(&body);
                    into.extend([body]);
                    taken += 1;
                    if stop {
                        return true;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.ended = Some(Err(e));
                    return false;
                }
            }
            if read >= budget || !self.full {
                return false;
            }
            // Polled once: a stream with nothing buffered is not waited for.
            match self.io.read(&mut chunk).now_or_never() {
                None => return false,
                Some(Ok(0)) => self.ended = Some(self.decoder.finish().map_err(invalid)),
                Some(Ok(n)) => {
                    read += n;
                    self.full = n == chunk.len();
                    self.leftover.extend_from_slice(&chunk[..n]);
                }
                Some(Err(e)) => self.ended = Some(Err(e)),
            }
        }
        false
    }

    /// Reads and discards until the other side closes: after our half-close,
    /// that tells us the other side has read everything we wrote.
    pub async fn drain(&mut self) -> io::Result<()> {
        let mut sink = [0u8; 64];
        while self.io.read(&mut sink).await? > 0 {}
        Ok(())
    }

    fn decode_leftover(&mut self) -> io::Result<Option<Bytes>> {
        if self.leftover.is_empty() {
            return Ok(None);
        }
        let mut input = &self.leftover[..];
        let body = self.decoder.feed(&mut input).map_err(invalid)?;
        let used = self.leftover.len() - input.len();
        self.leftover.drain(..used);
        Ok(body)
    }
}

impl<S: AsyncWrite + Unpin> Framed<S> {
    /// Writes one whole frame (length prefix included) and flushes it.
    pub async fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.io.write_all(frame).await?;
        self.io.flush().await
    }

    /// Closes the writing side.
    pub async fn close(&mut self) -> io::Result<()> {
        self.io.close().await
    }
}

/// Whole frames (length prefixes included) as one write: the one frame
/// itself, or a copy of them all; `None` for none.
pub(crate) fn joined(frames: impl IntoIterator<Item = Bytes>) -> Option<Bytes> {
    let mut frames = frames.into_iter().peekable();
    let first = frames.next()?;
    if frames.peek().is_none() {
        return Some(first);
    }
    let mut all = BytesMut::from(first.as_ref());
    frames.for_each(|frame| all.extend_from_slice(&frame));
    Some(all.freeze())
}

fn invalid(err: CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            out.push(u8::try_from(body.len()).unwrap());
            out.extend_from_slice(body);
        }
        out
    }

    #[test]
    fn pipelined_frames_come_out_one_at_a_time_then_a_clean_end() {
        futures::executor::block_on(async {
            let mut framed = Framed::new(Cursor::new(frames(&[b"one", b"two"])), 16);
            assert_eq!(framed.read_frame().await.unwrap().unwrap().as_ref(), b"one");
            assert_eq!(framed.read_frame().await.unwrap().unwrap().as_ref(), b"two");
            assert!(framed.read_frame().await.unwrap().is_none());
        });
    }

    #[test]
    fn an_end_inside_a_frame_and_an_oversized_frame_are_invalid_data() {
        futures::executor::block_on(async {
            let mut cut = Framed::new(Cursor::new(vec![5u8, 1, 2]), 16);
            let err = cut.read_frame().await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let mut big = Framed::new(Cursor::new(frames(&[&[0u8; 20]])), 16);
            let err = big.read_frame().await.unwrap_err();
            assert!(err.to_string().contains("exceeds the limit"), "{err}");
        });
    }

    /// Reads as scripted: each step hands over its bytes, or (`None`) is
    /// not ready once; after the last step, the end of the stream.
    struct Script(std::collections::VecDeque<Option<Vec<u8>>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            match self.0.pop_front() {
                None => std::task::Poll::Ready(Ok(0)),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
                Some(Some(mut bytes)) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.0.push_front(Some(bytes.split_off(n)));
                    }
                    std::task::Poll::Ready(Ok(n))
                }
            }
        }
    }

    fn script(steps: Vec<Option<Vec<u8>>>) -> Framed<Script> {
        Framed::new(Script(steps.into()), 256)
    }

    /// Eight frames, bodies of 127 bytes `first`, `first + 1`, ...: one
    /// whole read.
    fn block(first: u8) -> Vec<u8> {
        let bodies: Vec<Vec<u8>> = (first..first + 8).map(|i| vec![i; 127]).collect();
        let all = frames(&bodies.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(all.len(), READ_CHUNK);
        all
    }

    /// The first byte of each body.
    fn firsts(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().map(|b| b[0]).collect()
    }

    async fn next(framed: &mut Framed<Script>) -> Vec<Bytes> {
        vec![framed.read_frame().await.unwrap().unwrap()]
    }

    #[test]
    fn ready_frames_takes_what_is_there_up_to_max_and_stops_where_a_read_would_wait() {
        futures::executor::block_on(async {
            let mut framed =
                script(vec![Some(block(0)), Some(block(8)), None, Some(frames(&[b"e"]))]);
            let mut batch = next(&mut framed).await;
            framed.ready_frames(&mut batch, 10, 4096, |_| false);
            assert_eq!(firsts(&batch), (0..=10).collect::<Vec<_>>());
            // 11 to 15 were read already; the step after them is not ready.
            let mut batch = next(&mut framed).await;
            framed.ready_frames(&mut batch, 16, 4096, |_| false);
            assert_eq!(firsts(&batch), (11..=15).collect::<Vec<_>>());
            assert_eq!(framed.read_frame().await.unwrap().unwrap().as_ref(), b"e");
            assert!(framed.read_frame().await.unwrap().is_none());
        });
    }

    #[test]
    fn after_a_read_that_took_everything_the_stream_is_not_read_again() {
        futures::executor::block_on(async {
            let mut framed = script(vec![Some(frames(&[b"a", b"b"])), Some(frames(&[b"c"]))]);
            let mut batch = next(&mut framed).await;
            framed.ready_frames(&mut batch, 16, 4096, |_| false);
            assert_eq!(batch, [&b"a"[..], b"b"]);
            assert_eq!(framed.read_frame().await.unwrap().unwrap().as_ref(), b"c");
        });
    }

    #[test]
    fn a_frame_marked_last_ends_what_ready_frames_takes() {
        futures::executor::block_on(async {
            let mut framed = script(vec![Some(block(0))]);
            let mut batch = next(&mut framed).await;
            assert!(framed.ready_frames(&mut batch, 16, 4096, |body| body[0] == 3));
            assert_eq!(firsts(&batch), [0, 1, 2, 3]);
            let mut batch = next(&mut framed).await;
            assert!(!framed.ready_frames(&mut batch, 16, 4096, |_| false));
            assert_eq!(firsts(&batch), [4, 5, 6, 7]);
        });
    }

    #[test]
    fn ready_frames_reads_no_more_than_its_budget() {
        futures::executor::block_on(async {
            let mut framed = script(vec![Some(block(0)), Some(block(8)), Some(block(16))]);
            let mut batch = next(&mut framed).await;
            framed.ready_frames(&mut batch, 100, 1, |_| false);
            assert_eq!(firsts(&batch), (0..16).collect::<Vec<_>>());
            assert_eq!(framed.read_frame().await.unwrap().unwrap()[0], 16);
        });
    }

    #[test]
    fn an_end_or_a_bad_frame_found_ahead_comes_out_of_the_next_read() {
        futures::executor::block_on(async {
            let mut clean = script(vec![Some(block(0))]);
            let mut batch = next(&mut clean).await;
            clean.ready_frames(&mut batch, 16, 4096, |_| false);
            assert_eq!(firsts(&batch), (0..8).collect::<Vec<_>>());
            assert!(clean.read_frame().await.unwrap().is_none());

            let mut cut = script(vec![Some(block(0)), Some(vec![5, 1])]);
            let mut batch = next(&mut cut).await;
            cut.ready_frames(&mut batch, 16, 4096, |_| false);
            assert_eq!(batch.len(), 8);
            let err = cut.read_frame().await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);

            // A length prefix of 300 (a two-byte varint), over the limit.
            let mut over = vec![0xac, 0x02];
            over.extend_from_slice(&[0u8; 300]);
            let mut oversized = script(vec![Some(block(0)), Some(over)]);
            let mut batch = next(&mut oversized).await;
            oversized.ready_frames(&mut batch, 16, 4096, |_| false);
            assert_eq!(batch.len(), 8);
            let err = oversized.read_frame().await.unwrap_err();
            assert!(err.to_string().contains("exceeds the limit"), "{err}");
        });
    }
}
