//! What both backends share: row types, checks, the retry loop, and the body
//! of every operation.
//!
//! The operations are written once, in [`impl_ledger_ops!`], and expanded for
//! each backend with that backend's concrete connection type. (A generic
//! `impl<DB: Database>` would need a higher-ranked `Executor` bound plus
//! encode and decode bounds for every bound type; the expanded code is plain
//! concrete sqlx, and the SQL still lives in one place.)
//! SQL placeholders are `$N` on both: sqlx binds `$N` by number on SQLite too.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Account, AccountKind, AttemptRecord, LedgerError, StoredResponse, TransactionRecord};
use crate::domain::{
    AccountId, ClientId, Currency, TransactionId, TransactionRequest, TxKind, TxStatus,
};

/// Why one try of a database transaction ended early.
#[derive(Debug)]
pub(super) enum Fail {
    /// The database (or pool) said no: maybe a conflict worth retrying.
    Db(sqlx::Error),
    /// A ledger answer: never retried.
    Ledger(LedgerError),
    /// Another writer got there first in a way the database does not report
    /// as a conflict (an id inserted since the batch read): rerun, as for one.
    Conflict(&'static str),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<LedgerError> for Fail {
    fn from(e: LedgerError) -> Self {
        Fail::Ledger(e)
    }
}

/// Runs one database transaction, again from the start when the database
/// aborted it for a conflict, at most `retries_max` more times.
pub(super) async fn with_retries<T, F, Fut>(
    op: &'static str,
    retries_max: u32,
    is_conflict: fn(&sqlx::Error) -> bool,
    mut once: F,
) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let mut retries = 0u32;
    loop {
        let why = match once().await {
            Ok(v) => return Ok(v),
            Err(Fail::Ledger(e)) => return Err(e),
            Err(Fail::Db(e)) if !is_conflict(&e) => return Err(unavailable(op, e)),
            Err(Fail::Db(e)) => e.to_string(),
            Err(Fail::Conflict(why)) => why.to_owned(),
        };
        if retries >= retries_max {
            tracing::warn!(op, retries, why, "ledger: conflict retries exhausted");
            return Err(LedgerError::Unavailable(format!(
                "{op}: database conflict persisted after {retries} retries"
            )));
        }
        retries += 1;
        tracing::debug!(op, retries, why, "ledger: conflict, retrying");
        tokio::time::sleep(backoff(retries)).await;
    }
}

/// Jittered exponential backoff: up to 2 ms, 4 ms, … at most 64 ms, so
/// retrying conflicting transactions spread out instead of colliding again.
fn backoff(retry: u32) -> Duration {
    let cap_us = 1_000u64 << retry.clamp(1, 6);
    Duration::from_micros(rand::random_range(cap_us / 4..=cap_us))
}

pub(super) fn unavailable(op: &'static str, e: sqlx::Error) -> LedgerError {
    match e {
        sqlx::Error::PoolTimedOut => {
            LedgerError::Unavailable(format!("{op}: timed out waiting for a database connection"))
        }
        sqlx::Error::PoolClosed => LedgerError::Unavailable(format!("{op}: ledger is closed")),
        e => {
            tracing::error!(op, error = %e, "ledger: database error");
            LedgerError::Unavailable(format!("{op}: {e}"))
        }
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Settlement and equity ids belong to the system; a customer account must not
/// take one, or a later commit would find a customer where it expects
/// settlement.
pub(super) fn is_system_id(id: &AccountId) -> bool {
    id.as_str().starts_with("settlement:") || id.as_str().starts_with("equity:")
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> LedgerError {
    LedgerError::InvalidState(format!("stored {what} is malformed: {detail}"))
}

/// The columns of `transactions` a [`TransactionRecord`] is read from.
macro_rules! tx_columns {
    () => {
        "id, client, kind, source, destination, amount, currency, metadata, fingerprint, \
         status, reason, switch, switch_reference, attempts, requeries, last_error, \
         response_status, response_body, created_at_ms, updated_at_ms"
    };
}
pub(super) use tx_columns;

macro_rules! account_columns {
    () => {
        "id, owner, currency, kind, balance"
    };
}
pub(super) use account_columns;

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TxRow {
    id: String,
    client: String,
    kind: String,
    source: Option<String>,
    destination: Option<String>,
    amount: i64,
    currency: String,
    metadata: Option<String>,
    fingerprint: String,
    status: String,
    reason: Option<String>,
    switch: Option<String>,
    switch_reference: Option<String>,
    attempts: i64,
    requeries: i64,
    last_error: Option<String>,
    response_status: Option<i64>,
    response_body: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl TxRow {
    pub(super) fn into_record(self) -> Result<TransactionRecord, LedgerError> {
        let what = "transaction";
        let account = |raw: Option<String>| {
            raw.map(|a| AccountId::parse(&a).map_err(|e| corrupt(what, e)))
                .transpose()
        };
        let json = |raw: Option<String>| {
            raw.map(|m| serde_json::from_str(&m).map_err(|e| corrupt(what, e)))
                .transpose()
        };
        let count = |n: i64| u32::try_from(n).map_err(|e| corrupt(what, e));
        let response = match (self.response_status, json(self.response_body)?) {
            (Some(status), Some(body)) => Some(StoredResponse {
                status: u16::try_from(status).map_err(|e| corrupt(what, e))?,
                body,
            }),
            _ => None,
        };
        Ok(TransactionRecord {
            id: TransactionId::parse(&self.id).map_err(|e| corrupt(what, e))?,
            client: self.client,
            kind: TxKind::from_db(&self.kind).ok_or_else(|| corrupt(what, &self.kind))?,
            source: account(self.source)?,
            destination: account(self.destination)?,
            amount: self.amount,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt(what, e))?,
            metadata: json(self.metadata)?,
            fingerprint: self.fingerprint,
            status: TxStatus::from_db(&self.status).ok_or_else(|| corrupt(what, &self.status))?,
            reason: self.reason,
            switch: self.switch,
            switch_reference: self.switch_reference,
            attempts: count(self.attempts)?,
            requeries: count(self.requeries)?,
            last_error: self.last_error,
            response,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AccountRow {
    id: String,
    owner: String,
    currency: String,
    kind: String,
    balance: i64,
}

impl AccountRow {
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn balance(&self) -> i64 {
        self.balance
    }

    pub(super) fn is_customer(&self) -> bool {
        self.kind == "customer"
    }

    /// A settlement or equity account in `currency`.
    pub(super) fn is_system_in(&self, currency: &Currency) -> bool {
        self.kind == "settlement" && self.currency == currency.as_str()
    }

    pub(super) fn into_account(self) -> Result<Account, LedgerError> {
        let what = "account";
        Ok(Account {
            id: AccountId::parse(&self.id).map_err(|e| corrupt(what, e))?,
            owner: self.owner,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt(what, e))?,
            kind: match self.kind.as_str() {
                "customer" => AccountKind::Customer,
                "settlement" => AccountKind::Settlement,
                other => return Err(corrupt(what, other)),
            },
            balance: self.balance,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AttemptRow {
    attempt_no: i64,
    switch: String,
    started_at_ms: i64,
    outcome: Option<String>,
    error: Option<String>,
}

impl AttemptRow {
    pub(super) fn into_record(self) -> Result<AttemptRecord, LedgerError> {
        Ok(AttemptRecord {
            attempt_no: u32::try_from(self.attempt_no).map_err(|e| corrupt("attempt", e))?,
            switch: self.switch,
            started_at_ms: self.started_at_ms,
            outcome: self.outcome,
            error: self.error,
        })
    }
}

/// Money may leave this account for `client`: it exists, is a customer
/// account the client owns, in the request's currency. Absent and not owned
/// are the same answer, so a client cannot probe other clients' ids.
pub(super) fn check_owned(
    row: Option<&AccountRow>,
    client: &ClientId,
    currency: &Currency,
) -> Result<(), LedgerError> {
    let row = row.ok_or(LedgerError::AccountNotFound)?;
    if row.kind != "customer" || row.owner != client.as_str() {
        return Err(LedgerError::AccountNotFound);
    }
    check_currency(row, currency)
}

/// Money may arrive in this account: it exists, is a customer account, in the
/// request's currency (any owner). Someone else's account in another
/// currency answers as absent: its currency is not the caller's to learn.
pub(super) fn check_destination(
    row: Option<&AccountRow>,
    client: &ClientId,
    currency: &Currency,
) -> Result<(), LedgerError> {
    let row = row.ok_or(LedgerError::AccountNotFound)?;
    if row.kind != "customer" {
        return Err(LedgerError::AccountNotFound);
    }
    if row.owner != client.as_str() && row.currency != currency.as_str() {
        return Err(LedgerError::AccountNotFound);
    }
    check_currency(row, currency)
}

fn check_currency(row: &AccountRow, currency: &Currency) -> Result<(), LedgerError> {
    if row.currency != currency.as_str() {
        return Err(LedgerError::CurrencyMismatch {
            account: AccountId::parse(&row.id).map_err(|e| corrupt("account", e))?,
            currency: currency.clone(),
        });
    }
    Ok(())
}

/// The row `reserve` inserts, as a record, without reading it back.
pub(super) fn new_record(
    client: &ClientId,
    req: &TransactionRequest,
    status: TxStatus,
    now_ms: i64,
) -> TransactionRecord {
    TransactionRecord {
        id: req.id.clone(),
        client: client.as_str().to_owned(),
        kind: req.movement.kind(),
        source: req.movement.source().cloned(),
        destination: req.movement.destination().cloned(),
        amount: req.amount.minor_units(),
        currency: req.currency.clone(),
        metadata: req.metadata.clone(),
        fingerprint: req.fingerprint(),
        status,
        reason: None,
        switch: None,
        switch_reference: None,
        attempts: 0,
        requeries: 0,
        last_error: None,
        response: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    }
}

/// Every operation, for one backend. The invoking module provides, on
/// `$ledger`: fields `pool` and `retries_max`; `async fn begin_write(&self) ->
/// Result<WriteTx, sqlx::Error>` (a write transaction whose `conn()` is the
/// backend's connection and which has `async fn commit(self)`); and
/// `fn is_conflict(&sqlx::Error) -> bool`. `lock` is the row-lock clause
/// appended to selects that precede a write (empty where the whole database
/// is locked for writing); `claim_lock` is the one for reconciler claims.
macro_rules! impl_ledger_ops {
    (ledger: $ledger:ty, lock: $lock:literal, claim_lock: $claim_lock:literal $(,)?) => {
        impl $ledger {
            /// `SELECT 1`, for `/readyz`.
            pub(super) async fn ping(&self) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map(drop)
                    .map_err(|e| $crate::ledger::sql::unavailable("ping", e))
            }

            pub(super) async fn close(&self) {
                self.pool.close().await;
            }

            pub(super) async fn create_account(
                &self,
                new: &$crate::ledger::NewAccount,
            ) -> Result<$crate::ledger::Account, $crate::ledger::LedgerError> {
                use $crate::ledger::LedgerError;
                if new.opening_balance < 0 {
                    return Err(LedgerError::InvalidState(
                        "opening balance must not be negative".into(),
                    ));
                }
                if $crate::ledger::sql::is_system_id(&new.id) {
                    return Err(LedgerError::AccountExists);
                }
                $crate::ledger::sql::with_retries(
                    "create_account",
                    self.retries_max,
                    Self::is_conflict,
                    move || self.create_account_once(new),
                )
                .await
            }

            async fn create_account_once(
                &self,
                new: &$crate::ledger::NewAccount,
            ) -> Result<$crate::ledger::Account, $crate::ledger::sql::Fail> {
                use $crate::ledger::{Account, AccountKind, LedgerError};
                let now = $crate::ledger::sql::now_ms();
                let equity = $crate::domain::AccountId::equity(&new.currency);
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(
                    "INSERT INTO accounts (id, owner, currency, kind, balance, created_at_ms) \
                     VALUES ($1, $2, $3, 'customer', $4, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(new.id.as_str())
                .bind(new.owner.as_str())
                .bind(new.currency.as_str())
                .bind(new.opening_balance)
                .bind(now)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Err(LedgerError::AccountExists.into());
                }
                if new.opening_balance > 0 {
                    Self::adjust_system_account(
                        tx.conn(),
                        &equity,
                        &new.currency,
                        -new.opening_balance,
                        now,
                    )
                    .await?;
                    // An opening balance has no transaction row: its postings
                    // carry a NULL transaction_id.
                    sqlx::query(
                        "INSERT INTO postings (transaction_id, account_id, amount, created_at_ms) \
                         VALUES (NULL, $1, $2, $5), (NULL, $3, $4, $5)",
                    )
                    .bind(equity.as_str())
                    .bind(-new.opening_balance)
                    .bind(new.id.as_str())
                    .bind(new.opening_balance)
                    .bind(now)
                    .execute(tx.conn())
                    .await?;
                }
                tx.commit().await?;
                Ok(Account {
                    id: new.id.clone(),
                    owner: new.owner.as_str().to_owned(),
                    currency: new.currency.clone(),
                    kind: AccountKind::Customer,
                    balance: new.opening_balance,
                })
            }

            pub(super) async fn account(
                &self,
                id: &$crate::domain::AccountId,
            ) -> Result<Option<$crate::ledger::Account>, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "account",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let row: Option<$crate::ledger::sql::AccountRow> = sqlx::query_as(concat!(
                            "SELECT ",
                            $crate::ledger::sql::account_columns!(),
                            " FROM accounts WHERE id = $1"
                        ))
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                        Ok(row.map(|r| r.into_account()).transpose()?)
                    },
                )
                .await
            }

            pub(super) async fn record_attempt(
                &self,
                id: &$crate::domain::TransactionId,
                switch: &str,
            ) -> Result<u32, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "record_attempt",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let now = $crate::ledger::sql::now_ms();
                        let mut tx = self.begin_write().await?;
                        let attempts: Option<i64> = sqlx::query_scalar(
                            "UPDATE transactions \
                             SET attempts = attempts + 1, switch = $2, updated_at_ms = $3 \
                             WHERE id = $1 AND status IN ('reserved', 'pending') \
                             AND (lease_until_ms IS NULL OR lease_until_ms < $3) \
                             RETURNING attempts",
                        )
                        .bind(id.as_str())
                        .bind(switch)
                        .bind(now)
                        .fetch_optional(tx.conn())
                        .await?;
                        let Some(attempt_no) = attempts else {
                            let why = Self::not_in_flight(tx.conn(), id, "record_attempt");
                            return Err(why.await);
                        };
                        sqlx::query(
                            "INSERT INTO attempts \
                             (transaction_id, attempt_no, switch, started_at_ms) \
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(id.as_str())
                        .bind(attempt_no)
                        .bind(switch)
                        .bind(now)
                        .execute(tx.conn())
                        .await?;
                        tx.commit().await?;
                        u32::try_from(attempt_no).map_err(|e| {
                            $crate::ledger::LedgerError::InvalidState(e.to_string()).into()
                        })
                    },
                )
                .await
            }

            pub(super) async fn finish_attempt(
                &self,
                id: &$crate::domain::TransactionId,
                attempt_no: u32,
                outcome: &str,
                error: Option<&str>,
            ) -> Result<(), $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "finish_attempt",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let mut tx = self.begin_write().await?;
                        let changed = sqlx::query(
                            "UPDATE attempts SET finished_at_ms = $3, outcome = $4, error = $5 \
                             WHERE transaction_id = $1 AND attempt_no = $2",
                        )
                        .bind(id.as_str())
                        .bind(i64::from(attempt_no))
                        .bind($crate::ledger::sql::now_ms())
                        .bind(outcome)
                        .bind(error)
                        .execute(tx.conn())
                        .await?
                        .rows_affected();
                        if changed != 1 {
                            return Err($crate::ledger::LedgerError::TransactionNotFound.into());
                        }
                        tx.commit().await?;
                        Ok(())
                    },
                )
                .await
            }

            pub(super) async fn mark_pending(
                &self,
                id: &$crate::domain::TransactionId,
                last_error: &str,
            ) -> Result<$crate::ledger::TransactionRecord, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "mark_pending",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let mut tx = self.begin_write().await?;
                        let row: Option<$crate::ledger::sql::TxRow> = sqlx::query_as(concat!(
                            "UPDATE transactions \
                             SET status = 'pending', last_error = $2, updated_at_ms = $3 \
                             WHERE id = $1 AND status IN ('reserved', 'pending') RETURNING ",
                            $crate::ledger::sql::tx_columns!()
                        ))
                        .bind(id.as_str())
                        .bind(last_error)
                        .bind($crate::ledger::sql::now_ms())
                        .fetch_optional(tx.conn())
                        .await?;
                        let Some(row) = row else {
                            return Err(Self::not_in_flight(tx.conn(), id, "mark_pending").await);
                        };
                        tx.commit().await?;
                        Ok(row.into_record()?)
                    },
                )
                .await
            }

            pub(super) async fn transaction(
                &self,
                id: &$crate::domain::TransactionId,
            ) -> Result<Option<$crate::ledger::TransactionRecord>, $crate::ledger::LedgerError>
            {
                $crate::ledger::sql::with_retries(
                    "transaction",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let row: Option<$crate::ledger::sql::TxRow> = sqlx::query_as(concat!(
                            "SELECT ",
                            $crate::ledger::sql::tx_columns!(),
                            " FROM transactions WHERE id = $1"
                        ))
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                        Ok(row.map(|r| r.into_record()).transpose()?)
                    },
                )
                .await
            }

            pub(super) async fn attempts(
                &self,
                id: &$crate::domain::TransactionId,
            ) -> Result<Vec<$crate::ledger::AttemptRecord>, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "attempts",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let rows: Vec<$crate::ledger::sql::AttemptRow> = sqlx::query_as(
                            "SELECT attempt_no, switch, started_at_ms, outcome, error \
                             FROM attempts WHERE transaction_id = $1 ORDER BY attempt_no",
                        )
                        .bind(id.as_str())
                        .fetch_all(&self.pool)
                        .await?;
                        Ok(rows
                            .into_iter()
                            .map(|r| r.into_record())
                            .collect::<Result<Vec<_>, _>>()?)
                    },
                )
                .await
            }

            pub(super) async fn balance_sum(
                &self,
                currency: &$crate::domain::Currency,
            ) -> Result<i64, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "balance_sum",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        // Postgres sums BIGINT into NUMERIC: cast back.
                        let sum: i64 = sqlx::query_scalar(
                            "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) \
                             FROM accounts WHERE currency = $1",
                        )
                        .bind(currency.as_str())
                        .fetch_one(&self.pool)
                        .await?;
                        Ok(sum)
                    },
                )
                .await
            }

            pub(super) async fn count_unfinished(
                &self,
            ) -> Result<i64, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "count_unfinished",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let n: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM transactions \
                             WHERE status IN ('reserved', 'pending')",
                        )
                        .fetch_one(&self.pool)
                        .await?;
                        Ok(n)
                    },
                )
                .await
            }

            pub(super) async fn claim_stale(
                &self,
                older_than_ms: i64,
                lease_ms: i64,
                limit: u32,
            ) -> Result<Vec<$crate::ledger::TransactionRecord>, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "claim_stale",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let now = $crate::ledger::sql::now_ms();
                        let mut tx = self.begin_write().await?;
                        // The lease check is in the locking subquery: a row
                        // another claimer holds is skipped (Postgres) or, once
                        // that claim commits, no longer matches.
                        let rows: Vec<$crate::ledger::sql::TxRow> = sqlx::query_as(concat!(
                            "UPDATE transactions SET lease_until_ms = $1 \
                             WHERE id IN (SELECT id FROM transactions \
                                 WHERE status IN ('reserved', 'pending') \
                                 AND updated_at_ms <= $2 \
                                 AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
                                 ORDER BY updated_at_ms LIMIT $4 ",
                            $claim_lock,
                            ") RETURNING ",
                            $crate::ledger::sql::tx_columns!()
                        ))
                        .bind(now.saturating_add(lease_ms))
                        .bind(now.saturating_sub(older_than_ms))
                        .bind(now)
                        .bind(i64::from(limit))
                        .fetch_all(tx.conn())
                        .await?;
                        tx.commit().await?;
                        Ok(rows
                            .into_iter()
                            .map(|r| r.into_record())
                            .collect::<Result<Vec<_>, _>>()?)
                    },
                )
                .await
            }

            pub(super) async fn note_requery(
                &self,
                id: &$crate::domain::TransactionId,
                error: &str,
            ) -> Result<$crate::ledger::TransactionRecord, $crate::ledger::LedgerError> {
                $crate::ledger::sql::with_retries(
                    "note_requery",
                    self.retries_max,
                    Self::is_conflict,
                    move || async move {
                        let mut tx = self.begin_write().await?;
                        let row: Option<$crate::ledger::sql::TxRow> = sqlx::query_as(concat!(
                            "UPDATE transactions \
                             SET requeries = requeries + 1, last_error = $2, status = 'pending', \
                                 lease_until_ms = NULL, updated_at_ms = $3 \
                             WHERE id = $1 AND status IN ('reserved', 'pending') RETURNING ",
                            $crate::ledger::sql::tx_columns!()
                        ))
                        .bind(id.as_str())
                        .bind(error)
                        .bind($crate::ledger::sql::now_ms())
                        .fetch_optional(tx.conn())
                        .await?;
                        let Some(row) = row else {
                            return Err(Self::not_in_flight(tx.conn(), id, "note_requery").await);
                        };
                        tx.commit().await?;
                        Ok(row.into_record()?)
                    },
                )
                .await
            }

            // ---- helpers, each one statement (or two) inside a caller's transaction ----

            async fn fetch_tx(
                conn: &mut <Self as $crate::ledger::sql::BackendConn>::Conn,
                id: &$crate::domain::TransactionId,
                lock: bool,
            ) -> Result<Option<$crate::ledger::TransactionRecord>, $crate::ledger::sql::Fail> {
                let sql = if lock {
                    concat!(
                        "SELECT ",
                        $crate::ledger::sql::tx_columns!(),
                        " FROM transactions WHERE id = $1 ",
                        $lock
                    )
                } else {
                    concat!(
                        "SELECT ",
                        $crate::ledger::sql::tx_columns!(),
                        " FROM transactions WHERE id = $1"
                    )
                };
                let row: Option<$crate::ledger::sql::TxRow> = sqlx::query_as(sql)
                    .bind(id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row.map(|r| r.into_record()).transpose()?)
            }

            /// Why a write aimed at an in-flight row changed nothing.
            async fn not_in_flight(
                conn: &mut <Self as $crate::ledger::sql::BackendConn>::Conn,
                id: &$crate::domain::TransactionId,
                op: &str,
            ) -> $crate::ledger::sql::Fail {
                use $crate::ledger::LedgerError;
                match Self::fetch_tx(conn, id, false).await {
                    Ok(None) => LedgerError::TransactionNotFound.into(),
                    Ok(Some(row)) => LedgerError::InvalidState(format!(
                        "{op} of a {} transaction",
                        row.status.as_str()
                    ))
                    .into(),
                    Err(e) => e,
                }
            }

            /// Adds `delta` to a system (settlement or equity) account,
            /// creating it on first use. Updates first: the account exists on
            /// every call but the first, so the common case is one statement.
            async fn adjust_system_account(
                conn: &mut <Self as $crate::ledger::sql::BackendConn>::Conn,
                id: &$crate::domain::AccountId,
                currency: &$crate::domain::Currency,
                delta: i64,
                now_ms: i64,
            ) -> Result<(), $crate::ledger::sql::Fail> {
                const UPDATE: &str = "UPDATE accounts SET balance = balance + $1 \
                     WHERE id = $2 AND kind = 'settlement' AND currency = $3";
                let changed = sqlx::query(UPDATE)
                    .bind(delta)
                    .bind(id.as_str())
                    .bind(currency.as_str())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if changed == 1 {
                    return Ok(());
                }
                sqlx::query(
                    "INSERT INTO accounts (id, owner, currency, kind, balance, created_at_ms) \
                     VALUES ($1, 'system', $2, 'settlement', 0, $3) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id.as_str())
                .bind(currency.as_str())
                .bind(now_ms)
                .execute(&mut *conn)
                .await?;
                let changed = sqlx::query(UPDATE)
                    .bind(delta)
                    .bind(id.as_str())
                    .bind(currency.as_str())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if changed != 1 {
                    return Err($crate::ledger::LedgerError::InvalidState(format!(
                        "account {id} is not a {currency} system account"
                    ))
                    .into());
                }
                Ok(())
            }
        }
    };
}
pub(super) use impl_ledger_ops;

/// What the invoking backend module names for [`impl_ledger_ops!`].
pub(super) trait BackendConn {
    /// The backend's connection type (`PgConnection`, `SqliteConnection`).
    type Conn;
}
