//! The delivery worker: claim, sign, POST, end.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WebhooksConfig};
use crate::domain::rfc3339_ms;
use crate::ledger::{
    AttemptRecord, Delivery, DeliveryEnd, LeaseToken, Ledger, LedgerError, TransactionRecord,
};
use crate::metrics::Metrics;
use crate::transactions::TransactionView;
use crate::webhooks::signature;

/// The header every event is signed in.
pub const SIGNATURE_HEADER: &str = "switchboard-signature";

/// One replica's delivery worker (spawned by `Application::run`).
pub struct Deliverer {
    pub ledger: Ledger,
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Metrics,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// When the backlog was last counted: at most every
    /// [`BACKLOG_EVERY`], as the count reads every pending row's index entry.
    counted: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often the backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// The event as POSTed: `{"id", "type", "createdAt", "data"}`, `data` the
/// transaction as `GET /v1/transactions/{id}` shows it (with its attempts).
pub fn event_body(d: &Delivery, record: &TransactionRecord, attempts: &[AttemptRecord]) -> Vec<u8> {
    let event = serde_json::json!({
        "id": d.event_id(),
        "type": d.event.as_str(),
        "createdAt": rfc3339_ms(d.created_at_ms),
        "data": TransactionView::with_attempts(record, attempts),
    });
    // A map of strings and a JSON value: serializing cannot fail.
    serde_json::to_vec(&event).unwrap_or_default()
}

/// The wait before attempt `done + 1`, ms: `retry_base_ms · 2^(done−1)`,
/// capped at `retry_max_ms`, with jitter (a uniform draw from its upper
/// half, so replicas retrying a recovered receiver spread out).
pub(super) fn backoff_ms(cfg: &WebhooksConfig, done: u32) -> u64 {
    let exp = cfg
        .retry_base_ms
        .saturating_mul(1u64 << done.saturating_sub(1).min(40));
    let cap = exp.min(cfg.retry_max_ms).max(1);
    cap / 2 + rand::random_range(0..=cap - cap / 2)
}

impl Deliverer {
    pub fn new(ledger: Ledger, config: Arc<ArcSwap<Config>>, metrics: Metrics) -> Self {
        let cfg = config.load().webhooks.clone();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout()));
        http.set_nodelay(true);
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        Self {
            ledger,
            config,
            metrics,
            client,
            counted: std::sync::Mutex::new(None),
        }
    }

    /// Claims due deliveries every `webhooks.interval_ms` (at once again
    /// while a claim comes back full) until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let cfg = self.config.load().webhooks.clone();
            let full = match self.pass().await {
                Ok(n) => n >= cfg.batch_max as usize,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook delivery pass failed; retrying next interval");
                    false
                }
            };
            if full && !shutdown.is_cancelled() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(cfg.interval()) => {}
            }
        }
    }

    /// One claim and its attempts; returns how many were claimed.
    pub async fn pass(&self) -> Result<usize, LedgerError> {
        let cfg = self.config.load().webhooks.clone();
        let token = LeaseToken::new();
        let claimed = self
            .ledger
            .claim_deliveries(cfg.lease_ms as i64, cfg.batch_max, &token)
            .await?;
        let n = claimed.len();
        let (token, cfg_ref) = (&token, &cfg);
        futures_util::stream::iter(claimed)
            .for_each_concurrent(cfg.batch_max as usize, |d| async move {
                if let Err(e) = self.deliver(&d, token, cfg_ref).await {
                    // Its lease runs out and it is claimed again.
                    tracing::warn!(delivery = %d.id, error = %e, "webhook delivery not ended; will retry");
                }
            })
            .await;
        let due = {
            let mut last = self.counted.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            match self.ledger.delivery_backlog().await {
                Ok(backlog) => self.metrics.webhook_backlog.set(backlog),
                Err(e) => tracing::debug!(error = %e, "could not count the webhook backlog"),
            }
        }
        Ok(n)
    }

    async fn deliver(
        &self,
        d: &Delivery,
        token: &LeaseToken,
        cfg: &WebhooksConfig,
    ) -> Result<(), LedgerError> {
        let end = match self.attempt(d, cfg).await {
            Ok(()) => DeliveryEnd::Delivered,
            Err(Attempt::Final(error)) => DeliveryEnd::Failed { error },
            Err(Attempt::Again(error)) => {
                let done = d.attempts.saturating_add(1);
                let after_ms = backoff_ms(cfg, done);
                let start = d.window_start_ms();
                let next = self.ledger.now_ms().saturating_add(after_ms as i64);
                if done >= cfg.attempts_max || next > start.saturating_add(cfg.horizon_ms as i64) {
                    DeliveryEnd::Failed { error }
                } else {
                    DeliveryEnd::Retry {
                        after_ms: after_ms as i64,
                        error,
                    }
                }
            }
        };
        let outcome = match (&end, self.ledger.end_delivery(&d.id, token, &end).await?) {
            (_, false) => "lease_lost",
            (DeliveryEnd::Delivered, true) => "delivered",
            (DeliveryEnd::Retry { .. }, true) => "retry",
            (DeliveryEnd::Failed { .. }, true) => "failed",
        };
        self.metrics
            .webhook_deliveries
            .with_label_values(&[outcome])
            .inc();
        match &end {
            DeliveryEnd::Delivered => {
                tracing::debug!(delivery = %d.id, event = d.event.as_str(), "webhook delivered")
            }
            DeliveryEnd::Retry { after_ms, error } => {
                tracing::info!(delivery = %d.id, attempts = d.attempts + 1, after_ms, error, "webhook delivery will be retried")
            }
            DeliveryEnd::Failed { error } => {
                tracing::warn!(delivery = %d.id, attempts = d.attempts + 1, error, "webhook delivery failed")
            }
        }
        Ok(())
    }

    /// One POST of the event to its webhook's registered URL.
    async fn attempt(&self, d: &Delivery, cfg: &WebhooksConfig) -> Result<(), Attempt> {
        let ledger = |e: LedgerError| Attempt::Again(format!("ledger: {e}"));
        let Some(hook) = self.ledger.webhook(&d.webhook_id).await.map_err(ledger)? else {
            return Err(Attempt::Final("the webhook does not exist".into()));
        };
        if hook.deleted {
            return Err(Attempt::Final("the webhook was deleted".into()));
        }
        if hook.url.starts_with("http://") && !cfg.allow_http {
            return Err(Attempt::Final(
                "http:// endpoint while webhooks.allow_http is off".into(),
            ));
        }
        let Some(record) = self
            .ledger
            .transaction_by_ref(&d.gateway_ref)
            .await
            .map_err(ledger)?
        else {
            return Err(Attempt::Final("the transaction does not exist".into()));
        };
        let attempts = self
            .ledger
            .attempts(&record.gateway_ref)
            .await
            .map_err(ledger)?;
        let body = event_body(d, &record, &attempts);
        let t = self.ledger.now_ms() / 1000;
        let request = http::Request::post(hook.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "switchboard-webhooks")
            .header(SIGNATURE_HEADER, signature(&hook.secret, t, &body))
            .header("switchboard-event-id", d.event_id())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Attempt::Final(format!("bad request: {e}")))?;
        let limit = cfg.response_bytes_max;
        let sent = tokio::time::timeout(cfg.timeout(), async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let status = resp.status();
            // The answer is read (bounded) only so the connection can be
            // reused; what it says does not matter.
            let _ = Limited::new(resp.into_body(), limit).collect().await;
            Ok::<_, String>(status)
        })
        .await;
        match sent {
            Err(_) => Err(Attempt::Again(format!(
                "no answer within {} ms",
                cfg.timeout_ms
            ))),
            Ok(Err(e)) => Err(Attempt::Again(e)),
            Ok(Ok(status)) if status.is_success() => Ok(()),
            Ok(Ok(status)) => Err(Attempt::Again(format!("answered {}", status.as_u16()))),
        }
    }
}

/// Why an attempt did not deliver.
enum Attempt {
    /// Worth another try, later.
    Again(String),
    /// Never deliverable (webhook deleted, …): failed at once.
    Final(String),
}
