//! One connection's load: a request a tick, paced, and the schedule of
//! refreshes and unregisters its answers set.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use rendezvous_core::{codec, proto, testing};
use rendezvous_libp2p::framed::Framed;
use tokio::sync::mpsc;

use super::model::{KeyId, Model, Outcome, namespace};
use super::{CHURN_POOL, MAX_IN_FLIGHT, REQUEST_TIMEOUT, lock};
use crate::Error;
use crate::conn::{Conn, MAX_RESPONSE, PROTOCOL, exchange};

/// A request's end, back to its connection's driver.
enum Done {
    Registered { slot: usize, ok: bool },
    Unregistered { slot: usize },
    Discovered { cookie: Option<Bytes>, follow: u8 },
}

/// One connection's load: its schedule of refreshes and unregisters, and
/// the pace.
pub(super) struct Driver {
    identity: usize,
    control: libp2p_stream::Control,
    point: PeerId,
    record: Bytes,
    model: Arc<Mutex<Model>>,
    plan: Plan,
    /// Stable slots by when they are due.
    refresh: BTreeSet<(Instant, usize)>,
    /// Churn slots by when their UNREGISTER is due.
    unregister: BTreeSet<(Instant, usize)>,
    churn_next: usize,
    /// Churn slots with a request in flight or an UNREGISTER due.
    churn_busy: Vec<bool>,
    /// A cookie to follow, and how many more pages after it.
    follow: Option<(Bytes, u8)>,
    free_ticks: u64,
    discovers: u64,
    in_flight: usize,
    rng: Rng,
    done: mpsc::Sender<Done>,
}

/// What every driver runs to.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    /// The TTL asked for.
    pub(super) ttl: Duration,
    /// Stable keys per identity.
    pub(super) stable: usize,
    pub(super) started: Instant,
    /// Between one connection's ticks.
    pub(super) interval: Duration,
    /// No tick from then.
    pub(super) end: Instant,
}

impl Driver {
    /// Starts identity `identity`'s load on `conn`, signed with `record`;
    /// every stable key is due at once.
    pub(super) fn spawn(
        identity: usize,
        conn: &Conn,
        record: Bytes,
        model: Arc<Mutex<Model>>,
        plan: Plan,
    ) {
        let (done, rx) = mpsc::channel(MAX_IN_FLIGHT + 1);
        let driver = Driver {
            identity,
            control: conn.control.clone(),
            point: conn.server,
            record,
            model,
            plan,
            refresh: (0..plan.stable).map(|slot| (plan.started, slot)).collect(),
            unregister: BTreeSet::new(),
            churn_next: 0,
            churn_busy: vec![false; CHURN_POOL],
            follow: None,
            free_ticks: 0,
            discovers: 0,
            in_flight: 0,
            rng: Rng(0x5eed ^ ((identity as u64) << 32)),
            done,
        };
        tokio::spawn(driver.run(rx));
    }

    async fn run(mut self, mut done: mpsc::Receiver<Done>) {
        let Plan { started, interval, end, .. } = self.plan;
        // Connections take turns within an interval.
        let mut due = started + interval.mul_f64(self.rng.unit());
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {
                    if due >= end {
                        return;
                    }
                    self.tick(due);
                    due += interval;
                }
                Some(d) = done.recv() => self.finished(d),
            }
        }
    }

    fn tick(&mut self, due: Instant) {
        if self.in_flight >= MAX_IN_FLIGHT {
            lock(&self.model).counts.skipped += 1;
            return;
        }
        if let Some(&(at, slot)) = self.unregister.first()
            && at <= due
        {
            self.unregister.pop_first();
            return self.send_unregister(slot);
        }
        if let Some(&(at, slot)) = self.refresh.first()
            && at <= due
        {
            self.refresh.pop_first();
            return self.send_register(slot);
        }
        self.free_ticks += 1;
        if !self.free_ticks.is_multiple_of(3)
            && let Some(slot) = self.free_churn()
        {
            return self.send_register(slot);
        }
        self.send_discover();
    }

    fn finished(&mut self, done: Done) {
        self.in_flight -= 1;
        let now = Instant::now();
        match done {
            Done::Registered { slot, ok } if slot < self.plan.stable => {
                let next = if ok {
                    self.plan.ttl.mul_f64(0.6 + 0.2 * self.rng.unit())
                } else {
                    Duration::from_secs(1)
                };
                self.refresh.insert((now + next, slot));
            }
            Done::Registered { slot, ok: true } => {
                let moment = Duration::from_millis(100 + self.rng.below(400));
                self.unregister.insert((now + moment, slot));
            }
            Done::Registered { slot, ok: false } | Done::Unregistered { slot } => {
                self.churn_busy[slot - self.plan.stable] = false;
            }
            Done::Discovered { cookie, follow } => {
                if let Some(cookie) = cookie.filter(|_| follow > 0) {
                    self.follow = Some((cookie, follow - 1));
                }
            }
        }
    }

    /// The next churn slot with nothing in flight, marked busy.
    fn free_churn(&mut self) -> Option<usize> {
        for _ in 0..CHURN_POOL {
            let k = self.churn_next;
            self.churn_next = (k + 1) % CHURN_POOL;
            if !self.churn_busy[k] {
                self.churn_busy[k] = true;
                return Some(self.plan.stable + k);
            }
        }
        None
    }

    fn send_register(&mut self, slot: usize) {
        let id = KeyId { identity: self.identity, slot };
        let request = testing::register(
            &namespace(slot, self.plan.stable),
            self.record.clone(),
            Some(self.plan.ttl.as_secs()),
        );
        let begun = lock(&self.model).begin_register(id, Instant::now());
        let asked = self.plan.ttl;
        let (mut control, point, model, done) =
            (self.control.clone(), self.point, self.model.clone(), self.done.clone());
        self.in_flight += 1;
        tokio::spawn(async move {
            let outcome = match ask(&mut control, point, &request).await {
                Ok(reply) => match reply.register_response {
                    Some(r) if r.status.unwrap_or(0) == 0 => {
                        Outcome::Ok { ttl: r.ttl.map_or(asked, Duration::from_secs) }
                    }
                    Some(r) => Outcome::Refused {
                        status: r.status.unwrap_or(0),
                        text: r.status_text.unwrap_or_default(),
                    },
                    None => Outcome::Lost("not a register response".into()),
                },
                Err(e) => Outcome::Lost(e),
            };
            let ok = lock(&model).registered(id, begun, outcome, Instant::now());
            let _ = done.send(Done::Registered { slot, ok }).await;
        });
    }

    fn send_unregister(&mut self, slot: usize) {
        let id = KeyId { identity: self.identity, slot };
        let request = testing::unregister(&namespace(slot, self.plan.stable));
        let version = lock(&self.model).begin_unregister(id);
        let (mut control, point, model, done) =
            (self.control.clone(), self.point, self.model.clone(), self.done.clone());
        self.in_flight += 1;
        tokio::spawn(async move {
            let written =
                match tokio::time::timeout(REQUEST_TIMEOUT, tell(&mut control, point, &request))
                    .await
                {
                    Ok(Ok(())) => Ok(Instant::now()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("not written in {REQUEST_TIMEOUT:?}")),
                };
            lock(&model).unregistered(id, version, written);
            let _ = done.send(Done::Unregistered { slot }).await;
        });
    }

    fn send_discover(&mut self) {
        self.discovers += 1;
        let (request, follow) = match self.follow.take() {
            Some((cookie, left)) => (testing::discover(None, Some(100), Some(cookie)), left),
            None if self.discovers.is_multiple_of(2) => {
                (testing::discover(None, Some(100), None), 3)
            }
            None => {
                let ns =
                    namespace(self.rng.below(self.plan.stable as u64) as usize, self.plan.stable);
                (testing::discover(Some(&ns), Some(100), None), 0)
            }
        };
        lock(&self.model).counts.discovers += 1;
        let (mut control, point, model, done) =
            (self.control.clone(), self.point, self.model.clone(), self.done.clone());
        self.in_flight += 1;
        tokio::spawn(async move {
            let (outcome, cookie) = match ask(&mut control, point, &request).await {
                Ok(reply) => match reply.discover_response {
                    Some(page) if page.status.unwrap_or(0) == 0 => {
                        let cookie = page.cookie.filter(|_| !page.registrations.is_empty());
                        (Outcome::Ok { ttl: Duration::ZERO }, cookie)
                    }
                    Some(page) => (
                        Outcome::Refused {
                            status: page.status.unwrap_or(0),
                            text: page.status_text.unwrap_or_default(),
                        },
                        None,
                    ),
                    None => (Outcome::Lost("not a discover response".into()), None),
                },
                Err(e) => (Outcome::Lost(e), None),
            };
            lock(&model).discovered(&outcome);
            let _ = done.send(Done::Discovered { cookie, follow }).await;
        });
    }
}

/// One request and its answer, within [`REQUEST_TIMEOUT`].
pub(super) async fn ask(
    control: &mut libp2p_stream::Control,
    point: PeerId,
    request: &proto::Message,
) -> Result<proto::Message, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(control, point, request)).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer in {REQUEST_TIMEOUT:?}")),
    }
}

/// Writes one request that has no answer (an UNREGISTER) on a new substream.
async fn tell(
    control: &mut libp2p_stream::Control,
    point: PeerId,
    request: &proto::Message,
) -> Result<(), Error> {
    let stream = control.open_stream(point, PROTOCOL).await?;
    let mut framed = Framed::new(stream, MAX_RESPONSE);
    framed.write_frame(&codec::frame(request)).await?;
    framed.close().await?;
    Ok(())
}

/// SplitMix64: the load's only randomness, one seed per connection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
