//! Following the shared registry: the log tailed into the point's index,
//! reconnecting with backoff and reloading when the point fell behind the
//! trim; and the upkeep every point shares in: sweeping what has expired by
//! Redis's clock, and keeping the point's clock on Redis's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, Client};
use rendezvous_libp2p::Clock;
use rendezvous_libp2p::core::store::Replicated;
use rendezvous_libp2p::store::{Change, StoredRegistration};
use tracing::{info, warn};

use super::{Health, LOG, RESPONSE_TIMEOUT, RedisOptions, expiry, key_parts, scripts};

/// How long the tail blocks on the stream before asking again.
const BLOCK: Duration = Duration::from_millis(1000);
/// How often each point sweeps what has expired by Redis's clock.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most registrations one sweep expires.
const SWEEP_BATCH: usize = 1000;
/// How often the point reads Redis's clock.
const CLOCK_EVERY: Duration = Duration::from_secs(10);
/// A clock further than this from Redis's is reported...
const DRIFT: Duration = Duration::from_secs(1);
/// ...at most this often.
const DRIFT_REPORT_EVERY: Duration = Duration::from_secs(60);

/// One log entry: its position, and the change it carries (`None` for an
/// entry this version cannot read).
pub(super) struct Entry {
    pub(super) position: u64,
    pub(super) change: Option<Replicated>,
}

fn entry(id: &StreamId) -> Option<Entry> {
    let position = scripts::position_of(&id.id)?;
    Some(Entry { position, change: change_of(id, position) })
}

fn change_of(entry: &StreamId, position: u64) -> Option<Replicated> {
    let op: String = entry.get("op")?;
    let key: Vec<u8> = entry.get("key")?;
    match op.as_str() {
        "put" => {
            let payload: Vec<u8> = entry.get("payload")?;
            let expires: u64 = entry.get("exp")?;
            let mut registration = StoredRegistration::decode(&payload).ok()?;
            registration.seq = position;
            registration.expires = expiry(expires);
            Some(Replicated::Put(registration))
        }
        "del" => {
            let (peer, namespace) = key_parts(&key)?;
            let seq: u64 = entry.get("seq")?;
            Some(Replicated::Delete { peer, namespace, seq, position })
        }
        _ => None,
    }
}

/// Up to `count` log entries after `position`, in order.
pub(super) async fn read_after(
    con: &mut impl ConnectionLike,
    position: u64,
    count: usize,
) -> redis::RedisResult<Vec<Entry>> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(scripts::LOG)
        .arg(format!("({}", scripts::id_of(position)))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(con)
        .await?;
    Ok(reply.ids.iter().filter_map(entry).collect())
}

/// Whether the entry at `position` is still in the log: then nothing after
/// it was trimmed.
pub(super) async fn holds(
    con: &mut impl ConnectionLike,
    position: u64,
) -> redis::RedisResult<bool> {
    let id = scripts::id_of(position);
    let reply: StreamRangeReply =
        redis::cmd("XRANGE").arg(scripts::LOG).arg(&id).arg(&id).query_async(con).await?;
    Ok(!reply.ids.is_empty())
}

pub(super) struct Follower {
    pub(super) client: Client,
    /// For reloads and upkeep, beside the tail's own connection (a blocking
    /// read would hold up everything behind it).
    pub(super) snapshots: ConnectionManager,
    pub(super) last: u64,
    pub(super) changed: UnboundedSender<Change>,
    pub(super) url: String,
    pub(super) options: RedisOptions,
    pub(super) health: Arc<Health>,
    pub(super) clock: Clock,
}

impl Follower {
    /// Follows the log from the last position applied, reconnecting with
    /// backoff; reloads when the entries it missed were trimmed.
    pub(super) async fn run(mut self) {
        crate::runtime::spawn(upkeep(
            self.snapshots.clone(),
            self.url.clone(),
            self.health.clone(),
            self.clock.clone(),
        ));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
        let mut backoff = Duration::from_millis(100);
        let mut lost = false;
        loop {
            let tail: redis::RedisResult<MultiplexedConnection> =
                self.client.get_multiplexed_async_connection_with_config(&config).await;
            let mut tail = match tail {
                Ok(tail) => tail,
                Err(error) => {
                    if !std::mem::replace(&mut lost, true) {
                        self.lost(&error);
                    }
                    async_io::Timer::after(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if std::mem::replace(&mut lost, false) && !self.rejoin(&mut tail).await {
                lost = true;
                continue;
            }
            backoff = Duration::from_millis(100);
            if let Err(error) = self.tail(&mut tail).await {
                self.lost(&error);
                lost = true;
            }
            if self.changed.is_closed() {
                return;
            }
        }
    }

    fn lost(&self, error: &redis::RedisError) {
        warn!(target: LOG, "Lost the shared store at {}: {error}; retrying", self.url);
        self.health.set_trouble(Some(format!("the shared store is unreachable: {error}")));
    }

    /// Back after losing Redis: its settings again, then on from the last
    /// position applied, or a reload if the log no longer reaches back
    /// there. False if Redis went away again meanwhile.
    async fn rejoin(&mut self, tail: &mut MultiplexedConnection) -> bool {
        info!(target: LOG, "Reconnected to the shared store at {}", self.url);
        match super::check_settings(tail, &self.options).await {
            Ok(warnings) => {
                for warning in warnings {
                    warn!(target: LOG, "Redis at {}: {warning}", self.url);
                }
            }
            Err(refusal) => {
                warn!(target: LOG, "Redis at {}: {refusal}; writes are refused", self.url);
                self.health.set_trouble(Some(format!("the shared store refuses: {refusal}")));
                return false;
            }
        }
        self.health.set_trouble(None);
        if self.last == 0 || holds(tail, self.last).await.unwrap_or(false) {
            return true;
        }
        match super::snapshot(&mut self.snapshots).await {
            Ok(snapshot) => {
                info!(
                    target: LOG,
                    "Fell behind the shared log: reloading {} registrations",
                    snapshot.registrations.len()
                );
                self.last = snapshot.last_seq;
                self.changed.unbounded_send(Change::Resync(snapshot)).is_ok()
            }
            Err(_) => false,
        }
    }

    /// Reads the log as it grows, until an error.
    async fn tail(&mut self, tail: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
        loop {
            let options =
                StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(1000);
            let id = scripts::id_of(self.last);
            let reply: Option<StreamReadReply> = redis::AsyncCommands::xread_options(
                tail,
                &[scripts::LOG],
                &[id.as_str()],
                &options,
            )
            .await?;
            for id in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                let Some(entry) = entry(&id) else { continue };
                if let Some(change) = entry.change
                    && self.changed.unbounded_send(Change::Replicated(change)).is_err()
                {
                    return Ok(());
                }
                self.last = entry.position;
            }
            if self.changed.is_closed() {
                return Ok(());
            }
        }
    }
}

/// Every [`SWEEP_EVERY`], expires what Redis's clock says has expired; every
/// [`CLOCK_EVERY`], sets the point's clock on Redis's and says, at most
/// once a minute, if this machine's own clock is more than a second off.
async fn upkeep(mut con: ConnectionManager, url: String, health: Arc<Health>, clock: Clock) {
    let sweep = scripts::sweep();
    let mut next_clock = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        async_io::Timer::after(SWEEP_EVERY).await;
        let _: redis::RedisResult<u64> = sweep
            .prepare_invoke()
            .key(&scripts::KEYS[..])
            .arg(SWEEP_BATCH)
            .arg(scripts::MIN_LOG)
            .invoke_async(&mut con)
            .await;
        if Instant::now() < next_clock {
            continue;
        }
        next_clock = Instant::now() + CLOCK_EVERY;
        let Ok((reference, at)) = super::redis_time(&mut con).await else { continue };
        clock.follow(reference, at);
        let offset = super::offset_from(reference, at);
        health.clock_offset.store(offset, Ordering::Relaxed);
        let drift = Duration::from_nanos(offset.unsigned_abs());
        if drift > DRIFT && reported.is_none_or(|at| at.elapsed() >= DRIFT_REPORT_EVERY) {
            reported = Some(Instant::now());
            let side = if offset > 0 { "ahead of" } else { "behind" };
            warn!(
                target: LOG,
                "This machine's clock is {:.1} s {side} the shared store's at {url}; expiry follows the store's clock",
                drift.as_secs_f64()
            );
        }
    }
}
