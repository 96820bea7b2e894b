//! `futures_timer::Delay` on one shared heap: no thread wakeup per timer.
//!
//! The workspace builds this crate in place of futures-timer 3 (`[patch.crates-io]`
//! in the root `Cargo.toml`); it has the same name, version and API: `Delay::new`,
//! `Delay::reset` and `Future for Delay`.
//!
//! Why: futures-timer hands each delay to its helper thread when the delay is made
//! and again when it is dropped, and wakes that thread both times (a futex call, a
//! context switch, the thread's own work). libp2p-swarm makes one delay per inbound
//! substream, to bound its negotiation, and drops it a fraction of a millisecond
//! later; under load that was about a sixth of the rendezvous point's CPU
//! (BENCHMARKS.md, "Where a request's cost goes").
//!
//! Here a delay is only a deadline until it is polled before it is due. Then it
//! enters one shared heap, and the timer thread is woken only if it became the
//! earliest deadline, which a timeout of the same length as those before it never
//! does. Dropping a delay takes no lock and wakes nothing: its entry is found dead
//! when it comes due, or earlier when dead entries outnumber the live ones and the
//! heap is compacted, so the heap holds at most about twice the live delays (or
//! 1,024 entries, below which it is not compacted).
//!
//! Like futures-timer's, a delay fires some time after its deadline, when the
//! timer thread gets to it, and wakes the task that polled it last.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{self, AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

/// Heap size below which dead entries are left to come due rather than
/// compacted away.
const COMPACT_FROM: usize = 1024;

/// A future that is ready once a duration has passed.
pub struct Delay {
    /// None: the deadline is past what `Instant` can hold, so never.
    deadline: Option<Instant>,
    /// Set once polled before the deadline: the heap's handle on this delay
    /// (with no deadline, only the waker a reset would carry).
    entry: Option<Arc<Entry>>,
}

/// What the timer thread and a registered delay share.
#[derive(Default)]
struct Entry {
    fired: AtomicBool,
    waker: AtomicWaker,
}

/// One deadline in the heap; dead once its delay is gone.
struct Due {
    at: Instant,
    entry: Weak<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// The process's timers.
struct Timers {
    /// Earliest deadline on top.
    heap: Mutex<BinaryHeap<Reverse<Due>>>,
    /// About how many heap entries belong to dropped delays.
    dead: AtomicUsize,
    /// The thread that fires what is due.
    thread: Thread,
}

static TIMERS: OnceLock<Timers> = OnceLock::new();

fn timers() -> &'static Timers {
    TIMERS.get_or_init(|| {
        let thread = thread::Builder::new()
            .name("timer".into())
            .spawn(fire_forever)
            .expect("cannot start the timer thread");
        Timers {
            heap: Mutex::new(BinaryHeap::new()),
            dead: AtomicUsize::new(0),
            thread: thread.thread().clone(),
        }
    })
}

impl Timers {
    fn heap(&self) -> MutexGuard<'_, BinaryHeap<Reverse<Due>>> {
        // Nothing panics while the lock is held but allocation; the heap
        // stays valid either way.
        self.heap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, at: Instant, entry: &Arc<Entry>) {
        let mut heap = self.heap();
        if heap.len() >= COMPACT_FROM && self.dead.load(atomic::Ordering::Relaxed) * 2 > heap.len()
        {
            heap.retain(|Reverse(due)| due.entry.strong_count() > 0);
            // Delays dropped during the retain may be miscounted by one
            // each; the count only decides when to compact next.
            self.dead.store(0, atomic::Ordering::Relaxed);
        }
        let earliest = heap.peek().is_none_or(|Reverse(top)| at < top.at);
        heap.push(Reverse(Due { at, entry: Arc::downgrade(entry) }));
        drop(heap);
        if earliest {
            self.thread.unpark();
        }
    }

    /// Takes what is due at `now` into `due`; returns the next deadline.
    fn take_due(&self, now: Instant, due: &mut Vec<Arc<Entry>>) -> Option<Instant> {
        let mut heap = self.heap();
        while let Some(Reverse(top)) = heap.peek() {
            if top.at > now {
                return Some(top.at);
            }
            let Some(Reverse(top)) = heap.pop() else { break };
            match top.entry.upgrade() {
                Some(entry) => due.push(entry),
                None => {
                    let _ = self.dead.fetch_update(
                        atomic::Ordering::Relaxed,
                        atomic::Ordering::Relaxed,
                        |dead| Some(dead.saturating_sub(1)),
                    );
                }
            }
        }
        None
    }
}

/// The timer thread: fires what is due, sleeps until the next deadline or
/// until an earlier one arrives.
fn fire_forever() {
    let timers = TIMERS.wait();
    let mut due = Vec::new();
    loop {
        let next = timers.take_due(Instant::now(), &mut due);
        for entry in due.drain(..) {
            entry.fired.store(true, atomic::Ordering::Release);
            // A waker that panics must not stop every other timer.
            let _ = panic::catch_unwind(AssertUnwindSafe(|| entry.waker.wake()));
        }
        match next {
            Some(at) => thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => thread::park(),
        }
    }
}

impl Delay {
    /// A delay that is ready once `dur` has passed.
    pub fn new(dur: Duration) -> Delay {
        Delay { deadline: Instant::now().checked_add(dur), entry: None }
    }

    /// Makes this delay ready once `dur` has passed from now, instead of when
    /// it was due; a task that polled it is woken at the new deadline
    /// whether or not it polls again first.
    pub fn reset(&mut self, dur: Duration) {
        let waker = self.entry.as_ref().and_then(|entry| entry.waker.take());
        self.release();
        self.deadline = Instant::now().checked_add(dur);
        if let (Some(waker), Some(at)) = (waker, self.deadline) {
            let entry = Arc::new(Entry::default());
            entry.waker.register(&waker);
            timers().insert(at, &entry);
            self.entry = Some(entry);
        }
    }

    /// Lets go of the heap entry, counting it dead if it has not fired.
    fn release(&mut self) {
        if let Some(entry) = self.entry.take()
            && self.deadline.is_some()
            && !entry.fired.load(atomic::Ordering::Relaxed)
            && let Some(timers) = TIMERS.get()
        {
            timers.dead.fetch_add(1, atomic::Ordering::Relaxed);
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(entry) = &self.entry {
            if entry.fired.load(atomic::Ordering::Acquire) {
                return Poll::Ready(());
            }
            entry.waker.register(cx.waker());
            // The timer thread sets `fired` before it wakes: seen here, or
            // the wake reaches the waker just registered.
            return match entry.fired.load(atomic::Ordering::Acquire) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            };
        }
        let Some(at) = self.deadline else {
            // Never due: keep the waker, out of the heap, for a reset to carry.
            let entry = Arc::new(Entry::default());
            entry.waker.register(cx.waker());
            self.entry = Some(entry);
            return Poll::Pending;
        };
        if Instant::now() >= at {
            return Poll::Ready(());
        }
        let entry = Arc::new(Entry::default());
        entry.waker.register(cx.waker());
        timers().insert(at, &entry);
        self.entry = Some(entry);
        Poll::Pending
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fired = self.entry.as_ref().is_some_and(|e| e.fired.load(atomic::Ordering::Relaxed));
        f.debug_struct("Delay")
            .field("deadline", &self.deadline)
            .field("registered", &self.entry.is_some())
            .field("fired", &fired)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::executor::block_on;
    use futures::task::noop_waker_ref;

    const SHORT: Duration = Duration::from_millis(20);
    const LONG: Duration = Duration::from_secs(3600);

    fn poll_once(delay: &mut Delay) -> Poll<()> {
        delay.poll_unpin(&mut Context::from_waker(noop_waker_ref()))
    }

    /// Runs `f` on a thread of its own; false if it has not returned within
    /// ten seconds (a delay that never fires would otherwise hang the test).
    fn returns(f: impl FnOnce() + Send + 'static) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        finished.recv_timeout(Duration::from_secs(10)).is_ok()
    }

    /// Polls `delay`, resets it to [`SHORT`] without polling again, and
    /// waits for the wake that must follow.
    fn reset_while_waiting(mut delay: Delay) -> bool {
        returns(move || {
            let mut polls = 0;
            block_on(futures::future::poll_fn(|cx| {
                polls += 1;
                if polls == 1 {
                    assert_eq!(delay.poll_unpin(cx), Poll::Pending);
                    delay.reset(SHORT);
                    return Poll::Pending;
                }
                delay.poll_unpin(cx)
            }))
        })
    }

    #[test]
    fn a_delay_is_send_sync_and_unpin() {
        fn check<T: Send + Sync + Unpin>() {}
        check::<Delay>();
    }

    #[test]
    fn a_delay_already_due_is_ready_without_entering_the_heap() {
        let mut delay = Delay::new(Duration::ZERO);
        assert_eq!(poll_once(&mut delay), Poll::Ready(()));
        assert!(delay.entry.is_none());
        assert_eq!(poll_once(&mut delay), Poll::Ready(()));
    }

    #[test]
    fn a_delay_wakes_its_task_once_due() {
        let start = Instant::now();
        block_on(Delay::new(SHORT));
        assert!(start.elapsed() >= SHORT);
    }

    #[test]
    fn an_earlier_deadline_wakes_the_sleeping_thread() {
        // The thread sleeps until the hour-long delay; the short one must
        // wake it.
        let mut long = Delay::new(LONG);
        assert_eq!(poll_once(&mut long), Poll::Pending);
        let start = Instant::now();
        block_on(Delay::new(SHORT));
        assert!(start.elapsed() < LONG / 2);
        assert_eq!(poll_once(&mut long), Poll::Pending);
    }

    #[test]
    fn a_fired_delay_stays_ready() {
        let mut delay = Delay::new(SHORT);
        block_on(&mut delay);
        assert_eq!(poll_once(&mut delay), Poll::Ready(()));
    }

    #[test]
    fn reset_moves_the_deadline_and_keeps_the_waiting_task() {
        let start = Instant::now();
        assert!(reset_while_waiting(Delay::new(LONG)), "the reset delay never woke its task");
        assert!(start.elapsed() >= SHORT);
    }

    #[test]
    fn a_deadline_past_what_instant_holds_never_fires() {
        let mut delay = Delay::new(Duration::MAX);
        assert_eq!(poll_once(&mut delay), Poll::Pending);
        delay.reset(Duration::MAX);
        assert_eq!(poll_once(&mut delay), Poll::Pending);
    }

    #[test]
    fn reset_from_never_to_soon_wakes_the_waiting_task() {
        let start = Instant::now();
        assert!(
            reset_while_waiting(Delay::new(Duration::MAX)),
            "the reset delay never woke its task"
        );
        assert!(start.elapsed() >= SHORT);
    }

    #[test]
    fn a_waker_that_panics_does_not_stop_the_timers() {
        struct Panics;
        impl std::task::Wake for Panics {
            fn wake(self: Arc<Self>) {
                panic!("this waker panics on purpose");
            }
        }
        let waker = std::task::Waker::from(Arc::new(Panics));
        let mut first = Delay::new(Duration::from_millis(1));
        assert_eq!(first.poll_unpin(&mut Context::from_waker(&waker)), Poll::Pending);
        // The next delay still fires.
        assert!(returns(|| block_on(Delay::new(SHORT))), "the timer thread died");
        drop(first);
    }

    #[test]
    fn dropped_delays_do_not_pile_up() {
        let before = timers().heap().len();
        for _ in 0..20 * COMPACT_FROM {
            let mut delay = Delay::new(LONG);
            assert_eq!(poll_once(&mut delay), Poll::Pending);
        }
        // Other tests hold a few live entries at most.
        let after = timers().heap().len();
        assert!(after < before + 3 * COMPACT_FROM, "{before} entries, then {after}");
    }
}
