//! Rate limits and load shedding, end to end over real TLS.

use std::sync::Arc;
use std::time::Duration;

use switchboard::devtools::sim::Mode;

use crate::harness::{self, Options, TestGateway, metric, spawn_gateway_with};

async fn gateway(limits: &str, sims: &[switchboard::devtools::sim::SimHandle]) -> TestGateway {
    spawn_gateway_with(Options {
        switches: harness::switch_list(sims),
        layers: vec![limits.into()],
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn over_quota_gets_429_with_headers_another_client_is_unaffected_and_it_recovers() {
    let gw = gateway(
        "[limits.roles.transact]\nper_s = 2\nburst = 3\n[limits.roles.auditor]\nper_s = 100\nburst = 100\n",
        &[],
    )
    .await;
    gw.account("q1", "quinn", "EUR", 100).await;
    let quinn = gw.token("quinn", &["transact"]);
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/accounts/q1", &quinn).await.status, 200);
    }
    let r = gw.get("/v1/accounts/q1", &quinn).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(r.header("ratelimit-limit"), Some("3"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("ratelimit-reset").unwrap().parse::<u64>().unwrap() >= 1);

    // Another client, same IP, same role: its own bucket.
    gw.account("q2", "rae", "EUR", 100).await;
    let rae = gw.token("rae", &["transact"]);
    assert_eq!(gw.get("/v1/accounts/q2", &rae).await.status, 200);

    // After the window, quinn is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.get("/v1/accounts/q1", &quinn).await.status, 200);
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "switchboard_requests_denied_total{reason=\"rate_limited_client\"}"
        ) >= 1.0
    );
}

/// The per-IP limit answers like the per-client one: 429 `rate_limited`
/// with `Retry-After` and the `RateLimit-*` headers of the IP's bucket,
/// before any token is looked at.
#[tokio::test]
async fn per_ip_429s_carry_retry_after_and_rate_limit_headers() {
    let gw = gateway("[limits]\nper_ip_per_s = 1\nper_ip_burst = 3\n", &[]).await;
    let op = gw.token("op", &["operator"]);
    for i in 0..3 {
        let r = gw.get("/v1/switches", &op).await;
        assert_eq!(r.status, 200, "request {i} of the burst: {:?}", r.json);
    }
    // With a valid token, and with none at all: the IP's bucket refuses first.
    for (what, token) in [("a valid token", op.as_str()), ("no token", "")] {
        let r = gw.get("/v1/switches", token).await;
        assert_eq!(
            (r.status, r.code()),
            (429, "rate_limited"),
            "{what}: {:?}",
            r.json
        );
        assert!(r.json["error"]["message"].is_string(), "{what}");
        let header = |name: &str| -> u64 {
            r.header(name)
                .unwrap_or_else(|| panic!("{what}: no {name} header"))
                .parse()
                .unwrap_or_else(|e| panic!("{what}: {name}: {e}"))
        };
        let retry_after = header("retry-after");
        let reset = header("ratelimit-reset");
        assert_eq!(header("ratelimit-limit"), 3, "{what}: the burst");
        assert_eq!(header("ratelimit-remaining"), 0, "{what}");
        // One request back after about a second (1/s), the whole burst of
        // 3 after about three.
        assert_eq!(retry_after, 1, "{what}");
        assert!((retry_after..=3).contains(&reset), "{what}: reset {reset}");
    }
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "switchboard_requests_denied_total{reason=\"rate_limited_ip\"}"
        ),
        2.0
    );
    // The IP is served again once its bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.get("/v1/switches", &op).await.status, 200);
}

#[tokio::test]
async fn a_per_client_override_beats_the_role_quota() {
    let gw = gateway(
        "[limits.roles.transact]\nper_s = 1\nburst = 1\n[[limits.clients]]\nsub = \"vip\"\nper_s = 100\nburst = 50\n",
        &[],
    )
    .await;
    gw.account("v1", "vip", "EUR", 100).await;
    let vip = gw.token("vip", &["transact"]);
    for _ in 0..20 {
        assert_eq!(gw.get("/v1/accounts/v1", &vip).await.status, 200);
    }
}

#[tokio::test]
async fn a_garbage_token_flood_is_refused_before_any_signature_check() {
    let gw = gateway("[limits]\nper_ip_per_s = 5\nper_ip_burst = 10\n", &[]).await;
    let mut statuses = Vec::new();
    for i in 0..50 {
        let r = gw
            .get("/v1/accounts/x", &format!("garbage.{i}.token"))
            .await;
        statuses.push(r.status);
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(unauthorized + limited, 50, "{statuses:?}");
    assert!(
        limited >= 35,
        "the per-IP limiter refused the flood: {statuses:?}"
    );
    let (_, metrics) = gw.ops_get("/metrics").await;
    // Only the requests let through reached token verification.
    let verified = metric(
        &metrics,
        "switchboard_requests_denied_total{reason=\"malformed\"}",
    );
    let refused = metric(
        &metrics,
        "switchboard_requests_denied_total{reason=\"rate_limited_ip\"}",
    );
    assert_eq!(verified as usize, unauthorized, "{metrics}");
    assert_eq!(refused as usize, limited);
}

#[tokio::test]
async fn past_the_in_flight_cap_transactions_are_shed_with_503_overloaded() {
    let sims = harness::spawn_sims(1).await;
    sims[0].set_faults(Mode::Slow, Some(1500), None);
    let gw = Arc::new(gateway("[limits]\ntransactions_in_flight_max = 1\n", &sims).await);
    gw.account("o1", "ola", "EUR", 100).await;
    let token = gw.token("ola", &["transact"]);
    let debit = |id: &str| harness::debit(id, "o1", 1);
    let first = {
        let (gw, token, body) = (gw.clone(), token.clone(), debit("ov-1"));
        tokio::spawn(async move { gw.post("/v1/transactions", &token, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let shed = gw.post("/v1/transactions", &token, &debit("ov-2")).await;
    assert_eq!((shed.status, shed.code()), (503, "overloaded"));
    assert!(shed.header("retry-after").is_some());
    assert_eq!(first.await.unwrap().status, 201);
    // Shed means never reserved: the id is free and the money untouched.
    assert_eq!(gw.get("/v1/transactions/ov-2", &token).await.status, 404);
    assert_eq!(gw.balance("o1").await, 99);
    assert_eq!(
        gw.post("/v1/transactions", &token, &debit("ov-2"))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn limiter_sizes_are_reported_after_pruning() {
    let gw = gateway("[limits]\nprune_interval_ms = 100\n", &[]).await;
    gw.account("p1", "pia", "EUR", 100).await;
    let token = gw.token("pia", &["transact"]);
    assert_eq!(gw.get("/v1/accounts/p1", &token).await.status, 200);
    harness::eventually(
        Duration::from_secs(5),
        "the limiter gauges are exported",
        || async {
            let (_, m) = gw.ops_get("/metrics").await;
            m.contains("switchboard_rate_limiter_keys{limiter=\"ip\"}")
                && m.contains("switchboard_rate_limiter_keys{limiter=\"client\"}")
                && m.contains("switchboard_auth_token_cache_entries")
        },
    )
    .await;
}
