//! REGISTER and UNREGISTER: validation, record verification (cached per
//! peer), the limits, and applying a registration to the registry.

use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use super::durable::Grant;
use super::{Admitted, Event, Refusal, Server, namespace_refusal};
use crate::namespace::Namespace;
use crate::origin::Origin;
use crate::proto::{self, ResponseStatus};
use crate::record::{Dialect, Flavour, Record, encode_peer_info};
use crate::registry::{Inserted, StoredRecord};
use crate::request::RequestId;
use crate::time::Timestamp;

impl Server {
    /// Checks a REGISTER and applies it, or, when durable, hands it to the
    /// store and holds the answer.
    pub(super) fn register(
        &mut self,
        peer: PeerId,
        request_id: RequestId,
        register: proto::Register,
    ) -> Result<Admitted<Duration>, Refusal> {
        let limits = &self.config.limits;
        let namespace =
            Namespace::new(register.ns.as_deref().unwrap_or(""), limits.max_namespace_len)
                .map_err(namespace_refusal)?;
        let ttl = match register.ttl.unwrap_or(0) {
            0 => limits.default_ttl(),
            secs if (limits.min_ttl..=limits.max_ttl).contains(&Duration::from_secs(secs)) => {
                Duration::from_secs(secs)
            }
            secs => {
                return Err(Refusal::new(
                    ResponseStatus::EInvalidTtl,
                    format!(
                        "ttl of {secs} s is outside the allowed range of {} to {} s",
                        limits.min_ttl.as_secs(),
                        limits.max_ttl.as_secs()
                    ),
                ));
            }
        };
        let (dialect, mut record) =
            self.verify_record(peer, register.signed_peer_record.unwrap_or_default())?;
        self.add_other_records(peer, &mut record, register.other_records)?;
        let record = record.with_origin(self.readers.origin(&peer));
        let key = (peer, namespace);
        let held = self.registry.get(&key.0, &key.1);
        // A registration held or on its way already has its place.
        let new = held.is_none() && !self.writes.has_put(&key);
        if new {
            self.check_room(&key.0, &key.1, record.origin())?;
        }
        let durable = self.config.durability.is_durable();
        if durable && self.writes.len() >= self.config.max_pending_writes {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!(
                    "{} writes are waiting for the store, the server's limit; retry later",
                    self.config.max_pending_writes
                ),
            ));
        }
        // Another flavour of the same record joins what the registration
        // holds once the writes on their way are settled.
        let base = match self.writes.outcome(&key) {
            Some(outcome) => outcome.cloned(),
            None => held.map(|e| e.record.clone()),
        };
        let record = match base {
            Some(older) => older.merged(record),
            None => record,
        };
        let expires = self.now + ttl;
        let (peer, namespace) = key;
        let grant = Grant { peer, namespace, ttl, dialect, new };
        if durable {
            self.hold(request_id, grant, expires, record);
            return Ok(Admitted::Held);
        }
        let seq = self.registry.next_seq();
        self.apply(grant, seq, expires, record);
        Ok(Admitted::Now(ttl))
    }

    /// Whether a registration of `peer` in `namespace`, new, fits the limits
    /// (counting those on their way to the store).
    fn check_room(
        &self,
        peer: &PeerId,
        namespace: &Namespace,
        origin: Option<Origin>,
    ) -> Result<(), Refusal> {
        let limits = &self.config.limits;
        let pending = &self.writes;
        if self.registry.peer_len(peer) + pending.new_for_peer(peer)
            >= limits.max_registrations_per_peer
        {
            return Err(Refusal::new(
                ResponseStatus::ENotAuthorized,
                format!(
                    "peer already holds {} registrations, the limit per peer",
                    limits.max_registrations_per_peer
                ),
            ));
        }
        if self.registry.namespace_len(namespace) + pending.new_in_namespace(namespace)
            >= limits.max_registrations_per_namespace
        {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!(
                    "namespace holds {} registrations, the limit per namespace",
                    limits.max_registrations_per_namespace
                ),
            ));
        }
        if let Some(origin) = origin
            && self.registry.origin_len(&origin) + pending.new_with_origin(&origin)
                >= limits.per_origin()
        {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!(
                    "{origin} holds {} registrations, the limit per address",
                    limits.per_origin()
                ),
            ));
        }
        if self.registry.len() + pending.new_in_all() >= limits.max_registrations {
            return Err(Refusal::new(
                ResponseStatus::EUnavailable,
                format!("server holds {} registrations, its limit", limits.max_registrations),
            ));
        }
        Ok(())
    }

    /// Puts a registration into the registry at `seq`.
    pub(super) fn apply(
        &mut self,
        grant: Grant,
        seq: u64,
        expires: Timestamp,
        record: StoredRecord,
    ) {
        let Grant { peer, namespace, ttl, dialect, .. } = grant;
        let inserted = self.registry.insert(peer, namespace.clone(), seq, expires, record);
        self.publish_put(&peer, &namespace);
        self.readers.registered(peer, dialect.into());
        self.push_event(match inserted {
            Inserted::New => Event::Registered { peer, namespace, ttl, dialect },
            Inserted::Replaced => Event::Refreshed { peer, namespace, ttl, dialect },
        });
    }

    /// Verifies the extension's other flavours of the same record and adds
    /// them: each must be an envelope of a flavour not yet present, signed by
    /// the sender, announcing the same addresses.
    fn add_other_records(
        &mut self,
        peer: PeerId,
        record: &mut StoredRecord,
        others: Vec<Bytes>,
    ) -> Result<(), Refusal> {
        if others.len() > Flavour::ALL.len() {
            return Err(Refusal::new(
                ResponseStatus::EInvalidSignedPeerRecord,
                format!(
                    "{} other records, more than the {} flavours",
                    others.len(),
                    Flavour::ALL.len()
                ),
            ));
        }
        for (i, bytes) in others.into_iter().enumerate() {
            let (dialect, other) = self
                .verify_record(peer, bytes)
                .map_err(|Refusal(s, text)| Refusal(s, format!("other record {i}: {text}")))?;
            let fits = match dialect {
                Dialect::Signed(flavour) => !record.has(flavour) && record.same_addresses(&other),
                Dialect::Legacy => false,
            };
            if !fits {
                return Err(Refusal::new(
                    ResponseStatus::EInvalidSignedPeerRecord,
                    format!(
                        "other record {i} must be an envelope of another flavour with the same addresses"
                    ),
                ));
            }
            *record = record.clone().merged(other);
        }
        Ok(())
    }

    /// Parses and verifies a record, unless it is part of what `peer`
    /// registered last (then the stored, already verified form is reused).
    fn verify_record(
        &mut self,
        peer: PeerId,
        bytes: Bytes,
    ) -> Result<(Dialect, StoredRecord), Refusal> {
        if let Some(cached) = self.registry.cached_record(&peer, &bytes) {
            return Ok(cached);
        }
        self.records_verified += 1;
        let invalid = |err| Refusal::new(ResponseStatus::EInvalidSignedPeerRecord, err);
        let record = Record::parse(bytes, &self.config.limits.record_limits()).map_err(invalid)?;
        match record.peer {
            Some(owner) if owner != peer => {
                return Err(Refusal::new(
                    ResponseStatus::ENotAuthorized,
                    format!("peer record is for {owner}, not for the sender {peer}"),
                ));
            }
            _ => {}
        }
        let peer_info = encode_peer_info(&peer, &record.addresses);
        let stored = match record.dialect {
            Dialect::Legacy => StoredRecord::legacy(peer_info),
            Dialect::Signed(flavour) => StoredRecord::signed(flavour, record.bytes, peer_info),
        };
        Ok((record.dialect, stored))
    }

    /// Removes `peer`'s registration in the namespace, at once, or, when
    /// durable, once the store has removed it (behind the writes read
    /// before it on the same registration).
    pub(super) fn unregister(
        &mut self,
        peer: PeerId,
        request_id: RequestId,
        unregister: proto::Unregister,
    ) -> Admitted<()> {
        let ns = unregister.ns.as_deref().unwrap_or("");
        let Ok(namespace) = Namespace::new(ns, self.config.limits.max_namespace_len) else {
            // UNREGISTER has no response; a bad namespace cannot name anything we hold.
            return Admitted::Now(());
        };
        let key = (peer, namespace);
        if self.config.durability.is_durable() {
            if self.registry.get(&key.0, &key.1).is_none() && self.writes.outcome(&key).is_none() {
                return Admitted::Now(()); // nothing held, nothing on its way
            }
            self.hold_delete(key, request_id);
            return Admitted::Held;
        }
        if let Some(entry) = self.registry.remove(&key.0, &key.1) {
            self.publish_removal(peer, &entry);
            self.push_event(Event::Unregistered { peer, namespace: entry.namespace });
        }
        Admitted::Now(())
    }
}
