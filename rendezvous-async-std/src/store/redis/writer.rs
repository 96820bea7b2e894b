//! The writer: runs the scripts in the order the point submitted them, up
//! to [`WRITES_IN_FLIGHT`] at once on one connection to the primary (which
//! keeps their order), and reports every action's fate.
//!
//! A put that Redis has not taken within [`PUT_DEADLINE`] of its
//! submission while queued, or within [`PUT_ANSWER_WITHIN`] in all, is
//! refused `E_UNAVAILABLE`: with Redis paused or unreachable under load,
//! every REGISTER is answered within a second, never queued without end
//! (the core bounds how many writes wait here). A delete is never refused:
//! one that fails goes again after a backoff until it commits.
//!
//! With `--redis-min-replicas N`, what the scripts wrote is acknowledged
//! only once `N` replicas hold it: after scripts complete, one `WAIT N` on
//! the same connection covers all of them (it waits for that connection's
//! last write), and a `WAIT` that times out refuses the puts it covered
//! and retries the deletes. A connection that fails is replaced by one to
//! the primary of the moment (see [`Primary`]), never reused: a `WAIT` on
//! a new connection would acknowledge nothing it wrote. A new connection
//! is used only if its Redis passes the checks made at start: a primary
//! set to evict keys since (by a failover, or `CONFIG SET`) takes no write,
//! and REGISTERs are refused until it is set back.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::future::BoxFuture;
use futures::future::FusedFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt, select};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use rendezvous_libp2p::core::proto::ResponseStatus;
use rendezvous_libp2p::store::{ActionId, Commit, StoreAction, store_key};

use super::primary::Primary;
use super::{Health, RedisOptions, SharedLimits, scripts};

/// Writes sent to Redis at once, in order (one connection keeps the order).
const WRITES_IN_FLIGHT: usize = 64;
/// The longest a put may wait in the queue before its REGISTER is refused.
const PUT_DEADLINE: Duration = Duration::from_millis(300);
/// The longest a put's script may take from the put's submission, queued
/// and in flight, before its REGISTER is refused: every REGISTER Redis does
/// not take is answered within a second (with `--redis-min-replicas`, plus
/// the `WAIT`), and one it takes is answered once the follower reads it
/// back, or after the core's `max_log_wait` (1 s) if it cannot.
/// A healthy Redis answers in milliseconds even at full load; the other
/// 400 ms are for the core, the connection and a busy host, where a CI
/// run measured 100 ms between this deadline and the requester's answer.
const PUT_ANSWER_WITHIN: Duration = Duration::from_millis(600);
/// How long a `WAIT` waits for replicas.
const WAIT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often queued puts are checked against their deadline, and failed
/// deletes retried.
const TICK: Duration = Duration::from_millis(50);
/// Wait before a failed delete goes again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Wait between attempts to reach the primary.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

static PUT: LazyLock<redis::Script> = LazyLock::new(scripts::put);
static DELETE: LazyLock<redis::Script> = LazyLock::new(scripts::delete);

/// What one script came to, on the connection it ran on.
struct Written {
    action: StoreAction,
    generation: u64,
    result: Result<Outcome, redis::RedisError>,
}

enum Outcome {
    /// A put's answer: its position, or a refusal for a limit.
    Put(Vec<Value>),
    /// A delete's position (0: nothing removed).
    Delete(u64),
}

/// A write Redis took, waiting for replicas.
struct Taken {
    commit: Commit,
    action: StoreAction,
    generation: u64,
}

pub(super) struct Writer {
    primary: Arc<Primary>,
    committed: UnboundedSender<Commit>,
    limits: SharedLimits,
    health: Arc<Health>,
    options: RedisOptions,
}

impl Writer {
    pub(super) fn new(
        primary: Arc<Primary>,
        committed: UnboundedSender<Commit>,
        limits: SharedLimits,
        health: Arc<Health>,
        options: RedisOptions,
    ) -> Self {
        Writer { primary, committed, limits, health, options }
    }

    pub(super) async fn run(
        self,
        queued: UnboundedReceiver<(StoreAction, Instant)>,
        link: MultiplexedConnection,
    ) {
        let mut queued = queued.fuse();
        let mut waiting: VecDeque<(StoreAction, Instant)> = VecDeque::new();
        let mut retrying: VecDeque<(StoreAction, Instant)> = VecDeque::new();
        let mut in_flight = FuturesOrdered::new();
        // Taken by Redis, waiting for the replicas, and the WAIT under way.
        let mut taken: Vec<Taken> = Vec::new();
        let mut replicated: futures::future::Fuse<BoxFuture<'static, (Vec<Taken>, usize)>> =
            futures::future::Fuse::terminated();
        let mut ticks = StreamExt::fuse(async_io::Timer::interval(TICK));
        // The connection, its generation, and the primary's epoch it was
        // made in; `None` while reconnecting.
        let (mut link, mut generation) = (Some(link), 0u64);
        let mut epoch = self.primary.epoch();
        let mut connecting: futures::future::Fuse<BoxFuture<'static, _>> =
            futures::future::Fuse::terminated();
        let mut open = true;
        loop {
            if let Some(connection) = &link {
                while in_flight.len() < WRITES_IN_FLIGHT
                    && let Some((action, since)) = waiting.pop_front()
                {
                    if self.refused_late(&action, since) {
                        continue;
                    }
                    let connection = connection.clone();
                    in_flight.push_back(run(connection, action, since, generation, self.limits));
                }
                if replicated.is_terminated() && !taken.is_empty() && in_flight.is_empty() {
                    let batch = std::mem::take(&mut taken);
                    replicated =
                        wait_for_replicas(connection.clone(), self.options.min_replicas, batch)
                            .fuse();
                }
            } else if connecting.is_terminated() {
                connecting =
                    reconnect(self.primary.clone(), self.health.clone(), self.options.clone())
                        .fuse();
            }
            if !open
                && waiting.is_empty()
                && in_flight.is_empty()
                && retrying.is_empty()
                && taken.is_empty()
            {
                return;
            }
            select! {
                action = queued.next() => match action {
                    Some(action) => waiting.push_back(action),
                    None => open = false,
                },
                written = in_flight.select_next_some() => {
                    let failed = written.generation == generation && written.result.as_ref().is_err_and(broken);
                    if let Some(retry) = self.report(written, &mut taken) {
                        retrying.push_back((retry, Instant::now() + RETRY_AFTER));
                    }
                    if failed {
                        link = None;
                    }
                }
                (batch, replicas) = replicated => {
                    for Taken { commit, action, generation: on } in batch {
                        if on == generation && replicas >= self.options.min_replicas {
                            if let Commit::Logged { seq, .. } = commit {
                                self.health.taken(seq);
                            }
                            let _ = self.committed.unbounded_send(commit);
                        } else if let StoreAction::Put { id, .. } = action {
                            self.refuse(id, &format!(
                                "{replicas} of the {} replicas asked for took the registration in time",
                                self.options.min_replicas
                            ));
                        } else {
                            retrying.push_back((action, Instant::now() + RETRY_AFTER));
                        }
                    }
                }
                connected = connecting => match connected {
                    Ok((made_in, connection)) => {
                        generation += 1;
                        (link, epoch) = (Some(connection), made_in);
                        self.health.set_trouble(None);
                    }
                    Err(trouble) => self.health.set_trouble(Some(trouble)),
                },
                _ = ticks.next() => {
                    if link.is_some() && self.primary.moved_since(epoch) {
                        // Writes go to the primary Sentinel names now.
                        link = None;
                    }
                    if self.health.settings_refused.swap(false, Ordering::Relaxed) {
                        // The follower refused Redis's settings: check
                        // them again on a new connection before writing.
                        link = None;
                    }
                    // Puts queued past their deadline, in order of age.
                    waiting.retain(|(action, since)| !self.refused_late(action, *since));
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

    /// Refuses `action` if it is a put that has waited in the queue past
    /// [`PUT_DEADLINE`] since `since`; whether it did.
    fn refused_late(&self, action: &StoreAction, since: Instant) -> bool {
        match action {
            StoreAction::Put { id, .. } if since.elapsed() >= PUT_DEADLINE => {
                self.refuse(*id, "the shared store did not take the registration in time");
                true
            }
            _ => false,
        }
    }

    fn refuse(&self, id: ActionId, reason: &str) {
        let status = ResponseStatus::EUnavailable;
        let refusal = Commit::Refused { id, status, reason: reason.to_owned() };
        let _ = self.committed.unbounded_send(refusal);
    }

    /// Reports what a script came to, or, with replicas to wait for, keeps
    /// it in `taken`; gives back a delete to retry.
    fn report(&self, written: Written, taken: &mut Vec<Taken>) -> Option<StoreAction> {
        let Written { action, generation, result } = written;
        let id = action_id(&action)?;
        let commit = match result {
            Ok(Outcome::Put(values)) => put_commit(id, values),
            Ok(Outcome::Delete(0)) => Commit::Removed { id },
            Ok(Outcome::Delete(seq)) => Commit::Logged { id, seq },
            Err(error) => {
                let why = super::unreachable(&error);
                self.health.set_trouble(Some(why.clone()));
                if matches!(action, StoreAction::Delete { .. }) {
                    return Some(action);
                }
                // Sent to the requester: no address or credentials of ours.
                let _ = self.committed.unbounded_send(Commit::Refused {
                    id,
                    status: ResponseStatus::EUnavailable,
                    reason: why,
                });
                return None;
            }
        };
        self.health.set_trouble(None);
        if let Commit::Logged { seq, .. } = commit {
            self.health.written(seq);
        }
        let stored = matches!(commit, Commit::Logged { .. });
        if stored && self.options.min_replicas > 0 {
            taken.push(Taken { commit, action, generation });
        } else {
            if let Commit::Logged { seq, .. } = commit {
                self.health.taken(seq);
            }
            let _ = self.committed.unbounded_send(commit);
        }
        None
    }
}

/// Whether an error means the connection should be replaced: it broke, or
/// it reaches a node that is no longer the primary.
fn broken(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_unrecoverable_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

fn action_id(action: &StoreAction) -> Option<ActionId> {
    match action {
        StoreAction::Put { id, .. } | StoreAction::Delete { id, .. } => Some(*id),
        _ => None,
    }
}

/// A connection to the primary of the moment, after a pause; its settings
/// and layout checked (or claimed, if it lost everything) and positions
/// raised past everything this point saw first, in case it is a new
/// primary that lost writes. Else why not, for the health endpoints.
fn reconnect(
    primary: Arc<Primary>,
    health: Arc<Health>,
    options: RedisOptions,
) -> BoxFuture<'static, Result<(u64, MultiplexedConnection), String>> {
    async move {
        async_io::Timer::after(RECONNECT_AFTER).await;
        let unreachable = |e: redis::RedisError| super::unreachable(&e);
        let epoch = primary.epoch();
        let mut connection = primary.connect(&link_config()).await.map_err(unreachable)?;
        // A primary set to evict keys since (a failover, or a CONFIG SET)
        // takes no write, as at start; its warnings are the follower's to
        // log.
        super::check_settings(&mut connection, &options)
            .await
            .map_err(|refusal| super::refuses(&refusal))?;
        // A primary that lost everything is claimed again before any write.
        super::check_format(&mut connection).await.map_err(|refusal| super::refuses(&refusal))?;
        super::follower::raise_positions(&mut connection, health.seen())
            .await
            .map_err(unreachable)?;
        Ok((epoch, connection))
    }
    .boxed()
}

/// The writer's connection settings: its answers may wait behind a `WAIT`.
pub(super) fn link_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(PUT_ANSWER_WITHIN + WAIT_TIMEOUT))
}

/// `WAIT min_replicas` for what `batch` wrote: how many replicas hold it.
fn wait_for_replicas(
    mut connection: MultiplexedConnection,
    min_replicas: usize,
    batch: Vec<Taken>,
) -> BoxFuture<'static, (Vec<Taken>, usize)> {
    async move {
        let replicas: redis::RedisResult<usize> = redis::cmd("WAIT")
            .arg(min_replicas)
            .arg(WAIT_TIMEOUT.as_millis() as u64)
            .query_async(&mut connection)
            .await;
        (batch, replicas.unwrap_or(0))
    }
    .boxed()
}

/// Runs one action's script; a put submitted at `since` gives up at
/// [`PUT_ANSWER_WITHIN`].
fn run(
    mut connection: MultiplexedConnection,
    action: StoreAction,
    since: Instant,
    generation: u64,
    limits: SharedLimits,
) -> BoxFuture<'static, Written> {
    async move {
        let result = match &action {
            StoreAction::Put { registration, ttl, .. } => {
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
                let late = async_io::Timer::at(since + PUT_ANSWER_WITHIN);
                select! {
                    answer = invocation.invoke_async(&mut connection).fuse() => answer.map(Outcome::Put),
                    _ = FutureExt::fuse(late) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no answer in time",
                        format!("{} ms", PUT_ANSWER_WITHIN.as_millis()),
                    ))),
                }
            }
            StoreAction::Delete { peer, namespace, seq, .. } => {
                let mut invocation = DELETE.prepare_invoke();
                invocation.key(&scripts::KEYS[..]).arg(store_key(peer, namespace)).arg(*seq).arg(scripts::MIN_LOG);
                invocation.invoke_async(&mut connection).await.map(Outcome::Delete)
            }
            _ => Ok(Outcome::Delete(0)),
        };
        Written { action, generation, result }
    }
    .boxed()
}

fn put_commit(id: ActionId, values: Vec<Value>) -> Commit {
    let int = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => "refused by the shared store".to_owned(),
    };
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
