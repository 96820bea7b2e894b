//! Inbound connections still in their handshake, bounded in all and per IP
//! address, the oldest evicted to make room for a newcomer.
//!
//! A connection costs a file descriptor and buffers from its first byte,
//! but libp2p's connection limits only see it once it is authenticated.
//! Refusing newcomers when full would let anyone who opens sockets and sends
//! nothing lock everyone else out until the handshake timeout; evicting the
//! oldest instead means that a flood mostly evicts itself, and a real
//! client, whose handshake takes milliseconds, gets through. The per-address
//! bound (an IPv6 address by its /64: [`Origin`]) keeps one address's flood
//! from evicting everyone else's.
//!
//! [`Bounded`] wraps a transport whose upgrade is the whole handshake
//! (security and muxer), so that a slot is held until the connection is
//! established or fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use libp2p_core::multiaddr::Multiaddr;
use libp2p_core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};

use rendezvous_libp2p::core::Origin;
use rendezvous_libp2p::origin_of;

/// How many handshakes may be under way at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// In all.
    pub max: usize,
    /// From one IP address.
    pub max_per_ip: usize,
}

impl Default for HandshakeLimits {
    /// 512 in all, 128 per address: a handshake takes milliseconds, so even
    /// a busy point rarely has more than a few dozen under way.
    fn default() -> Self {
        HandshakeLimits { max: 512, max_per_ip: 128 }
    }
}

/// Counts since the start, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Handshakes under way now.
    pub pending: usize,
    /// Handshakes ended to make room for a newer one.
    pub evicted: u64,
}

#[derive(Debug)]
struct State {
    limits: HandshakeLimits,
    next: u64,
    /// Handshakes under way, oldest first.
    order: BTreeMap<u64, Slot>,
    per_ip: HashMap<Origin, BTreeSet<u64>>,
    evicted: u64,
}

#[derive(Debug)]
struct Slot {
    origin: Option<Origin>,
    signal: Arc<Signal>,
}

/// Tells a handshake that it was evicted.
#[derive(Debug, Default)]
struct Signal {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl State {
    /// Makes room for a handshake from `origin` and registers it.
    fn admit(&mut self, origin: Option<Origin>) -> (u64, Arc<Signal>) {
        let max_per_ip = self.limits.max_per_ip.max(1);
        let oldest_of_ip = origin
            .and_then(|origin| self.per_ip.get(&origin))
            .filter(|ids| ids.len() >= max_per_ip)
            .and_then(|ids| ids.first().copied());
        if let Some(id) = oldest_of_ip {
            self.evict(id);
        }
        if self.order.len() >= self.limits.max.max(1)
            && let Some(&id) = self.order.keys().next()
        {
            self.evict(id);
        }
        self.next += 1;
        let signal = Arc::new(Signal::default());
        self.order.insert(self.next, Slot { origin, signal: signal.clone() });
        if let Some(origin) = origin {
            self.per_ip.entry(origin).or_default().insert(self.next);
        }
        (self.next, signal)
    }

    fn evict(&mut self, id: u64) {
        if let Some(slot) = self.remove(id) {
            slot.signal.evicted.store(true, Ordering::Release);
            slot.signal.waker.wake();
            self.evicted += 1;
        }
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.order.remove(&id)?;
        if let Some(origin) = slot.origin
            && let Some(ids) = self.per_ip.get_mut(&origin)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.per_ip.remove(&origin);
            }
        }
        Some(slot)
    }
}

/// A handle on a [`Bounded`] transport's counts.
#[derive(Clone, Debug)]
pub struct Handshakes(Arc<Mutex<State>>);

impl Handshakes {
    /// The counts now.
    pub fn stats(&self) -> Stats {
        let state = lock(&self.0);
        Stats { pending: state.order.len(), evicted: state.evicted }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent between statements; a panic elsewhere
    // while holding the lock leaves nothing half done.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A transport whose inbound upgrades are bounded; see the module docs.
pub struct Bounded<T> {
    inner: T,
    state: Arc<Mutex<State>>,
}

impl<T> Bounded<T> {
    /// Wraps `inner`, whose listener upgrade must be the whole handshake.
    pub fn new(inner: T, limits: HandshakeLimits) -> (Self, Handshakes) {
        let state = Arc::new(Mutex::new(State {
            limits,
            next: 0,
            order: BTreeMap::new(),
            per_ip: HashMap::new(),
            evicted: 0,
        }));
        (Bounded { inner, state: state.clone() }, Handshakes(state))
    }
}

impl<T> Transport for Bounded<T>
where
    T: Transport<Error = io::Error> + Unpin,
    T::ListenerUpgrade: Unpin,
{
    type Output = T::Output;
    type Error = io::Error;
    type ListenerUpgrade = Handshake<T::ListenerUpgrade>;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        let this = &mut *self;
        let event = match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(event) => event,
            Poll::Pending => return Poll::Pending,
        };
        let state = this.state.clone();
        Poll::Ready(match event {
            TransportEvent::Incoming { listener_id, upgrade, local_addr, send_back_addr } => {
                let (id, signal) = lock(&state).admit(origin_of(&send_back_addr));
                TransportEvent::Incoming {
                    listener_id,
                    upgrade: Handshake { inner: upgrade, id, signal, state },
                    local_addr,
                    send_back_addr,
                }
            }
            other => other.map_upgrade(|_| unreachable!("only Incoming carries an upgrade")),
        })
    }
}

/// An inbound handshake holding its slot until it ends or is evicted.
pub struct Handshake<F> {
    inner: F,
    id: u64,
    signal: Arc<Signal>,
    state: Arc<Mutex<State>>,
}

impl<F, O> Future for Handshake<F>
where
    F: Future<Output = Result<O, io::Error>> + Unpin,
{
    type Output = Result<O, io::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.signal.waker.register(cx.waker());
        if self.signal.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::other(
                "handshake evicted to make room for newer connections",
            )));
        }
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl<F> Drop for Handshake<F> {
    fn drop(&mut self) {
        lock(&self.state).remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max: usize, max_per_ip: usize) -> State {
        State {
            limits: HandshakeLimits { max, max_per_ip },
            next: 0,
            order: BTreeMap::new(),
            per_ip: HashMap::new(),
            evicted: 0,
        }
    }

    #[test]
    fn the_oldest_handshake_makes_room_first_of_its_own_address() {
        let (a, b) = (Origin::from_ipv4([10, 0, 0, 1]), Origin::from_ipv4([10, 0, 0, 2]));
        let mut s = state(3, 2);
        let (_, a1) = s.admit(a);
        let (_, b1) = s.admit(b);
        let (_, a2) = s.admit(a);
        // a is at its share: its own oldest goes, not b's.
        let (_, a3) = s.admit(a);
        assert!(a1.evicted.load(Ordering::Acquire));
        assert!(!b1.evicted.load(Ordering::Acquire));
        // Full in all: the oldest of all goes.
        let (id, _) = s.admit(None);
        assert!(b1.evicted.load(Ordering::Acquire));
        assert!(!a2.evicted.load(Ordering::Acquire) && !a3.evicted.load(Ordering::Acquire));
        assert_eq!((s.order.len(), s.evicted), (3, 2));
        // A handshake that ends gives its slot back.
        s.remove(id);
        assert_eq!(s.order.len(), 2);
        assert!(!s.per_ip.contains_key(&b.unwrap()));
    }
}
