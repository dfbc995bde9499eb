//! What both backends share: row types, checks, the retry loop, the write
//! transaction, and the body of every one-at-a-time operation.
//!
//! The operations are written once, as the provided methods of
//! [`SqlBackend`], in plain generic sqlx over the backend's `Database`. A
//! backend module implements the few required items — its `Database` type,
//! its pool, how it begins a write, which errors are conflicts, the reconciler's
//! claim lock — and gets every operation; so the differences between the
//! backends are those items, side by side in `postgres.rs` and `sqlite.rs`.
//! (The alternatives read worse: a macro expanded per backend hides the code
//! from the compiler's and the reader's view of types, and SQL constants bound
//! by two copies of each operation would repeat every bind and check.) The
//! generic price is paid once: the `where` clause of [`SqlBackend`] lists what
//! the operations need of a database (an executor on its connection, encoders
//! for the bound types, decoders for the rows), and both sqlx backends have it.
//!
//! SQL placeholders are `$N` on both: sqlx binds `$N` by number on SQLite too.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{
    AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type,
};
use tokio::sync::OwnedMutexGuard;

use super::history::{
    HistoryQuery, Page, PostingCursor, PostingRecord, Scope, StatementQuery, TransactionCursor,
};
use super::{
    Account, AccountKind, AttemptOutcome, AttemptRecord, LeaseToken, LedgerError, NewAccount,
    StoredResponse, TransactionRecord,
};
use crate::domain::{
    AccountId, Amount, ClientId, Currency, GatewayRef, ReleaseReason, Spenders, SwitchName,
    TransactionId, TransactionRequest, TxKind, TxStatus,
};

/// The age bounds of [`SqlBackend::unfinished_by_age`], ms: 1 s, 10 s, 1 min, 10 min.
pub const UNFINISHED_AGE_BOUNDS_MS: [i64; 4] = [1_000, 10_000, 60_000, 600_000];

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

/// The ledger's clock, unix ms: the database's, as this process last
/// measured its offset ([`SqlBackend::sync_clock`]), so replicas stamp rows
/// and leases from one clock without agreeing on theirs.
pub(super) fn now_ms() -> i64 {
    local_ms().saturating_add(CLOCK_OFFSET_MS.load(Ordering::Relaxed))
}

/// The database's clock minus this process's, ms (0 until measured).
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// `SWITCHBOARD_CLOCK_SKEW_MS`: shifts this process's own clock (read once),
/// to rehearse a replica whose clock is wrong; the ledger's times still
/// follow the database's.
fn local_ms() -> i64 {
    static SKEW_MS: OnceLock<i64> = OnceLock::new();
    let skew = *SKEW_MS.get_or_init(|| {
        std::env::var("SWITCHBOARD_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .saturating_add(skew)
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
        "gateway_ref, id, client, kind, source, destination, amount, currency, metadata, fingerprint, \
         status, reason, switch, switch_reference, attempts, requeries, last_error, \
         lease_token, response_status, response_body, created_at_ms, updated_at_ms"
    };
}
pub(super) use tx_columns;

macro_rules! account_columns {
    () => {
        "id, owner, currency, kind, balance, spenders"
    };
}
pub(super) use account_columns;

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TxRow {
    gateway_ref: String,
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
    lease_token: Option<String>,
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
            gateway_ref: GatewayRef::from_stored(self.gateway_ref),
            id: TransactionId::parse(&self.id).map_err(|e| corrupt(what, e))?,
            client: ClientId::parse(&self.client).map_err(|e| corrupt(what, e))?,
            kind: TxKind::from_db(&self.kind).ok_or_else(|| corrupt(what, &self.kind))?,
            source: account(self.source)?,
            destination: account(self.destination)?,
            amount: Amount::stored(self.amount).ok_or_else(|| corrupt(what, self.amount))?,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt(what, e))?,
            metadata: json(self.metadata)?,
            fingerprint: self.fingerprint,
            status: TxStatus::from_db(&self.status).ok_or_else(|| corrupt(what, &self.status))?,
            reason: self
                .reason
                .map(|r| ReleaseReason::parse(&r).ok_or_else(|| corrupt(what, r)))
                .transpose()?,
            switch: self
                .switch
                .map(|s| SwitchName::parse(&s).map_err(|e| corrupt(what, e)))
                .transpose()?,
            switch_reference: self.switch_reference,
            attempts: count(self.attempts)?,
            requeries: count(self.requeries)?,
            last_error: self.last_error,
            lease_token: self.lease_token.map(LeaseToken::from_stored),
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
    /// JSON array of client ids, `["*"]`, or NULL (the owner alone).
    spenders: Option<String>,
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
            owner: ClientId::parse(&self.owner).map_err(|e| corrupt(what, e))?,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt(what, e))?,
            kind: match self.kind.as_str() {
                "customer" => AccountKind::Customer,
                "settlement" => AccountKind::Settlement,
                other => return Err(corrupt(what, other)),
            },
            balance: self.balance,
            spenders: stored_spenders(self.spenders.as_deref()).map_err(|e| corrupt(what, e))?,
        })
    }

    /// `client` may spend from it: its owner, or a named spender.
    fn spendable_by(&self, client: &ClientId) -> Result<bool, LedgerError> {
        if self.owner == client.as_str() {
            return Ok(true);
        }
        let spenders =
            stored_spenders(self.spenders.as_deref()).map_err(|e| corrupt("account", e))?;
        Ok(spenders.allows(client))
    }
}

/// [`Spenders`] as stored in `accounts.spenders`.
pub(super) fn spenders_column(s: &Spenders) -> Option<String> {
    match s {
        Spenders::OwnerOnly => None,
        other => Some(serde_json::Value::from(other.to_list()).to_string()),
    }
}

fn stored_spenders(raw: Option<&str>) -> Result<Spenders, String> {
    let Some(raw) = raw else {
        return Ok(Spenders::OwnerOnly);
    };
    let list: Vec<String> = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    Spenders::parse(&list, usize::MAX).map_err(|e| e.to_string())
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AttemptRow {
    attempt_no: i64,
    switch: String,
    started_at_ms: i64,
    finished_at_ms: Option<i64>,
    outcome: Option<String>,
    error: Option<String>,
}

impl AttemptRow {
    pub(super) fn into_record(self) -> Result<AttemptRecord, LedgerError> {
        let what = "attempt";
        Ok(AttemptRecord {
            attempt_no: u32::try_from(self.attempt_no).map_err(|e| corrupt(what, e))?,
            switch: SwitchName::parse(&self.switch).map_err(|e| corrupt(what, e))?,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            outcome: self
                .outcome
                .map(|o| AttemptOutcome::parse(&o).ok_or_else(|| corrupt(what, o)))
                .transpose()?,
            error: self.error,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct PostingRow {
    id: i64,
    gateway_ref: Option<String>,
    account_id: String,
    amount: i64,
    created_at_ms: i64,
}

impl PostingRow {
    fn into_record(self) -> Result<PostingRecord, LedgerError> {
        let what = "posting";
        Ok(PostingRecord {
            id: self.id,
            gateway_ref: self.gateway_ref.map(GatewayRef::from_stored),
            account: AccountId::parse(&self.account_id).map_err(|e| corrupt(what, e))?,
            amount: self.amount,
            created_at_ms: self.created_at_ms,
        })
    }
}

/// A value bound to a statement whose text is built at run time.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// Binds `args`, in order, to a query.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Text(t) => query.bind(t),
                Arg::Int(n) => query.bind(n),
            };
        }
        query
    }};
}
pub(super) use bind_args;

/// The column that breaks ties of `created_at_ms` in the history's order
/// (and in its indexes and cursors): the transactions' primary key, the
/// gateway's reference, unique among all the rows a page may range over (a
/// client's `id` is not, across clients).
const TX_KEY: &str = "gateway_ref";

/// How far a transactions page reads (see [`HistoryStatements`]).
#[derive(Debug)]
pub(super) enum Reach {
    /// Not filtered: the page's rows are the range's first.
    Unfiltered,
    /// Filtered, and the range holds no more than the bound: all of it.
    Whole,
    /// Filtered: down to this key, `(created_at_ms, gateway_ref)`.
    UpTo(i64, String),
}

/// The statements of a transactions page, built from fixed fragments (each
/// with its `$N`) for the conditions the query names.
///
/// The *range* is what an index orders: the scope's (`client` leads
/// `transactions_client_created_at_ms`; `Scope::All` reads
/// `transactions_created_at_ms`, migration 0008), `from`/`to` and the
/// cursor, newest first. `accountId` and `status` *filter* the rows of the
/// range; no index serves them (each index on `transactions` costs every
/// write), so a filtered page first finds how far `scan_rows_max` rows of
/// the range reach ([`HistoryStatements::boundary`], an index-only read of
/// the keys) and reads no further: its work is bounded however rare the
/// filtered rows are, and a page may come back short, even empty, with a
/// cursor to go on from (only when the range goes on past the bound).
pub(super) struct HistoryStatements<'q> {
    /// When filtered: the keys of the `scan_rows_max`-th row of the range
    /// and the next (if the second exists, the page reads down to the first).
    boundary: Option<(String, Vec<Arg<'q>>)>,
    /// The rows: one more than the page holds (so the page knows whether
    /// another follows); with a boundary, `$1`, `$2` are its key
    /// ([`HistoryStatements::rows_args`] binds it).
    rows: (String, Vec<Arg<'q>>),
}

impl<'q> HistoryStatements<'q> {
    fn new(q: &'q HistoryQuery) -> Self {
        let filtered = q.account.is_some() || q.status.is_some();
        let boundary = filtered.then(|| {
            let mut args = Vec::new();
            let range = Self::range(q, &mut args);
            args.push(Arg::Int(i64::from(q.scan_rows_max.max(1)) - 1));
            let sql = format!(
                "SELECT created_at_ms, {TX_KEY} FROM transactions{} \
                 ORDER BY created_at_ms DESC, {TX_KEY} DESC LIMIT 2 OFFSET ${}",
                Self::clause(&range),
                args.len()
            );
            (sql, args)
        });
        // With a boundary, its key comes first, as `$1` and `$2` (the plain
        // `created_at_ms` bound beside the row comparison is for the
        // planner, which estimates it well and a row comparison poorly).
        let mut args = Vec::new();
        let mut conditions = Vec::new();
        if filtered {
            args.extend([Arg::Int(i64::MIN), Arg::Text("")]);
            conditions.push(format!(
                "(created_at_ms, {TX_KEY}) >= ($1, $2) AND created_at_ms >= $1"
            ));
        }
        conditions.extend(Self::range(q, &mut args));
        if let Some(account) = &q.account {
            args.push(Arg::Text(account.as_str()));
            let n = args.len();
            conditions.push(format!("(source = ${n} OR destination = ${n})"));
        }
        if let Some(status) = q.status {
            args.push(Arg::Text(status.as_str()));
            conditions.push(format!("status = ${}", args.len()));
        }
        args.push(Arg::Int(i64::from(q.limit.max(1)) + 1));
        let sql = format!(
            "SELECT {} FROM transactions{} ORDER BY created_at_ms DESC, {TX_KEY} DESC LIMIT ${}",
            tx_columns!(),
            Self::clause(&conditions),
            args.len()
        );
        Self {
            boundary,
            rows: (sql, args),
        }
    }

    /// The conditions of the range, their values pushed onto `args`.
    fn range(q: &'q HistoryQuery, args: &mut Vec<Arg<'q>>) -> Vec<String> {
        let mut conditions = Vec::new();
        if let Scope::Client(client) = &q.scope {
            args.push(Arg::Text(client.as_str()));
            conditions.push(format!("client = ${}", args.len()));
        }
        if let Some(from) = q.from_ms {
            args.push(Arg::Int(from));
            conditions.push(format!("created_at_ms >= ${}", args.len()));
        }
        if let Some(to) = q.to_ms {
            args.push(Arg::Int(to));
            conditions.push(format!("created_at_ms < ${}", args.len()));
        }
        if let Some(after) = &q.after {
            args.push(Arg::Int(after.created_at_ms));
            args.push(Arg::Text(after.key.as_str()));
            let n = args.len();
            conditions.push(format!(
                "(created_at_ms, {TX_KEY}) < (${t}, ${n}) AND created_at_ms <= ${t}",
                t = n - 1
            ));
        }
        conditions
    }

    /// The values of the rows statement, the boundary's key first when
    /// filtered (the least key there is, when the page reads the whole range).
    fn rows_args<'a>(&'a self, reach: &'a Reach) -> Vec<Arg<'a>> {
        let mut args = self.rows.1.clone();
        if let (Reach::UpTo(created_at_ms, id), [at, key, ..]) = (reach, args.as_mut_slice()) {
            *at = Arg::Int(*created_at_ms);
            *key = Arg::Text(id.as_str());
        }
        args
    }

    fn clause(conditions: &[String]) -> String {
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }
}

/// A page of an account's postings: a range of `postings_account_id_id`.
const STATEMENT_PAGE: &str = "SELECT id, gateway_ref, account_id, amount, created_at_ms \
     FROM postings WHERE account_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3";

fn statement_args(q: &StatementQuery) -> [Arg<'_>; 3] {
    [
        Arg::Text(q.account.as_str()),
        Arg::Int(q.after.map_or(i64::MAX, |c| c.id)),
        Arg::Int(i64::from(q.limit.max(1)) + 1),
    ]
}

/// The page of `rows` read with one row more than `limit`: at most `limit`
/// rows, and the cursor of the last when more follow.
fn page_of<T, C>(mut rows: Vec<T>, limit: u32, cursor: impl Fn(&T) -> C) -> Page<T, C> {
    let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(cursor) } else { None };
    Page { rows, next }
}

/// Money may leave this account for `client`: it exists, is a customer
/// account the client owns or is a named spender of, in the request's
/// currency. Absent and not spendable are the same answer, so a client cannot
/// probe other clients' ids.
pub(super) fn check_spendable(
    row: Option<&AccountRow>,
    client: &ClientId,
    currency: &Currency,
) -> Result<(), LedgerError> {
    let row = row.ok_or(LedgerError::AccountNotFound)?;
    if row.kind != "customer" || !row.spendable_by(client)? {
        return Err(LedgerError::AccountNotFound);
    }
    check_currency(row, currency)
}

/// The account is `client`'s own customer account in the request's currency
/// (a credit lands only there). Absent and not owned answer alike.
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
        gateway_ref: GatewayRef::of(client, &req.id),
        id: req.id.clone(),
        client: client.clone(),
        kind: req.movement.kind(),
        source: req.movement.source().cloned(),
        destination: req.movement.destination().cloned(),
        amount: req.amount,
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
        lease_token: None,
        response: None,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    }
}

/// One write transaction. SQLite's also holds this process's writer turn
/// until it ends; field order matters: the transaction drops (rolls back)
/// before the turn.
pub(super) struct WriteTx<DB: Database> {
    tx: Transaction<'static, DB>,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl<DB: Database> WriteTx<DB> {
    pub(super) fn new(tx: Transaction<'static, DB>, turn: Option<OwnedMutexGuard<()>>) -> Self {
        Self { tx, _turn: turn }
    }

    pub(super) fn conn(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// The connection type of a backend's database.
type Conn<B> = <<B as SqlBackend>::Db as Database>::Connection;

/// A backend (Postgres, SQLite), and the one-at-a-time operations written
/// once over it. The `where` clause is what the operations need of the
/// database; the required items are the backend's differences.
pub(super) trait SqlBackend: Sized + Sync
where
    for<'c> &'c mut Conn<Self>: Executor<'c, Database = Self::Db>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
    for<'a> &'a str: Encode<'a, Self::Db> + Type<Self::Db>,
    for<'a> Option<&'a str>: Encode<'a, Self::Db>,
    for<'a> i64: Encode<'a, Self::Db> + Type<Self::Db>,
    (i64,): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    (i64, i64): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    (i64, String): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    (String,): for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    TxRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    AccountRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    AttemptRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
    PostingRow: for<'r> FromRow<'r, <Self::Db as Database>::Row>,
{
    type Db: Database;

    /// The row-lock clause of the reconciler's claim subquery (empty where
    /// the whole database is locked for writing).
    const CLAIM_LOCK: &'static str;

    /// The database's clock now, unix ms, as one `SELECT`.
    const DB_NOW_MS: &'static str;

    fn pool(&self) -> &Pool<Self::Db>;

    /// `database.conflict_retries_max`.
    fn retries_max(&self) -> u32;

    /// A write transaction, begun the backend's way.
    async fn begin_write(&self) -> Result<WriteTx<Self::Db>, sqlx::Error>;

    /// Which database errors abort a transaction that is safe to rerun.
    fn is_conflict(e: &sqlx::Error) -> bool;

    /// The row count of a statement (not part of sqlx's `Database` trait).
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// The database's plan of `sql` with `args`, as text, one line per node:
    /// Postgres' `EXPLAIN ANALYZE` (it runs the statement), SQLite's
    /// `EXPLAIN QUERY PLAN`.
    async fn explain(&self, sql: &str, args: &[Arg<'_>]) -> Result<String, sqlx::Error>;

    // ---- the operations ----

    /// Measures the database clock against this process's and keeps the
    /// offset for [`now_ms`]; returns it, ms.
    async fn sync_clock(&self) -> Result<i64, LedgerError> {
        let before = local_ms();
        let db: i64 = sqlx::query_scalar(Self::DB_NOW_MS)
            .fetch_one(self.pool())
            .await
            .map_err(|e| unavailable("sync_clock", e))?;
        let after = local_ms();
        let offset = db - (before / 2 + after / 2);
        CLOCK_OFFSET_MS.store(offset, Ordering::Relaxed);
        Ok(offset)
    }

    /// `SELECT 1`, for `/readyz`.
    async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(drop)
            .map_err(|e| unavailable("ping", e))
    }

    async fn close(&self) {
        self.pool().close().await;
    }

    async fn create_account(&self, new: &NewAccount) -> Result<Account, LedgerError> {
        if new.opening_balance < 0 {
            return Err(LedgerError::InvalidState(
                "opening balance must not be negative".into(),
            ));
        }
        if is_system_id(&new.id) {
            return Err(LedgerError::AccountExists);
        }
        with_retries(
            "create_account",
            self.retries_max(),
            Self::is_conflict,
            move || self.create_account_once(new),
        )
        .await
    }

    async fn create_account_once(&self, new: &NewAccount) -> Result<Account, Fail> {
        let now = now_ms();
        let equity = AccountId::equity(&new.currency);
        let mut tx = self.begin_write().await?;
        let spenders = spenders_column(&new.spenders);
        let inserted = sqlx::query(
            "INSERT INTO accounts (id, owner, currency, kind, balance, created_at_ms, spenders) \
             VALUES ($1, $2, $3, 'customer', $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(new.id.as_str())
        .bind(new.owner.as_str())
        .bind(new.currency.as_str())
        .bind(new.opening_balance)
        .bind(now)
        .bind(spenders.as_deref())
        .execute(tx.conn())
        .await?;
        if Self::rows_affected(&inserted) == 0 {
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
            // An opening balance has no transaction row: its postings carry a
            // NULL gateway_ref.
            sqlx::query(
                "INSERT INTO postings (gateway_ref, account_id, amount, created_at_ms) \
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
            owner: new.owner.clone(),
            currency: new.currency.clone(),
            kind: AccountKind::Customer,
            balance: new.opening_balance,
            spenders: new.spenders.clone(),
        })
    }

    /// Replaces who besides the owner may spend from a customer account.
    async fn set_spenders(
        &self,
        id: &AccountId,
        spenders: &Spenders,
    ) -> Result<Option<Account>, LedgerError> {
        let column = spenders_column(spenders);
        with_retries(
            "set_spenders",
            self.retries_max(),
            Self::is_conflict,
            move || {
                let column = column.clone();
                async move {
                    let row: Option<AccountRow> = sqlx::query_as(concat!(
                        "UPDATE accounts SET spenders = $2 WHERE id = $1 AND kind = 'customer' \
                         RETURNING ",
                        account_columns!()
                    ))
                    .bind(id.as_str())
                    .bind(column.as_deref())
                    .fetch_optional(self.pool())
                    .await?;
                    Ok(row.map(AccountRow::into_account).transpose()?)
                }
            },
        )
        .await
    }

    async fn account(&self, id: &AccountId) -> Result<Option<Account>, LedgerError> {
        with_retries(
            "account",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let row: Option<AccountRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM accounts WHERE id = $1"
                ))
                .bind(id.as_str())
                .fetch_optional(self.pool())
                .await?;
                Ok(row.map(AccountRow::into_account).transpose()?)
            },
        )
        .await
    }

    async fn record_attempt(
        &self,
        gateway_ref: &GatewayRef,
        switch: &SwitchName,
    ) -> Result<u32, LedgerError> {
        with_retries(
            "record_attempt",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let now = now_ms();
                let mut tx = self.begin_write().await?;
                let attempts: Option<i64> = sqlx::query_scalar(
                    "UPDATE transactions \
                 SET attempts = attempts + 1, switch = $2, updated_at_ms = $3 \
                 WHERE gateway_ref = $1 AND status IN ('reserved', 'pending') \
                 AND (lease_until_ms IS NULL OR lease_until_ms < $3) \
                 RETURNING attempts",
                )
                .bind(gateway_ref.as_str())
                .bind(switch.as_str())
                .bind(now)
                .fetch_optional(tx.conn())
                .await?;
                let Some(attempt_no) = attempts else {
                    return Err(
                        Self::not_in_flight(tx.conn(), gateway_ref, "record_attempt").await,
                    );
                };
                sqlx::query(
                    "INSERT INTO attempts (gateway_ref, attempt_no, switch, started_at_ms) \
                 VALUES ($1, $2, $3, $4)",
                )
                .bind(gateway_ref.as_str())
                .bind(attempt_no)
                .bind(switch.as_str())
                .bind(now)
                .execute(tx.conn())
                .await?;
                tx.commit().await?;
                u32::try_from(attempt_no)
                    .map_err(|e| LedgerError::InvalidState(e.to_string()).into())
            },
        )
        .await
    }

    async fn finish_attempt(
        &self,
        gateway_ref: &GatewayRef,
        attempt_no: u32,
        outcome: &str,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        with_retries(
            "finish_attempt",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE attempts SET finished_at_ms = $3, outcome = $4, error = $5 \
                 WHERE gateway_ref = $1 AND attempt_no = $2",
                )
                .bind(gateway_ref.as_str())
                .bind(i64::from(attempt_no))
                .bind(now_ms())
                .bind(outcome)
                .bind(error)
                .execute(tx.conn())
                .await?;
                if Self::rows_affected(&done) != 1 {
                    return Err(LedgerError::TransactionNotFound.into());
                }
                tx.commit().await?;
                Ok(())
            },
        )
        .await
    }

    async fn mark_pending(
        &self,
        gateway_ref: &GatewayRef,
        last_error: &str,
    ) -> Result<TransactionRecord, LedgerError> {
        const SQL: &str = concat!(
            "UPDATE transactions \
             SET status = 'pending', last_error = $2, updated_at_ms = $3 \
             WHERE gateway_ref = $1 AND status IN ('reserved', 'pending') RETURNING ",
            tx_columns!()
        );
        with_retries(
            "mark_pending",
            self.retries_max(),
            Self::is_conflict,
            || self.update_in_flight("mark_pending", SQL, gateway_ref, last_error),
        )
        .await
    }

    async fn transaction(
        &self,
        client: &ClientId,
        id: &TransactionId,
    ) -> Result<Option<TransactionRecord>, LedgerError> {
        const SQL: &str = concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE id = $1 AND client = $2"
        );
        let args = [Arg::Text(id.as_str()), Arg::Text(client.as_str())];
        Ok(self
            .read_transactions("transaction", SQL, &args)
            .await?
            .pop())
    }

    async fn transactions_with_id(
        &self,
        id: &TransactionId,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, LedgerError> {
        const SQL: &str = concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE id = $1 ORDER BY client LIMIT $2"
        );
        let args = [Arg::Text(id.as_str()), Arg::Int(i64::from(limit))];
        self.read_transactions("transactions_with_id", SQL, &args)
            .await
    }

    async fn transaction_by_ref(
        &self,
        gateway_ref: &GatewayRef,
    ) -> Result<Option<TransactionRecord>, LedgerError> {
        const SQL: &str = concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE gateway_ref = $1"
        );
        let args = [Arg::Text(gateway_ref.as_str())];
        Ok(self
            .read_transactions("transaction_by_ref", SQL, &args)
            .await?
            .pop())
    }

    /// The transaction rows `sql` (a `SELECT` of [`tx_columns`]) finds with
    /// `args`, read with the retry loop.
    async fn read_transactions(
        &self,
        op: &'static str,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<TransactionRecord>, LedgerError> {
        with_retries(
            op,
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let query = sqlx::query_as::<Self::Db, TxRow>(sql);
                Ok(bind_args!(query, args)
                    .fetch_all(self.pool())
                    .await?
                    .into_iter()
                    .map(TxRow::into_record)
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )
        .await
    }

    async fn attempts(&self, gateway_ref: &GatewayRef) -> Result<Vec<AttemptRecord>, LedgerError> {
        with_retries(
            "attempts",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let rows: Vec<AttemptRow> = sqlx::query_as(
                    "SELECT attempt_no, switch, started_at_ms, finished_at_ms, outcome, error \
                 FROM attempts WHERE gateway_ref = $1 ORDER BY attempt_no",
                )
                .bind(gateway_ref.as_str())
                .fetch_all(self.pool())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(AttemptRow::into_record)
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )
        .await
    }

    /// One page of transactions, newest first (see [`HistoryStatements`]).
    async fn transactions_page(
        &self,
        q: &HistoryQuery,
    ) -> Result<Page<TransactionRecord, TransactionCursor>, LedgerError> {
        let statements = HistoryStatements::new(q);
        let statements = &statements;
        with_retries(
            "transactions_page",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let reach = self.history_reach(statements).await?;
                let (sql, _) = &statements.rows;
                let args = statements.rows_args(&reach);
                let query = sqlx::query_as::<Self::Db, TxRow>(AssertSqlSafe(sql.as_str()));
                let rows = bind_args!(query, &args)
                    .fetch_all(self.pool())
                    .await?
                    .into_iter()
                    .map(TxRow::into_record)
                    .collect::<Result<Vec<_>, _>>()?;
                let mut page = page_of(rows, q.limit, TransactionCursor::of);
                // Short of a full page, but the bound stopped the read before
                // the range's end: the next page goes on from the boundary.
                if let (None, Reach::UpTo(created_at_ms, key)) = (&page.next, reach) {
                    page.next = Some(TransactionCursor {
                        created_at_ms,
                        key: GatewayRef::from_stored(key),
                    });
                }
                Ok(page)
            },
        )
        .await
    }

    /// How far a filtered page may read: down to the key of the range's
    /// `scan_rows_max`-th row when another follows it, else all of it.
    async fn history_reach(&self, statements: &HistoryStatements<'_>) -> Result<Reach, Fail> {
        let Some((sql, args)) = &statements.boundary else {
            return Ok(Reach::Unfiltered);
        };
        let query = sqlx::query_as::<Self::Db, (i64, String)>(AssertSqlSafe(sql.as_str()));
        let keys = bind_args!(query, args).fetch_all(self.pool()).await?;
        Ok(match <[_; 2]>::try_from(keys) {
            Ok([(created_at_ms, id), _]) => Reach::UpTo(created_at_ms, id),
            Err(_) => Reach::Whole,
        })
    }

    /// The database's plans of a transactions page's statements, as run
    /// ([`SqlBackend::explain`]), for the tests and the docs that show them.
    async fn explain_transactions_page(
        &self,
        q: &HistoryQuery,
    ) -> Result<Vec<String>, LedgerError> {
        let statements = HistoryStatements::new(q);
        let explain = async {
            let mut plans = Vec::new();
            let reach = self.history_reach(&statements).await?;
            let rows_args = statements.rows_args(&reach);
            let runs = statements
                .boundary
                .iter()
                .map(|(sql, args)| (sql, args.clone()))
                .chain([(&statements.rows.0, rows_args)]);
            for (sql, args) in runs {
                plans.push(self.explain(sql, &args).await?);
            }
            Ok::<_, Fail>(plans)
        };
        match explain.await {
            Ok(plans) => Ok(plans),
            Err(Fail::Db(e)) => Err(unavailable("explain_transactions_page", e)),
            Err(Fail::Ledger(e)) => Err(e),
            Err(Fail::Conflict(why)) => Err(LedgerError::Unavailable(why.into())),
        }
    }

    /// The database's plan of a statement page, as run (see
    /// [`SqlBackend::explain_transactions_page`]).
    async fn explain_postings_page(&self, q: &StatementQuery) -> Result<String, LedgerError> {
        self.explain(STATEMENT_PAGE, &statement_args(q))
            .await
            .map_err(|e| unavailable("explain_postings_page", e))
    }

    /// One page of an account's postings, newest first: a range of
    /// `postings_account_id_id` (migration 0008).
    async fn postings_page(
        &self,
        q: &StatementQuery,
    ) -> Result<Page<PostingRecord, PostingCursor>, LedgerError> {
        with_retries(
            "postings_page",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let query = sqlx::query_as::<Self::Db, PostingRow>(STATEMENT_PAGE);
                let rows = bind_args!(query, &statement_args(q))
                    .fetch_all(self.pool())
                    .await?;
                let rows = rows
                    .into_iter()
                    .map(PostingRow::into_record)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(page_of(rows, q.limit, PostingCursor::of))
            },
        )
        .await
    }

    async fn balance_sum(&self, currency: &Currency) -> Result<i64, LedgerError> {
        with_retries(
            "balance_sum",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                // Postgres sums BIGINT into NUMERIC: cast back.
                let sum: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) \
                 FROM accounts WHERE currency = $1",
                )
                .bind(currency.as_str())
                .fetch_one(self.pool())
                .await?;
                Ok(sum)
            },
        )
        .await
    }

    async fn count_unfinished(&self) -> Result<i64, LedgerError> {
        with_retries(
            "count_unfinished",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM transactions WHERE status IN ('reserved', 'pending')",
                )
                .fetch_one(self.pool())
                .await?;
                Ok(n)
            },
        )
        .await
    }

    /// Unfinished transactions by age since creation: how many are younger
    /// than each of [`UNFINISHED_AGE_BOUNDS_MS`], and older than the last.
    async fn unfinished_by_age(&self) -> Result<Vec<i64>, LedgerError> {
        with_retries(
            "unfinished_by_age",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let [a, b, c, d] = UNFINISHED_AGE_BOUNDS_MS;
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT CASE WHEN $1 - created_at_ms < $2 THEN 0 \
                                 WHEN $1 - created_at_ms < $3 THEN 1 \
                                 WHEN $1 - created_at_ms < $4 THEN 2 \
                                 WHEN $1 - created_at_ms < $5 THEN 3 ELSE 4 END AS age, \
                            COUNT(*) \
                     FROM transactions WHERE status IN ('reserved', 'pending') GROUP BY 1",
                )
                .bind(now_ms())
                .bind(a)
                .bind(b)
                .bind(c)
                .bind(d)
                .fetch_all(self.pool())
                .await?;
                let mut counts = vec![0; UNFINISHED_AGE_BOUNDS_MS.len() + 1];
                for (age, n) in rows {
                    if let Some(slot) = usize::try_from(age).ok().and_then(|i| counts.get_mut(i)) {
                        *slot = n;
                    }
                }
                Ok(counts)
            },
        )
        .await
    }

    async fn claim_stale(
        &self,
        older_than_ms: i64,
        lease_ms: i64,
        limit: u32,
        token: &LeaseToken,
    ) -> Result<Vec<TransactionRecord>, LedgerError> {
        // The lease check is in the locking subquery: a row another claimer
        // holds is skipped (Postgres) or, once that claim commits, no longer
        // matches.
        let sql = format!(
            "UPDATE transactions SET lease_until_ms = $1, lease_token = $5 \
             WHERE gateway_ref IN (SELECT gateway_ref FROM transactions \
                 WHERE status IN ('reserved', 'pending') \
                 AND updated_at_ms <= $2 \
                 AND (lease_until_ms IS NULL OR lease_until_ms <= $3) \
                 ORDER BY updated_at_ms LIMIT $4 {}) RETURNING {}",
            Self::CLAIM_LOCK,
            tx_columns!()
        );
        let sql = sql.as_str();
        with_retries(
            "claim_stale",
            self.retries_max(),
            Self::is_conflict,
            move || async move {
                let now = now_ms();
                let mut tx = self.begin_write().await?;
                let rows: Vec<TxRow> = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(now.saturating_add(lease_ms))
                    .bind(now.saturating_sub(older_than_ms))
                    .bind(now)
                    .bind(i64::from(limit))
                    .bind(token.as_str())
                    .fetch_all(tx.conn())
                    .await?;
                tx.commit().await?;
                Ok(rows
                    .into_iter()
                    .map(TxRow::into_record)
                    .collect::<Result<Vec<_>, _>>()?)
            },
        )
        .await
    }

    async fn note_requery(
        &self,
        gateway_ref: &GatewayRef,
        error: &str,
    ) -> Result<TransactionRecord, LedgerError> {
        const SQL: &str = concat!(
            "UPDATE transactions \
             SET requeries = requeries + 1, last_error = $2, status = 'pending', \
                 lease_until_ms = NULL, updated_at_ms = $3 \
             WHERE gateway_ref = $1 AND status IN ('reserved', 'pending') RETURNING ",
            tx_columns!()
        );
        with_retries(
            "note_requery",
            self.retries_max(),
            Self::is_conflict,
            || self.update_in_flight("note_requery", SQL, gateway_ref, error),
        )
        .await
    }

    // ---- helpers, each a statement or three inside a caller's transaction ----

    /// One try of `sql`, an update of an in-flight row (`$1` its reference, `$2`
    /// `text`, `$3` now) returning the row: the row as updated, or why the
    /// update matched nothing.
    async fn update_in_flight(
        &self,
        op: &'static str,
        sql: &'static str,
        gateway_ref: &GatewayRef,
        text: &str,
    ) -> Result<TransactionRecord, Fail> {
        let mut tx = self.begin_write().await?;
        let row: Option<TxRow> = sqlx::query_as(sql)
            .bind(gateway_ref.as_str())
            .bind(text)
            .bind(now_ms())
            .fetch_optional(tx.conn())
            .await?;
        let Some(row) = row else {
            return Err(Self::not_in_flight(tx.conn(), gateway_ref, op).await);
        };
        tx.commit().await?;
        Ok(row.into_record()?)
    }

    /// Why a write aimed at an in-flight row changed nothing.
    async fn not_in_flight(conn: &mut Conn<Self>, gateway_ref: &GatewayRef, op: &str) -> Fail {
        let row: Result<Option<TxRow>, sqlx::Error> = sqlx::query_as(concat!(
            "SELECT ",
            tx_columns!(),
            " FROM transactions WHERE gateway_ref = $1"
        ))
        .bind(gateway_ref.as_str())
        .fetch_optional(&mut *conn)
        .await;
        match row.map(|r| r.map(TxRow::into_record)) {
            Ok(None) => LedgerError::TransactionNotFound.into(),
            Ok(Some(Ok(row))) => {
                LedgerError::InvalidState(format!("{op} of a {} transaction", row.status.as_str()))
                    .into()
            }
            Ok(Some(Err(e))) => e.into(),
            Err(e) => e.into(),
        }
    }

    /// Adds `delta` to a system (settlement or equity) account, creating it
    /// on first use. Updates first: the account exists on every call but the
    /// first, so the common case is one statement.
    async fn adjust_system_account(
        conn: &mut Conn<Self>,
        id: &AccountId,
        currency: &Currency,
        delta: i64,
        now_ms: i64,
    ) -> Result<(), Fail> {
        const UPDATE: &str = "UPDATE accounts SET balance = balance + $1 \
             WHERE id = $2 AND kind = 'settlement' AND currency = $3";
        let done = sqlx::query(UPDATE)
            .bind(delta)
            .bind(id.as_str())
            .bind(currency.as_str())
            .execute(&mut *conn)
            .await?;
        if Self::rows_affected(&done) == 1 {
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
        let done = sqlx::query(UPDATE)
            .bind(delta)
            .bind(id.as_str())
            .bind(currency.as_str())
            .execute(&mut *conn)
            .await?;
        if Self::rows_affected(&done) != 1 {
            return Err(LedgerError::InvalidState(format!(
                "account {id} is not a {currency} system account"
            ))
            .into());
        }
        Ok(())
    }
}
