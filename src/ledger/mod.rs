//! The ledger: accounts, transactions, postings and attempts, behind one
//! interface with two backends — Postgres (production) and SQLite (embedded,
//! `demo` and single-node use). Only this module speaks SQL.
//!
//! Every operation is one database transaction, retried as a whole (up to
//! `database.conflict_retries_max`, with jittered backoff) when the database
//! aborts it for a deadlock, a serialization failure or a busy SQLite file.
//! Anything else the database says becomes [`LedgerError::Unavailable`].
//!
//! **Invariants** the schema and this code keep together:
//! - Customer balances never go below zero (`CHECK`, and a guarded
//!   `UPDATE … WHERE balance >= $amount` whose row count is asserted).
//! - Per currency, the sum of all balances plus the amounts held by in-flight
//!   (`reserved`/`pending`) debits and transfers is zero: opening balances come
//!   from the equity account, settlement accounts stand for money outside.
//! - Postings record completed movements only (written at `commit`, each set
//!   summing to zero); so for an account, `balance == sum(postings) − held`.
//! - A transaction row is final once `committed`, `declined` or `failed`, and a
//!   final row always carries the response replays get.
//! - Rows are never deleted, so a client's `transactionId` is never reusable
//!   by that client. Ids are per client (`UNIQUE (id, client)`); each row's
//!   key is its [`GatewayRef`], unique across clients, which is what every
//!   operation after `reserve` and every switch knows it by.
//! - Locks are taken in one order: transaction rows first (ascending
//!   reference), then accounts in ascending id order, so opposite transfers
//!   cannot deadlock.
//!
//! **Group commit.** The hot operations — `reserve` (with the first attempt)
//! and the finishing `commit`/`release` (with the attempt's outcome) — go
//! through bounded queues and are applied in batches, one database
//! transaction per batch (see [`group`]). The other operations (later
//! attempts, requeries, the reconciler's claims, reads) are one database
//! transaction each; the history reads (pages of transactions and of an
//! account's postings, see [`history`]) are one statement each.

mod group;
mod history;
mod postgres;
mod sql;
mod sqlite;
mod webhooks;

use std::fmt;
use std::sync::Arc;

pub use group::{AttemptEnd, Decision, GroupConfig};
pub use history::{
    BadCursor, HistoryQuery, Page, PostingCursor, PostingRecord, Scope, StatementQuery,
    TransactionCursor,
};
use sql::SqlBackend as _;
pub use sql::UNFINISHED_AGE_BOUNDS_MS;
use webhooks::WebhookSql as _;
pub use webhooks::{Delivery, DeliveryEnd, DeliveryStatus, Webhook};

use crate::config::DatabaseConfig;
use crate::domain::{
    AccountId, Amount, ClientId, Currency, GatewayRef, ReleaseReason, Spenders, SwitchName,
    TransactionId, TransactionRequest, TxKind, TxStatus, WebhookEvent,
};

/// What the ledger can refuse or fail with. The HTTP layer maps each variant to
/// one response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// Database down, pool acquire timeout, conflict retries exhausted
    /// → HTTP 503 ledger_unavailable
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// Account absent OR not owned by the client (indistinguishable on purpose)
    #[error("account not found")]
    AccountNotFound,
    #[error("account already exists")]
    AccountExists,
    #[error("account {account} is not in {currency}")]
    CurrencyMismatch {
        account: AccountId,
        currency: Currency,
    },
    #[error("transaction not found")]
    TransactionNotFound,
    /// e.g. commit of a transaction already declined: a bug or a race lost, never client input
    #[error("invalid transaction state: {0}")]
    InvalidState(String),
    /// A bound of the ledger's was reached (the message names it): the
    /// caller's request, refused whole.
    #[error("{0}")]
    LimitReached(String),
    /// A fenced commit or release by a reconciler whose lease was claimed by
    /// another since: the row is the other holder's; nothing was written.
    #[error("the reconciler lease was lost to another holder")]
    LeaseLost,
}

/// Who holds a reconciler lease: stamped on the rows a claim takes, checked
/// by that holder's commits and releases ([`Ledger::finish_leased`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token: 128 random bits, hex.
    pub fn new() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    pub(crate) fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LeaseToken {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A client's account: never below zero.
    Customer,
    /// Settlement (per switch and currency) and equity (per currency) accounts,
    /// owned by `system`: money outside the ledger, may go negative.
    Settlement,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::Settlement => "settlement",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub owner: ClientId,
    pub currency: Currency,
    pub kind: AccountKind,
    /// Minor units.
    pub balance: i64,
    /// Who besides the owner may spend from it.
    pub spenders: Spenders,
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub id: AccountId,
    pub owner: ClientId,
    pub currency: Currency,
    /// Minor units, >= 0; moved from the currency's equity account.
    pub opening_balance: i64,
    /// Who besides the owner may spend from it.
    pub spenders: Spenders,
}

/// The HTTP answer stored with a final transaction, replayed as is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransactionRecord {
    /// The gateway's reference: the row's key, what switches know it by.
    pub gateway_ref: GatewayRef,
    /// The client's `transactionId`, unique among that client's transactions.
    pub id: TransactionId,
    pub client: ClientId,
    pub kind: TxKind,
    /// debit: the account; transfer: from; credit: None
    pub source: Option<AccountId>,
    /// credit: the account; transfer: to; debit: None
    pub destination: Option<AccountId>,
    pub amount: Amount,
    pub currency: Currency,
    pub metadata: Option<serde_json::Value>,
    pub fingerprint: String,
    pub status: TxStatus,
    pub reason: Option<ReleaseReason>,
    pub switch: Option<SwitchName>,
    pub switch_reference: Option<String>,
    pub attempts: u32,
    pub requeries: u32,
    pub last_error: Option<String>,
    /// The reconciler claim that holds (or last held) the row.
    pub lease_token: Option<LeaseToken>,
    pub response: Option<StoredResponse>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempt_no: u32,
    pub switch: SwitchName,
    pub started_at_ms: i64,
    /// When its outcome was stored (the last time, if it was resolved later).
    pub finished_at_ms: Option<i64>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<String>,
}

/// Renders the response stored for replays, from the row as it will be stored
/// (status final). The row it sees has `response: None`.
pub type Render = fn(&TransactionRecord) -> StoredResponse;

#[derive(Debug, Clone)]
pub enum Reserved {
    /// New row inserted as `reserved`, money held (debit/transfer); forward it to a switch.
    Fresh(TransactionRecord),
    /// New row stored as `declined` / reason `insufficient_funds`, response = render(&row)
    /// stored in the same db transaction. Never forwarded.
    InsufficientFunds(TransactionRecord),
    /// The client already stored a transaction with this id: the stored row,
    /// untouched. The caller compares the fingerprint.
    Existing(TransactionRecord),
}

/// How one attempt on a switch ended, as stored in `attempts.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The switch approved it.
    Approved,
    /// The switch declined it (a business answer).
    Declined,
    /// The request provably never reached the switch.
    NotSent,
    /// The switch said `503 not_processed`, or a requery found nothing.
    NotProcessed,
    /// Sent, and no answer: the switch may or may not have processed it.
    Unknown,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Approved => "approved",
            AttemptOutcome::Declined => "declined",
            AttemptOutcome::NotSent => "not_sent",
            AttemptOutcome::NotProcessed => "not_processed",
            AttemptOutcome::Unknown => "unknown",
        }
    }

    /// A stored outcome; `None` for text no attempt writes.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            AttemptOutcome::Approved,
            AttemptOutcome::Declined,
            AttemptOutcome::NotSent,
            AttemptOutcome::NotProcessed,
            AttemptOutcome::Unknown,
        ]
        .into_iter()
        .find(|o| o.as_str() == raw)
    }
}

/// The ledger handle: cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Ledger {
    backend: Backend,
    /// The batch queues of the hot operations.
    group: Arc<group::Group>,
}

#[derive(Clone)]
enum Backend {
    Postgres(postgres::PgLedger),
    Sqlite(sqlite::SqliteLedger),
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("backend", &self.backend_name())
            .finish()
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident, $l:ident => $call:expr) => {
        match &$self.backend {
            Backend::Postgres($l) => $call,
            Backend::Sqlite($l) => $call,
        }
    };
}

impl Ledger {
    /// `postgres://…` or `sqlite:…` (the file is created if missing;
    /// `sqlite::memory:` is one connection that never closes).
    /// Group commit runs with its default bounds; see [`Ledger::connect_with`].
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Ledger, LedgerError> {
        Self::connect_with(cfg, GroupConfig::default()).await
    }

    /// Connects and starts the batch writers (Postgres: on a thread of
    /// their own, with their own `writers × 2` connections).
    pub async fn connect_with(
        cfg: &DatabaseConfig,
        batching: GroupConfig,
    ) -> Result<Ledger, LedgerError> {
        let (backend, group) = if cfg.is_postgres() {
            let l = postgres::PgLedger::connect(cfg, postgres::Session::Requests).await?;
            let group = group::Group::start_dedicated(cfg, batching).await?;
            (Backend::Postgres(l), group)
        } else {
            let l = sqlite::SqliteLedger::connect(cfg).await?;
            let store = group::Store::Sqlite(l.clone());
            let group = group::Group::start(store, batching, cfg.conflict_retries_max);
            (Backend::Sqlite(l), group)
        };
        let ledger = Ledger {
            backend,
            group: Arc::new(group),
        };
        ledger.sync_clock().await?;
        Ok(ledger)
    }

    /// Measures the database's clock again (the reconciler does, every
    /// pass): the ledger stamps rows and leases with it. Returns the
    /// database's clock minus this process's, ms.
    pub async fn sync_clock(&self) -> Result<i64, LedgerError> {
        dispatch!(self, l => l.sync_clock().await)
    }

    /// The ledger's own metrics (batch sizes and latency), for the
    /// application's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let m = self.group.metrics();
        vec![
            Box::new(m.batch_size.clone()),
            Box::new(m.batch_duration.clone()),
        ]
    }

    /// Applies the embedded migrations of this backend (`migrations/postgres`
    /// or `migrations/sqlite`).
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        dispatch!(self, l => l.migrate().await)
    }

    /// `SELECT 1`, for `/readyz`.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        dispatch!(self, l => l.ping().await)
    }

    /// Closes the pool: waits for checked-out connections to come back.
    pub async fn close(&self) {
        dispatch!(self, l => l.close().await)
    }

    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// A customer account, its opening balance moved from the currency's equity
    /// account. Ids starting with `settlement:` or `equity:` belong to the
    /// system and are refused as [`LedgerError::AccountExists`].
    pub async fn create_account(&self, new: &NewAccount) -> Result<Account, LedgerError> {
        dispatch!(self, l => l.create_account(new).await)
    }

    /// Replaces who besides the owner may spend from a customer account;
    /// `None`: no such customer account.
    pub async fn set_spenders(
        &self,
        id: &AccountId,
        spenders: &Spenders,
    ) -> Result<Option<Account>, LedgerError> {
        dispatch!(self, l => l.set_spenders(id, spenders).await)
    }

    pub async fn account(&self, id: &AccountId) -> Result<Option<Account>, LedgerError> {
        dispatch!(self, l => l.account(id).await)
    }

    /// Inserts the transaction and holds the money, in one database
    /// transaction (shared with the other reservations of its batch); see
    /// [`Reserved`]. Refusals (`AccountNotFound`, `CurrencyMismatch`) store
    /// nothing.
    pub async fn reserve(
        &self,
        client: &ClientId,
        req: &TransactionRequest,
        render: Render,
    ) -> Result<Reserved, LedgerError> {
        self.group.reserve(client, req, None, render).await
    }

    /// [`Ledger::reserve`], and when the transaction is admitted and
    /// `switch` is given, records its first attempt there in the same
    /// database transaction (write ahead: durable before the request leaves).
    /// A `Fresh` record then has `attempts == 1`.
    pub async fn reserve_with_attempt(
        &self,
        client: &ClientId,
        req: &TransactionRequest,
        switch: Option<&SwitchName>,
        render: Render,
    ) -> Result<Reserved, LedgerError> {
        self.group.reserve(client, req, switch, render).await
    }

    /// Records, durably, that the transaction is about to be sent to `switch`;
    /// returns the attempt number (1-based). Only while `reserved`/`pending`.
    pub async fn record_attempt(
        &self,
        gateway_ref: &GatewayRef,
        switch: &SwitchName,
    ) -> Result<u32, LedgerError> {
        dispatch!(self, l => l.record_attempt(gateway_ref, switch).await)
    }

    /// Stores how an attempt ended. A later call for the same attempt replaces
    /// the outcome (the reconciler resolves `unknown` ones).
    pub async fn finish_attempt(
        &self,
        gateway_ref: &GatewayRef,
        attempt_no: u32,
        outcome: AttemptOutcome,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        dispatch!(self, l => l.finish_attempt(gateway_ref, attempt_no, outcome.as_str(), error).await)
    }

    /// Completes the movement (see the module docs) and stores `committed` with
    /// its response. Idempotent: an already committed row comes back unchanged.
    pub async fn commit(
        &self,
        gateway_ref: &GatewayRef,
        switch: &SwitchName,
        reference: &str,
        render: Render,
    ) -> Result<TransactionRecord, LedgerError> {
        let decision = Decision::Commit {
            switch: switch.clone(),
            reference: reference.to_owned(),
        };
        self.finish(gateway_ref, decision, None, render).await
    }

    /// Gives held money back and stores the status `reason` implies, with
    /// `reason` and its response. Idempotent for the same final status.
    pub async fn release(
        &self,
        gateway_ref: &GatewayRef,
        reason: ReleaseReason,
        render: Render,
    ) -> Result<TransactionRecord, LedgerError> {
        let decision = Decision::Release { reason };
        self.finish(gateway_ref, decision, None, render).await
    }

    /// Commits or releases (see [`Ledger::commit`], [`Ledger::release`]) and
    /// stores how the deciding attempt ended, in one database transaction
    /// shared with the other finishes of its batch.
    pub async fn finish(
        &self,
        gateway_ref: &GatewayRef,
        decision: Decision,
        attempt: Option<AttemptEnd>,
        render: Render,
    ) -> Result<TransactionRecord, LedgerError> {
        self.group
            .finish(gateway_ref, decision, attempt, None, render)
            .await
    }

    /// [`Ledger::finish`] by the holder of a reconciler lease: refused with
    /// [`LedgerError::LeaseLost`], writing nothing, when the row's lease
    /// token is no longer `fence` (another claimer took it after this one's
    /// lease ran out). The check and the write are one locked batch.
    pub async fn finish_leased(
        &self,
        gateway_ref: &GatewayRef,
        decision: Decision,
        fence: &LeaseToken,
        render: Render,
    ) -> Result<TransactionRecord, LedgerError> {
        self.group
            .finish(gateway_ref, decision, None, Some(fence.clone()), render)
            .await
    }

    /// Outcome unknown: `reserved`/`pending` → `pending`, with `last_error`.
    pub async fn mark_pending(
        &self,
        gateway_ref: &GatewayRef,
        last_error: &str,
    ) -> Result<TransactionRecord, LedgerError> {
        dispatch!(self, l => l.mark_pending(gateway_ref, last_error).await)
    }

    /// The client's transaction with this id.
    pub async fn transaction(
        &self,
        client: &ClientId,
        id: &TransactionId,
    ) -> Result<Option<TransactionRecord>, LedgerError> {
        dispatch!(self, l => l.transaction(client, id).await)
    }

    /// Every client's transaction with this id, at most `limit` (for an
    /// auditor, who may read any client's), by client.
    pub async fn transactions_with_id(
        &self,
        id: &TransactionId,
        limit: u32,
    ) -> Result<Vec<TransactionRecord>, LedgerError> {
        dispatch!(self, l => l.transactions_with_id(id, limit).await)
    }

    /// The transaction with this reference.
    pub async fn transaction_by_ref(
        &self,
        gateway_ref: &GatewayRef,
    ) -> Result<Option<TransactionRecord>, LedgerError> {
        dispatch!(self, l => l.transaction_by_ref(gateway_ref).await)
    }

    /// The attempts of a transaction, in order.
    pub async fn attempts(
        &self,
        gateway_ref: &GatewayRef,
    ) -> Result<Vec<AttemptRecord>, LedgerError> {
        dispatch!(self, l => l.attempts(gateway_ref).await)
    }

    /// One page of transactions, newest first, as `q` asks (keyset
    /// pagination: see [`HistoryQuery`]).
    pub async fn transactions_page(
        &self,
        q: &HistoryQuery,
    ) -> Result<Page<TransactionRecord, TransactionCursor>, LedgerError> {
        dispatch!(self, l => l.transactions_page(q).await)
    }

    /// The database's plans of [`Ledger::transactions_page`]'s statements
    /// for `q`, one text per statement: on Postgres `EXPLAIN ANALYZE` (the
    /// statements run), on SQLite `EXPLAIN QUERY PLAN`. For the tests that
    /// hold the history to index range scans, and for operators checking a
    /// plan.
    pub async fn explain_transactions_page(
        &self,
        q: &HistoryQuery,
    ) -> Result<Vec<String>, LedgerError> {
        dispatch!(self, l => l.explain_transactions_page(q).await)
    }

    /// The database's plan of [`Ledger::postings_page`]'s statement (see
    /// [`Ledger::explain_transactions_page`]).
    pub async fn explain_postings_page(&self, q: &StatementQuery) -> Result<String, LedgerError> {
        dispatch!(self, l => l.explain_postings_page(q).await)
    }

    /// One page of an account's postings (its statement), newest first.
    /// Who may read it is the caller's to check.
    pub async fn postings_page(
        &self,
        q: &StatementQuery,
    ) -> Result<Page<PostingRecord, PostingCursor>, LedgerError> {
        dispatch!(self, l => l.postings_page(q).await)
    }

    /// Sum of the balances of all accounts in that currency (customer,
    /// settlement and equity): zero when nothing is in flight.
    pub async fn balance_sum(&self, currency: &Currency) -> Result<i64, LedgerError> {
        dispatch!(self, l => l.balance_sum(currency).await)
    }

    /// How many transactions are in flight (`reserved` or `pending`), for a
    /// gauge.
    pub async fn count_unfinished(&self) -> Result<i64, LedgerError> {
        dispatch!(self, l => l.count_unfinished().await)
    }

    /// Unfinished (`reserved` or `pending`) transactions by age since
    /// creation: one count per bucket below each of
    /// [`UNFINISHED_AGE_BOUNDS_MS`], then the older ones.
    pub async fn unfinished_by_age(&self) -> Result<Vec<i64>, LedgerError> {
        dispatch!(self, l => l.unfinished_by_age().await)
    }

    /// Reconciler: claim up to `limit` transactions in reserved|pending whose
    /// updated_at is at least `older_than_ms` old and whose lease has expired;
    /// lease them for `lease_ms` and return them. On Postgres one statement
    /// with `FOR UPDATE SKIP LOCKED`, so concurrent claimers (several gateway
    /// replicas) never get the same row while its lease runs.
    /// The rows claimed carry `token` ([`TransactionRecord::lease_token`]);
    /// settle them with [`Ledger::finish_leased`] under it.
    pub async fn claim_stale(
        &self,
        older_than_ms: i64,
        lease_ms: i64,
        limit: u32,
        token: &LeaseToken,
    ) -> Result<Vec<TransactionRecord>, LedgerError> {
        dispatch!(self, l => l.claim_stale(older_than_ms, lease_ms, limit, token).await)
    }

    /// Reconciler: requeries += 1, last_error = error, status reserved→pending
    /// (pending stays), lease cleared.
    pub async fn note_requery(
        &self,
        gateway_ref: &GatewayRef,
        error: &str,
    ) -> Result<TransactionRecord, LedgerError> {
        dispatch!(self, l => l.note_requery(gateway_ref, error).await)
    }

    // ---- webhooks (issue 13) ----

    /// Registers a webhook of `client` for `events` (in one transaction
    /// with its subscriptions): from the next batch on, every transaction
    /// of the client reaching one of those states gets a delivery row.
    pub async fn create_webhook(
        &self,
        client: &ClientId,
        url: &str,
        events: &[WebhookEvent],
        secret: &str,
        per_client_max: u32,
    ) -> Result<Webhook, LedgerError> {
        dispatch!(self, l => l.create_webhook(client, url, events, secret, per_client_max).await)
    }

    /// The live webhooks, oldest first, at most `limit`.
    pub async fn webhooks(&self, limit: u32) -> Result<Vec<Webhook>, LedgerError> {
        dispatch!(self, l => l.webhooks(limit).await)
    }

    /// A webhook by id, deleted ones included.
    pub async fn webhook(&self, id: &str) -> Result<Option<Webhook>, LedgerError> {
        dispatch!(self, l => l.webhook(id).await)
    }

    /// Deletes a live webhook; `false` when there is none with that id.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, LedgerError> {
        dispatch!(self, l => l.delete_webhook(id).await)
    }

    /// Delivery worker: claims up to `limit` due deliveries for `lease_ms`
    /// under `token` (replicas never share a row while its lease runs).
    pub async fn claim_deliveries(
        &self,
        lease_ms: i64,
        limit: u32,
        token: &LeaseToken,
    ) -> Result<Vec<Delivery>, LedgerError> {
        dispatch!(self, l => l.claim_deliveries(lease_ms, limit, token).await)
    }

    /// Delivery worker: how an attempt ended; `false` (nothing written)
    /// when the lease is no longer `token`'s.
    pub async fn end_delivery(
        &self,
        id: &str,
        token: &LeaseToken,
        end: &DeliveryEnd,
    ) -> Result<bool, LedgerError> {
        dispatch!(self, l => l.end_delivery(id, token, end).await)
    }

    /// A webhook's failed deliveries, newest first, at most `limit`.
    pub async fn failed_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<Delivery>, LedgerError> {
        dispatch!(self, l => l.failed_deliveries(webhook_id, limit).await)
    }

    /// A failed delivery queued again, due now; `None` if no failed one.
    pub async fn redeliver(&self, id: &str) -> Result<Option<Delivery>, LedgerError> {
        dispatch!(self, l => l.redeliver(id).await)
    }

    /// The ledger's clock (the database's), unix ms: what delivery times
    /// are compared with.
    pub fn now_ms(&self) -> i64 {
        sql::now_ms()
    }

    /// Deliveries waiting to be sent, for the backlog gauge.
    pub async fn delivery_backlog(&self) -> Result<i64, LedgerError> {
        dispatch!(self, l => l.delivery_backlog().await)
    }
}
