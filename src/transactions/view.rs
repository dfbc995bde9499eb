//! A transaction as the client API shows it.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{
    AccountId, ClientId, Currency, GatewayRef, ReleaseReason, SwitchName, TransactionId, TxKind,
    TxStatus, rfc3339_ms,
};
use crate::ledger::{AttemptOutcome, AttemptRecord, TransactionRecord};

/// A transaction as the API shows it (docs/design.md, "Reading a
/// transaction"): the body of `GET /v1/transactions/{id}`, of a committed or
/// pending `POST`, and what a replay gets. Its schema in the OpenAPI
/// document is derived from this struct: a field added here is documented.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    as = Transaction,
    description = "A transaction as the ledger has it. `accountId` for debit and credit, `from` and `to` for transfers."
)]
pub struct TransactionView {
    pub transaction_id: TransactionId,
    /// The client that sent it (the token's subject). Ids are per client:
    /// two clients may each have a transaction with the same
    /// `transactionId`.
    #[schema(value_type = String)]
    pub client_id: ClientId,
    /// The gateway's reference for the transaction, unique across clients:
    /// what switches know it by (their `Idempotency-Key`). Quote it to a
    /// switch's operator.
    #[schema(value_type = String)]
    pub gateway_ref: GatewayRef,
    pub status: TxStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<ReleaseReason>,
    #[serde(rename = "type")]
    pub kind: TxKind,
    /// Minor units.
    #[schema(value_type = i64, minimum = 1)]
    pub amount: i64,
    pub currency: Currency,
    /// The account of a debit or credit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account_id: Option<AccountId>,
    /// A transfer's source.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub from: Option<AccountId>,
    /// A transfer's destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub to: Option<AccountId>,
    /// The switch that decided it (or was last tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<String>)]
    pub switch: Option<SwitchName>,
    /// The switch's reference for an approved transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub switch_reference: Option<String>,
    /// Switches tried.
    pub attempts: u32,
    /// Times the switch was asked for an unknown outcome; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    pub requeries: Option<u32>,
    /// The last forwarding error, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_error: Option<String>,
    /// Free-form client data as sent (an object).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// RFC 3339, milliseconds, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// RFC 3339, milliseconds, UTC.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Each switch tried, in order: only in `GET /v1/transactions/{id}`
    /// (not in the stored answers of `POST`, nor in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub attempt_log: Option<Vec<AttemptView>>,
}

impl TransactionView {
    /// The transaction with its `attemptLog`: how `GET
    /// /v1/transactions/{id}` shows it.
    pub fn with_attempts(r: &TransactionRecord, attempts: &[AttemptRecord]) -> Self {
        Self {
            attempt_log: Some(attempts.iter().map(AttemptView::new).collect()),
            ..Self::from(r)
        }
    }
}

impl From<&TransactionRecord> for TransactionView {
    fn from(r: &TransactionRecord) -> Self {
        let (account_id, from, to) = match (&r.source, &r.destination) {
            (Some(from), Some(to)) => (None, Some(from.clone()), Some(to.clone())),
            (Some(account), None) | (None, Some(account)) => (Some(account.clone()), None, None),
            (None, None) => (None, None, None),
        };
        Self {
            transaction_id: r.id.clone(),
            client_id: r.client.clone(),
            gateway_ref: r.gateway_ref.clone(),
            status: r.status,
            reason: r.reason,
            kind: r.kind,
            amount: r.amount.minor_units(),
            currency: r.currency.clone(),
            account_id,
            from,
            to,
            switch: r.switch.clone(),
            switch_reference: r.switch_reference.clone(),
            attempts: r.attempts,
            requeries: (r.requeries > 0).then_some(r.requeries),
            last_error: r.last_error.clone(),
            metadata: r.metadata.clone(),
            created_at: rfc3339_ms(r.created_at_ms),
            updated_at: rfc3339_ms(r.updated_at_ms),
            attempt_log: None,
        }
    }
}

/// The short 202 body when the transaction was still being written at the
/// deadline: only its id and `pending`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    as = TransactionPending,
    description = "The short 202 body when the transaction was still being written at the deadline."
)]
pub struct PendingView {
    pub transaction_id: TransactionId,
    /// Always `pending`.
    #[schema(inline)]
    pub status: Pending,
}

/// The one status of the short 202 body.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    Pending,
}

/// A transaction as the API shows it, as stored with a finished one.
pub fn transaction_json(r: &TransactionRecord) -> serde_json::Value {
    // A struct of strings, numbers and a JSON value: serializing cannot fail.
    serde_json::to_value(TransactionView::from(r)).unwrap_or_default()
}

/// One attempt as the API shows it: which switch, when it started and
/// finished, and how it ended (`finishedAt`, `outcome` and `error` are
/// absent while it is in flight; `error` says why a forward failed).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Attempt)]
pub struct AttemptView {
    /// 1-based, in the order the switches were tried.
    #[schema(minimum = 1)]
    pub attempt: u32,
    #[schema(value_type = String)]
    pub switch: SwitchName,
    /// RFC 3339, milliseconds, UTC.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// RFC 3339, milliseconds, UTC; absent while in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    pub finished_at: Option<String>,
    /// `approved`, `declined`, `not_sent`, `not_processed` or `unknown`;
    /// absent while in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<String>)]
    pub outcome: Option<&'static str>,
    /// Why a forward failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
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
