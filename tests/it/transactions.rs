//! Transactions end to end: HTTPS client → gateway → ledger → simulated switches.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::harness::{
    self, Db, Options, TestGateway, account_body, credit, debit, in_currency, spawn_gateway_with,
    transfer,
};

async fn gateway(db: Db, sims: &[switchboard::devtools::sim::SimHandle]) -> TestGateway {
    gateway_with(db, sims, "").await
}

/// Generous deadlines: these tests are about the ledger and the API, not time.
const PATIENT: &str = "[server]\nrequest_deadline_ms = 60000\n[database]\nconnections_max = 16\nacquire_timeout_ms = 30000\n[reconciler]\nstale_after_ms = 600000\n";

async fn gateway_with(
    db: Db,
    sims: &[switchboard::devtools::sim::SimHandle],
    extra: &str,
) -> TestGateway {
    spawn_gateway_with(Options {
        db,
        switches: harness::switch_list(sims),
        layers: vec![PATIENT.into(), extra.into()],
        ..Options::default()
    })
    .await
}

/// Sends `bodies` concurrently (at most `in_flight` at once), returns every reply.
async fn post_all(
    gw: &Arc<TestGateway>,
    token: &str,
    bodies: Vec<Value>,
    in_flight: usize,
) -> Vec<harness::Reply> {
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for body in bodies {
        let (gw, token, permits) = (gw.clone(), token.to_owned(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await.unwrap();
            gw.post("/v1/transactions", &token, &body).await
        });
    }
    let mut replies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        replies.push(r.unwrap());
    }
    replies
}

async fn sum_stats(
    sims: &[switchboard::devtools::sim::SimHandle],
) -> switchboard::devtools::sim::Stats {
    let mut total = switchboard::devtools::sim::Stats::default();
    for s in sims {
        let st = s.stats().await;
        total.received += st.received;
        total.approved += st.approved;
        total.declined += st.declined;
        total.duplicates += st.duplicates;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_withdrawals_of_2_from_10000_succeed_exactly_5000_times() {
    let sims = harness::spawn_sims(3).await;
    let gw = Arc::new(gateway(Db::Postgres, &sims).await);
    gw.account("hot", "alice", "EUR", 10_000).await;
    let token = gw.token("alice", &["transact"]);
    let bodies = (0..10_000)
        .map(|i| debit(&format!("w-{i}"), "hot", 2))
        .collect();
    // Every request is launched at once; the client keeps up to 512 on the wire.
    let replies = post_all(&gw, &token, bodies, 512).await;

    let created = replies.iter().filter(|r| r.status == 201).count();
    let refused = replies
        .iter()
        .filter(|r| r.status == 422 && r.code() == "insufficient_funds")
        .count();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| r.status != 201 && r.status != 422)
        .take(3)
        .map(|r| (r.status, r.json.clone()))
        .collect();
    assert_eq!(
        (created, refused),
        (5_000, 5_000),
        "other answers: {other:?}"
    );
    assert_eq!(gw.balance("hot").await, 0);

    let stats = sum_stats(&sims).await;
    assert_eq!(stats.received, 5_000);
    assert_eq!(stats.approved, 5_000);
    assert_eq!(stats.duplicates, 0);
    // Round-robin spread the work over every switch.
    for s in &sims {
        assert!(s.stats().await.received > 1_000, "{} was starved", s.name);
    }

    // The ledger agrees with every answer, id by id.
    let auditor = gw.token("auditor", &["auditor"]);
    for (i, r) in replies.iter().enumerate().step_by(50) {
        let _ = i;
        let id = match r.status {
            201 => r.json["transactionId"].as_str().unwrap().to_owned(),
            _ => continue,
        };
        let t = gw.get(&format!("/v1/transactions/{id}"), &auditor).await;
        assert_eq!(t.json["status"], "committed");
        let sim = sims
            .iter()
            .find(|s| s.name == t.json["switch"].as_str().unwrap())
            .expect("a known switch");
        // The switch knows it by the gateway's reference, not the client's id.
        let key = t.json["gatewayRef"].as_str().expect("a gatewayRef");
        assert_ne!(key, id);
        let outcome = sim.outcome(key).expect("the switch recorded it");
        assert_eq!(
            Some(t.json["switchReference"].as_str().unwrap()),
            outcome.reference.as_deref()
        );
    }
    let eur = switchboard::domain::Currency::parse("EUR").unwrap();
    assert_eq!(gw.state.ledger.balance_sum(&eur).await.unwrap(), 0);
}

/// Every id the client was answered for agrees with the ledger, for a sample.
async fn check_ledger_matches(gw: &TestGateway, replies: &[harness::Reply]) {
    let auditor = gw.token("auditor", &["auditor"]);
    for r in replies.iter().filter(|r| r.status == 201).take(50) {
        let id = r.json["transactionId"].as_str().unwrap();
        let t = gw.get(&format!("/v1/transactions/{id}"), &auditor).await;
        assert_eq!(t.json["status"], "committed", "{id}");
    }
}

async fn limited_stock_claimed_by_1000_clients(db: Db) {
    let sims = harness::spawn_sims(2).await;
    let gw = Arc::new(gateway(db, &sims).await);
    gw.account("stock", "shop", "EUR", 100).await;
    let token = gw.token("shop", &["transact"]);
    let bodies = (0..1_000)
        .map(|i| debit(&format!("claim-{i}"), "stock", 1))
        .collect();
    let replies = post_all(&gw, &token, bodies, 1_000).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let refused = replies
        .iter()
        .filter(|r| r.code() == "insufficient_funds")
        .count();
    assert_eq!((created, refused), (100, 900));
    assert_eq!(gw.balance("stock").await, 0);
    assert_eq!(sum_stats(&sims).await.received, 100);
    check_ledger_matches(&gw, &replies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_stock_is_claimed_exactly_100_times_postgres() {
    limited_stock_claimed_by_1000_clients(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_stock_is_claimed_exactly_100_times_sqlite() {
    limited_stock_claimed_by_1000_clients(Db::Sqlite).await;
}

async fn opposite_transfers_conserve_money(db: Db) {
    let sims = harness::spawn_sims(3).await;
    let gw = Arc::new(gateway(db, &sims).await);
    gw.account("a", "alice", "EUR", 1_000_000).await;
    gw.account("b", "bob", "EUR", 1_000_000).await;
    let alice = gw.token("alice", &["transact"]);
    let bob = gw.token("bob", &["transact"]);
    let transfer = |i: usize, from: &str, to: &str| transfer(&format!("x-{i}"), from, to, 7);
    let a_to_b = (0..1_000).map(|i| transfer(i, "a", "b")).collect();
    let b_to_a = (1_000..2_000).map(|i| transfer(i, "b", "a")).collect();
    let (ra, rb) = tokio::join!(
        post_all(&gw, &alice, a_to_b, 256),
        post_all(&gw, &bob, b_to_a, 256)
    );
    for r in ra.iter().chain(rb.iter()) {
        assert_eq!(r.status, 201, "every transfer completes: {:?}", r.json);
    }
    assert_eq!(gw.balance("a").await, 1_000_000);
    assert_eq!(gw.balance("b").await, 1_000_000);
    let eur = switchboard::domain::Currency::parse("EUR").unwrap();
    assert_eq!(gw.state.ledger.balance_sum(&eur).await.unwrap(), 0);
    assert_eq!(sum_stats(&sims).await.received, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_transfers_never_deadlock_and_conserve_money_postgres() {
    opposite_transfers_conserve_money(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_transfers_never_deadlock_and_conserve_money_sqlite() {
    opposite_transfers_conserve_money(Db::Sqlite).await;
}

#[tokio::test]
async fn credit_and_debit_move_money_through_settlement_accounts() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("c1", "carol", "EUR", 100).await;
    let token = gw.token("carol", &["transact"]);
    let r = gw
        .post("/v1/transactions", &token, &credit("cr-1", "c1", 50))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["status"], "committed");
    assert_eq!(r.json["switch"], "sim-1");
    assert_eq!(r.json["accountId"], "c1");
    assert!(
        r.json["switchReference"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let r = gw
        .post("/v1/transactions", &token, &debit("db-1", "c1", 30))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(gw.balance("c1").await, 120);
    assert_eq!(gw.balance("settlement:sim-1:EUR").await, -20);
    // A system account is the auditors' to read: a token whose subject is
    // `system` (its nominal owner) gets the absent answer, as anyone does.
    let system = gw.token("system", &["transact"]);
    let peek = gw.get("/v1/accounts/settlement:sim-1:EUR", &system).await;
    assert_eq!((peek.status, peek.code()), (404, "not_found"));
    let statement = gw
        .get("/v1/accounts/settlement:sim-1:EUR/postings", &system)
        .await;
    assert_eq!(statement.status, 404);
}

#[tokio::test]
async fn a_replay_returns_the_first_answer_marked_replayed() {
    let sims = harness::spawn_sims(2).await;
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("r1", "rita", "EUR", 100).await;
    let token = gw.token("rita", &["transact"]);
    let first = gw
        .post("/v1/transactions", &token, &debit("rp-1", "r1", 10))
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = gw
        .post("/v1/transactions", &token, &debit("rp-1", "r1", 10))
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.json, first.json);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(gw.balance("r1").await, 90, "charged once");
    assert_eq!(sum_stats(&sims).await.received, 1);

    // A refusal replays too, even after money arrived since.
    let poor = gw
        .post("/v1/transactions", &token, &debit("rp-2", "r1", 1_000))
        .await;
    assert_eq!((poor.status, poor.code()), (422, "insufficient_funds"));
    let again = gw
        .post("/v1/transactions", &token, &debit("rp-2", "r1", 1_000))
        .await;
    assert_eq!((again.status, again.code()), (422, "insufficient_funds"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn an_in_flight_duplicate_gets_409_with_retry_after() {
    let sims = harness::spawn_sims(1).await;
    sims[0].set_faults(switchboard::devtools::sim::Mode::Slow, Some(1500), None);
    let gw = Arc::new(gateway(Db::Postgres, &sims).await);
    gw.account("s1", "sam", "EUR", 100).await;
    let token = gw.token("sam", &["transact"]);
    let first = {
        let (gw, token) = (gw.clone(), token.clone());
        tokio::spawn(async move {
            gw.post("/v1/transactions", &token, &debit("ip-1", "s1", 10))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let dup = gw
        .post("/v1/transactions", &token, &debit("ip-1", "s1", 10))
        .await;
    assert_eq!((dup.status, dup.code()), (409, "transaction_in_progress"));
    assert!(
        dup.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok())
    );
    assert_eq!(first.await.unwrap().status, 201);
    assert_eq!(sum_stats(&sims).await.received, 1);
}

#[tokio::test]
async fn a_reused_id_with_another_payload_is_refused() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("u1", "uma", "EUR", 100).await;
    let uma = gw.token("uma", &["transact"]);
    assert_eq!(
        gw.post("/v1/transactions", &uma, &debit("re-1", "u1", 10))
            .await
            .status,
        201
    );
    let other_amount = gw
        .post("/v1/transactions", &uma, &debit("re-1", "u1", 11))
        .await;
    assert_eq!(
        (other_amount.status, other_amount.code()),
        (422, "transaction_id_reused")
    );
    assert_eq!(gw.balance("u1").await, 90);
}

/// Idempotency keys are per client (issue 11): another client's use of an
/// id neither blocks nor reveals anything; each client sees, replays and
/// reads only its own; the switch sees two transactions under two
/// references of the gateway, never one key twice.
#[tokio::test]
async fn the_same_id_from_two_clients_is_two_transactions() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("u1", "uma", "EUR", 100).await;
    gw.account("v1", "vic", "EUR", 100).await;
    let uma = gw.token("uma", &["transact"]);
    let vic = gw.token("vic", &["transact"]);
    let auditor = gw.token("audrey", &["auditor"]);

    // vic takes the id first: uma's transaction goes through all the same.
    let theirs = gw
        .post("/v1/transactions", &vic, &debit("sq-1", "v1", 30))
        .await;
    assert_eq!(theirs.status, 201, "{:?}", theirs.json);
    let ours = gw
        .post("/v1/transactions", &uma, &debit("sq-1", "u1", 10))
        .await;
    assert_eq!(ours.status, 201, "{:?}", ours.json);
    assert_eq!(ours.json["clientId"], "uma");
    assert_eq!(ours.json["accountId"], "u1");
    assert!(!ours.json.to_string().contains("v1"), "{:?}", ours.json);
    let (our_ref, their_ref) = (
        ours.json["gatewayRef"].as_str().unwrap().to_owned(),
        theirs.json["gatewayRef"].as_str().unwrap().to_owned(),
    );
    assert_ne!(our_ref, their_ref);
    assert_eq!(gw.balance("u1").await, 90);
    assert_eq!(gw.balance("v1").await, 70);

    // Each replay is the client's own answer.
    for (token, account, amount, reference) in
        [(&uma, "u1", 10, &our_ref), (&vic, "v1", 30, &their_ref)]
    {
        let replay = gw
            .post("/v1/transactions", token, &debit("sq-1", account, amount))
            .await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.json["gatewayRef"], reference.as_str());
        let read = gw.get("/v1/transactions/sq-1", token).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.json["accountId"], account);
    }
    // Naming another client finds nothing for a transact caller.
    let peek = gw.get("/v1/transactions/sq-1?clientId=vic", &uma).await;
    assert_eq!(peek.status, 404);

    // An auditor names the client when several used the id.
    let ambiguous = gw.get("/v1/transactions/sq-1", &auditor).await;
    assert_eq!(
        (ambiguous.status, ambiguous.code()),
        (400, "invalid_request")
    );
    assert!(ambiguous.json.to_string().contains("clientId"));
    let named = gw.get("/v1/transactions/sq-1?clientId=vic", &auditor).await;
    assert_eq!(named.status, 200);
    assert_eq!(named.json["gatewayRef"], their_ref.as_str());
    let bad = gw.get("/v1/transactions/sq-1?client=vic", &auditor).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_request"));

    // The switch saw two transactions, each under the gateway's reference.
    let stats = sum_stats(&sims).await;
    assert_eq!((stats.received, stats.duplicates), (2, 0));
    for reference in [&our_ref, &their_ref] {
        assert_eq!(
            sims[0].outcome(reference).map(|o| o.status).as_deref(),
            Some("approved")
        );
    }
    assert_eq!(sims[0].outcome("sq-1"), None);
}

#[tokio::test]
async fn a_decline_releases_the_money_and_answers_422() {
    let sims = harness::spawn_sims(1).await;
    sims[0].set_faults(switchboard::devtools::sim::Mode::Decline, None, None);
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("d1", "dan", "EUR", 100).await;
    let token = gw.token("dan", &["transact"]);
    let r = gw
        .post("/v1/transactions", &token, &debit("dc-1", "d1", 60))
        .await;
    assert_eq!((r.status, r.code()), (422, "declined_by_switch"));
    assert_eq!(gw.balance("d1").await, 100);
    let t = gw.get("/v1/transactions/dc-1", &token).await;
    assert_eq!(t.json["status"], "declined");
    assert_eq!(t.json["attempts"], 1);
}

#[tokio::test]
async fn with_every_switch_refusing_the_money_is_released_with_503() {
    let sims = harness::spawn_sims(2).await;
    // Probes too rare to notice: the switches refuse at send time instead.
    let gw = gateway_with(Db::Postgres, &sims, "[health]\ninterval_ms = 600000\n").await;
    for s in &sims {
        s.set_faults(switchboard::devtools::sim::Mode::Down, None, None);
    }
    gw.account("n1", "nia", "EUR", 100).await;
    let token = gw.token("nia", &["transact"]);
    let r = gw
        .post("/v1/transactions", &token, &debit("ns-1", "n1", 60))
        .await;
    assert_eq!((r.status, r.code()), (503, "no_switch_available"));
    assert_eq!(gw.balance("n1").await, 100);
    let t = gw.get("/v1/transactions/ns-1", &token).await;
    assert_eq!(
        (t.json["status"].as_str(), t.json["attempts"].as_u64()),
        (Some("failed"), Some(2))
    );
}

#[tokio::test]
async fn without_switches_nothing_is_reserved() {
    let gw = gateway(Db::Postgres, &[]).await;
    gw.account("z1", "zoe", "EUR", 100).await;
    let token = gw.token("zoe", &["transact"]);
    let r = gw
        .post("/v1/transactions", &token, &debit("zz-1", "z1", 60))
        .await;
    assert_eq!((r.status, r.code()), (503, "no_switch_available"));
    assert_eq!(gw.get("/v1/transactions/zz-1", &token).await.status, 404);
}

#[tokio::test]
async fn another_clients_account_is_indistinguishable_from_a_missing_one() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("mine", "me", "EUR", 100).await;
    gw.account("theirs", "them", "EUR", 100).await;
    let me = gw.token("me", &["transact"]);

    let read_theirs = gw.get("/v1/accounts/theirs", &me).await;
    let read_missing = gw.get("/v1/accounts/nobody", &me).await;
    assert_eq!(read_theirs.status, 404);
    assert_eq!(read_theirs.json, read_missing.json);

    let debit_theirs = gw
        .post("/v1/transactions", &me, &debit("steal-1", "theirs", 10))
        .await;
    let debit_missing = gw
        .post("/v1/transactions", &me, &debit("steal-2", "nobody", 10))
        .await;
    assert_eq!(debit_theirs.status, 404);
    assert_eq!(debit_theirs.json, debit_missing.json);
    assert_eq!(gw.balance("theirs").await, 100);

    // A transfer to their account in another currency answers like one to
    // no account: their account's currency is not mine to learn.
    gw.account("mine-usd", "me", "USD", 100).await;
    let transfer = |id: &str, to: &str| in_currency(transfer(id, "mine-usd", to, 1), "USD");
    let to_theirs = gw
        .post("/v1/transactions", &me, &transfer("x-usd-1", "theirs"))
        .await;
    let to_nobody = gw
        .post("/v1/transactions", &me, &transfer("x-usd-2", "nobody"))
        .await;
    assert_eq!(to_theirs.status, 404);
    assert_eq!(to_theirs.json, to_nobody.json);

    // Their transaction is hidden from me too.
    let them = gw.token("them", &["transact"]);
    assert_eq!(
        gw.post("/v1/transactions", &them, &debit("theirs-1", "theirs", 5))
            .await
            .status,
        201
    );
    let t = gw.get("/v1/transactions/theirs-1", &me).await;
    assert_eq!(t.status, 404);
    assert_eq!(t.json, gw.get("/v1/transactions/nothing", &me).await.json);
    // An auditor sees both.
    let auditor = gw.token("aud", &["auditor"]);
    assert_eq!(
        gw.get("/v1/transactions/theirs-1", &auditor).await.status,
        200
    );
    assert_eq!(gw.get("/v1/accounts/theirs", &auditor).await.status, 200);
}

#[tokio::test]
async fn roles_are_enforced_per_route() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    let transact = gw.token("t", &["transact"]);
    let acct = account_body("x1", "t", "EUR", 1);
    let r = gw.post("/v1/accounts", &transact, &acct).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let auditor = gw.token("a", &["auditor"]);
    let r = gw
        .post("/v1/transactions", &auditor, &debit("ro-1", "x1", 1))
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = gw
        .post("/v1/transactions", "not-a-token", &debit("ro-2", "x1", 1))
        .await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let resp = gw
        .client
        .get(format!("{}/v1/accounts/x1", gw.base))
        .send()
        .await
        .unwrap();
    let r = harness::read(resp).await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let op = gw.token("o", &["operator"]);
    assert_eq!(gw.post("/v1/accounts", &op, &acct).await.status, 201);
    assert_eq!(
        gw.post("/v1/accounts", &op, &acct).await.code(),
        "account_exists"
    );
    let r = gw.get("/v1/switches", &op).await;
    assert_eq!(r.json["switches"][0]["name"], "sim-1");
    assert_eq!(gw.get("/v1/switches", &transact).await.status, 403);
}

#[tokio::test]
async fn a_currency_mismatch_is_refused_without_touching_money() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    gw.account("e1", "eve", "EUR", 100).await;
    let token = gw.token("eve", &["transact"]);
    let r = gw
        .post(
            "/v1/transactions",
            &token,
            &in_currency(debit("cm-1", "e1", 5), "USD"),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "currency_mismatch"));
    assert_eq!(gw.balance("e1").await, 100);
    assert_eq!(sum_stats(&sims).await.received, 0);
}

/// One invalid field per case: each is a 400 `invalid_request` naming the
/// field, and nothing reaches the ledger.
macro_rules! invalid_field {
    ($($name:ident: $body:expr => $field:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let sims = harness::spawn_sims(1).await;
            let gw = gateway(Db::Sqlite, &sims).await;
            gw.account("f1", "fay", "EUR", 100).await;
            let token = gw.token("fay", &["transact"]);
            let body: Value = $body;
            let r = gw.post("/v1/transactions", &token, &body).await;
            assert_eq!((r.status, r.code()), (400, "invalid_request"), "{:?}", r.json);
            let message = r.json["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("{}: ", $field)), "message {message:?} should name {}", $field);
            assert_plain_words(message);
            assert_eq!(gw.balance("f1").await, 100);
            assert_eq!(sum_stats(&sims).await.received, 0);
        }
    )*};
}

invalid_field! {
    invalid_transaction_id_too_long: json!({"transactionId": "x".repeat(65), "type": "debit", "accountId": "f1", "amount": 1, "currency": "EUR"}) => "transactionId";
    invalid_transaction_id_characters: json!({"transactionId": "a b/c", "type": "debit", "accountId": "f1", "amount": 1, "currency": "EUR"}) => "transactionId";
    invalid_transaction_id_missing: json!({"type": "debit", "accountId": "f1", "amount": 1, "currency": "EUR"}) => "transactionId";
    invalid_transaction_id_number: json!({"transactionId": 7, "type": "debit", "accountId": "f1", "amount": 1, "currency": "EUR"}) => "transactionId";
    invalid_type_missing: json!({"transactionId": "i1", "accountId": "f1", "amount": 1, "currency": "EUR"}) => "type";
    invalid_type_number: json!({"transactionId": "i1", "type": 1, "accountId": "f1", "amount": 1, "currency": "EUR"}) => "type";
    invalid_account_id_number: json!({"transactionId": "i1", "type": "debit", "accountId": 5, "amount": 1, "currency": "EUR"}) => "accountId";
    invalid_amount_missing: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "currency": "EUR"}) => "amount";
    invalid_amount_null: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": null, "currency": "EUR"}) => "amount";
    invalid_currency_number: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1, "currency": 978}) => "currency";
    invalid_currency_missing: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1}) => "currency";
    invalid_from_number: json!({"transactionId": "i1", "type": "transfer", "from": 1, "to": "f1", "amount": 1, "currency": "EUR"}) => "from";
    invalid_type: json!({"transactionId": "i1", "type": "refund", "accountId": "f1", "amount": 1, "currency": "EUR"}) => "type";
    invalid_account_id: json!({"transactionId": "i1", "type": "debit", "accountId": "", "amount": 1, "currency": "EUR"}) => "accountId";
    invalid_account_id_missing: json!({"transactionId": "i1", "type": "debit", "amount": 1, "currency": "EUR"}) => "accountId";
    invalid_from_on_debit: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "from": "f1", "amount": 1, "currency": "EUR"}) => "from";
    invalid_transfer_without_to: json!({"transactionId": "i1", "type": "transfer", "from": "f1", "amount": 1, "currency": "EUR"}) => "to";
    invalid_transfer_to_itself: json!({"transactionId": "i1", "type": "transfer", "from": "f1", "to": "f1", "amount": 1, "currency": "EUR"}) => "to";
    invalid_amount_zero: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 0, "currency": "EUR"}) => "amount";
    invalid_amount_negative: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": -5, "currency": "EUR"}) => "amount";
    invalid_amount_fraction: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1.5, "currency": "EUR"}) => "amount";
    invalid_amount_string: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": "10", "currency": "EUR"}) => "amount";
    invalid_amount_overflow: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 9223372036854775808u64, "currency": "EUR"}) => "amount";
    invalid_amount_over_the_maximum: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 100000000001i64, "currency": "EUR"}) => "amount";
    invalid_currency_lowercase: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1, "currency": "eur"}) => "currency";
    invalid_currency_length: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1, "currency": "EURO"}) => "currency";
    invalid_metadata_not_object: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1, "currency": "EUR", "metadata": [1]}) => "metadata";
    invalid_unknown_field: json!({"transactionId": "i1", "type": "debit", "accountId": "f1", "amount": 1, "currency": "EUR", "fee": 1}) => "fee";
}

/// Words of the implementation (Rust types, serde, parser internals) that an
/// error message must never show a client: the list the unit tests use too.
const RUST_WORDS: &[&str] = include!("../../src/edge/rust_words.in");

/// A message in the API's words: no Rust word, no `?:` path, no backticks.
pub(crate) fn assert_plain_words(message: &str) {
    let words: Vec<&str> = message
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .collect();
    for bad in RUST_WORDS {
        assert!(!words.contains(bad), "message {message:?} says {bad:?}");
    }
    for bad in ["?:", "`", "invalid type", "expected i64", "expected one of"] {
        assert!(!message.contains(bad), "message {message:?} says {bad:?}");
    }
}

/// Malformed JSON, the wrong shape, unknown and repeated fields: each a 400
/// whose message says what is wrong in the API's words, over real TLS.
#[tokio::test]
async fn body_errors_are_in_the_api_words() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Sqlite, &sims).await;
    let token = gw.token("fay", &["transact"]);
    let op = gw.token("op", &["operator"]);
    let ok = r#""transactionId":"w1","type":"debit","accountId":"f1","amount":5,"currency":"EUR""#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/v1/transactions",
            format!("{{{ok}"),
            "body is not valid JSON (ends early at line 1, column 81)",
        ),
        (
            "/v1/transactions",
            "{\"amount\" 5}".into(),
            "body is not valid JSON (a ':' was expected at line 1, column 11)",
        ),
        (
            "/v1/transactions",
            format!("{{{ok}}} x"),
            "body is not valid JSON (something follows the JSON value at line 1, column 84)",
        ),
        (
            "/v1/transactions",
            "null".into(),
            "body: must be a JSON object",
        ),
        (
            "/v1/transactions",
            "[]".into(),
            "body: must be a JSON object",
        ),
        (
            "/v1/transactions",
            ok.replace("5", "\"5\"").replace("w1", "w2").pipe(),
            "amount: must be an integer number of minor units",
        ),
        (
            "/v1/transactions",
            ok.replace("\"debit\"", "\"refund\"").pipe(),
            "type: must be one of debit, credit, transfer",
        ),
        (
            "/v1/transactions",
            format!("{{{ok},\"fee\":1}}"),
            "fee: is not a field of this request (its fields are transactionId, type, accountId, from, to, amount, currency, metadata)",
        ),
        (
            "/v1/transactions",
            format!("{{{ok},\"amount\":6}}"),
            "amount: appears more than once",
        ),
        (
            "/v1/transactions",
            ok.replace(",\"amount\":5", "").pipe(),
            "amount: is required",
        ),
        (
            "/v1/accounts",
            r#"{"accountId":"n1","owner":"o","currency":"EUR","openingBalance":"5"}"#.into(),
            "openingBalance: must be an integer number of minor units",
        ),
        (
            "/v1/accounts",
            r#"{"accountId":"n1","currency":"EUR"}"#.into(),
            "owner: is required",
        ),
        (
            "/v1/accounts",
            r#"{"accountId":"n1","owner":"o","currency":"EUR","kind":"x"}"#.into(),
            "kind: is not a field of this request (its fields are accountId, owner, currency, openingBalance, spenders)",
        ),
    ];
    for (path, raw, want) in cases {
        let who = if path == "/v1/accounts" { &op } else { &token };
        let resp = gw
            .client
            .post(format!("{}{path}", gw.base))
            .bearer_auth(who)
            .header("content-type", "application/json")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        let r = harness::read(resp).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_request"),
            "{raw}: {:?}",
            r.json
        );
        let message = r.json["error"]["message"].as_str().unwrap();
        assert_eq!(message, want, "{raw}");
        assert_plain_words(message);
    }
    assert_eq!(sum_stats(&sims).await.received, 0);
}

trait Pipe {
    fn pipe(self) -> String;
}
impl Pipe for String {
    /// `"a":1` → `{"a":1}`.
    fn pipe(self) -> String {
        format!("{{{self}}}")
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_not_a_500() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Sqlite, &sims).await;
    let token = gw.token("fay", &["transact"]);
    for raw in [
        "{",
        "null",
        "[]",
        "{\"transactionId\": \"a\", \"transactionId\": \"b\"}",
    ] {
        let resp = gw
            .client
            .post(format!("{}/v1/transactions", gw.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let r = harness::read(resp).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_request"),
            "{raw}: {:?}",
            r.json
        );
        assert_plain_words(r.json["error"]["message"].as_str().unwrap_or_default());
    }
}
