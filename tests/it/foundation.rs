//! The front end: TLS, limits, errors, ops endpoints, shutdown, config exit codes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{self, Db, Options, spawn_gateway_with};

fn sqlite() -> Options {
    Options {
        db: Db::Sqlite,
        ..Options::default()
    }
}

fn tls_connector(versions: &[&'static rustls::SupportedProtocolVersion]) -> TlsConnector {
    switchboard::edge::tls::install_crypto_provider();
    let roots = switchboard::edge::tls::root_store(&harness::certs().ca_cert()).unwrap();
    let config = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn handshake(
    addr: std::net::SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls_connector(versions)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn tls13_and_tls12_handshakes_succeed() {
    let gw = spawn_gateway_with(sqlite()).await;
    let tls13 = handshake(gw.addr, &[&rustls::version::TLS13]).await;
    assert_eq!(
        tls13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let tls12 = handshake(gw.addr, &[&rustls::version::TLS12]).await;
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    // And the HTTPS client negotiates HTTP/2 by ALPN.
    let resp = gw
        .client
        .get(format!("{}/nowhere", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

/// A TLS 1.1 ClientHello, by hand: no Rust TLS stack will send one any more.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend([0x42; 32]); // random
    hello.push(0); // session id
    hello.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two TLS 1.1 cipher suites
    hello.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((hello.len() as u16).to_be_bytes());
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

async fn first_bytes(addr: std::net::SocketAddr, send: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(send).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the server must close the connection");
    buf
}

#[tokio::test]
async fn tls11_and_plaintext_http_are_refused() {
    let gw = spawn_gateway_with(sqlite()).await;

    let answer = first_bytes(gw.addr, &tls11_client_hello()).await;
    // Either a fatal alert record (0x15) or a bare close; never a ServerHello (0x16).
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "TLS 1.1 must be refused, got {answer:02x?}"
    );

    let answer = first_bytes(
        gw.addr,
        b"GET /v1/accounts/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext HTTP must get no HTTP answer, got {:?}",
        String::from_utf8_lossy(&answer)
    );

    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        metrics.contains("switchboard_tls_handshake_failures_total{reason=\"error\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_oversized_body_gets_413_json() {
    let gw = spawn_gateway_with(Options {
        layers: vec!["[server]\nbody_bytes_max = 1024\n".into()],
        ..sqlite()
    })
    .await;
    let token = gw.token("alice", &["transact"]);
    let big = serde_json::json!({"transactionId": "t1", "metadata": {"pad": "x".repeat(4096)}});
    let r = gw.post("/v1/transactions", &token, &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "payload_too_large");
}

#[tokio::test]
async fn trickled_headers_are_cut_off_within_the_timeout() {
    let gw = spawn_gateway_with(Options {
        layers: vec!["[server]\nheader_read_timeout_ms = 500\n".into()],
        ..sqlite()
    })
    .await;
    let mut tls = handshake(gw.addr, &[&rustls::version::TLS13]).await;
    let started = Instant::now();
    tls.write_all(b"GET /v1/accounts/x HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut closed_after = None;
    let mut buf = [0u8; 256];
    while started.elapsed() < Duration::from_secs(5) {
        if tls.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
    }
    let closed_after = closed_after.expect("a trickling client must be cut off");
    assert!(
        closed_after >= Duration::from_millis(450) && closed_after < Duration::from_millis(2000),
        "closed after {closed_after:?}, expected about 500 ms"
    );
}

#[tokio::test]
async fn idle_keepalive_connections_outlive_the_header_timeout() {
    // The header timeout must not double as the idle timeout.
    let gw = spawn_gateway_with(Options {
        layers: vec![
            "[server]\nheader_read_timeout_ms = 200\nkeepalive_idle_timeout_ms = 5000\n".into(),
        ],
        ..sqlite()
    })
    .await;
    let mut tls = handshake(gw.addr, &[&rustls::version::TLS13]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    tls.write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 404"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let gw = harness::spawn_gateway().await;
    let resp = gw
        .client
        .get(format!("{}/nope", gw.base))
        .send()
        .await
        .unwrap();
    let r = harness::read(resp).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");

    let resp = gw
        .client
        .delete(format!("{}/v1/transactions", gw.base))
        .send()
        .await
        .unwrap();
    let r = harness::read(resp).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.code(), "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, GET"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let gw = spawn_gateway_with(sqlite()).await;
    let resp = gw
        .client
        .get(format!("{}/nope", gw.base))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-abc-123");
    let resp = gw
        .client
        .get(format!("{}/nope", gw.base))
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
}

#[tokio::test]
async fn healthz_readyz_and_metrics_report_the_process() {
    let sims = harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        ..sqlite()
    })
    .await;
    let (status, body) = gw.ops_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = gw.ops_get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let _ = gw
        .client
        .get(format!("{}/nope", gw.base))
        .send()
        .await
        .unwrap();
    let (status, metrics) = gw.ops_get("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "switchboard_http_requests_total{route=\"unknown\",status=\"404\"} 1",
        "switchboard_http_request_duration_seconds_bucket{route=\"unknown\"",
        "switchboard_http_requests_in_flight 0",
        "switchboard_connections_open 1",
        "switchboard_build_info{version=\"",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test]
async fn readyz_is_503_without_switches() {
    let gw = spawn_gateway_with(sqlite()).await;
    let (status, body) = gw.ops_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"switches\":false"), "{body}");
}

#[tokio::test]
async fn an_in_flight_request_completes_during_graceful_shutdown() {
    let sims = harness::spawn_sims(1).await;
    sims[0].set_faults(switchboard::devtools::sim::Mode::Slow, Some(1500), None);
    let mut gw = spawn_gateway_with(Options {
        switches: harness::switch_list(&sims),
        ..sqlite()
    })
    .await;
    gw.account("alice-eur", "alice", "EUR", 1000).await;
    let token = gw.token("alice", &["transact"]);
    let request = gw
        .client
        .post(format!("{}/v1/transactions", gw.base))
        .bearer_auth(&token)
        .json(&harness::debit("slow-1", "alice-eur", 5))
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopped = gw.begin_shutdown();

    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status(), 201);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the gateway stops after draining")
        .unwrap();
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "no new connections after shutdown"
    );
    assert_eq!(sims[0].stats().await.approved, 1);
}

#[test]
fn an_invalid_config_exits_64_naming_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nconnections_max = 0\nrequest_deadline_ms = 0\n[databse]\nurl = \"x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(harness::binary())
        .args(["--config", bad.to_str().unwrap(), "serve"])
        .current_dir(dir.path())
        .env_remove("SWITCHBOARD_ENV")
        .env_remove("SWITCHBOARD__AUTH__DEV_HS256_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    for key in [
        "databse",
        "server.connections_max",
        "server.request_deadline_ms",
    ] {
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    // Nothing was bound: the default port is still free for the next test.
    assert!(!stderr.contains("ready"), "{stderr}");
}

#[test]
fn bad_usage_exits_64() {
    let out = std::process::Command::new(harness::binary())
        .arg("no-such-command")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn certs_command_writes_a_ca_and_leaves_that_rustls_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(harness::binary())
        .args(["certs", "--dir", dir.path().to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths = switchboard::devtools::certs::CertPaths::new(dir.path());
    assert!(paths.complete());
    // The server leaf verifies against the CA for both names.
    let roots = Arc::new(switchboard::edge::tls::root_store(&paths.ca_cert()).unwrap());
    let leaf = switchboard::edge::tls::load_certs(&paths.server_cert()).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder(roots)
        .build()
        .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        verifier
            .verify_server_cert(
                &leaf[0],
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(paths.server_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are owner-only");
    }
    // A second run refuses to overwrite without --force.
    let again = std::process::Command::new(harness::binary())
        .args(["certs", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(64));
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_and_can_bind_the_token_subject_to_it() {
    let certs = harness::certs();
    let gw = spawn_gateway_with(Options {
        layers: vec![format!(
            "[server]\nclient_ca = \"{}\"\n[auth]\nrequire_sub_match_client_cert = true\n",
            certs.ca_cert().display()
        )],
        ..sqlite()
    })
    .await;
    let url = format!("{}/v1/accounts/m1", gw.base);
    let cn = switchboard::devtools::certs::CLIENT_COMMON_NAME;

    // No client certificate: refused at the handshake.
    assert!(gw.client.get(&url).send().await.is_err());

    let ca = std::fs::read(certs.ca_cert()).unwrap();
    let mut identity = std::fs::read(certs.client_cert()).unwrap();
    identity.extend(std::fs::read(certs.client_key()).unwrap());
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .resolve("localhost", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .build()
        .unwrap();
    let as_cn = gw.token(cn, &["operator", "transact"]);
    let created = client
        .post(format!("{}/v1/accounts", gw.base))
        .bearer_auth(&as_cn)
        .json(&harness::account_body("m1", cn, "EUR", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let mine = harness::read(client.get(&url).bearer_auth(&as_cn).send().await.unwrap()).await;
    assert_eq!((mine.status, mine.json["balance"].as_i64()), (200, Some(5)));

    // A valid token for another subject over this certificate: refused.
    let alice = gw.token("alice", &["transact", "auditor"]);
    let r = harness::read(client.get(&url).bearer_auth(&alice).send().await.unwrap()).await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let (_, metrics) = gw.ops_get("/metrics").await;
    assert!(
        harness::metric(
            &metrics,
            "switchboard_requests_denied_total{reason=\"client_cert_mismatch\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// A test's Postgres database goes with its gateway, also when the test
/// panics: a run leaves none behind on a shared server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_database_is_dropped_with_its_gateway_even_on_panic() {
    let gw = harness::spawn_gateway().await;
    let name = gw.database_name().expect("a Postgres database");
    assert!(crate::db::database_exists(&name).await, "{name} exists");
    drop(gw);
    assert!(!crate::db::database_exists(&name).await, "{name} dropped");

    let (tx, rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let gw = harness::spawn_gateway().await;
        tx.send(gw.database_name().expect("a Postgres database"))
            .expect("send the name");
        panic!("a failing test");
    });
    assert!(failing.await.is_err(), "the test panicked");
    let name = rx.await.expect("its database name");
    assert!(
        !crate::db::database_exists(&name).await,
        "{name} dropped while unwinding"
    );

    let db = crate::db::fresh_postgres().await;
    let name = crate::db::database_name(db.url());
    assert!(
        name.starts_with(&format!("sb_{}_", std::process::id())),
        "{name}: named with the test process, for scripts/test.sh's stale pass"
    );
    drop(db);
    assert!(!crate::db::database_exists(&name).await, "{name} dropped");
}
