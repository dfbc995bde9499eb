//! Talking to upstream switches: the pooled HTTP(S) client, the answers of the
//! switch protocol, and the round-robin balancer.
//!
//! **Invariant:** a [`ForwardError::NotSent`] is returned only when no byte of
//! the request can have reached the switch (the connection was never
//! established). Everything after that is [`ForwardError::Unknown`]: the
//! caller must ask the switch before sending the transaction anywhere else.

use std::sync::{Arc, Mutex};
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
#[derive(Debug)]
pub struct Switch {
    pub name: String,
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
    attempt_timeout: Duration,
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
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_idle_per_switch_max)
            // A transaction is never re-sent by the pool: retries are ours to decide.
            .retry_canceled_requests(false)
            .build(https);
        Self {
            client,
            attempt_timeout: cfg.attempt_timeout(),
            response_bytes_max: cfg.response_bytes_max,
        }
    }

    /// `POST /transactions` with the transaction as JSON.
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
        self.exchange(req, timeout.min(self.attempt_timeout)).await
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
        self.exchange(req, timeout.min(self.attempt_timeout)).await
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

/// Smooth weighted round-robin (as in nginx): over a window of
/// `sum(weights)` picks each switch is chosen `weight` times, interleaved.
pub struct Balancer {
    state: Mutex<Vec<(Arc<Switch>, i64)>>,
}

impl Balancer {
    pub fn new(switches: Vec<Arc<Switch>>) -> Self {
        Self {
            state: Mutex::new(switches.into_iter().map(|s| (s, 0)).collect()),
        }
    }

    pub fn switches(&self) -> Vec<Arc<Switch>> {
        self.lock().iter().map(|(s, _)| s.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The next switch, skipping those `eligible` rejects (already tried, down).
    pub fn pick(&self, eligible: impl Fn(&Switch) -> bool) -> Option<Arc<Switch>> {
        let mut state = self.lock();
        let total: i64 = state
            .iter()
            .filter(|(s, _)| eligible(s))
            .map(|(s, _)| i64::from(s.weight))
            .sum();
        for (switch, current) in state.iter_mut() {
            if eligible(switch) {
                *current += i64::from(switch.weight);
            }
        }
        // Highest current weight wins; ties go to the earlier switch.
        let winner = state
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| eligible(s))
            .max_by(|(ia, (_, a)), (ib, (_, b))| a.cmp(b).then(ib.cmp(ia)))
            .map(|(i, _)| i)?;
        state[winner].1 -= total;
        Some(state[winner].0.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<Switch>, i64)>> {
        // A panic while holding this lock cannot leave the weights invalid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sw(name: &str, weight: u32) -> Arc<Switch> {
        Arc::new(Switch {
            name: name.into(),
            base: "http://127.0.0.1:1".parse().unwrap(),
            weight,
        })
    }

    #[test]
    fn equal_weights_rotate() {
        let b = Balancer::new(vec![sw("a", 1), sw("b", 1), sw("c", 1)]);
        let names: Vec<_> = (0..6)
            .map(|_| b.pick(|_| true).unwrap().name.clone())
            .collect();
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn weights_are_smooth() {
        let b = Balancer::new(vec![sw("a", 5), sw("b", 1), sw("c", 1)]);
        let names: String = (0..7)
            .map(|_| b.pick(|_| true).unwrap().name.clone())
            .collect();
        assert_eq!(names, "aabacaa");
    }

    #[test]
    fn ineligible_switches_are_skipped() {
        let b = Balancer::new(vec![sw("a", 1), sw("b", 1)]);
        for _ in 0..4 {
            assert_eq!(b.pick(|s| s.name != "a").unwrap().name, "b");
        }
        assert!(b.pick(|_| false).is_none());
    }

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
