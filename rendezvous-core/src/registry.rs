//! The server's registrations and their indexes.
//!
//! Every mutation goes through [`Registry::insert`], [`Registry::remove`] and
//! [`Registry::expire`]; the server turns each into a store action when it
//! is durable.
//!
//! Costs do not grow with the registry: entries live in a slab; ordered
//! indexes map a sequence number to a slot, per namespace and globally, once
//! for every reader dialect (legacy readers see everything, signed readers
//! only their flavour), so a page is at most two range walks (down from a
//! walk's start, then up from it) of O(log n + page). The
//! expiry index is ordered by deadline. Hash maps are only looked up, never
//! iterated, so no output depends on hash order.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::ops::Range;

use bytes::Bytes;
use libp2p_identity::PeerId;
use slab::Slab;

use crate::namespace::Namespace;
use crate::origin::Origin;
use crate::record::{Dialect, Flavour, Reader};
use crate::time::Timestamp;

/// A registration's record as stored: every envelope flavour the peer
/// registered with the same addresses, and those addresses as a `PeerInfo`
/// for legacy readers (a signed record can always be served that way; an
/// envelope cannot be re-signed in another flavour).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredRecord {
    /// Indexed by [`Flavour::index`].
    envelopes: [Option<Bytes>; 2],
    peer_info: Bytes,
    /// Where its peer connected from when it registered, if the adapter said.
    origin: Option<Origin>,
}

impl StoredRecord {
    /// A legacy record: only the `PeerInfo`.
    pub(crate) fn legacy(peer_info: Bytes) -> Self {
        StoredRecord { envelopes: [None, None], peer_info, origin: None }
    }

    /// A record from its stored parts: envelopes by [`Flavour::index`].
    pub(crate) fn from_parts(
        envelopes: [Option<Bytes>; 2],
        peer_info: Bytes,
        origin: Option<Origin>,
    ) -> Self {
        StoredRecord { envelopes, peer_info, origin }
    }

    /// Where it came from.
    pub(crate) fn origin(&self) -> Option<Origin> {
        self.origin
    }

    /// The same record, from `origin`.
    pub(crate) fn with_origin(self, origin: Option<Origin>) -> Self {
        StoredRecord { origin, ..self }
    }

    /// The envelope of `flavour`, if registered.
    pub(crate) fn envelope(&self, flavour: Flavour) -> Option<&Bytes> {
        self.envelopes[flavour.index()].as_ref()
    }

    /// The addresses as a `PeerInfo`.
    pub(crate) fn peer_info(&self) -> &Bytes {
        &self.peer_info
    }

    /// A verified envelope of `flavour` whose addresses are `peer_info`.
    pub(crate) fn signed(flavour: Flavour, envelope: Bytes, peer_info: Bytes) -> Self {
        let mut envelopes = [None, None];
        envelopes[flavour.index()] = Some(envelope);
        StoredRecord { envelopes, peer_info, origin: None }
    }

    /// Whether both announce the same addresses (so their envelopes can be
    /// served side by side).
    pub(crate) fn same_addresses(&self, other: &StoredRecord) -> bool {
        self.peer_info == other.peer_info
    }

    /// `newer` on top of `self`: with the same addresses, the flavours
    /// `newer` lacks are kept; with other addresses, `newer` replaces
    /// everything, since an older envelope would send its readers to
    /// addresses the peer no longer announces.
    pub(crate) fn merged(self, newer: StoredRecord) -> StoredRecord {
        if !self.same_addresses(&newer) {
            return newer;
        }
        let [a, b] = self.envelopes;
        let [x, y] = newer.envelopes;
        StoredRecord {
            envelopes: [x.or(a), y.or(b)],
            peer_info: newer.peer_info,
            origin: newer.origin.or(self.origin),
        }
    }

    /// The bytes `reader` gets, if it can verify this record.
    pub(crate) fn bytes_for(&self, reader: Reader) -> Option<&Bytes> {
        match reader {
            Reader::Legacy => Some(&self.peer_info),
            Reader::Any => Some(self.envelopes.iter().flatten().next().unwrap_or(&self.peer_info)),
            Reader::Signed(flavour) => self.envelopes[flavour.index()].as_ref(),
        }
    }

    /// Whether an envelope of `flavour` is stored.
    pub(crate) fn has(&self, flavour: Flavour) -> bool {
        self.envelopes[flavour.index()].is_some()
    }

    /// The part of this record whose bytes are `bytes`, with its dialect:
    /// what verifying `bytes` again would give.
    pub(crate) fn part(&self, bytes: &[u8]) -> Option<(Dialect, StoredRecord)> {
        for flavour in Flavour::ALL {
            if self.envelopes[flavour.index()].as_deref() == Some(bytes) {
                let envelope = self.envelopes[flavour.index()].clone()?;
                let part = StoredRecord::signed(flavour, envelope, self.peer_info.clone());
                return Some((Dialect::Signed(flavour), part));
            }
        }
        (self.peer_info == bytes)
            .then(|| (Dialect::Legacy, StoredRecord::legacy(self.peer_info.clone())))
    }
}

/// One registration.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The owner's slot in the peer table (a peer id is 80 bytes; it is
    /// stored once per peer, not once per registration).
    peer: usize,
    pub(crate) namespace: Namespace,
    pub(crate) seq: u64,
    pub(crate) expires: Timestamp,
    pub(crate) record: StoredRecord,
}

impl Entry {
    /// Seconds left at `now`, rounded up so a live entry never reads as 0.
    pub(crate) fn ttl_left(&self, now: Timestamp) -> u64 {
        let left = self.expires - now;
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }
}

/// One index per kind of reader: everything (legacy and "any" readers), then
/// one per signed flavour.
#[derive(Debug, Default)]
struct Index([BTreeMap<u64, usize>; 3]);

fn view(reader: Reader) -> usize {
    match reader {
        Reader::Legacy | Reader::Any => 0,
        Reader::Signed(flavour) => 1 + flavour.index(),
    }
}

impl Index {
    /// Lists `slot` under `seq` in every view that can read `record`.
    fn insert(&mut self, record: &StoredRecord, seq: u64, slot: usize) {
        self.0[0].insert(seq, slot);
        for flavour in Flavour::ALL.into_iter().filter(|f| record.has(*f)) {
            self.0[view(Reader::Signed(flavour))].insert(seq, slot);
        }
    }

    fn remove(&mut self, seq: u64) {
        for view in &mut self.0 {
            view.remove(&seq);
        }
    }
}

#[derive(Debug, Default)]
struct NamespaceState {
    index: Index,
    len: usize,
}

#[derive(Debug)]
struct PeerState {
    id: PeerId,
    registrations: usize,
    /// The entry holding the last record this peer registered, so that
    /// registering the same bytes again (a refresh, or another namespace)
    /// needs no signature check.
    last_record: Option<usize>,
}

/// What [`Registry::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    New,
    Replaced,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    entries: Slab<Entry>,
    /// (peer slot, namespace) to entry slot.
    by_key: HashMap<(usize, Namespace), usize>,
    namespaces: BTreeMap<Namespace, NamespaceState>,
    all: Index,
    expiry: BTreeMap<(Timestamp, u64), usize>,
    peers: Slab<PeerState>,
    peer_slots: HashMap<PeerId, usize>,
    /// Registrations per origin, for the quota per address.
    per_origin: HashMap<Origin, usize>,
    last_seq: u64,
}

impl Registry {
    /// An empty registry whose first sequence number is `last_seq + 1`.
    pub(crate) fn starting_at(last_seq: u64) -> Self {
        Registry { last_seq, ..Registry::default() }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The highest sequence number issued; every cookie position is at most this.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(crate) fn peer_len(&self, peer: &PeerId) -> usize {
        self.peer_slots.get(peer).map_or(0, |&p| self.peers[p].registrations)
    }

    pub(crate) fn origin_len(&self, origin: &Origin) -> usize {
        self.per_origin.get(origin).copied().unwrap_or(0)
    }

    pub(crate) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    pub(crate) fn namespace_len(&self, namespace: &Namespace) -> usize {
        self.namespaces.get(namespace).map_or(0, |n| n.len)
    }

    /// Namespaces after `after` (all, for `None`), in name order, with
    /// their numbers of registrations.
    pub(crate) fn namespaces_after(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&Namespace, usize)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.namespaces.range::<str, _>((from, Bound::Unbounded)).map(|(ns, state)| (ns, state.len))
    }

    pub(crate) fn get(&self, peer: &PeerId, namespace: &Namespace) -> Option<&Entry> {
        let key = (*self.peer_slots.get(peer)?, namespace.clone());
        self.by_key.get(&key).map(|&slot| &self.entries[slot])
    }

    /// `bytes` as already verified, if they are part of the peer's last
    /// registered record.
    pub(crate) fn cached_record(
        &self,
        peer: &PeerId,
        bytes: &[u8],
    ) -> Option<(Dialect, StoredRecord)> {
        let last = self.peers[*self.peer_slots.get(peer)?].last_record?;
        self.entries[last].record.part(bytes)
    }

    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.keys().next().map(|&(deadline, _)| deadline)
    }

    /// The sequence number the next registration gets if nothing else
    /// decides it.
    pub(crate) fn next_seq(&self) -> u64 {
        self.last_seq.saturating_add(1)
    }

    /// Sequence numbers from here on continue from `seq`, the last a store
    /// gave: dense across a restart, and above every cookie issued before.
    pub(crate) fn continue_from(&mut self, seq: u64) {
        self.last_seq = seq.max(self.entries.iter().map(|(_, e)| e.seq).max().unwrap_or(0));
    }

    /// Sequence numbers from here on are above `seq` (cookies issued before
    /// a restart stay valid).
    pub(crate) fn raise_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Adds or replaces the registration of `peer` in `namespace` at
    /// position `seq`, which must be above every registration's (a
    /// replacement reads as new to paging discoverers).
    pub(crate) fn insert(
        &mut self,
        peer: PeerId,
        namespace: Namespace,
        seq: u64,
        expires: Timestamp,
        record: StoredRecord,
    ) -> Inserted {
        let replaced = self.remove(&peer, &namespace).is_some();
        self.raise_seq(seq);
        let owner = match self.peer_slots.get(&peer) {
            Some(&slot) => slot,
            None => {
                let slot =
                    self.peers.insert(PeerState { id: peer, registrations: 0, last_record: None });
                self.peer_slots.insert(peer, slot);
                slot
            }
        };
        let slot = self.entries.insert(Entry {
            peer: owner,
            namespace: namespace.clone(),
            seq,
            expires,
            record,
        });
        let record = &self.entries[slot].record;
        if let Some(origin) = record.origin() {
            *self.per_origin.entry(origin).or_default() += 1;
        }
        self.all.insert(record, seq, slot);
        let ns = self.namespaces.entry(namespace.clone()).or_default();
        ns.index.insert(record, seq, slot);
        ns.len += 1;
        self.expiry.insert((expires, seq), slot);
        self.by_key.insert((owner, namespace), slot);
        let state = &mut self.peers[owner];
        state.registrations += 1;
        state.last_record = Some(slot);
        if replaced { Inserted::Replaced } else { Inserted::New }
    }

    /// Removes the registration of `peer` in `namespace`, if any.
    pub(crate) fn remove(&mut self, peer: &PeerId, namespace: &Namespace) -> Option<Entry> {
        let owner = *self.peer_slots.get(peer)?;
        let slot = *self.by_key.get(&(owner, namespace.clone()))?;
        Some(self.remove_slot(slot).1)
    }

    /// Removes every registration whose deadline is at or before `now`,
    /// earliest first, handing each and its owner to `on_expired`.
    pub(crate) fn expire(&mut self, now: Timestamp, mut on_expired: impl FnMut(PeerId, Entry)) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let slot = *entry.get();
            let (peer, removed) = self.remove_slot(slot);
            on_expired(peer, removed);
        }
    }

    /// Unlinks `slot` from every index and its owner; returns the owner too.
    fn remove_slot(&mut self, slot: usize) -> (PeerId, Entry) {
        let entry = self.entries.remove(slot);
        self.all.remove(entry.seq);
        self.expiry.remove(&(entry.expires, entry.seq));
        self.by_key.remove(&(entry.peer, entry.namespace.clone()));
        if let Some(origin) = entry.record.origin()
            && let Some(n) = self.per_origin.get_mut(&origin)
        {
            *n -= 1;
            if *n == 0 {
                self.per_origin.remove(&origin);
            }
        }
        if let Some(ns) = self.namespaces.get_mut(&entry.namespace) {
            ns.index.remove(entry.seq);
            ns.len -= 1;
            if ns.len == 0 {
                self.namespaces.remove(&entry.namespace);
            }
        }
        let state = &mut self.peers[entry.peer];
        let peer = state.id;
        state.registrations -= 1;
        if state.last_record == Some(slot) {
            state.last_record = None;
        }
        if state.registrations == 0 {
            self.peers.remove(entry.peer);
            self.peer_slots.remove(&peer);
        }
        (peer, entry)
    }

    /// The index `reader` walks in `namespace` (or all).
    fn view(&self, reader: Reader, namespace: Option<&Namespace>) -> Option<&BTreeMap<u64, usize>> {
        let index = match namespace {
            Some(ns) => &self.namespaces.get(ns)?.index,
            None => &self.all,
        };
        Some(&index.0[view(reader)])
    }

    /// The lowest and the highest sequence number `reader` can read in
    /// `namespace` (or all), if it can read any: O(log n).
    pub(crate) fn bounds(
        &self,
        reader: Reader,
        namespace: Option<&Namespace>,
    ) -> Option<(u64, u64)> {
        let view = self.view(reader, namespace)?;
        Some((*view.first_key_value()?.0, *view.last_key_value()?.0))
    }

    /// Entries in `namespace` (or all), readable by `reader`: first those
    /// whose sequence number is in `down`, highest first, then those after
    /// `after`, in sequence order. Two range walks: O(log n) to start, O(1)
    /// per entry.
    pub(crate) fn walk<'a>(
        &'a self,
        reader: Reader,
        namespace: Option<&Namespace>,
        down: Range<u64>,
        after: u64,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let view = self.view(reader, namespace);
        let down = down.start.min(down.end)..down.end;
        let down = view.into_iter().flat_map(move |view| view.range(down.clone()).rev());
        let up = view.into_iter().flat_map(move |view| view.range((Excluded(after), Unbounded)));
        down.chain(up).map(move |(_, &slot)| &self.entries[slot])
    }
}
