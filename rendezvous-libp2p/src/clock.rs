//! The adapters' clock and timer: the only place time is read.

use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use futures_timer::Delay;
use rendezvous_core::Timestamp;

/// Maps `Instant`s to the core's [`Timestamp`]s and keeps one timer armed
/// at the core's next deadline.
pub(crate) struct Clock {
    origin: Instant,
    armed: Option<(Timestamp, Delay)>,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock { origin: Instant::now(), armed: None }
    }

    pub(crate) fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.origin.elapsed())
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
