//! Shared accounts: an operator names the clients besides the owner that may
//! spend from an account (`spenders`), on creation or with
//! `PATCH /v1/accounts/{id}`. The seeds' coupon case: a stock of 5,000 units
//! claimed once each by 10,000 different clients at once.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::harness::{self, Db, Options, TestGateway, debit, spawn_gateway_with, transfer};

const PATIENT: &str = "[server]\nrequest_deadline_ms = 60000\n[database]\nconnections_max = 16\nacquire_timeout_ms = 30000\n[reconciler]\nstale_after_ms = 600000\n";

async fn gateway(db: Db, sims: &[switchboard::devtools::sim::SimHandle]) -> TestGateway {
    spawn_gateway_with(Options {
        db,
        switches: harness::switch_list(sims),
        layers: vec![PATIENT.into()],
        ..Options::default()
    })
    .await
}

async fn open_shared(gw: &TestGateway, id: &str, owner: &str, balance: i64, spenders: Value) {
    let op = gw.token("op", &["operator"]);
    let r = gw
        .post(
            "/v1/accounts",
            &op,
            &json!({"accountId": id, "owner": owner, "currency": "EUR",
                    "openingBalance": balance, "spenders": spenders}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["spenders"], spenders);
}

async fn patch(gw: &TestGateway, id: &str, body: &Value) -> harness::Reply {
    let op = gw.token("op", &["operator"]);
    gw.patch(&format!("/v1/accounts/{id}"), &op, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_spender_may_debit_and_read_the_balance_but_no_one_else() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(Db::Postgres, &sims).await;
    open_shared(&gw, "card", "acme", 1_000, json!(["bob"])).await;
    gw.account("carol-own", "carol", "EUR", 0).await;

    let bob = gw.token("bob", &["transact"]);
    let carol = gw.token("carol", &["transact"]);
    let acme = gw.token("acme", &["transact"]);
    let r = gw
        .post("/v1/transactions", &bob, &debit("bob-1", "card", 100))
        .await;
    assert_eq!(r.status, 201, "a spender debits: {:?}", r.json);
    let r = gw
        .post("/v1/transactions", &acme, &debit("acme-1", "card", 100))
        .await;
    assert_eq!(r.status, 201, "the owner always may: {:?}", r.json);
    let r = gw
        .post("/v1/transactions", &carol, &debit("carol-1", "card", 100))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "not_found"),
        "not a spender: as if absent"
    );
    let r = gw
        .post(
            "/v1/transactions",
            &bob,
            &transfer("bob-2", "card", "carol-own", 50),
        )
        .await;
    assert_eq!(r.status, 201, "a spender transfers from it: {:?}", r.json);

    // A spender reads the balance, not who else may spend.
    let seen = gw.get("/v1/accounts/card", &bob).await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.json["balance"], 750);
    assert!(seen.json.get("spenders").is_none(), "{:?}", seen.json);
    let owner_view = gw.get("/v1/accounts/card", &acme).await;
    assert_eq!(owner_view.json["spenders"], json!(["bob"]));
    assert_eq!(gw.get("/v1/accounts/card", &carol).await.status, 404);

    // The operator replaces the list: bob out, carol in.
    let r = patch(&gw, "card", &json!({"spenders": ["carol"]})).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["spenders"], json!(["carol"]));
    let r = gw
        .post("/v1/transactions", &bob, &debit("bob-3", "card", 1))
        .await;
    assert_eq!(r.status, 404, "no longer a spender");
    let r = gw
        .post("/v1/transactions", &carol, &debit("carol-2", "card", 1))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);

    // Bad input is a clear 400; unknown accounts 404; roles enforced.
    for bad in [
        json!({"spenders": ["*", "bob"]}),
        json!({"spenders": "bob"}),
        json!({}),
    ] {
        let r = patch(&gw, "card", &bad).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_request"),
            "{bad}: {:?}",
            r.json
        );
    }
    assert_eq!(
        patch(&gw, "nope", &json!({"spenders": []})).await.status,
        404
    );
    let r = gw
        .patch("/v1/accounts/card", &acme, &json!({"spenders": ["*"]}))
        .await;
    assert_eq!(r.status, 403, "only an operator changes spenders");
}

async fn claim_all(gw: &Arc<TestGateway>, claims: usize, in_flight: usize) -> Vec<(u16, String)> {
    // Tokens first: signing is not what is measured.
    let tokens: Vec<String> = (0..claims)
        .map(|i| gw.token(&format!("claimer-{i}"), &["transact"]))
        .collect();
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (gw, permits) = (gw.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await.unwrap();
            let r = gw
                .post(
                    "/v1/transactions",
                    &token,
                    &debit(&format!("claim-{i}"), "coupons", 1),
                )
                .await;
            (r.status, r.code().to_owned())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

async fn coupons(db: Db) {
    let sims = harness::spawn_sims(3).await;
    let gw = Arc::new(gateway(db, &sims).await);
    open_shared(&gw, "coupons", "shop", 5_000, json!(["*"])).await;
    let replies = claim_all(&gw, 10_000, 512).await;
    let won = replies.iter().filter(|r| r.0 == 201).count();
    let sold_out = replies
        .iter()
        .filter(|r| r.0 == 422 && r.1 == "insufficient_funds")
        .count();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| r.0 != 201 && r.0 != 422)
        .take(3)
        .collect();
    assert_eq!((won, sold_out), (5_000, 5_000), "other answers: {other:?}");
    assert_eq!(gw.balance("coupons").await, 0);
    let mut received = 0;
    for s in &sims {
        let st = s.stats().await;
        assert_eq!(st.duplicates, 0, "{} saw a claim twice", s.name);
        received += st.received;
    }
    assert_eq!(received, 5_000, "the switches saw each winning claim once");
    // Each claim is a transaction of its own client.
    let auditor = gw.token("auditor", &["auditor"]);
    for i in (0..10_000).step_by(997) {
        let t = gw
            .get(&format!("/v1/transactions/claim-{i}"), &auditor)
            .await;
        assert_eq!(t.status, 200);
        let mine = gw.token(&format!("claimer-{i}"), &["transact"]);
        let own = gw.get(&format!("/v1/transactions/claim-{i}"), &mine).await;
        assert_eq!(own.status, 200, "claim-{i} belongs to claimer-{i}");
        let other = gw.token(&format!("claimer-{}", i + 1), &["transact"]);
        let theirs = gw.get(&format!("/v1/transactions/claim-{i}"), &other).await;
        assert_eq!(theirs.status, 404, "not another claimer's");
    }
    let eur = switchboard::domain::Currency::parse("EUR").unwrap();
    assert_eq!(gw.state.ledger.balance_sum(&eur).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_of_5000_claimed_by_10000_different_clients_sells_exactly_5000_postgres() {
    coupons(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_of_5000_claimed_by_10000_different_clients_sells_exactly_5000_sqlite() {
    coupons(Db::Sqlite).await;
}
