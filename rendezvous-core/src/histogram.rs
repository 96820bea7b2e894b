//! A latency histogram that any thread can add to without a lock: fixed
//! buckets from 100 µs to 10 s, counted with relaxed atomics. Connection
//! handlers record request durations into one; the server core records
//! commit durations; a metrics exporter reads a [`Snapshot`] whenever it is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds; a last bucket takes the rest.
pub const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The same bounds in nanoseconds, for the comparison on the hot path.
const BOUNDS_NANOS: [u64; 16] = {
    let mut nanos = [0; 16];
    let mut i = 0;
    while i < BOUNDS.len() {
        nanos[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// See the module docs.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, then one for everything above the last.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// What a [`Histogram`] held when read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Observations per bucket (not cumulative), one per [`BOUNDS`] entry
    /// and a last one for everything above.
    pub buckets: [u64; BOUNDS.len() + 1],
    /// Sum of every observation, in seconds.
    pub sum: f64,
}

impl Snapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one observation.
    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now. Observations that race with the read may be in the
    /// sum and not yet in a bucket, or the other way round.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_observation_lands_in_the_first_bucket_whose_bound_holds_it() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100)); // on the first bound: in it
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(&s.buckets[..6], &[1, 1, 0, 0, 0, 1]);
        assert_eq!(s.buckets[16], 1);
        assert_eq!(s.count(), 4);
        assert!((s.sum - 60.003201).abs() < 1e-9, "{}", s.sum);
    }
}
