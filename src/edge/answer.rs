//! What a transaction's client is told: **the** mapping of a submission's
//! [`Outcome`] to its HTTP answer and to its count, and the response stored
//! with a finished transaction (replayed on a retry), both built from the
//! same [`ApiError`] bodies as every other error.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::domain::{ReleaseReason, TransactionId, TxStatus};
use crate::edge::error::{ApiError, Body, json_response};
use crate::ledger::{Render, StoredResponse, TransactionRecord};
use crate::metrics::{Metrics, TxOutcome};
use crate::transactions::{Outcome, Pending, PendingView, TransactionView, transaction_json};

/// Answers a submitted transaction and counts it (`transactions_total`).
/// Failures of the gateway itself (ledger, deadline, a crashed task) are
/// counted by their status only, as every request is.
pub(crate) fn transaction(
    metrics: &Metrics,
    outcome: Outcome,
    retry_after: Duration,
) -> Result<Response<Body>, ApiError> {
    let (counted, answer) = match outcome {
        Outcome::Committed(record) => (Some(TxOutcome::Committed), Ok(stored_response(&record))),
        Outcome::Declined(record) => (Some(TxOutcome::Declined), Ok(stored_response(&record))),
        Outcome::InsufficientFunds(record) => (
            Some(TxOutcome::InsufficientFunds),
            Ok(stored_response(&record)),
        ),
        Outcome::Failed(record) => (Some(TxOutcome::Failed), Ok(stored_response(&record))),
        Outcome::Pending(id, record) => (
            Some(TxOutcome::Pending),
            Ok(pending_response(&id, record.as_deref())),
        ),
        Outcome::Replayed(stored) => (Some(TxOutcome::Replayed), Ok(replayed(&stored))),
        Outcome::InProgress => (
            Some(TxOutcome::InProgress),
            Err(ApiError::TransactionInProgress { retry_after }),
        ),
        Outcome::Reused => (Some(TxOutcome::Reused), Err(ApiError::TransactionIdReused)),
        Outcome::NoSwitch => (Some(TxOutcome::NoSwitch), Err(ApiError::NoSwitchAvailable)),
        Outcome::Overloaded => (Some(TxOutcome::Overloaded), Err(ApiError::Overloaded)),
        Outcome::Ledger(e) => (None, Err(ApiError::from(e))),
        Outcome::ReserveTimedOut => (None, Err(ApiError::LedgerUnavailable)),
        Outcome::Crashed => (None, Err(ApiError::Internal)),
    };
    if let Some(counted) = counted {
        metrics.count_transaction(counted);
    }
    answer
}

/// The stored answer of a finished transaction (rendered if, unexpectedly,
/// none is stored).
fn stored_response(record: &TransactionRecord) -> Response<Body> {
    let stored = record.response.clone().unwrap_or_else(|| render(record));
    response(&stored)
}

/// A stored answer again, marked as a replay.
fn replayed(stored: &StoredResponse) -> Response<Body> {
    let mut resp = response(stored);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

fn response(stored: &StoredResponse) -> Response<Body> {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    json_response(status, &stored.body)
}

/// 202 with `Location`: the outcome is not known yet.
fn pending_response(id: &TransactionId, record: Option<&TransactionRecord>) -> Response<Body> {
    let mut resp = match record {
        Some(r) => json_response(StatusCode::ACCEPTED, &TransactionView::from(r)),
        None => json_response(
            StatusCode::ACCEPTED,
            &PendingView {
                transaction_id: id.clone(),
                status: Pending::Pending,
            },
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/transactions/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The response stored with a finished transaction, replayed on a retry.
/// A plain `fn` so the ledger can store it in the same database transaction.
pub const RENDER: Render = render;

fn render(record: &TransactionRecord) -> StoredResponse {
    let error = |e: ApiError| StoredResponse {
        status: e.status().as_u16(),
        body: serde_json::to_value(e.body()).unwrap_or_default(),
    };
    match record.status {
        TxStatus::Committed => StoredResponse {
            status: StatusCode::CREATED.as_u16(),
            body: transaction_json(record),
        },
        TxStatus::Declined => match record.reason {
            Some(ReleaseReason::InsufficientFunds) => error(ApiError::InsufficientFunds),
            Some(ReleaseReason::DeclinedBySwitch | ReleaseReason::NoSwitchAvailable) | None => {
                error(ApiError::DeclinedBySwitch)
            }
        },
        TxStatus::Failed => error(ApiError::NoSwitchAvailable),
        TxStatus::Reserved | TxStatus::Pending => StoredResponse {
            status: StatusCode::ACCEPTED.as_u16(),
            body: transaction_json(record),
        },
    }
}
