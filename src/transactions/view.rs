//! A transaction as the client API shows it.

use serde::Serialize;

use crate::domain::{ReleaseReason, SwitchName, rfc3339_ms};
use crate::ledger::{AttemptOutcome, AttemptRecord, TransactionRecord};

/// A transaction as the API shows it (docs/design.md, "Reading a transaction").
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
    let mut optional = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            obj.insert(key.into(), serde_json::json!(v));
        }
    };
    optional("reason", r.reason.map(ReleaseReason::as_str));
    optional("switch", r.switch.as_ref().map(SwitchName::as_str));
    optional("switchReference", r.switch_reference.as_deref());
    optional("lastError", r.last_error.as_deref());
    if r.requeries > 0 {
        obj.insert("requeries".into(), serde_json::json!(r.requeries));
    }
    if let Some(m) = &r.metadata {
        obj.insert("metadata".into(), m.clone());
    }
    body
}

/// A transaction with `attemptLog`, each switch tried, in order: how
/// `GET /v1/transactions/{id}` shows it.
pub fn transaction_with_attempts_json(
    r: &TransactionRecord,
    attempts: &[AttemptRecord],
) -> serde_json::Value {
    let mut body = transaction_json(r);
    let log: Vec<AttemptView> = attempts.iter().map(AttemptView::new).collect();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("attemptLog".into(), serde_json::json!(log));
    }
    body
}

/// One attempt as the API shows it: which switch, when it started and
/// finished, and how it ended (`finishedAt`, `outcome` and `error` are
/// absent while it is in flight; `error` says why a forward failed).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt: u32,
    pub switch: SwitchName,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AttemptView {
    pub fn new(a: &AttemptRecord) -> Self {
        Self {
            attempt: a.attempt_no,
            switch: a.switch.clone(),
            started_at: rfc3339_ms(a.started_at_ms),
            finished_at: a.finished_at_ms.map(rfc3339_ms),
            outcome: a.outcome.map(AttemptOutcome::as_str),
            error: a.error.clone(),
        }
    }
}
