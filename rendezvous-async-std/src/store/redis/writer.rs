//! The writer: runs the scripts in the order the point submitted them, up
//! to [`WRITES_IN_FLIGHT`] at once on one connection (which keeps their
//! order), and reports every action's fate.
//!
//! A put that Redis has not taken within [`PUT_DEADLINE`] of its
//! submission, in flight or still queued behind others, is refused
//! `E_UNAVAILABLE`: under load with Redis paused or unreachable every
//! REGISTER is answered within a second, never queued without end (the
//! core bounds how many writes wait here). A delete is never refused: one
//! that fails goes again after a backoff until it commits.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::stream::FuturesOrdered;
use futures::{StreamExt, select};
use redis::Value;
use redis::aio::ConnectionManager;
use rendezvous_libp2p::core::proto::ResponseStatus;
use rendezvous_libp2p::store::{ActionId, Commit, StoreAction, store_key};

use super::{Health, SharedLimits, scripts};

/// Writes sent to Redis at once, in order (one connection keeps the order).
const WRITES_IN_FLIGHT: usize = 64;
/// The longest a put may wait, queued and in flight, before its REGISTER
/// is refused; its response timeout adds at most 0.5 s more.
const PUT_DEADLINE: Duration = Duration::from_millis(500);
/// How often queued puts are checked against their deadline, and failed
/// deletes retried.
const TICK: Duration = Duration::from_millis(100);
/// Wait before a failed delete goes again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

static PUT: LazyLock<redis::Script> = LazyLock::new(scripts::put);
static DELETE: LazyLock<redis::Script> = LazyLock::new(scripts::delete);

/// What one write came to.
enum Written {
    Put(ActionId, redis::RedisResult<Vec<Value>>),
    Delete(Box<StoreAction>, redis::RedisResult<u64>),
}

pub(super) struct Writer {
    con: ConnectionManager,
    committed: UnboundedSender<Commit>,
    limits: SharedLimits,
    health: Arc<Health>,
}

impl Writer {
    pub(super) fn new(
        con: ConnectionManager,
        committed: UnboundedSender<Commit>,
        limits: SharedLimits,
        health: Arc<Health>,
    ) -> Self {
        Writer { con, committed, limits, health }
    }

    pub(super) async fn run(self, queued: UnboundedReceiver<(StoreAction, Instant)>) {
        let mut queued = queued.fuse();
        let mut waiting: VecDeque<(StoreAction, Instant)> = VecDeque::new();
        let mut retrying: VecDeque<(StoreAction, Instant)> = VecDeque::new();
        let mut in_flight = FuturesOrdered::new();
        let mut ticks = async_io::Timer::interval(TICK).fuse();
        let mut open = true;
        loop {
            while in_flight.len() < WRITES_IN_FLIGHT
                && let Some((action, since)) = waiting.pop_front()
            {
                if let StoreAction::Put { id, .. } = &action
                    && since.elapsed() >= PUT_DEADLINE
                {
                    self.refuse_late(*id);
                    continue;
                }
                in_flight.push_back(run(self.con.clone(), action, self.limits));
            }
            if !open && waiting.is_empty() && in_flight.is_empty() && retrying.is_empty() {
                return;
            }
            select! {
                action = queued.next() => match action {
                    Some(action) => waiting.push_back(action),
                    None => open = false,
                },
                written = in_flight.select_next_some() => {
                    if let Some(retry) = self.report(written) {
                        retrying.push_back((retry, Instant::now() + RETRY_AFTER));
                    }
                }
                _ = ticks.next() => {
                    // Puts queued past their deadline, in order of age.
                    waiting.retain(|(action, since)| match action {
                        StoreAction::Put { id, .. } if since.elapsed() >= PUT_DEADLINE => {
                            self.refuse_late(*id);
                            false
                        }
                        _ => true,
                    });
                    // Deletes due again go first: they were submitted
                    // before what waits.
                    let now = Instant::now();
                    while retrying.front().is_some_and(|(_, due)| *due <= now) {
                        if let Some((action, _)) = retrying.pop_front() {
                            waiting.push_front((action, now));
                        }
                    }
                }
            }
        }
    }

    fn refuse_late(&self, id: ActionId) {
        let reason = format!(
            "the shared store did not take the registration within {} ms",
            PUT_DEADLINE.as_millis()
        );
        let _ = self.committed.unbounded_send(Commit::Refused {
            id,
            status: ResponseStatus::EUnavailable,
            reason,
        });
    }

    /// Reports what a write came to; gives back a delete to retry.
    fn report(&self, written: Written) -> Option<StoreAction> {
        let commit = match written {
            Written::Put(id, answer) => put_commit(id, answer, &self.health),
            Written::Delete(action, Ok(position)) => {
                self.health.set_trouble(None);
                let id = action_id(&action)?;
                match position {
                    0 => Commit::Removed { id },
                    seq => Commit::Logged { id, seq },
                }
            }
            Written::Delete(action, Err(error)) => {
                self.health.set_trouble(Some(format!("the shared store is unreachable: {error}")));
                return Some(*action);
            }
        };
        let _ = self.committed.unbounded_send(commit);
        None
    }
}

fn action_id(action: &StoreAction) -> Option<ActionId> {
    match action {
        StoreAction::Put { id, .. } | StoreAction::Delete { id, .. } => Some(*id),
        _ => None,
    }
}

/// Runs one action's script.
async fn run(mut con: ConnectionManager, action: StoreAction, limits: SharedLimits) -> Written {
    match action {
        StoreAction::Put { id, registration, ttl } => {
            let mut invocation = PUT.prepare_invoke();
            invocation
                .key(&scripts::KEYS[..])
                .arg(registration.key())
                .arg(registration.encode())
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                .arg(limits.per_peer)
                .arg(limits.per_namespace)
                .arg(limits.total)
                .arg(scripts::MIN_LOG);
            Written::Put(id, invocation.invoke_async(&mut con).await)
        }
        StoreAction::Delete { ref peer, ref namespace, seq, .. } => {
            let mut invocation = DELETE.prepare_invoke();
            invocation
                .key(&scripts::KEYS[..])
                .arg(store_key(peer, namespace))
                .arg(seq)
                .arg(scripts::MIN_LOG);
            let answer = invocation.invoke_async(&mut con).await;
            Written::Delete(Box::new(action), answer)
        }
        other => Written::Delete(Box::new(other), Ok(0)),
    }
}

fn put_commit(id: ActionId, answer: redis::RedisResult<Vec<Value>>, health: &Health) -> Commit {
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => "refused by the shared store".to_owned(),
    };
    let values = match answer {
        Ok(values) => values,
        Err(error) => {
            health.set_trouble(Some(format!("the shared store is unreachable: {error}")));
            return Commit::Refused {
                id,
                status: ResponseStatus::EUnavailable,
                // Sent to the requester: no address or credentials of ours.
                reason: format!("the shared store is unreachable: {error}"),
            };
        }
    };
    health.set_trouble(None);
    match values.first().and_then(int) {
        Some(0) => match values.get(1).and_then(int) {
            Some(seq) => Commit::Logged { id, seq },
            None => Commit::Refused {
                id,
                status: ResponseStatus::EInternalError,
                reason: "the shared store gave no position".to_owned(),
            },
        },
        Some(1) => Commit::Refused {
            id,
            status: ResponseStatus::ENotAuthorized,
            reason: text(values.get(1)),
        },
        _ => Commit::Refused {
            id,
            status: ResponseStatus::EUnavailable,
            reason: text(values.get(1)),
        },
    }
}
