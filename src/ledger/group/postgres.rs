//! A batch on Postgres: each step one set-based statement over arrays
//! (`UNNEST`), so a batch costs a handful of round trips whatever its size.
//! Locks are taken by `SELECT … ORDER BY id FOR NO KEY UPDATE`, which locks
//! rows in the order it returns them: ascending id, the ledger's one order.

use std::collections::BTreeMap;

use sqlx::postgres::PgConnection;

use super::{Accounts, Rows, check_rows, response_of};
use crate::domain::Currency;
use crate::ledger::TransactionRecord;
use crate::ledger::sql::{AccountRow, Fail, TxRow, account_columns, tx_columns};

/// Locks the accounts among `ids` (ascending) and returns those that exist.
pub(super) async fn lock_accounts(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Accounts, Fail> {
    if ids.is_empty() {
        return Ok(Accounts::new());
    }
    let rows: Vec<AccountRow> = sqlx::query_as(concat!(
        "SELECT ",
        account_columns!(),
        " FROM accounts WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id().to_owned(), r)).collect())
}

/// The transactions among `ids` that exist; locked (ascending id) when about
/// to be changed.
pub(super) async fn transactions(
    conn: &mut PgConnection,
    ids: &[String],
    lock: bool,
) -> Result<Rows, Fail> {
    let sql = if lock {
        concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE id = ANY($1)"
        )
    };
    let rows: Vec<TxRow> = sqlx::query_as(sql).bind(ids).fetch_all(&mut *conn).await?;
    let mut out = Rows::with_capacity(rows.len());
    for row in rows {
        let record = row.into_record()?;
        out.insert(record.id.as_str().to_owned(), record);
    }
    Ok(out)
}

/// Takes the held amounts off their source accounts: one guarded update for
/// all of them.
pub(super) async fn take(
    conn: &mut PgConnection,
    taken: &BTreeMap<String, i64>,
) -> Result<(), Fail> {
    if taken.is_empty() {
        return Ok(());
    }
    let (ids, amounts): (Vec<&str>, Vec<i64>) = taken.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
    let changed = sqlx::query(
        "UPDATE accounts AS a SET balance = a.balance - d.amount \
         FROM UNNEST($1::text[], $2::bigint[]) AS d(id, amount) \
         WHERE a.id = d.id AND a.kind = 'customer' AND a.balance >= d.amount",
    )
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    check_rows("take", ids.len(), changed)
}

/// Adds the deltas to their accounts (all locked already).
pub(super) async fn add(
    conn: &mut PgConnection,
    deltas: &BTreeMap<String, i64>,
) -> Result<(), Fail> {
    let (ids, amounts): (Vec<&str>, Vec<i64>) = deltas
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| (k.as_str(), *v))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    let changed = sqlx::query(
        "UPDATE accounts AS a SET balance = a.balance + d.amount \
         FROM UNNEST($1::text[], $2::bigint[]) AS d(id, amount) WHERE a.id = d.id",
    )
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    check_rows("add", ids.len(), changed)
}

/// Inserts new transaction rows. A row that already exists now (a twin
/// committed by another replica since the batch read) reruns the batch.
pub(super) async fn insert_transactions(
    conn: &mut PgConnection,
    rows: &[TransactionRecord],
) -> Result<(), Fail> {
    if rows.is_empty() {
        return Ok(());
    }
    // In id order, like every lock: two batches inserting the same new ids
    // (replicas, writers) wait for each other instead of deadlocking.
    let mut sorted: Vec<&TransactionRecord> = rows.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut c = Columns::with_capacity(rows.len());
    for r in sorted {
        c.push(r)?;
    }
    let inserted = sqlx::query(
        "INSERT INTO transactions (id, client, kind, source, destination, amount, currency, \
             metadata, fingerprint, status, reason, switch, attempts, requeries, \
             response_status, response_body, created_at_ms, updated_at_ms) \
         SELECT id, client, kind, source, destination, amount, currency, metadata, fingerprint, \
             status, reason, switch, attempts, 0, response_status, response_body, created, created \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
             $13::bigint[], $14::bigint[], $15::text[], $16::bigint[]) \
             AS r(id, client, kind, source, destination, amount, currency, metadata, \
                  fingerprint, status, reason, switch, attempts, response_status, \
                  response_body, created) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&c.id)
    .bind(&c.client)
    .bind(&c.kind)
    .bind(&c.source)
    .bind(&c.destination)
    .bind(&c.amount)
    .bind(&c.currency)
    .bind(&c.metadata)
    .bind(&c.fingerprint)
    .bind(&c.status)
    .bind(&c.reason)
    .bind(&c.switch)
    .bind(&c.attempts)
    .bind(&c.response_status)
    .bind(&c.response_body)
    .bind(&c.created)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted as usize != rows.len() {
        return Err(Fail::Conflict("a transaction id was inserted concurrently"));
    }
    Ok(())
}

/// The columns of new transaction rows, as arrays.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    client: Vec<String>,
    kind: Vec<&'static str>,
    source: Vec<Option<String>>,
    destination: Vec<Option<String>>,
    amount: Vec<i64>,
    currency: Vec<String>,
    metadata: Vec<Option<String>>,
    fingerprint: Vec<String>,
    status: Vec<&'static str>,
    reason: Vec<Option<String>>,
    switch: Vec<Option<String>>,
    attempts: Vec<i64>,
    response_status: Vec<Option<i64>>,
    response_body: Vec<Option<String>>,
    created: Vec<i64>,
}

impl Columns {
    fn with_capacity(_n: usize) -> Self {
        Self::default()
    }

    fn push(&mut self, r: &TransactionRecord) -> Result<(), Fail> {
        self.id.push(r.id.as_str().to_owned());
        self.client.push(r.client.clone());
        self.kind.push(r.kind.as_str());
        self.source
            .push(r.source.as_ref().map(|a| a.as_str().to_owned()));
        self.destination
            .push(r.destination.as_ref().map(|a| a.as_str().to_owned()));
        self.amount.push(r.amount);
        self.currency.push(r.currency.as_str().to_owned());
        self.metadata
            .push(r.metadata.as_ref().map(|m| m.to_string()));
        self.fingerprint.push(r.fingerprint.clone());
        self.status.push(r.status.as_str());
        self.reason.push(r.reason.clone());
        self.switch.push(r.switch.clone());
        self.attempts.push(i64::from(r.attempts));
        let response = if r.status.is_final() {
            Some(response_of(r)?)
        } else {
            None
        };
        self.response_status
            .push(response.map(|s| i64::from(s.status)));
        self.response_body
            .push(response.map(|s| s.body.to_string()));
        self.created.push(r.created_at_ms);
        Ok(())
    }
}

/// Records attempt 1 of each `(transaction, switch)`.
pub(super) async fn insert_first_attempts(
    conn: &mut PgConnection,
    attempts: &[(String, String)],
    now: i64,
) -> Result<(), Fail> {
    if attempts.is_empty() {
        return Ok(());
    }
    let (ids, switches): (Vec<&str>, Vec<&str>) = attempts
        .iter()
        .map(|(t, s)| (t.as_str(), s.as_str()))
        .unzip();
    let inserted = sqlx::query(
        "INSERT INTO attempts (transaction_id, attempt_no, switch, started_at_ms) \
         SELECT t, 1, s, $3 FROM UNNEST($1::text[], $2::text[]) AS d(t, s)",
    )
    .bind(&ids)
    .bind(&switches)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    check_rows("first attempts", ids.len(), inserted)
}

/// Creates the settlement accounts among `wanted` that do not exist yet
/// (first use of a switch in a currency).
pub(super) async fn create_settlements(
    conn: &mut PgConnection,
    wanted: &BTreeMap<String, Option<Currency>>,
    now: i64,
) -> Result<(), Fail> {
    let (ids, currencies): (Vec<&str>, Vec<&str>) = wanted
        .iter()
        .filter_map(|(id, c)| c.as_ref().map(|c| (id.as_str(), c.as_str())))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    // Only the missing ones: an existing row is neither written nor locked here.
    sqlx::query(
        "INSERT INTO accounts (id, owner, currency, kind, balance, created_at_ms) \
         SELECT d.id, 'system', d.currency, 'settlement', 0, $3 \
         FROM UNNEST($1::text[], $2::text[]) AS d(id, currency) \
         WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = d.id) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&currencies)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores the final rows with their responses; each must still be in flight.
pub(super) async fn store_finals(
    conn: &mut PgConnection,
    rows: &[TransactionRecord],
) -> Result<(), Fail> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut id = Vec::with_capacity(rows.len());
    let mut status = Vec::with_capacity(rows.len());
    let mut reason = Vec::with_capacity(rows.len());
    let mut switch = Vec::with_capacity(rows.len());
    let mut reference = Vec::with_capacity(rows.len());
    let mut response_status = Vec::with_capacity(rows.len());
    let mut response_body = Vec::with_capacity(rows.len());
    let mut updated = Vec::with_capacity(rows.len());
    for r in rows {
        let response = response_of(r)?;
        id.push(r.id.as_str());
        status.push(r.status.as_str());
        reason.push(r.reason.as_deref());
        switch.push(r.switch.as_deref());
        reference.push(r.switch_reference.as_deref());
        response_status.push(i64::from(response.status));
        response_body.push(response.body.to_string());
        updated.push(r.updated_at_ms);
    }
    let changed = sqlx::query(
        "UPDATE transactions AS t SET status = d.status, reason = d.reason, switch = d.switch, \
             switch_reference = d.reference, lease_until_ms = NULL, \
             response_status = d.response_status, response_body = d.response_body, \
             updated_at_ms = d.updated \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::bigint[], $7::text[], $8::bigint[]) \
             AS d(id, status, reason, switch, reference, response_status, response_body, updated) \
         WHERE t.id = d.id AND t.status IN ('reserved', 'pending')",
    )
    .bind(&id)
    .bind(&status)
    .bind(&reason)
    .bind(&switch)
    .bind(&reference)
    .bind(&response_status)
    .bind(&response_body)
    .bind(&updated)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    check_rows("final rows", rows.len(), changed)
}

/// `(transaction, account, amount)` postings of completed movements.
pub(super) async fn insert_postings(
    conn: &mut PgConnection,
    postings: &[(String, String, i64)],
    now: i64,
) -> Result<(), Fail> {
    if postings.is_empty() {
        return Ok(());
    }
    let mut tx = Vec::with_capacity(postings.len());
    let mut account = Vec::with_capacity(postings.len());
    let mut amount = Vec::with_capacity(postings.len());
    for (t, a, x) in postings {
        tx.push(t.as_str());
        account.push(a.as_str());
        amount.push(*x);
    }
    sqlx::query(
        "INSERT INTO postings (transaction_id, account_id, amount, created_at_ms) \
         SELECT t, a, x, $4 FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS d(t, a, x)",
    )
    .bind(&tx)
    .bind(&account)
    .bind(&amount)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores how attempts ended: `(transaction, attempt, outcome, error)`.
pub(super) async fn end_attempts(
    conn: &mut PgConnection,
    ends: &[(String, i64, &'static str, Option<String>)],
    now: i64,
) -> Result<(), Fail> {
    if ends.is_empty() {
        return Ok(());
    }
    let mut tx = Vec::with_capacity(ends.len());
    let mut no = Vec::with_capacity(ends.len());
    let mut outcome = Vec::with_capacity(ends.len());
    let mut error = Vec::with_capacity(ends.len());
    for (t, n, o, e) in ends {
        tx.push(t.as_str());
        no.push(*n);
        outcome.push(*o);
        error.push(e.as_deref());
    }
    sqlx::query(
        "UPDATE attempts AS a SET finished_at_ms = $5, outcome = d.outcome, error = d.error \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[]) \
             AS d(t, n, outcome, error) \
         WHERE a.transaction_id = d.t AND a.attempt_no = d.n",
    )
    .bind(&tx)
    .bind(&no)
    .bind(&outcome)
    .bind(&error)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
