//! The adapters' clock and timer: the only place time is read.
//!
//! The core's [`Timestamp`]s here are time since the Unix epoch, read once
//! from the system clock at start and carried forward by the monotonic
//! clock: they never run backwards within a process, and an expiry stored
//! as a `Timestamp` still means the same wall-clock moment after a restart.

use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures_timer::Delay;
use rendezvous_core::Timestamp;

/// Converts between [`Instant`]s and the core's [`Timestamp`]s.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    /// The Unix time at `origin`.
    unix_at_origin: Duration,
}

impl Clock {
    /// A clock reading the system's time now.
    pub fn new() -> Self {
        let unix_at_origin = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { origin: Instant::now(), unix_at_origin }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }

    /// `instant` as a timestamp (the origin, for instants before it).
    pub fn at(&self, instant: Instant) -> Timestamp {
        Timestamp::from_duration(
            self.unix_at_origin + instant.saturating_duration_since(self.origin),
        )
    }

    /// `timestamp` as an instant: when a deadline is due on this machine.
    pub fn instant(&self, timestamp: Timestamp) -> Instant {
        let since_origin = timestamp.saturating_duration_since(self.at(self.origin));
        self.origin + since_origin
    }

    /// The Unix time in microseconds now: a sequence start that a restarted
    /// process, reading a later time, can only go past.
    pub fn unix_micros(&self) -> u64 {
        u64::try_from(self.now().as_duration().as_micros()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// One timer, kept armed at the core's next deadline.
pub(crate) struct Timer {
    clock: Clock,
    armed: Option<(Timestamp, Delay)>,
}

impl Timer {
    pub(crate) fn new(clock: Clock) -> Self {
        Timer { clock, armed: None }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Arms the timer for `deadline` (or disarms it).
    pub(crate) fn set(&mut self, deadline: Option<Timestamp>) {
        match (deadline, &self.armed) {
            (Some(at), Some((armed, _))) if *armed == at => {}
            (Some(at), _) => {
                let wait = at.saturating_duration_since(self.now());
                self.armed = Some((at, Delay::new(wait)));
            }
            (None, _) => self.armed = None,
        }
    }

    /// Ready with the current time once the armed deadline has passed.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Timestamp> {
        let Some((_, delay)) = &mut self.armed else {
            return Poll::Pending;
        };
        match delay.poll_unpin(cx) {
            Poll::Ready(()) => {
                self.armed = None;
                Poll::Ready(self.now())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_unix_time_and_convert_back_to_instants() {
        let clock = Clock::new();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let now = clock.now().as_duration();
        assert!(now.abs_diff(unix) < Duration::from_secs(5), "{now:?} vs {unix:?}");
        let later = Instant::now() + Duration::from_secs(90);
        let back = clock.instant(clock.at(later));
        assert!(back.max(later) - back.min(later) < Duration::from_micros(1));
    }
}
