//! The per-peer request rate limit: a token bucket per peer, on the
//! caller's clock.

use std::collections::HashMap;

use libp2p_identity::PeerId;

use crate::time::Timestamp;

/// A token bucket per peer: [`per_second`](Self::per_second) tokens added
/// each second, up to [`burst`](Self::burst); each request takes one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
}

/// Why a [`RateLimit`] cannot work.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The rate is not a positive, finite number.
    #[error("a rate limit of {0} requests/s is not a positive number")]
    Rate(f64),
    /// The burst is below one request, or not finite.
    #[error("a burst of {0} requests is below one")]
    Burst(f64),
}

impl RateLimit {
    /// `per_second` sustained, with bursts of `burst`.
    pub fn new(per_second: f64, burst: f64) -> Result<RateLimit, RateLimitError> {
        if !(per_second > 0.0 && per_second.is_finite()) {
            return Err(RateLimitError::Rate(per_second));
        }
        if !(burst >= 1.0 && burst.is_finite()) {
            return Err(RateLimitError::Burst(burst));
        }
        Ok(RateLimit { per_second, burst })
    }

    /// `per_second` sustained, with bursts of twice that (at least one).
    pub fn per_second(per_second: f64) -> Result<RateLimit, RateLimitError> {
        RateLimit::new(per_second, (2.0 * per_second).max(1.0))
    }

    /// Requests per second sustained.
    pub fn rate(&self) -> f64 {
        self.per_second
    }

    /// Requests allowed at once after a quiet spell.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

/// Each connected peer's bucket. A peer's bucket is forgotten when its last
/// connection closes, so there is one per connected peer at most.
#[derive(Debug)]
pub(crate) struct Buckets {
    limit: RateLimit,
    buckets: HashMap<PeerId, Bucket>,
}

impl Buckets {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Buckets { limit, buckets: HashMap::new() }
    }

    /// Whether `peer` may make a request at `now`; takes a token if so.
    pub(crate) fn take(&mut self, now: Timestamp, peer: PeerId) -> bool {
        let limit = self.limit;
        let bucket = self.buckets.entry(peer).or_insert(Bucket { tokens: limit.burst, at: now });
        let refill = (now - bucket.at).as_secs_f64() * limit.per_second;
        bucket.tokens = (bucket.tokens + refill).min(limit.burst);
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate() {
        let mut buckets = Buckets::new(RateLimit::new(10.0, 5.0).unwrap());
        let (peer, start) = (PeerId::random(), Timestamp::from_secs(100));
        assert_eq!((0..8).filter(|_| buckets.take(start, peer)).count(), 5);
        // A simulated hour at 20 requests a second: half are allowed.
        let mut allowed = 0;
        for i in 1..=72_000u64 {
            let now = start + Duration::from_millis(50 * i);
            allowed += usize::from(buckets.take(now, peer));
        }
        assert_eq!(allowed, 36_000);
        // Another peer has a bucket of its own.
        assert!(buckets.take(start, PeerId::random()));
    }

    #[test]
    fn time_running_backwards_adds_no_tokens() {
        let mut buckets = Buckets::new(RateLimit::new(1.0, 1.0).unwrap());
        let peer = PeerId::random();
        assert!(buckets.take(Timestamp::from_secs(10), peer));
        assert!(!buckets.take(Timestamp::from_secs(5), peer));
        assert!(!buckets.take(Timestamp::from_secs(10), peer));
        assert!(buckets.take(Timestamp::from_secs(11), peer));
    }

    #[test]
    fn rates_that_are_not_numbers_are_refused() {
        assert!(RateLimit::per_second(f64::NAN).unwrap_err().to_string().contains("NaN"));
        assert!(RateLimit::per_second(0.0).is_err());
        assert!(RateLimit::per_second(-3.0).is_err());
        assert!(RateLimit::per_second(f64::INFINITY).is_err());
        assert!(RateLimit::new(5.0, 0.5).is_err());
        assert_eq!(RateLimit::per_second(0.2).unwrap().burst(), 1.0);
    }
}
