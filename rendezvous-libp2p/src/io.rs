//! Reading and writing rendezvous frames on a substream, with time limits.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{Either, select};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_timer::Delay;
use rendezvous_core::codec::FrameDecoder;

/// Reads one frame body; `Ok(None)` on a clean end of stream between frames.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    decoder: &mut FrameDecoder,
    pending: &mut Vec<u8>,
) -> io::Result<Option<Bytes>> {
    let mut buf = [0u8; 4096];
    loop {
        if !pending.is_empty() {
            let mut input = &pending[..];
            let frame = decoder.feed(&mut input).map_err(invalid)?;
            let used = pending.len() - input.len();
            pending.drain(..used);
            if frame.is_some() {
                return Ok(frame);
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return decoder.finish().map(|()| None).map_err(invalid);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Writes a whole frame and flushes it.
pub(crate) async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    frame: &[u8],
) -> io::Result<()> {
    stream.write_all(frame).await?;
    stream.flush().await
}

/// Runs `fut`, failing with `TimedOut` after `limit`.
pub(crate) async fn timeout<T>(
    limit: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let fut = std::pin::pin!(fut);
    match select(fut, Delay::new(limit)).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "rendezvous substream timed out"))
        }
    }
}

fn invalid(err: rendezvous_core::codec::CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}
