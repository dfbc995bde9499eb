//! Talking to upstream switches: the pooled HTTP(S) client and the answers
//! of the switch protocol (docs/design.md, "The switch protocol").
//!
//! **Invariant:** a [`ForwardError::NotSent`] is returned only when no byte of
//! the request can have reached the switch (the connection was never
//! established). Everything after that is [`ForwardError::Unknown`]: the
//! caller must ask the switch before sending the transaction anywhere else.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use crate::config::{ForwardingConfig, SwitchConfig};
use crate::domain::SwitchName;

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
    /// 404 on a requery: the switch never received it; safe to try elsewhere.
    NotFound,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// The connection was never established: nothing was sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the switch; its outcome is unknown.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

#[derive(Debug, Deserialize)]
struct WireAnswer {
    status: String,
    reference: Option<String>,
    reason: Option<String>,
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
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Keeps no idle connections: every probe opens a fresh one, so a probe
    /// tests what a new forward would meet.
    probe_client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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

    /// `POST /transactions` with the transaction as JSON, answered within `timeout`.
    pub async fn forward(
        &self,
        switch: &Switch,
        transaction_id: &str,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(switch.uri("/transactions")?)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", transaction_id)
            .header("x-request-id", request_id)
            .body(Full::new(payload))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        self.exchange(req, timeout).await
    }

    /// `GET /transactions/{id}`: what happened to a transaction we may have sent.
    pub async fn query(
        &self,
        switch: &Switch,
        transaction_id: &str,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(switch.uri(&format!("/transactions/{transaction_id}"))?)
            .header("x-request-id", request_id)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ForwardError::NotSent(e.to_string()))?;
        // A requery changes nothing on the switch, so "not sent" and "unknown"
        // both just mean "no answer" to the caller.
        self.exchange(req, timeout).await
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
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, ForwardError> {
        let is_get = req.method() == Method::GET;
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
            interpret(status, &body, is_get)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            // The connector's own connect timeout is shorter and reports
            // NotSent; reaching this one means the request may have left.
            Err(_) => Err(ForwardError::Unknown(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

fn interpret(status: StatusCode, body: &[u8], is_get: bool) -> Result<Answer, ForwardError> {
    let wire: Option<WireAnswer> = serde_json::from_slice(body).ok();
    let unknown = |what: &str| {
        ForwardError::Unknown(format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    };
    match (status, wire) {
        (StatusCode::OK, Some(w)) if w.status == "approved" => Ok(Answer::Approved {
            reference: w.reference.unwrap_or_default(),
        }),
        (StatusCode::OK, Some(w)) if w.status == "declined" => Ok(Answer::Declined {
            reason: w.reason.unwrap_or_else(|| "declined".into()),
        }),
        (StatusCode::SERVICE_UNAVAILABLE, Some(w)) if w.status == "not_processed" && !is_get => {
            Ok(Answer::NotProcessed)
        }
        (StatusCode::NOT_FOUND, _) if is_get => Ok(Answer::NotFound),
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

    #[test]
    fn answers_are_read_per_protocol() {
        let ok = |b: &str| interpret(StatusCode::OK, b.as_bytes(), false);
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
        assert_eq!(
            interpret(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"status":"not_processed"}"#,
                false
            )
            .unwrap(),
            Answer::NotProcessed
        );
        // Any other 5xx is an unknown outcome, never a safe retry.
        assert!(matches!(
            interpret(StatusCode::INTERNAL_SERVER_ERROR, b"{}", false),
            Err(ForwardError::Unknown(_))
        ));
        assert!(matches!(
            interpret(StatusCode::SERVICE_UNAVAILABLE, b"busy", false),
            Err(ForwardError::Unknown(_))
        ));
        assert_eq!(
            interpret(StatusCode::NOT_FOUND, b"", true).unwrap(),
            Answer::NotFound
        );
    }
}
