//! Rate limits and load shedding: per client IP, per client (`sub`), and a
//! global cap on transactions in flight.
//!
//! Each limit is a governor keyed GCRA limiter over a `DashMap`. Governor gives
//! one quota per limiter, so there is one limiter per distinct quota: one for
//! IPs, and one per distinct client quota (role quotas and per-client
//! overrides). Clients sharing a quota share a limiter; their keys (`sub`s)
//! keep them apart.
//!
//! Reloads ([`Limiter::update`]) swap the set of limiters atomically. A limiter
//! whose quota did not change is carried over with its counters; one whose
//! quota changed starts afresh, so its clients get a full burst once. That is
//! acceptable for an operator-driven reload and keeps the hot path lock-free.
//!
//! Keys stay until pruned: [`Limiter::prune`] must run periodically.
//!
//! With `limits.redis.url`, the same buckets are also kept in Redis and
//! shared by every replica ([`super::shared_limits`]). The local ones stay
//! in front as a first cut: what they refuse never reaches Redis, so a flood
//! from one client or address costs a hash-map lookup per request, not a
//! round trip; a request they admit is then checked against both shared
//! buckets at once ([`Limiter::check_shared`]), which decide.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::RateLimiter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;

use super::shared_limits::{SharedLimits, SharedRefusal};
use crate::config::{LimitsConfig, Quota, RedisLimitsConfig};
use crate::domain::{ClientId, Role};

/// What a successful check reports, for `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// The burst: requests allowed at once from a full bucket.
    pub limit: u32,
    /// Requests still allowed at once, after this one.
    pub remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_s: u64,
}

/// A refused check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// Which limit refused: `"ip"` or `"client"`.
    pub scope: &'static str,
    /// `remaining` is 0.
    pub info: RateInfo,
    /// Seconds until a request would be allowed (rounded up, at least 1).
    pub retry_after_s: u64,
}

/// One transaction in flight; dropping it frees its slot.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct TxPermit(Arc<InFlight>);

impl Drop for TxPermit {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The in-flight cap. A counter rather than a semaphore: we never queue, and
/// resizing is then just a store (lowering the cap below the current count
/// refuses new transactions until enough finish; permits held stay valid).
#[derive(Debug)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

type KeyedLimiter<K> =
    RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed limiter and the quota it enforces.
struct Bucket<K: Hash + Eq + Clone> {
    /// As configured, after [`sanitize`].
    quota: Quota,
    /// Time to replenish one request: `1 s / per_s`.
    interval: Duration,
    limiter: KeyedLimiter<K>,
}

impl<K: Hash + Eq + Clone> Bucket<K> {
    fn new(quota: Quota) -> Self {
        let quota = sanitize(quota);
        let per_s = NonZeroU32::new(quota.per_s).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN);
        let gq = governor::Quota::per_second(per_s).allow_burst(burst);
        let limiter = KeyedLimiter::new(gq, DashMapStateStore::default(), DefaultClock::default());
        Self {
            quota,
            interval: gq.replenish_interval(),
            limiter,
        }
    }

    fn check(&self, key: &K, scope: &'static str) -> Result<RateInfo, RateLimited> {
        let burst = self.quota.burst;
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(burst);
                // Governor rounds `remaining` down, so `burst - remaining`
                // intervals is an upper bound (by under one interval) on the
                // time until the bucket is full.
                let reset = self.interval.saturating_mul(burst - remaining);
                Ok(RateInfo {
                    limit: burst,
                    remaining,
                    reset_s: ceil_secs(reset),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // After `wait` one request fits; the other `burst - 1` take
                // an interval each.
                let reset = wait.saturating_add(self.interval.saturating_mul(burst - 1));
                Err(RateLimited {
                    scope,
                    info: RateInfo {
                        limit: burst,
                        remaining: 0,
                        reset_s: ceil_secs(reset),
                    },
                    retry_after_s: ceil_secs(wait).max(1),
                })
            }
        }
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Governor needs non-zero rates; config validation refuses zeros, so this
/// only keeps a bad config from panicking.
fn sanitize(quota: Quota) -> Quota {
    Quota {
        per_s: quota.per_s.max(1),
        burst: quota.burst.max(1),
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Everything a reload replaces, swapped as one.
struct Tables {
    ip: Arc<Bucket<IpAddr>>,
    /// One per distinct client quota.
    clients: Vec<Arc<Bucket<ClientId>>>,
    /// Index into `clients`, by [`role_slot`].
    by_role: [usize; 3],
    /// For a client with no role.
    smallest_role: usize,
    /// Per-`sub` overrides: index into `clients`.
    overrides: HashMap<String, usize>,
}

fn role_slot(role: Role) -> usize {
    match role {
        Role::Transact => 0,
        Role::Auditor => 1,
        Role::Operator => 2,
    }
}

/// "Largest" and "smallest" compare `per_s`, then `burst`.
fn rank(q: Quota) -> (u32, u32) {
    (q.per_s, q.burst)
}

impl Tables {
    /// Builds the limiters for `cfg`, carrying over from `old` every limiter
    /// whose quota is unchanged (so its counters survive the reload).
    fn build(cfg: &LimitsConfig, old: Option<&Tables>) -> Self {
        let ip_quota = Quota {
            per_s: cfg.per_ip_per_s,
            burst: cfg.per_ip_burst,
        };
        let ip = match old {
            Some(old) if old.ip.quota == sanitize(ip_quota) => old.ip.clone(),
            _ => Arc::new(Bucket::new(ip_quota)),
        };

        let mut clients: Vec<Arc<Bucket<ClientId>>> = Vec::new();
        let mut slot_for = |quota: Quota| -> usize {
            let quota = sanitize(quota);
            if let Some(i) = clients.iter().position(|b| b.quota == quota) {
                return i;
            }
            let bucket = old
                .and_then(|old| old.clients.iter().find(|b| b.quota == quota))
                .cloned()
                .unwrap_or_else(|| Arc::new(Bucket::new(quota)));
            clients.push(bucket);
            clients.len() - 1
        };
        let roles = &cfg.roles;
        let by_role = [
            slot_for(roles.transact),
            slot_for(roles.auditor),
            slot_for(roles.operator),
        ];
        // A later entry for the same `sub` wins.
        let overrides: HashMap<String, usize> = cfg
            .clients
            .iter()
            .map(|c| {
                let quota = Quota {
                    per_s: c.per_s,
                    burst: c.burst,
                };
                (c.sub.clone(), slot_for(quota))
            })
            .collect();
        let smallest_role = by_role
            .iter()
            .copied()
            .min_by_key(|&i| rank(clients[i].quota))
            .unwrap_or(by_role[0]);
        Self {
            ip,
            clients,
            by_role,
            smallest_role,
            overrides,
        }
    }

    fn client_bucket(&self, client: &ClientId, roles: &[Role]) -> &Bucket<ClientId> {
        let slot = self
            .overrides
            .get(client.as_str())
            .copied()
            .or_else(|| {
                roles
                    .iter()
                    .map(|&r| self.by_role[role_slot(r)])
                    .max_by_key(|&i| rank(self.clients[i].quota))
            })
            .unwrap_or(self.smallest_role);
        &self.clients[slot]
    }
}

/// The per-IP limiter's key for a client address. An IPv4 address is its
/// own key, and an IPv4-mapped IPv6 address counts as its IPv4 address (a
/// dual-stack listener does not give a client two buckets). An IPv6 address
/// counts as its /64: one subscriber or host usually gets a whole /64 and
/// can pick any address in it, so per address it would have 2^64 buckets.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// The gateway's rate limits; share as `Arc<Limiter>`.
pub struct Limiter {
    tables: ArcSwap<Tables>,
    in_flight: Arc<InFlight>,
    /// The shared buckets, when `limits.redis.url` is set (at start).
    shared: Option<SharedLimits>,
}

impl Limiter {
    /// Local limits only.
    #[cfg(test)]
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self::with_shared(cfg, None)
    }

    /// Local limits, and the shared buckets behind them when `shared` is some.
    pub(crate) fn with_shared(cfg: &LimitsConfig, shared: Option<SharedLimits>) -> Self {
        Self {
            tables: ArcSwap::from_pointee(Tables::build(cfg, None)),
            in_flight: Arc::new(InFlight {
                now: AtomicUsize::new(0),
                max: AtomicUsize::new(cfg.transactions_in_flight_max),
            }),
            shared,
        }
    }

    /// Whether `limits.redis.url` was set at start.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// After the local checks admitted a request: its IP's and its client's
    /// shared buckets, in one round trip, with the quotas the local checks
    /// used. Admits at once without `limits.redis.url`.
    pub async fn check_shared(
        &self,
        cfg: &RedisLimitsConfig,
        ip: IpAddr,
        client: &ClientId,
        roles: &[Role],
    ) -> Result<(), SharedRefusal> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let (ip_quota, client_quota) = {
            let tables = self.tables.load();
            (tables.ip.quota, tables.client_bucket(client, roles).quota)
        };
        shared
            .check(cfg, (ip_key(ip), ip_quota), (client, client_quota))
            .await
    }

    /// Per-IP check, before any token is verified, keyed by [`ip_key`].
    pub fn check_ip(&self, ip: IpAddr) -> Result<RateInfo, RateLimited> {
        self.tables.load().ip.check(&ip_key(ip), "ip")
    }

    /// Per-client check by `sub`: the client's override if configured, else
    /// the largest quota among its roles; with no role, the smallest role quota.
    pub fn check_client(&self, client: &ClientId, roles: &[Role]) -> Result<RateInfo, RateLimited> {
        self.tables
            .load()
            .client_bucket(client, roles)
            .check(client, "client")
    }

    /// A slot for one transaction, or `None` when the cap is reached (the
    /// caller answers 503 `overloaded`; nothing waits).
    pub fn try_begin_transaction(&self) -> Option<TxPermit> {
        let max = self.in_flight.max.load(Ordering::Relaxed);
        self.in_flight
            .now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(TxPermit(self.in_flight.clone()))
    }

    /// Applies a reloaded config. New checks use the new quotas; limiters
    /// whose quota changed start with empty counters. The in-flight cap
    /// changes at once; permits already held stay valid.
    pub fn update(&self, cfg: &LimitsConfig) {
        let next = Tables::build(cfg, Some(&self.tables.load()));
        self.tables.store(Arc::new(next));
        self.in_flight
            .max
            .store(cfg.transactions_in_flight_max, Ordering::Relaxed);
    }

    /// Drops keys whose state is indistinguishable from a fresh one, then
    /// frees the map capacity they held.
    pub fn prune(&self) {
        let tables = self.tables.load();
        tables.ip.prune();
        for bucket in &tables.clients {
            bucket.prune();
        }
    }

    /// (IP keys, client keys) held now.
    pub fn sizes(&self) -> (usize, usize) {
        let tables = self.tables.load();
        let clients = tables.clients.iter().map(|b| b.limiter.len()).sum();
        (tables.ip.limiter.len(), clients)
    }

    pub fn transactions_in_flight(&self) -> usize {
        self.in_flight.now.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ip_keys, client_keys) = self.sizes();
        f.debug_struct("Limiter")
            .field("ip_keys", &ip_keys)
            .field("client_keys", &client_keys)
            .field("transactions_in_flight", &self.transactions_in_flight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::thread::sleep;

    use super::*;
    use crate::config::{ClientQuota, RoleQuotas};

    fn q(per_s: u32, burst: u32) -> Quota {
        Quota { per_s, burst }
    }

    fn cfg() -> LimitsConfig {
        LimitsConfig {
            per_ip_per_s: 1,
            per_ip_burst: 3,
            roles: RoleQuotas {
                transact: q(50, 6),
                auditor: q(20, 4),
                operator: q(10, 2),
            },
            clients: vec![ClientQuota {
                sub: "big".into(),
                per_s: 100,
                burst: 8,
            }],
            transactions_in_flight_max: 2,
            prune_interval_ms: 1000,
            redis: crate::config::Config::from_toml("")
                .expect("the defaults")
                .limits
                .redis,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn client(sub: &str) -> ClientId {
        ClientId::parse(sub).unwrap()
    }

    #[test]
    fn shared_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Limiter>();
        send_sync::<TxPermit>();
    }

    #[test]
    fn ip_burst_then_refusal() {
        let l = Limiter::new(&cfg());
        // 1/s, burst 3: each allowed request costs one second of refill.
        for (remaining, reset_s) in [(2, 1), (1, 2), (0, 3)] {
            let info = l.check_ip(ip(1)).unwrap();
            assert_eq!(
                info,
                RateInfo {
                    limit: 3,
                    remaining,
                    reset_s
                }
            );
        }
        let refused = l.check_ip(ip(1)).unwrap_err();
        assert_eq!(refused.scope, "ip");
        assert_eq!(refused.info.limit, 3);
        assert_eq!(refused.info.remaining, 0);
        assert_eq!(refused.retry_after_s, 1);
        assert_eq!(refused.info.reset_s, 3);
    }

    #[test]
    fn refused_ip_is_allowed_again_after_the_wait() {
        let mut c = cfg();
        c.per_ip_per_s = 20;
        c.per_ip_burst = 1;
        let l = Limiter::new(&c);
        l.check_ip(ip(1)).unwrap();
        let refused = l.check_ip(ip(1)).unwrap_err();
        // 50 ms to wait, still reported as a whole second.
        assert_eq!(refused.retry_after_s, 1);
        sleep(Duration::from_millis(80));
        assert_eq!(l.check_ip(ip(1)).unwrap().remaining, 0);
    }

    #[test]
    fn ips_are_independent_and_mapped_v6_is_v4() {
        let mut c = cfg();
        c.per_ip_burst = 1;
        let l = Limiter::new(&c);
        l.check_ip(ip(1)).unwrap();
        assert!(l.check_ip(ip(1)).is_err());
        l.check_ip(ip(2)).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped());
        assert!(l.check_ip(mapped).is_err(), "::ffff:10.0.0.2 is 10.0.0.2");
        l.check_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap();
        assert_eq!(l.sizes(), (3, 0));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let mut c = cfg();
        c.per_ip_burst = 1;
        let l = Limiter::new(&c);
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        l.check_ip(v6("2001:db8:1:2::1")).unwrap();
        assert!(
            l.check_ip(v6("2001:db8:1:2:ffff:ffff:ffff:fffe")).is_err(),
            "same /64: same bucket"
        );
        l.check_ip(v6("2001:db8:1:3::1")).unwrap();
        l.check_ip(v6("2001:db8:2:2::1")).unwrap();
        assert_eq!(l.sizes(), (3, 0));
        assert_eq!(ip_key(v6("2001:db8:1:2:a:b:c:d")), v6("2001:db8:1:2::"));
        // IPv4 keeps every bit, mapped or not.
        assert_eq!(ip_key(v6("::ffff:192.0.2.77")), v6("192.0.2.77"));
        assert_eq!(ip_key(v6("192.0.2.77")), v6("192.0.2.77"));
    }

    #[test]
    fn client_override_beats_role_quota() {
        let l = Limiter::new(&cfg());
        let info = l.check_client(&client("big"), &[Role::Operator]).unwrap();
        assert_eq!((info.limit, info.remaining), (8, 7));
        let info = l.check_client(&client("small"), &[Role::Operator]).unwrap();
        assert_eq!((info.limit, info.remaining), (2, 1));
    }

    #[test]
    fn largest_role_quota_wins_and_no_role_gets_the_smallest() {
        let l = Limiter::new(&cfg());
        let info = l
            .check_client(
                &client("a"),
                &[Role::Operator, Role::Transact, Role::Auditor],
            )
            .unwrap();
        assert_eq!(info.limit, 6);
        let info = l.check_client(&client("b"), &[Role::Auditor]).unwrap();
        assert_eq!(info.limit, 4);
        let info = l.check_client(&client("c"), &[]).unwrap();
        assert_eq!(info.limit, 2);
    }

    #[test]
    fn client_refusal_is_scoped_and_per_sub() {
        let l = Limiter::new(&cfg());
        for _ in 0..2 {
            l.check_client(&client("op"), &[Role::Operator]).unwrap();
        }
        let refused = l
            .check_client(&client("op"), &[Role::Operator])
            .unwrap_err();
        assert_eq!(refused.scope, "client");
        assert!(refused.retry_after_s >= 1);
        // Same quota, other sub: its own bucket.
        l.check_client(&client("op2"), &[Role::Operator]).unwrap();
        assert_eq!(l.sizes(), (0, 2));
    }

    #[test]
    fn update_changes_quotas_and_keeps_unchanged_counters() {
        let l = Limiter::new(&cfg());
        assert_eq!(l.check_ip(ip(1)).unwrap().limit, 3);
        assert_eq!(
            l.check_client(&client("a"), &[Role::Transact])
                .unwrap()
                .remaining,
            5
        );

        let mut c = cfg();
        c.per_ip_burst = 10;
        c.roles.operator = q(10, 3);
        c.clients[0].burst = 9;
        l.update(&c);

        // Changed quota: new limiter, fresh counters.
        assert_eq!(
            l.check_ip(ip(1)).unwrap(),
            RateInfo {
                limit: 10,
                remaining: 9,
                reset_s: 1
            }
        );
        assert_eq!(l.check_client(&client("x"), &[]).unwrap().limit, 3);
        assert_eq!(l.check_client(&client("big"), &[]).unwrap().limit, 9);
        // Unchanged transact quota: the counter carried over.
        assert_eq!(
            l.check_client(&client("a"), &[Role::Transact])
                .unwrap()
                .remaining,
            4
        );

        // Removing the override puts the client back on its roles.
        c.clients.clear();
        l.update(&c);
        assert_eq!(
            l.check_client(&client("big"), &[Role::Auditor])
                .unwrap()
                .limit,
            4
        );
    }

    #[test]
    fn transactions_are_capped_and_freed_on_drop() {
        let l = Limiter::new(&cfg());
        let a = l.try_begin_transaction().unwrap();
        let b = l.try_begin_transaction().unwrap();
        assert!(l.try_begin_transaction().is_none());
        assert_eq!(l.transactions_in_flight(), 2);
        drop(a);
        assert_eq!(l.transactions_in_flight(), 1);
        let c = l.try_begin_transaction().unwrap();

        // Lowering the cap below what is held: held permits stay, new ones wait.
        let mut lower = cfg();
        lower.transactions_in_flight_max = 1;
        l.update(&lower);
        assert!(l.try_begin_transaction().is_none());
        drop(b);
        assert!(l.try_begin_transaction().is_none(), "still 1 in flight");
        drop(c);
        assert_eq!(l.transactions_in_flight(), 0);
        let d = l.try_begin_transaction().unwrap();
        assert!(l.try_begin_transaction().is_none());

        let mut higher = cfg();
        higher.transactions_in_flight_max = 3;
        l.update(&higher);
        let _e = l.try_begin_transaction().unwrap();
        let _f = l.try_begin_transaction().unwrap();
        assert!(l.try_begin_transaction().is_none());
        drop(d);
        assert_eq!(l.transactions_in_flight(), 2);
    }

    #[test]
    fn the_cap_holds_under_contention() {
        let l = Arc::new(Limiter::new(&cfg()));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, peak) = (l.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Some(p) = l.try_begin_transaction() {
                            peak.fetch_max(l.transactions_in_flight(), Ordering::Relaxed);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 2);
        assert_eq!(l.transactions_in_flight(), 0);
    }

    #[test]
    fn prune_drops_idle_keys() {
        // 10/s, burst 1: a used key looks fresh once its 100 ms refill is
        // past, and governor keeps it one interval more: 200 ms.
        let mut c = cfg();
        c.per_ip_per_s = 10;
        c.per_ip_burst = 1;
        c.roles.operator = q(10, 1);
        c.clients.clear();
        let l = Limiter::new(&c);
        for last in 0..100 {
            l.check_ip(ip(last)).unwrap();
        }
        for i in 0..10 {
            l.check_client(&client(&format!("c{i}")), &[]).unwrap();
        }
        assert_eq!(l.sizes(), (100, 10));
        l.prune();
        assert_eq!(l.sizes(), (100, 10), "recently used keys stay");

        sleep(Duration::from_millis(300));
        l.check_ip(ip(200)).unwrap();
        l.prune();
        assert_eq!(l.sizes(), (1, 0), "only the key used just now stays");
    }
}
