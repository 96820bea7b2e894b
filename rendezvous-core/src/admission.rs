//! Admission of a connection's substreams and requests: how many are
//! served at once, which are answered busy or reset, and when requests wait
//! for the client to take the answers it owes.
//!
//! A connection serves at most [`AdmissionLimits::max_streams`] substreams
//! at once; up to [`AdmissionLimits::max_busy_streams`] more are read once
//! and answered `E_UNAVAILABLE` (so that the client learns at once rather
//! than timing out); beyond both, a substream is reset on arrival. Answers
//! the client has not taken yet count against a bound per connection and
//! one per address, a batch that asks for a page counting as a whole page
//! before it is made. Past either bound, batches of requests wait, in the
//! order they were read, until the clients take enough. A batch goes alone
//! whatever it may take, so that a reserve larger than a bound cannot wait
//! forever.
//!
//! The adapter owns the I/O and the counts of unread bytes (shared between
//! the connections of one address); this type makes every decision, with
//! no clock and no I/O.

use std::collections::VecDeque;

use crate::codec;
use crate::proto::MessageType;

/// The bounds of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Substreams served at once.
    pub max_streams: usize,
    /// Substreams beyond those, answered busy.
    pub max_busy_streams: usize,
    /// Bytes of answers one connection may owe its client.
    pub max_unread: usize,
    /// The same over all connections from one address.
    pub max_unread_per_origin: usize,
    /// What a batch that asks for a page reserves: the longest response.
    pub max_page: usize,
}

/// What to do with a new substream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Serve it.
    Serve,
    /// Read one request and answer it busy, then close.
    Busy,
    /// Over both bounds: reset it.
    Reset,
    /// The point is shutting down: reset it.
    ShuttingDown,
}

/// Bytes of answers owed to the clients: by this connection, and by all
/// connections from its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unread {
    /// This connection's.
    pub connection: usize,
    /// Its address's, this connection's included.
    pub origin: usize,
}

/// Whether a request is answered with a page of registrations, which may
/// be as long as [`AdmissionLimits::max_page`]: a batch ends with such a
/// request, so that a substream holds at most one page (a client that asks
/// for pages and does not read them would otherwise hold a batch of pages
/// on each of its substreams). Only the type is read.
pub fn asks_for_page(body: &[u8]) -> bool {
    codec::peek_type(body) == Some(MessageType::Discover)
}

/// One connection's admission state; see the module docs. `T` is the
/// adapter's batch of requests.
#[derive(Debug)]
pub struct Admission<T> {
    limits: AdmissionLimits,
    open: usize,
    busy: usize,
    /// Batches waiting for the clients to take answers, oldest first, each
    /// with what it reserves.
    held: VecDeque<(T, usize)>,
}

impl<T> Admission<T> {
    /// A connection with nothing open.
    pub fn new(limits: AdmissionLimits) -> Self {
        let limits = AdmissionLimits { max_streams: limits.max_streams.max(1), ..limits };
        Admission { limits, open: 0, busy: 0, held: VecDeque::new() }
    }

    /// The bounds.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Substreams open (served, busy).
    pub fn open(&self) -> (usize, usize) {
        (self.open, self.busy)
    }

    /// A substream arrived: what to do with it. A served or busy one counts
    /// until [`closed`](Self::closed).
    pub fn opened(&mut self, shutting_down: bool) -> Opened {
        if shutting_down {
            Opened::ShuttingDown
        } else if self.open < self.limits.max_streams {
            self.open += 1;
            Opened::Serve
        } else if self.busy < self.limits.max_busy_streams {
            self.busy += 1;
            Opened::Busy
        } else {
            Opened::Reset
        }
    }

    /// A served (`busy` false) or busy substream is gone.
    pub fn closed(&mut self, busy: bool) {
        let counter = if busy { &mut self.busy } else { &mut self.open };
        *counter = counter.saturating_sub(1);
    }

    /// What the answers to a batch may take before they are made: a whole
    /// page if it ends with a request for one (never for a busy substream,
    /// whose answers are short).
    pub fn reserve(&self, last: &[u8], busy: bool) -> usize {
        if !busy && asks_for_page(last) { self.limits.max_page } else { 0 }
    }

    /// A batch was read: it goes now (returned, with its reserve), or waits
    /// behind those held, or until it fits beside `unread`.
    pub fn offer(&mut self, batch: T, reserve: usize, unread: Unread) -> Option<(T, usize)> {
        if self.held.is_empty() && self.fits(reserve, unread) {
            return Some((batch, reserve));
        }
        self.held.push_back((batch, reserve));
        None
    }

    /// The oldest held batch, if it fits beside `unread` now. Call it until
    /// `None` whenever the clients take answers.
    pub fn release(&mut self, unread: Unread) -> Option<(T, usize)> {
        let (_, reserve) = self.held.front()?;
        if !self.fits(*reserve, unread) {
            return None;
        }
        self.held.pop_front()
    }

    /// Batches held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether answers that may take `reserve` bytes fit beside `unread`.
    fn fits(&self, reserve: usize, unread: Unread) -> bool {
        let fits = |owed: usize, max: usize| owed == 0 || owed.saturating_add(reserve) <= max;
        fits(unread.connection, self.limits.max_unread)
            && fits(unread.origin, self.limits.max_unread_per_origin)
    }
}

#[cfg(test)]
mod tests;
