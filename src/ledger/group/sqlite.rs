//! A batch on SQLite: the same steps as on Postgres, one statement per row.
//! The database is in-process, so a statement costs no round trip; what a
//! batch saves is the commit (one `fsync` for the batch). The write
//! transaction (`BEGIN IMMEDIATE`) holds the whole database, so reading first
//! and writing after is safe without row locks.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteConnection;

use super::{Accounts, Existing, ReserveOp, Rows, check_rows, response_of};
use crate::domain::{Currency, ReleaseReason, SwitchName};
use crate::ledger::TransactionRecord;
use crate::ledger::sql::{AccountRow, Fail, TxRow, account_columns, tx_columns};

pub(super) async fn accounts(
    conn: &mut SqliteConnection,
    ids: &[String],
) -> Result<Accounts, Fail> {
    let mut out = Accounts::with_capacity(ids.len());
    for id in ids {
        let row: Option<AccountRow> = sqlx::query_as(concat!(
            "SELECT ",
            account_columns!(),
            " FROM accounts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            out.insert(id.clone(), row);
        }
    }
    Ok(out)
}

/// The transactions with these references.
pub(super) async fn transactions(
    conn: &mut SqliteConnection,
    refs: &[String],
) -> Result<Rows, Fail> {
    let mut out = Rows::new();
    for gateway_ref in refs {
        let row: Option<TxRow> = sqlx::query_as(concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE gateway_ref = $1"
        ))
        .bind(gateway_ref)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            out.insert(gateway_ref.clone(), row.into_record()?);
        }
    }
    Ok(out)
}

/// The transactions the clients of a reserve batch already stored under
/// the ids they send now.
pub(super) async fn stored(
    conn: &mut SqliteConnection,
    ops: &[ReserveOp],
) -> Result<Existing, Fail> {
    let mut out = Existing::default();
    for op in ops {
        if out.get(&op.client, &op.req.id).is_some() {
            continue;
        }
        let row: Option<TxRow> = sqlx::query_as(concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE id = $1 AND client = $2"
        ))
        .bind(op.req.id.as_str())
        .bind(op.client.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            out.insert(row.into_record()?);
        }
    }
    Ok(out)
}

pub(super) async fn take(
    conn: &mut SqliteConnection,
    taken: &BTreeMap<String, i64>,
) -> Result<(), Fail> {
    for (id, amount) in taken {
        let changed = sqlx::query(
            "UPDATE accounts SET balance = balance - $1 \
             WHERE id = $2 AND kind = 'customer' AND balance >= $1",
        )
        .bind(amount)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        check_rows("take", 1, changed)?;
    }
    Ok(())
}

pub(super) async fn add(
    conn: &mut SqliteConnection,
    deltas: &BTreeMap<String, i64>,
) -> Result<(), Fail> {
    for (id, amount) in deltas.iter().filter(|(_, v)| **v != 0) {
        let changed = sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
            .bind(amount)
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        check_rows("add", 1, changed)?;
    }
    Ok(())
}

pub(super) async fn insert_transactions(
    conn: &mut SqliteConnection,
    rows: &[TransactionRecord],
) -> Result<(), Fail> {
    for r in rows {
        let response = if r.status.is_final() {
            Some(response_of(r)?)
        } else {
            None
        };
        let inserted = sqlx::query(
            "INSERT INTO transactions (id, client, kind, source, destination, amount, currency, \
                 metadata, fingerprint, status, reason, switch, attempts, requeries, \
                 response_status, response_body, created_at_ms, updated_at_ms, gateway_ref) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, $14, $15, $16, $16, \
                 $17) \
             ON CONFLICT DO NOTHING",
        )
        .bind(r.id.as_str())
        .bind(r.client.as_str())
        .bind(r.kind.as_str())
        .bind(r.source.as_ref().map(|a| a.as_str()))
        .bind(r.destination.as_ref().map(|a| a.as_str()))
        .bind(r.amount.minor_units())
        .bind(r.currency.as_str())
        .bind(r.metadata.as_ref().map(|m| m.to_string()))
        .bind(&r.fingerprint)
        .bind(r.status.as_str())
        .bind(r.reason.map(ReleaseReason::as_str))
        .bind(r.switch.as_ref().map(SwitchName::as_str))
        .bind(i64::from(r.attempts))
        .bind(response.map(|s| i64::from(s.status)))
        .bind(response.map(|s| s.body.to_string()))
        .bind(r.created_at_ms)
        .bind(r.gateway_ref.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted != 1 {
            return Err(Fail::Conflict(
                "a client's transaction id was inserted concurrently",
            ));
        }
    }
    Ok(())
}

pub(super) async fn insert_first_attempts(
    conn: &mut SqliteConnection,
    attempts: &[(String, String)],
    now: i64,
) -> Result<(), Fail> {
    for (gateway_ref, switch) in attempts {
        sqlx::query(
            "INSERT INTO attempts (gateway_ref, attempt_no, switch, started_at_ms) \
             VALUES ($1, 1, $2, $3)",
        )
        .bind(gateway_ref)
        .bind(switch)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) async fn create_settlements(
    conn: &mut SqliteConnection,
    wanted: &BTreeMap<String, Option<Currency>>,
    now: i64,
) -> Result<(), Fail> {
    for (id, currency) in wanted {
        let Some(currency) = currency else { continue };
        sqlx::query(
            "INSERT INTO accounts (id, owner, currency, kind, balance, created_at_ms) \
             VALUES ($1, 'system', $2, 'settlement', 0, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(currency.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) async fn store_finals(
    conn: &mut SqliteConnection,
    rows: &[TransactionRecord],
) -> Result<(), Fail> {
    for r in rows {
        let response = response_of(r)?;
        let changed = sqlx::query(
            "UPDATE transactions SET status = $2, reason = $3, switch = $4, \
                 switch_reference = $5, lease_until_ms = NULL, response_status = $6, \
                 response_body = $7, updated_at_ms = $8 \
             WHERE gateway_ref = $1 AND status IN ('reserved', 'pending')",
        )
        .bind(r.gateway_ref.as_str())
        .bind(r.status.as_str())
        .bind(r.reason.map(ReleaseReason::as_str))
        .bind(r.switch.as_ref().map(SwitchName::as_str))
        .bind(r.switch_reference.as_deref())
        .bind(i64::from(response.status))
        .bind(response.body.to_string())
        .bind(r.updated_at_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        check_rows("final rows", 1, changed)?;
    }
    Ok(())
}

pub(super) async fn insert_postings(
    conn: &mut SqliteConnection,
    postings: &[(String, String, i64)],
    now: i64,
) -> Result<(), Fail> {
    for (tx, account, amount) in postings {
        sqlx::query(
            "INSERT INTO postings (gateway_ref, account_id, amount, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(tx)
        .bind(account)
        .bind(amount)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) async fn end_attempts(
    conn: &mut SqliteConnection,
    ends: &[(String, i64, &'static str, Option<String>)],
    now: i64,
) -> Result<(), Fail> {
    for (tx, no, outcome, error) in ends {
        sqlx::query(
            "UPDATE attempts SET finished_at_ms = $3, outcome = $4, error = $5 \
             WHERE gateway_ref = $1 AND attempt_no = $2",
        )
        .bind(tx)
        .bind(no)
        .bind(now)
        .bind(*outcome)
        .bind(error.as_deref())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The webhook outbox of rows just made final (in the batch's transaction):
/// one delivery per subscribed webhook of the row's client; one probe of
/// `webhook_subscriptions`' primary key for a client without webhooks.
pub(super) async fn queue_deliveries<'r>(
    conn: &mut SqliteConnection,
    rows: impl IntoIterator<Item = &'r TransactionRecord>,
) -> Result<(), Fail> {
    for r in rows.into_iter().filter(|r| r.status.is_final()) {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, gateway_ref, event_type, \
                 next_attempt_at_ms, created_at_ms) \
             SELECT webhook_id || '.' || $1, webhook_id, $1, 'transaction.' || $3, $4, $4 \
             FROM webhook_subscriptions WHERE client = $2 AND status = $3",
        )
        .bind(r.gateway_ref.as_str())
        .bind(r.client.as_str())
        .bind(r.status.as_str())
        .bind(r.updated_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
