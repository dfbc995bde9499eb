//! The answers a transaction gets over HTTP: the response stored with a
//! finished transaction (replayed on a retry), built from the same
//! [`ApiError`] bodies as every other error.

use http::StatusCode;

use crate::domain::TxStatus;
use crate::edge::error::ApiError;
use crate::ledger::{Render, StoredResponse, TransactionRecord};
use crate::transactions::view::transaction_json;

/// The response stored with a finished record (rendered if, unexpectedly, absent).
pub fn stored(record: &TransactionRecord) -> StoredResponse {
    record.response.clone().unwrap_or_else(|| render(record))
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
