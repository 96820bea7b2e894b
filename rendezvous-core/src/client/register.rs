//! Registrations: REGISTER, renewal at [`REFRESH_PERCENT`] of the grant,
//! retries with backoff, resends down the dialect ladder, and unregistering,
//! including a REGISTER still in flight when the user unregisters (it may
//! reach the server after the UNREGISTER, so it gets one of its own).

use std::time::Duration;

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

#[cfg(doc)]
use super::REFRESH_PERCENT;
use super::dialect::Verdict;
use super::{Client, ClientEvent, CommandError, Kind, RequestError, Timer, other_flavours};
use crate::namespace::Namespace;
use crate::proto::{self, MessageType};
use crate::record::Dialect;
use crate::request::RequestId;
use crate::time::Timestamp;

/// The extension's other envelopes are left out of a REGISTER whose records
/// would pass this many bytes: every server takes a request this large.
const MAX_RECORD_BYTES_PER_REGISTER: usize = 4096;

/// One registration kept alive at one server.
#[derive(Debug)]
pub(crate) struct Registration {
    /// The TTL asked for; `None` for the server's default.
    ttl: Option<Duration>,
    /// Transient failures in a row.
    attempt: u32,
    phase: Phase,
    /// The refresh or retry timer, if one is set.
    timer: Option<Timestamp>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    InFlight(RequestId),
    Registered,
    /// Waiting to retry.
    Backoff,
}

impl Registration {
    pub(crate) fn is_registered(&self) -> bool {
        self.phase == Phase::Registered
    }
}

impl Client {
    /// Registers in `namespace` at `server`, and keeps the registration alive
    /// until [`unregister`](Self::unregister). `ttl` `None` takes the
    /// server's default.
    pub fn register(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Namespace,
        ttl: Option<Duration>,
    ) -> Result<RequestId, CommandError> {
        self.set_now(now);
        self.check_pending()?;
        self.check_namespace(Some(&namespace))?;
        let key = (server, namespace.clone());
        if !self.registrations.contains_key(&key)
            && self.registrations.len() >= self.config.max_registrations
        {
            return Err(CommandError::TooManyRegistrations(self.config.max_registrations));
        }
        self.record(self.dialect_for(&server))?;
        let id = self.allocate_id();
        let registration = self.registrations.entry(key).or_insert(Registration {
            ttl,
            attempt: 0,
            phase: Phase::InFlight(id),
            timer: None,
        });
        registration.ttl = ttl;
        registration.attempt = 0;
        self.send_register(id, Some(id), server, namespace);
        Ok(id)
    }

    /// Stops keeping the registration alive and tells the server.
    pub fn unregister(
        &mut self,
        now: Timestamp,
        server: PeerId,
        namespace: Namespace,
    ) -> Result<RequestId, CommandError> {
        self.set_now(now);
        self.check_pending()?;
        self.check_namespace(Some(&namespace))?;
        self.forget_registration(server, &namespace);
        let id = self.allocate_id();
        self.send_unregister(id, Some(id), server, namespace);
        Ok(id)
    }

    /// Unregisters everything (for shutdown): every registration kept alive,
    /// and every place a REGISTER may have been applied since (a registration
    /// given up after failures may still stand there). Returns one id per
    /// UNREGISTER; each completes with [`ClientEvent::Unregistered`]. Not
    /// bounded by [`ClientConfig::max_pending`](crate::ClientConfig::max_pending):
    /// shutdown must not leave any behind.
    pub fn unregister_all(&mut self, now: Timestamp) -> Vec<RequestId> {
        self.set_now(now);
        let mut keys: Vec<_> = self.registrations.keys().cloned().collect();
        while let Some(((server, namespace), ())) = self.placed.pop() {
            keys.push((server, namespace));
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(server, namespace)| {
                self.forget_registration(server, &namespace);
                let id = self.allocate_id();
                self.send_unregister(id, Some(id), server, namespace);
                id
            })
            .collect()
    }

    /// Announces new addresses: re-signs the records and re-registers
    /// everywhere it is registered.
    pub fn set_addresses(&mut self, now: Timestamp, addresses: Vec<Multiaddr>) {
        self.set_now(now);
        if addresses == self.addresses {
            return;
        }
        self.addresses = addresses;
        self.records.clear();
        let keys: Vec<_> = self.registrations.keys().cloned().collect();
        for (server, namespace) in keys {
            self.reregister(server, namespace);
        }
    }

    pub(super) fn dialect_for(&self, server: &PeerId) -> Dialect {
        let flavour = self.config.record_flavour;
        self.servers.get(server).map_or(flavour.ladder()[0], |s| s.dialect(flavour))
    }

    /// A refresh or retry is due.
    pub(super) fn on_register_timer(&mut self, server: PeerId, namespace: Namespace) {
        let key = (server, namespace);
        if let Some(registration) = self.registrations.get_mut(&key) {
            registration.timer = None;
            if registration.phase != Phase::Registered || self.config.refresh {
                self.reregister(key.0, key.1);
            }
        }
    }

    /// Sends a fresh REGISTER in the background; one still in flight is
    /// superseded (its answer no longer moves the registration).
    pub(super) fn reregister(&mut self, server: PeerId, namespace: Namespace) {
        let id = self.allocate_id();
        self.send_register(id, None, server, namespace);
    }

    /// Sends a REGISTER for a registration we keep, in the server's dialect,
    /// as request `id`.
    fn send_register(
        &mut self,
        id: RequestId,
        command: Option<RequestId>,
        server: PeerId,
        namespace: Namespace,
    ) {
        let dialect = self.dialect_for(&server);
        let record = match self.record(dialect) {
            Ok(record) => record,
            Err(err) => {
                // Only reachable if the addresses were emptied after registering.
                let error = RequestError::Malformed(format!("cannot build our record: {err}"));
                return self.give_up(command, server, namespace, error);
            }
        };
        let mut other_records = Vec::new();
        let mut size = record.len();
        let auto = self.config.record_flavour.ladder().len() > 1;
        for other in other_flavours(dialect).filter(|_| auto) {
            if let Ok(bytes) = self.record(other)
                && size + bytes.len() <= MAX_RECORD_BYTES_PER_REGISTER
            {
                size += bytes.len();
                other_records.push(bytes);
            }
        }
        let Some(registration) = self.registrations.get_mut(&(server, namespace.clone())) else {
            return;
        };
        registration.phase = Phase::InFlight(id);
        let ttl = registration.ttl.map(|t| t.as_secs());
        if let Some(at) = registration.timer.take() {
            self.timers.cancel(at, Timer::Register(server, namespace.clone()));
        }
        let message = proto::Message {
            r#type: Some(MessageType::Register as i32),
            register: Some(proto::Register {
                ns: Some(namespace.to_string()),
                signed_peer_record: Some(record),
                ttl,
                other_records,
            }),
            ..Default::default()
        };
        self.placed.insert((server, namespace.clone()), ());
        self.send(id, server, command, Kind::Register { namespace, dialect }, message);
    }

    pub(super) fn send_unregister(
        &mut self,
        id: RequestId,
        command: Option<RequestId>,
        server: PeerId,
        namespace: Namespace,
    ) {
        let message = proto::Message {
            r#type: Some(MessageType::Unregister as i32),
            // The deprecated id: legacy servers (py-libp2p) ignore an
            // UNREGISTER without it, the others ignore the field.
            unregister: Some(proto::Unregister {
                ns: Some(namespace.to_string()),
                id: Some(self.local_peer_id().to_bytes().into()),
            }),
            ..Default::default()
        };
        self.placed.remove(&(server, namespace.clone()));
        self.send(id, server, command, Kind::Unregister { namespace }, message);
    }

    /// Stops keeping `namespace` at `server` alive, cancelling its timer.
    fn forget_registration(&mut self, server: PeerId, namespace: &Namespace) {
        if let Some(gone) = self.registrations.remove(&(server, namespace.clone()))
            && let Some(at) = gone.timer
        {
            self.timers.cancel(at, Timer::Register(server, namespace.clone()));
        }
    }

    fn set_timer(&mut self, server: PeerId, namespace: Namespace, after: Duration) {
        let at = self.now + after;
        if let Some(registration) = self.registrations.get_mut(&(server, namespace.clone())) {
            registration.timer = Some(at);
            self.timers.set(at, Timer::Register(server, namespace));
        }
    }

    /// The outcome of REGISTER `id` (which completes `command`, if any),
    /// sent in `dialect`.
    pub(super) fn on_register(
        &mut self,
        (id, command): (RequestId, Option<RequestId>),
        server: PeerId,
        namespace: Namespace,
        dialect: Dialect,
        result: Result<u64, RequestError>,
    ) {
        let key = (server, namespace.clone());
        let current = self.registrations.get(&key).is_some_and(|r| r.phase == Phase::InFlight(id));
        let kept = self.registrations.contains_key(&key);
        let error = match result {
            Ok(granted) => {
                let flavour = self.config.record_flavour;
                if self.servers.entry(server).or_default().accepted(flavour, dialect) {
                    self.events.push_back(ClientEvent::FlavourAccepted { server, dialect });
                }
                let asked = self.registrations.get(&key).and_then(|r| r.ttl);
                let ttl = self.config.believe_ttl(granted, asked);
                if current {
                    if let Some(r) = self.registrations.get_mut(&key) {
                        r.phase = Phase::Registered;
                        r.attempt = 0;
                    }
                    if self.config.refresh {
                        let after = self.config.refresh_after(ttl);
                        self.set_timer(server, namespace.clone(), after);
                    }
                } else if !kept {
                    self.unregister_orphan(server, namespace.clone());
                }
                let event =
                    ClientEvent::Registered { request: command, server, namespace, ttl, dialect };
                self.events.push_back(event);
                return;
            }
            Err(error) => error,
        };
        if !current {
            // Superseded or unregistered meanwhile.
            if !kept && error.may_have_applied() {
                self.unregister_orphan(server, namespace.clone());
            }
            if command.is_some() {
                let retry_in = kept.then_some(Duration::ZERO);
                let event = ClientEvent::RegisterFailed {
                    request: command,
                    server,
                    namespace,
                    error,
                    retry_in,
                };
                self.events.push_back(event);
            }
            return;
        }
        let flavour = self.config.record_flavour;
        match self.servers.entry(server).or_default().rejected(flavour, dialect, &error) {
            Verdict::StepDown { next } => {
                let event =
                    ClientEvent::FlavourRefused { server, dialect, error, next: Some(next) };
                self.events.push_back(event);
                self.send_register(id, command, server, namespace);
            }
            Verdict::Exhausted => {
                let event = ClientEvent::FlavourRefused {
                    server,
                    dialect,
                    error: error.clone(),
                    next: None,
                };
                self.events.push_back(event);
                self.give_up(command, server, namespace, error);
            }
            Verdict::Keep => self.retry_or_give_up(command, server, namespace, error),
        }
    }

    fn retry_or_give_up(
        &mut self,
        command: Option<RequestId>,
        server: PeerId,
        namespace: Namespace,
        error: RequestError,
    ) {
        let key = (server, namespace.clone());
        let attempt = self.registrations.get(&key).map_or(0, |r| r.attempt) + 1;
        if !error.is_transient() || attempt > self.config.max_retries {
            return self.give_up(command, server, namespace, error);
        }
        let delay = self.backoff(attempt);
        if let Some(r) = self.registrations.get_mut(&key) {
            r.attempt = attempt;
            r.phase = Phase::Backoff;
        }
        self.set_timer(server, namespace.clone(), delay);
        let retry_in = Some(delay);
        let event =
            ClientEvent::RegisterFailed { request: command, server, namespace, error, retry_in };
        self.events.push_back(event);
    }

    /// Stops keeping the registration alive after `error`.
    fn give_up(
        &mut self,
        command: Option<RequestId>,
        server: PeerId,
        namespace: Namespace,
        error: RequestError,
    ) {
        self.forget_registration(server, &namespace);
        let event = ClientEvent::RegisterFailed {
            request: command,
            server,
            namespace,
            error,
            retry_in: None,
        };
        self.events.push_back(event);
    }

    /// A REGISTER that may have reached the server after our UNREGISTER:
    /// unregister once more, in the background.
    fn unregister_orphan(&mut self, server: PeerId, namespace: Namespace) {
        let id = self.allocate_id();
        self.send_unregister(id, None, server, namespace);
    }

    /// `retry_base * 2^(attempt-1)`, capped at `retry_max`, less up to 25% jitter.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = self
            .config
            .retry_base
            .saturating_mul(1 << (attempt.max(1) - 1).min(20))
            .min(self.config.retry_max);
        let nanos = u64::try_from(base.as_nanos() / 4).unwrap_or(u64::MAX);
        base - Duration::from_nanos(self.rng.below_or_eq(nanos))
    }

    pub(super) fn on_unregister(
        &mut self,
        server: PeerId,
        command: Option<RequestId>,
        namespace: Namespace,
        delivered: bool,
    ) {
        if command.is_some() {
            let event =
                ClientEvent::Unregistered { request: command, server, namespace, delivered };
            self.events.push_back(event);
        }
    }
}
