//! TCP writes that leave once per wakeup of a task, not once per frame.
//!
//! Under libp2p, yamux flushes after every frame it sends and noise turns
//! each flush into a frame of its own and a `send`: opening a substream,
//! echoing its protocol, answering and closing cost four system calls, each
//! of which also does the receiving side's TCP work on loopback. A task run
//! through [`flushing`] (every task [`crate::runtime::spawn`] starts) holds
//! what its streams write during one poll in user space and sends each
//! stream's bytes in one call when the poll ends, so a wakeup that answers
//! eight requests sends once.
//!
//! A flush inside such a poll returns at once: the bytes leave when the poll
//! ends, before the task sleeps, exactly as if they had been handed to the
//! kernel's send buffer. If the socket cannot take them all, the rest waits
//! in the stream (at most [`HIGH_WATER`] before writes wait) and the task is
//! woken when the socket is writable. Past `SEND_AT` (16 KiB), a stream sends
//! at once rather than holding more. Outside such a task, a stream writes
//! through as a plain TCP stream does.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_io::Async;
use futures::{AsyncRead, AsyncWrite};

/// Most bytes a stream holds for a socket that cannot take them: then its
/// writers wait. What a peer that stops reading costs beyond the kernel's
/// own buffers.
pub const HIGH_WATER: usize = 32 * 1024;

/// Bytes a stream collects before it sends at once rather than at the end
/// of the poll: small frames are what coalescing saves calls on, and a
/// large answer (a discover page) would only be copied.
const SEND_AT: usize = 16 * 1024;

/// The first allocation of a stream's buffer in a wakeup: room for the
/// frames of a few answers without growing. The buffer is freed once sent,
/// so that idle connections hold none.
const FIRST_CAPACITY: usize = 2 * 1024;

thread_local! {
    /// While a [`flushing`] task is polled: the streams it wrote to.
    static WRITTEN: RefCell<Option<Vec<Arc<Shared>>>> = const { RefCell::new(None) };
}

/// A TCP connection whose writes leave once per wakeup of a [`flushing`]
/// task.
#[derive(Debug)]
pub struct TcpStream {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    io: Async<std::net::TcpStream>,
    out: Mutex<Outbox>,
}

#[derive(Debug, Default)]
struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already sent.
    sent: usize,
    /// In the current poll's list of streams to send, or in its task's
    /// list of streams waiting for their socket: sent at the end of the
    /// poll either way, so not listed again.
    listed: bool,
    /// A send failed after its bytes were accepted: every later call fails.
    failed: Option<io::ErrorKind>,
}

impl Outbox {
    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic while the lock was held leaves a consistent buffer.
        self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends what `out` holds; Pending (with `cx` woken when writable) if
    /// the socket cannot take it all.
    fn send(&self, out: &mut Outbox, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = out.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while out.pending() > 0 {
            match Pin::new(&mut &self.io).poll_write(cx, &out.buf[out.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(self.fail(out, io::ErrorKind::WriteZero)));
                }
                Poll::Ready(Ok(n)) => out.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fail(out, e.kind()))),
                Poll::Pending => return Poll::Pending,
            }
        }
        out.buf = Vec::new();
        out.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn fail(&self, out: &mut Outbox, kind: io::ErrorKind) -> io::Error {
        out.failed = Some(kind);
        out.buf = Vec::new();
        out.sent = 0;
        kind.into()
    }
}

/// Lists `shared` to be sent when the current [`flushing`] poll ends;
/// false outside one.
fn list(shared: &Arc<Shared>, out: &mut Outbox) -> bool {
    WRITTEN.with(|written| match written.borrow_mut().as_mut() {
        Some(list) => {
            if !out.listed {
                out.listed = true;
                list.push(shared.clone());
            }
            true
        }
        None => false,
    })
}

impl TcpStream {
    /// Wraps a connected stream.
    pub fn new(io: Async<std::net::TcpStream>) -> Self {
        TcpStream { shared: Arc::new(Shared { io, out: Mutex::new(Outbox::default()) }) }
    }

    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Ok(TcpStream::new(Async::<std::net::TcpStream>::connect(addr).await?))
    }

    /// The socket itself, to set and read its options.
    pub(crate) fn socket(&self) -> &std::net::TcpStream {
        self.shared.io.get_ref()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.io.get_ref().local_addr()
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.shared.io.get_ref().peer_addr()
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.shared.io).poll_read(cx, buf)
    }
}

/// Holds as much of `data` as fits under [`HIGH_WATER`]; returns how much.
fn hold(out: &mut Outbox, data: &[u8]) -> usize {
    let take = data.len().min(HIGH_WATER.saturating_sub(out.pending()));
    if take > 0 && out.buf.capacity() == 0 {
        out.buf.reserve(take.max(FIRST_CAPACITY));
    }
    out.buf.extend_from_slice(&data[..take]);
    take
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.shared;
        let mut out = shared.outbox();
        if let Some(kind) = out.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if out.pending() >= HIGH_WATER {
            // Make room first; a writer over the mark waits for the socket.
            if shared.send(&mut out, cx)?.is_pending() && out.pending() >= HIGH_WATER {
                return Poll::Pending;
            }
        }
        let listed = list(shared, &mut out);
        if !listed || out.pending() + data.len() > SEND_AT {
            // Outside a flushing task, or too much to hold: what is held
            // goes first, then this writes through as far as the socket
            // takes it; a large answer is not copied into the buffer.
            if shared.send(&mut out, cx)?.is_ready() {
                match Pin::new(&mut &shared.io).poll_write(cx, data) {
                    Poll::Ready(Ok(n)) if n == data.len() || !listed => return Poll::Ready(Ok(n)),
                    Poll::Ready(Ok(n)) => {
                        let held = hold(&mut out, &data[n..]);
                        return Poll::Ready(Ok(n + held));
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(shared.fail(&mut out, e.kind())));
                    }
                    Poll::Pending if !listed => return Poll::Pending,
                    Poll::Pending => {} // held below; sent when the socket is writable
                }
            } else if !listed {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(hold(&mut out, data)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut out = shared.outbox();
        if let Some(kind) = out.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if out.pending() == 0 || list(shared, &mut out) {
            return Poll::Ready(Ok(()));
        }
        shared.send(&mut out, cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        futures::ready!(shared.send(&mut shared.outbox(), cx))?;
        match shared.io.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// `task`, with what its streams write during each poll sent when that poll
/// ends; see the module docs.
pub fn flushing<F: Future<Output = ()> + Send + Unpin>(task: F) -> Flushing<F> {
    Flushing { task, written: Vec::new(), waiting: Vec::new() }
}

/// The future [`flushing`] returns.
#[derive(Debug)]
pub struct Flushing<F> {
    task: F,
    /// Kept between polls so that listing allocates only when it grows.
    written: Vec<Arc<Shared>>,
    /// Streams whose socket could not take everything: sent again at the
    /// end of every poll until empty.
    waiting: Vec<Arc<Shared>>,
}

impl<F: Future<Output = ()> + Send + Unpin> Future for Flushing<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let outer = WRITTEN.with(|w| w.replace(Some(std::mem::take(&mut this.written))));
        let done = Pin::new(&mut this.task).poll(cx);
        this.written = WRITTEN.with(|w| w.replace(outer)).unwrap_or_default();
        let mut still = Vec::new();
        for shared in this.written.drain(..).chain(this.waiting.drain(..)) {
            let mut out = shared.outbox();
            // An error stays in the stream, for its next write or flush.
            let waits = shared.send(&mut out, cx).is_pending();
            out.listed = waits;
            drop(out);
            if waits {
                still.push(shared);
            }
        }
        this.waiting = still;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};

    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = async_io::block_on(TcpStream::connect(addr)).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (ours, theirs)
    }

    /// Bytes `theirs` can read without waiting (loopback delivers within
    /// the sender's system call).
    fn available(theirs: &std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;
        theirs.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match (&*theirs).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn outside_a_flushing_task_writes_go_through() {
        let (mut ours, theirs) = pair();
        async_io::block_on(async {
            ours.write_all(b"one").await.unwrap();
            ours.flush().await.unwrap();
        });
        assert_eq!(available(&theirs), b"one");
    }

    #[test]
    fn inside_one_the_writes_of_a_poll_leave_together_when_it_ends() {
        let (ours, theirs) = pair();
        let ours = Arc::new(Mutex::new(ours));
        let seen_during_poll = Arc::new(Mutex::new(None));
        let task = {
            let (ours, seen) = (ours.clone(), seen_during_poll.clone());
            let theirs = theirs.try_clone().unwrap();
            futures::future::poll_fn(move |cx| {
                let mut s = ours.lock().unwrap();
                for part in [&b"open"[..], b"echo", b"answer", b"close"] {
                    assert!(matches!(Pin::new(&mut *s).poll_write(cx, part), Poll::Ready(Ok(_))));
                    assert!(matches!(Pin::new(&mut *s).poll_flush(cx), Poll::Ready(Ok(()))));
                }
                *seen.lock().unwrap() = Some(available(&theirs));
                Poll::Ready(())
            })
        };
        async_io::block_on(flushing(task));
        // Nothing left while the task was being polled; all of it after.
        assert_eq!(seen_during_poll.lock().unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(available(&theirs), b"openechoanswerclose");
    }

    #[test]
    fn what_the_socket_cannot_take_waits_and_leaves_when_writable() {
        let (ours, mut theirs) = pair();
        // More than loopback's socket buffers hold with nobody reading.
        let data: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let mut task = flushing(
            async move {
                let mut ours = ours;
                ours.write_all(&data).await.unwrap();
                ours.flush().await.unwrap();
                ours.close().await.unwrap();
            }
            .boxed(),
        );
        // The first poll fills the socket and has to wait for the reader.
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(task.poll_unpin(&mut cx).is_pending());
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).unwrap();
            got
        });
        async_io::block_on(task);
        assert_eq!(reader.join().unwrap(), expected);
    }

    #[test]
    fn a_peer_that_stops_reading_costs_at_most_the_high_water_mark() {
        let (ours, _theirs) = pair(); // never read
        let shared = ours.shared.clone();
        let data = vec![7u8; 64 * 1024 * 1024];
        let mut task = flushing(
            async move {
                let mut ours = ours;
                let _ = ours.write_all(&data).await;
            }
            .boxed(),
        );
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        for _ in 0..3 {
            assert!(task.poll_unpin(&mut cx).is_pending(), "the socket filled up");
            let held = shared.outbox().pending();
            assert!(held <= HIGH_WATER, "{held} bytes held");
        }
    }

    #[test]
    fn a_stream_waiting_for_its_socket_is_kept_once_however_often_it_is_flushed() {
        let (ours, _theirs) = pair(); // never read
        let data = vec![7u8; 64 * 1024 * 1024];
        let mut ours = ours;
        let mut task = flushing(futures::future::poll_fn(move |cx| {
            let _ = Pin::new(&mut ours).poll_write(cx, &data);
            let _ = Pin::new(&mut ours).poll_flush(cx);
            Poll::<()>::Pending
        }));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        for _ in 0..5 {
            assert!(task.poll_unpin(&mut cx).is_pending());
        }
        assert_eq!(task.waiting.len(), 1);
        assert!(task.written.is_empty());
    }

    #[test]
    fn a_stream_reads_what_the_peer_sent() {
        let (mut ours, theirs) = pair();
        use std::io::Write;
        (&theirs).write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        async_io::block_on(ours.read_exact(&mut buf)).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
