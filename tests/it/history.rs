//! History: `GET /v1/transactions` (a client's own transactions, an
//! auditor's everyone's, newest first, keyset pages), the attempts of
//! `GET /v1/transactions/{id}`, and `GET /v1/accounts/{id}/postings` (an
//! account's statement, its owner's and auditors' only); every bad
//! parameter a 400 naming it; and the plans that keep every page an index
//! range scan at a million rows.

use std::collections::HashSet;

use serde_json::{Value, json};
use switchboard::devtools::sim::Mode;
use switchboard::domain::TxStatus;
use switchboard::ledger::{HistoryQuery, Scope, StatementQuery};

use crate::harness::{self, Options, TestGateway, aid, cid, debit, spawn_gateway_with, transfer};

async fn gateway(sims: &[switchboard::devtools::sim::SimHandle]) -> TestGateway {
    spawn_gateway_with(Options {
        switches: harness::switch_list(sims),
        ..Options::default()
    })
    .await
}

/// Posts `body` as `token`; asserts the status.
async fn submit(gw: &TestGateway, token: &str, body: &Value, status: u16) -> Value {
    let r = gw.post("/v1/transactions", token, body).await;
    assert_eq!(r.status, status, "{body}: {}", r.json);
    r.json
}

/// Every page of `path` (which has a query string), followed by
/// `nextCursor`: the ids in the order served, and the number of pages.
async fn pages(gw: &TestGateway, path: &str, token: &str) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 1..=200 {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let r = gw.get(&url, token).await;
        assert_eq!(r.status, 200, "{url}: {}", r.json);
        let data = r.json["data"].as_array().expect("data").clone();
        rows.extend(data);
        match &r.json["nextCursor"] {
            Value::Null => return (rows, n),
            Value::String(c) => cursor = Some(c.clone()),
            other => panic!("{url}: nextCursor {other}"),
        }
    }
    panic!("{path}: pages never ended");
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            r["transactionId"]
                .as_str()
                .expect("transactionId")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pages_through_its_own_transactions_newest_first() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(&sims).await;
    gw.account("alice-eur", "alice", "EUR", 10_000).await;
    gw.account("bob-eur", "bob", "EUR", 10_000).await;
    let alice = gw.token("alice", &["transact"]);
    let bob = gw.token("bob", &["transact"]);
    let auditor = gw.token("audit", &["auditor"]);
    let mut mine = Vec::new();
    for i in 0..7 {
        let id = format!("alice-{i}");
        submit(&gw, &alice, &debit(&id, "alice-eur", 10), 201).await;
        mine.push(id);
    }
    let mut theirs = Vec::new();
    for i in 0..3 {
        let id = format!("bob-{i}");
        submit(&gw, &bob, &debit(&id, "bob-eur", 10), 201).await;
        theirs.push(id);
    }
    // Sequential requests: creation order is submission order.
    mine.reverse();
    theirs.reverse();

    let (rows, n) = pages(&gw, "/v1/transactions?limit=3", &alice).await;
    assert_eq!(
        (ids(&rows), n),
        (mine.clone(), 3),
        "alice's, newest first, by 3"
    );
    // Each row is the transaction as its own GET shows it, attempts aside.
    for row in &rows {
        let id = row["transactionId"].as_str().unwrap();
        let mut one = gw.get(&format!("/v1/transactions/{id}"), &alice).await.json;
        one.as_object_mut().unwrap().remove("attemptLog");
        assert_eq!(row, &one);
    }
    let (rows, n) = pages(&gw, "/v1/transactions?limit=2", &bob).await;
    assert_eq!((ids(&rows), n), (theirs.clone(), 2));
    // No limit: the default page holds them all.
    let r = gw.get("/v1/transactions", &alice).await;
    assert_eq!(
        (
            ids(r.json["data"].as_array().unwrap()),
            &r.json["nextCursor"]
        ),
        (mine.clone(), &Value::Null)
    );
    // The auditor reads everyone's, in one order.
    let (rows, _) = pages(&gw, "/v1/transactions?limit=4", &auditor).await;
    let mut everyone = theirs.clone();
    everyone.extend(mine.clone());
    assert_eq!(ids(&rows), everyone);
    // A client with none has an empty, last page.
    let carol = gw.token("carol", &["transact"]);
    let r = gw.get("/v1/transactions", &carol).await;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"data": [], "nextCursor": null}))
    );
    // Another client's cursor leads only to the reader's own rows.
    let r = gw.get("/v1/transactions?limit=1", &alice).await;
    let alices_cursor = r.json["nextCursor"].as_str().unwrap().to_owned();
    let r = gw
        .get(&format!("/v1/transactions?cursor={alices_cursor}"), &bob)
        .await;
    assert_eq!(r.status, 200);
    assert!(
        ids(r.json["data"].as_array().unwrap())
            .iter()
            .all(|i| i.starts_with("bob-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_stay_stable_while_transactions_arrive() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(&sims).await;
    gw.account("alice-eur", "alice", "EUR", 100_000).await;
    let alice = gw.token("alice", &["transact"]);
    let mut before = Vec::new();
    for i in 0..12 {
        let id = format!("old-{i:02}");
        submit(&gw, &alice, &debit(&id, "alice-eur", 1), 201).await;
        before.push(id);
    }
    before.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..100 {
        // A new transaction before every page.
        let id = format!("new-{page:02}");
        submit(&gw, &alice, &debit(&id, "alice-eur", 1), 201).await;
        let url = match &cursor {
            Some(c) => format!("/v1/transactions?limit=2&cursor={c}"),
            None => "/v1/transactions?limit=2".into(),
        };
        let r = gw.get(&url, &alice).await;
        assert_eq!(r.status, 200, "{}", r.json);
        seen.extend(ids(r.json["data"].as_array().unwrap()));
        match r.json["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "served twice: {seen:?}");
    let old: Vec<String> = seen
        .iter()
        .filter(|i| i.starts_with("old-"))
        .cloned()
        .collect();
    assert_eq!(old, before, "every old row once, in order");
    // Only the one that arrived before the first page is on it; the later
    // ones are newer than every cursor.
    let new: Vec<&String> = seen.iter().filter(|i| i.starts_with("new-")).collect();
    assert_eq!(new, vec!["new-00"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_selects_its_transactions() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(&sims).await;
    gw.account("alice-eur", "alice", "EUR", 1_000).await;
    gw.account("alice-2", "alice", "EUR", 0).await;
    gw.account("bob-eur", "bob", "EUR", 1_000).await;
    let alice = gw.token("alice", &["transact"]);
    let bob = gw.token("bob", &["transact"]);
    let auditor = gw.token("audit", &["auditor"]);
    let first = submit(&gw, &alice, &debit("a-debit", "alice-eur", 100), 201).await;
    submit(
        &gw,
        &alice,
        &transfer("a-to-bob", "alice-eur", "bob-eur", 100),
        201,
    )
    .await;
    submit(&gw, &alice, &debit("a-broke", "alice-2", 5), 422).await;
    submit(
        &gw,
        &bob,
        &transfer("b-to-alice", "bob-eur", "alice-eur", 50),
        201,
    )
    .await;
    let last = submit(
        &gw,
        &alice,
        &transfer("a-move", "alice-eur", "alice-2", 10),
        201,
    )
    .await;

    let list = |query: &'static str, token: &str| {
        let token = token.to_owned();
        let gw = &gw;
        async move {
            let (rows, _) = pages(gw, &format!("/v1/transactions?limit=2&{query}"), &token).await;
            ids(&rows)
        }
    };
    // accountId: as source or destination, of the caller's own.
    assert_eq!(
        list("accountId=alice-eur", &alice).await,
        ["a-move", "a-to-bob", "a-debit"]
    );
    assert_eq!(
        list("accountId=alice-2", &alice).await,
        ["a-move", "a-broke"]
    );
    assert_eq!(list("accountId=bob-eur", &alice).await, ["a-to-bob"]);
    assert_eq!(list("accountId=bob-eur", &bob).await, ["b-to-alice"]);
    assert_eq!(
        list("accountId=alice-eur", &auditor).await,
        ["a-move", "b-to-alice", "a-to-bob", "a-debit"]
    );
    assert_eq!(list("accountId=nobody", &alice).await, Vec::<String>::new());
    // status.
    assert_eq!(list("status=declined", &alice).await, ["a-broke"]);
    assert_eq!(
        list("status=committed", &alice).await,
        ["a-move", "a-to-bob", "a-debit"]
    );
    assert_eq!(list("status=pending", &alice).await, Vec::<String>::new());
    assert_eq!(
        list("status=declined&accountId=alice-eur", &alice).await,
        Vec::<String>::new()
    );
    // from (at or after), to (before): the stored createdAt, exactly.
    let (t0, t1) = (
        first["createdAt"].as_str().unwrap(),
        last["createdAt"].as_str().unwrap(),
    );
    let enc = |t: &str| t.replace(':', "%3A");
    let (rows, _) = pages(&gw, &format!("/v1/transactions?from={}", enc(t1)), &alice).await;
    assert_eq!(ids(&rows)[0], "a-move");
    assert!(ids(&rows).iter().all(|i| i != "a-debit"), "{rows:?}");
    let (rows, _) = pages(&gw, &format!("/v1/transactions?to={}", enc(t0)), &alice).await;
    assert!(rows.is_empty(), "nothing before the first: {rows:?}");
    let (rows, _) = pages(
        &gw,
        &format!("/v1/transactions?from={}&to={}", enc(t0), enc(t1)),
        &alice,
    )
    .await;
    let got = ids(&rows);
    assert!(
        got.contains(&"a-debit".to_owned()) && !got.contains(&"a-move".to_owned()),
        "{got:?}"
    );
    // A time zone other than Z names the same instant.
    let rfc3339 = time::format_description::well_known::Rfc3339;
    let plus_one = time::OffsetDateTime::parse(t0, &rfc3339)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(1, 0, 0).unwrap())
        .format(&rfc3339)
        .unwrap();
    assert!(plus_one.ends_with("+01:00"), "{plus_one}");
    let (rows, _) = pages(
        &gw,
        &format!(
            "/v1/transactions?from={}",
            enc(&plus_one).replace('+', "%2B")
        ),
        &alice,
    )
    .await;
    assert_eq!(ids(&rows), ["a-move", "a-broke", "a-to-bob", "a-debit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_parameter_is_a_400_naming_it() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(&sims).await;
    gw.account("alice-eur", "alice", "EUR", 1_000).await;
    let alice = gw.token("alice", &["transact"]);
    for i in 0..3 {
        submit(&gw, &alice, &debit(&format!("t{i}"), "alice-eur", 1), 201).await;
    }
    let r = gw.get("/v1/transactions?limit=1", &alice).await;
    let cursor = r.json["nextCursor"].as_str().unwrap().to_owned();
    let r = gw
        .get("/v1/accounts/alice-eur/postings?limit=1", &alice)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let posting_cursor = r.json["nextCursor"].as_str().unwrap().to_owned();
    // A character of a real cursor changed, in the middle and at the end.
    let tamper = |c: &str, at: usize| {
        let mut b = c.as_bytes().to_vec();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let max = 200; // ledger.history_page_rows_max's default
    for (query, field) in [
        ("limit=0".to_owned(), "limit"),
        ("limit=-3".into(), "limit"),
        ("limit=1.5".into(), "limit"),
        ("limit=".into(), "limit"),
        (format!("limit={}", max + 1), "limit"),
        ("limit=99999999999999999999".into(), "limit"),
        ("status=done".into(), "status"),
        ("status=COMMITTED".into(), "status"),
        ("from=2026-13-01T00:00:00Z".into(), "from"),
        ("from=1700000000".into(), "from"),
        ("to=2026-01-05".into(), "to"),
        (
            "from=2026-01-05T10:00:00Z&to=2026-01-05T09:00:00Z".into(),
            "to",
        ),
        ("accountId=".into(), "accountId"),
        (format!("accountId={}", "a".repeat(65)), "accountId"),
        ("accountId=%C3%A9".into(), "accountId"),
        ("cursor=".into(), "cursor"),
        ("cursor=%%%".into(), "cursor"),
        ("cursor=bm90IGEgY3Vyc29y".into(), "cursor"),
        (format!("cursor={posting_cursor}"), "cursor"),
        (format!("cursor={}", tamper(&cursor, 3)), "cursor"),
        (format!("cursor={}", &cursor[..cursor.len() - 2]), "cursor"),
        (format!("cursor={}", "A".repeat(5000)), "cursor"),
        ("limit=1&limit=2".into(), "limit"),
        ("sort=asc".into(), "sort"),
        ("accountid=alice-eur".into(), "accountid"),
    ] {
        let r = gw.get(&format!("/v1/transactions?{query}"), &alice).await;
        assert_eq!(r.status, 400, "{query}: {}", r.json);
        assert_eq!(r.code(), "invalid_request", "{query}");
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{query}: {message}"
        );
        crate::transactions::assert_plain_words(message);
    }
    // The statement's own parameters, the same way.
    for (query, field) in [
        ("limit=0".to_owned(), "limit"),
        (format!("cursor={cursor}"), "cursor"),
        (format!("cursor={}", tamper(&posting_cursor, 2)), "cursor"),
        ("status=committed".into(), "status"),
    ] {
        let r = gw
            .get(&format!("/v1/accounts/alice-eur/postings?{query}"), &alice)
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_request"),
            "{query}: {}",
            r.json
        );
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{query}: {message}"
        );
        crate::transactions::assert_plain_words(message);
    }
    // Not a parameter problem: a cursor of a position the reader has no
    // row below is just a last page.
    let r = gw
        .get(
            &format!("/v1/transactions?cursor={cursor}&status=failed"),
            &alice,
        )
        .await;
    assert_eq!((r.status, &r.json["data"]), (200, &json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_is_the_owners_and_auditors_only() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(&sims).await;
    let op = gw.token("op", &["operator"]);
    let r = gw
        .post(
            "/v1/accounts",
            &op,
            &json!({"accountId": "card", "owner": "acme", "currency": "EUR",
                    "openingBalance": 1000, "spenders": ["bob"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    gw.account("bob-eur", "bob", "EUR", 0).await;
    let acme = gw.token("acme", &["transact"]);
    let bob = gw.token("bob", &["transact"]);
    let carol = gw.token("carol", &["transact"]);
    let auditor = gw.token("audit", &["auditor"]);
    // Each posting names its transaction by reference: the spender's debit
    // is bob's transaction, under bob's id.
    let acme_1 = submit(&gw, &acme, &debit("acme-1", "card", 100), 201).await;
    let bob_1 = submit(&gw, &bob, &debit("bob-1", "card", 30), 201).await;
    let acme_2 = submit(&gw, &acme, &transfer("acme-2", "card", "bob-eur", 20), 201).await;
    assert_eq!(bob_1["clientId"], "bob");

    let expected = json!([
        {"gatewayRef": acme_2["gatewayRef"], "amount": -20},
        {"gatewayRef": bob_1["gatewayRef"], "amount": -30},
        {"gatewayRef": acme_1["gatewayRef"], "amount": -100},
        {"gatewayRef": null, "amount": 1000},
    ]);
    for (who, token) in [("owner", &acme), ("auditor", &auditor)] {
        let (rows, n) = pages(&gw, "/v1/accounts/card/postings?limit=3", token).await;
        assert_eq!(n, 2, "{who}");
        let shown: Vec<Value> = rows
            .iter()
            .map(|p| json!({"gatewayRef": p["gatewayRef"], "amount": p["amount"]}))
            .collect();
        assert_eq!(Value::from(shown), expected, "{who}");
        assert!(
            rows.iter()
                .all(|p| p["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')))
        );
        let sum: i64 = rows.iter().map(|p| p["amount"].as_i64().unwrap()).sum();
        assert_eq!(
            sum,
            gw.balance("card").await,
            "{who}: postings sum to the balance"
        );
    }
    // The spender reads the balance, not the history; anyone else neither;
    // all exactly as for an account that does not exist.
    assert_eq!(gw.get("/v1/accounts/card", &bob).await.status, 200);
    let absent = gw.get("/v1/accounts/nope/postings", &acme).await;
    assert_eq!((absent.status, absent.code()), (404, "not_found"));
    for (who, token, path) in [
        ("spender", &bob, "/v1/accounts/card/postings"),
        ("stranger", &carol, "/v1/accounts/card/postings"),
        ("recipient", &acme, "/v1/accounts/bob-eur/postings"),
        (
            "system account",
            &acme,
            "/v1/accounts/settlement:sim-1:EUR/postings",
        ),
        ("malformed id", &acme, "/v1/accounts/a%20b/postings"),
    ] {
        let r = gw.get(path, token).await;
        assert_eq!((r.status, &r.json), (404, &absent.json), "{who}");
    }
    // Auditors read system accounts' statements too.
    let r = gw
        .get("/v1/accounts/settlement:sim-1:EUR/postings", &auditor)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["data"].as_array().unwrap().len(), 2, "{}", r.json);
    // The owner's own transactions list does not show the spender's.
    let (rows, _) = pages(&gw, "/v1/transactions?accountId=card", &acme).await;
    assert_eq!(ids(&rows), ["acme-2", "acme-1"]);
    let (rows, _) = pages(&gw, "/v1/transactions?accountId=card", &bob).await;
    assert_eq!(ids(&rows), ["bob-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_shows_its_attempts() {
    let sims = harness::spawn_sims(1).await;
    let gw = gateway(&sims).await;
    gw.account("alice-eur", "alice", "EUR", 1_000).await;
    let alice = gw.token("alice", &["transact"]);
    let auditor = gw.token("audit", &["auditor"]);
    submit(&gw, &alice, &debit("ok", "alice-eur", 10), 201).await;
    sims[0].set_faults(Mode::Decline, None, None);
    submit(&gw, &alice, &debit("no", "alice-eur", 10), 422).await;
    submit(&gw, &alice, &debit("broke", "alice-eur", 5_000), 422).await;

    for token in [&alice, &auditor] {
        let r = gw.get("/v1/transactions/ok", token).await;
        assert_eq!(r.status, 200);
        let log = r.json["attemptLog"].as_array().expect("attemptLog").clone();
        assert_eq!(log.len(), 1, "{}", r.json);
        let a = &log[0];
        assert_eq!(
            (&a["attempt"], &a["switch"], &a["outcome"]),
            (&json!(1), &json!(sims[0].name), &json!("approved"))
        );
        // Compared as instants: RFC 3339 text drops trailing zeros.
        let at = |v: &Value| {
            let text = v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}"));
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        let (started, finished) = (at(&a["startedAt"]), at(&a["finishedAt"]));
        assert!(started <= finished, "{a}");
        assert!(at(&r.json["createdAt"]) <= started);
        assert!(finished <= at(&r.json["updatedAt"]));
        assert_eq!(r.json["attempts"], 1, "the count stays");
    }
    let r = gw.get("/v1/transactions/no", &alice).await;
    assert_eq!(r.json["attemptLog"][0]["outcome"], "declined", "{}", r.json);
    // Refused before any switch: no attempt.
    let r = gw.get("/v1/transactions/broke", &alice).await;
    assert_eq!(r.json["attemptLog"], json!([]), "{}", r.json);
    // The list leaves the attempts out (one read per page, not per row).
    let r = gw.get("/v1/transactions", &alice).await;
    assert!(
        r.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("attemptLog").is_none())
    );
}

// --- plans ---------------------------------------------------------------------------

const LOADED_ROWS: i64 = 1_000_000;

/// Loads a million transactions (1,000 clients, 5,000 accounts; one in fifty
/// declined, and a thousand pending, all `client-500`'s) and a million
/// postings, straight into the tables, and analyzes them.
async fn load_a_million(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query(
        "INSERT INTO transactions (gateway_ref, id, client, kind, source, amount, currency, \
             fingerprint, status, reason, response_status, response_body, created_at_ms, \
             updated_at_ms) \
         SELECT 'ref-' || g, 'load-' || g, 'client-' || (g % 1000), 'debit', 'acct-' || (g % 5000), 1, 'EUR', \
             'f', s.status, CASE WHEN s.status = 'declined' THEN 'declined_by_switch' END, \
             CASE WHEN s.status = 'pending' THEN NULL ELSE 201 END, \
             CASE WHEN s.status = 'pending' THEN NULL ELSE '{}' END, \
             1700000000000 + g, 1700000000000 + g \
         FROM generate_series(1, $1) AS g, \
         LATERAL (SELECT CASE WHEN g % 1000 = 500 THEN 'pending' \
                              WHEN g % 50 = 1 THEN 'declined' ELSE 'committed' END AS status) AS s",
    )
    .bind(LOADED_ROWS)
    .execute(&mut conn)
    .await
    .expect("load transactions");
    sqlx::query(
        "INSERT INTO postings (gateway_ref, account_id, amount, created_at_ms) \
         SELECT 'ref-' || g, 'acct-' || (g % 5000), -1, 1700000000000 + g \
         FROM generate_series(1, $1) AS g",
    )
    .bind(LOADED_ROWS)
    .execute(&mut conn)
    .await
    .expect("load postings");
    sqlx::query("ANALYZE transactions, postings")
        .execute(&mut conn)
        .await
        .expect("analyze");
    let _ = conn.close().await;
}

/// The rows each node of an `EXPLAIN ANALYZE` text plan produced or
/// filtered away: the most any one node touched.
fn most_rows_touched(plan: &str) -> u64 {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    plan.lines()
        .filter_map(|line| {
            let loops = number_after(line, "loops=").unwrap_or(1);
            let out = number_after(line, "rows=").map(|n| n * loops);
            let removed = number_after(line, "Rows Removed by Filter: ")
                .or_else(|| number_after(line, "Rows Removed by Index Recheck: "));
            out.or(removed)
        })
        .max()
        .unwrap_or(0)
}

/// Asserts a plan reads by index, never the whole table, and touches at most
/// `bound` rows in any node.
fn assert_range_scan(what: &str, plan: &str, bound: u64) {
    assert!(
        !plan.contains("Seq Scan"),
        "{what}: a sequential scan\n{plan}"
    );
    assert!(plan.contains("Index"), "{what}: no index\n{plan}");
    let touched = most_rows_touched(plan);
    assert!(
        touched <= bound,
        "{what}: a node touched {touched} rows (bound {bound})\n{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_history_page_is_an_index_range_scan_at_a_million_rows() {
    let (ledger, db) = crate::db::ledger_pg().await;
    load_a_million(db.url()).await;
    let limit = 50u32;
    let scan = 10_000u32;
    let query = |scope: Scope| HistoryQuery {
        scope,
        account: None,
        status: None,
        from_ms: None,
        to_ms: None,
        after: None,
        limit,
        scan_rows_max: scan,
    };
    let own = || query(Scope::Client(cid("client-7")));
    // A cursor in the middle of each range, from a real page.
    let middle = |q: HistoryQuery| {
        let ledger = &ledger;
        async move {
            let mut q = HistoryQuery {
                to_ms: Some(1_700_000_500_000),
                ..q
            };
            let page = ledger.transactions_page(&q).await.unwrap();
            assert_eq!(page.rows.len(), limit as usize);
            q.to_ms = None;
            q.after = page.next;
            assert!(q.after.is_some());
            q
        }
    };
    let own_middle = middle(own()).await;
    let all_middle = middle(query(Scope::All)).await;
    let unfiltered = [
        ("own, first page", own()),
        ("own, a middle page", own_middle.clone()),
        (
            "own, from and to",
            HistoryQuery {
                from_ms: Some(1_700_000_100_000),
                to_ms: Some(1_700_000_900_000),
                ..own()
            },
        ),
        ("all, first page", query(Scope::All)),
        ("all, a middle page", all_middle.clone()),
        (
            "all, to",
            HistoryQuery {
                to_ms: Some(1_700_000_300_000),
                ..query(Scope::All)
            },
        ),
    ];
    let pick = |line: &str| {
        !line.trim_start().starts_with("Planning") && !line.trim_start().starts_with("Execution")
    };
    let mut shown = String::new();
    for (what, q) in unfiltered {
        let plans = ledger.explain_transactions_page(&q).await.unwrap();
        assert_eq!(plans.len(), 1, "{what}: one statement");
        assert_range_scan(what, &plans[0], u64::from(limit) + 1);
        assert!(!plans[0].contains("Sort"), "{what}: sorts\n{}", plans[0]);
        assert!(
            plans[0].contains("Index Scan Backward using transactions_"),
            "{what}\n{}",
            plans[0]
        );
        shown += &format!(
            "-- {what}\n{}\n",
            plans[0]
                .lines()
                .filter(|l| pick(l))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let filtered = [
        (
            "own, status",
            HistoryQuery {
                status: Some(TxStatus::Declined),
                ..own_middle.clone()
            },
        ),
        (
            "own, pending",
            HistoryQuery {
                status: Some(TxStatus::Pending),
                ..own()
            },
        ),
        (
            "all, pending",
            HistoryQuery {
                status: Some(TxStatus::Pending),
                ..query(Scope::All)
            },
        ),
        (
            "all, a rare account",
            HistoryQuery {
                account: Some(aid("acct-5")),
                ..all_middle.clone()
            },
        ),
        (
            "all, an unknown account",
            HistoryQuery {
                account: Some(aid("nobody")),
                ..query(Scope::All)
            },
        ),
        (
            "own, account and status",
            HistoryQuery {
                account: Some(aid("acct-7")),
                status: Some(TxStatus::Committed),
                ..own()
            },
        ),
    ];
    for (what, q) in filtered {
        let plans = ledger.explain_transactions_page(&q).await.unwrap();
        assert_eq!(plans.len(), 2, "{what}: the boundary, then the rows");
        for plan in &plans {
            assert_range_scan(what, plan, u64::from(scan) + 1);
        }
        shown += &format!(
            "-- {what}\n{}\n",
            plans
                .join("\n")
                .lines()
                .filter(|l| pick(l))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The page keeps its bound: at most `scan` rows of the range read.
        let page = ledger.transactions_page(&q).await.unwrap();
        assert!(page.rows.len() <= limit as usize);
    }
    // An account's statement, first and middle pages.
    let mut statement = StatementQuery {
        account: aid("acct-5"),
        after: None,
        limit,
    };
    for what in ["statement, first page", "statement, a middle page"] {
        let plan = ledger.explain_postings_page(&statement).await.unwrap();
        assert_range_scan(what, &plan, u64::from(limit) + 1);
        assert!(!plan.contains("Sort"), "{what}\n{plan}");
        assert!(
            plan.contains("Index Scan Backward using postings_account_id_id"),
            "{what}\n{plan}"
        );
        shown += &format!(
            "-- {what}\n{}\n",
            plan.lines()
                .filter(|l| pick(l))
                .collect::<Vec<_>>()
                .join("\n")
        );
        statement.after = ledger.postings_page(&statement).await.unwrap().next;
        assert!(statement.after.is_some());
    }
    // The plans, for docs/operations.md (`--nocapture`).
    eprintln!("{shown}");
    ledger.close().await;
}

/// The same pages on SQLite (200,000 rows; `EXPLAIN QUERY PLAN`, which
/// shows no row counts): each a search of one of the history's indexes, in
/// its order (no temporary B-tree to sort), never a scan of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_search_their_indexes_on_sqlite() {
    let (ledger, dir) = crate::db::ledger_sqlite_file().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
    sqlx::query(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200000) \
         INSERT INTO transactions (gateway_ref, id, client, kind, source, amount, currency, \
             fingerprint, status, response_status, response_body, created_at_ms, updated_at_ms) \
         SELECT 'ref-' || n, 'load-' || n, 'client-' || (n % 100), 'debit', 'acct-' || (n % 500), 1, 'EUR', \
             'f', 'committed', 201, '{}', 1700000000000 + n, 1700000000000 + n FROM g",
    )
    .execute(&pool)
    .await
    .expect("load transactions");
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .expect("analyze");
    pool.close().await;
    let query = |scope: Scope| HistoryQuery {
        scope,
        account: None,
        status: None,
        from_ms: None,
        to_ms: None,
        after: None,
        limit: 50,
        scan_rows_max: 10_000,
    };
    let own = || query(Scope::Client(cid("client-7")));
    let page = ledger
        .transactions_page(&HistoryQuery {
            to_ms: Some(1_700_000_100_000),
            ..query(Scope::All)
        })
        .await
        .unwrap();
    let middle = page.next.expect("a middle cursor");
    for (what, q) in [
        ("own, first page", own()),
        (
            "own, a middle page",
            HistoryQuery {
                after: Some(middle.clone()),
                ..own()
            },
        ),
        (
            "all, a middle page",
            HistoryQuery {
                after: Some(middle.clone()),
                ..query(Scope::All)
            },
        ),
        (
            "all, from and to",
            HistoryQuery {
                from_ms: Some(1_700_000_050_000),
                to_ms: Some(1_700_000_150_000),
                ..query(Scope::All)
            },
        ),
        (
            "all, an account",
            HistoryQuery {
                account: Some(aid("acct-5")),
                after: Some(middle.clone()),
                ..query(Scope::All)
            },
        ),
    ] {
        let plans = ledger.explain_transactions_page(&q).await.unwrap();
        for plan in &plans {
            assert!(
                plan.contains("USING") && plan.contains("INDEX transactions_"),
                "{what}: {plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{what}: sorts: {plan}");
            assert!(
                plan.contains("SEARCH") || what.ends_with("first page"),
                "{what}: not a range: {plan}"
            );
        }
    }
    let plan = ledger
        .explain_postings_page(&StatementQuery {
            account: aid("acct-5"),
            after: None,
            limit: 50,
        })
        .await
        .unwrap();
    assert!(
        plan.contains("SEARCH postings USING INDEX postings_account_id_id"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    ledger.close().await;
}
