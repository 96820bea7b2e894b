//! Every bound the server enforces, with its default and the reason for it.

use std::time::Duration;

use crate::rate::{RateLimit, RateLimitError};
use crate::record::{Flavour, Reader, RecordLimits};
use crate::server::Durability;

/// The server's limits. Each is enforced in O(1) and each violation is
/// answered with the spec's status and a `statusText` naming the limit.
///
/// | limit | default | why |
/// |---|---|---|
/// | [`max_namespace_len`](Self::max_namespace_len) | 255 bytes | the spec |
/// | [`min_ttl`](Self::min_ttl) | 120 s | py-libp2p's server (the seed demo's); the spec's 2 h would refuse its clients' short TTLs |
/// | [`max_ttl`](Self::max_ttl) | 72 h | the spec |
/// | [`default_ttl`](Self::default_ttl) | 2 h, within the range above | the spec and the demo |
/// | [`max_registrations_per_peer`](Self::max_registrations_per_peer) | 1000 | the spec |
/// | [`max_registrations_per_namespace`](Self::max_registrations_per_namespace) | 1000 | the demo |
/// | [`max_registrations`](Self::max_registrations) | 100 000 | bounds memory: about 70 MB with typical records, 450 MB if every record is as large as allowed |
/// | [`max_registrations_per_origin`](Self::max_registrations_per_origin) | a tenth of the total | peer ids are free, so one address with many identities cannot fill the registry |
/// | [`default_discover_limit`](Self::default_discover_limit) | 100 | py-libp2p |
/// | [`max_discover_limit`](Self::max_discover_limit) | 1000 | the spec; larger asks are clamped, not refused |
/// | [`max_request_frame`](Self::max_request_frame) | 8 KiB | a REGISTER is at most a record, a namespace and a few bytes |
/// | [`max_response_frame`](Self::max_response_frame) | 1 MiB | fits every peer's receive limit; a page stops early rather than exceed it |
/// | [`max_record_bytes`](Self::max_record_bytes) | 4 KiB | room for dozens of addresses; go caps addresses at 2 KiB |
/// | [`max_addresses`](Self::max_addresses) | 32 | more than any real host announces |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes in a namespace.
    pub max_namespace_len: usize,
    /// Shortest TTL accepted (whole seconds on the wire).
    pub min_ttl: Duration,
    /// Longest TTL accepted.
    pub max_ttl: Duration,
    /// TTL granted when a REGISTER asks for none (or 0); one outside
    /// `min_ttl..=max_ttl` is brought within it ([`Limits::default_ttl`]).
    pub default_ttl: Duration,
    /// Most live registrations one peer may hold (`E_NOT_AUTHORIZED` beyond).
    pub max_registrations_per_peer: usize,
    /// Most live registrations in one namespace (`E_UNAVAILABLE` beyond).
    pub max_registrations_per_namespace: usize,
    /// Most live registrations in all (`E_UNAVAILABLE` beyond).
    pub max_registrations: usize,
    /// Most live registrations from one [`Origin`](crate::Origin) (an IPv4
    /// address or an IPv6 /64), whatever the peer ids (`E_UNAVAILABLE`
    /// beyond); `None`, the default, for a tenth of
    /// [`max_registrations`](Self::max_registrations) ([`Limits::per_origin`]).
    /// Registrations whose origin the adapter did not give are not counted.
    pub max_registrations_per_origin: Option<usize>,
    /// Page size when a DISCOVER asks for none (or 0).
    pub default_discover_limit: u64,
    /// Largest page; larger asks are served this many.
    pub max_discover_limit: u64,
    /// Largest request body an adapter should read (give it to
    /// [`FrameDecoder::new`](crate::codec::FrameDecoder::new)).
    pub max_request_frame: usize,
    /// Largest response body the server writes; a DISCOVER page ends early
    /// (with a cookie to continue) rather than exceed it.
    pub max_response_frame: usize,
    /// Most bytes in `Register.signedPeerRecord`.
    pub max_record_bytes: usize,
    /// Most addresses in one record.
    pub max_addresses: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_namespace_len: crate::Namespace::MAX_LEN,
            min_ttl: Duration::from_secs(120),
            max_ttl: Duration::from_secs(72 * 60 * 60),
            default_ttl: Duration::from_secs(2 * 60 * 60),
            max_registrations_per_peer: 1000,
            max_registrations_per_namespace: 1000,
            max_registrations: 100_000,
            max_registrations_per_origin: None,
            default_discover_limit: 100,
            max_discover_limit: 1000,
            max_request_frame: 8 * 1024,
            max_response_frame: 1024 * 1024,
            max_record_bytes: 4 * 1024,
            max_addresses: 32,
        }
    }
}

/// Why a [`Limits`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `min_ttl <= max_ttl` does not hold, or `min_ttl` is 0.
    #[error("TTLs must satisfy 0 < min_ttl <= max_ttl")]
    TtlRange,
    /// A count or size limit is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// `default_discover_limit` exceeds `max_discover_limit`.
    #[error("default_discover_limit exceeds max_discover_limit")]
    DiscoverLimit,
    /// A largest REGISTER could not fit in `max_request_frame`, or a largest
    /// registration in `max_response_frame`.
    #[error("frame limits are too small for the record and namespace limits")]
    FrameTooSmall,
}

/// Room for the fields around a record and a namespace in a frame: tags,
/// lengths, type, status and TTL.
const FRAME_OVERHEAD: usize = 64;

/// Room for the tags, lengths and TTL around one registration in a
/// DISCOVER response.
pub(crate) const REGISTRATION_OVERHEAD: usize = 32;

impl Limits {
    /// Checks that the limits are consistent.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.min_ttl.is_zero() || self.min_ttl > self.max_ttl {
            return Err(LimitsError::TtlRange);
        }
        for (value, name) in [
            (self.max_namespace_len, "max_namespace_len"),
            (self.max_registrations_per_peer, "max_registrations_per_peer"),
            (self.max_registrations_per_namespace, "max_registrations_per_namespace"),
            (self.max_registrations, "max_registrations"),
            (self.per_origin(), "max_registrations_per_origin"),
            (self.max_record_bytes, "max_record_bytes"),
            (self.max_addresses, "max_addresses"),
        ] {
            if value == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        if self.default_discover_limit == 0 {
            return Err(LimitsError::Zero("default_discover_limit"));
        }
        if self.default_discover_limit > self.max_discover_limit {
            return Err(LimitsError::DiscoverLimit);
        }
        let largest = self.max_record_bytes + self.max_namespace_len;
        if largest + FRAME_OVERHEAD > self.max_request_frame
            || largest + REGISTRATION_OVERHEAD > self.response_budget()
        {
            return Err(LimitsError::FrameTooSmall);
        }
        Ok(())
    }

    /// The TTL a REGISTER that asks for none is granted:
    /// [`default_ttl`](Self::default_ttl) brought within
    /// `min_ttl..=max_ttl`, so that raising `min_ttl` alone keeps working.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl.clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }

    /// The quota per origin in force: as set, or a tenth of the total (at
    /// least 1).
    pub fn per_origin(&self) -> usize {
        self.max_registrations_per_origin.unwrap_or((self.max_registrations / 10).max(1))
    }

    /// Bytes a DISCOVER page may spend on registrations: the response frame
    /// less room for the cookie, status and framing. Validation guarantees
    /// that the largest registration fits, so a page is never empty while
    /// anything is left to serve.
    pub(crate) fn response_budget(&self) -> usize {
        let reserve = 8 + self.max_namespace_len + FRAME_OVERHEAD;
        self.max_response_frame.saturating_sub(reserve)
    }

    pub(crate) fn record_limits(&self) -> RecordLimits {
        RecordLimits { max_bytes: self.max_record_bytes, max_addresses: self.max_addresses }
    }
}

/// Everything a [`Server`](crate::Server) is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// The limits.
    pub limits: Limits,
    /// What a DISCOVER is answered with when the requester has neither
    /// registered on this connection nor been described by the adapter
    /// ([`Server::set_reader_dialect`](crate::Server::set_reader_dialect)).
    /// Default: rust-libp2p's signed flavour, the spec's dialect and the most
    /// common client.
    pub unknown_reader: Reader,
    /// Most peers whose reader dialect the server remembers; when full, the
    /// one used least recently is forgotten (and reads `unknown_reader`
    /// until the adapter or a REGISTER tells again). A peer is forgotten
    /// when its last connection closes
    /// ([`Server::handle_disconnected`](crate::Server::handle_disconnected)),
    /// so this only matters with more connected peers than this.
    /// Default: 65 536 (about 6 MiB).
    pub max_remembered_readers: usize,
    /// Most events queued for [`Server::poll_event`](crate::Server::poll_event);
    /// beyond it new events are counted in [`Stats::dropped_events`](crate::Stats)
    /// and dropped. The server raises it to at least
    /// [`Limits::max_registrations`] + 16, so that one call (a mass expiry)
    /// never drops: an adapter that drains after every call loses nothing.
    pub max_queued_events: usize,
    /// Where registrations live: in memory only (the default), or in a
    /// store whose commits the adapter reports; see [`Durability`].
    pub durability: Durability,
    /// Most writes (puts and deletes) waiting for the store; beyond it,
    /// REGISTERs are answered `E_UNAVAILABLE` at once instead of queueing
    /// behind a store that is slow or away (UNREGISTERs still queue: there
    /// is at most one waiting per registration held or pending, so they are
    /// bounded by the registry's limits). Defaults to 4096: with records of
    /// up to 4 KiB, 16 MiB at most.
    pub max_pending_writes: usize,
    /// Longest a DISCOVER waits for the writes its peer made before it (so
    /// that it sees them); then it is answered `E_UNAVAILABLE`. Defaults to
    /// 5 s: a store that takes longer is away, and the peer learns it.
    pub max_discover_wait: std::time::Duration,
    /// Longest a REGISTER waits, once a shared store
    /// ([`Durability::Shared`](crate::Durability::Shared)) has logged its
    /// put, for this point to read the put back from the log; then it is
    /// answered `E_UNAVAILABLE` ("it may still take effect: retry"). The
    /// put keeps its place: it takes effect if the log holds it, and an
    /// UNREGISTER read after it still removes it. Defaults to 1 s: a
    /// healthy follower reads an entry back within milliseconds, and one
    /// that is further behind has lost its store (a failover, or the store
    /// went away right after taking the put).
    pub max_log_wait: std::time::Duration,
    /// How long the first DISCOVER or subscription of a peer the adapter
    /// has not described waits for the adapter to learn what it reads: the
    /// server asks through [`Server::poll_reader_wanted`](crate::Server::poll_reader_wanted),
    /// once per peer, and holds that peer's DISCOVERs and subscriptions
    /// until the answer (or until this runs out, when they are served what
    /// its REGISTERs showed it reads, or as `unknown_reader`). A peer that
    /// only registers is never asked. Zero,
    /// the default, never asks or holds: for an adapter that cannot ask
    /// and learns each reader unasked (rust-libp2p's identify asks every
    /// peer as it connects). Must be below `max_discover_wait`.
    pub reader_wait: std::time::Duration,
    /// Most requests per second one peer may make, over all its
    /// connections; beyond it requests are answered `E_UNAVAILABLE`
    /// (UNREGISTERs are still applied). A REGISTER with a record not seen
    /// before costs a signature check, which this bounds per peer. `None`,
    /// the default, for no limit: one peer registering in thousands of
    /// namespaces at full speed is legitimate (gateways, load tools).
    pub rate_limit: Option<RateLimit>,
    /// The sequence number the first registration gets, less one, unless a
    /// store's [`load`](crate::Server::load) continues from its own. Adapters
    /// pass the wall-clock time in microseconds: cookies issued before a
    /// restart of a point without a store then still point before
    /// everything registered since, so their holders see the new registry
    /// rather than an error.
    pub initial_sequence: u64,
    /// Where a DISCOVER without a cookie starts. Defaults to
    /// [`DiscoverStart::Random`] with seed 0; adapters should pass a seed
    /// of their own, such as the clock, so that runs differ.
    pub discover_start: DiscoverStart,
    /// The bounds on subscriptions (see
    /// [`Server::handle_subscribe`](crate::Server::handle_subscribe)).
    pub subscriptions: crate::server::SubscriptionLimits,
}

/// Where a DISCOVER without a cookie starts its walk through a namespace (or
/// through all of them). Either way, following the cookies from that first
/// page serves every registration live when the walk began exactly once,
/// then only those registered after (see [`cookie`](crate::cookie)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoverStart {
    /// At a random position, drawn per DISCOVER from a generator seeded
    /// with `seed`, walking down to the oldest registration and then up
    /// from the start. Clients that ask for a few peers (a first page of 5
    /// to join a swarm) are then spread over the namespace rather than all
    /// handed its oldest registrations: no peer is everyone's first contact,
    /// and a squatter of the oldest places cannot reach every newcomer. The
    /// price: pages in a different order each time, and cookies that rely
    /// on positions being counted densely (see [`cookie`](crate::cookie)).
    Random {
        /// Seeds the generator; the same seed and requests give the same walks.
        seed: u64,
    },
    /// At the oldest registration, in registration order, as this server
    /// did before. For pages that are the same for every asker
    /// (reproducible tests and transcripts, the longest-lived peers first),
    /// and cookies that are plain positions only, whatever the gaps between
    /// positions (a registry shared with points that number them sparsely).
    Oldest,
}

impl Default for DiscoverStart {
    fn default() -> Self {
        DiscoverStart::Random { seed: 0 }
    }
}

/// Why a [`ServerConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The limits are inconsistent.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The rate limit is not a rate.
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    /// `max_pending_writes` is zero.
    #[error("max_pending_writes must be at least 1")]
    PendingWrites,
    /// `reader_wait` is not below `max_discover_wait`.
    #[error(
        "reader_wait must be below max_discover_wait, or the DISCOVERs it holds time out first"
    )]
    ReaderWait,
}

impl ServerConfig {
    /// Checks the limits and policies.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        if let Some(rate) = self.rate_limit {
            RateLimit::new(rate.rate(), rate.burst())?;
        }
        if self.max_pending_writes == 0 {
            return Err(ConfigError::PendingWrites);
        }
        if !self.reader_wait.is_zero() && self.reader_wait >= self.max_discover_wait {
            return Err(ConfigError::ReaderWait);
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            unknown_reader: Reader::Signed(Flavour::RustLibp2p),
            max_remembered_readers: 65_536,
            max_queued_events: 65_536,
            durability: Durability::Volatile,
            max_pending_writes: 4096,
            max_discover_wait: Duration::from_secs(5),
            max_log_wait: Duration::from_secs(1),
            reader_wait: Duration::ZERO,
            rate_limit: None,
            initial_sequence: 0,
            discover_start: DiscoverStart::default(),
            subscriptions: crate::server::SubscriptionLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_shortest_ttl_alone_brings_the_default_along() {
        let limits = Limits { min_ttl: Duration::from_secs(3 * 3600), ..Limits::default() };
        assert_eq!(limits.validate(), Ok(()));
        assert_eq!(limits.default_ttl(), Duration::from_secs(3 * 3600));
        let limits = Limits { max_ttl: Duration::from_secs(600), ..Limits::default() };
        assert_eq!(limits.default_ttl(), Duration::from_secs(600));
    }

    #[test]
    fn the_quota_per_origin_is_a_tenth_of_the_total_unless_set() {
        assert_eq!(Limits::default().per_origin(), 10_000);
        let limits = Limits { max_registrations: 50_000, ..Limits::default() };
        assert_eq!(limits.per_origin(), 5_000);
        let limits = Limits { max_registrations_per_origin: Some(7), ..limits };
        assert_eq!(limits.per_origin(), 7);
        let limits = Limits { max_registrations: 5, ..Limits::default() };
        assert_eq!(limits.per_origin(), 1);
    }

    #[test]
    fn the_defaults_are_consistent() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let limits = Limits { min_ttl: Duration::from_secs(300_000), ..Limits::default() };
        assert_eq!(limits.validate(), Err(LimitsError::TtlRange));
        let limits = Limits { max_request_frame: 100, ..Limits::default() };
        assert_eq!(limits.validate(), Err(LimitsError::FrameTooSmall));
        let limits = Limits { max_registrations: 0, ..Limits::default() };
        assert_eq!(limits.validate(), Err(LimitsError::Zero("max_registrations")));
    }
}
