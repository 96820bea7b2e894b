//! The rendezvous point: answers REGISTER, UNREGISTER and DISCOVER.

mod readers;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;

use crate::RequestId;
use crate::codec::{self, CodecError};
use crate::cookie::{Cookie, CookieError};
use crate::limits::{Limits, LimitsError, REGISTRATION_OVERHEAD, ServerConfig};
use crate::namespace::{Namespace, NamespaceError};
use crate::proto::{self, MessageType, ResponseStatus};
use crate::record::{Dialect, Flavour, Reader, Record, encode_peer_info};
use crate::registry::{Inserted, Registry, StoredRecord};
use crate::time::Timestamp;
use readers::Readers;

/// A rendezvous point, as a state machine that does no I/O and reads no clock.
///
/// # Driving it
/// Inputs, each taking the current time where it matters:
/// - [`handle_frame`](Self::handle_frame) (or [`handle_request`](Self::handle_request)
///   with a decoded message) for every request read from a substream, tagged
///   with a [`RequestId`] the adapter chose to find the substream again;
/// - [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) is reached;
/// - [`set_reader_dialect`](Self::set_reader_dialect) and
///   [`handle_disconnected`](Self::handle_disconnected) as the adapter learns
///   about peers.
///
/// After every input, drain the outputs in this order:
/// 1. [`poll_transmit`](Self::poll_transmit) until `None`: one per request,
///    each for the substream of its request id: a response to write, or
///    (UNREGISTER, which has no response) nothing to write. Either way the
///    request is done and that substream may carry the next one, so an
///    adapter reading several requests from one substream answers them in
///    order.
/// 2. [`poll_event`](Self::poll_event) until `None`: what happened, for logs
///    and metrics.
/// 3. [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout` next
///    (the earliest expiry). Reset the one timer to it.
///
/// Expired registrations are never served even if `handle_timeout` is late:
/// every input first expires what is due at its `now`. Time that runs
/// backwards is treated as standing still.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    registry: Registry,
    /// What each peer reads, as the adapter said and its REGISTERs showed.
    readers: Readers,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    now: Timestamp,
    dropped_events: u64,
    records_verified: u64,
    busy_refusals: u64,
}

/// The outcome of one request: a response to write, or nothing to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// Who asked.
    pub peer: PeerId,
    /// The id the adapter gave the request.
    pub request_id: RequestId,
    /// The response; `None` for a request that has none (UNREGISTER).
    pub message: Option<proto::Message>,
}

impl Transmit {
    /// The response as a length-prefixed frame, if there is one.
    pub fn to_frame(&self) -> Option<Bytes> {
        self.message.as_ref().map(codec::frame)
    }
}

/// Something that happened on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A peer registered in a namespace where it had no registration.
    Registered {
        /// Who.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
        /// The TTL granted.
        ttl: Duration,
        /// The dialect of its record.
        dialect: Dialect,
    },
    /// A peer replaced its registration in a namespace (a refresh).
    Refreshed {
        /// Who.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
        /// The TTL granted.
        ttl: Duration,
        /// The dialect of its record.
        dialect: Dialect,
    },
    /// A peer removed its registration.
    Unregistered {
        /// Who.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
    },
    /// A registration reached the end of its TTL and was removed.
    Expired {
        /// Whose.
        peer: PeerId,
        /// Where.
        namespace: Namespace,
    },
    /// A request was answered with an error status.
    Refused {
        /// Who asked.
        peer: PeerId,
        /// What it asked.
        request: MessageType,
        /// The status sent.
        status: ResponseStatus,
        /// The `statusText` sent.
        reason: String,
    },
    /// A request of a type the server does not serve (a response type, the
    /// legacy DISCOVER_SUBSCRIBE, or an unknown number) was answered with
    /// `E_UNAVAILABLE`.
    Unsupported {
        /// Who asked.
        peer: PeerId,
        /// The `Message.type` it sent.
        message_type: i32,
    },
    /// A DISCOVER was answered.
    Discovered {
        /// Who asked.
        peer: PeerId,
        /// The namespace asked for; `None` for all.
        namespace: Option<Namespace>,
        /// How many registrations the page held.
        count: usize,
    },
}

/// Counts the server keeps, all O(1) to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live registrations.
    pub registrations: usize,
    /// Namespaces with at least one registration.
    pub namespaces: usize,
    /// Peers with at least one registration.
    pub peers: usize,
    /// Events dropped because the event queue was full.
    pub dropped_events: u64,
    /// Records parsed and, for envelopes, signature-checked; a re-registration
    /// of the same bytes does not count.
    pub records_verified: u64,
    /// Peers whose reader dialect is remembered.
    pub remembered_readers: usize,
    /// Remembered readers forgotten to make room for newer ones.
    pub readers_evicted: u64,
    /// Requests answered `E_UNAVAILABLE` because the adapter was over a
    /// bound ([`Server::handle_frame_busy`]).
    pub busy_refusals: u64,
}

/// A refusal: the status to answer with and the text saying why.
struct Refusal(ResponseStatus, String);

impl Refusal {
    fn new(status: ResponseStatus, reason: impl ToString) -> Self {
        Refusal(status, reason.to_string())
    }
}

fn namespace_refusal(err: NamespaceError) -> Refusal {
    Refusal::new(ResponseStatus::EInvalidNamespace, err)
}

impl Server {
    /// A server with `config`, or why the limits cannot work.
    pub fn new(config: ServerConfig) -> Result<Server, LimitsError> {
        config.limits.validate()?;
        Ok(Server {
            registry: Registry::starting_at(config.initial_sequence),
            readers: Readers::new(config.max_remembered_readers),
            config,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            now: Timestamp::ZERO,
            dropped_events: 0,
            records_verified: 0,
            busy_refusals: 0,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Decodes one request body (a frame without its length prefix) and
    /// handles it. A body that is not a protobuf message is the remote's
    /// fault: the error is for the adapter, which should end that substream.
    pub fn handle_frame(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        body: &[u8],
    ) -> Result<(), CodecError> {
        if body.len() > self.config.limits.max_request_frame {
            return Err(CodecError::FrameTooLarge {
                claimed: body.len() as u64,
                max: self.config.limits.max_request_frame,
            });
        }
        let message = codec::decode_message(body)?;
        self.handle_request(now, peer, request_id, message);
        Ok(())
    }

    /// Answers a request the adapter cannot take now (it is over one of its
    /// bounds, named by `reason`) with `E_UNAVAILABLE` and `reason` as the
    /// `statusText`, so that the requester learns it at once instead of
    /// timing out. An UNREGISTER is applied all the same: it gets no answer,
    /// so refusing it would lose it silently.
    pub fn handle_frame_busy(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        body: &[u8],
        reason: &str,
    ) -> Result<(), CodecError> {
        if body.len() > self.config.limits.max_request_frame {
            return Err(CodecError::FrameTooLarge {
                claimed: body.len() as u64,
                max: self.config.limits.max_request_frame,
            });
        }
        let message = codec::decode_message(body)?;
        let kind = match message.message_type() {
            Ok(MessageType::Unregister) | Err(_) => {
                self.handle_request(now, peer, request_id, message);
                return Ok(());
            }
            Ok(kind) => kind,
        };
        self.advance(now);
        self.busy_refusals += 1;
        let status = ResponseStatus::EUnavailable;
        let reason = reason.to_owned();
        let response = match kind {
            MessageType::Register => register_response(status, Some(reason.clone()), None),
            _ => discover_error(status, reason.clone()),
        };
        self.refused(peer, kind, status, reason);
        self.transmits.push_back(Transmit { peer, request_id, message: Some(response) });
        Ok(())
    }

    /// Handles one decoded request from `peer`.
    pub fn handle_request(
        &mut self,
        now: Timestamp,
        peer: PeerId,
        request_id: RequestId,
        message: proto::Message,
    ) {
        self.advance(now);
        let response = match message.message_type() {
            Ok(MessageType::Register) => {
                let register = message.register.unwrap_or_default();
                let response = match self.register(peer, register) {
                    Ok(ttl) => register_response(ResponseStatus::Ok, None, Some(ttl.as_secs())),
                    Err(Refusal(status, reason)) => {
                        let response = register_response(status, Some(reason.clone()), None);
                        self.refused(peer, MessageType::Register, status, reason);
                        response
                    }
                };
                Some(response)
            }
            Ok(MessageType::Unregister) => {
                self.unregister(peer, message.unregister.unwrap_or_default());
                None
            }
            Ok(MessageType::Discover) => {
                let discover = message.discover.unwrap_or_default();
                let response = match self.discover(peer, discover) {
                    Ok(response) => response,
                    Err(Refusal(status, reason)) => {
                        let response = discover_error(status, reason.clone());
                        self.refused(peer, MessageType::Discover, status, reason);
                        response
                    }
                };
                Some(response)
            }
            Ok(other) => Some(self.unsupported(peer, other as i32, Some(other))),
            Err(raw) => Some(self.unsupported(peer, raw, None)),
        };
        self.transmits.push_back(Transmit { peer, request_id, message: response });
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.advance(now);
    }

    /// Tells the server what `peer` reads, usually from identify's agent
    /// version through [`Reader::from_agent_version`]. The dialect of the
    /// peer's own REGISTERs overrides it (a peer reads what it writes), but
    /// never narrows [`Reader::Any`]. A peer nothing is known of reads
    /// [`ServerConfig::unknown_reader`].
    pub fn set_reader_dialect(&mut self, peer: PeerId, reader: impl Into<Reader>) {
        self.readers.told(peer, reader.into());
    }

    /// The adapter's last connection to `peer` closed: forget its dialect.
    /// Its registrations stay until they expire or are unregistered.
    pub fn handle_disconnected(&mut self, now: Timestamp, peer: &PeerId) {
        self.advance(now);
        self.readers.forget(peer);
    }

    /// The next response to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called:
    /// the earliest expiry, or `None` while nothing is registered.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.registry.next_expiry()
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        Stats {
            registrations: self.registry.len(),
            namespaces: self.registry.namespace_count(),
            peers: self.registry.peer_count(),
            dropped_events: self.dropped_events,
            records_verified: self.records_verified,
            remembered_readers: self.readers.len(),
            readers_evicted: self.readers.evicted(),
            busy_refusals: self.busy_refusals,
        }
    }

    /// Every namespace with its number of live registrations, in name order.
    pub fn namespaces(&self) -> impl Iterator<Item = (&Namespace, usize)> {
        self.registry.namespaces()
    }

    /// Time left on `peer`'s registration in `namespace`, if it has one.
    pub fn registration_ttl(&self, peer: &PeerId, namespace: &Namespace) -> Option<Duration> {
        self.registry.get(peer, namespace).map(|e| e.expires - self.now)
    }

    fn advance(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        let mut expired = Vec::new();
        self.registry.expire(self.now, |peer, entry| expired.push((peer, entry.namespace)));
        for (peer, namespace) in expired {
            self.push_event(Event::Expired { peer, namespace });
        }
    }

    fn register(&mut self, peer: PeerId, register: proto::Register) -> Result<Duration, Refusal> {
        let limits = &self.config.limits;
        let namespace =
            Namespace::new(register.ns.as_deref().unwrap_or(""), limits.max_namespace_len)
                .map_err(namespace_refusal)?;
        let ttl = match register.ttl.unwrap_or(0) {
            0 => limits.default_ttl,
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
        let limits = &self.config.limits;
        let existing = self.registry.get(&peer, &namespace).map(|e| e.record.clone());
        if existing.is_none() {
            if self.registry.peer_len(&peer) >= limits.max_registrations_per_peer {
                return Err(Refusal::new(
                    ResponseStatus::ENotAuthorized,
                    format!(
                        "peer already holds {} registrations, the limit per peer",
                        limits.max_registrations_per_peer
                    ),
                ));
            }
            if self.registry.namespace_len(&namespace) >= limits.max_registrations_per_namespace {
                return Err(Refusal::new(
                    ResponseStatus::EUnavailable,
                    format!(
                        "namespace holds {} registrations, the limit per namespace",
                        limits.max_registrations_per_namespace
                    ),
                ));
            }
            if self.registry.len() >= limits.max_registrations {
                return Err(Refusal::new(
                    ResponseStatus::EUnavailable,
                    format!("server holds {} registrations, its limit", limits.max_registrations),
                ));
            }
        }
        // Another flavour of the same record joins the registration.
        let record = match existing {
            Some(older) => older.merged(record),
            None => record,
        };
        let inserted = self.registry.insert(self.now, peer, namespace.clone(), ttl, record);
        self.readers.registered(peer, dialect.into());
        self.push_event(match inserted {
            Inserted::New => Event::Registered { peer, namespace, ttl, dialect },
            Inserted::Replaced => Event::Refreshed { peer, namespace, ttl, dialect },
        });
        Ok(ttl)
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

    fn unregister(&mut self, peer: PeerId, unregister: proto::Unregister) {
        let ns = unregister.ns.as_deref().unwrap_or("");
        let Ok(namespace) = Namespace::new(ns, self.config.limits.max_namespace_len) else {
            // UNREGISTER has no response; a bad namespace cannot name anything we hold.
            return;
        };
        if let Some(entry) = self.registry.remove(&peer, &namespace) {
            self.push_event(Event::Unregistered { peer, namespace: entry.namespace });
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
        let position = match discover.cookie.filter(|c| !c.is_empty()) {
            None => 0,
            Some(bytes) => self
                .check_cookie(&bytes, namespace.as_ref())
                .map_err(|err| Refusal::new(ResponseStatus::EInvalidCookie, err))?,
        };
        let reader = self.readers.get(&peer).unwrap_or(self.config.unknown_reader);
        let budget = self.config.limits.response_budget();
        let mut used = 0;
        let mut last = position;
        let mut registrations = Vec::new();
        for entry in self.registry.page(reader, namespace.as_ref(), position) {
            let bytes = entry
                .record
                .bytes_for(reader)
                .expect("the reader's index holds only records it can read");
            let cost = bytes.len() + entry.namespace.as_str().len() + REGISTRATION_OVERHEAD;
            if registrations.len() as u64 == limit || used + cost > budget {
                break;
            }
            used += cost;
            last = entry.seq;
            registrations.push(proto::Register {
                ns: Some(entry.namespace.as_str().to_owned()),
                signed_peer_record: Some(bytes.clone()),
                ttl: Some(entry.ttl_left(self.now)),
                other_records: Vec::new(),
            });
        }
        let count = registrations.len();
        let cookie = Cookie { position: last, namespace: namespace.clone() }.to_bytes();
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

    fn check_cookie(
        &self,
        bytes: &[u8],
        namespace: Option<&Namespace>,
    ) -> Result<u64, CookieError> {
        let cookie = Cookie::parse(bytes, self.config.limits.max_namespace_len)?;
        // A position in all namespaces is a position in each of them too
        // (sequence numbers are global); rust-libp2p's server takes it.
        if cookie.namespace.is_some() && cookie.namespace.as_ref() != namespace {
            return Err(CookieError::WrongNamespace);
        }
        if cookie.position > self.registry.last_seq() {
            return Err(CookieError::Unknown);
        }
        Ok(cookie.position)
    }

    fn unsupported(
        &mut self,
        peer: PeerId,
        raw: i32,
        known: Option<MessageType>,
    ) -> proto::Message {
        let reason = match known {
            Some(kind) => format!("message type {raw} ({kind:?}) is not a supported request"),
            None => format!("message type {raw} is unknown"),
        };
        self.push_event(Event::Unsupported { peer, message_type: raw });
        discover_error(ResponseStatus::EUnavailable, reason)
    }

    fn refused(
        &mut self,
        peer: PeerId,
        request: MessageType,
        status: ResponseStatus,
        reason: String,
    ) {
        self.push_event(Event::Refused { peer, request, status, reason });
    }

    fn push_event(&mut self, event: Event) {
        // One call can expire the whole registry at once; an adapter that
        // drains after every call must never lose an event to that.
        let cap = self.config.max_queued_events.max(self.config.limits.max_registrations + 16);
        if self.events.len() < cap {
            self.events.push_back(event);
        } else {
            self.dropped_events += 1;
        }
    }
}

#[cfg(test)]
mod tests;

fn register_response(
    status: ResponseStatus,
    text: Option<String>,
    ttl: Option<u64>,
) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::RegisterResponse as i32),
        register_response: Some(proto::RegisterResponse {
            status: Some(status as i32),
            status_text: text,
            ttl,
        }),
        ..Default::default()
    }
}

fn discover_error(status: ResponseStatus, text: String) -> proto::Message {
    proto::Message {
        r#type: Some(MessageType::DiscoverResponse as i32),
        discover_response: Some(proto::DiscoverResponse {
            registrations: Vec::new(),
            cookie: None,
            status: Some(status as i32),
            status_text: Some(text),
        }),
        ..Default::default()
    }
}
