//! DISCOVER: one page of what the requester reads, within the response
//! frame budget, from where its cookie says; without a cookie, from where
//! [`DiscoverStart`] says: the oldest registration, or a random position
//! from which the walk goes down to the oldest, then up from the start
//! (the [`cookie`](crate::cookie) module says why that stays exact). A
//! DISCOVER is served once every write its peer made before it is settled,
//! and once its peer's reader is known or given up on (`reader_waits`).

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use libp2p_identity::PeerId;

use super::writes::Ticket;
use super::{Admitted, Event, Refusal, Server, discover_error, namespace_refusal};
use crate::cookie::{Cookie, CookieError, Position};
use crate::limits::{DiscoverStart, REGISTRATION_OVERHEAD};
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus};
use crate::record::Reader;
use crate::registry::Entry;
use crate::request::RequestId;
use crate::time::Timestamp;

/// Most DISCOVERs of one peer waiting for its writes; more are answered
/// `E_UNAVAILABLE`. An adapter bounds a peer's requests in flight far
/// below this; the core bounds its own queues all the same.
const MAX_WAITING_PER_PEER: usize = 4096;

/// A DISCOVER waiting for the writes its peer made before it.
#[derive(Debug)]
pub(super) struct Waiting {
    ticket: Ticket,
    request: RequestId,
    discover: proto::Discover,
    until: Timestamp,
}

impl Server {
    /// Serves a DISCOVER once every write its peer made before it is
    /// settled: a peer sees what it wrote, on whatever substream.
    pub(super) fn discover_after_writes(
        &mut self,
        peer: PeerId,
        request: RequestId,
        discover: proto::Discover,
    ) -> Admitted<proto::Message> {
        let ticket = self.writes.ticket();
        let queued = self.waiting.get(&peer).map_or(0, VecDeque::len);
        let awaits_reader = self.awaits_reader(peer);
        if queued == 0 && !awaits_reader && self.writes.settled_before(&peer, ticket) {
            return Admitted::Now(self.discover_now(peer, discover));
        }
        if queued >= MAX_WAITING_PER_PEER {
            let reason = format!(
                "{MAX_WAITING_PER_PEER} requests of this peer are waiting for its writes; retry later"
            );
            let status = ResponseStatus::EUnavailable;
            self.refused(peer, MessageType::Discover, status, reason.clone());
            return Admitted::Now(discover_error(status, reason));
        }
        let until = self.now + self.config.max_discover_wait;
        self.waiting.entry(peer).or_default().push_back(Waiting {
            ticket,
            request,
            discover,
            until,
        });
        self.waiting_until.insert((until, ticket), peer);
        self.waiting_len += 1;
        Admitted::Held
    }

    /// Answers `E_UNAVAILABLE` to the DISCOVERs that have waited for their
    /// peer's writes as long as they may (the store is slow or away).
    pub(super) fn stop_waiting(&mut self, now: Timestamp) {
        while let Some(entry) = self.waiting_until.first_entry() {
            let (until, ticket) = *entry.key();
            if until > now {
                return;
            }
            let peer = entry.remove();
            let Some(queue) = self.waiting.get_mut(&peer) else { continue };
            // A peer's waits run out in the order they began.
            if queue.front().is_some_and(|w| w.ticket == ticket) {
                let waited = queue.pop_front().expect("the front was just seen");
                if queue.is_empty() {
                    self.waiting.remove(&peer);
                }
                self.waiting_len -= 1;
                let reason =
                    "this peer's earlier writes are not stored yet; retry later".to_owned();
                let status = ResponseStatus::EUnavailable;
                self.refused(peer, MessageType::Discover, status, reason.clone());
                self.answer(
                    peer,
                    waited.request,
                    Ok(MessageType::Discover),
                    Some(discover_error(status, reason)),
                );
            }
        }
    }

    /// Serves `peer`'s waiting DISCOVERs whose writes are settled, in order,
    /// unless they wait for its reader.
    pub(super) fn serve_waiting(&mut self, peer: PeerId) {
        if self.reader_waits.contains(&peer) {
            return;
        }
        loop {
            let Some(queue) = self.waiting.get_mut(&peer) else { return };
            let due = queue.front().is_some_and(|w| self.writes.settled_before(&peer, w.ticket));
            let next = if due { queue.pop_front() } else { None };
            if queue.is_empty() {
                self.waiting.remove(&peer);
            }
            let Some(Waiting { request, discover, ticket, until }) = next else { return };
            self.waiting_until.remove(&(until, ticket));
            self.waiting_len -= 1;
            let response = self.discover_now(peer, discover);
            self.answer(peer, request, Ok(MessageType::Discover), Some(response));
        }
    }

    /// A DISCOVER's answer: a page, or the refusal.
    fn discover_now(&mut self, peer: PeerId, discover: proto::Discover) -> proto::Message {
        match self.discover(peer, discover) {
            Ok(response) => response,
            Err(Refusal(status, reason)) => {
                let response = discover_error(status, reason.clone());
                self.refused(peer, MessageType::Discover, status, reason);
                response
            }
        }
    }

    fn discover(
        &mut self,
        peer: PeerId,
        discover: proto::Discover,
    ) -> Result<proto::Message, Refusal> {
        let limits = &self.config.limits;
        let namespace = match discover.ns.as_deref() {
            None | Some("") => None,
            Some(ns) => {
                Some(Namespace::new(ns, limits.max_namespace_len).map_err(namespace_refusal)?)
            }
        };
        let limit = match discover.limit.unwrap_or(0) {
            0 => limits.default_discover_limit,
            limit => limit.min(limits.max_discover_limit),
        };
        let reader = self.readers.get(&peer).unwrap_or(self.config.unknown_reader);
        let position = match discover.cookie.filter(|c| !c.is_empty()) {
            None => self.first_position(reader, namespace.as_ref()),
            Some(bytes) => self
                .check_cookie(&bytes, namespace.as_ref())
                .map_err(|err| Refusal::new(ResponseStatus::EInvalidCookie, err))?,
        };
        let (registrations, next) = self.page(reader, namespace.as_ref(), position, limit);
        let cookie = Cookie::at(next, namespace.clone()).to_bytes();
        let count = registrations.len();
        self.push_event(Event::Discovered { peer, namespace, count });
        Ok(proto::Message {
            r#type: Some(MessageType::DiscoverResponse as i32),
            discover_response: Some(proto::DiscoverResponse {
                registrations,
                cookie: Some(cookie),
                status: Some(ResponseStatus::Ok as i32),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Up to `limit` entries from `position`, within the response budget,
    /// and where the next page starts.
    fn page(
        &self,
        reader: Reader,
        namespace: Option<&Namespace>,
        position: Position,
        limit: u64,
    ) -> (Vec<proto::Register>, Position) {
        let (down, start) = walk_of(position);
        let budget = self.config.limits.response_budget();
        let mut used = 0;
        let mut last = None;
        let mut registrations = Vec::new();
        let mut walk = self.registry.walk(reader, namespace, down, start).peekable();
        while (registrations.len() as u64) < limit {
            let Some(entry) = walk.peek() else {
                break;
            };
            let bytes = entry
                .record
                .bytes_for(reader)
                .expect("the reader's index holds only records it can read");
            let cost = registration_cost(entry, bytes);
            if used + cost > budget {
                break;
            }
            used += cost;
            last = Some(entry.seq);
            registrations.push(registration(entry, bytes.clone(), self.now));
            walk.next();
        }
        // The first phase goes on while what is next lies at or below the start.
        let descending = walk.peek().is_some_and(|entry| entry.seq <= start);
        let next = match last {
            Some(seq) if seq > start => Position::After(seq),
            Some(seq) if descending => Position::Below { start, below: seq },
            // Not reached: a page serves at least one entry if any is left
            // (`Limits::validate`), but staying put is exact either way.
            None if descending => position,
            _ => Position::After(start),
        };
        (registrations, next)
    }

    /// Where a DISCOVER without a cookie starts: with a random start, a
    /// position drawn uniformly from just before the lowest position
    /// `reader` can read here to the highest, but no further above the
    /// lowest than a cookie can reach back ([`Cookie::MAX_DEPTH`]).
    fn first_position(&mut self, reader: Reader, namespace: Option<&Namespace>) -> Position {
        let (DiscoverStart::Random { .. }, Some((lowest, highest))) =
            (self.config.discover_start, self.registry.bounds(reader, namespace))
        else {
            return Position::After(0);
        };
        let from = lowest.saturating_sub(1);
        let to = highest.min(lowest.saturating_add(Cookie::MAX_DEPTH - 1));
        let start = from + self.rng.below_or_eq(to - from);
        Position::Below { start, below: start + 1 }
    }

    fn check_cookie(
        &self,
        bytes: &[u8],
        namespace: Option<&Namespace>,
    ) -> Result<Position, CookieError> {
        let cookie = Cookie::parse(bytes, self.config.limits.max_namespace_len)?;
        // A position in all namespaces is a position in each of them too
        // (sequence numbers are global); rust-libp2p's server takes it.
        if cookie.namespace.is_some() && cookie.namespace.as_ref() != namespace {
            return Err(CookieError::WrongNamespace);
        }
        cookie.resolve(self.registry.last_seq())
    }
}

/// `entry` as a page (or a subscription's batch) carries it, with `bytes`,
/// the record its reader gets.
pub(super) fn registration(entry: &Entry, bytes: Bytes, now: Timestamp) -> proto::Register {
    proto::Register {
        ns: Some(entry.namespace.as_str().to_owned()),
        signed_peer_record: Some(bytes),
        ttl: Some(entry.ttl_left(now)),
        other_records: Vec::new(),
    }
}

/// What [`registration`] takes of a response, about.
pub(super) fn registration_cost(entry: &Entry, bytes: &Bytes) -> usize {
    bytes.len() + entry.namespace.as_str().len() + REGISTRATION_OVERHEAD
}

/// The registry walk for `position`: the sequence numbers to go down
/// through first, and the one to go up from then.
fn walk_of(position: Position) -> (Range<u64>, u64) {
    match position {
        Position::After(after) => (0..0, after),
        Position::Below { start, below } => {
            let deepest = start.saturating_add(1).saturating_sub(Cookie::MAX_DEPTH);
            (deepest..below, start)
        }
    }
}

#[cfg(test)]
mod tests;
