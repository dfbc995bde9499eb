//! The shared buckets (`[limits.redis]`): the per-IP and per-client token
//! buckets of [`super::limits`], held in Redis so every replica spends from
//! the same ones.
//!
//! One check is one round trip: a Lua script ([`SCRIPT`], sent by `EVALSHA`;
//! on `NOSCRIPT`, after a Redis restart or `SCRIPT FLUSH`, the client loads
//! it and runs it again) looks at both buckets and admits the request only
//! when both have room, and only then spends from both, atomically. The
//! buckets are GCRA, as governor's local ones are: one number per key (the
//! theoretical arrival time, µs on Redis' own clock, so replicas need no
//! clock agreement), which expires once the bucket is full again, so Redis
//! holds only keys in use and needs no pruning.
//!
//! Every check is bounded by `limits.redis.timeout_ms`. A check that fails
//! (timeout, connection refused, any error) applies
//! `limits.redis.failure_mode` and starts a backoff of
//! `limits.redis.backoff_ms` during which Redis is not asked: an outage
//! costs one timeout per backoff, not one per request. Fallbacks are counted
//! (`switchboard_rate_limit_fallbacks_total`) and logged at most once per
//! [`LOG_INTERVAL`]; the first answer after a failure logs the recovery.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::limits::{RateInfo, RateLimited};
use crate::config::{Quota, RedisFailureMode, RedisLimitsConfig};
use crate::domain::ClientId;
use crate::metrics::Metrics;

/// Two GCRA buckets checked together. `KEYS[1]`, `KEYS[2]`: the per-IP and
/// per-client buckets; `ARGV[1]`, `ARGV[3]`: their emission intervals (µs,
/// `1 s / per_s`); `ARGV[2]`, `ARGV[4]`: their bursts. The bucket of key
/// `i` admits at `now` when `max(tat, now) + interval - interval * burst <=
/// now`. Answers `{0}` when both admit (and both spent), else `{i, wait_us,
/// reset_us}` for the first bucket that refused (nothing spent): `wait_us`
/// until it admits one request, `reset_us` until it is full again.
///
/// Times are written with `%d`: Lua would print a number of 16 digits as
/// `%.14g`, losing the microseconds.
pub(crate) const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local allow_at = tat + interval - interval * burst
  if allow_at > now then
    return {i, allow_at - now, tat - now}
  end
  tats[i] = tat + interval
end
for i = 1, 2 do
  local ttl_ms = math.floor((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', ttl_ms)
end
return {0}
"#;

/// At most one warning line about fallbacks per this long.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a shared check did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedRefusal {
    /// A shared bucket is spent: 429 with its numbers.
    Limited(RateLimited),
    /// Redis did not answer and `failure_mode` is `closed`: 503.
    Unavailable,
}

/// The connection to Redis and what the failure handling remembers.
pub(crate) struct SharedLimits {
    conn: ConnectionManager,
    script: redis::Script,
    metrics: Metrics,
    /// `rate_limit_redis_checks_total` by result, resolved once.
    checks: Checks,
    /// Monotonic origin of the `*_ms` fields below.
    origin: Instant,
    /// No check before this (ms since `origin`): the backoff after a failure.
    quiet_until_ms: AtomicU64,
    /// A failure was seen and no answer since: the next answer logs the recovery.
    failing: AtomicBool,
    /// When to log the next warning about fallbacks.
    log: Mutex<LogThrottle>,
}

struct Checks {
    admitted: IntCounter,
    refused: IntCounter,
    timeout: IntCounter,
    error: IntCounter,
}

/// One warning line per [`LOG_INTERVAL`] at most, saying how many
/// fallbacks it stands for.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Option<Instant>,
    /// Fallbacks not logged yet.
    pending: u64,
}

impl LogThrottle {
    /// Counts one fallback at `now`; `Some(n)` when a line is due, for the
    /// `n` fallbacks since the last one (this one included).
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        match self.last {
            Some(at) if now.saturating_duration_since(at) < LOG_INTERVAL => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
}

impl SharedLimits {
    /// The connection is made lazily, on the first check (and again after
    /// a failure), so a gateway starts while Redis is down: `failure_mode`
    /// applies until it answers. `None` without `limits.redis.url`.
    pub fn new(
        cfg: &RedisLimitsConfig,
        metrics: &Metrics,
    ) -> Result<Option<Self>, redis::RedisError> {
        let Some(url) = &cfg.url else {
            return Ok(None);
        };
        let client = redis::Client::open(secrecy::ExposeSecret::expose_secret(url))?;
        let connect = Duration::from_millis(cfg.connect_timeout_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            // A backstop: our own `timeout_ms` (reloadable) ends each
            // check first.
            .set_response_timeout(Some(connect))
            // Reconnects happen on the next check after a failure (and
            // once in the background); our backoff paces them.
            .set_number_of_retries(1)
            .set_max_delay(connect)
            .set_pipeline_buffer_size(cfg.pipeline_max);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)?;
        Ok(Some(Self {
            conn,
            script: redis::Script::new(SCRIPT),
            checks: Checks {
                admitted: metrics.redis_checks.with_label_values(&["admitted"]),
                refused: metrics.redis_checks.with_label_values(&["refused"]),
                timeout: metrics.redis_checks.with_label_values(&["timeout"]),
                error: metrics.redis_checks.with_label_values(&["error"]),
            },
            metrics: metrics.clone(),
            origin: Instant::now(),
            quiet_until_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            log: Mutex::new(LogThrottle::default()),
        }))
    }

    /// Both shared buckets of one request, in one round trip.
    pub async fn check(
        &self,
        cfg: &RedisLimitsConfig,
        ip: (IpAddr, Quota),
        client: (&ClientId, Quota),
    ) -> Result<(), SharedRefusal> {
        let now_ms = self.origin.elapsed().as_millis() as u64;
        if now_ms < self.quiet_until_ms.load(Ordering::Relaxed) {
            return self.fall_back(cfg, "backoff", None);
        }
        let (ip, ip_quota) = ip;
        let (client, client_quota) = client;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}ip:{ip}", cfg.key_prefix))
            .key(format!(
                "{}client:{}:{}:{}",
                cfg.key_prefix,
                client_quota.per_s,
                client_quota.burst,
                client.as_str()
            ))
            .arg(interval_us(ip_quota))
            .arg(ip_quota.burst)
            .arg(interval_us(client_quota))
            .arg(client_quota.burst);
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let answer = tokio::time::timeout(
            cfg.timeout(),
            invocation.invoke_async::<Vec<u64>>(&mut conn),
        )
        .await;
        let checks = &self.checks;
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                checks.error.inc();
                return self.failed(cfg, "error", &e.to_string());
            }
            Err(_) => {
                checks.timeout.inc();
                return self.failed(cfg, "timeout", "no answer within limits.redis.timeout_ms");
            }
        };
        self.metrics
            .redis_duration
            .observe(started.elapsed().as_secs_f64());
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again: rate limits are shared again");
        }
        match reply.as_slice() {
            [0] => {
                checks.admitted.inc();
                Ok(())
            }
            &[bucket @ (1 | 2), wait_us, reset_us] => {
                checks.refused.inc();
                let (scope, quota) = if bucket == 1 {
                    ("ip", ip_quota)
                } else {
                    ("client", client_quota)
                };
                Err(SharedRefusal::Limited(RateLimited {
                    scope,
                    info: RateInfo {
                        limit: quota.burst,
                        remaining: 0,
                        reset_s: ceil_secs_us(reset_us),
                    },
                    retry_after_s: ceil_secs_us(wait_us).max(1),
                }))
            }
            other => {
                checks.error.inc();
                self.failed(cfg, "error", &format!("unexpected script answer {other:?}"))
            }
        }
    }

    /// A check that failed: back off, then fall back.
    fn failed(
        &self,
        cfg: &RedisLimitsConfig,
        reason: &'static str,
        error: &str,
    ) -> Result<(), SharedRefusal> {
        let until = self.origin.elapsed().saturating_add(cfg.backoff());
        self.quiet_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
        self.failing.store(true, Ordering::Relaxed);
        self.fall_back(cfg, reason, Some(error))
    }

    /// Applies `failure_mode` to one request, counts it, and logs at most
    /// once per [`LOG_INTERVAL`].
    fn fall_back(
        &self,
        cfg: &RedisLimitsConfig,
        reason: &'static str,
        error: Option<&str>,
    ) -> Result<(), SharedRefusal> {
        let mode = cfg.failure_mode;
        self.metrics
            .rate_limit_fallbacks
            .with_label_values(&[mode.as_str(), reason])
            .inc();
        let due = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(Instant::now());
        if let Some(fallbacks) = due {
            let decided_by = match mode {
                RedisFailureMode::Open => "the local limits alone (per replica)",
                RedisFailureMode::Closed => "refusing with 503 rate_limit_unavailable",
            };
            tracing::warn!(
                failure_mode = mode.as_str(),
                reason,
                error = error.unwrap_or("backing off after a failure"),
                fallbacks,
                "Redis did not answer a rate-limit check: {decided_by}"
            );
        }
        match mode {
            RedisFailureMode::Open => Ok(()),
            RedisFailureMode::Closed => Err(SharedRefusal::Unavailable),
        }
    }
}

/// `1 s / per_s` in µs, at least 1 (the quota is sanitized as the local one is).
fn interval_us(q: Quota) -> u64 {
    (1_000_000 / u64::from(q.per_s.max(1))).max(1)
}

fn ceil_secs_us(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_are_logged_once_per_interval_with_their_count() {
        let mut log = LogThrottle::default();
        let start = Instant::now();
        assert_eq!(log.note(start), Some(1), "the first is logged at once");
        for _ in 0..99 {
            assert_eq!(log.note(start + Duration::from_secs(5)), None);
        }
        assert_eq!(
            log.note(start + LOG_INTERVAL),
            Some(100),
            "the next line counts every fallback since the last"
        );
        assert_eq!(
            log.note(start + LOG_INTERVAL + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn intervals_are_whole_microseconds_and_never_zero() {
        let q = |per_s| Quota { per_s, burst: 1 };
        assert_eq!(interval_us(q(1)), 1_000_000);
        assert_eq!(interval_us(q(3)), 333_333);
        assert_eq!(interval_us(q(2_000_000)), 1);
        assert_eq!(interval_us(q(0)), 1_000_000, "sanitized as locally");
        assert_eq!(ceil_secs_us(1), 1);
        assert_eq!(ceil_secs_us(1_000_000), 1);
        assert_eq!(ceil_secs_us(1_000_001), 2);
    }
}
