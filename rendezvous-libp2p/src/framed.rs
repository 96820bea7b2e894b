//! Rendezvous frames on any byte stream: the length-prefixed protobuf
//! messages of `/rendezvous/1.0.0`, read with the core's
//! [`FrameDecoder`](rendezvous_core::codec::FrameDecoder) so that a claimed
//! length over the limit fails before anything is allocated for it.
//!
//! Both behaviours' connection handlers drive their substreams with it, and
//! so does the load tool on its own streams.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
}

impl<S> Framed<S> {
    /// Frames on `io`, refusing incoming bodies over `max_frame` bytes.
    pub fn new(io: S, max_frame: usize) -> Self {
        Framed { io, decoder: FrameDecoder::new(max_frame), leftover: Vec::new() }
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
        if let Some(body) = self.decode_leftover()? {
            return Ok(Some(body));
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let n = self.io.read(&mut chunk).await?;
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
}
