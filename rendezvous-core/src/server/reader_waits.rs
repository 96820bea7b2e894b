//! Learning what a peer reads when it is first needed, not before.
//!
//! What a peer reads matters only once it is served registrations: by a
//! DISCOVER or a subscription. A peer that only registers never needs to
//! be asked. So, with
//! [`ServerConfig::reader_wait`](crate::ServerConfig::reader_wait) set, the
//! first DISCOVER or subscription of a peer the adapter has said nothing
//! of asks the adapter to find out ([`Server::poll_reader_wanted`]), and it
//! waits for the answer: [`Server::set_reader_dialect`],
//! [`Server::reader_unknown`], its last connection closing, or
//! `reader_wait` running out. Then it is served in the flavour learned, or
//! else in the one its REGISTERs showed, or else
//! [`ServerConfig::unknown_reader`](crate::ServerConfig::unknown_reader)'s.
//! A REGISTER does not end the wait: a peer that reads every flavour (this
//! project's client) registers in one, and would be served too little.
//! The peer's DISCOVERs read meanwhile queue behind it, in order, as they
//! queue behind its unsettled writes. A peer is asked once while the point
//! remembers it.

use std::collections::{BTreeSet, HashMap, VecDeque};

use libp2p_identity::PeerId;

use super::{Refusal, Server, SubscriptionId};
use crate::proto::{self, ResponseStatus};
use crate::time::Timestamp;

/// The peers being asked about, and what of theirs waits.
#[derive(Debug, Default)]
pub(super) struct ReaderWaits {
    /// Each peer being asked about, and when its wait runs out.
    until: HashMap<PeerId, Timestamp>,
    deadlines: BTreeSet<(Timestamp, PeerId)>,
    /// Peers to ask about, for the adapter, in the order they were needed.
    wanted: VecDeque<PeerId>,
    /// Subscriptions waiting for their peer's reader, and each waiting
    /// peer's, in the order they came.
    subscribes: HashMap<SubscriptionId, (PeerId, proto::Message)>,
    subscribes_of: HashMap<PeerId, Vec<SubscriptionId>>,
    asked: u64,
    expired: u64,
}

impl ReaderWaits {
    /// Whether `peer` is being asked about.
    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.until.contains_key(peer)
    }

    pub(super) fn len(&self) -> usize {
        self.until.len()
    }

    /// Peers asked about, since the start.
    pub(super) fn asked(&self) -> u64 {
        self.asked
    }

    /// Waits that ran out before an answer, since the start.
    pub(super) fn expired(&self) -> u64 {
        self.expired
    }

    /// When the next wait runs out.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    fn start(&mut self, peer: PeerId, until: Timestamp) {
        self.until.insert(peer, until);
        self.deadlines.insert((until, peer));
        self.wanted.push_back(peer);
        self.asked += 1;
    }

    /// Ends `peer`'s wait: whether it was waiting.
    fn stop(&mut self, peer: &PeerId) -> bool {
        let Some(until) = self.until.remove(peer) else { return false };
        self.deadlines.remove(&(until, *peer));
        true
    }

    /// The first peer whose wait has run out at `now`, if any.
    fn due(&self, now: Timestamp) -> Option<PeerId> {
        self.deadlines.first().filter(|(at, _)| *at <= now).map(|(_, peer)| *peer)
    }

    /// `peer`'s waiting subscriptions, taken in the order they came.
    fn take_subscribes(&mut self, peer: &PeerId) -> Vec<(SubscriptionId, proto::Message)> {
        let ids = self.subscribes_of.remove(peer).unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| self.subscribes.remove(&id).map(|(_, message)| (id, message)))
            .collect()
    }

    /// Forgets the waiting subscription `id`, if it is one; whether it was.
    pub(super) fn drop_subscribe(&mut self, id: SubscriptionId) -> bool {
        let Some((peer, _)) = self.subscribes.remove(&id) else { return false };
        if let Some(ids) = self.subscribes_of.get_mut(&peer) {
            ids.retain(|waiting| *waiting != id);
            if ids.is_empty() {
                self.subscribes_of.remove(&peer);
            }
        }
        true
    }
}

impl Server {
    /// Whether what `peer` is served must wait for its reader: it is being
    /// asked about, or is asked about now, the first time it is needed.
    pub(super) fn awaits_reader(&mut self, peer: PeerId) -> bool {
        if self.reader_waits.contains(&peer) {
            return true;
        }
        if !self.asks_for_readers() || !self.readers.first_ask(peer) {
            return false;
        }
        self.reader_waits.start(peer, self.now + self.config.reader_wait);
        true
    }

    /// Holds a subscription until `peer`'s reader is known; refused if the
    /// peer already has as many waiting as it may have open.
    pub(super) fn hold_subscribe(
        &mut self,
        peer: PeerId,
        id: SubscriptionId,
        message: proto::Message,
    ) -> Result<(), Refusal> {
        let max = self.config.subscriptions.max_per_peer;
        let waits = &mut self.reader_waits;
        let held = waits.subscribes_of.get(&peer).map_or(0, Vec::len);
        if held >= max || waits.subscribes.contains_key(&id) {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!("{max} subscriptions from this peer are waiting, its limit"),
            ));
        }
        waits.subscribes_of.entry(peer).or_default().push(id);
        waits.subscribes.insert(id, (peer, message));
        Ok(())
    }

    /// Ends `peer`'s wait for its reader, if it was waiting: what waited is
    /// served, in the reader now known (or the default).
    pub(super) fn reader_wait_over(&mut self, peer: PeerId) {
        if !self.reader_waits.stop(&peer) {
            return;
        }
        self.serve_waiting(peer);
        for (id, message) in self.reader_waits.take_subscribes(&peer) {
            self.subscribe_or_refuse(peer, id, message);
        }
    }

    /// Ends the waits that have run out at `now`.
    pub(super) fn stop_reader_waits(&mut self, now: Timestamp) {
        while let Some(peer) = self.reader_waits.due(now) {
            self.reader_waits.expired += 1;
            self.reader_wait_over(peer);
        }
    }

    /// `peer`'s last connection closed: its waiting subscriptions are gone
    /// with it, and its waiting DISCOVERs are answered as they can be.
    pub(super) fn forget_reader_wait(&mut self, peer: PeerId) {
        self.reader_waits.take_subscribes(&peer);
        self.reader_wait_over(peer);
    }

    /// Whether the server asks what a peer reads when it first needs to
    /// know ([`ServerConfig::reader_wait`](crate::ServerConfig::reader_wait)
    /// set), rather than being told of every peer unasked.
    pub fn asks_for_readers(&self) -> bool {
        !self.config.reader_wait.is_zero()
    }

    /// The next peer whose reader the server wants to learn. Drain it after
    /// every input, like [`poll_transmit`](Self::poll_transmit): ask the
    /// peer (identify's agent version) and report what it said with
    /// [`set_reader_dialect`](Self::set_reader_dialect), or that it said
    /// nothing usable with [`reader_unknown`](Self::reader_unknown). Only
    /// with [`ServerConfig::reader_wait`](crate::ServerConfig::reader_wait)
    /// set, which says when a peer is asked about.
    pub fn poll_reader_wanted(&mut self) -> Option<PeerId> {
        self.reader_waits.wanted.pop_front()
    }
}

#[cfg(test)]
mod tests;
