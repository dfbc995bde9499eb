//! Webhooks (issue 13) end to end: a real gateway (its delivery worker and
//! ledger outbox), real switches (sims) and a small real HTTP receiver here
//! that checks every signature it gets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use switchboard::webhooks::verify;

use crate::harness::{
    self, Db, Options, TestGateway, debit, eventually, spawn_gateway_with, switch_list,
};

/// What the receiver got: the signature header and the raw body.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("event body is JSON")
    }
}

/// A webhook receiver on a port of its own: records every POST and answers
/// `status` (settable: 503 for an outage).
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn spawn(status: u16) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let (g, s) = (got.clone(), status.clone());
        let (addr, task) = harness::serve_http(move |req: Request<hyper::body::Incoming>| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                let signature = req
                    .headers()
                    .get("switchboard-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                g.lock().unwrap().push(Received { signature, body });
                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                *resp.status_mut() = hyper::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                resp
            }
        })
        .await;
        Self {
            addr,
            got,
            status,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events received whose signature verifies with `secret`.
    fn verified(&self, secret: &str) -> Vec<Value> {
        let now = unix_s();
        self.received()
            .iter()
            .filter(|r| verify(secret, &r.signature, &r.body, now, 300))
            .map(Received::json)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Fast retries, `http://` allowed (the receiver is plain HTTP).
const FAST: &str = r#"
[webhooks]
allow_http = true
interval_ms = 50
timeout_ms = 1000
lease_ms = 5000
retry_base_ms = 100
retry_max_ms = 300
"#;

async fn gateway(db: Db, extra: &str) -> (TestGateway, Vec<switchboard::devtools::sim::SimHandle>) {
    let sims = harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        db,
        switches: switch_list(&sims),
        layers: vec![FAST.to_owned(), extra.to_owned()],
        ..Options::default()
    })
    .await;
    (gw, sims)
}

/// Registers a webhook for `client`; returns (webhookId, secret).
async fn register(gw: &TestGateway, client: &str, url: &str, events: &[&str]) -> (String, String) {
    let op = gw.token("ops", &["operator"]);
    let r = gw
        .post(
            "/v1/webhooks",
            &op,
            &json!({"client": client, "url": url, "events": events}),
        )
        .await;
    assert_eq!(r.status, 201, "register: {:?}", r.json);
    (
        r.json["webhookId"].as_str().unwrap().to_owned(),
        r.json["secret"].as_str().unwrap().to_owned(),
    )
}

const ALL: &[&str] = &[
    "transaction.committed",
    "transaction.declined",
    "transaction.failed",
];

async fn committed_and_declined_arrive_signed(db: Db) {
    let rx = Receiver::spawn(200).await;
    let (gw, _sims) = gateway(db, "").await;
    gw.account("alice-eur", "alice", "EUR", 1000).await;
    gw.account("bob-eur", "bob", "EUR", 1000).await;
    let (_, secret) = register(&gw, "alice", &rx.url(), ALL).await;
    let alice = gw.token("alice", &["transact"]);
    let bob = gw.token("bob", &["transact"]);
    let r = gw
        .post("/v1/transactions", &alice, &debit("ok-1", "alice-eur", 100))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let r = gw
        .post(
            "/v1/transactions",
            &alice,
            &debit("big-1", "alice-eur", 5000),
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.json);
    // Bob has no webhook: nothing for him.
    let r = gw
        .post("/v1/transactions", &bob, &debit("ok-1", "bob-eur", 100))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    eventually(Duration::from_secs(10), "two events delivered", || async {
        rx.received().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = rx.verified(&secret);
    assert_eq!(events.len(), 2, "every event verifies: {:?}", rx.received());
    assert!(
        rx.verified("whsec_wrong").is_empty(),
        "a wrong secret fails"
    );
    let mut by_type: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            assert!(e["id"].as_str().unwrap().starts_with("evt_"), "{e}");
            assert!(e["createdAt"].is_string(), "{e}");
            assert_eq!(e["data"]["clientId"], "alice", "{e}");
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["transactionId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_type.sort();
    assert_eq!(
        by_type,
        [
            ("transaction.committed".to_owned(), "ok-1".to_owned()),
            ("transaction.declined".to_owned(), "big-1".to_owned()),
        ]
    );
    // The event's data is the transaction as GET shows it, attempts included.
    let committed = events
        .iter()
        .find(|e| e["type"] == "transaction.committed")
        .unwrap();
    let read = gw.get("/v1/transactions/ok-1", &alice).await.json;
    assert!(read["attemptLog"].is_array());
    assert_eq!(committed["data"], read);
    assert!(
        gw.metric("switchboard_webhook_deliveries_total{outcome=\"delivered\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_declined_events_arrive_signed_postgres() {
    committed_and_declined_arrive_signed(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_declined_events_arrive_signed_sqlite() {
    committed_and_declined_arrive_signed(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outage_is_retried_until_delivered() {
    let rx = Receiver::spawn(503).await;
    let (gw, _sims) = gateway(Db::Postgres, "").await;
    gw.account("alice-eur", "alice", "EUR", 1000).await;
    let (_, secret) = register(&gw, "alice", &rx.url(), &["transaction.committed"]).await;
    let alice = gw.token("alice", &["transact"]);
    let r = gw
        .post("/v1/transactions", &alice, &debit("t-1", "alice-eur", 100))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    eventually(
        Duration::from_secs(10),
        "three attempts during the outage",
        || async { rx.received().len() >= 3 },
    )
    .await;
    rx.status.store(200, Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "delivered after the outage",
        || async {
            gw.metric("switchboard_webhook_deliveries_total{outcome=\"delivered\"}")
                .await
                >= 1.0
        },
    )
    .await;
    let n = rx.received().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), n, "nothing sent after the 200");
    // Every attempt carried the same event, each signed.
    let events = rx.verified(&secret);
    assert_eq!(events.len(), n);
    let ids: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one event id across attempts: {ids:?}");
    assert!(
        gw.metric("switchboard_webhook_deliveries_total{outcome=\"retry\"}")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_listed_and_redelivered() {
    let rx = Receiver::spawn(500).await;
    let (gw, _sims) = gateway(Db::Postgres, "[webhooks]\nattempts_max = 2\n").await;
    gw.account("alice-eur", "alice", "EUR", 1000).await;
    let (hook, secret) = register(&gw, "alice", &rx.url(), &["transaction.committed"]).await;
    let alice = gw.token("alice", &["transact"]);
    let op = gw.token("ops", &["operator"]);
    let r = gw
        .post("/v1/transactions", &alice, &debit("t-1", "alice-eur", 100))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let path = format!("/v1/webhooks/{hook}/failed");
    eventually(Duration::from_secs(10), "the delivery failed", || async {
        gw.get(&path, &op).await.json["data"]
            .as_array()
            .is_some_and(|d| d.len() == 1)
    })
    .await;
    let failed = gw.get(&path, &op).await;
    let delivery = &failed.json["data"][0];
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["lastError"], "answered 500");
    assert_eq!(rx.received().len(), 2);
    assert!(
        gw.metric("switchboard_webhook_deliveries_total{outcome=\"failed\"}")
            .await
            >= 1.0
    );
    // The status page shows it too, and where to list and redeliver.
    let (status, page) = gw.ops_get("/").await;
    assert_eq!(status, 200);
    let table = page
        .split("id=\"webhook-deliveries\"")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .expect("a webhook deliveries table");
    assert!(
        table.contains("<td class=\"n\" data-outcome=\"failed\">1</td>"),
        "{table}"
    );
    assert!(page.contains("/v1/webhooks/{id}/failed"));
    assert!(page.contains("id=\"webhook-backlog\""));

    rx.status.store(200, Ordering::SeqCst);
    let id = delivery["deliveryId"].as_str().unwrap();
    let r = gw
        .post(
            &format!("/v1/webhooks/deliveries/{id}/redeliver"),
            &op,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    eventually(Duration::from_secs(10), "redelivered", || async {
        rx.received().len() >= 3
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "no failed delivery left",
        || async {
            gw.get(&path, &op).await.json["data"]
                .as_array()
                .is_some_and(Vec::is_empty)
        },
    )
    .await;
    assert_eq!(rx.verified(&secret).len(), 3);
    // Not failed any more: a second redelivery is a 404.
    let r = gw
        .post(
            &format!("/v1/webhooks/deliveries/{id}/redeliver"),
            &op,
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_its_input_and_hides_the_secret() {
    let (gw, _sims) = gateway(
        Db::Postgres,
        "[webhooks]\nallow_http = false\nper_client_max = 2\n",
    )
    .await;
    let op = gw.token("ops", &["operator"]);
    let post = |body: Value| {
        let (gw, op) = (&gw, &op);
        async move { gw.post("/v1/webhooks", op, &body).await }
    };
    for (body, field) in [
        (
            json!({"client": "alice", "url": "http://127.0.0.1:9/h", "events": ALL}),
            "url",
        ),
        (
            json!({"client": "alice", "url": "ftp://example.com/h", "events": ALL}),
            "url",
        ),
        (
            json!({"client": "alice", "url": "not a url", "events": ALL}),
            "url",
        ),
        (
            json!({"client": "alice", "url": "https://example.com/h", "events": []}),
            "events",
        ),
        (
            json!({"client": "alice", "url": "https://example.com/h", "events": ["transaction.nope"]}),
            "events",
        ),
        (
            json!({"client": "", "url": "https://example.com/h", "events": ALL}),
            "client",
        ),
        (
            json!({"url": "https://example.com/h", "events": ALL}),
            "client",
        ),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.json);
        assert_eq!(r.code(), "invalid_request");
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let r = post(json!({"client": "alice", "url": "https://example.com/h", "events": ["transaction.committed", "transaction.committed"]})).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["events"], json!(["transaction.committed"]));
    assert!(r.json["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = r.json["webhookId"].as_str().unwrap().to_owned();
    let list = gw.get("/v1/webhooks", &op).await;
    assert_eq!(list.status, 200);
    let data = list.json["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["webhookId"], id.as_str());
    assert!(data[0].get("secret").is_none(), "the list shows no secret");
    let del = gw.delete(&format!("/v1/webhooks/{id}"), &op).await;
    assert_eq!(del.status, 200, "{:?}", del.json);
    assert_eq!(
        gw.delete(&format!("/v1/webhooks/{id}"), &op).await.status,
        404
    );
    assert_eq!(gw.get("/v1/webhooks", &op).await.json["data"], json!([]));
    assert_eq!(
        gw.get(&format!("/v1/webhooks/{id}/failed"), &op)
            .await
            .status,
        404
    );
    // At most `webhooks.per_client_max` live webhooks per client (deleted
    // ones do not count); another client has its own.
    let hook = json!({"client": "alice", "url": "https://example.com/h", "events": ALL});
    for _ in 0..2 {
        assert_eq!(post(hook.clone()).await.status, 201);
    }
    let third = post(hook).await;
    assert_eq!((third.status, third.code()), (400, "invalid_request"));
    let message = third.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("per_client_max"), "{message}");
    let bob = json!({"client": "bob", "url": "https://example.com/h", "events": ALL});
    assert_eq!(post(bob).await.status, 201);
    // Only operators.
    let alice = gw.token("alice", &["transact"]);
    assert_eq!(gw.get("/v1/webhooks", &alice).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once() {
    let db = crate::db::fresh_postgres().await;
    let rx = Receiver::spawn(200).await;
    let (a, _sims_a) = gateway(Db::Shared(db.url().to_owned()), "").await;
    let (b, _sims_b) = gateway(Db::Shared(db.url().to_owned()), "").await;
    a.account("alice-eur", "alice", "EUR", 1_000_000).await;
    let (_, secret) = register(&a, "alice", &rx.url(), ALL).await;
    let alice = a.token("alice", &["transact"]);
    let n = 40;
    for i in 0..n {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw
            .post(
                "/v1/transactions",
                &alice,
                &debit(&format!("t-{i}"), "alice-eur", 10),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    eventually(Duration::from_secs(15), "every event delivered", || async {
        rx.received().len() >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = rx.verified(&secret);
    let ids: std::collections::BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), n, "every event");
    assert_eq!(events.len(), n, "each once");
    let by_a = a
        .metric("switchboard_webhook_deliveries_total{outcome=\"delivered\"}")
        .await;
    let by_b = b
        .metric("switchboard_webhook_deliveries_total{outcome=\"delivered\"}")
        .await;
    assert_eq!(by_a + by_b, n as f64, "a: {by_a}, b: {by_b}");
    drop((a, b));
    drop(db);
}
