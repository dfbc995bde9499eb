//! A transaction as the client API shows it.

use crate::domain::{ReleaseReason, SwitchName, rfc3339_ms};
use crate::ledger::TransactionRecord;

/// A transaction as the API shows it (docs/design.md, "Reading a transaction").
pub fn transaction_json(r: &TransactionRecord) -> serde_json::Value {
    let mut body = serde_json::json!({
        "transactionId": r.id,
        "clientId": r.client,
        "gatewayRef": r.gateway_ref,
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
