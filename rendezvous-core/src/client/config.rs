//! How the client behaves, and the bounds on everything it keeps.

use std::time::Duration;

use crate::record::{Dialect, Flavour, RecordLimits};

/// A registration is renewed when this share of its granted TTL has passed.
pub const REFRESH_PERCENT: u32 = 80;

/// Which record the client sends a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordFlavour {
    /// Find out per server, stepping down only on evidence of rejection:
    /// rust-libp2p's envelope, then the standard (RFC 0003) one, then the
    /// legacy `PeerInfo`. Every signed REGISTER also carries the other
    /// envelope flavour in this project's extension field, so one
    /// registration at a server of ours reaches readers of every stack.
    #[default]
    Auto,
    /// Always rust-libp2p's envelope.
    Rust,
    /// Always the standard envelope.
    Standard,
    /// Always the legacy `PeerInfo`.
    Legacy,
}

impl RecordFlavour {
    /// The dialects to try, in order.
    pub(crate) fn ladder(self) -> &'static [Dialect] {
        const RUST: Dialect = Dialect::Signed(Flavour::RustLibp2p);
        const STANDARD: Dialect = Dialect::Signed(Flavour::Standard);
        match self {
            RecordFlavour::Auto => &[RUST, STANDARD, Dialect::Legacy],
            RecordFlavour::Rust => &[RUST],
            RecordFlavour::Standard => &[STANDARD],
            RecordFlavour::Legacy => &[Dialect::Legacy],
        }
    }
}

impl std::str::FromStr for RecordFlavour {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(RecordFlavour::Auto),
            "rust" => Ok(RecordFlavour::Rust),
            "standard" => Ok(RecordFlavour::Standard),
            "legacy" => Ok(RecordFlavour::Legacy),
            _ => Err(format!("'{s}' is not a record flavour (auto, rust, standard or legacy)")),
        }
    }
}

/// How the client behaves; every queue and cache it keeps is bounded here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Re-register at [`REFRESH_PERCENT`] of the granted TTL (the demo's
    /// `--refresh`). Defaults to true.
    pub refresh: bool,
    /// Watch through a subscription where the server offers one (see
    /// [`Client::set_server_subscribes`](crate::Client::set_server_subscribes)),
    /// rather than poll. Defaults to true.
    pub subscribe: bool,
    /// The record sent to servers. Defaults to [`RecordFlavour::Auto`].
    pub record_flavour: RecordFlavour,
    /// A request with no answer after this long fails with
    /// [`RequestError::Timeout`](crate::RequestError::Timeout). Defaults to 20 s.
    pub request_timeout: Duration,
    /// First retry delay after a transient failure; doubles per attempt.
    /// Defaults to 1 s.
    pub retry_base: Duration,
    /// Longest retry delay. Defaults to 5 min.
    pub retry_max: Duration,
    /// Transient failures in a row before a registration is given up.
    /// Defaults to 10.
    pub max_retries: u32,
    /// Longest TTL believed: a server's larger grant (or a discovered
    /// registration's larger TTL) is taken as this. Defaults to 72 h, the
    /// spec's maximum.
    pub max_ttl: Duration,
    /// Shortest time between two refreshes of one registration, whatever
    /// the server granted. Defaults to 5 s.
    pub min_refresh_interval: Duration,
    /// Time between two rediscoveries of a watched namespace
    /// ([`Client::watch`](crate::Client::watch)). Defaults to 60 s.
    pub discover_interval: Duration,
    /// Every this many rediscoveries, one walks the whole namespace instead
    /// of only what is new since the last cookie, to learn who left. A
    /// namespace whose last whole walk fitted in one page is walked whole
    /// every time, and so is the first round. Defaults to 10.
    pub full_discover_every: u32,
    /// Most requests in flight; commands beyond it are refused. Defaults to 1024.
    pub max_pending: usize,
    /// Most registrations kept alive at once. Defaults to 1024.
    pub max_registrations: usize,
    /// Most namespaces watched at once. Defaults to 64.
    pub max_watches: usize,
    /// Most discovered peers cached. Defaults to 100 000.
    pub cache_capacity: usize,
    /// Most discovery cookies remembered (one per server and namespace); the
    /// one used least recently is forgotten first. Defaults to 4096.
    pub max_cookies: usize,
    /// Most pages one walk fetches. Defaults to 1000.
    pub max_discover_pages: usize,
    /// Largest response body accepted. Defaults to 4 MiB, py-libp2p's.
    pub max_response_frame: usize,
    /// Longest namespace a command accepts. Defaults to 255 bytes, the
    /// spec's, which every server accepts.
    pub max_namespace_len: usize,
    /// Bounds on records found in DISCOVER responses. Defaults to 4 KiB and
    /// 64 addresses.
    pub record_limits: RecordLimits,
    /// Sequence number of the first signed record; later ones count up.
    /// Adapters pass the wall-clock time (e.g. Unix milliseconds) so that a
    /// restarted client's records supersede its earlier ones. Defaults to 0.
    pub record_seq: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            refresh: true,
            subscribe: true,
            record_flavour: RecordFlavour::Auto,
            request_timeout: Duration::from_secs(20),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_retries: 10,
            max_ttl: Duration::from_secs(72 * 3600),
            min_refresh_interval: Duration::from_secs(5),
            discover_interval: Duration::from_secs(60),
            full_discover_every: 10,
            max_pending: 1024,
            max_registrations: 1024,
            max_watches: 64,
            cache_capacity: 100_000,
            max_cookies: 4096,
            max_discover_pages: 1000,
            max_response_frame: 4 * 1024 * 1024,
            max_namespace_len: 255,
            record_limits: RecordLimits { max_bytes: 4096, max_addresses: 64 },
            record_seq: 0,
        }
    }
}

/// Why a [`ClientConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// A duration that must be positive is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// A count or size that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// `retry_base` is longer than `retry_max`.
    #[error("retry_base must not exceed retry_max")]
    RetryRange,
}

impl ClientConfig {
    /// Checks that the settings are consistent.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        for (value, name) in [
            (self.request_timeout, "request_timeout"),
            (self.retry_base, "retry_base"),
            (self.max_ttl, "max_ttl"),
            (self.min_refresh_interval, "min_refresh_interval"),
            (self.discover_interval, "discover_interval"),
        ] {
            if value.is_zero() {
                return Err(ClientConfigError::ZeroDuration(name));
            }
        }
        for (value, name) in [
            (self.max_pending, "max_pending"),
            (self.max_registrations, "max_registrations"),
            (self.max_watches, "max_watches"),
            (self.cache_capacity, "cache_capacity"),
            (self.max_cookies, "max_cookies"),
            (self.max_discover_pages, "max_discover_pages"),
            (self.max_response_frame, "max_response_frame"),
            (self.max_namespace_len, "max_namespace_len"),
            (self.full_discover_every as usize, "full_discover_every"),
        ] {
            if value == 0 {
                return Err(ClientConfigError::Zero(name));
            }
        }
        if self.retry_base > self.retry_max {
            return Err(ClientConfigError::RetryRange);
        }
        Ok(())
    }

    /// When a registration granted `ttl` is renewed, counted from its grant.
    pub(crate) fn refresh_after(&self, ttl: Duration) -> Duration {
        let millis = ttl.as_millis().min(u128::from(u64::MAX));
        let after = Duration::from_millis((millis * u128::from(REFRESH_PERCENT) / 100) as u64);
        after.max(self.min_refresh_interval)
    }

    /// `granted` as believed: at most what was asked and `max_ttl`; a server
    /// that leaves it out granted what was asked.
    pub(crate) fn believe_ttl(&self, granted: u64, asked: Option<Duration>) -> Duration {
        let asked = asked.unwrap_or(DEFAULT_TTL).min(self.max_ttl);
        match granted {
            0 => asked,
            secs => Duration::from_secs(secs).min(asked),
        }
    }
}

/// The TTL the spec says a server grants when none is asked.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(2 * 60 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_consistent_and_bad_settings_are_named() {
        assert_eq!(ClientConfig::default().validate(), Ok(()));
        let bad = ClientConfig { max_pending: 0, ..ClientConfig::default() };
        assert_eq!(bad.validate(), Err(ClientConfigError::Zero("max_pending")));
        let bad = ClientConfig { retry_max: Duration::from_millis(1), ..ClientConfig::default() };
        assert_eq!(bad.validate(), Err(ClientConfigError::RetryRange));
    }

    #[test]
    fn absurd_grants_are_clamped_and_cannot_overflow() {
        let config = ClientConfig::default();
        let asked = Some(Duration::from_secs(3600));
        assert_eq!(config.believe_ttl(u64::MAX, asked), Duration::from_secs(3600));
        assert_eq!(config.believe_ttl(u64::MAX, None), DEFAULT_TTL);
        assert_eq!(config.believe_ttl(0, asked), Duration::from_secs(3600));
        assert_eq!(config.believe_ttl(600, asked), Duration::from_secs(600));
        let long = Some(Duration::from_secs(u64::MAX));
        assert_eq!(config.believe_ttl(u64::MAX, long), config.max_ttl);
        assert_eq!(config.refresh_after(Duration::from_secs(100)), Duration::from_secs(80));
        assert_eq!(config.refresh_after(Duration::from_secs(1)), config.min_refresh_interval);
        assert!(config.refresh_after(Duration::MAX) > config.max_ttl, "saturates, no panic");
    }
}
