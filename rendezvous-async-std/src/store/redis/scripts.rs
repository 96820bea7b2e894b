//! What the registry looks like in Redis, and the Lua scripts that change
//! it: each write is one script, so Redis runs it atomically, and each
//! reads Redis's own clock (`TIME`), so that every point's writes and
//! expiries follow one time.
//!
//! Keys, all under `rendezvous:`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `format` | string | the layout's version, [`FORMAT`] |
//! | `reg` | hash | store key → `<position>\|<expiry ms>\|<encoded registration>` |
//! | `exp` | sorted set | store key → its expiry, in Redis's milliseconds |
//! | `peers`, `namespaces` | hashes | live registrations per peer, per namespace |
//! | `total` | string | live registrations in all |
//! | `pos` | string | the last position given: positions are dense |
//! | `log` | stream | every put and delete, as entry `0-<position>`, and every gap |
//!
//! The stream is trimmed as it is written (`XADD … MAXLEN ~`) to twice the
//! live registrations, and never below [`MIN_LOG`] entries: what Redis holds
//! stays proportional to what is live, whatever the TTLs. A point that falls
//! further behind than that reloads from `reg`.
//!
//! A primary that lost its last writes (a failover to a replica that
//! lagged) would give their positions again. The first point back raises
//! `pos` past every position it saw and logs a gap entry (`op gap`, `after`
//! the last position the primary still held) at the new position: every
//! point reading the log learns which positions were lost, and none is
//! given twice.

/// The layout's version; a Redis holding another is refused, not guessed at.
pub(super) const FORMAT: &str = "2";

/// The keys every script takes, in this order.
pub(super) const KEYS: [&str; 7] = [
    "rendezvous:reg",
    "rendezvous:peers",
    "rendezvous:namespaces",
    "rendezvous:total",
    "rendezvous:log",
    "rendezvous:exp",
    "rendezvous:pos",
];

pub(super) const FORMAT_KEY: &str = "rendezvous:format";
pub(super) const REG: &str = KEYS[0];
pub(super) const LOG: &str = KEYS[4];

/// Fewest log entries kept, whatever is live: room for a point to be a
/// few seconds behind a busy registry without reloading.
pub(super) const MIN_LOG: usize = 10_000;

/// Redis's clock in milliseconds, the log's length bound, and removal of a
/// registration (uncounted and logged as a delete at a new position).
const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep()
  return math.max(2 * tonumber(redis.call('GET', KEYS[4]) or '0'), tonumber(ARGV[#ARGV]))
end
local function split(key)
  local n = string.byte(key, 1)
  return string.sub(key, 2, 1 + n), string.sub(key, 2 + n)
end
local function remove(key, pos)
  local peer, ns = split(key)
  redis.call('HDEL', KEYS[1], key)
  redis.call('ZREM', KEYS[6], key)
  if redis.call('HINCRBY', KEYS[2], peer, -1) <= 0 then redis.call('HDEL', KEYS[2], peer) end
  if redis.call('HINCRBY', KEYS[3], ns, -1) <= 0 then redis.call('HDEL', KEYS[3], ns) end
  redis.call('DECR', KEYS[4])
  local at = redis.call('INCR', KEYS[7])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', keep(), '0-' .. at, 'op', 'del', 'key', key, 'seq', pos)
  return at
end
"#;

/// ARGV: store key, encoded registration, TTL in ms, the limits per peer,
/// per namespace and in all, the log's least length. Returns `{0, position,
/// expiry}`, or `{1|2, why}` for a limit reached (1: the peer's).
const PUT: &str = r#"
local key, payload = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[1], key) == 0 then
  local peer, ns = split(key)
  if tonumber(redis.call('HGET', KEYS[2], peer) or '0') >= tonumber(ARGV[4]) then
    return {1, 'peer already holds ' .. ARGV[4] .. ' registrations, the limit per peer'}
  end
  if tonumber(redis.call('HGET', KEYS[3], ns) or '0') >= tonumber(ARGV[5]) then
    return {2, 'namespace holds ' .. ARGV[5] .. ' registrations, the limit per namespace'}
  end
  if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[6]) then
    return {2, 'the shared registry holds ' .. ARGV[6] .. ' registrations, its limit'}
  end
  redis.call('HINCRBY', KEYS[2], peer, 1)
  redis.call('HINCRBY', KEYS[3], ns, 1)
  redis.call('INCR', KEYS[4])
end
local exp = now_ms() + tonumber(ARGV[3])
local pos = redis.call('INCR', KEYS[7])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', keep(), '0-' .. pos, 'op', 'put', 'key', key, 'exp', exp, 'payload', payload)
redis.call('HSET', KEYS[1], key, pos .. '|' .. exp .. '|' .. payload)
redis.call('ZADD', KEYS[6], exp, key)
return {0, pos, exp}
"#;

/// ARGV: store key, the highest position to remove, the log's least
/// length. Returns the delete's position, or 0 when nothing was removed (a
/// newer put replaced it, or it is gone already).
const DELETE: &str = r#"
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local pos = tonumber(string.match(value, '^(%d+)|'))
if pos > tonumber(ARGV[2]) then return 0 end
return remove(ARGV[1], pos)
"#;

/// ARGV: most registrations to expire at once, the log's least length.
/// Removes what has expired by Redis's clock; returns how many.
const SWEEP: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, key in ipairs(due) do
  local value = redis.call('HGET', KEYS[1], key)
  if value then
    remove(key, tonumber(string.match(value, '^(%d+)|')))
  else
    redis.call('ZREM', KEYS[6], key)
  end
end
return #due
"#;

/// KEYS: `pos`, `log`; ARGV: the highest position seen. Below it, `pos`
/// jumps past it and a gap entry says what was skipped. Returns the gap's
/// position, or 0 when `pos` was not below.
const RAISE: &str = r#"
local pos = tonumber(redis.call('GET', KEYS[1]) or '0')
local top = tonumber(ARGV[1])
if pos >= top then return 0 end
local at = top + 1
redis.call('SET', KEYS[1], at)
redis.call('XADD', KEYS[2], '0-' .. at, 'op', 'gap', 'after', pos)
return at
"#;

/// The keys [`raise`] takes.
pub(super) const RAISE_KEYS: [&str; 2] = [KEYS[6], KEYS[4]];

pub(super) fn raise() -> redis::Script {
    redis::Script::new(RAISE)
}

pub(super) fn put() -> redis::Script {
    redis::Script::new(&format!("{COMMON}{PUT}"))
}

pub(super) fn delete() -> redis::Script {
    redis::Script::new(&format!("{COMMON}{DELETE}"))
}

pub(super) fn sweep() -> redis::Script {
    redis::Script::new(&format!("{COMMON}{SWEEP}"))
}

/// The position a stream entry id (`0-<position>`) stands for.
pub(super) fn position_of(id: &str) -> Option<u64> {
    match id.split_once('-')? {
        ("0", n) => n.parse().ok(),
        _ => None,
    }
}

/// The stream entry id of `position`.
pub(super) fn id_of(position: u64) -> String {
    format!("0-{position}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_the_sequence_part_of_stream_ids() {
        assert_eq!(position_of("0-42"), Some(42));
        assert_eq!(id_of(42), "0-42");
        assert_eq!(position_of("1764470400000-7"), None, "an id of the earlier, timed layout");
        assert_eq!(position_of("garbage"), None);
    }
}
