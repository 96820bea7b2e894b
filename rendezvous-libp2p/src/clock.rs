//! The adapters' clock and timer: the only place in this crate that reads
//! the time (a lint bans clock reads elsewhere).
//!
//! The core's [`Timestamp`]s here are time since the Unix epoch, read once
//! from the system clock at start and carried forward by the monotonic
//! clock: they never run backwards within a process, and an expiry stored
//! as a `Timestamp` still means the same wall-clock moment after a restart.
//! A shared registry has a clock of its own (Redis's `TIME`); a point that
//! shares one follows it ([`Clock::follow`]), so that every point decides
//! expiry by the same time whatever its own wall clock says.
//!
//! A [`ManualClock`] stands still until told to move, for tests that drive
//! a behaviour through simulated hours without waiting.

#![allow(clippy::disallowed_methods)] // this module is where time is read

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures_timer::Delay;
use rendezvous_core::Timestamp;

/// The monotonic time now, for I/O timeouts and durations (not for the
/// core's decisions, which take a [`Timestamp`]).
pub(crate) fn monotonic() -> Instant {
    Instant::now()
}

/// A seed that differs from run to run and between processes started
/// together: the wall clock, the monotonic clock and the process id mixed.
pub(crate) fn seed() -> u64 {
    let wall = u64::try_from(system_unix_time().as_nanos()).unwrap_or(u64::MAX);
    let nanos = Instant::now().elapsed().as_nanos() as u64;
    wall ^ nanos.rotate_left(32) ^ u64::from(std::process::id()).rotate_left(17)
}

/// This machine's wall clock, as Unix time.
pub fn system_unix_time() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Converts between [`Instant`]s and the core's [`Timestamp`]s.
#[derive(Clone, Debug)]
pub struct Clock {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    System {
        origin: Instant,
        /// The Unix time at `origin`, in nanoseconds; moved by
        /// [`Clock::follow`].
        unix_at_origin: Arc<AtomicU64>,
    },
    Manual(ManualClock),
}

impl Clock {
    /// A clock reading the system's time now.
    pub fn new() -> Self {
        let nanos = u64::try_from(system_unix_time().as_nanos()).unwrap_or(u64::MAX);
        Clock {
            source: Source::System {
                origin: Instant::now(),
                unix_at_origin: Arc::new(AtomicU64::new(nanos)),
            },
        }
    }

    /// A clock that reads `manual`'s time.
    pub fn manual(manual: &ManualClock) -> Self {
        Clock { source: Source::Manual(manual.clone()) }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match &self.source {
            Source::System { origin, unix_at_origin } => {
                let base = Duration::from_nanos(unix_at_origin.load(Ordering::Relaxed));
                Timestamp::from_duration(base + origin.elapsed())
            }
            Source::Manual(manual) => manual.now(),
        }
    }

    /// Sets this clock (and every clone of it) so that it reads `reference`
    /// at `at`: from now on it tells the time of that reference, carried by
    /// the monotonic clock. Returns by how much it moved (positive:
    /// forward). A manual clock does not move.
    pub fn follow(&self, reference: Duration, at: Instant) -> i128 {
        let Source::System { origin, unix_at_origin } = &self.source else { return 0 };
        let elapsed = at.saturating_duration_since(*origin);
        let base = reference.saturating_sub(elapsed);
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let before = unix_at_origin.swap(nanos, Ordering::Relaxed);
        i128::from(nanos) - i128::from(before)
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

/// Time that moves only when told, shared by every clone; timers armed on
/// it fire when it passes their deadline.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<ManualState>);

#[derive(Debug, Default)]
struct ManualState {
    nanos: AtomicI64,
    wakers: Mutex<Vec<Waker>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn at(start: Timestamp) -> Self {
        let clock = ManualClock::default();
        let nanos = i64::try_from(start.as_duration().as_nanos()).unwrap_or(i64::MAX);
        clock.0.nanos.store(nanos, Ordering::Relaxed);
        clock
    }

    /// Its time.
    pub fn now(&self) -> Timestamp {
        let nanos = self.0.nanos.load(Ordering::Relaxed).max(0);
        Timestamp::from_duration(Duration::from_nanos(nanos.unsigned_abs()))
    }

    /// Moves it forward by `by`, and wakes every timer waiting on it.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.0.nanos.fetch_add(by, Ordering::Relaxed);
        let wakers = std::mem::take(&mut *self.0.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }

    fn wake_at_next_move(&self, waker: &Waker) {
        let mut wakers = self.0.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

/// One timer, kept armed at or before the earliest deadline it was given.
pub(crate) struct Timer {
    clock: Clock,
    armed: Option<(Timestamp, Option<Delay>)>,
}

impl Timer {
    pub(crate) fn new(clock: Clock) -> Self {
        Timer { clock, armed: None }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Arms the timer for `deadline`. A timer armed for an earlier time
    /// stays as it is: firing early costs a look at what is due, while
    /// re-arming on every later deadline would cost a timer each time.
    pub(crate) fn set(&mut self, deadline: Option<Timestamp>) {
        let Some(at) = deadline else { return };
        if self.armed.as_ref().is_some_and(|(armed, _)| *armed <= at) {
            return;
        }
        let delay = match &self.clock.source {
            Source::System { .. } => Some(Delay::new(at.saturating_duration_since(self.now()))),
            Source::Manual(_) => None,
        };
        self.armed = Some((at, delay));
    }

    /// Ready with the current time once the armed deadline has passed.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Timestamp> {
        let Some((at, delay)) = &mut self.armed else {
            return Poll::Pending;
        };
        let due = match (delay, &self.clock.source) {
            (Some(delay), _) => delay.poll_unpin(cx).is_ready(),
            (None, Source::Manual(manual)) => {
                let due = manual.now() >= *at;
                if !due {
                    manual.wake_at_next_move(cx.waker());
                }
                due
            }
            (None, Source::System { .. }) => true,
        };
        if !due {
            return Poll::Pending;
        }
        self.armed = None;
        Poll::Ready(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_unix_time() {
        let clock = Clock::new();
        let unix = system_unix_time();
        let now = clock.now().as_duration();
        assert!(now.abs_diff(unix) < Duration::from_secs(5), "{now:?} vs {unix:?}");
    }

    #[test]
    fn a_followed_clock_tells_its_references_time_in_every_clone() {
        let clock = Clock::new();
        let copy = clock.clone();
        let ahead = system_unix_time() + Duration::from_secs(3 * 3600);
        let moved = clock.follow(ahead, Instant::now());
        assert!((moved - 3 * 3600 * 1_000_000_000).abs() < 1_000_000_000, "{moved}");
        let diff = copy.now().as_duration().abs_diff(ahead);
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }

    #[test]
    fn a_manual_timer_fires_when_its_clock_passes_the_deadline() {
        let manual = ManualClock::at(Timestamp::from_secs(100));
        let mut timer = Timer::new(Clock::manual(&manual));
        let cx = &mut Context::from_waker(futures::task::noop_waker_ref());
        timer.set(Some(Timestamp::from_secs(160)));
        timer.set(Some(Timestamp::from_secs(200))); // later: the earlier one stays
        assert!(timer.poll(cx).is_pending());
        manual.advance(Duration::from_secs(59));
        assert!(timer.poll(cx).is_pending());
        manual.advance(Duration::from_secs(1));
        assert_eq!(timer.poll(cx), Poll::Ready(Timestamp::from_secs(160)));
        assert!(timer.poll(cx).is_pending(), "disarmed once fired");
    }
}
