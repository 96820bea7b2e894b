//! Bytes of answers the clients have not taken yet, counted per connection
//! and per address (shared by that address's connections, which run on
//! tasks of their own). Admission decides with them
//! ([`rendezvous_core::admission`]); a connection holding requests back is
//! woken when another connection of its address takes answers, so no
//! handler polls for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use rendezvous_core::admission::Unread;

/// What all connections from one address owe their clients.
#[derive(Debug, Default)]
pub(crate) struct OriginTotal {
    bytes: AtomicUsize,
    /// Connections holding requests back until this total falls.
    waiting: Mutex<Vec<Waker>>,
}

impl OriginTotal {
    fn wake_waiting(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        waiting.into_iter().for_each(Waker::wake);
    }
}

/// A connection's totals, and its address's.
#[derive(Clone, Debug, Default)]
pub(crate) struct Totals {
    connection: Arc<AtomicUsize>,
    origin: Option<Arc<OriginTotal>>,
}

impl Totals {
    /// A connection's totals, counting into `origin`'s as well.
    pub(crate) fn new(origin: Option<Arc<OriginTotal>>) -> Self {
        Totals { connection: Arc::default(), origin }
    }

    /// What is owed now.
    pub(crate) fn unread(&self) -> Unread {
        let connection = self.connection.load(Ordering::Relaxed);
        let origin = self.origin.as_ref().map_or(0, |o| o.bytes.load(Ordering::Relaxed));
        Unread { connection, origin }
    }

    /// Wake `waker` when another connection of the address takes answers.
    pub(crate) fn wake_on_origin(&self, waker: &Waker) {
        if let Some(origin) = &self.origin {
            let mut waiting = origin.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if !waiting.iter().any(|w| w.will_wake(waker)) {
                waiting.push(waker.clone());
            }
        }
    }

    fn add(&self, bytes: usize) {
        self.connection.fetch_add(bytes, Ordering::Relaxed);
        if let Some(origin) = &self.origin {
            origin.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn sub(&self, bytes: usize) {
        self.connection.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(origin) = &self.origin {
            origin.bytes.fetch_sub(bytes, Ordering::Relaxed);
            origin.wake_waiting();
        }
    }
}

/// Bytes counted in a connection's totals until written, or until the
/// future holding them is dropped.
#[derive(Debug)]
pub(crate) struct Unwritten {
    totals: Totals,
    bytes: usize,
}

impl Unwritten {
    pub(crate) fn new(totals: &Totals, bytes: usize) -> Self {
        totals.add(bytes);
        Unwritten { totals: totals.clone(), bytes }
    }
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        self.totals.sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn answers_count_for_their_connection_and_address_until_written() {
        let origin = Arc::new(OriginTotal::default());
        let (a, b) = (Totals::new(Some(origin.clone())), Totals::new(Some(origin)));
        let page = Unwritten::new(&a, 1000);
        let small = Unwritten::new(&b, 10);
        assert_eq!(a.unread(), Unread { connection: 1000, origin: 1010 });
        // b holds requests back; a's page written wakes it.
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        b.wake_on_origin(&Waker::from(flag.clone()));
        drop(page);
        assert!(flag.0.load(Ordering::Relaxed));
        assert_eq!(b.unread(), Unread { connection: 10, origin: 10 });
        drop(small);
        assert_eq!(Totals::default().unread(), Unread::default());
    }
}
