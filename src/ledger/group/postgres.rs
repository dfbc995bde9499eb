//! A batch on Postgres: reads first, then **one** statement that makes every
//! write of the batch (data-modifying CTEs over arrays, `UNNEST`), so a batch
//! costs four or five round trips whatever its size: `BEGIN`, the locking
//! reads, the write, `COMMIT`. The write returns how many rows each of its
//! parts touched, and the batch checks each against its plan.
//!
//! Locks are taken by `SELECT … ORDER BY key FOR NO KEY UPDATE`, which locks
//! rows in the order it returns them: transactions by ascending reference,
//! then accounts by ascending id, the ledger's one order.
//! The writes only touch rows already locked, or new rows.
//!
//! Every join of an array with a table also says `key = ANY(array)`, so
//! each table is reached through its key's index. The writers' connections
//! plan each statement once, with sequential scans costed as a last resort
//! (`plan_batches_once` in `ledger/postgres.rs`): a plan costed on stale
//! statistics (a table that grew since it was last analyzed, or never was)
//! otherwise scanned the whole table for every batch, and each batch cost
//! more as the table grew.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sqlx::postgres::PgConnection;

use super::{
    Accounts, ClientKey, Existing, FinishPlan, ReserveOp, ReservePlan, Rows, check_rows,
    client_key, response_of,
};
use crate::domain::{Currency, ReleaseReason, SwitchName};
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

/// The transactions with these references, locked (ascending reference).
pub(super) async fn locked_transactions(
    conn: &mut PgConnection,
    refs: &[String],
) -> Result<Rows, Fail> {
    let rows: Vec<TxRow> = sqlx::query_as(concat!(
        "SELECT ",
        tx_columns!(),
        " FROM transactions WHERE gateway_ref = ANY($1) ORDER BY gateway_ref FOR NO KEY UPDATE"
    ))
    .bind(refs)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Rows::with_capacity(rows.len());
    for row in rows {
        let record = row.into_record()?;
        out.insert(record.gateway_ref.as_str().to_owned(), record);
    }
    Ok(out)
}

/// The transactions the clients of a reserve batch already stored under
/// the ids they send now (not locked: a stored row is only read).
pub(super) async fn stored(conn: &mut PgConnection, ops: &[ReserveOp]) -> Result<Existing, Fail> {
    let wanted: HashSet<ClientKey<'_>> = ops
        .iter()
        .map(|op| client_key(&op.client, &op.req.id))
        .collect();
    let ids: Vec<&str> = wanted.iter().map(|(id, _)| *id).collect();
    let rows: Vec<TxRow> = sqlx::query_as(concat!(
        "SELECT ",
        tx_columns!(),
        " FROM transactions WHERE id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Existing::default();
    for row in rows {
        let record = row.into_record()?;
        // Another client's transaction under the same id is not this one's.
        if wanted.contains(&client_key(&record.client, &record.id)) {
            out.insert(record);
        }
    }
    Ok(out)
}

/// How the write of a reserve batch went.
pub(super) enum ReserveWrite {
    /// Every row the plan calls new was inserted.
    Done,
    /// Some client's id of the batch already existed (a replay, or a twin
    /// another writer committed meanwhile): the plan, made without reading existing
    /// rows, is wrong for it. The caller rolls back and replans after reading.
    Existed,
}

/// The whole write of a reserve batch, in one statement: take the held
/// amounts off their source accounts (one guarded update per account), insert
/// the new rows (in `(id, client)` order, the unique index's, like every lock:
/// two batches inserting the same new keys wait for each other instead of
/// deadlocking) and the first attempts of the rows actually inserted; and
/// the webhook outbox rows of inserted rows that are final already
/// (`declined` for insufficient funds), as in [`write_finishes`].
///
/// The plan is wrong when a client's id it does not know to exist does:
/// among the keys it inserts, the insert says so (`ON CONFLICT DO NOTHING`
/// inserts fewer rows); the others (keys of the batch the plan answers
/// without an insert: rows it read, `existing`, and requests the account
/// checks refused) are counted, and any more of them than `existing` make
/// the plan wrong (the statement's snapshot does not see its own inserts, so
/// the count is of rows that existed before it). In the common batch every
/// key is inserted and nothing is looked up for the count.
pub(super) async fn write_reserves(
    conn: &mut PgConnection,
    ops: &[ReserveOp],
    existing: &Existing,
    plan: &ReservePlan,
    now: i64,
) -> Result<ReserveWrite, Fail> {
    let inserting: HashSet<ClientKey<'_>> = plan
        .inserts
        .iter()
        .map(|r| client_key(&r.client, &r.id))
        .collect();
    let (other_ids, other_clients): (Vec<&str>, Vec<&str>) = ops
        .iter()
        .map(|op| client_key(&op.client, &op.req.id))
        .filter(|key| !inserting.contains(key))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .unzip();
    let (taken_ids, taken): (Vec<&str>, Vec<i64>) =
        plan.taken.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
    let mut sorted: Vec<&TransactionRecord> = plan.inserts.iter().collect();
    sorted.sort_by(|a, b| client_key(&a.client, &a.id).cmp(&client_key(&b.client, &b.id)));
    let mut c = Columns::with_capacity(sorted.len());
    for r in sorted {
        c.push(r)?;
    }
    let (attempt_ids, attempt_switches): (Vec<&str>, Vec<&str>) = plan
        .first_attempts
        .iter()
        .map(|(t, s)| (t.as_str(), s.as_str()))
        .unzip();
    let (existed, took, inserted, attempted): (i64, i64, i64, i64) = sqlx::query_as(
        "WITH take AS ( \
             UPDATE accounts AS a SET balance = a.balance - d.amount \
             FROM UNNEST($1::text[], $2::bigint[]) AS d(id, amount) \
             WHERE a.id = ANY($1) AND a.id = d.id AND a.kind = 'customer' \
                 AND a.balance >= d.amount \
             RETURNING 1), \
         ins AS ( \
             INSERT INTO transactions (gateway_ref, id, client, kind, source, destination, \
                 amount, currency, metadata, fingerprint, status, reason, switch, attempts, \
                 requeries, response_status, response_body, created_at_ms, updated_at_ms) \
             SELECT gateway_ref, id, client, kind, source, destination, amount, currency, \
                 metadata, fingerprint, status, reason, switch, attempts, 0, response_status, \
                 response_body, created, created \
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                 $14::text[], $15::bigint[], $16::bigint[], $17::text[], $18::bigint[], \
                 $24::text[]) \
                 AS r(id, client, kind, source, destination, amount, currency, metadata, \
                      fingerprint, status, reason, switch, attempts, response_status, \
                      response_body, created, gateway_ref) \
             ON CONFLICT DO NOTHING \
             RETURNING gateway_ref, client, status, created_at_ms), \
         hooks AS ( \
             INSERT INTO webhook_deliveries (id, webhook_id, gateway_ref, event_type, \
                 next_attempt_at_ms, created_at_ms) \
             SELECT s.webhook_id || '.' || i.gateway_ref, s.webhook_id, i.gateway_ref, \
                 'transaction.' || i.status, i.created_at_ms, i.created_at_ms \
             FROM ins AS i JOIN webhook_subscriptions AS s \
                 ON s.client = i.client AND s.status = i.status \
             WHERE i.status IN ('committed', 'declined', 'failed') \
             RETURNING 1), \
         att AS ( \
             INSERT INTO attempts (gateway_ref, attempt_no, switch, started_at_ms) \
             SELECT d.t, 1, d.s, $21 FROM UNNEST($19::text[], $20::text[]) AS d(t, s) \
             JOIN ins ON ins.gateway_ref = d.t \
             RETURNING 1) \
         SELECT (SELECT count(*) FROM transactions AS t \
                 JOIN UNNEST($22::text[], $23::text[]) AS o(id, client) \
                 ON t.id = o.id AND t.client = o.client \
                 WHERE t.id = ANY($22)), \
             (SELECT count(*) FROM take), (SELECT count(*) FROM ins), \
             (SELECT count(*) FROM att)",
    )
    .bind(&taken_ids)
    .bind(&taken)
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
    .bind(&attempt_ids)
    .bind(&attempt_switches)
    .bind(now)
    .bind(&other_ids)
    .bind(&other_clients)
    .bind(&c.gateway_ref)
    .fetch_one(&mut *conn)
    .await?;
    if existed as usize != existing.len() || inserted as usize != c.id.len() {
        return Ok(ReserveWrite::Existed);
    }
    check_rows("take", taken_ids.len(), took as u64)?;
    check_rows("first attempts", attempt_ids.len(), attempted as u64)?;
    Ok(ReserveWrite::Done)
}

/// The columns of new transaction rows, as arrays.
struct Columns {
    gateway_ref: Vec<String>,
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
    reason: Vec<Option<&'static str>>,
    switch: Vec<Option<String>>,
    attempts: Vec<i64>,
    response_status: Vec<Option<i64>>,
    response_body: Vec<Option<String>>,
    created: Vec<i64>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            gateway_ref: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            client: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
            destination: Vec::with_capacity(n),
            amount: Vec::with_capacity(n),
            currency: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            fingerprint: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            switch: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            response_status: Vec::with_capacity(n),
            response_body: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, r: &TransactionRecord) -> Result<(), Fail> {
        self.gateway_ref.push(r.gateway_ref.as_str().to_owned());
        self.id.push(r.id.as_str().to_owned());
        self.client.push(r.client.as_str().to_owned());
        self.kind.push(r.kind.as_str());
        self.source
            .push(r.source.as_ref().map(|a| a.as_str().to_owned()));
        self.destination
            .push(r.destination.as_ref().map(|a| a.as_str().to_owned()));
        self.amount.push(r.amount.minor_units());
        self.currency.push(r.currency.as_str().to_owned());
        self.metadata
            .push(r.metadata.as_ref().map(|m| m.to_string()));
        self.fingerprint.push(r.fingerprint.clone());
        self.status.push(r.status.as_str());
        self.reason.push(r.reason.map(ReleaseReason::as_str));
        self.switch
            .push(r.switch.as_ref().map(|s| s.as_str().to_owned()));
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

/// Creates the settlement accounts among `wanted` that do not exist yet
/// (first use of a switch in a currency); `false` when none was missing.
pub(super) async fn create_settlements(
    conn: &mut PgConnection,
    wanted: &BTreeMap<String, Option<Currency>>,
    locked: &Accounts,
    now: i64,
) -> Result<bool, Fail> {
    let (ids, currencies): (Vec<&str>, Vec<&str>) = wanted
        .iter()
        .filter(|(id, _)| !locked.contains_key(id.as_str()))
        .filter_map(|(id, c)| c.as_ref().map(|c| (id.as_str(), c.as_str())))
        .unzip();
    if ids.is_empty() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO accounts (id, owner, currency, kind, balance, created_at_ms) \
         SELECT d.id, 'system', d.currency, 'settlement', 0, $3 \
         FROM UNNEST($1::text[], $2::text[]) AS d(id, currency) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&currencies)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// The whole write of a finish batch, in one statement: the credits per
/// account (all locked already), the final rows with their responses (each
/// must still be in flight), the postings and the attempts' outcomes, and
/// the webhook outbox: a delivery per final row and subscribed webhook of
/// its client (`hooks`; a client without webhooks costs one probe of
/// `webhook_subscriptions`' primary key).
///
/// "Still in flight" is written `NOT IN` the final statuses (the same rows,
/// by the status check): `IN ('reserved', 'pending')` is the predicate of
/// the partial index of in-flight rows, and the planner then may read the
/// whole of that index (and its entries of rows finished since the last
/// vacuum) instead of looking the batch's ids up by primary key.
pub(super) async fn write_finishes(
    conn: &mut PgConnection,
    plan: &FinishPlan,
    now: i64,
) -> Result<(), Fail> {
    let (delta_ids, deltas): (Vec<&str>, Vec<i64>) = plan
        .deltas
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| (k.as_str(), *v))
        .unzip();
    let f = Finals::of(&plan.finals)?;
    let mut posting_tx = Vec::with_capacity(plan.postings.len());
    let mut posting_account = Vec::with_capacity(plan.postings.len());
    let mut posting_amount = Vec::with_capacity(plan.postings.len());
    for (t, a, x) in &plan.postings {
        posting_tx.push(t.as_str());
        posting_account.push(a.as_str());
        posting_amount.push(*x);
    }
    let ends = &plan.attempt_ends;
    let mut end_tx = Vec::with_capacity(ends.len());
    let mut end_no = Vec::with_capacity(ends.len());
    let mut end_outcome = Vec::with_capacity(ends.len());
    let mut end_error = Vec::with_capacity(ends.len());
    for (t, n, o, e) in ends {
        end_tx.push(t.as_str());
        end_no.push(*n);
        end_outcome.push(*o);
        end_error.push(e.as_deref());
    }
    let (added, finals, posted): (i64, i64, i64) = sqlx::query_as(
        "WITH added AS ( \
             UPDATE accounts AS a SET balance = a.balance + d.amount \
             FROM UNNEST($1::text[], $2::bigint[]) AS d(id, amount) \
             WHERE a.id = ANY($1) AND a.id = d.id \
             RETURNING 1), \
         finals AS ( \
             UPDATE transactions AS t SET status = d.status, reason = d.reason, \
                 switch = d.switch, switch_reference = d.reference, lease_until_ms = NULL, \
                 response_status = d.response_status, response_body = d.response_body, \
                 updated_at_ms = d.updated \
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                 $8::bigint[], $9::text[], $10::bigint[]) \
                 AS d(id, status, reason, switch, reference, response_status, response_body, \
                      updated) \
             WHERE t.gateway_ref = ANY($3) AND t.gateway_ref = d.id \
                 AND t.status NOT IN ('committed', 'declined', 'failed') \
             RETURNING t.gateway_ref, t.client, t.status, t.updated_at_ms), \
         hooks AS ( \
             INSERT INTO webhook_deliveries (id, webhook_id, gateway_ref, event_type, \
                 next_attempt_at_ms, created_at_ms) \
             SELECT s.webhook_id || '.' || f.gateway_ref, s.webhook_id, f.gateway_ref, \
                 'transaction.' || f.status, f.updated_at_ms, f.updated_at_ms \
             FROM finals AS f JOIN webhook_subscriptions AS s \
                 ON s.client = f.client AND s.status = f.status \
             RETURNING 1), \
         posted AS ( \
             INSERT INTO postings (gateway_ref, account_id, amount, created_at_ms) \
             SELECT t, a, x, $14 FROM UNNEST($11::text[], $12::text[], $13::bigint[]) \
                 AS d(t, a, x) \
             RETURNING 1), \
         ended AS ( \
             UPDATE attempts AS a SET finished_at_ms = $14, outcome = d.outcome, \
                 error = d.error \
             FROM UNNEST($15::text[], $16::bigint[], $17::text[], $18::text[]) \
                 AS d(t, n, outcome, error) \
             WHERE a.gateway_ref = ANY($15) AND a.gateway_ref = d.t \
                 AND a.attempt_no = d.n \
             RETURNING 1) \
         SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM finals), \
             (SELECT count(*) FROM posted)",
    )
    .bind(&delta_ids)
    .bind(&deltas)
    .bind(&f.id)
    .bind(&f.status)
    .bind(&f.reason)
    .bind(&f.switch)
    .bind(&f.reference)
    .bind(&f.response_status)
    .bind(&f.response_body)
    .bind(&f.updated)
    .bind(&posting_tx)
    .bind(&posting_account)
    .bind(&posting_amount)
    .bind(now)
    .bind(&end_tx)
    .bind(&end_no)
    .bind(&end_outcome)
    .bind(&end_error)
    .fetch_one(&mut *conn)
    .await?;
    check_rows("add", delta_ids.len(), added as u64)?;
    check_rows("final rows", f.id.len(), finals as u64)?;
    check_rows("postings", posting_tx.len(), posted as u64)
}

/// The final rows of a finish batch, as arrays (`id`: the reference).
struct Finals<'a> {
    id: Vec<&'a str>,
    status: Vec<&'static str>,
    reason: Vec<Option<&'a str>>,
    switch: Vec<Option<&'a str>>,
    reference: Vec<Option<&'a str>>,
    response_status: Vec<i64>,
    response_body: Vec<String>,
    updated: Vec<i64>,
}

impl<'a> Finals<'a> {
    fn of(rows: &'a [TransactionRecord]) -> Result<Self, Fail> {
        let n = rows.len();
        let mut f = Finals {
            id: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            switch: Vec::with_capacity(n),
            reference: Vec::with_capacity(n),
            response_status: Vec::with_capacity(n),
            response_body: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
        };
        for r in rows {
            let response = response_of(r)?;
            f.id.push(r.gateway_ref.as_str());
            f.status.push(r.status.as_str());
            f.reason.push(r.reason.map(ReleaseReason::as_str));
            f.switch.push(r.switch.as_ref().map(SwitchName::as_str));
            f.reference.push(r.switch_reference.as_deref());
            f.response_status.push(i64::from(response.status));
            f.response_body.push(response.body.to_string());
            f.updated.push(r.updated_at_ms);
        }
        Ok(f)
    }
}
