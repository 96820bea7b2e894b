//! A bounded set of futures that each must finish within the same timeout,
//! watched by one timer for the whole set.
//!
//! futures-bounded gives every future its own `futures_timer::Delay`, and
//! each `Delay` wakes futures-timer's thread when it is created and again
//! when it is dropped: on a server answering thousands of requests a second
//! that was two cross-thread wakeups per substream phase, several per
//! request. Here, since every future of a set gets the same timeout, the
//! oldest deadline comes first: one timer is armed for it, and when it fires
//! the set expires what is due and re-arms for the oldest deadline left, so
//! under steady traffic the timer is re-armed about once per timeout rather
//! than once per future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures_timer::Delay;

/// A future of the set did not finish within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut;

struct Entry<O, D> {
    deadline: Instant,
    future: BoxFuture<'static, O>,
    data: Option<D>,
    expired: bool,
    /// Where to wake this entry (its slot in the set) when it expires.
    waker: Option<Waker>,
}

impl<O, D: Unpin> Future for Entry<O, D> {
    type Output = (Result<O, TimedOut>, D);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = if this.expired {
            Err(TimedOut)
        } else {
            match this.future.poll_unpin(cx) {
                Poll::Ready(output) => Ok(output),
                Poll::Pending => {
                    if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        this.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        };
        let data = this.data.take().expect("an entry is not polled after it finished");
        Poll::Ready((result, data))
    }
}

/// Futures, each tagged with `D`, each bounded by the same timeout.
pub(crate) struct TimedSet<O, D> {
    timeout: Duration,
    capacity: usize,
    futures: FuturesUnordered<Entry<O, D>>,
    /// Armed at or before the oldest deadline of the futures in the set
    /// (or left armed after they all finished).
    timer: Option<Delay>,
}

impl<O: 'static, D: Unpin> TimedSet<O, D> {
    /// An empty set for at most `capacity` futures of `timeout` each.
    pub(crate) fn new(timeout: Duration, capacity: usize) -> Self {
        TimedSet { timeout, capacity, futures: FuturesUnordered::new(), timer: None }
    }

    /// Adds `future`, due within the timeout from now; gives it back when
    /// the set is full. The future is first polled by the next
    /// [`poll_unpin`](Self::poll_unpin): call it after pushing.
    pub(crate) fn try_push<F>(&mut self, future: F, data: D) -> Result<(), (F, D)>
    where
        F: Future<Output = O> + Send + 'static,
    {
        if self.futures.len() >= self.capacity {
            return Err((future, data));
        }
        let deadline = crate::clock::monotonic() + self.timeout;
        // Deadlines only grow: a timer already armed fires no later than
        // this one is due.
        if self.timer.is_none() {
            self.timer = Some(Delay::new(self.timeout));
        }
        self.futures.push(Entry {
            deadline,
            future: future.boxed(),
            data: Some(data),
            expired: false,
            waker: None,
        });
        Ok(())
    }

    /// How many futures the set holds.
    pub(crate) fn len(&self) -> usize {
        self.futures.len()
    }

    /// The next future to finish or time out, with its tag.
    pub(crate) fn poll_unpin(&mut self, cx: &mut Context<'_>) -> Poll<(Result<O, TimedOut>, D)> {
        if let Some(timer) = &mut self.timer
            && timer.poll_unpin(cx).is_ready()
        {
            self.expire(crate::clock::monotonic());
            if let Some(timer) = &mut self.timer {
                let _ = timer.poll_unpin(cx); // registers for the next deadline
            }
        }
        match self.futures.poll_next_unpin(cx) {
            Poll::Ready(Some(done)) => Poll::Ready(done),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// Marks every future due by `now` as timed out, and re-arms the timer
    /// for the oldest deadline left (or disarms it).
    fn expire(&mut self, now: Instant) {
        let mut oldest: Option<Instant> = None;
        for entry in self.futures.iter_mut() {
            if entry.expired {
                continue;
            }
            if entry.deadline <= now {
                entry.expired = true;
                if let Some(waker) = entry.waker.take() {
                    waker.wake();
                }
            } else {
                oldest = Some(oldest.map_or(entry.deadline, |o| o.min(entry.deadline)));
            }
        }
        self.timer = oldest.map(|at| Delay::new(at.saturating_duration_since(now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;

    fn poll<O: 'static, D: Unpin>(set: &mut TimedSet<O, D>) -> Poll<(Result<O, TimedOut>, D)> {
        set.poll_unpin(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[test]
    fn futures_finish_with_their_tags() {
        let mut set = TimedSet::new(Duration::from_secs(60), 4);
        let (tx, rx) = oneshot::channel::<u32>();
        assert!(set.try_push(async move { rx.await.unwrap() }.boxed(), "a").is_ok());
        assert!(set.try_push(async { 2 }.boxed(), "b").is_ok());
        assert_eq!(poll(&mut set), Poll::Ready((Ok(2), "b")));
        assert!(poll(&mut set).is_pending());
        tx.send(1).unwrap();
        assert_eq!(poll(&mut set), Poll::Ready((Ok(1), "a")));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_full_set_gives_the_future_back() {
        let mut set = TimedSet::new(Duration::from_secs(60), 1);
        assert!(set.try_push(futures::future::pending::<()>().boxed(), 1).is_ok());
        let refused = set.try_push(futures::future::pending::<()>().boxed(), 2);
        assert_eq!(refused.err().map(|(_, tag)| tag), Some(2));
    }

    #[test]
    fn only_what_is_due_times_out_and_the_rest_still_finishes() {
        let mut set = TimedSet::new(Duration::from_secs(10), 8);
        let (tx, rx) = oneshot::channel::<u32>();
        assert!(set.try_push(futures::future::pending::<u32>().boxed(), "stalled").is_ok());
        assert!(set.try_push(async move { rx.await.unwrap() }.boxed(), "late").is_ok());
        assert!(poll(&mut set).is_pending());
        // Both were pushed within the same instant or so; move the second
        // one's deadline past the expiry to stand for a later push.
        let pushed = crate::clock::monotonic();
        for entry in set.futures.iter_mut() {
            entry.deadline = if entry.data == Some("stalled") {
                pushed
            } else {
                pushed + Duration::from_secs(5)
            };
        }
        set.expire(pushed + Duration::from_secs(1));
        assert_eq!(poll(&mut set), Poll::Ready((Err(TimedOut), "stalled")));
        assert!(poll(&mut set).is_pending());
        assert!(set.timer.is_some(), "re-armed for the one left");
        tx.send(7).unwrap();
        assert_eq!(poll(&mut set), Poll::Ready((Ok(7), "late")));
        set.expire(pushed + Duration::from_secs(6));
        assert!(set.timer.is_none(), "nothing left to watch");
    }

    #[test]
    fn the_timer_fires_for_real() {
        let mut set = TimedSet::new(Duration::from_millis(1), 1);
        assert!(set.try_push(futures::future::pending::<()>().boxed(), ()).is_ok());
        let result = futures::executor::block_on(futures::future::poll_fn(|cx| set.poll_unpin(cx)));
        assert_eq!(result, (Err(TimedOut), ()));
    }
}
