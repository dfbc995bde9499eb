//! Talking to upstream switches: the pooled HTTP(S) client and the answers
//! of the switch protocol (docs/design.md, "The switch protocol").
//!
//! **Invariant:** a [`ForwardError::NotSent`] is returned only when no byte of
//! the request can have reached the switch (the connection was never
//! established: TCP connect and, for `https://`, the TLS handshake, together
//! bounded by `forwarding.connect_timeout_ms`). Everything after that is
//! [`ForwardError::Unknown`]: the caller must ask the switch before sending
//! the transaction anywhere else.
//!
//! **Invariant:** [`Answer::NotFound`] ("never received") is read only from
//! the protocol's own answer to a requery: a 404 whose JSON body says
//! `"status": "not_found"` and names the transaction asked about. Any other
//! 404 (a proxy in front of the switch, a wrong path, an HTML error page) is
//! an unknown outcome, so it can never move a transaction to another switch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use crate::config::{ForwardingConfig, SwitchConfig};
use crate::domain::{GatewayRef, SwitchName};

/// A switch's answer to `POST /transactions` or `GET /transactions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved {
        reference: String,
    },
    Declined {
        reason: String,
    },
    /// 503 `not_processed`: refused without touching it; safe to try elsewhere.
    NotProcessed,
    /// The protocol's 404 `not_found` for this transaction, on a requery:
    /// the switch never received it; safe to try elsewhere.
    NotFound,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// The connection was never established (refused, TCP connect or TLS
    /// handshake failed or timed out): nothing was sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the switch; its outcome is unknown.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// An answer's body as the protocol spells it.
#[derive(Debug, Deserialize)]
struct WireAnswer {
    status: WireStatus,
    reference: Option<String>,
    reason: Option<String>,
    /// In a 404 `not_found`: the key the switch looked up (the one asked
    /// about).
    #[serde(rename = "idempotencyKey")]
    idempotency_key: Option<String>,
}

/// The `status` of an answer; any other value is not a protocol answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireStatus {
    Approved,
    Declined,
    NotProcessed,
    NotFound,
}

/// What the switch was asked: which answers prove what depends on it.
#[derive(Debug, Clone, Copy)]
enum Asked<'a> {
    /// `POST /transactions`: `503 not_processed` proves it was not processed.
    Forward,
    /// `GET /transactions/{key}`: only the protocol's 404 `not_found` naming
    /// this key proves it was never received.
    Requery { key: &'a str },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens every switch connection: TCP connect and, for `https://`, the TLS
/// handshake, bounded together by `forwarding.connect_timeout_ms`. Nothing of
/// a request is written before it returns, so its failure or timeout (a
/// refused port, a handshake that fails or stalls) reaches the client as a
/// connect error, which [`SwitchClient`] reads as [`ForwardError::NotSent`].
#[derive(Clone)]
struct BoundedConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

/// The connection to a switch was not established within the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connection (TCP connect and TLS handshake) not established within {} ms", .0.as_millis())]
struct ConnectTimedOut(Duration);

impl tower_service::Service<Uri> for BoundedConnector {
    type Response = <HttpsConnector<HttpConnector> as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(Box::new(ConnectTimedOut(timeout)) as BoxError),
            }
        })
    }
}

/// One upstream switch, as configured.
#[derive(Debug, Clone)]
pub struct Switch {
    pub name: SwitchName,
    pub base: Uri,
    pub weight: u32,
}

impl Switch {
    pub fn from_config(cfg: &SwitchConfig) -> Option<Self> {
        Some(Self {
            name: cfg.name.clone(),
            base: cfg.url.parse().ok()?,
            weight: cfg.weight,
        })
    }

    fn uri(&self, path: &str) -> Result<Uri, ForwardError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            path.parse()
                .map_err(|_| ForwardError::NotSent(format!("bad path {path:?}")))?,
        );
        Uri::from_parts(parts).map_err(|e| ForwardError::NotSent(e.to_string()))
    }
}

/// The pooled keep-alive client used for every switch.
#[derive(Clone)]
pub struct SwitchClient {
    client: Client<BoundedConnector, Full<Bytes>>,
    /// Keeps no idle connections: every probe opens a fresh one, so a probe
    /// tests what a new forward would meet.
    probe_client: Client<BoundedConnector, Full<Bytes>>,
    response_bytes_max: usize,
}

impl SwitchClient {
    pub fn new(cfg: &ForwardingConfig, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout()));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let https = BoundedConnector {
            inner: https,
            timeout: cfg.connect_timeout(),
        };
        let probe_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https.clone());
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_idle_per_switch_max)
            // hyper-util retries only a request it got back unsent (an idle
            // pooled connection found dead before writing), which cannot make
            // a transaction happen twice; without it a killed switch's stale
            // connections would look like unknown outcomes.
            .retry_canceled_requests(true)
            .build(https);
        Self {
            client,
            probe_client,
            response_bytes_max: cfg.response_bytes_max,
        }
    }

    /// `POST /transactions` with the transaction as JSON, answered within
    /// `timeout`; the switch knows it by `key` (`Idempotency-Key`).
    pub async fn forward(
        &self,
        switch: &Switch,
        key: &GatewayRef,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(switch.uri("/transactions")?)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key.as_str())
            .header("x-request-id", request_id)
            .body(Full::new(payload))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        self.exchange(req, Asked::Forward, timeout).await
    }

    /// `GET /transactions/{key}`: what happened to a transaction we may have
    /// sent under `key`.
    pub async fn query(
        &self,
        switch: &Switch,
        key: &GatewayRef,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(switch.uri(&format!("/transactions/{key}"))?)
            .header("x-request-id", request_id)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        // A requery changes nothing on the switch, so "not sent" and "unknown"
        // both just mean "no answer" to the caller.
        let key = key.as_str();
        self.exchange(req, Asked::Requery { key }, timeout).await
    }

    /// `GET /health` on a fresh connection: true on 200 within `timeout`.
    pub async fn probe(&self, switch: &Switch, timeout: Duration) -> bool {
        let Ok(uri) = switch.uri("/health") else {
            return false;
        };
        let Ok(req) = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Full::new(Bytes::new()))
        else {
            return false;
        };
        let work = async {
            let resp = self.probe_client.request(req).await.ok()?;
            let ok = resp.status() == StatusCode::OK;
            // Drain a bounded body so the connection closes cleanly.
            let _ = Limited::new(resp.into_body(), self.response_bytes_max)
                .collect()
                .await;
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, work).await, Ok(Some(true)))
    }

    async fn exchange(
        &self,
        mut req: Request<Full<Bytes>>,
        asked: Asked<'_>,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        // Set once the pool hands the request a connection, before any byte
        // of it is written: unset at the timeout, nothing was sent.
        let connection = capture_connection(&mut req);
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ForwardError::NotSent(format!("connect: {}", error_chain(&e)))
                } else {
                    ForwardError::Unknown(format!("request: {}", error_chain(&e)))
                }
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), self.response_bytes_max)
                .collect()
                .await
                .map_err(|e| ForwardError::Unknown(format!("reading answer: {e}")))?
                .to_bytes();
            interpret(status, &body, asked)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            // Still connecting (a budget shorter than the connect timeout):
            // the request never had a connection to leave on.
            Err(_) if connection.connection_metadata().is_none() => Err(ForwardError::NotSent(
                format!("no connection within {} ms", timeout.as_millis()),
            )),
            // It had a connection: the request may have left.
            Err(_) => Err(ForwardError::Unknown(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// Reads an answer per the protocol (docs/design.md, "The switch protocol");
/// anything it does not define is an unknown outcome.
fn interpret(status: StatusCode, body: &[u8], asked: Asked<'_>) -> Result<Answer, ForwardError> {
    let wire: Option<WireAnswer> = serde_json::from_slice(body).ok();
    let unknown = |what: &str| {
        ForwardError::Unknown(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    };
    match (status, wire, asked) {
        (StatusCode::OK, Some(w), _) if w.status == WireStatus::Approved => Ok(Answer::Approved {
            reference: w.reference.unwrap_or_default(),
        }),
        (StatusCode::OK, Some(w), _) if w.status == WireStatus::Declined => Ok(Answer::Declined {
            reason: w.reason.unwrap_or_else(|| "declined".into()),
        }),
        (StatusCode::SERVICE_UNAVAILABLE, Some(w), Asked::Forward)
            if w.status == WireStatus::NotProcessed =>
        {
            Ok(Answer::NotProcessed)
        }
        (StatusCode::NOT_FOUND, Some(w), Asked::Requery { key })
            if w.status == WireStatus::NotFound && w.idempotency_key.as_deref() == Some(key) =>
        {
            Ok(Answer::NotFound)
        }
        (StatusCode::NOT_FOUND, _, Asked::Requery { .. }) => Err(unknown(
            "a 404 that is not the protocol's not_found for this transaction (a proxy or a wrong path?)",
        )),
        _ => Err(unknown("unexpected answer")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUERY: Asked<'static> = Asked::Requery { key: "tx-1" };

    #[test]
    fn answers_are_read_per_protocol() {
        let ok = |b: &str| interpret(StatusCode::OK, b.as_bytes(), Asked::Forward);
        assert_eq!(
            ok(r#"{"status":"approved","reference":"r1"}"#).unwrap(),
            Answer::Approved {
                reference: "r1".into()
            }
        );
        assert!(matches!(
            ok(r#"{"status":"declined"}"#),
            Ok(Answer::Declined { .. })
        ));
        assert!(matches!(
            ok(r#"{"status":"maybe"}"#),
            Err(ForwardError::Unknown(_))
        ));
        assert_eq!(
            interpret(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"status":"not_processed"}"#,
                Asked::Forward
            )
            .unwrap(),
            Answer::NotProcessed
        );
        // Any other 5xx is an unknown outcome, never a safe retry.
        assert!(matches!(
            interpret(StatusCode::INTERNAL_SERVER_ERROR, b"{}", Asked::Forward),
            Err(ForwardError::Unknown(_))
        ));
        assert!(matches!(
            interpret(StatusCode::SERVICE_UNAVAILABLE, b"busy", Asked::Forward),
            Err(ForwardError::Unknown(_))
        ));
        // A requery is never "not processed".
        assert!(matches!(
            interpret(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"status":"not_processed"}"#,
                REQUERY
            ),
            Err(ForwardError::Unknown(_))
        ));
    }

    #[test]
    fn only_the_protocols_not_found_for_this_transaction_proves_never_received() {
        assert_eq!(
            interpret(
                StatusCode::NOT_FOUND,
                br#"{"status":"not_found","idempotencyKey":"tx-1"}"#,
                REQUERY
            )
            .unwrap(),
            Answer::NotFound
        );
        for body in [
            "",
            "<html><body><h1>404 Not Found</h1></body></html>",
            "not found",
            r#"{"error":"not found"}"#,
            // The protocol's word without the id asked about: a generic 404
            // of some JSON service (the sim's unknown route once looked so).
            r#"{"status":"not_found"}"#,
            r#"{"status":"not_found","reason":"no route for /transactionz/tx-1"}"#,
            // Another transaction's answer.
            r#"{"status":"not_found","idempotencyKey":"tx-2"}"#,
            r#"{"status":"gone","idempotencyKey":"tx-1"}"#,
            // The field of the protocol before keys were the gateway's.
            r#"{"status":"not_found","transactionId":"tx-1"}"#,
        ] {
            assert!(
                matches!(
                    interpret(StatusCode::NOT_FOUND, body.as_bytes(), REQUERY),
                    Err(ForwardError::Unknown(_))
                ),
                "{body:?}"
            );
        }
        // Not-found means nothing on a forward, or under another status.
        assert!(matches!(
            interpret(
                StatusCode::NOT_FOUND,
                br#"{"status":"not_found","transactionId":"tx-1"}"#,
                Asked::Forward
            ),
            Err(ForwardError::Unknown(_))
        ));
        assert!(matches!(
            interpret(
                StatusCode::OK,
                br#"{"status":"not_found","idempotencyKey":"tx-1"}"#,
                REQUERY
            ),
            Err(ForwardError::Unknown(_))
        ));
    }

    /// A client with `connect_timeout_ms` and no roots (no handshake here
    /// gets far enough to verify anything).
    fn client(connect_timeout_ms: u64) -> SwitchClient {
        let cfg = ForwardingConfig {
            connect_timeout_ms,
            attempt_timeout_ms: 10_000,
            attempts_max: 3,
            pool_idle_per_switch_max: 4,
            pool_idle_timeout_ms: 1_000,
            response_bytes_max: 16_384,
            ca_bundle: None,
            client_cert: None,
            client_key: None,
            balancing: crate::config::Balancing::RoundRobin,
            ewma_decay_ms: 10_000,
            ewma_default_ms: 30,
            slow_start_ms: 0,
        };
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        SwitchClient::new(&cfg, tls)
    }

    /// A listener that accepts and holds connections, never a byte back;
    /// reads what arrives, counting it.
    async fn silent_listener() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let read = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                        counted.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, read)
    }

    fn switch(url: String) -> Switch {
        Switch {
            name: SwitchName::parse("s").unwrap(),
            base: url.parse().unwrap(),
            weight: 1,
        }
    }

    async fn forward(client: &SwitchClient, url: String, timeout_ms: u64) -> ForwardError {
        client
            .forward(
                &switch(url),
                &GatewayRef::from_stored("tx-1".into()),
                "req-1",
                Bytes::from_static(b"{}"),
                Duration::from_millis(timeout_ms),
            )
            .await
            .expect_err("no answer")
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_not_sent_within_the_connect_timeout() {
        let (addr, _) = silent_listener().await;
        let started = std::time::Instant::now();
        let err = forward(
            &client(100),
            format!("https://localhost:{}", addr.port()),
            5_000,
        )
        .await;
        assert!(matches!(err, ForwardError::NotSent(_)), "{err}");
        assert!(err.to_string().contains("TLS handshake"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_budget_that_ends_while_connecting_is_not_sent() {
        let (addr, _) = silent_listener().await;
        let err = forward(
            &client(5_000),
            format!("https://localhost:{}", addr.port()),
            100,
        )
        .await;
        assert!(matches!(err, ForwardError::NotSent(_)), "{err}");
    }

    #[tokio::test]
    async fn no_answer_once_connected_is_unknown() {
        let (addr, read) = silent_listener().await;
        let err = forward(&client(5_000), format!("http://{addr}"), 300).await;
        assert!(matches!(err, ForwardError::Unknown(_)), "{err}");
        assert!(
            read.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "the request left"
        );
    }
}
