//! Balancing end to end (issue: routing for speed): real sims behind a real
//! gateway. A switch turned slow at run time gets little new traffic under
//! `least_latency` and its full share under `round_robin`; a flaky switch is
//! ejected by success rate and comes back through slow start; weights hold
//! through the gateway; every transaction still ends exactly once.

use std::time::Duration;

use serde_json::Value;
use switchboard::devtools::sim::{Mode, SimHandle};

use crate::harness::{self, Db, Options, TestGateway, debit, eventually, spawn_gateway_with};
use crate::resilience::{FAST, assert_ledger_matches_sims, post_all, wait_until_all_final};

/// What each sim received so far.
async fn received_each(sims: &[SimHandle]) -> Vec<u64> {
    let mut out = Vec::new();
    for s in sims {
        out.push(s.stats().await.received);
    }
    out
}

async fn gateway(switches: Vec<(String, String)>, layer: &str) -> TestGateway {
    spawn_gateway_with(Options {
        db: Db::Postgres,
        switches,
        layers: vec![FAST.into(), layer.into()],
        ..Options::default()
    })
    .await
}

/// `n` debits of 1 with ids `{prefix}-{i}` over the accounts [`open_accounts`] opened.
fn bodies(prefix: &str, n: usize) -> (Vec<String>, Vec<Value>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let bodies = ids
        .iter()
        .enumerate()
        .map(|(i, id)| debit(id, &format!("bal-acct-{}", i % ACCOUNTS), 1))
        .collect();
    (ids, bodies)
}

const ACCOUNTS: usize = 8;

/// Runs `n` debits at concurrency 16 and returns each sim's share of them,
/// and every id sent.
async fn share_of_load(
    gw: &TestGateway,
    sims: &[SimHandle],
    prefix: &str,
    n: usize,
) -> (Vec<f64>, Vec<String>) {
    let token = gw.token("bal", &["transact"]);
    let before = received_each(sims).await;
    let (ids, bodies) = bodies(prefix, n);
    let replies = post_all(&gw.client, &gw.base, &token, bodies, 16).await;
    assert!(
        replies.iter().all(|(_, s)| *s == 201),
        "every debit commits: {:?}",
        replies
            .iter()
            .filter(|(_, s)| *s != 201)
            .take(5)
            .collect::<Vec<_>>()
    );
    let after = received_each(sims).await;
    let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let shares = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) as f64 / total as f64)
        .collect();
    (shares, ids)
}

async fn open_accounts(gw: &TestGateway) {
    for i in 0..ACCOUNTS {
        gw.account(&format!("bal-acct-{i}"), "bal", "EUR", 1_000_000)
            .await;
    }
}

async fn slow_switch_share(mode: &str) -> f64 {
    let sims = harness::spawn_sims(3).await;
    let layer = format!("[forwarding]\nbalancing = \"{mode}\"\n");
    let gw = gateway(harness::switch_list(&sims), &layer).await;
    open_accounts(&gw).await;
    // Warm up with every sim fast, then turn one slow at run time.
    share_of_load(&gw, &sims, "slow-warm", 90).await;
    sims[2].set_faults(Mode::Slow, Some(200), None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (shares, ids) = share_of_load(&gw, &sims, "slow-load", 450).await;
    let ledger = gw.state.ledger.clone();
    wait_until_all_final(&ledger, Duration::from_secs(30)).await;
    assert_ledger_matches_sims(&ledger, &sims, "bal", &ids).await;
    shares[2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_sends_a_slow_switch_little_new_traffic() {
    let share = slow_switch_share("least_latency").await;
    assert!(share < 0.10, "the slow switch got {:.1}%", share * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_keeps_sending_a_slow_switch_its_full_share() {
    let share = slow_switch_share("round_robin").await;
    assert!(
        (share - 1.0 / 3.0).abs() < 0.01,
        "round robin gives each of three a third, slow or not: {:.1}%",
        share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_honoured_through_the_gateway() {
    let sims = harness::spawn_sims(3).await;
    let mut toml = String::from("[forwarding]\nbalancing = \"round_robin\"\n");
    for (i, s) in sims.iter().enumerate() {
        toml.push_str(&format!(
            "[[switches]]\nname = \"{}\"\nurl = \"{}\"\nweight = {}\n",
            s.name,
            s.url(),
            i + 1
        ));
    }
    let gw = gateway(Vec::new(), &toml).await;
    open_accounts(&gw).await;
    let (shares, _) = share_of_load(&gw, &sims, "w", 600).await;
    let got: Vec<u64> = received_each(&sims).await;
    assert_eq!(got, vec![100, 200, 300], "shares {shares:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_switch_is_ejected_by_success_rate_and_comes_back_through_slow_start() {
    let sims = harness::spawn_sims(3).await;
    // Consecutive-failure ejection out of the way: this is about the rate.
    let layer = "[forwarding]\nslow_start_ms = 3000\n\
                 [health]\npassive_failures_max = 1000\noutlier_interval_ms = 1000\n\
                 outlier_min_requests = 10\noutlier_failure_percent = 20\n\
                 outlier_base_ejection_ms = 2000\noutlier_max_ejection_ms = 10000\n\
                 outlier_max_ejection_percent = 34\n";
    let gw = gateway(harness::switch_list(&sims), layer).await;
    open_accounts(&gw).await;
    sims[0].set_faults(Mode::Flaky, None, Some(0.3));
    let op = gw.token("op", &["operator"]);
    let token = gw.token("bal", &["transact"]);
    let mut ids = Vec::new();
    let mut round = 0;
    let sim1 = |v: &Value| {
        v["switches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "sim-1")
            .cloned()
            .unwrap()
    };
    // Load in rounds until the flaky switch is ejected (bounded).
    loop {
        let (round_ids, bodies) = bodies(&format!("fl-{round}"), 60);
        ids.extend(round_ids);
        post_all(&gw.client, &gw.base, &token, bodies, 8).await;
        let s = sim1(&gw.get("/v1/switches", &op).await.json);
        if s["outlierEjected"] == true {
            assert!(s["outlierEjections"].as_u64().unwrap() >= 1, "{s}");
            let rate = s["balancing"]["successRate"].as_f64().unwrap();
            assert!(rate < 0.8, "ejected for a low success rate: {s}");
            break;
        }
        round += 1;
        assert!(round < 30, "the flaky switch was never ejected: {s}");
    }
    assert!(
        gw.metric("switchboard_switch_outlier_ejections_total{switch=\"sim-1\"}")
            .await
            >= 1.0
    );
    // While ejected, fresh transactions avoid it.
    let before = sims[0].stats().await.received;
    let (round_ids, bodies) = bodies("fl-out", 30);
    ids.extend(round_ids);
    post_all(&gw.client, &gw.base, &token, bodies, 8).await;
    let s = sim1(&gw.get("/v1/switches", &op).await.json);
    if s["outlierEjected"] == true {
        assert_eq!(
            sims[0].stats().await.received,
            before,
            "an ejected switch gets nothing"
        );
    }
    // Fixed, it comes back after its ejection time, ramping up.
    sims[0].set_faults(Mode::Healthy, None, None);
    let saw_ramp;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = sim1(&gw.get("/v1/switches", &op).await.json);
        if s["outlierEjected"] == false && s["healthy"] == true {
            saw_ramp = s["balancing"]["slowStartShare"].as_f64().unwrap() < 1.0;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sim-1 never came back: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_ramp, "it came back through slow start");
    eventually(Duration::from_secs(10), "slow start is over", || async {
        let s = sim1(&gw.get("/v1/switches", &op).await.json);
        s["balancing"]["slowStartShare"] == 1.0
    })
    .await;
    let ledger = gw.state.ledger.clone();
    wait_until_all_final(&ledger, Duration::from_secs(30)).await;
    assert_ledger_matches_sims(&ledger, &sims, "bal", &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_is_on_metrics_and_the_switch_list() {
    let sims = harness::spawn_sims(2).await;
    let gw = gateway(
        harness::switch_list(&sims),
        "[forwarding]\nbalancing = \"least_latency\"\n",
    )
    .await;
    open_accounts(&gw).await;
    share_of_load(&gw, &sims, "m", 40).await;
    let op = gw.token("op", &["operator"]);
    let list = gw.get("/v1/switches", &op).await.json;
    assert_eq!(list["balancing"], "least_latency");
    assert_eq!(list["panic"], false);
    let picked: u64 = list["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["balancing"]["picked"].as_u64().unwrap())
        .sum();
    assert_eq!(picked, 40, "{list}");
    eventually(
        Duration::from_secs(5),
        "a health round published the gauges",
        || async {
            gw.metric("switchboard_switch_latency_ewma_seconds{switch=\"sim-1\"}")
                .await
                > 0.0
                || gw
                    .metric("switchboard_switch_latency_ewma_seconds{switch=\"sim-2\"}")
                    .await
                    > 0.0
        },
    )
    .await;
    // Picks are added to the counter at each health round.
    eventually(Duration::from_secs(5), "every pick counted", || async {
        gw.metric("switchboard_switch_picks_total{switch=\"sim-1\"}")
            .await
            + gw.metric("switchboard_switch_picks_total{switch=\"sim-2\"}")
                .await
            == 40.0
    })
    .await;
    assert_eq!(gw.metric("switchboard_switches_panic").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_switches_up_is_a_panic_on_metrics_the_list_and_the_status_page() {
    let sims = harness::spawn_sims(3).await;
    let gw = gateway(harness::switch_list(&sims), "").await;
    sims[0].set_faults(Mode::Down, None, None);
    sims[1].set_faults(Mode::Down, None, None);
    eventually(Duration::from_secs(5), "panic", || async {
        gw.metric("switchboard_switches_panic").await == 1.0
    })
    .await;
    let op = gw.token("op", &["operator"]);
    assert_eq!(gw.get("/v1/switches", &op).await.json["panic"], true);
    let (status, page) = gw.ops_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"panic\""), "the status page says so");
    // Still routed, only to the switch that is up.
    gw.account("p-1", "bal", "EUR", 100).await;
    let token = gw.token("bal", &["transact"]);
    let r = gw
        .post("/v1/transactions", &token, &debit("p-tx", "p-1", 1))
        .await;
    assert_eq!(r.status, 201);
    assert!(
        sims[2]
            .outcome(r.json["gatewayRef"].as_str().unwrap())
            .is_some()
    );
    for s in &sims[..2] {
        s.set_faults(Mode::Healthy, None, None);
    }
    eventually(Duration::from_secs(5), "panic over", || async {
        gw.metric("switchboard_switches_panic").await == 0.0
    })
    .await;
}
