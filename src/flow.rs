//! The one-phase-commit flow of one transaction: reserve, forward, then
//! commit, release or leave pending.
//!
//! **Invariant:** an attempt is recorded in the ledger before its request
//! leaves the gateway, so a transaction with no recorded attempt was never
//! sent, and the reconciler always knows which switch to ask.
//!
//! **Invariant:** a transaction moves to another switch only when the last
//! one provably did not process it: the connection was never made, it said
//! `503 not_processed`, or a requery answered 404.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::time::Instant;

use crate::domain::{Movement, TransactionId, TransactionRequest, TxStatus};
use crate::error::ApiError;
use crate::ledger::{Ledger, Render, StoredResponse, TransactionRecord};
use crate::metrics::Metrics;
use crate::switch::{Answer, ForwardError, ForwardResult, SwitchClient, SwitchState, Switches};

/// First pause between requeries of an unknown outcome; doubles up to the max.
const REQUERY_BACKOFF_START: Duration = Duration::from_millis(50);
const REQUERY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Kept back from the request deadline for the final ledger write and the answer.
const DEADLINE_RESERVE: Duration = Duration::from_millis(250);

/// How a posted transaction ended, for the HTTP layer.
pub enum Outcome {
    /// A final answer (committed, declined, failed), stored for replays.
    Final(StoredResponse),
    /// The outcome is not known yet: 202 with `Location`.
    Pending(Box<TransactionRecord>),
}

pub struct Forwarder {
    pub ledger: Ledger,
    pub switches: Arc<Switches>,
    pub client: SwitchClient,
    pub metrics: Metrics,
    pub attempts_max: u32,
    /// One attempt or requery on a switch, at most.
    pub attempt_timeout: Duration,
}

impl Forwarder {
    /// Sends a freshly reserved transaction to switches until one decides it,
    /// none is left, or the deadline nears.
    pub async fn run(
        &self,
        req: &TransactionRequest,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Outcome, ApiError> {
        let id = &req.id;
        let payload = Bytes::from(switch_payload(req).to_string());
        let budget_end = deadline.checked_sub(DEADLINE_RESERVE).unwrap_or(deadline);
        let mut tried: Vec<Arc<SwitchState>> = Vec::new();

        while (tried.len() as u32) < self.attempts_max {
            let Some(switch) = self
                .switches
                .pick(|s| !tried.iter().any(|t| t.name() == s.name()))
            else {
                break;
            };
            let remaining = budget_end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let attempt_no = self.ledger.record_attempt(id, switch.name()).await?;
            let _in_flight = switch.begin();
            let started = Instant::now();
            let result = self
                .client
                .forward(
                    &switch.switch,
                    id.as_str(),
                    request_id,
                    payload.clone(),
                    remaining.min(self.attempt_timeout),
                )
                .await;
            self.metrics
                .forward_duration
                .with_label_values(&[switch.name()])
                .observe(started.elapsed().as_secs_f64());

            let answer = match result {
                Ok(answer) => answer,
                Err(ForwardError::NotSent(reason)) => {
                    self.note(id, &switch, attempt_no, "not_sent", Some(&reason))
                        .await?;
                    tracing::warn!(switch = switch.name(), %reason, "switch unreachable; trying another");
                    self.retry("not_sent");
                    tried.push(switch);
                    continue;
                }
                Err(ForwardError::Unknown(reason)) => {
                    self.note(id, &switch, attempt_no, "unknown", Some(&reason))
                        .await?;
                    tracing::warn!(switch = switch.name(), %reason, "outcome unknown; requerying");
                    match self.requery(&switch, req, request_id, budget_end).await {
                        Some(Answer::NotFound) => {
                            // Never processed: as safe as a refused connection.
                            self.retry("not_found");
                            tried.push(switch);
                            continue;
                        }
                        Some(answer) => answer,
                        None => {
                            let record = self.ledger.mark_pending(id, &reason).await?;
                            return Ok(Outcome::Pending(Box::new(record)));
                        }
                    }
                }
            };
            return match answer {
                Answer::Approved { reference } => {
                    self.note(id, &switch, attempt_no, "approved", None).await?;
                    let record = self
                        .ledger
                        .commit(id, switch.name(), &reference, render)
                        .await?;
                    Ok(Outcome::Final(stored(&record)))
                }
                Answer::Declined { reason } => {
                    self.note(id, &switch, attempt_no, "declined", Some(&reason))
                        .await?;
                    let record = self
                        .ledger
                        .release(id, TxStatus::Declined, "declined_by_switch", render)
                        .await?;
                    Ok(Outcome::Final(stored(&record)))
                }
                Answer::NotProcessed | Answer::NotFound => {
                    self.note(id, &switch, attempt_no, "not_processed", None)
                        .await?;
                    self.retry("not_processed");
                    tried.push(switch);
                    continue;
                }
            };
        }

        // Every switch tried said, provably, that it did not process it.
        let record = self
            .ledger
            .release(id, TxStatus::Failed, "no_switch_available", render)
            .await?;
        Ok(Outcome::Final(stored(&record)))
    }

    fn retry(&self, reason: &str) {
        self.metrics.retries.with_label_values(&[reason]).inc();
    }

    /// Asks `switch` what became of the transaction, with backoff, until it
    /// answers or the budget runs out (`None`).
    async fn requery(
        &self,
        switch: &SwitchState,
        req: &TransactionRequest,
        request_id: &str,
        budget_end: Instant,
    ) -> Option<Answer> {
        let mut backoff = REQUERY_BACKOFF_START;
        loop {
            let remaining = budget_end.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return None;
            }
            match self
                .client
                .query(
                    &switch.switch,
                    req.id.as_str(),
                    request_id,
                    remaining.min(self.attempt_timeout),
                )
                .await
            {
                Ok(answer) => {
                    self.metrics
                        .requeries
                        .with_label_values(&[switch.name(), "answered"])
                        .inc();
                    return Some(answer);
                }
                Err(e) => {
                    self.metrics
                        .requeries
                        .with_label_values(&[switch.name(), "failed"])
                        .inc();
                    tracing::debug!(switch = switch.name(), error = %e, "requery failed");
                }
            }
            let pause = backoff.min(budget_end.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(REQUERY_BACKOFF_MAX);
        }
    }

    /// Records how an attempt ended, in the ledger and the metrics.
    async fn note(
        &self,
        id: &TransactionId,
        switch: &SwitchState,
        attempt_no: u32,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), ApiError> {
        self.metrics
            .forwards
            .with_label_values(&[switch.name(), outcome])
            .inc();
        switch.record_forward(match outcome {
            "approved" => ForwardResult::Approved,
            "declined" => ForwardResult::Declined,
            _ => ForwardResult::Failed,
        });
        self.ledger
            .finish_attempt(id, attempt_no, outcome, error)
            .await?;
        Ok(())
    }
}

/// The response stored with a finished record (rendered if, unexpectedly, absent).
pub fn stored(record: &TransactionRecord) -> StoredResponse {
    record.response.clone().unwrap_or_else(|| render(record))
}

/// The body sent to a switch: the transaction as the client described it.
pub fn switch_payload(req: &TransactionRequest) -> serde_json::Value {
    let mut body = serde_json::json!({
        "transactionId": req.id,
        "type": req.movement.kind().as_str(),
        "amount": req.amount,
        "currency": req.currency,
    });
    match &req.movement {
        Movement::Debit { account } | Movement::Credit { account } => {
            body["accountId"] = serde_json::json!(account);
        }
        Movement::Transfer { from, to } => {
            body["from"] = serde_json::json!(from);
            body["to"] = serde_json::json!(to);
        }
    }
    if let Some(m) = &req.metadata {
        body["metadata"] = m.clone();
    }
    body
}

/// The response stored with a finished transaction, replayed on a retry.
/// A plain `fn` so the ledger can store it in the same database transaction.
pub const RENDER: Render = render;

pub fn render(record: &TransactionRecord) -> StoredResponse {
    let error = |e: ApiError| StoredResponse {
        status: e.status().as_u16(),
        body: e.body(),
    };
    match (record.status, record.reason.as_deref()) {
        (TxStatus::Committed, _) => StoredResponse {
            status: StatusCode::CREATED.as_u16(),
            body: transaction_json(record),
        },
        (TxStatus::Declined, Some("insufficient_funds")) => error(ApiError::InsufficientFunds),
        (TxStatus::Declined, _) => error(ApiError::DeclinedBySwitch),
        (TxStatus::Failed, _) => error(ApiError::NoSwitchAvailable),
        (TxStatus::Reserved | TxStatus::Pending, _) => StoredResponse {
            status: StatusCode::ACCEPTED.as_u16(),
            body: transaction_json(record),
        },
    }
}

/// A transaction as the API shows it (DESIGN.md, "Client API").
pub fn transaction_json(r: &TransactionRecord) -> serde_json::Value {
    let mut body = serde_json::json!({
        "transactionId": r.id,
        "status": r.status,
        "type": r.kind,
        "amount": r.amount,
        "currency": r.currency,
        "attempts": r.attempts,
        "createdAt": rfc3339_ms(r.created_at_ms),
        "updatedAt": rfc3339_ms(r.updated_at_ms),
    });
    let obj = body.as_object_mut().expect("a JSON object literal");
    match (&r.source, &r.destination) {
        (Some(from), Some(to)) => {
            obj.insert("from".into(), serde_json::json!(from));
            obj.insert("to".into(), serde_json::json!(to));
        }
        (Some(account), None) | (None, Some(account)) => {
            obj.insert("accountId".into(), serde_json::json!(account));
        }
        (None, None) => {}
    }
    let mut optional = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            obj.insert(key.into(), serde_json::json!(v));
        }
    };
    optional("reason", &r.reason);
    optional("switch", &r.switch);
    optional("switchReference", &r.switch_reference);
    optional("lastError", &r.last_error);
    if r.requeries > 0 {
        obj.insert("requeries".into(), serde_json::json!(r.requeries));
    }
    if let Some(m) = &r.metadata {
        obj.insert("metadata".into(), m.clone());
    }
    body
}

pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
