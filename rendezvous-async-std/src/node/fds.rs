//! File descriptors: a point needs one per connection and per handshake.
//! At start it raises its soft limit to the hard limit and, if even that
//! cannot hold every connection its limits allow, lowers those limits, so
//! that accepting never fails for want of descriptors. It also reads how
//! many are open, for the metrics.

use tracing::{info, warn};

use crate::host::ConnectionLimits;

const LOG: &str = "rendezvous::server";

/// Descriptors kept for everything but connections: listeners, the store,
/// Redis, the metrics endpoint, logs, the executor's reactor.
pub(super) const RESERVED: u64 = 64;

/// Raises the soft limit on open files to the hard limit and logs both;
/// returns the soft limit now in force (`None` where there is none to read).
pub(super) fn raise() -> Option<u64> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) if raised > soft => {
            info!(target: LOG, "Open files: soft limit raised from {soft} to {raised} (hard limit {hard})");
            Some(raised)
        }
        Ok(_) => {
            info!(target: LOG, "Open files: limit {soft} (hard limit {hard})");
            Some(soft)
        }
        Err(e) => {
            warn!(target: LOG, "Open files: limit {soft} (hard limit {hard}); raising it failed: {e}");
            Some(soft)
        }
    }
}

/// Descriptors open now, and the soft limit (Linux's `/proc`; `None`
/// elsewhere).
pub(super) fn in_use() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    Some((open, soft))
}

/// `limits` lowered, if need be, so that every connection and handshake
/// they allow has a descriptor under `available` (raised first).
pub(super) fn fit(limits: ConnectionLimits) -> ConnectionLimits {
    match raise() {
        Some(available) => fit_within(limits, available),
        None => limits,
    }
}

fn fit_within(mut limits: ConnectionLimits, available: u64) -> ConnectionLimits {
    let budget = available.saturating_sub(RESERVED).max(2);
    let wanted = u64::from(limits.max_established) + limits.max_handshakes as u64;
    if wanted <= budget {
        return limits;
    }
    let handshakes = (limits.max_handshakes as u64).min(budget / 4).max(1);
    let established = u32::try_from(budget - handshakes).unwrap_or(u32::MAX).max(1);
    warn!(
        target: LOG,
        "Only {available} open files allowed: connections lowered from {} to {established} and handshakes from {} to {handshakes} (raise the limit with ulimit -n)",
        limits.max_established,
        limits.max_handshakes
    );
    limits.max_established = established.min(limits.max_established);
    limits.max_handshakes = handshakes as usize;
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_fit_are_kept_and_others_shrink_to_the_descriptors() {
        let limits = ConnectionLimits::default();
        assert_eq!(fit_within(limits, 1 << 20), limits);
        let fitted = fit_within(limits, 1024);
        let used = u64::from(fitted.max_established) + fitted.max_handshakes as u64;
        assert_eq!(used, 1024 - RESERVED);
        assert_eq!(fitted.max_handshakes, 240);
        assert!(fitted.handshakes().max_per_ip <= fitted.max_handshakes);
    }
}
