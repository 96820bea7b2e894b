//! Following the shared registry: the log tailed into the point's index,
//! reconnecting with backoff and reloading when the point fell behind the
//! trim; and the upkeep every point shares in: sweeping what has expired by
//! Redis's clock, and keeping the point's clock on Redis's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use rendezvous_libp2p::Clock;
use rendezvous_libp2p::core::store::Replicated;
use rendezvous_libp2p::store::{Change, StoredRegistration};
use tracing::{info, warn};

use super::primary::Primary;
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

/// One log entry: its position, the store key it concerns (empty for a
/// gap), and what it says.
pub(super) struct Entry {
    pub(super) position: u64,
    pub(super) key: Vec<u8>,
    pub(super) says: Says,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one entry at a time, moved once: boxing would allocate for each"
)]
pub(super) enum Says {
    Change(Replicated),
    /// The positions after `after`, up to this entry's, were lost with a
    /// primary (see [`scripts`]).
    Gap {
        after: u64,
    },
    /// An entry this version cannot read.
    Unknown,
}

fn entry(id: &StreamId) -> Option<Entry> {
    let position = scripts::position_of(&id.id)?;
    let key: Vec<u8> = id.get("key").unwrap_or_default();
    let says = says(id, position).unwrap_or(Says::Unknown);
    Some(Entry { position, key, says })
}

fn says(entry: &StreamId, position: u64) -> Option<Says> {
    let op: String = entry.get("op")?;
    match op.as_str() {
        "put" => {
            let payload: Vec<u8> = entry.get("payload")?;
            let expires: u64 = entry.get("exp")?;
            let mut registration = StoredRegistration::decode(&payload).ok()?;
            registration.seq = position;
            registration.expires = expiry(expires);
            Some(Says::Change(Replicated::Put(registration)))
        }
        "del" => {
            let key: Vec<u8> = entry.get("key")?;
            let (peer, namespace) = key_parts(&key)?;
            let seq: u64 = entry.get("seq")?;
            Some(Says::Change(Replicated::Delete { peer, namespace, seq, position }))
        }
        "gap" => Some(Says::Gap { after: entry.get("after")? }),
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

/// The entry at `position`, if the log still holds it.
pub(super) async fn entry_at(
    con: &mut impl ConnectionLike,
    position: u64,
) -> redis::RedisResult<Option<Entry>> {
    let id = scripts::id_of(position);
    let reply: StreamRangeReply =
        redis::cmd("XRANGE").arg(scripts::LOG).arg(&id).arg(&id).query_async(con).await?;
    Ok(reply.ids.first().and_then(entry))
}

/// The position of the last entry the log holds at or before `position`
/// (0 if none).
async fn held_up_to(con: &mut impl ConnectionLike, position: u64) -> redis::RedisResult<u64> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(scripts::LOG)
        .arg(scripts::id_of(position))
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    Ok(reply.ids.first().and_then(|id| scripts::position_of(&id.id)).unwrap_or(0))
}

pub(super) struct Follower {
    pub(super) primary: Arc<Primary>,
    /// The last position applied, and the key of its entry: an entry at
    /// that position for another key means the primary lost it and gave
    /// the position again.
    pub(super) last: u64,
    pub(super) last_key: Vec<u8>,
    pub(super) changed: UnboundedSender<Change>,
    pub(super) url: String,
    pub(super) options: RedisOptions,
    pub(super) health: Arc<Health>,
    pub(super) clock: Clock,
}

impl Follower {
    /// Follows the log from the last position applied, reconnecting (to the
    /// primary of the moment) with backoff; reloads when the entries it
    /// missed were trimmed, or lost with a failed primary.
    pub(super) async fn run(mut self) {
        crate::runtime::spawn(upkeep(
            self.primary.clone(),
            self.url.clone(),
            self.health.clone(),
            self.clock.clone(),
        ));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
        // Sentinels move the primary within seconds: look for it often.
        let longest = if self.primary.follows_sentinels() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        let mut backoff = Duration::from_millis(100);
        let mut lost = false;
        loop {
            let epoch = self.primary.epoch();
            let mut tail = match self.primary.connect(&config).await {
                Ok(tail) => tail,
                Err(error) => {
                    if !std::mem::replace(&mut lost, true) {
                        self.lost(&error);
                    }
                    async_io::Timer::after(backoff).await;
                    backoff = (backoff * 2).min(longest);
                    continue;
                }
            };
            if std::mem::replace(&mut lost, false) && !self.rejoin(&mut tail).await {
                // Refused (its settings) or failed: the same pause as an
                // unreachable Redis, rather than a loop of connections.
                lost = true;
                if self.changed.is_closed() {
                    return;
                }
                async_io::Timer::after(backoff).await;
                backoff = (backoff * 2).min(longest);
                continue;
            }
            backoff = Duration::from_millis(100);
            if let Err(error) = self.tail(&mut tail, epoch).await {
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
        self.health.set_trouble(Some(super::unreachable(error)));
    }

    /// Back after losing Redis: its settings again; positions raised past
    /// every one this point saw, so that none is given twice (a primary
    /// that lost its last writes would); then on from the last position
    /// applied if the log still holds its entry, or else a reload, after
    /// the gaps logged since what the log still shares with this point.
    /// False if Redis went away again meanwhile.
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
                self.health.set_trouble(Some(super::refuses(&refusal)));
                self.health.settings_refused.store(true, Ordering::Relaxed);
                return false;
            }
        }
        if raise_positions(tail, self.health.seen().max(self.last)).await.is_err() {
            return false;
        }
        if self.last == 0 {
            return true;
        }
        match entry_at(tail, self.last).await {
            Ok(Some(entry)) if entry.key == self.last_key => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        // What this point applied last is gone: trimmed while it was away,
        // or lost with a primary.
        let Ok(kept) = held_up_to(tail, self.last).await else { return false };
        let mut from = kept;
        loop {
            let Ok(entries) = read_after(tail, from, 1000).await else { return false };
            for entry in &entries {
                if let Says::Gap { after } = entry.says {
                    self.gap(after, entry.position);
                }
            }
            match entries.last() {
                Some(entry) if entries.len() == 1000 => from = entry.position,
                _ => break,
            }
        }
        self.reload(tail).await
    }

    /// The log says the positions after `after`, up to `up_to` (the gap
    /// entry's own, which a write lost with the primary may also claim), were lost:
    /// the point says how many it had acknowledged, and its writes there
    /// still waiting are refused (puts) or sent again (deletes). True if
    /// the point had applied some of them (then it must reload).
    fn gap(&mut self, after: u64, up_to: u64) -> bool {
        let (url, seen) = (&self.url, self.health.seen().max(self.last));
        if seen > after {
            let acknowledged = self.health.lost(after, up_to);
            if acknowledged > 0 {
                warn!(
                    target: LOG,
                    "The shared store at {url} lost its writes after position {after} (this point had seen up to {seen}): {acknowledged} registrations this point had acknowledged are gone (--redis-min-replicas 0 acknowledges what only the primary holds)"
                );
            } else {
                warn!(target: LOG, "The shared store at {url} lost its writes after position {after} (this point had seen up to {seen}); none of them was acknowledged by this point");
            }
        }
        let _ = self.changed.unbounded_send(Change::Lost { after, up_to });
        self.last > after
    }

    /// Everything again, at one log position. False if Redis went away.
    async fn reload(&mut self, con: &mut MultiplexedConnection) -> bool {
        let Ok(snapshot) = super::snapshot(con).await else { return false };
        info!(
            target: LOG,
            "Reloading {} registrations from the shared store",
            snapshot.registrations.len()
        );
        let Ok(last) = entry_at(con, snapshot.last_seq).await else { return false };
        self.last = snapshot.last_seq;
        self.last_key = last.map(|e| e.key).unwrap_or_default();
        self.health.reloaded(self.last);
        self.health.set_trouble(None);
        self.changed.unbounded_send(Change::Resync(snapshot)).is_ok()
    }

    /// Reads the log as it grows, until an error, or until Sentinel names
    /// another primary than the one `tail` reached at `epoch`.
    async fn tail(
        &mut self,
        tail: &mut MultiplexedConnection,
        epoch: u64,
    ) -> Result<(), redis::RedisError> {
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
                match entry.says {
                    Says::Change(change) => {
                        if self.changed.unbounded_send(Change::Replicated(change)).is_err() {
                            return Ok(());
                        }
                    }
                    Says::Gap { after } => {
                        if self.gap(after, entry.position) {
                            // What this point applied is gone: it reloads,
                            // and reads on from there.
                            if !self.reload(tail).await {
                                return Err(Primary::moved_error("the reload failed"));
                            }
                            break;
                        }
                    }
                    Says::Unknown => {}
                }
                self.last = entry.position;
                self.last_key = entry.key;
                self.health.applied(self.last);
            }
            if self.changed.is_closed() {
                return Ok(());
            }
            if self.primary.moved_since(epoch) {
                return Err(Primary::moved_error("Sentinel names another primary"));
            }
        }
    }
}

/// Every [`SWEEP_EVERY`], expires what Redis's clock says has expired; every
/// [`CLOCK_EVERY`], sets the point's clock on Redis's and says, at most
/// once a minute, if this machine's own clock is more than a second off.
async fn upkeep(primary: Arc<Primary>, url: String, health: Arc<Health>, clock: Clock) {
    let sweep = scripts::sweep();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut connection: Option<MultiplexedConnection> = None;
    let mut epoch = primary.epoch();
    let mut next_clock = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        async_io::Timer::after(SWEEP_EVERY).await;
        if primary.moved_since(epoch) {
            connection = None;
        }
        if connection.is_none() {
            epoch = primary.epoch();
            connection = primary.connect(&config).await.ok();
        }
        let Some(con) = &mut connection else { continue };
        let swept: redis::RedisResult<u64> = sweep
            .prepare_invoke()
            .key(&scripts::KEYS[..])
            .arg(SWEEP_BATCH)
            .arg(scripts::MIN_LOG)
            .invoke_async(con)
            .await;
        if swept.is_err() {
            connection = None;
            continue;
        }
        if Instant::now() < next_clock {
            continue;
        }
        next_clock = Instant::now() + CLOCK_EVERY;
        let Ok((reference, at)) = super::redis_time(con).await else { continue };
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

/// Raises the position counter past `top` if it is below, logging the gap
/// (see [`scripts`]): after a primary lost writes, the next positions come
/// after everything this point saw, so that no cookie skips them and no
/// lost write's position is given again.
pub(super) async fn raise_positions(
    con: &mut impl ConnectionLike,
    top: u64,
) -> redis::RedisResult<u64> {
    RAISE.prepare_invoke().key(&scripts::RAISE_KEYS[..]).arg(top).invoke_async(con).await
}

static RAISE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(scripts::raise);
