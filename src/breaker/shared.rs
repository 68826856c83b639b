//! The breaker's counts in Redis, shared by every relay that uses the same Redis: one Lua
//! script per message drops the leaks that left the window, adds this one, counts, and trips
//! (a key with a time to live) in one atomic step, Redis's own pattern for sliding-window
//! rate limiters (a sorted set of timestamps). Every call has a short deadline; the caller
//! falls back to local counts on any error.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

use super::counts::{KeyStatus, Limits, Trip, Verdict};

/// Longest wait for Redis on the path of an SMTP reply.
const DEADLINE: Duration = Duration::from_millis(500);
/// After a failed connection, wait this long before trying to connect again.
const RECONNECT_EVERY: Duration = Duration::from_secs(2);
/// Key prefix of the sorted sets of leak times.
const LEAKS: &str = "bccguard:breaker:leaks:";
/// Key prefix of the trips (value `at:until:count`, expiring with the trip).
const TRIPS: &str = "bccguard:breaker:trip:";

/// KEYS: leaks, trip. ARGV: now, window_ms, leaks, duration_ms, leak (0|1), member.
/// Returns {1, trip} tripped before, {2, trip} tripped now, {0, count} open.
const JUDGE: &str = r"
local trip = redis.call('GET', KEYS[2])
if trip then return {1, trip} end
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local count = redis.call('ZCARD', KEYS[1])
if ARGV[5] == '1' and count >= tonumber(ARGV[3]) then
  local value = ARGV[1] .. ':' .. (now + tonumber(ARGV[4])) .. ':' .. count
  redis.call('SET', KEYS[2], value, 'PX', ARGV[4])
  redis.call('DEL', KEYS[1])
  return {2, value}
end
return {0, tostring(count)}
";

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A command or connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the deadline.
    #[error("redis: no answer within {DEADLINE:?}")]
    Timeout,
    /// A recent call failed; not trying again yet.
    #[error("redis: unreachable (the last attempt failed; trying again shortly)")]
    Waiting,
    /// An answer that is not what the script returns.
    #[error("redis: unexpected answer {0:?}")]
    Answer(String),
}

/// A lazily connected Redis.
pub struct Shared {
    client: redis::Client,
    script: redis::Script,
    conn: Mutex<Connection>,
    /// After a failure, Redis is not asked again before this (so a Redis that does not
    /// answer costs one deadline per interval, not one per message).
    pause_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

#[derive(Default)]
struct Connection {
    manager: Option<ConnectionManager>,
    failed_at: Option<tokio::time::Instant>,
}

impl Shared {
    /// A store for `url` (not connected yet).
    pub fn new(url: &str) -> Result<Shared, SharedError> {
        Ok(Shared {
            client: redis::Client::open(url)?,
            script: redis::Script::new(JUDGE),
            conn: Mutex::default(),
            pause_until: std::sync::Mutex::default(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, SharedError> {
        if self.pause_until.lock().expect("not poisoned").is_some_and(|t| tokio::time::Instant::now() < t) {
            return Err(SharedError::Waiting);
        }
        let mut conn = self.conn.lock().await;
        if let Some(m) = &conn.manager {
            return Ok(m.clone());
        }
        if conn.failed_at.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
            return Err(SharedError::Waiting);
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEADLINE))
            .set_response_timeout(Some(DEADLINE))
            .set_number_of_retries(1);
        match tokio::time::timeout(DEADLINE * 2, self.client.get_connection_manager_with_config(config)).await {
            Ok(Ok(m)) => {
                conn.manager = Some(m.clone());
                conn.failed_at = None;
                Ok(m)
            }
            Ok(Err(e)) => {
                conn.failed_at = Some(tokio::time::Instant::now());
                Err(e.into())
            }
            Err(_) => {
                conn.failed_at = Some(tokio::time::Instant::now());
                Err(SharedError::Timeout)
            }
        }
    }

    async fn within<T>(&self, f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, SharedError> {
        let result = match tokio::time::timeout(DEADLINE, f).await {
            Ok(r) => r.map_err(SharedError::from),
            Err(_) => Err(SharedError::Timeout),
        };
        if result.is_err() {
            *self.pause_until.lock().expect("not poisoned") = Some(tokio::time::Instant::now() + RECONNECT_EVERY);
        }
        result
    }

    /// Judge one message (see [`super::counts::Counts::judge`]); `member` makes this leak
    /// unique in the sorted set (a queue id).
    pub async fn judge(
        &self,
        key: &str,
        leak: bool,
        member: &str,
        now: i64,
        l: Limits,
    ) -> Result<Verdict, SharedError> {
        let mut conn = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation.key(format!("{LEAKS}{key}")).key(format!("{TRIPS}{key}"));
        invocation.arg(now).arg(l.window_ms).arg(l.leaks).arg(l.duration_ms).arg(u8::from(leak)).arg(member);
        let (kind, value): (i64, String) = self.within(invocation.invoke_async(&mut conn)).await?;
        match kind {
            0 => value.parse().map(|count| Verdict::Open { count }).map_err(|_| SharedError::Answer(value)),
            1 => parse_trip(&value).map(Verdict::Tripped).ok_or(SharedError::Answer(value)),
            2 => parse_trip(&value).map(Verdict::JustTripped).ok_or(SharedError::Answer(value)),
            _ => Err(SharedError::Answer(value)),
        }
    }

    /// Keys tripped or counting now, tripped first, then by count.
    pub async fn list(&self, now: i64, l: Limits) -> Result<Vec<KeyStatus>, SharedError> {
        let mut conn = self.connection().await?;
        let mut list: Vec<KeyStatus> = Vec::new();
        for key in self.scan(&mut conn, TRIPS).await? {
            let value: Option<String> =
                self.within(redis::cmd("GET").arg(format!("{TRIPS}{key}")).query_async(&mut conn)).await?;
            if let Some(trip) = value.as_deref().and_then(parse_trip).filter(|t| t.until > now) {
                list.push(KeyStatus { key, count: trip.count, trip: Some(trip) });
            }
        }
        for key in self.scan(&mut conn, LEAKS).await? {
            if list.iter().any(|s| s.key == key) {
                continue;
            }
            let since = format!("({}", now - l.window_ms);
            let count: u64 = self
                .within(redis::cmd("ZCOUNT").arg(format!("{LEAKS}{key}")).arg(since).arg("+inf").query_async(&mut conn))
                .await?;
            if count > 0 {
                list.push(KeyStatus { key, count, trip: None });
            }
        }
        list.sort_by(|a, b| {
            b.trip.is_some().cmp(&a.trip.is_some()).then(b.count.cmp(&a.count)).then(a.key.cmp(&b.key))
        });
        Ok(list)
    }

    /// The keys (prefix removed) of every Redis key starting with `prefix`.
    async fn scan(&self, conn: &mut ConnectionManager, prefix: &str) -> Result<Vec<String>, SharedError> {
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .within(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(500)
                        .query_async(conn),
                )
                .await?;
            keys.extend(batch.into_iter().filter_map(|k| k.strip_prefix(prefix).map(str::to_string)));
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Delete `key`'s trip and leaks; whether there was any.
    pub async fn reset(&self, key: &str) -> Result<bool, SharedError> {
        let mut conn = self.connection().await?;
        let deleted: u64 = self
            .within(redis::cmd("DEL").arg(format!("{LEAKS}{key}")).arg(format!("{TRIPS}{key}")).query_async(&mut conn))
            .await?;
        Ok(deleted > 0)
    }
}

/// `at:until:count`.
fn parse_trip(value: &str) -> Option<Trip> {
    let mut parts = value.split(':');
    let (at, until, count) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(Trip { at, until, count })
}
