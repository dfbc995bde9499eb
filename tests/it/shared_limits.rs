//! Rate limits shared by replicas through a real Redis (`[limits.redis]`):
//! two gateways spending from one quota, the local cut in front, and Redis
//! going away (killed, or frozen) under a live gateway and coming back.

use std::time::Duration;

use tokio::time::Instant;

use crate::harness::{Db, Options, Reply, TestGateway, eventually, spawn_gateway_with};
use crate::redis_harness::{Keys, Server};

/// A gateway replica on its own SQLite ledger (the limits need none).
async fn replica(layer: &str) -> TestGateway {
    spawn_gateway_with(Options {
        db: Db::Sqlite,
        layers: vec![layer.to_owned()],
        ..Options::default()
    })
    .await
}

/// A sample summed over replicas.
async fn total(replicas: &[&TestGateway], sample: &str) -> f64 {
    let mut sum = 0.0;
    for gw in replicas {
        sum += gw.metric(sample).await;
    }
    sum
}

const ADMITTED: &str = "switchboard_rate_limit_redis_checks_total{result=\"admitted\"}";
const REFUSED: &str = "switchboard_rate_limit_redis_checks_total{result=\"refused\"}";

fn fallbacks(mode: &str, reason: &str) -> String {
    format!("switchboard_rate_limit_fallbacks_total{{mode=\"{mode}\",reason=\"{reason}\"}}")
}

fn header(r: &Reply, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Alternates `n` requests between the replicas, `token_for(i)` naming the
/// caller of the i-th; the 200s and the 429s (anything else panics).
async fn alternate(
    replicas: &[&TestGateway],
    n: usize,
    token_for: impl Fn(usize) -> String,
) -> (usize, Vec<Reply>) {
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..n {
        let r = replicas[i % replicas.len()]
            .get("/v1/switches", &token_for(i))
            .await;
        match r.status {
            200 => admitted += 1,
            429 => refused.push(r),
            other => panic!("request {i}: {other} {:?}", r.json),
        }
    }
    (admitted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_client_quota_and_say_so_truthfully() {
    let keys = Keys::shared("client-quota");
    // Failing closed, so a check Redis missed shows as a 503, not as a
    // quietly admitted request that would muddle the count.
    let layer = format!(
        "{}[limits.roles.operator]\nper_s = 1\nburst = 6\n",
        keys.toml("closed", 2000, 0)
    );
    let (a, b) = (replica(&layer).await, replica(&layer).await);
    let token = a.token("olga", &["operator"]);

    let started = Instant::now();
    // Six each: each replica's local bucket (burst 6) admits all of them,
    // so without the shared bucket all twelve would pass.
    let (admitted, refused) = alternate(&[&a, &b], 12, |_| token.clone()).await;
    let refill = started.elapsed().as_secs() as usize;
    assert!(
        (6..=6 + refill).contains(&admitted),
        "together one quota (burst 6, 1/s over {refill} s): {admitted} admitted"
    );
    // Both replicas refused, with the shared bucket's numbers.
    for r in &refused {
        assert_eq!(r.code(), "rate_limited", "{:?}", r.json);
        assert_eq!(header(r, "ratelimit-limit"), 6);
        assert_eq!(header(r, "ratelimit-remaining"), 0);
        // One request back within a second (1/s); the whole burst within six.
        assert_eq!(header(r, "retry-after"), 1);
        let reset = header(r, "ratelimit-reset");
        assert!((1..=6).contains(&reset), "reset {reset}");
    }
    let (ar, br) = (a.metric(REFUSED).await, b.metric(REFUSED).await);
    assert!(ar >= 1.0 && br >= 1.0, "each replica refused: {ar}, {br}");
    assert_eq!(total(&[&a, &b], ADMITTED).await as usize, admitted);
    assert_eq!(total(&[&a, &b], REFUSED).await as usize, refused.len());
    assert_eq!(
        total(
            &[&a, &b],
            "switchboard_requests_denied_total{reason=\"rate_limited_client\"}"
        )
        .await as usize,
        refused.len()
    );
    for reason in ["timeout", "error", "backoff"] {
        assert_eq!(total(&[&a, &b], &fallbacks("closed", reason)).await, 0.0);
    }

    // One key per bucket in Redis, each expiring once its bucket is full:
    // the client's in at most six seconds; the address's (1,000,000/s, the
    // harness's) within a millisecond, so it is most likely gone already.
    let held = keys.list();
    let client_key = format!("{}client:1:6:olga", keys.prefix);
    let ip_key = format!("{}ip:127.0.0.1", keys.prefix);
    assert!(held.iter().any(|(k, _)| *k == client_key), "{held:?}");
    for (key, ttl_ms) in &held {
        assert!(*key == client_key || *key == ip_key, "{held:?}");
        assert!((1..=6_001).contains(ttl_ms), "{key}: PTTL {ttl_ms}");
    }

    // A second later more fit, on either replica, and the two together
    // still never passed one quota: the burst plus 1/s since the start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (later, _) = alternate(&[&b, &a], 4, |_| token.clone()).await;
    let refill = started.elapsed().as_secs() as usize;
    assert!(later >= 1, "refilled");
    assert!(
        admitted + later <= 6 + refill,
        "{admitted} + {later} admitted in {refill} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_per_ip_limit() {
    let keys = Keys::shared("per-ip");
    let layer = format!(
        "{}[limits]\nper_ip_per_s = 1\nper_ip_burst = 4\n",
        keys.toml("closed", 2000, 0)
    );
    let (a, b) = (replica(&layer).await, replica(&layer).await);
    let started = Instant::now();
    // A new client each time: only the address's bucket can refuse.
    let (admitted, refused) = alternate(&[&a, &b], 8, |i| {
        a.token(&format!("ivy-{i}"), &["operator"])
    })
    .await;
    let refill = started.elapsed().as_secs() as usize;
    assert!(
        (4..=4 + refill).contains(&admitted),
        "together one per-IP burst of 4 (1/s over {refill} s): {admitted} admitted"
    );
    for r in &refused {
        assert_eq!(r.code(), "rate_limited");
        assert_eq!(header(r, "ratelimit-limit"), 4);
        assert_eq!(header(r, "ratelimit-remaining"), 0);
        assert_eq!(header(r, "retry-after"), 1);
    }
    assert_eq!(
        total(
            &[&a, &b],
            "switchboard_requests_denied_total{reason=\"rate_limited_ip\"}"
        )
        .await as usize,
        refused.len()
    );
    assert!(a.metric(REFUSED).await >= 1.0 && b.metric(REFUSED).await >= 1.0);
}

/// The local bucket is the first cut: a client flooding one replica is
/// refused there, and only what the local bucket admits costs a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_locally_without_touching_redis() {
    let keys = Keys::shared("flood");
    let layer = format!(
        "{}[limits.roles.operator]\nper_s = 1\nburst = 3\n",
        keys.toml("closed", 2000, 0)
    );
    let gw = replica(&layer).await;
    let token = gw.token("flo", &["operator"]);
    let started = Instant::now();
    let (admitted, refused) = alternate(&[&gw], 40, |_| token.clone()).await;
    let refill = started.elapsed().as_secs() as usize;
    assert!((3..=3 + refill).contains(&admitted), "{admitted}");
    assert_eq!(admitted + refused.len(), 40);
    let checks = gw.metric(ADMITTED).await + gw.metric(REFUSED).await;
    assert!(
        checks as usize <= 3 + refill,
        "only what the local bucket let through reached Redis: {checks} checks"
    );
    assert!(checks >= 3.0, "{checks}");
    // Unauthenticated requests never reach Redis either.
    for _ in 0..5 {
        assert_eq!(gw.get("/v1/switches", "not-a-token").await.status, 401);
    }
    assert_eq!(
        gw.metric(ADMITTED).await + gw.metric(REFUSED).await,
        checks,
        "a 401 costs no round trip"
    );
}

/// Failing open: with Redis killed the local limits alone decide (the
/// requests are served, a local bucket still refuses past its burst), each
/// fallback counted; a flushed script cache and a restarted Redis are
/// picked up again without a restart of the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_test_fails_open_to_the_local_limits_and_recovers() {
    let mut server = Server::start().await;
    let keys = Keys::on(server.url(), "fail-open");
    let layer = format!(
        "{}[limits.roles.operator]\nper_s = 1\nburst = 2\n",
        keys.toml("open", 500, 2000)
    );
    let gw = replica(&layer).await;
    let op = |sub: &str| gw.token(sub, &["operator"]);
    assert_eq!(gw.get("/v1/switches", &op("pam")).await.status, 200);
    assert_eq!(gw.metric(ADMITTED).await, 1.0);

    // The script cache emptied (as after a failover to a replica): EVALSHA
    // answers NOSCRIPT, the script is loaded and run again, no fallback.
    keys.command(&["SCRIPT", "FLUSH"]);
    assert_eq!(gw.get("/v1/switches", &op("pat")).await.status, 200);
    assert_eq!(gw.metric(ADMITTED).await, 2.0);
    assert_eq!(gw.metric(&fallbacks("open", "error")).await, 0.0);

    server.kill();
    // A new client: served, by the local limits alone.
    assert_eq!(gw.get("/v1/switches", &op("pia")).await.status, 200);
    let failed = gw.metric(&fallbacks("open", "error")).await
        + gw.metric(&fallbacks("open", "timeout")).await;
    assert_eq!(failed, 1.0, "one check failed (refused or timed out)");
    // Within the backoff Redis is not asked; the local bucket (burst 2)
    // still refuses the third request at once.
    let poe = op("poe");
    let statuses = [
        gw.get("/v1/switches", &poe).await.status,
        gw.get("/v1/switches", &poe).await.status,
        gw.get("/v1/switches", &poe).await.status,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(gw.metric(&fallbacks("open", "backoff")).await, 2.0);
    assert_eq!(gw.metric(ADMITTED).await, 2.0, "Redis was not reached");

    server.start_again().await;
    let mut n = 0;
    eventually(
        Duration::from_secs(15),
        "the shared buckets are used again",
        || {
            n += 1;
            let token = op(&format!("pru-{n}"));
            let gw = &gw;
            async move {
                assert_eq!(gw.get("/v1/switches", &token).await.status, 200);
                gw.metric(ADMITTED).await > 2.0
            }
        },
    )
    .await;
    // And they are Redis' again: the last client's bucket is there.
    let held = keys.list();
    let last = format!("{}client:1:2:pru-{n}", keys.prefix);
    assert!(held.iter().any(|(k, _)| *k == last), "{last}: {held:?}");
}

/// Failing closed: with Redis frozen (SIGSTOP: connections stay open and
/// nothing answers) a request waits `limits.redis.timeout_ms` and is
/// refused with 503 `rate_limit_unavailable`; during the backoff at once;
/// served again once Redis runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_test_fails_closed_with_503_and_recovers() {
    let server = Server::start().await;
    let keys = Keys::on(server.url(), "fail-closed");
    let gw = replica(&keys.toml("closed", 200, 1000)).await;
    let token = gw.token("cid", &["operator"]);
    assert_eq!(gw.get("/v1/switches", &token).await.status, 200);

    server.signal("STOP");
    let asked = Instant::now();
    let r = gw.get("/v1/switches", &token).await;
    let waited = asked.elapsed();
    assert_eq!(
        (r.status, r.code()),
        (503, "rate_limit_unavailable"),
        "{:?}",
        r.json
    );
    assert!(r.json["error"]["message"].is_string());
    assert_eq!(header(&r, "retry-after"), 1);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "bounded by limits.redis.timeout_ms: {waited:?}"
    );
    assert_eq!(gw.metric(&fallbacks("closed", "timeout")).await, 1.0);
    // Within the backoff: refused without waiting.
    let asked = Instant::now();
    assert_eq!(gw.get("/v1/switches", &token).await.status, 503);
    assert!(
        asked.elapsed() < Duration::from_millis(150),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(gw.metric(&fallbacks("closed", "backoff")).await, 1.0);

    server.signal("CONT");
    eventually(Duration::from_secs(15), "served again", || async {
        gw.get("/v1/switches", &token).await.status == 200
    })
    .await;
    assert!(gw.metric(ADMITTED).await >= 2.0);
}

/// `limits.redis.failure_mode` (and the rest but the connection) reloads
/// live; `limits.redis.url` keeps its running value until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_mode_reloads_live_and_the_url_only_on_restart() {
    let dead = format!("redis://127.0.0.1:{}", crate::harness::free_port());
    let keys = Keys::shared("reload");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateway.toml");
    let write = |url: &str, mode: &str| {
        std::fs::write(&file, keys.toml_at(url, mode, 200, 0)).expect("write the config file");
    };
    write(&dead, "open");
    let gw = spawn_gateway_with(Options {
        db: Db::Sqlite,
        config_file: Some(file.clone()),
        ..Options::default()
    })
    .await;
    let token = gw.token("rex", &["operator"]);
    assert_eq!(
        gw.get("/v1/switches", &token).await.status,
        200,
        "fails open"
    );

    // The live Redis and failing closed: the mode applies, the URL does not.
    write(&keys.url, "closed");
    eventually(Duration::from_secs(10), "failing closed", || async {
        gw.get("/v1/switches", &token).await.status == 503
    })
    .await;
    assert!(gw.metric(&fallbacks("closed", "error")).await >= 1.0);
    assert_eq!(gw.metric(ADMITTED).await, 0.0, "still the dead URL");
    assert!(keys.list().is_empty());
}
