//! The process's life under its signals, on the real binary
//! (`switchboard serve`): SIGTERM drains before it stops, SIGHUP reloads.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, GatewayProcess, eventually};

/// `GET /readyz`: its status and JSON body, or `None` when nothing answers.
async fn readyz(gw: &GatewayProcess) -> Option<(u16, Value)> {
    let resp = reqwest::get(format!("http://{}/readyz", gw.ops))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}

/// A request on a connection of its own: new connections must still be
/// accepted while draining, not only the ones a balancer already holds.
async fn post_fresh(gw: &GatewayProcess, token: &str, body: &Value) -> harness::Reply {
    let resp = harness::https_client()
        .post(format!("{}/v1/transactions", gw.base()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("a request during the drain");
    harness::read(resp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_readyz_turns_503_while_requests_still_succeed_then_the_process_exits() {
    const DRAIN_MS: u64 = 3000;
    let sims = harness::spawn_sims(1).await;
    let db = crate::db::fresh_postgres().await;
    let url = db.url().to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!("[server]\nshutdown_drain_ms = {DRAIN_MS}\nshutdown_grace_ms = 3000\n");
    let mut gw = GatewayProcess::start(dir.path(), &url, &toml, &harness::switch_list(&sims)).await;
    gw.account("drain-1", "dora", "EUR", 1_000).await;
    let token = harness::test_auth()
        .sign("dora", &["transact"], 600)
        .unwrap();
    let (status, body) = readyz(&gw).await.expect("ready");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["draining"], false, "{body}");

    gw.signal("TERM");
    let signalled = tokio::time::Instant::now();

    // The balancer's signal comes first…
    eventually(Duration::from_secs(1), "readyz answers 503", || async {
        readyz(&gw).await.is_some_and(|(s, _)| s == 503)
    })
    .await;
    let (_, body) = readyz(&gw).await.expect("readyz while draining");
    assert_eq!(
        (&body["ready"], &body["draining"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{body}"
    );
    // …while everything else still serves, on new connections too.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(DRAIN_MS - 800) {
        let r = post_fresh(
            &gw,
            &token,
            &harness::debit(&format!("drain-tx-{served}"), "drain-1", 1),
        )
        .await;
        assert_eq!(r.status, 201, "during the drain: {}", r.json);
        served += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served >= 5, "only {served} requests during the drain");
    assert!(
        readyz(&gw).await.is_some_and(|(s, _)| s == 503),
        "readyz stays 503"
    );

    // Then today's graceful stop: the process exits on its own, cleanly,
    // no sooner than the drain.
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the process exits after the drain");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(DRAIN_MS),
        "exited {took:?} after SIGTERM, before the drain ran out"
    );
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed"
    );
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    assert!(log.contains("draining"), "{log}");
}

/// The names `GET /v1/switches` lists.
async fn switch_names(gw: &GatewayProcess) -> Vec<String> {
    let op = harness::test_auth().sign("op", &["operator"], 600).unwrap();
    let resp = harness::https_client()
        .get(format!("{}/v1/switches", gw.base()))
        .bearer_auth(&op)
        .send()
        .await
        .expect("GET /v1/switches");
    let r = harness::read(resp).await;
    assert_eq!(r.status, 200, "{}", r.json);
    r.json["switches"]
        .as_array()
        .expect("switches")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

async fn reloads(gw: &GatewayProcess, result: &str) -> f64 {
    harness::metric(
        &gw.metrics().await,
        &format!("switchboard_config_reloads_total{{result=\"{result}\"}}"),
    )
}

/// The `--config` file is a symlink into a directory the gateway does not
/// watch (as a Kubernetes ConfigMap volume is): editing its target is not
/// seen, so only SIGHUP can apply the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_change_the_file_watch_cannot_see() {
    let sims = harness::spawn_sims(2).await;
    let switches = harness::switch_list(&sims);
    let db = crate::db::fresh_postgres().await;
    let url = db.url().to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let real = dir.path().join("mounted");
    std::fs::create_dir_all(&real).expect("mounted dir");
    let target = real.join("gateway.toml");
    let write = |text: String| {
        // Replaced by rename, as editors and ConfigMaps do.
        let tmp = real.join("gateway.toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &target).expect("replace config");
    };
    write(harness::switches_toml(&switches[..1]));
    let link = dir.path().join("gateway.toml");
    std::os::unix::fs::symlink(&target, &link).expect("symlink the config");
    let gw = GatewayProcess::start_on_file(dir.path(), &url, link).await;
    assert_eq!(switch_names(&gw).await, ["sim-1"]);

    // A second switch, unseen by the watcher.
    write(harness::switches_toml(&switches));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        switch_names(&gw).await,
        ["sim-1"],
        "the file watch saw the change; this test proves nothing about SIGHUP"
    );
    assert_eq!(reloads(&gw, "ok").await, 0.0);

    gw.signal("HUP");
    eventually(Duration::from_secs(10), "SIGHUP added sim-2", || async {
        switch_names(&gw).await == ["sim-1", "sim-2"]
    })
    .await;
    assert_eq!(reloads(&gw, "ok").await, 1.0);

    // An invalid file on SIGHUP: rejected, the running config kept, the
    // process alive.
    write("[server]\nbody_bytes_max = 0\n".into());
    gw.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the reload is rejected",
        || async { reloads(&gw, "rejected").await == 1.0 },
    )
    .await;
    assert_eq!(switch_names(&gw).await, ["sim-1", "sim-2"]);

    // And removing a switch by SIGHUP.
    write(harness::switches_toml(&switches[1..]));
    gw.signal("HUP");
    eventually(Duration::from_secs(10), "SIGHUP removed sim-1", || async {
        switch_names(&gw).await == ["sim-2"]
    })
    .await;
}

/// Issue 11, item 7: a replica whose clock is an hour behind still stamps
/// its rows (and so the reconciler's staleness and leases) with the
/// database's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_wrong_clock_stamps_rows_with_the_databases() {
    const SKEW_MS: i64 = -3_600_000;
    let sims = harness::spawn_sims(1).await;
    let db = crate::db::fresh_postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let skew = SKEW_MS.to_string();
    let mut gw = GatewayProcess::start_with_env(
        dir.path(),
        db.url(),
        "",
        &harness::switch_list(&sims),
        &[("SWITCHBOARD_CLOCK_SKEW_MS", &skew)],
    )
    .await;
    gw.account("skew-1", "sam", "EUR", 1_000).await;
    let token = harness::test_auth()
        .sign("sam", &["transact"], 600)
        .unwrap();
    let r = post_fresh(&gw, &token, &harness::debit("skewed-1", "skew-1", 10)).await;
    assert_eq!(r.status, 201, "{:?}", r.json);

    let pool = sqlx::PgPool::connect(db.url()).await.expect("connect");
    let (created, updated, db_now): (i64, i64, i64) = sqlx::query_as(
        "SELECT created_at_ms, updated_at_ms, \
                CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) \
         FROM transactions WHERE id = 'skewed-1'",
    )
    .fetch_one(&pool)
    .await
    .expect("the row");
    pool.close().await;
    for (what, at) in [("created", created), ("updated", updated)] {
        assert!(
            (db_now - at).abs() < 60_000,
            "{what}_at_ms {at} is {} ms from the database's clock {db_now} (the process's is {SKEW_MS} ms off)",
            db_now - at
        );
    }
    gw.kill();
}
