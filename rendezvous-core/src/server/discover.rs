//! DISCOVER: one page of what the requester reads, within the response
//! frame budget, from where its cookie says; without a cookie, from where
//! [`DiscoverStart`] says: the oldest registration, or a random position
//! from which the walk goes down to the oldest, then up from the start
//! (the [`cookie`](crate::cookie) module says why that stays exact).

use std::ops::Range;

use libp2p_identity::PeerId;

use super::{Event, Refusal, Server, namespace_refusal};
use crate::cookie::{Cookie, CookieError, Position};
use crate::limits::{DiscoverStart, REGISTRATION_OVERHEAD};
use crate::namespace::Namespace;
use crate::proto::{self, MessageType, ResponseStatus};
use crate::record::Reader;

impl Server {
    pub(super) fn discover(
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
                status_text: None,
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
            let cost = bytes.len() + entry.namespace.as_str().len() + REGISTRATION_OVERHEAD;
            if used + cost > budget {
                break;
            }
            used += cost;
            last = Some(entry.seq);
            registrations.push(proto::Register {
                ns: Some(entry.namespace.as_str().to_owned()),
                signed_peer_record: Some(bytes.clone()),
                ttl: Some(entry.ttl_left(self.now)),
                other_records: Vec::new(),
            });
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
