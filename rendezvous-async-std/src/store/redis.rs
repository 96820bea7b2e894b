//! A registry shared by several points through one Redis.
//!
//! Every write is one Lua script, so it is atomic: a put checks the limits
//! per peer, per namespace and in all across every point, appends to one
//! stream, and records the registration; a delete removes it only if no
//! newer put replaced it, and appends only if it removed something (so an
//! expiry noticed by every point is logged once). The stream entry's id is
//! the registration's position everywhere: a cookie from one point
//! continues at any other. Each point follows the stream into its own
//! in-memory index, so discovers never wait on Redis; a point that fell
//! behind a trim, or starts, loads the whole registry first.
//!
//! Keys, all under `rendezvous:`: `reg` (hash: store key → `<stream id>|`
//! and the encoded registration), `peers` and `namespaces` (hashes of
//! counts), `total`, `log` (the stream), `order` (a sorted set of the
//! stream milliseconds of live registrations, to trim the stream below the
//! oldest).
//!
//! With Redis unreachable, puts are refused `E_UNAVAILABLE` within a second
//! and deletes wait to be retried; discovers go on from memory.

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, Script, Value};
use rendezvous_libp2p::core::Limits;
use rendezvous_libp2p::core::proto::ResponseStatus;
use rendezvous_libp2p::core::store::{Replicated, split_store_key};
use rendezvous_libp2p::store::{
    Change, Commit, Snapshot, Store, StoreAction, StoredRegistration, store_key,
};
use tracing::{info, warn};

use super::StoreError;

const LOG: &str = "rendezvous::server";
const KEYS: [&str; 6] = [
    "rendezvous:reg",
    "rendezvous:peers",
    "rendezvous:namespaces",
    "rendezvous:total",
    "rendezvous:log",
    "rendezvous:order",
];
const STREAM: &str = "rendezvous:log";
/// How long a write may take before its REGISTER is refused.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the tail blocks on the stream before asking again.
const BLOCK: Duration = Duration::from_millis(1000);
/// Writes sent to Redis at once, in order (one connection keeps the order).
const WRITES_IN_FLIGHT: usize = 64;
/// Deletes kept for retrying while Redis is unreachable.
const MAX_WAITING_DELETES: usize = 100_000;
/// How often the stream is trimmed below the oldest live registration.
const TRIM_EVERY: Duration = Duration::from_secs(60);

const PUT: &str = r#"
local key, peer, ns, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', KEYS[1], key) == 0 then
  if tonumber(redis.call('HGET', KEYS[2], peer) or '0') >= tonumber(ARGV[5]) then
    return {1, 'peer already holds ' .. ARGV[5] .. ' registrations, the limit per peer'}
  end
  if tonumber(redis.call('HGET', KEYS[3], ns) or '0') >= tonumber(ARGV[6]) then
    return {2, 'namespace holds ' .. ARGV[6] .. ' registrations, the limit per namespace'}
  end
  if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[7]) then
    return {2, 'the shared registry holds ' .. ARGV[7] .. ' registrations, its limit'}
  end
  redis.call('HINCRBY', KEYS[2], peer, 1)
  redis.call('HINCRBY', KEYS[3], ns, 1)
  redis.call('INCR', KEYS[4])
end
local id = redis.call('XADD', KEYS[5], '*', 'op', 'put', 'key', key, 'payload', payload)
redis.call('HSET', KEYS[1], key, id .. '|' .. payload)
redis.call('ZADD', KEYS[6], tonumber(string.match(id, '^(%d+)')), key)
return {0, id}
"#;

const DELETE: &str = r#"
local key, peer, ns = ARGV[1], ARGV[2], ARGV[3]
local value = redis.call('HGET', KEYS[1], key)
if not value then return 0 end
local ms, n = string.match(value, '^(%d+)-(%d+)|')
local gone_ms, gone_n = string.match(ARGV[4], '^(%d+)-(%d+)$')
ms, n, gone_ms, gone_n = tonumber(ms), tonumber(n), tonumber(gone_ms), tonumber(gone_n)
if ms > gone_ms or (ms == gone_ms and n > gone_n) then return 0 end
redis.call('HDEL', KEYS[1], key)
redis.call('ZREM', KEYS[6], key)
if redis.call('HINCRBY', KEYS[2], peer, -1) <= 0 then redis.call('HDEL', KEYS[2], peer) end
if redis.call('HINCRBY', KEYS[3], ns, -1) <= 0 then redis.call('HDEL', KEYS[3], ns) end
redis.call('DECR', KEYS[4])
local id = string.match(value, '^([^|]+)|')
redis.call('XADD', KEYS[5], '*', 'op', 'del', 'key', key, 'seq', id)
return 1
"#;

const TRIM: &str = r#"
local oldest = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if oldest[2] then
  return redis.call('XTRIM', KEYS[5], 'MINID', '~', oldest[2] .. '-0')
end
return redis.call('XTRIM', KEYS[5], 'MAXLEN', '~', 0)
"#;

/// A stream entry id (`<ms>-<n>`) as a position: `ms << 20 | n`.
fn seq_of(id: &str) -> Option<u64> {
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    (n < 1 << 20).then_some(ms << 20 | n)
}

fn id_of(seq: u64) -> String {
    format!("{}-{}", seq >> 20, seq & ((1 << 20) - 1))
}

/// Limits checked in Redis, across every point.
#[derive(Clone, Copy, Debug)]
struct SharedLimits {
    per_peer: usize,
    per_namespace: usize,
    total: usize,
}

/// The shared store, as the server behaviour drives it.
pub struct RedisStore {
    actions: UnboundedSender<StoreAction>,
    commits: UnboundedReceiver<Commit>,
    changes: UnboundedReceiver<Change>,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`), reads the whole registry,
    /// and starts writing and following. The limits of `limits` hold across
    /// every point sharing the Redis.
    pub async fn connect(url: &str, limits: &Limits) -> Result<(RedisStore, Snapshot), StoreError> {
        let shown = redacted(url);
        let failed =
            |e: &dyn std::fmt::Display| StoreError(format!("cannot use redis at {shown}: {e}"));
        let client = Client::open(url).map_err(|e| failed(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut writer =
            client.get_connection_manager_with_config(config).await.map_err(|e| failed(&e))?;
        let (last_id, snapshot) = snapshot(&mut writer).await.map_err(|e| failed(&e))?;
        let limits = SharedLimits {
            per_peer: limits.max_registrations_per_peer,
            per_namespace: limits.max_registrations_per_namespace,
            total: limits.max_registrations,
        };
        let (actions, queued) = unbounded();
        let (committed, commits) = unbounded();
        let (changed, changes) = unbounded();
        crate::runtime::spawn(write(writer.clone(), queued, committed, limits));
        crate::runtime::spawn(follow(client, writer, last_id, changed, shown));
        Ok((RedisStore { actions, commits, changes }, snapshot))
    }
}

/// `url` as it may be logged: the password, if any, replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
            let hidden = if user_info.contains(':') { format!("{user}:***") } else { "***".into() };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl Store for RedisStore {
    fn submit(&mut self, action: StoreAction) {
        let _ = self.actions.unbounded_send(action);
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
}

/// The stream's last id, then every registration: entries after that id
/// are applied again on top, which changes nothing where they are older.
async fn snapshot(con: &mut ConnectionManager) -> redis::RedisResult<(String, Snapshot)> {
    let last: Vec<(String, Value)> = redis::cmd("XREVRANGE")
        .arg(STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    let last_id = last.first().map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
    let mut snapshot = Snapshot { last_seq: seq_of(&last_id).unwrap_or(0), ..Snapshot::default() };
    let mut cursor = 0u64;
    loop {
        let (next, fields): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(KEYS[0])
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        for pair in fields.chunks_exact(2) {
            if let Some(registration) = decode_value(&pair[1]) {
                snapshot.registrations.push(registration);
            }
        }
        if next == 0 {
            return Ok((last_id, snapshot));
        }
        cursor = next;
    }
}

/// `<stream id>|<encoded registration>`, with the id as its position.
fn decode_value(value: &[u8]) -> Option<StoredRegistration> {
    let split = value.iter().position(|b| *b == b'|')?;
    let seq = seq_of(std::str::from_utf8(&value[..split]).ok()?)?;
    let mut registration = StoredRegistration::decode(&value[split + 1..]).ok()?;
    registration.seq = seq;
    Some(registration)
}

static PUT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUT));
static DELETE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE));
static TRIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TRIM));

/// What one write came to.
enum Written {
    Put(rendezvous_libp2p::store::ActionId, redis::RedisResult<(i64, String)>),
    Delete(StoreAction, bool),
}

/// Runs one action's script.
async fn run(mut con: ConnectionManager, action: StoreAction, limits: SharedLimits) -> Written {
    match action {
        StoreAction::Put { id, registration } => {
            let mut invocation = PUT_SCRIPT.prepare_invoke();
            invocation
                .key(&KEYS[..])
                .arg(registration.key())
                .arg(registration.peer.to_bytes())
                .arg(registration.namespace.as_str())
                .arg(registration.encode())
                .arg(limits.per_peer)
                .arg(limits.per_namespace)
                .arg(limits.total);
            Written::Put(id, invocation.invoke_async(&mut con).await)
        }
        StoreAction::Delete { ref peer, ref namespace, seq, .. } => {
            let mut invocation = DELETE_SCRIPT.prepare_invoke();
            invocation
                .key(&KEYS[..])
                .arg(store_key(peer, namespace))
                .arg(peer.to_bytes())
                .arg(namespace.as_str())
                .arg(id_of(seq));
            let done = invocation.invoke_async::<i64>(&mut con).await.is_ok();
            Written::Delete(action, done)
        }
        _ => Written::Delete(action, true),
    }
}

/// Runs the scripts in order, up to `WRITES_IN_FLIGHT` at once on one
/// connection (which keeps their order), and reports every put's fate.
/// Deletes that fail wait, bounded, and go again once Redis answers.
async fn write(
    con: ConnectionManager,
    mut queued: UnboundedReceiver<StoreAction>,
    committed: UnboundedSender<Commit>,
    limits: SharedLimits,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut waiting: VecDeque<StoreAction> = VecDeque::new();
    let mut open = true;
    let mut trimmed = std::time::Instant::now();
    while open || !in_flight.is_empty() {
        let room = in_flight.len() < WRITES_IN_FLIGHT;
        let next = if open && room {
            queued.next().boxed().fuse()
        } else {
            futures::future::pending().boxed().fuse()
        };
        let mut next = next;
        futures::select! {
            action = next => match action {
                Some(action) => in_flight.push_back(run(con.clone(), action, limits)),
                None => open = false,
            },
            written = in_flight.select_next_some() => match written {
                Written::Put(id, answer) => {
                    let commit = put_commit(id, answer);
                    if matches!(commit, Commit::Logged { .. }) {
                        // Redis answers again: the deletes that waited go now.
                        for action in waiting.drain(..) {
                            in_flight.push_back(run(con.clone(), action, limits));
                        }
                    }
                    let _ = committed.unbounded_send(commit);
                }
                Written::Delete(action, false) => {
                    if waiting.len() >= MAX_WAITING_DELETES {
                        waiting.pop_front();
                    }
                    waiting.push_back(action);
                }
                Written::Delete(_, true) => {}
            },
        }
        if trimmed.elapsed() >= TRIM_EVERY {
            trimmed = std::time::Instant::now();
            let _ = TRIM_SCRIPT
                .prepare_invoke()
                .key(&KEYS[..])
                .invoke_async::<i64>(&mut con.clone())
                .await;
        }
    }
}

fn put_commit(
    id: rendezvous_libp2p::store::ActionId,
    answer: redis::RedisResult<(i64, String)>,
) -> Commit {
    match answer {
        Ok((0, stream_id)) => match seq_of(&stream_id) {
            Some(seq) => Commit::Logged { id, seq },
            None => Commit::Refused {
                id,
                status: ResponseStatus::EInternalError,
                reason: format!("redis gave the unreadable stream id {stream_id}"),
            },
        },
        Ok((1, reason)) => Commit::Refused { id, status: ResponseStatus::ENotAuthorized, reason },
        Ok((_, reason)) => Commit::Refused { id, status: ResponseStatus::EUnavailable, reason },
        Err(error) => Commit::Refused {
            id,
            status: ResponseStatus::EUnavailable,
            // Sent to the requester: no address or credentials of ours.
            reason: format!("the shared store is unreachable: {error}"),
        },
    }
}

/// Follows the stream from `last_id` on its own connection (a blocking read
/// would hold up writes behind it), reconnecting with backoff; resyncs from
/// a snapshot when the entries it missed were trimmed.
async fn follow(
    client: Client,
    mut snapshots: ConnectionManager,
    mut last_id: String,
    changed: UnboundedSender<Change>,
    url: String,
) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let tail: redis::RedisResult<MultiplexedConnection> =
            client.get_multiplexed_async_connection_with_config(&config).await;
        let mut tail = match tail {
            Ok(tail) => tail,
            Err(error) => {
                if !std::mem::replace(&mut lost, true) {
                    warn!(target: LOG, "Lost the shared store at {url}: {error}; retrying");
                }
                async_io::Timer::after(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if std::mem::replace(&mut lost, false) {
            info!(target: LOG, "Reconnected to the shared store at {url}");
            if !still_there(&mut tail, &last_id).await {
                match snapshot(&mut snapshots).await {
                    Ok((id, snapshot)) => {
                        info!(target: LOG, "Fell behind the shared log: reloading {} registrations", snapshot.registrations.len());
                        last_id = id;
                        if changed.unbounded_send(Change::Resync(snapshot)).is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        lost = true;
                        continue;
                    }
                }
            }
        }
        backoff = Duration::from_millis(100);
        loop {
            let options =
                StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(1000);
            let read: redis::RedisResult<Option<StreamReadReply>> =
                redis::AsyncCommands::xread_options(
                    &mut tail,
                    &[STREAM],
                    &[last_id.as_str()],
                    &options,
                )
                .await;
            let reply = match read {
                Ok(reply) => reply,
                Err(error) => {
                    warn!(target: LOG, "Lost the shared store at {url}: {error}; retrying");
                    lost = true;
                    break;
                }
            };
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                if let Some(change) = change_of(&entry)
                    && changed.unbounded_send(Change::Replicated(change)).is_err()
                {
                    return;
                }
                last_id = entry.id;
            }
        }
    }
}

/// Whether the entry at `id` is still in the stream: then nothing after it
/// was trimmed, and following can resume there.
async fn still_there(con: &mut MultiplexedConnection, id: &str) -> bool {
    if id == "0-0" {
        let first: redis::RedisResult<Vec<(String, Value)>> = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(con)
            .await;
        return first.is_ok_and(|f| f.is_empty());
    }
    let at: redis::RedisResult<Vec<(String, Value)>> =
        redis::cmd("XRANGE").arg(STREAM).arg(id).arg(id).query_async(con).await;
    at.is_ok_and(|entries| !entries.is_empty())
}

fn change_of(entry: &redis::streams::StreamId) -> Option<Replicated> {
    let op: String = entry.get("op")?;
    let key: Vec<u8> = entry.get("key")?;
    match op.as_str() {
        "put" => {
            let payload: Vec<u8> = entry.get("payload")?;
            let mut registration = StoredRegistration::decode(&payload).ok()?;
            registration.seq = seq_of(&entry.id)?;
            Some(Replicated::Put(registration))
        }
        "del" => {
            let (peer, namespace) = split_store_key(&key)?;
            let gone: String = entry.get("seq")?;
            Some(Replicated::Delete { peer, namespace, seq: seq_of(&gone)? })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_logged_without_its_password() {
        assert_eq!(redacted("redis://:s3cret@db:6379/2"), "redis://:***@db:6379/2");
        assert_eq!(redacted("rediss://app:s3cret@db/0"), "rediss://app:***@db/0");
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn stream_ids_and_positions_convert_both_ways_in_order() {
        let a = seq_of("1764470400000-0").unwrap();
        let b = seq_of("1764470400000-7").unwrap();
        let c = seq_of("1764470400001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(id_of(b), "1764470400000-7");
        assert_eq!(seq_of("garbage"), None);
    }
}
