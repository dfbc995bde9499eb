//! Switches that fail, hang or disappear; a gateway that crashes; live
//! switch lists. Real Postgres, real sims on real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchboard::devtools::sim::{self, Mode, SimHandle, SimOptions};
use switchboard::domain::{ClientId, Currency, GatewayRef, SwitchName, TransactionId, TxStatus};
use switchboard::ledger::Ledger;
use tokio::sync::Semaphore;

use crate::harness::{
    self, Db, GatewayProcess, Options, TestGateway, debit, eventually, metric, spawn_gateway_with,
};

/// Fast health checks and a short deadline, so failures show within seconds.
pub(crate) const FAST: &str = r#"
[server]
request_deadline_ms = 2500
[forwarding]
connect_timeout_ms = 200
attempt_timeout_ms = 600
attempts_max = 3
[health]
interval_ms = 150
timeout_ms = 150
unhealthy_threshold = 2
healthy_threshold = 2
passive_failures_max = 3
[database]
acquire_timeout_ms = 500
[reconciler]
interval_ms = 300
stale_after_ms = 4500
lease_ms = 8000
requery_timeout_ms = 500
"#;

async fn gateway(sims: &[SimHandle]) -> TestGateway {
    spawn_gateway_with(Options {
        db: Db::Postgres,
        switches: harness::switch_list(sims),
        layers: vec![FAST.into()],
        ..Options::default()
    })
    .await
}

async fn spawn_sim(name: &str, addr: SocketAddr, state: Option<&Path>) -> SimHandle {
    let mut opts = SimOptions::new(name);
    opts.state_file = state.map(Path::to_owned);
    // A port just released by a killed sim may take a moment to be free.
    for _ in 0..40 {
        match sim::spawn(addr, opts.clone()).await {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("cannot start sim {name} on {addr}");
}

/// Sends every body concurrently over `client` (at most `in_flight` at once);
/// returns (id, status) pairs, status 0 for a transport error.
pub(crate) async fn post_all(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    bodies: Vec<Value>,
    in_flight: usize,
) -> Vec<(String, u16)> {
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for body in bodies {
        let (client, url, token, permits) = (
            client.clone(),
            format!("{base}/v1/transactions"),
            token.to_owned(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await.unwrap();
            let id = body["transactionId"].as_str().unwrap().to_owned();
            let status = match client.post(url).bearer_auth(token).json(&body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            (id, status)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

pub(crate) async fn received(sims: &[SimHandle]) -> u64 {
    let mut n = 0;
    for s in sims {
        n += s.stats().await.received;
    }
    n
}

/// Every id ends final, and the ledger and the sims agree one to one: a
/// committed id was approved by exactly the switch the ledger names, a
/// released id is at no switch, and no switch saw a duplicate.
pub(crate) async fn assert_ledger_matches_sims(
    ledger: &Ledger,
    sims: &[SimHandle],
    client: &str,
    ids: &[String],
) {
    let mut committed = 0;
    let client = ClientId::parse(client).unwrap();
    for id in ids {
        let id = TransactionId::parse(id).unwrap();
        // Switches know a transaction by the gateway's reference: derived
        // from client and id, so known even for one the ledger lacks.
        let key = GatewayRef::of(&client, &id);
        let key = key.as_str();
        let row = ledger.transaction(&client, &id).await.unwrap();
        let at: Vec<&SimHandle> = sims.iter().filter(|s| s.outcome(key).is_some()).collect();
        assert!(at.len() <= 1, "{id} reached {} switches", at.len());
        let Some(r) = row else {
            assert!(at.is_empty(), "{id} is at a switch but not in the ledger");
            continue;
        };
        assert_eq!(r.gateway_ref.as_str(), key, "{id}");
        match r.status {
            TxStatus::Committed => {
                committed += 1;
                assert_eq!(at.len(), 1, "{id} ({key}) committed but at no switch");
                assert_eq!(
                    r.switch.as_ref().map(SwitchName::as_str),
                    Some(at[0].name.as_str()),
                    "{id}"
                );
                let outcome = at[0].outcome(key).unwrap();
                assert_eq!(outcome.status, "approved");
                assert_eq!(r.switch_reference, outcome.reference);
            }
            TxStatus::Failed | TxStatus::Declined => {
                assert!(
                    at.iter()
                        .all(|s| s.outcome(key).unwrap().status == "declined"),
                    "{id} released but approved at a switch"
                );
            }
            other => panic!("{id} is still {other:?}"),
        }
    }
    for s in sims {
        assert_eq!(s.stats().await.duplicates, 0, "{} saw a duplicate", s.name);
    }
    let eur = Currency::parse("EUR").unwrap();
    assert_eq!(
        ledger.balance_sum(&eur).await.unwrap(),
        0,
        "money is conserved"
    );
    assert!(committed > 0, "the load committed something");
}

pub(crate) async fn wait_until_all_final(ledger: &Ledger, limit: Duration) {
    eventually(limit, "every transaction is final", || async {
        ledger.count_unfinished().await.unwrap() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_killed_mid_load_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut sims = Vec::new();
    for i in 1..=3 {
        let state = dir.path().join(format!("sim-{i}.jsonl"));
        sims.push(
            spawn_sim(
                &format!("sim-{i}"),
                "127.0.0.1:0".parse().unwrap(),
                Some(&state),
            )
            .await,
        );
    }
    let gw = gateway(&sims).await;
    for i in 0..4 {
        gw.account(&format!("k{i}"), "kim", "EUR", 1_000_000).await;
    }
    let token = gw.token("kim", &["transact"]);
    let ids: Vec<String> = (0..900).map(|i| format!("kill-{i}")).collect();
    let bodies = ids
        .iter()
        .enumerate()
        .map(|(i, id)| debit(id, &format!("k{}", i % 4), 3))
        .collect();
    let load = {
        let (client, base, token) = (gw.client.clone(), gw.base.clone(), token.clone());
        tokio::spawn(async move { post_all(&client, &base, &token, bodies, 32).await })
    };
    eventually(Duration::from_secs(60), "load under way", || async {
        received(&sims).await >= 200
    })
    .await;
    let killed_addr = sims[0].addr;
    sims[0].kill();
    let replies = load.await.unwrap();

    // No client sees an error: what sim-1 may have processed is pending
    // (202), everything else went to a healthy switch.
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for (_, status) in &replies {
        *by_status.entry(*status).or_default() += 1;
    }
    assert!(
        by_status.keys().all(|s| *s == 201 || *s == 202),
        "client-visible errors: {by_status:?}"
    );

    // sim-1 comes back with its memory; the reconciler finishes the rest.
    let state = dir.path().join("sim-1.jsonl");
    sims[0] = spawn_sim("sim-1", killed_addr, Some(&state)).await;
    wait_until_all_final(&gw.state.ledger, Duration::from_secs(60)).await;
    assert_ledger_matches_sims(&gw.state.ledger, &sims, "kim", &ids).await;
}

#[tokio::test]
async fn a_hanging_switch_leaves_the_transaction_pending_then_the_reconciler_commits_it_once() {
    let sims = harness::spawn_sims(2).await;
    let gw = gateway(&sims).await;
    gw.account("h1", "hal", "EUR", 100).await;
    let token = gw.token("hal", &["transact"]);
    // The first pick is sim-1: make it take the transaction and go silent.
    sims[0].set_faults(Mode::HangAfterReceive, None, None);
    let r = gw
        .post("/v1/transactions", &token, &debit("hang-1", "h1", 40))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    assert_eq!(r.json["status"], "pending");
    assert_eq!(r.header("location"), Some("/v1/transactions/hang-1"));
    assert_eq!(gw.balance("h1").await, 60, "the money stays held");
    // A replay while pending is "in progress", not a second attempt.
    let again = gw
        .post("/v1/transactions", &token, &debit("hang-1", "h1", 40))
        .await;
    assert_eq!(
        (again.status, again.code()),
        (409, "transaction_in_progress")
    );

    sims[0].set_faults(Mode::Healthy, None, None);
    eventually(
        Duration::from_secs(20),
        "the reconciler commits it",
        || async { gw.get("/v1/transactions/hang-1", &token).await.json["status"] == "committed" },
    )
    .await;
    let t = gw.get("/v1/transactions/hang-1", &token).await;
    assert_eq!(t.json["switch"], "sim-1");
    assert_eq!(t.json["attempts"], 1, "never sent to a second switch");
    assert_eq!(sims[0].stats().await.received, 1);
    assert_eq!(sims[0].stats().await.duplicates, 0);
    assert_eq!(sims[1].stats().await.received, 0);
    assert_eq!(gw.balance("h1").await, 60);
    let replay = gw
        .post("/v1/transactions", &token, &debit("hang-1", "h1", 40))
        .await;
    assert_eq!(replay.status, 201, "the replay now answers committed");
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "switchboard_reconciler_outcomes_total{outcome=\"committed\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_500_is_requeried_and_the_transaction_completes_on_another_switch() {
    let sims = harness::spawn_sims(2).await;
    let gw = gateway(&sims).await;
    gw.account("e1", "eli", "EUR", 100).await;
    let token = gw.token("eli", &["transact"]);
    sims[0].set_faults(Mode::Error, None, None);
    let r = gw
        .post("/v1/transactions", &token, &debit("err-1", "e1", 10))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["switch"], "sim-2");
    assert_eq!(r.json["attempts"], 2);
    assert_eq!(sims[0].stats().await.received, 0);
    assert_eq!(sims[1].stats().await.received, 1);
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "switchboard_switch_retries_total{reason=\"not_found\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn with_every_sim_down_nothing_is_reserved_and_probes_bring_them_back() {
    let sims = harness::spawn_sims(2).await;
    let gw = gateway(&sims).await;
    gw.account("d1", "dee", "EUR", 100).await;
    let token = gw.token("dee", &["transact"]);
    let done = gw
        .post("/v1/transactions", &token, &debit("down-0", "d1", 5))
        .await;
    assert_eq!(done.status, 201);
    for s in &sims {
        s.set_faults(Mode::Down, None, None);
    }
    eventually(
        Duration::from_secs(10),
        "readyz reports no healthy switch",
        || async { gw.ops_get("/readyz").await.0 == 503 },
    )
    .await;
    let r = gw
        .post("/v1/transactions", &token, &debit("down-1", "d1", 10))
        .await;
    assert_eq!((r.status, r.code()), (503, "no_switch_available"));
    assert_eq!(gw.balance("d1").await, 95);
    // A replay of a finished transaction is still answered from the ledger.
    let replay = gw
        .post("/v1/transactions", &token, &debit("down-0", "d1", 5))
        .await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json, done.json);
    assert_eq!(
        gw.get("/v1/transactions/down-1", &token).await.status,
        404,
        "nothing reserved"
    );

    for s in &sims {
        s.set_faults(Mode::Healthy, None, None);
    }
    eventually(
        Duration::from_secs(10),
        "probes bring the switches back",
        || async { gw.ops_get("/readyz").await.0 == 200 },
    )
    .await;
    let r = gw
        .post("/v1/transactions", &token, &debit("down-2", "d1", 10))
        .await;
    assert_eq!(r.status, 201);
    let op = gw.token("op", &["operator"]);
    let switches = gw.get("/v1/switches", &op).await;
    for s in switches.json["switches"].as_array().unwrap() {
        assert_eq!(s["healthy"], true, "{s}");
        assert!(s["lastProbeAt"].is_string(), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_killed_mid_load_recovers_every_transaction_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::fresh_postgres().await;
    let url = db.url().to_owned();
    let sims = harness::spawn_sims(3).await;
    let switches = harness::switch_list(&sims);
    // Slow switches keep many transactions in flight when the process dies.
    for s in &sims {
        s.set_faults(Mode::Slow, Some(40), None);
    }
    let mut gw = GatewayProcess::start(dir.path(), &url, FAST, &switches).await;
    let auth = harness::test_auth();
    let client = harness::https_client();
    for i in 0..4 {
        gw.account(&format!("g{i}"), "gus", "EUR", 1_000_000).await;
    }
    let token = auth.sign("gus", &["transact"], 600).unwrap();
    let ids: Vec<String> = (0..2_000).map(|i| format!("crash-{i}")).collect();
    let bodies = ids
        .iter()
        .enumerate()
        .map(|(i, id)| debit(id, &format!("g{}", i % 4), 5))
        .collect();
    let load = {
        let (client, base, token) = (client.clone(), gw.base(), token.clone());
        tokio::spawn(async move { post_all(&client, &base, &token, bodies, 64).await })
    };
    eventually(Duration::from_secs(60), "load under way", || async {
        received(&sims).await >= 400
    })
    .await;
    gw.kill();
    let replies = load.await.unwrap();
    assert!(
        replies.iter().any(|(_, s)| *s == 0),
        "the kill cut some requests off"
    );

    for s in &sims {
        s.set_faults(Mode::Healthy, None, None);
    }
    let _gw = GatewayProcess::restart(dir.path(), &gw).await;
    let ledger = harness::ledger_at(&url).await;
    wait_until_all_final(&ledger, Duration::from_secs(60)).await;
    assert_ledger_matches_sims(&ledger, &sims, "gus", &ids).await;
    // Every transaction a client was told committed is committed.
    for (id, status) in &replies {
        if *status == 201 {
            let r = ledger
                .transactions_with_id(&TransactionId::parse(id).unwrap(), 1)
                .await
                .unwrap()
                .pop()
                .unwrap();
            assert_eq!(r.status, TxStatus::Committed, "{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_never_duplicate_and_never_double_resolve() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let db = crate::db::fresh_postgres().await;
    let url = db.url().to_owned();
    let sims = harness::spawn_sims(2).await;
    let switches = harness::switch_list(&sims);
    let a = GatewayProcess::start(dir_a.path(), &url, FAST, &switches).await;
    let b = GatewayProcess::start(dir_b.path(), &url, FAST, &switches).await;
    let auth = harness::test_auth();
    let client = harness::https_client();
    a.account("shared", "pat", "EUR", 1_000_000).await;
    let token = auth.sign("pat", &["transact"], 600).unwrap();

    // The same ids through both gateways at once: each runs at most once.
    let ids: Vec<String> = (0..600).map(|i| format!("dual-{i}")).collect();
    let bodies: Vec<Value> = ids.iter().map(|id| debit(id, "shared", 2)).collect();
    let (base_a, base_b) = (a.base(), b.base());
    let (ra, rb) = tokio::join!(
        post_all(&client, &base_a, &token, bodies.clone(), 32),
        post_all(&client, &base_b, &token, bodies, 32)
    );
    for (_, status) in ra.iter().chain(rb.iter()) {
        assert!([201, 409].contains(status), "unexpected {status}");
    }

    // Leave a batch pending on both, then let both reconcilers race for it.
    sims[0].set_faults(Mode::HangAfterReceive, None, None);
    sims[1].set_faults(Mode::HangAfterReceive, None, None);
    let hung: Vec<String> = (0..20).map(|i| format!("hung-{i}")).collect();
    let hung_bodies = hung.iter().map(|id| debit(id, "shared", 2)).collect();
    let hung_bodies_b: Vec<Value> = (20..40)
        .map(|i| debit(&format!("hung-{i}"), "shared", 2))
        .collect();
    let (ha, hb) = tokio::join!(
        post_all(&client, &base_a, &token, hung_bodies, 20),
        post_all(&client, &base_b, &token, hung_bodies_b, 20)
    );
    assert!(
        ha.iter().chain(hb.iter()).all(|(_, s)| *s == 202),
        "all pending"
    );
    for s in &sims {
        s.set_faults(Mode::Healthy, None, None);
    }
    let ledger = harness::ledger_at(&url).await;
    wait_until_all_final(&ledger, Duration::from_secs(60)).await;

    let mut all_ids = ids.clone();
    all_ids.extend((0..40).map(|i| format!("hung-{i}")));
    assert_ledger_matches_sims(&ledger, &sims, "pat", &all_ids).await;
    let committed = |m: &str| {
        metric(
            m,
            "switchboard_reconciler_outcomes_total{outcome=\"committed\"}",
        )
    };
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(
        committed(&ma) + committed(&mb),
        40.0,
        "each pending transaction was resolved by exactly one gateway"
    );
    assert_eq!(received(&sims).await, 640);
}

#[tokio::test]
async fn a_live_switch_list_reload_adds_removes_and_rejects_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let sims = harness::spawn_sims(2).await;
    let file = dir.path().join("switchboard.toml");
    let write = |switches: &[&SimHandle], extra: &str| {
        let list: Vec<_> = switches.iter().map(|s| (s.name.clone(), s.url())).collect();
        let text = format!("{FAST}{}{extra}", harness::switches_toml(&list));
        std::fs::write(&file, text).unwrap();
    };
    write(&[&sims[0]], "");
    let gw = spawn_gateway_with(Options {
        config_file: Some(file.clone()),
        ..Options::default()
    })
    .await;
    gw.account("l1", "lou", "EUR", 1_000_000).await;
    let token = gw.token("lou", &["transact"]);
    let send = || async {
        gw.post("/v1/transactions", &token, &debit(&uuid(), "l1", 1))
            .await
    };
    assert_eq!(send().await.status, 201);
    assert_eq!(sims[1].stats().await.received, 0);

    // Added: sim-2 gets traffic without a restart.
    write(&[&sims[0], &sims[1]], "");
    eventually(
        Duration::from_secs(10),
        "sim-2 joins the rotation",
        || async {
            assert_eq!(send().await.status, 201);
            sims[1].stats().await.received > 0
        },
    )
    .await;

    // Removed: sim-1 gets nothing after the reload.
    write(&[&sims[1]], "");
    eventually(
        Duration::from_secs(10),
        "sim-1 leaves the rotation",
        || async { gw.state.switches.snapshot().entries.len() == 1 },
    )
    .await;
    let before = sims[0].stats().await.received;
    for _ in 0..10 {
        assert_eq!(send().await.status, 201);
    }
    assert_eq!(sims[0].stats().await.received, before);

    // Broken: rejected, the running list kept, traffic continues.
    std::fs::write(&file, "[[switches]]\nname = \"\"\nurl = \"nope\"\n").unwrap();
    eventually(
        Duration::from_secs(10),
        "the broken file is rejected",
        || async {
            gw.metric("switchboard_config_reloads_total{result=\"rejected\"}")
                .await
                >= 1.0
        },
    )
    .await;
    assert_eq!(
        gw.state.switches.snapshot().entries[0].name().as_str(),
        "sim-2"
    );
    assert_eq!(send().await.status, 201);
}

fn uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tokio::test]
async fn https_switches_are_verified_and_client_certificates_presented() {
    let certs = harness::certs();
    let mut opts = SimOptions::new("secure-1");
    opts.tls = Some(sim::SimTls {
        cert: certs.server_cert(),
        key: certs.server_key(),
        client_ca: Some(certs.ca_cert()),
    });
    let secure = sim::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    assert!(secure.url().starts_with("https://"));
    let switches = vec![(secure.name.clone(), secure.url())];
    let ca = format!(
        "[forwarding]\nca_bundle = \"{}\"\n",
        certs.ca_cert().display()
    );

    let with_cert = spawn_gateway_with(Options {
        switches: switches.clone(),
        layers: vec![
            FAST.into(),
            ca.clone(),
            format!(
                "[forwarding]\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
                certs.client_cert().display(),
                certs.client_key().display()
            ),
        ],
        ..Options::default()
    })
    .await;
    with_cert.account("s1", "sue", "EUR", 100).await;
    let token = with_cert.token("sue", &["transact"]);
    let r = with_cert
        .post("/v1/transactions", &token, &debit("tls-1", "s1", 10))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(secure.stats().await.received, 1);

    // Without a client certificate the handshake fails: the probe marks the
    // switch down and nothing is reserved.
    let without_cert = spawn_gateway_with(Options {
        switches,
        layers: vec![FAST.into(), ca],
        ..Options::default()
    })
    .await;
    without_cert.account("s2", "sue", "EUR", 100).await;
    let r = without_cert
        .post("/v1/transactions", &token, &debit("tls-2", "s2", 10))
        .await;
    assert_eq!((r.status, r.code()), (503, "no_switch_available"));
    assert_eq!(secure.stats().await.received, 1);
}
