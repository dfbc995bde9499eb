//! The simulated switch over real sockets: `switchboard::devtools::sim::spawn` on 127.0.0.1:0,
//! driven with reqwest over plain HTTP, and over HTTPS (optionally mTLS) with the
//! development certificates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::devtools::sim::{self, Mode, Outcome, SimHandle, SimOptions, SimTls, Stats};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness;

/// Upper bound for anything that should happen "promptly".
const PROMPT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start(name: &str, mode: Mode) -> SimHandle {
    let mut opts = SimOptions::new(name);
    opts.mode = mode;
    sim::spawn(loopback(), opts).await.expect("spawn sim")
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.expect("JSON body");
    (status, body)
}

async fn post(c: &reqwest::Client, s: &SimHandle, id: &str) -> (u16, Value) {
    let body = json!({"transactionId": id, "amountMinor": 1250, "currency": "EUR"});
    send(c.post(format!("{}/transactions", s.url())).json(&body)).await
}

async fn get(c: &reqwest::Client, s: &SimHandle, path: &str) -> (u16, Value) {
    send(c.get(format!("{}{path}", s.url()))).await
}

async fn put_faults(c: &reqwest::Client, s: &SimHandle, faults: Value) -> (u16, Value) {
    send(c.put(format!("{}/faults", s.url())).json(&faults)).await
}

fn stats(received: u64, approved: u64, declined: u64, duplicates: u64) -> Stats {
    Stats {
        received,
        approved,
        declined,
        duplicates,
    }
}

/// Polls until the sim has recorded `n` transactions.
async fn wait_received(s: &SimHandle, n: u64) {
    let deadline = Instant::now() + PROMPT;
    while s.stats().await.received < n {
        assert!(
            Instant::now() < deadline,
            "sim never recorded {n} transactions"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn approves_and_a_repeat_returns_the_first_outcome() {
    let s = start("alpha", Mode::Healthy).await;
    let c = client();

    let (status, first) = post(&c, &s, "tx-1").await;
    assert_eq!(status, 200);
    assert_eq!(first, json!({"status": "approved", "reference": "alpha-1"}));

    let (status, again) = post(&c, &s, "tx-1").await;
    assert_eq!(status, 200);
    assert_eq!(again, first);

    assert_eq!(get(&c, &s, "/transactions/tx-1").await, (200, first));
    assert_eq!(s.stats().await, stats(1, 1, 0, 1));
    let (status, over_http) = get(&c, &s, "/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        over_http,
        json!({"received": 1, "approved": 1, "declined": 0, "duplicates": 1})
    );
    assert_eq!(
        s.outcome("tx-1"),
        Some(Outcome {
            status: "approved".into(),
            reference: Some("alpha-1".into()),
            reason: None
        })
    );
    assert_eq!(s.outcome("tx-2"), None);
    s.shutdown().await;
}

/// The gateway sends its own reference as `Idempotency-Key` and the
/// client's id in the body: the header is the key (two clients may use one
/// id); the body's `transactionId` only stands in for a missing header.
#[tokio::test]
async fn the_idempotency_key_header_is_the_key() {
    let s = start("alpha", Mode::Healthy).await;
    let c = client();
    for (key, reference) in [("key-7", "alpha-1"), ("key-8", "alpha-2")] {
        let req = c
            .post(format!("{}/transactions", s.url()))
            .header("Idempotency-Key", key)
            .json(&json!({"transactionId": "order-1", "amountMinor": 5}));
        assert_eq!(
            send(req).await,
            (200, json!({"status": "approved", "reference": reference}))
        );
    }
    assert!(s.outcome("key-7").is_some());
    assert!(s.outcome("key-8").is_some());
    assert_eq!(s.outcome("order-1"), None);
    let req = c
        .post(format!("{}/transactions", s.url()))
        .json(&json!({"amountMinor": 5}));
    assert_eq!(send(req).await.0, 400, "neither header nor body id");
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_repeats_of_one_id_record_it_once() {
    let s = start("alpha", Mode::Healthy).await;
    let c = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (c, url) = (c.clone(), s.url());
        tasks.spawn(async move {
            let body = json!({"transactionId": "same"});
            send(c.post(format!("{url}/transactions")).json(&body)).await
        });
    }
    while let Some(answer) = tasks.join_next().await {
        let answer = answer.expect("task");
        assert_eq!(
            answer,
            (200, json!({"status": "approved", "reference": "alpha-1"}))
        );
    }
    assert_eq!(s.stats().await, stats(1, 1, 0, 39));
    s.shutdown().await;
}

#[tokio::test]
async fn decline_mode_declines_and_records() {
    let s = start("beta", Mode::Decline).await;
    let c = client();
    let declined = json!({"status": "declined", "reason": "declined"});
    assert_eq!(post(&c, &s, "tx-d").await, (200, declined.clone()));
    assert_eq!(get(&c, &s, "/transactions/tx-d").await, (200, declined));
    assert_eq!(s.stats().await, stats(1, 0, 1, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn down_refuses_without_recording() {
    let s = start("gamma", Mode::Down).await;
    let c = client();
    assert_eq!(get(&c, &s, "/health").await.0, 503);
    assert_eq!(
        post(&c, &s, "tx-x").await,
        (503, json!({"status": "not_processed"}))
    );
    // Requeries, stats and faults still answer while down.
    assert_eq!(get(&c, &s, "/transactions/tx-x").await.0, 404);
    assert_eq!(s.stats().await, Stats::default());
    assert_eq!(get(&c, &s, "/faults").await.1["mode"], "down");

    s.set_faults(Mode::Healthy, None, None);
    assert_eq!(
        get(&c, &s, "/health").await,
        (200, json!({"status": "ok", "name": "gamma"}))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn error_mode_answers_500_without_recording() {
    let s = start("delta", Mode::Error).await;
    let c = client();
    assert_eq!(
        post(&c, &s, "tx-e").await,
        (500, json!({"status": "error"}))
    );
    assert_eq!(get(&c, &s, "/transactions/tx-e").await.0, 404);
    assert_eq!(s.stats().await, Stats::default());

    // Nothing was recorded, so a retry after recovery is new work, not a duplicate.
    s.set_faults(Mode::Healthy, None, None);
    assert_eq!(post(&c, &s, "tx-e").await.0, 200);
    assert_eq!(s.stats().await, stats(1, 1, 0, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn flaky_follows_its_fail_rate() {
    let s = start("eps", Mode::Healthy).await;
    let c = client();
    let (status, now) = put_faults(&c, &s, json!({"mode": "flaky", "failRate": 1.0})).await;
    assert_eq!(status, 200);
    assert_eq!(
        now,
        json!({"mode": "flaky", "latencyMs": 0, "failRate": 1.0})
    );
    for i in 0..20 {
        assert_eq!(post(&c, &s, &format!("f-{i}")).await.0, 500);
    }
    assert_eq!(s.stats().await, Stats::default());

    s.set_faults(Mode::Flaky, None, Some(0.0));
    for i in 0..20 {
        assert_eq!(post(&c, &s, &format!("f-{i}")).await.0, 200);
    }
    assert_eq!(s.stats().await, stats(20, 20, 0, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn slow_adds_its_latency() {
    let latency = Duration::from_millis(300);
    let mut opts = SimOptions::new("slowpoke");
    opts.mode = Mode::Slow;
    opts.latency_ms = latency.as_millis() as u64;
    let s = sim::spawn(loopback(), opts).await.expect("spawn sim");
    let c = client();
    // Warm the connection so only the sim's delay is measured.
    assert_eq!(get(&c, &s, "/health").await.0, 200);

    let started = Instant::now();
    let (status, body) = post(&c, &s, "tx-s").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "approved");
    assert!(elapsed >= latency, "answered after {elapsed:?}");

    s.set_faults(Mode::Healthy, None, None);
    let started = Instant::now();
    assert_eq!(post(&c, &s, "tx-fast").await.0, 200);
    assert!(started.elapsed() < latency, "healthy mode still slow");
    s.shutdown().await;
}

#[tokio::test]
async fn hang_after_receive_records_then_answers_once_the_mode_changes() {
    let s = start("hang", Mode::HangAfterReceive).await;
    let c = client();

    let hung = c
        .post(format!("{}/transactions", s.url()))
        .json(&json!({"transactionId": "h-1"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    let err = hung.expect_err("a hanging sim must not answer");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(get(&c, &s, "/stats").await.1["received"], 1);

    // A second POST stays open across the mode change.
    let open_post = tokio::spawn({
        let (c, url) = (c.clone(), s.url());
        async move {
            let body = json!({"transactionId": "h-2"});
            send(c.post(format!("{url}/transactions")).json(&body)).await
        }
    });
    wait_received(&s, 2).await;
    for path in ["/transactions/h-1", "/health"] {
        let requery = c
            .get(format!("{}{path}", s.url()))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(requery.is_err(), "{path} answered while hanging");
    }
    assert!(!open_post.is_finished());

    let (status, _) = put_faults(&c, &s, json!({"mode": "healthy"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&c, &s, "/transactions/h-1").await,
        (200, json!({"status": "approved", "reference": "hang-1"}))
    );
    let answered = tokio::time::timeout(PROMPT, open_post)
        .await
        .expect("the open POST completes after the mode change")
        .expect("task");
    assert_eq!(
        answered,
        (200, json!({"status": "approved", "reference": "hang-2"}))
    );
    assert_eq!(s.stats().await, stats(2, 2, 0, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_bounded_with_a_hanging_request() {
    let s = start("hang", Mode::HangAfterReceive).await;
    let c = client();
    let open_post = tokio::spawn({
        let (c, url) = (c.clone(), s.url());
        async move {
            c.post(format!("{url}/transactions"))
                .json(&json!({"transactionId": "h-1"}))
                .send()
                .await
        }
    });
    wait_received(&s, 1).await;
    let started = Instant::now();
    s.shutdown().await;
    // Hanging requests give up at once rather than using up the 1 s grace period.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(800), "shutdown took {took:?}");
    let answer = tokio::time::timeout(PROMPT, open_post)
        .await
        .expect("the hanging POST ends with the sim")
        .expect("task");
    assert!(
        answer.is_err(),
        "a hanging request got an answer: {answer:?}"
    );
}

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zeta.jsonl");
    let opts = || SimOptions {
        state_file: Some(path.clone()),
        ..SimOptions::new("zeta")
    };
    let c = client();

    let s = sim::spawn(loopback(), opts()).await.expect("spawn sim");
    let (_, approved) = post(&c, &s, "p-1").await;
    assert_eq!(
        approved,
        json!({"status": "approved", "reference": "zeta-1"})
    );
    s.set_faults(Mode::Decline, None, None);
    assert_eq!(post(&c, &s, "p-2").await.1["status"], "declined");
    s.shutdown().await;
    let lines = std::fs::read_to_string(&path).expect("state file");
    assert_eq!(lines.lines().count(), 2, "{lines}");

    let s = sim::spawn(loopback(), opts()).await.expect("restart sim");
    assert_eq!(
        get(&c, &s, "/transactions/p-1").await,
        (200, approved.clone())
    );
    assert_eq!(
        get(&c, &s, "/transactions/p-2").await.1["status"],
        "declined"
    );
    assert_eq!(s.stats().await, stats(2, 1, 1, 0));
    // A repeat is still a duplicate, and new references do not reuse old ones.
    assert_eq!(post(&c, &s, "p-1").await, (200, approved));
    let (_, fresh) = post(&c, &s, "p-3").await;
    assert_eq!(fresh, json!({"status": "approved", "reference": "zeta-2"}));
    assert_eq!(s.stats().await, stats(3, 2, 1, 1));
    s.shutdown().await;

    // A crash mid-write leaves a torn last line: it is skipped, and appending continues.
    std::fs::write(
        &path,
        format!(
            "{}{{\"id\":\"p-",
            std::fs::read_to_string(&path).expect("read")
        ),
    )
    .expect("tear the file");
    let s = sim::spawn(loopback(), opts())
        .await
        .expect("restart after a torn write");
    assert_eq!(s.stats().await, stats(3, 2, 1, 0));
    assert_eq!(post(&c, &s, "p-4").await.1["reference"], "zeta-3");
    s.shutdown().await;
    let s = sim::spawn(loopback(), opts()).await.expect("restart again");
    assert_eq!(s.stats().await, stats(4, 3, 1, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn state_file_records_concurrent_posts_once_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("eta.jsonl");
    let opts = SimOptions {
        state_file: Some(path.clone()),
        ..SimOptions::new("eta")
    };
    let s = sim::spawn(loopback(), opts).await.expect("spawn sim");
    let c = client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (c, url) = (c.clone(), s.url());
        // Ten distinct ids, each sent three times at once.
        let body = json!({"transactionId": format!("c-{}", i % 10)});
        tasks.spawn(async move { send(c.post(format!("{url}/transactions")).json(&body)).await });
    }
    while let Some(answer) = tasks.join_next().await {
        assert_eq!(answer.expect("task").0, 200);
    }
    assert_eq!(s.stats().await, stats(10, 10, 0, 20));
    s.shutdown().await;
    let lines = std::fs::read_to_string(&path).expect("state file");
    assert_eq!(lines.lines().count(), 10, "{lines}");
}

#[tokio::test]
async fn a_non_state_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "listen = \"0.0.0.0:8443\"\n").expect("write");
    let opts = SimOptions {
        state_file: Some(path.clone()),
        ..SimOptions::new("theta")
    };
    assert!(sim::spawn(loopback(), opts).await.is_err());
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "listen = \"0.0.0.0:8443\"\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_resets_open_connections_and_refuses_new_ones() {
    let s = start("iota", Mode::HangAfterReceive).await;
    let c = client();
    let open_post = tokio::spawn({
        let (c, url) = (c.clone(), s.url());
        async move {
            c.post(format!("{url}/transactions"))
                .json(&json!({"transactionId": "k-1"}))
                .send()
                .await
        }
    });
    wait_received(&s, 1).await;
    // A request stuck mid-body is not something a graceful stop would cut short.
    let mut half_sent = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    half_sent
        .write_all(b"POST /transactions HTTP/1.1\r\nhost: sim\r\ncontent-length: 100\r\n\r\n{")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;

    s.kill();
    let mut buf = [0_u8; 256];
    match tokio::time::timeout(PROMPT, half_sent.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("got an answer: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => panic!("the connection stayed open after kill"),
    }
    let answer = tokio::time::timeout(PROMPT, open_post)
        .await
        .expect("the open request ends when the sim is killed")
        .expect("task");
    let err = answer.expect_err("a killed sim must not answer");
    assert!(!err.is_timeout(), "{err:?}");

    // The listener closes as the aborted task is dropped, which may take a moment.
    let deadline = Instant::now() + PROMPT;
    loop {
        match tokio::net::TcpStream::connect(s.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting after kill: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let err = c
        .get(format!("{}/health", s.url()))
        .send()
        .await
        .expect_err("a killed sim must not answer");
    assert!(err.is_connect(), "{err:?}");
    // What it recorded before dying is still inspectable.
    assert_eq!(s.stats().await, stats(1, 1, 0, 0));
    assert_eq!(
        s.outcome("k-1").map(|o| o.status).as_deref(),
        Some("approved")
    );
}

#[tokio::test]
async fn rejects_malformed_requests_without_recording() {
    let s = start("kappa", Mode::Healthy).await;
    let c = client();
    let url = format!("{}/transactions", s.url());

    let raw = |body: &'static str| {
        c.post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, body) = send(raw("{not json")).await;
    assert_eq!((status, body["status"].clone()), (400, json!("invalid")));
    assert_eq!(send(raw(r#"{"amountMinor": 5}"#)).await.0, 400);
    assert_eq!(send(raw(r#"["tx-1"]"#)).await.0, 400);
    assert_eq!(send(raw(r#"{"transactionId": 12}"#)).await.0, 400);
    // Bad JSON is refused even when the header carries an id.
    let with_header = raw("{not json").header("Idempotency-Key", "k");
    assert_eq!(send(with_header).await.0, 400);

    let huge = json!({"transactionId": "big", "memo": "x".repeat(70 * 1024)});
    assert_eq!(send(c.post(&url).json(&huge)).await.0, 413);
    assert_eq!(s.stats().await, Stats::default());
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_methods_and_bad_faults() {
    let s = start("lambda", Mode::Healthy).await;
    let c = client();
    let (status, body) = get(&c, &s, "/nope").await;
    // An unknown route is a 404 that is not the protocol's `not_found`: it
    // proves nothing about any transaction.
    assert_eq!((status, body["status"].clone()), (404, json!("no_route")));
    assert_eq!(
        get(&c, &s, "/transactions/never-sent").await,
        (
            404,
            json!({"status": "not_found", "idempotencyKey": "never-sent"})
        )
    );
    // The id looked up, decoded, is the one named.
    assert_eq!(
        get(&c, &s, "/transactions/a%3Ab").await,
        (404, json!({"status": "not_found", "idempotencyKey": "a:b"}))
    );

    let resp = c
        .delete(format!("{}/transactions", s.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    for bad in [
        json!({"mode": "sideways"}),
        json!({"latencyMs": 5}),
        json!({"mode": "flaky", "failRate": 1.5}),
        json!({"mode": "slow", "latency": 5}),
    ] {
        let (status, body) = put_faults(&c, &s, bad.clone()).await;
        assert_eq!(status, 400, "{bad} was accepted: {body}");
    }
    assert_eq!(
        get(&c, &s, "/faults").await,
        (
            200,
            json!({"mode": "healthy", "latencyMs": 0, "failRate": 0.5})
        )
    );
    s.shutdown().await;
}

/// Options for a sim serving HTTPS with the development server certificate;
/// with `mtls` it requires client certificates signed by the development CA.
fn tls_options(name: &str, mode: Mode, mtls: bool) -> SimOptions {
    let certs = harness::certs();
    SimOptions {
        mode,
        tls: Some(SimTls {
            cert: certs.server_cert(),
            key: certs.server_key(),
            client_ca: mtls.then(|| certs.ca_cert()),
        }),
        ..SimOptions::new(name)
    }
}

async fn start_tls(name: &str, mode: Mode, mtls: bool) -> SimHandle {
    let s = sim::spawn(loopback(), tls_options(name, mode, mtls))
        .await
        .expect("spawn TLS sim");
    // The name the development server certificate is issued for, not an address.
    assert_eq!(s.url(), format!("https://localhost:{}", s.addr.port()));
    s
}

/// An HTTPS client that trusts only the development CA, optionally presenting
/// the development client certificate.
fn https_client(with_client_cert: bool) -> reqwest::Client {
    let certs = harness::certs();
    let read = |path: std::path::PathBuf| {
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let ca = reqwest::Certificate::from_pem(&read(certs.ca_cert())).expect("CA pem");
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        // `localhost` must reach the sim on 127.0.0.1 (the port comes from the URL).
        .resolve("localhost", loopback())
        .timeout(Duration::from_secs(10));
    if with_client_cert {
        let pem = [read(certs.client_cert()), read(certs.client_key())].concat();
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("client identity"));
    }
    builder.build().expect("reqwest client")
}

/// Reads until the peer closes (or resets) the connection; panics if it stays open.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0_u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection stayed open for {limit:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

#[tokio::test]
async fn https_sim_approves_over_tls_and_serves_stats() {
    let s = start_tls("tls-a", Mode::Healthy, false).await;
    let c = https_client(false);

    let (status, body) = post(&c, &s, "t-1").await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "approved", "reference": "tls-a-1"}))
    );
    assert_eq!(
        get(&c, &s, "/stats").await,
        (
            200,
            json!({"received": 1, "approved": 1, "declined": 0, "duplicates": 0})
        )
    );
    assert_eq!(
        get(&c, &s, "/transactions/t-1").await.1["reference"],
        "tls-a-1"
    );
    assert_eq!(s.stats().await, stats(1, 1, 0, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn plain_http_to_an_https_sim_gets_no_http_answer() {
    let s = start_tls("tls-b", Mode::Healthy, false).await;

    let body = r#"{"transactionId":"plain-1"}"#;
    let mut raw = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    raw.write_all(
        format!(
            "POST /transactions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    // At most a TLS alert comes back, then the sim closes the connection.
    let answer = read_until_closed(&mut raw, PROMPT).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let plain_url = format!("http://127.0.0.1:{}/transactions", s.addr.port());
    let err = client()
        .post(plain_url)
        .json(&json!({"transactionId": "plain-2"}))
        .send()
        .await
        .expect_err("plain HTTP must not get an answer");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(s.stats().await, Stats::default());

    // The failed handshakes closed only their own connections.
    assert_eq!(post(&https_client(false), &s, "t-1").await.0, 200);
    assert_eq!(s.stats().await, stats(1, 1, 0, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_get_through() {
    let s = start_tls("mtls", Mode::Healthy, true).await;

    let anonymous = https_client(false);
    let err = anonymous
        .post(format!("{}/transactions", s.url()))
        .json(&json!({"transactionId": "m-1"}))
        .send()
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(!err.is_timeout(), "{err:?}");
    let err = anonymous
        .get(format!("{}/stats", s.url()))
        .send()
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(s.stats().await, Stats::default());
    assert_eq!(s.outcome("m-1"), None);

    let c = https_client(true);
    assert_eq!(
        post(&c, &s, "m-1").await,
        (200, json!({"status": "approved", "reference": "mtls-1"}))
    );
    assert_eq!(get(&c, &s, "/stats").await.1["received"], 1);
    assert_eq!(s.stats().await, stats(1, 1, 0, 0));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_tls_connections_including_unfinished_handshakes() {
    let s = start_tls("tls-k", Mode::HangAfterReceive, false).await;
    let c = https_client(false);
    let open_post = tokio::spawn({
        let (c, url) = (c.clone(), s.url());
        async move {
            c.post(format!("{url}/transactions"))
                .json(&json!({"transactionId": "k-1"}))
                .send()
                .await
        }
    });
    wait_received(&s, 1).await;
    // Connected but silent: its handshake is still pending when the sim dies.
    let mut silent = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;

    s.kill();
    // Well inside the 5 s handshake timeout, which would also close it.
    let answer = read_until_closed(&mut silent, Duration::from_secs(2)).await;
    assert!(answer.is_empty(), "got {answer:?}");
    let answer = tokio::time::timeout(PROMPT, open_post)
        .await
        .expect("the open request ends when the sim is killed")
        .expect("task");
    let err = answer.expect_err("a killed sim must not answer");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(s.stats().await, stats(1, 1, 0, 0));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_an_unfinished_handshake() {
    let s = start_tls("tls-s", Mode::Healthy, false).await;
    let mut silent = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    // Let the sim accept it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    s.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(800), "shutdown took {took:?}");
    let answer = read_until_closed(&mut silent, Duration::from_secs(2)).await;
    assert!(answer.is_empty(), "got {answer:?}");
}

#[tokio::test]
async fn unusable_tls_files_are_refused_at_bind() {
    let certs = harness::certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let broken = [
        (
            "missing certificate",
            missing.clone(),
            certs.server_key(),
            None,
        ),
        (
            "certificate as key",
            certs.server_cert(),
            certs.server_cert(),
            None,
        ),
        (
            "key of another certificate",
            certs.server_cert(),
            certs.client_key(),
            None,
        ),
        (
            "missing client CA",
            certs.server_cert(),
            certs.server_key(),
            Some(missing),
        ),
    ];
    for (what, cert, key, client_ca) in broken {
        let opts = SimOptions {
            tls: Some(SimTls {
                cert,
                key,
                client_ca,
            }),
            ..SimOptions::new("tls-bad")
        };
        let bound = sim::spawn(loopback(), opts).await;
        assert!(bound.is_err(), "{what} was accepted");
    }
}
