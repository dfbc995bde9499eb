//! What proves a switch did not process a transaction, so that it may move
//! to another (docs/design.md, "Failover only with proof"): a 404 that is not
//! the protocol's own `not_found` proves nothing; a connection that never
//! finished its TLS handshake proves nothing was sent. Real sockets: a plain
//! hyper server standing in for a proxy, a TCP listener that swallows
//! handshakes, real sims.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use switchboard::devtools::sim::{self, SimHandle, SimOptions};
use switchboard::domain::GatewayRef;
use switchboard::ledger::AttemptOutcome;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{self, Options, debit, eventually, spawn_gateway_with};
use crate::resilience::FAST;

/// `[[switches]]` with weights, the first far heavier: the first attempt of
/// a lone transaction goes to it.
fn weighted(switches: &[(&str, String, u32)]) -> String {
    switches
        .iter()
        .map(|(name, url, weight)| {
            format!("[[switches]]\nname = \"{name}\"\nurl = \"{url}\"\nweight = {weight}\n")
        })
        .collect()
}

/// A plain HTTP server in place of a switch, as a proxy in front of one that
/// routes only `/health` through would be: `GET /health` answers 200 (so it
/// enters rotation), every other request 404 — no body, an HTML page, or
/// JSON that is not the protocol's, in turn.
struct Stray404 {
    addr: SocketAddr,
    posts: Arc<AtomicU64>,
    requeries: Arc<AtomicU64>,
}

impl Stray404 {
    async fn spawn() -> Self {
        let (posts, requeries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (p, q) = (posts.clone(), requeries.clone());
        let answered = Arc::new(AtomicU64::new(0));
        let (addr, _task) = harness::serve_http(move |req: Request<Incoming>| {
            let (p, q, answered) = (p.clone(), q.clone(), answered.clone());
            async move {
                let path = req.uri().path().to_owned();
                match (req.method(), path.as_str()) {
                    (&Method::GET, "/health") => Response::new(Full::new(Bytes::new())),
                    (method, path) => {
                        if method == Method::POST && path == "/transactions" {
                            p.fetch_add(1, Ordering::SeqCst);
                        } else if method == Method::GET && path.starts_with("/transactions/") {
                            q.fetch_add(1, Ordering::SeqCst);
                        }
                        let (kind, body) = match answered.fetch_add(1, Ordering::SeqCst) % 3 {
                            0 => ("text/plain", ""),
                            1 => (
                                "text/html",
                                "<html><body><h1>404 Not Found</h1></body></html>",
                            ),
                            _ => ("application/json", r#"{"error":"not found"}"#),
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = StatusCode::NOT_FOUND;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(kind),
                        );
                        resp
                    }
                }
            }
        })
        .await;
        Self {
            addr,
            posts,
            requeries,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn a_404_that_is_not_the_protocols_not_found_never_moves_a_transaction() {
    let proxy = Stray404::spawn().await;
    let sims = harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        layers: vec![
            FAST.into(),
            weighted(&[("proxy-404", proxy.url(), 100), ("sim-1", sims[0].url(), 1)]),
        ],
        ..Options::default()
    })
    .await;
    gw.account("nf1", "nia", "EUR", 100).await;
    let token = gw.token("nia", &["transact"]);

    // The forward's 404 is an unknown outcome; so is every requery's 404
    // (empty, HTML, other JSON): pending at the deadline, never sim-1.
    let r = gw
        .post("/v1/transactions", &token, &debit("nf-1", "nf1", 10))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.json);
    assert_eq!(r.json["status"], "pending");
    assert_eq!(r.json["switch"], "proxy-404");
    assert_eq!(r.json["attempts"], 1, "never sent to a second switch");
    assert!(
        r.json["lastError"].as_str().unwrap_or("").contains("404"),
        "{:?}",
        r.json
    );
    assert_eq!(proxy.posts.load(Ordering::SeqCst), 1);
    assert!(
        proxy.requeries.load(Ordering::SeqCst) >= 3,
        "requeried until the deadline, each 404 read as unknown"
    );
    assert_eq!(sims[0].stats().await.received, 0, "sim-1 saw nothing");
    assert_eq!(gw.balance("nf1").await, 90, "the money stays held");
    assert_eq!(
        gw.metric("switchboard_switch_retries_total{reason=\"not_found\"}")
            .await,
        0.0
    );

    // The reconciler asks the same switch, gets a 404 again, and keeps it
    // pending: it neither releases the money nor sends it elsewhere.
    eventually(
        Duration::from_secs(20),
        "the reconciler requeried it",
        || async {
            gw.metric("switchboard_reconciler_outcomes_total{outcome=\"still_unknown\"}")
                .await
                >= 1.0
        },
    )
    .await;
    let t = gw.get("/v1/transactions/nf-1", &token).await;
    assert_eq!(t.json["status"], "pending", "{:?}", t.json);
    assert!(
        t.json["requeries"].as_u64().unwrap_or(0) >= 1,
        "{:?}",
        t.json
    );
    assert_eq!(t.json["attempts"], 1);
    assert_eq!(
        gw.metric("switchboard_reconciler_outcomes_total{outcome=\"released_not_found\"}")
            .await,
        0.0
    );
    assert_eq!(gw.balance("nf1").await, 90);
    assert_eq!(sims[0].stats().await.received, 0, "sim-1 saw nothing");
}

/// A TCP listener in front of an HTTPS sim: it passes connections through
/// while `stall` is false (so probes see a healthy switch), and once it is
/// set accepts and holds every new connection without a byte either way — a
/// TLS handshake that never finishes.
struct StallingTls {
    addr: SocketAddr,
    stall: Arc<AtomicBool>,
    stalled: Arc<AtomicU64>,
}

impl StallingTls {
    async fn spawn(behind: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stall, stalled) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n) = (stall.clone(), stalled.clone());
        tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                if s.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    held.push(tcp);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(behind).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                    }
                });
            }
        });
        Self {
            addr,
            stall,
            stalled,
        }
    }

    /// `https://localhost:PORT`: a name the development certificate covers.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_not_sent_and_fails_over_quickly() {
    let certs = harness::certs();
    let mut opts = SimOptions::new("behind-stall");
    opts.tls = Some(sim::SimTls {
        cert: certs.server_cert(),
        key: certs.server_key(),
        client_ca: None,
    });
    let secure: SimHandle = sim::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let front = StallingTls::spawn(secure.addr).await;
    let healthy = harness::spawn_sims(1).await;
    let attempt_timeout_ms = 3000;
    let gw = spawn_gateway_with(Options {
        layers: vec![
            FAST.into(),
            format!(
                r#"
[server]
request_deadline_ms = 6000
[forwarding]
ca_bundle = "{ca}"
connect_timeout_ms = 200
attempt_timeout_ms = {attempt_timeout_ms}
[health]
# Probes of the stalled switch fail too; keep it in rotation for the test.
unhealthy_threshold = 1000
passive_failures_max = 1000
[reconciler]
stale_after_ms = 12000
"#,
                ca = certs.ca_cert().display()
            ),
            weighted(&[
                ("stalled-tls", front.url(), 100),
                ("sim-1", healthy[0].url(), 1),
            ]),
        ],
        ..Options::default()
    })
    .await;
    gw.account("st1", "sal", "EUR", 100).await;
    let token = gw.token("sal", &["transact"]);

    front.stall.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let r = gw
        .post("/v1/transactions", &token, &debit("st-1", "st1", 10))
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["switch"], "sim-1");
    assert_eq!(r.json["attempts"], 2);
    assert!(
        took < Duration::from_millis(attempt_timeout_ms / 2),
        "failed over after the connect timeout, not the attempt timeout: {took:?}"
    );
    assert!(front.stalled.load(Ordering::SeqCst) >= 1);
    assert_eq!(secure.stats().await.received, 0, "nothing reached it");
    assert_eq!(healthy[0].stats().await.received, 1);

    let attempts = gw
        .state
        .ledger
        .attempts(&GatewayRef::from_stored(
            r.json["gatewayRef"].as_str().unwrap().to_owned(),
        ))
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].switch.as_str(), "stalled-tls");
    assert_eq!(
        attempts[0].outcome,
        Some(AttemptOutcome::NotSent),
        "{attempts:?}"
    );
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("TLS handshake"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1].switch.as_str(), "sim-1");
    assert_eq!(attempts[1].outcome, Some(AttemptOutcome::Approved));
    assert_eq!(
        gw.metric("switchboard_switch_retries_total{reason=\"not_sent\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("switchboard_switch_forwards_total{result=\"not_sent\",switch=\"stalled-tls\"}")
            .await,
        1.0
    );
}
