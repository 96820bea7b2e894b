//! Admission against a reference model: random substreams, batches,
//! answers and reads, checked after every step.

use proptest::prelude::*;

use super::*;
use crate::testing;

const LIMITS: AdmissionLimits = AdmissionLimits {
    max_streams: 3,
    max_busy_streams: 2,
    max_unread: 100,
    max_unread_per_origin: 150,
    max_page: 60,
};

#[test]
fn substreams_beyond_the_bounds_are_answered_busy_then_reset() {
    let mut a: Admission<()> = Admission::new(LIMITS);
    let opened: Vec<_> = (0..6).map(|_| a.opened(false)).collect();
    use Opened::*;
    assert_eq!(opened, [Serve, Serve, Serve, Busy, Busy, Reset]);
    a.closed(false);
    assert_eq!(a.opened(false), Serve);
    assert_eq!(a.opened(true), ShuttingDown);
}

#[test]
fn a_batch_ending_with_a_discover_reserves_a_page_unless_busy() {
    let a: Admission<()> = Admission::new(LIMITS);
    let discover = crate::codec::frame(&testing::discover(Some("x"), None, None));
    let unregister = crate::codec::frame(&testing::unregister("x"));
    let body = |frame: &[u8]| frame[1..].to_vec();
    assert_eq!(a.reserve(&body(&discover), false), 60);
    assert_eq!(a.reserve(&body(&discover), true), 0);
    assert_eq!(a.reserve(&body(&unregister), false), 0);
}

#[test]
fn batches_wait_in_order_until_the_client_takes_its_answers_and_one_always_goes_alone() {
    let mut a = Admission::new(LIMITS);
    let owed = |connection, origin| Unread { connection, origin };
    assert_eq!(a.offer(1, 60, owed(0, 0)), Some((1, 60)));
    assert_eq!(a.offer(2, 60, owed(60, 60)), None, "60 + 60 is over 100");
    assert_eq!(a.offer(3, 0, owed(60, 60)), None, "behind the held one");
    assert_eq!(a.release(owed(50, 50)), None);
    assert_eq!(a.release(owed(40, 40)), Some((2, 60)));
    assert_eq!(a.release(owed(100, 100)), Some((3, 0)), "a reserve of 0 fits at the bound");
    // Larger than the bound: it waits only until nothing is owed.
    assert_eq!(a.offer(4, 500, owed(1, 1)), None);
    assert_eq!(a.release(owed(0, 140)), None, "the address still owes");
    assert_eq!(a.release(owed(0, 0)), Some((4, 500)));
}

#[derive(Clone, Debug)]
enum Op {
    Open {
        shutting_down: bool,
    },
    Close {
        busy: bool,
    },
    /// A batch read; it reserves a page or nothing.
    Read {
        page: bool,
    },
    /// The answers to the oldest batch handed over are made: `bytes` owed.
    Answer {
        bytes: usize,
    },
    /// The client takes `bytes` of what it is owed.
    Take {
        bytes: usize,
    },
    /// Another connection of the address owes `bytes` more, or less.
    Other {
        more: bool,
        bytes: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => any::<bool>().prop_map(|shutting_down| Op::Open { shutting_down }),
        1 => any::<bool>().prop_map(|busy| Op::Close { busy }),
        3 => any::<bool>().prop_map(|page| Op::Read { page }),
        2 => (0..80usize).prop_map(|bytes| Op::Answer { bytes }),
        2 => (0..80usize).prop_map(|bytes| Op::Take { bytes }),
        1 => (any::<bool>(), 0..80usize).prop_map(|(more, bytes)| Op::Other { more, bytes }),
    ]
}

/// The plainest model: counts, a FIFO, and the fit rule written out.
#[derive(Default)]
struct Model {
    open: usize,
    busy: usize,
    read: usize,
    held: std::collections::VecDeque<(usize, usize)>,
    handed: std::collections::VecDeque<usize>,
    connection: usize,
    others: usize,
}

impl Model {
    fn unread(&self) -> Unread {
        Unread { connection: self.connection, origin: self.connection + self.others }
    }

    fn fits(&self, reserve: usize) -> bool {
        let u = self.unread();
        (u.connection == 0 || u.connection + reserve <= LIMITS.max_unread)
            && (u.origin == 0 || u.origin + reserve <= LIMITS.max_unread_per_origin)
    }
}

proptest! {
    #[test]
    fn admission_matches_the_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut a = Admission::new(LIMITS);
        let mut m = Model::default();
        let mut next = 0;
        for op in ops {
            match op {
                Op::Open { shutting_down } => {
                    let expected = if shutting_down {
                        Opened::ShuttingDown
                    } else if m.open < LIMITS.max_streams {
                        m.open += 1;
                        Opened::Serve
                    } else if m.busy < LIMITS.max_busy_streams {
                        m.busy += 1;
                        Opened::Busy
                    } else {
                        Opened::Reset
                    };
                    prop_assert_eq!(a.opened(shutting_down), expected);
                }
                Op::Close { busy } => {
                    let count = if busy { &mut m.busy } else { &mut m.open };
                    if *count > 0 {
                        *count -= 1;
                        a.closed(busy);
                    }
                }
                Op::Read { page } => {
                    next += 1;
                    m.read += 1;
                    let reserve = if page { LIMITS.max_page } else { 0 };
                    let goes = m.held.is_empty() && m.fits(reserve);
                    let offered = a.offer(next, reserve, m.unread());
                    prop_assert_eq!(offered.is_some(), goes);
                    match offered {
                        Some((batch, _)) => m.handed.push_back(batch),
                        None => m.held.push_back((next, reserve)),
                    }
                }
                Op::Answer { bytes } => {
                    if m.handed.pop_front().is_some() {
                        m.connection += bytes;
                    }
                }
                Op::Take { bytes } => m.connection -= bytes.min(m.connection),
                Op::Other { more: true, bytes } => m.others += bytes,
                Op::Other { more: false, bytes } => m.others -= bytes.min(m.others),
            }
            // Whatever fits now goes, oldest first; what is left does not fit.
            while let Some((batch, reserve)) = a.release(m.unread()) {
                let (expected, held_reserve) = m.held.pop_front().expect("released only what is held");
                prop_assert_eq!((batch, reserve), (expected, held_reserve));
                m.handed.push_back(batch);
            }
            if let Some((_, reserve)) = m.held.front() {
                prop_assert!(!m.fits(*reserve), "a batch that fits is left waiting");
            }
            prop_assert_eq!(a.open(), (m.open, m.busy));
            prop_assert_eq!(a.held(), m.held.len());
            prop_assert!(m.open <= LIMITS.max_streams && m.busy <= LIMITS.max_busy_streams);
        }
        // Once the clients take everything, nothing waits.
        m.connection = 0;
        m.others = 0;
        while a.release(m.unread()).is_some() {}
        prop_assert_eq!(a.held(), 0);
    }
}
