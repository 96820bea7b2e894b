//! A TCP [`Transport`] for libp2p on the runtime-neutral async-io reactor.
//!
//! rust-libp2p's own TCP transport only has a tokio provider now; this one
//! uses `async-net` (async-io), which async-std, smol and any executor can
//! drive. Listening on an unspecified address (`0.0.0.0`, `::`) reports each
//! concrete interface address as it comes and goes (`if-watch`).
//!
//! Dialing always uses a fresh local port: `PortUse::Reuse` only helps NAT
//! hole punching, which this host does not do.
//!
//! The listening socket carries the connections' TCP options ([`Config`]).
//! On Linux an accepted connection inherits them, and comes out of `accept4`
//! nonblocking, so accepting takes two system calls: `accept4` and the
//! reactor's registration.
//!
//! When accepting fails for want of resources (out of file descriptors or
//! memory), the listener waits [`ACCEPT_BACKOFF`] before trying again and
//! logs a warning at most once a second, instead of spinning on the error.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_io::Async;
use futures::future::{BoxFuture, Ready, ready};
use futures::{FutureExt, Stream};
use if_watch::IfEvent;
use if_watch::smol::IfWatcher;
use libp2p_core::multiaddr::{Multiaddr, Protocol};
use libp2p_core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};

/// A TCP connection, whose writes leave once per wakeup inside
/// [`crate::runtime::run`] (see [`crate::coalesce`]).
pub use crate::coalesce::TcpStream;

/// Connections the kernel queues for a listener before it accepts them
/// (the standard library's 128 overflows under bursts, and a client whose
/// SYN is dropped waits a second to retry); the kernel caps it at
/// `net.core.somaxconn`.
pub const BACKLOG: i32 = 1024;

/// How long a listener waits after accepting failed for want of resources.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection is silent before TCP keepalive probes its peer,
/// by default.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Between two keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Keepalive probes left unanswered before the kernel drops the connection.
pub const KEEPALIVE_PROBES: u32 = 3;

/// TCP transport settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Disable Nagle's algorithm on every connection (default: on, since
    /// rendezvous exchanges are small request/response frames).
    pub nodelay: bool,
    /// TCP keepalive: once a connection has been silent this long, the
    /// kernel probes its peer every [`KEEPALIVE_INTERVAL`] and drops the
    /// connection after [`KEEPALIVE_PROBES`] unanswered (default
    /// [`KEEPALIVE_IDLE`]: a peer gone without a word is noticed within a
    /// minute, and a NAT between sees a packet every 30 s). `None` leaves
    /// the system's setting, usually off. A point sends no pings of its
    /// own ([`rendezvous_libp2p::ping`]), so this is what finds such peers.
    pub keepalive: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config { nodelay: true, keepalive: Some(KEEPALIVE_IDLE) }
    }
}

impl Config {
    /// Applies the settings to a socket: a new connection, or a listener
    /// whose connections inherit them.
    fn apply(&self, socket: socket2::SockRef<'_>) -> io::Result<()> {
        socket.set_tcp_nodelay(self.nodelay)?;
        if let Some(idle) = self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_PROBES);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        Ok(())
    }
}

/// The transport; see the module docs.
pub struct TcpTransport {
    config: Config,
    listeners: Vec<Listener>,
    events: VecDeque<TransportEvent<Ready<io::Result<TcpStream>>, io::Error>>,
}

struct Listener {
    id: ListenerId,
    socket: Async<std::net::TcpListener>,
    /// A connection may be waiting: accept before asking the reactor. The
    /// socket is asked for readiness only after `accept` found nothing, so
    /// the swarm polling the transport for its other work costs no system
    /// call.
    maybe_ready: bool,
    /// Waiting after accepting failed for want of resources.
    backoff: Option<async_io::Timer>,
    local: SocketAddr,
    /// Present when listening on an unspecified address.
    interfaces: Option<IfWatcher>,
    /// Accept failures since the last warning, and when that was.
    failures: u64,
    warned: Option<Instant>,
}

impl TcpTransport {
    /// A transport with `config`.
    pub fn new(config: Config) -> Self {
        TcpTransport { config, listeners: Vec::new(), events: VecDeque::new() }
    }
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

/// `/ip4|ip6/<addr>/tcp/<port>`, optionally followed by `/p2p/<id>`.
fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut iter = addr.iter();
    let ip: IpAddr = match iter.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = iter.next()? else { return None };
    match iter.next() {
        None | Some(Protocol::P2p(_)) if iter.next().is_none() => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// A listening socket on `addr`, with [`BACKLOG`] and `config`'s options
/// for its connections to inherit.
fn bind(addr: SocketAddr, config: Config) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    config.apply((&socket).into())?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty().with(addr.ip().into()).with(Protocol::Tcp(addr.port()))
}

/// Accepts one connection: nonblocking from `accept4`, with the listener's
/// TCP options, which Linux copies to it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn accept(
    listener: &std::net::TcpListener,
    _: Config,
) -> io::Result<(Async<std::net::TcpStream>, SocketAddr)> {
    use rustix::net::{SocketFlags, acceptfrom_with};
    let (fd, remote) = acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let remote = remote
        .and_then(|remote| SocketAddr::try_from(remote).ok())
        .ok_or_else(|| io::Error::other("an accepted TCP connection has no IP address"))?;
    Ok((Async::new_nonblocking(std::net::TcpStream::from(fd))?, remote))
}

/// Accepts one connection, and gives it `config`'s options: whether a
/// connection inherits the listener's differs between systems.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn accept(
    listener: &std::net::TcpListener,
    config: Config,
) -> io::Result<(Async<std::net::TcpStream>, SocketAddr)> {
    let (stream, remote) = listener.accept()?;
    config.apply((&stream).into())?;
    Ok((Async::new(stream)?, remote))
}

/// Whether accepting failed for want of a resource that frees up by itself
/// (descriptors, buffers, memory), rather than because the socket is broken.
fn out_of_resources(error: &io::Error) -> bool {
    use libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(error.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
        || error.kind() == io::ErrorKind::OutOfMemory
}

impl Listener {
    /// Counts an accept failure and warns about it, at most once a second.
    fn warn(&mut self, error: &io::Error) {
        self.failures += 1;
        let now = Instant::now();
        if self.warned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            tracing::warn!(
                target: "rendezvous::server",
                "Cannot accept connections on {}: {error} ({} failures since the last warning); retrying every {} ms",
                self.local,
                self.failures,
                ACCEPT_BACKOFF.as_millis()
            );
            self.warned = Some(now);
            self.failures = 0;
        }
    }

    /// The next connection, after a backoff if accepting ran out of
    /// resources; Pending until the socket is readable.
    fn poll_accept(
        &mut self,
        config: Config,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        loop {
            if let Some(timer) = &mut self.backoff {
                if Pin::new(timer).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
                self.maybe_ready = true;
            }
            if !self.maybe_ready {
                futures::ready!(self.socket.poll_readable(cx))?;
                self.maybe_ready = true;
            }
            match accept(self.socket.get_ref(), config) {
                Ok((stream, remote)) => return Poll::Ready(Ok((TcpStream::new(stream), remote))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.maybe_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors or memory: wait, then accept again.
                Err(e) if out_of_resources(&e) => {
                    self.warn(&e);
                    self.backoff = Some(async_io::Timer::after(ACCEPT_BACKOFF));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Transport for TcpTransport {
    type Output = TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = Ready<io::Result<TcpStream>>;
    type Dial = BoxFuture<'static, io::Result<TcpStream>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        let Some(wanted) = socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let std_listener = bind(wanted, self.config).map_err(TransportError::Other)?;
        let socket = Async::new(std_listener).map_err(TransportError::Other)?;
        let local = socket.get_ref().local_addr().map_err(TransportError::Other)?;
        let interfaces = if local.ip().is_unspecified() {
            Some(IfWatcher::new().map_err(TransportError::Other)?)
        } else {
            self.events.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: multiaddr(local),
            });
            None
        };
        self.listeners.push(Listener {
            id,
            socket,
            maybe_ready: true,
            backoff: None,
            local,
            interfaces,
            failures: 0,
            warned: None,
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|l| l.id != id);
        let removed = self.listeners.len() != before;
        if removed {
            self.events
                .push_back(TransportEvent::ListenerClosed { listener_id: id, reason: Ok(()) });
        }
        removed
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        let Some(target) = socket_addr(&addr).filter(|a| !a.ip().is_unspecified() && a.port() != 0)
        else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let config = self.config;
        Ok(async move {
            let stream = TcpStream::connect(target).await?;
            config.apply(stream.socket().into())?;
            Ok(stream)
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        let this = &mut *self;
        if let Some(event) = this.events.pop_front() {
            return Poll::Ready(event);
        }
        let config = this.config;
        for listener in &mut this.listeners {
            if let Some(watcher) = &mut listener.interfaces {
                while let Poll::Ready(Some(event)) = Pin::new(&mut *watcher).poll_next(cx) {
                    let (up, net) = match event {
                        Ok(IfEvent::Up(net)) => (true, net),
                        Ok(IfEvent::Down(net)) => (false, net),
                        Err(error) => {
                            return Poll::Ready(TransportEvent::ListenerError {
                                listener_id: listener.id,
                                error,
                            });
                        }
                    };
                    if net.addr().is_ipv4() != listener.local.is_ipv4() {
                        continue;
                    }
                    let listen_addr = multiaddr(SocketAddr::new(net.addr(), listener.local.port()));
                    let listener_id = listener.id;
                    return Poll::Ready(if up {
                        TransportEvent::NewAddress { listener_id, listen_addr }
                    } else {
                        TransportEvent::AddressExpired { listener_id, listen_addr }
                    });
                }
            }
            if let Poll::Ready(result) = listener.poll_accept(config, cx) {
                return Poll::Ready(match result {
                    Ok((stream, remote)) => {
                        // Which of its addresses, when listening on all of them.
                        let local = if listener.local.ip().is_unspecified() {
                            stream.local_addr().unwrap_or(listener.local)
                        } else {
                            listener.local
                        };
                        TransportEvent::Incoming {
                            listener_id: listener.id,
                            upgrade: ready(Ok(stream)),
                            local_addr: multiaddr(local),
                            send_back_addr: multiaddr(remote),
                        }
                    }
                    Err(error) => TransportEvent::ListenerError { listener_id: listener.id, error },
                });
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use libp2p_core::Endpoint;
    use libp2p_core::transport::PortUse;

    use super::*;

    #[test]
    fn tcp_addresses_parse_with_or_without_a_peer_id_and_nothing_else() {
        let with_id: Multiaddr =
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7"
                .parse()
                .unwrap();
        assert_eq!(socket_addr(&with_id), Some("127.0.0.1:4001".parse().unwrap()));
        assert_eq!(
            socket_addr(&"/ip6/::1/tcp/1".parse().unwrap()),
            Some("[::1]:1".parse().unwrap())
        );
        for other in ["/ip4/127.0.0.1/udp/1", "/dns4/example.com/tcp/1", "/ip4/127.0.0.1/tcp/1/ws"]
        {
            assert_eq!(socket_addr(&other.parse().unwrap()), None, "{other}");
        }
    }

    /// Both ends of a connection have TCP keepalive with the settings above,
    /// and no Nagle: the accepted end inherits them from the listener.
    #[test]
    fn connections_get_tcp_keepalive_on_both_ends() {
        let mut listening = TcpTransport::default();
        let mut dialing = TcpTransport::default();
        let id = ListenerId::next();
        listening.listen_on(id, "/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        let (dialed, accepted) = async_io::block_on(async {
            let address =
                match futures::future::poll_fn(|cx| Pin::new(&mut listening).poll(cx)).await {
                    TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
                    other => panic!("before its address, the listener said {other:?}"),
                };
            let dial = dialing
                .dial(address, DialOpts { role: Endpoint::Dialer, port_use: PortUse::New })
                .unwrap();
            let accept = async {
                match futures::future::poll_fn(|cx| Pin::new(&mut listening).poll(cx)).await {
                    TransportEvent::Incoming { upgrade, .. } => upgrade.await,
                    other => panic!("instead of a connection, the listener said {other:?}"),
                }
            };
            let (dialed, accepted) = futures::join!(dial, accept);
            (dialed.unwrap(), accepted.unwrap())
        });
        for (end, stream) in [("dialed", dialed), ("accepted", accepted)] {
            let socket = socket2::SockRef::from(stream.socket());
            assert!(socket.tcp_nodelay().unwrap(), "{end}: TCP_NODELAY");
            assert!(socket.keepalive().unwrap(), "{end}: SO_KEEPALIVE");
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE, "{end}");
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL, "{end}");
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES, "{end}");
        }
    }
}
