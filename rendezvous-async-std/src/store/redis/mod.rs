//! A registry shared by several points through one Redis.
//!
//! Every write is one Lua script (`scripts.rs`), so it is atomic: a put
//! checks the limits per peer, per namespace and in all across every point,
//! takes the next position, appends to one stream and records the
//! registration with an expiry read from Redis's own clock; a delete
//! removes it only if no newer put replaced it. The stream's positions are
//! the registrations' positions everywhere, dense, so a cookie from one
//! point continues at any other. Each point follows the stream into its own
//! in-memory index (discovers never wait on Redis), and expiry is Redis's:
//! every point sweeps what has expired by Redis's clock, and the point's own
//! clock follows Redis's, so that one machine with a wrong clock cannot
//! empty the registry for everyone.
//!
//! With Redis slow or unreachable, puts are refused `E_UNAVAILABLE` within a
//! second, deletes are retried until they commit, and discovers go on from
//! memory. At start and after a reconnect the point checks Redis's
//! settings: without an append-only file a Redis restart loses
//! acknowledged registrations (a warning); an evicting `maxmemory-policy`
//! would drop registrations and the counts that enforce the limits (a
//! refusal, unless accepted).

mod follower;
mod primary;
mod scripts;
mod url;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use redis::Value;
use redis::aio::ConnectionLike;
use rendezvous_libp2p::core::Limits;
use rendezvous_libp2p::core::store::{Replicated, split_store_key};
use rendezvous_libp2p::store::{Change, Commit, Snapshot, Store, StoreAction, StoredRegistration};
use rendezvous_libp2p::{Clock, system_unix_time};
use tracing::warn;

pub use url::redacted;

use super::StoreError;
use follower::Says;

const LOG: &str = "rendezvous::server";
/// How long a command may take before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// How a point uses its Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisOptions {
    /// Accept a Redis whose `maxmemory-policy` evicts any key
    /// (`allkeys-*`): it may drop registrations and the counts that enforce
    /// the limits. Off by default: such a Redis is refused at start.
    pub allow_eviction: bool,
    /// Acknowledge a write only once this many replicas hold it (`WAIT`);
    /// one they do not take within half a second is refused
    /// `E_UNAVAILABLE` (a delete is retried). 0, the default, acknowledges
    /// what the primary holds: a primary that fails before its replicas
    /// have a write loses it at a failover, and the point then says how
    /// many of its acknowledged registrations were lost.
    pub min_replicas: usize,
}

/// Limits checked in Redis, across every point.
#[derive(Clone, Copy, Debug)]
struct SharedLimits {
    per_peer: usize,
    per_namespace: usize,
    total: usize,
}

/// What the writer, the follower and the point share: why the store cannot
/// take writes now, and how far this machine's clock is from Redis's.
#[derive(Debug, Default)]
struct Health {
    trouble: Mutex<Option<String>>,
    /// This machine's wall clock minus Redis's, in nanoseconds; `i64::MIN`
    /// until first read.
    clock_offset: AtomicI64,
    /// This point's last writes that Redis (and, with `min_replicas`, its
    /// replicas) took, by position, and whether the point answered them
    /// (it does once it reads them back from the log): to count those a
    /// failover lost.
    taken: Mutex<BTreeMap<u64, bool>>,
    /// The highest position a write of this point was given.
    highest_written: AtomicU64,
    /// The last position this point read from the log.
    applied: AtomicU64,
    /// The follower found Redis's settings refused: the writer must drop
    /// its connection and check them again before writing more, since a
    /// write it makes now would wait for a follower that cannot follow.
    settings_refused: AtomicBool,
}

/// Writes remembered, to count what a failover lost.
const REMEMBERED: usize = 100_000;

impl Health {
    fn new() -> Self {
        Health { clock_offset: AtomicI64::new(i64::MIN), ..Health::default() }
    }

    fn set_trouble(&self, trouble: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = trouble;
    }

    /// The highest position this point has seen: the next ones Redis gives
    /// must come after it.
    fn seen(&self) -> u64 {
        self.highest_written.load(Ordering::Relaxed).max(self.applied.load(Ordering::Relaxed))
    }

    /// A write of this point was given `position`.
    fn written(&self, position: u64) {
        self.highest_written.fetch_max(position, Ordering::Relaxed);
    }

    /// Redis took a write of this point at `position`; it is answered now
    /// if the log was read past it already.
    fn taken(&self, position: u64) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.len() >= REMEMBERED {
            taken.pop_first();
        }
        taken.insert(position, position <= self.applied.load(Ordering::Relaxed));
    }

    /// The point read the log's entry at `position`: a write of its own
    /// there is answered.
    fn applied(&self, position: u64) {
        self.applied.store(position, Ordering::Relaxed);
        if let Some(answered) =
            self.taken.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&position)
        {
            *answered = true;
        }
    }

    /// The positions after `after`, up to `up_to`, were lost: how many of
    /// this point's writes there it had answered (as far as it remembers);
    /// it forgets them.
    fn lost(&self, after: u64, up_to: u64) -> usize {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let mut lost = taken.split_off(&(after + 1));
        let later = lost.split_off(&up_to.saturating_add(1));
        taken.extend(later);
        lost.values().filter(|answered| **answered).count()
    }

    /// The point reloaded everything at `position`: its writes up to there
    /// are answered.
    fn reloaded(&self, position: u64) {
        self.applied.store(position, Ordering::Relaxed);
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        for (_, answered) in taken.range_mut(..=position) {
            *answered = true;
        }
    }
}

/// The shared store, as the server behaviour drives it.
pub struct RedisStore {
    actions: UnboundedSender<(StoreAction, Instant)>,
    commits: UnboundedReceiver<Commit>,
    changes: UnboundedReceiver<Change>,
    health: Arc<Health>,
    clock: Clock,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`, `rediss://…`, a unix
    /// socket, or `redis+sentinel://…/MASTER`, the primary its Sentinels
    /// name, followed through failovers), checks Redis's settings and the
    /// layout it holds, reads the
    /// whole registry at one log position, and starts writing and
    /// following. The limits of `limits` hold across every point sharing the
    /// Redis.
    pub async fn connect(
        url: &str,
        limits: &Limits,
        options: &RedisOptions,
    ) -> Result<(RedisStore, Snapshot), StoreError> {
        let shown = redacted(url);
        let failed =
            |e: &dyn std::fmt::Display| StoreError(format!("cannot use redis at {shown}: {e}"));
        let primary = Arc::new(primary::Primary::new(url).map_err(|e| failed(&e))?);
        crate::runtime::spawn(primary::Primary::watch(Arc::downgrade(&primary)));
        let patience = Duration::from_secs(10);
        let mut writer = primary
            .first_connection(&writer::link_config(), patience)
            .await
            .map_err(|e| failed(&e))?;
        for warning in check_settings(&mut writer, options).await.map_err(|e| failed(&e))? {
            warn!(target: LOG, "Redis at {shown}: {warning}");
        }
        check_format(&mut writer).await.map_err(|e| failed(&e))?;
        // The point's clock is Redis's from the start, so that what it
        // loads expires by Redis's time.
        let clock = Clock::new();
        let (reference, at) = redis_time(&mut writer).await.map_err(|e| failed(&e))?;
        clock.follow(reference, at);
        let health = Arc::new(Health::new());
        let offset = offset_from(reference, at);
        health.clock_offset.store(offset, Ordering::Relaxed);
        if offset.unsigned_abs() > 1_000_000_000 {
            let side = if offset > 0 { "ahead of" } else { "behind" };
            warn!(
                target: LOG,
                "This machine's clock is {:.1} s {side} the shared store's at {shown}; expiry follows the store's clock",
                offset.unsigned_abs() as f64 / 1e9
            );
        }
        let snapshot = snapshot(&mut writer).await.map_err(|e| failed(&e))?;
        // Everything up to there is applied: a writer that reconnects
        // before the follower reads an entry raises positions past it.
        health.reloaded(snapshot.last_seq);
        let last =
            follower::entry_at(&mut writer, snapshot.last_seq).await.map_err(|e| failed(&e))?;
        let limits = SharedLimits {
            per_peer: limits.max_registrations_per_peer,
            per_namespace: limits.max_registrations_per_namespace,
            total: limits.max_registrations,
        };
        let (actions, queued) = unbounded();
        let (committed, commits) = unbounded();
        let (changed, changes) = unbounded();
        let writes = writer::Writer::new(
            primary.clone(),
            committed,
            limits,
            health.clone(),
            options.clone(),
        );
        crate::runtime::spawn(writes.run(queued, writer));
        let follower = follower::Follower {
            primary,
            last: snapshot.last_seq,
            last_key: last.map(|e| e.key).unwrap_or_default(),
            changed,
            url: shown,
            options: options.clone(),
            health: health.clone(),
            clock: clock.clone(),
        };
        crate::runtime::spawn(follower.run());
        Ok((RedisStore { actions, commits, changes, health, clock }, snapshot))
    }

    /// The point's clock: Redis's time, carried by this machine's monotonic
    /// clock and set on Redis's again every few seconds. Build the server
    /// behaviour with it, so that every point decides expiry by one time.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }
}

fn offset_seconds(health: &Health) -> Option<f64> {
    let nanos = health.clock_offset.load(Ordering::Relaxed);
    (nanos != i64::MIN).then(|| nanos as f64 / 1e9)
}

impl Store for RedisStore {
    fn submit(&mut self, action: StoreAction) {
        let _ = self.actions.unbounded_send((action, Instant::now()));
    }

    fn poll_commit(&mut self, cx: &mut Context<'_>) -> Poll<Commit> {
        match self.commits.poll_next_unpin(cx) {
            Poll::Ready(Some(commit)) => Poll::Ready(commit),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Change> {
        match self.changes.poll_next_unpin(cx) {
            Poll::Ready(Some(change)) => Poll::Ready(change),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn trouble(&self) -> Option<String> {
        self.health.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn clock_offset(&self) -> Option<f64> {
        offset_seconds(&self.health)
    }
}

/// What the health endpoints say while Redis cannot be reached.
fn unreachable(error: &dyn std::fmt::Display) -> String {
    format!("the shared store is unreachable: {error}")
}

/// What the health endpoints say while the point refuses Redis's settings
/// or layout.
fn refuses(refusal: &str) -> String {
    format!("the shared store refuses: {refusal}")
}

/// Reads `appendonly` and `maxmemory-policy`: warnings to log, or why the
/// point must not use this Redis.
async fn check_settings(
    con: &mut impl ConnectionLike,
    options: &RedisOptions,
) -> Result<Vec<String>, String> {
    let appendonly = config_get(con, "appendonly").await;
    let policy = config_get(con, "maxmemory-policy").await;
    let (appendonly, policy) = match (appendonly, policy) {
        (Ok(a), Ok(p)) => (a, p),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(vec![format!(
                "cannot read its settings ({e}); make sure appendonly is yes and maxmemory-policy is noeviction"
            )]);
        }
    };
    let mut warnings = Vec::new();
    if appendonly != "yes" {
        warnings.push(
            "appendonly is off: a Redis restart loses acknowledged registrations (set appendonly yes)"
                .to_owned(),
        );
    }
    if policy.starts_with("allkeys-") {
        let risk = format!(
            "maxmemory-policy is {policy}: Redis may evict registrations and the counts that enforce the limits"
        );
        if !options.allow_eviction {
            return Err(format!(
                "{risk}; set maxmemory-policy noeviction, or pass --redis-allow-eviction to accept it"
            ));
        }
        warnings.push(format!("{risk} (accepted by --redis-allow-eviction)"));
    }
    Ok(warnings)
}

async fn config_get(con: &mut impl ConnectionLike, name: &str) -> redis::RedisResult<String> {
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(con).await?;
    Ok(pair.get(1).cloned().unwrap_or_default())
}

/// Claims an empty Redis for this layout, or checks that it holds this
/// layout.
async fn check_format(con: &mut impl ConnectionLike) -> Result<(), String> {
    let format: Option<String> = redis::cmd("GET")
        .arg(scripts::FORMAT_KEY)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    match format.as_deref() {
        Some(scripts::FORMAT) => Ok(()),
        Some(other) => Err(format!(
            "it holds a registry of layout {other}, this version reads {}; it was left as it is",
            scripts::FORMAT
        )),
        None => {
            let old: i64 = redis::cmd("EXISTS")
                .arg(scripts::REG)
                .arg(scripts::LOG)
                .arg("rendezvous:order")
                .query_async(con)
                .await
                .map_err(|e| e.to_string())?;
            if old > 0 {
                return Err("it holds a registry written by an earlier version (positions by \
                            time); remove its rendezvous:* keys to start afresh (peers register \
                            again within their refresh interval)"
                    .to_owned());
            }
            let _: Value = redis::cmd("SET")
                .arg(scripts::FORMAT_KEY)
                .arg(scripts::FORMAT)
                .arg("NX")
                .query_async(con)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

/// Every registration, as it stood at one log position: the log's last
/// position, then the registry (HSCAN, which is no snapshot), then every log
/// entry after that position applied on top, up to the log's end. The
/// result is what the registry held at that end, so that a point serving it
/// never gives a cookie past an entry it did not hold. Tried again if the
/// log was trimmed past the first position meanwhile.
async fn snapshot(con: &mut impl ConnectionLike) -> redis::RedisResult<Snapshot> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let first = last_position(con).await?;
        let mut held: BTreeMap<Vec<u8>, StoredRegistration> = BTreeMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, fields): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                .arg(scripts::REG)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(con)
                .await?;
            for pair in fields.chunks_exact(2) {
                if let Some(registration) = decode_value(&pair[1]) {
                    held.insert(pair[0].clone(), registration);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut last = first;
        loop {
            let entries = follower::read_after(con, last, 1000).await?;
            let read = entries.len();
            for entry in entries {
                last = last.max(entry.position);
                match entry.says {
                    Says::Change(Replicated::Put(put)) => {
                        let key = put.key();
                        if held.get(&key).is_none_or(|old| old.seq < put.seq) {
                            held.insert(key, put);
                        }
                    }
                    Says::Change(Replicated::Delete { peer, namespace, seq, .. }) => {
                        let key = rendezvous_libp2p::store::store_key(&peer, &namespace);
                        if held.get(&key).is_some_and(|old| old.seq <= seq) {
                            held.remove(&key);
                        }
                    }
                    _ => {}
                }
            }
            if read < 1000 {
                break;
            }
        }
        if first == 0 || follower::entry_at(con, first).await?.is_some() || attempts >= 5 {
            let registrations = held.into_values().collect();
            return Ok(Snapshot { registrations, last_seq: last });
        }
    }
}

/// The log's last position, 0 for an empty log.
async fn last_position(con: &mut impl ConnectionLike) -> redis::RedisResult<u64> {
    let last: Vec<(String, Value)> = redis::cmd("XREVRANGE")
        .arg(scripts::LOG)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    Ok(last.first().and_then(|(id, _)| scripts::position_of(id)).unwrap_or(0))
}

/// `<position>|<expiry ms>|<encoded registration>`.
fn decode_value(value: &[u8]) -> Option<StoredRegistration> {
    let mut parts = value.splitn(3, |b| *b == b'|');
    let position = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let expires: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let mut registration = StoredRegistration::decode(parts.next()?).ok()?;
    registration.seq = position;
    registration.expires = expiry(expires);
    Some(registration)
}

/// An expiry in Redis's milliseconds as the core's time (Unix time).
fn expiry(ms: u64) -> rendezvous_libp2p::core::Timestamp {
    rendezvous_libp2p::core::Timestamp::from_duration(Duration::from_millis(ms))
}

/// Redis's clock now, read with `TIME`, and when on this machine's
/// monotonic clock it was read (halfway through the round trip).
async fn redis_time(con: &mut impl ConnectionLike) -> redis::RedisResult<(Duration, Instant)> {
    let sent = Instant::now();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(con).await?;
    let at = sent + sent.elapsed() / 2;
    Ok((Duration::from_secs(secs) + Duration::from_micros(micros), at))
}

/// This machine's wall clock minus `reference` (read at `at`), in
/// nanoseconds.
fn offset_from(reference: Duration, at: Instant) -> i64 {
    let here = system_unix_time().saturating_sub(at.elapsed());
    let nanos = |d: Duration| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX);
    i64::try_from(nanos(here) - nanos(reference)).unwrap_or(i64::MAX)
}

/// The peer and namespace of a store key, for log entries.
fn key_parts(key: &[u8]) -> Option<(libp2p_identity::PeerId, rendezvous_libp2p::core::Namespace)> {
    split_store_key(key)
}
